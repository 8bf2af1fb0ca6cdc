//! OSDP readers simulated by LibOSDP's Python PD (`tests/osdp/pd_sim.py`) on a pseudo-terminal.
//!
//! The venv lives at `target/osdp-venv` with the pinned `libosdp` package; every failure to
//! create it or install into it panics with what to fix (no silent skip).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::pyenv::workspace_root;

/// The PyPI package and version of the independent PD implementation.
pub const LIBOSDP_REQUIREMENT: &str = "libosdp==3.2.9";

fn must(cmd: &mut Command, what: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("\n*** osdp venv: cannot run {what}: {e}\n*** needs python3 with venv and pip (Debian: apt-get install python3-venv)\n"));
    assert!(
        out.status.success(),
        "\n*** osdp venv: {what} failed ({}):\n{}{}\n",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The venv's python with `libosdp` installed (created on first use; a lock directory keeps two
/// test processes from installing at once).
pub fn python() -> PathBuf {
    let target = workspace_root().join("target");
    let venv = target.join("osdp-venv");
    let python = venv.join("bin").join("python");
    let stamp = venv.join(".badge-osdp.stamp");
    std::fs::create_dir_all(&target).expect("create target/");
    let lock = target.join("osdp-venv.lock");
    let started = Instant::now();
    while std::fs::create_dir(&lock).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "osdp venv lock {} held for 10 minutes; remove it if no test runs",
            lock.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let installed = std::fs::read_to_string(&stamp).unwrap_or_default();
    if installed != LIBOSDP_REQUIREMENT {
        if !python.exists() {
            must(
                Command::new("python3").arg("-m").arg("venv").arg(&venv),
                "python3 -m venv target/osdp-venv",
            );
        }
        must(
            Command::new(&python).args([
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "-q",
                LIBOSDP_REQUIREMENT,
            ]),
            "pip install libosdp",
        );
        std::fs::write(&stamp, LIBOSDP_REQUIREMENT).expect("write the venv stamp");
    }
    let _ = std::fs::remove_dir(&lock);
    python
}

/// One simulated PD's settings.
#[derive(Debug, Clone)]
pub struct PdSpec {
    /// Bus address.
    pub addr: u8,
    /// The PD's SCBK (hex), `None` for none.
    pub scbk: Option<String>,
    /// Install mode: the PD accepts the default key and a KEYSET.
    pub install: bool,
    /// Advertise the secure-channel capability.
    pub secure_capable: bool,
}

impl PdSpec {
    /// A plain PD without the secure-channel capability.
    pub fn plain(addr: u8) -> Self {
        Self {
            addr,
            scbk: None,
            install: false,
            secure_capable: false,
        }
    }

    /// A PD that insists on the secure channel with this key.
    pub fn secure(addr: u8, scbk: &[u8; 16]) -> Self {
        Self {
            addr,
            scbk: Some(hex(scbk)),
            install: false,
            secure_capable: true,
        }
    }

    /// A fresh PD in install mode (default key, accepts KEYSET).
    pub fn install(addr: u8) -> Self {
        Self {
            addr,
            scbk: None,
            install: true,
            secure_capable: true,
        }
    }
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The running simulator.
pub struct PdSim {
    child: Child,
    stdin: ChildStdin,
    events: Receiver<Value>,
    /// Every event seen so far (also those consumed by waits).
    pub seen: Vec<Value>,
    link: PathBuf,
}

impl PdSim {
    /// Starts PDs on a bus whose device path is `link`.
    pub fn start(link: &Path, pds: &[PdSpec]) -> anyhow::Result<Self> {
        let script = workspace_root()
            .join("tests")
            .join("osdp")
            .join("pd_sim.py");
        let specs: Vec<Value> = pds
            .iter()
            .map(|p| {
                json!({"addr": p.addr, "scbk": p.scbk, "install": p.install,
                       "secure_capable": p.secure_capable})
            })
            .collect();
        let mut child = Command::new(python())
            .arg("-u")
            .arg(&script)
            .arg("--link")
            .arg(link)
            .arg("--pds")
            .arg(Value::Array(specs).to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdin"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                match serde_json::from_str::<Value>(&line) {
                    Ok(v) => {
                        if tx.send(v).is_err() {
                            break;
                        }
                    }
                    Err(_) => eprintln!("pd_sim: {line}"),
                }
            }
        });
        let mut sim = Self {
            child,
            stdin,
            events: rx,
            seen: Vec::new(),
            link: link.to_owned(),
        };
        sim.wait_event("the PD simulator to start", Duration::from_secs(30), |e| {
            e["ev"] == "ready"
        });
        Ok(sim)
    }

    /// The bus device (the symlink).
    pub fn device(&self) -> &Path {
        &self.link
    }

    /// Sends one op and waits for its `ok`.
    pub fn op(&mut self, op: Value) {
        let name = op["op"].as_str().unwrap_or_default().to_owned();
        writeln!(self.stdin, "{op}").expect("writing to pd_sim");
        self.stdin.flush().expect("flushing pd_sim stdin");
        let ev = self.wait_event(&format!("pd_sim op {name}"), Duration::from_secs(10), |e| {
            (e["ev"] == "ok" && e["op"] == name.as_str()) || e["ev"] == "error"
        });
        assert_eq!(ev["ev"], "ok", "pd_sim refused {op}: {ev}");
    }

    /// Presents a card: `bits` as a string of 0/1, MSB first.
    pub fn card(&mut self, addr: u8, bits: &str) {
        self.op(json!({"op": "card", "addr": addr, "bits": bits}));
    }

    /// Waits until an event matching `want` arrives (or was seen already); panics after `timeout`.
    pub fn wait_event(
        &mut self,
        what: &str,
        timeout: Duration,
        want: impl Fn(&Value) -> bool,
    ) -> Value {
        if let Some(v) = self.seen.iter().find(|v| want(v)) {
            return v.clone();
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(v) => {
                    self.seen.push(v.clone());
                    if want(&v) {
                        return v;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "timed out waiting for {what}; pd_sim events: {:?}",
                        self.seen
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!(
                        "pd_sim exited while waiting for {what}; events: {:?}",
                        self.seen
                    )
                }
            }
        }
    }

    /// Drains pending events into `seen` without waiting.
    pub fn drain(&mut self) {
        while let Ok(v) = self.events.try_recv() {
            self.seen.push(v);
        }
    }

    /// Commands of this kind (`"led"`, `"buzzer"`, `"keyset"`, …) the PD at `addr` received.
    pub fn commands(&mut self, addr: u8) -> Vec<Value> {
        self.drain();
        self.seen
            .iter()
            .filter(|e| e["ev"] == "command" && e["addr"] == addr)
            .map(|e| e["cmd"].clone())
            .collect()
    }

    /// Asks the PD whether it is on line and its secure channel active.
    pub fn state(&mut self, addr: u8) -> (bool, bool) {
        self.seen.retain(|e| e["ev"] != "state");
        writeln!(self.stdin, "{}", json!({"op": "state", "addr": addr})).expect("pd_sim stdin");
        self.stdin.flush().expect("pd_sim stdin");
        let ev = self.wait_event("pd state", Duration::from_secs(10), |e| e["ev"] == "state");
        (ev["online"] == true, ev["sc"] == true)
    }
}

impl Drop for PdSim {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "{}", json!({"op": "quit"}));
        let _ = self.stdin.flush();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
