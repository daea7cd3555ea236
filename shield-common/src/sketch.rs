//! Count-min sketch of per-source backlogs: how a source's first packets are judged
//! without an LRU insert.
//!
//! A random-source flood sends one or two packets per source. Giving each of them exact
//! state costs an LRU insert and an eviction per packet and pushes real clients' state out.
//! Instead, a source that has no state yet is counted in a fixed-size sketch (two rows of
//! `SKETCH_WIDTH` cells per class: connection attempts, packets; a source's two cells
//! share a cache line). A cell is a leaky counter kept as a time (like a GCRA TAT):
//! `max(cell, now) + 2^shift` per packet, so the backlog `(cell - now) >> shift` is the
//! number of recent packets not yet leaked away. Count-min reads the smallest of the
//! source's cells (collisions only ever overestimate) and updates conservatively (cells
//! never rise above that estimate plus one packet).
//!
//! A source stays untracked while its backlog is below the rule's `slack`; the packet that
//! reaches it is *promoted*: exact per-source state is created with the backlog already
//! drawn from its buckets. Because `slack <= burst - 1` and the sketch leaks no faster than
//! the rule's slowest bucket (`2^shift >= interval`), an untracked source never gets more
//! than the exact limiter would give it, and a burst sent at one instant is admitted exactly
//! `burst` times: `slack` untracked, then `burst - slack` by the exact state.

use crate::{
    B_CONN, B_CONN_SUSTAINED, B_PKT, B_PKT_SUSTAINED, BUCKETS, Gcra, RuleConfig, SourceKey,
    SourceState,
};

/// Cells per row (a power of two): 2^18, so that a random-source flood saturates the
/// sketch of a `5/s` rule (a cell leaks one packet per 2^28 ns) only above about
/// `SKETCH_WIDTH * 10^9 / 2^28`, 977,000 packets a second (README, "the sketch").
pub const SKETCH_WIDTH_BITS: u32 = 18;
pub const SKETCH_WIDTH: u32 = 1 << SKETCH_WIDTH_BITS;
/// Rows per class (count-min depth).
pub const SKETCH_ROWS: u32 = 2;
/// Classes: connection attempts and packets, counted apart so that each bucket family gets
/// its own exact backlog.
pub const CLASS_CONN: usize = 0;
pub const CLASS_PKT: usize = 1;
pub const SKETCH_CLASSES: u32 = 2;
/// Cells in `SHIELD_SKETCH` (u64 each: 8 MiB).
pub const SKETCH_CELLS: u32 = SKETCH_CLASSES * SKETCH_ROWS * SKETCH_WIDTH;
/// Cells in a cache line (64 bytes): a source's cells in both rows share one line, so a
/// packet costs one cache miss, not one per row. The map is page-aligned (mmapable) so
/// that its lines are the CPU's.
pub const SKETCH_LINE: u32 = 8;
/// Most packets a source may send untracked. Small, so that a collision (which promotes a
/// source early and charges it the estimated backlog) costs a real client little.
pub const MAX_SLACK: u8 = 4;

/// Index in `SHIELD_SKETCH` of `row`'s cell for a hash. The hash's low bits pick a line of
/// the class, its high half a cell of the line for each row: two different cells, so the
/// estimate is still the smaller of two counters that other sources share independently.
#[inline(always)]
pub const fn cell_index(class: usize, row: u32, hash: u64) -> u32 {
    let lines = SKETCH_ROWS * SKETCH_WIDTH / SKETCH_LINE;
    let line = (hash as u32) & (lines - 1);
    let first = ((hash >> 32) as u32) & (SKETCH_LINE - 1);
    let cell = if row == 0 {
        first
    } else {
        // 1..=7 cells on (mod 8): never the first row's cell.
        (first + 1 + ((hash >> 35) as u32) % (SKETCH_LINE - 1)) & (SKETCH_LINE - 1)
    };
    (class as u32) * SKETCH_ROWS * SKETCH_WIDTH + line * SKETCH_LINE + cell
}

/// splitmix64's finaliser: a cheap, well-mixed 64-bit hash step (multiplies, no division).
#[inline(always)]
const fn mix(mut v: u64) -> u64 {
    v ^= v >> 30;
    v = v.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    v ^= v >> 27;
    v = v.wrapping_mul(0x94d0_49bb_1331_11eb);
    v ^ (v >> 31)
}

