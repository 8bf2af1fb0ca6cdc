//! Reader tasks: the I/O shells around the `reader-protocol` decoders.
//!
//! Each configured reader runs as one tokio task ([`spawn`]). The shells only move bytes or
//! edges from the device into a decoder; everything they decode goes through one [`Emitter`]
//! per reader, which suppresses repeats, stamps the swipe, hands it to the group committer and
//! waits until it is durable. Reader trouble (unplugged adapter, noise, parity errors) is
//! counted, logged and retried — never fatal to the agent. A reader task that dies anyway (a
//! panic, or an end before shutdown) is supervised: logged, counted, the agent is not ready until
//! the restarted task has run [`HEALTHY_AFTER`], and it is restarted with back-off.

pub mod osdp;
pub mod serial;
pub mod simulated;
pub mod wiegand;

use std::sync::Arc;
use std::time::Duration;

use reader_protocol::{Dedup, DedupKey, DedupPolicy, ReaderEvent, Source, Verdict};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::buffer::{Ack, GroupCommitHandle, Progress};
use crate::clock;
use crate::config::{ReaderSource, ReaderSpec};
use crate::health::{Health, Heartbeat};
use crate::row::{EventType, SwipeRecord};

/// How often an idle reader loop turns anyway, so its heartbeat shows it is alive.
const IDLE_TICK: Duration = Duration::from_secs(1);

/// Fault rows are rate-limited per reader: a noisy line must not flood the buffer.
const FAULT_ROW_INTERVAL_NS: u64 = 5_000_000_000;

/// How long a restarted reader task must run before the agent counts as ready again.
pub const HEALTHY_AFTER: Duration = Duration::from_secs(5);

/// Starts the (supervised) task of one reader. It runs until `shutdown` turns true.
pub fn spawn(
    spec: ReaderSpec,
    health: Arc<Health>,
    committer: GroupCommitHandle,
    shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let kind = match spec.source {
        ReaderSource::Serial(_) => "serial",
        ReaderSource::Wiegand(_) => "wiegand",
        ReaderSource::Simulated(_) => "simulated",
        ReaderSource::Osdp(_) => "osdp",
    };
    health.update_reader(&spec.id, |r| r.kind = kind.to_owned());
    let heartbeat = health.heartbeat(&format!("reader:{}", spec.id));
    tokio::spawn(supervise(spec, health, committer, heartbeat, shutdown))
}

/// Runs a reader task and restarts it whenever it dies before shutdown.
async fn supervise(
    spec: ReaderSpec,
    health: Arc<Health>,
    committer: GroupCommitHandle,
    heartbeat: Heartbeat,
    mut shutdown: watch::Receiver<bool>,
) {
    let part = format!("reader:{}", spec.id);
    let mut backoff = Reconnect::new();
    loop {
        let emitter = Emitter::new(
            spec.clone(),
            Arc::clone(&health),
            committer.clone(),
            heartbeat.clone(),
        );
        let mut task = start(&spec, emitter, shutdown.clone());
        let outcome = tokio::select! {
            outcome = &mut task => outcome,
            () = tokio::time::sleep(HEALTHY_AFTER) => {
                health.set_failed(&part, false);
                backoff.reset();
                task.await
            }
        };
        let reason = match outcome {
            Ok(()) if *shutdown.borrow() => return,
            Ok(()) => "the reader task ended before shutdown".to_owned(),
            Err(err) if err.is_panic() => {
                let payload = err.into_panic();
                let message = payload
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".to_owned());
                format!("the reader task panicked: {message}")
            }
            Err(err) => format!("the reader task failed: {err}"),
        };
        health.set_failed(&part, true);
        health.metrics.reader_error(&spec.id, "task");
        record_connected(&health, &spec.id, false, Some(reason.clone()));
        health.update_reader(&spec.id, |r| r.errors += 1);
        let delay = backoff.next_delay();
        tracing::error!(reader = %spec.id, error = %reason, retry_in = ?delay, "reader died; restarting it");
        // The supervisor itself is turning: a process restart would not help, so stay live
        // (readiness already says something is wrong).
        heartbeat.beat();
        if sleep_or_shutdown(delay, &mut shutdown).await {
            return;
        }
    }
}

