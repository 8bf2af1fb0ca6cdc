//! Signed field updates of the agent binary (`badge-agent update`), contract in `docs/updates.md`.
//!
//! Run by `badge-agent-update.service` (oneshot, started by a timer with a randomised delay):
//!
//! 1. **Recover** from an interrupted earlier run ([`recover`]): remove half-unpacked directories and
//!    unfinished links, finish or undo a switch whose health gate never decided, and make sure
//!    `current` points at a complete, runnable version.
//! 2. **Pick** an artifact: an explicit `badge-agent-<ver>.tar`, or from a spool directory
//!    (`/var/lib/badge-agent-update/incoming`) every `badge-agent-<ver>.tar` newer than the
//!    installed version, newest first. Each needs a detached `<artifact>.sig`.
//! 3. **Verify** the signature against the release public key installed with the package
//!    ([`DEFAULT_PUBLIC_KEY`], refused unless only root can write it) *before* interpreting a
//!    single byte of the artifact, and parse the tar from the very bytes that were verified.
//!    Files are opened without following links and read up to a limit. In a spool, a candidate
//!    that fails (bad signature, malformed, wrong architecture, not a regular file) is moved to
//!    `<spool>/rejected/`, logged and reported, and the next older one is tried: one bad upload
//!    never blocks later releases.
//! 4. **Refuse downgrades**: the manifest's semantic version must be newer than the installed
//!    `current` one (precedence order, build metadata ignored). An equal version is refused unless
//!    `force_reinstall`; an older one always.
//! 5. **Unpack** to `<root>/.staging-<ver>/`, fsync every file and directory, rename to
//!    `<root>/<ver>/` (see [`layout`] for the tree), write the `update-pending.json` marker.
//! 6. **Switch** `previous` to the old version and `current` to the new one, each by creating
//!    `<link>.new` and `rename(2)`-ing it over the link (atomic).
//! 7. **Restart** `badge-agent.service` through [`ServiceManager`] and run the **health gate**: the
//!    unit must be active and [`HealthProbe`] (`GET /readyz` → 200) must pass `healthy_checks` times
//!    in a row within `health_deadline`. Otherwise `current` goes back to the old version, which is
//!    restarted, and the update reports [`UpdateError::RolledBack`]. The failed version is listed
//!    in `<root>/rejected-versions` and skipped by later timer runs (until `force_reinstall`).
//! 8. **Prune** to `keep_versions` (3) version directories, never removing `current`/`previous`.
//!
//! # Crypto choice
//!
//! RSASSA-PKCS1-v1_5 with SHA-256 via the `rsa` crate: the agent already carries that stack for
//! Snowflake's RS256 key-pair JWTs, so updates add no second crypto library, and the signature
//! format is what `openssl dgst -sha256 -sign` writes, so release scripts can use stock openssl.
//! PKCS#1 v1.5 signatures have no practical weakness when verified with a strict decoder (as
//! `rsa` does); PSS would buy nothing here. RUSTSEC-2023-0071 (Marvin, a timing side channel in
//! the `rsa` crate's private-key operation) applies to *signing*: [`sign_artifact`] therefore
//! blinds every signature with fresh OS randomness ([`sign_bytes_with_rng`]), which hides the
//! key-dependent timing the advisory describes; the output is unchanged (PKCS#1 v1.5 is
//! deterministic). The gateway itself only ever verifies with a public key. Still, sign on a
//! release machine that does not answer attacker-timed requests.
//!
//! # The buffer is never touched
//!
//! An update or rollback only changes files under the install root (`/usr/lib/badge-agent`). It never
//! opens, migrates or rewrites the sled buffer in `/var/lib/badge-agent`; the buffer's on-disk format
//! is versioned by its owner, and adjacent agent versions must read it in both directions so that a
//! rollback is always safe (`docs/updates.md`).
//!
//! # Release engineering
//!
//! ```text
//! cargo build --release --target aarch64-unknown-linux-gnu -p badge-agent
//! mkdir dist && cp target/aarch64-unknown-linux-gnu/release/badge-agent dist/
//! badge-agent update pack --dir dist --version 1.4.0 --arch aarch64 --out badge-agent-1.4.0.tar
//! badge-agent update sign --key release-private.pem badge-agent-1.4.0.tar   # writes .tar.sig
//! #   or: openssl dgst -sha256 -sign release-private.pem -out badge-agent-1.4.0.tar.sig badge-agent-1.4.0.tar
//! ```
//!
//! (`pack`/`sign` are [`pack_dir`] and [`sign_artifact`]; the CLI wiring lives in `cli`.)
//! Concurrency: the updater runs only from its oneshot units (the update and its `OnFailure=`
//! recovery, which `Conflicts=` with it); systemd never starts them at once, so no lock file is
//! taken. A manual run beside them is the operator's responsibility.

