//! The swipe record and the row the agent sends to Snowflake — **the single definition of the row
//! schema** (the README links here).
//!
//! A reader produces a [`SwipeRecord`] ([`SwipeRecord::from_event`] for a decoded event,
//! [`SwipeRecord::reader_status`] / [`SwipeRecord::status`] for rows without a credential); the
//! buffer stores it (postcard inside a CRC envelope, see
//! [`crate::buffer`]); the drain renders it with [`SwipeRecord::to_json_line`] into one NDJSON line
//! once the buffer has assigned its sequence number.
//!
//! # Row schema (one JSON object per NDJSON line, fields in this order)
//!
//! | field | JSON type | meaning |
//! | --- | --- | --- |
//! | `gateway_id` | string | configured gateway id (also the channel name by default) |
//! | `seq` | integer (u64) | per-gateway sequence number; also the offset token (decimal) |
//! | `event_id` | string | `<gateway_id>:<seq>` — unique per swipe, the dedup key downstream |
//! | `reader_id` | string | configured reader id |
//! | `zone_id` | string or null | configured zone of the reader |
//! | `door_id` | string or null | configured door of the reader |
//! | `direction` | string or null | `in`, `out` or null |
//! | `event_type` | string | `card`, `pin`, `reader_fault`, `tamper`, `heartbeat` |
//! | `credential` | string or null | canonical credential string, null for pin/fault |
//! | `format` | string or null | card format name, e.g. `H10301`, `EM4100`, `RAW` |
//! | `facility_code` | integer or null | facility / site code where the format has one |
//! | `card_number` | integer or null | card number (u64) where the format has one |
//! | `raw_bits` | string or null | raw frame bits, lower-case hex, MSB first, left-padded to whole bytes |
//! | `bit_count` | integer or null | number of bits in the raw frame |
//! | `detail` | string or null | `pin_length=4` for pin events (the PIN never leaves the gateway), fault reason for `reader_fault`/`tamper`, the health report (a JSON object, below) for `heartbeat` |
//! | `swiped_at` | string | UTC time of the swipe, RFC 3339 with milliseconds: `2026-11-22T10:15:30.123Z` |
//! | `clock_synced` | boolean | whether the system clock was NTP-synchronised when the swipe was stamped |
//! | `agent_version` | string | agent version that read the swipe |
//!
//! A `heartbeat` row has `reader_id` = `_gateway`, null zone, door, direction and card fields,
//! `swiped_at` = when it was made, `clock_synced` and `agent_version` as for a swipe, and in
//! `detail` a compact JSON object: `buffer_depth` (records not yet committed to Snowflake),
//! `buffer_bytes`, `oldest_unsent_age_s` (null when nothing waits), `skipped_heartbeats` (skipped
//! since the last one sent because the buffer was near full), `readers` (reader id → `up`/`down`)
//! and `readers_down`. The Snowflake model reads these fields (`MON_GATEWAY_HEARTBEATS`).
//!
//! Example line:
//!
//! ```text
//! {"gateway_id":"gw-01","seq":42,"event_id":"gw-01:42","reader_id":"r1","zone_id":"lobby","door_id":"d1","direction":"in","event_type":"card","credential":"H10301:12:3456","format":"H10301","facility_code":12,"card_number":3456,"raw_bits":"0191b00a","bit_count":26,"detail":null,"swiped_at":"2026-11-22T10:15:30.123Z","clock_synced":true,"agent_version":"0.1.0"}
//! ```

use reader_protocol::ReaderEvent;
use serde::{Deserialize, Serialize};

use crate::config::ReaderSpec;

/// The agent version written into every row (`agent_version`).
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// What kind of event a reader reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    /// A card or fob was presented.
    Card,
    /// A PIN was entered (only its length is kept).
    Pin,
    /// The reader reported or exhibited a fault.
    ReaderFault,
    /// The reader's tamper input fired.
    Tamper,
    /// The agent's periodic health report (no swipe; see `service::heartbeat`). Appended last so
    /// records already in a buffer keep their encoding.
    Heartbeat,
}

