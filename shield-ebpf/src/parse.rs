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
/// An IPv6 extension chain longer than `MAX_EXT_HEADERS`: the transport header (and so the
/// rule) stays unknown, yet the kernel would deliver it: dropped as `hidden_header`.
pub(crate) const L4_HIDDEN: u8 = 5;

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

/// 8-byte aligned, the address first: it is written and copied in words, not bytes.
#[repr(C, align(8))]
pub(crate) struct Packet {
    /// Network-order source address, IPv4 in the first 4 bytes.
    pub(crate) src: [u8; 16],
    pub(crate) family: u8,
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
/// A third VLAN tag: headers past what the parser follows (dropped as `hidden_header`: the
/// kernel strips any number of priority tags and would deliver what they hide).
pub(crate) const PARSED_HIDDEN: i32 = 2;

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

/// Wire headers, by their RFC field names. `#[repr(C)]` of byte fields only: alignment 1,
/// no padding, read unaligned straight from the frame by `header`. Multi-byte fields are
/// network order; `be16` reads them.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct EthHdr {
    pub(crate) dst: [u8; 6],
    pub(crate) src: [u8; 6],
    pub(crate) ethertype: [u8; 2],
}

/// An 802.1Q / 802.1ad tag: the TCI, then the ethertype it wraps.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct VlanTag {
    pub(crate) tci: [u8; 2],
    pub(crate) ethertype: [u8; 2],
}

/// IPv4 (RFC 791), without options.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct Ipv4Hdr {
    /// Version (high nibble) and IHL in 32-bit words (low nibble).
    pub(crate) version_ihl: u8,
    pub(crate) tos: u8,
    pub(crate) total_len: [u8; 2],
    pub(crate) id: [u8; 2],
    /// Flags (3 bits: reserved, DF, MF) and the fragment offset in 8-byte units.
    pub(crate) flags_frag_off: [u8; 2],
    pub(crate) ttl: u8,
    pub(crate) protocol: u8,
    pub(crate) checksum: [u8; 2],
    pub(crate) saddr: [u8; 4],
    pub(crate) daddr: [u8; 4],
}

/// IPv6 (RFC 8200), fixed header.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct Ipv6Hdr {
    /// Version (high nibble of the first byte), traffic class, flow label.
    pub(crate) version_tc_flow: [u8; 4],
    pub(crate) payload_len: [u8; 2],
    pub(crate) next_header: u8,
    pub(crate) hop_limit: u8,
    pub(crate) saddr: [u8; 16],
    pub(crate) daddr: [u8; 16],
}

/// The first two bytes every IPv6 extension header starts with (hop-by-hop, routing,
/// destination options: length in 8-byte units beyond the first 8; AH: in 4-byte units
/// beyond the first 8).
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct ExtHdr {
    pub(crate) next_header: u8,
    pub(crate) hdr_ext_len: u8,
}

/// The IPv6 fragment header's first four bytes (RFC 8200 4.5).
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct FragHdr {
    pub(crate) next_header: u8,
    pub(crate) reserved: u8,
    /// Fragment offset (13 bits, 8-byte units), 2 reserved bits, M (more fragments).
    pub(crate) offset_flags: [u8; 2],
}

/// TCP (RFC 9293), without options.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct TcpHdr {
    pub(crate) source: [u8; 2],
    pub(crate) dest: [u8; 2],
    pub(crate) seq: [u8; 4],
    pub(crate) ack_seq: [u8; 4],
    /// Data offset in 32-bit words (high nibble).
    pub(crate) data_offset: u8,
    pub(crate) flags: u8,
    pub(crate) window: [u8; 2],
    pub(crate) checksum: [u8; 2],
    pub(crate) urgent: [u8; 2],
}

/// UDP (RFC 768).
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct UdpHdr {
    pub(crate) source: [u8; 2],
    pub(crate) dest: [u8; 2],
    pub(crate) len: [u8; 2],
    pub(crate) checksum: [u8; 2],
}

