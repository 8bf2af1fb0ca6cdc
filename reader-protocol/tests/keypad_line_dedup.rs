//! PIN collection, 26-bit PIN modes, the line reader, serial resynchronisation and duplicate
//! suppression.
#![allow(clippy::unwrap_used)]

use reader_protocol::serial::{
    Em4100Framer, Em4100Id, Framer, LineConfig, LineReader, Radix, SerialDecoder, SerialError,
    SerialFraming, Terminator,
};
use reader_protocol::wiegand::{
    decode_key, decode_pin26_bcd, decode_pin26_binary, encode_key, Format, FormatChoice, Key,
    KeyMap, KeypadConfig, KeypadError, Pin26Mode, PinCollector, PinConfig, WiegandDecoder,
    WiegandReaderConfig,
};
use reader_protocol::{
    Bits, CardFields, Dedup, DedupKey, DedupPolicy, ReaderEvent, Source, Verdict,
};

const MS: u64 = 1_000_000;

fn collector() -> PinCollector {
    PinCollector::new(PinConfig::default())
}

fn digits(c: &mut PinCollector, keys: &[Key], t0: u64) -> Vec<Result<String, KeypadError>> {
    keys.iter()
        .enumerate()
        .filter_map(|(i, k)| c.push(*k, t0 + i as u64 * 500 * MS))
        .map(|r| r.map(|p| p.digits().iter().map(|d| char::from(b'0' + d)).collect()))
        .collect()
}

#[test]
fn pin_enter_clear_min_max() {
    let d = Key::Digit;
    let mut c = collector();
    assert_eq!(
        digits(&mut c, &[d(1), d(1), d(2), d(2), Key::Hash], 0),
        [Ok("1122".to_owned())]
    );
    // Clear restarts the entry.
    assert_eq!(
        digits(
            &mut c,
            &[d(9), d(9), Key::Star, d(5), d(6), d(7), d(8), Key::Hash],
            10_000 * MS
        ),
        [Ok("5678".to_owned())]
    );
    // Too short on enter.
    assert_eq!(
        digits(&mut c, &[d(1), d(2), Key::Hash], 20_000 * MS),
        [Err(KeypadError::PinTooShort { len: 2, min: 4 })]
    );
    // max_len submits without enter.
    assert_eq!(
        digits(&mut c, &[d(1); 9], 30_000 * MS),
        [Ok("11111111".to_owned())]
    );
    assert_eq!(c.pending_len(), 1);
}

#[test]
fn pin_inter_key_timeout() {
    let mut c = collector();
    assert!(c.push(Key::Digit(1), 0).is_none());
    assert!(c.push(Key::Digit(2), MS).is_none());
    assert_eq!(c.poll_timeout(), Some(MS + 5_000 * MS));
    assert!(c.flush(5_000 * MS).is_none());
    assert_eq!(
        c.flush(5_001 * MS),
        Some(Err(KeypadError::PinTimeout { len: 2 }))
    );
    assert_eq!(c.poll_timeout(), None);
    // A key after the timeout reports the timeout and starts a new entry.
    c.push(Key::Digit(3), 10_000 * MS);
    assert_eq!(
        c.push(Key::Digit(4), 20_000 * MS),
        Some(Err(KeypadError::PinTimeout { len: 1 }))
    );
    assert_eq!(c.pending_len(), 1);
}

#[test]
fn custom_enter_and_clear_keys() {
    let mut c = PinCollector::new(PinConfig {
        min_len: 1,
        max_len: 4,
        enter: Some(Key::Star),
        clear: Some(Key::Hash),
        timeout_ns: 1_000 * MS,
    });
    assert!(c.push(Key::Digit(7), 0).is_none());
    assert!(c.push(Key::Hash, MS).is_none());
    assert!(c.push(Key::Digit(8), 2 * MS).is_none());
    let pin = c.push(Key::Star, 3 * MS).unwrap().unwrap();
    assert!(pin.eq_str("8"));
    // Swapped key map: 0xA is `#`.
    let map = KeyMap {
        swap_star_hash: true,
    };
    assert_eq!(decode_key(encode_key(0xA, false), map).unwrap(), Key::Hash);
    assert_eq!(decode_key(encode_key(0xB, true), map).unwrap(), Key::Star);
}

