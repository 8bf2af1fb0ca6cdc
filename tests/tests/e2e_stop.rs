//! SIGTERM ends the agent within 5 s, exit code 0, in every state the upload side can be in
//! (retry back-off, 409 wait, a hanging token exchange, a TLS connect that never answers) and
//! with the group commit's retry queue full (the buffer's filesystem full), and a restart then
//! delivers every acknowledged swipe exactly once.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::process::Child;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use badge_tests::faults::{use_buffer, Tmpfs};
use badge_tests::harness::{kill9, terminate, Rig, GATEWAY};
use snowpipe_emulator::{FaultAction, FaultRule, Op};

/// Swipes per agent run (the simulated reader starts over on each run).
const SWIPES: usize = 40;
/// The stop budget (systemd's own stop timeout is 30 s).
const STOP_WITHIN: Duration = Duration::from_secs(5);

fn rig() -> Rig {
    rig_with(SWIPES)
}

/// A rig whose simulated reader presents `swipes` swipes per agent run, 200 a second.
fn rig_with(swipes: usize) -> Rig {
    let readers = format!(
        "[[reader]]\nid = \"sim\"\nkind = \"simulated\"\nrate_per_sec = 200.0\ncount = {swipes}\npopulation = 50000\n"
    );
    Rig::new(
        env!("CARGO_BIN_EXE_badge-agent-e2e"),
        &readers,
        Duration::from_millis(200),
    )
    .unwrap()
}

fn durable(rig: &Rig) -> usize {
    rig.agent_log().matches("swipe durable").count()
}

/// Starts the agent and waits until this run's swipes are acknowledged.
fn start(rig: &Rig, acknowledged_before: usize) -> Child {
    start_with(rig, acknowledged_before, SWIPES)
}

/// Starts the agent and waits until `swipes` more swipes are acknowledged.
fn start_with(rig: &Rig, acknowledged_before: usize, swipes: usize) -> Child {
    let agent = rig.start_agent().unwrap();
    rig.wait_for("the swipes to be acknowledged", || {
        durable(rig) >= acknowledged_before + swipes
    });
    agent
}

