//! The suite's checks, by kind: each rule's limits (burst, rate, below the rate, refill),
//! its escalation (strikes, ban scope and duration), and the allow and deny lists. `Lab`
//! (the parent module) runs them with real traffic and records their outcomes.

use super::*;

impl Lab {
    pub(super) fn limit_checks(&mut self, rule: &Rule, kind: &str, limit: &Limit, v6: bool) {
        let fam = if v6 { "IPv6" } else { "IPv4" };
        let label = format!(
            "{kind} {} burst {} ({fam} /{})",
            limit.rate,
            limit.burst,
            if v6 {
                rule.ipv6_prefix
            } else {
                rule.ipv4_prefix
            }
        );
        let prefix = if v6 {
            rule.ipv6_prefix
        } else {
            rule.ipv4_prefix
        };
        let rate = per_sec(limit.rate);
        let max = if rule.protocol == Protocol::Tcp {
            MAX_TCP_RATE
        } else {
            MAX_PKT_RATE
        };
        let monitor = rule.mode == Mode::Monitor;
        let name = rule.name.clone();

        // 1. The burst passes in full.
        let src = self.fresh(v6, prefix);
        let burst = limit.burst.min(5000) as u32;
        let before_wd = self.count(&name, "would_drop");
        let (admitted, offered, _) = self.offer(rule, src, burst, Duration::ZERO);
        self.record(
            &name,
            &label,
            "burst",
            format!("{offered} of {offered} admitted"),
            format!("{admitted} admitted"),
            admitted == offered,
        );

        // 2. Above the rate: held to the rate (±10 %) over a 5 s window, burst spent.
        let offer_rate = (rate * 3.0).max(rate + 5.0).min(max);
        if offer_rate < rate * 1.2 {
            self.record(
                &name,
                &label,
                "rate",
                format!("rate {rate}/s"),
                format!("not measurable: the lab generates at most {max}/s"),
                true,
            );
        } else {
            let interval = Duration::from_secs_f64(1.0 / offer_rate);
            let count = (offer_rate * WINDOW.as_secs_f64()) as u32;
            let (admitted, offered, secs) = self.offer(rule, src, count, interval);
            // Sustained bucket: it holds `count` tokens refilled at its rate; what is left
            // after the burst caps the window too.
            let mut expected = rate * secs;
            if let Some(s) = limit.sustained {
                let left = (s.count as f64 - burst as f64).max(0.0);
                expected = expected.min(left + per_sec(s) * secs);
            }
            if monitor {
                let would = self.count(&name, "would_drop") - before_wd;
                let dropped = offered - admitted;
                self.record(
                    &name,
                    &label,
                    "monitor: nothing dropped",
                    "0 dropped".into(),
                    format!("{dropped} dropped"),
                    dropped == 0,
                );
                let exp_would = offered as f64 - expected;
                self.record(
                    &name,
                    &label,
                    "monitor: would_drop counted",
                    format!("about {exp_would:.0} (±10 %)"),
                    format!("{would}"),
                    (would as f64 - exp_would).abs() <= exp_would * 0.1 + 2.0,
                );
            } else {
                let observed = admitted as f64 / secs;
                let want = expected / secs;
                self.record(
                    &name,
                    &label,
                    "rate over 5 s",
                    format!("{want:.1}/s ±10 % while offered {offer_rate:.0}/s"),
                    format!("{observed:.1}/s ({admitted} of {offered} in {secs:.2} s)"),
                    (observed - want).abs() <= want * 0.1 + 1.0 / secs,
                );
            }
        }

        // 3. Refill: after idling burst/rate seconds the bucket is full again.
        let idle = Duration::from_secs_f64(limit.burst as f64 / rate) + Duration::from_millis(50);
        if idle <= Duration::from_secs(2) {
            std::thread::sleep(idle);
        } else {
            self.advance(idle);
        }
        let (admitted, offered, _) = self.offer(rule, src, burst, Duration::ZERO);
        self.record(
            &name,
            &label,
            "refill after idle",
            format!(
                "{offered} of {offered} admitted after {:.1} s idle",
                idle.as_secs_f64()
            ),
            format!("{admitted} admitted"),
            admitted == offered,
        );

        // 4. Below the rate nothing is dropped (from a fresh source, 3 s at half the rate).
        // Judged by the rule's counters too: a TCP connection that the shared machine left
        // unanswered past the client's 300 ms (a retransmission's moment) was not dropped.
        let src = self.fresh(v6, prefix);
        let half = (rate / 2.0).min(max);
        let count = ((half * 3.0) as u32).max(2);
        let refused = |l: &Self| {
            [
                "conn_limit",
                "pkt_limit",
                "would_drop",
                "reset",
                "ban",
                "unverified_limit",
            ]
            .iter()
            .map(|r| l.count(&name, r))
            .sum::<u64>()
        };
        let before = refused(self);
        let (admitted, offered, _) = self.offer(
            rule,
            src,
            count,
            Duration::from_secs_f64(1.0 / half.max(0.5)),
        );
        let dropped = refused(self) - before;
        let tcp = rule.protocol == Protocol::Tcp;
        self.record(
            &name,
            &label,
            "below the rate",
            format!("{offered} of {offered} admitted at {half:.1}/s, none refused"),
            format!("{admitted} admitted, {dropped} refused by the rule"),
            dropped == 0 && (admitted == offered || tcp),
        );
    }

