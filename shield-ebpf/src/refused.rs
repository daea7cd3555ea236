//! A per-CPU cache of recent refusals by a source's own limits, so that a flood from one
//! source over its limit is dropped without its state lookup and judgement.
//!
//! `decide` notes a refusal with the time until which the judgement cannot change: when
//! the bucket that refused has its next token (no packet of the class it applies to can
//! be admitted before, on any CPU, so the buckets judged before it only gain tokens), and
//! no later than the next report second (the first refusal of each second goes through
//! `decide` to be reported and struck). A packet of the same source, rule, class and
//! policy generation before then gets the same reason without a lookup. What the cache
//! refuses is counted in the entry (`pending`) and added to the source's `limited` when
//! the source is next judged or its entry is taken by another source, so at most the
//! last second's refusals of a source on each CPU are not in its `limited` yet.
//!
//! Races: another CPU giving back a draw it took just before the refusal (its packet
//! refused by a later bucket) can make a token available up to one interval before the
//! entry says; packets in that window are refused as the bucket's state said when read.
//! Rules with `over_limit = "reset"` are not cached (the RST path needs `decide`).
//!
//! The program asks the cache (`hit`) before it calls `shield_judge`, so a refused packet
//! costs no call (PROG_RUN of a source over its limit: 68 -> 61 ns a run); the call asks it
//! again (`lookup`) to take an entry's pending count.

use shield_common::{REFUSED_SLOTS, Refused};

use crate::*;

#[map]
static SHIELD_REFUSED: PerCpuArray<Refused> = PerCpuArray::with_max_entries(REFUSED_SLOTS, 0);

/// The key as five words (`SourceKey` is 4-byte aligned, 20 bytes).
#[inline(always)]
fn words(key: &SourceKey) -> [u32; 5] {
    // SAFETY: `SourceKey` is plain data of 20 bytes, 4-byte aligned.
    unsafe { core::ptr::read(key as *const SourceKey as *const [u32; 5]) }
}

/// Whether two keys' words are equal: a fold of XORs (an array `==` becomes a call to a
/// byte-loop `bcmp` on bpf).
#[inline(always)]
fn same(a: &[u32; 5], b: &[u32; 5]) -> bool {
    (a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3]) | (a[4] ^ b[4]) == 0
}

#[inline(always)]
fn slot(w: &[u32; 5]) -> u32 {
    let h = (w[0] ^ w[1].rotate_left(7) ^ w[2].rotate_left(13) ^ w[3].rotate_left(19) ^ w[4])
        .wrapping_mul(0x9e37_79b1);
    h >> (32 - REFUSED_SLOTS.trailing_zeros())
}

/// What the cache says of a packet about to be judged.
pub(crate) enum Cached {
    /// Refused for this reason (counted in the entry).
    Refused(Reason),
    /// Judge it; these refusals of the same source are to be added to its `limited`.
    Judge(u32),
}

/// A policy generation as the cache tags entries with it: its low 30 bits (they travel in
/// `shield_judge`'s packed argument; 2^30 reloads apart is the only collision).
#[inline(always)]
pub(crate) fn tag(generation: u32) -> u32 {
    generation & 0x3fff_ffff
}

/// `w`: the key's words (see `words`); `tag`: the policy generation's (`tag`).
#[inline(always)]
pub(crate) fn lookup(w: &[u32; 5], tag: u32, conn_attempt: bool, now: u64) -> Cached {
    let Some(e) = SHIELD_REFUSED.get_ptr_mut(slot(w)) else {
        return Cached::Judge(0);
    };
    // SAFETY: per-CPU slot from a successful lookup; nothing else runs on this CPU meanwhile.
    let e = unsafe { &mut *e };
    if !same(&words(&e.key), w) || e.generation != tag {
        return Cached::Judge(0);
    }
    if now < e.until_ns && e.conn_attempt == conn_attempt as u8 {
        e.pending += 1;
        return Cached::Refused(if e.reason == Reason::PktLimit as u8 {
            Reason::PktLimit
        } else {
            Reason::ConnLimit
        });
    }
    // Lapsed (or the other class): the source is judged, and takes its pending count.
    let pending = e.pending;
    e.pending = 0;
    Cached::Judge(pending)
}

/// `lookup`'s refusal alone, for the caller of `shield_judge` (no call when the cache
/// holds the source): `Some` and counted when the entry refuses this packet; `None` leaves
/// the entry as it was (`lookup` then runs inside the call and takes its pending count).
#[inline(always)]
pub(crate) fn hit(key: &SourceKey, tag: u32, conn_attempt: bool, now: u64) -> Option<Reason> {
    let w = words(key);
    let e = SHIELD_REFUSED.get_ptr_mut(slot(&w))?;
    // SAFETY: as in `lookup`.
    let e = unsafe { &mut *e };
    if !same(&words(&e.key), &w)
        || e.generation != tag
        || now >= e.until_ns
        || e.conn_attempt != conn_attempt as u8
    {
        return None;
    }
    e.pending += 1;
    Some(if e.reason == Reason::PktLimit as u8 {
        Reason::PktLimit
    } else {
        Reason::ConnLimit
    })
}

/// Notes a refusal of `key` (see the module's text): `how` is the class (bit 0, a
/// connection attempt) and the `Reason` code (bits 8-15). An entry of another source that
/// still holds is left alone; one that lapsed, with refusals pending, hands them to that
/// source's state first. Not inlined: its own stack frame.
#[inline(never)]
pub(crate) fn note(key: &SourceKey, generation: u32, how: u32, until_ns: u64, now: u64) {
    let (conn_attempt, reason) = (how & 1 != 0, (how >> 8) as u8);
    let w = words(key);
    let Some(e) = SHIELD_REFUSED.get_ptr_mut(slot(&w)) else {
        return;
    };
    // SAFETY: as in `lookup`.
    let e = unsafe { &mut *e };
    // Another source's entry that still holds keeps its slot: more refused sources than
    // slots, sent in turn, would otherwise take each other's entries before any is hit.
    if !same(&words(&e.key), &w) && e.generation == generation && now < e.until_ns {
        return;
    }
    if e.pending != 0 && !same(&words(&e.key), &w) {
        // By reference: a copy of the key would go on the stack.
        #[allow(clippy::needless_borrows_for_generic_args)]
        let state = SHIELD_SOURCES.get_ptr_mut(&e.key);
        if let Some(state) = state {
            // SAFETY: a map value from a successful lookup; shared by every CPU.
            unsafe {
                atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(
                    &mut (*state).limited,
                    u64::from(e.pending),
                )
            };
        }
        e.pending = 0;
    } else if !same(&words(&e.key), &w) {
        e.pending = 0;
    }
    e.key = *key;
    e.generation = generation;
    e.until_ns = until_ns;
    e.conn_attempt = conn_attempt as u8;
    e.reason = reason;
}
