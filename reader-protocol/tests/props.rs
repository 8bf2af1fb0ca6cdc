//! Property tests: encode/decode round trips for every format, and no-panic fuzzing of every
//! decoder (proptest with few cases, plus a deterministic 1,000,000-case xorshift loop).
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use reader_protocol::serial::{
    Em4100Framer, Em4100Framing, Framer, LineConfig, LineReader, Radix, Terminator,
};
use reader_protocol::wiegand::{
    decode, decode_key, decode_pin26_bcd, decode_pin26_binary, matching_formats, AssemblerConfig,
    Edge, EdgeKind, EdgeMode, FieldKind, Format, FormatChoice, KeyMap, KeypadConfig, Line,
    PinCollector, PinConfig, WiegandAssembler, WiegandDecoder, WiegandReaderConfig,
};
use reader_protocol::{Bits, CardFields, CardFormat, Dedup, DedupKey, Source, Verdict};

/// Random field values that fit `format`.
fn fields_for(format: Format) -> impl Strategy<Value = CardFields> {
    let spec = format.spec();
    let width = |kind: FieldKind| spec.fields.iter().find(|f| f.kind == kind).map(|f| f.len);
    let max = |w: Option<u8>| w.map(|w| (1u64 << w) - 1);
    (
        0..=max(width(FieldKind::Oem)).unwrap_or(0),
        0..=max(width(FieldKind::Facility)).unwrap_or(0),
        0..=max(width(FieldKind::CardNumber)).unwrap_or(0),
    )
        .prop_map(move |(o, f, c)| CardFields {
            oem: width(FieldKind::Oem).map(|_| o as u32),
            facility: width(FieldKind::Facility).map(|_| f as u32),
            card_number: Some(c),
        })
}

fn any_format() -> impl Strategy<Value = Format> {
    prop::sample::select(Format::ALL.to_vec())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn encode_decode_round_trip((format, fields) in any_format().prop_flat_map(|f| (Just(f), fields_for(f)))) {
        let bits = format.encode(fields).unwrap();
        prop_assert_eq!(bits.len(), format.bit_len());
        let cred = format.decode(bits).unwrap();
        prop_assert_eq!(cred.fields(), fields);
        prop_assert_eq!(cred.bits(), bits);
        prop_assert_eq!(cred.format(), CardFormat::Wiegand(format));
        // auto finds a format of that length, and this format is among the matches.
        prop_assert!(decode(FormatChoice::Auto, bits).is_ok());
        prop_assert!(matching_formats(bits).any(|m| m == format));
        // The canonical string lists the fields in wire order.
        let canon = cred.canonical().to_string();
        let prefix = format!("{}:", format.name());
        prop_assert!(canon.starts_with(&prefix));
        let suffix = format!(":{}", fields.card_number.unwrap());
        prop_assert!(canon.ends_with(&suffix));
        // Any single bit flip of a parity-covered bit is detected.
        for pos in 0..bits.len() {
            let flipped = Bits::new(bits.value() ^ (1u128 << pos), bits.len()).unwrap();
            prop_assert!(format.decode(flipped).is_err(), "flip at value bit {}", pos);
        }
    }

    #[test]
    fn odd_group_formats_never_pass_when_complemented((format, fields) in prop::sample::select(vec![Format::H10301, Format::H10306, Format::H10302, Format::H10304]).prop_flat_map(|f| (Just(f), fields_for(f)))) {
        let bits = format.encode(fields).unwrap();
        let err = format.decode(bits.complement()).unwrap_err();
        // ...and the swap hint fires because the original passes.
        prop_assert!(err.probably_swapped());
    }

    #[test]
    fn out_of_range_values_are_rejected(format in any_format(), extra in 1u64..1000) {
        let spec = format.spec();
        let cn = spec.fields.iter().find(|f| f.kind == FieldKind::CardNumber).unwrap();
        let fields = CardFields { oem: Some(0), facility: Some(0), card_number: Some((1u64 << cn.len) - 1 + extra) };
        prop_assert!(format.encode(fields).is_err());
    }

    #[test]
    fn fuzz_wiegand_decoders(value in any::<u128>(), len in 0u8..=128) {
        let bits = Bits::new(value & low(len), len).unwrap();
        for choice in [FormatChoice::Auto, FormatChoice::Raw] {
            if let Ok(c) = decode(choice, bits) { prop_assert_eq!(c.bits(), bits); }
        }
        for f in Format::ALL {
            let _ = f.decode(bits);
        }
        let _ = decode_key(bits, KeyMap::default());
        let _ = decode_pin26_binary(bits);
        let _ = decode_pin26_bcd(bits);
    }

    #[test]
    fn fuzz_serial_framers(bytes in prop::collection::vec(prop::sample::select(vec![0x02u8, 0x03, 0x0D, 0x0A, b'0', b'3', b'C', b'E', b'f', b'z', 0xFF]), 0..200)) {
        for framing in [Em4100Framing::Any, Em4100Framing::Rdm6300, Em4100Framing::Id12] {
            let mut f = Em4100Framer::new(framing);
            for r in f.feed(&bytes, 0).flatten() {
                prop_assert_eq!(r.id.credential().bit_count(), 40);
            }
        }
        let mut l = LineReader::new(LineConfig { stx: true, terminator: Terminator::Etx, ..LineConfig::default() });
        let _ = l.feed(&bytes, 0).count();
    }

    #[test]
    fn fuzz_assembler(edges in prop::collection::vec((any::<bool>(), any::<bool>(), 0u64..40_000_000, 0u32..3), 0..300)) {
        let mut asm = WiegandAssembler::new(AssemblerConfig { edges: EdgeMode::Both, ..AssemblerConfig::default() });
        let (mut t, mut seq) = (0u64, 0u32);
        for (d1, falling, dt, skip) in edges {
            t += dt;
            seq = seq.wrapping_add(if skip == 2 { 2 } else { 1 });
            let line = if d1 { Line::D1 } else { Line::D0 };
            let kind = if falling { EdgeKind::Falling } else { EdgeKind::Rising };
            if let Some(Ok(f)) = asm.push(Edge { line, kind, timestamp_ns: t, seqno: seq }) {
                prop_assert!(!f.bits.is_empty());
            }
        }
        let _ = asm.finish();
    }
}

