//! Durable write-ahead buffer for swipes on sled 0.34 (see `edge-buffering.md` §2–§3).
//!
//! * Tree `q`: `seq` (u64 **big-endian**, so key order is sequence order) → record envelope
//!   ([`record`]: format version + CRC32 + postcard [`SwipeRecord`](crate::row::SwipeRecord)).
//! * Tree `meta`: `next_seq` high-water mark, `last_committed` offset token, record format
//!   version, `seq_confirmed`.
//! * **Acknowledge only what is durable**: [`Buffer::append_durable`] writes a whole batch, then
//!   `flush()` *and* `sync_all()` on every file of the database (sled 0.34's `flush` uses
//!   `sync_file_range`, which is not a device barrier), and only then returns the sequence numbers.
//!   [`GroupCommitter`] batches concurrent swipes (256 records / 5 ms by default) into one such
//!   commit.
//! * `next_seq = max(q.last + 1, meta.next_seq, committed + 1)` at start-up and never decreases
//!   (invariant I4). Never `Db::generate_id()`.
//! * The drain reads with bounded [`Buffer::range_from`] and deletes with
//!   [`Buffer::delete_through`] only what Snowflake has committed (I1).
//! * Corrupt records are skipped and counted, never a panic; a database that fails to open (even
//!   by panicking inside sled) is moved aside to `<dir>.corrupt-<unix-ts>` and a fresh one used.
//! * Full disk: `max_bytes` (policy [`FullPolicy`]) plus a hard filesystem reserve; refusals and
//!   drops are counted, write errors are returned, never swallowed.

pub mod chunk;
pub mod group;
pub mod probation;
pub mod record;
pub mod store;

pub use chunk::{ChunkError, CHUNK_FORMAT_VERSION};
pub use group::{Ack, GroupCommitConfig, GroupCommitHandle, GroupCommitter, Submission};
pub use probation::Probation;
pub use record::{RecordError, RECORD_FORMAT_VERSION};
pub use store::{
    format_marker_path, Buffer, BufferError, BufferObserver, BufferOptions, BufferStats,
    DropReason, FullPolicy, BUFFER_FORMAT_CHUNKS,
};

#[cfg(test)]
mod tests;
