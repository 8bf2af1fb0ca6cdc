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

use super::chunk::{self, ChunkBuilder, CHUNK_FORMAT_VERSION};
use super::probation::Probation;
use super::record::{self, RECORD_FORMAT_VERSION};
use crate::row::SwipeRecord;

/// Name of the legacy tree holding `seq (u64 BE) → record envelope`, one key per swipe (what
/// releases before chunks wrote, and what this one writes while on probation).
pub const QUEUE_TREE: &str = "q";
/// Name of the tree holding `first seq (u64 BE) → chunk` (see [`super::chunk`]).
pub const CHUNK_TREE: &str = "c";
/// `meta` key: chunk format (u8), written before the first chunk ever is. From then on a release
/// that cannot read chunks must not run on this buffer (the updater refuses such a rollback).
pub const META_CHUNKS: &[u8] = b"chunk_format";
/// What [`format_marker_path`] holds once chunks may exist: releases whose manifest lists it in
/// `buffer_formats` read chunks; the updater refuses to switch to any other.
pub const BUFFER_FORMAT_CHUNKS: &str = "chunks-1";

/// `<buffer dir>.format`, beside the sled directory: written (and fsynced) before the first chunk
/// is, so the updater can tell without opening the database (the running agent holds its lock).
pub fn format_marker_path(buffer: &Path) -> PathBuf {
    let name = buffer
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "buffer".into());
    buffer.with_file_name(format!("{name}.format"))
}

fn write_format_marker(buffer: &Path) -> Result<(), BufferError> {
    use std::io::Write;
    let path = format_marker_path(buffer);
    let err = |e: std::io::Error| BufferError::Sync {
        path: path.clone(),
        msg: e.to_string(),
    };
    let mut f = File::create(&path).map_err(err)?;
    f.write_all(format!("{BUFFER_FORMAT_CHUNKS}\n").as_bytes())
        .map_err(err)?;
    f.sync_all().map_err(err)?;
    if let Some(dir) = path.parent() {
        File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
    }
    Ok(())
}

/// A chunk with fewer records than this is "small": the background merger joins it with its
/// small neighbours.
pub const SMALL_CHUNK: u32 = 128;
/// Most records the merger puts into one chunk (~25–40 KB compressed, one sled value).
pub const MERGE_TARGET: u32 = 512;
/// How often the merger looks at the tail for small chunks.
const MERGE_EVERY: Duration = Duration::from_millis(500);
/// How often a buffer on probation looks whether the updater's marker is gone.
const PROBATION_RECHECK: Duration = Duration::from_secs(1);
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

/// What happens when the buffer reaches its size limit (`buffer.full_policy`: `refuse_new` or
/// `drop_oldest`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
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
    /// Whether this agent is a freshly installed version the updater may still roll back; while
    /// it is (and no chunk was ever written), new swipes are written one key per swipe in the
    /// legacy tree, which the previous release reads.
    pub probation: Probation,
    /// Merge small chunks on a background thread (tests turn it off and call
    /// [`Buffer::merge_now`] to interleave merges deterministically).
    pub merge_in_background: bool,
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
            probation: Probation::Never,
            merge_in_background: true,
        }
    }

    /// Options from the agent's `[buffer]` configuration section.
    pub fn from_config(cfg: &crate::config::BufferConfig) -> Self {
        let mut o = Self::new(cfg.resolved_path());
        o.max_bytes = cfg.max_bytes;
        o.cache_capacity = cfg.cache_bytes;
        o.min_free_bytes = cfg.min_free_bytes;
        o.probation = Probation::from_current_exe();
        o.full_policy = cfg.full_policy;
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
    /// Legacy tree: one key per swipe.
    q: sled::Tree,
    /// Chunk tree: one key per run of consecutive swipes.
    c: sled::Tree,
    meta: sled::Tree,
    opts: BufferOptions,
    /// Serialises writers; holds `next_seq` and the write format.
    writer: Mutex<Writer>,
    next_seq_view: AtomicU64,
    /// committed + 1, 0 = none.
    committed_view: AtomicU64,
    /// Records below this were counted in `sent_total` (so a partly committed chunk that stays
    /// on disk is not counted twice).
    sent_from: AtomicU64,
    /// Serialises everything that rewrites or removes chunks (merge, delete, drop-oldest,
    /// renumbering) with the drain's read, so a read never sees half a merge.
    maint: Arc<Mutex<()>>,
    merger: Option<Merger>,
    counters: Counters,
    quarantined_to: Option<PathBuf>,
    observer: Option<Arc<dyn BufferObserver>>,
}

