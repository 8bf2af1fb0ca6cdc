//! Exactly-once across `kill -9`: real pty serial readers (an RDM6300 module and a
//! Wiegand-to-serial converter) → agent process → emulator, with the agent killed at random
//! moments while it reads and drains, then restarted.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use badge_tests::harness::{kill9, terminate, Rig, XorShift};
use badge_tests::serial_sim::{converter_line, rdm6300_frame, SerialSim};

const ITERATIONS: u32 = 200;

#[test]
fn every_acknowledged_swipe_lands_exactly_once_across_kill_9() {
    let scratch = tempfile::tempdir().unwrap();
    let rdm_link = scratch.path().join("ttyRDM");
    let conv_link = scratch.path().join("ttyCONV");
    let mut rdm = SerialSim::open_linked(&rdm_link).unwrap();
    let mut conv = SerialSim::open_linked(&conv_link).unwrap();
    let readers = format!(
        "[[reader]]\nid = \"rdm\"\nkind = \"serial\"\ndevice = \"{}\"\nframing = \"rdm6300\"\n\
         [[reader]]\nid = \"conv\"\nkind = \"serial\"\ndevice = \"{}\"\nframing = \"line\"\n",
        rdm_link.display(),
        conv_link.display()
    );
    let rig = Rig::new(
        env!("CARGO_BIN_EXE_badge-agent-e2e"),
        &readers,
        Duration::from_millis(30),
    )
    .unwrap();

    // A writer thread presents a new, unique badge every few milliseconds on alternating readers.
    let sent = Arc::new(Mutex::new(BTreeSet::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let sent = Arc::clone(&sent);
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut n: u64 = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                if n.is_multiple_of(2) {
                    let id = 0x1000_0000 + n;
                    rdm.send(&rdm6300_frame(id)).unwrap();
                    sent.lock().unwrap().insert(format!("EM4100:{id:010x}"));
                } else {
                    let (fc, card) = ((n >> 16) as u8, n as u16);
                    conv.send(&converter_line(fc, card)).unwrap();
                    sent.lock().unwrap().insert(format!(
                        "RAW24:{:06x}",
                        (u32::from(fc) << 16) | u32::from(card)
                    ));
                }
                std::thread::sleep(Duration::from_millis(4));
            }
        })
    };

    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    for _ in 0..ITERATIONS {
        let mut agent = rig.start_agent().unwrap();
        std::thread::sleep(Duration::from_millis(30 + rng.below(400)));
        kill9(&mut agent);
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();

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
    let sent = sent.lock().unwrap().clone();
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
    let lost: Vec<_> = acked.difference(&unique_credentials).collect();
    assert!(lost.is_empty(), "acknowledged swipes missing: {lost:?}");
    let invented: Vec<_> = unique_credentials.difference(&sent).collect();
    assert!(invented.is_empty(), "rows nobody presented: {invented:?}");
}
