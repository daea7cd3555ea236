//! The TOML parser's and serde's errors in the words of the policy file.

use std::ops::Range;

use super::{Ctx, MAX_BURST, MAX_MAX_SOURCES, MAX_STRIKES, MIN_MAX_SOURCES, line_col};
use crate::policy::{PolicyError, value::quote};

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
    let at = text.floor_char_boundary(at);
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
        // Only control characters are escaped: the parser's own `"` and `'` stay as they are
        // (`\"` in a message reads as a backslash the file should hold).
        for c in shown.chars() {
            if c.is_control() {
                out.extend(c.escape_debug());
            } else {
                out.push(c);
            }
        }
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
    let at = text.floor_char_boundary(at);
    text[..at]
        .lines()
        .rev()
        .map(str::trim)
        .find_map(|l| l.strip_prefix("[[").and_then(|r| r.split_once("]]")))
        .map(|(name, _)| name.trim())
}

/// The table headers of `key` in the text, in order: the header line's span and whether it
/// is an array header (`[[key]]`).
fn headers_of(text: &str, key: &str) -> Vec<(Range<usize>, bool)> {
    let mut found = Vec::new();
    let mut start = 0;
    for line in text.split_inclusive('\n') {
        let body = line.trim();
        let (inner, array) = match body.strip_prefix("[[") {
            Some(rest) => (rest.split_once("]]").map(|(name, _)| name), true),
            None => (
                body.strip_prefix('[')
                    .and_then(|rest| rest.split_once(']'))
                    .map(|(name, _)| name),
                false,
            ),
        };
        if inner.map(str::trim) == Some(key) {
            let indent = line.len() - line.trim_start().len();
            found.push((start + indent..start + line.trim_end().len(), array));
        }
        start += line.len();
    }
    found
}

/// The TOML parser's "invalid table header; duplicate key `KEY` in document root": a
/// `[rule]` beside `[[rule]]` (the parser points at whichever header comes second, which
/// may be the right one), or a one-of-a-kind table given twice.
fn duplicate_table(cx: &Ctx, message: &str, span: &Range<usize>) -> Option<PolicyError> {
    let rest = message.strip_prefix("invalid table header")?;
    let key = rest
        .split_once("duplicate key `")?
        .1
        .split_once("` in document root")?
        .0;
    let headers = headers_of(cx.text, key);
    if matches!(key, "rule" | "endpoint" | "signal") {
        let (single, _) = headers.iter().find(|(_, array)| !array)?;
        return Some(cx.err(
            single.clone(),
            format!("`[{key}]` must be `[[{key}]]`: each {key} is a `[[{key}]]` table of its own"),
        ));
    }
    if !matches!(key, "defaults" | "lists" | "app" | "fleet") {
        return None;
    }
    let here = headers.iter().find(|(h, _)| h.contains(&span.start));
    if let Some((_, true)) = here {
        return Some(cx.err(
            span.clone(),
            format!("`[[{key}]]` must be `[{key}]`: there is one {key} table"),
        ));
    }
    let (first, _) = headers.first()?;
    let (line, _) = line_col(cx.text, first.start);
    Some(cx.err(
        span.clone(),
        format!(
            "`[{key}]` is given twice (first on line {line}): there is one {key} table; put all its keys under one `[{key}]`"
        ),
    ))
}

/// Characters of a bare (unquoted) value as people write them: `monitor`, `5/s`, `15m`,
/// `10.0.0.0/8`, `2001:db8::/32`.
fn bare_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '/' | ':' | '-' | '_' | '+')
}

/// The brackets still open at the end of `text` (`[` of a list, `{` of an inline table),
/// innermost last; table headers, comments and quoted text are skipped. `None` when `text`
/// ends inside quoted text.
fn open_brackets(text: &str) -> Option<Vec<char>> {
    let (mut stack, mut quote, mut escaped) = (Vec::new(), None, false);
    let (mut comment, mut header, mut line_start) = (false, false, true);
    for c in text.chars() {
        if c == '\n' {
            (comment, header, line_start) = (false, false, true);
            continue;
        }
        let first = line_start && !c.is_whitespace();
        if !c.is_whitespace() {
            line_start = false;
        }
        match quote {
            Some(_) if escaped => escaped = false,
            Some('"') if c == '\\' => escaped = true,
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if comment || header => {}
            None => match c {
                '#' => comment = true,
                '"' | '\'' => quote = Some(c),
                '[' if first && stack.is_empty() => header = true,
                '[' | '{' => stack.push(c),
                ']' | '}' => {
                    stack.pop();
                }
                _ => {}
            },
        }
    }
    quote.is_none().then_some(stack)
}

/// A value the TOML parser could not read because it is text without quotes (`mode =
/// monitor`, `rate = 5/s`, `allow = [10.0.0.0/8]`), or a key with nothing after its `=`:
/// what to write instead. `None` when the error is elsewhere (a header, a key, a quote).
fn unquoted_value(text: &str, at: usize) -> Option<(Range<usize>, String)> {
    let at = text.floor_char_boundary(at);
    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let start = text[..at]
        .char_indices()
        .rev()
        .take_while(|&(_, c)| bare_char(c))
        .last()
        .map_or(at, |(i, _)| i);
    let end = text[at..]
        .find(|c: char| !bare_char(c))
        .map_or(text.len(), |i| at + i);
    let before = &text[line_start..start];
    let token = &text[start..end];
    let Some(stack) = open_brackets(&text[..start]) else {
        return None; // inside quoted text
    };
    let previous = before.trim_end_matches([' ', '\t']).chars().last();
    // After `=`, or an element of a list (`[` or `,` before it, or a line of its own).
    let value_place = previous == Some('=')
        || matches!(previous, None | Some('[' | ',')) && stack.last() == Some(&'[');
    if !value_place {
        return None;
    }
    if token.is_empty() {
        let rest = text[end..].trim_start_matches([' ', '\t']);
        let nothing = rest.is_empty() || rest.starts_with(['\n', '\r', '#']);
        if previous != Some('=') || !nothing {
            return None;
        }
        let key = key_before(text, at)?;
        return Some((
            at..at,
            format!(
                "{} has no value after `=`; give it one: quoted text like \"5/s\", a number, `true`, a list or a table",
                key_text(key)
            ),
        ));
    }
    // A number, a date or `true` is a value: the error is about something else.
    if toml::from_str::<toml::Table>(&format!("v = {token}")).is_ok() {
        return None;
    }
    Some((
        start..end,
        format!(
            "{} needs quotes: rates, durations, prefixes, modes and names are quoted text, like {}",
            key_text(token),
            quote(token)
        ),
    ))
}

