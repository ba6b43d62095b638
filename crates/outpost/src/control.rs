//! `outpost control`: run the control plane.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use outpost_control::{ControlOptions, RunningControl};

#[derive(Args)]
pub struct ControlArgs {
    /// Where the store (SQLite), its lock and the bootstrap token live. One control plane per dir.
    #[arg(long)]
    data_dir: PathBuf,
    /// API and PoP stream address. Loopback by default; PoPs elsewhere need a reachable address.
    #[arg(long, default_value = "127.0.0.1:7000")]
    listen: SocketAddr,
    /// First start only: the admin token is read from this file, or generated into it
    /// (default DATA_DIR/admin.token, mode 0600).
    #[arg(long)]
    bootstrap_token_file: Option<PathBuf>,
    /// Serve the API and PoP streams over TLS with this certificate chain (PEM)...
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// ...and this private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            tracing::error!("cannot install signal handlers; stop with SIGKILL");
            std::future::pending::<()>().await;
        }
    }
}

pub fn run(args: ControlArgs) -> ExitCode {
    crate::init_tracing();
    // Store calls run on blocking threads but queue on one SQLite connection: a few threads are
    // enough, and a thousand PoPs connecting at once do not spawn hundreds of them.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .max_blocking_threads(4)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("outpost control: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        if !args.listen.ip().is_loopback() && args.tls_cert.is_none() {
            tracing::warn!(listen = %args.listen, "the API listens beyond loopback over plain HTTP: put it behind TLS or a private network");
        }
        let options = ControlOptions {
            data_dir: args.data_dir,
            listen: args.listen,
            bootstrap_token_file: args.bootstrap_token_file,
            tls: args.tls_cert.zip(args.tls_key),
        };
        let scheme = if options.tls.is_some() { "https" } else { "http" };
        let running = match RunningControl::start(options).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("outpost control: {e}");
                return ExitCode::FAILURE;
            }
        };
        if let Some(file) = &running.bootstrap_token_file {
            eprintln!(
                "outpost control: first start: the admin token is in {} (use it as OUTPOST_TOKEN)",
                file.display()
            );
        }
        eprintln!("outpost control: API on {scheme}://{}/v1 (OpenAPI: /v1/openapi.json)", running.addr);
        shutdown_signal().await;
        tracing::info!("stopping: closing PoP streams and the API");
        running.stop(Duration::from_secs(5)).await;
        ExitCode::SUCCESS
    })
}
