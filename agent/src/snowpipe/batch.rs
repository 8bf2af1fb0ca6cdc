//! The one owner of "rows → append requests within the limits": rows (already-serialised JSON
//! lines with their sequence numbers) become request bodies that stay under Snowflake's 4 MB
//! per-request limit *as sent*, i.e. after compression. Pure apart from the compressors. The
//! drain, the client's [`SnowpipeClient::batches`](super::SnowpipeClient::batches) and the
//! benchmarks all cut requests here; nothing else knows the limit.
//!
//! Strategy: fill a request up to an uncompressed budget derived from the encoding (see
//! [`BatchLimits::for_encoding`]), compress it, and if the body is still over the wire limit
//! (incompressible data), halve the rows until it fits. The rest goes into the next request.

use std::io::Write;

use super::error::SnowpipeError;
use super::protocol::ContentEncoding;

/// Snowflake's per-request limit on the body as received, in bytes (4 MB, read as decimal: the
/// conservative reading; the service and the official client accept 4 MiB).
pub const MAX_REQUEST_BYTES: usize = 4_000_000;
/// Uncompressed budget of a compressed request: the official client's 4 MiB batch capacity,
/// which zstd and gzip shrink well below [`MAX_REQUEST_BYTES`] for JSON rows.
pub const COMPRESSED_BATCH_BUDGET: usize = 4 * 1024 * 1024;

/// Size limits of one append request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Upper bound of the NDJSON (uncompressed) size of one request.
    pub max_uncompressed_bytes: usize,
    /// Upper bound of the body as sent (after compression).
    pub max_wire_bytes: usize,
    /// Upper bound of rows per request.
    pub max_rows: usize,
}

