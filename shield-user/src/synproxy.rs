//! The host side of `challenge = "syncookie"`: XDP answers connection attempts with SYN
//! cookies and checks the returning ACKs; netfilter's SYNPROXY then completes the
//! connection to the local socket (the kernel's `xdp_synproxy` arrangement). shield keeps
//! what that needs in one nftables table per interface, `shield_syncookie_IFACE` (family
//! `inet`): SYNs to the rules' ports skip conntrack (`notrack`), and segments conntrack
//! does not know go to `synproxy` (which drops a bad cookie) with the rule's MSS. It also
//! sets `net.netfilter.nf_conntrack_tcp_loose` to 0 while a table exists (SYNPROXY needs
//! conntrack to refuse mid-stream pickups), remembering the previous value in the table's
//! comment and putting it back when the last table goes. Created at start and reload when a
//! rule uses the challenge, removed when none does, at shutdown and by `shield detach`; a
//! start that does not finish puts back the table that was there before it (`snapshot`,
//! `restore`).

use std::{io::Write as _, os::unix::process::CommandExt as _, path::Path, process::Command};

use crate::policy::{Limit, Mode, Policy, PortRange, Protocol, Rate, Rule};

/// Table names start with this; the interface name follows (`.` and `-` as `_`).
pub const TABLE: &str = "shield_syncookie_IFACE";

const LOOSE: &str = "/proc/sys/net/netfilter/nf_conntrack_tcp_loose";
const COMMENT: &str = "shield: nf_conntrack_tcp_loose was ";

/// The table of `iface`.
pub fn table_name(iface: &str) -> String {
    let clean: String = iface
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("shield_syncookie_{clean}")
}

fn ports_expr(ports: &[PortRange]) -> String {
    let list: Vec<String> = ports
        .iter()
        .map(|p| {
            if p.first == p.last {
                p.first.to_string()
            } else {
                format!("{}-{}", p.first, p.last)
            }
        })
        .collect();
    format!("{{ {} }}", list.join(", "))
}

/// The destination-port match of a tcp rule: its ports, or for a rule without ports every
/// port no other tcp rule claims. `None`: it matches no port.
fn dport_match(policy: &Policy, rule: usize) -> Option<String> {
    let r = &policy.rules[rule];
    if !r.ports.is_empty() {
        return Some(format!("tcp dport {}", ports_expr(&r.ports)));
    }
    let others: Vec<PortRange> = policy
        .rules
        .iter()
        .enumerate()
        .filter(|(i, o)| *i != rule && o.protocol == Protocol::Tcp)
        .flat_map(|(_, o)| o.ports.iter().copied())
        .collect();
    if others.is_empty() {
        Some("meta l4proto tcp".to_string())
    } else {
        Some(format!("tcp dport != {}", ports_expr(&others)))
    }
}

/// Whether this kernel's SYNPROXY can complete connections with TCP timestamps. Kernels
/// that check the echoed timestamp of the ACK that completes a handshake (Linux 6.15 and
/// later, counted in `TcpExtTSEcrRejected`) reject the ACK SYNPROXY sends the local socket
/// after a cookie with timestamps: every such connection then waits for the client's next
/// segment, and about 1 in 100 (when the server's millisecond clock ticks during the
/// handshake, under load more) for the listener's SYN-ACK retransmission, 1 s and more.
/// There, cookies (XDP's and SYNPROXY's) carry the MSS alone: no timestamps, so no window
/// scaling or SACK on connections made through a cookie.
pub fn timestamps_work() -> bool {
    // Unreadable: no timestamps (safe everywhere; only window scaling and SACK are lost).
    std::fs::read_to_string("/proc/net/netstat").is_ok_and(|s| !s.contains("TSEcrRejected"))
}

