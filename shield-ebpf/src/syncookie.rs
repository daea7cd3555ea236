//! `challenge = "syncookie"`: over the `unverified` budget, a connection attempt from an
//! unverified source is answered here with a SYN-ACK carrying a SYN cookie (the kernel's
//! `bpf_tcp_raw_gen_syncookie_ipv4/ipv6`, XDP_TX), so it costs the host no state; the
//! client's ACK is checked here (`bpf_tcp_raw_check_syncookie_ipv4/ipv6`): a valid cookie
//! verifies its source, and netfilter's SYNPROXY (the nftables table the daemon sets up)
//! completes the connection to the local socket with the same kernel cookie secret.
//!
//! Options the cookie SYN-ACK carries, as SYNPROXY reads them back from the ACK: the MSS
//! (the policy's; the cookie itself encodes the client's, in 4 steps), and, only when the
//! rule has `RULE_SYNCOOKIE_TS` (the kernel's SYNPROXY can use timestamps) and the client
//! sent timestamps, SACK-permitted and window scaling, remembered in the low 6 bits of our
//! timestamp (bits 0-3: the client's window scale, 0xf none; bit 4: SACK). Without
//! timestamps a connection gets neither (the cookie has no room for them).
//!
//! Answered: IPv4 without options, not fragmented, and IPv6 whose next header is TCP, with
//! exactly SYN set of SYN/ACK/RST/FIN. Anything else over the budget is dropped as before.
//! The reply is written over the SYN and never made longer than its frame: options that do
//! not fit are left out (a SYN without options gets a SYN-ACK without options).

use aya_ebpf::{
    bindings::{
        BPF_F_CURRENT_NETNS, BPF_TCP_LISTEN, bpf_sock_tuple,
        bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1, bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2,
        iphdr, ipv6hdr, tcphdr, xdp_md,
    },
    helpers::generated::{
        bpf_sk_lookup_tcp, bpf_sk_release, bpf_tcp_raw_check_syncookie_ipv4,
        bpf_tcp_raw_check_syncookie_ipv6, bpf_tcp_raw_gen_syncookie_ipv4,
        bpf_tcp_raw_gen_syncookie_ipv6, bpf_xdp_adjust_tail, bpf_xdp_load_bytes,
    },
};
use shield_common::{RULE_SYNCOOKIE, RULE_SYNCOOKIE_TS, SYNCOOKIE_WSCALE};

use crate::*;

const TCP_FIN: u8 = 0x01;
const TCP_RST: u8 = 0x04;
/// The flags that tell a handshake segment apart.
const HANDSHAKE_FLAGS: u8 = TCP_SYN | TCP_ACK | TCP_RST | TCP_FIN;

/// The IP header's offset and the family, in one argument (global functions take five).
#[inline(always)]
fn where_(pkt: &Packet) -> u32 {
    u32::from(pkt.l3_off) | u32::from(pkt.family) << 8
}

/// Over the budget: a cookie SYN-ACK when the rule asks for one and the frame can be
/// answered, else the drop the budget gives.
#[inline(always)]
pub(crate) fn over_budget(
    ctx: &XdpContext,
    pkt: &Packet,
    rule_id: u32,
    rule: &RuleConfig,
    monitor: bool,
    len: u64,
    now: u64,
) -> u32 {
    if rule.flags & RULE_SYNCOOKIE != 0
        && !monitor
        && shield_answer_syn(ctx.ctx, where_(pkt), mss_arg(rule), now) == 1
    {
        count(rule_id, Reason::SynCookie, len);
        return xdp_action::XDP_TX;
    }
    verdict(rule_id, Reason::UnverifiedLimit, monitor, len)
}

/// `shield_answer_syn`'s `mss` argument: the rule's MSS (bits 0-15) and whether the reply
/// may offer timestamps (bit 16, `RULE_SYNCOOKIE_TS`).
#[inline(always)]
fn mss_arg(rule: &RuleConfig) -> u32 {
    u32::from(rule.mss) | u32::from(rule.flags & RULE_SYNCOOKIE_TS != 0) << 16
}

