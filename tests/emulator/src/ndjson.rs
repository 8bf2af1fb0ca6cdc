//! Request-body decoding (Content-Encoding) and NDJSON row parsing, the ON_ERROR=CONTINUE way.

use std::io::Read;

use serde_json::{Map, Value};

/// The per-request wire limit of Snowpipe Streaming appends: 4 MB as received (after compression).
pub const MAX_WIRE_BODY: usize = 4 * 1024 * 1024;

/// Cap on the decompressed size, so a hostile "zip bomb" cannot exhaust memory.
pub const MAX_DECODED_BODY: usize = 64 * 1024 * 1024;

/// Why a body could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BodyError {
    /// The `Content-Encoding` is neither identity, gzip nor zstd.
    #[error("unsupported Content-Encoding {0:?}")]
    UnsupportedEncoding(String),
    /// The compressed stream is corrupt.
    #[error("body could not be decompressed: {0}")]
    Corrupt(String),
    /// The decompressed body exceeds [`MAX_DECODED_BODY`].
    #[error("decompressed body exceeds {MAX_DECODED_BODY} bytes")]
    TooLarge,
}

/// Decodes a request body according to its `Content-Encoding` header (absent = identity).
pub fn decode_body(encoding: Option<&str>, body: &[u8]) -> Result<Vec<u8>, BodyError> {
    let enc = encoding
        .map(|e| e.trim().to_ascii_lowercase())
        .unwrap_or_default();
    match enc.as_str() {
        "" | "identity" => Ok(body.to_vec()),
        "gzip" | "x-gzip" => read_capped(flate2::read::MultiGzDecoder::new(body)),
        "zstd" => {
            let dec = zstd::stream::read::Decoder::new(body)
                .map_err(|e| BodyError::Corrupt(e.to_string()))?;
            read_capped(dec)
        }
        other => Err(BodyError::UnsupportedEncoding(other.to_string())),
    }
}

fn read_capped<R: Read>(r: R) -> Result<Vec<u8>, BodyError> {
    let mut out = Vec::new();
    r.take(MAX_DECODED_BODY as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| BodyError::Corrupt(e.to_string()))?;
    if out.len() > MAX_DECODED_BODY {
        return Err(BodyError::TooLarge);
    }
    Ok(out)
}

/// A row that was rejected (skipped) while parsing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError {
    /// 1-based index of the non-blank line within the batch.
    pub row_number: usize,
    /// Human-readable reason, reported as `last_error_message`.
    pub message: String,
}

/// The outcome of parsing one NDJSON batch.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ParsedRows {
    /// Rows that are JSON objects, in order.
    pub rows: Vec<Map<String, Value>>,
    /// Rows that were skipped (not JSON, or not an object).
    pub errors: Vec<RowError>,
}

impl ParsedRows {
    /// Number of non-blank lines seen (valid + invalid).
    pub fn parsed(&self) -> usize {
        self.rows.len() + self.errors.len()
    }
}

/// Parses NDJSON: one JSON object per line, `\n` separated, optional `\r` before it, blank lines
/// ignored (the official client separates coalesced appends with an empty line). Never panics.
pub fn parse_ndjson(body: &[u8]) -> ParsedRows {
    let mut out = ParsedRows::default();
    let mut n = 0usize;
    for line in body.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        n += 1;
        match serde_json::from_slice::<Value>(line) {
            Ok(Value::Object(map)) => out.rows.push(map),
            Ok(other) => out.errors.push(RowError {
                row_number: n,
                message: format!("Row {n}: expected a JSON object, got {}", json_kind(&other)),
            }),
            Err(e) => out.errors.push(RowError {
                row_number: n,
                message: format!("Row {n}: invalid JSON: {e}"),
            }),
        }
    }
    out
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::io::Write;

    #[test]
    fn blank_lines_and_crlf_are_tolerated() {
        let body = b"{\"a\":1}\r\n\n{\"a\":2}\n\r\n  \n{\"a\":3}";
        let p = parse_ndjson(body);
        assert_eq!(p.rows.len(), 3);
        assert!(p.errors.is_empty());
        assert_eq!(p.rows[2]["a"], 3);
    }

    #[test]
    fn client_coalesced_form() {
        let p = parse_ndjson(b"{\"b\":\"B-1\"}\n\n{\"b\":\"B-2\"}\n{\"b\":\"B-3\"}\n\n");
        assert_eq!(p.rows.len(), 3);
        assert_eq!(p.parsed(), 3);
    }

    #[test]
    fn bad_rows_are_reported_not_fatal() {
        let p = parse_ndjson(b"{\"a\":1}\n[1,2]\nnot json\n42\n{\"a\":2}\n");
        assert_eq!(p.rows.len(), 2);
        assert_eq!(p.errors.len(), 3);
        assert_eq!(p.errors[0].row_number, 2);
        assert!(
            p.errors[0].message.contains("array"),
            "{}",
            p.errors[0].message
        );
        assert!(p.errors[1].message.contains("invalid JSON"));
        assert_eq!(p.parsed(), 5);
    }

    #[test]
    fn hostile_bytes_do_not_panic() {
        let inputs: Vec<Vec<u8>> = vec![
            vec![0xff, 0xfe, b'\n', 0x00],
            b"{\"a\":".to_vec(),
            vec![b'['; 10_000],
            b"\r\r\r\n\r".to_vec(),
            (0u8..=255).collect(),
        ];
        for i in inputs {
            let p = parse_ndjson(&i);
            assert!(p.rows.is_empty());
        }
    }

    #[test]
    fn encodings_roundtrip() {
        let raw = b"{\"x\":1}\n".repeat(100);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&raw).unwrap();
        let gz = gz.finish().unwrap();
        assert_eq!(decode_body(Some("gzip"), &gz).unwrap(), raw);
        let z = zstd::encode_all(&raw[..], 3).unwrap();
        assert_eq!(decode_body(Some("ZSTD"), &z).unwrap(), raw);
        assert_eq!(decode_body(None, &raw).unwrap(), raw);
        assert_eq!(decode_body(Some("identity"), &raw).unwrap(), raw);
        assert!(matches!(
            decode_body(Some("br"), &raw),
            Err(BodyError::UnsupportedEncoding(_))
        ));
        assert!(matches!(
            decode_body(Some("zstd"), b"garbage"),
            Err(BodyError::Corrupt(_))
        ));
        assert!(matches!(
            decode_body(Some("gzip"), b"garbage"),
            Err(BodyError::Corrupt(_))
        ));
    }

    #[test]
    fn zip_bomb_is_capped() {
        let zeros = vec![0u8; MAX_DECODED_BODY + 10];
        let z = zstd::encode_all(&zeros[..], 1).unwrap();
        assert!(z.len() < MAX_WIRE_BODY);
        assert_eq!(decode_body(Some("zstd"), &z), Err(BodyError::TooLarge));
    }
}
