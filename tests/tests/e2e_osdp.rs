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
    move |evs| evs.contains(&CpEvent::Online { addr, secure })
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

// ---------------------------------------------------------------------------------------------
// The agent with `kind = "osdp"` readers, judged by the emulator's ledger.

use badge_tests::harness::{terminate, Rig, GATEWAY};
use reader_protocol::wiegand::Format;
use reader_protocol::CardFields;
use serde_json::{json, Value};
use std::collections::BTreeSet;

fn key_file(dir: &Path, name: &str, key: &[u8; 16]) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("{}\n", badge_tests::osdp_sim::hex(key))).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

fn bits_of(format: Format, facility: Option<u32>, card: u64) -> (String, String) {
    let bits = format
        .encode(CardFields {
            oem: None,
            facility,
            card_number: Some(card),
        })
        .unwrap();
    let credential = decode(FormatChoice::Auto, bits)
        .unwrap()
        .canonical()
        .to_string();
    (bits.bit_string().to_string(), credential)
}

fn osdp_reader(id: &str, device: &Path, address: u8, extra: &str) -> String {
    format!(
        "[[reader]]\nid = \"{id}\"\nkind = \"osdp\"\ndevice = \"{}\"\naddress = {address}\nzone = \"lobby\"\ndoor = \"d{address}\"\ndirection = \"in\"\npoll_interval_ms = 20\noffline_after_ms = 1500\n{extra}",
        device.display()
    )
}

fn rows(rig: &Rig) -> Vec<Value> {
    rig.emulator
        .ledger(GATEWAY)
        .into_iter()
        .map(|r| r.row)
        .collect()
}

fn rows_of(rig: &Rig, reader: &str, event_type: &str) -> Vec<Value> {
    rows(rig)
        .into_iter()
        .filter(|r| r["reader_id"] == reader && r["event_type"] == event_type)
        .collect()
}

fn has_detail(rig: &Rig, reader: &str, event_type: &str, needle: &str) -> bool {
    rows_of(rig, reader, event_type)
        .iter()
        .any(|r| r["detail"].as_str().unwrap_or_default().contains(needle))
}

/// Every swipe the PDs emitted, exactly once, and nothing else with a credential.
fn assert_exactly_once(rig: &Rig, presented: &BTreeSet<String>) {
    let (credentials, event_ids) = rig.committed();
    let distinct: BTreeSet<_> = event_ids.iter().collect();
    assert_eq!(distinct.len(), event_ids.len(), "duplicate event ids");
    let committed: BTreeSet<String> = credentials.iter().cloned().collect();
    assert_eq!(
        credentials.len(),
        committed.len(),
        "a swipe committed twice: {credentials:?}"
    );
    assert_eq!(
        &committed, presented,
        "committed cards differ from what the PDs sent"
    );
}

