//! Synthetic edge-timing traces for the Wiegand assembler (`docs/reader-formats.md`, capture).
#![allow(clippy::unwrap_used)]

use reader_protocol::wiegand::{
    decode, AssemblerConfig, Edge, EdgeMode, FormatChoice, FrameError, FrameResult, Key,
    KeypadConfig, Line, WiegandAssembler, WiegandDecoder, WiegandReaderConfig,
};
use reader_protocol::{Bits, ReaderEvent};

const US: u64 = 1_000;
const MS: u64 = 1_000_000;
const W3: &str = "10111101100010001110101110";
const W2: &str = "00101101000000001010001000";

/// Builds edges for `bits` starting at `t0`: each bit is a low pulse of `tpw` on its line, bit
/// starts `tpi` apart. `both` adds the rising edges.
fn trace(bits: &str, t0: u64, tpw: u64, tpi: u64, both: bool, seq: &mut u32) -> Vec<Edge> {
    let mut edges = Vec::new();
    for (i, c) in bits.chars().enumerate() {
        let line = if c == '1' { Line::D1 } else { Line::D0 };
        let t = t0 + i as u64 * tpi;
        edges.push(Edge::falling(line, t, *seq));
        *seq += 1;
        if both {
            edges.push(Edge::rising(line, t + tpw, *seq));
            *seq += 1;
        }
    }
    edges
}

/// Feeds edges, then calls `flush` at the deadline, collecting every result.
fn run(asm: &mut WiegandAssembler, edges: &[Edge]) -> Vec<FrameResult> {
    let mut out = Vec::new();
    for e in edges {
        // A real shell flushes at the deadline when no edge arrives first.
        if let Some(deadline) = asm.poll_timeout() {
            if deadline < e.timestamp_ns {
                out.extend(asm.flush(deadline));
            }
        }
        out.extend(asm.push(*e));
    }
    if let Some(deadline) = asm.poll_timeout() {
        assert!(
            asm.flush(deadline - 1).is_none(),
            "flush before the deadline ends nothing"
        );
        out.extend(asm.flush(deadline));
    }
    out
}

fn bits(s: &str) -> Bits {
    Bits::from_bit_str(s).unwrap()
}

fn card(r: &FrameResult) -> String {
    let f = r.as_ref().unwrap();
    decode(FormatChoice::Auto, f.bits)
        .unwrap()
        .canonical()
        .to_string()
}

#[test]
fn normal_timing_one_frame() {
    for both in [false, true] {
        let mut seq = 0;
        let cfg = AssemblerConfig {
            edges: if both {
                EdgeMode::Both
            } else {
                EdgeMode::FallingOnly
            },
            ..AssemblerConfig::default()
        };
        let mut asm = WiegandAssembler::new(cfg);
        let out = run(
            &mut asm,
            &trace(W3, 1_000 * MS, 50 * US, MS, both, &mut seq),
        );
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].as_ref().unwrap().bits, bits(W3));
        assert_eq!(card(&out[0]), "H10301:123:4567");
        assert_eq!(asm.stats().frames, 1);
    }
}

#[test]
fn sia_maximum_20ms_interval_is_not_split() {
    let mut seq = 0;
    let mut asm = WiegandAssembler::default();
    let out = run(&mut asm, &trace(W3, 0, 100 * US, 20 * MS, false, &mut seq));
    assert_eq!(out.len(), 1);
    assert_eq!(card(&out[0]), "H10301:123:4567");
    // A 5 ms end-of-frame timeout would split it into 26 one-bit frames.
    let mut seq = 0;
    let mut short = WiegandAssembler::new(AssemblerConfig {
        eof_ns: 5 * MS,
        ..AssemblerConfig::default()
    });
    let out = run(
        &mut short,
        &trace(W3, 0, 100 * US, 20 * MS, false, &mut seq),
    );
    assert_eq!(out.len(), 26);
}