/// ICMP / ICMPv6: type, code, checksum.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct IcmpHdr {
    pub(crate) kind: u8,
    pub(crate) code: u8,
    pub(crate) checksum: [u8; 2],
}

const _: () = assert!(core::mem::size_of::<EthHdr>() == ETH_HLEN);
const _: () = assert!(core::mem::size_of::<VlanTag>() == 4);
const _: () = assert!(core::mem::size_of::<Ipv4Hdr>() == 20);
const _: () = assert!(core::mem::size_of::<Ipv6Hdr>() == 40);
const _: () = assert!(core::mem::size_of::<FragHdr>() == 4);
const _: () = assert!(core::mem::size_of::<TcpHdr>() == 20);
const _: () = assert!(core::mem::size_of::<UdpHdr>() == 8);
const _: () = assert!(core::mem::size_of::<IcmpHdr>() == 4);

/// A network-order 16-bit field.
#[inline(always)]
pub(crate) fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

/// Reads the header `T` at `off` (unaligned, bounds-checked). `T` is one of the wire
/// headers above: byte fields only, so every bit pattern is a valid value.
#[inline(always)]
pub(crate) fn header<T: Copy>(ctx: &XdpContext, off: usize) -> Result<T, ()> {
    let p = ptr_at::<T>(ctx, off)?;
    // SAFETY: `ptr_at` checked that size_of::<T>() bytes are inside the packet; the headers
    // are byte arrays and bytes (alignment 1, any bit pattern valid).
    Ok(unsafe { core::ptr::read_unaligned(p) })
}

/// One 32-bit load from the frame at `p`, bytes as they lie (network order kept), at any
/// alignment: the verifier allows unaligned packet reads where the CPU does (x86), while
/// LLVM splits an unaligned read into byte loads for bpf. The caller checked the bounds.
#[inline(always)]
pub(crate) fn load32(p: *const u8) -> u32 {
    let v: u32;
    // SAFETY: a load of 4 bytes the caller checked are inside the packet.
    unsafe {
        core::arch::asm!(
            "{0} = *(u32 *)({1} + 0)",
            lateout(reg) v,
            in(reg) p,
            options(readonly, nostack, preserves_flags)
        )
    };
    v
}

/// The 4 bytes `load32` read, in memory order.
#[inline(always)]
pub(crate) fn bytes4(v: u32) -> [u8; 4] {
    v.to_ne_bytes()
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
/// The program calls it only for frames `parse_plain_v4_tcp` and `parse_plain_v6_tcp` do
/// not take.
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
        Err(code) => code,
    }
}

