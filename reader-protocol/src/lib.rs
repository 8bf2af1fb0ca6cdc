//! Sans-IO decoders for access-control badge readers: Wiegand (cards and keypads), EM4100 serial
//! modules (RDM6300, clones, ID-12LA / ID-20LA), ASCII line readers and converters, plus duplicate
//! suppression and typed reader events.
//!
//! Nothing here does I/O or reads a clock: edges, bytes and monotonic timestamps go in, frames,
//! credentials and faults come out. The crate is `#![no_std]` without the `std` feature and needs
//! no allocator; the agent wraps it in thin I/O shells (GPIO edge capture, serial ports).
//!
//! # Pipeline
//!
//! * Wiegand: kernel edge events → [`wiegand::WiegandAssembler`] (glitch filter, end-of-frame
//!   silence, sequence gaps, both-lines-low, > 128 bits) → [`wiegand::WiegandDecoder`] (per-reader
//!   format, keypad bursts and PINs) → [`ReaderEvent`]; [`wiegand::WiegandPipeline`] is the two
//!   in one value, so a shell only maps its edges and runs one timer.
//! * Serial: byte chunks → a [`serial::Framer`] ([`serial::Em4100Framer`], [`serial::LineReader`],
//!   or [`serial::SerialDecoder`] for either, built from a [`serial::SerialFraming`]) →
//!   [`Credential`] or [`serial::SerialError`].
//! * Then [`dedup::Dedup`] (one per reader) drops repeats of a card held on the reader.
//!
//! # Supported Wiegand formats
//!
//! | Name | Bits | Fields (1-based wire bits) | Parity |
//! | --- | --- | --- | --- |
//! | `H10301` | 26 | FC 2–9, CN 10–25 | 1 even over 2–13; 26 odd over 14–25 |
//! | `D10202` | 33 | FC 2–8, CN 9–32 | 1 even over 2–17; 33 odd over 17–32 |
//! | `H10306` | 34 | FC 2–17, CN 18–33 | 1 even over 2–17; 34 odd over 18–33 |
//! | `C1K35` (Corporate 1000) | 35 | company 3–14, CN 15–34 | 2 even, 35 odd (skip-every-third sets), 1 odd over 2–35 |
//! | `C15001` (Keyscan) | 36 | OEM 2–11, FC 12–19, CN 20–35 | 1 even over 2–18; 36 odd over 19–35 |
//! | `H10304` | 37 | FC 2–17, CN 18–36 | 1 even over 2–19; 37 odd over 19–36 |
//! | `H10302` | 37 | CN 2–36 | 1 even over 2–19; 37 odd over 19–36 |
//! | `C1K48` (Corporate 1000) | 48 | company 3–24, CN 25–47 | 2 even, 48 odd (skip-every-third sets), 1 odd over 2–48 |
//! | `RAW<n>` | 1–128 | none | none |
//!
//! The format is a per-reader setting ([`wiegand::FormatChoice`]): lengths collide (37 bits is
//! H10302 or H10304). `auto` tries the formats of the frame's length and reports which matched.
//! A parity failure whose bitwise complement passes says "D0/D1 probably swapped". Keypads:
//! 4-bit and 8-bit (complement-checked) key bursts, HID 26-bit binary and BCD buffered PINs, and
//! a [`wiegand::PinCollector`].
//!
//! # Canonical credential string
//!
//! [`Credential::canonical`] gives a stable string to join on in SQL (the `credential` row
//! field). It depends only on the format and the raw bits:
//!
//! * Wiegand table formats: the format name, then every field of the format in wire order in
//!   decimal, joined by `:` — `H10301:123:4567`, `H10302:34359738367`,
//!   `C15001:900:123:4567` (OEM, FC, CN), `C1K35:1234:567890` (company, CN).
//! * EM4100 tags: `EM4100:` + 10 lower-case hex digits of the 40 bits — `EM4100:3c00ce754c`.
//! * Anything else from Wiegand: `RAW<bit count>:` + `ceil(n/4)` lower-case hex digits —
//!   `RAW26:3ffffff`.
//! * Decimal line readers: `DEC:` + the number without leading zeros — `DEC:13530444`.
//!
//! The row fields come from [`Credential`]: [`Credential::format_name`] (`format`),
//! [`Credential::facility_code`], [`Credential::card_number`], [`Credential::raw_bits_hex`]
//! (`raw_bits`: lower-case hex, MSB first, left-padded to whole bytes — `0254008a`),
//! [`Credential::bit_count`]; [`ReaderEvent::event_type`] and [`ReaderEvent::detail`]
//! (`pin_length=4` or the fault reason). With the `serde` feature the events serialise with the
//! same field names; PINs serialise as their length only.
//!
//! # Example
//!
//! ```
//! use reader_protocol::{wiegand::{decode, FormatChoice}, Bits};
//! let bits = Bits::from_bit_str("10111101100010001110101110").unwrap();
//! let card = decode(FormatChoice::Auto, bits).unwrap();
//! assert_eq!(card.canonical().to_string(), "H10301:123:4567");
//! assert_eq!(card.raw_bits_hex().to_string(), "02f623ae");
//! ```
//!
//! # Features
//!
//! `std` (default; implies `alloc`), `alloc` (an allocator is available; only `osdp` needs one),
//! `hal` (drive the assembler from `embedded-hal` 1.0 input pins on a microcontroller:
//! `wiegand::hal::HalWiegand`), `serde` (serialise events; deserialise the reader settings an
//! operator writes in a configuration file: [`serial::SerialFraming`], [`serial::Terminator`],
//! [`serial::Radix`]), `osdp` (an OSDP control panel: [`osdp::ControlPanel`]; implies `alloc`).
#![cfg_attr(not(any(feature = "std", test)), no_std)]

#[cfg(feature = "osdp")]
extern crate alloc;

pub mod bits;
pub mod dedup;
pub mod event;
#[cfg(feature = "osdp")]
pub mod osdp;
pub mod serial;
pub mod wiegand;

pub use bits::{Bits, BitsError};
pub use dedup::{Dedup, DedupKey, DedupPolicy, Source, Verdict};
pub use event::{CardFields, CardFormat, Credential, ReaderEvent, ReaderFault};
