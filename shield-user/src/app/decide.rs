//! Decisions: `decide` of a request, `report` of a signal, and the judgement of one key's
//! buckets (a strike and maybe a ban when over the limit).

use std::{collections::HashMap, sync::atomic::Ordering};

use shield_common::{
    Gcra, SourceState,
    bucket::NS_PER_SEC,
    judge::{Outcome, escalate},
};

use super::{
    Client, Effect, Kind, Limiter, MAX_KEYS,
    protocol::{Decision, Reported},
    secs_up, standing, stored_key,
};

impl Limiter {
    /// `decide` of a request arriving (`charge` false).
    #[expect(clippy::too_many_arguments, reason = "the fields of one request")]
    pub fn decide(
        &mut self,
        method: &str,
        rule: Option<&str>,
        path: &str,
        peer: Option<&str>,
        xff: Option<&str>,
        headers: Option<&HashMap<String, String>>,
        user: Option<&str>,
        cost: Option<u64>,
        effects: &mut Vec<Effect>,
    ) -> Result<Decision, String> {
        self.decide_full(
            method, rule, path, peer, xff, headers, user, cost, false, effects,
        )
    }

    /// `decide`; `charge`: more tokens for a request already admitted (`shield.charge(n)`):
    /// no in-flight check, no slot.
    #[expect(clippy::too_many_arguments, reason = "the fields of one request")]
    pub fn decide_full(
        &mut self,
        method: &str,
        rule: Option<&str>,
        path: &str,
        peer: Option<&str>,
        xff: Option<&str>,
        headers: Option<&HashMap<String, String>>,
        user: Option<&str>,
        cost: Option<u64>,
        charge: bool,
        effects: &mut Vec<Effect>,
    ) -> Result<Decision, String> {
        // A cost past MAX_COST (no bucket holds more: MAX_BURST) is refused below as one
        // that never passes, a 429: an error would be left to on_error ("open": the work
        // done uncharged), and a client may choose the cost (`shield.charge(len(rows))`).
        if cost == Some(0) {
            return Err(self.error("cost must be a whole number of tokens >= 1, got 0"));
        }
        let generation = self.policy.generation;
        let Some(idx) = self
            .policy
            .endpoints
            .iter()
            .position(|e| e.matches(method, rule, path))
        else {
            return Ok(Decision {
                ok: true,
                allow: true,
                generation,
                ..Decision::default()
            });
        };
        let client = self.client(peer, xff)?;
        let now = self.clock.now();
        let name = self.endpoints[idx].name.clone();
        if let Some((left, what)) = self.banned(client.addr, Some(&name), now) {
            self.endpoints[idx]
                .counts
                .limited
                .fetch_add(1, Ordering::Relaxed);
            return Ok(Decision {
                ok: true,
                allow: false,
                status: Some(403),
                generation,
                endpoint: Some(name),
                client: Some(client.addr.to_string()),
                retry_after: Some(left),
                detail: Some(format!(
                    "{} is banned for {left} s more ({what})",
                    client.addr
                )),
                ..Decision::default()
            });
        }
        let cost = cost.unwrap_or(self.policy.endpoints[idx].cost);
        let t = &self.endpoints[idx];
        let mut most = if t.sustained.is_enabled() {
            t.rate.burst().min(t.sustained.burst())
        } else {
            t.rate.burst()
        };
        // A quota smaller than that: no window ever holds more.
        if let Some(q) = self.policy.endpoints[idx].quota {
            most = most.min(q.limit);
        }
        if cost > most {
            // Never passes, whatever the wait: no strike, no retry hint that lies.
            t.counts.limited.fetch_add(1, Ordering::Relaxed);
            return Ok(Decision {
                ok: true,
                allow: false,
                status: Some(429),
                generation,
                endpoint: Some(name.clone()),
                client: Some(client.addr.to_string()),
                retry_after: Some(1),
                limit: Some(t.limit.burst),
                remaining: Some(0),
                reset: Some(1),
                policy: Some(t.policy_field()),
                detail: Some(format!(
                    "this request costs {cost} tokens, more than {name} ever holds ({most}): it cannot pass"
                )),
                slot: None,
            });
        }
        let key = self.key_of(&self.endpoints[idx].key, client.addr, headers, user);
        let cap = self.policy.endpoints[idx].concurrency.filter(|_| !charge);
        // As the tables store it: a key from the request is at most `MAX_KEY_LEN` bytes
        // here too (the quota table lives a whole window and goes to disk every second).
        let slot_key = (name.clone(), stored_key(&key).into_owned());
        if let Some(cap) = cap {
            let now_in = self.in_flight.get(&slot_key).copied().unwrap_or(0);
            if now_in >= cap {
                let t = &self.endpoints[idx];
                t.counts.limited.fetch_add(1, Ordering::Relaxed);
                return Ok(Decision {
                    ok: true,
                    allow: false,
                    status: Some(429),
                    generation,
                    endpoint: Some(name.clone()),
                    client: Some(client.addr.to_string()),
                    retry_after: Some(1),
                    detail: Some(format!(
                        "{name} allows {cap} request{} in flight at once per {}, and {now_in} are; retry in 1 s",
                        if cap == 1 { "" } else { "s" },
                        t.key
                    )),
                    ..Decision::default()
                });
            }
        }
        let quota = self.policy.endpoints[idx].quota;
        let mut quota_left = None;
        if let Some(q) = quota {
            let wall = self.clock.wall_secs();
            let window = wall / q.per_secs * q.per_secs;
            let used = match self.quotas.get(&slot_key) {
                Some((w, u)) if *w == window => *u,
                _ => 0,
            };
            // Keys come from requests: the table is bounded like the buckets' (a new key
            // that finds no room is refused, not let through uncounted: a quota is a cap).
            let quota_endpoints = self
                .policy
                .endpoints
                .iter()
                .filter(|e| e.quota.is_some())
                .count();
            if !self.quotas.contains_key(&slot_key)
                && self.quotas.len() >= MAX_KEYS.saturating_mul(quota_endpoints)
            {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                let t = &self.endpoints[idx];
                t.counts.limited.fetch_add(1, Ordering::Relaxed);
                let reset = (window + q.per_secs).saturating_sub(wall).max(1);
                return Ok(Decision {
                    ok: true,
                    allow: false,
                    status: Some(429),
                    generation,
                    endpoint: Some(name.clone()),
                    client: Some(client.addr.to_string()),
                    retry_after: Some(reset),
                    detail: Some(format!(
                        "{name}'s quota table is full ({MAX_KEYS} keys per quota endpoint this window); a new key is refused until it resets in {reset} s"
                    )),
                    ..Decision::default()
                });
            }
            let reset = (window + q.per_secs).saturating_sub(wall).max(1);
            if used.saturating_add(cost) > q.limit {
                let t = &self.endpoints[idx];
                t.counts.limited.fetch_add(1, Ordering::Relaxed);
                return Ok(Decision {
                    ok: true,
                    allow: false,
                    status: Some(429),
                    generation,
                    endpoint: Some(name.clone()),
                    client: Some(client.addr.to_string()),
                    retry_after: Some(reset),
                    limit: Some(q.limit),
                    remaining: Some(0),
                    reset: Some(reset),
                    policy: Some(format!(
                        "{}, \"{name}-quota\";q={};w={}",
                        t.policy_field(),
                        q.limit,
                        q.per_secs
                    )),
                    detail: Some(format!(
                        "{name}'s quota of {q} per {} is used up ({used} used); it resets in {reset} s",
                        t.key
                    )),
                    slot: None,
                });
            }
            quota_left = Some((window, used, reset, q));
        }
        let judged = self.judge(Kind::Endpoint, idx, &key, cost, client, now, effects);
        if let (Judged::Allowed { .. }, Some((window, used, _, _))) = (&judged, quota_left) {
            self.quotas
                .insert(slot_key.clone(), (window, used.saturating_add(cost)));
            self.quotas_dirty = true;
            // Not summed again over every key (one decision would cost O(keys)): the
            // once-a-second tick sets the gauge from the table.
            self.endpoints[idx]
                .counts
                .quota_used
                .fetch_add(cost, Ordering::Relaxed);
        }
        let slot = match (&judged, cap) {
            (Judged::Allowed { .. }, Some(_)) => {
                let id = self.next_slot;
                self.next_slot += 1;
                *self.in_flight.entry(slot_key.clone()).or_insert(0) += 1;
                self.slots.insert(id, slot_key);
                self.endpoints[idx]
                    .counts
                    .in_flight
                    .fetch_add(1, Ordering::Relaxed);
                Some(id)
            }
            _ => None,
        };
        let t = &self.endpoints[idx];
        let mut d = Decision {
            ok: true,
            allow: true,
            generation,
            endpoint: Some(name),
            client: Some(client.addr.to_string()),
            limit: Some(t.limit.burst),
            policy: Some(match quota {
                Some(q) => format!(
                    "{}, \"{}-quota\";q={};w={}",
                    t.policy_field(),
                    t.name,
                    q.limit,
                    q.per_secs
                ),
                None => t.policy_field(),
            }),
            ..Decision::default()
        };
        match judged {
            Judged::Allowed { remaining, reset } => {
                d.remaining = Some(remaining);
                d.reset = Some(reset);
                d.slot = slot;
                if let Some((_, used, qreset, q)) = quota_left {
                    let left = q.limit.saturating_sub(used.saturating_add(cost));
                    if left < remaining {
                        d.remaining = Some(left);
                        d.reset = Some(qreset);
                        d.limit = Some(q.limit);
                    }
                }
            }
            Judged::Limited { retry_after } => {
                d.allow = false;
                d.status = Some(429);
                d.retry_after = Some(retry_after);
                d.remaining = Some(0);
                d.reset = Some(retry_after);
                d.detail = Some(t.detail(retry_after));
            }
        }
        Ok(d)
    }

