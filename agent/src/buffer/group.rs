//! Async group-commit front of the buffer: readers submit one swipe at a time and wait for its
//! acknowledgement; the committer gathers up to `max_records` swipes or `max_delay`, makes them
//! durable with one [`Buffer::append_durable`] (on a blocking thread: flush + fsync block), and
//! only then answers every waiter with its sequence number.
//!
//! A group commit can fail for reasons that pass (too many open files for the fsync pass, the
//! filesystem reserve reached for a moment). Its swipes are then not dropped: they wait, in
//! order, in a bounded in-memory **retry queue** and the commit is retried with back-off
//! ([`Backoff`], [`RetryCore`]: the pure decision part). Swipes arriving meanwhile queue behind
//! them (sequence numbers are assigned at commit time, so first in, first stored). A queued swipe
//! is *not* acknowledged; its submitter is told it is queued ([`Progress::Queued`]) so a reader
//! can keep reading. A swipe is lost only when the queue is full ([`CommitDropReason`], counted
//! and logged) or still queued when the agent stops after a grace period.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, error, warn};

use super::store::{Buffer, BufferError};
use crate::row::SwipeRecord;

/// The answer a submitter waits for: the swipe's sequence number once it is durable.
pub type Ack = Result<u64, BufferError>;

/// One submission: the swipe and where to send its acknowledgement.
pub type Submission = (SwipeRecord, Waiter);

/// The committer's side of one submission: the final acknowledgement, and an early notice that
/// the swipe waits in the retry queue.
#[derive(Debug)]
pub struct Waiter {
    ack: oneshot::Sender<Ack>,
    queued: Option<oneshot::Sender<()>>,
}

impl Waiter {
    /// A waiter and the submitter's end of it.
    pub fn new() -> (Waiter, PendingAck) {
        let (ack_tx, ack_rx) = oneshot::channel();
        let (queued_tx, queued_rx) = oneshot::channel();
        (
            Waiter {
                ack: ack_tx,
                queued: Some(queued_tx),
            },
            PendingAck {
                ack: ack_rx,
                queued: queued_rx,
            },
        )
    }

    fn notify_queued(&mut self) {
        if let Some(q) = self.queued.take() {
            let _ = q.send(());
        }
    }

    fn answer(self, ack: Ack) {
        // A submitter that gave up waiting is fine: a durable swipe stays durable.
        let _ = self.ack.send(ack);
    }
}

/// The submitter's end of one submission.
#[derive(Debug)]
pub struct PendingAck {
    ack: oneshot::Receiver<Ack>,
    queued: oneshot::Receiver<()>,
}

/// What [`PendingAck::progress`] returns.
#[derive(Debug)]
pub enum Progress {
    /// The final answer: durable with this sequence number, or not stored.
    Done(Ack),
    /// The swipe waits in the retry queue; the final answer comes later.
    Queued(QueuedAck),
}

/// The final answer of a queued swipe.
#[derive(Debug)]
pub struct QueuedAck(oneshot::Receiver<Ack>);

impl QueuedAck {
    /// Waits for the final answer.
    pub async fn wait(self) -> Ack {
        self.0.await.map_err(|_| BufferError::Closed)?
    }
}

impl PendingAck {
    /// Waits until the swipe is durable, refused, or queued for retry, whichever comes first.
    pub async fn progress(mut self) -> Progress {
        tokio::select! {
            biased;
            ack = &mut self.ack => Progress::Done(ack.map_err(|_| BufferError::Closed).and_then(|a| a)),
            queued = &mut self.queued => match queued {
                Ok(()) => Progress::Queued(QueuedAck(self.ack)),
                // The notice is dropped with the waiter, after the final answer was sent.
                Err(_) => Progress::Done(QueuedAck(self.ack).wait().await),
            },
        }
    }

    /// Waits for the final answer, however long the swipe is queued.
    pub async fn wait(self) -> Ack {
        QueuedAck(self.ack).wait().await
    }
}

