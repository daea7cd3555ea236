//! `[app]`, `[[endpoint]]` and `[[signal]]` → `AppConfig`, `Endpoint`, `Signal`.

use std::{collections::HashSet, path::PathBuf};

use serde::Deserialize;

use super::{
    Ctx, Field, LIMIT, RawEscalation, RawLimit, TEXT, Typed,
    lists::cidrs,
    rule::escalation,
    units::{limit, parse_duration},
};
use crate::policy::{
    BanScope, PolicyError,
    app::{AppConfig, DEFAULT_APP_SOCKET, Endpoint, KeyKind, OnError, Quota, Signal},
    value::{Found, Shape, Shaped, quote},
};
use shield_common::RULE_NAME_LEN;

/// The most `[[endpoint]]` and `[[signal]]` tables each.
pub const MAX_APP_TABLES: usize = 1024;
/// The largest `concurrency`.
const MAX_CONCURRENCY: i64 = 1_000_000;
/// The longest endpoint path.
const MAX_PATH: usize = 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApp {
    socket: Option<Field<String>>,
    group: Option<Field<String>>,
    trusted_proxies: Option<Field<Vec<Field<String>>>>,
    on_error: Option<Field<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEndpoint {
    name: Field<String>,
    methods: Option<Field<Vec<Field<String>>>>,
    path: Field<String>,
    key: Option<Field<String>>,
    limit: Field<RawLimit>,
    cost: Option<Field<i64>>,
    concurrency: Option<Field<i64>>,
    quota: Option<Field<RawQuota>>,
    escalation: Option<Field<RawEscalation>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSignal {
    name: Field<String>,
    key: Option<Field<String>>,
    limit: Field<RawLimit>,
    escalation: Option<Field<RawEscalation>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawQuota {
    limit: Field<i64>,
    per: Field<String>,
}

impl Shaped for RawQuota {
    const SHAPE: Shape = Shape::Table;
}

const QUOTA: &str = "a table like { limit = 10000, per = \"1d\" }";

/// `quota = { limit = N, per = "1d" }`: fixed windows aligned on UTC (a period that
/// divides a day, or whole days).
fn quota(cx: &Ctx, raw: &Field<RawQuota>, burst_cost: u64) -> Result<Quota, PolicyError> {
    let q = cx.get(raw, "quota", QUOTA)?;
    let q = q.get_ref();
    let l = cx.get(&q.limit, "quota limit", "a whole number")?;
    let limit = *l.get_ref();
    if !(1..=1_000_000_000_000).contains(&limit) {
        return Err(cx.err(
            l.span(),
            format!("quota limit must be between 1 and 1000000000000, got {limit}"),
        ));
    }
    if (limit as u64) < burst_cost {
        return Err(cx.err(
            l.span(),
            format!("quota limit {limit} is below the endpoint's cost {burst_cost}: no request could pass"),
        ));
    }
    let p = cx.get(&q.per, "quota per", "a duration like \"1h\" or \"1d\"")?;
    let secs = parse_duration(p.get_ref())
        .ok()
        .map(|d| d.as_secs())
        .filter(|s| *s >= 60 && *s <= 31 * 86_400 && (86_400 % *s == 0 || *s % 86_400 == 0));
    let Some(per_secs) = secs else {
        return Err(cx.err(
            p.span(),
            format!(
                "quota per must be a whole number of seconds from 1m to 31d that divides a day (\"1h\", \"15m\") or is whole days (\"1d\", \"7d\"), so windows start at UTC midnight; got {}",
                quote(p.get_ref())
            ),
        ));
    };
    Ok(Quota {
        limit: limit as u64,
        per_secs,
    })
}

impl Shaped for RawApp {
    const SHAPE: Shape = Shape::Table;
}
impl Shaped for RawEndpoint {
    const SHAPE: Shape = Shape::Table;
}
impl Shaped for RawSignal {
    const SHAPE: Shape = Shape::Table;
}

pub(super) fn app(cx: &Ctx, raw: &Field<RawApp>) -> Result<AppConfig, PolicyError> {
    let a = cx.table(raw, "app")?.value;
    let socket = match &a.socket {
        Some(s) => {
            let s = cx.get(
                s,
                "socket",
                "a path in quotes, like \"/run/shield/app.sock\"",
            )?;
            let p = s.get_ref();
            if !p.starts_with('/') || p.contains('\0') || p.len() > 107 {
                return Err(cx.err(
                    s.span(),
                    format!(
                        "socket must be an absolute path of at most 107 bytes (a Unix socket address), got {}",
                        quote(p)
                    ),
                ));
            }
            PathBuf::from(p)
        }
        None => PathBuf::from(DEFAULT_APP_SOCKET),
    };
    let group = match &a.group {
        Some(g) => {
            let g = cx.get(g, "group", "a group name in quotes, like \"www-data\"")?;
            let name = g.get_ref();
            let valid = !name.is_empty()
                && name.len() <= 32
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
            if !valid {
                return Err(cx.err(
                    g.span(),
                    format!(
                        "group must be a group name (letters, digits, `_`, `-`, `.`), got {}",
                        quote(name)
                    ),
                ));
            }
            Some(name.clone())
        }
        None => None,
    };
    let trusted_proxies = cidrs(cx, a.trusted_proxies.as_ref(), "trusted_proxies")?;
    const ON_ERROR: &str = "\"open\" (allow) or \"closed\" (503)";
    let on_error = match &a.on_error {
        Some(o) => {
            let o = cx.get(o, "on_error", ON_ERROR)?;
            match o.get_ref().as_str() {
                "open" => OnError::Open,
                "closed" => OnError::Closed,
                other => {
                    return Err(cx.err(
                        o.span(),
                        format!("on_error must be {ON_ERROR}, got {}", quote(other)),
                    ));
                }
            }
        }
        None => OnError::Open,
    };
    Ok(AppConfig {
        socket,
        group,
        trusted_proxies,
        on_error,
    })
}

/// The tables of `[[KIND]]` (`endpoint`, `signal`).
pub(super) fn tables<'a, T>(
    cx: &Ctx,
    raw: Option<&'a Field<Vec<Field<T>>>>,
    kind: &str,
) -> Result<&'a [Field<T>], PolicyError> {
    let Some(r) = raw else { return Ok(&[]) };
    let list: &[Field<T>] = match r.get_ref() {
        Typed::Ok(v) => v,
        Typed::Wrong(Found::Table) => {
            return Err(cx.err(
                r.span(),
                format!("`[{kind}]` must be `[[{kind}]]`: each {kind} is a `[[{kind}]]` table of its own"),
            ));
        }
        Typed::Wrong(found) => {
            return Err(cx.err(
                r.span(),
                format!("`{kind}` must be written as `[[{kind}]]` tables, got {found}"),
            ));
        }
    };
    if list.len() > MAX_APP_TABLES {
        return Err(cx.err(
            list[MAX_APP_TABLES].span(),
            format!("at most {MAX_APP_TABLES} [[{kind}]] tables are supported"),
        ));
    }
    Ok(list)
}

fn name(
    cx: &Ctx,
    f: &Field<String>,
    kind: &str,
    seen: &mut HashSet<String>,
) -> Result<String, PolicyError> {
    let n = cx.get(f, "name", "text in quotes like \"login\"")?;
    let name = n.get_ref().clone();
    let valid = !name.is_empty()
        && name.len() <= RULE_NAME_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !valid {
        return Err(cx.err(
            n.span(),
            format!(
                "{kind} name must be 1 to {RULE_NAME_LEN} characters of letters, digits, `_`, `-` or `.`, got {}",
                quote(&name)
            ),
        ));
    }
    if !seen.insert(name.clone()) {
        return Err(cx.err(
            n.span(),
            format!("{kind} name `{name}` is used twice; names must be unique"),
        ));
    }
    Ok(name)
}

/// An HTTP token (RFC 9110 `tchar`): header names and methods.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn key(cx: &Ctx, k: Option<&Field<String>>) -> Result<KeyKind, PolicyError> {
    const KEYS: &str = "\"ip\", \"header:NAME\" (like \"header:X-Api-Key\") or \"user\"";
    let Some(k) = k else { return Ok(KeyKind::Ip) };
    let k = cx.get(k, "key", KEYS)?;
    let text = k.get_ref().as_str();
    match text {
        "ip" => Ok(KeyKind::Ip),
        "user" => Ok(KeyKind::User),
        _ => match text.strip_prefix("header:") {
            Some(h) if is_token(h.trim()) => Ok(KeyKind::Header(h.trim().to_string())),
            Some(_) => Err(cx.err(
                k.span(),
                format!("key {}: the header name must be an HTTP field name (letters, digits, `-`), like \"header:X-Api-Key\"", quote(text)),
            )),
            None => Err(cx.err(k.span(), format!("key must be {KEYS}, got {}", quote(text)))),
        },
    }
}

