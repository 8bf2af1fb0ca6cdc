//! Unit tests of the sled buffer against real databases in temporary directories.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::chunk;
use super::*;
use crate::row::{EventType, SwipeRecord};

pub(crate) fn swipe(n: u64) -> SwipeRecord {
    SwipeRecord {
        event_type: EventType::Card,
        reader_id: "r1".into(),
        zone_id: Some("z".into()),
        door_id: Some("d".into()),
        direction: None,
        credential: Some(format!("H10301:1:{n}")),
        format: Some("H10301".into()),
        facility_code: Some(1),
        card_number: Some(n),
        raw_bits: Some("0a0b0c0d".into()),
        bit_count: Some(26),
        detail: None,
        swiped_at_ms: 1_700_000_000_000 + n as i64,
        clock_synced: true,
        agent_version: "test".into(),
    }
}

fn opts(dir: &std::path::Path) -> BufferOptions {
    let mut o = BufferOptions::new(dir.join("buffer"));
    o.min_free_bytes = 0;
    o
}

fn cards(recs: &[(u64, SwipeRecord)]) -> Vec<(u64, u64)> {
    recs.iter()
        .map(|(s, r)| (*s, r.card_number.unwrap()))
        .collect()
}

#[test]
fn buffer_append_assigns_consecutive_seqs_and_reads_back_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let b = Buffer::open(opts(dir.path())).unwrap();
    assert_eq!(b.append_durable(&[swipe(1), swipe(2)]).unwrap(), 0..2);
    assert_eq!(b.append_durable(&[swipe(3)]).unwrap(), 2..3);
    assert_eq!(b.append_durable(&[]).unwrap(), 3..3);
    let all = b.range_from(0, 100, usize::MAX).unwrap();
    assert_eq!(cards(&all), vec![(0, 1), (1, 2), (2, 3)]);
    assert_eq!(
        cards(&b.range_from(1, 1, usize::MAX).unwrap()),
        vec![(1, 2)]
    );
    // The byte budget stops the read but always yields at least one record.
    assert_eq!(b.range_from(0, 100, 1).unwrap().len(), 1);
    let s = b.stats().unwrap();
    assert_eq!((s.depth, s.next_seq, s.first_seq), (3, 3, Some(0)));
    assert_eq!(s.received_total, 3);
    assert_eq!(s.oldest_unsent_ms, Some(1_700_000_000_001));
    assert_eq!(s.flushes_total, 2);
    assert!(s.last_flush_latency.is_some());
    assert!(s.bytes_on_disk > 0);
}

#[test]
fn buffer_records_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let b = Buffer::open(opts(dir.path())).unwrap();
        b.append_durable(&(0..300).map(swipe).collect::<Vec<_>>())
            .unwrap();
    }
    let b = Buffer::open(opts(dir.path())).unwrap();
    assert_eq!(b.next_seq(), 300);
    let all = b.range_from(0, 1000, usize::MAX).unwrap();
    assert_eq!(all.len(), 300);
    // Big-endian keys keep order past 256 records.
    assert!(all.windows(2).all(|w| w[0].0 + 1 == w[1].0));
    assert_eq!(all[299].1, swipe(299));
}

#[test]
fn buffer_next_seq_survives_fully_drained_restart_i4() {
    let dir = tempfile::tempdir().unwrap();
    {
        let b = Buffer::open(opts(dir.path())).unwrap();
        b.append_durable(&[swipe(1), swipe(2), swipe(3)]).unwrap();
        assert_eq!(b.delete_through(2).unwrap(), 3);
        assert_eq!(b.stats().unwrap().depth, 0);
    }
    let b = Buffer::open(opts(dir.path())).unwrap();
    assert_eq!(b.next_seq(), 3, "a drained queue must not restart at 0");
    assert_eq!(b.committed(), Some(2));
    assert_eq!(b.append_durable(&[swipe(4)]).unwrap(), 3..4);
}

