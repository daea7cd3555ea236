//! "Under attack" per rule: a rule is under attack while its `unverified` budget drops
//! connection attempts; the attack ends after `QUIET_NS` without a drop. The daemon feeds
//! the `unverified_limit` counter once a second and logs the start and end.

use std::collections::HashMap;

/// Drop-free time that ends an attack.
pub const QUIET_NS: u64 = 10_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Change {
    Start,
    End {
        /// From the first to the last drop plus the quiet period.
        secs: f64,
        /// Connection attempts dropped over the budget during the attack.
        dropped: u64,
    },
}

#[derive(Debug, Clone, Copy)]
struct Attack {
    start_ns: u64,
    start_total: u64,
    last_drop_ns: u64,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    last_total: u64,
    attack: Option<Attack>,
}

/// Attack state by rule key (the daemon uses `iface|rule`).
#[derive(Debug, Default)]
pub struct Tracker {
    rules: HashMap<String, Entry>,
}

impl Tracker {
    /// Feeds a rule's `unverified_limit` total at `now_ns` (data-path clock). The first
    /// observation of a rule only sets its baseline: drops from before the daemon started
    /// are history, not an attack.
    pub fn observe(&mut self, key: &str, total: u64, now_ns: u64) -> Option<Change> {
        let Some(e) = self.rules.get_mut(key) else {
            self.rules.insert(
                key.to_string(),
                Entry {
                    last_total: total,
                    attack: None,
                },
            );
            return None;
        };
        // A counter below the last value: the maps were recreated. Start over.
        let dropped_now = total > e.last_total;
        let reset = total < e.last_total;
        let before = e.last_total;
        e.last_total = total;
        match (&mut e.attack, dropped_now) {
            (None, true) => {
                e.attack = Some(Attack {
                    start_ns: now_ns,
                    // The drops this tick saw are the attack's first.
                    start_total: before,
                    last_drop_ns: now_ns,
                });
                Some(Change::Start)
            }
            (Some(a), true) => {
                a.last_drop_ns = now_ns;
                None
            }
            (Some(a), false) if reset || now_ns.saturating_sub(a.last_drop_ns) >= QUIET_NS => {
                let a = *a;
                e.attack = None;
                Some(Change::End {
                    secs: now_ns.saturating_sub(a.start_ns) as f64 / 1e9,
                    // Counted from the last total before the tick that saw the first
                    // drop: every drop of the attack, that tick's included.
                    dropped: total.saturating_sub(a.start_total),
                })
            }
            _ => None,
        }
    }

    /// Whether `key` has been observed before.
    pub fn knows(&self, key: &str) -> bool {
        self.rules.contains_key(key)
    }

    /// Start (data-path clock) of the attack running on `key`, if any.
    pub fn since(&self, key: &str) -> Option<u64> {
        self.rules.get(key)?.attack.map(|a| a.start_ns)
    }

    /// Forgets rules no longer in the policy. Returns the attacks that were running on them,
    /// ended at `now_ns` by the rule's removal (`dropped`: up to the last total seen), by key.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool, now_ns: u64) -> Vec<(String, Change)> {
        let mut ended = Vec::new();
        self.rules.retain(|k, e| {
            if keep(k) {
                return true;
            }
            if let Some(a) = e.attack {
                ended.push((
                    k.clone(),
                    Change::End {
                        secs: now_ns.saturating_sub(a.start_ns) as f64 / 1e9,
                        dropped: e.last_total.saturating_sub(a.start_total),
                    },
                ));
            }
            false
        });
        ended
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn starts_on_drops_and_ends_after_quiet() {
        let mut t = Tracker::default();
        assert_eq!(
            t.observe("r", 500, 100 * S),
            None,
            "baseline, not an attack"
        );
        assert_eq!(t.observe("r", 500, 101 * S), None);
        assert_eq!(t.observe("r", 900, 102 * S), Some(Change::Start));
        assert_eq!(t.since("r"), Some(102 * S));
        assert_eq!(t.observe("r", 5_000, 103 * S), None);
        assert_eq!(t.observe("r", 5_000, 112 * S), None, "9 s quiet: still on");
        let end = t.observe("r", 5_000, 113 * S);
        assert_eq!(
            end,
            Some(Change::End {
                secs: 11.0,
                dropped: 4_500
            }),
            "every drop since the last quiet total (500), the first tick's 400 included"
        );
        assert_eq!(t.since("r"), None);
        assert_eq!(t.observe("r", 5_001, 114 * S), Some(Change::Start));
    }

    /// A rule removed by a reload while under attack: its `attack_start` gets its
    /// `attack_end` (it was forgotten without one, an attack that never ended in the audit).
    #[test]
    fn a_rule_removed_under_attack_ends_its_attack() {
        let mut t = Tracker::default();
        t.observe("eth0|gone", 100, S);
        t.observe("eth0|calm", 7, S);
        assert_eq!(t.observe("eth0|gone", 400, 2 * S), Some(Change::Start));
        assert_eq!(t.observe("eth0|gone", 900, 3 * S), None);
        let ended = t.retain(|k| k != "eth0|gone", 5 * S);
        assert_eq!(
            ended,
            vec![(
                "eth0|gone".to_string(),
                Change::End {
                    secs: 3.0,
                    dropped: 800
                }
            )]
        );
        assert!(!t.knows("eth0|gone"));
        assert!(t.knows("eth0|calm"));
        assert!(
            t.retain(|k| k != "eth0|calm", 6 * S).is_empty(),
            "no attack: nothing ends"
        );
    }

    #[test]
    fn a_counter_reset_ends_the_attack() {
        let mut t = Tracker::default();
        t.observe("r", 0, S);
        assert_eq!(t.observe("r", 10, 2 * S), Some(Change::Start));
        assert!(matches!(t.observe("r", 0, 3 * S), Some(Change::End { .. })));
    }
}
