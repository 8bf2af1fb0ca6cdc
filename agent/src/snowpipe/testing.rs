//! Test doubles for the client: a clock that only moves when slept on, and a scripted server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;

use super::auth::tests::test_key;
use super::auth::KeyPair;
use super::batch::Batch;
use super::client::{ClientConfig, SnowpipeClient};
use super::protocol::{HttpRequest, Op};
use super::retry::{Clock, RetryPolicy, TransportError};
use super::transport::{HttpResponse, HttpTransport};

/// A clock that only moves when slept on (or advanced).
pub(crate) struct FakeClock {
    pub(crate) state: Mutex<(Instant, u64)>,
    pub(crate) sleeps: Mutex<Vec<Duration>>,
}

impl FakeClock {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(FakeClock {
            state: Mutex::new((Instant::now(), 1_800_000_000_000)),
            sleeps: Mutex::new(Vec::new()),
        })
    }
    pub(crate) fn advance(&self, d: Duration) {
        let mut s = self.state.lock().unwrap();
        s.0 += d;
        s.1 += d.as_millis() as u64;
    }
    pub(crate) fn sleeps(&self) -> Vec<Duration> {
        self.sleeps.lock().unwrap().clone()
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Instant {
        self.state.lock().unwrap().0
    }
    fn unix_secs(&self) -> u64 {
        self.state.lock().unwrap().1 / 1000
    }
    fn unix_millis(&self) -> u64 {
        self.state.lock().unwrap().1
    }
    fn sleep(&self, d: Duration) {
        self.sleeps.lock().unwrap().push(d);
        self.advance(d);
    }
}

pub(crate) type Reply = Result<HttpResponse, TransportError>;

/// Scripted server: per-op queues of replies; defaults answer success.
pub(crate) struct Fake {
    pub(crate) clock: Arc<FakeClock>,
    pub(crate) script: Mutex<HashMap<Op, VecDeque<Reply>>>,
    pub(crate) log: Mutex<Vec<HttpRequest>>,
    pub(crate) token_lifetime: Mutex<u64>,
    pub(crate) tokens_issued: Mutex<u32>,
    /// When set, a one-channel service: opens and status report this committed token and each
    /// append commits through its end token at once.
    pub(crate) ledger: Mutex<Option<Option<u64>>>,
}

#[derive(Clone)]
pub(crate) struct FakeHandle(pub(crate) Arc<Fake>);

impl HttpTransport for FakeHandle {
    fn execute(&self, req: &HttpRequest) -> Result<HttpResponse, TransportError> {
        self.0.log.lock().unwrap().push(req.clone());
        if let Some(r) = self
            .0
            .script
            .lock()
            .unwrap()
            .get_mut(&req.op)
            .and_then(|q| q.pop_front())
        {
            return r;
        }
        Ok(self.0.default_reply(req))
    }
}

pub(crate) fn ok(body: &str) -> Reply {
    Ok(HttpResponse {
        status: 200,
        body: body.as_bytes().to_vec(),
    })
}
pub(crate) fn st(status: u16, body: &str) -> Reply {
    Ok(HttpResponse {
        status,
        body: body.as_bytes().to_vec(),
    })
}

pub(crate) fn status_json(channel: &str, committed: Option<&str>, code: &str) -> String {
    serde_json::json!({
        "database_name": "DB1", "schema_name": "SCH1", "pipe_name": "PIPE1", "channel_name": channel,
        "channel_status_code": code, "last_committed_offset_token": committed,
        "created_on_ms": 1, "rows_inserted": 0, "rows_parsed": 0, "rows_error_count": 0
    })
    .to_string()
}

