//! The figures the agent promises, measured on the machine it runs on:
//!
//! 1. durable swipes/s and swipe → durable latency (p50/p99) through group commit, with many
//!    readers submitting at once (saturation) and at a steady site-like rate;
//! 2. for each backlog size (default 100,000, 1,000,000 and 5,000,000 swipes, as after days
//!    offline): bytes on disk per buffered swipe and the number of sled keys holding them;
//! 3. the drain of each backlog by the real agent binary to the Snowpipe Streaming emulator on
//!    loopback: how long the agent takes to open the buffer (spawn → first `/status` answer) and
//!    its peak RSS by then, rows/s until all are committed and until the local buffer is empty,
//!    the agent's peak RSS meanwhile, and a ledger check that every swipe landed exactly once;
//! 4. the agent's idle RSS with 4 readers and an empty buffer.
//!
//! It ends with the figures of the README's table in one block.
//!
//! Usage: `cargo bench -p badge-agent --bench pipeline -- [--backlogs N,N,…] [--seconds S]
//! [--dir DIR]` (`--backlog N` for one size; DIR: where the buffers live; put it on the SD card /
//! eMMC under test; default a temp dir).
#![allow(missing_docs)]

use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use badge_agent::buffer::{Buffer, BufferOptions, GroupCommitConfig, GroupCommitter};
use badge_agent::health::server::fetch;
use badge_agent::snowpipe::auth::{generate_private_key, write_private_key};
use rsa::pkcs8::{EncodePublicKey, LineEnding};
use snowpipe_emulator::{Emulator, EmulatorConfig, PipeId};

mod common;
use common::{ms, pct, swipe};

const GATEWAY: &str = "gw-bench";
/// Concurrent submitters in the saturation run: enough to fill every group commit (<= 256).
const SUBMITTERS: usize = 256;
/// Offered rate of the steady run: a busy site's peak, far above a door's.
const STEADY_RATE: u64 = 1_000;
/// The emulator commits an append this long after it (Snowflake reports ~1 s).
const COMMIT_DELAY: Duration = Duration::from_millis(1_000);

struct Args {
    backlogs: Vec<u64>,
    seconds: f64,
    dir: Option<PathBuf>,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        backlogs: vec![100_000, 1_000_000, 5_000_000],
        seconds: 5.0,
        dir: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--backlog" => a.backlogs = vec![value()?.parse().context("--backlog")?],
            "--backlogs" => {
                a.backlogs = value()?
                    .split(',')
                    .map(|v| v.trim().parse().context("--backlogs"))
                    .collect::<anyhow::Result<_>>()?
            }
            "--seconds" => a.seconds = value()?.parse().context("--seconds")?,
            "--dir" => a.dir = Some(PathBuf::from(value()?)),
            // `cargo bench` passes `--bench`; other harness flags are not ours.
            _ => {}
        }
    }
    ensure!(
        !a.backlogs.is_empty() && a.backlogs.iter().all(|n| *n > 0),
        "backlog sizes must be positive"
    );
    Ok(a)
}

