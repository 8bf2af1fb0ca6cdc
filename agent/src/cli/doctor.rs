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

/// Runs the checks; exit code 1 if any failed.
pub fn run(config_path: &Path) -> anyhow::Result<ExitCode> {
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

fn check_writable(dir: &Path) -> Result<String, String> {
    let probe_dir = if dir.exists() {
        dir.to_owned()
    } else {
        dir.parent().unwrap_or(dir).to_owned()
    };
    let probe = probe_dir.join(".badge-agent-doctor");
    std::fs::write(&probe, b"ok")
        .and_then(|()| std::fs::remove_file(&probe))
        .map(|()| format!("{} is writable", probe_dir.display()))
        .map_err(|e| {
            format!(
                "cannot write in {}: {e}; under systemd StateDirectory= creates it for the badge-agent user",
                probe_dir.display()
            )
        })
}
