//! Group-commit micro-benchmark: swipes/s and flush + fsync latency per batch size, on the
//! filesystem that will hold the buffer (`docs/durability.md`, group commit).
//!
//! Usage: `cargo bench -p badge-agent --bench group_commit -- [DIR] [SECONDS_PER_SIZE]`.
//! DIR defaults to a temporary directory (put it on the SD card / eMMC under test).
#![allow(missing_docs)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use badge_agent::buffer::{Buffer, BufferObserver, BufferOptions};
use badge_agent::row::SwipeRecord;

mod common;
use common::{ms, pct, swipe};

#[derive(Default)]
struct Latencies(Mutex<Vec<Duration>>);

impl BufferObserver for Latencies {
    fn durable(&self, _seqs: std::ops::Range<u64>, flush_latency: Duration) {
        if let Ok(mut v) = self.0.lock() {
            v.push(flush_latency);
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // `cargo bench` passes `--bench`; ignore flags.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let tmp = tempfile::tempdir()?;
    let base = args
        .first()
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| tmp.path().to_path_buf());
    let secs: f64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(2.0);

    println!("dir: {}", base.display());
    println!(
        "{:>6} {:>10} {:>10} {:>10} {:>10}",
        "batch", "swipes/s", "p50 ms", "p99 ms", "max ms"
    );
    for (i, batch) in [1usize, 8, 64, 256].into_iter().enumerate() {
        let obs = Arc::new(Latencies::default());
        let mut opts = BufferOptions::new(base.join(format!("bench-{}-{i}", std::process::id())));
        opts.min_free_bytes = 0;
        let path = opts.path.clone();
        let buffer = Buffer::open_observed(opts, Some(obs.clone() as Arc<dyn BufferObserver>))?;
        let t0 = Instant::now();
        let mut n = 0u64;
        while t0.elapsed().as_secs_f64() < secs {
            let recs: Vec<SwipeRecord> = (0..batch as u64).map(|k| swipe(n + k)).collect();
            buffer.append_durable(&recs)?;
            n += batch as u64;
        }
        let rate = n as f64 / t0.elapsed().as_secs_f64();
        let mut lat = obs.0.lock().map(|v| v.clone()).unwrap_or_default();
        lat.sort_unstable();
        println!(
            "{batch:>6} {rate:>10.0} {:>10.2} {:>10.2} {:>10.2}",
            ms(pct(&lat, 0.5)),
            ms(pct(&lat, 0.99)),
            ms(lat.last().copied().unwrap_or_default())
        );
        drop(buffer);
        let _ = std::fs::remove_dir_all(path);
    }
    Ok(())
}
