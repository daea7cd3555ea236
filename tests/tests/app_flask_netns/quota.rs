//! Daily quotas across a daemon restart, and concurrency caps (in-flight slots given back by a killed worker).

use super::*;

fn app_row(lab: &Lab, name: &str) -> Value {
    let (ok, out, err) = lab.lab.shield(&[
        "stats",
        "--json",
        "--bpffs",
        lab.lab.bpffs.path.to_str().expect("utf-8"),
    ]);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).expect("stats --json");
    v["app"]["endpoints"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["name"] == name).cloned())
        .unwrap_or_else(|| panic!("no app endpoint {name} in stats: {v}"))
}

/// Seconds to the next 00:00 UTC.
fn to_utc_midnight() -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    86_400 - now % 86_400
}

#[test]
fn a_daily_quota_admits_exactly_its_limit_and_survives_a_daemon_restart() {
    let mut lab = Lab::new("open");
    let state = std::env::temp_dir().join(unique("shield-state-"));
    let restart = |lab: &mut Lab| {
        lab.lab.daemon = None; // SIGTERM: the app task writes the quota file on its way out
        let audit = lab.lab.audit.to_str().expect("utf-8").to_string();
        lab.lab.daemon = Some(
            Daemon::start(
                &shield_tests::shield_bin(),
                &lab.lab.topo.server,
                &lab.lab.policy,
                &lab.lab.bpffs.path,
                &[
                    "--audit-log",
                    &audit,
                    "--state-dir",
                    state.to_str().expect("utf-8"),
                ],
            )
            .expect("restarting shield run"),
        );
    };
    restart(&mut lab);
    let get = |lab: &Lab| {
        lab.req(LEGIT_V4, "GET", "/api/daily", &[("X-Api-Key", "k1")], "")
            .expect("answered")
    };
    for i in 0..15u64 {
        let r = get(&lab);
        assert_eq!(r.status, 200, "request {i}: {r:?}\n{}", lab.app_log());
        let rl = r.header("RateLimit").unwrap_or_default().to_string();
        let want = format!("\"daily\";r={};t=", 19 - i);
        assert!(rl.starts_with(&want), "request {i}: {rl:?}, want {want}…");
        let t: u64 = rl[want.len()..].parse().expect("t");
        assert!(
            t.abs_diff(to_utc_midnight()) <= 2,
            "t = seconds to 00:00 UTC: {t}"
        );
        assert_eq!(
            r.header("RateLimit-Policy"),
            Some("\"daily\";q=100;w=1, \"daily-quota\";q=20;w=86400")
        );
    }
    restart(&mut lab);
    let saved = std::fs::read_to_string(state.join("app-quotas.json")).expect("quota file");
    assert!(saved.contains("\"used\":15"), "{saved}");
    // shield_flask reconnects to the new daemon; 5 more, then the quota is used up.
    for i in 15..20 {
        let r = get(&lab);
        assert_eq!(
            r.status,
            200,
            "request {i} after the restart: {r:?}\n{}",
            lab.app_log()
        );
    }
    let r = get(&lab);
    let body = assert_problem(&r, 429, "rate-limited", "Too Many Requests");
    let retry: u64 = r
        .header("Retry-After")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!(
        retry.abs_diff(to_utc_midnight()) <= 2,
        "retry at 00:00 UTC: {retry}"
    );
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or("")
            .contains("quota of 20 per day"),
        "{body}"
    );
    let daily = app_row(&lab, "daily");
    assert_eq!(
        daily["quota_used"], 20,
        "shield stats --json: quota used {daily}"
    );
    // Another key has its own 20.
    let r = lab
        .req(LEGIT_V4, "GET", "/api/daily", &[("X-Api-Key", "k2")], "")
        .expect("answered");
    assert_eq!(r.status, 200, "{r:?}");
    lab.lab.daemon = None;
    let _ = std::fs::remove_dir_all(&state);
}

/// A gate directory for `/api/slow`: requests wait in the app until `open()`.
struct Gate(PathBuf);

