//! Prometheus metrics of the agent (names, labels and meanings: `docs/metrics.md`).
//!
//! Counters end in `_total`, times are Unix timestamps in seconds ("when it happened, not the time
//! since"), and every name carries the `badge_agent_` prefix.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// A gauge holding a float (timestamps in seconds).
pub type FloatGauge = Gauge<f64, AtomicU64>;

/// `{reason}` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Drops: `buffer_full`, `corrupt`, `retry_queue_full`, `stopped_while_retrying`; reopens: `channel_invalid`, `unavailable`, `fatal`, `start`.
    pub reason: String,
}

/// `{op,code}` labels of Snowflake requests.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `hostname`, `token`, `open_channel`, `append`, `channel_status`, `drop_channel`.
    pub op: String,
    /// HTTP status, or `transport` when no answer came.
    pub code: String,
}

/// `{reader}` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReaderLabel {
    /// Reader id from the configuration.
    pub reader: String,
}

/// `{reader,kind}` labels of reader errors.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReaderErrorLabels {
    /// Reader id from the configuration.
    pub reader: String,
    /// `frame`, `wiegand`, `keypad`, `serial`, `open`, `disconnected`, `noise`, `gpio`, `config`.
    pub kind: String,
}

/// Every metric the agent exports. Cloning a handle shares the underlying value.
#[derive(Debug)]
pub struct Metrics {
    /// Swipes in the buffer not yet deleted (committed swipes are deleted).
    pub buffer_records: Gauge,
    /// Size of the buffer on disk.
    pub buffer_bytes: Gauge,
    /// Configured size cap.
    pub buffer_max_bytes: Gauge,
    /// Stamp of the oldest buffered swipe (Unix seconds), 0 when empty.
    pub buffer_oldest_record_timestamp_seconds: FloatGauge,
    /// Swipes made durable.
    pub buffer_received_records: Counter,
    /// Swipes deleted after Snowflake committed them.
    pub buffer_sent_records: Counter,
    /// Swipes refused or lost, by reason.
    pub buffer_dropped_records: Family<ReasonLabel, Counter>,
    /// Swipes held in memory for a retry of a failed group commit (not durable yet).
    pub buffer_retry_queue_records: Gauge,
    /// The next sequence number the buffer will assign.
    pub sequence_next: Gauge,
    /// Snowflake's last committed offset token.
    pub offset_committed: Gauge,
    /// The last offset token appended.
    pub offset_sent: Gauge,
    /// Appended but not yet committed.
    pub commit_lag_records: Gauge,
    /// When the committed offset last advanced (Unix seconds).
    pub last_commit_timestamp_seconds: FloatGauge,
    /// Snowflake requests by operation and answer.
    pub snowflake_requests: Family<RequestLabels, Counter>,
    /// Snowflake request latency.
    pub snowflake_request_duration_seconds: Histogram,
    /// Channel reopens by reason.
    pub channel_reopens: Family<ReasonLabel, Counter>,
    /// Rows Snowflake skipped (ON_ERROR = CONTINUE), as the delta of `rows_error_count`.
    pub snowflake_row_errors: Counter,
    /// Swipes read, per reader.
    pub reader_swipes: Family<ReaderLabel, Counter>,
    /// Reader errors, per reader and kind.
    pub reader_errors: Family<ReaderErrorLabels, Counter>,
    /// 1 while the reader's device is open.
    pub reader_connected: Family<ReaderLabel, Gauge>,
    /// Duration of a group commit's flush + fsync: the SD card's health signal.
    pub storage_flush_duration_seconds: Histogram,
    /// Non-contiguous sequence numbers seen while draining.
    pub offset_gap: Counter,
    /// OSDP readers' link figures.
    pub osdp: OsdpMetrics,
}

/// `{reader,reason}` labels of OSDP NAKs.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NakLabels {
    /// Reader id from the configuration.
    pub reader: String,
    /// `bad_check`, `unexpected_sqn`, `encryption_required`, … (`code_N` for others).
    pub reason: String,
}

