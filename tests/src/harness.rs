//! End-to-end harness: a key pair, the Snowpipe emulator in-process, pty serial readers, and the
//! agent binary as a child process that can be killed at any moment.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use badge_agent::snowpipe::auth::{generate_private_key, write_private_key};
use rsa::pkcs8::{EncodePublicKey, LineEnding};
use rsa::RsaPublicKey;
use snowpipe_emulator::{Emulator, EmulatorConfig, EmulatorHandle, PipeId};

/// The gateway id (and channel) used by end-to-end tests.
pub const GATEWAY: &str = "gw-e2e";

/// Everything one end-to-end scenario needs.
pub struct Rig {
    /// Scratch directory (config, key, buffer, logs).
    pub dir: tempfile::TempDir,
    /// The emulator.
    pub emulator: EmulatorHandle,
    /// The agent's configuration file.
    pub config: PathBuf,
    /// Where the agent's stderr accumulates across restarts.
    pub log: PathBuf,
    /// The agent binary (`env!("CARGO_BIN_EXE_badge-agent-e2e")` in integration tests).
    pub agent_bin: PathBuf,
}

impl Rig {
    /// Starts the emulator and writes a config with the given `[[reader]]` tables.
    pub fn new(
        agent_bin: &str,
        readers_toml: &str,
        commit_delay: Duration,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let key_path = dir.path().join("rsa_key.p8");
        let key = generate_private_key(2048).map_err(anyhow::Error::msg)?;
        write_private_key(&key_path, &key)?;
        let public_pem = RsaPublicKey::from(&key).to_public_key_pem(LineEnding::LF)?;
        let emulator = Emulator::start(EmulatorConfig {
            account: "E2E-ACCOUNT".into(),
            user: "BADGE_INGEST".into(),
            pipes: vec![PipeId {
                database: "BADGE_DB".into(),
                schema: "RAW_INGESTION".into(),
                pipe: "RAW_BADGE_EVENTS_PIPE".into(),
            }],
            public_keys_pem: vec![public_pem],
            commit_delay,
            ca_pem_path: Some(dir.path().join("ca.pem")),
            ..EmulatorConfig::default()
        })
        .context("starting the emulator")?;
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            format!(
                "gateway_id = \"{GATEWAY}\"\n[buffer]\npath = \"{}\"\n[snowflake]\naccount = \"e2e-account\"\nurl = \"{}\"\nuser = \"badge_ingest\"\nprivate_key_file = \"{}\"\ndatabase = \"BADGE_DB\"\nschema = \"RAW_INGESTION\"\npipe = \"RAW_BADGE_EVENTS_PIPE\"\nextra_ca_file = \"{}\"\nrequest_timeout_secs = 5\n[health]\nlisten = \"127.0.0.1:0\"\n{readers_toml}",
                dir.path().join("buffer").display(),
                emulator.url(),
                key_path.display(),
                emulator.ca_pem_path.display(),
            ),
        )?;
        let log = dir.path().join("agent.log");
        Ok(Self {
            dir,
            emulator,
            config,
            log,
            agent_bin: PathBuf::from(agent_bin),
        })
    }

    /// Starts the agent binary (built by this package) with debug logs of durable swipes.
    pub fn start_agent(&self) -> anyhow::Result<Child> {
        self.start_agent_logging("warn,badge_agent::readers=debug")
    }

    /// Starts the agent binary with `RUST_LOG` set to `filter`, appending to [`Rig::log`].
    pub fn start_agent_logging(&self, filter: &str) -> anyhow::Result<Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        Command::new(&self.agent_bin)
            .args(["--log", "stderr", "--config"])
            .arg(&self.config)
            .arg("run")
            .env("RUST_LOG", filter)
            // Nothing may leave loopback.
            .env("HTTPS_PROXY", "http://127.0.0.1:9")
            .env("NO_PROXY", "127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("spawning the agent")
    }

    /// Everything the agent wrote to stderr so far, across all its runs.
    pub fn agent_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits up to `within` until the ledger holds `n` rows of [`GATEWAY`], then checks they are
    /// seqs `0..n` exactly once and in order (after 2 s more, so a late duplicate shows up).
    /// Returns the rows.
    pub fn assert_ledger_exactly_once(
        &self,
        n: u64,
        within: Duration,
    ) -> Vec<snowpipe_emulator::CommittedRow> {
        let deadline = std::time::Instant::now() + within;
        while (self.emulator.ledger(GATEWAY).len() as u64) < n {
            assert!(
                std::time::Instant::now() < deadline,
                "only {} of {n} swipes committed; agent log:\n{}",
                self.emulator.ledger(GATEWAY).len(),
                self.agent_log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        std::thread::sleep(Duration::from_secs(2));
        let rows = self.emulator.ledger(GATEWAY);
        let seqs: Vec<u64> = rows
            .iter()
            .map(|r| r.row["seq"].as_u64().unwrap_or(u64::MAX))
            .collect();
        let unique: BTreeSet<_> = seqs.iter().copied().collect();
        assert_eq!(seqs.len(), unique.len(), "a swipe was committed twice");
        assert_eq!(
            unique,
            (0..n).collect(),
            "swipes missing; agent log:\n{}",
            self.agent_log()
        );
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "order not kept");
        rows
    }

    /// Polls `done` until it holds; after 60 s fails naming `what`, with the agent's log.
    pub fn wait_for(&self, what: &str, mut done: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !done() {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}; agent log:\n{}",
                self.agent_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every swipe the agent logged as durable (acknowledged), across all its runs.
    pub fn acked(&self) -> anyhow::Result<Vec<Acked>> {
        acked_in(&self.log)
    }

    /// Credentials of the card swipes the agent acknowledged, across all its runs. The agent
    /// logs no credential, so each acknowledged swipe is matched to a ledger row of the same
    /// reader and `swiped_at` (one row per acknowledgement: the sequence number is no key, a
    /// buffer started afresh renumbers its swipes). One not committed yet reads
    /// `(not committed) <reader> <time>`, so it is named wherever the set falls short.
    pub fn acknowledged(&self) -> anyhow::Result<BTreeSet<String>> {
        let mut rows: BTreeMap<SwipeKey, Vec<String>> = BTreeMap::new();
        for r in self.emulator.ledger(GATEWAY) {
            let credential = r.row["credential"].as_str().unwrap_or_default().to_owned();
            rows.entry(row_key(&r.row)).or_default().push(credential);
        }
        let mut out = BTreeSet::new();
        for ack in self.acked()?.into_iter().filter(|a| a.event_type == "card") {
            if let Some(credential) = ack.credential {
                out.insert(credential);
                continue;
            }
            let key = ack.key();
            match rows.get_mut(&key).and_then(Vec::pop) {
                Some(credential) => out.insert(credential),
                None => out.insert(format!("(not committed) {} {}", key.0, key.1)),
            };
        }
        Ok(out)
    }

    /// Credentials of the committed card rows, and event ids of all committed rows.
    pub fn committed(&self) -> (Vec<String>, Vec<String>) {
        let rows = self.emulator.ledger(GATEWAY);
        let credentials = rows
            .iter()
            .filter_map(|r| r.row["credential"].as_str().map(str::to_owned))
            .collect();
        let event_ids = rows
            .iter()
            .map(|r| r.row["event_id"].as_str().unwrap_or_default().to_owned())
            .collect();
        (credentials, event_ids)
    }
}

/// A swipe the agent logged as durable: `swipe durable reader=… seq=7 event_type="card"
/// swiped_at=2026-…Z`. Agents built before the credential left the log wrote `credential=…`
/// instead of `swiped_at` (`e2e_upgrade` runs one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acked {
    /// The reader's id.
    pub reader: String,
    /// The buffer's sequence number at the time (renumbered if the buffer started afresh).
    pub seq: u64,
    /// `card`, `pin`, `tamper`, …
    pub event_type: String,
    /// The row's `swiped_at`, as logged.
    pub swiped_at: Option<String>,
    /// Logged by those older agents only; `None` for rows without a credential.
    pub credential: Option<String>,
}