/// Group-commit tuning.
#[derive(Debug, Clone)]
pub struct GroupCommitConfig {
    /// Most swipes made durable by one flush + fsync.
    pub max_records: usize,
    /// Longest the first swipe of a batch waits for companions.
    pub max_delay: Duration,
    /// Capacity of the submission queue (back-pressure on readers beyond it).
    pub queue_capacity: usize,
    /// Most swipes the retry queue holds while commits fail.
    pub retry_max_records: usize,
    /// Most bytes (estimated, [`approx_bytes`]) the retry queue holds.
    pub retry_max_bytes: u64,
    /// Back-off before the first retry; doubles up to `backoff_max`.
    pub backoff_first: Duration,
    /// Longest pause between retries.
    pub backoff_max: Duration,
    /// How long queued swipes are still retried once every submitter is gone (agent stopping).
    pub stop_grace: Duration,
}

impl Default for GroupCommitConfig {
    fn default() -> Self {
        GroupCommitConfig {
            max_records: 256,
            max_delay: Duration::from_millis(5),
            queue_capacity: 4096,
            retry_max_records: 10_000,
            retry_max_bytes: 4 * 1024 * 1024,
            backoff_first: Duration::from_millis(10),
            backoff_max: Duration::from_secs(1),
            stop_grace: Duration::from_secs(2),
        }
    }
}

impl GroupCommitConfig {
    /// From the agent's `[buffer]` configuration section.
    pub fn from_config(cfg: &crate::config::BufferConfig) -> Self {
        GroupCommitConfig {
            max_records: cfg.group_commit_max_records.max(1),
            max_delay: Duration::from_millis(cfg.group_commit_max_delay_ms),
            retry_max_records: cfg.retry_queue_max_records.max(1),
            retry_max_bytes: cfg.retry_queue_max_bytes,
            ..Self::default()
        }
    }
}

/// Why the committer gave a swipe up (metric label of `buffer_dropped_records{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitDropReason {
    /// Commits were failing and the retry queue was full.
    RetryQueueFull,
    /// The agent stopped while the swipe still waited for a successful commit.
    StoppedWhileRetrying,
}

impl CommitDropReason {
    /// The metric label value.
    pub fn as_label(self) -> &'static str {
        match self {
            CommitDropReason::RetryQueueFull => "retry_queue_full",
            CommitDropReason::StoppedWhileRetrying => "stopped_while_retrying",
        }
    }
}

/// Hook for metrics and readiness. Called from the committer task; keep it cheap.
pub trait CommitObserver: Send + Sync {
    /// The retry queue now holds `records` swipes (`bytes` estimated); 0 once it is empty.
    fn retry_queue(&self, _records: usize, _bytes: u64) {}
    /// Swipes were given up (never stored).
    fn dropped(&self, _reason: CommitDropReason, _count: u64) {}
}

// ---------------------------------------------------------------------------------------------
// Pure core: error classes, back-off, queue budget, next step.

/// How a failed commit is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// A policy refusal (`max_bytes` reached under refuse-new): answered at once, not retried.
    Refused,
    /// A fault that may pass (I/O, sync, descriptors, filesystem reserve): retried.
    Transient,
    /// The buffer is gone: answered at once.
    Closed,
}

/// Classifies an error of [`Buffer::append_durable`] / [`Buffer::sync_durable`].
pub fn classify(err: &BufferError) -> FailureKind {
    match err {
        BufferError::Full { .. } => FailureKind::Refused,
        BufferError::Closed => FailureKind::Closed,
        // The reserve is checked before each attempt (so it is queued, not refused); a refusal
        // that still gets through means space ran out in between: also a passing condition.
        BufferError::DiskReserve { .. }
        | BufferError::Storage(_)
        | BufferError::Sync { .. }
        | BufferError::Locked(_)
        | BufferError::Open { .. } => FailureKind::Transient,
    }
}

/// Pause between retries: `first`, doubling, capped at `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// A back-off starting at `first` and never longer than `max`.
    pub fn new(first: Duration, max: Duration) -> Self {
        Backoff {
            first,
            max,
            next: first.min(max),
        }
    }

    /// The pause before the next retry.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    /// Back to the first pause (after a success).
    pub fn reset(&mut self) {
        self.next = self.first.min(self.max);
    }
}

/// Size accounting of the retry queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    max_records: usize,
    max_bytes: u64,
    records: usize,
    bytes: u64,
}

impl Budget {
    /// An empty budget with these limits.
    pub fn new(max_records: usize, max_bytes: u64) -> Self {
        Budget {
            max_records,
            max_bytes,
            records: 0,
            bytes: 0,
        }
    }

    /// Whether one more swipe of `bytes` fits.
    pub fn fits(&self, bytes: u64) -> bool {
        self.records < self.max_records && self.bytes.saturating_add(bytes) <= self.max_bytes
    }

