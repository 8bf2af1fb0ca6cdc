//! Append throughput of badge-agent's Snowpipe Streaming client against Snowflake's official Python
//! SDK (`snowpipe-streaming` 1.9.1), both writing the same 250-byte rows to one in-process
//! emulator on loopback, in one run.
//!
//! ```sh
//! cargo bench -p badge-tests --bench client_vs_sdk [-- [ROWS] [--repeats K] [--sdk-flush-rows N] [--commit-delay-ms MS] [--poll-ms MS]]
//! ```
//!
//! Each implementation sends ROWS rows (default 200,000 = 50 MB of payload) on a fresh channel of
//! its own, one after the other, K times (default 5, alternating which goes first, emulator state
//! reset in between); the table shows the medians. Clocks start when the first row is handed to
//! the client — ours renders the rows to NDJSON, batches them with `client.batches` (4 MiB, zstd)
//! and appends batch after batch; the SDK gets `append_rows` (it serialises with msgspec,
//! compresses and sends) — and stop
//! * when the last append is acknowledged (ours: `append` returned; SDK: `wait_for_flush` returned);
//! * when the emulator committed the last row (its ledger's commit timestamp, one clock for both;
//!   each client also polls its own channel status until it shows the last offset, and that
//!   client-observed time is printed too).
//!
//! The SDK is fed `--sdk-flush-rows` rows (default 4,000 ≈ 1 MB) per `append_rows` +
//! `wait_for_flush`: above ~1 MiB per flush it leaves REST appends for file mode (stage upload),
//! which the emulator does not offer and which is not what our client is measured on. See
//! `tests/emulator/sdk/bench.py`.
//!
//! After every run the emulator's ledger must hold rows 1..=ROWS exactly once on each channel, or
//! the bench exits non-zero without a figure. This is a benchmark, not a test: the figures depend
//! on the machine, which the emulator, our client and the SDK share.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use badge_agent::snowpipe::auth::{generate_private_key, write_private_key};
use badge_agent::snowpipe::{ClientConfig, Op, RequestEvent, SnowpipeClient};
use badge_tests::sdk_venv::{
    pin_to_loopback, sdk_python, sdk_scripts_dir, PROXY_VARS, SDK_VERSION,
};
use rsa::pkcs8::{EncodePublicKey, LineEnding};
use serde::Serialize;
use serde_json::{json, Value};
use snowpipe_emulator::{Emulator, EmulatorConfig, EmulatorHandle, PipeId};

/// Every NDJSON row is exactly this long (without its newline).
const ROW_BYTES: usize = 250;
const GATEWAY: &str = "gw-bench-01";
const ACCOUNT: &str = "BENCH-ACCOUNT";
const USER: &str = "BENCH_INGEST";
const ROLE: &str = "BENCH_ROLE";
const DB: &str = "BADGE_DB";
const SCHEMA: &str = "RAW_INGESTION";
const PIPE: &str = "RAW_BADGE_EVENTS_PIPE";
/// Upper bound for one implementation's run, so a stuck client fails the bench instead of hanging.
const RUN_TIMEOUT: Duration = Duration::from_secs(600);

struct Args {
    rows: u64,
    repeats: usize,
    /// Rows per `append_rows` + `wait_for_flush` on the SDK side (see `sdk/bench.py`: above ~1 MiB
    /// per flush the SDK switches to file mode, which the emulator does not offer).
    sdk_flush_rows: usize,
    commit_delay_ms: u64,
    poll_ms: u64,
}

