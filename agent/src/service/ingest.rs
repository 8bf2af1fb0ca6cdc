//! Adapts the Snowpipe client to the drain's [`Ingest`] trait: one Named channel and the three
//! outcomes the drain distinguishes. The client holds the continuation token and cuts rows into
//! requests (`snowpipe::batch`); this adapter only translates.

use std::sync::Arc;

use crate::drain::{Ingest, IngestError};
use crate::health::Health;
use crate::snowpipe::{SnowpipeClient, SnowpipeError};

/// The gateway's channel, as the drain sees it.
#[derive(Debug)]
pub struct SnowpipeIngest {
    client: SnowpipeClient,
    channel: String,
    health: Arc<Health>,
    /// `rows_error_count` is cumulative on the server; we export its increase.
    rows_error_count: Option<u64>,
}

impl SnowpipeIngest {
    /// Wraps a client for `channel`.
    pub fn new(client: SnowpipeClient, channel: String, health: Arc<Health>) -> Self {
        Self {
            client,
            channel,
            health,
            rows_error_count: None,
        }
    }

    fn observe_row_errors(&mut self, status: &crate::snowpipe::ChannelStatus) {
        let now = status.rows_error_count;
        if let Some(before) = self.rows_error_count {
            if now > before {
                self.health
                    .metrics
                    .snowflake_row_errors
                    .inc_by(now - before);
                tracing::error!(
                    channel = %self.channel,
                    new_errors = now - before,
                    last_error = status.last_error_message.as_deref().unwrap_or("-"),
                    upper_bound = status.last_error_offset_upper_bound.as_deref().unwrap_or("-"),
                    "Snowflake skipped rows it could not load (check the pipe against the row schema)"
                );
            }
        }
        self.rows_error_count = Some(now);
    }
}

/// How a client error steers the drain.
pub fn classify(err: &SnowpipeError) -> IngestError {
    let message = err.to_string();
    if err.is_channel_invalid() {
        IngestError::ChannelInvalid(message)
    } else if err.is_transient() {
        IngestError::Unavailable(message)
    } else {
        IngestError::Fatal(message)
    }
}

fn committed_of(status: &crate::snowpipe::ChannelStatus) -> Result<Option<u64>, IngestError> {
    status.committed_seq().map_err(|e| {
        IngestError::Fatal(format!(
            "{}; is another client writing to this channel? Give each gateway its own channel",
            e.0
        ))
    })
}

impl Ingest for SnowpipeIngest {
    fn open(&mut self) -> Result<Option<u64>, IngestError> {
        let open = self
            .client
            .open_channel(&self.channel)
            .map_err(|e| classify(&e))?;
        self.observe_row_errors(&open.status);
        committed_of(&open.status)
    }

    fn append(&mut self, rows: &[(u64, &[u8])]) -> Result<u64, IngestError> {
        let Some(token) = self
            .client
            .continuation_token(&self.channel)
            .map(str::to_owned)
        else {
            return Err(IngestError::ChannelInvalid(
                "append before the channel was opened".to_owned(),
            ));
        };
        let batch = self.client.first_batch(rows).map_err(|e| classify(&e))?;
        self.client
            .append(&self.channel, &token, &batch)
            .map_err(|e| classify(&e))?;
        Ok(batch.end_seq)
    }

