//! Table-driven decoding and encoding of Wiegand card frames, with the D0/D1 swap diagnostic.

use core::fmt;

use crate::bits::{low_mask, Bits};
use crate::event::{CardFields, CardFormat, Credential};
use crate::wiegand::format::{FieldKind, Format, FormatChoice, FormatSpec, Parity, FORMATS};

/// Why a Wiegand frame does not decode (or a value does not encode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WiegandError {
    /// An empty frame.
    #[error("empty Wiegand frame (0 bits)")]
    Empty,
    /// The frame length does not match the configured format.
    #[error("{format} frames have {expected} bits but this frame has {got} bits")]
    Length {
        /// Configured format.
        format: Format,
        /// Its length.
        expected: u8,
        /// Length of the frame.
        got: u8,
    },
    /// A parity check failed.
    #[error(
        "{format} parity error: bit {bit} ({kind} parity over {covers}) is wrong{hint}",
        kind = if *odd { "odd" } else { "even" },
        hint = SwapHint(*swapped)
    )]
    Parity {
        /// Format being decoded.
        format: Format,
        /// 1-based wire bit number of the failing parity bit.
        bit: u8,
        /// Odd (`true`) or even parity.
        odd: bool,
        /// The covered bits, 1-based.
        covers: &'static str,
        /// The bitwise complement of the frame passes every check: D0 and D1 are probably swapped.
        swapped: bool,
    },
    /// `auto`: formats exist for this length but none passes parity.
    #[error("no {len}-bit format passes parity{hint}", hint = SwapHint(*swapped))]
    NoFormatMatched {
        /// Frame length.
        len: u8,
        /// The complement of the frame passes some format: D0 and D1 are probably swapped.
        swapped: bool,
    },
    /// Encoding: a field value does not fit its width.
    #[error("{format} field {field} must be at most {max}, got {value}")]
    ValueOutOfRange {
        /// Format being encoded.
        format: Format,
        /// Field name.
        field: &'static str,
        /// Given value.
        value: u64,
        /// Largest value that fits.
        max: u64,
    },
    /// Encoding: a field of the format was not given.
    #[error("{format} needs a value for field {field}")]
    MissingField {
        /// Format being encoded.
        format: Format,
        /// Field name.
        field: &'static str,
    },
}

/// Renders the D0/D1 swap hint appended to parity errors.
struct SwapHint(bool);

impl fmt::Display for SwapHint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 {
            f.write_str(
                "; D0/D1 probably swapped (the bitwise complement of the frame passes parity)",
            )
        } else {
            Ok(())
        }
    }
}

impl WiegandError {
    /// True when the error says the D0 and D1 wires are probably swapped.
    pub const fn probably_swapped(&self) -> bool {
        matches!(
            self,
            WiegandError::Parity { swapped: true, .. }
                | WiegandError::NoFormatMatched { swapped: true, .. }
        )
    }
}

/// Converts a wire-position mask to value space for a frame of `len` bits.
#[inline]
fn value_mask(wire_mask: u128, len: u8) -> u128 {
    if len == 0 {
        return 0;
    }
    // Wire position i is value bit (len - 1 - i): reverse all 128 bits, then shift down.
    (wire_mask.reverse_bits() >> (128 - u32::from(len))) & low_mask(len)
}

/// Checks one parity rule; `true` if it holds.
#[inline]
fn parity_holds(p: &Parity, bits: Bits) -> bool {
    let len = bits.len();
    let covered = value_mask(p.mask | (1u128 << p.pos), len);
    let ones = (bits.value() & covered).count_ones();
    (ones % 2 == 1) == p.odd
}

/// The first failing parity rule of `spec` for `bits` (which must have the spec's length).
fn first_parity_failure(spec: &FormatSpec, bits: Bits) -> Option<&'static Parity> {
    spec.parity.iter().find(|p| !parity_holds(p, bits))
}

impl FormatSpec {
    /// True if `bits` has this format's length and passes every parity check.
    pub fn matches(&self, bits: Bits) -> bool {
        bits.len() == self.len && first_parity_failure(self, bits).is_none()
    }
}

impl Format {
    /// Decodes a frame with this format: checks length and parity, extracts the fields.
    ///
    /// A parity failure whose bitwise complement would pass reports `swapped: true`
    /// ("D0/D1 probably swapped").
    pub fn decode(self, bits: Bits) -> Result<Credential, WiegandError> {
        let spec = self.spec();
        if bits.is_empty() {
            return Err(WiegandError::Empty);
        }
        if bits.len() != spec.len {
            return Err(WiegandError::Length {
                format: self,
                expected: spec.len,
                got: bits.len(),
            });
        }
        if let Some(p) = first_parity_failure(spec, bits) {
            return Err(WiegandError::Parity {
                format: self,
                bit: p.pos + 1,
                odd: p.odd,
                covers: p.covers,
                swapped: spec.matches(bits.complement()),
            });
        }
        Ok(Credential::new(
            CardFormat::Wiegand(self),
            extract(spec, bits),
            bits,
        ))
    }

