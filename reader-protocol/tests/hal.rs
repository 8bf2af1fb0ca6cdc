//! The `hal` feature: the assembler driven by polling two embedded-hal 1.0 input pins.
#![cfg(feature = "hal")]
#![allow(clippy::unwrap_used)]

use std::cell::Cell;
use std::rc::Rc;

use embedded_hal::digital::{ErrorKind, ErrorType, InputPin};
use reader_protocol::wiegand::hal::{HalWiegand, PinError};
use reader_protocol::wiegand::{decode, AssemblerConfig, FormatChoice, FrameError};

/// A pin whose level the test drives through a shared cell; can be told to fail.
#[derive(Clone)]
struct MockPin {
    low: Rc<Cell<bool>>,
    fail: Rc<Cell<bool>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MockError;

impl embedded_hal::digital::Error for MockError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Other
    }
}

impl ErrorType for MockPin {
    type Error = MockError;
}

impl InputPin for MockPin {
    fn is_high(&mut self) -> Result<bool, MockError> {
        self.is_low().map(|l| !l)
    }
    fn is_low(&mut self) -> Result<bool, MockError> {
        if self.fail.get() {
            Err(MockError)
        } else {
            Ok(self.low.get())
        }
    }
}

fn pin() -> MockPin {
    MockPin {
        low: Rc::new(Cell::new(false)),
        fail: Rc::new(Cell::new(false)),
    }
}

const US: u64 = 1_000;

/// Simulates a microcontroller loop polling every 10 µs while the reader sends `bits`
/// (50 µs pulses, 1 ms apart), then idles for `idle_us`. Returns the completed frames.
fn send(
    hal: &mut HalWiegand<MockPin, MockPin>,
    d0: &MockPin,
    d1: &MockPin,
    bits: &str,
    t: &mut u64,
    overlap_at: Option<usize>,
) -> Vec<reader_protocol::wiegand::FrameResult> {
    let mut out = Vec::new();
    for (i, c) in bits.chars().enumerate() {
        let line = if c == '1' { d1 } else { d0 };
        for step in 0..100 {
            // Pulse low for the first 50 µs of each 1 ms bit period.
            line.low.set(step < 5);
            if overlap_at == Some(i) {
                let other = if c == '1' { d0 } else { d1 };
                other.low.set(step == 2);
            }
            out.extend(hal.poll(*t).unwrap());
            *t += 10 * US;
        }
    }
    for _ in 0..4_000 {
        out.extend(hal.poll(*t).unwrap());
        *t += 10 * US;
    }
    out
}

#[test]
fn polled_pins_assemble_frames() {
    let (d0, d1) = (pin(), pin());
    let mut hal = HalWiegand::new(d0.clone(), d1.clone(), AssemblerConfig::default());
    let mut t = 0;
    let out = send(
        &mut hal,
        &d0,
        &d1,
        "10111101100010001110101110",
        &mut t,
        None,
    );
    assert_eq!(out.len(), 1);
    let frame = out[0].unwrap();
    let card = decode(FormatChoice::Auto, frame.bits).unwrap();
    assert_eq!(card.canonical().to_string(), "H10301:123:4567");

    // Both lines low during a pulse: the frame is rejected.
    let out = send(
        &mut hal,
        &d0,
        &d1,
        "00101101000000001010001000",
        &mut t,
        Some(5),
    );
    assert_eq!(out, [Err(FrameError::BothLinesLow)]);

    // And the next clean frame decodes again.
    let out = send(
        &mut hal,
        &d0,
        &d1,
        "00101101000000001010001000",
        &mut t,
        None,
    );
    assert_eq!(
        decode(FormatChoice::Auto, out[0].unwrap().bits)
            .unwrap()
            .canonical()
            .to_string(),
        "H10301:90:324"
    );
    assert_eq!(hal.assembler().stats().frames, 2);
}

#[test]
fn pin_errors_are_reported() {
    let (d0, d1) = (pin(), pin());
    let mut hal = HalWiegand::new(d0.clone(), d1.clone(), AssemblerConfig::default());
    d1.fail.set(true);
    assert_eq!(hal.poll(0), Err(PinError::D1(MockError)));
    d1.fail.set(false);
    d0.fail.set(true);
    assert_eq!(hal.poll(1), Err(PinError::D0(MockError)));
    let (_a, _b) = hal.release();
}

/// 200,000 polls with random pin levels and random time steps (a noisy or unplugged reader):
/// no panic, every frame within 128 bits, and the filter both passes and rejects frames.
#[test]
fn fuzz_random_levels_without_panic() {
    let (d0, d1) = (pin(), pin());
    let mut hal = HalWiegand::new(d0.clone(), d1.clone(), AssemblerConfig::default());
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let (mut t, mut ok, mut bad) = (0u64, 0u32, 0u32);
    for _ in 0..200_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // Mostly idle, sometimes one line low, rarely both.
        let state = x % 400;
        d0.low.set(state < 60 || state == 399);
        d1.low.set((60..120).contains(&state) || state == 399);
        t += if (x >> 40).is_multiple_of(40) {
            40_000_000
        } else {
            (x >> 20) % 3_000_000
        };
        match hal.poll(t).unwrap() {
            Some(Ok(f)) => {
                assert!(f.bits.len() <= 128);
                ok += 1;
            }
            Some(Err(_)) => bad += 1,
            None => {}
        }
    }
    assert!(ok > 0 && bad > 0, "ok {ok} bad {bad}");
}