/// Two slips the TOML parser words as "expected `.`, `=`" and "expected `.`, `]]`": a key
/// joined to its value by something other than `=` (`rate: "5/s"`, a YAML or JSON habit),
/// and a table header left open (`[[rule]`, `[defaults`). What to write instead.
fn syntax_hint(text: &str, message: &str, at: usize) -> Option<String> {
    let at = text.floor_char_boundary(at);
    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    if message.ends_with("expected `.`, `=`") {
        let before = text[..at].trim_end_matches([' ', '\t']);
        let start = before
            .char_indices()
            .rfind(|&(_, c)| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
            .map_or(0, |(i, c)| i + c.len_utf8())
            .max(line_start);
        let key = &before[start..];
        if key.is_empty() {
            return None;
        }
        let found = text[at..].chars().next().filter(|c| !c.is_whitespace());
        return Some(match found {
            Some(c @ (':' | '-' | '>')) => format!(
                "`{key}{c}` is not TOML: a key and its value are joined by `=` (`{key} = …`)"
            ),
            _ => format!("expected `=` after the key `{key}`"),
        });
    }
    let close = ["`]]`", "`]`"]
        .into_iter()
        .find(|c| message.starts_with("invalid table header") && message.ends_with(c))?;
    let line = text[line_start..].lines().next()?.trim();
    let opener = if close == "`]]`" { "[[" } else { "[" };
    let name = line.trim_start_matches('[').trim_end_matches(']').trim();
    if name.is_empty() || name.len() > 64 || !name.chars().all(|c| c.is_ascii_graphic()) {
        return None;
    }
    let closer = close.trim_matches('`');
    Some(format!(
        "the table header `{line}` is not closed: write `{opener}{name}{closer}`"
    ))
}

/// Slips inside a list, an inline table or quoted text, which the TOML parser words as
/// "invalid inline table; expected `}`", "invalid array; expected `]`" and "invalid basic
/// string": a missing comma, a comma before `}`, an inline table spread over lines (TOML
/// has none), a list or quoted text left open. What to write instead.
fn bracket_hint(text: &str, message: &str, at: usize) -> Option<String> {
    let at = text.floor_char_boundary(at);
    let rest = &text[at..];
    let next = rest.trim_start_matches([' ', '\t']).chars().next();
    let line_ends = matches!(next, None | Some('\n' | '\r' | '#'));
    // The item the parser stopped at, for "a comma is missing before …".
    let item = || {
        let word: String = rest
            .trim_start_matches([' ', '\t'])
            .chars()
            .take_while(|c| !matches!(c, ' ' | '\t' | '\n' | '\r' | ',' | ']' | '}' | '='))
            .take(32)
            .collect();
        (!word.is_empty()).then(|| key_text(&word))
    };
    match message {
        "invalid inline table\nexpected `}`" | "invalid inline table; expected `}`" => {
            let after_comma = rest
                .strip_prefix(',')
                .map(|r| r.trim_start_matches([' ', '\t']));
            if after_comma.is_some_and(|r| r.starts_with('}')) {
                return Some("a comma after the last key of an inline table is not TOML: remove the `,` before `}`".into());
            }
            if line_ends
                || after_comma.is_some_and(|r| r.is_empty() || r.starts_with(['\n', '\r', '#']))
            {
                return Some("an inline table `{ … }` must close with `}` on the line it opens on (TOML has no inline tables over several lines)".into());
            }
            item().map(|i| {
                format!("a comma is missing before {i}: the keys of an inline table are separated by `,`")
            })
        }
        "invalid array\nexpected `]`" | "invalid array; expected `]`" => {
            if rest.trim().is_empty() {
                return Some("a list `[ … ]` is not closed: add `]` after its last item".into());
            }
            item().map(|i| {
                format!("a comma is missing before {i}: the items of a list are separated by `,`")
            })
        }
        "invalid basic string" | "invalid literal string" if line_ends => {
            Some("quoted text must close on the line it opens on: add the closing quote".into())
        }
        _ => None,
    }
}

/// A TOML or serde error in the words of the policy file.
pub(super) fn toml_error(cx: &Ctx, e: &toml::de::Error) -> PolicyError {
    let span = e.span().unwrap_or(0..0);
    let message = e.message().trim();
    if let Some(e) = duplicate_table(cx, message, &span) {
        return e;
    }
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
    } else if let Some((at, words)) = unquoted_value(cx.text, span.start) {
        return cx.err(at, words);
    } else if let Some(words) = syntax_hint(cx.text, message, span.start) {
        words
    } else if let Some(words) = bracket_hint(cx.text, message, span.start) {
        words
    } else {
        shorten_backticked(&message.replace('\n', "; "))
    };
    cx.err(span, words)
}
