//! A reference model of the whole verdict, for the differential fuzzer (`cargo xtask
//! fuzz`): parse, lists, bad fragments, bans (the nested host-ban walk, attempts-only and
//! monitor bans), rule lookup, the `unverified` budget, the sketch, per-source buckets and
//! escalation, counters. Written from the README's semantics with ordinary host data
//! structures (hash maps, prefix scans); it shares only the arithmetic the README defines
//! (GCRA, the sketch's cells and admission, strikes and the ban ladder), never the XDP
//! program's code. Host only.
//!
//! Not modelled: socket lookups (the fuzzer's frames never match an established socket:
//! sources are verified only by the fuzzer writing the verified set, in both), SYN
//! cookies' values (the fuzzer's ACKs never carry a valid one: every segment without SYN of
//! an unverified source that a `syncookie` rule checks is `bad_cookie`), map capacities (the
//! fuzzer stays far below them) and the bytes of a RST (`over_limit = "reset"`: the verdict
//! `TX` is modelled, the reply's bytes are checked by the PROG_RUN tests and the fuzzer).

use std::collections::HashMap;

use crate::{
    BAN_ATTEMPTS, BAN_MONITOR, BanValue, CFG_ALLOW_V4, CFG_ALLOW_V6, CFG_BANS, CFG_DENY_V4,
    CFG_DENY_V6, CFG_MONITOR, HOST_BAN_WALK, PORT_INDEX_ICMP, PROTO_SLOT_TCP, PROTO_SLOT_UDP,
    RULE_BAN_HOST, RULE_MONITOR, RULE_PRESENT, RULE_RESET, RULE_SLOTS, RULE_SYNCOOKIE, Reason,
    RuleConfig, SourceKey, SourceState,
    addr::{FAMILY_V4, mask_prefix},
    judge::{automatic_ban, escalate, judge, needs_state, still_verified, verified_key},
    port_index,
    reset::{reset_due, reset_stamp},
    sketch::{self, Admission, CLASS_CONN, CLASS_PKT, SKETCH_CELLS},
};

mod frame;

pub use frame::{Frame, Handshake, Parsed, Transport, handshake, parse};
use frame::{HANDSHAKE_FLAGS, be16, get};

/// XDP actions.
pub const DROP: u32 = 1;
pub const PASS: u32 = 2;
/// A reply sent back out of the interface (a RST, a `syncookie` SYN-ACK).
pub const TX: u32 = 3;

/// The policy in force, as compiled into the maps (active half).
#[derive(Clone, Debug)]
pub struct Policy {
    /// `GlobalConfig::flags`.
    pub flags: u32,
    pub seed: u64,
    /// `PORT_TABLE_LEN` slots.
    pub ports: Vec<u32>,
    /// `RULE_SLOTS` slots.
    pub rules: Vec<RuleConfig>,
    /// (address, prefix length, family) of the allow and deny lists.
    pub allow: Vec<([u8; 16], u8, u8)>,
    pub deny: Vec<([u8; 16], u8, u8)>,
    /// `GlobalConfig::verified_ttl_ns`.
    pub verified_ttl: u64,
}

/// Counters per (rule id, reason): (packets, bytes).
pub type Counters = HashMap<(u32, Reason), (u64, u64)>;

/// Everything the data path keeps between packets.
#[derive(Clone, Debug, Default)]
pub struct Model {
    pub sources: HashMap<SourceKey, SourceState>,
    /// Host bans by (family, prefix length, masked address).
    pub host_bans: HashMap<(u8, u8, [u8; 16]), BanValue>,
    pub rule_bans: HashMap<SourceKey, BanValue>,
    pub sketch: Vec<u64>,
    pub budget: HashMap<u32, u64>,
    /// The verified set: `verified_key` -> clock of the proof.
    pub verified: HashMap<SourceKey, u64>,
    /// Per rule: TAT of its `resets` cap.
    pub resets: HashMap<u32, u64>,
    pub counters: Counters,
    /// Events emitted: (kind, source key).
    pub events: Vec<(u32, SourceKey)>,
}

fn listed(list: &[([u8; 16], u8, u8)], family: u8, src: [u8; 16]) -> bool {
    list.iter()
        .any(|(a, len, fam)| *fam == family && mask_prefix(src, *len) == *a)
}

