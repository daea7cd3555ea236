//! Per-source judgement: the token buckets (updated with BPF compare-and-exchange so that
//! CPUs racing on one source never admit more than its limit) and escalation.

use crate::*;

/// `judge_source` for the program: the source key in scalars, as a global BPF function
/// takes them (see `shield_judge`); `half` is the active half the rule was read from.
#[inline(always)]
pub(crate) fn judge(
    half: u32,
    generation: u32,
    key: &SourceKey,
    conn_attempt: bool,
    now: u64,
    seed: u64,
) -> Reason {
    let at = u64::from(key.rule)
        | u64::from(key.family) << 16
        | u64::from(key.prefix_len) << 24
        | u64::from(half & 1) << 32
        | u64::from(conn_attempt) << 33
        | u64::from(refused::tag(generation)) << 34;
    // SAFETY: `SourceKey` is 20 bytes of plain data, 4-byte aligned: the address is its
    // words 1-4.
    let w = unsafe { core::ptr::read(key as *const SourceKey as *const [u32; 5]) };
    let lo = u64::from(w[1]) | u64::from(w[2]) << 32;
    let hi = u64::from(w[3]) | u64::from(w[4]) << 32;
    // Only these three come back from `judge_source`.
    let code = shield_judge(at, lo, hi, now, seed);
    if code == Reason::ConnLimit as u32 {
        Reason::ConnLimit
    } else if code == Reason::PktLimit as u32 {
        Reason::PktLimit
    } else {
        Reason::Pass
    }
}

/// The judgement by a source's own limits (`judge_source`, with the sketch, the buckets,
/// escalation and bans) as a global BPF function: the verifier checks it once, on its own,
/// instead of once for every state the program reaches it in (that cost the program about
/// 320,000 verifier instructions once SYN cookies and resets were both in). A global
/// function takes scalars only (at most five): `at` holds the key's rule (bits 0-15),
/// family (16-23) and prefix length (24-31), the active half (bit 32) and whether this is a
/// connection attempt (bit 33), the policy generation's refusal-cache tag (bits 34-63);
/// `lo`/`hi` the masked address's bytes 0-7 and 8-15. The
/// rule is read again from the same half; the key is rebuilt in a per-CPU slot. A source
/// the refusal cache holds is refused from it (refused.rs); a refusal judged here is noted
/// in it. Returns the `Reason`'s code.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn shield_judge(at: u64, lo: u64, hi: u64, now: u64, seed: u64) -> u32 {
    let rule_id = (at & 0xffff) as u32;
    let half = ((at >> 32) & 1) as u32;
    let conn_attempt = (at >> 33) & 1 != 0;
    let tag = (at >> 34) as u32;
    // In words: `at`'s low 32 bits are the key's first word (rule, family, prefix length,
    // little-endian), `lo`/`hi` its address.
    let w = [
        at as u32,
        lo as u32,
        (lo >> 32) as u32,
        hi as u32,
        (hi >> 32) as u32,
    ];
    // A source refused a moment ago is refused again without its state (refused.rs).
    let pending = match refused::lookup(&w, tag, conn_attempt, now) {
        refused::Cached::Refused(reason) => return reason as u32,
        refused::Cached::Judge(pending) => pending,
    };
    let Some(rule) = SHIELD_RULES.get(half * RULE_SLOTS + rule_id) else {
        return Reason::Pass as u32;
    };
    let Some(slot) = SHIELD_JUDGE_KEY.get_ptr_mut(0) else {
        return Reason::Pass as u32;
    };
    // SAFETY: per-CPU slot from a successful lookup, nothing else uses it during this run;
    // `SourceKey` is 20 bytes of plain data, 4-byte aligned.
    let key = unsafe {
        (slot as *mut [u32; 5]).write(w);
        &*slot
    };
    let reason = judge_source(rule, key, conn_attempt, now, seed, pending);
    if reason.is_drop() {
        let until = judged_until();
        if until > now {
            let how = u32::from(conn_attempt) | (reason as u32) << 8;
            refused::note(key, tag, how, until, now);
        }
    }
    reason as u32
}

/// Written by `decide` on every refusal: until when it holds (0: not to be cached; see
/// refused.rs). Per CPU, this run's alone.
#[map]
static SHIELD_REFUSED_UNTIL: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn judged_until() -> u64 {
    match SHIELD_REFUSED_UNTIL.get_ptr(0) {
        // SAFETY: per-CPU slot from a successful lookup.
        Some(p) => unsafe { *p },
        None => 0,
    }
}

