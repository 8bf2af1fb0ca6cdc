//! Serial reader framers: sans-IO byte-stream decoders that resynchronise after junk.
//!
//! Every framer implements [`Framer`]: feed it `&[u8]` chunks as they arrive with a monotonic
//! timestamp, and iterate the frames or faults it yields (no allocation). Call
//! [`Framer::flush`] at [`Framer::poll_timeout`] to report a frame cut off by silence.
//!
//! * [`em4100`]: RDM6300-class modules (14-byte ASCII-checksum frames and 13-byte binary-checksum
//!   clones) and the EM4100 ID with its printed renderings.
//! * [`id12`]: ID Innovations ID-12LA / ID-20LA 16-byte frames (handled by the same framer).
//! * [`mod@line`]: configurable line reader for converters and ASCII readers.

pub mod em4100;
pub mod id12;
pub mod line;

pub use em4100::{Em4100FrameKind, Em4100Framer, Em4100Framing, Em4100Id, Em4100Read};
pub use line::{LineConfig, LineRead, LineReader, Radix, Terminator};

use crate::event::Credential;
use crate::wiegand::WiegandError;

/// Start of text: every EM4100 module frame starts with it.
pub const STX: u8 = 0x02;
/// End of text.
pub const ETX: u8 = 0x03;
/// Carriage return.
pub const CR: u8 = 0x0D;
/// Line feed.
pub const LF: u8 = 0x0A;

/// Why serial bytes did not form a frame. The framer has already resynchronised when it reports
/// one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SerialError {
    /// Bytes outside any frame were skipped (noise, a partial frame at start-up, wrong baud rate).
    #[error("skipped {skipped} byte(s) of noise before a frame start (wrong baud rate or a partial frame at start-up?)")]
    Junk {
        /// Bytes skipped.
        skipped: u32,
    },
    /// A frame stopped before its end (a new STX arrived, or the line went silent).
    #[error("incomplete frame: only {got} byte(s) received before {cause}")]
    Truncated {
        /// Bytes of the frame received.
        got: u16,
        /// What cut it off.
        cause: TruncateCause,
    },
    /// A character that must be an ASCII hex digit is not.
    #[error("frame byte 0x{byte:02x} at position {pos} is not an ASCII hex digit")]
    NotHex {
        /// The byte.
        byte: u8,
        /// 0-based position in the frame.
        pos: u16,
    },
    /// The frame end marker is missing.
    #[error("frame not terminated as expected: byte 0x{byte:02x} at position {pos} (expected {expected})")]
    BadTerminator {
        /// The byte found.
        byte: u8,
        /// 0-based position in the frame.
        pos: u16,
        /// What was expected there.
        expected: &'static str,
    },
    /// The frame has a framing this framer was configured not to accept.
    #[error("{len}-byte frame received but the reader is configured for {expected} frames")]
    UnexpectedFraming {
        /// Frame length.
        len: u16,
        /// The configured framing.
        expected: &'static str,
    },
    /// XOR checksum mismatch.
    #[error("checksum mismatch: XOR of the data bytes is 0x{computed:02x} but the frame says 0x{received:02x} (electrical noise?)")]
    Checksum {
        /// Checksum computed over the data bytes.
        computed: u8,
        /// Checksum carried by the frame.
        received: u8,
    },
    /// A line exceeded the configured maximum length; it is discarded up to its terminator.
    #[error("line longer than {max} bytes discarded (wrong terminator setting?)")]
    LineTooLong {
        /// Configured maximum.
        max: u16,
    },
    /// A line contains a character that is not a digit of the configured radix.
    #[error("line contains byte 0x{byte:02x}, which is not a {radix} digit")]
    BadDigit {
        /// The byte.
        byte: u8,
        /// `hex` or `decimal`.
        radix: &'static str,
    },
    /// A line has no digits after the configured prefix.
    #[error("line has no digits after skipping {skip} character(s)")]
    NoDigits {
        /// Configured prefix length.
        skip: u8,
    },
    /// A line reader configured with a Wiegand format got a frame that does not decode.
    #[error("line carries an invalid Wiegand frame: {0}")]
    Wiegand(WiegandError),
    /// A number does not fit 128 bits.
    #[error("number with {digits} digits is too large (at most 128 bits)")]
    NumberTooLarge {
        /// Digits in the line.
        digits: u16,
    },
}

/// What cut a frame off (see [`SerialError::Truncated`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TruncateCause {
    /// A new start byte arrived.
    NewStart,
    /// No byte for longer than the inter-byte timeout.
    Timeout,
}