/// A ban's effect on a packet: None (lapsed, or an attempts-only ban and a segment of a
/// connection), Some(true) drop, Some(false) monitor.
fn ban_effect(ban: &BanValue, now: u64, established_segment: bool) -> Option<bool> {
    if now >= ban.expires_ns || (ban.flags & BAN_ATTEMPTS != 0 && established_segment) {
        None
    } else {
        Some(ban.flags & BAN_MONITOR == 0)
    }
}

impl Model {
    pub fn new() -> Model {
        Model {
            sketch: vec![0; SKETCH_CELLS as usize],
            ..Default::default()
        }
    }

    fn count(&mut self, rule: u32, reason: Reason, len: u64) {
        let c = self.counters.entry((rule, reason)).or_default();
        c.0 += 1;
        c.1 += len;
    }

    fn verdict(&mut self, rule: u32, reason: Reason, monitor: bool, len: u64) -> u32 {
        if !reason.is_drop() {
            self.count(rule, reason, len);
            PASS
        } else if monitor {
            self.count(rule, Reason::WouldDrop, len);
            PASS
        } else {
            self.count(rule, reason, len);
            DROP
        }
    }

    /// The host ban covering `src`: longest prefix first; a lapsed, monitor-only or
    /// non-applying ban lets the search go on to shorter prefixes (at most `HOST_BAN_WALK`).
    fn host_ban(&self, p: &Parsed, now: u64, established_segment: bool) -> Option<bool> {
        let mut below = if p.family == FAMILY_V4 { 32u8 } else { 128 };
        let mut watched = None;
        for _ in 0..HOST_BAN_WALK {
            let found = self
                .host_bans
                .iter()
                .filter(|((fam, len, a), _)| {
                    *fam == p.family && *len <= below && mask_prefix(p.src, *len) == *a
                })
                .max_by_key(|((_, len, _), _)| *len);
            let Some((_, ban)) = found else {
                break;
            };
            match ban_effect(ban, now, established_segment) {
                Some(true) => return Some(true),
                Some(false) => watched = Some(false),
                None => {}
            }
            if ban.prefix_len == 0 || ban.prefix_len > below {
                break;
            }
            below = ban.prefix_len - 1;
        }
        watched
    }

