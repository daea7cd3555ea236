//! Counters (per rule × reason, per-CPU), per-rule figures, diagnostics, events.

use shield_common::{
    RARE_BAN_INSERT, RARE_EVENTS_LOST, RARE_KINDS, RARE_SOURCE_INSERT, RARE_VERIFIED_INSERT,
};

use crate::*;

#[inline(always)]
pub(crate) fn rule_stat(rule_id: u32, slot: u32) {
    if let Some(c) = SHIELD_RSTATS.get_ptr_mut(rule_stat_index(rule_id, slot)) {
        // SAFETY: per-CPU slot from a successful lookup.
        unsafe { *c += 1 };
    }
}

/// One event: `reason` as counted (`WouldDrop` in monitor mode), `limit` the limit that
/// refused.
#[inline(always)]
#[expect(clippy::too_many_arguments, reason = "the fields of one event")]
pub(crate) fn emit(
    kind: u32,
    reason: Reason,
    limit: Reason,
    key: &SourceKey,
    out: &Outcome,
    now: u64,
    limited: u64,
    host: u32,
) {
    // Written in place in the ring buffer, not on the stack.
    let Some(mut entry) = SHIELD_EVENTS.reserve::<Event>(0) else {
        diag(DIAG_EVENTS_LOST);
        return;
    };
    entry.write(Event {
        kind,
        reason: reason as u32,
        key: *key,
        strikes: out.strikes,
        level: out.level,
        ts_ns: now,
        duration_ns: out.ban_ns,
        limited,
        host_scope: host,
        limit: limit as u8,
        _pad: [0; 3],
    });
    entry.submit(0);
}

#[inline(always)]
pub(crate) fn diag(slot: u32) {
    if let Some(c) = SHIELD_DIAG.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot from a successful lookup.
        unsafe { *c += 1 };
    }
    // The failures among the diagnostics also reach the daemon's log (the constant slot
    // folds this away for the others).
    match slot {
        DIAG_SOURCE_INSERT_FAILED => rare(RARE_SOURCE_INSERT),
        DIAG_BAN_INSERT_FAILED => rare(RARE_BAN_INSERT),
        DIAG_VERIFIED_INSERT_FAILED => rare(RARE_VERIFIED_INSERT),
        DIAG_EVENTS_LOST => rare(RARE_EVENTS_LOST),
        _ => {}
    }
}

// Rare conditions reach the daemon's log through aya-log (`rare`; `RARE_*` in
// shield-common, which also holds their words).
/// `SHIELD_RARE`'s slot for the conditions seen and not logged yet (a bit each).
const RARE_PENDING: u32 = RARE_KINDS;
const RARE_EVERY_NS: u64 = 1_000_000_000;

/// Per CPU: when rare conditions were last logged (slot 0), then the pending bits (not
/// pinned: a log throttle).
#[map]
static SHIELD_RARE: PerCpuArray<u64> = PerCpuArray::with_max_entries(RARE_KINDS + 1, 0);

/// Notes a rare condition (a refused map insert, a lost event, no policy loaded). It is
/// logged when the next packet on this CPU starts (`flush_rare`): the logging's stack frame
/// never nests under the judgement's (512 bytes of BPF stack for the whole call chain).
#[inline(always)]
pub(crate) fn rare(what: u32) {
    if let Some(p) = SHIELD_RARE.get_ptr_mut(RARE_PENDING) {
        // SAFETY: per-CPU slot from a successful lookup.
        unsafe { *p |= 1 << what };
    }
}

/// Before the verdict: logs what `rare` noted for an earlier packet, if anything (one
/// per-CPU array read per packet otherwise).
#[inline(always)]
pub(crate) fn flush_rare() {
    let Some(p) = SHIELD_RARE.get_ptr_mut(RARE_PENDING) else {
        return;
    };
    // SAFETY: per-CPU slot from a successful lookup.
    let pending = unsafe { *p };
    if pending != 0 {
        // SAFETY: as above.
        unsafe { *p = 0 };
        log_rare(pending);
    }
}

/// Logs the pending conditions (`pending`: a bit each, `RARE_*`) at most once a second per
/// CPU, in one line the daemon puts into words, and nothing when the daemon's --log-level
/// disabled warnings (`AYA_LOG_LEVEL`, set at load time). One log statement, so that the
/// verifier's work (and the object) stay small.
#[inline(never)]
fn log_rare(pending: u64) {
    if !aya_log_ebpf::macro_support::level_enabled(aya_log_ebpf::macro_support::Level::Warn) {
        return;
    }
    let Some(last) = SHIELD_RARE.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: the helper takes no arguments and only reads the clock.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    // SAFETY: per-CPU slot from a successful lookup.
    unsafe {
        if *last != 0 && now.wrapping_sub(*last) < RARE_EVERY_NS {
            return;
        }
        *last = now;
    }
    // (aya-log's macros take a context they do not use yet.)
    aya_log_ebpf::warn!(&(), "rare conditions {}", pending);
}

#[inline(always)]
pub(crate) fn verdict(rule_id: u32, reason: Reason, monitor: bool, len: u64) -> u32 {
    if !reason.is_drop() {
        count(rule_id, reason, len);
        xdp_action::XDP_PASS
    } else if monitor {
        count(rule_id, Reason::WouldDrop, len);
        xdp_action::XDP_PASS
    } else {
        count(rule_id, reason, len);
        xdp_action::XDP_DROP
    }
}

#[inline(always)]
pub(crate) fn count(rule_id: u32, reason: Reason, len: u64) {
    if let Some(c) = SHIELD_COUNTERS.get_ptr_mut(counter_index(rule_id, reason)) {
        // SAFETY: per-CPU slot from a successful lookup; no other CPU writes it and the
        // program is not preempted on this CPU while it runs.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += len;
        }
    }
}
