//! The OSDP control panel, sans-IO: replies built with the `osdp` crate's PD-side encoders are
//! fed in, the packets the CP writes are checked. Interop with an independent PD (LibOSDP) is in
//! `tests/tests/e2e_osdp.rs`.
#![cfg(feature = "osdp")]
#![allow(clippy::unwrap_used)]

use osdp::packet::{Address, ControlByte, CtrlFlags, PacketBuilder, ParsedPacket};
use osdp::Sqn;
use reader_protocol::osdp::{
    describe_packet, BusTiming, ControlPanel, CpEvent, PdSettings, SecureFault, Security,
};

const TIMING: BusTiming = BusTiming {
    poll_interval_ms: 50,
    reply_timeout_ms: 200,
    offline_after_ms: 1000,
    offline_after_tries: 1,
    retry_offline_ms: 500,
};

fn reply(addr: u8, sqn: u8, code: u8, data: &[u8]) -> Vec<u8> {
    PacketBuilder::plain(
        Address::reply(addr).unwrap(),
        ControlByte::new(Sqn::new(sqn).unwrap(), CtrlFlags::USE_CRC),
        code,
        data.to_vec(),
    )
    .encode()
    .unwrap()
}

/// (address, sqn, code) of a packet the CP wrote.
fn sent(bytes: &[u8]) -> (u8, u8, u8) {
    let (p, _) = ParsedPacket::parse(bytes).unwrap();
    (p.addr.pd_addr(), p.ctrl.sqn.value(), p.code)
}

fn plain(address: u8) -> PdSettings {
    PdSettings {
        address,
        security: Security::Plain,
    }
}

const PDID: [u8; 12] = [0x0a, 0x0b, 0x0c, 7, 2, 0x01, 0x10, 0, 0, 1, 2, 3];
/// CRC + LED, no secure channel.
const CAPS_PLAIN: [u8; 6] = [8, 1, 0, 4, 1, 1];

fn events(cp: &mut ControlPanel) -> Vec<CpEvent> {
    std::iter::from_fn(|| cp.poll_event()).collect()
}

/// Runs ID and CAP for a plain PD at `addr`; returns the time reached.
fn bring_up(cp: &mut ControlPanel, addr: u8, mut now: u64) -> u64 {
    let id = cp.poll_transmit(now, [0; 8]).unwrap();
    assert_eq!(sent(&id), (addr, 0, 0x61));
    cp.handle_rx(&reply(addr, 0, 0x45, &PDID), now + 5);
    now += 10;
    let cap = cp.poll_transmit(now, [0; 8]).unwrap();
    assert_eq!(sent(&cap), (addr, 1, 0x62));
    cp.handle_rx(&reply(addr, 1, 0x46, &CAPS_PLAIN), now + 5);
    now + 10
}

#[test]
fn plain_start_up_then_lstat_then_a_card() {
    let mut cp = ControlPanel::new(TIMING, vec![plain(5)]).unwrap();
    let now = bring_up(&mut cp, 5, 0);
    let evs = events(&mut cp);
    assert!(evs.contains(&CpEvent::Online {
        addr: 5,
        secure: false
    }));
    // Tamper/power state is asked for at start-up.
    let lstat = cp.poll_transmit(now, [0; 8]).unwrap();
    assert_eq!(sent(&lstat), (5, 2, 0x64));
    cp.handle_rx(&reply(5, 2, 0x48, &[1, 0]), now + 5);
    assert_eq!(
        events(&mut cp),
        vec![CpEvent::LocalStatus {
            addr: 5,
            tamper: true,
            power_failure: false
        }]
    );
    // Next poll after the interval; SQN wraps 3 → 1 (0 only at start).
    assert_eq!(cp.poll_transmit(now + 10, [0; 8]), None);
    let poll = cp.poll_transmit(now + 60, [0; 8]).unwrap();
    assert_eq!(sent(&poll), (5, 3, 0x60));
    // H10301 123:4567 as osdp_RAW: reader 0, raw Wiegand, 26 bits, MSB first, left-aligned.
    cp.handle_rx(
        &reply(5, 3, 0x50, &[0, 1, 26, 0, 0xbd, 0x88, 0xeb, 0x80]),
        now + 65,
    );
    let evs = events(&mut cp);
    let CpEvent::Card { bits, .. } = &evs[0] else {
        panic!("{evs:?}")
    };
    assert_eq!(bits.bit_string().to_string(), "10111101100010001110101110");
    let next = cp.poll_transmit(now + 200, [0; 8]).unwrap();
    assert_eq!(sent(&next).1, 1, "SQN cycles 1, 2, 3, 1");
}