/// The frame most floods and most traffic are: untagged Ethernet, IPv4 without options,
/// not a fragment, TCP. Read with one bounds check and six word loads; `None` for any
/// other frame (or an invalid one: a TCP data offset under 5, an IP total length too short
/// for the IP and TCP headers), which `parse` then judges. What it returns is what `parse_frame`
/// returns for the same frame.
///
/// Inlined into the program, unlike `parse`: a BPF-to-BPF call and its return cost about
/// 10 ns here (every return goes through the kernel's return thunk, as on CPUs with the
/// SRSO "Safe RET" mitigation), more than this parse itself. BPF_PROG_TEST_RUN of a SYN
/// over the `unverified` budget: 56-57 ns through `parse`, 47 ns with this path.
///
/// `frame_len`: the frame's length. A frame shorter than its IP length is a truncated
/// packet the kernel drops (`parse` counts it as malformed), whatever headers it holds.
#[inline(always)]
pub(crate) fn parse_plain_v4_tcp(ctx: &XdpContext, frame_len: usize) -> Option<Packet> {
    // Ethernet (14) + IPv4 without options (20) + TCP without options (20).
    let f = ptr_at::<[u8; ETH_HLEN + 40]>(ctx, 0).ok()? as *const u8;
    // SAFETY: `ptr_at` checked the 54 bytes: the ethertype and the IP header's first
    // bytes at 12..16, total length at 16..18, flags and fragment offset at 20..22,
    // protocol at 23, source at 26..30, ports at 34..38, data offset and flags at 46..48.
    let (w3, w4, w5, saddr, ports, t3) = unsafe {
        (
            bytes4(load32(f.add(12))),
            bytes4(load32(f.add(16))),
            bytes4(load32(f.add(20))),
            load32(f.add(26)),
            bytes4(load32(f.add(34))),
            bytes4(load32(f.add(46))),
        )
    };
    // IPv4, version 4 with a 20-byte header, TCP, neither a fragment nor a first one.
    if be16([w3[0], w3[1]]) != ETH_P_IPV4
        || w3[2] != 0x45
        || w5[3] != IPPROTO_TCP
        || be16([w5[0], w5[1]]) & 0x3fff != 0
    {
        return None;
    }
    let total_len = be16([w4[0], w4[1]]) as usize;
    let (data_offset, flags) = (t3[0], t3[1]);
    let doff = (data_offset >> 4) as usize * 4;
    // The TCP header (its data offset) inside the IP packet, the IP packet inside the
    // frame: else the kernel discards it.
    if doff < 20 || total_len < 20 + doff || ETH_HLEN + total_len > frame_len {
        return None;
    }
    Some(Packet {
        family: FAMILY_V4,
        // In words: a byte-wise copy into a zeroed array becomes a call to `memset`.
        // SAFETY: [u32; 4] and [u8; 16] have the same size; any bytes are valid.
        src: unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>([saddr, 0, 0, 0]) },
        l3_off: ETH_HLEN as u16,
        sport: be16([ports[0], ports[1]]),
        l4: L4_TCP,
        dport: be16([ports[2], ports[3]]),
        conn_attempt: flags & (TCP_SYN | TCP_ACK) == TCP_SYN,
        tcp_data: flags & TCP_SYN == 0 && total_len - 20 > doff,
    })
}

/// `parse_plain_v4_tcp` for IPv6: untagged Ethernet, IPv6 whose next header is TCP (no
/// extension header, so not a fragment). One bounds check over 74 bytes and eight word
/// loads; `None` for any other frame (or a TCP data offset under 5, or past the payload
/// length, or a frame shorter than the payload length), which `parse` then judges. What it returns is what `parse_frame` returns for the same frame.
#[inline(always)]
pub(crate) fn parse_plain_v6_tcp(ctx: &XdpContext, frame_len: usize) -> Option<Packet> {
    // Ethernet (14) + IPv6 (40) + TCP without options (20).
    let f = ptr_at::<[u8; ETH_HLEN + 60]>(ctx, 0).ok()? as *const u8;
    // SAFETY: `ptr_at` checked the 74 bytes: the ethertype and the version at 12..16,
    // payload length and next header at 18..21, source at 22..38, ports at 54..58, data
    // offset and flags at 66..68.
    let (w3, w4, s, ports, t3) = unsafe {
        (
            bytes4(load32(f.add(12))),
            bytes4(load32(f.add(18))),
            [
                load32(f.add(22)),
                load32(f.add(26)),
                load32(f.add(30)),
                load32(f.add(34)),
            ],
            bytes4(load32(f.add(54))),
            bytes4(load32(f.add(66))),
        )
    };
    if be16([w3[0], w3[1]]) != ETH_P_IPV6 || w3[2] >> 4 != 6 || w4[2] != IPPROTO_TCP {
        return None;
    }
    let payload_len = be16([w4[0], w4[1]]) as usize;
    let (data_offset, flags) = (t3[0], t3[1]);
    let doff = (data_offset >> 4) as usize * 4;
    if doff < 20 || payload_len < doff || ETH_HLEN + 40 + payload_len > frame_len {
        return None;
    }
    Some(Packet {
        family: FAMILY_V6,
        // SAFETY: [u32; 4] and [u8; 16] have the same size; any bytes are valid.
        src: unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(s) },
        l3_off: ETH_HLEN as u16,
        sport: be16([ports[0], ports[1]]),
        l4: L4_TCP,
        dport: be16([ports[2], ports[3]]),
        conn_attempt: flags & (TCP_SYN | TCP_ACK) == TCP_SYN,
        tcp_data: flags & TCP_SYN == 0 && payload_len > doff,
    })
}

