//! The differential fuzzer behind `cargo xtask fuzz`: random policies, random and malformed
//! frames and clock steps, run through the real XDP program (BPF_PROG_TEST_RUN, frozen
//! test clock) and through the reference model (`shield_common::model`), with an
//! operator's manual host bans and unbans now and then; verdicts (and the bytes of every
//! RST) are compared frame by frame, counters and map state (per-source state, bans) every
//! 1,000 frames and at the end.

use std::collections::HashMap;

use aya::maps::{HashMap as BpfHashMap, LpmTrie, Map, MapData, PerCpuArray};
use shield_common::{
    BanValue, Counter, MAP_COUNTERS, MAP_HOST_BANS_V4, MAP_HOST_BANS_V6, MAP_RULE_BANS,
    MAP_SOURCES, Reason, SourceKey, SourceState,
    addr::{FAMILY_V4, FAMILY_V6},
    counter_index,
    model::{self, Model},
};
use shield_user::{
    bans::{BanMaps, BanSpec},
    loader, policy,
};

use crate::{HARNESS_IFACE, Harness, L4, Pkt};

mod inputs;
use inputs::source;
pub use inputs::{Rng, random_frame, random_policy};

fn hex(f: &[u8]) -> String {
    f.iter().map(|b| format!("{b:02x}")).collect()
}

/// The model's view of the harness' installed policy.
fn model_policy(h: &Harness, c: policy::CompiledPolicy) -> model::Policy {
    let (_, cfg) = h.tables.active().expect("active config");
    let v4 = |l: &[([u8; 4], u8)]| -> Vec<([u8; 16], u8, u8)> {
        l.iter()
            .map(|(a, n)| (shield_common::addr::v4_key(*a), *n, FAMILY_V4))
            .collect()
    };
    let v6 = |l: &[([u8; 16], u8)]| -> Vec<([u8; 16], u8, u8)> {
        l.iter()
            .map(|(a, n)| (*a, *n, shield_common::addr::FAMILY_V6))
            .collect()
    };
    let mut allow = v4(&c.allow_v4);
    allow.extend(v6(&c.allow_v6));
    let mut deny = v4(&c.deny_v4);
    deny.extend(v6(&c.deny_v6));
    model::Policy {
        flags: cfg.flags,
        seed: cfg.sketch_seed,
        ports: c.ports,
        rules: c.rules,
        allow,
        deny,
        verified_ttl: cfg.verified_ttl_ns,
    }
}

/// Verifies about half of the fuzzer's sources (their verified-set keys: hosts for IPv4,
/// /64s for IPv6) at `now`, in the kernel and in the model alike: what a data segment on an
/// established connection would do, which the frames here never carry.
fn verify_some(rng: &mut Rng, h: &Harness, m: &mut Model, now: u64) {
    let mut v: Vec<std::net::IpAddr> = Vec::new();
    for net in [
        "192.0.2",
        "198.51.100",
        "203.0.113",
        "10.1.2",
        "10.1.3",
        "100.64.1",
    ] {
        for host in 1..=8 {
            v.push(format!("{net}.{host}").parse().expect("address"));
        }
    }
    for net in ["2001:db8:1:2", "2001:db8:1:3", "2001:db8:dead:1"] {
        for sub in 0..2 {
            v.push(format!("{net}:{sub}::1").parse().expect("address"));
        }
    }
    for a in v {
        if !rng.chance(50) {
            continue;
        }
        h.verify(a, now);
        let (family, addr) = match a {
            std::net::IpAddr::V4(a) => (FAMILY_V4, shield_common::addr::v4_key(a.octets())),
            std::net::IpAddr::V6(a) => (shield_common::addr::FAMILY_V6, a.octets()),
        };
        m.verified
            .insert(shield_common::judge::verified_key(family, addr), now);
    }
}

