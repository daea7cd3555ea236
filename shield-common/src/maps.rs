//! Map names, sizes, keys and values. Layouts are `#[repr(C)]` with explicit padding and a
//! size assertion each: they are shared with the kernel and live on in pinned maps.

use crate::bans::BanValue;
use crate::bucket::Gcra;
use crate::sketch::ClassSketch;

// ---- Map names (at most 15 bytes: BPF_OBJ_NAME_LEN - 1). Also the pin file names. ----
pub const MAP_CONTROL: &str = "SHIELD_CONTROL";
pub const MAP_CONFIG: &str = "SHIELD_CONFIG";
pub const MAP_PORTS: &str = "SHIELD_PORTS";
pub const MAP_RULES: &str = "SHIELD_RULES";
pub const MAP_SOURCES: &str = "SHIELD_SOURCES";
pub const MAP_COUNTERS: &str = "SHIELD_COUNTERS";
pub const MAP_ALLOW_V4: &str = "SHIELD_ALLOW4";
pub const MAP_ALLOW_V6: &str = "SHIELD_ALLOW6";
pub const MAP_DENY_V4: &str = "SHIELD_DENY4";
pub const MAP_DENY_V6: &str = "SHIELD_DENY6";
pub const MAP_HOST_BANS_V4: &str = "SHIELD_HBAN4";
pub const MAP_HOST_BANS_V6: &str = "SHIELD_HBAN6";
pub const MAP_RULE_BANS: &str = "SHIELD_RBANS";
pub const MAP_EVENTS: &str = "SHIELD_EVENTS";
pub const MAP_DIAG: &str = "SHIELD_DIAG";
pub const MAP_SKETCH: &str = "SHIELD_SKETCH";
/// `SHIELD_SKETCH`'s map flags: mmapable, which page-aligns its values (see
/// `sketch::SKETCH_LINE`).
pub const SKETCH_MAP_FLAGS: u32 = crate::filters::BPF_F_MMAPABLE;
pub const MAP_VERIFIED: &str = "SHIELD_VERIFIED";
pub const MAP_BUDGET: &str = "SHIELD_BUDGET";
pub const MAP_RULE_STATS: &str = "SHIELD_RSTATS";
/// Per rule: clock (data-path ns) at which the daemon saw an attack on the rule's
/// `unverified` budget start, 0 when none is running. Written by the daemon only, so that
/// `shield stats` can show it from the pins alone.
pub const MAP_ATTACK: &str = "SHIELD_ATTACK";
/// Per rule: the GCRA TAT of its `resets` cap (RSTs sent for `over_limit = "reset"`).
pub const MAP_RESETS: &str = "SHIELD_RESETS";
/// Per CPU: the refusal cache (`Refused`, shield-ebpf/src/refused.rs). Pinned so that
/// `shield stats` counts the refusals it holds into each source's `limited`.
pub const MAP_REFUSED: &str = "SHIELD_REFUSED";
/// The verified set's filter (`vfilter_bit`).
pub const MAP_VFILTER: &str = "SHIELD_VFILTER";
/// How many bans may exist, per rule (rule scope) and for the host scope: the data path
/// looks bans up only where some may exist (see `BAN_COUNT_USER`).
pub const MAP_BAN_COUNT: &str = "SHIELD_BANCOUNT";
/// The filter in front of the per-source table (`sfilter_bit`).
pub const MAP_SFILTER: &str = "SHIELD_SFILTER";
/// The IPv4 allow and deny lists' summary by /16 block (`lsum_slot`).
pub const MAP_LIST_SUMMARY: &str = "SHIELD_LSUM";

/// Every map the program defines, for pinning and for `shield stats`.
pub const ALL_MAPS: [&str; 26] = [
    MAP_CONTROL,
    MAP_CONFIG,
    MAP_PORTS,
    MAP_RULES,
    MAP_SOURCES,
    MAP_COUNTERS,
    MAP_ALLOW_V4,
    MAP_ALLOW_V6,
    MAP_DENY_V4,
    MAP_DENY_V6,
    MAP_HOST_BANS_V4,
    MAP_HOST_BANS_V6,
    MAP_RULE_BANS,
    MAP_EVENTS,
    MAP_DIAG,
    MAP_SKETCH,
    MAP_VERIFIED,
    MAP_BUDGET,
    MAP_RULE_STATS,
    MAP_ATTACK,
    MAP_RESETS,
    MAP_REFUSED,
    MAP_VFILTER,
    MAP_BAN_COUNT,
    MAP_SFILTER,
    MAP_LIST_SUMMARY,
];

