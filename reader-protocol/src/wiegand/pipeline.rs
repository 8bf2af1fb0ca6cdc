//! [`WiegandPipeline`]: the [`WiegandAssembler`] and the [`WiegandDecoder`] of one reader as one
//! value — edges in, [`ReaderEvent`]s out — so an I/O shell only maps its edge events onto
//! [`Edge`]s and runs one timer at [`WiegandPipeline::deadline`].

use crate::event::ReaderEvent;
use crate::wiegand::assembler::{AssemblerConfig, Edge, WiegandAssembler};
use crate::wiegand::{WiegandDecoder, WiegandReaderConfig};

/// Assembler plus decoder of one Wiegand reader. Pure: no I/O, no clock, no allocation.
#[derive(Debug, Clone)]
pub struct WiegandPipeline {
    assembler: WiegandAssembler,
    decoder: WiegandDecoder,
}

impl WiegandPipeline {
    /// A pipeline with the given edge assembly and per-reader decoding settings.
    pub fn new(assembler: AssemblerConfig, reader: WiegandReaderConfig) -> Self {
        WiegandPipeline {
            assembler: WiegandAssembler::new(assembler),
            decoder: WiegandDecoder::new(reader),
        }
    }

    /// Feeds one edge; returns the event of a frame it completed or invalidated, if any.
    pub fn push(&mut self, edge: Edge) -> Option<ReaderEvent> {
        let frame = self.assembler.push(edge)?;
        self.decoder.handle(frame)
    }

    /// When [`expire`](Self::expire) has something to do: the end-of-frame silence of the
    /// assembler or the inter-key timeout of a PIN entry, whichever comes first.
    pub fn deadline(&self) -> Option<u64> {
        match (self.assembler.poll_timeout(), self.decoder.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Ends a frame after its silence, then a PIN entry after its inter-key timeout, as far as
    /// they are due at `now_ns`. Yields at most two events, in that order.
    pub fn expire(&mut self, now_ns: u64) -> impl Iterator<Item = ReaderEvent> {
        // Both run before anything is yielded: the frame may complete (or time out) a PIN.
        let frame = if self.assembler.poll_timeout().is_some_and(|t| t <= now_ns) {
            self.assembler
                .flush(now_ns)
                .and_then(|frame| self.decoder.handle(frame))
        } else {
            None
        };
        let pin = if self.decoder.poll_timeout().is_some_and(|t| t <= now_ns) {
            self.decoder.flush(now_ns)
        } else {
            None
        };
        frame.into_iter().chain(pin)
    }
}
