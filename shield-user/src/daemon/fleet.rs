//! The fleet task: publishes the bans and unbans this host issues to Redis, and hands the
//! owner those of the other hosts (see `crate::fleet` for the layout). One session per
//! connection: resync (or replay from the last stream id), publish what waited, then read
//! the stream while publishing; any Redis error ends the session, the link is reported
//! down, and the next session starts after a short backoff. Local enforcement never waits
//! on it.

use std::{
    collections::{HashSet, VecDeque},
    sync::{Arc, Mutex, atomic::Ordering},
    time::Duration,
};

use redis::{
    AsyncCommands as _, AsyncConnectionConfig, Script,
    aio::MultiplexedConnection,
    streams::{StreamRangeReply, StreamReadOptions, StreamReadReply},
};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn};

use super::owner::Msg;
use stream::{Position, id_key, position, stream_facts};

mod stream;
use crate::{
    fleet::{Message, Op, Refusal, STREAM_MAXLEN, Signer, fields_of, now_ms},
    metrics::DaemonCounters,
    policy::Fleet,
};

/// The most changes published in one round trip.
const BATCH: usize = 512;

/// The most changes kept while the link is down (older ones are dropped with a warning).
const QUEUE_MAX: usize = 100_000;

/// What the fleet task tells the owner.
pub(super) enum Inbound {
    /// A change published by another host (from the stream).
    Change(Message),
    /// Every active ban in the fleet (after a reconnect whose stream position was trimmed
    /// away): install them, and lift fleet bans that are no longer there.
    Resync(Snapshot),
    /// The link went up or down.
    Link(bool),
}

/// Appends the change to the stream, and sets the ban in the hash unless one on the same
/// field ends later. The stream gets it either way (receivers never shorten a ban they
/// hold): a value on that field that only looks later (written by whoever has Redis's
/// password but not the fleet key, or signed with a key since rotated) kept every later
/// ban of the source from reaching the other hosts. KEYS: bans, events. ARGV: field,
/// expires_ms, sig, message, maxlen.
const BAN_LUA: &str = r"
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', 'm', ARGV[4], 'sig', ARGV[3])
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old then
  local e = tonumber(string.match(old, '^(%d+)'))
  if e and e > tonumber(ARGV[2]) then return 0 end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. '|' .. ARGV[3] .. '|' .. ARGV[4])
return 1
";

/// Removes every field of a source and appends the unban to the stream. KEYS: bans,
/// events. ARGV: match pattern, message, sig, maxlen.
const UNBAN_LUA: &str = r"
local n = 0
local cur = '0'
repeat
  local r = redis.call('HSCAN', KEYS[1], cur, 'MATCH', ARGV[1], 'COUNT', 1000)
  cur = r[1]
  for i = 1, #r[2], 2 do
    redis.call('HDEL', KEYS[1], r[2][i])
    n = n + 1
  end
until cur == '0'
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'm', ARGV[2], 'sig', ARGV[3])
return n
";

/// Removes expired fields. KEYS: bans. ARGV: now (unix ms).
const SWEEP_LUA: &str = r"
local now = tonumber(ARGV[1])
local n = 0
local cur = '0'
repeat
  local r = redis.call('HSCAN', KEYS[1], cur, 'COUNT', 1000)
  cur = r[1]
  for i = 1, #r[2], 2 do
    local e = tonumber(string.match(r[2][i + 1], '^(%d+)'))
    if e and e <= now then
      redis.call('HDEL', KEYS[1], r[2][i])
      n = n + 1
    end
  end
until cur == '0'
return n
";

/// The fleet's hash as a session read it.
pub(super) struct Snapshot {
    /// Its active bans (signatures checked).
    pub bans: Vec<Message>,
    /// The fields whose value this host could not read (refused: a key that differs from
    /// the fleet's, a forged or damaged value). They are still in the hash: a fleet ban
    /// this host holds of one of them has not left the fleet, and is not lifted.
    pub unreadable: HashSet<String>,
    /// Redis lost the stream this host had read (restarted without its data): the bans
    /// this host issued that the hash lost are published again (`Position::Lost`).
    pub lost: bool,
    /// When `lost`: the unbans other hosts published to the stream Redis began again
    /// (after the last id this host read), oldest first. They are applied here before this
    /// host's bans are published again: a ban unbanned elsewhere while this host's link
    /// was down must not come back.
    pub unbans: Vec<Message>,
    /// When `lost`: when the last stream entry this host read was added (unix ms). A ban
    /// of the hash issued before it reached this host then: if it does not hold it, the
    /// ban was unbanned (or refused) here, and an older snapshot of Redis brought it back.
    pub read_ms: u64,
    /// The fields of the bans this host issued while the link was down, waiting in the
    /// queue: the session publishes them right after this snapshot, so they are not
    /// published again as bans the hash lost (they were, twice).
    pub queued: HashSet<String>,
}