    /// Counts a swipe in.
    pub fn add(&mut self, bytes: u64) {
        self.records += 1;
        self.bytes = self.bytes.saturating_add(bytes);
    }

    /// Counts a swipe out.
    pub fn remove(&mut self, bytes: u64) {
        self.records = self.records.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(bytes);
    }

    /// Swipes counted.
    pub fn records(&self) -> usize {
        self.records
    }

    /// Bytes counted.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

/// What the committer does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing queued: wait for the next submission.
    Intake,
    /// Attempt a commit of the head of the queue now.
    CommitNow,
    /// Commits are failing: take submissions (queue them) until this instant, then retry.
    WaitUntil(Instant),
    /// Stopping, and the grace period for queued swipes is over: give them up.
    Abandon,
    /// Nothing queued and no submitter left: the committer ends.
    Finished,
}

/// The retry decision of the committer, without I/O.
#[derive(Debug, Clone)]
pub struct RetryCore {
    backoff: Backoff,
    retry_at: Option<Instant>,
    stop_deadline: Option<Instant>,
    stop_grace: Duration,
    failures: u32,
}

impl RetryCore {
    /// A core with this back-off and stop grace.
    pub fn new(backoff: Backoff, stop_grace: Duration) -> Self {
        RetryCore {
            backoff,
            retry_at: None,
            stop_deadline: None,
            stop_grace,
            failures: 0,
        }
    }

    /// Whether the last attempt failed (the queue is held for retry).
    pub fn failing(&self) -> bool {
        self.retry_at.is_some()
    }

    /// Failed attempts since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The next step, given the time, how many swipes are queued and whether submitters remain.
    pub fn step(&self, now: Instant, queued: usize, intake_open: bool) -> Step {
        if queued == 0 {
            return if intake_open {
                Step::Intake
            } else {
                Step::Finished
            };
        }
        let deadline = if intake_open {
            None
        } else {
            self.stop_deadline
        };
        if deadline.is_some_and(|d| now >= d) && self.failing() {
            return Step::Abandon;
        }
        match self.retry_at {
            None => Step::CommitNow,
            Some(at) if now >= at => Step::CommitNow,
            Some(at) => Step::WaitUntil(deadline.map_or(at, |d| d.min(at))),
        }
    }

    /// An attempt failed with a transient fault at `now`: schedules the retry.
    pub fn failed(&mut self, now: Instant) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let delay = self.backoff.next_delay();
        self.retry_at = Some(now + delay);
        delay
    }

    /// An attempt succeeded: the next one goes at once.
    pub fn succeeded(&mut self) {
        self.failures = 0;
        self.retry_at = None;
        self.backoff.reset();
    }

    /// Every submitter is gone at `now`: queued swipes get the stop grace, then are given up.
    pub fn intake_closed(&mut self, now: Instant) {
        self.stop_deadline.get_or_insert(now + self.stop_grace);
    }
}

/// Estimated heap + inline size of a swipe held in memory, for the retry queue's byte bound.
pub fn approx_bytes(rec: &SwipeRecord) -> u64 {
    let strings = [
        Some(&rec.reader_id),
        rec.zone_id.as_ref(),
        rec.door_id.as_ref(),
        rec.credential.as_ref(),
        rec.format.as_ref(),
        rec.raw_bits.as_ref(),
        rec.detail.as_ref(),
        Some(&rec.agent_version),
    ];
    let heap: usize = strings.iter().flatten().map(|s| s.len()).sum();
    // The item in the queue also holds its waiter's two channel ends (~100 bytes).
    (std::mem::size_of::<SwipeRecord>() + heap + 128) as u64
}

// ---------------------------------------------------------------------------------------------
// The async shell.

/// Cheap, cloneable handle used by readers to submit swipes.
#[derive(Debug, Clone)]
pub struct GroupCommitHandle {
    tx: mpsc::Sender<Submission>,
}

impl GroupCommitHandle {
    /// Submits one swipe and waits until it is durable; returns its sequence number.
    /// An error means the swipe was NOT stored (buffer full, retry queue full, committer stopped).
    pub async fn commit(&self, rec: SwipeRecord) -> Ack {
        self.submit(rec).await?.wait().await
    }

