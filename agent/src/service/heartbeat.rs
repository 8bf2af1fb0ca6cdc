//! Periodic `heartbeat` rows: the agent's own health report, sent through the same group
//! committer, buffer and channel as swipes so the Snowflake side sees a live gateway even at a
//! door nobody uses (see the row schema in [`crate::row`]).
//!
//! A heartbeat must never crowd out a swipe: it is skipped (and counted in the next one sent)
//! when the buffer is at or above [`NEAR_FULL_PERCENT`] of `buffer.max_bytes`, and it is offered
//! to the commit queue with `try_send`, so it never waits in front of readers. The buffer figures
//! come from the health status the buffer-stats loop refreshes every second.
//!
//! Sans-IO core: [`decide`] and [`heartbeat_record`] are pure; [`run`] is the thin timer shell.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::buffer::{BufferError, Submission, Waiter};
use crate::health::{BufferStatus, Health, ReaderStatus};
use crate::row::{EventType, SwipeRecord};

/// Share of `buffer.max_bytes` from which heartbeats are skipped: the last tenth before the full
/// policy applies stays for swipes.
pub const NEAR_FULL_PERCENT: u64 = 90;

/// `reader_id` of a heartbeat row: it comes from the gateway, not from a reader.
pub const HEARTBEAT_READER_ID: &str = "_gateway";

/// What to do with a due heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Submit it.
    Send,
    /// Skip it: the buffer is near full (the space is for swipes).
    SkipBufferNearFull,
}

/// Whether a heartbeat may be buffered, given the buffer's size on disk and its limit.
pub fn decide(buffer: &BufferStatus, max_bytes: u64) -> Decision {
    // u128: no overflow for any u64 limit.
    let near_full =
        u128::from(buffer.bytes) * 100 >= u128::from(max_bytes) * u128::from(NEAR_FULL_PERCENT);
    if near_full {
        Decision::SkipBufferNearFull
    } else {
        Decision::Send
    }
}

/// The heartbeat row for the current state. `skipped` = heartbeats skipped since the last sent.
pub fn heartbeat_record(
    buffer: &BufferStatus,
    readers: &BTreeMap<String, ReaderStatus>,
    now_ms: i64,
    clock_synced: bool,
    skipped: u64,
    agent_version: &str,
) -> SwipeRecord {
    let states: serde_json::Map<String, serde_json::Value> = readers
        .iter()
        .map(|(id, r)| {
            (
                id.clone(),
                serde_json::Value::from(if r.connected { "up" } else { "down" }),
            )
        })
        .collect();
    let down = readers.values().filter(|r| !r.connected).count();
    let oldest_age_s = buffer
        .oldest_unsent_ms
        .map(|ms| (now_ms.saturating_sub(ms)).max(0) / 1000);
    let detail = serde_json::json!({
        "buffer_depth": buffer.depth,
        "buffer_bytes": buffer.bytes,
        "oldest_unsent_age_s": oldest_age_s,
        "skipped_heartbeats": skipped,
        "readers": states,
        "readers_down": down,
    });
    SwipeRecord::status(
        EventType::Heartbeat,
        HEARTBEAT_READER_ID,
        Some(detail.to_string()),
        now_ms,
        clock_synced,
        agent_version,
    )
}