/// Hash of a source key under a per-daemon random `seed` (so that an attacker cannot pick
/// addresses that collide with a victim's cells). The two rows use its two halves.
#[inline(always)]
pub fn hash(key: &SourceKey, seed: u64) -> u64 {
    let a = key.addr;
    let hi = u64::from_ne_bytes([a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]]);
    let lo = u64::from_ne_bytes([a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15]]);
    let tag = (key.rule as u64) | (key.family as u64) << 16 | (key.prefix_len as u64) << 24;
    mix(mix(mix(seed ^ tag) ^ hi) ^ lo)
}

/// Backlog (packets not yet fully leaked, rounded up) that the two cells give, and the
/// cell time it is read from. Count-min: the smaller cell is the better estimate. Rounding
/// up matters: four packets at `t` must still read as four a moment later, or a fifth
/// would slip through untracked.
#[inline(always)]
pub fn backlog(cells: [u64; 2], now: u64, shift: u8) -> (u64, u64) {
    let a = if cells[0] > now { cells[0] } else { now };
    let b = if cells[1] > now { cells[1] } else { now };
    let base = if a < b { a } else { b };
    let shift = shift & 63;
    let round = (1u64 << shift) - 1;
    ((base - now).saturating_add(round) >> shift, base)
}

/// The value a cell takes when one packet is counted on top of estimate `base`
/// (conservative update: `max(cell, base + one packet)`).
#[inline(always)]
pub fn counted(cell: u64, base: u64, shift: u8) -> u64 {
    let next = base.saturating_add(1u64 << (shift & 63));
    if cell > next { cell } else { next }
}

/// Per-class sketch settings of a rule, compiled from its buckets (part of `RuleConfig`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassSketch {
    /// Leak: one packet per `2^shift` ns, no faster than the class's slowest bucket.
    pub shift: u8,
    /// Packets a source may send untracked (0: track from the first packet).
    pub slack: u8,
}

/// Sketch settings for a class whose buckets are `buckets` (disabled ones are ignored).
pub fn class_sketch(buckets: &[Gcra]) -> ClassSketch {
    let mut shift = 0u8;
    let mut slack = MAX_SLACK;
    for b in buckets.iter().filter(|b| b.is_enabled()) {
        // Smallest power of two >= the interval.
        let bits = (64 - (b.interval_ns - 1).leading_zeros()) as u8;
        shift = shift.max(bits);
        slack = slack.min(b.burst().saturating_sub(1).min(MAX_SLACK as u64) as u8);
    }
    ClassSketch { shift, slack }
}

/// What an untracked source's packet leads to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Stay untracked: the packet passes and is counted in the sketch.
    Untracked,
    /// Create exact state with these backlogs (connection class, packet class) drawn.
    Promote([u64; 2]),
}

/// What a promoted source has drawn in a class: its backlog, at most the class's slack
/// (more can only come from collisions: the source itself sent at most `slack` untracked).
#[inline(always)]
pub fn drawn(backlog: u64, slack: u8) -> u64 {
    let s = slack as u64;
    if backlog < s { backlog } else { s }
}

/// Decides from the per-class backlogs before this packet. `active[c]`: this packet counts
/// in class `c` (a connection attempt under a `connections` limit; any packet under a
/// `packets` limit). Only active classes' backlogs are read; on promotion, the caller
/// fills in an inactive class's draw (`drawn`) if the rule has that limit.
#[inline(always)]
pub fn admission(backlogs: [u64; 2], active: [bool; 2], slack: [u8; 2]) -> Admission {
    let c = active[CLASS_CONN] && backlogs[CLASS_CONN] >= slack[CLASS_CONN] as u64;
    let p = active[CLASS_PKT] && backlogs[CLASS_PKT] >= slack[CLASS_PKT] as u64;
    if !(c || p) {
        return Admission::Untracked;
    }
    Admission::Promote([
        drawn(backlogs[CLASS_CONN], slack[CLASS_CONN]),
        drawn(backlogs[CLASS_PKT], slack[CLASS_PKT]),
    ])
}

