//! TOML → `Policy`, with a file:line:column on every error.

use std::{collections::HashSet, net::IpAddr, ops::Range};

use serde::Deserialize;
use toml::Spanned;

use super::{
    BanScope, Cidr, Escalation, Limit, Mode, Policy, PolicyError, PortRange, Protocol, Rate, Rule,
};
use shield_common::{DEFAULT_MAX_SOURCES, MAX_LIST_PREFIXES, MAX_RULES, RULE_NAME_LEN};
use std::time::Duration;

/// Bounds that make a value "absurd" rather than merely large.
pub const MAX_RATE_PER_SEC: u64 = 100_000_000;
pub const MAX_BURST: u64 = 100_000_000;
pub const MIN_MAX_SOURCES: i64 = 64;
pub const MAX_MAX_SOURCES: i64 = 16_777_216;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    defaults: Option<RawDefaults>,
    lists: Option<RawLists>,
    #[serde(default)]
    rule: Vec<Spanned<RawRule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    mode: Option<Spanned<String>>,
    ipv4_prefix: Option<Spanned<i64>>,
    ipv6_prefix: Option<Spanned<i64>>,
    max_sources: Option<Spanned<i64>>,
    verified_ttl: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLists {
    #[serde(default)]
    allow: Vec<Spanned<String>>,
    #[serde(default)]
    deny: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Spanned<String>,
    protocol: Spanned<String>,
    ports: Option<Spanned<Vec<Spanned<toml::Value>>>>,
    mode: Option<Spanned<String>>,
    ipv4_prefix: Option<Spanned<i64>>,
    ipv6_prefix: Option<Spanned<i64>>,
    connections: Option<Spanned<RawLimit>>,
    packets: Option<Spanned<RawLimit>>,
    escalation: Option<Spanned<RawEscalation>>,
    unverified: Option<Spanned<RawLimit>>,
    challenge: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEscalation {
    strikes: Spanned<i64>,
    window: Spanned<String>,
    ban: Spanned<String>,
    backoff: Option<Spanned<i64>>,
    max_ban: Option<Spanned<String>>,
    forget: Option<Spanned<String>>,
    scope: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimit {
    rate: Spanned<String>,
    burst: Option<Spanned<i64>>,
    sustained: Option<Spanned<String>>,
}

struct Ctx<'a> {
    file: &'a str,
    text: &'a str,
}

impl Ctx<'_> {
    fn err(&self, span: Range<usize>, message: impl Into<String>) -> PolicyError {
        let (line, column) = line_col(self.text, span.start);
        PolicyError {
            file: self.file.to_string(),
            line,
            column,
            message: message.into(),
        }
    }
}

