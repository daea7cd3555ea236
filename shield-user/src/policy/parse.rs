//! TOML → `Policy`, with a file:line:column on every error.

mod app;
mod lists;
mod rule;
mod toml_error;
mod units;

use std::{collections::HashSet, ops::Range};

use serde::Deserialize;
use toml::Spanned;

use super::{
    Mode, Policy, PolicyError, PortRange, Protocol, Rule,
    value::{Found, Shape, Shaped, Typed, quote},
};
use lists::cidrs;
pub use lists::parse_cidr;
use rule::parse_rule;
use shield_common::{DEFAULT_MAX_SOURCES, MAX_LIST_PREFIXES, MAX_RULES};
use std::time::Duration;
use toml_error::toml_error;
use units::duration;
pub use units::{format_duration, parse_duration};

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
            message.truncate(message.floor_char_boundary(MESSAGE_MAX));
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
    let at = text.floor_char_boundary(at);
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