/// Per-reader OSDP link metrics (`badge_agent_osdp_*`).
#[derive(Debug, Default)]
pub struct OsdpMetrics {
    /// `osdp_POLL`s sent.
    pub polls: Family<ReaderLabel, Counter>,
    /// Commands sent again after a reply timeout.
    pub retries: Family<ReaderLabel, Counter>,
    /// NAKs by reason.
    pub naks: Family<NakLabels, Counter>,
    /// 1 while the secure channel is up.
    pub secure_channel: Family<ReaderLabel, Gauge>,
    /// 1 while the reader is on line.
    pub online: Family<ReaderLabel, Gauge>,
    /// On line → off line transitions.
    pub offline_transitions: Family<ReaderLabel, Counter>,
    /// When the reader last sent a valid reply (Unix seconds).
    pub last_reply_timestamp_seconds: Family<ReaderLabel, FloatGauge>,
    /// Reply count at the last update, per reader (to see new replies).
    replies: std::sync::Mutex<std::collections::HashMap<String, u64>>,
}

impl OsdpMetrics {
    fn replies_seen(&self, label: &ReaderLabel, total: u64) -> bool {
        let mut map = self
            .replies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let prev = map.insert(label.reader.clone(), total).unwrap_or(0);
        total > prev
    }
}

impl Metrics {
    /// Creates the metrics and registers them (with `build_info`) in a new registry.
    pub fn new(version: &str, commit: &str) -> (Self, Registry) {
        let metrics = Self {
            buffer_records: Gauge::default(),
            buffer_bytes: Gauge::default(),
            buffer_max_bytes: Gauge::default(),
            buffer_oldest_record_timestamp_seconds: FloatGauge::default(),
            buffer_received_records: Counter::default(),
            buffer_sent_records: Counter::default(),
            buffer_dropped_records: Family::default(),
            buffer_retry_queue_records: Gauge::default(),
            sequence_next: Gauge::default(),
            offset_committed: Gauge::default(),
            offset_sent: Gauge::default(),
            commit_lag_records: Gauge::default(),
            last_commit_timestamp_seconds: FloatGauge::default(),
            snowflake_requests: Family::default(),
            // 5 ms .. ~41 s
            snowflake_request_duration_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
            channel_reopens: Family::default(),
            snowflake_row_errors: Counter::default(),
            reader_swipes: Family::default(),
            reader_errors: Family::default(),
            reader_connected: Family::default(),
            // 0.25 ms .. ~4 s: an SD card that needs seconds to fsync is dying.
            storage_flush_duration_seconds: Histogram::new(exponential_buckets(0.000_25, 2.0, 15)),
            offset_gap: Counter::default(),
            osdp: OsdpMetrics::default(),
        };
        let mut registry = Registry::with_prefix("badge_agent");
        let r = &mut registry;
        r.register(
            "buffer_records",
            "Swipes held in the durable buffer",
            metrics.buffer_records.clone(),
        );
        r.register(
            "buffer_bytes",
            "Size of the buffer on disk",
            metrics.buffer_bytes.clone(),
        );
        r.register(
            "buffer_max_bytes",
            "Configured buffer size cap",
            metrics.buffer_max_bytes.clone(),
        );
        r.register(
            "buffer_oldest_record_timestamp_seconds",
            "Unix time of the oldest buffered swipe (0 when empty)",
            metrics.buffer_oldest_record_timestamp_seconds.clone(),
        );
        r.register(
            "buffer_received_records",
            "Swipes made durable in the buffer",
            metrics.buffer_received_records.clone(),
        );
        r.register(
            "buffer_sent_records",
            "Swipes deleted from the buffer after Snowflake committed them",
            metrics.buffer_sent_records.clone(),
        );
        r.register(
            "buffer_dropped_records",
            "Swipes refused or lost, by reason",
            metrics.buffer_dropped_records.clone(),
        );
        r.register(
            "buffer_retry_queue_records",
            "Swipes held in memory for a retry of a failed buffer commit (not durable yet)",
            metrics.buffer_retry_queue_records.clone(),
        );
        r.register(
            "sequence_next",
            "Next sequence number the buffer assigns",
            metrics.sequence_next.clone(),
        );
        r.register(
            "offset_committed",
            "Last offset token Snowflake reports committed",
            metrics.offset_committed.clone(),
        );
        r.register(
            "offset_sent",
            "Last offset token appended",
            metrics.offset_sent.clone(),
        );
        r.register(
            "commit_lag_records",
            "Appended swipes not yet committed",
            metrics.commit_lag_records.clone(),
        );
        r.register(
            "last_commit_timestamp_seconds",
            "Unix time the committed offset last advanced",
            metrics.last_commit_timestamp_seconds.clone(),
        );
        r.register(
            "snowflake_requests",
            "Snowflake requests by operation and HTTP status",
            metrics.snowflake_requests.clone(),
        );
        r.register(
            "snowflake_request_duration_seconds",
            "Snowflake request latency",
            metrics.snowflake_request_duration_seconds.clone(),
        );
        r.register(
            "channel_reopens",
            "Channel reopens by reason",
            metrics.channel_reopens.clone(),
        );
        r.register(
            "snowflake_row_errors",
            "Rows Snowflake skipped as errors",
            metrics.snowflake_row_errors.clone(),
        );
        r.register(
            "reader_swipes",
            "Swipes read per reader",
            metrics.reader_swipes.clone(),
        );
        r.register(
            "reader_errors",
            "Reader errors per reader and kind",
            metrics.reader_errors.clone(),
        );
        r.register(
            "reader_connected",
            "1 while the reader device is open",
            metrics.reader_connected.clone(),
        );
        r.register(
            "storage_flush_duration_seconds",
            "Group commit flush + fsync latency",
            metrics.storage_flush_duration_seconds.clone(),
        );
        r.register(
            "offset_gap",
            "Non-contiguous sequence numbers seen while draining",
            metrics.offset_gap.clone(),
        );
        let o = &metrics.osdp;
        r.register("osdp_polls", "OSDP polls sent, per reader", o.polls.clone());
        r.register(
            "osdp_retries",
            "OSDP commands resent after a reply timeout",
            o.retries.clone(),
        );
        r.register("osdp_naks", "OSDP NAKs received, by reason", o.naks.clone());
        r.register(
            "osdp_secure_channel",
            "1 while the reader's OSDP secure channel is up",
            o.secure_channel.clone(),
        );
        r.register(
            "osdp_online",
            "1 while the OSDP reader answers polls",
            o.online.clone(),
        );
        r.register(
            "osdp_offline_transitions",
            "OSDP reader on line -> off line transitions",
            o.offline_transitions.clone(),
        );
        r.register(
            "osdp_last_reply_timestamp_seconds",
            "When the OSDP reader last replied (Unix seconds)",
            o.last_reply_timestamp_seconds.clone(),
        );
        r.register(
            "build",
            "Version of the running agent",
            Info::new(vec![
                ("version".to_owned(), version.to_owned()),
                ("commit".to_owned(), commit.to_owned()),
            ]),
        );
        (metrics, registry)
    }

