//! The audit log: one JSON object per line, flushed after each, reopened on SIGUSR1 (so
//! logrotate can move the file away).

use std::{
    fs::{File, OpenOptions},
    io::{self, Write},
    path::PathBuf,
    time::{Duration, Instant, SystemTime},
};

/// Every `event` the daemon writes, for the help and the docs (tested against both).
pub const EVENTS: [&str; 21] = [
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
    "restore",
    "fleet_link",
    "fleet_ban",
    "fleet_unban",
    "fleet_circuit",
];

/// Where audit lines go, and what is known of the lines that could not be written.
pub struct AuditLog {
    sink: Sink,
    /// Lines lost since the last one written (a full disk, a closed stdout).
    lost: u64,
    /// When the daemon's log last said the audit log cannot be written.
    warned: Option<Instant>,
}

enum Sink {
    /// No `--audit-log`: lines are dropped.
    Off,
    /// `--audit-log -`.
    Stdout,
    File {
        path: PathBuf,
        file: File,
        /// A line was cut short and could not be taken back: the next one starts on a
        /// line of its own.
        torn: bool,
    },
}

/// While the audit log cannot be written, the daemon's log says so at most this often
/// (a full disk under a flood would otherwise add a log line per lost audit line).
const WARN_EVERY: Duration = Duration::from_secs(60);

impl AuditLog {
    /// `None` → off, `-` → stdout, else a file opened for appending (created 0600).
    pub fn open(target: Option<&str>) -> io::Result<AuditLog> {
        let sink = match target {
            None => Sink::Off,
            Some("-") => Sink::Stdout,
            Some(path) => {
                let path = PathBuf::from(path);
                let file = open_append(&path)?;
                Sink::File {
                    path,
                    file,
                    torn: false,
                }
            }
        };
        Ok(AuditLog {
            sink,
            lost: 0,
            warned: None,
        })
    }

    /// Writes one line and flushes it. Errors are never fatal (a full disk must not stop
    /// the shield) and never leave part of a line in the file; the daemon's log says
    /// the first one, then at most once a minute, and how many lines were lost once
    /// lines go through again.
    pub fn write(&mut self, mut line: serde_json::Value) {
        if let Some(obj) = line.as_object_mut()
            && !obj.contains_key("ts")
        {
            obj.insert("ts".into(), rfc3339(SystemTime::now()).into());
        }
        let text = format!("{line}\n");
        let result = match &mut self.sink {
            Sink::Off => Ok(()),
            Sink::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(text.as_bytes()).and_then(|()| out.flush())
            }
            Sink::File { file, torn, .. } => append_line(file, torn, text.as_bytes()),
        };
        match result {
            Ok(()) if self.lost > 0 => {
                tracing::warn!(
                    "the audit log is written again; {} audit lines could not be written",
                    self.lost
                );
                self.lost = 0;
                self.warned = None;
            }
            Ok(()) => {}
            Err(e) => {
                self.lost += 1;
                if self.warned.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
                    self.warned = Some(Instant::now());
                    tracing::warn!(
                        "cannot write the audit log: {e}; {} audit lines could not be written so far (said again at most once a minute)",
                        self.lost
                    );
                }
            }
        }
    }

    /// Reopens the file at its path (after logrotate moved it).
    pub fn reopen(&mut self) -> io::Result<()> {
        if let Sink::File { path, file, torn } = &mut self.sink {
            *file = open_append(path)?;
            *torn = false;
        }
        Ok(())
    }
}

/// Appends `line` whole or not at all: a write cut short (a full disk takes what fits,
/// then fails) is taken back by truncating what it added, else the next line starts with a
/// newline of its own (never glued to the fragment).
fn append_line(file: &mut File, torn: &mut bool, line: &[u8]) -> io::Result<()> {
    if *torn {
        file.write_all(b"\n")?;
        *torn = false;
    }
    let mut done = 0;
    while done < line.len() {
        match file.write(&line[done..]) {
            Ok(0) => return Err(cut(file, torn, done, io::ErrorKind::WriteZero.into())),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(cut(file, torn, done, e)),
        }
    }
    Ok(())
}

/// After `written` bytes of a line went in and the rest failed with `e`: takes them back
/// (appended, so they are the file's last bytes), or marks the file torn. Returns `e`.
fn cut(file: &mut File, torn: &mut bool, written: usize, e: io::Error) -> io::Error {
    if written > 0 {
        let back = file.metadata().map(|m| m.len()).and_then(|len| {
            match len.checked_sub(written as u64) {
                Some(to) => file.set_len(to),
                None => Err(io::ErrorKind::InvalidData.into()),
            }
        });
        *torn = back.is_err();
    }
    e
}

