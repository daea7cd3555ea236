//! Token buckets as GCRA (generic cell rate algorithm, "virtual scheduling").
//!
//! A bucket of capacity `burst` refilled at one token per `interval_ns` is equivalent to a
//! single per-source timestamp, the theoretical arrival time (TAT): a packet conforms when
//! `now >= tat - tolerance` with `tolerance = interval * (burst - 1)`, and then moves
//! `tat` to `max(tat, now) + interval`. One `u64` of state per bucket, integer only, no
//! division on the per-packet path (the interval is computed once, in user space).
//!
//! A fresh source (TAT 0) holds a full bucket. A non-conforming packet leaves the state
//! untouched, so drops never consume tokens.

/// One compiled limit: `interval_ns == 0` means "no limit".
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Gcra {
    /// Nanoseconds per token (1 / rate).
    pub interval_ns: u64,
    /// `interval_ns * (burst - 1)`: how far ahead of `now` the TAT may run.
    pub tolerance_ns: u64,
}
const _: () = assert!(core::mem::size_of::<Gcra>() == 16);

/// Nanoseconds per second.
pub const NS_PER_SEC: u64 = 1_000_000_000;

impl Gcra {
    pub const DISABLED: Gcra = Gcra {
        interval_ns: 0,
        tolerance_ns: 0,
    };

    /// A bucket admitting `count` tokens per `period_ns`, holding at most `burst` tokens.
    /// `None` when the numbers make no bucket: zero count or burst, a rate above one token
    /// per nanosecond, or a capacity that overflows 64-bit nanoseconds.
    pub fn new(count: u64, period_ns: u64, burst: u64) -> Option<Gcra> {
        if count == 0 || burst == 0 || period_ns == 0 {
            return None;
        }
        let interval_ns = period_ns / count;
        if interval_ns == 0 {
            return None;
        }
        let tolerance_ns = interval_ns.checked_mul(burst - 1)?;
        // Keep `tat` arithmetic (now + tolerance + interval) far from wrapping.
        if tolerance_ns > u64::MAX / 4 {
            return None;
        }
        Some(Gcra {
            interval_ns,
            tolerance_ns,
        })
    }

    #[inline(always)]
    pub const fn is_enabled(&self) -> bool {
        self.interval_ns != 0
    }

    /// Judges one token at `now` against state `tat`: `Some(new_tat)` when it conforms
    /// (the caller stores it), `None` when over the limit (state unchanged).
    /// A disabled bucket always conforms and keeps `tat` as it is.
    #[inline(always)]
    pub fn check(&self, tat: u64, now: u64) -> Option<u64> {
        if self.interval_ns == 0 {
            return Some(tat);
        }
        if now < tat.saturating_sub(self.tolerance_ns) {
            return None;
        }
        let base = if tat > now { tat } else { now };
        Some(base.saturating_add(self.interval_ns))
    }

    /// Judges `n` tokens at once (a request of cost `n`, user space only): conforms when
    /// the bucket holds `n` tokens at `now`. `check_n(tat, now, 1) == check(tat, now)`.
    pub fn check_n(&self, tat: u64, now: u64, n: u64) -> Option<u64> {
        if self.interval_ns == 0 {
            return Some(tat);
        }
        let base = if tat > now { tat } else { now };
        let next = base.saturating_add(self.interval_ns.saturating_mul(n));
        if next - now > self.tolerance_ns.saturating_add(self.interval_ns) {
            return None;
        }
        Some(next)
    }

    /// Nanoseconds from `now` until `check_n(tat, _, n)` conforms (0: it does now).
    pub fn wait_n(&self, tat: u64, now: u64, n: u64) -> u64 {
        if self.interval_ns == 0 {
            return 0;
        }
        tat.saturating_add(self.interval_ns.saturating_mul(n.saturating_sub(1)))
            .saturating_sub(self.tolerance_ns)
            .saturating_sub(now)
    }

    /// The burst (capacity in tokens) this bucket was built with.
    pub fn burst(&self) -> u64 {
        self.tolerance_ns
            .checked_div(self.interval_ns)
            .map_or(0, |n| n + 1)
    }

