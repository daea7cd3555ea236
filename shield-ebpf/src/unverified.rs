//! The count-min sketch in front of per-source state, the verified set (handshake + data
//! on an established socket) and the per-rule `unverified` budget.

use crate::*;

/// Two sketch cells of a source in one class, with the backlog they give.
pub(crate) struct Cells {
    pub(crate) p: [*mut u64; 2],
    pub(crate) backlog: u64,
    pub(crate) base: u64,
}

#[inline(always)]
pub(crate) fn cells(class: usize, h: u64, now: u64, shift: u8) -> Option<Cells> {
    let p0 = SHIELD_SKETCH.get_ptr_mut(cell_index(class, 0, h))?;
    let p1 = SHIELD_SKETCH.get_ptr_mut(cell_index(class, 1, h))?;
    // SAFETY: array slots from successful lookups. Other CPUs may update them at the same
    // time; a lost update only makes an estimate one packet low.
    let (backlog, base) = sketch::backlog(unsafe { [*p0, *p1] }, now, shift);
    Some(Cells {
        p: [p0, p1],
        backlog,
        base,
    })
}

/// The sketch's answer for a source without state (`h`: its sketch hash): `false` when it
/// stays untracked (the packet is counted in the sketch), `true` when it is promoted, with
/// the backlogs to draw written to `drawn` (only then). Not inlined: its own stack frame.
#[inline(never)]
pub(crate) fn untracked(
    rule: &RuleConfig,
    h: u64,
    conn_attempt: bool,
    now: u64,
    drawn: *mut [u64; 2],
) -> bool {
    let sk = rule.sketch;
    let active = [conn_attempt && rule.has_conn_limit(), rule.has_pkt_limit()];
    let read = |class: usize, present: bool| {
        if present && sk[class].slack != 0 {
            cells(class, h, now, sk[class].shift)
        } else {
            None
        }
    };
    // Only the classes this packet counts in; the other is read on promotion only.
    let conn = read(CLASS_CONN, active[CLASS_CONN]);
    let pkts = read(CLASS_PKT, active[CLASS_PKT]);
    let backlogs = [
        conn.as_ref().map_or(0, |c| c.backlog),
        pkts.as_ref().map_or(0, |c| c.backlog),
    ];
    match admission(
        backlogs,
        active,
        [sk[CLASS_CONN].slack, sk[CLASS_PKT].slack],
    ) {
        Admission::Promote(mut d) => {
            // Not a connection attempt: still draw the source's untracked connections.
            if !active[CLASS_CONN]
                && let Some(c) = read(CLASS_CONN, rule.has_conn_limit())
            {
                d[CLASS_CONN] = sketch::drawn(c.backlog, sk[CLASS_CONN].slack);
            }
            // SAFETY: the caller's slot for the two backlogs, written here before it reads it.
            unsafe { drawn.write(d) };
            true
        }
        Admission::Untracked => {
            if let (true, Some(c)) = (active[CLASS_CONN], &conn) {
                count_in(c, sk[CLASS_CONN].shift);
            }
            if let (true, Some(c)) = (active[CLASS_PKT], &pkts) {
                count_in(c, sk[CLASS_PKT].shift);
            }
            false
        }
    }
}

#[inline(always)]
pub(crate) fn count_in(c: &Cells, shift: u8) {
    for p in c.p {
        // SAFETY: array slots from successful lookups (see `cells`).
        unsafe { *p = sketch::counted(*p, c.base, shift) };
    }
}

/// Whether `vkey` may be in the verified set (its filter bit is set).
#[inline(always)]
fn vfilter_has(vkey: &SourceKey) -> bool {
    let (word, mask) = shield_common::vfilter_bit(vkey);
    match SHIELD_VFILTER.get(word) {
        Some(w) => *w & mask != 0,
        None => true,
    }
}

/// Sets `vkey`'s filter bit (a read first: a set bit leaves the shared line clean).
#[inline(always)]
pub(crate) fn vfilter_set(vkey: &SourceKey) {
    let (word, mask) = shield_common::vfilter_bit(vkey);
    if let Some(w) = SHIELD_VFILTER.get_ptr_mut(word) {
        // SAFETY: an array slot from a successful lookup, 8-byte aligned; other CPUs may
        // set other bits of it at the same time, hence the atomic OR.
        unsafe {
            if *w & mask == 0 {
                core::intrinsics::atomic_or::<u64, u64, { AtomicOrdering::Relaxed }>(w, mask);
            }
        }
    }
}

