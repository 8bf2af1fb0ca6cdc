//! `badge-agent update`: install a signed release with automatic rollback (see [`crate::update`];
//! the health gate asks the agent's private socket, never the TCP port),
//! and the release engineer's `update pack` / `update sign`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::config::{Config, DEFAULT_HEALTH_SOCKET};
use crate::update::{self, ReadyzProbe, Systemctl, UpdateOptions};

/// Arguments of `badge-agent update`.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct UpdateArgs {
    /// Release engineering (on a build machine, not a gateway).
    #[command(subcommand)]
    pub release: Option<ReleaseTool>,
    /// Release artifact (`.tar` with `.tar.sig` beside it) or a directory holding them.
    #[arg(long, default_value = update::DEFAULT_SOURCE)]
    pub source: PathBuf,
    /// Release public key installed with the package.
    #[arg(long, default_value = update::DEFAULT_PUBLIC_KEY)]
    pub public_key: PathBuf,
    /// Where versions are installed (`<root>/<version>`, `<root>/current`).
    #[arg(long, default_value = update::DEFAULT_INSTALL_ROOT)]
    pub root: PathBuf,
    /// Install even if the version is already installed.
    #[arg(long)]
    pub force_reinstall: bool,
    /// Only finish or undo an interrupted update; install nothing new.
    #[arg(long)]
    pub recover_only: bool,
}

/// Building a release artifact.
#[derive(Debug, clap::Subcommand)]
pub enum ReleaseTool {
    /// Pack a directory (the binary and anything beside it) into a release `.tar` with its manifest.
    Pack {
        /// Directory whose files make up the release.
        #[arg(long)]
        dir: PathBuf,
        /// The release's semantic version (gateways refuse downgrades).
        #[arg(long, value_parser = parse_version)]
        version: semver::Version,
        /// Target architecture as Rust names it (`aarch64`, `arm`); gateways refuse other ones.
        #[arg(long)]
        arch: String,
        /// The artifact to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign an artifact with the release private key; writes `<artifact>.sig` beside it.
    Sign {
        /// The release private key (PEM, PKCS#8 or PKCS#1). Keep it off the gateways.
        #[arg(long)]
        key: PathBuf,
        /// The artifact to sign.
        artifact: PathBuf,
    },
}

fn parse_version(s: &str) -> Result<semver::Version, String> {
    semver::Version::parse(s).map_err(|e| format!("not a semantic version (e.g. 1.4.0): {e}"))
}

/// Runs an update against systemd and the agent's `/readyz`, or a release tool.
pub fn run(args: &UpdateArgs, config_path: &Path) -> anyhow::Result<ExitCode> {
    match &args.release {
        Some(ReleaseTool::Pack {
            dir,
            version,
            arch,
            out,
        }) => {
            update::pack_dir(dir, version, arch, out)?;
            println!("{}", out.display());
            return Ok(ExitCode::SUCCESS);
        }
        Some(ReleaseTool::Sign { key, artifact }) => {
            println!("{}", update::sign_artifact(artifact, key)?.display());
            return Ok(ExitCode::SUCCESS);
        }
        None => {}
    }
    let mut buffer_path = None;
    let probe = match Config::load(config_path) {
        Ok((config, _)) => {
            buffer_path = Some(config.buffer.resolved_path());
            ReadyzProbe::for_config(&config)
        }
        // Recovery must work even if the configuration is broken: it only needs /readyz.
        Err(e) if args.recover_only => {
            tracing::warn!(error = %e, "configuration unreadable; recovering with the default status socket");
            ReadyzProbe::new(DEFAULT_HEALTH_SOCKET)
        }
        Err(e) => return Err(e.into()),
    };
    let mut opts = UpdateOptions::new(&args.source);
    opts.public_key.clone_from(&args.public_key);
    opts.install_root.clone_from(&args.root);
    opts.force_reinstall = args.force_reinstall;
    opts.buffer_path = buffer_path;
    let mut systemd = Systemctl;
    if args.recover_only {
        let report = update::recover(&opts, &mut systemd, &probe)?;
        println!("{report:?}");
    } else {
        let outcome = update::run_update(&opts, &mut systemd, &probe)?;
        println!("{outcome:?}");
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use clap::Parser;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        update: UpdateArgs,
    }

    fn run_cli(args: &[&str]) -> anyhow::Result<ExitCode> {
        let cli = Cli::try_parse_from(std::iter::once("update").chain(args.iter().copied()))?;
        run(&cli.update, Path::new("/nonexistent/config.toml"))
    }

    #[test]
    fn pack_then_sign_gives_an_artifact_the_gateway_accepts() {
        use rsa::pkcs8::{EncodePrivateKey, LineEnding};
        let tmp = tempfile::tempdir().unwrap();
        let dist = tmp.path().join("dist");
        std::fs::create_dir(&dist).unwrap();
        std::fs::write(dist.join("badge-agent"), b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(
            dist.join("badge-agent"),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
        let key_path = tmp.path().join("release.pem");
        std::fs::write(
            &key_path,
            key.to_pkcs8_pem(LineEnding::LF).unwrap().as_bytes(),
        )
        .unwrap();
        let out = tmp.path().join("badge-agent-1.4.0.tar");
        let out_s = out.to_str().unwrap();
        let dist_s = dist.to_str().unwrap();
        run_cli(&[
            "pack",
            "--dir",
            dist_s,
            "--version",
            "1.4.0",
            "--arch",
            "aarch64",
            "--out",
            out_s,
        ])
        .unwrap();
        run_cli(&["sign", "--key", key_path.to_str().unwrap(), out_s]).unwrap();
        let artifact = update::read_verified(&out, &key.to_public_key()).unwrap();
        assert_eq!(artifact.manifest.version.to_string(), "1.4.0");
        assert_eq!(artifact.manifest.arch, "aarch64");
    }

    #[test]
    fn bad_version_and_mixed_modes_are_refused() {
        let err = run_cli(&[
            "pack",
            "--dir",
            "d",
            "--version",
            "1.4",
            "--arch",
            "arm",
            "--out",
            "o",
        ]);
        assert!(err.unwrap_err().to_string().contains("semantic version"));
        assert!(run_cli(&["--recover-only", "sign", "--key", "k", "a"]).is_err());
    }

    #[test]
    fn a_broken_config_stops_an_update() {
        let err = run_cli(&["--root", "/nonexistent/root"]).unwrap_err();
        assert!(format!("{err:#}").contains("config"), "{err:#}");
    }
}
