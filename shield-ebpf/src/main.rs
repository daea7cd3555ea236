//! shield's XDP program: parse, find the rule for the destination endpoint, apply the
//! allow/deny lists, then the per-source token buckets of the rule.
//!
//! Fail-open choice: a frame that cannot be parsed (truncated, bad header lengths) passes
//! and is counted as `malformed` under rule 0. Dropping it would let a parser gap take the
//! host offline; passing it leaves the kernel's own stack to reject it.
#![no_std]
#![no_main]
// BPF atomics: `AtomicU64`'s compare_exchange is not offered for bpfel-unknown-none, but
// the intrinsics lower to BPF_CMPXCHG / BPF_ADD with BPF_FETCH (kernel 5.12+).
#![feature(core_intrinsics)]
#![expect(
    internal_features,
    reason = "core::intrinsics atomics: the only CAS on bpf"
)]

use core::intrinsics::{AtomicOrdering, atomic_cxchg, atomic_xadd, atomic_xsub};

use aya_ebpf::{
    bindings::{
        BPF_F_CURRENT_NETNS, BPF_TCP_ESTABLISHED, bpf_sock_tuple,
        bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1, bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2,
        xdp_action,
    },
    helpers::generated::{bpf_ktime_get_coarse_ns, bpf_sk_lookup_tcp, bpf_sk_release},
    macros::{map, xdp},
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::XdpContext,
};
use shield_common::{
    B_CONN, B_CONN_SUSTAINED, BAN_ATTEMPTS, BAN_MONITOR, BUCKETS, BanValue, CFG_ALLOW_V4,
    CFG_ALLOW_V6, CFG_BANS, CFG_DENY_V4, CFG_DENY_V6, CFG_LOADED, CFG_MONITOR, COUNTER_SLOTS,
    Control, Counter, DEFAULT_MAX_SOURCES, DIAG_BAN_INSERT_FAILED, DIAG_EVENTS_LOST, DIAG_SLOTS,
    DIAG_SOURCE_INSERT_FAILED, DIAG_SOURCE_INSERTS, DIAG_VERIFICATIONS,
    DIAG_VERIFIED_INSERT_FAILED, EV_BAN, EV_BAN_FAILED, EV_LIMITED, EV_WOULD_BAN, EVENTS_BYTES,
    Event, Gcra, GlobalConfig, HALVES, HOST_BAN_WALK, LIST_KEY_V4, LIST_KEY_V6, ListValue,
    MAX_BANS, MAX_LIST_PREFIXES, MAX_VERIFIED, PORT_INDEX_ICMP, PORT_TABLE_LEN, PROTO_SLOT_TCP,
    PROTO_SLOT_UDP, RS_PROMOTED, RS_UNTRACKED, RS_UNVERIFIED_ADMITTED, RS_VERIFIED_CONNS,
    RULE_BAN_HOST, RULE_MONITOR, RULE_PRESENT, RULE_SLOTS, RULE_STAT_SLOTS, Reason, RuleConfig,
    SourceKey, SourceState, VERIFIED_REFRESH_NS,
    addr::{FAMILY_V4, FAMILY_V6, mask_prefix},
    counter_index,
    judge::{Outcome, escalate_claimed, needs_state, report_due, still_verified, verified_key},
    port_index, rule_stat_index,
    sketch::{
        self, Admission, CLASS_CONN, CLASS_PKT, SKETCH_CELLS, admission, cell_index, promoted_state,
    },
};

#[map]
static SHIELD_CONTROL: Array<Control> = Array::with_max_entries(1, 0);
#[map]
static SHIELD_CONFIG: Array<GlobalConfig> = Array::with_max_entries(HALVES, 0);
#[map]
static SHIELD_PORTS: Array<u32> = Array::with_max_entries(HALVES * PORT_TABLE_LEN, 0);
#[map]
static SHIELD_RULES: Array<RuleConfig> = Array::with_max_entries(HALVES * RULE_SLOTS, 0);
/// Resized at load time from `defaults.max_sources`.
#[map]
static SHIELD_SOURCES: LruHashMap<SourceKey, SourceState> =
    LruHashMap::with_max_entries(DEFAULT_MAX_SOURCES, 0);
#[map]
static SHIELD_COUNTERS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);
/// Allow/deny lists, both halves (key: half byte + address): room for a full list in each.
#[map]
static SHIELD_ALLOW4: LpmTrie<[u8; LIST_KEY_V4], ListValue> =
    LpmTrie::with_max_entries(HALVES * MAX_LIST_PREFIXES, 0);
#[map]
static SHIELD_ALLOW6: LpmTrie<[u8; LIST_KEY_V6], ListValue> =
    LpmTrie::with_max_entries(HALVES * MAX_LIST_PREFIXES, 0);
#[map]
static SHIELD_DENY4: LpmTrie<[u8; LIST_KEY_V4], ListValue> =
    LpmTrie::with_max_entries(HALVES * MAX_LIST_PREFIXES, 0);
#[map]
static SHIELD_DENY6: LpmTrie<[u8; LIST_KEY_V6], ListValue> =
    LpmTrie::with_max_entries(HALVES * MAX_LIST_PREFIXES, 0);

