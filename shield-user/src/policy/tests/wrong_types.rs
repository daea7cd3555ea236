//! Values of the wrong type, numbers out of range and long input: explained in user
//! words, never in serde's or TOML's.

use super::*;

/// (case, policy text, line of the error, words the message must hold)
fn wrong_types() -> Vec<(&'static str, String, usize, &'static str)> {
    let rule = |line: &str| format!("{TCP}{line}\n");
    let limit = |inner: &str| rule(&format!("connections = {{ rate = '5/s', {inner} }}"));
    let esc = |inner: &str| {
        rule(&format!(
            "connections = {{ rate = '5/s' }}\nescalation = {{ {inner} }}"
        ))
    };
    let esc_line = 5;
    vec![
        // [defaults]
        (
            "mode as a number",
            "[defaults]\nmode = 1\n".into(),
            2,
            "mode must be \"enforce\" or \"monitor\", got the number 1",
        ),
        (
            "ipv4_prefix as text",
            "[defaults]\nipv4_prefix = '24'\n".into(),
            2,
            "ipv4_prefix must be a whole number from 1 to 32, got the text \"24\"",
        ),
        (
            "ipv4_prefix as a decimal",
            "[defaults]\nipv4_prefix = 24.5\n".into(),
            2,
            "ipv4_prefix must be a whole number from 1 to 32, got the decimal number 24.5",
        ),
        (
            "ipv6_prefix as a bool",
            "[defaults]\nipv6_prefix = true\n".into(),
            2,
            "ipv6_prefix must be a whole number from 1 to 128, got `true`",
        ),
        (
            "ipv6_prefix huge",
            "[defaults]\nipv6_prefix = 99999999999999999999\n".into(),
            2,
            "ipv6_prefix must be at most 128",
        ),
        (
            "ipv4_prefix negative",
            "[defaults]\nipv4_prefix = -1\n".into(),
            2,
            "ipv4_prefix: prefix length must be between 1 and 32, got -1",
        ),
        (
            "max_sources as text",
            "[defaults]\nmax_sources = '1M'\n".into(),
            2,
            "max_sources must be a whole number, got the text \"1M\"",
        ),
        (
            "max_sources as a decimal",
            "[defaults]\nmax_sources = 1e6\n".into(),
            2,
            "max_sources must be a whole number, got the decimal number 1000000.0",
        ),
        (
            "max_sources huge",
            "[defaults]\nmax_sources = 18446744073709551616\n".into(),
            2,
            "max_sources must be at most 16777216",
        ),
        (
            "max_sources hugely negative",
            "[defaults]\nmax_sources = -18446744073709551616\n".into(),
            2,
            "max_sources must be at least 64",
        ),
        (
            "max_sources negative",
            "[defaults]\nmax_sources = -5\n".into(),
            2,
            "max_sources must be between 64 and 16777216, got -5",
        ),
        (
            "verified_ttl as a number",
            "[defaults]\nverified_ttl = 900\n".into(),
            2,
            "verified_ttl must be a duration in quotes, like \"30s\", got the number 900",
        ),
        (
            "defaults as an array of tables",
            "[[defaults]]\nmode = 'enforce'\n".into(),
            1,
            "`[[defaults]]` must be `[defaults]`",
        ),
        (
            "defaults as text",
            "defaults = 'strict'\n".into(),
            1,
            "defaults must be a table (`[defaults]`), got the text \"strict\"",
        ),
        (
            "defaults as a date",
            "defaults = 2024-01-01\n".into(),
            1,
            "`defaults` must be a table, got a date",
        ),
        // [lists]
        (
            "lists as an array of tables",
            "[[lists]]\nallow = []\n".into(),
            1,
            "`[[lists]]` must be `[lists]`",
        ),
        (
            "allow as text",
            "[lists]\nallow = '10.0.0.0/8'\n".into(),
            2,
            "allow must be a list like [\"192.0.2.0/24\", \"2001:db8::/32\"], got the text \"10.0.0.0/8\"",
        ),
        (
            "deny as a table",
            "[lists]\ndeny = { a = 1 }\n".into(),
            2,
            "deny must be a list like",
        ),
        (
            "allow entry as a number",
            "[lists]\nallow = [10]\n".into(),
            2,
            "each entry of the allow list must be an address or CIDR like \"192.0.2.0/24\" or \"2001:db8::/32\", got the number 10",
        ),
        (
            "deny entry as a list",
            "[lists]\ndeny = [['10.0.0.0/8']]\n".into(),
            2,
            "each entry of the deny list must be an address or CIDR like \"192.0.2.0/24\" or \"2001:db8::/32\", got a list",
        ),
        // [[rule]]
        (
            "[rule] for [[rule]]",
            "[rule]\nname = 'a'\nprotocol = 'tcp'\n".into(),
            1,
            "`[rule]` must be `[[rule]]`",
        ),
        // `[rule]` beside `[[rule]]`: the mistake's line, whichever comes first (the TOML
        // parser points at the second header, "duplicate key `rule` in document root").
        (
            "[rule] before a [[rule]]",
            "[rule]\nname = 'a'\nprotocol = 'tcp'\n\n[[rule]]  # b\nname = 'b'\nprotocol = 'udp'\n".into(),
            1,
            "`[rule]` must be `[[rule]]`: each rule is a `[[rule]]` table of its own",
        ),
        (
            "[rule] after a [[rule]]",
            format!("{TCP}\n  [rule] # b\nname = 'b'\nprotocol = 'udp'\n"),
            5,
            "`[rule]` must be `[[rule]]`",
        ),
        (
            "[endpoint] before an [[endpoint]]",
            "[app]\nsocket = '/run/a.sock'\n[endpoint]\nname = 'a'\npath = '/a'\nlimit = { rate = '5/s' }\n[[endpoint]]\nname = 'b'\npath = '/b'\nlimit = { rate = '5/s' }\n".into(),
            3,
            "`[endpoint]` must be `[[endpoint]]`",
        ),
        (
            "[lists] twice",
            "[lists]\nallow = []\n\n[lists]\ndeny = []\n".into(),
            4,
            "`[lists]` is given twice (first on line 1): there is one lists table",
        ),
        (
            "[[defaults]] after [defaults]",
            "[defaults]\nmode = 'monitor'\n[[defaults]]\n".into(),
            3,
            "`[[defaults]]` must be `[defaults]`: there is one defaults table",
        ),
        (
            "rule as text",
            "rule = 'api'\n".into(),
            1,
            "`rule` must be written as `[[rule]]` tables, got the text \"api\"",
        ),
        (
            "rule as a list of numbers",
            "rule = [1]\n".into(),
            1,
            "each rule must be a table (`[[rule]]`), got the number 1",
        ),
        (
            "name as a number",
            "[[rule]]\nname = 7\nprotocol = 'tcp'\n".into(),
            2,
            "name must be text in quotes like \"api\", got the number 7",
        ),
        (
            "protocol as a list",
            "[[rule]]\nname = 'a'\nprotocol = ['tcp']\n".into(),
            3,
            "protocol must be \"tcp\", \"udp\" or \"icmp\", got a list",
        ),
        (
            "ports as text",
            rule("ports = '80'"),
            4,
            "ports must be a list like [80, \"9000-9099\"], got the text \"80\"",
        ),
        (
            "ports as a number",
            rule("ports = 80"),
            4,
            "ports must be a list like [80, \"9000-9099\"], got the number 80",
        ),
        (
            "port as a table",
            rule("ports = [{ port = 80 }]"),
            4,
            "expected a port (1-65535) or a range \"first-last\", got a table",
        ),
        (
            "port as a bool",
            rule("ports = [true]"),
            4,
            "expected a port (1-65535) or a range \"first-last\", got `true`",
        ),
        (
            "port negative",
            rule("ports = [-1]"),
            4,
            "expected a port (1-65535) or a range \"first-last\", got -1",
        ),
        (
            "port huge",
            rule("ports = [80, 99999999999999999999]"),
            4,
            "a port must be between 1 and 65535",
        ),
        (
            "mode as a bool",
            rule("mode = true"),
            4,
            "mode must be \"enforce\" or \"monitor\", got `true`",
        ),
        (
            "rule ipv4_prefix as a decimal",
            rule("ipv4_prefix = 24.0"),
            4,
            "ipv4_prefix must be a whole number from 1 to 32, got the decimal number 24.0",
        ),
        (
            "connections as text",
            rule("connections = '5/s'"),
            4,
            "connections must be a table like { rate = \"5/s\", burst = 10 }, got the text \"5/s\"",
        ),
        (
            "connections as a date",
            rule("connections = 2024-01-01T00:00:00Z"),
            4,
            "`connections` must be a table, got a date",
        ),
        (
            "packets as a number",
            rule("packets = 100"),
            4,
            "packets must be a table like { rate = \"5/s\", burst = 10 }, got the number 100",
        ),
        (
            "unverified as a list",
            rule("unverified = ['10/s']"),
            4,
            "unverified must be a table like { rate = \"5/s\", burst = 10 }, got a list",
        ),
        (
            "escalation as text",
            rule("connections = { rate = '5/s' }\nescalation = 'ban'"),
            5,
            "escalation must be a table like { strikes = 3, window = \"1m\", ban = \"30s\" }, got the text \"ban\"",
        ),
        (
            "challenge as a bool",
            rule("challenge = true"),
            4,
            "challenge must be text in quotes, got `true`",
        ),
        (
            "rule without protocol",
            "[[rule]]\nname = 'a'\n".into(),
            1,
            "this `[[rule]]` has no `protocol`",
        ),
        // limits
        (
            "rate as a number",
            limit("burst = 1").replace("rate = '5/s'", "rate = 5"),
            4,
            "rate must be a rate in quotes, like \"5/s\", got the number 5",
        ),
        (
            "limit without rate",
            rule("packets = { burst = 5 }"),
            4,
            "this limit has no `rate`",
        ),
        (
            "burst as a decimal",
            limit("burst = 2.5"),
            4,
            "burst must be a whole number, got the decimal number 2.5",
        ),
        (
            "burst as text",
            limit("burst = '10'"),
            4,
            "burst must be a whole number, got the text \"10\"",
        ),
        (
            "burst as a bool",
            limit("burst = false"),
            4,
            "burst must be a whole number, got `false`",
        ),
        (
            "burst infinite",
            limit("burst = inf"),
            4,
            "burst must be a whole number, got the decimal number inf",
        ),
        (
            "burst huge",
            limit("burst = 99999999999999999999"),
            4,
            "burst must be at most 100000000",
        ),
        (
            "burst hugely negative",
            limit("burst = -99999999999999999999"),
            4,
            "burst must be at least 1",
        ),
        (
            "burst negative",
            limit("burst = -3"),
            4,
            "burst must be between 1 and 100000000, got -3",
        ),
        (
            "sustained as a number",
            limit("sustained = 100"),
            4,
            "sustained must be a rate in quotes, like \"5/s\", got the number 100",
        ),
        // escalation
        (
            "strikes as text",
            esc("strikes = '3', window = '1m', ban = '30s'"),
            esc_line,
            "strikes must be a whole number, got the text \"3\"",
        ),
        (
            "strikes as a decimal",
            esc("strikes = 3.0, window = '1m', ban = '30s'"),
            esc_line,
            "strikes must be a whole number, got the decimal number 3.0",
        ),
        (
            "strikes huge",
            esc("strikes = 99999999999999999999, window = '1m', ban = '30s'"),
            esc_line,
            "strikes must be at most 1000",
        ),
        (
            "strikes negative",
            esc("strikes = -2, window = '1m', ban = '30s'"),
            esc_line,
            "strikes must be between 1 and 1000, got -2",
        ),
        (
            "window as a number",
            esc("strikes = 3, window = 60, ban = '30s'"),
            esc_line,
            "window must be a duration in quotes, like \"30s\", got the number 60",
        ),
        (
            "ban as a bool",
            esc("strikes = 3, window = '1m', ban = true"),
            esc_line,
            "ban must be a duration in quotes, like \"30s\", got `true`",
        ),
        (
            "backoff as a decimal",
            esc("strikes = 3, window = '1m', ban = '30s', backoff = 1.5"),
            esc_line,
            "backoff must be a whole number, got the decimal number 1.5",
        ),
        (
            "backoff huge",
            esc("strikes = 3, window = '1m', ban = '30s', backoff = 99999999999999999999"),
            esc_line,
            "backoff must be at most 16",
        ),
        (
            "max_ban as a number",
            esc("strikes = 3, window = '1m', ban = '30s', max_ban = 3600"),
            esc_line,
            "max_ban must be a duration in quotes, like \"30s\", got the number 3600",
        ),
        (
            "forget as a list",
            esc("strikes = 3, window = '1m', ban = '30s', forget = ['1d']"),
            esc_line,
            "forget must be a duration in quotes, like \"30s\", got a list",
        ),
        (
            "scope as a number",
            esc("strikes = 3, window = '1m', ban = '30s', scope = 1"),
            esc_line,
            "scope must be \"rule\" (the rule's ports) or \"host\" (everything from the source), got the number 1",
        ),
        (
            "escalation without window",
            esc("strikes = 3, ban = '30s'"),
            esc_line,
            "this `escalation` has no `window`",
        ),
        // text without quotes, and a key without a value (TOML said "invalid string")
        (
            "mode without quotes",
            "[defaults]\nmode = monitor\n".into(),
            2,
            "`monitor` needs quotes",
        ),
        (
            "a burst written as a word",
            limit("burst = ten"),
            4,
            "`ten` needs quotes",
        ),
        (
            "mode with nothing after =",
            "[defaults]\nmode = \n".into(),
            2,
            "`mode` has no value after `=`",
        ),
        // numbers out of TOML's range where no key is known
        (
            "huge number under an unknown key",
            "colour = 99999999999999999999\n".into(),
            1,
            "`colour`: this number is out of range",
        ),
    ]
}

