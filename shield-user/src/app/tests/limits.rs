//! Buckets: burst and sustained limits, costs, `app_limited` effects, full tables and long
//! keys.

use super::*;

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
        request(l, "GET", path, "192.0.2.9", cost, &mut fx).expect("decide")
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
fn a_cost_past_the_largest_is_a_429_that_cannot_pass_not_an_error() {
    // `shield.charge(len(rows))` with rows from the request: a client sending more rows
    // than MAX_COST made the decision an error, which on_error "open" waved through
    // (the work done, nothing charged). Such a cost never passes: a 429 like any cost
    // above the endpoint's burst.
    let mut l = limiter_with(
        r#"
[app]
socket = "/tmp/x.sock"
[[endpoint]]
name = "export"
path = "/export"
limit = { rate = "100000000/s", burst = 100000000 }
"#,
        1,
    );
    let mut fx = Vec::new();
    let mut at = |l: &mut Limiter, cost: u64| {
        request(l, "POST", "/export", "192.0.2.9", Some(cost), &mut fx)
    };
    for cost in [MAX_COST + 1, u64::MAX] {
        let d = at(&mut l, cost).expect("decided, not an error");
        assert_eq!((d.allow, d.status), (false, Some(429)), "{cost}: {d:?}");
        assert!(
            d.detail.as_deref().unwrap_or("").contains("cannot pass"),
            "{d:?}"
        );
    }
    assert_eq!(l.counters.errors.load(Ordering::Relaxed), 0);
    // Nothing was drawn: the whole burst is still there.
    let d = at(&mut l, MAX_COST).expect("decide");
    assert_eq!((d.allow, d.remaining), (true, Some(0)), "{d:?}");
    // A cost of 0 is still an error.
    assert!(at(&mut l, 0).is_err());
}