/// Host-scope bans (any prefix length): one LPM lookup per packet while bans may exist.
#[map]
static SHIELD_HBAN4: LpmTrie<[u8; 4], BanValue> = LpmTrie::with_max_entries(MAX_BANS, 0);
#[map]
static SHIELD_HBAN6: LpmTrie<[u8; 16], BanValue> = LpmTrie::with_max_entries(MAX_BANS, 0);
/// Rule-scope bans, keyed like the per-source state.
#[map]
static SHIELD_RBANS: HashMap<SourceKey, BanValue> = HashMap::with_max_entries(MAX_BANS, 0);
#[map]
static SHIELD_EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);
/// Generator settings: [mode, sources] (benchmarks only).
#[map]
static SHIELD_GEN: Array<[u32; 2]> = Array::with_max_entries(1, 0);

/// Count-min sketch of untracked sources' backlogs (see `shield_common::sketch`).
#[map]
static SHIELD_SKETCH: Array<u64> = Array::with_max_entries(SKETCH_CELLS, 0);
/// Sources proven real (key: `verified_key`, value: clock of the last proof). Only proven
/// sources are inserted, so a spoofed flood cannot evict them.
#[map]
static SHIELD_VERIFIED: LruHashMap<SourceKey, u64> = LruHashMap::with_max_entries(MAX_VERIFIED, 0);
/// `unverified` budget per rule: its GCRA TAT.
#[map]
static SHIELD_BUDGET: Array<u64> = Array::with_max_entries(RULE_SLOTS, 0);
/// Per-rule figures that are not verdicts (`RS_*`).
#[map]
static SHIELD_RSTATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(RULE_STAT_SLOTS, 0);

/// Attack start per rule (daemon-written; see `MAP_ATTACK`). The data path never reads it.
#[map]
static SHIELD_ATTACK: Array<u64> = Array::with_max_entries(RULE_SLOTS, 0);

/// Scratch space for a new source's state (keeps it off the 512-byte stack).
#[map]
static SHIELD_SCRATCH: PerCpuArray<SourceState> = PerCpuArray::with_max_entries(1, 0);

/// Diagnostics: events lost, failed inserts (`DIAG_*`).
#[map]
static SHIELD_DIAG: PerCpuArray<u64> = PerCpuArray::with_max_entries(DIAG_SLOTS, 0);

const ETH_HLEN: usize = 14;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_ICMPV6: u8 = 58;
const IPPROTO_DSTOPTS: u8 = 60;
/// IPv6 extension headers followed before giving up on finding the transport header.
const MAX_EXT_HEADERS: usize = 8;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// Transport classes the rule table knows.
const L4_NONE: u8 = 0;
const L4_TCP: u8 = 1;
const L4_UDP: u8 = 2;
const L4_ICMP: u8 = 3;
/// A fragment that could hide a transport header (RFC 1858 / RFC 7112): dropped as
/// `bad_fragment`, never looked up in the rule table.
const L4_BAD_FRAGMENT: u8 = 4;

/// The transport header bytes the parser needs to judge a packet: a first fragment carrying
/// fewer would let the kernel reassemble a header no rule saw (RFC 1858's tiny fragments).
/// 0: a protocol without rules.
#[inline(always)]
fn transport_min(proto: u8) -> usize {
    match proto {
        IPPROTO_TCP => 20,
        IPPROTO_UDP => 8,
        IPPROTO_ICMP | IPPROTO_ICMPV6 => 4,
        _ => 0,
    }
}

struct Packet {
    family: u8,
    /// Network-order source address, IPv4 in the first 4 bytes.
    src: [u8; 16],
    /// Offset of the IP header (socket lookups read the destination from there).
    l3_off: u16,
    sport: u16,
    /// `L4_*`; `L4_NONE` for non-first fragments and transports without rules.
    l4: u8,
    dport: u16,
    /// TCP SYN without ACK: a new connection attempt.
    conn_attempt: bool,
    /// TCP segment without SYN that carries data: may prove its source real.
    tcp_data: bool,
}

/// What the parser made of a frame (`parse`'s return value).
/// Not IP (ARP, LLDP, …): passes untracked.
const PARSED_NOT_IP: i32 = 0;
const PARSED_IP: i32 = 1;
const PARSED_MALFORMED: i32 = -1;

#[xdp]
pub fn shield(ctx: XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    match try_shield(&ctx, len) {
        Ok(action) => action,
        Err(()) => {
            count(0, Reason::Malformed, len);
            xdp_action::XDP_PASS
        }
    }
}

/// The cheapest possible XDP program: the baseline every cost figure is a ratio to (loaded
/// only by tests and benchmarks, never attached by the daemon).
#[xdp]
pub fn shield_baseline(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// The cheapest possible drop: the ceiling every flood figure is compared to (benchmarks
/// only, never attached by the daemon).
#[xdp]
pub fn shield_drop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}