/// Opens (or creates, 0600) a regular file for appending. Never blocks on a FIFO (opened
/// non-blocking, then refused), never writes into a device or a socket, and never follows
/// a symbolic link at the path itself (`O_NOFOLLOW`): a link planted there, at start or
/// before a reopen, would otherwise have the daemon append as root to the file it names.
fn open_append(path: &PathBuf) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let err = |e: io::Error| io::Error::new(e.kind(), format!("audit log {}: {e}", path.display()));
    let not_regular = || {
        err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file (the audit log must be a file, or `-` for stdout)",
        ))
    };
    let symlink = || {
        err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a symbolic link, which the audit log never follows (give the path of the file itself)",
        ))
    };
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => return Err(symlink()),
        Ok(m) if !m.file_type().is_file() => return Err(not_regular()),
        _ => {}
    }
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| {
            // A link put there since the check above (not a loop of links in a parent
            // directory, which ELOOP also reports: that one keeps the system's message).
            let last_is_link =
                || std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
            if e.raw_os_error() == Some(libc::ELOOP) && last_is_link() {
                symlink()
            } else {
                err(e)
            }
        })?;
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

#[cfg(test)]
mod open_tests {
    use super::AuditLog;

    /// A link at the audit log's path (at start, or planted before a logrotate reopen) is
    /// refused, and the file it names gets nothing.
    #[test]
    fn a_symbolic_link_at_the_audit_path_is_refused_and_its_target_untouched() {
        let dir = std::env::temp_dir().join(format!("shield-audit-link-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let victim = dir.join("victim");
        std::fs::write(&victim, "precious\n").unwrap();
        let link = dir.join("audit.jsonl");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let e = AuditLog::open(Some(link.to_str().unwrap()))
            .err()
            .expect("a link is refused");
        assert!(e.to_string().contains("a symbolic link"), "{e}");

        std::fs::remove_file(&link).unwrap();
        let mut log = AuditLog::open(Some(link.to_str().unwrap())).expect("a plain file");
        log.write(serde_json::json!({"event": "start"}));
        // logrotate-like: the file moved away, a link planted in its place.
        std::fs::rename(&link, dir.join("audit.jsonl.1")).unwrap();
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let e = log.reopen().expect_err("a link is refused at reopen");
        assert!(e.to_string().contains("a symbolic link"), "{e}");
        log.write(serde_json::json!({"event": "stop"}));
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
        let rotated = std::fs::read_to_string(dir.join("audit.jsonl.1")).unwrap();
        assert_eq!(rotated.lines().count(), 2, "{rotated}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A loop of links in a parent directory is not called a link at the log's path.
    #[test]
    fn a_link_loop_in_a_parent_directory_keeps_the_systems_message() {
        let dir = std::env::temp_dir().join(format!("shield-audit-loop-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::symlink(dir.join("b"), dir.join("a")).unwrap();
        std::os::unix::fs::symlink(dir.join("a"), dir.join("b")).unwrap();
        let path = dir.join("a").join("audit.jsonl");
        let e = AuditLog::open(Some(path.to_str().unwrap()))
            .err()
            .expect("a loop cannot be opened");
        let text = e.to_string();
        assert!(!text.contains("never follows"), "{text}");
        assert!(
            text.contains("symbolic links"),
            "the system's ELOOP text: {text}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Only the last component is refused: a log in a directory reached through a link
    /// opens, and reopens onto the file logrotate's `create` puts in place of the old one.
    #[test]
    fn a_linked_directory_is_followed_and_a_created_file_reopened() {
        let dir = std::env::temp_dir().join(format!("shield-audit-dirlink-{}", std::process::id()));
        let real = dir.join("real");
        std::fs::create_dir_all(&real).unwrap();
        let via = dir.join("via");
        std::os::unix::fs::symlink(&real, &via).unwrap();
        let path = via.join("audit.jsonl");
        let mut log =
            AuditLog::open(Some(path.to_str().unwrap())).expect("a file in a linked directory");
        log.write(serde_json::json!({"event": "start"}));
        std::fs::rename(real.join("audit.jsonl"), real.join("audit.jsonl.1")).unwrap();
        std::fs::write(real.join("audit.jsonl"), "").unwrap();
        log.reopen().expect("the created file");
        log.write(serde_json::json!({"event": "stop"}));
        let now = std::fs::read_to_string(real.join("audit.jsonl")).unwrap();
        let old = std::fs::read_to_string(real.join("audit.jsonl.1")).unwrap();
        assert_eq!(
            (old.lines().count(), now.lines().count()),
            (1, 1),
            "{old}{now}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