/// A TCP segment that is not a connection attempt, to a `syncookie` rule: `Some(drop)` for
/// a segment without SYN (with data, FIN or RST or not) from an unverified source that no
/// socket holds, without ACK or whose cookie is not valid (see `shield_check_ack`);
/// `None`: judged as any other segment.
#[inline(always)]
#[expect(
    clippy::too_many_arguments,
    reason = "inlined into the program: the values it already holds"
)]
pub(crate) fn bare_ack(
    ctx: &XdpContext,
    pkt: &Packet,
    rule_id: u32,
    rule: &RuleConfig,
    monitor: bool,
    now: u64,
    ttl: u64,
    len: u64,
) -> Option<u32> {
    if rule.flags & RULE_SYNCOOKIE != 0 && shield_check_ack(ctx.ctx, where_(pkt), now, ttl) == 0 {
        return Some(verdict(rule_id, Reason::BadCookie, monitor, len));
    }
    None
}

/// What a SYN's options hold (see `shield_answer_syn`): [timestamp value, bits, the
/// parser's offset].
#[map]
static SHIELD_SYN_OPTS: PerCpuArray<[u32; 3]> = PerCpuArray::with_max_entries(1, 0);
/// Bits of `SHIELD_SYN_OPTS[1]`; its low 4 bits hold the client's window scale.
const OPT_WS: u32 = 1 << 8;
const OPT_SACK: u32 = 1 << 9;
const OPT_TS: u32 = 1 << 10;

/// The IP and TCP headers of a handshake segment, copied out of the frame (the ACK check,
/// and the SYN options' general parser).
/// In a per-CPU map slot, not on the stack: the BPF stack of a call chain is 512 bytes.
#[repr(C)]
struct Headers {
    ip: [u8; 40],
    /// 64 so that an index masked with 63 is always inside.
    tcp: [u8; 64],
}

#[map]
static SHIELD_COOKIE_SCRATCH: PerCpuArray<Headers> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's scratch headers.
#[inline(always)]
fn scratch() -> Option<&'static mut Headers> {
    let p = SHIELD_COOKIE_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: per-CPU slot from a successful lookup; the program is not preempted on this
    // CPU while it runs, so nothing else uses it meanwhile.
    Some(unsafe { &mut *p })
}

/// Copies the IP header (20 or 40 bytes) and the first 20 TCP bytes out of the frame:
/// the TCP header's offset, or `None` if this frame is not one the cookie path handles
/// (IPv4 options or fragments, IPv6 extension headers).
#[inline(always)]
fn load_headers(raw: *mut xdp_md, l3_off: u32, family: u8, h: &mut Headers) -> Option<u32> {
    let off = l3_off & 0x3f;
    // SAFETY: the destinations are scratch buffers of at least the lengths given.
    unsafe {
        if family == FAMILY_V4 {
            if bpf_xdp_load_bytes(raw, off, h.ip.as_mut_ptr() as *mut _, 20) != 0 {
                return None;
            }
            // Version 4, no options; neither more fragments nor an offset.
            if h.ip[0] != 0x45 || (h.ip[6] & 0x3f) != 0 || h.ip[7] != 0 || h.ip[9] != 6 {
                return None;
            }
        } else {
            if bpf_xdp_load_bytes(raw, off, h.ip.as_mut_ptr() as *mut _, 40) != 0 {
                return None;
            }
            if h.ip[6] != 6 {
                return None;
            }
        }
        let th = off + if family == FAMILY_V4 { 20 } else { 40 };
        if bpf_xdp_load_bytes(raw, th, h.tcp.as_mut_ptr() as *mut _, 20) != 0 {
            return None;
        }
        Some(th)
    }
}

/// The ones' complement sum (RFC 1071) of a big-endian 32-bit word's two halves.
#[inline(always)]
fn halves(w: u32) -> u32 {
    (w >> 16) + (w & 0xffff)
}

/// Folds the carries and complements: the checksum to write.
#[inline(always)]
fn fold(mut acc: u32) -> u16 {
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    !(acc as u16)
}

/// Whether the `n` bytes at packet pointer `p` are inside the frame. A check on `p`
/// itself: the verifier then knows the range of `p` (and of pointers a constant away).
#[inline(always)]
fn within(p: *const u8, n: usize, data_end: usize) -> bool {
    p as usize + n <= data_end
}

