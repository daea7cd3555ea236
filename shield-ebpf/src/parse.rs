//! Parsing with named header fields: Ethernet, up to two VLAN tags, IPv4 (options,
//! fragments), IPv6 (a bounded extension chain), TCP, UDP, ICMP. Every read is bounds-checked
//! through `ptr_at`; every length is clamped and every loop bounded.

use crate::*;

pub(crate) const ETH_HLEN: usize = 14;

pub(crate) const ETH_P_IPV4: u16 = 0x0800;

pub(crate) const ETH_P_IPV6: u16 = 0x86dd;

pub(crate) const ETH_P_8021Q: u16 = 0x8100;

pub(crate) const ETH_P_8021AD: u16 = 0x88a8;

pub(crate) const IPPROTO_HOPOPTS: u8 = 0;

pub(crate) const IPPROTO_ICMP: u8 = 1;

pub(crate) const IPPROTO_TCP: u8 = 6;

pub(crate) const IPPROTO_UDP: u8 = 17;

pub(crate) const IPPROTO_ROUTING: u8 = 43;

pub(crate) const IPPROTO_FRAGMENT: u8 = 44;

pub(crate) const IPPROTO_AH: u8 = 51;

pub(crate) const IPPROTO_ICMPV6: u8 = 58;

pub(crate) const IPPROTO_DSTOPTS: u8 = 60;

/// IPv6 extension headers followed before giving up on finding the transport header.
pub(crate) const MAX_EXT_HEADERS: usize = 8;

pub(crate) const TCP_SYN: u8 = 0x02;

pub(crate) const TCP_ACK: u8 = 0x10;

/// Transport classes the rule table knows.
pub(crate) const L4_NONE: u8 = 0;

pub(crate) const L4_TCP: u8 = 1;

pub(crate) const L4_UDP: u8 = 2;

pub(crate) const L4_ICMP: u8 = 3;

/// A fragment that could hide a transport header (RFC 1858 / RFC 7112): dropped as
/// `bad_fragment`, never looked up in the rule table.
pub(crate) const L4_BAD_FRAGMENT: u8 = 4;

/// The transport header bytes the parser needs to judge a packet: a first fragment carrying
/// fewer would let the kernel reassemble a header no rule saw (RFC 1858's tiny fragments).
/// 0: a protocol without rules.
#[inline(always)]
pub(crate) fn transport_min(proto: u8) -> usize {
    match proto {
        IPPROTO_TCP => 20,
        IPPROTO_UDP => 8,
        IPPROTO_ICMP | IPPROTO_ICMPV6 => 4,
        _ => 0,
    }
}

pub(crate) struct Packet {
    pub(crate) family: u8,
    /// Network-order source address, IPv4 in the first 4 bytes.
    pub(crate) src: [u8; 16],
    /// Offset of the IP header (socket lookups read the destination from there).
    pub(crate) l3_off: u16,
    pub(crate) sport: u16,
    /// `L4_*`; `L4_NONE` for non-first fragments and transports without rules.
    pub(crate) l4: u8,
    pub(crate) dport: u16,
    /// TCP SYN without ACK: a new connection attempt.
    pub(crate) conn_attempt: bool,
    /// TCP segment without SYN that carries data: may prove its source real.
    pub(crate) tcp_data: bool,
}

/// What the parser made of a frame (`parse`'s return value).
/// Not IP (ARP, LLDP, …): passes untracked.
pub(crate) const PARSED_NOT_IP: i32 = 0;

pub(crate) const PARSED_IP: i32 = 1;

pub(crate) const PARSED_MALFORMED: i32 = -1;

/// The only way the program reads the packet: a bounds-checked pointer to a `T` at `off`.
#[inline(always)]
pub(crate) fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Result<*const T, ()> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + core::mem::size_of::<T>() > end {
        return Err(());
    }
    Ok((start + off) as *const T)
}

/// Reads `N` bytes at `off` (unaligned, bounds-checked).
#[inline(always)]
pub(crate) fn bytes<const N: usize>(ctx: &XdpContext, off: usize) -> Result<[u8; N], ()> {
    let p = ptr_at::<[u8; N]>(ctx, off)?;
    // SAFETY: `ptr_at` checked that N bytes are inside the packet; [u8; N] has alignment 1.
    Ok(unsafe { core::ptr::read_unaligned(p) })
}

