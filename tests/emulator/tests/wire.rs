//! Wire-level tests of the running emulator over real TLS: auth, routing, limits, faults, admin
//! endpoints, the ledger file and the binary's startup line.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use snowpipe_emulator::{
    auth, Emulator, EmulatorConfig, EmulatorHandle, FaultAction, FaultRule, Op, PipeId,
};

fn key() -> &'static rsa::RsaPrivateKey {
    static K: OnceLock<rsa::RsaPrivateKey> = OnceLock::new();
    K.get_or_init(|| rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap())
}

fn public_pem() -> String {
    key()
        .to_public_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap()
}

fn keypair_jwt() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let fp = auth::fingerprint(&key().to_public_key()).unwrap();
    let claims = json!({"iss": format!("MYORG-MYACCT.INGEST_USER.SHA256:{fp}"), "sub": "MYORG-MYACCT.INGEST_USER",
                        "iat": now, "exp": now + 3_540_000});
    let pem = key().to_pkcs8_pem(LineEnding::LF).unwrap();
    jsonwebtoken::encode(
        &Header::new(Algorithm::RS256),
        &claims,
        &EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
    )
    .unwrap()
}

fn start(dir: &tempfile::TempDir) -> EmulatorHandle {
    Emulator::start(EmulatorConfig {
        pipes: vec![PipeId::parse("DB1.SCH1.PIPE1").unwrap()],
        public_keys_pem: vec![public_pem()],
        commit_delay: Duration::from_millis(50),
        ledger_file: Some(dir.path().join("ledger.ndjson")),
        ..EmulatorConfig::default()
    })
    .unwrap()
}

#[derive(Debug)]
struct Resp {
    status: u16,
    content_type: String,
    body: Vec<u8>,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One request on a fresh TLS connection. `None` when the server closed without a response.
fn call(
    addr: SocketAddr,
    ca: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Option<Resp> {
    // Blocking std I/O on purpose: a 4 MB write through tokio-rustls once stalled here for good
    // (both sides idle, the last ~15 KB never handed to the socket), hanging CI.
    use std::io::{Read as _, Write as _};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.as_bytes()).unwrap())
        .unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let conn =
        rustls::ClientConnection::new(Arc::new(cfg), ServerName::try_from("127.0.0.1").unwrap())
            .unwrap();
    let tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    tcp.set_write_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let mut head = format!("{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\ncontent-length: {}\r\n", body.len());
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut req = head.into_bytes();
    req.extend_from_slice(body);
    // A server may answer (413) before reading everything: still try to read the response.
    let _ = tls.write_all(&req).and_then(|()| tls.flush());
    assert_eq!(tls.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    let mut raw = Vec::new();
    // The emulator closes without close_notify: the "unexpected EOF" error still leaves `raw`.
    let _ = tls.read_to_end(&mut raw);
    if raw.is_empty() {
        return None;
    }
    let mut hs = [httparse::EMPTY_HEADER; 32];
    let mut r = httparse::Response::new(&mut hs);
    let n = match r.parse(&raw).unwrap() {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => panic!("partial response"),
    };
    let ct = r
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-type"))
        .map(|h| String::from_utf8_lossy(h.value).into_owned());
    Some(Resp {
        status: r.code.unwrap(),
        content_type: ct.unwrap_or_default(),
        body: raw[n..].to_vec(),
    })
}

struct Client<'a> {
    emu: &'a EmulatorHandle,
    scoped: String,
}

