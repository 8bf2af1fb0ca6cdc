//! The agent's configuration: one TOML file, `/etc/badge-agent/config.toml` by default.
//!
//! Parsing is two-step: serde reads the file into plain structs (unknown keys are errors, so a
//! typo never silently falls back to a default), then [`Config::validate`] checks what serde
//! cannot and turns each reader into a typed [`ReaderSpec`]. Every error names the key and says
//! how to fix it, because the person reading it is a field technician with a terminal.
//!
//! # One type per setting
//!
//! A setting has one type, owned by the module that uses it, and serde reads the file straight
//! into it: `buffer.full_policy` is [`FullPolicy`], `snowflake.compression` is
//! [`ContentEncoding`], `direction` is [`Direction`], `framing`, `line_terminator` and
//! `line_radix` are `reader_protocol::serial` types, and a validated reader carries its reader
//! module's own settings ([`ReaderSource`]). No mirror enum or struct is copied field by field.
//! This file keeps only the file's shape (sections, the flat `[[reader]]` table, defaults) and
//! what the domain types cannot express: the checks of [`Config::validate`] and their messages.
//! Where a section genuinely differs from what runs (a path resolved from the environment, a key
//! file read later, one section feeding two runtime types) it stays a section type here and the
//! domain module owns the one conversion: `BufferOptions::from_config` and
//! `GroupCommitConfig::from_config` (buffer), `ClientConfig::from_snowflake_config` (snowpipe).
//!
//! ```toml
//! gateway_id = "gw-lobby-01"
//!
//! [buffer]
//! path = "/var/lib/badge-agent/buffer"
//!
//! [snowflake]
//! account = "myorg-myaccount"
//! user = "BADGE_INGEST"
//! role = "BADGE_INGEST_ROLE"
//! private_key_file = "/etc/badge-agent/rsa_key.p8"
//! database = "BADGE_DB"
//! schema = "RAW_INGESTION"
//! pipe = "BADGE_EVENTS_PIPE"
//!
//! [[reader]]
//! id = "lobby-in"
//! kind = "serial"
//! device = "/dev/ttyUSB0"
//! framing = "rdm6300"
//! zone = "lobby"
//! door = "front"
//! direction = "in"
//! ```

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reader_protocol::serial::{LineConfig, Radix, SerialFraming, Terminator};
use reader_protocol::wiegand::FormatChoice;
use serde::Deserialize;

use crate::buffer::FullPolicy;
use crate::readers::osdp::OsdpSettings;
use crate::readers::serial::SerialSettings;
use crate::readers::simulated::Script;
use crate::readers::wiegand::WiegandSettings;
use crate::row::Direction;
use crate::snowpipe::ContentEncoding;

/// Where the service looks for its configuration unless told otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/badge-agent/config.toml";
/// Buffer location when neither the file nor systemd's `$STATE_DIRECTORY` says otherwise.
pub const DEFAULT_BUFFER_PATH: &str = "/var/lib/badge-agent/buffer";
/// Metrics and health listener: loopback only unless the operator decides otherwise.
pub const DEFAULT_HEALTH_LISTEN: &str = "127.0.0.1:9464";
/// The agent's private status socket with the default buffer location: in the unit's
/// `RuntimeDirectory=` (`$RUNTIME_DIRECTORY`, owner-only).
pub const DEFAULT_HEALTH_SOCKET: &str = "/run/badge-agent/agent.sock";
/// `sun_path` holds 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH_BYTES: usize = 107;

/// A configuration problem, phrased for the person who has to fix the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read at all.
    #[error("cannot read config file {path}: {source}; fix: check the path, or pass --config")]
    Read {
        /// The file that was asked for.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has a key of the wrong type or an unknown key.
    #[error("config file {path} is not valid: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, which names the key and the line.
        message: String,
    },
    /// A key has a value the agent cannot use.
    #[error("config key `{key}`: {problem}; fix: {fix}")]
    Invalid {
        /// Dotted path of the key, e.g. `reader[1].device`.
        key: String,
        /// What is wrong.
        problem: String,
        /// What to do about it.
        fix: String,
    },
}

impl ConfigError {
    fn invalid(key: impl Into<String>, problem: impl Into<String>, fix: impl Into<String>) -> Self {
        Self::Invalid {
            key: key.into(),
            problem: problem.into(),
            fix: fix.into(),
        }
    }
}

/// The whole file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Stable id of this gateway; names the Snowpipe channel and prefixes every `event_id`.
    pub gateway_id: String,
    /// The durable swipe buffer.
    #[serde(default)]
    pub buffer: BufferConfig,
    /// Where swipes go. Optional so a gateway can be staged and tested offline first.
    pub snowflake: Option<SnowflakeConfig>,
    /// Metrics and health endpoints.
    #[serde(default)]
    pub health: HealthConfig,
    /// The readers attached to this gateway.
    #[serde(default, rename = "reader")]
    pub readers: Vec<ReaderConfig>,
    /// Periodic heartbeat rows (gateway health) sent through the same channel as swipes.
    #[serde(default)]
    pub heartbeat: HeartbeatConfig,
}

/// `[buffer]`: the sled write-ahead buffer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BufferConfig {
    /// Directory of the sled database. Defaults to `$STATE_DIRECTORY/buffer` under systemd.
    pub path: Option<PathBuf>,
    /// Size on disk at which the full policy applies.
    #[serde(default = "BufferConfig::default_max_bytes")]
    pub max_bytes: u64,
    /// What happens when the buffer is full.
    #[serde(default)]
    pub full_policy: FullPolicy,
    /// sled page cache; sled 0.34 defaults to 1 GiB, far too much for a Pi.
    #[serde(default = "BufferConfig::default_cache_bytes")]
    pub cache_bytes: u64,
    /// Free space the filesystem must keep: below it new swipes are refused (counted) so sled
    /// never meets ENOSPC mid-write. 0 disables the check.
    #[serde(default = "BufferConfig::default_min_free_bytes")]
    pub min_free_bytes: u64,
    /// Group commit: most swipes made durable by one flush + fsync.
    #[serde(default = "BufferConfig::default_group_max_records")]
    pub group_commit_max_records: usize,
    /// Group commit: longest a swipe waits for companions before its batch is flushed.
    #[serde(default = "BufferConfig::default_group_max_delay_ms")]
    pub group_commit_max_delay_ms: u64,
    /// Retry queue: most swipes held in memory while group commits fail (EMFILE, EIO, a full
    /// disk), retried with back-off; beyond it new swipes are dropped and counted.
    #[serde(default = "BufferConfig::default_retry_queue_max_records")]
    pub retry_queue_max_records: usize,
    /// Retry queue: most bytes (estimated in-memory size of the queued swipes).
    #[serde(default = "BufferConfig::default_retry_queue_max_bytes")]
    pub retry_queue_max_bytes: u64,
}