/// Benchmark traffic generator (never attached by the daemon): run through
/// BPF_PROG_TEST_RUN in live-frames mode on the attacker's veth, it rewrites the source of
/// each crafted IPv4 TCP SYN (`SHIELD_GEN[0]`: mode 0 fixed, 1 one of `n` sources, 2 random
/// in 10.0.0.0/8), fixes the checksums incrementally and transmits it (XDP_TX).
#[xdp]
pub fn shield_gen(ctx: XdpContext) -> u32 {
    let Some(cfg) = SHIELD_GEN.get(0) else {
        return xdp_action::XDP_ABORTED;
    };
    let start = ctx.data();
    // SAFETY: helper without arguments.
    let r = unsafe { aya_ebpf::helpers::generated::bpf_get_prandom_u32() };
    if cfg[0] == 3 {
        // IPv6: Ethernet 14 + IPv6 40 + TCP 20; a random interface id inside the /64.
        if start + 74 > ctx.data_end() {
            return xdp_action::XDP_ABORTED;
        }
        // SAFETY: 74 bytes checked above.
        let ip = unsafe { &mut *((start + 14) as *mut [u8; 40]) };
        // SAFETY: as above.
        let tcp = unsafe { &mut *((start + 54) as *mut [u8; 20]) };
        let old = [
            u16::from_be_bytes([ip[20], ip[21]]),
            u16::from_be_bytes([ip[22], ip[23]]),
        ];
        let new = [(r >> 16) as u16, r as u16];
        ip[20..24].copy_from_slice(&r.to_be_bytes());
        fix_checksum(tcp, 16, old, new);
        return xdp_action::XDP_TX;
    }
    // IPv4: Ethernet 14 + IPv4 20 + TCP 20.
    if start + 54 > ctx.data_end() {
        return xdp_action::XDP_ABORTED;
    }
    // SAFETY: 54 bytes checked above.
    let ip = unsafe { &mut *((start + 14) as *mut [u8; 20]) };
    // SAFETY: as above.
    let tcp = unsafe { &mut *((start + 34) as *mut [u8; 20]) };
    let src: u32 = match cfg[0] {
        0 => u32::from_be_bytes([ip[12], ip[13], ip[14], ip[15]]),
        1 => 0x0a00_0000 | (r % cfg[1].max(1)),
        _ => 0x0a00_0000 | (r & 0x00ff_ffff),
    };
    let old = [
        u16::from_be_bytes([ip[12], ip[13]]),
        u16::from_be_bytes([ip[14], ip[15]]),
    ];
    let new = [(src >> 16) as u16, src as u16];
    ip[12..16].copy_from_slice(&src.to_be_bytes());
    // The source is in the IPv4 header checksum and in the TCP pseudo-header.
    fix_checksum(ip, 10, old, new);
    fix_checksum(tcp, 16, old, new);
    xdp_action::XDP_TX
}

