//! `badge-agent status`: ask the running agent for its `/status` document over its private
//! socket (`[health] socket`).

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use crate::config::Config;
use crate::health::server::fetch_private;

/// Prints the running agent's status, human-readable or as JSON.
pub fn run(config_path: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let (config, _) = Config::load(config_path)?;
    // The private socket, never the TCP port: anyone local could squat that one.
    let socket = config.health.resolved_socket(&config.buffer);
    let (status, body) = fetch_private(&socket, "/status", Duration::from_secs(5)).context(
        "is the agent running (systemctl status badge-agent), and are you root or badge-agent?",
    )?;
    if status != 200 {
        anyhow::bail!("the agent answered HTTP {status}: {body}");
    }
    if json {
        println!("{body}");
        return Ok(ExitCode::SUCCESS);
    }
    let doc: serde_json::Value = serde_json::from_str(&body).context("unreadable /status")?;
    print!("{}", render(&doc));
    Ok(ExitCode::SUCCESS)
}

/// Human-readable rendering of a `/status` document (kept loose: an older agent may differ).
fn render(doc: &serde_json::Value) -> String {
    let now_ms = crate::clock::now_unix_ms();
    let get = |path: &[&str]| {
        let mut value = doc;
        for key in path {
            value = &value[*key];
        }
        match value {
            serde_json::Value::Null => "-".to_owned(),
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        }
    };
    let oldest_age = doc["buffer"]["oldest_unsent_ms"]
        .as_i64()
        .map_or("-".to_owned(), |ms| format_age(now_ms - ms));
    let mut out = format!(
        "gateway {} (agent {}), up {}s, live {}, ready {}\n\
         buffer:  {} swipes, {} bytes, oldest unsent {}, next seq {}\n\
         drain:   {} on channel {}, committed {}, sent {}, last error {}\n",
        get(&["gateway_id"]),
        get(&["version"]),
        get(&["uptime_secs"]),
        get(&["live"]),
        get(&["ready"]),
        get(&["buffer", "depth"]),
        get(&["buffer", "bytes"]),
        oldest_age,
        get(&["buffer", "next_seq"]),
        get(&["drain", "state"]),
        get(&["drain", "channel"]),
        get(&["drain", "committed"]),
        get(&["drain", "sent"]),
        get(&["drain", "last_error"]),
    );
    if let Some(readers) = doc["readers"].as_object() {
        for (id, r) in readers {
            out.push_str(&format!(
                "reader {id}: {} {}, {} swipes, {} errors{}\n",
                r["kind"].as_str().unwrap_or("?"),
                if r["connected"].as_bool() == Some(true) {
                    "connected"
                } else {
                    "DISCONNECTED"
                },
                r["swipes"],
                r["errors"],
                r["last_error"]
                    .as_str()
                    .map(|e| format!(", last error: {e}"))
                    .unwrap_or_default(),
            ));
        }
    }
    out
}

fn format_age(ms: i64) -> String {
    let secs = ms.max(0) / 1000;
    match secs {
        0..=119 => format!("{secs}s ago"),
        120..=7199 => format!("{}m ago", secs / 60),
        _ => format!("{}h ago", secs / 3600),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::health::Health;

    #[test]
    fn renders_a_real_status_document() {
        let health = Health::new("gw-9", "0.1.0", "dev");
        health.update_reader("door", |r| {
            r.kind = "serial".into();
            r.connected = false;
            r.swipes = 3;
            r.last_error = Some("device unplugged".into());
        });
        health.update_buffer(|b| {
            b.depth = 12;
            b.oldest_unsent_ms = Some(crate::clock::now_unix_ms() - 300_000);
        });
        let doc = serde_json::to_value(health.status()).unwrap();
        let text = render(&doc);
        assert!(text.contains("gateway gw-9"), "{text}");
        assert!(text.contains("buffer:  12 swipes"), "{text}");
        assert!(text.contains("oldest unsent 5m ago"), "{text}");
        assert!(
            text.contains("reader door: serial DISCONNECTED, 3 swipes"),
            "{text}"
        );
        assert!(text.contains("last error: device unplugged"), "{text}");
    }
}
