//! `badge-agent osdp …`: technician tools for an OSDP bus — list the readers on it, give a reader
//! its secure-channel key, make a key file. Stop the agent first: a bus has one control panel.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use reader_protocol::osdp::{BusTiming, ControlPanel, CpEvent, PdSettings, Security};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_serial::SerialPortBuilderExt;

use crate::readers::osdp::load_key;

/// Arguments of `badge-agent osdp`.
#[derive(Debug, clap::Args)]
pub struct OsdpArgs {
    /// What to do.
    #[command(subcommand)]
    pub what: OsdpCommand,
}

/// `osdp` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum OsdpCommand {
    /// List the readers answering on a bus, with their identity and capabilities.
    Scan {
        /// The RS-485 adapter.
        #[arg(long)]
        device: PathBuf,
        /// Baud rate.
        #[arg(long, default_value_t = 9600)]
        baud: u32,
        /// Addresses to try, e.g. `0-126` or `1,2,5`.
        #[arg(long, default_value = "0-126")]
        addresses: String,
        /// How long to wait for each reply; raise it for readers that answer late.
        #[arg(long, default_value_t = BusTiming::scan().reply_timeout_ms,
              value_parser = clap::value_parser!(u64).range(50..=5000))]
        reply_timeout_ms: u64,
    },
    /// Give a reader a new secure-channel key (osdp_KEYSET) and check it connects with it.
    SetKey {
        /// The RS-485 adapter.
        #[arg(long)]
        device: PathBuf,
        /// Baud rate.
        #[arg(long, default_value_t = 9600)]
        baud: u32,
        /// The reader's address.
        #[arg(long)]
        address: u8,
        /// The new key (a key file: 32 hex digits, mode 0600).
        #[arg(long)]
        new_key_file: PathBuf,
        /// The reader's current key; without it the reader must be in install mode (default key).
        #[arg(long)]
        current_key_file: Option<PathBuf>,
    },
    /// Write a new random key file (mode 0600; never overwrites).
    GenKey {
        /// Where to write it.
        #[arg(long)]
        out: PathBuf,
    },
}

/// Runs the subcommand.
pub fn run(args: &OsdpArgs) -> anyhow::Result<ExitCode> {
    match &args.what {
        OsdpCommand::GenKey { out } => gen_key(out),
        OsdpCommand::Scan {
            device,
            baud,
            addresses,
            reply_timeout_ms,
        } => {
            let addresses = parse_addresses(addresses)?;
            let timing = BusTiming {
                reply_timeout_ms: *reply_timeout_ms,
                ..BusTiming::scan()
            };
            runtime()?.block_on(scan(device, *baud, timing, &addresses))
        }
        OsdpCommand::SetKey {
            device,
            baud,
            address,
            new_key_file,
            current_key_file,
        } => {
            let new_key = load_key(new_key_file).map_err(anyhow::Error::msg)?;
            let current = match current_key_file {
                Some(path) => Some(load_key(path).map_err(anyhow::Error::msg)?),
                None => None,
            };
            runtime()?.block_on(set_key(device, *baud, *address, new_key, current))
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")
}

fn gen_key(out: &Path) -> anyhow::Result<ExitCode> {
    use std::os::unix::fs::OpenOptionsExt;
    let key: [u8; 16] = rand::random();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .with_context(|| format!("cannot create {} (it must not exist yet)", out.display()))?;
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    writeln!(file, "{hex}")?;
    file.sync_all()?;
    println!(
        "wrote a new OSDP reader key to {} (mode 0600)",
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `0-126`, `1,2,5`, `1-3,9`.
fn parse_addresses(text: &str) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a.trim().parse::<u8>()?, b.trim().parse::<u8>()?),
            None => {
                let a = part.parse::<u8>()?;
                (a, a)
            }
        };
        if a > b || b > 126 {
            bail!("--addresses {part}: addresses are 0 to 126");
        }
        out.extend(a..=b);
    }
    out.sort_unstable();
    out.dedup();
    if out.is_empty() {
        bail!("--addresses: none given");
    }
    Ok(out)
}

/// Runs a control panel on the port until `done` says so or `limit` passes.
async fn drive(
    device: &Path,
    baud: u32,
    timing: BusTiming,
    cp: &mut ControlPanel,
    limit: Duration,
    mut done: impl FnMut(&mut ControlPanel, &CpEvent) -> bool,
) -> anyhow::Result<bool> {
    let mut port = tokio_serial::new(device.to_string_lossy(), baud)
        .open_native_async()
        .with_context(|| format!("cannot open {}", device.display()))?;
    let start = Instant::now();
    let now_ms = || u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
    let mut buf = [0u8; 512];
    while start.elapsed() < limit {
        let now = now_ms();
        cp.handle_timeout(now);
        if let Some(bytes) = cp.poll_transmit(now, rand::random()) {
            AsyncWriteExt::write_all(&mut port, &bytes).await?;
        }
        while let Some(event) = cp.poll_event() {
            if done(cp, &event) {
                return Ok(true);
            }
        }
        let wait = cp
            .next_deadline()
            .map_or(timing.poll_interval_ms, |d| d.saturating_sub(now_ms()))
            .clamp(1, 100);
        tokio::select! {
            read = AsyncReadExt::read(&mut port, &mut buf) => {
                let n = read.context("reading the bus")?;
                cp.handle_rx(&buf[..n], now_ms());
            }
            () = tokio::time::sleep(Duration::from_millis(wait)) => {}
        }
    }
    Ok(false)
}

