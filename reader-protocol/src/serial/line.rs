//! Configurable line reader for Wiegand-to-serial converters and ASCII readers.
//!
//! No standard exists: Priority 1 Design converters send `XXYYZZ<CR>` (6 hex characters = the 24
//! data bits of a W26), S4A converters 10 decimal digits + CR LF, Nedap `U` + 10 digits + 10 hex
//! of the Wiegand frame + CR LF. [`LineConfig`] covers these with a terminator, an optional STX,
//! a fixed prefix to skip, a digit count to take, the radix, a maximum length and an inter-byte
//! timeout that drops a partial line.

use crate::bits::Bits;
use crate::event::{CardFields, CardFormat, Credential};
use crate::serial::{hex_value, Framer, SerialError, TruncateCause, CR, ETX, LF, STX};
use crate::wiegand::{decode, FormatChoice, WiegandError};

/// Longest line the reader buffers.
pub const MAX_LINE: usize = 64;

/// What ends a line. With the `serde` feature it deserialises from `cr`, `lf`, `crlf` or `etx`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum Terminator {
    /// Carriage return (a following LF is ignored as an empty line).
    #[default]
    Cr,
    /// Line feed (a preceding CR is stripped).
    Lf,
    /// CR LF: the line ends on LF, the CR is stripped.
    #[cfg_attr(feature = "serde", serde(rename = "crlf"))]
    CrLf,
    /// ETX 0x03.
    Etx,
    /// Any other byte (programmatic only: not a configuration value).
    #[cfg_attr(feature = "serde", serde(skip_deserializing))]
    Byte(u8),
}

impl Terminator {
    const fn byte(self) -> u8 {
        match self {
            Terminator::Cr => CR,
            Terminator::Lf | Terminator::CrLf => LF,
            Terminator::Etx => ETX,
            Terminator::Byte(b) => b,
        }
    }
}

/// Digits of a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum Radix {
    /// ASCII hex (either case).
    #[default]
    Hex,
    /// ASCII decimal.
    Decimal,
}

impl Radix {
    const fn name(self) -> &'static str {
        match self {
            Radix::Hex => "hex",
            Radix::Decimal => "decimal",
        }
    }
}

/// Line reader settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineConfig {
    /// What ends a line.
    pub terminator: Terminator,
    /// Lines start with STX 0x02; bytes before it are noise.
    pub stx: bool,
    /// Characters to skip at the start of the line (after STX and leading whitespace).
    pub skip: u8,
    /// Characters to take after `skip` (default: the rest of the line).
    pub take: Option<u8>,
    /// Digit radix.
    pub radix: Radix,
    /// Hex lines only: the frame is this many bits (the low bits of the value), e.g. 26 for a
    /// Nedap line carrying a W26 frame in 10 hex digits. Default: 4 bits per hex digit.
    pub frame_bits: Option<u8>,
    /// Hex lines only: decode the frame with this Wiegand format (converters that pass the whole
    /// frame, parity included); a frame that does not decode is a [`SerialError::Wiegand`].
    /// `None`: hex lines are `RAW<n>` credentials.
    pub format: Option<FormatChoice>,
    /// Longest accepted line in bytes (at most [`MAX_LINE`]).
    pub max_len: u16,
    /// A pause longer than this drops a partial line (`None`: never).
    pub inter_byte_timeout_ns: Option<u64>,
}

impl Default for LineConfig {
    fn default() -> Self {
        LineConfig {
            terminator: Terminator::Cr,
            stx: false,
            skip: 0,
            take: None,
            radix: Radix::Hex,
            frame_bits: None,
            format: None,
            max_len: MAX_LINE as u16,
            inter_byte_timeout_ns: Some(100_000_000),
        }
    }
}

