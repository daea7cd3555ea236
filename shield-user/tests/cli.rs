//! The `shield` command as a user runs it, for what needs no privileges.

use std::{
    io::Read as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

fn shield(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_shield"))
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("running shield");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_prints_the_matrix_of_a_valid_policy() {
    let (code, out, err) = shield(&["check", "policy/example.toml"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("RULE"), "{out}");
    assert!(
        out.contains(
            "api    tcp    8080,9000-9099  enforce  /32 /64      5/s burst 10, max 100/min"
        ),
        "{out}"
    );
    assert!(out.contains("deny (always dropped): 2 prefixes"), "{out}");
    assert!(out.ends_with("policy/example.toml: valid\n"), "{out}");
}

#[test]
fn check_rejects_a_bad_policy_with_its_location() {
    let dir = std::env::temp_dir().join(format!("shield-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("bad.toml");
    std::fs::write(&file, "[[rule]]\nname = \"api\"\nprotocol = \"tcp\"\nports = [80]\nconnections = { rate = \"5/sec\" }\n").expect("write");
    let (code, out, err) = shield(&["check", file.to_str().expect("utf-8")]);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.is_empty(),
        "nothing on stdout for an invalid policy: {out}"
    );
    assert!(
        err.contains("bad.toml:5:24: the unit must be s, min, h or d"),
        "error must name file:line:column and what was expected: {err}"
    );
}

#[test]
fn check_on_a_missing_file_says_so() {
    let (code, _, err) = shield(&["check", "/nonexistent/policy.toml"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("cannot read policy file /nonexistent/policy.toml"),
        "{err}"
    );
}

#[test]
fn help_explains_every_command() {
    let (code, out, _) = shield(&["--help"]);
    assert_eq!(code, 0);
    for cmd in ["run", "check", "stats", "ban", "unban", "bans"] {
        assert!(out.contains(cmd), "--help lacks {cmd}: {out}");
    }
    assert!(
        !out.lines().any(|l| l.trim_start().starts_with("lab ")),
        "the demo lab is not part of the shipped shield (it is shield-demo in tests/): {out}"
    );
    let (code, _, err) = shield(&["lab"]);
    assert_eq!(code, 2, "`shield lab` is no command: {err}");
    for topic in [
        "Escalation",
        "Audit log",
        "Control socket",
        "{\"cmd\":\"ban\"",
    ] {
        assert!(out.contains(topic), "--help lacks {topic}: {out}");
    }
    let (code, out, _) = shield(&["run", "--help"]);
    assert_eq!(code, 0);
    for flag in [
        "--iface",
        "--policy",
        "--xdp-mode",
        "--bpffs",
        "native",
        "generic",
    ] {
        assert!(out.contains(flag), "run --help lacks {flag}: {out}");
    }
}

#[test]
fn bad_arguments_are_refused_before_anything_happens() {
    let (code, _, err) = shield(&[
        "run",
        "--iface",
        "lo",
        "--policy",
        "x.toml",
        "--xdp-mode",
        "fast",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("invalid value 'fast'"), "{err}");
    // Without --iface: app-only mode, which needs [app] in the policy.
    let dir = std::env::temp_dir().join(format!("shield-cli-noapp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("p.toml");
    std::fs::write(
        &file,
        "[[rule]]\nname = \"api\"\nprotocol = \"tcp\"\nports = [80]\nconnections = { rate = \"5/s\" }\n",
    )
    .expect("write");
    let (code, _, err) = shield(&[
        "run",
        "--policy",
        file.to_str().expect("utf-8"),
        "--socket",
        dir.join("c.sock").to_str().expect("utf-8"),
    ]);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("give at least one --iface") && err.contains("has no [app]"),
        "{err}"
    );
}

#[test]
fn stats_without_pinned_maps_says_what_is_missing() {
    let (code, _, err) = shield(&["stats", "--bpffs", "/nonexistent-bpffs"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("no shield maps pinned under /nonexistent-bpffs/shield"),
        "{err}"
    );
    // Not bpffs here: the usual cause is a daemon that mounted it inside `ip netns exec`;
    // the remedy is a mount this shell shares, named with the path given.
    assert!(
        err.contains("/nonexistent-bpffs is not a bpffs mount here")
            && err.contains("mount bpffs from this shell first (`mount -t bpf bpf /nonexistent-bpffs`), then start the daemon with `--bpffs /nonexistent-bpffs`"),
        "{err}"
    );
}

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("shield-cli-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }

    fn file(&self, name: &str, contents: &[u8]) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).expect("write a test file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `shield check FILE`, killed if it has not ended within 20 s: a hang fails the test
/// instead of stalling the suite. Returns (exit code, stdout, stderr).
fn check_within_20s(file: &Path) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_shield"))
        .arg("check")
        .arg(file)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running shield");
    let drain = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("stdout")));
    let err = drain(Box::new(child.stderr.take().expect("stderr")));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for shield") {
            break status;
        }
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`shield check {}` still ran after 20 s; it must refuse the file at once",
                file.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (
        status.code().unwrap_or(-1),
        out.join().expect("stdout reader"),
        err.join().expect("stderr reader"),
    )
}

#[test]
fn check_refuses_what_is_not_a_regular_file_at_once() {
    let dir = TempDir::new("special");
    let fifo = dir.0.join("policy.fifo");
    let c_path = std::ffi::CString::new(fifo.to_str().expect("utf-8")).expect("no NUL");
    // SAFETY: a valid NUL-terminated path; mkfifo only creates the node.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0, "mkfifo");
    let cases = [
        (
            Path::new("/dev/zero"),
            "it is a character device, not a regular file",
        ),
        (
            fifo.as_path(),
            "it is a FIFO (named pipe), not a regular file",
        ),
        (dir.0.as_path(), "it is a directory, not a regular file"),
    ];
    for (path, words) in cases {
        let (code, out, err) = check_within_20s(path);
        assert_eq!(code, 1, "{}: {out}{err}", path.display());
        assert!(
            err.contains(&format!(
                "cannot read policy file {}: {words}",
                path.display()
            )),
            "{}: {err}",
            path.display()
        );
    }
}

#[test]
fn check_refuses_a_file_over_the_size_limit_without_reading_it() {
    let dir = TempDir::new("large");
    let path = dir.0.join("huge.toml");
    let file = std::fs::File::create(&path).expect("create");
    // Sparse: no disk space used, but the size is over the limit.
    file.set_len(shield_user::policy::MAX_POLICY_BYTES + 1)
        .expect("set_len");
    let started = Instant::now();
    let (code, _, err) = check_within_20s(&path);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("it is larger than the limit of 256 MiB (268435456 bytes)"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "an oversized file must be refused from its size, not read"
    );
}

#[test]
fn check_quotes_a_huge_value_short() {
    let dir = TempDir::new("long");
    let name = "x".repeat(10 << 20);
    let path = dir.file(
        "long.toml",
        format!("[[rule]]\nname = \"{name}\"\nprotocol = \"tcp\"\n").as_bytes(),
    );
    let (code, _, err) = check_within_20s(&path);
    assert_eq!(code, 1);
    assert!(
        err.len() < 300,
        "a 10 MB rule name must not be echoed whole: the error is {} bytes",
        err.len()
    );
    assert!(
        err.contains("long.toml:2:8: rule name must be 1 to 32 characters")
            && err.contains("xxxx…\" (10485760 bytes)"),
        "{err}"
    );
}

#[test]
fn check_locates_binary_garbage() {
    let dir = TempDir::new("binary");
    let mut bytes = b"# shield policy\n[defaults]\nmode = \"enforce\"\n".to_vec();
    bytes.extend_from_slice(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR");
    let path = dir.file("image.toml", &bytes);
    let (code, out, err) = check_within_20s(&path);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("image.toml:4:1: byte 0x89 (offset 44) is not UTF-8 text")
            && err.contains("binary file"),
        "{err}"
    );
    let path = dir.file("nul.toml", b"[defaults]\nmode = \"enforce\0\"\n");
    let (code, _, err) = check_within_20s(&path);
    assert_eq!(code, 1);
    assert!(
        err.contains("nul.toml:2:16: control character 0x00 is not allowed"),
        "{err}"
    );
}

#[test]
fn check_warns_about_likely_mistakes_and_still_succeeds() {
    let dir = TempDir::new("warn");
    let path = dir.file(
        "warn.toml",
        b"[lists]\nallow = [\"192.0.2.0/24\"]\ndeny = [\"192.0.2.0/24\", \"::/0\"]\n\n[[rule]]\nname = \"dns\"\nprotocol = \"udp\"\nports = [53]\n",
    );
    let (code, out, err) = check_within_20s(&path);
    assert_eq!(code, 0, "warnings do not make a policy invalid: {err}");
    assert!(out.ends_with("warn.toml: valid\n"), "{out}");
    let shown = path.display();
    for line in [
        format!(
            "shield: warning: {shown}: 192.0.2.0/24 is on both the allow and the deny list; allow wins, so the deny entry has no effect"
        ),
        format!(
            "shield: warning: {shown}: the deny list holds ::/0: every IPv6 packet from a source not on the allow list is dropped"
        ),
        format!(
            "shield: warning: {shown}: rule `dns` has no `connections`, `packets` or `unverified` limit: its traffic is counted, never limited"
        ),
    ] {
        assert!(
            err.lines().any(|l| l == line),
            "stderr lacks {line:?}: {err}"
        );
    }
    assert!(!out.contains("warning"), "warnings go to stderr: {out}");
    let (code, _, err) = shield(&["check", "policy/example.toml"]);
    assert_eq!(code, 0);
    assert!(
        err.is_empty(),
        "the example policy has nothing to warn about: {err}"
    );
}

/// A private bpffs mount (as `shield run --bpffs` would make), unmounted and removed on drop.
struct TempBpffs(std::path::PathBuf);

impl TempBpffs {
    fn new(tmp: &TempDir) -> TempBpffs {
        let path = tmp.0.join("bpffs");
        shield_user::loader::ensure_bpffs(&path).expect("mounting a private bpffs");
        TempBpffs(path)
    }
}

impl Drop for TempBpffs {
    fn drop(&mut self) {
        if let Ok(c) = std::ffi::CString::new(self.0.as_os_str().as_encoded_bytes()) {
            // SAFETY: a valid NUL-terminated path.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test needs root (it runs `shield detach` and `shield run`, which refuse others): run it as root, as `cargo xtask test` does in CI"
    );
}

#[test]
fn detach_never_removes_anything_outside_shields_pins() {
    require_root();
    let tmp = TempDir::new("detach");
    let victim = tmp.0.join("victim");
    std::fs::create_dir_all(&victim).expect("victim dir");
    std::fs::write(victim.join("precious"), "data").expect("victim file");
    let plain = tmp.0.join("bpf");
    // A plain directory laid out like pins: not a bpffs, so not shield's.
    std::fs::create_dir_all(plain.join("shield").join("eth0")).expect("fake pin dir");
    std::fs::write(plain.join("shield/eth0/SHIELD_COUNTERS"), "x").expect("fake pin");
    let plain_s = plain.to_str().expect("utf-8");
    let victim_s = victim.to_str().expect("utf-8");
    for (args, needle) in [
        (
            vec!["detach", "../../victim", "--bpffs", plain_s],
            "contains `/`",
        ),
        (
            vec!["detach", victim_s, "--bpffs", plain_s],
            "for '<IFACE>'",
        ),
        (vec!["detach", "/etc", "--bpffs", plain_s], "contains `/`"),
        (
            vec!["detach", "..", "--bpffs", plain_s],
            "not interface names",
        ),
        (vec!["detach", "a b", "--bpffs", plain_s], "white space"),
        (
            vec!["detach", "sixteen-bytes-xx", "--bpffs", plain_s],
            "at most 15 bytes",
        ),
        (
            vec!["detach", "eth0", "--bpffs", plain_s],
            "not a bpffs mount",
        ),
        (
            vec!["detach", "eth0", "--bpffs", victim_s],
            "not a bpffs mount",
        ),
    ] {
        let (code, out, err) = shield(&args);
        assert_ne!(code, 0, "{args:?} must be refused: {out}");
        assert!(
            err.contains(needle),
            "{args:?}: expected {needle:?} in {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
    assert!(victim.join("precious").exists(), "the victim survives");
    assert!(
        plain.join("shield/eth0/SHIELD_COUNTERS").exists(),
        "files on a non-bpffs path survive"
    );

    // On a real bpffs: a link to elsewhere and foreign entries are left alone.
    let bpffs = TempBpffs::new(&tmp);
    let shield_dir = bpffs.0.join("shield");
    std::fs::create_dir_all(shield_dir.join("eth1").join("not-shields")).expect("mkdir on bpffs");
    let bpffs_s = bpffs.0.to_str().expect("utf-8");
    let (code, out, err) = shield(&["detach", "eth1", "--bpffs", bpffs_s]);
    assert_eq!(code, 1, "nothing of shield's there: {out}{err}");
    assert!(err.contains("no shield pinned for eth1"), "{err}");
    assert!(
        shield_dir.join("eth1/not-shields").exists(),
        "foreign entry kept"
    );
    if std::os::unix::fs::symlink(&victim, shield_dir.join("eth2")).is_ok() {
        let (code, _, err) = shield(&["detach", "eth2", "--bpffs", bpffs_s]);
        assert_eq!(code, 1, "{err}");
        assert!(
            err.contains("a link?") && err.contains("nothing was removed"),
            "{err}"
        );
        assert!(victim.join("precious").exists(), "a link is never followed");
    }
}

#[test]
fn run_refuses_a_duplicate_interface_and_a_host_name_for_metrics() {
    require_root();
    let tmp = TempDir::new("run");
    let bpffs = tmp.0.join("bpffs");
    let bpffs_s = bpffs.to_str().expect("utf-8");
    let (code, out, err) = shield(&[
        "run",
        "--iface",
        "lo",
        "--iface",
        "lo",
        "--policy",
        "policy/example.toml",
        "--bpffs",
        bpffs_s,
    ]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("--iface lo is given twice"), "{err}");
    assert!(!bpffs.exists(), "nothing was created: {}", bpffs.display());
    for bad in [
        "127.0.0.1:notaport",
        "999.1.1.1:80",
        "localhost:9477",
        "9477",
    ] {
        let (code, _, err) = shield(&[
            "run",
            "--iface",
            "lo",
            "--policy",
            "policy/example.toml",
            "--metrics",
            bad,
        ]);
        assert_eq!(code, 2, "--metrics {bad}: {err}");
        assert!(err.contains("expected IP:PORT"), "--metrics {bad}: {err}");
    }
}

/// Runs `shield ARGS` with stdout into a pipe whose reader is gone.
fn into_closed_pipe(args: &[&str]) -> (Option<i32>, Option<i32>, String) {
    use std::os::unix::process::ExitStatusExt as _;
    let mut fds = [0; 2];
    // SAFETY: a two-int array for pipe(2).
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: closing the read end we own: every write then fails with EPIPE.
    unsafe { libc::close(fds[0]) };
    // SAFETY: the write end is ours; Stdio takes ownership of it.
    let stdout = unsafe { <std::process::Stdio as std::os::fd::FromRawFd>::from_raw_fd(fds[1]) };
    let out = Command::new(env!("CARGO_BIN_EXE_shield"))
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .stdout(stdout)
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("running shield");
    (
        out.status.code(),
        out.status.signal(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn printing_into_a_closed_pipe_ends_quietly() {
    for args in [
        &["check", "policy/example.toml"][..],
        &["--help"],
        &["help"],
        &["help", "run"],
    ] {
        let (code, signal, err) = into_closed_pipe(args);
        assert!(
            code == Some(0) || signal == Some(libc::SIGPIPE),
            "{args:?}: exit {code:?} signal {signal:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn help_describes_every_command_argument_event_and_control_command() {
    let (code, top, _) = shield(&["--help"]);
    assert_eq!(code, 0);
    for event in shield_user::audit::EVENTS {
        assert!(
            top.contains(event),
            "`shield --help` must name the audit event {event}"
        );
    }
    for cmd in shield_user::control::COMMANDS {
        assert!(
            top.contains(cmd),
            "`shield --help` must name the control command {cmd}"
        );
    }
    let (code, out, err) = shield(&["help", "--help"]);
    assert_eq!(code, 0, "`shield help --help` works: {err}");
    assert!(out.contains("Usage: shield help"), "{out}");
    let (code, out, _) = shield(&["help", "detach"]);
    assert_eq!(code, 0);
    assert!(out.contains("Usage: shield detach"), "{out}");

    // Every argument of every command has a description.
    let commands = [
        "run", "reload", "detach", "ban", "unban", "bans", "check", "stats", "help",
    ];
    for cmd in commands {
        let (code, out, err) = shield(&[cmd, "--help"]);
        assert_eq!(code, 0, "{cmd} --help: {err}");
        let mut section = "";
        let lines: Vec<&str> = out.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if line.ends_with(':') && !line.starts_with(' ') {
                section = line;
                continue;
            }
            let t = line.trim_start();
            let is_item = (section == "Options:" || section == "Arguments:")
                && line.starts_with("  ")
                && !line.starts_with("          ")
                && (t.starts_with('-') || t.starts_with('<') || t.starts_with('['));
            if !is_item {
                continue;
            }
            // Long help: the description is on the next line, indented; short: same line.
            let same_line = t.split("  ").filter(|p| !p.trim().is_empty()).count() > 1;
            let next = lines.get(i + 1).copied().unwrap_or("");
            let below = next.starts_with("          ") && !next.trim().is_empty();
            assert!(
                same_line || below,
                "`shield {cmd} --help`: {t:?} has no description:\n{out}"
            );
        }
    }
}

#[test]
fn tune_explains_itself_and_refuses_bad_arguments_clearly() {
    let (code, out, _) = shield(&["tune", "--help"]);
    assert_eq!(code, 0);
    for flag in [
        "--iface",
        "--for",
        "--percentile",
        "--json",
        "--write",
        "p99.9",
        "headroom",
    ] {
        assert!(out.contains(flag), "tune --help lacks {flag}: {out}");
    }
    for (args, says) in [
        (&["tune", "--for", "soon"][..], "--for soon:"),
        (&["tune", "--for", "0s"][..], "observe for at least 1s"),
        (
            &["tune", "--percentile", "0"][..],
            "above 0 and at most 100",
        ),
        (
            &["tune", "--percentile", "101"][..],
            "above 0 and at most 100",
        ),
    ] {
        let (code, _, err) = shield(args);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

/// Serves one control connection on `socket`: reads the request line, answers `reply`,
/// and hands the request back.
fn fake_daemon(socket: &Path, reply: &'static str) -> std::thread::JoinHandle<String> {
    use std::io::{BufRead as _, Write as _};
    let listener = std::os::unix::net::UnixListener::bind(socket).expect("bind a test socket");
    std::thread::spawn(move || {
        let (stream, _) = listener.accept().expect("the command connects");
        let mut request = String::new();
        std::io::BufReader::new(&stream)
            .read_line(&mut request)
            .expect("a request line");
        (&stream)
            .write_all(format!("{reply}\n").as_bytes())
            .expect("reply");
        request
    })
}

#[test]
fn reload_says_whether_the_new_policy_took_over_or_nothing_changed() {
    let dir = TempDir::new("reload");
    let socket = dir.0.join("control.sock");
    let sock = socket.to_str().expect("utf-8 path");

    let daemon = fake_daemon(
        &socket,
        r#"{"ok":false,"error":"p.toml:14:39: burst must be a whole number, got the text \"10\""}"#,
    );
    let (code, out, err) = shield(&["reload", "--socket", sock]);
    assert_eq!(
        daemon.join().expect("fake daemon").trim(),
        r#"{"cmd":"reload"}"#
    );
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("reload refused, nothing changed: p.toml:14:39: burst must be a whole number"),
        "{err}"
    );
    assert!(out.is_empty(), "{out}");

    std::fs::remove_file(&socket).expect("remove the socket");
    let daemon = fake_daemon(
        &socket,
        r#"{"ok":true,"generation":7,"rules":3,"allow":1,"deny":2,"port_slots_written":0,"lists_swapped":false,"took_ms":26.3}"#,
    );
    let (code, out, err) = shield(&["reload", "--socket", sock]);
    daemon.join().expect("fake daemon");
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "reloaded: generation 7, 3 rules, 1 allow and 2 deny prefixes, 26.3 ms\n"
    );

    // No daemon: not a refusal, and not said to be one.
    std::fs::remove_file(&socket).expect("remove the socket");
    let (code, _, err) = shield(&["reload", "--socket", sock]);
    assert_eq!(code, 1);
    assert!(
        err.contains("not running") && !err.contains("refused"),
        "{err}"
    );
}
