//! NDJSON batching: rows (already-serialised JSON lines with their sequence numbers) become append
//! payloads that stay under the 4 MB per-request limit *as sent*, i.e. after compression
//! (`docs/snowpipe-wire.md`, limits). Pure apart from the compressors.
//!
//! Strategy: fill a batch up to a conservative uncompressed budget (4 MiB by default, which zstd
//! and gzip shrink well below 4 MB for JSON), compress it, and if the compressed body is still over
//! the wire limit (incompressible data, or no compression), split the rows in half and retry.

use std::io::Write;

use super::error::SnowpipeError;
use super::protocol::ContentEncoding;

/// Snowflake's per-request limit as received, in bytes (4 MB, decimal: the conservative reading).
pub const MAX_WIRE_BYTES: usize = 4_000_000;
/// Uncompressed budget per batch before compression (the official client's 4 MiB batch capacity).
pub const MAX_UNCOMPRESSED_BYTES: usize = 4 * 1024 * 1024;

/// Size limits of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Upper bound of the NDJSON (uncompressed) size of one batch.
    pub max_uncompressed_bytes: usize,
    /// Upper bound of the body as sent (after compression).
    pub max_wire_bytes: usize,
    /// Upper bound of rows per batch.
    pub max_rows: usize,
}

impl Default for BatchLimits {
    fn default() -> Self {
        BatchLimits {
            max_uncompressed_bytes: MAX_UNCOMPRESSED_BYTES,
            max_wire_bytes: MAX_WIRE_BYTES,
            max_rows: 100_000,
        }
    }
}

/// One append payload, ready to send (and to resend unchanged on retry).
#[derive(Clone, PartialEq, Eq)]
pub struct Batch {
    /// Sequence number of the first row (its decimal form is `startOffsetToken`).
    pub start_seq: u64,
    /// Sequence number of the last row (`endOffsetToken`; what the committed token reaches).
    pub end_seq: u64,
    /// Number of rows.
    pub rows: usize,
    /// The body as sent (compressed per `encoding`).
    pub body: Vec<u8>,
    /// The NDJSON length before compression (`x-snowflake-uncompressed-content-length`).
    pub uncompressed_len: usize,
    /// Body encoding.
    pub encoding: ContentEncoding,
    /// Earliest append time of the rows, epoch ms (`x-snowflake-min-append-timestamp-ms`).
    pub min_append_ts_ms: u64,
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Rows carry credentials (badge numbers): never print the body.
        f.debug_struct("Batch")
            .field("start_seq", &self.start_seq)
            .field("end_seq", &self.end_seq)
            .field("rows", &self.rows)
            .field("wire_len", &self.body.len())
            .field("uncompressed_len", &self.uncompressed_len)
            .field("encoding", &self.encoding)
            .finish()
    }
}

impl Batch {
    /// `startOffsetToken`.
    pub fn start_offset_token(&self) -> String {
        self.start_seq.to_string()
    }
    /// `endOffsetToken`.
    pub fn end_offset_token(&self) -> String {
        self.end_seq.to_string()
    }
}

/// Compresses an NDJSON body.
pub fn compress(ndjson: &[u8], encoding: ContentEncoding) -> Result<Vec<u8>, SnowpipeError> {
    let err = |e: std::io::Error| SnowpipeError::Batch {
        message: format!("compression failed: {e}"),
    };
    match encoding {
        ContentEncoding::Identity => Ok(ndjson.to_vec()),
        ContentEncoding::Zstd => zstd::bulk::compress(ndjson, 3).map_err(err),
        ContentEncoding::Gzip => {
            let mut enc = flate2::write::GzEncoder::new(
                Vec::with_capacity(ndjson.len() / 4),
                flate2::Compression::default(),
            );
            enc.write_all(ndjson).map_err(err)?;
            enc.finish().map_err(err)
        }
    }
}