/// 1-based line and column (in characters) of byte offset `at`.
fn line_col(text: &str, at: usize) -> (usize, usize) {
    let at = at.min(text.len());
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// Parses and validates policy text; `file` names it in errors.
pub fn parse_str(file: &str, text: &str) -> Result<Policy, PolicyError> {
    let cx = Ctx { file, text };
    let raw: RawPolicy = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        cx.err(span, e.message().trim().to_string())
    })?;

    let defaults = raw.defaults;
    let mode = match defaults.as_ref().and_then(|d| d.mode.as_ref()) {
        Some(m) => parse_mode(&cx, m)?,
        None => Mode::Enforce,
    };
    let ipv4_prefix = match defaults.as_ref().and_then(|d| d.ipv4_prefix.as_ref()) {
        Some(p) => prefix(&cx, p, 32)?,
        None => 32,
    };
    let ipv6_prefix = match defaults.as_ref().and_then(|d| d.ipv6_prefix.as_ref()) {
        Some(p) => prefix(&cx, p, 128)?,
        None => 64,
    };
    let max_sources = match defaults.as_ref().and_then(|d| d.max_sources.as_ref()) {
        Some(m) => {
            let v = *m.get_ref();
            if !(MIN_MAX_SOURCES..=MAX_MAX_SOURCES).contains(&v) {
                return Err(cx.err(
                    m.span(),
                    format!(
                        "max_sources must be between {MIN_MAX_SOURCES} and {MAX_MAX_SOURCES}, got {v}"
                    ),
                ));
            }
            v as u32
        }
        None => DEFAULT_MAX_SOURCES,
    };
    let verified_ttl = match defaults.as_ref().and_then(|d| d.verified_ttl.as_ref()) {
        Some(t) => duration(&cx, t, "verified_ttl", Duration::from_secs(1))?,
        None => Duration::from_nanos(shield_common::DEFAULT_VERIFIED_TTL_NS),
    };

    let (allow, deny) = match raw.lists {
        Some(l) => (cidrs(&cx, &l.allow, "allow")?, cidrs(&cx, &l.deny, "deny")?),
        None => (Vec::new(), Vec::new()),
    };

    if raw.rule.len() > MAX_RULES as usize {
        let span = raw.rule[MAX_RULES as usize].span();
        return Err(cx.err(span, format!("at most {MAX_RULES} rules are supported")));
    }
    let mut rules: Vec<Rule> = Vec::with_capacity(raw.rule.len());
    // Which rule claimed each (protocol, port): overlapping claims are errors.
    let mut claims: Vec<(Protocol, PortRange, usize)> = Vec::new();
    let mut names = HashSet::new();
    for spanned in &raw.rule {
        let r = spanned.get_ref();
        let rule = parse_rule(&cx, r, mode, ipv4_prefix, ipv6_prefix)?;
        if !names.insert(rule.name.clone()) {
            return Err(cx.err(
                r.name.span(),
                format!(
                    "rule name `{}` is used twice; names must be unique",
                    rule.name
                ),
            ));
        }
        let whole_protocol = [PortRange { first: 0, last: 0 }];
        let ranges: &[PortRange] = if rule.ports.is_empty() {
            &whole_protocol
        } else {
            &rule.ports
        };
        for range in ranges {
            for (proto, other, idx) in &claims {
                let both_catch_all = rule.ports.is_empty() && rules[*idx].ports.is_empty();
                let overlap = !rule.ports.is_empty()
                    && !rules[*idx].ports.is_empty()
                    && range.first <= other.last
                    && other.first <= range.last;
                if *proto == rule.protocol && (both_catch_all || overlap) {
                    let what = if both_catch_all {
                        format!("all {} traffic", rule.protocol)
                    } else {
                        format!("{} port(s) {range}", rule.protocol)
                    };
                    let span = r.ports.as_ref().map_or(r.name.span(), |p| p.span());
                    return Err(cx.err(
                        span,
                        format!(
                            "rule `{}` claims {what}, already claimed by rule `{}`; each endpoint belongs to one rule",
                            rule.name, rules[*idx].name
                        ),
                    ));
                }
            }
        }
        for range in ranges {
            claims.push((rule.protocol, *range, rules.len()));
        }
        rules.push(rule);
    }

    Ok(Policy {
        mode,
        ipv4_prefix,
        ipv6_prefix,
        max_sources,
        verified_ttl,
        allow,
        deny,
        rules,
    })
}

fn parse_mode(cx: &Ctx, m: &Spanned<String>) -> Result<Mode, PolicyError> {
    match m.get_ref().as_str() {
        "enforce" => Ok(Mode::Enforce),
        "monitor" => Ok(Mode::Monitor),
        other => Err(cx.err(
            m.span(),
            format!("mode must be \"enforce\" or \"monitor\", got \"{other}\""),
        )),
    }
}

fn prefix(cx: &Ctx, p: &Spanned<i64>, max: i64) -> Result<u8, PolicyError> {
    let v = *p.get_ref();
    if !(1..=max).contains(&v) {
        return Err(cx.err(
            p.span(),
            format!("prefix length must be between 1 and {max}, got {v}"),
        ));
    }
    Ok(v as u8)
}