mod artifact;
pub mod layout;
mod system;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use semver::Version;

pub use artifact::{
    load_private_key, load_public_key, pack, pack_dir, parse, read_verified, sha256_hex,
    sign_artifact, sign_bytes, sign_bytes_with_rng, signature_path, verify_bytes, Artifact,
    FileEntry, Manifest, FORMAT, MANIFEST_NAME, MAX_ARTIFACT_BYTES, MAX_SIGNATURE_BYTES,
    MIN_KEY_BITS,
};
pub use system::{effective_uid, ReadyzProbe, Systemctl};

/// Subdirectory of the spool that artifacts failing verification are moved into.
pub const REJECTED_DIR: &str = "rejected";

use layout::{Pending, CURRENT, PREVIOUS, STAGING_PREFIX};

/// Name of the agent binary inside every release.
pub const BIN_NAME: &str = "badge-agent";
/// Where versions are installed.
pub const DEFAULT_INSTALL_ROOT: &str = "/usr/lib/badge-agent";
/// Release public key shipped with the package.
pub const DEFAULT_PUBLIC_KEY: &str = "/usr/share/badge-agent/release-key.pub.pem";
/// Spool directory the update unit reads artifacts from.
pub const DEFAULT_SOURCE: &str = "/var/lib/badge-agent-update/incoming";
/// The agent's unit.
pub const DEFAULT_UNIT: &str = "badge-agent.service";

/// What `badge-agent update` should do.
#[derive(Debug, Clone)]
pub struct UpdateOptions {
    /// An artifact file (`…/badge-agent-1.4.0.tar`) or a directory holding such files.
    pub source: PathBuf,
    /// PEM public key the signature must verify against.
    pub public_key: PathBuf,
    /// Install root (`/usr/lib/badge-agent`; a temp dir in tests).
    pub install_root: PathBuf,
    /// Unit to restart and watch.
    pub unit: String,
    /// Version of the running binary; compared against when no `current` link exists yet.
    pub running_version: Version,
    /// Reinstall an artifact whose version equals the installed one (never allows older).
    pub force_reinstall: bool,
    /// How long the new version gets to become active and healthy.
    pub health_deadline: Duration,
    /// Pause between health checks.
    pub health_poll: Duration,
    /// Consecutive passing checks required (catches a process that crashes right after READY).
    pub healthy_checks: u32,
    /// Version directories kept on disk (including current and previous).
    pub keep_versions: usize,
    /// The agent's buffer (`[buffer] path`): a rollback or repair never switches to a version
    /// that cannot read the format recorded beside it. `None` skips that check.
    pub buffer_path: Option<PathBuf>,
}

