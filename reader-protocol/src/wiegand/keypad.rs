//! Wiegand keypads: 4-bit and 8-bit key bursts, HID 26-bit buffered PINs (binary and BCD), and a
//! PIN collector for burst keypads.
//!
//! Keypad digits are never deduplicated: "1", "1" is a valid PIN.

use core::fmt;

use crate::bits::Bits;
use crate::wiegand::decode::WiegandError;
use crate::wiegand::format::Format;

/// Most digits a [`Pin`] holds.
pub const MAX_PIN_DIGITS: usize = 16;

/// A key of a Wiegand keypad.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub enum Key {
    /// `0`–`9`.
    Digit(u8),
    /// `*` (commonly clear / escape).
    Star,
    /// `#` (commonly enter).
    Hash,
    /// Any other code (0xC–0xF), e.g. function keys.
    Other(u8),
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Digit(d) => write!(f, "{d}"),
            Key::Star => f.write_str("*"),
            Key::Hash => f.write_str("#"),
            Key::Other(c) => write!(f, "0x{c:X}"),
        }
    }
}

/// How key codes 10 and 11 map to `*` and `#`: HID and Rosslare send `*` = 0xA and `#` = 0xB;
/// some libraries and readers swap them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KeyMap {
    /// Map 0xA to `#` and 0xB to `*` instead of the HID convention.
    pub swap_star_hash: bool,
}

impl KeyMap {
    /// The key for a 4-bit code.
    pub const fn key(self, code: u8) -> Key {
        match code & 0xF {
            d @ 0..=9 => Key::Digit(d),
            0xA if self.swap_star_hash => Key::Hash,
            0xA => Key::Star,
            0xB if self.swap_star_hash => Key::Star,
            0xB => Key::Hash,
            c => Key::Other(c),
        }
    }
}

/// Keypad and PIN errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeypadError {
    /// A key frame must have 4 or 8 bits.
    #[error("keypad frame has {bits} bits; key bursts have 4 or 8 bits")]
    KeyLength {
        /// Frame length.
        bits: u8,
    },
    /// 8-bit key frame whose high nibble is not the complement of the low nibble.
    #[error("8-bit key frame 0x{value:02x} is invalid: the high nibble must be the complement of the low nibble (noise or wrong keypad mode)")]
    KeyComplement {
        /// The frame value.
        value: u8,
    },
    /// A 26-bit PIN frame fails H10301 parity or length.
    #[error("26-bit PIN frame invalid: {0}")]
    Pin26(WiegandError),
    /// The 26-bit binary PIN frame carries the PINpad error code 65535.
    #[error("keypad reported an entry error (PIN code 65535)")]
    PinErrorCode,
    /// A 26-bit BCD PIN frame has a nibble above 9.
    #[error("26-bit BCD PIN frame has an invalid digit 0x{nibble:X} (wrong keypad mode?)")]
    BcdDigit {
        /// The nibble.
        nibble: u8,
    },
    /// Enter pressed with fewer digits than the minimum.
    #[error("PIN entry too short: {len} digit(s), at least {min} required")]
    PinTooShort {
        /// Digits entered.
        len: u8,
        /// Configured minimum.
        min: u8,
    },
    /// The inter-key timeout expired with digits entered.
    #[error("PIN entry timed out after {len} digit(s)")]
    PinTimeout {
        /// Digits entered before the timeout.
        len: u8,
    },
}

/// A PIN. `Debug` shows only its length: PINs are secrets and never leave the gateway.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Pin {
    digits: [u8; MAX_PIN_DIGITS],
    len: u8,
}

impl Pin {
    /// An empty PIN.
    pub const fn new() -> Self {
        Pin {
            digits: [0; MAX_PIN_DIGITS],
            len: 0,
        }
    }

    /// A PIN from digits (0–9). `None` if a value is not a digit or there are more than
    /// [`MAX_PIN_DIGITS`].
    pub fn from_digits(digits: &[u8]) -> Option<Self> {
        let mut pin = Pin::new();
        for &d in digits {
            if d > 9 || !pin.push(d) {
                return None;
            }
        }
        Some(pin)
    }