#[test]
fn buffer_next_seq_takes_max_of_last_key_meta_and_committed() {
    let dir = tempfile::tempdir().unwrap();
    {
        let b = Buffer::open(opts(dir.path())).unwrap();
        b.append_durable(&[swipe(1)]).unwrap();
        // A committed token beyond everything local (e.g. told by the channel) raises next_seq.
        b.delete_through(10).unwrap();
        assert_eq!(b.next_seq(), 11);
    }
    let b = Buffer::open(opts(dir.path())).unwrap();
    assert_eq!(b.next_seq(), 11);
}

#[test]
fn buffer_delete_through_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let b = Buffer::open(opts(dir.path())).unwrap();
    b.append_durable(&(0..1200).map(swipe).collect::<Vec<_>>())
        .unwrap();
    // Exactly the keys <= committed go, across several delete chunks.
    assert_eq!(b.delete_through(1099).unwrap(), 1100);
    assert_eq!(b.first_seq().unwrap(), Some(1100));
    assert_eq!(b.delete_through(1099).unwrap(), 0, "idempotent");
    assert_eq!(b.delete_through(1100).unwrap(), 1);
    assert_eq!(b.first_seq().unwrap(), Some(1101));
    assert_eq!(b.committed(), Some(1100));
    // A lower token never lowers the persisted committed mark.
    b.delete_through(5).unwrap();
    assert_eq!(b.committed(), Some(1100));
    let s = b.stats().unwrap();
    assert_eq!((s.depth, s.sent_total), (99, 1101));
}

#[test]
fn buffer_corrupt_record_is_skipped_and_counted_once() {
    let dir = tempfile::tempdir().unwrap();
    // Legacy writes (one key per swipe), so single records can be damaged.
    let mut o = opts(dir.path());
    o.probation = Probation::Always;
    let b = Buffer::open(o).unwrap();
    assert!(b.writes_legacy());
    b.append_durable(&(0..5).map(swipe).collect::<Vec<_>>())
        .unwrap();
    let mut bad = record::encode(&swipe(2));
    let last = bad.len() - 1;
    bad[last] ^= 0x40;
    b.put_raw_for_test(2, &bad).unwrap();
    let mut wrong_version = record::encode(&swipe(3));
    wrong_version[0] = 99;
    b.put_raw_for_test(3, &wrong_version).unwrap();

    let got = b.range_from(0, 10, usize::MAX).unwrap();
    assert_eq!(cards(&got), vec![(0, 0), (1, 1), (4, 4)]);
    assert_eq!(b.stats().unwrap().dropped_corrupt_total, 2);
    // A rewind reads them again but does not count them twice.
    let again = b.range_from(0, 10, usize::MAX).unwrap();
    assert_eq!(again.len(), 3);
    assert_eq!(b.stats().unwrap().dropped_corrupt_total, 2);
    // Corrupt records do not use up the record budget.
    assert_eq!(
        cards(&b.range_from(2, 1, usize::MAX).unwrap()),
        vec![(4, 4)]
    );
}