/// (map, key size, value size) of every pinned map but the ring buffer: a pin left by a
/// version with another layout must not be adopted.
pub const MAP_LAYOUTS: [(&str, usize, usize); 25] = {
    use core::mem::size_of;
    /// An LPM trie key: the u32 prefix length, then the data.
    const fn lpm(n: usize) -> usize {
        4 + n
    }
    [
        (MAP_CONTROL, 4, size_of::<Control>()),
        (MAP_CONFIG, 4, size_of::<GlobalConfig>()),
        (MAP_PORTS, 4, 4),
        (MAP_RULES, 4, size_of::<RuleConfig>()),
        (
            MAP_SOURCES,
            size_of::<SourceKey>(),
            size_of::<SourceState>(),
        ),
        (MAP_COUNTERS, 4, size_of::<Counter>()),
        (MAP_ALLOW_V4, lpm(LIST_KEY_V4), 1),
        (MAP_ALLOW_V6, lpm(LIST_KEY_V6), 1),
        (MAP_DENY_V4, lpm(LIST_KEY_V4), 1),
        (MAP_DENY_V6, lpm(LIST_KEY_V6), 1),
        (MAP_HOST_BANS_V4, lpm(4), size_of::<BanValue>()),
        (MAP_HOST_BANS_V6, lpm(16), size_of::<BanValue>()),
        (MAP_RULE_BANS, size_of::<SourceKey>(), size_of::<BanValue>()),
        (MAP_DIAG, 4, 8),
        (MAP_SKETCH, 4, 8),
        (MAP_VERIFIED, size_of::<SourceKey>(), 8),
        (MAP_BUDGET, 4, 8),
        (MAP_RULE_STATS, 4, 8),
        (MAP_ATTACK, 4, 8),
        (MAP_RESETS, 4, 8),
        (MAP_REFUSED, 4, size_of::<Refused>()),
        (MAP_BAN_COUNT, 4, 8),
        (MAP_VFILTER, 4, 8),
        (MAP_SFILTER, 4, 8),
        (MAP_LIST_SUMMARY, 4, 8),
    ]
};

/// Pin file name of the XDP link (kept while the daemon is down: protection stays).
pub const LINK_PIN: &str = "link";

/// The XDP program's function name.
pub const PROGRAM_NAME: &str = "shield";
/// The tail-called program that answers refused SYNs with a RST (`over_limit = "reset"`).
pub const RESET_PROGRAM_NAME: &str = "shield_reset";
/// Its program array (slot 0), filled by the loader. Not pinned: it empties when the
/// daemon that loaded the program exits (SYNs are then dropped, as without `reset`).
pub const MAP_TAILS: &str = "SHIELD_TAILS";
/// A trivial `XDP_PASS` program in the same object: the baseline for cost measurements.
pub const BASELINE_PROGRAM_NAME: &str = "shield_baseline";
/// A trivial `XDP_DROP` program: the ceiling for drop rates in the flood benchmarks.
pub const DROP_PROGRAM_NAME: &str = "shield_drop";
/// The trivial XDP_TX program of the test object (the cookie path's ceiling).
pub const TX_PROGRAM_NAME: &str = "shield_tx";
/// The benchmark traffic generator in the same object (see `shield-bench`).
pub const GEN_PROGRAM_NAME: &str = "shield_gen";
/// Its settings map (not pinned: the benchmark loads its own copy of the object).
pub const MAP_GEN: &str = "SHIELD_GEN";

// ---- Sizes ----

