//! `badge-agent decode`: decode bits or bytes offline and print JSON.

use std::process::ExitCode;

/// Arguments of `badge-agent decode`.
#[derive(Debug, clap::Args)]
pub struct DecodeArgs {}

/// Runs the subcommand.
pub fn run(_args: &DecodeArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