/// RFC 1624 incremental update of the checksum at `at` for two changed 16-bit words.
#[inline(always)]
fn fix_checksum<const N: usize>(hdr: &mut [u8; N], at: usize, old: [u16; 2], new: [u16; 2]) {
    if at + 1 >= N {
        return;
    }
    let mut sum = !u16::from_be_bytes([hdr[at], hdr[at + 1]]) as u32;
    for i in 0..2 {
        sum += (!old[i]) as u32 + new[i] as u32;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let c = (!(sum as u16)).to_be_bytes();
    hdr[at] = c[0];
    hdr[at + 1] = c[1];
}

#[inline(always)]
fn try_shield(ctx: &XdpContext, len: u64) -> Result<u32, ()> {
    let Some(ctl) = SHIELD_CONTROL.get(0) else {
        return Ok(xdp_action::XDP_PASS);
    };
    // Read once: every table below comes from this half.
    let half = ctl.active & 1;
    let Some(cfg) = SHIELD_CONFIG.get(half) else {
        return Ok(xdp_action::XDP_PASS);
    };
    let flags = cfg.flags;
    let list_half = (cfg.list_half & 1) as u8;
    let verified_ttl = cfg.verified_ttl_ns;
    let seed = cfg.sketch_seed;
    if flags & CFG_LOADED == 0 {
        return Ok(xdp_action::XDP_PASS);
    }
    // Filled by `parse` (no zero-fill: only read once it says PARSED_IP).
    let mut slot = core::mem::MaybeUninit::<Packet>::uninit();
    match parse(ctx.ctx, slot.as_mut_ptr()) {
        PARSED_IP => {}
        PARSED_NOT_IP => {
            count(0, Reason::Pass, len);
            return Ok(xdp_action::XDP_PASS);
        }
        _ => return Err(()),
    }
    // SAFETY: `parse` wrote a whole `Packet` when it returned PARSED_IP.
    let pkt = unsafe { slot.assume_init() };
    let global_monitor = flags & CFG_MONITOR != 0;
    let bans = flags & CFG_BANS != 0;
    let now = if ctl.clock_frozen != 0 {
        ctl.clock_offset_ns
    } else {
        // SAFETY: the helper takes no arguments and only reads the clock.
        unsafe { bpf_ktime_get_coarse_ns() }.wrapping_add(ctl.clock_offset_ns)
    };

    // O(1) rule lookup: one array slot per protocol and port. A packet without a port (a
    // non-first fragment, ESP, GRE, …) has no slot in the table: it belongs to no rule.
    // (An index of PORT_TABLE_LEN would be the *other* half's TCP port 0.)
    let index = match pkt.l4 {
        L4_TCP => Some(port_index(PROTO_SLOT_TCP, pkt.dport)),
        L4_UDP => Some(port_index(PROTO_SLOT_UDP, pkt.dport)),
        L4_ICMP => Some(PORT_INDEX_ICMP),
        _ => None,
    };
    let rule_id = match index.and_then(|i| SHIELD_PORTS.get(half * PORT_TABLE_LEN + i)) {
        Some(id) if *id < RULE_SLOTS => *id,
        _ => 0,
    };

    // Lists, allow first. Lookups are skipped while a list is empty (they cost 37-665 ns).
    let (allow_flag, deny_flag) = if pkt.family == FAMILY_V4 {
        (CFG_ALLOW_V4, CFG_DENY_V4)
    } else {
        (CFG_ALLOW_V6, CFG_DENY_V6)
    };
    if flags & allow_flag != 0 && listed(&pkt, list_half, true) {
        count(rule_id, Reason::Allow, len);
        return Ok(xdp_action::XDP_PASS);
    }
    if flags & deny_flag != 0 && listed(&pkt, list_half, false) {
        return Ok(verdict(rule_id, Reason::Deny, global_monitor, len));
    }
    // Like the deny list, follows the global mode.
    if pkt.l4 == L4_BAD_FRAGMENT {
        return Ok(verdict(0, Reason::BadFragment, global_monitor, len));
    }
    // Host-scope bans cover every port, matched or not. A monitor-mode ban exempts
    // nothing: it only turns the pass the normal judgement gives into `would_ban`.
    let mut watched = false;
    if bans {
        match host_ban(&pkt, now) {
            BAN_HIT_DROP => {
                count(rule_id, Reason::Ban, len);
                return Ok(xdp_action::XDP_DROP);
            }
            BAN_HIT_MONITOR => watched = true,
            _ => {}
        }
    }
    let pass = if watched {
        Reason::WouldBan
    } else {
        Reason::Pass
    };

    if rule_id == 0 {
        count(0, pass, len);
        return Ok(xdp_action::XDP_PASS);
    }
    let Some(rule) = SHIELD_RULES.get(half * RULE_SLOTS + rule_id) else {
        count(0, pass, len);
        return Ok(xdp_action::XDP_PASS);
    };
    if rule.flags & RULE_PRESENT == 0 {
        count(rule_id, pass, len);
        return Ok(xdp_action::XDP_PASS);
    }
    let prefix = if pkt.family == FAMILY_V4 {
        rule.v4_prefix
    } else {
        rule.v6_prefix
    };
    let key = SourceKey {
        rule: rule_id as u16,
        family: pkt.family,
        prefix_len: prefix,
        addr: mask_prefix(pkt.src, prefix),
    };
    if bans && let Some(ban) = SHIELD_RBANS.get_ptr(key) {
        // SAFETY: pointer from a successful lookup, valid during this run (RCU).
        match ban_hit(unsafe { &*ban }, now, &pkt) {
            BAN_HIT_DROP => {
                count(rule_id, Reason::Ban, len);
                return Ok(xdp_action::XDP_DROP);
            }
            BAN_HIT_MONITOR => watched = true,
            _ => {}
        }
    }
    let pass = if watched {
        Reason::WouldBan
    } else {
        Reason::Pass
    };
    let monitor = rule.flags & RULE_MONITOR != 0;

    // Spoofed-source floods: connection attempts from sources that never proved real share
    // the rule's `unverified` budget. While it is spent they are dropped before any
    // per-source state is touched; otherwise the budget is charged only once the source's
    // own limits admit the attempt, so one real source over its limit cannot drain it.
    let mut charge = false;
    if rule.unverified.interval_ns != 0 && pkt.l4 == L4_TCP {
        let vkey = verified_key(pkt.family, pkt.src);
        if pkt.conn_attempt {
            if is_verified(&vkey, now, verified_ttl) {
                rule_stat(rule_id, RS_VERIFIED_CONNS);
            } else if budget_left(rule_id, &rule.unverified, now) {
                charge = true;
            } else {
                return Ok(verdict(rule_id, Reason::UnverifiedLimit, monitor, len));
            }
        } else if pkt.tcp_data {
            prove(ctx, &pkt, &vkey, now);
        }
    }

    let reason = if needs_state(rule, pkt.conn_attempt) {
        judge_source(rule, &key, &pkt, now, seed)
    } else {
        Reason::Pass
    };
    let reason = match reason {
        Reason::Pass if charge => {
            if take_budget(rule_id, &rule.unverified, now) {
                rule_stat(rule_id, RS_UNVERIFIED_ADMITTED);
                pass
            } else {
                // Another CPU took the last token since `budget_left`.
                Reason::UnverifiedLimit
            }
        }
        Reason::Pass => pass,
        other => other,
    };
    // The rule's flag holds its effective mode (its own `mode`, else the global one), so
    // that a rule can be enforced while the rest of the policy is still monitored.
    Ok(verdict(rule_id, reason, monitor, len))
}

/// Judges a packet by its source's own limits. A known source is updated in place (no
/// insert); for a source without state the sketch decides whether it is heavy enough to
/// be tracked exactly, so one-off sources never cost an LRU insert. Not inlined: its own
/// stack frame keeps the program under the 512-byte BPF stack.
#[inline(never)]
fn judge_source(rule: &RuleConfig, key: &SourceKey, pkt: &Packet, now: u64, seed: u64) -> Reason {
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

/// Two sketch cells of a source in one class, with the backlog they give.
struct Cells {
    p: [*mut u64; 2],
    backlog: u64,
    base: u64,
}

#[inline(always)]
fn cells(class: usize, h: u64, now: u64, shift: u8) -> Option<Cells> {
    let p0 = SHIELD_SKETCH.get_ptr_mut(cell_index(class, 0, h))?;
    let p1 = SHIELD_SKETCH.get_ptr_mut(cell_index(class, 1, h))?;
    // SAFETY: array slots from successful lookups. Other CPUs may update them at the same
    // time; a lost update only makes an estimate one packet low.
    let (backlog, base) = sketch::backlog(unsafe { [*p0, *p1] }, now, shift);
    Some(Cells {
        p: [p0, p1],
        backlog,
        base,
    })
}

/// The sketch's answer for a source without state (`h`: its sketch hash): `false` when it
/// stays untracked (the packet is counted in the sketch), `true` when it is promoted, with
/// the backlogs to draw in `drawn`. Not inlined: its own stack frame.
#[inline(never)]
fn untracked(
    rule: &RuleConfig,
    h: u64,
    conn_attempt: bool,
    now: u64,
    drawn: &mut [u64; 2],
) -> bool {
    let sk = rule.sketch;
    let active = [conn_attempt && rule.has_conn_limit(), rule.has_pkt_limit()];
    let read = |class: usize, present: bool| {
        if present && sk[class].slack != 0 {
            cells(class, h, now, sk[class].shift)
        } else {
            None
        }
    };
    // Only the classes this packet counts in; the other is read on promotion only.
    let conn = read(CLASS_CONN, active[CLASS_CONN]);
    let pkts = read(CLASS_PKT, active[CLASS_PKT]);
    let backlogs = [
        conn.as_ref().map_or(0, |c| c.backlog),
        pkts.as_ref().map_or(0, |c| c.backlog),
    ];
    match admission(
        backlogs,
        active,
        [sk[CLASS_CONN].slack, sk[CLASS_PKT].slack],
    ) {
        Admission::Promote(mut d) => {
            // Not a connection attempt: still draw the source's untracked connections.
            if !active[CLASS_CONN]
                && let Some(c) = read(CLASS_CONN, rule.has_conn_limit())
            {
                d[CLASS_CONN] = sketch::drawn(c.backlog, sk[CLASS_CONN].slack);
            }
            *drawn = d;
            true
        }
        Admission::Untracked => {
            if let (true, Some(c)) = (active[CLASS_CONN], &conn) {
                count_in(c, sk[CLASS_CONN].shift);
            }
            if let (true, Some(c)) = (active[CLASS_PKT], &pkts) {
                count_in(c, sk[CLASS_PKT].shift);
            }
            false
        }
    }
}

#[inline(always)]
fn count_in(c: &Cells, shift: u8) {
    for p in c.p {
        // SAFETY: array slots from successful lookups (see `cells`).
        unsafe { *p = sketch::counted(*p, c.base, shift) };
    }
}

#[inline(always)]
fn is_verified(vkey: &SourceKey, now: u64, ttl: u64) -> bool {
    match SHIELD_VERIFIED.get_ptr(vkey) {
        // SAFETY: pointer from a successful lookup, valid during this run (RCU).
        Some(t) => still_verified(unsafe { *t }, now, ttl),
        None => false,
    }
}

/// Whether the rule's `unverified` budget has a token now (nothing drawn).
#[inline(always)]
fn budget_left(rule_id: u32, budget: &Gcra, now: u64) -> bool {
    match SHIELD_BUDGET.get(rule_id) {
        Some(tat) => budget.check(*tat, now).is_some(),
        None => true,
    }
}

/// Draws one connection attempt from the rule's `unverified` budget.
#[inline(always)]
fn take_budget(rule_id: u32, budget: &Gcra, now: u64) -> bool {
    let Some(tat) = SHIELD_BUDGET.get_ptr_mut(rule_id) else {
        return true;
    };
    // Atomic against other CPUs drawing from the same budget.
    draw(budget, tat, now)
}

/// A data segment of a source that is not (or no longer freshly) verified: if the kernel
/// holds an established socket for its 4-tuple, the source completed a handshake and is
/// real. Proofs are refreshed at most once per `VERIFIED_REFRESH_NS`.
#[inline(never)]
fn prove(ctx: &XdpContext, pkt: &Packet, vkey: &SourceKey, now: u64) {
    if let Some(t) = SHIELD_VERIFIED.get_ptr_mut(vkey) {
        // SAFETY: pointer from a successful lookup, valid during this run (RCU).
        let last = unsafe { *t };
        if now.saturating_sub(last) >= VERIFIED_REFRESH_NS && established(ctx, pkt) {
            // SAFETY: as above.
            unsafe { *t = now };
        }
        return;
    }
    if established(ctx, pkt) {
        if SHIELD_VERIFIED.insert(vkey, now, 0).is_err() {
            diag(DIAG_VERIFIED_INSERT_FAILED);
        } else {
            diag(DIAG_VERIFICATIONS);
        }
    }
}

/// Whether this host has an established TCP socket for the packet's 4-tuple.
#[inline(always)]
fn established(ctx: &XdpContext, pkt: &Packet) -> bool {
    let s = pkt.src;
    // At most 22 (Ethernet + two VLAN tags); the mask gives the verifier a small bound.
    let off = (pkt.l3_off & 0x3f) as usize;
    // SAFETY: an all-zero tuple is a valid value of this plain-data union.
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    let size = if pkt.family == FAMILY_V4 {
        let Ok(d) = bytes::<4>(ctx, off + 16) else {
            return false;
        };
        tuple.__bindgen_anon_1.ipv4 = bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1 {
            saddr: u32::from_ne_bytes([s[0], s[1], s[2], s[3]]),
            daddr: u32::from_ne_bytes([d[0], d[1], d[2], d[3]]),
            sport: pkt.sport.to_be(),
            dport: pkt.dport.to_be(),
        };
        core::mem::size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1>()
    } else {
        let Ok(d) = bytes::<16>(ctx, off + 24) else {
            return false;
        };
        let w = |a: [u8; 16], i: usize| {
            u32::from_ne_bytes([a[4 * i], a[4 * i + 1], a[4 * i + 2], a[4 * i + 3]])
        };
        tuple.__bindgen_anon_1.ipv6 = bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2 {
            saddr: [w(s, 0), w(s, 1), w(s, 2), w(s, 3)],
            daddr: [w(d, 0), w(d, 1), w(d, 2), w(d, 3)],
            sport: pkt.sport.to_be(),
            dport: pkt.dport.to_be(),
        };
        core::mem::size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2>()
    };
    // SAFETY: the tuple lives on the stack for the call; the returned socket, when not
    // null, is released before returning (the verifier checks it).
    unsafe {
        let sk = bpf_sk_lookup_tcp(
            ctx.ctx as *mut _,
            &mut tuple,
            size as u32,
            BPF_F_CURRENT_NETNS as u64,
            0,
        );
        if sk.is_null() {
            return false;
        }
        let state = (*sk).state;
        bpf_sk_release(sk as *mut _);
        state == BPF_TCP_ESTABLISHED
    }
}

#[inline(always)]
fn rule_stat(rule_id: u32, slot: u32) {
    if let Some(c) = SHIELD_RSTATS.get_ptr_mut(rule_stat_index(rule_id, slot)) {
        // SAFETY: per-CPU slot from a successful lookup.
        unsafe { *c += 1 };
    }
}

/// Attempts of a compare-and-exchange before the packet is judged over the limit. Each
/// lost attempt means another CPU drew from the same bucket meanwhile (progress), so this
/// only bites when several CPUs race on one source at millions of packets per second.
const CAS_TRIES: usize = 8;

/// BPF_CMPXCHG on a u64 in a map value: the value found, and whether it was `old` (and
/// is now `new`).
#[inline(always)]
fn cas(p: *mut u64, old: u64, new: u64) -> (u64, bool) {
    // SAFETY: `p` points to an 8-byte aligned u64 in a map value, valid during this run.
    unsafe {
        atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(p, old, new)
    }
}

/// Draws one token from `bucket` whose TAT is at `p`, atomically against other CPUs:
/// `true` when drawn, `false` when over the limit (or `CAS_TRIES` attempts lost to other
/// CPUs). Not inlined: its retry loop stays out of its callers' stack frames.
#[inline(never)]
fn draw(bucket: &Gcra, p: *mut u64, now: u64) -> bool {
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
fn judge_shared(
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
fn decide(
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

#[inline(always)]
fn insert_host_ban(key: &SourceKey, ban: &BanValue) -> Result<(), i32> {
    let a = key.addr;
    if key.family == FAMILY_V4 {
        SHIELD_HBAN4.insert(
            Key {
                prefix_len: key.prefix_len as u32,
                data: [a[0], a[1], a[2], a[3]],
            },
            ban,
            0,
        )
    } else {
        SHIELD_HBAN6.insert(
            Key {
                prefix_len: key.prefix_len as u32,
                data: a,
            },
            ban,
            0,
        )
    }
}

/// The strongest host ban covering the packet's source (`BAN_HIT_*`). The trie answers
/// with the longest matching prefix only; when that ban has lapsed or is monitor-only, the
/// lookup goes on below its prefix length, so an active ban on a shorter prefix (a /24
/// under a lapsed /32) is still honoured. One lookup while the first match is active or
/// there is none, which is every packet but those of such nested bans.
#[inline(never)]
fn host_ban(pkt: &Packet, now: u64) -> u8 {
    let v4 = pkt.family == FAMILY_V4;
    let mut plen: u32 = if v4 { 32 } else { 128 };
    let mut hit = BAN_HIT_NONE;
    for _ in 0..HOST_BAN_WALK {
        let s = pkt.src;
        let found = if v4 {
            SHIELD_HBAN4.get(Key {
                prefix_len: plen,
                data: [s[0], s[1], s[2], s[3]],
            })
        } else {
            SHIELD_HBAN6.get(Key {
                prefix_len: plen,
                data: s,
            })
        };
        let Some(ban) = found else {
            break;
        };
        match ban_hit(ban, now, pkt) {
            BAN_HIT_DROP => return BAN_HIT_DROP,
            BAN_HIT_MONITOR => hit = BAN_HIT_MONITOR,
            _ => {}
        }
        let found_len = ban.prefix_len as u32;
        if found_len == 0 || found_len > plen {
            break;
        }
        plen = found_len - 1;
    }
    hit
}

/// Ban flags that let this packet through: an attempts-only ban (`BAN_ATTEMPTS`) passes
/// the segments of TCP connections (no SYN), which go on to the normal judgement.
#[inline(always)]
fn passes(pkt: &Packet) -> u8 {
    if pkt.l4 == L4_TCP && !pkt.conn_attempt {
        BAN_ATTEMPTS
    } else {
        0
    }
}

/// `ban_hit`: the ban has expired (the daemon removes expired bans and logs their end).
const BAN_HIT_NONE: u8 = 0;
/// An active ban: the packet is dropped.
const BAN_HIT_DROP: u8 = 1;
/// An active monitor-mode ban: the packet is judged as if unbanned; a pass counts as
/// `would_ban`.
const BAN_HIT_MONITOR: u8 = 2;

#[inline(always)]
fn ban_hit(ban: &BanValue, now: u64, pkt: &Packet) -> u8 {
    if now >= ban.expires_ns || ban.flags & passes(pkt) != 0 {
        BAN_HIT_NONE
    } else if ban.flags & BAN_MONITOR != 0 {
        BAN_HIT_MONITOR
    } else {
        BAN_HIT_DROP
    }
}

#[inline(always)]
fn emit(
    kind: u32,
    reason: Reason,
    key: &SourceKey,
    out: &Outcome,
    now: u64,
    limited: u64,
    host: u32,
) {
    // Written in place in the ring buffer, not on the stack.
    let Some(mut entry) = SHIELD_EVENTS.reserve::<Event>(0) else {
        diag(DIAG_EVENTS_LOST);
        return;
    };
    entry.write(Event {
        kind,
        reason: reason as u32,
        key: *key,
        strikes: out.strikes,
        level: out.level,
        ts_ns: now,
        duration_ns: out.ban_ns,
        limited,
        host_scope: host,
        _pad: [0; 4],
    });
    entry.submit(0);
}

#[inline(always)]
fn diag(slot: u32) {
    if let Some(c) = SHIELD_DIAG.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot from a successful lookup.
        unsafe { *c += 1 };
    }
}

/// Counts and returns the action for `reason`, turning drops into `would_drop` passes in
/// monitor mode.
#[inline(always)]
fn verdict(rule_id: u32, reason: Reason, monitor: bool, len: u64) -> u32 {
    if !reason.is_drop() {
        count(rule_id, reason, len);
        xdp_action::XDP_PASS
    } else if monitor {
        count(rule_id, Reason::WouldDrop, len);
        xdp_action::XDP_PASS
    } else {
        count(rule_id, reason, len);
        xdp_action::XDP_DROP
    }
}

#[inline(always)]
fn listed(pkt: &Packet, half: u8, allow: bool) -> bool {
    let a = pkt.src;
    if pkt.family == FAMILY_V4 {
        let key = Key {
            prefix_len: 40,
            data: [half, a[0], a[1], a[2], a[3]],
        };
        let trie = if allow { &SHIELD_ALLOW4 } else { &SHIELD_DENY4 };
        trie.get(&key).is_some()
    } else {
        let key = Key {
            prefix_len: 136,
            data: [
                half, a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9], a[10], a[11],
                a[12], a[13], a[14], a[15],
            ],
        };
        let trie = if allow { &SHIELD_ALLOW6 } else { &SHIELD_DENY6 };
        trie.get(&key).is_some()
    }
}

#[inline(always)]
fn count(rule_id: u32, reason: Reason, len: u64) {
    if let Some(c) = SHIELD_COUNTERS.get_ptr_mut(counter_index(rule_id, reason)) {
        // SAFETY: per-CPU slot from a successful lookup; no other CPU writes it and the
        // program is not preempted on this CPU while it runs.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += len;
        }
    }
}

/// The only way the program reads the packet: a bounds-checked pointer to a `T` at `off`.
#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Result<*const T, ()> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + core::mem::size_of::<T>() > end {
        return Err(());
    }
    Ok((start + off) as *const T)
}

