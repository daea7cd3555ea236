//! The client of a request: `X-Forwarded-For` from trusted proxies, malformed entries and
//! Unix-socket peers.

use super::*;

#[test]
fn forwarded_for_is_believed_only_from_trusted_proxies() {
    let trusted = [parse_cidr_ok("127.0.0.1/32"), parse_cidr_ok("10.0.0.0/24")];
    let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
    // Untrusted peer: its header is ignored.
    let c = resolve_client(ip("192.0.2.9"), Some("198.51.100.7"), &trusted);
    assert_eq!((c.addr, c.via_proxy), (ip("192.0.2.9"), false));
    // Trusted peer: walk from the right past trusted hops.
    let c = resolve_client(
        ip("127.0.0.1"),
        Some("198.51.100.7, 203.0.113.5, 10.0.0.2"),
        &trusted,
    );
    assert_eq!((c.addr, c.via_proxy), (ip("203.0.113.5"), true));
    // A spoofed leftmost entry does not matter.
    let c = resolve_client(ip("127.0.0.1"), Some("1.1.1.1, 198.51.100.7"), &trusted);
    assert_eq!(c.addr, ip("198.51.100.7"));
    // Malformed: the peer, flagged.
    let c = resolve_client(ip("127.0.0.1"), Some("198.51.100.7, nonsense"), &trusted);
    assert_eq!((c.addr, c.bad_xff), (ip("127.0.0.1"), true));
    // No header: the peer.
    assert_eq!(
        resolve_client(ip("127.0.0.1"), None, &trusted).addr,
        ip("127.0.0.1")
    );
    // IPv4-mapped IPv6 is IPv4.
    let c = resolve_client(ip("::ffff:127.0.0.1"), Some("198.51.100.7"), &trusted);
    assert_eq!(c.addr, ip("198.51.100.7"));
}

#[test]
fn malformed_forwarded_for_counts_an_error_and_limits_the_peer() {
    let mut l = limiter();
    let mut fx = Vec::new();
    let d = login(&mut l, "127.0.0.1", Some("not-an-ip"), &mut fx);
    assert_eq!(d.client.as_deref(), Some("127.0.0.1"));
    assert_eq!(l.counters.errors.load(Ordering::Relaxed), 1);
}

#[test]
fn a_unix_socket_peer_is_this_host_and_its_forwarded_client_is_limited() {
    // gunicorn on a Unix socket behind nginx: REMOTE_ADDR is "".
    let mut l = limiter();
    let mut fx = Vec::new();
    for _ in 0..5 {
        let d = login(&mut l, "", Some("198.51.100.20"), &mut fx);
        assert!(d.allow, "{d:?}");
        assert_eq!(d.client.as_deref(), Some("198.51.100.20"));
    }
    assert_eq!(
        login(&mut l, "", Some("198.51.100.20"), &mut fx).status,
        Some(429)
    );
    let other = login(&mut l, "", Some("198.51.100.21"), &mut fx);
    assert!(other.allow, "another client behind the same proxy");
    assert_eq!(l.counters.errors.load(Ordering::Relaxed), 0);
    // Garbage is still an error.
    assert!(request(&mut l, "POST", "/login", "not-an-ip", None, &mut fx).is_err());
}

#[test]
fn forwarded_entries_with_a_port_or_brackets_name_the_client() {
    // Some load balancers append "IP:PORT" or "[IPv6]:PORT": the client is that address,
    // not the proxy (which would put every client behind it in one bucket).
    let mut l = limiter();
    let mut fx = Vec::new();
    for (xff, client) in [
        ("198.51.100.30:51234", "198.51.100.30"),
        ("[2001:db8::7]:443", "2001:db8::7"),
        ("[2001:db8::8]", "2001:db8::8"),
        ("203.0.113.1, [::ffff:198.51.100.31]:80", "198.51.100.31"),
    ] {
        let d = login(&mut l, "127.0.0.1", Some(xff), &mut fx);
        assert_eq!(d.client.as_deref(), Some(client), "{xff}");
    }
    assert_eq!(l.counters.errors.load(Ordering::Relaxed), 0);
    for bad in [
        "198.51.100.30:",
        "[2001:db8::7",
        "1.2.3.4:99999",
        "[1.2.3.4]x",
    ] {
        let d = login(&mut l, "127.0.0.1", Some(bad), &mut fx);
        assert_eq!(d.client.as_deref(), Some("127.0.0.1"), "{bad}");
    }
}

#[test]
fn a_link_local_peer_with_its_zone_is_limited_not_an_error() {
    // Python's socket module names a link-local IPv6 peer with its zone, and gunicorn's
    // REMOTE_ADDR is that text: refused as "not an IP address", every request of a client
    // on the link was an error, waved through by on_error "open".
    let mut l = limiter();
    let mut fx = Vec::new();
    for i in 0..6 {
        let peer = if i % 2 == 0 {
            "fe80::7%eth0"
        } else {
            "fe80::7%2"
        };
        let d = login(&mut l, peer, None, &mut fx);
        assert_eq!(d.client.as_deref(), Some("fe80::7"), "{peer}");
        assert_eq!(d.allow, i < 5, "request {i}: {d:?}");
    }
    assert_eq!(l.counters.errors.load(Ordering::Relaxed), 0);
    // A zone on an IPv4 address, or an empty one, is still garbage.
    for bad in ["192.0.2.1%eth0", "fe80::7%", "%eth0"] {
        assert!(
            request(&mut l, "POST", "/login", bad, None, &mut fx).is_err(),
            "{bad}"
        );
    }
}