/// State of the single writer.
struct Writer {
    next: u64,
    /// Write one key per swipe in the legacy tree (probation), else chunks.
    legacy: bool,
    /// `meta.chunk_format` is known to be on disk.
    chunks_marked: bool,
    /// Last time the probation marker was looked at.
    checked: Instant,
}

/// The background merger thread and how to stop it.
struct Merger {
    shared: Arc<MergeSignal>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Default)]
struct MergeSignal {
    /// (stop requested, new small chunk written)
    state: Mutex<(bool, bool)>,
    wake: std::sync::Condvar,
}

impl Drop for Buffer {
    fn drop(&mut self) {
        if let Some(m) = &mut self.merger {
            m.shared.state.lock().unwrap_or_else(|p| p.into_inner()).0 = true;
            m.shared.wake.notify_all();
            if let Some(t) = m.thread.take() {
                // The thread holds a clone of the database: join it so sled's lock is released
                // when the buffer is dropped (a restart in the same process reopens at once).
                let _ = t.join();
            }
        }
    }
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
        let c = db.open_tree(CHUNK_TREE)?;
        let meta = db.open_tree(META_TREE)?;

        // The record format stays what the previous release wrote and checks (it warns on any
        // other value); chunks are announced under their own key.
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
        let chunks_marked = meta.get(META_CHUNKS)?.is_some();
        if chunks_marked && !format_marker_path(&opts.path).exists() {
            // Lost (e.g. a restored backup): the updater relies on it to refuse a bad rollback.
            if let Err(e) = write_format_marker(&opts.path) {
                warn!(error = %e, "cannot rewrite the buffer format marker");
            }
        }
        let legacy = !chunks_marked && c.first()?.is_none() && opts.probation.active();

        // I4: next_seq = max(last stored + 1, meta.next_seq, committed + 1); never generate_id().
        let legacy_end = match q.last()? {
            Some((k, _)) => be_u64(&k).map_or(0, |k| k.saturating_add(1)),
            None => 0,
        };
        let chunk_end = match c.last()? {
            Some((k, v)) => be_u64(&k).map_or(0, |k| {
                // A corrupt last chunk still proves its first seq was handed out.
                k.saturating_add(chunk::count(&v).map_or(1, u64::from))
            }),
            None => 0,
        };
        let meta_next = meta
            .get(META_NEXT_SEQ)?
            .and_then(|v| be_u64(&v))
            .unwrap_or(0);
        let committed = meta.get(META_LAST_COMMITTED)?.and_then(|v| be_u64(&v));
        let next_seq = legacy_end
            .max(chunk_end)
            .max(meta_next)
            .max(committed.map_or(0, |c| c.saturating_add(1)));
        if next_seq != meta_next {
            meta.insert(META_NEXT_SEQ, &next_seq.to_be_bytes())?;
        }
        // Puts the bookkeeping on disk now, so `size_on_disk` is never 0 for an open buffer (a
        // fresh one would otherwise pass `max_bytes = 1` until sled's first background flush).
        db.flush()?;
        info!(
            path = %opts.path.display(),
            next_seq,
            committed = ?committed,
            recovered = db.was_recovered(),
            writes = if legacy { "legacy (update on probation)" } else { "chunks" },
            "buffer open"
        );

        let maint = Arc::new(Mutex::new(()));
        let merger = opts.merge_in_background.then(|| {
            let shared = Arc::new(MergeSignal::default());
            let (tree, lock, sig) = (c.clone(), Arc::clone(&maint), Arc::clone(&shared));
            // Start at the last chunk: earlier ones were merged by the previous run (or are
            // big). Only small chunks written from now on (and that tail) are looked at.
            let cursor = chunk_end.saturating_sub(u64::from(MERGE_TARGET));
            let thread = std::thread::Builder::new()
                .name("buffer-merge".into())
                .spawn(move || merge_loop(&tree, &lock, &sig, cursor))
                .ok();
            Merger { shared, thread }
        });

