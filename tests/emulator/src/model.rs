//! Sans-IO channel model: pipes, channels with client/row sequencers inside opaque continuation
//! tokens, asynchronous in-order commits and the ledger of committed rows. Time is passed in (epoch
//! milliseconds) so every rule is unit-testable without a clock.

use std::collections::{BTreeMap, VecDeque};

use base64::Engine as _;
use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::ndjson::ParsedRows;

/// An API error: HTTP status plus a Snowflake-style `{"code","message"}` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status code.
    pub status: u16,
    /// Snowflake error code string (`code` in the body).
    pub code: String,
    /// Human-readable message.
    pub message: String,
}

impl ApiError {
    /// Builds an error.
    pub fn new(status: u16, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            code: code.to_string(),
            message: message.into(),
        }
    }

    /// The JSON body Snowflake uses for errors.
    pub fn body(&self) -> Value {
        json!({"code": self.code, "message": self.message})
    }

    fn channel_missing(name: &str) -> Self {
        Self::new(
            404,
            "ERR_CHANNEL_DOES_NOT_EXIST_OR_NOT_AUTHORIZED",
            format!("Channel {name} does not exist or is not authorized"),
        )
    }

    fn stale() -> Self {
        Self::new(
            400,
            "STALE_CONTINUATION_TOKEN_SEQUENCER",
            "Channel sequencer in the continuation token is stale. Please reopen the channel",
        )
    }
}

/// A configured pipe (`DB.SCHEMA.PIPE`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PipeId {
    /// Database name as configured.
    pub database: String,
    /// Schema name as configured.
    pub schema: String,
    /// Pipe name as configured (e.g. `BADGE_SWIPES-STREAMING`).
    pub pipe: String,
}

impl PipeId {
    /// Parses `DB.SCHEMA.PIPE` (the pipe part may itself contain dots).
    pub fn parse(s: &str) -> Option<Self> {
        let mut it = s.splitn(3, '.');
        let (d, sc, p) = (it.next()?, it.next()?, it.next()?);
        if d.is_empty() || sc.is_empty() || p.is_empty() {
            return None;
        }
        Some(Self {
            database: d.into(),
            schema: sc.into(),
            pipe: p.into(),
        })
    }

    /// Case-insensitive match against names from a request path.
    pub fn matches(&self, db: &str, schema: &str, pipe: &str) -> bool {
        self.database.eq_ignore_ascii_case(db)
            && self.schema.eq_ignore_ascii_case(schema)
            && self.pipe.eq_ignore_ascii_case(pipe)
    }

    /// `DB.SCHEMA.PIPE`.
    pub fn qualified(&self) -> String {
        format!("{}.{}.{}", self.database, self.schema, self.pipe)
    }
}

/// The decoded content of a continuation token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sequencers {
    /// Channel incarnation: a dropped and re-created channel never accepts old tokens.
    pub incarnation: u64,
    /// Client sequencer, bumped by every (re)open.
    pub client: u64,
    /// Row sequencer, bumped by every accepted append.
    pub row: u64,
}

impl Sequencers {
    /// Encodes as an opaque URL-safe token.
    pub fn encode(&self) -> String {
        let raw = format!("ssv2:{}:{}:{}", self.incarnation, self.client, self.row);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    }

    /// Decodes a token produced by [`Sequencers::encode`]; `None` for anything else.
    pub fn decode(token: &str) -> Option<Self> {
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token.as_bytes())
            .ok()?;
        let raw = std::str::from_utf8(&raw).ok()?;
        let mut it = raw.strip_prefix("ssv2:")?.split(':');
        let s = Self {
            incarnation: it.next()?.parse().ok()?,
            client: it.next()?.parse().ok()?,
            row: it.next()?.parse().ok()?,
        };
        it.next().is_none().then_some(s)
    }
}

/// A row that has been committed (the emulator's "table").
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CommittedRow {
    /// `DB.SCHEMA.PIPE` the row was ingested through.
    pub pipe: String,
    /// Channel name.
    pub channel: String,
    /// The batch's committed offset token (`endOffsetToken`, or legacy `offsetToken`).
    pub offset_token: Option<String>,
    /// The batch's `startOffsetToken`, if sent.
    pub start_offset_token: Option<String>,
    /// 0-based index of the row among the batch's valid rows.
    pub row_index: usize,
    /// Commit time, epoch ms.
    pub committed_at_ms: u64,
    /// The row itself.
    pub row: Value,
}