/// Reads `N` bytes at `off` (unaligned, bounds-checked).
#[inline(always)]
fn bytes<const N: usize>(ctx: &XdpContext, off: usize) -> Result<[u8; N], ()> {
    let p = ptr_at::<[u8; N]>(ctx, off)?;
    // SAFETY: `ptr_at` checked that N bytes are inside the packet; [u8; N] has alignment 1.
    Ok(unsafe { core::ptr::read_unaligned(p) })
}

/// Fills `out` from the frame; returns a `PARSED_*` code. Not inlined: the parser's
/// temporaries get their own stack frame, released before the rest of the program runs.
#[inline(never)]
fn parse(raw: *mut aya_ebpf::bindings::xdp_md, out: *mut Packet) -> i32 {
    // Opaque to the optimiser: it must not split the context into data/data_end arguments
    // (the verifier forbids arithmetic on a data_end passed that way).
    let ctx = XdpContext::new(core::hint::black_box(raw));
    match parse_frame(&ctx) {
        Ok(Some(p)) => {
            // SAFETY: `out` points to the caller's slot for one Packet.
            unsafe { out.write(p) };
            PARSED_IP
        }
        Ok(None) => PARSED_NOT_IP,
        Err(()) => PARSED_MALFORMED,
    }
}

#[inline(always)]
fn parse_frame(ctx: &XdpContext) -> Result<Option<Packet>, ()> {
    let eth: [u8; ETH_HLEN] = bytes(ctx, 0)?;
    let mut ethertype = u16::from_be_bytes([eth[12], eth[13]]);
    let mut off = ETH_HLEN;
    // Up to two VLAN tags (802.1Q, 802.1ad QinQ).
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        let tag: [u8; 4] = bytes(ctx, off)?;
        ethertype = u16::from_be_bytes([tag[2], tag[3]]);
        off += 4;
        if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
            let tag: [u8; 4] = bytes(ctx, off)?;
            ethertype = u16::from_be_bytes([tag[2], tag[3]]);
            off += 4;
        }
    }
    match ethertype {
        ETH_P_IPV4 => parse_v4(ctx, off).map(Some),
        ETH_P_IPV6 => parse_v6(ctx, off).map(Some),
        _ => Ok(None),
    }
}