    /// `report`.
    #[expect(clippy::too_many_arguments, reason = "the fields of one request")]
    pub fn report(
        &mut self,
        signal: &str,
        peer: Option<&str>,
        xff: Option<&str>,
        headers: Option<&HashMap<String, String>>,
        user: Option<&str>,
        key: Option<&str>,
        effects: &mut Vec<Effect>,
    ) -> Result<Reported, String> {
        let Some(idx) = self.signals.iter().position(|s| s.name == signal) else {
            return Err(self.error(format!("no [[signal]] named {signal:?} in the policy")));
        };
        let client = self.client(peer, xff)?;
        let now = self.clock.now();
        let key = match key.filter(|k| !k.is_empty()) {
            Some(k) => format!("key:{k}"),
            None => self.key_of(&self.signals[idx].key, client.addr, headers, user),
        };
        let judged = self.judge(Kind::Signal, idx, &key, 1, client, now, effects);
        Ok(Reported {
            ok: true,
            generation: self.policy.generation,
            signal: signal.to_string(),
            client: client.addr.to_string(),
            counted: true,
            limited: matches!(judged, Judged::Limited { .. }),
            banned: self.banned(client.addr, None, now).is_some(),
        })
    }

    /// `cost` tokens from `key` of table `idx`; over the limit: a strike, maybe a ban.
    #[expect(clippy::too_many_arguments, reason = "one judgement's inputs")]
    fn judge(
        &mut self,
        kind: Kind,
        idx: usize,
        key: &str,
        cost: u64,
        client: Client,
        now: u64,
        effects: &mut Vec<Effect>,
    ) -> Judged {
        let tables = match kind {
            Kind::Endpoint => &mut self.endpoints,
            Kind::Signal => &mut self.signals,
        };
        let t = &mut tables[idx];
        let key = stored_key(key);
        let key = key.as_ref();
        if !t.states.contains_key(key) && t.states.len() >= MAX_KEYS {
            if t.full_sweep_at
                .is_none_or(|at| now.saturating_sub(at) >= NS_PER_SEC)
            {
                t.full_sweep_at = Some(now);
                t.sweep(now);
            }
            if t.states.len() >= MAX_KEYS {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                t.counts.allowed.fetch_add(1, Ordering::Relaxed);
                return Judged::Allowed {
                    remaining: t.limit.burst,
                    reset: 0,
                };
            }
        }
        let st = t.states.entry(key.to_string()).or_insert(SourceState::NEW);
        let a = t.rate.check_n(st.tat[0], now, cost);
        let b = t.sustained.check_n(st.tat[1], now, cost);
        if let (Some(a), Some(b)) = (a, b) {
            st.tat[0] = a;
            st.tat[1] = b;
            t.counts.allowed.fetch_add(1, Ordering::Relaxed);
            let (ra, ta) = standing(&t.rate, a, now);
            let (rb, tb) = standing(&t.sustained, b, now);
            let (remaining, reset) = if rb < ra { (rb, tb) } else { (ra, ta) };
            return Judged::Allowed { remaining, reset };
        }
        // Refused: when the refusing bucket(s) admit the next token.
        let wait = |g: &Gcra, tat: u64, ok: bool| if ok { 0 } else { g.wait_n(tat, now, cost) };
        let retry_after = secs_up(wait(&t.rate, st.tat[0], a.is_some()).max(wait(
            &t.sustained,
            st.tat[1],
            b.is_some(),
        )))
        .max(1);
        st.limited = st.limited.saturating_add(1);
        t.counts.limited.fetch_add(1, Ordering::Relaxed);
        let out = match &t.escalation {
            Some(e) => escalate(e, st, now),
            None => Outcome::NONE,
        };
        let (name, scope, counts) = (t.name.clone(), t.scope, t.counts.clone());
        let second = now / NS_PER_SEC;
        if self.last_limited.get(&client.addr) != Some(&second) {
            self.last_limited.insert(client.addr, second);
            effects.push(Effect::Limited {
                kind,
                name: name.clone(),
                client: client.addr,
                retry_after,
            });
        }
        if out.ban_ns > 0 {
            self.ban(kind, &name, scope, client, out, now, &counts, effects);
        }
        Judged::Limited { retry_after }
    }
}

enum Judged {
    Allowed { remaining: u64, reset: u64 },
    Limited { retry_after: u64 },
}
