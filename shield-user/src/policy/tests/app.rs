//! `[app]`, `[[endpoint]]` and `[[signal]]`: errors, defaults, the matrix, costs and
//! daily rates.

use super::*;

/// `[app]`, `[[endpoint]]` and `[[signal]]`: each mistake named where it is.
#[test]
fn app_tables_errors_name_their_place() {
    const APP: &str = "[app]\nsocket = '/tmp/a.sock'\n";
    let cases: &[(&str, String, usize, usize, &str)] = &[
        (
            "unknown key",
            format!(
                "{APP}[[endpoint]]\nname='a'\npath='/a'\nlimit={{rate='1/s'}}\nmethod=['GET']\n"
            ),
            7,
            1,
            "unknown field `method`",
        ),
        (
            "duplicate name",
            format!(
                "{APP}[[endpoint]]\nname='a'\npath='/a'\nlimit={{rate='1/s'}}\n[[endpoint]]\nname='a'\npath='/b'\nlimit={{rate='1/s'}}\n"
            ),
            8,
            6,
            "endpoint name `a` is used twice",
        ),
        (
            "bad key",
            format!("{APP}[[endpoint]]\nname='a'\npath='/a'\nkey='cookie'\nlimit={{rate='1/s'}}\n"),
            6,
            5,
            "key must be \"ip\", \"header:NAME\"",
        ),
        (
            "bad header",
            format!("{APP}[[signal]]\nname='s'\nkey='header:X Api'\nlimit={{rate='1/s'}}\n"),
            5,
            5,
            "the header name must be an HTTP field name",
        ),
        (
            "bad path",
            format!("{APP}[[endpoint]]\nname='a'\npath='login'\nlimit={{rate='1/s'}}\n"),
            5,
            6,
            "path must start with `/`",
        ),
        (
            "star inside",
            format!("{APP}[[endpoint]]\nname='a'\npath='/a/*/b'\nlimit={{rate='1/s'}}\n"),
            5,
            6,
            "at most one `*`, at the end",
        ),
        (
            "missing path",
            format!("{APP}[[endpoint]]\nname='a'\nlimit={{rate='1/s'}}\n"),
            3,
            1,
            "this `[[endpoint]]` has no `path`",
        ),
        (
            "missing name",
            format!("{APP}[[signal]]\nlimit={{rate='1/s'}}\n"),
            3,
            1,
            "this `[[signal]]` has no `name`",
        ),
        (
            "signal rule scope",
            format!(
                "{APP}[[signal]]\nname='s'\nlimit={{rate='1/s'}}\nescalation={{strikes=1, window='1m', ban='1m', scope='rule'}}\n"
            ),
            6,
            53,
            "its escalation scope must be \"host\"",
        ),
        (
            "on_error",
            "[app]\non_error='maybe'\n".to_string(),
            2,
            10,
            "on_error must be \"open\" (allow) or \"closed\" (503)",
        ),
        (
            "relative socket",
            "[app]\nsocket='app.sock'\n".to_string(),
            2,
            8,
            "socket must be an absolute path",
        ),
        (
            "bad proxy",
            "[app]\ntrusted_proxies=['127.0.0.1/8']\n".to_string(),
            2,
            18,
            "trusted_proxies list: host bits are set",
        ),
        (
            "endpoint without app",
            "[[endpoint]]\nname='a'\npath='/a'\nlimit={rate='1/s'}\n".to_string(),
            1,
            1,
            "[[endpoint]] tables need an `[app]` table",
        ),
        (
            "single table",
            format!("{APP}[endpoint]\nname='a'\n"),
            3,
            1,
            "`[endpoint]` must be `[[endpoint]]`",
        ),
    ];
    for (what, text, line, column, needle) in cases {
        let e = parse_str("t.toml", text).expect_err(what);
        assert!(
            e.message.contains(needle),
            "{what}: expected {needle:?} in {:?}",
            e.message
        );
        assert_eq!((e.line, e.column), (*line, *column), "{what}: {e}");
    }
}