/// What identifies a swipe without its credential: reader id and `swiped_at` (ms).
pub type SwipeKey = (String, String);

impl Acked {
    /// This swipe's reader and time.
    pub fn key(&self) -> SwipeKey {
        (
            self.reader.clone(),
            self.swiped_at.clone().unwrap_or_default(),
        )
    }
}

/// Reader and time of a ledger row.
pub fn row_key(row: &serde_json::Value) -> SwipeKey {
    let text = |field: &str| row[field].as_str().unwrap_or_default().to_owned();
    (text("reader_id"), text("swiped_at"))
}

/// Parses the `swipe durable` lines of an agent log.
pub fn acked_in(log: &Path) -> anyhow::Result<Vec<Acked>> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut out = Vec::new();
    for line in text.lines().filter(|l| l.contains("swipe durable")) {
        let field = |name: &str| {
            line.split(&format!(" {name}="))
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .map(|v| v.trim_matches('"').to_owned())
        };
        let seq: u64 = field("seq")
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no seq in {line:?}"))?;
        out.push(Acked {
            reader: field("reader").unwrap_or_default(),
            seq,
            event_type: field("event_type").unwrap_or_default(),
            swiped_at: field("swiped_at"),
            credential: field("credential").filter(|c| c != "-"),
        });
    }
    Ok(out)
}

/// Kills a child without letting it clean up (power-cut style).
pub fn kill9(child: &mut Child) {
    let _ = child.kill(); // SIGKILL on Unix
    let _ = child.wait();
}

/// Stops a child with SIGTERM and waits.
pub fn terminate(child: &mut Child) -> anyhow::Result<()> {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id())?);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
    child.wait()?;
    Ok(())
}

/// A tiny deterministic PRNG for test schedules.
#[derive(Debug, Clone)]
pub struct XorShift(pub u64);

impl XorShift {
    /// Next value.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A value in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}
