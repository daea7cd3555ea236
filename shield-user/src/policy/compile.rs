//! `Policy` → map images: exactly what the daemon writes into the kernel maps.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
};

use shield_common::{
    B_CONN, B_CONN_SUSTAINED, B_PKT, B_PKT_SUSTAINED, BUCKETS, CFG_ALLOW_V4, CFG_ALLOW_V6,
    CFG_BANS, CFG_DENY_V4, CFG_DENY_V6, CFG_LOADED, CFG_MONITOR, Escalation, Gcra, GlobalConfig,
    PORT_INDEX_ICMP, PORT_TABLE_LEN, PROTO_SLOT_TCP, PROTO_SLOT_UDP, RULE_BAN_HOST, RULE_MONITOR,
    RULE_NAME_LEN, RULE_PRESENT, RULE_RESET, RULE_SLOTS, RuleConfig, bucket::NS_PER_SEC,
    port_index, sketch::class_sketch,
};

use super::{BanScope, Cidr, Limit, Mode, OverLimit, Policy, Protocol};

/// The map contents for one policy. Rule ids come from `assign_ids` (0 is "no rule").
#[derive(Clone, Debug)]
pub struct CompiledPolicy {
    pub global: GlobalConfig,
    /// `SHIELD_PORTS`, all `PORT_TABLE_LEN` slots.
    pub ports: Vec<u32>,
    /// `SHIELD_RULES`, all `RULE_SLOTS` slots.
    pub rules: Vec<RuleConfig>,
    pub allow_v4: Vec<([u8; 4], u8)>,
    pub allow_v6: Vec<([u8; 16], u8)>,
    pub deny_v4: Vec<([u8; 4], u8)>,
    pub deny_v6: Vec<([u8; 16], u8)>,
    pub max_sources: u32,
}

/// The bucket pair for a limit: `(rate, sustained)`. `None` if the numbers overflow.
pub fn buckets(l: &Limit) -> Option<(Gcra, Gcra)> {
    let rate = Gcra::new(l.rate.count, l.rate.period_secs * NS_PER_SEC, l.burst)?;
    let sustained = match l.sustained {
        Some(s) => Gcra::new(s.count, s.period_secs * NS_PER_SEC, s.count)?,
        None => Gcra::DISABLED,
    };
    Some((rate, sustained))
}

/// The data path's form of an escalation (also what the app layer's ladder runs on).
pub fn escalation_config(e: &super::Escalation) -> Escalation {
    let ns = |d: std::time::Duration| d.as_nanos().min(u128::from(u64::MAX)) as u64;
    Escalation {
        strikes: e.strikes,
        backoff: e.backoff,
        _pad: [0; 4],
        window_ns: ns(e.window),
        ban_ns: ns(e.ban),
        max_ban_ns: ns(e.max_ban),
        forget_ns: ns(e.forget),
    }
}

/// Compiles with fresh rule ids (1, 2, … in file order).
pub fn compile(policy: &Policy) -> CompiledPolicy {
    compile_with_ids(policy, &HashMap::new())
}

/// Rule ids for `policy`: a rule keeps the id its name had (`previous`, from the policy in
/// force), so its limiter state, bans and counters carry over a reload or restart; a new
/// rule takes the lowest id no current or previous rule uses (so that the rules a reload
/// removes leave their ids alone for a while), else the lowest free one. A new rule never
/// inherits what a removed rule left under its id (per-source state, counters, budget):
/// `PolicyMaps::install` forgets it before it gives the id to a new name.
pub fn assign_ids(policy: &Policy, previous: &HashMap<String, u32>) -> Vec<u32> {
    let max = RULE_SLOTS - 1;
    let mut used: HashSet<u32> = HashSet::new();
    let mut ids = vec![0u32; policy.rules.len()];
    for (i, r) in policy.rules.iter().enumerate() {
        if let Some(&id) = previous.get(&r.name)
            && (1..=max).contains(&id)
            && used.insert(id)
        {
            ids[i] = id;
        }
    }
    let reserved: HashSet<u32> = previous.values().copied().collect();
    for id in ids.iter_mut().filter(|id| **id == 0) {
        let fresh = (1..=max).find(|c| !used.contains(c) && !reserved.contains(c));
        let any = (1..=max).find(|c| !used.contains(c));
        if let Some(c) = fresh.or(any) {
            *id = c;
            used.insert(c);
        }
    }
    ids
}

