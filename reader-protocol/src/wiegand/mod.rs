//! Wiegand: the format table, frame decoding, the edge assembler, keypads,
//! [`WiegandDecoder`], which turns assembled frames of one reader into [`ReaderEvent`]s, and
//! [`WiegandPipeline`], assembler and decoder together (edges in, events out).

pub mod assembler;
pub mod decode;
pub mod format;
#[cfg(feature = "hal")]
pub mod hal;
pub mod keypad;
pub mod pipeline;

pub use assembler::{
    AssemblerConfig, AssemblerStats, Edge, EdgeKind, EdgeMode, FrameError, FrameResult, Line,
    WiegandAssembler, WiegandFrame, DEFAULT_EOF_NS, DEFAULT_GLITCH_NS,
};
pub use decode::{decode, decode_any, matching_formats, WiegandError};
pub use format::{
    Field, FieldKind, Format, FormatChoice, FormatSpec, Parity, UnknownFormat, FORMATS,
};
pub use keypad::{
    decode_key, decode_pin26_bcd, decode_pin26_binary, encode_key, Key, KeyMap, KeypadError, Pin,
    Pin26, PinCollector, PinConfig,
};
pub use pipeline::WiegandPipeline;

use crate::bits::Bits;
use crate::event::ReaderEvent;

/// How a reader sends 26-bit PIN frames (they collide with H10301 cards).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pin26Mode {
    /// HID PINpad binary: PIN in the card-number field.
    Binary,
    /// Six BCD digits in the data bits.
    Bcd,
}

/// Keypad settings of a Wiegand reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KeypadConfig {
    /// `*`/`#` mapping of 4/8-bit bursts.
    pub keymap: KeyMap,
    /// PIN assembly of 4/8-bit bursts.
    pub pin: PinConfig,
    /// Treat every 26-bit frame as a buffered PIN (the reader then cannot send H10301 cards).
    pub pin26: Option<Pin26Mode>,
}

/// Per-reader Wiegand settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WiegandReaderConfig {
    /// Card format of the reader.
    pub format: FormatChoice,
    /// Keypad handling; `None` passes 4/8-bit frames through as raw cards.
    pub keypad: Option<KeypadConfig>,
}

/// Decodes the frames of one Wiegand reader into events: key bursts feed a [`PinCollector`],
/// 26-bit PIN frames become PINs when configured, everything else is decoded as a card.
#[derive(Debug, Clone)]
pub struct WiegandDecoder {
    config: WiegandReaderConfig,
    pins: PinCollector,
}

impl WiegandDecoder {
    /// A decoder for one reader.
    pub fn new(config: WiegandReaderConfig) -> Self {
        let pin = config.keypad.map(|k| k.pin).unwrap_or_default();
        WiegandDecoder {
            config,
            pins: PinCollector::new(pin),
        }
    }

    /// The settings.
    pub const fn config(&self) -> &WiegandReaderConfig {
        &self.config
    }

    /// Handles one assembler result. Returns the event to emit, if any (a key press that does not
    /// complete a PIN emits nothing).
    pub fn handle(&mut self, frame: FrameResult) -> Option<ReaderEvent> {
        match frame {
            Err(e) => Some(ReaderEvent::from(e)),
            Ok(f) => self.decode_frame(f.bits, f.last_ns),
        }
    }

    /// Decodes one frame received at `now_ns`.
    pub fn decode_frame(&mut self, bits: Bits, now_ns: u64) -> Option<ReaderEvent> {
        if let Some(k) = self.config.keypad {
            match bits.len() {
                4 | 8 => {
                    return match decode_key(bits, k.keymap) {
                        Ok(key) => self.pins.push(key, now_ns).map(to_event),
                        Err(e) => Some(e.into()),
                    };
                }
                26 => match k.pin26 {
                    Some(Pin26Mode::Binary) => return Some(pin26_event(decode_pin26_binary(bits))),
                    Some(Pin26Mode::Bcd) => return Some(pin26_event(decode_pin26_bcd(bits))),
                    None => {}
                },
                _ => {}
            }
        }
        Some(match decode(self.config.format, bits) {
            Ok(c) => ReaderEvent::Card(c),
            Err(e) => e.into(),
        })
    }

    /// When [`flush`](Self::flush) should be called to expire a partial PIN entry.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.pins.poll_timeout()
    }

    /// Expires a partial PIN entry (reported as a fault).
    pub fn flush(&mut self, now_ns: u64) -> Option<ReaderEvent> {
        self.pins.flush(now_ns).map(to_event)
    }
}

fn to_event(r: Result<Pin, KeypadError>) -> ReaderEvent {
    match r {
        Ok(p) => ReaderEvent::Pin(p),
        Err(e) => e.into(),
    }
}

fn pin26_event(r: Result<Pin26, KeypadError>) -> ReaderEvent {
    to_event(r.map(|p| p.pin))
}
