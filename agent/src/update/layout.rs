//! The install tree and its crash-safe operations.
//!
//! ```text
//! <root>/                       /usr/lib/badge-agent in production
//!   1.4.0/{manifest.json, badge-agent, …}
//!   1.5.0/{…}
//!   current  -> 1.5.0           what badge-agent.service runs
//!   previous -> 1.4.0           rollback target
//!   update-pending.json         only between "about to switch" and "health gate decided"
//!   .staging-1.6.0/             only while unpacking; never referenced by a link
//!   current.new, previous.new   only for an instant: created, fsynced, renamed over the real link
//! ```
//!
//! Invariant: `current` only ever points at a directory that was completely written and fsynced
//! under its final name, and every change of `current` is a single `rename(2)`. A power cut at any
//! point therefore leaves `current` pointing at a complete version; leftovers are cleaned by
//! [`super::recover`] on the next run.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use semver::Version;
use serde::{Deserialize, Serialize};

use super::artifact::{self, Artifact, Manifest, MANIFEST_NAME};
use super::{io_err, UpdateError, BIN_NAME};

/// Link to the running version.
pub const CURRENT: &str = "current";
/// Link to the version before it (rollback target).
pub const PREVIOUS: &str = "previous";
/// Marker of a switch whose health gate has not decided yet.
pub const PENDING: &str = "update-pending.json";
/// Versions that failed their health gate, one per line; skipped in the spool from then on.
pub const REJECTED: &str = "rejected-versions";
/// Prefix of unpack directories.
pub const STAGING_PREFIX: &str = ".staging-";
/// Suffix of links being prepared.
pub const NEW_SUFFIX: &str = ".new";

/// Contents of [`PENDING`]: enough to finish or undo an interrupted switch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// Directory `current` pointed at before the switch (None on a first install).
    pub from: Option<String>,
    /// Directory `current` is being switched to.
    pub to: String,
    /// Directory `previous` pointed at before the switch.
    pub previous_before: Option<String>,
}

pub(crate) fn fsync_dir(dir: &Path) -> Result<(), UpdateError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Target directory name of link `name` under `root`, if the link exists and is a plain name.
pub(crate) fn link_target(root: &Path, name: &str) -> Result<Option<String>, UpdateError> {
    let link = root.join(name);
    match fs::read_link(&link) {
        Ok(t) => {
            let t = t.to_string_lossy().into_owned();
            // Only links we made: a bare directory name inside root.
            if t.is_empty() || t.contains('/') || t.starts_with('.') {
                return Err(UpdateError::BadLayout(format!(
                    "{} points at `{t}`, expected a version directory name",
                    link.display()
                )));
            }
            Ok(Some(t))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(&link)(e)),
    }
}

/// Creates `<name>.new -> target`, fsyncs `root`, then renames it over `<name>` (atomic switch).
/// `before_rename` runs between the two steps (used to inject failures in tests).
pub(crate) fn switch_link(
    root: &Path,
    name: &str,
    target: &str,
    before_rename: &mut dyn FnMut() -> Result<(), UpdateError>,
) -> Result<(), UpdateError> {
    let tmp = root.join(format!("{name}{NEW_SUFFIX}"));
    remove_if_exists(&tmp)?;
    std::os::unix::fs::symlink(target, &tmp).map_err(io_err(&tmp))?;
    fsync_dir(root)?;
    before_rename()?;
    let link = root.join(name);
    fs::rename(&tmp, &link).map_err(io_err(&link))?;
    fsync_dir(root)
}

/// Removes a file or symlink if present (never follows links, never removes directories).
pub(crate) fn remove_if_exists(path: &Path) -> Result<(), UpdateError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(path)(e)),
    }
}