#[derive(Default)]
struct Log(Mutex<Vec<String>>);
impl BufferObserver for Log {
    fn durable(&self, seqs: std::ops::Range<u64>, _lat: Duration) {
        self.0
            .lock()
            .unwrap()
            .push(format!("durable {}..{}", seqs.start, seqs.end));
    }
    fn dropped(&self, reason: DropReason, count: u64, refused: bool) {
        self.0
            .lock()
            .unwrap()
            .push(format!("dropped {} {count} {refused}", reason.as_label()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffer_group_commit_acks_only_after_sync() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(Log::default());
    let b = Arc::new(
        Buffer::open_observed(
            opts(dir.path()),
            Some(log.clone() as Arc<dyn BufferObserver>),
        )
        .unwrap(),
    );
    let cfg = GroupCommitConfig {
        max_records: 8,
        max_delay: Duration::from_millis(20),
        queue_capacity: 64,
        ..GroupCommitConfig::default()
    };
    let (handle, task) = GroupCommitter::spawn(b.clone(), cfg);
    let mut waits = Vec::new();
    for n in 0..20 {
        let h = handle.clone();
        let log = log.clone();
        waits.push(tokio::spawn(async move {
            let seq = h.commit(swipe(n)).await.unwrap();
            log.0.lock().unwrap().push(format!("ack {seq}"));
            seq
        }));
    }
    let mut seqs = Vec::new();
    for w in waits {
        seqs.push(w.await.unwrap());
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (0..20).collect::<Vec<_>>());
    drop(handle);
    task.await.unwrap();

    let events = log.0.lock().unwrap().clone();
    let durable: Vec<(usize, u64, u64)> = events
        .iter()
        .enumerate()
        .filter_map(|(i, e)| {
            let r = e.strip_prefix("durable ")?;
            let (a, z) = r.split_once("..")?;
            Some((i, a.parse().ok()?, z.parse().ok()?))
        })
        .collect();
    assert!(
        durable.len() >= 3,
        "20 swipes in batches of <= 8: {events:?}"
    );
    assert!(durable.iter().all(|(_, a, z)| z - a <= 8));
    for (i, e) in events.iter().enumerate() {
        if let Some(seq) = e.strip_prefix("ack ") {
            let seq: u64 = seq.parse().unwrap();
            let (di, _, _) = durable
                .iter()
                .find(|(_, a, z)| (*a..*z).contains(&seq))
                .unwrap_or_else(|| panic!("ack {seq} without a durable batch: {events:?}"));
            assert!(
                *di < i,
                "ack {seq} before its batch was durable: {events:?}"
            );
        }
    }
    // Every record the committer acknowledged is in the buffer.
    assert_eq!(b.range_from(0, 100, usize::MAX).unwrap().len(), 20);
}

#[tokio::test]
async fn buffer_group_commit_reports_refusal_to_every_waiter() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(dir.path());
    o.max_bytes = 1; // anything on disk is "full"
    let b = Arc::new(Buffer::open(o).unwrap());
    let (handle, _task) = GroupCommitter::spawn(b.clone(), GroupCommitConfig::default());
    let (a, c) = tokio::join!(handle.commit(swipe(1)), handle.commit(swipe(2)));
    assert!(matches!(a, Err(BufferError::Full { .. })), "{a:?}");
    assert!(matches!(c, Err(BufferError::Full { .. })), "{c:?}");
    assert_eq!(b.stats().unwrap().refused_buffer_full_total, 2);
}

#[test]
fn buffer_full_refuse_new_keeps_everything_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    let b = Buffer::open(opts(dir.path())).unwrap();
    b.append_durable(&[swipe(1), swipe(2)]).unwrap();
    let size = b.stats().unwrap().bytes_on_disk;
    drop(b);
    let mut o = opts(dir.path());
    o.max_bytes = size; // already at the limit
    let log = Arc::new(Log::default());
    let b = Buffer::open_observed(o, Some(log.clone() as Arc<dyn BufferObserver>)).unwrap();
    let err = b
        .append_durable(&[swipe(3), swipe(4), swipe(5)])
        .unwrap_err();
    assert!(matches!(err, BufferError::Full { .. }), "{err}");
    let s = b.stats().unwrap();
    assert_eq!(s.refused_buffer_full_total, 3);
    assert_eq!(s.dropped_buffer_full_total, 0);
    assert_eq!(
        s.next_seq, 2,
        "a refused batch consumes no sequence numbers"
    );
    assert_eq!(
        cards(&b.range_from(0, 10, usize::MAX).unwrap()),
        vec![(0, 1), (1, 2)]
    );
    assert_eq!(
        log.0.lock().unwrap().clone(),
        vec!["dropped buffer_full 3 true".to_string()]
    );
    // Draining makes room again only once size_on_disk falls: deletion does not shrink sled at
    // once, so with the cap raised new swipes are accepted.
    drop(b);
    let mut o = opts(dir.path());
    o.max_bytes = u64::MAX;
    let b = Buffer::open(o).unwrap();
    assert_eq!(b.append_durable(&[swipe(3)]).unwrap(), 2..3);
}

#[test]
fn buffer_full_drop_oldest_drops_as_many_as_added() {
    let dir = tempfile::tempdir().unwrap();
    {
        let b = Buffer::open(opts(dir.path())).unwrap();
        b.append_durable(&(0..5).map(swipe).collect::<Vec<_>>())
            .unwrap();
        b.delete_through(0).unwrap(); // seq 0 committed
    }
    let mut o = opts(dir.path());
    o.max_bytes = 1;
    o.full_policy = FullPolicy::DropOldest;
    let b = Buffer::open(o).unwrap();
    assert_eq!(b.append_durable(&[swipe(10), swipe(11)]).unwrap(), 5..7);
    let s = b.stats().unwrap();
    assert_eq!(s.dropped_buffer_full_total, 2);
    assert_eq!(s.refused_buffer_full_total, 0);
    assert_eq!(
        cards(&b.range_from(0, 10, usize::MAX).unwrap()),
        vec![(3, 3), (4, 4), (5, 10), (6, 11)]
    );
}

#[test]
fn buffer_filesystem_reserve_refuses_even_with_drop_oldest() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(dir.path());
    o.min_free_bytes = u64::MAX; // no filesystem has that much free
    o.full_policy = FullPolicy::DropOldest;
    let b = Buffer::open(o).unwrap();
    let err = b.append_durable(&[swipe(1)]).unwrap_err();
    assert!(matches!(err, BufferError::DiskReserve { .. }), "{err}");
    assert_eq!(b.stats().unwrap().refused_buffer_full_total, 1);
}

