//! Key-pair authentication: private-key loading, the public-key fingerprint, the key-pair JWT and
//! the scoped (ingest) token cache (`docs/snowpipe-wire.md`, key-pair JWT).
//!
//! Everything except [`load_private_key`] (which reads a file) is pure: times are passed in as
//! seconds since the Unix epoch so token renewal can be tested without waiting.

use std::fmt;
use std::path::Path;

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey};
use rsa::{RsaPrivateKey, RsaPublicKey};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::error::SnowpipeError;
pub use super::redact::Secret;

/// Key-pair JWT lifetime: Snowflake accepts at most one hour; its own sample uses 59 minutes.
pub const JWT_LIFETIME_SECS: u64 = 59 * 60;
/// A key-pair JWT is renewed once it is this old (Snowflake's sample renews after 54 minutes).
pub const JWT_RENEW_AFTER_SECS: u64 = 54 * 60;
/// A scoped token is refreshed this long before its `exp` (or at half its remaining life, if that
/// is sooner, so that short-lived tokens are not refreshed on every call).
pub const SCOPED_REFRESH_MARGIN_SECS: u64 = 5 * 60;

/// Snowflake's `RSA_PUBLIC_KEY_FP` of a public key, without the `SHA256:` prefix:
/// standard base64 (with padding) of SHA-256 over the DER `SubjectPublicKeyInfo`.
pub fn public_key_fingerprint(public: &RsaPublicKey) -> String {
    let der = spki_der(public);
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(der))
}

/// The public key as the base64 DER body (the PEM without its armour and line breaks), the value
/// for `ALTER USER … SET RSA_PUBLIC_KEY='…'`.
pub fn public_key_base64_der(public: &RsaPublicKey) -> String {
    base64::engine::general_purpose::STANDARD.encode(spki_der(public))
}

fn spki_der(public: &RsaPublicKey) -> Vec<u8> {
    // Encoding a well-formed in-memory RSA key as SPKI cannot fail (only allocation could).
    #[allow(clippy::expect_used)]
    public
        .to_public_key_der()
        .expect("an RSA public key always encodes as SubjectPublicKeyInfo")
        .into_vec()
}

/// The loaded key pair: signing key for the JWT and the public fingerprint.
pub struct KeyPair {
    public: RsaPublicKey,
    encoding: EncodingKey,
    fingerprint: String,
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPair")
            .field("fingerprint", &self.fingerprint)
            .field("private_key", &"[redacted]")
            .finish()
    }
}

impl KeyPair {
    /// Builds the pair from an in-memory private key.
    pub fn from_private_key(private: &RsaPrivateKey) -> Result<Self, String> {
        let public = private.to_public_key();
        // The signer (`jwt_crypto`) takes PKCS#1 DER, as jsonwebtoken's own backends do.
        let pkcs1 = private
            .to_pkcs1_der()
            .map_err(|e| format!("cannot encode the key for signing: {e}"))?;
        let encoding = EncodingKey::from_rsa_der(pkcs1.as_bytes());
        let fingerprint = public_key_fingerprint(&public);
        Ok(KeyPair {
            public,
            encoding,
            fingerprint,
        })
    }

    /// The public half.
    pub fn public_key(&self) -> &RsaPublicKey {
        &self.public
    }

    /// `RSA_PUBLIC_KEY_FP` without the `SHA256:` prefix.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Signs `claims` as an RS256 JWT (header `{"typ":"JWT","alg":"RS256"}`, no `kid`).
    pub fn sign(&self, claims: &JwtClaims) -> Result<Secret, String> {
        jwt_crypto::install();
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), claims, &self.encoding)
            .map(Secret::new)
            .map_err(|e| format!("cannot sign the key-pair JWT: {e}"))
    }
}

