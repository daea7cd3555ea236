//! The owner's bans: `shield ban`, `unban` and `bans` on the maps it owns, and the bans the
//! application layer asks for (on every interface, never shorter than one in force).

use std::time::{Duration, SystemTime};

use serde_json::json;
use tracing::warn;

use tokio::sync::oneshot;

use super::{Answer, Owner};
use crate::{
    audit::rfc3339,
    bans::{BanEntry, BanFloor, check_manual_ban},
    control::{BanList, BanResult, Banned, Reply, Request, Unbanned},
    daemon::upkeep::ban_json,
    policy::{Cidr, format_duration, parse_cidr, parse_duration},
};

/// How long `shield unban` waits for the app task's count of the L7 bans it lifted.
const APP_UNBAN_PATIENCE: Duration = Duration::from_secs(5);

/// `shield ban` against an app-only daemon (no `--iface`): refused, never a silent no-op.
const APP_ONLY_BAN: &str = "this daemon runs in app-only mode (no --iface): there is no interface to ban on; the application layer bans at L7 by itself (escalation); run shield with --iface for manual bans";

impl Owner {
    /// Ban, unban and the ban list: the owner's maps, at once.
    pub(super) fn maps_request(&mut self, req: Request) -> Result<Reply, String> {
        self.intact()?;
        match req {
            Request::Bans {} => {
                let mut bans = Vec::new();
                for inst in &self.instances {
                    for mut b in inst.bans.active() {
                        b.iface = inst.iface.clone();
                        b.origin_host = Some(self.origin_host_of(&b));
                        bans.push(b);
                    }
                }
                Ok(Reply::Bans(BanList { bans }))
            }
            Request::Ban {
                source,
                duration,
                rule,
                reason,
                force,
            } => self.ban(
                &source,
                &duration,
                rule.as_deref(),
                reason.as_deref(),
                force,
            ),
            other => Err(format!("internal: {other:?} is not a maps request")),
        }
    }

    /// `shield unban`: lifts the bans of exactly `source` on every interface and the app
    /// layer's L7 bans inside it. Answered once the app task said how many clients it
    /// freed (in a task of its own: the owner never waits for the app task).
    pub(super) fn unban(&mut self, source: &str, answer: Answer) {
        let lifted = self.intact().and_then(|()| self.unban_maps(source));
        let (removed, cidr) = match lifted {
            Ok(r) => r,
            Err(e) => {
                let _ = answer.send(Err(e));
                return;
            }
        };
        self.issued_unban(&cidr.to_string());
        let Some(tx) = &self.app_unban else {
            let _ = answer.send(Ok(Reply::Unbanned(Unbanned {
                removed,
                l7_freed: None,
            })));
            return;
        };
        let (freed_tx, freed) = oneshot::channel();
        let _ = tx.send(crate::daemon::app::AppUnban {
            cidr,
            before_ms: None,
            freed: Some(freed_tx),
        });
        tokio::spawn(async move {
            // The app task answers at once (a lock and a sweep of its table); a reply
            // without the count rather than none if it has stopped.
            let l7_freed = tokio::time::timeout(APP_UNBAN_PATIENCE, freed)
                .await
                .ok()
                .and_then(Result::ok);
            let _ = answer.send(Ok(Reply::Unbanned(Unbanned { removed, l7_freed })));
        });
    }

    /// The NIC's part of `unban`: the bans lifted (each with its audit line).
    fn unban_maps(&mut self, source: &str) -> Result<(Vec<BanEntry>, Cidr), String> {
        let cidr = parse_cidr(source).map_err(|e| format!("source \"{source}\": {e}"))?;
        let mut removed = Vec::new();
        for inst in &mut self.instances {
            for mut b in inst.bans.unban(cidr).map_err(|e| e.to_string())? {
                b.iface = inst.iface.clone();
                self.audit
                    .write(ban_json("unban", &inst.iface, &b, b.comment.as_ref()));
                removed.push(b);
            }
        }
        Ok((removed, cidr))
    }

