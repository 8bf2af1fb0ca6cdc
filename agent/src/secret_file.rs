//! Files that hold a secret the agent reads at start: the Snowflake private key and the OSDP
//! reader keys. One rule for all of them, checked on the opened descriptor so that the file
//! checked is the file read (a symlink may point at it; a swap after the check cannot): a regular
//! file, owned by the agent's user or root, that group and others can neither read nor write, and
//! small enough to be a key.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The largest secret file read: keys are a few KiB; anything larger is the wrong file.
const MAX_LEN: u64 = 64 * 1024;

/// Why a secret file was refused. The message names the fix; never the secret.
#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    /// It could not be opened or read.
    #[error("cannot read: {0}")]
    Io(#[from] std::io::Error),
    /// A device, FIFO or directory: reading it could block or never end.
    #[error("not a regular file")]
    NotRegular,
    /// Group or others may read or write it.
    #[error(
        "permissions {mode:04o} let group/others access it; refusing it. Fix: `chmod 600 {path}` \
         (owned by the agent's user)"
    )]
    Exposed {
        /// The file's permission bits.
        mode: u32,
        /// The file, as configured.
        path: String,
    },
    /// Another user owns it and could replace the key.
    #[error(
        "owned by uid {owner}, not by the agent's user (uid {euid}) or root; refusing it. Fix: \
         `chown badge-agent: {path}`"
    )]
    ForeignOwner {
        /// The file's owner.
        owner: u32,
        /// The agent's effective user.
        euid: u32,
        /// The file, as configured.
        path: String,
    },
    /// Larger than any key.
    #[error(
        "{len} bytes is too large for a key file (at most {MAX_LEN}); is this the right file?"
    )]
    TooLarge {
        /// The file's size.
        len: u64,
    },
    /// Not text.
    #[error("not UTF-8 text")]
    NotText,
}

/// Reads the secret file at `path` under the rule above.
pub fn read_secret_file(path: &Path) -> Result<String, SecretFileError> {
    use std::os::unix::fs::OpenOptionsExt;
    // O_NONBLOCK: opening a FIFO must not wait for a writer before the type check refuses it.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    check(&Facts::of(&meta), crate::update::effective_uid(), path)?;
    read_bounded(file)
}

/// What the rule looks at, taken from the opened file.
#[derive(Debug, Clone, Copy)]
struct Facts {
    regular: bool,
    mode: u32,
    owner: u32,
    len: u64,
}

impl Facts {
    fn of(meta: &std::fs::Metadata) -> Self {
        Self {
            regular: meta.is_file(),
            mode: meta.mode() & 0o777,
            owner: meta.uid(),
            len: meta.len(),
        }
    }
}

fn check(file: &Facts, euid: u32, path: &Path) -> Result<(), SecretFileError> {
    if !file.regular {
        return Err(SecretFileError::NotRegular);
    }
    if file.mode & 0o077 != 0 {
        return Err(SecretFileError::Exposed {
            mode: file.mode,
            path: path.display().to_string(),
        });
    }
    if file.owner != euid && file.owner != 0 {
        return Err(SecretFileError::ForeignOwner {
            owner: file.owner,
            euid,
            path: path.display().to_string(),
        });
    }
    if file.len > MAX_LEN {
        return Err(SecretFileError::TooLarge { len: file.len });
    }
    Ok(())
}

fn read_bounded(file: File) -> Result<String, SecretFileError> {
    let mut bytes = Vec::new();
    // One byte over the limit tells a file that grew after the check.
    file.take(MAX_LEN + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_LEN {
        return Err(SecretFileError::TooLarge {
            len: bytes.len() as u64,
        });
    }
    String::from_utf8(bytes).map_err(|_| SecretFileError::NotText)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn write(dir: &Path, name: &str, text: &str, mode: u32) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn a_private_key_file_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "k", "secret\n", 0o600);
        assert_eq!(read_secret_file(&path).unwrap(), "secret\n");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert_eq!(read_secret_file(&link).unwrap(), "secret\n");
    }

    #[test]
    fn refusals_name_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        for (mode, refused) in [(0o640, true), (0o604, true), (0o620, true), (0o400, false)] {
            let path = write(dir.path(), "k", "secret", mode);
            let result = read_secret_file(&path);
            assert_eq!(result.is_err(), refused, "mode {mode:o}: {result:?}");
            if let Err(err) = result {
                assert!(err.to_string().contains("chmod 600"), "{err}");
                assert!(!err.to_string().contains("secret"), "{err}");
            }
        }
        let big = write(dir.path(), "big", &"x".repeat(70_000), 0o600);
        assert!(matches!(
            read_secret_file(&big),
            Err(SecretFileError::TooLarge { .. })
        ));
        // A device (endless) and a FIFO (blocks) are refused before any read.
        for special in ["/dev/zero", "/dev/null"] {
            assert!(matches!(
                read_secret_file(Path::new(special)),
                Err(SecretFileError::NotRegular)
            ));
        }
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        #[allow(unsafe_code)]
        // SAFETY: a valid NUL-terminated path; mkfifo touches no memory of ours.
        let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
        assert_eq!(rc, 0);
        assert!(matches!(
            read_secret_file(&fifo),
            Err(SecretFileError::NotRegular)
        ));
    }

    #[test]
    fn the_rule_as_a_table() {
        const AGENT: u32 = 999;
        let file = |regular, mode, owner, len| Facts {
            regular,
            mode,
            owner,
            len,
        };
        let path = Path::new("/etc/badge-agent/k");
        for (facts, verdict) in [
            (file(true, 0o600, AGENT, 1700), "ok"),
            (file(true, 0o400, 0, 1700), "ok"),
            (
                file(true, 0o600, 4242, 1700),
                "chown badge-agent: /etc/badge-agent/k",
            ),
            (
                file(true, 0o640, AGENT, 1700),
                "chmod 600 /etc/badge-agent/k",
            ),
            (file(true, 0o602, 0, 1700), "chmod 600"),
            (file(false, 0o600, AGENT, 0), "not a regular file"),
            (file(true, 0o600, AGENT, MAX_LEN + 1), "too large"),
        ] {
            let got = check(&facts, AGENT, path).map_or_else(|e| e.to_string(), |()| "ok".into());
            assert!(got.contains(verdict), "{facts:?}: {got}");
        }
    }
}
