//! `badge-agent demo`: simulated readers → agent → local Snowpipe emulator, in one command.
//!
//! Everything runs on loopback in a scratch directory: a fresh key pair, the emulator (TLS, JWT
//! checks, asynchronous commits), and the real agent service with simulated readers. It shows
//! live progress and ends by checking the emulator's ledger: every durable swipe exactly once.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rsa::pkcs8::{EncodePublicKey, LineEnding};
use rsa::RsaPublicKey;
use snowpipe_emulator::{Emulator, EmulatorConfig, PipeId};

use crate::config::Config;
use crate::health::Health;
use crate::service;
use crate::snowpipe::auth::{generate_private_key, write_private_key};

/// Arguments of `badge-agent demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Swipes per simulated reader.
    #[arg(long, default_value_t = 200)]
    pub swipes: u64,
    /// Simulated readers.
    #[arg(long, default_value_t = 3)]
    pub readers: u32,
    /// Swipes per second per reader.
    #[arg(long, default_value_t = 40.0)]
    pub rate: f64,
    /// Scratch directory (default: a new temporary directory, removed afterwards).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

const CHANNEL: &str = "demo-gateway";

/// Runs the demo; exit code 1 if the ledger does not hold every swipe exactly once.
pub fn run(args: &DemoArgs) -> anyhow::Result<ExitCode> {
    let scratch = match &args.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            (None, dir.clone())
        }
        None => {
            let tmp = tempfile::tempdir()?;
            let path = tmp.path().to_owned();
            (Some(tmp), path)
        }
    };
    let dir = scratch.1.clone();
    println!("demo directory: {}", dir.display());

    // A key pair for this run only.
    let key_path = dir.join("rsa_key.p8");
    let _ = std::fs::remove_file(&key_path);
    let key = generate_private_key(2048).map_err(anyhow::Error::msg)?;
    write_private_key(&key_path, &key)?;
    let public_pem = RsaPublicKey::from(&key)
        .to_public_key_pem(LineEnding::LF)
        .context("encoding the public key")?;

    let emulator = Emulator::start(EmulatorConfig {
        account: "DEMO-GATEWAYS".into(),
        user: "BADGE_INGEST".into(),
        pipes: vec![PipeId {
            database: "BADGE_DB".into(),
            schema: "RAW_INGESTION".into(),
            pipe: "RAW_BADGE_EVENTS_PIPE".into(),
        }],
        public_keys_pem: vec![public_pem],
        commit_delay: Duration::from_millis(1000),
        ca_pem_path: Some(dir.join("emulator-ca.pem")),
        ledger_file: Some(dir.join("ledger.ndjson")),
        ..EmulatorConfig::default()
    })
    .context("starting the Snowpipe emulator")?;
    println!("Snowpipe emulator on {}", emulator.url());

    let mut toml = format!(
        "gateway_id = \"{CHANNEL}\"\n\n[buffer]\npath = \"{}\"\n\n[snowflake]\naccount = \"demo-gateways\"\nurl = \"{}\"\nuser = \"badge_ingest\"\nrole = \"BADGE_INGEST_ROLE\"\nprivate_key_file = \"{}\"\ndatabase = \"BADGE_DB\"\nschema = \"RAW_INGESTION\"\npipe = \"RAW_BADGE_EVENTS_PIPE\"\nextra_ca_file = \"{}\"\n\n[health]\nlisten = \"127.0.0.1:0\"\n\n[heartbeat]\ninterval_secs = 2\n",
        dir.join("buffer").display(),
        emulator.url(),
        key_path.display(),
        emulator.ca_pem_path.display(),
    );
    for i in 1..=args.readers {
        toml.push_str(&format!(
            "\n[[reader]]\nid = \"door-{i}\"\nkind = \"simulated\"\nzone = \"zone-{}\"\ndoor = \"door-{i}\"\ndirection = \"{}\"\nrate_per_sec = {:.3}\ncount = {}\nfacility = {}\n",
            i.div_ceil(2),
            if i % 2 == 1 { "in" } else { "out" },
            args.rate,
            args.swipes,
            10 + i,
        ));
    }
    let config_path = dir.join("config.toml");
    std::fs::write(&config_path, toml)?;
    let (config, readers) = Config::load(&config_path)?;
    println!("config: {}", config_path.display());

    let expected = args.swipes * u64::from(args.readers);
    let health = service::new_health(&config);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let started = Instant::now();
    let watcher = Arc::clone(&health);
    let ledger_rows = || {
        emulator
            .ledger(CHANNEL)
            .iter()
            .filter(|r| !is_heartbeat(&r.row))
            .count() as u64
    };
    runtime.block_on(service::run(config, readers, health, async move {
        wait_until_drained(&watcher, expected, ledger_rows).await;
    }))?;
    let elapsed = started.elapsed();

    // The proof: the emulator's committed rows against what the agent made durable.
    let rows = emulator.ledger(CHANNEL);
    let mut event_ids = BTreeSet::new();
    let mut seqs = BTreeSet::new();
    for row in &rows {
        event_ids.insert(row.row["event_id"].as_str().unwrap_or_default().to_owned());
        seqs.insert(row.row["seq"].as_u64().unwrap_or(0));
    }
    let in_order = rows
        .windows(2)
        .all(|w| w[0].row["seq"].as_u64() < w[1].row["seq"].as_u64());
    // Heartbeats share the channel and the sequence: every row is numbered, swipes are counted.
    let total = rows.len() as u64;
    let contiguous = seqs.iter().copied().eq(1..=total) || seqs.iter().copied().eq(0..total);
    let swipes = rows.iter().filter(|r| !is_heartbeat(&r.row)).count() as u64;
    println!();
    println!("summary after {:.1}s:", elapsed.as_secs_f64());
    println!("  swipes generated by {} readers: {expected}", args.readers);
    println!("  swipe rows committed in Snowflake (emulator ledger): {swipes}");
    println!("  heartbeat rows committed: {}", total - swipes);
    println!("  distinct event_ids: {}", event_ids.len());
    println!("  committed in sequence order: {in_order}");
    println!(
        "  ledger file: {} (kept only with --dir)",
        dir.join("ledger.ndjson").display()
    );
    emulator.shutdown();
    let ok = swipes == expected && event_ids.len() == rows.len() && contiguous && in_order;
    if ok {
        println!("OK: every swipe landed exactly once");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("FAILED: the ledger does not hold every swipe exactly once");
        Ok(ExitCode::FAILURE)
    }
}

