//! Production implementations of [`ServiceManager`] (systemctl) and [`HealthProbe`] (`/readyz`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
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

/// `GET /readyz` on the agent's loopback health listener (`[health] listen`, default
/// 127.0.0.1:9464); healthy means HTTP status 200. Plain HTTP/1.1 over std: no TLS on loopback.
#[derive(Debug, Clone, Copy)]
pub struct ReadyzProbe {
    /// Address of the health listener.
    pub addr: SocketAddr,
    /// Connect and read timeout per check.
    pub timeout: Duration,
}

impl ReadyzProbe {
    /// Probe for `addr` with a 2 s timeout.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            timeout: Duration::from_secs(2),
        }
    }
}

impl HealthProbe for ReadyzProbe {
    fn check(&self) -> Result<(), String> {
        let mut stream = TcpStream::connect_timeout(&self.addr, self.timeout)
            .map_err(|e| format!("connect {}: {e}", self.addr))?;
        stream
            .set_read_timeout(Some(self.timeout))
            .and_then(|()| stream.set_write_timeout(Some(self.timeout)))
            .map_err(|e| format!("socket: {e}"))?;
        let request = format!(
            "GET /readyz HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.addr
        );
        stream
            .write_all(request.as_bytes())
            .map_err(|e| format!("send: {e}"))?;
        // Only the status line matters; read until it is complete or the peer closes.
        let mut buf = Vec::with_capacity(256);
        let mut chunk = [0u8; 256];
        while !buf.windows(2).any(|w| w == b"\r\n") && buf.len() < 4096 {
            let n = stream.read(&mut chunk).map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let head = String::from_utf8_lossy(&buf);
        let status_line = head.lines().next().unwrap_or("");
        match status_line.split_whitespace().nth(1) {
            Some("200") if status_line.starts_with("HTTP/1.") => Ok(()),
            _ => Err(format!("/readyz answered `{status_line}`")),
        }
    }
}
