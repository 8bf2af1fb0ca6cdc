//! The I/O shell: sends an [`HttpRequest`] with `ureq` over rustls and returns status + body.
//!
//! * TLS 1.2+ verified against the system roots (rustls-native-certs, which honours
//!   `SSL_CERT_FILE`/`SSL_CERT_DIR`) plus an optional extra PEM CA file. There is no way to turn
//!   verification off.
//! * Proxy: the configured proxy, else `HTTPS_PROXY`/`https_proxy`; hosts matching
//!   `NO_PROXY`/`no_proxy` go direct. NO_PROXY matching is done here (curl semantics: suffix match
//!   on domain boundaries, IPs and CIDRs, `*`), choosing between a direct and a proxied agent.
//! * Timeouts: connect and overall, on every call. No redirects are followed.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use super::error::SnowpipeError;
use super::protocol::HttpRequest;
use super::retry::TransportError;

/// Largest response body read (answers are small JSON; a bigger one is hostile or broken).
pub const MAX_RESPONSE_BYTES: u64 = 1024 * 1024;

/// A response: status and (bounded) body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// HTTP status.
    pub status: u16,
    /// Body bytes (decompressed if the server used gzip).
    pub body: Vec<u8>,
}

/// Sends requests. The real one is [`UreqTransport`]; tests script one.
pub trait HttpTransport: Send + Sync {
    /// Sends `req` once (no retries here) and returns the answer, whatever its status.
    fn execute(&self, req: &HttpRequest) -> Result<HttpResponse, TransportError>;
}

/// Timeouts for every call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP + TLS connect.
    pub connect: Duration,
    /// Whole request, from resolve to the last body byte.
    pub overall: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(10),
            overall: Duration::from_secs(30),
        }
    }
}

/// Parsed `NO_PROXY` list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NoProxy {
    all: bool,
    domains: Vec<String>,
    nets: Vec<(IpAddr, u8)>,
}

impl NoProxy {
    /// Parses a comma- (or space-) separated list: `*`, host names (`example.com` matches it and
    /// its subdomains; a leading `.` or `*.` is ignored), IP addresses and CIDRs; `:port` suffixes
    /// are ignored.
    pub fn parse(list: &str) -> Self {
        let mut np = NoProxy::default();
        for raw in list
            .split([',', ' ', '\t'])
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            if raw == "*" {
                np.all = true;
                continue;
            }
            if let Some((ip, bits)) = raw.split_once('/') {
                if let (Ok(ip), Ok(bits)) = (
                    ip.trim_matches(['[', ']']).parse::<IpAddr>(),
                    bits.parse::<u8>(),
                ) {
                    let max = if ip.is_ipv4() { 32 } else { 128 };
                    np.nets.push((ip, bits.min(max)));
                }
                continue;
            }
            let host = raw.trim_start_matches("*.").trim_start_matches('.');
            let host = strip_port(host);
            if let Ok(ip) = host.trim_matches(['[', ']']).parse::<IpAddr>() {
                let bits = if ip.is_ipv4() { 32 } else { 128 };
                np.nets.push((ip, bits));
            } else if !host.is_empty() {
                np.domains.push(host.to_ascii_lowercase());
            }
        }
        np
    }

    /// From `NO_PROXY`, else `no_proxy`.
    pub fn from_env() -> Self {
        std::env::var("NO_PROXY")
            .or_else(|_| std::env::var("no_proxy"))
            .map(|v| Self::parse(&v))
            .unwrap_or_default()
    }

    /// Whether `host` (name or IP, no port) bypasses the proxy.
    pub fn matches(&self, host: &str) -> bool {
        if self.all {
            return true;
        }
        let host = host.trim_matches(['[', ']']).trim_end_matches('.');
        if let Ok(ip) = host.parse::<IpAddr>() {
            return self.nets.iter().any(|(net, bits)| ip_in(ip, *net, *bits));
        }
        let host = host.to_ascii_lowercase();
        self.domains.iter().any(|d| {
            host == *d
                || (host.len() > d.len()
                    && host.ends_with(d.as_str())
                    && host.as_bytes()[host.len() - d.len() - 1] == b'.')
        })
    }
}