    /// The decimal digits of a number, without leading zeros (`0` is one digit).
    pub fn from_number(mut n: u64) -> Self {
        let mut rev = [0u8; 20];
        let mut count = 0;
        loop {
            rev[count] = (n % 10) as u8;
            count += 1;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        let mut pin = Pin::new();
        for i in (0..count).rev() {
            pin.push(rev[i]);
        }
        pin
    }

    /// Appends a digit; `false` if full.
    fn push(&mut self, d: u8) -> bool {
        if (self.len as usize) < MAX_PIN_DIGITS {
            self.digits[self.len as usize] = d;
            self.len += 1;
            true
        } else {
            false
        }
    }

    /// Number of digits.
    pub const fn len(&self) -> u8 {
        self.len
    }

    /// True if no digit.
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The digits (0–9). Handle with care: this is the secret.
    pub fn digits(&self) -> &[u8] {
        &self.digits[..self.len as usize]
    }

    /// Compares with a string of ASCII digits (for local checks and tests).
    pub fn eq_str(&self, s: &str) -> bool {
        s.len() == self.len as usize && s.bytes().zip(self.digits()).all(|(c, &d)| c == b'0' + d)
    }
}

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pin")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

/// Decodes a 4-bit or 8-bit key burst. 8-bit frames must carry the complement of the key in the
/// high nibble.
pub fn decode_key(bits: Bits, map: KeyMap) -> Result<Key, KeypadError> {
    match bits.len() {
        4 => Ok(map.key(bits.value() as u8)),
        8 => {
            let value = bits.value() as u8;
            let low = value & 0xF;
            if value >> 4 != !low & 0xF {
                return Err(KeypadError::KeyComplement { value });
            }
            Ok(map.key(low))
        }
        n => Err(KeypadError::KeyLength { bits: n }),
    }
}

/// Encodes a key code (0–15) as a 4-bit or 8-bit burst (tests and emulators).
pub fn encode_key(code: u8, eight_bit: bool) -> Bits {
    let low = u128::from(code & 0xF);
    if eight_bit {
        Bits::new(((!low & 0xF) << 4) | low, 8).unwrap_or_default()
    } else {
        Bits::new(low, 4).unwrap_or_default()
    }
}

/// A PIN delivered in one 26-bit frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pin26 {
    /// Facility code field (0 or the configured site code).
    pub facility: u8,
    /// The PIN.
    pub pin: Pin,
}

/// HID 26-bit PINpad, binary: PIN 1–65534 in the card-number field of an H10301 frame.
pub fn decode_pin26_binary(bits: Bits) -> Result<Pin26, KeypadError> {
    let cred = Format::H10301.decode(bits).map_err(KeypadError::Pin26)?;
    let cn = cred.card_number().unwrap_or(0);
    if cn == 0xFFFF {
        return Err(KeypadError::PinErrorCode);
    }
    Ok(Pin26 {
        facility: cred.facility_code().unwrap_or(0) as u8,
        pin: Pin::from_number(cn),
    })
}

/// 26-bit buffered BCD PIN: six 4-bit BCD digits in the 24 data bits plus H10301 parity. Shorter
/// PINs are left-padded with zeros by the keypad, so leading zeros are dropped here (a PIN cannot
/// start with 0 in this mode); an all-zero frame is the single digit `0`.
pub fn decode_pin26_bcd(bits: Bits) -> Result<Pin26, KeypadError> {
    Format::H10301.decode(bits).map_err(KeypadError::Pin26)?;
    let data = bits.field(1, 24).unwrap_or(0) as u32;
    let mut pin = Pin::new();
    for i in (0..6).rev() {
        let nibble = ((data >> (i * 4)) & 0xF) as u8;
        if nibble > 9 {
            return Err(KeypadError::BcdDigit { nibble });
        }
        if pin.is_empty() && nibble == 0 && i > 0 {
            continue;
        }
        pin.push(nibble);
    }
    Ok(Pin26 { facility: 0, pin })
}

