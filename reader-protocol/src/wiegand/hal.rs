//! Drives a [`WiegandAssembler`] from two `embedded-hal` 1.0 input pins (microcontroller path).
//!
//! Call [`HalWiegand::poll`] from a tight loop or a timer interrupt at least every ~10 µs with a
//! monotonic nanosecond timestamp: pulses last 20–100 µs. Never do this on Linux; use kernel edge
//! events there. Level changes become falling/rising edges with a generated sequence number, so the
//! assembler runs in [`EdgeMode::Both`] and detects both lines low.

use embedded_hal::digital::InputPin;

use crate::wiegand::assembler::{
    AssemblerConfig, Edge, EdgeMode, FrameResult, Line, WiegandAssembler,
};

/// A pin read failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinError<E0, E1> {
    /// Reading D0 failed.
    D0(E0),
    /// Reading D1 failed.
    D1(E1),
}

/// D0/D1 pins plus an assembler.
#[derive(Debug)]
pub struct HalWiegand<D0, D1> {
    d0: D0,
    d1: D1,
    /// Last sampled levels (true = low).
    low: [bool; 2],
    seqno: u32,
    assembler: WiegandAssembler,
    pending: Option<FrameResult>,
}

impl<D0: InputPin, D1: InputPin> HalWiegand<D0, D1> {
    /// Wraps the pins; `config.edges` is forced to [`EdgeMode::Both`]. Lines are assumed idle
    /// (high) until the first poll.
    pub fn new(d0: D0, d1: D1, mut config: AssemblerConfig) -> Self {
        config.edges = EdgeMode::Both;
        HalWiegand {
            d0,
            d1,
            low: [false; 2],
            seqno: 0,
            assembler: WiegandAssembler::new(config),
            pending: None,
        }
    }

    /// Samples both pins at `now_ns`, feeds any level change to the assembler and ends a frame
    /// after the end-of-frame silence. Returns a completed frame, if any.
    pub fn poll(
        &mut self,
        now_ns: u64,
    ) -> Result<Option<FrameResult>, PinError<D0::Error, D1::Error>> {
        let d0_low = self.d0.is_low().map_err(PinError::D0)?;
        let d1_low = self.d1.is_low().map_err(PinError::D1)?;
        let mut out = self.pending.take();
        for (line, now_low) in [(Line::D0, d0_low), (Line::D1, d1_low)] {
            let i = line as usize;
            if self.low[i] == now_low {
                continue;
            }
            self.low[i] = now_low;
            let edge = if now_low {
                Edge::falling(line, now_ns, self.seqno)
            } else {
                Edge::rising(line, now_ns, self.seqno)
            };
            self.seqno = self.seqno.wrapping_add(1);
            if let Some(r) = self.assembler.push(edge) {
                stash(&mut out, &mut self.pending, r);
            }
        }
        if let Some(r) = self.assembler.flush(now_ns) {
            stash(&mut out, &mut self.pending, r);
        }
        Ok(out)
    }

    /// The assembler (statistics, timeouts).
    pub const fn assembler(&self) -> &WiegandAssembler {
        &self.assembler
    }

    /// Gives the pins back.
    pub fn release(self) -> (D0, D1) {
        (self.d0, self.d1)
    }
}

/// Returns the first result now and keeps a second one for the next poll.
fn stash(out: &mut Option<FrameResult>, pending: &mut Option<FrameResult>, r: FrameResult) {
    if out.is_none() {
        *out = Some(r);
    } else {
        *pending = Some(r);
    }
}
