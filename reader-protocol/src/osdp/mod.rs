//! OSDP control panel (CP / ACU) for readers on an RS-485 bus — sans-IO.
//!
//! The wire layer (framing, CRC, typed command and reply payloads, the Annex D secure channel over
//! AES-128) is the pure-Rust `osdp` crate. This module adds what that crate leaves to the
//! application, without I/O or a clock:
//!
//! * [`ControlPanel`]: one bus, several PDs by address, one outstanding command at a time; the
//!   per-PD link state machine ID → CAP → [CHLNG → SCRYPT → (KEYSET → CHLNG)] → ONLINE ⇄ OFFLINE,
//!   SQN cycling (a retry after a timeout reuses the SQN), poll pacing, reply timeout and the
//!   offline threshold. Bytes and millisecond timestamps go in ([`ControlPanel::handle_rx`],
//!   [`ControlPanel::handle_timeout`]); packets to write ([`ControlPanel::poll_transmit`]) and
//!   [`CpEvent`]s come out.
//! * A reader configured for the secure channel is never run in plain text: a PD that lacks the
//!   capability, refuses the key, answers in the clear or fails a MAC yields
//!   [`CpEvent::SecureFault`] and stays off line until a handshake succeeds.
//! * [`describe_packet`]: a technician's view of one captured packet (hex from a bus sniffer).
//!
//! Card bits from `osdp_RAW` are exactly the Wiegand frame, so [`CpEvent::Card`] carries [`Bits`]
//! for the Wiegand format table ([`crate::wiegand::decode()`]).

mod cp;
mod describe;

pub use cp::{
    key_of, BusTiming, ControlPanel, CpError, CpEvent, Feedback, LinkState, LinkStats, PdIdentity,
    PdSettings, SecureFault, Security,
};
pub use describe::{describe_packet, nak_reason, DescribeError, PacketSummary};

/// The well-known install-mode key (SCBK-D, `30 31 … 3F`): only for provisioning a new reader.
pub const SCBK_DEFAULT: [u8; 16] = ::osdp::secure::SCBK_D;

/// OSDP's baud rates (the ones PDs and `osdp_COMSET` use).
pub const BAUD_RATES: [u32; 6] = [9600, 19200, 38400, 57600, 115_200, 230_400];

/// Highest PD address (0x7F is broadcast).
pub const MAX_ADDRESS: u8 = 0x7E;

use crate::Bits;
