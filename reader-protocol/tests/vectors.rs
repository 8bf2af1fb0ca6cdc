//! Every test vector listed in `docs/reader-formats.md` (Wiegand, keypad, failure signatures,
//! EM4100 cross-format, serial byte streams).
#![allow(clippy::unwrap_used)]

use reader_protocol::serial::{
    id12, Em4100FrameKind, Em4100Framer, Em4100Framing, Em4100Id, Framer, SerialError,
};
use reader_protocol::wiegand::{
    decode, decode_key, decode_pin26_binary, matching_formats, Format, FormatChoice, Key, KeyMap,
    WiegandError,
};
use reader_protocol::{Bits, CardFields};

fn bits(s: &str) -> Bits {
    Bits::from_bit_str(s).unwrap()
}

fn fields(oem: Option<u32>, facility: Option<u32>, card: u64) -> CardFields {
    CardFields {
        oem,
        facility,
        card_number: Some(card),
    }
}

/// Decodes with the fixed format and with `auto`, checks hex, fields and the encode round trip.
fn check_vector(format: Format, wire: &str, hex: u128, f: CardFields) {
    let b = bits(wire);
    assert_eq!(b.len(), format.bit_len(), "{format} {wire}");
    assert_eq!(b.value(), hex, "{format} {wire}");
    let c = format.decode(b).unwrap();
    assert_eq!(c.fields(), f, "{format} {wire}");
    assert_eq!(c.bit_count(), format.bit_len());
    assert_eq!(format.encode(f).unwrap(), b, "{format} encode");
    assert!(matching_formats(b).any(|m| m == format));
    let auto = decode(FormatChoice::Auto, b).unwrap();
    assert!(matches!(
        auto.format(),
        reader_protocol::CardFormat::Wiegand(_)
    ));
}

// Wiegand, from external sources.
#[test]
fn w1_accessgrid() {
    check_vector(
        Format::H10301,
        "10010101000000000010001010",
        0x254008A,
        fields(None, Some(42), 69),
    );
    let c = Format::H10301
        .decode(bits("10010101000000000010001010"))
        .unwrap();
    assert_eq!(c.canonical().to_string(), "H10301:42:69");
    assert_eq!(c.raw_bits_hex().to_string(), "0254008a");
}

#[test]
fn w2_wiegand_encoder() {
    check_vector(
        Format::H10301,
        "00101101000000001010001000",
        0x0B40288,
        fields(None, Some(90), 324),
    );
    let c = Format::H10301
        .decode(bits("00101101000000001010001000"))
        .unwrap();
    // Leading zero parity bit kept: 26 bits, padded hex.
    assert_eq!(c.raw_bits_hex().to_string(), "00b40288");
}

#[test]
fn w3_proxmark3() {
    check_vector(
        Format::H10301,
        "10111101100010001110101110",
        0x2F623AE,
        fields(None, Some(123), 4567),
    );
    // Preamble stripping: 2006F623AE & (2^26 - 1).
    let framed = 0x20_06F6_23AEu128 & ((1 << 26) - 1);
    assert_eq!(framed, 0x2F623AE);
    let c = decode(FormatChoice::Auto, Bits::new(framed, 26).unwrap()).unwrap();
    assert_eq!(c.canonical().to_string(), "H10301:123:4567");
}

#[test]
fn w4_nedap() {
    check_vector(
        Format::H10301,
        "00000101000000100010001011",
        0x014088B,
        fields(None, Some(10), 1093),
    );
}

// Wiegand, generated.
#[test]
fn generated_h10301() {
    check_vector(
        Format::H10301,
        "00000000000000000000000001",
        0x0000001,
        fields(None, Some(0), 0),
    );
    check_vector(
        Format::H10301,
        "01111111111111111111111111",
        0x1FFFFFF,
        fields(None, Some(255), 65535),
    );
}

#[test]
fn generated_h10306() {
    check_vector(
        Format::H10306,
        "1000001001101001011011101110101010",
        0x209A5BBAA,
        fields(None, Some(1234), 56789),
    );
    check_vector(
        Format::H10306,
        "0000000000000000000000000000000010",
        0x000000002,
        fields(None, Some(0), 1),
    );
}

#[test]
fn generated_h10302_h10304() {
    check_vector(
        Format::H10302,
        "0111111111111111111111111111111111111",
        0x0FFFFFFFFF,
        fields(None, None, 34_359_738_367),
    );
    check_vector(
        Format::H10304,
        "0001100000011100100111100010010000001",
        0x030393C481,
        fields(None, Some(12345), 123456),
    );
    check_vector(
        Format::H10304,
        "0111111111111111111111111111111111111",
        0x0FFFFFFFFF,
        fields(None, Some(65535), 524287),
    );
    // The two 37-bit formats cannot be told apart: both match.
    let b = bits("0111111111111111111111111111111111111");
    let m: Vec<_> = matching_formats(b).collect();
    assert!(m.contains(&Format::H10302) && m.contains(&Format::H10304));
    assert_eq!(
        Format::H10302.decode(b).unwrap().canonical().to_string(),
        "H10302:34359738367"
    );
    let all: Vec<String> = reader_protocol::wiegand::decode_any(b)
        .map(|c| c.canonical().to_string())
        .collect();
    assert_eq!(all, ["H10304:65535:524287", "H10302:34359738367"]);
}