/// Swaps the `N` bytes at `a` with the `N` at `b` (packet memory) one pair at a time, and
/// returns the ones' complement sum of both as big-endian 16-bit words (`N` even), not
/// folded. Volatile: the optimiser must not load every byte first and keep them all
/// (an IPv6 header's addresses spilled past the 512-byte stack of the call chain).
///
/// # Safety
/// Both ranges are inside the frame.
#[inline(always)]
unsafe fn swap_sum<const N: usize>(a: *mut u8, b: *mut u8) -> u32 {
    let mut s = 0u32;
    let mut i = 0;
    while i < N {
        // SAFETY: the caller's.
        let (x, y) = unsafe {
            let (pa, pb) = (a.add(i), b.add(i));
            let (x, y) = (pa.read_volatile(), pb.read_volatile());
            pa.write_volatile(y);
            pb.write_volatile(x);
            (x, y)
        };
        let w = u32::from(x) + u32::from(y);
        s += if i % 2 == 0 { w << 8 } else { w };
        i += 1;
    }
    s
}

/// Writes `v` big-endian at packet pointer `p` (4 bytes, inside the frame).
///
/// # Safety
/// The 4 bytes at `p` are inside the frame (`within` said so for `p`).
#[inline(always)]
unsafe fn put32(p: *mut u8, v: u32) {
    // SAFETY: the caller's; a byte array (alignment 1).
    unsafe { (p as *mut [u8; 4]).write_unaligned(v.to_be_bytes()) };
}

/// The kernel's SYN cookie for the SYN whose IP header is at `ip` and whose TCP header of
/// `len` (20 or 40) bytes is at `tcp`, read in place (the helper takes packet memory):
/// negative if there is none.
///
/// # Safety
/// `ip` holds a whole IPv4 (`v4`) or IPv6 header and `tcp` `len` bytes, inside the frame.
#[inline(always)]
unsafe fn cookie_in_place(v4: bool, ip: *mut u8, tcp: *mut u8, len: u32) -> i64 {
    // SAFETY: the caller's.
    unsafe {
        if v4 {
            bpf_tcp_raw_gen_syncookie_ipv4(ip as *mut iphdr, tcp as *mut tcphdr, len)
        } else {
            bpf_tcp_raw_gen_syncookie_ipv6(ip as *mut ipv6hdr, tcp as *mut tcphdr, len)
        }
    }
}

/// Records what the SYN's options hold in the per-CPU slot: the answer reads them back
/// from there (see `shield_answer_syn`).
#[inline(always)]
fn note_options(found: *mut [u32; 3], tsval: u32, bits: u32) {
    // SAFETY: per-CPU slot from a successful lookup; this program alone writes it.
    // Volatile: read back, they are numbers the verifier does not tell apart by value.
    unsafe {
        core::ptr::addr_of_mut!((*found)[0]).write_volatile(tsval);
        core::ptr::addr_of_mut!((*found)[1]).write_volatile(bits);
    }
}

/// The Linux SYN's 20 option bytes (`tcp_syn_options`: MSS, SACK permitted, timestamps,
/// NOP, window scale) after the 20-byte header at `tcp`, recognised with a few byte
/// compares: its window scale and timestamp value, or `None` for any other layout.
///
/// # Safety
/// The 40 bytes at `tcp` are inside the frame.
#[inline(always)]
unsafe fn linux_options(tcp: *const u8) -> Option<(u8, u32)> {
    // SAFETY: the caller's; read one byte at a time.
    let o = unsafe { &*(tcp.add(20) as *const [u8; 20]) };
    if o[0] == 2
        && o[1] == 4
        && o[4] == 4
        && o[5] == 2
        && o[6] == 8
        && o[7] == 10
        && o[16] == 1
        && o[17] == 3
        && o[18] == 3
    {
        Some((o[19], u32::from_be_bytes([o[8], o[9], o[10], o[11]])))
    } else {
        None
    }
}

