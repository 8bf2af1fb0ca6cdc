//! The control-panel scheduler: per-PD link state machines sharing one half-duplex bus.

use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use ::osdp::command::{
    led::LedRecord, BuzzerControl, BuzzerTone, Cap, Command, Id, KeySet, LedControl, Poll,
};
use ::osdp::packet::{Address, ControlByte, CtrlFlags, PacketBuilder, ParsedPacket, Scb, ScsType};
use ::osdp::reply::{Reply, ReplyCode};
use ::osdp::secure::session::{Challenged, Cryptogrammed, Disconnected, Secure, Session};
use ::osdp::secure::{seal, unseal, Direction};
use ::osdp::Sqn;

use super::{Bits, SCBK_DEFAULT};
use crate::wiegand::Key;

/// Bus timing, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BusTiming {
    /// A PD that is on line is polled this often.
    pub poll_interval_ms: u64,
    /// A command without a reply after this long is sent again (same SQN).
    pub reply_timeout_ms: u64,
    /// A PD without a valid reply for this long is off line …
    pub offline_after_ms: u64,
    /// … once it has also left this many commands in a row unanswered (on a bus with silent
    /// PDs, their timeouts space out each PD's tries).
    pub offline_after_tries: u32,
    /// An off-line PD (or one whose secure channel failed) is tried again after this long.
    pub retry_offline_ms: u64,
}

impl Default for BusTiming {
    /// The spec's figures: 200 ms reply delay, 8 s off-line threshold; polls every 50 ms.
    fn default() -> Self {
        Self {
            poll_interval_ms: 50,
            reply_timeout_ms: 200,
            offline_after_ms: 8000,
            offline_after_tries: 1,
            retry_offline_ms: 1000,
        }
    }
}

impl BusTiming {
    /// For a technician's scan of a bus: the spec's 200 ms reply delay, and an address counts
    /// as empty only after 3 unanswered polls, so one late or garbled reply does not hide a
    /// reader. Empty addresses are not tried again.
    pub const fn scan() -> Self {
        Self {
            poll_interval_ms: 50,
            reply_timeout_ms: 200,
            offline_after_ms: 0,
            offline_after_tries: 3,
            retry_offline_ms: u64::MAX,
        }
    }
}

/// How the CP talks to one PD.
#[derive(Clone, PartialEq, Eq)]
pub enum Security {
    /// Plain text (no secure channel).
    Plain,
    /// Secure channel with this SCBK; never falls back to plain text.
    Secure {
        /// The reader's secure channel base key.
        scbk: [u8; 16],
        /// When the key is refused, try the default install key and, if that works, give the
        /// reader `scbk` with `osdp_KEYSET`.
        install_mode: bool,
    },
}

impl fmt::Debug for Security {
    // Keys never reach a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Plain => f.write_str("Plain"),
            Self::Secure { install_mode, .. } => f
                .debug_struct("Secure")
                .field("scbk", &"<redacted>")
                .field("install_mode", install_mode)
                .finish(),
        }
    }
}

/// One PD on the bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PdSettings {
    /// Address 0x00–0x7E.
    pub address: u8,
    /// Plain or secure.
    pub security: Security,
}

/// Why a secure channel could not be used. Each is a fault: the PD is not polled in plain text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecureFault {
    /// The PD's capabilities do not include AES-128 secure channel.
    NotCapable,
    /// The PD's cryptogram does not match our key (wrong SCBK).
    WrongKey,
    /// The PD accepted the challenge but its initial R-MAC is wrong.
    BadRmac,
    /// The PD refused the handshake with this NAK code.
    Refused(u8),
    /// A reply on the secure channel failed its MAC or decryption.
    MacMismatch,
    /// A reply came in plain text while the secure channel was up.
    PlainReply,
}

impl fmt::Display for SecureFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotCapable => f.write_str(
                "reader does not offer the secure channel; refusing to run it in plain text",
            ),
            Self::WrongKey => f.write_str(
                "secure channel refused: the reader's key differs from the configured key file",
            ),
            Self::BadRmac => f.write_str("secure channel refused: bad initial R-MAC from reader"),
            Self::Refused(code) => write!(
                f,
                "secure channel refused by the reader: NAK {code} ({})",
                super::nak_reason(*code)
            ),
            Self::MacMismatch => {
                f.write_str("secure channel MAC check failed; link dropped and restarted")
            }
            Self::PlainReply => f.write_str(
                "reader answered in plain text on a secure channel; link dropped and restarted",
            ),
        }
    }
}