    /// Applies an OSDP link's figures (counters advance by what changed since the last call).
    pub fn osdp_link(&self, reader: &str, state: &str, stats: &reader_protocol::osdp::LinkStats) {
        let label = ReaderLabel {
            reader: reader.to_owned(),
        };
        let advance = |c: &Counter, total: u64| {
            c.inc_by(total.saturating_sub(c.get()));
        };
        advance(&self.osdp.polls.get_or_create(&label), stats.polls);
        advance(&self.osdp.retries.get_or_create(&label), stats.retries);
        advance(
            &self.osdp.offline_transitions.get_or_create(&label),
            stats.offline_transitions,
        );
        let online = matches!(state, "online_plain" | "online_secure");
        self.osdp
            .online
            .get_or_create(&label)
            .set(i64::from(online));
        self.osdp
            .secure_channel
            .get_or_create(&label)
            .set(i64::from(state == "online_secure"));
        let replies = self.osdp.replies_seen(&label, stats.replies);
        if replies {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            self.osdp
                .last_reply_timestamp_seconds
                .get_or_create(&label)
                .set(now);
        }
    }

    /// Sets the secure-channel gauge at once (a state change, between periodic updates).
    pub fn osdp_secure(&self, reader: &str, up: bool) {
        self.osdp
            .secure_channel
            .get_or_create(&ReaderLabel {
                reader: reader.to_owned(),
            })
            .set(i64::from(up));
    }