/// Rules are numbered 1..=MAX_RULES; slot 0 stands for "no rule" (unmatched traffic,
/// malformed frames, fragments without ports).
pub const MAX_RULES: u32 = 255;
pub const RULE_SLOTS: u32 = MAX_RULES + 1;
/// Counters: one `Counter` per rule slot × reason slot.
pub const COUNTER_SLOTS: u32 = RULE_SLOTS * crate::reason::REASON_SLOTS;
/// Default per-source LRU capacity (`defaults.max_sources`).
pub const DEFAULT_MAX_SOURCES: u32 = 262_144;
/// Capacity of each allow/deny trie (the SPEC asks for up to 1,000,000 prefixes).
pub const MAX_LIST_PREFIXES: u32 = 1 << 20;
/// Capacity of each ban map (host bans per family, rule bans). Bans live outside the
/// per-source LRU so that a flood of new sources never evicts them.
pub const MAX_BANS: u32 = 65_536;
/// Ring buffer for events (ban start, first limited packet per source per second).
pub const EVENTS_BYTES: u32 = 1 << 20;

/// Policy halves: the port table, the rules and the per-half config exist twice; the
/// daemon fills the inactive half, then flips `Control::active` (one aligned u32 write), so
/// a packet is judged wholly by the old policy or wholly by the new one.
pub const HALVES: u32 = 2;

/// Port table: index `half * PORT_TABLE_LEN + proto_slot * 65536 + port`, value = rule id
/// (0 = none). ICMP and ICMPv6 have one slot after the two port ranges.
pub const PROTO_SLOT_TCP: u32 = 0;
pub const PROTO_SLOT_UDP: u32 = 1;
pub const PORT_INDEX_ICMP: u32 = 2 * 65536;
pub const PORT_TABLE_LEN: u32 = PORT_INDEX_ICMP + 1;

// The three port-table regions do not overlap, and every counter index fits.
const _: () = assert!(port_index(PROTO_SLOT_TCP, 65535) + 1 == port_index(PROTO_SLOT_UDP, 0));
const _: () = assert!(port_index(PROTO_SLOT_UDP, 65535) + 1 == PORT_INDEX_ICMP);
const _: () = assert!(PORT_INDEX_ICMP < PORT_TABLE_LEN);
const _: () = assert!(counter_index(MAX_RULES, crate::reason::Reason::Reset) < COUNTER_SLOTS);

#[inline(always)]
pub const fn port_index(proto_slot: u32, port: u16) -> u32 {
    proto_slot * 65536 + port as u32
}

#[inline(always)]
pub const fn counter_index(rule: u32, reason: crate::reason::Reason) -> u32 {
    rule * crate::reason::REASON_SLOTS + reason as u32
}

// ---- Diagnostics (SHIELD_DIAG, per CPU) ----

/// Events that did not fit in the ring buffer.
pub const DIAG_EVENTS_LOST: u32 = 0;
/// Per-source state inserts the LRU refused (memory pressure).
pub const DIAG_SOURCE_INSERT_FAILED: u32 = 1;
/// Automatic bans the ban maps refused (full).
pub const DIAG_BAN_INSERT_FAILED: u32 = 2;
/// Per-source state entries created (a source promoted from the sketch). Once the LRU is
/// full, each one evicts another source: the churn figure.
pub const DIAG_SOURCE_INSERTS: u32 = 3;
/// Sources proven real (established socket seen for their data packet).
pub const DIAG_VERIFICATIONS: u32 = 4;
/// Verifications the verified set could not store.
pub const DIAG_VERIFIED_INSERT_FAILED: u32 = 5;
/// Per-source entries the daemon removed (a reload that gives a removed rule's id to a new
/// rule forgets its sources): not evictions. Written by the daemon only, in CPU 0's value.
pub const DIAG_SOURCES_FORGOTTEN: u32 = 6;
pub const DIAG_SLOTS: u32 = 8;

// ---- Per-rule figures that are not verdicts (SHIELD_RSTATS, per CPU, rule × slot) ----

/// Connection attempts from unverified sources admitted by the rule's `unverified` budget.
pub const RS_UNVERIFIED_ADMITTED: u32 = 0;
/// Connection attempts from verified sources (never drawn from the budget).
pub const RS_VERIFIED_CONNS: u32 = 1;
/// Sources promoted from the sketch to exact per-source state (heavy hitters).
pub const RS_PROMOTED: u32 = 2;
/// Packets judged by the sketch alone (their source had no state and stayed untracked).
pub const RS_UNTRACKED: u32 = 3;
pub const RS_SLOTS: u32 = 4;
pub const RULE_STAT_SLOTS: u32 = RULE_SLOTS * RS_SLOTS;