impl core::fmt::Display for TruncateCause {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            TruncateCause::NewStart => "a new frame start",
            TruncateCause::Timeout => "a pause longer than the inter-byte timeout",
        })
    }
}

/// A sans-IO byte-stream decoder.
pub trait Framer {
    /// What a complete frame decodes to.
    type Output;

    /// Feeds one byte received at `now_ns`. Returns at most one frame or fault.
    fn push_byte(&mut self, byte: u8, now_ns: u64) -> Option<Result<Self::Output, SerialError>>;

    /// When [`flush`](Self::flush) should be called to expire a partial frame, if one is pending
    /// and a timeout is configured.
    fn poll_timeout(&self) -> Option<u64>;

    /// Reports and drops a partial frame whose inter-byte timeout expired at `now_ns`.
    fn flush(&mut self, now_ns: u64) -> Option<Result<Self::Output, SerialError>>;

    /// Feeds a chunk received at `now_ns`; iterate the result to get every frame or fault.
    /// Bytes not consumed when the iterator is dropped are still fed (the iterator drains them).
    fn feed<'a>(&'a mut self, chunk: &'a [u8], now_ns: u64) -> Feed<'a, Self>
    where
        Self: Sized,
    {
        Feed {
            framer: self,
            chunk,
            now_ns,
        }
    }
}

/// Iterator returned by [`Framer::feed`].
#[derive(Debug)]
pub struct Feed<'a, F: Framer> {
    framer: &'a mut F,
    chunk: &'a [u8],
    now_ns: u64,
}

impl<F: Framer> Iterator for Feed<'_, F> {
    type Item = Result<F::Output, SerialError>;

    fn next(&mut self) -> Option<Self::Item> {
        while let Some((&b, rest)) = self.chunk.split_first() {
            self.chunk = rest;
            if let Some(out) = self.framer.push_byte(b, self.now_ns) {
                return Some(out);
            }
        }
        None
    }
}

impl<F: Framer> Drop for Feed<'_, F> {
    fn drop(&mut self) {
        // Keep the framer state consistent with the bytes the caller handed over.
        for _ in self.by_ref() {}
    }
}

/// The framing of a serial reader, as an operator names it (`rdm6300`, `id12`, `line`):
/// [`SerialDecoder::new`] builds its decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum SerialFraming {
    /// RDM6300 and EM4100 modules (14-byte ASCII or 13-byte binary checksum frames).
    Rdm6300,
    /// ID Innovations ID-12LA / ID-20LA (16 bytes with CR LF).
    Id12,
    /// A configurable line reader ([`LineConfig`]) for converters and ASCII readers.
    Line,
}

/// Any serial framer, yielding credentials: what the agent instantiates per configured reader.
#[derive(Debug, Clone)]
pub enum SerialDecoder {
    /// RDM6300 / EM4100 modules and ID-12LA / ID-20LA.
    Em4100(Em4100Framer),
    /// Line-oriented converters and ASCII readers.
    Line(LineReader),
}

impl SerialDecoder {
    /// The decoder of a framing; `line` is used by [`SerialFraming::Line`] only.
    pub fn new(framing: SerialFraming, line: LineConfig) -> Self {
        match framing {
            SerialFraming::Rdm6300 => {
                SerialDecoder::Em4100(Em4100Framer::new(Em4100Framing::Rdm6300))
            }
            SerialFraming::Id12 => SerialDecoder::Em4100(Em4100Framer::new(Em4100Framing::Id12)),
            SerialFraming::Line => SerialDecoder::Line(LineReader::new(line)),
        }
    }
}

impl Framer for SerialDecoder {
    type Output = Credential;

    fn push_byte(&mut self, byte: u8, now_ns: u64) -> Option<Result<Credential, SerialError>> {
        match self {
            SerialDecoder::Em4100(f) => {
                f.push_byte(byte, now_ns).map(|r| r.map(|x| x.credential()))
            }
            SerialDecoder::Line(f) => f.push_byte(byte, now_ns).map(|r| r.map(|x| x.credential())),
        }
    }

    fn poll_timeout(&self) -> Option<u64> {
        match self {
            SerialDecoder::Em4100(f) => f.poll_timeout(),
            SerialDecoder::Line(f) => f.poll_timeout(),
        }
    }

    fn flush(&mut self, now_ns: u64) -> Option<Result<Credential, SerialError>> {
        match self {
            SerialDecoder::Em4100(f) => f.flush(now_ns).map(|r| r.map(|x| x.credential())),
            SerialDecoder::Line(f) => f.flush(now_ns).map(|r| r.map(|x| x.credential())),
        }
    }
}

/// Value of an ASCII hex digit.
pub(crate) const fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}
