//! Serial readers (RDM6300 / EM4100 modules, ID-12LA, converters, ASCII line readers) over
//! `tokio-serial`.
//!
//! The device is reopened with back-off whenever it disappears: a USB-serial adapter that is
//! unplugged makes reads fail, and when it is plugged back the same path (best a stable
//! `/dev/serial/by-id/…` link) opens again.

use std::path::PathBuf;
use std::time::Duration;

use reader_protocol::serial::{Framer, LineConfig, SerialDecoder, SerialError, SerialFraming};
use reader_protocol::ReaderEvent;
use tokio::io::AsyncReadExt;
use tokio::sync::watch;
use tokio_serial::SerialPortBuilderExt;

use super::{Emitter, Reconnect, IDLE_TICK};
use crate::clock;

/// A validated serial reader: where it is attached and how its bytes are framed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialSettings {
    /// Device path.
    pub device: PathBuf,
    /// Baud rate.
    pub baud: u32,
    /// Framing.
    pub framing: SerialFraming,
    /// Line framing settings (used when `framing` is `Line`).
    pub line: LineConfig,
}

/// Noise before the first frame is normal (a module powered up mid-frame); it is counted but
/// does not become a fault row.
fn is_noise(err: &SerialError) -> bool {
    matches!(err, SerialError::Junk { .. })
}

/// Runs one serial reader until shutdown.
pub async fn run(
    mut emitter: Emitter,
    settings: SerialSettings,
    mut shutdown: watch::Receiver<bool>,
) {
    let SerialSettings {
        device,
        baud,
        framing,
        line,
    } = settings;
    let mut reconnect = Reconnect::new();
    while !*shutdown.borrow() {
        emitter.beat();
        let port = tokio_serial::new(device.to_string_lossy(), baud)
            .timeout(Duration::from_millis(100))
            .open_native_async();
        let mut port = match port {
            Ok(port) => port,
            Err(err) => {
                let message = format!("cannot open {}: {err}", device.display());
                if reconnect.failed(&emitter, message, &mut shutdown).await {
                    break;
                }
                continue;
            }
        };
        // Bytes queued before this open (the tail of a line cut by a crash or an unplug) would
        // decode as a bogus short credential, e.g. "41\r\n" of "12341\r\n": start at a boundary.
        if let Err(err) = tokio_serial::SerialPort::clear(&port, tokio_serial::ClearBuffer::Input) {
            tracing::warn!(reader = emitter.reader_id(), error = %err, "cannot discard stale input");
        }
        tracing::info!(reader = emitter.reader_id(), device = %device.display(), baud, "serial reader connected");
        reconnect.connected(&emitter);
        // A fresh decoder per connection: a frame cut by the unplug must not merge with the next.
        let mut decoder = SerialDecoder::new(framing, line);
        let mut buf = [0_u8; 256];
        loop {
            emitter.beat();
            let wait = decoder
                .poll_timeout()
                .map_or(IDLE_TICK, |deadline| {
                    Duration::from_nanos(deadline.saturating_sub(clock::monotonic_ns()))
                })
                .min(IDLE_TICK);
            let read = tokio::select! {
                read = tokio::time::timeout(wait, port.read(&mut buf)) => read,
                _ = shutdown.changed() => break,
            };
            let now = clock::monotonic_ns();
            let chunk = match read {
                Err(_elapsed) => {
                    if let Some(out) = decoder
                        .poll_timeout()
                        .filter(|d| *d <= now)
                        .and_then(|_| decoder.flush(now))
                    {
                        handle(&mut emitter, out, now).await;
                    }
                    continue;
                }
                Ok(Ok(0)) => {
                    disconnected(&emitter, &device, "end of stream");
                    break;
                }
                Ok(Ok(n)) => &buf[..n],
                Ok(Err(err)) => {
                    disconnected(&emitter, &device, &err.to_string());
                    break;
                }
            };
            // Collect first: the decoder borrows `chunk` and emitting awaits.
            let outputs: Vec<_> = decoder.feed(chunk, now).collect();
            for out in outputs {
                handle(&mut emitter, out, now).await;
            }
        }
    }
    emitter.set_connected(false, None);
}

fn disconnected(emitter: &Emitter, device: &std::path::Path, why: &str) {
    let message = format!("{} disconnected: {why}", device.display());
    tracing::warn!(reader = emitter.reader_id(), "{message}; reopening");
    emitter.count_error("disconnected", &message);
    emitter.set_connected(false, Some(message));
}

async fn handle(
    emitter: &mut Emitter,
    out: Result<reader_protocol::Credential, SerialError>,
    now: u64,
) {
    match out {
        Ok(card) => {
            emitter.emit(ReaderEvent::Card(card), now).await;
        }
        Err(err) if is_noise(&err) => {
            emitter.count_error("noise", &err.to_string());
            tracing::debug!(reader = emitter.reader_id(), error = %err, "serial noise skipped");
        }
        Err(err) => {
            emitter.emit(ReaderEvent::from(err), now).await;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn rdm6300(id: &str) -> Vec<u8> {
        let bytes: Vec<u8> = (0..5)
            .map(|i| u8::from_str_radix(&id[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        let checksum = bytes.iter().fold(0, |a, b| a ^ b);
        let mut frame = vec![0x02];
        frame.extend(format!("{id}{checksum:02X}").bytes());
        frame.push(0x03);
        frame
    }

    #[test]
    fn junk_is_noise_but_checksum_errors_are_faults() {
        let mut rdm = SerialDecoder::new(SerialFraming::Rdm6300, LineConfig::default());
        let mut frame = rdm6300("0A00123456");
        frame[11] = b'0';
        frame[12] = b'0';
        let mut input = b"zz".to_vec();
        input.extend(frame);
        let errors: Vec<_> = rdm.feed(&input, 0).filter_map(Result::err).collect();
        assert!(errors.iter().any(is_noise), "{errors:?}");
        assert!(
            errors
                .iter()
                .any(|e| matches!(e, SerialError::Checksum { .. })),
            "{errors:?}"
        );
    }
}