/// A number read from a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineRead {
    /// Digit radix.
    pub radix: Radix,
    /// Number of digits (leading zeros included).
    pub digits: u8,
    /// The value. For hex lines, `bits` holds it with its bit count.
    pub value: u128,
    /// Hex lines: the value as a frame of `frame_bits` (or 4 × digits) bits. Decimal lines: the
    /// value with the bit count of the largest number of that many digits.
    pub bits: Bits,
    credential: Credential,
}

impl LineRead {
    /// The read as a credential: with [`LineConfig::format`] set, the decoded Wiegand card;
    /// otherwise hex lines are `RAW<n>:<hex>` and decimal lines `DEC:<number>` with the number as
    /// card number (when it fits 64 bits).
    pub fn credential(&self) -> Credential {
        self.credential
    }

    /// Decodes a hex line's frame with a Wiegand format (converters that pass the whole frame,
    /// parity included).
    pub fn decode_wiegand(&self, choice: FormatChoice) -> Result<Credential, WiegandError> {
        decode(choice, self.bits)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for STX (only when `stx` is set).
    Hunt,
    /// Collecting a line.
    Line,
    /// Discarding an over-long line up to its terminator.
    Discard,
}

/// The line reader (see the module docs). No allocation.
#[derive(Debug, Clone)]
pub struct LineReader {
    config: LineConfig,
    buf: [u8; MAX_LINE],
    len: usize,
    state: State,
    junk: u32,
    last_ns: u64,
}

impl LineReader {
    /// A reader with the given settings.
    pub fn new(mut config: LineConfig) -> Self {
        config.max_len = config.max_len.clamp(1, MAX_LINE as u16);
        LineReader {
            state: if config.stx { State::Hunt } else { State::Line },
            config,
            buf: [0; MAX_LINE],
            len: 0,
            junk: 0,
            last_ns: 0,
        }
    }

    /// The settings.
    pub const fn config(&self) -> &LineConfig {
        &self.config
    }

    fn idle_state(&self) -> State {
        if self.config.stx {
            State::Hunt
        } else {
            State::Line
        }
    }

    fn end_line(&mut self) -> Option<Result<LineRead, SerialError>> {
        let len = self.len;
        self.len = 0;
        self.state = self.idle_state();
        let line = trim(&self.buf[..len]);
        if line.is_empty() {
            // Empty lines (a LF after a CR terminator, keep-alives) are not errors.
            return None;
        }
        Some(parse(&self.config, line))
    }

    fn pending(&self) -> bool {
        self.len > 0 || (self.config.stx && self.state == State::Line)
    }
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if first.is_ascii_whitespace() {
            s = rest;
        } else {
            break;
        }
    }
    while let [rest @ .., last] = s {
        if last.is_ascii_whitespace() {
            s = rest;
        } else {
            break;
        }
    }
    s
}

/// Bits needed for the largest number of `digits` decimal digits.
fn decimal_bits(digits: usize) -> u8 {
    let mut max: u128 = 1;
    for _ in 0..digits {
        max = max.saturating_mul(10);
    }
    (128 - (max - 1).leading_zeros()) as u8
}