impl Client<'_> {
    fn control(&self, method: &str, path: &str, body: &[u8]) -> Option<Resp> {
        let jwt = keypair_jwt();
        let auth = format!("Bearer {jwt}");
        call(
            self.emu.addr,
            self.emu.ca_pem(),
            method,
            path,
            &[
                ("authorization", &auth),
                ("x-snowflake-authorization-token-type", "KEYPAIR_JWT"),
            ],
            body,
        )
    }

    fn ingest(
        &self,
        method: &str,
        path: &str,
        extra: &[(&str, &str)],
        body: &[u8],
    ) -> Option<Resp> {
        let auth = format!("Bearer {}", self.scoped);
        let mut h = vec![
            ("authorization", auth.as_str()),
            ("x-snowflake-authorization-token-type", "OAUTH"),
        ];
        h.extend_from_slice(extra);
        call(self.emu.addr, self.emu.ca_pem(), method, path, &h, body)
    }

    fn refresh(&mut self) {
        let r = self
            .control(
                "POST",
                "/oauth/token",
                b"grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&scope=127.0.0.1",
            )
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        self.scoped = r.text();
    }

    fn open(&self, channel: &str, body: Value) -> Resp {
        self.ingest(
            "PUT",
            &format!("/v2/streaming/databases/db1/schemas/sch1/pipes/pipe1/channels/{channel}"),
            &[("content-type", "application/json")],
            body.to_string().as_bytes(),
        )
        .unwrap()
    }

    fn append(
        &self,
        channel: &str,
        token: &str,
        start: u64,
        end: u64,
        body: &[u8],
        encoding: Option<&str>,
    ) -> Option<Resp> {
        let path = format!("/v2/streaming/data/databases/DB1/schemas/SCH1/pipes/PIPE1/channels/{channel}/rows?startOffsetToken={start}&endOffsetToken={end}&continuationToken={token}&requestId=x&retryCount=0");
        let mut h = vec![("content-type", "application/x-ndjson")];
        if let Some(e) = encoding {
            h.push(("content-encoding", e));
        }
        self.ingest("POST", &path, &h, body)
    }

    fn status(&self, names: &[&str]) -> Value {
        let r = self
            .ingest(
                "POST",
                "/v2/streaming/databases/DB1/schemas/SCH1/pipes/PIPE1:bulk-channel-status",
                &[],
                json!({"channel_names": names}).to_string().as_bytes(),
            )
            .unwrap();
        assert_eq!(r.status, 200);
        r.json()["channel_statuses"].clone()
    }

    fn wait_committed(&self, channel: &str, token: &str) {
        for _ in 0..200 {
            if self.status(&[channel])[channel]["last_committed_offset_token"] == token {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("{channel} never committed {token}");
    }
}

fn client(emu: &EmulatorHandle) -> Client<'_> {
    let mut c = Client {
        emu,
        scoped: String::new(),
    };
    c.refresh();
    c
}