#[test]
fn agent_two_readers_on_one_bus_secure_and_plain() {
    let scratch = tempfile::tempdir().unwrap();
    let link = scratch_link(&scratch);
    let key = key_file(scratch.path(), "door1.key", &KEY);
    let mut sim = PdSim::start(&link, &[PdSpec::secure(1, &KEY), PdSpec::plain(2)]).unwrap();
    let readers = format!(
        "{}{}",
        osdp_reader(
            "door-1",
            &link,
            1,
            &format!(
                "key_file = \"{}\"\nfeedback_led = true\nfeedback_beep = true\n",
                key.display()
            )
        ),
        osdp_reader("door-2", &link, 2, "")
    );
    let rig = Rig::new(
        env!("CARGO_BIN_EXE_badge-agent-e2e"),
        &readers,
        Duration::from_millis(50),
    )
    .unwrap();
    let mut agent = rig.start_agent().unwrap();
    rig.wait_for("both readers on line", || {
        let log = rig.agent_log();
        log.matches("osdp reader on line").count() >= 2
    });
    assert_eq!(
        sim.state(1),
        (true, true),
        "reader 1 must run the secure channel"
    );
    assert_eq!(sim.state(2), (true, false), "reader 2 runs plain text");

    // Cards of several formats on both readers.
    let cards = [
        bits_of(Format::H10301, Some(123), 4567),
        bits_of(Format::H10306, Some(40000), 12345),
        bits_of(Format::C1k35, Some(1234), 567_890),
        bits_of(Format::H10304, Some(999), 300_000),
    ];
    let mut presented = BTreeSet::new();
    for (i, (bits, credential)) in cards.iter().enumerate() {
        let addr = if i % 2 == 0 { 1 } else { 2 };
        sim.card(addr, bits);
        presented.insert(credential.clone());
        std::thread::sleep(Duration::from_millis(100));
    }
    // A raw 40-bit frame no table format matches passes through as RAW40.
    sim.card(2, "1010101010101010101010101010101010101010");
    presented.insert("RAW40:aaaaaaaaaa".to_owned());
    rig.wait_for("the cards to be committed", || {
        rig.committed().0.len() >= presented.len()
    });

    // LED (LibOSDP command 2) and buzzer (3) on reader 1 (feedback on) after its durable swipes;
    // none on reader 2.
    sim.wait_event("LED command on PD 1", Duration::from_secs(10), |e| {
        e["ev"] == "command" && e["addr"] == 1 && e["cmd"]["command"] == 2
    });
    sim.wait_event("buzzer command on PD 1", Duration::from_secs(10), |e| {
        e["ev"] == "command" && e["addr"] == 1 && e["cmd"]["command"] == 3
    });
    let led = sim
        .commands(1)
        .into_iter()
        .find(|c| c["command"] == 2)
        .unwrap();
    assert_eq!(
        (led["on_color"].as_u64(), led["temporary"].as_bool()),
        (Some(2), Some(true)),
        "a green flash: {led}"
    );
    assert!(
        sim.commands(2)
            .iter()
            .all(|c| c["command"] != 2 && c["command"] != 3),
        "feedback is off by default: {:?}",
        sim.commands(2)
    );

    // Keypad PIN on reader 2.
    sim.op(json!({"op": "keys", "addr": 2, "keys": "4711#"}));
    rig.wait_for("the PIN row", || !rows_of(&rig, "door-2", "pin").is_empty());
    let pin = &rows_of(&rig, "door-2", "pin")[0];
    assert_eq!(pin["detail"], "pin_length=4");
    assert!(
        !pin.to_string().contains("4711"),
        "the PIN must not leave the gateway"
    );

    // Tamper and power on reader 1.
    sim.op(json!({"op": "status", "addr": 1, "tamper": 1, "power": 0}));
    rig.wait_for("the tamper row", || {
        has_detail(&rig, "door-1", "tamper", "tamper switch opened")
    });
    sim.op(json!({"op": "status", "addr": 1, "tamper": 0, "power": 1}));
    rig.wait_for("the power row", || {
        has_detail(&rig, "door-1", "reader_fault", "power failure")
            && has_detail(&rig, "door-1", "tamper", "closed again")
    });

    // Reader 2's cable cut and reconnected; reader 1 keeps working meanwhile.
    sim.op(json!({"op": "unplug", "addr": 2}));
    rig.wait_for("the offline row", || {
        has_detail(&rig, "door-2", "reader_fault", "off line")
    });
    let (bits, credential) = bits_of(Format::H10301, Some(7), 7777);
    sim.card(1, &bits);
    presented.insert(credential);
    sim.op(json!({"op": "plug", "addr": 2}));
    rig.wait_for("the back-online row", || {
        has_detail(&rig, "door-2", "reader_fault", "back on line")
    });
    let (bits, credential) = bits_of(Format::H10301, Some(8), 8888);
    sim.card(2, &bits);
    presented.insert(credential);
    rig.wait_for("every card committed", || {
        rig.committed().0.len() >= presented.len()
    });
    std::thread::sleep(Duration::from_millis(500));
    terminate(&mut agent).unwrap();
    assert_exactly_once(&rig, &presented);
    assert_eq!(rig.acknowledged().unwrap(), presented);
    // Card rows carry the reader's zone/door/direction.
    let row = rows_of(&rig, "door-1", "card").into_iter().next().unwrap();
    assert_eq!(
        (row["zone_id"].as_str(), row["door_id"].as_str()),
        (Some("lobby"), Some("d1"))
    );
}

