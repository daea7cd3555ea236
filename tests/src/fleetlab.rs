//! A fleet lab: a real `redis-server` (password, append-only file) in a hub namespace of
//! its own, and N hosts, each a server namespace with its own veth (`shield0`, where shield
//! attaches), its own client namespace, bpffs, control socket, state dir and `shield run`,
//! linked to the hub by a second veth (10.77.i.2/30 ↔ 10.77.i.1/30). Everything is removed
//! on drop (daemons, then Redis, then namespaces).

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

mod redis;

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::{
    netlab::{
        Connects, Daemon, Netns, SERVER_V4, TcpServer, TempBpffs, Topology, connect_many, sh,
        unique,
    },
    shield_bin,
};

pub use redis::Redis;

/// One host of the fleet.
pub struct Host {
    pub daemon: Option<Daemon>,
    pub name: String,
    _server: TcpServer,
    pub topo: Topology,
    pub bpffs: TempBpffs,
    pub policy: PathBuf,
    pub audit: PathBuf,
    pub state: PathBuf,
    /// Environment for the daemon (`SSL_CERT_FILE` for a TLS lab).
    pub env: Vec<(String, String)>,
    /// More arguments for `shield run` (another `--iface`).
    pub args: Vec<String>,
}

impl Drop for Host {
    fn drop(&mut self) {
        self.daemon = None;
        let _ = std::fs::remove_file(&self.policy);
        let _ = std::fs::remove_file(&self.audit);
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

impl Host {
    /// Builds the host's namespaces and server on `port` (the daemon starts with `start`).
    pub fn new(name: &str, policy: &str, port: u16) -> Result<Host> {
        let path = std::env::temp_dir().join(format!("{}.toml", unique("shield-fleet-policy-")));
        std::fs::write(&path, policy)?;
        let topo = Topology::new()?;
        let server = TcpServer::start(&topo.server, port)?;
        Ok(Host {
            daemon: None,
            name: name.to_string(),
            _server: server,
            topo,
            bpffs: TempBpffs::new()?,
            policy: path,
            audit: std::env::temp_dir().join(format!("{}.jsonl", unique("shield-fleet-audit-"))),
            state: std::env::temp_dir().join(unique("shield-fleet-state-")),
            env: Vec::new(),
            args: Vec::new(),
        })
    }

    /// Starts (or restarts) `shield run`: ready once attached and answering `ping`.
    pub fn start(&mut self) -> Result<()> {
        let audit = self.audit.to_str().context("utf-8")?.to_string();
        let state = self.state.to_str().context("utf-8")?.to_string();
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        self.daemon = Some(Daemon::start_env(
            &shield_bin(),
            &self.topo.server,
            &self.policy,
            &self.bpffs.path,
            &[
                &["--audit-log", &audit, "--state-dir", &state][..],
                &args[..],
            ]
            .concat(),
            &env,
        )?);
        Ok(())
    }

    pub fn socket(&self) -> PathBuf {
        self.daemon
            .as_ref()
            .map(|d| d.socket.clone())
            .unwrap_or_default()
    }

    /// `shield ARGS --socket …`: (success, stdout, stderr).
    pub fn shield(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(shield_bin())
            .args(args)
            .arg("--socket")
            .arg(self.socket())
            .output()
            .expect("running shield");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `shield bans --json`: the bans array.
    pub fn bans(&self) -> Vec<Value> {
        let (ok, out, err) = self.shield(&["bans", "--json"]);
        assert!(ok, "{}: shield bans failed: {err}", self.name);
        let v: Value = serde_json::from_str(&out).expect("bans --json is JSON");
        v["bans"].as_array().cloned().unwrap_or_default()
    }

    pub fn banned(&self, source: &str) -> bool {
        self.bans().iter().any(|b| b["source"] == source)
    }

    /// `shield stats --json`'s `fleet` object.
    pub fn fleet(&self) -> Value {
        let out = Command::new(shield_bin())
            .args(["stats", "--json", "--bpffs"])
            .arg(&self.bpffs.path)
            .arg("--socket")
            .arg(self.socket())
            .output()
            .expect("shield stats");
        assert!(
            out.status.success(),
            "{}: shield stats: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).expect("stats JSON");
        v["fleet"].clone()
    }

    pub fn audit_lines(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.audit)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// `count` TCP connections from `src` to this host's server `port`.
    pub fn connect(&self, src: IpAddr, port: u16, count: u32, every: Duration) -> Connects {
        let dst = SocketAddr::new(IpAddr::V4(SERVER_V4), port);
        self.topo
            .client
            .run_in(move || connect_many(&[src], dst, count, every, Duration::from_millis(300)))
            .expect("client namespace")
    }

    /// GET /metrics of this host's daemon (127.0.0.1:9477 in its server namespace).
    pub fn metrics(&self) -> String {
        self.topo
            .server
            .run_in(|| -> Result<String> {
                let mut s = TcpStream::connect("127.0.0.1:9477")?;
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
                let mut out = String::new();
                s.read_to_string(&mut out)?;
                Ok(out)
            })
            .and_then(|r| r)
            .unwrap_or_default()
    }
}

/// N hosts and one Redis. Field order = drop order.
pub struct FleetLab {
    pub hosts: Vec<Host>,
    pub redis: Redis,
    pub hub: Netns,
    pub key_file: PathBuf,
    pub prefix: String,
    /// Each host's veth end in the hub namespace (its link to Redis).
    pub links: Vec<String>,
}

impl Drop for FleetLab {
    fn drop(&mut self) {
        for h in &mut self.hosts {
            h.daemon = None;
        }
        let _ = std::fs::remove_file(&self.key_file);
    }
}

pub const FLEET_KEY: &str = "a-test-fleet-key-0123456789abcdef";

impl FleetLab {
    /// `policy(i)` is host i's policy without `[fleet]`, which is added (host `h{i+1}`,
    /// Redis through the hub link, the lab's key and prefix, `max_per_minute`). Daemons are
    /// not started (see `start_all`), so Redis can be seeded first.
    /// `n` hosts on `API` with `policy` (and 600 bans a minute), started, each linked to
    /// Redis.
    pub fn linked(n: usize, policy: &str) -> FleetLab {
        let mut lab = FleetLab::new(n, API, 600, policy).expect("fleet lab");
        lab.start_all().expect("starting the daemons");
        wait_links(&lab.hosts.iter().collect::<Vec<_>>(), true, 10);
        lab
    }

    pub fn new(n: usize, port: u16, max_per_minute: u32, policy: &str) -> Result<FleetLab> {
        FleetLab::with_tls(n, port, max_per_minute, policy, false)
    }

    /// `tls`: the hosts reach Redis over `rediss://` (TLS), trusting the lab's CA through
    /// `SSL_CERT_FILE` (the caller sets it for the daemons: see `Redis::dir`).
    pub fn with_tls(
        n: usize,
        port: u16,
        max_per_minute: u32,
        policy: &str,
        tls: bool,
    ) -> Result<FleetLab> {
        crate::require_root();
        let hub = Netns::new("shf")?;
        // A port of its own (inside the hub namespace), and a password.
        let plain_port = 20_000 + (std::process::id() % 20_000) as u16;
        let password = unique("pw");
        let redis = Redis::start_with(&hub, plain_port, &password, tls.then_some(plain_port + 1))?;
        let (scheme, redis_port) = if tls {
            ("rediss", plain_port + 1)
        } else {
            ("redis", plain_port)
        };
        let key_file = std::env::temp_dir().join(unique("shield-fleet-key-"));
        std::fs::write(&key_file, FLEET_KEY)?;
        let prefix = unique("t");
        let mut lab = FleetLab {
            hosts: Vec::new(),
            redis,
            hub,
            key_file,
            prefix,
            links: Vec::new(),
        };
        for i in 0..n {
            let name = format!("h{}", i + 1);
            let subnet = i + 1;
            let text = format!(
                "{policy}\n[fleet]\nredis = \"{scheme}://:{password}@10.77.{subnet}.1:{redis_port}/0\"\nhost = \"{name}\"\nprefix = \"{}\"\nkey_file = \"{}\"\nmax_bans_per_minute = {max_per_minute}\n",
                lab.prefix,
                lab.key_file.display()
            );
            let mut host = Host::new(&name, &text, port)?;
            if tls {
                // The lab's CA, for the system trust store rustls reads.
                host.env.push((
                    "SSL_CERT_FILE".into(),
                    lab.redis.dir.join("ca.crt").to_string_lossy().into_owned(),
                ));
            }
            let (a, b) = (unique("fla"), unique("flb"));
            sh(
                "ip",
                &[
                    "link",
                    "add",
                    &a,
                    "netns",
                    &host.topo.server.name,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    &b,
                    "netns",
                    &lab.hub.name,
                ],
            )?;
            host.topo
                .server
                .ip(&["addr", "add", &format!("10.77.{subnet}.2/30"), "dev", &a])?;
            host.topo.server.ip(&["link", "set", &a, "up"])?;
            lab.hub
                .ip(&["addr", "add", &format!("10.77.{subnet}.1/30"), "dev", &b])?;
            lab.hub.ip(&["link", "set", &b, "up"])?;
            // Redis reachable from the host's namespace.
            let to = SocketAddr::from(([10, 77, subnet as u8, 1], redis_port));
            let deadline = Instant::now() + Duration::from_secs(10);
            while !host.topo.server.run_in(move || {
                TcpStream::connect_timeout(&to, Duration::from_millis(300)).is_ok()
            })? {
                if Instant::now() > deadline {
                    bail!("Redis at {to} not reachable from {name}'s namespace");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            lab.hosts.push(host);
            lab.links.push(b);
        }
        Ok(lab)
    }

    pub fn start_all(&mut self) -> Result<()> {
        for h in &mut self.hosts {
            h.start()?;
        }
        Ok(())
    }

    /// Cuts (`up` false) or restores host `i`'s link to Redis (its veth in the hub): its
    /// daemon sees the link down after its client's timeouts (a few seconds).
    pub fn set_link(&self, i: usize, up: bool) -> Result<()> {
        let state = if up { "up" } else { "down" };
        self.hub.ip(&["link", "set", &self.links[i], state])
    }

    pub fn bans_key(&self) -> String {
        format!("{}:bans", self.prefix)
    }

    pub fn events_key(&self) -> String {
        format!("{}:events", self.prefix)
    }

    /// The signer every host uses.
    pub fn signer(&self) -> shield_user::fleet::Signer {
        shield_user::fleet::Signer::new(Some(FLEET_KEY.as_bytes().to_vec()), &self.prefix)
    }

    /// What a host would write for `m` (hash field and value, stream entry), signed with
    /// `sig` (the lab's signature unless given).
    pub fn publish_cmds(
        &self,
        m: &shield_user::fleet::Message,
        sig: Option<&str>,
        hash: bool,
    ) -> Vec<Vec<String>> {
        let (text, good) = self.signer().seal(m);
        let sig = sig.map_or(good, str::to_string);
        let mut out = Vec::new();
        if hash {
            out.push(vec![
                "HSET".into(),
                self.bans_key(),
                m.field(),
                format!("{}|{sig}|{text}", m.expires_ms),
            ]);
        }
        out.push(vec![
            "XADD".into(),
            self.events_key(),
            "*".into(),
            "m".into(),
            text,
            "sig".into(),
            sig,
        ]);
        out
    }
}

/// The port of the fleet tests' API (the rule of `POLICY`).
pub const API: u16 = 8080;

/// The fleet tests' policy (without `[fleet]`, which `FleetLab` adds per host): an allow
/// list, and a rule whose flood bans host-wide after 3 strikes.
pub const POLICY: &str = r#"
[lists]
allow = ["198.51.100.2/32"]

[[rule]]
name = "api"
protocol = "tcp"
ports = [8080]
connections = { rate = "5/s", burst = 10 }
escalation = { strikes = 3, window = "1m", ban = "5m", scope = "host" }
"#;

/// Waits until `f` holds, up to `limit` (a generous bound: readiness, not speed).
/// Waits until each host's fleet link is up (or down).
pub fn wait_links(hosts: &[&Host], up: bool, secs: u64) {
    for h in hosts {
        let what = if up { "links" } else { "sees its link down" };
        wait_until(
            &format!("{} {what}", h.name),
            Duration::from_secs(secs),
            || h.fleet()["connected"] == up,
        );
    }
}

pub fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The `p`-th percentile (0-100) of `v` (nearest rank).
pub fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// A ban message as host `host` would publish it.
pub fn ban_message(source: &str, host: &str, secs: u64) -> shield_user::fleet::Message {
    let now = shield_user::fleet::now_ms();
    shield_user::fleet::Message {
        op: shield_user::fleet::Op::Ban,
        source: source.to_string(),
        scope: shield_user::policy::BanScope::Host,
        rule: String::new(),
        expires_ms: now + secs * 1000,
        duration_secs: secs as f64,
        level: 0,
        origin: "manual".into(),
        cuts: "everything".into(),
        origin_host: host.to_string(),
        reason: Some("injected by the test".into()),
        sent_ms: now,
    }
}

/// How many audit lines of `event` name `source`.
pub fn audit_count(h: &Host, event: &str, source: &str) -> usize {
    h.audit_lines()
        .iter()
        .filter(|l| l["event"] == event && l["source"] == source)
        .count()
}

/// An unban as host `host` would publish it, sent at `sent_ms`.
pub fn unban_message(source: &str, host: &str, sent_ms: u64) -> shield_user::fleet::Message {
    shield_user::fleet::Message {
        op: shield_user::fleet::Op::Unban,
        source: source.to_string(),
        scope: shield_user::policy::BanScope::Host,
        rule: String::new(),
        expires_ms: 0,
        duration_secs: 0.0,
        level: 0,
        origin: "manual".into(),
        cuts: String::new(),
        origin_host: host.to_string(),
        reason: None,
        sent_ms,
    }
}

/// Removes a pin directory's files (what a reboot does to bpffs).
pub fn remove_pins(bpffs: &Path, iface: &str) -> Result<()> {
    let dir = shield_user::loader::pin_dir(bpffs, iface);
    std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))
}