fn low(len: u8) -> u128 {
    if len >= 128 {
        u128::MAX
    } else {
        (1u128 << len) - 1
    }
}

/// xorshift64*: a tiny deterministic PRNG so the big fuzz loop needs no dependency and is
/// reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// Bytes biased towards the framing bytes so framers reach deep states.
    fn byte(&mut self) -> u8 {
        const INTERESTING: &[u8] = b"\x02\x03\x0d\x0a0123456789ABCDEFabcdef U";
        if self.below(4) == 0 {
            self.next() as u8
        } else {
            INTERESTING[self.below(INTERESTING.len() as u64) as usize]
        }
    }
}

/// Total deterministic random cases of the no-panic fuzz, split over the three tests below so
/// they run in parallel: 1,000,000.
const FUZZ_CASES: u64 = 1_000_000;

/// 400,000 cases: Wiegand frames (every format, auto, raw, keypad, PIN modes, the reader
/// decoder) alternating with bit strings, PIN collector keys and dedup observations.
#[test]
fn fuzz_frames_and_misc_without_panic() {
    let (outputs, _) = fuzz(&[0, 4], FUZZ_CASES * 2 / 5, 0x9E37_79B9_7F4A_7C15);
    assert!(outputs > 50_000, "only {outputs} outputs");
}

/// 200,000 edge sequences into the assembler (falling-only and both-edge modes).
#[test]
fn fuzz_edges_without_panic() {
    let (outputs, (frames, glitches)) = fuzz(&[1], FUZZ_CASES / 5, 0xD1B5_4A32_D192_ED03);
    assert!(outputs > 50_000, "only {outputs} outputs");
    assert!(frames > 0 && glitches > 0);
}

/// 400,000 byte strings into the EM4100 framer (three framings) and three line readers.
#[test]
fn fuzz_bytes_without_panic() {
    let (outputs, _) = fuzz(&[2], FUZZ_CASES * 2 / 5, 0x2545_F491_4F6C_DD1D);
    assert!(outputs > 50_000, "only {outputs} outputs");
}

