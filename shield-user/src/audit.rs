//! The audit log: one JSON object per line, flushed after each, reopened on SIGUSR1 (so
//! logrotate can move the file away).

use std::{
    fs::{File, OpenOptions},
    io::{self, Write},
    path::PathBuf,
    time::SystemTime,
};

/// Every `event` the daemon writes, for the help and the docs (tested against both).
pub const EVENTS: [&str; 16] = [
    "limited",
    "ban",
    "would_ban",
    "ban_failed",
    "ban_kept",
    "ban_end",
    "unban",
    "reload",
    "attack_start",
    "attack_end",
    "lost",
    "start",
    "stop",
    "app_limited",
    "app_ban",
    "app_ban_skipped",
];

/// Where audit lines go.
pub enum AuditLog {
    /// No `--audit-log`: lines are dropped.
    Off,
    /// `--audit-log -`.
    Stdout,
    File {
        path: PathBuf,
        file: File,
    },
}

impl AuditLog {
    /// `None` → off, `-` → stdout, else a file opened for appending (created 0600).
    pub fn open(target: Option<&str>) -> io::Result<AuditLog> {
        match target {
            None => Ok(AuditLog::Off),
            Some("-") => Ok(AuditLog::Stdout),
            Some(path) => {
                let path = PathBuf::from(path);
                let file = open_append(&path)?;
                Ok(AuditLog::File { path, file })
            }
        }
    }

    /// Writes one line and flushes it. Errors are reported once per call, never fatal:
    /// a full disk must not stop the shield.
    pub fn write(&mut self, mut line: serde_json::Value) {
        if let Some(obj) = line.as_object_mut()
            && !obj.contains_key("ts")
        {
            obj.insert("ts".into(), rfc3339(SystemTime::now()).into());
        }
        let text = format!("{line}\n");
        let result = match self {
            AuditLog::Off => Ok(()),
            AuditLog::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(text.as_bytes()).and_then(|()| out.flush())
            }
            AuditLog::File { file, .. } => {
                file.write_all(text.as_bytes()).and_then(|()| file.flush())
            }
        };
        if let Err(e) = result {
            tracing::warn!("cannot write the audit log: {e}");
        }
    }

    /// Reopens the file at its path (after logrotate moved it).
    pub fn reopen(&mut self) -> io::Result<()> {
        if let AuditLog::File { path, file } = self {
            *file = open_append(path)?;
        }
        Ok(())
    }
}

/// Opens (or creates, 0600) a regular file for appending. Never blocks on a FIFO (opened
/// non-blocking, then refused) and never writes into a device or a socket.
fn open_append(path: &PathBuf) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let err = |e: io::Error| io::Error::new(e.kind(), format!("audit log {}: {e}", path.display()));
    let not_regular = || {
        err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file (the audit log must be a file, or `-` for stdout)",
        ))
    };
    if std::fs::metadata(path).is_ok_and(|m| !m.file_type().is_file()) {
        return Err(not_regular());
    }
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(err)?;
    if !file.metadata().map_err(err)?.file_type().is_file() {
        return Err(not_regular());
    }
    Ok(file)
}

/// The audit log's file identity (device, inode), to refuse a log that is the policy file.
pub fn same_file(a: &std::path::Path, b: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// RFC 3339 with milliseconds, UTC.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod events_tests {
    #[test]
    fn the_readme_documents_every_audit_event() {
        let readme = include_str!("../../README.md");
        let section = readme
            .split("## Audit log")
            .nth(1)
            .and_then(|s| s.split("\n## ").next())
            .expect("README has an `## Audit log` section");
        for e in super::EVENTS {
            assert!(
                section.contains(&format!("`{e}`")),
                "README's audit log table lacks `{e}`"
            );
        }
    }
}