/// Sets a reader's `reader_connected` gauge and its status together, so they never disagree.
fn record_connected(health: &Health, reader: &str, connected: bool, error: Option<String>) {
    health
        .metrics
        .reader_connected
        .get_or_create(&crate::health::metrics::ReaderLabel {
            reader: reader.to_owned(),
        })
        .set(i64::from(connected));
    health.update_reader(reader, |r| {
        r.connected = connected;
        if error.is_some() {
            r.last_error = error;
        }
    });
}

/// Spawns the reader's own task.
fn start(spec: &ReaderSpec, emitter: Emitter, shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
    match spec.source.clone() {
        ReaderSource::Osdp(settings) => tokio::spawn(osdp::run(emitter, settings, shutdown)),
        ReaderSource::Serial(settings) => tokio::spawn(serial::run(emitter, settings, shutdown)),
        ReaderSource::Wiegand(settings) => tokio::spawn(wiegand::run(emitter, settings, shutdown)),
        ReaderSource::Simulated(script) => tokio::spawn(simulated::run(emitter, script, shutdown)),
    }
}

/// The common tail of every reader: dedup → stamp → durable → counted.
#[derive(Debug)]
pub struct Emitter {
    spec: ReaderSpec,
    source: Source,
    health: Arc<Health>,
    committer: GroupCommitHandle,
    heartbeat: Heartbeat,
    dedup: Dedup,
    last_fault_row_ns: Option<u64>,
}

impl Emitter {
    fn new(
        spec: ReaderSpec,
        health: Arc<Health>,
        committer: GroupCommitHandle,
        heartbeat: Heartbeat,
    ) -> Self {
        let source = match spec.source {
            ReaderSource::Wiegand(_) => Source::Wiegand,
            ReaderSource::Serial(_) | ReaderSource::Simulated(_) => Source::Serial,
            ReaderSource::Osdp(_) => Source::Osdp,
        };
        let rearm_ns = u64::try_from(spec.dedup_window.as_nanos()).unwrap_or(u64::MAX);
        let dedup = Dedup::new(DedupPolicy {
            rearm_ns,
            ..DedupPolicy::default()
        });
        Self {
            spec,
            source,
            health,
            committer,
            heartbeat,
            dedup,
            last_fault_row_ns: None,
        }
    }

    /// The reader's id.
    pub fn reader_id(&self) -> &str {
        &self.spec.id
    }

    /// Marks a loop turn of the reader task.
    pub fn beat(&self) {
        self.heartbeat.beat();
    }

    /// Records whether the device is open.
    pub fn set_connected(&self, connected: bool, error: Option<String>) {
        record_connected(&self.health, &self.spec.id, connected, error);
    }

    /// Counts a reader problem that produced no event (device errors, noise).
    pub fn count_error(&self, kind: &str, message: &str) {
        self.health.metrics.reader_error(&self.spec.id, kind);
        self.health.update_reader(&self.spec.id, |r| {
            r.errors += 1;
            r.last_error = Some(message.to_owned());
        });
    }

