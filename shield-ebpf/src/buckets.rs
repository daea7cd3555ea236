//! Per-source judgement: the token buckets (updated with BPF compare-and-exchange so that
//! CPUs racing on one source never admit more than its limit) and escalation.

use crate::*;

/// Judges a packet by its source's own limits. A known source is updated in place (no
/// insert); for a source without state the sketch decides whether it is heavy enough to
/// be tracked exactly, so one-off sources never cost an LRU insert. Not inlined: its own
/// stack frame keeps the program under the 512-byte BPF stack.
#[inline(never)]
pub(crate) fn judge_source(
    rule: &RuleConfig,
    key: &SourceKey,
    pkt: &Packet,
    now: u64,
    seed: u64,
) -> Reason {
    let rule_id = key.rule as u32;
    let (state, fresh) = match SHIELD_SOURCES.get_ptr_mut(key) {
        // Shared by every CPU: `decide` updates it with atomic compare-and-exchange.
        Some(state) => (state, false),
        None => {
            let mut drawn = [0u64; 2];
            let h = sketch::hash(key, seed);
            if !untracked(rule, h, pkt.conn_attempt, now, &mut drawn) {
                rule_stat(rule_id, RS_UNTRACKED);
                return Reason::Pass;
            }
            // Built in a per-CPU scratch slot, not on the stack.
            let Some(scratch) = SHIELD_SCRATCH.get_ptr_mut(0) else {
                return Reason::Pass;
            };
            // SAFETY: per-CPU slot from a successful lookup.
            unsafe { *scratch = promoted_state(rule, drawn, now) };
            (scratch, true)
        }
    };
    // SAFETY: a map value from a successful lookup, valid for the rest of this run (RCU).
    let reason = decide(rule, key, unsafe { &mut *state }, now, pkt.conn_attempt);
    if fresh {
        // A failed insert (memory pressure) only loses this source's history. By reference:
        // a copy of the state would go back on the stack this slot keeps it off.
        // SAFETY: as above.
        #[allow(clippy::needless_borrows_for_generic_args)]
        let inserted = SHIELD_SOURCES.insert(key, unsafe { &*state }, 0);
        if inserted.is_err() {
            diag(DIAG_SOURCE_INSERT_FAILED);
        } else {
            diag(DIAG_SOURCE_INSERTS);
        }
        rule_stat(rule_id, RS_PROMOTED);
    }
    reason
}

/// Attempts of a compare-and-exchange before the packet is judged over the limit. Each
/// lost attempt means another CPU drew from the same bucket meanwhile (progress), so this
/// only bites when several CPUs race on one source at millions of packets per second.
pub(crate) const CAS_TRIES: usize = 8;

/// BPF_CMPXCHG on a u64 in a map value: the value found, and whether it was `old` (and
/// is now `new`).
#[inline(always)]
pub(crate) fn cas(p: *mut u64, old: u64, new: u64) -> (u64, bool) {
    // SAFETY: `p` points to an 8-byte aligned u64 in a map value, valid during this run.
    unsafe {
        atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(p, old, new)
    }
}

/// Draws one token from `bucket` whose TAT is at `p`, atomically against other CPUs:
/// `true` when drawn, `false` when over the limit (or `CAS_TRIES` attempts lost to other
/// CPUs). Not inlined: its retry loop stays out of its callers' stack frames.
#[inline(never)]
pub(crate) fn draw(bucket: &Gcra, p: *mut u64, now: u64) -> bool {
    // SAFETY: as in `cas`.
    let mut old = unsafe { core::ptr::read_volatile(p) };
    for _ in 0..CAS_TRIES {
        let Some(new) = bucket.check(old, now) else {
            return false;
        };
        let (found, swapped) = cas(p, old, new);
        if swapped {
            return true;
        }
        old = found;
    }
    false
}