    /// Tokens per second, in thousandths (for display), rounded.
    pub fn rate_milli_per_sec(&self) -> u64 {
        (u128::from(NS_PER_SEC) * 1000)
            .checked_div(u128::from(self.interval_ns))
            .map_or(0, |r| r as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    /// Offers one token every `step_ns` from `start` for `duration_ns`, returns how many
    /// conformed.
    fn offer(g: &Gcra, tat: &mut u64, start: u64, step_ns: u64, duration_ns: u64) -> u64 {
        let mut admitted = 0;
        let mut t = start;
        while t < start + duration_ns {
            if let Some(n) = g.check(*tat, t) {
                *tat = n;
                admitted += 1;
            }
            t += step_ns;
        }
        admitted
    }

    #[test]
    fn fresh_source_gets_exactly_burst_at_one_instant() {
        let g = Gcra::new(5, NS_PER_SEC, 10).unwrap();
        let now = 123 * NS_PER_SEC;
        let mut tat = 0;
        let mut admitted = 0;
        for _ in 0..100 {
            if let Some(n) = g.check(tat, now) {
                tat = n;
                admitted += 1;
            }
        }
        assert_eq!(
            admitted, 10,
            "a fresh source must get exactly `burst` tokens at once"
        );
        assert_eq!(g.burst(), 10);
    }

    #[test]
    fn cost_n_draws_n_tokens_and_matches_check_for_one() {
        // 5/s, burst 10: a cost of 5 passes twice at one instant, then waits for 5 tokens.
        let g = Gcra::new(5, NS_PER_SEC, 10).unwrap();
        let now = 40 * NS_PER_SEC;
        let mut tat = 0;
        let mut admitted = 0;
        for _ in 0..10 {
            if let Some(n) = g.check_n(tat, now, 5) {
                tat = n;
                admitted += 1;
            }
        }
        assert_eq!(admitted, 2);
        assert_eq!(
            g.wait_n(tat, now, 5),
            NS_PER_SEC,
            "5 tokens at 5/s: one second"
        );
        assert!(g.check_n(tat, now + NS_PER_SEC - 1, 5).is_none());
        assert!(g.check_n(tat, now + NS_PER_SEC, 5).is_some());
        assert_eq!(g.wait_n(tat, now, 1), NS_PER_SEC / 5);
        // More than the burst never passes.
        assert!(g.check_n(0, now, 11).is_none());
        // Cost 1 is check, state for state.
        let mut t1 = 0;
        let mut t2 = 0;
        for i in 0..50u64 {
            let at = now + i * 37 * MS;
            let (a, b) = (g.check(t1, at), g.check_n(t2, at, 1));
            assert_eq!(a, b, "at step {i}");
            if let Some(a) = a {
                t1 = a;
                t2 = a;
            }
        }
        // A daily rate: no overflow, 86,400 s of nanoseconds per token.
        let d = Gcra::new(20, 86_400 * NS_PER_SEC, 20).unwrap();
        assert_eq!(d.burst(), 20);
        let mut tat = 0;
        let admitted = (0..25)
            .filter(|_| match d.check(tat, now) {
                Some(n) => {
                    tat = n;
                    true
                }
                None => false,
            })
            .count();
        assert_eq!(admitted, 20);
    }

    #[test]
    fn flood_is_held_to_rate_after_burst() {
        // 5/s, burst 10, offered 1000/s for 10 s: burst + rate * 10 s (+1 for the edge).
        let g = Gcra::new(5, NS_PER_SEC, 10).unwrap();
        let mut tat = 0;
        let admitted = offer(&g, &mut tat, 50 * NS_PER_SEC, MS, 10 * NS_PER_SEC);
        assert!(
            (59..=61).contains(&admitted),
            "expected about 60 admitted, got {admitted}"
        );
    }

    #[test]
    fn below_rate_nothing_is_dropped() {
        let g = Gcra::new(100, NS_PER_SEC, 1).unwrap();
        let mut tat = 0;
        // Exactly at the rate, burst 1: every one conforms.
        let admitted = offer(&g, &mut tat, NS_PER_SEC, 10 * MS, NS_PER_SEC);
        assert_eq!(admitted, 100);
    }

    #[test]
    fn bucket_refills_after_idle() {
        let g = Gcra::new(10, NS_PER_SEC, 5).unwrap();
        let mut tat = 0;
        let t0 = 7 * NS_PER_SEC;
        for _ in 0..5 {
            tat = g.check(tat, t0).unwrap();
        }
        assert!(g.check(tat, t0).is_none(), "empty bucket must refuse");
        // One interval later exactly one token is back.
        let t1 = t0 + 100 * MS;
        tat = g.check(tat, t1).expect("one token after one interval");
        assert!(g.check(tat, t1).is_none());
        // After a long idle, the bucket is full again, never more than burst.
        let t2 = t1 + 3600 * NS_PER_SEC;
        let mut n = 0;
        while let Some(next) = g.check(tat, t2) {
            tat = next;
            n += 1;
        }
        assert_eq!(n, 5);
    }

    #[test]
    fn refusal_leaves_state_untouched() {
        let g = Gcra::new(1, NS_PER_SEC, 1).unwrap();
        let tat = g.check(0, NS_PER_SEC).unwrap();
        assert!(g.check(tat, NS_PER_SEC + 1).is_none());
        assert_eq!(g.check(tat, 2 * NS_PER_SEC), Some(3 * NS_PER_SEC));
    }

    #[test]
    fn disabled_bucket_always_conforms_and_keeps_state() {
        let g = Gcra::DISABLED;
        assert!(!g.is_enabled());
        assert_eq!(g.check(42, 0), Some(42));
        assert_eq!(g.burst(), 0);
    }

    #[test]
    fn coarse_clock_keeps_long_run_rate_exact() {
        // A clock that only moves in 4 ms steps (jiffies at HZ=250) must not change the
        // long-run admitted count by more than one tick's worth of tokens.
        let g = Gcra::new(1000, NS_PER_SEC, 50).unwrap();
        let mut tat = 0;
        let mut admitted = 0u64;
        let start = 10 * NS_PER_SEC;
        for i in 0..(5 * 100_000u64) {
            let fine = start + i * 10_000; // 100k packets/s offered
            let coarse = fine - fine % (4 * MS);
            if let Some(n) = g.check(tat, coarse) {
                tat = n;
                admitted += 1;
            }
        }
        let expected = 50 + 5 * 1000;
        assert!(
            admitted.abs_diff(expected) <= 5,
            "admitted {admitted}, expected {expected} within one 4 ms tick"
        );
    }

    #[test]
    fn clock_edge_cases_do_not_wrap() {
        let g = Gcra::new(1, 3600 * NS_PER_SEC, 1_000_000).unwrap();
        // now = 0 (boot) and huge tat: no underflow panic, refusal.
        assert!(g.check(u64::MAX - 1, 0).is_none());
        // now near the top: saturates instead of wrapping.
        assert_eq!(g.check(0, u64::MAX), Some(u64::MAX));
        // A clock that goes backwards (per-CPU skew) never admits more than the burst.
        let g = Gcra::new(10, NS_PER_SEC, 2).unwrap();
        let t = 100 * NS_PER_SEC;
        let tat = g.check(0, t).unwrap();
        let tat = g.check(tat, t).unwrap();
        assert!(g.check(tat, t - 60 * MS).is_none());
    }

    #[test]
    fn absurd_values_make_no_bucket() {
        assert!(Gcra::new(0, NS_PER_SEC, 1).is_none());
        assert!(Gcra::new(1, NS_PER_SEC, 0).is_none());
        assert!(Gcra::new(2 * NS_PER_SEC, NS_PER_SEC, 1).is_none());
        assert!(Gcra::new(1, 3600 * NS_PER_SEC, u64::MAX / 2).is_none());
    }

    #[test]
    fn rate_display_round_trips() {
        let g = Gcra::new(600, 60 * NS_PER_SEC, 40).unwrap();
        assert_eq!(g.rate_milli_per_sec(), 10_000);
        assert_eq!(g.burst(), 40);
    }
}
