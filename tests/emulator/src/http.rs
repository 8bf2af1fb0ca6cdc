//! A small HTTP/1.1 server codec: read one request (Content-Length or chunked body, with a size
//! cap), write one response. Hand-written so faults can close the socket at any point.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest accepted request head.
const MAX_HEAD: usize = 64 * 1024;

/// Oversized bodies up to this size are read and discarded before the 413 is sent.
const DRAIN_CAP: usize = 64 * 1024 * 1024;

/// A parsed request.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// Method, e.g. `POST`.
    pub method: String,
    /// Raw path (still percent-encoded), without the query.
    pub path: String,
    /// Query parameters, percent-decoded (`+` as space).
    pub query: Vec<(String, String)>,
    /// Headers (names lower-cased).
    pub headers: Vec<(String, String)>,
    /// The body as received on the wire (still compressed).
    pub body: Vec<u8>,
    /// Whether the client asked to close the connection after this request.
    pub close: bool,
}

impl Request {
    /// First header with this (lower-case) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// First query parameter with this name.
    pub fn query(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Why reading a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The peer closed the connection cleanly between requests.
    #[error("connection closed")]
    Closed,
    /// I/O error.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// Not valid HTTP/1.1.
    #[error("bad request: {0}")]
    Bad(String),
    /// The body exceeds the cap (the request head was read).
    #[error("body of {0} bytes exceeds the limit")]
    TooLarge(usize),
}

/// Decodes a query string (`a=b&c=d`).
pub fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (form_decode(k), form_decode(v))
        })
        .collect()
}

/// Percent-decodes a form/query component (`+` = space).
pub fn form_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(&s.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

/// Percent-decodes a path segment (`+` stays `+`).
pub fn path_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// Reads one request. `buf` carries bytes read past the previous request.
pub async fn read_request<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
    max_body: usize,
) -> Result<Request, ReadError> {
    let (req, kind) = read_head(s, buf).await?;
    read_body(s, buf, req, kind, max_body).await
}

/// How the body of a request is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// `Content-Length` (0 when absent).
    Length(usize),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

impl Request {
    /// Whether the client waits for `100 Continue` before sending the body (curl does for large bodies).
    pub fn expects_continue(&self) -> bool {
        self.header("expect")
            .is_some_and(|e| e.eq_ignore_ascii_case("100-continue"))
    }
}

/// Reads a request head (the body is left unread).
pub async fn read_head<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
) -> Result<(Request, BodyKind), ReadError> {
    let (head_len, req, body_kind) = loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut r = httparse::Request::new(&mut headers);
        match r.parse(buf) {
            Ok(httparse::Status::Complete(n)) => {
                let target = r.path.unwrap_or("/");
                let (path, q) = target.split_once('?').unwrap_or((target, ""));
                let headers: Vec<(String, String)> = r
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_ascii_lowercase(),
                            String::from_utf8_lossy(h.value).trim().to_string(),
                        )
                    })
                    .collect();
                let mut req = Request {
                    method: r.method.unwrap_or("").to_string(),
                    path: path.to_string(),
                    query: parse_query(q),
                    headers,
                    body: Vec::new(),
                    close: r.version == Some(0),
                };
                if let Some(c) = req.header("connection") {
                    if c.eq_ignore_ascii_case("close") {
                        req.close = true;
                    } else if c.eq_ignore_ascii_case("keep-alive") {
                        req.close = false;
                    }
                }
                let chunked = req
                    .header("transfer-encoding")
                    .is_some_and(|t| t.to_ascii_lowercase().contains("chunked"));
                let kind = if chunked {
                    None
                } else {
                    let len = match req.header("content-length") {
                        Some(v) => v
                            .parse::<usize>()
                            .map_err(|_| ReadError::Bad("bad Content-Length".into()))?,
                        None => 0,
                    };
                    Some(len)
                };
                break (n, req, kind);
            }
            Ok(httparse::Status::Partial) => {
                if buf.len() > MAX_HEAD {
                    return Err(ReadError::Bad("request head too large".into()));
                }
                if fill(s, buf).await? == 0 {
                    return Err(if buf.is_empty() {
                        ReadError::Closed
                    } else {
                        ReadError::Bad("truncated head".into())
                    });
                }
            }
            Err(e) => return Err(ReadError::Bad(e.to_string())),
        }
    };
    buf.drain(..head_len);
    Ok((req, body_kind.map_or(BodyKind::Chunked, BodyKind::Length)))
}

/// Reads the body of a request whose head [`read_head`] returned.
pub async fn read_body<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
    mut req: Request,
    kind: BodyKind,
    max_body: usize,
) -> Result<Request, ReadError> {
    match kind {
        BodyKind::Length(len) => {
            if len > max_body {
                // Read and discard a moderately oversized body so the client, still sending,
                // gets to read the 413 instead of a connection reset.
                if len <= DRAIN_CAP {
                    let mut left = len;
                    let take = left.min(buf.len());
                    buf.drain(..take);
                    left -= take;
                    let mut tmp = vec![0u8; 64 * 1024];
                    while left > 0 {
                        let n = s.read(&mut tmp[..left.min(64 * 1024)]).await?;
                        if n == 0 {
                            break;
                        }
                        left -= n;
                    }
                }
                return Err(ReadError::TooLarge(len));
            }
            while buf.len() < len {
                if fill(s, buf).await? == 0 {
                    return Err(ReadError::Bad("truncated body".into()));
                }
            }
            req.body = buf.drain(..len).collect();
        }
        BodyKind::Chunked => req.body = read_chunked(s, buf, max_body).await?,
    }
    Ok(req)
}

