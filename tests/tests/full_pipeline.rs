//! The whole pipeline in one test: simulated readers → the agent binary (a process) → the
//! Snowpipe Streaming emulator → its ledger of committed rows → the pipe's transformation → the
//! task graph → `FCT_ACCESS_EVENTS`, where every presented swipe must be exactly one row.
//!
//! The Rust side runs the agent until the emulator has committed every swipe, writes the ledger
//! (NDJSON, the emulator's own `CommittedRow` serialisation, as in its `--ledger-file` and
//! `/admin/ledger`) and the list of presented swipes, then runs `sql/tests/test_full_pipeline.py`,
//! which loads the ledger into the real SQL model under fakesnow and checks the fact.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeSet;
use std::io::Write;
use std::time::{Duration, Instant};

use badge_agent::readers::simulated::{card, card_number};
use badge_tests::harness::{terminate, Rig, GATEWAY};
use badge_tests::pyenv;
use serde_json::json;

/// Swipes per simulated reader: enough for known and unknown badges on both readers, few enough
/// that the run stays a few seconds.
const COUNT: u64 = 40;
/// Distinct cards per reader; above `COUNT`, so no card repeats within the dedup window.
const POPULATION: u32 = 1000;

/// (reader id, facility code, direction): two readers with different facilities, so their
/// credentials never collide.
const READERS: [(&str, u32, &str); 2] = [("lobby-in", 12, "in"), ("dock-out", 34, "out")];

#[test]
fn every_simulated_swipe_is_exactly_one_row_of_fct_access_events() {
    let readers_toml: String = READERS
        .iter()
        .map(|(id, facility, direction)| {
            format!(
                "[[reader]]\nid = \"{id}\"\nkind = \"simulated\"\nrate_per_sec = 100.0\ncount = {COUNT}\n\
                 facility = {facility}\npopulation = {POPULATION}\nzone = \"zone-{id}\"\n\
                 door = \"door-{id}\"\ndirection = \"{direction}\"\n"
            )
        })
        .collect();
    // What the simulated readers present, computed with the reader's own card sequence.
    let presented: Vec<serde_json::Value> = READERS
        .iter()
        .flat_map(|(id, facility, _)| {
            (0..COUNT).map(move |n| {
                let number = card_number(id, POPULATION, n);
                let credential = card(*facility, number).expect("fits H10301");
                json!({"reader_id": id, "credential": credential.canonical().to_string()})
            })
        })
        .collect();
    let expected = presented.len();

    let rig = Rig::new(
        env!("CARGO_BIN_EXE_badge-agent-e2e"),
        &readers_toml,
        Duration::from_millis(50),
    )
    .unwrap();
    let started = Instant::now();
    let mut agent = rig.start_agent().unwrap();
    let deadline = started + Duration::from_secs(60);
    while rig.emulator.ledger(GATEWAY).len() < expected {
        assert!(
            Instant::now() < deadline,
            "emulator committed {} of {expected} swipes in 60 s; agent log: {}",
            rig.emulator.ledger(GATEWAY).len(),
            rig.agent_log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Give a duplicate (a resent batch) the chance to be committed before the ledger is judged.
    std::thread::sleep(Duration::from_secs(1));
    terminate(&mut agent).unwrap();
    let ledger = rig.emulator.ledger(GATEWAY);
    eprintln!(
        "full_pipeline: {} rows committed in {:.1} s",
        ledger.len(),
        started.elapsed().as_secs_f64()
    );
    // A gap in seq is a swipe the agent lost on its side, whatever the SQL makes of the rest.
    let seqs: BTreeSet<u64> = ledger
        .iter()
        .filter_map(|r| r.row["seq"].as_u64())
        .collect();
    assert_eq!(
        seqs.len(),
        ledger.len(),
        "seq missing or repeated in the ledger"
    );
    let (first, last) = (seqs.first().unwrap(), seqs.last().unwrap());
    assert_eq!(last - first + 1, ledger.len() as u64, "seq gaps: {seqs:?}");

    let ledger_path = rig.dir.path().join("ledger.ndjson");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&ledger_path).unwrap());
    for row in &ledger {
        serde_json::to_writer(&mut file, row).unwrap();
        file.write_all(b"\n").unwrap();
    }
    file.into_inner().unwrap(); // flushes; the file is closed before pytest opens it
    let swipes_path = rig.dir.path().join("swipes.json");
    std::fs::write(&swipes_path, serde_json::to_vec(&presented).unwrap()).unwrap();

    let run = pyenv::pytest(
        &["sql/tests/test_full_pipeline.py", "-q", "-rfEs"],
        &[
            ("BADGE_PIPELINE_LEDGER", ledger_path.as_path()),
            ("BADGE_PIPELINE_SWIPES", swipes_path.as_path()),
        ],
    );
    // Every test of the file ran and passed; a skip would be a pass that proved nothing.
    let summary = run
        .output
        .lines()
        .rev()
        .find(|l| l.contains(" passed"))
        .unwrap_or("");
    assert!(
        !summary.contains("skipped") && !summary.contains("deselected"),
        "full_pipeline: pytest skipped tests: {summary}"
    );
    assert_eq!(
        run.passed, 2,
        "full_pipeline: expected both pytest tests to pass: {summary}"
    );
}