/// `judge` (shield_common) for state shared by every CPU: each bucket is drawn with a
/// compare-and-exchange, and a refusal by a later bucket gives back the tokens drawn from
/// the earlier ones (an atomic subtraction of one interval from the TAT: tokens are
/// interchangeable, so this undoes the draw even if another CPU drew since; a TAT pulled
/// back below `now` means a full bucket, as before the draw). So CPUs racing on one source
/// never admit more than its limit between them.
#[inline(always)]
pub(crate) fn judge_shared(
    rule: &RuleConfig,
    state: &mut SourceState,
    now: u64,
    conn_attempt: bool,
) -> Reason {
    let tat = state.tat.as_mut_ptr();
    let mut taken = 0u32;
    for i in 0..BUCKETS {
        let conn_bucket = i == B_CONN || i == B_CONN_SUSTAINED;
        let bucket = &rule.buckets[i];
        if (conn_bucket && !conn_attempt) || !bucket.is_enabled() {
            continue;
        }
        // SAFETY: i < BUCKETS: inside the TAT array.
        if draw(bucket, unsafe { tat.add(i) }, now) {
            taken |= 1 << i;
            continue;
        }
        for j in 0..BUCKETS {
            if taken & (1 << j) != 0 {
                // SAFETY: j < BUCKETS; the TAT is at least one interval (it was drawn).
                unsafe {
                    atomic_xsub::<u64, u64, { AtomicOrdering::Relaxed }>(
                        tat.add(j),
                        rule.buckets[j].interval_ns,
                    )
                };
            }
        }
        // SAFETY: a field of the same map value, 8-byte aligned.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&mut state.limited, 1) };
        return if conn_bucket {
            Reason::ConnLimit
        } else {
            Reason::PktLimit
        };
    }
    Reason::Pass
}

/// Judges a packet against the source's buckets; on a refusal, counts strikes, issues the
/// ban the escalation calls for and reports the event.
/// Not inlined: its own stack frame.
#[inline(never)]
pub(crate) fn decide(
    rule: &RuleConfig,
    key: &SourceKey,
    state: &mut SourceState,
    now: u64,
    conn_attempt: bool,
) -> Reason {
    let monitor = rule.flags & RULE_MONITOR != 0;
    let reason = judge_shared(rule, state, now, conn_attempt);
    if !reason.is_drop() {
        return reason;
    }
    if conn_attempt && rule.flags & (RULE_RESET | RULE_MONITOR) == RULE_RESET {
        reset::note(rule, key, now, reason);
    }
    // The first refusal of a second claims it; a CPU that loses the claim to another
    // seeing the same second neither reports nor strikes.
    let last = &mut state.last_report_ns as *mut u64;
    // SAFETY: a field of a map value (or the per-CPU scratch slot), 8-byte aligned.
    let seen = unsafe { core::ptr::read_volatile(last) };
    if !report_due(seen, now) || !cas(last, seen, now).1 {
        return reason;
    }
    let out = escalate_claimed(&rule.escalation, state, now);
    let shown = if monitor { Reason::WouldDrop } else { reason };
    if out.first_in_second {
        emit(EV_LIMITED, shown, key, &out, now, state.limited, 0);
    }
    if out.ban_ns != 0 {
        let host = rule.flags & RULE_BAN_HOST != 0;
        // Evidence decides the strength: a rate of packets proves nothing about their
        // source address, so an automatic ban only stops new attempts (`BAN_ATTEMPTS`).
        let ban = BanValue {
            expires_ns: now.saturating_add(out.ban_ns),
            duration_ns: out.ban_ns,
            rule: key.rule,
            flags: BAN_ATTEMPTS | if monitor { BAN_MONITOR } else { 0 },
            level: out.level.min(255) as u8,
            prefix_len: key.prefix_len,
            _pad: [0; 3],
        };
        let inserted = if host {
            insert_host_ban(key, &ban)
        } else {
            SHIELD_RBANS.insert(*key, ban, 0)
        };
        // A refused insert (the ban map is full) is reported as such, never as a ban.
        let kind = if inserted.is_err() {
            diag(DIAG_BAN_INSERT_FAILED);
            EV_BAN_FAILED
        } else if monitor {
            EV_WOULD_BAN
        } else {
            EV_BAN
        };
        emit(kind, shown, key, &out, now, state.limited, host as u32);
    }
    reason
}
