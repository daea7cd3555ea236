//! `concurrency` slots and quotas: caps, daily windows, the state file and its bounds.

use super::*;

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
fn a_cost_above_the_quota_says_it_cannot_pass() {
    // Quota 4 a day: a request costing 5 never passes, in any window. It was told the
    // quota "is used up (0 used)" and to retry at the reset, when it would fail again.
    let mut l = limiter_with(
        r#"
[app]
socket = "/tmp/x.sock"
[[endpoint]]
name = "daily"
path = "/d"
limit = { rate = "100/s", burst = 100 }
quota = { limit = 4, per = "1d" }
"#,
        1,
    );
    let mut fx = Vec::new();
    let mut go = |l: &mut Limiter, cost: u64| {
        request(l, "GET", "/d", "192.0.2.9", Some(cost), &mut fx).expect("decide")
    };
    let d = go(&mut l, 5);
    assert_eq!((d.allow, d.status), (false, Some(429)));
    assert!(
        d.detail.as_deref().unwrap_or("").contains("cannot pass"),
        "{d:?}"
    );
    // Nothing drawn: the whole quota is left.
    let d = go(&mut l, 4);
    assert!(d.allow, "{d:?}");
    assert_eq!(l.quota_used_of("daily"), 4);
}
