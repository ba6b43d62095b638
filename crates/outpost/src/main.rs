//! `outpost`: one binary, one subcommand per component. Argument parsing and process setup
//! only; the components live in their crates.

mod cli;
mod control;
mod edge;
mod lab;
mod managed;
mod origin;

use clap::{Parser, Subcommand};

// A proxy allocates many small, short-lived buffers per request; mimalloc's thread-local free
// lists cost a fraction of glibc malloc's (measured in bench/passthrough.sh, see the issue note).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Opts this process (and the children `lab` starts) out of transparent huge pages.
///
/// mimalloc asks for huge pages on its arenas, and with them memory is taken 2 MiB at a time:
/// the cache's memory grew in steps of 2 MiB whatever it stored (10,000 1 KiB objects measured
/// 1,600 to 1,800 bytes each, the same with 4 KiB pages 1,310, steady), a small PoP's resident
/// memory was three times its use, and the kernel's compaction for huge pages adds latency
/// spikes, which is why Varnish's and Redis's operators are told to turn them off. Throughput of
/// cache hits measured the same either way (1, 16 and 256 KiB). Where the kernel lacks the
/// setting the process keeps the system's.
fn disable_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    let _ = nix::sys::prctl::set_thp_disable(true);
}

#[derive(Parser)]
#[command(
    name = "outpost",
    version,
    about = "Outpost: a self-hosted edge network in one binary"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one PoP: a TLS-terminating reverse proxy with origin pools and health checks.
    Edge(edge::EdgeArgs),
    /// A demo origin to try a PoP against (answers from memory; not for production).
    Origin(origin::OriginArgs),
    /// Run the control plane: versioned fleet config, PoP inventory, purges, the /v1 API.
    Control(control::ControlArgs),
    /// Start a whole fleet on this machine: control plane, managed PoPs, demo origins.
    Lab(lab::LabArgs),
    #[command(flatten)]
    Api(cli::ApiCommand),
    /// Check a config file and print every problem with its file, line, column and field.
    Validate {
        /// The config file to check.
        config: std::path::PathBuf,
    },
}

fn main() -> std::process::ExitCode {
    disable_transparent_huge_pages();
    let cli = Cli::parse();
    match cli.command {
        Command::Edge(args) => edge::run(args),
        Command::Origin(args) => origin::run(args),
        Command::Control(args) => control::run(args),
        Command::Lab(args) => lab::run(args),
        Command::Api(cmd) => cli::run(cmd),
        Command::Validate { config } => match outpost_config::load_file(&config) {
            Ok(loaded) => {
                println!("{}: valid (hash {})", config.display(), &loaded.hash[..12]);
                std::process::ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{errors}");
                std::process::ExitCode::from(2)
            }
        },
    }
}

/// Operational logs on stderr, filtered by OUTPOST_LOG (default info).
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("OUTPOST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}