/// Runs `cases` deterministic random cases cycling through `kinds` (0 Wiegand frames, 1 edge
/// sequences, 2 byte strings, 4 bit strings / keys / dedup), feeding each arbitrary input to every
/// decoder of its kind. Nothing may panic and the invariants must hold. Returns the number of
/// decoder outputs and the (valid frames, glitches) counted by the both-edge / falling assemblers.
fn fuzz(kinds: &[u64], cases: u64, seed: u64) -> (u64, (u64, u64)) {
    let mut rng = Rng(seed);
    let mut reader = WiegandDecoder::new(WiegandReaderConfig {
        format: FormatChoice::Auto,
        keypad: Some(KeypadConfig::default()),
    });
    let mut pins = PinCollector::new(PinConfig::default());
    let mut dedup: Dedup = Dedup::default();
    let mut framers = [
        Em4100Framer::new(Em4100Framing::Any),
        Em4100Framer::new(Em4100Framing::Rdm6300),
        Em4100Framer::new(Em4100Framing::Id12),
    ];
    let mut lines = [
        LineReader::new(LineConfig::default()),
        LineReader::new(LineConfig {
            terminator: Terminator::CrLf,
            radix: Radix::Decimal,
            skip: 1,
            max_len: 12,
            ..LineConfig::default()
        }),
        LineReader::new(LineConfig {
            terminator: Terminator::Etx,
            stx: true,
            frame_bits: Some(26),
            ..LineConfig::default()
        }),
    ];
    let mut asm_falling = WiegandAssembler::default();
    let mut asm_both = WiegandAssembler::new(AssemblerConfig {
        edges: EdgeMode::Both,
        ..AssemblerConfig::default()
    });
    let (mut now, mut seq) = (0u64, 0u32);
    let mut buf = Vec::with_capacity(64);
    let mut outputs = 0u64;

    for case in 0..cases {
        now += rng.below(50_000_000);
        match kinds[(case % kinds.len() as u64) as usize] {
            0 => {
                // A Wiegand frame of any length, often one of the table lengths.
                let len = if rng.below(2) == 0 {
                    [4u8, 8, 26, 33, 34, 35, 36, 37, 48][rng.below(9) as usize]
                } else {
                    rng.below(129) as u8
                };
                let v = (u128::from(rng.next()) << 64 | u128::from(rng.next())) & low(len);
                let bits = Bits::new(v, len).unwrap();
                for choice in [FormatChoice::Auto, FormatChoice::Raw] {
                    if let Ok(c) = decode(choice, bits) {
                        assert_eq!(c.bits(), bits);
                        let _ = c.canonical().to_string();
                        outputs += 1;
                    }
                }
                for f in Format::ALL {
                    if let Ok(c) = f.decode(bits) {
                        assert_eq!(f.encode(c.fields()).unwrap(), bits, "{f} {bits:?}");
                    }
                }
                let _ = decode_key(bits, KeyMap::default());
                let _ = decode_pin26_binary(bits);
                let _ = decode_pin26_bcd(bits);
                if let Some(ev) = reader.decode_frame(bits, now) {
                    let _ = ev.detail().map(|d| d.to_string());
                }
                let _ = reader.flush(now);
            }
            1 => {
                // An edge sequence: random lines, directions, gaps (including glitches and
                // end-of-frame silences) and occasional sequence gaps.
                for _ in 0..rng.below(48) {
                    now += match rng.below(4) {
                        0 => rng.below(150_000),
                        1 => rng.below(60_000_000),
                        _ => 500_000 + rng.below(2_000_000),
                    };
                    seq = seq.wrapping_add(if rng.below(64) == 0 { 2 } else { 1 });
                    let line = if rng.below(2) == 0 {
                        Line::D0
                    } else {
                        Line::D1
                    };
                    let kind = if rng.below(2) == 0 {
                        EdgeKind::Falling
                    } else {
                        EdgeKind::Rising
                    };
                    let e = Edge {
                        line,
                        kind,
                        timestamp_ns: now,
                        seqno: seq,
                    };
                    for asm in [&mut asm_falling, &mut asm_both] {
                        if let Some(r) = asm.push(e) {
                            if let Ok(f) = r {
                                assert!(!f.bits.is_empty() && f.first_ns <= f.last_ns);
                            }
                            outputs += 1;
                        }
                        let _ = asm.poll_timeout();
                    }
                }
                if rng.below(2) == 0 {
                    for asm in [&mut asm_falling, &mut asm_both] {
                        if let Some(Ok(f)) = asm.flush(now + 30_000_000) {
                            let _ = reader.decode_frame(f.bits, now);
                        }
                    }
                }
            }
            2 => {
                // An arbitrary byte string, in one or several chunks.
                buf.clear();
                for _ in 0..rng.below(40) {
                    buf.push(rng.byte());
                }
                let split = rng.below(buf.len() as u64 + 1) as usize;
                let (a, b) = buf.split_at(split);
                for f in framers.iter_mut() {
                    for chunk in [a, b] {
                        for r in f.feed(chunk, now) {
                            if let Ok(read) = r {
                                // A frame only comes out with a valid checksum.
                                let id = read.id;
                                assert_eq!(id.checksum(), id.bytes().iter().fold(0, |x, b| x ^ b));
                            }
                            outputs += 1;
                        }
                    }
                    let _ = f.flush(now + rng.below(100_000_000));
                }
                for l in lines.iter_mut() {
                    outputs += l.feed(&buf, now).count() as u64;
                    let _ = l.flush(now + rng.below(200_000_000));
                }
            }
            _ => {
                // Bit strings, keypad keys and dedup observations.
                buf.clear();
                for _ in 0..rng.below(140) {
                    buf.push(b"01_ 2x"[rng.below(6) as usize]);
                }
                let s = String::from_utf8_lossy(&buf);
                if let Ok(b) = Bits::from_bit_str(&s) {
                    assert!(b.len() <= 128);
                }
                if let Ok(b) = Bits::from_msb_bytes(&buf, rng.below(140) as u16) {
                    assert!(b.len() <= 128);
                }
                let key = KeyMap::default().key(rng.below(16) as u8);
                if let Some(Ok(p)) = pins.push(key, now) {
                    assert!(p.len() >= 4 && p.len() <= 8);
                }
                let _ = pins.flush(now);
                let k = DedupKey {
                    source: Source::Serial,
                    bits: Bits::new(u128::from(rng.below(8)), 40).unwrap(),
                };
                let fresh = dedup.observe(k, now);
                if rng.below(1000) == 0 {
                    dedup.prune(now);
                }
                assert!(matches!(fresh, Verdict::Emit | Verdict::Suppress));
            }
        }
    }
    // The callers check that the fuzz exercised the decoders, not just rejected everything.
    (
        outputs,
        (asm_both.stats().frames, asm_falling.stats().glitches),
    )
}