    /// Submits one swipe; the returned [`PendingAck`] tells when it is durable, or early that
    /// it waits in the retry queue. Waits only while the submission queue is full.
    pub async fn submit(&self, rec: SwipeRecord) -> Result<PendingAck, BufferError> {
        let (waiter, pending) = Waiter::new();
        self.tx
            .send((rec, waiter))
            .await
            .map_err(|_| BufferError::Closed)?;
        Ok(pending)
    }

    /// The raw submission queue, for callers that want to manage the waiter themselves.
    pub fn sender(&self) -> mpsc::Sender<Submission> {
        self.tx.clone()
    }
}

/// The group-commit task.
#[derive(Debug)]
pub struct GroupCommitter;

struct Item {
    rec: SwipeRecord,
    bytes: u64,
    waiter: Waiter,
}

/// Result of one blocking attempt.
enum Attempt {
    Durable(Range<u64>),
    /// Failed after the records were written under these sequence numbers: only a sync is left.
    Written(Range<u64>, BufferError),
    /// Failed with nothing written.
    Failed(BufferError),
}

/// Blocking: one append, telling apart a failure before and after the batch was written (the
/// store assigns sequence numbers when it writes; only the committer appends, so a `next_seq`
/// that moved by exactly the batch, holding exactly these records, means they are stored).
fn append_blocking(buffer: &Buffer, recs: &[SwipeRecord]) -> Attempt {
    let opts = buffer.options();
    if opts.min_free_bytes > 0 {
        // Checked here too so a filesystem that fills for a moment queues swipes instead of
        // having the store refuse them (a refusal is final); statvfs may fail on some FUSE
        // mounts, then the store's own check decides.
        if let Ok(free) = fs2::available_space(&opts.path) {
            if free < opts.min_free_bytes {
                return Attempt::Failed(BufferError::DiskReserve {
                    free,
                    reserve: opts.min_free_bytes,
                });
            }
        }
    }
    let before = buffer.next_seq();
    match buffer.append_durable(recs) {
        Ok(range) => Attempt::Durable(range),
        Err(e) => {
            let n = recs.len() as u64;
            let after = buffer.next_seq();
            if after != before.saturating_add(n) || n == 0 {
                return Attempt::Failed(e);
            }
            match buffer.range_from(before, recs.len(), usize::MAX) {
                // Records the drain already deleted are missing from the read: fine.
                Ok(stored)
                    if stored.iter().all(|(seq, rec)| {
                        seq.checked_sub(before)
                            .and_then(|i| usize::try_from(i).ok())
                            .and_then(|i| recs.get(i))
                            == Some(rec)
                    }) =>
                {
                    Attempt::Written(before..after, e)
                }
                _ => {
                    warn!(
                        error = %e,
                        "failed group commit moved the sequence but its records are not readable; retrying as new"
                    );
                    Attempt::Failed(e)
                }
            }
        }
    }
}

struct Shell {
    buffer: Arc<Buffer>,
    cfg: GroupCommitConfig,
    observer: Option<Arc<dyn CommitObserver>>,
    queue: VecDeque<Item>,
    budget: Budget,
    /// The head `len` items were written under these sequence numbers but are not durable yet.
    written: Option<Range<u64>>,
    core: RetryCore,
    /// The queue holds swipes that met a failure (readiness degraded until it empties).
    degraded: bool,
    dropped_in_outage: u64,
}

impl Shell {
    fn push(&mut self, rec: SwipeRecord, mut waiter: Waiter) {
        let bytes = approx_bytes(&rec);
        if self.degraded {
            if !self.budget.fits(bytes) {
                self.drop_overflow(waiter);
                return;
            }
            waiter.notify_queued();
        }
        self.budget.add(bytes);
        self.queue.push_back(Item { rec, bytes, waiter });
        self.report();
    }

    fn drop_overflow(&mut self, waiter: Waiter) {
        self.dropped_in_outage += 1;
        if self.dropped_in_outage == 1 || self.dropped_in_outage.is_multiple_of(1000) {
            error!(
                reason = CommitDropReason::RetryQueueFull.as_label(),
                dropped = self.dropped_in_outage,
                queued = self.budget.records(),
                queued_bytes = self.budget.bytes(),
                "swipe dropped: commits are failing and the retry queue is full \
                 (buffer.retry_queue_max_records / retry_queue_max_bytes)"
            );
        }
        if let Some(o) = &self.observer {
            o.dropped(CommitDropReason::RetryQueueFull, 1);
        }
        waiter.answer(Err(BufferError::Storage(format!(
            "not stored: group commits are failing and the retry queue is full ({} swipes, {} bytes)",
            self.budget.records(),
            self.budget.bytes()
        ))));
    }