#[test]
fn control_host_auth_and_token_shape() {
    let dir = tempfile::tempdir().unwrap();
    let emu = start(&dir);
    let c = client(&emu);
    let r = c
        .control(
            "GET",
            "/v2/streaming/hostname?requestId=1&retryCount=0",
            b"",
        )
        .unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "127.0.0.1"));
    assert!(r.content_type.starts_with("text/plain"));
    // No token / wrong token type / garbage token → 401 with a code.
    for h in [
        vec![],
        vec![
            ("authorization", "Bearer nope"),
            ("x-snowflake-authorization-token-type", "KEYPAIR_JWT"),
        ],
    ] {
        let r = call(
            emu.addr,
            emu.ca_pem(),
            "GET",
            "/v2/streaming/hostname",
            &h,
            b"",
        )
        .unwrap();
        assert_eq!(r.status, 401);
        assert!(r.json()["code"].is_string());
    }
    let jwt = format!("Bearer {}", keypair_jwt());
    let r = call(
        emu.addr,
        emu.ca_pem(),
        "GET",
        "/v2/streaming/hostname",
        &[
            ("authorization", &jwt),
            ("x-snowflake-authorization-token-type", "OAUTH"),
        ],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 401);
    // Scoped token: raw JWT text, exp in seconds, unique jti.
    let t = &c.scoped;
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(t.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let exp = claims["exp"].as_i64().unwrap();
    assert!(
        (now + 3500..=now + 3601).contains(&exp),
        "exp {exp} is seconds"
    );
    let mut c2 = client(&emu);
    c2.refresh();
    assert_ne!(c2.scoped, c.scoped);
    // Wrong scope / grant type → 400.
    let r = c
        .control(
            "POST",
            "/oauth/token",
            b"grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&scope=evil.example",
        )
        .unwrap();
    assert_eq!(r.status, 400);
    let r = c
        .control(
            "POST",
            "/oauth/token",
            b"grant_type=password&scope=127.0.0.1",
        )
        .unwrap();
    assert_eq!(r.status, 400);
    // Telemetry answer the client parses.
    let r = c
        .control("POST", "/telemetry/send/sessionless", b"{\"logs\":[]}")
        .unwrap();
    assert_eq!(r.json()["data"], "Log Received");
    // Ingest calls refuse the key-pair JWT and a scoped token without the OAUTH type header.
    let r = call(
        emu.addr,
        emu.ca_pem(),
        "POST",
        "/v2/streaming/databases/DB1/schemas/SCH1/pipes/PIPE1:bulk-channel-status",
        &[
            ("authorization", &jwt),
            ("x-snowflake-authorization-token-type", "OAUTH"),
        ],
        b"{}",
    )
    .unwrap();
    assert_eq!(r.status, 401);
    let scoped = format!("Bearer {}", c.scoped);
    let r = call(
        emu.addr,
        emu.ca_pem(),
        "POST",
        "/v2/streaming/databases/DB1/schemas/SCH1/pipes/PIPE1:bulk-channel-status",
        &[("authorization", &scoped)],
        b"{}",
    )
    .unwrap();
    assert_eq!(r.status, 401);
    // pipe-info: 16-byte key.
    let r = c
        .ingest(
            "POST",
            "/v2/streaming/databases/DB1/schemas/SCH1/pipes/PIPE1:pipe-info",
            &[],
            b"{\"generate_new_token\":true}",
        )
        .unwrap();
    let key = base64::engine::general_purpose::STANDARD
        .decode(r.json()["encryption_info"]["pipe_key"].as_str().unwrap())
        .unwrap();
    assert_eq!(key.len(), 16);
}