/// Settings of a [`PinCollector`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PinConfig {
    /// Fewest digits accepted on enter.
    pub min_len: u8,
    /// Digits after which the PIN is submitted without enter (at most [`MAX_PIN_DIGITS`]).
    pub max_len: u8,
    /// Key that submits the PIN (default `#`).
    pub enter: Option<Key>,
    /// Key that clears the entry (default `*`).
    pub clear: Option<Key>,
    /// Silence after which a partial entry is discarded (default 5 s, as Rosslare readers).
    pub timeout_ns: u64,
}

impl Default for PinConfig {
    fn default() -> Self {
        PinConfig {
            min_len: 4,
            max_len: 8,
            enter: Some(Key::Hash),
            clear: Some(Key::Star),
            timeout_ns: 5_000_000_000,
        }
    }
}

/// Collects burst keys into a PIN (sans-IO: timestamps in, results out).
#[derive(Debug, Clone)]
pub struct PinCollector {
    config: PinConfig,
    pin: Pin,
    last_key_ns: u64,
}

impl PinCollector {
    /// A collector with the given settings (`max_len` is capped at [`MAX_PIN_DIGITS`]).
    pub fn new(mut config: PinConfig) -> Self {
        config.max_len = config.max_len.clamp(1, MAX_PIN_DIGITS as u8);
        PinCollector {
            config,
            pin: Pin::new(),
            last_key_ns: 0,
        }
    }

    /// The settings.
    pub const fn config(&self) -> &PinConfig {
        &self.config
    }

    /// Digits entered so far.
    pub const fn pending_len(&self) -> u8 {
        self.pin.len()
    }

    /// Feeds one key pressed at `now_ns`.
    ///
    /// Returns `Some(Ok(pin))` on enter (or when `max_len` digits are entered),
    /// `Some(Err(PinTooShort))` on enter with too few digits, `Some(Err(PinTimeout))` when the
    /// previous partial entry had timed out (this key then starts a new entry), otherwise `None`.
    /// Keys other than digits, enter and clear are ignored.
    pub fn push(&mut self, key: Key, now_ns: u64) -> Option<Result<Pin, KeypadError>> {
        let timed_out = self.flush(now_ns);
        self.last_key_ns = now_ns;
        let result = if Some(key) == self.config.enter {
            let pin = core::mem::take(&mut self.pin);
            if pin.is_empty() {
                None
            } else if pin.len() < self.config.min_len {
                Some(Err(KeypadError::PinTooShort {
                    len: pin.len(),
                    min: self.config.min_len,
                }))
            } else {
                Some(Ok(pin))
            }
        } else if Some(key) == self.config.clear {
            self.pin = Pin::new();
            None
        } else if let Key::Digit(d) = key {
            self.pin.push(d);
            if self.pin.len() >= self.config.max_len {
                Some(Ok(core::mem::take(&mut self.pin)))
            } else {
                None
            }
        } else {
            None
        };
        // A timeout can only be pending with a partial entry, and then this single key cannot
        // also complete one unless it is enter/max; report the timeout first in any case.
        timed_out.or(result)
    }

    /// When a partial entry would time out, or `None` if nothing is pending.
    pub fn poll_timeout(&self) -> Option<u64> {
        if self.pin.is_empty() {
            None
        } else {
            Some(self.last_key_ns.saturating_add(self.config.timeout_ns))
        }
    }

    /// Discards a partial entry whose timeout has expired at `now_ns`.
    pub fn flush(&mut self, now_ns: u64) -> Option<Result<Pin, KeypadError>> {
        if !self.pin.is_empty() && now_ns.saturating_sub(self.last_key_ns) >= self.config.timeout_ns
        {
            let len = self.pin.len();
            self.pin = Pin::new();
            Some(Err(KeypadError::PinTimeout { len }))
        } else {
            None
        }
    }
}
