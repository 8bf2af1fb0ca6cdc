//! Command-line interface: parses arguments and dispatches to the subcommands.

mod decode;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// badge-gateway edge agent.
#[derive(Debug, Parser)]
#[command(name = "badge-agent", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands of `badge-agent`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Decode reader bytes or Wiegand bits and print the result as JSON (for field technicians).
    Decode(decode::DecodeArgs),
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Decode(args) => decode::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
