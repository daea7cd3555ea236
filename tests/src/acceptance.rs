//! The policy-matrix acceptance suite: takes a policy file, derives checks from the matrix
//! itself and plays them with real traffic (TCP connections, UDP datagrams, ICMP echoes)
//! from fresh source addresses of a namespace lab, against the real daemon.
//!
//! Per rule and limit: `burst` passes in full; above the rate, the admitted rate over a 5 s
//! window is the configured rate ±10 %; below the rate nothing is dropped; after idling the
//! bucket is full again. Per escalation: the ban comes at the configured strike count,
//! covers the configured scope and lasts the configured time. Per monitor rule: nothing is
//! dropped and `would_drop` counts what would have been. Per list: allow is never limited,
//! deny always dropped. Long waits (refills, ban durations) advance the data path's test
//! clock instead of sleeping.
//!
//! The lab's daemon runs a copy of the policy cut off from the host it runs on (`isolated`):
//! without `[fleet]` (its namespace has no route to the fleet's Redis: it never tries) and with its
//! `[app]` socket moved to a temporary path (so the suite runs beside a production daemon).

use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use serde_json::Value;
use shield_user::{
    loader::{self, PolicyMaps},
    policy::{self, BanScope, Limit, Mode, Policy, Protocol, Rule},
};

use crate::netlab::{
    Connects, Daemon, POOL_V4, POOL_V6, SERVER_IF, SERVER_V4, SERVER_V6, TcpServer, TempBpffs,
    Topology, connect_many, unique,
};

mod checks;

/// One check's outcome.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub rule: String,
    pub limit: String,
    pub check: String,
    pub expected: String,
    pub observed: String,
    pub ok: bool,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} rule {} {} {}: expected {}, observed {}",
            if self.ok { "PASS" } else { "FAIL" },
            self.rule,
            self.limit,
            self.check,
            self.expected,
            self.observed
        )
    }
}

/// Highest rates the lab's generators offer (a 2-core machine).
const MAX_TCP_RATE: f64 = 600.0;
const MAX_PKT_RATE: f64 = 3000.0;
const WINDOW: Duration = Duration::from_secs(5);

pub struct Lab {
    policy: Policy,
    /// The daemon runs on this copy, so limits can be checked with escalation set aside.
    copy: PathBuf,
    original: String,
    daemon: Daemon,
    _servers: Vec<TcpServer>,
    topo: Topology,
    bpffs: TempBpffs,
    audit: PathBuf,
    next: AtomicU32,
    routes: std::sync::Mutex<HashSet<String>>,
    pub outcomes: Vec<Outcome>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.audit);
        let _ = std::fs::remove_file(&self.copy);
    }
}

/// A port of the rule's endpoint, or a port no rule claims (`None` for ICMP).
/// The policy text the lab's daemon runs: `[fleet]` left out, so that the lab never tries the
/// Redis the policy names (nor publishes its test bans, were it reachable); `[app]`'s socket
/// moved to `app_socket` and its `group` dropped, so that the lab binds its own socket
/// whatever runs on the host. A policy with neither is returned as written.
pub fn isolated(original: &str, app_socket: &Path) -> Result<String, String> {
    let mut t: toml::Table = toml::from_str(original).map_err(|e| e.to_string())?;
    if !t.contains_key("fleet") && !t.contains_key("app") {
        return Ok(original.to_owned());
    }
    t.remove("fleet");
    if let Some(app) = t.get_mut("app").and_then(toml::Value::as_table_mut) {
        app.insert(
            "socket".into(),
            toml::Value::String(app_socket.to_string_lossy().into_owned()),
        );
        app.remove("group");
    }
    toml::to_string(&t).map_err(|e| e.to_string())
}

fn port_of(policy: &Policy, rule: &Rule) -> Option<u16> {
    match rule.protocol {
        Protocol::Icmp => None,
        _ if !rule.ports.is_empty() => Some(rule.ports[0].first),
        p => (40000..60000).find(|port| {
            !policy.rules.iter().any(|r| {
                r.protocol == p && r.ports.iter().any(|x| x.first <= *port && *port <= x.last)
            })
        }),
    }
}

