//! A namespace lab for the daemon tests: server and client namespaces, TCP servers on the
//! given ports, a private bpffs, the real `shield run` with an audit log, and helpers that
//! run `shield` the way a user does. Everything is removed on drop. `HandRun` starts
//! `shield run` by hand, outside the lab's guard, for the runs a test expects to be refused,
//! to fail or to be stopped.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use crate::netlab::{
    Connects, Daemon, Netns, SERVER_V4, SERVER_V6, TcpServer, TempBpffs, Topology, connect_legit,
    connect_many, unique,
};
use serde_json::Value;

use crate::{require_root, shield_bin};

pub struct NsLab {
    // Drop order: daemon (detach) → servers → namespaces → bpffs; files in `Drop`.
    pub daemon: Option<Daemon>,
    _servers: Vec<TcpServer>,
    pub topo: Topology,
    pub bpffs: TempBpffs,
    pub policy: PathBuf,
    pub audit: PathBuf,
}

impl Drop for NsLab {
    fn drop(&mut self) {
        self.daemon = None;
        let _ = std::fs::remove_file(&self.policy);
        let _ = std::fs::remove_file(&self.audit);
    }
}

impl NsLab {
    /// Builds the lab with TCP servers on `ports` and starts the daemon on `policy`.
    pub fn new(policy: &str, ports: &[u16]) -> NsLab {
        NsLab::with_queues(policy, ports, 1)
    }

    /// As `new`, with `queues` veth queues (see `Topology::with_queues`).
    pub fn with_queues(policy: &str, ports: &[u16], queues: u32) -> NsLab {
        NsLab::build(policy, ports, queues, TcpServer::start)
    }

    /// As `new`, with servers that keep each connection open until the client closes it
    /// (`TcpServer::holding`): for tests whose clients send data on an established
    /// connection.
    pub fn holding(policy: &str, ports: &[u16]) -> NsLab {
        NsLab::build(policy, ports, 1, TcpServer::holding)
    }

    fn build(
        policy: &str,
        ports: &[u16],
        queues: u32,
        server: fn(&crate::netlab::Netns, u16) -> anyhow::Result<TcpServer>,
    ) -> NsLab {
        require_root();
        let path = std::env::temp_dir().join(format!("{}.toml", unique("shield-policy-")));
        std::fs::write(&path, policy).expect("writing the test policy");
        let audit = std::env::temp_dir().join(format!("{}.jsonl", unique("shield-audit-")));
        let bpffs = TempBpffs::new().expect("private bpffs");
        let topo = Topology::with_queues(queues).expect("building namespaces");
        let servers = ports
            .iter()
            .map(|p| server(&topo.server, *p).expect("starting a server"))
            .collect();
        let mut lab = NsLab {
            daemon: None,
            _servers: servers,
            topo,
            bpffs,
            policy: path,
            audit,
        };
        lab.start();
        lab
    }

    /// Starts (or restarts) `shield run` with the lab's policy, bpffs and audit log.
    pub fn start(&mut self) {
        let audit = self.audit.to_str().expect("utf-8").to_string();
        self.daemon = Some(
            Daemon::start(
                &shield_bin(),
                &self.topo.server,
                &self.policy,
                &self.bpffs.path,
                &["--audit-log", &audit],
            )
            .expect("starting shield run"),
        );
    }

    pub fn daemon(&mut self) -> &mut Daemon {
        self.daemon.as_mut().expect("daemon running")
    }

    /// The running daemon's control socket.
    pub fn socket(&self) -> PathBuf {
        self.daemon.as_ref().expect("daemon running").socket.clone()
    }

    /// The server's `port`, in the address family of `src`.
    fn server(src: IpAddr, port: u16) -> SocketAddr {
        let dst = if src.is_ipv4() {
            IpAddr::V4(SERVER_V4)
        } else {
            IpAddr::V6(SERVER_V6)
        };
        SocketAddr::new(dst, port)
    }