#[test]
fn a_retry_reuses_the_sqn_and_the_bytes() {
    let mut cp = ControlPanel::new(TIMING, vec![plain(1)]).unwrap();
    let first = cp.poll_transmit(0, [0; 8]).unwrap();
    cp.handle_timeout(150);
    assert_eq!(
        cp.poll_transmit(150, [0; 8]),
        None,
        "one outstanding command"
    );
    cp.handle_timeout(200);
    let again = cp.poll_transmit(200, [0; 8]).unwrap();
    assert_eq!(again, first);
    assert_eq!(cp.link_stats(1).unwrap().retries, 1);

    // A queued command (the LED after a swipe) whose reply is lost is sent again as it was,
    // not replaced by a poll: the PD repeats its reply instead of flashing twice.
    cp.handle_rx(&reply(1, 0, 0x45, &PDID), 205);
    let now = bring_up_cap(&mut cp, 1, 210);
    let lstat = cp.poll_transmit(now, [0; 8]).unwrap();
    cp.handle_rx(&reply(1, sent(&lstat).1, 0x48, &[0, 0]), now + 1);
    let led = reader_protocol::osdp::Feedback {
        led: vec![reader_protocol::osdp::Feedback::green_flash(5)],
        buzzer: None,
    };
    assert_eq!(cp.feedback(1, &led), Ok(true));
    let sent_led = cp.poll_transmit(now + 100, [0; 8]).unwrap();
    assert_eq!(sent(&sent_led).2, 0x69);
    cp.handle_timeout(now + 300);
    let retried = cp.poll_transmit(now + 300, [0; 8]).unwrap();
    assert_eq!(retried, sent_led, "the retry must be the same LED packet");
}

/// CAP for a plain PD whose ID was answered; returns the time reached.
fn bring_up_cap(cp: &mut ControlPanel, addr: u8, now: u64) -> u64 {
    let cap = cp.poll_transmit(now, [0; 8]).unwrap();
    assert_eq!(sent(&cap), (addr, 1, 0x62));
    cp.handle_rx(&reply(addr, 1, 0x46, &CAPS_PLAIN), now + 5);
    now + 10
}

/// What a plain PD with no news answers to `code`: ID, CAP, LSTAT (all clear) or ACK.
fn plain_answer(addr: u8, sqn: u8, code: u8) -> Vec<u8> {
    match code {
        0x61 => reply(addr, sqn, 0x45, &PDID),
        0x62 => reply(addr, sqn, 0x46, &CAPS_PLAIN),
        0x64 => reply(addr, sqn, 0x48, &[0, 0]),
        _ => reply(addr, sqn, 0x40, &[]),
    }
}

#[test]
fn a_silent_pd_goes_off_line_once_and_does_not_stall_the_other() {
    let mut cp = ControlPanel::new(TIMING, vec![plain(1), plain(2)]).unwrap();
    let mut now = 0;
    let mut polls_to_1 = 0;
    let mut offline = Vec::new();
    while now < 3000 {
        cp.handle_timeout(now);
        if let Some(bytes) = cp.poll_transmit(now, [0; 8]) {
            let (addr, sqn, code) = sent(&bytes);
            if addr == 1 {
                // PD 1 answers everything plainly.
                if code == 0x60 {
                    polls_to_1 += 1;
                }
                cp.handle_rx(&plain_answer(1, sqn, code), now + 2);
            }
        }
        offline.extend(
            events(&mut cp)
                .into_iter()
                .filter(|e| matches!(e, CpEvent::Offline { .. })),
        );
        now += 10;
    }
    // 3 s at 50 ms polls would be 60; the silent PD's 200 ms waits take their share.
    assert!(polls_to_1 > 8, "PD 1 starved: {polls_to_1} polls");
    assert!(
        matches!(
            offline.as_slice(),
            [CpEvent::Offline {
                addr: 2,
                was_online: false,
                ..
            }]
        ),
        "{offline:?}"
    );
}