async fn scan(
    device: &Path,
    baud: u32,
    timing: BusTiming,
    addresses: &[u8],
) -> anyhow::Result<ExitCode> {
    let pds = addresses
        .iter()
        .map(|&address| PdSettings {
            address,
            security: Security::Plain,
        })
        .collect();
    let mut cp = ControlPanel::new(timing, pds)?;
    let mut remaining: std::collections::BTreeSet<u8> = addresses.iter().copied().collect();
    let mut found = 0;
    // The bus is polled one address at a time: an empty one costs its unanswered tries, a reader
    // about as many exchanges (poll, ID, capabilities, a retry).
    let per_address = (u64::from(timing.offline_after_tries) + 3) * timing.reply_timeout_ms;
    let limit = Duration::from_millis(per_address * addresses.len() as u64 + 2000);
    let finished = drive(device, baud, timing, &mut cp, limit, |_, event| {
        match event {
            CpEvent::Identified { addr, id } => {
                found += 1;
                println!(
                    "address {addr}: vendor {:02x}{:02x}{:02x} model {} version {} serial {:08x} firmware {}.{}.{}",
                    id.vendor[0], id.vendor[1], id.vendor[2], id.model, id.version, id.serial,
                    id.firmware[0], id.firmware[1], id.firmware[2]
                );
            }
            CpEvent::Capabilities { addr, caps } => {
                let secure = caps.iter().any(|&(f, c, _)| f == 9 && c & 1 == 1);
                let list: Vec<String> = caps
                    .iter()
                    .map(|(f, c, n)| format!("{}={c}/{n}", capability_name(*f)))
                    .collect();
                println!(
                    "address {addr}: secure channel {}; capabilities {}",
                    if secure { "supported" } else { "NOT supported" },
                    list.join(" ")
                );
                remaining.remove(addr);
            }
            CpEvent::Offline { addr, .. } => {
                remaining.remove(addr);
            }
            _ => {}
        }
        remaining.is_empty()
    })
    .await?;
    println!(
        "{found} reader(s) found on {} at {baud} baud",
        device.display()
    );
    if !finished {
        let left: Vec<String> = remaining.iter().map(u8::to_string).collect();
        bail!(
            "the scan ran out of time ({} s) before addresses {} answered or gave up; the bus \
             may be busy (stop the agent first) or the readers slow: try --addresses {} \
             --reply-timeout-ms {}",
            limit.as_secs(),
            left.join(","),
            left.join(","),
            timing.reply_timeout_ms.saturating_mul(2).min(5000)
        );
    }
    Ok(if found > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn capability_name(function: u8) -> String {
    match function {
        1 => "contact_status".into(),
        2 => "outputs".into(),
        3 => "card_format".into(),
        4 => "led".into(),
        5 => "audible".into(),
        6 => "text".into(),
        8 => "crc".into(),
        9 => "secure_channel".into(),
        10 => "rx_buffer".into(),
        11 => "max_message".into(),
        12 => "smart_card".into(),
        13 => "readers".into(),
        14 => "biometrics".into(),
        16 => "osdp_version".into(),
        other => format!("f{other}"),
    }
}

async fn set_key(
    device: &Path,
    baud: u32,
    address: u8,
    new_key: [u8; 16],
    current: Option<[u8; 16]>,
) -> anyhow::Result<ExitCode> {
    let timing = BusTiming::default();
    let limit = Duration::from_secs(20);
    let security = match current {
        // Connect with the current key, then send KEYSET.
        Some(scbk) => Security::Secure {
            scbk,
            install_mode: false,
        },
        // Install mode: connect with the default key and provision `new_key`.
        None => Security::Secure {
            scbk: new_key,
            install_mode: true,
        },
    };
    let mut cp = ControlPanel::new(timing, vec![PdSettings { address, security }])?;
    let mut fault = None;
    let mut sent = false;
    let mut key_taken = false;
    let ok = drive(
        device,
        baud,
        timing,
        &mut cp,
        limit,
        |cp, event| match event {
            CpEvent::Online { secure: true, .. } if current.is_some() && !sent => {
                sent = cp.set_key(address, new_key).unwrap_or(false);
                false
            }
            CpEvent::CommandAck { command: 0x75, .. } | CpEvent::KeySet { .. } => {
                key_taken = true;
                false
            }
            CpEvent::Online { secure: true, .. } => key_taken,
            CpEvent::SecureFault { fault: f, .. } => {
                fault = Some(f.to_string());
                // In install mode the first refusal (the new key) is expected; a second is final.
                current.is_some() || key_taken
            }
            CpEvent::Offline { .. } => {
                fault = Some("the reader does not answer".into());
                true
            }
            _ => false,
        },
    )
    .await?;
    if ok && key_taken {
        println!("reader at address {address} took the new key and connects with it");
        Ok(ExitCode::SUCCESS)
    } else {
        bail!(
            "reader at address {address} did not take the key: {}",
            fault.unwrap_or_else(|| "no answer in time".into())
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn address_lists() {
        assert_eq!(parse_addresses("1-3,9").unwrap(), vec![1, 2, 3, 9]);
        assert_eq!(parse_addresses("0-126").unwrap().len(), 127);
        assert!(parse_addresses("5-127").is_err());
        assert!(parse_addresses("x").is_err());
    }
}
