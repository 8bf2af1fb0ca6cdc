//! The health listener: `/metrics`, `/livez`, `/readyz` and `/status` over HTTP/1.1 (hyper).
//!
//! One router ([`route`]) serves two listeners: TCP (loopback by default) for Prometheus and
//! people, and a private Unix socket ([`bind_private_socket`]) that only the agent's user (and
//! root) can reach, for the agent's own tools (`badge-agent status`, the updater's health gate):
//! a local process squatting the TCP port cannot answer in the agent's name there.
//!
//! Each listener admits at most [`MAX_CONNECTIONS`] connections at once; one more is closed as
//! soon as it is accepted, so a flood of idle connections costs the agent a bounded number of
//! file descriptors (the group commit needs them too). A connection must deliver its request
//! head within [`HEADER_READ_TIMEOUT`] and is closed after one answer or [`CONNECTION_DEADLINE`].

use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;

use super::Health;

/// Largest request head read (hyper's smallest buffer limit).
const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// Connections served at once per listener; more are closed at once.
pub const MAX_CONNECTIONS: usize = 16;
/// Time a client gets to send its request head.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a connection lives, answer included (a client that never reads cannot hold it).
pub const CONNECTION_DEADLINE: Duration = Duration::from_secs(10);

/// An answer before it is written to the socket.
#[derive(Debug, PartialEq, Eq)]
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// `Content-Type` header.
    pub content_type: &'static str,
    /// Body.
    pub body: String,
}

impl Response {
    fn text(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }
}

/// Answers one request.
pub fn route(health: &Health, method: &str, path: &str) -> Response {
    if method != "GET" && method != "HEAD" {
        return Response::text(405, "only GET\n");
    }
    match path {
        "/metrics" => Response {
            status: 200,
            content_type: "application/openmetrics-text; version=1.0.0; charset=utf-8",
            body: health.render_metrics(),
        },
        "/livez" => {
            let stalled = health.stalled();
            if stalled.is_empty() {
                Response::text(200, "ok\n")
            } else {
                Response::text(503, format!("stalled: {}\n", stalled.join(", ")))
            }
        }
        "/readyz" => {
            if health.is_ready() {
                Response::text(200, "ready\n")
            } else {
                Response::text(
                    503,
                    format!("not ready: {}\n", health.not_ready_reasons().join("; ")),
                )
            }
        }
        "/status" => Response {
            status: 200,
            content_type: "application/json",
            body: serde_json::to_string_pretty(&health.status()).unwrap_or_default(),
        },
        _ => Response::text(404, "not found; try /metrics, /livez, /readyz or /status\n"),
    }
}