/// An app table's escalation: `scope` defaults to "host"; `allow_rule`: whether
/// `scope = "rule"` means something here (an endpoint: a ban on that endpoint only).
fn app_escalation(
    cx: &Ctx,
    e: Option<&Field<RawEscalation>>,
    allow_rule: bool,
) -> Result<Option<crate::policy::Escalation>, PolicyError> {
    let Some(e) = e else { return Ok(None) };
    let raw = cx
        .get(
            e,
            "escalation",
            "a table like { strikes = 3, window = \"10m\", ban = \"15m\" }",
        )?
        .value;
    let mut esc = escalation(cx, raw)?;
    match &raw.scope {
        None => esc.scope = BanScope::Host,
        Some(s) if esc.scope == BanScope::Rule && !allow_rule => {
            return Err(cx.err(
                s.span(),
                "a [[signal]] belongs to no endpoint or port: its escalation scope must be \"host\"",
            ));
        }
        Some(_) => {}
    }
    Ok(Some(esc))
}

pub(super) fn endpoint(
    cx: &Ctx,
    raw: &Field<RawEndpoint>,
    seen: &mut HashSet<String>,
) -> Result<Endpoint, PolicyError> {
    let e = cx
        .get(raw, "each endpoint", "a table (`[[endpoint]]`)")?
        .value;
    let name = name(cx, &e.name, "endpoint", seen)?;
    let mut methods = Vec::new();
    if let Some(m) = &e.methods {
        let m = cx.get(m, "methods", "a list like [\"GET\", \"POST\"]")?;
        if m.get_ref().is_empty() {
            return Err(cx.err(
                m.span(),
                "`methods` is empty; list methods, or leave `methods` out to cover every method",
            ));
        }
        for item in m.get_ref() {
            let it = cx.get(item, "each method", TEXT)?;
            let up = it.get_ref().to_ascii_uppercase();
            if !is_token(&up) {
                return Err(cx.err(
                    it.span(),
                    format!(
                        "method must be an HTTP method like \"GET\" or \"POST\", got {}",
                        quote(it.get_ref())
                    ),
                ));
            }
            if !methods.contains(&up) {
                methods.push(up);
            }
        }
    }
    let p = cx.get(
        &e.path,
        "path",
        "a Flask rule like \"/users/<int:id>\" or a prefix like \"/api/*\"",
    )?;
    let text = p.get_ref().as_str();
    let (path, prefix) = match text.strip_suffix('*') {
        Some(head) => (head, true),
        None => (text, false),
    };
    if !path.starts_with('/')
        || path.len() > MAX_PATH
        || path.contains('*')
        || path.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(cx.err(
            p.span(),
            format!(
                "path must start with `/`, hold no spaces and at most one `*`, at the end (a prefix), at most {MAX_PATH} bytes; like \"/login\", \"/users/<int:id>\" or \"/api/*\"; got {}",
                quote(text)
            ),
        ));
    }
    let key = key(cx, e.key.as_ref())?;
    let limit = limit(cx, cx.get(&e.limit, "limit", LIMIT)?.value)?;
    let cost = match &e.cost {
        Some(c) => {
            let c = cx.get(c, "cost", "a whole number of tokens, like 5")?;
            let v = *c.get_ref();
            let most = limit
                .sustained
                .map_or(limit.burst, |s| s.count.min(limit.burst));
            if v < 1 || v as u64 > most {
                return Err(cx.err(
                    c.span(),
                    format!(
                        "cost must be between 1 and the limit's burst{} ({most}): a request costing more could never pass; got {v}",
                        if limit.sustained.is_some() { " and sustained count" } else { "" }
                    ),
                ));
            }
            v as u64
        }
        None => 1,
    };
    let concurrency = match &e.concurrency {
        Some(c) => {
            let c = cx.get(c, "concurrency", "a whole number of requests, like 2")?;
            let v = *c.get_ref();
            if !(1..=MAX_CONCURRENCY).contains(&v) {
                return Err(cx.err(
                    c.span(),
                    format!(
                        "concurrency must be between 1 and {MAX_CONCURRENCY} requests in flight per key, got {v}"
                    ),
                ));
            }
            Some(v as u64)
        }
        None => None,
    };
    let quota = match &e.quota {
        Some(q) => Some(quota(cx, q, cost)?),
        None => None,
    };
    let escalation = app_escalation(cx, e.escalation.as_ref(), true)?;
    Ok(Endpoint {
        quota,
        concurrency,
        name,
        methods,
        path: path.to_string(),
        prefix,
        key,
        limit,
        cost,
        escalation,
    })
}

pub(super) fn signal(
    cx: &Ctx,
    raw: &Field<RawSignal>,
    seen: &mut HashSet<String>,
) -> Result<Signal, PolicyError> {
    let s = cx.get(raw, "each signal", "a table (`[[signal]]`)")?.value;
    let name = name(cx, &s.name, "signal", seen)?;
    let key = key(cx, s.key.as_ref())?;
    let limit = limit(cx, cx.get(&s.limit, "limit", LIMIT)?.value)?;
    let escalation = app_escalation(cx, s.escalation.as_ref(), false)?;
    Ok(Signal {
        name,
        key,
        limit,
        escalation,
    })
}
