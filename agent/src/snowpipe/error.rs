//! The one error type of the Snowpipe client.
//!
//! Every message is written for an operator reading the journal: it says what failed and what to
//! check. No message ever contains a token, a JWT or key material.

use std::path::PathBuf;
use std::time::Duration;

use super::protocol::Op;

/// What went wrong talking to Snowflake, classified by what the caller must do about it.
///
/// * [`SnowpipeError::is_channel_invalid`] — reopen the channel, rewind to the committed offset
///   token + 1, and never use the old continuation token again.
/// * [`SnowpipeError::is_transient`] — back off and try again later (offline, throttled, server
///   trouble); nothing is wrong with the configuration.
/// * anything else needs an operator (configuration, key registration, TLS trust, names, grants),
///   although the drain still backs off and retries rather than exiting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnowpipeError {
    /// Snowflake (or this client, for a continuation token it knows is stale) invalidated the
    /// channel. The caller must reopen the channel and resend from committed + 1.
    #[error(
        "channel {channel:?} is invalid ({code}: {message}); reopen it and resend from the last committed offset token"
    )]
    ChannelInvalid {
        /// The channel name.
        channel: String,
        /// HTTP status (0 when the client itself refused a stale continuation token).
        status: u16,
        /// Snowflake error code, e.g. `STALE_CONTINUATION_TOKEN_SEQUENCER`.
        code: String,
        /// Snowflake's message (truncated).
        message: String,
    },

    /// Retries ran out: Snowflake is unreachable, throttling or failing. Back off and try later.
    #[error(
        "{op}: Snowflake unavailable after {attempts} attempt(s) in {elapsed:?}: {last}{hint}"
    )]
    Unavailable {
        /// The operation that gave up.
        op: Op,
        /// Attempts made.
        attempts: u32,
        /// Time spent.
        elapsed: Duration,
        /// The last failure seen (status or transport error).
        last: String,
        /// Operator hint (may be empty), starting with "; ".
        hint: String,
    },

    /// The account URL or account name looks wrong (host unknown, hostname endpoint missing).
    #[error("{message} — check `account` and `url` in [snowflake] (org-account form, e.g. myorg-myaccount)")]
    WrongAccount {
        /// What was observed.
        message: String,
    },

    /// Key-pair authentication was rejected.
    #[error("{message}")]
    Auth {
        /// What failed and what to check (fingerprint, user, role, clock).
        message: String,
    },

    /// The private key file is unusable (permissions, format).
    #[error("private key {}: {message}", path.display())]
    Key {
        /// The key file.
        path: PathBuf,
        /// What is wrong and how to fix it.
        message: String,
    },

    /// The client configuration is invalid (URL, CA file, proxy, names).
    #[error("snowpipe configuration: {message}")]
    Config {
        /// What is wrong and how to fix it.
        message: String,
    },

    /// The server's certificate could not be verified.
    #[error(
        "TLS verification failed for {host}: {detail} — if a TLS-inspecting proxy is in the path, put its CA in `extra_ca_file`; also check the system clock (NTP)"
    )]
    Tls {
        /// The host being contacted.
        host: String,
        /// The verifier's reason.
        detail: String,
    },

    /// Snowflake refused a request (4xx other than the ones above) — usually names or grants.
    #[error("{op} refused by Snowflake (HTTP {status}{}): {message}{hint}", code.as_deref().map(|c| format!(", {c}")).unwrap_or_default())]
    Rejected {
        /// The operation.
        op: Op,
        /// HTTP status.
        status: u16,
        /// Snowflake error code, when the body had one.
        code: Option<String>,
        /// Snowflake's message (truncated).
        message: String,
        /// Operator hint (may be empty), starting with "; ".
        hint: String,
    },

    /// The channel opened but its status is not `SUCCESS`.
    #[error("channel {channel:?} opened with status {status_code:?} instead of SUCCESS")]
    ChannelUnhealthy {
        /// The channel name.
        channel: String,
        /// The status code Snowflake reported.
        status_code: String,
    },

    /// The answer was malformed or hostile (bad JSON, missing fields, oversized body).
    #[error("{op}: unexpected answer from Snowflake (HTTP {status}): {message}")]
    Protocol {
        /// The operation.
        op: Op,
        /// HTTP status of the answer.
        status: u16,
        /// What was wrong with it.
        message: String,
    },

    /// The agent is stopping: the call was abandoned (a wait cut short, or a request left
    /// without its answer). Nothing is lost: the drain resumes from the committed offset token.
    #[error("stopped while talking to Snowflake")]
    Stopped,

    /// The rows handed to the batcher cannot be sent (order, size, framing).
    #[error("batch: {message}")]
    Batch {
        /// What is wrong.
        message: String,
    },
}

impl SnowpipeError {
    /// The channel must be reopened and the drain rewound to committed + 1.
    pub fn is_channel_invalid(&self) -> bool {
        matches!(self, SnowpipeError::ChannelInvalid { .. })
    }

    /// Retrying later may succeed without operator action (offline, throttled, server trouble).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            SnowpipeError::Unavailable { .. }
                | SnowpipeError::ChannelUnhealthy { .. }
                | SnowpipeError::Stopped
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_helpers() {
        let inv = SnowpipeError::ChannelInvalid {
            channel: "c".into(),
            status: 400,
            code: "X".into(),
            message: "m".into(),
        };
        assert!(inv.is_channel_invalid() && !inv.is_transient());
        let un = SnowpipeError::Unavailable {
            op: Op::Append,
            attempts: 3,
            elapsed: Duration::from_secs(1),
            last: "HTTP 503".into(),
            hint: String::new(),
        };
        assert!(un.is_transient() && !un.is_channel_invalid());
        let cfg = SnowpipeError::Config {
            message: "x".into(),
        };
        assert!(!cfg.is_transient() && !cfg.is_channel_invalid());
    }
}
