//! `WiegandPipeline`: edges in, events out, with one deadline for the end-of-frame silence and
//! the PIN entry timeout.
#![allow(clippy::unwrap_used)]

use reader_protocol::wiegand::{
    AssemblerConfig, Edge, EdgeMode, FormatChoice, KeypadConfig, Line, WiegandPipeline,
    WiegandReaderConfig,
};
use reader_protocol::ReaderEvent;

const MS: u64 = 1_000_000;

fn pipeline(keypad: bool) -> WiegandPipeline {
    WiegandPipeline::new(
        AssemblerConfig {
            eof_ns: 30 * MS,
            edges: EdgeMode::Both,
            ..AssemblerConfig::default()
        },
        WiegandReaderConfig {
            format: FormatChoice::Auto,
            keypad: keypad.then(KeypadConfig::default),
        },
    )
}

/// Both edges of a 50 µs low pulse per bit, bits 1 ms apart, numbered from `seq`.
fn edges(bits: &str, start_ns: u64, seq: &mut u32) -> Vec<Edge> {
    let mut out = Vec::new();
    for (i, b) in bits.chars().enumerate() {
        let line = if b == '1' { Line::D1 } else { Line::D0 };
        let t = start_ns + i as u64 * MS;
        out.push(Edge::falling(line, t, *seq));
        out.push(Edge::rising(line, t + 50_000, *seq + 1));
        *seq += 2;
    }
    out
}

#[test]
fn a_card_is_emitted_at_the_end_of_frame_silence() {
    let mut p = pipeline(false);
    let mut seq = 0;
    let frame = edges("10111101100010001110101110", 1_000 * MS, &mut seq);
    for e in &frame {
        assert!(p.push(*e).is_none());
    }
    let deadline = p.deadline().unwrap();
    assert_eq!(deadline, frame.last().unwrap().timestamp_ns + 30 * MS);
    assert_eq!(p.expire(deadline - 1).count(), 0, "not due yet");
    let out: Vec<_> = p.expire(deadline).collect();
    assert_eq!(out.len(), 1);
    assert_eq!(
        out[0].credential().unwrap().canonical().to_string(),
        "H10301:123:4567"
    );
    assert_eq!(p.deadline(), None, "nothing pending after the frame");
}

#[test]
fn a_sequence_gap_becomes_a_fault() {
    let mut p = pipeline(false);
    let mut seq = 0;
    let mut frame = edges("10111101100010001110101110", 0, &mut seq);
    frame.remove(10);
    let mut out: Vec<ReaderEvent> = frame.iter().filter_map(|e| p.push(*e)).collect();
    out.extend(p.expire(u64::MAX / 2));
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].event_type(), "reader_fault");
}

#[test]
fn key_bursts_become_a_pin_and_an_unfinished_entry_times_out() {
    let mut p = pipeline(true);
    let mut seq = 0;
    let mut t = 0;
    let mut got = Vec::new();
    let mut press = |p: &mut WiegandPipeline, key: u8, got: &mut Vec<ReaderEvent>| {
        // 8-bit burst: the high nibble is the complement of the key code.
        let bits = format!("{:08b}", ((!key & 0xF) << 4) | key);
        for e in edges(&bits, t, &mut seq) {
            got.extend(p.push(e));
        }
        t += 300 * MS;
        // The frame ends 30 ms after its last edge; the PIN entry is still open.
        got.extend(p.expire(t - 200 * MS));
    };
    for key in [1, 2, 3, 4, 0xB] {
        press(&mut p, key, &mut got);
    }
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].event_type(), "pin");
    assert_eq!(got[0].detail().unwrap().to_string(), "pin_length=4");

    // Two digits and no `#`: the entry expires at the PIN deadline as a fault.
    got.clear();
    press(&mut p, 5, &mut got);
    press(&mut p, 6, &mut got);
    assert!(got.is_empty(), "{got:?}");
    let deadline = p.deadline().unwrap();
    assert_eq!(p.expire(deadline - 1).count(), 0);
    let out: Vec<_> = p.expire(deadline).collect();
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].event_type(), "reader_fault");
}
