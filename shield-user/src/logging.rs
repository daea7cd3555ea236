//! The daemon's log: `tracing` to stderr, as text or JSON lines. Under systemd (journald
//! sets `JOURNAL_STREAM`) lines carry no timestamp of their own: the journal adds one.

use tracing_subscriber::{EnvFilter, fmt};

/// `--log-format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per event (`timestamp`, `level`, `fields.message`, …).
    Json,
}

/// Installs the subscriber: `RUST_LOG` when set (full `EnvFilter` syntax), else `level`
/// (`error`, `warn`, `info`, `debug`, `trace`).
pub fn init(level: &str, format: LogFormat) -> Result<(), String> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => {
            EnvFilter::try_new(&spec).map_err(|e| format!("RUST_LOG={spec}: {e}"))?
        }
        _ => EnvFilter::try_new(level).map_err(|e| format!("--log-level {level}: {e}"))?,
    };
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(false);
    let result = match (format, journald) {
        (LogFormat::Text, false) => builder.try_init(),
        (LogFormat::Text, true) => builder.without_time().try_init(),
        (LogFormat::Json, false) => builder.json().try_init(),
        (LogFormat::Json, true) => builder.json().without_time().try_init(),
    };
    result.map_err(|e| format!("cannot install the logger: {e}"))
}

/// clap value parser for `--log-level`.
pub fn level_arg(s: &str) -> Result<String, String> {
    match s {
        "error" | "warn" | "info" | "debug" | "trace" => Ok(s.to_string()),
        _ => Err("expected one of error, warn, info, debug, trace".to_string()),
    }
}
