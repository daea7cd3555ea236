//! The fuzzer's inputs: a seedable generator, random policies and random and malformed
//! frames.

use std::fmt::Write as _;

use crate::{L4, Pkt};

/// splitmix64: small, seedable, reproducible.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// 0..n
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    pub fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len() as u64) as usize]
    }
}

const PORTS: [u16; 6] = [22, 53, 80, 443, 8080, 9000];

/// Sources: a few IPv4 /24s and IPv6 /64s, so that sources repeat, share prefixes, and
/// meet the lists (100.64.1.x: a /16 block no list prefix touches).
pub(crate) fn source(rng: &mut Rng) -> String {
    if rng.chance(70) {
        format!(
            "{}.{}",
            rng.pick(&[
                "192.0.2",
                "198.51.100",
                "203.0.113",
                "10.1.2",
                "10.1.3",
                "100.64.1"
            ]),
            rng.below(8) + 1
        )
    } else {
        format!(
            "{}:{}::{:x}",
            rng.pick(&["2001:db8:1:2", "2001:db8:1:3", "2001:db8:dead:1"]),
            rng.below(2),
            rng.below(6) + 1
        )
    }
}

fn limit(rng: &mut Rng) -> String {
    let rate = rng.pick(&["1/s", "5/s", "20/s", "100/s", "600/min"]);
    let burst = rng.below(6) + 1;
    if rng.chance(25) {
        format!(
            "{{ rate = \"{rate}\", burst = {burst}, sustained = \"{}/min\" }}",
            rng.below(20) + 2
        )
    } else {
        format!("{{ rate = \"{rate}\", burst = {burst} }}")
    }
}

/// A random valid policy (TOML).
pub fn random_policy(rng: &mut Rng) -> String {
    let mut s = String::new();
    if rng.chance(20) {
        s.push_str("[defaults]\nmode = \"monitor\"\n");
    }
    // IPv4: prefixes inside a /16 (the lists' summary asks the trie) and covering /16s
    // (the summary answers alone), nested in each other; /15 and /7 whose sources are not
    // in their first /16 block, a /17 over two /24s.
    let lists = [
        "192.0.2.0/28",
        "198.51.100.0/24",
        "203.0.113.2/32",
        "203.0.0.0/16",
        "10.0.0.0/8",
        "10.1.3.0/24",
        "10.0.0.0/15",
        "10.1.0.0/17",
        "198.0.0.0/7",
        "2001:db8:dead::/48",
        "2001:db8:1:3::/64",
    ];
    let mut allow = Vec::new();
    let mut deny = Vec::new();
    for l in lists {
        match rng.below(6) {
            0 => allow.push(format!("\"{l}\"")),
            1 => deny.push(format!("\"{l}\"")),
            _ => {}
        }
    }
    let _ = writeln!(
        s,
        "[lists]\nallow = [{}]\ndeny = [{}]",
        allow.join(", "),
        deny.join(", ")
    );
    let mut used: Vec<(&str, u16)> = Vec::new();
    let mut catch_all = Vec::new();
    for i in 0..(rng.below(4) + 1) {
        let mut proto = *rng.pick(&["tcp", "tcp", "udp", "icmp"]);
        if proto == "icmp" && catch_all.contains(&"icmp") {
            proto = "udp";
        }
        let _ = write!(s, "[[rule]]\nname = \"r{i}\"\nprotocol = \"{proto}\"\n");
        if proto == "icmp" {
            catch_all.push("icmp");
        } else if rng.chance(30) && !catch_all.contains(&proto) {
            catch_all.push(proto);
        } else {
            let mut ports = Vec::new();
            for p in PORTS {
                if rng.chance(40) && !used.contains(&(proto, p)) {
                    used.push((proto, p));
                    ports.push(p.to_string());
                }
            }
            if ports.is_empty() {
                let p = 10_000 + i as u16;
                used.push((proto, p));
                ports.push(p.to_string());
            }
            let _ = writeln!(s, "ports = [{}]", ports.join(", "));
        }
        if rng.chance(25) {
            s.push_str("mode = \"monitor\"\n");
        }
        if rng.chance(30) {
            let _ = writeln!(s, "ipv4_prefix = {}", rng.pick(&[24, 28, 32]));
        }
        if rng.chance(30) {
            let _ = writeln!(s, "ipv6_prefix = {}", rng.pick(&[48, 64, 128]));
        }
        let mut any = false;
        if proto == "tcp" && rng.chance(80) {
            let _ = writeln!(s, "connections = {}", limit(rng));
            any = true;
        }
        if !any || rng.chance(40) {
            let _ = writeln!(s, "packets = {}", limit(rng));
        }
        if rng.chance(50) {
            let strikes = rng.below(3) + 1;
            let _ = writeln!(
                s,
                "escalation = {{ strikes = {strikes}, window = \"{}s\", ban = \"{}s\", backoff = 2, max_ban = \"2m\", scope = \"{}\" }}",
                strikes + rng.below(10),
                rng.below(30) + 1,
                rng.pick(&["rule", "host"])
            );
        }
        if proto == "tcp" && rng.chance(40) {
            s.push_str("over_limit = \"reset\"\n");
            if rng.chance(50) {
                let _ = writeln!(
                    s,
                    "resets = \"{}\"",
                    rng.pick(&["1/s", "3/s", "50/s", "60/min"])
                );
            }
        }
        if proto == "tcp" && rng.chance(30) {
            let _ = writeln!(
                s,
                "unverified = {{ rate = \"{}/s\", burst = {} }}",
                rng.below(20) + 1,
                rng.below(10) + 1
            );
            if rng.chance(50) {
                let _ = writeln!(s, "challenge = \"syncookie\"");
                if rng.chance(50) {
                    let _ = writeln!(s, "mss = {}", 536 + rng.below(8464));
                }
            }
        }
    }
    s
}

