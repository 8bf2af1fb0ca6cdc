//! On-disk encoding of a chunk: a run of consecutive swipes stored under one sled key.
//!
//! ```text
//! key   = first seq (u64 big-endian, so key order is sequence order)
//! value = [chunk format u8][crc32 LE of everything after these 5 bytes]
//!         [count u32 LE][raw length u32 LE][zstd( (varint len, record envelope)* )]
//! ```
//!
//! The records inside are the same envelopes as in the legacy one-key-per-swipe tree (record
//! format version + CRC32 + postcard, see [`super::record`]), so a record keeps its own version and
//! checksum; the chunk CRC catches a torn or bit-rotted value before anything is decompressed.
//! Record `i` of the chunk has sequence number `key + i`: a chunk never has holes.

use crate::row::SwipeRecord;

use super::record::{self, RecordError};

/// Current chunk format (the value layout above).
pub const CHUNK_FORMAT_VERSION: u8 = 1;
/// Bytes before the compressed payload.
pub const CHUNK_HEADER_LEN: usize = 13;
/// Largest uncompressed payload a chunk may declare (a merged chunk is far smaller); bounds what
/// a corrupt header could make us allocate.
pub const MAX_RAW_LEN: usize = 64 * 1024 * 1024;
/// zstd level: level 1 compresses a run of similar swipes ~4x at a few hundred MB/s.
const ZSTD_LEVEL: i32 = 1;

/// Why a stored chunk could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    /// Shorter than the header.
    #[error("chunk too short: {0} bytes")]
    TooShort(usize),
    /// Written by a chunk format this agent does not know.
    #[error("unknown chunk format version {0} (this agent reads {CHUNK_FORMAT_VERSION})")]
    Version(u8),
    /// The value does not match its checksum.
    #[error("chunk checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Crc {
        /// CRC in the header.
        stored: u32,
        /// CRC of the value as read.
        computed: u32,
    },
    /// Checksum fine but the payload does not decompress or split into `count` records.
    #[error("chunk payload is malformed: {0}")]
    Payload(String),
    /// A record inside the chunk failed its own envelope check.
    #[error("record in chunk: {0}")]
    Record(#[from] RecordError),
}

/// A chunk being built: uncompressed record envelopes, each prefixed by its length.
#[derive(Debug, Default, Clone)]
pub struct ChunkBuilder {
    raw: Vec<u8>,
    count: u32,
}

impl ChunkBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends one swipe (encoded in the record envelope).
    pub fn push(&mut self, rec: &SwipeRecord) {
        self.push_envelope(&record::encode(rec));
    }

    /// Appends an already encoded record envelope (merges copy envelopes without re-encoding).
    pub fn push_envelope(&mut self, env: &[u8]) {
        put_varint(&mut self.raw, env.len() as u64);
        self.raw.extend_from_slice(env);
        self.count += 1;
    }

    /// Records pushed so far.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// Compresses and frames the chunk.
    pub fn finish(&self) -> Vec<u8> {
        // zstd's bulk compressor only fails on allocation failure or a bad level.
        let compressed = zstd::bulk::compress(&self.raw, ZSTD_LEVEL)
            .expect("zstd compression into a Vec cannot fail at a valid level");
        let mut out = Vec::with_capacity(CHUNK_HEADER_LEN + compressed.len());
        out.extend_from_slice(&[CHUNK_FORMAT_VERSION, 0, 0, 0, 0]);
        out.extend_from_slice(&self.count.to_le_bytes());
        out.extend_from_slice(&(self.raw.len() as u32).to_le_bytes());
        out.extend_from_slice(&compressed);
        let crc = crc32fast::hash(&out[5..]);
        out[1..5].copy_from_slice(&crc.to_le_bytes());
        out
    }
}

/// Encodes `recs` as one chunk.
pub fn encode(recs: &[SwipeRecord]) -> Vec<u8> {
    let mut b = ChunkBuilder::new();
    for r in recs {
        b.push(r);
    }
    b.finish()
}

/// Checks version and CRC and returns the record count, without decompressing.
pub fn count(bytes: &[u8]) -> Result<u32, ChunkError> {
    check(bytes).map(|(count, _)| count)
}

