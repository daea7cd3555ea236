//! shield's XDP program: parse, find the rule for the destination endpoint, apply the
//! allow/deny lists, then the per-source token buckets of the rule.
//!
//! Fail-open choice: a frame that cannot be parsed (truncated, bad header lengths) passes
//! and is counted as `malformed` under rule 0. Dropping it would let a parser gap take the
//! host offline; passing it leaves the kernel's own stack to reject it.
#![no_std]
#![no_main]
// BPF atomics: `AtomicU64`'s compare_exchange is not offered for bpfel-unknown-none, but
// the intrinsics lower to BPF_CMPXCHG / BPF_ADD with BPF_FETCH (kernel 5.12+).
#![feature(core_intrinsics)]
// Word loads from the frame at any alignment (`parse::load32`).
#![feature(asm_experimental_arch)]
#![expect(
    internal_features,
    reason = "core::intrinsics atomics: the only CAS on bpf"
)]

use core::intrinsics::{AtomicOrdering, atomic_cxchg, atomic_xadd, atomic_xsub};

use aya_ebpf::{
    bindings::{
        BPF_F_CURRENT_NETNS, BPF_TCP_ESTABLISHED, bpf_sock_tuple,
        bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1, bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2,
        xdp_action,
    },
    helpers::generated::{
        bpf_jiffies64, bpf_ktime_get_coarse_ns, bpf_sk_lookup_tcp, bpf_sk_release,
    },
    macros::{map, xdp},
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::XdpContext,
};
use shield_common::{
    B_CONN, B_CONN_SUSTAINED, BAN_ATTEMPTS, BAN_MONITOR, BUCKETS, BanValue, CFG_ALLOW_V4,
    CFG_ALLOW_V6, CFG_BANS, CFG_DENY_V4, CFG_DENY_V6, CFG_LOADED, CFG_MONITOR, COUNTER_SLOTS,
    Control, Counter, DEFAULT_MAX_SOURCES, DIAG_BAN_INSERT_FAILED, DIAG_EVENTS_LOST, DIAG_SLOTS,
    DIAG_SOURCE_INSERT_FAILED, DIAG_SOURCE_INSERTS, DIAG_VERIFICATIONS,
    DIAG_VERIFIED_INSERT_FAILED, EV_BAN, EV_BAN_FAILED, EV_LIMITED, EV_WOULD_BAN, EVENTS_BYTES,
    Event, Gcra, GlobalConfig, HALVES, HOST_BAN_WALK, LIST_KEY_V4, LIST_KEY_V6, ListValue,
    MAX_BANS, MAX_LIST_PREFIXES, MAX_VERIFIED, PORT_INDEX_ICMP, PORT_TABLE_LEN, PROTO_SLOT_TCP,
    PROTO_SLOT_UDP, RS_PROMOTED, RS_UNTRACKED, RS_UNVERIFIED_ADMITTED, RS_VERIFIED_CONNS,
    RULE_BAN_HOST, RULE_MONITOR, RULE_PRESENT, RULE_RESET, RULE_SLOTS, RULE_STAT_SLOTS, Reason,
    RuleConfig, SFILTER_WORDS, SourceKey, SourceState, VERIFIED_REFRESH_NS, VFILTER_WORDS,
    addr::{FAMILY_V4, FAMILY_V6},
    counter_index,
    judge::{
        Outcome, escalate_claimed, needs_state, report_due, still_verified, verified_key,
        verified_prefix,
    },
    port_index, rule_stat_index,
    sketch::{
        self, Admission, CLASS_CONN, CLASS_PKT, SKETCH_CELLS, admission, cell_index, promoted_state,
    },
};

mod bans;
mod buckets;
mod clock;
mod counters;
mod maps;
mod parse;
mod refused;
mod reset;
mod syncookie;
mod unverified;

use bans::*;
use buckets::*;
use clock::coarse_now;
use counters::*;
use maps::*;
use parse::*;
use unverified::*;

#[xdp]
pub fn shield(ctx: XdpContext) -> u32 {
    // What the previous packet on this CPU noted (`rare`) is logged first: here the
    // verifier meets the logging once, from a single state, not at the end of every path.
    flush_rare();
    let len = (ctx.data_end() - ctx.data()) as u64;
    match try_shield(&ctx, len) {
        Ok(reset::CANDIDATE) => reset::hand_over(&ctx, len),
        Ok(action) => action,
        Err(()) => {
            count(0, Reason::Malformed, len);
            xdp_action::XDP_PASS
        }
    }
}

