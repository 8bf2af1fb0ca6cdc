//! EM4100 125 kHz tags read by serial modules, and the resynchronising framer for RDM6300-class
//! modules (and ID-12LA, see [`super::id12`]).
//!
//! Frames (9600 8N1):
//! * RDM6300 / Seeed, 14 bytes: `STX`, 10 ASCII hex (version byte + 32-bit ID), 2 ASCII hex
//!   checksum, `ETX`.
//! * Clone modules, 13 bytes: `STX`, 10 ASCII hex, **one binary checksum byte**, `ETX`.
//! * ID-12LA / ID-20LA, 16 bytes: as RDM6300 plus `CR LF` before `ETX`.
//!
//! The checksum is the XOR of the 5 data bytes. Modules repeat frames while a tag is in the field,
//! so duplicate suppression ([`crate::dedup`]) is mandatory downstream.

use core::fmt;

use crate::bits::Bits;
use crate::event::{CardFields, CardFormat, Credential};
use crate::serial::{hex_value, id12, Framer, SerialError, TruncateCause, CR, ETX, STX};

/// An EM4100 tag ID: 8-bit version/customer byte + 32-bit ID (40 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Em4100Id([u8; 5]);

impl Em4100Id {
    /// From the 5 data bytes (version first).
    pub const fn from_bytes(bytes: [u8; 5]) -> Self {
        Em4100Id(bytes)
    }

    /// From the 40-bit value (higher bits ignored).
    pub const fn from_u64(v: u64) -> Self {
        let b = v.to_be_bytes();
        Em4100Id([b[3], b[4], b[5], b[6], b[7]])
    }

    /// The 5 data bytes.
    pub const fn bytes(&self) -> [u8; 5] {
        self.0
    }

    /// Version / customer byte.
    pub const fn version(&self) -> u8 {
        self.0[0]
    }

    /// The 32-bit ID.
    pub const fn id32(&self) -> u32 {
        u32::from_be_bytes([self.0[1], self.0[2], self.0[3], self.0[4]])
    }

    /// All 40 bits.
    pub const fn raw40(&self) -> u64 {
        ((self.0[0] as u64) << 32) | self.id32() as u64
    }

    /// XOR of the 5 data bytes (the frame checksum).
    pub const fn checksum(&self) -> u8 {
        self.0[0] ^ self.0[1] ^ self.0[2] ^ self.0[3] ^ self.0[4]
    }

    /// "8H10D": the low 32 bits as 10 decimal digits, usually printed on the card
    /// (`0013530444`).
    pub const fn printed_8h10d(&self) -> Printed8h10d {
        Printed8h10d(self.id32())
    }

    /// The Wiegand-26 view of the tag: facility = bits 16–23, card = low 16 bits.
    pub const fn w26(&self) -> (u8, u16) {
        (self.0[2], u16::from_be_bytes([self.0[3], self.0[4]]))
    }

    /// The tag as a credential: `EM4100:<10 hex>`, card number = the 32-bit ID (the printed
    /// number), no facility, 40 raw bits.
    pub fn credential(&self) -> Credential {
        Credential::new(
            CardFormat::Em4100,
            CardFields {
                oem: None,
                facility: None,
                card_number: Some(u64::from(self.id32())),
            },
            Bits::new(u128::from(self.raw40()), 40).unwrap_or_default(),
        )
    }

    /// The 14-byte RDM6300 frame for this ID (tests and emulators).
    pub fn rdm6300_frame(&self) -> [u8; 14] {
        let mut f = [0u8; 14];
        f[0] = STX;
        for (i, b) in self
            .0
            .iter()
            .chain(core::iter::once(&self.checksum()))
            .enumerate()
        {
            f[1 + 2 * i] = HEX[(b >> 4) as usize];
            f[2 + 2 * i] = HEX[(b & 0xF) as usize];
        }
        f[13] = ETX;
        f
    }
}

const HEX: [u8; 16] = *b"0123456789ABCDEF";

/// Displays an ID as 10 decimal digits (see [`Em4100Id::printed_8h10d`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Printed8h10d(u32);

impl fmt::Display for Printed8h10d {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:010}", self.0)
    }
}

impl fmt::Display for Em4100Id {
    /// 10 lower-case hex digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:010x}", self.raw40())
    }
}

/// The frame shape a tag was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum Em4100FrameKind {
    /// 14 bytes, ASCII checksum (RDM6300, Seeed).
    Rdm6300,
    /// 13 bytes, binary checksum (clone modules).
    BinaryChecksum,
    /// 16 bytes with CR LF (ID-12LA / ID-20LA).
    Id12,
}