pub(crate) fn read_pending(root: &Path) -> Result<Option<Pending>, UpdateError> {
    let path = root.join(PENDING);
    match fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| UpdateError::BadLayout(format!("{} is unreadable: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(&path)(e)),
    }
}

pub(crate) fn write_pending(root: &Path, p: &Pending) -> Result<(), UpdateError> {
    let bytes = serde_json::to_vec(p)
        .map_err(|e| UpdateError::BadLayout(format!("cannot encode pending marker: {e}")))?;
    write_file_synced(&root.join(PENDING), &bytes, 0o644)?;
    fsync_dir(root)
}

pub(crate) fn clear_pending(root: &Path) -> Result<(), UpdateError> {
    remove_if_exists(&root.join(PENDING))?;
    fsync_dir(root)
}

/// Versions recorded in [`REJECTED`] (unparseable lines are ignored).
pub(crate) fn read_rejected(root: &Path) -> Result<Vec<Version>, UpdateError> {
    let path = root.join(REJECTED);
    match fs::read_to_string(&path) {
        Ok(s) => Ok(s
            .lines()
            .filter_map(|l| Version::parse(l.trim()).ok())
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io_err(&path)(e)),
    }
}

/// Adds `v` to [`REJECTED`] (write to a temp file, fsync, rename).
pub(crate) fn add_rejected(root: &Path, v: &Version) -> Result<(), UpdateError> {
    let mut list = read_rejected(root)?;
    if list.iter().any(|r| r == v) {
        return Ok(());
    }
    list.push(v.clone());
    let text: String = list.iter().map(|v| format!("{v}\n")).collect();
    let tmp = root.join(format!("{REJECTED}{NEW_SUFFIX}"));
    write_file_synced(&tmp, text.as_bytes(), 0o644)?;
    let path = root.join(REJECTED);
    fs::rename(&tmp, &path).map_err(io_err(&path))?;
    fsync_dir(root)
}

fn write_file_synced(path: &Path, data: &[u8], mode: u32) -> Result<(), UpdateError> {
    let mut f = File::create(path).map_err(io_err(path))?;
    f.write_all(data).map_err(io_err(path))?;
    f.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

/// Reads and checks the manifest of an installed version directory.
pub(crate) fn installed_manifest(dir: &Path) -> Result<Manifest, UpdateError> {
    let path = dir.join(MANIFEST_NAME);
    let bytes = fs::read(&path).map_err(io_err(&path))?;
    let m: Manifest = serde_json::from_slice(&bytes)
        .map_err(|e| UpdateError::BadLayout(format!("{} is invalid: {e}", path.display())))?;
    artifact::check_manifest(&m)?;
    Ok(m)
}

/// A version directory is runnable when its manifest is valid and every listed file is present
/// with the recorded digest (so a torn or tampered install is never switched to).
pub(crate) fn check_runnable(dir: &Path) -> Result<Manifest, UpdateError> {
    let m = installed_manifest(dir)?;
    for f in &m.files {
        let path = dir.join(&f.path);
        let data = fs::read(&path).map_err(io_err(&path))?;
        if artifact::sha256_hex(&data) != f.sha256 {
            return Err(UpdateError::BadLayout(format!(
                "{} does not match its manifest digest",
                path.display()
            )));
        }
    }
    let bin = dir.join(BIN_NAME);
    let mode = fs::metadata(&bin)
        .map_err(io_err(&bin))?
        .permissions()
        .mode();
    if mode & 0o100 == 0 {
        return Err(UpdateError::BadLayout(format!(
            "{} is not executable",
            bin.display()
        )));
    }
    Ok(m)
}

/// Installed version directories `(name, version)`: not hidden, with a readable manifest.
pub(crate) fn installed_versions(root: &Path) -> Result<Vec<(String, Version)>, UpdateError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(root).map_err(io_err(root))? {
        let entry = entry.map_err(io_err(root))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !entry.file_type().map_err(io_err(root))?.is_dir() {
            continue; // links, markers, staging dirs
        }
        if let Ok(m) = installed_manifest(&entry.path()) {
            out.push((name, m.version));
        }
    }
    out.sort_by(|a, b| a.1.cmp_precedence(&b.1).then_with(|| a.0.cmp(&b.0)));
    Ok(out)
}

/// Unpacks a verified artifact into `.staging-<version>`, fsyncs every file and directory, then
/// renames it to its final name (`<version>`, or `<version>_<n>` if that name is referenced by a
/// link, e.g. on a forced reinstall). Returns the final directory name.
pub(crate) fn unpack(
    root: &Path,
    art: &Artifact,
    referenced: &[String],
) -> Result<String, UpdateError> {
    let version = art.manifest.version.to_string();
    let staging = root.join(format!("{STAGING_PREFIX}{version}"));
    if staging.exists() {
        fs::remove_dir_all(&staging).map_err(io_err(&staging))?;
    }
    fs::create_dir(&staging).map_err(io_err(&staging))?;
    let mut dirs = vec![staging.clone()];
    for (rel, data, mode) in &art.files {
        let path = staging.join(rel);
        if let Some(parent) = path.parent() {
            if !parent.exists() {
                fs::create_dir_all(parent).map_err(io_err(parent))?;
                dirs.push(parent.to_path_buf());
            }
        }
        write_file_synced(&path, data, *mode)?;
    }
    let manifest = serde_json::to_vec_pretty(&art.manifest)
        .map_err(|e| UpdateError::BadLayout(format!("cannot encode manifest: {e}")))?;
    write_file_synced(&staging.join(MANIFEST_NAME), &manifest, 0o644)?;
    fs::set_permissions(&staging, fs::Permissions::from_mode(0o755)).map_err(io_err(&staging))?;
    // Deepest first so each directory entry is durable before its parent's.
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for d in &dirs {
        fsync_dir(d)?;
    }

    let name = free_name(root, &version, referenced)?;
    let target = root.join(&name);
    fs::rename(&staging, &target).map_err(io_err(&target))?;
    fsync_dir(root)?;
    Ok(name)
}

/// `<version>` if it is not referenced by `current`/`previous` (an unreferenced leftover of that
/// name, e.g. from a failed attempt, is removed); otherwise the first free `<version>_<n>`.
fn free_name(root: &Path, version: &str, referenced: &[String]) -> Result<String, UpdateError> {
    for n in 0u32.. {
        let name = if n == 0 {
            version.to_string()
        } else {
            format!("{version}_{n}")
        };
        if referenced.contains(&name) {
            continue;
        }
        let path = root.join(&name);
        match fs::symlink_metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(name),
            Err(e) => return Err(io_err(&path)(e)),
            Ok(m) if m.is_dir() => {
                fs::remove_dir_all(&path).map_err(io_err(&path))?;
                return Ok(name);
            }
            Ok(_) => continue, // some file we did not make: leave it alone
        }
    }
    Err(UpdateError::BadLayout(
        "no free version directory name".into(),
    ))
}