fn line_of(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Splits `rows` — `(seq, JSON line)` in strictly increasing `seq` order — into batches in order,
/// each under `limits` after compression with `encoding`. Every row lands in exactly one batch.
///
/// A trailing `\n` (or `\r\n`) on a line is accepted and normalised; an embedded line break, an
/// empty line, out-of-order sequence numbers, or a single row that cannot fit on its own is an
/// error (the caller must not silently drop a swipe).
pub fn split_into_batches<'a, I>(
    rows: I,
    encoding: ContentEncoding,
    limits: BatchLimits,
    append_ts_ms: u64,
) -> Result<Vec<Batch>, SnowpipeError>
where
    I: IntoIterator<Item = (u64, &'a [u8])>,
{
    let bad = |message: String| SnowpipeError::Batch { message };
    let mut batches = Vec::new();
    let mut group: Vec<(u64, &[u8])> = Vec::new();
    let mut group_len = 0usize;
    let mut last_seq: Option<u64> = None;
    for (seq, raw) in rows {
        let line = line_of(raw);
        if line.is_empty() {
            return Err(bad(format!("row {seq} is empty")));
        }
        if line.iter().any(|&b| b == b'\n' || b == b'\r') {
            return Err(bad(format!(
                "row {seq} contains a raw line break; NDJSON needs one JSON text per line"
            )));
        }
        if last_seq.is_some_and(|l| seq <= l) {
            return Err(bad(format!(
                "rows out of order: {seq} after {}",
                last_seq.unwrap_or_default()
            )));
        }
        last_seq = Some(seq);
        let len = line.len() + 1;
        if len > limits.max_uncompressed_bytes {
            return Err(bad(format!(
                "row {seq} is {len} bytes, over the {}-byte batch budget",
                limits.max_uncompressed_bytes
            )));
        }
        if !group.is_empty()
            && (group_len + len > limits.max_uncompressed_bytes || group.len() >= limits.max_rows)
        {
            emit(&group, encoding, limits, append_ts_ms, &mut batches)?;
            group.clear();
            group_len = 0;
        }
        group.push((seq, line));
        group_len += len;
    }
    if !group.is_empty() {
        emit(&group, encoding, limits, append_ts_ms, &mut batches)?;
    }
    Ok(batches)
}

/// Compresses `rows` as one batch, halving until each part fits the wire limit.
fn emit(
    rows: &[(u64, &[u8])],
    encoding: ContentEncoding,
    limits: BatchLimits,
    append_ts_ms: u64,
    out: &mut Vec<Batch>,
) -> Result<(), SnowpipeError> {
    let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
        return Ok(());
    };
    let mut ndjson = Vec::with_capacity(rows.iter().map(|(_, l)| l.len() + 1).sum());
    for (_, line) in rows {
        ndjson.extend_from_slice(line);
        ndjson.push(b'\n');
    }
    let body = compress(&ndjson, encoding)?;
    if body.len() <= limits.max_wire_bytes {
        out.push(Batch {
            start_seq: first.0,
            end_seq: last.0,
            rows: rows.len(),
            body,
            uncompressed_len: ndjson.len(),
            encoding,
            min_append_ts_ms: append_ts_ms,
        });
        return Ok(());
    }
    if rows.len() == 1 {
        return Err(SnowpipeError::Batch {
            message: format!(
                "row {} is {} bytes on the wire, over the {}-byte request limit",
                first.0,
                body.len(),
                limits.max_wire_bytes
            ),
        });
    }
    let (a, b) = rows.split_at(rows.len() / 2);
    emit(a, encoding, limits, append_ts_ms, out)?;
    emit(b, encoding, limits, append_ts_ms, out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::io::Read;

    fn decompress(b: &Batch) -> Vec<u8> {
        match b.encoding {
            ContentEncoding::Identity => b.body.clone(),
            ContentEncoding::Zstd => zstd::stream::decode_all(b.body.as_slice()).unwrap(),
            ContentEncoding::Gzip => {
                let mut out = Vec::new();
                flate2::read::GzDecoder::new(b.body.as_slice())
                    .read_to_end(&mut out)
                    .unwrap();
                out
            }
        }
    }

    fn row(seq: u64, pad: usize) -> Vec<u8> {
        format!(
            r#"{{"gateway_id":"gw-01","seq":{seq},"badge_id":"B-{seq}","pad":"{}"}}"#,
            "x".repeat(pad)
        )
        .into_bytes()
    }

    /// Pseudo-random printable padding that compresses poorly.
    fn noisy_row(seq: u64, len: usize) -> Vec<u8> {
        let mut x = seq
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let pad: String = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (b'!' + (x % 90) as u8) as char
            })
            .filter(|c| *c != '"' && *c != '\\')
            .collect();
        format!(r#"{{"seq":{seq},"pad":"{pad}"}}"#).into_bytes()
    }

    /// Every row exactly once, in order, and every batch within limits.
    fn check(rows: &[(u64, Vec<u8>)], batches: &[Batch], limits: BatchLimits) {
        let mut got: Vec<(u64, Vec<u8>)> = Vec::new();
        for b in batches {
            assert!(b.body.len() <= limits.max_wire_bytes, "{b:?}");
            assert!(b.uncompressed_len <= limits.max_uncompressed_bytes, "{b:?}");
            assert!(b.rows <= limits.max_rows);
            let plain = decompress(b);
            assert_eq!(plain.len(), b.uncompressed_len);
            assert!(plain.ends_with(b"\n"));
            let lines: Vec<&[u8]> = plain[..plain.len() - 1].split(|&c| c == b'\n').collect();
            assert_eq!(lines.len(), b.rows);
            for line in lines {
                let v: serde_json::Value = serde_json::from_slice(line).unwrap();
                got.push((v["seq"].as_u64().unwrap(), line.to_vec()));
            }
            assert_eq!(got[got.len() - b.rows].0, b.start_seq);
            assert_eq!(got.last().unwrap().0, b.end_seq);
            assert_eq!(b.start_offset_token(), b.start_seq.to_string());
        }
        assert_eq!(&got, rows, "rows lost, duplicated or reordered");
        for w in batches.windows(2) {
            assert!(w[1].start_seq > w[0].end_seq);
        }
    }

    fn refs(rows: &[(u64, Vec<u8>)]) -> impl Iterator<Item = (u64, &[u8])> {
        rows.iter().map(|(s, l)| (*s, l.as_slice()))
    }

    #[test]
    fn small_limits_all_encodings() {
        let rows: Vec<(u64, Vec<u8>)> = (1..=500)
            .map(|s| (s, row(s, (s % 37) as usize * 10)))
            .collect();
        for enc in [
            ContentEncoding::Zstd,
            ContentEncoding::Gzip,
            ContentEncoding::Identity,
        ] {
            let limits = BatchLimits {
                max_uncompressed_bytes: 8 * 1024,
                max_wire_bytes: 4 * 1024,
                max_rows: 1000,
            };
            let batches = split_into_batches(refs(&rows), enc, limits, 7).unwrap();
            assert!(batches.len() > 1, "{enc:?}");
            check(&rows, &batches, limits);
            assert!(batches
                .iter()
                .all(|b| b.min_append_ts_ms == 7 && b.encoding == enc));
        }
    }

    #[test]
    fn max_rows_respected_and_single_batch_when_small() {
        let rows: Vec<(u64, Vec<u8>)> = (10..35).map(|s| (s, row(s, 5))).collect();
        let limits = BatchLimits {
            max_rows: 10,
            ..BatchLimits::default()
        };
        let b = split_into_batches(refs(&rows), ContentEncoding::Zstd, limits, 0).unwrap();
        assert_eq!(
            b.iter().map(|b| b.rows).collect::<Vec<_>>(),
            vec![10, 10, 5]
        );
        check(&rows, &b, limits);
        let b = split_into_batches(
            refs(&rows),
            ContentEncoding::Zstd,
            BatchLimits::default(),
            0,
        )
        .unwrap();
        assert_eq!(b.len(), 1);
        assert_eq!((b[0].start_seq, b[0].end_seq), (10, 34));
        assert!(
            split_into_batches(std::iter::empty(), ContentEncoding::Zstd, limits, 0)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn incompressible_rows_are_split_after_compression() {
        // Uncompressed budget allows everything, the wire limit does not: the post-compression
        // check must split.
        let rows: Vec<(u64, Vec<u8>)> = (1..=64).map(|s| (s, noisy_row(s, 1000))).collect();
        let limits = BatchLimits {
            max_uncompressed_bytes: 1 << 20,
            max_wire_bytes: 10_000,
            max_rows: 10_000,
        };
        for enc in [
            ContentEncoding::Zstd,
            ContentEncoding::Gzip,
            ContentEncoding::Identity,
        ] {
            let b = split_into_batches(refs(&rows), enc, limits, 0).unwrap();
            assert!(b.len() >= 6, "{enc:?}: {}", b.len());
            check(&rows, &b, limits);
        }
    }

    #[test]
    fn real_limits_four_megabytes() {
        // ~9.6 MB of noisy JSON with zstd at the production limits.
        let rows: Vec<(u64, Vec<u8>)> = (1..=2_400).map(|s| (s, noisy_row(s, 4000))).collect();
        let limits = BatchLimits::default();
        let b = split_into_batches(refs(&rows), ContentEncoding::Zstd, limits, 0).unwrap();
        assert!(b.len() >= 3);
        check(&rows, &b, limits);
        assert!(b.iter().all(|b| b.body.len() <= 4_000_000));
    }

    #[test]
    fn bad_input_is_refused() {
        let limits = BatchLimits {
            max_uncompressed_bytes: 100,
            max_wire_bytes: 100,
            max_rows: 10,
        };
        let ok = row(1, 0);
        let cases: Vec<Vec<(u64, Vec<u8>)>> = vec![
            vec![(2, ok.clone()), (1, ok.clone())],
            vec![(1, ok.clone()), (1, ok.clone())],
            vec![(1, b"{\"a\":1}\n{\"b\":2}".to_vec())],
            vec![(1, b"".to_vec())],
            vec![(1, b"\n".to_vec())],
            vec![(1, noisy_row(1, 200))],
        ];
        for rows in cases {
            let err =
                split_into_batches(refs(&rows), ContentEncoding::Zstd, limits, 0).unwrap_err();
            assert!(matches!(err, SnowpipeError::Batch { .. }), "{err}");
        }
        // Over the wire limit only after "compression" (identity, budget larger than wire limit).
        let limits = BatchLimits {
            max_uncompressed_bytes: 1000,
            max_wire_bytes: 50,
            max_rows: 10,
        };
        let rows = vec![(1, noisy_row(1, 100))];
        assert!(split_into_batches(refs(&rows), ContentEncoding::Identity, limits, 0).is_err());
        // Trailing newlines are normalised, not doubled.
        let rows = vec![
            (1u64, b"{\"a\":1}\n".to_vec()),
            (2, b"{\"a\":2}\r\n".to_vec()),
        ];
        let b = split_into_batches(
            refs(&rows),
            ContentEncoding::Identity,
            BatchLimits::default(),
            0,
        )
        .unwrap();
        assert_eq!(b[0].body, b"{\"a\":1}\n{\"a\":2}\n");
    }
}
