//! A USB serial reader unplugged and plugged back in while the agent runs: the reader task
//! notices, retries with back-off, reopens the same `/dev/serial/by-id` path once it reappears,
//! and every swipe acknowledged before and after lands exactly once. The agent never exits.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use badge_tests::harness::{terminate, Rig};
use badge_tests::serial_sim::{rdm6300_frame, SerialSim};

const PER_PLUG: u64 = 10;

fn connects(rig: &Rig) -> usize {
    rig.agent_log().matches("serial reader connected").count()
}

/// Presents `PER_PLUG` new badges, spaced beyond the dedup window's reach (distinct ids).
fn present(sim: &mut SerialSim, first: u64) -> BTreeSet<String> {
    (first..first + PER_PLUG)
        .map(|id| {
            sim.send(&rdm6300_frame(id)).unwrap();
            std::thread::sleep(Duration::from_millis(20));
            format!("EM4100:{id:010x}")
        })
        .collect()
}

#[test]
fn unplugged_reader_is_reopened_and_nothing_is_lost() {
    let scratch = tempfile::tempdir().unwrap();
    let link = scratch.path().join("usb-RDM6300-if00-port0");
    let mut sim = SerialSim::open_linked(&link).unwrap();
    let rig = Rig::new(
        env!("CARGO_BIN_EXE_badge-agent-e2e"),
        &format!(
            "[[reader]]\nid = \"door\"\nkind = \"serial\"\ndevice = \"{}\"\nframing = \"rdm6300\"\n",
            link.display()
        ),
        Duration::from_millis(50),
    )
    .unwrap();
    let mut agent = rig.start_agent().unwrap();
    rig.wait_for("the first connect", || connects(&rig) == 1);
    let mut presented = present(&mut sim, 0x5000_0000);
    rig.wait_for("the first swipes to be durable", || {
        rig.acknowledged().unwrap().len() as u64 == PER_PLUG
    });

    // Unplug: the tty goes away (hang-up on the open descriptor) and so does its by-id link.
    drop(sim);
    std::fs::remove_file(&link).unwrap();
    rig.wait_for("the reader to notice the unplug", || {
        rig.agent_log().contains("retrying with back-off")
    });
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        agent.try_wait().unwrap().is_none(),
        "an unplug must not stop the agent"
    );

    // Replug: a new tty behind the same link. Bytes sent before the reopen would be discarded (as
    // with real USB), so present only once the reader says it is back.
    let mut sim = SerialSim::open_linked(&link).unwrap();
    rig.wait_for("the reconnect", || connects(&rig) == 2);
    presented.extend(present(&mut sim, 0x6000_0000));
    rig.wait_for("every swipe to be committed", || {
        rig.acknowledged().unwrap().len() as u64 == 2 * PER_PLUG
            && rig.committed().0.len() as u64 >= 2 * PER_PLUG
    });
    terminate(&mut agent).unwrap();

    let (credentials, event_ids) = rig.committed();
    let distinct: BTreeSet<_> = event_ids.iter().collect();
    assert_eq!(distinct.len(), event_ids.len(), "duplicates: {event_ids:?}");
    let committed: BTreeSet<String> = credentials.iter().cloned().collect();
    assert_eq!(
        credentials.len(),
        committed.len(),
        "a swipe committed twice"
    );
    assert_eq!(
        committed, presented,
        "committed card rows differ from what was presented"
    );
    assert_eq!(committed, rig.acknowledged().unwrap());
    // The unplug is on record for the operator, as a warning naming the device.
    assert!(
        rig.agent_log()
            .contains(&format!("{} disconnected", link.display())),
        "{}",
        rig.agent_log()
    );
}