#[derive(Debug, Clone)]
struct PendingBatch {
    due_ms: u64,
    start_offset: Option<String>,
    end_offset: Option<String>,
    parsed: ParsedRows,
}

/// One channel's state.
#[derive(Debug, Clone)]
pub struct Channel {
    pipe: usize,
    name: String,
    created_on_ms: u64,
    seq: Sequencers,
    committed_offset: Option<String>,
    rows_inserted: u64,
    rows_parsed: u64,
    rows_error_count: u64,
    last_error_message: Option<String>,
    last_error_offset_upper_bound: Option<String>,
    last_error_timestamp_ms: Option<u64>,
    pending: VecDeque<PendingBatch>,
    /// (token the previous append carried, token it was answered with) — for idempotent replays.
    last_append: Option<(String, String)>,
}

impl Channel {
    /// Whether appended rows are waiting to be committed.
    pub fn has_uncommitted(&self) -> bool {
        !self.pending.is_empty()
    }
}

/// Options of an open (PUT channel) request body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenOptions {
    /// `offset_token`: sets the committed token.
    pub offset_token: Option<String>,
    /// `fail_on_uncommitted_rows`.
    pub fail_on_uncommitted_rows: bool,
}

/// Offset parameters of an append.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppendOffsets {
    /// `startOffsetToken`.
    pub start: Option<String>,
    /// `endOffsetToken`.
    pub end: Option<String>,
    /// Legacy `offsetToken`.
    pub legacy: Option<String>,
}

/// The whole emulated service state.
#[derive(Debug, Clone)]
pub struct Model {
    pipes: Vec<PipeId>,
    /// Commit delay after an append, ms.
    pub commit_delay_ms: u64,
    channels: BTreeMap<(usize, String), Channel>,
    ledger: Vec<CommittedRow>,
    next_incarnation: u64,
}

/// Outcome of an append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendOutcome {
    /// `next_continuation_token` to answer with.
    pub next_token: String,
    /// True when the request was a replay of the previous one and nothing was inserted.
    pub replay: bool,
}

impl Model {
    /// A fresh model serving `pipes`.
    pub fn new(pipes: Vec<PipeId>, commit_delay_ms: u64) -> Self {
        Self {
            pipes,
            commit_delay_ms,
            channels: BTreeMap::new(),
            ledger: Vec::new(),
            next_incarnation: 1,
        }
    }

    /// Forgets all channels and committed rows (pipes and settings stay).
    pub fn reset(&mut self) {
        self.channels.clear();
        self.ledger.clear();
    }

    /// Finds a configured pipe (case-insensitive); 404 with a Snowflake code otherwise.
    pub fn pipe(&self, db: &str, schema: &str, pipe: &str) -> Result<usize, ApiError> {
        self.pipes
            .iter()
            .position(|p| p.matches(db, schema, pipe))
            .ok_or_else(|| {
                ApiError::new(
                    404,
                    "ERR_PIPE_DOES_NOT_EXIST_OR_NOT_AUTHORIZED",
                    format!("Pipe {db}.{schema}.{pipe} does not exist or not authorized"),
                )
            })
    }

    /// Configured pipes.
    pub fn pipes(&self) -> &[PipeId] {
        &self.pipes
    }

    fn key(pipe: usize, channel: &str) -> (usize, String) {
        (pipe, channel.to_uppercase())
    }