    fn report(&self) {
        if let Some(o) = &self.observer {
            if self.degraded {
                o.retry_queue(self.budget.records(), self.budget.bytes());
            }
        }
    }

    fn pop_front(&mut self) -> Option<Item> {
        let item = self.queue.pop_front()?;
        self.budget.remove(item.bytes);
        Some(item)
    }

    /// The queue is empty again: readiness back to normal.
    fn settle(&mut self) {
        if self.queue.is_empty() && self.degraded {
            self.degraded = false;
            if let Some(o) = &self.observer {
                o.retry_queue(0, 0);
            }
            if self.dropped_in_outage > 0 {
                error!(
                    dropped = self.dropped_in_outage,
                    reason = CommitDropReason::RetryQueueFull.as_label(),
                    "group commits work again; swipes were dropped while the retry queue was full"
                );
            } else {
                warn!("group commits work again; every held swipe is durable");
            }
            self.dropped_in_outage = 0;
        }
    }

    /// A transient failure: hold the queue (bounded) and schedule the retry.
    fn hold(&mut self, err: &BufferError) {
        let delay = self.core.failed(Instant::now());
        if !self.degraded {
            self.degraded = true;
            // The failed batch was admitted without the bound; keep the oldest that fit.
            let mut budget = Budget::new(self.cfg.retry_max_records, self.cfg.retry_max_bytes);
            let mut kept = VecDeque::with_capacity(self.queue.len());
            let mut over = Vec::new();
            let written = self.written.as_ref().map_or(0, |r| r.end - r.start);
            for (i, mut item) in std::mem::take(&mut self.queue).into_iter().enumerate() {
                // Written records are in the store already: always keep them.
                if (i as u64) < written || budget.fits(item.bytes) {
                    budget.add(item.bytes);
                    item.waiter.notify_queued();
                    kept.push_back(item);
                } else {
                    over.push(item.waiter);
                }
            }
            self.queue = kept;
            self.budget = budget;
            for w in over {
                self.drop_overflow(w);
            }
            error!(
                error = %err,
                held = self.queue.len(),
                retry_in_ms = delay.as_millis() as u64,
                "group commit failed; swipes are held in memory and retried (not yet stored)"
            );
        } else if self.core.failures().is_multiple_of(20) {
            warn!(
                error = %err,
                failures = self.core.failures(),
                held = self.queue.len(),
                "group commit still failing; swipes held for retry"
            );
        } else {
            debug!(error = %err, held = self.queue.len(), "group commit retry failed");
        }
        self.report();
    }

    fn answer_head(&mut self, n: usize, ack: impl Fn(usize) -> Ack) {
        for i in 0..n {
            if let Some(item) = self.pop_front() {
                item.waiter.answer(ack(i));
            }
        }
        self.report();
    }

    async fn commit_head(&mut self) {
        if let Some(range) = self.written.clone() {
            let buf = Arc::clone(&self.buffer);
            let r = range.clone();
            let result = tokio::task::spawn_blocking(move || buf.sync_durable(r))
                .await
                .unwrap_or_else(|e| Err(BufferError::Storage(format!("sync task failed: {e}"))));
            match result {
                Ok(()) => {
                    self.written = None;
                    self.core.succeeded();
                    let n = usize::try_from(range.end - range.start).unwrap_or(usize::MAX);
                    self.answer_head(n, |i| Ok(range.start + i as u64));
                }
                Err(e) => self.hold(&e),
            }
            return;
        }
        let n = self.queue.len().min(self.cfg.max_records.max(1));
        let recs: Vec<SwipeRecord> = self
            .queue
            .iter_mut()
            .take(n)
            .map(|item| {
                // Moved out for the blocking call and put back below; a placeholder meanwhile.
                std::mem::replace(&mut item.rec, placeholder())
            })
            .collect();
        let buf = Arc::clone(&self.buffer);
        let joined = tokio::task::spawn_blocking(move || {
            let attempt = append_blocking(&buf, &recs);
            (recs, attempt)
        })
        .await;
        let (recs, attempt) = match joined {
            Ok(r) => r,
            Err(e) => {
                // The records went down with the task: nothing to retry with.
                error!(error = %e, "group commit task failed; swipes NOT stored");
                self.answer_head(n, |_| {
                    Err(BufferError::Storage(format!(
                        "group commit task failed: {e}"
                    )))
                });
                return;
            }
        };
        for (item, rec) in self.queue.iter_mut().zip(recs) {
            item.rec = rec;
        }
        match attempt {
            Attempt::Durable(range) => {
                self.core.succeeded();
                self.answer_head(n, |i| Ok(range.start + i as u64));
            }
            Attempt::Written(range, e) => {
                self.written = Some(range);
                self.hold(&e);
            }
            Attempt::Failed(e) => match classify(&e) {
                FailureKind::Transient => self.hold(&e),
                FailureKind::Refused | FailureKind::Closed => {
                    // Already counted and logged by the store's observer.
                    self.answer_head(n, |_| Err(e.clone()));
                }
            },
        }
    }

