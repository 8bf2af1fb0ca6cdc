//! The emulator's fault plan during a steady flow of swipes, and a long outage: no swipe lost,
//! none duplicated, order kept.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

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
    rig.assert_ledger_exactly_once(SWIPES, within);
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