#[test]
fn eight_bit_complement_check() {
    for code in 0..16u8 {
        let b = encode_key(code, true);
        assert_eq!(
            decode_key(b, KeyMap::default()).unwrap(),
            KeyMap::default().key(code)
        );
        // Flipping any single bit breaks the complement.
        for bit in 0..8 {
            let bad = Bits::new(b.value() ^ (1 << bit), 8).unwrap();
            assert!(matches!(
                decode_key(bad, KeyMap::default()),
                Err(KeypadError::KeyComplement { .. })
            ));
        }
    }
    assert_eq!(
        decode_key(Bits::new(1, 5).unwrap(), KeyMap::default()),
        Err(KeypadError::KeyLength { bits: 5 })
    );
}

#[test]
fn pin26_modes() {
    // Binary: CN 65535 is the keypad's error code.
    let err = Format::H10301
        .encode(CardFields {
            oem: None,
            facility: Some(0),
            card_number: Some(65535),
        })
        .unwrap();
    assert_eq!(decode_pin26_binary(err), Err(KeypadError::PinErrorCode));
    // BCD: 001234 → "1234".
    let data: u64 = 0x001234;
    let bcd = Format::H10301
        .encode(CardFields {
            oem: None,
            facility: Some((data >> 16) as u32),
            card_number: Some(data & 0xFFFF),
        })
        .unwrap();
    assert!(decode_pin26_bcd(bcd).unwrap().pin.eq_str("1234"));
    let bad = Format::H10301
        .encode(CardFields {
            oem: None,
            facility: Some(0),
            card_number: Some(0x12A4),
        })
        .unwrap();
    assert_eq!(
        decode_pin26_bcd(bad),
        Err(KeypadError::BcdDigit { nibble: 0xA })
    );
    // Parity failures are reported.
    let flipped = Bits::new(bcd.value() ^ 1, 26).unwrap();
    assert!(matches!(
        decode_pin26_bcd(flipped),
        Err(KeypadError::Pin26(_))
    ));

    let mut dec = WiegandDecoder::new(WiegandReaderConfig {
        format: FormatChoice::Fixed(Format::H10301),
        keypad: Some(KeypadConfig {
            pin26: Some(Pin26Mode::Bcd),
            ..KeypadConfig::default()
        }),
    });
    match dec.decode_frame(bcd, 0) {
        Some(ReaderEvent::Pin(p)) => assert_eq!(p.len(), 4),
        other => panic!("{other:?}"),
    }
    // Without keypad config, 4-bit frames are raw cards.
    let mut plain = WiegandDecoder::new(WiegandReaderConfig::default());
    let ev = plain.decode_frame(encode_key(1, false), 0).unwrap();
    assert_eq!(ev.credential().unwrap().canonical().to_string(), "RAW4:1");
}

#[test]
fn wiegand_decoder_faults_and_timeout() {
    let mut dec = WiegandDecoder::new(WiegandReaderConfig {
        format: FormatChoice::Fixed(Format::H10301),
        keypad: Some(KeypadConfig::default()),
    });
    let swapped = Bits::from_bit_str("01000010011101110001010001").unwrap();
    let ev = dec.decode_frame(swapped, 0).unwrap();
    assert_eq!(ev.event_type(), "reader_fault");
    assert!(ev
        .detail()
        .unwrap()
        .to_string()
        .contains("D0/D1 probably swapped"));
    assert!(dec.decode_frame(encode_key(1, false), 0).is_none());
    assert_eq!(dec.poll_timeout(), Some(5_000 * MS));
    let ev = dec.flush(6_000 * MS).unwrap();
    assert!(ev.detail().unwrap().to_string().contains("timed out"));
}

fn line(
    config: LineConfig,
    bytes: &[u8],
) -> Vec<Result<reader_protocol::serial::LineRead, SerialError>> {
    let mut r = LineReader::new(config);
    let mut out: Vec<_> = r.feed(bytes, 0).collect();
    out.extend(r.flush(u64::MAX));
    out
}