impl SecureFault {
    /// A short stable code for metrics (`not_capable`, `wrong_key`, …).
    pub const fn kind(&self) -> &'static str {
        match self {
            Self::NotCapable => "not_capable",
            Self::WrongKey => "wrong_key",
            Self::BadRmac => "bad_rmac",
            Self::Refused(_) => "refused",
            Self::MacMismatch => "mac_mismatch",
            Self::PlainReply => "plain_reply",
        }
    }
}

/// What `osdp_PDID` said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PdIdentity {
    /// IEEE OUI of the vendor.
    pub vendor: [u8; 3],
    /// Model number.
    pub model: u8,
    /// Model version.
    pub version: u8,
    /// Serial number.
    pub serial: u32,
    /// Firmware major, minor, build.
    pub firmware: [u8; 3],
}

/// Something that happened on the bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CpEvent {
    /// The PD completed start-up (and the secure channel, if configured) and is polled.
    Online {
        /// PD address.
        addr: u8,
        /// The secure channel is up.
        secure: bool,
    },
    /// The PD stopped answering.
    Offline {
        /// PD address.
        addr: u8,
        /// It had been on line (false: it never answered since start or the last outage).
        was_online: bool,
        /// How long it has been silent.
        silent_ms: u64,
    },
    /// `osdp_PDID`.
    Identified {
        /// PD address.
        addr: u8,
        /// The identity.
        id: PdIdentity,
    },
    /// `osdp_PDCAP` as `(function, compliance, count)` triples.
    Capabilities {
        /// PD address.
        addr: u8,
        /// The records.
        caps: Vec<(u8, u8, u8)>,
    },
    /// `osdp_RAW`: a card's bits, MSB first as on the Wiegand wire.
    Card {
        /// PD address.
        addr: u8,
        /// Reader number on the PD.
        reader: u8,
        /// 0 raw unspecified, 1 raw Wiegand.
        format_code: u8,
        /// The bits.
        bits: Bits,
    },
    /// `osdp_RAW` whose bit count or data length is unusable.
    BadCard {
        /// PD address.
        addr: u8,
        /// Bit count claimed.
        bit_count: u16,
        /// Data bytes present.
        bytes: usize,
    },
    /// `osdp_FMT` (deprecated): card data as ASCII.
    CardText {
        /// PD address.
        addr: u8,
        /// The characters (non-printable ones dropped).
        text: String,
    },
    /// `osdp_KEYPAD` keys in order (`*`/clear = [`Key::Star`], `#`/enter = [`Key::Hash`]).
    Keys {
        /// PD address.
        addr: u8,
        /// The keys.
        keys: Vec<Key>,
    },
    /// `osdp_LSTATR`.
    LocalStatus {
        /// PD address.
        addr: u8,
        /// Tamper switch open.
        tamper: bool,
        /// Power failure.
        power_failure: bool,
    },
    /// `osdp_NAK` to a command.
    Nak {
        /// PD address.
        addr: u8,
        /// The command it refused.
        command: u8,
        /// The NAK code.
        code: u8,
    },
    /// `osdp_ACK` to a queued command (LED, buzzer, KEYSET, …).
    CommandAck {
        /// PD address.
        addr: u8,
        /// The command code.
        command: u8,
    },
    /// The secure channel could not be used.
    SecureFault {
        /// PD address.
        addr: u8,
        /// Why.
        fault: SecureFault,
    },
    /// The PD took our key with `osdp_KEYSET` (install mode); the channel restarts with it.
    KeySet {
        /// PD address.
        addr: u8,
    },
    /// A reply that decoded to nothing we understand (counted, no row).
    BadReply {
        /// PD address.
        addr: u8,
        /// Reply code.
        code: u8,
    },
}

/// Coarse link state, for status and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// Start-up (ID, CAP).
    Starting,
    /// Secure-channel handshake under way.
    Handshake,
    /// Polled in plain text.
    OnlinePlain,
    /// Polled on the secure channel.
    OnlineSecure,
    /// Not answering, or the secure channel failed.
    Offline,
}

impl LinkState {
    /// Stable name (`starting`, `handshake`, `online_plain`, `online_secure`, `offline`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Handshake => "handshake",
            Self::OnlinePlain => "online_plain",
            Self::OnlineSecure => "online_secure",
            Self::Offline => "offline",
        }
    }
}

