//! Reloads that fail part-way (an interface refused, an `nft` that hangs): the policy in
//! force stays whole on every interface (its bans, and its cookie path for IPv6, with it),
//! and the next reload goes through.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::*;

/// A daemon started on `POLICY` in a lab of its own (on the lab's interface, and on `dum0`,
/// a veth of the server namespace, when asked), with an `nft` wrapper first on its PATH and
/// an audit log, in a directory of the test's own. Its reloads come from its file watch
/// alone (a `shield reload` beside it would make two of some).
pub(super) struct WrappedLab {
    // Dropped first: the daemon, then the namespaces, the bpffs and the directory.
    pub(super) daemon: netlab::Daemon,
    pub(super) topo: netlab::Topology,
    bpffs: netlab::TempBpffs,
    dir: shield_tests::TempDir,
    policy: PathBuf,
    audit: PathBuf,
    /// `nf_conntrack_tcp_loose` before the daemon started.
    loose_before: String,
    /// The daemon's arguments after the lab's (`restart` passes them again) and its PATH.
    args: Vec<String>,
    path_env: String,
}

impl WrappedLab {
    /// `wrapper(real nft, the test's directory)`: the wrapper's body.
    pub(super) fn start(
        policy: &str,
        second: bool,
        wrapper: impl FnOnce(&str, &Path) -> String,
    ) -> WrappedLab {
        WrappedLab::start_on(policy, if second { &["dum0"] } else { &[] }, wrapper)
    }

    /// As `start`, on the lab's interface and on `more` (veths of the server namespace,
    /// each with a peer `<name>p`), in that order.
    fn start_on(
        policy: &str,
        more: &[&str],
        wrapper: impl FnOnce(&str, &Path) -> String,
    ) -> WrappedLab {
        shield_tests::require_root();
        let topo = netlab::Topology::new().expect("building namespaces");
        let bpffs = netlab::TempBpffs::new().expect("private bpffs");
        let dir = shield_tests::TempDir::new("shield-reloads-");
        for iface in more {
            let peer = if *iface == "dum0" {
                "dum1".to_string()
            } else {
                format!("{iface}p")
            };
            super::failed_start::veth_pair(&topo.server.name, iface, &peer);
        }
        let bin = dir.0.join("bin");
        std::fs::create_dir(&bin).expect("wrapper dir");
        let path_env = shield_tests::nft_wrapper(&bin, |real| wrapper(real, &dir.0));
        let (policy_path, audit) = (dir.0.join("policy.toml"), dir.0.join("audit.jsonl"));
        std::fs::write(&policy_path, policy).expect("policy");
        let loose_before = loose(&topo.server.name);
        let mut args: Vec<String> = ["--metrics", "off", "--audit-log"].map(String::from).into();
        args.push(audit.to_str().expect("utf-8").into());
        // A state dir of the test's own, which `restart` keeps.
        args.push("--state-dir".into());
        args.push(dir.0.join("state").to_str().expect("utf-8").into());
        for iface in more {
            args.extend(["--iface".into(), iface.to_string()]);
        }
        let daemon = start_daemon(&topo, &bpffs, &policy_path, &args, &path_env);
        WrappedLab {
            daemon,
            topo,
            bpffs,
            dir,
            policy: policy_path,
            audit,
            loose_before,
            args,
            path_env,
        }
    }

    /// Stops the daemon, then starts another with the same arguments (policy file, --bpffs,
    /// --state-dir, interfaces, nft wrapper).
    fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    /// Starts a daemon with the same arguments as the first, once it stopped.
    pub(super) fn start_again(&mut self) {
        self.daemon = start_daemon(
            &self.topo,
            &self.bpffs,
            &self.policy,
            &self.args,
            &self.path_env,
        );
    }