impl BufferConfig {
    fn default_max_bytes() -> u64 {
        512 * 1024 * 1024
    }
    fn default_cache_bytes() -> u64 {
        8 * 1024 * 1024
    }
    fn default_min_free_bytes() -> u64 {
        64 * 1024 * 1024
    }
    fn default_group_max_records() -> usize {
        256
    }
    fn default_group_max_delay_ms() -> u64 {
        5
    }
    fn default_retry_queue_max_records() -> usize {
        10_000
    }
    fn default_retry_queue_max_bytes() -> u64 {
        4 * 1024 * 1024
    }

    /// The buffer directory: the configured one, else `$STATE_DIRECTORY/buffer`, else the default.
    pub fn resolved_path(&self) -> PathBuf {
        if let Some(path) = &self.path {
            return path.clone();
        }
        // systemd may pass several directories separated by ':'; ours is the first.
        match std::env::var_os("STATE_DIRECTORY") {
            Some(dirs) => {
                let dirs = dirs.to_string_lossy().into_owned();
                let first = dirs.split(':').next().unwrap_or_default();
                Path::new(first).join("buffer")
            }
            None => PathBuf::from(DEFAULT_BUFFER_PATH),
        }
    }
}

impl Default for BufferConfig {
    fn default() -> Self {
        Self {
            path: None,
            max_bytes: Self::default_max_bytes(),
            full_policy: FullPolicy::default(),
            cache_bytes: Self::default_cache_bytes(),
            min_free_bytes: Self::default_min_free_bytes(),
            group_commit_max_records: Self::default_group_max_records(),
            group_commit_max_delay_ms: Self::default_group_max_delay_ms(),
            retry_queue_max_records: Self::default_retry_queue_max_records(),
            retry_queue_max_bytes: Self::default_retry_queue_max_bytes(),
        }
    }
}

/// `[snowflake]`: the account and pipe swipes land in.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnowflakeConfig {
    /// Account identifier, e.g. `myorg-myaccount` (org-account form) or `xy12345.us-east-1`.
    pub account: String,
    /// Account URL; defaults to `https://<account>.snowflakecomputing.com`.
    pub url: Option<String>,
    /// The ingest service user (key-pair authentication).
    pub user: String,
    /// Role with INSERT on the table and OPERATE on the pipe.
    pub role: Option<String>,
    /// PKCS#8 PEM private key; must not be readable by group or others.
    pub private_key_file: PathBuf,
    /// Database of the pipe.
    pub database: String,
    /// Schema of the pipe.
    pub schema: String,
    /// The pipe (or the default `<TABLE>-STREAMING` pipe).
    pub pipe: String,
    /// Channel name; defaults to the gateway id. One channel per gateway keeps order and resume.
    pub channel: Option<String>,
    /// Extra PEM CA bundle trusted in addition to the system roots (TLS interception proxies).
    pub extra_ca_file: Option<PathBuf>,
    /// HTTPS proxy URL; overrides `HTTPS_PROXY`.
    pub proxy: Option<String>,
    /// Body compression for appends: `zstd` (default), `gzip` or `none`.
    #[serde(default)]
    pub compression: ContentEncoding,
    /// Per-request timeout.
    #[serde(default = "SnowflakeConfig::default_timeout_secs")]
    pub request_timeout_secs: u64,
}

impl SnowflakeConfig {
    fn default_timeout_secs() -> u64 {
        30
    }

    /// The account URL the client talks to.
    pub fn account_url(&self) -> String {
        match &self.url {
            Some(url) => url.clone(),
            None => format!("https://{}.snowflakecomputing.com", self.account),
        }
    }

    /// The channel this gateway appends to.
    pub fn channel_name<'a>(&'a self, gateway_id: &'a str) -> &'a str {
        self.channel.as_deref().unwrap_or(gateway_id)
    }
}

/// `[health]`: the metrics and health listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// Address of `/metrics`, `/livez`, `/readyz`, `/status`. Keep it on loopback.
    #[serde(default = "HealthConfig::default_listen")]
    pub listen: String,
    /// The agent's private Unix socket (same routes, owner-only) used by `badge-agent status`
    /// and the updater's health gate. Default: see [`HealthConfig::resolved_socket`].
    pub socket: Option<PathBuf>,
}

impl HealthConfig {
    fn default_listen() -> String {
        DEFAULT_HEALTH_LISTEN.to_owned()
    }

    /// The private socket: the configured one; else [`DEFAULT_HEALTH_SOCKET`] when the buffer is
    /// in its default place (a systemd install); else `agent.sock` beside the buffer directory,
    /// which works for a run outside systemd. Depends only on the file (and `$STATE_DIRECTORY`
    /// as the buffer does), so the agent and its tools always agree.
    pub fn resolved_socket(&self, buffer: &BufferConfig) -> PathBuf {
        if let Some(socket) = &self.socket {
            return socket.clone();
        }
        let buffer_dir = buffer.resolved_path();
        if buffer_dir == Path::new(DEFAULT_BUFFER_PATH) {
            return PathBuf::from(DEFAULT_HEALTH_SOCKET);
        }
        match buffer_dir.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.join("agent.sock"),
            _ => PathBuf::from("agent.sock"),
        }
    }
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            listen: Self::default_listen(),
            socket: None,
        }
    }
}

/// `[heartbeat]`: a `heartbeat` row every `interval_secs`, so the Snowflake side can tell a quiet
/// door from a dead gateway. Heartbeats yield to swipes: skipped (and counted) when the buffer
/// is near full or the commit queue is busy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatConfig {
    /// Seconds between heartbeats; 0 turns them off.
    #[serde(default = "HeartbeatConfig::default_interval_secs")]
    pub interval_secs: u64,
}

impl HeartbeatConfig {
    fn default_interval_secs() -> u64 {
        300
    }

    /// The interval, or `None` when heartbeats are off.
    pub fn interval(&self) -> Option<Duration> {
        (self.interval_secs > 0).then(|| Duration::from_secs(self.interval_secs))
    }
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        HeartbeatConfig {
            interval_secs: Self::default_interval_secs(),
        }
    }
}

/// Which kind of reader a `[[reader]]` entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReaderKind {
    /// A UART reader (RDM6300, ID-12LA, Wiegand-to-serial converter, ASCII line reader).
    Serial,
    /// A Wiegand reader on two GPIO lines.
    Wiegand,
    /// Generated badges, for the demo and tests.
    Simulated,
    /// An OSDP reader (PD) on an RS-485 bus; the agent is the bus's control panel.
    Osdp,
}

impl fmt::Display for ReaderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Serial => "serial",
            Self::Wiegand => "wiegand",
            Self::Simulated => "simulated",
            Self::Osdp => "osdp",
        })
    }
}

