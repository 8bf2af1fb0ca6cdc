//! Production implementations of [`ServiceManager`] (systemctl) and [`HealthProbe`] (`/readyz`).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use super::{HealthProbe, ServiceManager};

/// The effective user id of this process (root checks: the updater, `doctor`).
#[allow(unsafe_code)]
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions, cannot fail and touches no memory of ours.
    unsafe { libc::geteuid() }
}

/// Drives systemd through `systemctl` (the update unit runs as root, so no polkit is involved).
#[derive(Debug, Default, Clone, Copy)]
pub struct Systemctl;

impl ServiceManager for Systemctl {
    fn restart(&mut self, unit: &str) -> Result<(), String> {
        // A failed new version may have used up StartLimitBurst; without a reset the rollback's
        // restart would be refused ("start request repeated too quickly"). Best effort.
        let _ = Command::new("systemctl")
            .args(["reset-failed", "--", unit])
            .status();
        // For Type=notify units this blocks until READY=1, failure or TimeoutStartSec.
        let status = Command::new("systemctl")
            .args(["restart", "--", unit])
            .status()
            .map_err(|e| format!("cannot run systemctl: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("systemctl restart {unit}: {status}"))
        }
    }

    fn is_active(&mut self, unit: &str) -> Result<bool, String> {
        let status = Command::new("systemctl")
            .args(["is-active", "--quiet", "--", unit])
            .status()
            .map_err(|e| format!("cannot run systemctl: {e}"))?;
        Ok(status.success())
    }
}

/// `GET /readyz` over the agent's private Unix socket (`[health] socket`, by default
/// `/run/badge-agent/agent.sock`); healthy means HTTP status 200. Not the TCP port: a local
/// process squatting it could otherwise pass or fail a release in the agent's name.
#[derive(Debug, Clone)]
pub struct ReadyzProbe {
    /// The agent's private socket.
    pub socket: PathBuf,
    /// Connect and read timeout per check.
    pub timeout: Duration,
}

impl ReadyzProbe {
    /// Probe for `socket` with a 2 s timeout.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            timeout: Duration::from_secs(2),
        }
    }

    /// The probe for the agent that runs with `config`.
    pub fn for_config(config: &crate::config::Config) -> Self {
        Self::new(config.health.resolved_socket(&config.buffer))
    }
}

impl HealthProbe for ReadyzProbe {
    fn check(&self) -> Result<(), String> {
        match crate::health::server::fetch_private(&self.socket, "/readyz", self.timeout) {
            Ok((200, _)) => Ok(()),
            Ok((status, body)) => Err(format!("/readyz answered {status}: {}", body.trim())),
            Err(e) => Err(e.to_string()),
        }
    }
}
