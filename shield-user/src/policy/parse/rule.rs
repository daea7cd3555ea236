//! `[[rule]]` tables → `Rule`: protocol, ports, per-rule overrides, limits, escalation,
//! challenge and what happens over the limit.

use toml::Spanned;

use super::{
    Ctx, LIMIT, MAX_STRIKES, RATE, RawEscalation, RawRule, TEXT, WHOLE, parse_mode, prefix,
    units::{duration, format_duration, limit, rate},
};
use crate::policy::{
    BanScope, Escalation, Mode, OverLimit, PolicyError, PortRange, Protocol, Rate, Rule,
    value::{Found, quote},
};
use shield_common::RULE_NAME_LEN;
use std::time::Duration;

pub(super) fn parse_rule(
    cx: &Ctx,
    r: &RawRule,
    default_mode: Mode,
    v4: u8,
    v6: u8,
) -> Result<Rule, PolicyError> {
    let name_at = cx.get(&r.name, "name", "text in quotes like \"api\"")?;
    let name = name_at.get_ref().clone();
    let valid_name = !name.is_empty()
        && name.len() <= RULE_NAME_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !valid_name {
        return Err(cx.err(
            r.name.span(),
            format!(
                "rule name must be 1 to {RULE_NAME_LEN} characters of letters, digits, `_`, `-` or `.`, got {}",
                quote(&name)
            ),
        ));
    }
    const PROTOCOLS: &str = "\"tcp\", \"udp\" or \"icmp\"";
    let protocol_at = cx.get(&r.protocol, "protocol", PROTOCOLS)?;
    let protocol = match protocol_at.get_ref().as_str() {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        "icmp" => Protocol::Icmp,
        other => {
            return Err(cx.err(
                protocol_at.span(),
                format!("protocol must be {PROTOCOLS}, got {}", quote(other)),
            ));
        }
    };
    let mut ports = Vec::new();
    if let Some(p) = &r.ports {
        let p = cx.get(p, "ports", "a list like [80, \"9000-9099\"]")?;
        if protocol == Protocol::Icmp {
            return Err(cx.err(p.span(), "icmp rules take no `ports`"));
        }
        if p.get_ref().is_empty() {
            return Err(cx.err(
                p.span(),
                "`ports` is empty; list ports or ranges, or leave `ports` out to cover every port",
            ));
        }
        for item in p.get_ref() {
            let range = port_range(cx, item)?;
            if let Some(prev) = ports
                .iter()
                .find(|o: &&PortRange| range.first <= o.last && o.first <= range.last)
            {
                return Err(cx.err(
                    item.span(),
                    format!("port(s) {range} overlap {prev} listed before in the same rule"),
                ));
            }
            ports.push(range);
        }
        ports.sort();
    }
    let mode = match &r.mode {
        Some(m) => parse_mode(cx, m)?,
        None => default_mode,
    };
    let ipv4_prefix = match &r.ipv4_prefix {
        Some(p) => prefix(cx, p, "ipv4_prefix", 32)?,
        None => v4,
    };
    let ipv6_prefix = match &r.ipv6_prefix {
        Some(p) => prefix(cx, p, "ipv6_prefix", 128)?,
        None => v6,
    };
    let connections = match &r.connections {
        Some(l) if protocol != Protocol::Tcp => {
            cx.get(l, "connections", LIMIT)?;
            return Err(cx.err(
                l.span(),
                format!(
                    "`connections` counts TCP connection attempts and is only valid on tcp rules; use `packets` for {protocol}"
                ),
            ));
        }
        Some(l) => Some(limit(cx, cx.get(l, "connections", LIMIT)?.value)?),
        None => None,
    };
    let packets = match &r.packets {
        Some(l) => Some(limit(cx, cx.get(l, "packets", LIMIT)?.value)?),
        None => None,
    };
    let escalation = match &r.escalation {
        Some(e) if connections.is_none() && packets.is_none() => {
            return Err(cx.err(
                e.span(),
                "`escalation` needs a `connections` or `packets` limit to count strikes against",
            ));
        }
        Some(e) => Some(escalation(
            cx,
            cx.get(
                e,
                "escalation",
                "a table like { strikes = 3, window = \"1m\", ban = \"30s\" }",
            )?
            .value,
        )?),
        None => None,
    };
    let unverified = match &r.unverified {
        Some(u) if protocol != Protocol::Tcp => {
            cx.get(u, "unverified", LIMIT)?;
            return Err(cx.err(
                u.span(),
                format!(
                    "`unverified` budgets TCP connection attempts (a source is verified by completing a TCP handshake) and is only valid on tcp rules, not {protocol}"
                ),
            ));
        }
        Some(u) => {
            let u = cx.get(u, "unverified", LIMIT)?;
            if let Some(s) = &u.get_ref().sustained {
                return Err(cx.err(
                    s.span(),
                    "`unverified` is one shared bucket: give `rate` and `burst`, no `sustained`",
                ));
            }
            Some(limit(cx, u.get_ref())?)
        }
        None => None,
    };
    let syncookie_mss = match &r.challenge {
        Some(c) => {
            let c = cx.get(c, "challenge", TEXT)?;
            if c.get_ref() != "syncookie" {
                return Err(cx.err(
                    c.span(),
                    format!(
                        "unknown challenge {}; the only one is \"syncookie\"",
                        quote(c.get_ref())
                    ),
                ));
            }
            if protocol != Protocol::Tcp {
                return Err(cx.err(
                    c.span(),
                    format!(
                        "challenge = \"syncookie\" answers TCP connection attempts and is only valid on tcp rules (with an `unverified` budget), not {protocol}"
                    ),
                ));
            }
            if unverified.is_none() {
                return Err(cx.err(
                    c.span(),
                    "challenge = \"syncookie\" answers connection attempts over the `unverified` budget: give the rule an `unverified` budget (tcp rules only)",
                ));
            }
            Some(match &r.mss {
                Some(m) => {
                    let m = cx.get(m, "mss", WHOLE)?;
                    let v = *m.get_ref();
                    if !(536..=9000).contains(&v) {
                        return Err(cx.err(
                            m.span(),
                            format!("mss must be between 536 and 9000 bytes, got {v}"),
                        ));
                    }
                    v as u16
                }
                None => shield_common::DEFAULT_SYNCOOKIE_MSS,
            })
        }
        None => {
            if let Some(m) = &r.mss {
                return Err(cx.err(
                    m.span(),
                    "`mss` is the MSS of `challenge = \"syncookie\"` answers: it needs that challenge",
                ));
            }
            None
        }
    };
    let (over_limit, resets) = over_limit(cx, r, protocol, connections.or(packets).is_some())?;
    Ok(Rule {
        name,
        protocol,
        ports,
        mode,
        ipv4_prefix,
        ipv6_prefix,
        connections,
        packets,
        escalation,
        unverified,
        over_limit,
        resets,
        syncookie_mss,
    })
}