/// jsonwebtoken's crypto backend, on the `rsa` crate the agent has anyway: RS256 (the key-pair
/// JWT) and HS256. jsonwebtoken's own `rust_crypto` backend would also link P-256, P-384, ECDSA
/// and Ed25519 (~0.3 MB of the release binary) for algorithms the agent never uses.
///
/// A process has one backend, the first one installed. Where the Snowpipe emulator runs in the
/// same process (`badge-agent demo`, tests, benches) it has `rust_crypto` enabled and may come
/// first; where this one comes first it serves the emulator too, hence RS256 verification and
/// HS256 (the emulator's scoped tokens). Other algorithms are refused.
pub(crate) mod jwt_crypto {
    use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils};
    use jsonwebtoken::errors::{ErrorKind, Result};
    use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, DecodingKeyKind, EncodingKey};
    use rsa::pkcs1::{DecodeRsaPrivateKey, DecodeRsaPublicKey};
    use rsa::signature::{self, RandomizedSigner, SignatureEncoding, Signer, Verifier};
    use rsa::{BigUint, Pkcs1v15Sign, RsaPrivateKey, RsaPublicKey};
    use sha2::{Digest, Sha256};

    /// The backend; [`install`] makes it the process default.
    pub(crate) static PROVIDER: CryptoProvider = CryptoProvider {
        signer_factory,
        verifier_factory,
        // JWK support (thumbprints, keys from JWK sets) is not used.
        key_utils: KeyUtils::new_unimplemented(),
    };

    /// Makes [`PROVIDER`] the process default unless a backend is already installed (that one
    /// signs RS256 identically: PKCS#1 v1.5 signatures are deterministic).
    pub(crate) fn install() {
        let _ = PROVIDER.install_default();
    }

    fn signer_factory(alg: &Algorithm, key: &EncodingKey) -> Result<Box<dyn JwtSigner>> {
        match (alg, key.family()) {
            (Algorithm::RS256, AlgorithmFamily::Rsa) => {
                let private = RsaPrivateKey::from_pkcs1_der(key.as_bytes())
                    .map_err(|e| ErrorKind::InvalidRsaKey(e.to_string()))?;
                Ok(Box::new(Rs256Signer(rsa::pkcs1v15::SigningKey::new(
                    private,
                ))))
            }
            (Algorithm::HS256, AlgorithmFamily::Hmac) => {
                Ok(Box::new(Hs256(hmac_key(key.as_bytes()))))
            }
            (Algorithm::RS256 | Algorithm::HS256, _) => Err(ErrorKind::InvalidKeyFormat.into()),
            _ => Err(ErrorKind::InvalidAlgorithm.into()),
        }
    }

    fn verifier_factory(alg: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>> {
        match (alg, key.family()) {
            // The key is read when verifying, as jsonwebtoken's backends do: a bad key makes the
            // signature invalid rather than the call an error.
            (Algorithm::RS256, AlgorithmFamily::Rsa) => Ok(Box::new(Rs256Verifier(key.clone()))),
            (Algorithm::HS256, AlgorithmFamily::Hmac) => {
                Ok(Box::new(Hs256(hmac_key(key.try_get_as_bytes()?))))
            }
            (Algorithm::RS256 | Algorithm::HS256, _) => Err(ErrorKind::InvalidKeyFormat.into()),
            _ => Err(ErrorKind::InvalidAlgorithm.into()),
        }
    }

    struct Rs256Signer(rsa::pkcs1v15::SigningKey<Sha256>);

    impl Signer<Vec<u8>> for Rs256Signer {
        fn try_sign(&self, msg: &[u8]) -> std::result::Result<Vec<u8>, signature::Error> {
            // With an RNG the private-key operation is blinded (against timing attacks); the
            // signature is the same as without.
            let mut rng = rsa::rand_core::OsRng;
            Ok(self.0.try_sign_with_rng(&mut rng, msg)?.to_vec())
        }
    }

    impl JwtSigner for Rs256Signer {
        fn algorithm(&self) -> Algorithm {
            Algorithm::RS256
        }
    }

    struct Rs256Verifier(DecodingKey);

    impl Verifier<Vec<u8>> for Rs256Verifier {
        fn verify(
            &self,
            msg: &[u8],
            signature: &Vec<u8>,
        ) -> std::result::Result<(), signature::Error> {
            let public = match self.0.kind() {
                DecodingKeyKind::SecretOrDer(der) => {
                    RsaPublicKey::from_pkcs1_der(der).map_err(signature::Error::from_source)?
                }
                DecodingKeyKind::RsaModulusExponent { n, e } => {
                    RsaPublicKey::new(BigUint::from_bytes_be(n), BigUint::from_bytes_be(e))
                        .map_err(signature::Error::from_source)?
                }
            };
            public
                .verify(
                    Pkcs1v15Sign::new::<Sha256>(),
                    &Sha256::digest(msg),
                    signature,
                )
                .map_err(signature::Error::from_source)
        }
    }

    impl JwtVerifier for Rs256Verifier {
        fn algorithm(&self) -> Algorithm {
            Algorithm::RS256
        }
    }

    fn hmac_key(secret: &[u8]) -> ring::hmac::Key {
        ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret)
    }

    /// HMAC-SHA256 from `ring`, which rustls links anyway.
    struct Hs256(ring::hmac::Key);

    impl Signer<Vec<u8>> for Hs256 {
        fn try_sign(&self, msg: &[u8]) -> std::result::Result<Vec<u8>, signature::Error> {
            Ok(ring::hmac::sign(&self.0, msg).as_ref().to_vec())
        }
    }

    impl Verifier<Vec<u8>> for Hs256 {
        fn verify(
            &self,
            msg: &[u8],
            signature: &Vec<u8>,
        ) -> std::result::Result<(), signature::Error> {
            // Constant-time comparison.
            ring::hmac::verify(&self.0, msg, signature).map_err(|_| signature::Error::new())
        }
    }

    impl JwtSigner for Hs256 {
        fn algorithm(&self) -> Algorithm {
            Algorithm::HS256
        }
    }

    impl JwtVerifier for Hs256 {
        fn algorithm(&self) -> Algorithm {
            Algorithm::HS256
        }
    }
}

