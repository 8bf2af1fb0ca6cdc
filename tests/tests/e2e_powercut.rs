//! Power cuts: the agent's buffer on LazyFS, a FUSE file system that keeps its own page cache
//! and loses every byte not fsynced when told to (method: docs/durability-testing.md). Real pty
//! serial readers feed the agent; the power is cut (kill -9, then LazyFS drops its unsynced
//! data) at random moments while it ingests, during an outage, and while it drains a backlog
//! with deletions in flight; some cuts are torn writes inside a commit instead, and some come
//! while the agent opens its buffer, inside sled's snapshot write. After every cut
//! the buffer must open without quarantine and hold every acknowledged swipe that is not yet in
//! the ledger; at the end the ledger holds every acknowledged swipe exactly once.
//!
//! Needs root and /dev/fuse; builds LazyFS itself. Fails (never skips) when either is missing.
//! Shown to catch a real bug: `cargo test -p badge-tests --features test-unsafe-skip-fsync
//! --test e2e_powercut` builds an agent that acknowledges before fsync, and this test fails.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use badge_agent::buffer::{Buffer, BufferOptions};
use badge_agent::row::rfc3339_utc_millis;
use badge_tests::faults::{build_lazyfs, use_buffer, LazyFs};
use badge_tests::harness::{kill9, row_key, terminate, Rig, SwipeKey, GATEWAY};
use badge_tests::serial_sim::BadgeWriter;
use snowpipe_emulator::{FaultAction, FaultRule, Op};

/// Cuts while ingesting with the service up (every 3rd a torn write).
const INGEST_CUTS: u32 = 16;
/// Cuts while the agent opens its buffer: at every open sled writes its snapshot to
/// `snap.<lsn>.generating`, fsyncs it and renames it; the power goes right before that fsync.
const STARTUP_CUTS: u32 = 3;
/// Cuts while ingesting during an outage: builds a backlog.
const OUTAGE_CUTS: u32 = 6;
/// Cuts while that backlog drains (appends slowed down so deletions are often in flight).
const DRAIN_CUTS: u32 = 12;

/// What one cut left behind, checked with the agent down.
struct AfterCut {
    stored: usize,
    committed: Option<u64>,
}

/// Opens the buffer the way the agent does and checks it: no quarantine, and every acknowledged
/// swipe is either still buffered or already in the ledger.
fn check_buffer(rig: &Rig, dir: &Path, cut: &str) -> AfterCut {
    let mut opts = BufferOptions::new(dir);
    opts.min_free_bytes = 0;
    let buffer =
        Buffer::open(opts).unwrap_or_else(|e| panic!("after {cut}: the buffer does not open: {e}"));
    assert!(
        buffer.quarantined_to().is_none(),
        "after {cut}: the buffer was quarantined (moved to {:?})",
        buffer.quarantined_to()
    );
    let records = buffer.range_from(0, usize::MAX, usize::MAX).unwrap();
    let committed = buffer.committed();
    drop(buffer);
    // A swipe is known by its reader and time (the log names no credential).
    let stored: BTreeSet<SwipeKey> = records
        .iter()
        .map(|(_, r)| (r.reader_id.clone(), rfc3339_utc_millis(r.swiped_at_ms)))
        .collect();
    let in_ledger: BTreeSet<SwipeKey> = rig
        .emulator
        .ledger(GATEWAY)
        .iter()
        .map(|r| row_key(&r.row))
        .collect();
    let acked = rig.acked().unwrap();
    let lost: Vec<_> = acked
        .iter()
        .filter(|a| !stored.contains(&a.key()) && !in_ledger.contains(&a.key()))
        .take(10)
        .collect();
    assert!(
        lost.is_empty(),
        "after {cut}: acknowledged swipes neither buffered nor committed: {lost:?} \
         ({} acknowledged, {} buffered, {} committed)",
        acked.len(),
        stored.len(),
        in_ledger.len()
    );
    AfterCut {
        stored: records.len(),
        committed,
    }
}