/// A TCP port no rule covers (neither a listed port nor a catch-all).
fn unruled_tcp_port(policy: &Policy) -> Option<u16> {
    if policy
        .rules
        .iter()
        .any(|r| r.protocol == Protocol::Tcp && r.ports.is_empty())
    {
        return None;
    }
    (20000..30000).find(|p| {
        !policy.rules.iter().any(|r| {
            r.protocol == Protocol::Tcp && r.ports.iter().any(|x| x.first <= *p && *p <= x.last)
        })
    })
}

fn per_sec(r: policy::Rate) -> f64 {
    r.count as f64 / r.period_secs as f64
}

impl Lab {
    pub fn new(bin: &Path, policy_path: &Path) -> Result<Lab, String> {
        let policy = policy::load(policy_path).map_err(|e| e.to_string())?;
        let app_socket =
            std::env::temp_dir().join(format!("{}.sock", unique("shield-acceptance-app-")));
        let original = isolated(
            &std::fs::read_to_string(policy_path).map_err(|e| e.to_string())?,
            &app_socket,
        )?;
        let copy =
            std::env::temp_dir().join(format!("{}.toml", unique("shield-acceptance-policy-")));
        std::fs::write(&copy, &original).map_err(|e| e.to_string())?;
        let audit = std::env::temp_dir().join(format!("{}.jsonl", unique("shield-acceptance-")));
        let bpffs = TempBpffs::new().map_err(|e| format!("{e:#}"))?;
        let topo = Topology::new().map_err(|e| format!("{e:#}"))?;
        let mut ports: Vec<u16> = policy
            .rules
            .iter()
            .filter(|r| r.protocol == Protocol::Tcp)
            .filter_map(|r| port_of(&policy, r))
            .collect();
        ports.extend(unruled_tcp_port(&policy));
        ports.sort_unstable();
        ports.dedup();
        let servers = ports
            .iter()
            .map(|p| TcpServer::start(&topo.server, *p))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{e:#}"))?;
        let audit_arg = audit.to_string_lossy().into_owned();
        let daemon = Daemon::start(
            bin,
            &topo.server,
            &copy,
            &bpffs.path,
            &["--audit-log", &audit_arg, "--metrics", "off"],
        )
        .map_err(|e| format!("{e:#}"))?;
        Ok(Lab {
            policy,
            copy,
            original,
            daemon,
            _servers: servers,
            topo,
            bpffs,
            audit,
            next: AtomicU32::new(1),
            routes: std::sync::Mutex::new(HashSet::new()),
            outcomes: Vec::new(),
        })
    }

    fn record(
        &mut self,
        rule: &str,
        limit: &str,
        check: &str,
        expected: String,
        observed: String,
        ok: bool,
    ) {
        let o = Outcome {
            rule: rule.to_string(),
            limit: limit.to_string(),
            check: check.to_string(),
            expected,
            observed,
            ok,
        };
        eprintln!("{o}");
        self.outcomes.push(o);
    }

    /// A source address in its own scope block (`prefix` bits), added to the client.
    fn fresh(&self, v6: bool, prefix: u8) -> IpAddr {
        let k = self.next.fetch_add(1, Ordering::Relaxed);
        let addr = if v6 {
            let shift = 128 - u32::from(prefix.clamp(POOL_V6.1 + 1, 128));
            let base = u128::from(POOL_V6.0);
            IpAddr::V6(Ipv6Addr::from(base + (u128::from(k) << shift) + 1))
        } else {
            let shift = 32 - u32::from(prefix.clamp(POOL_V4.1 + 1, 32));
            let base = u32::from(POOL_V4.0);
            IpAddr::V4(Ipv4Addr::from(base + (k << shift) + u32::from(shift > 0)))
        };
        self.topo
            .add_client_addr(addr)
            .unwrap_or_else(|e| panic!("adding {addr} to the client: {e:#}"));
        addr
    }

    /// Makes `prefix` reachable from the server (replies to list sources).
    fn route(&self, cidr: &policy::Cidr) {
        let spec = cidr.to_string();
        if self.routes.lock().expect("lock").insert(spec.clone()) {
            let _ = self
                .topo
                .server
                .ip(&["route", "add", &spec, "dev", SERVER_IF]);
        }
    }

    fn dst(&self, src: IpAddr, port: u16) -> SocketAddr {
        let ip = if src.is_ipv4() {
            IpAddr::V4(SERVER_V4)
        } else {
            IpAddr::V6(SERVER_V6)
        };
        SocketAddr::new(ip, port)
    }

    fn counters(&self, rule: &str) -> Value {
        let s = shield_user::stats::read_iface(&self.bpffs.path, SERVER_IF).expect("stats");
        s.rules
            .iter()
            .find(|r| r.name == rule)
            .map(|r| serde_json::to_value(&r.counters).expect("json"))
            .unwrap_or(Value::Null)
    }

    fn count(&self, rule: &str, reason: &str) -> u64 {
        self.counters(rule)[reason]["packets"].as_u64().unwrap_or(0)
    }

    fn advance(&self, d: Duration) {
        PolicyMaps::open(&loader::pin_dir(&self.bpffs.path, SERVER_IF))
            .and_then(|mut m| m.advance_clock(d.as_nanos() as u64))
            .expect("advancing the test clock");
    }

    /// Offers `count` units (connections or packets) of `rule` from `src`, one every
    /// `interval`: (admitted, offered, seconds it took). A connection counts as refused
    /// when its SYN has no answer within 300 ms (before the first retransmission).
    fn offer(&self, rule: &Rule, src: IpAddr, count: u32, interval: Duration) -> (u64, u64, f64) {
        self.offer_with(rule, src, count, interval, Duration::from_millis(300))
    }

    /// `offer`, giving each connection `patience` to complete.
    fn offer_with(
        &self,
        rule: &Rule,
        src: IpAddr,
        count: u32,
        interval: Duration,
        patience: Duration,
    ) -> (u64, u64, f64) {
        let started = Instant::now();
        let port = port_of(&self.policy, rule);
        match rule.protocol {
            Protocol::Tcp => {
                let dst = self.dst(src, port.expect("tcp port"));
                let c: Connects = self
                    .topo
                    .client
                    .run_in(move || connect_many(&[src], dst, count, interval, patience))
                    .expect("client namespace");
                (
                    u64::from(c.ok),
                    u64::from(count),
                    started.elapsed().as_secs_f64(),
                )
            }
            Protocol::Icmp => {
                // Echo replies received, per source: exact whatever else is on the link.
                let dst = self.dst(src, 0);
                let got = self
                    .topo
                    .client
                    .run_in(move || send_packets(src, dst, true, count, interval))
                    .expect("client namespace");
                (got, u64::from(count), started.elapsed().as_secs_f64())
            }
            Protocol::Udp => {
                let passed = |l: &Self| {
                    ["pass", "allow", "would_drop", "would_ban"]
                        .iter()
                        .map(|r| l.count(&rule.name, r))
                        .sum::<u64>()
                };
                let before = passed(self);
                let dst = self.dst(src, port.unwrap_or(0));
                self.topo
                    .client
                    .run_in(move || send_packets(src, dst, false, count, interval))
                    .expect("client namespace");
                let elapsed = started.elapsed().as_secs_f64();
                std::thread::sleep(Duration::from_millis(200));
                let after = passed(self);
                (after - before, u64::from(count), elapsed)
            }
        }
    }

    /// Reloads the daemon with the policy as written (`true`) or without any `escalation`
    /// (`false`): limits are measured without bans getting in the way.
    fn escalation(&self, on: bool, bin: &Path) {
        let text = if on {
            self.original.clone()
        } else {
            let mut t: toml::Table = toml::from_str(&self.original).expect("policy TOML");
            if let Some(toml::Value::Array(rules)) = t.get_mut("rule") {
                for r in rules.iter_mut() {
                    if let Some(table) = r.as_table_mut() {
                        table.remove("escalation");
                    }
                }
            }
            toml::to_string(&t).expect("TOML")
        };
        std::fs::write(&self.copy, text).expect("writing the policy copy");
        let out = Command::new(bin)
            .args(["reload", "--socket"])
            .arg(&self.daemon.socket)
            .output()
            .expect("shield reload");
        assert!(
            out.status.success(),
            "reload failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn audit_lines(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.audit)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Runs every derived check.
    pub fn run_all(&mut self, bin: &Path) {
        let rules = self.policy.rules.clone();
        let escalates = rules.iter().any(|r| r.escalation.is_some());
        if escalates {
            self.escalation(false, bin);
        }
        for rule in &rules {
            for (kind, limit) in [("connections", rule.connections), ("packets", rule.packets)] {
                let Some(limit) = limit else { continue };
                if kind == "packets" && rule.protocol == Protocol::Tcp {
                    continue; // TCP data packets: covered by the program tests
                }
                for family_v6 in [false, true] {
                    if family_v6 && !self.wants_v6(rule) {
                        continue;
                    }
                    self.limit_checks(rule, kind, &limit, family_v6);
                }
            }
        }
        if escalates {
            self.escalation(true, bin);
            for rule in &rules {
                if let Some(e) = rule.escalation {
                    self.escalation_check(rule, &e);
                }
            }
        }
        self.list_checks();
    }

    /// IPv6 is checked for every rule whose IPv6 scope differs from the default, and for
    /// every rule of a policy that sets IPv6 scopes at all.
    fn wants_v6(&self, rule: &Rule) -> bool {
        rule.ipv6_prefix != 64 || self.policy.ipv6_prefix != 64
    }

    pub fn failures(&self) -> Vec<&Outcome> {
        self.outcomes.iter().filter(|o| !o.ok).collect()
    }

    pub fn daemon_log(&self) -> String {
        self.daemon.log_text()
    }
}

/// An address inside `c` (its first host).
fn host_in(c: &policy::Cidr) -> IpAddr {
    match c.addr {
        IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) + u32::from(c.len < 32))),
        IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) + u128::from(c.len < 128))),
    }
}

