//! Key-pair JWT verification (the control host's credential) and the emulator's scoped tokens
//! (the ingest host's credential). Time is passed in, in epoch seconds.

use std::collections::HashMap;
use std::fmt;

use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rsa::pkcs1::DecodeRsaPublicKey;
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePublicKey};
use rsa::traits::PublicKeyParts;
use rsa::{RsaPrivateKey, RsaPublicKey};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Longest accepted key-pair JWT lifetime (`exp - iat`), seconds.
pub const MAX_JWT_LIFETIME_S: i64 = 3600;

/// Allowed clock skew for `iat` in the future, seconds.
const IAT_SKEW_S: i64 = 300;

/// Why a token was refused. Every variant maps to HTTP 401.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// Not a parsable JWT.
    #[error("malformed JWT: {0}")]
    Malformed(String),
    /// `iss` is not `ACCOUNT.USER.SHA256:<fp>`.
    #[error("iss claim is not ACCOUNT.USER.SHA256:<fingerprint>")]
    BadIssuer,
    /// No registered key has the fingerprint in `iss`.
    #[error("no registered public key has fingerprint {0}")]
    UnknownFingerprint(String),
    /// Account or user differ from the configured ones.
    #[error("account/user {0} does not match the configured account and user")]
    WrongPrincipal(String),
    /// The signature does not verify.
    #[error("JWT signature verification failed: {0}")]
    BadSignature(String),
    /// `exp` is in the past (or missing).
    #[error("JWT expired")]
    Expired,
    /// `exp - iat` exceeds one hour, or `iat` is missing or in the future.
    #[error("JWT lifetime invalid: {0}")]
    BadLifetime(String),
    /// A scoped token was revoked by "expire all scoped tokens".
    #[error("scoped token revoked")]
    Revoked,
    /// A public key PEM could not be read.
    #[error("cannot read RSA public key: {0}")]
    BadKey(String),
}

/// `base64(SHA-256(DER SubjectPublicKeyInfo))`, Snowflake's `RSA_PUBLIC_KEY_FP` without the prefix.
pub fn fingerprint(key: &RsaPublicKey) -> Result<String, AuthError> {
    let der = key
        .to_public_key_der()
        .map_err(|e| AuthError::BadKey(e.to_string()))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(Sha256::digest(der.as_bytes())))
}

/// Reads an RSA public key from PEM: `PUBLIC KEY` (SPKI), `RSA PUBLIC KEY` (PKCS#1), or a PKCS#8
/// private key (its public half is used).
pub fn parse_public_key_pem(pem: &str) -> Result<RsaPublicKey, AuthError> {
    if let Ok(k) = RsaPublicKey::from_public_key_pem(pem.trim()) {
        return Ok(k);
    }
    if let Ok(k) = RsaPublicKey::from_pkcs1_pem(pem.trim()) {
        return Ok(k);
    }
    RsaPrivateKey::from_pkcs8_pem(pem.trim())
        .map(|k| k.to_public_key())
        .map_err(|e| AuthError::BadKey(e.to_string()))
}

/// Account normalisation (`docs/snowpipe-wire.md`): the text before the first `.`, upper-cased.
pub fn normalise_account(account: &str) -> String {
    account.split('.').next().unwrap_or_default().to_uppercase()
}

/// The verified identity of a key-pair JWT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// `ACCOUNT.USER`.
    pub subject: String,
    /// Role from `scp` (`session:role:<ROLE>`), if any.
    pub role: Option<String>,
}

/// Verifies key-pair JWTs against registered public keys.
#[derive(Clone)]
pub struct KeyPairVerifier {
    account: String,
    user: String,
    keys: HashMap<String, DecodingKey>,
}

