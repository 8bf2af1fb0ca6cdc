//! `badge-agent update`: install a signed release with automatic rollback (see [`crate::update`]).

use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::Config;
use crate::update::{self, ReadyzProbe, Systemctl, UpdateOptions};

/// Arguments of `badge-agent update`.
#[derive(Debug, clap::Args)]
pub struct UpdateArgs {
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

/// Runs an update against systemd and the agent's `/readyz`.
pub fn run(args: &UpdateArgs, config_path: &std::path::Path) -> anyhow::Result<ExitCode> {
    let (config, _) = Config::load(config_path)?;
    let addr = config.health.listen.parse()?;
    let mut opts = UpdateOptions::new(&args.source);
    opts.public_key.clone_from(&args.public_key);
    opts.install_root.clone_from(&args.root);
    opts.force_reinstall = args.force_reinstall;
    let mut systemd = Systemctl;
    let probe = ReadyzProbe::new(addr);
    if args.recover_only {
        let report = update::recover(&opts, &mut systemd, &probe)?;
        println!("{report:?}");
    } else {
        let outcome = update::run_update(&opts, &mut systemd, &probe)?;
        println!("{outcome:?}");
    }
    Ok(ExitCode::SUCCESS)
}
