//! Release artifacts: a plain (uncompressed) tar with `manifest.json` first, plus a detached
//! RSA PKCS#1 v1.5 / SHA-256 signature over the whole tar file (`<artifact>.sig`, raw bytes).
//!
//! The signature is the same byte format `openssl dgst -sha256 -sign key.pem` writes, so release
//! engineering can sign or check with stock openssl as well as with [`sign_artifact`].

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use rsa::pkcs1::{DecodeRsaPrivateKey, DecodeRsaPublicKey};
use rsa::pkcs1v15::{Signature, SigningKey, VerifyingKey};
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey};
use rsa::signature::{RandomizedSigner, SignatureEncoding, Verifier};
use rsa::traits::PublicKeyParts;
use rsa::{RsaPrivateKey, RsaPublicKey};
use semver::Version;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{io_err, UpdateError, BIN_NAME};

/// Name of the manifest inside the artifact and inside each installed version directory.
pub const MANIFEST_NAME: &str = "manifest.json";
/// Artifact format understood by this code.
pub const FORMAT: u32 = 1;
/// Refuse artifacts larger than this before reading them (the agent is a few MB).
pub const MAX_ARTIFACT_BYTES: u64 = 128 * 1024 * 1024;
/// Largest detached signature read (an RSA-16384 signature is 2 KiB).
pub const MAX_SIGNATURE_BYTES: u64 = 16 * 1024;
/// Largest release public key file read.
const MAX_KEY_FILE_BYTES: u64 = 64 * 1024;
/// Shortest RSA modulus accepted for release keys.
pub const MIN_KEY_BITS: usize = 2048;

/// `manifest.json`: what the artifact contains. Signed as part of the tar.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Artifact format version ([`FORMAT`]).
    pub format: u32,
    /// Always `badge-agent`.
    pub name: String,
    /// Semantic version of the release; also the install directory name.
    pub version: Version,
    /// `std::env::consts::ARCH` of the target the binaries were built for (`aarch64`, `arm`, …).
    pub arch: String,
    /// Every file of the artifact other than the manifest.
    pub files: Vec<FileEntry>,
    /// Buffer formats this release reads besides the one-key-per-swipe one (`chunks-1`).
    /// Absent in releases before chunked buffers; updaters before them ignore the field.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub buffer_formats: Vec<String>,
}

/// One file of a release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Relative path (normal components only).
    pub path: String,
    /// Lower-case hex SHA-256 of the content.
    pub sha256: String,
    /// Unix permission bits; only 0o755 and 0o644 are allowed.
    pub mode: u32,
}

/// A verified, parsed artifact held in memory (parsed from the same bytes that were verified, so
/// nothing can change between the signature check and the unpack).
#[derive(Debug)]
pub struct Artifact {
    /// The manifest.
    pub manifest: Manifest,
    /// File contents keyed by relative path, in manifest order.
    pub files: Vec<(String, Vec<u8>, u32)>,
}

/// Lower-case hex SHA-256.
pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Reads an RSA public key: SPKI (`BEGIN PUBLIC KEY`) or PKCS#1 (`BEGIN RSA PUBLIC KEY`) PEM.
///
/// The key decides what root installs, so a key file that anyone but root (or the user running
/// the updater, which is root in production) could replace is refused, like the agent refuses a
/// private key that others can read.
pub fn load_public_key(path: &Path) -> Result<RsaPublicKey, UpdateError> {
    let key_err = |reason: String| UpdateError::Key {
        path: path.to_path_buf(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(io_err(path))?;
    let meta = file.metadata().map_err(io_err(path))?;
    check_public_key_owner(&meta, super::system::effective_uid()).map_err(key_err)?;
    let mut pem = String::new();
    file.take(MAX_KEY_FILE_BYTES)
        .read_to_string(&mut pem)
        .map_err(io_err(path))?;
    parse_public_key(&pem).map_err(key_err)
}

/// A regular file owned by root (or by `euid`), writable by nobody else.
pub(crate) fn check_public_key_owner(meta: &std::fs::Metadata, euid: u32) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(format!(
            "permissions {mode:04o} let group/others replace the release key; refusing it. \
             Fix: `chown root:root` and `chmod 644` the key file"
        ));
    }
    if meta.uid() != 0 && meta.uid() != euid {
        return Err(format!(
            "owned by uid {}, who could replace the release key; refusing it. \
             Fix: `chown root:root` the key file",
            meta.uid()
        ));
    }
    Ok(())
}