/// One `[[reader]]` entry as written. Kind-specific keys are checked by [`Config::validate`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReaderConfig {
    /// Unique id of the reader on this gateway.
    pub id: String,
    /// serial, wiegand or simulated.
    pub kind: ReaderKind,
    /// Zone the reader guards.
    pub zone: Option<String>,
    /// Door the reader is mounted at.
    pub door: Option<String>,
    /// `in` or `out`.
    pub direction: Option<Direction>,
    /// Same-credential re-arm interval of duplicate suppression.
    #[serde(default = "ReaderConfig::default_dedup_ms")]
    pub dedup_window_ms: u64,

    /// serial: the device, e.g. `/dev/ttyUSB0` or `/dev/serial/by-id/...`.
    pub device: Option<PathBuf>,
    /// serial: baud rate (default 9600).
    pub baud: Option<u32>,
    /// serial: `rdm6300`, `id12` or `line`.
    pub framing: Option<SerialFraming>,
    /// serial line framing: terminator `cr`, `lf`, `crlf` or `etx`.
    pub line_terminator: Option<Terminator>,
    /// serial line framing: lines are wrapped in STX … ETX.
    pub line_stx: Option<bool>,
    /// serial line framing: `hex` or `decimal` payload.
    pub line_radix: Option<Radix>,
    /// serial line framing: longest accepted line.
    pub line_max_len: Option<usize>,
    /// serial line framing: a partial line is discarded after this much silence.
    pub line_timeout_ms: Option<u64>,

    /// wiegand: GPIO chip, e.g. `/dev/gpiochip0`.
    pub chip: Option<PathBuf>,
    /// wiegand: line offset of D0.
    pub d0: Option<u32>,
    /// wiegand: line offset of D1.
    pub d1: Option<u32>,
    /// wiegand / simulated: card format name (`h10301`, `auto`, ...).
    pub format: Option<String>,
    /// wiegand: end-of-frame silence (default 30 ms).
    pub frame_timeout_ms: Option<u64>,
    /// wiegand: the reader has a keypad sending 4/8-bit key bursts (collected into PINs).
    pub keypad: Option<bool>,

    /// simulated: swipes per second.
    pub rate_per_sec: Option<f64>,
    /// simulated: stop after this many swipes (default: run forever).
    pub count: Option<u64>,
    /// simulated: facility code of the generated cards.
    pub facility: Option<u32>,
    /// simulated: how many distinct card numbers to cycle through.
    pub population: Option<u32>,

    /// osdp: the reader's address on the bus (0–126).
    pub address: Option<u8>,
    /// osdp: poll interval of the bus (default 50 ms).
    pub poll_interval_ms: Option<u64>,
    /// osdp: reply timeout of the bus (default 200 ms).
    pub reply_timeout_ms: Option<u64>,
    /// osdp: a reader silent this long is off line (default 8000 ms).
    pub offline_after_ms: Option<u64>,
    /// osdp: file with the reader's secure-channel key (32 hex digits, mode 0600). Without it
    /// the reader is run in plain text.
    pub key_file: Option<PathBuf>,
    /// osdp: a reader still on the default install key gets `key_file`'s key (osdp_KEYSET).
    pub install_mode: Option<bool>,
    /// osdp: flash the reader's LED green once a swipe is durable (default false).
    pub feedback_led: Option<bool>,
    /// osdp: beep once a swipe is durable (default false).
    pub feedback_beep: Option<bool>,
}

impl ReaderConfig {
    fn default_dedup_ms() -> u64 {
        1500
    }
}

/// A validated reader: common settings plus what its kind needs.
#[derive(Debug, Clone, PartialEq)]
pub struct ReaderSpec {
    /// Unique id on this gateway.
    pub id: String,
    /// Zone the reader guards.
    pub zone: Option<String>,
    /// Door the reader is at.
    pub door: Option<String>,
    /// Direction of travel.
    pub direction: Option<Direction>,
    /// Same-credential re-arm interval.
    pub dedup_window: Duration,
    /// Kind-specific settings.
    pub source: ReaderSource,
}

#[cfg(test)]
impl ReaderSpec {
    /// A simulated reader `lobby` in zone `z1`, door `d1`, direction in: the fixture of the row and
    /// reader tests.
    pub(crate) fn example() -> Self {
        ReaderSpec {
            id: "lobby".into(),
            zone: Some("z1".into()),
            door: Some("d1".into()),
            direction: Some(Direction::In),
            dedup_window: Duration::from_millis(1500),
            source: ReaderSource::Simulated(Script {
                rate_per_sec: 1.0,
                count: None,
                facility: 1,
                population: 1,
            }),
        }
    }
}

/// Kind-specific, validated reader settings: each kind's own settings type, owned by its reader
/// module.
#[derive(Debug, Clone, PartialEq)]
pub enum ReaderSource {
    /// A UART reader.
    Serial(SerialSettings),
    /// A Wiegand reader on GPIO.
    Wiegand(WiegandSettings),
    /// An OSDP reader on an RS-485 bus.
    Osdp(OsdpSettings),
    /// Generated badges.
    Simulated(Script),
}

/// OSDP's baud rates.
const OSDP_BAUD_RATES: [u32; 6] = [9600, 19200, 38400, 57600, 115_200, 230_400];

impl Config {
    /// Reads and validates a file.
    pub fn load(path: &Path) -> Result<(Self, Vec<ReaderSpec>), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config = Self::parse(&text).map_err(|err| match err {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })?;
        let readers = config.validate()?;
        Ok((config, readers))
    }

    /// Parses TOML text without the semantic checks of [`Config::validate`].
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|err| ConfigError::Parse {
            path: PathBuf::from("<config>"),
            message: describe_toml_error(text, &err),
        })
    }

    /// Checks everything serde cannot and returns the typed readers.
    pub fn validate(&self) -> Result<Vec<ReaderSpec>, ConfigError> {
        check_id("gateway_id", &self.gateway_id)?;
        self.buffer.validate()?;
        if let Some(snowflake) = &self.snowflake {
            snowflake.validate(&self.gateway_id)?;
        }
        self.health.listen.parse::<SocketAddr>().map_err(|_| {
            ConfigError::invalid(
                "health.listen",
                format!("`{}` is not an IP address and port", self.health.listen),
                "write it like 127.0.0.1:9464",
            )
        })?;
        let socket = self.health.resolved_socket(&self.buffer);
        let relative = self.health.socket.is_some() && !socket.is_absolute();
        if relative || socket.as_os_str().len() > MAX_SOCKET_PATH_BYTES {
            return Err(ConfigError::invalid(
                "health.socket",
                format!(
                    "`{}` is not an absolute path of at most {MAX_SOCKET_PATH_BYTES} bytes",
                    socket.display()
                ),
                "set health.socket to a short absolute path in a directory only the agent's user can write, e.g. /run/badge-agent/agent.sock",
            ));
        }
        if self.readers.is_empty() {
            return Err(ConfigError::invalid(
                "reader",
                "no [[reader]] entries",
                "add at least one [[reader]] table (kind = \"serial\", \"wiegand\", \"osdp\" or \"simulated\")",
            ));
        }
        let mut seen = HashSet::new();
        let mut specs = Vec::with_capacity(self.readers.len());
        for (index, reader) in self.readers.iter().enumerate() {
            let key = format!("reader[{index}]");
            if !seen.insert(reader.id.as_str()) {
                return Err(ConfigError::invalid(
                    format!("{key}.id"),
                    format!("reader id `{}` is used twice", reader.id),
                    "give every reader its own id",
                ));
            }
            specs.push(reader.validate(&key)?);
        }
        check_osdp_buses(&specs)?;
        Ok(specs)
    }
}