    /// Handles one decoded event seen at monotonic time `mono_ns`; returns the swipe's sequence
    /// number once it is durable (`None` when suppressed, rate-limited, refused, or queued for
    /// a retry of a failed commit: then it is reported when durable, without holding the reader).
    pub async fn emit(&mut self, event: ReaderEvent, mono_ns: u64) -> Option<u64> {
        self.beat();
        if let Some(key) = DedupKey::for_event(self.source, &event) {
            if self.dedup.observe(key, mono_ns) == Verdict::Suppress {
                return None;
            }
        }
        if let ReaderEvent::Fault(fault) = &event {
            self.count_error(fault.kind(), &fault.to_string());
            tracing::warn!(reader = %self.spec.id, fault = %fault, "reader fault");
            let recent = self
                .last_fault_row_ns
                .is_some_and(|t| mono_ns.saturating_sub(t) < FAULT_ROW_INTERVAL_NS);
            if recent {
                return None;
            }
            self.last_fault_row_ns = Some(mono_ns);
        }
        let record = SwipeRecord::from_event(
            &self.spec,
            &event,
            clock::now_unix_ms(),
            clock::clock_synced(),
        );
        let report = AckReport {
            health: Arc::clone(&self.health),
            reader: self.spec.id.clone(),
            counts_as_swipe: matches!(event, ReaderEvent::Card(_) | ReaderEvent::Pin(_)),
            event_type: record.event_type,
            swiped_at_ms: record.swiped_at_ms,
        };
        self.store(record, report).await
    }

    /// Submits a record and waits until it is durable, refused, or queued for a retry of a
    /// failed commit — never longer: a queued row is reported by a task of its own, so the
    /// reader keeps reading (and beating) while commits fail.
    async fn store(&self, record: SwipeRecord, report: AckReport) -> Option<u64> {
        let pending = match self.committer.submit(record).await {
            Ok(pending) => pending,
            Err(err) => return report.finish(Err(err)),
        };
        match pending.progress().await {
            Progress::Done(ack) => report.finish(ack),
            Progress::Queued(queued) => {
                // Commits are failing and the swipe waits in the retry queue (bounded there):
                // keep reading, and report the swipe when it is durable or given up.
                tokio::spawn(async move {
                    report.finish(queued.wait().await);
                });
                None
            }
        }
    }
}

/// What the reader reports once a swipe's commit is answered.
#[derive(Debug)]
struct AckReport {
    health: Arc<Health>,
    reader: String,
    counts_as_swipe: bool,
    event_type: EventType,
    swiped_at_ms: i64,
}

impl AckReport {
    fn finish(self, ack: Ack) -> Option<u64> {
        match ack {
            Ok(seq) => {
                if self.counts_as_swipe {
                    self.health
                        .metrics
                        .reader_swipes
                        .get_or_create(&crate::health::metrics::ReaderLabel {
                            reader: self.reader.clone(),
                        })
                        .inc();
                    self.health.update_reader(&self.reader, |r| {
                        r.swipes += 1;
                        r.last_swipe_ms = Some(self.swiped_at_ms);
                    });
                }
                // No credential: a card number read from the journal can be replayed at a door.
                tracing::debug!(
                    reader = %self.reader,
                    seq,
                    event_type = self.event_type.as_str(),
                    swiped_at = %crate::row::rfc3339_utc_millis(self.swiped_at_ms),
                    "swipe durable"
                );
                Some(seq)
            }
            Err(err) => {
                // Refusals (buffer full) and retry-queue drops are already counted.
                tracing::error!(reader = %self.reader, error = %err, "swipe NOT stored");
                self.health.update_reader(&self.reader, |r| {
                    r.last_error = Some(format!("swipe not stored: {err}"));
                });
                None
            }
        }
    }
}

impl Emitter {
    /// Stores a row without a credential (tamper, reader off line, secure-channel failure):
    /// `detail` says what happened. Not deduplicated or rate-limited — callers report changes.
    pub async fn emit_status(&mut self, event_type: EventType, detail: String) -> Option<u64> {
        self.beat();
        let record = SwipeRecord::reader_status(
            &self.spec,
            event_type,
            detail,
            clock::now_unix_ms(),
            clock::clock_synced(),
        );
        let report = AckReport {
            health: Arc::clone(&self.health),
            reader: self.spec.id.clone(),
            counts_as_swipe: false,
            event_type,
            swiped_at_ms: record.swiped_at_ms,
        };
        self.store(record, report).await
    }
}