fn main() -> anyhow::Result<()> {
    let args = args()?;
    let tmp = tempfile::tempdir()?;
    let base = args.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    println!(
        "machine: {} cores, {}; buffers in {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::env::consts::ARCH,
        base.display()
    );

    let rt = tokio::runtime::Runtime::new()?;
    println!("\n== group commit (default: <= 256 swipes or 5 ms per flush + fsync)");
    println!(
        "{:<30} {:>9} {:>8} {:>8} {:>8} {:>8}",
        "load", "swipes/s", "p50 ms", "p99 ms", "max ms", "B/swipe"
    );
    let dir = base.join(format!("group-{}", std::process::id()));
    let saturated = rt.block_on(saturation(&dir, args.seconds))?;
    let (sat_rate, _) = saturated.print(&format!("{SUBMITTERS} submitters back to back"), &dir)?;
    std::fs::remove_dir_all(&dir)?;
    let steady = rt.block_on(steady(&dir, args.seconds))?;
    let (_, steady_p99) = steady.print(&format!("steady {STEADY_RATE}/s offered"), &dir)?;
    std::fs::remove_dir_all(&dir)?;

    let mut drained = Vec::new();
    for &n in &args.backlogs {
        let dir = base.join(format!("backlog-{n}-{}", std::process::id()));
        let result = backlog(&dir, n);
        let _ = std::fs::remove_dir_all(&dir);
        drained.push(result?);
    }
    let dir = base.join(format!("idle-{}", std::process::id()));
    let idle = idle_rss(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    let idle_mb = idle?;

    println!("\n== figures (README table; machine as above)");
    // One line per README row, each figure once: the smaller backlogs' drain RSS, then the
    // largest backlog's drain RSS with its open time and RSS.
    let (big, rest) = match drained.iter().max_by_key(|d| d.n) {
        Some(big) => (Some(big), drained.iter().filter(|d| d.n != big.n).collect()),
        None => (None, Vec::new()),
    };
    if !rest.is_empty() {
        let sizes: Vec<String> = rest.iter().map(|d| millions(d.n)).collect();
        let rss: Vec<String> = rest
            .iter()
            .map(|d| format!("{:.1}", d.peak_rss_mb))
            .collect();
        println!(
            "agent peak RSS draining {} backlog: {} MB",
            sizes.join(" / "),
            rss.join(" / ")
        );
    }
    if let Some(big) = big {
        println!(
            "agent peak RSS draining {0} backlog: {1:.1} MB; opening a {0}-swipe buffer: {2:.2} s, {3:.1} MB; drained in {4:.1} s ({5:.0} rows/s)",
            millions(big.n),
            big.peak_rss_mb,
            big.open.as_secs_f64(),
            big.open_rss_mb,
            big.committed.as_secs_f64(),
            big.n as f64 / big.committed.as_secs_f64(),
        );
    }
    println!("idle RSS, 4 readers: {idle_mb:.1} MB");
    let per_swipe = drained
        .iter()
        .find(|d| d.n == 1_000_000)
        .or_else(|| drained.first());
    if let Some(d) = per_swipe {
        println!(
            "bytes on disk per buffered swipe ({}): {:.0}",
            millions(d.n),
            d.bytes_per_swipe
        );
        println!(
            "{} backlog drained to the emulator: {:.1} s (all committed), {:.1} s (buffer empty)",
            millions(d.n),
            d.committed.as_secs_f64(),
            d.emptied.as_secs_f64()
        );
    }
    println!("durable swipes/s (saturation) / steady p99: {sat_rate:.0} / {steady_p99:.1} ms");
    Ok(())
}

fn millions(n: u64) -> String {
    if n.is_multiple_of(1_000_000) {
        format!("{}M", n / 1_000_000)
    } else if n.is_multiple_of(1_000) {
        format!("{}k", n / 1_000)
    } else {
        n.to_string()
    }
}

/// What one backlog run measured.
struct Drained {
    n: u64,
    bytes_per_swipe: f64,
    open: Duration,
    open_rss_mb: f64,
    committed: Duration,
    emptied: Duration,
    peak_rss_mb: f64,
}

/// Latencies of one group-commit run.
struct Run {
    swipes: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Run {
    /// Prints the figures, with the bytes on disk per swipe of the buffer in `dir`; returns
    /// swipes/s and p99 (ms).
    fn print(mut self, label: &str, dir: &Path) -> anyhow::Result<(f64, f64)> {
        self.latencies.sort_unstable();
        let l = &self.latencies;
        let rate = self.swipes as f64 / self.elapsed.as_secs_f64();
        println!(
            "{label:<30} {:>9.0} {:>8.2} {:>8.2} {:>8.2} {:>8.0}",
            self.swipes as f64 / self.elapsed.as_secs_f64(),
            ms(pct(l, 0.50)),
            ms(pct(l, 0.99)),
            ms(l.last().copied().unwrap_or_default()),
            disk_usage(dir)?.1 as f64 / self.swipes.max(1) as f64,
        );
        Ok((rate, ms(pct(l, 0.99))))
    }
}

fn open_buffer(dir: &Path) -> anyhow::Result<Arc<Buffer>> {
    let mut opts = BufferOptions::new(dir);
    // The backlog is larger than a Pi's default cap; the bench measures, it does not police.
    opts.max_bytes = u64::MAX;
    Ok(Arc::new(Buffer::open(opts)?))
}

/// Every reader submits its next swipe as soon as the previous one is acknowledged.
async fn saturation(dir: &Path, seconds: f64) -> anyhow::Result<Run> {
    let buffer = open_buffer(dir)?;
    let (handle, committer) = GroupCommitter::spawn(buffer, GroupCommitConfig::default());
    let t0 = Instant::now();
    let until = t0 + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for r in 0..SUBMITTERS as u64 {
        let handle = handle.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut n = r << 32;
            while Instant::now() < until {
                let t = Instant::now();
                handle.commit(swipe(n)).await?;
                latencies.push(t.elapsed());
                n += 1;
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await??);
    }
    let elapsed = t0.elapsed();
    drop(handle);
    committer.await?;
    Ok(Run {
        swipes: latencies.len(),
        elapsed,
        latencies,
    })
}

/// Swipes arrive at a fixed rate, whether or not earlier ones are durable yet.
async fn steady(dir: &Path, seconds: f64) -> anyhow::Result<Run> {
    let buffer = open_buffer(dir)?;
    let (handle, committer) = GroupCommitter::spawn(buffer, GroupCommitConfig::default());
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / STEADY_RATE));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let t0 = Instant::now();
    let total = (seconds * STEADY_RATE as f64) as u64;
    let mut tasks = Vec::new();
    for n in 0..total {
        tick.tick().await;
        let (handle, latencies) = (handle.clone(), Arc::clone(&latencies));
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            handle.commit(swipe(n)).await?;
            let l = t.elapsed();
            latencies
                .lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))?
                .push(l);
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let elapsed = t0.elapsed();
    drop(handle);
    committer.await?;
    let latencies =
        std::mem::take(&mut *latencies.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    Ok(Run {
        swipes: latencies.len(),
        elapsed,
        latencies,
    })
}