impl BufferConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        const MIB: u64 = 1024 * 1024;
        if self.max_bytes < 16 * MIB {
            return Err(ConfigError::invalid(
                "buffer.max_bytes",
                format!(
                    "{} bytes is too small to ride out an outage",
                    self.max_bytes
                ),
                "use at least 16777216 (16 MiB); 536870912 (512 MiB) is the default",
            ));
        }
        if !(MIB..=64 * MIB).contains(&self.cache_bytes) {
            return Err(ConfigError::invalid(
                "buffer.cache_bytes",
                format!("{} bytes is outside 1 MiB ..= 64 MiB", self.cache_bytes),
                "keep sled's cache small on a gateway; 8388608 (8 MiB) is the default",
            ));
        }
        if !(1..=10_000).contains(&self.group_commit_max_records) {
            return Err(ConfigError::invalid(
                "buffer.group_commit_max_records",
                "must be between 1 and 10000",
                "use the default 256 unless measurements say otherwise",
            ));
        }
        if self.group_commit_max_delay_ms > 1000 {
            return Err(ConfigError::invalid(
                "buffer.group_commit_max_delay_ms",
                "a swipe would wait over a second before it is durable",
                "use a few milliseconds; 5 is the default",
            ));
        }
        self.validate_retry_queue()
    }

    fn validate_retry_queue(&self) -> Result<(), ConfigError> {
        const MIB: u64 = 1024 * 1024;
        if !(1..=1_000_000).contains(&self.retry_queue_max_records) {
            return Err(ConfigError::invalid(
                "buffer.retry_queue_max_records",
                format!("{} is outside 1 ..= 1000000", self.retry_queue_max_records),
                "use the default 10000 (swipes held in memory while commits fail)",
            ));
        }
        if !(64 * 1024..=64 * MIB).contains(&self.retry_queue_max_bytes) {
            return Err(ConfigError::invalid(
                "buffer.retry_queue_max_bytes",
                format!(
                    "{} bytes is outside 65536 ..= 67108864 (64 KiB ..= 64 MiB)",
                    self.retry_queue_max_bytes
                ),
                "the unit caps memory at 256 MiB; use the default 4194304 (4 MiB)",
            ));
        }
        Ok(())
    }
}

impl SnowflakeConfig {
    fn validate(&self, gateway_id: &str) -> Result<(), ConfigError> {
        for (key, value) in [
            ("snowflake.account", &self.account),
            ("snowflake.user", &self.user),
            ("snowflake.database", &self.database),
            ("snowflake.schema", &self.schema),
            ("snowflake.pipe", &self.pipe),
        ] {
            if value.trim().is_empty() {
                return Err(ConfigError::invalid(key, "is empty", "fill it in"));
            }
        }
        if self.account.contains("snowflakecomputing.com") || self.account.contains("://") {
            return Err(ConfigError::invalid(
                "snowflake.account",
                format!(
                    "`{}` looks like a URL, not an account identifier",
                    self.account
                ),
                "write only the identifier (e.g. myorg-myaccount); put a full URL in snowflake.url",
            ));
        }
        if let Some(url) = &self.url {
            if !url.starts_with("https://") {
                return Err(ConfigError::invalid(
                    "snowflake.url",
                    format!("`{url}` is not an https:// URL"),
                    "Snowflake is only reachable over TLS; write https://<account>.snowflakecomputing.com",
                ));
            }
        }
        check_id("snowflake.channel", self.channel_name(gateway_id))?;
        if self.request_timeout_secs == 0 || self.request_timeout_secs > 300 {
            return Err(ConfigError::invalid(
                "snowflake.request_timeout_secs",
                "must be between 1 and 300",
                "30 is the default",
            ));
        }
        Ok(())
    }
}

impl ReaderConfig {
    fn validate(&self, key: &str) -> Result<ReaderSpec, ConfigError> {
        check_id(&format!("{key}.id"), &self.id)?;
        if self.dedup_window_ms > 60_000 {
            return Err(ConfigError::invalid(
                format!("{key}.dedup_window_ms"),
                "longer than a minute would hide real second swipes",
                "use 0 to 5000 ms; 1500 is the default",
            ));
        }
        self.reject_foreign(key)?;
        let source = match self.kind {
            ReaderKind::Serial => self.serial(key)?,
            ReaderKind::Wiegand => self.wiegand(key)?,
            ReaderKind::Simulated => self.simulated(key)?,
            ReaderKind::Osdp => self.osdp(key)?,
        };
        Ok(ReaderSpec {
            id: self.id.clone(),
            zone: self.zone.clone(),
            door: self.door.clone(),
            direction: self.direction,
            dedup_window: Duration::from_millis(self.dedup_window_ms),
            source,
        })
    }

    /// Keys that belong to other kinds are errors: they mean the entry is not what its author thinks.
    fn reject_foreign(&self, key: &str) -> Result<(), ConfigError> {
        use ReaderKind::{Serial, Simulated, Wiegand};
        let kind_keys: &[(&str, bool, ReaderKind)] = &[
            ("device", self.device.is_some(), Serial),
            ("baud", self.baud.is_some(), Serial),
            ("framing", self.framing.is_some(), Serial),
            ("line_terminator", self.line_terminator.is_some(), Serial),
            ("line_stx", self.line_stx.is_some(), Serial),
            ("line_radix", self.line_radix.is_some(), Serial),
            ("line_max_len", self.line_max_len.is_some(), Serial),
            ("line_timeout_ms", self.line_timeout_ms.is_some(), Serial),
            ("chip", self.chip.is_some(), Wiegand),
            ("d0", self.d0.is_some(), Wiegand),
            ("d1", self.d1.is_some(), Wiegand),
            ("format", self.format.is_some(), Wiegand),
            ("frame_timeout_ms", self.frame_timeout_ms.is_some(), Wiegand),
            ("keypad", self.keypad.is_some(), Wiegand),
            ("rate_per_sec", self.rate_per_sec.is_some(), Simulated),
            ("count", self.count.is_some(), Simulated),
            ("facility", self.facility.is_some(), Simulated),
            ("population", self.population.is_some(), Simulated),
            ("address", self.address.is_some(), ReaderKind::Osdp),
            (
                "poll_interval_ms",
                self.poll_interval_ms.is_some(),
                ReaderKind::Osdp,
            ),
            (
                "reply_timeout_ms",
                self.reply_timeout_ms.is_some(),
                ReaderKind::Osdp,
            ),
            (
                "offline_after_ms",
                self.offline_after_ms.is_some(),
                ReaderKind::Osdp,
            ),
            ("key_file", self.key_file.is_some(), ReaderKind::Osdp),
            (
                "install_mode",
                self.install_mode.is_some(),
                ReaderKind::Osdp,
            ),
            (
                "feedback_led",
                self.feedback_led.is_some(),
                ReaderKind::Osdp,
            ),
            (
                "feedback_beep",
                self.feedback_beep.is_some(),
                ReaderKind::Osdp,
            ),
        ];
        // OSDP readers share `device`, `baud` and `format` with other kinds.
        let shared = |name: &str| {
            self.kind == ReaderKind::Osdp && matches!(name, "device" | "baud" | "format")
        };
        match kind_keys
            .iter()
            .find(|(name, is_set, owner)| *is_set && *owner != self.kind && !shared(name))
        {
            Some((name, _, owner)) => Err(ConfigError::invalid(
                format!("{key}.{name}"),
                format!(
                    "a setting of {owner} readers, not of a {} reader",
                    self.kind
                ),
                format!("remove it, or change `{key}.kind`"),
            )),
            None => Ok(()),
        }
    }

