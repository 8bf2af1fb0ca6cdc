//! Update tests: temp install roots, a fake service manager, a fake health probe that judges the
//! version `current` points at, and RSA keys generated at test time (once per test binary).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::OnceLock;
use std::time::Duration;

use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use rsa::{RsaPrivateKey, RsaPublicKey};
use semver::Version;

use super::layout::{self, CURRENT, PENDING, PREVIOUS};
use super::*;

fn release_key() -> &'static RsaPrivateKey {
    static KEY: OnceLock<RsaPrivateKey> = OnceLock::new();
    KEY.get_or_init(|| RsaPrivateKey::new(&mut rand_core_rng(), 2048).unwrap())
}

fn other_key() -> &'static RsaPrivateKey {
    static KEY: OnceLock<RsaPrivateKey> = OnceLock::new();
    KEY.get_or_init(|| RsaPrivateKey::new(&mut rand_core_rng(), 2048).unwrap())
}

fn rand_core_rng() -> rsa::rand_core::OsRng {
    rsa::rand_core::OsRng
}

/// Shared view of the fake unit: restarts and the version each restart started.
#[derive(Default)]
struct World {
    restarts: Vec<Option<String>>,
    /// Versions whose process never becomes ready/healthy.
    bad: Vec<String>,
}

struct FakeSystemd {
    root: PathBuf,
    world: Rc<RefCell<World>>,
}

fn current_version(root: &Path) -> Option<String> {
    let dir = layout::link_target(root, CURRENT).ok()??;
    Some(
        layout::installed_manifest(&root.join(dir))
            .ok()?
            .version
            .to_string(),
    )
}

impl ServiceManager for FakeSystemd {
    fn restart(&mut self, unit: &str) -> Result<(), String> {
        assert_eq!(unit, DEFAULT_UNIT);
        self.world
            .borrow_mut()
            .restarts
            .push(current_version(&self.root));
        Ok(())
    }
    fn is_active(&mut self, _unit: &str) -> Result<bool, String> {
        Ok(true)
    }
}

struct FakeHealth {
    root: PathBuf,
    world: Rc<RefCell<World>>,
}

impl HealthProbe for FakeHealth {
    fn check(&self) -> Result<(), String> {
        let v = current_version(&self.root).ok_or("nothing running")?;
        if self.world.borrow().bad.contains(&v) {
            Err(format!("{v}: /readyz 503"))
        } else {
            Ok(())
        }
    }
}

struct Env {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    spool: PathBuf,
    opts: UpdateOptions,
    world: Rc<RefCell<World>>,
}

impl Env {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("lib");
        let spool = tmp.path().join("incoming");
        std::fs::create_dir_all(&spool).unwrap();
        let key_path = tmp.path().join("release-key.pub.pem");
        let pem = RsaPublicKey::from(release_key())
            .to_public_key_pem(LineEnding::LF)
            .unwrap();
        std::fs::write(&key_path, pem).unwrap();
        let mut opts = UpdateOptions::new(&spool);
        opts.public_key = key_path;
        opts.install_root = root.clone();
        opts.running_version = Version::new(0, 1, 0);
        opts.health_deadline = Duration::from_millis(150);
        opts.health_poll = Duration::from_millis(5);
        opts.healthy_checks = 2;
        Self {
            _tmp: tmp,
            root,
            spool,
            opts,
            world: Rc::default(),
        }
    }

    /// Writes a signed `badge-agent-<ver>.tar` into the spool and returns its path.
    fn offer(&self, version: &str) -> PathBuf {
        self.offer_signed_by(version, release_key())
    }

    fn offer_signed_by(&self, version: &str, key: &RsaPrivateKey) -> PathBuf {
        let bytes = artifact_bytes(version, std::env::consts::ARCH);
        let path = self.spool.join(format!("badge-agent-{version}.tar"));
        std::fs::write(&path, &bytes).unwrap();
        std::fs::write(signature_path(&path), sign_bytes(&bytes, key)).unwrap();
        path
    }

    fn run(&self) -> Result<UpdateOutcome, UpdateError> {
        self.run_failing(None)
    }

    /// Runs with an explicit artifact instead of the spool.
    fn run_file(&self, artifact: &Path) -> Result<UpdateOutcome, UpdateError> {
        let mut opts = self.opts.clone();
        opts.source = artifact.to_path_buf();
        let mut svc = FakeSystemd {
            root: self.root.clone(),
            world: self.world.clone(),
        };
        let health = FakeHealth {
            root: self.root.clone(),
            world: self.world.clone(),
        };
        run_update(&opts, &mut svc, &health)
    }

    fn set_aside(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.spool.join(REJECTED_DIR))
            .map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    fn run_failing(&self, fail: Option<FailPoint>) -> Result<UpdateOutcome, UpdateError> {
        let mut svc = FakeSystemd {
            root: self.root.clone(),
            world: self.world.clone(),
        };
        let health = FakeHealth {
            root: self.root.clone(),
            world: self.world.clone(),
        };
        run_update_with(&self.opts, &mut svc, &health, fail)
    }

    fn current(&self) -> Option<String> {
        current_version(&self.root)
    }

    fn link(&self, name: &str) -> Option<String> {
        layout::link_target(&self.root, name).unwrap()
    }

    fn entries(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// Installs 1.0.0 as the running version.
    fn with_installed(version: &str) -> Self {
        let env = Self::new();
        env.offer(version);
        env.run().unwrap();
        assert_eq!(env.current().as_deref(), Some(version));
        env
    }

    fn assert_current_runnable(&self, version: &str) {
        let dir = self.link(CURRENT).expect("current exists");
        let m = layout::check_runnable(&self.root.join(dir)).expect("current is runnable");
        assert_eq!(m.version.to_string(), version);
    }

    fn assert_clean(&self) {
        for e in self.entries() {
            assert!(
                !e.starts_with('.') && !e.ends_with(".new") && e != PENDING,
                "leftover {e} in {:?}",
                self.entries()
            );
        }
    }
}

