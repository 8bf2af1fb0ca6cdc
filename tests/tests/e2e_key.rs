//! The agent process with a bad private key: a key file readable by others is refused, and a key
//! Snowflake does not know gives an error naming the fingerprint to register. Either way the
//! readers keep recording, nothing reaches the service with the bad key, and once the operator
//! fixes the key every buffered swipe lands exactly once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use badge_agent::snowpipe::auth::{
    generate_private_key, public_key_fingerprint, write_private_key,
};
use badge_tests::harness::{terminate, Rig, GATEWAY};

const SWIPES: usize = 30;

fn rig() -> Rig {
    Rig::new(
        env!("CARGO_BIN_EXE_badge-agent-e2e"),
        &format!("[[reader]]\nid = \"sim\"\nkind = \"simulated\"\nrate_per_sec = 100.0\ncount = {SWIPES}\n"),
        Duration::from_millis(200),
    )
    .unwrap()
}

fn key_path(rig: &Rig) -> std::path::PathBuf {
    rig.dir.path().join("rsa_key.p8")
}

/// Runs with the bad key until every swipe is durable and the drain has said why it cannot send.
fn run_with_bad_key(rig: &Rig, expected_error: &[&str]) {
    let mut agent = rig.start_agent().unwrap();
    rig.wait_for("every swipe to be durable", || {
        rig.acknowledged().unwrap().len() == SWIPES
    });
    rig.wait_for("the key error in the log", || {
        let log = rig.agent_log();
        expected_error.iter().all(|e| log.contains(e))
    });
    assert!(
        agent.try_wait().unwrap().is_none(),
        "the agent must keep recording swipes while the key is bad"
    );
    terminate(&mut agent).unwrap();
    assert!(rig.emulator.ledger(GATEWAY).is_empty());
}

/// Swipes acknowledged across all runs (each run's simulated reader presents `SWIPES` anew).
fn acknowledged_count(rig: &Rig) -> usize {
    rig.agent_log()
        .lines()
        .filter(|l| l.contains("swipe durable"))
        .count()
}

/// With the key fixed, a restarted agent drains every buffered swipe exactly once, then the new
/// ones of its own run.
fn fixed_key_drains_everything(rig: &Rig) {
    let mut agent: Child = rig.start_agent().unwrap();
    rig.wait_for("both runs' swipes to be committed", || {
        acknowledged_count(rig) == 2 * SWIPES && rig.emulator.ledger(GATEWAY).len() >= 2 * SWIPES
    });
    // Anything sent twice would show up within a few status polls.
    std::thread::sleep(Duration::from_secs(1));
    terminate(&mut agent).unwrap();
    let (credentials, event_ids) = rig.committed();
    let distinct: BTreeSet<_> = event_ids.iter().collect();
    assert_eq!(event_ids.len(), 2 * SWIPES, "{event_ids:?}");
    assert_eq!(distinct.len(), 2 * SWIPES, "duplicates: {event_ids:?}");
    let credentials: BTreeSet<String> = credentials.into_iter().collect();
    assert_eq!(credentials, rig.acknowledged().unwrap());
}

/// Runs `doctor`. It refuses root (it probes directories the agent's user can write), so when
/// the tests run as root it runs as `nobody` (65534), on a copy of the binary inside the scratch
/// directory handed to that user — as an operator runs it with `sudo -u badge-agent`.
fn doctor(rig: &Rig) -> String {
    let dir = rig.dir.path();
    let bin = dir.join("badge-agent-doctor");
    std::fs::copy(env!("CARGO_BIN_EXE_badge-agent-e2e"), &bin).unwrap();
    let as_root = std::fs::metadata(dir).unwrap().uid() == 0;
    let mut cmd = if as_root {
        chown_recursive(dir, "65534:65534");
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(&bin);
        c
    } else {
        Command::new(&bin)
    };
    let out = cmd
        .arg("--config")
        .arg(&rig.config)
        .arg("doctor")
        .env("HTTPS_PROXY", "http://127.0.0.1:9")
        .env("NO_PROXY", "127.0.0.1")
        .output()
        .unwrap();
    if as_root {
        // Back to the agent's user (root here): the agent refuses a key file another user owns.
        chown_recursive(dir, "0:0");
    }
    assert!(!out.status.success(), "doctor must fail on a bad key");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn chown_recursive(dir: &Path, owner: &str) {
    let chown = Command::new("chown")
        .args(["-R", owner])
        .arg(dir)
        .status()
        .expect("chown (coreutils) must be installed");
    assert!(chown.success(), "chown -R {owner} {}", dir.display());
}

#[test]
fn key_readable_by_others_is_refused_with_the_fix() {
    let rig = rig();
    let key = key_path(&rig);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();

    let fix = format!("chmod 600 {}", key.display());
    run_with_bad_key(&rig, &["refusing it", &fix]);
    // The key was never used: not even the JWT left the gateway.
    assert!(
        rig.emulator.requests().is_empty(),
        "{:?}",
        rig.emulator.requests()
    );
    let report = doctor(&rig);
    assert!(
        report
            .lines()
            .any(|l| l.starts_with("FAIL") && l.contains(&fix)),
        "{report}"
    );

    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    fixed_key_drains_everything(&rig);
}

#[test]
fn unregistered_key_names_the_fingerprint_to_register() {
    let rig = rig();
    let key = key_path(&rig);
    let registered = std::fs::read(&key).unwrap();
    let wrong = generate_private_key(2048).unwrap();
    std::fs::remove_file(&key).unwrap();
    write_private_key(&key, &wrong).unwrap();
    let fingerprint = public_key_fingerprint(&wrong.to_public_key());

    run_with_bad_key(
        &rig,
        &[
            "rejected the key-pair JWT",
            "BADGE_INGEST",
            &format!("RSA_PUBLIC_KEY_FP = SHA256:{fingerprint}"),
        ],
    );
    let report = doctor(&rig);
    assert!(
        report
            .lines()
            .any(|l| l.starts_with("FAIL") && l.contains(&fingerprint)),
        "{report}"
    );

    std::fs::write(&key, registered).unwrap();
    fixed_key_drains_everything(&rig);
}