/// Waits for `duration`, or less if shutdown is requested; returns true on shutdown.
async fn sleep_or_shutdown(duration: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    if *shutdown.borrow() {
        return true;
    }
    tokio::select! {
        () = tokio::time::sleep(duration) => *shutdown.borrow(),
        _ = shutdown.changed() => true,
    }
}

/// Reconnect back-off for devices that disappear: 0.5 s doubling to 10 s. A failure is logged
/// and counted once per outage, not on every retry.
#[derive(Debug, Clone, Copy)]
struct Reconnect {
    delay: Duration,
    was_connected: bool,
}

impl Reconnect {
    const FIRST: Duration = Duration::from_millis(500);
    const MAX: Duration = Duration::from_secs(10);

    fn new() -> Self {
        Self {
            delay: Self::FIRST,
            was_connected: true,
        }
    }

    /// The device could not be opened: record it and wait. Returns true on shutdown.
    async fn failed(
        &mut self,
        emitter: &Emitter,
        message: String,
        shutdown: &mut watch::Receiver<bool>,
    ) -> bool {
        if self.was_connected {
            tracing::warn!(
                reader = emitter.reader_id(),
                "{message}; retrying with back-off"
            );
            emitter.count_error("open", &message);
        }
        self.was_connected = false;
        emitter.set_connected(false, Some(message));
        sleep_or_shutdown(self.next_delay(), shutdown).await
    }

    /// The device is open.
    fn connected(&mut self, emitter: &Emitter) {
        emitter.set_connected(true, None);
        self.was_connected = true;
        self.reset();
    }

    fn next_delay(&mut self) -> Duration {
        let current = self.delay;
        self.delay = (self.delay * 2).min(Self::MAX);
        current
    }

    fn reset(&mut self) {
        self.delay = Self::FIRST;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn a_reader_task_that_dies_is_a_readiness_failure_and_is_restarted() {
        let dir = tempfile::tempdir().unwrap();
        let mut options = crate::buffer::BufferOptions::new(dir.path().join("buffer"));
        options.min_free_bytes = 0;
        let buffer = Arc::new(crate::buffer::Buffer::open(options).unwrap());
        let (committer, _task) = crate::buffer::GroupCommitter::spawn(
            buffer,
            crate::buffer::GroupCommitConfig::default(),
        );
        let health = Health::new("gw", "0.1.0", "dev");
        health.set_ready(true);
        let mut doomed = ReaderSpec::example();
        // What `validate` now refuses: the simulated reader's period overflows a Duration.
        doomed.source = ReaderSource::Simulated(simulated::Script {
            rate_per_sec: 1e-300,
            count: None,
            facility: 1,
            population: 1,
        });
        let connected = health
            .metrics
            .reader_connected
            .get_or_create(&crate::health::metrics::ReaderLabel {
                reader: "lobby".to_owned(),
            })
            .clone();
        connected.set(1); // as if the device had been open before the task died
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = spawn(doomed, Arc::clone(&health), committer, stop_rx);
        // First death at once, the restart after 0.5 s dies again.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while health.status().readers["lobby"].errors < 2 {
            assert!(
                std::time::Instant::now() < deadline,
                "{:?}",
                health.status()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let status = health.status();
        assert!(!health.is_ready(), "{status:?}");
        assert!(health.is_live(), "the supervisor keeps turning");
        assert_eq!(status.failed, vec!["reader:lobby"]);
        let error = status.readers["lobby"].last_error.clone().unwrap();
        assert!(error.contains("panicked"), "{error}");
        assert!(!status.readers["lobby"].connected);
        assert_eq!(connected.get(), 0, "the gauge follows the status");
        stop_tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
    }

    #[test]
    fn reconnect_backoff_doubles_and_caps() {
        let mut r = Reconnect::new();
        let delays: Vec<_> = (0..7).map(|_| r.next_delay().as_millis()).collect();
        assert_eq!(delays, vec![500, 1000, 2000, 4000, 8000, 10_000, 10_000]);
        r.reset();
        assert_eq!(r.next_delay().as_millis(), 500);
    }
}
