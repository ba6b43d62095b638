//! `outpost edge`: run a PoP from a config file or from quick-start flags.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use outpost_edge::Edge;

#[derive(Args)]
pub struct EdgeArgs {
    /// The PoP's config file (TOML). Reloaded on SIGHUP or POST /reload.
    #[arg(long, short, conflicts_with_all = ["listen", "origin"])]
    config: Option<PathBuf>,
    /// Quick start: address to serve plain HTTP (HTTP/1.1 and h2c) on, e.g. 127.0.0.1:8080.
    #[arg(long, requires = "origin")]
    listen: Option<SocketAddr>,
    /// Quick start: the origin every host is proxied to, e.g. http://127.0.0.1:9000.
    #[arg(long, requires = "listen")]
    origin: Option<String>,
    /// Quick start: admin listener address (default 127.0.0.1:9901; "off" disables it).
    #[arg(long, default_value = "127.0.0.1:9901")]
    admin: String,
    /// Quick start: access log destination: stdout, off, or a file path.
    #[arg(long, default_value = "stdout")]
    access_log: String,
    /// Quick start: the managed WAF rule set (SQL injection, XSS, traversal, command injection,
    /// scanners) at default sensitivity: off, detect (count and log only) or block.
    #[arg(long, value_enum, default_value_t = WafFlag::Detect)]
    waf: WafFlag,
    /// Quick start: the HTTP cache's memory budget (e.g. 256MiB, the default), or off. The
    /// cache honours the origin's Cache-Control (RFC 9111).
    #[arg(long, default_value = "256MiB")]
    cache: String,
    /// Quick start: the fields that tell the origin about the client: both (X-Forwarded-For,
    /// -Proto, -Host and Forwarded), x-forwarded, forwarded or none. A family left out is also
    /// removed from what the client sent.
    #[arg(long, value_enum, default_value_t = ForwardedFlag::Both)]
    forwarded_headers: ForwardedFlag,
    /// Worker threads (default: one per CPU). 1 runs everything on a single thread.
    #[arg(long, env = "OUTPOST_WORKERS")]
    workers: Option<usize>,
    /// Batch the request heads a worker sends to plain-HTTP/1.1 origins in one io_uring
    /// submission per pass (single-worker runtime only): auto uses io_uring where the kernel
    /// allows it, off sends each head by itself.
    #[arg(long, value_enum, env = "OUTPOST_IO_URING", default_value_t = IoUringFlag::Auto)]
    io_uring: IoUringFlag,
    /// Operational log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(flatten)]
    pub managed: crate::managed::ManagedArgs,
}

#[derive(Clone, Copy, ValueEnum)]
enum WafFlag {
    Off,
    Detect,
    Block,
}

#[derive(Clone, Copy, ValueEnum)]
enum ForwardedFlag {
    Both,
    XForwarded,
    Forwarded,
    None,
}

impl From<ForwardedFlag> for outpost_config::ForwardedHeaders {
    fn from(flag: ForwardedFlag) -> Self {
        match flag {
            ForwardedFlag::Both => Self::Both,
            ForwardedFlag::XForwarded => Self::XForwarded,
            ForwardedFlag::Forwarded => Self::Forwarded,
            ForwardedFlag::None => Self::None,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum IoUringFlag {
    Auto,
    Off,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

pub fn run(args: EdgeArgs) -> ExitCode {
    init_tracing(args.log_format);
    let workers = args
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let runtime = if workers <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("outpost edge: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if workers <= 1 && args.io_uring == IoUringFlag::Auto {
        // Installed on this thread, which drives the current-thread runtime below.
        match outpost_edge::upstream::send_batch::install(&runtime) {
            Ok(()) => tracing::debug!("origin request heads batched with io_uring"),
            Err(e) => {
                tracing::info!(error = %e, "io_uring unavailable: origin request heads are sent one by one")
            }
        }
    }
    let code = runtime.block_on(serve(args));
    // The access log's writer writes its last lines once the runtime (and the log) is gone.
    drop(runtime);
    outpost_edge::access_log::wait_for_writers(std::time::Duration::from_secs(5));
    code
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("OUTPOST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn serve(args: EdgeArgs) -> ExitCode {
    if args.managed.control.is_some() {
        return crate::managed::serve(args.managed, &args.admin).await;
    }
    let loaded = match (&args.config, &args.listen, &args.origin) {
        (Some(path), _, _) => outpost_config::load_file(path),
        (None, Some(listen), Some(origin)) => {
            let Ok(admin) = parse_admin(&args.admin) else {
                return ExitCode::from(2);
            };
            let mut config = outpost_config::quick_start(*listen, origin, admin);
            config.log.access_log = args.access_log.clone();
            config.cache.memory = match args.cache.as_str() {
                "off" | "0" => 0,
                size => match outpost_config::parse_size(size) {
                    Ok(bytes) => bytes,
                    Err(e) => {
                        eprintln!("outpost edge: --cache: {e} (or off)");
                        return ExitCode::from(2);
                    }
                },
            };
            for site in &mut config.sites {
                site.waf.mode = match args.waf {
                    WafFlag::Off => outpost_config::WafMode::Off,
                    WafFlag::Detect => outpost_config::WafMode::Detect,
                    WafFlag::Block => outpost_config::WafMode::Block,
                };
                site.forwarded_headers = args.forwarded_headers.into();
            }
            outpost_config::from_config(config, "<command line>")
        }
        _ => {
            eprintln!("outpost edge: give --config FILE, or --listen ADDR --origin URL (see --help)");
            return ExitCode::from(2);
        }
    };
    let loaded = match loaded {
        Ok(l) => l,
        Err(errors) => {
            eprintln!("outpost edge: invalid config:\n{errors}");
            return ExitCode::from(2);
        }
    };
    let edge = match Edge::start(loaded, args.config.clone()).await {
        Ok(edge) => edge,
        Err(e) => {
            eprintln!("outpost edge: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    wait_for_signals(&edge).await;
    if edge.drain().await {
        tracing::info!("drained; exiting");
        ExitCode::SUCCESS
    } else {
        ExitCode::SUCCESS
    }
}

pub async fn wait_for_signals(edge: &Edge) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut hup), Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::hangup()),
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    loop {
        tokio::select! {
            _ = hup.recv() => {
                // Outcome is logged and counted by the reload itself.
                let _ = edge.reload().await;
            }
            _ = term.recv() => return,
            _ = int.recv() => return,
        }
    }
}

/// `--admin host:port|off`; a bad value is reported here (the caller exits with status 2).
pub fn parse_admin(value: &str) -> Result<Option<SocketAddr>, ()> {
    match value {
        "off" => Ok(None),
        a => a.parse::<SocketAddr>().map(Some).map_err(|e| {
            eprintln!("outpost edge: --admin {a}: {e} (use host:port or off)");
        }),
    }
}