impl Gate {
    fn new() -> Gate {
        let d = std::env::temp_dir().join(unique("shield-gate-"));
        std::fs::create_dir_all(&d).expect("gate dir");
        Gate(d)
    }
    /// Workers' pids of the requests inside the view now.
    fn inside(&self) -> Vec<i32> {
        std::fs::read_dir(&self.0)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| e.file_name().to_string_lossy().starts_with("in-"))
                    .filter_map(|e| std::fs::read_to_string(e.path()).ok()?.trim().parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
    fn open(&self) {
        std::fs::write(self.0.join("open"), "").expect("opening the gate");
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

type Pending = std::thread::JoinHandle<anyhow::Result<Option<Response>>>;

/// `GET /api/slow` held at `gate`, with API key `key`, on a thread of its own.
fn slow(lab: &Lab, key: &str, gate: &Gate) -> Pending {
    let path = format!("/api/slow?gate={}", gate.0.display());
    let key = key.to_string();
    lab.lab
        .topo
        .client
        .spawn_in(move || {
            applab::http(
                IpAddr::V4(LEGIT_V4),
                SocketAddr::new(IpAddr::V4(SERVER_V4), PORT),
                "GET",
                &path,
                &[("X-Api-Key", key.as_str())],
                "",
                Duration::from_secs(90),
            )
        })
        .expect("client namespace")
}

/// Waits until `inside + answered == n` (requests either in the view or answered).
fn settle(gate: &Gate, pending: &[Pending], n: usize) -> (usize, usize) {
    let deadline = Instant::now() + BAN_WITHIN;
    loop {
        let inside = gate.inside().len();
        let answered = pending.iter().filter(|p| p.is_finished()).count();
        if inside + answered >= n || Instant::now() > deadline {
            return (inside, answered);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn concurrency_caps_in_flight_requests_per_key_and_a_killed_worker_gives_its_slots_back() {
    let lab = Lab::new("open");
    // 8 at once from one key: 2 in the view, 6 refused at once (429, Retry-After 1).
    let gate = Gate::new();
    let pending: Vec<Pending> = (0..8).map(|_| slow(&lab, "one", &gate)).collect();
    let (inside, answered) = settle(&gate, &pending, 8);
    assert_eq!(
        (inside, answered),
        (2, 6),
        "2 in flight, 6 refused\n{}",
        lab.app_log()
    );
    assert_eq!(
        app_row(&lab, "slow")["in_flight"],
        2,
        "shield stats --json: 2 in flight"
    );
    let refused: Vec<Response> = pending
        .into_iter()
        .filter(|p| p.is_finished())
        .map(|p| p.join().expect("thread").expect("netns").expect("answered"))
        .collect();
    for r in &refused {
        let body = assert_problem(r, 429, "rate-limited", "Too Many Requests");
        assert_eq!(r.header("Retry-After"), Some("1"), "{r:?}");
        assert_eq!(body["retry_after"], 1);
        assert!(
            body["detail"]
                .as_str()
                .unwrap_or("")
                .contains("slow allows 2 requests in flight at once"),
            "{body}"
        );
    }
    gate.open();
    // 8 at once from 8 keys: all 8 in the view together, then all 200.
    let gate = Gate::new();
    let pending: Vec<Pending> = (0..8)
        .map(|i| slow(&lab, &format!("key-{i}"), &gate))
        .collect();
    let (inside, answered) = settle(&gate, &pending, 8);
    assert_eq!((inside, answered), (8, 0), "8 keys: all in flight at once");
    gate.open();
    for p in pending {
        let r = p.join().expect("thread").expect("netns").expect("answered");
        assert_eq!(r.status, 200, "{r:?}");
    }
    // A worker killed mid-request: its connection to the daemon closes, its slots return.
    let gate = Gate::new();
    let pending: Vec<Pending> = (0..2).map(|_| slow(&lab, "victim", &gate)).collect();
    assert_eq!(settle(&gate, &pending, 2), (2, 0));
    let third = slow(&lab, "victim", &gate);
    let r = third
        .join()
        .expect("thread")
        .expect("netns")
        .expect("answered");
    assert_eq!(r.status, 429, "the victim key is full: {r:?}");
    let mut pids = gate.inside();
    pids.sort_unstable();
    pids.dedup();
    for pid in &pids {
        // SAFETY: a gunicorn worker of this test's app (its pid written by the view).
        assert_eq!(unsafe { libc::kill(*pid, libc::SIGKILL) }, 0, "kill {pid}");
    }
    for p in pending {
        let r = p.join().expect("thread").expect("netns");
        assert!(
            r.is_none(),
            "a killed worker's request gets no answer: {r:?}"
        );
    }
    // The slots come back (the daemon saw the connections close): 2 in flight again. The
    // daemon reads the closed connections as the kernel closes them; a try that raced it
    // is let through and repeated (a leaked slot would fail every try until the bound).
    let deadline = Instant::now() + BAN_WITHIN;
    loop {
        let gate = Gate::new();
        let pending: Vec<Pending> = (0..2).map(|_| slow(&lab, "victim", &gate)).collect();
        let got = settle(&gate, &pending, 2);
        gate.open();
        let statuses: Vec<u16> = pending
            .into_iter()
            .map(|p| {
                p.join()
                    .expect("thread")
                    .expect("netns")
                    .expect("answered")
                    .status
            })
            .collect();
        if got == (2, 0) {
            assert_eq!(statuses, [200, 200]);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after the kill ({pids:?}) the victim key never had its 2 slots again: {got:?} {statuses:?}\n{}",
            lab.app_log()
        );
    }
}
