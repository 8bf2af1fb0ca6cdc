//! Wall-clock stamps for swipes, and whether they can be trusted.
//!
//! Most Raspberry Pis have no battery-backed clock: after a power cut while offline, the system
//! time can be days off until NTP catches up. Every swipe therefore carries `clock_synced`, read
//! from the kernel's NTP state (the same flag `timedatectl` shows as "System clock synchronized").

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, UTC (negative if the clock is before 1970).
pub fn now_unix_ms() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of GPIO edge-event timestamps, so reader
/// timeouts and kernel-stamped edges can be compared directly.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    secs.saturating_mul(1_000_000_000).saturating_add(nanos)
}

/// Monotonic nanoseconds since the first call (no kernel edge timestamps off Linux).
#[cfg(not(target_os = "linux"))]
pub fn monotonic_ns() -> u64 {
    use std::sync::OnceLock;
    use std::time::Instant;
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    u64::try_from(ORIGIN.get_or_init(Instant::now).elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Whether the kernel considers the system clock NTP-synchronised. `false` when unknown.
pub fn clock_synced() -> bool {
    kernel_clock_synced().unwrap_or(false)
}

/// The kernel's answer, or `None` when it cannot be asked.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub fn kernel_clock_synced() -> Option<bool> {
    // SAFETY: `timex` is a plain C struct for which all-zero is a valid value; with `modes == 0`
    // adjtimex(2) only reads the kernel's clock state into it.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    let state = unsafe { libc::adjtimex(&mut tx) };
    if state == -1 {
        return None;
    }
    Some(state != libc::TIME_ERROR && tx.status & libc::STA_UNSYNC == 0)
}

/// The kernel's answer, or `None` when it cannot be asked.
#[cfg(not(target_os = "linux"))]
pub fn kernel_clock_synced() -> Option<bool> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_is_after_2024() {
        assert!(now_unix_ms() > 1_704_067_200_000);
    }

    #[test]
    fn monotonic_clock_moves_forward() {
        let a = monotonic_ns();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = monotonic_ns();
        assert!(b >= a + 1_000_000, "{a} -> {b}");
    }

    #[test]
    fn kernel_answers_on_linux() {
        // The value depends on the machine; that the kernel answers at all is what we rely on.
        assert_eq!(kernel_clock_synced().is_some(), cfg!(target_os = "linux"));
    }
}