fn artifact_bytes(version: &str, arch: &str) -> Vec<u8> {
    let files = vec![
        (
            BIN_NAME.to_string(),
            format!("#!/bin/sh\necho badge-agent {version}\n").into_bytes(),
            0o755,
        ),
        (
            "share/NOTICE".to_string(),
            format!("release {version}\n").into_bytes(),
            0o644,
        ),
    ];
    pack(&Version::parse(version).unwrap(), arch, &files).unwrap()
}

#[test]
fn good_update_switches_current_keeps_previous_and_restarts() {
    let env = Env::with_installed("1.0.0");
    let art = env.offer("1.1.0");
    let mut opts = env.opts.clone();
    opts.source = art; // explicit file source
    let mut svc = FakeSystemd {
        root: env.root.clone(),
        world: env.world.clone(),
    };
    let health = FakeHealth {
        root: env.root.clone(),
        world: env.world.clone(),
    };
    let out = run_update(&opts, &mut svc, &health).unwrap();
    match out {
        UpdateOutcome::Updated { from, to, dir, .. } => {
            assert_eq!(from, Some(Version::new(1, 0, 0)));
            assert_eq!(to, Version::new(1, 1, 0));
            assert_eq!(dir, "1.1.0");
        }
        other => panic!("{other:?}"),
    }
    env.assert_current_runnable("1.1.0");
    assert_eq!(env.link(PREVIOUS).as_deref(), Some("1.0.0"));
    // The restart happened after the switch, onto the new version.
    assert_eq!(
        env.world
            .borrow()
            .restarts
            .last()
            .cloned()
            .flatten()
            .as_deref(),
        Some("1.1.0")
    );
    let bin = std::fs::read_to_string(env.root.join("current").join(BIN_NAME)).unwrap();
    assert!(bin.contains("1.1.0"));
    env.assert_clean();
}