/// Compiles with rule ids kept from `previous` (name → id), see `assign_ids`.
pub fn compile_with_ids(policy: &Policy, previous: &HashMap<String, u32>) -> CompiledPolicy {
    let ids = assign_ids(policy, previous);
    let mut global = GlobalConfig {
        flags: CFG_LOADED,
        generation: 0,
        list_half: 0,
        _pad: 0,
        verified_ttl_ns: policy.verified_ttl.as_nanos().min(u128::from(u64::MAX)) as u64,
        // Set by the loader (random per daemon start).
        sketch_seed: 0,
    };
    if policy.mode == Mode::Monitor {
        global.flags |= CFG_MONITOR;
    }
    let mut ports = vec![0u32; PORT_TABLE_LEN as usize];
    let mut rules = vec![RuleConfig::default(); RULE_SLOTS as usize];

    // Catch-all rules first, so that port rules (more specific) overwrite their slots.
    let mut order: Vec<usize> = (0..policy.rules.len()).collect();
    order.sort_by_key(|i| !policy.rules[*i].ports.is_empty());
    for i in order {
        let rule = &policy.rules[i];
        let id = ids[i];
        let mut buckets_out = [Gcra::DISABLED; BUCKETS];
        if let Some((r, s)) = rule.connections.as_ref().and_then(buckets) {
            buckets_out[B_CONN] = r;
            buckets_out[B_CONN_SUSTAINED] = s;
        }
        if let Some((r, s)) = rule.packets.as_ref().and_then(buckets) {
            buckets_out[B_PKT] = r;
            buckets_out[B_PKT_SUSTAINED] = s;
        }
        let mut name = [0u8; RULE_NAME_LEN];
        let n = rule.name.len().min(RULE_NAME_LEN);
        name[..n].copy_from_slice(&rule.name.as_bytes()[..n]);
        let mut flags = RULE_PRESENT;
        if rule.mode == Mode::Monitor {
            flags |= RULE_MONITOR;
        }
        if rule.syncookie_mss.is_some() {
            flags |= shield_common::RULE_SYNCOOKIE;
        }
        let mut escalation = RuleConfig::default().escalation;
        if let Some(e) = &rule.escalation {
            escalation = escalation_config(e);
            global.flags |= CFG_BANS;
            if e.scope == BanScope::Host {
                flags |= RULE_BAN_HOST;
            }
        }
        rules[id as usize] = RuleConfig {
            buckets: buckets_out,
            flags,
            v4_prefix: rule.ipv4_prefix,
            v6_prefix: rule.ipv6_prefix,
            _pad: [0; 2],
            escalation,
            name,
            unverified: rule
                .unverified
                .as_ref()
                .and_then(buckets)
                .map_or(Gcra::DISABLED, |(rate, _)| rate),
            sketch: [
                class_sketch(&buckets_out[B_CONN..=B_CONN_SUSTAINED]),
                class_sketch(&buckets_out[B_PKT..=B_PKT_SUSTAINED]),
            ],
            mss: rule.syncookie_mss.unwrap_or(0),
            _pad2: [0; 2],
            resets: rule
                .resets
                .filter(|_| rule.over_limit == OverLimit::Reset)
                .and_then(|r| {
                    buckets(&Limit {
                        rate: r,
                        burst: r.count.div_ceil(r.period_secs).max(1),
                        sustained: None,
                    })
                })
                .map_or(Gcra::DISABLED, |(rate, _)| rate),
        };
        if rule.over_limit == OverLimit::Reset {
            rules[id as usize].flags |= RULE_RESET;
        }
        match rule.protocol {
            Protocol::Icmp => ports[PORT_INDEX_ICMP as usize] = id,
            Protocol::Tcp | Protocol::Udp => {
                let slot = if rule.protocol == Protocol::Tcp {
                    PROTO_SLOT_TCP
                } else {
                    PROTO_SLOT_UDP
                };
                if rule.ports.is_empty() {
                    for port in 0..=u16::MAX {
                        ports[port_index(slot, port) as usize] = id;
                    }
                } else {
                    for range in &rule.ports {
                        for port in range.first..=range.last {
                            ports[port_index(slot, port) as usize] = id;
                        }
                    }
                }
            }
        }
    }

    let (allow_v4, allow_v6) = split(&policy.allow);
    let (deny_v4, deny_v6) = split(&policy.deny);
    for (non_empty, flag) in [
        (!allow_v4.is_empty(), CFG_ALLOW_V4),
        (!allow_v6.is_empty(), CFG_ALLOW_V6),
        (!deny_v4.is_empty(), CFG_DENY_V4),
        (!deny_v6.is_empty(), CFG_DENY_V6),
    ] {
        if non_empty {
            global.flags |= flag;
        }
    }
    CompiledPolicy {
        global,
        ports,
        rules,
        allow_v4,
        allow_v6,
        deny_v4,
        deny_v6,
        max_sources: policy.max_sources,
    }
}

type Split = (Vec<([u8; 4], u8)>, Vec<([u8; 16], u8)>);

fn split(list: &[Cidr]) -> Split {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for c in list {
        match c.addr {
            IpAddr::V4(a) => v4.push((a.octets(), c.len)),
            IpAddr::V6(a) => v6.push((a.octets(), c.len)),
        }
    }
    (v4, v6)
}