    fn serial(&self, key: &str) -> Result<ReaderSource, ConfigError> {
        let device = self.device.clone().ok_or_else(|| {
            ConfigError::invalid(
                format!("{key}.device"),
                "a serial reader needs a device",
                "set it, preferably to a stable /dev/serial/by-id/... path",
            )
        })?;
        let framing = self.framing.ok_or_else(|| {
            ConfigError::invalid(
                format!("{key}.framing"),
                "a serial reader needs a framing",
                "set it to \"rdm6300\", \"id12\" or \"line\"",
            )
        })?;
        let baud = self.baud.unwrap_or(9600);
        if !(1200..=921_600).contains(&baud) {
            return Err(ConfigError::invalid(
                format!("{key}.baud"),
                format!("{baud} is not a plausible reader baud rate"),
                "EM4100 modules and converters use 9600",
            ));
        }
        let line_keys_set = self.line_terminator.is_some()
            || self.line_stx.is_some()
            || self.line_radix.is_some()
            || self.line_max_len.is_some()
            || self.line_timeout_ms.is_some();
        if framing != SerialFraming::Line && line_keys_set {
            return Err(ConfigError::invalid(
                format!("{key}.framing"),
                "line_* settings are only used by the line framing",
                "remove the line_* keys or set framing = \"line\"",
            ));
        }
        let timeout_ms = self.line_timeout_ms.unwrap_or(100);
        if !(10..=10_000).contains(&timeout_ms) {
            return Err(ConfigError::invalid(
                format!("{key}.line_timeout_ms"),
                "must be between 10 and 10000",
                "100 is the default",
            ));
        }
        let defaults = LineConfig::default();
        let max_len = self.line_max_len.unwrap_or(usize::from(defaults.max_len));
        let max_len = u16::try_from(max_len)
            .ok()
            .filter(|n| (4..=256).contains(n))
            .ok_or_else(|| {
                ConfigError::invalid(
                    format!("{key}.line_max_len"),
                    "must be between 4 and 256",
                    "64 is the default",
                )
            })?;
        let line = LineConfig {
            terminator: self.line_terminator.unwrap_or(defaults.terminator),
            stx: self.line_stx.unwrap_or(defaults.stx),
            radix: self.line_radix.unwrap_or(defaults.radix),
            max_len,
            inter_byte_timeout_ns: Some(timeout_ms * 1_000_000),
            ..defaults
        };
        Ok(ReaderSource::Serial(SerialSettings {
            device,
            baud,
            framing,
            line,
        }))
    }

    fn wiegand(&self, key: &str) -> Result<ReaderSource, ConfigError> {
        let (Some(d0), Some(d1)) = (self.d0, self.d1) else {
            return Err(ConfigError::invalid(
                format!("{key}.d0"),
                "a wiegand reader needs both d0 and d1 line offsets",
                "set d0 and d1 to the GPIO line offsets the reader's D0/D1 wires are on",
            ));
        };
        if d0 == d1 {
            return Err(ConfigError::invalid(
                format!("{key}.d1"),
                "d0 and d1 are the same line",
                "D0 and D1 are two different wires; check the wiring diagram",
            ));
        }
        let format = match &self.format {
            None => FormatChoice::Auto,
            Some(name) => name.parse().map_err(|err| {
                ConfigError::invalid(format!("{key}.format"), format!("`{name}`: {err}"), "pick one of the listed names; the format is printed on the card order or the reader's label")
            })?,
        };
        let frame_timeout_ms = self.frame_timeout_ms.unwrap_or(30);
        if !(25..=100).contains(&frame_timeout_ms) {
            return Err(ConfigError::invalid(
                format!("{key}.frame_timeout_ms"),
                "must be between 25 and 100 (it has to exceed the 20 ms maximum inter-bit gap)",
                "30 is the default",
            ));
        }
        Ok(ReaderSource::Wiegand(WiegandSettings {
            chip: self
                .chip
                .clone()
                .unwrap_or_else(|| PathBuf::from("/dev/gpiochip0")),
            d0,
            d1,
            format,
            keypad: self.keypad.unwrap_or(false),
            frame_timeout: Duration::from_millis(frame_timeout_ms),
        }))
    }

    fn osdp(&self, key: &str) -> Result<ReaderSource, ConfigError> {
        let device = self.device.clone().ok_or_else(|| {
            ConfigError::invalid(
                format!("{key}.device"),
                "an osdp reader needs the RS-485 adapter's device",
                "set it, preferably to a stable /dev/serial/by-id/... path",
            )
        })?;
        let address = self.address.ok_or_else(|| {
            ConfigError::invalid(
                format!("{key}.address"),
                "an osdp reader needs its bus address",
                "set it to the address configured in the reader (0 to 126; `badge-agent osdp scan` lists them)",
            )
        })?;
        if address > 126 {
            return Err(ConfigError::invalid(
                format!("{key}.address"),
                format!("{address} is not an OSDP reader address (127 is broadcast)"),
                "use 0 to 126",
            ));
        }
        let baud = self.baud.unwrap_or(9600);
        if !OSDP_BAUD_RATES.contains(&baud) {
            return Err(ConfigError::invalid(
                format!("{key}.baud"),
                format!("{baud} is not an OSDP baud rate"),
                "use 9600, 19200, 38400, 57600, 115200 or 230400 (9600 is the readers' default)",
            ));
        }
        let ms =
            |name: &str, value: Option<u64>, default: u64, range: std::ops::RangeInclusive<u64>| {
                let v = value.unwrap_or(default);
                if range.contains(&v) {
                    Ok(Duration::from_millis(v))
                } else {
                    Err(ConfigError::invalid(
                        format!("{key}.{name}"),
                        format!("{v} ms is outside {} to {} ms", range.start(), range.end()),
                        format!("{default} is the default"),
                    ))
                }
            };
        let poll_interval = ms("poll_interval_ms", self.poll_interval_ms, 50, 10..=5000)?;
        let reply_timeout = ms("reply_timeout_ms", self.reply_timeout_ms, 200, 20..=2000)?;
        let offline_after = ms(
            "offline_after_ms",
            self.offline_after_ms,
            8000,
            500..=120_000,
        )?;
        if offline_after < reply_timeout * 2 {
            return Err(ConfigError::invalid(
                format!("{key}.offline_after_ms"),
                "shorter than two reply timeouts: one lost reply would take the reader off line",
                "keep the default 8000, or at least twice reply_timeout_ms",
            ));
        }
        let install_mode = self.install_mode.unwrap_or(false);
        if install_mode && self.key_file.is_none() {
            return Err(ConfigError::invalid(
                format!("{key}.install_mode"),
                "install mode gives the reader the key of key_file, and there is none",
                "set key_file (32 hex digits, chmod 600), or remove install_mode",
            ));
        }
        let format = match &self.format {
            None => FormatChoice::Auto,
            Some(name) => name.parse().map_err(|err| {
                ConfigError::invalid(format!("{key}.format"), format!("`{name}`: {err}"), "pick one of the listed names; the format is printed on the card order or the reader's label")
            })?,
        };
        Ok(ReaderSource::Osdp(OsdpSettings {
            device,
            baud,
            address,
            poll_interval,
            reply_timeout,
            offline_after,
            key_file: self.key_file.clone(),
            install_mode,
            format,
            feedback_led: self.feedback_led.unwrap_or(false),
            feedback_beep: self.feedback_beep.unwrap_or(false),
        }))
    }

