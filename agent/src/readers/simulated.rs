//! A simulated reader: H10301 badges at a steady rate, for the demo and tests.
//!
//! Card numbers cycle through `1..=population` from a start derived from the reader id, so a
//! run is reproducible and the same badge does not come back within the dedup window unless
//! the rate is extreme.

use std::time::Duration;

use reader_protocol::wiegand::{Format, FormatChoice};
use reader_protocol::{CardFields, Credential, ReaderEvent};
use tokio::sync::watch;

use super::Emitter;
use crate::clock;

/// What the simulated reader produces.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Script {
    /// Swipes per second.
    pub rate_per_sec: f64,
    /// Stop after this many swipes (`None`: run until shutdown).
    pub count: Option<u64>,
    /// Facility code of every card.
    pub facility: u32,
    /// Distinct card numbers.
    pub population: u32,
}

/// The H10301 card with the given facility code and number (encoded, then decoded, so it
/// carries real raw bits and parity).
pub fn card(facility: u32, number: u64) -> Option<Credential> {
    let bits = Format::H10301
        .encode(CardFields {
            oem: None,
            facility: Some(facility),
            card_number: Some(number),
        })
        .ok()?;
    reader_protocol::wiegand::decode(FormatChoice::Fixed(Format::H10301), bits).ok()
}

/// The `n`-th card number of a reader's cycle.
pub fn card_number(reader_id: &str, population: u32, n: u64) -> u64 {
    // FNV-1a of the id: a stable start per reader so two simulated readers differ.
    let start = reader_id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (start.wrapping_add(n) % u64::from(population.max(1))) + 1
}

/// Runs the simulated reader until its count is reached or shutdown.
pub async fn run(mut emitter: Emitter, script: Script, mut shutdown: watch::Receiver<bool>) {
    emitter.set_connected(true, None);
    let period = Duration::from_secs_f64(1.0 / script.rate_per_sec);
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n = 0_u64;
    while script.count.is_none_or(|count| n < count) {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => break,
        }
        if *shutdown.borrow() {
            break;
        }
        let number = card_number(emitter.reader_id(), script.population, n);
        n += 1;
        match card(script.facility, number) {
            Some(card) => {
                emitter
                    .emit(ReaderEvent::Card(card), clock::monotonic_ns())
                    .await;
            }
            None => {
                emitter.count_error("config", "simulated card does not fit H10301");
                break;
            }
        }
    }
    // Stay registered (and beating) until shutdown so liveness does not flag a finished script.
    while !*shutdown.borrow() {
        emitter.beat();
        tokio::select! {
            () = tokio::time::sleep(super::IDLE_TICK) => {}
            _ = shutdown.changed() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn cards_are_valid_h10301() {
        let c = card(42, 1234).unwrap();
        assert_eq!(c.canonical().to_string(), "H10301:42:1234");
        assert_eq!(c.bit_count(), 26);
        assert!(card(300, 1).is_none(), "facility over 255 does not fit");
    }

    #[test]
    fn numbers_cycle_through_the_population() {
        let seen: std::collections::BTreeSet<_> =
            (0..10).map(|n| card_number("door", 10, n)).collect();
        assert_eq!(seen, (1..=10).collect());
        assert_ne!(card_number("a", 1000, 0), card_number("b", 1000, 0));
    }
}
