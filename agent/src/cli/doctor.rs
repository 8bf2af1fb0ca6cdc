//! `badge-agent doctor`: check every link from this gateway to Snowflake, each with a fix.
//!
//! It never opens the gateway's channel: an open bumps the channel's sequencer and would fence
//! a running agent. Channel status exercises the same path (DNS, TLS, JWT, scoped token, pipe).

use std::path::Path;
use std::process::ExitCode;

use crate::config::Config;
use crate::snowpipe::{ClientConfig, SnowpipeClient};

struct Report {
    failed: usize,
}

impl Report {
    fn check(&mut self, name: &str, result: Result<String, String>) {
        match result {
            Ok(detail) => println!("PASS  {name}: {detail}"),
            Err(fix) => {
                self.failed += 1;
                println!("FAIL  {name}: {fix}");
            }
        }
    }
}

/// What `doctor` says when started as root: it writes into directories the agent's user owns,
/// and root must never follow a path another user can write.
pub const ROOT_REFUSAL: &str = "badge-agent doctor must not run as root: it probes directories \
the agent's user can write, where a planted link could redirect root's writes. \
Run it as the service user: sudo -u badge-agent badge-agent doctor";

/// Runs the checks; exit code 1 if any failed, 2 if started as root.
pub fn run(config_path: &Path) -> anyhow::Result<ExitCode> {
    if let Err(refusal) = refuse_root(crate::update::effective_uid()) {
        eprintln!("error: {refusal}");
        return Ok(ExitCode::from(2));
    }
    run_checks(config_path)
}

/// Root gets [`ROOT_REFUSAL`]; any other user may run the checks.
fn refuse_root(euid: u32) -> Result<(), &'static str> {
    if euid == 0 {
        Err(ROOT_REFUSAL)
    } else {
        Ok(())
    }
}

fn run_checks(config_path: &Path) -> anyhow::Result<ExitCode> {
    let mut report = Report { failed: 0 };
    let loaded = Config::load(config_path);
    report.check(
        "configuration",
        loaded
            .as_ref()
            .map(|(c, r)| format!("gateway {} with {} reader(s)", c.gateway_id, r.len()))
            .map_err(ToString::to_string),
    );
    let Ok((config, _)) = loaded else {
        return Ok(ExitCode::FAILURE);
    };
    report.check(
        "clock",
        match crate::clock::kernel_clock_synced() {
            Some(true) => Ok("NTP-synchronised".to_owned()),
            Some(false) => Err("not synchronised: swipes are stamped clock_synced=false and JWTs may be rejected; enable systemd-timesyncd or chrony".to_owned()),
            None => Err("cannot ask the kernel".to_owned()),
        },
    );
    let buffer_dir = config.buffer.resolved_path();
    report.check("buffer directory", check_writable(&buffer_dir));
    let Some(sf) = &config.snowflake else {
        report.check(
            "snowflake",
            Err("no [snowflake] section: swipes are buffered but never sent".to_owned()),
        );
        return Ok(ExitCode::FAILURE);
    };
    let key = crate::snowpipe::auth::load_private_key(&sf.private_key_file);
    report.check(
        "private key",
        key.as_ref()
            .map(|k| format!("RSA_PUBLIC_KEY_FP should be SHA256:{}", k.fingerprint()))
            .map_err(ToString::to_string),
    );
    if key.is_ok() {
        let channel = sf.channel_name(&config.gateway_id).to_owned();
        let result =
            SnowpipeClient::new(ClientConfig::from_snowflake_config(sf)).and_then(|mut client| {
                let statuses = client.channel_status(&[channel.as_str()])?;
                let host = client.ingest_host().unwrap_or("?").to_owned();
                Ok((host, statuses))
            });
        report.check(
            "snowflake (DNS, TLS, JWT, scoped token, pipe)",
            result
                .map(|(host, statuses)| {
                    let committed = statuses
                        .get(&channel)
                        .cloned()
                        .flatten()
                        .and_then(|s| s.last_committed_offset_token);
                    format!(
                        "ingest host {host}; channel {channel} committed offset {}",
                        committed.as_deref().unwrap_or("none yet")
                    )
                })
                .map_err(|e| e.to_string()),
        );
    }
    if report.failed == 0 {
        println!("all checks passed");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("{} check(s) failed", report.failed);
        Ok(ExitCode::FAILURE)
    }
}

/// Whether this process can create files in `dir` (or its parent while `dir` does not exist yet).
///
/// The probe is a new file with a unique name, created with `O_CREAT | O_EXCL | O_NOFOLLOW`: a
/// link planted under any name in the directory is never followed, and an existing file is never
/// opened, so the probe cannot write anywhere but into a file it just created itself.
fn check_writable(dir: &Path) -> Result<String, String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;

    let probe_dir = if dir.exists() {
        dir.to_owned()
    } else {
        dir.parent().unwrap_or(dir).to_owned()
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let probe = probe_dir.join(format!(
        ".badge-agent-doctor-{}-{nanos:09}",
        std::process::id()
    ));
    let result = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&probe)
        .and_then(|mut file| {
            let written = file.write_all(b"ok");
            // The file is ours (create_new): remove it even if the write failed.
            let removed = std::fs::remove_file(&probe);
            written.and(removed)
        });
    result
        .map(|()| format!("{} is writable", probe_dir.display()))
        .map_err(|e| {
            format!(
                "cannot write in {}: {e}; under systemd StateDirectory= creates it for the badge-agent user",
                probe_dir.display()
            )
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn probe_never_follows_a_planted_link() {
        let tmp = tempfile::tempdir().unwrap();
        let buffer = tmp.path().join("buffer");
        std::fs::create_dir(&buffer).unwrap();
        let target = tmp.path().join("root-owned-file");
        std::fs::write(&target, b"precious").unwrap();
        // The old fixed probe name, and a spread of guesses at unique names.
        std::os::unix::fs::symlink(&target, buffer.join(".badge-agent-doctor")).unwrap();
        for i in 0..8 {
            std::os::unix::fs::symlink(
                &target,
                buffer.join(format!(".badge-agent-doctor-{}-{i}", std::process::id())),
            )
            .unwrap();
        }
        let verdict = check_writable(&buffer);
        assert!(verdict.is_ok(), "{verdict:?}");
        assert_eq!(std::fs::read(&target).unwrap(), b"precious");
        // Only the planted links remain: the probe cleaned up after itself.
        assert_eq!(std::fs::read_dir(&buffer).unwrap().count(), 9);
    }

    #[test]
    fn unwritable_directory_is_reported_with_a_fix() {
        let err = check_writable(Path::new("/proc/1")).unwrap_err();
        assert!(err.contains("StateDirectory="), "{err}");
    }

    #[test]
    fn root_is_told_to_use_the_service_user() {
        assert_eq!(refuse_root(0), Err(ROOT_REFUSAL));
        assert!(ROOT_REFUSAL.contains("sudo -u badge-agent badge-agent doctor"));
        assert_eq!(refuse_root(999), Ok(()));
    }
}