#[test]
fn line_reader_converters() {
    // Priority 1 Design: 6 hex chars (W26 data bits) + CR.
    let out = line(LineConfig::default(), b"7B11D7\r");
    let r = out[0].unwrap();
    assert_eq!((r.value, r.digits, r.bits.len()), (0x7B11D7, 6, 24));
    assert_eq!(r.credential().canonical().to_string(), "RAW24:7b11d7");
    // S4A: 10 decimal digits + CR LF; two lines in one chunk.
    let cfg = LineConfig {
        terminator: Terminator::CrLf,
        radix: Radix::Decimal,
        ..LineConfig::default()
    };
    let out = line(cfg, b"0013530444\r\n0009357203\r\n");
    assert_eq!(out.len(), 2);
    let c = out[0].unwrap().credential();
    assert_eq!(c.canonical().to_string(), "DEC:13530444");
    assert_eq!(c.card_number(), Some(13530444));
    assert_eq!(c.bit_count(), 34);
    // Nedap: 'U' + 10-digit vehicle id + 10 hex of the W26 frame (W4) + CR LF.
    let cfg = LineConfig {
        terminator: Terminator::CrLf,
        skip: 11,
        take: Some(10),
        frame_bits: Some(26),
        ..LineConfig::default()
    };
    let out = line(cfg, b"U0000000001000014088B\r\n");
    let c = out[0].unwrap().decode_wiegand(FormatChoice::Auto).unwrap();
    assert_eq!(c.canonical().to_string(), "H10301:10:1093");
    // With the format configured the reader decodes itself, and rejects a bad frame.
    let cfg = LineConfig {
        format: Some(FormatChoice::Fixed(Format::H10301)),
        ..cfg
    };
    let out = line(cfg, b"U0000000001000014088B\r\nU0000000001000014088A\r\n");
    assert_eq!(
        out[0].unwrap().credential().canonical().to_string(),
        "H10301:10:1093"
    );
    assert!(
        matches!(out[1], Err(SerialError::Wiegand(_))),
        "{:?}",
        out[1]
    );
    let mut d = SerialDecoder::Line(LineReader::new(cfg));
    let creds: Vec<_> = d.feed(b"U0000000001000014088B\r\n", 0).collect();
    assert_eq!(creds[0].unwrap().facility_code(), Some(10));
    // STX/ETX framing with junk before the STX.
    let cfg = LineConfig {
        terminator: Terminator::Etx,
        stx: true,
        ..LineConfig::default()
    };
    let out = line(cfg, b"zz\x0212AB\x03");
    assert!(matches!(out[0], Err(SerialError::Junk { skipped: 2 })));
    assert_eq!(out[1].unwrap().value, 0x12AB);
}

#[test]
fn line_reader_faults() {
    let cfg = LineConfig {
        max_len: 8,
        ..LineConfig::default()
    };
    let out = line(cfg, b"0123456789ABCDEF\r42\r");
    assert!(matches!(out[0], Err(SerialError::LineTooLong { max: 8 })));
    assert_eq!(out[1].unwrap().value, 0x42);
    assert_eq!(out.len(), 2);
    let out = line(
        LineConfig {
            radix: Radix::Decimal,
            ..LineConfig::default()
        },
        b"12a4\r",
    );
    assert!(matches!(
        out[0],
        Err(SerialError::BadDigit { byte: b'a', .. })
    ));
    let out = line(
        LineConfig::default(),
        &[b'1'; 40]
            .iter()
            .copied()
            .chain([b'\r'])
            .collect::<Vec<_>>(),
    );
    assert!(matches!(out[0], Err(SerialError::NumberTooLarge { .. })));
    // Inter-byte timeout drops a partial line; a lone LF after CR is not a line.
    let mut r = LineReader::new(LineConfig::default());
    assert_eq!(r.feed(b"12", 0).count(), 0);
    let late: Vec<_> = r.feed(b"34\r\n", 200 * MS).collect();
    assert!(matches!(
        late[0],
        Err(SerialError::Truncated { got: 2, .. })
    ));
    assert_eq!(late[1].unwrap().value, 0x34);
    assert_eq!(late.len(), 2);
    assert_eq!(r.poll_timeout(), None);
}

