//! A technician's view of one captured OSDP packet.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use ::osdp::command::{Command, CommandCode};
use ::osdp::packet::{ParsedPacket, Trailer};
use ::osdp::reply::{Reply, ReplyCode};

use crate::wiegand::{decode, FormatChoice};
use crate::Bits;

/// Why a capture does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DescribeError {
    /// No `0x53` start byte.
    #[error("no OSDP packet start (0x53) in the input")]
    NoStart,
    /// The framing, length or check bytes are wrong.
    #[error("not a valid OSDP packet: {0}")]
    Invalid(String),
}

/// One packet, decoded as far as possible without session keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketSummary {
    /// PD address (without the reply bit).
    pub address: u8,
    /// PD → CP.
    pub is_reply: bool,
    /// Sequence number 0–3.
    pub sqn: u8,
    /// `CRC-16` or `checksum`.
    pub check: &'static str,
    /// Secure-channel block type (0x11–0x18), if present.
    pub scs: Option<u8>,
    /// Command or reply code.
    pub code: u8,
    /// Name of the code (`osdp_POLL`, …).
    pub name: &'static str,
    /// Payload bytes as on the wire (ciphertext when encrypted).
    pub data: Vec<u8>,
    /// What the payload means, when it can be read.
    pub meaning: String,
    /// Bytes before the packet (marks, noise) and after it.
    pub skipped: usize,
}

impl fmt::Display for PacketSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dir = if self.is_reply {
            "reply PD->CP"
        } else {
            "command CP->PD"
        };
        writeln!(
            f,
            "OSDP {dir}, address {}, SQN {}, {} ok",
            self.address, self.sqn, self.check
        )?;
        match self.scs {
            None => writeln!(f, "security: none (plain text)")?,
            Some(scs) => writeln!(f, "security: SCS_{scs:02X} ({})", scs_meaning(scs))?,
        }
        writeln!(f, "code: 0x{:02X} {}", self.code, self.name)?;
        let hex: String = self.data.iter().map(|b| format!("{b:02x}")).collect();
        writeln!(f, "data: {} byte(s) {hex}", self.data.len())?;
        if !self.meaning.is_empty() {
            writeln!(f, "meaning: {}", self.meaning)?;
        }
        if self.skipped > 0 {
            writeln!(f, "({} byte(s) around the packet ignored)", self.skipped)?;
        }
        Ok(())
    }
}

fn scs_meaning(scs: u8) -> &'static str {
    match scs {
        0x11 => "handshake: challenge",
        0x12 => "handshake: client cryptogram",
        0x13 => "handshake: server cryptogram",
        0x14 => "handshake: initial R-MAC",
        0x15 | 0x16 => "secure, MAC only",
        0x17 | 0x18 => {
            "secure, MAC + encrypted data: payload cannot be read without the session keys"
        }
        _ => "unknown",
    }
}

/// What a NAK code means.
pub const fn nak_reason(code: u8) -> &'static str {
    match code {
        0 => "no error",
        1 => "bad checksum or CRC",
        2 => "command length",
        3 => "unknown command",
        4 => "unexpected sequence number",
        5 => "security block type not supported",
        6 => "encrypted communication required",
        7 => "biometric type not supported",
        8 => "biometric format not supported",
        9 => "unable to process command record",
        _ => "unknown code",
    }
}

fn command_name(code: u8) -> &'static str {
    match code {
        0x60 => "osdp_POLL",
        0x61 => "osdp_ID",
        0x62 => "osdp_CAP",
        0x64 => "osdp_LSTAT",
        0x65 => "osdp_ISTAT",
        0x66 => "osdp_OSTAT",
        0x67 => "osdp_RSTAT",
        0x68 => "osdp_OUT",
        0x69 => "osdp_LED",
        0x6A => "osdp_BUZ",
        0x6B => "osdp_TEXT",
        0x6E => "osdp_COMSET",
        0x73 => "osdp_BIOREAD",
        0x74 => "osdp_BIOMATCH",
        0x75 => "osdp_KEYSET",
        0x76 => "osdp_CHLNG",
        0x77 => "osdp_SCRYPT",
        0x7B => "osdp_ACURXSIZE",
        0x7C => "osdp_FILETRANSFER",
        0x80 => "osdp_MFG",
        0xA1 => "osdp_XWR",
        0xA2 => "osdp_ABORT",
        0xA7 => "osdp_KEEPACTIVE",
        _ => "unknown command",
    }
}