#[test]
fn acknowledged_swipes_survive_power_cuts_during_ingest_and_drain() {
    let started = Instant::now();
    let lazyfs_bin = build_lazyfs();
    let mut fs = LazyFs::new(&lazyfs_bin).unwrap();
    fs.mount().unwrap();

    let scratch = tempfile::tempdir().unwrap();
    let mut badges = BadgeWriter::open(scratch.path(), 0x2000_0000).unwrap();
    let rig = Rig::new(
        env!("CARGO_BIN_EXE_badge-agent-e2e"),
        &badges.readers_toml,
        Duration::from_millis(100),
    )
    .unwrap();
    let buffer_dir = fs.mnt.join("buffer");
    // LazyFS reports no free space (statvfs), so the free-space reserve is off here.
    use_buffer(&rig, &buffer_dir, "min_free_bytes = 0\n").unwrap();
    let db_file = fs.root.join("buffer/db");

    badges.start();

    let mut rng = badge_tests::harness::XorShift(0x5DEE_CE66_D1CE_4E5B);
    let (mut cuts, mut torn_fired, mut torn_tried) = (0u32, 0u32, 0u32);
    let mut startup_fired = 0u32;
    let mut drain_cuts_deleting = 0u32;
    let mut stored_before = check_buffer(&rig, &buffer_dir, "the first mount");
    let phases = [
        ("ingest", INGEST_CUTS),
        ("start-up", STARTUP_CUTS),
        ("outage", OUTAGE_CUTS),
        ("drain", DRAIN_CUTS),
    ];
    for (phase, count) in phases {
        match phase {
            "outage" => rig
                .emulator
                .add_fault(FaultRule::nth(Op::Any, 1, FaultAction::Unavailable).times(0)),
            "drain" => {
                rig.emulator.set_faults(Default::default());
                rig.emulator
                    .add_fault(FaultRule::nth(Op::Append, 1, FaultAction::Delay(150)).times(0));
            }
            _ => {}
        }
        for i in 0..count {
            let mut agent = rig.start_agent().unwrap();
            let torn = phase == "ingest" && i % 3 == 2;
            let label = format!("{phase} cut {i}");
            if torn {
                // A torn write inside a commit: the next write to the database file is split,
                // only some parts persist, and LazyFS dies (the power is gone). (LazyFS's
                // torn-seq needs several writes between two fsyncs; sled's commit is one write.)
                torn_tried += 1;
                std::thread::sleep(Duration::from_millis(300 + rng.below(500)));
                // Which parts of the split write reach the disk: a prefix, a suffix, a hole.
                let (parts, persist) = [(3, "1,3"), (2, "1"), (4, "2,4"), (3, "2")]
                    [usize::try_from(torn_tried % 4).unwrap()];
                let command = format!(
                    "lazyfs::torn-op::file={}::parts={parts}::persist={persist}",
                    db_file.display()
                );
                fs.inject(&command).unwrap();
                if fs
                    .cut_after_fault(&mut agent, Duration::from_secs(4))
                    .unwrap()
                {
                    torn_fired += 1;
                    eprintln!("torn write fired: {command}");
                }
            } else if phase == "start-up" {
                // Swipes since the last open give sled something to put in a new snapshot.
                std::thread::sleep(Duration::from_millis(300 + rng.below(500)));
                kill9(&mut agent);
                fs.inject(r"lazyfs::crash::timing=before::op=fsync::from_rgx=.*\.generating")
                    .unwrap();
                let mut reopening = rig.start_agent().unwrap();
                if fs
                    .cut_after_fault(&mut reopening, Duration::from_secs(5))
                    .unwrap()
                {
                    startup_fired += 1;
                }
            } else {
                let wait = match phase {
                    "drain" => 250 + rng.below(1500),
                    _ => 150 + rng.below(900),
                };
                std::thread::sleep(Duration::from_millis(wait));
                // The power cut: the process dies, then everything not fsynced is gone.
                kill9(&mut agent);
                fs.clear_cache().unwrap();
            }
            fs.unmount().unwrap();
            fs.mount().unwrap();
            let after = check_buffer(&rig, &buffer_dir, &label);
            if phase == "drain" && after.committed > stored_before.committed {
                drain_cuts_deleting += 1;
            }
            eprintln!(
                "{label}{}: {} buffered, committed {:?}",
                if torn { " (torn write)" } else { "" },
                after.stored,
                after.committed
            );
            stored_before = after;
            cuts += 1;
        }
    }
    let sent = badges.stop();
    rig.emulator.set_faults(Default::default());

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
            std::thread::sleep(Duration::from_secs(2)); // let a duplicate show up
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
    let log = rig.agent_log();
    assert!(
        !log.contains("buffer_quarantined"),
        "the agent quarantined its buffer after a cut"
    );

    let acked = rig.acknowledged().unwrap();
    let (credentials, event_ids) = rig.committed();
    let unique_credentials: BTreeSet<_> = credentials.iter().cloned().collect();
    let unique_ids: BTreeSet<_> = event_ids.iter().cloned().collect();
    eprintln!(
        "{cuts} power cuts ({torn_fired} of {torn_tried} torn writes fired, {startup_fired} of \
         {STARTUP_CUTS} inside a snapshot write, {drain_cuts_deleting} of {DRAIN_CUTS} drain \
         cuts after deletions): {} badges presented, {} acknowledged, {} committed, {:.0} s",
        sent.len(),
        acked.len(),
        credentials.len(),
        started.elapsed().as_secs_f64()
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
    let lost: Vec<_> = acked.difference(&unique_credentials).take(10).collect();
    assert!(lost.is_empty(), "acknowledged swipes missing: {lost:?}");
    // A kill can leave half a frame in a pty; the restarted agent may decode that fragment as a
    // short raw credential. Only well-formed credentials are held against what was presented.
    let well_formed: BTreeSet<_> = unique_credentials
        .iter()
        .filter(|c| c.starts_with("EM4100:") || c.starts_with("RAW24:"))
        .cloned()
        .collect();
    let invented: Vec<_> = well_formed.difference(&sent).take(10).collect();
    assert!(invented.is_empty(), "rows nobody presented: {invented:?}");
    // The rig really did what it claims.
    assert!(cuts >= 30, "only {cuts} cuts");
    assert!(
        acked.len() > 200,
        "too few swipes acknowledged: {}",
        acked.len()
    );
    assert!(torn_fired >= 2, "torn writes fired {torn_fired} times");
    assert!(
        startup_fired >= 2,
        "cuts inside a snapshot write fired {startup_fired} times"
    );
    assert!(
        drain_cuts_deleting >= DRAIN_CUTS / 3,
        "only {drain_cuts_deleting} drain cuts happened after deletions"
    );
}