/// Any other SYN with options: its headers copied into scratch, the cookie computed there,
/// the options walked by a bounded loop (written to `found`). The cookie (negative: none).
#[inline(always)]
fn general_options(raw: *mut xdp_md, l3: u32, family: u8, found: *mut [u32; 3]) -> i64 {
    let Some(h) = scratch() else {
        return -1;
    };
    let Some(th) = load_headers(raw, l3, family, h) else {
        return -1;
    };
    let th_len = u32::from(h.tcp[12] >> 4) * 4;
    if th_len < 20 {
        return -1;
    }
    // Opaque to the optimiser, so that the checks the verifier needs stay in the code.
    let opt_len = core::hint::black_box(th_len - 20);
    if opt_len != 0 {
        if opt_len > 40 {
            return -1;
        }
        // SAFETY: 20 + opt_len <= 60 bytes of the 64-byte buffer.
        if unsafe {
            bpf_xdp_load_bytes(raw, th + 20, h.tcp.as_mut_ptr().add(20) as *mut _, opt_len)
        } != 0
        {
            return -1;
        }
    }
    let th_len = 20 + opt_len;
    // SAFETY: the helper reads a whole iphdr / ipv6hdr and th_len bytes of TCP header from
    // the buffers, which hold that much.
    let cookie = unsafe {
        if family == FAMILY_V4 {
            bpf_tcp_raw_gen_syncookie_ipv4(
                h.ip.as_mut_ptr() as *mut iphdr,
                h.tcp.as_mut_ptr() as *mut tcphdr,
                th_len,
            )
        } else {
            bpf_tcp_raw_gen_syncookie_ipv6(
                h.ip.as_mut_ptr() as *mut ipv6hdr,
                h.tcp.as_mut_ptr() as *mut tcphdr,
                th_len,
            )
        }
    };
    if cookie < 0 {
        return -1;
    }
    // The client's options: window scale, SACK permitted, timestamp value. The loop writes
    // what it finds to a map slot rather than to locals: the verifier then does not follow
    // every combination of options through every later branch.
    // SAFETY: per-CPU slot from a successful lookup; this program alone writes it.
    unsafe { found.write_volatile([0, 0, 20]) };
    // The offset lives in the map slot too: read back, it is a number the verifier does
    // not tell apart by value, so the (unrolled) steps do not multiply its states.
    // SAFETY: a field of the slot above.
    let at = unsafe { core::ptr::addr_of_mut!((*found)[2]) };
    for _ in 0..20 {
        // SAFETY: as above.
        let i = unsafe { at.read_volatile() } as usize & 63;
        if i >= th_len as usize {
            break;
        }
        let kind = h.tcp[i & 63];
        if kind == 0 {
            break;
        }
        if kind == 1 {
            // SAFETY: as above.
            unsafe { at.write_volatile((i + 1) as u32) };
            continue;
        }
        let l = usize::from(h.tcp[(i + 1) & 63]);
        if l < 2 || i + l > th_len as usize {
            break;
        }
        let v = [
            h.tcp[(i + 2) & 63],
            h.tcp[(i + 3) & 63],
            h.tcp[(i + 4) & 63],
            h.tcp[(i + 5) & 63],
        ];
        // SAFETY: as above. Volatile: the optimiser must not keep these in registers.
        unsafe {
            let bits = core::ptr::addr_of_mut!((*found)[1]);
            match (kind, l) {
                (3, 3) => {
                    bits.write_volatile(bits.read_volatile() | OPT_WS | u32::from(v[0].min(14)))
                }
                (4, 2) => bits.write_volatile(bits.read_volatile() | OPT_SACK),
                (8, 10) => {
                    core::ptr::addr_of_mut!((*found)[0]).write_volatile(u32::from_be_bytes(v));
                    bits.write_volatile(bits.read_volatile() | OPT_TS);
                }
                _ => {}
            }
        }
        // SAFETY: as above.
        unsafe { at.write_volatile((i + l) as u32) };
    }
    cookie
}

/// Turns the SYN in the frame into a cookie SYN-ACK for XDP_TX: 1 done, 0 not answerable
/// (the frame may have been changed: it is dropped then). Not inlined: its own stack frame.
///
/// The hot path works on the frame in place (bounds-checked direct access, as the kernel's
/// `xdp_synproxy` selftest): the cookie helper reads the headers where they are, the reply
/// is written over them, the checksums are summed from the values written, and the frame
/// is trimmed only when the reply is shorter than it. A SYN without options and the Linux
/// SYN's exact option layout are recognised without a loop; any other layout is walked
/// by the general parser on a copy.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn shield_answer_syn(raw: *mut xdp_md, at: u32, mss: u32, now: u64) -> i32 {
    match answer_syn(raw, at, mss, now) {
        Ok(()) => 1,
        Err(()) => 0,
    }
}

