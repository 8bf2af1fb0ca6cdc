//! `WiegandAssembler`: turns timestamped D0/D1 edge events into frames (sans-IO).
//!
//! A `0` is a low pulse on D0, a `1` a low pulse on D1; a bit is counted on the falling edge. The
//! caller feeds edges in kernel order ([`WiegandAssembler::push`]) and, when no edge arrives, calls
//! [`WiegandAssembler::flush`] at the deadline given by [`WiegandAssembler::poll_timeout`]. All
//! times are nanoseconds of one monotonic clock (the kernel event timestamps on Linux).

use crate::bits::Bits;

/// Default end-of-frame silence: 30 ms (above the 20 ms maximum inter-bit interval of the SIA
/// interface spec, below human key spacing).
pub const DEFAULT_EOF_NS: u64 = 30_000_000;

/// Default glitch filter: falling edges closer than 100 µs to the previous accepted falling edge are
/// dropped (the minimum legal pulse interval is 200 µs).
pub const DEFAULT_GLITCH_NS: u64 = 100_000;

/// A Wiegand data line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub enum Line {
    /// D0: a low pulse is a `0` bit.
    D0,
    /// D1: a low pulse is a `1` bit.
    D1,
}

impl Line {
    const fn index(self) -> usize {
        match self {
            Line::D0 => 0,
            Line::D1 => 1,
        }
    }
}

/// Edge direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub enum EdgeKind {
    /// High to low: the start of a pulse (a bit).
    Falling,
    /// Low to high: the end of a pulse.
    Rising,
}

/// One edge event, as delivered by the GPIO character device (`gpiocdev::EdgeEvent`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Edge {
    /// Which line.
    pub line: Line,
    /// Falling or rising.
    pub kind: EdgeKind,
    /// Monotonic timestamp in nanoseconds.
    pub timestamp_ns: u64,
    /// Kernel sequence number across both lines of the request; a gap means lost events.
    pub seqno: u32,
}

impl Edge {
    /// A falling edge (a bit) on `line`.
    pub const fn falling(line: Line, timestamp_ns: u64, seqno: u32) -> Self {
        Edge {
            line,
            kind: EdgeKind::Falling,
            timestamp_ns,
            seqno,
        }
    }

    /// A rising edge (end of pulse) on `line`.
    pub const fn rising(line: Line, timestamp_ns: u64, seqno: u32) -> Self {
        Edge {
            line,
            kind: EdgeKind::Rising,
            timestamp_ns,
            seqno,
        }
    }
}

/// Which edges the capture delivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EdgeMode {
    /// Falling edges only (bits); both-lines-low cannot be detected.
    #[default]
    FallingOnly,
    /// Both edges: line levels are tracked and a falling edge while the other line is low marks
    /// the frame invalid.
    Both,
}

/// Assembler settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AssemblerConfig {
    /// Silence after the last edge that ends a frame (default 30 ms; 25–100 ms is sensible).
    pub eof_ns: u64,
    /// Falling edges closer than this to the previous accepted falling edge are glitches
    /// (default 100 µs; 0 disables the filter).
    pub glitch_ns: u64,
    /// Which edges are captured.
    pub edges: EdgeMode,
}

impl Default for AssemblerConfig {
    fn default() -> Self {
        AssemblerConfig {
            eof_ns: DEFAULT_EOF_NS,
            glitch_ns: DEFAULT_GLITCH_NS,
            edges: EdgeMode::FallingOnly,
        }
    }
}

/// Why an edge sequence is not a valid frame. No credential is emitted for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Edge events were lost (the kernel buffer overflowed or the reader task fell behind).
    #[error("Wiegand frame discarded: {missing} edge event(s) lost (sequence jumped from {after} to {got}); enlarge the kernel event buffer")]
    SequenceGap {
        /// Last sequence number seen before the gap.
        after: u32,
        /// Sequence number received.
        got: u32,
        /// Number of events lost.
        missing: u32,
    },
    /// D0 and D1 were low at the same time: not data (overlapping pulses, a disconnected or
    /// unpowered reader, or two readers on one pair).
    #[error("Wiegand frame discarded: D0 and D1 were low at the same time (check reader power and wiring)")]
    BothLinesLow,
    /// More than 128 bits before the end-of-frame silence.
    #[error("Wiegand frame discarded: more than 128 bits ({bits} bits) without an end-of-frame gap (noise on the lines?)")]
    TooManyBits {
        /// Bits counted.
        bits: u32,
    },
}

/// A complete frame with the timestamps of its first and last bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WiegandFrame {
    /// The bits, bit 1 first, with their count.
    pub bits: Bits,
    /// Timestamp of the first bit's falling edge.
    pub first_ns: u64,
    /// Timestamp of the last edge of the frame.
    pub last_ns: u64,
}

/// What the assembler produces per frame.
pub type FrameResult = Result<WiegandFrame, FrameError>;

/// Counters for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AssemblerStats {
    /// Valid frames emitted.
    pub frames: u64,
    /// Falling edges dropped by the glitch filter.
    pub glitches: u64,
    /// Frames discarded for a sequence gap (kernel buffer overflow).
    pub sequence_gaps: u64,
    /// Frames discarded because both lines were low.
    pub both_low: u64,
    /// Frames discarded for more than 128 bits.
    pub too_long: u64,
}

/// Sans-IO Wiegand frame assembler (see the module docs).
#[derive(Debug, Clone)]
pub struct WiegandAssembler {
    config: AssemblerConfig,
    bits: Bits,
    /// Bits counted in the current frame (may exceed 128).
    count: u32,
    /// A frame is in progress (at least one edge since the last frame ended).
    active: bool,
    first_ns: u64,
    last_edge_ns: u64,
    last_fall_ns: Option<u64>,
    last_seqno: Option<u32>,
    error: Option<FrameError>,
    /// Line levels (true = low), tracked in [`EdgeMode::Both`].
    low: [bool; 2],
    stats: AssemblerStats,
}