#[test]
fn channel_lifecycle_over_the_wire() {
    let dir = tempfile::tempdir().unwrap();
    let emu = start(&dir);
    let mut c = client(&emu);
    // Unknown pipe → 404 with a Snowflake code.
    let r = c
        .ingest(
            "PUT",
            "/v2/streaming/databases/DB1/schemas/SCH1/pipes/NOPE/channels/c",
            &[],
            b"{}",
        )
        .unwrap();
    assert_eq!(r.status, 404);
    assert!(r.json()["code"].as_str().unwrap().starts_with("ERR_"));
    // Percent-encoded channel names.
    let r = c.open(
        "gw-01%2Frfid%20A",
        json!({"fail_on_uncommitted_rows": true}),
    );
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["channel_status"]["channel_name"], "gw-01/rfid A");
    assert_eq!(v["channel_status"]["channel_status_code"], "SUCCESS");
    let t0 = v["next_continuation_token"].as_str().unwrap().to_string();
    // gzip body with CRLF and blank lines, one bad row.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(b"{\"n\":1}\r\n\r\n{\"n\":2}\n[3]\n").unwrap();
    let r = c
        .append(
            "gw-01%2Frfid%20A",
            &t0,
            1,
            3,
            &gz.finish().unwrap(),
            Some("gzip"),
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let t1 = r.json()["next_continuation_token"]
        .as_str()
        .unwrap()
        .to_string();
    // Replaying the same token is idempotent.
    let r = c
        .append("gw-01%2Frfid%20A", &t0, 1, 3, b"{\"n\":1}\n", None)
        .unwrap();
    assert_eq!(r.json()["next_continuation_token"], t1.as_str());
    c.wait_committed("gw-01/rfid A", "3");
    let st = &c.status(&["gw-01/rfid A", "ghost"]);
    assert_eq!(st.as_object().unwrap().len(), 1);
    assert_eq!(st["gw-01/rfid A"]["rows_error_count"], 1);
    assert_eq!(st["gw-01/rfid A"]["rows_inserted"], 2);
    assert_eq!(emu.ledger("gw-01/rfid A").len(), 2);
    // zstd body; then a reopen makes t2 stale.
    let z = zstd::encode_all(&b"{\"n\":4}\n"[..], 3).unwrap();
    let r = c
        .append("gw-01%2Frfid%20A", &t1, 4, 4, &z, Some("zstd"))
        .unwrap();
    assert_eq!(r.status, 200);
    let t2 = r.json()["next_continuation_token"]
        .as_str()
        .unwrap()
        .to_string();
    c.wait_committed("gw-01/rfid A", "4");
    assert_eq!(c.open("gw-01%2Frfid%20A", json!({})).status, 200);
    let r = c
        .append("gw-01%2Frfid%20A", &t2, 5, 5, b"{\"n\":5}\n", None)
        .unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["code"], "STALE_CONTINUATION_TOKEN_SEQUENCER");
    // Admin endpoints: ledger NDJSON with offset tokens, channels.
    let adm = call(
        emu.addr,
        emu.ca_pem(),
        "GET",
        "/admin/ledger?channel=gw-01%2Frfid%20A",
        &[],
        b"",
    )
    .unwrap();
    assert_eq!(adm.content_type, "application/x-ndjson");
    let rows: Vec<Value> = adm
        .text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        rows.iter()
            .map(|r| r["offset_token"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["3", "3", "4"]
    );
    let chans = call(emu.addr, emu.ca_pem(), "GET", "/admin/channels", &[], b"")
        .unwrap()
        .json();
    assert_eq!(chans.as_array().unwrap().len(), 1);
    // Ledger file has the same rows.
    let file = std::fs::read_to_string(dir.path().join("ledger.ndjson")).unwrap();
    assert_eq!(file.lines().count(), 3);
    // Expire tokens via admin → 401, refresh → 200.
    assert_eq!(
        call(
            emu.addr,
            emu.ca_pem(),
            "POST",
            "/admin/expire-tokens",
            &[],
            b""
        )
        .unwrap()
        .status,
        200
    );
    assert_eq!(c.open("x", json!({})).status, 401);
    c.refresh();
    // DELETE → {}.
    let r = c
        .ingest(
            "DELETE",
            "/v2/streaming/databases/DB1/schemas/SCH1/pipes/PIPE1/channels/gw-01%2Frfid%20A",
            &[],
            b"",
        )
        .unwrap();
    assert_eq!((r.status, r.json()), (200, json!({})));
    assert!(c.status(&["gw-01/rfid A"]).as_object().unwrap().is_empty());
    // Admin commit: a batch due in 10 minutes commits on request.
    emu.set_commit_delay(Duration::from_secs(600));
    let t = c.open("slow", json!({})).json()["next_continuation_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(c.append("slow", &t, 1, 1, b"{}", None).unwrap().status, 200);
    std::thread::sleep(Duration::from_millis(100));
    assert!(emu.ledger("slow").is_empty());
    assert_eq!(
        call(emu.addr, emu.ca_pem(), "POST", "/admin/commit", &[], b"")
            .unwrap()
            .status,
        200
    );
    assert_eq!(emu.ledger("slow").len(), 1);
    // Reset clears everything.
    assert_eq!(
        call(emu.addr, emu.ca_pem(), "POST", "/admin/reset", &[], b"")
            .unwrap()
            .status,
        200
    );
    assert!(emu.ledger_all().is_empty());
    emu.shutdown();
}

#[test]
fn four_megabyte_limit_on_the_wire() {
    let dir = tempfile::tempdir().unwrap();
    let emu = start(&dir);
    let c = client(&emu);
    let t0 = c.open("big", json!({})).json()["next_continuation_token"]
        .as_str()
        .unwrap()
        .to_string();
    let row_at = |len: usize| {
        let mut b = b"{\"pad\":\"".to_vec();
        b.resize(len - 3, b'x');
        b.extend_from_slice(b"\"}\n");
        b
    };
    let exact = row_at(4_194_304);
    assert_eq!(exact.len(), 4_194_304);
    let r = c.append("big", &t0, 1, 1, &exact, None).unwrap();
    assert_eq!(r.status, 200, "exactly 4 MiB is accepted");
    let t1 = r.json()["next_continuation_token"]
        .as_str()
        .unwrap()
        .to_string();
    let r = c
        .append("big", &t1, 2, 2, &row_at(4_194_305), None)
        .unwrap();
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["code"], "ERR_PAYLOAD_TOO_LARGE");
    c.wait_committed("big", "1");
}

