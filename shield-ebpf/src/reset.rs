//! `over_limit = "reset"`: a refused TCP connection attempt answered with a RST from XDP
//! (`XDP_TX`), so that the client fails at once instead of retransmitting its SYN for a
//! minute. The SYN is rewritten in place: MACs, addresses and ports swapped, and per
//! RFC 9293 3.10.7.1 (a segment without ACK) sequence 0 and ACK = its sequence plus its
//! length (the SYN counts one). Only SYNs without IPv4 options or IPv6 extension headers are
//! answered (real clients send none; the others are dropped as before), so the reply is
//! always 40 or 60 bytes after the link header; and only SYNs a listener takes for a
//! connection request (neither RST nor FIN set), as the cookie path.
//!
//! main.rs hands a refused SYN of a rule with `over_limit = "reset"` (never a ban, a
//! deny-listed source or an `unverified` budget refusal: those are judged before) to its
//! own program, `shield_reset`, by a tail call: the verifier checks that program once,
//! instead of once for every state the judgement can end in (inlined or as a BPF-to-BPF
//! call the rewrite took the verifier past its 1,000,000 instructions). It answers only a
//! verified source (one that completed a handshake: never a spoofable address), once a
//! second per source (`SourceState::reset_at`) and within the rule's `resets` cap
//! (`SHIELD_RESETS`); otherwise it drops the SYN as the judgement said. Without the tail
//! call (the program array is emptied when the daemon that loaded it exits, while a pinned
//! link keeps the data path) the SYN is dropped as before.

use aya_ebpf::{helpers::generated::bpf_xdp_adjust_tail, maps::ProgramArray};
use shield_common::reset::{reset_due, reset_stamp};

use crate::*;

#[map]
pub(crate) static SHIELD_RESETS: Array<u64> = Array::with_max_entries(RULE_SLOTS, 0);

/// Slot 0: `shield_reset` (set by the loader; not pinned).
#[map]
pub(crate) static SHIELD_TAILS: ProgramArray = ProgramArray::with_max_entries(1, 0);

const TCP_RST_ACK: u8 = 0x14;
const TCP_RST: u8 = 0x04;
const TCP_FIN: u8 = 0x01;
const TTL: u8 = 64;
/// IPv4 "don't fragment".
const IP_DF: u16 = 0x4000;

/// What the judgement tells `shield_reset` (per CPU: the tail call runs on the same CPU,
/// for the same packet).
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct ResetArgs {
    pub(crate) key: SourceKey,
    /// The refusal's reason: counted if no RST is sent.
    pub(crate) reason: u32,
    pub(crate) now: u64,
    pub(crate) resets: Gcra,
}

#[map]
static SHIELD_RSTARGS: PerCpuArray<ResetArgs> = PerCpuArray::with_max_entries(1, 0);

/// `try_shield`'s answer for a refused SYN of a rule that resets (not an XDP action):
/// `shield` hands the packet over to `shield_reset`.
pub(crate) const CANDIDATE: u32 = u32::MAX;

/// Called by `decide` on a refused connection attempt of an enforcing rule that resets:
/// what `shield_reset` needs (written where the judgement has it, so that the verifier
/// does not follow this write through every end state of the judgement).
#[inline(always)]
pub(crate) fn note(rule: &RuleConfig, key: &SourceKey, now: u64, reason: Reason) {
    if let Some(args) = SHIELD_RSTARGS.get_ptr_mut(0) {
        // SAFETY: per-CPU slot from a successful lookup.
        unsafe {
            *args = ResetArgs {
                key: *key,
                reason: reason as u32,
                now,
                resets: rule.resets,
            }
        };
    }
}

/// Hands the refused SYN over to `shield_reset` (a tail call: no return). Back here only
/// if it could not be made: the SYN is dropped as judged.
#[inline(always)]
pub(crate) fn hand_over(ctx: &XdpContext, len: u64) -> u32 {
    // SAFETY: the context is this program's; a failed call returns here.
    unsafe { SHIELD_TAILS.tail_call(ctx, 0) };
    drop_as_judged(len)
}

#[inline(always)]
fn drop_as_judged(len: u64) -> u32 {
    if let Some(args) = SHIELD_RSTARGS.get(0) {
        let reason = if args.reason == Reason::PktLimit as u32 {
            Reason::PktLimit
        } else {
            Reason::ConnLimit
        };
        count(args.key.rule as u32, reason, len);
    }
    xdp_action::XDP_DROP
}

/// The tail-called program: a RST (`XDP_TX`, counted `reset`) or the drop the judgement
/// decided (counted under its reason).
#[xdp]
pub fn shield_reset(ctx: XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    let Some(args) = SHIELD_RSTARGS.get(0) else {
        return xdp_action::XDP_DROP;
    };
    let args = *args;
    if answer(&ctx, &args) {
        count(args.key.rule as u32, Reason::Reset, len);
        xdp_action::XDP_TX
    } else {
        drop_as_judged(len)
    }
}

