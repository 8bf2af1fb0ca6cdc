//! Exactly-once drain: buffer → Snowpipe Streaming Named channel (`docs/snowpipe-wire.md`,
//! `docs/durability.md`).
//!
//! * [`machine`]: the sans-IO state machine. It decides *what* to do next (open, append from a
//!   sequence number, poll the committed token, delete locally, back off, stop) and learns the
//!   outcome through inputs; no I/O, no clock, no randomness of its own (seeded jitter).
//! * [`driver`]: the thin shell executing those actions against the real [`Buffer`] and an
//!   [`Ingest`] implementation, rendering NDJSON with [`crate::row`].
//!
//! Invariants (checked by the model-based property test in this module's tests):
//!
//! * **I1** — a local record `k` is deleted only if `k ≤` the committed token the service reported.
//! * **I2** — offset tokens sent on a channel session strictly increase (each batch starts after
//!   the previous end; gaps from skipped corrupt records are allowed); after a reopen sending
//!   restarts at `committed + 1`. Resending the *identical* request (401/429/5xx) is the client's
//!   business, below this trait.
//! * **I3** — the rows committed by the service are exactly the acknowledged swipes, each once,
//!   in order — across crashes, invalidations, outages and lost responses.
//! * **I4** — `next_seq` never decreases (the buffer's job; re-checked by the model test).
//!
//! Exactly-once rests on one service property: reopening a channel discards whatever was
//! appended but not committed, and returns the committed token. So after *any* doubtful outcome
//! (channel invalid, offline, lost response) the drain reopens and rewinds to `committed + 1`
//! instead of guessing.
//!
//! [`Buffer`]: crate::buffer::Buffer

pub mod driver;
pub mod machine;

pub use driver::{DrainConfig, DrainEvent, DrainObserver, Drainer, NoopObserver, Step};
pub use machine::{Action, Input, Machine, MachineConfig};

/// The three outcomes the drain distinguishes. Retries of the *same* request (expired token,
/// 429, 5xx, timeouts) happen inside the client before one of these is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IngestError {
    /// The channel's session is no longer valid (stale continuation token, channel reopened
    /// elsewhere, 4xx on append): reopen and rewind to `committed + 1`.
    #[error("channel invalid: {0}")]
    ChannelInvalid(String),
    /// The service cannot be reached or keeps failing (offline, DNS, 5xx after retries): back
    /// off and try again.
    #[error("service unavailable: {0}")]
    Unavailable(String),
    /// Configuration or authorisation is wrong (bad key, missing pipe, no privilege): stop with
    /// a clear error; retrying cannot help.
    #[error("fatal ingest error: {0}")]
    Fatal(String),
}

/// The I/O side of the drain: one Named channel. The Snowpipe client is adapted to this trait.
pub trait Ingest {
    /// Opens (or reopens) the channel, invalidating earlier continuation tokens and discarding
    /// anything appended but not yet committed. Returns the committed offset token (`None` for a
    /// channel that never committed anything).
    fn open(&mut self) -> Result<Option<u64>, IngestError>;
    /// Appends a leading run of `rows` — `(seq, JSON line without its newline)`, sequence numbers
    /// increasing, at least one row — as one request on the current session, with offset
    /// tokens its first and last sequence number, and returns that last sequence number. How
    /// many rows fit one request is the implementation's business (the request limits depend
    /// on its encoding); the drain sends the rest next.
    fn append(&mut self, rows: &[(u64, &[u8])]) -> Result<u64, IngestError>;
    /// The channel's current committed offset token.
    fn committed(&mut self) -> Result<Option<u64>, IngestError>;
}

impl<T: Ingest + ?Sized> Ingest for &mut T {
    fn open(&mut self) -> Result<Option<u64>, IngestError> {
        (**self).open()
    }
    fn append(&mut self, rows: &[(u64, &[u8])]) -> Result<u64, IngestError> {
        (**self).append(rows)
    }
    fn committed(&mut self) -> Result<Option<u64>, IngestError> {
        (**self).committed()
    }
}

/// Why the drain stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DrainError {
    /// The service reported a configuration/authorisation problem.
    #[error("drain stopped: {0}")]
    Fatal(String),
    /// More consecutive channel recoveries than allowed; exit so systemd restarts the agent.
    #[error("drain stopped after {count} consecutive channel recoveries (last: {last})")]
    TooManyRecoveries {
        /// Consecutive recoveries attempted.
        count: u32,
        /// The last reason the channel was invalid.
        last: String,
    },
    /// The local buffer failed.
    #[error("drain stopped: buffer error: {0}")]
    Buffer(#[from] crate::buffer::BufferError),
}

#[cfg(test)]
mod model_test;
