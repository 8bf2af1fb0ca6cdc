//! `badge-agent decode`: decode Wiegand bits or serial reader bytes offline and print JSON, so a
//! technician can check a capture without a running agent. An invalid frame prints the reason
//! (parity, checksum, "D0/D1 probably swapped", …) and exits with a non-zero code.

use std::process::ExitCode;

use anyhow::{bail, Context};
use reader_protocol::serial::{
    Em4100Framer, Em4100Framing, Framer, LineConfig, LineReader, Radix, SerialError, Terminator,
};
use reader_protocol::wiegand::{self, FormatChoice};
use reader_protocol::Bits;
use serde_json::{json, Value};

/// Arguments of `badge-agent decode`.
#[derive(Debug, clap::Args)]
pub struct DecodeArgs {
    /// What to decode.
    #[command(subcommand)]
    pub what: DecodeWhat,
}

/// Inputs `decode` understands.
#[derive(Debug, clap::Subcommand)]
pub enum DecodeWhat {
    /// A Wiegand frame given as 0/1 characters, bit 1 (first on the wire) first.
    Wiegand {
        /// The bits, e.g. 10111101100010001110101110 (`_` and spaces are ignored).
        bits: String,
        /// Card format: auto, raw, h10301, h10302, h10304, h10306, c1k35, c1k48, c15001, d10202.
        #[arg(long, short, default_value = "auto")]
        format: String,
    },
    /// One OSDP packet given as hex (a bus capture), e.g. "53 81 0e 00 06 50 …". Secure packets
    /// show as such; their encrypted payload cannot be read without the session keys.
    Osdp {
        /// The bytes in hex (spaces, commas and 0x prefixes are accepted).
        #[arg(required = true, num_args = 1..)]
        hex: Vec<String>,
    },
    /// Serial reader bytes given as hex, e.g. "02 33 43 30 ... 03" or 0233433030…03.
    Serial {
        /// The bytes in hex (spaces, commas and 0x prefixes are accepted).
        #[arg(required = true, num_args = 1..)]
        hex: Vec<String>,
        /// How the reader frames its output.
        #[arg(long, value_enum)]
        framing: Framing,
        /// Line reader: what ends a line.
        #[arg(long, value_enum, default_value_t = TerminatorArg::Cr)]
        terminator: TerminatorArg,
        /// Line reader: lines start with STX (0x02).
        #[arg(long)]
        stx: bool,
        /// Line reader: digits are hex or decimal.
        #[arg(long, value_enum, default_value_t = RadixArg::Hex)]
        radix: RadixArg,
        /// Line reader: characters to skip at the start of each line.
        #[arg(long, default_value_t = 0)]
        skip: u8,
        /// Line reader: characters to take after the skipped ones (default: the rest).
        #[arg(long)]
        take: Option<u8>,
        /// Line reader, hex: the line carries a Wiegand frame of this many bits.
        #[arg(long)]
        frame_bits: Option<u8>,
        /// Line reader, with --frame-bits: decode the frame with this Wiegand format.
        #[arg(long)]
        format: Option<String>,
        /// Line reader: longest accepted line in bytes (at most 64).
        #[arg(long, default_value_t = 64)]
        max_len: u16,
    },
}

/// Serial framings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Framing {
    /// RDM6300 / EM4100 modules: 14-byte ASCII-checksum and 13-byte binary-checksum frames.
    Rdm6300,
    /// ID Innovations ID-12LA / ID-20LA: 16-byte frames with CR LF.
    Id12,
    /// Configurable line reader (converters, ASCII readers).
    Line,
}

/// Line terminators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TerminatorArg {
    /// Carriage return.
    Cr,
    /// Line feed.
    Lf,
    /// CR LF.
    Crlf,
    /// ETX (0x03).
    Etx,
}

/// Digit radix of a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RadixArg {
    /// Hexadecimal.
    Hex,
    /// Decimal.
    Dec,
}

/// What a decode produced: the JSON to print and, for invalid input, why.
#[derive(Debug)]
struct Outcome {
    json: Value,
    error: Option<String>,
}

/// Runs the subcommand: prints JSON on stdout; an invalid frame is also an error (exit ≠ 0).
pub fn run(args: &DecodeArgs) -> anyhow::Result<ExitCode> {
    let outcome = decode(&args.what)?;
    println!("{}", serde_json::to_string_pretty(&outcome.json)?);
    match outcome.error {
        Some(reason) => bail!("invalid frame: {reason}"),
        None => Ok(ExitCode::SUCCESS),
    }
}

