//! The per-source decision: which buckets a packet draws from and what happens when one of
//! them is empty. Shared so that the XDP program and the host tests run the same code.

use crate::addr::{FAMILY_V4, mask_prefix};
use crate::bans::{BAN_ATTEMPTS, BAN_MONITOR, BanValue};
use crate::bucket::NS_PER_SEC;
use crate::maps::{
    B_CONN, B_CONN_SUSTAINED, B_PKT, B_PKT_SUSTAINED, Escalation, RuleConfig, SourceKey,
    SourceState, VERIFIED_V4_PREFIX, VERIFIED_V6_PREFIX,
};
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
fn refuse(state: &mut SourceState, _now: u64, reason: Reason) -> Reason {
    state.limited = state.limited.wrapping_add(1);
    reason
}

/// The prefix length a source of `family` is verified by: a host for IPv4, a /64 for IPv6.
#[inline(always)]
pub fn verified_prefix(family: u8) -> u8 {
    if family == FAMILY_V4 {
        VERIFIED_V4_PREFIX
    } else {
        VERIFIED_V6_PREFIX
    }
}

/// Key of a source in the verified set: the host for IPv4, its /64 for IPv6.
#[inline(always)]
pub fn verified_key(family: u8, src: [u8; 16]) -> SourceKey {
    let prefix = verified_prefix(family);
    SourceKey {
        rule: 0,
        family,
        prefix_len: prefix,
        addr: mask_prefix(src, prefix),
    }
}

/// Whether a proof made at `proof_ns` still verifies its source at `now`.
#[inline(always)]
pub fn still_verified(proof_ns: u64, now: u64, ttl_ns: u64) -> bool {
    proof_ns != 0 && now.saturating_sub(proof_ns) < ttl_ns
}

/// What a refused packet leads to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// First refused packet of this source in a second: report it (one event per source per
    /// second, never one per packet).
    pub first_in_second: bool,
    /// Strikes in the current window after this packet.
    pub strikes: u16,
    /// Ban to issue now, in ns (0: none).
    pub ban_ns: u64,
    /// Ladder position of that ban (0 = first).
    pub level: u16,
}

impl Outcome {
    /// Nothing to report (a `const`, not `Default::default()`: BPF cannot return large
    /// values from functions that are not inlined).
    pub const NONE: Outcome = Outcome {
        first_in_second: false,
        strikes: 0,
        ban_ns: 0,
        level: 0,
    };
}

/// Longest `max_ban` and largest `backoff` a policy may set. Together they make the ladder
/// arithmetic overflow-free: a duration below `MAX_BAN_NS` times `MAX_BACKOFF` fits in
/// u64 many times over, so `ban_duration` multiplies plainly (an overflow check would
/// need a 128-bit multiply, which BPF does not have).
pub const MAX_BAN_NS: u64 = 365 * 24 * 3600 * NS_PER_SEC;
pub const MAX_BACKOFF: u16 = 16;
const _: () = assert!((MAX_BAN_NS as u128) * (MAX_BACKOFF as u128) < u64::MAX as u128);

/// Duration of the ban at `level` on the ladder: `ban * backoff^level`, capped at `max_ban`
/// (which the policy keeps at most `MAX_BAN_NS`, with `backoff` at most `MAX_BACKOFF`).
#[inline(always)]
pub fn ban_duration(esc: &Escalation, level: u16) -> u64 {
    let cap = if esc.max_ban_ns > MAX_BAN_NS {
        MAX_BAN_NS
    } else {
        esc.max_ban_ns
    };
    let backoff = if esc.backoff > MAX_BACKOFF {
        MAX_BACKOFF
    } else {
        esc.backoff
    } as u64;
    let mut d = if esc.ban_ns > cap { cap } else { esc.ban_ns };
    // Bounded: the cap is reached within 64 steps for any backoff >= 2.
    for _ in 0..(level as u32).min(64) {
        if d >= cap {
            break;
        }
        // d < cap <= MAX_BAN_NS, backoff <= MAX_BACKOFF: cannot overflow.
        d *= backoff;
    }
    if d > cap { cap } else { d }
}

