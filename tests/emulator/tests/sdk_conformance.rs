//! Conformance: Snowflake's official Python SDK (`snowpipe-streaming` 1.9.1) against the emulator.
//!
//! Creates (or reuses) a virtualenv under `target/sdk-venv`, generates an RSA key, starts the
//! emulator in-process, and runs `sdk/driver.py` scenarios with every outbound path pinned to
//! loopback (dead HTTPS proxy, NO_PROXY=127.0.0.1, SSL_CERT_FILE = the emulator CA). Fails loudly
//! when python3/pip/the package are unavailable: this test never skips.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use serde_json::{json, Value};
use snowpipe_emulator::{
    Emulator, EmulatorConfig, EmulatorHandle, FaultAction, FaultRule, Op, PipeId,
};

// Shared with the badge-tests benchmark; included by path because badge-tests depends on this crate.
#[path = "../../src/sdk_venv.rs"]
mod sdk_venv;
use sdk_venv::{pin_to_loopback, sdk_python, sdk_scripts_dir};

struct Fixture {
    emu: EmulatorHandle,
    dir: tempfile::TempDir,
    key_file: PathBuf,
    py: PathBuf,
}

/// Generated once per binary: RSA keygen is the slow part.
fn key_pems() -> &'static (String, String) {
    static K: OnceLock<(String, String)> = OnceLock::new();
    K.get_or_init(|| {
        let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
        let private = key.to_pkcs8_pem(LineEnding::LF).unwrap().to_string();
        let public = key
            .to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap();
        (private, public)
    })
}

fn fixture(commit_delay: Duration) -> Fixture {
    let py = sdk_python();
    let dir = tempfile::tempdir().unwrap();
    let (private, public) = key_pems();
    let key_file = dir.path().join("rsa_key.p8");
    std::fs::write(&key_file, private).unwrap();
    let emu = Emulator::start(EmulatorConfig {
        account: "MYORG-MYACCT".into(),
        user: "INGEST_USER".into(),
        pipes: vec![PipeId::parse("BADGES.PUBLIC.BADGE_SWIPES-STREAMING").unwrap()],
        public_keys_pem: vec![public.clone()],
        commit_delay,
        ca_pem_path: Some(dir.path().join("ca.pem")),
        ledger_file: Some(dir.path().join("ledger.ndjson")),
        ..EmulatorConfig::default()
    })
    .unwrap();
    Fixture {
        emu,
        dir,
        key_file,
        py,
    }
}

struct Running {
    child: std::process::Child,
    scenario: String,
    out_path: PathBuf,
    err_path: PathBuf,
}

impl Running {
    fn wait(mut self) -> Run {
        let deadline = Instant::now() + Duration::from_secs(120);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "driver {} timed out; stderr:\n{}",
                    self.scenario,
                    std::fs::read_to_string(&self.err_path).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let stdout = std::fs::read_to_string(&self.out_path).unwrap_or_default();
        let stderr = std::fs::read_to_string(&self.err_path).unwrap_or_default();
        let result = stdout
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("RESULT "))
            .map(|j| serde_json::from_str(j).unwrap())
            .unwrap_or(Value::Null);
        Run {
            code: status.code(),
            result,
            stderr,
        }
    }
}

struct Run {
    code: Option<i32>,
    result: Value,
    stderr: String,
}

impl Fixture {
    fn driver(&self, scenario: &str, channel: &str, extra: Value) -> Run {
        self.spawn_driver(scenario, channel, extra).wait()
    }