/// Serves TCP until the task is dropped.
pub async fn serve(listener: TcpListener, health: Arc<Health>) {
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        match listener.accept().await {
            Ok((stream, _)) => admit(stream, &limit, &health),
            // Out of file descriptors and the like: back off instead of spinning.
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Serves the private Unix socket until the task is dropped (its own connection cap, so a TCP
/// flood never locks the agent's tools out).
pub async fn serve_unix(listener: UnixListener, health: Arc<Health>) {
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        match listener.accept().await {
            Ok((stream, _)) => admit(stream, &limit, &health),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Serves one connection under the cap, or closes it right away when the cap is reached.
fn admit<S>(stream: S, limit: &Arc<Semaphore>, health: &Arc<Health>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Ok(permit) = Arc::clone(limit).try_acquire_owned() else {
        drop(stream);
        return;
    };
    let health = Arc::clone(health);
    tokio::spawn(async move {
        let _permit = permit;
        let service =
            hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let response = answer(&health, request.method(), request.uri().path());
                async move { Ok::<_, Infallible>(response) }
            });
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .keep_alive(false)
            .max_buf_size(MAX_REQUEST_BYTES)
            .serve_connection(TokioIo::new(stream), service);
        let _ = tokio::time::timeout(CONNECTION_DEADLINE, connection).await;
    });
}

fn answer(health: &Health, method: &hyper::Method, path: &str) -> hyper::Response<Full<Bytes>> {
    let response = route(health, method.as_str(), path);
    let body = if method == hyper::Method::HEAD {
        Bytes::new()
    } else {
        Bytes::from(response.body)
    };
    hyper::Response::builder()
        .status(response.status)
        .header(hyper::header::CONTENT_TYPE, response.content_type)
        .header(hyper::header::CACHE_CONTROL, "no-store")
        .body(Full::new(body))
        .unwrap_or_else(|_| hyper::Response::new(Full::new(Bytes::new())))
}

/// Binds the private Unix socket at `path`: the directory is created (0700) if missing and
/// must not be writable by group or others (nobody else can plant or replace the socket), a
/// stale socket from an earlier run is replaced, and the socket is made 0600.
pub fn bind_private_socket(path: &Path) -> Result<std::os::unix::net::UnixListener, String> {
    use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .ok_or_else(|| format!("{} has no directory", path.display()))?;
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    trusted_dir(dir, true)?;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path)
            .map_err(|e| format!("cannot remove the stale {}: {e}", path.display()))?,
        Ok(_) => {
            return Err(format!(
                "{} exists and is not a socket; remove it or set health.socket",
                path.display()
            ))
        }
        Err(_) => {}
    }
    let listener = std::os::unix::net::UnixListener::bind(path)
        .map_err(|e| format!("cannot bind {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| listener.set_nonblocking(true))
        .map_err(|e| format!("cannot secure {}: {e}", path.display()))?;
    Ok(listener)
}

/// A directory only its owner can add entries to; with `own`, that owner must also be root or
/// this process's user (the agent binding its socket). A client (root running `status` or the
/// updater) accepts any owner: under systemd the directory belongs to the agent's user, and only
/// root or that user could have created it where the configuration points.
fn trusted_dir(dir: &Path, own: bool) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(dir)
        .map_err(|e| format!("cannot inspect {}: {e}", dir.display()))?;
    let euid = crate::update::effective_uid();
    if !meta.is_dir() {
        return Err(format!("{} is not a directory (a link?)", dir.display()));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "{} is writable by group or others (mode {:04o}), so another user could plant the \
             agent's socket there; use a private directory (chmod 700, or set health.socket)",
            dir.display(),
            meta.mode() & 0o7777
        ));
    }
    if own && meta.uid() != 0 && meta.uid() != euid {
        return Err(format!(
            "{} belongs to uid {}, not to this user or root; set health.socket",
            dir.display(),
            meta.uid()
        ));
    }
    Ok(())
}

/// Starts the TCP listener (if `listen` is an address) and the private socket; either may fail
/// on its own (logged): a busy port or a bad directory must not stop the door readers.
pub async fn start(
    listen: Option<SocketAddr>,
    socket: &Path,
    health: &Arc<Health>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    if let Some(addr) = listen {
        match TcpListener::bind(addr).await {
            Ok(listener) => {
                let bound = listener.local_addr().map_or(addr, |a| a);
                tracing::info!(addr = %bound, "health and metrics listening");
                tasks.push(tokio::spawn(serve(listener, Arc::clone(health))));
            }
            Err(err) => {
                tracing::error!(%addr, error = %err, "cannot listen for health and metrics");
            }
        }
    }
    match bind_private_socket(socket).and_then(|std_listener| {
        UnixListener::from_std(std_listener).map_err(|e| format!("cannot use the socket: {e}"))
    }) {
        Ok(listener) => {
            tracing::info!(socket = %socket.display(), "private status socket listening");
            tasks.push(tokio::spawn(serve_unix(listener, Arc::clone(health))));
        }
        Err(err) => tracing::error!(
            error = %err,
            "no private status socket: `badge-agent status` and the updater's health gate cannot reach this agent"
        ),
    }
    tasks
}

