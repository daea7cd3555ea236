//! The model's frame parser, written from the README: what it reads of Ethernet, VLAN
//! tags, IPv4, IPv6 and its extension headers, TCP, UDP and ICMP, and what the `syncookie`
//! path sees of a TCP segment.

use crate::addr::{FAMILY_V4, FAMILY_V6};

/// A TCP segment as the `syncookie` path sees it: only IPv4 without options or fragments and
/// IPv6 whose next header is TCP; others it leaves alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Handshake {
    /// The flags byte.
    pub flags: u8,
    /// The whole TCP header (`doff` words) is inside the frame.
    pub whole_header: bool,
}

/// SYN, ACK, RST, FIN: the flags that tell handshake segments apart.
pub(super) const HANDSHAKE_FLAGS: u8 = 0x17;

/// The `syncookie` path's view of a frame (see `Handshake`).
pub fn handshake(f: &[u8]) -> Option<Handshake> {
    let mut off = 14;
    let mut ethertype = be16(get(f, 12, 2)?);
    for _ in 0..2 {
        if ethertype != 0x8100 && ethertype != 0x88a8 {
            break;
        }
        ethertype = be16(get(f, off + 2, 2)?);
        off += 4;
    }
    let th = match ethertype {
        0x0800 => {
            let ip = get(f, off, 20)?;
            if ip[0] != 0x45 || ip[6] & 0x3f != 0 || ip[7] != 0 || ip[9] != 6 {
                return None;
            }
            off + 20
        }
        0x86dd => {
            let ip = get(f, off, 40)?;
            if ip[6] != 6 {
                return None;
            }
            off + 40
        }
        _ => return None,
    };
    let tcp = get(f, th, 20)?;
    let doff = usize::from(tcp[12] >> 4) * 4;
    Some(Handshake {
        flags: tcp[13],
        whole_header: th + doff <= f.len(),
    })
}

/// Transport of a parsed packet, as far as rules are concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// No port: non-first fragments, protocols without rules, ND.
    None,
    Tcp {
        dport: u16,
        syn_only: bool,
        data: bool,
        /// No IPv4 options or IPv6 extension headers, not a fragment: a SYN that can be
        /// answered with a RST (if neither RST nor FIN is set).
        plain: bool,
    },
    Udp {
        dport: u16,
    },
    Icmp,
    /// A fragment that could hide a transport header (RFC 1858 / RFC 7112).
    BadFragment,
    /// An IPv6 extension chain longer than 8 headers: the kernel would follow it.
    Hidden,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parsed {
    pub family: u8,
    /// Network order, IPv4 in the first four bytes.
    pub src: [u8; 16],
    pub transport: Transport,
}

/// What a frame is, per the README's parsing rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frame {
    NotIp,
    Malformed,
    /// A third VLAN tag: the kernel would unwrap it.
    Hidden,
    Ip(Parsed),
}

pub(super) fn get(f: &[u8], at: usize, n: usize) -> Option<&[u8]> {
    f.get(at..at.checked_add(n)?)
}

pub(super) fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

/// Bytes of transport header a first fragment must carry (TCP 20, UDP 8, ICMP 4).
fn needed(proto: u8) -> usize {
    match proto {
        6 => 20,
        17 => 8,
        1 | 58 => 4,
        _ => 0,
    }
}

fn is_ext(proto: u8) -> bool {
    matches!(proto, 0 | 43 | 60 | 51 | 44)
}

/// Parses a frame: Ethernet, up to two VLAN tags, IPv4 (options, fragments) or IPv6 (up to
/// 8 extension headers), then the transport header the rules need. Malformed: a frame
/// shorter than its IP length, or a whole packet whose transport header the IP length
/// leaves out (see `transport`).
pub fn parse(f: &[u8]) -> Frame {
    let Some(eth) = get(f, 0, 14) else {
        return Frame::Malformed;
    };
    let mut ethertype = be16(&eth[12..]);
    let mut off = 14;
    for _ in 0..2 {
        if ethertype != 0x8100 && ethertype != 0x88a8 {
            break;
        }
        let Some(tag) = get(f, off, 4) else {
            return Frame::Malformed;
        };
        ethertype = be16(&tag[2..]);
        off += 4;
    }
    let r = match ethertype {
        0x0800 => v4(f, off),
        0x86dd => v6(f, off),
        0x8100 | 0x88a8 => return Frame::Hidden,
        _ => return Frame::NotIp,
    };
    r.map_or(Frame::Malformed, Frame::Ip)
}

fn v4(f: &[u8], off: usize) -> Option<Parsed> {
    let ip = get(f, off, 20)?;
    if ip[0] >> 4 != 4 {
        return None;
    }
    let hlen = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(be16(&ip[2..]));
    // A frame shorter than its IP length is truncated: the kernel drops it.
    if hlen < 20 || total < hlen || off + total > f.len() {
        return None;
    }
    get(f, off, hlen)?;
    let mut src = [0u8; 16];
    src[..4].copy_from_slice(&ip[12..16]);
    let mut p = Parsed {
        family: FAMILY_V4,
        src,
        transport: Transport::None,
    };
    let frag = be16(&ip[6..]);
    let (offset, more) = (frag & 0x1fff, frag & 0x2000 != 0);
    let proto = ip[9];
    if offset != 0 {
        if offset == 1 && proto == 6 {
            p.transport = Transport::BadFragment;
        }
        return Some(p);
    }
    if more && total - hlen < needed(proto) {
        p.transport = Transport::BadFragment;
        return Some(p);
    }
    p.transport = transport(f, off + hlen, total - hlen, !more, proto)?;
    // DF and the reserved flag: still plain (not a fragment).
    plain(&mut p, hlen == 20 && frag & 0x3fff == 0);
    Some(p)
}

