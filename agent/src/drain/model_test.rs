//! Model-based property test of buffer + drain (Vector `disk_v2` model-test style): random
//! sequences of swipes, drain steps, service commits, channel invalidations, outages, lost
//! responses and crash/restarts run against the REAL sled buffer in a temporary directory and a
//! small in-memory Snowpipe model; invariants I1–I4 are checked along the way and at the end.
#![allow(clippy::unwrap_used)]

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::buffer::{Buffer, BufferOptions};
use crate::row::{EventType, SwipeRecord};

const GW: &str = "gw-model";

fn swipe(card: u64) -> SwipeRecord {
    SwipeRecord {
        event_type: EventType::Card,
        reader_id: "r".into(),
        zone_id: None,
        door_id: None,
        direction: None,
        credential: Some(format!("EM4100:{card}")),
        format: Some("EM4100".into()),
        facility_code: None,
        card_number: Some(card),
        raw_bits: None,
        bit_count: None,
        detail: None,
        swiped_at_ms: 1_800_000_000_000 + card as i64,
        clock_synced: true,
        agent_version: "model".into(),
    }
}

/// A Named channel as the service sees it: committed rows, appended-but-uncommitted batches,
/// the session's last offset token.
#[derive(Debug, Default)]
struct Service {
    committed: Option<u64>,
    /// (seq, card) in commit order.
    rows: Vec<(u64, u64)>,
    pending: VecDeque<(u64, Vec<(u64, u64)>)>,
    session_hi: Option<u64>,
    offline: bool,
    invalid: bool,
    lose_next_response: bool,
    opens: u64,
}

impl Service {
    fn commit_batches(&mut self, k: usize) {
        for _ in 0..k {
            let Some((end, rows)) = self.pending.pop_front() else {
                return;
            };
            self.rows.extend(rows);
            self.committed = Some(end);
        }
    }
}

struct Client(Rc<RefCell<Service>>);

impl Ingest for Client {
    fn open(&mut self) -> Result<Option<u64>, IngestError> {
        let mut s = self.0.borrow_mut();
        if s.offline {
            return Err(IngestError::Unavailable("offline".into()));
        }
        // Reopen: bump the sequencer, discard everything uncommitted.
        s.pending.clear();
        s.invalid = false;
        s.session_hi = None;
        s.opens += 1;
        Ok(s.committed)
    }

    fn append(&mut self, rows: &[(u64, &[u8])]) -> Result<u64, IngestError> {
        // The model takes the whole window as one request.
        let (start, end) = (rows[0].0, rows[rows.len() - 1].0);
        let ndjson: Vec<u8> = rows
            .iter()
            .flat_map(|(_, line)| line.iter().copied().chain([b'\n']))
            .collect();
        let ndjson = ndjson.as_slice();
        let mut s = self.0.borrow_mut();
        if s.offline {
            return Err(IngestError::Unavailable("offline".into()));
        }
        if s.invalid {
            return Err(IngestError::ChannelInvalid(
                "stale continuation token".into(),
            ));
        }
        // I2: tokens strictly increase within a session and never repeat what is committed.
        assert!(start <= end, "start {start} > end {end}");
        if let Some(hi) = s.session_hi {
            assert!(
                start > hi,
                "I2: batch starts at {start} after {hi} in the same session"
            );
        }
        if let Some(c) = s.committed {
            assert!(
                start > c,
                "I2: batch starts at {start}, already committed {c}"
            );
        }
        let mut rows = Vec::new();
        for line in ndjson.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let v: serde_json::Value = serde_json::from_slice(line).unwrap();
            let seq = v["seq"].as_u64().unwrap();
            assert_eq!(v["gateway_id"], GW);
            assert_eq!(v["event_id"], format!("{GW}:{seq}"));
            if let Some(&(prev, _)) = rows.last() {
                assert!(seq > prev, "rows out of order in a batch");
            }
            rows.push((seq, v["card_number"].as_u64().unwrap()));
        }
        assert_eq!(
            rows.first().map(|r| r.0),
            Some(start),
            "start token is the first row's seq"
        );
        assert_eq!(
            rows.last().map(|r| r.0),
            Some(end),
            "end token is the last row's seq"
        );
        s.session_hi = Some(end);
        s.pending.push_back((end, rows));
        if s.lose_next_response {
            // Applied, but the client never hears back.
            s.lose_next_response = false;
            return Err(IngestError::Unavailable("response lost".into()));
        }
        Ok(end)
    }

    fn committed(&mut self) -> Result<Option<u64>, IngestError> {
        let s = self.0.borrow();
        if s.offline {
            return Err(IngestError::Unavailable("offline".into()));
        }
        if s.invalid {
            return Err(IngestError::ChannelInvalid("channel invalidated".into()));
        }
        Ok(s.committed)
    }
}

