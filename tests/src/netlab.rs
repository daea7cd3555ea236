//! Throwaway network labs for the demo (`shield-demo`), the integration tests and the
//! benchmarks: network namespaces joined by a veth pair, a private bpffs, the real daemon and
//! a Flask API under gunicorn; TCP servers and TCP and HTTP clients (`traffic`) are
//! re-exported here. Every resource is a
//! guard that removes itself on drop, so failed runs and parallel tests leave nothing
//! behind. Nothing here touches the host's own interfaces.

use std::{
    ffi::CString,
    fs::File,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

pub use crate::traffic::{
    Connects, TcpServer, connect_legit, connect_many, http_get, http_get_timed, http_many,
};

/// The lab's addresses: documentation ranges, outside the example policy's lists.
pub const SERVER_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
pub const LEGIT_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
pub const ATTACKER_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 3);
pub const SERVER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 1, 0, 0, 0, 1);
pub const LEGIT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 1, 0, 0, 0, 2);
/// The rotating IPv6 attacker uses `ROTATING_V6_COUNT` addresses inside this /64.
pub const ROTATING_V6_PREFIX: [u16; 4] = [0x2001, 0xdb8, 1, 2];
pub const ROTATING_V6_COUNT: u16 = 16;
/// Interface names inside the namespaces (each namespace has its own name space).
pub const SERVER_IF: &str = "shield0";
pub const CLIENT_IF: &str = "peer0";

/// A client in a deny-listed network and a partner on the allow list (demo policy).
pub const DENIED_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);
pub const PARTNER_V4: Ipv4Addr = Ipv4Addr::new(10, 20, 0, 5);
/// Fresh sources for tests: the client may add any address of this range to its side.
pub const POOL_V4: (Ipv4Addr, u8) = (Ipv4Addr::new(100, 64, 0, 0), 10);
/// And of this one for IPv6 (2001:db8:4000::/34).
pub const POOL_V6: (Ipv6Addr, u8) = (Ipv6Addr::new(0x2001, 0xdb8, 0x4000, 0, 0, 0, 0, 0), 34);

pub fn rotating_v6(i: u16) -> Ipv6Addr {
    let p = ROTATING_V6_PREFIX;
    Ipv6Addr::new(p[0], p[1], p[2], p[3], 0xa, 0xb, 0xc, 0x100 + i)
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A short name unique to this process and call (fits the 15-byte interface limit too).
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}x{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs a command, failing with its stderr.
pub fn sh(program: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program} (is it installed?)"))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Fails with what is missing unless this process can build labs.
pub fn require_privileges() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "needs root (network namespaces, bpffs mounts and XDP attach need CAP_SYS_ADMIN, CAP_NET_ADMIN and CAP_BPF); run as root, e.g. `sudo -E cargo xtask test`"
        );
    }
    Command::new("ip")
        .arg("-V")
        .output()
        .context("needs the `ip` command (Debian package iproute2)")?;
    Ok(())
}

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(prefix: &str) -> Result<Netns> {
        let name = unique(prefix);
        sh("ip", &["netns", "add", &name])?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `ip -n <ns> ARGS…`
    pub fn ip(&self, args: &[&str]) -> Result<()> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        sh("ip", &all)
    }

    /// A command that runs inside the namespace (`ip netns exec`).
    pub fn command(&self, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Runs `f` on a thread that has joined this namespace: sockets it opens live there.
    pub fn run_in<R: Send>(&self, f: impl FnOnce() -> R + Send) -> Result<R> {
        let file = File::open(format!("/run/netns/{}", self.name))
            .with_context(|| format!("opening netns {}", self.name))?;
        std::thread::scope(|s| {
            s.spawn(|| {
                enter(&file)?;
                Ok(f())
            })
            .join()
            .map_err(|_| anyhow::anyhow!("thread in netns {} panicked", self.name))?
        })
    }

    /// Like `run_in`, on a detached thread (for servers).
    pub fn spawn_in<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> Result<JoinHandle<Result<R>>> {
        let file = File::open(format!("/run/netns/{}", self.name))
            .with_context(|| format!("opening netns {}", self.name))?;
        Ok(std::thread::spawn(move || {
            enter(&file)?;
            Ok(f())
        }))
    }
}

fn enter(ns: &File) -> Result<()> {
    // SAFETY: a valid namespace fd; CLONE_NEWNET only affects the calling thread.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error()).context("setns(CLONE_NEWNET)");
    }
    Ok(())
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// A private bpffs mount, unmounted and removed on drop (tests never pin under the host's
/// /sys/fs/bpf).
pub struct TempBpffs {
    pub path: PathBuf,
}