/// Sends a heartbeat every `interval` until `stop` turns true. Skips (and counts) when the
/// buffer is near full or the commit queue is full or closed.
pub async fn run(
    interval: Duration,
    max_bytes: u64,
    health: Arc<Health>,
    committer: tokio::sync::mpsc::Sender<Submission>,
    mut stop: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await; // the first tick is immediate: let the buffer figures settle first
    let mut skipped: u64 = 0;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        let status = health.status();
        if decide(&status.buffer, max_bytes) == Decision::SkipBufferNearFull {
            skipped += 1;
            tracing::warn!(
                skipped,
                "heartbeat skipped: the buffer is near full, its space is for swipes"
            );
            continue;
        }
        let rec = heartbeat_record(
            &status.buffer,
            &status.readers,
            crate::clock::now_unix_ms(),
            crate::clock::clock_synced(),
            skipped,
            crate::row::AGENT_VERSION,
        );
        let (waiter, pending) = Waiter::new();
        match committer.try_send((rec, waiter)) {
            Ok(()) => {
                match pending.wait().await {
                    Ok(seq) => {
                        tracing::debug!(seq, "heartbeat buffered");
                        skipped = 0;
                    }
                    // Refused by the full policy or an I/O error: count it, swipes are unaffected.
                    Err(BufferError::Closed) => return, // committer stopped: shutting down
                    Err(err) => {
                        skipped += 1;
                        tracing::warn!(error = %err, skipped, "heartbeat not buffered");
                    }
                }
            }
            Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
                skipped += 1;
                tracing::warn!(
                    skipped,
                    "heartbeat skipped: the commit queue is busy with swipes"
                );
            }
            Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buffer(bytes: u64, depth: u64, oldest: Option<i64>) -> BufferStatus {
        BufferStatus {
            depth,
            bytes,
            oldest_unsent_ms: oldest,
            ..BufferStatus::default()
        }
    }

    fn reader(connected: bool) -> ReaderStatus {
        ReaderStatus {
            connected,
            ..ReaderStatus::default()
        }
    }

    #[test]
    fn skipped_when_the_buffer_is_near_full() {
        let max = 1_000;
        for (bytes, want) in [
            (0, Decision::Send),
            (899, Decision::Send),
            (900, Decision::SkipBufferNearFull),
            (1_000, Decision::SkipBufferNearFull),
            (5_000, Decision::SkipBufferNearFull),
        ] {
            assert_eq!(decide(&buffer(bytes, 1, None), max), want, "bytes={bytes}");
        }
        // No overflow near u64::MAX.
        assert_eq!(
            decide(&buffer(u64::MAX, 1, None), u64::MAX),
            Decision::SkipBufferNearFull
        );
        assert_eq!(
            decide(&buffer(u64::MAX / 2, 1, None), u64::MAX),
            Decision::Send
        );
    }

    #[test]
    fn heartbeat_row_carries_the_health_fields_the_model_reads() {
        let mut readers = BTreeMap::new();
        readers.insert("r1".to_owned(), reader(true));
        readers.insert("r2".to_owned(), reader(false));
        let now = 1_764_000_000_000;
        let rec = heartbeat_record(
            &buffer(4096, 12, Some(now - 90_500)),
            &readers,
            now,
            false,
            3,
            "9.9.9",
        );
        let line = rec.to_json_line("gw-01", 77);
        let row: serde_json::Value = serde_json::from_slice(&line).expect("valid JSON");
        assert_eq!(row["event_type"], "heartbeat");
        assert_eq!(row["event_id"], "gw-01:77");
        assert_eq!(row["reader_id"], HEARTBEAT_READER_ID);
        assert_eq!(row["clock_synced"], false);
        assert_eq!(row["agent_version"], "9.9.9");
        assert!(
            row["credential"].is_null() && row["zone_id"].is_null() && row["direction"].is_null()
        );
        let detail: serde_json::Value =
            serde_json::from_str(row["detail"].as_str().expect("detail is a string"))
                .expect("detail is JSON");
        assert_eq!(
            detail,
            serde_json::json!({
                "buffer_depth": 12, "buffer_bytes": 4096, "oldest_unsent_age_s": 90,
                "skipped_heartbeats": 3, "readers": {"r1": "up", "r2": "down"}, "readers_down": 1
            })
        );
    }

    #[test]
    fn empty_buffer_has_no_oldest_age() {
        let rec = heartbeat_record(
            &buffer(0, 0, None),
            &BTreeMap::new(),
            5_000,
            true,
            0,
            "1.0.0",
        );
        let detail: serde_json::Value =
            serde_json::from_str(rec.detail.as_deref().expect("detail")).expect("json");
        assert!(detail["oldest_unsent_age_s"].is_null());
        assert_eq!(detail["readers_down"], 0);
        assert_eq!(rec.event_type, EventType::Heartbeat);
    }
}
