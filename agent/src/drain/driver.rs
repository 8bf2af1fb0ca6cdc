//! Thin I/O shell around [`Machine`]: executes its actions against the [`Buffer`] and an
//! [`Ingest`] implementation.

use std::time::Duration;

use tracing::{debug, error, info, warn};

use super::machine::{Action, Input, Machine, MachineConfig};
use super::{DrainError, Ingest, IngestError};
use crate::buffer::Buffer;

/// Records decoded per buffer read while an append is assembled (two chunks of a busy site):
/// bounds the decoded records alive at once, whatever the append's size.
const READ_WINDOW: usize = 512;

/// Drain configuration.
#[derive(Debug, Clone)]
pub struct DrainConfig {
    /// Gateway id rendered into every row (`gateway_id`, `event_id`).
    pub gateway_id: String,
    /// State machine tuning (batch size, poll interval, back-off, recoveries).
    pub machine: MachineConfig,
}

impl DrainConfig {
    /// Defaults: 4 MiB / 10,000-record batches, 1 s status polls, back-off 1 s … 60 s, stop after
    /// 5 consecutive recoveries.
    pub fn new(gateway_id: impl Into<String>) -> Self {
        DrainConfig {
            gateway_id: gateway_id.into(),
            machine: MachineConfig::default(),
        }
    }
}

/// Something the drain did, for metrics and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DrainEvent {
    /// The channel (re)opened with this committed token.
    Opened {
        /// Committed token reported by the open.
        committed: Option<u64>,
        /// Records renumbered by [`Buffer::reconcile_after_open`].
        renumbered: u64,
    },
    /// A batch was appended.
    Appended {
        /// Start offset token.
        start: u64,
        /// End offset token.
        end: u64,
        /// Rows in the batch.
        records: usize,
        /// Uncompressed NDJSON bytes.
        bytes: usize,
    },
    /// The service reported a committed token.
    Committed {
        /// The token.
        committed: Option<u64>,
    },
    /// Local records up to `through` were deleted.
    Deleted {
        /// Bound.
        through: u64,
        /// Records removed.
        removed: u64,
    },
    /// An ingest call failed.
    Failed {
        /// Which call.
        op: &'static str,
        /// The error.
        error: IngestError,
    },
    /// The drain stopped.
    Stopped {
        /// Why.
        error: DrainError,
    },
}

/// Hook for metrics (commit lag, reopen counts, last commit time, …).
pub trait DrainObserver {
    /// Called after each executed action.
    fn event(&self, _event: &DrainEvent) {}
    /// Sequence numbers are missing locally (corrupt records skipped, or dropped by the
    /// drop-oldest policy): `expected` was due next, `found` came instead
    /// (`badge_agent_offset_gap_total`).
    fn gap(&self, _expected: u64, _found: u64) {}
}

/// An observer that ignores everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoopObserver;
impl DrainObserver for NoopObserver {}

/// Result of one [`Drainer::step`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// An action was executed; step again.
    Progress,
    /// Nothing to do for this long; the caller sleeps (the machine already counts it as slept).
    Sleep(Duration),
}

/// The machine plus what is needed to execute its actions.
#[derive(Debug)]
pub struct Drainer {
    machine: Machine,
    gateway_id: String,
    ndjson: Vec<u8>,
    /// `(seq, end of its line in ndjson)` of the rows read for the current append.
    line_ends: Vec<(u64, usize)>,
    gap_reported: Option<u64>,
}

impl Drainer {
    /// A fresh drainer; it starts by opening the channel.
    pub fn new(cfg: DrainConfig) -> Self {
        Drainer {
            machine: Machine::new(cfg.machine),
            gateway_id: cfg.gateway_id,
            ndjson: Vec::new(),
            line_ends: Vec::new(),
            gap_reported: None,
        }
    }

    /// The state machine (read-only: committed token, in-flight mark, recoveries).
    pub fn machine(&self) -> &Machine {
        &self.machine
    }