impl TempBpffs {
    pub fn new() -> Result<TempBpffs> {
        let path = std::env::temp_dir().join(unique("shield-bpffs-"));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        let guard = TempBpffs { path };
        shield_user::loader::ensure_bpffs(&guard.path)?;
        Ok(guard)
    }
}

impl Drop for TempBpffs {
    fn drop(&mut self) {
        if let Ok(c) = CString::new(self.path.as_os_str().as_encoded_bytes()) {
            // SAFETY: valid NUL-terminated path.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Server and client namespaces joined by one veth pair: `SERVER_IF` (where shield
/// attaches) ↔ `CLIENT_IF`, with the legit, attacker and rotating IPv6 addresses on the
/// client side.
pub struct Topology {
    // Field order = drop order: namespaces go last.
    pub server: Netns,
    pub client: Netns,
}

impl Topology {
    pub fn new() -> Result<Topology> {
        Topology::with_queues(1)
    }

    /// A veth pair with `queues` queues per direction, the client's transmit queue `i`
    /// used by CPU `i` (XPS): like a multi-queue NIC with RSS, traffic sent from different
    /// CPUs lands in different receive rings, each with its own NAPI. The server's own
    /// stack sends on queue 0 from every CPU: a NIC gives XDP_TX rings of its own, but veth
    /// puts what the server's program sends back (cookie SYN-ACKs to the flood, from the
    /// flood's CPU) in the same peer receive ring as what its stack sends on that queue,
    /// where a full ring drops the stack's replies to the legit clients (CI lost 3 of 200
    /// new clients' HTTP answers to this).
    pub fn with_queues(queues: u32) -> Result<Topology> {
        let server = Netns::new("shs")?;
        let client = Netns::new("shc")?;
        let q = queues.max(1).to_string();
        sh(
            "ip",
            &[
                "link",
                "add",
                SERVER_IF,
                "numtxqueues",
                &q,
                "numrxqueues",
                &q,
                "netns",
                &server.name,
                "type",
                "veth",
                "peer",
                "name",
                CLIENT_IF,
                "numtxqueues",
                &q,
                "numrxqueues",
                &q,
                "netns",
                &client.name,
            ],
        )?;
        for i in 0..queues.max(1) {
            if queues > 1 {
                let mask = format!("{:x}", 1u64 << i.min(63));
                let path = format!("/sys/class/net/{CLIENT_IF}/queues/tx-{i}/xps_cpus");
                sh(
                    "ip",
                    &[
                        "netns",
                        "exec",
                        &client.name,
                        "sh",
                        "-c",
                        &format!("echo {mask} > {path}"),
                    ],
                )?;
                let all = if i == 0 {
                    format!("{:x}", (1u64 << crate::synflood::cpus().min(63)) - 1)
                } else {
                    "0".to_string()
                };
                let path = format!("/sys/class/net/{SERVER_IF}/queues/tx-{i}/xps_cpus");
                sh(
                    "ip",
                    &[
                        "netns",
                        "exec",
                        &server.name,
                        "sh",
                        "-c",
                        &format!("echo {all} > {path}"),
                    ],
                )?;
            }
        }
        let s = |a: String| -> Result<()> { server.ip(&a.split(' ').collect::<Vec<_>>()) };
        let c = |a: String| -> Result<()> { client.ip(&a.split(' ').collect::<Vec<_>>()) };
        s(format!("addr add {SERVER_V4}/24 dev {SERVER_IF}"))?;
        s(format!("-6 addr add {SERVER_V6}/64 dev {SERVER_IF} nodad"))?;
        s(format!("link set {SERVER_IF} up"))?;
        let p = ROTATING_V6_PREFIX;
        s(format!(
            "-6 route add {:x}:{:x}:{:x}:{:x}::/64 dev {SERVER_IF}",
            p[0], p[1], p[2], p[3]
        ))?;
        // Replies to the other client networks go straight out of the veth (on-link).
        s(format!("route add 203.0.113.0/24 dev {SERVER_IF}"))?;
        // A host route only: the benchmarks' spoofed sources are random in 10.0.0.0/8, and
        // an on-link /16 would make the server ARP for every one it answers (overflowing
        // the neighbour table, which then drops the legit client's packets). Off-link
        // spoofed sources have no route here, as they would go to one gateway on a real host.
        s(format!("route add {PARTNER_V4}/32 dev {SERVER_IF}"))?;
        s(format!(
            "route add {}/{} dev {SERVER_IF}",
            POOL_V4.0, POOL_V4.1
        ))?;
        s(format!(
            "-6 route add {}/{} dev {SERVER_IF}",
            POOL_V6.0, POOL_V6.1
        ))?;
        c(format!("addr add {LEGIT_V4}/24 dev {CLIENT_IF}"))?;
        c(format!("addr add {ATTACKER_V4}/24 dev {CLIENT_IF}"))?;
        c(format!("-6 addr add {LEGIT_V6}/64 dev {CLIENT_IF} nodad"))?;
        for i in 0..ROTATING_V6_COUNT {
            c(format!(
                "-6 addr add {}/64 dev {CLIENT_IF} nodad",
                rotating_v6(i)
            ))?;
        }
        c(format!("addr add {DENIED_V4}/32 dev {CLIENT_IF}"))?;
        c(format!("addr add {PARTNER_V4}/32 dev {CLIENT_IF}"))?;
        c(format!("link set {CLIENT_IF} up"))?;
        let topo = Topology { server, client };
        topo.wait_reachable()?;
        Ok(topo)
    }

    /// Adds `addr` to the client side (a fresh source for a test).
    pub fn add_client_addr(&self, addr: IpAddr) -> Result<()> {
        let spec = match addr {
            IpAddr::V4(a) => format!("{a}/32"),
            IpAddr::V6(a) => format!("{a}/128"),
        };
        let mut args = vec!["addr", "add", spec.as_str(), "dev", CLIENT_IF];
        if addr.is_ipv6() {
            args.push("nodad");
        }
        self.client.ip(&args)
    }

    /// Waits until the veth link is up on both sides (carrier takes a moment).
    fn wait_reachable(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let up = Command::new("ip")
                .args(["-n", &self.client.name, "-o", "link", "show", CLIENT_IF])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).contains("LOWER_UP"))
                .unwrap_or(false);
            if up {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("veth pair did not come up within 10 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The real `shield run` as a child process inside a namespace; SIGTERM on drop (then
/// SIGKILL if it does not exit within 5 s).
pub struct Daemon {
    child: Option<Child>,
    pub log: PathBuf,
    /// This daemon's own control socket (unique, so labs can run side by side).
    pub socket: PathBuf,
    /// The `--state-dir` this guard made (unless the caller passed one): removed on drop.
    own_state: Option<PathBuf>,
}

impl Daemon {
    /// Starts `bin run --iface SERVER_IF --policy POLICY --bpffs BPFFS` in `ns` and waits
    /// until its maps are pinned and a policy is loaded.
    pub fn start(
        bin: &Path,
        ns: &Netns,
        policy: &Path,
        bpffs: &Path,
        extra: &[&str],
    ) -> Result<Daemon> {
        Daemon::start_env(bin, ns, policy, bpffs, extra, &[])
    }

    /// As `start`, with environment variables for the daemon.
    pub fn start_env(
        bin: &Path,
        ns: &Netns,
        policy: &Path,
        bpffs: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Daemon> {
        Daemon::spawn(bin, ns, None, policy, bpffs, extra, env)
    }

    /// As `start`, with `cwd` as the daemon's working directory (a relative `policy` is
    /// then the operator's `shield run --policy policy.toml` from that directory).
    pub fn start_in(
        bin: &Path,
        ns: &Netns,
        cwd: &Path,
        policy: &Path,
        bpffs: &Path,
        extra: &[&str],
    ) -> Result<Daemon> {
        Daemon::spawn(bin, ns, Some(cwd), policy, bpffs, extra, &[])
    }

    fn spawn(
        bin: &Path,
        ns: &Netns,
        cwd: Option<&Path>,
        policy: &Path,
        bpffs: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Daemon> {
        let name = unique("shield-daemon-");
        let log = std::env::temp_dir().join(format!("{name}.log"));
        let socket = std::env::temp_dir().join(format!("{name}.sock"));
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        // Never the default /var/lib/shield: a state dir of its own unless given one.
        let own_state = (!extra.contains(&"--state-dir"))
            .then(|| std::env::temp_dir().join(format!("{name}.state")));
        let mut cmd = ns.command(bin);
        if let Some(dir) = cwd {
            cmd.current_dir(dir);
        }
        let child = cmd
            .arg("run")
            .args(["--iface", SERVER_IF, "--bpffs"])
            .arg(bpffs)
            .arg("--socket")
            .arg(&socket)
            .arg("--policy")
            .arg(policy)
            .args(extra)
            .args(
                own_state
                    .iter()
                    .flat_map(|s| [std::ffi::OsStr::new("--state-dir"), s.as_os_str()]),
            )
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut d = Daemon {
            child: Some(child),
            log,
            socket,
            own_state,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = d.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!("shield run exited early ({status}):\n{}", d.log_text());
            }
            // Ready: the program is attached with a policy and the control socket answers.
            let attached = shield_user::stats::read_iface(bpffs, SERVER_IF)
                .map(|s| s.policy_generation > 0 && s.attached)
                .unwrap_or(false);
            if attached
                && shield_user::control::call::<shield_user::control::Pong>(
                    &d.socket,
                    &shield_user::control::Request::Ping {},
                )
                .is_ok_and(|p| p.pong)
            {
                return Ok(d);
            }
            if Instant::now() > deadline {
                bail!("shield run did not become ready in 30 s:\n{}", d.log_text());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The daemon's process id (`ip netns exec` execs it, so it is the child's).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// SIGKILL, as a crash would: nothing gets cleaned up by the daemon.
    pub fn kill9(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM and wait: returns the exit status and the log.
    pub fn stop(&mut self) -> Result<(std::process::ExitStatus, String)> {
        let Some(mut child) = self.child.take() else {
            bail!("daemon already stopped");
        };
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok((status, self.log_text()));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let status = child.wait()?;
                bail!(
                    "shield run ignored SIGTERM for 5 s ({status}):\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.stop();
        }
        let _ = std::fs::remove_file(&self.log);
        let _ = std::fs::remove_file(&self.socket);
        if let Some(s) = &self.own_state {
            let _ = std::fs::remove_dir_all(s);
        }
    }
}

/// A real HTTP API: the demo's Flask app under gunicorn (Debian packages python3-flask and
/// gunicorn) in a namespace, listening on every address; stopped on drop.
pub struct Gunicorn {
    child: Option<Child>,
    dir: PathBuf,
}

/// The demo API: a Flask app with a couple of JSON endpoints.
pub const FLASK_APP: &str = r#"from flask import Flask, jsonify

app = Flask(__name__)


@app.get("/")
def index():
    return "shield demo API\n"


@app.get("/api/items")
def items():
    return jsonify(items=[{"id": i, "name": f"item {i}"} for i in range(10)])
"#;

impl Gunicorn {
    pub fn start(ns: &Netns, port: u16) -> Result<Gunicorn> {
        let dir = std::env::temp_dir().join(unique("shield-api-"));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("app.py"), FLASK_APP)?;
        let child = ns
            .command(Path::new("gunicorn"))
            .args([
                "--bind",
                &format!("[::]:{port}"),
                "--workers",
                "2",
                // Threaded workers keep connections alive, as a real deployment does.
                "--worker-class",
                "gthread",
                "--threads",
                "4",
                "--log-level",
                "warning",
            ])
            .arg("--chdir")
            .arg(&dir)
            .arg("app:app")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting gunicorn (Debian packages gunicorn and python3-flask)")?;
        let g = Gunicorn {
            child: Some(child),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let up = ns
                .run_in(move || {
                    http_get(
                        IpAddr::V4(Ipv4Addr::LOCALHOST),
                        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
                        "/",
                        Duration::from_millis(500),
                    )
                })
                .ok()
                .flatten()
                == Some(200);
            if up {
                return Ok(g);
            }
            if Instant::now() > deadline {
                bail!("gunicorn did not answer on port {port} within 20 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Stops a gunicorn master: SIGTERM (it stops its workers), up to 5 s, then SIGKILL to its
/// workers and to it (killing the master alone left its workers running, orphaned, for
/// minutes: a worker busy with a kept-alive connection outlives a 5 s wait).
pub fn stop_gunicorn(child: Option<std::process::Child>) {
    let Some(mut c) = child else { return };
    // SAFETY: signalling our own child.
    unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = c.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for worker in children_of(c.id()) {
        // SAFETY: kill(2) on a process whose parent is our unreaped child.
        unsafe { libc::kill(worker as i32, libc::SIGKILL) };
    }
    let _ = c.kill();
    let _ = c.wait();
}

/// The processes whose parent is `pid` (from /proc).
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            // `pid (comm) state ppid …`: comm may hold spaces, so split after its `)`.
            std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|stat| {
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                    == Some(pid)
            })
        })
        .collect()
}

impl Drop for Gunicorn {
    fn drop(&mut self) {
        stop_gunicorn(self.child.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
