//! Typed reader events: a card credential, a PIN, or a reader fault.
//!
//! The accessors map one-to-one onto the row the agent sends (`format`, `facility_code`,
//! `card_number`, `raw_bits`, `bit_count`, `credential`, `detail`); see the crate docs for the
//! canonical credential string.

use core::fmt;

use crate::bits::{Bits, HexBits};
use crate::serial::SerialError;
use crate::wiegand::keypad::{KeypadError, Pin};
use crate::wiegand::{Format, FrameError, WiegandError};

/// The kind of credential, i.e. the `format` row field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CardFormat {
    /// A Wiegand format of the table.
    Wiegand(Format),
    /// Raw bits of any length, no fields decoded.
    Raw,
    /// An EM4100 125 kHz tag read by a serial module (40 bits: version byte + 32-bit ID).
    Em4100,
    /// A decimal number from an ASCII line reader.
    Decimal,
}

impl CardFormat {
    /// Upper-case name used in the `format` row field and as the canonical string prefix:
    /// `H10301`, …, `RAW`, `EM4100`, `DEC`.
    pub const fn name(self) -> &'static str {
        match self {
            CardFormat::Wiegand(f) => f.name(),
            CardFormat::Raw => "RAW",
            CardFormat::Em4100 => "EM4100",
            CardFormat::Decimal => "DEC",
        }
    }
}

impl fmt::Display for CardFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The decoded fields of a card. Absent fields are `None`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct CardFields {
    /// OEM / customer code (Keyscan C15001 only).
    pub oem: Option<u32>,
    /// Facility / site code (Corporate 1000: company ID).
    pub facility: Option<u32>,
    /// Card number.
    pub card_number: Option<u64>,
}

/// A card credential as read: format, decoded fields and the raw frame (always kept).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Credential {
    format: CardFormat,
    fields: CardFields,
    bits: Bits,
}

impl Credential {
    /// Assembles a credential. Decoders build these; the agent normally only reads them.
    pub const fn new(format: CardFormat, fields: CardFields, bits: Bits) -> Self {
        Credential {
            format,
            fields,
            bits,
        }
    }

    /// A raw pass-through credential (`RAW<n>:<hex>`) of any length.
    pub const fn raw(bits: Bits) -> Self {
        Credential {
            format: CardFormat::Raw,
            fields: CardFields {
                oem: None,
                facility: None,
                card_number: None,
            },
            bits,
        }
    }

    /// The format.
    pub const fn format(&self) -> CardFormat {
        self.format
    }

    /// The `format` row field, e.g. `H10301`, `EM4100`, `RAW`.
    pub const fn format_name(&self) -> &'static str {
        self.format.name()
    }

    /// All decoded fields.
    pub const fn fields(&self) -> CardFields {
        self.fields
    }

    /// The `facility_code` row field.
    pub const fn facility_code(&self) -> Option<u32> {
        self.fields.facility
    }

    /// The `card_number` row field.
    pub const fn card_number(&self) -> Option<u64> {
        self.fields.card_number
    }

    /// The raw frame.
    pub const fn bits(&self) -> Bits {
        self.bits
    }

    /// The `bit_count` row field.
    pub const fn bit_count(&self) -> u8 {
        self.bits.len()
    }

    /// The `raw_bits` row field: lower-case hex, MSB first, left-padded to whole bytes.
    pub const fn raw_bits_hex(&self) -> HexBits {
        self.bits.hex()
    }

    /// The canonical credential string (the `credential` row field); see the crate docs.
    pub const fn canonical(&self) -> Canonical<'_> {
        Canonical(self)
    }
}

impl fmt::Display for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.canonical(), f)
    }
}

/// Displays the canonical credential string of a [`Credential`].
///
/// * Wiegand table formats: `NAME:` then every field of the format in wire order, decimal, joined
///   by `:` — `H10301:123:4567`, `H10302:34359738367`, `C15001:900:123:4567`, `C1K35:1234:567890`.
/// * `EM4100:` + the 40 bits as 10 lower-case hex digits — `EM4100:3c00ce754c`.
/// * `RAW<n>:` + the frame as `ceil(n/4)` lower-case hex digits — `RAW26:3ffffff`.
/// * `DEC:` + the decimal number read by a line reader, without leading zeros — `DEC:13530444`.
#[derive(Debug, Clone, Copy)]
pub struct Canonical<'a>(&'a Credential);

impl fmt::Display for Canonical<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.0;
        match c.format {
            CardFormat::Wiegand(format) => {
                f.write_str(format.name())?;
                for field in format.spec().fields {
                    let value = c.bits.field(field.start, field.len).unwrap_or(0);
                    write!(f, ":{value}")?;
                }
                Ok(())
            }
            CardFormat::Raw => write!(f, "RAW{}:{}", c.bits.len(), c.bits.hex_nibbles()),
            CardFormat::Em4100 => write!(f, "EM4100:{:010x}", c.bits.value()),
            CardFormat::Decimal => write!(f, "DEC:{}", c.bits.value()),
        }
    }
}

/// Why a reader produced no credential: the `detail` of a `reader_fault` row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReaderFault {
    /// The Wiegand edge stream did not form a valid frame.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// A frame arrived but does not decode (length, parity, swapped lines).
    #[error(transparent)]
    Wiegand(#[from] WiegandError),
    /// A keypad frame or PIN entry was invalid.
    #[error(transparent)]
    Keypad(#[from] KeypadError),
    /// A serial reader sent an invalid frame.
    #[error(transparent)]
    Serial(#[from] SerialError),
}

impl ReaderFault {
    /// A short stable code for metrics and logs (`frame`, `wiegand`, `keypad`, `serial`).
    pub const fn kind(&self) -> &'static str {
        match self {
            ReaderFault::Frame(_) => "frame",
            ReaderFault::Wiegand(_) => "wiegand",
            ReaderFault::Keypad(_) => "keypad",
            ReaderFault::Serial(_) => "serial",
        }
    }
}

/// Something a reader produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReaderEvent {
    /// A card was read.
    Card(Credential),
    /// A PIN was entered (the digits are redacted from `Debug` and serialisation).
    Pin(Pin),
    /// A frame or entry was invalid.
    Fault(ReaderFault),
}

