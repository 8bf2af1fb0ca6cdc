//! Wiegand readers on two GPIO lines, through the Linux GPIO character device (uAPI v2).
//!
//! D0 and D1 are requested together (one kernel queue, one sequence number across both lines),
//! both edges, no kernel debounce, a 256-event kernel buffer, monotonic kernel timestamps
//! (`docs/reader-formats.md`). The edges feed the sans-IO [`WiegandPipeline`] (assembler and
//! decoder); the shell only maps kernel events onto its edges and runs its timer. Never poll the
//! pins from user space: pulses last 20–100 µs.

use std::path::PathBuf;
use std::time::Duration;

use gpiocdev::line::{EdgeDetection, EdgeEvent};
use reader_protocol::wiegand::{
    AssemblerConfig, Edge, EdgeKind, EdgeMode, FormatChoice, KeypadConfig, Line, WiegandPipeline,
    WiegandReaderConfig,
};
use tokio::sync::watch;

use super::{Emitter, Reconnect, IDLE_TICK};
use crate::clock;

/// Kernel edge-event buffer: more than the 2 × 37 edges of the longest common card.
const KERNEL_EVENT_BUFFER: u32 = 256;

/// A validated Wiegand reader: where it is wired and how its frames are read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WiegandSettings {
    /// GPIO character device.
    pub chip: PathBuf,
    /// Line offset of D0.
    pub d0: u32,
    /// Line offset of D1.
    pub d1: u32,
    /// Card format.
    pub format: FormatChoice,
    /// 4/8-bit key bursts form PINs.
    pub keypad: bool,
    /// End-of-frame silence.
    pub frame_timeout: Duration,
}

impl WiegandSettings {
    /// The sans-IO pipeline of this reader. Kernel events carry both edges, so the assembler
    /// sees both (and can tell both lines low).
    pub fn pipeline(&self) -> WiegandPipeline {
        let eof_ns = u64::try_from(self.frame_timeout.as_nanos()).unwrap_or(u64::MAX);
        WiegandPipeline::new(
            AssemblerConfig {
                eof_ns,
                edges: EdgeMode::Both,
                ..AssemblerConfig::default()
            },
            WiegandReaderConfig {
                format: self.format,
                keypad: self.keypad.then(KeypadConfig::default),
            },
        )
    }

    /// Maps a kernel edge event of this reader's lines onto the pipeline's edge.
    pub fn edge(&self, event: &EdgeEvent) -> Edge {
        let line = if event.offset == self.d0 {
            Line::D0
        } else {
            Line::D1
        };
        let kind = match event.kind {
            gpiocdev::line::EdgeKind::Falling => EdgeKind::Falling,
            gpiocdev::line::EdgeKind::Rising => EdgeKind::Rising,
        };
        Edge {
            line,
            kind,
            timestamp_ns: event.timestamp_ns,
            seqno: event.seqno,
        }
    }
}

fn request(lines: &WiegandSettings) -> gpiocdev::Result<gpiocdev::Request> {
    gpiocdev::Request::builder()
        .on_chip(&lines.chip)
        .with_consumer("badge-agent")
        .with_lines(&[lines.d0, lines.d1])
        .as_input()
        .with_edge_detection(EdgeDetection::BothEdges)
        .with_kernel_event_buffer_size(KERNEL_EVENT_BUFFER)
        .request()
}

