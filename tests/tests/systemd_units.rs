//! Checks the shipped systemd units in `systemd/` with systemd's own tools (systemd 252 on Debian 12 /
//! Raspberry Pi OS bookworm):
//!
//! * `systemd-analyze verify` must pass without a single warning (unknown keys only warn, exit 0);
//! * `systemd-analyze security --offline=true` must rate `badge-agent.service` at or below
//!   [`MAX_AGENT_EXPOSURE`] (`docs/systemd.md`: the hardened unit scores about 1.5), and
//!   `badge-agent-update-recover.service` (the updater's `OnFailure=` unit) at or below
//!   [`MAX_RECOVER_EXPOSURE`];
//! * `systemd-sysusers` and `systemd-tmpfiles` must accept the sysusers.d/tmpfiles.d snippets
//!   against a scratch root.
//!
//! `verify` checks that `ExecStart=` binaries exist, so the units are copied to a temp dir with the
//! agent path pointed at a stub executable there. Needs `systemd-analyze` (`apt-get install systemd`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// CI gate for the agent unit's overall exposure (0.0 best … 10.0 worst).
const MAX_AGENT_EXPOSURE: f64 = 2.0;
/// The updater needs root (writes /usr/lib/badge-agent, restarts the agent); keep it from drifting.
const MAX_UPDATE_EXPOSURE: f64 = 3.0;
/// The recovery needs the same root as the updater but only loopback IP; it scores 1.5.
const MAX_RECOVER_EXPOSURE: f64 = 2.0;
/// Path of the agent binary in the shipped units.
const SHIPPED_BIN: &str = "/usr/lib/badge-agent/current/badge-agent";

/// The packaged binary the recovery falls back to when `current` cannot run.
const PACKAGED_BIN: &str = "/usr/libexec/badge-agent/badge-agent";

const UNITS: [&str; 4] = [
    "badge-agent.service",
    "badge-agent-update.service",
    "badge-agent-update.timer",
    "badge-agent-update-recover.service",
];

fn systemd_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd")
}

