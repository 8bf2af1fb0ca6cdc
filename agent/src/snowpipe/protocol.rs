//! The wire protocol, sans I/O: request builders (method, URL, headers, body) and response parsers
//! for the six endpoints the agent uses (`docs/snowpipe-wire.md`).
//!
//! Builders produce an [`HttpRequest`] that the transport sends verbatim; parsers turn a body into
//! typed structs and never panic on a hostile answer (they return [`ProtoError`]).

use std::collections::HashMap;
use std::fmt;

use serde::Deserialize;
use uuid::Uuid;

use super::redact::{sanitize, Secret};

/// The operations of the client (for errors, retry classification and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// `GET /v2/streaming/hostname` (control host).
    Hostname,
    /// `POST /oauth/token` (control host).
    Token,
    /// `PUT …/channels/{channel}`.
    OpenChannel,
    /// `POST /v2/streaming/data/…/rows`.
    Append,
    /// `POST …:bulk-channel-status`.
    ChannelStatus,
    /// `DELETE …/channels/{channel}`.
    DropChannel,
}

impl Op {
    /// Stable lower-case name (metrics label).
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Hostname => "hostname",
            Op::Token => "token",
            Op::OpenChannel => "open_channel",
            Op::Append => "append",
            Op::ChannelStatus => "channel_status",
            Op::DropChannel => "drop_channel",
        }
    }

    /// Whether the call goes to the control host (key-pair JWT) rather than the ingest host.
    pub fn is_control(self) -> bool {
        matches!(self, Op::Hostname | Op::Token)
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// HTTP method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET
    Get,
    /// POST
    Post,
    /// PUT
    Put,
    /// DELETE
    Delete,
}

impl Method {
    /// The method token.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
        }
    }
}

/// A fully built request. `Debug` redacts the `Authorization` header.
#[derive(Clone, PartialEq, Eq)]
pub struct HttpRequest {
    /// Which operation this is.
    pub op: Op,
    /// Method.
    pub method: Method,
    /// Absolute URL (`https://host:port/path?query`).
    pub url: String,
    /// Headers in sending order (names lower-case except where Snowflake's docs spell them).
    pub headers: Vec<(&'static str, String)>,
    /// Body; `None` means no body at all (GET, DELETE).
    pub body: Option<Vec<u8>>,
}

impl HttpRequest {
    /// The value of a header (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The host of the URL (without port).
    pub fn host(&self) -> &str {
        split_url_host(&self.url).0
    }
}

impl fmt::Debug for HttpRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(n, v)| {
                if n.eq_ignore_ascii_case("authorization") {
                    (*n, "[redacted]")
                } else {
                    (*n, v.as_str())
                }
            })
            .collect();
        f.debug_struct("HttpRequest")
            .field("op", &self.op)
            .field("method", &self.method)
            .field("url", &self.url)
            .field("headers", &headers)
            .field("body_len", &self.body.as_ref().map(Vec::len))
            .finish()
    }
}

/// `(host, port)` of an absolute `https://host[:port]/…` URL (IPv6 brackets kept).
pub(crate) fn split_url_host(url: &str) -> (&str, Option<u16>) {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    if let Some(stripped) = authority.strip_prefix('[') {
        if let Some((h, after)) = stripped.split_once(']') {
            let port = after.strip_prefix(':').and_then(|p| p.parse().ok());
            return (h, port);
        }
    }
    match authority.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().ok()),
        None => (authority, None),
    }
}

/// Percent-encodes one path segment: RFC 3986 unreserved characters (`A-Z a-z 0-9 - . _ ~`) stay,
/// every other byte of the UTF-8 form becomes `%XX` (so `/` in a channel name cannot add a segment).
pub fn encode_path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Query values use the same encoder: continuation tokens are opaque and may contain anything.
fn encode_query_value(s: &str) -> String {
    encode_path_segment(s)
}

/// `requestId` and `retryCount`, added to every request (wire docs). A retry keeps the id and increments
/// the count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestMeta {
    /// One id per logical call, kept across retries.
    pub request_id: Uuid,
    /// 0 on the first attempt.
    pub retry_count: u32,
}

impl RequestMeta {
    /// A new logical call.
    pub fn new() -> Self {
        RequestMeta {
            request_id: Uuid::new_v4(),
            retry_count: 0,
        }
    }

