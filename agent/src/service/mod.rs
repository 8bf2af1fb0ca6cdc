//! The running agent: wires readers → buffer → drain → Snowpipe, plus health, and supervises
//! them until shutdown.
//!
//! The reading side never waits for the upload side: readers and the group committer run on
//! tokio; the drain runs on its own thread with blocking HTTP. If the drain stops (bad key,
//! missing pipe, repeated channel recoveries), it is restarted in-process after a cool-down
//! instead of exiting, because a process restart would stop the door readers while Snowflake is
//! the problem. Process-level trouble (a wedged loop) is left to the systemd watchdog.

mod drain_thread;
pub mod heartbeat;
pub mod ingest;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::buffer::{
    Buffer, BufferError, BufferObserver, BufferOptions, CommitDropReason, CommitObserver,
    DropReason, GroupCommitConfig, GroupCommitter,
};
use crate::config::{Config, ReaderSpec};
use crate::health::metrics::gauge_value;
use crate::health::{watchdog, Health};

/// Git commit the binary was built from, when the build knew it.
pub const BUILD_COMMIT: &str = match option_env!("BADGE_AGENT_COMMIT") {
    Some(commit) => commit,
    None => "unknown",
};

/// Time readers and the group committer get to finish at shutdown (systemd's stop timeout is
/// 30 s; the goal is an exit within 5 s in every state).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// Extra time the drain thread gets after that (its waits end at once on stop).
const DRAIN_GRACE: Duration = Duration::from_secs(1);

/// Why the agent could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The buffer could not be opened (and was not corrupt, so it was not quarantined).
    #[error("cannot open the swipe buffer: {0}")]
    Buffer(#[from] BufferError),
    /// A blocking task panicked.
    #[error("internal task failed: {0}")]
    Task(String),
}

/// Exports buffer events as metrics.
struct BufferMetrics(Arc<Health>);

impl BufferObserver for BufferMetrics {
    fn durable(&self, seqs: std::ops::Range<u64>, flush_latency: Duration) {
        let metrics = &self.0.metrics;
        metrics
            .buffer_received_records
            .inc_by(seqs.end.saturating_sub(seqs.start));
        metrics
            .storage_flush_duration_seconds
            .observe(flush_latency.as_secs_f64());
    }

    fn dropped(&self, reason: DropReason, count: u64, refused: bool) {
        self.0.metrics.dropped(reason.as_label(), count);
        if refused {
            tracing::error!(
                reason = reason.as_label(),
                count,
                "swipes refused: the buffer is full; check the network and buffer.max_bytes"
            );
        }
    }
}

/// Exports the group committer's retry queue (readiness, depth gauge) and its drops.
struct CommitMetrics(Arc<Health>);

impl CommitObserver for CommitMetrics {
    fn retry_queue(&self, records: usize, _bytes: u64) {
        self.0.set_retry_queue(records as u64);
    }

    fn dropped(&self, reason: CommitDropReason, count: u64) {
        self.0.metrics.dropped(reason.as_label(), count);
    }
}

/// The health state a service run reports into (callers keep a handle to watch progress).
pub fn new_health(config: &Config) -> Arc<Health> {
    Health::new(&config.gateway_id, crate::row::AGENT_VERSION, BUILD_COMMIT)
}