/// `over_limit` ("drop", the default, or "reset") and the rule's `resets` cap.
fn over_limit(
    cx: &Ctx,
    r: &RawRule,
    protocol: Protocol,
    limited: bool,
) -> Result<(OverLimit, Option<Rate>), PolicyError> {
    const CHOICES: &str = "\"drop\" or \"reset\"";
    let chosen = match &r.over_limit {
        None => OverLimit::Drop,
        Some(o) => {
            let o = cx.get(o, "over_limit", CHOICES)?;
            match o.get_ref().as_str() {
                "drop" => OverLimit::Drop,
                "reset" if protocol != Protocol::Tcp => {
                    return Err(cx.err(
                        o.span(),
                        format!(
                            "over_limit = \"reset\" answers TCP connection attempts with a RST and is only valid on tcp rules; {protocol} traffic over its limits is always dropped"
                        ),
                    ));
                }
                "reset" if !limited => {
                    return Err(cx.err(
                        o.span(),
                        "over_limit = \"reset\" needs a `connections` or `packets` limit to be over",
                    ));
                }
                "reset" => OverLimit::Reset,
                other => {
                    return Err(cx.err(
                        o.span(),
                        format!("over_limit must be {CHOICES}, got {}", quote(other)),
                    ));
                }
            }
        }
    };
    match (&r.resets, chosen) {
        (Some(f), OverLimit::Drop) => {
            cx.get(f, "resets", RATE)?;
            Err(cx.err(
                f.span(),
                "`resets` caps the RSTs of over_limit = \"reset\"; this rule drops (set over_limit = \"reset\" or remove `resets`)",
            ))
        }
        (Some(f), OverLimit::Reset) => Ok((chosen, Some(rate(cx, f, "resets")?))),
        (None, OverLimit::Reset) => Ok((chosen, Some(crate::policy::DEFAULT_RESETS))),
        (None, OverLimit::Drop) => Ok((chosen, None)),
    }
}