#[inline(always)]
fn parse_v4(ctx: &XdpContext, off: usize) -> Result<Packet, ()> {
    let ip: [u8; 20] = bytes(ctx, off)?;
    if ip[0] >> 4 != 4 {
        return Err(());
    }
    // IHL is 4 bits: at most 60 bytes, at least 20.
    let hlen = ((ip[0] & 0x0f) as usize) * 4;
    if hlen < 20 {
        return Err(());
    }
    let total_len = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    if total_len < hlen {
        return Err(());
    }
    let frag = u16::from_be_bytes([ip[6], ip[7]]);
    let src = [
        ip[12], ip[13], ip[14], ip[15], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];

    // Options must be present in full.
    let _: [u8; 1] = bytes(ctx, off + hlen - 1)?;
    let mut pkt = Packet {
        family: FAMILY_V4,
        src,
        l3_off: off as u16,
        sport: 0,
        l4: L4_NONE,
        dport: 0,
        conn_attempt: false,
        tcp_data: false,
    };
    let proto = ip[9];
    let frag_off = frag & 0x1fff;
    let more_fragments = frag & 0x2000 != 0;
    // Non-first fragments carry no transport header: judged on the source only. RFC 1858:
    // a TCP fragment at offset 1 (8 bytes) can only rewrite the first fragment's flags.
    if frag_off != 0 {
        if frag_off == 1 && proto == IPPROTO_TCP {
            pkt.l4 = L4_BAD_FRAGMENT;
        }
        return Ok(pkt);
    }
    // A first fragment too short for its transport header (by the IP length, what the
    // kernel reassembles; the frame itself may be padded).
    if more_fragments && total_len - hlen < transport_min(proto) {
        pkt.l4 = L4_BAD_FRAGMENT;
        return Ok(pkt);
    }
    parse_l4(ctx, off + hlen, total_len - hlen, proto, &mut pkt)?;
    Ok(pkt)
}