/// Called for each refused packet of a source. A strike is counted at most once per
/// second (the first refusal at least one second after the last counted one; no division,
/// which BPF cannot do by a constant without 128-bit multiplies); `strikes` strikes within
/// `window` (counted from the window's first strike) issue a ban, whose length climbs the
/// backoff ladder unless the previous ban is older than `forget`.
#[inline(always)]
pub fn escalate(esc: &Escalation, state: &mut SourceState, now: u64) -> Outcome {
    if !report_due(state.last_report_ns, now) {
        return Outcome::NONE;
    }
    state.last_report_ns = now;
    escalate_claimed(esc, state, now)
}

/// Whether a refusal at `now` is the first of its second (after the last reported one at
/// `last_report_ns`): it is reported and may strike.
#[inline(always)]
pub fn report_due(last_report_ns: u64, now: u64) -> bool {
    last_report_ns == 0 || now.saturating_sub(last_report_ns) >= NS_PER_SEC
}

/// `escalate` once the refusal has claimed its second (`last_report_ns` moved to `now`).
/// The XDP program claims it with a compare-and-exchange, so that of several CPUs seeing
/// the same new second only one counts the strike; the rest of the state is then written
/// by that CPU alone.
#[inline(always)]
pub fn escalate_claimed(esc: &Escalation, state: &mut SourceState, now: u64) -> Outcome {
    let mut out = Outcome {
        first_in_second: true,
        ..Outcome::NONE
    };
    if esc.strikes == 0 {
        return out;
    }
    if state.strikes == 0 || now.saturating_sub(state.window_start_ns) > esc.window_ns {
        state.window_start_ns = now;
        state.strikes = 0;
    }
    state.strikes = state.strikes.saturating_add(1);
    out.strikes = state.strikes;
    if state.strikes >= esc.strikes {
        let recent =
            state.last_ban_ns != 0 && now.saturating_sub(state.last_ban_ns) <= esc.forget_ns;
        let level = if recent { state.ban_level } else { 0 };
        out.ban_ns = ban_duration(esc, level);
        out.level = level;
        state.ban_level = level.saturating_add(1);
        state.last_ban_ns = now;
        state.strikes = 0;
    }
    out
}