/// Sends SIGTERM and asserts a clean exit within [`STOP_WITHIN`].
fn stop_promptly(rig: &Rig, agent: &mut Child, state: &str) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(agent.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let t0 = Instant::now();
    let status = loop {
        if let Some(status) = agent.try_wait().unwrap() {
            break status;
        }
        if t0.elapsed() > STOP_WITHIN * 3 {
            kill9(agent);
            panic!(
                "{state}: still running {:?} after SIGTERM; agent log:\n{}",
                t0.elapsed(),
                rig.agent_log()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = t0.elapsed();
    eprintln!("{state}: SIGTERM to exit {took:?}");
    assert!(
        took <= STOP_WITHIN,
        "{state}: SIGTERM to exit took {took:?}; agent log:\n{}",
        rig.agent_log()
    );
    assert!(status.success(), "{state}: exit status {status}");
}

/// Restarts the agent without faults and checks every acknowledged swipe lands exactly once.
fn restart_and_check(rig: &Rig) {
    restart_and_check_with(rig, SWIPES);
}

/// [`restart_and_check`] for a reader presenting `swipes` swipes per run: waits until all of
/// them are acknowledged, so nothing is acknowledged after the ledger check starts.
fn restart_and_check_with(rig: &Rig, swipes: usize) {
    rig.emulator.set_faults(Default::default());
    let before = durable(rig);
    let mut agent = start_with(rig, before, swipes);
    let acknowledged = durable(rig);
    rig.wait_for("every acknowledged swipe to be committed", || {
        rig.emulator.ledger(GATEWAY).len() >= acknowledged
    });
    std::thread::sleep(Duration::from_secs(1)); // let a duplicate show up, if there is one
    terminate(&mut agent).unwrap();
    let seqs: Vec<u64> = rig
        .emulator
        .ledger(GATEWAY)
        .iter()
        .map(|r| r.row["seq"].as_u64().unwrap())
        .collect();
    let unique: BTreeSet<u64> = seqs.iter().copied().collect();
    assert_eq!(seqs.len(), unique.len(), "a swipe was committed twice");
    assert_eq!(
        unique,
        (0..acknowledged as u64).collect(),
        "acknowledged swipes missing"
    );
}

/// Runs one scenario: faults installed before the start, wait until `entered` holds (the agent
/// is in the state), stop, restart, check.
fn scenario(state: &str, rules: Vec<FaultRule>, entered: impl Fn(&Rig) -> bool) {
    let rig = rig();
    for rule in rules {
        rig.emulator.add_fault(rule);
    }
    let mut agent = start(&rig, 0);
    rig.wait_for(state, || entered(&rig));
    std::thread::sleep(Duration::from_millis(500)); // well inside the wait, not at its edge
    stop_promptly(&rig, &mut agent, state);
    restart_and_check(&rig);
}

fn fired(rig: &Rig) -> u64 {
    rig.emulator.faults().iter().map(|(_, _, n)| n).sum()
}

#[test]
fn stop_during_retry_back_off() {
    // Every append answers 503: the client backs off 1, 2, 4, … s between resends.
    scenario(
        "retry back-off",
        vec![FaultRule::nth(Op::Append, 1, FaultAction::Unavailable).times(0)],
        |rig| fired(rig) >= 2,
    );
}

#[test]
fn stop_during_the_409_wait() {
    // Every open answers 409 (uncommitted data): the client waits before each retry.
    scenario(
        "409 wait",
        vec![FaultRule::nth(Op::Open, 1, FaultAction::Conflict).times(0)],
        |rig| fired(rig) >= 2,
    );
}

#[test]
fn stop_during_a_token_exchange_that_hangs() {
    // The scoped-token exchange takes a minute to answer.
    scenario(
        "token refresh",
        vec![FaultRule::nth(Op::Token, 1, FaultAction::Delay(60_000)).times(0)],
        |rig| fired(rig) >= 1,
    );
}

#[test]
fn stop_during_a_tls_connect_that_never_answers() {
    // A listener that accepts and never says a word: the TLS handshake hangs.
    let rig = rig();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming().take(64) {
            count.fetch_add(1, Ordering::Relaxed);
            held.push(conn); // kept open, never answered
        }
    });
    let good = std::fs::read_to_string(&rig.config).unwrap();
    let url = rig.emulator.url();
    assert!(good.contains(&url));
    std::fs::write(
        &rig.config,
        good.replace(&url, &format!("https://127.0.0.1:{port}")),
    )
    .unwrap();
    let mut agent = start(&rig, 0);
    rig.wait_for("a connection to the silent listener", || {
        accepted.load(Ordering::Relaxed) >= 1
    });
    std::thread::sleep(Duration::from_millis(500));
    stop_promptly(&rig, &mut agent, "slow TLS connect");
    std::fs::write(&rig.config, good).unwrap();
    restart_and_check(&rig);
}

#[test]
fn stop_with_the_group_commit_retry_queue_full() {
    // The buffer lives on a small tmpfs that another writer fills below the agent's reserve:
    // every group commit fails, the swipes wait in the retry queue (20 at most here) and,
    // the reader presenting 200 a second, the queue is full and overflows when SIGTERM comes.
    const PER_RUN: usize = 2000;
    const MIB: u64 = 1024 * 1024;
    let rig = rig_with(PER_RUN);
    let fs = Tmpfs::mount(&rig.dir.path().join("small"), 48 * MIB).unwrap();
    use_buffer(
        &rig,
        &fs.dir.join("buffer"),
        "min_free_bytes = 16777216\nmax_bytes = 33554432\nretry_queue_max_records = 20\n",
    )
    .unwrap();
    let mut agent = start_with(&rig, 0, SWIPES);
    let ballast = fs.dir.join("ballast");
    let fill = fs.available().unwrap().saturating_sub(8 * MIB);
    std::fs::write(&ballast, vec![0u8; usize::try_from(fill).unwrap()]).unwrap();
    rig.wait_for("the retry queue to overflow", || {
        rig.agent_log()
            .contains("commits are failing and the retry queue is full")
    });
    std::thread::sleep(Duration::from_millis(500)); // the reader keeps it full meanwhile
    assert!(
        agent.try_wait().unwrap().is_none(),
        "the agent ended before SIGTERM:\n{}",
        rig.agent_log()
    );
    stop_promptly(&rig, &mut agent, "full group-commit retry queue");
    std::fs::remove_file(&ballast).unwrap();
    restart_and_check_with(&rig, PER_RUN);
    drop(fs);
}