    pub(super) fn escalation_check(&mut self, rule: &Rule, e: &policy::Escalation) {
        let name = rule.name.clone();
        let label = format!(
            "escalation {} strikes/{} ban {}",
            e.strikes,
            policy::format_duration(e.window),
            policy::format_duration(e.ban)
        );
        let Some(limit) = rule.connections.or(rule.packets) else {
            return;
        };
        let rate = per_sec(limit.rate);
        let max = if rule.protocol == Protocol::Tcp {
            MAX_TCP_RATE
        } else {
            MAX_PKT_RATE
        };
        let offer_rate = (rate * 3.0).max(rate + 5.0).min(max);
        let src = self.fresh(false, rule.ipv4_prefix);
        let key = format!(
            "{}/{}",
            match src {
                IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(
                    u32::from(a) & (u32::MAX << (32 - u32::from(rule.ipv4_prefix)))
                )),
                other => other,
            },
            rule.ipv4_prefix
        );
        // Flood long enough for `strikes` strikes (one per second) plus the burst.
        let secs = f64::from(e.strikes) + limit.burst as f64 / rate + 1.5;
        let count = (offer_rate * secs) as u32;
        self.offer(rule, src, count, Duration::from_secs_f64(1.0 / offer_rate));
        std::thread::sleep(Duration::from_millis(400));
        let lines = self.audit_lines();
        let ban = lines
            .iter()
            .find(|l| l["event"] == "ban" && l["source"] == key);
        let Some(ban) = ban else {
            self.record(
                &name,
                &label,
                "banned",
                format!("a ban of {key}"),
                "no ban in the audit log".into(),
                false,
            );
            return;
        };
        let strikes = ban["strikes"].as_u64().unwrap_or(0);
        self.record(
            &name,
            &label,
            "ban at the strike count",
            format!("{} strikes", e.strikes),
            format!("{strikes} strikes"),
            strikes == u64::from(e.strikes),
        );
        let secs_ban = ban["ban_secs"].as_f64().unwrap_or(0.0);
        self.record(
            &name,
            &label,
            "ban duration",
            format!("{} s", e.ban.as_secs_f64()),
            format!("{secs_ban} s"),
            (secs_ban - e.ban.as_secs_f64()).abs() < 0.01,
        );
        let scope = ban["scope"].as_str().unwrap_or("");
        let want_scope = if e.scope == BanScope::Host {
            "host"
        } else {
            "rule"
        };
        self.record(
            &name,
            &label,
            "ban scope",
            want_scope.into(),
            scope.into(),
            scope == want_scope,
        );
        // While banned: nothing of the rule gets through (nor other ports, host scope).
        let (admitted, offered, _) = self.offer(rule, src, 3, Duration::from_millis(20));
        self.record(
            &name,
            &label,
            "enforced while banned",
            format!("0 of {offered}"),
            format!("{admitted}"),
            admitted == 0,
        );
        if let Some(port) = unruled_tcp_port(&self.policy) {
            let dst = self.dst(src, port);
            let c = self
                .topo
                .client
                .run_in(move || {
                    connect_many(
                        &[src],
                        dst,
                        2,
                        Duration::from_millis(20),
                        Duration::from_millis(300),
                    )
                })
                .expect("client");
            let want = if e.scope == BanScope::Host { 0 } else { 2 };
            self.record(
                &name,
                &label,
                "other ports while banned",
                format!("{want} of 2 admitted"),
                format!("{}", c.ok),
                c.ok == want,
            );
        }
        // Duration: 1 s before its end still banned, 1 s after it over.
        let expires = ban["expires"]
            .as_str()
            .and_then(|t| humantime::parse_rfc3339(t).ok())
            .expect("ban expiry");
        let left = expires
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default();
        self.advance(left.saturating_sub(Duration::from_secs(1)));
        let (before_end, _, _) = self.offer(rule, src, 1, Duration::ZERO);
        self.advance(Duration::from_secs(2));
        let (after_end, _, _) = self.offer(rule, src, 1, Duration::ZERO);
        self.record(
            &name,
            &label,
            "ban lasts its duration",
            "blocked 1 s before the end, admitted 1 s after".into(),
            format!("{before_end} admitted before, {after_end} after"),
            before_end == 0 && after_end == 1,
        );
    }

    pub(super) fn list_checks(&mut self) {
        let Some(rule) = self.policy.rules.first().cloned() else {
            return;
        };
        if rule.protocol == Protocol::Icmp {
            return;
        }
        let allow = self.policy.allow.first().copied();
        let deny = self.policy.deny.first().copied();
        if let Some(c) = allow {
            let src = host_in(&c);
            self.route(&c);
            self.topo.add_client_addr(src).expect("client address");
            let limit = rule
                .connections
                .or(rule.packets)
                .map_or(10.0, |l| per_sec(l.rate) + l.burst as f64);
            let count = (limit * 2.0).min(1000.0) as u32;
            // Nothing of an allowed source is ever dropped, so a patient client (a loaded
            // machine may take longer than `offer`'s 300 ms to answer) and the counters say
            // it: every attempt counted `allow`, no drop counted for the rule.
            let drops = |l: &Self| {
                ["conn_limit", "pkt_limit", "ban", "deny"]
                    .iter()
                    .map(|r| l.count(&rule.name, r))
                    .sum::<u64>()
            };
            let (allow_before, drops_before) = (self.count(&rule.name, "allow"), drops(self));
            let (admitted, offered, _) = self.offer_with(
                &rule,
                src,
                count,
                Duration::from_millis(1),
                Duration::from_secs(5),
            );
            let allowed = self.count(&rule.name, "allow") - allow_before;
            let dropped = drops(self) - drops_before;
            self.record(
                &rule.name,
                &format!("allow {c}"),
                "never limited",
                format!("{offered} of {offered}, at least {offered} counted as allow, 0 dropped"),
                format!("{admitted}, {allowed} counted as allow, {dropped} dropped"),
                admitted == offered && allowed >= offered && dropped == 0,
            );
        }
        if let Some(c) = deny {
            let src = host_in(&c);
            self.route(&c);
            self.topo.add_client_addr(src).expect("client address");
            let before = self.count(&rule.name, "deny");
            let (admitted, offered, _) = self.offer(&rule, src, 5, Duration::from_millis(20));
            let counted = self.count(&rule.name, "deny") - before;
            self.record(
                &rule.name,
                &format!("deny {c}"),
                "always dropped",
                format!("0 of {offered}, {offered} counted as deny"),
                format!("{admitted} admitted, {counted} counted"),
                admitted == 0 && counted >= offered,
            );
        }
    }
}