    /// The next attempt of the same call.
    pub fn retry(self) -> Self {
        RequestMeta {
            request_id: self.request_id,
            retry_count: self.retry_count.saturating_add(1),
        }
    }

    fn query(&self) -> String {
        format!(
            "requestId={}&retryCount={}",
            self.request_id.hyphenated(),
            self.retry_count
        )
    }
}

impl Default for RequestMeta {
    fn default() -> Self {
        Self::new()
    }
}

/// Body encoding of an append (`Content-Encoding`); also the operator's `snowflake.compression`
/// setting, read from the file as `zstd`, `gzip` or `none`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContentEncoding {
    /// `Content-Encoding: zstd` (the official client's default).
    #[default]
    Zstd,
    /// `Content-Encoding: gzip`.
    Gzip,
    /// No header, identity body (debugging).
    #[serde(rename = "none")]
    Identity,
}

impl ContentEncoding {
    fn header(self) -> Option<&'static str> {
        match self {
            ContentEncoding::Zstd => Some("zstd"),
            ContentEncoding::Gzip => Some("gzip"),
            ContentEncoding::Identity => None,
        }
    }
}

/// Everything that is the same for all requests of one client: where to send them and as whom.
#[derive(Debug, Clone)]
pub struct Wire {
    /// `https://host:port` of the account URL.
    pub control_base: String,
    /// Database name (sent as given).
    pub database: String,
    /// Schema name.
    pub schema: String,
    /// Pipe name.
    pub pipe: String,
    /// `User-Agent` value.
    pub user_agent: String,
}

/// One append's wire parameters.
#[derive(Debug, Clone, Copy)]
pub struct AppendParams<'a> {
    /// Channel.
    pub channel: &'a str,
    /// Continuation token from the last open/append.
    pub continuation_token: &'a str,
    /// Offset token of the first row.
    pub start_offset_token: Option<&'a str>,
    /// Offset token of the last row.
    pub end_offset_token: Option<&'a str>,
    /// Body encoding.
    pub encoding: ContentEncoding,
    /// Uncompressed NDJSON length.
    pub uncompressed_len: usize,
    /// Earliest append time in the batch, epoch ms.
    pub min_append_ts_ms: u64,
}

impl Wire {
    fn pipe_path(&self) -> String {
        format!(
            "/v2/streaming/databases/{}/schemas/{}/pipes/{}",
            encode_path_segment(&self.database),
            encode_path_segment(&self.schema),
            encode_path_segment(&self.pipe)
        )
    }

    fn common_headers(&self, token: &Secret, control: bool) -> Vec<(&'static str, String)> {
        vec![
            ("Authorization", format!("Bearer {}", token.expose())),
            (
                "X-Snowflake-Authorization-Token-Type",
                if control { "KEYPAIR_JWT" } else { "OAUTH" }.to_string(),
            ),
            ("Accept", "application/json".to_string()),
            ("Accept-Charset", "UTF-8".to_string()),
            ("User-Agent", self.user_agent.clone()),
        ]
    }

    /// `GET /v2/streaming/hostname` on the control host, key-pair JWT.
    pub fn hostname(&self, jwt: &Secret, meta: RequestMeta) -> HttpRequest {
        HttpRequest {
            op: Op::Hostname,
            method: Method::Get,
            url: format!(
                "{}/v2/streaming/hostname?{}",
                self.control_base,
                meta.query()
            ),
            headers: self.common_headers(jwt, true),
            body: None,
        }
    }

    /// `POST /oauth/token` on the control host: JWT-bearer grant scoped to the ingest host.
    pub fn token(&self, jwt: &Secret, ingest_host: &str, meta: RequestMeta) -> HttpRequest {
        let mut headers = self.common_headers(jwt, true);
        headers.push((
            "Content-Type",
            "application/x-www-form-urlencoded".to_string(),
        ));
        let body = format!(
            "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&scope={}",
            encode_query_value(ingest_host)
        );
        HttpRequest {
            op: Op::Token,
            method: Method::Post,
            url: format!("{}/oauth/token?{}", self.control_base, meta.query()),
            headers,
            body: Some(body.into_bytes()),
        }
    }