fn usage() -> &'static str {
    "usage: cargo bench -p badge-tests --bench client_vs_sdk -- [ROWS] [--rows N] [--repeats K] [--sdk-flush-rows N] [--commit-delay-ms MS] [--poll-ms MS]"
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        rows: 200_000,
        repeats: 5,
        sdk_flush_rows: 4_000,
        commit_delay_ms: 50,
        poll_ms: 10,
    };
    let mut it = std::env::args().skip(1);
    let num = |v: Option<String>, what: &str| -> Result<u64, String> {
        let v = v.ok_or_else(|| format!("{what} needs a value\n{}", usage()))?;
        v.replace(['_', ','], "")
            .parse()
            .map_err(|_| format!("{what}: {v:?} is not a number\n{}", usage()))
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            // cargo bench passes --bench to harness = false targets.
            "--bench" => {}
            "-h" | "--help" => return Err(usage().to_string()),
            "--rows" => a.rows = num(it.next(), "--rows")?,
            "--repeats" => a.repeats = num(it.next(), "--repeats")? as usize,
            "--sdk-flush-rows" => a.sdk_flush_rows = num(it.next(), "--sdk-flush-rows")? as usize,
            "--commit-delay-ms" => a.commit_delay_ms = num(it.next(), "--commit-delay-ms")?,
            "--poll-ms" => a.poll_ms = num(it.next(), "--poll-ms")?,
            s if !s.starts_with('-') => a.rows = num(Some(arg.clone()), "ROWS")?,
            s => return Err(format!("unknown argument {s:?}\n{}", usage())),
        }
    }
    if a.rows == 0 || a.repeats == 0 || a.sdk_flush_rows == 0 || a.poll_ms == 0 {
        return Err(format!(
            "ROWS, --repeats, --sdk-flush-rows and --poll-ms must be positive\n{}",
            usage()
        ));
    }
    Ok(a)
}

/// A card swipe as the gateway would send it: a subset of the agent's row fields (the full
/// `badge_agent::row` schema is ~380 bytes, over the 250 asked for), with `detail` padded so every
/// row is exactly [`ROW_BYTES`] long whatever the width of its numbers.
#[derive(Serialize)]
struct Swipe {
    gateway_id: &'static str,
    seq: u64,
    reader_id: &'static str,
    direction: &'static str,
    event_type: &'static str,
    credential: String,
    raw_bits: String,
    bit_count: u32,
    swiped_at: String,
    clock_synced: bool,
    detail: String,
}

impl Swipe {
    fn new(seq: u64) -> Swipe {
        let facility = 100 + seq % 50;
        let card = (seq * 7_919) % 65_536;
        let ms = seq * 37;
        let mut s = Swipe {
            gateway_id: GATEWAY,
            seq,
            reader_id: "lobby-in",
            direction: if seq.is_multiple_of(2) { "in" } else { "out" },
            event_type: "card",
            credential: format!("H10301:{facility}:{card}"),
            raw_bits: format!("{:08x}", (facility << 17) | (card << 1)),
            bit_count: 26,
            swiped_at: format!(
                "2026-11-22T{:02}:{:02}:{:02}.{:03}Z",
                ms / 3_600_000 % 24,
                ms / 60_000 % 60,
                ms / 1000 % 60,
                ms % 1000
            ),
            clock_synced: true,
            detail: String::new(),
        };
        let base = s.line().len() - 1;
        assert!(base < ROW_BYTES, "row {seq} is {base} bytes before padding");
        // Pseudo-random hex rather than one repeated byte, so zstd gets no unrealistic advantage.
        let mut x = seq.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        while s.detail.len() < ROW_BYTES - base {
            x ^= x >> 31;
            x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
            s.detail.push_str(&format!("{x:016x}"));
        }
        s.detail.truncate(ROW_BYTES - base);
        s
    }

    /// Appends the NDJSON line, the way the agent renders its rows (`serde_json` into a buffer).
    fn write_line(&self, out: &mut Vec<u8>) {
        serde_json::to_writer(&mut *out, self).unwrap();
        out.push(b'\n');
    }

    fn line(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(ROW_BYTES + 1);
        self.write_line(&mut v);
        v
    }
}

/// One run of one implementation; seconds count from the first row handed to the client.
#[derive(Debug, Clone, Default)]
struct Timing {
    /// Wall clock (Unix ms) at that moment, to compare with the emulator's commit timestamps.
    t0_epoch_ms: f64,
    appended_s: f64,
    /// From the emulator's ledger: commit time of the last row.
    committed_s: f64,
    /// When the client's own status call first showed the last offset committed.
    observed_committed_s: f64,
    /// CPU seconds the client used until the last append was acknowledged.
    client_cpu_s: f64,
    /// CPU seconds the emulator used for the whole run (appends, commits, status calls).
    emulator_cpu_s: f64,
    /// Append requests answered 200, and answered otherwise (retried).
    appends_ok: usize,
    appends_other: usize,
}