    fn abandon(&mut self) {
        let written = self.written.take().map_or(0, |r| {
            usize::try_from(r.end - r.start).unwrap_or(usize::MAX)
        });
        let total = self.queue.len();
        let lost = total.saturating_sub(written) as u64;
        error!(
            lost,
            written_not_confirmed = written,
            reason = CommitDropReason::StoppedWhileRetrying.as_label(),
            "stopping while group commits fail: queued swipes were never stored"
        );
        if lost > 0 {
            if let Some(o) = &self.observer {
                o.dropped(CommitDropReason::StoppedWhileRetrying, lost);
            }
        }
        self.answer_head(total, |_| {
            Err(BufferError::Storage(
                "agent stopped while the swipe waited for a working commit".into(),
            ))
        });
        self.settle();
    }
}

fn placeholder() -> SwipeRecord {
    SwipeRecord::status(crate::row::EventType::Card, "", None, 0, false, "")
}

impl GroupCommitter {
    /// Spawns the committer on the current tokio runtime. It ends when every handle is dropped
    /// (after committing what was queued).
    pub fn spawn(
        buffer: Arc<Buffer>,
        cfg: GroupCommitConfig,
    ) -> (GroupCommitHandle, JoinHandle<()>) {
        Self::spawn_observed(buffer, cfg, None)
    }

    /// [`GroupCommitter::spawn`] with an observer of the retry queue and its drops.
    pub fn spawn_observed(
        buffer: Arc<Buffer>,
        cfg: GroupCommitConfig,
        observer: Option<Arc<dyn CommitObserver>>,
    ) -> (GroupCommitHandle, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(cfg.queue_capacity.max(1));
        let task = tokio::spawn(Self::run_observed(buffer, cfg, rx, observer));
        (GroupCommitHandle { tx }, task)
    }

    /// The committer loop (public so callers can run it on a runtime of their choice).
    pub async fn run(buffer: Arc<Buffer>, cfg: GroupCommitConfig, rx: mpsc::Receiver<Submission>) {
        Self::run_observed(buffer, cfg, rx, None).await;
    }