#[test]
fn spool_directory_picks_newest_and_is_up_to_date_afterwards() {
    let env = Env::with_installed("1.0.0");
    env.offer("1.2.0");
    env.offer("1.10.0"); // semver order, not string order
    env.offer("1.3.0");
    env.run().unwrap();
    assert_eq!(env.current().as_deref(), Some("1.10.0"));
    match env.run().unwrap() {
        UpdateOutcome::UpToDate {
            installed,
            newest_offered,
            ..
        } => {
            assert_eq!(installed, Version::new(1, 10, 0));
            assert_eq!(newest_offered, Some(Version::new(1, 10, 0)));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn signature_from_another_key_is_refused_before_unpacking() {
    let env = Env::with_installed("1.0.0");
    let path = env.offer_signed_by("1.1.0", other_key());
    let err = env.run_file(&path).unwrap_err();
    assert!(matches!(err, UpdateError::BadSignature(_)), "{err}");
    // From the spool: the same verdict, and the artifact is moved aside.
    let err = env.run().unwrap_err();
    assert!(matches!(err, UpdateError::AllSetAside { .. }), "{err}");
    assert!(err.to_string().contains("signature"), "{err}");
    assert_eq!(
        env.set_aside(),
        vec!["badge-agent-1.1.0.tar", "badge-agent-1.1.0.tar.sig"]
    );
    assert_eq!(env.current().as_deref(), Some("1.0.0"));
    assert!(!env.root.join("1.1.0").exists());
    assert_eq!(
        env.world.borrow().restarts.len(),
        1,
        "only the initial install restarted"
    );
}

#[test]
fn tampered_artifact_is_refused() {
    let env = Env::with_installed("1.0.0");
    let path = env.offer("1.1.0");
    let mut bytes = std::fs::read(&path).unwrap();
    // Flip one byte of the binary's content (after the 512-byte manifest header + manifest).
    let pos = bytes
        .windows(b"echo badge-agent".len())
        .position(|w| w == b"echo badge-agent")
        .unwrap();
    bytes[pos] ^= 0x20;
    std::fs::write(&path, &bytes).unwrap();
    let err = env.run_file(&path).unwrap_err();
    assert!(matches!(err, UpdateError::BadSignature(_)), "{err}");
    assert_eq!(env.current().as_deref(), Some("1.0.0"));

    // A missing or truncated signature is refused too.
    std::fs::write(signature_path(&path), b"short").unwrap();
    assert!(matches!(
        env.run_file(&path).unwrap_err(),
        UpdateError::BadSignature(_)
    ));
    std::fs::remove_file(signature_path(&path)).unwrap();
    // Without a .sig the 1.1.0 tar is not even considered: only the installed 1.0.0 is offered.
    match env.run().unwrap() {
        UpdateOutcome::UpToDate { newest_offered, .. } => {
            assert_eq!(newest_offered, Some(Version::new(1, 0, 0)))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn downgrade_is_refused_and_same_version_needs_force() {
    let env = Env::with_installed("1.2.0");
    let mut opts = env.opts.clone();
    let mut svc = FakeSystemd {
        root: env.root.clone(),
        world: env.world.clone(),
    };
    let health = FakeHealth {
        root: env.root.clone(),
        world: env.world.clone(),
    };
    opts.source = env.offer("1.1.9");
    let err = run_update(&opts, &mut svc, &health).unwrap_err();
    assert!(matches!(err, UpdateError::Downgrade { .. }), "{err}");
    // Even with force, never older.
    opts.force_reinstall = true;
    assert!(matches!(
        run_update(&opts, &mut svc, &health).unwrap_err(),
        UpdateError::Downgrade { .. }
    ));
    // Pre-releases sort before their release.
    opts.source = env.offer("1.2.0-rc.1");
    assert!(matches!(
        run_update(&opts, &mut svc, &health).unwrap_err(),
        UpdateError::Downgrade { .. }
    ));

    opts.force_reinstall = false;
    opts.source = env.spool.join("badge-agent-1.2.0.tar");
    let err = run_update(&opts, &mut svc, &health).unwrap_err();
    assert!(matches!(err, UpdateError::SameVersion { .. }), "{err}");

    // Forced reinstall goes to a fresh directory: the running one is never rewritten in place.
    opts.force_reinstall = true;
    match run_update(&opts, &mut svc, &health).unwrap() {
        UpdateOutcome::Updated { dir, .. } => assert_eq!(dir, "1.2.0_1"),
        other => panic!("{other:?}"),
    }
    assert_eq!(env.link(CURRENT).as_deref(), Some("1.2.0_1"));
    assert_eq!(env.link(PREVIOUS).as_deref(), Some("1.2.0"));
    env.assert_current_runnable("1.2.0");
}

#[test]
fn wrong_architecture_is_refused() {
    let env = Env::with_installed("1.0.0");
    let bytes = artifact_bytes("1.1.0", "sparc64");
    let path = env.spool.join("badge-agent-1.1.0.tar");
    std::fs::write(&path, &bytes).unwrap();
    std::fs::write(signature_path(&path), sign_bytes(&bytes, release_key())).unwrap();
    assert!(matches!(
        env.run_file(&path).unwrap_err(),
        UpdateError::WrongArch { .. }
    ));
    assert_eq!(env.current().as_deref(), Some("1.0.0"));
}

#[test]
fn one_bad_artifact_in_the_spool_does_not_block_later_updates() {
    let env = Env::with_installed("1.0.0");
    env.offer("1.1.0");
    // Newest by name, but signed by someone else; and a newer-still one for another CPU.
    env.offer_signed_by("99.0.0", other_key());
    let bytes = artifact_bytes("100.0.0", "sparc64");
    let path = env.spool.join("badge-agent-100.0.0.tar");
    std::fs::write(&path, &bytes).unwrap();
    std::fs::write(signature_path(&path), sign_bytes(&bytes, release_key())).unwrap();
    match env.run().unwrap() {
        UpdateOutcome::Updated { to, set_aside, .. } => {
            assert_eq!(to, Version::new(1, 1, 0));
            assert_eq!(set_aside.len(), 2, "{set_aside:?}");
            assert!(
                set_aside[0].starts_with("badge-agent-100.0.0.tar: "),
                "{set_aside:?}"
            );
            assert!(set_aside[1].contains("signature"), "{set_aside:?}");
        }
        other => panic!("{other:?}"),
    }
    env.assert_current_runnable("1.1.0");
    assert_eq!(env.set_aside().len(), 4, "both tars and both .sig files");
    // The next release arrives and installs; nothing is in the way any more.
    env.offer("1.2.0");
    env.run().unwrap();
    env.assert_current_runnable("1.2.0");
}

/// Runs `f` on a thread; fails (instead of hanging the suite) if it does not return in time.
fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| panic!("{what} did not return within 20 s"))
}

#[test]
fn spool_files_that_are_not_regular_files_are_never_read() {
    let env = Env::with_installed("1.0.0");
    let good = env.offer("1.1.0");
    // A FIFO: opening it for reading would wait for a writer forever.
    let fifo = env.spool.join("badge-agent-3.0.0.tar");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo (coreutils) must be installed");
    assert!(status.success());
    std::fs::copy(signature_path(&good), signature_path(&fifo)).unwrap();
    // A link to an endless device: reading it would fill memory.
    let zero = env.spool.join("badge-agent-2.0.0.tar");
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    std::fs::copy(signature_path(&good), signature_path(&zero)).unwrap();
    // A signature that is a link to an endless device.
    let bytes = artifact_bytes("1.5.0", std::env::consts::ARCH);
    let endless_sig = env.spool.join("badge-agent-1.5.0.tar");
    std::fs::write(&endless_sig, &bytes).unwrap();
    std::os::unix::fs::symlink("/dev/zero", signature_path(&endless_sig)).unwrap();

    let opts = env.opts.clone();
    let (root, world) = (env.root.clone(), env.world.clone());
    let root2 = root.clone();
    let outcome = {
        // FakeSystemd holds an Rc: run on this thread, but guard the blocking reads first.
        let fifo2 = fifo.clone();
        within("reading a FIFO artifact", move || {
            artifact::read_limited(&fifo2)
                .map(|d| d.len())
                .map_err(|e| e.to_string())
        })
        .unwrap_err();
        let zero2 = zero.clone();
        within("reading /dev/zero through a link", move || {
            artifact::read_limited(&zero2)
                .map(|d| d.len())
                .map_err(|e| e.to_string())
        })
        .unwrap_err();
        let mut svc = FakeSystemd {
            root,
            world: world.clone(),
        };
        let health = FakeHealth { root: root2, world };
        run_update(&opts, &mut svc, &health).unwrap()
    };
    match outcome {
        UpdateOutcome::Updated { to, set_aside, .. } => {
            assert_eq!(to, Version::new(1, 1, 0));
            assert_eq!(set_aside.len(), 3, "{set_aside:?}");
            assert!(set_aside[0].contains("not a regular file"), "{set_aside:?}");
            assert!(set_aside[1].contains("symbolic link"), "{set_aside:?}");
            assert!(set_aside[2].contains("symbolic link"), "{set_aside:?}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn oversized_artifacts_and_signatures_are_refused_without_reading_them() {
    let tmp = tempfile::tempdir().unwrap();
    let big = tmp.path().join("badge-agent-9.0.0.tar");
    let f = std::fs::File::create(&big).unwrap();
    f.set_len(MAX_ARTIFACT_BYTES + 1).unwrap(); // sparse: no disk used
    let err = artifact::read_limited(&big).unwrap_err().to_string();
    assert!(err.contains("limit"), "{err}");
    let sig = signature_path(&big);
    std::fs::File::create(&sig)
        .unwrap()
        .set_len(MAX_SIGNATURE_BYTES + 1)
        .unwrap();
    std::fs::File::create(&big).unwrap().set_len(10).unwrap();
    let key = RsaPublicKey::from(release_key());
    let err = read_verified(&big, &key).unwrap_err().to_string();
    assert!(err.contains("limit"), "{err}");
}

#[test]
fn a_release_key_others_could_replace_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    env.offer("1.0.0");
    for mode in [0o666, 0o664, 0o646, 0o622] {
        std::fs::set_permissions(&env.opts.public_key, std::fs::Permissions::from_mode(mode))
            .unwrap();
        let err = env.run().unwrap_err();
        assert!(matches!(err, UpdateError::Key { .. }), "{mode:o}: {err}");
        assert!(err.to_string().contains("chmod 644"), "{err}");
    }
    std::fs::set_permissions(&env.opts.public_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    // Owned by another user: refused whatever the mode. As root, hand the file to a stranger; as
    // anyone else the file is already not root's, so a different updater uid is the stranger.
    let euid = system::effective_uid();
    let (stranger_file, updater) = if euid == 0 {
        std::os::unix::fs::chown(&env.opts.public_key, Some(4242), None).unwrap();
        (true, 0)
    } else {
        (false, euid + 1)
    };
    let meta = std::fs::metadata(&env.opts.public_key).unwrap();
    let err = artifact::check_public_key_owner(&meta, updater).unwrap_err();
    assert!(err.contains("owned by uid"), "{err}");
    if stranger_file {
        assert!(matches!(env.run().unwrap_err(), UpdateError::Key { .. }));
        std::os::unix::fs::chown(&env.opts.public_key, Some(0), None).unwrap();
    }
    let meta = std::fs::metadata(&env.opts.public_key).unwrap();
    assert!(artifact::check_public_key_owner(&meta, euid).is_ok());
    env.run().unwrap();
    env.assert_current_runnable("1.0.0");
    // The key is judged before any spool artifact, and nothing is moved aside for it.
    env.offer("1.1.0");
    std::fs::set_permissions(&env.opts.public_key, std::fs::Permissions::from_mode(0o666)).unwrap();
    assert!(matches!(env.run().unwrap_err(), UpdateError::Key { .. }));
    assert!(env.set_aside().is_empty());
}

#[test]
fn non_canonical_member_paths_cannot_alias_one_file() {
    // `lib/x` and `lib//x` name one file on disk; a tar holding both (each listed in the manifest
    // with its own digest) would let the second silently replace the first at unpack.
    let files = [
        ("lib/x", b"first".as_slice()),
        ("lib//x", b"second".as_slice()),
    ];
    let mut manifest = parse(&artifact_bytes("1.0.0", "aarch64")).unwrap().manifest;
    for (path, data) in files {
        manifest.files.push(FileEntry {
            path: path.into(),
            sha256: sha256_hex(data),
            mode: 0o644,
        });
    }
    assert!(check_manifest_err(&manifest).contains("unsafe path"));
    let mut b = tar::Builder::new(Vec::new());
    let mut raw = |name: &str, data: &[u8]| {
        // Written byte for byte: `append_data` would normalise the name.
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        b.append(&h, data).unwrap();
    };
    raw(MANIFEST_NAME, &serde_json::to_vec(&manifest).unwrap());
    let notice = parse(&artifact_bytes("1.0.0", "aarch64")).unwrap().files;
    for (p, d, _) in &notice {
        raw(p, d);
    }
    for (path, data) in files {
        raw(path, data);
    }
    let err = parse(&b.into_inner().unwrap()).unwrap_err().to_string();
    assert!(err.contains("unsafe path"), "{err}");
    for bad in ["lib/", "./lib/x", "lib/./x", "lib/../x", "/lib/x"] {
        manifest.files.last_mut().unwrap().path = bad.into();
        assert!(
            check_manifest_err(&manifest).contains("unsafe path"),
            "{bad}"
        );
    }
}

#[test]
fn new_version_that_never_becomes_healthy_is_rolled_back() {
    let env = Env::with_installed("1.0.0");
    env.offer("1.1.0");
    env.world.borrow_mut().bad.push("1.1.0".into());
    let err = env.run().unwrap_err();
    match &err {
        UpdateError::RolledBack {
            version,
            rolled_back_to,
            reason,
        } => {
            assert_eq!(version, &Version::new(1, 1, 0));
            assert_eq!(rolled_back_to, "1.0.0");
            assert!(reason.contains("503"), "{reason}");
        }
        other => panic!("{other}"),
    }
    env.assert_current_runnable("1.0.0");
    assert!(
        env.link(PREVIOUS).is_none(),
        "previous restored to what it was"
    );
    assert!(!env.root.join("1.1.0").exists(), "failed version discarded");
    let restarts = env.world.borrow().restarts.clone();
    assert_eq!(
        restarts,
        vec![
            Some("1.0.0".to_string()),
            Some("1.1.0".to_string()),
            Some("1.0.0".to_string())
        ]
    );
    env.assert_clean();
}

#[test]
fn failed_rollback_is_reported() {
    let env = Env::with_installed("1.0.0");
    env.offer("1.1.0");
    env.world
        .borrow_mut()
        .bad
        .extend(["1.1.0".to_string(), "1.0.0".to_string()]);
    let err = env.run().unwrap_err();
    assert!(matches!(err, UpdateError::RollbackFailed { .. }), "{err}");
    env.assert_current_runnable("1.0.0");
}

#[test]
fn health_gate_needs_consecutive_passes() {
    // A probe that alternates pass/fail never reaches 2 in a row.
    struct Flaky(RefCell<u32>);
    impl HealthProbe for Flaky {
        fn check(&self) -> Result<(), String> {
            let mut n = self.0.borrow_mut();
            *n += 1;
            if n.is_multiple_of(2) {
                Ok(())
            } else {
                Err("flap".into())
            }
        }
    }
    let env = Env::new();
    let mut svc = FakeSystemd {
        root: env.root.clone(),
        world: env.world.clone(),
    };
    assert!(wait_healthy(&env.opts, &mut svc, &Flaky(RefCell::new(0))).is_err());
    let mut opts = env.opts.clone();
    opts.healthy_checks = 1;
    assert!(wait_healthy(&opts, &mut svc, &Flaky(RefCell::new(0))).is_ok());
}

/// Power cut before `current` moves: `current` still runs the old version; the next run cleans
/// up and completes the update.
#[test]
fn power_cut_before_switch_leaves_old_version_and_next_run_recovers() {
    for point in [
        FailPoint::AfterUnpack,
        FailPoint::AfterCurrentNew,
        FailPoint::BeforeRename,
    ] {
        let env = Env::with_installed("1.0.0");
        env.offer("1.1.0");
        env.run().unwrap(); // 1.1.0, previous 1.0.0
        env.offer("1.2.0");
        let err = env.run_failing(Some(point)).unwrap_err();
        assert!(matches!(err, UpdateError::Injected(p) if p == point));
        env.assert_current_runnable("1.1.0");
        if point != FailPoint::AfterUnpack {
            assert!(env.root.join(PENDING).exists());
            assert!(env.root.join("current.new").symlink_metadata().is_ok());
        }

        let mut svc = FakeSystemd {
            root: env.root.clone(),
            world: env.world.clone(),
        };
        let health = FakeHealth {
            root: env.root.clone(),
            world: env.world.clone(),
        };
        let report = recover(&env.opts, &mut svc, &health).unwrap();
        env.assert_clean();
        env.assert_current_runnable("1.1.0");
        assert_eq!(env.link(PREVIOUS).as_deref(), Some("1.0.0"), "{point:?}");
        if point != FailPoint::AfterUnpack {
            assert!(!report.actions.is_empty(), "{point:?}");
        }

        // The next timer run installs 1.2.0 normally.
        env.run().unwrap();
        env.assert_current_runnable("1.2.0");
        assert_eq!(env.link(PREVIOUS).as_deref(), Some("1.1.0"));
        env.assert_clean();
    }
}

/// Power cut after the switch but before the health gate: the next run finishes the gate, and
/// rolls back if the new version is unhealthy.
#[test]
fn power_cut_after_switch_is_gated_on_next_run() {
    for healthy in [true, false] {
        let env = Env::with_installed("1.0.0");
        env.offer("1.1.0");
        let err = env.run_failing(Some(FailPoint::AfterSwitch)).unwrap_err();
        assert!(matches!(err, UpdateError::Injected(FailPoint::AfterSwitch)));
        // current points at a complete version either way.
        env.assert_current_runnable("1.1.0");
        assert!(env.root.join(PENDING).exists());

        if !healthy {
            env.world.borrow_mut().bad.push("1.1.0".into());
            let err = env.run().unwrap_err();
            assert!(matches!(err, UpdateError::RolledBack { .. }), "{err}");
            env.assert_current_runnable("1.0.0");
        } else {
            match env.run().unwrap() {
                UpdateOutcome::UpToDate { recovery, .. } => {
                    assert!(recovery.actions.iter().any(|a| a.contains("confirmed")))
                }
                other => panic!("{other:?}"),
            }
            env.assert_current_runnable("1.1.0");
            assert_eq!(env.link(PREVIOUS).as_deref(), Some("1.0.0"));
        }
        env.assert_clean();
    }
}

#[test]
fn recovery_repairs_a_dangling_or_torn_current() {
    let env = Env::with_installed("1.0.0");
    env.offer("1.1.0");
    env.run().unwrap();
    // A torn install: the binary of the current version is damaged.
    std::fs::write(env.root.join("1.1.0").join(BIN_NAME), b"garbage").unwrap();
    // And some half-unpacked leftover.
    std::fs::create_dir(env.root.join(".staging-9.9.9")).unwrap();
    let mut svc = FakeSystemd {
        root: env.root.clone(),
        world: env.world.clone(),
    };
    let health = FakeHealth {
        root: env.root.clone(),
        world: env.world.clone(),
    };
    let report = recover(&env.opts, &mut svc, &health).unwrap();
    env.assert_current_runnable("1.0.0");
    assert!(
        report.actions.iter().any(|a| a.contains("broken 1.1.0")),
        "{report:?}"
    );
    env.assert_clean();

    // Dangling link.
    std::os::unix::fs::symlink("7.7.7", env.root.join("current.new")).unwrap();
    std::fs::rename(env.root.join("current.new"), env.root.join(CURRENT)).unwrap();
    recover(&env.opts, &mut svc, &health).unwrap();
    env.assert_current_runnable("1.0.0");
}

#[test]
fn prune_keeps_three_versions_including_current_and_previous() {
    let env = Env::with_installed("1.0.0");
    for v in ["1.1.0", "1.2.0", "1.3.0", "1.4.0"] {
        env.offer(v);
        env.run().unwrap();
    }
    let versions: Vec<String> = env
        .entries()
        .into_iter()
        .filter(|e| e.starts_with("1."))
        .collect();
    assert_eq!(versions, vec!["1.2.0", "1.3.0", "1.4.0"]);
    env.assert_current_runnable("1.4.0");
    assert_eq!(env.link(PREVIOUS).as_deref(), Some("1.3.0"));
}

#[test]
fn artifacts_with_links_or_unlisted_files_are_refused() {
    // A symlink member.
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    h.set_mode(0o777);
    b.append_link(&mut h, BIN_NAME, "/bin/sh").unwrap();
    let bytes = b.into_inner().unwrap();
    let err = parse(&bytes).unwrap_err();
    assert!(err.to_string().contains("not a regular file"), "{err}");

    // A member that the manifest does not list.
    let good = artifact_bytes("1.0.0", "aarch64");
    let art = parse(&good).unwrap();
    let mut b = tar::Builder::new(Vec::new());
    let mut manifest = art.manifest.clone();
    let json = serde_json::to_vec(&manifest).unwrap();
    let mut append = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o755);
        b.append_data(&mut h, name, data).unwrap();
    };
    append(MANIFEST_NAME, &json);
    for (p, d, _) in &art.files {
        append(p, d);
    }
    append("extra", b"x");
    let err = parse(&b.into_inner().unwrap()).unwrap_err();
    assert!(err.to_string().contains("not in the manifest"), "{err}");

    // Manifest paths must be relative and plain.
    manifest.files[0].path = "../badge-agent".into();
    assert!(check_manifest_err(&manifest).contains("unsafe path"));
}

fn check_manifest_err(m: &Manifest) -> String {
    artifact::check_manifest(m).unwrap_err().to_string()
}

#[test]
fn sign_artifact_and_pack_dir_round_trip_through_pem_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dist = tmp.path().join("dist");
    std::fs::create_dir_all(dist.join("share")).unwrap();
    std::fs::write(dist.join(BIN_NAME), b"\x7fELF...").unwrap();
    std::fs::set_permissions(
        dist.join(BIN_NAME),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::write(dist.join("share/README"), b"hi").unwrap();
    let out = tmp.path().join("badge-agent-2.0.0.tar");
    pack_dir(&dist, &Version::new(2, 0, 0), "aarch64", &out).unwrap();

    let priv_pem = tmp.path().join("release.pem");
    std::fs::write(
        &priv_pem,
        release_key()
            .to_pkcs8_pem(LineEnding::LF)
            .unwrap()
            .as_bytes(),
    )
    .unwrap();
    let pub_pem = tmp.path().join("release.pub.pem");
    std::fs::write(
        &pub_pem,
        RsaPublicKey::from(release_key())
            .to_public_key_pem(LineEnding::LF)
            .unwrap(),
    )
    .unwrap();
    let sig = sign_artifact(&out, &priv_pem).unwrap();
    assert_eq!(sig, tmp.path().join("badge-agent-2.0.0.tar.sig"));
    let art = read_verified(&out, &load_public_key(&pub_pem).unwrap()).unwrap();
    assert_eq!(art.manifest.version, Version::new(2, 0, 0));
    let paths: Vec<&str> = art.files.iter().map(|f| f.0.as_str()).collect();
    assert_eq!(paths, vec![BIN_NAME, "share/README"]);
    assert_eq!(art.files[0].2, 0o755);
    assert_eq!(art.files[1].2, 0o644);
}

#[test]
fn short_keys_and_garbage_keys_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let small = RsaPrivateKey::new(&mut rand_core_rng(), 1024).unwrap();
    let path = tmp.path().join("small.pem");
    std::fs::write(
        &path,
        RsaPublicKey::from(&small)
            .to_public_key_pem(LineEnding::LF)
            .unwrap(),
    )
    .unwrap();
    let err = load_public_key(&path).unwrap_err();
    assert!(err.to_string().contains("at least 2048"), "{err}");
    std::fs::write(&path, "not a key").unwrap();
    assert!(matches!(
        load_public_key(&path),
        Err(UpdateError::Key { .. })
    ));
}

#[test]
fn rolled_back_version_is_not_retried_by_the_timer() {
    let env = Env::with_installed("1.0.0");
    env.offer("1.1.0");
    env.world.borrow_mut().bad.push("1.1.0".into());
    assert!(matches!(
        env.run().unwrap_err(),
        UpdateError::RolledBack { .. }
    ));
    // Next timer run: the spool still holds 1.1.0, but it is skipped.
    let restarts = env.world.borrow().restarts.len();
    match env.run().unwrap() {
        UpdateOutcome::UpToDate { newest_offered, .. } => {
            assert_eq!(newest_offered, Some(Version::new(1, 0, 0)))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(env.world.borrow().restarts.len(), restarts, "no restart");
    // Explicitly naming it is refused too; a newer release goes ahead.
    let mut opts = env.opts.clone();
    opts.source = env.spool.join("badge-agent-1.1.0.tar");
    let mut svc = FakeSystemd {
        root: env.root.clone(),
        world: env.world.clone(),
    };
    let health = FakeHealth {
        root: env.root.clone(),
        world: env.world.clone(),
    };
    assert!(matches!(
        run_update(&opts, &mut svc, &health).unwrap_err(),
        UpdateError::Rejected { .. }
    ));
    env.offer("1.1.1");
    env.run().unwrap();
    env.assert_current_runnable("1.1.1");
    env.assert_clean();
}

/// One-shot HTTP server on a private Unix socket answering every request with `status_line`.
fn serve_once(dir: &Path, status_line: &'static str) -> PathBuf {
    use std::io::{Read, Write};
    let path = dir.join(format!("agent-{}.sock", status_line.len()));
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        // The request may arrive in several pieces (it does under qemu): read to the blank line.
        let mut request = Vec::new();
        let mut buf = [0u8; 1024];
        while !request.ends_with(b"\r\n\r\n") && request.len() < 8192 {
            let n = s.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            request.extend_from_slice(&buf[..n]);
        }
        assert!(
            request.starts_with(b"GET /readyz HTTP/1.1\r\n"),
            "{}",
            String::from_utf8_lossy(&request)
        );
        let body = "{}";
        let _ = write!(
            s,
            "{status_line}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    });
    path
}

#[test]
fn readyz_probe_accepts_only_200() {
    let tmp = tempfile::tempdir().unwrap();
    assert!(ReadyzProbe::new(serve_once(tmp.path(), "HTTP/1.1 200 OK"))
        .check()
        .is_ok());
    let err = ReadyzProbe::new(serve_once(tmp.path(), "HTTP/1.1 503 Service Unavailable"))
        .check()
        .unwrap_err();
    assert!(err.contains("503"), "{err}");
    // Nothing listening.
    assert!(ReadyzProbe::new(tmp.path().join("none.sock"))
        .check()
        .is_err());
}

/// Counts how often the signer draws randomness (blinding draws some for every signature).
struct CountingRng(u64);

impl rsa::rand_core::RngCore for CountingRng {
    fn next_u32(&mut self) -> u32 {
        self.0 += 1;
        rsa::rand_core::OsRng.next_u32()
    }
    fn next_u64(&mut self) -> u64 {
        self.0 += 1;
        rsa::rand_core::OsRng.next_u64()
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        self.0 += 1;
        rsa::rand_core::OsRng.fill_bytes(dest);
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rsa::rand_core::Error> {
        self.0 += 1;
        rsa::rand_core::OsRng.try_fill_bytes(dest)
    }
}

impl rsa::rand_core::CryptoRng for CountingRng {}

#[test]
fn release_signatures_are_blinded() {
    let data = artifact_bytes("1.0.0", "aarch64");
    let mut rng = CountingRng(0);
    let blinded = sign_bytes_with_rng(&data, release_key(), &mut rng);
    assert!(
        rng.0 > 0,
        "the private-key operation drew no randomness: it is not blinded"
    );
    let public = RsaPublicKey::from(release_key());
    verify_bytes(&data, &blinded, &public).unwrap();
    // PKCS#1 v1.5 is deterministic: blinding does not change the signature openssl would write.
    assert_eq!(blinded, sign_bytes(&data, release_key()));
}

#[test]
fn rollback_to_a_release_that_cannot_read_the_chunked_buffer_is_refused() {
    let mut env = Env::with_installed("1.0.0");
    // 1.0.0 as released before chunked buffers: its manifest lists no buffer format.
    let manifest_path = env.root.join("1.0.0").join(MANIFEST_NAME);
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    assert!(m
        .as_object_mut()
        .unwrap()
        .remove("buffer_formats")
        .is_some());
    std::fs::write(&manifest_path, serde_json::to_vec(&m).unwrap()).unwrap();
    let buffer = env._tmp.path().join("buffer");
    env.opts.buffer_path = Some(buffer.clone());
    std::fs::write(crate::buffer::format_marker_path(&buffer), "chunks-1\n").unwrap();

    env.offer("1.1.0");
    env.world.borrow_mut().bad.push("1.1.0".into());
    match env.run().unwrap_err() {
        UpdateError::RollbackFailed { rollback, .. } => {
            assert!(rollback.contains("chunks-1"), "{rollback}");
            assert!(
                rollback.contains("refusing to switch to 1.0.0"),
                "{rollback}"
            );
        }
        other => panic!("{other}"),
    }
    // Kept on the release that reads every buffered swipe.
    env.assert_current_runnable("1.1.0");
    assert!(!env.root.join(PENDING).exists());
}
