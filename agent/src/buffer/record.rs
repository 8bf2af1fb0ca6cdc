//! On-disk envelope of a buffered swipe: `[format version: u8][crc32 of payload: u32 LE][payload]`,
//! the payload being the postcard encoding of a [`SwipeRecord`].
//!
//! The CRC catches torn or bit-rotted values that sled itself hands back intact (sled checks its
//! own log, not what survives an SD card losing a page); the version lets adjacent agent versions
//! recognise records they cannot read instead of misparsing them.

use crate::row::SwipeRecord;

/// Current envelope/payload format. Bump when [`SwipeRecord`]'s postcard layout changes.
pub const RECORD_FORMAT_VERSION: u8 = 1;

/// Bytes before the payload: version + CRC32.
pub const HEADER_LEN: usize = 5;

/// Why a stored value could not be turned back into a [`SwipeRecord`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Shorter than the header.
    #[error("record too short: {0} bytes")]
    TooShort(usize),
    /// Written by a format this agent does not know.
    #[error("unknown record format version {0} (this agent reads {RECORD_FORMAT_VERSION})")]
    Version(u8),
    /// The payload does not match its checksum.
    #[error("record checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Crc {
        /// CRC in the header.
        stored: u32,
        /// CRC of the payload as read.
        computed: u32,
    },
    /// Checksum fine but the payload does not decode (should only happen after a format bug).
    #[error("record payload does not decode: {0}")]
    Decode(String),
}

/// Encodes a record into its envelope.
pub fn encode(rec: &SwipeRecord) -> Vec<u8> {
    let mut header = Vec::with_capacity(160);
    header.extend_from_slice(&[RECORD_FORMAT_VERSION, 0, 0, 0, 0]);
    // postcard into a Vec only fails on serde errors our plain struct cannot produce.
    let mut out = postcard::to_extend(rec, header)
        .expect("postcard encoding into a Vec is infallible for SwipeRecord");
    let crc = crc32fast::hash(&out[HEADER_LEN..]);
    out[1..HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes an envelope, checking version and CRC.
pub fn decode(bytes: &[u8]) -> Result<SwipeRecord, RecordError> {
    if bytes.len() < HEADER_LEN {
        return Err(RecordError::TooShort(bytes.len()));
    }
    if bytes[0] != RECORD_FORMAT_VERSION {
        return Err(RecordError::Version(bytes[0]));
    }
    let stored = u32::from_le_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
    let payload = &bytes[HEADER_LEN..];
    let computed = crc32fast::hash(payload);
    if stored != computed {
        return Err(RecordError::Crc { stored, computed });
    }
    postcard::from_bytes(payload).map_err(|e| RecordError::Decode(e.to_string()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::row::{Direction, EventType};

    fn rec() -> SwipeRecord {
        SwipeRecord {
            event_type: EventType::Pin,
            reader_id: "r9".into(),
            zone_id: None,
            door_id: Some("d".into()),
            direction: Some(Direction::Out),
            credential: None,
            format: None,
            facility_code: None,
            card_number: None,
            raw_bits: None,
            bit_count: None,
            detail: Some("pin_length=4".into()),
            swiped_at_ms: -5,
            clock_synced: false,
            agent_version: "9.9.9".into(),
        }
    }

    #[test]
    fn envelope_round_trips() {
        let bytes = encode(&rec());
        assert_eq!(bytes[0], RECORD_FORMAT_VERSION);
        assert_eq!(decode(&bytes).unwrap(), rec());
    }

    #[test]
    fn envelope_crc_detects_every_single_bit_flip_in_payload() {
        let bytes = encode(&rec());
        for i in HEADER_LEN..bytes.len() {
            for bit in 0..8 {
                let mut b = bytes.clone();
                b[i] ^= 1 << bit;
                assert!(
                    matches!(decode(&b), Err(RecordError::Crc { .. })),
                    "flip at byte {i} bit {bit} not detected"
                );
            }
        }
    }

    #[test]
    fn envelope_rejects_unknown_version_and_short_values() {
        let mut bytes = encode(&rec());
        bytes[0] = RECORD_FORMAT_VERSION + 1;
        assert_eq!(
            decode(&bytes),
            Err(RecordError::Version(RECORD_FORMAT_VERSION + 1))
        );
        assert_eq!(decode(&[1, 2, 3]), Err(RecordError::TooShort(3)));
        assert_eq!(decode(&[]), Err(RecordError::TooShort(0)));
    }

    #[test]
    fn envelope_with_valid_crc_but_garbage_payload_is_a_decode_error() {
        let payload = [0xffu8; 3];
        let mut bytes = vec![RECORD_FORMAT_VERSION];
        bytes.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        bytes.extend_from_slice(&payload);
        assert!(matches!(decode(&bytes), Err(RecordError::Decode(_))));
    }
}