        let committed_plus_one = committed.map_or(0, |c| c.saturating_add(1));
        Ok(Buffer {
            db,
            q,
            c,
            meta,
            writer: Mutex::new(Writer {
                next: next_seq,
                legacy,
                chunks_marked,
                checked: Instant::now(),
            }),
            next_seq_view: AtomicU64::new(next_seq),
            committed_view: AtomicU64::new(committed_plus_one),
            sent_from: AtomicU64::new(committed_plus_one),
            maint,
            merger,
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

    /// Whether new swipes are currently written one key per swipe (probation), not as chunks.
    pub fn writes_legacy(&self) -> bool {
        self.lock_writer().legacy
    }

    fn lock_writer(&self) -> MutexGuard<'_, Writer> {
        // A panic while holding the lock cannot leave next_seq lower than what is on disk
        // (it is only ever raised), so a poisoned lock is safe to keep using.
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_maint(&self) -> MutexGuard<'_, ()> {
        self.maint.lock().unwrap_or_else(|p| p.into_inner())
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

    /// Counts `n` corrupt records starting at `seq` once, even though a rewind reads them again.
    fn note_corrupt(&self, seq: u64, n: u64, what: &dyn std::fmt::Display) {
        let prev = self
            .counters
            .corrupt_hi
            .fetch_max(seq.saturating_add(n), Ordering::Relaxed);
        if prev <= seq {
            error!(seq, records = n, error = %what, reason = "corrupt", "corrupt buffered record skipped");
            self.note_drop(DropReason::Corrupt, n, false);
        }
    }

    /// Group commit: assigns consecutive sequence numbers to `recs`, writes them (one chunk, or
    /// one key each while on probation) and `meta.next_seq`, then `flush()` **and** `sync_all()`
    /// on every file of the database. Only when that succeeded are the assigned sequence numbers
    /// returned — that is the acknowledgement. Any error means "not acknowledged"; nothing is
    /// lost silently.
    pub fn append_durable(&self, recs: &[SwipeRecord]) -> Result<Range<u64>, BufferError> {
        let mut w = self.lock_writer();
        let n = recs.len() as u64;
        if n == 0 {
            return Ok(w.next..w.next);
        }
        if w.legacy && w.checked.elapsed() >= PROBATION_RECHECK {
            w.checked = Instant::now();
            if !self.opts.probation.active() {
                info!("update confirmed (no pending marker names this version); writing chunks from now on");
                w.legacy = false;
            }
        }

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
        let mut q_batch = sled::Batch::default();
        let mut c_batch = sled::Batch::default();
        let mut dropping = 0u64;
        let mut maint_guard = None;
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
                    // Held until the batches are applied so no merge rewrites what we drop.
                    maint_guard = Some(self.lock_maint());
                    dropping = self.plan_drop_oldest(n, &mut q_batch, &mut c_batch)?;
                }
            }
        }