/// A scan must not miss a reader whose first replies are lost or late, and must give up on an
/// empty address after a fixed number of tries.
#[test]
fn a_scan_finds_a_reader_that_answers_late_and_gives_up_on_an_empty_address() {
    let tries = u64::from(BusTiming::scan().offline_after_tries);
    let mut cp = ControlPanel::new(BusTiming::scan(), vec![plain(1), plain(2)]).unwrap();
    let mut sent_to = [0u64; 3];
    let mut evs = Vec::new();
    let mut now = 0;
    while now < 10_000 {
        cp.handle_timeout(now);
        if let Some(bytes) = cp.poll_transmit(now, [0; 8]) {
            let (addr, sqn, code) = sent(&bytes);
            sent_to[usize::from(addr)] += 1;
            // PD 1 answers its last try, late, and then everything; PD 2 is not there.
            if addr == 1 && sent_to[1] >= tries {
                cp.handle_rx(&plain_answer(1, sqn, code), now + 150);
            }
        }
        evs.extend(events(&mut cp));
        now += 10;
    }
    assert!(
        evs.iter()
            .any(|e| matches!(e, CpEvent::Capabilities { addr: 1, .. })),
        "{evs:?}"
    );
    let offline: Vec<_> = evs
        .iter()
        .filter(|e| matches!(e, CpEvent::Offline { .. }))
        .collect();
    assert!(
        matches!(offline.as_slice(), [CpEvent::Offline { addr: 2, .. }]),
        "{offline:?}"
    );
    assert_eq!(sent_to[2], tries, "address 2 polled {} times", sent_to[2]);
}

#[test]
fn a_secure_reader_without_the_capability_is_never_polled_in_plain_text() {
    let key = [7u8; 16];
    let mut cp = ControlPanel::new(
        TIMING,
        vec![PdSettings {
            address: 3,
            security: Security::Secure {
                scbk: key,
                install_mode: false,
            },
        }],
    )
    .unwrap();
    let mut codes = Vec::new();
    let mut faults = Vec::new();
    let mut now = 0;
    while now < 2000 {
        cp.handle_timeout(now);
        if let Some(bytes) = cp.poll_transmit(now, [1; 8]) {
            let (_, sqn, code) = sent(&bytes);
            codes.push(code);
            let answer = match code {
                0x61 => reply(3, sqn, 0x45, &PDID),
                0x62 => reply(3, sqn, 0x46, &CAPS_PLAIN),
                _ => reply(3, sqn, 0x40, &[]),
            };
            cp.handle_rx(&answer, now + 2);
        }
        for e in events(&mut cp) {
            assert!(!matches!(e, CpEvent::Online { .. }), "{e:?}");
            if let CpEvent::SecureFault { fault, .. } = e {
                faults.push(fault);
            }
        }
        now += 10;
    }
    assert!(
        codes.iter().all(|c| matches!(c, 0x61 | 0x62)),
        "only ID/CAP in the clear: {codes:02x?}"
    );
    assert!(faults.iter().all(|f| *f == SecureFault::NotCapable) && !faults.is_empty());
}

#[test]
fn config_errors() {
    assert!(ControlPanel::new(TIMING, vec![plain(1), plain(1)]).is_err());
    assert!(ControlPanel::new(TIMING, vec![plain(127)]).is_err());
}