#[inline(always)]
pub(crate) fn parse_frame(ctx: &XdpContext) -> Result<Option<Packet>, i32> {
    let bad = |()| PARSED_MALFORMED;
    let eth: EthHdr = header(ctx, 0).map_err(bad)?;
    let mut ethertype = be16(eth.ethertype);
    let mut off = ETH_HLEN;
    // Up to two VLAN tags (802.1Q, 802.1ad QinQ).
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        let tag: VlanTag = header(ctx, off).map_err(bad)?;
        ethertype = be16(tag.ethertype);
        off += 4;
        if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
            let tag: VlanTag = header(ctx, off).map_err(bad)?;
            ethertype = be16(tag.ethertype);
            off += 4;
        }
    }
    match ethertype {
        ETH_P_IPV4 => parse_v4(ctx, off).map(Some).map_err(bad),
        ETH_P_IPV6 => parse_v6(ctx, off).map(Some).map_err(bad),
        // A third tag: no real network stacks three, and the kernel would unwrap it.
        ETH_P_8021Q | ETH_P_8021AD => Err(PARSED_HIDDEN),
        _ => Ok(None),
    }
}

#[inline(always)]
pub(crate) fn parse_v4(ctx: &XdpContext, off: usize) -> Result<Packet, ()> {
    // The header in four word loads (fields as `Ipv4Hdr` names them).
    let ip = ptr_at::<Ipv4Hdr>(ctx, off)? as *const u8;
    // SAFETY: `ptr_at` checked the 20 bytes of the header.
    let (w0, w1, w2, saddr) = unsafe {
        (
            bytes4(load32(ip)),
            bytes4(load32(ip.add(4))),
            bytes4(load32(ip.add(8))),
            load32(ip.add(12)),
        )
    };
    let version_ihl = w0[0];
    if version_ihl >> 4 != 4 {
        return Err(());
    }
    // IHL is 4 bits: at most 60 bytes, at least 20.
    let hlen = ((version_ihl & 0x0f) as usize) * 4;
    if hlen < 20 {
        return Err(());
    }
    let total_len = be16([w0[2], w0[3]]) as usize;
    // A frame shorter than its IP length: truncated, the kernel drops it.
    if total_len < hlen || off + total_len > ctx.data_end() - ctx.data() {
        return Err(());
    }
    let frag = be16([w1[2], w1[3]]);
    let mut src = [0u8; 16];
    src[..4].copy_from_slice(&bytes4(saddr));

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
    let proto = w2[1];
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
    parse_l4(
        ctx,
        off + hlen,
        total_len - hlen,
        !more_fragments,
        proto,
        &mut pkt,
    )?;
    Ok(pkt)
}

