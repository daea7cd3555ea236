//! TOML → `Policy`, with a file:line:column on every error.

mod app;

use std::{collections::HashSet, net::IpAddr, ops::Range};

use serde::Deserialize;
use toml::Spanned;

use super::{
    BanScope, Cidr, Escalation, Limit, Mode, OverLimit, Policy, PolicyError, PortRange, Protocol,
    Rate, Rule,
    value::{Found, Shape, Shaped, Typed, quote},
};
use shield_common::{DEFAULT_MAX_SOURCES, MAX_LIST_PREFIXES, MAX_RULES, RULE_NAME_LEN};
use std::time::Duration;

/// Bounds that make a value "absurd" rather than merely large.
pub const MAX_RATE_PER_SEC: u64 = 100_000_000;
pub const MAX_BURST: u64 = 100_000_000;
pub const MIN_MAX_SOURCES: i64 = 64;
pub const MAX_MAX_SOURCES: i64 = 16_777_216;
pub const MAX_STRIKES: i64 = 1000;

/// A key's value with its place in the file; the wrong type of value is kept (see `Typed`)
/// so that the error names the key in user words.
type Field<T> = Spanned<Typed<T>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    defaults: Option<Field<RawDefaults>>,
    lists: Option<Field<RawLists>>,
    rule: Option<Field<Vec<Field<RawRule>>>>,
    fleet: Option<Field<super::fleet::RawFleet>>,
    app: Option<Field<app::RawApp>>,
    endpoint: Option<Field<Vec<Field<app::RawEndpoint>>>>,
    signal: Option<Field<Vec<Field<app::RawSignal>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    mode: Option<Field<String>>,
    ipv4_prefix: Option<Field<i64>>,
    ipv6_prefix: Option<Field<i64>>,
    max_sources: Option<Field<i64>>,
    verified_ttl: Option<Field<String>>,
    min_ban_ipv4_prefix: Option<Field<i64>>,
    min_ban_ipv6_prefix: Option<Field<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLists {
    allow: Option<Field<Vec<Field<String>>>>,
    deny: Option<Field<Vec<Field<String>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Field<String>,
    protocol: Field<String>,
    ports: Option<Field<Vec<Spanned<toml::Value>>>>,
    mode: Option<Field<String>>,
    ipv4_prefix: Option<Field<i64>>,
    ipv6_prefix: Option<Field<i64>>,
    connections: Option<Field<RawLimit>>,
    packets: Option<Field<RawLimit>>,
    escalation: Option<Field<RawEscalation>>,
    unverified: Option<Field<RawLimit>>,
    challenge: Option<Field<String>>,
    over_limit: Option<Field<String>>,
    resets: Option<Field<String>>,
    mss: Option<Field<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEscalation {
    strikes: Field<i64>,
    window: Field<String>,
    ban: Field<String>,
    backoff: Option<Field<i64>>,
    max_ban: Option<Field<String>>,
    forget: Option<Field<String>>,
    scope: Option<Field<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimit {
    rate: Field<String>,
    burst: Option<Field<i64>>,
    sustained: Option<Field<String>>,
}

impl Shaped for RawDefaults {
    const SHAPE: Shape = Shape::Table;
}
impl Shaped for RawLists {
    const SHAPE: Shape = Shape::Table;
}
impl Shaped for RawRule {
    const SHAPE: Shape = Shape::Table;
}
impl Shaped for RawEscalation {
    const SHAPE: Shape = Shape::Table;
}
impl Shaped for RawLimit {
    const SHAPE: Shape = Shape::Table;
}

/// The most values (keys, list entries, tables) a policy may hold: the TOML parser keeps
/// about 200 bytes per value while it works, so this bounds its memory where the file size
/// alone does not (`[1,1,1,…]` takes two bytes a value). Two full lists (2 × 1,048,576), every
/// port of both protocols listed one by one (131,070) and 255 rules fit with room to spare.
pub const MAX_POLICY_VALUES: usize = 3_000_000;

/// Where the text passes `MAX_POLICY_VALUES`, counting the separators and openers outside
/// strings and comments (`,` `=` `[` `{`): at least one per value. A cheap scan, before the
/// TOML parser builds anything.
fn past_value_limit(text: &str) -> Option<usize> {
    let b = text.as_bytes();
    let mut count = 0usize;
    let mut i = 0;
    // The end of a string starting at `i` (after its closing quote), or of the text.
    let string_end = |i: usize| -> usize {
        let q = b[i];
        let triple = b.get(i..i + 3) == Some(&[q, q, q][..]);
        let mut j = i + if triple { 3 } else { 1 };
        while j < b.len() {
            match b[j] {
                b'\\' if q == b'"' => j += 2,
                c if c == q && (!triple || b.get(j..j + 3) == Some(&[q, q, q][..])) => {
                    return j + if triple { 3 } else { 1 };
                }
                b'\n' if !triple => return j,
                _ => j += 1,
            }
        }
        b.len()
    };
    while i < b.len() {
        match b[i] {
            b'#' => {
                i = b[i..]
                    .iter()
                    .position(|&c| c == b'\n')
                    .map_or(b.len(), |n| i + n);
            }
            b'"' | b'\'' => i = string_end(i),
            b',' | b'=' | b'[' | b'{' => {
                count += 1;
                if count > MAX_POLICY_VALUES {
                    return Some(i);
                }
                i += 1;
            }
            _ => i += 1,
        }
    }
    None
}

/// A value of the expected type and where it is.
struct At<'a, T> {
    span: Range<usize>,
    value: &'a T,
}

impl<T> At<'_, T> {
    fn span(&self) -> Range<usize> {
        self.span.clone()
    }

    fn get_ref(&self) -> &T {
        self.value
    }
}