fn parse_rule(
    cx: &Ctx,
    r: &RawRule,
    default_mode: Mode,
    v4: u8,
    v6: u8,
) -> Result<Rule, PolicyError> {
    let name = r.name.get_ref().clone();
    let valid_name = !name.is_empty()
        && name.len() <= RULE_NAME_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !valid_name {
        return Err(cx.err(
            r.name.span(),
            format!(
                "rule name must be 1 to {RULE_NAME_LEN} characters of letters, digits, `_`, `-` or `.`, got \"{name}\""
            ),
        ));
    }
    let protocol = match r.protocol.get_ref().as_str() {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        "icmp" => Protocol::Icmp,
        other => {
            return Err(cx.err(
                r.protocol.span(),
                format!("protocol must be \"tcp\", \"udp\" or \"icmp\", got \"{other}\""),
            ));
        }
    };
    let mut ports = Vec::new();
    if let Some(p) = &r.ports {
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
        Some(p) => prefix(cx, p, 32)?,
        None => v4,
    };
    let ipv6_prefix = match &r.ipv6_prefix {
        Some(p) => prefix(cx, p, 128)?,
        None => v6,
    };
    let connections = match &r.connections {
        Some(l) if protocol != Protocol::Tcp => {
            return Err(cx.err(
                l.span(),
                format!(
                    "`connections` counts TCP connection attempts and is only valid on tcp rules; use `packets` for {protocol}"
                ),
            ));
        }
        Some(l) => Some(limit(cx, l.get_ref())?),
        None => None,
    };
    let packets = match &r.packets {
        Some(l) => Some(limit(cx, l.get_ref())?),
        None => None,
    };
    let escalation = match &r.escalation {
        Some(e) if connections.is_none() && packets.is_none() => {
            return Err(cx.err(
                e.span(),
                "`escalation` needs a `connections` or `packets` limit to count strikes against",
            ));
        }
        Some(e) => Some(escalation(cx, e.get_ref())?),
        None => None,
    };
    let unverified = match &r.unverified {
        Some(u) if protocol != Protocol::Tcp => {
            return Err(cx.err(
                u.span(),
                format!(
                    "`unverified` budgets TCP connection attempts (a source is verified by completing a TCP handshake) and is only valid on tcp rules, not {protocol}"
                ),
            ));
        }
        Some(u) => {
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
    if let Some(c) = &r.challenge {
        let msg = match c.get_ref().as_str() {
            "syncookie" => {
                "challenge = \"syncookie\" is not built yet: over the `unverified` budget, connection attempts from unverified sources are dropped (see docs/operations.md, \"Spoofed-source floods\")".to_string()
            }
            other => format!("unknown challenge \"{other}\"; the only planned one is \"syncookie\", which is not built yet"),
        };
        return Err(cx.err(c.span(), msg));
    }
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
    })
}

/// Parses `500ms`, `10s`, `5m` (or `5min`), `1h`, `1d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| "missing unit (ms, s, m, h or d)".to_string())?;
    let (n, unit) = t.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| "expected a whole number before the unit".to_string())?;
    let ms = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("unknown unit `{unit}` (ms, s, m, h or d)")),
    };
    n.checked_mul(ms)
        .map(Duration::from_millis)
        .ok_or_else(|| "too long".to_string())
}