/// The nftables table for `iface` (`None`: no rule uses the challenge). `loose`: the
/// `nf_conntrack_tcp_loose` value to put back when it goes; `timestamps`: whether the
/// `synproxy` statement offers timestamps (and with them window scaling and SACK: see
/// `timestamps_work`).
pub fn ruleset(iface: &str, policy: &Policy, loose: &str, timestamps: bool) -> Option<String> {
    let mut pre = String::new();
    let mut input = String::new();
    let mut sets = String::new();
    for (i, r) in policy.rules.iter().enumerate() {
        let (Some(mss), Protocol::Tcp) = (r.syncookie_mss, r.protocol) else {
            continue;
        };
        let Some(dport) = dport_match(policy, i) else {
            continue;
        };
        let on = format!("iifname \"{iface}\" {dport}");
        pre += &format!("\t\t{on} tcp flags & (fin | syn | rst | ack) == syn notrack\n");
        let options = if timestamps {
            format!(
                " wscale {} timestamp sack-perm",
                shield_common::SYNCOOKIE_WSCALE
            )
        } else {
            String::new()
        };
        let proxy = |family: &str, mss: u16| {
            format!(
                "\t\t{on} meta nfproto {family} ct state invalid,untracked synproxy mss {mss}{options}\n"
            )
        };
        if let (Some(limit), Mode::Enforce) = (&r.connections, r.mode) {
            let (s, rules) = completion_meters(i, &on, r, limit);
            sets += &s;
            input += &rules;
        }
        input += &proxy("ipv4", mss);
        input += &proxy("ipv6", mss.saturating_sub(20));
        input += &format!("\t\t{on} ct state invalid drop\n");
    }
    if pre.is_empty() {
        return None;
    }
    let name = table_name(iface);
    Some(format!(
        "table inet {name} {{\n\tcomment \"{COMMENT}{loose}\"\n{sets}\tchain syncookie_pre {{\n\t\ttype filter hook prerouting priority raw; policy accept;\n{pre}\t}}\n\tchain syncookie_in {{\n\t\ttype filter hook input priority filter - 10; policy accept;\n{input}\t}}\n}}\n"
    ))
}

/// Sources a rule's completion meters hold (per family); a source beyond them is not
/// metered here (XDP's limits still judge its SYNs).
pub const METER_SOURCES: u32 = 65_536;