/// What a text key expects, for "KEY must be …, got …".
const TEXT: &str = "text in quotes";
const WHOLE: &str = "a whole number";
const DURATION: &str = "a duration in quotes, like \"30s\"";
const RATE: &str = "a rate in quotes, like \"5/s\"";
const LIMIT: &str = "a table like { rate = \"5/s\", burst = 10 }";

/// Messages longer than this are cut: they quote user input, which is bounded by `quote`,
/// but a message from the TOML parser might not be.
const MESSAGE_MAX: usize = 1024;

struct Ctx<'a> {
    file: &'a str,
    text: &'a str,
}

impl Ctx<'_> {
    fn err(&self, span: Range<usize>, message: impl Into<String>) -> PolicyError {
        let (line, column) = line_col(self.text, span.start);
        let mut message: String = message.into();
        if message.len() > MESSAGE_MAX {
            let mut cut = MESSAGE_MAX;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        PolicyError {
            file: self.file.to_string(),
            line,
            column,
            message,
        }
    }

    /// The value of `key`, or "KEY must be EXPECTED, got WHAT WAS THERE".
    fn get<'a, T>(
        &self,
        field: &'a Field<T>,
        key: &str,
        expected: &str,
    ) -> Result<At<'a, T>, PolicyError> {
        match field.get_ref() {
            Typed::Ok(value) => Ok(At {
                span: field.span(),
                value,
            }),
            Typed::Wrong(found) => Err(self.err(
                field.span(),
                format!("{key} must be {expected}, got {found}"),
            )),
        }
    }

    /// A table-valued key: `[[defaults]]` for `[defaults]` and the like get their own words.
    fn table<'a, T>(&self, field: &'a Field<T>, key: &str) -> Result<At<'a, T>, PolicyError> {
        match field.get_ref() {
            Typed::Wrong(Found::List) if matches!(key, "defaults" | "lists" | "fleet") => Err(self
                .err(
                    field.span(),
                    format!("`[[{key}]]` must be `[{key}]`: there is one {key} table"),
                )),
            _ => self.get(field, key, &format!("a table (`[{key}]`)")),
        }
    }
}

