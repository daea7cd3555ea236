//! `shield tune`: limits from observed traffic.
//!
//! Collection: `tune` itself opens an AF_PACKET socket on the interface for `--for` and reads
//! the first `SNAPLEN` bytes of every frame the XDP program passes (the kernel's packet
//! taps run after XDP). Nothing changes in the data path: no map, no instruction, no
//! verifier cost. The cost is a copy of up to 256 bytes per passed packet into this process
//! and a hash-map update per packet here, for the observation only; `tune` reports the
//! packets it saw, the ones the socket lost and the CPU time it used. What the data path
//! drops never reaches the tap: those packets are counted from the rule's counters
//! (`conn_limit`, `pkt_limit`) over the same window, so in enforce mode the distribution
//! is of what passed, and the share the current limits touch includes what they dropped.
//! Observe in monitor mode (or with loose limits) to see sources' full rates.
//!
//! Per rule and source key (the address masked to the rule's scope, as the data path
//! keys its state): connection attempts (TCP SYN without ACK) and packets, per clock
//! second and over a sliding minute; their peaks make the distribution across sources.

use std::{
    collections::{HashMap, VecDeque},
    fmt::Write as _,
};

use serde::Serialize;
use shield_common::{
    PORT_INDEX_ICMP, PROTO_SLOT_TCP, PROTO_SLOT_UDP, Reason, SourceKey, SourceState,
    addr::{FAMILY_V4, mask_prefix},
    judge::judge,
    model::{self, Frame, Transport},
    port_index,
};

use crate::policy::{CompiledPolicy, Limit, Policy, Protocol, Rate};
use allow::AllowList;

mod allow;
pub mod capture;
mod render;
pub mod stop;
mod write;

pub use render::{render, span};
pub use write::replace_file;

/// Bytes of each frame copied from the tap: enough for Ethernet, IPv4 with options or IPv6
/// with its extension headers, and the transport header.
pub const SNAPLEN: usize = 256;
/// Suggestions are this many times the chosen percentile's rates.
pub const HEADROOM: f64 = 1.5;
const NS: u64 = 1_000_000_000;
/// After an observation cut short, `--write` writes its suggestions only when at least this
/// much was observed: a full minute, so the busiest-minute figure behind `sustained` is
/// measured, not a shorter count scaled up.
pub const WRITE_MIN_AFTER_STOP: std::time::Duration = std::time::Duration::from_secs(60);

/// The percentiles every distribution is shown at (max is the 100th).
pub const SHOWN: [f64; 4] = [50.0, 90.0, 99.0, 99.9];

/// One source's counts under one rule.
#[derive(Default)]
struct Series {
    second: u64,
    conns_now: u64,
    pkts_now: u64,
    peak_conns_sec: u64,
    peak_pkts_sec: u64,
    /// Closed seconds within the last minute: (second, connections, packets).
    window: VecDeque<(u64, u64, u64)>,
    win_conns: u64,
    win_pkts: u64,
    peak_conns_min: u64,
    peak_pkts_min: u64,
    total_conns: u64,
    total_pkts: u64,
    /// The current limits replayed on this source's traffic.
    sim: SourceState,
    refused: u64,
}

impl Series {
    fn close_second(&mut self) {
        self.peak_conns_sec = self.peak_conns_sec.max(self.conns_now);
        self.peak_pkts_sec = self.peak_pkts_sec.max(self.pkts_now);
        self.window
            .push_back((self.second, self.conns_now, self.pkts_now));
        self.win_conns += self.conns_now;
        self.win_pkts += self.pkts_now;
        while let Some(&(s, c, p)) = self.window.front() {
            if s + 60 > self.second {
                break;
            }
            self.window.pop_front();
            self.win_conns -= c;
            self.win_pkts -= p;
        }
        self.peak_conns_min = self.peak_conns_min.max(self.win_conns);
        self.peak_pkts_min = self.peak_pkts_min.max(self.win_pkts);
        self.conns_now = 0;
        self.pkts_now = 0;
    }

    fn count(&mut self, second: u64, conn: bool) {
        if second != self.second {
            self.close_second();
            self.second = second;
        }
        self.pkts_now += 1;
        self.total_pkts += 1;
        if conn {
            self.conns_now += 1;
            self.total_conns += 1;
        }
    }
}