/// State for a promoted source: its buckets start with `drawn` packets per class already
/// taken at `now` (then the promoting packet is judged as usual).
#[inline(always)]
pub fn promoted_state(rule: &RuleConfig, drawn: [u64; 2], now: u64) -> SourceState {
    let mut st = SourceState::NEW;
    let class = [CLASS_CONN, CLASS_CONN, CLASS_PKT, CLASS_PKT];
    let order = [B_CONN, B_CONN_SUSTAINED, B_PKT, B_PKT_SUSTAINED];
    for i in 0..BUCKETS {
        let b = rule.buckets[order[i]];
        let n = if class[i] == CLASS_CONN {
            drawn[CLASS_CONN]
        } else {
            drawn[CLASS_PKT]
        };
        if b.interval_ns != 0 && n != 0 {
            // n <= slack <= burst - 1: at most the bucket's tolerance, no overflow.
            st.tat[order[i]] = now + n * b.interval_ns;
        }
    }
    st
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{bucket::NS_PER_SEC, judge::judge, reason::Reason};
    use std::collections::HashMap;

    fn rule(conn: Gcra, pkt: Gcra) -> RuleConfig {
        let mut r = RuleConfig {
            buckets: [conn, Gcra::DISABLED, pkt, Gcra::DISABLED],
            ..Default::default()
        };
        r.sketch = [
            class_sketch(&r.buckets[0..2]),
            class_sketch(&r.buckets[2..4]),
        ];
        r
    }

    /// The data path's untracked-source logic on host memory: sketch cells and an exact
    /// state table.
    struct Model {
        cells: Vec<u64>,
        states: HashMap<SourceKey, SourceState>,
        promotions: u32,
    }

    impl Model {
        fn new() -> Self {
            Model {
                cells: vec![0; SKETCH_CELLS as usize],
                states: HashMap::new(),
                promotions: 0,
            }
        }

        fn packet(&mut self, r: &RuleConfig, key: SourceKey, now: u64, conn: bool) -> Reason {
            if let Some(st) = self.states.get_mut(&key) {
                return judge(r, st, now, conn);
            }
            let h = hash(&key, 42);
            let active = [conn && r.has_conn_limit(), r.has_pkt_limit()];
            let mut backlogs = [0u64; 2];
            let mut bases = [0u64; 2];
            let read = |class: usize| {
                let cells = [0, 1].map(|row| self.cells[cell_index(class, row, h) as usize]);
                backlog(cells, now, r.sketch[class].shift)
            };
            for class in [CLASS_CONN, CLASS_PKT] {
                if active[class] {
                    (backlogs[class], bases[class]) = read(class);
                }
            }
            let slack = [r.sketch[0].slack, r.sketch[1].slack];
            match admission(backlogs, active, slack) {
                Admission::Untracked => {
                    for class in [CLASS_CONN, CLASS_PKT] {
                        if active[class] {
                            for row in [0, 1] {
                                let i = cell_index(class, row, h) as usize;
                                self.cells[i] =
                                    counted(self.cells[i], bases[class], r.sketch[class].shift);
                            }
                        }
                    }
                    Reason::Pass
                }
                Admission::Promote(mut d) => {
                    // A packet that is not a connection attempt still draws the source's
                    // untracked connections.
                    if !active[CLASS_CONN] && r.has_conn_limit() {
                        d[CLASS_CONN] = drawn(read(CLASS_CONN).0, slack[CLASS_CONN]);
                    }
                    self.promotions += 1;
                    let mut st = promoted_state(r, d, now);
                    let v = judge(r, &mut st, now, conn);
                    self.states.insert(key, st);
                    v
                }
            }
        }
    }

    fn key(i: u32) -> SourceKey {
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&(0x0a00_0000 | i).to_be_bytes());
        SourceKey {
            rule: 1,
            family: 4,
            prefix_len: 32,
            addr,
        }
    }

    const S: u64 = NS_PER_SEC;

    #[test]
    fn settings_follow_the_slowest_bucket_and_the_smallest_burst() {
        let fast = Gcra::new(100, S, 50).unwrap(); // 10 ms
        let slow = Gcra::new(600, 60 * S, 600).unwrap(); // 100 ms
        let c = class_sketch(&[fast, slow]);
        assert_eq!(c.shift, 27, "2^27 ns = 134 ms >= 100 ms");
        assert_eq!(c.slack, MAX_SLACK);
        let tiny = Gcra::new(5, S, 2).unwrap();
        assert_eq!(class_sketch(&[tiny]).slack, 1, "slack <= burst - 1");
        let one = Gcra::new(5, S, 1).unwrap();
        assert_eq!(
            class_sketch(&[one]).slack,
            0,
            "burst 1: tracked from the first packet"
        );
        assert_eq!(class_sketch(&[Gcra::DISABLED; 2]).slack, MAX_SLACK);
    }

    #[test]
    fn a_burst_at_one_instant_is_admitted_exactly_burst_times() {
        for burst in [1u64, 2, 3, 5, 20] {
            let r = rule(Gcra::new(10, S, burst).unwrap(), Gcra::DISABLED);
            let mut m = Model::new();
            let now = 100 * S;
            let admitted = (0..100)
                .filter(|_| m.packet(&r, key(7), now, true) == Reason::Pass)
                .count() as u64;
            assert_eq!(admitted, burst, "burst {burst}");
            assert_eq!(m.promotions, 1);
        }
    }

    #[test]
    fn a_burst_spread_over_clock_ticks_is_still_exact() {
        // 1/min: the sketch leaks one packet per 2^36 ns; packets 4 ms apart (one coarse
        // clock tick) must not leak a fraction into an extra untracked packet.
        for burst in [2u64, 5, 20] {
            let r = rule(Gcra::new(1, 60 * S, burst).unwrap(), Gcra::DISABLED);
            let mut m = Model::new();
            let admitted = (0..100u64)
                .filter(|i| m.packet(&r, key(7), 100 * S + i * 4_000_000, true) == Reason::Pass)
                .count() as u64;
            assert_eq!(admitted, burst, "burst {burst}");
        }
    }

    #[test]
    fn one_off_sources_are_never_promoted() {
        let r = rule(Gcra::new(10, S, 20).unwrap(), Gcra::DISABLED);
        let mut m = Model::new();
        let now = 100 * S;
        for i in 0..200_000 {
            assert_eq!(
                m.packet(&r, key(i), now + u64::from(i) * 1000, true),
                Reason::Pass
            );
        }
        // 200,000 sources over 0.2 s into 262,144 cells per row: a few collide enough.
        assert!(
            m.promotions < 200,
            "{} of 200,000 one-packet sources promoted",
            m.promotions
        );
        assert!(m.states.len() < 200);
    }

    #[test]
    fn untracked_sources_never_exceed_the_exact_limit() {
        // A source sending just under the promotion point, forever: 3 per 134 ms window
        // would be 22/s. The sketch leaks one per 2^27 ns (7.45/s), at most the 10/s rate.
        let r = rule(Gcra::new(10, S, 8).unwrap(), Gcra::DISABLED);
        let mut m = Model::new();
        let start = 100 * S;
        let mut admitted = 0u64;
        let mut t = start;
        while t < start + 10 * S {
            if m.packet(&r, key(1), t, true) == Reason::Pass {
                admitted += 1;
            }
            t += S / 40; // 40/s offered
        }
        // The exact limiter gives burst + rate * 10 s = 8 + 100.
        assert!(
            (100..=108).contains(&admitted),
            "admitted {admitted} at 40/s for 10 s under 10/s burst 8"
        );
    }

    #[test]
    fn packet_and_connection_classes_draw_their_own_buckets() {
        let r = rule(Gcra::new(10, S, 3).unwrap(), Gcra::new(100, S, 10).unwrap());
        assert_eq!((r.sketch[0].slack, r.sketch[1].slack), (2, 4));
        let mut m = Model::new();
        let now = 50 * S;
        // One connection: SYN then 3 data packets (untracked: pkt backlog reaches 4).
        assert_eq!(m.packet(&r, key(3), now, true), Reason::Pass);
        for _ in 0..3 {
            assert_eq!(m.packet(&r, key(3), now, false), Reason::Pass);
        }
        // The 5th packet promotes with 4 packets and 1 connection drawn.
        assert_eq!(m.packet(&r, key(3), now, false), Reason::Pass);
        let st = m.states[&key(3)];
        let conn = r.buckets[B_CONN];
        assert_eq!(
            st.tat[B_CONN],
            now + conn.interval_ns,
            "one connection drawn"
        );
        // Two more connections fit the burst of 3, the next does not.
        assert_eq!(m.packet(&r, key(3), now, true), Reason::Pass);
        assert_eq!(m.packet(&r, key(3), now, true), Reason::Pass);
        assert_eq!(m.packet(&r, key(3), now, true), Reason::ConnLimit);
        // Packets: 5 so far + 2 SYNs = 7 of 10.
        for _ in 0..3 {
            assert_eq!(m.packet(&r, key(3), now, false), Reason::Pass);
        }
        assert_eq!(m.packet(&r, key(3), now, false), Reason::PktLimit);
    }

    #[test]
    fn hash_rows_spread_and_depend_on_the_seed() {
        let h1 = hash(&key(1), 1);
        assert_ne!(h1, hash(&key(1), 2));
        assert_ne!(h1, hash(&key(2), 1));
        let mut seen = std::collections::HashSet::new();
        for i in 0..10_000 {
            seen.insert(cell_index(CLASS_CONN, 0, hash(&key(i), 9)));
        }
        assert!(seen.len() > 9_000, "10,000 keys fill {} cells", seen.len());
        assert!(cell_index(CLASS_PKT, 1, u64::MAX) < SKETCH_CELLS);
    }
}
