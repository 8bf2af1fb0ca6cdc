//! Upgrade and rollback keep every swipe, through the real updater path.
//!
//! Today's release (commit 7a49260, one sled key per swipe) is built from git; the release under
//! test is this package's agent. Both are packed and signed with `badge-agent update pack/sign`
//! and installed by the OLD binary's `badge-agent update` — the updater that performs a rollback
//! in the field and that we cannot change — into an install root, with a stand-in `systemctl` on
//! `PATH` that runs `<root>/current/badge-agent` as the unit. One buffer, one serial reader fed
//! unique badges all along, one emulator:
//!
//! 1. 1.0.0 (old) installed, Snowflake unreachable: a backlog in the legacy format builds up;
//! 2. 2.0.0 (new) installed, still offline, and its `systemctl restart` made to fail after a few
//!    seconds: the new agent runs on probation (takes swipes it cannot send yet), then the old
//!    updater rolls back to 1.0.0, now online, which must drain what the new one wrote;
//! 3. 1.0.0 restarted offline again: another backlog written by the old release;
//! 4. 2.0.1 (new) installed and confirmed: it opens the old buffer, drains it, and after the
//!    health gate writes chunks;
//!
//! and at the end the emulator's ledger holds every acknowledged swipe exactly once.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use badge_agent::snowpipe::auth::{generate_private_key, write_private_key};
use badge_tests::harness::Rig;
use badge_tests::serial_sim::{converter_line, SerialSim};
use rsa::pkcs8::{EncodePublicKey, LineEnding};

/// Today's release: the last commit before chunked buffers.
const OLD_COMMIT: &str = "7a49260";
/// The same commit in full, for fetching it by id.
const OLD_COMMIT_FULL: &str = "7a49260b8b20745a1222709967fe76e7768aa4c3";

/// Makes sure [`OLD_COMMIT`] is in the clone: a shallow clone (as some CI checkouts are) lacks
/// it, so fetch it from `origin` then. A clone that still lacks it fails the test below, loudly.
fn ensure_old_commit(workspace: &Path) {
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(workspace)
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let present = || git(&["cat-file", "-e", &format!("{OLD_COMMIT_FULL}^{{commit}}")]);
    if !present() && !git(&["fetch", "--unshallow", "origin"]) {
        git(&["fetch", "origin", OLD_COMMIT_FULL]);
    }
}

/// Builds the agent of [`OLD_COMMIT`] (once; later runs reuse the build) and returns its binary.
/// Fails loudly when git or cargo cannot do it: this test never skips.
fn old_release_binary() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let base = workspace.join("target").join("old-release");
    let src = base.join("src");
    if !src.join("Cargo.toml").exists() {
        std::fs::create_dir_all(&base).unwrap();
        ensure_old_commit(workspace);
        let out = Command::new("git")
            .arg("-C")
            .arg(workspace)
            .args(["worktree", "add", "--detach"])
            .arg(&src)
            .arg(OLD_COMMIT)
            .output()
            .expect("git must be installed to build today's release");
        assert!(
            out.status.success(),
            "git worktree add {OLD_COMMIT} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let head = Command::new("git")
        .arg("-C")
        .arg(&src)
        .args(["rev-parse", "--short=7", "HEAD"])
        .output()
        .expect("git rev-parse");
    assert_eq!(
        String::from_utf8_lossy(&head.stdout).trim(),
        OLD_COMMIT,
        "{} is not at {OLD_COMMIT}; remove it and rerun",
        src.display()
    );
    let status = Command::new(env!("CARGO"))
        .current_dir(&src)
        .args(["build", "-p", "badge-agent", "--features", "demo"])
        .env("CARGO_TARGET_DIR", base.join("target"))
        // That commit's profile has full debuginfo: ~1 GB of disk a test does not need.
        .env("CARGO_PROFILE_DEV_DEBUG", "0")
        .env("CARGO_INCREMENTAL", "0")
        .status()
        .expect("cargo must be runnable to build today's release");
    assert!(status.success(), "building {OLD_COMMIT} failed: {status}");
    base.join("target").join("debug").join("badge-agent")
}

/// The stand-in for `systemctl`: `restart` stops the running agent (TERM, KILL after 5 s) and
/// starts `<root>/current/badge-agent` with the config named in `<scratch>/config-<version dir>`
/// or else `<scratch>/use-config`; when
/// `<scratch>/fail-<version dir>` exists it lets that agent run 4 s and then reports failure
/// (a unit that never became ready). `is-active` says whether the agent process lives.
fn fake_systemctl(scratch: &Path, root: &Path, log: &Path) -> PathBuf {
    let bin = scratch.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let script = format!(
        r#"#!/bin/sh
S="{s}"
alive() {{ [ -r /proc/$1/stat ] && ! awk '{{exit !($3=="Z")}}' /proc/$1/stat; }}
case "$1" in
  reset-failed) exit 0 ;;
  is-active)
    pid=$(cat "$S/agent.pid" 2>/dev/null) || exit 3
    alive "$pid" || exit 3
    exit 0 ;;
  restart)
    if pid=$(cat "$S/agent.pid" 2>/dev/null); then
      kill -TERM "$pid" 2>/dev/null
      i=0
      while alive "$pid" && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
      alive "$pid" && kill -KILL "$pid"
      i=0
      while alive "$pid" && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
    fi
    config=$(cat "$S/use-config")
    v=$(readlink "{root}/current")
    [ -e "$S/config-$v" ] && config=$(cat "$S/config-$v")
    RUST_LOG=warn,badge_agent::readers=debug,badge_agent::buffer=info \
      HTTPS_PROXY=http://127.0.0.1:9 NO_PROXY=127.0.0.1 \
      "{root}/current/badge-agent" --log stderr --config "$config" run \
      </dev/null >/dev/null 2>>"{log}" &
    echo $! > "$S/agent.pid"
    echo "systemctl: started $(readlink "{root}/current")" >> "{log}"
    if [ -e "$S/fail-$(readlink "{root}/current")" ]; then sleep 4; exit 1; fi
    exit 0 ;;
  *) echo "fake systemctl: unsupported $*" >&2; exit 2 ;;