/// Sends `count` UDP datagrams (or ICMP echo requests) from `src`, one every `interval`.
/// For ICMP, returns the echo replies received (UDP: 0, the caller counts at the server).
fn send_packets(src: IpAddr, dst: SocketAddr, icmp: bool, count: u32, interval: Duration) -> u64 {
    use socket2::{Domain, Protocol as P, SockAddr, Socket, Type};
    let v6 = src.is_ipv6();
    let domain = if v6 { Domain::IPV6 } else { Domain::IPV4 };
    let sock = if icmp {
        Socket::new(
            domain,
            Type::RAW,
            Some(if v6 { P::ICMPV6 } else { P::ICMPV4 }),
        )
    } else {
        Socket::new(domain, Type::DGRAM, Some(P::UDP))
    }
    .expect("socket");
    sock.bind(&SockAddr::from(SocketAddr::new(src, 0)))
        .expect("bind source");
    let payload: Vec<u8> = if icmp {
        let ty = if v6 { 128u8 } else { 8 };
        let mut p = vec![ty, 0, 0, 0, 0x12, 0x34, 0, 1, b's', b'h'];
        if !v6 {
            // ICMPv4 checksum (the kernel fills it in for ICMPv6 raw sockets).
            let mut sum: u32 = 0;
            for ch in p.chunks(2) {
                sum += u32::from(u16::from_be_bytes([ch[0], *ch.get(1).unwrap_or(&0)]));
            }
            while sum > 0xffff {
                sum = (sum & 0xffff) + (sum >> 16);
            }
            p[2..4].copy_from_slice(&(!(sum as u16)).to_be_bytes());
        }
        p
    } else {
        b"shield acceptance".to_vec()
    };
    let to = SockAddr::from(if icmp {
        SocketAddr::new(dst.ip(), 0)
    } else {
        dst
    });
    let start = Instant::now();
    for i in 0..count {
        let due = start + interval * i;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let _ = sock.send_to(&payload, &to);
    }
    if !icmp {
        return 0;
    }
    // Count echo replies with our identifier (IPv4 raw sockets also see the IP header).
    let _ = sock.set_read_timeout(Some(Duration::from_millis(300)));
    let mut replies = 0;
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 1500];
    while let Ok((n, _)) = sock.recv_from(&mut buf) {
        // SAFETY: recv_from initialised the first n bytes.
        let b: Vec<u8> = buf[..n]
            .iter()
            .map(|x| unsafe { x.assume_init() })
            .collect();
        let icmp = if v6 {
            &b[..]
        } else {
            &b[((b[0] & 0x0f) as usize * 4).min(n)..]
        };
        let reply_type = if v6 { 129 } else { 0 };
        if icmp.len() >= 8 && icmp[0] == reply_type && icmp[4..6] == [0x12, 0x34] {
            replies += 1;
        }
    }
    replies
}