    pub(super) fn ban(
        &mut self,
        source: &str,
        duration: &str,
        rule: Option<&str>,
        reason: Option<&str>,
        force: bool,
    ) -> Result<Reply, String> {
        if self.instances.is_empty() {
            // App-only mode: no NIC; a ban that reported success would protect nothing.
            return Err(APP_ONLY_BAN.into());
        }
        let cidr = parse_cidr(source).map_err(|e| format!("source \"{source}\": {e}"))?;
        let dur = parse_duration(duration).map_err(|e| format!("duration \"{duration}\": {e}"))?;
        let max = Duration::from_nanos(shield_common::judge::MAX_BAN_NS);
        if dur < Duration::from_secs(1) || dur > max {
            // Named as typed: "0s" must not come back as "0ms".
            return Err(format!(
                "duration \"{duration}\": must be between 1s and {}",
                format_duration(max)
            ));
        }
        if reason.is_some_and(|r| r.chars().any(crate::bans::unprintable)) {
            return Err(
                "reason must be printable text (no control characters or line breaks)".into(),
            );
        }
        if reason.is_some_and(|r| r.len() > shield_common::BAN_NOTE_MAX) {
            return Err(format!(
                "reason is longer than {} bytes",
                shield_common::BAN_NOTE_MAX
            ));
        }
        let floor = BanFloor {
            ipv4: self.policy.min_ban_ipv4_prefix,
            ipv6: self.policy.min_ban_ipv6_prefix,
        };
        let warnings = check_manual_ban(&cidr, &self.policy.allow, floor, force)?;
        let mut bans = Vec::new();
        let mut issued = Vec::new();
        let mut inst_first = true;
        for inst in &mut self.instances {
            let outcome = inst
                .bans
                .ban(cidr, dur, rule, reason)
                .map_err(|e| e.to_string())?;
            let mut b = outcome.entry;
            b.iface = inst.iface.clone();
            let mut line = ban_json("ban", &inst.iface, &b, b.comment.as_ref());
            line["reason"] = "manual".into();
            line["expires"] =
                rfc3339(SystemTime::now() + Duration::from_secs_f64(b.remaining_secs)).into();
            if outcome.kept_longer {
                line["event"] = "ban_kept".into();
                line["requested_secs"] = dur.as_secs_f64().into();
            }
            self.audit.write(line);
            if inst_first {
                issued.push(b.clone());
                inst_first = false;
            }
            bans.push(BanResult {
                ban: b,
                kept_longer: outcome.kept_longer,
            });
        }
        for b in &issued {
            self.issued_ban(b);
        }
        Ok(Reply::Banned(Banned { bans, warnings }))
    }

    /// What the app task reports: audit lines, and bans for the data path.
    pub(super) fn app_effect(&mut self, e: crate::app::Effect) {
        use crate::app::Effect;
        match e {
            Effect::Limited {
                kind,
                name,
                client,
                retry_after,
            } => self.audit.write(json!({
                "event": "app_limited", "origin": "app", kind.as_str(): name,
                "client": client.to_string(), "retry_after": retry_after,
            })),
            Effect::BanSkipped {
                kind,
                name,
                client,
                why,
            } => {
                warn!("{} `{name}`: no ban on {client}: {why}", kind.as_str());
                self.audit.write(json!({
                    "event": "app_ban_skipped", "origin": "app", kind.as_str(): name,
                    "client": client.to_string(), "why": why,
                }));
            }
            Effect::Ban(b) => self.app_ban(b),
        }
    }

    /// An app ban: the audit line, and for a direct client a host ban on every interface
    /// (never shorter than one in force).
    pub(super) fn app_ban(&mut self, b: crate::app::AppBan) {
        let mut line = json!({
            "event": "app_ban", "origin": "app", b.kind.as_str(): b.name,
            "source": b.source.to_string(), "ban_secs": b.duration.as_secs_f64(),
            "level": b.level, "enforced": if b.xdp { "xdp" } else { "l7" },
            "scope": if b.endpoint.is_some() { "rule" } else { "host" },
            "expires": rfc3339(SystemTime::now() + b.duration),
        });
        if !b.xdp {
            self.audit.write(line);
            return;
        }
        let mut ifaces = Vec::new();
        let mut issued = None;
        for inst in &mut self.instances {
            match inst.bans.ban_as(
                b.source,
                b.duration,
                None,
                Some(&b.reason),
                crate::bans::Origin::App,
            ) {
                Ok(o) => {
                    ifaces.push(json!({"iface": inst.iface, "kept_longer": o.kept_longer}));
                    if issued.is_none() {
                        let mut e = o.entry;
                        e.iface = inst.iface.clone();
                        issued = Some(e);
                    }
                }
                Err(e) => warn!(iface = %inst.iface, "app ban on {}: {e}", b.source),
            }
        }
        line["ifaces"] = ifaces.into();
        self.audit.write(line);
        // Published to the fleet (and saved in --state-dir) like any ban this host issues.
        if let Some(e) = issued {
            self.issued_ban(&e);
        }
    }
}