    /// `PUT …/channels/{channel}` with `{"fail_on_uncommitted_rows":…}`.
    pub fn open_channel(
        &self,
        ingest_base: &str,
        token: &Secret,
        channel: &str,
        fail_on_uncommitted_rows: bool,
        meta: RequestMeta,
    ) -> HttpRequest {
        let mut headers = self.common_headers(token, false);
        headers.push(("Content-Type", "application/json".to_string()));
        HttpRequest {
            op: Op::OpenChannel,
            method: Method::Put,
            url: format!(
                "{ingest_base}{}/channels/{}?{}",
                self.pipe_path(),
                encode_path_segment(channel),
                meta.query()
            ),
            headers,
            body: Some(
                format!("{{\"fail_on_uncommitted_rows\":{fail_on_uncommitted_rows}}}").into_bytes(),
            ),
        }
    }

    /// `POST /v2/streaming/data/…/channels/{channel}/rows?startOffsetToken=…&endOffsetToken=…&continuationToken=…&requestId=…&retryCount=…`.
    pub fn append(
        &self,
        ingest_base: &str,
        token: &Secret,
        p: &AppendParams<'_>,
        body: Vec<u8>,
        meta: RequestMeta,
    ) -> HttpRequest {
        let mut query = String::new();
        if let Some(s) = p.start_offset_token {
            query.push_str(&format!("startOffsetToken={}&", encode_query_value(s)));
        }
        if let Some(e) = p.end_offset_token {
            query.push_str(&format!("endOffsetToken={}&", encode_query_value(e)));
        }
        query.push_str(&format!(
            "continuationToken={}&{}",
            encode_query_value(p.continuation_token),
            meta.query()
        ));
        let mut headers = self.common_headers(token, false);
        headers.push(("Content-Type", "application/x-ndjson".to_string()));
        if let Some(enc) = p.encoding.header() {
            headers.push(("Content-Encoding", enc.to_string()));
            headers.push((
                "x-snowflake-uncompressed-content-length",
                p.uncompressed_len.to_string(),
            ));
        }
        headers.push((
            "x-snowflake-min-append-timestamp-ms",
            p.min_append_ts_ms.to_string(),
        ));
        HttpRequest {
            op: Op::Append,
            method: Method::Post,
            url: format!(
                "{ingest_base}/v2/streaming/data{}/channels/{}/rows?{query}",
                self.pipe_path().trim_start_matches("/v2/streaming"),
                encode_path_segment(p.channel)
            ),
            headers,
            body: Some(body),
        }
    }

    /// `POST …/pipes/{pipe}:bulk-channel-status` with `{"channel_names":[…]}`.
    pub fn bulk_status(
        &self,
        ingest_base: &str,
        token: &Secret,
        channels: &[&str],
        meta: RequestMeta,
    ) -> HttpRequest {
        let mut headers = self.common_headers(token, false);
        headers.push(("Content-Type", "application/json".to_string()));
        let body = serde_json::json!({ "channel_names": channels }).to_string();
        HttpRequest {
            op: Op::ChannelStatus,
            method: Method::Post,
            url: format!(
                "{ingest_base}{}:bulk-channel-status?{}",
                self.pipe_path(),
                meta.query()
            ),
            headers,
            body: Some(body.into_bytes()),
        }
    }

    /// `DELETE …/channels/{channel}`, no body and no `Content-Type` (as the official client).
    pub fn drop_channel(
        &self,
        ingest_base: &str,
        token: &Secret,
        channel: &str,
        meta: RequestMeta,
    ) -> HttpRequest {
        HttpRequest {
            op: Op::DropChannel,
            method: Method::Delete,
            url: format!(
                "{ingest_base}{}/channels/{}?{}",
                self.pipe_path(),
                encode_path_segment(channel),
                meta.query()
            ),
            headers: self.common_headers(token, false),
            body: None,
        }
    }
}

/// A response body could not be understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtoError(pub String);

impl fmt::Display for ProtoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn json_err(what: &str, e: serde_json::Error) -> ProtoError {
    // serde's messages quote at most a short fragment; keep them for diagnosis.
    ProtoError(format!("{what}: {}", sanitize(&e.to_string(), 200)))
}

