//! What a daemon shares with others on the host, held against misuse, with the real
//! `shield run` in network namespaces: its `--state-dir`, its metrics port, its socket
//! path, and the file `shield tune --write` writes.
//! Needs root.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use shield_tests::netlab::{Daemon, TempBpffs, Topology, unique};
use shield_tests::{require_root, shield_bin};

const POLICY: &str = r#"
[[rule]]
name = "api"
protocol = "tcp"
ports = [8080]
connections = { rate = "50/s", burst = 100 }
"#;

/// Files and directories a test made, removed on every exit path.
struct Scratch(Vec<PathBuf>);

impl Drop for Scratch {
    fn drop(&mut self) {
        for p in &self.0 {
            if p.is_dir() {
                let _ = std::fs::remove_dir_all(p);
            } else {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

fn policy_file(scratch: &mut Scratch) -> PathBuf {
    let path = std::env::temp_dir().join(format!("{}.toml", unique("scl-policy-")));
    std::fs::write(&path, POLICY).expect("writing the policy");
    scratch.0.push(path.clone());
    path
}

/// The sources saved in `DIR/bans.json`.
fn saved_sources(dir: &Path) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(dir.join("bans.json")) else {
        return Vec::new();
    };
    let saved: serde_json::Value = serde_json::from_str(&text).expect("bans.json is JSON");
    saved["bans"]
        .as_array()
        .expect("bans.json has bans")
        .iter()
        .map(|b| b["source"].as_str().expect("source").to_string())
        .collect()
}

/// Waits (up to 30 s, polling) until `DIR/bans.json` lists `source`.
fn wait_saved(dir: &Path, source: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !saved_sources(dir).iter().any(|s| s == source) {
        assert!(
            Instant::now() < deadline,
            "{source} never reached {}/bans.json: {:?}",
            dir.display(),
            saved_sources(dir)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `shield ARGS` as a user runs it: (success, stdout + stderr).
fn shield(args: &[&str]) -> (bool, String) {
    let out = Command::new(shield_bin())
        .args(args)
        .output()
        .expect("running shield");
    (out.status.success(), text(&out))
}

/// A finished command's stdout and stderr, one after the other.
fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Two daemons (on two interfaces) with one `--state-dir` wrote the same `bans.json`, each
/// over the other's: the second one's start replaced the first one's saved bans with its
/// own (none), so a reboot would have lost them. The second start is now refused, before
/// it attaches anything; `kill -9` frees the directory for the next start.
#[test]
fn a_second_daemon_on_the_same_state_dir_is_refused_and_the_saved_bans_stay() {
    require_root();
    let mut scratch = Scratch(Vec::new());
    let policy = policy_file(&mut scratch);
    let state = std::env::temp_dir().join(unique("scl-state-"));
    scratch.0.push(state.clone());
    let state_arg = state.to_str().expect("utf-8").to_string();
    let topo = Topology::new().expect("namespaces");
    let bpffs = TempBpffs::new().expect("bpffs");
    let mut first = Daemon::start(
        &shield_bin(),
        &topo.server,
        &policy,
        &bpffs.path,
        &["--metrics", "off", "--state-dir", &state_arg],
    )
    .expect("first daemon");
    let socket = first.socket.to_str().expect("utf-8").to_string();
    let (ok, out) = shield(&["ban", "192.0.2.77", "--for", "1h", "--socket", &socket]);
    assert!(ok, "ban: {out}");
    wait_saved(&state, "192.0.2.77/32");

    // A second daemon on another interface (the server namespace's own loopback), with
    // its own socket, and the same --state-dir.
    let socket2 = std::env::temp_dir().join(format!("{}.sock", unique("scl-sock-")));
    scratch.0.push(socket2.clone());
    let started = Instant::now();
    let mut second = topo
        .server
        .command(&shield_bin())
        .args([
            "run",
            "--iface",
            "lo",
            "--xdp-mode",
            "generic",
            "--metrics",
            "off",
        ])
        .arg("--policy")
        .arg(&policy)
        .arg("--bpffs")
        .arg(&bpffs.path)
        .arg("--socket")
        .arg(&socket2)
        .arg("--state-dir")
        .arg(&state)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("second daemon");
    // Refused at once; one that runs is stopped once it answers (the bug), or after 30 s.
    let mut answered = false;
    while second.try_wait().expect("wait").is_none() {
        answered = shield_user::control::call::<shield_user::control::Pong>(
            &socket2,
            &shield_user::control::Request::Ping {},
        )
        .is_ok();
        if answered || started.elapsed() > Duration::from_secs(30) {
            // Long enough for it to have saved its (empty) bans, as the bug did.
            std::thread::sleep(Duration::from_secs(2));
            // SAFETY: signalling our own child by pid.
            unsafe { libc::kill(second.id() as i32, libc::SIGTERM) };
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = second.wait_with_output().expect("second daemon output");
    let text = text(&out);
    assert!(
        !answered,
        "a second daemon on the same --state-dir must not run: {text}"
    );
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("another shield daemon uses --state-dir"),
        "the error must say why: {text}"
    );
    let lo_xdp = topo
        .server
        .command(Path::new("ip"))
        .args(["-d", "link", "show", "lo"])
        .output()
        .expect("ip link");
    assert!(
        !String::from_utf8_lossy(&lo_xdp.stdout).contains("xdp"),
        "the refused start attached nothing to lo"
    );
    assert!(
        saved_sources(&state).iter().any(|s| s == "192.0.2.77/32"),
        "the first daemon's saved ban must still be on disk: {:?}",
        saved_sources(&state)
    );
    // The first daemon still saves its bans there.
    let (ok, out) = shield(&["ban", "192.0.2.78", "--for", "1h", "--socket", &socket]);
    assert!(ok, "ban: {out}");
    wait_saved(&state, "192.0.2.78/32");

    // kill -9: the kernel releases the lock, and the next start on that directory runs.
    first.kill9().expect("kill -9");
    drop(first);
    let again = Daemon::start(
        &shield_bin(),
        &topo.server,
        &policy,
        &bpffs.path,
        &["--metrics", "off", "--state-dir", &state_arg],
    )
    .expect("a start after kill -9 takes the state dir");
    let (ok, out) = shield(&[
        "bans",
        "--json",
        "--socket",
        again.socket.to_str().expect("utf-8"),
    ]);
    assert!(ok, "bans: {out}");
    assert!(
        out.contains("192.0.2.77/32") && out.contains("192.0.2.78/32"),
        "the restarted daemon keeps both bans: {out}"
    );
}

/// A stopping daemon removed whatever was at its `--socket` path by then: a file someone
/// put there, or the socket of a daemon started since on that path. It now removes only
/// the socket it made.
#[test]
fn a_stopping_daemon_removes_only_the_socket_it_made() {
    require_root();
    let mut scratch = Scratch(Vec::new());
    let policy = policy_file(&mut scratch);
    let topo = Topology::new().expect("namespaces");
    let bpffs = TempBpffs::new().expect("bpffs");
    let start = |scratch: &mut Scratch| {
        let d = Daemon::start(
            &shield_bin(),
            &topo.server,
            &policy,
            &bpffs.path,
            &["--metrics", "off"],
        )
        .expect("daemon");
        scratch.0.push(d.socket.clone());
        d
    };
    let mut daemon = start(&mut scratch);
    let socket = daemon.socket.clone();
    std::fs::remove_file(&socket).expect("removing the socket");
    std::fs::write(&socket, "not shield's\n").expect("a file in its place");
    let (status, log) = daemon.stop().expect("stop");
    assert!(status.success(), "{log}");
    assert_eq!(
        std::fs::read_to_string(&socket).ok().as_deref(),
        Some("not shield's\n"),
        "the file at the socket path must be left alone: {log}"
    );

    // Its own socket it does remove.
    std::fs::remove_file(&socket).expect("removing the file");
    let mut daemon = start(&mut scratch);
    let socket = daemon.socket.clone();
    assert!(socket.exists(), "the daemon made its socket");
    let (status, log) = daemon.stop().expect("stop");
    assert!(status.success(), "{log}");
    assert!(!socket.exists(), "a clean stop removes its socket: {log}");
}

/// `shield tune --write` at a directory failed only after the whole observation (10
/// minutes by default), at a FIFO it blocked for good, at /dev/null it "wrote" the policy.
/// Refused before observing now.
#[test]
fn tune_write_refuses_what_is_not_a_file_before_observing() {
    require_root();
    let mut scratch = Scratch(Vec::new());
    let policy = policy_file(&mut scratch);
    let topo = Topology::new().expect("namespaces");
    let bpffs = TempBpffs::new().expect("bpffs");
    let daemon = Daemon::start(
        &shield_bin(),
        &topo.server,
        &policy,
        &bpffs.path,
        &["--metrics", "off"],
    )
    .expect("daemon");
    let dir = std::env::temp_dir().join(unique("scl-dir-"));
    std::fs::create_dir(&dir).expect("a directory");
    scratch.0.push(dir.clone());
    let fifo = std::env::temp_dir().join(unique("scl-fifo-"));
    scratch.0.push(fifo.clone());
    let c = std::ffi::CString::new(fifo.to_str().expect("utf-8")).expect("path");
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    for (out, kind) in [
        (dir.as_path(), "a directory"),
        (fifo.as_path(), "a FIFO"),
        (Path::new("/dev/null"), "a character device"),
    ] {
        let mut child = topo
            .server
            .command(&shield_bin())
            .args(["tune", "--iface", shield_tests::netlab::SERVER_IF])
            .args(["--for", "2s", "--bpffs"])
            .arg(&bpffs.path)
            .arg("--socket")
            .arg(&daemon.socket)
            .arg("--write")
            .arg(out)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("shield tune");
        let started = Instant::now();
        while child.try_wait().expect("wait").is_none() {
            if started.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let o = child.wait_with_output().expect("output");
        let text = text(&o);
        assert_eq!(
            o.status.code(),
            Some(1),
            "--write {}: {text}",
            out.display()
        );
        assert!(
            text.contains(&format!("it is {kind}")) && text.contains("not a regular file"),
            "--write {}: {text}",
            out.display()
        );
        assert!(
            !text.contains("wrote") && !text.contains("rule api"),
            "refused before observing: {text}"
        );
    }
    assert!(
        std::fs::read_dir(&dir).expect("dir").next().is_none(),
        "nothing written in the directory"
    );
}

mod metrics;