impl ReaderEvent {
    /// The `event_type` row field: `card`, `pin` or `reader_fault`.
    pub const fn event_type(&self) -> &'static str {
        match self {
            ReaderEvent::Card(_) => "card",
            ReaderEvent::Pin(_) => "pin",
            ReaderEvent::Fault(_) => "reader_fault",
        }
    }

    /// The credential, for card events.
    pub const fn credential(&self) -> Option<&Credential> {
        match self {
            ReaderEvent::Card(c) => Some(c),
            _ => None,
        }
    }

    /// The `detail` row field: `pin_length=N` for PINs, the reason for faults, nothing for cards.
    pub const fn detail(&self) -> Option<EventDetail<'_>> {
        match self {
            ReaderEvent::Card(_) => None,
            _ => Some(EventDetail(self)),
        }
    }
}

impl From<Credential> for ReaderEvent {
    fn from(c: Credential) -> Self {
        ReaderEvent::Card(c)
    }
}

impl From<Pin> for ReaderEvent {
    fn from(p: Pin) -> Self {
        ReaderEvent::Pin(p)
    }
}

impl From<ReaderFault> for ReaderEvent {
    fn from(f: ReaderFault) -> Self {
        ReaderEvent::Fault(f)
    }
}

macro_rules! fault_from {
    ($($t:ty),*) => {$(
        impl From<$t> for ReaderEvent {
            fn from(e: $t) -> Self {
                ReaderEvent::Fault(e.into())
            }
        }
    )*};
}
fault_from!(FrameError, WiegandError, KeypadError, SerialError);

/// Displays the `detail` row field of an event (see [`ReaderEvent::detail`]).
#[derive(Debug, Clone, Copy)]
pub struct EventDetail<'a>(&'a ReaderEvent);

impl fmt::Display for EventDetail<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            ReaderEvent::Card(_) => Ok(()),
            ReaderEvent::Pin(p) => write!(f, "pin_length={}", p.len()),
            ReaderEvent::Fault(fault) => fmt::Display::fmt(fault, f),
        }
    }
}

#[cfg(feature = "serde")]
mod ser {
    use super::*;
    use serde::ser::{Serialize, SerializeStruct, Serializer};

    impl Serialize for CardFormat {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_str(self.name())
        }
    }

    /// Serialises with the row field names: `credential`, `format`, `oem`, `facility_code`,
    /// `card_number`, `raw_bits`, `bit_count`.
    impl Serialize for Credential {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut st = s.serialize_struct("Credential", 7)?;
            st.serialize_field("credential", &Collect(self.canonical()))?;
            st.serialize_field("format", self.format_name())?;
            st.serialize_field("oem", &self.fields.oem)?;
            st.serialize_field("facility_code", &self.fields.facility)?;
            st.serialize_field("card_number", &self.fields.card_number)?;
            st.serialize_field("raw_bits", &Collect(self.raw_bits_hex()))?;
            st.serialize_field("bit_count", &self.bit_count())?;
            st.end()
        }
    }

    /// Only the PIN length is serialised: the PIN never leaves the gateway.
    impl Serialize for Pin {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut st = s.serialize_struct("Pin", 1)?;
            st.serialize_field("pin_length", &self.len())?;
            st.end()
        }
    }

    /// `{ "kind": "serial", "detail": "<technician-readable reason>" }`.
    impl Serialize for ReaderFault {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut st = s.serialize_struct("ReaderFault", 2)?;
            st.serialize_field("kind", self.kind())?;
            st.serialize_field("detail", &Collect(self))?;
            st.end()
        }
    }

    /// Internally tagged with `event_type` = `card` / `pin` / `reader_fault`.
    impl Serialize for ReaderEvent {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            #[derive(serde::Serialize)]
            #[serde(tag = "event_type", rename_all = "snake_case")]
            enum Tagged<'a> {
                Card(&'a Credential),
                Pin(&'a Pin),
                ReaderFault(&'a ReaderFault),
            }
            match self {
                ReaderEvent::Card(c) => Tagged::Card(c),
                ReaderEvent::Pin(p) => Tagged::Pin(p),
                ReaderEvent::Fault(f) => Tagged::ReaderFault(f),
            }
            .serialize(s)
        }
    }

    /// Serialises any `Display` as a string without allocating.
    struct Collect<T>(T);

    impl<T: fmt::Display> Serialize for Collect<T> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.collect_str(&self.0)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::string::ToString;

    #[test]
    fn canonical_strings() {
        let raw = Credential::raw(Bits::new(0x3ff_ffff, 26).unwrap());
        assert_eq!(raw.canonical().to_string(), "RAW26:3ffffff");
        assert_eq!(raw.raw_bits_hex().to_string(), "03ffffff");
        let short = Credential::raw(Bits::new(0x5, 4).unwrap());
        assert_eq!(short.to_string(), "RAW4:5");
        let em = Credential::new(
            CardFormat::Em4100,
            CardFields::default(),
            Bits::new(0x01_0203_0405, 40).unwrap(),
        );
        assert_eq!(em.to_string(), "EM4100:0102030405");
        let ev = ReaderEvent::Card(raw);
        assert_eq!(ev.event_type(), "card");
        assert!(ev.detail().is_none());
    }
}