pub(super) struct Task {
    pub cfg: Fleet,
    pub signer: Signer,
    pub counters: Arc<DaemonCounters>,
    pub owner: mpsc::Sender<Msg>,
    pub out: mpsc::Receiver<Message>,
    /// The first session's snapshot of the fleet's bans (dropped if the first connect fails).
    pub ready: Option<oneshot::Sender<Snapshot>>,
    pub stop: watch::Receiver<bool>,
}

/// The Redis URL with `SHIELD_REDIS_PASSWORD` applied when the URL has no password.
fn client(cfg: &Fleet) -> redis::RedisResult<redis::Client> {
    let mut info = redis::IntoConnectionInfo::into_connection_info(cfg.redis.as_str())?;
    if info.redis.password.is_none()
        && let Ok(p) = std::env::var("SHIELD_REDIS_PASSWORD")
        && !p.is_empty()
    {
        info.redis.password = Some(p);
    }
    redis::Client::open(info)
}

impl Task {
    pub(super) async fn run(mut self) {
        // rediss:// (TLS) uses rustls with the ring provider (the process's default).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut queue: VecDeque<Message> = VecDeque::new();
        let last_id: Mutex<Option<String>> = Mutex::new(None);
        let mut backoff = Duration::from_millis(200);
        let mut was_up = None;
        loop {
            if *self.stop.borrow() {
                return;
            }
            let result = self.session(&mut queue, &last_id, &mut was_up).await;
            if *self.stop.borrow() {
                return;
            }
            if let Err(e) = result {
                // The first start goes on without the fleet.
                self.ready.take();
                if was_up != Some(false) {
                    warn!(
                        "fleet: the link to {} is down ({e}); local enforcement goes on, changes are queued and published on reconnect",
                        crate::fleet::redact_url(&self.cfg.redis)
                    );
                    self.counters
                        .fleet
                        .connected
                        .store(false, Ordering::Relaxed);
                    let _ = self.owner.send(Msg::Fleet(Inbound::Link(false))).await;
                    was_up = Some(false);
                }
            }
            // Wait, keeping what the owner issues meanwhile.
            let sleep = tokio::time::sleep(backoff);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    () = &mut sleep => break,
                    m = self.out.recv() => match m {
                        Some(m) => self.enqueue(&mut queue, m),
                        None => return,
                    },
                    _ = self.stop.changed() => return,
                }
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    fn enqueue(&self, queue: &mut VecDeque<Message>, m: Message) {
        if queue.len() >= QUEUE_MAX {
            queue.pop_front();
            warn!(
                "fleet: more than {QUEUE_MAX} changes waiting for the link; the oldest is dropped"
            );
        }
        queue.push_back(m);
        self.counters
            .fleet
            .queued
            .store(queue.len() as u64, Ordering::Relaxed);
    }

    fn keys(&self) -> (String, String) {
        (
            format!("{}:bans", self.cfg.prefix),
            format!("{}:events", self.cfg.prefix),
        )
    }

    async fn connect(&self) -> redis::RedisResult<(MultiplexedConnection, MultiplexedConnection)> {
        let c = client(&self.cfg)?;
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(Duration::from_secs(2))
            .set_response_timeout(Duration::from_secs(3));
        let w = c.get_multiplexed_async_connection_with_config(&cfg).await?;
        let r = c.get_multiplexed_async_connection_with_config(&cfg).await?;
        Ok((w, r))
    }

    /// Every unexpired ban in the hash (signatures checked), the fields refused, and the
    /// stream's last id read before it (changes after that id are replayed: applying one
    /// twice changes nothing).
    async fn snapshot(
        &self,
        con: &mut MultiplexedConnection,
    ) -> redis::RedisResult<(Snapshot, String)> {
        let (bans, events) = self.keys();
        let tail: StreamRangeReply = con.xrevrange_count(&events, "+", "-", 1).await?;
        let tail = tail.ids.first().map_or("0-0".to_string(), |i| i.id.clone());
        let all: Vec<(String, String)> = con.hgetall(&bans).await?;
        let now = now_ms();
        let mut out = Snapshot {
            bans: Vec::new(),
            unreadable: HashSet::new(),
            lost: false,
            unbans: Vec::new(),
            read_ms: 0,
            queued: HashSet::new(),
        };
        for (field, value) in all {
            match self.signer.open_stored(&value) {
                Ok(m) if m.op == Op::Ban && m.remaining(now).is_some() => out.bans.push(m),
                Ok(_) => {}
                Err(e) => {
                    refused(&self.counters, &field, &e);
                    out.unreadable.insert(field);
                }
            }
        }
        Ok((out, tail))
    }

    /// The unbans of other hosts in the stream after `after` up to `to` (signatures
    /// checked), oldest first.
    async fn unbans_between(
        &self,
        con: &mut MultiplexedConnection,
        after: &str,
        to: &str,
    ) -> redis::RedisResult<Vec<Message>> {
        let (_, events) = self.keys();
        let mut out = Vec::new();
        let mut from = after.to_string();
        if id_key(to) <= id_key(&from) {
            return Ok(out);
        }
        loop {
            let page: StreamRangeReply = con
                .xrange_count(&events, format!("({from}"), to, 1000)
                .await?;
            let Some(last) = page.ids.last() else {
                return Ok(out);
            };
            from = last.id.clone();
            for entry in &page.ids {
                let text: String = entry.get("m").unwrap_or_default();
                let sig: String = entry.get("sig").unwrap_or_default();
                match self.signer.open(&text, &sig) {
                    Ok(m) if m.op == Op::Unban && m.origin_host != self.cfg.host => out.push(m),
                    Ok(_) => {}
                    Err(e) => refused(&self.counters, &format!("stream entry {}", entry.id), &e),
                }
            }
            if id_key(&from) >= id_key(to) {
                return Ok(out);
            }
        }
    }

    /// Publishes `batch` in one round trip (a pipeline of script calls, each atomic).
    async fn publish(
        &self,
        con: &mut MultiplexedConnection,
        batch: &[Message],
    ) -> redis::RedisResult<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let (bans, events) = self.keys();
        let (ban, unban) = (Script::new(BAN_LUA), Script::new(UNBAN_LUA));
        let mut pipe = redis::pipe();
        // Loaded first: the calls below run them by hash.
        pipe.load_script(&ban).ignore().load_script(&unban).ignore();
        for m in batch {
            let mut m = m.clone();
            // Issued when the owner saw it (the lag a receiver reports is end to end).
            if m.sent_ms == 0 {
                m.sent_ms = now_ms();
            }
            let (text, sig) = self.signer.seal(&m);
            match m.op {
                Op::Ban => {
                    pipe.invoke_script(
                        ban.key(&bans)
                            .key(&events)
                            .arg(m.field())
                            .arg(m.expires_ms)
                            .arg(&sig)
                            .arg(&text)
                            .arg(STREAM_MAXLEN),
                    )
                    .ignore();
                }
                Op::Unban => {
                    pipe.invoke_script(
                        unban
                            .key(&bans)
                            .key(&events)
                            .arg(fields_of(&m.source))
                            .arg(&text)
                            .arg(&sig)
                            .arg(STREAM_MAXLEN),
                    )
                    .ignore();
                }
            }
        }
        let () = pipe.query_async(con).await?;
        self.counters
            .fleet
            .published
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    async fn session(
        &mut self,
        queue: &mut VecDeque<Message>,
        last_id: &Mutex<Option<String>>,
        was_up: &mut Option<bool>,
    ) -> redis::RedisResult<()> {
        let (mut w, mut r) = self.connect().await?;
        let (_, events) = self.keys();
        let known = last_id.lock().map(|l| l.clone()).unwrap_or(None);
        // Replay from the last id if the stream still holds what followed it; else resync.
        let position = match &known {
            Some(id) => position(id, &stream_facts(&mut w, &events).await?),
            None => Position::Resync,
        };
        if position != Position::Replay {
            let (mut snap, tail) = self.snapshot(&mut w).await?;
            snap.lost = position == Position::Lost;
            if snap.lost {
                let after = known.as_deref().unwrap_or("0-0");
                snap.read_ms = id_key(after).0;
                snap.unbans = self.unbans_between(&mut w, after, &tail).await?;
                warn!(
                    "fleet: Redis no longer holds the stream this host read up to {} (restarted without its data?): resyncing, and publishing again the bans this host issued that the fleet's hash lost",
                    known.as_deref().unwrap_or("")
                );
            }
            // A source this host unbanned while the link was down stays unbanned here.
            snap.bans.retain(|b| {
                !queue
                    .iter()
                    .any(|q| q.op == Op::Unban && q.source == b.source)
            });
            snap.queued = queue
                .iter()
                .filter(|q| q.op == Op::Ban)
                .map(Message::field)
                .collect();
            if let Ok(mut l) = last_id.lock() {
                *l = Some(tail);
            }
            if let Some(snap) = hand_over(self.ready.take(), snap) {
                let _ = self.owner.send(Msg::Fleet(Inbound::Resync(snap))).await;
            }
        }
        // What this host issued while the link was down, in order.
        while !queue.is_empty() {
            let n = queue.len().min(BATCH);
            let batch: Vec<Message> = queue.iter().take(n).cloned().collect();
            self.publish(&mut w, &batch).await?;
            queue.drain(..n);
            self.counters
                .fleet
                .queued
                .store(queue.len() as u64, Ordering::Relaxed);
        }
        self.counters.fleet.connected.store(true, Ordering::Relaxed);
        if *was_up != Some(true) {
            info!(
                "fleet: linked to {} as host {} (prefix {})",
                crate::fleet::redact_url(&self.cfg.redis),
                self.cfg.host,
                self.cfg.prefix
            );
            let _ = self.owner.send(Msg::Fleet(Inbound::Link(true))).await;
            *was_up = Some(true);
        }

        let reader = read_stream(
            Reader {
                signer: self.signer.clone(),
                counters: self.counters.clone(),
                owner: self.owner.clone(),
                host: self.cfg.host.clone(),
                events: events.clone(),
            },
            &mut r,
            last_id,
        );
        tokio::pin!(reader);
        let mut sweep = tokio::time::interval(Duration::from_secs(60));
        let (bans_key, _) = self.keys();
        loop {
            tokio::select! {
                res = &mut reader => return res,
                m = self.out.recv() => match m {
                    Some(m) => {
                        // Everything issued meanwhile goes in the same round trip.
                        let mut batch = vec![m];
                        while batch.len() < BATCH {
                            match self.out.try_recv() {
                                Ok(m) => batch.push(m),
                                Err(_) => break,
                            }
                        }
                        if let Err(e) = self.publish(&mut w, &batch).await {
                            for m in batch.into_iter().rev() {
                                queue.push_front(m);
                            }
                            return Err(e);
                        }
                    }
                    None => return Ok(()),
                },
                _ = sweep.tick() => {
                    let _: i64 = Script::new(SWEEP_LUA)
                        .key(&bans_key)
                        .arg(now_ms())
                        .invoke_async(&mut w)
                        .await?;
                }
                _ = self.stop.changed() => return Ok(()),
            }
        }
    }
}

/// The first snapshot goes to the start-up, which waits for it before ready; it returns the
/// bans the owner must get as a resync instead: every later snapshot, and the first one
/// when the start-up stopped waiting (a slow Redis: the snapshot came after its 8 s; they
/// were dropped, and the fleet's bans never installed on this host until a resync).
fn hand_over(ready: Option<oneshot::Sender<Snapshot>>, snap: Snapshot) -> Option<Snapshot> {
    match ready {
        Some(ready) => ready.send(snap).err(),
        None => Some(snap),
    }
}

/// What the stream reader needs.
struct Reader {
    signer: Signer,
    counters: Arc<DaemonCounters>,
    owner: mpsc::Sender<Msg>,
    host: String,
    events: String,
}

/// Reads the stream from `last_id` until an error; hands other hosts' changes to the
/// owner.
async fn read_stream(
    rd: Reader,
    con: &mut MultiplexedConnection,
    last_id: &Mutex<Option<String>>,
) -> redis::RedisResult<()> {
    let events = &rd.events;
    let opts = StreamReadOptions::default().block(1000).count(1000);
    loop {
        let from = last_id
            .lock()
            .ok()
            .and_then(|l| l.clone())
            .unwrap_or_else(|| "$".into());
        let reply: Option<StreamReadReply> = con.xread_options(&[&events], &[&from], &opts).await?;
        let Some(reply) = reply else { continue };
        for key in reply.keys {
            for entry in key.ids {
                if let Ok(mut l) = last_id.lock() {
                    *l = Some(entry.id.clone());
                }
                let text: String = entry.get("m").unwrap_or_default();
                let sig: String = entry.get("sig").unwrap_or_default();
                match rd.signer.open(&text, &sig) {
                    // Our own change, back from the stream: already in force here.
                    Ok(m) if m.origin_host == rd.host => {}
                    Ok(m) => {
                        rd.counters.fleet.received.fetch_add(1, Ordering::Relaxed);
                        if rd.owner.send(Msg::Fleet(Inbound::Change(m))).await.is_err() {
                            return Ok(());
                        }
                    }
                    Err(e) => refused(&rd.counters, &format!("stream entry {}", entry.id), &e),
                }
            }
        }
    }
}

/// When a refusal was last logged, and how many were not logged since.
static REFUSED_LOGGED: Mutex<(Option<std::time::Instant>, u64)> = Mutex::new((None, 0));

/// Counts a refused message, logged at most once a minute: whoever has Redis's password
/// but not the key wrote one warning per forged stream entry into every host's log.
fn refused(counters: &DaemonCounters, what: &str, e: &Refusal) {
    let counter = match e {
        Refusal::BadSignature => &counters.fleet.refused_signature,
        Refusal::Malformed(_) => &counters.fleet.refused_malformed,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    let Ok(mut logged) = REFUSED_LOGGED.lock() else {
        return;
    };
    let (last, quiet) = &mut *logged;
    if last.is_some_and(|t| t.elapsed() < Duration::from_secs(60)) {
        *quiet += 1;
        return;
    }
    *last = Some(std::time::Instant::now());
    let more = std::mem::take(quiet);
    if more > 0 {
        warn!(
            "fleet: refused {what}: {e} ({more} more refused in the last minute, not logged; said once a minute; all are counted in shield_fleet_refused_total{{reason=\"bad_signature\"}} and {{reason=\"malformed\"}})"
        );
    } else {
        warn!("fleet: refused {what}: {e} (said once a minute)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ban(source: &str) -> Message {
        Message {
            op: Op::Ban,
            source: source.into(),
            scope: crate::policy::BanScope::Host,
            rule: String::new(),
            expires_ms: u64::MAX / 2,
            duration_secs: 60.0,
            level: 0,
            origin: "manual".into(),
            cuts: "everything".into(),
            origin_host: "h9".into(),
            reason: None,
            sent_ms: 1,
        }
    }

    fn snap(source: &str) -> Snapshot {
        Snapshot {
            bans: vec![ban(source)],
            unreadable: HashSet::new(),
            lost: false,
            unbans: Vec::new(),
            read_ms: 0,
            queued: HashSet::new(),
        }
    }

    #[test]
    fn a_snapshot_the_start_up_stopped_waiting_for_goes_to_the_owner_as_a_resync() {
        // The start-up waits: it gets the bans.
        let (tx, mut rx) = oneshot::channel();
        assert!(hand_over(Some(tx), snap("192.0.2.1/32")).is_none());
        assert_eq!(rx.try_recv().expect("sent").bans.len(), 1);
        // It stopped waiting (Redis answered after its timeout): never dropped.
        let (tx, rx) = oneshot::channel::<Snapshot>();
        drop(rx);
        let late = hand_over(Some(tx), snap("192.0.2.2/32"));
        assert_eq!(
            late.map(|s| s.bans[0].source.clone()),
            Some("192.0.2.2/32".to_string()),
            "a late first snapshot is installed through a resync"
        );
        // Later sessions: a resync.
        assert_eq!(
            hand_over(None, snap("192.0.2.3/32")).map(|s| s.bans.len()),
            Some(1)
        );
    }
}
