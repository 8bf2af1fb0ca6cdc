//! Health of the running agent: metrics, liveness, readiness and the `/status` document.
//!
//! Every long-running part of the pipeline (each reader task, the group committer, the drain
//! loop) owns a [`Heartbeat`] and beats it whenever its loop turns. The process is *live* only
//! while every heartbeat is fresh; the systemd watchdog ([`watchdog`]) and `/livez` both use that
//! rule, so a wedged pipeline stops the pings and systemd restarts the service.

pub mod metrics;
pub mod server;
pub mod watchdog;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use prometheus_client::registry::Registry;
use serde::Serialize;

pub use metrics::Metrics;

/// A part of the pipeline that must keep turning for the agent to count as alive.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    name: Arc<str>,
    last_ms: Arc<AtomicU64>,
    origin: Instant,
    max_age: Duration,
}

impl Heartbeat {
    /// Records that the owner's loop made a turn.
    pub fn beat(&self) {
        let ms = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn age(&self, now: Instant) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        now.saturating_duration_since(self.origin + last)
    }
}

/// What `/status` and `badge-agent status` show about one reader.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ReaderStatus {
    /// Reader kind (`serial`, `wiegand`, `simulated`).
    pub kind: String,
    /// Whether the device is open.
    pub connected: bool,
    /// Swipes read since start.
    pub swipes: u64,
    /// Errors since start.
    pub errors: u64,
    /// Stamp of the last swipe (Unix ms).
    pub last_swipe_ms: Option<i64>,
    /// The last error, for an operator.
    pub last_error: Option<String>,
}

/// What `/status` shows about the buffer.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct BufferStatus {
    /// Swipes held.
    pub depth: u64,
    /// Bytes on disk.
    pub bytes: u64,
    /// Stamp of the oldest unsent swipe (Unix ms).
    pub oldest_unsent_ms: Option<i64>,
    /// Next sequence number.
    pub next_seq: u64,
    /// A corrupt database was moved aside at start-up.
    pub quarantined: bool,
    /// Swipes held in memory for a retry of a failed group commit (not durable yet); readiness
    /// is degraded while this is not 0.
    pub retry_queue: u64,
}

/// What `/status` shows about the drain to Snowflake.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct DrainStatus {
    /// `starting`, `open`, `offline`, `stopped`, or `disabled` without a `[snowflake]` section.
    pub state: String,
    /// The channel name.
    pub channel: String,
    /// Last committed offset token.
    pub committed: Option<u64>,
    /// Last appended offset token.
    pub sent: Option<u64>,
    /// When the committed token last advanced (Unix ms).
    pub last_commit_ms: Option<i64>,
    /// The last error, for an operator.
    pub last_error: Option<String>,
}

/// The `/status` document.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StatusDoc {
    /// Gateway id.
    pub gateway_id: String,
    /// Agent version.
    pub version: String,
    /// Seconds since start.
    pub uptime_secs: u64,
    /// Every pipeline part is turning.
    pub live: bool,
    /// Buffer open, readers started, buffer not full, no part failed.
    pub ready: bool,
    /// Parts that died and are being restarted (e.g. `reader:door`).
    pub failed: Vec<String>,
    /// Buffer figures.
    pub buffer: BufferStatus,
    /// Drain figures.
    pub drain: DrainStatus,
    /// Per-reader figures, by reader id.
    pub readers: BTreeMap<String, ReaderStatus>,
}

/// Shared health state, one per process.
#[derive(Debug)]
pub struct Health {
    /// The Prometheus metrics.
    pub metrics: Metrics,
    registry: Registry,
    gateway_id: String,
    version: String,
    started: Instant,
    ready: AtomicBool,
    retry_queue: AtomicU64,
    heartbeats: Mutex<Vec<Heartbeat>>,
    failed: Mutex<BTreeSet<String>>,
    readers: Mutex<BTreeMap<String, ReaderStatus>>,
    buffer: Mutex<BufferStatus>,
    drain: Mutex<DrainStatus>,
}

