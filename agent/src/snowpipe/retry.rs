//! Retry policy, sans I/O: how each answer is classified (`docs/snowpipe-wire.md`), exponential
//! backoff with jitter, the per-channel request-rate limiter, and the injectable clock.

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::protocol::{parse_error_body, ApiError, Op};

/// A transport-level failure (no HTTP status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransportError {
    /// Connect or overall timeout.
    Timeout(String),
    /// The host name did not resolve.
    Dns(String),
    /// TCP connection refused/reset/unreachable, proxy failure, broken stream.
    Connect(String),
    /// Certificate verification or handshake failure.
    Tls(String),
    /// The answer was too large or not HTTP.
    Protocol(String),
    /// Local misconfiguration (bad URL, bad proxy URL).
    Config(String),
}

impl std::fmt::Display for TransportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TransportError::Timeout(s) => write!(f, "timeout: {s}"),
            TransportError::Dns(s) => write!(f, "host not found: {s}"),
            TransportError::Connect(s) => write!(f, "connection failed: {s}"),
            TransportError::Tls(s) => write!(f, "TLS: {s}"),
            TransportError::Protocol(s) => write!(f, "bad HTTP answer: {s}"),
            TransportError::Config(s) => write!(f, "configuration: {s}"),
        }
    }
}

/// What to do with one attempt's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// 2xx: parse the body.
    Success,
    /// 401: get a fresh token (scoped on the ingest host, JWT on the control host) and resend the
    /// same request (same requestId, retryCount+1, same continuation token).
    RefreshAuth,
    /// Back off with jitter and resend the same request (429, 5xx, misclassified 404, transport).
    Backoff {
        /// Why (for the final Unavailable error).
        reason: String,
        /// This was a 404 without a Snowflake body (counted separately).
        misclassified_404: bool,
    },
    /// 409 on open: uncommitted data in flight; retry, then force with `fail_on_uncommitted_rows=false`.
    Conflict,
    /// Append rejected (400, 404 with a Snowflake code, other 4xx): the channel must be reopened.
    ChannelInvalid(ApiError),
    /// The call was refused; retrying will not help.
    Fatal {
        /// HTTP status (0 for transport).
        status: u16,
        /// The Snowflake error, if the body had one.
        error: Option<ApiError>,
    },
    /// TLS verification failed; retrying will not help.
    Tls(String),
    /// Local configuration error (URL, proxy).
    Config(String),
}

/// Classifies one attempt. Pure: the body is only inspected for a Snowflake error code.
pub fn classify(op: Op, outcome: &Result<(u16, &[u8]), TransportError>) -> Disposition {
    let (status, body) = match outcome {
        Ok((s, b)) => (*s, *b),
        Err(TransportError::Tls(d)) => return Disposition::Tls(d.clone()),
        Err(TransportError::Config(d)) => return Disposition::Config(d.clone()),
        Err(e) => {
            return Disposition::Backoff {
                reason: e.to_string(),
                misclassified_404: false,
            }
        }
    };
    let api = || parse_error_body(body);
    match status {
        200..=299 => Disposition::Success,
        401 => Disposition::RefreshAuth,
        408 | 429 | 500 | 502 | 503 | 504 => Disposition::Backoff {
            reason: format!("HTTP {status}"),
            misclassified_404: false,
        },
        404 => match api() {
            // A 404 without a Snowflake error body came from a load balancer, not the service.
            None if op != Op::Hostname => Disposition::Backoff {
                reason: "HTTP 404 without a Snowflake error body".into(),
                misclassified_404: true,
            },
            Some(e) if op == Op::Append => Disposition::ChannelInvalid(e),
            error => Disposition::Fatal { status, error },
        },
        409 if op == Op::OpenChannel => Disposition::Conflict,
        400..=499 if op == Op::Append => Disposition::ChannelInvalid(api().unwrap_or(ApiError {
            code: format!("HTTP_{status}"),
            message: String::new(),
        })),
        // Other 5xx (501, 505, …) are server trouble too.
        500..=599 => Disposition::Backoff {
            reason: format!("HTTP {status}"),
            misclassified_404: false,
        },
        _ => Disposition::Fatal {
            status,
            error: api(),
        },
    }
}

/// Retry limits for one call.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts per call (first try included) before giving up with `Unavailable`.
    pub max_attempts: u32,
    /// Wall time per call after which no further backoff is started.
    pub max_elapsed: Duration,
    /// Backoff shape.
    pub backoff: Backoff,
    /// Consecutive 401s tolerated per call (each followed by a token refresh).
    pub max_auth_refreshes: u32,
    /// 409 retries on open before the forced `fail_on_uncommitted_rows=false` open.
    pub open_conflict_retries: u32,
    /// 404-without-body retries per call before the 404 is taken at face value.
    pub misclassified_404_retries: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 8,
            max_elapsed: Duration::from_secs(120),
            backoff: Backoff::default(),
            max_auth_refreshes: 3,
            open_conflict_retries: 3,
            misclassified_404_retries: 3,
        }
    }
}