/// CPU time of the calling thread, ns (`/proc/thread-self/schedstat`; our client is blocking and
/// runs entirely on the thread that calls it).
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// CPU time of the emulator's threads (named `snowpipe-emulator`, truncated to 15 bytes), ns.
fn emulator_cpu_ns() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .is_ok_and(|c| c.starts_with("snowpipe-emul"))
        })
        .filter_map(|t| {
            std::fs::read_to_string(t.path().join("schedstat"))
                .ok()?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

fn epoch_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        * 1000.0
}

/// Our client: render, batch (`client.batches`), append in order, poll the committed offset.
fn run_ours(
    emu: &EmulatorHandle,
    key: &Path,
    records: &[Swipe],
    channel: &str,
    poll: Duration,
) -> Timing {
    let mut cfg = ClientConfig::new(
        emu.url(),
        ACCOUNT.to_ascii_lowercase(),
        USER.to_ascii_lowercase(),
        Some(ROLE.into()),
        key,
        DB,
        SCHEMA,
        PIPE,
    );
    cfg.extra_ca_file = Some(emu.ca_pem_path.clone());
    let mut client = SnowpipeClient::new(cfg).expect("building the client");
    // HTTP time of every append attempt, to tell the emulator's time from the client's own
    // waiting (its 10 requests/s per channel limit, docs/snowpipe-wire.md).
    let http = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&http);
    client.set_observer(Arc::new(move |e: &RequestEvent| {
        if e.op == Op::Append {
            sink.lock().unwrap().push(e.elapsed);
        }
    }));
    let open = client.open_channel(channel).expect("opening our channel");
    assert_eq!(open.status.committed_seq().unwrap(), None, "fresh channel");
    let last = records.len() as u64;
    let mut token = open.continuation_token;

    let (cpu0, emu_cpu0) = (thread_cpu_ns(), emulator_cpu_ns());
    let t0 = Instant::now();
    let t0_epoch_ms = epoch_ms();
    // What the drain does with a backlog: render each row once into one buffer, batch, send.
    let mut ndjson = Vec::with_capacity(records.len() * (ROW_BYTES + 1));
    let mut ends = Vec::with_capacity(records.len());
    for rec in records {
        rec.write_line(&mut ndjson);
        ends.push(ndjson.len());
    }
    let rows = ends.iter().enumerate().map(|(i, &end)| {
        let start = if i == 0 { 0 } else { ends[i - 1] };
        (i as u64 + 1, &ndjson[start..end])
    });
    let batches = client.batches(rows).expect("batching");
    let prepared_s = t0.elapsed().as_secs_f64();
    for batch in &batches {
        token = client.append(channel, &token, batch).expect("appending");
    }
    let appended_s = t0.elapsed().as_secs_f64();
    let client_cpu_s = (thread_cpu_ns() - cpu0) as f64 / 1e9;
    let deadline = t0 + RUN_TIMEOUT;
    loop {
        let st = client
            .channel_status(&[channel])
            .expect("channel status")
            .remove(channel)
            .flatten()
            .expect("our channel is known");
        assert!(st.is_success(), "channel status {}", st.channel_status_code);
        if st.committed_seq().unwrap() == Some(last) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not committed within {RUN_TIMEOUT:?}"
        );
        std::thread::sleep(poll);
    }
    let observed_committed_s = t0.elapsed().as_secs_f64();
    let emulator_cpu_s = (emulator_cpu_ns() - emu_cpu0) as f64 / 1e9;
    let http = http.lock().unwrap();
    let http_s: f64 = http.iter().map(Duration::as_secs_f64).sum();
    eprintln!(
        "  ours: render + batch + zstd {prepared_s:.3} s; {} appends of {:.2} MB on the wire {:.3} s, of which HTTP {http_s:.3} s (ms each: {:?}) and the rest mostly the 10 req/s limit",
        batches.len(),
        batches.iter().map(|b| b.body.len()).sum::<usize>() as f64 / batches.len() as f64 / 1e6,
        appended_s - prepared_s,
        http.iter().map(Duration::as_millis).collect::<Vec<_>>()
    );
    Timing {
        t0_epoch_ms,
        appended_s,
        observed_committed_s,
        client_cpu_s,
        emulator_cpu_s,
        ..Timing::default()
    }
}