/// Counters of one PD link.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// `osdp_POLL`s sent.
    pub polls: u64,
    /// Commands sent again after a reply timeout.
    pub retries: u64,
    /// Valid replies.
    pub replies: u64,
    /// Time of the last valid reply (ms, the caller's clock).
    pub last_reply_ms: Option<u64>,
    /// On line → off line transitions.
    pub offline_transitions: u64,
}

/// LED and buzzer commands to send after a durable swipe.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Feedback {
    /// LED records (`osdp_LED`), empty for none.
    pub led: Vec<LedRecord>,
    /// Buzzer (`osdp_BUZ`), if any.
    pub buzzer: Option<BuzzerControl>,
}

impl Feedback {
    /// A green flash of `on_100ms` × 100 ms on LED 0 of reader 0, then back to the permanent state.
    pub fn green_flash(on_100ms: u8) -> LedRecord {
        use ::osdp::command::led::{LedColor, LedPermanent, LedTemporary};
        LedRecord {
            reader: 0,
            led: 0,
            temporary: LedTemporary {
                control: 2,
                on_time: on_100ms,
                off_time: 0,
                on_color: LedColor::Green,
                off_color: LedColor::Black,
                timer: u16::from(on_100ms),
            },
            permanent: LedPermanent {
                control: 0,
                on_time: 0,
                off_time: 0,
                on_color: LedColor::Black,
                off_color: LedColor::Black,
            },
        }
    }

    /// `count` short beeps of the default tone on reader 0.
    pub fn beep(count: u8) -> BuzzerControl {
        BuzzerControl {
            reader: 0,
            tone: BuzzerTone::Default,
            on_time: 1,
            off_time: 1,
            count,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Id,
    Cap,
    /// Challenge with the configured key (`default_key` false) or the install key.
    Chlng {
        default_key: bool,
    },
    Scrypt {
        default_key: bool,
    },
    /// Secure with the install key: give the PD its key.
    KeySet,
    Online,
    Offline {
        retry_at: u64,
    },
}

/// The secure session, in whichever handshake state it is.
enum Sc {
    None,
    Challenged(Session<Challenged>),
    Cryptogrammed(Session<Cryptogrammed>),
    Secure(Session<Secure>),
}

impl fmt::Debug for Sc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Sc::None => "None",
            Sc::Challenged(_) => "Challenged",
            Sc::Cryptogrammed(_) => "Cryptogrammed",
            Sc::Secure(_) => "Secure",
        })
    }
}

#[derive(Debug)]
struct Link {
    settings: PdSettings,
    phase: Phase,
    sqn: Sqn,
    sc: Sc,
    online: bool,
    /// Start of the current attempt to reach the PD (for the off-line threshold before any reply).
    since_ms: Option<u64>,
    /// Commands left unanswered since the last valid reply.
    unanswered: u32,
    next_poll_ms: u64,
    queue: VecDeque<Command>,
    stats: LinkStats,
    /// An off-line event was already reported for this outage.
    reported_offline: bool,
    /// A command that timed out, to send again with the same SQN when the PD's turn comes.
    pending: Option<(Vec<u8>, u8)>,
}

impl Link {
    fn new(settings: PdSettings) -> Self {
        Self {
            settings,
            phase: Phase::Id,
            sqn: Sqn::ZERO,
            sc: Sc::None,
            online: false,
            since_ms: None,
            unanswered: 0,
            next_poll_ms: 0,
            queue: VecDeque::new(),
            stats: LinkStats::default(),
            reported_offline: false,
            pending: None,
        }
    }

    /// Back to the start: SQN 0 makes the PD drop its own state and secure channel too.
    fn restart(&mut self, retry_at: u64) {
        self.phase = Phase::Offline { retry_at };
        self.sqn = Sqn::ZERO;
        self.sc = Sc::None;
        self.online = false;
        self.since_ms = None;
        self.unanswered = 0;
        self.queue.clear();
        self.pending = None;
    }

    fn due_at(&self) -> u64 {
        match self.phase {
            _ if self.pending.is_some() => 0,
            Phase::Offline { retry_at } => retry_at,
            Phase::Online if self.queue.is_empty() => self.next_poll_ms,
            _ => 0,
        }
    }

    fn scbk(&self, default_key: bool) -> [u8; 16] {
        match (&self.settings.security, default_key) {
            (Security::Secure { scbk, .. }, false) => *scbk,
            _ => SCBK_DEFAULT,
        }
    }

    fn wants_secure(&self) -> bool {
        matches!(self.settings.security, Security::Secure { .. })
    }