impl UpdateOptions {
    /// Production defaults for `source`.
    pub fn new(source: impl Into<PathBuf>) -> Self {
        Self {
            source: source.into(),
            public_key: PathBuf::from(DEFAULT_PUBLIC_KEY),
            install_root: PathBuf::from(DEFAULT_INSTALL_ROOT),
            unit: DEFAULT_UNIT.to_string(),
            running_version: Version::parse(env!("CARGO_PKG_VERSION"))
                .unwrap_or_else(|_| Version::new(0, 0, 0)),
            force_reinstall: false,
            health_deadline: Duration::from_secs(90),
            health_poll: Duration::from_secs(1),
            healthy_checks: 3,
            keep_versions: 3,
            buffer_path: None,
        }
    }
}

impl Default for UpdateOptions {
    fn default() -> Self {
        Self::new(DEFAULT_SOURCE)
    }
}

/// Restarts and inspects the agent's unit (`systemctl` in production, a fake in tests).
pub trait ServiceManager {
    /// Restarts `unit`; for `Type=notify` this returns once the unit sent READY=1 or failed.
    fn restart(&mut self, unit: &str) -> Result<(), String>;
    /// Whether `unit` is active (running and, for notify units, ready).
    fn is_active(&mut self, unit: &str) -> Result<bool, String>;
}

/// Asks the running agent whether it is healthy (`GET /readyz` in production).
pub trait HealthProbe {
    /// `Ok` when healthy; otherwise a short reason for the log.
    fn check(&self) -> Result<(), String>;
}

/// Result of a successful `badge-agent update` run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateOutcome {
    /// A new version is installed, running and healthy.
    Updated {
        /// Version `current` pointed at before (None on a first install).
        from: Option<Version>,
        /// The version now running.
        to: Version,
        /// Its directory name under the install root.
        dir: String,
        /// Version directories removed by pruning.
        pruned: Vec<String>,
        /// What recovery did first.
        recovery: RecoveryReport,
        /// Newer spool artifacts that failed verification and were moved aside (`name: reason`).
        set_aside: Vec<String>,
    },
    /// Nothing newer was offered in the spool directory.
    UpToDate {
        /// The installed version.
        installed: Version,
        /// Newest signed-looking artifact found, if any.
        newest_offered: Option<Version>,
        /// What recovery did first.
        recovery: RecoveryReport,
        /// Spool artifacts that failed verification and were moved aside (`name: reason`).
        set_aside: Vec<String>,
    },
}

/// What [`recover`] found and repaired (empty when the tree was clean).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Human-readable actions, in order.
    pub actions: Vec<String>,
}

/// Failure points for crash (power-cut) simulation in tests: the run stops right there, leaving
/// the disk as a crash would.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailPoint {
    /// The new version directory is complete, nothing else changed.
    AfterUnpack,
    /// `update-pending.json` written and `current.new` created.
    AfterCurrentNew,
    /// `previous` switched, `current.new` not yet renamed over `current`.
    BeforeRename,
    /// `current` switched, service not yet restarted.
    AfterSwitch,
}

