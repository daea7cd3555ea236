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
fn exactly_burst_then_429_with_retry_after_and_headers() {
    let mut l = limiter();
    let mut fx = Vec::new();
    for i in 0..5u64 {
        let d = login(&mut l, "192.0.2.1", None, &mut fx);
        assert!(d.allow, "request {i} within the burst");
        assert_eq!(d.remaining, Some(4 - i));
        assert_eq!(d.limit, Some(5));
        assert_eq!(d.policy.as_deref(), Some("\"login\";q=5;w=60"));
        assert_eq!(
            d.reset,
            Some(12 * (i + 1)),
            "full again after {} tokens at 5/min",
            i + 1
        );
    }
    let d = login(&mut l, "192.0.2.1", None, &mut fx);
    assert!(!d.allow);
    assert_eq!(d.status, Some(429));
    // 5/min: the next token 12 s after the burst was spent at one instant.
    assert_eq!(d.retry_after, Some(12));
    assert_eq!(d.remaining, Some(0));
    assert!(
        d.detail
            .as_deref()
            .unwrap_or("")
            .contains("login allows 5 requests per minute (burst 5) per ip; retry in 12 s"),
        "{d:?}"
    );
    // Another client is unaffected.
    assert!(login(&mut l, "192.0.2.2", None, &mut fx).allow);
    // 11.5 s later (another client, same pattern): retry in 1 s, rounded up.
    for _ in 0..5 {
        login(&mut l, "192.0.2.3", None, &mut fx);
    }
    l.clock.frozen = Some(100 * NS_PER_SEC + 11_500_000_000);
    assert_eq!(
        login(&mut l, "192.0.2.3", None, &mut fx).retry_after,
        Some(1)
    );
    l.clock.frozen = Some(112 * NS_PER_SEC);
    assert!(login(&mut l, "192.0.2.1", None, &mut fx).allow);
}

#[test]
fn sustained_limit_shows_in_policy_and_binds() {
    let mut l = limiter();
    let mut fx = Vec::new();
    let hdr = |v: &str| HashMap::from([("x-api-key".to_string(), v.to_string())]);
    let h = hdr("k1");
    let mut admitted = 0;
    for s in 0..60u64 {
        l.clock.frozen = Some((100 + s) * NS_PER_SEC);
        let d = l
            .decide(
                "GET",
                Some("/search/<int:id>"),
                "/search/1",
                Some("192.0.2.1"),
                None,
                Some(&h),
                None,
                None,
                &mut fx,
            )
            .expect("decide");
        assert_eq!(
            d.policy.as_deref(),
            Some("\"search\";q=2;w=2, \"search-sustained\";q=10;w=3600")
        );
        admitted += u64::from(d.allow);
    }
    assert_eq!(admitted, 10, "1/s for a minute is capped by 10/h");
    // The key is the header (case-insensitive name), not the address: another key passes.
    let d = l
        .decide(
            "GET",
            Some("/search/<int:id>"),
            "/search/1",
            Some("192.0.2.1"),
            None,
            Some(&hdr("k2")),
            None,
            None,
            &mut fx,
        )
        .expect("decide");
    assert!(d.allow);
}

#[test]
fn forwarded_for_is_believed_only_from_trusted_proxies() {
    let trusted = [parse_cidr_ok("127.0.0.1/32"), parse_cidr_ok("10.0.0.0/24")];
    let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
    // Untrusted peer: its header is ignored.
    let c = resolve_client(ip("192.0.2.9"), Some("198.51.100.7"), &trusted);
    assert_eq!((c.addr, c.via_proxy), (ip("192.0.2.9"), false));
    // Trusted peer: walk from the right past trusted hops.
    let c = resolve_client(
        ip("127.0.0.1"),
        Some("198.51.100.7, 203.0.113.5, 10.0.0.2"),
        &trusted,
    );
    assert_eq!((c.addr, c.via_proxy), (ip("203.0.113.5"), true));
    // A spoofed leftmost entry does not matter.
    let c = resolve_client(ip("127.0.0.1"), Some("1.1.1.1, 198.51.100.7"), &trusted);
    assert_eq!(c.addr, ip("198.51.100.7"));
    // Malformed: the peer, flagged.
    let c = resolve_client(ip("127.0.0.1"), Some("198.51.100.7, nonsense"), &trusted);
    assert_eq!((c.addr, c.bad_xff), (ip("127.0.0.1"), true));
    // No header: the peer.
    assert_eq!(
        resolve_client(ip("127.0.0.1"), None, &trusted).addr,
        ip("127.0.0.1")
    );
    // IPv4-mapped IPv6 is IPv4.
    let c = resolve_client(ip("::ffff:127.0.0.1"), Some("198.51.100.7"), &trusted);
    assert_eq!(c.addr, ip("198.51.100.7"));
}