/// 1-based line and column (in characters) of byte offset `at`.
fn line_col(text: &str, at: usize) -> (usize, usize) {
    let mut at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// Parses and validates a policy file's bytes: text that is not UTF-8 is refused at its
/// first bad byte.
pub fn parse_bytes(file: &str, bytes: &[u8]) -> Result<Policy, PolicyError> {
    match std::str::from_utf8(bytes) {
        Ok(text) => parse_str(file, text),
        Err(e) => {
            let good = e.valid_up_to();
            let text = std::str::from_utf8(&bytes[..good]).unwrap_or_default();
            let cx = Ctx { file, text };
            Err(cx.err(
                good..good,
                format!(
                    "byte 0x{:02x} (offset {good}) is not UTF-8 text; a policy file is TOML text (is this a binary file?)",
                    bytes[good]
                ),
            ))
        }
    }
}

/// Parses and validates policy text; `file` names it in errors.
pub fn parse_str(file: &str, text: &str) -> Result<Policy, PolicyError> {
    let cx = Ctx { file, text };
    // TOML allows no control character but tab and line ends, anywhere; saying so at the
    // first one beats the parser's word for whatever it was parsing.
    if let Some(at) = text
        .bytes()
        .position(|b| (b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r')) || b == 0x7f)
    {
        return Err(cx.err(
            at..at,
            format!(
                "control character 0x{:02x} is not allowed in a policy file (is this a binary file?)",
                text.as_bytes()[at]
            ),
        ));
    }
    if let Some(at) = past_value_limit(text) {
        return Err(cx.err(
            at..at,
            format!(
                "more than {MAX_POLICY_VALUES} values (keys, list entries, tables) in one policy; two full lists of {MAX_LIST_PREFIXES} prefixes take about 2.1 million"
            ),
        ));
    }
    let raw: RawPolicy = toml::from_str(text).map_err(|e| toml_error(&cx, &e))?;

    let defaults = match &raw.defaults {
        Some(d) => Some(cx.table(d, "defaults")?.value),
        None => None,
    };
    let mode = match defaults.and_then(|d| d.mode.as_ref()) {
        Some(m) => parse_mode(&cx, m)?,
        None => Mode::Enforce,
    };
    let ipv4_prefix = match defaults.and_then(|d| d.ipv4_prefix.as_ref()) {
        Some(p) => prefix(&cx, p, "ipv4_prefix", 32)?,
        None => 32,
    };
    let ipv6_prefix = match defaults.and_then(|d| d.ipv6_prefix.as_ref()) {
        Some(p) => prefix(&cx, p, "ipv6_prefix", 128)?,
        None => 64,
    };
    let max_sources = match defaults.and_then(|d| d.max_sources.as_ref()) {
        Some(m) => {
            let m = cx.get(m, "max_sources", WHOLE)?;
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
    let verified_ttl = match defaults.and_then(|d| d.verified_ttl.as_ref()) {
        Some(t) => duration(&cx, t, "verified_ttl", Duration::from_secs(1))?,
        None => Duration::from_nanos(shield_common::DEFAULT_VERIFIED_TTL_NS),
    };

    // The shortest prefix a manual ban may cover without --force (0: any).
    let min_ban_ipv4_prefix = match defaults.and_then(|d| d.min_ban_ipv4_prefix.as_ref()) {
        Some(p) => ban_floor(&cx, p, "min_ban_ipv4_prefix", 32)?,
        None => 8,
    };
    let min_ban_ipv6_prefix = match defaults.and_then(|d| d.min_ban_ipv6_prefix.as_ref()) {
        Some(p) => ban_floor(&cx, p, "min_ban_ipv6_prefix", 128)?,
        None => 32,
    };

    let (allow, deny) = match &raw.lists {
        Some(l) => {
            let l = cx.table(l, "lists")?.value;
            (
                cidrs(&cx, l.allow.as_ref(), "allow")?,
                cidrs(&cx, l.deny.as_ref(), "deny")?,
            )
        }
        None => (Vec::new(), Vec::new()),
    };

    let raw_rules: &[Field<RawRule>] = match &raw.rule {
        None => &[],
        Some(r) => match r.get_ref() {
            Typed::Ok(v) => v,
            Typed::Wrong(Found::Table) => {
                return Err(cx.err(
                    r.span(),
                    "`[rule]` must be `[[rule]]`: each rule is a `[[rule]]` table of its own",
                ));
            }
            Typed::Wrong(found) => {
                return Err(cx.err(
                    r.span(),
                    format!("`rule` must be written as `[[rule]]` tables, got {found}"),
                ));
            }
        },
    };
    if raw_rules.len() > MAX_RULES as usize {
        let span = raw_rules[MAX_RULES as usize].span();
        return Err(cx.err(span, format!("at most {MAX_RULES} rules are supported")));
    }
    let mut rules: Vec<Rule> = Vec::with_capacity(raw_rules.len());
    // Which rule claimed each (protocol, port): overlapping claims are errors.
    let mut claims: Vec<(Protocol, PortRange, usize)> = Vec::new();
    let mut names = HashSet::new();
    for spanned in raw_rules {
        let r = cx.get(spanned, "each rule", "a table (`[[rule]]`)")?.value;
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

    let fleet = match &raw.fleet {
        Some(f) => Some(super::fleet::parse(
            &|span, m| cx.err(span, m),
            cx.table(f, "fleet")?.value,
        )?),
        None => None,
    };

    let app = match &raw.app {
        Some(a) => Some(app::app(&cx, a)?),
        None => None,
    };
    let mut seen = HashSet::new();
    let endpoints = app::tables(&cx, raw.endpoint.as_ref(), "endpoint")?
        .iter()
        .map(|e| app::endpoint(&cx, e, &mut seen))
        .collect::<Result<Vec<_>, _>>()?;
    let mut seen = HashSet::new();
    let signals = app::tables(&cx, raw.signal.as_ref(), "signal")?
        .iter()
        .map(|s| app::signal(&cx, s, &mut seen))
        .collect::<Result<Vec<_>, _>>()?;
    if app.is_none() {
        let first = match (&raw.endpoint, &raw.signal) {
            (Some(e), _) if !endpoints.is_empty() => Some((e.span(), "endpoint")),
            (_, Some(s)) if !signals.is_empty() => Some((s.span(), "signal")),
            _ => None,
        };
        if let Some((span, kind)) = first {
            return Err(cx.err(
                span,
                format!(
                    "[[{kind}]] tables need an `[app]` table: it names the app socket `shield run` serves them on"
                ),
            ));
        }
    }

    Ok(Policy {
        app,
        endpoints,
        signals,
        fleet,
        mode,
        ipv4_prefix,
        ipv6_prefix,
        max_sources,
        verified_ttl,
        min_ban_ipv4_prefix,
        min_ban_ipv6_prefix,
        allow,
        deny,
        rules,
    })
}

fn ban_floor(cx: &Ctx, p: &Field<i64>, key: &str, max: i64) -> Result<u8, PolicyError> {
    let p = cx.get(p, key, &format!("a whole number from 0 to {max}"))?;
    let v = *p.get_ref();
    if !(0..=max).contains(&v) {
        return Err(cx.err(
            p.span(),
            format!("{key} must be between 0 and {max}, got {v}"),
        ));
    }
    Ok(v as u8)
}

fn parse_mode(cx: &Ctx, m: &Field<String>) -> Result<Mode, PolicyError> {
    const MODES: &str = "\"enforce\" or \"monitor\"";
    let m = cx.get(m, "mode", MODES)?;
    match m.get_ref().as_str() {
        "enforce" => Ok(Mode::Enforce),
        "monitor" => Ok(Mode::Monitor),
        other => Err(cx.err(
            m.span(),
            format!("mode must be {MODES}, got {}", quote(other)),
        )),
    }
}

fn prefix(cx: &Ctx, p: &Field<i64>, key: &str, max: i64) -> Result<u8, PolicyError> {
    let p = cx.get(p, key, &format!("a whole number from 1 to {max}"))?;
    let v = *p.get_ref();
    if !(1..=max).contains(&v) {
        return Err(cx.err(
            p.span(),
            format!("{key}: prefix length must be between 1 and {max}, got {v}"),
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
        (None, OverLimit::Reset) => Ok((chosen, Some(super::DEFAULT_RESETS))),
        (None, OverLimit::Drop) => Ok((chosen, None)),
    }
}

/// Parses `500ms`, `10s`, `5m` (or `5min`), `1h`, `1d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| "missing unit (ms, s, m or min, h or d)".to_string())?;
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
        _ => return Err(format!("unknown unit `{unit}` (ms, s, m or min, h or d)")),
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
    s: &Field<String>,
    what: &str,
    min: Duration,
) -> Result<Duration, PolicyError> {
    let s = cx.get(s, what, DURATION)?;
    let max = Duration::from_nanos(shield_common::judge::MAX_BAN_NS);
    let d = parse_duration(s.get_ref()).map_err(|why| {
        cx.err(
            s.span(),
            format!("{what}: {why}: expected a duration like \"500ms\", \"30s\", \"5m\", \"1h\" or \"1d\", got {}", quote(s.get_ref())),
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

fn rate(cx: &Ctx, s: &Field<String>, key: &str) -> Result<Rate, PolicyError> {
    let s = cx.get(s, key, RATE)?;
    let text = s.get_ref().trim();
    let bad = |why: &str| {
        cx.err(
            s.span(),
            format!(
                "{why}: expected a rate like \"20/s\", \"600/min\", \"1000/h\" or \"10000/d\", got {}",
                quote(text)
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
        "d" => 86_400,
        _ => return Err(bad("the unit must be s, min, h or d")),
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
    let r = rate(cx, &l.rate, "rate")?;
    let burst = match &l.burst {
        Some(b) => {
            let b = cx.get(b, "burst", WHOLE)?;
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
            let sr = rate(cx, s, "sustained")?;
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

fn cidrs(
    cx: &Ctx,
    items: Option<&Field<Vec<Field<String>>>>,
    list: &str,
) -> Result<Vec<Cidr>, PolicyError> {
    let items: &[Field<String>] = match items {
        Some(items) => {
            cx.get(
                items,
                list,
                "a list like [\"192.0.2.0/24\", \"2001:db8::/32\"]",
            )?
            .value
        }
        None => &[],
    };
    if items.len() > MAX_LIST_PREFIXES as usize {
        return Err(cx.err(
            items[MAX_LIST_PREFIXES as usize].span(),
            format!("the {list} list holds at most {MAX_LIST_PREFIXES} prefixes"),
        ));
    }
    let mut seen = HashSet::with_capacity(items.len());
    let mut out = Vec::with_capacity(items.len());
    const CIDR: &str = "an address or CIDR like \"192.0.2.0/24\" or \"2001:db8::/32\"";
    for item in items {
        let item = cx.get(item, &format!("each entry of the {list} list"), CIDR)?;
        let c = parse_cidr(item.get_ref()).map_err(|why| {
            cx.err(
                item.span(),
                format!(
                    "{list} list: {why}: expected {CIDR}, got {}",
                    quote(item.get_ref())
                ),
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
        // Digits only, no leading zero: `/08` (octal to some tools) and `/+8` are refused.
        Some(l) => Some(l)
            .filter(|l| l.bytes().all(|b| b.is_ascii_digit()) && (l == &"0" || !l.starts_with('0')))
            .and_then(|l| l.parse::<u8>().ok())
            .filter(|l| *l <= max)
            .ok_or_else(|| format!("prefix length must be 0 to {max} (digits, no leading zero)"))?,
        None => max,
    };
    let masked = mask_ip(addr, len);
    if masked != addr {
        return Err(format!("host bits are set (did you mean {masked}/{len}?)"));
    }
    // IPv4-mapped IPv6 (::ffff:a.b.c.d) never reaches XDP as such: IPv4 traffic arrives as
    // IPv4. A list entry or a ban there would match nothing.
    if let IpAddr::V6(a) = addr
        && len >= 96
        && a.to_ipv4_mapped().is_some()
    {
        let v4 = a
            .to_ipv4_mapped()
            .map(|v| v.to_string())
            .unwrap_or_default();
        return Err(format!(
            "an IPv4-mapped IPv6 address never matches (IPv4 traffic arrives as IPv4): write it as IPv4, {v4}/{}",
            len - 96
        ));
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

/// The smallest and largest value of an integer key, for "KEY must be at most …" when the
/// number is too large for TOML itself.
fn integer_range(key: &str) -> Option<(i64, i64)> {
    Some(match key {
        "ipv4_prefix" => (1, 32),
        "ipv6_prefix" => (1, 128),
        "max_sources" => (MIN_MAX_SOURCES, MAX_MAX_SOURCES),
        "burst" => (1, MAX_BURST as i64),
        "strikes" => (1, MAX_STRIKES),
        "backoff" => (1, i64::from(shield_common::judge::MAX_BACKOFF)),
        "ports" => (1, i64::from(u16::MAX)),
        _ => return None,
    })
}

/// The bare key assigned just before byte `at` (`burst = 9999…` → `burst`), if any.
fn key_before(text: &str, at: usize) -> Option<&str> {
    let mut at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    let before = text[..at].trim_end_matches([' ', '\t', '-', '+']);
    // Inside a list (`ports = [80, 99999…]`): the key the list belongs to.
    let before = before.trim_end_matches(|c: char| c != '=' && c != '\n' && c != '{');
    let before = before.strip_suffix('=')?.trim_end_matches([' ', '\t']);
    let start = before
        .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
        .map_or(0, |i| i + 1);
    let key = &before[start..];
    (!key.is_empty()).then_some(key)
}

/// Shortens every `…`-quoted piece of a TOML parser message (it may quote input, such as
/// a duplicate key) to 64 characters, `…` and its length, and escapes control characters.
fn shorten_backticked(message: &str) -> String {
    let mut out = String::new();
    let mut after_quote = String::new();
    for (i, piece) in message.split('`').enumerate() {
        if i > 0 {
            out.push('`');
            out.push_str(&after_quote);
            after_quote.clear();
        }
        if i % 2 == 0 {
            out.push_str(piece);
            continue;
        }
        let shown = match piece.char_indices().nth(64) {
            Some((at, _)) => {
                after_quote = format!(" ({} bytes)", piece.len());
                &piece[..at]
            }
            None => piece,
        };
        out.extend(shown.chars().flat_map(char::escape_debug));
        if !after_quote.is_empty() {
            out.push('…');
        }
    }
    out
}

/// A key name for a message: `name`, or quoted and shortened if it is long or odd.
fn key_text(key: &str) -> String {
    if key.len() <= 64 && key.chars().all(|c| !c.is_control() && c != '`') {
        format!("`{key}`")
    } else {
        quote(key)
    }
}

/// The `[[TABLE]]` whose header comes last before byte `at` (`rule`, `endpoint`, …).
fn table_before(text: &str, at: usize) -> Option<&str> {
    let mut at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    text[..at]
        .lines()
        .rev()
        .map(str::trim)
        .find_map(|l| l.strip_prefix("[[").and_then(|r| r.split_once("]]")))
        .map(|(name, _)| name.trim())
}

/// A TOML or serde error in the words of the policy file.
fn toml_error(cx: &Ctx, e: &toml::de::Error) -> PolicyError {
    let span = e.span().unwrap_or(0..0);
    let message = e.message().trim();
    let words = if let Some(rest) = message.strip_prefix("unknown field `") {
        // "unknown field `KEY`, expected one of `a`, `b`": KEY may be anything.
        let (key, expected) = match rest.rfind("`, expected ") {
            Some(i) => (&rest[..i], &rest[i + "`, expected ".len()..]),
            None => (rest.trim_end_matches('`'), "no keys here"),
        };
        if key == "$__toml_private_datetime" {
            // A date where a table goes reaches the table's own fields as this private key.
            match key_before(cx.text, span.start) {
                Some(k) => format!("{} must be a table, got a date", key_text(k)),
                None => "a date is not valid here; expected a table".to_string(),
            }
        } else {
            // The wording serde uses (and scripts and tests may match): the keys are named.
            format!("unknown field {}, expected {expected}", key_text(key))
        }
    } else if let Some(rest) = message.strip_prefix("missing field `") {
        let key = rest.trim_end_matches('`');
        match (key, table_before(cx.text, span.end)) {
            ("name", Some(kind @ ("endpoint" | "signal"))) => {
                format!("this `[[{kind}]]` has no `name`; every {kind} needs a unique `name`")
            }
            ("path", _) => {
                "this `[[endpoint]]` has no `path`; give a Flask rule like \"/login\" or a prefix like \"/api/*\"".to_string()
            }
            ("limit", _) => {
                "this table has no `limit`; every `[[endpoint]]` and `[[signal]]` needs one like { rate = \"5/min\", burst = 5 }".to_string()
            }
            ("name" | "protocol", _) => {
                format!("this `[[rule]]` has no `{key}`; every rule needs `name` and `protocol`")
            }
            ("rate", _) => "this limit has no `rate`; a limit needs a rate like \"5/s\"".to_string(),
            ("strikes" | "window" | "ban", _) => format!(
                "this `escalation` has no `{key}`; `strikes`, `window` and `ban` are required"
            ),
            _ => format!("missing key `{key}`"),
        }
    } else if message.contains("number too large to fit")
        || message.contains("number too small to fit")
    {
        let large = message.contains("too large");
        let key = key_before(cx.text, span.start);
        match key.and_then(|k| integer_range(k).map(|range| (k, range))) {
            Some(("ports", _)) => "a port must be between 1 and 65535".to_string(),
            Some((k, (_, max))) if large => format!("{k} must be at most {max}"),
            Some((k, (min, _))) => format!("{k} must be at least {min}"),
            None => format!(
                "{}this number is out of range (whole numbers in a policy are {} {})",
                key.map_or(String::new(), |k| format!("{}: ", key_text(k))),
                if large { "at most" } else { "at least" },
                if large { i64::MAX } else { i64::MIN }
            ),
        }
    } else if message == "recursion limit exceeded" {
        "lists or tables are nested too deep".to_string()
    } else {
        shorten_backticked(&message.replace('\n', "; "))
    };
    cx.err(span, words)
}
