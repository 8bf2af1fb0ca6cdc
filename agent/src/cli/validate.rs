//! `badge-agent validate`: check a configuration file without starting anything.

use std::path::Path;
use std::process::ExitCode;

use crate::config::{Config, ReaderSource};

/// Loads and validates the file, then prints a short summary of what the agent would run.
pub fn run(path: &Path) -> anyhow::Result<ExitCode> {
    let (config, readers) = Config::load(path)?;
    println!("{}: OK", path.display());
    println!("  gateway_id: {}", config.gateway_id);
    println!("  buffer:     {}", config.buffer.resolved_path().display());
    match &config.snowflake {
        Some(sf) => println!(
            "  snowflake:  {} as {} -> {}.{}.{} channel {}",
            sf.account_url(),
            sf.user,
            sf.database,
            sf.schema,
            sf.pipe,
            sf.channel_name(&config.gateway_id)
        ),
        None => println!("  snowflake:  not configured (swipes stay in the buffer)"),
    }
    println!("  health:     http://{}/status", config.health.listen);
    for reader in &readers {
        let what = match &reader.source {
            ReaderSource::Serial(s) => format!(
                "serial {} @ {} baud, {:?}",
                s.device.display(),
                s.baud,
                s.framing
            ),
            ReaderSource::Wiegand(w) => format!(
                "wiegand {} D0={} D1={}, format {}",
                w.chip.display(),
                w.d0,
                w.d1,
                w.format
            ),
            ReaderSource::Osdp(o) => format!(
                "osdp {} @ {} baud, address {}, {}, format {}",
                o.device.display(),
                o.baud,
                o.address,
                if o.key_file.is_some() {
                    "secure channel"
                } else {
                    "PLAIN TEXT (no key_file)"
                },
                o.format
            ),
            ReaderSource::Simulated(script) => {
                format!("simulated, {} swipes/s", script.rate_per_sec)
            }
        };
        println!("  reader {}: {what}", reader.id);
    }
    Ok(ExitCode::SUCCESS)
}
