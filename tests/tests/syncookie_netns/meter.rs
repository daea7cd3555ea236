//! The meter of the daemon's nftables table: connections completed through cookies are
//! held to the source's own `connections` limit (ACK, RST+ACK or data right behind the ACK;
//! IPv4, IPv6, a /24 prefix), a limit refilling over years still gets its meter, and a
//! reload that changes nothing keeps its count.

use super::*;

/// A source's own limit of 2 connections, and a budget of one token an hour, then cookies.
const LIMITED: &str = r#"
[[rule]]
name = "api"
protocol = "tcp"
ports = [8000]
connections = { rate = "1/h", burst = 2 }
unverified = { rate = "1/h", burst = 1 }
challenge = "syncookie"
"#;

/// The demo API in the lab (port 8000 of `SERVER_V4`).
const API: SocketAddr = SocketAddr::new(IpAddr::V4(SERVER_V4), 8000);

/// A lab whose budget is spent: the daemon on `policy` (a rule `api` whose `unverified`
/// budget holds one token), the demo API, the client addresses `sources` and the pass
/// program on the client, and the budget's token taken by another client (`client(200)`),
/// so that the new SYNs of `sources` meet the cookie path. Derefs to the lab.
struct SpentLab {
    // Drop order: the pass program, the API, then the lab.
    _pass: aya::Ebpf,
    _api: Gunicorn,
    lab: NsLab,
}

impl std::ops::Deref for SpentLab {
    type Target = NsLab;
    fn deref(&self) -> &NsLab {
        &self.lab
    }
}

fn spent_lab(policy: &str, sources: &[IpAddr]) -> SpentLab {
    let lab = NsLab::new(policy, &[]);
    let api = Gunicorn::start(&lab.topo.server, 8000).expect("starting the demo API");
    for src in [client(200)].iter().chain(sources) {
        lab.topo.add_client_addr(*src).expect("client address");
    }
    let pass = lab.pass_program_on_client();
    let first = lab
        .topo
        .client
        .run_in(move || http_get(client(200), API, "/api/items", Duration::from_secs(3)))
        .expect("client namespace");
    assert_eq!(first, Some(200), "the first client takes the token");
    SpentLab {
        _pass: pass,
        _api: api,
        lab,
    }
}

/// While the budget is spent, XDP answers an unverified source's SYNs with cookies before
/// any per-source state is read, and the ACK completing such a handshake is no connection
/// attempt there: a real source sending its SYNs at once got a cookie for each and
/// completed them all (10 of 10 against a limit of 2 in the PROG_RUN version of this
/// attack). The daemon's nftables table meters the handshakes that complete by the rule's
/// `connections` limit, so the source gets 2 connections, as it would without cookies.
#[test]
fn connections_through_cookies_are_held_to_the_sources_own_limit() {
    let lab = spent_lab(LIMITED, &[client(201)]);
    let codes = at_once(&lab, client(201), 10);
    let api = api_rule(&lab);
    assert!(
        api["counters"]["syncookie"]["packets"].as_u64() >= Some(1),
        "the source's SYNs met the cookie path: {api}"
    );
    let served = codes.iter().filter(|c| **c == Some(200)).count();
    assert_eq!(served, 2, "connections of a source limited to 2: {codes:?}");
    // The refusals are counted where an operator looks for them: the table's counters.
    // How many depends on how many SYNs met a cookie before the first ACK verified the
    // source (a loaded machine spreads the "simultaneous" SYNs out; then XDP's own limit
    // refuses the later ones); the handshakes past the limit always meet the meter, as
    // SYNPROXY answers every SYN to the port. `handshakes_ended_with_ack_or_rst_ack…` below sends every SYN first.
    let (dropped, text) = meter_drops(&lab, "ip saddr");
    assert!(dropped >= 1, "the meter's counter: {text}");
}

