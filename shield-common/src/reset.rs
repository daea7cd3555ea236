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
/// `now`. The stamp wraps every 2^52 ns (52 days): a source answered exactly a multiple of
/// that ago is refused one RST for a second, which only costs it a SYN retransmission.
#[inline(always)]
pub const fn reset_due(last: u32, now: u64) -> bool {
    last == 0 || reset_stamp(now).wrapping_sub(last) >= RESET_EVERY_UNITS
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
    fn stamp_is_never_zero() {
        assert_ne!(reset_stamp(0), 0);
        assert_ne!(reset_stamp(1 << 52), 0);
    }
}