/// The `connections` limit of rule `i` (enforced) on the handshakes that complete through
/// SYNPROXY: a segment with ACK and without SYN that conntrack does not know is a
/// handshake's last ACK (or garbage, which SYNPROXY drops anyway): SYNPROXY opens the
/// connection on a valid cookie whatever else the segment carries, RST, FIN or data. XDP judges a source's
/// SYNs by the same limit, but answers an unverified source's SYNs over the `unverified`
/// budget with cookies before any per-source state is read, and the ACK completing such a
/// handshake is no connection attempt there: without this meter a real source could open
/// as many connections as it sent SYNs while the budget is spent. Per source key (the
/// rule's prefixes), a token bucket of the limit's burst and rate (and one of its
/// `sustained` window), in a dynamic set whose entries last until a full bucket would
/// refill. Returns (the sets, the rules to put before the `synproxy` statements).
fn completion_meters(i: usize, on: &str, r: &Rule, limit: &Limit) -> (String, String) {
    let unit = |rate: &Rate| match rate.period_secs {
        1 => "second",
        60 => "minute",
        3600 => "hour",
        _ => "day",
    };
    // Seconds a bucket of `burst` tokens at `rate` takes to refill from empty.
    let refill = |rate: &Rate, burst: u64| {
        (burst.saturating_mul(rate.period_secs)).div_ceil(rate.count.max(1))
    };
    let mut buckets = vec![(limit.rate, limit.burst.max(1))];
    if let Some(s) = limit.sustained {
        buckets.push((s, s.count.max(1)));
    }
    let v4_mask = std::net::Ipv4Addr::from(
        u32::MAX
            .checked_shl(32 - u32::from(r.ipv4_prefix))
            .unwrap_or(0),
    );
    let v6_mask = std::net::Ipv6Addr::from(
        u128::MAX
            .checked_shl(128 - u32::from(r.ipv6_prefix))
            .unwrap_or(0),
    );
    let families = [
        ("ipv4", "ipv4_addr", format!("ip saddr and {v4_mask}")),
        ("ipv6", "ipv6_addr", format!("ip6 saddr and {v6_mask}")),
    ];
    let (mut sets, mut rules) = (String::new(), String::new());
    // The handshakes charged in the last 2 s (source, ports and cookie): a client's first
    // data, sent right behind its ACK, meets conntrack's entry still in SYN_SENT, which
    // calls it invalid, and would be charged as a second connection. `add` (not `update`):
    // the entry goes 2 s after the charge whatever follows, while conntrack holds the
    // connection's own entry longer (a reset one 10 s), so no new handshake on the same
    // ports and cookie can complete uncharged.
    let flows = |family: &str| {
        let ip = if family == "ipv4" { "ip" } else { "ip6" };
        (
            format!("seen_{i}_{family}"),
            format!("{ip} saddr . tcp sport . tcp dport . tcp ackseq"),
        )
    };
    for (family, _, _) in &families {
        let (set, flow) = flows(family);
        sets += &format!(
            "\tset {set} {{\n\t\ttypeof {flow}\n\t\tsize {METER_SOURCES}\n\t\tflags dynamic,timeout\n\t\ttimeout 2s\n\t}}\n"
        );
    }
    let last_ack = "ct state invalid,untracked tcp flags & (syn | ack) == ack";
    for (b, (rate, burst)) in buckets.iter().enumerate() {
        let timeout = nft_duration(refill(rate, *burst).saturating_add(1));
        for (family, ty, key) in &families {
            let set = format!("conn_{i}_{b}_{family}");
            let (seen, flow) = flows(family);
            sets += &format!(
                "\tset {set} {{\n\t\ttype {ty}\n\t\tsize {METER_SOURCES}\n\t\tflags dynamic,timeout\n\t\ttimeout {timeout}\n\t}}\n"
            );
            rules += &format!(
                "\t\t{on} meta nfproto {family} {last_ack} {flow} != @{seen} update @{set} {{ {key} limit rate over {}/{} burst {burst} packets }} counter drop comment \"over connections of rule {}\"\n",
                rate.count,
                unit(rate),
                r.name,
            );
        }
    }
    for (family, _, _) in &families {
        let (seen, flow) = flows(family);
        rules += &format!("\t\t{on} meta nfproto {family} {last_ack} add @{seen} {{ {flow} }}\n");
    }
    (sets, rules)
}

/// `secs` as an nftables duration, whole days apart (`2000d1s`): nft refuses a number of
/// seconds of 9 digits or more ("value too large"), and a limit the parser accepts can take
/// years to refill (2,000 at 1/d: 5.5 years; 53,375 at 1/d, the most there is).
fn nft_duration(secs: u64) -> String {
    let (days, rest) = (secs / 86_400, secs % 86_400);
    match (days, rest) {
        (0, s) => format!("{s}s"),
        (d, 0) => format!("{d}d"),
        (d, s) => format!("{d}d{s}s"),
    }
}

/// How long one `nft` may take before shield kills it: shield's tables load in
/// milliseconds, yet an `nft` that waits on a netlink lock another program holds would block
/// a start, a reload or a stop for as long (and, in a process group of its own, a terminal's
/// Ctrl-C does not reach it).
pub const NFT_PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);

/// What `nft`'s error says of an nft killed after NFT_PATIENCE.
const LATE: &str = "did not finish within";