/// The official SDK in a loopback-pinned subprocess running `sdk/bench.py` on the same rows.
fn run_sdk(emu: &EmulatorHandle, dir: &Path, key: &Path, channel: &str, args: &Args) -> Timing {
    let py = sdk_python();
    let cfg = json!({
        "url": emu.url(), "account": ACCOUNT.to_ascii_lowercase(), "user": USER.to_ascii_lowercase(),
        "role": ROLE, "private_key_file": key, "db": DB, "schema": SCHEMA, "pipe": PIPE,
        "channel": channel, "rows_file": dir.join("rows.ndjson"), "flush_rows": args.sdk_flush_rows,
        "poll_ms": args.poll_ms, "timeout_s": RUN_TIMEOUT.as_secs(),
    });
    let cfg_path = dir.join("sdk-bench.json");
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let out_path = dir.join("sdk-bench.out");
    let err_path = dir.join("sdk-bench.err");
    let mut cmd = Command::new(py);
    pin_to_loopback(&mut cmd, &emu.ca_pem_path)
        .env("SS_LOG_LEVEL", "warn")
        .arg(sdk_scripts_dir().join("bench.py"))
        .arg(&cfg_path)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap());
    let mut child = cmd.spawn().expect("spawning the SDK bench script");
    // The emulator idles while the script loads its rows (one cached-status refresh a second),
    // so its CPU from spawn to exit is the SDK run's.
    let emu_cpu0 = emulator_cpu_ns();
    // Loading the rows into dicts comes before the SDK's clock starts, hence the extra minute.
    let deadline = Instant::now() + RUN_TIMEOUT + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the SDK bench timed out");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let emulator_cpu_s = (emulator_cpu_ns() - emu_cpu0) as f64 / 1e9;
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    let result: Option<Value> = stdout
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("RESULT "))
        .map(|j| serde_json::from_str(j).unwrap());
    let Some(r) = result.filter(|_| status.success()) else {
        let tail: Vec<&str> = stderr.lines().collect();
        panic!(
            "the SDK bench failed ({status}):\n{}",
            tail[tail.len().saturating_sub(40)..].join("\n")
        );
    };
    let secs = |k: &str| r[k].as_f64().unwrap_or_else(|| panic!("{k} in {r}"));
    eprintln!(
        "  sdk: {} append_rows + wait_for_flush, status polls until committed seen: {}",
        args.rows.div_ceil(args.sdk_flush_rows as u64),
        r["status_polls"]
    );
    Timing {
        t0_epoch_ms: secs("t0_epoch_ms"),
        appended_s: secs("appended_s"),
        observed_committed_s: secs("observed_committed_s"),
        client_cpu_s: secs("client_cpu_s"),
        emulator_cpu_s,
        ..Timing::default()
    }
}

/// Every row `1..=n` exactly once in the channel's ledger, each still 250 bytes of JSON. Returns
/// the emulator's commit time of the last row (Unix ms).
fn verify_ledger(emu: &EmulatorHandle, channel: &str, n: u64) -> Result<u64, String> {
    let rows = emu.ledger(channel);
    if rows.len() as u64 != n {
        return Err(format!(
            "{channel}: the ledger holds {} rows, expected {n}",
            rows.len()
        ));
    }
    let mut seen = HashSet::with_capacity(rows.len());
    for r in &rows {
        let seq = r.row["seq"]
            .as_u64()
            .ok_or_else(|| format!("{channel}: a committed row has no seq: {}", r.row))?;
        if !(1..=n).contains(&seq) || !seen.insert(seq) {
            return Err(format!(
                "{channel}: seq {seq} is out of range or duplicated"
            ));
        }
        let len = serde_json::to_vec(&r.row).map_or(0, |v| v.len());
        if len != ROW_BYTES {
            return Err(format!(
                "{channel}: row {seq} arrived as {len} bytes of JSON, not {ROW_BYTES}"
            ));
        }
    }
    Ok(rows.iter().map(|r| r.committed_at_ms).max().unwrap_or(0))
}