#[inline(always)]
pub const fn rule_stat_index(rule: u32, slot: u32) -> u32 {
    rule * RS_SLOTS + slot
}

/// Capacity of the verified set (`SHIELD_VERIFIED`, LRU: only proven sources are ever
/// inserted, so a spoofed flood cannot evict them).
pub const MAX_VERIFIED: u32 = 65_536;
/// How long a proof lasts when the policy does not say (`defaults.verified_ttl`).
pub const DEFAULT_VERIFIED_TTL_NS: u64 = 15 * 60 * 1_000_000_000;
/// A verified source's proof is refreshed at most this often (one map write).
pub const VERIFIED_REFRESH_NS: u64 = 1_000_000_000;
/// Prefix lengths of verified-set keys: a host for IPv4, a /64 (one subscriber) for IPv6.
pub const VERIFIED_V4_PREFIX: u8 = 32;
pub const VERIFIED_V6_PREFIX: u8 = 64;

// ---- Control (SHIELD_CONTROL[0]) ----

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Control {
    /// The policy half in force (0 or 1).
    pub active: u32,
    /// Tests only (the differential fuzzer): non-zero makes the data path's clock
    /// `clock_offset_ns` alone, so a reference model can be fed the very same times.
    pub clock_frozen: u32,
    /// Added to the kernel clock. Always 0 in production; tests advance it to play minutes
    /// of strikes and bans in milliseconds.
    pub clock_offset_ns: u64,
}
const _: () = assert!(core::mem::size_of::<Control>() == 16);

impl Control {
    /// The data path's clock when the coarse monotonic clock reads `mono`.
    pub fn now(&self, mono: u64) -> u64 {
        if self.clock_frozen != 0 {
            self.clock_offset_ns
        } else {
            mono.wrapping_add(self.clock_offset_ns)
        }
    }
}

// ---- Per-half configuration (SHIELD_CONFIG[half]) ----

/// `GlobalConfig::flags`: global monitor mode (nothing is dropped).
pub const CFG_MONITOR: u32 = 1 << 0;
/// `GlobalConfig::flags`: the list is non-empty (lookups are skipped otherwise).
pub const CFG_ALLOW_V4: u32 = 1 << 1;
pub const CFG_ALLOW_V6: u32 = 1 << 2;
pub const CFG_DENY_V4: u32 = 1 << 3;
pub const CFG_DENY_V6: u32 = 1 << 4;
/// `GlobalConfig::flags`: bans may exist (the policy escalates, or manual bans are active):
/// the ban maps are consulted. Without it they cost nothing.
pub const CFG_BANS: u32 = 1 << 5;
/// `GlobalConfig::flags`: a policy has been loaded. Until then everything passes untracked.
pub const CFG_LOADED: u32 = 1 << 31;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GlobalConfig {
    pub flags: u32,
    /// Bumped by the daemon on every policy load.
    pub generation: u32,
    /// Which half of the allow/deny tries this policy uses (the first key byte).
    pub list_half: u32,
    pub _pad: u32,
    /// How long a source stays verified after its last proof.
    pub verified_ttl_ns: u64,
    /// Sketch hash seed (random per daemon start).
    pub sketch_seed: u64,
}
const _: () = assert!(core::mem::size_of::<GlobalConfig>() == 32);

// ---- Rules (SHIELD_RULES[rule id]) ----