impl EventType {
    /// The `event_type` value in the row (as serialised).
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Card => "card",
            EventType::Pin => "pin",
            EventType::ReaderFault => "reader_fault",
            EventType::Tamper => "tamper",
            EventType::Heartbeat => "heartbeat",
        }
    }
}

/// The one mapping from a decoded reader event to its row's `event_type`.
impl From<&ReaderEvent> for EventType {
    fn from(event: &ReaderEvent) -> Self {
        match event {
            ReaderEvent::Card(_) => EventType::Card,
            ReaderEvent::Pin(_) => EventType::Pin,
            ReaderEvent::Fault(_) => EventType::ReaderFault,
        }
    }
}

/// Direction of travel through the door, where the reader knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Entering.
    In,
    /// Leaving.
    Out,
}

/// One swipe as a reader produced it; this is what the buffer stores durably.
///
/// The sequence number and gateway id are not part of it: the buffer assigns the sequence number
/// at commit time and the gateway id comes from configuration when the row is rendered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwipeRecord {
    /// Kind of event.
    pub event_type: EventType,
    /// Configured reader id.
    pub reader_id: String,
    /// Configured zone of the reader.
    pub zone_id: Option<String>,
    /// Configured door of the reader.
    pub door_id: Option<String>,
    /// Direction of travel, if known.
    pub direction: Option<Direction>,
    /// Canonical credential string; `None` for pin/fault events.
    pub credential: Option<String>,
    /// Card format name (`H10301`, `EM4100`, `RAW`, …).
    pub format: Option<String>,
    /// Facility / site code where the format has one.
    pub facility_code: Option<u64>,
    /// Card number where the format has one.
    pub card_number: Option<u64>,
    /// Raw frame bits as lower-case hex, MSB first, left-padded to whole bytes.
    pub raw_bits: Option<String>,
    /// Number of bits in the raw frame.
    pub bit_count: Option<u32>,
    /// `pin_length=N` for PIN events, the reason for faults and tamper.
    pub detail: Option<String>,
    /// Time of the swipe, Unix milliseconds (UTC).
    pub swiped_at_ms: i64,
    /// Whether the clock was NTP-synchronised when the swipe was stamped.
    pub clock_synced: bool,
    /// Agent version that read the swipe.
    pub agent_version: String,
}

/// The row sent to Snowflake: a [`SwipeRecord`] plus gateway id and sequence number, serialised
/// with the fields in the documented order.
#[derive(Debug, Serialize)]
pub struct Row<'a> {
    gateway_id: &'a str,
    seq: u64,
    event_id: String,
    reader_id: &'a str,
    zone_id: Option<&'a str>,
    door_id: Option<&'a str>,
    direction: Option<Direction>,
    event_type: EventType,
    credential: Option<&'a str>,
    format: Option<&'a str>,
    facility_code: Option<u64>,
    card_number: Option<u64>,
    raw_bits: Option<&'a str>,
    bit_count: Option<u32>,
    detail: Option<&'a str>,
    swiped_at: String,
    clock_synced: bool,
    agent_version: &'a str,
}

impl<'a> Row<'a> {
    /// Builds the row for `rec` stored under `seq` on gateway `gateway_id`.
    pub fn new(rec: &'a SwipeRecord, gateway_id: &'a str, seq: u64) -> Self {
        Row {
            gateway_id,
            seq,
            event_id: format!("{gateway_id}:{seq}"),
            reader_id: &rec.reader_id,
            zone_id: rec.zone_id.as_deref(),
            door_id: rec.door_id.as_deref(),
            direction: rec.direction,
            event_type: rec.event_type,
            credential: rec.credential.as_deref(),
            format: rec.format.as_deref(),
            facility_code: rec.facility_code,
            card_number: rec.card_number,
            raw_bits: rec.raw_bits.as_deref(),
            bit_count: rec.bit_count,
            detail: rec.detail.as_deref(),
            swiped_at: rfc3339_utc_millis(rec.swiped_at_ms),
            clock_synced: rec.clock_synced,
            agent_version: &rec.agent_version,
        }
    }
}