    fn simulated(&self, key: &str) -> Result<ReaderSource, ConfigError> {
        let rate_per_sec = self.rate_per_sec.unwrap_or(1.0);
        // The period (1 / rate) must be a usable timer interval: 100 s down to 10 µs.
        if !(0.01..=100_000.0).contains(&rate_per_sec) {
            return Err(ConfigError::invalid(
                format!("{key}.rate_per_sec"),
                format!("{rate_per_sec} is not between 0.01 and 100000 swipes per second"),
                "use e.g. 5.0",
            ));
        }
        let facility = self.facility.unwrap_or(42);
        if facility > 255 {
            return Err(ConfigError::invalid(
                format!("{key}.facility"),
                "simulated readers emit H10301 cards, whose facility code is 0..=255",
                "use a value up to 255",
            ));
        }
        let population = self.population.unwrap_or(500);
        if !(1..=65_535).contains(&population) {
            return Err(ConfigError::invalid(
                format!("{key}.population"),
                "must be between 1 and 65535",
                "500 is the default",
            ));
        }
        Ok(ReaderSource::Simulated(Script {
            rate_per_sec,
            count: self.count,
            facility,
            population,
        }))
    }
}

/// Readers on one OSDP bus (same device) must agree on the bus settings and have distinct
/// addresses.
fn check_osdp_buses(specs: &[ReaderSpec]) -> Result<(), ConfigError> {
    let osdp: Vec<(usize, &OsdpSettings)> = specs
        .iter()
        .enumerate()
        .filter_map(|(i, s)| match &s.source {
            ReaderSource::Osdp(o) => Some((i, o)),
            _ => None,
        })
        .collect();
    for (n, (i, a)) in osdp.iter().enumerate() {
        for (j, b) in osdp.iter().take(n) {
            if a.device != b.device {
                continue;
            }
            if a.address == b.address {
                return Err(ConfigError::invalid(
                    format!("reader[{i}].address"),
                    format!(
                        "address {} is also used by reader `{}` on the bus {}",
                        a.address,
                        specs[*j].id,
                        a.device.display()
                    ),
                    "give every reader on one bus its own address (set in the reader)",
                ));
            }
            let same_bus = a.baud == b.baud
                && a.poll_interval == b.poll_interval
                && a.reply_timeout == b.reply_timeout
                && a.offline_after == b.offline_after;
            if !same_bus {
                return Err(ConfigError::invalid(
                    format!("reader[{i}]"),
                    format!(
                        "baud / poll_interval_ms / reply_timeout_ms / offline_after_ms differ from reader `{}` on the same bus {}",
                        specs[*j].id,
                        a.device.display()
                    ),
                    "readers sharing a device are one bus: give them the same bus settings",
                ));
            }
        }
    }
    Ok(())
}

/// Words that mark a key whose value may be a secret (proxy URLs carry credentials).
const SECRET_KEY_WORDS: &[&str] = &[
    "proxy",
    "key",
    "token",
    "secret",
    "password",
    "passwd",
    "credential",
    "auth",
];

/// The parser's message and the offending line, like toml's own rendering, except that a line
/// naming a secret-bearing key shows `<redacted>` instead of its value (error messages end up in
/// terminals, tickets and the journal).
fn describe_toml_error(text: &str, err: &toml::de::Error) -> String {
    let message = err.message().trim_end();
    let Some(span) = err.span() else {
        return message.to_owned();
    };
    let start = (0..=span.start.min(text.len()))
        .rev()
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(0);
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
    let line_no = text[..start].matches('\n').count() + 1;
    let column = text[line_start..start].chars().count() + 1;
    let line = text[line_start..line_end].trim_end_matches('\r');
    let (shown, message) = match redact_line(line) {
        Some((shown, value)) => {
            let value = value.trim().trim_matches(|c| c == '"' || c == '\'');
            let message = if value.is_empty() {
                message.to_owned()
            } else {
                message.replace(value, "<redacted>")
            };
            (shown, message)
        }
        None => (line.to_owned(), message.to_owned()),
    };
    format!("line {line_no}, column {column}: {message}\n  {line_no} | {shown}")
}

/// `Some((line with the value replaced, the value))` when `line` assigns anything to (or inside)
/// a key whose name suggests a secret.
fn redact_line(line: &str) -> Option<(String, &str)> {
    let (key, value) = line.split_once('=')?;
    let lower = line.to_ascii_lowercase();
    SECRET_KEY_WORDS
        .iter()
        .any(|w| lower.contains(w))
        .then(|| (format!("{} = <redacted>", key.trim_end()), value))
}