fn reply_name(code: u8) -> &'static str {
    match code {
        0x40 => "osdp_ACK",
        0x41 => "osdp_NAK",
        0x45 => "osdp_PDID",
        0x46 => "osdp_PDCAP",
        0x48 => "osdp_LSTATR",
        0x49 => "osdp_ISTATR",
        0x4A => "osdp_OSTATR",
        0x4B => "osdp_RSTATR",
        0x50 => "osdp_RAW",
        0x51 => "osdp_FMT",
        0x53 => "osdp_KEYPAD",
        0x54 => "osdp_COM",
        0x76 => "osdp_CCRYPT",
        0x78 => "osdp_RMAC_I",
        0x79 => "osdp_BUSY",
        0x90 => "osdp_MFGREP",
        0xB1 => "osdp_XRD",
        _ => "unknown reply",
    }
}

fn reply_meaning(code: u8, data: &[u8]) -> String {
    let reply = match ReplyCode::from_byte(code).and_then(|c| Reply::decode(c, data)) {
        Ok(r) => r,
        Err(e) => return format!("payload does not decode: {e}"),
    };
    match reply {
        Reply::Ack(_) => "acknowledged".into(),
        Reply::Nak(n) => {
            let c = n.error.as_byte();
            format!("NAK {c}: {}", nak_reason(c))
        }
        Reply::Raw(raw) => match Bits::from_msb_bytes(&raw.bits, raw.bit_count) {
            Ok(bits) => match decode(FormatChoice::Auto, bits) {
                Ok(card) => format!(
                    "card on reader {}, {} bits: {}",
                    raw.reader,
                    raw.bit_count,
                    card.canonical()
                ),
                Err(e) => format!("card on reader {}, {} bits: {e}", raw.reader, raw.bit_count),
            },
            Err(e) => format!("card data unusable: {e}"),
        },
        // PIN digits stay off the screen as they stay out of rows.
        Reply::Keypad(k) => format!(
            "{} key(s) on reader {} (redacted)",
            k.digits.len(),
            k.reader
        ),
        Reply::LStatR(s) => format!(
            "tamper {}, power {}",
            if s.tamper != 0 { "TRIPPED" } else { "normal" },
            if s.power != 0 { "FAILURE" } else { "normal" }
        ),
        Reply::PdId(id) => format!(
            "vendor {:02x}{:02x}{:02x}, model {}, version {}, serial {:08x}, firmware {}.{}.{}",
            id.vendor_oui[0],
            id.vendor_oui[1],
            id.vendor_oui[2],
            id.model,
            id.version,
            id.serial,
            id.firmware[0],
            id.firmware[1],
            id.firmware[2]
        ),
        Reply::PdCap(cap) => {
            let list: Vec<String> = cap
                .capabilities
                .iter()
                .map(|c| format!("{}/{}/{}", c.code, c.compliance, c.number_of))
                .collect();
            format!(
                "capabilities (function/compliance/count): {}",
                list.join(" ")
            )
        }
        other => format!("{other:?}"),
    }
}

fn command_meaning(code: u8, data: &[u8]) -> String {
    // Keys never reach a screen, even from a plain-text capture.
    if code == 0x75 {
        return format!("new key ({} bytes, redacted)", data.len());
    }
    match CommandCode::from_byte(code).and_then(|c| Command::decode(c, data)) {
        Ok(Command::Poll(_)) => String::new(),
        Ok(c) => format!("{c:?}"),
        Err(e) => format!("payload does not decode: {e}"),
    }
}

/// Decodes one packet from a capture (leading `0xFF` marks and noise are skipped).
pub fn describe_packet(bytes: &[u8]) -> Result<PacketSummary, DescribeError> {
    let start = bytes
        .iter()
        .position(|&b| b == ::osdp::SOM)
        .ok_or(DescribeError::NoStart)?;
    let (parsed, used) =
        ParsedPacket::parse(&bytes[start..]).map_err(|e| DescribeError::Invalid(format!("{e}")))?;
    let is_reply = parsed.addr.is_reply();
    let scs = parsed.scb.map(|s| s.ty.as_byte());
    let encrypted = parsed.scb.is_some_and(|s| s.ty.is_encrypted());
    let meaning = if encrypted {
        "encrypted".into()
    } else if scs.is_some_and(|s| s <= 0x14) {
        String::from("secure-channel handshake")
    } else if is_reply {
        reply_meaning(parsed.code, parsed.data)
    } else {
        command_meaning(parsed.code, parsed.data)
    };
    Ok(PacketSummary {
        address: parsed.addr.pd_addr(),
        is_reply,
        sqn: parsed.ctrl.sqn.value(),
        check: match parsed.trailer {
            Trailer::Crc(_) => "CRC-16",
            Trailer::Checksum(_) => "checksum",
        },
        scs,
        code: parsed.code,
        name: if is_reply {
            reply_name(parsed.code)
        } else {
            command_name(parsed.code)
        },
        data: parsed.data.to_vec(),
        meaning,
        skipped: bytes.len() - used,
    })
}
