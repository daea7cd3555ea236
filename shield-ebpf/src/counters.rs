//! Counters (per rule × reason, per-CPU), per-rule figures, diagnostics, events.

use crate::*;

#[inline(always)]
pub(crate) fn rule_stat(rule_id: u32, slot: u32) {
    if let Some(c) = SHIELD_RSTATS.get_ptr_mut(rule_stat_index(rule_id, slot)) {
        // SAFETY: per-CPU slot from a successful lookup.
        unsafe { *c += 1 };
    }
}

#[inline(always)]
pub(crate) fn emit(
    kind: u32,
    reason: Reason,
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
        _pad: [0; 4],
    });
    entry.submit(0);
}

#[inline(always)]
pub(crate) fn diag(slot: u32) {
    if let Some(c) = SHIELD_DIAG.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot from a successful lookup.
        unsafe { *c += 1 };
    }
}

/// Counts and returns the action for `reason`, turning drops into `would_drop` passes in
/// monitor mode.
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
