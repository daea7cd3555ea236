//! `shield tune` in the namespace lab: eight clients at about 2 connections a second and a
//! flooder at 20 a second, observed through the real daemon under a loose limit; the
//! suggestions leave every client untouched and limit the flooder once the written policy
//! is checked (`shield check --diff`) and loaded. Needs root (fails, never skips).

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
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