/// `RuleConfig::flags`: this rule only counts `would_drop`.
pub const RULE_MONITOR: u32 = 1 << 0;
/// `RuleConfig::flags`: slot holds a rule.
pub const RULE_PRESENT: u32 = 1 << 1;
/// `RuleConfig::flags`: escalation bans cover the whole host, not only the rule's ports.
pub const RULE_BAN_HOST: u32 = 1 << 2;
/// `RuleConfig::flags`: `over_limit = "reset"`: a TCP connection attempt over the rule's
/// limits from a verified source is answered with a RST (capped by `RuleConfig::resets`
/// and once a second per source), not silently dropped.
pub const RULE_RESET: u32 = 1 << 3;
/// `RuleConfig::flags`: `challenge = "syncookie"`: over the `unverified` budget, a connection
/// attempt from an unverified source is answered with a SYN cookie (XDP_TX), and a bare
/// ACK from one is checked for a cookie (see shield-ebpf/src/syncookie.rs).
pub const RULE_SYNCOOKIE: u32 = 1 << 8;
/// The MSS a `syncookie` rule advertises to IPv4 clients without a policy `mss`
/// (IPv6 clients get 20 bytes less: the larger IP header).
pub const DEFAULT_SYNCOOKIE_MSS: u16 = 1460;
/// The window scale a cookie SYN-ACK advertises (and the nftables `synproxy` statement).
pub const SYNCOOKIE_WSCALE: u8 = 7;
/// `RuleConfig::flags`, with `RULE_SYNCOOKIE`: the cookie SYN-ACK offers timestamps, and
/// with them SACK and window scaling (which the timestamp carries). Set by the loader only
/// on kernels where SYNPROXY can use them (see shield-user/src/synproxy.rs,
/// `timestamps_work`); without it the SYN-ACK carries the MSS alone.
pub const RULE_SYNCOOKIE_TS: u32 = 1 << 9;

/// Bucket indexes in `RuleConfig::buckets` and `SourceState::tat`.
pub const B_CONN: usize = 0;
pub const B_CONN_SUSTAINED: usize = 1;
pub const B_PKT: usize = 2;
pub const B_PKT_SUSTAINED: usize = 3;
pub const BUCKETS: usize = 4;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleConfig {
    /// `connections` rate, `connections` sustained, `packets` rate, `packets` sustained.
    pub buckets: [Gcra; BUCKETS],
    pub flags: u32,
    /// Identity scope: bits of the source address that make the source key.
    pub v4_prefix: u8,
    pub v6_prefix: u8,
    pub _pad: [u8; 2],
    /// Repeat offenders: `strikes == 0` means no escalation.
    pub escalation: Escalation,
    /// The rule's name, UTF-8, NUL-padded: lets `shield stats` name rules from the pinned
    /// maps alone. The data path never reads it.
    pub name: [u8; RULE_NAME_LEN],
    /// Shared budget for connection attempts from unverified sources (`unverified`;
    /// disabled: no budget, every source is judged by its own limits only).
    pub unverified: Gcra,
    /// Sketch settings per class (`sketch::CLASS_CONN`, `sketch::CLASS_PKT`).
    pub sketch: [ClassSketch; 2],
    /// `syncookie` rules: the MSS advertised to IPv4 clients (IPv6: 20 less).
    pub mss: u16,
    pub _pad2: [u8; 2],
    /// Cap on the RSTs the rule sends (`resets`; used with `RULE_RESET`).
    pub resets: Gcra,
}
const _: () = assert!(core::mem::size_of::<RuleConfig>() == 184);

/// Escalation of one rule (see `escalate`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Escalation {
    /// Strikes within `window_ns` that trigger a ban (0 = escalation off).
    pub strikes: u16,
    /// Multiplier of each further ban's duration.
    pub backoff: u16,
    pub _pad: [u8; 4],
    pub window_ns: u64,
    /// First ban's duration.
    pub ban_ns: u64,
    pub max_ban_ns: u64,
    /// A ban more than this long after the previous one starts the ladder again.
    pub forget_ns: u64,
}
const _: () = assert!(core::mem::size_of::<Escalation>() == 40);

/// Longest rule name, in bytes.
pub const RULE_NAME_LEN: usize = 32;

