//! OSDP readers against an independent implementation: LibOSDP's Python PD (PyPI `libosdp`) on
//! a pseudo-terminal bus.
//!
//! * `cp_*`: our sans-IO control panel (`reader_protocol::osdp::ControlPanel`) driven by a tiny
//!   blocking loop over the pty — protocol conformance without the agent around it.
//! * `agent_*`: the agent binary with `kind = "osdp"` readers, the emulator's ledger as the
//!   judge: every swipe the PD emitted lands exactly once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use badge_tests::osdp_sim::{PdSim, PdSpec};
use reader_protocol::osdp::{BusTiming, ControlPanel, CpEvent, PdSettings, SecureFault, Security};
use reader_protocol::wiegand::{decode, FormatChoice};

const KEY: [u8; 16] = [
    0xa1, 0xb2, 0xc3, 0xd4, 0xe5, 0xf6, 0x07, 0x18, 0x29, 0x3a, 0x4b, 0x5c, 0x6d, 0x7e, 0x8f, 0x90,
];

/// H10301 123:4567.
const H10301: &str = "10111101100010001110101110";

/// A blocking CP loop on the pty.
struct Bus {
    port: File,
    cp: ControlPanel,
    start: Instant,
    events: Vec<CpEvent>,
}

fn open_port(path: &Path) -> File {
    let port = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
        .open(path)
        .unwrap();
    let mut attrs = nix::sys::termios::tcgetattr(&port).unwrap();
    nix::sys::termios::cfmakeraw(&mut attrs);
    nix::sys::termios::tcsetattr(&port, nix::sys::termios::SetArg::TCSANOW, &attrs).unwrap();
    port
}

impl Bus {
    fn new(path: &Path, pds: Vec<PdSettings>) -> Self {
        let timing = BusTiming {
            offline_after_ms: 2000,
            ..BusTiming::default()
        };
        Self {
            port: open_port(path),
            cp: ControlPanel::new(timing, pds).unwrap(),
            start: Instant::now(),
            events: Vec::new(),
        }
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Runs the bus until `done` holds for the events so far; panics after `secs`.
    fn run_until(&mut self, what: &str, secs: u64, done: impl Fn(&[CpEvent]) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut buf = [0u8; 512];
        let mut counter = 0u64;
        while !done(&self.events) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; events: {:#?}",
                self.events
            );
            let now = self.now();
            self.cp.handle_timeout(now);
            counter += 1;
            let rnd = (counter.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ now).to_le_bytes();
            if let Some(bytes) = self.cp.poll_transmit(now, rnd) {
                self.port.write_all(&bytes).unwrap();
            }
            match self.port.read(&mut buf) {
                Ok(n) if n > 0 => self.cp.handle_rx(&buf[..n], self.now()),
                _ => std::thread::sleep(Duration::from_millis(2)),
            }
            while let Some(ev) = self.cp.poll_event() {
                self.events.push(ev);
            }
        }
    }
}

fn is_online(addr: u8, secure: bool) -> impl Fn(&[CpEvent]) -> bool {
    move |evs| evs.iter().any(|e| *e == CpEvent::Online { addr, secure })
}

fn card_credentials(evs: &[CpEvent]) -> Vec<String> {
    evs.iter()
        .filter_map(|e| match e {
            CpEvent::Card { bits, .. } => Some(
                decode(FormatChoice::Auto, *bits)
                    .unwrap()
                    .canonical()
                    .to_string(),
            ),
            _ => None,
        })
        .collect()
}

fn scratch_link(dir: &tempfile::TempDir) -> std::path::PathBuf {
    dir.path().join("usb-RS485-if00-port0")
}

#[test]
fn cp_plain_card_read() {
    let dir = tempfile::tempdir().unwrap();
    let mut sim = PdSim::start(&scratch_link(&dir), &[PdSpec::plain(1)]).unwrap();
    let mut bus = Bus::new(
        sim.device(),
        vec![PdSettings {
            address: 1,
            security: Security::Plain,
        }],
    );
    bus.run_until("PD 1 on line in plain text", 20, is_online(1, false));
    sim.card(1, H10301);
    bus.run_until("the card", 10, |e| !card_credentials(e).is_empty());
    assert_eq!(card_credentials(&bus.events), vec!["H10301:123:4567"]);
}

#[test]
fn cp_secure_card_read() {
    let dir = tempfile::tempdir().unwrap();
    let mut sim = PdSim::start(&scratch_link(&dir), &[PdSpec::secure(1, &KEY)]).unwrap();
    let mut bus = Bus::new(
        sim.device(),
        vec![PdSettings {
            address: 1,
            security: Security::Secure {
                scbk: KEY,
                install_mode: false,
            },
        }],
    );
    bus.run_until("PD 1 on line, secure", 20, is_online(1, true));
    assert_eq!(
        sim.state(1),
        (true, true),
        "the PD must see the secure channel up"
    );
    sim.card(1, H10301);
    bus.run_until("the card", 10, |e| !card_credentials(e).is_empty());
    assert_eq!(card_credentials(&bus.events), vec!["H10301:123:4567"]);
}

#[test]
fn cp_wrong_key_is_a_fault_and_nothing_is_decoded() {
    let dir = tempfile::tempdir().unwrap();
    let mut sim = PdSim::start(&scratch_link(&dir), &[PdSpec::secure(1, &KEY)]).unwrap();
    let mut wrong = KEY;
    wrong[0] ^= 1;
    let mut bus = Bus::new(
        sim.device(),
        vec![PdSettings {
            address: 1,
            security: Security::Secure {
                scbk: wrong,
                install_mode: false,
            },
        }],
    );
    bus.run_until("a wrong-key fault", 20, |e| {
        e.contains(&CpEvent::SecureFault {
            addr: 1,
            fault: SecureFault::WrongKey,
        })
    });
    sim.card(1, H10301);
    // Keep the bus running a while: nothing may come on line or be decoded.
    let until = Instant::now() + Duration::from_secs(3);
    bus.run_until("three seconds", 10, |_| Instant::now() >= until);
    assert!(card_credentials(&bus.events).is_empty(), "{:?}", bus.events);
    assert!(
        !bus.events
            .iter()
            .any(|e| matches!(e, CpEvent::Online { .. })),
        "{:?}",
        bus.events
    );
}