/// A random frame: mostly well-formed TCP/UDP/ICMP of both families with VLAN tags, IPv4
/// options, IPv6 extension chains and fragments; IP header fields at their edges (`edit_v4`,
/// `edit_v6`); Ethernet's padding to 60 bytes; then truncations, flipped bytes and
/// random bytes.
pub fn random_frame(rng: &mut Rng) -> Vec<u8> {
    if rng.chance(3) {
        let n = 14 + rng.below(90) as usize;
        return (0..n).map(|_| rng.next_u64() as u8).collect();
    }
    let src = source(rng);
    let v6 = src.contains(':');
    let dport = if rng.chance(80) {
        *rng.pick(&PORTS)
    } else {
        rng.next_u64() as u16
    };
    let l4 = match rng.below(10) {
        0..=5 => L4::Tcp {
            dport,
            flags: *rng.pick(&[0x02, 0x02, 0x02, 0x10, 0x12, 0x18, 0x04, 0x11, 0x03]),
        },
        6 | 7 => L4::Udp { dport },
        8 => L4::Echo,
        _ => {
            if v6 {
                L4::Icmp6 {
                    ty: *rng.pick(&[128, 135, 136, 1]),
                }
            } else {
                L4::Other {
                    proto: *rng.pick(&[47, 50, 132, 112]),
                    payload: vec![0; rng.below(24) as usize],
                }
            }
        }
    };
    let mut p = Pkt::new(&src, l4);
    if rng.chance(15) {
        // Up to four tags: a third and fourth are `hidden_header`.
        let n = rng.below(5) as usize;
        p = p.vlans(&[7, 8, 0, 0][..n]);
    }
    if !v6 && rng.chance(15) {
        p = p.options(rng.below(11) as u8);
    }
    if v6 && rng.chance(20) {
        // Up to 12: past 8 the chain is `hidden_header`.
        let n = rng.below(13) as usize;
        let chain: Vec<u8> = (0..n).map(|_| *rng.pick(&[0u8, 43, 60, 51, 60])).collect();
        p = p.ext(&chain);
    }
    if rng.chance(10) {
        p = p.fragment(*rng.pick(&[1, 1, 2, 185]));
    } else if rng.chance(8) {
        p = p.first_fragment(rng.below(24) as usize);
    }
    let mut f = p.bytes();
    if !v6 && rng.chance(25) {
        for _ in 0..(rng.below(3) + 1) {
            edit_v4(rng, &mut f, 14 + 4 * p.vlans.len());
        }
    }
    if v6 && rng.chance(25) {
        for _ in 0..(rng.below(3) + 1) {
            edit_v6(rng, &mut f, 14 + 4 * p.vlans.len());
        }
    }
    // Ethernet's minimum frame (60 bytes without the FCS): a short packet arrives padded,
    // so only the IP length says where it ends (a tiny first fragment in a 60-byte frame
    // holds a whole TCP header's worth of bytes).
    if rng.chance(20) && f.len() < 60 {
        f.resize(60, 0);
    }
    if rng.chance(5) {
        let cut = 14 + rng.below((f.len() - 14) as u64) as usize;
        f.truncate(cut);
    }
    if rng.chance(5) {
        for _ in 0..(rng.below(3) + 1) {
            let at = rng.below(f.len() as u64) as usize;
            f[at] = rng.next_u64() as u8;
        }
    }
    f
}

