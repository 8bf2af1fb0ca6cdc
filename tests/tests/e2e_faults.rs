//! The emulator's fault plan during a steady flow of swipes, and a long outage: no swipe lost,
//! none duplicated, order kept.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use badge_tests::harness::{terminate, Rig, GATEWAY};
use snowpipe_emulator::{FaultAction, FaultRule, Op};

const SWIPES: u64 = 300;

fn rig() -> Rig {
    let readers = format!(
        "[[reader]]\nid = \"sim\"\nkind = \"simulated\"\nrate_per_sec = 30.0\ncount = {SWIPES}\npopulation = 5000\n"
    );
    Rig::new(
        env!("CARGO_BIN_EXE_badge-agent-e2e"),
        &readers,
        Duration::from_millis(200),
    )
    .unwrap()
}

/// Waits until the ledger holds `SWIPES` rows, then checks exactly-once and order.
fn assert_all_landed_once(rig: &Rig, within: Duration) {
    let deadline = Instant::now() + within;
    while rig.emulator.ledger(GATEWAY).len() < SWIPES as usize {
        assert!(
            Instant::now() < deadline,
            "only {} of {SWIPES} swipes committed; agent log:\n{}",
            rig.emulator.ledger(GATEWAY).len(),
            rig.agent_log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(2)); // let a duplicate show up, if there is one
    let rows = rig.emulator.ledger(GATEWAY);
    let seqs: Vec<u64> = rows
        .iter()
        .map(|r| r.row["seq"].as_u64().unwrap())
        .collect();
    let unique: BTreeSet<_> = seqs.iter().copied().collect();
    assert_eq!(seqs.len(), unique.len(), "a swipe was committed twice");
    assert_eq!(unique, (0..SWIPES).collect(), "swipes missing");
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "order not kept");
}

#[test]
fn the_fault_plan_during_a_steady_flow_loses_and_duplicates_nothing() {
    let rig = rig();
    for (op, nth, action) in [
        (Op::Append, 1, FaultAction::ExpireTokens),
        (Op::Append, 2, FaultAction::Unauthorized),
        (Op::Append, 3, FaultAction::TooManyRequests),
        (Op::Append, 4, FaultAction::InternalError),
        (Op::Append, 5, FaultAction::Unavailable),
        (Op::Append, 6, FaultAction::Reset),
        (Op::Append, 7, FaultAction::AppliedThenReset),
        (Op::Append, 8, FaultAction::NotFound),
        (Op::Append, 9, FaultAction::NotFoundEmpty),
        (Op::Open, 1, FaultAction::Conflict),
        (Op::Status, 1, FaultAction::InternalError),
        (Op::Status, 2, FaultAction::Reset),
    ] {
        rig.emulator.add_fault(FaultRule::nth(op, nth, action));
    }
    let mut agent = rig.start_agent().unwrap();
    assert_all_landed_once(&rig, Duration::from_secs(180));
    terminate(&mut agent).unwrap();
    let silent: Vec<_> = rig
        .emulator
        .faults()
        .into_iter()
        .filter(|(_, _, fired)| *fired == 0)
        .map(|(rule, _, _)| rule)
        .collect();
    assert!(silent.is_empty(), "faults that never fired: {silent:?}");
}

#[test]
fn a_long_outage_is_drained_in_order_once_the_service_returns() {
    let rig = rig();
    // Every request fails as if the service were down, until the rule is lifted.
    rig.emulator
        .add_fault(FaultRule::nth(Op::Any, 1, FaultAction::Unavailable).times(0));
    let mut agent = rig.start_agent().unwrap();
    std::thread::sleep(Duration::from_secs(8)); // all swipes are read and buffered meanwhile
    assert!(rig.emulator.ledger(GATEWAY).is_empty());
    rig.emulator.set_faults(Default::default());
    assert_all_landed_once(&rig, Duration::from_secs(180));
    terminate(&mut agent).unwrap();
}
