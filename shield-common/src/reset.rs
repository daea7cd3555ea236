//! `over_limit = "reset"`: when a refused TCP connection attempt may be answered with a RST.
//! The per-source part (at most one RST per second per source and rule) is kept in 32 bits
//! of `SourceState::reset_at`, so the per-source state keeps its size; the per-rule cap is
//! an ordinary GCRA bucket (`RuleConfig::resets`, its TAT in `MAP_RESETS`).

/// `SourceState::reset_at` counts in units of 2^20 ns (1.048576 ms): a shift, not a
/// division (BPF has no 128-bit multiply for dividing by a constant).
pub const RESET_UNIT_SHIFT: u32 = 20;

/// Units between two RSTs to one source: 955 units are 1.0014 s, so that even with the
/// rounding of both stamps down to a unit (less than one unit) two RSTs are at least a
/// second apart.
pub const RESET_EVERY_UNITS: u32 = 955;

/// `now` as a `reset_at` stamp (never 0, which means "never answered").
#[inline(always)]
pub const fn reset_stamp(now: u64) -> u32 {
    let s = (now >> RESET_UNIT_SHIFT) as u32;
    if s == 0 { 1 } else { s }
}

/// Whether a source last answered at `last` (a `reset_stamp`, 0 = never) may get a RST at
/// `now`. A stamp up to a second *after* `now` is not due either: the data path's clock is
/// read per CPU (a CPU may be a tick or two behind the one that stamped), and a stamp
/// "in the future" is one that was just written, not one from 52 days ago. The stamp wraps
/// every 2^52 ns (52 days): a source answered within a second of a multiple of that ago is
/// refused one RST for up to two seconds, which only costs it a SYN retransmission.
#[inline(always)]
pub const fn reset_due(last: u32, now: u64) -> bool {
    let since = reset_stamp(now).wrapping_sub(last);
    last == 0 || (since >= RESET_EVERY_UNITS && since <= u32::MAX - RESET_EVERY_UNITS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bucket::NS_PER_SEC;

    #[test]
    fn at_most_one_reset_a_second() {
        let t0 = 5_000 * NS_PER_SEC + 123;
        assert!(reset_due(0, t0), "a source never answered gets its RST");
        let last = reset_stamp(t0);
        assert!(!reset_due(last, t0));
        assert!(!reset_due(last, t0 + NS_PER_SEC - 1));
        // Every stamp pair at least a second apart, whatever the rounding.
        for off in [0u64, 1, 1 << 19, (1 << 20) - 1] {
            let a = t0 - (t0 & ((1 << 20) - 1)) + off;
            let la = reset_stamp(a);
            let mut t = a;
            while !reset_due(la, t) {
                t += 1 << 10;
            }
            assert!(t - a >= NS_PER_SEC, "RSTs {} ns apart", t - a);
            assert!(t - a < NS_PER_SEC + (3 << 20), "waited {} ns", t - a);
        }
    }

    #[test]
    fn a_clock_behind_the_stamp_is_not_due() {
        // Another CPU stamped at t0; this one's clock is up to two 4 ms ticks behind.
        let t0 = 5_000 * NS_PER_SEC + 123;
        let last = reset_stamp(t0);
        for behind in [1u64, 1 << 20, 4_000_000, 8_000_000, NS_PER_SEC - (2 << 20)] {
            assert!(
                !reset_due(last, t0 - behind),
                "{behind} ns behind the stamp"
            );
        }
        // Far from the stamp either way (the wrap), it is due again.
        assert!(reset_due(last, t0 + 2 * NS_PER_SEC));
        assert!(reset_due(last, t0 + (1 << 51)));
    }

    #[test]
    fn stamp_is_never_zero() {
        assert_ne!(reset_stamp(0), 0);
        assert_ne!(reset_stamp(1 << 52), 0);
    }
}