/// Parses a PKCS#8 PEM private key, with errors that say how to convert other formats.
pub fn parse_private_key_pem(pem: &str) -> Result<RsaPrivateKey, String> {
    if pem.contains("BEGIN ENCRYPTED PRIVATE KEY") {
        return Err(
            "the key is encrypted; the agent needs an unencrypted PKCS#8 key \
             (`openssl pkcs8 -in enc.p8 -out key.p8` then `chmod 600 key.p8`)"
                .into(),
        );
    }
    if pem.contains("BEGIN RSA PRIVATE KEY") {
        return Err(
            "the key is PKCS#1 (`BEGIN RSA PRIVATE KEY`); convert it to PKCS#8 with \
             `openssl pkcs8 -topk8 -nocrypt -in key.pem -out key.p8`"
                .into(),
        );
    }
    if !pem.contains("BEGIN PRIVATE KEY") {
        return Err(
            "not a PEM private key (expected `-----BEGIN PRIVATE KEY-----`, PKCS#8); \
             generate one with `badge-agent keygen`"
                .into(),
        );
    }
    RsaPrivateKey::from_pkcs8_pem(pem).map_err(|e| {
        format!("malformed PKCS#8 RSA private key ({e}); regenerate it with `badge-agent keygen`")
    })
}

/// Loads the PKCS#8 PEM private key at `path` under the agent's rule for secret files
/// ([`crate::secret_file`]): a leaked key lets anyone write into the table.
pub fn load_private_key(path: &Path) -> Result<KeyPair, SnowpipeError> {
    let err = |message: String| SnowpipeError::Key {
        path: path.to_path_buf(),
        message,
    };
    let pem = crate::secret_file::read_secret_file(path).map_err(|e| err(e.to_string()))?;
    let private = parse_private_key_pem(&pem).map_err(err)?;
    KeyPair::from_private_key(&private).map_err(err)
}

/// Generates a new RSA private key for key-pair authentication (2048 bits is Snowflake's
/// minimum; 4096 is fine too).
pub fn generate_private_key(bits: usize) -> Result<RsaPrivateKey, String> {
    let mut rng = rsa::rand_core::OsRng;
    RsaPrivateKey::new(&mut rng, bits).map_err(|e| format!("RSA key generation failed: {e}"))
}

