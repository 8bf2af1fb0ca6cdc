//! systemd readiness and watchdog notifications.
//!
//! `WATCHDOG=1` is sent only while every pipeline heartbeat is fresh (see [`super::Health`]), never
//! from a blind timer: if a reader loop, the group committer or the drain wedges, the pings stop
//! and systemd restarts the service after `WatchdogSec=`.

use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;

use super::Health;

/// Tells systemd the service is ready (no-op outside systemd).
pub fn notify_ready(status: &str) {
    let _ = sd_notify::notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Tells systemd the service is stopping (no-op outside systemd).
pub fn notify_stopping() {
    let _ = sd_notify::notify(&[NotifyState::Stopping]);
}

/// The interval systemd expects pings at, if the watchdog is enabled for this process.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled()
}

/// Pings the watchdog at half its interval while the pipeline makes progress.
pub async fn run(health: Arc<Health>, interval: Duration) {
    let period = interval / 2;
    loop {
        tokio::time::sleep(period).await;
        let stalled = health.stalled();
        if stalled.is_empty() {
            let _ = sd_notify::notify(&[NotifyState::Watchdog]);
        } else {
            tracing::error!(
                stalled = %stalled.join(", "),
                "pipeline stalled; withholding the watchdog ping so systemd restarts the agent"
            );
        }
    }
}
