//! Sans-IO drain state machine (`docs/snowpipe-wire.md`, resume and drain algorithm).
//!
//! The caller asks [`Machine::next_action`] what to do, does it, and reports the outcome with
//! [`Machine::handle`]. Time is a caller-supplied monotonic [`Duration`] (e.g. since start), so
//! tests run without clocks or sleeps.

use std::time::Duration;

use super::{DrainError, IngestError};

/// Tuning of the state machine.
#[derive(Debug, Clone)]
pub struct MachineConfig {
    /// Most records per append.
    pub max_records: usize,
    /// Most NDJSON bytes the drain reads for one append window (bounds memory); the requests
    /// themselves are cut to the service limit by `snowpipe::batch`.
    pub max_bytes: usize,
    /// Interval between committed-token polls while data is in flight.
    pub poll_interval: Duration,
    /// Wait before looking at the buffer again when there was nothing to send.
    pub idle_interval: Duration,
    /// First back-off after the service became unavailable.
    pub backoff_min: Duration,
    /// Longest back-off.
    pub backoff_max: Duration,
    /// Pause before reopening an invalid channel (Kafka connector: 500 ms + jitter).
    pub reopen_delay: Duration,
    /// Consecutive channel recoveries tolerated before stopping.
    pub max_recoveries: u32,
    /// Stop appending while this many sequence numbers are sent but not committed; bounds what
    /// a reopen has to resend.
    pub max_inflight: u64,
    /// Seed of the jitter generator.
    pub seed: u64,
}

/// Hard cap on `max_bytes`: one append window of NDJSON (4 MiB).
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

impl Default for MachineConfig {
    fn default() -> Self {
        MachineConfig {
            max_records: 10_000,
            max_bytes: MAX_BATCH_BYTES,
            poll_interval: Duration::from_secs(1),
            idle_interval: Duration::from_millis(200),
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            reopen_delay: Duration::from_millis(500),
            max_recoveries: 5,
            max_inflight: 200_000,
            seed: 0x9e37_79b9_7f4a_7c15,
        }
    }
}

/// What the caller should do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Open (or reopen) the channel; answer [`Input::Opened`] or [`Input::OpenFailed`].
    Open,
    /// Read records with `seq ≥ from_seq`, render and append them; answer [`Input::Appended`],
    /// [`Input::NothingToSend`] or [`Input::AppendFailed`].
    Append {
        /// First sequence number wanted (earlier ones are committed or already sent).
        from_seq: u64,
        /// Record budget.
        max_records: usize,
        /// NDJSON byte budget.
        max_bytes: usize,
    },
    /// Ask for the committed token; answer [`Input::Status`] or [`Input::StatusFailed`].
    PollStatus,
    /// Delete local records `≤ k`; answer [`Input::Deleted`].
    DeleteThrough(u64),
    /// Wait, then answer [`Input::Slept`].
    Sleep(Duration),
    /// Stop with this error.
    Stop(DrainError),
}

/// Outcome of an [`Action`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// The channel opened with this committed token.
    Opened {
        /// Committed offset token.
        committed: Option<u64>,
    },
    /// The open failed.
    OpenFailed(IngestError),
    /// Records `start..=end` (sequence numbers; gaps allowed) were appended.
    Appended {
        /// First sequence number (start offset token).
        start: u64,
        /// Last sequence number (end offset token).
        end: u64,
    },
    /// The buffer had nothing at or after `from_seq`.
    NothingToSend,
    /// The append failed.
    AppendFailed(IngestError),
    /// The service reports this committed token.
    Status {
        /// Committed offset token.
        committed: Option<u64>,
    },
    /// The status poll failed.
    StatusFailed(IngestError),
    /// Local records `≤ through` were deleted.
    Deleted {
        /// Highest deleted sequence number bound.
        through: u64,
    },
    /// The requested sleep is over.
    Slept,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Closed,
    Open,
    Stopped(DrainError),
}

