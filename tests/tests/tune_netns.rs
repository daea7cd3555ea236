//! `shield tune` in the namespace lab: eight clients at about 2 connections a second and a
//! flooder at 20 a second, observed through the real daemon under a loose limit; the
//! suggestions leave every client untouched and limit the flooder once the written policy
//! is checked (`shield check --diff`) and loaded. Needs root (fails, never skips).

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    os::unix::process::ExitStatusExt as _,
    process::Stdio,
    thread,
    time::Duration,
};

use serde_json::Value;
use shield_tests::{
    TempDir,
    netlab::{ATTACKER_V4, SERVER_V4, connect_many, unique},
    nslab::{NsLab, counter},
    shield_bin,
};

const API: u16 = 8080;
const POLICY: &str = r#"
# The API: a loose limit while we learn what clients do.
[[rule]]
name = "api"
protocol = "tcp"
ports = [8080]
connections = { rate = "100/s", burst = 200 }
"#;

fn clients() -> Vec<IpAddr> {
    (10..18)
        .map(|i| IpAddr::V4(Ipv4Addr::new(198, 51, 100, i)))
        .collect()
}

/// Clients at ~2 connections/s each and the flooder at 20/s, for `secs` seconds, at once:
/// (client (ok, failed), flooder (ok, failed)).
fn traffic(lab: &NsLab, secs: u32) -> ((u32, u32), (u32, u32)) {
    let dst = SocketAddr::new(IpAddr::V4(SERVER_V4), API);
    let timeout = Duration::from_millis(300);
    thread::scope(|s| {
        let legit = s.spawn(|| {
            lab.topo
                .client
                .run_in(|| {
                    // 8 sources in turn every 62.5 ms: each one every 0.5 s.
                    connect_many(
                        &clients(),
                        dst,
                        16 * secs,
                        Duration::from_micros(62_500),
                        timeout,
                    )
                })
                .expect("client namespace")
        });
        let flood = s.spawn(|| {
            lab.topo
                .client
                .run_in(|| {
                    connect_many(
                        &[IpAddr::V4(ATTACKER_V4)],
                        dst,
                        20 * secs,
                        Duration::from_millis(50),
                        timeout,
                    )
                })
                .expect("client namespace")
        });
        let (l, f) = (legit.join().unwrap(), flood.join().unwrap());
        ((l.ok, l.failed), (f.ok, f.failed))
    })
}