#[test]
fn app_tables_defaults_and_matrix() {
    let p = ok(r#"
[app]
trusted_proxies = ["127.0.0.1"]
[[endpoint]]
name = "login"
methods = ["post", "POST"]
path = "/login"
limit = { rate = "5/min", burst = 5, sustained = "30/h" }
escalation = { strikes = 3, window = "10m", ban = "15m" }
[[endpoint]]
name = "api"
path = "/api/*"
key = "header:X-Api-Key"
limit = { rate = "10/s" }
escalation = { strikes = 3, window = "1m", ban = "5m", scope = "rule" }
[[signal]]
name = "login_failed"
key = "user"
limit = { rate = "10/h", burst = 5 }
"#);
    let app = p.app.as_ref().expect("[app]");
    assert_eq!(app.socket, std::path::PathBuf::from(DEFAULT_APP_SOCKET));
    assert_eq!((app.group.clone(), app.on_error), (None, OnError::Open));
    let login = &p.endpoints[0];
    assert_eq!(login.methods, vec!["POST".to_string()]);
    assert_eq!(
        login.key,
        KeyKind::Ip,
        "an endpoint without key counts per ip"
    );
    assert_eq!(
        login.escalation.map(|e| e.scope),
        Some(BanScope::Host),
        "app escalation defaults to host scope"
    );
    let api = &p.endpoints[1];
    assert!(api.prefix && api.path == "/api/");
    assert_eq!(
        api.limit.burst, 10,
        "burst defaults to one second of the rate"
    );
    assert_eq!(p.signals[0].key, KeyKind::User);
    let m = matrix_table(&p);
    for needle in [
        "login     POST",
        "/api/*",
        "header:X-Api-Key",
        "5/min burst 5, max 30/h",
        "endpoint scope (L7 only)",
        "login_failed",
        "trusted proxies: 127.0.0.1/32",
    ] {
        assert!(m.contains(needle), "matrix lacks {needle:?}:\n{m}");
    }
}

#[test]
fn cost_and_daily_rates() {
    let p = ok(r#"
[[rule]]
name = "api"
protocol = "tcp"
ports = [443]
connections = { rate = "20/s", burst = 40, sustained = "50000/d" }
[app]
[[endpoint]]
name = "export"
path = "/export"
cost = 5
limit = { rate = "600/h", burst = 10, sustained = "1000/d" }
[[endpoint]]
name = "cheap"
path = "/cheap"
concurrency = 3
quota = { limit = 10000, per = "1d" }
limit = { rate = "10/s" }
"#);
    assert_eq!(
        (p.endpoints[0].concurrency, p.endpoints[1].concurrency),
        (None, Some(3))
    );
    assert_eq!(p.endpoints[0].cost, 5);
    assert_eq!(p.endpoints[1].cost, 1, "cost defaults to 1");
    assert_eq!(
        p.endpoints[0].limit.sustained,
        Some(Rate {
            count: 1000,
            period_secs: 86_400
        })
    );
    // XDP buckets for a daily rate: 86,400 s / 50,000 in nanoseconds, no overflow.
    let c = compile(&p);
    let api = &c.rules[1];
    assert_eq!(
        api.buckets[B_CONN_SUSTAINED].interval_ns,
        86_400 * NS_PER_SEC / 50_000
    );
    let m = matrix_table(&p);
    for needle in [
        "max 50000/d",
        "600/h burst 10, max 1000/d",
        "COST",
        "IN FLIGHT",
        "3 per key",
        "10000 per day (resets at 00:00 UTC)",
        "export",
    ] {
        assert!(m.contains(needle), "matrix lacks {needle:?}:\n{m}");
    }
    for (text, needle) in [
        (
            "cost = 11",
            "cost must be between 1 and the limit's burst (10)",
        ),
        ("cost = 0", "cost must be between 1"),
        ("cost = '5'", "cost"),
        (
            "concurrency = 0",
            "concurrency must be between 1 and 1000000",
        ),
        (
            "quota = { limit = 5, per = '7h' }",
            "quota per must be a whole number of seconds from 1m to 31d that divides a day",
        ),
        (
            "quota = { limit = 0, per = '1d' }",
            "quota limit must be between 1",
        ),
        ("quota = { limit = 5 }", "per"),
    ] {
        let e = parse_str(
            "t.toml",
            &format!(
                "[app]\n[[endpoint]]\nname='a'\npath='/a'\nlimit={{rate='1/d', burst=10}}\n{text}\n"
            ),
        )
        .expect_err(text);
        assert!(e.message.contains(needle), "{text}: {e}");
        assert_eq!(e.line, 6, "{text}: {e}");
    }
    let e = parse_str(
        "t.toml",
        "[[rule]]\nname='a'\nprotocol='tcp'\nports=[1]\nconnections={rate='5/w'}\n",
    )
    .expect_err("unit w");
    assert!(e.message.contains("the unit must be s, min, h or d"), "{e}");
}