#[test]
fn glitch_edge_is_dropped() {
    let mut seq = 0;
    let mut edges = trace(W3, 0, 50 * US, MS, false, &mut seq);
    // A spurious falling edge 8 µs after bit 10; renumber seqnos so there is no gap.
    let t = edges[9].timestamp_ns + 8 * US;
    edges.insert(10, Edge::falling(Line::D1, t, 0));
    for (i, e) in edges.iter_mut().enumerate() {
        e.seqno = i as u32;
    }
    let mut asm = WiegandAssembler::default();
    let out = run(&mut asm, &edges);
    assert_eq!(out.len(), 1);
    assert_eq!(card(&out[0]), "H10301:123:4567");
    assert_eq!(asm.stats().glitches, 1);
}

#[test]
fn truncated_frame_is_raw_or_rejected() {
    let mut seq = 0;
    let mut asm = WiegandAssembler::default();
    let out = run(&mut asm, &trace(&W3[..25], 0, 50 * US, MS, false, &mut seq));
    assert_eq!(out.len(), 1);
    let f = out[0].unwrap();
    assert_eq!(f.bits.len(), 25);
    // Configured H10301: rejected with a length error; auto: passed on as raw.
    let err = decode(
        FormatChoice::Fixed(reader_protocol::wiegand::Format::H10301),
        f.bits,
    )
    .unwrap_err();
    assert!(err.to_string().contains("26 bits"), "{err}");
    let raw = decode(FormatChoice::Auto, f.bits).unwrap();
    assert_eq!(raw.format_name(), "RAW");
    assert_eq!(raw.bit_count(), 25);
}