/// The IP header's offset: after Ethernet and up to two VLAN tags (as `parse` found).
#[inline(always)]
fn l3_offset(ctx: &XdpContext) -> Option<usize> {
    let mut off = ETH_HLEN;
    let mut ethertype = be16(header::<EthHdr>(ctx, 0).ok()?.ethertype);
    for _ in 0..2 {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        ethertype = be16(header::<VlanTag>(ctx, off).ok()?.ethertype);
        off += 4;
    }
    Some(off)
}

/// How long a proof lasts in the policy in force.
#[inline(always)]
fn verified_ttl() -> u64 {
    let half = SHIELD_CONTROL.get(0).map_or(0, |c| c.active & 1);
    SHIELD_CONFIG.get(half).map_or(0, |c| c.verified_ttl_ns)
}

/// Answers the refused SYN in `ctx` with a RST when the source and the rule may have one.
/// `true`: the frame now holds the RST (return `XDP_TX`); `false`: it is untouched.
#[inline(always)]
fn answer(ctx: &XdpContext, args: &ResetArgs) -> bool {
    let (key, now) = (&args.key, args.now);
    let Some(l3) = l3_offset(ctx) else {
        return false;
    };
    // At most 22 (Ethernet + two VLAN tags); the mask gives the verifier a small bound.
    let l3 = l3 & 0x3f;
    // The SYN's shape and its segment length (RFC 9293: SYN + data), and whether its
    // source proved real.
    let src: [u8; 16];
    let (l4, payload) = if key.family == FAMILY_V4 {
        let Ok(ip) = header::<Ipv4Hdr>(ctx, l3) else {
            return false;
        };
        // No options; not a fragment (DF and the reserved flag are fine: the kernel's
        // listener does not look at them, and the cookie path answers them too).
        if ip.version_ihl != 0x45
            || ip.protocol != IPPROTO_TCP
            || be16(ip.flags_frag_off) & 0x3fff != 0
        {
            return false;
        }
        src = shield_common::addr::v4_key(ip.saddr);
        (l3 + 20, be16(ip.total_len).saturating_sub(20))
    } else {
        let Ok(ip) = header::<Ipv6Hdr>(ctx, l3) else {
            return false;
        };
        if ip.next_header != IPPROTO_TCP {
            return false;
        }
        src = ip.saddr;
        (l3 + 40, be16(ip.payload_len))
    };
    if !is_verified(&verified_key(key.family, src), now, verified_ttl()) {
        return false;
    }
    let Ok(syn) = header::<TcpHdr>(ctx, l4) else {
        return false;
    };
    // A SYN with RST or FIN set is no connection request: the kernel's listener discards
    // it without a word (tcp_rcv_state_process, TCP_LISTEN), and a RST never answers a RST
    // (RFC 9293). The cookie path answers the same SYNs (`HANDSHAKE_FLAGS`).
    if syn.flags & (TCP_RST | TCP_FIN) != 0 {
        return false;
    }
    let data = payload.saturating_sub(u16::from(syn.data_offset >> 4) * 4);
    let ack = u32::from_be_bytes(syn.seq)
        .wrapping_add(1)
        .wrapping_add(u32::from(data));

    // Once a second per source: the refusal left its state in the table.
    let Some(state) = SHIELD_SOURCES.get_ptr_mut(key) else {
        return false;
    };
    // BPF has no 32-bit compare-and-exchange on every CPU model (`--cpu generic`): claim the
    // source's second on the 8 bytes at offset 64 (`strikes`, `ban_level`, `reset_at` in
    // the high half, little endian). A plain write by `escalate_claimed` to the other two
    // meanwhile only makes the claim fail (no RST), never lost.
    // SAFETY: offset 64 of a map value from a successful lookup: 8-byte aligned, in bounds.
    let word = unsafe { core::ptr::addr_of_mut!((*state).strikes) } as *mut u64;
    // SAFETY: as above.
    let old = unsafe { core::ptr::read_volatile(word) };
    let last = (old >> 32) as u32;
    if !reset_due(last, now) {
        return false;
    }
    // The rule's cap: looked at first, drawn only once the source's second is claimed.
    let Some(tat) = SHIELD_RESETS.get_ptr_mut(key.rule as u32) else {
        return false;
    };
    // SAFETY: an array slot from a successful lookup.
    if args.resets.check(unsafe { *tat }, now).is_none() {
        return false;
    }
    let new = (old & 0xffff_ffff) | (u64::from(reset_stamp(now)) << 32);
    let (_, claimed) = cas(word, old, new);
    if !claimed || !draw(&args.resets, tat, now) {
        return false;
    }
    rewrite(ctx, key.family, l3, l4, syn, ack)
}