#[inline(always)]
pub(crate) fn parse_v6(ctx: &XdpContext, off: usize) -> Result<Packet, ()> {
    let ip = ptr_at::<Ipv6Hdr>(ctx, off)? as *const u8;
    // SAFETY: `ptr_at` checked the 40 bytes of the header; the source is at 8..24.
    let (w0, w1, s) = unsafe {
        (
            bytes4(load32(ip)),
            bytes4(load32(ip.add(4))),
            [
                load32(ip.add(8)),
                load32(ip.add(12)),
                load32(ip.add(16)),
                load32(ip.add(20)),
            ],
        )
    };
    if w0[0] >> 4 != 6 {
        return Err(());
    }
    let mut src = [0u8; 16];
    for (i, w) in s.iter().enumerate() {
        src[4 * i..4 * i + 4].copy_from_slice(&bytes4(*w));
    }
    let payload_len = be16([w1[0], w1[1]]) as usize;
    // A frame shorter than its payload length: truncated, the kernel drops it.
    if off + 40 + payload_len > ctx.data_end() - ctx.data() {
        return Err(());
    }
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
    let mut next = w1[2];
    let mut l4off = off + 40;
    let mut first_fragment = false;
    for _ in 0..MAX_EXT_HEADERS {
        match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                let h: ExtHdr = header(ctx, l4off)?;
                next = h.next_header;
                l4off += (h.hdr_ext_len as usize + 1) * 8;
            }
            IPPROTO_AH => {
                let h: ExtHdr = header(ctx, l4off)?;
                next = h.next_header;
                l4off += (h.hdr_ext_len as usize + 2) * 4;
            }
            IPPROTO_FRAGMENT => {
                let h: FragHdr = header(ctx, l4off)?;
                next = h.next_header;
                let frag_off = be16(h.offset_flags) >> 3;
                if frag_off != 0 {
                    // Non-first fragment: source only (offset 1 of TCP: RFC 1858, as IPv4).
                    if frag_off == 1 && next == IPPROTO_TCP {
                        pkt.l4 = L4_BAD_FRAGMENT;
                    }
                    return Ok(pkt);
                }
                first_fragment = h.offset_flags[1] & 1 != 0;
                l4off += 8;
            }
            _ => break,
        }
    }
    // A chain longer than MAX_EXT_HEADERS: what follows (ports, flags) stays unknown, yet
    // the kernel would follow the chain and deliver it.
    if matches!(
        next,
        IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_AH | IPPROTO_FRAGMENT
    ) {
        pkt.l4 = L4_HIDDEN;
        return Ok(pkt);
    }
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
    parse_l4(ctx, l4off, l4_len, !first_fragment, next, &mut pkt)?;
    Ok(pkt)
}

/// `l4_len`: bytes from the transport header to the end of the IP payload. `whole`: not
/// a first fragment (later ones never get here). The transport header of a whole packet
/// must lie inside its IP payload (TCP: its data offset's length; UDP 8 bytes; ICMP 4): the
/// kernel discards a packet whose header the IP length leaves out, so a "header" in the
/// frame's Ethernet padding is malformed, never judged (nor answered). A first fragment's
/// header may end in the next fragment (its options): it needs only the bytes
/// `transport_min` says, checked by the callers.
#[inline(always)]
pub(crate) fn parse_l4(
    ctx: &XdpContext,
    off: usize,
    l4_len: usize,
    whole: bool,
    proto: u8,
    pkt: &mut Packet,
) -> Result<(), ()> {
    if whole && l4_len < transport_min(proto) {
        return Err(());
    }
    match proto {
        IPPROTO_TCP => {
            let tcp = ptr_at::<TcpHdr>(ctx, off)? as *const u8;
            // SAFETY: `ptr_at` checked the 20 bytes of the header: ports at 0..4, data
            // offset and flags at 12..14.
            let (ports, w3) = unsafe { (bytes4(load32(tcp)), bytes4(load32(tcp.add(12)))) };
            let (data_offset, flags) = (w3[0], w3[1]);
            let doff = (data_offset >> 4) as usize * 4;
            if doff < 20 || (whole && l4_len < doff) {
                return Err(());
            }
            pkt.l4 = L4_TCP;
            pkt.sport = be16([ports[0], ports[1]]);
            pkt.dport = be16([ports[2], ports[3]]);
            pkt.conn_attempt = flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
            pkt.tcp_data = flags & TCP_SYN == 0 && l4_len > doff;
        }
        IPPROTO_UDP => {
            let udp: UdpHdr = header(ctx, off)?;
            pkt.l4 = L4_UDP;
            pkt.dport = be16(udp.dest);
        }
        IPPROTO_ICMP => {
            let _: IcmpHdr = header(ctx, off)?;
            pkt.l4 = L4_ICMP;
        }
        IPPROTO_ICMPV6 => {
            let icmp: IcmpHdr = header(ctx, off)?;
            // Neighbour discovery (router/neighbour solicitation and advertisement,
            // redirect: types 133-137) is IPv6's ARP: limiting it would cut the source
            // off the link. It passes untracked, like ARP.
            if !(133..=137).contains(&icmp.kind) {
                pkt.l4 = L4_ICMP;
            }
        }
        _ => {}
    }
    Ok(())
}