#[derive(Debug, Clone)]
enum Op {
    Swipes(u8),
    DrainSteps(u8),
    ServiceCommits(u8),
    Invalidate,
    Offline,
    Online,
    LoseNextResponse,
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u8..6).prop_map(Op::Swipes),
        6 => (1u8..8).prop_map(Op::DrainSteps),
        3 => (0u8..4).prop_map(Op::ServiceCommits),
        1 => Just(Op::Invalidate),
        1 => Just(Op::Offline),
        2 => Just(Op::Online),
        1 => Just(Op::LoseNextResponse),
        1 => Just(Op::Crash),
    ]
}

fn drain_cfg() -> DrainConfig {
    let mut cfg = DrainConfig::new(GW);
    cfg.machine.max_records = 4;
    // Small enough that some batches are cut by bytes (a row is ~300 bytes).
    cfg.machine.max_bytes = 700;
    cfg
}

struct World {
    dir: tempfile::TempDir,
    buffer: Option<Buffer>,
    drainer: Drainer,
    service: Rc<RefCell<Service>>,
    client: Client,
    /// Every acknowledged swipe: (seq, card), in acknowledgement order.
    acked: Vec<(u64, u64)>,
    next_card: u64,
    now: Duration,
    max_next_seq: u64,
    restarts: u32,
}

