//! A Wiegand-style bit frame: up to 128 bits plus their count.
//!
//! The count is carried with the value on purpose: a value without its length loses leading zeros
//! (a frame starting with a 0 parity bit) and cannot be told apart from a shorter frame.

use core::fmt;

/// Maximum number of bits in a frame (the assembler rejects longer frames).
pub const MAX_BITS: u8 = 128;

/// Errors building a [`Bits`] frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BitsError {
    /// More than 128 bits.
    #[error("frame too long: {len} bits (at most 128 are supported)")]
    TooLong {
        /// Number of bits requested or seen.
        len: usize,
    },
    /// The value has bits set above the declared length.
    #[error("value does not fit in {len} bits")]
    ValueTooWide {
        /// Declared length.
        len: u8,
    },
    /// Not enough bytes for the declared bit count.
    #[error("{got} data byte(s) given but {need} are needed for the bit count")]
    Short {
        /// Bytes needed.
        need: usize,
        /// Bytes given.
        got: usize,
    },
    /// A character other than `0`, `1` (or `_`/space separators) in a bit string.
    #[error(
        "invalid character {ch:?} at position {index} of the bit string (only 0 and 1 are allowed)"
    )]
    BadChar {
        /// Position in the string (0-based, in characters).
        index: usize,
        /// The offending character.
        ch: char,
    },
}

/// A frame of `len` bits, MSB first: bit 1 on the wire (pos 0) is the most significant of the `len`
/// low bits of `value`. Bits above `len` are always zero.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Bits {
    value: u128,
    len: u8,
}

/// Mask of the `len` low bits.
#[inline]
pub(crate) const fn low_mask(len: u8) -> u128 {
    if len >= 128 {
        u128::MAX
    } else {
        (1u128 << len) - 1
    }
}

impl Bits {
    /// An empty frame.
    pub const EMPTY: Bits = Bits { value: 0, len: 0 };

    /// A frame of `len` bits holding `value` (MSB first). Fails if `len > 128` or `value` has bits
    /// set above `len`.
    pub const fn new(value: u128, len: u8) -> Result<Self, BitsError> {
        if len > MAX_BITS {
            return Err(BitsError::TooLong { len: len as usize });
        }
        if value & !low_mask(len) != 0 {
            return Err(BitsError::ValueTooWide { len });
        }
        Ok(Bits { value, len })
    }

    /// Parses a string of `0` and `1` characters, bit 1 first. `_` and spaces are ignored as
    /// separators.
    pub fn from_bit_str(s: &str) -> Result<Self, BitsError> {
        let mut bits = Bits::EMPTY;
        let mut count = 0usize;
        for (index, ch) in s.chars().enumerate() {
            let bit = match ch {
                '0' => false,
                '1' => true,
                '_' | ' ' => continue,
                _ => return Err(BitsError::BadChar { index, ch }),
            };
            count += 1;
            if bits.push(bit).is_err() {
                return Err(BitsError::TooLong { len: count });
            }
        }
        Ok(bits)
    }

    /// Reads `bit_count` bits stored MSB first and left-aligned in `data`, trailing pad bits
    /// ignored (the OSDP `osdp_RAW` layout). Fails if `data` is shorter than `ceil(bit_count/8)`
    /// bytes or `bit_count > 128`.
    pub fn from_msb_bytes(data: &[u8], bit_count: u16) -> Result<Self, BitsError> {
        if bit_count > u16::from(MAX_BITS) {
            return Err(BitsError::TooLong {
                len: usize::from(bit_count),
            });
        }
        let len = bit_count as u8;
        let bytes = usize::from(len.div_ceil(8));
        let Some(data) = data.get(..bytes) else {
            return Err(BitsError::Short {
                need: bytes,
                got: data.len(),
            });
        };
        let mut value = 0u128;
        for &b in data {
            value = (value << 8) | u128::from(b);
        }
        // Drop the trailing pad bits of the last byte.
        let pad = (bytes * 8) as u32 - u32::from(len);
        Ok(Bits {
            value: value >> pad,
            len,
        })
    }

    /// Appends one bit (the next one on the wire). Fails when the frame already holds 128 bits.
    pub fn push(&mut self, bit: bool) -> Result<(), BitsError> {
        if self.len >= MAX_BITS {
            return Err(BitsError::TooLong {
                len: self.len as usize + 1,
            });
        }
        self.value = (self.value << 1) | u128::from(bit);
        self.len += 1;
        Ok(())
    }

    /// The frame value (the `len` low bits, MSB first).
    pub const fn value(&self) -> u128 {
        self.value
    }

    /// Number of bits.
    pub const fn len(&self) -> u8 {
        self.len
    }

    /// True for a 0-bit frame.
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bit at wire position `pos` (0 = first bit on the wire). `None` beyond the frame.
    pub const fn bit(&self, pos: u8) -> Option<bool> {
        if pos >= self.len {
            return None;
        }
        Some((self.value >> (self.len - 1 - pos)) & 1 == 1)
    }

