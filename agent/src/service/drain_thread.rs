//! The drain's thread: builds the Snowpipe client, steps the drain state machine, exports what
//! it does, and restarts it after a cool-down when it stops.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::ingest::SnowpipeIngest;
use crate::buffer::Buffer;
use crate::config::SnowflakeConfig;
use crate::drain::{DrainConfig, DrainEvent, DrainObserver, Drainer, IngestError, Step};
use crate::health::metrics::{gauge_value, ReasonLabel};
use crate::health::{Health, Heartbeat};
use crate::snowpipe::{ClientConfig, RequestEvent, SnowpipeClient, StopSignal};

/// Wait before a stopped drain starts again from scratch (fresh client, reopen, rewind).
const RESTART_DELAY: Duration = Duration::from_secs(60);
/// A drain call may legitimately block for a while (timeouts × retries while offline).
const DRAIN_STALL_AFTER: Duration = Duration::from_secs(300);

/// Starts the drain thread.
pub fn spawn(
    buffer: Arc<Buffer>,
    sf: SnowflakeConfig,
    gateway_id: String,
    health: Arc<Health>,
    stop: StopSignal,
) -> JoinHandle<()> {
    let heartbeat = health.heartbeat_with_limit("drain", DRAIN_STALL_AFTER);
    let channel = sf.channel_name(&gateway_id).to_owned();
    health.update_drain(|d| d.channel = channel.clone());
    std::thread::Builder::new()
        .name("drain".to_owned())
        .spawn(move || {
            supervise(
                &buffer,
                &sf,
                &gateway_id,
                &channel,
                &health,
                &heartbeat,
                &stop,
            )
        })
        .unwrap_or_else(|err| {
            // Without a drain thread swipes still land in the buffer; make the failure loud.
            tracing::error!(error = %err, "cannot start the drain thread; swipes stay buffered");
            std::thread::spawn(|| {})
        })
}

/// Sleeps up to `d`, beating at least once a second, and wakes at once on `stop`.
fn nap(d: Duration, heartbeat: &Heartbeat, stop: &StopSignal) {
    let until = Instant::now() + d;
    loop {
        heartbeat.beat();
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() || stop.wait(left.min(Duration::from_secs(1))) {
            break;
        }
    }
}

fn supervise(
    buffer: &Buffer,
    sf: &SnowflakeConfig,
    gateway_id: &str,
    channel: &str,
    health: &Arc<Health>,
    heartbeat: &Heartbeat,
    stop: &StopSignal,
) {
    while !stop.is_stopped() {
        heartbeat.beat();
        let mut client = match SnowpipeClient::new(ClientConfig::from_snowflake_config(sf)) {
            Ok(client) => client,
            Err(err) => {
                let message = err.to_string();
                tracing::error!(error = %message, "cannot start the Snowflake client; swipes stay buffered, retrying in {RESTART_DELAY:?}");
                health.update_drain(|d| {
                    d.state = "stopped".to_owned();
                    d.last_error = Some(message);
                });
                nap(RESTART_DELAY, heartbeat, stop);
                continue;
            }
        };
        client.set_stop(stop.clone());
        let request_health = Arc::clone(health);
        let request_beat = heartbeat.clone();
        client.set_observer(Arc::new(move |e: &RequestEvent| {
            request_beat.beat();
            let code = e
                .status
                .map_or_else(|| "transport".to_owned(), |s| s.to_string());
            request_health
                .metrics
                .request(e.op.as_str(), &code, e.elapsed.as_secs_f64());
        }));
        let mut ingest = SnowpipeIngest::new(client, channel.to_owned(), Arc::clone(health));
        let observer = Observer::new(Arc::clone(health));
        let mut drainer = Drainer::new(DrainConfig::new(gateway_id));
        let t0 = Instant::now();
        let stopped = loop {
            if stop.is_stopped() {
                break None;
            }
            heartbeat.beat();
            match drainer.step(buffer, &mut ingest, t0.elapsed(), &observer) {
                Ok(Step::Progress) => {}
                Ok(Step::Sleep(d)) => nap(d, heartbeat, stop),
                Err(err) => break Some(err),
            }
        };
        if let Some(err) = stopped {
            tracing::error!(error = %err, "drain stopped; swipes stay buffered, restarting it in {RESTART_DELAY:?}");
            health.update_drain(|d| {
                d.state = "stopped".to_owned();
                d.last_error = Some(err.to_string());
            });
            nap(RESTART_DELAY, heartbeat, stop);
        }
    }
}