/// A tag read from a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Em4100Read {
    /// The tag.
    pub id: Em4100Id,
    /// The frame shape.
    pub kind: Em4100FrameKind,
}

impl Em4100Read {
    /// The tag as a credential.
    pub fn credential(&self) -> Credential {
        self.id.credential()
    }
}

/// Which frame shapes the framer accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Em4100Framing {
    /// RDM6300 14-byte and 13-byte clone frames.
    Rdm6300,
    /// ID-12LA / ID-20LA 16-byte frames only.
    Id12,
    /// All three shapes.
    #[default]
    Any,
}

impl Em4100Framing {
    const fn accepts(self, kind: Em4100FrameKind) -> bool {
        match self {
            Em4100Framing::Any => true,
            Em4100Framing::Rdm6300 => !matches!(kind, Em4100FrameKind::Id12),
            Em4100Framing::Id12 => matches!(kind, Em4100FrameKind::Id12),
        }
    }

    const fn name(self) -> &'static str {
        match self {
            Em4100Framing::Rdm6300 => "RDM6300 (13/14-byte)",
            Em4100Framing::Id12 => "ID-12LA (16-byte)",
            Em4100Framing::Any => "EM4100",
        }
    }
}

/// Default inter-byte timeout: a 16-byte frame takes ~17 ms at 9600 baud.
pub const DEFAULT_INTER_BYTE_TIMEOUT_NS: u64 = 50_000_000;

/// Resynchronising EM4100 framer (see the module docs). No allocation.
#[derive(Debug, Clone)]
pub struct Em4100Framer {
    framing: Em4100Framing,
    timeout_ns: Option<u64>,
    buf: [u8; 16],
    len: u8,
    junk: u32,
    last_ns: u64,
}

impl Default for Em4100Framer {
    fn default() -> Self {
        Self::new(Em4100Framing::Any)
    }
}

impl Em4100Framer {
    /// A framer accepting `framing`, with the default 50 ms inter-byte timeout.
    pub const fn new(framing: Em4100Framing) -> Self {
        Em4100Framer {
            framing,
            timeout_ns: Some(DEFAULT_INTER_BYTE_TIMEOUT_NS),
            buf: [0; 16],
            len: 0,
            junk: 0,
            last_ns: 0,
        }
    }

    /// Changes the inter-byte timeout (`None` disables it).
    pub const fn with_timeout(mut self, timeout_ns: Option<u64>) -> Self {
        self.timeout_ns = timeout_ns;
        self
    }

    /// The accepted framing.
    pub const fn framing(&self) -> Em4100Framing {
        self.framing
    }

    fn reset(&mut self) {
        self.len = 0;
    }

    /// Handles a byte that ended a frame with an error: restart on STX, otherwise drop it.
    fn fail(&mut self, byte: u8, err: SerialError) -> Option<Result<Em4100Read, SerialError>> {
        self.reset();
        if byte == STX {
            self.start();
        }
        Some(Err(err))
    }

    fn start(&mut self) {
        self.buf[0] = STX;
        self.len = 1;
    }

    fn complete(&mut self, kind: Em4100FrameKind) -> Option<Result<Em4100Read, SerialError>> {
        let len = u16::from(self.len);
        self.reset();
        if !self.framing.accepts(kind) {
            return Some(Err(SerialError::UnexpectedFraming {
                len,
                expected: self.framing.name(),
            }));
        }
        let frame = &self.buf[..len as usize];
        Some(match kind {
            Em4100FrameKind::BinaryChecksum => parse_data(frame)
                .and_then(|id| check(id, frame[11]).map(|id| Em4100Read { id, kind })),
            Em4100FrameKind::Rdm6300 | Em4100FrameKind::Id12 => parse_data(frame).and_then(|id| {
                let received = hex_byte(frame[11], frame[12]).unwrap_or(0);
                check(id, received).map(|id| Em4100Read { id, kind })
            }),
        })
    }
}

/// Decodes the 10 ASCII hex characters after STX.
fn parse_data(frame: &[u8]) -> Result<Em4100Id, SerialError> {
    let mut bytes = [0u8; 5];
    for (i, b) in bytes.iter_mut().enumerate() {
        let (hi, lo) = (frame[1 + 2 * i], frame[2 + 2 * i]);
        *b = hex_byte(hi, lo).ok_or(SerialError::NotHex {
            byte: if hex_value(hi).is_none() { hi } else { lo },
            pos: (1 + 2 * i) as u16,
        })?;
    }
    Ok(Em4100Id(bytes))
}