    /// `len` bits starting at wire position `start`, as an integer (MSB first). `None` if the range
    /// leaves the frame or is wider than 128 bits.
    pub const fn field(&self, start: u8, len: u8) -> Option<u128> {
        let end = start as u16 + len as u16;
        if end > self.len as u16 || len > 128 {
            return None;
        }
        let shift = self.len - start - len;
        Some((self.value >> shift) & low_mask(len))
    }

    /// The bitwise complement within the frame length (what a D0/D1 swap produces).
    pub const fn complement(&self) -> Bits {
        Bits {
            value: !self.value & low_mask(self.len),
            len: self.len,
        }
    }

    /// Lower-case hex, MSB first, left-padded to whole bytes (the `raw_bits` row field).
    /// A 26-bit frame `0x254008A` renders as `0254008a`.
    pub const fn hex(&self) -> HexBits {
        HexBits {
            value: self.value,
            digits: self.len.div_ceil(8) * 2,
        }
    }

    /// Lower-case hex with the minimal number of digits for the length (`ceil(len/4)`), as used in
    /// the canonical `RAW<n>:<hex>` credential string.
    pub const fn hex_nibbles(&self) -> HexBits {
        HexBits {
            value: self.value,
            digits: self.len.div_ceil(4),
        }
    }

    /// The bits as `0`/`1` characters, bit 1 first.
    pub const fn bit_string(&self) -> BitString {
        BitString(*self)
    }
}

impl fmt::Debug for Bits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bits({}, 0x{})", self.len, self.hex())
    }
}

/// Displays a value as fixed-width lower-case hex (see [`Bits::hex`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HexBits {
    value: u128,
    digits: u8,
}

impl fmt::Display for HexBits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.digits == 0 {
            return Ok(());
        }
        write!(f, "{:0width$x}", self.value, width = self.digits as usize)
    }
}

/// Displays a frame as `0`/`1` characters (see [`Bits::bit_string`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BitString(Bits);

impl fmt::Display for BitString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for pos in 0..self.0.len {
            let c = if self.0.bit(pos) == Some(true) {
                '1'
            } else {
                '0'
            };
            fmt::Write::write_char(f, c)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::string::ToString;

    #[test]
    fn parse_keeps_leading_zeros() {
        let b = Bits::from_bit_str("00101101000000001010001000").unwrap();
        assert_eq!(b.len(), 26);
        assert_eq!(b.value(), 0x0B40288);
        assert_eq!(b.hex().to_string(), "00b40288");
        assert_eq!(b.hex_nibbles().to_string(), "0b40288");
        assert_eq!(b.bit_string().to_string(), "00101101000000001010001000");
    }

    #[test]
    fn fields_and_bits() {
        let b = Bits::new(0x254008A, 26).unwrap();
        assert_eq!(b.bit(0), Some(true));
        assert_eq!(b.bit(1), Some(false));
        assert_eq!(b.bit(26), None);
        assert_eq!(b.field(1, 8), Some(42));
        assert_eq!(b.field(9, 16), Some(69));
        assert_eq!(b.field(20, 7), None);
    }

    #[test]
    fn osdp_raw_layout() {
        // An OSDP osdp_RAW report: 26 bits = W3, data BD 88 EB 80.
        let b = Bits::from_msb_bytes(&[0xBD, 0x88, 0xEB, 0x80], 26).unwrap();
        assert_eq!(b, Bits::new(0x2F623AE, 26).unwrap());
        assert_eq!(
            Bits::from_msb_bytes(&[0xBD], 26),
            Err(BitsError::Short { need: 4, got: 1 })
        );
        assert_eq!(Bits::from_msb_bytes(&[], 0).unwrap(), Bits::EMPTY);
        assert!(Bits::from_msb_bytes(&[0xFF; 17], 129).is_err());
        let full = Bits::from_msb_bytes(&[0xFF; 16], 128).unwrap();
        assert_eq!(full.value(), u128::MAX);
    }

    #[test]
    fn limits() {
        assert_eq!(
            Bits::new(1 << 26, 26),
            Err(BitsError::ValueTooWide { len: 26 })
        );
        assert!(Bits::new(u128::MAX, 128).is_ok());
        assert_eq!(Bits::new(0, 129), Err(BitsError::TooLong { len: 129 }));
        let s: std::string::String = core::iter::repeat_n('1', 129).collect();
        assert_eq!(Bits::from_bit_str(&s), Err(BitsError::TooLong { len: 129 }));
        assert!(matches!(
            Bits::from_bit_str("0102"),
            Err(BitsError::BadChar { index: 3, ch: '2' })
        ));
        assert_eq!(Bits::EMPTY.hex().to_string(), "");
        let full = Bits::new(u128::MAX, 128).unwrap();
        assert_eq!(full.complement(), Bits::new(0, 128).unwrap());
        assert_eq!(full.field(0, 128), Some(u128::MAX));
        assert_eq!(full.hex().to_string().len(), 32);
    }
}