fn parse(config: &LineConfig, line: &[u8]) -> Result<LineRead, SerialError> {
    let start = usize::from(config.skip).min(line.len());
    let rest = &line[start..];
    let digits = match config.take {
        Some(n) => &rest[..usize::from(n).min(rest.len())],
        None => rest,
    };
    if digits.is_empty() {
        return Err(SerialError::NoDigits { skip: config.skip });
    }
    let too_large = SerialError::NumberTooLarge {
        digits: digits.len() as u16,
    };
    let mut value: u128 = 0;
    for &b in digits {
        let (d, base) = match config.radix {
            Radix::Hex => (hex_value(b), 16u128),
            Radix::Decimal => (b.is_ascii_digit().then(|| b - b'0'), 10u128),
        };
        let d = d.ok_or(SerialError::BadDigit {
            byte: b,
            radix: config.radix.name(),
        })?;
        value = value
            .checked_mul(base)
            .and_then(|v| v.checked_add(u128::from(d)))
            .ok_or(too_large)?;
    }
    let bits = match config.radix {
        Radix::Hex => {
            let n = match config.frame_bits {
                Some(n) => n,
                None => u8::try_from(digits.len() * 4).map_err(|_| too_large)?,
            };
            Bits::new(value, n).map_err(|_| too_large)?
        }
        Radix::Decimal => {
            if digits.len() > 38 {
                return Err(too_large);
            }
            Bits::new(value, decimal_bits(digits.len())).map_err(|_| too_large)?
        }
    };
    let credential = match (config.radix, config.format) {
        (Radix::Hex, Some(choice)) => decode(choice, bits).map_err(SerialError::Wiegand)?,
        (Radix::Hex, None) => Credential::raw(bits),
        (Radix::Decimal, _) => Credential::new(
            CardFormat::Decimal,
            CardFields {
                oem: None,
                facility: None,
                card_number: u64::try_from(value).ok(),
            },
            bits,
        ),
    };
    Ok(LineRead {
        radix: config.radix,
        digits: digits.len() as u8,
        value,
        bits,
        credential,
    })
}

impl Framer for LineReader {
    type Output = LineRead;

    fn push_byte(&mut self, byte: u8, now_ns: u64) -> Option<Result<LineRead, SerialError>> {
        let timed_out = self.flush(now_ns);
        self.last_ns = now_ns;
        let out = self.step(byte);
        // A timeout followed by a byte that ends a line cannot happen (the line was just reset and
        // a single terminator is an empty line), so at most one of the two is `Some`.
        timed_out.or(out)
    }

    fn poll_timeout(&self) -> Option<u64> {
        match self.config.inter_byte_timeout_ns {
            Some(t) if self.pending() => Some(self.last_ns.saturating_add(t)),
            _ => None,
        }
    }

    fn flush(&mut self, now_ns: u64) -> Option<Result<LineRead, SerialError>> {
        let t = self.config.inter_byte_timeout_ns?;
        if self.pending() && now_ns.saturating_sub(self.last_ns) > t {
            let got = self.len as u16;
            self.len = 0;
            self.state = self.idle_state();
            return Some(Err(SerialError::Truncated {
                got,
                cause: TruncateCause::Timeout,
            }));
        }
        None
    }
}

impl LineReader {
    fn step(&mut self, byte: u8) -> Option<Result<LineRead, SerialError>> {
        let term = self.config.terminator.byte();
        match self.state {
            State::Hunt => {
                if byte == STX {
                    self.state = State::Line;
                    self.len = 0;
                    if self.junk > 0 {
                        let skipped = core::mem::take(&mut self.junk);
                        return Some(Err(SerialError::Junk { skipped }));
                    }
                } else if !byte.is_ascii_whitespace() {
                    self.junk = self.junk.saturating_add(1);
                }
                None
            }
            State::Discard => {
                if byte == term {
                    self.len = 0;
                    self.state = self.idle_state();
                }
                None
            }
            State::Line => {
                if byte == term {
                    return self.end_line();
                }
                if byte == STX {
                    if self.config.stx && self.len > 0 {
                        let got = self.len as u16;
                        self.len = 0;
                        return Some(Err(SerialError::Truncated {
                            got,
                            cause: TruncateCause::NewStart,
                        }));
                    }
                    // Without framing an STX is just ignored.
                    return None;
                }
                if self.len == 0 && byte.is_ascii_whitespace() {
                    // Leading whitespace, e.g. the LF after a CR terminator: not part of a line.
                    return None;
                }
                if self.len >= usize::from(self.config.max_len) {
                    self.len = 0;
                    self.state = State::Discard;
                    return Some(Err(SerialError::LineTooLong {
                        max: self.config.max_len,
                    }));
                }
                self.buf[self.len] = byte;
                self.len += 1;
                None
            }
        }
    }
}
