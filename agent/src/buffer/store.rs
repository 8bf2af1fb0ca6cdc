//! The sled-backed FIFO: sequence allocation, durable group commit, bounded reads, deletion of
//! committed records, the full-disk policy and quarantine of a database that will not open.

use std::fs::File;
use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tracing::{error, info, warn};

use super::record::{self, RECORD_FORMAT_VERSION};
use crate::row::SwipeRecord;

/// Name of the tree holding `seq (u64 BE) → record envelope`.
pub const QUEUE_TREE: &str = "q";
/// Name of the tree holding the buffer's bookkeeping.
pub const META_TREE: &str = "meta";
/// `meta` key: the sequence high-water mark (u64 BE): the next sequence number to assign.
pub const META_NEXT_SEQ: &[u8] = b"next_seq";
/// `meta` key: the highest offset token Snowflake reported committed (u64 BE).
pub const META_LAST_COMMITTED: &[u8] = b"last_committed";
/// `meta` key: record format version of this database (u8).
pub const META_FORMAT: &[u8] = b"format";
/// `meta` key: present once sequence numbers were reconciled with the channel's committed token
/// (see [`Buffer::reconcile_after_open`]).
pub const META_SEQ_CONFIRMED: &[u8] = b"seq_confirmed";

/// Records removed per sled batch when deleting (0.34 has no range delete).
const DELETE_CHUNK: usize = 512;

/// What happens when the buffer reaches its size limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FullPolicy {
    /// Keep every buffered swipe; refuse new ones (counted as `refused{reason="buffer_full"}`)
    /// until the drain makes room. Default: for access-control data losing history silently is
    /// worse than a visible refusal. Note that sled reclaims the space of deleted records lazily
    /// (segment GC), so `size_on_disk` can stay at the limit for a while after a drain.
    #[default]
    RefuseNew,
    /// Make room by dropping as many of the oldest buffered swipes as are being added (counted as
    /// `dropped{reason="buffer_full"}`). Never used when the *filesystem* reserve is hit: deleting
    /// from sled does not free disk space immediately, so that case always refuses.
    DropOldest,
}

/// How to open the buffer.
#[derive(Debug, Clone)]
pub struct BufferOptions {
    /// Directory of the sled database.
    pub path: PathBuf,
    /// `size_on_disk()` at which the full policy applies.
    pub max_bytes: u64,
    /// Free space the filesystem must keep; below it new swipes are refused (hard reserve so sled
    /// never reaches ENOSPC). 0 disables the check.
    pub min_free_bytes: u64,
    /// Policy at `max_bytes`.
    pub full_policy: FullPolicy,
    /// sled `cache_capacity`. sled 0.34 defaults to 1 GiB; its RSS is several times this value.
    pub cache_capacity: u64,
    /// sled background flush interval; kept as a second line of defence, group commit does not
    /// depend on it.
    pub flush_every_ms: Option<u64>,
}

impl BufferOptions {
    /// Defaults for a Pi: 512 MiB cap, 64 MiB filesystem reserve, refuse-new, 8 MiB cache,
    /// background flush every 500 ms.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        BufferOptions {
            path: path.into(),
            max_bytes: 512 * 1024 * 1024,
            min_free_bytes: 64 * 1024 * 1024,
            full_policy: FullPolicy::RefuseNew,
            cache_capacity: 8 * 1024 * 1024,
            flush_every_ms: Some(500),
        }
    }

    /// Options from the agent's `[buffer]` configuration section.
    pub fn from_config(cfg: &crate::config::BufferConfig) -> Self {
        let mut o = Self::new(cfg.resolved_path());
        o.max_bytes = cfg.max_bytes;
        o.cache_capacity = cfg.cache_bytes;
        o.min_free_bytes = cfg.min_free_bytes;
        o.full_policy = match cfg.full_policy {
            crate::config::FullPolicy::RefuseNew => FullPolicy::RefuseNew,
            crate::config::FullPolicy::DropOldest => FullPolicy::DropOldest,
        };
        o
    }
}

