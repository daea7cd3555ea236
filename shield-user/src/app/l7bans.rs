//! The L7 ban table: issuing a ban (or saying why not), looking one up, and lifting bans.

use std::{net::IpAddr, sync::atomic::Ordering, time::Duration};

use shield_common::judge::Outcome;

use super::{AppBan, Client, Counts, Effect, Kind, L7Ban, Limiter, MAX_L7_BANS, contains, secs_up};
use crate::{
    bans::check_manual_ban,
    policy::{BanScope, Cidr},
};

impl Limiter {
    /// The L7 ban on `client` for `endpoint` (None: any), with seconds left.
    pub(super) fn banned(
        &self,
        client: IpAddr,
        endpoint: Option<&str>,
        now: u64,
    ) -> Option<(u64, &str)> {
        let p = self.prefix_of(client);
        self.bans.get(&p.addr)?.iter().find_map(|b| {
            let applies = match (&b.endpoint, endpoint) {
                (None, _) => true,
                (Some(e), Some(x)) => e == x,
                (Some(_), None) => false,
            };
            (applies && b.until > now).then(|| (secs_up(b.until - now).max(1), b.what.as_str()))
        })
    }

    #[expect(clippy::too_many_arguments, reason = "one ban's facts")]
    pub(super) fn ban(
        &mut self,
        kind: Kind,
        name: &str,
        scope: BanScope,
        client: Client,
        out: Outcome,
        now: u64,
        counts: &Counts,
        effects: &mut Vec<Effect>,
    ) {
        let source = self.prefix_of(client.addr);
        let skip = |why: String| Effect::BanSkipped {
            kind,
            name: name.to_string(),
            client: client.addr,
            why,
        };
        if self
            .policy
            .trusted_proxies
            .iter()
            .any(|c| contains(c, client.addr))
        {
            effects.push(skip(format!(
                "{} is a trusted proxy: it is never banned (its clients are judged by X-Forwarded-For)",
                client.addr
            )));
            return;
        }
        if let Err(why) = check_manual_ban(&source, &self.policy.allow, self.policy.floor, false) {
            effects.push(skip(why));
            return;
        }
        if !self.bans.contains_key(&source.addr) && self.bans.len() >= MAX_L7_BANS {
            self.bans.retain(|_, v| {
                v.retain(|b| b.until > now);
                !v.is_empty()
            });
            if self.bans.len() >= MAX_L7_BANS {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                effects.push(skip(format!(
                    "the L7 ban table is full ({MAX_L7_BANS} clients)"
                )));
                return;
            }
        }
        let endpoint =
            (kind == Kind::Endpoint && scope == BanScope::Rule).then(|| name.to_string());
        let what = format!("{name}: repeated limit violations");
        let list = self.bans.entry(source.addr).or_default();
        let until = now.saturating_add(out.ban_ns);
        match list.iter_mut().find(|b| b.endpoint == endpoint) {
            // Never shorter than a ban in force.
            Some(b) => {
                if until > b.until {
                    b.until = until;
                    b.since = now;
                    b.what = what.clone();
                }
            }
            None => list.push(L7Ban {
                until,
                since: now,
                endpoint: endpoint.clone(),
                what: what.clone(),
            }),
        }
        counts.banned.fetch_add(1, Ordering::Relaxed);
        effects.push(Effect::Ban(AppBan {
            kind,
            name: name.to_string(),
            source,
            duration: Duration::from_nanos(out.ban_ns),
            level: out.level,
            // A prefix that holds a trusted proxy is banned at L7 only: at XDP it would
            // cut the proxy, and every client behind it, off the host. An app-only daemon
            // has no XDP: every ban is an L7 one.
            xdp: scope == BanScope::Host
                && !client.via_proxy
                && self.policy.has_xdp
                && !self.holds_a_proxy(&source),
            endpoint,
            reason: what,
        }));
    }

    /// An unban from the fleet: lifts the L7 bans inside `cidr` issued (or last extended)
    /// at or before `before` (`Clock::now` time); returns how many clients were freed.
    pub fn unban_before(&mut self, cidr: &Cidr, before: u64) -> usize {
        let mut freed = 0;
        self.bans.retain(|ip, v| {
            if !contains(cidr, *ip) {
                return true;
            }
            v.retain(|b| b.since > before);
            freed += usize::from(v.is_empty());
            !v.is_empty()
        });
        freed
    }

    /// Whether prefix `source` overlaps a trusted proxy's range.
    fn holds_a_proxy(&self, source: &Cidr) -> bool {
        self.policy
            .trusted_proxies
            .iter()
            .any(|p| crate::bans::covers(source, p) || crate::bans::covers(p, source))
    }

    /// `shield unban`: lifts the L7 bans of every client prefix inside `cidr`; returns how
    /// many clients were freed.
    pub fn unban(&mut self, cidr: &Cidr) -> usize {
        let before = self.bans.len();
        self.bans.retain(|ip, _| !contains(cidr, *ip));
        before - self.bans.len()
    }
}
