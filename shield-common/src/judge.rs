//! The per-source decision: which buckets a packet draws from and what happens when one of
//! them is empty. Shared so that the XDP program and the host tests run the same code.

use crate::maps::{B_CONN, B_CONN_SUSTAINED, B_PKT, B_PKT_SUSTAINED, RuleConfig, SourceState};
use crate::reason::Reason;

/// Whether a packet needs per-source state under `rule` at all: connection attempts draw
/// from the `connections` buckets, every packet from the `packets` buckets. Anything else
/// passes without an LRU lookup.
#[inline(always)]
pub fn needs_state(rule: &RuleConfig, is_conn_attempt: bool) -> bool {
    (is_conn_attempt && rule.has_conn_limit()) || rule.has_pkt_limit()
}

/// Judges one packet of a source at `now`. All applicable buckets must have a token; only
/// then are they all drawn (a refused packet consumes nothing). Returns `Pass`,
/// `ConnLimit` or `PktLimit` (connections are judged first).
#[inline(always)]
pub fn judge(
    rule: &RuleConfig,
    state: &mut SourceState,
    now: u64,
    is_conn_attempt: bool,
) -> Reason {
    let mut tat = state.tat;
    if is_conn_attempt {
        match rule.buckets[B_CONN].check(tat[B_CONN], now) {
            Some(t) => tat[B_CONN] = t,
            None => return refuse(state, now, Reason::ConnLimit),
        }
        match rule.buckets[B_CONN_SUSTAINED].check(tat[B_CONN_SUSTAINED], now) {
            Some(t) => tat[B_CONN_SUSTAINED] = t,
            None => return refuse(state, now, Reason::ConnLimit),
        }
    }
    match rule.buckets[B_PKT].check(tat[B_PKT], now) {
        Some(t) => tat[B_PKT] = t,
        None => return refuse(state, now, Reason::PktLimit),
    }
    match rule.buckets[B_PKT_SUSTAINED].check(tat[B_PKT_SUSTAINED], now) {
        Some(t) => tat[B_PKT_SUSTAINED] = t,
        None => return refuse(state, now, Reason::PktLimit),
    }
    state.tat = tat;
    Reason::Pass
}

#[inline(always)]
fn refuse(state: &mut SourceState, now: u64, reason: Reason) -> Reason {
    state.limited = state.limited.wrapping_add(1);
    state.last_limited_ns = now;
    reason
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bucket::{Gcra, NS_PER_SEC};

    fn rule(conn: Gcra, conn_s: Gcra, pkt: Gcra) -> RuleConfig {
        RuleConfig {
            buckets: [conn, conn_s, pkt, Gcra::DISABLED],
            ..Default::default()
        }
    }

    #[test]
    fn connections_limit_only_counts_connection_attempts() {
        let r = rule(
            Gcra::new(1, NS_PER_SEC, 2).unwrap(),
            Gcra::DISABLED,
            Gcra::DISABLED,
        );
        let mut st = SourceState::default();
        let now = 10 * NS_PER_SEC;
        assert!(
            !needs_state(&r, false),
            "established traffic needs no state"
        );
        assert!(needs_state(&r, true));
        assert_eq!(judge(&r, &mut st, now, true), Reason::Pass);
        assert_eq!(judge(&r, &mut st, now, true), Reason::Pass);
        assert_eq!(judge(&r, &mut st, now, true), Reason::ConnLimit);
        assert_eq!(judge(&r, &mut st, now, false), Reason::Pass);
        assert_eq!(st.limited, 1);
        assert_eq!(st.last_limited_ns, now);
    }

    #[test]
    fn sustained_bucket_caps_a_long_run() {
        // 10/s burst 10, but at most 20 per minute.
        let r = rule(
            Gcra::new(10, NS_PER_SEC, 10).unwrap(),
            Gcra::new(20, 60 * NS_PER_SEC, 20).unwrap(),
            Gcra::DISABLED,
        );
        let mut st = SourceState::default();
        let mut admitted = 0;
        for i in 0..600u64 {
            // 10/s for 60 s: the short bucket alone would admit all 600.
            if judge(&r, &mut st, NS_PER_SEC + i * NS_PER_SEC / 10, true) == Reason::Pass {
                admitted += 1;
            }
        }
        assert!(
            (38..=40).contains(&admitted),
            "sustained cap: admitted {admitted}"
        );
    }

    #[test]
    fn refused_connection_does_not_consume_packet_tokens() {
        let r = rule(
            Gcra::new(1, NS_PER_SEC, 1).unwrap(),
            Gcra::DISABLED,
            Gcra::new(1, NS_PER_SEC, 2).unwrap(),
        );
        let mut st = SourceState::default();
        let now = 5 * NS_PER_SEC;
        assert_eq!(judge(&r, &mut st, now, true), Reason::Pass);
        assert_eq!(judge(&r, &mut st, now, true), Reason::ConnLimit);
        // The packet bucket still has its second token.
        assert_eq!(judge(&r, &mut st, now, false), Reason::Pass);
        assert_eq!(judge(&r, &mut st, now, false), Reason::PktLimit);
    }
}
