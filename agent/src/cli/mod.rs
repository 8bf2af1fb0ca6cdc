//! Command-line interface: parses arguments, sets up logging, dispatches to the subcommands.

mod decode;
#[cfg(feature = "demo")]
mod demo;
mod doctor;
mod keygen;
mod osdp;
mod run;
mod status;
mod update;
mod validate;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::DEFAULT_CONFIG_PATH;

/// badge-gateway edge agent: badge readers → durable buffer → Snowflake, exactly once.
#[derive(Debug, Parser)]
#[command(name = "badge-agent", version, about, long_about = None)]
pub struct Cli {
    /// Configuration file.
    #[arg(long, short, global = true, env = "BADGE_AGENT_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
    /// Log output: `auto` uses journald under systemd and readable lines on a terminal.
    #[arg(long, global = true, value_enum, default_value_t = LogTarget::Auto)]
    pub log: LogTarget,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Where logs go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogTarget {
    /// journald when started by systemd, else stderr.
    Auto,
    /// Native journald fields.
    Journald,
    /// Human-readable lines on stderr.
    Stderr,
}

/// Subcommands of `badge-agent`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent (what the systemd unit starts).
    Run,
    /// Simulated readers → agent → local Snowpipe emulator, then prove every swipe landed once.
    #[cfg(feature = "demo")]
    Demo(demo::DemoArgs),
    /// Create the key pair for Snowflake key-pair authentication and print how to register it.
    Keygen {
        /// Where to write the PKCS#8 private key (mode 0600; never overwritten).
        #[arg(long, default_value = "/etc/badge-agent/rsa_key.p8")]
        out: PathBuf,
        /// The Snowflake user the key is for (used in the printed ALTER USER statement).
        #[arg(long, default_value = "BADGE_INGEST_SVC")]
        user: String,
    },
    /// Check configuration, key, clock, buffer and the path to Snowflake, each with a fix.
    Doctor,
    /// Install a signed release and roll back if it does not become ready.
    Update(update::UpdateArgs),
    /// Check a configuration file and print what the agent would run.
    Validate,
    /// Show the running agent's buffer, drain and reader state.
    Status {
        /// Print the raw JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Decode reader bytes or Wiegand bits and print the result as JSON (for field technicians).
    Decode(decode::DecodeArgs),
    /// OSDP bus tools: list readers, set a reader's secure-channel key, make a key file.
    Osdp(osdp::OsdpArgs),
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log);
    let result = match &cli.command {
        Command::Run => run::run(&cli.config),
        #[cfg(feature = "demo")]
        Command::Demo(args) => demo::run(args),
        Command::Keygen { out, user } => keygen::run(out, user),
        Command::Doctor => doctor::run(&cli.config),
        Command::Update(args) => update::run(args, &cli.config),
        Command::Validate => validate::run(&cli.config),
        Command::Status { json } => status::run(&cli.config, *json),
        Command::Decode(args) => decode::run(args),
        Command::Osdp(args) => osdp::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Log targets whose verbose levels dump raw HTTP traffic or headers, and the most they may log
/// whatever `RUST_LOG` says: `ureq_proto` traces every byte on the wire (the `Authorization:
/// Bearer` header and the token exchange's body among them), `ureq` logs request paths and
/// redirect targets below info, and `rustls` is kept to handshake summaries.
pub const SILENCED_TARGETS: &[(&str, tracing::level_filters::LevelFilter)] = &[
    ("ureq_proto", tracing::level_filters::LevelFilter::WARN),
    ("ureq", tracing::level_filters::LevelFilter::INFO),
    ("rustls", tracing::level_filters::LevelFilter::DEBUG),
];

/// The cap on [`SILENCED_TARGETS`]: a filter of its own, combined with (not merged into) the
/// user's `RUST_LOG`, so no directive there (`trace`, `ureq_proto=trace`, a more specific
/// `ureq_proto::util=trace`) can lift it.
fn secret_safe_targets() -> tracing_subscriber::filter::Targets {
    SILENCED_TARGETS.iter().fold(
        tracing_subscriber::filter::Targets::new()
            .with_default(tracing::level_filters::LevelFilter::TRACE),
        |targets, (target, level)| targets.with_target(*target, *level),
    )
}

/// The user's filter from `RUST_LOG`: comma-separated `target=level`, bare `level` (the default
/// for every other target) or bare `target` (all its levels), e.g. `info,badge_agent::drain=debug`.
/// A target matches itself and everything under it (`ureq` also matches `ureq_proto`). Unset or
/// empty means `info`; a value that does not parse (an unknown level, two `=`) is reported on
/// stderr and `info` is used. `EnvFilter`'s span and field filters (`target[span{field}]=level`)
/// are not supported.
///
/// A `filter::Targets` rather than an `EnvFilter`: the latter's regex engine was ~0.3 MB of the
/// release binary for directives nobody sets on a gateway.
fn rust_log_filter(value: Option<&str>) -> tracing_subscriber::filter::Targets {
    use tracing::level_filters::LevelFilter;
    use tracing_subscriber::filter::Targets;

    let default = || Targets::new().with_default(LevelFilter::INFO);
    let Some(value) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return default();
    };
    // `Targets` would read an empty item (`info,`) as a target named "": skip those.
    let items: Vec<&str> = value
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .collect();
    match items.join(",").parse::<Targets>() {
        Ok(targets) => targets,
        Err(err) => {
            eprintln!(
                "RUST_LOG={value:?} ignored ({err}); it takes comma-separated `target=level`, \
                 `level` or `target` items. Logging at info"
            );
            default()
        }
    }
}

/// Sets up `tracing`: journald under systemd, readable lines otherwise; `RUST_LOG` filters
/// ([`rust_log_filter`]), except that HTTP internals never log below [`SILENCED_TARGETS`].
fn init_logging(target: LogTarget) {
    use tracing_subscriber::prelude::*;

    let filter = rust_log_filter(std::env::var("RUST_LOG").ok().as_deref());
    // systemd sets JOURNAL_STREAM when stdout/stderr go to the journal.
    let want_journald = match target {
        LogTarget::Journald => true,
        LogTarget::Stderr => false,
        LogTarget::Auto => std::env::var_os("JOURNAL_STREAM").is_some(),
    };
    if want_journald {
        match tracing_journald::layer() {
            Ok(layer) => {
                let layer = layer.with_syslog_identifier("badge-agent".to_owned());
                let _ = tracing_subscriber::registry()
                    .with(filter)
                    .with(secret_safe_targets())
                    .with(layer)
                    .try_init();
                return;
            }
            Err(err) => eprintln!("journald unavailable ({err}); logging to stderr"),
        }
    }
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(secret_safe_targets())
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_writer(std::io::stderr),
        )
        .try_init();
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::prelude::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn rust_log_directives_keep_working() {
        use tracing::level_filters::LevelFilter;
        use tracing::Level;
        let at = |value: Option<&str>, target: &str, level: Level| {
            rust_log_filter(value).would_enable(target, &level)
        };
        // Unset, empty or unparsable: info.
        for value in [
            None,
            Some(""),
            Some("  "),
            Some("drain=loud"),
            Some("a=b=c"),
        ] {
            assert!(at(value, "badge_agent::drain", Level::INFO), "{value:?}");
            assert!(!at(value, "badge_agent::drain", Level::DEBUG), "{value:?}");
        }
        // A bare level is the default; target=level refines it, for the target's children too.
        let value = Some("warn, badge_agent::drain=trace,,tokio=off");
        assert!(at(value, "badge_agent::drain::batch", Level::TRACE));
        assert!(at(value, "badge_agent::buffer", Level::WARN));
        assert!(!at(value, "badge_agent::buffer", Level::INFO));
        assert!(!at(value, "tokio::runtime", Level::ERROR));
        // A bare target enables all its levels; upper case levels are fine.
        assert!(at(Some("badge_agent"), "badge_agent::x", Level::TRACE));
        assert!(!at(Some("badge_agent"), "sled", Level::ERROR));
        assert!(at(Some("DEBUG"), "sled", Level::DEBUG));
        assert_eq!(
            rust_log_filter(Some("error")).default_level(),
            Some(LevelFilter::ERROR)
        );
    }