fn decode(what: &DecodeWhat) -> anyhow::Result<Outcome> {
    match what {
        DecodeWhat::Wiegand { bits, format } => {
            let choice: FormatChoice = format
                .parse()
                .with_context(|| format!("--format {format:?}"))?;
            let bits = Bits::from_bit_str(bits).context("Wiegand bits")?;
            Ok(decode_wiegand(bits, choice))
        }
        DecodeWhat::Osdp { hex } => Ok(decode_osdp(&parse_hex(hex)?)),
        DecodeWhat::Serial {
            hex,
            framing,
            terminator,
            stx,
            radix,
            skip,
            take,
            frame_bits,
            format,
            max_len,
        } => {
            let bytes = parse_hex(hex)?;
            match framing {
                Framing::Rdm6300 | Framing::Id12 => {
                    let framing = if *framing == Framing::Id12 {
                        Em4100Framing::Id12
                    } else {
                        Em4100Framing::Rdm6300
                    };
                    let framer = Em4100Framer::new(framing);
                    Ok(decode_serial(framer, &bytes, "em4100", |r| {
                        let mut v = serde_json::to_value(r.credential())?;
                        merge(&mut v, serde_json::to_value(r)?);
                        Ok(v)
                    }))
                }
                Framing::Line => {
                    let choice = match format {
                        Some(f) => Some(
                            f.parse::<FormatChoice>()
                                .with_context(|| format!("--format {f:?}"))?,
                        ),
                        None => None,
                    };
                    let config = LineConfig {
                        terminator: match terminator {
                            TerminatorArg::Cr => Terminator::Cr,
                            TerminatorArg::Lf => Terminator::Lf,
                            TerminatorArg::Crlf => Terminator::CrLf,
                            TerminatorArg::Etx => Terminator::Etx,
                        },
                        stx: *stx,
                        skip: *skip,
                        take: *take,
                        radix: match radix {
                            RadixArg::Hex => Radix::Hex,
                            RadixArg::Dec => Radix::Decimal,
                        },
                        frame_bits: *frame_bits,
                        format: choice,
                        max_len: *max_len,
                        inter_byte_timeout_ns: Some(100_000_000),
                    };
                    Ok(decode_serial(
                        LineReader::new(config),
                        &bytes,
                        "line",
                        |r| {
                            let mut v = serde_json::to_value(r.credential())?;
                            merge(&mut v, json!({ "digits": r.digits }));
                            Ok(v)
                        },
                    ))
                }
            }
        }
    }
}

/// Describes one OSDP packet (plain, handshake or secure).
fn decode_osdp(bytes: &[u8]) -> Outcome {
    use reader_protocol::osdp::describe_packet;
    match describe_packet(bytes) {
        Ok(p) => Outcome {
            json: json!({
                "input": { "kind": "osdp", "bytes": bytes.len() },
                "direction": if p.is_reply { "reply" } else { "command" },
                "address": p.address,
                "sqn": p.sqn,
                "check": p.check,
                "secure": p.scs.is_some_and(|s| s >= 0x15),
                "security_block": p.scs.map(|s| format!("SCS_{s:02X}")),
                "code": format!("0x{:02X}", p.code),
                "name": p.name,
                "data": p.data.iter().map(|b| format!("{b:02x}")).collect::<String>(),
                "meaning": p.meaning,
                "summary": p.to_string(),
            }),
            error: None,
        },
        Err(e) => Outcome {
            json: json!({ "input": { "kind": "osdp", "bytes": bytes.len() }, "valid": false, "error": e.to_string() }),
            error: Some(e.to_string()),
        },
    }
}