    fn spawn_driver(&self, scenario: &str, channel: &str, extra: Value) -> Running {
        let mut cfg = json!({
            // Lower-case on purpose: the emulator must normalise like Snowflake.
            "url": self.emu.url(), "account": "myorg-myacct", "user": "ingest_user", "role": "INGEST_ROLE",
            "private_key_file": self.key_file, "db": "badges", "schema": "public", "pipe": "BADGE_SWIPES-STREAMING",
            "channel": channel,
        });
        for (k, v) in extra.as_object().unwrap() {
            cfg[k] = v.clone();
        }
        let cfg_path = self.dir.path().join(format!("{scenario}-{channel}.json"));
        std::fs::write(&cfg_path, cfg.to_string()).unwrap();
        let out_path = self.dir.path().join(format!("{scenario}-{channel}.out"));
        let err_path = self.dir.path().join(format!("{scenario}-{channel}.err"));
        let driver = sdk_scripts_dir().join("driver.py");
        let mut cmd = Command::new(&self.py);
        // Network guard: anything but the emulator goes to a dead loopback proxy.
        pin_to_loopback(&mut cmd, &self.emu.ca_pem_path)
            .env("SS_LOG_LEVEL", "info")
            .arg(&driver)
            .arg(scenario)
            .arg(&cfg_path)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_path).unwrap())
            .stderr(std::fs::File::create(&err_path).unwrap());
        let child = cmd.spawn().expect("spawning the SDK driver");
        Running {
            child,
            scenario: scenario.to_string(),
            out_path,
            err_path,
        }
    }

    fn driver_ok(&self, scenario: &str, channel: &str, extra: Value) -> Value {
        let r = self.driver(scenario, channel, extra);
        assert_eq!(
            r.code,
            Some(0),
            "driver {scenario} failed:\n{}\nrequests: {:#?}",
            tail(&r.stderr),
            self.emu.requests()
        );
        assert!(
            !r.result.is_null(),
            "driver {scenario} printed no RESULT:\n{}",
            tail(&r.stderr)
        );
        r.result
    }
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

/// `swipe_seq` of each committed row, asserting every value appears exactly once.
fn exactly_once(emu: &EmulatorHandle, channel: &str) -> Vec<u64> {
    let rows = emu.ledger(channel);
    let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
    for r in &rows {
        *counts
            .entry(r.row["swipe_seq"].as_u64().unwrap())
            .or_default() += 1;
    }
    let dups: Vec<_> = counts.iter().filter(|(_, n)| **n != 1).collect();
    assert!(
        dups.is_empty(),
        "duplicates in the ledger of {channel}: {dups:?}"
    );
    counts.into_keys().collect()
}