/// Parses the hostname answer: plain text (what production sends) or `{"hostname": …}` (the docs),
/// then applies `_`→`-` (see two hosts). The host must be bare (no scheme, port or path).
pub fn parse_hostname(body: &[u8]) -> Result<String, ProtoError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| ProtoError("hostname answer is not UTF-8".into()))?
        .trim();
    let host = if text.starts_with('{') {
        #[derive(Deserialize)]
        struct H {
            hostname: String,
        }
        serde_json::from_str::<H>(text)
            .map_err(|e| json_err("hostname answer", e))?
            .hostname
    } else {
        text.to_string()
    };
    let host = host.trim();
    let valid = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        && !host.starts_with(['.', '-'])
        && !host.ends_with('-');
    if !valid {
        return Err(ProtoError(format!(
            "hostname answer {:?} is not a bare host name",
            sanitize(host, 80)
        )));
    }
    Ok(host.replace('_', "-"))
}

/// A channel's status as the official client deserialises it (docs). Unknown fields are ignored.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ChannelStatus {
    /// Database.
    pub database_name: String,
    /// Schema.
    pub schema_name: String,
    /// Pipe.
    pub pipe_name: String,
    /// Channel.
    pub channel_name: String,
    /// `SUCCESS` when healthy.
    pub channel_status_code: String,
    /// The durable-progress signal: the offset token of the last committed row.
    #[serde(default)]
    pub last_committed_offset_token: Option<String>,
    /// Channel creation, epoch ms.
    pub created_on_ms: i64,
    /// Rows inserted (cumulative).
    pub rows_inserted: u64,
    /// Rows parsed (cumulative).
    pub rows_parsed: u64,
    /// Rows rejected by the pipe or the table (cumulative, survives reopen).
    pub rows_error_count: u64,
    /// Offset token bound of the last error.
    #[serde(default)]
    pub last_error_offset_upper_bound: Option<String>,
    /// Last error message.
    #[serde(default)]
    pub last_error_message: Option<String>,
    /// Last error time, epoch ms.
    #[serde(default)]
    pub last_error_timestamp_ms: Option<i64>,
    /// Server-side processing latency.
    #[serde(default)]
    pub snowflake_avg_processing_latency_ms: Option<f64>,
}

impl ChannelStatus {
    /// `channel_status_code == "SUCCESS"`.
    pub fn is_success(&self) -> bool {
        self.channel_status_code == "SUCCESS"
    }

    /// The committed offset token as the agent's decimal sequence number (`None` when the channel
    /// has committed nothing). A non-numeric token is an error: the agent only ever sends decimals.
    pub fn committed_seq(&self) -> Result<Option<u64>, ProtoError> {
        match self.last_committed_offset_token.as_deref() {
            None => Ok(None),
            Some(t) => t.trim().parse::<u64>().map(Some).map_err(|_| {
                ProtoError(format!(
                    "last_committed_offset_token {:?} is not a decimal sequence number",
                    sanitize(t, 40)
                ))
            }),
        }
    }
}

/// A successful open (`docs/snowpipe-wire.md`).
#[derive(Debug, Clone, PartialEq)]
pub struct OpenChannel {
    /// The first continuation token of this channel generation. Not a secret, but opaque.
    pub continuation_token: String,
    /// The channel's status, including `last_committed_offset_token`.
    pub status: ChannelStatus,
}

/// Parses a 200 answer to open channel.
pub fn parse_open_channel(body: &[u8]) -> Result<OpenChannel, ProtoError> {
    #[derive(Deserialize)]
    struct R {
        next_continuation_token: String,
        channel_status: ChannelStatus,
    }
    let r: R = serde_json::from_slice(body).map_err(|e| json_err("open channel answer", e))?;
    check_token(&r.next_continuation_token)?;
    Ok(OpenChannel {
        continuation_token: r.next_continuation_token,
        status: r.channel_status,
    })
}

/// Parses a 200 answer to append: the next continuation token.
pub fn parse_append(body: &[u8]) -> Result<String, ProtoError> {
    #[derive(Deserialize)]
    struct R {
        next_continuation_token: String,
    }
    let r: R = serde_json::from_slice(body).map_err(|e| json_err("append answer", e))?;
    check_token(&r.next_continuation_token)?;
    Ok(r.next_continuation_token)
}