#[test]
fn agent_wrong_key_is_a_fault_row_and_nothing_is_decoded() {
    let scratch = tempfile::tempdir().unwrap();
    let link = scratch_link(&scratch);
    let mut wrong = KEY;
    wrong[15] ^= 0x55;
    let key = key_file(scratch.path(), "door1.key", &wrong);
    let mut sim = PdSim::start(&link, &[PdSpec::secure(1, &KEY)]).unwrap();
    let rig = Rig::new(
        env!("CARGO_BIN_EXE_badge-agent-e2e"),
        &osdp_reader(
            "door-1",
            &link,
            1,
            &format!("key_file = \"{}\"\n", key.display()),
        ),
        Duration::from_millis(50),
    )
    .unwrap();
    let mut agent = rig.start_agent().unwrap();
    rig.wait_for("the wrong-key fault row", || {
        has_detail(
            &rig,
            "door-1",
            "reader_fault",
            "differs from the configured key",
        )
    });
    sim.card(1, H10301);
    std::thread::sleep(Duration::from_secs(3));
    terminate(&mut agent).unwrap();
    assert!(
        rows_of(&rig, "door-1", "card").is_empty(),
        "{:?}",
        rows(&rig)
    );
    assert!(!sim.state(1).1, "no secure channel may be up");
    // One row for the failure, not one per retry.
    assert_eq!(
        rows_of(&rig, "door-1", "reader_fault").len(),
        1,
        "{:?}",
        rows(&rig)
    );
    assert!(
        !rig.agent_log()
            .contains(&badge_tests::osdp_sim::hex(&wrong)),
        "key in the log"
    );
}

#[test]
fn agent_install_mode_sets_the_key_then_runs_secure() {
    let scratch = tempfile::tempdir().unwrap();
    let link = scratch_link(&scratch);
    let key = key_file(scratch.path(), "door1.key", &KEY);
    let mut sim = PdSim::start(&link, &[PdSpec::install(1)]).unwrap();
    let rig = Rig::new(
        env!("CARGO_BIN_EXE_badge-agent-e2e"),
        &osdp_reader(
            "door-1",
            &link,
            1,
            &format!("key_file = \"{}\"\ninstall_mode = true\n", key.display()),
        ),
        Duration::from_millis(50),
    )
    .unwrap();
    let mut agent = rig.start_agent().unwrap();
    let keyset = sim.wait_event("KEYSET on the PD", Duration::from_secs(30), |e| {
        e["ev"] == "command" && e["cmd"]["command"] == 5
    });
    assert_eq!(
        keyset["cmd"]["data"].as_str().map(str::to_owned),
        Some(badge_tests::osdp_sim::hex(&KEY)),
        "{keyset}"
    );
    rig.wait_for("the reader on line", || {
        rig.agent_log().contains("osdp reader on line")
    });
    assert_eq!(sim.state(1), (true, true));
    sim.card(1, H10301);
    rig.wait_for("the card", || !rig.committed().0.is_empty());
    terminate(&mut agent).unwrap();
    assert_exactly_once(&rig, &BTreeSet::from(["H10301:123:4567".to_owned()]));
}

/// The technician's tools against LibOSDP PDs: `osdp scan` lists who answers, `osdp set-key`
/// provisions a reader in install mode, after which the reader runs the secure channel with it.
#[test]
fn cli_scan_and_set_key() {
    let scratch = tempfile::tempdir().unwrap();
    let link = scratch_link(&scratch);
    let key = key_file(scratch.path(), "door.key", &KEY);
    let mut sim = PdSim::start(&link, &[PdSpec::install(1), PdSpec::plain(2)]).unwrap();
    let agent = env!("CARGO_BIN_EXE_badge-agent-e2e");
    let scan = std::process::Command::new(agent)
        // LibOSDP's Python PDs answer late when the machine is busy (CI runs tests in parallel).
        .args([
            "osdp",
            "scan",
            "--addresses",
            "1-3",
            "--reply-timeout-ms",
            "1000",
        ])
        .arg("--device")
        .arg(&link)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&scan.stdout);
    assert!(
        scan.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&scan.stderr)
    );
    // LibOSDP PDs always advertise the secure channel (function 9), also when run plain.
    assert!(out.contains("address 1: secure channel supported"), "{out}");
    assert!(out.contains("address 2: vendor c2b1a0 model 7"), "{out}");
    assert!(out.contains("2 reader(s) found"), "{out}");
    assert!(!out.contains("address 3"), "{out}");

    let set = std::process::Command::new(agent)
        .args(["osdp", "set-key", "--address", "1", "--new-key-file"])
        .arg(&key)
        .arg("--device")
        .arg(&link)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&set.stdout);
    assert!(
        set.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&set.stderr)
    );
    assert!(out.contains("took the new key"), "{out}");
    let keyset = sim.wait_event("KEYSET on PD 1", Duration::from_secs(5), |e| {
        e["ev"] == "command" && e["addr"] == 1 && e["cmd"]["command"] == 5
    });
    assert_eq!(keyset["cmd"]["data"], badge_tests::osdp_sim::hex(&KEY));
    // A control panel with only the new key now gets the secure channel.
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
    bus.run_until("PD 1 secure with the new key", 20, is_online(1, true));
}