/// Errors of the buffer. `Clone` so one failed group commit can be reported to every waiter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BufferError {
    /// `size_on_disk` reached `max_bytes` under the refuse-new policy.
    #[error("buffer full: {size_on_disk} bytes on disk, limit {max_bytes}; swipe refused")]
    Full {
        /// Current size on disk.
        size_on_disk: u64,
        /// Configured limit.
        max_bytes: u64,
    },
    /// The filesystem's free space fell under the reserve.
    #[error("filesystem nearly full: {free} bytes free, reserve {reserve}; swipe refused")]
    DiskReserve {
        /// Free bytes available to the agent.
        free: u64,
        /// Configured reserve.
        reserve: u64,
    },
    /// Another process holds sled's exclusive lock (an old agent still running).
    #[error("buffer {0} is locked by another process (is an old agent still running?)")]
    Locked(PathBuf),
    /// The database could not be opened and could not be quarantined either.
    #[error("cannot open buffer {path}: {msg}")]
    Open {
        /// Database directory.
        path: PathBuf,
        /// Cause.
        msg: String,
    },
    /// A sled operation failed (including ENOSPC while writing); the swipes were NOT acknowledged.
    #[error("buffer storage error: {0}")]
    Storage(String),
    /// Syncing the database files failed; the swipes were NOT acknowledged.
    #[error("fsync of {path} failed: {msg}")]
    Sync {
        /// File that failed.
        path: PathBuf,
        /// Cause.
        msg: String,
    },
    /// The group committer has shut down.
    #[error("group committer stopped")]
    Closed,
}

impl From<sled::Error> for BufferError {
    fn from(e: sled::Error) -> Self {
        BufferError::Storage(e.to_string())
    }
}

/// Why swipes left the buffer without being delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Refused or dropped because the buffer or the filesystem was full.
    BufferFull,
    /// A stored record failed its CRC / version check and was skipped.
    Corrupt,
}

impl DropReason {
    /// The metric label value (`badge_agent_buffer_dropped_records_total{reason=…}`).
    pub fn as_label(self) -> &'static str {
        match self {
            DropReason::BufferFull => "buffer_full",
            DropReason::Corrupt => "corrupt",
        }
    }
}

/// Hook for metrics/tests. Called synchronously from the writing thread; keep it cheap.
pub trait BufferObserver: Send + Sync {
    /// A batch is durable (flushed and every file synced); called before anyone is acknowledged.
    fn durable(&self, _seqs: Range<u64>, _flush_latency: Duration) {}
    /// Swipes were refused (`refused == true`) or dropped.
    fn dropped(&self, _reason: DropReason, _count: u64, _refused: bool) {}
}

/// Snapshot of the buffer for metrics and health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BufferStats {
    /// Unacknowledged swipes held (`next_seq − first key`; an upper bound if there are gaps).
    pub depth: u64,
    /// `size_on_disk()`.
    pub bytes_on_disk: u64,
    /// Configured `max_bytes`.
    pub max_bytes: u64,
    /// Swipe time of the oldest buffered record (Unix ms).
    pub oldest_unsent_ms: Option<i64>,
    /// Lowest buffered sequence number.
    pub first_seq: Option<u64>,
    /// Next sequence number to be assigned (high-water mark).
    pub next_seq: u64,
    /// Last committed offset token known to the buffer.
    pub committed: Option<u64>,
    /// Swipes made durable since start.
    pub received_total: u64,
    /// Swipes deleted after Snowflake committed them, since start.
    pub sent_total: u64,
    /// Swipes dropped (oldest first) by the drop-oldest policy.
    pub dropped_buffer_full_total: u64,
    /// Swipes refused because the buffer or filesystem was full.
    pub refused_buffer_full_total: u64,
    /// Stored records skipped as corrupt.
    pub dropped_corrupt_total: u64,
    /// Where a database that failed to open was moved at start-up, if that happened.
    pub quarantined_to: Option<PathBuf>,
    /// Number of durable group commits.
    pub flushes_total: u64,
    /// Latency of the last flush + sync.
    pub last_flush_latency: Option<Duration>,
    /// Longest flush + sync seen.
    pub max_flush_latency: Option<Duration>,
}