/// (successful, other) append requests the emulator served on `channel`.
fn append_requests(emu: &EmulatorHandle, channel: &str) -> (usize, usize) {
    let suffix = format!("/channels/{channel}/rows");
    let reqs: Vec<_> = emu
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with(&suffix))
        .collect();
    let ok = reqs.iter().filter(|r| r.status == 200).count();
    (ok, reqs.len() - ok)
}

fn machine_note() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let arch = Command::new("uname")
        .arg("-m")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("nproc {cpus}, {arch}, {model}")
}

/// Median of a non-empty list.
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Impl {
    Ours,
    Sdk,
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    // Our client honours HTTPS_PROXY/NO_PROXY like the SDK does: pin both to loopback the same
    // way. Set before any thread exists.
    for v in PROXY_VARS {
        std::env::remove_var(v);
    }
    std::env::set_var("HTTPS_PROXY", "http://127.0.0.1:9");
    std::env::set_var("NO_PROXY", "127.0.0.1");

    let n = args.rows;
    let mb = (n as usize * ROW_BYTES) as f64 / 1e6;
    println!(
        "client_vs_sdk: {n} rows x {ROW_BYTES} B NDJSON = {mb:.1} MB per implementation and run, {} runs; emulator in-process on loopback (TLS), commit delay {} ms",
        args.repeats, args.commit_delay_ms
    );
    println!("machine: {}", machine_note());

    // Make sure the venv exists before any clock runs (first run: pip install).
    let _ = sdk_python();
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("rsa_key.p8");
    let key = generate_private_key(2048).unwrap();
    write_private_key(&key_path, &key).unwrap();
    let public_pem = rsa::RsaPublicKey::from(&key)
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    let emu = Emulator::start(EmulatorConfig {
        account: ACCOUNT.into(),
        user: USER.into(),
        pipes: vec![PipeId {
            database: DB.into(),
            schema: SCHEMA.into(),
            pipe: PIPE.into(),
        }],
        public_keys_pem: vec![public_pem],
        commit_delay: Duration::from_millis(args.commit_delay_ms),
        ca_pem_path: Some(dir.path().join("ca.pem")),
        ..EmulatorConfig::default()
    })
    .expect("starting the emulator");

    // The same rows for both: ours renders `records` inside its clock, the SDK reads their lines.
    let records: Vec<Swipe> = (1..=n).map(Swipe::new).collect();
    let mut file = Vec::with_capacity(n as usize * (ROW_BYTES + 1));
    for rec in &records {
        let start = file.len();
        rec.write_line(&mut file);
        assert_eq!(file.len() - start, ROW_BYTES + 1, "row {} length", rec.seq);
    }
    std::fs::write(dir.path().join("rows.ndjson"), &file).unwrap();
    drop(file);

    let poll = Duration::from_millis(args.poll_ms);
    let mut runs: Vec<(Timing, Timing)> = Vec::new();
    for rep in 1..=args.repeats {
        // Alternate who goes first, so a drift in background load hits both alike.
        let order = if rep % 2 == 1 {
            [Impl::Ours, Impl::Sdk]
        } else {
            [Impl::Sdk, Impl::Ours]
        };
        let (ours_ch, sdk_ch) = (
            format!("bench-badge-agent-{rep}"),
            format!("bench-sdk-{rep}"),
        );
        let (mut ours, mut sdk) = (Timing::default(), Timing::default());
        eprintln!("run {rep}/{}:", args.repeats);
        for which in order {
            match which {
                Impl::Ours => ours = run_ours(&emu, &key_path, &records, &ours_ch, poll),
                Impl::Sdk => sdk = run_sdk(&emu, dir.path(), &key_path, &sdk_ch, &args),
            }
        }
        // No figure for rows that did not land exactly once.
        for (t, ch) in [(&mut ours, &ours_ch), (&mut sdk, &sdk_ch)] {
            match verify_ledger(&emu, ch, n) {
                Ok(last_ms) => t.committed_s = (last_ms as f64 - t.t0_epoch_ms) / 1000.0,
                Err(e) => {
                    eprintln!("LEDGER CHECK FAILED: {e}");
                    eprintln!("no figures: a channel does not hold exactly the {n} rows sent");
                    return ExitCode::FAILURE;
                }
            }
            (t.appends_ok, t.appends_other) = append_requests(&emu, ch);
        }
        println!(
            "run {rep}: ours {:.3} s acked / {:.3} s committed; SDK {:.3} s acked / {:.3} s committed",
            ours.appended_s, ours.committed_s, sdk.appended_s, sdk.committed_s
        );
        // Keep the emulator's memory flat across runs: the ledger has been checked.
        emu.reset();
        runs.push((ours, sdk));
    }

    let med = |pick: &dyn Fn(&(Timing, Timing)) -> f64| median(runs.iter().map(pick).collect());
    let median_of = |side: fn(&(Timing, Timing)) -> &Timing| Timing {
        appended_s: med(&|r| side(r).appended_s),
        committed_s: med(&|r| side(r).committed_s),
        observed_committed_s: med(&|r| side(r).observed_committed_s),
        client_cpu_s: med(&|r| side(r).client_cpu_s),
        emulator_cpu_s: med(&|r| side(r).emulator_cpu_s),
        appends_ok: side(&runs[0]).appends_ok,
        appends_other: runs.iter().map(|r| side(r).appends_other).sum(),
        ..Timing::default()
    };
    let ours = median_of(|r| &r.0);
    let sdk = median_of(|r| &r.1);

    println!();
    println!("median of {} runs:", args.repeats);
    println!(
        "{:<34} {:<18} {:>7} {:>5} {:>7} {:>8} {:>5} {:>7} {:>7} {:>7}",
        "implementation",
        "clock stops at",
        "rows",
        "MB",
        "seconds",
        "rows/s",
        "MB/s",
        "appends",
        "cli CPU",
        "emu CPU"
    );
    let line = |name: &str, what: &str, secs: f64, extra: [String; 3]| {
        println!(
            "{name:<34} {what:<18} {n:>7} {mb:>5.1} {secs:>7.3} {:>8.0} {:>5.1} {:>7} {:>7} {:>7}",
            n as f64 / secs,
            mb / secs,
            extra[0],
            extra[1],
            extra[2]
        );
    };
    let extra = |t: &Timing| {
        [
            // Requests answered with anything but 200 (then retried) show after a `+`.
            if t.appends_other == 0 {
                t.appends_ok.to_string()
            } else {
                format!("{}+{}", t.appends_ok, t.appends_other)
            },
            format!("{:.2}s", t.client_cpu_s),
            format!("{:.2}s", t.emulator_cpu_s),
        ]
    };
    let none = || [String::new(), String::new(), String::new()];
    let ours_name = "badge-agent SnowpipeClient (Rust)";
    let sdk_name = format!("snowpipe-streaming {SDK_VERSION} (Py)");
    line(
        ours_name,
        "last append acked",
        ours.appended_s,
        extra(&ours),
    );
    line(ours_name, "last row committed", ours.committed_s, none());
    line(&sdk_name, "last append acked", sdk.appended_s, extra(&sdk));
    line(&sdk_name, "last row committed", sdk.committed_s, none());
    println!(
        "ratio ours/SDK (throughput): {:.2}x to last append acked, {:.2}x to last row committed",
        sdk.appended_s / ours.appended_s,
        sdk.committed_s / ours.committed_s
    );
    println!();
    println!(
        "- every run: each channel's ledger holds rows 1..={n} exactly once, each 250 bytes of JSON"
    );
    println!(
        "- MB = 10^6 bytes of row payload (rows x {ROW_BYTES}); clocks start when the first row is handed to the client"
    );
    println!(
        "- committed = the emulator's commit time of the last row; as the clients saw it: ours {:.3} s (status polled every {} ms), SDK {:.3} s (status served from a cache refreshed once a second)",
        ours.observed_committed_s, args.poll_ms, sdk.observed_committed_s
    );
    println!(
        "- appends = append requests per run: ours 4 MiB batches; the SDK got append_rows of {} rows + wait_for_flush (above ~1 MiB per flush it switches to file mode, not emulated)",
        args.sdk_flush_rows
    );
    println!(
        "- cli CPU = client CPU until the last append was acked (ours: its thread; SDK: its Python process incl. the SDK's threads); emu CPU = emulator CPU for the run"
    );
    ExitCode::SUCCESS
}