#[inline(always)]
pub(crate) fn is_verified(vkey: &SourceKey, now: u64, ttl: u64) -> bool {
    if !vfilter_has(vkey) {
        return false;
    }
    match SHIELD_VERIFIED.get_ptr(vkey) {
        // SAFETY: pointer from a successful lookup, valid during this run (RCU).
        Some(t) => still_verified(unsafe { *t }, now, ttl),
        None => false,
    }
}

/// Whether the rule's `unverified` budget has a token now (nothing drawn).
#[inline(always)]
pub(crate) fn budget_left(rule_id: u32, budget: &Gcra, now: u64) -> bool {
    match SHIELD_BUDGET.get(rule_id) {
        Some(tat) => budget.check(*tat, now).is_some(),
        None => true,
    }
}

/// Draws one connection attempt from the rule's `unverified` budget.
#[inline(always)]
pub(crate) fn take_budget(rule_id: u32, budget: &Gcra, now: u64) -> bool {
    let Some(tat) = SHIELD_BUDGET.get_ptr_mut(rule_id) else {
        return true;
    };
    // Atomic against other CPUs drawing from the same budget.
    draw(budget, tat, now)
}

/// A data segment of a source that is not (or no longer freshly) verified: if the kernel
/// holds an established socket for its 4-tuple, the source completed a handshake and is
/// real. Proofs are refreshed at most once per `VERIFIED_REFRESH_NS`. Returns whether the
/// source is verified after it (its proof within `ttl`, as `is_verified` says).
#[inline(never)]
pub(crate) fn prove(ctx: &XdpContext, pkt: &Packet, vkey: &SourceKey, now: u64, ttl: u64) -> bool {
    if let Some(t) = SHIELD_VERIFIED.get_ptr_mut(vkey) {
        // SAFETY: pointer from a successful lookup, valid during this run (RCU).
        let mut last = unsafe { *t };
        if now.saturating_sub(last) >= VERIFIED_REFRESH_NS && established(ctx, pkt) {
            // SAFETY: as above.
            unsafe { *t = now };
            last = now;
        }
        // (A filter rebuild may have missed a key that entered the set meanwhile.)
        vfilter_set(vkey);
        return still_verified(last, now, ttl);
    }
    if established(ctx, pkt) {
        if SHIELD_VERIFIED.insert(vkey, now, 0).is_err() {
            diag(DIAG_VERIFIED_INSERT_FAILED);
        } else {
            vfilter_set(vkey);
            diag(DIAG_VERIFICATIONS);
            return true;
        }
    }
    false
}

/// Whether this host has an established TCP socket for the packet's 4-tuple.
#[inline(always)]
pub(crate) fn established(ctx: &XdpContext, pkt: &Packet) -> bool {
    let s = pkt.src;
    // At most 22 (Ethernet + two VLAN tags); the mask gives the verifier a small bound.
    let off = (pkt.l3_off & 0x3f) as usize;
    // SAFETY: an all-zero tuple is a valid value of this plain-data union.
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    let size = if pkt.family == FAMILY_V4 {
        let Ok(d) = bytes::<4>(ctx, off + 16) else {
            return false;
        };
        tuple.__bindgen_anon_1.ipv4 = bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1 {
            saddr: u32::from_ne_bytes([s[0], s[1], s[2], s[3]]),
            daddr: u32::from_ne_bytes([d[0], d[1], d[2], d[3]]),
            sport: pkt.sport.to_be(),
            dport: pkt.dport.to_be(),
        };
        core::mem::size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1>()
    } else {
        let Ok(d) = bytes::<16>(ctx, off + 24) else {
            return false;
        };
        let w = |a: [u8; 16], i: usize| {
            u32::from_ne_bytes([a[4 * i], a[4 * i + 1], a[4 * i + 2], a[4 * i + 3]])
        };
        tuple.__bindgen_anon_1.ipv6 = bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2 {
            saddr: [w(s, 0), w(s, 1), w(s, 2), w(s, 3)],
            daddr: [w(d, 0), w(d, 1), w(d, 2), w(d, 3)],
            sport: pkt.sport.to_be(),
            dport: pkt.dport.to_be(),
        };
        core::mem::size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2>()
    };
    // SAFETY: the tuple lives on the stack for the call; the returned socket, when not
    // null, is released before returning (the verifier checks it).
    unsafe {
        let sk = bpf_sk_lookup_tcp(
            ctx.ctx as *mut _,
            &mut tuple,
            size as u32,
            BPF_F_CURRENT_NETNS as u64,
            0,
        );
        if sk.is_null() {
            return false;
        }
        let state = (*sk).state;
        bpf_sk_release(sk as *mut _);
        state == BPF_TCP_ESTABLISHED
    }
}