    /// Judges one frame at `now`: the XDP action.
    pub fn run(&mut self, pol: &Policy, frame: &[u8], now: u64) -> u32 {
        let len = frame.len() as u64;
        let p = match parse(frame) {
            Frame::NotIp => {
                self.count(0, Reason::Pass, len);
                return PASS;
            }
            Frame::Malformed => {
                self.count(0, Reason::Malformed, len);
                return PASS;
            }
            Frame::Hidden => {
                let monitor = pol.flags & CFG_MONITOR != 0;
                return self.verdict(0, Reason::HiddenHeader, monitor, len);
            }
            Frame::Ip(p) => p,
        };
        let global_monitor = pol.flags & CFG_MONITOR != 0;
        let slot = match p.transport {
            Transport::Tcp { dport, .. } => Some(port_index(PROTO_SLOT_TCP, dport)),
            Transport::Udp { dport } => Some(port_index(PROTO_SLOT_UDP, dport)),
            Transport::Icmp => Some(PORT_INDEX_ICMP),
            _ => None,
        };
        let rule_id = slot
            .and_then(|s| pol.ports.get(s as usize).copied())
            .filter(|id| *id < RULE_SLOTS)
            .unwrap_or(0);
        let (allow, deny) = if p.family == FAMILY_V4 {
            (CFG_ALLOW_V4, CFG_DENY_V4)
        } else {
            (CFG_ALLOW_V6, CFG_DENY_V6)
        };
        if pol.flags & allow != 0 && listed(&pol.allow, p.family, p.src) {
            self.count(rule_id, Reason::Allow, len);
            return PASS;
        }
        if pol.flags & deny != 0 && listed(&pol.deny, p.family, p.src) {
            return self.verdict(rule_id, Reason::Deny, global_monitor, len);
        }
        if p.transport == Transport::BadFragment {
            return self.verdict(0, Reason::BadFragment, global_monitor, len);
        }
        if p.transport == Transport::Hidden {
            return self.verdict(0, Reason::HiddenHeader, global_monitor, len);
        }
        let established_segment = matches!(
            p.transport,
            Transport::Tcp {
                syn_only: false,
                ..
            }
        );
        let bans = pol.flags & CFG_BANS != 0;
        let mut watched = false;
        if bans {
            match self.host_ban(&p, now, established_segment) {
                Some(true) => {
                    self.count(rule_id, Reason::Ban, len);
                    return DROP;
                }
                Some(false) => watched = true,
                None => {}
            }
        }
        let pass = |w: bool| if w { Reason::WouldBan } else { Reason::Pass };
        let rule = match pol.rules.get(rule_id as usize) {
            Some(r) if rule_id != 0 => *r,
            _ => {
                self.count(0, pass(watched), len);
                return PASS;
            }
        };
        if rule.flags & RULE_PRESENT == 0 {
            self.count(rule_id, pass(watched), len);
            return PASS;
        }
        let prefix = if p.family == FAMILY_V4 {
            rule.v4_prefix
        } else {
            rule.v6_prefix
        };
        let key = SourceKey {
            rule: rule_id as u16,
            family: p.family,
            prefix_len: prefix,
            addr: mask_prefix(p.src, prefix),
        };
        if bans && let Some(ban) = self.rule_bans.get(&key) {
            match ban_effect(ban, now, established_segment) {
                Some(true) => {
                    self.count(rule_id, Reason::Ban, len);
                    return DROP;
                }
                Some(false) => watched = true,
                None => {}
            }
        }
        let monitor = rule.flags & RULE_MONITOR != 0;
        let conn = matches!(p.transport, Transport::Tcp { syn_only: true, .. });
        let is_verified = self
            .verified
            .get(&verified_key(p.family, p.src))
            .is_some_and(|t| still_verified(*t, now, pol.verified_ttl));
        let verified = conn && is_verified;
        // The budget: every connection attempt of an unverified source to a tcp rule with
        // a budget needs a token; it is charged only when the source's own limits admit it.
        let charge = rule.unverified.is_enabled() && conn && !verified;
        let cookies = rule.flags & RULE_SYNCOOKIE != 0;
        if charge {
            let tat = self.budget.get(&rule_id).copied().unwrap_or(0);
            if rule.unverified.check(tat, now).is_none() {
                // `syncookie`: answered with a SYN-ACK when the frame is one it handles.
                let answerable = matches!(
                    handshake(frame),
                    Some(h) if h.flags & HANDSHAKE_FLAGS == 0x02 && h.whole_header
                );
                if cookies && !monitor && answerable {
                    self.count(rule_id, Reason::SynCookie, len);
                    return TX;
                }
                return self.verdict(rule_id, Reason::UnverifiedLimit, monitor, len);
            }
        }
        // `syncookie`: a segment without SYN (data, FIN or RST or not) from an unverified
        // source that no socket holds must carry ACK and a valid cookie, as SYNPROXY
        // requires; the fuzzer's never do.
        if cookies
            && !is_verified
            && rule.unverified.is_enabled()
            && matches!(p.transport, Transport::Tcp { .. })
            && !conn
            && matches!(handshake(frame), Some(h) if h.flags & 0x02 == 0)
        {
            return self.verdict(rule_id, Reason::BadCookie, monitor, len);
        }
        let reason = if needs_state(&rule, conn) {
            self.judge_source(&rule, &key, conn, now, pol.seed)
        } else {
            Reason::Pass
        };
        let reason = match reason {
            Reason::Pass if charge => {
                let tat = self.budget.get(&rule_id).copied().unwrap_or(0);
                match rule.unverified.check(tat, now) {
                    Some(next) => {
                        self.budget.insert(rule_id, next);
                        pass(watched)
                    }
                    None => Reason::UnverifiedLimit,
                }
            }
            Reason::Pass => pass(watched),
            other => other,
        };
        // `over_limit = "reset"`: a refused SYN of a verified source, once a second per
        // source, within the rule's `resets` cap, if it carries no IP options/extensions
        // and is a connection request to a listener (neither RST nor FIN set).
        let plain_syn = matches!(p.transport, Transport::Tcp { plain: true, .. })
            && handshake(frame).is_some_and(|h| h.flags & 0x05 == 0);
        if matches!(reason, Reason::ConnLimit | Reason::PktLimit)
            && conn
            && plain_syn
            && rule.flags & RULE_RESET != 0
            && !monitor
            && verified
            && let Some(state) = self.sources.get_mut(&key)
            && reset_due(state.reset_at, now)
        {
            let tat = self.resets.get(&rule_id).copied().unwrap_or(0);
            if let Some(next) = rule.resets.check(tat, now) {
                state.reset_at = reset_stamp(now);
                self.resets.insert(rule_id, next);
                self.count(rule_id, Reason::Reset, len);
                return TX;
            }
        }
        self.verdict(rule_id, reason, monitor, len)
    }

