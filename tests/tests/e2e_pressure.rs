//! Transient storage faults while swipes arrive: the agent's descriptors exhausted (EMFILE on
//! every new file its commit opens), and the buffer's filesystem full (below the reserve). Every
//! swipe presented while the fault lasted must land exactly once after it clears: a failed group
//! commit is retried from the in-memory retry queue, not dropped.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use badge_agent::health::server::fetch;
use badge_agent::row::rfc3339_utc_millis;
use badge_tests::faults::{
    lowest_free_fd, nofile, set_nofile_soft, use_buffer, use_health_port, Tmpfs,
};
use badge_tests::harness::{terminate, Rig};

/// Swipes of the simulated reader: 40/s for 10 s, the fault lasts 4 s of it.
const SWIPES: u64 = 400;
const FAULT: Duration = Duration::from_secs(4);

fn rig() -> Rig {
    let readers = format!(
        "[[reader]]\nid = \"sim\"\nkind = \"simulated\"\nrate_per_sec = 40.0\ncount = {SWIPES}\npopulation = 5000\n"
    );
    Rig::new(
        env!("CARGO_BIN_EXE_badge-agent-e2e"),
        &readers,
        Duration::from_millis(200),
    )
    .unwrap()
}

fn now_ms() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Waits for every swipe in the ledger, then checks exactly once, in order, none missing;
/// returns how many were swiped inside `window` (Unix ms).
fn assert_all_landed_once(rig: &Rig, window: (i64, i64)) -> usize {
    let rows = rig.assert_ledger_exactly_once(SWIPES, Duration::from_secs(120));
    let log = rig.agent_log();
    assert!(
        !log.contains("swipe NOT stored"),
        "a swipe was given up:\n{log}"
    );
    let (from, to) = (rfc3339_utc_millis(window.0), rfc3339_utc_millis(window.1));
    // RFC 3339 UTC with fixed milliseconds sorts as time does.
    rows.iter()
        .filter_map(|r| r.row["swiped_at"].as_str())
        .filter(|at| (from.as_str()..=to.as_str()).contains(at))
        .count()
}

fn after_the_fault(rig: &Rig, addr: SocketAddr) {
    let log = rig.agent_log();
    assert!(
        log.contains("group commit failed; swipes are held in memory"),
        "the fault never reached a group commit (the test did not test anything):\n{log}"
    );
    assert!(
        log.contains("group commits work again; every held swipe is durable"),
        "{log}"
    );
    let (status, text) = fetch(addr, "/metrics", Duration::from_secs(5)).unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        metric(&text, "badge_agent_buffer_retry_queue_records"),
        0.0,
        "{text}"
    );
    assert!(
        !text.contains("badge_agent_buffer_dropped_records_total{"),
        "swipes counted as dropped: {text}"
    );
    assert_eq!(
        fetch(addr, "/readyz", Duration::from_secs(5)).unwrap().0,
        200
    );
}

#[test]
fn swipes_arriving_while_the_agent_is_out_of_descriptors_land_once() {
    let rig = rig();
    let addr = use_health_port(&rig).unwrap();
    let mut agent = rig.start_agent().unwrap();
    let pid = agent.id();
    rig.wait_for("the first durable swipes", || {
        rig.acknowledged().unwrap().len() >= 20
    });

    // The fault: the soft descriptor limit at the lowest free descriptor, so every open()
    // fails with EMFILE (the commit's fsync opens each database file). Re-applied while it
    // lasts, in case a descriptor closes and leaves a lower one free.
    let (soft, _) = nofile(pid).unwrap();
    let start = now_ms();
    let until = Instant::now() + FAULT;
    while Instant::now() < until {
        set_nofile_soft(pid, lowest_free_fd(pid).unwrap()).unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    set_nofile_soft(pid, soft).unwrap();
    let end = now_ms();

    let during = assert_all_landed_once(&rig, (start, end));
    after_the_fault(&rig, addr);
    terminate(&mut agent).unwrap();
    eprintln!(
        "descriptors exhausted for {FAULT:?}: {during} swipes presented meanwhile, all stored once"
    );
    assert!(during >= 80, "too few swipes during the fault: {during}");
}

#[test]
fn swipes_arriving_while_the_buffer_filesystem_is_full_land_once() {
    let rig = rig();
    let addr = use_health_port(&rig).unwrap();
    const MIB: u64 = 1024 * 1024;
    let fs = Tmpfs::mount(&rig.dir.path().join("small"), 48 * MIB).unwrap();
    use_buffer(
        &rig,
        &fs.dir.join("buffer"),
        "min_free_bytes = 16777216\nmax_bytes = 33554432\n",
    )
    .unwrap();
    let mut agent = rig.start_agent().unwrap();
    rig.wait_for("the first durable swipes", || {
        rig.acknowledged().unwrap().len() >= 20
    });

    // The fault: the filesystem fills up (another writer) to 8 MiB free, under the 16 MiB
    // reserve; then the space comes back.
    let ballast = fs.dir.join("ballast");
    let fill = fs.available().unwrap().saturating_sub(8 * MIB);
    let start = now_ms();
    std::fs::write(&ballast, vec![0u8; usize::try_from(fill).unwrap()]).unwrap();
    let until = Instant::now() + FAULT;
    let (mut not_ready, mut max_queue) = (0, 0.0_f64);
    while Instant::now() < until {
        if let Ok((503, _)) = fetch(addr, "/readyz", Duration::from_secs(1)) {
            not_ready += 1;
        }
        if let Ok((200, text)) = fetch(addr, "/metrics", Duration::from_secs(1)) {
            max_queue = max_queue.max(metric(&text, "badge_agent_buffer_retry_queue_records"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    std::fs::remove_file(&ballast).unwrap();
    let end = now_ms();

    let during = assert_all_landed_once(&rig, (start, end));
    after_the_fault(&rig, addr);
    terminate(&mut agent).unwrap();
    eprintln!(
        "filesystem full for {FAULT:?}: {during} swipes presented meanwhile, all stored once; \
         retry queue peaked at {max_queue}, /readyz 503 {not_ready} times"
    );
    assert!(not_ready > 0, "readiness never showed the held swipes");
    assert!(max_queue > 0.0, "the retry-queue gauge never moved");
    assert!(during >= 80, "too few swipes during the fault: {during}");
    drop(fs);
}