/// Removes leftovers of an interrupted run: staging directories and `*.new` links.
pub(crate) fn remove_leftovers(root: &Path, actions: &mut Vec<String>) -> Result<(), UpdateError> {
    for entry in fs::read_dir(root).map_err(io_err(root))? {
        let entry = entry.map_err(io_err(root))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path: PathBuf = entry.path();
        if name.starts_with(STAGING_PREFIX) {
            fs::remove_dir_all(&path).map_err(io_err(&path))?;
            actions.push(format!("removed partial unpack {name}"));
        } else if [CURRENT, PREVIOUS, REJECTED]
            .iter()
            .any(|l| name == format!("{l}{NEW_SUFFIX}"))
        {
            remove_if_exists(&path)?;
            actions.push(format!("removed unfinished link {name}"));
        }
    }
    fsync_dir(root)
}

/// Keeps at most `keep` version directories: always those `current` and `previous` point at,
/// then the newest others. Returns the names removed.
pub(crate) fn prune(root: &Path, keep: usize) -> Result<Vec<String>, UpdateError> {
    let referenced: Vec<String> = [CURRENT, PREVIOUS]
        .iter()
        .filter_map(|l| link_target(root, l).ok().flatten())
        .collect();
    let installed = installed_versions(root)?;
    let mut kept = referenced
        .iter()
        .filter(|r| installed.iter().any(|(n, _)| n == *r))
        .count();
    let mut removed = Vec::new();
    // Newest first.
    for (name, _) in installed.iter().rev() {
        if referenced.contains(name) {
            continue;
        }
        if kept < keep {
            kept += 1;
            continue;
        }
        let path = root.join(name);
        fs::remove_dir_all(&path).map_err(io_err(&path))?;
        removed.push(name.clone());
    }
    if !removed.is_empty() {
        fsync_dir(root)?;
    }
    Ok(removed)
}
