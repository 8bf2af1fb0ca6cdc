//! OSDP readers: the agent is the control panel of each RS-485 bus.
//!
//! One task per bus owns the serial port and the sans-IO [`ControlPanel`] (polling, SQN, secure
//! channel, timeouts); one task per configured reader turns that reader's events into rows through
//! its [`Emitter`] (dedup, durable commit, metrics). Readers that name the same `device` join one
//! bus. After a swipe is durable the reader task asks the bus for LED/buzzer feedback, so the
//! bus never waits on the buffer.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use reader_protocol::osdp::{
    BusTiming, ControlPanel, CpEvent, Feedback, LinkState, LinkStats, PdSettings, SecureFault,
    Security,
};
use reader_protocol::wiegand::{decode, FormatChoice, PinCollector, PinConfig};
use reader_protocol::{Bits, CardFields, CardFormat, Credential, ReaderEvent};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio_serial::SerialPortBuilderExt;

use super::{Emitter, IDLE_TICK};
use crate::clock;
use crate::row::EventType;

/// A validated OSDP reader: its bus (shared with the other readers on the same device) and its
/// own address, key, card format and feedback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OsdpSettings {
    /// RS-485 adapter.
    pub device: PathBuf,
    /// Baud rate of the bus.
    pub baud: u32,
    /// Address on the bus.
    pub address: u8,
    /// Bus poll interval.
    pub poll_interval: Duration,
    /// Bus reply timeout.
    pub reply_timeout: Duration,
    /// Bus off-line threshold.
    pub offline_after: Duration,
    /// Secure-channel key file (None: plain text).
    pub key_file: Option<PathBuf>,
    /// Provision the key on a reader still on the install key.
    pub install_mode: bool,
    /// Card format of `osdp_RAW` bits.
    pub format: FormatChoice,
    /// LED flash after a durable swipe.
    pub feedback_led: bool,
    /// Beep after a durable swipe.
    pub feedback_beep: bool,
}

/// What the bus tells a reader task.
#[derive(Debug)]
pub enum BusEvent {
    /// A control-panel event for this reader's address.
    Cp(CpEvent),
    /// Periodic link figures.
    Stats(LinkState, LinkStats),
    /// The RS-485 adapter opened (true) or went away (false, with the reason).
    Adapter(bool, Option<String>),
}

/// What a reader task asks of its bus.
#[derive(Debug)]
enum BusRequest {
    Join {
        address: u8,
        security: Security,
        events: mpsc::UnboundedSender<BusEvent>,
    },
    Feedback {
        address: u8,
        feedback: Feedback,
    },
}

type Buses = Mutex<HashMap<PathBuf, mpsc::UnboundedSender<BusRequest>>>;

fn buses() -> &'static Buses {
    static BUSES: OnceLock<Buses> = OnceLock::new();
    BUSES.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The bus task of `settings.device`, started by the first reader on it.