async fn fill<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>) -> Result<usize, ReadError> {
    let mut tmp = [0u8; 16 * 1024];
    let n = s.read(&mut tmp).await?;
    buf.extend_from_slice(&tmp[..n]);
    Ok(n)
}

async fn read_line<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
) -> Result<String, ReadError> {
    loop {
        if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
            let line = String::from_utf8_lossy(&buf[..i]).into_owned();
            buf.drain(..i + 2);
            return Ok(line);
        }
        if buf.len() > MAX_HEAD {
            return Err(ReadError::Bad("chunk line too long".into()));
        }
        if fill(s, buf).await? == 0 {
            return Err(ReadError::Bad("truncated chunked body".into()));
        }
    }
}

async fn read_chunked<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
    max_body: usize,
) -> Result<Vec<u8>, ReadError> {
    let mut body = Vec::new();
    loop {
        let line = read_line(s, buf).await?;
        let size_hex = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|_| ReadError::Bad("bad chunk size".into()))?;
        if size == 0 {
            // Trailers until an empty line.
            while !read_line(s, buf).await?.is_empty() {}
            return Ok(body);
        }
        if body.len().saturating_add(size) > max_body {
            return Err(ReadError::TooLarge(body.len().saturating_add(size)));
        }
        while buf.len() < size + 2 {
            if fill(s, buf).await? == 0 {
                return Err(ReadError::Bad("truncated chunk".into()));
            }
        }
        body.extend(buf.drain(..size));
        buf.drain(..2);
    }
}

/// A response to write.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Content type (omitted when the body is empty and this is empty).
    pub content_type: &'static str,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl Response {
    /// JSON response.
    pub fn json(status: u16, v: &serde_json::Value) -> Self {
        Self {
            status,
            content_type: "application/json",
            body: v.to_string().into_bytes(),
        }
    }

    /// Plain-text response.
    pub fn text(status: u16, s: impl Into<String>) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: s.into().into_bytes(),
        }
    }

    /// Response without a body.
    pub fn empty(status: u16) -> Self {
        Self {
            status,
            content_type: "",
            body: Vec::new(),
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Payload Too Large",
        415 => "Unsupported Media Type",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Writes a response.
pub async fn write_response<S: AsyncWrite + Unpin>(
    s: &mut S,
    r: &Response,
    close: bool,
) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\ncontent-length: {}\r\n",
        r.status,
        reason(r.status),
        r.body.len()
    );
    if !r.content_type.is_empty() {
        head.push_str(&format!("content-type: {}\r\n", r.content_type));
    }
    if close {
        head.push_str("connection: close\r\n");
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(&r.body);
    s.write_all(&out).await?;
    s.flush().await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    async fn read(raw: &[u8], max: usize) -> (Result<Request, ReadError>, Vec<u8>) {
        let mut s = raw;
        let mut buf = Vec::new();
        let r = read_request(&mut s, &mut buf, max).await;
        (r, buf)
    }

    #[tokio::test]
    async fn content_length_keepalive_and_pipelining() {
        let raw = b"POST /a%20b?x=1&y=a%2Fb+c HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\n\r\n";
        let (r, rest) = read(raw, 100).await;
        let r = r.unwrap();
        assert_eq!(
            (r.method.as_str(), r.path.as_str(), &r.body[..]),
            ("POST", "/a%20b", &b"abc"[..])
        );
        assert_eq!(r.query("y"), Some("a/b c"));
        assert!(!r.close);
        assert!(rest.starts_with(b"GET /"));
    }

    #[tokio::test]
    async fn chunked_body() {
        let raw = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        let r = read(raw, 100).await.0.unwrap();
        assert_eq!(r.body, b"abcde");
        assert!(r.close);
    }

    #[tokio::test]
    async fn random_input_never_panics() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let prefixes: [&[u8]; 4] = [
            b"",
            b"POST /x HTTP/1.1\r\n",
            b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"PUT /x?%zz=%&&=& HTTP/1.1\r\nContent-Length: 20\r\n\r\n",
        ];
        for i in 0..4000 {
            let len = rng.random_range(0..200);
            let mut v = prefixes[i % 4].to_vec();
            v.extend((0..len).map(|_| rng.random::<u8>()));
            let _ = read(&v, 64).await;
            let _ = crate::ndjson::parse_ndjson(&v);
            let _ = crate::model::Sequencers::decode(&String::from_utf8_lossy(&v));
            let _ = parse_query(&String::from_utf8_lossy(&v));
        }
    }

    #[tokio::test]
    async fn limits_and_garbage() {
        let (r, _) = read(b"POST / HTTP/1.1\r\nContent-Length: 101\r\n\r\n", 100).await;
        assert!(matches!(r, Err(ReadError::TooLarge(101))));
        let (r, _) = read(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n65\r\n",
            100,
        )
        .await;
        assert!(matches!(r, Err(ReadError::TooLarge(_))));
        for bad in [
            &b"\x00\x01garbage\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nab",
            b"GET / HT",
        ] {
            assert!(matches!(read(bad, 100).await.0, Err(ReadError::Bad(_))));
        }
        assert!(matches!(read(b"", 100).await.0, Err(ReadError::Closed)));
        assert!(matches!(
            read(
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                100
            )
            .await
            .0,
            Err(ReadError::Bad(_))
        ));
    }
}
