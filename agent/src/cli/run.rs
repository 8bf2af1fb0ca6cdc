//! `badge-agent run`: the service.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;

use crate::config::Config;
use crate::service;

/// Loads the configuration and runs the agent until SIGTERM or Ctrl-C.
pub fn run(config_path: &Path) -> anyhow::Result<ExitCode> {
    let (config, readers) = Config::load(config_path)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let health = service::new_health(&config);
    let result = runtime.block_on(service::run(
        config,
        readers,
        health,
        service::termination_signal(),
    ));
    // A blocking task stuck at shutdown (an fsync on a failing card) must not hold the exit:
    // nothing it was doing was acknowledged yet.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result?;
    Ok(ExitCode::SUCCESS)
}