    /// Open or reopen a channel. Returns `(next_continuation_token, status)`.
    pub fn open(
        &mut self,
        pipe: usize,
        channel: &str,
        opts: &OpenOptions,
        now_ms: u64,
    ) -> Result<(String, Value), ApiError> {
        let key = Self::key(pipe, channel);
        if let Some(ch) = self.channels.get_mut(&key) {
            if opts.fail_on_uncommitted_rows && ch.has_uncommitted() {
                return Err(ApiError::new(
                    409,
                    "ERR_CHANNEL_HAS_UNCOMMITTED_DATA",
                    format!("Channel {channel} has uncommitted data"),
                ));
            }
            // Reopen: fence every earlier token and never commit the in-flight data.
            ch.pending.clear();
            ch.last_append = None;
            ch.seq.client += 1;
            if opts.offset_token.is_some() {
                ch.committed_offset = opts.offset_token.clone();
            }
        } else {
            let incarnation = self.next_incarnation;
            self.next_incarnation += 1;
            self.channels.insert(
                key.clone(),
                Channel {
                    pipe,
                    name: channel.to_string(),
                    created_on_ms: now_ms,
                    seq: Sequencers {
                        incarnation,
                        client: 1,
                        row: 0,
                    },
                    committed_offset: opts.offset_token.clone(),
                    rows_inserted: 0,
                    rows_parsed: 0,
                    rows_error_count: 0,
                    last_error_message: None,
                    last_error_offset_upper_bound: None,
                    last_error_timestamp_ms: None,
                    pending: VecDeque::new(),
                    last_append: None,
                },
            );
        }
        let ch = self
            .channels
            .get(&key)
            .ok_or_else(|| ApiError::channel_missing(channel))?;
        Ok((ch.seq.encode(), self.status_json(ch)))
    }

    /// Append a parsed batch with the given continuation token.
    pub fn append(
        &mut self,
        pipe: usize,
        channel: &str,
        token: &str,
        offsets: &AppendOffsets,
        parsed: ParsedRows,
        now_ms: u64,
    ) -> Result<AppendOutcome, ApiError> {
        let delay = self.commit_delay_ms;
        let ch = self
            .channels
            .get_mut(&Self::key(pipe, channel))
            .ok_or_else(|| ApiError::channel_missing(channel))?;
        let current = ch.seq.encode();
        if token == current {
            ch.seq.row += 1;
            let next = ch.seq.encode();
            let end = offsets.end.clone().or_else(|| offsets.legacy.clone());
            // Commits happen in order, so a batch is never due before the one ahead of it.
            let due = ch
                .pending
                .back()
                .map_or(0, |b| b.due_ms)
                .max(now_ms.saturating_add(delay));
            ch.pending.push_back(PendingBatch {
                due_ms: due,
                start_offset: offsets.start.clone(),
                end_offset: end,
                parsed,
            });
            ch.last_append = Some((token.to_string(), next.clone()));
            return Ok(AppendOutcome {
                next_token: next,
                replay: false,
            });
        }
        if let Some((prev, next)) = &ch.last_append {
            if prev == token {
                return Ok(AppendOutcome {
                    next_token: next.clone(),
                    replay: true,
                });
            }
        }
        match Sequencers::decode(token) {
            Some(_) => Err(ApiError::stale()),
            None => Err(ApiError::new(
                400,
                "ERR_INVALID_CONTINUATION_TOKEN",
                "The continuation token is malformed",
            )),
        }
    }

    /// Drop a channel; with `fail_on_uncommitted_rows`, 409 while data is in flight.
    pub fn drop_channel(
        &mut self,
        pipe: usize,
        channel: &str,
        fail_on_uncommitted_rows: bool,
    ) -> Result<(), ApiError> {
        let key = Self::key(pipe, channel);
        let ch = self
            .channels
            .get(&key)
            .ok_or_else(|| ApiError::channel_missing(channel))?;
        if fail_on_uncommitted_rows && ch.has_uncommitted() {
            return Err(ApiError::new(
                409,
                "ERR_CHANNEL_HAS_UNCOMMITTED_DATA",
                format!("Channel {channel} has uncommitted data"),
            ));
        }
        self.channels.remove(&key);
        Ok(())
    }

    /// Bulk status: a map keyed by the requested names; unknown channels are omitted.
    pub fn bulk_status(&self, pipe: usize, names: &[String]) -> Map<String, Value> {
        let mut out = Map::new();
        for n in names {
            if let Some(ch) = self.channels.get(&Self::key(pipe, n)) {
                out.insert(n.clone(), self.status_json(ch));
            }
        }
        out
    }

