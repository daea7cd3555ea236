//! Who sent a request: addresses and prefixes, and the client behind trusted proxies
//! (`X-Forwarded-For`).

use std::net::IpAddr;

use crate::policy::Cidr;

/// Whether `cidr` holds `ip`.
pub fn contains(cidr: &Cidr, ip: IpAddr) -> bool {
    masked(ip, cidr.len) == cidr.addr && ip.is_ipv4() == cidr.addr.is_ipv4()
}

/// `ip` with only its first `len` bits.
pub fn masked(ip: IpAddr, len: u8) -> IpAddr {
    match ip {
        IpAddr::V4(a) => {
            let m = u32::MAX
                .checked_shl(32 - u32::from(len.min(32)))
                .unwrap_or(0);
            IpAddr::V4((u32::from(a) & m).into())
        }
        IpAddr::V6(a) => {
            let m = u128::MAX
                .checked_shl(128 - u32::from(len.min(128)))
                .unwrap_or(0);
            IpAddr::V6((u128::from(a) & m).into())
        }
    }
}

/// An address from a request (`peer`): IPv4-mapped IPv6 (`::ffff:a.b.c.d`, what a
/// dual-stack listener reports) as IPv4, the form XDP sees; a link-local IPv6 address with
/// its zone (`fe80::1%eth0`: Python's socket module, so gunicorn's `REMOTE_ADDR`, names a
/// peer on the link so) as the address.
pub(super) fn parse_ip(text: &str) -> Option<IpAddr> {
    let ip: IpAddr = match text.trim().split_once('%') {
        Some((addr, zone)) if !zone.is_empty() => IpAddr::V6(addr.parse().ok()?),
        Some(_) => return None,
        None => text.trim().parse().ok()?,
    };
    Some(unmapped(ip))
}

fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// An `X-Forwarded-For` entry: an address as `parse_ip` reads it, or in the forms some
/// load balancers append: `a.b.c.d:PORT`, `[v6]` and `[v6]:PORT` (refusing them made the
/// proxy the client of every request behind it: one shared bucket).
fn parse_forwarded(text: &str) -> Option<IpAddr> {
    let text = text.trim();
    if let Some(ip) = parse_ip(text) {
        return Some(ip);
    }
    let ip = match text.parse::<std::net::SocketAddr>() {
        Ok(sa) => sa.ip(),
        Err(_) => text.strip_prefix('[')?.strip_suffix(']')?.parse().ok()?,
    };
    Some(unmapped(ip))
}

/// Who sent a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Client {
    pub addr: IpAddr,
    /// It came through a trusted proxy (XDP cannot see it: banned at L7 only).
    pub via_proxy: bool,
    /// `X-Forwarded-For` from a trusted proxy held an entry that is not an address.
    pub bad_xff: bool,
}

/// The client of a request from TCP peer `peer` with `X-Forwarded-For` `xff`: a peer
/// inside `trusted` is a proxy, whose list is walked from the right past further trusted
/// proxies; the first untrusted address is the client. A malformed entry: the peer (and
/// `bad_xff`). An untrusted peer's `xff` is ignored.
pub fn resolve_client(peer: IpAddr, xff: Option<&str>, trusted: &[Cidr]) -> Client {
    let peer = match peer {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(peer, IpAddr::V4),
        v4 => v4,
    };
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| contains(c, ip));
    let direct = Client {
        addr: peer,
        via_proxy: false,
        bad_xff: false,
    };
    if !is_trusted(peer) {
        return direct;
    }
    let Some(xff) = xff.filter(|x| !x.trim().is_empty()) else {
        return direct;
    };
    let mut last = None;
    for entry in xff.rsplit(',') {
        let Some(ip) = parse_forwarded(entry) else {
            return Client {
                bad_xff: true,
                ..direct
            };
        };
        last = Some(ip);
        if !is_trusted(ip) {
            return Client {
                addr: ip,
                via_proxy: true,
                bad_xff: false,
            };
        }
    }
    // Every entry is a trusted proxy: the leftmost is the furthest hop we know.
    Client {
        addr: last.unwrap_or(peer),
        via_proxy: last.is_some(),
        bad_xff: false,
    }
}
