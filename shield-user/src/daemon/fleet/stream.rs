//! Where a reconnecting fleet session picks up the events stream: replay from the last id
//! read, resync from the hash after a trim, or resync and publish again after Redis lost
//! its data (`Position`), from what `XINFO STREAM` says.

use redis::{AsyncCommands as _, aio::MultiplexedConnection, streams::StreamRangeReply};

/// Where a reconnecting session picks up the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Position {
    /// The stream still holds every change after the last id read: replay them.
    Replay,
    /// Changes after the last id were trimmed away: read the hash again.
    Resync,
    /// Redis lost its data (the stream is gone, went back before the last id read, or was
    /// built again): read the hash again, and this host's own bans that the hash lost
    /// are published again (an unban trimmed away is told from this by `Resync`).
    Lost,
}

/// What `XINFO STREAM` says of the events stream (`None`: no such key).
#[derive(Debug, Default)]
pub(super) struct StreamFacts {
    first: Option<String>,
    /// `None`: not known (XINFO refused).
    last_generated: Option<String>,
    /// Whether no entry ever left the stream (`entries-added` equals `length`: Redis 7.0
    /// on; `false` when not known, then a rebuilt stream is taken for a trimmed one). A
    /// trim does not move `max-deleted-entry-id` (Redis 7.0 leaves it at 0-0), so that
    /// cannot tell a trimmed stream from a rebuilt one.
    whole: bool,
}

pub(super) async fn stream_facts(
    con: &mut MultiplexedConnection,
    events: &str,
) -> redis::RedisResult<Option<StreamFacts>> {
    let exists: bool = con.exists(events).await?;
    if !exists {
        return Ok(None);
    }
    let info: redis::RedisResult<std::collections::HashMap<String, redis::Value>> =
        redis::cmd("XINFO")
            .arg("STREAM")
            .arg(events)
            .query_async(&mut *con)
            .await;
    let info = match info {
        Ok(i) => i,
        Err(e) if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() => {
            return Err(e);
        }
        // XINFO refused (an ACL without it): the stream's ends, and a rebuilt stream taken
        // for a trimmed one, as before Redis 7.0.
        Err(_) => {
            let first: StreamRangeReply = con.xrange_count(events, "-", "+", 1).await?;
            return Ok(Some(StreamFacts {
                first: first.ids.first().map(|i| i.id.clone()),
                ..StreamFacts::default()
            }));
        }
    };
    let text = |k: &str| {
        info.get(k)
            .and_then(|v| redis::from_redis_value::<String>(v).ok())
    };
    // `first-entry`: [id, [field, value, …]], or nil for an empty stream.
    let first = info
        .get("first-entry")
        .and_then(|v| redis::from_redis_value::<(String, redis::Value)>(v).ok())
        .map(|(id, _)| id);
    let count = |k: &str| {
        info.get(k)
            .and_then(|v| redis::from_redis_value::<u64>(v).ok())
    };
    let whole = matches!(
        (count("entries-added"), count("length")),
        (Some(added), Some(len)) if added == len
    ) && text("max-deleted-entry-id").is_some_and(|d| id_key(&d) == (0, 0));
    Ok(Some(StreamFacts {
        first,
        last_generated: text("last-generated-id"),
        whole,
    }))
}

/// Where to pick up after `known`, the last stream id this host read (or the stream's
/// last id when it last read the hash; `0-0`: it was empty then).
pub(super) fn position(known: &str, facts: &Option<StreamFacts>) -> Position {
    let k = id_key(known);
    let Some(f) = facts else {
        // No stream: gone with Redis's data, unless it never had an entry.
        return if k == (0, 0) {
            Position::Resync
        } else {
            Position::Lost
        };
    };
    if k != (0, 0) && f.last_generated.as_deref().is_some_and(|l| id_key(l) < k) {
        // Redis went back before what this host read (an old snapshot loaded).
        return Position::Lost;
    }
    match &f.first {
        Some(first) if id_key(first) <= k => Position::Replay,
        // Our entry is gone, yet no entry ever left this stream: it was built again.
        Some(_) if k != (0, 0) && f.whole => Position::Lost,
        // Trimmed past us, or emptied (nothing was trimmed unless the key was deleted).
        _ => Position::Resync,
    }
}

/// `(ms, seq)` of a stream id.
pub(super) fn id_key(id: &str) -> (u64, u64) {
    let (a, b) = id.split_once('-').unwrap_or((id, "0"));
    (a.parse().unwrap_or(0), b.parse().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(first: Option<&str>, last: &str, whole: bool) -> Option<StreamFacts> {
        Some(StreamFacts {
            first: first.map(str::to_string),
            last_generated: Some(last.into()),
            whole,
        })
    }

    /// A reconnect replays what it can, resyncs past a trim, and takes a stream that lost
    /// what this host read for lost data (its own bans are then published again); never
    /// the other way round: an unban trimmed away must not come back as a ban.
    #[test]
    fn a_reconnect_tells_a_trimmed_stream_from_a_lost_one() {
        use Position::*;
        let held = facts(Some("100-0"), "900-3", true);
        assert_eq!(
            position("500-1", &held),
            Replay,
            "the stream holds what followed"
        );
        assert_eq!(position("100-0", &held), Replay);
        // A trim leaves max-deleted-entry-id at 0-0: only entries-added > length tells.
        let trimmed = facts(Some("600-0"), "900-3", false);
        assert_eq!(position("500-1", &trimmed), Resync, "trimmed past us");
        let emptied = facts(None, "900-3", false);
        assert_eq!(position("500-1", &emptied), Resync, "emptied by trims");
        assert_eq!(position("500-1", &None), Lost, "the stream is gone");
        assert_eq!(position("0-0", &None), Resync, "it never had an entry");
        let rebuilt = facts(Some("700-0"), "800-0", true);
        assert_eq!(
            position("500-1", &rebuilt),
            Lost,
            "built again after a restart"
        );
        let older = facts(Some("100-0"), "400-0", false);
        assert_eq!(position("500-1", &older), Lost, "an older snapshot loaded");
        assert_eq!(
            position("0-0", &rebuilt),
            Resync,
            "read empty: nothing to lose"
        );
        let refused = Some(StreamFacts {
            first: Some("700-0".into()),
            ..StreamFacts::default()
        });
        assert_eq!(position("500-1", &refused), Resync, "XINFO refused");
    }
}