#[test]
fn buffer_garbage_database_is_quarantined_and_fresh_buffer_works() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("buffer");
    std::fs::create_dir_all(&path).unwrap();
    // Junk where sled expects its config, log and snapshot.
    std::fs::write(path.join("conf"), b"\xff\xfe garbage config \x00\x01").unwrap();
    std::fs::write(path.join("db"), vec![0xa5u8; 64 * 1024]).unwrap();
    std::fs::write(path.join("snap.0000000000000400"), b"not a snapshot").unwrap();

    let b = Buffer::open(opts(dir.path())).unwrap();
    let moved = b.quarantined_to().map(|p| p.to_path_buf()).unwrap();
    assert!(moved.exists(), "junk kept for forensics at {moved:?}");
    assert!(moved
        .file_name()
        .unwrap()
        .to_string_lossy()
        .starts_with("buffer.corrupt-"));
    assert!(moved.join("db").exists());
    assert_eq!(
        b.stats().unwrap().quarantined_to.as_deref(),
        Some(moved.as_path())
    );
    assert_eq!(b.append_durable(&[swipe(7)]).unwrap(), 0..1);
    assert_eq!(
        cards(&b.range_from(0, 10, usize::MAX).unwrap()),
        vec![(0, 7)]
    );
}

#[test]
fn buffer_second_open_is_locked_not_quarantined() {
    let dir = tempfile::tempdir().unwrap();
    let b = Buffer::open(opts(dir.path())).unwrap();
    b.append_durable(&[swipe(1)]).unwrap();
    let err = Buffer::open(opts(dir.path())).unwrap_err();
    assert!(matches!(err, BufferError::Locked(_)), "{err}");
    assert!(b.quarantined_to().is_none());
    assert_eq!(b.range_from(0, 10, usize::MAX).unwrap().len(), 1);
    let mut leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    leftovers.sort();
    // The database and the format marker the updater reads; nothing moved aside.
    assert_eq!(
        leftovers,
        vec!["buffer".to_string(), "buffer.format".to_string()]
    );
    assert_eq!(
        std::fs::read_to_string(format_marker_path(&dir.path().join("buffer"))).unwrap(),
        "chunks-1\n"
    );
}

/// Every open writes sled's snapshot to `snap.<lsn>.generating`, syncs it and renames it; a
/// kill or power cut before the rename leaves the partial file behind. It must not count as
/// the newest snapshot: that made the database "corrupt" and the whole buffer, acknowledged
/// swipes included, was moved aside.
#[test]
fn buffer_opens_past_a_snapshot_left_half_written_by_a_kill() {
    for torn_len in [Some(0usize), Some(7), None] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("buffer");
        for n in 0..2 {
            let b = Buffer::open(opts(dir.path())).unwrap();
            b.append_durable(&[swipe(n)]).unwrap();
        }
        let newest = std::fs::read_dir(&path)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with("snap."))
            .max()
            .expect("sled wrote a snapshot when it was reopened");
        let lsn = u64::from_str_radix(&newest["snap.".len()..], 16).unwrap();
        let bytes = std::fs::read(path.join(&newest)).unwrap();
        let torn = torn_len.map_or(bytes.len() / 2, |n| n.min(bytes.len()));
        std::fs::write(
            path.join(format!("snap.{:016X}.generating", lsn + 1)),
            &bytes[..torn],
        )
        .unwrap();

        let b = Buffer::open(opts(dir.path())).unwrap();
        assert!(
            b.quarantined_to().is_none(),
            "a {torn}-byte unfinished snapshot made the buffer look corrupt"
        );
        assert_eq!(
            cards(&b.range_from(0, 10, usize::MAX).unwrap()),
            vec![(0, 0), (1, 1)]
        );
    }
}