#[derive(Default)]
struct Counters {
    received: AtomicU64,
    sent: AtomicU64,
    dropped_full: AtomicU64,
    refused_full: AtomicU64,
    corrupt: AtomicU64,
    /// Highest corrupt sequence number counted + 1, so a rewind does not count it twice.
    corrupt_hi: AtomicU64,
    flushes: AtomicU64,
    last_flush_us: AtomicU64,
    max_flush_us: AtomicU64,
}

/// The durable swipe buffer. `Sync`: share it (`Arc`) between the group committer and the drain.
pub struct Buffer {
    db: sled::Db,
    q: sled::Tree,
    meta: sled::Tree,
    opts: BufferOptions,
    /// Serialises writers; holds `next_seq`.
    writer: Mutex<u64>,
    next_seq_view: AtomicU64,
    /// committed + 1, 0 = none.
    committed_view: AtomicU64,
    counters: Counters,
    quarantined_to: Option<PathBuf>,
    observer: Option<Arc<dyn BufferObserver>>,
}

impl std::fmt::Debug for Buffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Buffer")
            .field("path", &self.opts.path)
            .field("next_seq", &self.next_seq_view.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

fn be_u64(bytes: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(bytes).ok().map(u64::from_be_bytes)
}

fn now_unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Is this open failure the environment (lock, permissions, disk) rather than a corrupt database?
/// Those must not trigger quarantine: moving a healthy database aside would hide acknowledged
/// swipes from the drain.
fn is_environmental(e: &sled::Error) -> bool {
    match e {
        sled::Error::Io(io) => io.raw_os_error().is_some() || io.to_string().contains("lock"),
        _ => false,
    }
}

enum OpenFailure {
    Locked,
    Environmental(String),
    Corrupt(String),
}

fn try_open(opts: &BufferOptions) -> Result<sled::Db, OpenFailure> {
    let cfg = sled::Config::new()
        .path(&opts.path)
        .cache_capacity(opts.cache_capacity)
        .flush_every_ms(opts.flush_every_ms)
        .mode(sled::Mode::LowSpace);
    // sled 0.34 panics on some corrupt files (issue #1533): a panic is an open failure too.
    match catch_unwind(AssertUnwindSafe(|| cfg.open())) {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(e)) if e.to_string().contains("could not acquire lock") => Err(OpenFailure::Locked),
        Ok(Err(e)) if is_environmental(&e) => Err(OpenFailure::Environmental(e.to_string())),
        Ok(Err(e)) => Err(OpenFailure::Corrupt(e.to_string())),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_string()))
                .unwrap_or_else(|| "sled panicked while opening".into());
            Err(OpenFailure::Corrupt(format!("sled panicked: {msg}")))
        }
    }
}

/// Moves a database directory aside as `<name>.corrupt-<unix-ts>` next to it.
fn quarantine(path: &Path) -> Result<PathBuf, BufferError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "buffer".into());
    let parent = path.parent().unwrap_or_else(|| Path::new("."));
    let ts = now_unix_secs();
    let mut target = parent.join(format!("{name}.corrupt-{ts}"));
    let mut n = 1;
    while target.exists() {
        target = parent.join(format!("{name}.corrupt-{ts}-{n}"));
        n += 1;
    }
    std::fs::rename(path, &target).map_err(|e| BufferError::Open {
        path: path.to_path_buf(),
        msg: format!("database is unreadable and could not be moved aside: {e}"),
    })?;
    Ok(target)
}