/// Per-source counting for every rule of the policy in force.
pub struct Observer {
    policy: Policy,
    compiled: CompiledPolicy,
    allow: AllowList,
    sources: HashMap<SourceKey, Series>,
    /// Frames seen, and frames that matched a rule.
    pub frames: u64,
    pub matched: u64,
    /// Frames that matched a rule from allow-listed sources: never limited, so left out of
    /// the distributions and the suggestions (a partner's volume would set the limits).
    pub allowed: u64,
}

impl Observer {
    pub fn new(policy: Policy) -> Observer {
        let compiled = crate::policy::compile(&policy);
        Observer {
            allow: AllowList::new(&policy),
            policy,
            compiled,
            sources: HashMap::new(),
            frames: 0,
            matched: 0,
            allowed: 0,
        }
    }

    /// Sources seen so far (all rules).
    pub fn sources(&self) -> usize {
        self.sources.len()
    }

    /// Counts one frame seen `t_ns` after the observation started.
    pub fn feed(&mut self, frame: &[u8], t_ns: u64) {
        self.frames += 1;
        let Frame::Ip(p) = model::parse(frame) else {
            return;
        };
        let (slot, conn) = match p.transport {
            Transport::Tcp {
                dport, syn_only, ..
            } => (port_index(PROTO_SLOT_TCP, dport), syn_only),
            Transport::Udp { dport } => (port_index(PROTO_SLOT_UDP, dport), false),
            Transport::Icmp => (PORT_INDEX_ICMP, false),
            _ => return,
        };
        let id = self.compiled.ports.get(slot as usize).copied().unwrap_or(0);
        let Some(rule) = self.compiled.rules.get(id as usize).filter(|_| id != 0) else {
            return;
        };
        self.matched += 1;
        if self.allow.holds(p.family, &p.src) {
            self.allowed += 1;
            return;
        }
        let prefix = if p.family == FAMILY_V4 {
            rule.v4_prefix
        } else {
            rule.v6_prefix
        };
        let key = SourceKey {
            rule: id as u16,
            family: p.family,
            prefix_len: prefix,
            addr: mask_prefix(p.src, prefix),
        };
        let s = self.sources.entry(key).or_default();
        s.count(t_ns / NS, conn);
        // A clock that never reads 0 (a TAT of 0 means a full bucket).
        if judge(rule, &mut s.sim, t_ns + NS, conn) != Reason::Pass {
            s.refused += 1;
        }
    }

