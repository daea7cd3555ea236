//! Every class of bad input, with the file:line:column and the words the user sees.

use super::*;

/// (case, policy text, line, column, part of the message)
const BAD: &[(&str, &str, usize, usize, &str)] = &[
    (
        "unverified on udp",
        "[[rule]]\nname='d'\nprotocol='udp'\nunverified={rate='10/s'}\n",
        4,
        12,
        "only valid on tcp rules",
    ),
    (
        "unverified with sustained",
        "[[rule]]\nname='a'\nprotocol='tcp'\nunverified={rate='10/s', sustained='5/s'}\n",
        4,
        36,
        "no `sustained`",
    ),
    (
        "unverified bad rate",
        "[[rule]]\nname='a'\nprotocol='tcp'\nunverified={rate='fast'}\n",
        4,
        18,
        "rate",
    ),
    (
        "syncookie challenge without a budget",
        "[[rule]]\nname='a'\nprotocol='tcp'\nchallenge='syncookie'\n",
        4,
        11,
        "give the rule an `unverified` budget",
    ),
    (
        "syncookie challenge on a udp rule",
        "[[rule]]\nname='a'\nprotocol='udp'\nchallenge='syncookie'\n",
        4,
        11,
        "only valid on tcp rules (with an `unverified` budget), not udp",
    ),
    (
        "unknown challenge",
        "[[rule]]\nname='a'\nprotocol='tcp'\nunverified={rate='10/s'}\nchallenge='captcha'\n",
        5,
        11,
        "unknown challenge \"captcha\"",
    ),
    (
        "mss without the challenge",
        "[[rule]]\nname='a'\nprotocol='tcp'\nunverified={rate='10/s'}\nmss=1460\n",
        5,
        5,
        "needs that challenge",
    ),
    (
        "mss out of range",
        "[[rule]]\nname='a'\nprotocol='tcp'\nunverified={rate='10/s'}\nchallenge='syncookie'\nmss=100\n",
        6,
        5,
        "between 536 and 9000",
    ),
    (
        "verified_ttl too short",
        "[defaults]\nverified_ttl='10ms'\n",
        2,
        14,
        "verified_ttl must be between",
    ),
    (
        "toml syntax: a table header left open",
        "[defaults\nmode='enforce'",
        1,
        10,
        "the table header `[defaults` is not closed: write `[defaults]`",
    ),
    // Text without quotes (TOML's own words were "invalid string; expected `\"`, `\'`"),
    // pointed at where the value starts.
    (
        "unquoted mode",
        "[defaults]\nmode = monitor\n",
        2,
        8,
        "`monitor` needs quotes: rates, durations, prefixes, modes and names are quoted text, like \"monitor\"",
    ),
    (
        "unquoted rate in an inline table",
        "[[rule]]\nname='a'\nprotocol='tcp'\nconnections = { rate = 5/s }\n",
        4,
        24,
        "`5/s` needs quotes",
    ),
    (
        "unquoted duration before a comment",
        "[defaults]\nverified_ttl = 15m # proofs\n",
        2,
        16,
        "`15m` needs quotes",
    ),
    (
        "unquoted prefix after a quoted one",
        "[lists]\nallow = [\"10.1.0.0/16\", 10.0.0.0/8]\n",
        2,
        25,
        "`10.0.0.0/8` needs quotes",
    ),
    (
        "unquoted prefix on a line of a long list",
        "[lists]\ndeny = [\n  \"203.0.113.0/24\", # [ \"\n  2001:db8::/32,\n]\n",
        4,
        3,
        "`2001:db8::/32` needs quotes",
    ),
    (
        "a key joined to its value by a colon",
        "[[rule]]\nname='a'\nprotocol='tcp'\nconnections = { rate: \"5/s\", burst = 10 }\n",
        4,
        21,
        "`rate:` is not TOML: a key and its value are joined by `=` (`rate = …`)",
    ),
    (
        "a top-level key joined by a colon",
        "[defaults]\nmode: \"monitor\"\n",
        2,
        5,
        "`mode:` is not TOML",
    ),
    (
        "an array table header left open",
        "[[rule]\nname = 'a'\n",
        1,
        7,
        "the table header `[[rule]` is not closed: write `[[rule]]`",
    ),
    (
        "a key with nothing after =",
        "[defaults]\nmode =\n",
        2,
        7,
        "`mode` has no value after `=`",
    ),
    (
        "the parser's quote characters as they are, never backslashed",
        "[defaults]\nmode = \"a\\qb\"\n",
        2,
        12,
        "invalid escape sequence; expected `b`, `f`, `n`, `r`, `t`, `u`, `U`, `\\`, `\"`",
    ),
    (
        "unknown top-level key",
        "colour = 1\n",
        1,
        1,
        "unknown field `colour`, expected one of `defaults`, `lists`, `rule`",
    ),
    (
        "unknown defaults key",
        "[defaults]\nmod = 'enforce'\n",
        2,
        1,
        "unknown field `mod`",
    ),
    (
        "unknown rule key",
        "[[rule]]\nname='a'\nprotocol='tcp'\nport=[80]\n",
        4,
        1,
        "unknown field `port`",
    ),
    (
        "unknown limit key",
        "[[rule]]\nname='a'\nprotocol='tcp'\nconnections={rate='1/s', brust=3}\n",
        4,
        26,
        "unknown field `brust`",
    ),
    (
        "bad mode",
        "[defaults]\nmode = 'block'\n",
        2,
        8,
        "mode must be \"enforce\" or \"monitor\"",
    ),
    (
        "zero prefix",
        "[defaults]\nipv4_prefix = 0\n",
        2,
        15,
        "between 1 and 32",
    ),
    (
        "v6 prefix too long",
        "[defaults]\nipv6_prefix = 129\n",
        2,
        15,
        "between 1 and 128",
    ),
    (
        "tiny max_sources",
        "[defaults]\nmax_sources = 1\n",
        2,
        15,
        "max_sources must be between",
    ),
    (
        "bad cidr",
        "[lists]\nallow = ['10.0.0.0/33']\n",
        2,
        10,
        "prefix length must be 0 to 32",
    ),
    (
        "leading zero in a prefix length",
        "[lists]\ndeny = ['10.0.0.0/08']\n",
        2,
        9,
        "prefix length must be 0 to 32 (digits, no leading zero)",
    ),
    (
        "signed prefix length",
        "[lists]\ndeny = ['10.0.0.0/+8']\n",
        2,
        9,
        "prefix length must be 0 to 32",
    ),
    (
        "not an address",
        "[lists]\ndeny = ['example.com']\n",
        2,
        9,
        "not an IP address",
    ),
    (
        "host bits",
        "[lists]\ndeny = ['10.1.2.3/8']\n",
        2,
        9,
        "did you mean 10.0.0.0/8",
    ),
    (
        "missing name",
        "[[rule]]\nprotocol='tcp'\n",
        1,
        1,
        "this `[[rule]]` has no `name`",
    ),
    (
        "bad name",
        "[[rule]]\nname='a b'\nprotocol='tcp'\n",
        2,
        6,
        "rule name must be",
    ),
    (
        "duplicate name",
        "[[rule]]\nname='a'\nprotocol='tcp'\nports=[1]\n[[rule]]\nname='a'\nprotocol='udp'\n",
        6,
        6,
        "used twice",
    ),
    (
        "bad protocol",
        "[[rule]]\nname='a'\nprotocol='sctp'\n",
        3,
        10,
        "protocol must be",
    ),
    (
        "port zero",
        "[[rule]]\nname='a'\nprotocol='tcp'\nports=[0]\n",
        4,
        8,
        "expected a port (1-65535)",
    ),
    (
        "port too big",
        "[[rule]]\nname='a'\nprotocol='tcp'\nports=[70000]\n",
        4,
        8,
        "got 70000",
    ),
    (
        "backwards range",
        "[[rule]]\nname='a'\nprotocol='tcp'\nports=['90-80']\n",
        4,
        8,
        "backwards",
    ),
    (
        "garbage range",
        "[[rule]]\nname='a'\nprotocol='tcp'\nports=['http']\n",
        4,
        8,
        "got \"http\"",
    ),
    (
        "float port",
        "[[rule]]\nname='a'\nprotocol='tcp'\nports=[80.5]\n",
        4,
        8,
        "got the decimal number 80.5",
    ),
    (
        "empty ports",
        "[[rule]]\nname='a'\nprotocol='tcp'\nports=[]\n",
        4,
        7,
        "`ports` is empty",
    ),
    (
        "ports on icmp",
        "[[rule]]\nname='a'\nprotocol='icmp'\nports=[1]\n",
        4,
        7,
        "icmp rules take no `ports`",
    ),
    (
        "overlap in rule",
        "[[rule]]\nname='a'\nprotocol='tcp'\nports=[80,'70-90']\n",
        4,
        11,
        "overlap 80",
    ),
    (
        "overlap across rules",
        "[[rule]]\nname='a'\nprotocol='tcp'\nports=['8000-8099']\n[[rule]]\nname='b'\nprotocol='tcp'\nports=[8080]\n",
        8,
        7,
        "already claimed by rule `a`",
    ),
    (
        "two catch-alls",
        "[[rule]]\nname='a'\nprotocol='udp'\n[[rule]]\nname='b'\nprotocol='udp'\n",
        5,
        6,
        "all udp traffic",
    ),
    (
        "connections on udp",
        "[[rule]]\nname='a'\nprotocol='udp'\nconnections={rate='1/s'}\n",
        4,
        13,
        "only valid on tcp rules",
    ),
    (
        "rate without unit",
        "[[rule]]\nname='a'\nprotocol='tcp'\nconnections={rate='5'}\n",
        4,
        19,
        "missing `/`",
    ),
    (
        "rate bad unit",
        "[[rule]]\nname='a'\nprotocol='tcp'\nconnections={rate='5/day'}\n",
        4,
        19,
        "unit must be s, min, h or d",
    ),
    (
        "zero rate",
        "[[rule]]\nname='a'\nprotocol='tcp'\nconnections={rate='0/s'}\n",
        4,
        19,
        "rate of 0",
    ),
    (
        "negative rate",
        "[[rule]]\nname='a'\nprotocol='tcp'\nconnections={rate='-3/s'}\n",
        4,
        19,
        "whole number",
    ),
    (
        "absurd rate",
        "[[rule]]\nname='a'\nprotocol='udp'\npackets={rate='999999999999/s'}\n",
        4,
        15,
        "not meaningful",
    ),
    (
        "zero burst",
        "[[rule]]\nname='a'\nprotocol='tcp'\nconnections={rate='1/s', burst=0}\n",
        4,
        32,
        "burst must be between 1",
    ),
    (
        "absurd burst",
        "[[rule]]\nname='a'\nprotocol='tcp'\nconnections={rate='1/s', burst=9999999999}\n",
        4,
        32,
        "burst must be between 1",
    ),
    (
        "sustained above rate",
        "[[rule]]\nname='a'\nprotocol='tcp'\nconnections={rate='1/s', sustained='100/s'}\n",
        4,
        36,
        "above the rate",
    ),
    (
        "string for integer",
        "[defaults]\nipv4_prefix = '24'\n",
        2,
        15,
        "ipv4_prefix must be a whole number from 1 to 32, got the text \"24\"",
    ),
];

#[test]
fn every_class_of_bad_input_is_located_and_explained() {
    let mut failures = Vec::new();
    for (case, text, line, column, needle) in BAD {
        match parse_str("bad.toml", text) {
            Ok(_) => failures.push(format!("{case}: accepted, should be rejected")),
            Err(e) => {
                let shown = e.to_string();
                if !shown.starts_with("bad.toml:") || !shown.contains(needle) {
                    failures.push(format!("{case}: message {shown:?} lacks {needle:?}"));
                }
                if (e.line, e.column) != (*line, *column) {
                    failures.push(format!(
                        "{case}: located at {}:{}, expected {line}:{column} ({shown})",
                        e.line, e.column
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