/// Decodes one Wiegand frame with the given setting, listing every matching format too.
fn decode_wiegand(bits: Bits, choice: FormatChoice) -> Outcome {
    let input = json!({
        "bits": bits.bit_string().to_string(),
        "bit_count": bits.len(),
        "raw_bits": bits.hex().to_string(),
        "format_setting": choice.to_string(),
        "matching_formats": wiegand::matching_formats(bits).map(|f| f.name()).collect::<Vec<_>>(),
    });
    match wiegand::decode(choice, bits) {
        Ok(cred) => {
            let mut v = json!({ "valid": true, "event_type": "card" });
            merge(&mut v, input);
            if let Ok(c) = serde_json::to_value(cred) {
                merge(&mut v, c);
            }
            Outcome {
                json: v,
                error: None,
            }
        }
        Err(err) => {
            let reason = err.to_string();
            let mut v = json!({
                "valid": false,
                "error": reason,
                "probably_swapped": err.probably_swapped(),
            });
            merge(&mut v, input);
            if err.probably_swapped() {
                // Show what the frame would be with D0/D1 swapped back.
                if let Ok(c) = wiegand::decode(choice, bits.complement()) {
                    if let Ok(c) = serde_json::to_value(c) {
                        v["if_swapped"] = c;
                    }
                }
            }
            Outcome {
                json: v,
                error: Some(reason),
            }
        }
    }
}

/// Feeds all bytes, then expires a trailing partial frame, collecting frames and faults.
fn decode_serial<F: Framer>(
    mut framer: F,
    bytes: &[u8],
    kind: &str,
    to_json: impl Fn(&F::Output) -> anyhow::Result<Value>,
) -> Outcome {
    let mut results: Vec<Result<F::Output, SerialError>> = framer.feed(bytes, 0).collect();
    results.extend(framer.flush(u64::MAX));
    let mut frames = Vec::new();
    let mut errors = Vec::new();
    for r in results {
        match r.map_err(anyhow::Error::new).and_then(|o| to_json(&o)) {
            Ok(v) => frames.push(v),
            Err(e) => errors.push(e.to_string()),
        }
    }
    let error = if frames.is_empty() && errors.is_empty() {
        Some("no complete frame in the input".to_owned())
    } else if errors.is_empty() {
        None
    } else {
        Some(errors.join("; "))
    };
    Outcome {
        json: json!({
            "framing": kind,
            "bytes": bytes.len(),
            "valid": error.is_none(),
            "frames": frames,
            "errors": errors,
        }),
        error,
    }
}

/// Copies the fields of `extra` (an object) into `v` (an object).
fn merge(v: &mut Value, extra: Value) {
    if let (Some(dst), Value::Object(src)) = (v.as_object_mut(), extra) {
        dst.extend(src);
    }
}