#[test]
fn keypad_8bit_bursts_300ms_apart() {
    let mut seq = 0;
    let mut edges = Vec::new();
    for (i, k) in ["11100001", "11010010", "11000011", "10110100", "01001011"]
        .iter()
        .enumerate()
    {
        edges.extend(trace(k, i as u64 * 300 * MS, 50 * US, MS, false, &mut seq));
    }
    let mut asm = WiegandAssembler::default();
    let out = run(&mut asm, &edges);
    assert_eq!(out.len(), 5);
    let mut dec = WiegandDecoder::new(WiegandReaderConfig {
        format: FormatChoice::Auto,
        keypad: Some(KeypadConfig::default()),
    });
    let events: Vec<ReaderEvent> = out.into_iter().filter_map(|r| dec.handle(r)).collect();
    // Four digits then `#`: one PIN event, no per-key events.
    assert_eq!(events.len(), 1);
    match &events[0] {
        ReaderEvent::Pin(p) => {
            assert!(p.eq_str("1234"));
            assert!(
                !format!("{p:?}").contains("1234"),
                "Debug must not leak the PIN"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(events[0].detail().unwrap().to_string(), "pin_length=4");
}

#[test]
fn keypad_4bit_bursts_keys() {
    let mut seq = 0;
    let mut edges = Vec::new();
    for (i, k) in ["0001", "0001", "1010"].iter().enumerate() {
        edges.extend(trace(k, i as u64 * 200 * MS, 50 * US, MS, false, &mut seq));
    }
    let mut asm = WiegandAssembler::default();
    let out = run(&mut asm, &edges);
    let keys: Vec<Key> = out
        .iter()
        .map(|r| reader_protocol::wiegand::decode_key(r.unwrap().bits, Default::default()).unwrap())
        .collect();
    // Repeated digits are kept: keypad digits are never deduplicated.
    assert_eq!(keys, [Key::Digit(1), Key::Digit(1), Key::Star]);
}

#[test]
fn two_frames_40ms_apart() {
    let mut seq = 0;
    let mut edges = trace(W3, 0, 50 * US, MS, false, &mut seq);
    let end = edges.last().unwrap().timestamp_ns;
    edges.extend(trace(W2, end + 40 * MS, 50 * US, MS, false, &mut seq));
    // Fed without flush calls: the first edge of W2 ends W3.
    let mut asm = WiegandAssembler::default();
    let mut out: Vec<FrameResult> = edges.iter().filter_map(|e| asm.push(*e)).collect();
    assert_eq!(out.len(), 1);
    out.extend(asm.finish());
    assert_eq!(out.len(), 2);
    assert_eq!(card(&out[0]), "H10301:123:4567");
    assert_eq!(card(&out[1]), "H10301:90:324");
}

#[test]
fn sequence_gap_discards_frame() {
    let mut seq = 0;
    let mut edges = trace(W3, 0, 50 * US, MS, false, &mut seq);
    for e in edges.iter_mut().skip(12) {
        e.seqno += 3;
    }
    let mut asm = WiegandAssembler::default();
    let out = run(&mut asm, &edges);
    assert_eq!(out.len(), 1);
    let err = out[0].unwrap_err();
    assert_eq!(
        err,
        FrameError::SequenceGap {
            after: 11,
            got: 15,
            missing: 3
        }
    );
    assert!(err.to_string().contains("lost"), "{err}");
    assert_eq!(asm.stats().sequence_gaps, 1);
    // The next frame is fine again.
    let next = trace(W2, 1_000 * MS, 50 * US, MS, false, &mut { 29u32 });
    let out = run(&mut asm, &next);
    assert_eq!(card(&out[0]), "H10301:90:324");
}

#[test]
fn lost_rising_edge_does_not_poison_later_frames() {
    let mut asm = WiegandAssembler::new(AssemblerConfig {
        edges: EdgeMode::Both,
        ..AssemblerConfig::default()
    });
    let mut seq = 0;
    let mut edges = trace(W3, 0, 50 * US, MS, true, &mut seq);
    // The rising edge of bit 25, the last D1 pulse, is lost: sequence gap, frame discarded.
    assert_eq!(edges[49].line, Line::D1);
    edges.remove(49);
    let out = run(&mut asm, &edges);
    assert!(
        matches!(out[..], [Err(FrameError::SequenceGap { .. })]),
        "{out:?}"
    );
    // W2 starts with a D0 pulse: with D1 still believed low it would read as both-lines-low.
    let next = trace(W2, 1_000 * MS, 50 * US, MS, true, &mut seq);
    let out = run(&mut asm, &next);
    assert_eq!(card(&out[0]), "H10301:90:324");
}

#[test]
fn both_lines_low_is_a_frame_error() {
    let mut seq = 0;
    let mut edges = trace(W3, 0, 50 * US, MS, true, &mut seq);
    // D1 falls while D0 is still low (bit 2 is a D0 pulse at 1 ms..1.05 ms).
    let t = MS + 20 * US;
    edges.insert(3, Edge::falling(Line::D1, t, 0));
    edges.insert(4, Edge::rising(Line::D1, t + 10 * US, 0));
    edges.sort_by_key(|e| e.timestamp_ns);
    for (i, e) in edges.iter_mut().enumerate() {
        e.seqno = i as u32;
    }
    let mut asm = WiegandAssembler::new(AssemblerConfig {
        edges: EdgeMode::Both,
        glitch_ns: 0,
        ..AssemblerConfig::default()
    });
    let out = run(&mut asm, &edges);
    assert_eq!(out, [Err(FrameError::BothLinesLow)]);
    assert_eq!(asm.stats().both_low, 1);
}

#[test]
fn more_than_128_bits_is_a_frame_error() {
    let long: String = "10".repeat(70);
    let mut seq = 0;
    let mut asm = WiegandAssembler::default();
    let out = run(&mut asm, &trace(&long, 0, 50 * US, MS, false, &mut seq));
    assert_eq!(out, [Err(FrameError::TooManyBits { bits: 140 })]);
    // Exactly 128 bits is fine (raw pass-through).
    let full: String = "1".repeat(128);
    let out = run(
        &mut asm,
        &trace(&full, 10_000 * MS, 50 * US, MS, false, &mut seq),
    );
    let f = out[0].unwrap();
    assert_eq!(f.bits.len(), 128);
    assert_eq!(
        decode(FormatChoice::Auto, f.bits)
            .unwrap()
            .canonical()
            .to_string(),
        format!("RAW128:{}", "f".repeat(32))
    );
}

#[test]
fn poll_timeout_tracks_last_edge() {
    let mut asm = WiegandAssembler::default();
    assert_eq!(asm.poll_timeout(), None);
    assert!(asm.flush(u64::MAX).is_none());
    asm.push(Edge::falling(Line::D0, 5 * MS, 7));
    assert_eq!(asm.poll_timeout(), Some(35 * MS));
    assert_eq!(asm.pending_bits(), 1);
    let r = asm.flush(35 * MS).unwrap().unwrap();
    assert_eq!(r.bits, bits("0"));
    assert_eq!((r.first_ns, r.last_ns), (5 * MS, 5 * MS));
    assert_eq!(asm.poll_timeout(), None);
}