/// Why an update did not happen (or was undone).
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The release key could not be used.
    #[error("key {path}: {reason}")]
    Key {
        /// Key file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Signature missing the mark: the artifact is not from the release key or was altered.
    #[error("signature rejected: {0}")]
    BadSignature(String),
    /// The (signed) artifact is malformed or unsafe.
    #[error("artifact rejected: {0}")]
    BadArtifact(String),
    /// Built for another CPU architecture.
    #[error("artifact is for {artifact}, this gateway runs {running}")]
    WrongArch {
        /// `arch` in the manifest.
        artifact: String,
        /// `std::env::consts::ARCH` here.
        running: String,
    },
    /// Older than the installed version.
    #[error("refusing downgrade from {installed} to {offered}")]
    Downgrade {
        /// Installed version.
        installed: Version,
        /// Offered version.
        offered: Version,
    },
    /// This version already failed its health gate here (listed in `rejected-versions`); only
    /// `force_reinstall` tries it again.
    #[error(
        "{version} failed its health gate on this gateway before (use --force-reinstall to retry)"
    )]
    Rejected {
        /// The version.
        version: Version,
    },
    /// Same version as installed and `force_reinstall` not set.
    #[error("{version} is already installed (use --force-reinstall to reinstall it)")]
    SameVersion {
        /// The version.
        version: Version,
    },
    /// Every newer artifact in the spool failed verification; each was moved to
    /// `<spool>/rejected/` so the next run does not trip over it again.
    #[error("{} spool artifact(s) failed verification and were moved to {}: {}", .set_aside.len(), .dir.display(), .set_aside.join("; "))]
    AllSetAside {
        /// Where they went.
        dir: PathBuf,
        /// `name: reason` of each.
        set_aside: Vec<String>,
    },
    /// The install tree is not in a state this code created.
    #[error("install tree: {0}")]
    BadLayout(String),
    /// The new version failed its health gate; the old one runs again and is healthy.
    #[error(
        "{version} did not become ready and healthy ({reason}); rolled back to {rolled_back_to}"
    )]
    RolledBack {
        /// Version that failed.
        version: Version,
        /// Directory now current again.
        rolled_back_to: String,
        /// Why the gate failed.
        reason: String,
    },
    /// The new version failed and the rollback target is not healthy either (or there is none).
    #[error("{version} failed its health gate ({reason}) and rollback did not restore health: {rollback}")]
    RollbackFailed {
        /// Version that failed.
        version: Version,
        /// Why its gate failed.
        reason: String,
        /// Why the rollback did not help.
        rollback: String,
    },
    /// Switching to `version` would hide buffered swipes: it cannot read the buffer's format.
    #[error("refusing to switch to {version}: the buffer {path} holds `{format}` records and its manifest does not list that format (buffer_formats), so buffered swipes would never be sent; install a release that reads `{format}`")]
    BufferFormat {
        /// The version that was refused.
        version: Version,
        /// The buffer's format.
        format: String,
        /// The buffer.
        path: PathBuf,
    },
    /// A simulated crash (tests only).
    #[doc(hidden)]
    #[error("simulated crash at {0:?}")]
    Injected(FailPoint),
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> UpdateError + '_ {
    move |source| UpdateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Runs one update: recover, pick, verify, unpack, switch, restart, health-gate (rollback on
/// failure), prune. See the module docs for the exact order and its crash safety.
pub fn run_update(
    opts: &UpdateOptions,
    svc: &mut dyn ServiceManager,
    health: &dyn HealthProbe,
) -> Result<UpdateOutcome, UpdateError> {
    run_update_with(opts, svc, health, None)
}

fn crash_at(here: FailPoint, fail: Option<FailPoint>) -> Result<(), UpdateError> {
    if fail == Some(here) {
        Err(UpdateError::Injected(here))
    } else {
        Ok(())
    }
}

#[doc(hidden)]
/// [`run_update`] with a simulated crash at `fail` (tests).
pub fn run_update_with(
    opts: &UpdateOptions,
    svc: &mut dyn ServiceManager,
    health: &dyn HealthProbe,
    fail: Option<FailPoint>,
) -> Result<UpdateOutcome, UpdateError> {
    let root = opts.install_root.as_path();
    std::fs::create_dir_all(root).map_err(io_err(root))?;
    let recovery = recover(opts, svc, health)?;

    let installed = installed_version(opts)?;
    let rejected = layout::read_rejected(root)?;
    let (candidates, from_spool) =
        match select_artifacts(&opts.source, &installed, &rejected, opts.force_reinstall)? {
            Selection::Use(c, from_spool) => (c, from_spool),
            Selection::UpToDate(newest_offered) => {
                return Ok(UpdateOutcome::UpToDate {
                    installed,
                    newest_offered,
                    recovery,
                    set_aside: Vec::new(),
                })
            }
        };
    // A bad key is not the artifacts' fault: stop before judging (and moving) any of them.
    let key = load_public_key(&opts.public_key)?;
    let mut set_aside = Vec::new();
    let mut chosen = None;
    for path in candidates {
        match verify_candidate(&path, &key) {
            Ok(art) => {
                chosen = Some(art);
                break;
            }
            Err(err) if from_spool => {
                let name = path
                    .file_name()
                    .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
                let moved = set_aside_artifact(&opts.source, &path);
                tracing::warn!(artifact = %name, error = %err, moved_to = ?moved.as_ref().ok(), "release artifact failed verification; set aside, trying the next older one");
                set_aside.push(match moved {
                    Ok(_) => format!("{name}: {err}"),
                    Err(move_err) => format!("{name}: {err} (could not move it aside: {move_err})"),
                });
            }
            Err(err) => return Err(err),
        }
    }
    let Some(art) = chosen else {
        return Err(UpdateError::AllSetAside {
            dir: opts.source.join(REJECTED_DIR),
            set_aside,
        });
    };
    let offered = art.manifest.version.clone();
    match offered.cmp_precedence(&installed) {
        std::cmp::Ordering::Less => return Err(UpdateError::Downgrade { installed, offered }),
        std::cmp::Ordering::Equal if !opts.force_reinstall => {
            return Err(UpdateError::SameVersion { version: offered })
        }
        _ => {}
    }
    if !opts.force_reinstall && rejected.iter().any(|r| r.cmp_precedence(&offered).is_eq()) {
        return Err(UpdateError::Rejected { version: offered });
    }

    let from = layout::link_target(root, CURRENT)?;
    let from_version = match &from {
        Some(f) => layout::installed_manifest(&root.join(f))
            .ok()
            .map(|m| m.version),
        None => None,
    };
    let previous_before = layout::link_target(root, PREVIOUS)?;
    let referenced: Vec<String> = from.iter().chain(previous_before.iter()).cloned().collect();
    let dir = layout::unpack(root, &art, &referenced)?;
    crash_at(FailPoint::AfterUnpack, fail)?;

    let pending = Pending {
        from: from.clone(),
        to: dir.clone(),
        previous_before,
    };
    layout::write_pending(root, &pending)?;
    layout::switch_link(root, CURRENT, &dir, &mut || {
        crash_at(FailPoint::AfterCurrentNew, fail)?;
        if let Some(old) = &from {
            layout::switch_link(root, PREVIOUS, old, &mut || Ok(()))?;
        }
        crash_at(FailPoint::BeforeRename, fail)
    })?;
    crash_at(FailPoint::AfterSwitch, fail)?;

    confirm_or_roll_back(opts, svc, health, &pending, &offered)?;
    let pruned = layout::prune(root, opts.keep_versions)?;
    Ok(UpdateOutcome::Updated {
        from: from_version,
        to: offered,
        dir,
        pruned,
        recovery,
        set_aside,
    })
}

/// Everything that makes an artifact unusable on this gateway whatever is installed: signature,
/// structure, file name matching the signed version, architecture.
fn verify_candidate(path: &Path, key: &rsa::RsaPublicKey) -> Result<Artifact, UpdateError> {
    let art = read_verified(path, key)?;
    let offered = &art.manifest.version;
    if let Some(expected) = version_from_file_name(path) {
        if expected.cmp_precedence(offered).is_ne() {
            return Err(UpdateError::BadArtifact(format!(
                "{} contains version {offered}",
                path.display()
            )));
        }
    }
    if art.manifest.arch != std::env::consts::ARCH {
        return Err(UpdateError::WrongArch {
            artifact: art.manifest.arch.clone(),
            running: std::env::consts::ARCH.to_string(),
        });
    }
    Ok(art)
}

/// Moves a failed artifact and its signature into `<spool>/rejected/` (created 0700); returns
/// the new artifact path.
fn set_aside_artifact(spool: &Path, artifact: &Path) -> Result<PathBuf, UpdateError> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = spool.join(REJECTED_DIR);
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_err(&dir)(e)),
    }
    let name = artifact.file_name().ok_or_else(|| {
        UpdateError::BadArtifact(format!("{} has no file name", artifact.display()))
    })?;
    let target = dir.join(name);
    std::fs::rename(artifact, &target).map_err(io_err(artifact))?;
    let sig = signature_path(artifact);
    if sig.exists() || sig.symlink_metadata().is_ok() {
        std::fs::rename(&sig, signature_path(&target)).map_err(io_err(&sig))?;
    }
    layout::fsync_dir(&dir)?;
    layout::fsync_dir(spool)?;
    Ok(target)
}