/// Finds a systemd tool on PATH or in the usual places, or fails saying how to install it.
fn tool(name: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/bin", "/bin", "/usr/sbin"].map(PathBuf::from));
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` not found: these tests need systemd's tools. Install them with \
                 `apt-get install -y --no-install-recommends systemd` (Debian/Raspberry Pi OS)"
            )
        })
}

fn run(cmd: &mut Command) -> Output {
    // No colours, no pager: the output is parsed.
    cmd.env("SYSTEMD_COLORS", "0").env("SYSTEMD_PAGER", "cat");
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Copies the units into a fresh dir, pointing `ExecStart=` at an executable stub that exists.
fn staged_units() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let stub = dir.path().join("badge-agent");
    std::fs::write(&stub, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&stub, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    for unit in UNITS {
        let src = std::fs::read_to_string(systemd_dir().join(unit))
            .unwrap_or_else(|e| panic!("missing systemd/{unit}: {e}"));
        let staged = src.replace(SHIPPED_BIN, stub.to_str().unwrap());
        std::fs::write(dir.path().join(unit), staged).unwrap();
    }
    dir
}

/// `systemd-analyze verify` on the given unit files; Err(output) on a non-zero exit or any message
/// (unknown keys and bad values are only warnings and leave the exit status at 0).
fn verify(dir: &Path, units: &[&str]) -> Result<(), String> {
    let out = run(Command::new(tool("systemd-analyze"))
        .current_dir(dir)
        .arg("verify")
        .arg("--man=no")
        .args(units.iter().map(|u| format!("./{u}"))));
    let msg = text(&out);
    if out.status.success() && msg.trim().is_empty() {
        Ok(())
    } else {
        Err(format!("exit {:?}: {msg}", out.status.code()))
    }
}

/// Overall exposure from `systemd-analyze security --offline=true`.
fn exposure(dir: &Path, unit: &str) -> f64 {
    let out = run(Command::new(tool("systemd-analyze"))
        .current_dir(dir)
        .args(["security", "--offline=true", "--no-pager"])
        .arg(format!("./{unit}")));
    let msg = text(&out);
    parse_exposure(&msg)
        .unwrap_or_else(|| panic!("no overall exposure in output of security:\n{msg}"))
}

/// Parses `→ Overall exposure level for badge-agent.service: 1.5 OK 🙂`.
fn parse_exposure(output: &str) -> Option<f64> {
    let line = output
        .lines()
        .find(|l| l.contains("Overall exposure level for"))?;
    let after = line.rsplit_once(": ")?.1;
    after.split_whitespace().next()?.parse().ok()
}

#[test]
fn units_pass_systemd_analyze_verify() {
    let dir = staged_units();
    verify(dir.path(), &UNITS).unwrap_or_else(|e| panic!("systemd-analyze verify failed: {e}"));
}

#[test]
fn verify_check_catches_unknown_keys_and_missing_binaries() {
    // The gate above must be able to fail: a typo'd key only warns, a missing binary errors.
    let dir = staged_units();
    let typo = std::fs::read_to_string(dir.path().join("badge-agent.service"))
        .unwrap()
        .replace("ProtectHome=yes", "ProtectHomeDir=yes");
    std::fs::write(dir.path().join("typo.service"), typo).unwrap();
    let err = verify(dir.path(), &["typo.service"]).unwrap_err();
    assert!(err.contains("ProtectHomeDir"), "{err}");

    let shipped = systemd_dir().join("badge-agent.service");
    std::fs::copy(&shipped, dir.path().join("shipped.service")).unwrap();
    if !Path::new(SHIPPED_BIN).exists() {
        let err = verify(dir.path(), &["shipped.service"]).unwrap_err();
        assert!(err.contains("not executable"), "{err}");
    }
}

#[test]
fn agent_unit_exposure_is_at_most_gate() {
    let dir = staged_units();
    let score = exposure(dir.path(), "badge-agent.service");
    assert!(
        score <= MAX_AGENT_EXPOSURE,
        "badge-agent.service exposure {score} > {MAX_AGENT_EXPOSURE}: a hardening line was lost \
         (see `systemd-analyze security --offline=true systemd/badge-agent.service`)"
    );
}

#[test]
fn update_unit_exposure_is_bounded() {
    let dir = staged_units();
    let score = exposure(dir.path(), "badge-agent-update.service");
    assert!(
        score <= MAX_UPDATE_EXPOSURE,
        "badge-agent-update.service exposure {score} > {MAX_UPDATE_EXPOSURE}"
    );
}

#[test]
fn recover_unit_exposure_is_at_most_gate() {
    let dir = staged_units();
    let score = exposure(dir.path(), "badge-agent-update-recover.service");
    assert!(
        score <= MAX_RECOVER_EXPOSURE,
        "badge-agent-update-recover.service exposure {score} > {MAX_RECOVER_EXPOSURE}"
    );
}

#[test]
fn exposure_parser_reads_the_summary_line() {
    let sample =
        "✓ UMask=   Files created…\n\n→ Overall exposure level for x.service: 9.6 UNSAFE 😨\n";
    assert_eq!(parse_exposure(sample), Some(9.6));
    assert_eq!(parse_exposure("nothing here"), None);
}

#[test]
fn naive_unit_fails_the_exposure_gate() {
    // Proves the gate discriminates: a naive unit scores about 9.6.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("naive.service"),
        "[Service]\nExecStart=/bin/true\nRestart=always\n",
    )
    .unwrap();
    assert!(exposure(dir.path(), "naive.service") > MAX_AGENT_EXPOSURE);
}

#[test]
fn agent_unit_keeps_its_essential_settings() {
    let unit = std::fs::read_to_string(systemd_dir().join("badge-agent.service")).unwrap();
    let lines: Vec<&str> = unit.lines().map(str::trim).collect();
    for needed in [
        "Type=notify",
        "Restart=on-failure",
        "DevicePolicy=closed",
        "DeviceAllow=char-ttyUSB rw",
        "DeviceAllow=char-gpiochip rw",
        "SupplementaryGroups=dialout gpio",
        "StateDirectory=badge-agent",
        "ConfigurationDirectory=badge-agent",
        "User=badge-agent",
        "StartLimitBurst=10",
        "LimitNOFILE=8192",
        "ExecStart=/usr/lib/badge-agent/current/badge-agent run --config /etc/badge-agent/config.toml",
    ] {
        assert!(lines.contains(&needed), "badge-agent.service lacks `{needed}`");
    }
    assert!(lines.iter().any(|l| l.starts_with("WatchdogSec=")));
    // A private /dev hides every physical reader.
    assert!(!lines.iter().any(|l| l.starts_with("PrivateDevices=")));
    assert!(!lines.contains(&"Restart=always"));
}

/// Non-comment lines of a unit with backslash continuations joined (as systemd reads them).
fn unit_lines(unit: &str) -> Vec<String> {
    let text = std::fs::read_to_string(systemd_dir().join(unit)).unwrap();
    let mut lines = Vec::new();
    let mut pending = String::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(start) => {
                pending.push_str(start);
                pending.push(' ');
            }
            None => {
                pending.push_str(line);
                lines.push(std::mem::take(&mut pending));
            }
        }
    }
    lines
}

#[test]
fn failed_update_starts_the_recovery() {
    let update = unit_lines("badge-agent-update.service");
    assert!(
        update.contains(&"OnFailure=badge-agent-update-recover.service".to_string()),
        "badge-agent-update.service lacks OnFailure=badge-agent-update-recover.service"
    );

    let recover = unit_lines("badge-agent-update-recover.service");
    let has = |needed: &str| recover.iter().any(|l| l == needed);
    for needed in [
        "Type=oneshot",
        "User=root",
        "CapabilityBoundingSet=",
        "ReadWritePaths=/usr/lib/badge-agent",
        "IPAddressDeny=any",
        "IPAddressAllow=localhost",
        // Never concurrently with an update run: the updater takes no lock.
        "Conflicts=badge-agent-update.service",
    ] {
        assert!(
            has(needed),
            "badge-agent-update-recover.service lacks `{needed}`"
        );
    }
    // A recovery must not trigger itself (or the updater) on failure.
    assert!(!recover.iter().any(|l| l.starts_with("OnFailure=")));
    let exec: Vec<&String> = recover
        .iter()
        .filter(|l| l.starts_with("ExecStart="))
        .collect();
    assert_eq!(exec.len(), 1, "{exec:?}");
    // The current version's recovery first, the packaged binary only as the fallback.
    let exec = exec[0];
    let current = exec
        .find(&format!("{SHIPPED_BIN} update --recover-only"))
        .unwrap_or_else(|| panic!("recovery does not run `current`: {exec}"));
    let packaged = exec
        .find(&format!("exec {PACKAGED_BIN} update --recover-only"))
        .unwrap_or_else(|| panic!("recovery has no packaged fallback: {exec}"));
    assert!(current < packaged, "{exec}");
}

#[test]
fn recover_fallback_runs_only_when_current_cannot() {
    // The shell of ExecStart=, with systemd's `$$` unescaped and both binaries replaced by stubs:
    // exit 0 and 1 (the recovery ran and reported) are final; anything else (127 missing, 2 clap
    // error, 134 abort) falls back to the packaged binary.
    let exec = unit_lines("badge-agent-update-recover.service")
        .into_iter()
        .find_map(|l| l.strip_prefix("ExecStart=").map(str::to_owned))
        .unwrap();
    let script = exec
        .strip_prefix("/bin/sh -c '")
        .and_then(|s| s.strip_suffix('\''))
        .unwrap_or_else(|| panic!("ExecStart= is not `/bin/sh -c '...'`: {exec}"))
        .replace("$$", "$");
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("fallback-ran");
    let packaged = dir.path().join("packaged");
    std::fs::write(
        &packaged,
        format!("#!/bin/sh\ntouch {}\nexit 0\n", marker.display()),
    )
    .unwrap();
    std::fs::set_permissions(
        &packaged,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    for (current_exit, fallback) in [
        (Some(0), false),
        (Some(1), false),
        (Some(2), true),
        (Some(134), true),
        (None, true),
    ] {
        let _ = std::fs::remove_file(&marker);
        let current = dir.path().join("current");
        let _ = std::fs::remove_file(&current);
        if let Some(code) = current_exit {
            std::fs::write(&current, format!("#!/bin/sh\nexit {code}\n")).unwrap();
            std::fs::set_permissions(
                &current,
                std::os::unix::fs::PermissionsExt::from_mode(0o755),
            )
            .unwrap();
        }
        let body = script
            .replace(SHIPPED_BIN, current.to_str().unwrap())
            .replace(PACKAGED_BIN, packaged.to_str().unwrap());
        let out = run(Command::new("/bin/sh").arg("-c").arg(&body));
        assert_eq!(
            marker.exists(),
            fallback,
            "current exit {current_exit:?}: {}",
            text(&out)
        );
        let expected = if fallback { 0 } else { current_exit.unwrap() };
        assert_eq!(
            out.status.code(),
            Some(expected),
            "current exit {current_exit:?}: {}",
            text(&out)
        );
    }
}

#[test]
fn sysusers_snippet_creates_the_service_user() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("etc")).unwrap();
    let out = run(Command::new(tool("systemd-sysusers"))
        .arg(format!("--root={}", root.path().display()))
        .arg("--dry-run")
        .arg(
            systemd_dir()
                .join("badge-agent.sysusers")
                .canonicalize()
                .unwrap(),
        ));
    let msg = text(&out);
    assert!(out.status.success(), "systemd-sysusers: {msg}");
    assert!(msg.contains("Creating user 'badge-agent'"), "{msg}");
    assert!(msg.contains("Creating group 'gpio'"), "{msg}");
}

#[test]
fn tmpfiles_snippet_creates_the_update_tree() {
    use std::os::unix::fs::MetadataExt;
    let root = tempfile::tempdir().unwrap();
    // What badge-agent.sysusers creates first (postinst runs sysusers, then tmpfiles).
    std::fs::create_dir(root.path().join("etc")).unwrap();
    std::fs::write(
        root.path().join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nbadge-agent:x:990:990::/var/lib/badge-agent:/usr/sbin/nologin\n",
    )
    .unwrap();
    std::fs::write(
        root.path().join("etc/group"),
        "root:x:0:\nbadge-agent:x:990:\n",
    )
    .unwrap();
    let out = run(Command::new(tool("systemd-tmpfiles"))
        .arg(format!("--root={}", root.path().display()))
        .arg("--create")
        .arg(
            systemd_dir()
                .join("badge-agent.tmpfiles")
                .canonicalize()
                .unwrap(),
        ));
    assert!(out.status.success(), "systemd-tmpfiles: {}", text(&out));
    assert!(root.path().join("usr/lib/badge-agent").is_dir());
    assert!(root
        .path()
        .join("var/lib/badge-agent-update/incoming")
        .is_dir());
    // The agent reads its config through the group; the mode matches ConfigurationDirectoryMode=.
    let etc = std::fs::metadata(root.path().join("etc/badge-agent")).unwrap();
    assert_eq!(etc.mode() & 0o7777, 0o750);
    assert_eq!((etc.uid(), etc.gid()), (0, 990));
}