#[inline(always)]
fn parse_v6(ctx: &XdpContext, off: usize) -> Result<Packet, ()> {
    let ip: [u8; 40] = bytes(ctx, off)?;
    if ip[0] >> 4 != 6 {
        return Err(());
    }
    let mut src = [0u8; 16];
    src.copy_from_slice(&ip[8..24]);
    let payload_len = u16::from_be_bytes([ip[4], ip[5]]) as usize;
    let mut pkt = Packet {
        family: FAMILY_V6,
        src,
        l3_off: off as u16,
        sport: 0,
        l4: L4_NONE,
        dport: 0,
        conn_attempt: false,
        tcp_data: false,
    };
    let mut next = ip[6];
    let mut l4off = off + 40;
    let mut first_fragment = false;
    for _ in 0..MAX_EXT_HEADERS {
        match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                let h: [u8; 2] = bytes(ctx, l4off)?;
                next = h[0];
                l4off += (h[1] as usize + 1) * 8;
            }
            IPPROTO_AH => {
                let h: [u8; 2] = bytes(ctx, l4off)?;
                next = h[0];
                l4off += (h[1] as usize + 2) * 4;
            }
            IPPROTO_FRAGMENT => {
                let h: [u8; 4] = bytes(ctx, l4off)?;
                next = h[0];
                let frag_off = u16::from_be_bytes([h[2], h[3]]) >> 3;
                if frag_off != 0 {
                    // Non-first fragment: source only (offset 1 of TCP: RFC 1858, as IPv4).
                    if frag_off == 1 && next == IPPROTO_TCP {
                        pkt.l4 = L4_BAD_FRAGMENT;
                    }
                    return Ok(pkt);
                }
                first_fragment = h[3] & 1 != 0;
                l4off += 8;
            }
            _ => break,
        }
    }
    // A chain longer than MAX_EXT_HEADERS ends on an extension header: parse_l4 then finds
    // no transport it knows and the packet is judged on its source only.
    let l4_len = (off + 40 + payload_len).saturating_sub(l4off);
    // RFC 7112: a first fragment must hold the whole header chain up to and including the
    // transport header; one that does not (the chain ends on an extension header or the
    // transport header is cut) could hide its ports and flags.
    if first_fragment
        && (matches!(
            next,
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_AH | IPPROTO_FRAGMENT
        ) || l4_len < transport_min(next))
    {
        pkt.l4 = L4_BAD_FRAGMENT;
        return Ok(pkt);
    }
    parse_l4(ctx, l4off, l4_len, next, &mut pkt)?;
    Ok(pkt)
}