impl Fake {
    pub(crate) fn default_reply(&self, req: &HttpRequest) -> HttpResponse {
        let body = match req.op {
            Op::Hostname => "my_acct.us-west-2.ingest.example.invalid".to_string(),
            Op::Token => {
                let mut n = self.tokens_issued.lock().unwrap();
                *n += 1;
                let exp = self.clock.unix_secs() + *self.token_lifetime.lock().unwrap();
                let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
                format!(
                    "{}.{}.c2ln",
                    b64.encode(br#"{"alg":"HS256"}"#),
                    b64.encode(serde_json::json!({"exp": exp, "jti": *n}).to_string())
                )
            }
            Op::OpenChannel if self.ledger.lock().unwrap().is_some() => {
                let committed = self.ledger.lock().unwrap().flatten().map(|c| c.to_string());
                format!(
                    r#"{{"next_continuation_token":"open-token","channel_status":{}}}"#,
                    status_json("ch1", committed.as_deref(), "SUCCESS")
                )
            }
            Op::Append if self.ledger.lock().unwrap().is_some() => {
                let end = query(&req.url, "endOffsetToken").unwrap().parse().unwrap();
                *self.ledger.lock().unwrap() = Some(Some(end));
                let n = self.log.lock().unwrap().len();
                format!(r#"{{"next_continuation_token":"next-{n}"}}"#)
            }
            Op::ChannelStatus if self.ledger.lock().unwrap().is_some() => {
                let committed = self.ledger.lock().unwrap().flatten().map(|c| c.to_string());
                let v: serde_json::Value =
                    serde_json::from_slice(req.body.as_ref().unwrap()).unwrap();
                let mut m = serde_json::Map::new();
                for n in v["channel_names"].as_array().unwrap() {
                    let n = n.as_str().unwrap();
                    let status = status_json(n, committed.as_deref(), "SUCCESS");
                    m.insert(n.into(), serde_json::from_str(&status).unwrap());
                }
                serde_json::json!({ "channel_statuses": m }).to_string()
            }
            Op::OpenChannel => format!(
                r#"{{"next_continuation_token":"open-token","channel_status":{}}}"#,
                status_json("ch1", Some("5"), "SUCCESS")
            ),
            Op::Append => {
                let n = self.log.lock().unwrap().len();
                format!(r#"{{"next_continuation_token":"next-{n}"}}"#)
            }
            Op::ChannelStatus => {
                let v: serde_json::Value =
                    serde_json::from_slice(req.body.as_ref().unwrap()).unwrap();
                let mut m = serde_json::Map::new();
                for n in v["channel_names"].as_array().unwrap() {
                    let n = n.as_str().unwrap();
                    if n.starts_with("ch") {
                        m.insert(
                            n.into(),
                            serde_json::from_str(&status_json(n, Some("9"), "SUCCESS")).unwrap(),
                        );
                    }
                }
                serde_json::json!({ "channel_statuses": m }).to_string()
            }
            Op::DropChannel => "{}".to_string(),
        };
        HttpResponse {
            status: 200,
            body: body.into_bytes(),
        }
    }
}

pub(crate) struct Harness {
    pub(crate) client: SnowpipeClient,
    pub(crate) fake: Arc<Fake>,
    pub(crate) clock: Arc<FakeClock>,
}

impl Harness {
    pub(crate) fn new() -> Self {
        Self::with_policy(RetryPolicy::default())
    }
    pub(crate) fn with_policy(retry: RetryPolicy) -> Self {
        Self::with_config(|c| c.retry = retry)
    }
    pub(crate) fn with_config(tune: impl FnOnce(&mut ClientConfig)) -> Self {
        let clock = FakeClock::new();
        let fake = Arc::new(Fake {
            clock: clock.clone(),
            script: Mutex::new(HashMap::new()),
            log: Mutex::new(Vec::new()),
            token_lifetime: Mutex::new(3600),
            tokens_issued: Mutex::new(0),
            ledger: Mutex::new(None),
        });
        let mut cfg = ClientConfig::new(
            "https://myorg-my_acct.snowflakecomputing.com:8443/",
            "myorg-my_acct",
            "ingest_user",
            Some("INGEST_ROLE".into()),
            "/nonexistent",
            "DB1",
            "SCH1",
            "PIPE1",
        );
        tune(&mut cfg);
        let keys = KeyPair::from_private_key(test_key()).unwrap();
        let client = SnowpipeClient::with_parts(
            cfg,
            keys,
            Box::new(FakeHandle(fake.clone())),
            clock.clone(),
        )
        .unwrap();
        Harness {
            client,
            fake,
            clock,
        }
    }
    pub(crate) fn script(&self, op: Op, replies: Vec<Reply>) {
        self.fake
            .script
            .lock()
            .unwrap()
            .entry(op)
            .or_default()
            .extend(replies);
    }
    pub(crate) fn log(&self) -> Vec<HttpRequest> {
        self.fake.log.lock().unwrap().clone()
    }
    pub(crate) fn log_of(&self, op: Op) -> Vec<HttpRequest> {
        self.log().into_iter().filter(|r| r.op == op).collect()
    }
    pub(crate) fn batch(&self, from: u64, to: u64) -> Batch {
        let rows: Vec<(u64, Vec<u8>)> = (from..=to)
            .map(|s| (s, format!(r#"{{"seq":{s}}}"#).into_bytes()))
            .collect();
        let mut b = self
            .client
            .batches(rows.iter().map(|(s, l)| (*s, l.as_slice())))
            .unwrap();
        assert_eq!(b.len(), 1);
        b.remove(0)
    }
}

pub(crate) fn query(url: &str, key: &str) -> Option<String> {
    url.split_once('?')?.1.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.to_string())
    })
}