    fn cells(&self, class: usize, h: u64, now: u64, shift: u8) -> ([usize; 2], u64, u64) {
        let i = [
            sketch::cell_index(class, 0, h) as usize,
            sketch::cell_index(class, 1, h) as usize,
        ];
        let (backlog, base) = sketch::backlog([self.sketch[i[0]], self.sketch[i[1]]], now, shift);
        (i, backlog, base)
    }

    /// A source's own limits: exact state when it has some; else the sketch decides
    /// whether it stays untracked or is promoted with its backlog drawn.
    fn judge_source(
        &mut self,
        rule: &RuleConfig,
        key: &SourceKey,
        conn: bool,
        now: u64,
        seed: u64,
    ) -> Reason {
        let mut state = match self.sources.get(key) {
            Some(s) => *s,
            None => {
                let h = sketch::hash(key, seed);
                let sk = rule.sketch;
                let has = [rule.has_conn_limit(), rule.has_pkt_limit()];
                let active = [conn && has[CLASS_CONN], has[CLASS_PKT]];
                let read = |m: &Model, class: usize, present: bool| {
                    (present && sk[class].slack != 0)
                        .then(|| m.cells(class, h, now, sk[class].shift))
                };
                let cells = [
                    read(self, CLASS_CONN, active[CLASS_CONN]),
                    read(self, CLASS_PKT, active[CLASS_PKT]),
                ];
                let backlogs = [cells[0].map_or(0, |c| c.1), cells[1].map_or(0, |c| c.1)];
                let slack = [sk[CLASS_CONN].slack, sk[CLASS_PKT].slack];
                match sketch::admission(backlogs, active, slack) {
                    Admission::Untracked => {
                        for class in [CLASS_CONN, CLASS_PKT] {
                            if let (true, Some((idx, _, base))) = (active[class], cells[class]) {
                                for i in idx {
                                    self.sketch[i] =
                                        sketch::counted(self.sketch[i], base, sk[class].shift);
                                }
                            }
                        }
                        return Reason::Pass;
                    }
                    Admission::Promote(mut drawn) => {
                        if !active[CLASS_CONN]
                            && let Some((_, backlog, _)) = read(self, CLASS_CONN, has[CLASS_CONN])
                        {
                            drawn[CLASS_CONN] = sketch::drawn(backlog, slack[CLASS_CONN]);
                        }
                        sketch::promoted_state(rule, drawn, now)
                    }
                }
            }
        };
        let reason = self.decide(rule, key, &mut state, conn, now);
        self.sources.insert(*key, state);
        reason
    }

    fn decide(
        &mut self,
        rule: &RuleConfig,
        key: &SourceKey,
        state: &mut SourceState,
        conn: bool,
        now: u64,
    ) -> Reason {
        let reason = judge(rule, state, now, conn);
        if !reason.is_drop() {
            return reason;
        }
        let out = escalate(&rule.escalation, state, now);
        if out.first_in_second {
            self.events.push((crate::EV_LIMITED, *key));
        }
        if out.ban_ns != 0 {
            let monitor = rule.flags & RULE_MONITOR != 0;
            let ban = automatic_ban(key, &out, monitor, now);
            let host = rule.flags & RULE_BAN_HOST != 0;
            let stored = if host {
                self.host_bans.get(&(key.family, key.prefix_len, key.addr))
            } else {
                self.rule_bans.get(key)
            };
            // A ban in force that this one would end sooner, or make monitor-only, stays:
            // nothing is stored or reported.
            if stored.is_some_and(|b| crate::ban_stays(b, &ban, now)) {
                return reason;
            }
            if host {
                self.host_bans
                    .insert((key.family, key.prefix_len, key.addr), ban);
            } else {
                self.rule_bans.insert(*key, ban);
            }
            let kind = if monitor {
                crate::EV_WOULD_BAN
            } else {
                crate::EV_BAN
            };
            self.events.push((kind, *key));
        }
        reason
    }
}