/// serde and TOML words a policy author should never have to decode.
const JARGON: &[&str] = &[
    "invalid type",
    "invalid value",
    "expected i64",
    "i64",
    "u64",
    "u32",
    "u16",
    "u8",
    "sequence",
    "map",
    "struct",
    "Raw",
    "target type",
    "string",
    "float",
];

#[test]
fn wrong_types_and_numbers_are_explained_in_user_words() {
    let mut failures = Vec::new();
    for (case, text, line, needle) in wrong_types() {
        let e = match parse_str("bad.toml", &text) {
            Ok(_) => {
                failures.push(format!("{case}: accepted, should be rejected"));
                continue;
            }
            Err(e) => e,
        };
        let shown = e.to_string();
        if !shown.contains(needle) {
            failures.push(format!("{case}: message {shown:?} lacks {needle:?}"));
        }
        if e.line != line {
            failures.push(format!(
                "{case}: located on line {}, expected line {line} ({shown})",
                e.line
            ));
        }
        for word in JARGON {
            if e.message.contains(word) {
                failures.push(format!("{case}: message {shown:?} says {word:?}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn long_input_is_quoted_short() {
    let long = "x".repeat(10 << 20);
    for (case, text) in [
        (
            "rule name",
            TCP.replace("name='a'", &format!("name='{long}'")),
        ),
        ("mode", format!("[defaults]\nmode = '{long}'\n")),
        ("unknown key", format!("[defaults]\n{long} = 1\n")),
        ("unknown quoted key", format!("[defaults]\n'{long}' = 1\n")),
        ("duplicate key", format!("{long} = 1\n{long} = 2\n")),
        ("cidr", format!("[lists]\ndeny = ['{long}']\n")),
        ("port range", format!("{TCP}ports = ['{long}']\n")),
        ("rate", format!("{TCP}packets = {{ rate = '{long}' }}\n")),
        ("duration", format!("[defaults]\nverified_ttl = '{long}'\n")),
        (
            "text for a number",
            format!("[defaults]\nmax_sources = '{long}'\n"),
        ),
        (
            "unterminated string",
            format!("[defaults]\nmode = '{long}\n"),
        ),
    ] {
        let e = parse_str("bad.toml", &text).expect_err(case);
        let shown = e.to_string();
        assert!(
            shown.contains(&format!("{}…", &long[..64])) && shown.contains(" bytes)")
                || case == "unterminated string",
            "{case}: the value is cut after 64 characters, with its length: {shown}"
        );
        assert!(
            shown.len() < 400,
            "{case}: a 10 MB value must not be echoed whole; the error is {} bytes: {}…",
            shown.len(),
            &shown[..200]
        );
    }
    let e = parse_str(
        "bad.toml",
        &TCP.replace("name='a'", &format!("name='{long}'")),
    )
    .expect_err("long name");
    assert!(
        e.message
            .contains(&format!("\"{}…\" ({} bytes)", "x".repeat(64), long.len())),
        "the name is cut after 64 characters with its length: {e}"
    );
}