/// Header check shared by every reader: returns (count, raw length).
fn check(bytes: &[u8]) -> Result<(u32, usize), ChunkError> {
    if bytes.len() < CHUNK_HEADER_LEN {
        return Err(ChunkError::TooShort(bytes.len()));
    }
    if bytes[0] != CHUNK_FORMAT_VERSION {
        return Err(ChunkError::Version(bytes[0]));
    }
    let stored = u32::from_le_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
    let computed = crc32fast::hash(&bytes[5..]);
    if stored != computed {
        return Err(ChunkError::Crc { stored, computed });
    }
    let count = u32::from_le_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]);
    let raw_len = u32::from_le_bytes([bytes[9], bytes[10], bytes[11], bytes[12]]) as usize;
    // Every record takes at least one byte, so a count above the raw length is corrupt (and
    // must not size an allocation).
    if count == 0 || raw_len > MAX_RAW_LEN || count as usize > raw_len {
        return Err(ChunkError::Payload(format!(
            "implausible header: {count} records, {raw_len} bytes"
        )));
    }
    Ok((count, raw_len))
}

/// Splits a chunk into its record envelopes (still encoded), checking the chunk CRC and that
/// exactly `count` envelopes are present.
pub fn envelopes(bytes: &[u8]) -> Result<Vec<Vec<u8>>, ChunkError> {
    let (count, raw_len) = check(bytes)?;
    let raw = zstd::bulk::decompress(&bytes[CHUNK_HEADER_LEN..], raw_len)
        .map_err(|e| ChunkError::Payload(format!("zstd: {e}")))?;
    if raw.len() != raw_len {
        return Err(ChunkError::Payload(format!(
            "decompressed to {} bytes, header says {raw_len}",
            raw.len()
        )));
    }
    let mut out = Vec::with_capacity(count as usize);
    let mut rest = raw.as_slice();
    while !rest.is_empty() {
        let (len, used) = get_varint(rest)
            .ok_or_else(|| ChunkError::Payload("truncated record length".into()))?;
        rest = &rest[used..];
        let len = usize::try_from(len)
            .ok()
            .filter(|l| *l <= rest.len())
            .ok_or_else(|| ChunkError::Payload("record runs past the chunk".into()))?;
        out.push(rest[..len].to_vec());
        rest = &rest[len..];
    }
    if out.len() != count as usize {
        return Err(ChunkError::Payload(format!(
            "{} records, header says {count}",
            out.len()
        )));
    }
    Ok(out)
}

/// Decodes every record of a chunk. One bad record makes the whole chunk an error: its CRC
/// passed, so a bad record inside means a format bug, and the caller skips and counts the chunk.
pub fn decode(bytes: &[u8]) -> Result<Vec<SwipeRecord>, ChunkError> {
    envelopes(bytes)?
        .iter()
        .map(|e| record::decode(e).map_err(ChunkError::from))
        .collect()
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, b) in bytes.iter().enumerate().take(10) {
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::buffer::tests::swipe;

    #[test]
    fn chunk_round_trips_and_counts() {
        let recs: Vec<_> = (0..300).map(swipe).collect();
        let bytes = encode(&recs);
        assert_eq!(count(&bytes).unwrap(), 300);
        assert_eq!(decode(&bytes).unwrap(), recs);
        // Compression pays: far below the ~150 B a lone envelope takes.
        assert!(bytes.len() < 300 * 60, "{} bytes", bytes.len());
    }

    #[test]
    fn chunk_crc_detects_single_bit_flips_everywhere_after_the_version() {
        let bytes = encode(&(0..4).map(swipe).collect::<Vec<_>>());
        for i in 1..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x10;
            assert!(
                matches!(decode(&b), Err(ChunkError::Crc { .. })),
                "flip at byte {i} not detected"
            );
        }
        let mut b = bytes.clone();
        b[0] = 9;
        assert_eq!(decode(&b), Err(ChunkError::Version(9)));
        assert_eq!(decode(&bytes[..4]), Err(ChunkError::TooShort(4)));
    }

    #[test]
    fn chunk_with_valid_crc_but_wrong_count_or_garbage_is_a_payload_error() {
        let mut b = ChunkBuilder::new();
        b.push(&swipe(1));
        let mut bytes = b.finish();
        bytes[5] = 2; // claims two records
        let crc = crc32fast::hash(&bytes[5..]);
        bytes[1..5].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(decode(&bytes), Err(ChunkError::Payload(_))));
        let mut junk = vec![
            CHUNK_FORMAT_VERSION,
            0,
            0,
            0,
            0,
            1,
            0,
            0,
            0,
            8,
            0,
            0,
            0,
            1,
            2,
            3,
        ];
        let crc = crc32fast::hash(&junk[5..]);
        junk[1..5].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(decode(&junk), Err(ChunkError::Payload(_))));
    }

    #[test]
    fn varint_round_trips_and_rejects_truncation() {
        for v in [0u64, 1, 127, 128, 300, 1 << 40, u64::MAX] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            assert_eq!(get_varint(&b), Some((v, b.len())));
            assert_eq!(get_varint(&b[..b.len() - 1]), None);
        }
    }
}