/// Writes `key` as an unencrypted PKCS#8 PEM file created with mode 0600. Refuses to overwrite
/// an existing file (a replaced key locks the gateway out until the new one is registered).
pub fn write_private_key(path: &Path, key: &RsaPrivateKey) -> Result<(), SnowpipeError> {
    use rsa::pkcs8::EncodePrivateKey;
    use std::io::Write;
    let err = |message: String| SnowpipeError::Key {
        path: path.to_path_buf(),
        message,
    };
    let pem = key
        .to_pkcs8_pem(rsa::pkcs8::LineEnding::LF)
        .map_err(|e| err(format!("cannot encode the key: {e}")))?;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut file = opts.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            err("already exists; refusing to overwrite a key (move it away first)".into())
        } else {
            err(format!("cannot create: {e}"))
        }
    })?;
    file.write_all(pem.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| err(format!("cannot write: {e}")))
}

/// Normalises the configured account for `iss`/`sub` (wire docs): the text before the first
/// `.` (a `.` introduces a region/locator suffix), for `.global` accounts also cut at the first
/// `-`, upper-cased. Underscores stay (the `_`→`-` rule is for the ingest host only).
pub fn normalize_account(account: &str) -> String {
    let account = account.trim();
    let is_global = account
        .split('.')
        .skip(1)
        .any(|seg| seg.eq_ignore_ascii_case("global"));
    let mut head = account.split('.').next().unwrap_or(account);
    if is_global {
        if let Some(idx) = head.find('-').filter(|&i| i > 0) {
            head = &head[..idx];
        }
    }
    head.to_uppercase()
}

/// Normalises the user for `iss`/`sub`: upper-cased, otherwise verbatim.
pub fn normalize_user(user: &str) -> String {
    user.trim().to_uppercase()
}

/// Claims of the key-pair JWT (`docs/snowpipe-wire.md`). `iat`/`exp` are seconds, as documented.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct JwtClaims {
    /// `<ACCOUNT>.<USER>.SHA256:<fingerprint>`.
    pub iss: String,
    /// `<ACCOUNT>.<USER>`.
    pub sub: String,
    /// `session:role:<ROLE>`, only when a role is configured.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub scp: Option<String>,
    /// Issued at, seconds since the epoch.
    pub iat: u64,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
}

/// Builds the key-pair JWT claims. Pure.
pub fn jwt_claims(
    account: &str,
    user: &str,
    role: Option<&str>,
    fingerprint: &str,
    now_secs: u64,
) -> JwtClaims {
    let sub = format!("{}.{}", normalize_account(account), normalize_user(user));
    JwtClaims {
        iss: format!("{sub}.SHA256:{fingerprint}"),
        sub,
        // The role is sent as configured: Snowflake resolves unquoted identifiers itself.
        scp: role
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .map(|r| format!("session:role:{r}")),
        iat: now_secs,
        exp: now_secs + JWT_LIFETIME_SECS,
    }
}

/// The current key-pair JWT, re-signed when it gets old.
#[derive(Debug, Default)]
pub struct JwtCache {
    current: Option<(Secret, u64)>,
}

impl JwtCache {
    /// Whether a JWT issued at `iat` must be replaced at `now` (too old, or the clock went back).
    pub fn needs_renewal(iat: u64, now_secs: u64) -> bool {
        now_secs >= iat + JWT_RENEW_AFTER_SECS || now_secs + 60 < iat
    }

    /// The JWT to use at `now_secs`, signing a fresh one if needed.
    pub fn get(
        &mut self,
        keys: &KeyPair,
        account: &str,
        user: &str,
        role: Option<&str>,
        now_secs: u64,
    ) -> Result<Secret, SnowpipeError> {
        if let Some((jwt, iat)) = &self.current {
            if !Self::needs_renewal(*iat, now_secs) {
                return Ok(jwt.clone());
            }
        }
        let claims = jwt_claims(account, user, role, keys.fingerprint(), now_secs);
        let jwt = keys
            .sign(&claims)
            .map_err(|message| SnowpipeError::Auth { message })?;
        self.current = Some((jwt.clone(), now_secs));
        Ok(jwt)
    }

    /// Forgets the JWT (after a 401) so the next call signs a new one.
    pub fn invalidate(&mut self) {
        self.current = None;
    }
}