    async fn run_observed(
        buffer: Arc<Buffer>,
        cfg: GroupCommitConfig,
        mut rx: mpsc::Receiver<Submission>,
        observer: Option<Arc<dyn CommitObserver>>,
    ) {
        let max = cfg.max_records.max(1);
        let core = RetryCore::new(
            Backoff::new(cfg.backoff_first, cfg.backoff_max),
            cfg.stop_grace,
        );
        let mut shell = Shell {
            budget: Budget::new(cfg.retry_max_records, cfg.retry_max_bytes),
            buffer,
            cfg,
            observer,
            queue: VecDeque::new(),
            written: None,
            core,
            degraded: false,
            dropped_in_outage: 0,
        };
        let mut intake_open = true;
        loop {
            match shell
                .core
                .step(Instant::now(), shell.queue.len(), intake_open)
            {
                Step::Finished => break,
                Step::Intake => {
                    let Some((rec, waiter)) = rx.recv().await else {
                        intake_open = false;
                        shell.core.intake_closed(Instant::now());
                        continue;
                    };
                    shell.push(rec, waiter);
                    let deadline = Instant::now() + shell.cfg.max_delay;
                    while shell.queue.len() < max {
                        // Take whatever is already queued without waiting, then wait until the deadline.
                        match rx.try_recv() {
                            Ok((rec, waiter)) => {
                                shell.push(rec, waiter);
                                continue;
                            }
                            Err(mpsc::error::TryRecvError::Disconnected) => break,
                            Err(mpsc::error::TryRecvError::Empty) => {}
                        }
                        match tokio::time::timeout_at(deadline, rx.recv()).await {
                            Ok(Some((rec, waiter))) => shell.push(rec, waiter),
                            Ok(None) | Err(_) => break,
                        }
                    }
                }
                Step::CommitNow => {
                    shell.commit_head().await;
                    shell.settle();
                }
                Step::WaitUntil(at) => {
                    if intake_open {
                        tokio::select! {
                            sub = rx.recv() => match sub {
                                Some((rec, waiter)) => shell.push(rec, waiter),
                                None => {
                                    intake_open = false;
                                    shell.core.intake_closed(Instant::now());
                                }
                            },
                            () = tokio::time::sleep_until(at) => {}
                        }
                    } else {
                        tokio::time::sleep_until(at).await;
                    }
                }
                Step::Abandon => shell.abandon(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn errors_are_classified_for_retry() {
        let cases: [(BufferError, FailureKind); 7] = [
            (
                BufferError::Full {
                    size_on_disk: 2,
                    max_bytes: 1,
                },
                FailureKind::Refused,
            ),
            (
                BufferError::DiskReserve {
                    free: 1,
                    reserve: 2,
                },
                FailureKind::Transient,
            ),
            (
                BufferError::Storage("Too many open files (os error 24)".into()),
                FailureKind::Transient,
            ),
            (
                BufferError::Sync {
                    path: PathBuf::from("/b/db"),
                    msg: "Input/output error (os error 5)".into(),
                },
                FailureKind::Transient,
            ),
            (
                BufferError::Locked(PathBuf::from("/b")),
                FailureKind::Transient,
            ),
            (
                BufferError::Open {
                    path: PathBuf::from("/b"),
                    msg: "x".into(),
                },
                FailureKind::Transient,
            ),
            (BufferError::Closed, FailureKind::Closed),
        ];
        for (err, kind) in cases {
            assert_eq!(classify(&err), kind, "{err}");
        }
    }

    #[test]
    fn backoff_doubles_caps_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_secs(1));
        let got: Vec<u128> = (0..9).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(got, vec![10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(10));
        // A first pause above the cap is capped too.
        let mut b = Backoff::new(Duration::from_secs(5), Duration::from_secs(1));
        assert_eq!(b.next_delay(), Duration::from_secs(1));
    }

    #[test]
    fn budget_bounds_records_and_bytes() {
        // (max_records, max_bytes, sizes added, size asked, fits)
        let cases: [(usize, u64, &[u64], u64, bool); 6] = [
            (2, 1000, &[], 100, true),
            (2, 1000, &[100], 100, true),
            (2, 1000, &[100, 100], 100, false),
            (10, 250, &[100, 100], 50, true),
            (10, 250, &[100, 100], 51, false),
            (10, 250, &[], 251, false),
        ];
        for (max_r, max_b, added, ask, fits) in cases {
            let mut b = Budget::new(max_r, max_b);
            for s in added {
                b.add(*s);
            }
            assert_eq!(b.fits(ask), fits, "{max_r} {max_b} {added:?} {ask}");
        }
        let mut b = Budget::new(1, 100);
        b.add(60);
        b.remove(60);
        assert_eq!((b.records(), b.bytes()), (0, 0));
        assert!(b.fits(100));
    }

    #[test]
    fn retry_core_steps() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut core = RetryCore::new(Backoff::new(ms(10), ms(1000)), ms(2000));
        // (queued, intake open, expected step at t0) before any failure
        assert_eq!(core.step(t0, 0, true), Step::Intake);
        assert_eq!(core.step(t0, 0, false), Step::Finished);
        assert_eq!(core.step(t0, 3, true), Step::CommitNow);
        assert_eq!(core.step(t0, 3, false), Step::CommitNow);
        // A failure: wait for the back-off, taking submissions meanwhile; then retry.
        assert_eq!(core.failed(t0), ms(10));
        assert!(core.failing());
        assert_eq!(core.step(t0, 3, true), Step::WaitUntil(t0 + ms(10)));
        assert_eq!(core.step(t0 + ms(9), 3, true), Step::WaitUntil(t0 + ms(10)));
        assert_eq!(core.step(t0 + ms(10), 3, true), Step::CommitNow);
        assert_eq!(core.failed(t0 + ms(10)), ms(20));
        assert_eq!(
            core.step(t0 + ms(15), 3, true),
            Step::WaitUntil(t0 + ms(30))
        );
        // Stopping: the retry keeps going until the grace period ends, then the queue is given up.
        core.intake_closed(t0 + ms(20));
        core.intake_closed(t0 + ms(500)); // a second notice does not extend the grace
        assert_eq!(
            core.step(t0 + ms(25), 3, false),
            Step::WaitUntil(t0 + ms(30))
        );
        assert_eq!(core.step(t0 + ms(30), 3, false), Step::CommitNow);
        assert_eq!(core.failed(t0 + ms(1990)), ms(40));
        assert_eq!(
            core.step(t0 + ms(1995), 3, false),
            Step::WaitUntil(t0 + ms(2020))
        );
        assert_eq!(core.step(t0 + ms(2020), 3, false), Step::Abandon);
        assert_eq!(core.step(t0 + ms(2020), 0, false), Step::Finished);
        // A success clears the failure: commit at once, back-off from the start.
        core.succeeded();
        assert!(!core.failing());
        assert_eq!(core.failures(), 0);
        assert_eq!(core.step(t0 + ms(2020), 3, false), Step::CommitNow);
        assert_eq!(core.failed(t0), ms(10));
    }

    #[derive(Default)]
    struct Seen {
        depth: std::sync::Mutex<Vec<usize>>,
        dropped: std::sync::Mutex<Vec<(CommitDropReason, u64)>>,
    }

    impl CommitObserver for Seen {
        fn retry_queue(&self, records: usize, _bytes: u64) {
            self.depth.lock().unwrap().push(records);
        }
        fn dropped(&self, reason: CommitDropReason, count: u64) {
            self.dropped.lock().unwrap().push((reason, count));
        }
    }

    /// The shell with a filesystem reserve that can never be met: every commit fails
    /// transiently. Swipes are queued (submitters told so), the overflow is dropped and counted,
    /// and at stop the rest is given up after the grace period, counted too.
    #[tokio::test]
    async fn failing_commits_queue_then_drop_on_overflow_and_at_stop() {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = crate::buffer::BufferOptions::new(dir.path().join("b"));
        opts.min_free_bytes = u64::MAX;
        let buffer = Arc::new(Buffer::open(opts).unwrap());
        let seen = Arc::new(Seen::default());
        let cfg = GroupCommitConfig {
            retry_max_records: 3,
            stop_grace: Duration::from_millis(200),
            ..GroupCommitConfig::default()
        };
        let observer: Arc<dyn CommitObserver> = seen.clone();
        let (handle, task) =
            GroupCommitter::spawn_observed(Arc::clone(&buffer), cfg, Some(observer));
        let mut queued = Vec::new();
        for n in 0..5 {
            let mut rec = placeholder();
            rec.credential = Some(format!("c{n}"));
            match handle.submit(rec).await.unwrap().progress().await {
                Progress::Queued(q) => queued.push(q),
                Progress::Done(ack) => {
                    assert!(n >= 3, "swipe {n} answered early: {ack:?}");
                    assert!(ack.unwrap_err().to_string().contains("retry queue is full"));
                }
            }
        }
        assert_eq!(queued.len(), 3);
        drop(handle);
        for q in queued {
            assert!(q.wait().await.is_err(), "nothing could be stored");
        }
        task.await.unwrap();
        assert_eq!(buffer.next_seq(), 0, "no sequence number was used");
        let dropped = seen.dropped.lock().unwrap().clone();
        assert_eq!(
            dropped,
            vec![
                (CommitDropReason::RetryQueueFull, 1),
                (CommitDropReason::RetryQueueFull, 1),
                (CommitDropReason::StoppedWhileRetrying, 3),
            ]
        );
        let depth = seen.depth.lock().unwrap().clone();
        assert_eq!(depth.iter().max(), Some(&3), "{depth:?}");
        assert_eq!(
            depth.last(),
            Some(&0),
            "readiness restored at the end: {depth:?}"
        );
    }

    #[test]
    fn approx_bytes_grows_with_the_strings() {
        let mut rec = placeholder();
        let empty = approx_bytes(&rec);
        rec.credential = Some("H10301:123:4567".into());
        assert_eq!(approx_bytes(&rec), empty + 15);
    }
}