fn parse_cidr_ok(s: &str) -> Cidr {
    crate::policy::parse_cidr(s).expect("cidr")
}

#[test]
fn malformed_forwarded_for_counts_an_error_and_limits_the_peer() {
    let mut l = limiter();
    let mut fx = Vec::new();
    let d = login(&mut l, "127.0.0.1", Some("not-an-ip"), &mut fx);
    assert_eq!(d.client.as_deref(), Some("127.0.0.1"));
    assert_eq!(l.counters.errors.load(Ordering::Relaxed), 1);
}

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
fn app_limited_effects_at_most_once_per_client_per_second() {
    let mut l = limiter();
    let mut fx = Vec::new();
    for _ in 0..50 {
        login(&mut l, "192.0.2.1", None, &mut fx);
    }
    let n = fx
        .iter()
        .filter(|e| matches!(e, Effect::Limited { .. }))
        .count();
    assert_eq!(n, 1);
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
fn cost_draws_tokens_from_the_endpoints_buckets() {
    let mut l = limiter_with(
        r#"
[app]
socket = "/tmp/x.sock"
[[endpoint]]
name = "export"
path = "/export"
cost = 5
limit = { rate = "5/s", burst = 10 }
[[endpoint]]
name = "q"
path = "/q"
limit = { rate = "10/d", burst = 10 }
"#,
        1,
    );
    let mut fx = Vec::new();
    let mut at = |l: &mut Limiter, path: &str, cost: Option<u64>| {
        l.decide(
            "GET",
            Some(path),
            path,
            Some("192.0.2.9"),
            None,
            None,
            None,
            cost,
            &mut fx,
        )
        .expect("decide")
    };
    // cost 5 under burst 10: exactly 2, then 429 with a retry of one second (5 tokens at 5/s).
    let d: Vec<Decision> = (0..4).map(|_| at(&mut l, "/export", None)).collect();
    assert_eq!(
        d.iter().map(|d| d.allow).collect::<Vec<_>>(),
        [true, true, false, false]
    );
    assert_eq!((d[0].remaining, d[1].remaining), (Some(5), Some(0)));
    assert_eq!((d[2].status, d[2].retry_after), (Some(429), Some(1)));
    // A request naming its own cost: 1 passes one token later.
    l.clock.frozen = Some(100 * NS_PER_SEC + NS_PER_SEC / 5);
    assert!(at(&mut l, "/export", Some(1)).allow);
    assert!(!at(&mut l, "/export", Some(1)).allow);
    // A cost above what the bucket ever holds: refused, says why, no strike.
    let big = at(&mut l, "/q", Some(11));
    assert_eq!(big.status, Some(429));
    assert!(
        big.detail
            .as_deref()
            .unwrap_or("")
            .contains("costs 11 tokens"),
        "{big:?}"
    );
    // A daily rate: 3 + 7 = 10 pass, then a wait of 86,400 / 10 s for one token.
    assert!(at(&mut l, "/q", Some(3)).allow);
    assert!(at(&mut l, "/q", Some(7)).allow);
    let over = at(&mut l, "/q", None);
    assert_eq!(over.retry_after, Some(8640));
    assert!(
        over.detail.as_deref().unwrap_or("").contains("per day"),
        "{over:?}"
    );
    assert!(
        l.decide(
            "GET",
            Some("/q"),
            "/q",
            Some("192.0.2.9"),
            None,
            None,
            None,
            Some(0),
            &mut Vec::new()
        )
        .is_err()
    );
}

#[test]
fn concurrency_caps_requests_in_flight_per_key_and_release_frees_a_slot() {
    let mut l = limiter_with(
        r#"
[app]
socket = "/tmp/x.sock"
[[endpoint]]
name = "slow"
path = "/slow"
key = "header:X-Api-Key"
concurrency = 2
limit = { rate = "100/s", burst = 100 }
"#,
        1,
    );
    let mut fx = Vec::new();
    let mut go = |l: &mut Limiter, key: &str, charge: bool| {
        let h: HashMap<String, String> = [("X-Api-Key".to_string(), key.to_string())].into();
        l.decide_full(
            "GET",
            Some("/slow"),
            "/slow",
            Some("192.0.2.9"),
            None,
            Some(&h),
            None,
            None,
            charge,
            &mut fx,
        )
        .expect("decide")
    };
    let a = go(&mut l, "k1", false);
    let b = go(&mut l, "k1", false);
    assert!(a.allow && b.allow);
    let (sa, sb) = (a.slot.expect("a slot"), b.slot.expect("a slot"));
    assert_ne!(sa, sb);
    let c = go(&mut l, "k1", false);
    assert_eq!(
        (c.allow, c.status, c.retry_after),
        (false, Some(429), Some(1))
    );
    assert!(
        c.detail
            .as_deref()
            .unwrap_or("")
            .contains("slow allows 2 requests in flight at once per header:X-Api-Key"),
        "{c:?}"
    );
    assert_eq!(c.slot, None);
    // Another key has its own slots; a charge takes none.
    assert!(go(&mut l, "k2", false).slot.is_some());
    let ch = go(&mut l, "k1", true);
    assert!(ch.allow && ch.slot.is_none(), "{ch:?}");
    assert_eq!(l.in_flight_of("slow"), 3);
    let gauge = |l: &Limiter| {
        l.counters
            .snapshot()
            .into_iter()
            .find(|r| r.name == "slow")
            .map(|r| r.in_flight)
    };
    assert_eq!(gauge(&l), Some(3), "stats/metrics see 3 in flight");
    assert!(l.release(sa));
    assert!(!l.release(sa), "a slot is released once");
    assert_eq!(gauge(&l), Some(2));
    assert!(go(&mut l, "k1", false).allow);
    assert!(!go(&mut l, "k1", false).allow);
}

#[test]
fn a_daily_quota_admits_its_limit_in_a_utc_day_and_is_saved_and_read_back() {
    let p = parse_str(
        "t.toml",
        r#"
[app]
socket = "/tmp/x.sock"
[[endpoint]]
name = "daily"
path = "/d"
key = "header:X-Api-Key"
cost = 2
quota = { limit = 20, per = "1d" }
limit = { rate = "100/s", burst = 100 }
"#,
    )
    .expect("valid policy");
    let day = 20_000 * 86_400;
    let mk = || {
        let mut l = Limiter::new(AppPolicy::new(&p, 1), Arc::default());
        l.clock.frozen = Some(100 * NS_PER_SEC);
        l.clock.wall_frozen = Some(day + 86_400 - 3600); // 23:00 UTC
        l
    };
    let mut l = mk();
    let go = |l: &mut Limiter, key: &str| {
        let h: HashMap<String, String> = [("X-Api-Key".to_string(), key.to_string())].into();
        l.decide(
            "GET",
            Some("/d"),
            "/d",
            Some("192.0.2.9"),
            None,
            Some(&h),
            None,
            None,
            &mut Vec::new(),
        )
        .expect("decide")
    };
    // cost 2, quota 20: 10 requests.
    let first = go(&mut l, "k");
    assert_eq!(
        (first.remaining, first.reset, first.limit),
        (Some(18), Some(3600), Some(20))
    );
    assert_eq!(
        first.policy.as_deref(),
        Some("\"daily\";q=100;w=1, \"daily-quota\";q=20;w=86400")
    );
    for _ in 0..8 {
        assert!(go(&mut l, "k").allow);
    }
    assert!(l.take_quotas_dirty());
    // Saved and read back by a new limiter (a daemon restart).
    let saved = l.quotas_snapshot();
    assert_eq!(
        saved,
        vec![SavedQuota {
            endpoint: "daily".into(),
            key: "header:k".into(),
            window_start: day,
            used: 18
        }]
    );
    let mut l = mk();
    l.load_quotas(saved);
    assert!(go(&mut l, "k").allow, "the 10th");
    let over = go(&mut l, "k");
    assert_eq!((over.status, over.retry_after), (Some(429), Some(3600)));
    assert!(
        over.detail
            .as_deref()
            .unwrap_or("")
            .contains("quota of 20 per day"),
        "{over:?}"
    );
    assert!(go(&mut l, "other").allow, "another key has its own quota");
    assert_eq!(l.quota_used_of("daily"), 22);
    let used = l
        .counters
        .snapshot()
        .into_iter()
        .find(|r| r.name == "daily")
        .map(|r| r.quota_used);
    assert_eq!(used, Some(22), "stats/metrics see the quota used");
    // 00:00 UTC: a new window.
    l.clock.wall_frozen = Some(day + 86_400);
    l.tick();
    assert_eq!(l.quotas_snapshot(), vec![]);
    assert_eq!(go(&mut l, "k").remaining, Some(18));
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
fn a_full_table_is_swept_at_most_once_a_second_and_keeps_limited_keys() {
    let mut l = limiter();
    let mut fx = Vec::new();
    // A limited client, then the table filled with keys that are not idle.
    for _ in 0..5 {
        assert!(login(&mut l, "192.0.2.77", None, &mut fx).allow);
    }
    assert_eq!(login(&mut l, "192.0.2.77", None, &mut fx).status, Some(429));
    let now = l.clock.now();
    let busy = SourceState {
        tat: [now + 3600 * NS_PER_SEC, 0, 0, 0],
        ..SourceState::NEW
    };
    let t = &mut l.endpoints[0];
    for i in 0..MAX_KEYS - t.states.len() {
        t.states.insert(format!("ip:fill-{i}"), busy);
    }
    let before = t.sweeps;
    // A flood of new clients: each is let through uncounted (an app error), but the
    // full table is walked once for them, not once per request.
    for i in 0..1000u32 {
        let peer = std::net::Ipv4Addr::from(0xC633_0000 + i).to_string();
        assert!(login(&mut l, &peer, None, &mut fx).allow);
    }
    assert_eq!(l.endpoints[0].sweeps - before, 1);
    l.clock.frozen = Some(now + NS_PER_SEC);
    login(&mut l, "198.51.200.1", None, &mut fx);
    assert_eq!(l.endpoints[0].sweeps - before, 2, "a second later: again");
    // The limited client was not evicted: still limited.
    assert_eq!(login(&mut l, "192.0.2.77", None, &mut fx).status, Some(429));
}

#[test]
fn a_unix_socket_peer_is_this_host_and_its_forwarded_client_is_limited() {
    // gunicorn on a Unix socket behind nginx: REMOTE_ADDR is "".
    let mut l = limiter();
    let mut fx = Vec::new();
    for _ in 0..5 {
        let d = login(&mut l, "", Some("198.51.100.20"), &mut fx);
        assert!(d.allow, "{d:?}");
        assert_eq!(d.client.as_deref(), Some("198.51.100.20"));
    }
    assert_eq!(
        login(&mut l, "", Some("198.51.100.20"), &mut fx).status,
        Some(429)
    );
    let other = login(&mut l, "", Some("198.51.100.21"), &mut fx);
    assert!(other.allow, "another client behind the same proxy");
    assert_eq!(l.counters.errors.load(Ordering::Relaxed), 0);
    // Garbage is still an error.
    assert!(
        l.decide(
            "POST",
            Some("/login"),
            "/login",
            Some("not-an-ip"),
            None,
            None,
            None,
            None,
            &mut fx
        )
        .is_err()
    );
}

#[test]
fn forwarded_entries_with_a_port_or_brackets_name_the_client() {
    // Some load balancers append "IP:PORT" or "[IPv6]:PORT": the client is that address,
    // not the proxy (which would put every client behind it in one bucket).
    let mut l = limiter();
    let mut fx = Vec::new();
    for (xff, client) in [
        ("198.51.100.30:51234", "198.51.100.30"),
        ("[2001:db8::7]:443", "2001:db8::7"),
        ("[2001:db8::8]", "2001:db8::8"),
        ("203.0.113.1, [::ffff:198.51.100.31]:80", "198.51.100.31"),
    ] {
        let d = login(&mut l, "127.0.0.1", Some(xff), &mut fx);
        assert_eq!(d.client.as_deref(), Some(client), "{xff}");
    }
    assert_eq!(l.counters.errors.load(Ordering::Relaxed), 0);
    for bad in [
        "198.51.100.30:",
        "[2001:db8::7",
        "1.2.3.4:99999",
        "[1.2.3.4]x",
    ] {
        let d = login(&mut l, "127.0.0.1", Some(bad), &mut fx);
        assert_eq!(d.client.as_deref(), Some("127.0.0.1"), "{bad}");
    }
}

#[test]
fn long_keys_from_requests_are_stored_as_digests_and_still_limit() {
    // Header values and user names come from the request, up to a whole 64 KiB line:
    // the table must not keep them as they are (200,000 × 64 KiB would be 13 GB).
    let mut l = limiter();
    let mut fx = Vec::new();
    let long = "k".repeat(60_000);
    let other = format!("{}x", "k".repeat(59_999));
    let mut search = |l: &mut Limiter, key: &str, peer: &str| {
        let h = HashMap::from([("x-api-key".to_string(), key.to_string())]);
        l.decide(
            "GET",
            Some("/search/<int:id>"),
            "/search/1",
            Some(peer),
            None,
            Some(&h),
            None,
            None,
            &mut fx,
        )
        .expect("decide")
    };
    // Burst 2 per key, whatever the address.
    assert!(search(&mut l, &long, "192.0.2.1").allow);
    assert!(search(&mut l, &long, "192.0.2.2").allow);
    assert_eq!(search(&mut l, &long, "192.0.2.3").status, Some(429));
    assert!(search(&mut l, &other, "192.0.2.3").allow, "another key");
    let t = &l.endpoints[1];
    assert_eq!(t.name, "search");
    assert_eq!(t.states.len(), 2);
    for k in t.states.keys() {
        assert!(k.len() <= 7 + 64, "a stored key of {} bytes", k.len());
    }
    // A short key is kept as written.
    let mut fx2 = Vec::new();
    let h = HashMap::from([("X-Api-Key".to_string(), "abc".to_string())]);
    l.decide(
        "GET",
        Some("/search/<int:id>"),
        "/search/1",
        Some("192.0.2.9"),
        None,
        Some(&h),
        None,
        None,
        &mut fx2,
    )
    .expect("decide");
    assert!(l.endpoints[1].states.contains_key("header:abc"));
}

#[test]
fn quota_keys_are_stored_short_bounded_and_a_tampered_window_is_dropped() {
    let mut l = limiter_with(
        r#"
[app]
socket = "/tmp/x.sock"
[[endpoint]]
name = "daily"
path = "/d"
key = "header:X-Api-Key"
quota = { limit = 5, per = "1d" }
limit = { rate = "1000000/s", burst = 1000000 }
"#,
        1,
    );
    l.clock.wall_frozen = Some(20_000 * 86_400 + 60);
    let go = |l: &mut Limiter, key: &str| {
        let h: HashMap<String, String> = [("X-Api-Key".to_string(), key.to_string())].into();
        l.decide(
            "GET",
            Some("/d"),
            "/d",
            Some("192.0.2.9"),
            None,
            Some(&h),
            None,
            None,
            &mut Vec::new(),
        )
        .expect("decide")
    };
    // A 60 KB key from a request is kept as its digest in the quota table (and the file).
    assert!(go(&mut l, &"q".repeat(60_000)).allow);
    let saved = l.quotas_snapshot();
    assert_eq!(saved.len(), 1);
    assert!(saved[0].key.len() <= 7 + 64, "{} bytes", saved[0].key.len());
    // Bounded: past MAX_KEYS keys in a window, a new key is refused (a quota is a cap),
    // one already counted goes on.
    for i in 1..MAX_KEYS {
        l.quotas.insert(
            ("daily".into(), format!("header:filler{i}")),
            (20_000 * 86_400, 1),
        );
    }
    let full = go(&mut l, "new-key");
    assert_eq!(full.status, Some(429), "{full:?}");
    assert!(
        full.detail
            .unwrap_or_default()
            .contains("quota table is full")
    );
    assert_eq!(l.quotas.len(), MAX_KEYS);
    assert!(go(&mut l, "filler7").allow, "a key already counted");
    // A window start from a damaged file (u64::MAX) neither panics nor stays.
    l.load_quotas(vec![SavedQuota {
        endpoint: "daily".into(),
        key: "header:x".into(),
        window_start: u64::MAX,
        used: 1,
    }]);
    let _ = l.quotas_snapshot();
    l.tick();
    assert!(
        !l.quotas
            .contains_key(&("daily".to_string(), "header:x".to_string()))
    );
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