#[inline(always)]
fn try_shield(ctx: &XdpContext, len: u64) -> Result<u32, ()> {
    let Some(ctl) = SHIELD_CONTROL.get(0) else {
        return Ok(xdp_action::XDP_PASS);
    };
    // Read once: every table below comes from this half.
    let half = ctl.active & 1;
    let Some(cfg) = SHIELD_CONFIG.get(half) else {
        return Ok(xdp_action::XDP_PASS);
    };
    let flags = cfg.flags;
    let list_half = (cfg.list_half & 1) as u8;
    let verified_ttl = cfg.verified_ttl_ns;
    let seed = cfg.sketch_seed;
    if flags & CFG_LOADED == 0 {
        rare(shield_common::RARE_NOT_LOADED);
        return Ok(xdp_action::XDP_PASS);
    }
    // Filled by `parse` (only read once it says PARSED_IP). In a per-CPU map slot, not on
    // the stack: the program's frame shares the 512-byte BPF stack with its calls.
    let Some(slot) = SHIELD_PACKET.get_ptr_mut(0) else {
        return Ok(xdp_action::XDP_PASS);
    };
    let frame_len = len as usize;
    let parsed = if let Some(p) =
        parse_plain_v4_tcp(ctx, frame_len).or_else(|| parse_plain_v6_tcp(ctx, frame_len))
    {
        // SAFETY: the per-CPU slot holds one Packet.
        unsafe { slot.write(p) };
        PARSED_IP
    } else {
        parse(ctx.ctx, slot)
    };
    match parsed {
        PARSED_IP => {}
        PARSED_NOT_IP => {
            count(0, Reason::Pass, len);
            return Ok(xdp_action::XDP_PASS);
        }
        PARSED_HIDDEN => {
            return Ok(verdict(
                0,
                Reason::HiddenHeader,
                flags & CFG_MONITOR != 0,
                len,
            ));
        }
        _ => return Err(()),
    }
    // SAFETY: `parse` wrote a whole `Packet` when it returned PARSED_IP; the per-CPU slot
    // is this run's alone.
    let pkt = unsafe { &*slot };
    let global_monitor = flags & CFG_MONITOR != 0;
    let bans = flags & CFG_BANS != 0;

    // O(1) rule lookup: one array slot per protocol and port. A packet without a port (a
    // non-first fragment, ESP, GRE, …) has no slot in the table: it belongs to no rule.
    // (An index of PORT_TABLE_LEN would be the *other* half's TCP port 0.)
    let index = match pkt.l4 {
        L4_TCP => Some(port_index(PROTO_SLOT_TCP, pkt.dport)),
        L4_UDP => Some(port_index(PROTO_SLOT_UDP, pkt.dport)),
        L4_ICMP => Some(PORT_INDEX_ICMP),
        _ => None,
    };
    let rule_id = match index.and_then(|i| SHIELD_PORTS.get(half * PORT_TABLE_LEN + i)) {
        Some(id) if *id < RULE_SLOTS => *id,
        _ => 0,
    };

    // Lists, allow first. Lookups are skipped while a list is empty (they cost 37-665 ns).
    let (allow_flag, deny_flag) = if pkt.family == FAMILY_V4 {
        (CFG_ALLOW_V4, CFG_DENY_V4)
    } else {
        (CFG_ALLOW_V6, CFG_DENY_V6)
    };
    if flags & allow_flag != 0 && listed(pkt, list_half, true) {
        count(rule_id, Reason::Allow, len);
        return Ok(xdp_action::XDP_PASS);
    }
    if flags & deny_flag != 0 && listed(pkt, list_half, false) {
        return Ok(verdict(rule_id, Reason::Deny, global_monitor, len));
    }
    // Like the deny list, follows the global mode.
    if pkt.l4 == L4_BAD_FRAGMENT {
        return Ok(verdict(0, Reason::BadFragment, global_monitor, len));
    }
    if pkt.l4 == L4_HIDDEN {
        return Ok(verdict(0, Reason::HiddenHeader, global_monitor, len));
    }
    // The clock, read once the lists (which do not need it) are behind.
    let now = if ctl.clock_frozen != 0 {
        ctl.clock_offset_ns
    } else {
        coarse_now().wrapping_add(ctl.clock_offset_ns)
    };
    // Host-scope bans cover every port, matched or not. A monitor-mode ban exempts
    // nothing: it only turns the pass the normal judgement gives into `would_ban`.
    let mut watched = false;
    if bans && may_exist(shield_common::BAN_COUNT_HOST) {
        let epoch = host_epoch();
        if let Some(e) = epoch
            && banned_cached(pkt, e, now)
        {
            count(rule_id, Reason::Ban, len);
            return Ok(xdp_action::XDP_DROP);
        }
        match host_ban(pkt, now, epoch.unwrap_or(0), epoch.is_some()) {
            BAN_HIT_DROP => {
                count(rule_id, Reason::Ban, len);
                return Ok(xdp_action::XDP_DROP);
            }
            BAN_HIT_MONITOR => watched = true,
            _ => {}
        }
    }
    let pass = if watched {
        Reason::WouldBan
    } else {
        Reason::Pass
    };

    if rule_id == 0 {
        count(0, pass, len);
        return Ok(xdp_action::XDP_PASS);
    }
    let Some(rule) = SHIELD_RULES.get(half * RULE_SLOTS + rule_id) else {
        count(0, pass, len);
        return Ok(xdp_action::XDP_PASS);
    };
    if rule.flags & RULE_PRESENT == 0 {
        count(rule_id, pass, len);
        return Ok(xdp_action::XDP_PASS);
    }
    let prefix = if pkt.family == FAMILY_V4 {
        rule.v4_prefix
    } else {
        rule.v6_prefix
    };
    let key = SourceKey {
        rule: rule_id as u16,
        family: pkt.family,
        prefix_len: prefix,
        addr: masked(&pkt.src, prefix),
    };
    if bans
        && may_exist(rule_id)
        && let Some(ban) = SHIELD_RBANS.get_ptr(key)
    {
        // SAFETY: pointer from a successful lookup, valid during this run (RCU).
        match ban_hit(unsafe { &*ban }, now, pkt) {
            BAN_HIT_DROP => {
                count(rule_id, Reason::Ban, len);
                return Ok(xdp_action::XDP_DROP);
            }
            BAN_HIT_MONITOR => watched = true,
            _ => {}
        }
    }
    let pass = if watched {
        Reason::WouldBan
    } else {
        Reason::Pass
    };
    let monitor = rule.flags & RULE_MONITOR != 0;

    // Spoofed-source floods: connection attempts from sources that never proved real share
    // the rule's `unverified` budget. While it is spent they are dropped before any
    // per-source state is touched; otherwise the budget is charged only once the source's
    // own limits admit the attempt, so one real source over its limit cannot drain it.
    // (A rule that answers with RSTs proves its sources too: only proven ones get a RST.)
    let mut charge = false;
    let proves = rule.unverified.interval_ns != 0 || rule.flags & RULE_RESET != 0;
    if proves && pkt.l4 == L4_TCP {
        // `verified_key`, masked in words.
        let vprefix = verified_prefix(pkt.family);
        let vkey = SourceKey {
            rule: 0,
            family: pkt.family,
            prefix_len: vprefix,
            addr: masked(&pkt.src, vprefix),
        };
        if pkt.conn_attempt && rule.unverified.interval_ns != 0 {
            if is_verified(&vkey, now, verified_ttl) {
                rule_stat(rule_id, RS_VERIFIED_CONNS);
            } else if budget_left(rule_id, &rule.unverified, now) {
                charge = true;
            } else {
                let action = syncookie::over_budget(ctx, pkt, rule_id, rule, monitor, len, now);
                return Ok(action);
            }
        } else {
            // Data proves its source; a source verified after that needs no cookie check
            // (which would look the set up again).
            let verified = pkt.tcp_data && prove(ctx, pkt, &vkey, now, verified_ttl);
            // Else, data or not, a segment without SYN of a source still unverified must
            // carry ACK and a valid cookie to a `syncookie` rule (as SYNPROXY requires).
            if !verified
                && let Some(action) =
                    syncookie::bare_ack(ctx, pkt, rule_id, rule, monitor, now, verified_ttl, len)
            {
                return Ok(action);
            }
        }
    }

    let reason = if needs_state(rule, pkt.conn_attempt) {
        match refused::hit(&key, refused::tag(cfg.generation), pkt.conn_attempt, now) {
            Some(reason) => reason,
            None => judge(half, cfg.generation, &key, pkt.conn_attempt, now, seed),
        }
    } else {
        Reason::Pass
    };
    // `over_limit = "reset"`: a refused connection attempt may get a RST instead of
    // silence (`decide` left what reset.rs needs; `shield` hands it over).
    if matches!(reason, Reason::ConnLimit | Reason::PktLimit)
        && pkt.conn_attempt
        && rule.flags & RULE_RESET != 0
        && !monitor
    {
        return Ok(reset::CANDIDATE);
    }
    let reason = match reason {
        Reason::Pass if charge => {
            if take_budget(rule_id, &rule.unverified, now) {
                rule_stat(rule_id, RS_UNVERIFIED_ADMITTED);
                pass
            } else {
                // Another CPU took the last token since `budget_left`.
                Reason::UnverifiedLimit
            }
        }
        Reason::Pass => pass,
        other => other,
    };
    // The rule's flag holds its effective mode (its own `mode`, else the global one), so
    // that a rule can be enforced while the rest of the policy is still monitored.
    Ok(verdict(rule_id, reason, monitor, len))
}

/// `shield_common::addr::mask_prefix` in 32-bit words (`mask_prefix_words`): the packet's
/// address is 8-byte aligned, so it is read and masked as words, not bytes.
#[inline(always)]
fn masked(src: &[u8; 16], prefix: u8) -> [u8; 16] {
    // SAFETY: `Packet::src` is the first field of an 8-byte aligned struct.
    let w = unsafe { core::ptr::read(src as *const [u8; 16] as *const [u32; 4]) };
    let out = shield_common::addr::mask_prefix_words(w, prefix);
    // SAFETY: [u32; 4] and [u8; 16] have the same size; any bytes are valid.
    unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(out) }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