fn nft(args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    let mut c = Command::new("nft");
    // In a process group of its own: a terminal's Ctrl-C goes to the foreground group, and
    // must reach shield (which finishes what it changes, then stops), not kill nft half-way
    // through a start or a reload.
    c.process_group(0);
    c.args(args)
        .stdin(if stdin.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c
        .spawn()
        .map_err(|e| format!("cannot run nft (Debian package nftables): {e}"))?;
    let group = child.id() as i32;
    let input = stdin.map(str::to_owned).zip(child.stdin.take());
    // Fed, waited for and read on a thread of its own, so that an nft that never ends can be
    // killed after NFT_PATIENCE.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // An nft that stops reading ends with an error of its own (said below).
        let wrote = match input {
            Some((text, mut pipe)) => pipe.write_all(text.as_bytes()),
            None => Ok(()),
        };
        let _ = tx.send((wrote, child.wait_with_output()));
    });
    let ((wrote, out), late) = match rx.recv_timeout(NFT_PATIENCE) {
        Ok(r) => (r, false),
        Err(_) => {
            // SAFETY: kill(2) on the process group of our child, which its waiting thread
            // has not reaped (it sends only after reaping, and nothing came).
            unsafe { libc::kill(-group, libc::SIGKILL) };
            // A process nft started in a session of its own may keep the pipes open, and the
            // thread reading them waiting: it is left to that (the error is the same).
            let gone = || std::io::Error::other("its output stayed open after the kill");
            let reaped = rx.recv_timeout(std::time::Duration::from_secs(5));
            (reaped.unwrap_or_else(|_| (Ok(()), Err(gone()))), true)
        }
    };
    if late {
        return Err(format!(
            "nft {} {LATE} {} s: killed{}",
            args.join(" "),
            NFT_PATIENCE.as_secs(),
            out.err().map(|e| format!(" ({e})")).unwrap_or_default()
        ));
    }
    let out = out.map_err(|e| format!("nft: {e}"))?;
    if out.status.success() {
        wrote.map_err(|e| format!("nft {}: writing its input: {e}", args.join(" ")))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        // Killed (a signal), nft says nothing: say how it ended instead.
        let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
        Err(format!(
            "nft {}: {}",
            args.join(" "),
            if err.is_empty() {
                out.status.to_string()
            } else {
                err
            }
        ))
    }
}

/// The table under `iface`'s name, as nft lists it with `args` (`None`: there is none, or
/// nft cannot list it), with the interface its rules match when that is another one: names
/// that differ only in characters other than letters and digits (`a.b`, `a_b`) share a table
/// name. `Err`: nft was killed after NFT_PATIENCE, which says nothing of the table (taken
/// for none, a stop would leave it and a replacement would remember conntrack's setting as
/// the table's own 0).
fn listing(iface: &str, args: &[&str]) -> Result<Option<(String, Option<String>)>, String> {
    let name = table_name(iface);
    let mut all = args.to_vec();
    all.extend(["list", "table", "inet", &name]);
    let out = match nft(&all, None) {
        Ok(out) => out,
        Err(e) if e.contains(LATE) => return Err(e),
        Err(_) => return Ok(None),
    };
    let other = table_iface(&out).filter(|o| o != iface);
    Ok(Some((out, other)))
}