impl fmt::Debug for KeyPairVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPairVerifier")
            .field("account", &self.account)
            .field("user", &self.user)
            .field("fingerprints", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl KeyPairVerifier {
    /// A verifier for `account`/`user` (normalised as Snowflake does) with no keys yet.
    pub fn new(account: &str, user: &str) -> Self {
        Self {
            account: normalise_account(account),
            user: user.to_uppercase(),
            keys: HashMap::new(),
        }
    }

    /// Registers a public key (PEM); returns its fingerprint.
    pub fn register_pem(&mut self, pem: &str) -> Result<String, AuthError> {
        let key = parse_public_key_pem(pem)?;
        self.register(&key)
    }

    /// Registers a public key; returns its fingerprint.
    pub fn register(&mut self, key: &RsaPublicKey) -> Result<String, AuthError> {
        let fp = fingerprint(key)?;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let dk = DecodingKey::from_rsa_components(
            &b64.encode(key.n().to_bytes_be()),
            &b64.encode(key.e().to_bytes_be()),
        )
        .map_err(|e| AuthError::BadKey(e.to_string()))?;
        self.keys.insert(fp.clone(), dk);
        Ok(fp)
    }

    /// Number of registered keys.
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// Verifies a key-pair JWT at time `now_s` (epoch seconds).
    pub fn verify(&self, token: &str, now_s: i64) -> Result<Principal, AuthError> {
        let claims: Value = jsonwebtoken::dangerous::insecure_decode_claims(token)
            .map_err(|e| AuthError::Malformed(e.to_string()))?;
        let iss = claims
            .get("iss")
            .and_then(Value::as_str)
            .ok_or(AuthError::BadIssuer)?;
        let (subject, fp) = iss.rsplit_once(".SHA256:").ok_or(AuthError::BadIssuer)?;
        let key = self
            .keys
            .get(fp)
            .ok_or_else(|| AuthError::UnknownFingerprint(fp.to_string()))?;
        let mut v = Validation::new(Algorithm::RS256);
        v.validate_exp = false;
        v.validate_aud = false;
        v.required_spec_claims.clear();
        jsonwebtoken::decode::<Value>(token, key, &v)
            .map_err(|e| AuthError::BadSignature(e.to_string()))?;
        let expected = format!("{}.{}", self.account, self.user);
        if subject != expected {
            return Err(AuthError::WrongPrincipal(subject.to_string()));
        }
        if let Some(sub) = claims.get("sub") {
            if sub.as_str() != Some(expected.as_str()) {
                return Err(AuthError::WrongPrincipal(sub.to_string()));
            }
        }
        let exp = claims
            .get("exp")
            .and_then(time_claim_s)
            .ok_or(AuthError::Expired)?;
        let iat = claims
            .get("iat")
            .and_then(time_claim_s)
            .ok_or_else(|| AuthError::BadLifetime("iat missing".into()))?;
        if exp <= now_s {
            return Err(AuthError::Expired);
        }
        if iat > now_s + IAT_SKEW_S {
            return Err(AuthError::BadLifetime("iat is in the future".into()));
        }
        if exp - iat > MAX_JWT_LIFETIME_S {
            return Err(AuthError::BadLifetime(format!(
                "exp - iat = {} s > 1 h",
                exp - iat
            )));
        }
        let role = claims
            .get("scp")
            .and_then(Value::as_str)
            .and_then(|s| s.strip_prefix("session:role:"))
            .map(str::to_string);
        Ok(Principal {
            subject: expected,
            role,
        })
    }
}

/// Reads a JWT time claim in seconds; values above 1e11 are milliseconds (the official client).
pub fn time_claim_s(v: &Value) -> Option<i64> {
    let n = v.as_f64()?;
    if !n.is_finite() {
        return None;
    }
    let s = if n > 1e11 { n / 1000.0 } else { n };
    Some(s.floor() as i64)
}

/// Claims of a scoped token issued by the emulator.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ScopedClaims {
    /// Always `snowpipe-emulator`.
    pub iss: String,
    /// `ACCOUNT.USER`.
    pub sub: String,
    /// The ingest host the token was requested for.
    pub scope: String,
    /// Issued at, seconds.
    pub iat: i64,
    /// Expiry, seconds (the client reads it in seconds).
    pub exp: i64,
    /// Unique id (the client's refresh loop depends on fresh tokens differing).
    pub jti: String,
    /// Revocation generation: "expire all" bumps the current one.
    pub gen: u64,
}

/// Issues and checks scoped tokens (HS256 with a per-run secret).
#[derive(Clone)]
pub struct ScopedTokens {
    secret: [u8; 32],
    /// Lifetime of issued tokens, seconds.
    pub lifetime_s: i64,
    generation: u64,
}

impl fmt::Debug for ScopedTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScopedTokens")
            .field("secret", &"<redacted>")
            .field("lifetime_s", &self.lifetime_s)
            .field("generation", &self.generation)
            .finish()
    }
}

impl ScopedTokens {
    /// New issuer with a random secret.
    pub fn new(lifetime_s: i64) -> Self {
        Self {
            secret: rand::random(),
            lifetime_s,
            generation: 0,
        }
    }

