//! Durable write-ahead buffer for swipes on sled 0.34 (contract: `docs/durability.md`).
//!
//! * Tree `c`: `first seq` (u64 **big-endian**, so key order is sequence order) → a [`chunk`]: a
//!   run of consecutive swipes, zstd-compressed, CRC-checked, each record still in its own
//!   envelope ([`record`]: format version + CRC32 + postcard [`SwipeRecord`](crate::row::SwipeRecord)).
//!   One group commit writes one chunk; a background thread merges runs of small neighbouring
//!   chunks (< [`store::SMALL_CHUNK`] records, up to [`store::MERGE_TARGET`]) in one atomic sled
//!   batch (insert the merged chunk, remove its parts), so the number of keys is about backlog ÷
//!   a few hundred whatever the arrival rate. sled 0.34's memory grows with the number of keys
//!   (page table, snapshot at open), not with the bytes behind them: that is why chunks.
//! * Tree `q` (legacy): `seq` → one record envelope, one key per swipe: what releases before
//!   chunks wrote, still read, and written while this release is on probation (below).
//!   Readers merge `q` and `c` by sequence number.
//! * Tree `meta`: `next_seq` high-water mark, `last_committed` offset token, record format
//!   version, `seq_confirmed`, `chunk_format` (present once chunks may exist).
//! * **Acknowledge only what is durable**: [`Buffer::append_durable`] writes a whole batch, then
//!   `flush()` *and* `sync_all()` on every file of the database (sled 0.34's `flush` uses
//!   `sync_file_range`, which is not a device barrier), and only then returns the sequence numbers.
//!   [`GroupCommitter`] batches concurrent swipes (256 records / 5 ms by default) into one such
//!   commit. A failed group commit is retried from a bounded in-memory queue (see [`group`]).
//!   Merges need no fsync: they do not change what is stored, and a sled batch is atomic
//!   across a crash (the parts or the merged chunk, never neither).
//! * `next_seq = max(last stored + 1, meta.next_seq, committed + 1)` at start-up and never
//!   decreases (invariant I4). Never `Db::generate_id()`.
//! * The drain reads with bounded [`Buffer::range_from`] (only the chunks covering the answer are
//!   decompressed: memory follows the request, not the backlog) and deletes with
//!   [`Buffer::delete_through`] only what Snowflake has committed (I1): whole chunks once their
//!   last record is committed; a partly committed chunk stays and readers start at
//!   `committed + 1` inside it. Merges, deletions and reads take one lock, so a read never sees
//!   half a merge.
//! * Corrupt records (or chunks) are skipped and counted, never a panic; a database that fails to
//!   open (even by panicking inside sled) is moved aside to `<dir>.corrupt-<unix-ts>` and a fresh
//!   one used.
//! * Full disk: `max_bytes` (policy [`FullPolicy`]) plus a hard filesystem reserve; refusals and
//!   drops are counted, write errors are returned, never swallowed.
//!
//! # Upgrade and rollback
//!
//! The previous release reads only tree `q`; it ignores other trees and skips values it cannot
//! decode. Its updater (which performs a health-gated rollback and cannot be changed) switches
//! `current` to the new version, restarts it, and on a failed gate switches `current` back and
//! restarts the old one. Why no swipe is lost or duplicated:
//!
//! * **Old buffer, new release**: the new release reads `q` and `c` merged by seq; legacy seqs
//!   were handed out by the same persisted `next_seq`, so nothing collides and the order holds.
//!   `delete_through` removes legacy keys as before.
//! * **New release on probation, then rolled back**: while the updater's
//!   `<root>/update-pending.json` names the version directory this binary runs from, or
//!   `<root>/current` points at another directory (a rollback switches `current` before it
//!   removes the marker), and no chunk was ever written, new swipes go to `q` one key each
//!   ([`Probation`]). Everything the old release finds after a rollback is then in `q`; `meta`
//!   keeps the keys and meaning it had (`next_seq` only raised, `last_committed` only raised by
//!   Snowflake's answer), so it drains exactly what is left, once.
//! * **After the gate passed** (marker gone, `current` is this version) new swipes are chunks.
//!   Before the first one the agent writes and fsyncs `<buffer>.format` (`chunks-1`) and sets
//!   `meta.chunk_format`. From then on the old release must not run on this buffer: it would skip
//!   the chunks, commit past their seqs, and their swipes would count as committed. The updater
//!   of this release refuses to roll back or repair onto a release whose manifest does not list
//!   the format in `buffer_formats` (and says why); today's updater only rolls back from a
//!   release on probation, when no chunk exists yet. A later update (say 2.0 → 2.1) keeps
//!   writing chunks on probation: the release it can roll back to reads them.
//!
//! Not covered: an operator switching `current` by hand to a release before chunks, after
//! chunks were written; or a `dpkg` downgrade. Both bypass the updater's check.

pub mod chunk;
pub mod group;
pub mod probation;
pub mod record;
pub mod store;

pub use chunk::{ChunkError, CHUNK_FORMAT_VERSION};
pub use group::{
    Ack, CommitDropReason, CommitObserver, GroupCommitConfig, GroupCommitHandle, GroupCommitter,
    PendingAck, Progress, QueuedAck, Submission, Waiter,
};
pub use probation::Probation;
pub use record::{RecordError, RECORD_FORMAT_VERSION};
pub use store::{
    format_marker_path, Buffer, BufferError, BufferObserver, BufferOptions, BufferStats,
    DropReason, FullPolicy, BUFFER_FORMAT_CHUNKS,
};

#[cfg(test)]
mod tests;