/// Errors of [`fetch`] and [`fetch_private`].
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Nothing listens there, or the connection broke.
    #[error("cannot reach the agent at {at}: {source}")]
    Io {
        /// Where we tried.
        at: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The answer was not HTTP.
    #[error("the agent at {0} answered something that is not HTTP")]
    Malformed(String),
    /// The socket is not where only the agent could have put it.
    #[error("refusing {path}: {reason}")]
    Untrusted {
        /// The socket path.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Fetches a path from a running agent's TCP health listener: `(status, body)`.
pub fn fetch(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(u16, String), FetchError> {
    let at = addr.to_string();
    let io = |source| FetchError::Io {
        at: at.clone(),
        source,
    };
    let stream = TcpStream::connect_timeout(&addr, timeout).map_err(io)?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    exchange(stream, &at, path)
}

/// Fetches a path over the agent's private Unix socket: `(status, body)`. The socket must be a
/// socket (not a link) in a directory no other user can write.
pub fn fetch_private(
    socket: &Path,
    path: &str,
    timeout: Duration,
) -> Result<(u16, String), FetchError> {
    use std::os::unix::fs::FileTypeExt;
    let at = socket.display().to_string();
    let untrusted = |reason: String| FetchError::Untrusted {
        path: socket.to_owned(),
        reason,
    };
    let io = |source| FetchError::Io {
        at: at.clone(),
        source,
    };
    let meta = std::fs::symlink_metadata(socket).map_err(io)?;
    if !meta.file_type().is_socket() {
        return Err(untrusted("not a socket".into()));
    }
    trusted_dir(socket.parent().unwrap_or(Path::new("/")), false).map_err(untrusted)?;
    let stream = std::os::unix::net::UnixStream::connect(socket).map_err(io)?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    exchange(stream, &at, path)
}

/// One `GET` with `Connection: close`; reads the answer to the end (capped at 16 MiB).
fn exchange(
    mut stream: impl Read + Write,
    at: &str,
    path: &str,
) -> Result<(u16, String), FetchError> {
    let io = |source| FetchError::Io {
        at: at.to_owned(),
        source,
    };
    // One write: `write!` on an unbuffered stream sends each piece of the format separately.
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).map_err(io)?;
    let mut raw = Vec::new();
    stream
        .take(16 * 1024 * 1024)
        .read_to_end(&mut raw)
        .map_err(io)?;
    let text = String::from_utf8_lossy(&raw);
    let malformed = || FetchError::Malformed(at.to_owned());
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(malformed)?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(malformed)?;
    Ok((status, body.to_owned()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn routes() {
        let health = Health::new("gw", "0.1.0", "dev");
        assert_eq!(route(&health, "POST", "/metrics").status, 405);
        assert_eq!(route(&health, "GET", "/nope").status, 404);
        assert_eq!(route(&health, "GET", "/readyz").status, 503);
        health.set_ready(true);
        assert_eq!(route(&health, "GET", "/readyz").status, 200);
        // A 503 says why, so an operator need not guess.
        health.set_retry_queue(2);
        let degraded = route(&health, "GET", "/readyz");
        assert_eq!(degraded.status, 503);
        assert!(degraded.body.contains("2 swipes wait"), "{}", degraded.body);
        health.set_retry_queue(0);
        assert_eq!(route(&health, "GET", "/livez").status, 200);
        let status = route(&health, "GET", "/status");
        let doc: serde_json::Value = serde_json::from_str(&status.body).unwrap();
        assert_eq!(doc["gateway_id"], "gw");
        assert!(route(&health, "GET", "/metrics")
            .body
            .contains("badge_agent_build_info"));
    }

    #[tokio::test]
    async fn serves_over_tcp_and_survives_garbage() {
        let health = Health::new("gw", "0.1.0", "dev");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(listener, Arc::clone(&health)));

        let garbage = tokio::task::spawn_blocking(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            let _ = s.write_all(&[0xff; 9000]);
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out);
        });
        garbage.await.unwrap();

        let (status, body) =
            tokio::task::spawn_blocking(move || fetch(addr, "/status", Duration::from_secs(5)))
                .await
                .unwrap()
                .unwrap();
        assert_eq!(status, 200);
        assert!(body.contains("\"gateway_id\": \"gw\""), "{body}");
        let (status, _) =
            tokio::task::spawn_blocking(move || fetch(addr, "/readyz?x=1", Duration::from_secs(5)))
                .await
                .unwrap()
                .unwrap();
        assert_eq!(status, 503);
        server.abort();
    }

    #[tokio::test]
    async fn idle_connections_beyond_the_cap_are_closed_at_once() {
        let health = Health::new("gw", "0.1.0", "dev");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(listener, Arc::clone(&health)));
        let result = tokio::task::spawn_blocking(move || {
            // Fill the cap with idle connections (they never send a byte).
            let idle: Vec<TcpStream> = (0..MAX_CONNECTIONS)
                .map(|_| TcpStream::connect(addr).unwrap())
                .collect();
            std::thread::sleep(Duration::from_millis(300));
            // One more is closed by the agent without an answer: EOF (or reset) quickly.
            let mut extra = TcpStream::connect(addr).unwrap();
            extra
                .set_read_timeout(Some(Duration::from_secs(3)))
                .unwrap();
            let mut buf = [0_u8; 1];
            let extra_result = extra.read(&mut buf);
            drop(idle);
            // Once they are gone, requests are served again.
            std::thread::sleep(Duration::from_millis(300));
            let served = fetch(addr, "/livez", Duration::from_secs(5));
            (
                extra_result.map_err(|e| e.kind()),
                served.map(|r| r.0).map_err(|e| e.to_string()),
            )
        })
        .await
        .unwrap();
        assert!(
            matches!(result.0, Ok(0) | Err(std::io::ErrorKind::ConnectionReset)),
            "the connection over the cap was held: {:?}",
            result.0
        );
        assert_eq!(result.1, Ok(200));
        server.abort();
    }

    #[tokio::test]
    async fn a_silent_client_is_dropped_after_the_header_timeout() {
        let health = Health::new("gw", "0.1.0", "dev");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(listener, Arc::clone(&health)));
        let waited = tokio::task::spawn_blocking(move || {
            let mut idle = TcpStream::connect(addr).unwrap();
            idle.set_read_timeout(Some(HEADER_READ_TIMEOUT * 3))
                .unwrap();
            let start = std::time::Instant::now();
            let mut buf = [0_u8; 512];
            let _ = idle.read(&mut buf);
            start.elapsed()
        })
        .await
        .unwrap();
        assert!(
            waited < HEADER_READ_TIMEOUT * 2,
            "a silent connection was held for {waited:?}"
        );
        server.abort();
    }

    #[tokio::test]
    async fn private_socket_is_owner_only_and_serves_the_same_routes() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let socket = tmp.path().join("run/agent.sock");
        let health = Health::new("gw-sock", "0.1.0", "dev");
        health.set_ready(true);
        let tasks = start(None, &socket, &health).await;
        assert_eq!(tasks.len(), 1);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&socket), 0o600);
        assert_eq!(mode(socket.parent().unwrap()), 0o700);
        let s2 = socket.clone();
        let (ready, status) = tokio::task::spawn_blocking(move || {
            (
                fetch_private(&s2, "/readyz", Duration::from_secs(5)).unwrap(),
                fetch_private(&s2, "/status", Duration::from_secs(5)).unwrap(),
            )
        })
        .await
        .unwrap();
        assert_eq!(ready.0, 200);
        assert!(status.1.contains("gw-sock"), "{}", status.1);
        for t in tasks {
            t.abort();
        }

        // The client accepts a private directory owned by the agent's user (root runs `status`
        // and the updater against /run/badge-agent, which belongs to badge-agent).
        let agents = tmp.path().join("agents");
        std::fs::create_dir(&agents).unwrap();
        std::fs::set_permissions(&agents, std::fs::Permissions::from_mode(0o700)).unwrap();
        let theirs = agents.join("agent.sock");
        let listener = std::os::unix::net::UnixListener::bind(&theirs).unwrap();
        std::thread::spawn(move || {
            use std::io::Write;
            if let Ok((mut s, _)) = listener.accept() {
                let mut buf = [0_u8; 512];
                let _ = std::io::Read::read(&mut s, &mut buf);
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
            }
        });
        let other = if crate::update::effective_uid() == 0 {
            std::os::unix::fs::chown(&agents, Some(4242), None).unwrap();
            true
        } else {
            false
        };
        let answer = fetch_private(&theirs, "/readyz", Duration::from_secs(5));
        assert_eq!(answer.unwrap().0, 200, "owned by another user: {other}");

        // A directory others can write is refused on both sides.
        let open_dir = tmp.path().join("open");
        std::fs::create_dir(&open_dir).unwrap();
        std::fs::set_permissions(&open_dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let err = bind_private_socket(&open_dir.join("agent.sock")).unwrap_err();
        assert!(err.contains("writable by group or others"), "{err}");
        let planted = open_dir.join("planted.sock");
        let _squatter = std::os::unix::net::UnixListener::bind(&planted).unwrap();
        let err = fetch_private(&planted, "/status", Duration::from_secs(1)).unwrap_err();
        assert!(matches!(err, FetchError::Untrusted { .. }), "{err}");
        // A link is not a socket.
        let link = tmp.path().join("run/link.sock");
        std::os::unix::fs::symlink(&planted, &link).unwrap();
        let err = fetch_private(&link, "/status", Duration::from_secs(1)).unwrap_err();
        assert!(matches!(err, FetchError::Untrusted { .. }), "{err}");
    }
}