/// The loose value a table's listing remembers (`None`: no comment of ours).
fn loose_in(listing: &str) -> Option<String> {
    let at = listing.find(COMMENT)? + COMMENT.len();
    Some(
        listing[at..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect(),
    )
}

/// The interface a table's rules match (`iifname "…"`, as `ruleset` writes it).
fn table_iface(listing: &str) -> Option<String> {
    let at = listing.find("iifname \"")? + "iifname \"".len();
    let end = listing[at..].find('"')?;
    Some(listing[at..at + end].to_string())
}

/// The error for a table that is `other`'s.
fn not_ours(iface: &str, other: &str) -> String {
    format!(
        "nftables table inet {} is interface {other}'s (their names differ only in characters other than letters and digits, which table names spell as _): one of the two cannot use challenge = \"syncookie\"",
        table_name(iface)
    )
}

/// The loose value a table of ours remembers, if `iface`'s table exists (`Err`: the table
/// under its name is another interface's).
fn remembered(iface: &str) -> Result<Option<String>, String> {
    let Some((out, other)) = listing(iface, &[])? else {
        return Ok(None);
    };
    if let Some(other) = other {
        return Err(not_ours(iface, &other));
    }
    Ok(loose_in(&out))
}

/// The loose value another interface's table of ours remembers: conntrack's setting is
/// that table's 0 by now, and whichever table goes last puts its remembered value back (a
/// second table remembering 0 left 0 after both went).
fn loose_elsewhere(iface: &str) -> Option<String> {
    let own = table_name(iface);
    let tables = nft(&["list", "tables", "inet"], None).ok()?;
    tables
        .lines()
        .filter_map(|l| l.trim().strip_prefix("table inet "))
        .filter(|t| t.starts_with("shield_syncookie_") && *t != own)
        .filter_map(|t| nft(&["-t", "list", "table", "inet", t], None).ok())
        .filter_map(|out| loose_in(&out))
        .find(|v| !v.is_empty())
}

/// The table text this process last put in place, per interface.
static APPLIED: std::sync::Mutex<std::collections::BTreeMap<String, String>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

/// Puts `iface`'s table in line with `policy`: created or replaced (atomically) when a rule
/// uses the challenge, removed when none does. `timestamps`: whether the `synproxy`
/// statement offers timestamps; the daemon passes the interface's
/// `PolicyMaps::syncookie_timestamps`, so the statement and the XDP SYN-ACK follow one
/// reading of `timestamps_work`. A table in place with the very text this process put there
/// last is left alone (a reload that changes nothing it holds keeps the meters' entries,
/// which a replaced table starts without). Returns whether a table is in place.
pub fn apply(iface: &str, policy: &Policy, timestamps: bool) -> Result<bool, String> {
    let wants = policy
        .rules
        .iter()
        .any(|r| r.syncookie_mss.is_some() && r.protocol == Protocol::Tcp);
    if !wants {
        remove(iface)?;
        return Ok(false);
    }
    // The value before any table of ours: kept across replacements, and across a table
    // taken away under this process (`nft flush ruleset`), whose text still remembers it
    // (conntrack's setting is this process's 0 by then).
    let remembered = remembered(iface)?;
    let has_table = remembered.is_some();
    let before = APPLIED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(iface)
        .and_then(|t| loose_in(t));
    let loose = match remembered.or(before).or_else(|| loose_elsewhere(iface)) {
        Some(v) if !v.is_empty() => v,
        _ => std::fs::read_to_string(LOOSE)
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|_| "1".into()),
    };
    let Some(table) = ruleset(iface, policy, &loose, timestamps) else {
        remove(iface)?;
        return Ok(false);
    };
    let name = table_name(iface);
    let mut applied = APPLIED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // The same text as the table in place: left as it is, with its meters' entries.
    if !has_table || applied.get(iface) != Some(&table) {
        // Declaring the table first makes the delete valid whether or not it exists: the
        // whole file is one transaction, so traffic sees the old table or the new one.
        let script = format!("table inet {name}\ndelete table inet {name}\n{table}");
        applied.remove(iface);
        nft(&["-f", "-"], Some(&script))?;
        applied.insert(iface.to_string(), table);
    }
    if Path::new(LOOSE).exists() {
        std::fs::write(LOOSE, "0").map_err(|e| format!("setting {LOOSE} to 0: {e}"))?;
    }
    Ok(true)
}