    /// The report after `elapsed_ns` of observation. `dropped`: per rule name, what the
    /// data path dropped by the rule's limits during the window (its counters' growth).
    pub fn report(
        mut self,
        iface: &str,
        elapsed_ns: u64,
        percentile: f64,
        dropped: &HashMap<String, u64>,
    ) -> Report {
        let secs = (elapsed_ns as f64 / NS as f64).max(1.0);
        for s in self.sources.values_mut() {
            s.close_second();
        }
        let mut rules = Vec::new();
        for (i, r) in self.policy.rules.iter().enumerate() {
            // `compile` numbers rules from 1 in file order (fresh ids).
            let id = self
                .compiled
                .rules
                .iter()
                .position(|c| crate::loader::rule_name(c) == r.name)
                .unwrap_or(i + 1) as u16;
            let mine: Vec<&Series> = self
                .sources
                .iter()
                .filter(|(k, _)| k.rule == id)
                .map(|(_, s)| s)
                .collect();
            let per_min = |total: u64, peak: u64| {
                if secs < 60.0 {
                    (total as f64 * 60.0 / secs).ceil() as u64
                } else {
                    peak
                }
            };
            let conn_sec: Vec<u64> = mine.iter().map(|s| s.peak_conns_sec).collect();
            let conn_min: Vec<u64> = mine
                .iter()
                .map(|s| per_min(s.total_conns, s.peak_conns_min))
                .collect();
            let pkt_sec: Vec<u64> = mine.iter().map(|s| s.peak_pkts_sec).collect();
            let pkt_min: Vec<u64> = mine
                .iter()
                .map(|s| per_min(s.total_pkts, s.peak_pkts_min))
                .collect();
            let observed: u64 = mine.iter().map(|s| s.total_pkts).sum();
            let refused: u64 = mine.iter().map(|s| s.refused).sum();
            let drops = dropped.get(&r.name).copied().unwrap_or(0);
            let touched_sources = mine.iter().filter(|s| s.refused > 0).count() as u64;
            let tcp = r.protocol == Protocol::Tcp;
            let connections = tcp.then(|| Measure::new(&conn_sec, &conn_min, percentile));
            let packets = Measure::new(&pkt_sec, &pkt_min, percentile);
            let suggest_conn = tcp && !mine.is_empty();
            let suggest_pkt = !mine.is_empty() && (!tcp || r.packets.is_some());
            rules.push(RuleReport {
                name: r.name.clone(),
                protocol: r.protocol.to_string(),
                sources: mine.len() as u64,
                packets_observed: observed,
                current: Current {
                    connections: r.connections.map(|l| limit_text(&l)),
                    packets: r.packets.map(|l| limit_text(&l)),
                    sources_touched: touched_sources,
                    packets_touched: refused + drops,
                    dropped_by_data_path: drops,
                    share_touched: ratio(refused + drops, observed + drops),
                },
                suggested: Suggested {
                    connections: connections.as_ref().filter(|_| suggest_conn).map(suggest),
                    packets: Some(&packets).filter(|_| suggest_pkt).map(suggest),
                },
                connections,
                packets,
            });
        }
        Report {
            iface: iface.to_string(),
            seconds: secs,
            percentile,
            headroom: HEADROOM,
            frames: self.frames,
            matched: self.matched,
            allowed: self.allowed,
            lost: 0,
            cpu_seconds: 0.0,
            stopped_early: None,
            rules,
        }
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

/// Nearest-rank percentile of `v` (sorted ascending), 0 when empty.
pub fn percentile_of(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    // (Less a hair: 99.9 % of 1000 is 999, not 999.0000000000001.)
    let rank = ((p / 100.0) * sorted.len() as f64 - 1e-9).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// One distribution across sources: at `SHOWN` percentiles, the max, and at the chosen one.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Dist {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    #[serde(rename = "p99.9")]
    pub p99_9: u64,
    pub max: u64,
    /// At `--percentile`.
    pub chosen: u64,
}

impl Dist {
    fn new(v: &[u64], chosen: f64) -> Dist {
        let mut s = v.to_vec();
        s.sort_unstable();
        let at = |p| percentile_of(&s, p);
        Dist {
            p50: at(SHOWN[0]),
            p90: at(SHOWN[1]),
            p99: at(SHOWN[2]),
            p99_9: at(SHOWN[3]),
            max: s.last().copied().unwrap_or(0),
            chosen: at(chosen),
        }
    }
}

/// Per-source rates of one kind (connection attempts or packets).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Measure {
    /// Each source's busiest clock second.
    pub peak_per_second: Dist,
    /// Each source's busiest 60 seconds (a run under a minute: its whole count, scaled to a
    /// minute).
    pub per_minute: Dist,
}

impl Measure {
    fn new(sec: &[u64], min: &[u64], p: f64) -> Measure {
        Measure {
            peak_per_second: Dist::new(sec, p),
            per_minute: Dist::new(min, p),
        }
    }
}

/// A suggested limit, as the policy writes it.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Suggestion {
    /// Per second.
    pub rate: u64,
    pub burst: u64,
    /// Per minute (absent when it would not be below the rate).
    pub sustained: Option<u64>,
}

impl Suggestion {
    pub fn toml(&self) -> String {
        let mut s = format!("{{ rate = \"{}/s\", burst = {}", self.rate, self.burst);
        if let Some(m) = self.sustained {
            let _ = write!(s, ", sustained = \"{m}/min\"");
        }
        s.push_str(" }");
        s
    }
}

/// The chosen percentile's peak second and minute, times `HEADROOM`: `rate` covers the
/// peak second, `burst` two of them (a second's worth straddling a clock second), and
/// `sustained` the busiest minute — the limit a flooder meets over time.
fn suggest(m: &Measure) -> Suggestion {
    let up = |x: u64| ((x as f64 * HEADROOM).ceil() as u64).max(1);
    let rate = up(m.peak_per_second.chosen);
    let burst = rate * 2;
    let minute = up(m.per_minute.chosen);
    Suggestion {
        rate,
        burst,
        sustained: (minute < rate * 60).then_some(minute),
    }
}