#[test]
fn buffer_reconcile_renumbers_swipes_taken_before_first_open() {
    let dir = tempfile::tempdir().unwrap();
    let b = Buffer::open(opts(dir.path())).unwrap();
    // Fresh database (e.g. after quarantine), offline: swipes get 0, 1, 2.
    assert_eq!(
        b.append_durable(&[swipe(1), swipe(2), swipe(3)]).unwrap(),
        0..3
    );
    // The channel already committed up to 41 in a previous life of this gateway.
    assert_eq!(b.reconcile_after_open(Some(41)).unwrap(), 3);
    assert_eq!(
        cards(&b.range_from(0, 10, usize::MAX).unwrap()),
        vec![(42, 1), (43, 2), (44, 3)]
    );
    assert_eq!(b.next_seq(), 45);
    // Deleting through the committed token now loses nothing.
    assert_eq!(b.delete_through(41).unwrap(), 0);
    // Once reconciled, the rule is plain "≤ committed is committed": no further renumbering.
    assert_eq!(b.append_durable(&[swipe(4)]).unwrap(), 45..46);
    assert_eq!(b.reconcile_after_open(Some(44)).unwrap(), 0);
    assert_eq!(b.delete_through(44).unwrap(), 3);
    drop(b);
    let b = Buffer::open(opts(dir.path())).unwrap();
    assert_eq!(
        cards(&b.range_from(0, 10, usize::MAX).unwrap()),
        vec![(45, 4)]
    );
    assert_eq!(b.next_seq(), 46);
}

#[test]
fn buffer_reconcile_with_new_channel_keeps_seqs() {
    let dir = tempfile::tempdir().unwrap();
    let b = Buffer::open(opts(dir.path())).unwrap();
    b.append_durable(&[swipe(1)]).unwrap();
    assert_eq!(b.reconcile_after_open(None).unwrap(), 0);
    assert_eq!(
        cards(&b.range_from(0, 10, usize::MAX).unwrap()),
        vec![(0, 1)]
    );
}

#[test]
fn buffer_corrupt_chunk_is_skipped_counted_once_and_deleted_by_its_neighbour() {
    let dir = tempfile::tempdir().unwrap();
    let b = Buffer::open(opts(dir.path())).unwrap();
    b.append_durable(&(0..3).map(swipe).collect::<Vec<_>>())
        .unwrap();
    b.append_durable(&(3..6).map(swipe).collect::<Vec<_>>())
        .unwrap();
    b.append_durable(&(6..8).map(swipe).collect::<Vec<_>>())
        .unwrap();
    let mut bad = chunk::encode(&(3..6).map(swipe).collect::<Vec<_>>());
    let last = bad.len() - 1;
    bad[last] ^= 0x01;
    b.put_raw_chunk_for_test(3, &bad).unwrap();
    let got = b.range_from(0, 100, usize::MAX).unwrap();
    assert_eq!(cards(&got), vec![(0, 0), (1, 1), (2, 2), (6, 6), (7, 7)]);
    assert_eq!(b.stats().unwrap().dropped_corrupt_total, 3);
    b.range_from(4, 100, usize::MAX).unwrap();
    assert_eq!(b.stats().unwrap().dropped_corrupt_total, 3, "counted once");
    // Corrupt chunks are never merged into readable ones.
    b.merge_now().unwrap();
    assert_eq!(b.key_counts(), (0, 3));
    // Its end is where the next chunk starts: deleting through 5 removes it.
    assert_eq!(b.delete_through(5).unwrap(), 6);
    assert_eq!(b.key_counts(), (0, 1));
    assert_eq!(b.first_seq().unwrap(), Some(6));
}

