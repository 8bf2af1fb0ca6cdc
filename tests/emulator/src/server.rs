//! The I/O shell: TLS listener on loopback, routing, authentication, fault injection, the commit
//! ticker, admin endpoints, and the in-process [`Emulator`] handle.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use crate::auth::{AuthError, KeyPairVerifier, Principal, ScopedTokens};
use crate::faults::{FaultAction, FaultEngine, FaultPlan, FaultRule, Op};
use crate::http::{self, path_decode, ReadError, Request, Response};
use crate::model::{ApiError, AppendOffsets, CommittedRow, Model, OpenOptions, PipeId};
use crate::ndjson::{decode_body, parse_ndjson, MAX_WIRE_BODY};

/// Everything that can go wrong starting the emulator.
#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    /// Socket, file or thread error.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// Certificate generation failed.
    #[error("certificate generation: {0}")]
    Cert(#[from] rcgen::Error),
    /// TLS configuration failed.
    #[error("tls: {0}")]
    Tls(#[from] rustls::Error),
    /// A public key could not be registered.
    #[error("public key: {0}")]
    Key(#[from] AuthError),
    /// The configuration is inconsistent.
    #[error("config: {0}")]
    Config(String),
}

/// Emulator settings.
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    /// Account as configured in the client (normalised like Snowflake: before the first `.`, upper-case).
    pub account: String,
    /// User name (upper-cased for the JWT check).
    pub user: String,
    /// Pipes that exist (`DB.SCHEMA.PIPE`).
    pub pipes: Vec<PipeId>,
    /// Public keys (PEM) whose key-pair JWTs are accepted.
    pub public_keys_pem: Vec<String>,
    /// Delay between an append and its commit.
    pub commit_delay: Duration,
    /// Lifetime of scoped tokens.
    pub scoped_token_lifetime: Duration,
    /// Port on 127.0.0.1 (0 = ephemeral).
    pub port: u16,
    /// Where to write the CA certificate (PEM); a temp file when `None`.
    pub ca_pem_path: Option<PathBuf>,
    /// Append committed rows (NDJSON) to this file.
    pub ledger_file: Option<PathBuf>,
    /// Initial fault plan.
    pub faults: FaultPlan,
    /// The ingest host answered by the hostname endpoint (bare, no port).
    pub ingest_host: String,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        Self {
            account: "MYORG-MYACCT".into(),
            user: "INGEST_USER".into(),
            pipes: vec![PipeId {
                database: "DB1".into(),
                schema: "SCH1".into(),
                pipe: "PIPE1".into(),
            }],
            public_keys_pem: Vec::new(),
            commit_delay: Duration::from_millis(1000),
            scoped_token_lifetime: Duration::from_secs(3600),
            port: 0,
            ca_pem_path: None,
            ledger_file: None,
            faults: FaultPlan::default(),
            ingest_host: "127.0.0.1".into(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not take the emulator down with it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn now_s() -> i64 {
    (now_ms() / 1000) as i64
}

/// One served request, as kept in the request log (tests check retries and token refreshes with it).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RequestRecord {
    /// HTTP method.
    pub method: String,
    /// Raw path.
    pub path: String,
    /// Decoded query parameters.
    pub query: Vec<(String, String)>,
    /// Status sent; 0 when the connection was reset without a response.
    pub status: u16,
    /// Injected fault, if any.
    pub fault: Option<String>,
}

impl RequestRecord {
    /// A query parameter.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// How many requests the log keeps.
const REQUEST_LOG_CAP: usize = 20_000;

struct Shared {
    requests: Mutex<std::collections::VecDeque<RequestRecord>>,
    model: Mutex<Model>,
    verifier: Mutex<KeyPairVerifier>,
    scoped: Mutex<ScopedTokens>,
    faults: Mutex<FaultEngine>,
    ledger_file: Option<Mutex<std::fs::File>>,
    ingest_host: String,
}

impl Shared {
    fn commit_now(&self) {
        let mut model = lock(&self.model);
        let rows = model.commit_all_now(now_ms());
        self.write_ledger(rows);
    }

    fn record(&self, req: &Request, status: u16, fault: Option<FaultAction>) {
        debug!(method = %req.method, path = %req.path, status, fault = ?fault.map(|f| f.to_string()), "request");
        if req.path.starts_with("/admin/") {
            return;
        }
        let mut log = lock(&self.requests);
        if log.len() >= REQUEST_LOG_CAP {
            log.pop_front();
        }
        log.push_back(RequestRecord {
            method: req.method.clone(),
            path: req.path.clone(),
            query: req.query.clone(),
            status,
            fault: fault.map(|f| f.to_string()),
        });
    }

    fn tick(&self) {
        let mut model = lock(&self.model);
        let rows = model.tick(now_ms());
        if !rows.is_empty() {
            self.write_ledger(rows);
        }
    }

    fn write_ledger(&self, rows: &[CommittedRow]) {
        debug!(rows = rows.len(), "committed");
        if let Some(f) = &self.ledger_file {
            let mut f = lock(f);
            for r in rows {
                if let Err(e) = serde_json::to_writer(&mut *f, r)
                    .and_then(|_| f.write_all(b"\n").map_err(serde_json::Error::io))
                {
                    warn!(error = %e, "cannot write ledger file");
                }
            }
        }
    }
}

/// Entry point: `Emulator::start(config)`.
#[derive(Debug)]
pub struct Emulator;

impl Emulator {
    /// Generates certificates, binds 127.0.0.1:`port`, and serves on a dedicated thread with its own
    /// tokio runtime (so blocking tests can use it). Returns once the socket is listening.
    pub fn start(config: EmulatorConfig) -> Result<EmulatorHandle, EmulatorError> {
        if config.pipes.is_empty() {
            return Err(EmulatorError::Config(
                "at least one pipe is required".into(),
            ));
        }
        let mut verifier = KeyPairVerifier::new(&config.account, &config.user);
        for pem in &config.public_keys_pem {
            verifier.register_pem(pem)?;
        }
        let (tls, ca_pem) = tls_config()?;
        let ca_pem_path = match &config.ca_pem_path {
            Some(p) => p.clone(),
            None => {
                let dir = std::env::temp_dir()
                    .join(format!("snowpipe-emulator-{}", uuid::Uuid::new_v4()));
                std::fs::create_dir_all(&dir)?;
                dir.join("ca.pem")
            }
        };
        std::fs::write(&ca_pem_path, &ca_pem)?;
        let ledger_file = match &config.ledger_file {
            Some(p) => Some(Mutex::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?,
            )),
            None => None,
        };
        let shared = Arc::new(Shared {
            requests: Mutex::new(std::collections::VecDeque::new()),
            model: Mutex::new(Model::new(
                config.pipes.clone(),
                config.commit_delay.as_millis() as u64,
            )),
            verifier: Mutex::new(verifier),
            scoped: Mutex::new(ScopedTokens::new(
                config.scoped_token_lifetime.as_secs().max(1) as i64,
            )),
            faults: Mutex::new(FaultEngine::new(config.faults.clone())),
            ledger_file,
            ingest_host: config.ingest_host.clone(),
        });
        let listener = std::net::TcpListener::bind(("127.0.0.1", config.port))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (tx, rx) = oneshot::channel();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("snowpipe-emulator")
            .enable_all()
            .build()?;
        let sh = shared.clone();
        let thread = std::thread::Builder::new()
            .name("snowpipe-emulator".into())
            .spawn(move || {
                rt.block_on(async move {
                    match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => {
                            serve(l, tokio_rustls::TlsAcceptor::from(Arc::new(tls)), sh, rx).await
                        }
                        Err(e) => warn!(error = %e, "cannot register listener"),
                    }
                });
                rt.shutdown_timeout(Duration::from_secs(1));
            })?;
        info!(%addr, ca = %ca_pem_path.display(), "snowpipe emulator listening");
        Ok(EmulatorHandle {
            addr,
            ca_pem_path,
            ca_pem,
            shared,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }
}

/// A running emulator. Dropping it shuts it down.
pub struct EmulatorHandle {
    /// Listening address (127.0.0.1:port).
    pub addr: SocketAddr,
    /// Path of the CA certificate PEM clients must trust.
    pub ca_pem_path: PathBuf,
    ca_pem: String,
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for EmulatorHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmulatorHandle")
            .field("addr", &self.addr)
            .field("ca_pem_path", &self.ca_pem_path)
            .finish()
    }
}

impl EmulatorHandle {
    /// The account URL clients use: `https://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The CA certificate (PEM).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Committed rows of one channel (case-insensitive), in commit order.
    pub fn ledger(&self, channel: &str) -> Vec<CommittedRow> {
        lock(&self.shared.model).ledger(Some(channel))
    }

    /// Runs `f` over the committed rows of one channel without copying them (for ledgers of
    /// millions of rows), holding the model's lock meanwhile.
    pub fn with_ledger<R>(
        &self,
        channel: &str,
        f: impl FnOnce(&mut dyn Iterator<Item = &CommittedRow>) -> R,
    ) -> R {
        let model = lock(&self.shared.model);
        let mut rows = model.ledger_iter(Some(channel));
        f(&mut rows)
    }

    /// Committed rows of every channel.
    pub fn ledger_all(&self) -> Vec<CommittedRow> {
        lock(&self.shared.model).ledger(None)
    }

    /// Status objects of every channel (the open answer's field set plus `uncommitted_batches`).
    pub fn channels(&self) -> Vec<Value> {
        lock(&self.shared.model).all_statuses()
    }

    /// Requests served so far (admin requests excluded), oldest first.
    pub fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.shared.requests).iter().cloned().collect()
    }

    /// Adds a fault rule (its counter starts now).
    pub fn add_fault(&self, rule: FaultRule) {
        lock(&self.shared.faults).extend([rule]);
    }

    /// Replaces the whole fault plan (counters restart).
    pub fn set_faults(&self, plan: FaultPlan) {
        *lock(&self.shared.faults) = FaultEngine::new(plan);
    }

    /// Rules with (matching requests seen, times fired).
    pub fn faults(&self) -> Vec<(FaultRule, u64, u64)> {
        lock(&self.shared.faults).snapshot()
    }

    /// Registers another public key (PEM); returns its fingerprint.
    pub fn register_public_key_pem(&self, pem: &str) -> Result<String, AuthError> {
        lock(&self.shared.verifier).register_pem(pem)
    }

    /// Expires every scoped token issued so far.
    pub fn expire_scoped_tokens(&self) {
        lock(&self.shared.scoped).expire_all();
    }

    /// Changes the commit delay for later appends.
    pub fn set_commit_delay(&self, delay: Duration) {
        lock(&self.shared.model).commit_delay_ms = delay.as_millis() as u64;
    }

    /// Commits every in-flight batch now, whatever the commit delay.
    pub fn commit_now(&self) {
        self.shared.commit_now();
    }

    /// Forgets channels, committed rows and faults.
    pub fn reset(&self) {
        lock(&self.shared.model).reset();
        *lock(&self.shared.faults) = FaultEngine::default();
    }

    /// Blocks until the server stops (it only stops through [`EmulatorHandle::shutdown`] or process exit).
    pub fn wait(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Stops the server and joins its thread.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for EmulatorHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

fn tls_config() -> Result<(rustls::ServerConfig, String), EmulatorError> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "snowpipe-emulator local CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])?;
    leaf.distinguished_name
        .push(DnType::CommonName, "snowpipe-emulator");
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let leaf_cert = leaf.signed_by(&key, &issuer)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf_cert.der().clone(), ca_cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((cfg, ca_cert.pem()))
}

async fn serve(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    shared: Arc<Shared>,
    mut stop: oneshot::Receiver<()>,
) {
    let ticker = {
        let sh = shared.clone();
        tokio::spawn(async move {
            let mut iv = tokio::time::interval(Duration::from_millis(20));
            loop {
                iv.tick().await;
                sh.tick();
            }
        })
    };
    loop {
        tokio::select! {
            _ = &mut stop => break,
            acc = listener.accept() => match acc {
                Ok((tcp, peer)) => {
                    let acceptor = acceptor.clone();
                    let sh = shared.clone();
                    tokio::spawn(async move {
                        let _ = tcp.set_nodelay(true);
                        match acceptor.accept(tcp).await {
                            Ok(tls) => connection(tls, peer, sh).await,
                            Err(e) => debug!(%peer, error = %e, "TLS handshake failed"),
                        }
                    });
                }
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    ticker.abort();
}

/// Abort the TCP connection (RST) without a response.
fn reset(tls: tokio_rustls::server::TlsStream<TcpStream>) {
    let _ = tls.get_ref().0.set_zero_linger();
    drop(tls);
}

async fn connection(
    mut tls: tokio_rustls::server::TlsStream<TcpStream>,
    peer: SocketAddr,
    sh: Arc<Shared>,
) {
    let mut buf = Vec::new();
    loop {
        let req = match read_one(&mut tls, &mut buf).await {
            Ok(r) => r,
            Err(ReadError::Closed) => return,
            Err(ReadError::TooLarge(n)) => {
                debug!(%peer, bytes = n, status = 413, "request too large");
                let e = ApiError::new(413, "ERR_PAYLOAD_TOO_LARGE", format!("Request payload of {n} bytes exceeds the 4 MB limit ({MAX_WIRE_BODY} bytes)"));
                let _ = http::write_response(&mut tls, &Response::json(413, &e.body()), true).await;
                return;
            }
            Err(e) => {
                debug!(%peer, error = %e, "bad request");
                let _ = http::write_response(
                    &mut tls,
                    &Response::json(
                        400,
                        &json!({"code": "ERR_BAD_REQUEST", "message": e.to_string()}),
                    ),
                    true,
                )
                .await;
                return;
            }
        };
        let route = Route::parse(&req.method, &req.path);
        let mut lost = None;
        let mut noted = None;
        if let Some((op, channel)) = route.fault_key() {
            let action = lock(&sh.faults).check(op, channel.as_deref());
            if let Some(a) = action {
                debug!(method = %req.method, path = %req.path, fault = %a, "injecting fault");
                match a {
                    FaultAction::Reset => {
                        sh.record(&req, 0, Some(a));
                        reset(tls);
                        return;
                    }
                    FaultAction::Delay(ms) => {
                        noted = Some(a);
                        tokio::time::sleep(Duration::from_millis(ms)).await
                    }
                    FaultAction::ExpireTokens => {
                        noted = Some(a);
                        lock(&sh.scoped).expire_all()
                    }
                    FaultAction::AppliedThenReset | FaultAction::AppliedThen503 => lost = Some(a),
                    other => {
                        let resp = canned(other);
                        sh.record(&req, resp.status, Some(other));
                        if http::write_response(&mut tls, &resp, req.close)
                            .await
                            .is_err()
                            || req.close
                        {
                            return;
                        }
                        continue;
                    }
                }
            }
        }
        let resp = handle(&sh, &req, &route, peer);
        match lost {
            Some(FaultAction::AppliedThenReset) => {
                sh.record(&req, 0, lost);
                reset(tls);
                return;
            }
            Some(_) => {
                let r = canned(FaultAction::Unavailable);
                sh.record(&req, r.status, lost);
                if http::write_response(&mut tls, &r, req.close).await.is_err() || req.close {
                    return;
                }
            }
            None => {
                sh.record(&req, resp.status, noted);
                if http::write_response(&mut tls, &resp, req.close)
                    .await
                    .is_err()
                    || req.close
                {
                    return;
                }
            }
        }
    }
}

/// Reads one request, answering `Expect: 100-continue` (413 straight away when too large).
async fn read_one(
    tls: &mut tokio_rustls::server::TlsStream<TcpStream>,
    buf: &mut Vec<u8>,
) -> Result<Request, ReadError> {
    use tokio::io::AsyncWriteExt as _;
    let (req, kind) = http::read_head(tls, buf).await?;
    if req.expects_continue() {
        if let http::BodyKind::Length(n) = kind {
            if n > MAX_WIRE_BODY {
                return Err(ReadError::TooLarge(n));
            }
        }
        tls.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
        tls.flush().await?;
    }
    http::read_body(tls, buf, req, kind, MAX_WIRE_BODY).await
}

fn canned(a: FaultAction) -> Response {
    let e = |s: u16, c: &str, m: &str| Response::json(s, &json!({"code": c, "message": m}));
    match a {
        FaultAction::Unauthorized => {
            e(401, "390303", "Invalid OAuth access token (injected fault)")
        }
        FaultAction::NotFound => e(
            404,
            "ERR_CHANNEL_DOES_NOT_EXIST_OR_NOT_AUTHORIZED",
            "Channel does not exist or not authorized (injected fault)",
        ),
        FaultAction::NotFoundEmpty => Response::empty(404),
        FaultAction::Conflict => e(
            409,
            "ERR_CHANNEL_HAS_UNCOMMITTED_DATA",
            "Channel has uncommitted data (injected fault)",
        ),
        FaultAction::TooManyRequests => e(
            429,
            "ERR_TOO_MANY_REQUESTS",
            "Too many requests (injected fault)",
        ),
        FaultAction::InternalError => e(500, "ERR_INTERNAL", "Internal error (injected fault)"),
        _ => e(
            503,
            "ERR_SERVICE_UNAVAILABLE",
            "Service unavailable (injected fault)",
        ),
    }
}

/// A routed request.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    Hostname,
    Token,
    Telemetry,
    Open {
        db: String,
        schema: String,
        pipe: String,
        channel: String,
    },
    Drop {
        db: String,
        schema: String,
        pipe: String,
        channel: String,
    },
    Append {
        db: String,
        schema: String,
        pipe: String,
        channel: String,
    },
    Status {
        db: String,
        schema: String,
        pipe: String,
    },
    PipeInfo {
        db: String,
        schema: String,
        pipe: String,
    },
    Admin(String),
    NotFound,
    MethodNotAllowed,
}

impl Route {
    fn parse(method: &str, path: &str) -> Route {
        let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let d = |s: &str| path_decode(s);
        match segs.as_slice() {
            ["v2", "streaming", "hostname"] => {
                if method == "GET" {
                    Route::Hostname
                } else {
                    Route::MethodNotAllowed
                }
            }
            ["oauth", "token"] => {
                if method == "POST" {
                    Route::Token
                } else {
                    Route::MethodNotAllowed
                }
            }
            ["telemetry", "send", "sessionless"] => {
                if method == "POST" {
                    Route::Telemetry
                } else {
                    Route::MethodNotAllowed
                }
            }
            ["admin", rest @ ..] => Route::Admin(rest.join("/")),
            ["v2", "streaming", "databases", db, "schemas", s, "pipes", p, "channels", c] => {
                let (db, schema, pipe, channel) = (d(db), d(s), d(p), d(c));
                match method {
                    "PUT" => Route::Open {
                        db,
                        schema,
                        pipe,
                        channel,
                    },
                    "DELETE" => Route::Drop {
                        db,
                        schema,
                        pipe,
                        channel,
                    },
                    _ => Route::MethodNotAllowed,
                }
            }
            ["v2", "streaming", "data", "databases", db, "schemas", s, "pipes", p, "channels", c, "rows"] => {
                if method == "POST" {
                    Route::Append {
                        db: d(db),
                        schema: d(s),
                        pipe: d(p),
                        channel: d(c),
                    }
                } else {
                    Route::MethodNotAllowed
                }
            }
            ["v2", "streaming", "databases", db, "schemas", s, "pipes", p_action] => {
                let decoded = d(p_action);
                let Some((pipe, action)) = decoded.rsplit_once(':') else {
                    return Route::NotFound;
                };
                let (db, schema, pipe) = (d(db), d(s), pipe.to_string());
                match (method, action) {
                    ("POST", "bulk-channel-status") => Route::Status { db, schema, pipe },
                    ("POST", "pipe-info") => Route::PipeInfo { db, schema, pipe },
                    _ => Route::NotFound,
                }
            }
            _ => Route::NotFound,
        }
    }

    fn fault_key(&self) -> Option<(Op, Option<String>)> {
        Some(match self {
            Route::Hostname => (Op::Hostname, None),
            Route::Token => (Op::Token, None),
            Route::Telemetry => (Op::Telemetry, None),
            Route::Open { channel, .. } => (Op::Open, Some(channel.clone())),
            Route::Drop { channel, .. } => (Op::Drop, Some(channel.clone())),
            Route::Append { channel, .. } => (Op::Append, Some(channel.clone())),
            Route::Status { .. } => (Op::Status, None),
            Route::PipeInfo { .. } => (Op::PipeInfo, None),
            Route::Admin(_) | Route::NotFound | Route::MethodNotAllowed => return None,
        })
    }
}

fn err(e: &ApiError) -> Response {
    Response::json(e.status, &e.body())
}

fn unauthorized(code: &str, e: &AuthError) -> Response {
    Response::json(401, &json!({"code": code, "message": e.to_string()}))
}

fn bearer(req: &Request) -> Option<&str> {
    let h = req.header("authorization")?;
    let (scheme, tok) = h.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(tok.trim())
}

fn token_type(req: &Request) -> Option<String> {
    req.header("x-snowflake-authorization-token-type")
        .map(str::to_ascii_uppercase)
}

/// Control host: key-pair JWT (type header `KEYPAIR_JWT` or absent).
fn control_auth(sh: &Shared, req: &Request) -> Result<Principal, Response> {
    let missing = AuthError::Malformed("missing bearer token".into());
    let tok = bearer(req).ok_or_else(|| unauthorized("390144", &missing))?;
    if let Some(t) = token_type(req) {
        if t != "KEYPAIR_JWT" {
            return Err(unauthorized("390144", &AuthError::Malformed(format!("token type {t} is not supported on the control host (emulator accepts KEYPAIR_JWT)"))));
        }
    }
    lock(&sh.verifier)
        .verify(tok, now_s())
        .map_err(|e| unauthorized("390144", &e))
}

/// Ingest host: a scoped token with type header `OAUTH`.
fn ingest_auth(sh: &Shared, req: &Request) -> Result<(), Response> {
    let tok = bearer(req).ok_or_else(|| {
        unauthorized(
            "390303",
            &AuthError::Malformed("missing bearer token".into()),
        )
    })?;
    if token_type(req).as_deref() != Some("OAUTH") {
        return Err(unauthorized(
            "390303",
            &AuthError::Malformed("X-Snowflake-Authorization-Token-Type must be OAUTH".into()),
        ));
    }
    lock(&sh.scoped)
        .verify(tok, now_s())
        .map(|_| ())
        .map_err(|e| unauthorized("390303", &e))
}

fn json_body(req: &Request) -> Result<Value, Response> {
    if req.body.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    let raw = decode_body(req.header("content-encoding"), &req.body).map_err(|e| {
        err(&ApiError::new(
            400,
            "ERR_INVALID_REQUEST_BODY",
            e.to_string(),
        ))
    })?;
    serde_json::from_slice(&raw).map_err(|e| {
        err(&ApiError::new(
            400,
            "ERR_INVALID_REQUEST_BODY",
            format!("invalid JSON body: {e}"),
        ))
    })
}

fn handle(sh: &Shared, req: &Request, route: &Route, peer: SocketAddr) -> Response {
    match handle_inner(sh, req, route, peer) {
        Ok(r) | Err(r) => r,
    }
}

fn handle_inner(
    sh: &Shared,
    req: &Request,
    route: &Route,
    peer: SocketAddr,
) -> Result<Response, Response> {
    match route {
        Route::Hostname => {
            control_auth(sh, req)?;
            Ok(Response::text(200, sh.ingest_host.clone()))
        }
        Route::Token => {
            let p = control_auth(sh, req)?;
            let form = http::parse_query(&String::from_utf8_lossy(&req.body));
            let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
            match get("grant_type") {
                Some("urn:ietf:params:oauth:grant-type:jwt-bearer") => {}
                other => {
                    return Err(err(&ApiError::new(
                        400,
                        "unsupported_grant_type",
                        format!(
                        "grant_type {other:?} is not supported by the emulator (jwt-bearer only)"
                    ),
                    )))
                }
            }
            let scope = get("scope").unwrap_or("");
            let host = scope.split_whitespace().next().unwrap_or("");
            if !host.eq_ignore_ascii_case(&sh.ingest_host) {
                return Err(err(&ApiError::new(
                    400,
                    "invalid_scope",
                    format!(
                        "scope {scope:?} must name the ingest host {}",
                        sh.ingest_host
                    ),
                )));
            }
            let tok = lock(&sh.scoped)
                .issue(&p.subject, host, now_s())
                .map_err(|e| err(&ApiError::new(500, "ERR_INTERNAL", e.to_string())))?;
            Ok(Response::text(200, tok))
        }
        Route::Telemetry => {
            control_auth(sh, req)?;
            Ok(Response::json(
                200,
                &json!({"success": true, "data": "Log Received", "message": null, "code": null}),
            ))
        }
        Route::PipeInfo { db, schema, pipe } => {
            ingest_auth(sh, req)?;
            lock(&sh.model)
                .pipe(db, schema, pipe)
                .map_err(|e| err(&e))?;
            let exp = now_ms() + 3_600_000;
            let loc = json!({"expiry_time_ms": exp, "location_type": "S3", "use_s3_regional_url": false,
                             "location": "emulator-bucket/prefix/", "region": "us-west-2",
                             // Dummy credentials: 1.9.1 refuses an S3 location without them. They are
                             // never usable: file mode fails on the 16-byte key before any upload.
                             "creds": {"AWS_KEY_ID": "EMULATOR", "AWS_SECRET_KEY": "emulator-not-a-secret", "AWS_TOKEN": "emulator"}});
            // 16-byte key: file mode fails inside the client before any upload (see the wire docs).
            Ok(Response::json(
                200,
                &json!({
                    "rowset_stage_location": loc, "durable_stage_location": loc,
                    "encryption_info": {"pipe_key": "AAECAwQFBgcICQoLDA0ODw==", "pipe_key_id": 1, "diversifier": "0"},
                    "parameter_overrides": {}
                }),
            ))
        }
        Route::Open {
            db,
            schema,
            pipe,
            channel,
        } => {
            ingest_auth(sh, req)?;
            let body = json_body(req)?;
            let opts = OpenOptions {
                offset_token: match body.get("offset_token") {
                    None | Some(Value::Null) => None,
                    Some(Value::String(s)) => Some(s.clone()),
                    Some(other) => Some(other.to_string()),
                },
                fail_on_uncommitted_rows: body
                    .get("fail_on_uncommitted_rows")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
            };
            let mut m = lock(&sh.model);
            let p = m.pipe(db, schema, pipe).map_err(|e| err(&e))?;
            let (tok, status) = m.open(p, channel, &opts, now_ms()).map_err(|e| err(&e))?;
            Ok(Response::json(
                200,
                &json!({"next_continuation_token": tok, "channel_status": status}),
            ))
        }
        Route::Drop {
            db,
            schema,
            pipe,
            channel,
        } => {
            ingest_auth(sh, req)?;
            let body = json_body(req)?;
            let fail = body
                .get("fail_on_uncommitted_rows")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let mut m = lock(&sh.model);
            let p = m.pipe(db, schema, pipe).map_err(|e| err(&e))?;
            m.drop_channel(p, channel, fail).map_err(|e| err(&e))?;
            Ok(Response::json(200, &json!({})))
        }
        Route::Status { db, schema, pipe } => {
            ingest_auth(sh, req)?;
            let body = json_body(req)?;
            let names: Vec<String> = body
                .get("channel_names")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            let m = lock(&sh.model);
            let p = m.pipe(db, schema, pipe).map_err(|e| err(&e))?;
            Ok(Response::json(
                200,
                &json!({"channel_statuses": m.bulk_status(p, &names)}),
            ))
        }
        Route::Append {
            db,
            schema,
            pipe,
            channel,
        } => {
            ingest_auth(sh, req)?;
            let p = lock(&sh.model)
                .pipe(db, schema, pipe)
                .map_err(|e| err(&e))?;
            let token = req.query("continuationToken").ok_or_else(|| {
                err(&ApiError::new(
                    400,
                    "ERR_MISSING_CONTINUATION_TOKEN",
                    "continuationToken query parameter is required",
                ))
            })?;
            let raw = decode_body(req.header("content-encoding"), &req.body).map_err(|e| {
                err(&ApiError::new(
                    400,
                    "ERR_INVALID_REQUEST_BODY",
                    e.to_string(),
                ))
            })?;
            let parsed = parse_ndjson(&raw);
            let offsets = AppendOffsets {
                start: req.query("startOffsetToken").map(str::to_string),
                end: req.query("endOffsetToken").map(str::to_string),
                legacy: req.query("offsetToken").map(str::to_string),
            };
            let out = lock(&sh.model)
                .append(p, channel, token, &offsets, parsed, now_ms())
                .map_err(|e| err(&e))?;
            if out.replay {
                debug!(channel, "idempotent replay of the previous append");
            }
            Ok(Response::json(
                200,
                &json!({"next_continuation_token": out.next_token}),
            ))
        }
        Route::Admin(what) => admin(sh, req, what, peer),
        Route::MethodNotAllowed => Err(err(&ApiError::new(
            405,
            "ERR_METHOD_NOT_ALLOWED",
            format!("{} is not allowed on {}", req.method, req.path),
        ))),
        Route::NotFound => Err(Response::json(
            404,
            &json!({"code": "ERR_NOT_FOUND", "message": format!("no such endpoint: {} {}", req.method, req.path)}),
        )),
    }
}

fn admin(sh: &Shared, req: &Request, what: &str, peer: SocketAddr) -> Result<Response, Response> {
    if !peer.ip().is_loopback() {
        return Err(Response::json(
            403,
            &json!({"code": "ERR_FORBIDDEN", "message": "admin endpoints are loopback-only"}),
        ));
    }
    match (req.method.as_str(), what) {
        ("GET", "ledger") => {
            let rows = lock(&sh.model).ledger(req.query("channel"));
            let mut out = Vec::new();
            for r in rows {
                out.extend(serde_json::to_vec(&r).unwrap_or_default());
                out.push(b'\n');
            }
            Ok(Response {
                status: 200,
                content_type: "application/x-ndjson",
                body: out,
            })
        }
        ("GET", "requests") => Ok(Response::json(
            200,
            &json!(lock(&sh.requests).iter().collect::<Vec<_>>()),
        )),
        ("GET", "channels") => Ok(Response::json(
            200,
            &Value::Array(lock(&sh.model).all_statuses()),
        )),
        ("GET", "faults") => {
            let snap: Vec<Value> = lock(&sh.faults)
                .snapshot()
                .into_iter()
                .map(|(r, seen, fired)| json!({"rule": r, "seen": seen, "fired": fired}))
                .collect();
            Ok(Response::json(200, &Value::Array(snap)))
        }
        ("POST", "faults") => {
            let v: Value = serde_json::from_slice(&req.body).map_err(|e| {
                err(&ApiError::new(
                    400,
                    "ERR_INVALID_REQUEST_BODY",
                    e.to_string(),
                ))
            })?;
            let replace = req
                .query("replace")
                .is_some_and(|v| v == "true" || v == "1");
            let plan: FaultPlan = if v.get("rules").is_some() || v.get("seed").is_some() {
                serde_json::from_value(v)
            } else if v.is_array() {
                serde_json::from_value(v).map(|rules| FaultPlan { seed: None, rules })
            } else {
                serde_json::from_value(v).map(|r| FaultPlan {
                    seed: None,
                    rules: vec![r],
                })
            }
            .map_err(|e| err(&ApiError::new(400, "ERR_INVALID_FAULT_PLAN", e.to_string())))?;
            let n = plan.rules.len();
            let mut f = lock(&sh.faults);
            if replace || plan.seed.is_some() {
                *f = FaultEngine::new(plan);
            } else {
                f.extend(plan.rules);
            }
            Ok(Response::json(200, &json!({"added": n})))
        }
        ("POST", "reset") => {
            lock(&sh.model).reset();
            *lock(&sh.faults) = FaultEngine::default();
            Ok(Response::json(200, &json!({})))
        }
        ("POST", "commit") => {
            sh.commit_now();
            Ok(Response::json(200, &json!({})))
        }
        ("POST", "expire-tokens") => {
            lock(&sh.scoped).expire_all();
            Ok(Response::json(200, &json!({})))
        }
        _ => Err(Response::json(
            404,
            &json!({"code": "ERR_NOT_FOUND", "message": format!("no such admin endpoint: {} /admin/{what}", req.method)}),
        )),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn routes() {
        let r = Route::parse("PUT", "/v2/streaming/databases/db1/schemas/sch1/pipes/Badge_Swipes-STREAMING/channels/gw-01%2Frfid%20A");
        assert_eq!(
            r,
            Route::Open {
                db: "db1".into(),
                schema: "sch1".into(),
                pipe: "Badge_Swipes-STREAMING".into(),
                channel: "gw-01/rfid A".into()
            }
        );
        assert!(matches!(
            Route::parse(
                "DELETE",
                "/v2/streaming/databases/a/schemas/b/pipes/c/channels/d"
            ),
            Route::Drop { .. }
        ));
        assert!(matches!(
            Route::parse(
                "POST",
                "/v2/streaming/data/databases/a/schemas/b/pipes/c/channels/d/rows"
            ),
            Route::Append { .. }
        ));
        assert_eq!(
            Route::parse(
                "POST",
                "/v2/streaming/databases/a/schemas/b/pipes/P1:bulk-channel-status"
            ),
            Route::Status {
                db: "a".into(),
                schema: "b".into(),
                pipe: "P1".into()
            }
        );
        assert!(matches!(
            Route::parse(
                "POST",
                "/v2/streaming/databases/a/schemas/b/pipes/P1%3Apipe-info"
            ),
            Route::PipeInfo { .. }
        ));
        assert_eq!(
            Route::parse("POST", "/v2/streaming/databases/a/schemas/b/pipes/P1:nope"),
            Route::NotFound
        );
        assert_eq!(
            Route::parse("GET", "/v2/streaming/hostname"),
            Route::Hostname
        );
        assert_eq!(
            Route::parse("POST", "/v2/streaming/hostname"),
            Route::MethodNotAllowed
        );
        assert_eq!(
            Route::parse("GET", "/admin/ledger"),
            Route::Admin("ledger".into())
        );
        assert_eq!(Route::parse("GET", "/%%%/\u{0}"), Route::NotFound);
    }
}