/// One edit of an IPv4 frame's header fields at the edges the parsers decide on (the
/// inline parse of plain IPv4 TCP frames, `parse_plain_v4_tcp`, and the general one): the
/// flags and fragment offset, then (`edit_length_or_tcp`) the total length, a payload (a
/// data segment), the TCP data offset and flags. `l3`: the IP header's offset.
fn edit_v4(rng: &mut Rng, f: &mut Vec<u8>, l3: usize) {
    if f.len() < l3 + 20 {
        return;
    }
    let th = l3 + usize::from(f[l3] & 0x0f) * 4;
    match rng.below(6) {
        // Reserved, don't-fragment and more-fragments flags, alone or together.
        0 => f[l3 + 6] |= *rng.pick(&[0x80, 0x40, 0x20, 0xc0, 0x60, 0xe0]),
        // Fragment offsets: 1 (RFC 1858), its neighbours, the largest; any flags.
        1 => {
            let off = *rng.pick(&[0u16, 1, 2, 0x100, 0x1fff]);
            let flags = (rng.below(8) as u16) << 13;
            f[l3 + 6..l3 + 8].copy_from_slice(&(off | flags).to_be_bytes());
        }
        // Total lengths around the headers' and past the frame; a payload; the TCP header.
        k => {
            let lengths = [0u16, 19, 20, 21, 39, 40, 41, 59, 60, 0xffff];
            edit_length_or_tcp(rng, f, k, l3 + 2, &lengths, th);
        }
    }
}

/// One edit of an IPv6 frame's fields at the edges the parsers decide on (the inline parse
/// of plain IPv6 TCP frames, `parse_plain_v6_tcp`, and the general one): the version, the
/// next header, then (`edit_length_or_tcp`) the payload length, a payload (a data segment),
/// the TCP data offset and flags. `l3`: the IP header's offset.
fn edit_v6(rng: &mut Rng, f: &mut Vec<u8>, l3: usize) {
    if f.len() < l3 + 40 {
        return;
    }
    match rng.below(6) {
        // Another version in the IPv6 ethertype.
        0 => f[l3] = (*rng.pick(&[0u8, 4, 7, 15]) << 4) | (f[l3] & 0x0f),
        // Another next header where TCP was (or TCP where an extension header was).
        1 => f[l3 + 6] = *rng.pick(&[6u8, 0, 17, 44, 58, 59]),
        // Payload lengths around the TCP header's and past the frame; the TCP header where
        // the next header says it follows the fixed header.
        k => edit_length_or_tcp(rng, f, k, l3 + 4, &[0, 19, 20, 21, 40, 0xffff], l3 + 40),
    }
}

/// The edits IPv4 and IPv6 share, by `kind` (2-5): the IP length field at `len_at` set to
/// one of `lengths` or a little past its value; a payload the IP length counts (a data
/// segment, or a fragment's rest); a TCP data offset 0..15 (options the frame may cut); any
/// TCP flags byte (SYN, ACK, RST, FIN together). `th`: the TCP header's offset.
fn edit_length_or_tcp(
    rng: &mut Rng,
    f: &mut Vec<u8>,
    kind: u64,
    len_at: usize,
    lengths: &[u16],
    th: usize,
) {
    let len = u16::from_be_bytes([f[len_at], f[len_at + 1]]);
    let set_len = |f: &mut Vec<u8>, v: u16| f[len_at..len_at + 2].copy_from_slice(&v.to_be_bytes());
    match kind {
        2 => {
            let v = *rng.pick(lengths);
            let v = if rng.chance(30) {
                len.wrapping_add(rng.below(8) as u16)
            } else {
                v
            };
            set_len(f, v);
        }
        3 => {
            let n = 1 + rng.below(44) as usize;
            f.extend((0..n).map(|_| rng.next_u64() as u8));
            set_len(f, len.wrapping_add(n as u16));
        }
        4 => {
            if let Some(b) = f.get_mut(th + 12) {
                *b = (rng.below(16) as u8) << 4 | (*b & 0x0f);
            }
        }
        _ => {
            if let Some(b) = f.get_mut(th + 13) {
                *b = rng.next_u64() as u8;
            }
        }
    }
}