#[test]
fn sdk_open_append_commit_crash_resume_drop() {
    let f = fixture(Duration::from_millis(300));

    // 1. Normal sequence: open, append, commit wait, status, reopen, drop.
    let out = f.driver_ok("basic", "ch1", json!({}));
    assert_eq!(out["open_committed"], Value::Null);
    assert_eq!(out["open_status"], "SUCCESS");
    assert_eq!(out["status"]["latest_committed_offset_token"], "3");
    assert_eq!(out["status"]["rows_inserted_count"], 3);
    assert_eq!(out["status"]["rows_error_count"], 0);
    assert_eq!(out["committed_tokens"], json!({"ch1": "3", "nochan": null}));
    assert_eq!(out["reopen_committed"], "3");
    // (The SDK answers `after_drop` from its status cache, so the emulator's state is checked instead.)
    assert!(
        f.emu.channels().iter().all(|c| c["channel_name"] != "ch1"),
        "ch1 dropped"
    );
    assert_eq!(exactly_once(&f.emu, "ch1"), vec![1, 2, 3]);
    let reqs = f.emu.requests();
    assert!(
        reqs.iter().all(|r| r.param("requestId").is_some()),
        "every SDK request carries requestId"
    );
    let appends: Vec<_> = reqs.iter().filter(|r| r.path.ends_with("/rows")).collect();
    assert!(!appends.is_empty());
    assert!(appends
        .iter()
        .all(|r| r.status == 200 && r.param("endOffsetToken").is_some()));
    assert!(reqs
        .iter()
        .any(|r| r.path.ends_with(":pipe-info") && r.status == 200));
    assert!(reqs.iter().any(|r| r.method == "DELETE" && r.status == 200));

    // 2. Crash after an append, before the commit (resume). The commit is held back until the
    //    restarted client has seen a 409, so the test does not depend on machine speed.
    f.emu.set_commit_delay(Duration::from_secs(600));
    let crash = f.driver("crash", "gw01-rfid", json!({"first": 1, "last": 5}));
    assert_eq!(
        crash.code,
        Some(17),
        "crash driver should die with os._exit(17):\n{}",
        tail(&crash.stderr)
    );
    let ch = f
        .emu
        .channels()
        .into_iter()
        .find(|c| c["channel_name"] == "gw01-rfid")
        .expect("channel exists");
    assert_eq!(
        ch["uncommitted_batches"], 1,
        "the crashed client's batch is in flight: {ch}"
    );

    // 3. A new process reopens: 409 while the batch is uncommitted, then resumes after "5".
    let before = f.emu.requests().len();
    let resume = f.spawn_driver("resume", "gw01-rfid", json!({"last": 8}));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !f.emu.requests()[before..]
        .iter()
        .any(|r| r.method == "PUT" && r.status == 409)
    {
        assert!(
            Instant::now() < deadline,
            "the restarted SDK never got a 409: {:#?}",
            &f.emu.requests()[before..]
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    f.emu.set_commit_delay(Duration::from_millis(300));
    f.emu.commit_now();
    let r = resume.wait();
    assert_eq!(r.code, Some(0), "resume failed:\n{}", tail(&r.stderr));
    let out = r.result;
    let opens: Vec<_> = f.emu.requests()[before..]
        .iter()
        .filter(|r| r.method == "PUT")
        .map(|r| r.status)
        .collect();
    eprintln!("resume: opens answered {opens:?}; driver said {out}");
    assert_eq!(
        opens.first(),
        Some(&409),
        "first reopen must see ERR_CHANNEL_HAS_UNCOMMITTED_DATA"
    );
    assert_eq!(opens.last(), Some(&200));
    assert_eq!(
        out["open_committed"], "5",
        "the SDK waited out the in-flight commit through 409 retries"
    );
    assert_eq!(out["resumed_at"], 6);
    assert_eq!(out["status"]["latest_committed_offset_token"], "8");
    assert_eq!(
        exactly_once(&f.emu, "gw01-rfid"),
        (1..=8).collect::<Vec<_>>()
    );

    // 4. Drop.
    let out = f.driver_ok("drop", "gw01-rfid", json!({}));
    assert_eq!(out["after_drop"], json!({"gw01-rfid": null}));
    assert!(f
        .emu
        .channels()
        .iter()
        .all(|c| c["channel_name"] != "gw01-rfid"));
    // Committed rows stay in the "table", and in the ledger file.
    assert_eq!(f.emu.ledger("gw01-rfid").len(), 8);
    let file = std::fs::read_to_string(f.dir.path().join("ledger.ndjson")).unwrap();
    assert_eq!(file.lines().count(), 11);
}

#[test]
fn sdk_retries_faults_and_lands_every_row_exactly_once() {
    let f = fixture(Duration::from_millis(200));
    // Retries count as matching requests, so these fire on consecutive attempts of the first rows.
    for (nth, action) in [
        (1, FaultAction::Unauthorized), // -> token refresh, same append retried
        (2, FaultAction::TooManyRequests), // -> backoff retry
        (3, FaultAction::Unavailable),  // -> backoff retry
        (4, FaultAction::AppliedThen503), // applied, response lost -> retry is an idempotent replay
        (6, FaultAction::InternalError), // second row: one 500, then success
        (8, FaultAction::NotFoundEmpty), // misclassified 404 -> retried
        (10, FaultAction::AppliedThenReset), // fourth row: applied, connection reset -> replay
        (12, FaultAction::Reset),       // fifth row: connection reset before anything is applied
    ] {
        f.emu
            .add_fault(FaultRule::nth(Op::Append, nth, action).on_channel("gw02"));
    }
    f.emu
        .add_fault(FaultRule::nth(Op::Status, 3, FaultAction::ExpireTokens));
    let out = f.driver_ok(
        "stepped",
        "gw02",
        json!({"first": 1, "last": 6, "compression": false}),
    );
    assert_eq!(out["status"]["latest_committed_offset_token"], "6");
    assert_eq!(out["status"]["rows_inserted_count"], 6);
    assert_eq!(exactly_once(&f.emu, "gw02"), (1..=6).collect::<Vec<_>>());

    let fired: Vec<u64> = f.emu.faults().iter().map(|(_, _, fired)| *fired).collect();
    assert_eq!(
        fired,
        vec![1; 9],
        "every fault fired once: {:#?}",
        f.emu.faults()
    );
    let reqs = f.emu.requests();
    let appends: Vec<_> = reqs.iter().filter(|r| r.path.ends_with("/rows")).collect();
    eprintln!(
        "appends: {:?}",
        appends
            .iter()
            .map(|r| (
                r.status,
                r.param("retryCount").unwrap_or("-").to_string(),
                r.fault.clone()
            ))
            .collect::<Vec<_>>()
    );
    // The first row's five attempts share one requestId and count retries up.
    let first_id = appends[0].param("requestId").unwrap();
    let first: Vec<_> = appends
        .iter()
        .filter(|r| r.param("requestId") == Some(first_id))
        .collect();
    assert_eq!(first.len(), 5, "401, 429, 503, lost-503, then the replay");
    assert_eq!(
        first
            .iter()
            .map(|r| r.param("retryCount").unwrap())
            .collect::<Vec<_>>(),
        ["0", "1", "2", "3", "4"]
    );
    assert!(first
        .windows(2)
        .all(|w| w[0].param("continuationToken") == w[1].param("continuationToken")));
    // Every retry (after 401, 429, 5xx, empty 404, lost responses and resets) repeats the previous
    // attempt's requestId and continuation token.
    let mut retries = 0;
    for w in appends.windows(2) {
        if w[1].param("retryCount") != Some("0") {
            retries += 1;
            assert_eq!(w[0].param("requestId"), w[1].param("requestId"), "{w:?}");
            assert_eq!(
                w[0].param("continuationToken"),
                w[1].param("continuationToken"),
                "{w:?}"
            );
        }
    }
    assert_eq!(retries, 8, "one retry per injected append fault");
    // The 401 made the SDK fetch a new scoped token before retrying.
    let i401 = reqs.iter().position(|r| r.status == 401).unwrap();
    assert!(
        reqs[i401..]
            .iter()
            .take(3)
            .any(|r| r.path == "/oauth/token" && r.status == 200),
        "token refresh after 401"
    );
    // Expired tokens on a status call: 401s, then a refresh, and the run still finished.
    assert!(
        reqs.iter()
            .filter(|r| r.path == "/oauth/token" && r.status == 200)
            .count()
            >= 3
    );
}

#[test]
fn sdk_non_retryable_errors_invalidate_then_reopen_resumes() {
    let f = fixture(Duration::from_millis(200));
    // 404 with a Snowflake code on append: the SDK must give up on the channel (not retry).
    f.emu
        .add_fault(FaultRule::nth(Op::Append, 1, FaultAction::NotFound).on_channel("gw03"));
    let out = f.driver_ok("invalidate", "gw03", json!({"first": 1, "last": 3}));
    eprintln!("invalidate: {out}");
    assert!(
        out["error"]
            .as_str()
            .unwrap()
            .contains("ERR_CHANNEL_DOES_NOT_EXIST_OR_NOT_AUTHORIZED"),
        "{out}"
    );
    assert_eq!(out["reopen_committed"], Value::Null);
    assert_eq!(out["status"]["latest_committed_offset_token"], "3");
    assert_eq!(exactly_once(&f.emu, "gw03"), vec![1, 2, 3]);
    let appends: Vec<_> = f
        .emu
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/gw03/rows"))
        .collect();
    assert_eq!(appends[0].status, 404);
    assert_eq!(
        appends[1].param("retryCount"),
        Some("0"),
        "a coded 404 is not retried"
    );

    // A second writer's open fences the first: its next append gets 400 STALE_CONTINUATION_TOKEN_SEQUENCER.
    let out = f.driver_ok("fence", "gw04", json!({"last": 4}));
    eprintln!("fence: {out}");
    assert_eq!(out["b_open_committed"], "1");
    assert!(
        out["a_error"]
            .as_str()
            .unwrap()
            .contains("STALE_CONTINUATION_TOKEN_SEQUENCER"),
        "{out}"
    );
    assert_eq!(out["status"]["latest_committed_offset_token"], "4");
    assert_eq!(exactly_once(&f.emu, "gw04"), vec![1, 2, 3, 4]);
    let stale = f
        .emu
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/gw04/rows") && r.status == 400)
        .count();
    assert!(
        stale >= 1,
        "the fenced writer's append was refused as stale"
    );
    // The fenced writer's row 2 never landed: the ledger's row 2 came from writer B.
    let two: Vec<_> = f
        .emu
        .ledger("gw04")
        .into_iter()
        .filter(|r| r.row["swipe_seq"] == 2)
        .collect();
    assert_eq!(two.len(), 1);
}