/// Parses hex bytes: tokens separated by spaces or commas, optional `0x`, pairs of digits.
fn parse_hex(args: &[String]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    for token in args
        .iter()
        .flat_map(|a| a.split(|c: char| c.is_whitespace() || c == ',' || c == ':'))
        .filter(|t| !t.is_empty())
    {
        let t = token
            .strip_prefix("0x")
            .or_else(|| token.strip_prefix("0X"))
            .unwrap_or(token);
        if !t.len().is_multiple_of(2) {
            bail!("hex token {token:?} has an odd number of digits");
        }
        for i in (0..t.len()).step_by(2) {
            let pair = t.get(i..i + 2).context("hex input must be ASCII")?;
            out.push(
                u8::from_str_radix(pair, 16)
                    .with_context(|| format!("{pair:?} in {token:?} is not a hex byte"))?,
            );
        }
    }
    if out.is_empty() {
        bail!("no bytes given");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct TestCli {
        #[command(subcommand)]
        what: DecodeWhat,
    }

    fn decode_args(args: &[&str]) -> anyhow::Result<Outcome> {
        let cli = TestCli::try_parse_from(std::iter::once("decode").chain(args.iter().copied()))?;
        decode(&cli.what)
    }

    /// Packets built by hand with an independent CRC (poly 0x1021, init 0x1D0F; "123456789" →
    /// 0xE5CC), not by the crate under test.
    #[test]
    fn osdp_plain_reply_decodes_and_a_secure_one_is_shown_as_such() {
        let o = decode_args(&["osdp", "53 85 10 00 07 50 00 01 1a 00 bd 88 eb 80 89 fb"]).unwrap();
        assert!(o.error.is_none(), "{:?}", o.json);
        assert_eq!(o.json["direction"], "reply");
        assert_eq!(o.json["address"], 5);
        assert_eq!(o.json["name"], "osdp_RAW");
        assert_eq!(o.json["secure"], false);
        assert!(
            o.json["meaning"]
                .as_str()
                .unwrap()
                .contains("H10301:123:4567"),
            "{}",
            o.json
        );
        let bad =
            decode_args(&["osdp", "53 85 10 00 07 50 00 01 1a 00 bd 88 eb 80 89 fc"]).unwrap();
        assert!(bad.error.unwrap().contains("CRC"), "{}", bad.json);
        let sec = decode_args(&[
            "osdp",
            "53011e000e021769000102030405060708090a0b0c0d0e0fdeadbeef4d32",
        ])
        .unwrap();
        assert!(sec.error.is_none(), "{:?}", sec.json);
        assert_eq!(sec.json["secure"], true);
        assert_eq!(sec.json["security_block"], "SCS_17");
        assert_eq!(sec.json["name"], "osdp_LED");
        assert_eq!(sec.json["meaning"], "encrypted");
    }

    #[test]
    fn wiegand_w3_auto() {
        let o = decode_args(&["wiegand", "10111101100010001110101110"]).unwrap();
        assert!(o.error.is_none());
        assert_eq!(o.json["credential"], "H10301:123:4567");
        assert_eq!(o.json["format"], "H10301");
        assert_eq!(o.json["facility_code"], 123);
        assert_eq!(o.json["card_number"], 4567);
        assert_eq!(o.json["raw_bits"], "02f623ae");
        assert_eq!(o.json["bit_count"], 26);
    }

    #[test]
    fn wiegand_swapped_is_an_error_with_the_hint() {
        let o = decode_args(&[
            "wiegand",
            "01000010011101110001010001",
            "--format",
            "h10301",
        ])
        .unwrap();
        let e = o.error.unwrap();
        assert!(e.contains("D0/D1 probably swapped"), "{e}");
        assert_eq!(o.json["valid"], false);
        assert_eq!(o.json["if_swapped"]["credential"], "H10301:123:4567");
    }

    #[test]
    fn wiegand_bad_input() {
        assert!(decode_args(&["wiegand", "0120"]).is_err());
        assert!(decode_args(&["wiegand", "0101", "--format", "nope"]).is_err());
        let raw = decode_args(&["wiegand", "0101", "--format", "raw"]).unwrap();
        assert_eq!(raw.json["credential"], "RAW4:5");
    }

    #[test]
    fn serial_rdm6300_and_checksum() {
        let o = decode_args(&[
            "serial",
            "02 33 43 30 30 43 45 37 35 34 43 43 42 03",
            "--framing",
            "rdm6300",
        ])
        .unwrap();
        assert!(o.error.is_none(), "{:?}", o.error);
        let f = &o.json["frames"][0];
        assert_eq!(f["credential"], "EM4100:3c00ce754c");
        assert_eq!(f["em4100"]["printed_8h10d"], "0013530444");
        assert_eq!(f["em4100"]["w26_facility"], 206);
        assert_eq!(f["em4100"]["w26_card"], 30028);

        let bad = decode_args(&[
            "serial",
            "0231343030384543373933434303",
            "--framing",
            "rdm6300",
        ])
        .unwrap();
        assert!(bad.error.unwrap().contains("checksum"));
    }

    #[test]
    fn serial_id12_and_line() {
        let o = decode_args(&[
            "serial",
            "02 33 43 30 30 43 45 37 35 34 43 43 42 0D 0A 03",
            "--framing",
            "id12",
        ])
        .unwrap();
        assert!(o.error.is_none());
        // Priority 1 Design converter: 6 hex digits of the W26 data bits + CR.
        let line = decode_args(&[
            "serial",
            "30 30 31 30 30 41 0d",
            "--framing",
            "line",
            "--radix",
            "dec",
        ])
        .unwrap();
        assert!(line.error.unwrap().contains("decimal"));
        let line =
            decode_args(&["serial", "32 46 36 32 33 41 45 0d", "--framing", "line"]).unwrap();
        assert_eq!(line.json["frames"][0]["credential"], "RAW28:2f623ae");
        let w = decode_args(&[
            "serial",
            "32 46 36 32 33 41 45 0d",
            "--framing",
            "line",
            "--frame-bits",
            "26",
            "--format",
            "h10301",
        ])
        .unwrap();
        assert_eq!(w.json["frames"][0]["credential"], "H10301:123:4567");
        // The same frame with bit 26 flipped fails parity with the reason.
        let bad = decode_args(&[
            "serial",
            "32 46 36 32 33 41 46 0d",
            "--framing",
            "line",
            "--frame-bits",
            "26",
            "--format",
            "h10301",
        ])
        .unwrap();
        assert!(bad.error.unwrap().contains("parity"));
        assert!(decode_args(&["serial", "0", "--framing", "line"]).is_err());
    }
}