/// The RST the program answers a plain SYN `frame` with (`over_limit = "reset"`), per the
/// README: link header (VLAN tags kept) with the MACs swapped, IPv4 (20 bytes, DF, TTL 64)
/// or IPv6 (hop limit 64) with the addresses swapped, TCP RST+ACK with the ports swapped,
/// sequence 0, ACK = the SYN's sequence + 1 + its data, window 0; both checksums. `None`
/// when `frame` is not a SYN the program answers.
pub fn rst_for(frame: &[u8]) -> Option<Vec<u8>> {
    fn sum(b: &[u8]) -> u32 {
        b.chunks(2)
            .map(|c| u32::from(c[0]) << 8 | u32::from(*c.get(1).unwrap_or(&0)))
            .sum()
    }
    fn csum(s: u32) -> [u8; 2] {
        let mut s = s;
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        (!(s as u16)).to_be_bytes()
    }
    let mut off = 14;
    let mut ethertype = be16(get(frame, 12, 2)?);
    for _ in 0..2 {
        if ethertype != 0x8100 && ethertype != 0x88a8 {
            break;
        }
        ethertype = be16(&get(frame, off, 4)?[2..]);
        off += 4;
    }
    let mut out = Vec::with_capacity(off + 60);
    out.extend_from_slice(get(frame, 6, 6)?);
    out.extend_from_slice(get(frame, 0, 6)?);
    out.extend_from_slice(get(frame, 12, off - 12)?);
    let (tcp_at, data, pseudo) = match ethertype {
        0x0800 => {
            let ip = get(frame, off, 20)?;
            let total = be16(&ip[2..]);
            let mut h = [0u8; 20];
            h[0] = 0x45;
            h[2..4].copy_from_slice(&40u16.to_be_bytes());
            h[6] = 0x40;
            h[8] = 64;
            h[9] = 6;
            h[12..16].copy_from_slice(&ip[16..20]);
            h[16..20].copy_from_slice(&ip[12..16]);
            let c = csum(sum(&h));
            h[10..12].copy_from_slice(&c);
            out.extend_from_slice(&h);
            (off + 20, total.saturating_sub(20), sum(&h[12..20]))
        }
        0x86dd => {
            let ip = get(frame, off, 40)?;
            let mut h = [0u8; 40];
            h[0] = 0x60;
            h[4..6].copy_from_slice(&20u16.to_be_bytes());
            h[6] = 6;
            h[7] = 64;
            h[8..24].copy_from_slice(&ip[24..40]);
            h[24..40].copy_from_slice(&ip[8..24]);
            out.extend_from_slice(&h);
            (off + 40, be16(&ip[4..]), sum(&h[8..40]))
        }
        _ => return None,
    };
    let syn = get(frame, tcp_at, 20)?;
    let data = data.saturating_sub(u16::from(syn[12] >> 4) * 4);
    let ack = u32::from_be_bytes([syn[4], syn[5], syn[6], syn[7]])
        .wrapping_add(1)
        .wrapping_add(u32::from(data));
    let mut t = [0u8; 20];
    t[0..2].copy_from_slice(&syn[2..4]);
    t[2..4].copy_from_slice(&syn[0..2]);
    t[8..12].copy_from_slice(&ack.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = 0x14;
    let c = csum(pseudo + 6 + 20 + sum(&t));
    t[16..18].copy_from_slice(&c);
    out.extend_from_slice(&t);
    Some(out)
}

/// A TAT as it matters for every later packet: any TAT at or before `now` is a full
/// bucket (the data path may leave either after a refused draw).
pub fn effective_tat(tat: u64, now: u64) -> u64 {
    tat.max(now)
}
