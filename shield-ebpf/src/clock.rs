//! The data path's clock: `bpf_ktime_get_coarse_ns`, read at most once per jiffy per CPU.
//!
//! The coarse clock is the timekeeper's time as of the last tick: it moves only when the
//! tick moves `jiffies` (both in `tick_do_update_jiffies64`, which also runs when a CPU
//! leaves idle). Its helper is a call with a seqcount loop, about 15-18 ns a packet here,
//! while `bpf_jiffies64` is inlined by the verifier into one load. So each CPU keeps the
//! last (jiffies, coarse ns) pair it read, and calls the helper only when `jiffies` has
//! moved. The time it returns is the coarse clock's, as fresh as the coarse clock is (a
//! tick: 4 ms at HZ=250), except in the window where the tick has moved `jiffies` but not
//! the time yet: a CPU reading then keeps the older time until the next tick, so a reading
//! may lag by up to two ticks instead of one. Limits are judged on the clock of the CPU
//! that handles the packet, which may then be a tick behind another CPU's for up to a tick
//! (without the cache, only for the moment of the update): state another CPU stamped may
//! lie a tick after `now`, so every comparison with it saturates or is ordered (see
//! `shield_common::reset::reset_due`). The pair is written time first, then jiffies: a run
//! that interrupts another on the same CPU between the two stores (BPF_PROG_TEST_RUN runs
//! with softirqs on; XDP itself does not) reads the old jiffies, so it calls the helper
//! itself rather than take a new jiffies with an old time.

use crate::*;

/// Per CPU: the `jiffies` value of the last helper call, and the coarse time it returned.
#[map]
static SHIELD_CLOCK: PerCpuArray<[u64; 2]> = PerCpuArray::with_max_entries(1, 0);

/// The coarse monotonic clock (`bpf_ktime_get_coarse_ns`), cached per CPU per jiffy.
#[inline(always)]
pub(crate) fn coarse_now() -> u64 {
    // SAFETY: the helpers take no arguments and only read the clocks.
    let jiffies = unsafe { bpf_jiffies64() };
    let Some(c) = SHIELD_CLOCK.get_ptr_mut(0) else {
        // SAFETY: as above.
        return unsafe { bpf_ktime_get_coarse_ns() };
    };
    // SAFETY: per-CPU slot from a successful lookup; nothing else runs on this CPU
    // meanwhile.
    let c = unsafe { &mut *c };
    if c[0] == jiffies && c[1] != 0 {
        return c[1];
    }
    // SAFETY: as above.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    // SAFETY: the slot's two words, in this order (see the module's text).
    unsafe {
        core::ptr::write_volatile(&mut c[1], now);
        core::ptr::write_volatile(&mut c[0], jiffies);
    }
    now
}