#[test]
fn generated_c1k35() {
    check_vector(
        Format::C1k35,
        "11010011010010100010101010010100100",
        0x69A5154A4,
        fields(None, Some(1234), 567890),
    );
    let c = Format::C1k35
        .decode(bits("11010011010010100010101010010100100"))
        .unwrap();
    assert_eq!(c.canonical().to_string(), "C1K35:1234:567890");
}

#[test]
fn generated_c15001() {
    check_vector(
        Format::C15001,
        "111100001000111101100010001110101110",
        0xF08F623AE,
        fields(Some(900), Some(123), 4567),
    );
    let c = Format::C15001
        .decode(bits("111100001000111101100010001110101110"))
        .unwrap();
    assert_eq!(c.canonical().to_string(), "C15001:900:123:4567");
}

#[test]
fn auto_errors_name_the_failure() {
    // 37 bits: two candidate formats, both fail.
    let b = bits("0111111111111111111111111111111111110");
    let err = decode(FormatChoice::Auto, b).unwrap_err();
    assert_eq!(
        err,
        WiegandError::NoFormatMatched {
            len: 37,
            swapped: false
        }
    );
    assert!(err.to_string().contains("37-bit"), "{err}");
    // 26 bits: one candidate, so its parity error is reported with the bit number.
    let err = decode(FormatChoice::Auto, bits("10111101101010001110101110")).unwrap_err();
    assert!(
        err.to_string().contains("H10301 parity error: bit"),
        "{err}"
    );
    // Fixed format, wrong length.
    let err = Format::C1k48.decode(bits("0101")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "C1K48 frames have 48 bits but this frame has 4 bits"
    );
    assert_eq!(
        decode(FormatChoice::Auto, Bits::EMPTY),
        Err(WiegandError::Empty)
    );
}

// Keypad.
#[test]
fn keypad_4bit_bursts() {
    let keys: Vec<Key> = ["0001", "0010", "0011", "0100", "1011"]
        .iter()
        .map(|w| decode_key(bits(w), KeyMap::default()).unwrap())
        .collect();
    assert_eq!(
        keys,
        [
            Key::Digit(1),
            Key::Digit(2),
            Key::Digit(3),
            Key::Digit(4),
            Key::Hash
        ]
    );
}

#[test]
fn keypad_8bit_bursts() {
    let keys: Vec<Key> = ["11100001", "11010010", "11000011", "10110100", "01001011"]
        .iter()
        .map(|w| decode_key(bits(w), KeyMap::default()).unwrap())
        .collect();
    assert_eq!(
        keys,
        [
            Key::Digit(1),
            Key::Digit(2),
            Key::Digit(3),
            Key::Digit(4),
            Key::Hash
        ]
    );
    // `*` = 0x5A, and every key follows the complement rule (the widely copied table is wrong
    // for key 7).
    assert_eq!(
        decode_key(Bits::new(0x5A, 8).unwrap(), KeyMap::default()).unwrap(),
        Key::Star
    );
    assert_eq!(
        decode_key(Bits::new(0x87, 8).unwrap(), KeyMap::default()).unwrap(),
        Key::Digit(7)
    );
}

#[test]
fn keypad_hid_26bit_pin() {
    let b = bits("00000000000000100110100100");
    assert_eq!(b.value(), 0x00009A4);
    let p = decode_pin26_binary(b).unwrap();
    assert_eq!(p.facility, 0);
    assert!(p.pin.eq_str("1234"));
}