/// Buffers `n` swipes, measures them on disk, then lets the agent binary drain them.
fn backlog(dir: &Path, n: u64) -> anyhow::Result<Drained> {
    println!("\n== backlog of {n} swipes");
    let buffer_dir = dir.join("buffer");
    let t0 = Instant::now();
    {
        let buffer = open_buffer(&buffer_dir)?;
        // Swipes reach the buffer in group-commit batches (at most 256 per flush + fsync); sled's
        // space overhead depends on the batch size, so fill the way the agent does.
        let per_flush = GroupCommitConfig::default().max_records as u64;
        let mut next = 0;
        while next < n {
            let batch: Vec<_> = (next..n.min(next + per_flush)).map(swipe).collect();
            buffer.append_durable(&batch)?;
            next += batch.len() as u64;
        }
        let (legacy, chunks) = buffer.key_counts();
        println!(
            "sled keys holding the backlog: {chunks} chunks + {legacy} legacy ({:.0} swipes/key)",
            n as f64 / (chunks + legacy).max(1) as f64
        );
    }
    let fill = t0.elapsed();
    let (apparent, allocated) = disk_usage(&buffer_dir)?;
    println!(
        "buffered in {:.1} s; on disk {:.1} MB allocated ({:.0} B/swipe), {:.1} MB apparent ({:.0} B/swipe)",
        fill.as_secs_f64(),
        allocated as f64 / 1e6,
        allocated as f64 / n as f64,
        apparent as f64 / 1e6,
        apparent as f64 / n as f64,
    );

    let key = generate_private_key(2048).map_err(anyhow::Error::msg)?;
    let key_path = dir.join("rsa_key.p8");
    write_private_key(&key_path, &key)?;
    let emulator = Emulator::start(EmulatorConfig {
        account: "BENCH-ACCOUNT".into(),
        user: "BADGE_INGEST".into(),
        pipes: vec![PipeId {
            database: "BADGE_DB".into(),
            schema: "RAW_INGESTION".into(),
            pipe: "RAW_BADGE_EVENTS_PIPE".into(),
        }],
        public_keys_pem: vec![rsa::RsaPublicKey::from(&key).to_public_key_pem(LineEnding::LF)?],
        commit_delay: COMMIT_DELAY,
        ca_pem_path: Some(dir.join("ca.pem")),
        ..EmulatorConfig::default()
    })?;
    let health = free_loopback_port()?;
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            r#"gateway_id = "{GATEWAY}"
[buffer]
path = "{buffer}"
max_bytes = {max_bytes}
[snowflake]
account = "bench-account"
url = "{url}"
user = "badge_ingest"
private_key_file = "{key}"
database = "BADGE_DB"
schema = "RAW_INGESTION"
pipe = "RAW_BADGE_EVENTS_PIPE"
extra_ca_file = "{ca}"
[health]
listen = "{health}"
# The agent needs a reader; this one stays silent so the backlog is all there is.
[[reader]]
id = "idle"
kind = "simulated"
rate_per_sec = 1.0
count = 0
"#,
            buffer = buffer_dir.display(),
            max_bytes = u64::MAX / 2,
            url = emulator.url(),
            key = key_path.display(),
            ca = emulator.ca_pem_path.display(),
        ),
    )?;

    let log = dir.join("agent.log");
    let t0 = Instant::now();
    let mut agent = AgentProcess(
        Command::new(env!("CARGO_BIN_EXE_badge-agent"))
            .args(["--log", "stderr", "--config"])
            .arg(&config)
            .arg("run")
            .env("RUST_LOG", "warn")
            // As systemd/badge-agent.service runs it: glibc's per-thread arenas cost ~8 MB of RSS.
            .env("MALLOC_ARENA_MAX", "2")
            .env("HTTPS_PROXY", "http://127.0.0.1:9")
            .env("NO_PROXY", "127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting the agent")?,
    );
    let deadline = t0 + Duration::from_secs(600);
    let (mut committed_at, mut emptied_at) = (None, None);
    let mut opened: Option<(Duration, u64)> = None;
    let mut rss_hwm_kib = 0;
    while emptied_at.is_none() {
        if Instant::now() > deadline {
            bail!(
                "backlog not drained in 10 minutes; agent log: {}",
                log.display()
            );
        }
        if let Some(status) = agent.0.try_wait()? {
            bail!(
                "agent exited ({status}); log:\n{}",
                std::fs::read_to_string(&log)?
            );
        }
        rss_hwm_kib = rss_hwm_kib.max(vm_hwm_kib(agent.0.id())?);
        if opened.is_none() && buffer_depth(health).is_some() {
            // The buffer is open once /status answers (the health server starts after it).
            opened = Some((t0.elapsed(), vm_hwm_kib(agent.0.id())?));
        }
        if committed_at.is_none() && rows_committed(&emulator.channels()) >= n {
            committed_at = Some(t0.elapsed());
        }
        if committed_at.is_some() && buffer_depth(health) == Some(0) {
            emptied_at = Some(t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    rss_hwm_kib = rss_hwm_kib.max(vm_hwm_kib(agent.0.id())?);
    drop(agent);

    // Borrowed, not copied: a copy of a 5M-row ledger does not fit beside the original.
    let (rows, seqs) = emulator.with_ledger(GATEWAY, |rows| {
        let mut count = 0u64;
        let mut seqs = HashSet::new();
        for r in rows {
            count += 1;
            if let Some(seq) = r.row["seq"].as_u64() {
                seqs.insert(seq);
            }
        }
        (count, seqs)
    });
    ensure!(
        rows == n && seqs.len() as u64 == n,
        "ledger holds {rows} rows with {} distinct seqs, expected {n} exactly once",
        seqs.len()
    );
    let committed = committed_at.unwrap_or_default();
    let emptied = emptied_at.unwrap_or_default();
    println!(
        "drained by the agent binary to the emulator on loopback (commit delay {} ms):",
        COMMIT_DELAY.as_millis()
    );
    println!(
        "  all committed after {:.1} s ({:.0} rows/s), local buffer empty after {:.1} s ({:.0} rows/s)",
        committed.as_secs_f64(),
        n as f64 / committed.as_secs_f64(),
        emptied.as_secs_f64(),
        n as f64 / emptied.as_secs_f64(),
    );
    println!(
        "  agent peak RSS while draining: {:.1} MB",
        rss_hwm_kib as f64 / 1024.0
    );
    let (open, open_hwm_kib) = opened.unwrap_or_default();
    println!(
        "  buffer open (spawn -> first /status answer): {:.2} s, peak RSS by then {:.1} MB",
        open.as_secs_f64(),
        open_hwm_kib as f64 / 1024.0
    );
    println!("  ledger: {n} rows, each swipe exactly once");
    Ok(Drained {
        n,
        bytes_per_swipe: allocated as f64 / n as f64,
        open,
        open_rss_mb: open_hwm_kib as f64 / 1024.0,
        committed,
        emptied,
        peak_rss_mb: rss_hwm_kib as f64 / 1024.0,
    })
}

/// RSS of the agent with 4 simulated readers (one swipe/s each) and nothing to drain: it has no
/// Snowflake to reach (a closed loopback port), as a gateway offline.
fn idle_rss(dir: &Path) -> anyhow::Result<f64> {
    std::fs::create_dir_all(dir)?;
    let key = generate_private_key(2048).map_err(anyhow::Error::msg)?;
    let key_path = dir.join("rsa_key.p8");
    write_private_key(&key_path, &key)?;
    let health = free_loopback_port()?;
    let unreachable = free_loopback_port()?;
    let mut readers = String::new();
    for i in 0..4 {
        readers.push_str(&format!(
            "[[reader]]\nid = \"door-{i}\"\nkind = \"simulated\"\nrate_per_sec = 1.0\n"
        ));
    }
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "gateway_id = \"{GATEWAY}\"\n[buffer]\npath = \"{}\"\n[snowflake]\naccount = \"idle\"\nurl = \"https://{unreachable}\"\nuser = \"u\"\nprivate_key_file = \"{}\"\ndatabase = \"D\"\nschema = \"S\"\npipe = \"P\"\n[health]\nlisten = \"{health}\"\n{readers}",
            dir.join("buffer").display(),
            key_path.display(),
        ),
    )?;
    let log = dir.join("agent.log");
    let mut agent = AgentProcess(
        Command::new(env!("CARGO_BIN_EXE_badge-agent"))
            .args(["--log", "stderr", "--config"])
            .arg(&config)
            .arg("run")
            .env("RUST_LOG", "error")
            .env("MALLOC_ARENA_MAX", "2")
            .env("HTTPS_PROXY", "http://127.0.0.1:9")
            .env("NO_PROXY", "127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting the agent")?,
    );
    std::thread::sleep(Duration::from_secs(10));
    if let Some(status) = agent.0.try_wait()? {
        bail!(
            "idle agent exited ({status}); log:\n{}",
            std::fs::read_to_string(&log)?
        );
    }
    ensure!(
        buffer_depth(health).is_some(),
        "idle agent's /status does not answer; log: {}",
        log.display()
    );
    let rss = vm_rss_kib(agent.0.id())?;
    println!(
        "\n== idle, 4 readers at 1 swipe/s, Snowflake unreachable: RSS {:.1} MB",
        rss as f64 / 1024.0
    );
    Ok(rss as f64 / 1024.0)
}