/// `n` connections of `src` to the API at once (threads share the client namespace), on
/// `SERVER_V6` for an IPv6 `src`: their status codes.
fn at_once(lab: &NsLab, src: IpAddr, n: usize) -> Vec<Option<u16>> {
    let dst = if src.is_ipv4() {
        API
    } else {
        SocketAddr::new(IpAddr::V6(netlab::SERVER_V6), API.port())
    };
    lab.topo
        .client
        .run_in(move || {
            let start = std::sync::Arc::new(std::sync::Barrier::new(n));
            let threads: Vec<_> = (0..n)
                .map(|_| {
                    let start = start.clone();
                    std::thread::spawn(move || {
                        start.wait();
                        http_get(src, dst, "/api/items", Duration::from_secs(2))
                    })
                })
                .collect();
            threads
                .into_iter()
                .map(|t| t.join().expect("client thread"))
                .collect()
        })
        .expect("client namespace")
}

/// The packets the table's `over connections of rule api` rules keyed by `key` (`ip saddr`,
/// `ip6 saddr`) counted, and the table's text.
fn meter_drops(lab: &NsLab, key: &str) -> (u64, String) {
    let table = run_in(
        &lab.topo.server.name,
        &["nft", "list", "table", "inet", "shield_syncookie_shield0"],
    );
    let text = String::from_utf8_lossy(&table.stdout).into_owned();
    let dropped = text
        .lines()
        .filter(|l| l.contains("over connections of rule api") && l.contains(key))
        .filter_map(|l| l.split("counter packets ").nth(1))
        .filter_map(|c| c.split(' ').next()?.parse::<u64>().ok())
        .sum();
    (dropped, text)
}

/// Completes `N` handshakes to `DST:PORT` from `SRC` with raw segments: every SYN first, then
/// for each cookie SYN-ACK the segment `FLAGS` (`ack` or `rst-ack`) that SYNPROXY takes for
/// the handshake's last ACK (`ack-data`: an ACK, and right behind it a request). The client's own kernel, which knows none of these
/// connections, is kept from resetting them (its bare RSTs dropped at output). Prints the
/// number of SYN-ACKs received.
const RAW_HANDSHAKES: &str = r#"
import socket, struct, subprocess, sys, time
src, dst, dport, n, flags = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
subprocess.run(["nft", "-f", "-"], check=True, text=True, input=
    "table ip mtr_raw {\n chain out {\n type filter hook output priority 0;\n tcp flags == rst drop\n }\n}\n")
def csum(b):
    if len(b) % 2: b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff
def seg(sport, seq, ack, fl, opts=b""):
    h = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, (5 + len(opts) // 4) << 4, fl, 64240, 0, 0) + opts
    ph = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 6, len(h))
    c = csum(ph + h)
    return h[:16] + struct.pack("!H", c) + h[18:]
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
s.bind((src, 0))
s.settimeout(0.2)
ports = {40000 + i: 1000 * (i + 1) for i in range(n)}
for p, isn in ports.items():
    s.sendto(seg(p, isn, 0, 0x02, b"\x02\x04\x05\xb4"), (dst, 0))
got = {}
end = time.time() + 3
while time.time() < end and len(got) < n:
    try: pkt = s.recv(2048)
    except socket.timeout: continue
    ihl = (pkt[0] & 15) * 4
    if socket.inet_ntoa(pkt[12:16]) != dst: continue
    sp, dp, seq, ack, _, fl = struct.unpack("!HHIIBB", pkt[ihl:ihl + 14])
    if sp == dport and dp in ports and fl & 0x12 == 0x12 and ack == ports[dp] + 1:
        got[dp] = seq
last = 0x10 if flags in ("ack", "ack-data") else 0x14
for p, seq in got.items():
    s.sendto(seg(p, ports[p] + 1, seq + 1, last), (dst, 0))
    if flags == "ack-data":
        s.sendto(seg(p, ports[p] + 1, seq + 1, 0x18) + b"GET / HTTP/1.0\r\n\r\n", (dst, 0))
print(len(got))
"#;