fn parse_public_key(pem: &str) -> Result<RsaPublicKey, String> {
    let key = RsaPublicKey::from_public_key_pem(pem)
        .or_else(|_| RsaPublicKey::from_pkcs1_pem(pem))
        .map_err(|e| format!("not an RSA public key in PEM: {e}"))?;
    let bits = key.size() * 8;
    if bits < MIN_KEY_BITS {
        return Err(format!(
            "{bits}-bit key; at least {MIN_KEY_BITS} bits required"
        ));
    }
    Ok(key)
}

/// Reads an RSA private key: PKCS#8 (`BEGIN PRIVATE KEY`) or PKCS#1 (`BEGIN RSA PRIVATE KEY`) PEM.
pub fn load_private_key(path: &Path) -> Result<RsaPrivateKey, UpdateError> {
    let pem = std::fs::read_to_string(path).map_err(io_err(path))?;
    RsaPrivateKey::from_pkcs8_pem(&pem)
        .or_else(|_| RsaPrivateKey::from_pkcs1_pem(&pem))
        .map_err(|e| UpdateError::Key {
            path: path.to_path_buf(),
            reason: format!("not an RSA private key in PEM: {e}"),
        })
}

/// Signs `data` (RSASSA-PKCS1-v1_5 with SHA-256); returns the raw signature bytes.
///
/// The private-key operation is blinded with fresh randomness from the OS (RUSTSEC-2023-0071:
/// the `rsa` crate's unblinded path leaks timing about the key). PKCS#1 v1.5 signatures are
/// deterministic, so blinding changes nothing in the output.
pub fn sign_bytes(data: &[u8], key: &RsaPrivateKey) -> Vec<u8> {
    sign_bytes_with_rng(data, key, &mut rsa::rand_core::OsRng)
}

/// [`sign_bytes`] with the blinding randomness drawn from `rng` (a CSPRNG).
pub fn sign_bytes_with_rng(
    data: &[u8],
    key: &RsaPrivateKey,
    rng: &mut impl rsa::rand_core::CryptoRngCore,
) -> Vec<u8> {
    SigningKey::<Sha256>::new(key.clone())
        .sign_with_rng(rng, data)
        .to_vec()
}

/// Checks a raw RSASSA-PKCS1-v1_5/SHA-256 signature of `data`.
pub fn verify_bytes(data: &[u8], signature: &[u8], key: &RsaPublicKey) -> Result<(), UpdateError> {
    if signature.len() != key.size() {
        return Err(UpdateError::BadSignature(format!(
            "signature is {} bytes, the key needs {}",
            signature.len(),
            key.size()
        )));
    }
    let sig = Signature::try_from(signature)
        .map_err(|e| UpdateError::BadSignature(format!("malformed signature: {e}")))?;
    VerifyingKey::<Sha256>::new(key.clone())
        .verify(data, &sig)
        .map_err(|_| {
            UpdateError::BadSignature(
                "signature does not match the artifact and release key".into(),
            )
        })
}

/// Path of the detached signature of `artifact`: `<artifact>.sig`.
pub fn signature_path(artifact: &Path) -> PathBuf {
    let mut s = artifact.as_os_str().to_owned();
    s.push(".sig");
    PathBuf::from(s)
}

/// Release engineering: signs `artifact` with the PEM private key at `private_key` and writes
/// `<artifact>.sig`. Returns the signature path. Equivalent to
/// `openssl dgst -sha256 -sign key.pem -out <artifact>.sig <artifact>`.
pub fn sign_artifact(artifact: &Path, private_key: &Path) -> Result<PathBuf, UpdateError> {
    let key = load_private_key(private_key)?;
    let data = read_limited(artifact)?;
    let sig_path = signature_path(artifact);
    std::fs::write(&sig_path, sign_bytes(&data, &key)).map_err(io_err(&sig_path))?;
    Ok(sig_path)
}

pub(crate) fn read_limited(path: &Path) -> Result<Vec<u8>, UpdateError> {
    read_regular_file(path, MAX_ARTIFACT_BYTES)
}