fn strip_port(h: &str) -> &str {
    // `[v6]:port`, `host:port`; a bare IPv6 address has several colons and is left alone.
    if let Some(rest) = h.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match h.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            name
        }
        _ => h,
    }
}

fn ip_in(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = if bits == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(bits.min(32)))
            };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = if bits == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(bits.min(128)))
            };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// The proxy to use: the configured one wins; else `HTTPS_PROXY`, then `https_proxy`.
pub fn proxy_from(config: Option<&str>) -> Option<String> {
    config
        .map(str::to_string)
        .or_else(|| {
            ["HTTPS_PROXY", "https_proxy"]
                .iter()
                .find_map(|k| std::env::var(k).ok())
        })
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
}

/// A proxy URL with any `user:password@` replaced, for logs and `Debug`.
pub fn redact_proxy(url: &str) -> String {
    match url.rsplit_once('@') {
        Some((before, host)) => {
            let scheme = before.split_once("://").map(|(s, _)| s);
            match scheme {
                Some(s) => format!("{s}://[redacted]@{host}"),
                None => format!("[redacted]@{host}"),
            }
        }
        None => url.to_string(),
    }
}

/// Loads the trust roots: the system store plus `extra_ca_file` (PEM). Fails when the extra file
/// has no usable certificate, or when no root at all is available.
pub fn load_roots(
    extra_ca_file: Option<&Path>,
) -> Result<Vec<CertificateDer<'static>>, SnowpipeError> {
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::warn!(error = %e, "some system CA certificates could not be loaded");
    }
    let mut roots = native.certs;
    if let Some(path) = extra_ca_file {
        let cfg = |m: String| SnowpipeError::Config {
            message: format!("extra_ca_file {}: {m}", path.display()),
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| cfg(format!("cannot read: {e}")))?
            .collect::<Result<_, _>>()
            .map_err(|e| cfg(format!("not a PEM certificate file: {e}")))?;
        if certs.is_empty() {
            return Err(cfg("contains no `BEGIN CERTIFICATE` block".into()));
        }
        let mut store = rustls::RootCertStore::empty();
        for c in &certs {
            store
                .add(c.clone())
                .map_err(|e| cfg(format!("unusable CA certificate: {e}")))?;
        }
        roots.extend(certs);
    }
    if roots.is_empty() {
        return Err(SnowpipeError::Config {
            message: "no trusted CA certificates: install the system CA bundle (ca-certificates) \
                      or set extra_ca_file"
                .into(),
        });
    }
    Ok(roots)
}

/// The real transport: `ureq` agents (direct and, if a proxy is set, proxied).
pub struct UreqTransport {
    direct: ureq::Agent,
    proxied: Option<ureq::Agent>,
    no_proxy: NoProxy,
}

impl std::fmt::Debug for UreqTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UreqTransport")
            .field("proxied", &self.proxied.is_some())
            .field("no_proxy", &self.no_proxy)
            .finish()
    }
}

