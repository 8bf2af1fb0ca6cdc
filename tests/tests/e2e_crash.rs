//! Exactly-once across `kill -9`: real pty serial readers (an RDM6300 module and a
//! Wiegand-to-serial converter) → agent process → emulator, with the agent killed at random
//! moments while it reads and drains, then restarted.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use badge_tests::harness::{kill9, terminate, Rig, XorShift};
use badge_tests::serial_sim::BadgeWriter;

const ITERATIONS: u32 = 200;

#[test]
fn every_acknowledged_swipe_lands_exactly_once_across_kill_9() {
    let scratch = tempfile::tempdir().unwrap();
    let mut badges = BadgeWriter::open(scratch.path(), 0x1000_0000).unwrap();
    let rig = Rig::new(
        env!("CARGO_BIN_EXE_badge-agent-e2e"),
        &badges.readers_toml,
        Duration::from_millis(30),
    )
    .unwrap();

    badges.start();

    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    for _ in 0..ITERATIONS {
        let mut agent = rig.start_agent().unwrap();
        std::thread::sleep(Duration::from_millis(30 + rng.below(400)));
        kill9(&mut agent);
    }
    let sent = badges.stop();

    // A last, undisturbed run drains everything that was made durable.
    let acknowledged_before = rig.acknowledged().unwrap();
    let mut agent = rig.start_agent().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let acked = rig.acknowledged().unwrap();
        let (credentials, _) = rig.committed();
        let committed: BTreeSet<_> = credentials.into_iter().collect();
        if acked.is_subset(&committed) && acked.len() >= acknowledged_before.len() {
            // Give a duplicate the chance to show up before judging.
            std::thread::sleep(Duration::from_secs(2));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "drain did not finish: {} acknowledged, {} committed, missing e.g. {:?}",
            acked.len(),
            committed.len(),
            acked.difference(&committed).take(5).collect::<Vec<_>>()
        );
    }
    terminate(&mut agent).unwrap();

    let acked = rig.acknowledged().unwrap();
    let (credentials, event_ids) = rig.committed();
    let unique_credentials: BTreeSet<_> = credentials.iter().cloned().collect();
    let unique_ids: BTreeSet<_> = event_ids.iter().cloned().collect();
    eprintln!(
        "{ITERATIONS} kills: {} badges presented, {} acknowledged, {} committed",
        sent.len(),
        acked.len(),
        credentials.len()
    );
    assert!(
        acked.len() > 100,
        "too few swipes acknowledged: {}",
        acked.len()
    );
    assert_eq!(
        unique_ids.len(),
        event_ids.len(),
        "duplicate event_id committed"
    );
    assert_eq!(
        unique_credentials.len(),
        credentials.len(),
        "a swipe was committed twice"
    );
    // A kill must never leave a database sled calls corrupt: the agent would move the whole
    // buffer aside, and with it every acknowledged swipe not yet committed.
    assert!(
        !rig.agent_log().contains("buffer_quarantined"),
        "the agent quarantined its buffer after a kill"
    );
    let lost: Vec<_> = acked.difference(&unique_credentials).collect();
    assert!(lost.is_empty(), "acknowledged swipes missing: {lost:?}");
    let invented: Vec<_> = unique_credentials.difference(&sent).collect();
    assert!(invented.is_empty(), "rows nobody presented: {invented:?}");
}