/// Version of `current` (its manifest), or the running binary's when nothing is installed.
fn installed_version(opts: &UpdateOptions) -> Result<Version, UpdateError> {
    match layout::link_target(&opts.install_root, CURRENT)? {
        Some(dir) => Ok(layout::installed_manifest(&opts.install_root.join(dir))?.version),
        None => Ok(opts.running_version.clone()),
    }
}

enum Selection {
    /// Candidates, newest first, and whether they come from a spool directory.
    Use(Vec<PathBuf>, bool),
    UpToDate(Option<Version>),
}

/// `badge-agent-<ver>.tar` → `<ver>`.
fn version_from_file_name(path: &Path) -> Option<Version> {
    let name = path.file_name()?.to_str()?;
    let v = name.strip_prefix("badge-agent-")?.strip_suffix(".tar")?;
    Version::parse(v).ok()
}

/// An explicit file is always used (and judged after verification). In a spool directory every
/// `badge-agent-<ver>.tar` that has a `.sig`, was not rejected before and is newer than
/// `installed` (or equal with `force`) is a candidate, newest first: the names are only a hint,
/// each is verified in turn. Nothing newer there just means "up to date", since the timer sees
/// the same spool every run.
fn select_artifacts(
    source: &Path,
    installed: &Version,
    rejected: &[Version],
    force: bool,
) -> Result<Selection, UpdateError> {
    let meta = std::fs::metadata(source).map_err(io_err(source))?;
    if !meta.is_dir() {
        return Ok(Selection::Use(vec![source.to_path_buf()], false));
    }
    let mut offered: Vec<(Version, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(source).map_err(io_err(source))? {
        let path = entry.map_err(io_err(source))?.path();
        let Some(v) = version_from_file_name(&path) else {
            continue;
        };
        if signature_path(&path).symlink_metadata().is_err()
            || (!force && rejected.iter().any(|r| r.cmp_precedence(&v).is_eq()))
        {
            continue;
        }
        offered.push((v, path));
    }
    offered.sort_by(|a, b| b.0.cmp_precedence(&a.0).then_with(|| a.1.cmp(&b.1)));
    let newest = offered.first().map(|(v, _)| v.clone());
    let candidates: Vec<PathBuf> = offered
        .into_iter()
        .filter(|(v, _)| match v.cmp_precedence(installed) {
            std::cmp::Ordering::Greater => true,
            std::cmp::Ordering::Equal => force,
            std::cmp::Ordering::Less => false,
        })
        .map(|(_, p)| p)
        .collect();
    Ok(if candidates.is_empty() {
        Selection::UpToDate(newest)
    } else {
        Selection::Use(candidates, true)
    })
}

/// Waits until the unit is active and the probe passes `healthy_checks` times in a row.
fn wait_healthy(
    opts: &UpdateOptions,
    svc: &mut dyn ServiceManager,
    health: &dyn HealthProbe,
) -> Result<(), String> {
    let start = Instant::now();
    let mut streak = 0;
    let mut last = String::from("no check completed");
    loop {
        let result = match svc.is_active(&opts.unit) {
            Ok(true) => health.check(),
            Ok(false) => Err(format!("{} is not active", opts.unit)),
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {
                streak += 1;
                if streak >= opts.healthy_checks.max(1) {
                    return Ok(());
                }
            }
            Err(e) => {
                streak = 0;
                last = e;
            }
        }
        if start.elapsed() >= opts.health_deadline {
            return Err(format!(
                "not ready and healthy within {:?}: {last}",
                opts.health_deadline
            ));
        }
        std::thread::sleep(opts.health_poll);
    }
}

fn restart_and_wait(
    opts: &UpdateOptions,
    svc: &mut dyn ServiceManager,
    health: &dyn HealthProbe,
) -> Result<(), String> {
    svc.restart(&opts.unit)
        .map_err(|e| format!("restart failed: {e}"))?;
    wait_healthy(opts, svc, health)
}

/// Restarts onto `pending.to` and runs the health gate; on failure switches back to
/// `pending.from`, restores `previous`, discards the failed directory and restarts the old version.
fn confirm_or_roll_back(
    opts: &UpdateOptions,
    svc: &mut dyn ServiceManager,
    health: &dyn HealthProbe,
    pending: &Pending,
    version: &Version,
) -> Result<(), UpdateError> {
    let root = opts.install_root.as_path();
    let reason = match restart_and_wait(opts, svc, health) {
        Ok(()) => return layout::clear_pending(root),
        Err(reason) => reason,
    };
    // Remembered first, so a crash during the rollback cannot lead to retrying it every run.
    layout::add_rejected(root, version)?;
    let Some(from) = &pending.from else {
        // First install: nothing to go back to. Keep it (it is all there is) and say so.
        layout::clear_pending(root)?;
        return Err(UpdateError::RollbackFailed {
            version: version.clone(),
            reason,
            rollback: "no earlier version is installed".into(),
        });
    };
    if let Err(refused) = can_read_buffer(opts, from) {
        // Going back would strand swipes in a format the old release skips: keep the new one.
        layout::clear_pending(root)?;
        return Err(UpdateError::RollbackFailed {
            version: version.clone(),
            reason,
            rollback: refused.to_string(),
        });
    }
    // Same order as a forward switch; a crash in here is finished by `recover` (current == from).
    layout::switch_link(root, CURRENT, from, &mut || Ok(()))?;
    restore_previous(root, pending)?;
    discard_dir(root, &pending.to)?;
    layout::clear_pending(root)?;
    match restart_and_wait(opts, svc, health) {
        Ok(()) => Err(UpdateError::RolledBack {
            version: version.clone(),
            rolled_back_to: from.clone(),
            reason,
        }),
        Err(rollback) => Err(UpdateError::RollbackFailed {
            version: version.clone(),
            reason,
            rollback,
        }),
    }
}

/// Refuses a version directory whose manifest does not list the format the agent recorded
/// beside its buffer (see [`crate::buffer::format_marker_path`]). No marker (a buffer only ever
/// written one key per swipe, which every release reads) or no buffer path: allowed.
fn can_read_buffer(opts: &UpdateOptions, dir: &str) -> Result<(), UpdateError> {
    let Some(buffer) = &opts.buffer_path else {
        return Ok(());
    };
    let marker = crate::buffer::format_marker_path(buffer);
    let format = match std::fs::read_to_string(&marker) {
        Ok(s) => s.trim().to_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(&marker)(e)),
    };
    let m = layout::installed_manifest(&opts.install_root.join(dir))?;
    if format.is_empty() || m.buffer_formats.contains(&format) {
        return Ok(());
    }
    Err(UpdateError::BufferFormat {
        version: m.version,
        format,
        path: buffer.clone(),
    })
}