/// The operator's move, now and then between frames: a manual host ban of a source's
/// prefix (full, monitor-only or attempts-only, as the fleet can issue) or the lifting of
/// one, through `BanMaps` as the daemon does it, mirrored in the model (`ban_spec` keeps a
/// stored full ban that ends no earlier; `unban` also lifts rule bans on the same prefix).
/// Returns the source the ban was drawn for, so that the next frames come from it (they
/// fill the per-CPU cache of host-ban drops, then meet its invalidation). `sources`: each
/// stored ban's.
fn operate(
    rng: &mut Rng,
    maps: &mut BanMaps,
    m: &mut Model,
    now: u64,
    sources: &mut HashMap<(u8, u8, [u8; 16]), std::net::IpAddr>,
) -> std::net::IpAddr {
    use shield_common::{BAN_ATTEMPTS, BAN_MANUAL, BAN_MONITOR};
    use std::net::IpAddr;
    let mut stored: Vec<(u8, u8, [u8; 16])> = m.host_bans.keys().copied().collect();
    stored.sort();
    if !stored.is_empty() && rng.chance(40) {
        let (family, len, addr) = *rng.pick(&stored);
        let ip = if family == FAMILY_V4 {
            IpAddr::from([addr[0], addr[1], addr[2], addr[3]])
        } else {
            IpAddr::from(addr)
        };
        maps.unban(policy::Cidr { addr: ip, len }).expect("unban");
        m.host_bans.remove(&(family, len, addr));
        m.rule_bans
            .retain(|k, _| !(k.family == family && k.prefix_len == len && k.addr == addr));
        return sources.remove(&(family, len, addr)).unwrap_or(ip);
    }
    let ip: IpAddr = source(rng).parse().expect("an address");
    let (family, len, addr) = match ip {
        IpAddr::V4(a) => {
            let len = *rng.pick(&[32u8, 30, 24, 16]);
            let key = shield_common::addr::v4_key(a.octets());
            (FAMILY_V4, len, shield_common::addr::mask_prefix(key, len))
        }
        IpAddr::V6(a) => {
            let len = *rng.pick(&[128u8, 64, 48]);
            (
                FAMILY_V6,
                len,
                shield_common::addr::mask_prefix(a.octets(), len),
            )
        }
    };
    let cidr_ip = if family == FAMILY_V4 {
        IpAddr::from([addr[0], addr[1], addr[2], addr[3]])
    } else {
        IpAddr::from(addr)
    };
    let dur_ns = *rng.pick(&[1u64, 5, 60, 600]) * 1_000_000_000;
    let flags = *rng.pick(&[BAN_MANUAL, BAN_MANUAL | BAN_MONITOR, BAN_ATTEMPTS]);
    maps.ban_spec(&BanSpec {
        cidr: policy::Cidr { addr: cidr_ip, len },
        dur: std::time::Duration::from_nanos(dur_ns),
        scope: policy::BanScope::Host,
        rule: None,
        flags,
        level: 0,
        reason: None,
        issued: None,
    })
    .expect("a manual host ban");
    let value = BanValue {
        expires_ns: now + dur_ns,
        duration_ns: dur_ns,
        rule: 0,
        flags,
        level: 0,
        prefix_len: len,
        _pad: [0; 3],
    };
    let key = (family, len, addr);
    let kept = m
        .host_bans
        .get(&key)
        .is_some_and(|v| v.flags & BAN_MONITOR == 0 && v.expires_ns >= value.expires_ns);
    if !kept {
        m.host_bans.insert(key, value);
    }
    sources.insert(key, ip);
    ip
}