/// `shield_answer_syn`'s body. Every packet pointer is taken once, bounds-checked on
/// itself, and kept: a pointer recomputed later from `data` would be one whose range
/// the verifier no longer knows (LLVM drops a check that an earlier one implies).
#[inline(always)]
fn answer_syn(raw: *mut xdp_md, at: u32, mss: u32, now: u64) -> Result<(), ()> {
    let offer_ts = mss >> 16 & 1 != 0;
    let mss = mss & 0xffff;
    let (l3, family) = ((at & 0x3f) as usize, (at >> 8) as u8);
    let v4 = family == FAMILY_V4;
    let mss = if v4 {
        mss as u16
    } else {
        (mss as u16).saturating_sub(20)
    };
    let ms = (now / 1_000_000) as u32;
    // Opaque to the optimiser: it must not split the context into data/data_end values
    // the verifier cannot follow.
    let raw = core::hint::black_box(raw);
    let ctx = XdpContext::new(raw);
    let found = SHIELD_SYN_OPTS.get_ptr_mut(0).ok_or(())?;

    // The SYN's headers, checked in place: IPv4 without options, not fragmented; IPv6
    // whose next header is TCP; exactly SYN of the handshake flags.
    let eth = ptr_at::<EthHdr>(&ctx, 0)? as *mut EthHdr;
    let (ip, th) = if v4 {
        let p = ptr_at::<Ipv4Hdr>(&ctx, l3)?;
        // SAFETY: `ptr_at` checked the 20 bytes; byte fields (alignment 1).
        let h = unsafe { &*p };
        if h.version_ihl != 0x45
            || h.flags_frag_off[0] & 0x3f != 0
            || h.flags_frag_off[1] != 0
            || h.protocol != IPPROTO_TCP
        {
            return Err(());
        }
        (p as *mut u8, l3 + 20)
    } else {
        let p = ptr_at::<Ipv6Hdr>(&ctx, l3)?;
        // SAFETY: as above, 40 bytes.
        if unsafe { (*p).next_header } != IPPROTO_TCP {
            return Err(());
        }
        (p as *mut u8, l3 + 40)
    };
    let tcp = ptr_at::<TcpHdr>(&ctx, th)? as *mut u8;
    // SAFETY: `ptr_at` checked the 20 bytes; byte fields (alignment 1).
    let syn = unsafe { &*(tcp as *const TcpHdr) };
    if syn.flags & HANDSHAKE_FLAGS != TCP_SYN {
        return Err(());
    }
    let data_end = ctx.data_end();
    let doff = syn.data_offset >> 4;
    // SAFETY (cookie_in_place, linux_options): the IP header was checked whole above, the
    // TCP header's 20 bytes too, and the 40 of the second arm by `within`.
    let cookie = if doff == 5 {
        note_options(found, 0, 0);
        unsafe { cookie_in_place(v4, ip, tcp, 20) }
    } else if doff == 10
        && within(tcp, 40, data_end)
        && let Some((ws, tsval)) = unsafe { linux_options(tcp) }
    {
        note_options(
            found,
            tsval,
            OPT_WS | OPT_SACK | OPT_TS | u32::from(ws.min(14)),
        );
        unsafe { cookie_in_place(v4, ip, tcp, 40) }
    } else {
        general_options(raw, l3 as u32, family, found)
    };
    if cookie < 0 {
        return Err(());
    }
    let cookie = cookie as u32;
    // SAFETY: fields of the per-CPU slot looked up above.
    let (tsval, bits) = unsafe {
        (
            core::ptr::addr_of!((*found)[0]).read_volatile(),
            core::ptr::addr_of!((*found)[1]).read_volatile(),
        )
    };
    let ws = (bits & OPT_WS != 0).then_some((bits & 0xf) as u8);
    let sack = bits & OPT_SACK != 0;
    let ts = (offer_ts && bits & OPT_TS != 0).then_some(tsval);

    // The reply's options, as Linux lays them out, big-endian words. The reply is never
    // longer than the SYN's frame (growing a frame is not possible on every driver):
    // options that do not fit are left out, the timestamp block (and with it SACK and
    // window scaling) first, then the MSS (the client then assumes 536). Written over the
    // SYN before the frame is trimmed: they lie inside what is kept. The program is not
    // `xdp.frags`: the frame is all in data..data_end.
    let frame_len = ctx.data_end() - ctx.data();
    let room = frame_len as i64 - th as i64;
    let mut opt = [0u32; 5];
    let mut tlen = 20usize;
    if room >= 24 {
        opt[0] = 0x0204_0000 | u32::from(mss);
        tlen = 24;
    }
    if let (Some(tsval), true) = (ts, room >= 36) {
        let ws = ws.filter(|_| room >= 40);
        let mut ours = (ms & !0x3f) | u32::from(ws.map_or(0xf, |w| w & 0xf));
        if sack {
            ours |= 1 << 4;
        }
        opt[1] = if sack { 0x0402_080a } else { 0x0101_080a };
        opt[2] = ours;
        opt[3] = tsval;
        tlen = 36;
        if ws.is_some() {
            opt[4] = 0x0103_0300 | u32::from(SYNCOOKIE_WSCALE);
            tlen = 40;
        }
    }

    // SAFETY (the writes below): through the pointers checked above, over the bytes they
    // were checked for (the options' by `within`).
    // MACs, addresses and ports swapped in place; the sums of the addresses and ports.
    unsafe { swap_sum::<6>(eth as *mut u8, (eth as *mut u8).add(6)) };
    let pseudo = if v4 {
        let addrs = unsafe { swap_sum::<4>(ip.add(12), ip.add(16)) };
        let total = (20 + tlen) as u16;
        // Version/IHL, total length, DF, TTL 64 and TCP: the words that are not zero.
        let c = fold(0x4500 + u32::from(total) + 0x4000 + 0x4006 + addrs);
        let [t0, t1] = total.to_be_bytes();
        let [c0, c1] = c.to_be_bytes();
        let head = [0x45, 0, t0, t1, 0, 0, 0x40, 0, 64, IPPROTO_TCP, c0, c1];
        unsafe { (ip as *mut [u8; 12]).write_unaligned(head) };
        addrs
    } else {
        let addrs = unsafe { swap_sum::<16>(ip.add(8), ip.add(24)) };
        let head = [0x60, 0, 0, 0, 0, tlen as u8, IPPROTO_TCP, 64];
        unsafe { (ip as *mut [u8; 8]).write_unaligned(head) };
        addrs
    };

    // The reply's TCP header after the ports. Window 0, as SYNPROXY's own SYN-ACK: the
    // client waits for the window SYNPROXY sends once the local socket has answered.
    let ports = unsafe { swap_sum::<2>(tcp, tcp.add(2)) };
    let seq = unsafe { (tcp.add(4) as *const [u8; 4]).read_unaligned() };
    let ack = u32::from_be_bytes(seq).wrapping_add(1);
    let doff_flags = ((tlen as u32 / 4) << 12) | u32::from(TCP_SYN | TCP_ACK);
    let mut acc = pseudo
        + u32::from(IPPROTO_TCP)
        + tlen as u32
        + ports
        + halves(cookie)
        + halves(ack)
        + doff_flags;
    for w in opt {
        acc += halves(w);
    }
    unsafe {
        put32(tcp.add(4), cookie);
        put32(tcp.add(8), ack);
        put32(tcp.add(12), doff_flags << 16);
        put32(tcp.add(16), u32::from(fold(acc)) << 16);
    }
    if tlen >= 24 {
        if !within(tcp, 24, data_end) {
            return Err(());
        }
        unsafe { put32(tcp.add(20), opt[0]) };
    }
    if tlen >= 36 {
        if !within(tcp, 36, data_end) {
            return Err(());
        }
        unsafe {
            put32(tcp.add(24), opt[1]);
            put32(tcp.add(28), opt[2]);
            put32(tcp.add(32), opt[3]);
        }
    }
    if tlen == 40 {
        if !within(tcp, 40, data_end) {
            return Err(());
        }
        unsafe { put32(tcp.add(36), opt[4]) };
    }
    let want = th + tlen;
    if want != frame_len {
        // SAFETY: the helper checks the context and the delta itself; no packet pointer
        // is used after it.
        if unsafe { bpf_xdp_adjust_tail(raw, want as i32 - frame_len as i32) } != 0 {
            return Err(());
        }
    }
    Ok(())
}