    #[test]
    fn no_rust_log_setting_lets_http_internals_dump_headers() {
        for user_filter in [
            "trace",
            "info,ureq_proto=trace",
            "info,ureq_proto::util=trace",
            "info,ureq=trace,rustls=trace",
        ] {
            let out = Captured::default();
            let writer = out.clone();
            let subscriber = tracing_subscriber::registry()
                .with(rust_log_filter(Some(user_filter)))
                .with(secret_safe_targets())
                .with(
                    tracing_subscriber::fmt::layer()
                        .with_ansi(false)
                        .with_writer(move || writer.clone()),
                );
            tracing::subscriber::with_default(subscriber, || {
                tracing::trace!(target: "ureq_proto::util", "\"Authorization: B\"");
                tracing::debug!(target: "ureq_proto::client", "Bearer eyJ-secret");
                tracing::debug!(target: "ureq::run", "GET /v2/streaming?token=secret");
                tracing::trace!(target: "rustls::client", "rustls trace");
                tracing::info!(target: "ureq::run", "ureq info is fine");
                tracing::trace!(target: "badge_agent::drain", "own trace is fine");
            });
            let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
            assert!(!text.contains("Authorization"), "{user_filter}: {text}");
            assert!(!text.contains("secret"), "{user_filter}: {text}");
            assert!(!text.contains("rustls trace"), "{user_filter}: {text}");
            assert!(text.contains("ureq info is fine"), "{user_filter}: {text}");
            if user_filter == "trace" {
                assert!(text.contains("own trace is fine"), "{text}");
            }
        }
    }
}
