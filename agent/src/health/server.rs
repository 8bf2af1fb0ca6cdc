//! A deliberately tiny HTTP/1.1 listener for `/metrics`, `/livez`, `/readyz` and `/status`.
//!
//! It answers one GET per connection and closes it. Requests are capped in size and time so a
//! stuck or hostile client cannot hold the agent's memory; it binds to loopback by default.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::Health;

const MAX_REQUEST_BYTES: usize = 8 * 1024;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

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

    fn to_bytes(&self, head_only: bool) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            503 => "Service Unavailable",
            _ => "",
        };
        let mut out = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n\r\n",
            self.status,
            self.content_type,
            self.body.len()
        )
        .into_bytes();
        if !head_only {
            out.extend_from_slice(self.body.as_bytes());
        }
        out
    }
}

/// Parses the request line of a request head: `(method, path without query)`.
pub fn parse_request_line(head: &[u8]) -> Option<(&str, &str)> {
    let line_end = head.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&head[..line_end]).ok()?;
    let mut parts = line.split(' ');
    let method = parts.next()?;
    let target = parts.next()?;
    let version = parts.next()?;
    if parts.next().is_some() || !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return None;
    }
    let path = target.split('?').next().unwrap_or(target);
    Some((method, path))
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
                Response::text(503, "not ready\n")
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

/// Serves until the task is dropped.
pub async fn serve(listener: TcpListener, health: Arc<Health>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            // Out of file descriptors and the like: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let health = Arc::clone(&health);
        tokio::spawn(async move {
            let mut head = Vec::with_capacity(512);
            let read = tokio::time::timeout(REQUEST_TIMEOUT, async {
                let mut chunk = [0_u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = stream.read(&mut chunk).await?;
                    if n == 0 || head.len() + n > MAX_REQUEST_BYTES {
                        break;
                    }
                    head.extend_from_slice(&chunk[..n]);
                }
                Ok::<_, std::io::Error>(())
            })
            .await;
            if !matches!(read, Ok(Ok(()))) {
                return;
            }
            let (response, head_only) = match parse_request_line(&head) {
                Some((method, path)) => (route(&health, method, path), method == "HEAD"),
                None => (Response::text(400, "bad request\n"), false),
            };
            let _ = stream.write_all(&response.to_bytes(head_only)).await;
            let _ = stream.shutdown().await;
        });
    }
}

/// Errors of [`fetch`].
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Nothing listens there, or the connection broke.
    #[error("cannot reach the agent at {addr}: {source}")]
    Io {
        /// Where we tried.
        addr: SocketAddr,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The answer was not HTTP.
    #[error("the agent at {0} answered something that is not HTTP")]
    Malformed(SocketAddr),
}

/// Fetches a path from a running agent's health listener: `(status, body)`.
pub fn fetch(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(u16, String), FetchError> {
    let io = |source| FetchError::Io { addr, source };
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(io)?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(io)?;
    let mut raw = Vec::new();
    stream
        .take(16 * 1024 * 1024)
        .read_to_end(&mut raw)
        .map_err(io)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or(FetchError::Malformed(addr))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or(FetchError::Malformed(addr))?;
    Ok((status, body.to_owned()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn request_line_parsing() {
        assert_eq!(
            parse_request_line(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n"),
            Some(("GET", "/metrics"))
        );
        assert_eq!(parse_request_line(b"GET /metrics HTTP/1.1"), None);
        assert_eq!(parse_request_line(b"GET metrics HTTP/1.1\r\n"), None);
        assert_eq!(parse_request_line(b"\xff\xfe /x HTTP/1.1\r\n"), None);
        assert_eq!(parse_request_line(b"GET / SPDY/3\r\n"), None);
        assert_eq!(parse_request_line(b"GET / HTTP/1.1 extra\r\n"), None);
    }

    #[test]
    fn routes() {
        let health = Health::new("gw", "0.1.0", "dev");
        assert_eq!(route(&health, "POST", "/metrics").status, 405);
        assert_eq!(route(&health, "GET", "/nope").status, 404);
        assert_eq!(route(&health, "GET", "/readyz").status, 503);
        health.set_ready(true);
        assert_eq!(route(&health, "GET", "/readyz").status, 200);
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
            s.write_all(&[0xff; 9000]).unwrap();
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
        server.abort();
    }
}