/// Runs `RAW_HANDSHAKES` in the client namespace: `n` handshakes from `src` to the API
/// ended with `flags`, then half a second for SYNPROXY to hand the connections over.
/// Returns what it printed (the SYN-ACKs received) and its stderr.
fn raw_handshakes(lab: &NsLab, src: IpAddr, n: u32, flags: &str) -> (String, String) {
    let out = run_in(
        &lab.topo.client.name,
        &[
            "python3",
            "-c",
            RAW_HANDSHAKES,
            &src.to_string(),
            &API.ip().to_string(),
            &API.port().to_string(),
            &n.to_string(),
            flags,
        ],
    );
    std::thread::sleep(Duration::from_millis(500));
    (
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A source's sockets the server holds established on port 8000, once there are `want` (or
/// after 10 s: a loaded machine may hand them over late; the half second `raw_handshakes`
/// waits lets any over `want` show up too).
fn established_from(lab: &NsLab, src: IpAddr, want: usize) -> usize {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let n = established_now(lab, src);
        if n >= want || std::time::Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn established_now(lab: &NsLab, src: IpAddr) -> usize {
    let out = run_in(
        &lab.topo.server.name,
        &[
            "ss",
            "-Htn",
            "state",
            "established",
            "( sport = :8000 )",
            "dst",
            &src.to_string(),
        ],
    );
    String::from_utf8_lossy(&out.stdout).lines().count()
}

/// Every SYN first, then every ACK: all 10 handshakes of a source go through XDP cookies,
/// whatever the machine's load, and exactly its limit complete. SYNPROXY opens a
/// connection for an ACK with a valid cookie whatever else it carries, RST included (XDP
/// passes it too: it checks the cookie, not the flags): a source that ends its handshakes
/// with RST+ACK instead of ACK meets the same meter.
#[test]
fn handshakes_ended_with_ack_or_rst_ack_are_held_to_the_sources_own_limit() {
    let lab = spent_lab(LIMITED, &[client(202), client(205)]);
    for (src, ending) in [(client(205), "ack"), (client(202), "rst-ack")] {
        let (before, _) = meter_drops(&lab, "ip saddr");
        let (answered, err) = raw_handshakes(&lab, src, 10, ending);
        assert_eq!(
            answered, "10",
            "{ending}: every SYN answered with a cookie: {err}"
        );
        let held = established_from(&lab, src, 2);
        assert_eq!(held, 2, "{ending}: connections of a source limited to 2");
        let (after, text) = meter_drops(&lab, "ip saddr");
        assert_eq!(
            after - before,
            8,
            "{ending}: the meter refused the other 8: {text}"
        );
    }
}

/// The meter on IPv6, keyed by the rule's `ipv6_prefix` (a /64): a source never verified
/// opens 10 connections at once while the budget is spent. Its first SYN gets an XDP cookie
/// (its later ones too while no ACK has verified the /64, then XDP's own limit judges them);
/// the meter holds the source to 2 connections (5 of 10 in a run without it), its refusals
/// in the IPv6 rule's counter.
#[test]
fn ipv6_connections_through_cookies_are_held_to_the_sources_own_limit() {
    let lab = spent_lab(LIMITED, &[client6(200)]);
    let codes = at_once(&lab, client6(200), 10);
    let cookies = shield_tests::nslab::counter(&lab.stats(), "api", "syncookie");
    assert!(
        cookies >= 1,
        "the source's SYNs met the cookie path: {cookies}"
    );
    let served = codes.iter().filter(|c| **c == Some(200)).count();
    assert_eq!(
        served, 2,
        "connections of an IPv6 source limited to 2: {codes:?}"
    );
    let (dropped, text) = meter_drops(&lab, "ip6 saddr");
    assert!(dropped >= 1, "the IPv6 meter's counter: {text}");
}

/// `LIMITED` with sources keyed by their /24.
const LIMITED_24: &str = r#"
[[rule]]
name = "api"
protocol = "tcp"
ports = [8000]
ipv4_prefix = 24
connections = { rate = "1/h", burst = 2 }
unverified = { rate = "1/h", burst = 1 }
challenge = "syncookie"
"#;

/// With `ipv4_prefix = 24` the meter keys a source by its /24: four addresses of one /24,
/// each connecting once (each never verified, so each SYN gets a cookie), together get the
/// /24's 2 connections (4 without the meter); an address of another /24 then has its own 2
/// (of 3 attempts: after its first, XDP's own limit admits its SYNs and the meter alone
/// refuses the third).
#[test]
fn addresses_of_one_24_share_the_meters_limit() {
    let addr = |net: u8, host: u8| IpAddr::V4(Ipv4Addr::new(100, 64, net, host));
    let shared: Vec<IpAddr> = (1..=4).map(|h| addr(24, h)).collect();
    let other = addr(25, 1);
    let lab = spent_lab(LIMITED_24, &[shared.as_slice(), &[other]].concat());
    let get = |src: IpAddr| http_get(src, API, "/api/items", Duration::from_secs(2));
    let (codes, others) = lab
        .topo
        .client
        .run_in(move || {
            let codes: Vec<Option<u16>> = shared.iter().map(|s| get(*s)).collect();
            let others: Vec<Option<u16>> = (0..3).map(|_| get(other)).collect();
            (codes, others)
        })
        .expect("client namespace");
    let cookies = shield_tests::nslab::counter(&lab.stats(), "api", "syncookie");
    assert!(
        cookies >= 5,
        "a cookie for each address's first SYN: {cookies}"
    );
    let served = |c: &[Option<u16>]| c.iter().filter(|c| **c == Some(200)).count();
    assert_eq!(
        served(&codes),
        2,
        "four addresses of a /24 limited to 2: {codes:?}"
    );
    assert_eq!(served(&others), 2, "an address of another /24: {others:?}");
    let (dropped, text) = meter_drops(&lab, "ip saddr");
    assert!(dropped >= 3, "the meter's counter: {text}");
}

/// A limit whose full bucket takes more than 10^8 seconds to refill (2,000 connections,
/// then one a day: about 5.5 years), which the parser accepts: the daemon still starts,
/// with the meter's entries lasting that long (nft refuses a timeout written as 10^8 or
/// more seconds, "value too large").
#[test]
fn a_limit_that_refills_over_years_still_gets_its_meter() {
    let lab = NsLab::new(
        r#"
[[rule]]
name = "api"
protocol = "tcp"
ports = [8000]
connections = { rate = "1/d", burst = 2000 }
unverified = { rate = "1/h", burst = 1 }
challenge = "syncookie"
"#,
        &[],
    );
    let table = run_in(
        &lab.topo.server.name,
        &["nft", "list", "table", "inet", "shield_syncookie_shield0"],
    );
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("limit rate over 1/day burst 2000 packets")
            && text.contains("timeout 2000d1s"),
        "the meter, its entries kept 2,000 days and a second: {text}"
    );
}

/// A reload that leaves the table's text as it was (here the same policy) leaves the table,
/// and with it the meter's entries: a source that used its 2 connections gets no third one
/// from an operator's (or a cron job's) reload.
#[test]
fn a_reload_that_changes_nothing_keeps_the_meters_count() {
    let lab = spent_lab(LIMITED, &[client(203)]);
    let get = || http_get(client(203), API, "/api/items", Duration::from_secs(2));
    for i in 0..2 {
        let code = lab.topo.client.run_in(get).expect("client namespace");
        assert_eq!(code, Some(200), "connection {i} of 2");
    }
    let (ok, _, err) = lab.shield(&["reload"]);
    assert!(ok, "shield reload: {err}");
    let third = lab.topo.client.run_in(get).expect("client namespace");
    assert_eq!(third, None, "a third connection after the reload");
}

/// A client that speaks first sends its data right behind the ACK ending its handshake; the
/// data can reach the host before SYNPROXY has the connection from the listener, while
/// conntrack still calls the flow's segments invalid. That is one connection, not two: a
/// source limited to 2 that opens 2 this way gets both (it got 1, its first data charged).
#[test]
fn a_clients_data_right_behind_its_ack_is_not_a_second_connection() {
    let lab = spent_lab(LIMITED, &[client(204)]);
    let (answered, err) = raw_handshakes(&lab, client(204), 2, "ack-data");
    assert_eq!(answered, "2", "both SYNs answered with a cookie: {err}");
    assert_eq!(
        established_from(&lab, client(204), 2),
        2,
        "connections of a source limited to 2 that opened 2"
    );
}