/// Runs the suite on one policy file; panics with every failure (rule, limit, expected,
/// observed) if any check fails.
pub fn check_policy_file(bin: &Path, policy: &Path) {
    let mut lab = Lab::new(bin, policy)
        .unwrap_or_else(|e| panic!("acceptance lab for {}: {e}", policy.display()));
    lab.run_all(bin);
    let failures = lab.failures();
    let total = lab.outcomes.len();
    assert!(
        failures.is_empty(),
        "{}: {} of {total} checks failed:\n{}\ndaemon log:\n{}",
        policy.display(),
        failures.len(),
        failures
            .iter()
            .map(|o| o.to_string())
            .collect::<Vec<_>>()
            .join("\n"),
        lab.daemon_log()
    );
    assert!(
        total >= 4,
        "{}: only {total} checks derived",
        policy.display()
    );
    eprintln!("{}: {total} checks passed", policy.display());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_labs_copy_never_talks_to_the_fleet_or_takes_the_hosts_app_socket() {
        let text = r#"
[app]
socket = "/run/shield/app.sock"
group = "www-data"
on_error = "open"

[[endpoint]]
name = "login"
path = "/login"
limit = { rate = "5/min", burst = 5 }

[fleet]
redis = "redis://:secret@10.0.0.5:6379/0"
host = "api-1"

[[rule]]
name = "api"
protocol = "tcp"
ports = [8080]
connections = { rate = "5/s", burst = 10 }
"#;
        let sock = Path::new("/tmp/shield-acceptance-app-1.sock");
        let out = isolated(text, sock).expect("valid TOML");
        let t: toml::Table = toml::from_str(&out).expect("TOML");
        assert!(!t.contains_key("fleet"), "{out}");
        assert_eq!(
            t["app"]["socket"].as_str(),
            Some("/tmp/shield-acceptance-app-1.sock")
        );
        assert!(t["app"].get("group").is_none(), "{out}");
        assert_eq!(t["app"]["on_error"].as_str(), Some("open"));
        assert_eq!(t["endpoint"][0]["name"].as_str(), Some("login"));
        assert_eq!(t["rule"][0]["connections"]["burst"].as_integer(), Some(10));
        // Still a policy the daemon accepts.
        let dir = std::env::temp_dir().join(unique("shield-acceptance-isolated-"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("p.toml");
        std::fs::write(&file, &out).expect("write");
        let p = policy::load(&file);
        let _ = std::fs::remove_dir_all(&dir);
        let p = p.expect("the isolated copy is a valid policy");
        assert!(p.fleet.is_none());
        // Neither table: the text as written, comments and all.
        let plain = "# rules only\n[[rule]]\nname = \"api\"\nprotocol = \"tcp\"\n";
        assert_eq!(isolated(plain, sock).expect("valid"), plain);
    }
}
