//! `outpost`: one binary, one subcommand per component. Argument parsing and process setup
//! only; the components live in their crates.

mod edge;
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