    fn state(&self) -> LinkState {
        match self.phase {
            Phase::Id | Phase::Cap => LinkState::Starting,
            Phase::Chlng { .. } | Phase::Scrypt { .. } | Phase::KeySet => LinkState::Handshake,
            Phase::Online if matches!(self.sc, Sc::Secure(_)) => LinkState::OnlineSecure,
            Phase::Online => LinkState::OnlinePlain,
            Phase::Offline { .. } => LinkState::Offline,
        }
    }
}

#[derive(Debug)]
struct Outstanding {
    link: usize,
    bytes: Vec<u8>,
    sqn: Sqn,
    command: u8,
    sent_ms: u64,
}

/// Errors of the CP's API (not of the bus: bus trouble becomes [`CpEvent`]s).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CpError {
    /// No PD with this address is configured on the bus.
    #[error("no reader at address {0} on this bus")]
    UnknownAddress(u8),
    /// Two PDs with one address.
    #[error("address {0} is configured twice on the bus")]
    DuplicateAddress(u8),
    /// Address above 0x7E.
    #[error("address {0} is out of range (0 to 126)")]
    BadAddress(u8),
}

/// One RS-485 bus seen from the control panel.
#[derive(Debug)]
pub struct ControlPanel {
    timing: BusTiming,
    links: Vec<Link>,
    cursor: usize,
    outstanding: Option<Outstanding>,
    rx: Vec<u8>,
    events: VecDeque<CpEvent>,
    /// Bytes skipped while looking for a packet start (noise, our own echo's tail).
    pub junk_bytes: u64,
    /// Packets with a bad CRC or checksum.
    pub check_errors: u64,
}

/// Largest packet we accept (the spec's maximum on the wire).
const MAX_PACKET: usize = 1440;

impl ControlPanel {
    /// A CP for these PDs; addresses must be unique and ≤ 0x7E.
    pub fn new(timing: BusTiming, pds: Vec<PdSettings>) -> Result<Self, CpError> {
        let mut links: Vec<Link> = Vec::with_capacity(pds.len());
        for pd in pds {
            if pd.address > super::MAX_ADDRESS {
                return Err(CpError::BadAddress(pd.address));
            }
            if links.iter().any(|l| l.settings.address == pd.address) {
                return Err(CpError::DuplicateAddress(pd.address));
            }
            links.push(Link::new(pd));
        }
        Ok(Self {
            timing,
            links,
            cursor: 0,
            outstanding: None,
            rx: Vec::new(),
            events: VecDeque::new(),
            junk_bytes: 0,
            check_errors: 0,
        })
    }

    /// Adds a PD to a running bus (readers join as their tasks start).
    pub fn add_pd(&mut self, pd: PdSettings) -> Result<(), CpError> {
        if pd.address > super::MAX_ADDRESS {
            return Err(CpError::BadAddress(pd.address));
        }
        if self.links.iter().any(|l| l.settings.address == pd.address) {
            return Err(CpError::DuplicateAddress(pd.address));
        }
        self.links.push(Link::new(pd));
        Ok(())
    }

    /// Addresses of the PDs on the bus.
    pub fn addresses(&self) -> Vec<u8> {
        self.links.iter().map(|l| l.settings.address).collect()
    }

    fn index(&self, addr: u8) -> Result<usize, CpError> {
        self.links
            .iter()
            .position(|l| l.settings.address == addr)
            .ok_or(CpError::UnknownAddress(addr))
    }

    /// The coarse state of a PD's link.
    pub fn link_state(&self, addr: u8) -> Result<LinkState, CpError> {
        Ok(self.links[self.index(addr)?].state())
    }

    /// The counters of a PD's link.
    pub fn link_stats(&self, addr: u8) -> Result<LinkStats, CpError> {
        Ok(self.links[self.index(addr)?].stats)
    }

    /// Queues a command for an on-line PD (sent before the next poll). Commands for a PD that is
    /// not on line are dropped (a flash for a swipe long gone would confuse the person at the door).
    pub fn queue(&mut self, addr: u8, command: Command) -> Result<bool, CpError> {
        let i = self.index(addr)?;
        let link = &mut self.links[i];
        if link.phase != Phase::Online {
            return Ok(false);
        }
        link.queue.push_back(command);
        Ok(true)
    }

    /// Queues LED and buzzer feedback.
    pub fn feedback(&mut self, addr: u8, feedback: &Feedback) -> Result<bool, CpError> {
        let mut queued = false;
        if !feedback.led.is_empty() {
            queued |= self.queue(addr, Command::Led(LedControl::new(feedback.led.clone())))?;
        }
        if let Some(buz) = feedback.buzzer {
            queued |= self.queue(addr, Command::Buzzer(buz))?;
        }
        Ok(queued)
    }