#[test]
fn suggestions_leave_known_clients_untouched_and_limit_a_flooder() {
    let lab = NsLab::new(POLICY, &[API]);
    for c in clients() {
        lab.topo.add_client_addr(c).expect("client address");
    }
    let written = std::env::temp_dir().join(format!("{}.toml", unique("shield-tuned-")));
    let bpffs = lab.bpffs.path.to_str().expect("utf-8").to_string();
    let socket = lab.socket().to_str().expect("utf-8").to_string();
    let out = written.to_str().expect("utf-8").to_string();
    // --write over the running policy (itself or through a link) is refused at once, and
    // the policy is left as it was.
    let link = std::env::temp_dir().join(unique("shield-tune-link-"));
    std::os::unix::fs::symlink(&lab.policy, &link).expect("link");
    let _link = Cleanup(link.clone());
    let before = std::fs::read(&lab.policy).expect("policy");
    for target in [lab.policy.clone(), link.clone()] {
        let t = target.to_str().expect("utf-8");
        let refused = lab
            .topo
            .server
            .command(&shield_bin())
            .args(["tune", "--iface", shield_tests::netlab::SERVER_IF])
            .args(["--for", "2s", "--write", t])
            .args(["--socket", &socket, "--bpffs", &bpffs])
            .output()
            .expect("shield tune");
        let err = String::from_utf8_lossy(&refused.stderr);
        assert!(!refused.status.success(), "--write {t} was accepted");
        assert!(err.contains("the running policy file"), "{err}");
        assert_eq!(std::fs::read(&lab.policy).expect("policy"), before);
    }
    // Observe 6 s while 8 s of traffic runs (it starts with tune, ends after it).
    let tune = lab
        .topo
        .server
        .command(&shield_bin())
        .args([
            "tune",
            "--iface",
            shield_tests::netlab::SERVER_IF,
            "--for",
            "6s",
        ])
        .args(["--percentile", "80", "--json", "--write", &out])
        .args(["--socket", &socket, "--bpffs", &bpffs])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting shield tune");
    let (legit, flood) = traffic(&lab, 8);
    let done = tune.wait_with_output().expect("shield tune");
    let _cleanup = Cleanup(written.clone());
    assert!(
        done.status.success(),
        "shield tune failed: {}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert_eq!(legit.1, 0, "the loose limit refused a client");
    assert_eq!(flood.1, 0, "the loose limit refused the flooder");
    let report: Value = serde_json::from_slice(&done.stdout).expect("tune --json is JSON");
    eprintln!("{}", serde_json::to_string_pretty(&report).unwrap());
    let api = &report["rules"][0];
    assert_eq!(api["name"], "api");
    assert_eq!(api["sources"], 9, "8 clients and the flooder: {api}");
    let conn = &api["connections"]["peak_per_second"];
    let max = conn["max"].as_u64().unwrap();
    assert!(
        (15..=25).contains(&max),
        "the flooder's busiest second: {max}"
    );
    let p50 = conn["p50"].as_u64().unwrap();
    assert!((1..=4).contains(&p50), "a client's busiest second: {p50}");
    assert_eq!(api["current"]["sources_touched"], 0, "100/s touches nobody");
    let s = &api["suggested"]["connections"];
    let rate = s["rate"].as_u64().unwrap();
    assert!(
        (2..20).contains(&rate),
        "suggested rate {rate}: between the clients and the flooder"
    );

    // The written policy: valid, comments kept, the diff shows the new limit.
    let text = std::fs::read_to_string(&written).expect("tune --write wrote the file");
    assert!(
        text.contains("# The API: a loose limit"),
        "comments kept:\n{text}"
    );
    let (ok, diff, err) = lab.shield(&["check", "--diff", &out]);
    assert!(ok, "shield check --diff: {err}");
    assert!(
        diff.contains("+ api") && diff.contains(&format!("{rate}/s burst {}", s["burst"])),
        "the diff shows the suggested limit:\n{diff}"
    );

    // Loaded: the clients are untouched, the flooder is limited.
    std::fs::copy(&written, &lab.policy).expect("installing the written policy");
    let (ok, _, err) = lab.shield(&["reload"]);
    assert!(ok, "reload of the written policy: {err}");
    let (legit, flood) = traffic(&lab, 4);
    assert_eq!(
        legit.1, 0,
        "a client was refused under the suggested limits ({legit:?})"
    );
    assert!(flood.1 > 20, "the flooder was not limited ({flood:?})");
    let st = lab.stats();
    assert!(counter(&st, "api", "conn_limit") > 20, "{st}");
}

struct Cleanup(std::path::PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn tune_never_writes_over_a_policy_the_daemon_was_given_by_a_relative_path() {
    // The operator starts `shield run --policy policy.toml` in the policy's directory, and
    // later runs `shield tune --write /that/dir/policy.toml` from a directory that holds a
    // policy.toml of its own (an old copy). The running policy must be recognised (refused
    // at once, untouched) and tune must read the policy in force, not the copy.
    shield_tests::require_root();
    let (etc, home) = (TempDir::new("at3-etc-"), TempDir::new("at3-home-"));
    let running = etc.0.join("policy.toml");
    std::fs::write(&running, POLICY).expect("policy");
    std::fs::write(
        home.0.join("policy.toml"),
        "[[rule]]\nname = \"old-copy\"\nprotocol = \"tcp\"\nports = [9090]\nconnections = { rate = \"5/s\", burst = 5 }\n",
    )
    .expect("old copy");
    let topo = shield_tests::netlab::Topology::new().expect("namespaces");
    let bpffs = shield_tests::netlab::TempBpffs::new().expect("bpffs");
    let daemon = shield_tests::netlab::Daemon::start_in(
        &shield_bin(),
        &topo.server,
        &etc.0,
        std::path::Path::new("policy.toml"),
        &bpffs.path,
        &[],
    )
    .expect("shield run --policy policy.toml");
    let tune = |args: &[&str]| {
        let mut cmd = topo.server.command(&shield_bin());
        cmd.current_dir(&home.0)
            .args([
                "tune",
                "--iface",
                shield_tests::netlab::SERVER_IF,
                "--for",
                "1s",
            ])
            .args(args)
            .arg("--socket")
            .arg(&daemon.socket)
            .arg("--bpffs")
            .arg(&bpffs.path);
        cmd.output().expect("shield tune")
    };
    let before = std::fs::read(&running).expect("policy");
    let out = tune(&["--write", running.to_str().expect("utf-8")]);
    let err = String::from_utf8_lossy(&out.stderr);
    let after = std::fs::read(&running).expect("policy");
    assert_eq!(
        String::from_utf8_lossy(&after),
        String::from_utf8_lossy(&before),
        "shield tune --write replaced the running policy (exit {:?}, stderr: {err})",
        out.status.code()
    );
    assert!(
        !out.status.success() && err.contains("the running policy file"),
        "--write over the running policy was not refused: {err}"
    );
    // And what tune observes against is the policy in force.
    let out = tune(&["--json"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "shield tune: {err}");
    let report: Value = serde_json::from_slice(&out.stdout).expect("tune --json is JSON");
    assert_eq!(
        report["rules"][0]["name"], "api",
        "tune read another file than the running policy: {report}"
    );
    drop(daemon);
}

#[test]
fn a_policy_changed_while_tune_observes_is_not_overwritten_by_its_write() {
    // The operator adds a rule while tune observes; the file tune would write is the old
    // policy with suggestions, so installing it would silently drop the new rule. Tune
    // refuses to write it (the report is still printed) and says why.
    let lab = NsLab::new(POLICY, &[API]);
    let written = std::env::temp_dir().join(format!("{}.toml", unique("shield-tuned-")));
    let _cleanup = Cleanup(written.clone());
    let tune = lab
        .topo
        .server
        .command(&shield_bin())
        .args(["tune", "--iface", shield_tests::netlab::SERVER_IF])
        .args(["--for", "4s", "--json", "--write"])
        .arg(&written)
        .arg("--socket")
        .arg(lab.socket())
        .arg("--bpffs")
        .arg(&lab.bpffs.path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting shield tune");
    thread::sleep(Duration::from_secs(1));
    let changed = format!(
        "{POLICY}\n[[rule]]\nname = \"ssh\"\nprotocol = \"tcp\"\nports = [22]\nconnections = {{ rate = \"1/s\", burst = 3 }}\n"
    );
    std::fs::write(&lab.policy, &changed).expect("editing the policy");
    let done = tune.wait_with_output().expect("shield tune");
    let err = String::from_utf8_lossy(&done.stderr);
    let file = std::fs::read_to_string(&written).ok();
    assert!(
        file.is_none(),
        "tune --write wrote a file made from the policy as it was before the change (installed, it would drop the new rule):\n{}",
        file.unwrap_or_default()
    );
    assert!(
        !done.status.success() && err.contains("changed while"),
        "tune did not say the policy changed while it observed (exit {:?}): {err}",
        done.status.code()
    );
    let report: Value = serde_json::from_slice(&done.stdout).expect("the report is still printed");
    assert_eq!(report["rules"][0]["name"], "api", "{report}");
    assert_eq!(
        std::fs::read_to_string(&lab.policy).expect("policy"),
        changed
    );
}

#[test]
fn tune_without_iface_observes_the_daemons_interface_not_a_stopped_ones_pins() {
    // A daemon stopped on another interface leaves its pins (a restart adopts them); the
    // running daemon protects one interface, so that is the one tune observes by default.
    let lab = NsLab::new(POLICY, &[API]);
    for args in [
        &[
            "link", "add", "stale0", "type", "veth", "peer", "name", "stale1",
        ][..],
        &["link", "set", "stale0", "up"],
        &["link", "set", "stale1", "up"],
    ] {
        lab.topo.server.ip(args).expect("a second interface");
    }
    let dir = TempDir::new("op7-stale-");
    let socket = dir.0.join("stale.sock");
    let mut other = lab
        .topo
        .server
        .command(&shield_bin())
        .args(["run", "--iface", "stale0", "--xdp-mode", "generic"])
        .args(["--metrics", "off", "--policy"])
        .arg(&lab.policy)
        .arg("--bpffs")
        .arg(&lab.bpffs.path)
        .arg("--socket")
        .arg(&socket)
        .arg("--state-dir")
        .arg(dir.0.join("state"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("shield run on stale0");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    // Ready once `shield ping` says it protects stale0.
    let ready = || {
        lab.topo
            .server
            .command(&shield_bin())
            .arg("ping")
            .arg("--socket")
            .arg(&socket)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    while !ready() {
        assert!(
            std::time::Instant::now() < deadline && other.try_wait().expect("wait").is_none(),
            "the second daemon did not start"
        );
        thread::sleep(Duration::from_millis(100));
    }
    // SIGTERM: a clean stop, its pins stay.
    unsafe { libc::kill(other.id() as i32, libc::SIGTERM) };
    assert!(other.wait().expect("wait").success(), "the stop failed");
    assert!(
        lab.bpffs.path.join("shield/stale0").exists(),
        "the stopped daemon's pins are gone: nothing to test"
    );
    let out = lab
        .topo
        .server
        .command(&shield_bin())
        .args(["tune", "--for", "1s", "--json", "--socket"])
        .arg(lab.socket())
        .arg("--bpffs")
        .arg(&lab.bpffs.path)
        .output()
        .expect("shield tune");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "shield tune without --iface refused with one interface protected: {err}"
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("tune --json is JSON");
    assert_eq!(report["iface"], shield_tests::netlab::SERVER_IF, "{report}");
}

#[test]
fn tune_given_another_bpffs_than_the_daemons_says_to_give_it_the_daemons() {
    // The daemon answers on its socket but pins under another --bpffs (a bpffs of its own,
    // as under `ip netns exec`): tune must say so, not report a failed BPF_OBJ_GET as if
    // shield were not running.
    let lab = NsLab::new(POLICY, &[API]);
    let elsewhere = shield_tests::netlab::TempBpffs::new().expect("a second bpffs");
    let out = lab
        .topo
        .server
        .command(&shield_bin())
        .args(["tune", "--for", "1s", "--socket"])
        .arg(lab.socket())
        .arg("--bpffs")
        .arg(&elsewhere.path)
        .output()
        .expect("shield tune");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "tune found no pins and succeeded: {err}"
    );
    assert!(
        err.contains(&format!(
            "no shield maps pinned for {}",
            shield_tests::netlab::SERVER_IF
        )) && err.contains("give tune the --bpffs the daemon"),
        "tune does not tell the operator to pass the daemon's --bpffs: {err}"
    );
}

/// `shield tune` started by hand in the lab's server namespace, its stdout and stderr piped;
/// killed and reaped on drop if it still runs (a failed test leaves no tune behind).
struct HandTune(Option<std::process::Child>);

impl HandTune {
    fn start(lab: &NsLab, args: &[&str]) -> HandTune {
        let child = lab
            .topo
            .server
            .command(&shield_bin())
            .args(["tune", "--iface", shield_tests::netlab::SERVER_IF])
            .args(args)
            .arg("--socket")
            .arg(lab.socket())
            .arg("--bpffs")
            .arg(&lab.bpffs.path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting shield tune");
        HandTune(Some(child))
    }

    fn child(&mut self) -> &mut std::process::Child {
        self.0.as_mut().expect("tune not yet finished")
    }

    /// Sends `sig` to tune (`ip netns exec` execs it: the child's pid is tune's).
    fn signal(&mut self, sig: i32) {
        let pid = self.child().id();
        // SAFETY: kill(2) on our unreaped child.
        unsafe { libc::kill(pid as i32, sig) };
    }

    fn running(&mut self) -> bool {
        self.child().try_wait().expect("wait").is_none()
    }

    /// Waits at most `within` for tune to exit (then kills it): its output and how long it
    /// took to exit.
    fn finish(mut self, within: Duration) -> (std::process::Output, Duration) {
        let mut child = self.0.take().expect("tune not yet finished");
        let t0 = std::time::Instant::now();
        while child.try_wait().expect("wait").is_none() && t0.elapsed() < within {
            thread::sleep(Duration::from_millis(10));
        }
        let took = t0.elapsed();
        let _ = child.kill();
        (child.wait_with_output().expect("tune's output"), took)
    }
}

impl Drop for HandTune {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A stopped (SIGSTOP) daemon continued on drop, whatever happens, so the lab can stop it.
struct Stopped(u32);

impl Stopped {
    fn stop(pid: u32) -> Stopped {
        // SAFETY: kill(2) on the lab's daemon, our child.
        unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::kill(self.0 as i32, libc::SIGCONT) };
    }
}

fn out_text(o: &std::process::Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn sigint_cuts_the_observation_short_and_the_report_covers_what_was_observed() {
    // `shield tune --for 10m --write FILE`, Ctrl-C after 3 s of traffic: the report of
    // those seconds is printed at once and says it was cut short; FILE is not written
    // (under a minute observed), exit 1 saying why.
    let lab = NsLab::new(POLICY, &[API]);
    for c in clients() {
        lab.topo.add_client_addr(c).expect("client address");
    }
    let file = std::env::temp_dir().join(format!("{}.toml", unique("tn2-tuned-")));
    let _cleanup = Cleanup(file.clone());
    let out = file.to_str().expect("utf-8");
    let mut tune = HandTune::start(&lab, &["--for", "10m", "--write", out]);
    let (legit, flood) = traffic(&lab, 3);
    assert_eq!(
        (legit.1, flood.1),
        (0, 0),
        "the loose limit refused someone"
    );
    assert!(tune.running(), "tune --for 10m ended before the SIGINT");
    tune.signal(libc::SIGINT);
    let (done, took) = tune.finish(Duration::from_secs(20));
    let (stdout, stderr) = out_text(&done);
    eprintln!("exit {:?} after {took:?}\n{stdout}{stderr}", done.status);
    assert!(
        took < Duration::from_secs(2),
        "tune took {took:?} to report after SIGINT"
    );
    assert_eq!(
        done.status.code(),
        Some(1),
        "exit code after a SIGINT with --write under a minute: {stderr}"
    );
    let first = stdout.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("observation cut short by SIGINT after ")
            && first.contains(" of the 10m00s asked (--for)"),
        "the report's first line does not say it was cut short: {stdout}"
    );
    assert!(
        stdout.contains("\nrule api (tcp): 9 sources,")
            && stdout.contains("suggested: connections = { rate = "),
        "the report lacks what was observed (8 clients and the flooder): {stdout}"
    );
    assert!(
        stderr.contains("SIGINT: observation cut short after")
            && stderr.contains(&format!("--write {out}: not written"))
            && stderr.contains("at least 1m00s of observation"),
        "tune did not say why FILE was not written: {stderr}"
    );
    assert!(!file.exists(), "FILE was written from 3 s of observation");
}

#[test]
fn sigterm_cuts_the_observation_short_and_the_json_says_so() {
    // SIGTERM (a service manager, `timeout`) ends it as Ctrl-C does; without --write the
    // exit is 0 and the JSON report carries "stopped_early".
    let lab = NsLab::new(POLICY, &[API]);
    for c in clients() {
        lab.topo.add_client_addr(c).expect("client address");
    }
    let mut tune = HandTune::start(&lab, &["--for", "10m", "--json"]);
    let t0 = std::time::Instant::now();
    traffic(&lab, 3);
    assert!(tune.running(), "tune --for 10m ended before the SIGTERM");
    let sent_after = t0.elapsed().as_secs_f64();
    tune.signal(libc::SIGTERM);
    let (done, took) = tune.finish(Duration::from_secs(20));
    let (stdout, stderr) = out_text(&done);
    assert!(took < Duration::from_secs(2), "{took:?} to report");
    assert!(
        done.status.success(),
        "exit {:?} after SIGTERM without --write: {stderr}",
        done.status
    );
    let report: Value = serde_json::from_str(&stdout).expect("tune --json is JSON");
    let s = &report["stopped_early"];
    assert_eq!(s["signal"], "SIGTERM", "{report}");
    assert_eq!(s["requested_seconds"], 600.0, "{report}");
    let observed = s["observed_seconds"].as_f64().expect("observed_seconds");
    assert!(
        observed > 2.5 && observed <= sent_after + 0.5,
        "observed {observed} s, SIGTERM sent {sent_after:.1} s after the start"
    );
    assert_eq!(report["rules"][0]["sources"], 9, "{report}");
}

#[test]
fn write_after_a_minute_cut_short_says_so_and_a_second_sigint_aborts_at_once() {
    // Two runs side by side, each cut short by SIGINT after 61 s (3 s of traffic first):
    // - the first writes FILE (a minute is enough), saying it comes from a cut-short
    //   observation, exit 0; the file is a valid policy;
    // - the second meets a daemon that no longer answers (SIGSTOP) when it checks the
    //   policy before writing: tune waits, and a second SIGINT ends it at once, by the
    //   signal, FILE not written.
    let lab = NsLab::new(POLICY, &[API]);
    for c in clients() {
        lab.topo.add_client_addr(c).expect("client address");
    }
    let files: Vec<_> = (0..2)
        .map(|_| std::env::temp_dir().join(format!("{}.toml", unique("tn2-tuned-"))))
        .collect();
    let _cleanup: Vec<_> = files.iter().map(|f| Cleanup(f.clone())).collect();
    let out: Vec<&str> = files.iter().map(|f| f.to_str().expect("utf-8")).collect();
    let mut written = HandTune::start(&lab, &["--for", "10m", "--write", out[0]]);
    let mut aborted = HandTune::start(&lab, &["--for", "10m", "--write", out[1]]);
    let t0 = std::time::Instant::now();
    traffic(&lab, 3);
    thread::sleep(Duration::from_secs(61).saturating_sub(t0.elapsed()));
    assert!(
        written.running() && aborted.running(),
        "tune ended by itself"
    );

    written.signal(libc::SIGINT);
    let (done, took) = written.finish(Duration::from_secs(20));
    let (stdout, stderr) = out_text(&done);
    eprintln!("exit {:?} after {took:?}\n{stdout}{stderr}", done.status);
    assert!(
        done.status.success() && took < Duration::from_secs(3),
        "exit {:?} after {took:?}: {stderr}",
        done.status
    );
    assert!(
        stdout.starts_with("observation cut short by SIGINT after 1m0"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "wrote {} (the running policy with the suggestions from an observation cut short after 1m0",
        out[0]
        )) && stdout.contains(" of 10m00s: it may have missed the busy period"),
        "the write does not say it comes from a cut-short observation: {stdout}"
    );
    // The comparison it suggests works as printed: with the daemon's --socket.
    assert!(
        stdout.contains(&format!(
            "compare: shield check --diff {} --socket {}",
            out[0],
            lab.socket().display()
        )),
        "the suggested `shield check --diff` lacks the daemon's --socket: {stdout}"
    );
    let (ok, diff, err) = lab.shield(&["check", "--diff", out[0]]);
    assert!(ok, "shield check --diff of the written file: {err}");
    assert!(diff.contains("+ api"), "{diff}");

    let pid = lab.daemon.as_ref().expect("daemon").pid();
    let _resume = Stopped::stop(pid);
    aborted.signal(libc::SIGINT);
    thread::sleep(Duration::from_secs(2));
    assert!(
        aborted.running(),
        "tune did not wait for the stopped daemon: nothing left for a second SIGINT to abort"
    );
    aborted.signal(libc::SIGINT);
    let (done, took) = aborted.finish(Duration::from_secs(10));
    let (stdout, stderr) = out_text(&done);
    assert_eq!(
        done.status.signal(),
        Some(libc::SIGINT),
        "the second SIGINT did not end tune by SIGINT (exit {:?}): {stderr}",
        done.status
    );
    assert!(took < Duration::from_secs(1), "{took:?} to abort");
    assert!(
        stdout.starts_with("observation cut short by SIGINT"),
        "the report of the first SIGINT: {stdout}"
    );
    assert!(
        !files[1].exists(),
        "FILE was written after the second SIGINT"
    );
}