impl SwipeRecord {
    /// A row without a credential and without a place (zone, door, direction): a heartbeat, or
    /// the base of [`reader_status`](Self::reader_status) and [`from_event`](Self::from_event).
    pub fn status(
        event_type: EventType,
        reader_id: impl Into<String>,
        detail: Option<String>,
        swiped_at_ms: i64,
        clock_synced: bool,
        agent_version: impl Into<String>,
    ) -> Self {
        SwipeRecord {
            event_type,
            reader_id: reader_id.into(),
            zone_id: None,
            door_id: None,
            direction: None,
            credential: None,
            format: None,
            facility_code: None,
            card_number: None,
            raw_bits: None,
            bit_count: None,
            detail,
            swiped_at_ms,
            clock_synced,
            agent_version: agent_version.into(),
        }
    }

    /// A row without a credential from a configured reader (tamper, off line, secure-channel
    /// failure): its id and place, `detail` saying what happened, this agent's version.
    pub fn reader_status(
        spec: &ReaderSpec,
        event_type: EventType,
        detail: String,
        swiped_at_ms: i64,
        clock_synced: bool,
    ) -> Self {
        Self::of_reader(spec, event_type, Some(detail), swiped_at_ms, clock_synced)
    }

    /// The row of an event a configured reader decoded: the credential's fields for a card, the
    /// PIN's length for a PIN (never the digits), the reason for a fault.
    pub fn from_event(
        spec: &ReaderSpec,
        event: &ReaderEvent,
        swiped_at_ms: i64,
        clock_synced: bool,
    ) -> Self {
        let detail = event.detail().map(|d| d.to_string());
        let base = Self::of_reader(spec, event.into(), detail, swiped_at_ms, clock_synced);
        let Some(c) = event.credential() else {
            return base;
        };
        SwipeRecord {
            credential: Some(c.canonical().to_string()),
            format: Some(c.format_name().to_owned()),
            facility_code: c.facility_code().map(u64::from),
            card_number: c.card_number(),
            raw_bits: Some(c.raw_bits_hex().to_string()),
            bit_count: Some(u32::from(c.bit_count())),
            ..base
        }
    }

    fn of_reader(
        spec: &ReaderSpec,
        event_type: EventType,
        detail: Option<String>,
        swiped_at_ms: i64,
        clock_synced: bool,
    ) -> Self {
        SwipeRecord {
            zone_id: spec.zone.clone(),
            door_id: spec.door.clone(),
            direction: spec.direction,
            ..Self::status(
                event_type,
                spec.id.clone(),
                detail,
                swiped_at_ms,
                clock_synced,
                AGENT_VERSION,
            )
        }
    }

    /// Renders the row as one NDJSON line (JSON object followed by `\n`).
    pub fn to_json_line(&self, gateway_id: &str, seq: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(384);
        self.write_json_line(gateway_id, seq, &mut out);
        out
    }

    /// Appends the NDJSON line for this record to `out` (avoids one allocation per row in batches).
    pub fn write_json_line(&self, gateway_id: &str, seq: u64, out: &mut Vec<u8>) {
        // Serialising plain strings, integers and booleans into a Vec cannot fail.
        serde_json::to_writer(&mut *out, &Row::new(self, gateway_id, seq))
            .expect("row serialisation into memory is infallible");
        out.push(b'\n');
    }
}