    /// Status objects of every channel, for the admin endpoint.
    pub fn all_statuses(&self) -> Vec<Value> {
        self.channels
            .values()
            .map(|ch| {
                let mut v = self.status_json(ch);
                if let Value::Object(m) = &mut v {
                    m.insert("uncommitted_batches".into(), json!(ch.pending.len()));
                }
                v
            })
            .collect()
    }

    /// The official client's status field set (`docs/snowpipe-wire.md`).
    fn status_json(&self, ch: &Channel) -> Value {
        let p = &self.pipes[ch.pipe.min(self.pipes.len().saturating_sub(1))];
        json!({
            "database_name": p.database,
            "schema_name": p.schema,
            "pipe_name": p.pipe,
            "channel_name": ch.name,
            "channel_status_code": "SUCCESS",
            "last_committed_offset_token": ch.committed_offset,
            "created_on_ms": ch.created_on_ms,
            "rows_inserted": ch.rows_inserted,
            "rows_parsed": ch.rows_parsed,
            "rows_error_count": ch.rows_error_count,
            "rows_errors": ch.rows_error_count,
            "last_error_offset_upper_bound": ch.last_error_offset_upper_bound,
            "last_error_message": ch.last_error_message,
            "last_error_timestamp_ms": ch.last_error_timestamp_ms,
            "snowflake_avg_processing_latency_ms": self.commit_delay_ms,
        })
    }

    /// Commits, in order, every batch whose commit time has come. Returns the newly committed rows
    /// (the ledger's new tail: moved there, not copied, since the lock is held meanwhile).
    pub fn tick(&mut self, now_ms: u64) -> &[CommittedRow] {
        let first_new = self.ledger.len();
        let new_rows = &mut self.ledger;
        for ch in self.channels.values_mut() {
            while ch.pending.front().is_some_and(|b| b.due_ms <= now_ms) {
                let Some(b) = ch.pending.pop_front() else {
                    break;
                };
                let pipe = self
                    .pipes
                    .get(ch.pipe)
                    .map(PipeId::qualified)
                    .unwrap_or_default();
                ch.rows_parsed += b.parsed.parsed() as u64;
                ch.rows_inserted += b.parsed.rows.len() as u64;
                if let Some(last) = b.parsed.errors.last() {
                    ch.rows_error_count += b.parsed.errors.len() as u64;
                    ch.last_error_message = Some(last.message.clone());
                    ch.last_error_offset_upper_bound = b.end_offset.clone();
                    ch.last_error_timestamp_ms = Some(now_ms);
                }
                if b.end_offset.is_some() {
                    ch.committed_offset = b.end_offset.clone();
                }
                for (i, row) in b.parsed.rows.into_iter().enumerate() {
                    new_rows.push(CommittedRow {
                        pipe: pipe.clone(),
                        channel: ch.name.clone(),
                        offset_token: b.end_offset.clone(),
                        start_offset_token: b.start_offset.clone(),
                        row_index: i,
                        committed_at_ms: now_ms,
                        row: Value::Object(row),
                    });
                }
            }
        }
        &self.ledger[first_new..]
    }

    /// Makes every pending batch due now and commits them all (tests use it to pick the moment).
    pub fn commit_all_now(&mut self, now_ms: u64) -> &[CommittedRow] {
        for ch in self.channels.values_mut() {
            for b in &mut ch.pending {
                b.due_ms = 0;
            }
        }
        self.tick(now_ms)
    }

    /// Committed rows of one channel (case-insensitive), or of all channels for `None`.
    pub fn ledger(&self, channel: Option<&str>) -> Vec<CommittedRow> {
        self.ledger_iter(channel).cloned().collect()
    }

