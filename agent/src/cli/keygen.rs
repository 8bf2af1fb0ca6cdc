//! `badge-agent keygen`: create the key pair Snowflake authenticates the gateway with.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use rsa::RsaPublicKey;

use crate::snowpipe::auth::{generate_private_key, write_private_key};
use crate::snowpipe::{public_key_base64_der, public_key_fingerprint};

/// Writes a new PKCS#8 RSA key (mode 0600, never overwriting) and prints how to register it.
pub fn run(out: &Path, user: &str) -> anyhow::Result<ExitCode> {
    let key = generate_private_key(2048).map_err(anyhow::Error::msg)?;
    write_private_key(out, &key).with_context(|| format!("writing {}", out.display()))?;
    let public = RsaPublicKey::from(&key);
    println!("wrote {} (mode 0600)", out.display());
    println!();
    println!("Register it in Snowflake (as a user with the SECURITYADMIN role):");
    println!();
    println!(
        "  ALTER USER {user} SET RSA_PUBLIC_KEY='{}';",
        public_key_base64_der(&public)
    );
    println!();
    println!("DESCRIBE USER {user} must then show:");
    println!(
        "  RSA_PUBLIC_KEY_FP = SHA256:{}",
        public_key_fingerprint(&public)
    );
    println!();
    println!("Then run `badge-agent doctor` to check the whole path.");
    Ok(ExitCode::SUCCESS)
}
