//! Strikes and bans: at XDP or L7 only, allow-listed clients, rule scope, signals and
//! unbans.

use super::*;

#[test]
fn strikes_ban_a_direct_client_at_xdp_and_a_proxied_one_at_l7_only() {
    let mut l = limiter();
    let mut fx = Vec::new();
    let strike = |l: &mut Limiter, peer: &str, xff: Option<&str>, at: u64, fx: &mut Vec<Effect>| {
        l.clock.frozen = Some(at * NS_PER_SEC);
        for _ in 0..6 {
            login(l, peer, xff, fx);
        }
    };
    strike(&mut l, "192.0.2.1", None, 100, &mut fx);
    assert!(
        !fx.iter().any(|e| matches!(e, Effect::Ban(_))),
        "one strike of two"
    );
    strike(&mut l, "192.0.2.1", None, 101, &mut fx);
    let bans: Vec<&AppBan> = fx
        .iter()
        .filter_map(|e| match e {
            Effect::Ban(b) => Some(b),
            _ => None,
        })
        .collect();
    assert_eq!(bans.len(), 1, "{fx:?}");
    assert!(bans[0].xdp, "a direct client is banned at XDP");
    assert_eq!(bans[0].source.to_string(), "192.0.2.1/32");
    assert_eq!(bans[0].duration, Duration::from_secs(900));
    // Banned: 403 on every endpoint (host scope).
    let d = login(&mut l, "192.0.2.1", None, &mut fx);
    assert_eq!(d.status, Some(403));
    assert_eq!(d.retry_after, Some(900));
    let d = l
        .decide(
            "GET",
            None,
            "/api/x",
            Some("192.0.2.1"),
            None,
            None,
            None,
            None,
            &mut fx,
        )
        .expect("decide");
    assert_eq!(d.status, Some(403));

    // Behind a trusted proxy: L7 only, and the proxy itself is never banned.
    fx.clear();
    strike(&mut l, "127.0.0.1", Some("198.51.100.7"), 200, &mut fx);
    strike(&mut l, "127.0.0.1", Some("198.51.100.7"), 201, &mut fx);
    let b = fx.iter().find_map(|e| match e {
        Effect::Ban(b) => Some(b.clone()),
        _ => None,
    });
    let b = b.expect("the forwarded client is banned");
    assert!(!b.xdp, "a client behind a proxy is banned at L7 only");
    assert_eq!(b.source.to_string(), "198.51.100.7/32");
    assert_eq!(
        login(&mut l, "127.0.0.1", Some("198.51.100.7"), &mut fx).status,
        Some(403)
    );
    assert!(login(&mut l, "127.0.0.1", Some("198.51.100.8"), &mut fx).allow);
    // The proxy talking for itself (no header) strikes, but is never banned.
    fx.clear();
    strike(&mut l, "127.0.0.1", None, 300, &mut fx);
    strike(&mut l, "127.0.0.1", None, 301, &mut fx);
    assert!(!fx.iter().any(|e| matches!(e, Effect::Ban(_))));
    assert!(fx.iter().any(|e| matches!(e, Effect::BanSkipped { .. })));
}

#[test]
fn unban_lifts_l7_bans_inside_the_prefix() {
    let mut l = limiter();
    let mut fx = Vec::new();
    for peer in ["192.0.2.7", "192.0.2.8"] {
        for _ in 0..3 {
            l.report("login_failed", Some(peer), None, None, None, None, &mut fx)
                .expect("report");
        }
    }
    assert_eq!(login(&mut l, "192.0.2.7", None, &mut fx).status, Some(403));
    assert_eq!(
        l.unban(&crate::policy::parse_cidr("192.0.2.7").expect("cidr")),
        1
    );
    assert!(login(&mut l, "192.0.2.7", None, &mut fx).allow);
    assert_eq!(login(&mut l, "192.0.2.8", None, &mut fx).status, Some(403));
    assert_eq!(
        l.unban(&crate::policy::parse_cidr("192.0.2.0/24").expect("cidr")),
        1
    );
    assert!(login(&mut l, "192.0.2.8", None, &mut fx).allow);
}

#[test]
fn allow_listed_clients_are_limited_but_never_banned() {
    let mut l = limiter();
    let mut fx = Vec::new();
    for s in 100..104 {
        l.clock.frozen = Some(s * NS_PER_SEC);
        for _ in 0..6 {
            login(&mut l, "10.9.1.1", None, &mut fx);
        }
    }
    assert!(!login(&mut l, "10.9.1.1", None, &mut fx).allow);
    assert!(!fx.iter().any(|e| matches!(e, Effect::Ban(_))));
    assert!(
        fx.iter()
            .any(|e| matches!(e, Effect::BanSkipped { why, .. } if why.contains("allow list")))
    );
}