#[test]
fn buffer_stores_chunks_and_merges_small_ones_into_few_keys() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(dir.path());
    o.merge_in_background = false;
    let b = Buffer::open(o).unwrap();
    // One swipe per group commit: the worst case for the key count.
    for n in 0..1100 {
        b.append_durable(&[swipe(n)]).unwrap();
    }
    assert_eq!(b.key_counts(), (0, 1100));
    b.merge_now().unwrap();
    let (legacy, chunks) = b.key_counts();
    assert_eq!(legacy, 0);
    assert!(chunks <= 3, "1100 swipes in {chunks} chunks");
    let all = b.range_from(0, 2000, usize::MAX).unwrap();
    assert_eq!(all.len(), 1100);
    assert!(all
        .iter()
        .enumerate()
        .all(|(i, (s, r))| *s == i as u64 && r.card_number == Some(i as u64)));
    // A partly committed chunk stays; reads from committed + 1 skip its committed records.
    assert_eq!(b.delete_through(700).unwrap(), 701);
    assert_eq!(b.first_seq().unwrap(), Some(701));
    assert_eq!(b.range_from(701, 1, usize::MAX).unwrap()[0].0, 701);
    assert_eq!(b.stats().unwrap().depth, 399);
}

#[test]
fn buffer_background_merge_runs_and_stops_with_the_buffer() {
    let dir = tempfile::tempdir().unwrap();
    let b = Buffer::open(opts(dir.path())).unwrap();
    for n in 0..200 {
        b.append_durable(&[swipe(n)]).unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while b.key_counts().1 > 2 {
        assert!(std::time::Instant::now() < deadline, "{:?}", b.key_counts());
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(b);
    // Dropping joined the merger (which holds the database): reopening does not wait for a lock.
    let t0 = std::time::Instant::now();
    let b = Buffer::open(opts(dir.path())).unwrap();
    assert!(t0.elapsed() < Duration::from_secs(2));
    assert_eq!(b.range_from(0, 1000, usize::MAX).unwrap().len(), 200);
}

#[test]
fn buffer_legacy_records_then_chunks_read_in_order_and_delete_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("install");
    std::fs::create_dir_all(root.join("2.0.0")).unwrap();
    let marker = root.join("update-pending.json");
    std::fs::write(
        &marker,
        br#"{"from":"1.0.0","to":"2.0.0","previous_before":null}"#,
    )
    .unwrap();
    let mut o = opts(dir.path());
    o.probation = Probation::for_binary(&root.join("2.0.0").join("badge-agent"));
    {
        let b = Buffer::open(o.clone()).unwrap();
        assert!(b.writes_legacy(), "on probation: legacy writes");
        b.append_durable(&[swipe(0), swipe(1)]).unwrap();
        assert_eq!(b.key_counts(), (2, 0));
    }
    // Still on probation after a restart.
    let b = Buffer::open(o.clone()).unwrap();
    assert!(b.writes_legacy());
    // The health gate passed: the marker goes; within a second new swipes become chunks.
    std::fs::remove_file(&marker).unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    b.append_durable(&[swipe(2), swipe(3)]).unwrap();
    assert!(!b.writes_legacy());
    assert_eq!(b.key_counts(), (2, 1));
    drop(b);
    // Once chunks exist, a later probation (a newer update) keeps writing chunks: the release
    // it could roll back to reads them.
    std::fs::write(
        &marker,
        br#"{"from":"1.0.0","to":"2.0.0","previous_before":null}"#,
    )
    .unwrap();
    let b = Buffer::open(o).unwrap();
    assert!(!b.writes_legacy());
    b.append_durable(&[swipe(4)]).unwrap();
    assert_eq!(
        cards(&b.range_from(0, 10, usize::MAX).unwrap()),
        vec![(0, 0), (1, 1), (2, 2), (3, 3), (4, 4)]
    );
    assert_eq!(
        cards(&b.range_from(1, 2, usize::MAX).unwrap()),
        vec![(1, 1), (2, 2)]
    );
    assert_eq!(b.delete_through(2).unwrap(), 3);
    assert_eq!(b.key_counts(), (0, 2));
    assert_eq!(
        cards(&b.range_from(3, 10, usize::MAX).unwrap()),
        vec![(3, 3), (4, 4)]
    );
    assert_eq!(b.delete_through(4).unwrap(), 2);
    assert_eq!(b.key_counts(), (0, 0));
    assert_eq!(b.next_seq(), 5);
}

mod model {
    //! The chunk store against a plain `Vec` model: random interleavings of appends (of any
    //! group size, in either write format), merges, deletions, reads and reopen.
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Append(u8),
        Merge,
        /// Delete through `committed + 1 + n % (backlog + 1)` − 1 (may cover nothing).
        Delete(u16),
        Read {
            skip: u16,
            max: u8,
        },
        Reopen {
            legacy: bool,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            5 => (1u8..=200).prop_map(Op::Append),
            2 => Just(Op::Merge),
            2 => any::<u16>().prop_map(Op::Delete),
            2 => (any::<u16>(), 1u8..=255).prop_map(|(skip, max)| Op::Read { skip, max }),
            1 => any::<bool>().prop_map(|legacy| Op::Reopen { legacy }),
        ]
    }

    fn open(dir: &std::path::Path, legacy: bool) -> Buffer {
        let mut o = opts(dir);
        o.merge_in_background = false;
        o.probation = if legacy {
            Probation::Always
        } else {
            Probation::Never
        };
        Buffer::open(o).unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
        #[test]
        fn chunk_store_matches_a_vec_model(start_legacy in any::<bool>(), ops in proptest::collection::vec(op(), 1..40)) {
            let dir = tempfile::tempdir().unwrap();
            let mut b = open(dir.path(), start_legacy);
            // (seq, card) of every acknowledged, not yet committed record.
            let mut model: Vec<(u64, u64)> = Vec::new();
            let mut committed: Option<u64> = None;
            let mut next_card = 0u64;
            for op in ops {
                match op {
                    Op::Append(n) => {
                        let recs: Vec<_> = (next_card..next_card + u64::from(n)).map(swipe).collect();
                        let r = b.append_durable(&recs).unwrap();
                        prop_assert_eq!(r.end - r.start, u64::from(n));
                        prop_assert!(committed.is_none_or(|c| r.start > c));
                        for (i, seq) in r.enumerate() {
                            model.push((seq, next_card + i as u64));
                        }
                        next_card += u64::from(n);
                    }
                    Op::Merge => { b.merge_now().unwrap(); }
                    Op::Delete(k) => {
                        let Some(&(hi, _)) = model.get(usize::from(k) % (model.len() + 1)) else { continue };
                        let through = hi.saturating_sub(1).max(committed.unwrap_or(0));
                        let before = model.len();
                        model.retain(|(s, _)| *s > through);
                        let removed = b.delete_through(through).unwrap();
                        prop_assert_eq!(removed, (before - model.len()) as u64);
                        committed = Some(committed.map_or(through, |c| c.max(through)));
                    }
                    Op::Read { skip, max } => {
                        let from = committed.map_or(0, |c| c + 1) + u64::from(skip) % 300;
                        let got = cards(&b.range_from(from, usize::from(max), usize::MAX).unwrap());
                        let want: Vec<_> = model.iter().copied().filter(|(s, _)| *s >= from).take(usize::from(max)).collect();
                        prop_assert_eq!(got, want);
                    }
                    Op::Reopen { legacy } => {
                        drop(b);
                        b = open(dir.path(), legacy);
                    }
                }
                // Every acknowledged record not yet committed is readable exactly once, in
                // order, and never a committed one.
                let from = committed.map_or(0, |c| c + 1);
                let all = cards(&b.range_from(from, usize::MAX, usize::MAX).unwrap());
                prop_assert_eq!(&all, &model);
                prop_assert_eq!(b.first_seq().unwrap(), model.first().map(|(s, _)| *s));
            }
            let (legacy, chunks) = b.key_counts();
            prop_assert!(legacy + chunks <= model.len() + 2);
        }
    }
}