/// Puts back `iface`'s table as this process last put it in place, if it is gone (an
/// operator's `nft flush ruleset`, which `systemctl restart nftables` runs, or `delete
/// table`): without it XDP still answers SYNs with cookies, and the ACKs that complete those
/// handshakes reach no SYNPROXY, so no client over the budget connects. Its text still
/// remembers conntrack's setting from before. Returns whether it put the table back; a table
/// under its name (edited, or another interface's) is left as it is.
pub fn reinstate(iface: &str) -> Result<bool, String> {
    let applied = || {
        APPLIED
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    };
    let Some(table) = applied().get(iface).cloned() else {
        return Ok(false);
    };
    // `list tables` (no rules, no set entries): cheap enough for every second. Not under
    // the lock: an `nft` that hangs here holds no reload or stop up.
    let name = table_name(iface);
    let tables = nft(&["list", "tables", "inet"], None)?;
    if tables
        .lines()
        .any(|l| l.trim() == format!("table inet {name}"))
    {
        return Ok(false);
    }
    // Put back under the lock, and only the text still in force for this process: an
    // `apply`, `restore` or `remove` that came meanwhile decided instead (a table being
    // removed is not put back), and one that comes now waits for this.
    let applied = applied();
    if applied.get(iface) != Some(&table) {
        return Ok(false);
    }
    nft(
        &["-f", "-"],
        Some(&format!(
            "table inet {name}\ndelete table inet {name}\n{table}"
        )),
    )?;
    if Path::new(LOOSE).exists() {
        std::fs::write(LOOSE, "0").map_err(|e| format!("setting {LOOSE} to 0: {e}"))?;
    }
    Ok(true)
}

/// Sets `nf_conntrack_tcp_loose` back to 0 if it is not while `iface` has a table this
/// process put in place (an operator's `sysctl -w net.netfilter.nf_conntrack_tcp_loose=1`,
/// or a `sysctl --system` that loads it): with it at 1, conntrack picks a cookie ACK up as
/// a connection already under way, so it never reaches SYNPROXY and no client over the
/// budget connects. Returns the value it found (`None`: it was 0, or no table of ours).
/// Checked and written under the lock: a `remove` that comes meanwhile puts the value from
/// before the daemon back after this.
pub fn hold_loose(iface: &str) -> Result<Option<String>, String> {
    let applied = APPLIED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !applied.contains_key(iface) {
        return Ok(None);
    }
    let Ok(now) = std::fs::read_to_string(LOOSE) else {
        return Ok(None);
    };
    let now = now.trim();
    if now == "0" {
        return Ok(None);
    }
    std::fs::write(LOOSE, "0").map_err(|e| format!("setting {LOOSE} back to 0: {e}"))?;
    Ok(Some(now.to_string()))
}