    /// Issues a token for `sub` and `scope`.
    pub fn issue(&self, sub: &str, scope: &str, now_s: i64) -> Result<String, AuthError> {
        let claims = ScopedClaims {
            iss: "snowpipe-emulator".into(),
            sub: sub.into(),
            scope: scope.into(),
            iat: now_s,
            exp: now_s + self.lifetime_s,
            jti: uuid::Uuid::new_v4().to_string(),
            gen: self.generation,
        };
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(&self.secret),
        )
        .map_err(|e| AuthError::Malformed(e.to_string()))
    }

    /// Checks a scoped token at `now_s`.
    pub fn verify(&self, token: &str, now_s: i64) -> Result<ScopedClaims, AuthError> {
        let mut v = Validation::new(Algorithm::HS256);
        v.validate_exp = false;
        v.validate_aud = false;
        v.required_spec_claims.clear();
        let data = jsonwebtoken::decode::<ScopedClaims>(
            token,
            &DecodingKey::from_secret(&self.secret),
            &v,
        )
        .map_err(|e| AuthError::BadSignature(e.to_string()))?;
        if data.claims.exp <= now_s {
            return Err(AuthError::Expired);
        }
        if data.claims.gen < self.generation {
            return Err(AuthError::Revoked);
        }
        Ok(data.claims)
    }

    /// Makes every token issued so far invalid.
    pub fn expire_all(&mut self) {
        self.generation += 1;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rsa::pkcs8::{EncodePrivateKey, LineEnding};
    use serde_json::json;
    use std::sync::OnceLock;

    /// Two RSA keys, generated once per test binary (keygen is the slow part).
    pub(crate) fn keys() -> &'static (RsaPrivateKey, RsaPrivateKey) {
        static K: OnceLock<(RsaPrivateKey, RsaPrivateKey)> = OnceLock::new();
        K.get_or_init(|| {
            let mut rng = rsa::rand_core::OsRng;
            (
                RsaPrivateKey::new(&mut rng, 2048).unwrap(),
                RsaPrivateKey::new(&mut rng, 2048).unwrap(),
            )
        })
    }

    pub(crate) fn sign(key: &RsaPrivateKey, claims: &Value) -> String {
        let pem = key.to_pkcs8_pem(LineEnding::LF).unwrap();
        jsonwebtoken::encode(
            &Header::new(Algorithm::RS256),
            claims,
            &EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
        )
        .unwrap()
    }

    fn iss(key: &RsaPrivateKey, prefix: &str) -> String {
        format!(
            "{prefix}.SHA256:{}",
            fingerprint(&key.to_public_key()).unwrap()
        )
    }

    fn verifier() -> KeyPairVerifier {
        let mut v = KeyPairVerifier::new("myorg-myacct", "ingest_user");
        let pem = keys()
            .0
            .to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap();
        v.register_pem(&pem).unwrap();
        v
    }

    const NOW: i64 = 1_795_318_549;

    #[test]
    fn good_token_seconds_and_milliseconds() {
        let v = verifier();
        let k = &keys().0;
        let s = sign(
            k,
            &json!({"iss": iss(k, "MYORG-MYACCT.INGEST_USER"), "sub": "MYORG-MYACCT.INGEST_USER", "iat": NOW, "exp": NOW + 3540}),
        );
        assert_eq!(
            v.verify(&s, NOW).unwrap().subject,
            "MYORG-MYACCT.INGEST_USER"
        );
        let ms = sign(
            k,
            &json!({"iss": iss(k, "MYORG-MYACCT.INGEST_USER"), "sub": "MYORG-MYACCT.INGEST_USER",
            "scp": "session:role:INGEST_ROLE", "iat": NOW * 1000, "exp": (NOW + 3540) * 1000}),
        );
        let p = v.verify(&ms, NOW).unwrap();
        assert_eq!(p.role.as_deref(), Some("INGEST_ROLE"));
        // The millisecond token expires on the same instant as the seconds one.
        assert_eq!(v.verify(&ms, NOW + 3540).unwrap_err(), AuthError::Expired);
    }

    #[test]
    fn wrong_key_wrong_fingerprint_wrong_user() {
        let v = verifier();
        let (a, b) = keys();
        // Signed by B but claiming A's fingerprint.
        let t = sign(
            b,
            &json!({"iss": iss(a, "MYORG-MYACCT.INGEST_USER"), "iat": NOW, "exp": NOW + 60}),
        );
        assert!(matches!(v.verify(&t, NOW), Err(AuthError::BadSignature(_))));
        // B's own (unregistered) fingerprint.
        let t = sign(
            b,
            &json!({"iss": iss(b, "MYORG-MYACCT.INGEST_USER"), "iat": NOW, "exp": NOW + 60}),
        );
        assert!(matches!(
            v.verify(&t, NOW),
            Err(AuthError::UnknownFingerprint(_))
        ));
        let t = sign(
            a,
            &json!({"iss": iss(a, "MYORG-MYACCT.OTHER"), "iat": NOW, "exp": NOW + 60}),
        );
        assert!(matches!(
            v.verify(&t, NOW),
            Err(AuthError::WrongPrincipal(_))
        ));
        let t = sign(
            a,
            &json!({"iss": "MYORG-MYACCT.INGEST_USER", "iat": NOW, "exp": NOW + 60}),
        );
        assert_eq!(v.verify(&t, NOW).unwrap_err(), AuthError::BadIssuer);
        let t = sign(
            a,
            &json!({"iss": iss(a, "MYORG-MYACCT.INGEST_USER"), "sub": "X.Y", "iat": NOW, "exp": NOW + 60}),
        );
        assert!(matches!(
            v.verify(&t, NOW),
            Err(AuthError::WrongPrincipal(_))
        ));
    }

    #[test]
    fn expiry_and_lifetime() {
        let v = verifier();
        let k = &keys().0;
        let i = iss(k, "MYORG-MYACCT.INGEST_USER");
        let t = sign(k, &json!({"iss": i, "iat": NOW - 100, "exp": NOW - 1}));
        assert_eq!(v.verify(&t, NOW).unwrap_err(), AuthError::Expired);
        let t = sign(k, &json!({"iss": i, "iat": NOW, "exp": NOW + 3601}));
        assert!(matches!(v.verify(&t, NOW), Err(AuthError::BadLifetime(_))));
        let t = sign(
            k,
            &json!({"iss": i, "iat": NOW * 1000, "exp": (NOW + 3601) * 1000}),
        );
        assert!(matches!(v.verify(&t, NOW), Err(AuthError::BadLifetime(_))));
        let t = sign(k, &json!({"iss": i, "iat": NOW, "exp": NOW + 3600}));
        assert!(v.verify(&t, NOW).is_ok());
        let t = sign(k, &json!({"iss": i, "exp": NOW + 60}));
        assert!(matches!(v.verify(&t, NOW), Err(AuthError::BadLifetime(_))));
        let t = sign(k, &json!({"iss": i, "iat": NOW}));
        assert_eq!(v.verify(&t, NOW).unwrap_err(), AuthError::Expired);
    }

    #[test]
    fn algorithm_confusion_is_refused() {
        let v = verifier();
        let k = &keys().0;
        let claims =
            json!({"iss": iss(k, "MYORG-MYACCT.INGEST_USER"), "iat": NOW, "exp": NOW + 60});
        // HS256 keyed with the public key PEM (the classic RS/HS confusion) must not verify.
        let pem = k.to_public_key().to_public_key_pem(LineEnding::LF).unwrap();
        let t = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(pem.as_bytes()),
        )
        .unwrap();
        assert!(matches!(v.verify(&t, NOW), Err(AuthError::BadSignature(_))));
        // alg=none: header and payload with an empty signature.
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let t = format!(
            "{}.{}.",
            b64.encode(r#"{"alg":"none","typ":"JWT"}"#),
            b64.encode(claims.to_string())
        );
        assert!(v.verify(&t, NOW).is_err());
    }

    #[test]
    fn garbage_tokens_do_not_panic() {
        let v = verifier();
        for t in [
            "",
            ".",
            "a.b.c",
            "eyJ.eyJ.sig",
            "\u{0}\u{ffff}",
            &"A".repeat(100_000),
        ] {
            assert!(v.verify(t, NOW).is_err());
        }
    }

    #[test]
    fn normalisation() {
        assert_eq!(normalise_account("xy12345.us-east-1"), "XY12345");
        assert_eq!(normalise_account("MyOrg-MyAcct"), "MYORG-MYACCT");
        assert_eq!(
            time_claim_s(&json!(1_795_318_549_408u64)),
            Some(1_795_318_549)
        );
        assert_eq!(time_claim_s(&json!(1_795_318_549)), Some(1_795_318_549));
        assert_eq!(time_claim_s(&json!("1")), None);
    }

    #[test]
    fn private_key_pem_registers_public_half() {
        let mut v = KeyPairVerifier::new("a", "u");
        let pem = keys().0.to_pkcs8_pem(LineEnding::LF).unwrap();
        let fp = v.register_pem(&pem).unwrap();
        assert_eq!(fp, fingerprint(&keys().0.to_public_key()).unwrap());
        assert!(v.register_pem("not a key").is_err());
    }

    #[test]
    fn scoped_tokens() {
        let mut s = ScopedTokens::new(60);
        let t1 = s.issue("A.U", "127.0.0.1", NOW).unwrap();
        let t2 = s.issue("A.U", "127.0.0.1", NOW).unwrap();
        assert_ne!(t1, t2, "unique jti");
        let c = s.verify(&t1, NOW + 59).unwrap();
        assert_eq!(c.exp, NOW + 60);
        assert_eq!(s.verify(&t1, NOW + 60).unwrap_err(), AuthError::Expired);
        s.expire_all();
        assert_eq!(s.verify(&t2, NOW).unwrap_err(), AuthError::Revoked);
        let t3 = s.issue("A.U", "127.0.0.1", NOW).unwrap();
        assert!(s.verify(&t3, NOW).is_ok());
        let other = ScopedTokens::new(60);
        assert!(matches!(
            other.verify(&t3, NOW),
            Err(AuthError::BadSignature(_))
        ));
    }
}