    /// Executes the machine's next action at monotonic time `now`.
    pub fn step<I: Ingest + ?Sized>(
        &mut self,
        buffer: &Buffer,
        ingest: &mut I,
        now: Duration,
        observer: &dyn DrainObserver,
    ) -> Result<Step, DrainError> {
        let action = self.machine.next_action(now);
        let input = match action {
            Action::Stop(error) => {
                error!(error = %error, "drain stopped");
                observer.event(&DrainEvent::Stopped {
                    error: error.clone(),
                });
                return Err(error);
            }
            Action::Sleep(d) => {
                self.machine.handle(Input::Slept, now + d);
                return Ok(Step::Sleep(d));
            }
            Action::Open => match ingest.open() {
                Ok(committed) => {
                    // Before anything is deleted: make sure no local seq ≤ committed is unsent.
                    let renumbered = buffer.reconcile_after_open(committed)?;
                    info!(event = "channel_opened", committed = ?committed, renumbered, "channel open");
                    observer.event(&DrainEvent::Opened {
                        committed,
                        renumbered,
                    });
                    Input::Opened { committed }
                }
                Err(error) => {
                    self.log_failure("open", &error, observer);
                    Input::OpenFailed(error)
                }
            },
            Action::DeleteThrough(k) => {
                let removed = buffer.delete_through(k)?;
                debug!(through = k, removed, "deleted committed records");
                observer.event(&DrainEvent::Deleted {
                    through: k,
                    removed,
                });
                Input::Deleted { through: k }
            }
            Action::PollStatus => match ingest.committed() {
                Ok(committed) => {
                    observer.event(&DrainEvent::Committed { committed });
                    Input::Status { committed }
                }
                Err(error) => {
                    self.log_failure("status", &error, observer);
                    Input::StatusFailed(error)
                }
            },
            Action::Append {
                from_seq,
                max_records,
                max_bytes,
            } => {
                // Read in small windows and render each at once: only one window of decoded
                // records is alive at a time (10,000 of them took ~5 MB), the NDJSON is what the
                // append needs anyway. This bounds memory only: the ingest cuts the NDJSON into
                // requests within the service's limits.
                self.ndjson.clear();
                self.line_ends.clear();
                let mut expected = from_seq;
                let mut next = from_seq;
                'read: while self.line_ends.len() < max_records {
                    let want = (max_records - self.line_ends.len()).min(READ_WINDOW);
                    // Stored bytes are smaller than JSON: reading `max_bytes` of them is a superset.
                    let recs = buffer.range_from(next, want, max_bytes)?;
                    let Some(&(last, _)) = recs.last() else {
                        break;
                    };
                    let short = recs.len() < want;
                    for (seq, rec) in &recs {
                        let before = self.ndjson.len();
                        rec.write_json_line(&self.gateway_id, *seq, &mut self.ndjson);
                        if self.ndjson.len() > max_bytes && !self.line_ends.is_empty() {
                            self.ndjson.truncate(before);
                            break 'read;
                        }
                        // Report each gap once per process, even if a rewind reads it again.
                        if *seq != expected && self.gap_reported.is_none_or(|g| *seq > g) {
                            warn!(expected, found = *seq, "gap in buffered sequence numbers");
                            observer.gap(expected, *seq);
                            self.gap_reported = Some(*seq);
                        }
                        expected = seq.saturating_add(1);
                        self.line_ends.push((*seq, self.ndjson.len()));
                    }
                    // Fewer than asked: the buffer has nothing more (or `max_bytes` was read).
                    if short || self.ndjson.len() >= max_bytes {
                        break;
                    }
                    next = last.saturating_add(1);
                }
                let Some(&(start, _)) = self.line_ends.first() else {
                    self.machine.handle(Input::NothingToSend, now);
                    return Ok(Step::Progress);
                };
                let mut rows: Vec<(u64, &[u8])> = Vec::with_capacity(self.line_ends.len());
                let mut from = 0;
                for &(seq, end) in &self.line_ends {
                    // Without its newline: the request owner frames the lines.
                    rows.push((seq, &self.ndjson[from..end.saturating_sub(1)]));
                    from = end;
                }
                match ingest.append(&rows) {
                    Ok(end) => {
                        let sent = &rows[..rows.partition_point(|(seq, _)| *seq <= end)];
                        observer.event(&DrainEvent::Appended {
                            start,
                            end,
                            records: sent.len(),
                            bytes: sent.iter().map(|(_, line)| line.len() + 1).sum(),
                        });
                        Input::Appended { start, end }
                    }
                    Err(error) => {
                        self.log_failure("append", &error, observer);
                        Input::AppendFailed(error)
                    }
                }
            }
        };
        self.machine.handle(input, now);
        Ok(Step::Progress)
    }

    fn log_failure(&self, op: &'static str, error: &IngestError, observer: &dyn DrainObserver) {
        match error {
            IngestError::Unavailable(_) => {
                warn!(op, error = %error, "ingest unavailable; backing off")
            }
            IngestError::ChannelInvalid(_) => warn!(
                event = "channel_reopen",
                op,
                error = %error,
                recoveries = self.machine.recoveries() + 1,
                "channel invalid; reopening and rewinding to committed + 1"
            ),
            IngestError::Fatal(_) => error!(op, error = %error, "fatal ingest error"),
        }
        observer.event(&DrainEvent::Failed {
            op,
            error: error.clone(),
        });
    }
}