/// `remove` on a thread of its own (an `nft` that hangs holds the run loop up nowhere),
/// for an interface the daemon lost; a failure is logged.
pub fn remove_in_background(iface: String) {
    if !APPLIED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .contains_key(&iface)
    {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("syncookie-remove".into())
        .spawn(move || {
            if let Err(e) = remove(&iface) {
                tracing::warn!(iface = %iface, "cannot remove the syncookie nftables table: {e}");
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot remove the syncookie nftables table: {e}");
    }
}

/// Runs `reinstate` for `ifaces` on a thread of its own (an `nft` that hangs holds no one
/// up), unless the previous round is still running.
pub fn reinstate_all(ifaces: Vec<String>) {
    static RUNNING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    static LAST: std::sync::Mutex<String> = std::sync::Mutex::new(String::new());
    use std::sync::atomic::Ordering;
    // No thread (and no `nft`) while no table of this process's is in place.
    let any = APPLIED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .keys()
        .any(|i| ifaces.contains(i));
    if !any || RUNNING.swap(true, Ordering::AcqRel) {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("syncookie-table".into())
        .spawn(move || {
            for iface in ifaces {
                match reinstate(&iface) {
                    Ok(true) => tracing::warn!(
                        iface = %iface,
                        "the nftables table {} was gone (nft flush ruleset, delete table?): put back, as cookie handshakes need it",
                        table_name(&iface)
                    ),
                    Ok(false) => match hold_loose(&iface) {
                        Ok(Some(was)) => tracing::warn!(
                            iface = %iface,
                            "net.netfilter.nf_conntrack_tcp_loose was {was} while the nftables table {} is in force: set back to 0 (with it, conntrack takes cookie ACKs for connections under way and they never reach SYNPROXY: no client over the budget would connect)",
                            table_name(&iface)
                        ),
                        Ok(None) => {}
                        // Once per error, not every second.
                        Err(e) if LAST.lock().is_ok_and(|l| *l == e) => {}
                        Err(e) => {
                            tracing::warn!(iface = %iface, "{e}");
                            if let Ok(mut l) = LAST.lock() {
                                *l = e;
                            }
                        }
                    },
                    // Once per error, not every second.
                    Err(e) if LAST.lock().is_ok_and(|l| *l == e) => {}
                    Err(e) => {
                        tracing::warn!(
                            iface = %iface,
                            "cannot check or put back the nftables table {}: {e}",
                            table_name(&iface)
                        );
                        if let Ok(mut l) = LAST.lock() {
                            *l = e;
                        }
                    }
                }
            }
            RUNNING.store(false, Ordering::Release);
        });
    if spawned.is_err() {
        RUNNING.store(false, Ordering::Release);
    }
}

/// `iface`'s table as it is now (definitions only: no set entries, no counters), for
/// `restore`; `None` where there is none (or nft cannot list it). `Err`: nft was killed
/// after NFT_PATIENCE (`restore` would take the table for none).
pub fn snapshot(iface: &str) -> Result<Option<String>, String> {
    Ok(listing(iface, &["-s", "-t"])?.and_then(|(out, other)| other.is_none().then_some(out)))
}

/// Puts back `iface`'s table as `snapshot` saw it (`None`: no table), undoing what a start
/// that did not finish changed: an earlier run's program still in force keeps the table it
/// needs. A table that did not change is left alone (its meters' entries with it).
pub fn restore(iface: &str, saved: Option<&str>) -> Result<(), String> {
    let Some(saved) = saved else {
        return remove(iface).map(drop);
    };
    match listing(iface, &["-s", "-t"])? {
        // Another interface's table under the same name is not ours to put back.
        Some((_, Some(_))) => return Ok(()),
        Some((now, None)) if now == saved => return Ok(()),
        _ => {}
    }
    APPLIED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .remove(iface);
    let name = table_name(iface);
    nft(
        &["-f", "-"],
        Some(&format!(
            "table inet {name}\ndelete table inet {name}\n{saved}"
        )),
    )?;
    // What `reinstate` puts back if the table goes (a reload then replaces it as new).
    APPLIED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(iface.to_string(), saved.to_string());
    if Path::new(LOOSE).exists() {
        std::fs::write(LOOSE, "0").map_err(|e| format!("setting {LOOSE} to 0: {e}"))?;
    }
    Ok(())
}

/// Removes `iface`'s table if there is one and puts the remembered
/// `nf_conntrack_tcp_loose` back; returns whether a table was there. A table this process
/// put in place that was taken away under it (`nft flush ruleset`) and not yet put back
/// still has its setting put back from the text it had (a stop, a reload without the
/// challenge or a lost interface right after a flush left conntrack's setting at 0).
pub fn remove(iface: &str) -> Result<bool, String> {
    let applied = APPLIED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .remove(iface);
    let (loose, was) = match listing(iface, &[])? {
        // Another interface's table under the same name is left alone.
        Some((_, Some(_))) => return Ok(false),
        Some((out, None)) => {
            let Some(loose) = loose_in(&out) else {
                return Ok(false);
            };
            nft(&["delete", "table", "inet", &table_name(iface)], None)?;
            (loose, true)
        }
        // Only when nft says the table is gone, not when it failed to list it.
        None => {
            let line = format!("table inet {}", table_name(iface));
            let gone = nft(&["list", "tables", "inet"], None)
                .is_ok_and(|t| !t.lines().any(|l| l.trim() == line));
            match applied.as_deref().and_then(loose_in) {
                Some(loose) if gone => (loose, false),
                _ => return Ok(false),
            }
        }
    };
    let others = nft(&["list", "tables"], None)
        .map(|t| t.contains("shield_syncookie_"))
        .unwrap_or(false);
    if !others && !loose.is_empty() && Path::new(LOOSE).exists() {
        std::fs::write(LOOSE, &loose).map_err(|e| format!("restoring {LOOSE}: {e}"))?;
    }
    Ok(was)
}

#[cfg(test)]
mod tests;