/// The shortest exact text for a duration (`90s` → `90s`, `3600s` → `1h`).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
    ] {
        if ms >= size && ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

fn duration(
    cx: &Ctx,
    s: &Spanned<String>,
    what: &str,
    min: Duration,
) -> Result<Duration, PolicyError> {
    let max = Duration::from_nanos(shield_common::judge::MAX_BAN_NS);
    let d = parse_duration(s.get_ref()).map_err(|why| {
        cx.err(
            s.span(),
            format!("{what}: {why}: expected a duration like \"500ms\", \"30s\", \"5m\", \"1h\" or \"1d\", got \"{}\"", s.get_ref()),
        )
    })?;
    if d < min || d > max {
        return Err(cx.err(
            s.span(),
            format!(
                "{what} must be between {} and {}, got {}",
                format_duration(min),
                format_duration(max),
                format_duration(d)
            ),
        ));
    }
    Ok(d)
}

fn escalation(cx: &Ctx, e: &RawEscalation) -> Result<Escalation, PolicyError> {
    let strikes = *e.strikes.get_ref();
    if !(1..=1000).contains(&strikes) {
        return Err(cx.err(
            e.strikes.span(),
            format!("strikes must be between 1 and 1000, got {strikes}"),
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
    let scope = match e.scope.as_ref().map(|s| (s, s.get_ref().as_str())) {
        None | Some((_, "rule")) => BanScope::Rule,
        Some((_, "host")) => BanScope::Host,
        Some((s, other)) => {
            return Err(cx.err(
                s.span(),
                format!("scope must be \"rule\" (the rule's ports) or \"host\" (everything from the source), got \"{other}\""),
            ));
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
                    Err(_) => return Err(bad(format!("\"{s}\""))),
                },
            };
            let (first, last) = (port(a)?, port(b)?);
            if first > last {
                return Err(cx.err(
                    item.span(),
                    format!("port range \"{s}\" is backwards; write \"{last}-{first}\""),
                ));
            }
            Ok(PortRange { first, last })
        }
        other => Err(bad(format!("{} `{other}`", other.type_str()))),
    }
}

fn rate(cx: &Ctx, s: &Spanned<String>) -> Result<Rate, PolicyError> {
    let text = s.get_ref().trim();
    let bad = |why: &str| {
        cx.err(
            s.span(),
            format!(
                "{why}: expected a rate like \"20/s\", \"600/min\" or \"1000/h\", got \"{text}\""
            ),
        )
    };
    let (n, unit) = text.split_once('/').ok_or_else(|| bad("missing `/`"))?;
    let count: u64 = n
        .trim()
        .parse()
        .map_err(|_| bad("the count must be a whole number"))?;
    let period_secs = match unit.trim() {
        "s" => 1,
        "min" => 60,
        "h" => 3600,
        _ => return Err(bad("the unit must be s, min or h")),
    };
    if count == 0 {
        return Err(bad(
            "a rate of 0 would drop everything; remove the limit or use a deny list",
        ));
    }
    if count / period_secs > MAX_RATE_PER_SEC {
        return Err(bad(&format!(
            "rates above {MAX_RATE_PER_SEC}/s are not meaningful per source"
        )));
    }
    Ok(Rate { count, period_secs })
}

fn limit(cx: &Ctx, l: &RawLimit) -> Result<Limit, PolicyError> {
    let r = rate(cx, &l.rate)?;
    let burst = match &l.burst {
        Some(b) => {
            let v = *b.get_ref();
            if v < 1 || v as u64 > MAX_BURST {
                return Err(cx.err(
                    b.span(),
                    format!("burst must be between 1 and {MAX_BURST}, got {v}"),
                ));
            }
            v as u64
        }
        // One second's worth of the rate, at least one.
        None => r.count.div_ceil(r.period_secs).max(1),
    };
    let sustained = match &l.sustained {
        Some(s) => {
            let sr = rate(cx, s)?;
            // Compare count/period without division: sustained must not exceed the rate.
            if u128::from(sr.count) * u128::from(r.period_secs)
                > u128::from(r.count) * u128::from(sr.period_secs)
            {
                return Err(cx.err(
                    s.span(),
                    format!(
                        "sustained rate {sr} is above the rate {r}; the sustained window should be the lower, longer-term limit"
                    ),
                ));
            }
            Some(sr)
        }
        None => None,
    };
    let out = Limit {
        rate: r,
        burst,
        sustained,
    };
    if super::compile::buckets(&out).is_none() {
        return Err(cx.err(
            l.rate.span(),
            format!("burst {burst} at {r} spans more time than the data path can track; lower the burst or raise the rate"),
        ));
    }
    Ok(out)
}

fn cidrs(cx: &Ctx, items: &[Spanned<String>], list: &str) -> Result<Vec<Cidr>, PolicyError> {
    if items.len() > MAX_LIST_PREFIXES as usize {
        return Err(cx.err(
            items[MAX_LIST_PREFIXES as usize].span(),
            format!("the {list} list holds at most {MAX_LIST_PREFIXES} prefixes"),
        ));
    }
    let mut seen = HashSet::with_capacity(items.len());
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let c = parse_cidr(item.get_ref()).map_err(|why| {
            cx.err(
                item.span(),
                format!("{list} list: {why}: expected an address or CIDR like \"192.0.2.0/24\" or \"2001:db8::/32\", got \"{}\"", item.get_ref()),
            )
        })?;
        if seen.insert(c) {
            out.push(c);
        }
    }
    Ok(out)
}

/// Parses `addr` or `addr/len` with host bits clear.
pub fn parse_cidr(s: &str) -> Result<Cidr, String> {
    let s = s.trim();
    let (a, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let addr: IpAddr = a.parse().map_err(|_| "not an IP address".to_string())?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = match len {
        Some(l) => l
            .parse::<u8>()
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(|| format!("prefix length must be 0 to {max}"))?,
        None => max,
    };
    let masked = mask_ip(addr, len);
    if masked != addr {
        return Err(format!("host bits are set (did you mean {masked}/{len}?)"));
    }
    Ok(Cidr { addr, len })
}

fn mask_ip(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let m = if len == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(len))
            };
            IpAddr::V4((u32::from(a) & m).into())
        }
        IpAddr::V6(a) => {
            let m = if len == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(len))
            };
            IpAddr::V6((u128::from(a) & m).into())
        }
    }
}