impl Default for WiegandAssembler {
    fn default() -> Self {
        Self::new(AssemblerConfig::default())
    }
}

impl WiegandAssembler {
    /// A new assembler; both lines are assumed idle (high).
    pub const fn new(config: AssemblerConfig) -> Self {
        WiegandAssembler {
            config,
            bits: Bits::EMPTY,
            count: 0,
            active: false,
            first_ns: 0,
            last_edge_ns: 0,
            last_fall_ns: None,
            last_seqno: None,
            error: None,
            low: [false; 2],
            stats: AssemblerStats {
                frames: 0,
                glitches: 0,
                sequence_gaps: 0,
                both_low: 0,
                too_long: 0,
            },
        }
    }

    /// The settings.
    pub const fn config(&self) -> &AssemblerConfig {
        &self.config
    }

    /// Counters since creation.
    pub const fn stats(&self) -> AssemblerStats {
        self.stats
    }

    /// Number of bits in the frame being assembled.
    pub const fn pending_bits(&self) -> u32 {
        self.count
    }

    /// Feeds one edge. Returns the previous frame if this edge comes after the end-of-frame
    /// silence (the edge then starts a new frame).
    pub fn push(&mut self, edge: Edge) -> Option<FrameResult> {
        let mut done = None;
        if self.active && edge.timestamp_ns.saturating_sub(self.last_edge_ns) > self.config.eof_ns {
            done = self.finish();
        }

        // Any gap in the kernel sequence means lost events: the frame they belong to (the current
        // one, or the one this edge starts) cannot be trusted.
        if let Some(last) = self.last_seqno {
            let expected = last.wrapping_add(1);
            if edge.seqno != expected {
                self.set_error(FrameError::SequenceGap {
                    after: last,
                    got: edge.seqno,
                    missing: edge.seqno.wrapping_sub(expected),
                });
                // A lost rising edge would leave a line "low" forever and flag every later frame
                // as both-lines-low: after a gap, assume idle lines again.
                self.low = [false; 2];
            }
        }
        self.last_seqno = Some(edge.seqno);

        if !self.active {
            self.active = true;
            self.first_ns = edge.timestamp_ns;
        }
        self.last_edge_ns = edge.timestamp_ns;

        match edge.kind {
            EdgeKind::Rising => {
                if self.config.edges == EdgeMode::Both {
                    self.low[edge.line.index()] = false;
                }
            }
            EdgeKind::Falling => {
                if self.config.edges == EdgeMode::Both {
                    let other = 1 - edge.line.index();
                    if self.low[other] {
                        self.set_error(FrameError::BothLinesLow);
                    }
                    self.low[edge.line.index()] = true;
                }
                let glitch = match self.last_fall_ns {
                    Some(prev) => edge.timestamp_ns.saturating_sub(prev) < self.config.glitch_ns,
                    None => false,
                };
                if glitch {
                    self.stats.glitches += 1;
                } else {
                    self.last_fall_ns = Some(edge.timestamp_ns);
                    self.count = self.count.saturating_add(1);
                    if self.bits.push(edge.line == Line::D1).is_err() {
                        self.set_error(FrameError::TooManyBits { bits: self.count });
                    }
                    if let Some(FrameError::TooManyBits { bits }) = &mut self.error {
                        *bits = self.count;
                    }
                }
            }
        }
        done
    }

    /// Records the first error of the frame.
    fn set_error(&mut self, err: FrameError) {
        if self.error.is_none() {
            self.error = Some(err);
        }
    }

    /// The timestamp at which [`flush`](Self::flush) should be called if no edge arrives first
    /// (last edge + end-of-frame silence), or `None` when no frame is in progress.
    pub const fn poll_timeout(&self) -> Option<u64> {
        if self.active {
            Some(self.last_edge_ns.saturating_add(self.config.eof_ns))
        } else {
            None
        }
    }

    /// Ends the frame in progress if the end-of-frame silence has elapsed at `now_ns`.
    pub fn flush(&mut self, now_ns: u64) -> Option<FrameResult> {
        if self.active && now_ns.saturating_sub(self.last_edge_ns) >= self.config.eof_ns {
            self.finish()
        } else {
            None
        }
    }

    /// Ends the frame in progress now, whatever the time (shutdown, tests).
    pub fn finish(&mut self) -> Option<FrameResult> {
        if !self.active {
            return None;
        }
        let bits = self.bits;
        let count = self.count;
        let error = self.error.take();
        self.active = false;
        self.bits = Bits::EMPTY;
        self.count = 0;
        self.last_fall_ns = None;
        // Levels persist across frames: a line held low stays low.
        match error {
            Some(e) => {
                match e {
                    FrameError::SequenceGap { .. } => self.stats.sequence_gaps += 1,
                    FrameError::BothLinesLow => self.stats.both_low += 1,
                    FrameError::TooManyBits { .. } => self.stats.too_long += 1,
                }
                Some(Err(e))
            }
            // Only rising edges (end of a pulse that started before capture): nothing to report.
            None if count == 0 => None,
            None => {
                self.stats.frames += 1;
                Some(Ok(WiegandFrame {
                    bits,
                    first_ns: self.first_ns,
                    last_ns: self.last_edge_ns,
                }))
            }
        }
    }

    /// True while D0 and D1 are both low ([`EdgeMode::Both`] only): a reader that stays in this
    /// state is disconnected or unpowered.
    pub const fn both_lines_low(&self) -> bool {
        self.low[0] && self.low[1]
    }
}
