//! `challenge = "syncookie"`: over the `unverified` budget, a connection attempt from an
//! unverified source is answered here with a SYN-ACK carrying a SYN cookie (the kernel's
//! `bpf_tcp_raw_gen_syncookie_ipv4/ipv6`, XDP_TX), so it costs the host no state; the
//! client's ACK is checked here (`bpf_tcp_raw_check_syncookie_ipv4/ipv6`): a valid cookie
//! verifies its source, and netfilter's SYNPROXY (the nftables table the daemon sets up)
//! completes the connection to the local socket with the same kernel cookie secret.
//!
//! Options the cookie SYN-ACK carries, as SYNPROXY reads them back from the ACK: the MSS
//! (the policy's; the cookie itself encodes the client's, in 4 steps), and, only when the
//! client sent timestamps, SACK-permitted and window scaling, remembered in the low 6 bits
//! of our timestamp (bits 0-3: the client's window scale, 0xf none; bit 4: SACK). Without
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
        bpf_tcp_raw_gen_syncookie_ipv6, bpf_xdp_adjust_tail, bpf_xdp_get_buff_len,
        bpf_xdp_load_bytes, bpf_xdp_store_bytes,
    },
};
use shield_common::{RULE_SYNCOOKIE, SYNCOOKIE_WSCALE};

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
        && shield_answer_syn(ctx.ctx, where_(pkt), u32::from(rule.mss), now) == 1
    {
        count(rule_id, Reason::SynCookie, len);
        return xdp_action::XDP_TX;
    }
    verdict(rule_id, Reason::UnverifiedLimit, monitor, len)
}

/// A TCP segment that is neither a connection attempt nor data, to a `syncookie` rule:
/// `Some(drop)` for a bare ACK from an unverified source that no socket holds and whose
/// cookie is not valid (see `shield_check_ack`); `None`: judged as any other segment.
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