/// A scoped token from `POST /oauth/token` and when to refresh it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopedToken {
    /// The raw token (a JWT), sent as `Bearer` to the ingest host.
    pub token: Secret,
    /// Its `exp`, seconds since the epoch.
    pub exp: u64,
    /// When to fetch a new one, seconds since the epoch.
    pub refresh_at: u64,
}

impl ScopedToken {
    /// Whether it must be refreshed before use at `now_secs`.
    pub fn needs_refresh(&self, now_secs: u64) -> bool {
        now_secs >= self.refresh_at
    }
}

/// Parses the token-exchange answer: the raw scoped token, whose `exp` is decoded without
/// verifying (we are not its audience; the ingest host verifies it). Accepts a JSON
/// `{"token": …}` too, as documented. An `exp` over 10¹¹ is taken as milliseconds.
pub fn parse_scoped_token(body: &[u8], now_secs: u64) -> Result<ScopedToken, String> {
    let text = std::str::from_utf8(body)
        .map_err(|_| "token answer is not UTF-8".to_string())?
        .trim();
    let token = if text.starts_with('{') {
        #[derive(serde::Deserialize)]
        struct Wrapped {
            token: String,
        }
        serde_json::from_str::<Wrapped>(text)
            .map_err(|e| format!("token answer is JSON without a `token` string: {e}"))?
            .token
    } else {
        text.to_string()
    };
    if token.is_empty() || token.len() > 16 * 1024 || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("token answer is not a JWT".into());
    }
    let claims: serde_json::Value = jsonwebtoken::dangerous::insecure_decode_claims(&token)
        .map_err(|_| "token answer is not a decodable JWT".to_string())?;
    let exp = claims
        .get("exp")
        .and_then(|v| {
            v.as_u64()
                .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
        })
        .ok_or_else(|| "scoped token has no numeric `exp`".to_string())?;
    let exp = if exp > 100_000_000_000 {
        exp / 1000
    } else {
        exp
    };
    if exp <= now_secs {
        return Err(format!(
            "scoped token is already expired by our clock (exp {exp}, now {now_secs}); \
             check the system clock (NTP)"
        ));
    }
    let margin = SCOPED_REFRESH_MARGIN_SECS.min((exp - now_secs) / 2);
    Ok(ScopedToken {
        token: Secret::new(token),
        exp,
        refresh_at: exp - margin,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;
    use std::sync::OnceLock;

    /// One 2048-bit key for the whole module: keygen is the slow part.
    pub(crate) fn test_key() -> &'static RsaPrivateKey {
        static KEY: OnceLock<RsaPrivateKey> = OnceLock::new();
        KEY.get_or_init(|| {
            let mut rng = rsa::rand_core::OsRng;
            RsaPrivateKey::new(&mut rng, 2048).unwrap()
        })
    }

    fn pem(key: &RsaPrivateKey) -> String {
        use rsa::pkcs8::EncodePrivateKey;
        key.to_pkcs8_pem(rsa::pkcs8::LineEnding::LF)
            .unwrap()
            .to_string()
    }

    fn write_key(dir: &Path, mode: u32) -> std::path::PathBuf {
        let path = dir.join("k.p8");
        std::fs::write(&path, pem(test_key())).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    fn openssl() -> &'static str {
        let ok = Command::new("openssl")
            .arg("version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        assert!(
            ok,
            "this test needs the `openssl` command line tool (apt-get install openssl); it is not installed"
        );
        "openssl"
    }

    #[test]
    fn fingerprint_matches_openssl() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_key(dir.path(), 0o600);
        let bin = openssl();
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "{bin} rsa -in '{}' -pubout -outform DER 2>/dev/null | {bin} dgst -sha256 -binary | {bin} enc -base64",
                path.display()
            ))
            .output()
            .unwrap();
        assert!(out.status.success(), "openssl pipeline failed: {out:?}");
        let expected = String::from_utf8(out.stdout).unwrap().trim().to_string();
        assert_eq!(expected.len(), 44, "unexpected openssl output {expected:?}");
        let keys = load_private_key(&path).unwrap();
        assert_eq!(keys.fingerprint(), expected);
        assert_eq!(public_key_fingerprint(keys.public_key()), expected);

        // The ALTER USER body equals openssl's PEM public key without armour.
        let out = Command::new(bin)
            .args(["rsa", "-in"])
            .arg(&path)
            .arg("-pubout")
            .output()
            .unwrap();
        let pem_pub = String::from_utf8(out.stdout).unwrap();
        let body: String = pem_pub
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        assert_eq!(public_key_base64_der(keys.public_key()), body);
    }

    #[test]
    fn key_file_permissions() {
        let dir = tempfile::tempdir().unwrap();
        for mode in [0o644, 0o640, 0o604, 0o660, 0o602] {
            let path = write_key(dir.path(), mode);
            let err = load_private_key(&path).unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, SnowpipeError::Key { .. }), "{msg}");
            assert!(msg.contains("chmod 600"), "{msg}");
            assert!(msg.contains(&path.display().to_string()), "{msg}");
        }
        for mode in [0o600, 0o400] {
            let path = write_key(dir.path(), mode);
            load_private_key(&path).unwrap();
        }
    }

    #[test]
    fn written_keys_are_private_and_loadable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new.p8");
        write_private_key(&path, test_key()).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let keys = load_private_key(&path).unwrap();
        assert_eq!(
            keys.fingerprint(),
            public_key_fingerprint(&test_key().to_public_key())
        );
        let e = write_private_key(&path, test_key())
            .unwrap_err()
            .to_string();
        assert!(e.contains("refusing to overwrite"), "{e}");
    }

    #[test]
    fn malformed_keys_give_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("garbage", "not a PEM private key"),
            (
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
                "malformed PKCS#8",
            ),
            (
                "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n",
                "openssl pkcs8 -topk8",
            ),
            (
                "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
                "encrypted",
            ),
        ];
        for (i, (text, want)) in cases.iter().enumerate() {
            let path = dir.path().join(format!("bad{i}.p8"));
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            let msg = load_private_key(&path).unwrap_err().to_string();
            assert!(msg.contains(want), "{msg}");
            assert!(msg.contains(&path.display().to_string()), "{msg}");
        }
        let missing = load_private_key(&dir.path().join("nope")).unwrap_err();
        assert!(missing.to_string().contains("cannot read"));
    }

    #[test]
    fn account_normalisation_table() {
        // Account/user mappings the official client produces (`docs/snowpipe-wire.md`).
        for (given, want) in [
            ("xy12345.us-east-1", "XY12345"),
            ("xy12345.us-east-1.global", "XY12345"),
            ("myorg.myacct", "MYORG"),
            ("myorg_my_acct", "MYORG_MY_ACCT"),
            ("MyOrg-MyAcct", "MYORG-MYACCT"),
            ("myorg-myacct", "MYORG-MYACCT"),
            ("myacct-abc123.global", "MYACCT"),
        ] {
            assert_eq!(normalize_account(given), want, "{given}");
        }
        assert_eq!(normalize_user("Mixed.Case_user"), "MIXED.CASE_USER");
        assert_eq!(normalize_user("ingest_user"), "INGEST_USER");
    }

    #[test]
    fn jwt_claims_and_signature() {
        let keys = KeyPair::from_private_key(test_key()).unwrap();
        let now = 1_795_318_549;
        let claims = jwt_claims(
            "myorg-myacct",
            "ingest_user",
            Some("INGEST_ROLE"),
            keys.fingerprint(),
            now,
        );
        assert_eq!(
            claims.iss,
            format!("MYORG-MYACCT.INGEST_USER.SHA256:{}", keys.fingerprint())
        );
        assert_eq!(claims.sub, "MYORG-MYACCT.INGEST_USER");
        assert_eq!(claims.scp.as_deref(), Some("session:role:INGEST_ROLE"));
        assert_eq!(claims.iat, now);
        assert!(claims.exp > claims.iat && claims.exp - claims.iat <= 59 * 60);

        let jwt = keys.sign(&claims).unwrap();
        // Verify with the public key, as Snowflake does.
        let dk = decoding_key(keys.public_key());
        let mut v = jsonwebtoken::Validation::new(Algorithm::RS256);
        v.validate_exp = false;
        v.required_spec_claims.clear();
        let data = jsonwebtoken::decode::<JwtClaims>(jwt.expose(), &dk, &v).unwrap();
        assert_eq!(data.claims, claims);
        assert_eq!(data.header.alg, Algorithm::RS256);
        assert!(data.header.kid.is_none());
        // The wire form: seconds, no scp without a role.
        let raw: serde_json::Value =
            jsonwebtoken::dangerous::insecure_decode_claims(jwt.expose()).unwrap();
        assert_eq!(raw["iat"], serde_json::json!(now));
        let no_role = jwt_claims("a", "u", None, "fp", now);
        let json = serde_json::to_value(&no_role).unwrap();
        assert!(json.get("scp").is_none(), "{json}");
        assert!(format!("{jwt:?}") == "[redacted]");
        assert!(!format!("{keys:?}").contains("BEGIN"));
    }

    fn decoding_key(public: &RsaPublicKey) -> jsonwebtoken::DecodingKey {
        use rsa::traits::PublicKeyParts;
        jsonwebtoken::DecodingKey::from_rsa_raw_components(
            &public.n().to_bytes_be(),
            &public.e().to_bytes_be(),
        )
    }

    /// `openssl dgst -sha256 -sign` (RSASSA-PKCS1-v1_5 with SHA-256, i.e. RS256) of `input`,
    /// base64url without padding as in a JWT.
    fn openssl_rs256(key_path: &Path, input: &str) -> String {
        use std::io::Write;
        let mut child = Command::new(openssl())
            .args(["dgst", "-sha256", "-sign"])
            .arg(key_path)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "openssl dgst failed: {out:?}");
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(out.stdout)
    }

    #[test]
    fn jwt_signature_is_openssls_rs256() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_key(dir.path(), 0o600);
        let keys = load_private_key(&path).unwrap();
        let claims = jwt_claims(
            "myorg-myacct",
            "u",
            Some("R"),
            keys.fingerprint(),
            1_800_000_000,
        );
        // The whole JWT, through whichever backend this test process installed first.
        let jwt = keys.sign(&claims).unwrap();
        let (input, sig) = jwt.expose().rsplit_once('.').unwrap();
        assert_eq!(sig, openssl_rs256(&path, input));
        assert!(input.starts_with(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(r#"{"typ":"JWT","alg":"RS256"}"#)
        ));

        // The agent's own backend, called directly.
        let signer =
            (jwt_crypto::PROVIDER.signer_factory)(&Algorithm::RS256, &keys.encoding).unwrap();
        let ours = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(signer.try_sign(input.as_bytes()).unwrap());
        assert_eq!(ours, sig);
        let verifier = (jwt_crypto::PROVIDER.verifier_factory)(
            &Algorithm::RS256,
            &decoding_key(keys.public_key()),
        )
        .unwrap();
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(sig)
            .unwrap();
        assert!(verifier.verify(input.as_bytes(), &raw).is_ok());
        assert!(verifier.verify(b"tampered", &raw).is_err());
        // A malformed key fails verification, not the call.
        let bad = jsonwebtoken::DecodingKey::from_rsa_der(b"not a key");
        let verifier = (jwt_crypto::PROVIDER.verifier_factory)(&Algorithm::RS256, &bad).unwrap();
        assert!(verifier.verify(input.as_bytes(), &raw).is_err());
    }

    #[test]
    fn jwt_backend_hs256_and_refusals() {
        use jsonwebtoken::{DecodingKey, EncodingKey};
        // RFC 4231, test case 2.
        let key = EncodingKey::from_secret(b"Jefe");
        let signer = (jwt_crypto::PROVIDER.signer_factory)(&Algorithm::HS256, &key).unwrap();
        let tag = signer.try_sign(b"what do ya want for nothing?").unwrap();
        let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let verifier = (jwt_crypto::PROVIDER.verifier_factory)(
            &Algorithm::HS256,
            &DecodingKey::from_secret(b"Jefe"),
        )
        .unwrap();
        assert!(verifier
            .verify(b"what do ya want for nothing?", &tag)
            .is_ok());
        assert!(verifier
            .verify(b"what do ya want for nothing!", &tag)
            .is_err());

        // Algorithms the agent has no backend for, and keys of the wrong family.
        for alg in [
            Algorithm::ES256,
            Algorithm::EdDSA,
            Algorithm::RS512,
            Algorithm::PS256,
        ] {
            let err = (jwt_crypto::PROVIDER.signer_factory)(&alg, &key)
                .err()
                .unwrap();
            assert!(
                matches!(
                    err.kind(),
                    jsonwebtoken::errors::ErrorKind::InvalidAlgorithm
                ),
                "{alg:?}: {err}"
            );
        }
        let err = (jwt_crypto::PROVIDER.signer_factory)(&Algorithm::RS256, &key)
            .err()
            .unwrap();
        assert!(matches!(
            err.kind(),
            jsonwebtoken::errors::ErrorKind::InvalidKeyFormat
        ));
    }

    #[test]
    fn jwt_renewal_timing() {
        let keys = KeyPair::from_private_key(test_key()).unwrap();
        let mut cache = JwtCache::default();
        let t0 = 1_800_000_000;
        let a = cache.get(&keys, "a", "u", None, t0).unwrap();
        let b = cache.get(&keys, "a", "u", None, t0 + 53 * 60).unwrap();
        assert_eq!(a, b, "reused before 54 minutes");
        let c = cache.get(&keys, "a", "u", None, t0 + 54 * 60).unwrap();
        assert_ne!(a, c, "renewed at 54 minutes, before the 59-minute expiry");
        let d = cache.get(&keys, "a", "u", None, t0 + 54 * 60 + 1).unwrap();
        assert_eq!(c, d);
        cache.invalidate();
        let e = cache.get(&keys, "a", "u", None, t0 + 54 * 60 + 2).unwrap();
        assert_ne!(d, e, "invalidate forces a new JWT");
        assert!(JwtCache::needs_renewal(t0, t0 - 3600), "clock went back");
    }

    fn unsigned_jwt(claims: &serde_json::Value) -> String {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.{}",
            b64.encode(br#"{"alg":"HS256","typ":"JWT"}"#),
            b64.encode(claims.to_string()),
            b64.encode(b"sig")
        )
    }

    #[test]
    fn scoped_token_parsing_and_refresh() {
        let now = 1_800_000_000;
        let raw = unsigned_jwt(&serde_json::json!({"exp": now + 3600, "jti": "x"}));
        let t = parse_scoped_token(format!("{raw}\n").as_bytes(), now).unwrap();
        assert_eq!(t.token.expose(), raw);
        assert_eq!(t.exp, now + 3600);
        assert!(!t.needs_refresh(now));
        assert!(!t.needs_refresh(now + 3600 - SCOPED_REFRESH_MARGIN_SECS - 1));
        assert!(t.needs_refresh(now + 3600 - SCOPED_REFRESH_MARGIN_SECS));
        // A 90 s token is refreshed at half-life, not on every call.
        let short = unsigned_jwt(&serde_json::json!({"exp": now + 90}));
        let t = parse_scoped_token(short.as_bytes(), now).unwrap();
        assert_eq!(t.refresh_at, now + 45);
        // Milliseconds are tolerated; JSON {"token": …} accepted.
        let ms = unsigned_jwt(&serde_json::json!({"exp": (now + 600) * 1000}));
        let body = serde_json::json!({ "token": ms }).to_string();
        let t = parse_scoped_token(body.as_bytes(), now).unwrap();
        assert_eq!(t.exp, now + 600);
        // Hostile / malformed answers.
        for bad in [
            b"".as_slice(),
            b"not a jwt",
            b"a.b.c",
            b"{\"token\":5}",
            b"\xff\xfe",
            unsigned_jwt(&serde_json::json!({"sub": "x"})).as_bytes(),
            unsigned_jwt(&serde_json::json!({"exp": "soon"})).as_bytes(),
        ] {
            assert!(parse_scoped_token(bad, now).is_err(), "{bad:?}");
        }
        let expired = unsigned_jwt(&serde_json::json!({"exp": now - 1}));
        let err = parse_scoped_token(expired.as_bytes(), now).unwrap_err();
        assert!(err.contains("NTP"), "{err}");
    }
}