    /// Builds a valid frame from field values (parities computed in table order). The
    /// Corporate 1000 company ID is the `facility`. Used by tests, emulators and the CLI.
    pub fn encode(self, fields: CardFields) -> Result<Bits, WiegandError> {
        let spec = self.spec();
        let mut value = 0u128;
        for field in spec.fields {
            let given = match field.kind {
                FieldKind::Oem => fields.oem.map(u64::from),
                FieldKind::Facility => fields.facility.map(u64::from),
                FieldKind::CardNumber => fields.card_number,
            };
            let v = given.ok_or(WiegandError::MissingField {
                format: self,
                field: field.name,
            })?;
            let max = low_mask(field.len) as u64;
            if v > max {
                return Err(WiegandError::ValueOutOfRange {
                    format: self,
                    field: field.name,
                    value: v,
                    max,
                });
            }
            value |= u128::from(v) << (spec.len - field.start - field.len);
        }
        for p in spec.parity {
            let probe = Bits::new(value, spec.len).unwrap_or_default();
            if !parity_holds(p, probe) {
                value ^= 1u128 << (spec.len - 1 - p.pos);
            }
        }
        Bits::new(value, spec.len).map_err(|_| WiegandError::Empty)
    }
}

fn extract(spec: &FormatSpec, bits: Bits) -> CardFields {
    let mut fields = CardFields::default();
    for field in spec.fields {
        // The table guarantees the field lies inside the frame; 0 is never observed.
        let v = bits.field(field.start, field.len).unwrap_or(0);
        match field.kind {
            FieldKind::Oem => fields.oem = u32::try_from(v).ok(),
            FieldKind::Facility => fields.facility = u32::try_from(v).ok(),
            FieldKind::CardNumber => fields.card_number = u64::try_from(v).ok(),
        }
    }
    fields
}

/// Decodes a frame according to the per-reader setting.
///
/// * `Fixed(f)`: exactly [`Format::decode`].
/// * `Auto`: the first format of the frame's length whose parity passes; a length with no
///   format passes through as `RAW<n>`; a length whose formats all fail is a
///   [`WiegandError::NoFormatMatched`] (with the swap hint).
/// * `Raw`: always `RAW<n>`.
pub fn decode(choice: FormatChoice, bits: Bits) -> Result<Credential, WiegandError> {
    if bits.is_empty() {
        return Err(WiegandError::Empty);
    }
    match choice {
        FormatChoice::Fixed(format) => format.decode(bits),
        FormatChoice::Raw => Ok(Credential::raw(bits)),
        FormatChoice::Auto => {
            let mut candidates = FORMATS.iter().filter(|s| s.len == bits.len());
            let Some(first) = candidates.next() else {
                return Ok(Credential::raw(bits));
            };
            if let Some(spec) = core::iter::once(first)
                .chain(candidates.clone())
                .find(|s| s.matches(bits))
            {
                return spec.format.decode(bits);
            }
            if candidates.next().is_none() {
                // A single format of this length: its own error names the failing parity bit.
                return first.format.decode(bits);
            }
            let complement = bits.complement();
            let swapped = FORMATS.iter().any(|s| s.matches(complement));
            Err(WiegandError::NoFormatMatched {
                len: bits.len(),
                swapped,
            })
        }
    }
}

/// Every format whose length and parity match (the `decode_any` diagnostic): 37-bit frames often
/// match both H10302 and H10304.
pub fn matching_formats(bits: Bits) -> impl Iterator<Item = Format> {
    FORMATS
        .iter()
        .filter(move |s| s.matches(bits))
        .map(|s| s.format)
}

/// Every decoding of a frame by a format whose length and parity match (proxmark3-style
/// `decode_any`): shows that a 37-bit frame reads as H10302 *and* H10304.
pub fn decode_any(bits: Bits) -> impl Iterator<Item = Credential> {
    matching_formats(bits).filter_map(move |f| f.decode(bits).ok())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn value_mask_reverses() {
        assert_eq!(value_mask(1, 26), 1 << 25);
        assert_eq!(value_mask(1 << 25, 26), 1);
        assert_eq!(value_mask(1, 128), 1 << 127);
        assert_eq!(value_mask(1, 1), 1);
    }
}