#[test]
fn em4100_resynchronises() {
    let id = Em4100Id::from_u64(0x14008EC793);
    let frame = id.rdm6300_frame();
    // Mid-frame start (python-rdm6300 tests start mid-frame), then two good frames in odd chunks.
    let mut bytes = frame[5..].to_vec();
    bytes.extend_from_slice(&frame);
    bytes.extend_from_slice(&frame[..7]);
    let mut f = Em4100Framer::default();
    let mut out: Vec<_> = f.feed(&bytes, 0).collect();
    // The third frame is cut off by a new STX after 7 bytes...
    bytes = frame.to_vec();
    out.extend(f.feed(&bytes, MS));
    assert!(matches!(out[0], Err(SerialError::Junk { skipped: 9 })));
    assert_eq!(out[1].unwrap().id, id);
    assert!(matches!(out[2], Err(SerialError::Truncated { got: 7, .. })));
    assert_eq!(out[3].unwrap().id, id);
    assert_eq!(out.len(), 4);
    // ...and a pause longer than the inter-byte timeout drops a partial frame.
    let mut f = Em4100Framer::default();
    assert_eq!(f.feed(&frame[..9], 0).count(), 0);
    assert_eq!(f.poll_timeout(), Some(50 * MS));
    assert!(matches!(
        f.flush(51 * MS),
        Some(Err(SerialError::Truncated { got: 9, .. }))
    ));
    // Non-hex in the data.
    let mut bad = frame;
    bad[4] = b'G';
    let out: Vec<_> = Em4100Framer::default().feed(&bad, 0).collect();
    assert!(matches!(
        out[0],
        Err(SerialError::NotHex { byte: b'G', pos: 4 })
    ));
    // The SerialDecoder wrapper yields credentials.
    let mut d = SerialDecoder::Em4100(Em4100Framer::default());
    let creds: Vec<_> = d.feed(&frame, 0).collect();
    assert_eq!(
        creds[0].unwrap().canonical().to_string(),
        "EM4100:14008ec793"
    );
}

fn key(v: u128) -> DedupKey {
    DedupKey {
        source: Source::Serial,
        bits: Bits::new(v, 40).unwrap(),
    }
}

#[test]
fn dedup_held_card_emits_once() {
    let mut d: Dedup = Dedup::new(DedupPolicy::default());
    // RDM6300 repeats every 220 ms for 5 s: one emission.
    let verdicts: Vec<_> = (0..23).map(|i| d.observe(key(1), i * 220 * MS)).collect();
    assert_eq!(verdicts[0], Verdict::Emit);
    assert!(verdicts[1..].iter().all(|v| *v == Verdict::Suppress));
    assert_eq!(d.suppressed(), 22);
    // Removed (600 ms silence > 500 ms gap) and 1.5 s since the last emission: emits again.
    assert_eq!(d.observe(key(1), 22 * 220 * MS + 600 * MS), Verdict::Emit);
}

#[test]
fn dedup_rearm_and_different_cards() {
    let mut d: Dedup = Dedup::default();
    assert_eq!(d.observe(key(1), 0), Verdict::Emit);
    // A different card is emitted immediately.
    assert_eq!(d.observe(key(2), 100 * MS), Verdict::Emit);
    // Card 1 left (gap passed) but the re-arm interval has not: suppressed.
    assert_eq!(d.observe(key(1), 1_000 * MS), Verdict::Suppress);
    // After the re-arm interval and a new absence it emits again.
    assert_eq!(d.observe(key(1), 2_600 * MS), Verdict::Emit);
    // Zero windows: every read emits.
    let mut none: Dedup = Dedup::new(DedupPolicy {
        presence_gap_ns: 0,
        rearm_ns: 0,
    });
    assert_eq!(none.observe(key(1), 0), Verdict::Emit);
    assert_eq!(none.observe(key(1), 1), Verdict::Emit);
    // Tiny table evicts without losing correctness for the new key.
    let mut tiny: Dedup<DedupKey, 2> = Dedup::default();
    for k in 0..5 {
        assert_eq!(tiny.observe(key(k), k as u64), Verdict::Emit);
    }
    assert_eq!(tiny.len(), 2);
    tiny.prune(10_000 * MS);
    assert!(tiny.is_empty());
}

#[test]
fn dedup_keys_skip_pins_and_faults() {
    let card = ReaderEvent::Card(Em4100Id::from_u64(5).credential());
    assert!(DedupKey::for_event(Source::Serial, &card).is_some());
    let pin = ReaderEvent::Pin(reader_protocol::wiegand::Pin::from_digits(&[1, 1]).unwrap());
    assert!(DedupKey::for_event(Source::Wiegand, &pin).is_none());
    let fault = ReaderEvent::from(SerialError::LineTooLong { max: 3 });
    assert!(DedupKey::for_event(Source::Serial, &fault).is_none());
}

