//! Hardening of the running agent, end to end: its tools trust only its private socket, trace
//! logs never dump HTTP traffic, and a flood of idle health connections costs it a bounded
//! number of file descriptors and not a single swipe.
#![allow(clippy::unwrap_used)]

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use badge_agent::config::Config;
use badge_agent::update::{HealthProbe, ReadyzProbe};
use badge_tests::harness::{terminate, Rig, GATEWAY};

const AGENT: &str = env!("CARGO_BIN_EXE_badge-agent-e2e");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn set_listen(rig: &Rig, listen: &str) {
    let config = std::fs::read_to_string(&rig.config).unwrap().replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"{listen}\""),
    );
    std::fs::write(&rig.config, config).unwrap();
}

fn socket_of(rig: &Rig) -> std::path::PathBuf {
    let (config, _) = Config::load(&rig.config).unwrap();
    config.health.resolved_socket(&config.buffer)
}

/// `badge-agent status --json` against the rig's config: (success, stdout + stderr).
fn status_json(rig: &Rig) -> (bool, String) {
    let out = Command::new(AGENT)
        .args(["--log", "stderr", "--config"])
        .arg(&rig.config)
        .args(["status", "--json"])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A local process squatting the health port, answering every request in the agent's name.
fn squat(listener: TcpListener) {
    use std::io::{Read, Write};
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let until = Instant::now() + Duration::from_secs(90);
        while Instant::now() < until {
            match listener.accept() {
                Ok((mut s, _)) => {
                    let _ = s.set_nonblocking(false);
                    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
                    let mut buf = [0_u8; 1024];
                    let _ = s.read(&mut buf);
                    let body = "{\"gateway_id\":\"SQUATTER\",\"ready\":true}";
                    let _ = write!(
                        s,
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    });
}

#[test]
fn status_and_the_update_gate_ignore_a_squatter_on_the_health_port() {
    let rig = Rig::new(
        AGENT,
        "[[reader]]\nid = \"sim\"\nkind = \"simulated\"\nrate_per_sec = 5.0\n",
        Duration::from_millis(200),
    )
    .unwrap();
    // The squatter is there first: the agent cannot bind the port and carries on without it.
    let squatter = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = squatter.local_addr().unwrap().port();
    set_listen(&rig, &format!("127.0.0.1:{port}"));
    squat(squatter);
    let (config, _) = Config::load(&rig.config).unwrap();
    let probe = ReadyzProbe::for_config(&config);
    // Before the agent runs, the squatter alone must not pass the update's health gate.
    assert!(probe.check().is_err(), "the gate trusted the squatter");

    let mut agent = rig.start_agent().unwrap();
    rig.wait_for("the private socket to answer ready", || {
        probe.check().is_ok()
    });
    let (ok, text) = status_json(&rig);
    assert!(ok, "{text}");
    assert!(text.contains(GATEWAY), "{text}");
    assert!(
        !text.contains("SQUATTER"),
        "status asked the squatter: {text}"
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(socket_of(&rig)).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);

    terminate(&mut agent).unwrap();
    // Agent gone: status fails and the gate fails, whatever the squatter says.
    assert!(probe.check().is_err(), "the gate trusted the squatter");
    let (ok, text) = status_json(&rig);
    assert!(!ok && !text.contains("SQUATTER"), "{text}");
}

#[test]
fn an_ephemeral_health_port_does_not_fail_the_update_gate() {
    // `listen = "127.0.0.1:0"` (the rig's default): nobody can know the port, and the gate
    // does not need to.
    let rig = Rig::new(
        AGENT,
        "[[reader]]\nid = \"sim\"\nkind = \"simulated\"\nrate_per_sec = 5.0\n",
        Duration::from_millis(200),
    )
    .unwrap();
    let mut agent = rig.start_agent().unwrap();
    let (config, _) = Config::load(&rig.config).unwrap();
    let probe = ReadyzProbe::for_config(&config);
    rig.wait_for("the update gate to see the agent ready", || {
        probe.check().is_ok()
    });
    terminate(&mut agent).unwrap();
}

#[test]
fn trace_logging_never_dumps_http_traffic_or_card_numbers() {
    let rig = Rig::new(
        AGENT,
        "[[reader]]\nid = \"sim\"\nkind = \"simulated\"\nrate_per_sec = 20.0\ncount = 20\n",
        Duration::from_millis(200),
    )
    .unwrap();
    let mut agent = rig.start_agent_logging("trace").unwrap();
    rig.wait_for("20 rows committed", || {
        rig.emulator.ledger(GATEWAY).len() >= 20
    });
    terminate(&mut agent).unwrap();
    let text = rig.agent_log();
    // Trace was really on (the agent's own trace/debug lines are there) …
    assert!(text.contains("swipe durable"), "{text}");
    // … and nothing of the HTTP exchange: no raw wire dump, no header, no token.
    let lower = text.to_ascii_lowercase();
    for needle in ["ureq_proto", "authorization", "bearer", "ureq::"] {
        assert!(
            !lower.contains(needle),
            "`{needle}` in a trace log: {}",
            text.lines()
                .filter(|l| l.to_ascii_lowercase().contains(needle))
                .take(5)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    // … and no card number: one read from the journal can be replayed at a door.
    let (credentials, _) = rig.committed();
    assert_eq!(credentials.len(), 20);
    for credential in &credentials {
        assert!(
            !text.contains(credential.as_str()),
            "card {credential} in a trace log"
        );
    }
}

/// Open descriptors of a process.
fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

/// The soft `RLIMIT_NOFILE` of this process (from /proc, no libc needed).
fn own_fd_limit() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// Starts the agent with at most `nofile` descriptors (the shell's `ulimit`, then `exec`, so the
/// child's pid is the agent's).
fn start_agent_with_fd_limit(rig: &Rig, nofile: u32) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&rig.log)
        .unwrap();
    Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -n {nofile} && exec \"$0\" \"$@\""))
        .arg(AGENT)
        .args(["--log", "stderr", "--config"])
        .arg(&rig.config)
        .arg("run")
        .env("RUST_LOG", "warn,badge_agent::readers=debug")
        .env("HTTPS_PROXY", "http://127.0.0.1:9")
        .env("NO_PROXY", "127.0.0.1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

#[test]
fn a_flood_of_idle_health_connections_loses_no_swipe_and_keeps_fds_bounded() {
    const READERS: u64 = 2;
    const PER_READER: u64 = 300;
    const AGENT_FDS: u32 = 256;
    let readers: String = (1..=READERS)
        .map(|i| {
            format!("[[reader]]\nid = \"door-{i}\"\nkind = \"simulated\"\nrate_per_sec = 60.0\ncount = {PER_READER}\npopulation = 65535\nfacility = {i}\n")
        })
        .collect();
    let rig = Rig::new(AGENT, &readers, Duration::from_millis(200)).unwrap();
    let port = free_port();
    set_listen(&rig, &format!("127.0.0.1:{port}"));
    let mut agent = start_agent_with_fd_limit(&rig, AGENT_FDS);
    let pid = agent.id();
    let (config, _) = Config::load(&rig.config).unwrap();
    let probe = ReadyzProbe::for_config(&config);
    rig.wait_for("the agent to be ready", || probe.check().is_ok());
    let baseline = fd_count(pid);

    // Thousands of idle connections (never a byte sent), far more than the agent may open,
    // held and renewed for 8 s while the readers swipe; bounded by our own descriptor limit.
    let target = (own_fd_limit().saturating_sub(256)).min(3000);
    assert!(
        target > AGENT_FDS as usize * 2,
        "this test needs room for {} idle connections; raise `ulimit -n`",
        AGENT_FDS * 2
    );
    let flood = std::thread::spawn(move || {
        let mut held: Vec<TcpStream> = Vec::with_capacity(target);
        let mut opened = 0_usize;
        let until = Instant::now() + Duration::from_secs(8);
        while Instant::now() < until {
            // Connections the agent closed are dropped and replaced.
            held.retain(|s| {
                let mut b = [0_u8; 1];
                s.set_nonblocking(true).is_ok()
                    && matches!(std::io::Read::read(&mut &*s, &mut b), Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock)
            });
            while held.len() < target {
                match TcpStream::connect_timeout(
                    &format!("127.0.0.1:{port}").parse().unwrap(),
                    Duration::from_millis(200),
                ) {
                    Ok(s) => {
                        held.push(s);
                        opened += 1;
                    }
                    Err(_) => break,
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        opened
    });
    let mut peak = baseline;
    while !flood.is_finished() {
        peak = peak.max(fd_count(pid));
        std::thread::sleep(Duration::from_millis(20));
    }
    let opened = flood.join().unwrap();
    assert!(opened >= 1000, "the flood opened only {opened} connections");
    // TCP and private-socket caps, plus a little slack for sled and the drain's connection.
    let bound = baseline + badge_agent::health::server::MAX_CONNECTIONS * 2 + 16;
    assert!(
        peak <= bound,
        "the agent held {peak} descriptors during the flood (baseline {baseline}, bound {bound})"
    );

    rig.wait_for("every swipe committed", || {
        rig.emulator.ledger(GATEWAY).len() as u64 >= READERS * PER_READER
    });
    terminate(&mut agent).unwrap();
    let log = rig.agent_log();
    assert!(!log.contains("NOT stored"), "swipes were lost:\n{log}");
    let acknowledged = rig.acknowledged().unwrap();
    let (credentials, event_ids) = rig.committed();
    assert_eq!(acknowledged.len() as u64, READERS * PER_READER);
    let committed: std::collections::BTreeSet<String> = credentials.into_iter().collect();
    assert_eq!(committed, acknowledged);
    let unique: std::collections::BTreeSet<&String> = event_ids.iter().collect();
    assert_eq!(unique.len(), event_ids.len(), "a row was committed twice");
    assert!(Path::new(&rig.log).exists());
}
