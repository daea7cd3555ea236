//! The audit log on a full disk (a small tmpfs of the test's own): the daemon keeps
//! working, every line that reaches the file is whole JSON (a line cut short by the full
//! disk never glues itself to the next one), and the daemon's own log says so once rather
//! than once per lost line. Needs root (fails, never skips).

use std::{ffi::CString, io::Write as _, path::PathBuf};

use shield_tests::{netlab::unique, nslab::NsLab, require_root};
use shield_user::control::{self, Banned, Request};

/// A 64 KiB tmpfs mounted for the test, unmounted and removed on drop.
struct SmallTmpfs(PathBuf);

impl SmallTmpfs {
    fn new() -> SmallTmpfs {
        let dir = std::env::temp_dir().join(unique("at3-audit-"));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let guard = SmallTmpfs(dir);
        let c = |s: &str| CString::new(s).expect("no NUL");
        let (src, path, fs, opts) = (
            c("at3-audit"),
            c(guard.0.to_str().expect("utf-8")),
            c("tmpfs"),
            c("size=64k,mode=0700"),
        );
        // SAFETY: valid NUL-terminated strings for the duration of the call.
        let r = unsafe {
            libc::mount(
                src.as_ptr(),
                path.as_ptr(),
                fs.as_ptr(),
                0,
                opts.as_ptr().cast(),
            )
        };
        assert_eq!(
            r,
            0,
            "mounting a tmpfs: {}",
            std::io::Error::last_os_error()
        );
        guard
    }

    /// Fills the file system: the rest of what is free goes to `fill`.
    fn fill(&self) -> PathBuf {
        let fill = self.0.join("fill");
        let mut f = std::fs::File::create(&fill).expect("fill file");
        let block = [b'x'; 512];
        while f.write_all(&block).is_ok() {}
        fill
    }
}

impl Drop for SmallTmpfs {
    fn drop(&mut self) {
        if let Ok(c) = CString::new(self.0.as_os_str().as_encoded_bytes()) {
            // SAFETY: valid NUL-terminated path.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const POLICY: &str = r#"
[[rule]]
name = "api"
protocol = "tcp"
ports = [8080]
connections = { rate = "100/s", burst = 200 }
"#;

fn ban(lab: &NsLab, source: &str) -> Banned {
    control::call(
        &lab.socket(),
        &Request::Ban {
            source: source.into(),
            duration: "10m".into(),
            rule: None,
            reason: Some("audit on a full disk".into()),
            force: false,
        },
    )
    .unwrap_or_else(|e| panic!("shield ban {source}: {e}"))
}

#[test]
fn a_full_disk_never_tears_audit_lines_and_is_said_once() {
    require_root();
    // Declared first: dropped after the lab (the daemon holds the log open until then).
    let disk = SmallTmpfs::new();
    let mut lab = NsLab::new(POLICY, &[]);
    lab.daemon = None;
    // The lab's own log (its first start) is replaced: removed here, as the lab would.
    let _ = std::fs::remove_file(&lab.audit);
    lab.audit = disk.0.join("audit.jsonl");
    lab.start();
    let fill = disk.fill();
    // 200 bans while nothing more fits: every one is in force, their lines are lost.
    for i in 1..=200 {
        let b = ban(&lab, &format!("203.0.113.{i}"));
        assert_eq!(b.bans.len(), 1, "ban {i} not installed: {b:?}");
    }
    std::fs::remove_file(&fill).expect("freeing the disk");
    for i in 201..=203 {
        ban(&lab, &format!("203.0.113.{i}"));
    }
    let text = std::fs::read_to_string(&lab.audit).expect("audit log");
    let mut sources = Vec::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| {
            panic!("the audit log holds a line that is not JSON ({e}): {line:?}\n{text}")
        });
        if v["event"] == "ban" {
            sources.push(v["source"].as_str().unwrap_or_default().to_owned());
        }
    }
    for i in 201..=203 {
        let s = format!("203.0.113.{i}/32");
        assert!(
            sources.contains(&s),
            "the ban of {s}, after space came back, is not in the audit log:\n{text}"
        );
    }
    let (ok, out, err) = lab.shield(&["bans", "--json"]);
    assert!(ok, "shield bans: {err}");
    assert_eq!(
        out.matches("203.0.113.").count(),
        203,
        "every ban is in force"
    );
    let log = lab.daemon().log_text();
    let warned = log.matches("cannot write the audit log").count();
    assert!(
        (1..=2).contains(&warned),
        "the daemon's log says {warned} times that it cannot write the audit log (one line per lost audit line floods the journal on a full disk):\n{}",
        log.lines().take(20).collect::<Vec<_>>().join("\n")
    );
    assert!(
        log.contains("the audit log is written again")
            && log.contains("audit lines could not be written"),
        "the daemon's log never says that the audit log works again and how many lines were lost:\n{log}"
    );
}