    /// `count` real TCP connections from `src` to the server's `port`, one every `every`.
    pub fn connect(&self, src: IpAddr, port: u16, count: u32, every: Duration) -> Connects {
        let dst = Self::server(src, port);
        self.topo
            .client
            .run_in(move || connect_many(&[src], dst, count, every, Duration::from_millis(300)))
            .expect("client namespace")
    }

    /// `count` TCP connections from a client that must lose none (see `connect_legit`: each
    /// waits for its answer, and one whose SYN had to be sent again counts as failed).
    pub fn connect_legit(&self, src: IpAddr, port: u16, count: u32, every: Duration) -> Connects {
        let dst = Self::server(src, port);
        self.topo
            .client
            .run_in(move || connect_legit(&[src], dst, count, every))
            .expect("client namespace")
    }

    /// Runs `shield ARGS` (with the daemon's `--socket`, except for `detach`): (success,
    /// stdout, stderr).
    pub fn shield(&self, args: &[&str]) -> (bool, String, String) {
        let mut c = Command::new(shield_bin());
        c.args(args);
        if let Some(d) = self.daemon.as_ref().filter(|_| args[0] != "detach") {
            c.arg("--socket").arg(&d.socket);
        }
        let out = c.output().expect("running shield");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// A trivial XDP_PASS program on the client's veth, native: veth takes the frames the
    /// server side XDP_TXes (cookie SYN-ACKs) only with an XDP program (its NAPI ring) on.
    /// Detached when the returned object drops.
    pub fn pass_program_on_client(&self) -> aya::Ebpf {
        pass_program_on_client(&self.topo)
    }

    /// Runs `during` while the client namespace floods the server's TCP port `dport` with
    /// random 10/8 spoofed SYNs at the generator's full rate (on the last CPU, at
    /// SCHED_IDLE: the attacker's own CPU time is not the host's). The flood stops however
    /// `during` ends, a panic included. Returns (SYNs sent, seconds) and what `during` gave.
    pub fn flood_while<R: Send>(&self, dport: u16, during: impl FnOnce() -> R) -> ((u64, f64), R) {
        use crate::synflood::{Generator, MODE_RANDOM, cpus, mac_of, pin_to, run_idle, syn_frame};
        use std::sync::atomic::{AtomicBool, Ordering};
        /// Stops the flood when dropped (also while unwinding).
        struct StopOnDrop<'a>(&'a AtomicBool);
        impl Drop for StopOnDrop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let stop = AtomicBool::new(false);
        let mac = mac_of(&self.topo.server.name, crate::netlab::SERVER_IF).expect("server MAC");
        let frame = syn_frame(mac, [10, 0, 0, 1], SERVER_V4.octets(), dport);
        let generator = Generator::new(MODE_RANDOM, 0).expect("generator");
        let (flood, out) = std::thread::scope(|s| {
            let flood = s.spawn(|| {
                self.topo
                    .client
                    .run_in(|| {
                        pin_to(cpus() - 1);
                        run_idle();
                        generator.flood_until(&frame, &stop, None)
                    })
                    .expect("client namespace")
            });
            let stopping = StopOnDrop(&stop);
            let out = during();
            drop(stopping);
            (flood.join().expect("flood thread"), out)
        });
        (flood.expect("flood"), out)
    }

    /// `shield stats --json`, parsed.
    pub fn stats(&self) -> Value {
        let out = Command::new(shield_bin())
            .args(["stats", "--json", "--bpffs"])
            .arg(&self.bpffs.path)
            .output()
            .expect("running shield stats");
        assert!(
            out.status.success(),
            "shield stats failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("shield stats --json must print JSON")
    }

    /// The audit log so far, one JSON value per line.
    pub fn audit_lines(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.audit)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("audit line {l:?} is not JSON: {e}"))
            })
            .collect()
    }

    /// The audit log's lines of `event`, in order.
    pub fn audit_events(&self, event: &str) -> Vec<Value> {
        self.audit_lines()
            .into_iter()
            .filter(|l| l["event"] == event)
            .collect()
    }

    /// The bans `shield bans --json` lists (through the running daemon).
    pub fn bans(&self) -> Vec<Value> {
        let (ok, out, err) = self.shield(&["bans", "--json"]);
        assert!(ok, "shield bans: {err}");
        let v: Value = serde_json::from_str(&out).expect("bans --json is JSON");
        v.as_array()
            .or_else(|| v["bans"].as_array())
            .expect("a list of bans")
            .clone()
    }
}