// Failure signatures.
#[test]
fn w3_bit_11_flipped_is_a_parity_failure() {
    let b = bits("10111101101010001110101110");
    let err = Format::H10301.decode(b).unwrap_err();
    assert!(
        matches!(err, WiegandError::Parity { swapped: false, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("parity"));
    // The fields would otherwise read FC 123 / CN 20951.
    assert_eq!(b.field(1, 8), Some(123));
    assert_eq!(b.field(9, 16), Some(20951));
    assert!(decode(FormatChoice::Auto, b).is_err());
}

#[test]
fn d0_d1_swapped_is_flagged() {
    let b = bits("01000010011101110001010001");
    assert_eq!(b, bits("10111101100010001110101110").complement());
    let err = Format::H10301.decode(b).unwrap_err();
    assert!(err.probably_swapped(), "{err}");
    assert!(err.to_string().contains("D0/D1 probably swapped"), "{err}");
    let auto = decode(FormatChoice::Auto, b).unwrap_err();
    assert!(auto.probably_swapped(), "{auto}");
}

// EM4100 cross-format.
#[test]
fn em4100_cross_format() {
    for (payload, cs, version, printed, fc, cn) in [
        (
            0x3C00CE754Cu64,
            0xCBu8,
            0x3Cu8,
            "0013530444",
            206u8,
            30028u16,
        ),
        (0x14008EC793, 0xCE, 0x14, "0009357203", 142, 51091),
        (0x67003B51C6, 0xCB, 0x67, "0003887558", 59, 20934),
    ] {
        let id = Em4100Id::from_u64(payload);
        assert_eq!(id.checksum(), cs);
        assert_eq!(id.version(), version);
        assert_eq!(id.printed_8h10d().to_string(), printed);
        assert_eq!(id.w26(), (fc, cn));
        // MOD(X,65536) + MOD(INT(X/65536),256)*100000
        let x = u64::from(id.id32());
        assert_eq!(x % 65536, u64::from(cn));
        assert_eq!((x / 65536) % 256, u64::from(fc));
        let c = id.credential();
        assert_eq!(c.canonical().to_string(), format!("EM4100:{payload:010x}"));
        assert_eq!(c.card_number(), Some(x));
        assert_eq!(c.bit_count(), 40);
    }
}

fn hex_bytes(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect()
}

fn feed_all(
    f: &mut Em4100Framer,
    bytes: &[u8],
) -> Vec<Result<reader_protocol::serial::Em4100Read, SerialError>> {
    f.feed(bytes, 0).collect()
}

// Serial byte streams.
#[test]
fn r1_rdm6300() {
    let mut f = Em4100Framer::new(Em4100Framing::Rdm6300);
    let out = feed_all(
        &mut f,
        &hex_bytes("02 33 43 30 30 43 45 37 35 34 43 43 42 03"),
    );
    assert_eq!(out.len(), 1);
    let read = out[0].unwrap();
    assert_eq!(read.kind, Em4100FrameKind::Rdm6300);
    assert_eq!(read.id.version(), 0x3C);
    assert_eq!(read.id.id32(), 0x00CE754C);
    assert_eq!(read.id.printed_8h10d().to_string(), "0013530444");
    assert_eq!(read.id.w26(), (206, 30028));
}

#[test]
fn r2_rdm3600() {
    let mut f = Em4100Framer::default();
    let out = feed_all(
        &mut f,
        &hex_bytes("02 31 34 30 30 38 45 43 37 39 33 43 45 03"),
    );
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].unwrap().id.bytes(), [0x14, 0x00, 0x8E, 0xC7, 0x93]);
}

#[test]
fn r3_bad_checksum() {
    let mut f = Em4100Framer::default();
    let out = feed_all(
        &mut f,
        &hex_bytes("02 31 34 30 30 38 45 43 37 39 33 43 43 03"),
    );
    assert_eq!(out.len(), 1);
    let err = out[0].unwrap_err();
    assert!(
        matches!(
            err,
            SerialError::Checksum {
                computed: 0xCE,
                received: 0xCC
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("checksum"));
}

#[test]
fn r4_junk_then_frame() {
    let mut f = Em4100Framer::default();
    let mut bytes = vec![0x01];
    bytes.extend(hex_bytes("02 31 34 30 30 38 45 43 37 39 33 43 45 03"));
    let out = feed_all(&mut f, &bytes);
    assert_eq!(out.len(), 2);
    assert!(matches!(out[0], Err(SerialError::Junk { skipped: 1 })));
    assert_eq!(out[1].unwrap().id.bytes(), [0x14, 0x00, 0x8E, 0xC7, 0x93]);
}

#[test]
fn id12la_frame() {
    let bytes = hex_bytes("02 33 43 30 30 43 45 37 35 34 43 43 42 0D 0A 03");
    for mut f in [id12::framer(), Em4100Framer::default()] {
        let out = feed_all(&mut f, &bytes);
        assert_eq!(out.len(), 1);
        let read = out[0].unwrap();
        assert_eq!(read.kind, Em4100FrameKind::Id12);
        assert_eq!(read.id, Em4100Id::from_u64(0x3C00CE754C));
    }
    assert_eq!(
        id12::encode_frame(&Em4100Id::from_u64(0x3C00CE754C)).as_slice(),
        bytes.as_slice()
    );
    // An RDM6300-only framer rejects the 16-byte shape with a reason.
    let mut f = Em4100Framer::new(Em4100Framing::Rdm6300);
    assert!(matches!(
        feed_all(&mut f, &bytes)[0],
        Err(SerialError::UnexpectedFraming { len: 16, .. })
    ));
}

#[test]
fn binary_checksum_clone() {
    // STX, 10 ASCII hex, one binary checksum byte, ETX.
    let mut bytes = vec![0x02];
    bytes.extend_from_slice(b"3C00CE754C");
    bytes.push(0xCB);
    bytes.push(0x03);
    let mut f = Em4100Framer::default();
    let out = feed_all(&mut f, &bytes);
    assert_eq!(out.len(), 1);
    let read = out[0].unwrap();
    assert_eq!(read.kind, Em4100FrameKind::BinaryChecksum);
    assert_eq!(read.id.printed_8h10d().to_string(), "0013530444");
}