fn limit_text(l: &Limit) -> String {
    let mut s = format!("{} burst {}", l.rate, l.burst);
    if let Some(Rate { count, period_secs }) = l.sustained {
        let _ = write!(s, ", sustained {}", Rate { count, period_secs });
    }
    s
}

#[derive(Clone, Debug, Serialize)]
pub struct Current {
    pub connections: Option<String>,
    pub packets: Option<String>,
    /// Sources the current limits refused at least once (replayed on what was observed).
    pub sources_touched: u64,
    /// Packets they refused (replayed) plus what the data path dropped by them.
    pub packets_touched: u64,
    pub dropped_by_data_path: u64,
    pub share_touched: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Suggested {
    pub connections: Option<Suggestion>,
    pub packets: Option<Suggestion>,
}

#[derive(Clone, Debug, Serialize)]
pub struct RuleReport {
    pub name: String,
    pub protocol: String,
    pub sources: u64,
    pub packets_observed: u64,
    /// TCP rules only.
    pub connections: Option<Measure>,
    pub packets: Measure,
    pub current: Current,
    pub suggested: Suggested,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub iface: String,
    pub seconds: f64,
    pub percentile: f64,
    pub headroom: f64,
    pub frames: u64,
    pub matched: u64,
    /// Of the matched frames, those from allow-listed sources (left out of the figures).
    pub allowed: u64,
    /// Frames the capture socket lost (its buffer was full).
    pub lost: u64,
    /// CPU time `tune` used observing.
    pub cpu_seconds: f64,
    /// Set when a signal ended the observation before `--for` (absent otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped_early: Option<StoppedEarly>,
    pub rules: Vec<RuleReport>,
}

/// An observation cut short (SIGINT, SIGTERM): the report covers `observed_seconds` only.
#[derive(Clone, Debug, Serialize)]
pub struct StoppedEarly {
    /// "SIGINT" or "SIGTERM".
    pub signal: String,
    pub observed_seconds: f64,
    /// What `--for` asked.
    pub requested_seconds: f64,
}

/// The policy `text` with the report's suggestions applied to the rules by name
/// (`connections`, `packets`); comments and everything else kept. The result is validated.
pub fn apply(file: &str, text: &str, r: &Report) -> Result<String, String> {
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .map_err(|e| format!("{file} is not valid TOML: {e}"))?;
    let rules = doc
        .get_mut("rule")
        .and_then(|r| r.as_array_of_tables_mut())
        .ok_or_else(|| format!("{file} has no [[rule]] tables"))?;
    for t in rules.iter_mut() {
        let Some(name) = t.get("name").and_then(|n| n.as_str()).map(str::to_string) else {
            continue;
        };
        let Some(rr) = r.rules.iter().find(|x| x.name == name) else {
            continue;
        };
        for (key, s) in [
            ("connections", &rr.suggested.connections),
            ("packets", &rr.suggested.packets),
        ] {
            if let Some(s) = s {
                let mut it = toml_edit::InlineTable::new();
                it.insert("rate", format!("{}/s", s.rate).into());
                it.insert("burst", (s.burst as i64).into());
                if let Some(m) = s.sustained {
                    it.insert("sustained", format!("{m}/min").into());
                }
                // In place when the key is there: its comments (the lines before it, the
                // end of its line) stay; `insert` would replace them with the key.
                match t.get_mut(key).and_then(toml_edit::Item::as_value_mut) {
                    Some(v) => {
                        let decor = v.decor().clone();
                        *v = toml_edit::Value::InlineTable(it);
                        *v.decor_mut() = decor;
                    }
                    None => {
                        t.insert(key, toml_edit::value(it));
                    }
                }
            }
        }
    }
    let out = doc.to_string();
    crate::policy::parse_str(file, &out)
        .map_err(|e| format!("the written policy is invalid: {e}"))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(src: [u8; 4], dport: u16, flags: u8) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x08, 0x00]);
        f.extend_from_slice(&[0x45, 0, 0, 40, 0, 0, 0, 0, 64, 6, 0, 0]);
        f.extend_from_slice(&src);
        f.extend_from_slice(&[198, 51, 100, 1]);
        let mut tcp = [0u8; 20];
        tcp[2..4].copy_from_slice(&dport.to_be_bytes());
        tcp[12] = 0x50;
        tcp[13] = flags;
        f.extend_from_slice(&tcp);
        f
    }

    const POLICY: &str = "# keep me\n[[rule]]\nname = \"api\"\nprotocol = \"tcp\"\nports = [8080]\nconnections = { rate = \"100/s\", burst = 200 } # loose\n";

    #[test]
    fn distributions_and_suggestions_spare_the_chosen_percentile() {
        let p = crate::policy::parse_str("t.toml", POLICY).unwrap();
        let mut o = Observer::new(p);
        // Ten clients at 2 connections a second, one at 40, for 10 s.
        for sec in 0..10u64 {
            for c in 1..=10u8 {
                for k in 0..2u64 {
                    o.feed(
                        &frame([10, 0, 0, c], 8080, 0x02),
                        sec * NS + k * 400_000_000,
                    );
                }
            }
            for k in 0..40u64 {
                o.feed(
                    &frame([10, 0, 0, 99], 8080, 0x02),
                    sec * NS + k * 20_000_000,
                );
            }
            // Other ports and non-SYNs are not connection attempts.
            o.feed(&frame([10, 0, 0, 1], 9999, 0x02), sec * NS);
            o.feed(&frame([10, 0, 0, 1], 8080, 0x10), sec * NS + 1);
        }
        let r = o.report("eth0", 10 * NS, 90.0, &HashMap::new());
        let api = &r.rules[0];
        assert_eq!(api.sources, 11);
        let c = api.connections.as_ref().unwrap();
        assert_eq!(c.peak_per_second.p50, 2);
        assert_eq!(
            c.peak_per_second.chosen, 2,
            "p90 of 11 sources: the 10th, a client"
        );
        assert_eq!(c.peak_per_second.max, 40);
        assert_eq!(c.per_minute.p50, 120, "20 in 10 s scaled to a minute");
        let s = api.suggested.connections.as_ref().unwrap();
        // 180/min would not be below 3/s: no sustained.
        assert_eq!((s.rate, s.burst, s.sustained), (3, 6, None));
        assert_eq!(api.current.sources_touched, 0, "100/s touches nobody");
        // The suggestion, replayed on the same traffic: clients untouched, the flooder not.
        let written = apply("t.toml", POLICY, &r).unwrap();
        assert!(written.starts_with("# keep me\n"), "{written}");
        let p2 = crate::policy::parse_str("w.toml", &written).unwrap();
        let l = p2.rules[0].connections.unwrap();
        assert_eq!((l.rate.count, l.burst), (3, 6));
        let mut o2 = Observer::new(p2);
        for sec in 0..10u64 {
            for c in 1..=10u8 {
                for k in 0..2u64 {
                    o2.feed(
                        &frame([10, 0, 0, c], 8080, 0x02),
                        sec * NS + k * 400_000_000,
                    );
                }
            }
            for k in 0..40u64 {
                o2.feed(
                    &frame([10, 0, 0, 99], 8080, 0x02),
                    sec * NS + k * 20_000_000,
                );
            }
        }
        let r2 = o2.report("eth0", 10 * NS, 90.0, &HashMap::new());
        assert_eq!(r2.rules[0].current.sources_touched, 1, "only the flooder");
        assert!(render(&r).contains("suggested: connections = { rate = \"3/s\", burst = 6 }"));
    }

    #[test]
    fn allow_listed_sources_are_left_out_of_the_figures() {
        // A partner on the allow list (never limited) opening 50 connections a second, and
        // two clients at 2: the limits are suggested from the clients alone.
        let text = format!("[lists]\nallow = [\"10.9.0.0/16\", \"2001:db8::/32\"]\n{POLICY}");
        let p = crate::policy::parse_str("t.toml", &text).unwrap();
        let mut o = Observer::new(p);
        for sec in 0..10u64 {
            for k in 0..50u64 {
                o.feed(&frame([10, 9, 3, 4], 8080, 0x02), sec * NS + k * NS / 50);
            }
            for c in [1, 2] {
                for k in 0..2u64 {
                    o.feed(&frame([10, 0, 0, c], 8080, 0x02), sec * NS + k * NS / 2);
                }
            }
        }
        let r = o.report("eth0", 10 * NS, 99.0, &HashMap::new());
        assert_eq!((r.matched, r.allowed), (540, 500));
        let api = &r.rules[0];
        assert_eq!(api.sources, 2, "the partner is not a source to limit");
        assert_eq!(api.connections.as_ref().unwrap().peak_per_second.max, 2);
        let s = api.suggested.connections.as_ref().unwrap();
        assert_eq!(
            (s.rate, s.burst),
            (3, 6),
            "from the clients' 2/s, not the partner's 50/s"
        );
        assert!(
            render(&r).contains("540 matched a rule (500 from allow-listed sources"),
            "{}",
            render(&r)
        );
    }

    #[test]
    fn write_keeps_the_comments_around_a_replaced_limit() {
        // The operator's notes on the limit itself (the line before it and at its end) and
        // the other rule's formatting survive; only the values change.
        let text = "[[rule]]\nname = \"api\"\nprotocol = \"tcp\"\nports = [ 8080,\n  8081, # admin\n]\n# guessed after the March incident\nconnections = {rate=\"100/s\",burst=200}   # see ticket 42\n\n[[rule]]\nname = \"dns\"\nprotocol = \"udp\"\nports = [53]\npackets = { rate = \"50/s\", burst = 100 } # untouched\n";
        let p = crate::policy::parse_str("t.toml", text).unwrap();
        let mut o = Observer::new(p);
        for sec in 0..3u64 {
            o.feed(&frame([10, 0, 0, 1], 8080, 0x02), sec * NS);
        }
        let r = o.report("eth0", 3 * NS, 99.0, &HashMap::new());
        let written = apply("t.toml", text, &r).unwrap();
        for kept in [
            "# guessed after the March incident\nconnections = ",
            "}   # see ticket 42\n",
            "  8081, # admin\n",
            "packets = { rate = \"50/s\", burst = 100 } # untouched\n",
        ] {
            assert!(written.contains(kept), "lost {kept:?}:\n{written}");
        }
        assert!(!written.contains("100/s"), "not applied:\n{written}");
        let l = crate::policy::parse_str("w.toml", &written).unwrap().rules[0]
            .connections
            .unwrap();
        assert_eq!((l.rate.count, l.burst), (2, 4), "{written}");
    }

    #[test]
    fn a_cut_short_report_says_so_first_and_a_full_one_is_as_before() {
        let p = crate::policy::parse_str("t.toml", POLICY).unwrap();
        let mut o = Observer::new(p);
        o.feed(&frame([10, 0, 0, 1], 8080, 0x02), 0);
        let mut r = o.report("eth0", 2 * NS, 99.0, &HashMap::new());
        let full = render(&r);
        assert!(full.starts_with("observed eth0 for 2 s"), "{full}");
        let json = serde_json::to_string(&r).unwrap();
        assert!(!json.contains("stopped_early"), "{json}");
        r.stopped_early = Some(StoppedEarly {
            signal: "SIGINT".into(),
            observed_seconds: 125.4,
            requested_seconds: 600.0,
        });
        let short = render(&r);
        assert!(
            short.starts_with(
                "observation cut short by SIGINT after 2m05s of the 10m00s asked (--for): the figures below cover those 2m05s only\nobserved eth0 for 2 s"
            ),
            "{short}"
        );
        assert_eq!(&short[short.find("observed eth0").unwrap()..], full);
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(v["stopped_early"]["signal"], "SIGINT");
        assert_eq!(v["stopped_early"]["observed_seconds"], 125.4);
        assert_eq!(
            [span(4.31), span(60.0), span(3725.0)],
            ["4.3 s", "1m00s", "1h02m05s"]
        );
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u64> = (1..=1000).collect();
        assert_eq!(percentile_of(&v, 50.0), 500);
        assert_eq!(percentile_of(&v, 99.9), 999);
        assert_eq!(percentile_of(&v, 100.0), 1000);
        assert_eq!(percentile_of(&[], 50.0), 0);
        assert_eq!(percentile_of(&[7], 0.1), 7);
    }
}