#[inline(always)]
/// `l4_len`: bytes from the transport header to the end of the IP payload.
fn parse_l4(
    ctx: &XdpContext,
    off: usize,
    l4_len: usize,
    proto: u8,
    pkt: &mut Packet,
) -> Result<(), ()> {
    match proto {
        IPPROTO_TCP => {
            let tcp: [u8; 20] = bytes(ctx, off)?;
            if tcp[12] >> 4 < 5 {
                return Err(());
            }
            pkt.l4 = L4_TCP;
            pkt.sport = u16::from_be_bytes([tcp[0], tcp[1]]);
            pkt.dport = u16::from_be_bytes([tcp[2], tcp[3]]);
            pkt.conn_attempt = tcp[13] & (TCP_SYN | TCP_ACK) == TCP_SYN;
            let doff = (tcp[12] >> 4) as usize * 4;
            pkt.tcp_data = tcp[13] & TCP_SYN == 0 && l4_len > doff;
        }
        IPPROTO_UDP => {
            let udp: [u8; 8] = bytes(ctx, off)?;
            pkt.l4 = L4_UDP;
            pkt.dport = u16::from_be_bytes([udp[2], udp[3]]);
        }
        IPPROTO_ICMP => {
            let _: [u8; 4] = bytes(ctx, off)?;
            pkt.l4 = L4_ICMP;
        }
        IPPROTO_ICMPV6 => {
            let icmp: [u8; 4] = bytes(ctx, off)?;
            // Neighbour discovery (router/neighbour solicitation and advertisement,
            // redirect: types 133-137) is IPv6's ARP: limiting it would cut the source
            // off the link. It passes untracked, like ARP.
            if !(133..=137).contains(&icmp[0]) {
                pkt.l4 = L4_ICMP;
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