impl BatchLimits {
    /// The production limits for `encoding`: without compression the NDJSON *is* the body, so
    /// its budget is the request limit itself; compressed bodies get the 4 MiB budget and the
    /// post-compression check.
    pub fn for_encoding(encoding: ContentEncoding) -> Self {
        BatchLimits {
            max_uncompressed_bytes: match encoding {
                ContentEncoding::Identity => MAX_REQUEST_BYTES,
                ContentEncoding::Zstd | ContentEncoding::Gzip => COMPRESSED_BATCH_BUDGET,
            },
            max_wire_bytes: MAX_REQUEST_BYTES,
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
fn compress(ndjson: &[u8], encoding: ContentEncoding) -> Result<Vec<u8>, SnowpipeError> {
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

/// The first request of `rows` — `(seq, JSON line)` in strictly increasing `seq` order, at least
/// one: as many leading rows as fit `limits` after compression with `encoding`. The caller sends
/// it and continues with `rows[batch.rows..]`.
///
/// A trailing `\n` (or `\r\n`) on a line is accepted and normalised; an embedded line break, an
/// empty line, out-of-order sequence numbers, or a single row that cannot fit on its own is an
/// error (the caller must not silently drop a swipe).
pub fn first_batch(
    rows: &[(u64, &[u8])],
    encoding: ContentEncoding,
    limits: BatchLimits,
    append_ts_ms: u64,
) -> Result<Batch, SnowpipeError> {
    let bad = |message: String| SnowpipeError::Batch { message };
    // Greedy fill up to the uncompressed budget, checking each row taken.
    let mut take = 0usize;
    let mut len = 0usize;
    let mut last_seq: Option<u64> = None;
    for &(seq, raw) in rows.iter().take(limits.max_rows.max(1)) {
        let line = line_of(raw);
        if line.is_empty() {
            return Err(bad(format!("row {seq} is empty")));
        }
        if line.iter().any(|&b| b == b'\n' || b == b'\r') {
            return Err(bad(format!(
                "row {seq} contains a raw line break; NDJSON needs one JSON text per line"
            )));
        }
        if let Some(last) = last_seq.filter(|&l| seq <= l) {
            return Err(bad(format!("rows out of order: {seq} after {last}")));
        }
        let row_len = line.len() + 1;
        if len + row_len > limits.max_uncompressed_bytes {
            if take == 0 {
                return Err(bad(format!(
                    "row {seq} is {row_len} bytes, over the {}-byte request budget",
                    limits.max_uncompressed_bytes
                )));
            }
            break;
        }
        last_seq = Some(seq);
        len += row_len;
        take += 1;
    }
    if take == 0 {
        return Err(bad("no rows to send".into()));
    }
    // Compress; halve until the body fits the wire limit.
    let mut ndjson = Vec::with_capacity(len);
    loop {
        let part = &rows[..take];
        ndjson.clear();
        for (_, raw) in part {
            ndjson.extend_from_slice(line_of(raw));
            ndjson.push(b'\n');
        }
        let body = compress(&ndjson, encoding)?;
        if body.len() <= limits.max_wire_bytes {
            return Ok(Batch {
                start_seq: part[0].0,
                end_seq: part[take - 1].0,
                rows: take,
                body,
                uncompressed_len: ndjson.len(),
                encoding,
                min_append_ts_ms: append_ts_ms,
            });
        }
        if take == 1 {
            return Err(bad(format!(
                "row {} is {} bytes on the wire, over the {}-byte request limit",
                part[0].0,
                body.len(),
                limits.max_wire_bytes
            )));
        }
        take /= 2;
    }
}

/// Splits all of `rows` into requests, in order, with [`first_batch`]: every row lands in
/// exactly one request.
pub fn split_into_batches<'a, I>(
    rows: I,
    encoding: ContentEncoding,
    limits: BatchLimits,
    append_ts_ms: u64,
) -> Result<Vec<Batch>, SnowpipeError>
where
    I: IntoIterator<Item = (u64, &'a [u8])>,
{
    let rows: Vec<(u64, &[u8])> = rows.into_iter().collect();
    let mut rest = rows.as_slice();
    let mut batches = Vec::new();
    while let Some(&(first, _)) = rest.first() {
        if let Some(prev) = batches.last().map(|b: &Batch| b.end_seq) {
            if first <= prev {
                return Err(SnowpipeError::Batch {
                    message: format!("rows out of order: {first} after {prev}"),
                });
            }
        }
        let batch = first_batch(rest, encoding, limits, append_ts_ms)?;
        rest = &rest[batch.rows..];
        batches.push(batch);
    }
    Ok(batches)
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
            ..BatchLimits::for_encoding(ContentEncoding::Zstd)
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
            BatchLimits::for_encoding(ContentEncoding::Zstd),
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
        let limits = BatchLimits::for_encoding(ContentEncoding::Zstd);
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
            BatchLimits::for_encoding(ContentEncoding::Zstd),
            0,
        )
        .unwrap();
        assert_eq!(b[0].body, b"{\"a\":1}\n{\"a\":2}\n");
    }

    #[test]
    fn limits_follow_the_encoding() {
        for enc in [ContentEncoding::Zstd, ContentEncoding::Gzip] {
            let l = BatchLimits::for_encoding(enc);
            assert_eq!(
                (l.max_uncompressed_bytes, l.max_wire_bytes),
                (4_194_304, 4_000_000)
            );
        }
        let l = BatchLimits::for_encoding(ContentEncoding::Identity);
        assert_eq!(
            (l.max_uncompressed_bytes, l.max_wire_bytes),
            (4_000_000, 4_000_000)
        );
        // 6 MB of uncompressed rows: every request within 4,000,000 bytes as sent, nearly full.
        let rows: Vec<(u64, Vec<u8>)> = (1..=4_000).map(|s| (s, row(s, 1_450))).collect();
        let b = split_into_batches(refs(&rows), ContentEncoding::Identity, l, 0).unwrap();
        check(&rows, &b, l);
        assert_eq!(b.len(), 2);
        assert!(b[0].body.len() > 3_990_000, "{:?}", b[0]);
    }

    #[test]
    fn first_batch_takes_the_longest_prefix_that_fits() {
        let rows: Vec<(u64, Vec<u8>)> = (1..=10).map(|s| (s, row(s, 50))).collect();
        let len = rows[0].1.len() + 1;
        let refs: Vec<(u64, &[u8])> = refs(&rows).collect();
        let limits = BatchLimits {
            max_uncompressed_bytes: 3 * len + 1,
            max_wire_bytes: 1 << 20,
            max_rows: 100,
        };
        let b = first_batch(&refs, ContentEncoding::Identity, limits, 0).unwrap();
        assert_eq!((b.start_seq, b.end_seq, b.rows), (1, 3, 3));
        let b = first_batch(&refs[3..], ContentEncoding::Identity, limits, 0).unwrap();
        assert_eq!((b.start_seq, b.end_seq), (4, 6));
        // The wire limit halves the prefix: 3 rows do not fit, 1 does.
        let tight = BatchLimits {
            max_wire_bytes: 2 * len - 1,
            ..limits
        };
        let b = first_batch(&refs, ContentEncoding::Identity, tight, 0).unwrap();
        assert_eq!((b.start_seq, b.end_seq), (1, 1));
        assert!(first_batch(&[], ContentEncoding::Identity, limits, 0).is_err());
    }
}
