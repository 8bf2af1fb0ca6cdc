//! Async group-commit front of the buffer: readers submit one swipe at a time and wait for its
//! acknowledgement; the committer gathers up to `max_records` swipes or `max_delay`, makes them
//! durable with one [`Buffer::append_durable`] (on a blocking thread: flush + fsync block), and
//! only then answers every waiter with its sequence number.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::error;

use super::store::{Buffer, BufferError};
use crate::row::SwipeRecord;

/// The answer a submitter waits for: the swipe's sequence number once it is durable.
pub type Ack = Result<u64, BufferError>;

/// One submission: the swipe and where to send its acknowledgement.
pub type Submission = (SwipeRecord, oneshot::Sender<Ack>);

/// Group-commit tuning.
#[derive(Debug, Clone)]
pub struct GroupCommitConfig {
    /// Most swipes made durable by one flush + fsync.
    pub max_records: usize,
    /// Longest the first swipe of a batch waits for companions.
    pub max_delay: Duration,
    /// Capacity of the submission queue (back-pressure on readers beyond it).
    pub queue_capacity: usize,
}

impl Default for GroupCommitConfig {
    fn default() -> Self {
        GroupCommitConfig {
            max_records: 256,
            max_delay: Duration::from_millis(5),
            queue_capacity: 4096,
        }
    }
}

impl GroupCommitConfig {
    /// From the agent's `[buffer]` configuration section.
    pub fn from_config(cfg: &crate::config::BufferConfig) -> Self {
        GroupCommitConfig {
            max_records: cfg.group_commit_max_records.max(1),
            max_delay: Duration::from_millis(cfg.group_commit_max_delay_ms),
            ..Self::default()
        }
    }
}

/// Cheap, cloneable handle used by readers to submit swipes.
#[derive(Debug, Clone)]
pub struct GroupCommitHandle {
    tx: mpsc::Sender<Submission>,
}

impl GroupCommitHandle {
    /// Submits one swipe and waits until it is durable; returns its sequence number.
    /// An error means the swipe was NOT stored (buffer full, I/O error, committer stopped).
    pub async fn commit(&self, rec: SwipeRecord) -> Ack {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send((rec, tx))
            .await
            .map_err(|_| BufferError::Closed)?;
        rx.await.map_err(|_| BufferError::Closed)?
    }

    /// The raw submission queue, for callers that want to manage the oneshot themselves.
    pub fn sender(&self) -> mpsc::Sender<Submission> {
        self.tx.clone()
    }
}

/// The group-commit task.
#[derive(Debug)]
pub struct GroupCommitter;

impl GroupCommitter {
    /// Spawns the committer on the current tokio runtime. It ends when every handle is dropped
    /// (after committing what was queued).
    pub fn spawn(
        buffer: Arc<Buffer>,
        cfg: GroupCommitConfig,
    ) -> (GroupCommitHandle, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(cfg.queue_capacity.max(1));
        let task = tokio::spawn(Self::run(buffer, cfg, rx));
        (GroupCommitHandle { tx }, task)
    }

    /// The committer loop (public so callers can run it on a runtime of their choice).
    pub async fn run(
        buffer: Arc<Buffer>,
        cfg: GroupCommitConfig,
        mut rx: mpsc::Receiver<Submission>,
    ) {
        let max = cfg.max_records.max(1);
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            let deadline = tokio::time::Instant::now() + cfg.max_delay;
            while batch.len() < max {
                // Take whatever is already queued without waiting, then wait until the deadline.
                match rx.try_recv() {
                    Ok(s) => {
                        batch.push(s);
                        continue;
                    }
                    Err(mpsc::error::TryRecvError::Disconnected) => break,
                    Err(mpsc::error::TryRecvError::Empty) => {}
                }
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(s)) => batch.push(s),
                    Ok(None) | Err(_) => break,
                }
            }
            let (recs, waiters): (Vec<SwipeRecord>, Vec<oneshot::Sender<Ack>>) =
                batch.into_iter().unzip();
            let buf = Arc::clone(&buffer);
            let result = tokio::task::spawn_blocking(move || buf.append_durable(&recs))
                .await
                .unwrap_or_else(|e| {
                    error!(error = %e, "group commit task failed");
                    Err(BufferError::Storage(format!(
                        "group commit task failed: {e}"
                    )))
                });
            match result {
                Ok(range) => {
                    for (seq, w) in range.zip(waiters) {
                        // A submitter that gave up waiting is fine: its swipe is durable anyway.
                        let _ = w.send(Ok(seq));
                    }
                }
                Err(e) => {
                    for w in waiters {
                        let _ = w.send(Err(e.clone()));
                    }
                }
            }
        }
    }
}
