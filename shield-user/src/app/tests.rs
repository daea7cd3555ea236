//! The app layer's decisions on a frozen clock: endpoint matching, reloads, bad requests
//! and `hello`; the rest by concern in the modules below.

mod bans;
mod clients;
mod limits;
mod quota;

use super::*;
use crate::policy::parse_str;
use protocol::Decision;

const POLICY: &str = r#"
[lists]
allow = ["10.9.0.0/16"]

[app]
socket = "/tmp/x.sock"
trusted_proxies = ["127.0.0.1/32", "10.0.0.0/24"]

[[endpoint]]
name = "login"
methods = ["POST"]
path = "/login"
limit = { rate = "5/min", burst = 5 }
escalation = { strikes = 2, window = "10m", ban = "15m" }

[[endpoint]]
name = "search"
path = "/search/<int:id>"
key = "header:X-Api-Key"
limit = { rate = "1/s", burst = 2, sustained = "10/h" }

[[endpoint]]
name = "api"
path = "/api/*"
key = "user"
limit = { rate = "10/s", burst = 3 }
escalation = { strikes = 1, window = "1m", ban = "1m", scope = "rule" }

[[signal]]
name = "login_failed"
limit = { rate = "10/h", burst = 2 }
escalation = { strikes = 1, window = "1h", ban = "1h" }
"#;

fn limiter() -> Limiter {
    limiter_with(POLICY, 7)
}

/// A limiter of `policy` (its policy generation `generation`) on a clock frozen at 100 s.
fn limiter_with(policy: &str, generation: u32) -> Limiter {
    let p = parse_str("t.toml", policy).expect("valid policy");
    let mut l = Limiter::new(AppPolicy::new(&p, generation), Arc::default());
    l.clock.frozen = Some(100 * NS_PER_SEC);
    l
}

fn login(l: &mut Limiter, peer: &str, xff: Option<&str>, fx: &mut Vec<Effect>) -> Decision {
    l.decide(
        "POST",
        Some("/login"),
        "/login",
        Some(peer),
        xff,
        None,
        None,
        None,
        fx,
    )
    .expect("decide")
}

/// A `method` request to `path` (its Flask rule the same) from `peer`, costing `cost`
/// (`None`: the endpoint's own), with no forwarding, headers or user.
fn request(
    l: &mut Limiter,
    method: &str,
    path: &str,
    peer: &str,
    cost: Option<u64>,
    fx: &mut Vec<Effect>,
) -> Result<Decision, String> {
    l.decide(
        method,
        Some(path),
        path,
        Some(peer),
        None,
        None,
        None,
        cost,
        fx,
    )
}

fn parse_cidr_ok(s: &str) -> Cidr {
    crate::policy::parse_cidr(s).expect("cidr")
}

#[test]
fn endpoints_match_by_method_and_rule_or_prefix_in_file_order() {
    let mut l = limiter();
    let mut fx = Vec::new();
    let mut ep = |m: &str, rule: Option<&str>, path: &str| {
        l.decide(
            m,
            rule,
            path,
            Some("192.0.2.1"),
            None,
            None,
            None,
            None,
            &mut fx,
        )
        .expect("decide")
        .endpoint
    };
    assert_eq!(ep("POST", Some("/login"), "/login"), Some("login".into()));
    assert_eq!(ep("post", Some("/login"), "/login"), Some("login".into()));
    assert_eq!(
        ep("GET", Some("/login"), "/login"),
        None,
        "GET is not listed"
    );
    // The rule, not the path, is matched for a Flask rule.
    assert_eq!(
        ep("GET", Some("/search/<int:id>"), "/search/4"),
        Some("search".into())
    );
    assert_eq!(ep("GET", None, "/search/<int:id>"), None);
    // A prefix matches the path, with or without a rule (a 404 has none).
    assert_eq!(ep("DELETE", None, "/api/x/y"), Some("api".into()));
    assert_eq!(ep("GET", None, "/apix"), None);
    assert_eq!(ep("GET", None, "/"), None);
}

#[test]
fn reload_keeps_state_by_name_and_drops_removed_names() {
    let mut l = limiter();
    let mut fx = Vec::new();
    for _ in 0..5 {
        login(&mut l, "192.0.2.1", None, &mut fx);
    }
    // Rename `search`, reorder, keep `login`.
    let text = POLICY.replace("name = \"search\"", "name = \"find\"");
    let p = parse_str("t.toml", &text).expect("valid");
    l.set_policy(AppPolicy::new(&p, 8));
    assert_eq!(l.generation(), 8);
    let d = login(&mut l, "192.0.2.1", None, &mut fx);
    assert_eq!(
        d.status,
        Some(429),
        "login kept its state across the reload"
    );
    assert_eq!(d.generation, 8);
    let names: Vec<String> = l.counters.snapshot().into_iter().map(|r| r.name).collect();
    assert!(names.contains(&"find".to_string()) && !names.contains(&"search".to_string()));
}

#[test]
fn bad_requests_are_errors_and_change_nothing() {
    let mut l = limiter();
    let mut fx = Vec::new();
    for peer in [None, Some("nonsense"), Some("192.0.2.1:80")] {
        assert!(
            l.decide(
                "POST",
                Some("/login"),
                "/login",
                peer,
                None,
                None,
                None,
                None,
                &mut fx
            )
            .is_err()
        );
    }
    assert_eq!(l.tracked(), 0);
    assert!(fx.is_empty());
    assert_eq!(l.counters.errors.load(Ordering::Relaxed), 3);
}

#[test]
fn hello_names_key_headers_once() {
    let l = limiter();
    let h = l.hello();
    assert_eq!(h.key_headers, vec!["X-Api-Key".to_string()]);
    assert_eq!((h.generation, h.on_error.as_str()), (7, "open"));
}

#[test]
fn a_head_request_counts_against_an_endpoint_that_lists_get() {
    // Flask answers HEAD with the GET view (the whole view runs, only the body is dropped):
    // a HEAD flood on a `methods = ["GET"]` endpoint must draw from the same buckets.
    let mut l = limiter_with(
        r#"
[app]
socket = "/tmp/x.sock"

[[endpoint]]
name = "report"
methods = ["GET"]
path = "/report/<int:id>"
limit = { rate = "1/min", burst = 2 }

[[endpoint]]
name = "upload"
methods = ["POST"]
path = "/upload"
limit = { rate = "1/min", burst = 1 }
"#,
        1,
    );
    let mut fx = Vec::new();
    let mut ask = |l: &mut Limiter, m: &str, rule: &str| {
        l.decide(
            m,
            Some(rule),
            rule,
            Some("192.0.2.1"),
            None,
            None,
            None,
            None,
            &mut fx,
        )
        .expect("decide")
    };
    let a = ask(&mut l, "HEAD", "/report/<int:id>");
    assert_eq!(
        a.endpoint.as_deref(),
        Some("report"),
        "HEAD runs the GET view"
    );
    assert!(a.allow);
    let b = ask(&mut l, "GET", "/report/<int:id>");
    assert!(b.allow, "the burst is 2");
    let c = ask(&mut l, "head", "/report/<int:id>");
    assert_eq!(
        (c.allow, c.status),
        (false, Some(429)),
        "a third request, HEAD or GET, is over the burst"
    );
    // HEAD is GET's only: a POST-only endpoint is not matched by HEAD.
    assert_eq!(ask(&mut l, "HEAD", "/upload").endpoint, None);
}
