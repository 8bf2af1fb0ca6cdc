//! Snowflake's official Python SDK (`snowpipe-streaming`) in a virtualenv under `target/`, and the
//! loopback-only environment its processes run in.
//!
//! Used by the client-vs-SDK benchmark of this crate and by `snowpipe-emulator`'s SDK conformance
//! test. That test includes this file with `#[path]` instead of depending on `badge-tests`, because
//! `badge-tests` already depends on `snowpipe-emulator` (a dev-dependency back would be a cycle that
//! also builds the whole agent for the emulator's tests). So: std only, and nothing unused by
//! either user (dead code is an error under clippy there).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};

/// The SDK version the emulator is conformance-tested against.
pub const SDK_VERSION: &str = "1.9.1";

/// The workspace root: the nearest ancestor of the including crate's manifest dir with a
/// `Cargo.lock` (the crates sit at different depths).
fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .find(|d| d.join("Cargo.lock").exists())
        .unwrap_or(manifest)
        .to_path_buf()
}

/// Cargo's target directory (`CARGO_TARGET_DIR`, else `<workspace>/target`).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// `tests/emulator/sdk`: the Python scripts that drive the SDK (`driver.py`, `bench.py`).
pub fn sdk_scripts_dir() -> PathBuf {
    workspace_root().join("tests/emulator/sdk")
}

fn run_ok(cmd: &mut Command, what: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{what} FAILED ({}):\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The python of `target/sdk-venv` with `snowpipe-streaming==SDK_VERSION` importable, creating or
/// repairing the venv first (`python3 -m venv`, `pip install`; needs PyPI the first time).
///
/// Panics with what is missing rather than skipping: a run without the SDK proves nothing.
/// Checked once per process; concurrent callers wait for the first.
pub fn sdk_python() -> PathBuf {
    static PY: OnceLock<PathBuf> = OnceLock::new();
    static GUARD: Mutex<()> = Mutex::new(());
    let _g = GUARD.lock().unwrap_or_else(|e| e.into_inner());
    PY.get_or_init(|| {
        let venv = target_dir().join("sdk-venv");
        let py = venv.join("bin/python");
        let check = format!(
            "import importlib.metadata as m, snowflake.ingest.streaming; assert m.version('snowpipe-streaming') == '{SDK_VERSION}'"
        );
        let ready = py.exists()
            && Command::new(&py)
                .args(["-c", &check])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
        if !ready {
            let v = Command::new("python3").arg("--version").output();
            assert!(
                v.as_ref().is_ok_and(|o| o.status.success()),
                "python3 is required to run Snowflake's official SDK and was not found on PATH ({v:?}); install python3 with venv and pip"
            );
            run_ok(
                Command::new("python3")
                    .args(["-m", "venv", "--clear"])
                    .arg(&venv),
                "python3 -m venv (is the venv module installed?)",
            );
            run_ok(
                Command::new(&py).args([
                    "-m",
                    "pip",
                    "install",
                    "--disable-pip-version-check",
                    "-q",
                    &format!("snowpipe-streaming=={SDK_VERSION}"),
                ]),
                "pip install snowpipe-streaming (needs PyPI)",
            );
            run_ok(
                Command::new(&py).args(["-c", &check]),
                "importing the installed SDK",
            );
        }
        py
    })
    .clone()
}

/// Every environment variable a client may take a proxy (or a proxy exception) from.
pub const PROXY_VARS: [&str; 8] = [
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
];

/// Confines an SDK process to loopback: every proxy variable is replaced by a dead proxy on
/// 127.0.0.1:9 with `NO_PROXY=127.0.0.1` (so only the emulator is reachable), and the emulator's
/// CA is the only trust anchor (`SSL_CERT_FILE`, no `SSL_CERT_DIR`).
pub fn pin_to_loopback<'a>(cmd: &'a mut Command, emulator_ca_pem: &Path) -> &'a mut Command {
    for v in PROXY_VARS.iter().chain(&["SSL_CERT_DIR"]) {
        cmd.env_remove(v);
    }
    cmd.env("HTTPS_PROXY", "http://127.0.0.1:9")
        .env("HTTP_PROXY", "http://127.0.0.1:9")
        .env("NO_PROXY", "127.0.0.1")
        .env("SSL_CERT_FILE", emulator_ca_pem)
}