impl Default for RuleConfig {
    fn default() -> Self {
        RuleConfig {
            buckets: [Gcra::DISABLED; BUCKETS],
            flags: 0,
            v4_prefix: 32,
            v6_prefix: 64,
            _pad: [0; 2],
            escalation: Escalation {
                strikes: 0,
                backoff: 1,
                _pad: [0; 4],
                window_ns: 0,
                ban_ns: 0,
                max_ban_ns: 0,
                forget_ns: 0,
            },
            name: [0; RULE_NAME_LEN],
            unverified: Gcra::DISABLED,
            sketch: [ClassSketch { shift: 0, slack: 0 }; 2],
            mss: 0,
            _pad2: [0; 2],
            resets: Gcra::DISABLED,
        }
    }
}

impl RuleConfig {
    #[inline(always)]
    pub const fn has_conn_limit(&self) -> bool {
        self.buckets[B_CONN].interval_ns != 0 || self.buckets[B_CONN_SUSTAINED].interval_ns != 0
    }
    #[inline(always)]
    pub const fn has_pkt_limit(&self) -> bool {
        self.buckets[B_PKT].interval_ns != 0 || self.buckets[B_PKT_SUSTAINED].interval_ns != 0
    }
}

// ---- Per-source state (SHIELD_SOURCES, LRU) ----

/// Entries per CPU of the refusal cache (direct-mapped by a hash of the source key).
pub const REFUSED_SLOTS: u32 = 1024;

/// A refusal cache entry (`MAP_REFUSED`): the data path refuses packets of `key` of the
/// same class for `ConnLimit`/`PktLimit` without judging them while its clock is before
/// `until_ns` under policy `generation`, and counts them in `pending` until they are added
/// to the source's `SourceState::limited` (see shield-ebpf/src/refused.rs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Refused {
    pub key: SourceKey,
    /// The policy generation the refusal was judged under, its low 30 bits (shield-ebpf's
    /// `refused::tag`).
    pub generation: u32,
    /// The refusal holds while the clock is before this.
    pub until_ns: u64,
    /// Packets this entry refused, not yet in the source's `limited`.
    pub pending: u32,
    /// The class refused: connection attempts (1) or other packets (0).
    pub conn_attempt: u8,
    /// The `Reason` code (`ConnLimit` or `PktLimit`).
    pub reason: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<Refused>() == 40);

/// 4-byte aligned (offsets and size as without it): the data path copies and compares keys
/// in words.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SourceKey {
    /// Rule id the state belongs to.
    pub rule: u16,
    /// `FAMILY_V4` or `FAMILY_V6`.
    pub family: u8,
    /// Prefix length the address was masked to.
    pub prefix_len: u8,
    /// Source address, network byte order, masked; IPv4 in the first 4 bytes.
    pub addr: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<SourceKey>() == 20);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceState {
    /// Theoretical arrival time per bucket (see `bucket`), `bpf_ktime_get_coarse_ns` clock.
    pub tat: [u64; BUCKETS],
    /// Packets this source had refused (any limit) since the entry was created.
    pub limited: u64,
    /// Start of the current strike window (clock ns).
    pub window_start_ns: u64,
    /// Start of this source's last ban under this rule (0 = never).
    pub last_ban_ns: u64,
    /// Clock of the last refusal that was reported (and struck): at most one event and one
    /// strike per second per source and rule.
    pub last_report_ns: u64,
    /// Strikes in the current window.
    pub strikes: u16,
    /// Bans so far on the backoff ladder (reset after `forget`).
    pub ban_level: u16,
    /// When this source was last answered with a RST (`over_limit = "reset"`), in units
    /// of 2^20 ns (`reset::RESET_UNIT_SHIFT`), wrapping; 0 = never. 32 bits keep the
    /// state at 72 bytes.
    pub reset_at: u32,
}
const _: () = assert!(core::mem::size_of::<SourceState>() == 72);
// `reset_at` is claimed with a 64-bit compare-and-exchange on the word at offset 64 (its
// high half): BPF's `--cpu generic` has no 32-bit one.
const _: () = assert!(core::mem::offset_of!(SourceState, strikes) == 64);
const _: () = assert!(core::mem::offset_of!(SourceState, reset_at) == 68);

impl SourceState {
    /// A source never seen: full buckets, no strikes (a `const`: see `Outcome::NONE`).
    pub const NEW: SourceState = SourceState {
        tat: [0; BUCKETS],
        limited: 0,
        window_start_ns: 0,
        last_ban_ns: 0,
        last_report_ns: 0,
        strikes: 0,
        ban_level: 0,
        reset_at: 0,
    };
}