    fn committed(&mut self) -> Result<Option<u64>, IngestError> {
        let mut statuses = self
            .client
            .channel_status(&[self.channel.as_str()])
            .map_err(|e| classify(&e))?;
        match statuses.remove(&self.channel).flatten() {
            Some(status) => {
                self.observe_row_errors(&status);
                if !status.is_success() {
                    return Err(IngestError::ChannelInvalid(format!(
                        "channel status is {:?}, not SUCCESS",
                        status.channel_status_code
                    )));
                }
                committed_of(&status)
            }
            None => Err(IngestError::ChannelInvalid(
                "Snowflake no longer knows the channel (dropped, or idle for 30 days); reopening"
                    .to_owned(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snowpipe::Op;
    use std::time::Duration;

    #[test]
    fn errors_steer_the_drain() {
        let invalid = SnowpipeError::ChannelInvalid {
            channel: "gw".into(),
            status: 400,
            code: "STALE_CONTINUATION_TOKEN_SEQUENCER".into(),
            message: "stale".into(),
        };
        assert!(matches!(classify(&invalid), IngestError::ChannelInvalid(_)));
        let offline = SnowpipeError::Unavailable {
            op: Op::Append,
            attempts: 5,
            elapsed: Duration::from_secs(30),
            last: "connection refused".into(),
            hint: String::new(),
        };
        assert!(matches!(classify(&offline), IngestError::Unavailable(_)));
        let key = SnowpipeError::Key {
            path: "/etc/badge-agent/rsa_key.p8".into(),
            message: "readable by others".into(),
        };
        match classify(&key) {
            IngestError::Fatal(message) => assert!(message.contains("rsa_key.p8"), "{message}"),
            other => panic!("{other:?}"),
        }
    }

    /// With `compression = "none"` a full window of long rows is more NDJSON than one request
    /// may carry: the drain must still deliver everything, in requests within the limit.
    #[test]
    #[allow(clippy::unwrap_used)]
    fn uncompressed_long_rows_are_sent_in_requests_within_the_limit() {
        use crate::buffer::{Buffer, BufferOptions};
        use crate::drain::{DrainConfig, Drainer, NoopObserver, Step};
        use crate::row::{EventType, SwipeRecord};
        use crate::snowpipe::testing::Harness;
        use crate::snowpipe::ContentEncoding;

        let Harness { client, fake, .. } =
            Harness::with_config(|c| c.compression = ContentEncoding::Identity);
        *fake.ledger.lock().unwrap() = Some(None);
        let dir = tempfile::tempdir().unwrap();
        let buffer = Buffer::open(BufferOptions::new(dir.path().join("b"))).unwrap();
        // ~1.4 kB rows: 6 MB of NDJSON, and each 4 MiB read window is over 4,000,000 bytes.
        let swipes: Vec<SwipeRecord> = (0..4_500u64)
            .map(|n| SwipeRecord {
                event_type: EventType::ReaderFault,
                reader_id: "r".into(),
                zone_id: None,
                door_id: None,
                direction: None,
                credential: None,
                format: None,
                facility_code: None,
                card_number: Some(n),
                raw_bits: None,
                bit_count: None,
                detail: Some("x".repeat(1_200)),
                swiped_at_ms: 1_800_000_000_000,
                clock_synced: true,
                agent_version: "test".into(),
            })
            .collect();
        let seqs = buffer.append_durable(&swipes).unwrap();
        let last = seqs.end - 1;
        let health = Health::new("gw-01", "test", "test");
        let mut ingest = SnowpipeIngest::new(client, "gw-01".into(), health);
        let mut drainer = Drainer::new(DrainConfig::new("gw-01"));
        let mut now = Duration::ZERO;
        for _ in 0..1_000 {
            if *fake.ledger.lock().unwrap() == Some(Some(last)) {
                break;
            }
            match drainer.step(&buffer, &mut ingest, now, &NoopObserver) {
                Ok(Step::Progress) => {}
                Ok(Step::Sleep(d)) => now += d,
                Err(e) => panic!("the drain stopped: {e}"),
            }
        }
        let ops: Vec<String> = fake
            .log
            .lock()
            .unwrap()
            .iter()
            .map(|r| format!("{:?}{}", r.op, r.body.as_ref().map_or(0, Vec::len)))
            .collect();
        assert_eq!(
            *fake.ledger.lock().unwrap(),
            Some(Some(last)),
            "not all delivered: {ops:?}"
        );
        let appends: Vec<usize> = fake
            .log
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.op == Op::Append)
            .map(|r| r.body.as_ref().map_or(0, Vec::len))
            .collect();
        assert!(appends.len() >= 2, "{appends:?}");
        assert!(appends.iter().all(|&n| n <= 4_000_000), "{appends:?}");
    }
}
