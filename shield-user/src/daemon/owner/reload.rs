//! The owner's reloads: one at a time, in a blocking task that borrows the policy tables
//! (parse, check, compile, install on every interface), then the new policy taken into the
//! owner, with its audit line and answers. Bans are served meanwhile: the ban tables stay
//! with the owner.

use std::{
    collections::{HashMap, VecDeque},
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use serde_json::json;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::{Answer, JobOut, Owner, join_error};
use crate::{
    control::{Reply, Request},
    daemon::{
        InstallDone, Instance, Tables, app, drop_stale_bans, ids_of, install_all, reloaded,
        stale_bans_ended,
    },
    policy,
};

impl Owner {
    /// Starts a reload of the policy file in a blocking task that borrows the policy tables. One at
    /// a time: a reload asked for meanwhile runs after it.
    pub(super) fn reload(
        &mut self,
        trigger: &'static str,
        answer: Option<Answer>,
        job: &mut Option<JoinHandle<JobOut>>,
    ) {
        if job.is_some() {
            match answer {
                Some(a) => self.waiting.push_back((Request::Reload {}, a)),
                None => self.reload_again = Some(trigger),
            }
            return;
        }
        if let Err(e) = self.intact() {
            self.reload_failed(trigger, &e);
            if let Some(a) = answer {
                let _ = a.send(Err(e));
            }
            return;
        }
        let maps: Vec<_> = self
            .instances
            .iter_mut()
            .filter_map(Instance::lend)
            .collect();
        let path = self.path.clone();
        let ids = self.ids.clone();
        let generation = self.generation;
        let max_sources = self.policy.max_sources;
        let fleet = self.policy.fleet.clone();
        let app = self.policy.app.clone();
        // Every reload request already waiting gets this reload's answer: they would read
        // the same file (a ban queued behind them is served sooner).
        let mut answers: Vec<Answer> = answer.into_iter().collect();
        let mut rest = VecDeque::new();
        for (req, a) in self.waiting.drain(..) {
            match req {
                Request::Reload {} => answers.push(a),
                other => rest.push_back((other, a)),
            }
        }
        self.waiting = rest;
        self.reload_of = Some((trigger, answers));
        *job = Some(tokio::task::spawn_blocking(move || {
            let mut maps = maps;
            let result = reload_job(&path, &mut maps, &ids, generation, max_sources, fleet, app);
            JobOut { maps, result }
        }));
    }

    /// A reload's reply with the application layer's part (`[app]` in the policy in force).
    pub(super) fn with_app(&self, reply: Reply) -> Reply {
        match reply {
            Reply::Reloaded(reloaded) if self.policy.app.is_some() => {
                Reply::ReloadedApp(crate::control::ReloadReply {
                    reloaded,
                    app: Some(crate::control::AppReloaded {
                        endpoints: self.policy.endpoints.len(),
                        signals: self.policy.signals.len(),
                        app_only: self.instances.is_empty(),
                    }),
                })
            }
            other => other,
        }
    }

    pub(super) fn finish_reload(&mut self, out: Result<JobOut, tokio::task::JoinError>) {
        let out = out.unwrap_or_else(join_error);
        let mut back = out.maps.into_iter();
        for inst in &mut self.instances {
            if inst.tables.is_none() {
                inst.tables = back.next().map(|t| t.maps);
            }
        }
        let (trigger, answers) = self
            .reload_of
            .take()
            .unwrap_or(("control socket", Vec::new()));
        let reply = match out.result {
            Ok((policy, mut done, took, generation)) => {
                // The bans the new policy leaves stale: here, where the ban tables are
                // (bans were served during the reload).
                done.bans_dropped = drop_stale_bans(
                    self.instances.iter_mut().filter_map(Instance::with_bans),
                    &self.ids,
                );
                stale_bans_ended(&mut self.audit, &done.bans_dropped);
                // The install may have dropped bans (`drop_stale_bans`): saved as any change.
                self.state_dirty = true;
                let summary = reloaded(&policy, generation, &done, took);
                self.ids = ids_of(&policy, &self.ids);
                self.generation = generation;
                self.matrix = policy::matrix_table(&policy);
                if let Some(tx) = &self.app_policy {
                    let mut p = crate::app::AppPolicy::new(&policy, generation);
                    p.has_xdp = !self.instances.is_empty();
                    let _ = tx.send(p);
                }
                self.policy = policy;
                for inst in &mut self.instances {
                    inst.refresh_names();
                }
                self.counters.reloads_ok.fetch_add(1, Ordering::Relaxed);
                self.counters
                    .last_reload_us
                    .store(took.as_micros() as u64, Ordering::Relaxed);
                let mut line = json!({"event": "reload", "trigger": trigger, "policy": self.path.display().to_string(), "result": "ok"});
                if let (Some(l), Ok(serde_json::Value::Object(s))) =
                    (line.as_object_mut(), serde_json::to_value(&summary))
                {
                    l.extend(s);
                }
                self.audit.write(line);
                info!(
                    "reloaded {} ({trigger}): generation {}, {:.1} ms",
                    self.path.display(),
                    summary.generation,
                    summary.took_ms
                );
                if let Some(link) = &self.fleet {
                    link.check_key(self.policy.fleet.as_ref());
                }
                // With the application layer's part (an app-only daemon reloads no rule).
                Ok(self.with_app(Reply::Reloaded(summary)))
            }
            Err(e) => {
                self.reload_failed(trigger, &e);
                Err(e)
            }
        };
        for a in answers {
            let _ = a.send(reply.clone());
        }
    }

    pub(super) fn reload_failed(&mut self, trigger: &str, e: &str) {
        self.counters.reloads_error.fetch_add(1, Ordering::Relaxed);
        self.audit.write(json!({
            "event": "reload", "trigger": trigger, "policy": self.path.display().to_string(),
            "result": "error", "error": e,
        }));
        if self.lost.is_empty() {
            warn!("reload ({trigger}) rejected, previous policy stays in force: {e}");
        } else {
            // Nothing is in force where the program was lost: do not say it stays.
            warn!("reload ({trigger}) refused: {e}");
        }
    }
}

/// The reload itself, off the run loop: parse, check, compile, install on every interface.
fn reload_job(
    path: &std::path::Path,
    maps: &mut [Tables],
    ids: &HashMap<String, u32>,
    generation: u32,
    max_sources: u32,
    fleet: Option<policy::Fleet>,
    app: Option<policy::AppConfig>,
) -> Result<(policy::Policy, InstallDone, Duration, u32), String> {
    let started = Instant::now();
    let policy = policy::load(path).map_err(|e| e.to_string())?;
    for w in policy::warnings(&policy) {
        warn!("{}: {w}", path.display());
    }
    if generation > 0 && policy.max_sources != max_sources {
        return Err(format!(
            "max_sources changed ({max_sources} -> {}): it sizes the per-source table in the kernel; restart shield to apply it",
            policy.max_sources
        ));
    }
    if generation > 0 && policy.fleet != fleet {
        return Err(
            "[fleet] changed: the link to Redis is set up at start; restart shield to apply it"
                .into(),
        );
    }
    if let Some(why) = app::needs_restart(app.as_ref(), policy.app.as_ref()) {
        return Err(format!(
            "{why}: the app socket is bound at start; restart shield to apply it"
        ));
    }
    let compiled = policy::compile_with_ids(&policy, ids);
    let generation = generation.wrapping_add(1).max(1);
    let done = install_all(maps, &policy, &compiled, generation)?;
    Ok((policy, done, started.elapsed(), generation))
}