/// Exponential backoff: `initial × multiplier^n`, capped, with ± `jitter` proportional noise.
#[derive(Debug, Clone, PartialEq)]
pub struct Backoff {
    /// First delay (1 s, as the official client).
    pub initial: Duration,
    /// Growth factor (2).
    pub multiplier: f64,
    /// Cap (60 s).
    pub max: Duration,
    /// Proportional jitter in [0, 1] (0.5: the delay is drawn from [0.5×, 1.5×]).
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_secs(1),
            multiplier: 2.0,
            max: Duration::from_secs(60),
            jitter: 0.5,
        }
    }
}

impl Backoff {
    /// Delay before retry number `retry` (0-based), given a uniform random `unit` in [0, 1).
    pub fn delay(&self, retry: u32, unit: f64) -> Duration {
        let base = self.initial.as_secs_f64() * self.multiplier.powi(retry.min(64) as i32);
        let base = base.min(self.max.as_secs_f64());
        let jitter = self.jitter.clamp(0.0, 1.0);
        let factor = 1.0 + jitter * (2.0 * unit.clamp(0.0, 1.0) - 1.0);
        Duration::from_secs_f64((base * factor).clamp(0.0, self.max.as_secs_f64()))
    }
}

/// Sliding-window limiter: at most `max` requests in any `window` (10 per second per channel).
#[derive(Debug, Clone)]
pub struct RateLimiter {
    max: usize,
    window: Duration,
    sent: VecDeque<Instant>,
}

impl RateLimiter {
    /// A limiter allowing `max` requests per `window`.
    pub fn new(max: usize, window: Duration) -> Self {
        RateLimiter {
            max: max.max(1),
            window,
            sent: VecDeque::new(),
        }
    }

    /// How long to wait at `now` before the next request may go out (zero when it may go now).
    pub fn wait(&mut self, now: Instant) -> Duration {
        while let Some(&t) = self.sent.front() {
            if now.saturating_duration_since(t) >= self.window {
                self.sent.pop_front();
            } else {
                break;
            }
        }
        if self.sent.len() < self.max {
            return Duration::ZERO;
        }
        match self.sent.front() {
            Some(&oldest) => (oldest + self.window).saturating_duration_since(now),
            None => Duration::ZERO,
        }
    }

    /// Records a request sent at `now`.
    pub fn record(&mut self, now: Instant) {
        self.sent.push_back(now);
        while self.sent.len() > self.max {
            self.sent.pop_front();
        }
    }
}

/// Time source and sleeper, injectable so that retry tests run instantly.
pub trait Clock: Send + Sync {
    /// Monotonic now.
    fn now(&self) -> Instant;
    /// Wall-clock seconds since the Unix epoch (JWT `iat`, token expiry).
    fn unix_secs(&self) -> u64;
    /// Wall-clock milliseconds since the Unix epoch (append timestamps).
    fn unix_millis(&self) -> u64;
    /// Blocks for `d`.
    fn sleep(&self, d: Duration);
}