    /// `shield ARGS --socket` the daemon's: (success, stdout, stderr).
    pub(super) fn shield(&self, args: &[&str]) -> (bool, String, String) {
        let out = std::process::Command::new(shield_tests::shield_bin())
            .args(args)
            .arg("--socket")
            .arg(&self.daemon.socket)
            .output()
            .expect("running shield");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// The interfaces on which `shield bans --json` lists a ban of `source` with `reason`.
    pub(super) fn banned_on(&self, source: &str, reason: &str) -> Vec<String> {
        let (ok, out, err) = self.shield(&["bans", "--json"]);
        assert!(ok, "shield bans: {err}");
        let v: Value = serde_json::from_str(&out).expect("bans --json is JSON");
        let mut on: Vec<String> = v["bans"]
            .as_array()
            .expect("a list of bans")
            .iter()
            .filter(|b| b["source"] == source && b["comment"] == reason)
            .filter_map(|b| b["iface"].as_str().map(String::from))
            .collect();
        on.sort();
        on
    }

    /// A file of the test's directory (a flag the wrapper reads, say).
    pub(super) fn file(&self, name: &str) -> PathBuf {
        self.dir.0.join(name)
    }

    pub(super) fn write_policy(&self, text: &str) {
        std::fs::write(&self.policy, text).expect("policy");
    }

    /// The lab's bpffs.
    pub(super) fn bpffs_path(&self) -> PathBuf {
        self.bpffs.path.clone()
    }

    /// The policy generation in force in `iface`'s maps.
    pub(super) fn generation(&self, iface: &str) -> u32 {
        shield_user::stats::read_iface(&self.bpffs.path, iface)
            .expect("stats")
            .policy_generation
    }

    /// What `iface`'s maps have in force: (policy half, list half, generation).
    fn in_force(&self, iface: &str) -> (u32, u32, u32) {
        let dir = shield_user::loader::pin_dir(&self.bpffs.path, iface);
        let (half, cfg) = shield_user::loader::PolicyMaps::open(&dir)
            .and_then(|t| t.active())
            .expect("the policy tables");
        (half, cfg.list_half, cfg.generation)
    }

    /// `iface`'s syncookie table (empty: none), listed by the real nft.
    fn table(&self, iface: &str) -> String {
        let out = run_in(
            &self.topo.server.name,
            &[
                "nft",
                "-s",
                "list",
                "table",
                "inet",
                &shield_user::synproxy::table_name(iface),
            ],
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `nf_conntrack_tcp_loose` in the server namespace.
    fn loose(&self) -> String {
        loose(&self.topo.server.name)
    }

    /// The `n`-th reload's audit event (written once the reload is over, undone or not),
    /// waiting for it; there must be no more than `n` (one per write of the file).
    pub(super) fn reload(&self, n: usize) -> Value {
        // Long enough for an nft killed after NFT_PATIENCE, twice, on a slow machine.
        let deadline = std::time::Instant::now() + Duration::from_secs(150);
        loop {
            let lines = std::fs::read_to_string(&self.audit).unwrap_or_default();
            let events: Vec<Value> = lines
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter(|e| e["event"] == "reload")
                .collect();
            if let Some(e) = events.get(n - 1) {
                assert_eq!(events.len(), n, "one reload per write: {lines}");
                return e.clone();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no reload {n} in the audit log after 150 s:\n{lines}\n{}",
                self.daemon.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The first reload (port 8001 added) while the test's file `hang` exists (a wrapper
    /// that hangs then): it fails once nft was killed.
    fn first_reload_with_nft_hung(&self) {
        std::fs::write(self.file("hang"), "").expect("hang");
        self.write_policy(&POLICY.replace("[8000]", "[8000, 8001]"));
        let e = self.reload(1);
        std::fs::remove_file(self.file("hang")).expect("hang");
        assert!(
            e["result"] == "error" && e["error"].as_str().unwrap_or_default().contains("killed"),
            "{e}"
        );
    }

    pub(super) fn stop(&mut self) {
        let (status, log) = self.daemon.stop().expect("stop");
        assert!(status.success(), "{log}");
    }
}

/// `shield run` with `args` after the lab's, `path_env` its PATH, ready.
fn start_daemon(
    topo: &netlab::Topology,
    bpffs: &netlab::TempBpffs,
    policy: &Path,
    args: &[String],
    path_env: &str,
) -> netlab::Daemon {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    netlab::Daemon::start_env(
        &shield_tests::shield_bin(),
        &topo.server,
        policy,
        &bpffs.path,
        &args,
        &[("PATH", path_env)],
    )
    .expect("starting shield run")
}

/// `nf_conntrack_tcp_loose` in the namespace `ns`.
fn loose(ns: &str) -> String {
    let out = run_in(
        ns,
        &["cat", "/proc/sys/net/netfilter/nf_conntrack_tcp_loose"],
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The body of an `nft` wrapper that refuses any script naming dum0 while the test's file
/// `refuse` exists.
fn refusing_dum0(real: &str, dir: &Path) -> String {
    refusing("dum0", real, dir)
}

/// The body of an `nft` wrapper that refuses any script naming `iface` while the test's
/// file `refuse` exists.
fn refusing(iface: &str, real: &str, dir: &Path) -> String {
    format!(
        "if [ \"$1\" = -f ] && [ -e '{}' ]; then\n  script=$(cat)\n  case \"$script\" in *'\"{iface}\"'*) echo 'wrapper: refused' >&2; exit 1;; esac\n  printf '%s\\n' \"$script\" | exec {real} \"$@\"\nfi\nexec {real} \"$@\"\n",
        dir.join("refuse").display()
    )
}

/// A reload that fails on the second of two interfaces (here `nft` refuses the second one's
/// syncookie table) changes nothing on the first: its maps keep the policy in force (same
/// generation) and its table stays as it was. Once `nft` takes it, the same reload goes
/// through on both.
#[test]
fn a_reload_that_fails_on_one_interface_changes_none() {
    let mut lab = WrappedLab::start(POLICY, true, refusing_dum0);
    let both = || (lab.generation(netlab::SERVER_IF), lab.generation("dum0"));
    let before = both();
    let (first, second) = (lab.table(netlab::SERVER_IF), lab.table("dum0"));
    assert!(
        first.contains("8000") && second.contains("8000"),
        "{first}{second}"
    );

    // The operator edits the file: the daemon reloads it, and the reload fails on dum0.
    std::fs::write(lab.file("refuse"), "").expect("refuse");
    lab.write_policy(&POLICY.replace("[8000]", "[8000, 8001]"));
    let failed = lab.reload(1);
    let said = failed["error"].as_str().unwrap_or_default();
    assert!(
        failed["result"] == "error" && said.contains("dum0") && said.contains("wrapper: refused"),
        "{failed}"
    );
    assert_eq!(
        both(),
        before,
        "a failed reload changed the policy in force: {failed}"
    );
    assert_eq!(
        lab.table(netlab::SERVER_IF),
        first,
        "the first interface's table"
    );
    assert_eq!(lab.table("dum0"), second, "the second interface's table");

    std::fs::remove_file(lab.file("refuse")).expect("refuse");
    lab.write_policy(&POLICY.replace("[8000]", "[8000, 8002]"));
    let e = lab.reload(2);
    assert_eq!(e["result"], "ok", "{e}");
    assert_eq!(both(), (before.0 + 1, before.1 + 1));
    assert!(lab.table(netlab::SERVER_IF).contains("8002") && lab.table("dum0").contains("8002"));
    lab.stop();
}

/// Whether a TCP connection attempt from `src` to the server's closed port 9 reaches the
/// server (refused) rather than being dropped (no answer within 2 s). From the client side.
pub(super) fn reaches_server(topo: &netlab::Topology, src: IpAddr) -> bool {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    topo.client
        .run_in(move || {
            let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).expect("socket");
            s.bind(&SockAddr::from(SocketAddr::new(src, 0)))
                .expect("bind");
            let to = SocketAddr::new(IpAddr::V4(netlab::SERVER_V4), 9);
            match s.connect_timeout(&SockAddr::from(to), Duration::from_secs(2)) {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => true,
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => false,
                other => panic!("connecting from {src} to {to}: {other:?}"),
            }
        })
        .expect("client namespace")
}

/// A reload that changed the deny list on the first interface and was undone there (it
/// failed on the second) leaves the first interface's lists whole, and so does the next
/// reload that succeeds with the lists in force (the old list half is the one in force
/// again: nothing may empty it).
#[test]
fn an_undone_list_change_keeps_the_lists_in_force() {
    let lists = |deny: &str| format!("[lists]\ndeny = [{deny}]\n{POLICY}");
    let mut lab = WrappedLab::start(&lists("\"192.0.2.0/24\""), true, refusing_dum0);
    let denied = IpAddr::V4(netlab::DENIED_V4);
    assert!(reaches_server(&lab.topo, denied), "not in the deny list");

    // The deny list in force: swapped in by a reload (each half's lists then known).
    lab.write_policy(&lists("\"203.0.113.0/24\""));
    let e = lab.reload(1);
    assert_eq!(e["result"], "ok", "{e}");
    assert!(!reaches_server(&lab.topo, denied), "the deny list in force");

    // A new deny list: swapped on the first interface, refused on dum0, undone.
    std::fs::write(lab.file("refuse"), "").expect("refuse");
    // (Another port too: a table that does not change is not given to nft.)
    lab.write_policy(
        &lists("\"203.0.113.0/24\", \"192.0.2.0/24\"").replace("[8000]", "[8000, 8002]"),
    );
    let e = lab.reload(2);
    assert!(
        e["result"] == "error" && e["error"].as_str().unwrap_or_default().contains("refused"),
        "{e}"
    );
    assert!(
        !reaches_server(&lab.topo, denied),
        "after the undone reload"
    );

    // The lists in force again, another port: the lists do not swap this time.
    std::fs::remove_file(lab.file("refuse")).expect("refuse");
    lab.write_policy(&lists("\"203.0.113.0/24\"").replace("[8000]", "[8000, 8001]"));
    let e = lab.reload(3);
    assert_eq!(e["result"], "ok", "{e}");
    assert!(
        !reaches_server(&lab.topo, denied),
        "the next reload emptied the deny list in force:\n{}",
        lab.daemon.log_text()
    );
    // And back out of the deny list.
    lab.write_policy(&lists("\"192.0.2.0/24\""));
    let e = lab.reload(4);
    assert_eq!(e["result"], "ok", "{e}");
    assert!(reaches_server(&lab.topo, denied), "the deny list changed");
    lab.stop();
}

/// A reload that fails on the third of three interfaces (`nft` refuses its table) after
/// the first two took it (new deny list, new port) leaves all three on the policy in force:
/// the same policy half, list half and generation in their maps, the same tables, and the
/// deny list in force still dropping on the first. The next reload takes all three.
#[test]
fn a_reload_that_fails_on_the_third_interface_changes_none() {
    let lists = |deny: &str| format!("[lists]\ndeny = [{deny}]\n{POLICY}");
    let ifaces = [netlab::SERVER_IF, "at8b", "at8c"];
    let mut lab = WrappedLab::start_on(&lists("\"203.0.113.0/24\""), &ifaces[1..], |real, dir| {
        refusing("at8c", real, dir)
    });
    let denied = IpAddr::V4(netlab::DENIED_V4);
    assert!(!reaches_server(&lab.topo, denied), "in the deny list");
    let state = || ifaces.map(|i| (lab.in_force(i), lab.table(i)));
    let before = state();
    for (i, (_, table)) in ifaces.iter().zip(&before) {
        assert!(table.contains("8000") && table.contains(i), "{i}: {table}");
    }

    std::fs::write(lab.file("refuse"), "").expect("refuse");
    lab.write_policy(&lists("\"192.0.2.0/24\"").replace("[8000]", "[8000, 8001]"));
    let failed = lab.reload(1);
    let said = failed["error"].as_str().unwrap_or_default();
    assert!(
        failed["result"] == "error" && said.contains("at8c") && said.contains("wrapper: refused"),
        "{failed}"
    );
    let after = state();
    for ((i, b), a) in ifaces.iter().zip(&before).zip(&after) {
        assert_eq!(a, b, "{i} after the failed reload: {failed}");
    }
    assert!(
        !reaches_server(&lab.topo, denied),
        "the undone reload's deny list is in force on {}",
        netlab::SERVER_IF
    );

    std::fs::remove_file(lab.file("refuse")).expect("refuse");
    lab.write_policy(&lists("\"192.0.2.0/24\"").replace("[8000]", "[8000, 8002]"));
    let e = lab.reload(2);
    assert_eq!(e["result"], "ok", "{e}");
    for (i, ((half, list_half, generation), _)) in ifaces.iter().zip(&before) {
        let (h, l, g) = lab.in_force(i);
        assert_eq!(
            (h, l, g),
            (1 - half, 1 - list_half, generation + 1),
            "{i} after the next reload"
        );
        assert!(lab.table(i).contains("8002"), "{i}: {}", lab.table(i));
    }
    assert!(reaches_server(&lab.topo, denied), "the new deny list");
    lab.stop();
}

/// A ban in force before a reload that is undone (refused on the second interface) stays
/// in force and listed on both; so it does after a restart on the same --bpffs, and after
/// one whose pins are gone (a reboot, here `shield detach`), from the --state-dir.
#[test]
fn bans_stay_through_an_undone_reload_and_restarts() {
    let mut lab = WrappedLab::start(POLICY, true, refusing_dum0);
    let (source, reason) = ("203.0.113.7/32", "at8 ticket");
    let src = IpAddr::V4(netlab::DENIED_V4);
    assert!(reaches_server(&lab.topo, src), "before the ban");
    let (ok, _, err) = lab.shield(&["ban", source, "--for", "1h", "--reason", reason]);
    assert!(ok, "shield ban: {err}");
    let both = {
        let mut b = vec![netlab::SERVER_IF.to_string(), "dum0".to_string()];
        b.sort();
        b
    };
    assert_eq!(lab.banned_on(source, reason), both);
    assert!(!reaches_server(&lab.topo, src), "banned");

    std::fs::write(lab.file("refuse"), "").expect("refuse");
    lab.write_policy(&POLICY.replace("[8000]", "[8000, 8001]"));
    let e = lab.reload(1);
    assert_eq!(e["result"], "error", "{e}");
    assert_eq!(
        lab.banned_on(source, reason),
        both,
        "after the undone reload"
    );
    assert!(!reaches_server(&lab.topo, src), "after the undone reload");

    // The same pins: the bans in the maps.
    std::fs::remove_file(lab.file("refuse")).expect("refuse");
    lab.restart();
    assert_eq!(lab.banned_on(source, reason), both, "after a restart");
    assert!(!reaches_server(&lab.topo, src), "after a restart");

    // No pins: the bans the state dir kept.
    lab.stop();
    for iface in [netlab::SERVER_IF, "dum0"] {
        let out = run_in(
            &lab.topo.server.name,
            &[
                shield_tests::shield_bin().to_str().expect("utf-8"),
                "detach",
                iface,
                "--bpffs",
                lab.bpffs.path.to_str().expect("utf-8"),
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    lab.daemon = start_daemon(&lab.topo, &lab.bpffs, &lab.policy, &lab.args, &lab.path_env);
    assert_eq!(lab.banned_on(source, reason), both, "from the state dir");
    assert!(!reaches_server(&lab.topo, src), "from the state dir");
    lab.stop();
}

/// IPv6 clients complete their connections through the cookie path (the XDP cookie, then
/// the table's IPv6 `synproxy` statement, behind its IPv6 connection meter) before a reload
/// that is undone on the lab's interface (`nft` refuses the second's table), after it (the
/// table put back from its listing, IPv6 meter and all), and after the next reload.
#[test]
fn ipv6_clients_get_through_the_cookie_path_across_an_undone_reload() {
    let policy = POLICY.replace(
        "challenge",
        "connections = { rate = \"100/s\", burst = 100 }\nchallenge",
    );
    let mut lab = WrappedLab::start(&policy, true, refusing_dum0);
    let _api = Gunicorn::start(&lab.topo.server, 8000).expect("starting the demo API");
    for i in 0..12 {
        lab.topo
            .add_client_addr(client6(i))
            .expect("client address");
    }
    let _pass = shield_tests::nslab::pass_program_on_client(&lab.topo);
    let table = lab.table(netlab::SERVER_IF);
    assert!(table.contains("ip6 saddr &"), "no IPv6 meter: {table}");
    // Clients `from..from + 4`, each a connection to the API: all answered.
    let get = |from: u32| {
        let dst = SocketAddr::new(IpAddr::V6(netlab::SERVER_V6), 8000);
        let codes: Vec<Option<u16>> = lab
            .topo
            .client
            .run_in(move || {
                (from..from + 4)
                    .map(|i| http_get(client6(i), dst, "/api/items", Duration::from_secs(3)))
                    .collect()
            })
            .expect("client namespace");
        assert!(codes.iter().all(|c| *c == Some(200)), "{codes:?}");
    };
    let cookies = || {
        api_rule_of(&lab.bpffs.path)["counters"]["syncookie"]["packets"]
            .as_u64()
            .unwrap_or(0)
    };
    get(0);
    let first = cookies();
    assert!(first >= 3, "the budget's one token, then cookies: {first}");

    std::fs::write(lab.file("refuse"), "").expect("refuse");
    lab.write_policy(&policy.replace("[8000]", "[8000, 8001]"));
    let e = lab.reload(1);
    assert!(
        e["result"] == "error" && e["error"].as_str().unwrap_or_default().contains("refused"),
        "{e}"
    );
    assert_eq!(lab.table(netlab::SERVER_IF), table, "the table put back");
    get(4);
    let second = cookies();
    assert!(
        second >= first + 4,
        "after the undone reload: {first} -> {second}"
    );

    std::fs::remove_file(lab.file("refuse")).expect("refuse");
    lab.write_policy(&policy.replace("[8000]", "[8000, 8002]"));
    let e = lab.reload(2);
    assert_eq!(e["result"], "ok", "{e}");
    get(8);
    let third = cookies();
    assert!(
        third >= second + 4,
        "after the next reload: {second} -> {third}"
    );
    lab.stop();
}

/// Rule `api` as `shield stats --json` would show it, from the pins under `bpffs`.
fn api_rule_of(bpffs: &Path) -> Value {
    let s = shield_user::stats::read_iface(bpffs, netlab::SERVER_IF).expect("stats");
    let s = serde_json::to_value(&s).expect("stats as JSON");
    s["rules"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["name"] == "api").cloned())
        .expect("rule api in the stats")
}

/// An `nft` that hangs listing the table during a reload (killed after NFT_PATIENCE) is
/// no word that there is no table: the reload fails and the table stays as it was, still
/// remembering conntrack's own `nf_conntrack_tcp_loose`, which the stop puts back (taken
/// for no table, the replacement remembered shield's own 0, and the stop left 0).
#[test]
fn an_nft_that_hangs_listing_fails_the_reload() {
    let mut lab = WrappedLab::start(POLICY, false, |real, dir| {
        format!(
            "if [ -e '{}' ]; then case \"$*\" in *list*) exec sleep 600;; esac; fi\nexec {real} \"$@\"\n",
            dir.join("hang").display()
        )
    });
    let before = lab.loose_before.clone();
    let first = lab.table(netlab::SERVER_IF);
    assert!(
        first.contains(&format!("nf_conntrack_tcp_loose was {before}\"")),
        "{first}"
    );
    assert_eq!(lab.loose(), "0");

    lab.first_reload_with_nft_hung();
    assert_eq!(
        lab.table(netlab::SERVER_IF),
        first,
        "the table after the failed reload"
    );
    lab.stop();
    assert_eq!(lab.loose(), before, "nf_conntrack_tcp_loose after the stop");
    assert!(
        lab.table(netlab::SERVER_IF).is_empty(),
        "the stop left the table"
    );
}

/// An `nft` that leaves a process of its own session holding its output open (out of reach
/// of the kill of nft's process group) does not hold the reload for ever: it fails once
/// nft was killed, and the daemon goes on (the next reload, with a plain nft, goes through).
#[test]
fn an_nft_whose_output_stays_open_does_not_hold_the_reload() {
    let mut lab = WrappedLab::start(POLICY, false, |real, dir| {
        format!(
            "if [ -e '{}' ]; then setsid sh -c 'echo $$ > {}; exec sleep 600' & exec sleep 600; fi\nexec {real} \"$@\"\n",
            dir.join("hang").display(),
            dir.join("pid").display()
        )
    });
    /// Kills the process the wrapper left in a session of its own, on every exit path.
    struct Reap(PathBuf);
    impl Drop for Reap {
        fn drop(&mut self) {
            if let Some(p) = std::fs::read_to_string(&self.0)
                .ok()
                .and_then(|p| p.trim().parse::<i32>().ok())
            {
                // SAFETY: kill(2) on the pid the wrapper's own process wrote.
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
        }
    }
    let _reap = Reap(lab.file("pid"));
    lab.first_reload_with_nft_hung();
    lab.write_policy(&POLICY.replace("[8000]", "[8000, 8002]"));
    let e = lab.reload(2);
    assert_eq!(e["result"], "ok", "{e}");
    lab.stop();
}
