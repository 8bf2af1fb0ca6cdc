//! `snowpipe-emulator`: run the Snowpipe Streaming v2 emulator on loopback (HTTPS, one port for the
//! control and ingest hosts). Prints one JSON line with the address and CA path once listening.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Parser;
use snowpipe_emulator::{Emulator, EmulatorConfig, FaultPlan, FaultRule, PipeId};

/// A local, faithful Snowpipe Streaming v2 REST emulator (HTTPS on 127.0.0.1 only).
///
/// Admin endpoints (no auth, loopback only) live on the same port: GET /admin/ledger[?channel=C]
/// (NDJSON of committed rows), GET /admin/channels, GET|POST /admin/faults, POST /admin/reset,
/// POST /admin/expire-tokens.
#[derive(Debug, Parser)]
#[command(name = "snowpipe-emulator", version)]
struct Cli {
    /// Port on 127.0.0.1 (0 = ephemeral; the chosen address is printed on stdout as JSON).
    #[arg(long, default_value_t = 0, env = "SNOWPIPE_EMULATOR_PORT")]
    port: u16,
    /// Where to write the generated CA certificate (PEM) that clients must trust
    /// (e.g. SSL_CERT_FILE for the official SDK). Default: a fresh file under the temp dir.
    #[arg(long, value_name = "PATH")]
    ca_pem: Option<PathBuf>,
    /// Account name as configured in the client (normalised: text before the first '.', upper-cased).
    #[arg(long, default_value = "MYORG-MYACCT")]
    account: String,
    /// User name (compared upper-cased with the JWT's iss/sub).
    #[arg(long, default_value = "INGEST_USER")]
    user: String,
    /// RSA public key (PEM: SPKI, PKCS#1, or a PKCS#8 private key) whose key-pair JWTs are accepted.
    /// Repeatable. Without any key every authenticated call answers 401.
    #[arg(long = "public-key", value_name = "PEM_FILE")]
    public_keys: Vec<PathBuf>,
    /// A pipe that exists, as DB.SCHEMA.PIPE (matched case-insensitively). Repeatable.
    /// Default: DB1.SCH1.PIPE1.
    #[arg(long = "pipe", value_name = "DB.SCHEMA.PIPE")]
    pipes: Vec<String>,
    /// Delay between an accepted append and its commit, in milliseconds.
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    commit_delay_ms: u64,
    /// Lifetime of scoped tokens issued by POST /oauth/token, in seconds.
    #[arg(long, default_value_t = 3600, value_name = "SECONDS")]
    token_lifetime_s: u64,
    /// Host name answered by GET /v2/streaming/hostname (bare host, no port).
    #[arg(long, default_value = "127.0.0.1")]
    ingest_host: String,
    /// Append every committed row to this file as NDJSON.
    #[arg(long, value_name = "PATH")]
    ledger_file: Option<PathBuf>,
    /// A fault rule: op=OP,action=ACTION[,nth=N][,times=T][,channel=C][,p=P]. Repeatable.
    /// OP: hostname|token|open|append|status|drop|pipe-info|telemetry|any.
    /// ACTION: 401|404|404-empty|409|429|500|503|reset|delay:<ms>|lost-reset|lost-503|expire-tokens
    /// (lost-* = apply the request, then lose the response). nth is 1-based over matching requests
    /// (retries count); times 0 = unlimited; p = probability per eligible request.
    #[arg(long = "fault", value_name = "RULE")]
    faults: Vec<FaultRule>,
    /// Fault plan as JSON: {"seed": 1, "rules": [{"op": "append", "nth": 2, "action": "429"}]}.
    #[arg(long, value_name = "PATH")]
    faults_file: Option<PathBuf>,
    /// Seed for probabilistic fault rules.
    #[arg(long)]
    fault_seed: Option<u64>,
    /// Log filter (tracing EnvFilter syntax); every request is logged at debug.
    #[arg(long, default_value = "info", env = "SNOWPIPE_EMULATOR_LOG")]
    log: String,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&cli.log).context("--log")?)
        .with_writer(std::io::stderr)
        .init();
    let mut plan = match &cli.faults_file {
        Some(p) => serde_json::from_str::<FaultPlan>(
            &std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
        )
        .with_context(|| format!("parsing fault plan {}", p.display()))?,
        None => FaultPlan::default(),
    };
    plan.rules.extend(cli.faults.iter().cloned());
    if cli.fault_seed.is_some() {
        plan.seed = cli.fault_seed;
    }
    let mut pipes = Vec::new();
    for p in &cli.pipes {
        match PipeId::parse(p) {
            Some(id) => pipes.push(id),
            None => bail!("--pipe {p:?}: expected DB.SCHEMA.PIPE"),
        }
    }
    let mut keys = Vec::new();
    for k in &cli.public_keys {
        keys.push(
            std::fs::read_to_string(k)
                .with_context(|| format!("reading public key {}", k.display()))?,
        );
    }
    let defaults = EmulatorConfig::default();
    let cfg = EmulatorConfig {
        account: cli.account,
        user: cli.user,
        pipes: if pipes.is_empty() {
            defaults.pipes
        } else {
            pipes
        },
        public_keys_pem: keys,
        commit_delay: Duration::from_millis(cli.commit_delay_ms),
        scoped_token_lifetime: Duration::from_secs(cli.token_lifetime_s),
        port: cli.port,
        ca_pem_path: cli.ca_pem,
        ledger_file: cli.ledger_file,
        faults: plan,
        ingest_host: cli.ingest_host,
    };
    let handle = Emulator::start(cfg).context("starting the emulator")?;
    println!(
        "{}",
        serde_json::json!({"addr": handle.addr.to_string(), "url": handle.url(), "ca_pem": handle.ca_pem_path.display().to_string()})
    );
    handle.wait();
    Ok(())
}