/// The ban an escalation's `out` issues on `key` at `now` (`out.ban_ns` not 0). Evidence
/// decides the strength: a rate of packets proves nothing about their source address, so an
/// automatic ban only stops new attempts (`BAN_ATTEMPTS`); under a monitor-mode rule it is
/// monitor-only (`BAN_MONITOR`).
#[inline(always)]
pub fn automatic_ban(key: &SourceKey, out: &Outcome, monitor: bool, now: u64) -> BanValue {
    BanValue {
        expires_ns: now.saturating_add(out.ban_ns),
        duration_ns: out.ban_ns,
        rule: key.rule,
        flags: BAN_ATTEMPTS | if monitor { BAN_MONITOR } else { 0 },
        level: out.level.min(255) as u8,
        prefix_len: key.prefix_len,
        _pad: [0; 3],
    }
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

    const S: u64 = NS_PER_SEC;

    fn esc() -> Escalation {
        Escalation {
            strikes: 3,
            backoff: 2,
            _pad: [0; 4],
            window_ns: 60 * S,
            ban_ns: 30 * S,
            max_ban_ns: 100 * S,
            forget_ns: 3600 * S,
        }
    }

    #[test]
    fn one_strike_per_second_however_many_packets() {
        let e = esc();
        let mut st = SourceState::default();
        let t = 1000 * S;
        let first = escalate(&e, &mut st, t);
        assert!(first.first_in_second);
        assert_eq!(first.strikes, 1);
        for i in 1..1000 {
            let o = escalate(&e, &mut st, t + i * 900_000);
            assert_eq!(o, Outcome::default(), "same second: no event, no strike");
        }
        let next = escalate(&e, &mut st, t + S);
        assert_eq!((next.first_in_second, next.strikes), (true, 2));
    }

    #[test]
    fn ban_after_strikes_then_ladder_doubles_up_to_max() {
        let e = esc();
        let mut st = SourceState::default();
        let mut t = 5000 * S;
        let mut bans = Vec::new();
        for _ in 0..12 {
            let o = escalate(&e, &mut st, t);
            if o.ban_ns != 0 {
                bans.push((o.level, o.ban_ns / S));
            }
            t += S;
        }
        // Strikes 3, 6, 9, 12 ban: 30 s, 60 s, then capped at 100 s.
        assert_eq!(bans, vec![(0, 30), (1, 60), (2, 100), (3, 100)]);
    }

    #[test]
    fn strikes_outside_the_window_start_over() {
        let e = Escalation {
            window_ns: 10 * S,
            ..esc()
        };
        let mut st = SourceState::default();
        let t = 100 * S;
        assert_eq!(escalate(&e, &mut st, t).strikes, 1);
        assert_eq!(escalate(&e, &mut st, t + S).strikes, 2);
        // 11 s after the window's first strike: a new window.
        let o = escalate(&e, &mut st, t + 11 * S);
        assert_eq!((o.strikes, o.ban_ns), (1, 0));
    }

    #[test]
    fn ladder_is_forgotten_after_forget() {
        let e = Escalation {
            forget_ns: 600 * S,
            ..esc()
        };
        let mut st = SourceState::default();
        let mut t = 100 * S;
        let ban_at = |st: &mut SourceState, start: &mut u64| {
            let mut last = 0;
            for _ in 0..3 {
                last = escalate(&e, st, *start).ban_ns;
                *start += S;
            }
            last / S
        };
        assert_eq!(ban_at(&mut st, &mut t), 30);
        assert_eq!(
            ban_at(&mut st, &mut t),
            60,
            "second offence within forget: doubled"
        );
        t += 601 * S;
        assert_eq!(
            ban_at(&mut st, &mut t),
            30,
            "after forget: back to the first step"
        );
    }

    #[test]
    fn no_escalation_still_reports_first_refusal_per_second() {
        let e = Escalation::default();
        let mut st = SourceState::default();
        let o = escalate(&e, &mut st, 7 * S);
        assert_eq!((o.first_in_second, o.strikes, o.ban_ns), (true, 0, 0));
    }

    #[test]
    fn verified_keys_cover_a_host_or_a_64_and_expire() {
        let mut v6 = [0u8; 16];
        v6[..8].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 1]);
        v6[15] = 9;
        let k = verified_key(crate::addr::FAMILY_V6, v6);
        assert_eq!((k.prefix_len, k.addr[15], k.addr[7]), (64, 0, 1));
        let k4 = verified_key(FAMILY_V4, crate::addr::v4_key([10, 1, 2, 3]));
        assert_eq!((k4.prefix_len, k4.addr[3], k4.rule), (32, 3, 0));
        assert!(still_verified(10 * S, 10 * S + 59 * S, 60 * S));
        assert!(!still_verified(10 * S, 70 * S, 60 * S));
        assert!(!still_verified(0, 5, 60 * S), "0 is never a proof");
    }

    #[test]
    fn ban_duration_edges() {
        let e = Escalation {
            backoff: 1,
            ..esc()
        };
        assert_eq!(ban_duration(&e, 40), 30 * S, "backoff 1 keeps the duration");
        let e = Escalation {
            max_ban_ns: u64::MAX,
            backoff: u16::MAX,
            ..esc()
        };
        assert_eq!(
            ban_duration(&e, u16::MAX),
            MAX_BAN_NS,
            "capped, never wraps"
        );
        let e = Escalation {
            ban_ns: MAX_BAN_NS - 1,
            max_ban_ns: MAX_BAN_NS,
            backoff: MAX_BACKOFF,
            ..esc()
        };
        assert_eq!(ban_duration(&e, 3), MAX_BAN_NS);
    }
}