/// Fills `out` from the frame; returns a `PARSED_*` code. Not inlined: the parser's
/// temporaries get their own stack frame, released before the rest of the program runs.
#[inline(never)]
pub(crate) fn parse(raw: *mut aya_ebpf::bindings::xdp_md, out: *mut Packet) -> i32 {
    // Opaque to the optimiser: it must not split the context into data/data_end arguments
    // (the verifier forbids arithmetic on a data_end passed that way).
    let ctx = XdpContext::new(core::hint::black_box(raw));
    match parse_frame(&ctx) {
        Ok(Some(p)) => {
            // SAFETY: `out` points to the caller's slot for one Packet.
            unsafe { out.write(p) };
            PARSED_IP
        }
        Ok(None) => PARSED_NOT_IP,
        Err(()) => PARSED_MALFORMED,
    }
}

#[inline(always)]
pub(crate) fn parse_frame(ctx: &XdpContext) -> Result<Option<Packet>, ()> {
    let eth: [u8; ETH_HLEN] = bytes(ctx, 0)?;
    let mut ethertype = u16::from_be_bytes([eth[12], eth[13]]);
    let mut off = ETH_HLEN;
    // Up to two VLAN tags (802.1Q, 802.1ad QinQ).
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        let tag: [u8; 4] = bytes(ctx, off)?;
        ethertype = u16::from_be_bytes([tag[2], tag[3]]);
        off += 4;
        if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
            let tag: [u8; 4] = bytes(ctx, off)?;
            ethertype = u16::from_be_bytes([tag[2], tag[3]]);
            off += 4;
        }
    }
    match ethertype {
        ETH_P_IPV4 => parse_v4(ctx, off).map(Some),
        ETH_P_IPV6 => parse_v6(ctx, off).map(Some),
        _ => Ok(None),
    }
}

#[inline(always)]
pub(crate) fn parse_v4(ctx: &XdpContext, off: usize) -> Result<Packet, ()> {
    let ip: [u8; 20] = bytes(ctx, off)?;
    if ip[0] >> 4 != 4 {
        return Err(());
    }
    // IHL is 4 bits: at most 60 bytes, at least 20.
    let hlen = ((ip[0] & 0x0f) as usize) * 4;
    if hlen < 20 {
        return Err(());
    }
    let total_len = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    if total_len < hlen {
        return Err(());
    }
    let frag = u16::from_be_bytes([ip[6], ip[7]]);
    let src = [
        ip[12], ip[13], ip[14], ip[15], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];

    // Options must be present in full.
    let _: [u8; 1] = bytes(ctx, off + hlen - 1)?;
    let mut pkt = Packet {
        family: FAMILY_V4,
        src,
        l3_off: off as u16,
        sport: 0,
        l4: L4_NONE,
        dport: 0,
        conn_attempt: false,
        tcp_data: false,
    };
    let proto = ip[9];
    let frag_off = frag & 0x1fff;
    let more_fragments = frag & 0x2000 != 0;
    // Non-first fragments carry no transport header: judged on the source only. RFC 1858:
    // a TCP fragment at offset 1 (8 bytes) can only rewrite the first fragment's flags.
    if frag_off != 0 {
        if frag_off == 1 && proto == IPPROTO_TCP {
            pkt.l4 = L4_BAD_FRAGMENT;
        }
        return Ok(pkt);
    }
    // A first fragment too short for its transport header (by the IP length, what the
    // kernel reassembles; the frame itself may be padded).
    if more_fragments && total_len - hlen < transport_min(proto) {
        pkt.l4 = L4_BAD_FRAGMENT;
        return Ok(pkt);
    }
    parse_l4(ctx, off + hlen, total_len - hlen, proto, &mut pkt)?;
    Ok(pkt)
}