/// Reads at most `limit` bytes of the regular file at `path` (more is an error).
///
/// The limit is enforced on the bytes read from the opened descriptor, not on a `stat` of the
/// path: the file is opened with `O_NOFOLLOW` (a final symlink, e.g. to `/dev/zero`, fails) and
/// `O_NONBLOCK` (opening a FIFO does not wait for a writer), and must be a regular file by
/// `fstat` of that very descriptor.
pub(crate) fn read_regular_file(path: &Path, limit: u64) -> Result<Vec<u8>, UpdateError> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                bad(format!("{} is a symbolic link", path.display()))
            } else {
                io_err(path)(e)
            }
        })?;
    let meta = file.metadata().map_err(io_err(path))?;
    if !meta.file_type().is_file() {
        return Err(bad(format!("{} is not a regular file", path.display())));
    }
    let too_big = |len: u64| {
        bad(format!(
            "{} is {len} bytes or more, over the {limit} byte limit",
            path.display()
        ))
    };
    if meta.len() > limit {
        return Err(too_big(meta.len()));
    }
    let mut data = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(limit.saturating_add(1))
        .read_to_end(&mut data)
        .map_err(io_err(path))?;
    if data.len() as u64 > limit {
        return Err(too_big(data.len() as u64));
    }
    Ok(data)
}

/// Reads `artifact` and its `.sig`, verifies the signature against `key`, then parses it.
/// Nothing of the artifact is interpreted before the signature has been checked.
pub fn read_verified(artifact: &Path, key: &RsaPublicKey) -> Result<Artifact, UpdateError> {
    let data = read_limited(artifact)?;
    let sig = read_regular_file(&signature_path(artifact), MAX_SIGNATURE_BYTES)?;
    verify_bytes(&data, &sig, key)?;
    parse(&data)
}

fn bad(msg: impl Into<String>) -> UpdateError {
    UpdateError::BadArtifact(msg.into())
}

/// A relative path in canonical form: `/`-separated normal components, nothing else (no `..`,
/// no `.`, no absolute path, no empty component from `//` or a trailing `/`). Only one spelling
/// of a path is accepted, so `lib/x` and `lib//x` can never be two entries naming one file.
fn safe_rel_path(p: &str) -> bool {
    !p.is_empty()
        && !p.contains('\0')
        && p.split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
        && Path::new(p)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
}

