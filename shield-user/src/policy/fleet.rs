//! `[fleet]`: bans shared with the other hosts of the API through Redis.

use std::{ops::Range, path::PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::{
    PolicyError,
    value::{Shape, Shaped, Typed},
};

/// Bounds of `max_bans_per_minute`.
pub const MAX_BANS_PER_MINUTE: i64 = 1_000_000;

/// The default `max_bans`: three quarters of the ban table, so a quarter (16,384 entries)
/// always stays for this host's own bans (manual, automatic, application layer).
pub const DEFAULT_MAX_BANS: u32 = shield_common::MAX_BANS / 4 * 3;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fleet {
    /// `redis://` or `rediss://` (TLS) URL; the password from it or `SHIELD_REDIS_PASSWORD`.
    pub redis: String,
    /// This host's name in the fleet.
    pub host: String,
    /// Key and stream prefix.
    pub prefix: String,
    /// HMAC key file: messages without a valid signature are refused.
    pub key_file: Option<PathBuf>,
    /// Circuit breaker for bans received from the fleet.
    pub max_bans_per_minute: u32,
    /// How many received bans this host holds at once; the rest of its ban table stays
    /// for its own bans.
    pub max_bans: u32,
}

type F<T> = Spanned<Typed<T>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFleet {
    redis: F<String>,
    host: Option<F<String>>,
    prefix: Option<F<String>>,
    key_file: Option<F<String>>,
    max_bans_per_minute: Option<F<i64>>,
    max_bans: Option<F<i64>>,
}

impl Shaped for RawFleet {
    const SHAPE: Shape = Shape::Table;
}

type Err<'a> = &'a dyn Fn(Range<usize>, String) -> PolicyError;

fn get<'a, T>(err: Err, f: &'a F<T>, key: &str, expected: &str) -> Result<&'a T, PolicyError> {
    match f.get_ref() {
        Typed::Ok(v) => Ok(v),
        Typed::Wrong(found) => Err(err(
            f.span(),
            format!("fleet.{key} must be {expected}, got {found}"),
        )),
    }
}

/// A whole number from 1 to `most` (`note` after the bound in the error), else `default`.
fn count(
    err: Err,
    f: &Option<F<i64>>,
    key: &str,
    most: i64,
    note: &str,
    default: u32,
) -> Result<u32, PolicyError> {
    let Some(f) = f else {
        return Ok(default);
    };
    let v = *get(err, f, key, "a whole number")?;
    if !(1..=most).contains(&v) {
        return Err(err(
            f.span(),
            format!("fleet.{key} must be between 1 and {most}{note}, got {v}"),
        ));
    }
    Ok(v as u32)
}

/// This machine's host name (the default `host`).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

fn name_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

pub(super) fn parse(err: Err, raw: &RawFleet) -> Result<Fleet, PolicyError> {
    const TEXT: &str = "text in quotes";
    let redis = get(err, &raw.redis, "redis", TEXT)?;
    let scheme_ok = redis.starts_with("redis://") || redis.starts_with("rediss://");
    if !scheme_ok {
        return Err(err(
            raw.redis.span(),
            format!(
                "fleet.redis must be a redis:// or rediss:// (TLS) URL, got {:?}",
                crate::fleet::redact_url(redis)
            ),
        ));
    }
    if let Err(e) = redis::parse_redis_url(redis)
        .ok_or("not a URL")
        .and_then(|u| {
            redis::IntoConnectionInfo::into_connection_info(u)
                .map(|_| ())
                .map_err(|_| "not a Redis URL (redis://[:PASSWORD@]HOST[:PORT][/DB])")
        })
    {
        return Err(err(
            raw.redis.span(),
            format!("fleet.redis {:?}: {e}", crate::fleet::redact_url(redis)),
        ));
    }
    let host = match &raw.host {
        Some(h) => {
            let v = get(err, h, "host", TEXT)?;
            if !name_ok(v) {
                return Err(err(
                    h.span(),
                    format!("fleet.host must be 1-64 letters, digits, `-`, `_` or `.`, got {v:?}"),
                ));
            }
            v.clone()
        }
        None => hostname(),
    };
    let prefix = match &raw.prefix {
        Some(p) => {
            let v = get(err, p, "prefix", TEXT)?;
            if !name_ok(v) {
                return Err(err(
                    p.span(),
                    format!(
                        "fleet.prefix must be 1-64 letters, digits, `-`, `_` or `.`, got {v:?}"
                    ),
                ));
            }
            v.clone()
        }
        None => "shield".into(),
    };
    let key_file = match &raw.key_file {
        Some(k) => {
            let v = get(err, k, "key_file", TEXT)?;
            if v.is_empty() {
                return Err(err(k.span(), "fleet.key_file must be a path".into()));
            }
            Some(PathBuf::from(v))
        }
        None => None,
    };
    let max_bans_per_minute = count(
        err,
        &raw.max_bans_per_minute,
        "max_bans_per_minute",
        MAX_BANS_PER_MINUTE,
        "",
        600,
    )?;
    let max_bans = count(
        err,
        &raw.max_bans,
        "max_bans",
        i64::from(shield_common::MAX_BANS),
        " (the ban table's size)",
        DEFAULT_MAX_BANS,
    )?;
    Ok(Fleet {
        redis: redis.clone(),
        host,
        prefix,
        key_file,
        max_bans_per_minute,
        max_bans,
    })
}

/// `[fleet]` as `shield check` shows it (the password never).
pub fn describe(f: &Fleet) -> String {
    format!(
        "fleet: redis {}, host {}, prefix {}, {}, at most {} received bans a minute, at most {} held\n",
        crate::fleet::redact_url(&f.redis),
        f.host,
        f.prefix,
        match &f.key_file {
            Some(k) => format!("signed with {}", k.display()),
            None => "unsigned (no key_file)".into(),
        },
        f.max_bans_per_minute,
        f.max_bans
    )
}