/// The drain state machine.
#[derive(Debug, Clone)]
pub struct Machine {
    cfg: MachineConfig,
    phase: Phase,
    committed: Option<u64>,
    /// Highest end token appended in the current channel session.
    inflight_hi: Option<u64>,
    next_send: u64,
    deleted_through: Option<u64>,
    recoveries: u32,
    backoff: Option<Duration>,
    wait_until: Duration,
    last_status: Duration,
    idle: bool,
    rng: u64,
}

fn gt(a: Option<u64>, b: Option<u64>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a > b,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

impl Machine {
    /// A machine that starts by opening the channel. `max_bytes` is clamped to 4 MiB.
    pub fn new(mut cfg: MachineConfig) -> Self {
        cfg.max_bytes = cfg.max_bytes.clamp(1, MAX_BATCH_BYTES);
        cfg.max_records = cfg.max_records.max(1);
        let rng = cfg.seed | 1;
        Machine {
            cfg,
            phase: Phase::Closed,
            committed: None,
            inflight_hi: None,
            next_send: 0,
            deleted_through: None,
            recoveries: 0,
            backoff: None,
            wait_until: Duration::ZERO,
            last_status: Duration::ZERO,
            idle: false,
            rng,
        }
    }

    /// Last committed token the service reported.
    pub fn committed(&self) -> Option<u64> {
        self.committed
    }
    /// Highest end token appended in the current session (`None` right after an open).
    pub fn inflight_hi(&self) -> Option<u64> {
        self.inflight_hi
    }
    /// First sequence number the next append will ask for.
    pub fn next_send(&self) -> u64 {
        self.next_send
    }
    /// Consecutive channel recoveries so far.
    pub fn recoveries(&self) -> u32 {
        self.recoveries
    }
    /// Current back-off, if the service is considered unavailable.
    pub fn backoff(&self) -> Option<Duration> {
        self.backoff
    }
    /// Whether the channel is open.
    pub fn is_open(&self) -> bool {
        self.phase == Phase::Open
    }
    /// Sequence numbers sent but not yet committed (commit lag).
    pub fn lag(&self) -> u64 {
        match (self.inflight_hi, self.committed) {
            (Some(hi), Some(c)) => hi.saturating_sub(c),
            (Some(hi), None) => hi + 1,
            (None, _) => 0,
        }
    }

    fn jitter(&mut self, max: Duration) -> Duration {
        // xorshift64*: deterministic per seed, good enough to spread a fleet's retries.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let r = self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d);
        let max_ms = u64::try_from(max.as_millis()).unwrap_or(u64::MAX);
        if max_ms == 0 {
            return Duration::ZERO;
        }
        Duration::from_millis(r % (max_ms + 1))
    }

    /// What to do now.
    pub fn next_action(&mut self, now: Duration) -> Action {
        if let Phase::Stopped(e) = &self.phase {
            return Action::Stop(e.clone());
        }
        if now < self.wait_until {
            return Action::Sleep(self.wait_until - now);
        }
        if self.phase == Phase::Closed {
            return Action::Open;
        }
        // I1: only what the service reported committed is ever deleted.
        if let Some(c) = self.committed {
            if gt(Some(c), self.deleted_through) {
                return Action::DeleteThrough(c);
            }
        }
        let in_flight = gt(self.inflight_hi, self.committed);
        let poll_due = now >= self.last_status + self.cfg.poll_interval;
        if in_flight && poll_due {
            return Action::PollStatus;
        }
        if !self.idle && self.lag() < self.cfg.max_inflight {
            return Action::Append {
                from_seq: self.next_send,
                max_records: self.cfg.max_records,
                max_bytes: self.cfg.max_bytes,
            };
        }
        let wait = if in_flight {
            (self.last_status + self.cfg.poll_interval).saturating_sub(now)
        } else {
            self.cfg.idle_interval
        };
        Action::Sleep(wait.max(Duration::from_millis(1)))
    }

    /// Feeds the outcome of the last action.
    pub fn handle(&mut self, input: Input, now: Duration) {
        if matches!(self.phase, Phase::Stopped(_)) {
            return;
        }
        match input {
            Input::Opened { committed } => {
                self.phase = Phase::Open;
                // The service is authoritative; reopening discarded everything uncommitted, so
                // rewind to committed + 1 (I2).
                self.committed = committed;
                self.next_send = committed.map_or(0, |c| c.saturating_add(1));
                self.inflight_hi = None;
                self.last_status = now;
                self.backoff = None;
                self.idle = false;
            }
            Input::Appended { start, end } => {
                // I2 guard: a batch must start after everything sent this session.
                if start < self.next_send || end < start {
                    self.phase = Phase::Stopped(DrainError::Fatal(format!(
                        "internal: batch {start}..={end} does not follow {}",
                        self.next_send
                    )));
                    return;
                }
                self.inflight_hi = Some(end);
                self.next_send = end.saturating_add(1);
                self.recoveries = 0;
                self.backoff = None;
            }
            Input::NothingToSend => self.idle = true,
            Input::Status { committed } => {
                self.last_status = now;
                self.backoff = None;
                if gt(committed, self.committed) {
                    self.committed = committed;
                }
                if let Some(c) = self.committed {
                    if c >= self.next_send {
                        self.next_send = c.saturating_add(1);
                    }
                }
            }
            Input::Deleted { through } => {
                if gt(Some(through), self.deleted_through) {
                    self.deleted_through = Some(through);
                }
            }
            Input::Slept => self.idle = false,
            Input::OpenFailed(e) | Input::AppendFailed(e) => self.fail(e, now, true),
            Input::StatusFailed(e) => self.fail(e, now, false),
        }
    }

    fn fail(&mut self, e: IngestError, now: Duration, close_on_unavailable: bool) {
        match e {
            IngestError::Fatal(msg) => self.phase = Phase::Stopped(DrainError::Fatal(msg)),
            IngestError::ChannelInvalid(msg) => {
                self.recoveries += 1;
                if self.recoveries > self.cfg.max_recoveries {
                    self.phase = Phase::Stopped(DrainError::TooManyRecoveries {
                        count: self.recoveries,
                        last: msg,
                    });
                    return;
                }
                self.phase = Phase::Closed;
                self.inflight_hi = None;
                let j = self.jitter(Duration::from_millis(200));
                self.wait_until = now + self.cfg.reopen_delay + j;
            }
            IngestError::Unavailable(_) => {
                let b = match self.backoff {
                    None => self.cfg.backoff_min,
                    Some(b) => (b * 2).min(self.cfg.backoff_max),
                };
                self.backoff = Some(b);
                let j = self.jitter(b / 4);
                self.wait_until = now + b.saturating_sub(b / 8) + j;
                // An append whose outcome is unknown may or may not be applied: reopen and
                // rewind rather than guess. A failed status poll changes nothing we sent.
                if close_on_unavailable {
                    self.phase = Phase::Closed;
                    self.inflight_hi = None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn m() -> Machine {
        Machine::new(MachineConfig {
            max_records: 10,
            max_bytes: 1000,
            ..MachineConfig::default()
        })
    }

    fn append(from: u64) -> Action {
        Action::Append {
            from_seq: from,
            max_records: 10,
            max_bytes: 1000,
        }
    }

    #[test]
    fn drain_machine_open_delete_append_poll_delete() {
        let mut m = m();
        assert_eq!(m.next_action(ms(0)), Action::Open);
        m.handle(Input::Opened { committed: Some(4) }, ms(0));
        // Local cleanup of what is already committed comes first.
        assert_eq!(m.next_action(ms(0)), Action::DeleteThrough(4));
        m.handle(Input::Deleted { through: 4 }, ms(0));
        assert_eq!(m.next_action(ms(0)), append(5));
        m.handle(Input::Appended { start: 5, end: 9 }, ms(1));
        assert_eq!(m.inflight_hi(), Some(9));
        assert_eq!(m.next_action(ms(2)), append(10));
        // Gap (skipped corrupt record 10) is fine: tokens still increase.
        m.handle(Input::Appended { start: 11, end: 12 }, ms(2));
        assert_eq!(m.next_action(ms(3)), append(13));
        m.handle(Input::NothingToSend, ms(3));
        // Nothing to send but data in flight: wait for the poll interval, then poll.
        assert_eq!(m.next_action(ms(3)), Action::Sleep(ms(997)));
        assert_eq!(m.next_action(ms(1000)), Action::PollStatus);
        m.handle(Input::Status { committed: Some(9) }, ms(1000));
        assert_eq!(m.next_action(ms(1000)), Action::DeleteThrough(9));
        m.handle(Input::Deleted { through: 9 }, ms(1000));
        assert_eq!(m.lag(), 3);
    }

    #[test]
    fn drain_machine_never_deletes_above_committed() {
        let mut m = m();
        m.handle(Input::Opened { committed: None }, ms(0));
        assert_eq!(m.next_action(ms(0)), append(0));
        m.handle(Input::Appended { start: 0, end: 9 }, ms(0));
        m.handle(Input::NothingToSend, ms(0));
        for t in [0u64, 500, 999] {
            assert!(!matches!(m.next_action(ms(t)), Action::DeleteThrough(_)));
        }
        assert_eq!(m.next_action(ms(1000)), Action::PollStatus);
        m.handle(Input::Status { committed: None }, ms(1000));
        assert!(!matches!(m.next_action(ms(1000)), Action::DeleteThrough(_)));
        m.handle(Input::Status { committed: Some(3) }, ms(2000));
        assert_eq!(m.next_action(ms(2000)), Action::DeleteThrough(3));
        // A stale (lower) status never lowers committed.
        m.handle(Input::Status { committed: Some(1) }, ms(2001));
        assert_eq!(m.committed(), Some(3));
    }

    #[test]
    fn drain_machine_channel_invalid_reopens_and_rewinds() {
        let mut m = m();
        m.handle(Input::Opened { committed: Some(1) }, ms(0));
        m.handle(Input::Deleted { through: 1 }, ms(0));
        m.handle(Input::Appended { start: 2, end: 5 }, ms(0));
        m.handle(
            Input::AppendFailed(IngestError::ChannelInvalid("stale".into())),
            ms(10),
        );
        assert_eq!(m.recoveries(), 1);
        match m.next_action(ms(10)) {
            Action::Sleep(d) => assert!(d >= ms(500) && d <= ms(700), "{d:?}"),
            a => panic!("{a:?}"),
        }
        assert_eq!(m.next_action(ms(800)), Action::Open);
        m.handle(Input::Opened { committed: Some(3) }, ms(800));
        assert_eq!(m.next_action(ms(800)), Action::DeleteThrough(3));
        m.handle(Input::Deleted { through: 3 }, ms(800));
        assert_eq!(m.next_action(ms(800)), append(4));
        m.handle(Input::Appended { start: 4, end: 4 }, ms(800));
        assert_eq!(
            m.recoveries(),
            0,
            "a successful append ends the recovery streak"
        );
    }

    #[test]
    fn drain_machine_stops_after_too_many_consecutive_recoveries() {
        let mut m = m();
        let mut now = ms(0);
        for i in 1..=5u32 {
            assert_eq!(m.next_action(now), Action::Open);
            m.handle(Input::Opened { committed: None }, now);
            m.handle(
                Input::AppendFailed(IngestError::ChannelInvalid(format!("x{i}"))),
                now,
            );
            assert_eq!(m.recoveries(), i);
            now += ms(1000);
        }
        m.handle(
            Input::OpenFailed(IngestError::ChannelInvalid("x6".into())),
            now,
        );
        assert_eq!(
            m.next_action(now),
            Action::Stop(DrainError::TooManyRecoveries {
                count: 6,
                last: "x6".into()
            })
        );
    }

    #[test]
    fn drain_machine_unavailable_backs_off_exponentially_with_jitter_and_reopens() {
        let mut m = m();
        let mut now = ms(0);
        let mut waits = Vec::new();
        for _ in 0..10 {
            assert_eq!(m.next_action(now), Action::Open);
            m.handle(
                Input::OpenFailed(IngestError::Unavailable("offline".into())),
                now,
            );
            let Action::Sleep(d) = m.next_action(now) else {
                panic!()
            };
            waits.push(d);
            now += d;
        }
        let b = |s: u64| Duration::from_secs(s);
        for (i, w) in waits.iter().enumerate() {
            let base = b(1u64 << i.min(6)).min(b(60));
            assert!(
                *w >= base - base / 8 && *w <= base + base / 8,
                "wait {i}: {w:?} vs {base:?}"
            );
        }
        assert!(waits[9] <= b(60) + b(60) / 8);
        assert_eq!(m.recoveries(), 0, "being offline is not a channel recovery");
        m.handle(Input::Opened { committed: None }, now);
        assert_eq!(m.backoff(), None);
        // An append that timed out: reopen before sending anything else.
        m.handle(Input::Appended { start: 0, end: 3 }, now);
        m.handle(
            Input::AppendFailed(IngestError::Unavailable("timeout".into())),
            now,
        );
        let Action::Sleep(d) = m.next_action(now) else {
            panic!()
        };
        assert_eq!(m.next_action(now + d), Action::Open);
    }

    #[test]
    fn drain_machine_status_unavailable_keeps_session() {
        let mut m = m();
        m.handle(Input::Opened { committed: None }, ms(0));
        m.handle(Input::Appended { start: 0, end: 3 }, ms(0));
        m.handle(Input::NothingToSend, ms(0));
        assert_eq!(m.next_action(ms(1000)), Action::PollStatus);
        m.handle(
            Input::StatusFailed(IngestError::Unavailable("x".into())),
            ms(1000),
        );
        assert!(m.is_open());
        let Action::Sleep(d) = m.next_action(ms(1000)) else {
            panic!()
        };
        assert_eq!(m.next_action(ms(1000) + d), Action::PollStatus);
    }

    #[test]
    fn drain_machine_fatal_stops() {
        let mut m = m();
        m.handle(
            Input::OpenFailed(IngestError::Fatal("bad key".into())),
            ms(0),
        );
        assert_eq!(
            m.next_action(ms(0)),
            Action::Stop(DrainError::Fatal("bad key".into()))
        );
        // Stopped is terminal.
        m.handle(Input::Opened { committed: None }, ms(1));
        assert!(matches!(m.next_action(ms(1)), Action::Stop(_)));
    }

    #[test]
    fn drain_machine_rejects_non_increasing_batches() {
        let mut m = m();
        m.handle(Input::Opened { committed: None }, ms(0));
        m.handle(Input::Appended { start: 0, end: 5 }, ms(0));
        m.handle(Input::Appended { start: 5, end: 6 }, ms(0));
        assert!(matches!(
            m.next_action(ms(0)),
            Action::Stop(DrainError::Fatal(_))
        ));
    }

    #[test]
    fn drain_machine_bounds_in_flight() {
        let mut m = Machine::new(MachineConfig {
            max_inflight: 10,
            ..MachineConfig::default()
        });
        m.handle(Input::Opened { committed: None }, ms(0));
        m.handle(Input::Appended { start: 0, end: 9 }, ms(0));
        assert!(matches!(m.next_action(ms(10)), Action::Sleep(_)));
        assert_eq!(m.next_action(ms(1000)), Action::PollStatus);
        m.handle(Input::Status { committed: Some(4) }, ms(1000));
        m.handle(Input::Deleted { through: 4 }, ms(1000));
        assert!(matches!(
            m.next_action(ms(1000)),
            Action::Append { from_seq: 10, .. }
        ));
    }

    #[test]
    fn drain_machine_clamps_batch_bytes() {
        let mut m = Machine::new(MachineConfig {
            max_bytes: usize::MAX,
            ..MachineConfig::default()
        });
        m.handle(Input::Opened { committed: None }, ms(0));
        match m.next_action(ms(0)) {
            Action::Append { max_bytes, .. } => assert_eq!(max_bytes, MAX_BATCH_BYTES),
            a => panic!("{a:?}"),
        }
    }
}