/// The real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
    fn unix_secs(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }
    fn unix_millis(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
    fn sleep(&self, d: Duration) {
        std::thread::sleep(d)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn c(op: Op, status: u16, body: &str) -> Disposition {
        classify(op, &Ok((status, body.as_bytes())))
    }

    const STALE: &str = r#"{"code":"STALE_CONTINUATION_TOKEN_SEQUENCER","message":"stale"}"#;
    const GONE: &str = r#"{"code":"ERR_CHANNEL_DOES_NOT_EXIST_OR_NOT_AUTHORIZED","message":"x"}"#;

    fn is_backoff(d: &Disposition) -> bool {
        matches!(d, Disposition::Backoff { .. })
    }

    #[test]
    fn classification_table() {
        use Op::*;
        let all = [
            Hostname,
            Token,
            OpenChannel,
            Append,
            ChannelStatus,
            DropChannel,
        ];
        for op in all {
            assert_eq!(c(op, 200, ""), Disposition::Success, "{op}");
            assert_eq!(c(op, 204, ""), Disposition::Success, "{op}");
            assert_eq!(c(op, 401, ""), Disposition::RefreshAuth, "{op}");
            for s in [408, 429, 500, 502, 503, 504, 507] {
                assert!(is_backoff(&c(op, s, "")), "{op} {s}");
                assert!(is_backoff(&c(op, s, STALE)), "{op} {s}");
            }
            for e in [
                TransportError::Timeout("t".into()),
                TransportError::Dns("d".into()),
                TransportError::Connect("c".into()),
                TransportError::Protocol("p".into()),
            ] {
                assert!(is_backoff(&classify(op, &Err(e))), "{op}");
            }
            assert_eq!(
                classify(op, &Err(TransportError::Tls("bad cert".into()))),
                Disposition::Tls("bad cert".into())
            );
        }
        // Misclassified 404 (empty / non-Snowflake body) is retried, except on hostname where a
        // 404 means the account URL is wrong.
        for op in [Token, OpenChannel, Append, ChannelStatus, DropChannel] {
            for body in ["", "Not Found", "<html>404</html>", "{}"] {
                assert_eq!(
                    c(op, 404, body),
                    Disposition::Backoff {
                        reason: "HTTP 404 without a Snowflake error body".into(),
                        misclassified_404: true
                    },
                    "{op} {body:?}"
                );
            }
        }
        assert!(matches!(
            c(Hostname, 404, ""),
            Disposition::Fatal {
                status: 404,
                error: None
            }
        ));

        // Append: 400 and 404-with-code invalidate the channel; so does any other 4xx.
        match c(Append, 400, STALE) {
            Disposition::ChannelInvalid(e) => {
                assert_eq!(e.code, "STALE_CONTINUATION_TOKEN_SEQUENCER")
            }
            d => panic!("{d:?}"),
        }
        match c(Append, 404, GONE) {
            Disposition::ChannelInvalid(e) => {
                assert_eq!(e.code, "ERR_CHANNEL_DOES_NOT_EXIST_OR_NOT_AUTHORIZED")
            }
            d => panic!("{d:?}"),
        }
        match c(Append, 400, "garbage") {
            Disposition::ChannelInvalid(e) => assert_eq!(e.code, "HTTP_400"),
            d => panic!("{d:?}"),
        }
        for s in [403, 409, 413, 422] {
            assert!(
                matches!(c(Append, s, ""), Disposition::ChannelInvalid(_)),
                "{s}"
            );
        }

        // Open: 409 is the uncommitted-data conflict; 400/404-with-code are surfaced.
        assert_eq!(
            c(
                OpenChannel,
                409,
                r#"{"code":"ERR_CHANNEL_HAS_UNCOMMITTED_DATA"}"#
            ),
            Disposition::Conflict
        );
        assert!(matches!(
            c(OpenChannel, 400, STALE),
            Disposition::Fatal { status: 400, .. }
        ));
        match c(OpenChannel, 404, GONE) {
            Disposition::Fatal {
                status: 404,
                error: Some(e),
            } => {
                assert_eq!(e.code, "ERR_CHANNEL_DOES_NOT_EXIST_OR_NOT_AUTHORIZED")
            }
            d => panic!("{d:?}"),
        }
        for op in [Hostname, Token, ChannelStatus, DropChannel] {
            assert!(
                matches!(c(op, 400, ""), Disposition::Fatal { status: 400, .. }),
                "{op}"
            );
            assert!(
                matches!(c(op, 403, ""), Disposition::Fatal { status: 403, .. }),
                "{op}"
            );
            assert!(
                matches!(c(op, 409, ""), Disposition::Fatal { status: 409, .. }),
                "{op}"
            );
        }
        assert!(matches!(
            c(ChannelStatus, 404, GONE),
            Disposition::Fatal { status: 404, .. }
        ));
        // 3xx is never followed (no redirects): surfaced.
        assert!(matches!(
            c(Append, 302, ""),
            Disposition::Fatal { status: 302, .. }
        ));
    }

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let b = Backoff::default();
        assert_eq!(b.delay(0, 0.5), Duration::from_secs(1));
        assert_eq!(b.delay(1, 0.5), Duration::from_secs(2));
        assert_eq!(b.delay(2, 0.5), Duration::from_secs(4));
        assert_eq!(b.delay(10, 0.5), Duration::from_secs(60));
        assert_eq!(b.delay(1000, 0.5), Duration::from_secs(60));
        assert_eq!(b.delay(0, 0.0), Duration::from_millis(500));
        assert!(b.delay(0, 0.999) > Duration::from_millis(1490));
        assert!(b.delay(10, 0.999) <= Duration::from_secs(60));
        let none = Backoff {
            jitter: 0.0,
            ..Backoff::default()
        };
        assert_eq!(none.delay(3, 0.9), Duration::from_secs(8));
    }

    #[test]
    fn rate_limiter_ten_per_second() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(10, Duration::from_secs(1));
        for i in 0..10 {
            let now = t0 + Duration::from_millis(i * 10);
            assert_eq!(rl.wait(now), Duration::ZERO, "request {i}");
            rl.record(now);
        }
        let now = t0 + Duration::from_millis(100);
        assert_eq!(rl.wait(now), Duration::from_millis(900));
        // After the wait the oldest slot frees up.
        let later = now + Duration::from_millis(900);
        assert_eq!(rl.wait(later), Duration::ZERO);
        rl.record(later);
        assert_eq!(rl.wait(later), Duration::from_millis(10));
        // Spread-out requests never wait.
        let mut rl = RateLimiter::new(10, Duration::from_secs(1));
        for i in 0..100 {
            let now = t0 + Duration::from_millis(i * 100);
            assert_eq!(rl.wait(now), Duration::ZERO);
            rl.record(now);
        }
    }
}