/// A segment without SYN (data, FIN or RST or not) from a source that is not verified,
/// that no socket other than a listener holds: 0 when it has no ACK or its SYN cookie is
/// not valid (drop it); 1 otherwise (a valid cookie verifies the source). Netfilter's
/// SYNPROXY takes every segment with ACK for a handshake's last ACK and checks its cookie
/// alike: a bare ACK alone here would let a spoofed flood past with a byte of data or a
/// FIN. Frames the
/// cookie path does not handle (IPv4 options or fragments, IPv6 extension headers) and
/// every other segment: 1.
/// A global function: the verifier checks it once, not once per path that calls it.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn shield_check_ack(raw: *mut xdp_md, at: u32, now: u64, ttl: u64) -> i32 {
    let (l3_off, family) = (at & 0xff, (at >> 8) as u8);
    let raw = core::hint::black_box(raw);
    let Some(h) = scratch() else {
        return 1;
    };
    if load_headers(raw, l3_off, family, h).is_none() {
        return 1;
    }
    // A SYN (or SYN-ACK) is judged elsewhere.
    if h.tcp[13] & TCP_SYN != 0 {
        return 1;
    }
    let mut src = [0u8; 16];
    // SAFETY: an all-zero tuple is a valid value of this plain-data union.
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    let w = |a: &[u8; 40], i: usize| u32::from_ne_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]);
    let (sport, dport) = (
        u16::from_ne_bytes([h.tcp[0], h.tcp[1]]),
        u16::from_ne_bytes([h.tcp[2], h.tcp[3]]),
    );
    let size = if family == FAMILY_V4 {
        src[..4].copy_from_slice(&h.ip[12..16]);
        tuple.__bindgen_anon_1.ipv4 = bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1 {
            saddr: w(&h.ip, 12),
            daddr: w(&h.ip, 16),
            sport,
            dport,
        };
        core::mem::size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1>()
    } else {
        src.copy_from_slice(&h.ip[8..24]);
        tuple.__bindgen_anon_1.ipv6 = bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2 {
            saddr: [w(&h.ip, 8), w(&h.ip, 12), w(&h.ip, 16), w(&h.ip, 20)],
            daddr: [w(&h.ip, 24), w(&h.ip, 28), w(&h.ip, 32), w(&h.ip, 36)],
            sport,
            dport,
        };
        core::mem::size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2>()
    };
    let vkey = verified_key(family, src);
    if is_verified(&vkey, now, ttl) {
        return 1;
    }
    // SAFETY: the tuple lives on the stack for the call; a socket returned is released
    // before anything else (the verifier checks it).
    let connected = unsafe {
        let sk = bpf_sk_lookup_tcp(
            raw as *mut _,
            &mut tuple,
            size as u32,
            BPF_F_CURRENT_NETNS as u64,
            0,
        );
        if sk.is_null() {
            false
        } else {
            let state = (*sk).state;
            bpf_sk_release(sk as *mut _);
            state != BPF_TCP_LISTEN
        }
    };
    if connected {
        return 1;
    }
    // Without ACK (a bare RST or FIN, no flags at all): not a handshake's last ACK, so no
    // cookie to check, and without a connection no segment the host can take (every
    // segment after a SYN carries ACK; a listener discards the rest). Dropped here rather
    // than costing the host a conntrack lookup each.
    if h.tcp[13] & TCP_ACK == 0 {
        return 0;
    }
    // SAFETY: the helper reads a whole iphdr / ipv6hdr and a 20-byte tcphdr from the buffers.
    let r = unsafe {
        if family == FAMILY_V4 {
            bpf_tcp_raw_check_syncookie_ipv4(
                h.ip.as_mut_ptr() as *mut iphdr,
                h.tcp.as_mut_ptr() as *mut tcphdr,
            )
        } else {
            bpf_tcp_raw_check_syncookie_ipv6(
                h.ip.as_mut_ptr() as *mut ipv6hdr,
                h.tcp.as_mut_ptr() as *mut tcphdr,
            )
        }
    };
    if r != 0 {
        return 0;
    }
    if SHIELD_VERIFIED.insert(vkey, now, 0).is_err() {
        diag(DIAG_VERIFIED_INSERT_FAILED);
    } else {
        vfilter_set(&vkey);
        diag(DIAG_VERIFICATIONS);
    }
    1
}
