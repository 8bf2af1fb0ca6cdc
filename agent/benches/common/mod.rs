//! Shared by the agent's benchmarks: a realistic swipe record and percentiles.
#![allow(dead_code)]

use std::time::Duration;

use badge_agent::row::{EventType, SwipeRecord};

/// A card swipe as a lobby reader produces it; `n` varies the card number.
pub fn swipe(n: u64) -> SwipeRecord {
    SwipeRecord {
        event_type: EventType::Card,
        reader_id: "reader-lobby-1".into(),
        zone_id: Some("lobby".into()),
        door_id: Some("door-1".into()),
        direction: None,
        credential: Some(format!("H10301:17:{}", n % 65_536)),
        format: Some("H10301".into()),
        facility_code: Some(17),
        card_number: Some(n % 65_536),
        raw_bits: Some("02a1b3c4".into()),
        bit_count: Some(26),
        detail: None,
        swiped_at_ms: 1_800_000_000_000 + n as i64,
        clock_synced: true,
        agent_version: env!("CARGO_PKG_VERSION").into(),
    }
}

/// The `p` quantile (0..=1) of sorted durations.
pub fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Milliseconds, for printing.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
