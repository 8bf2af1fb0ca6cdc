//! The blocking client the drain thread calls: ties key-pair auth, request building, retries and
//! the transport together.
//!
//! One [`SnowpipeClient`] talks to one pipe. It discovers the ingest host, exchanges the scoped
//! token (cached, refreshed before `exp` and after a 401), and offers the four channel calls.
//! Each call retries on its own (same `requestId`, `retryCount+1`, same continuation token) within
//! the configured [`RetryPolicy`], then returns [`SnowpipeError::Unavailable`] so that the drain can
//! back off while the gateway is offline.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::auth::{load_private_key, parse_scoped_token, JwtCache, KeyPair, ScopedToken};
use super::batch::{first_batch, split_into_batches, Batch, BatchLimits, MAX_REQUEST_BYTES};
use super::error::SnowpipeError;
use super::protocol::{
    parse_append, parse_bulk_status, parse_hostname, parse_open_channel, AppendParams,
    ChannelStatus, ContentEncoding, HttpRequest, Op, OpenChannel, RequestMeta, Wire,
};
use super::redact::{sanitize, Secret};
use super::retry::{
    classify, CallRetry, Clock, GiveUp, Next, RateLimiter, RetryPolicy, StopSignal, SystemClock,
    TransportError,
};
use super::transport::{
    load_roots, proxy_from, redact_proxy, HttpResponse, HttpTransport, NoProxy, Timeouts,
    UreqTransport,
};

/// Requests per second allowed per channel (`docs/snowpipe-wire.md`, limits).
pub const MAX_REQUESTS_PER_SEC_PER_CHANNEL: usize = 10;
/// Channel names per bulk-status request (the official client's chunk size).
pub const STATUS_CHUNK: usize = 100;

/// Everything the client needs. Build it from the agent's `[snowflake]` section with
/// [`ClientConfig::from_snowflake_config`], or directly (tests, the emulator demo).
/// `Debug` redacts proxy credentials.
#[derive(Clone)]
pub struct ClientConfig {
    /// Account URL: `https://myorg-acct.snowflakecomputing.com` or `https://127.0.0.1:18443`.
    /// HTTPS only; the port (default 443) is reused for the ingest host.
    pub account_url: String,
    /// Account identifier as configured (normalised for the JWT, `docs/snowpipe-wire.md`).
    pub account: String,
    /// Service user (upper-cased in the JWT).
    pub user: String,
    /// Role sent as `scp=session:role:<ROLE>`; the user's default role when `None`.
    pub role: Option<String>,
    /// PKCS#8 PEM private key, mode 0600 or stricter.
    pub private_key_path: PathBuf,
    /// Database of the pipe.
    pub database: String,
    /// Schema of the pipe.
    pub schema: String,
    /// Pipe (or the default `<TABLE>-STREAMING` pipe).
    pub pipe: String,
    /// Extra PEM CA bundle trusted in addition to the system roots.
    pub extra_ca_file: Option<PathBuf>,
    /// Proxy URL; overrides `HTTPS_PROXY`. `NO_PROXY` applies either way.
    pub proxy: Option<String>,
    /// Connect and overall timeouts of every request.
    pub timeouts: Timeouts,
    /// Retry limits per call.
    pub retry: RetryPolicy,
    /// Body encoding of appends (zstd by default, like the official client); the request
    /// limits follow from it ([`BatchLimits::for_encoding`]).
    pub compression: ContentEncoding,
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("account_url", &self.account_url)
            .field("account", &self.account)
            .field("user", &self.user)
            .field("role", &self.role)
            .field("private_key_path", &self.private_key_path)
            .field("database", &self.database)
            .field("schema", &self.schema)
            .field("pipe", &self.pipe)
            .field("extra_ca_file", &self.extra_ca_file)
            .field("proxy", &self.proxy.as_deref().map(redact_proxy))
            .field("timeouts", &self.timeouts)
            .field("retry", &self.retry)
            .field("compression", &self.compression)
            .finish()
    }
}

impl ClientConfig {
    /// A config with default timeouts, retries, compression and limits.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        account_url: impl Into<String>,
        account: impl Into<String>,
        user: impl Into<String>,
        role: Option<String>,
        private_key_path: impl Into<PathBuf>,
        database: impl Into<String>,
        schema: impl Into<String>,
        pipe: impl Into<String>,
    ) -> Self {
        ClientConfig {
            account_url: account_url.into(),
            account: account.into(),
            user: user.into(),
            role,
            private_key_path: private_key_path.into(),
            database: database.into(),
            schema: schema.into(),
            pipe: pipe.into(),
            extra_ca_file: None,
            proxy: None,
            timeouts: Timeouts::default(),
            retry: RetryPolicy::default(),
            compression: ContentEncoding::Zstd,
        }
    }

    /// From the agent's `[snowflake]` configuration section.
    pub fn from_snowflake_config(c: &crate::config::SnowflakeConfig) -> Self {
        let mut cfg = ClientConfig::new(
            c.account_url(),
            c.account.clone(),
            c.user.clone(),
            c.role.clone(),
            c.private_key_file.clone(),
            c.database.clone(),
            c.schema.clone(),
            c.pipe.clone(),
        );
        cfg.extra_ca_file = c.extra_ca_file.clone();
        cfg.proxy = c.proxy.clone();
        cfg.timeouts.overall = Duration::from_secs(c.request_timeout_secs.max(1));
        cfg.timeouts.connect = cfg.timeouts.connect.min(cfg.timeouts.overall);
        cfg.compression = c.compression;
        cfg
    }
}

/// `https://host:port` of the account URL, refusing anything but HTTPS.
pub fn parse_account_url(url: &str) -> Result<(String, u16), SnowpipeError> {
    let bad = |m: &str| SnowpipeError::Config {
        message: format!("account URL {:?}: {m}", sanitize(url, 120)),
    };
    let u = url.trim().trim_end_matches('/');
    let rest = match u.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("https") => rest,
        Some(_) => return Err(bad("only https:// is supported (TLS is always verified)")),
        None => u,
    };
    if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ']) {
        return Err(bad(
            "expected https://<host>[:port] without path, user or query",
        ));
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| bad("unclosed IPv6 bracket"))?;
        (format!("[{h}]"), after.strip_prefix(':'))
    } else {
        match rest.split_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (rest.to_string(), None),
        }
    };
    if host.is_empty() || host == "[]" {
        return Err(bad("no host"));
    }
    let port = match port {
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad("invalid port"))?,
        None => 443,
    };
    Ok((host, port))
}

/// One HTTP attempt, as reported to a [`RequestObserver`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestEvent {
    /// The operation.
    pub op: Op,
    /// HTTP status, `None` for a transport failure.
    pub status: Option<u16>,
    /// `retryCount` of the attempt.
    pub retry_count: u32,
    /// Time the attempt took.
    pub elapsed: Duration,
}

/// Receives one event per HTTP attempt (wire this to metrics). Closures implement it.
pub trait RequestObserver: Send + Sync {
    /// Called after every attempt.
    fn on_request(&self, event: &RequestEvent);
}

impl<F: Fn(&RequestEvent) + Send + Sync> RequestObserver for F {
    fn on_request(&self, event: &RequestEvent) {
        self(event)
    }
}

/// What the client knows about a channel it opened: the only continuation token it will accept.
#[derive(Debug, Clone)]
struct ChannelState {
    token: String,
    invalid: bool,
}

