//! Per-endpoint limits end to end: the login burst then 429s then the NIC ban, a trusted proxy, API keys, cost-weighted endpoints, per-user limits.

use super::*;

#[test]
fn login_burst_then_429s_then_dropped_at_the_nic_and_failed_logins_ban() {
    let lab = Lab::new("open");

    // Exactly the burst is admitted across the 4 workers, with the draft's fields.
    for i in 0..5u64 {
        let r = lab
            .login(ATTACKER_V4, &[])
            .unwrap_or_else(|| panic!("login {i} got no answer\n{}", lab.app_log()));
        assert_eq!(r.status, 200, "login {i}: {r:?}\n{}", lab.app_log());
        assert_eq!(r.header("RateLimit-Policy"), Some(LOGIN_POLICY), "{r:?}");
        let (remaining, reset) = ratelimit(&r);
        assert_eq!(remaining, 4 - i, "{r:?}");
        assert!((1..=60).contains(&reset), "{r:?}");
    }
    let r = lab.login(ATTACKER_V4, &[]).expect("the 6th login answered");
    let body = assert_problem(&r, 429, "rate-limited", "Too Many Requests");
    assert_eq!(body["endpoint"], "login");
    let retry: u64 = r
        .header("Retry-After")
        .expect("Retry-After")
        .parse()
        .expect("Retry-After in seconds");
    // 5/min: one request every 12 s; the bucket was emptied just now.
    assert!((1..=12).contains(&retry), "Retry-After {retry}");
    assert_eq!(body["retry_after"], retry);
    assert_eq!(r.header("RateLimit-Policy"), Some(LOGIN_POLICY));
    let (remaining, reset) = ratelimit(&r);
    assert_eq!(remaining, 0);
    assert!(reset >= 1, "{r:?}");

    // A second client is unaffected.
    let r = lab.login(LEGIT_V4, &[]).expect("second client answered");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(ratelimit(&r).0, 4);

    // The first client keeps going: limited in 3 different seconds → banned at the NIC.
    let started = Instant::now();
    let mut limited = 1;
    loop {
        match lab.login(ATTACKER_V4, &[]) {
            Some(r) if r.status == 429 => limited += 1,
            Some(r) if banned_at_l7(&r) => break,
            Some(r) => panic!("expected 429, a 403 for the ban or a drop, got {r:?}"),
            None => break,
        }
        assert!(
            started.elapsed() < BAN_WITHIN,
            "still answered after {limited} 429s in {BAN_WITHIN:?}: no ban at the NIC\n{}",
            lab.lab
                .daemon
                .as_ref()
                .map(|d| d.log_text())
                .unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "banned after {limited} 429s in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(limited >= 3, "banned after only {limited} 429s");
    wait_for_nic_ban(&lab.lab, ATTACKER_V4);
    // Every TCP connection of the banned client is dropped (any path, host scope), by the
    // XDP program: its `ban` drops grow.
    let dropped_before = counter(&lab.lab.stats(), "api", "ban");
    assert_eq!(lab.get(ATTACKER_V4, "/api/items"), None);
    assert_eq!(lab.get(ATTACKER_V4, "/health"), None);
    let dropped_after = counter(&lab.lab.stats(), "api", "ban");
    assert!(
        dropped_after >= dropped_before + 2,
        "XDP ban drops {dropped_before} -> {dropped_after}: the connections were not dropped at the NIC"
    );
    // …while others are served.
    assert_eq!(lab.get(LEGIT_V4, "/api/items"), Some(200));
    assert_eq!(lab.login(LEGIT_V4, &[]).map(|r| r.status), Some(200));
    assert!(
        !app_bans(&lab.lab, ATTACKER_V4).is_empty(),
        "no app ban in the audit log: {:?}",
        lab.lab.audit_lines()
    );

    // login_failed: burst 3, so the 4th failed login is limited (one strike) → banned.
    let mut failed = 0;
    loop {
        match lab.req(GUESSER, "POST", "/login", &[], &login_form("hunter2")) {
            Some(r) if r.status == 401 => failed += 1,
            Some(r) if banned_at_l7(&r) => break,
            Some(r) => panic!("expected 401, a 403 for the ban or a drop, got {r:?}"),
            None => break,
        }
        assert!(
            failed <= 4,
            "still answered after {failed} failed logins (signal burst 3, 1 strike)"
        );
    }
    assert_eq!(failed, 4, "failed logins answered before the ban");
    wait_for_nic_ban(&lab.lab, GUESSER);
    assert_eq!(lab.get(GUESSER, "/api/items"), None);
    assert_eq!(lab.get(LEGIT_V4, "/api/items"), Some(200));
    assert!(
        !app_bans(&lab.lab, GUESSER).is_empty(),
        "no app ban for the guesser in the audit log: {:?}",
        lab.lab.audit_lines()
    );
}

#[test]
fn behind_a_trusted_proxy_the_forwarded_client_is_limited_and_banned_at_l7() {
    let lab = Lab::new("open");
    let client = [("X-Forwarded-For", "192.0.2.50")];
    for i in 0..5 {
        let r = lab.login(PROXY, &client).expect("answered");
        assert_eq!(r.status, 200, "login {i}: {r:?}\n{}", lab.app_log());
    }
    let r = lab.login(PROXY, &client).expect("answered");
    assert_problem(&r, 429, "rate-limited", "Too Many Requests");
    // Another client behind the same proxy has its own limit.
    let r = lab
        .login(PROXY, &[("X-Forwarded-For", "192.0.2.51")])
        .expect("answered");
    assert_eq!((r.status, ratelimit(&r).0), (200, 4), "{r:?}");

    // An untrusted peer's X-Forwarded-For is ignored: a new value each time does not help.
    for i in 0..5 {
        let xff = format!("192.0.2.{}", 100 + i);
        let r = lab
            .login(UNTRUSTED, &[("X-Forwarded-For", &xff)])
            .expect("answered");
        assert_eq!(r.status, 200, "{r:?}");
    }
    let r = lab
        .login(UNTRUSTED, &[("X-Forwarded-For", "192.0.2.200")])
        .expect("answered");
    assert_problem(&r, 429, "rate-limited", "Too Many Requests");

    // The forwarded client keeps going: after the strikes it is banned at L7 (403: XDP
    // only sees the proxy), and the proxy itself is still served.
    let started = Instant::now();
    let banned = loop {
        let r = lab
            .login(PROXY, &client)
            .expect("the proxy is never dropped");
        match r.status {
            429 => {}
            403 => break r,
            _ => panic!("expected 429 then 403, got {r:?}"),
        }
        assert!(
            started.elapsed() < BAN_WITHIN,
            "no L7 ban within {BAN_WITHIN:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let body = assert_problem(&banned, 403, "banned", "Forbidden");
    assert!(body["retry_after"].as_u64().is_some_and(|s| s >= 1));
    assert_eq!(lab.get(PROXY, "/api/items"), Some(200));
    let r = lab
        .login(PROXY, &[("X-Forwarded-For", "192.0.2.52")])
        .expect("answered");
    assert_eq!(r.status, 200, "another client behind the proxy: {r:?}");
}

#[test]
fn an_api_key_endpoint_limits_per_key_whatever_the_address() {
    let lab = Lab::new("open");
    let get = |src: Ipv4Addr, key: &str| {
        lab.req(src, "GET", "/api/checked", &[("X-Api-Key", key)], "")
            .expect("answered")
    };
    // One key from two addresses shares one limit…
    for (i, src) in [LEGIT_V4, ATTACKER_V4, LEGIT_V4].into_iter().enumerate() {
        let r = get(src, "key-1");
        assert_eq!(r.status, 200, "request {i}: {r:?}\n{}", lab.app_log());
        assert_eq!(r.header("RateLimit-Policy"), Some("\"keyed\";q=3;w=180"));
    }
    let r = get(ATTACKER_V4, "key-1");
    assert_problem(&r, 429, "rate-limited", "Too Many Requests");
    // …and another key from the same address has its own.
    let r = get(LEGIT_V4, "key-2");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.header("RateLimit"),
        Some("\"keyed\";r=2;t=60"),
        "one of 3 used, the next in 60 s"
    );
}

#[test]
fn a_cost_weighted_endpoint_and_a_per_request_charge_draw_their_tokens() {
    let lab = Lab::new("open");
    // cost = 5 under a burst of 10: exactly 2 of 6 from one client, across 4 workers.
    let statuses: Vec<(u16, Option<String>)> = (0..6)
        .map(|_| {
            let r = lab
                .req(LEGIT_V4, "GET", "/api/report", &[], "")
                .expect("answered");
            (r.status, r.header("RateLimit").map(str::to_string))
        })
        .collect();
    assert_eq!(
        statuses.iter().map(|s| s.0).collect::<Vec<_>>(),
        [200, 200, 429, 429, 429, 429],
        "{statuses:?}\n{}",
        lab.app_log()
    );
    assert_eq!(statuses[0].1.as_deref(), Some("\"report\";r=5;t=300"));
    let r = lab
        .req(LEGIT_V4, "GET", "/api/report", &[], "")
        .expect("answered");
    let body = assert_problem(&r, 429, "rate-limited", "Too Many Requests");
    let retry: u64 = r
        .header("Retry-After")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!(
        (1..=300).contains(&retry),
        "5 tokens at 1/min: at most 300 s, got {retry}"
    );
    assert_eq!(body["retry_after"], retry);
    // Another client has its own 10 tokens.
    let r = lab
        .req(ATTACKER_V4, "GET", "/api/report", &[], "")
        .expect("answered");
    assert_eq!(r.status, 200, "{r:?}");
    // shield.charge(6) in the view: 1 on arrival + 6 = 7 of 10 (a daily rate: 1/d).
    let r = lab
        .req(LEGIT_V4, "POST", "/api/export?rows=6", &[], "")
        .expect("answered");
    assert_eq!(r.status, 200, "{r:?}\n{}", lab.app_log());
    assert_eq!(r.json()["exported"], 6);
    let (rem, t) = r
        .header("RateLimit")
        .and_then(|v| v.strip_prefix("\"export\";r="))
        .and_then(|v| v.split_once(";t="))
        .map(|(a, b)| (a.parse::<u64>().unwrap(), b.parse::<u64>().unwrap()))
        .unwrap_or_else(|| panic!("RateLimit of export: {r:?}"));
    assert_eq!(rem, 3, "{r:?}");
    assert_eq!(t, 7 * 86_400, "7 tokens at 1/d come back in 7 days");
    // The next one: 1 on arrival leaves 2, the charge of 6 is refused by a 429 from the view.
    let r = lab
        .req(LEGIT_V4, "POST", "/api/export?rows=6", &[], "")
        .expect("answered");
    let body = assert_problem(&r, 429, "rate-limited", "Too Many Requests");
    assert_eq!(body["endpoint"], "export");
    assert!(
        body["detail"].as_str().unwrap_or("").contains("per day"),
        "{body}"
    );
    // 2 tokens remain: a request without a charge still passes twice, then not.
    let s: Vec<u16> = (0..3)
        .map(|_| {
            lab.req(LEGIT_V4, "POST", "/api/export", &[], "")
                .expect("answered")
                .status
        })
        .collect();
    assert_eq!(s, [200, 200, 429]);
    // `shield check` shows the cost.
    let out = std::process::Command::new(shield_tests::shield_bin())
        .arg("check")
        .arg(&lab.lab.policy)
        .output()
        .expect("shield check");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("report") && l.contains("1/min burst 10") && l.contains(" 5 ")),
        "the matrix shows report's cost 5:\n{text}"
    );
}

/// The endpoint's row of `shield stats --json` (the daemon's app counters).
#[test]
fn a_user_endpoint_limits_per_user_and_falls_back_to_the_address() {
    let lab = Lab::new("open");
    let me = |src: Ipv4Addr, user: Option<&str>| {
        let h: Vec<(&str, &str)> = user.map(|u| ("X-Demo-User", u)).into_iter().collect();
        lab.req(src, "GET", "/api/me", &h, "")
            .expect("answered")
            .status
    };
    // alice from two addresses: one limit of 2.
    assert_eq!(me(LEGIT_V4, Some("alice")), 200, "{}", lab.app_log());
    assert_eq!(me(ATTACKER_V4, Some("alice")), 200);
    assert_eq!(me(LEGIT_V4, Some("alice")), 429);
    // bob from the same address is another user.
    assert_eq!(me(LEGIT_V4, Some("bob")), 200);
    // No user: keyed by the address (a fresh one: its own limit of 2).
    assert_eq!(me(GUESSER, None), 200);
    assert_eq!(me(GUESSER, None), 200);
    assert_eq!(me(GUESSER, None), 429);
    assert_eq!(me(GUESSER, Some("carol")), 200);
}