fn hex_byte(hi: u8, lo: u8) -> Option<u8> {
    Some(hex_value(hi)? << 4 | hex_value(lo)?)
}

fn check(id: Em4100Id, received: u8) -> Result<Em4100Id, SerialError> {
    let computed = id.checksum();
    if computed == received {
        Ok(id)
    } else {
        Err(SerialError::Checksum { computed, received })
    }
}

impl Framer for Em4100Framer {
    type Output = Em4100Read;

    fn push_byte(&mut self, byte: u8, now_ns: u64) -> Option<Result<Em4100Read, SerialError>> {
        let timed_out = self.flush(now_ns);
        self.last_ns = now_ns;
        if let Some(t) = timed_out {
            // The timed-out frame is reported; this byte starts over (it cannot complete a frame).
            if byte == STX {
                self.start();
            } else {
                self.junk = 1;
            }
            return Some(t);
        }

        if self.len == 0 {
            if byte == STX {
                self.start();
                if self.junk > 0 {
                    let skipped = core::mem::take(&mut self.junk);
                    return Some(Err(SerialError::Junk { skipped }));
                }
            } else {
                self.junk = self.junk.saturating_add(1);
            }
            return None;
        }

        let pos = self.len;
        self.buf[pos as usize] = byte;
        self.len += 1;
        let pos16 = u16::from(pos);
        match pos {
            1..=10 => {
                if byte == STX {
                    return self.fail(
                        byte,
                        SerialError::Truncated {
                            got: pos16,
                            cause: TruncateCause::NewStart,
                        },
                    );
                }
                if hex_value(byte).is_none() {
                    return self.fail(byte, SerialError::NotHex { byte, pos: pos16 });
                }
                None
            }
            // Checksum high nibble, or the binary checksum of a 13-byte clone frame (any value).
            11 => None,
            12 => {
                if byte == ETX {
                    return self.complete(Em4100FrameKind::BinaryChecksum);
                }
                for (b, p) in [(self.buf[11], 11u16), (byte, 12u16)] {
                    if hex_value(b).is_none() {
                        return self.fail(byte, SerialError::NotHex { byte: b, pos: p });
                    }
                }
                None
            }
            13 => match byte {
                ETX => self.complete(Em4100FrameKind::Rdm6300),
                CR => None,
                _ => self.fail(
                    byte,
                    SerialError::BadTerminator {
                        byte,
                        pos: 13,
                        expected: "ETX 0x03 or CR 0x0d",
                    },
                ),
            },
            14 => {
                if byte == id12::LF_BYTE {
                    None
                } else {
                    self.fail(
                        byte,
                        SerialError::BadTerminator {
                            byte,
                            pos: 14,
                            expected: "LF 0x0a",
                        },
                    )
                }
            }
            _ => {
                if byte == ETX {
                    self.complete(Em4100FrameKind::Id12)
                } else {
                    self.fail(
                        byte,
                        SerialError::BadTerminator {
                            byte,
                            pos: 15,
                            expected: "ETX 0x03",
                        },
                    )
                }
            }
        }
    }

    fn poll_timeout(&self) -> Option<u64> {
        match self.timeout_ns {
            Some(t) if self.len > 0 => Some(self.last_ns.saturating_add(t)),
            _ => None,
        }
    }

    fn flush(&mut self, now_ns: u64) -> Option<Result<Em4100Read, SerialError>> {
        let t = self.timeout_ns?;
        if self.len > 0 && now_ns.saturating_sub(self.last_ns) > t {
            let got = u16::from(self.len);
            self.reset();
            return Some(Err(SerialError::Truncated {
                got,
                cause: TruncateCause::Timeout,
            }));
        }
        None
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for Em4100Id {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let (fc, cn) = self.w26();
        let mut st = s.serialize_struct("Em4100Id", 6)?;
        st.serialize_field("hex", &Collect(self))?;
        st.serialize_field("version", &self.version())?;
        st.serialize_field("id32", &self.id32())?;
        st.serialize_field("printed_8h10d", &Collect(self.printed_8h10d()))?;
        st.serialize_field("w26_facility", &fc)?;
        st.serialize_field("w26_card", &cn)?;
        st.end()
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for Em4100Read {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Em4100Read", 2)?;
        st.serialize_field("frame", &self.kind)?;
        st.serialize_field("em4100", &self.id)?;
        st.end()
    }
}

#[cfg(feature = "serde")]
struct Collect<T>(T);

#[cfg(feature = "serde")]
impl<T: fmt::Display> serde::Serialize for Collect<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}