/// Runs the agent until `shutdown` resolves.
pub async fn run(
    config: Config,
    readers: Vec<ReaderSpec>,
    health: Arc<Health>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ServiceError> {
    // 1. The buffer: nothing is read before swipes can be made durable.
    let mut options = BufferOptions::from_config(&config.buffer);
    options.path = config.buffer.resolved_path();
    let observer: Arc<dyn BufferObserver> = Arc::new(BufferMetrics(Arc::clone(&health)));
    let buffer =
        tokio::task::spawn_blocking(move || Buffer::open_observed(options, Some(observer)))
            .await
            .map_err(|e| ServiceError::Task(e.to_string()))??;
    let buffer = Arc::new(buffer);
    if let Some(path) = buffer.quarantined_to() {
        tracing::error!(
            moved_to = %path.display(),
            "the buffer database could not be opened and was moved aside; started a fresh one"
        );
    }
    health
        .metrics
        .buffer_max_bytes
        .set(gauge_value(config.buffer.max_bytes));
    let (committer, committer_task) = GroupCommitter::spawn_observed(
        Arc::clone(&buffer),
        GroupCommitConfig::from_config(&config.buffer),
        Some(Arc::new(CommitMetrics(Arc::clone(&health)))),
    );

    // 2. Health endpoints: TCP (loopback by default) and the private socket for our own tools.
    //    A busy port or a bad directory must not stop the door readers.
    let listen: Option<SocketAddr> = config.health.listen.parse().ok();
    let socket = config.health.resolved_socket(&config.buffer);
    let servers = crate::health::server::start(listen, &socket, &health).await;

    // 3. Readers.
    let (stop_tx, stop_rx) = watch::channel(false);
    let reader_tasks: Vec<_> = readers
        .into_iter()
        .map(|spec| {
            crate::readers::spawn(
                spec,
                Arc::clone(&health),
                committer.clone(),
                stop_rx.clone(),
            )
        })
        .collect();

    // 4. Buffer figures for metrics, status and readiness.
    let stats_task = tokio::spawn(buffer_stats_loop(
        Arc::clone(&buffer),
        Arc::clone(&health),
        committer.sender(),
        config.buffer.max_bytes,
    ));

    let _heartbeat_task = config.heartbeat.interval().map(|every| {
        tokio::spawn(heartbeat::run(
            every,
            config.buffer.max_bytes,
            Arc::clone(&health),
            committer.sender(),
            stop_rx.clone(),
        ))
    });

    // 5. The drain, if there is somewhere to drain to.
    let drain_stop = crate::snowpipe::StopSignal::new();
    let drain = match &config.snowflake {
        Some(sf) => Some(drain_thread::spawn(
            Arc::clone(&buffer),
            sf.clone(),
            config.gateway_id.clone(),
            Arc::clone(&health),
            drain_stop.clone(),
        )),
        None => {
            tracing::warn!("no [snowflake] section: swipes are buffered but not sent");
            health.update_drain(|d| d.state = "disabled".to_owned());
            None
        }
    };

    health.set_ready(true);
    watchdog::notify_ready("reading badges");
    tracing::info!(gateway = %config.gateway_id, version = crate::row::AGENT_VERSION, "badge agent running");
    let watchdog_task = watchdog::watchdog_interval()
        .map(|interval| tokio::spawn(watchdog::run(Arc::clone(&health), interval)));

    shutdown.await;

    // Orderly stop, bounded so that systemd never has to SIGKILL us: the drain is told at once
    // (it may abandon a request: it resumes from the committed offset token next time); readers
    // stop, then everything they submitted is committed. Whatever is still waiting when the
    // time is up was never acknowledged, so giving up on it loses no acknowledged swipe.
    tracing::info!("shutting down");
    watchdog::notify_stopping();
    // First, so that it cannot report the agent ready again while it stops.
    stats_task.abort();
    health.set_ready(false);
    drain_stop.stop();
    let _ = stop_tx.send(true);
    let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
    for mut task in reader_tasks {
        if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
            tracing::warn!("a reader did not stop in time; abandoning it");
            task.abort();
        }
    }
    drop(committer);
    if tokio::time::timeout_at(deadline, committer_task)
        .await
        .is_err()
    {
        tracing::warn!("swipes still waiting for their group commit at shutdown were not acknowledged; abandoning them");
    }
    if let Some(drain) = drain {
        // Polled rather than joined on a blocking task: the runtime's drop would wait for that.
        let until = deadline + DRAIN_GRACE;
        while !drain.is_finished() && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if drain.is_finished() {
            let _ = drain.join();
        } else {
            tracing::warn!("the drain did not stop in time; abandoning it (it resumes from the committed offset token)");
        }
    }
    if let Some(task) = watchdog_task {
        task.abort();
    }
    for server in servers {
        server.abort();
    }
    let _ = std::fs::remove_file(&socket);
    // Every acknowledged swipe is already synced by its group commit; dropping the last handle
    // lets sled flush its own state.
    drop(buffer);
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on SIGTERM (systemd stop) or SIGINT (Ctrl-C).
pub async fn termination_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

async fn buffer_stats_loop(
    buffer: Arc<Buffer>,
    health: Arc<Health>,
    committer: tokio::sync::mpsc::Sender<crate::buffer::Submission>,
    max_bytes: u64,
) {
    let heartbeat = health.heartbeat("buffer");
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    loop {
        ticker.tick().await;
        let b = Arc::clone(&buffer);
        let stats = match tokio::task::spawn_blocking(move || b.stats()).await {
            Ok(Ok(stats)) => stats,
            Ok(Err(err)) => {
                tracing::error!(error = %err, "cannot read buffer statistics");
                continue;
            }
            Err(_) => continue,
        };
        // A dead committer means swipes can no longer be stored: stop vouching for the process.
        if !committer.is_closed() {
            heartbeat.beat();
        }
        let m = &health.metrics;
        m.buffer_records.set(gauge_value(stats.depth));
        m.buffer_bytes.set(gauge_value(stats.bytes_on_disk));
        m.sequence_next.set(gauge_value(stats.next_seq));
        #[allow(clippy::cast_precision_loss)] // ms timestamps fit f64 exactly
        m.buffer_oldest_record_timestamp_seconds
            .set(stats.oldest_unsent_ms.map_or(0.0, |ms| ms as f64 / 1000.0));
        health.update_buffer(|s| {
            s.depth = stats.depth;
            s.bytes = stats.bytes_on_disk;
            s.oldest_unsent_ms = stats.oldest_unsent_ms;
            s.next_seq = stats.next_seq;
            s.quarantined = stats.quarantined_to.is_some();
        });
        health.set_ready(stats.bytes_on_disk < max_bytes);
    }
}