    /// Sends `osdp_KEYSET` with a new SCBK to an on-line, secure PD (technician CLI).
    pub fn set_key(&mut self, addr: u8, scbk: [u8; 16]) -> Result<bool, CpError> {
        let i = self.index(addr)?;
        if !matches!(self.links[i].sc, Sc::Secure(_)) {
            return Ok(false);
        }
        self.queue(addr, Command::KeySet(KeySet::scbk(scbk)))
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<CpEvent> {
        self.events.pop_front()
    }

    /// When [`Self::handle_timeout`] or [`Self::poll_transmit`] next has work (ms).
    pub fn next_deadline(&self) -> Option<u64> {
        if let Some(out) = &self.outstanding {
            return Some(out.sent_ms + self.timing.reply_timeout_ms);
        }
        self.links.iter().map(Link::due_at).min()
    }

    /// The next packet to write, if the bus is free and a PD is due. `rnd` is fresh randomness
    /// for a secure-channel challenge (RND.A); it is used only when one is sent.
    pub fn poll_transmit(&mut self, now_ms: u64, rnd: [u8; 8]) -> Option<Vec<u8>> {
        if self.outstanding.is_some() {
            return None;
        }
        let n = self.links.len();
        for step in 0..n {
            let i = (self.cursor + step) % n;
            if self.links[i].due_at() > now_ms {
                continue;
            }
            if let Some((bytes, command)) = self.build(i, now_ms, rnd) {
                self.cursor = (i + 1) % n;
                self.outstanding = Some(Outstanding {
                    link: i,
                    bytes: bytes.clone(),
                    sqn: self.links[i].sqn,
                    command,
                    sent_ms: now_ms,
                });
                return Some(bytes);
            }
        }
        None
    }

    fn build(&mut self, i: usize, now_ms: u64, rnd: [u8; 8]) -> Option<(Vec<u8>, u8)> {
        let link = &mut self.links[i];
        // A retry reuses the SQN and the bytes: a PD that had answered repeats its last reply
        // instead of executing the command twice.
        if let Some(pending) = link.pending.take() {
            link.stats.retries += 1;
            return Some(pending);
        }
        if let Phase::Offline { .. } = link.phase {
            link.phase = Phase::Id;
        }
        if link.since_ms.is_none() {
            link.since_ms = Some(now_ms);
        }
        let addr = Address::pd(link.settings.address).ok()?;
        let ctrl_flags = CtrlFlags::USE_CRC;
        let plain = |link: &Link, command: &Command| -> Option<Vec<u8>> {
            let data = command.encode_data().ok()?;
            PacketBuilder::plain(
                addr,
                ControlByte::new(link.sqn, ctrl_flags),
                command.code().as_byte(),
                data,
            )
            .encode()
            .ok()
        };
        let handshake = |link: &Link, ty: ScsType, key: u8, code: u8, data: Vec<u8>| {
            PacketBuilder {
                addr,
                ctrl: ControlByte::new(link.sqn, ctrl_flags | CtrlFlags::HAS_SCB),
                scb: Some(Scb::new(ty, [key])),
                code,
                data,
            }
            .encode()
            .ok()
        };
        match link.phase {
            Phase::Id => {
                let c = Command::Id(Id::default());
                plain(link, &c).map(|b| (b, 0x61))
            }
            Phase::Cap => {
                let c = Command::Cap(Cap::default());
                plain(link, &c).map(|b| (b, 0x62))
            }
            Phase::Chlng { default_key } => {
                let session = Session::<Disconnected>::new(link.scbk(default_key)).challenge(rnd);
                link.sc = Sc::Challenged(session);
                let key = u8::from(!default_key);
                handshake(link, ScsType::Scs11, key, 0x76, rnd.to_vec()).map(|b| (b, 0x76))
            }
            Phase::Scrypt { default_key } => {
                let Sc::Cryptogrammed(session) = &link.sc else {
                    link.phase = Phase::Chlng { default_key };
                    return None;
                };
                let cryptogram = session.server_cryptogram().to_vec();
                let key = u8::from(!default_key);
                handshake(link, ScsType::Scs13, key, 0x77, cryptogram).map(|b| (b, 0x77))
            }
            Phase::KeySet | Phase::Online => {
                let command = if link.phase == Phase::KeySet {
                    let Security::Secure { scbk, .. } = link.settings.security else {
                        return None;
                    };
                    Command::KeySet(KeySet::scbk(scbk))
                } else if let Some(c) = link.queue.pop_front() {
                    c
                } else {
                    link.stats.polls += 1;
                    Command::Poll(Poll)
                };
                let code = command.code().as_byte();
                let bytes = match &mut link.sc {
                    Sc::Secure(session) => {
                        let data = command.encode_data().ok()?;
                        seal(
                            session,
                            addr,
                            link.sqn,
                            Direction::AcuToPd,
                            !data.is_empty(),
                            code,
                            &data,
                        )
                        .ok()?
                    }
                    _ => plain(link, &command)?,
                };
                Some((bytes, code))
            }
            Phase::Offline { .. } => None,
        }
    }

    /// No reply in time: the bus is released and the command is sent again (same SQN) on the
    /// PD's next turn — or, past the threshold, the PD is declared off line.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        let Some(out) = &self.outstanding else {
            return;
        };
        if now_ms < out.sent_ms + self.timing.reply_timeout_ms {
            return;
        }
        let Some(out) = self.outstanding.take() else {
            return;
        };
        let i = out.link;
        let link = &mut self.links[i];
        // Silent since the last reply, or since this attempt began (a reply from before an
        // earlier outage is older than that, so `max` picks the right one).
        let since = link
            .since_ms
            .max(link.stats.last_reply_ms)
            .unwrap_or(now_ms);
        let silent_ms = now_ms.saturating_sub(since);
        link.unanswered = link.unanswered.saturating_add(1);
        if silent_ms >= self.timing.offline_after_ms
            && link.unanswered >= self.timing.offline_after_tries
        {
            let was_online = link.online;
            if was_online {
                link.stats.offline_transitions += 1;
            }
            if was_online || !link.reported_offline {
                link.reported_offline = true;
                self.events.push_back(CpEvent::Offline {
                    addr: link.settings.address,
                    was_online,
                    silent_ms,
                });
            }
            link.restart(now_ms.saturating_add(self.timing.retry_offline_ms));
        } else {
            link.pending = Some((out.bytes, out.command));
        }
    }

    /// Bytes read from the bus.
    pub fn handle_rx(&mut self, bytes: &[u8], now_ms: u64) {
        self.rx.extend_from_slice(bytes);
        loop {
            // Skip the optional 0xFF mark bytes and anything that is not a packet start.
            let start = self
                .rx
                .iter()
                .position(|&b| b == ::osdp::SOM)
                .unwrap_or(self.rx.len());
            if start > 0 {
                self.junk_bytes += self.rx[..start].iter().filter(|&&b| b != 0xFF).count() as u64;
                self.rx.drain(..start);
            }
            if self.rx.len() < 5 {
                return;
            }
            let declared = usize::from(u16::from_le_bytes([self.rx[2], self.rx[3]]));
            if !(8..=MAX_PACKET).contains(&declared) {
                self.junk_bytes += 1;
                self.rx.drain(..1);
                continue;
            }
            if self.rx.len() < declared {
                return;
            }
            let packet: Vec<u8> = self.rx[..declared].to_vec();
            match ParsedPacket::parse(&packet) {
                Ok((parsed, used)) => {
                    self.rx.drain(..used.max(1));
                    self.handle_packet(&parsed, &packet[..used], now_ms);
                }
                Err(_) => {
                    self.check_errors += 1;
                    self.rx.drain(..1);
                }
            }
        }
    }

    fn handle_packet(&mut self, parsed: &ParsedPacket<'_>, raw: &[u8], now_ms: u64) {
        // Commands (our own echo on a 2-wire adapter) and strays are ignored.
        if !parsed.addr.is_reply() {
            return;
        }
        let Some(out) = &self.outstanding else {
            return;
        };
        let i = out.link;
        if parsed.addr.pd_addr() != self.links[i].settings.address || parsed.ctrl.sqn != out.sqn {
            return;
        }
        let command = out.command;
        self.outstanding = None;
        let addr = self.links[i].settings.address;

        // BUSY: try the same command again later (it comes unsecured with SQN 0).
        if parsed.code == 0x79 {
            let link = &mut self.links[i];
            link.next_poll_ms = now_ms + self.timing.poll_interval_ms;
            return;
        }

        let data = match self.open(i, parsed, raw) {
            Ok(data) => data,
            Err(fault) => {
                self.secure_fault(i, fault, now_ms);
                return;
            }
        };

        let link = &mut self.links[i];
        link.stats.replies += 1;
        link.stats.last_reply_ms = Some(now_ms);
        link.unanswered = 0;
        link.reported_offline = false;
        link.sqn = link.sqn.next();

        let reply = ReplyCode::from_byte(parsed.code).and_then(|code| Reply::decode(code, &data));
        let reply = match reply {
            Ok(reply) => reply,
            Err(_) => {
                self.events.push_back(CpEvent::BadReply {
                    addr,
                    code: parsed.code,
                });
                self.links[i].next_poll_ms = now_ms + self.timing.poll_interval_ms;
                return;
            }
        };
        self.on_reply(i, command, reply, now_ms);
    }

    /// Checks the secure-channel envelope and returns the plaintext data.
    fn open(
        &mut self,
        i: usize,
        parsed: &ParsedPacket<'_>,
        raw: &[u8],
    ) -> Result<Vec<u8>, SecureFault> {
        let link = &mut self.links[i];
        match &mut link.sc {
            Sc::Secure(session) => {
                let macd = parsed.scb.is_some_and(|s| s.ty.has_mac());
                if !macd {
                    return Err(SecureFault::PlainReply);
                }
                unseal(session, parsed, raw).map_err(|_| SecureFault::MacMismatch)
            }
            _ => {
                // Before the channel is up, only handshake replies may carry an SCB.
                if parsed.scb.is_some_and(|s| s.ty.has_mac()) {
                    return Err(SecureFault::MacMismatch);
                }
                Ok(parsed.data.to_vec())
            }
        }
    }

    fn secure_fault(&mut self, i: usize, fault: SecureFault, now_ms: u64) {
        let link = &mut self.links[i];
        let addr = link.settings.address;
        if link.online {
            link.stats.offline_transitions += 1;
        }
        link.restart(now_ms.saturating_add(self.timing.retry_offline_ms));
        // The fault row is the outage report; do not add an "offline" one for the same cause.
        link.reported_offline = true;
        self.events.push_back(CpEvent::SecureFault { addr, fault });
    }

    fn go_online(&mut self, i: usize, now_ms: u64) {
        let link = &mut self.links[i];
        link.phase = Phase::Online;
        link.next_poll_ms = now_ms;
        if !link.online {
            link.online = true;
            // Learn the tamper and power state at start-up: PDs report changes only.
            link.queue
                .push_back(Command::LocalStatus(::osdp::command::LocalStatus));
            self.events.push_back(CpEvent::Online {
                addr: link.settings.address,
                secure: matches!(link.sc, Sc::Secure(_)),
            });
        }
    }

    fn on_reply(&mut self, i: usize, command: u8, reply: Reply, now_ms: u64) {
        let addr = self.links[i].settings.address;
        self.links[i].next_poll_ms = now_ms + self.timing.poll_interval_ms;
        let phase = self.links[i].phase;
        if let Reply::Nak(nak) = &reply {
            let code = nak.error.as_byte();
            self.events.push_back(CpEvent::Nak {
                addr,
                command,
                code,
            });
            match phase {
                Phase::Chlng { .. } | Phase::Scrypt { .. } | Phase::KeySet => {
                    self.secure_fault(i, SecureFault::Refused(code), now_ms);
                }
                // "Encrypted communication required": the PD insists on the secure channel we
                // were not configured for.
                Phase::Online if code == 6 || code == 5 => {
                    self.secure_fault(i, SecureFault::Refused(code), now_ms);
                }
                Phase::Id | Phase::Cap => {
                    let retry = now_ms.saturating_add(self.timing.retry_offline_ms);
                    self.links[i].restart(retry);
                }
                _ => {}
            }
            return;
        }
        match (phase, reply) {
            (Phase::Id, Reply::PdId(id)) => {
                self.events.push_back(CpEvent::Identified {
                    addr,
                    id: PdIdentity {
                        vendor: id.vendor_oui,
                        model: id.model,
                        version: id.version,
                        serial: id.serial,
                        firmware: id.firmware,
                    },
                });
                self.links[i].phase = Phase::Cap;
            }
            (Phase::Cap, Reply::PdCap(cap)) => {
                let caps: Vec<(u8, u8, u8)> = cap
                    .capabilities
                    .iter()
                    .map(|c| (c.code, c.compliance, c.number_of))
                    .collect();
                // Function 9, compliance bit 0: AES-128 secure channel.
                let sc_capable = caps.iter().any(|&(f, c, _)| f == 9 && c & 1 == 1);
                self.events.push_back(CpEvent::Capabilities { addr, caps });
                if self.links[i].wants_secure() {
                    if sc_capable {
                        self.links[i].phase = Phase::Chlng { default_key: false };
                    } else {
                        self.secure_fault(i, SecureFault::NotCapable, now_ms);
                    }
                } else {
                    self.go_online(i, now_ms);
                }
            }
            (Phase::Chlng { default_key }, Reply::CCrypt(ccrypt)) => {
                let link = &mut self.links[i];
                let Sc::Challenged(session) = core::mem::replace(&mut link.sc, Sc::None) else {
                    self.secure_fault(i, SecureFault::WrongKey, now_ms);
                    return;
                };
                match session.receive_ccrypt(&ccrypt) {
                    Ok(next) => {
                        link.sc = Sc::Cryptogrammed(next);
                        link.phase = Phase::Scrypt { default_key };
                    }
                    Err(_) => {
                        let install = matches!(
                            link.settings.security,
                            Security::Secure {
                                install_mode: true,
                                ..
                            }
                        );
                        if install && !default_key {
                            // Perhaps a new reader still on the install key: try that next.
                            link.phase = Phase::Chlng { default_key: true };
                        } else {
                            self.secure_fault(i, SecureFault::WrongKey, now_ms);
                        }
                    }
                }
            }
            (Phase::Scrypt { default_key }, Reply::RMacI(rmac)) => {
                let link = &mut self.links[i];
                let Sc::Cryptogrammed(session) = core::mem::replace(&mut link.sc, Sc::None) else {
                    self.secure_fault(i, SecureFault::BadRmac, now_ms);
                    return;
                };
                match session.confirm_rmac_i(&rmac.r_mac_i) {
                    Ok(secure) => {
                        link.sc = Sc::Secure(secure);
                        if default_key {
                            link.phase = Phase::KeySet;
                        } else {
                            self.go_online(i, now_ms);
                        }
                    }
                    Err(_) => self.secure_fault(i, SecureFault::BadRmac, now_ms),
                }
            }
            (Phase::KeySet, Reply::Ack(_)) => {
                self.events.push_back(CpEvent::KeySet { addr });
                let link = &mut self.links[i];
                link.sc = Sc::None;
                link.phase = Phase::Chlng { default_key: false };
            }
            (Phase::Online, reply) => self.on_online_reply(i, command, reply),
            // A reply that does not fit the step: start over.
            (_, _) => {
                let retry = now_ms.saturating_add(self.timing.retry_offline_ms);
                self.links[i].restart(retry);
            }
        }
    }

    fn on_online_reply(&mut self, i: usize, command: u8, reply: Reply) {
        let addr = self.links[i].settings.address;
        let event = match reply {
            Reply::Ack(_) if command == 0x60 => None,
            Reply::Ack(_) => {
                if command == 0x75 {
                    // A new key from the technician: restart the channel with it.
                    self.links[i].sc = Sc::None;
                    self.links[i].phase = Phase::Chlng { default_key: false };
                }
                Some(CpEvent::CommandAck { addr, command })
            }
            Reply::Raw(raw) => Some(match Bits::from_msb_bytes(&raw.bits, raw.bit_count) {
                Ok(bits) if !bits.is_empty() => CpEvent::Card {
                    addr,
                    reader: raw.reader,
                    format_code: raw.format_code,
                    bits,
                },
                _ => CpEvent::BadCard {
                    addr,
                    bit_count: raw.bit_count,
                    bytes: raw.bits.len(),
                },
            }),
            Reply::Fmt(fmt) => Some(CpEvent::CardText {
                addr,
                text: fmt
                    .chars
                    .iter()
                    .filter(|c| c.is_ascii_graphic())
                    .map(|&c| char::from(c))
                    .collect(),
            }),
            Reply::Keypad(keypad) => Some(CpEvent::Keys {
                addr,
                keys: keypad.digits.iter().map(|&b| key_of(b)).collect(),
            }),
            Reply::LStatR(status) => Some(CpEvent::LocalStatus {
                addr,
                tamper: status.tamper != 0,
                power_failure: status.power != 0,
            }),
            _ => None,
        };
        if let Some(event) = event {
            self.events.push_back(event);
        }
    }
}

/// An `osdp_KEYPAD` byte as a key: ASCII digits, DEL (0x7F) = `*`/clear, CR (0x0D) = `#`/enter.
pub fn key_of(byte: u8) -> Key {
    match byte {
        b'0'..=b'9' => Key::Digit(byte - b'0'),
        0x7F | b'*' => Key::Star,
        0x0D | b'#' => Key::Hash,
        other => Key::Other(other),
    }
}