/// Differences between the kernel's maps and the model at `now`.
fn compare_state(h: &Harness, pol: &model::Policy, m: &Model, now: u64) -> Vec<String> {
    let dir = loader::pin_dir(&h.bpffs.path, HARNESS_IFACE);
    let open = |name: &str| MapData::from_pin(dir.join(name)).expect("pinned map");
    let mut out = Vec::new();
    // Counters.
    let counters: PerCpuArray<_, Counter> =
        PerCpuArray::try_from(Map::PerCpuArray(open(MAP_COUNTERS))).expect("counters");
    let ids: Vec<u32> = (0..pol.rules.len() as u32)
        .filter(|i| *i == 0 || pol.rules[*i as usize].flags & shield_common::RULE_PRESENT != 0)
        .collect();
    for id in ids {
        for r in Reason::ALL {
            let v = counters.get(&counter_index(id, r), 0).expect("counter");
            let k = v
                .iter()
                .fold((0, 0), |a, c| (a.0 + c.packets, a.1 + c.bytes));
            let want = m.counters.get(&(id, r)).copied().unwrap_or((0, 0));
            if k != want {
                out.push(format!(
                    "counter rule {id} {}: kernel {k:?}, model {want:?}",
                    r.name()
                ));
            }
        }
    }
    // Per-source state.
    let sources: BpfHashMap<_, SourceKey, SourceState> =
        BpfHashMap::try_from(Map::LruHashMap(open(MAP_SOURCES))).expect("sources");
    let norm = |s: &SourceState| {
        let mut s = *s;
        for t in &mut s.tat {
            *t = model::effective_tat(*t, now);
        }
        s
    };
    let mut seen = 0;
    // Refusals the refusal cache holds are the source's too (`limited`).
    let pending = shield_user::stats::refused_pending(&dir).expect("refusal cache");
    for (k, mut v) in sources.iter().flatten() {
        seen += 1;
        v.limited += pending.get(&k).copied().unwrap_or(0);
        match m.sources.get(&k) {
            Some(mv) if norm(mv) == norm(&v) => {}
            other => out.push(format!(
                "source {k:?}: kernel {:?}, model {:?}",
                norm(&v),
                other.map(norm)
            )),
        }
    }
    if seen != m.sources.len() {
        out.push(format!(
            "sources: kernel holds {seen}, model {}",
            m.sources.len()
        ));
    }
    // Bans.
    let mut kernel: HashMap<String, BanValue> = HashMap::new();
    let h4: LpmTrie<_, [u8; 4], BanValue> =
        LpmTrie::try_from(Map::LpmTrie(open(MAP_HOST_BANS_V4))).expect("hban4");
    for (k, v) in h4.iter().flatten() {
        let a = shield_common::addr::v4_key(k.data());
        kernel.insert(format!("host {a:?}/{}", k.prefix_len()), v);
    }
    let h6: LpmTrie<_, [u8; 16], BanValue> =
        LpmTrie::try_from(Map::LpmTrie(open(MAP_HOST_BANS_V6))).expect("hban6");
    for (k, v) in h6.iter().flatten() {
        kernel.insert(format!("host {:?}/{}", k.data(), k.prefix_len()), v);
    }
    let rb: BpfHashMap<_, SourceKey, BanValue> =
        BpfHashMap::try_from(Map::HashMap(open(MAP_RULE_BANS))).expect("rbans");
    for (k, v) in rb.iter().flatten() {
        kernel.insert(format!("rule {k:?}"), v);
    }
    let mut model: HashMap<String, BanValue> = HashMap::new();
    for ((_, len, a), v) in &m.host_bans {
        model.insert(format!("host {a:?}/{len}"), *v);
    }
    for (k, v) in &m.rule_bans {
        model.insert(format!("rule {k:?}"), *v);
    }
    if kernel != model {
        out.push(format!("bans: kernel {kernel:?}, model {model:?}"));
    }
    out
}

/// What a run did: frames, mismatches, and its coverage (verdicts by reason, events).
#[derive(Debug, Default)]
pub struct Summary {
    pub frames: u64,
    pub mismatches: u64,
    pub policies: u64,
    pub by_reason: std::collections::BTreeMap<&'static str, u64>,
    pub bans: u64,
    pub tracked: u64,
}