/// Turns drain events into metrics and `/status` fields.
struct Observer {
    health: Arc<Health>,
    committed: AtomicU64,
    opened_before: AtomicBool,
    last_failure: Mutex<&'static str>,
}

impl Observer {
    fn new(health: Arc<Health>) -> Self {
        Self {
            health,
            committed: AtomicU64::new(0),
            opened_before: AtomicBool::new(false),
            last_failure: Mutex::new("start"),
        }
    }

    fn set_lag(&self, sent: Option<u64>) {
        let committed = self.committed.load(Ordering::Relaxed);
        if let Some(sent) = sent {
            self.health
                .metrics
                .commit_lag_records
                .set(gauge_value(sent.saturating_sub(committed)));
        }
    }
}

impl DrainObserver for Observer {
    fn gap(&self, _expected: u64, _found: u64) {
        self.health.metrics.offset_gap.inc();
    }

    fn event(&self, event: &DrainEvent) {
        let m = &self.health.metrics;
        match event {
            DrainEvent::Opened { committed, .. } => {
                if self.opened_before.swap(true, Ordering::Relaxed) {
                    let reason = *self
                        .last_failure
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    m.channel_reopens
                        .get_or_create(&ReasonLabel {
                            reason: reason.to_owned(),
                        })
                        .inc();
                }
                let committed = *committed;
                self.committed
                    .store(committed.unwrap_or(0), Ordering::Relaxed);
                m.offset_committed.set(gauge_value(committed.unwrap_or(0)));
                self.health.update_drain(|d| {
                    d.state = "open".to_owned();
                    d.committed = committed;
                    d.sent = committed;
                    d.last_error = None;
                });
                self.set_lag(committed);
            }
            DrainEvent::Appended { end, .. } => {
                m.offset_sent.set(gauge_value(*end));
                self.health.update_drain(|d| {
                    d.state = "open".to_owned();
                    d.sent = Some(*end);
                });
                self.set_lag(Some(*end));
            }
            DrainEvent::Committed { committed } => {
                let now = committed.unwrap_or(0);
                let before = self.committed.swap(now, Ordering::Relaxed);
                if now > before {
                    let now_ms = crate::clock::now_unix_ms();
                    #[allow(clippy::cast_precision_loss)] // ms timestamps fit f64 exactly
                    m.last_commit_timestamp_seconds.set(now_ms as f64 / 1000.0);
                    self.health
                        .update_drain(|d| d.last_commit_ms = Some(now_ms));
                }
                m.offset_committed.set(gauge_value(now));
                let sent = self.health.drain_status().sent;
                self.health.update_drain(|d| d.committed = *committed);
                self.set_lag(sent);
            }
            DrainEvent::Deleted { removed, .. } => {
                m.buffer_sent_records.inc_by(*removed);
            }
            DrainEvent::Failed { op, error } => {
                let (state, reason) = match error {
                    IngestError::ChannelInvalid(_) => ("open", "channel_invalid"),
                    IngestError::Unavailable(_) => ("offline", "unavailable"),
                    IngestError::Fatal(_) => ("stopped", "fatal"),
                };
                *self
                    .last_failure
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = reason;
                let message = format!("{op}: {error}");
                self.health.update_drain(|d| {
                    d.state = state.to_owned();
                    d.last_error = Some(message);
                });
            }
            DrainEvent::Stopped { error } => {
                let message = error.to_string();
                self.health.update_drain(|d| {
                    d.state = "stopped".to_owned();
                    d.last_error = Some(message);
                });
            }
        }
    }
}