/// Parses (already verified) artifact bytes; checks the manifest against the tar members.
pub fn parse(data: &[u8]) -> Result<Artifact, UpdateError> {
    let mut archive = tar::Archive::new(data);
    let mut manifest: Option<Manifest> = None;
    let mut contents: BTreeMap<String, (Vec<u8>, u32)> = BTreeMap::new();
    let entries = archive
        .entries()
        .map_err(|e| bad(format!("not a tar archive: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(format!("corrupt tar: {e}")))?;
        let kind = entry.header().entry_type();
        let path = entry
            .path()
            .map_err(|e| bad(format!("bad member name: {e}")))?
            .to_string_lossy()
            .into_owned();
        if kind.is_dir() {
            continue;
        }
        // Links and device nodes could point outside the install directory: refuse them.
        if !kind.is_file() {
            return Err(bad(format!("member `{path}` is not a regular file")));
        }
        if !safe_rel_path(&path) {
            return Err(bad(format!("member `{path}` has an unsafe path")));
        }
        let mode = entry
            .header()
            .mode()
            .map_err(|e| bad(format!("bad mode of `{path}`: {e}")))?;
        let mut buf = Vec::new();
        entry
            .read_to_end(&mut buf)
            .map_err(|e| bad(format!("cannot read `{path}`: {e}")))?;
        if path == MANIFEST_NAME {
            if manifest.is_some() {
                return Err(bad("two manifests"));
            }
            manifest = Some(
                serde_json::from_slice(&buf)
                    .map_err(|e| bad(format!("{MANIFEST_NAME} is invalid: {e}")))?,
            );
        } else if contents.insert(path.clone(), (buf, mode)).is_some() {
            return Err(bad(format!("member `{path}` appears twice")));
        }
    }
    let manifest = manifest.ok_or_else(|| bad(format!("no {MANIFEST_NAME}")))?;
    check_manifest(&manifest)?;
    let mut files = Vec::with_capacity(manifest.files.len());
    for f in &manifest.files {
        let (data, _tar_mode) = contents.remove(&f.path).ok_or_else(|| {
            bad(format!(
                "`{}` is in the manifest but not in the tar",
                f.path
            ))
        })?;
        if sha256_hex(&data) != f.sha256 {
            return Err(bad(format!(
                "`{}` does not match its manifest digest",
                f.path
            )));
        }
        files.push((f.path.clone(), data, f.mode));
    }
    if let Some(extra) = contents.keys().next() {
        return Err(bad(format!(
            "`{extra}` is in the tar but not in the manifest"
        )));
    }
    Ok(Artifact { manifest, files })
}

/// Structural checks shared by artifacts and installed version directories.
pub(crate) fn check_manifest(m: &Manifest) -> Result<(), UpdateError> {
    if m.format != FORMAT {
        return Err(bad(format!(
            "artifact format {} (this agent reads {FORMAT})",
            m.format
        )));
    }
    if m.name != BIN_NAME {
        return Err(bad(format!("artifact is for `{}`, not {BIN_NAME}", m.name)));
    }
    let mut seen = std::collections::BTreeSet::new();
    for f in &m.files {
        if !safe_rel_path(&f.path) || f.path == MANIFEST_NAME {
            return Err(bad(format!("manifest lists unsafe path `{}`", f.path)));
        }
        if f.mode != 0o755 && f.mode != 0o644 {
            return Err(bad(format!(
                "`{}` has mode {:o}; only 755 and 644",
                f.path, f.mode
            )));
        }
        if !seen.insert(f.path.as_str()) {
            return Err(bad(format!("`{}` listed twice", f.path)));
        }
    }
    match m.files.iter().find(|f| f.path == BIN_NAME) {
        Some(f) if f.mode == 0o755 => Ok(()),
        Some(_) => Err(bad(format!("`{BIN_NAME}` is not executable"))),
        None => Err(bad(format!("no `{BIN_NAME}` binary"))),
    }
}

/// Builds artifact bytes from in-memory files `(relative path, content, mode)`.
pub fn pack(
    version: &Version,
    arch: &str,
    files: &[(String, Vec<u8>, u32)],
) -> Result<Vec<u8>, UpdateError> {
    let manifest = Manifest {
        format: FORMAT,
        name: BIN_NAME.to_string(),
        version: version.clone(),
        arch: arch.to_string(),
        buffer_formats: vec![crate::buffer::BUFFER_FORMAT_CHUNKS.to_string()],
        files: files
            .iter()
            .map(|(path, data, mode)| FileEntry {
                path: path.clone(),
                sha256: sha256_hex(data),
                mode: *mode,
            })
            .collect(),
    };
    check_manifest(&manifest)?;
    let manifest_json = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| bad(format!("cannot encode manifest: {e}")))?;
    let mut builder = tar::Builder::new(Vec::new());
    let mut append = |path: &str, data: &[u8], mode: u32| -> Result<(), UpdateError> {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(mode);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        builder
            .append_data(&mut header, path, data)
            .map_err(|e| bad(format!("cannot add `{path}` to the tar: {e}")))
    };
    append(MANIFEST_NAME, &manifest_json, 0o644)?;
    for (path, data, mode) in files {
        append(path, data, *mode)?;
    }
    builder
        .into_inner()
        .map_err(|e| bad(format!("cannot finish the tar: {e}")))
}

/// Release engineering: packs every regular file under `dir` (recursively; `badge-agent` must be
/// among them) into `out` as a release artifact for `arch`. Executable files get mode 0755,
/// others 0644. Sign the result with [`sign_artifact`].
pub fn pack_dir(dir: &Path, version: &Version, arch: &str, out: &Path) -> Result<(), UpdateError> {
    use std::os::unix::fs::PermissionsExt;
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).map_err(io_err(&d))? {
            let entry = entry.map_err(io_err(&d))?;
            let path = entry.path();
            let ft = entry.file_type().map_err(io_err(&path))?;
            if ft.is_dir() {
                stack.push(path);
            } else if ft.is_file() {
                let rel = path
                    .strip_prefix(dir)
                    .map_err(|_| bad("path outside the pack directory"))?
                    .to_string_lossy()
                    .into_owned();
                let meta = entry.metadata().map_err(io_err(&path))?;
                let mode = if meta.permissions().mode() & 0o111 != 0 {
                    0o755
                } else {
                    0o644
                };
                files.push((rel, std::fs::read(&path).map_err(io_err(&path))?, mode));
            } else {
                return Err(bad(format!(
                    "{} is neither a file nor a directory",
                    path.display()
                )));
            }
        }
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    let bytes = pack(version, arch, &files)?;
    std::fs::write(out, bytes).map_err(io_err(out))
}