impl World {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let buffer = Buffer::open(Self::opts(&dir)).unwrap();
        let service = Rc::new(RefCell::new(Service::default()));
        World {
            buffer: Some(buffer),
            dir,
            drainer: Drainer::new(drain_cfg()),
            client: Client(service.clone()),
            service,
            acked: Vec::new(),
            next_card: 1,
            now: Duration::ZERO,
            max_next_seq: 0,
            restarts: 0,
        }
    }

    fn opts(dir: &tempfile::TempDir) -> BufferOptions {
        let mut o = BufferOptions::new(dir.path().join("buf"));
        o.min_free_bytes = 0;
        o.flush_every_ms = None;
        o
    }

    /// In a real restart the old process is gone; in-process, sled's helper threads may hold the
    /// database file (and its lock) for a moment after the drop.
    fn reopen(dir: &tempfile::TempDir) -> Buffer {
        for _ in 0..500 {
            match Buffer::open(Self::opts(dir)) {
                Err(crate::buffer::BufferError::Locked(_)) => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                other => return other.unwrap(),
            }
        }
        panic!("buffer still locked 5 s after drop");
    }

    fn buffer(&self) -> &Buffer {
        self.buffer.as_ref().unwrap()
    }

    fn check_i4(&mut self) {
        let n = self.buffer().next_seq();
        assert!(
            n >= self.max_next_seq,
            "I4: next_seq went from {} to {n}",
            self.max_next_seq
        );
        self.max_next_seq = n;
    }

    /// I1: everything acknowledged and not committed by the service is still buffered, and
    /// nothing else beyond the committed token is.
    fn check_i1(&self) {
        let c = self.service.borrow().committed;
        let from = c.map_or(0, |c| c + 1);
        let local: Vec<(u64, u64)> = self
            .buffer()
            .range_from(from, usize::MAX, usize::MAX)
            .unwrap()
            .into_iter()
            .map(|(s, r)| (s, r.card_number.unwrap()))
            .collect();
        let expected: Vec<(u64, u64)> = self
            .acked
            .iter()
            .copied()
            .filter(|(s, _)| c.is_none_or(|c| *s > c))
            .collect();
        assert_eq!(
            local, expected,
            "I1: uncommitted swipes missing from the buffer"
        );
    }

    fn drain_step(&mut self) {
        let buffer = self.buffer.as_ref().unwrap();
        match self
            .drainer
            .step(buffer, &mut self.client, self.now, &NoopObserver)
        {
            Ok(Step::Progress) => self.now += Duration::from_millis(1),
            Ok(Step::Sleep(d)) => self.now += d,
            Err(DrainError::TooManyRecoveries { .. }) => {
                // The agent exits; systemd restarts it (the buffer is reopened by the new process).
                self.restart();
            }
            Err(e) => panic!("drain stopped unexpectedly: {e}"),
        }
        self.check_i1();
        self.check_i4();
    }

    fn restart(&mut self) {
        self.restarts += 1;
        self.buffer = None; // drop: releases sled's lock once its background threads let go
        self.buffer = Some(Self::reopen(&self.dir));
        self.drainer = Drainer::new(drain_cfg());
        self.check_i4();
        self.check_i1();
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Swipes(n) => {
                let recs: Vec<SwipeRecord> =
                    (0..n as u64).map(|i| swipe(self.next_card + i)).collect();
                let range = self.buffer().append_durable(&recs).unwrap();
                assert_eq!(range.end - range.start, n as u64);
                for (seq, rec) in range.zip(&recs) {
                    self.acked.push((seq, rec.card_number.unwrap()));
                }
                self.next_card += n as u64;
                self.check_i4();
            }
            Op::DrainSteps(n) => {
                for _ in 0..n {
                    self.drain_step();
                }
            }
            Op::ServiceCommits(k) => {
                self.service.borrow_mut().commit_batches(k as usize);
                self.check_i1();
            }
            Op::Invalidate => self.service.borrow_mut().invalid = true,
            Op::Offline => self.service.borrow_mut().offline = true,
            Op::Online => self.service.borrow_mut().offline = false,
            Op::LoseNextResponse => self.service.borrow_mut().lose_next_response = true,
            Op::Crash => self.restart(),
        }
    }

    /// Service back online and committing everything; drain until all is committed and deleted.
    fn drain_to_completion(&mut self) {
        self.service.borrow_mut().offline = false;
        let target = self.acked.last().map(|a| a.0);
        for _ in 0..5_000 {
            let done = {
                let s = self.service.borrow();
                s.committed == target.or(s.committed) && s.pending.is_empty()
            } && self.buffer().first_seq().unwrap().is_none()
                && self.drainer.machine().lag() == 0;
            if done {
                return;
            }
            self.drain_step();
            let mut s = self.service.borrow_mut();
            let k = s.pending.len();
            s.commit_batches(k);
        }
        panic!(
            "drain did not converge: service committed {:?}, target {target:?}, machine {:?}",
            self.service.borrow().committed,
            self.drainer.machine()
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn drain_model_exactly_once_across_faults(ops in proptest::collection::vec(op(), 1..60)) {
        let mut w = World::new();
        for op in &ops {
            w.apply(op);
        }
        w.drain_to_completion();
        // I3: the service's rows are exactly the acknowledged swipes, each once, in order.
        let rows = w.service.borrow().rows.clone();
        prop_assert_eq!(rows, w.acked.clone());
        let s = w.buffer().stats().unwrap();
        prop_assert_eq!(s.depth, 0);
        prop_assert_eq!(s.dropped_corrupt_total, 0);
    }
}

/// The model test must actually exercise the hard paths; a fixed scenario proves each fault
/// type is reachable and handled (lost response after apply, invalidation, crash mid-flight).
#[test]
fn drain_model_fixed_scenario_with_every_fault() {
    let mut w = World::new();
    use Op::*;
    for op in [
        Swipes(5),
        DrainSteps(4),
        LoseNextResponse,
        Swipes(3),
        DrainSteps(6),
        ServiceCommits(1),
        Invalidate,
        DrainSteps(8),
        Swipes(2),
        Crash,
        Offline,
        DrainSteps(5),
        Online,
        DrainSteps(10),
        ServiceCommits(3),
        Invalidate,
        Invalidate,
        DrainSteps(7),
    ] {
        w.apply(&op);
    }
    w.drain_to_completion();
    assert_eq!(w.service.borrow().rows, w.acked);
    assert!(w.service.borrow().opens >= 3);
    assert_eq!(w.acked.len(), 10);
}

#[test]
fn drain_corrupt_record_is_skipped_with_a_gap_in_tokens() {
    #[derive(Default)]
    struct Gaps(RefCell<Vec<(u64, u64)>>);
    impl DrainObserver for Gaps {
        fn gap(&self, expected: u64, found: u64) {
            self.0.borrow_mut().push((expected, found));
        }
    }
    let mut w = World::new();
    w.apply(&Op::Swipes(5));
    let mut bad = crate::buffer::record::encode(&swipe(3));
    bad[7] ^= 1;
    w.buffer().put_raw_for_test(2, &bad).unwrap();
    let gaps = Gaps::default();
    let mut now = Duration::ZERO;
    for _ in 0..6 {
        let buffer = w.buffer.as_ref().unwrap();
        if let Step::Sleep(d) = w.drainer.step(buffer, &mut w.client, now, &gaps).unwrap() {
            now += d;
        }
    }
    assert_eq!(gaps.0.borrow().clone(), vec![(2, 3)]);
    w.now = now;
    // The corrupt swipe (seq 2) is never delivered; everything else is, and deletion still
    // covers it once the service committed beyond it.
    w.acked.retain(|(s, _)| *s != 2);
    w.drain_to_completion();
    assert_eq!(w.service.borrow().rows, w.acked);
    let s = w.buffer().stats().unwrap();
    assert_eq!(s.dropped_corrupt_total, 1);
    assert_eq!(s.first_seq, None);
}

#[derive(Default)]
struct Batches(RefCell<Vec<(u64, u64, usize, usize)>>);
impl DrainObserver for Batches {
    fn event(&self, e: &DrainEvent) {
        if let DrainEvent::Appended {
            start,
            end,
            records,
            bytes,
        } = e
        {
            self.0.borrow_mut().push((*start, *end, *records, *bytes));
        }
    }
}

#[test]
fn drain_batches_respect_record_and_byte_budgets() {
    let dir = tempfile::tempdir().unwrap();
    let b = Buffer::open(BufferOptions::new(dir.path().join("b"))).unwrap();
    b.append_durable(&(1..=10).map(swipe).collect::<Vec<_>>())
        .unwrap();
    let svc = Rc::new(RefCell::new(Service::default()));
    let mut client = Client(svc.clone());
    let obs = Batches::default();
    let row = swipe(1).to_json_line(GW, 0).len();
    let mut cfg = drain_cfg();
    cfg.machine.max_bytes = 2 * row + 10; // two rows fit, three do not
    let mut d = Drainer::new(cfg);
    let mut now = Duration::ZERO;
    for _ in 0..100 {
        if let Step::Sleep(x) = d.step(&b, &mut client, now, &obs).unwrap() {
            now += x;
        }
        let mut s = svc.borrow_mut();
        let k = s.pending.len();
        s.commit_batches(k);
    }
    let cards: Vec<u64> = svc.borrow().rows.iter().map(|r| r.1).collect();
    assert_eq!(cards, (1..=10).collect::<Vec<_>>());
    let batches = obs.0.borrow().clone();
    assert_eq!(batches.len(), 5, "{batches:?}");
    for (start, end, records, bytes) in batches {
        assert_eq!(records, 2);
        assert_eq!(end - start + 1, 2);
        assert!(bytes <= 2 * row + 10);
    }
    // And the record budget: max_records = 4 with a large byte budget.
    let dir = tempfile::tempdir().unwrap();
    let b = Buffer::open(BufferOptions::new(dir.path().join("b"))).unwrap();
    b.append_durable(&(1..=10).map(swipe).collect::<Vec<_>>())
        .unwrap();
    let obs = Batches::default();
    let mut cfg = drain_cfg();
    cfg.machine.max_bytes = 1 << 20;
    let mut d = Drainer::new(cfg);
    let svc = Rc::new(RefCell::new(Service::default()));
    let mut client = Client(svc.clone());
    for _ in 0..10 {
        d.step(&b, &mut client, Duration::ZERO, &obs).unwrap();
    }
    let sizes: Vec<usize> = obs.0.borrow().iter().map(|b| b.2).collect();
    assert_eq!(sizes, vec![4, 4, 2]);
}
