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