/// `shield run ARGS` started by hand in the namespace `ns` (the lab's server namespace, say),
/// not through `Daemon`, which waits until it serves: a run the test expects to be refused,
/// to fail or to be stopped. Its stdin is /dev/null, its stdout and stderr piped. Killed and
/// reaped on drop if it still runs, so a test that fails while it runs leaves no daemon
/// behind.
pub struct HandRun {
    child: Option<Child>,
}

impl HandRun {
    pub fn start(ns: &Netns, args: &[&str]) -> HandRun {
        HandRun::start_with(ns, args, |_| {})
    }

    /// As `start`, with `setup` applied to the command first (an environment, a process
    /// group of its own).
    pub fn start_with(ns: &Netns, args: &[&str], setup: impl FnOnce(&mut Command)) -> HandRun {
        let mut c = ns.command(&shield_bin());
        setup(&mut c);
        let child = c
            .arg("run")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting shield run by hand");
        HandRun { child: Some(child) }
    }

    fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("the run not yet finished")
    }

    /// Whether it has not exited yet.
    pub fn running(&mut self) -> bool {
        self.child().try_wait().expect("wait").is_none()
    }

    /// Sends it the signal `sig`.
    pub fn signal(&mut self, sig: i32) {
        let pid = self.child().id();
        // SAFETY: kill(2) on our child's pid, which has not been reaped.
        unsafe { libc::kill(pid as i32, sig) };
    }

    /// Sends the signal `sig` to its process group, as a terminal's Ctrl-C does (started
    /// with a group of its own: `Command::process_group(0)` in `start_with`).
    pub fn signal_group(&mut self, sig: i32) {
        let pid = self.child().id();
        // SAFETY: kill(2) on the group our unreaped child leads.
        unsafe { libc::kill(-(pid as i32), sig) };
    }

    /// Waits for it to exit by itself, killing it after `within` (its status then says so):
    /// its status and output.
    pub fn finish(mut self, within: Duration) -> Output {
        let mut child = self.child.take().expect("the run not yet finished");
        let deadline = Instant::now() + within;
        while child.try_wait().expect("wait").is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.wait_with_output().expect("output")
    }

    /// Waits for it to exit, as long as it takes: its status and output.
    pub fn output(mut self) -> Output {
        let child = self.child.take().expect("the run not yet finished");
        child.wait_with_output().expect("output")
    }
}

impl Drop for HandRun {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A run's stdout, then its stderr, as text.
pub fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Packets counted for `rule` × `reason` in `shield stats --json` output (0 if absent).
pub fn counter(stats: &Value, rule: &str, reason: &str) -> u64 {
    stats["interfaces"][0]["rules"]
        .as_array()
        .expect("rules array")
        .iter()
        .find(|r| r["name"] == rule)
        .map_or(0, |r| {
            r["counters"][reason]["packets"].as_u64().unwrap_or(0)
        })
}

/// `NsLab::pass_program_on_client` for any lab's topology.
pub fn pass_program_on_client(topo: &crate::netlab::Topology) -> aya::Ebpf {
    let mut obj = crate::load_bench_object();
    topo.client
        .run_in(|| {
            let p: &mut aya::programs::Xdp = obj
                .program_mut(shield_common::BASELINE_PROGRAM_NAME)
                .expect("the trivial pass program")
                .try_into()
                .expect("an XDP program");
            p.load().expect("loading the pass program");
            p.attach(crate::netlab::CLIENT_IF, aya::programs::XdpMode::Driver)
                .expect("attaching the pass program to the client veth");
        })
        .expect("client namespace");
    obj
}