#[test]
fn describe_shows_plain_and_secure_packets() {
    let raw = reply(5, 3, 0x50, &[0, 1, 26, 0, 0xbd, 0x88, 0xeb, 0x80]);
    let text = describe_packet(&raw).unwrap().to_string();
    assert!(
        text.contains("osdp_RAW") && text.contains("H10301:123:4567"),
        "{text}"
    );
    // A secure POLL (SCS_15, MAC only) as LibOSDP sends it: shown as secure, not decoded.
    let mut scs = PacketBuilder {
        addr: Address::pd(1).unwrap(),
        ctrl: ControlByte::new(
            Sqn::new(2).unwrap(),
            CtrlFlags::USE_CRC | CtrlFlags::HAS_SCB,
        ),
        scb: Some(osdp::packet::Scb::new(osdp::packet::ScsType::Scs17, [])),
        code: 0x69,
        data: vec![0u8; 16],
    }
    .encode_with_mac(|_| [1, 2, 3, 4])
    .unwrap();
    let summary = describe_packet(&scs).unwrap();
    assert_eq!(summary.scs, Some(0x17));
    assert!(summary
        .to_string()
        .contains("cannot be read without the session keys"));
    let last = scs.len() - 1;
    scs[last] ^= 1;
    assert!(describe_packet(&scs).is_err(), "a bad CRC is an error");
}

/// Deterministic xorshift, so a failure reproduces.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// One million arbitrary byte strings through the whole decoding path — the CP's receive side
/// (with a command outstanding, so replies are processed) and the technician's `describe_packet`
/// — without a panic. Half start from a valid reply and are mutated, to get past the CRC.
#[test]
fn a_million_arbitrary_byte_strings_never_panic() {
    let mut rng = Rng(0x5eed_05d9_2026_0001);
    let seeds: Vec<Vec<u8>> = vec![
        reply(1, 1, 0x50, &[0, 1, 26, 0, 0xbd, 0x88, 0xeb, 0x80]),
        reply(1, 1, 0x53, &[0, 4, b'1', b'2', 0x7f, 0x0d]),
        reply(1, 1, 0x48, &[1, 1]),
        reply(1, 1, 0x41, &[6]),
        reply(1, 1, 0x46, &CAPS_PLAIN),
        reply(1, 1, 0x45, &PDID),
        reply(1, 1, 0x76, &[0u8; 32]),
    ];
    let mut cp = ControlPanel::new(TIMING, vec![plain(1)]).unwrap();
    let mut now = 0u64;
    let mut described = 0u32;
    for i in 0..1_000_000u32 {
        let mut input: Vec<u8> = if i.is_multiple_of(2) {
            let seed = &seeds[(rng.next() % seeds.len() as u64) as usize];
            let mut v = seed.clone();
            for _ in 0..(rng.next() % 3) {
                let at = (rng.next() % v.len() as u64) as usize;
                v[at] = rng.next() as u8;
            }
            if rng.next().is_multiple_of(4) {
                v.truncate((rng.next() % v.len() as u64) as usize);
            }
            v
        } else {
            let len = (rng.next() % 48) as usize;
            let mut v: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            if len > 4 && rng.next().is_multiple_of(2) {
                v[0] = 0x53;
                v[2] = len as u8;
                v[3] = 0;
            }
            v
        };
        if i.is_multiple_of(3) {
            // Fix the CRC now and then so the payload decoders run too.
            if input.len() >= 8 && input[0] == 0x53 {
                let n = input.len();
                input[2] = n as u8;
                input[3] = 0;
                input[4] = (input[4] & 0x0b) | 0x04;
                let crc = osdp::packet::crc16(&input[..n - 2]).to_le_bytes();
                input[n - 2] = crc[0];
                input[n - 1] = crc[1];
            }
        }
        if describe_packet(&input).is_ok() {
            described += 1;
        }
        cp.handle_timeout(now);
        let _ = cp.poll_transmit(now, [0; 8]);
        cp.handle_rx(&input, now);
        while cp.poll_event().is_some() {}
        now += 7;
    }
    assert!(
        described > 1000,
        "the mutations should reach the payload decoders: {described}"
    );
}