/// Current resident set of a process (`VmRSS`, KiB).
fn vm_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc/<pid>/status")
}

/// Kills the agent when dropped, so a failed bench leaves no process behind.
struct AgentProcess(Child);

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sum of file sizes, and of allocated blocks, under `dir`.
fn disk_usage(dir: &Path) -> anyhow::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let (mut apparent, mut allocated) = (0, 0);
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.is_dir() {
            let (a, b) = disk_usage(&entry.path())?;
            apparent += a;
            allocated += b;
        } else {
            apparent += meta.len();
            allocated += meta.blocks() * 512;
        }
    }
    Ok((apparent, allocated))
}

/// Peak resident set of a process (`VmHWM`, KiB).
fn vm_hwm_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM in /proc/<pid>/status")
}

fn rows_committed(channels: &[serde_json::Value]) -> u64 {
    channels
        .iter()
        .filter(|c| {
            c["channel_name"]
                .as_str()
                .is_some_and(|n| n.eq_ignore_ascii_case(GATEWAY))
        })
        .filter_map(|c| c["rows_inserted"].as_u64())
        .sum()
}

/// `buffer.depth` from the agent's `/status`, once it answers.
fn buffer_depth(addr: SocketAddr) -> Option<u64> {
    let (code, body) = fetch(addr, "/status", Duration::from_secs(2)).ok()?;
    let doc: serde_json::Value = serde_json::from_str(&body).ok()?;
    (code == 200).then(|| doc["buffer"]["depth"].as_u64())?
}

fn free_loopback_port() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}