/// How long a heartbeat may stay silent before the process counts as wedged.
pub const STALL_AFTER: Duration = Duration::from_secs(20);

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not take health reporting down with it.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Health {
    /// Creates the health state of a gateway.
    pub fn new(gateway_id: &str, version: &str, commit: &str) -> Arc<Self> {
        let (metrics, registry) = Metrics::new(version, commit);
        Arc::new(Self {
            metrics,
            registry,
            gateway_id: gateway_id.to_owned(),
            version: version.to_owned(),
            started: Instant::now(),
            ready: AtomicBool::new(false),
            retry_queue: AtomicU64::new(0),
            heartbeats: Mutex::new(Vec::new()),
            failed: Mutex::new(BTreeSet::new()),
            readers: Mutex::new(BTreeMap::new()),
            buffer: Mutex::new(BufferStatus::default()),
            drain: Mutex::new(DrainStatus {
                state: "starting".to_owned(),
                ..DrainStatus::default()
            }),
        })
    }

    /// Registers a pipeline part that must beat at least every [`STALL_AFTER`].
    pub fn heartbeat(&self, name: &str) -> Heartbeat {
        self.heartbeat_with_limit(name, STALL_AFTER)
    }

    /// Registers a pipeline part that must beat at least every `max_age` (the drain waits on
    /// network timeouts, so it gets longer than a reader loop).
    pub fn heartbeat_with_limit(&self, name: &str, max_age: Duration) -> Heartbeat {
        let heartbeat = Heartbeat {
            name: Arc::from(name),
            last_ms: Arc::new(AtomicU64::new(0)),
            origin: self.started,
            max_age,
        };
        heartbeat.beat();
        lock(&self.heartbeats).push(heartbeat.clone());
        heartbeat
    }

    /// Names of the parts whose heartbeat is older than its limit.
    pub fn stalled(&self) -> Vec<String> {
        let now = Instant::now();
        lock(&self.heartbeats)
            .iter()
            .filter(|h| h.age(now) > h.max_age)
            .map(|h| h.name.to_string())
            .collect()
    }

    /// Every part of the pipeline is turning.
    pub fn is_live(&self) -> bool {
        self.stalled().is_empty()
    }

    /// Marks the agent ready (buffer open, readers started).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Marks a part as failed (its task died and is being restarted) or recovered. A failed
    /// part makes the agent not ready; liveness stays with the heartbeats.
    pub fn set_failed(&self, part: &str, failed: bool) {
        let mut set = lock(&self.failed);
        if failed {
            set.insert(part.to_owned());
        } else {
            set.remove(part);
        }
    }

    /// Parts currently marked failed.
    pub fn failed(&self) -> Vec<String> {
        lock(&self.failed).iter().cloned().collect()
    }

    /// Ready, live, no part failed, and no swipe waiting for a retry of a failed commit.
    pub fn is_ready(&self) -> bool {
        self.not_ready_reasons().is_empty()
    }

    /// Why the agent is not ready, in words for `/readyz` and an operator; empty when ready.
    pub fn not_ready_reasons(&self) -> Vec<String> {
        let mut reasons = Vec::new();
        if !self.ready.load(Ordering::Relaxed) {
            reasons.push("not started, stopping, or the buffer is at max_bytes".to_owned());
        }
        let stalled = self.stalled();
        if !stalled.is_empty() {
            reasons.push(format!("stalled: {}", stalled.join(", ")));
        }
        let failed = self.failed();
        if !failed.is_empty() {
            reasons.push(format!("failed, restarting: {}", failed.join(", ")));
        }
        reasons.extend(self.degraded());
        reasons
    }

    /// Records how many swipes wait in the group committer's retry queue.
    pub fn set_retry_queue(&self, records: u64) {
        self.retry_queue.store(records, Ordering::Relaxed);
        self.metrics
            .buffer_retry_queue_records
            .set(metrics::gauge_value(records));
        lock(&self.buffer).retry_queue = records;
    }

    /// Why the agent runs degraded, if it does (for `/readyz` and an operator).
    pub fn degraded(&self) -> Option<String> {
        let queued = self.retry_queue.load(Ordering::Relaxed);
        (queued > 0).then(|| {
            format!("degraded: {queued} swipes wait for a retry of a failed buffer commit")
        })
    }

    /// Updates one reader's status.
    pub fn update_reader(&self, reader: &str, update: impl FnOnce(&mut ReaderStatus)) {
        update(lock(&self.readers).entry(reader.to_owned()).or_default());
    }

    /// Updates the buffer's status.
    pub fn update_buffer(&self, update: impl FnOnce(&mut BufferStatus)) {
        update(&mut lock(&self.buffer));
    }

    /// Updates the drain's status.
    pub fn update_drain(&self, update: impl FnOnce(&mut DrainStatus)) {
        update(&mut lock(&self.drain));
    }

    /// The drain's status.
    pub fn drain_status(&self) -> DrainStatus {
        lock(&self.drain).clone()
    }

    /// The `/status` document.
    pub fn status(&self) -> StatusDoc {
        StatusDoc {
            gateway_id: self.gateway_id.clone(),
            version: self.version.clone(),
            uptime_secs: self.started.elapsed().as_secs(),
            live: self.is_live(),
            ready: self.is_ready(),
            failed: self.failed(),
            buffer: lock(&self.buffer).clone(),
            drain: lock(&self.drain).clone(),
            readers: lock(&self.readers).clone(),
        }
    }

    /// The Prometheus text exposition.
    pub fn render_metrics(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_silent_heartbeat_makes_the_agent_not_live() {
        let health = Health::new("gw", "0.1.0", "dev");
        let reader = health.heartbeat_with_limit("reader:door", Duration::from_millis(20));
        let _drain = health.heartbeat_with_limit("drain", Duration::from_millis(20));
        let _slow = health.heartbeat("committer");
        health.set_ready(true);
        assert!(health.is_live());
        assert!(health.is_ready());
        std::thread::sleep(Duration::from_millis(30));
        reader.beat();
        assert_eq!(health.stalled(), vec!["drain"]);
        assert!(!health.is_live());
        assert!(!health.is_ready());
    }

    #[test]
    fn status_reflects_updates() {
        let health = Health::new("gw-7", "0.1.0", "dev");
        health.update_reader("door", |r| {
            r.kind = "serial".into();
            r.swipes += 2;
        });
        health.update_buffer(|b| b.depth = 5);
        health.update_drain(|d| d.committed = Some(9));
        let doc = health.status();
        assert_eq!(doc.gateway_id, "gw-7");
        assert_eq!(doc.readers["door"].swipes, 2);
        assert_eq!(doc.buffer.depth, 5);
        assert_eq!(doc.drain.committed, Some(9));
        health.set_ready(true);
        health.set_retry_queue(3);
        assert!(!health.is_ready(), "degraded while swipes wait for a retry");
        assert_eq!(health.status().buffer.retry_queue, 3);
        assert!(health.degraded().unwrap().contains("3 swipes"));
        assert!(health
            .render_metrics()
            .contains("badge_agent_buffer_retry_queue_records 3"));
        health.set_retry_queue(0);
        assert!(health.is_ready() && health.degraded().is_none());
        health.set_ready(false);
        assert!(!doc.ready, "not ready until set_ready");
        let json = serde_json::to_value(&doc).unwrap();
        assert_eq!(json["drain"]["committed"], 9);
    }
}
