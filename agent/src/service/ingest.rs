//! Adapts the Snowpipe client to the drain's [`Ingest`] trait: one Named channel, its
//! continuation token, and the three outcomes the drain distinguishes.

use std::sync::Arc;

use crate::drain::{Ingest, IngestError};
use crate::health::Health;
use crate::snowpipe::batch::compress;
use crate::snowpipe::{Batch, ContentEncoding, SnowpipeClient, SnowpipeError};

/// The gateway's channel, as the drain sees it.
#[derive(Debug)]
pub struct SnowpipeIngest {
    client: SnowpipeClient,
    channel: String,
    encoding: ContentEncoding,
    token: Option<String>,
    health: Arc<Health>,
    /// `rows_error_count` is cumulative on the server; we export its increase.
    rows_error_count: Option<u64>,
}

impl SnowpipeIngest {
    /// Wraps a client for `channel`.
    pub fn new(
        client: SnowpipeClient,
        channel: String,
        encoding: ContentEncoding,
        health: Arc<Health>,
    ) -> Self {
        Self {
            client,
            channel,
            encoding,
            token: None,
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
        self.token = None;
        let open = self
            .client
            .open_channel(&self.channel)
            .map_err(|e| classify(&e))?;
        self.observe_row_errors(&open.status);
        let committed = committed_of(&open.status)?;
        self.token = Some(open.continuation_token);
        Ok(committed)
    }

    fn append(&mut self, start: u64, end: u64, ndjson: &[u8]) -> Result<(), IngestError> {
        let Some(token) = self.token.clone() else {
            return Err(IngestError::ChannelInvalid(
                "append before the channel was opened".to_owned(),
            ));
        };
        let body = compress(ndjson, self.encoding).map_err(|e| classify(&e))?;
        let batch = Batch {
            start_seq: start,
            end_seq: end,
            rows: ndjson.iter().filter(|b| **b == b'\n').count(),
            body,
            uncompressed_len: ndjson.len(),
            encoding: self.encoding,
            min_append_ts_ms: u64::try_from(crate::clock::now_unix_ms()).unwrap_or(0),
        };
        match self.client.append(&self.channel, &token, &batch) {
            Ok(next) => {
                self.token = Some(next);
                Ok(())
            }
            Err(err) => {
                if err.is_channel_invalid() {
                    self.token = None;
                }
                Err(classify(&err))
            }
        }
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
}