impl UreqTransport {
    /// Builds the agents. `proxy` is the resolved proxy URL (see [`proxy_from`]).
    pub fn new(
        roots: &[CertificateDer<'static>],
        proxy: Option<&str>,
        no_proxy: NoProxy,
        timeouts: Timeouts,
    ) -> Result<Self, SnowpipeError> {
        let certs: Vec<ureq::tls::Certificate<'static>> = roots
            .iter()
            .map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned())
            .collect();
        let tls = ureq::tls::TlsConfig::builder()
            .provider(ureq::tls::TlsProvider::Rustls)
            .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
            .unversioned_rustls_crypto_provider(std::sync::Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .build();
        let build = |proxy: Option<ureq::Proxy>| {
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .https_only(true)
                .max_redirects(0)
                .tls_config(tls.clone())
                .proxy(proxy)
                .timeout_connect(Some(timeouts.connect))
                .timeout_global(Some(timeouts.overall))
                .build()
                .new_agent()
        };
        let proxied = match proxy {
            Some(p) => {
                // Only HTTP CONNECT proxies: ureq is built without SOCKS support, and a SOCKS URL
                // must not silently fall back to a direct connection.
                let scheme = p.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
                if !matches!(scheme.as_deref(), None | Some("http") | Some("https")) {
                    return Err(SnowpipeError::Config {
                        message: format!(
                            "proxy {}: only http:// or https:// (CONNECT) proxies are supported",
                            redact_proxy(p)
                        ),
                    });
                }
                let parsed = ureq::Proxy::new(p).map_err(|e| SnowpipeError::Config {
                    message: format!(
                        "proxy URL is invalid ({e}); expected e.g. http://proxy.lan:3128"
                    ),
                })?;
                Some(build(Some(parsed)))
            }
            None => None,
        };
        Ok(UreqTransport {
            direct: build(None),
            proxied,
            no_proxy,
        })
    }

    fn agent_for(&self, host: &str) -> &ureq::Agent {
        match &self.proxied {
            Some(p) if !self.no_proxy.matches(host) => p,
            _ => &self.direct,
        }
    }
}

impl HttpTransport for UreqTransport {
    fn execute(&self, req: &HttpRequest) -> Result<HttpResponse, TransportError> {
        let mut builder = ureq::http::Request::builder()
            .method(req.method.as_str())
            .uri(&req.url);
        for (name, value) in &req.headers {
            builder = builder.header(*name, value);
        }
        let agent = self.agent_for(req.host());
        let build_err =
            |e: ureq::http::Error| TransportError::Config(format!("cannot build request: {e}"));
        let result = match &req.body {
            Some(body) => agent.run(builder.body(body.as_slice()).map_err(build_err)?),
            None => agent.run(builder.body(()).map_err(build_err)?),
        };
        let mut resp = result.map_err(|e| map_err(e, req.host()))?;
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .with_config()
            .limit(MAX_RESPONSE_BYTES)
            .read_to_vec()
            .map_err(|e| map_err(e, req.host()))?;
        Ok(HttpResponse { status, body })
    }
}

/// Maps ureq's error to the retry classifier's categories.
fn map_err(e: ureq::Error, host: &str) -> TransportError {
    use ureq::Error as E;
    match e {
        E::Timeout(t) => TransportError::Timeout(format!("{t} ({host})")),
        E::HostNotFound => TransportError::Dns(host.to_string()),
        E::Rustls(r) => TransportError::Tls(r.to_string()),
        E::Tls(m) => TransportError::Tls(m.to_string()),
        E::Io(io) => {
            if let Some(r) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                return TransportError::Tls(r.to_string());
            }
            match io.kind() {
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => {
                    TransportError::Timeout(format!("{io} ({host})"))
                }
                _ => TransportError::Connect(format!("{io} ({host})")),
            }
        }
        E::BodyExceedsLimit(n) => TransportError::Protocol(format!("answer body over {n} bytes")),
        E::BadUri(u) => TransportError::Config(format!("bad URL {u}")),
        E::InvalidProxyUrl => TransportError::Config("invalid proxy URL".into()),
        E::RequireHttpsOnly(u) => TransportError::Config(format!("refusing non-HTTPS URL {u}")),
        E::Protocol(p) => TransportError::Protocol(p.to_string()),
        E::ConnectionFailed | E::ConnectProxyFailed(_) => {
            TransportError::Connect(format!("{e} ({host})"))
        }
        other => TransportError::Connect(format!("{other} ({host})")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::snowpipe::protocol::Method;

    #[test]
    fn no_proxy_matching() {
        let np = NoProxy::parse(" localhost, .internal.lan,*.corp.example , 127.0.0.1,10.0.0.0/8, [::1], snowflake.example:443");
        for yes in [
            "localhost",
            "LOCALHOST",
            "a.internal.lan",
            "internal.lan",
            "x.y.corp.example",
            "127.0.0.1",
            "10.1.2.3",
            "::1",
            "[::1]",
            "snowflake.example",
            "acct.snowflake.example",
        ] {
            assert!(np.matches(yes), "{yes}");
        }
        for no in [
            "notlocalhost",
            "internal.lan.evil.com",
            "xinternal.lan",
            "127.0.0.2",
            "11.0.0.1",
            "myorg.snowflakecomputing.com",
            "::2",
        ] {
            assert!(!np.matches(no), "{no}");
        }
        assert!(NoProxy::parse("*").matches("anything.example"));
        assert!(!NoProxy::parse("").matches("localhost"));
        assert!(NoProxy::parse("192.168.0.0/16").matches("192.168.44.1"));
        assert!(!NoProxy::parse("192.168.0.0/16").matches("192.169.0.1"));
        assert!(NoProxy::parse("0.0.0.0/0").matches("8.8.8.8"));
    }

    #[test]
    fn extra_ca_file_errors() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "nothing here\n").unwrap();
        let e = load_roots(Some(&empty)).unwrap_err().to_string();
        assert!(
            e.contains("no `BEGIN CERTIFICATE`") && e.contains("empty.pem"),
            "{e}"
        );
        let junk = dir.path().join("junk.pem");
        std::fs::write(
            &junk,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let e = load_roots(Some(&junk)).unwrap_err().to_string();
        assert!(e.contains("junk.pem"), "{e}");
        let e = load_roots(Some(&dir.path().join("missing.pem")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot read"), "{e}");
    }

    #[test]
    fn invalid_proxy_is_a_config_error() {
        let roots = vec![];
        for bad in ["ftp://x:1", "socks5://u:secret@x:1080", "http://[::1"] {
            let e = UreqTransport::new(&roots, Some(bad), NoProxy::default(), Timeouts::default())
                .unwrap_err();
            assert!(matches!(e, SnowpipeError::Config { .. }), "{e}");
            assert!(!e.to_string().contains("secret"), "{e}");
        }
        assert_eq!(
            redact_proxy("http://u:pw@proxy:3128"),
            "http://[redacted]@proxy:3128"
        );
        assert_eq!(redact_proxy("proxy:3128"), "proxy:3128");
        let t = UreqTransport::new(
            &roots,
            Some("http://127.0.0.1:9"),
            NoProxy::parse("127.0.0.1"),
            Timeouts::default(),
        )
        .unwrap();
        assert!(std::ptr::eq(t.agent_for("127.0.0.1"), &t.direct));
        assert!(!std::ptr::eq(t.agent_for("acct.example"), &t.direct));
    }

    /// With a (dead) proxy configured, a host outside NO_PROXY goes to the proxy (connection
    /// refused, not a DNS failure for `.invalid`), while a NO_PROXY host is dialled directly.
    #[test]
    fn proxy_and_no_proxy_routing() {
        use std::io::Read;
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead_port = dead.local_addr().unwrap().port();
        drop(dead);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 64];
            let _ = s.read(&mut buf);
        });
        let t = UreqTransport::new(
            &[],
            Some(&format!("http://127.0.0.1:{dead_port}")),
            NoProxy::parse("127.0.0.1"),
            Timeouts {
                connect: Duration::from_secs(2),
                overall: Duration::from_secs(5),
            },
        )
        .unwrap();
        let req = |url: String| HttpRequest {
            op: crate::snowpipe::protocol::Op::Hostname,
            method: Method::Get,
            url,
            headers: vec![],
            body: None,
        };
        let via_proxy = t
            .execute(&req("https://acct.example.invalid/x".into()))
            .unwrap_err();
        assert!(
            matches!(via_proxy, TransportError::Connect(_)),
            "{via_proxy:?}"
        );
        // Direct: reaches our listener (which then hangs up: some transport error, not Connect to
        // the proxy port).
        let direct = t
            .execute(&req(format!("https://127.0.0.1:{port}/x")))
            .unwrap_err();
        assert!(
            !direct.to_string().contains(&dead_port.to_string()),
            "{direct:?}"
        );
        server.join().unwrap();
    }

    /// A plain-TCP "server" that answers garbage instead of a TLS handshake: the transport must
    /// fail cleanly (no panic) with a transport error, within the timeout.
    #[test]
    fn non_tls_server_is_a_transport_error() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            if let Ok((mut s, _)) = listener.accept() {
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf);
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
            }
        });
        let roots = load_roots(None).unwrap_or_default();
        let t = UreqTransport::new(
            &roots,
            None,
            NoProxy::default(),
            Timeouts {
                connect: Duration::from_secs(2),
                overall: Duration::from_secs(5),
            },
        )
        .unwrap();
        let req = HttpRequest {
            op: super::super::protocol::Op::Hostname,
            method: Method::Get,
            url: format!("https://127.0.0.1:{port}/v2/streaming/hostname"),
            headers: vec![],
            body: None,
        };
        let err = t.execute(&req).unwrap_err();
        assert!(!matches!(err, TransportError::Config(_)), "{err}");
        server.join().unwrap();
    }
}