/// A `heartbeat` row (the agent's own health report), not a swipe.
fn is_heartbeat(row: &serde_json::Value) -> bool {
    row["event_type"] == "heartbeat"
}

/// Prints progress every second until the emulator has committed `expected` rows (the real end
/// of the run: the agent's own counters lag by up to a second) or 10 minutes passed. Every
/// column is a count of swipes, never an offset token.
async fn wait_until_drained(health: &Health, expected: u64, committed_rows: impl Fn() -> u64) {
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut last_print = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let committed = committed_rows();
        let done = committed >= expected;
        if done || last_print.elapsed() >= Duration::from_secs(1) {
            last_print = Instant::now();
            let status = health.status();
            let read: u64 = status.readers.values().map(|r| r.swipes).sum();
            println!(
                "durable {read:>6}/{expected}   committed {committed:>6}/{expected}   buffered {:>6}   drain {}",
                status.buffer.depth, status.drain.state,
            );
        }
        if done {
            return;
        }
        if Instant::now() > deadline {
            println!("giving up after 10 minutes");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_demo_whose_readers_finish_within_a_second_passes() {
        let args = DemoArgs {
            swipes: 60,
            readers: 2,
            rate: 200.0,
            dir: None,
        };
        assert_eq!(run(&args).unwrap(), ExitCode::SUCCESS);
    }
}