fn restore_previous(root: &Path, pending: &Pending) -> Result<(), UpdateError> {
    match &pending.previous_before {
        Some(p) => {
            if layout::link_target(root, PREVIOUS)?.as_deref() != Some(p.as_str()) {
                layout::switch_link(root, PREVIOUS, p, &mut || Ok(()))?;
            }
            Ok(())
        }
        None => {
            layout::remove_if_exists(&root.join(PREVIOUS))?;
            layout::fsync_dir(root)
        }
    }
}

/// Hides a version directory under a staging name first (atomic), then deletes it, so a crash
/// mid-delete never leaves a half-deleted directory that looks like an installed version.
fn discard_dir(root: &Path, name: &str) -> Result<(), UpdateError> {
    let path = root.join(name);
    if !path.is_dir()
        || [CURRENT, PREVIOUS]
            .iter()
            .any(|l| layout::link_target(root, l).ok().flatten().as_deref() == Some(name))
    {
        return Ok(());
    }
    let hidden = root.join(format!("{STAGING_PREFIX}discard-{name}"));
    std::fs::rename(&path, &hidden).map_err(io_err(&path))?;
    layout::fsync_dir(root)?;
    std::fs::remove_dir_all(&hidden).map_err(io_err(&hidden))
}

/// Repairs the install tree after an interrupted run; called at the start of every
/// [`run_update`], and usable on its own (e.g. `badge-agent update --recover-only`).
///
/// * removes `.staging-*` directories and `current.new` / `previous.new` links;
/// * if `update-pending.json` exists and `current` already points at the new version, the switch
///   happened but its health gate never decided: restart and gate now, rolling back on failure
///   (then this returns [`UpdateError::RolledBack`]); if `current` still points at the old
///   version, the switch never happened: `previous` is restored;
/// * if `current` is missing, dangling or points at an incomplete directory, it is switched to
///   `previous` or the newest runnable version, and the unit restarted.
pub fn recover(
    opts: &UpdateOptions,
    svc: &mut dyn ServiceManager,
    health: &dyn HealthProbe,
) -> Result<RecoveryReport, UpdateError> {
    let root = opts.install_root.as_path();
    let mut actions = Vec::new();
    if !root.is_dir() {
        return Ok(RecoveryReport { actions });
    }
    layout::remove_leftovers(root, &mut actions)?;

    if let Some(p) = layout::read_pending(root)? {
        let current = layout::link_target(root, CURRENT)?;
        let target_ok = layout::check_runnable(&root.join(&p.to));
        if let (true, Ok(m)) = (current.as_deref() == Some(p.to.as_str()), &target_ok) {
            let version = m.version.clone();
            actions.push(format!(
                "update to {} was interrupted before its health gate; running the gate now",
                p.to
            ));
            confirm_or_roll_back(opts, svc, health, &p, &version)?;
            actions.push(format!("{} confirmed healthy", p.to));
        } else {
            restore_previous(root, &p)?;
            layout::clear_pending(root)?;
            actions.push(format!(
                "update to {} was interrupted before the switch; kept {}",
                p.to,
                current.as_deref().unwrap_or("nothing")
            ));
        }
    }

    let current = layout::link_target(root, CURRENT)?;
    let healthy_current = current
        .as_ref()
        .is_some_and(|c| layout::check_runnable(&root.join(c)).is_ok());
    if current.is_some() && !healthy_current {
        let mut candidates: Vec<String> =
            layout::link_target(root, PREVIOUS)?.into_iter().collect();
        candidates.extend(
            layout::installed_versions(root)?
                .into_iter()
                .rev()
                .map(|(n, _)| n),
        );
        if let Some(good) = candidates.into_iter().find(|c| {
            Some(c) != current.as_ref()
                && layout::check_runnable(&root.join(c)).is_ok()
                && can_read_buffer(opts, c).is_ok()
        }) {
            layout::switch_link(root, CURRENT, &good, &mut || Ok(()))?;
            actions.push(format!(
                "current pointed at broken {}; switched to {good}",
                current.as_deref().unwrap_or("?")
            ));
            if let Err(e) = svc.restart(&opts.unit) {
                actions.push(format!("restart after repair failed: {e}"));
            }
        } else {
            actions.push("current is broken and no runnable version is installed".into());
        }
    }
    Ok(RecoveryReport { actions })
}