// ---- Events (SHIELD_EVENTS ring buffer) ----

/// First refused packet of a source in a clock second.
pub const EV_LIMITED: u32 = 1;
/// A ban started.
pub const EV_BAN: u32 = 2;
/// A ban would have started (monitor mode).
pub const EV_WOULD_BAN: u32 = 3;
/// A ban (or, in monitor mode, a would-be ban) was due but its map refused the insert
/// (full): no ban exists. Never reported as a ban.
pub const EV_BAN_FAILED: u32 = 4;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    pub kind: u32,
    /// `Reason` code of the refusal that caused the event.
    pub reason: u32,
    pub key: SourceKey,
    pub strikes: u16,
    pub level: u16,
    /// Clock of the event (same clock as ban expiries).
    pub ts_ns: u64,
    /// Ban duration (ban events).
    pub duration_ns: u64,
    /// Packets this source had refused so far.
    pub limited: u64,
    /// 1 when the ban covers the whole host.
    pub host_scope: u32,
    /// `Reason` code of the limit that refused (`ConnLimit`, `PktLimit`, …): `reason`
    /// itself in enforce mode; in monitor mode, where `reason` is `WouldDrop`, the limit it
    /// would have been. 0 (`Pass`) from a program older than this field.
    pub limit: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<Event>() == 64);

// ---- Counters (SHIELD_COUNTERS, per CPU) ----

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}
const _: () = assert!(core::mem::size_of::<Counter>() == 16);

// ---- LPM trie keys: aya's `Key<[u8; N]>` (u32 prefix length + bytes). Allow/deny keys
// start with the list half (one byte, prefix length + 8), then the network-order address.
// Host-ban keys are the address alone. ----

pub const LIST_KEY_V4: usize = 5;
pub const LIST_KEY_V6: usize = 17;

/// Value stored in the allow/deny tries (the key is what matters).
pub type ListValue = u8;

// ---- Rare conditions (the XDP program's aya-log line "rare conditions MASK") ----

/// The per-source table refused a new source.
pub const RARE_SOURCE_INSERT: u32 = 0;
/// The ban table refused a ban.
pub const RARE_BAN_INSERT: u32 = 1;
/// The verified set refused a proof.
pub const RARE_VERIFIED_INSERT: u32 = 2;
/// The event ring buffer was full.
pub const RARE_EVENTS_LOST: u32 = 3;
/// The half in force holds no policy.
pub const RARE_NOT_LOADED: u32 = 4;
pub const RARE_KINDS: u32 = 5;

/// What each rare condition means, for the daemon's log (index: `RARE_*`).
pub const RARE_TEXT: [&str; RARE_KINDS as usize] = [
    "the per-source table refused a new source: it passes without a limit (raise defaults.max_sources?)",
    "the ban table is full: a due ban was not installed (ban_failed)",
    "the verified set refused a proof: a real client stays unverified",
    "the event ring buffer is full: audit events are being lost",
    "no policy is loaded in the half in force: traffic passes unjudged",
];

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all these are #[repr(C)] with only integer fields and explicit padding, so
    // every bit pattern is valid and there are no implicit padding bytes.
    unsafe impl aya::Pod for GlobalConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for RuleConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for SourceKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for SourceState {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Refused {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Counter {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Control {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Event {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::sketch::ClassSketch {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pinned_map_but_the_ring_buffer_has_a_layout() {
        for name in ALL_MAPS.iter().filter(|n| **n != MAP_EVENTS) {
            assert!(
                MAP_LAYOUTS.iter().any(|(m, _, _)| m == name),
                "{name} is pinned but has no entry in MAP_LAYOUTS"
            );
        }
        assert_eq!(MAP_LAYOUTS.len(), ALL_MAPS.len() - 1);
    }

    #[test]
    fn map_names_fit_the_kernel_limit() {
        for name in ALL_MAPS {
            assert!(
                name.len() <= 15,
                "{name} is longer than BPF_OBJ_NAME_LEN - 1"
            );
        }
    }
}