        let start = w.next;
        if w.legacy {
            for (i, rec) in recs.iter().enumerate() {
                q_batch.insert(&(start + i as u64).to_be_bytes(), record::encode(rec));
            }
        } else {
            if !w.chunks_marked {
                // Before the first chunk can exist: the updater (marker file) and anyone reading
                // meta learn that chunks may be there.
                write_format_marker(&self.opts.path)?;
                self.meta.insert(META_CHUNKS, &[CHUNK_FORMAT_VERSION])?;
                w.chunks_marked = true;
            }
            c_batch.insert(&start.to_be_bytes(), chunk::encode(recs));
        }
        // Drops of the oldest records and the new records go to disk in one batch per tree.
        self.q.apply_batch(q_batch)?;
        self.c.apply_batch(c_batch)?;
        drop(maint_guard);
        // From here the keys may exist on disk: never hand them out again, even if the flush fails.
        w.next = start + n;
        self.next_seq_view.store(start + n, Ordering::Relaxed);
        self.meta
            .insert(META_NEXT_SEQ, &(start + n).to_be_bytes())?;
        if dropping > 0 {
            self.note_drop(DropReason::BufferFull, dropping, false);
            warn!(dropped = dropping, "buffer full; oldest swipes dropped");
        }
        let latency = self.flush_and_sync()?;
        drop(w);
        self.note_flush(latency);
        self.counters.received.fetch_add(n, Ordering::Relaxed);
        if let Some(o) = &self.observer {
            o.durable(start..start + n, latency);
        }
        if n < u64::from(SMALL_CHUNK) {
            if let Some(m) = &self.merger {
                m.shared.state.lock().unwrap_or_else(|p| p.into_inner()).1 = true;
                m.shared.wake.notify_one();
            }
        }
        Ok(start..start + n)
    }

    /// Drop-oldest: plans the removal of the `n` oldest uncommitted records (legacy keys first:
    /// their seqs are below every chunk's) into the batches. A chunk partly dropped is rewritten
    /// under the key of its first kept record. Caller holds `maint`.
    fn plan_drop_oldest(
        &self,
        n: u64,
        q_batch: &mut sled::Batch,
        c_batch: &mut sled::Batch,
    ) -> Result<u64, BufferError> {
        // Committed-but-not-yet-deleted records are not losses: skip them.
        let from = self.committed().map_or(0, |c| c.saturating_add(1));
        let mut dropped = 0u64;
        for item in self.q.range(from.to_be_bytes()..).keys() {
            if dropped >= n {
                return Ok(dropped);
            }
            q_batch.remove(item?);
            dropped += 1;
        }
        let start = self.chunk_start_key(from)?;
        for item in self.c.range(start.to_be_bytes()..) {
            if dropped >= n {
                break;
            }
            let (k, v) = item?;
            let Some(first) = be_u64(&k) else { continue };
            let envs = match chunk::envelopes(&v) {
                Ok(e) => e,
                Err(_) => {
                    // Unreadable anyway: dropping it frees room and loses nothing readable.
                    c_batch.remove(k);
                    continue;
                }
            };
            let end = first + envs.len() as u64;
            let live_from = first.max(from);
            if live_from >= end {
                continue;
            }
            let live = end - live_from;
            c_batch.remove(k);
            if live <= n - dropped {
                dropped += live;
            } else {
                let keep_from = live_from + (n - dropped);
                let mut b = ChunkBuilder::new();
                for e in &envs[(keep_from - first) as usize..] {
                    b.push_envelope(e);
                }
                c_batch.insert(&keep_from.to_be_bytes(), b.finish());
                dropped = n;
            }
        }
        Ok(dropped)
    }

    /// Key to start a chunk scan at so that `seq` is included: the key of the chunk holding
    /// `seq` if there is one, else `seq` itself.
    fn chunk_start_key(&self, seq: u64) -> Result<u64, BufferError> {
        if let Some((k, v)) = self.c.range(..=seq.to_be_bytes()).next_back().transpose()? {
            if let Some(first) = be_u64(&k) {
                if chunk::count(&v).is_ok_and(|cnt| first + u64::from(cnt) > seq) {
                    return Ok(first);
                }
            }
        }
        Ok(seq)
    }

    /// Reads up to `max_records` records with `seq ≥ from`, in order, stopping once `max_bytes`
    /// of record envelopes were read (at least one record is returned if any exists). Legacy
    /// keys and chunks are merged by sequence number; only the chunks covering the answer are
    /// decompressed, so memory is bounded by the request, not by the backlog. Corrupt records
    /// (or whole chunks) are skipped, logged and counted (`dropped{reason="corrupt"}`), never
    /// returned: callers see a gap in the sequence numbers.
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
        let _m = self.lock_maint();
        let mut legacy = self.q.range(from.to_be_bytes()..);
        let mut chunks = self.c.range(self.chunk_start_key(from)?.to_be_bytes()..);
        let mut l_head: Option<(u64, sled::IVec)> = None;
        let mut c_buf: std::collections::VecDeque<(u64, Vec<u8>)> = Default::default();
        let mut l_done = false;
        let mut c_done = false;
        // A chunk that failed its check: its size is known once the next chunk's key is.
        let mut corrupt: Option<(u64, chunk::ChunkError)> = None;
        loop {
            if l_head.is_none() && !l_done {
                match legacy.next().transpose()? {
                    Some((k, v)) => match be_u64(&k) {
                        Some(seq) => l_head = Some((seq, v)),
                        None => warn!(key = ?k.as_ref(), "buffer key of the wrong length skipped"),
                    },
                    None => l_done = true,
                }
                continue;
            }
            if c_buf.is_empty() && !c_done {
                let next = chunks.next().transpose()?;
                if let Some((bad, e)) = corrupt.take() {
                    let end = match &next {
                        Some((k, _)) => be_u64(k).unwrap_or(bad + 1),
                        None => self.next_seq(),
                    };
                    self.note_corrupt(bad, end.saturating_sub(bad).max(1), &e);
                }
                match next {
                    Some((k, v)) => {
                        let Some(first) = be_u64(&k) else {
                            warn!(key = ?k.as_ref(), "chunk key of the wrong length skipped");
                            continue;
                        };
                        match chunk::envelopes(&v) {
                            Ok(envs) => c_buf.extend(
                                envs.into_iter()
                                    .enumerate()
                                    .map(|(i, e)| (first + i as u64, e))
                                    .filter(|(s, _)| *s >= from),
                            ),
                            Err(e) => corrupt = Some((first, e)),
                        }
                    }
                    None => c_done = true,
                }
                continue;
            }
            let l_seq = l_head.as_ref().map(|(s, _)| *s);
            let c_seq = c_buf.front().map(|(s, _)| *s);
            let take_legacy = match (l_seq, c_seq) {
                (None, None) => break,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (Some(ls), Some(cs)) => {
                    if ls == cs {
                        // Never both (legacy seqs are handed out by the same counter); if it
                        // happened, deliver one copy.
                        warn!(seq = cs, "sequence number stored twice; chunk copy ignored");
                        c_buf.pop_front();
                    }
                    ls <= cs
                }
            };
            let (seq, env, len) = if take_legacy {
                let Some((s, v)) = l_head.take() else { break };
                let len = v.len();
                (s, record::decode(&v), len)
            } else {
                let Some((s, e)) = c_buf.pop_front() else {
                    break;
                };
                (s, record::decode(&e), e.len())
            };
            match env {
                Ok(rec) => {
                    bytes += len;
                    out.push((seq, rec));
                    if out.len() >= max_records || bytes >= max_bytes {
                        break;
                    }
                }
                Err(e) => self.note_corrupt(seq, 1, &e),
            }
        }
        Ok(out)
    }

    /// Deletes every record with `seq ≤ committed` (legacy keys one by one, chunks whole once
    /// their last record is covered; a partly committed chunk stays and its committed records
    /// are skipped by readers starting at `committed + 1`), persists `meta.last_committed` and
    /// raises `next_seq` above it. Callers must pass only a token Snowflake reported committed
    /// (invariant I1). Returns the number of records newly covered.
    pub fn delete_through(&self, committed: u64) -> Result<u64, BufferError> {
        let mut removed = 0u64;
        {
            let _m = self.lock_maint();
            loop {
                let keys: Vec<sled::IVec> = self
                    .q
                    .range(..=committed.to_be_bytes())
                    .keys()
                    .take(DELETE_CHUNK)
                    .collect::<Result<_, _>>()?;
                let n = keys.len();
                // One remove per key, not a `Batch`: sled 0.34 holds on to memory for large batch
                // removals, and a crash halfway through is harmless: records ≤ committed are
                // skipped on restart and deleted by the next call.
                for k in keys {
                    self.q.remove(k)?;
                }
                removed += n as u64;
                if n < DELETE_CHUNK {
                    break;
                }
            }
            let sent_from = self.sent_from.load(Ordering::Relaxed);
            let mut iter = self.c.iter().peekable();
            while let Some(item) = iter.next() {
                let (k, v) = item?;
                let Some(first) = be_u64(&k) else { continue };
                if first > committed {
                    break;
                }
                let end = match chunk::count(&v) {
                    Ok(cnt) => first + u64::from(cnt),
                    // Corrupt: it ends where the next chunk starts (or at next_seq).
                    Err(_) => match iter.peek() {
                        Some(Ok((nk, _))) => be_u64(nk).unwrap_or(u64::MAX),
                        _ => self.next_seq(),
                    },
                };
                // Newly covered records of this chunk: [max(first, sent_from), min(end, committed + 1)).
                let lo = first.max(sent_from);
                let hi = end.min(committed.saturating_add(1));
                removed += hi.saturating_sub(lo);
                if end <= committed.saturating_add(1) {
                    self.c.remove(k)?;
                } else {
                    break;
                }
            }
            self.sent_from
                .fetch_max(committed.saturating_add(1), Ordering::Relaxed);
        }
        {
            let mut w = self.lock_writer();
            self.raise_committed(committed)?;
            if w.next <= committed {
                w.next = committed + 1;
                self.next_seq_view.store(w.next, Ordering::Relaxed);
                self.meta.insert(META_NEXT_SEQ, &w.next.to_be_bytes())?;
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
        let mut w = self.lock_writer();
        let confirmed = self.meta.get(META_SEQ_CONFIRMED)?.is_some();
        let mut renumbered = 0u64;
        if let Some(c) = committed {
            if !confirmed {
                let _m = self.lock_maint();
                let first_q = self.q.first()?.and_then(|(k, _)| be_u64(&k));
                let first_c = self.c.first()?.and_then(|(k, _)| be_u64(&k));
                let first = match (first_q, first_c) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                if let Some(first) = first.filter(|f| *f <= c) {
                    let delta = c + 1 - first;
                    let mut end = 0u64;
                    for tree in [&self.q, &self.c] {
                        let mut batch = sled::Batch::default();
                        let mut moved = Vec::new();
                        for item in tree.iter() {
                            let (k, v) = item?;
                            if let Some(seq) = be_u64(&k) {
                                batch.remove(k);
                                let n = if std::ptr::eq(tree, &self.c) {
                                    chunk::count(&v).map_or(1, u64::from)
                                } else {
                                    1
                                };
                                end = end.max(seq + delta + n);
                                renumbered += n;
                                moved.push((seq + delta, v));
                            }
                        }
                        // Removes first, inserts after: in a sled Batch the last write to a key wins.
                        for (seq, v) in moved {
                            batch.insert(&seq.to_be_bytes(), v);
                        }
                        tree.apply_batch(batch)?;
                    }
                    w.next = w.next.max(end);
                    warn!(
                        renumbered,
                        committed = c,
                        "swipes buffered before the first channel open renumbered above the channel's committed token"
                    );
                }
            }
            if w.next <= c {
                w.next = c + 1;
            }
            self.raise_committed(c)?;
        }
        self.next_seq_view.store(w.next, Ordering::Relaxed);
        self.meta.insert(META_NEXT_SEQ, &w.next.to_be_bytes())?;
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

    /// Lowest buffered sequence number: the first legacy key, or the first record of the first
    /// chunk that is not covered by the committed token (a partly committed chunk stays stored).
    pub fn first_seq(&self) -> Result<Option<u64>, BufferError> {
        Ok(self.first_record()?.map(|(s, _)| s))
    }

    /// The first buffered record (sequence number and, if readable, the record).
    fn first_record(&self) -> Result<Option<(u64, Option<SwipeRecord>)>, BufferError> {
        let mut best: Option<(u64, Option<SwipeRecord>)> = None;
        // The first legacy record may be corrupt: look a little further for its swipe time.
        let mut legacy = self.q.iter();
        if let Some((k, v)) = legacy.next().transpose()? {
            if let Some(seq) = be_u64(&k) {
                let mut rec = record::decode(&v).ok();
                for item in legacy.values().take(15) {
                    if rec.is_some() {
                        break;
                    }
                    rec = record::decode(&item?).ok();
                }
                best = Some((seq, rec));
            }
        }
        if let Some((k, v)) = self.c.first()? {
            if let Some(first) = be_u64(&k) {
                let from = self.committed().map_or(0, |c| c.saturating_add(1));
                let cand = match chunk::decode(&v) {
                    Ok(recs) => {
                        let i = from.saturating_sub(first).min(recs.len() as u64 - 1);
                        (first + i, recs.into_iter().nth(i as usize))
                    }
                    Err(_) => (first, None),
                };
                if best.as_ref().is_none_or(|(s, _)| cand.0 < *s) {
                    best = Some(cand);
                }
            }
        }
        Ok(best)
    }

    /// Metrics snapshot. O(1) in the number of records (never `Tree::len()`).
    pub fn stats(&self) -> Result<BufferStats, BufferError> {
        let next_seq = self.next_seq();
        let first = self.first_record()?;
        let first_seq = first.as_ref().map(|(s, _)| *s);
        let oldest_unsent_ms = first.and_then(|(_, r)| r).map(|r| r.swiped_at_ms);
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

    /// Number of sled keys holding records: (legacy keys, chunks). O(keys): diagnostics and
    /// benchmarks only.
    pub fn key_counts(&self) -> (usize, usize) {
        (self.q.len(), self.c.len())
    }

    /// Runs one merge pass over the whole chunk tree now (tests; production merges on the
    /// background thread). Returns the number of chunks merged away.
    pub fn merge_now(&self) -> Result<usize, BufferError> {
        let mut cursor = 0;
        merge_pass(&self.c, &self.maint, &mut cursor)
    }

    /// Test hook (not in the agent binary): overwrite the stored legacy value of `seq` with raw
    /// bytes.
    #[cfg(test)]
    pub(crate) fn put_raw_for_test(&self, seq: u64, raw: &[u8]) -> Result<(), BufferError> {
        self.q.insert(seq.to_be_bytes(), raw)?;
        Ok(())
    }

    /// Test hook (not in the agent binary): overwrite the stored chunk at key `first` with raw
    /// bytes.
    #[cfg(test)]
    pub(crate) fn put_raw_chunk_for_test(&self, first: u64, raw: &[u8]) -> Result<(), BufferError> {
        self.c.insert(first.to_be_bytes(), raw)?;
        Ok(())
    }
}

/// The merger thread: wakes when a small chunk was written (or every [`MERGE_EVERY`]) and
/// merges the tail's small chunks. Ends when the buffer is dropped.
fn merge_loop(c: &sled::Tree, maint: &Mutex<()>, sig: &MergeSignal, mut cursor: u64) {
    loop {
        {
            let mut st = sig.state.lock().unwrap_or_else(|p| p.into_inner());
            if !st.0 && !st.1 {
                st = sig
                    .wake
                    .wait_timeout(st, MERGE_EVERY)
                    .map(|(g, _)| g)
                    .unwrap_or_else(|p| p.into_inner().0);
            }
            if st.0 {
                return;
            }
            st.1 = false;
        }
        // Pace: let a burst of small commits accumulate instead of rewriting per commit.
        std::thread::sleep(MERGE_EVERY);
        if let Err(e) = merge_pass(c, maint, &mut cursor) {
            warn!(error = %e, "merging small buffer chunks failed; will retry");
        }
    }
}

/// One pass from `cursor`: every run of ≥ 2 adjacent small chunks whose records are
/// consecutive becomes one chunk (up to [`MERGE_TARGET`] records) in one atomic sled batch
/// (insert the merged chunk, remove its parts); a crash leaves either the parts or the merged
/// chunk, never both or neither. `cursor` advances past chunks that can no longer change.
fn merge_pass(c: &sled::Tree, maint: &Mutex<()>, cursor: &mut u64) -> Result<usize, BufferError> {
    let _m = maint.lock().unwrap_or_else(|p| p.into_inner());
    let mut merged_away = 0usize;
    // The open run: (first seq, records, parts' keys and values).
    let mut run: Vec<(u64, u32, sled::IVec)> = Vec::new();
    let mut total = 0u32;
    let flush = |run: &mut Vec<(u64, u32, sled::IVec)>| -> Result<usize, BufferError> {
        let parts = std::mem::take(run);
        if parts.len() < 2 {
            return Ok(0);
        }
        let mut b = ChunkBuilder::new();
        for (_, _, v) in &parts {
            match chunk::envelopes(v) {
                Ok(envs) => envs.iter().for_each(|e| b.push_envelope(e)),
                // Header fine, payload not: leave the run as it is; readers skip and count it.
                Err(_) => return Ok(0),
            }
        }
        let mut batch = sled::Batch::default();
        for (k, _, _) in &parts {
            batch.remove(&k.to_be_bytes());
        }
        batch.insert(&parts[0].0.to_be_bytes(), b.finish());
        c.apply_batch(batch)?;
        Ok(parts.len() - 1)
    };
    for item in c.range(cursor.to_be_bytes()..) {
        let (k, v) = item?;
        let Some(first) = be_u64(&k) else { continue };
        let cnt = match chunk::count(&v) {
            Ok(n) => n,
            Err(_) => {
                // Never merge across an unreadable chunk: it is skipped and counted by readers.
                merged_away += flush(&mut run)?;
                total = 0;
                *cursor = first + 1;
                continue;
            }
        };
        let adjacent = run
            .last()
            .is_none_or(|(f, n, _)| f + u64::from(*n) == first);
        if cnt < SMALL_CHUNK && adjacent && total + cnt <= MERGE_TARGET {
            run.push((first, cnt, v));
            total += cnt;
            continue;
        }
        merged_away += flush(&mut run)?;
        total = 0;
        if cnt < SMALL_CHUNK {
            *cursor = first;
            run.push((first, cnt, v));
            total = cnt;
        } else {
            *cursor = first + u64::from(cnt);
        }
    }
    if let Some((f, _, _)) = run.first() {
        *cursor = *f;
    }
    merged_away += flush(&mut run)?;
    Ok(merged_away)
}