/// The IP and TCP headers of a handshake segment, copied out of the frame, and the reply's.
/// In a per-CPU map slot, not on the stack: the BPF stack of a call chain is 512 bytes.
#[repr(C)]
struct Headers {
    ip: [u8; 40],
    /// 64 so that an index masked with 63 is always inside.
    tcp: [u8; 64],
    reply_ip: [u8; 40],
    reply_tcp: [u8; 64],
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
    // SAFETY: the destinations are stack buffers of at least the lengths given.
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

/// One's-complement sum of big-endian 16-bit words of `b[start..start + 2 * words]`.
#[inline(always)]
fn sum16<const N: usize>(b: &[u8; N], start: usize, words: usize, mut acc: u32) -> u32 {
    for i in 0..N / 2 {
        if i >= words {
            break;
        }
        let at = start + 2 * i;
        if at + 1 < N {
            acc += u32::from(b[at]) << 8 | u32::from(b[at + 1]);
        }
    }
    acc
}

#[inline(always)]
fn fold(mut acc: u32) -> u16 {
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    !(acc as u16)
}

/// Turns the SYN in the frame into a cookie SYN-ACK for XDP_TX: 1 done, 0 not answerable
/// (the frame may have been changed: it is dropped then). Not inlined: its own stack frame.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn shield_answer_syn(raw: *mut xdp_md, at: u32, mss: u32, now: u64) -> i32 {
    let (l3_off, family) = (at & 0xff, (at >> 8) as u8);
    let mss = if family == FAMILY_V4 {
        mss as u16
    } else {
        (mss as u16).saturating_sub(20)
    };
    let ms = (now / 1_000_000) as u32;
    let raw = core::hint::black_box(raw);
    let Some(h) = scratch() else {
        return 0;
    };
    let Some(th) = load_headers(raw, l3_off, family, h) else {
        return 0;
    };
    if h.tcp[13] & HANDSHAKE_FLAGS != TCP_SYN {
        return 0;
    }
    let th_len = u32::from(h.tcp[12] >> 4) * 4;
    if th_len < 20 {
        return 0;
    }
    // Opaque to the optimiser, so that the checks the verifier needs stay in the code.
    let opt_len = core::hint::black_box(th_len - 20);
    if opt_len != 0 {
        if opt_len > 40 {
            return 0;
        }
        // SAFETY: 20 + opt_len <= 60 bytes of the 64-byte buffer.
        if unsafe {
            bpf_xdp_load_bytes(raw, th + 20, h.tcp.as_mut_ptr().add(20) as *mut _, opt_len)
        } != 0
        {
            return 0;
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
        return 0;
    }
    let cookie = cookie as u32;

    // The client's options: window scale, SACK permitted, timestamp value. The loop writes
    // what it finds to a map slot rather than to locals: the verifier then does not follow
    // every combination of options through every later branch.
    let Some(found) = SHIELD_SYN_OPTS.get_ptr_mut(0) else {
        return 0;
    };
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
    // SAFETY: as above.
    let (tsval, bits) = unsafe {
        (
            core::ptr::addr_of!((*found)[0]).read_volatile(),
            core::ptr::addr_of!((*found)[1]).read_volatile(),
        )
    };
    let ws = (bits & OPT_WS != 0).then_some((bits & 0xf) as u8);
    let sack = bits & OPT_SACK != 0;
    let ts = (bits & OPT_TS != 0).then_some(tsval);

    let seq = u32::from_be_bytes([h.tcp[4], h.tcp[5], h.tcp[6], h.tcp[7]]);
    let (sport, dport) = ([h.tcp[0], h.tcp[1]], [h.tcp[2], h.tcp[3]]);
    // The reply's TCP header, options as Linux lays them out.
    h.reply_tcp = [0; 64];
    let t = &mut h.reply_tcp;
    t[0..2].copy_from_slice(&dport);
    t[2..4].copy_from_slice(&sport);
    t[4..8].copy_from_slice(&cookie.to_be_bytes());
    t[8..12].copy_from_slice(&seq.wrapping_add(1).to_be_bytes());
    // Window 0, as SYNPROXY's own SYN-ACK: the client waits for the window SYNPROXY sends
    // once the local socket has answered.
    t[13] = TCP_SYN | TCP_ACK;
    // The reply is never longer than the SYN's frame (growing a frame is not possible on
    // every driver): options that do not fit are left out, the timestamp block (and with
    // it SACK and window scaling) first, then the MSS (the client then assumes 536).
    // SAFETY: reads the frame's length only.
    let frame_len = unsafe { bpf_xdp_get_buff_len(raw) } as i64;
    let room = frame_len - i64::from(th);
    let mut tlen = 20usize;
    if room >= 24 {
        t[20..24].copy_from_slice(&[2, 4, (mss >> 8) as u8, mss as u8]);
        tlen = 24;
    }
    if let (Some(tsval), true) = (ts, room >= 36) {
        let ws = ws.filter(|_| room >= 40);
        let mut ours = (ms & !0x3f) | u32::from(ws.map_or(0xf, |w| w & 0xf));
        if sack {
            ours |= 1 << 4;
        }
        let lead = if sack { [4, 2] } else { [1, 1] };
        t[24..26].copy_from_slice(&lead);
        t[26..28].copy_from_slice(&[8, 10]);
        t[28..32].copy_from_slice(&ours.to_be_bytes());
        t[32..36].copy_from_slice(&tsval.to_be_bytes());
        tlen = 36;
        if ws.is_some() {
            t[36..40].copy_from_slice(&[1, 3, 3, SYNCOOKIE_WSCALE]);
            tlen = 40;
        }
    }
    t[12] = ((tlen / 4) as u8) << 4;

    // The reply's IP header, addresses swapped; the pseudo-header sum for TCP.
    h.reply_ip = [0; 40];
    let ip = &mut h.reply_ip;
    let ip_len: u32;
    let pseudo;
    if family == FAMILY_V4 {
        ip_len = 20;
        let total = (20 + tlen) as u16;
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        ip[6] = 0x40; // DF
        ip[8] = 64;
        ip[9] = 6;
        let (src, dst) = (
            [h.ip[12], h.ip[13], h.ip[14], h.ip[15]],
            [h.ip[16], h.ip[17], h.ip[18], h.ip[19]],
        );
        ip[12..16].copy_from_slice(&dst);
        ip[16..20].copy_from_slice(&src);
        let c = fold(sum16(ip, 0, 10, 0));
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        pseudo = sum16(ip, 12, 4, 6 + tlen as u32);
    } else {
        ip_len = 40;
        ip[0] = 0x60;
        ip[4..6].copy_from_slice(&(tlen as u16).to_be_bytes());
        ip[6] = 6;
        ip[7] = 64;
        let mut k = 0;
        while k < 16 {
            ip[8 + k] = h.ip[24 + k];
            ip[24 + k] = h.ip[8 + k];
            k += 1;
        }
        pseudo = sum16(ip, 8, 16, 6 + tlen as u32);
    }
    let c = fold(sum16(t, 0, tlen / 2, pseudo));
    t[16..18].copy_from_slice(&c.to_be_bytes());

    let want = i64::from(th) + tlen as i64;
    // SAFETY: the buffers hold the lengths given; the frame is resized before the writes,
    // each of which the helper bounds-checks against the frame.
    unsafe {
        let mut macs = [0u8; 12];
        if bpf_xdp_load_bytes(raw, 0, macs.as_mut_ptr() as *mut _, 12) != 0 {
            return 0;
        }
        let mut swapped = [0u8; 12];
        swapped[0..6].copy_from_slice(&macs[6..12]);
        swapped[6..12].copy_from_slice(&macs[0..6]);
        if bpf_xdp_adjust_tail(raw, (want - frame_len) as i32) != 0 {
            return 0;
        }
        if bpf_xdp_store_bytes(raw, 0, swapped.as_mut_ptr() as *mut _, 12) != 0
            || bpf_xdp_store_bytes(raw, l3_off & 0x3f, ip.as_mut_ptr() as *mut _, ip_len) != 0
        {
            return 0;
        }
        let tl = core::hint::black_box(tlen as u32);
        if tl > 40 {
            return 0;
        }
        if tl < 20 || bpf_xdp_store_bytes(raw, th, t.as_mut_ptr() as *mut _, tl) != 0 {
            return 0;
        }
    }
    1
}

/// A bare ACK (no SYN, RST, FIN, no data) from a source that is not verified, that no
/// socket other than a listener holds: 0 when its SYN cookie is not valid (drop it); 1
/// otherwise (a valid cookie verifies the source). Frames the cookie path does not handle
/// (IPv4 options or fragments, IPv6 extension headers) and every other segment: 1.
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
    if h.tcp[13] & HANDSHAKE_FLAGS != TCP_ACK {
        return 1;
    }
    let doff = i32::from(h.tcp[12] >> 4) * 4;
    let payload = if family == FAMILY_V4 {
        i32::from(u16::from_be_bytes([h.ip[2], h.ip[3]])) - 20
    } else {
        i32::from(u16::from_be_bytes([h.ip[4], h.ip[5]]))
    };
    if payload - doff > 0 {
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
