//! Snowpipe Streaming v2 ("high-performance") REST client, as the official SDK speaks the
//! protocol (`docs/snowpipe-wire.md`).
//!
//! Layout — sans-IO cores with one thin I/O shell:
//!
//! | module | what | I/O |
//! | --- | --- | --- |
//! | [`auth`] | PKCS#8 key loading (0600 enforced), fingerprint, key-pair JWT, scoped-token cache | reads the key file |
//! | [`protocol`] | request builders and response parsers for the six endpoints | none |
//! | [`retry`] | response classification, the per-call retry state machine, backoff with jitter, 10 req/s limiter, clock trait, stop signal | none |
//! | [`batch`] | rows → append requests within the 4 MB limit as sent (the one owner of that limit) | none |
//! | [`redact`] | [`redact::Secret`] and server-text sanitising | none |
//! | [`transport`] | `ureq` + rustls (system roots + extra CA), proxy / NO_PROXY, timeouts | network |
//! | [`client`] | [`SnowpipeClient`]: the blocking calls the drain thread makes | via transport |
//!
//! # How the drain uses it
//!
//! ```no_run
//! # fn demo(sf: &badge_agent::config::SnowflakeConfig) -> Result<(), badge_agent::snowpipe::SnowpipeError> {
//! use badge_agent::snowpipe::{ClientConfig, SnowpipeClient};
//! let mut client = SnowpipeClient::new(ClientConfig::from_snowflake_config(sf))?;
//! let open = client.open_channel("gw-01")?;            // 409 → retry, then forced reopen
//! let committed = open.status.committed_seq().ok().flatten(); // resume at committed + 1
//! # let _ = committed;
//! let rows: Vec<(u64, Vec<u8>)> = vec![(1, br#"{"seq":1}"#.to_vec())];
//! let mut token = open.continuation_token;
//! for batch in client.batches(rows.iter().map(|(s, l)| (*s, l.as_slice())))? {
//!     token = client.append("gw-01", &token, &batch)?;  // same requestId across retries
//! }
//! let status = client.channel_status(&["gw-01"])?;     // None = channel unknown
//! # let _ = status;
//! # Ok(()) }
//! ```
//!
//! Errors: [`SnowpipeError::is_channel_invalid`] → reopen and rewind to committed + 1 (the old
//! continuation token is refused from then on); [`SnowpipeError::is_transient`] → back off (offline,
//! throttled, retries exhausted); everything else names what an operator must fix.

pub mod auth;
pub mod batch;
pub mod client;
pub mod error;
pub mod protocol;
pub mod redact;
pub mod retry;
#[cfg(test)]
pub(crate) mod testing;
pub mod transport;

pub use auth::{
    generate_private_key, load_private_key, public_key_base64_der, public_key_fingerprint,
    write_private_key, KeyPair,
};
pub use batch::{first_batch, split_into_batches, Batch, BatchLimits};
pub use client::{ClientConfig, RequestEvent, RequestObserver, SnowpipeClient};
pub use error::SnowpipeError;
pub use protocol::{ChannelStatus, ContentEncoding, Op, OpenChannel};
pub use retry::{Backoff, Clock, RetryPolicy, StopSignal, SystemClock};
pub use transport::{HttpTransport, Timeouts};