#[inline(always)]
pub(crate) fn parse_v6(ctx: &XdpContext, off: usize) -> Result<Packet, ()> {
    let ip: [u8; 40] = bytes(ctx, off)?;
    if ip[0] >> 4 != 6 {
        return Err(());
    }
    let mut src = [0u8; 16];
    src.copy_from_slice(&ip[8..24]);
    let payload_len = u16::from_be_bytes([ip[4], ip[5]]) as usize;
    let mut pkt = Packet {
        family: FAMILY_V6,
        src,
        l3_off: off as u16,
        sport: 0,
        l4: L4_NONE,
        dport: 0,
        conn_attempt: false,
        tcp_data: false,
    };
    let mut next = ip[6];
    let mut l4off = off + 40;
    let mut first_fragment = false;
    for _ in 0..MAX_EXT_HEADERS {
        match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                let h: [u8; 2] = bytes(ctx, l4off)?;
                next = h[0];
                l4off += (h[1] as usize + 1) * 8;
            }
            IPPROTO_AH => {
                let h: [u8; 2] = bytes(ctx, l4off)?;
                next = h[0];
                l4off += (h[1] as usize + 2) * 4;
            }
            IPPROTO_FRAGMENT => {
                let h: [u8; 4] = bytes(ctx, l4off)?;
                next = h[0];
                let frag_off = u16::from_be_bytes([h[2], h[3]]) >> 3;
                if frag_off != 0 {
                    // Non-first fragment: source only (offset 1 of TCP: RFC 1858, as IPv4).
                    if frag_off == 1 && next == IPPROTO_TCP {
                        pkt.l4 = L4_BAD_FRAGMENT;
                    }
                    return Ok(pkt);
                }
                first_fragment = h[3] & 1 != 0;
                l4off += 8;
            }
            _ => break,
        }
    }
    // A chain longer than MAX_EXT_HEADERS ends on an extension header: parse_l4 then finds
    // no transport it knows and the packet is judged on its source only.
    let l4_len = (off + 40 + payload_len).saturating_sub(l4off);
    // RFC 7112: a first fragment must hold the whole header chain up to and including the
    // transport header; one that does not (the chain ends on an extension header or the
    // transport header is cut) could hide its ports and flags.
    if first_fragment
        && (matches!(
            next,
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_AH | IPPROTO_FRAGMENT
        ) || l4_len < transport_min(next))
    {
        pkt.l4 = L4_BAD_FRAGMENT;
        return Ok(pkt);
    }
    parse_l4(ctx, l4off, l4_len, next, &mut pkt)?;
    Ok(pkt)
}

#[inline(always)]
/// `l4_len`: bytes from the transport header to the end of the IP payload.
pub(crate) fn parse_l4(
    ctx: &XdpContext,
    off: usize,
    l4_len: usize,
    proto: u8,
    pkt: &mut Packet,
) -> Result<(), ()> {
    match proto {
        IPPROTO_TCP => {
            let tcp: [u8; 20] = bytes(ctx, off)?;
            if tcp[12] >> 4 < 5 {
                return Err(());
            }
            pkt.l4 = L4_TCP;
            pkt.sport = u16::from_be_bytes([tcp[0], tcp[1]]);
            pkt.dport = u16::from_be_bytes([tcp[2], tcp[3]]);
            pkt.conn_attempt = tcp[13] & (TCP_SYN | TCP_ACK) == TCP_SYN;
            let doff = (tcp[12] >> 4) as usize * 4;
            pkt.tcp_data = tcp[13] & TCP_SYN == 0 && l4_len > doff;
        }
        IPPROTO_UDP => {
            let udp: [u8; 8] = bytes(ctx, off)?;
            pkt.l4 = L4_UDP;
            pkt.dport = u16::from_be_bytes([udp[2], udp[3]]);
        }
        IPPROTO_ICMP => {
            let _: [u8; 4] = bytes(ctx, off)?;
            pkt.l4 = L4_ICMP;
        }
        IPPROTO_ICMPV6 => {
            let icmp: [u8; 4] = bytes(ctx, off)?;
            // Neighbour discovery (router/neighbour solicitation and advertisement,
            // redirect: types 133-137) is IPv6's ARP: limiting it would cut the source
            // off the link. It passes untracked, like ARP.
            if !(133..=137).contains(&icmp[0]) {
                pkt.l4 = L4_ICMP;
            }
        }
        _ => {}
    }
    Ok(())
}
