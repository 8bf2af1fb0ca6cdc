//! Is this agent a freshly installed version that the updater may still roll back?
//!
//! The updater writes `<install root>/update-pending.json` (naming the version directory it
//! switched to) before it restarts the agent, and removes it only once the health gate passed.
//! While that marker names the directory this binary runs from, a rollback to the previous
//! release can still happen, so the buffer keeps writing the format that release reads.
//!
//! A rollback switches `current` back *before* it removes the marker and only then restarts the
//! old release, so "`current` points elsewhere" counts as probation too: the dying new agent
//! never writes chunks in that window.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Where to look for the updater's marker.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Probation {
    /// Never on probation (tests, benches, an agent not run from an update layout).
    #[default]
    Never,
    /// Always on probation (tests of the rollback-compatible write path).
    Always,
    /// On probation while `pending_file` exists and names `version_dir` as its target, or while
    /// the `current` link beside it points at another version directory.
    Marker {
        /// `<install root>/update-pending.json`.
        pending_file: PathBuf,
        /// Name of the version directory this binary runs from (`1.5.0`).
        version_dir: String,
    },
}

/// The part of the updater's marker this check reads (its full schema lives in `update::layout`).
#[derive(Deserialize)]
struct PendingTarget {
    to: String,
}

impl Probation {
    /// Derived from the running binary's real path: `<root>/<version dir>/badge-agent` →
    /// marker `<root>/update-pending.json` (`current_exe` resolves the `current` symlink).
    pub fn from_current_exe() -> Self {
        match std::env::current_exe() {
            Ok(exe) => Self::for_binary(&exe),
            Err(_) => Probation::Never,
        }
    }

    /// [`Probation::from_current_exe`] for a given binary path.
    pub fn for_binary(exe: &Path) -> Self {
        let Some(dir) = exe.parent() else {
            return Probation::Never;
        };
        let (Some(root), Some(name)) = (dir.parent(), dir.file_name()) else {
            return Probation::Never;
        };
        Probation::Marker {
            pending_file: root.join(crate::update::layout::PENDING),
            version_dir: name.to_string_lossy().into_owned(),
        }
    }

    /// Checks the marker now.
    pub fn active(&self) -> bool {
        match self {
            Probation::Never => false,
            Probation::Always => true,
            Probation::Marker {
                pending_file,
                version_dir,
            } => {
                let marked = match std::fs::read(pending_file) {
                    Ok(bytes) => marker_names(&bytes, version_dir),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
                    // Unreadable for another reason: an update may be in flight; stay compatible.
                    Err(_) => true,
                };
                let current = pending_file
                    .parent()
                    .map(|root| root.join(crate::update::layout::CURRENT))
                    .and_then(|link| std::fs::read_link(link).ok());
                // No `current` link: not an update layout (a development run).
                let moved_away = current.is_some_and(|t| t.as_os_str() != version_dir.as_str());
                marked || moved_away
            }
        }
    }
}

/// Does a marker's content put `version_dir` on probation? An unparseable marker does (a torn
/// write means an update is in flight; staying rollback-compatible costs only disk space).
pub fn marker_names(bytes: &[u8], version_dir: &str) -> bool {
    match serde_json::from_slice::<PendingTarget>(bytes) {
        Ok(p) => p.to == version_dir,
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn marker_table() {
        let cases: &[(&[u8], &str, bool)] = &[
            (
                br#"{"from":"1.0.0","to":"2.0.0","previous_before":null}"#,
                "2.0.0",
                true,
            ),
            (
                br#"{"from":"1.0.0","to":"2.1.0","previous_before":null}"#,
                "2.0.0",
                false,
            ),
            (br#"{"from":null,"to":"2.0.0"}"#, "2.0.0", true),
            (b"{\"from\":\"1.0", "2.0.0", true),
            (b"", "2.0.0", true),
        ];
        for (bytes, dir, want) in cases {
            assert_eq!(
                marker_names(bytes, dir),
                *want,
                "{}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[test]
    fn marker_file_is_found_beside_the_version_directory() {
        let root = tempfile::tempdir().unwrap();
        let p = Probation::for_binary(&root.path().join("2.0.0").join("badge-agent"));
        assert!(!p.active(), "no marker, no probation");
        std::fs::write(
            root.path().join("update-pending.json"),
            br#"{"from":"1.0.0","to":"2.0.0","previous_before":null}"#,
        )
        .unwrap();
        assert!(p.active());
        std::fs::write(
            root.path().join("update-pending.json"),
            br#"{"from":"2.0.0","to":"2.1.0","previous_before":null}"#,
        )
        .unwrap();
        assert!(!p.active(), "the marker names another version");
        std::fs::remove_file(root.path().join("update-pending.json")).unwrap();
        std::os::unix::fs::symlink("2.0.0", root.path().join("current")).unwrap();
        assert!(!p.active(), "confirmed: current is this version, no marker");
        std::fs::remove_file(root.path().join("current")).unwrap();
        std::os::unix::fs::symlink("1.0.0", root.path().join("current")).unwrap();
        assert!(p.active(), "rolled back: current points at the old release");
        assert!(!Probation::Never.active());
        assert!(Probation::Always.active());
    }
}