#[test]
fn rule_scope_bans_the_endpoint_only_and_user_keys_fall_back_to_ip() {
    let mut l = limiter();
    let mut fx = Vec::new();
    let api = |l: &mut Limiter, user: Option<&str>, fx: &mut Vec<Effect>| {
        l.decide(
            "GET",
            None,
            "/api/a",
            Some("192.0.2.5"),
            None,
            None,
            user,
            None,
            fx,
        )
        .expect("decide")
    };
    for _ in 0..3 {
        assert!(api(&mut l, Some("alice"), &mut fx).allow);
    }
    // Another user from the same address has a bucket of its own; no user: the ip key.
    assert!(api(&mut l, Some("bob"), &mut fx).allow);
    for _ in 0..3 {
        assert!(api(&mut l, None, &mut fx).allow);
    }
    assert_eq!(api(&mut l, Some("alice"), &mut fx).status, Some(429));
    let b = fx
        .iter()
        .find_map(|e| match e {
            Effect::Ban(b) => Some(b.clone()),
            _ => None,
        })
        .expect("strikes = 1 bans");
    assert_eq!(b.endpoint.as_deref(), Some("api"));
    assert!(!b.xdp, "a rule-scope ban on an endpoint is L7 only");
    assert_eq!(api(&mut l, Some("carol"), &mut fx).status, Some(403));
    assert!(
        login(&mut l, "192.0.2.5", None, &mut fx).allow,
        "other endpoints still served"
    );
}

#[test]
fn signals_count_reports_and_ban_after_their_limit() {
    let mut l = limiter();
    let mut fx = Vec::new();
    let rep = |l: &mut Limiter, fx: &mut Vec<Effect>| {
        l.report(
            "login_failed",
            Some("192.0.2.7"),
            None,
            None,
            None,
            None,
            fx,
        )
        .expect("report")
    };
    let r = rep(&mut l, &mut fx);
    assert!(r.counted && !r.limited && !r.banned);
    rep(&mut l, &mut fx);
    let r = rep(&mut l, &mut fx);
    assert!(r.limited && r.banned, "{r:?}");
    assert_eq!(login(&mut l, "192.0.2.7", None, &mut fx).status, Some(403));
    let err = l
        .report("nope", Some("192.0.2.7"), None, None, None, None, &mut fx)
        .unwrap_err();
    assert_eq!(err, "no [[signal]] named \"nope\" in the policy");
}

#[test]
fn a_direct_client_whose_prefix_holds_a_trusted_proxy_is_banned_at_l7_only() {
    let policy = r#"
[defaults]
ipv4_prefix = 24

[app]
socket = "/tmp/x.sock"
trusted_proxies = ["10.1.0.1/32"]

[[endpoint]]
name = "login"
methods = ["POST"]
path = "/login"
limit = { rate = "5/min", burst = 1 }
escalation = { strikes = 1, window = "10m", ban = "15m" }
"#;
    let mut l = limiter_with(policy, 1);
    let mut fx = Vec::new();
    // 10.1.0.5 talks to the host directly; its /24 holds the proxy 10.1.0.1.
    assert!(login(&mut l, "10.1.0.5", None, &mut fx).allow);
    assert_eq!(login(&mut l, "10.1.0.5", None, &mut fx).status, Some(429));
    let b = fx
        .iter()
        .find_map(|e| match e {
            Effect::Ban(b) => Some(b.clone()),
            _ => None,
        })
        .expect("banned");
    assert_eq!(b.source.to_string(), "10.1.0.0/24");
    assert!(
        !b.xdp,
        "an XDP ban of 10.1.0.0/24 would drop the trusted proxy 10.1.0.1 and every client behind it"
    );
    // A direct client elsewhere is still banned at XDP.
    fx.clear();
    login(&mut l, "192.0.2.5", None, &mut fx);
    login(&mut l, "192.0.2.5", None, &mut fx);
    assert!(fx.iter().any(|e| matches!(e, Effect::Ban(b) if b.xdp)));
}

#[test]
fn a_fleet_unban_lifts_the_l7_bans_issued_before_it_only() {
    let mut l = limiter();
    let mut fx = Vec::new();
    let cidr = crate::policy::parse_cidr("192.0.2.0/24").expect("cidr");
    let ban = |l: &mut Limiter, peer: &str, fx: &mut Vec<Effect>| {
        for _ in 0..3 {
            l.report("login_failed", Some(peer), None, None, None, None, fx)
                .expect("report");
        }
    };
    ban(&mut l, "192.0.2.7", &mut fx);
    let unban_sent = l.clock.now();
    l.clock.frozen = Some(unban_sent + 60 * NS_PER_SEC);
    ban(&mut l, "192.0.2.8", &mut fx);
    assert_eq!(login(&mut l, "192.0.2.8", None, &mut fx).status, Some(403));
    // The unban was sent before 192.0.2.8's ban: only 192.0.2.7 is freed.
    assert_eq!(l.unban_before(&cidr, unban_sent), 1);
    assert!(login(&mut l, "192.0.2.7", None, &mut fx).allow);
    assert_eq!(login(&mut l, "192.0.2.8", None, &mut fx).status, Some(403));
    assert_eq!(l.unban_before(&cidr, l.clock.now()), 1);
    assert!(login(&mut l, "192.0.2.8", None, &mut fx).allow);
}