#[cfg(feature = "serde")]
#[test]
fn events_serialise_with_row_field_names() {
    let c = Format::H10301
        .decode(Bits::from_bit_str("10111101100010001110101110").unwrap())
        .unwrap();
    let v = serde_json::to_value(ReaderEvent::Card(c)).unwrap();
    assert_eq!(v["event_type"], "card");
    assert_eq!(v["credential"], "H10301:123:4567");
    assert_eq!(v["format"], "H10301");
    assert_eq!(v["facility_code"], 123);
    assert_eq!(v["card_number"], 4567);
    assert_eq!(v["raw_bits"], "02f623ae");
    assert_eq!(v["bit_count"], 26);
    let pin = ReaderEvent::Pin(reader_protocol::wiegand::Pin::from_digits(&[1, 2, 3, 4]).unwrap());
    let v = serde_json::to_value(&pin).unwrap();
    assert_eq!(v, serde_json::json!({"event_type": "pin", "pin_length": 4}));
    let fault = ReaderEvent::from(SerialError::Checksum {
        computed: 1,
        received: 2,
    });
    let v = serde_json::to_value(&fault).unwrap();
    assert_eq!(v["event_type"], "reader_fault");
    assert_eq!(v["kind"], "serial");
    assert!(v["detail"].as_str().unwrap().contains("checksum"));
}

/// RDM6300 frame of a 10-hex-digit id: STX, the id, its XOR checksum in hex, ETX.
fn rdm6300_frame(id: &str) -> Vec<u8> {
    let checksum = (0..5)
        .map(|i| u8::from_str_radix(&id[2 * i..2 * i + 2], 16).unwrap())
        .fold(0, |a, b| a ^ b);
    let mut frame = vec![0x02];
    frame.extend(format!("{id}{checksum:02X}").bytes());
    frame.push(0x03);
    frame
}

#[test]
fn each_framing_builds_its_decoder() {
    let mut rdm = SerialDecoder::new(SerialFraming::Rdm6300, LineConfig::default());
    let out: Vec<_> = rdm.feed(&rdm6300_frame("0A00123456"), 0).collect();
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(
        out[0].as_ref().unwrap().canonical().to_string(),
        "EM4100:0a00123456"
    );

    // ID-12 accepts only its own 16-byte frames.
    let mut id12 = SerialDecoder::new(SerialFraming::Id12, LineConfig::default());
    let out: Vec<_> = id12.feed(&rdm6300_frame("0A00123456"), 0).collect();
    assert!(
        out.iter()
            .all(|r| matches!(r, Err(SerialError::UnexpectedFraming { .. }))),
        "{out:?}"
    );

    let line = LineConfig {
        terminator: Terminator::CrLf,
        radix: Radix::Decimal,
        ..LineConfig::default()
    };
    let mut dec = SerialDecoder::new(SerialFraming::Line, line);
    let out: Vec<_> = dec.feed(b"0013530444\r\n", 0).collect();
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(
        out[0].as_ref().unwrap().canonical().to_string(),
        "DEC:13530444"
    );
}

#[cfg(feature = "serde")]
#[test]
fn serial_settings_deserialise_from_their_operator_names() {
    let framing: SerialFraming = serde_json::from_str("\"id12\"").unwrap();
    assert_eq!(framing, SerialFraming::Id12);
    let terminators: Vec<Terminator> =
        serde_json::from_str(r#"["cr", "lf", "crlf", "etx"]"#).unwrap();
    assert_eq!(
        terminators,
        [
            Terminator::Cr,
            Terminator::Lf,
            Terminator::CrLf,
            Terminator::Etx
        ]
    );
    let radix: Radix = serde_json::from_str("\"decimal\"").unwrap();
    assert_eq!(radix, Radix::Decimal);
    // `Byte` is for programs, not configuration files; the error lists what may be written.
    let err = serde_json::from_str::<Terminator>(r#"{"byte": 3}"#)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("expected one of `cr`, `lf`, `crlf`, `etx`"),
        "{err}"
    );
}