    /// The same rows, borrowed: a benchmark's ledger holds millions of rows, and a copy of them
    /// doubles the emulator's memory.
    pub fn ledger_iter<'a>(
        &'a self,
        channel: Option<&'a str>,
    ) -> impl Iterator<Item = &'a CommittedRow> + 'a {
        self.ledger
            .iter()
            .filter(move |r| channel.is_none_or(|c| r.channel.eq_ignore_ascii_case(c)))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::ndjson::parse_ndjson;

    fn model() -> Model {
        Model::new(vec![PipeId::parse("DB1.SCH1.PIPE1").unwrap()], 1000)
    }

    fn offs(s: &str, e: &str) -> AppendOffsets {
        AppendOffsets {
            start: Some(s.into()),
            end: Some(e.into()),
            legacy: None,
        }
    }

    fn fail() -> OpenOptions {
        OpenOptions {
            offset_token: None,
            fail_on_uncommitted_rows: true,
        }
    }

    fn committed(m: &Model, ch: &str) -> Value {
        m.bulk_status(0, &[ch.to_string()])[ch]["last_committed_offset_token"].clone()
    }

    #[test]
    fn token_roundtrip_and_garbage() {
        let s = Sequencers {
            incarnation: 3,
            client: 7,
            row: 9,
        };
        assert_eq!(Sequencers::decode(&s.encode()), Some(s));
        for bad in ["", "1_0", "!!!", "c3N2MjoxOjI=", "c3N2MjoxOjI6Mzo0"] {
            assert_eq!(Sequencers::decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn pipe_lookup_is_case_insensitive() {
        let m = model();
        assert_eq!(m.pipe("db1", "Sch1", "pipe1"), Ok(0));
        let e = m.pipe("db1", "sch1", "nope").unwrap_err();
        assert_eq!(e.status, 404);
        assert!(e.code.starts_with("ERR_"));
    }

    #[test]
    fn append_commit_in_order_after_delay() {
        let mut m = model();
        let (t0, st) = m.open(0, "ch1", &fail(), 0).unwrap();
        assert_eq!(st["channel_status_code"], "SUCCESS");
        assert!(st["last_committed_offset_token"].is_null());
        let a = m
            .append(
                0,
                "ch1",
                &t0,
                &offs("1", "3"),
                parse_ndjson(b"{\"a\":1}\n{\"a\":2}\n{\"a\":3}\n"),
                10,
            )
            .unwrap();
        let b = m
            .append(
                0,
                "ch1",
                &a.next_token,
                &offs("4", "4"),
                parse_ndjson(b"{\"a\":4}\n"),
                20,
            )
            .unwrap();
        assert_ne!(a.next_token, b.next_token);
        assert!(m.tick(500).is_empty());
        assert!(committed(&m, "ch1").is_null());
        let rows = m.tick(1010);
        assert_eq!(rows.len(), 3);
        assert_eq!(committed(&m, "ch1"), "3");
        m.tick(1020);
        assert_eq!(committed(&m, "ch1"), "4");
        let l = m.ledger(Some("CH1"));
        assert_eq!(l.len(), 4);
        assert_eq!(l[3].row["a"], 4);
        assert_eq!(l[3].offset_token.as_deref(), Some("4"));
        assert_eq!(m.bulk_status(0, &["ch1".into()])["ch1"]["rows_inserted"], 4);
    }

    #[test]
    fn later_batch_never_commits_before_earlier_one() {
        let mut m = model();
        let (t0, _) = m.open(0, "c", &fail(), 0).unwrap();
        let a = m
            .append(0, "c", &t0, &offs("1", "1"), parse_ndjson(b"{}"), 100)
            .unwrap();
        m.commit_delay_ms = 10; // shorter delay for the second batch
        m.append(
            0,
            "c",
            &a.next_token,
            &offs("2", "2"),
            parse_ndjson(b"{}"),
            101,
        )
        .unwrap();
        m.tick(200);
        assert!(
            committed(&m, "c").is_null(),
            "batch 2 must wait for batch 1"
        );
        m.tick(1100);
        assert_eq!(committed(&m, "c"), "2");
    }

    #[test]
    fn replay_of_previous_token_is_idempotent() {
        let mut m = model();
        let (t0, _) = m.open(0, "c", &fail(), 0).unwrap();
        let a = m
            .append(0, "c", &t0, &offs("1", "2"), parse_ndjson(b"{}\n{}"), 0)
            .unwrap();
        let r = m
            .append(0, "c", &t0, &offs("1", "2"), parse_ndjson(b"{}\n{}"), 1)
            .unwrap();
        assert!(r.replay);
        assert_eq!(r.next_token, a.next_token);
        m.tick(5000);
        assert_eq!(m.ledger(None).len(), 2);
        // After a new append, the first token is no longer "immediately previous": stale.
        let b = m
            .append(
                0,
                "c",
                &a.next_token,
                &offs("3", "3"),
                parse_ndjson(b"{}"),
                2,
            )
            .unwrap();
        let e = m
            .append(0, "c", &t0, &offs("1", "2"), parse_ndjson(b"{}"), 3)
            .unwrap_err();
        assert_eq!(
            (e.status, e.code.as_str()),
            (400, "STALE_CONTINUATION_TOKEN_SEQUENCER")
        );
        assert!(
            m.append(
                0,
                "c",
                &a.next_token,
                &offs("3", "3"),
                parse_ndjson(b"{}"),
                4
            )
            .unwrap()
            .replay
        );
        assert_ne!(b.next_token, a.next_token);
    }

    #[test]
    fn reopen_fences_old_tokens_and_discards_uncommitted() {
        let mut m = model();
        let (t0, _) = m.open(0, "c", &fail(), 0).unwrap();
        let a = m
            .append(0, "c", &t0, &offs("1", "1"), parse_ndjson(b"{\"n\":1}"), 0)
            .unwrap();
        m.tick(2000);
        let b = m
            .append(
                0,
                "c",
                &a.next_token,
                &offs("2", "2"),
                parse_ndjson(b"{\"n\":2}"),
                2000,
            )
            .unwrap();
        // fail_on_uncommitted_rows=true while batch 2 is in flight → 409.
        let e = m.open(0, "c", &fail(), 2001).unwrap_err();
        assert_eq!(
            (e.status, e.code.as_str()),
            (409, "ERR_CHANNEL_HAS_UNCOMMITTED_DATA")
        );
        // The 409 changed nothing: the current token still works.
        let c = m
            .append(
                0,
                "c",
                &b.next_token,
                &offs("3", "3"),
                parse_ndjson(b"{\"n\":3}"),
                2002,
            )
            .unwrap();
        // Forced reopen discards batches 2 and 3.
        let (t1, st) = m.open(0, "C", &OpenOptions::default(), 2003).unwrap();
        assert_eq!(st["last_committed_offset_token"], "1");
        for old in [&t0, &a.next_token, &b.next_token, &c.next_token] {
            let e = m
                .append(0, "c", old, &offs("9", "9"), parse_ndjson(b"{}"), 2004)
                .unwrap_err();
            assert_eq!(
                (e.status, e.code.as_str()),
                (400, "STALE_CONTINUATION_TOKEN_SEQUENCER")
            );
        }
        m.tick(100_000);
        assert_eq!(m.ledger(Some("c")).len(), 1);
        assert_eq!(committed(&m, "c"), "1");
        let d = m
            .append(
                0,
                "c",
                &t1,
                &offs("2", "2"),
                parse_ndjson(b"{\"n\":2}"),
                100_000,
            )
            .unwrap();
        assert!(!d.replay);
        m.tick(200_000);
        assert_eq!(committed(&m, "c"), "2");
        // Reopen with nothing in flight succeeds even with fail_on_uncommitted_rows.
        assert!(m.open(0, "c", &fail(), 200_001).is_ok());
    }

    #[test]
    fn drop_then_recreate_rejects_old_tokens_and_keeps_ledger() {
        let mut m = model();
        let (t0, _) = m.open(0, "c", &fail(), 0).unwrap();
        m.append(0, "c", &t0, &offs("1", "1"), parse_ndjson(b"{}"), 0)
            .unwrap();
        m.tick(10_000);
        m.drop_channel(0, "c", false).unwrap();
        assert!(m.bulk_status(0, &["c".into()]).is_empty());
        assert_eq!(m.drop_channel(0, "c", false).unwrap_err().status, 404);
        let e = m
            .append(0, "c", &t0, &offs("2", "2"), parse_ndjson(b"{}"), 0)
            .unwrap_err();
        assert_eq!(e.status, 404);
        let (t1, st) = m.open(0, "c", &fail(), 1).unwrap();
        assert!(st["last_committed_offset_token"].is_null());
        assert_ne!(t1, t0);
        assert_eq!(
            m.append(0, "c", &t0, &offs("2", "2"), parse_ndjson(b"{}"), 2)
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(m.ledger(Some("c")).len(), 1);
    }

    #[test]
    fn bad_rows_are_counted_and_offset_still_commits() {
        let mut m = model();
        let (t0, _) = m.open(0, "c", &fail(), 0).unwrap();
        let a = m
            .append(0, "c", &t0, &offs("1", "3"), parse_ndjson(b"{}\n[]\n{}"), 0)
            .unwrap();
        m.append(
            0,
            "c",
            &a.next_token,
            &offs("4", "5"),
            parse_ndjson(b"1\n{}"),
            0,
        )
        .unwrap();
        m.tick(5000);
        let st = &m.bulk_status(0, &["c".into()])["c"];
        assert_eq!(st["rows_error_count"], 2);
        assert_eq!(st["rows_parsed"], 5);
        assert_eq!(st["rows_inserted"], 3);
        assert_eq!(st["last_committed_offset_token"], "5");
        assert_eq!(st["last_error_offset_upper_bound"], "5");
        assert!(st["last_error_message"]
            .as_str()
            .unwrap()
            .contains("number"));
        assert_eq!(st["last_error_timestamp_ms"], 5000);
        // Cumulative across a reopen.
        m.open(0, "c", &fail(), 6000).unwrap();
        assert_eq!(m.bulk_status(0, &["c".into()])["c"]["rows_error_count"], 2);
    }

    #[test]
    fn legacy_offset_token_and_open_offset_token() {
        let mut m = model();
        let (t0, st) = m
            .open(
                0,
                "c",
                &OpenOptions {
                    offset_token: Some("41".into()),
                    fail_on_uncommitted_rows: false,
                },
                0,
            )
            .unwrap();
        assert_eq!(st["last_committed_offset_token"], "41");
        let legacy = AppendOffsets {
            legacy: Some("42".into()),
            ..Default::default()
        };
        m.append(0, "c", &t0, &legacy, parse_ndjson(b"{}"), 0)
            .unwrap();
        m.tick(5000);
        assert_eq!(committed(&m, "c"), "42");
    }

    #[test]
    fn status_has_client_field_set_and_omits_unknown() {
        let mut m = model();
        m.open(0, "ch1", &fail(), 5).unwrap();
        let s = m.bulk_status(0, &["nochan".into(), "ch1".into()]);
        assert_eq!(s.len(), 1);
        let st = s["ch1"].as_object().unwrap();
        for f in [
            "database_name",
            "schema_name",
            "pipe_name",
            "channel_name",
            "channel_status_code",
            "last_committed_offset_token",
            "created_on_ms",
            "rows_inserted",
            "rows_parsed",
            "rows_error_count",
            "last_error_offset_upper_bound",
            "last_error_message",
            "last_error_timestamp_ms",
            "snowflake_avg_processing_latency_ms",
        ] {
            assert!(st.contains_key(f), "missing {f}");
        }
        assert_eq!(st["created_on_ms"], 5);
    }

    #[test]
    fn commit_all_now_ignores_the_delay() {
        let mut m = model();
        m.commit_delay_ms = 600_000;
        let (t0, _) = m.open(0, "c", &fail(), 0).unwrap();
        m.append(0, "c", &t0, &offs("1", "2"), parse_ndjson(b"{}\n{}"), 0)
            .unwrap();
        assert!(m.tick(1000).is_empty());
        assert_eq!(m.commit_all_now(1001).len(), 2);
        assert_eq!(committed(&m, "c"), "2");
        assert_eq!(m.ledger(None)[0].committed_at_ms, 1001);
    }

    #[test]
    fn malformed_token_is_400() {
        let mut m = model();
        m.open(0, "c", &fail(), 0).unwrap();
        let e = m
            .append(
                0,
                "c",
                "garbage",
                &AppendOffsets::default(),
                parse_ndjson(b"{}"),
                0,
            )
            .unwrap_err();
        assert_eq!(e.status, 400);
    }
}