/// Days since 1970-01-01 → (year, month 1..=12, day 1..=31), proleptic Gregorian calendar.
///
/// Howard Hinnant's `civil_from_days`; valid for the whole i64 millisecond range we can see.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11]
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32; // [1, 31]
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32; // [1, 12]
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Formats Unix milliseconds as RFC 3339 UTC with milliseconds, e.g. `2026-11-22T10:15:30.123Z`.
pub fn rfc3339_utc_millis(unix_ms: i64) -> String {
    let days = unix_ms.div_euclid(86_400_000);
    let ms_of_day = unix_ms.rem_euclid(86_400_000);
    let (y, mo, d) = civil_from_days(days);
    let secs = ms_of_day / 1000;
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60,
        ms_of_day % 1000
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use reader_protocol::wiegand::{decode, FormatChoice};
    use reader_protocol::Bits;

    pub(crate) fn sample() -> SwipeRecord {
        SwipeRecord {
            event_type: EventType::Card,
            reader_id: "r1".into(),
            zone_id: Some("lobby".into()),
            door_id: None,
            direction: Some(Direction::In),
            credential: Some("H10301:12:3456".into()),
            format: Some("H10301".into()),
            facility_code: Some(12),
            card_number: Some(3456),
            raw_bits: Some("0191b00a".into()),
            bit_count: Some(26),
            detail: None,
            swiped_at_ms: 1_795_342_530_123,
            clock_synced: true,
            agent_version: "0.1.0".into(),
        }
    }

    #[test]
    fn card_event_fills_every_credential_field() {
        let bits = Bits::from_bit_str("10111101100010001110101110").unwrap();
        let card = decode(FormatChoice::Auto, bits).unwrap();
        let rec = SwipeRecord::from_event(
            &ReaderSpec::example(),
            &ReaderEvent::Card(card),
            1_700_000_000_123,
            true,
        );
        assert_eq!(rec.event_type, EventType::Card);
        assert_eq!(rec.credential.as_deref(), Some("H10301:123:4567"));
        assert_eq!(rec.format.as_deref(), Some("H10301"));
        assert_eq!(rec.facility_code, Some(123));
        assert_eq!(rec.card_number, Some(4567));
        assert_eq!(rec.raw_bits.as_deref(), Some("02f623ae"));
        assert_eq!(rec.bit_count, Some(26));
        assert_eq!(rec.detail, None);
        assert_eq!(rec.zone_id.as_deref(), Some("z1"));
        assert_eq!(rec.direction, Some(Direction::In));
        assert_eq!(rec.agent_version, AGENT_VERSION);
        let line = String::from_utf8(rec.to_json_line("gw", 7)).unwrap();
        assert!(line.contains("\"event_id\":\"gw:7\""), "{line}");
    }

    #[test]
    fn fault_event_has_a_reason_and_no_credential() {
        // H10301 frame with a flipped parity bit.
        let bits = Bits::from_bit_str("00111101100010001110101110").unwrap();
        let fault = ReaderEvent::from(decode(FormatChoice::Auto, bits).unwrap_err());
        let rec = SwipeRecord::from_event(&ReaderSpec::example(), &fault, 0, false);
        assert_eq!(rec.event_type, EventType::ReaderFault);
        assert_eq!(rec.credential, None);
        assert!(rec.detail.as_deref().unwrap().contains("parity"), "{rec:?}");
        assert!(!rec.clock_synced);
    }

    #[test]
    fn pin_event_keeps_only_the_length() {
        let pin = reader_protocol::wiegand::Pin::from_digits(&[1, 2, 3, 4]).unwrap();
        let rec = SwipeRecord::from_event(&ReaderSpec::example(), &ReaderEvent::Pin(pin), 0, true);
        assert_eq!(rec.event_type, EventType::Pin);
        assert_eq!(rec.detail.as_deref(), Some("pin_length=4"));
        let line = String::from_utf8(rec.to_json_line("gw", 1)).unwrap();
        assert!(
            !line.contains("1234"),
            "the PIN must not leave the gateway: {line}"
        );
    }

    #[test]
    fn reader_status_has_the_readers_place_and_no_credential() {
        let rec = SwipeRecord::reader_status(
            &ReaderSpec::example(),
            EventType::Tamper,
            "cover open".into(),
            9,
            true,
        );
        let line = String::from_utf8(rec.to_json_line("gw", 3)).unwrap();
        let expected = format!(
            r#"{{"gateway_id":"gw","seq":3,"event_id":"gw:3","reader_id":"lobby","zone_id":"z1","door_id":"d1","direction":"in","event_type":"tamper","credential":null,"format":null,"facility_code":null,"card_number":null,"raw_bits":null,"bit_count":null,"detail":"cover open","swiped_at":"1970-01-01T00:00:00.009Z","clock_synced":true,"agent_version":"{AGENT_VERSION}"}}"#
        );
        assert_eq!(line.trim_end(), expected);
    }

    /// The row's `event_type` of a decoded event is the name reader-protocol gives it.
    #[test]
    fn event_types_of_reader_events_agree_with_reader_protocol() {
        let card = decode(
            FormatChoice::Auto,
            Bits::from_bit_str("10111101100010001110101110").unwrap(),
        )
        .unwrap();
        let pin = reader_protocol::wiegand::Pin::from_digits(&[1, 2]).unwrap();
        let fault = ReaderEvent::from(
            decode(
                FormatChoice::Auto,
                Bits::from_bit_str("00111101100010001110101110").unwrap(),
            )
            .unwrap_err(),
        );
        for event in [ReaderEvent::Card(card), ReaderEvent::Pin(pin), fault] {
            assert_eq!(EventType::from(&event).as_str(), event.event_type());
        }
    }

    #[test]
    fn known_dates() {
        assert_eq!(rfc3339_utc_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_utc_millis(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(
            rfc3339_utc_millis(951_782_400_000),
            "2000-02-29T00:00:00.000Z"
        );
        assert_eq!(
            rfc3339_utc_millis(951_868_799_999),
            "2000-02-29T23:59:59.999Z"
        );
        assert_eq!(
            rfc3339_utc_millis(1_709_164_800_001),
            "2024-02-29T00:00:00.001Z"
        );
        assert_eq!(
            rfc3339_utc_millis(4_102_444_800_000),
            "2100-01-01T00:00:00.000Z"
        );
        assert_eq!(
            rfc3339_utc_millis(1_795_342_530_123),
            "2026-11-22T10:15:30.123Z"
        );
        assert_eq!(
            rfc3339_utc_millis(253_402_300_799_999),
            "9999-12-31T23:59:59.999Z"
        );
    }

    #[test]
    fn civil_from_days_round_trips_day_by_day() {
        // Walk 1969..2101 day by day and check month/day arithmetic against a naive counter.
        let mut days: i64 = -365; // 1969-01-01
        for y in 1969..2101i64 {
            let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
            let lens = [
                31,
                if leap { 29 } else { 28 },
                31,
                30,
                31,
                30,
                31,
                31,
                30,
                31,
                30,
                31,
            ];
            for (m, len) in lens.iter().enumerate() {
                for d in 1..=*len {
                    assert_eq!(civil_from_days(days), (y, m as u32 + 1, d));
                    days += 1;
                }
            }
        }
    }

    #[test]
    fn json_line_matches_schema() {
        let line = sample().to_json_line("gw-01", 42);
        assert_eq!(line.last(), Some(&b'\n'));
        let text = std::str::from_utf8(&line).unwrap();
        assert_eq!(text.matches('\n').count(), 1);
        let expected = r#"{"gateway_id":"gw-01","seq":42,"event_id":"gw-01:42","reader_id":"r1","zone_id":"lobby","door_id":null,"direction":"in","event_type":"card","credential":"H10301:12:3456","format":"H10301","facility_code":12,"card_number":3456,"raw_bits":"0191b00a","bit_count":26,"detail":null,"swiped_at":"2026-11-22T10:15:30.123Z","clock_synced":true,"agent_version":"0.1.0"}"#;
        assert_eq!(text.trim_end(), expected);
    }

    #[test]
    fn pin_and_fault_event_types_render_snake_case() {
        let mut r = sample();
        r.event_type = EventType::ReaderFault;
        r.direction = Some(Direction::Out);
        r.credential = None;
        r.detail = Some("timeout".into());
        let v: serde_json::Value = serde_json::from_slice(&r.to_json_line("g", 1)).unwrap();
        assert_eq!(v["event_type"], "reader_fault");
        assert_eq!(v["direction"], "out");
        assert!(v["credential"].is_null());
        assert_eq!(v["detail"], "timeout");
        r.event_type = EventType::Pin;
        let v: serde_json::Value = serde_json::from_slice(&r.to_json_line("g", 1)).unwrap();
        assert_eq!(v["event_type"], "pin");
    }
}