/// Runs one Wiegand reader until shutdown.
pub async fn run(
    mut emitter: Emitter,
    lines: WiegandSettings,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut reconnect = Reconnect::new();
    while !*shutdown.borrow() {
        emitter.beat();
        let req = match request(&lines) {
            Ok(req) => gpiocdev::tokio::AsyncRequest::new(req),
            Err(err) => {
                let message = format!(
                    "cannot request D0={} D1={} on {}: {err}",
                    lines.d0,
                    lines.d1,
                    lines.chip.display()
                );
                if reconnect.failed(&emitter, message, &mut shutdown).await {
                    break;
                }
                continue;
            }
        };
        tracing::info!(reader = emitter.reader_id(), chip = %lines.chip.display(), d0 = lines.d0, d1 = lines.d1, "wiegand reader connected");
        reconnect.connected(&emitter);
        let mut pipeline = lines.pipeline();
        loop {
            emitter.beat();
            let wait = pipeline
                .deadline()
                .map_or(IDLE_TICK, |d| {
                    Duration::from_nanos(d.saturating_sub(clock::monotonic_ns()))
                })
                .min(IDLE_TICK);
            let event = tokio::select! {
                event = tokio::time::timeout(wait, req.read_edge_event()) => event,
                _ = shutdown.changed() => break,
            };
            match event {
                Err(_elapsed) => {
                    let now = clock::monotonic_ns();
                    for out in pipeline.expire(now) {
                        emitter.emit(out, now).await;
                    }
                }
                Ok(Ok(edge)) => {
                    let edge = lines.edge(&edge);
                    if let Some(out) = pipeline.push(edge) {
                        emitter.emit(out, edge.timestamp_ns).await;
                    }
                }
                Ok(Err(err)) => {
                    let message = format!("reading edges failed: {err}");
                    tracing::warn!(
                        reader = emitter.reader_id(),
                        "{message}; re-requesting the lines"
                    );
                    emitter.count_error("gpio", &message);
                    emitter.set_connected(false, Some(message));
                    break;
                }
            }
        }
    }
    emitter.set_connected(false, None);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use gpiocdev::line::EdgeKind as GpioEdge;

    fn lines(keypad: bool) -> WiegandSettings {
        WiegandSettings {
            chip: PathBuf::from("/dev/gpiochip0"),
            d0: 17,
            d1: 27,
            format: FormatChoice::Auto,
            keypad,
            frame_timeout: Duration::from_millis(30),
        }
    }

    /// Kernel events for a bit string: a 50 µs low pulse per bit, 1 ms apart.
    fn kernel_events(bits: &str, start_ns: u64, seq: &mut u32) -> Vec<EdgeEvent> {
        let mut out = Vec::new();
        for (i, b) in bits.chars().enumerate() {
            let offset = if b == '1' { 27 } else { 17 };
            let t = start_ns + i as u64 * 1_000_000;
            for (kind, at) in [(GpioEdge::Falling, t), (GpioEdge::Rising, t + 50_000)] {
                *seq += 1;
                out.push(EdgeEvent {
                    timestamp_ns: at,
                    kind,
                    offset,
                    seqno: *seq,
                    line_seqno: 0,
                });
            }
        }
        out
    }

    #[test]
    fn kernel_edges_become_a_card_after_the_silence() {
        let settings = lines(false);
        let mut pipeline = settings.pipeline();
        let mut seq = 0;
        let events = kernel_events("10111101100010001110101110", 1_000_000_000, &mut seq);
        for e in &events {
            assert!(pipeline.push(settings.edge(e)).is_none());
        }
        let last = events.last().unwrap().timestamp_ns;
        let deadline = pipeline.deadline().unwrap();
        assert_eq!(deadline, last + 30_000_000);
        assert_eq!(pipeline.expire(deadline - 1).count(), 0);
        let out: Vec<_> = pipeline.expire(deadline).collect();
        assert_eq!(out.len(), 1);
        assert_eq!(
            out[0].credential().unwrap().canonical().to_string(),
            "H10301:123:4567"
        );
    }

    #[test]
    fn a_lost_kernel_event_discards_the_frame() {
        let settings = lines(false);
        let mut pipeline = settings.pipeline();
        let mut seq = 0;
        let mut events = kernel_events("10111101100010001110101110", 0, &mut seq);
        events.remove(10);
        for e in &events {
            let _ = pipeline.push(settings.edge(e));
        }
        let out: Vec<_> = pipeline.expire(u64::MAX / 2).collect();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].event_type(), "reader_fault", "{out:?}");
    }

    #[test]
    fn keypad_bursts_become_a_pin() {
        let settings = lines(true);
        let mut pipeline = settings.pipeline();
        let mut seq = 0;
        let mut t = 0;
        let mut got = Vec::new();
        // "1234#" as 8-bit bursts (high nibble = complement of the low nibble), 300 ms apart.
        for key in [1_u8, 2, 3, 4, 0xB] {
            let byte = ((!key & 0xF) << 4) | key;
            let bits = format!("{byte:08b}");
            for e in kernel_events(&bits, t, &mut seq) {
                got.extend(pipeline.push(settings.edge(&e)));
            }
            t += 300_000_000;
            got.extend(pipeline.expire(t - 200_000_000));
        }
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].event_type(), "pin");
        assert_eq!(got[0].detail().unwrap().to_string(), "pin_length=4");
    }
}
