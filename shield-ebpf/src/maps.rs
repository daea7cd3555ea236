//! Every map of the program: names, types and sizes are `shield-common`'s (`MAP_*`,
//! `MAP_LAYOUTS`); the loader pins them under `<bpffs>/shield/<iface>/`.

use crate::*;

#[map]
pub(crate) static SHIELD_CONTROL: Array<Control> = Array::with_max_entries(1, 0);

#[map]
pub(crate) static SHIELD_CONFIG: Array<GlobalConfig> = Array::with_max_entries(HALVES, 0);

#[map]
pub(crate) static SHIELD_PORTS: Array<u32> = Array::with_max_entries(HALVES * PORT_TABLE_LEN, 0);

#[map]
pub(crate) static SHIELD_RULES: Array<RuleConfig> = Array::with_max_entries(HALVES * RULE_SLOTS, 0);

/// Resized at load time from `defaults.max_sources`.
#[map]
pub(crate) static SHIELD_SOURCES: LruHashMap<SourceKey, SourceState> =
    LruHashMap::with_max_entries(DEFAULT_MAX_SOURCES, 0);

#[map]
pub(crate) static SHIELD_COUNTERS: PerCpuArray<Counter> =
    PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

/// Allow/deny lists, both halves (key: half byte + address): room for a full list in each.
#[map]
pub(crate) static SHIELD_ALLOW4: LpmTrie<[u8; LIST_KEY_V4], ListValue> =
    LpmTrie::with_max_entries(HALVES * MAX_LIST_PREFIXES, 0);

#[map]
pub(crate) static SHIELD_ALLOW6: LpmTrie<[u8; LIST_KEY_V6], ListValue> =
    LpmTrie::with_max_entries(HALVES * MAX_LIST_PREFIXES, 0);

#[map]
pub(crate) static SHIELD_DENY4: LpmTrie<[u8; LIST_KEY_V4], ListValue> =
    LpmTrie::with_max_entries(HALVES * MAX_LIST_PREFIXES, 0);

#[map]
pub(crate) static SHIELD_DENY6: LpmTrie<[u8; LIST_KEY_V6], ListValue> =
    LpmTrie::with_max_entries(HALVES * MAX_LIST_PREFIXES, 0);

/// Host-scope bans (any prefix length): one LPM lookup per packet while bans may exist.
#[map]
pub(crate) static SHIELD_HBAN4: LpmTrie<[u8; 4], BanValue> = LpmTrie::with_max_entries(MAX_BANS, 0);

#[map]
pub(crate) static SHIELD_HBAN6: LpmTrie<[u8; 16], BanValue> =
    LpmTrie::with_max_entries(MAX_BANS, 0);

/// Rule-scope bans, keyed like the per-source state.
#[map]
pub(crate) static SHIELD_RBANS: HashMap<SourceKey, BanValue> =
    HashMap::with_max_entries(MAX_BANS, 0);

/// How many bans may exist per rule and for the host (`shield_common::BAN_COUNT_USER`).
#[map]
pub(crate) static SHIELD_BANCOUNT: Array<u64> =
    Array::with_max_entries(shield_common::BAN_COUNT_SLOTS, 0);

#[map]
pub(crate) static SHIELD_EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

/// Count-min sketch of untracked sources' backlogs (see `shield_common::sketch`).
/// Mmapable: its values start on a page, so that a source's cells share a cache line.
#[map]
pub(crate) static SHIELD_SKETCH: Array<u64> =
    Array::with_max_entries(SKETCH_CELLS, shield_common::SKETCH_MAP_FLAGS);

/// Sources proven real (key: `verified_key`, value: clock of the last proof). Only proven
/// sources are inserted, so a spoofed flood cannot evict them.
#[map]
pub(crate) static SHIELD_VERIFIED: LruHashMap<SourceKey, u64> =
    LruHashMap::with_max_entries(MAX_VERIFIED, 0);

/// The verified set's filter: a bit per key hash (`shield_common::vfilter_bit`). Mmapable:
/// the daemon sets and clears bits with atomic operations on shared memory.
#[map]
pub(crate) static SHIELD_VFILTER: Array<u64> =
    Array::with_max_entries(VFILTER_WORDS, shield_common::VFILTER_MAP_FLAGS);

/// The source table's filter, two halves (`shield_common::sfilter_bit`). Mmapable: the
/// daemon sets and clears bits with atomic operations on shared memory.
#[map]
pub(crate) static SHIELD_SFILTER: Array<u64> =
    Array::with_max_entries(2 * SFILTER_WORDS, shield_common::SFILTER_MAP_FLAGS);

/// The IPv4 lists' summary by /16 block (`shield_common::lsum_slot`).
#[map]
pub(crate) static SHIELD_LSUM: Array<u64> = Array::with_max_entries(shield_common::LSUM_WORDS, 0);

/// `unverified` budget per rule: its GCRA TAT.
#[map]
pub(crate) static SHIELD_BUDGET: Array<u64> = Array::with_max_entries(RULE_SLOTS, 0);

/// Per-rule figures that are not verdicts (`RS_*`).
#[map]
pub(crate) static SHIELD_RSTATS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(RULE_STAT_SLOTS, 0);

/// Attack start per rule (daemon-written; see `MAP_ATTACK`). The data path never reads it.
#[map]
pub(crate) static SHIELD_ATTACK: Array<u64> = Array::with_max_entries(RULE_SLOTS, 0);

/// Scratch space for a new source's state (keeps it off the 512-byte stack).
#[map]
pub(crate) static SHIELD_SCRATCH: PerCpuArray<SourceState> = PerCpuArray::with_max_entries(1, 0);

/// Scratch space for the key `shield_judge` rebuilds from its scalar arguments (keeps it
/// off the 512-byte stack its call chain shares with the program's frame).
#[map]
pub(crate) static SHIELD_JUDGE_KEY: PerCpuArray<SourceKey> = PerCpuArray::with_max_entries(1, 0);

/// Diagnostics: events lost, failed inserts (`DIAG_*`).
#[map]
pub(crate) static SHIELD_DIAG: PerCpuArray<u64> = PerCpuArray::with_max_entries(DIAG_SLOTS, 0);

/// The packet as `parse` read it (keeps it off the program's stack frame).
#[map]
pub(crate) static SHIELD_PACKET: PerCpuArray<Packet> = PerCpuArray::with_max_entries(1, 0);