fn check_token(t: &str) -> Result<(), ProtoError> {
    if t.is_empty() || t.len() > 4096 {
        return Err(ProtoError(
            "next_continuation_token is empty or absurdly long".into(),
        ));
    }
    Ok(())
}

/// Parses a 200 answer to bulk status. Channels absent from the map are unknown to Snowflake.
pub fn parse_bulk_status(body: &[u8]) -> Result<HashMap<String, ChannelStatus>, ProtoError> {
    #[derive(Deserialize)]
    struct R {
        channel_statuses: HashMap<String, ChannelStatus>,
    }
    let r: R = serde_json::from_slice(body).map_err(|e| json_err("channel status answer", e))?;
    Ok(r.channel_statuses)
}

/// A Snowflake error body: `{"code": …, "message": …}` or `{"error_code": …, …}` (docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The error code (string or number in the body, kept as text).
    pub code: String,
    /// The message (may be empty).
    pub message: String,
}

/// Extracts a Snowflake error code from a body; `None` for empty, non-JSON or code-less bodies
/// (which is what a load balancer's 404 looks like).
pub fn parse_error_body(body: &[u8]) -> Option<ApiError> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let obj = v.as_object()?;
    let code = ["code", "error_code"]
        .iter()
        .find_map(|k| match obj.get(*k) {
            Some(serde_json::Value::String(s)) if !s.trim().is_empty() => {
                Some(s.trim().to_string())
            }
            Some(serde_json::Value::Number(n)) => Some(n.to_string()),
            _ => None,
        })?;
    let message = obj
        .get("message")
        .and_then(|m| m.as_str())
        .unwrap_or_default();
    Some(ApiError {
        code: sanitize(&code, 100),
        message: sanitize(message, 300),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn wire() -> Wire {
        Wire {
            control_base: "https://myorg-acct.snowflakecomputing.com:443".into(),
            database: "DB1".into(),
            schema: "SCH1".into(),
            pipe: "Badge_Swipes-STREAMING".into(),
            user_agent: "badge-agent/0.1.0 (linux x86_64) Rust".into(),
        }
    }

    const INGEST: &str = "https://my-acct.us-west-2.ingest.example.invalid:443";
    const RID: &str = "67e55044-10b1-426f-9247-bb680e5fe0c8";

    fn meta(n: u32) -> RequestMeta {
        RequestMeta {
            request_id: Uuid::parse_str(RID).unwrap(),
            retry_count: n,
        }
    }

    fn tok() -> Secret {
        Secret::new("tok.en.sig")
    }

    fn assert_common(r: &HttpRequest, ty: &str) {
        assert_eq!(r.header("authorization"), Some("Bearer tok.en.sig"));
        assert_eq!(r.header("X-Snowflake-Authorization-Token-Type"), Some(ty));
        assert_eq!(r.header("accept"), Some("application/json"));
        assert_eq!(r.header("accept-charset"), Some("UTF-8"));
        assert!(r.header("user-agent").unwrap().starts_with("badge-agent/"));
        let dbg = format!("{r:?}");
        assert!(!dbg.contains("tok.en.sig"), "{dbg}");
    }

    #[test]
    fn percent_encoding() {
        assert_eq!(encode_path_segment("gw-01/rfid A"), "gw-01%2Frfid%20A");
        assert_eq!(
            encode_path_segment("Badge_Swipes-STREAMING"),
            "Badge_Swipes-STREAMING"
        );
        assert_eq!(encode_path_segment("a.b~c_d-e"), "a.b~c_d-e");
        assert_eq!(encode_path_segment("x?y#z%&=+"), "x%3Fy%23z%25%26%3D%2B");
        assert_eq!(encode_path_segment("é"), "%C3%A9");
        assert_eq!(encode_path_segment(""), "");
        assert_eq!(encode_path_segment(".."), "..");
    }

    #[test]
    fn hostname_request() {
        let r = wire().hostname(&tok(), meta(0));
        assert_eq!(r.method, Method::Get);
        assert_eq!(
            r.url,
            format!("https://myorg-acct.snowflakecomputing.com:443/v2/streaming/hostname?requestId={RID}&retryCount=0")
        );
        assert_common(&r, "KEYPAIR_JWT");
        assert!(r.body.is_none() && r.header("content-type").is_none());
        assert_eq!(r.host(), "myorg-acct.snowflakecomputing.com");
    }

    #[test]
    fn token_request() {
        let r = wire().token(&tok(), "my-acct.us-west-2.ingest.example.invalid", meta(1));
        assert_eq!(r.method, Method::Post);
        assert_eq!(
            r.url,
            format!("https://myorg-acct.snowflakecomputing.com:443/oauth/token?requestId={RID}&retryCount=1")
        );
        assert_common(&r, "KEYPAIR_JWT");
        assert_eq!(
            r.header("content-type"),
            Some("application/x-www-form-urlencoded")
        );
        assert_eq!(
            String::from_utf8(r.body.unwrap()).unwrap(),
            "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&scope=my-acct.us-west-2.ingest.example.invalid"
        );
    }

    #[test]
    fn open_channel_request() {
        let r = wire().open_channel(INGEST, &tok(), "gw-01/rfid A", true, meta(2));
        assert_eq!(r.method, Method::Put);
        assert_eq!(
            r.url,
            format!("{INGEST}/v2/streaming/databases/DB1/schemas/SCH1/pipes/Badge_Swipes-STREAMING/channels/gw-01%2Frfid%20A?requestId={RID}&retryCount=2")
        );
        assert_common(&r, "OAUTH");
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(
            r.body.as_deref(),
            Some(br#"{"fail_on_uncommitted_rows":true}"#.as_slice())
        );
        let r = wire().open_channel(INGEST, &tok(), "c", false, meta(3));
        assert_eq!(
            r.body.as_deref(),
            Some(br#"{"fail_on_uncommitted_rows":false}"#.as_slice())
        );
    }

    #[test]
    fn append_request() {
        let p = AppendParams {
            channel: "gw01",
            continuation_token: "1_0",
            start_offset_token: Some("1"),
            end_offset_token: Some("3"),
            encoding: ContentEncoding::Zstd,
            uncompressed_len: 1234,
            min_append_ts_ms: 1_795_318_549_592,
        };
        let r = wire().append(INGEST, &tok(), &p, b"zz".to_vec(), meta(0));
        assert_eq!(r.method, Method::Post);
        assert_eq!(
            r.url,
            format!("{INGEST}/v2/streaming/data/databases/DB1/schemas/SCH1/pipes/Badge_Swipes-STREAMING/channels/gw01/rows?startOffsetToken=1&endOffsetToken=3&continuationToken=1_0&requestId={RID}&retryCount=0")
        );
        assert_common(&r, "OAUTH");
        assert_eq!(r.header("content-type"), Some("application/x-ndjson"));
        assert_eq!(r.header("content-encoding"), Some("zstd"));
        assert_eq!(
            r.header("x-snowflake-uncompressed-content-length"),
            Some("1234")
        );
        assert_eq!(
            r.header("x-snowflake-min-append-timestamp-ms"),
            Some("1795318549592")
        );
        assert_eq!(r.body.as_deref(), Some(b"zz".as_slice()));

        // Identity: no encoding headers; opaque token encoded; offsets omitted when absent.
        let p = AppendParams {
            continuation_token: "a/b c",
            start_offset_token: None,
            end_offset_token: None,
            encoding: ContentEncoding::Identity,
            ..p
        };
        let r = wire().append(INGEST, &tok(), &p, b"{}\n".to_vec(), meta(4));
        assert!(r.url.ends_with(&format!(
            "/rows?continuationToken=a%2Fb%20c&requestId={RID}&retryCount=4"
        )));
        assert!(r.header("content-encoding").is_none());
        assert!(r
            .header("x-snowflake-uncompressed-content-length")
            .is_none());
        assert!(r.header("x-snowflake-min-append-timestamp-ms").is_some());
        let gz = AppendParams {
            encoding: ContentEncoding::Gzip,
            ..p
        };
        let r = wire().append(INGEST, &tok(), &gz, vec![], meta(0));
        assert_eq!(r.header("content-encoding"), Some("gzip"));
    }

    #[test]
    fn bulk_status_and_drop_requests() {
        let r = wire().bulk_status(INGEST, &tok(), &["ch1", "no\"chan"], meta(0));
        assert_eq!(r.method, Method::Post);
        assert_eq!(
            r.url,
            format!("{INGEST}/v2/streaming/databases/DB1/schemas/SCH1/pipes/Badge_Swipes-STREAMING:bulk-channel-status?requestId={RID}&retryCount=0")
        );
        assert_common(&r, "OAUTH");
        assert_eq!(r.header("content-type"), Some("application/json"));
        let body: serde_json::Value = serde_json::from_slice(r.body.as_ref().unwrap()).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"channel_names": ["ch1", "no\"chan"]})
        );

        let r = wire().drop_channel(INGEST, &tok(), "ch 1", meta(0));
        assert_eq!(r.method, Method::Delete);
        assert_eq!(
            r.url,
            format!("{INGEST}/v2/streaming/databases/DB1/schemas/SCH1/pipes/Badge_Swipes-STREAMING/channels/ch%201?requestId={RID}&retryCount=0")
        );
        assert_common(&r, "OAUTH");
        assert!(r.body.is_none() && r.header("content-type").is_none());
    }

    #[test]
    fn request_meta_retry_keeps_id() {
        let m = RequestMeta::new();
        let r = m.retry().retry();
        assert_eq!(r.request_id, m.request_id);
        assert_eq!(r.retry_count, 2);
        assert_ne!(RequestMeta::new().request_id, m.request_id);
    }

    #[test]
    fn hostname_parsing() {
        assert_eq!(parse_hostname(b"127.0.0.1").unwrap(), "127.0.0.1");
        assert_eq!(
            parse_hostname(b"my_org-my_acct.us-west-2.ingest.example.invalid\n").unwrap(),
            "my-org-my-acct.us-west-2.ingest.example.invalid"
        );
        assert_eq!(
            parse_hostname(br#"{"hostname": "my_acct.ingest.example.invalid"}"#).unwrap(),
            "my-acct.ingest.example.invalid"
        );
        for bad in [
            b"".as_slice(),
            b"   ",
            b"127.0.0.1:18443",
            b"https://x.y.z",
            b"a/b",
            b"{\"hostname\": 5}",
            b"{\"host\": \"x\"}",
            b"\"127.0.0.1\"",
            b"\xff",
            b"<html>502 Bad Gateway</html>",
        ] {
            assert!(parse_hostname(bad).is_err(), "{bad:?}");
        }
        assert!(parse_hostname("a".repeat(300).as_bytes()).is_err());
    }

    const STATUS: &str = r#"{
        "database_name": "DB1", "schema_name": "SCH1", "pipe_name": "PIPE1", "channel_name": "ch1",
        "channel_status_code": "SUCCESS",
        "last_committed_offset_token": "42",
        "created_on_ms": 1795318549592,
        "rows_inserted": 3, "rows_parsed": 3, "rows_error_count": 0,
        "last_error_offset_upper_bound": null, "last_error_message": null,
        "last_error_timestamp_ms": null,
        "snowflake_avg_processing_latency_ms": 5,
        "some_future_field": {"x": 1}
    }"#;

    #[test]
    fn open_channel_parsing() {
        let body = format!(r#"{{"next_continuation_token": "1_0", "channel_status": {STATUS}}}"#);
        let o = parse_open_channel(body.as_bytes()).unwrap();
        assert_eq!(o.continuation_token, "1_0");
        assert!(o.status.is_success());
        assert_eq!(o.status.committed_seq().unwrap(), Some(42));
        assert_eq!(o.status.rows_inserted, 3);
        assert_eq!(o.status.snowflake_avg_processing_latency_ms, Some(5.0));
        // A fresh channel: null committed token, optional fields absent.
        let fresh = r#"{"next_continuation_token":"t","channel_status":{"database_name":"D","schema_name":"S",
            "pipe_name":"P","channel_name":"c","channel_status_code":"SUCCESS","created_on_ms":1,
            "rows_inserted":0,"rows_parsed":0,"rows_error_count":0}}"#;
        let o = parse_open_channel(fresh.as_bytes()).unwrap();
        assert_eq!(o.status.committed_seq().unwrap(), None);
        assert_eq!(o.status.last_error_timestamp_ms, None);
    }

    #[test]
    fn status_parsing_hostile_bodies() {
        let missing_errors = STATUS.replace("\"rows_error_count\": 0,", "");
        let mut deep = "[".repeat(10_000);
        deep.push_str(&"]".repeat(10_000));
        let bad_bodies: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"null".to_vec(),
            b"[]".to_vec(),
            b"{}".to_vec(),
            b"\xff\xfe".to_vec(),
            b"<html>oops</html>".to_vec(),
            br#"{"channel_statuses": []}"#.to_vec(),
            br#"{"channel_statuses": {"c": 5}}"#.to_vec(),
            format!(r#"{{"channel_statuses": {{"c": {missing_errors}}}}}"#).into_bytes(),
            format!(
                r#"{{"channel_statuses": {{"c": {}}}}}"#,
                STATUS.replace("\"rows_inserted\": 3", "\"rows_inserted\": -3")
            )
            .into_bytes(),
            format!(
                r#"{{"channel_statuses": {{"c": {}}}}}"#,
                STATUS.replace("\"42\"", "42")
            )
            .into_bytes(),
            deep.clone().into_bytes(),
            format!(r#"{{"channel_statuses": {{"c": {STATUS}"#).into_bytes(),
        ];
        for b in &bad_bodies {
            assert!(
                parse_bulk_status(b).is_err(),
                "{}",
                String::from_utf8_lossy(b)
            );
            assert!(parse_open_channel(b).is_err());
            assert!(parse_append(b).is_err());
        }
        assert!(parse_open_channel(
            format!(r#"{{"next_continuation_token": "", "channel_status": {STATUS}}}"#).as_bytes()
        )
        .is_err());
        assert!(parse_append(br#"{"next_continuation_token": null}"#).is_err());
        assert!(parse_append(br#"{"message":"OK"}"#).is_err());
        assert_eq!(
            parse_append(br#"{"next_continuation_token": "1_1"}"#).unwrap(),
            "1_1"
        );

        // Valid bulk answers; missing channel → absent.
        let m =
            parse_bulk_status(format!(r#"{{"channel_statuses": {{"ch1": {STATUS}}}}}"#).as_bytes())
                .unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(m["ch1"].channel_name, "ch1");
        assert!(parse_bulk_status(br#"{"channel_statuses": {}}"#)
            .unwrap()
            .is_empty());

        // Non-numeric committed token is a protocol error, not a panic.
        let odd = STATUS.replace("\"42\"", "\"messages_1.log:20\"");
        let m = parse_bulk_status(format!(r#"{{"channel_statuses": {{"c": {odd}}}}}"#).as_bytes())
            .unwrap();
        assert!(m["c"].committed_seq().is_err());
        let active = STATUS.replace("SUCCESS", "ACTIVE");
        let m =
            parse_bulk_status(format!(r#"{{"channel_statuses": {{"c": {active}}}}}"#).as_bytes())
                .unwrap();
        assert!(!m["c"].is_success());
    }

    #[test]
    fn error_body_parsing() {
        assert_eq!(
            parse_error_body(br#"{"code":"STALE_CONTINUATION_TOKEN_SEQUENCER","message":"Channel sequencer in the continuation token is stale. Please reopen the channel"}"#),
            Some(ApiError {
                code: "STALE_CONTINUATION_TOKEN_SEQUENCER".into(),
                message: "Channel sequencer in the continuation token is stale. Please reopen the channel".into()
            })
        );
        assert_eq!(
            parse_error_body(br#"{"error_code":"ERR_X"}"#).unwrap().code,
            "ERR_X"
        );
        assert_eq!(
            parse_error_body(br#"{"code":390144,"message":"JWT token is invalid."}"#)
                .unwrap()
                .code,
            "390144"
        );
        for none in [
            b"".as_slice(),
            b"Not Found",
            b"<html>404</html>",
            b"{}",
            b"{\"message\":\"x\"}",
            b"{\"code\":\"\"}",
            b"[1]",
        ] {
            assert_eq!(parse_error_body(none), None, "{none:?}");
        }
    }

    #[test]
    fn url_host_split() {
        assert_eq!(
            split_url_host("https://a.b.c:443/x?y"),
            ("a.b.c", Some(443))
        );
        assert_eq!(
            split_url_host("https://127.0.0.1:18443"),
            ("127.0.0.1", Some(18443))
        );
        assert_eq!(split_url_host("https://[::1]:8443/p"), ("::1", Some(8443)));
        assert_eq!(split_url_host("https://a.b.c/p"), ("a.b.c", None));
    }
}