/// Turns the SYN into the RST: trims the frame to the headers and writes them.
#[inline(always)]
fn rewrite(ctx: &XdpContext, family: u8, l3: usize, l4: usize, syn: TcpHdr, ack: u32) -> bool {
    let len = ctx.data_end() - ctx.data();
    let want = l4 + 20;
    if len != want {
        // SAFETY: the helper checks the context and the delta itself.
        let r = unsafe { bpf_xdp_adjust_tail(ctx.ctx as *mut _, want as i32 - len as i32) };
        if r != 0 {
            return false;
        }
    }
    // Every pointer is taken again (and bounds-checked) after the tail moved.
    let Ok(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return false;
    };
    let eth = eth as *mut EthHdr;
    // SAFETY: `ptr_at` checked the 14 bytes; byte fields (alignment 1).
    unsafe {
        let e = core::ptr::read_unaligned(eth);
        (*eth).dst = e.src;
        (*eth).src = e.dst;
    }
    let mut tcp = TcpHdr {
        source: syn.dest,
        dest: syn.source,
        seq: [0; 4],
        ack_seq: ack.to_be_bytes(),
        data_offset: 5 << 4,
        flags: TCP_RST_ACK,
        window: [0; 2],
        checksum: [0; 2],
        urgent: [0; 2],
    };
    // SAFETY (both arms): byte-field headers (alignment 1), written after `ptr_at` checked
    // their bytes are in the (trimmed) frame.
    let pseudo = if family == FAMILY_V4 {
        let Ok(p) = ptr_at::<Ipv4Hdr>(ctx, l3) else {
            return false;
        };
        let old = unsafe { core::ptr::read_unaligned(p) };
        let mut ip = Ipv4Hdr {
            version_ihl: 0x45,
            tos: 0,
            total_len: 40u16.to_be_bytes(),
            id: [0; 2],
            flags_frag_off: IP_DF.to_be_bytes(),
            ttl: TTL,
            protocol: IPPROTO_TCP,
            checksum: [0; 2],
            saddr: old.daddr,
            daddr: old.saddr,
        };
        ip.checksum = fold(sum(&as_bytes::<Ipv4Hdr, 20>(&ip))).to_be_bytes();
        unsafe { core::ptr::write_unaligned(p as *mut Ipv4Hdr, ip) };
        sum(&ip.saddr) + sum(&ip.daddr)
    } else {
        let Ok(p) = ptr_at::<Ipv6Hdr>(ctx, l3) else {
            return false;
        };
        let old = unsafe { core::ptr::read_unaligned(p) };
        let ip = Ipv6Hdr {
            version_tc_flow: [0x60, 0, 0, 0],
            payload_len: 20u16.to_be_bytes(),
            next_header: IPPROTO_TCP,
            hop_limit: TTL,
            saddr: old.daddr,
            daddr: old.saddr,
        };
        unsafe { core::ptr::write_unaligned(p as *mut Ipv6Hdr, ip) };
        sum(&ip.saddr) + sum(&ip.daddr)
    };
    // Pseudo-header: the addresses, the protocol and the TCP length (20).
    let total = pseudo + u32::from(IPPROTO_TCP) + 20 + sum(&as_bytes::<TcpHdr, 20>(&tcp));
    tcp.checksum = fold(total).to_be_bytes();
    let Ok(t) = ptr_at::<TcpHdr>(ctx, l4) else {
        return false;
    };
    // SAFETY: as above.
    unsafe { core::ptr::write_unaligned(t as *mut TcpHdr, tcp) };
    true
}

/// A wire header's bytes (`N` = its size: byte fields only, no padding).
#[inline(always)]
fn as_bytes<T: Copy, const N: usize>(h: &T) -> [u8; N] {
    // SAFETY: T is a `#[repr(C)]` header of byte fields of exactly N bytes (the callers
    // pair each with its size, asserted in parse.rs).
    unsafe { core::ptr::read_unaligned(h as *const T as *const [u8; N]) }
}

/// The ones' complement sum (RFC 1071) of big-endian 16-bit words, not yet folded.
#[inline(always)]
fn sum<const N: usize>(b: &[u8; N]) -> u32 {
    let mut s = 0u32;
    let mut i = 0;
    while i + 1 < N {
        s += (u32::from(b[i]) << 8) | u32::from(b[i + 1]);
        i += 2;
    }
    s
}

/// Folds the carries and complements: the checksum to write.
#[inline(always)]
fn fold(mut s: u32) -> u16 {
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    !(s as u16)
}