fn bus_for(
    settings: &OsdpSettings,
    shutdown: &watch::Receiver<bool>,
) -> mpsc::UnboundedSender<BusRequest> {
    let mut map = buses()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(tx) = map.get(&settings.device).filter(|tx| !tx.is_closed()) {
        return tx.clone();
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let timing = BusTiming {
        poll_interval_ms: millis(settings.poll_interval),
        reply_timeout_ms: millis(settings.reply_timeout),
        offline_after_ms: millis(settings.offline_after),
        ..BusTiming::default()
    };
    tokio::spawn(run_bus(
        settings.device.clone(),
        settings.baud,
        timing,
        rx,
        shutdown.clone(),
    ));
    map.insert(settings.device.clone(), tx.clone());
    tx
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Reads an SCBK file: 32 hex digits (whitespace ignored), under the agent's rule for secret
/// files. The key never appears in an error or a log.
pub fn load_key(path: &Path) -> Result<[u8; 16], String> {
    let text = crate::secret_file::read_secret_file(path)
        .map_err(|e| format!("key_file {}: {e}", path.display()))?;
    parse_key(&text).ok_or_else(|| {
        format!(
            "key_file {} does not hold 32 hex digits (a 16-byte AES key); \
             fix: write one with `badge-agent osdp gen-key --out FILE` (then `chown badge-agent: FILE`)",
            path.display()
        )
    })
}

/// 32 hex digits, whitespace ignored.
pub fn parse_key(text: &str) -> Option<[u8; 16]> {
    let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if digits.len() != 32 {
        return None;
    }
    let mut key = [0u8; 16];
    for (i, pair) in digits.chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).ok()?;
        key[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(key)
}

/// Runs one OSDP reader until shutdown.
pub async fn run(
    mut emitter: Emitter,
    settings: OsdpSettings,
    mut shutdown: watch::Receiver<bool>,
) {
    let security = match &settings.key_file {
        None => Security::Plain,
        Some(path) => match load_key(path) {
            Ok(scbk) => Security::Secure {
                scbk,
                install_mode: settings.install_mode,
            },
            Err(message) => {
                // Never fall back to plain text: the reader stays unused until the file is fixed.
                tracing::error!(reader = emitter.reader_id(), "{message}");
                emitter
                    .emit_status(EventType::ReaderFault, message.clone())
                    .await;
                emitter.set_connected(false, Some(message));
                // Stay live while idle: a dead heartbeat would have the watchdog restart the
                // whole agent, taking every other reader down with it.
                while !super::sleep_or_shutdown(IDLE_TICK, &mut shutdown).await {
                    emitter.beat();
                }
                return;
            }
        },
    };
    let secure = matches!(security, Security::Secure { .. });
    let bus = bus_for(&settings, &shutdown);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let joined = bus.send(BusRequest::Join {
        address: settings.address,
        security,
        events: tx,
    });
    if joined.is_err() {
        tracing::error!(reader = emitter.reader_id(), "OSDP bus task is gone");
        return;
    }
    let mut reader = ReaderState {
        settings,
        secure,
        pins: PinCollector::new(PinConfig::default()),
        tamper: false,
        power_failure: false,
        reported_down: false,
        last_fault: None,
        bus,
    };
    loop {
        emitter.beat();
        let wait = reader
            .pins
            .poll_timeout()
            .map_or(IDLE_TICK, |deadline| {
                Duration::from_nanos(deadline.saturating_sub(clock::monotonic_ns()))
            })
            .min(IDLE_TICK);
        tokio::select! {
            event = rx.recv() => match event {
                Some(event) => reader.handle(&mut emitter, event).await,
                None => break,
            },
            () = tokio::time::sleep(wait) => {
                let now = clock::monotonic_ns();
                if reader.pins.poll_timeout().is_some_and(|d| d <= now) {
                    if let Some(Err(err)) = reader.pins.flush(now) {
                        emitter.emit(ReaderEvent::from(err), now).await;
                    }
                }
            }
            _ = shutdown.changed() => break,
        }
    }
    emitter.set_connected(false, None);
}

struct ReaderState {
    settings: OsdpSettings,
    secure: bool,
    pins: PinCollector,
    tamper: bool,
    power_failure: bool,
    /// An off-line or secure-channel row was written; the next on-line gets a row too.
    reported_down: bool,
    last_fault: Option<SecureFault>,
    bus: mpsc::UnboundedSender<BusRequest>,
}

impl ReaderState {
    fn feedback(&self) -> Option<Feedback> {
        let s = &self.settings;
        if !s.feedback_led && !s.feedback_beep {
            return None;
        }
        Some(Feedback {
            led: if s.feedback_led {
                vec![Feedback::green_flash(5)]
            } else {
                Vec::new()
            },
            buzzer: s.feedback_beep.then(|| Feedback::beep(1)),
        })
    }

    async fn swipe(&mut self, emitter: &mut Emitter, event: ReaderEvent, now: u64) {
        let is_swipe = matches!(event, ReaderEvent::Card(_) | ReaderEvent::Pin(_));
        let durable = emitter.emit(event, now).await;
        // Feedback only once the swipe is durable: the flash tells the person it was recorded.
        if let (true, Some(_), Some(feedback)) = (is_swipe, durable, self.feedback()) {
            let _ = self.bus.send(BusRequest::Feedback {
                address: self.settings.address,
                feedback,
            });
        }
    }

    async fn handle(&mut self, emitter: &mut Emitter, event: BusEvent) {
        let now = clock::monotonic_ns();
        let addr = self.settings.address;
        let metrics = &emitter.health.metrics;
        let id = emitter.reader_id().to_owned();
        match event {
            BusEvent::Stats(state, stats) => {
                metrics.osdp_link(&id, state.as_str(), &stats);
                emitter.health.update_reader(&id, |r| {
                    r.connected = matches!(state, LinkState::OnlinePlain | LinkState::OnlineSecure);
                });
            }
            BusEvent::Adapter(open, error) => {
                if !open {
                    let message = error.unwrap_or_else(|| "adapter gone".to_owned());
                    emitter.count_error("open", &message);
                    emitter.set_connected(false, Some(message));
                }
            }
            BusEvent::Cp(event) => match event {
                CpEvent::Card { bits, .. } => {
                    let event = match decode(self.settings.format, bits) {
                        Ok(card) => ReaderEvent::Card(card),
                        Err(err) => ReaderEvent::from(err),
                    };
                    self.swipe(emitter, event, now).await;
                }
                CpEvent::CardText { text, .. } if !text.is_empty() => match text.parse::<u64>() {
                    Ok(value) => {
                        let bits = Bits::new(u128::from(value), 64).unwrap_or(Bits::EMPTY);
                        let card = Credential::new(
                            CardFormat::Decimal,
                            CardFields {
                                card_number: Some(value),
                                ..CardFields::default()
                            },
                            bits,
                        );
                        self.swipe(emitter, ReaderEvent::Card(card), now).await;
                    }
                    Err(_) => {
                        let detail = format!(
                            "osdp_FMT card data is not a decimal number ({} characters)",
                            text.len()
                        );
                        emitter.emit_status(EventType::ReaderFault, detail).await;
                    }
                },
                CpEvent::CardText { .. } => {}
                CpEvent::BadCard {
                    bit_count, bytes, ..
                } => {
                    let detail = format!(
                        "osdp_RAW card data unusable: {bit_count} bits claimed in {bytes} bytes"
                    );
                    emitter.count_error("osdp_raw", &detail);
                    emitter.emit_status(EventType::ReaderFault, detail).await;
                }
                CpEvent::Keys { keys, .. } => {
                    for key in keys {
                        match self.pins.push(key, now) {
                            Some(Ok(pin)) => self.swipe(emitter, ReaderEvent::Pin(pin), now).await,
                            Some(Err(err)) => {
                                emitter.emit(ReaderEvent::from(err), now).await;
                            }
                            None => {}
                        }
                    }
                }
                CpEvent::LocalStatus {
                    tamper,
                    power_failure,
                    ..
                } => {
                    if tamper != self.tamper {
                        self.tamper = tamper;
                        let detail = if tamper {
                            format!("osdp reader at address {addr}: tamper switch opened (cover removed or reader pried off)")
                        } else {
                            format!("osdp reader at address {addr}: tamper switch closed again")
                        };
                        tracing::warn!(reader = %id, "{detail}");
                        emitter.emit_status(EventType::Tamper, detail).await;
                    }
                    if power_failure != self.power_failure {
                        self.power_failure = power_failure;
                        let detail = if power_failure {
                            format!("osdp reader at address {addr}: power failure reported")
                        } else {
                            format!("osdp reader at address {addr}: power restored")
                        };
                        tracing::warn!(reader = %id, "{detail}");
                        emitter.emit_status(EventType::ReaderFault, detail).await;
                    }
                }
                CpEvent::Online { secure, .. } => {
                    metrics.osdp_secure(&id, secure);
                    emitter.set_connected(true, None);
                    self.last_fault = None;
                    let channel = if secure {
                        "secure channel"
                    } else {
                        "plain text"
                    };
                    tracing::info!(reader = %id, address = addr, channel, "osdp reader on line");
                    if self.secure && !secure {
                        // The CP never does this; guard the invariant anyway.
                        tracing::error!(reader = %id, "secure reader on line in plain text");
                    }
                    if self.reported_down {
                        self.reported_down = false;
                        let detail =
                            format!("osdp reader at address {addr} back on line ({channel})");
                        emitter.emit_status(EventType::ReaderFault, detail).await;
                    }
                }
                CpEvent::Offline {
                    was_online,
                    silent_ms,
                    ..
                } => {
                    metrics.osdp_secure(&id, false);
                    self.reported_down = true;
                    let detail = if was_online {
                        format!("osdp reader at address {addr} off line: no valid reply for {silent_ms} ms")
                    } else {
                        format!("osdp reader at address {addr} does not answer; check wiring (A/B, termination), address and baud {}", self.settings.baud)
                    };
                    tracing::warn!(reader = %id, "{detail}");
                    emitter.set_connected(false, Some(detail.clone()));
                    emitter.emit_status(EventType::ReaderFault, detail).await;
                }
                CpEvent::SecureFault { fault, .. } => {
                    metrics.osdp_secure(&id, false);
                    metrics.reader_error(&id, &format!("osdp_secure_{}", fault.kind()));
                    // One row per distinct failure, not one per retry.
                    if self.last_fault != Some(fault) {
                        self.last_fault = Some(fault);
                        self.reported_down = true;
                        let detail = format!("osdp reader at address {addr}: {fault}");
                        tracing::error!(reader = %id, "{detail}");
                        emitter.set_connected(false, Some(detail.clone()));
                        emitter.emit_status(EventType::ReaderFault, detail).await;
                    }
                }
                CpEvent::Nak { code, command, .. } => {
                    metrics.osdp_nak(&id, code);
                    tracing::debug!(reader = %id, code, command, "osdp NAK");
                }
                CpEvent::KeySet { .. } => {
                    tracing::warn!(reader = %id, address = addr, "install mode: the reader took the configured key; it no longer accepts the default key");
                }
                CpEvent::CommandAck { command, .. } => {
                    tracing::debug!(reader = %id, command, "osdp command acknowledged");
                }
                CpEvent::Identified { id: pd, .. } => {
                    tracing::info!(reader = %id, address = addr, vendor = ?pd.vendor, model = pd.model, serial = pd.serial, "osdp reader identified");
                }
                CpEvent::Capabilities { .. } => {}
                CpEvent::BadReply { code, .. } => {
                    emitter.count_error("osdp_reply", &format!("undecodable reply 0x{code:02x}"));
                }
            },
        }
    }
}

/// The bus task: serial port + control panel, until shutdown.
async fn run_bus(
    device: PathBuf,
    baud: u32,
    timing: BusTiming,
    mut requests: mpsc::UnboundedReceiver<BusRequest>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut members: HashMap<u8, mpsc::UnboundedSender<BusEvent>> = HashMap::new();
    let mut cp = match ControlPanel::new(timing, Vec::new()) {
        Ok(cp) => cp,
        Err(err) => {
            tracing::error!(device = %device.display(), error = %err, "osdp bus");
            return;
        }
    };
    let start = Instant::now();
    let now_ms = || u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
    let mut delay = Duration::from_millis(500);
    let mut was_open = true;
    'outer: while !*shutdown.borrow() {
        let port = tokio_serial::new(device.to_string_lossy(), baud)
            .timeout(Duration::from_millis(100))
            .open_native_async();
        let mut port = match port {
            Ok(port) => port,
            Err(err) => {
                let message = format!("cannot open OSDP bus {}: {err}", device.display());
                if was_open {
                    tracing::warn!("{message}; retrying with back-off");
                    for tx in members.values() {
                        let _ = tx.send(BusEvent::Adapter(false, Some(message.clone())));
                    }
                }
                was_open = false;
                let sleep = tokio::time::sleep(delay);
                tokio::pin!(sleep);
                loop {
                    tokio::select! {
                        () = &mut sleep => break,
                        req = requests.recv() => match req {
                            Some(req) => accept(&mut cp, &mut members, req),
                            None => break 'outer,
                        },
                        _ = shutdown.changed() => break 'outer,
                    }
                }
                delay = (delay * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        if let Err(err) = tokio_serial::SerialPort::clear(&port, tokio_serial::ClearBuffer::Input) {
            tracing::warn!(device = %device.display(), error = %err, "cannot discard stale input");
        }
        tracing::info!(device = %device.display(), baud, "OSDP bus open");
        was_open = true;
        delay = Duration::from_millis(500);
        for tx in members.values() {
            let _ = tx.send(BusEvent::Adapter(true, None));
        }
        let mut buf = [0u8; 512];
        let mut last_stats = Instant::now();
        loop {
            let now = now_ms();
            cp.handle_timeout(now);
            if let Some(bytes) = cp.poll_transmit(now, rand::random()) {
                if let Err(err) = AsyncWriteExt::write_all(&mut port, &bytes).await {
                    tracing::warn!(device = %device.display(), error = %err, "OSDP bus write failed; reopening");
                    break;
                }
            }
            while let Some(event) = cp.poll_event() {
                if let Some(tx) = members.get(&event_address(&event)) {
                    let _ = tx.send(BusEvent::Cp(event));
                }
            }
            if last_stats.elapsed() >= Duration::from_secs(1) {
                last_stats = Instant::now();
                for (addr, tx) in &members {
                    if let (Ok(state), Ok(stats)) = (cp.link_state(*addr), cp.link_stats(*addr)) {
                        let _ = tx.send(BusEvent::Stats(state, stats));
                    }
                }
            }
            let wait = cp
                .next_deadline()
                .map_or(IDLE_TICK, |d| {
                    Duration::from_millis(d.saturating_sub(now_ms()))
                })
                .clamp(Duration::from_millis(1), IDLE_TICK);
            tokio::select! {
                read = AsyncReadExt::read(&mut port, &mut buf) => match read {
                    Ok(0) => {
                        tracing::warn!(device = %device.display(), "OSDP bus closed; reopening");
                        break;
                    }
                    Ok(n) => cp.handle_rx(&buf[..n], now_ms()),
                    Err(err) if err.kind() == std::io::ErrorKind::TimedOut => {}
                    Err(err) => {
                        tracing::warn!(device = %device.display(), error = %err, "OSDP bus read failed; reopening");
                        break;
                    }
                },
                req = requests.recv() => match req {
                    Some(req) => accept(&mut cp, &mut members, req),
                    None => break 'outer,
                },
                () = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => break 'outer,
            }
        }
        for tx in members.values() {
            let _ = tx.send(BusEvent::Adapter(
                false,
                Some(format!("OSDP bus {} lost", device.display())),
            ));
        }
    }
}

fn accept(
    cp: &mut ControlPanel,
    members: &mut HashMap<u8, mpsc::UnboundedSender<BusEvent>>,
    request: BusRequest,
) {
    match request {
        BusRequest::Join {
            address,
            security,
            events,
        } => match cp.add_pd(PdSettings { address, security }) {
            Ok(()) => {
                members.insert(address, events);
            }
            Err(err) => tracing::error!(address, error = %err, "OSDP reader not added"),
        },
        BusRequest::Feedback { address, feedback } => {
            if let Ok(false) = cp.feedback(address, &feedback) {
                tracing::debug!(address, "reader not on line; feedback dropped");
            }
        }
    }
}

fn event_address(event: &CpEvent) -> u8 {
    match event {
        CpEvent::Online { addr, .. }
        | CpEvent::Offline { addr, .. }
        | CpEvent::Identified { addr, .. }
        | CpEvent::Capabilities { addr, .. }
        | CpEvent::Card { addr, .. }
        | CpEvent::BadCard { addr, .. }
        | CpEvent::CardText { addr, .. }
        | CpEvent::Keys { addr, .. }
        | CpEvent::LocalStatus { addr, .. }
        | CpEvent::Nak { addr, .. }
        | CpEvent::CommandAck { addr, .. }
        | CpEvent::SecureFault { addr, .. }
        | CpEvent::KeySet { addr }
        | CpEvent::BadReply { addr, .. } => *addr,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn key_file_must_be_private_and_hex() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reader.key");
        std::fs::write(&path, "000102030405060708090a0b0c0d0e0f\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_key(&path).unwrap_err();
        assert!(err.contains("chmod 600"), "{err}");
        assert!(
            !err.contains("0a0b"),
            "the key must not appear in errors: {err}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(load_key(&path).unwrap()[15], 0x0f);
        std::fs::write(&path, "0001").unwrap();
        let err = load_key(&path).unwrap_err();
        assert!(err.contains("32 hex digits"), "{err}");
        assert_eq!(parse_key("zz0102030405060708090a0b0c0d0e0f"), None);
    }
}