    /// Counts an OSDP NAK.
    pub fn osdp_nak(&self, reader: &str, code: u8) {
        let reason = match code {
            1 => "bad_check".to_owned(),
            2 => "command_length".to_owned(),
            3 => "unknown_command".to_owned(),
            4 => "unexpected_sqn".to_owned(),
            5 => "security_block_unsupported".to_owned(),
            6 => "encryption_required".to_owned(),
            other => format!("code_{other}"),
        };
        self.osdp
            .naks
            .get_or_create(&NakLabels {
                reader: reader.to_owned(),
                reason,
            })
            .inc();
    }

    /// Counts a reader error.
    pub fn reader_error(&self, reader: &str, kind: &str) {
        self.reader_errors
            .get_or_create(&ReaderErrorLabels {
                reader: reader.to_owned(),
                kind: kind.to_owned(),
            })
            .inc();
    }

    /// Counts a dropped or refused swipe.
    pub fn dropped(&self, reason: &str, count: u64) {
        self.buffer_dropped_records
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc_by(count);
    }

    /// Counts a Snowflake request and its latency.
    pub fn request(&self, op: &str, code: &str, seconds: f64) {
        self.snowflake_requests
            .get_or_create(&RequestLabels {
                op: op.to_owned(),
                code: code.to_owned(),
            })
            .inc();
        self.snowflake_request_duration_seconds.observe(seconds);
    }
}

/// Converts a count to a gauge value without wrapping (gauges are i64).
pub fn gauge_value(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use prometheus_client::encoding::text::encode;

    #[test]
    fn exposition_has_the_documented_names() {
        let (metrics, registry) = Metrics::new("1.2.3", "abc");
        metrics.buffer_received_records.inc_by(3);
        metrics.dropped("buffer_full", 2);
        metrics.request("append", "200", 0.01);
        metrics.reader_error("door-1", "parity");
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        for needle in [
            "badge_agent_buffer_received_records_total 3",
            "badge_agent_buffer_dropped_records_total{reason=\"buffer_full\"} 2",
            "badge_agent_snowflake_requests_total{op=\"append\",code=\"200\"} 1",
            "badge_agent_reader_errors_total{reader=\"door-1\",kind=\"parity\"} 1",
            "badge_agent_build_info{version=\"1.2.3\",commit=\"abc\"} 1",
            "badge_agent_storage_flush_duration_seconds_bucket",
            "badge_agent_buffer_oldest_record_timestamp_seconds",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }

    #[test]
    fn osdp_link_figures_advance_by_what_changed() {
        let (metrics, registry) = Metrics::new("1.2.3", "abc");
        let mut stats = reader_protocol::osdp::LinkStats {
            polls: 10,
            retries: 1,
            replies: 11,
            last_reply_ms: Some(5),
            offline_transitions: 0,
        };
        metrics.osdp_link("door-1", "online_secure", &stats);
        stats.polls = 25;
        stats.offline_transitions = 1;
        metrics.osdp_link("door-1", "offline", &stats);
        metrics.osdp_nak("door-1", 4);
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        for needle in [
            "badge_agent_osdp_polls_total{reader=\"door-1\"} 25",
            "badge_agent_osdp_retries_total{reader=\"door-1\"} 1",
            "badge_agent_osdp_offline_transitions_total{reader=\"door-1\"} 1",
            "badge_agent_osdp_secure_channel{reader=\"door-1\"} 0",
            "badge_agent_osdp_online{reader=\"door-1\"} 0",
            "badge_agent_osdp_naks_total{reader=\"door-1\",reason=\"unexpected_sqn\"} 1",
            "badge_agent_osdp_last_reply_timestamp_seconds{reader=\"door-1\"}",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }

    #[test]
    fn gauge_value_saturates() {
        assert_eq!(gauge_value(5), 5);
        assert_eq!(gauge_value(u64::MAX), i64::MAX);
    }
}