/// `flush()` is not a device barrier in sled 0.34 on Linux (it uses `sync_file_range`): fsync
/// every file and directory of the database so the batch survives a power cut.
#[cfg_attr(feature = "test-unsafe-skip-fsync", allow(dead_code))]
fn sync_tree(dir: &Path) -> Result<(), BufferError> {
    let sync_err = |path: &Path, e: std::io::Error| BufferError::Sync {
        path: path.to_path_buf(),
        msg: e.to_string(),
    };
    let entries = std::fs::read_dir(dir).map_err(|e| sync_err(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| sync_err(dir, e))?;
        let path = entry.path();
        let ft = entry.file_type().map_err(|e| sync_err(&path, e))?;
        if ft.is_dir() {
            sync_tree(&path)?;
        } else if ft.is_file() {
            match File::open(&path) {
                Ok(f) => f.sync_all().map_err(|e| sync_err(&path, e))?,
                // sled removes old snapshots/blobs concurrently; a vanished file needs no sync.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(sync_err(&path, e)),
            }
        }
    }
    // The directory entries themselves (new segment/snapshot files).
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| sync_err(dir, e))
}

/// How long to wait for sled's exclusive lock: a previous holder (an agent that is still
/// exiting, or a just-dropped handle whose background flusher has not finished) releases it
/// within moments.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