fn plain(p: &mut Parsed, yes: bool) {
    if let Transport::Tcp { plain, .. } = &mut p.transport {
        *plain = yes;
    }
}

fn v6(f: &[u8], off: usize) -> Option<Parsed> {
    let ip = get(f, off, 40)?;
    if ip[0] >> 4 != 6 {
        return None;
    }
    let mut src = [0u8; 16];
    src.copy_from_slice(&ip[8..24]);
    let mut p = Parsed {
        family: FAMILY_V6,
        src,
        transport: Transport::None,
    };
    let end = off + 40 + usize::from(be16(&ip[4..]));
    if end > f.len() {
        return None;
    }
    let mut next = ip[6];
    let mut at = off + 40;
    let mut first_fragment = false;
    for _ in 0..8 {
        match next {
            0 | 43 | 60 => {
                let h = get(f, at, 2)?;
                next = h[0];
                at += (usize::from(h[1]) + 1) * 8;
            }
            51 => {
                let h = get(f, at, 2)?;
                next = h[0];
                at += (usize::from(h[1]) + 2) * 4;
            }
            44 => {
                let h = get(f, at, 4)?;
                next = h[0];
                let offset = be16(&h[2..]) >> 3;
                if offset != 0 {
                    if offset == 1 && next == 6 {
                        p.transport = Transport::BadFragment;
                    }
                    return Some(p);
                }
                first_fragment = h[3] & 1 != 0;
                at += 8;
            }
            _ => break,
        }
    }
    if is_ext(next) {
        p.transport = Transport::Hidden;
        return Some(p);
    }
    let len = end.saturating_sub(at);
    if first_fragment && (is_ext(next) || len < needed(next)) {
        p.transport = Transport::BadFragment;
        return Some(p);
    }
    p.transport = transport(f, at, len, !first_fragment, next)?;
    plain(&mut p, ip[6] == 6);
    Some(p)
}

/// The transport header at `at`, `len` bytes before the IP payload ends. `whole`: not a
/// first fragment. A whole packet's transport header (TCP: as long as its data offset
/// says) must lie inside the IP payload, as the kernel requires: one the IP length leaves
/// out (bytes in the Ethernet padding) is malformed. A first fragment needs only `needed`
/// bytes (its TCP options may follow in the next fragment).
fn transport(f: &[u8], at: usize, len: usize, whole: bool, proto: u8) -> Option<Transport> {
    if whole && len < needed(proto) {
        return None;
    }
    Some(match proto {
        6 => {
            let t = get(f, at, 20)?;
            let doff = usize::from(t[12] >> 4);
            if doff < 5 || (whole && len < doff * 4) {
                return None;
            }
            Transport::Tcp {
                dport: be16(&t[2..]),
                syn_only: t[13] & 0x12 == 0x02,
                data: t[13] & 0x02 == 0 && len > doff * 4,
                plain: false,
            }
        }
        17 => Transport::Udp {
            dport: be16(&get(f, at, 8)?[2..]),
        },
        1 => {
            get(f, at, 4)?;
            Transport::Icmp
        }
        58 => {
            // Neighbour discovery (133-137) is never matched to a rule.
            if (133..=137).contains(&get(f, at, 4)?[0]) {
                Transport::None
            } else {
                Transport::Icmp
            }
        }
        _ => Transport::None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_the_readme_says() {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x08, 0x00]);
        f.extend_from_slice(&[
            0x45, 0, 0, 40, 0, 0, 0x20, 0, 64, 6, 0, 0, 192, 0, 2, 1, 198, 51, 100, 1,
        ]);
        let mut tcp = [0u8; 20];
        tcp[2..4].copy_from_slice(&8080u16.to_be_bytes());
        tcp[12] = 0x50;
        tcp[13] = 0x02;
        let mut full = f.clone();
        full.extend_from_slice(&tcp);
        // A first fragment (MF) holding all 20 TCP bytes: judged by its port.
        assert!(matches!(
            parse(&full),
            Frame::Ip(Parsed {
                transport: Transport::Tcp {
                    dport: 8080,
                    syn_only: true,
                    data: false,
                    plain: false,
                },
                ..
            })
        ));
        // Only 8 of them (IP length 28): a tiny fragment.
        let mut tiny = f.clone();
        tiny[14 + 3] = 28;
        tiny.extend_from_slice(&tcp[..8]);
        assert!(matches!(
            parse(&tiny),
            Frame::Ip(Parsed {
                transport: Transport::BadFragment,
                ..
            })
        ));
        assert_eq!(parse(&full[..20]), Frame::Malformed);
        // Not a fragment, IP length 20: the TCP header lies past the IP packet (in what
        // would be Ethernet padding): malformed, as the kernel discards it.
        let mut padded = full.clone();
        padded[14 + 6] = 0;
        padded[14 + 3] = 20;
        assert_eq!(parse(&padded), Frame::Malformed);
        // So is a data offset past the IP payload; a first fragment's may be (its options
        // follow in the next fragment).
        let mut options_cut = full.clone();
        options_cut[14 + 20 + 12] = 10 << 4;
        assert!(matches!(
            parse(&options_cut),
            Frame::Ip(Parsed {
                transport: Transport::Tcp { dport: 8080, .. },
                ..
            })
        ));
        options_cut[14 + 6] = 0;
        assert_eq!(parse(&options_cut), Frame::Malformed);
        let mut arp = full.clone();
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(parse(&arp), Frame::NotIp);
    }
}