/// Judges a packet by its source's own limits. A known source is updated in place (no
/// insert); for a source without state the sketch decides whether it is heavy enough to
/// be tracked exactly, so one-off sources never cost an LRU insert. Inlined into
/// `shield_judge`, whose own stack frame keeps the program under the 512-byte BPF stack.
#[inline(always)]
fn judge_source(
    rule: &RuleConfig,
    key: &SourceKey,
    conn_attempt: bool,
    now: u64,
    seed: u64,
    pending: u32,
) -> Reason {
    let rule_id = key.rule as u32;
    // Only a source whose filter bit is set can have state: the others skip the lookup.
    let (word, mask) = shield_common::sfilter_bit(key);
    let found = if sfilter_has(word, mask) {
        SHIELD_SOURCES.get_ptr_mut(key)
    } else {
        None
    };
    let (state, fresh) = match found {
        // Shared by every CPU: `decide` updates it with atomic compare-and-exchange.
        Some(state) => (state, false),
        None => {
            // Written by `untracked` when it promotes the source (the only case it is read):
            // no zero-fill, which bpf makes a call to a byte-loop `memset` on every
            // untracked packet.
            let mut drawn = core::mem::MaybeUninit::<[u64; 2]>::uninit();
            let h = sketch::hash(key, seed);
            if !untracked(rule, h, conn_attempt, now, drawn.as_mut_ptr()) {
                rule_stat(rule_id, RS_UNTRACKED);
                return Reason::Pass;
            }
            // Built in a per-CPU scratch slot, not on the stack.
            let Some(scratch) = SHIELD_SCRATCH.get_ptr_mut(0) else {
                return Reason::Pass;
            };
            // SAFETY: per-CPU slot from a successful lookup.
            // (`untracked` returned true: it wrote `drawn`.)
            unsafe { *scratch = promoted_state(rule, drawn.assume_init(), now) };
            (scratch, true)
        }
    };
    if pending != 0 {
        // SAFETY: a map value (or the per-CPU scratch slot), 8-byte aligned field.
        unsafe {
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(
                &mut (*state).limited,
                u64::from(pending),
            )
        };
    }
    // SAFETY: a map value from a successful lookup, valid for the rest of this run (RCU).
    let reason = decide(rule, key, unsafe { &mut *state }, now, conn_attempt);
    if fresh {
        // A failed insert (memory pressure) only loses this source's history. By reference:
        // a copy of the state would go back on the stack this slot keeps it off.
        // The bit first: a key in the table always has its bit (see `sfilter_bit`).
        sfilter_set(word, mask);
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

/// Whether a key whose filter bit is (`word`, `mask`) may be in the source table: its bit
/// is set in either half of the filter (the daemon rebuilds one while the other holds).
#[inline(always)]
fn sfilter_has(word: u32, mask: u64) -> bool {
    let half = |i: u32| match SHIELD_SFILTER.get(i) {
        Some(w) => *w & mask != 0,
        None => true,
    };
    half(word) || half(SFILTER_WORDS + word)
}

/// Sets a key's filter bit in both halves (a read first: a set bit leaves the shared line
/// clean).
#[inline(always)]
fn sfilter_set(word: u32, mask: u64) {
    for i in [word, SFILTER_WORDS + word] {
        if let Some(w) = SHIELD_SFILTER.get_ptr_mut(i) {
            // SAFETY: an array slot from a successful lookup, 8-byte aligned; other CPUs
            // and the daemon may set or clear other bits of it at the same time.
            unsafe {
                if *w & mask == 0 {
                    core::intrinsics::atomic_or::<u64, u64, { AtomicOrdering::Relaxed }>(w, mask);
                }
            }
        }
    }
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
/// On a refusal, also when the bucket that refused has its next token (`Refusal::retry_ns`).
pub(crate) fn judge_shared(
    rule: &RuleConfig,
    state: &mut SourceState,
    now: u64,
    conn_attempt: bool,
) -> Refusal {
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
        // SAFETY: i < BUCKETS, as above. (After CAS_TRIES lost attempts the bucket may
        // conform now: the time is then not in the future, and nothing is cached.)
        let tat_i = unsafe { core::ptr::read_volatile(tat.add(i)) };
        return Refusal {
            reason: if conn_bucket {
                Reason::ConnLimit
            } else {
                Reason::PktLimit
            },
            retry_ns: tat_i.saturating_sub(bucket.tolerance_ns),
        };
    }
    Refusal {
        reason: Reason::Pass,
        retry_ns: 0,
    }
}

/// `judge_shared`'s answer.
pub(crate) struct Refusal {
    pub(crate) reason: Reason,
    /// When the bucket that refused conforms again (0 for `Pass`).
    pub(crate) retry_ns: u64,
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
    let refusal = judge_shared(rule, state, now, conn_attempt);
    let reason = refusal.reason;
    if !reason.is_drop() {
        return reason;
    }
    let reason = report_refusal(rule, key, state, now, conn_attempt, reason);
    // Until the refusing bucket's next token, and at most to the next report second; 0
    // (nothing cached) for a rule that answers with RSTs. Written on every refusal: the
    // caller reads it after each one.
    let until = if rule.flags & RULE_RESET == 0 {
        refusal.retry_ns.min(
            state
                .last_report_ns
                .saturating_add(shield_common::bucket::NS_PER_SEC),
        )
    } else {
        0
    };
    if let Some(p) = SHIELD_REFUSED_UNTIL.get_ptr_mut(0) {
        // SAFETY: per-CPU slot from a successful lookup; this run's alone.
        unsafe { *p = until };
    }
    reason
}

/// A refusal's consequences: the RST note, the report, strikes and the ban.
#[inline(always)]
fn report_refusal(
    rule: &RuleConfig,
    key: &SourceKey,
    state: &mut SourceState,
    now: u64,
    conn_attempt: bool,
    reason: Reason,
) -> Reason {
    let monitor = rule.flags & RULE_MONITOR != 0;
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
        emit(EV_LIMITED, shown, reason, key, &out, now, state.limited, 0);
    }
    if out.ban_ns != 0 {
        let host = rule.flags & RULE_BAN_HOST != 0;
        let ban = shield_common::judge::automatic_ban(key, &out, monitor, now);
        // A ban in force that this one would end sooner, or make monitor-only, stays
        // (`shield_common::ban_stays`): no insert, no ban event.
        if stored_ban(key, host).is_some_and(|b| shield_common::ban_stays(&b, &ban, now)) {
            return reason;
        }
        count_insert(if host {
            shield_common::BAN_COUNT_HOST
        } else {
            u32::from(key.rule)
        });
        let inserted = if host {
            let r = insert_host_ban(key, &ban);
            bump_epoch();
            r
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
        emit(
            kind,
            shown,
            reason,
            key,
            &out,
            now,
            state.limited,
            host as u32,
        );
    }
    reason
}