/// Ids end up in channel names, event ids and metric labels: keep them boring.
fn check_id(key: &str, value: &str) -> Result<(), ConfigError> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            key,
            format!("`{value}` is not a valid id"),
            "use 1 to 64 characters from A-Z, a-z, 0-9, '-', '_' and '.'",
        ))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const MINIMAL: &str = r#"
        gateway_id = "gw-01"
        [[reader]]
        id = "sim"
        kind = "simulated"
    "#;

    fn invalid_key(text: &str) -> String {
        let config = Config::parse(text).unwrap();
        match config.validate() {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("expected an invalid key, got {other:?}"),
        }
    }

    #[test]
    fn minimal_file_gets_defaults() {
        let config = Config::parse(MINIMAL).unwrap();
        let readers = config.validate().unwrap();
        assert_eq!(config.buffer.max_bytes, 512 * 1024 * 1024);
        assert_eq!(config.buffer.full_policy, FullPolicy::RefuseNew);
        assert_eq!(config.buffer.min_free_bytes, 64 * 1024 * 1024);
        assert_eq!(config.health.listen, DEFAULT_HEALTH_LISTEN);
        assert_eq!(readers.len(), 1);
        assert_eq!(readers[0].dedup_window, Duration::from_millis(1500));
        assert!(matches!(
            readers[0].source,
            ReaderSource::Simulated(Script {
                facility: 42,
                population: 500,
                ..
            })
        ));
    }

    #[test]
    fn full_example_validates() {
        let text = r#"
            gateway_id = "gw-lobby-01"
            [buffer]
            path = "/tmp/x"
            full_policy = "drop_oldest"
            min_free_bytes = 0
            [snowflake]
            account = "myorg-myaccount"
            user = "BADGE_INGEST"
            role = "BADGE_INGEST_ROLE"
            private_key_file = "/etc/badge-agent/rsa_key.p8"
            database = "BADGE_DB"
            schema = "RAW_INGESTION"
            pipe = "BADGE_EVENTS_PIPE"
            [[reader]]
            id = "lobby-in"
            kind = "serial"
            device = "/dev/ttyUSB0"
            framing = "line"
            line_terminator = "crlf"
            line_radix = "decimal"
            direction = "in"
            [[reader]]
            id = "garage"
            kind = "wiegand"
            d0 = 17
            d1 = 27
            format = "h10301"
        "#;
        let config = Config::parse(text).unwrap();
        let readers = config.validate().unwrap();
        let snowflake = config.snowflake.as_ref().unwrap();
        assert_eq!(
            snowflake.account_url(),
            "https://myorg-myaccount.snowflakecomputing.com"
        );
        assert_eq!(snowflake.channel_name(&config.gateway_id), "gw-lobby-01");
        assert_eq!(config.buffer.resolved_path(), PathBuf::from("/tmp/x"));
        let buffer = crate::buffer::BufferOptions::from_config(&config.buffer);
        assert_eq!(buffer.min_free_bytes, 0);
        assert_eq!(buffer.full_policy, crate::buffer::FullPolicy::DropOldest);
        match &readers[0].source {
            ReaderSource::Serial(serial) => {
                assert_eq!(serial.baud, 9600);
                assert_eq!(serial.line.terminator, Terminator::CrLf);
                assert_eq!(serial.line.radix, Radix::Decimal);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            &readers[1].source,
            ReaderSource::Wiegand(WiegandSettings { d0: 17, d1: 27, .. })
        ));
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::parse("gateway_id = \"gw\"\ngatway = 1\n").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("gatway"), "{text}");
    }

    #[test]
    fn parse_errors_never_echo_secret_values() {
        let cases = [
            "gateway_id = \"gw\"\n[snowflake]\nproxy = \"http://user:hunter2@proxy:3128\" junk\n",
            "gateway_id = \"gw\"\n[snowflake]\nproxy = \"http://user:hunter2@proxy:3128\n",
            "gateway_id = \"gw\"\nsnowflake = { proxy = \"http://u:hunter2@p\", user = 5x }\n",
            "gateway_id = \"gw\"\n[snowflake]\napi_token = 'hunter2' 'again'\n",
            "gateway_id = \"gw\"\n[snowflake]\nproxy = 12hunter2\n",
        ];
        for text in cases {
            let err = Config::parse(text).unwrap_err().to_string();
            assert!(!err.contains("hunter2"), "{err}");
            assert!(err.contains("<redacted>"), "{err}");
            assert!(err.contains("line "), "{err}");
        }
        // Other lines are still shown as written, so the operator sees what to fix.
        let err = Config::parse("gateway_id = \"gw\"\nbuffer = { max_bytes = 12x }\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("line 2") && err.contains("max_bytes = 12x"),
            "{err}"
        );
    }

    #[test]
    fn wrong_type_is_named() {
        let err = Config::parse(
            "gateway_id = \"gw\"\n[[reader]]\nid = \"r\"\nkind = \"serial\"\nbaud = \"fast\"\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("baud"), "{err}");
    }

    #[test]
    fn unknown_reader_kind_is_named() {
        let err = Config::parse("gateway_id = \"gw\"\n[[reader]]\nid = \"r\"\nkind = \"nfc\"\n")
            .unwrap_err();
        assert!(err.to_string().contains("nfc"), "{err}");
    }

    #[test]
    fn semantic_errors_name_the_key() {
        let base = "gateway_id = \"gw\"\n";
        let cases = [
            (
                "gateway_id = \"gw 1\"\n[[reader]]\nid = \"s\"\nkind = \"simulated\"\n",
                "gateway_id",
            ),
            (base, "reader"),
            (
                &format!("{base}[[reader]]\nid = \"s\"\nkind = \"serial\"\nframing = \"rdm6300\"\n"),
                "reader[0].device",
            ),
            (
                &format!("{base}[[reader]]\nid = \"s\"\nkind = \"serial\"\ndevice = \"/dev/x\"\n"),
                "reader[0].framing",
            ),
            (
                &format!("{base}[[reader]]\nid = \"s\"\nkind = \"serial\"\ndevice = \"/dev/x\"\nframing = \"id12\"\nd0 = 3\n"),
                "reader[0].d0",
            ),
            (
                &format!("{base}[[reader]]\nid = \"s\"\nkind = \"serial\"\ndevice = \"/dev/x\"\nframing = \"id12\"\nline_radix = \"hex\"\n"),
                "reader[0].framing",
            ),
            (
                &format!("{base}[[reader]]\nid = \"w\"\nkind = \"wiegand\"\nd0 = 4\n"),
                "reader[0].d0",
            ),
            (
                &format!("{base}[[reader]]\nid = \"w\"\nkind = \"wiegand\"\nd0 = 4\nd1 = 4\n"),
                "reader[0].d1",
            ),
            (
                &format!("{base}[[reader]]\nid = \"w\"\nkind = \"wiegand\"\nd0 = 4\nd1 = 5\nframe_timeout_ms = 5\n"),
                "reader[0].frame_timeout_ms",
            ),
            (
                &format!("{base}[[reader]]\nid = \"w\"\nkind = \"wiegand\"\nd0 = 4\nd1 = 5\nformat = \"h99\"\n"),
                "reader[0].format",
            ),
            (
                &format!("{base}[[reader]]\nid = \"a\"\nkind = \"simulated\"\n[[reader]]\nid = \"a\"\nkind = \"simulated\"\n"),
                "reader[1].id",
            ),
            (
                &format!("{base}[[reader]]\nid = \"a\"\nkind = \"simulated\"\nrate_per_sec = 0.0\n"),
                "reader[0].rate_per_sec",
            ),
            (
                &format!("{base}[[reader]]\nid = \"a\"\nkind = \"simulated\"\nrate_per_sec = 1e-300\n"),
                "reader[0].rate_per_sec",
            ),
            (
                &format!("{base}[[reader]]\nid = \"a\"\nkind = \"simulated\"\nrate_per_sec = 1e300\n"),
                "reader[0].rate_per_sec",
            ),
            (
                &format!("{base}[[reader]]\nid = \"a\"\nkind = \"simulated\"\nrate_per_sec = nan\n"),
                "reader[0].rate_per_sec",
            ),
            (
                &format!("{base}[[reader]]\nid = \"s\"\nkind = \"serial\"\ndevice = \"/dev/x\"\nframing = \"line\"\nline_timeout_ms = 9223372036854775807\n"),
                "reader[0].line_timeout_ms",
            ),
            (
                &format!("{base}[health]\nsocket = \"relative.sock\"\n[[reader]]\nid = \"a\"\nkind = \"simulated\"\n"),
                "health.socket",
            ),
            (
                &format!("{base}[health]\nsocket = \"/{}/agent.sock\"\n[[reader]]\nid = \"a\"\nkind = \"simulated\"\n", "d".repeat(120)),
                "health.socket",
            ),
            (
                &format!("{base}[buffer]\nmax_bytes = 10\n[[reader]]\nid = \"a\"\nkind = \"simulated\"\n"),
                "buffer.max_bytes",
            ),
            (
                &format!("{base}[health]\nlisten = \"localhost\"\n[[reader]]\nid = \"a\"\nkind = \"simulated\"\n"),
                "health.listen",
            ),
            (
                &format!("{base}[snowflake]\naccount = \"https://x.snowflakecomputing.com\"\nuser = \"u\"\nprivate_key_file = \"/k\"\ndatabase = \"d\"\nschema = \"s\"\npipe = \"p\"\n[[reader]]\nid = \"a\"\nkind = \"simulated\"\n"),
                "snowflake.account",
            ),
            (
                &format!("{base}[snowflake]\naccount = \"a\"\nurl = \"http://x\"\nuser = \"u\"\nprivate_key_file = \"/k\"\ndatabase = \"d\"\nschema = \"s\"\npipe = \"p\"\n[[reader]]\nid = \"a\"\nkind = \"simulated\"\n"),
                "snowflake.url",
            ),
        ];
        for (text, key) in cases {
            assert_eq!(invalid_key(text), key, "for:\n{text}");
        }
    }

    #[test]
    fn private_socket_follows_the_buffer_unless_configured() {
        let config = Config::parse(MINIMAL).unwrap();
        let mut buffer = config.buffer.clone();
        buffer.path = Some(PathBuf::from(DEFAULT_BUFFER_PATH));
        assert_eq!(
            config.health.resolved_socket(&buffer),
            PathBuf::from(DEFAULT_HEALTH_SOCKET)
        );
        buffer.path = Some(PathBuf::from("/tmp/demo/buffer"));
        assert_eq!(
            config.health.resolved_socket(&buffer),
            PathBuf::from("/tmp/demo/agent.sock")
        );
        let mut health = config.health.clone();
        health.socket = Some(PathBuf::from("/run/x.sock"));
        assert_eq!(
            health.resolved_socket(&buffer),
            PathBuf::from("/run/x.sock")
        );
    }

    #[test]
    fn error_message_says_how_to_fix() {
        let config = Config::parse("gateway_id = \"gw\"\n").unwrap();
        let message = config.validate().unwrap_err().to_string();
        assert!(message.contains("config key `reader`"), "{message}");
        assert!(message.contains("fix:"), "{message}");
    }

    #[test]
    fn load_reports_missing_file_with_path() {
        let err = Config::load(Path::new("/nonexistent/badge.toml")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/badge.toml"), "{err}");
    }

    #[test]
    fn retry_queue_keys_default_and_are_bounded() {
        let with = |buffer: &str| {
            format!("gateway_id = \"gw\"\n[buffer]\n{buffer}[[reader]]\nid = \"a\"\nkind = \"simulated\"\n")
        };
        let config = Config::parse(&with("")).unwrap();
        config.validate().unwrap();
        assert_eq!(config.buffer.retry_queue_max_records, 10_000);
        assert_eq!(config.buffer.retry_queue_max_bytes, 4 * 1024 * 1024);
        for (buffer, key) in [
            (
                "retry_queue_max_records = 0\n",
                "buffer.retry_queue_max_records",
            ),
            (
                "retry_queue_max_records = 2000000\n",
                "buffer.retry_queue_max_records",
            ),
            (
                "retry_queue_max_bytes = 1000\n",
                "buffer.retry_queue_max_bytes",
            ),
            (
                "retry_queue_max_bytes = 1073741824\n",
                "buffer.retry_queue_max_bytes",
            ),
        ] {
            assert_eq!(invalid_key(&with(buffer)), key, "for {buffer}");
        }
        let message = Config::parse(&with("retry_queue_max_bytes = 1000\n"))
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(message.contains("4194304"), "{message}");
    }

    #[test]
    fn osdp_readers_validate_per_bus() {
        let base = "gateway_id = \"gw\"\n";
        let osdp = |id: &str, dev: &str, addr: u8, extra: &str| {
            format!("[[reader]]\nid = \"{id}\"\nkind = \"osdp\"\ndevice = \"{dev}\"\naddress = {addr}\n{extra}")
        };
        let ok = format!(
            "{base}{}{}{}",
            osdp(
                "a",
                "/dev/rs485",
                1,
                "key_file = \"/k\"\ninstall_mode = true\nformat = \"h10301\"\nbaud = 19200\n"
            ),
            osdp("b", "/dev/rs485", 2, "baud = 19200\n"),
            osdp("c", "/dev/other", 1, "")
        );
        let specs = Config::parse(&ok).unwrap().validate().unwrap();
        let ReaderSource::Osdp(a) = &specs[0].source else {
            panic!("{specs:?}")
        };
        assert_eq!((a.address, a.baud, a.install_mode), (1, 19200, true));
        assert_eq!(a.offline_after, Duration::from_secs(8));
        assert!(
            !a.feedback_led && !a.feedback_beep,
            "feedback is off by default"
        );

        let cases = [
            (
                format!(
                    "{base}{}{}",
                    osdp("a", "/dev/x", 3, ""),
                    osdp("b", "/dev/x", 3, "")
                ),
                "reader[1].address",
            ),
            (
                format!("{base}{}", osdp("a", "/dev/x", 3, "baud = 14400\n")),
                "reader[0].baud",
            ),
            (
                format!("{base}{}", osdp("a", "/dev/x", 127, "")),
                "reader[0].address",
            ),
            (
                format!("{base}{}", osdp("a", "/dev/x", 3, "install_mode = true\n")),
                "reader[0].install_mode",
            ),
            (
                format!(
                    "{base}{}{}",
                    osdp("a", "/dev/x", 1, ""),
                    osdp("b", "/dev/x", 2, "baud = 19200\n")
                ),
                "reader[1]",
            ),
            (
                format!("{base}{}", osdp("a", "/dev/x", 1, "framing = \"line\"\n")),
                "reader[0].framing",
            ),
            (
                format!(
                    "{base}{}",
                    osdp("a", "/dev/x", 1, "offline_after_ms = 300\n")
                ),
                "reader[0].offline_after_ms",
            ),
        ];
        for (text, key) in cases {
            let err = Config::parse(&text).unwrap().validate().unwrap_err();
            assert!(err.to_string().contains(key), "{key}: {err}");
        }
    }
}