/// One fuzz run: `frames` frames over policies drawn from `seed` (a new policy, reloaded
/// into the running program, every 2,000 frames). Prints each mismatch with what replays it (the first 20 in full).
pub fn run(seed: u64, frames: u64) -> Summary {
    // The program looks sockets up (verification, SYN cookies) in the namespace of the
    // thread that runs it: a namespace of its own holds none, so a listener of another
    // program on this host cannot change a verdict (the model assumes no socket matches).
    // SAFETY: unshare(2) with a flag, no pointers; it moves only this thread.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        panic!(
            "unshare(CLONE_NEWNET) failed: {} (the fuzzer needs root for a network namespace of its own)",
            std::io::Error::last_os_error()
        );
    }
    let mut rng = Rng::new(seed);
    let mut done = 0u64;
    let mut mismatches = 0u64;
    let mut summary = Summary::default();
    // One program for the whole run (loading it costs the verifier a second); each new
    // policy is a reload into the other half, state kept across it, as in the daemon.
    let mut toml = random_policy(&mut rng);
    let parsed = policy::parse_str("fuzz.toml", &toml).expect("a valid random policy");
    let mut h = Harness::new(&toml);
    let mut pol = model_policy(&h, policy::compile(&parsed));
    let dir = loader::pin_dir(&h.bpffs.path, HARNESS_IFACE);
    let mut clock = loader::PolicyMaps::open(&dir).expect("policy maps");
    let mut now = 1_000 * 1_000_000_000u64;
    clock.freeze_clock(now).expect("freezing the clock");
    let mut maps = BanMaps::open(&dir).expect("ban maps");
    let mut ban_sources = HashMap::new();
    let mut m = Model::new();
    let mut generation = 1;
    while done < frames {
        verify_some(&mut rng, &h, &mut m, now);
        if done > 0 {
            toml = random_policy(&mut rng);
            let parsed = policy::parse_str("fuzz.toml", &toml).expect("a valid random policy");
            let previous: HashMap<String, u32> = h
                .tables
                .current_rules()
                .expect("rules")
                .into_iter()
                .map(|(id, r)| (shield_user::loader::rule_name(&r), id))
                .collect();
            let c = policy::compile_with_ids(&parsed, &previous);
            // As the daemon: a rule on an id the policy in force does not give its name (a
            // rule added, perhaps on a removed rule's id) starts without per-source state or
            // figures (counters, its budget's and its RST cap's buckets).
            let fresh: Vec<u16> = c
                .rules
                .iter()
                .enumerate()
                .skip(1)
                .filter(|(id, r)| {
                    r.flags & shield_common::RULE_PRESENT != 0
                        && previous.get(&shield_user::loader::rule_name(r)) != Some(&(*id as u32))
                })
                .map(|(id, _)| id as u16)
                .collect();
            m.sources.retain(|k, _| !fresh.contains(&k.rule));
            let forgotten = |id: &u32| u16::try_from(*id).is_ok_and(|id| fresh.contains(&id));
            // What the model counted under them still tells the run's coverage.
            m.counters.retain(|(id, r), (n, _)| {
                if forgotten(id) {
                    *summary.by_reason.entry(r.name()).or_default() += *n;
                }
                !forgotten(id)
            });
            m.budget.retain(|id, _| !forgotten(id));
            m.resets.retain(|id, _| !forgotten(id));
            generation += 1;
            // As the daemon: the ban lookups stay on while bans are stored.
            let extra = if maps.any() {
                shield_common::CFG_BANS
            } else {
                0
            };
            h.tables.install(&c, generation, extra).expect("reload");
            pol = model_policy(&h, c);
        }
        let batch = (frames - done).min(2_000);
        let mut report = |what: String, frame: Option<&[u8]>, i: u64| {
            mismatches += 1;
            if mismatches <= 20 {
                eprintln!(
                    "MISMATCH (seed {seed}, frame {i}): {what}\n  frame: {}\n  policy:\n{toml}",
                    frame.map_or_else(|| "-".to_string(), hex)
                );
            }
        };
        let mut last: Option<Vec<u8>> = None;
        for i in 0..batch {
            if rng.chance(10) {
                let step = *rng.pick(&[
                    1_000_000u64,
                    10_000_000,
                    100_000_000,
                    500_000_000,
                    1_000_000_000,
                    2_000_000_000,
                    10_000_000_000,
                    60_000_000_000,
                ]);
                clock.advance_clock(step).expect("clock");
                now += step;
            }
            if rng.below(300) == 0 {
                let src = operate(&mut rng, &mut maps, &mut m, now, &mut ban_sources);
                // A ban turns the ban lookups on in the config in force.
                pol.flags = h.tables.active().expect("active config").1.flags;
                last = Some(Pkt::new(&src.to_string(), L4::Echo).bytes());
            }
            // Runs of one frame (a source over its limit, strikes, bans), else a new one.
            let f = match &last {
                Some(l) if rng.chance(60) => l.clone(),
                _ => random_frame(&mut rng),
            };
            last = Some(f.clone());
            let (k, out) = h.run_out(&f);
            let want = m.run(&pol, &f, now);
            if k != want {
                report(
                    format!("verdict: kernel {k}, model {want} (1 drop, 2 pass, 3 tx)"),
                    Some(&f),
                    done + i,
                );
            } else if k == model::TX
                && model::handshake(&out).is_none_or(|h| h.flags & 0x12 != 0x12)
                && model::rst_for(&f).as_deref() != Some(&out[..])
            {
                // A TX is a RST (its bytes are modelled) or a cookie SYN-ACK (its cookie is
                // the kernel's: not modelled; the reason counters tell the two apart).
                report(
                    format!(
                        "RST bytes: kernel {}, model {}",
                        hex(&out),
                        model::rst_for(&f).map_or_else(|| "-".to_string(), |r| hex(&r))
                    ),
                    Some(&f),
                    done + i,
                );
            }
            if (i + 1) % 1_000 == 0 || i + 1 == batch {
                for d in compare_state(&h, &pol, &m, now) {
                    report(d, Some(&f), done + i);
                }
            }
        }
        done += batch;
        summary.policies += 1;
    }
    for ((_, r), (n, _)) in &m.counters {
        *summary.by_reason.entry(r.name()).or_default() += n;
    }
    summary.bans = m
        .events
        .iter()
        .filter(|(k, _)| *k != shield_common::EV_LIMITED)
        .count() as u64;
    summary.tracked = m.sources.len() as u64;
    summary.frames = done;
    summary.mismatches = mismatches;
    summary
}