#[test]
fn injected_faults_over_the_wire() {
    let dir = tempfile::tempdir().unwrap();
    let emu = start(&dir);
    let c = client(&emu);
    let t0 = c.open("f", json!({})).json()["next_continuation_token"]
        .as_str()
        .unwrap()
        .to_string();
    // Admin API adds rules too.
    let r = call(emu.addr, emu.ca_pem(), "POST", "/admin/faults", &[], br#"[{"op":"append","channel":"f","action":"lost-reset"},{"op":"append","channel":"f","nth":2,"action":"reset"},{"op":"status","action":"404-empty"}]"#).unwrap();
    assert_eq!(r.status, 200);
    // 1st: applied, connection reset without a response.
    assert!(c.append("f", &t0, 1, 1, b"{\"n\":1}\n", None).is_none());
    // 2nd: reset before anything is applied.
    assert!(c.append("f", &t0, 1, 1, b"{\"n\":1}\n", None).is_none());
    // 3rd: replay of the applied append → 200, same next token as a fresh one would get.
    let r = c.append("f", &t0, 1, 1, b"{\"n\":1}\n", None).unwrap();
    assert_eq!(r.status, 200);
    let t1 = r.json()["next_continuation_token"]
        .as_str()
        .unwrap()
        .to_string();
    let r = c
        .ingest(
            "POST",
            "/v2/streaming/databases/DB1/schemas/SCH1/pipes/PIPE1:bulk-channel-status",
            &[],
            b"{\"channel_names\":[\"f\"]}",
        )
        .unwrap();
    assert_eq!((r.status, r.body.len()), (404, 0));
    c.wait_committed("f", "1");
    assert_eq!(
        emu.ledger("f").len(),
        1,
        "applied once despite the lost response and the retries"
    );
    // Lib API: 409/429/500/503/404/401/delay/lost-503/expire-tokens.
    for (a, want) in [
        (FaultAction::Conflict, 409),
        (FaultAction::TooManyRequests, 429),
        (FaultAction::InternalError, 500),
        (FaultAction::Unavailable, 503),
        (FaultAction::NotFound, 404),
        (FaultAction::Unauthorized, 401),
    ] {
        emu.add_fault(FaultRule::nth(Op::Open, 1, a));
        let r = c.open("f", json!({}));
        assert_eq!(r.status, want);
        if want != 404 || a == FaultAction::NotFound {
            assert!(r.json()["code"].is_string());
        }
    }
    emu.add_fault(FaultRule::nth(Op::Append, 1, FaultAction::Delay(300)).on_channel("f"));
    let t = std::time::Instant::now();
    let r = c.append("f", &t1, 2, 2, b"{\"n\":2}\n", None).unwrap();
    assert!(t.elapsed() >= Duration::from_millis(300));
    let t2 = r.json()["next_continuation_token"]
        .as_str()
        .unwrap()
        .to_string();
    emu.add_fault(FaultRule::nth(Op::Append, 1, FaultAction::AppliedThen503));
    assert_eq!(
        c.append("f", &t2, 3, 3, b"{\"n\":3}\n", None)
            .unwrap()
            .status,
        503
    );
    assert_eq!(
        c.append("f", &t2, 3, 3, b"{\"n\":3}\n", None)
            .unwrap()
            .status,
        200
    );
    c.wait_committed("f", "3");
    assert_eq!(emu.ledger("f").len(), 3);
    emu.add_fault(FaultRule::nth(Op::Status, 1, FaultAction::ExpireTokens));
    let r = c
        .ingest(
            "POST",
            "/v2/streaming/databases/DB1/schemas/SCH1/pipes/PIPE1:bulk-channel-status",
            &[],
            b"{}",
        )
        .unwrap();
    assert_eq!(r.status, 401);
    let log = emu.requests();
    assert!(log
        .iter()
        .any(|r| r.status == 0 && r.fault.as_deref() == Some("lost-reset")));
    assert!(
        emu.faults().iter().all(|(_, _, fired)| *fired == 1),
        "{:#?}",
        emu.faults()
    );
}

#[test]
fn binary_prints_startup_line_and_serves() {
    let dir = tempfile::tempdir().unwrap();
    let pk = dir.path().join("pub.pem");
    std::fs::write(&pk, public_pem()).unwrap();
    let ca = dir.path().join("ca.pem");
    let plan = dir.path().join("plan.json");
    std::fs::write(
        &plan,
        r#"{"seed": 5, "rules": [{"op": "telemetry", "action": "delay:1", "times": 0}]}"#,
    )
    .unwrap();
    let help = Command::new(env!("CARGO_BIN_EXE_snowpipe-emulator"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for opt in [
        "--port",
        "--ca-pem",
        "--public-key",
        "--pipe",
        "--commit-delay-ms",
        "--token-lifetime-s",
        "--ledger-file",
        "--fault",
        "--faults-file",
        "--fault-seed",
        "--account",
        "--user",
    ] {
        assert!(help.contains(opt), "--help lacks {opt}");
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_snowpipe-emulator"))
        .args([
            "--port",
            "0",
            "--pipe",
            "A.B.C",
            "--fault",
            "op=hostname,action=503",
        ])
        .arg("--faults-file")
        .arg(&plan)
        .arg("--public-key")
        .arg(&pk)
        .arg("--ca-pem")
        .arg(&ca)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let v: Value = serde_json::from_str(&line).unwrap();
    let addr: SocketAddr = v["addr"].as_str().unwrap().parse().unwrap();
    assert!(addr.ip().is_loopback());
    assert_eq!(v["ca_pem"], ca.display().to_string());
    let ca_pem = std::fs::read_to_string(&ca).unwrap();
    let jwt = format!("Bearer {}", keypair_jwt());
    let h = [
        ("authorization", jwt.as_str()),
        ("x-snowflake-authorization-token-type", "KEYPAIR_JWT"),
    ];
    assert_eq!(
        call(addr, &ca_pem, "GET", "/v2/streaming/hostname", &h, b"")
            .unwrap()
            .status,
        503
    );
    assert_eq!(
        call(addr, &ca_pem, "GET", "/v2/streaming/hostname", &h, b"")
            .unwrap()
            .text(),
        "127.0.0.1"
    );
    assert_eq!(
        call(addr, &ca_pem, "GET", "/admin/channels", &[], b"")
            .unwrap()
            .json(),
        json!([])
    );
    let faults = call(addr, &ca_pem, "GET", "/admin/faults", &[], b"")
        .unwrap()
        .json();
    let actions: Vec<&str> = faults
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["rule"]["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["delay:1", "503"],
        "file rules first, then --fault rules"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}