#[derive(Debug, Clone)]
struct Ingest {
    host: String,
    base: String,
}

/// The Snowpipe Streaming v2 client for one pipe. Blocking; use it from one thread.
pub struct SnowpipeClient {
    cfg: ClientConfig,
    wire: Wire,
    port: u16,
    keys: KeyPair,
    jwt: JwtCache,
    ingest: Option<Ingest>,
    scoped: Option<ScopedToken>,
    channels: HashMap<String, ChannelState>,
    limiters: HashMap<String, RateLimiter>,
    transport: Arc<dyn HttpTransport>,
    clock: Arc<dyn Clock>,
    observer: Option<Arc<dyn RequestObserver>>,
    stop: StopSignal,
}

impl std::fmt::Debug for SnowpipeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnowpipeClient")
            .field("account_url", &self.cfg.account_url)
            .field("pipe", &self.wire.pipe)
            .field("fingerprint", &self.keys.fingerprint())
            .field("ingest_host", &self.ingest.as_ref().map(|i| &i.host))
            .field("scoped_token", &self.scoped.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

/// The `User-Agent` of every request, in the form Snowflake asks clients to send:
/// `<product>/<version> (<platform>) <language>/<language version>`, e.g.
/// `badge-agent/0.1.0 (linux aarch64) Rust/1.88.0`.
pub fn user_agent() -> String {
    format!(
        "badge-agent/{} ({} {}) Rust/{}",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::OS,
        std::env::consts::ARCH,
        env!("BADGE_AGENT_RUSTC_VERSION"),
    )
}

impl SnowpipeClient {
    /// Loads the key (refusing a group/other-accessible file), the trust roots and the proxy
    /// settings, and builds the HTTPS transport. Does not contact Snowflake yet.
    pub fn new(cfg: ClientConfig) -> Result<Self, SnowpipeError> {
        let keys = load_private_key(&cfg.private_key_path)?;
        let roots = load_roots(cfg.extra_ca_file.as_deref())?;
        let proxy = proxy_from(cfg.proxy.as_deref());
        let transport =
            UreqTransport::new(&roots, proxy.as_deref(), NoProxy::from_env(), cfg.timeouts)?;
        Self::with_parts(cfg, keys, Box::new(transport), Arc::new(SystemClock))
    }

    /// Builds a client from parts: a loaded key, any transport and clock (tests, emulator runs).
    pub fn with_parts(
        cfg: ClientConfig,
        keys: KeyPair,
        transport: Box<dyn HttpTransport>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, SnowpipeError> {
        let (host, port) = parse_account_url(&cfg.account_url)?;
        for (what, v) in [
            ("account", &cfg.account),
            ("user", &cfg.user),
            ("database", &cfg.database),
            ("schema", &cfg.schema),
            ("pipe", &cfg.pipe),
        ] {
            if v.trim().is_empty() {
                return Err(SnowpipeError::Config {
                    message: format!("`{what}` is empty"),
                });
            }
        }
        let wire = Wire {
            control_base: format!("https://{host}:{port}"),
            database: cfg.database.clone(),
            schema: cfg.schema.clone(),
            pipe: cfg.pipe.clone(),
            user_agent: user_agent(),
        };
        Ok(SnowpipeClient {
            cfg,
            wire,
            port,
            keys,
            jwt: JwtCache::default(),
            ingest: None,
            scoped: None,
            channels: HashMap::new(),
            limiters: HashMap::new(),
            transport: Arc::from(transport),
            clock,
            observer: None,
            stop: StopSignal::new(),
        })
    }

    /// Makes every wait of this client (back-off, 409 wait, rate limit) and every request in
    /// flight end promptly once `stop` is raised: the call then returns
    /// [`SnowpipeError::Stopped`]. An abandoned request is harmless: the drain resumes from the
    /// committed offset token.
    pub fn set_stop(&mut self, stop: StopSignal) {
        self.stop = stop;
    }

    /// Installs the per-request observer (metrics).
    pub fn set_observer(&mut self, observer: Arc<dyn RequestObserver>) {
        self.observer = Some(observer);
    }

    /// Our public-key fingerprint (`RSA_PUBLIC_KEY_FP` without `SHA256:`).
    pub fn fingerprint(&self) -> &str {
        self.keys.fingerprint()
    }

    /// The ingest host, once discovered.
    pub fn ingest_host(&self) -> Option<&str> {
        self.ingest.as_ref().map(|i| i.host.as_str())
    }

    /// Splits rows `(seq, JSON line)` into append batches with this client's compression and
    /// its limits, stamped with the current time.
    pub fn batches<'a, I>(&self, rows: I) -> Result<Vec<Batch>, SnowpipeError>
    where
        I: IntoIterator<Item = (u64, &'a [u8])>,
    {
        let enc = self.cfg.compression;
        split_into_batches(
            rows,
            enc,
            BatchLimits::for_encoding(enc),
            self.clock.unix_millis(),
        )
    }

    /// The first append request of `rows` (at least one row; see [`first_batch`]), with this
    /// client's compression, stamped with the current time.
    pub fn first_batch(&self, rows: &[(u64, &[u8])]) -> Result<Batch, SnowpipeError> {
        let enc = self.cfg.compression;
        first_batch(
            rows,
            enc,
            BatchLimits::for_encoding(enc),
            self.clock.unix_millis(),
        )
    }

    /// The continuation token the next append on `channel` must carry: the one from its last
    /// open or append, `None` when the channel is not open or was invalidated.
    pub fn continuation_token(&self, channel: &str) -> Option<&str> {
        self.channels
            .get(channel)
            .filter(|s| !s.invalid)
            .map(|s| s.token.as_str())
    }

    /// Opens (or reopens) `channel` with `fail_on_uncommitted_rows=true`; on 409 waits and retries
    /// (same requestId), then forces the open with `false` (in-flight data is discarded; it is
    /// still in the local buffer). Requires status `SUCCESS`. Every continuation token from before
    /// is stale from now on.
    pub fn open_channel(&mut self, channel: &str) -> Result<OpenChannel, SnowpipeError> {
        check_channel(channel)?;
        // Whatever happens next, the old token is dead on the server once the PUT lands.
        if let Some(s) = self.channels.get_mut(channel) {
            s.invalid = true;
        }
        let resp = self.call(
            Op::OpenChannel,
            Some(channel),
            |w, base, tok, meta, force| w.open_channel(base, tok, channel, !force, meta),
        )?;
        let open =
            parse_open_channel(&resp.body).map_err(|e| proto(Op::OpenChannel, resp.status, e.0))?;
        if !open.status.is_success() {
            return Err(SnowpipeError::ChannelUnhealthy {
                channel: channel.to_string(),
                status_code: sanitize(&open.status.channel_status_code, 60),
            });
        }
        self.channels.insert(
            channel.to_string(),
            ChannelState {
                token: open.continuation_token.clone(),
                invalid: false,
            },
        );
        Ok(open)
    }

    /// Appends `batch` to `channel` after `continuation_token` (the token from the last open or
    /// append of this client) and returns the next continuation token. Retries keep the requestId,
    /// the token and the body. After [`SnowpipeError::ChannelInvalid`] the token is refused by
    /// this client too: reopen the channel.
    pub fn append(
        &mut self,
        channel: &str,
        continuation_token: &str,
        batch: &Batch,
    ) -> Result<String, SnowpipeError> {
        let invalid = |code: &str, message: &str| SnowpipeError::ChannelInvalid {
            channel: channel.to_string(),
            status: 0,
            code: code.to_string(),
            message: message.to_string(),
        };
        if batch.body.len() > MAX_REQUEST_BYTES || batch.start_seq > batch.end_seq {
            // Sending it would only earn a 4xx, i.e. a reopen loop: refuse it here instead.
            return Err(SnowpipeError::Batch {
                message: format!(
                    "batch {}..={} is {} bytes on the wire (limit {MAX_REQUEST_BYTES}) or has its offsets reversed; split it with `batches()`",
                    batch.start_seq,
                    batch.end_seq,
                    batch.body.len()
                ),
            });
        }
        match self.channels.get(channel) {
            None => {
                return Err(invalid(
                    "CLIENT_CHANNEL_NOT_OPEN",
                    "open the channel before appending",
                ))
            }
            Some(s) if s.invalid => {
                return Err(invalid(
                    "CLIENT_CHANNEL_INVALIDATED",
                    "the channel was invalidated; reopen it",
                ))
            }
            Some(s) if s.token != continuation_token => {
                return Err(invalid(
                    "CLIENT_STALE_CONTINUATION_TOKEN",
                    "not the latest continuation token of this channel",
                ))
            }
            Some(_) => {}
        }
        let start = batch.start_offset_token();
        let end = batch.end_offset_token();
        let params = AppendParams {
            channel,
            continuation_token,
            start_offset_token: Some(&start),
            end_offset_token: Some(&end),
            encoding: batch.encoding,
            uncompressed_len: batch.uncompressed_len,
            min_append_ts_ms: batch.min_append_ts_ms,
        };
        let result = self.call(Op::Append, Some(channel), |w, base, tok, meta, _| {
            w.append(base, tok, &params, batch.body.clone(), meta)
        });
        let resp = match result {
            Ok(r) => r,
            Err(e) => {
                if e.is_channel_invalid() {
                    if let Some(s) = self.channels.get_mut(channel) {
                        s.invalid = true;
                    }
                }
                return Err(e);
            }
        };
        let next = parse_append(&resp.body).map_err(|e| proto(Op::Append, resp.status, e.0))?;
        if let Some(s) = self.channels.get_mut(channel) {
            s.token = next.clone();
        }
        Ok(next)
    }

    /// Bulk channel status. Every requested name is a key; `None` means Snowflake does not know
    /// the channel. Sends at most 100 names per request.
    pub fn channel_status(
        &mut self,
        names: &[&str],
    ) -> Result<HashMap<String, Option<ChannelStatus>>, SnowpipeError> {
        let mut out: HashMap<String, Option<ChannelStatus>> =
            names.iter().map(|n| (n.to_string(), None)).collect();
        for chunk in names.chunks(STATUS_CHUNK) {
            let resp = self.call(Op::ChannelStatus, None, |w, base, tok, meta, _| {
                w.bulk_status(base, tok, chunk, meta)
            })?;
            let mut map = parse_bulk_status(&resp.body)
                .map_err(|e| proto(Op::ChannelStatus, resp.status, e.0))?;
            for name in chunk {
                if let Some(st) = map.remove(*name) {
                    out.insert(name.to_string(), Some(st));
                }
            }
        }
        Ok(out)
    }

    /// Drops `channel` and its offset token on Snowflake (gateway retirement only: the resume point
    /// is lost). No body is sent.
    pub fn drop_channel(&mut self, channel: &str) -> Result<(), SnowpipeError> {
        check_channel(channel)?;
        self.call(Op::DropChannel, Some(channel), |w, base, tok, meta, _| {
            w.drop_channel(base, tok, channel, meta)
        })?;
        self.channels.remove(channel);
        Ok(())
    }

    fn now_secs(&self) -> u64 {
        self.clock.unix_secs()
    }

    fn current_jwt(&mut self) -> Result<Secret, SnowpipeError> {
        let now = self.now_secs();
        self.jwt.get(
            &self.keys,
            &self.cfg.account,
            &self.cfg.user,
            self.cfg.role.as_deref(),
            now,
        )
    }

    /// The ingest base URL and a valid scoped token, discovering/refreshing as needed.
    fn ingest_auth(&mut self) -> Result<(String, Secret), SnowpipeError> {
        if self.ingest.is_none() {
            let resp = self.call(Op::Hostname, None, |w, _, tok, meta, _| {
                w.hostname(tok, meta)
            })?;
            let host =
                parse_hostname(&resp.body).map_err(|e| proto(Op::Hostname, resp.status, e.0))?;
            tracing::info!(ingest_host = %host, "discovered the Snowpipe Streaming ingest host");
            self.ingest = Some(Ingest {
                base: format!("https://{host}:{}", self.port),
                host,
            });
            self.scoped = None;
        }
        let Some(ingest) = self.ingest.clone() else {
            return Err(proto(Op::Hostname, 0, "no ingest host".into()));
        };
        let now = self.now_secs();
        if let Some(t) = &self.scoped {
            if !t.needs_refresh(now) {
                return Ok((ingest.base, t.token.clone()));
            }
        }
        let host = ingest.host.clone();
        let resp = self.call(Op::Token, None, |w, _, tok, meta, _| {
            w.token(tok, &host, meta)
        })?;
        let now = self.now_secs();
        let token = parse_scoped_token(&resp.body, now).map_err(|m| {
            if m.contains("NTP") {
                SnowpipeError::Auth { message: m }
            } else {
                proto(Op::Token, resp.status, m)
            }
        })?;
        tracing::debug!(exp = token.exp, "obtained a scoped ingest token");
        let secret = token.token.clone();
        self.scoped = Some(token);
        Ok((ingest.base, secret))
    }

    fn rate_limit(&mut self, channel: &str) -> Result<(), SnowpipeError> {
        let limiter = self.limiters.entry(channel.to_string()).or_insert_with(|| {
            RateLimiter::new(MAX_REQUESTS_PER_SEC_PER_CHANNEL, Duration::from_secs(1))
        });
        loop {
            let wait = limiter.wait(self.clock.now());
            if wait.is_zero() {
                break;
            }
            if self.clock.sleep_or_stop(wait, &self.stop) {
                return Err(SnowpipeError::Stopped);
            }
        }
        limiter.record(self.clock.now());
        Ok(())
    }

    fn observe(&self, op: Op, status: Option<u16>, retry_count: u32, elapsed: Duration) {
        if let Some(o) = &self.observer {
            o.on_request(&RequestEvent {
                op,
                status,
                retry_count,
                elapsed,
            });
        }
    }

    /// Sends one logical call with retries. `build` gets the wire, the base URL, the bearer
    /// token, the request meta and whether the open must be forced (409 retries used up). The
    /// decisions are [`CallRetry`]'s; this shell does the I/O, the logging and the error text.
    fn call<F>(
        &mut self,
        op: Op,
        channel: Option<&str>,
        mut build: F,
    ) -> Result<HttpResponse, SnowpipeError>
    where
        F: FnMut(&Wire, &str, &Secret, RequestMeta, bool) -> HttpRequest,
    {
        let mut retry = CallRetry::new(self.cfg.retry.clone(), self.clock.now());
        let mut meta = RequestMeta::new();
        loop {
            if self.stop.is_stopped() {
                return Err(SnowpipeError::Stopped);
            }
            let (base, token) = if op.is_control() {
                (self.wire.control_base.clone(), self.current_jwt()?)
            } else {
                self.ingest_auth()?
            };
            if let Some(ch) = channel {
                self.rate_limit(ch)?;
            }
            let req = build(&self.wire, &base, &token, meta, retry.force_open());
            let host = req.host().to_string();
            let t0 = self.clock.now();
            let outcome = execute_unless_stopped(&self.transport, req, &self.stop)
                .ok_or(SnowpipeError::Stopped)?;
            let now = self.clock.now();
            let status = outcome.as_ref().map_or(0, |r| r.status);
            self.observe(
                op,
                outcome.as_ref().ok().map(|r| r.status),
                meta.retry_count,
                now.saturating_duration_since(t0),
            );
            let view = outcome
                .as_ref()
                .map(|r| (r.status, r.body.as_slice()))
                .map_err(Clone::clone);
            let disposition = classify(op, &view);
            let body = outcome.as_ref().map_or(&[][..], |r| r.body.as_slice());
            match retry.next(disposition, now, rand::random::<f64>()) {
                Next::Done => return outcome.map_err(|e| proto(op, 0, e.to_string())),
                Next::Resend {
                    delay,
                    refresh_auth,
                } => {
                    if refresh_auth {
                        tracing::info!(%op, "401: refreshing the token and resending");
                        if op.is_control() {
                            self.jwt.invalidate();
                        } else {
                            self.scoped = None;
                        }
                    } else if retry.force_open() && op == Op::OpenChannel && delay.is_zero() {
                        tracing::warn!(channel = channel.unwrap_or(""), "channel still has uncommitted data; forcing the reopen (fail_on_uncommitted_rows=false)");
                    } else {
                        let reason = match &outcome {
                            Ok(r) => format!("HTTP {}", r.status),
                            Err(e) => e.to_string(),
                        };
                        tracing::warn!(%op, attempt = retry.attempts(), reason = %reason, delay_ms = delay.as_millis() as u64, "retrying");
                    }
                    if !delay.is_zero() && self.clock.sleep_or_stop(delay, &self.stop) {
                        return Err(SnowpipeError::Stopped);
                    }
                }
                Next::GiveUp(why) => {
                    let dns = matches!(outcome, Err(TransportError::Dns(_)));
                    return Err(self.give_up(op, channel, &host, status, body, dns, why));
                }
            }
            meta = meta.retry();
        }
    }

    /// The operator-facing error for a call that gave up.
    #[allow(clippy::too_many_arguments)]
    fn give_up(
        &mut self,
        op: Op,
        channel: Option<&str>,
        host: &str,
        status: u16,
        body: &[u8],
        dns_failure: bool,
        why: GiveUp,
    ) -> SnowpipeError {
        match why {
            GiveUp::Unavailable {
                attempts,
                elapsed,
                last,
            } => {
                if dns_failure && !op.is_control() {
                    // The ingest host may have moved: rediscover it on the next call.
                    self.ingest = None;
                }
                let hint = if dns_failure {
                    format!("; host {host} not found: check the account URL, DNS and network connectivity")
                } else {
                    String::new()
                };
                SnowpipeError::Unavailable {
                    op,
                    attempts,
                    elapsed,
                    last,
                    hint,
                }
            }
            GiveUp::Auth => self.auth_error(op, status, body),
            GiveUp::Conflict => self.rejected(op, status, body),
            GiveUp::Misclassified404 => match (op, channel) {
                (Op::Append, Some(ch)) => SnowpipeError::ChannelInvalid {
                    channel: ch.to_string(),
                    status: 404,
                    code: "HTTP_404".into(),
                    message: "repeated 404 without a Snowflake error body".into(),
                },
                _ => self.rejected(op, status, body),
            },
            GiveUp::ChannelInvalid(e) => SnowpipeError::ChannelInvalid {
                channel: channel.unwrap_or_default().to_string(),
                status,
                code: e.code,
                message: e.message,
            },
            GiveUp::Fatal { .. } => match (op, status) {
                (Op::Hostname, 404) => SnowpipeError::WrongAccount {
                    message: format!("{host} answered 404 to GET /v2/streaming/hostname"),
                },
                (Op::Hostname | Op::Token, 400..=499) => self.auth_error(op, status, body),
                _ => self.rejected(op, status, body),
            },
            GiveUp::Tls(detail) => SnowpipeError::Tls {
                host: host.to_string(),
                detail,
            },
            GiveUp::Config(message) => SnowpipeError::Config { message },
        }
    }

    fn auth_error(&self, op: Op, status: u16, body: &[u8]) -> SnowpipeError {
        let api = super::protocol::parse_error_body(body);
        let said = api
            .as_ref()
            .map(|e| format!(" ({}: {})", e.code, e.message))
            .unwrap_or_default();
        let lower = said.to_ascii_lowercase();
        let clock = if ["iat", "exp", "issue", "expired", "not yet valid", "time"]
            .iter()
            .any(|w| lower.contains(w))
        {
            " The message points at the token times: check the system clock (NTP, `timedatectl`)."
        } else {
            " If the key is registered, check the system clock (NTP)."
        };
        let message = if op.is_control() {
            format!(
                "Snowflake rejected the key-pair JWT for user {} on account {} ({op}: HTTP {status}){said}. \
                 Check that `DESCRIBE USER {}` shows RSA_PUBLIC_KEY_FP = SHA256:{} (register it with \
                 `ALTER USER … SET RSA_PUBLIC_KEY='…'`, see `badge-agent keygen`), and that the account \
                 identifier is right.{clock}",
                super::auth::normalize_user(&self.cfg.user),
                super::auth::normalize_account(&self.cfg.account),
                super::auth::normalize_user(&self.cfg.user),
                self.keys.fingerprint(),
            )
        } else {
            format!(
                "the ingest host keeps rejecting the scoped token ({op}: HTTP {status}){said}; check the \
                 role's grants (OPERATE on the pipe) and the system clock (NTP)"
            )
        };
        SnowpipeError::Auth { message }
    }

    fn rejected(&self, op: Op, status: u16, body: &[u8]) -> SnowpipeError {
        let api = super::protocol::parse_error_body(body);
        let hint = match op {
            Op::OpenChannel | Op::ChannelStatus | Op::DropChannel => format!(
                "; check the database/schema/pipe names ({}.{}.{}) and that role {} has OPERATE and MONITOR on the pipe and INSERT on the table",
                self.cfg.database,
                self.cfg.schema,
                self.cfg.pipe,
                self.cfg.role.as_deref().unwrap_or("(the user's default role)")
            ),
            _ => String::new(),
        };
        SnowpipeError::Rejected {
            op,
            status,
            code: api.as_ref().map(|e| e.code.clone()),
            message: api
                .map(|e| e.message)
                .unwrap_or_else(|| sanitize(&String::from_utf8_lossy(body), 200)),
            hint,
        }
    }
}

/// Sends `req` on a helper thread and waits for the answer or for `stop`, whichever comes first
/// (`None`: stopped). A blocking request (slow connect, slow answer) cannot hold up a stop; the
/// abandoned thread ends by itself within the transport's timeouts.
fn execute_unless_stopped(
    transport: &Arc<dyn HttpTransport>,
    req: HttpRequest,
    stop: &StopSignal,
) -> Option<Result<HttpResponse, TransportError>> {
    use std::sync::mpsc::RecvTimeoutError;
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let worker = Arc::clone(transport);
    let spawned = std::thread::Builder::new()
        .name("snowpipe-http".into())
        .spawn(move || {
            let _ = tx.send(worker.execute(&req));
        });
    if let Err(err) = spawned {
        // Out of threads: a transport failure, retried with back-off like any other.
        return Some(Err(TransportError::Connect(format!(
            "cannot start a request thread: {err}"
        ))));
    }
    loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(outcome) => return Some(outcome),
            Err(RecvTimeoutError::Disconnected) => {
                return Some(Err(TransportError::Connect(
                    "the request thread ended without an answer".into(),
                )))
            }
            Err(RecvTimeoutError::Timeout) if stop.is_stopped() => return None,
            Err(RecvTimeoutError::Timeout) => {}
        }
    }
}

fn check_channel(channel: &str) -> Result<(), SnowpipeError> {
    if channel.is_empty() || channel.len() > 512 {
        return Err(SnowpipeError::Config {
            message: "channel name must be 1..=512 bytes".into(),
        });
    }
    Ok(())
}

fn proto(op: Op, status: u16, message: String) -> SnowpipeError {
    SnowpipeError::Protocol {
        op,
        status,
        message,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::snowpipe::protocol::Method;
    use crate::snowpipe::testing::*;
    use std::sync::Mutex;

    #[test]
    fn account_url_parsing() {
        assert_eq!(
            parse_account_url("https://a.b.c").unwrap(),
            ("a.b.c".into(), 443)
        );
        assert_eq!(
            parse_account_url("https://127.0.0.1:18443/").unwrap(),
            ("127.0.0.1".into(), 18443)
        );
        assert_eq!(
            parse_account_url("a.b.c:444").unwrap(),
            ("a.b.c".into(), 444)
        );
        assert_eq!(
            parse_account_url("HTTPS://[::1]:8443").unwrap(),
            ("[::1]".into(), 8443)
        );
        for bad in [
            "http://a.b.c",
            "ftp://a",
            "https://",
            "https://a.b.c/path",
            "https://u@a.b.c",
            "https://a:0",
            "https://a:99999",
            "https://a:x",
        ] {
            assert!(
                matches!(parse_account_url(bad), Err(SnowpipeError::Config { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn happy_path_sequence_hosts_and_headers() {
        let mut h = Harness::new();
        let open = h.client.open_channel("ch1").unwrap();
        assert_eq!(open.continuation_token, "open-token");
        assert_eq!(open.status.committed_seq().unwrap(), Some(5));
        let b = h.batch(6, 8);
        let next = h.client.append("ch1", "open-token", &b).unwrap();
        let st = h.client.channel_status(&["ch1", "nochan"]).unwrap();
        assert_eq!(st.len(), 2);
        assert_eq!(
            st["ch1"].as_ref().unwrap().committed_seq().unwrap(),
            Some(9)
        );
        assert!(st["nochan"].is_none());
        let next2 = h.client.append("ch1", &next, &h.batch(9, 9)).unwrap();
        assert_ne!(next, next2);
        h.client.drop_channel("ch1").unwrap();

        let log = h.log();
        let ops: Vec<Op> = log.iter().map(|r| r.op).collect();
        assert_eq!(
            ops,
            vec![
                Op::Hostname,
                Op::Token,
                Op::OpenChannel,
                Op::Append,
                Op::ChannelStatus,
                Op::Append,
                Op::DropChannel
            ]
        );
        let control = "https://myorg-my_acct.snowflakecomputing.com:8443";
        let ingest = "https://my-acct.us-west-2.ingest.example.invalid:8443";
        assert!(log[0]
            .url
            .starts_with(&format!("{control}/v2/streaming/hostname?requestId=")));
        assert!(log[1].url.starts_with(&format!("{control}/oauth/token?")));
        assert!(String::from_utf8(log[1].body.clone().unwrap())
            .unwrap()
            .ends_with("&scope=my-acct.us-west-2.ingest.example.invalid"));
        for r in &log[..2] {
            assert_eq!(
                r.header("X-Snowflake-Authorization-Token-Type"),
                Some("KEYPAIR_JWT")
            );
            let jwt = r
                .header("Authorization")
                .unwrap()
                .strip_prefix("Bearer ")
                .unwrap();
            let c: serde_json::Value =
                jsonwebtoken::dangerous::insecure_decode_claims(jwt).unwrap();
            assert_eq!(c["sub"], "MYORG-MY_ACCT.INGEST_USER");
            assert_eq!(c["scp"], "session:role:INGEST_ROLE");
            assert_eq!(c["iat"], 1_800_000_000u64);
        }
        for r in &log[2..] {
            assert!(
                r.url.starts_with(&format!("{ingest}/v2/streaming/")),
                "{}",
                r.url
            );
            assert_eq!(
                r.header("X-Snowflake-Authorization-Token-Type"),
                Some("OAUTH")
            );
            assert!(r.header("User-Agent").unwrap().starts_with("badge-agent/"));
            assert_eq!(query(&r.url, "retryCount").as_deref(), Some("0"));
        }
        let a = &log[3];
        assert!(a.url.contains(
            "/rows?startOffsetToken=6&endOffsetToken=8&continuationToken=open-token&requestId="
        ));
        assert_eq!(a.header("Content-Encoding"), Some("zstd"));
        assert_eq!(
            a.header("x-snowflake-uncompressed-content-length"),
            Some(b.uncompressed_len.to_string().as_str())
        );
        assert_eq!(
            a.header("x-snowflake-min-append-timestamp-ms"),
            Some("1800000000000")
        );
        assert_eq!(a.body.as_ref().unwrap(), &b.body);
        assert_eq!(
            query(&log[5].url, "continuationToken").as_deref(),
            Some(next.as_str())
        );
        assert_eq!(log[6].method, Method::Delete);
        // Distinct logical calls have distinct request ids.
        let ids: std::collections::HashSet<_> = log
            .iter()
            .map(|r| query(&r.url, "requestId").unwrap())
            .collect();
        assert_eq!(ids.len(), log.len());
        assert!(h.clock.sleeps().is_empty());
        assert!(!format!("{:?}", h.client).contains("Bearer"));
    }

    #[test]
    fn append_401_refreshes_token_and_resends_same_request() {
        let mut h = Harness::new();
        h.client.open_channel("ch1").unwrap();
        h.script(Op::Append, vec![st(401, "")]);
        let b = h.batch(1, 3);
        h.client.append("ch1", "open-token", &b).unwrap();
        let appends = h.log_of(Op::Append);
        assert_eq!(appends.len(), 2);
        assert_eq!(
            query(&appends[0].url, "requestId"),
            query(&appends[1].url, "requestId")
        );
        assert_eq!(query(&appends[0].url, "retryCount").as_deref(), Some("0"));
        assert_eq!(query(&appends[1].url, "retryCount").as_deref(), Some("1"));
        assert_eq!(
            query(&appends[1].url, "continuationToken").as_deref(),
            Some("open-token")
        );
        assert_eq!(appends[0].body, appends[1].body);
        assert_ne!(
            appends[0].header("Authorization"),
            appends[1].header("Authorization"),
            "new scoped token"
        );
        assert_eq!(h.log_of(Op::Token).len(), 2);
        assert_eq!(
            h.log_of(Op::Hostname).len(),
            1,
            "the ingest host is not rediscovered"
        );
        assert!(h.clock.sleeps().is_empty());
    }

    #[test]
    fn transient_failures_back_off_and_resend_same_request() {
        let mut h = Harness::new();
        h.client.open_channel("ch1").unwrap();
        h.script(
            Op::Append,
            vec![
                st(429, ""),
                st(503, "Service Unavailable"),
                Err(TransportError::Timeout("read".into())),
                st(404, ""),
                st(500, "{}"),
            ],
        );
        let next = h
            .client
            .append("ch1", "open-token", &h.batch(1, 2))
            .unwrap();
        assert!(next.starts_with("next-"));
        let appends = h.log_of(Op::Append);
        assert_eq!(appends.len(), 6);
        for (i, a) in appends.iter().enumerate() {
            assert_eq!(query(&a.url, "retryCount").unwrap(), i.to_string());
            assert_eq!(
                query(&a.url, "requestId"),
                query(&appends[0].url, "requestId")
            );
            assert_eq!(
                query(&a.url, "continuationToken").as_deref(),
                Some("open-token")
            );
        }
        let sleeps = h.clock.sleeps();
        assert_eq!(sleeps.len(), 5);
        for (i, s) in sleeps.iter().enumerate() {
            let base = 1u64 << i;
            assert!(
                *s >= Duration::from_millis(base * 500) && *s <= Duration::from_millis(base * 1500),
                "{i}: {s:?}"
            );
        }
    }

    #[test]
    fn retries_are_bounded_then_unavailable() {
        let mut h = Harness::with_policy(RetryPolicy {
            max_attempts: 4,
            ..RetryPolicy::default()
        });
        h.client.open_channel("ch1").unwrap();
        h.script(
            Op::Append,
            (0..10)
                .map(|_| Err(TransportError::Connect("refused".into())))
                .collect(),
        );
        let err = h
            .client
            .append("ch1", "open-token", &h.batch(1, 1))
            .unwrap_err();
        assert!(err.is_transient() && !err.is_channel_invalid(), "{err}");
        assert!(
            matches!(
                err,
                SnowpipeError::Unavailable {
                    attempts: 4,
                    op: Op::Append,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(h.log_of(Op::Append).len(), 4);
        // The channel stays usable with the same token once the network is back.
        h.fake.script.lock().unwrap().clear();
        h.client
            .append("ch1", "open-token", &h.batch(1, 1))
            .unwrap();

        // Elapsed bound as well.
        let mut h = Harness::with_policy(RetryPolicy {
            max_attempts: 100,
            max_elapsed: Duration::from_secs(10),
            ..RetryPolicy::default()
        });
        h.script(
            Op::Hostname,
            (0..100)
                .map(|_| Err(TransportError::Dns("x".into())))
                .collect(),
        );
        let err = h.client.open_channel("ch1").unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(
                err,
                SnowpipeError::Unavailable {
                    op: Op::Hostname,
                    ..
                }
            ),
            "{msg}"
        );
        assert!(msg.contains("check the account URL"), "{msg}");
        assert!(h.clock.sleeps().iter().sum::<Duration>() <= Duration::from_secs(10));
        assert!(h.log().len() < 10);
    }

    #[test]
    fn open_409_retries_then_forces() {
        let mut h = Harness::new();
        let conflict = r#"{"code":"ERR_CHANNEL_HAS_UNCOMMITTED_DATA","message":"in flight"}"#;
        h.script(
            Op::OpenChannel,
            vec![
                st(409, conflict),
                st(409, conflict),
                st(409, conflict),
                st(409, conflict),
            ],
        );
        h.client.open_channel("ch1").unwrap();
        let opens = h.log_of(Op::OpenChannel);
        assert_eq!(opens.len(), 5);
        for (i, o) in opens.iter().enumerate() {
            assert_eq!(query(&o.url, "retryCount").unwrap(), i.to_string());
            assert_eq!(
                query(&o.url, "requestId"),
                query(&opens[0].url, "requestId")
            );
            let want: &[u8] = if i < 4 {
                br#"{"fail_on_uncommitted_rows":true}"#
            } else {
                br#"{"fail_on_uncommitted_rows":false}"#
            };
            assert_eq!(o.body.as_deref(), Some(want), "{i}");
        }
        assert_eq!(h.clock.sleeps().len(), 3);
        // A 409 even on the forced open is surfaced.
        let mut h = Harness::new();
        h.script(Op::OpenChannel, (0..5).map(|_| st(409, conflict)).collect());
        let err = h.client.open_channel("ch1").unwrap_err();
        assert!(
            matches!(err, SnowpipeError::Rejected { status: 409, .. }),
            "{err}"
        );
    }

    #[test]
    fn channel_invalid_fences_the_old_token() {
        let mut h = Harness::new();
        h.client.open_channel("ch1").unwrap();
        let b = h.batch(1, 1);
        let t1 = h.client.append("ch1", "open-token", &b).unwrap();
        // Reusing an older token is refused locally.
        let err = h
            .client
            .append("ch1", "open-token", &h.batch(2, 2))
            .unwrap_err();
        assert!(err.is_channel_invalid(), "{err}");
        h.script(Op::Append, vec![st(400, r#"{"code":"STALE_CONTINUATION_TOKEN_SEQUENCER","message":"Please reopen the channel"}"#)]);
        let err = h.client.append("ch1", &t1, &h.batch(2, 2)).unwrap_err();
        match &err {
            SnowpipeError::ChannelInvalid {
                code,
                status,
                channel,
                ..
            } => {
                assert_eq!(
                    (code.as_str(), *status, channel.as_str()),
                    ("STALE_CONTINUATION_TOKEN_SEQUENCER", 400, "ch1")
                )
            }
            e => panic!("{e}"),
        }
        let sent = h.log_of(Op::Append).len();
        // The same (now stale) token is refused without a request.
        let err = h.client.append("ch1", &t1, &h.batch(2, 2)).unwrap_err();
        assert!(err.is_channel_invalid());
        assert_eq!(h.log_of(Op::Append).len(), sent);
        // Oversized or reversed batches are refused before sending.
        let mut big = h.batch(2, 2);
        big.body = vec![0; MAX_REQUEST_BYTES + 1];
        let e = h.client.append("ch1", &t1, &big).unwrap_err();
        assert!(matches!(e, SnowpipeError::Batch { .. }), "{e}");
        let mut rev = h.batch(2, 2);
        rev.start_seq = 3;
        assert!(matches!(
            h.client.append("ch1", &t1, &rev).unwrap_err(),
            SnowpipeError::Batch { .. }
        ));
        assert_eq!(h.log_of(Op::Append).len(), sent);
        // Not-opened channel.
        assert!(h
            .client
            .append("other", "x", &b)
            .unwrap_err()
            .is_channel_invalid());
        // Reopen gives a fresh token that works.
        let o = h.client.open_channel("ch1").unwrap();
        h.client
            .append("ch1", &o.continuation_token, &h.batch(2, 2))
            .unwrap();
        // 404 with a Snowflake code also invalidates.
        let mut h = Harness::new();
        h.client.open_channel("ch1").unwrap();
        h.script(
            Op::Append,
            vec![st(
                404,
                r#"{"code":"ERR_CHANNEL_DOES_NOT_EXIST_OR_NOT_AUTHORIZED","message":"gone"}"#,
            )],
        );
        assert!(h
            .client
            .append("ch1", "open-token", &h.batch(1, 1))
            .unwrap_err()
            .is_channel_invalid());
        // Repeated body-less 404s eventually invalidate too (after the misclassified retries).
        let mut h = Harness::new();
        h.client.open_channel("ch1").unwrap();
        h.script(Op::Append, (0..10).map(|_| st(404, "")).collect());
        assert!(h
            .client
            .append("ch1", "open-token", &h.batch(1, 1))
            .unwrap_err()
            .is_channel_invalid());
        assert_eq!(h.log_of(Op::Append).len(), 4);
    }

    #[test]
    fn operator_errors() {
        // Wrong account: hostname 404.
        let mut h = Harness::new();
        h.script(Op::Hostname, vec![st(404, "")]);
        let e = h.client.open_channel("ch1").unwrap_err();
        assert!(matches!(e, SnowpipeError::WrongAccount { .. }), "{e}");
        assert!(e.to_string().contains("check `account`"));

        // Key not registered: token exchange 401 after the JWT refreshes.
        let mut h = Harness::new();
        let fp = h.client.fingerprint().to_string();
        h.script(
            Op::Token,
            (0..5)
                .map(|_| {
                    st(
                        401,
                        r#"{"code":"390144","message":"JWT token is invalid."}"#,
                    )
                })
                .collect(),
        );
        let e = h.client.open_channel("ch1").unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, SnowpipeError::Auth { .. }), "{msg}");
        assert!(
            msg.contains(&format!("RSA_PUBLIC_KEY_FP = SHA256:{fp}")),
            "{msg}"
        );
        assert!(msg.contains("DESCRIBE USER INGEST_USER"), "{msg}");
        assert!(msg.contains("NTP"), "{msg}");
        assert!(!msg.contains("Bearer"));

        // Clock skew: the message names the issue time.
        let mut h = Harness::new();
        h.script(Op::Token, (0..5).map(|_| st(401, r#"{"code":"390144","message":"JWT token issue time (iat) is in the future"}"#)).collect());
        let msg = h.client.open_channel("ch1").unwrap_err().to_string();
        assert!(
            msg.contains("token times") && msg.contains("timedatectl"),
            "{msg}"
        );

        // Pipe missing: 404 with a code on open.
        let mut h = Harness::new();
        h.script(
            Op::OpenChannel,
            vec![st(
                404,
                r#"{"code":"ERR_PIPE_DOES_NOT_EXIST_OR_NOT_AUTHORIZED","message":"no pipe"}"#,
            )],
        );
        let e = h.client.open_channel("ch1").unwrap_err();
        let msg = e.to_string();
        assert!(
            matches!(e, SnowpipeError::Rejected { status: 404, .. }),
            "{msg}"
        );
        assert!(
            msg.contains("DB1.SCH1.PIPE1") && msg.contains("INGEST_ROLE"),
            "{msg}"
        );

        // Unhealthy status on open.
        let mut h = Harness::new();
        h.script(
            Op::OpenChannel,
            vec![ok(&format!(
                r#"{{"next_continuation_token":"t","channel_status":{}}}"#,
                status_json("ch1", None, "ACTIVE")
            ))],
        );
        let e = h.client.open_channel("ch1").unwrap_err();
        assert!(
            matches!(e, SnowpipeError::ChannelUnhealthy { .. }) && e.is_transient(),
            "{e}"
        );

        // TLS verification failure.
        let mut h = Harness::new();
        h.script(
            Op::Hostname,
            vec![Err(TransportError::Tls(
                "invalid peer certificate: UnknownIssuer".into(),
            ))],
        );
        let e = h.client.open_channel("ch1").unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, SnowpipeError::Tls { .. }), "{msg}");
        assert!(
            msg.contains("extra_ca_file") && msg.contains("myorg-my_acct.snowflakecomputing.com"),
            "{msg}"
        );

        // Hostile answers: protocol errors, no panic.
        let mut h = Harness::new();
        h.script(Op::Hostname, vec![ok("127.0.0.1:18443")]);
        assert!(matches!(
            h.client.open_channel("ch1").unwrap_err(),
            SnowpipeError::Protocol {
                op: Op::Hostname,
                ..
            }
        ));
        let mut h = Harness::new();
        h.script(Op::Token, vec![ok(r#"{"token": 5}"#)]);
        assert!(matches!(
            h.client.open_channel("ch1").unwrap_err(),
            SnowpipeError::Protocol { op: Op::Token, .. }
        ));
        let mut h = Harness::new();
        h.script(Op::OpenChannel, vec![ok("[[[[")]);
        assert!(matches!(
            h.client.open_channel("ch1").unwrap_err(),
            SnowpipeError::Protocol {
                op: Op::OpenChannel,
                ..
            }
        ));
        let mut h = Harness::new();
        h.client.open_channel("ch1").unwrap();
        h.script(Op::Append, vec![ok(r#"{"message":"OK"}"#)]);
        assert!(matches!(
            h.client
                .append("ch1", "open-token", &h.batch(1, 1))
                .unwrap_err(),
            SnowpipeError::Protocol { op: Op::Append, .. }
        ));
        h.script(
            Op::ChannelStatus,
            vec![ok(
                r#"{"channel_statuses": {"ch1": {"channel_name": "ch1"}}}"#,
            )],
        );
        assert!(matches!(
            h.client.channel_status(&["ch1"]).unwrap_err(),
            SnowpipeError::Protocol { .. }
        ));
    }

    #[test]
    fn scoped_token_renewed_before_expiry() {
        let mut h = Harness::new();
        *h.fake.token_lifetime.lock().unwrap() = 3600;
        h.client.open_channel("ch1").unwrap();
        assert_eq!(h.log_of(Op::Token).len(), 1);
        h.clock.advance(Duration::from_secs(3600 - 301));
        h.client.channel_status(&["ch1"]).unwrap();
        assert_eq!(h.log_of(Op::Token).len(), 1, "still valid");
        h.clock.advance(Duration::from_secs(2));
        h.client.channel_status(&["ch1"]).unwrap();
        assert_eq!(
            h.log_of(Op::Token).len(),
            2,
            "refreshed 5 minutes before exp"
        );
        // The key-pair JWT is re-signed after 54 minutes: the second exchange carries a new iat.
        let tokens = h.log_of(Op::Token);
        let iat = |r: &HttpRequest| -> u64 {
            let jwt = r
                .header("Authorization")
                .unwrap()
                .strip_prefix("Bearer ")
                .unwrap();
            let c: serde_json::Value =
                jsonwebtoken::dangerous::insecure_decode_claims(jwt).unwrap();
            c["iat"].as_u64().unwrap()
        };
        assert_eq!(iat(&tokens[1]) - iat(&tokens[0]), 3600 - 299);
    }

    #[test]
    fn status_chunks_and_missing_channels() {
        let mut h = Harness::new();
        let names: Vec<String> = (0..250)
            .map(|i| {
                if i % 2 == 0 {
                    format!("ch{i}")
                } else {
                    format!("x{i}")
                }
            })
            .collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let m = h.client.channel_status(&refs).unwrap();
        assert_eq!(m.len(), 250);
        assert_eq!(m.values().filter(|v| v.is_some()).count(), 125);
        assert!(m["x1"].is_none() && m["ch0"].is_some());
        let calls = h.log_of(Op::ChannelStatus);
        assert_eq!(calls.len(), 3);
        let sizes: Vec<usize> = calls
            .iter()
            .map(|r| {
                serde_json::from_slice::<serde_json::Value>(r.body.as_ref().unwrap()).unwrap()
                    ["channel_names"]
                    .as_array()
                    .unwrap()
                    .len()
            })
            .collect();
        assert_eq!(sizes, vec![100, 100, 50]);
    }

    #[test]
    fn ten_requests_per_second_per_channel() {
        let mut h = Harness::new();
        let mut tok = h.client.open_channel("ch1").unwrap().continuation_token;
        for s in 1..=20 {
            tok = h.client.append("ch1", &tok, &h.batch(s, s)).unwrap();
        }
        // 21 requests on ch1 with a clock that only moves when sleeping: ≥ 2 s of waiting.
        let waited: Duration = h.clock.sleeps().iter().sum();
        assert!(
            waited >= Duration::from_secs(2) && waited < Duration::from_secs(3),
            "{waited:?}"
        );
    }

    #[test]
    fn observer_sees_every_attempt() {
        let mut h = Harness::new();
        let events: Arc<Mutex<Vec<RequestEvent>>> = Arc::default();
        let sink = events.clone();
        h.client.set_observer(Arc::new(move |e: &RequestEvent| {
            sink.lock().unwrap().push(*e)
        }));
        h.script(
            Op::OpenChannel,
            vec![st(503, ""), Err(TransportError::Timeout("t".into()))],
        );
        h.client.open_channel("ch1").unwrap();
        let ev = events.lock().unwrap().clone();
        let got: Vec<(Op, &str, u32)> = ev
            .iter()
            .map(|e| {
                let class = match e.status {
                    None => "transport",
                    Some(200..=299) => "2xx",
                    Some(_) => "other",
                };
                (e.op, class, e.retry_count)
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (Op::Hostname, "2xx", 0),
                (Op::Token, "2xx", 0),
                (Op::OpenChannel, "other", 0),
                (Op::OpenChannel, "transport", 1),
                (Op::OpenChannel, "2xx", 2)
            ]
        );
        assert_eq!(ev[2].status, Some(503));
    }

    #[test]
    fn client_is_send_and_config_debug_redacts() {
        fn assert_send<T: Send>() {}
        assert_send::<SnowpipeClient>();
        let mut cfg = ClientConfig::new("https://a.b.c", "a", "u", None, "/k", "d", "s", "p");
        cfg.proxy = Some("http://user:hunter2@proxy.lan:3128".into());
        let dbg = format!("{cfg:?}");
        assert!(
            !dbg.contains("hunter2") && dbg.contains("proxy.lan"),
            "{dbg}"
        );
    }

    #[test]
    fn ingest_dns_failure_forgets_the_ingest_host() {
        let mut h = Harness::with_policy(RetryPolicy {
            max_attempts: 2,
            ..RetryPolicy::default()
        });
        h.client.open_channel("ch1").unwrap();
        h.script(
            Op::ChannelStatus,
            vec![
                Err(TransportError::Dns("ingest".into())),
                Err(TransportError::Dns("ingest".into())),
            ],
        );
        let e = h.client.channel_status(&["ch1"]).unwrap_err();
        assert!(e.is_transient(), "{e}");
        assert!(h.client.ingest_host().is_none());
        h.client.channel_status(&["ch1"]).unwrap();
        assert_eq!(h.log_of(Op::Hostname).len(), 2);
        assert!(h.client.ingest_host().is_some());
    }

    #[test]
    fn new_refuses_a_readable_key() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.p8");
        std::fs::write(&path, "x").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let cfg = ClientConfig::new("https://a.b.c", "a", "u", None, &path, "d", "s", "p");
        let e = SnowpipeClient::new(cfg).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
    }

    #[test]
    fn user_agent_names_product_platform_and_rustc() {
        let ua = user_agent();
        let want = format!(
            "badge-agent/{} ({} {}) Rust/",
            env!("CARGO_PKG_VERSION"),
            std::env::consts::OS,
            std::env::consts::ARCH
        );
        let rustc = ua.strip_prefix(&want).unwrap_or_else(|| panic!("{ua}"));
        let parts: Vec<&str> = rustc.split('.').collect();
        assert!(
            parts.len() == 3 && parts.iter().all(|p| p.parse::<u32>().is_ok()),
            "rustc version {rustc:?} in {ua}"
        );
        let mut h = Harness::new();
        h.client.open_channel("ch1").unwrap();
        h.client.channel_status(&["ch1"]).unwrap();
        for r in h.log() {
            assert_eq!(r.header("User-Agent"), Some(ua.as_str()), "{:?}", r.op);
        }
    }

    #[test]
    fn a_stop_cuts_the_back_off_short() {
        let mut h = Harness::new();
        let stop = StopSignal::new();
        h.client.set_stop(stop.clone());
        h.client.open_channel("ch1").unwrap();
        h.script(Op::ChannelStatus, vec![st(503, ""), st(503, "")]);
        stop.stop();
        let e = h.client.channel_status(&["ch1"]).unwrap_err();
        assert!(matches!(e, SnowpipeError::Stopped), "{e}");
        assert!(e.is_transient());
        assert!(
            h.log_of(Op::ChannelStatus).is_empty(),
            "nothing sent after the stop"
        );
        // Raised during the back-off: the sleep ends, no further attempt.
        let mut h = Harness::new();
        let stop = StopSignal::new();
        h.client.set_stop(stop.clone());
        h.client.open_channel("ch1").unwrap();
        let raise = stop.clone();
        h.client.set_observer(Arc::new(move |e: &RequestEvent| {
            if e.status == Some(503) {
                raise.stop();
            }
        }));
        h.script(Op::ChannelStatus, vec![st(503, ""), st(503, "")]);
        let e = h.client.channel_status(&["ch1"]).unwrap_err();
        assert!(matches!(e, SnowpipeError::Stopped), "{e}");
        assert_eq!(h.log_of(Op::ChannelStatus).len(), 1);
        assert!(h.clock.sleeps().is_empty(), "{:?}", h.clock.sleeps());
    }

    #[test]
    fn a_stop_abandons_a_request_that_hangs() {
        struct Hang;
        impl HttpTransport for Hang {
            fn execute(&self, _: &HttpRequest) -> Result<HttpResponse, TransportError> {
                std::thread::sleep(Duration::from_secs(30));
                Err(TransportError::Timeout("hung".into()))
            }
        }
        let cfg = ClientConfig::new("https://a.b.c", "a", "u", None, "/k", "d", "s", "p");
        let keys = KeyPair::from_private_key(crate::snowpipe::auth::tests::test_key()).unwrap();
        let mut client =
            SnowpipeClient::with_parts(cfg, keys, Box::new(Hang), Arc::new(SystemClock)).unwrap();
        let stop = StopSignal::new();
        client.set_stop(stop.clone());
        let t0 = std::time::Instant::now();
        let raise = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            stop.stop();
        });
        let e = client.open_channel("ch1").unwrap_err();
        raise.join().unwrap();
        assert!(matches!(e, SnowpipeError::Stopped), "{e}");
        assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    }
}