esac
"#,
        s = scratch.display(),
        root = root.display(),
        log = log.display(),
    );
    let path = bin.join("systemctl");
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

/// Packs `binary` as release `version` with `packer`'s `update pack` and signs it.
fn release(packer: &Path, binary: &Path, version: &str, key: &Path, out_dir: &Path) -> PathBuf {
    let dir = out_dir.join(format!("dist-{version}"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(binary, dir.join("badge-agent")).unwrap();
    // Debug builds carry ~150 MB of debug info, over the updater's artifact size limit.
    let st = Command::new("strip")
        .arg("--strip-debug")
        .arg(dir.join("badge-agent"))
        .status()
        .expect("`strip` (binutils) is needed to pack debug builds");
    assert!(st.success(), "strip failed: {st}");
    let tar = out_dir.join(format!("badge-agent-{version}.tar"));
    for args in [
        vec![
            "update".to_string(),
            "pack".into(),
            "--dir".into(),
            dir.display().to_string(),
            "--version".into(),
            version.into(),
            "--arch".into(),
            std::env::consts::ARCH.into(),
            "--out".into(),
            tar.display().to_string(),
        ],
        vec![
            "update".into(),
            "sign".into(),
            "--key".into(),
            key.display().to_string(),
            tar.display().to_string(),
        ],
    ] {
        let out = Command::new(packer).args(&args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    tar
}

#[test]
fn upgrade_and_health_gated_rollback_keep_every_swipe_exactly_once() {
    let old_bin = old_release_binary();
    let new_bin = PathBuf::from(env!("CARGO_BIN_EXE_badge-agent-e2e"));

    let scratch = tempfile::tempdir().unwrap();
    let tty = scratch.path().join("ttyCONV");
    let mut conv = SerialSim::open_linked(&tty).unwrap();
    let readers = format!(
        "[[reader]]\nid = \"conv\"\nkind = \"serial\"\ndevice = \"{}\"\nframing = \"line\"\n",
        tty.display()
    );
    let rig = Rig::new(
        new_bin.to_str().unwrap(),
        &readers,
        Duration::from_millis(30),
    )
    .unwrap();
    // A fixed health port: the updater's gate reads it from the config.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let online_text = std::fs::read_to_string(&rig.config)
        .unwrap()
        .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    let online = scratch.path().join("online.toml");
    std::fs::write(&online, &online_text).unwrap();
    // Offline: Snowflake at a closed loopback port, so swipes pile up in the buffer.
    let offline = scratch.path().join("offline.toml");
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    std::fs::write(
        &offline,
        online_text.replace(&rig.emulator.url(), &format!("https://{closed}")),
    )
    .unwrap();
    assert_ne!(std::fs::read(&offline).unwrap(), online_text.as_bytes());
    let use_config = |c: &Path| {
        std::fs::write(scratch.path().join("use-config"), c.display().to_string()).unwrap()
    };

    // Release key, artifacts, install root, the stand-in systemctl.
    let key = generate_private_key(2048).unwrap();
    let key_path = scratch.path().join("release.pem");
    write_private_key(&key_path, &key).unwrap();
    let pub_path = scratch.path().join("release.pub.pem");
    std::fs::write(
        &pub_path,
        rsa::RsaPublicKey::from(&key)
            .to_public_key_pem(LineEnding::LF)
            .unwrap(),
    )
    .unwrap();
    let root = scratch.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    let v100 = release(&old_bin, &old_bin, "1.0.0", &key_path, scratch.path());
    let v200 = release(&old_bin, &new_bin, "2.0.0", &key_path, scratch.path());
    let v201 = release(&old_bin, &new_bin, "2.0.1", &key_path, scratch.path());
    let bin_dir = fake_systemctl(scratch.path(), &root, &rig.log);
    let path_var = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // The OLD binary's updater, as `badge-agent-update.service` runs it.
    let old_update = |artifact: &Path| {
        // Every update below starts from 1.0.0 (or nothing), so this is also `current`'s updater.
        let out = Command::new(&old_bin)
            .arg("--config")
            .arg(&online)
            .args(["update", "--source"])
            .arg(artifact)
            .arg("--public-key")
            .arg(&pub_path)
            .arg("--root")
            .arg(&root)
            .env("PATH", &path_var)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };

    // Unique badges on the reader all along.
    let sent = Arc::new(Mutex::new(BTreeSet::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (sent, stop) = (Arc::clone(&sent), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut n: u32 = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let (fc, card) = ((n >> 16) as u8, n as u16);
                conv.send(&converter_line(fc, card)).unwrap();
                sent.lock().unwrap().insert(format!("RAW24:{n:06x}"));
                std::thread::sleep(Duration::from_millis(15));
            }
        })
    };

    // 1. Today's release, offline: a legacy backlog.
    use_config(&offline);
    let (ok, out) = old_update(&v100);
    assert!(ok, "installing 1.0.0 failed: {out}\n{}", rig.agent_log());
    std::thread::sleep(Duration::from_secs(3));

    // 2. The new release on probation, then its gate fails: rolled back by the OLD updater.
    use_config(&online);
    std::fs::write(
        scratch.path().join("config-2.0.0"),
        offline.display().to_string(),
    )
    .unwrap();
    std::fs::write(scratch.path().join("fail-2.0.0"), b"").unwrap();
    let (ok, out) = old_update(&v200);
    assert!(
        !ok,
        "the update to 2.0.0 should have been rolled back: {out}"
    );
    assert!(
        out.to_lowercase().contains("roll"),
        "no rollback reported: {out}"
    );
    assert_eq!(
        std::fs::read_link(root.join("current")).unwrap(),
        Path::new("1.0.0")
    );
    let log = rig.agent_log();
    assert!(
        log.contains("systemctl: started 2.0.0"),
        "the new release never ran: {log}"
    );
    std::thread::sleep(Duration::from_secs(3));

    // 3. Today's release again, offline: a second legacy backlog.
    use_config(&offline);
    let st = Command::new(bin_dir.join("systemctl"))
        .args(["restart", "badge-agent.service"])
        .status()
        .unwrap();
    assert!(st.success());
    std::thread::sleep(Duration::from_secs(3));

    // 4. The new release, confirmed: drains the old backlog, then writes chunks.
    use_config(&online);
    let (ok, out) = old_update(&v201);
    assert!(ok, "installing 2.0.1 failed: {out}\n{}", rig.agent_log());
    assert!(!root.join("update-pending.json").exists());
    std::thread::sleep(Duration::from_secs(4));
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();

    // Everything acknowledged lands, exactly once.
    rig.wait_for("every acknowledged swipe committed", || {
        let acked = rig.acknowledged().unwrap();
        let committed: BTreeSet<String> = rig.committed().0.into_iter().collect();
        !acked.is_empty() && acked.is_subset(&committed)
    });
    let pid: i32 = std::fs::read_to_string(scratch.path().join("agent.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );

    let sent = sent.lock().unwrap();
    // A line cut by a restart reads as a short RAW4/RAW8 swipe: real events, but not badges we
    // presented, and two of them may carry the same value. Judge the presented badges by
    // credential and every row by its event id.
    let acked: BTreeSet<String> = rig
        .acknowledged()
        .unwrap()
        .into_iter()
        .filter(|c| sent.contains(c))
        .collect();
    let (credentials, event_ids) = rig.committed();
    let distinct_events: BTreeSet<&String> = event_ids.iter().collect();
    assert_eq!(
        distinct_events.len(),
        event_ids.len(),
        "a row committed twice"
    );
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for c in credentials.iter().filter(|c| sent.contains(*c)) {
        *counts.entry(c.as_str()).or_default() += 1;
    }
    let dups: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dups.is_empty(), "swipes committed twice: {dups:?}");
    let lost: Vec<_> = acked
        .iter()
        .filter(|c| !counts.contains_key(c.as_str()))
        .collect();
    assert!(lost.is_empty(), "acknowledged swipes missing: {lost:?}");
    let log = rig.agent_log();
    assert!(
        log.contains("writing chunks from now on"),
        "the confirmed release never switched to chunks: {log}"
    );

    assert!(
        acked.len() > 100,
        "too few swipes acknowledged to mean anything: {}",
        acked.len()
    );
    eprintln!(
        "{} badges presented, {} acknowledged, {} committed exactly once",
        sent.len(),
        acked.len(),
        credentials.len()
    );
}