pub(super) fn escalation(cx: &Ctx, e: &RawEscalation) -> Result<Escalation, PolicyError> {
    let strikes_at = cx.get(&e.strikes, "strikes", WHOLE)?;
    let strikes = *strikes_at.get_ref();
    if !(1..=MAX_STRIKES).contains(&strikes) {
        return Err(cx.err(
            strikes_at.span(),
            format!("strikes must be between 1 and {MAX_STRIKES}, got {strikes}"),
        ));
    }
    let second = Duration::from_secs(1);
    let window = duration(cx, &e.window, "window", second)?;
    // At most one strike per second: the window must be able to hold them all.
    let needed = Duration::from_secs(strikes as u64 - 1);
    if window < needed {
        return Err(cx.err(
            e.window.span(),
            format!(
                "a window of {} can never hold {strikes} strikes (at most one per second); use at least {}",
                format_duration(window),
                format_duration(needed)
            ),
        ));
    }
    let ban = duration(cx, &e.ban, "ban", second)?;
    let backoff = match &e.backoff {
        Some(b) => {
            let b = cx.get(b, "backoff", WHOLE)?;
            let v = *b.get_ref();
            let max = i64::from(shield_common::judge::MAX_BACKOFF);
            if !(1..=max).contains(&v) {
                return Err(cx.err(
                    b.span(),
                    format!("backoff must be a whole number between 1 and {max}, got {v}"),
                ));
            }
            v as u16
        }
        None => 2,
    };
    let max_ban = match &e.max_ban {
        Some(m) => {
            let d = duration(cx, m, "max_ban", second)?;
            if d < ban {
                return Err(cx.err(
                    m.span(),
                    format!(
                        "max_ban {} is shorter than ban {}",
                        format_duration(d),
                        format_duration(ban)
                    ),
                ));
            }
            d
        }
        None => ban.max(Duration::from_secs(3600)),
    };
    let forget = match &e.forget {
        Some(f) => duration(cx, f, "forget", second)?,
        None => Duration::from_secs(24 * 3600),
    };
    const SCOPES: &str = "\"rule\" (the rule's ports) or \"host\" (everything from the source)";
    let scope = match &e.scope {
        None => BanScope::Rule,
        Some(s) => {
            let s = cx.get(s, "scope", SCOPES)?;
            match s.get_ref().as_str() {
                "rule" => BanScope::Rule,
                "host" => BanScope::Host,
                other => {
                    return Err(cx.err(
                        s.span(),
                        format!("scope must be {SCOPES}, got {}", quote(other)),
                    ));
                }
            }
        }
    };
    Ok(Escalation {
        strikes: strikes as u16,
        window,
        ban,
        backoff,
        max_ban,
        forget,
        scope,
    })
}

fn port_range(cx: &Ctx, item: &Spanned<toml::Value>) -> Result<PortRange, PolicyError> {
    let bad = |what: String| {
        cx.err(
            item.span(),
            format!("expected a port (1-65535) or a range \"first-last\", got {what}"),
        )
    };
    let port = |v: i64| -> Result<u16, PolicyError> {
        u16::try_from(v)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad(v.to_string()))
    };
    match item.get_ref() {
        toml::Value::Integer(v) => {
            let p = port(*v)?;
            Ok(PortRange { first: p, last: p })
        }
        toml::Value::String(s) => {
            let parsed = s.split_once('-').and_then(|(a, b)| {
                Some((a.trim().parse::<i64>().ok()?, b.trim().parse::<i64>().ok()?))
            });
            let (a, b) = match parsed {
                Some(ab) => ab,
                None => match s.trim().parse::<i64>() {
                    Ok(v) => (v, v),
                    Err(_) => return Err(bad(quote(s))),
                },
            };
            let (first, last) = (port(a)?, port(b)?);
            if first > last {
                return Err(cx.err(
                    item.span(),
                    format!(
                        "port range {} is backwards; write \"{last}-{first}\"",
                        quote(s)
                    ),
                ));
            }
            Ok(PortRange { first, last })
        }
        toml::Value::Float(v) => Err(bad(Found::Float(*v).to_string())),
        toml::Value::Boolean(v) => Err(bad(Found::Bool(*v).to_string())),
        toml::Value::Datetime(_) => Err(bad(Found::Datetime.to_string())),
        toml::Value::Array(_) => Err(bad(Found::List.to_string())),
        toml::Value::Table(_) => Err(bad(Found::Table.to_string())),
    }
}