fn try_open_waiting_for_lock(opts: &BufferOptions) -> Result<sled::Db, OpenFailure> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match try_open(opts) {
            Err(OpenFailure::Locked) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

impl Buffer {
    /// Opens (or creates) the buffer. A database that fails to open — including a sled panic —
    /// is moved aside as `<dir>.corrupt-<ts>` and a fresh one is started (logged at ERROR,
    /// visible as [`BufferStats::quarantined_to`]). Lock, permission and disk errors are
    /// returned instead: they are not corruption.
    pub fn open(opts: BufferOptions) -> Result<Buffer, BufferError> {
        Self::open_observed(opts, None)
    }

    /// [`Buffer::open`] with an observer for flush latency and drops.
    pub fn open_observed(
        opts: BufferOptions,
        observer: Option<Arc<dyn BufferObserver>>,
    ) -> Result<Buffer, BufferError> {
        if let Some(parent) = opts.path.parent() {
            if !parent.as_os_str().is_empty() {
                std::fs::create_dir_all(parent).map_err(|e| BufferError::Open {
                    path: opts.path.clone(),
                    msg: format!("cannot create parent directory: {e}"),
                })?;
            }
        }
        let mut quarantined_to = None;
        let db = match try_open_waiting_for_lock(&opts) {
            Ok(db) => db,
            Err(OpenFailure::Locked) => return Err(BufferError::Locked(opts.path.clone())),
            Err(OpenFailure::Environmental(msg)) => {
                return Err(BufferError::Open {
                    path: opts.path.clone(),
                    msg,
                })
            }
            Err(OpenFailure::Corrupt(msg)) => {
                let target = quarantine(&opts.path)?;
                error!(
                    event = "buffer_quarantined",
                    path = %opts.path.display(),
                    moved_to = %target.display(),
                    cause = %msg,
                    "buffer database failed to open; moved aside and starting an empty buffer"
                );
                quarantined_to = Some(target);
                match try_open(&opts) {
                    Ok(db) => db,
                    Err(OpenFailure::Locked) => return Err(BufferError::Locked(opts.path.clone())),
                    Err(OpenFailure::Environmental(msg) | OpenFailure::Corrupt(msg)) => {
                        return Err(BufferError::Open {
                            path: opts.path.clone(),
                            msg,
                        })
                    }
                }
            }
        };
        let q = db.open_tree(QUEUE_TREE)?;
        let meta = db.open_tree(META_TREE)?;

        match meta.get(META_FORMAT)? {
            None => {
                meta.insert(META_FORMAT, &[RECORD_FORMAT_VERSION])?;
            }
            Some(v) if v.as_ref() != [RECORD_FORMAT_VERSION] => warn!(
                stored = ?v.as_ref(),
                ours = RECORD_FORMAT_VERSION,
                "buffer written by a different record format; unreadable records will be skipped"
            ),
            Some(_) => {}
        }

        // I4: next_seq = max(q.last + 1, meta.next_seq, committed + 1); never Db::generate_id().
        let last_plus_one = match q.last()? {
            Some((k, _)) => be_u64(&k).map_or(0, |k| k.saturating_add(1)),
            None => 0,
        };
        let meta_next = meta
            .get(META_NEXT_SEQ)?
            .and_then(|v| be_u64(&v))
            .unwrap_or(0);
        let committed = meta.get(META_LAST_COMMITTED)?.and_then(|v| be_u64(&v));
        let next_seq = last_plus_one
            .max(meta_next)
            .max(committed.map_or(0, |c| c.saturating_add(1)));
        if next_seq != meta_next {
            meta.insert(META_NEXT_SEQ, &next_seq.to_be_bytes())?;
        }
        info!(
            path = %opts.path.display(),
            next_seq,
            committed = ?committed,
            recovered = db.was_recovered(),
            "buffer open"
        );

        Ok(Buffer {
            db,
            q,
            meta,
            writer: Mutex::new(next_seq),
            next_seq_view: AtomicU64::new(next_seq),
            committed_view: AtomicU64::new(committed.map_or(0, |c| c.saturating_add(1))),
            counters: Counters::default(),
            quarantined_to,
            observer,
            opts,
        })
    }

    /// The options the buffer was opened with.
    pub fn options(&self) -> &BufferOptions {
        &self.opts
    }

    /// Where a corrupt database was moved at open, if it was.
    pub fn quarantined_to(&self) -> Option<&Path> {
        self.quarantined_to.as_deref()
    }

    fn lock_writer(&self) -> MutexGuard<'_, u64> {
        // A panic while holding the lock cannot leave next_seq lower than what is on disk
        // (it is only ever raised), so a poisoned lock is safe to keep using.
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn flush_and_sync(&self) -> Result<Duration, BufferError> {
        let t0 = Instant::now();
        self.db.flush()?;
        // Deliberately broken build for the power-cut test's self-check only: acknowledges
        // before fsync, which that test must catch. Never enable this feature elsewhere.
        #[cfg(feature = "test-unsafe-skip-fsync")]
        return Ok(t0.elapsed());
        #[cfg(not(feature = "test-unsafe-skip-fsync"))]
        {
            sync_tree(&self.opts.path)?;
            Ok(t0.elapsed())
        }
    }

    /// Makes everything already written durable (flush + fsync of every file) and reports
    /// `seqs` as durable, without writing records. For the group committer: when
    /// [`Buffer::append_durable`] failed *after* writing its batch (the sync failed), the records
    /// hold their sequence numbers and only need this, not a second append (which would store
    /// them twice).
    pub fn sync_durable(&self, seqs: Range<u64>) -> Result<(), BufferError> {
        let _writer = self.lock_writer();
        let latency = self.flush_and_sync()?;
        self.note_flush(latency);
        let n = seqs.end.saturating_sub(seqs.start);
        self.counters.received.fetch_add(n, Ordering::Relaxed);
        if let Some(o) = &self.observer {
            o.durable(seqs, latency);
        }
        Ok(())
    }

    fn note_flush(&self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.counters.flushes.fetch_add(1, Ordering::Relaxed);
        self.counters.last_flush_us.store(us, Ordering::Relaxed);
        self.counters.max_flush_us.fetch_max(us, Ordering::Relaxed);
    }

    fn note_drop(&self, reason: DropReason, count: u64, refused: bool) {
        let c = match (reason, refused) {
            (DropReason::Corrupt, _) => &self.counters.corrupt,
            (DropReason::BufferFull, true) => &self.counters.refused_full,
            (DropReason::BufferFull, false) => &self.counters.dropped_full,
        };
        c.fetch_add(count, Ordering::Relaxed);
        if let Some(o) = &self.observer {
            o.dropped(reason, count, refused);
        }
    }

    /// Group commit: assigns consecutive sequence numbers to `recs`, writes them and
    /// `meta.next_seq`, then `flush()` **and** `sync_all()` on every file of the database. Only
    /// when that succeeded are the assigned sequence numbers returned — that is the
    /// acknowledgement. Any error means "not acknowledged"; nothing is lost silently.
    pub fn append_durable(&self, recs: &[SwipeRecord]) -> Result<Range<u64>, BufferError> {
        let mut next = self.lock_writer();
        let n = recs.len() as u64;
        if n == 0 {
            return Ok(*next..*next);
        }

        let mut batch = sled::Batch::default();
        let mut dropping = 0u64;
        if self.opts.min_free_bytes > 0 {
            // Not all filesystems answer statvfs (e.g. some FUSE mounts): then only max_bytes applies.
            if let Ok(free) = fs2::available_space(&self.opts.path) {
                if free < self.opts.min_free_bytes {
                    self.note_drop(DropReason::BufferFull, n, true);
                    warn!(
                        free,
                        reserve = self.opts.min_free_bytes,
                        refused = n,
                        "filesystem reserve reached; swipes refused"
                    );
                    return Err(BufferError::DiskReserve {
                        free,
                        reserve: self.opts.min_free_bytes,
                    });
                }
            }
        }
        let size = self.db.size_on_disk()?;
        if size >= self.opts.max_bytes {
            match self.opts.full_policy {
                FullPolicy::RefuseNew => {
                    self.note_drop(DropReason::BufferFull, n, true);
                    warn!(
                        size,
                        max = self.opts.max_bytes,
                        refused = n,
                        "buffer full; swipes refused"
                    );
                    return Err(BufferError::Full {
                        size_on_disk: size,
                        max_bytes: self.opts.max_bytes,
                    });
                }
                FullPolicy::DropOldest => {
                    // Committed-but-not-yet-deleted records are not losses: skip them.
                    let from = self.committed().map_or(0, |c| c.saturating_add(1));
                    for item in self.q.range(from.to_be_bytes()..).keys().take(recs.len()) {
                        batch.remove(item?);
                        dropping += 1;
                    }
                }
            }
        }

        let start = *next;
        for (i, rec) in recs.iter().enumerate() {
            batch.insert(&(start + i as u64).to_be_bytes(), record::encode(rec));
        }
        self.q.apply_batch(batch)?;
        // From here the keys may exist on disk: never hand them out again, even if the flush fails.
        *next = start + n;
        self.next_seq_view.store(start + n, Ordering::Relaxed);
        self.meta
            .insert(META_NEXT_SEQ, &(start + n).to_be_bytes())?;
        if dropping > 0 {
            self.note_drop(DropReason::BufferFull, dropping, false);
            warn!(dropped = dropping, "buffer full; oldest swipes dropped");
        }
        let latency = self.flush_and_sync()?;
        self.note_flush(latency);
        self.counters.received.fetch_add(n, Ordering::Relaxed);
        if let Some(o) = &self.observer {
            o.durable(start..start + n, latency);
        }
        Ok(start..start + n)
    }

    /// Reads up to `max_records` records with `seq ≥ from`, in order, stopping once `max_bytes`
    /// of stored data were read (at least one record is returned if any exists). Corrupt records
    /// are skipped, logged and counted (`dropped{reason="corrupt"}`), never returned: callers see
    /// a gap in the sequence numbers.
    pub fn range_from(
        &self,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<(u64, SwipeRecord)>, BufferError> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        if max_records == 0 {
            return Ok(out);
        }
        for item in self.q.range(from.to_be_bytes()..) {
            let (k, v) = item?;
            let Some(seq) = be_u64(&k) else {
                warn!(key = ?k.as_ref(), "buffer key of the wrong length skipped");
                continue;
            };
            match record::decode(&v) {
                Ok(rec) => {
                    bytes += v.len();
                    out.push((seq, rec));
                    if out.len() >= max_records || bytes >= max_bytes {
                        break;
                    }
                }
                Err(e) => {
                    // Count each corrupt seq once even though a rewind may read it again.
                    let prev = self
                        .counters
                        .corrupt_hi
                        .fetch_max(seq + 1, Ordering::Relaxed);
                    if prev <= seq {
                        error!(seq, error = %e, reason = "corrupt", "corrupt buffered record skipped");
                        self.note_drop(DropReason::Corrupt, 1, false);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Deletes every record with `seq ≤ committed` (in chunks; sled 0.34 has no range delete),
    /// persists `meta.last_committed` and raises `next_seq` above it. Callers must pass only a
    /// token Snowflake reported committed (invariant I1). Returns the number of records removed.
    pub fn delete_through(&self, committed: u64) -> Result<u64, BufferError> {
        let mut removed = 0u64;
        loop {
            let keys: Vec<sled::IVec> = self
                .q
                .range(..=committed.to_be_bytes())
                .keys()
                .take(DELETE_CHUNK)
                .collect::<Result<_, _>>()?;
            let n = keys.len();
            // One remove per key, not a `Batch`: sled 0.34 holds on to memory for large batch
            // removals (a 200k-record drain peaked ~25 MB higher), and a crash halfway through is
            // harmless: records ≤ committed are skipped on restart and deleted by the next call.
            for k in keys {
                self.q.remove(k)?;
            }
            removed += n as u64;
            if n < DELETE_CHUNK {
                break;
            }
        }
        {
            let mut next = self.lock_writer();
            self.raise_committed(committed)?;
            if *next <= committed {
                *next = committed + 1;
                self.next_seq_view.store(*next, Ordering::Relaxed);
                self.meta.insert(META_NEXT_SEQ, &next.to_be_bytes())?;
            }
        }
        // Deletion may lag without harm (a restart skips ≤ committed), so no fsync here.
        self.db.flush()?;
        self.counters.sent.fetch_add(removed, Ordering::Relaxed);
        Ok(removed)
    }

    fn raise_committed(&self, committed: u64) -> Result<(), BufferError> {
        let old = self.meta.get(META_LAST_COMMITTED)?.and_then(|v| be_u64(&v));
        if old.is_none_or(|o| o < committed) {
            self.meta
                .insert(META_LAST_COMMITTED, &committed.to_be_bytes())?;
        }
        self.committed_view
            .fetch_max(committed.saturating_add(1), Ordering::Relaxed);
        Ok(())
    }

    /// Call after every channel open with the committed token it returned, before deleting.
    ///
    /// Sequence numbers assigned before this buffer ever talked to the channel (a new or
    /// quarantined database whose channel already has a committed token) could be `≤ committed`
    /// and would then be deleted as "already committed" — acknowledged swipes lost silently. On
    /// the first reconciliation such records are renumbered (order kept) to start at
    /// `committed + 1`; they cannot have been sent yet. Afterwards `next_seq > committed` holds.
    /// Returns how many records were renumbered.
    pub fn reconcile_after_open(&self, committed: Option<u64>) -> Result<u64, BufferError> {
        let mut next = self.lock_writer();
        let confirmed = self.meta.get(META_SEQ_CONFIRMED)?.is_some();
        let mut renumbered = 0u64;
        if let Some(c) = committed {
            if !confirmed {
                let first = self.q.first()?.and_then(|(k, _)| be_u64(&k));
                if let Some(first) = first.filter(|f| *f <= c) {
                    let delta = c + 1 - first;
                    let mut batch = sled::Batch::default();
                    let mut moved = Vec::new();
                    for item in self.q.iter() {
                        let (k, v) = item?;
                        if let Some(seq) = be_u64(&k) {
                            batch.remove(k);
                            moved.push((seq + delta, v));
                        }
                    }
                    // Removes first, inserts after: in a sled Batch the last write to a key wins.
                    for (seq, v) in moved {
                        batch.insert(&seq.to_be_bytes(), v);
                        renumbered += 1;
                    }
                    self.q.apply_batch(batch)?;
                    let last = self.q.last()?.and_then(|(k, _)| be_u64(&k)).unwrap_or(c);
                    *next = (*next).max(last + 1);
                    warn!(
                        renumbered,
                        committed = c,
                        "swipes buffered before the first channel open renumbered above the channel's committed token"
                    );
                }
            }
            if *next <= c {
                *next = c + 1;
            }
            self.raise_committed(c)?;
        }
        self.next_seq_view.store(*next, Ordering::Relaxed);
        self.meta.insert(META_NEXT_SEQ, &next.to_be_bytes())?;
        if !confirmed {
            self.meta.insert(META_SEQ_CONFIRMED, &[1u8])?;
        }
        let latency = self.flush_and_sync()?;
        self.note_flush(latency);
        Ok(renumbered)
    }

    /// The next sequence number the buffer will assign.
    pub fn next_seq(&self) -> u64 {
        self.next_seq_view.load(Ordering::Relaxed)
    }

    /// Last committed token the buffer knows of (persisted in `meta`).
    pub fn committed(&self) -> Option<u64> {
        self.committed_view.load(Ordering::Relaxed).checked_sub(1)
    }

    /// Lowest buffered sequence number.
    pub fn first_seq(&self) -> Result<Option<u64>, BufferError> {
        Ok(self.q.first()?.and_then(|(k, _)| be_u64(&k)))
    }

    /// Metrics snapshot. O(1) in the number of records (never `Tree::len()`).
    pub fn stats(&self) -> Result<BufferStats, BufferError> {
        let next_seq = self.next_seq();
        let first = self.q.first()?;
        let first_seq = first.as_ref().and_then(|(k, _)| be_u64(k));
        let mut oldest_unsent_ms = None;
        // The first record may be corrupt: look a little further rather than report nothing.
        for item in self.q.iter().values().take(16) {
            if let Ok(rec) = record::decode(&item?) {
                oldest_unsent_ms = Some(rec.swiped_at_ms);
                break;
            }
        }
        let us = |v: u64| Duration::from_micros(v);
        let c = &self.counters;
        let flushes = c.flushes.load(Ordering::Relaxed);
        Ok(BufferStats {
            depth: first_seq.map_or(0, |f| next_seq.saturating_sub(f)),
            bytes_on_disk: self.db.size_on_disk()?,
            max_bytes: self.opts.max_bytes,
            oldest_unsent_ms,
            first_seq,
            next_seq,
            committed: self.committed(),
            received_total: c.received.load(Ordering::Relaxed),
            sent_total: c.sent.load(Ordering::Relaxed),
            dropped_buffer_full_total: c.dropped_full.load(Ordering::Relaxed),
            refused_buffer_full_total: c.refused_full.load(Ordering::Relaxed),
            dropped_corrupt_total: c.corrupt.load(Ordering::Relaxed),
            quarantined_to: self.quarantined_to.clone(),
            flushes_total: flushes,
            last_flush_latency: (flushes > 0).then(|| us(c.last_flush_us.load(Ordering::Relaxed))),
            max_flush_latency: (flushes > 0).then(|| us(c.max_flush_us.load(Ordering::Relaxed))),
        })
    }

    /// Test/diagnostic hook: overwrite the stored value of `seq` with raw bytes.
    #[doc(hidden)]
    pub fn put_raw_for_test(&self, seq: u64, raw: &[u8]) -> Result<(), BufferError> {
        self.q.insert(seq.to_be_bytes(), raw)?;
        Ok(())
    }
}
