//! The Grafana dashboard (deploy/grafana/shield.json) and the Prometheus alert rules
//! (deploy/prometheus/shield-rules.yml): promtool accepts the rules and their unit tests
//! pass, and every metric the dashboard's and the rules' expressions name is exported by a
//! real daemon's /metrics, which `promtool check metrics` accepts (the classic text format,
//! served to clients that do not ask for OpenMetrics; Prometheus's `Accept` gets OpenMetrics).
//!
//! Tolerated when absent, and only this: `up` (Prometheus's own scrape health, never
//! exported by a target). The daemon runs with `[app]` and `[fleet]` (a Redis that is not
//! there: the link is down, its series are exported all the same), so the `shield_app_*`
//! and `shield_fleet_*` families are checked too.

use std::{
    collections::BTreeSet,
    io::{Read as _, Write as _},
    net::{IpAddr, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;
use shield_tests::{
    netlab::{ATTACKER_V4, LEGIT_V4},
    nslab::{NsLab, counter},
};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(root().join("deploy/prometheus"))
        .output()
        .unwrap_or_else(|e| {
            panic!("promtool is needed (Debian package prometheus; `cargo xtask bootstrap` installs it): {e}")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn promtool_accepts_the_rules_and_their_tests_pass() {
    let out = promtool(&["check", "rules", "shield-rules.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
    let alerts = rule_alerts();
    for wanted in [
        "ShieldDaemonDown",
        "ShieldEventsLost",
        "ShieldMapInsertFailures",
        "ShieldAttackStarted",
        "ShieldReloadFailed",
        "ShieldFleetLinkDown",
    ] {
        assert!(alerts.contains(wanted), "no alert {wanted} in {alerts:?}");
    }
    // Each alert fires on the series that should raise it, and not before.
    let out = promtool(&["test", "rules", "shield-rules.test.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
    let tests = std::fs::read_to_string(root().join("deploy/prometheus/shield-rules.test.yml"))
        .expect("shield-rules.test.yml");
    for a in &alerts {
        assert!(
            tests.contains(&format!("alertname: {a}")),
            "alert {a} has no promtool unit test"
        );
    }
}

fn rule_alerts() -> BTreeSet<String> {
    let rules = std::fs::read_to_string(root().join("deploy/prometheus/shield-rules.yml"))
        .expect("deploy/prometheus/shield-rules.yml");
    rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:"))
        .map(|a| a.trim().to_string())
        .collect()
}

/// Every PromQL expression of the rules file (one `expr:` line each, checked) and of the
/// dashboard (panel targets and template variable queries).
fn expressions() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let rules = std::fs::read_to_string(root().join("deploy/prometheus/shield-rules.yml"))
        .expect("rules file");
    for l in rules.lines() {
        if let Some(e) = l.trim().strip_prefix("expr:") {
            let e = e.trim();
            assert!(
                !e.is_empty() && !e.starts_with('|') && !e.starts_with('>'),
                "keep each rule's expr on its line: {l:?}"
            );
            out.push(("shield-rules.yml".to_string(), e.to_string()));
        }
    }
    assert_eq!(
        out.len(),
        rule_alerts().len(),
        "one expr per alert in the rules file"
    );

    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("deploy/grafana/shield.json"))
            .expect("deploy/grafana/shield.json"),
    )
    .expect("the dashboard is JSON");
    let panels = dash["panels"].as_array().expect("panels");
    let mut titles = Vec::new();
    for p in panels.iter().filter(|p| p["type"] != "row") {
        let title = p["title"].as_str().expect("panel title").to_string();
        let targets = p["targets"].as_array().expect("panel targets");
        assert!(!targets.is_empty(), "panel {title:?} has no query");
        for t in targets {
            let e = t["expr"].as_str().expect("target expr");
            assert!(!e.trim().is_empty(), "panel {title:?}: empty expr");
            out.push((format!("panel {title:?}"), e.to_string()));
        }
        titles.push(title);
    }
    for v in dash["templating"]["list"].as_array().expect("templating") {
        if v["type"] == "query" {
            let q = v["definition"].as_str().expect("variable query");
            // label_values(EXPR, label): the series selector is the part to check.
            let inner = q
                .strip_prefix("label_values(")
                .and_then(|r| r.rsplit_once(','))
                .map_or(q, |(sel, _)| sel);
            out.push((format!("variable {}", v["name"]), inner.to_string()));
        }
    }
    // What the issue asks the dashboard to show.
    let all = titles.join(" | ").to_lowercase();
    for topic in [
        "drops by rule and reason",
        "top limited sources",
        "bans",
        "table fill",
        "under attack",
        "reloads",
        "fleet",
        "app",
    ] {
        assert!(all.contains(topic), "no panel about {topic:?}: {all}");
    }
    out
}

/// Metric names in a PromQL expression: identifiers outside label matchers, strings, range
/// selectors and grouping clauses that are neither functions nor keywords.
fn metric_names(expr: &str) -> BTreeSet<String> {
    const KEYWORDS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "and",
        "or",
        "unless",
        "offset",
        "inf",
        "nan",
        // Aggregation operators: `sum by (x) (…)` puts a clause between them and `(`.
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    ];
    let b = expr.as_bytes();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let mut skip_group = false;
    while i < b.len() {
        match b[i] {
            b'"' | b'\'' | b'`' => {
                let q = b[i];
                i += 1;
                while i < b.len() && b[i] != q {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'{' | b'[' => {
                let close = if b[i] == b'{' { b'}' } else { b']' };
                while i < b.len() && b[i] != close {
                    i += 1;
                }
                i += 1;
            }
            b'(' if skip_group => {
                while i < b.len() && b[i] != b')' {
                    i += 1;
                }
                skip_group = false;
                i += 1;
            }
            c if c.is_ascii_alphabetic() || c == b'_' || c == b':' => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':')
                {
                    i += 1;
                }
                let word = &expr[start..i];
                let next = expr[i..].trim_start();
                let lower = word.to_ascii_lowercase();
                if matches!(
                    lower.as_str(),
                    "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
                ) {
                    skip_group = next.starts_with('(');
                } else if !next.starts_with('(') && !KEYWORDS.contains(&lower.as_str()) {
                    names.insert(word.to_string());
                }
            }
            c if c.is_ascii_digit() || c == b'.' => {
                // A number (0.9, 1e3): not a name.
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                    i += 1;
                }
            }
            _ => i += 1,
        }
    }
    names
}

#[test]
fn the_metric_name_extraction_reads_promql() {
    let n = metric_names(
        r#"max without (iface) (shield_sources_capacity) + sum by (rule, reason) (rate(shield_packets_total{iface=~"$iface", reason=~"a|b"}[$__rate_interval])) / on (iface) group_left shield_sources_capacity > 0.9 and up{job="x"} == 0"#,
    );
    let want: BTreeSet<String> = ["shield_packets_total", "shield_sources_capacity", "up"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(n, want);
    assert_eq!(
        metric_names("topk(10, shield_top_source_limited_packets{a=\"b\"})"),
        ["shield_top_source_limited_packets".to_string()].into()
    );
}

#[test]
fn the_dashboards_drop_filters_name_every_reason_the_data_path_drops() {
    // A panel of drops filters `reason=~"a|b|…"`: a dropping reason left out (a SYN-cookie
    // rule's `bad_cookie` ACK flood) would be missing from "drops/s" during that attack.
    let dropping: BTreeSet<&str> = shield_common::Reason::ALL
        .iter()
        .filter(|r| r.is_drop())
        .map(|r| r.name())
        .collect();
    let mut filters = 0;
    for (place, e) in expressions() {
        for part in e.split("reason=~\"").skip(1) {
            let listed: BTreeSet<&str> = part.split('"').next().unwrap_or("").split('|').collect();
            // The drop filters are the ones that list `deny`; others (`would_drop|would_ban`)
            // are about monitor mode.
            if listed.contains("deny") {
                filters += 1;
                let missing: Vec<_> = dropping.difference(&listed).collect();
                assert!(
                    missing.is_empty() && listed.is_subset(&dropping),
                    "{place}: the drop filter {listed:?} misses {missing:?} or lists a reason that does not drop: {e}"
                );
            }
        }
    }
    assert!(filters >= 3, "the dashboard's drop panels were not found");
}

/// `GET /metrics` of the lab's daemon, with `extra` header lines: (head, body).
fn scrape(lab: &NsLab, extra: &str) -> (String, String) {
    let response = lab
        .topo
        .server
        .run_in(|| {
            let mut s = TcpStream::connect("127.0.0.1:9477").expect("metrics port");
            s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: x\r\n{extra}\r\n").as_bytes())
                .expect("request");
            let mut out = String::new();
            s.read_to_string(&mut out).expect("response");
            out
        })
        .expect("server namespace");
    let (head, body) = response.split_once("\r\n\r\n").expect("HTTP response");
    assert!(head.contains(" 200 "), "{head}");
    (head.to_ascii_lowercase(), body.to_string())
}

/// Series names (sample lines, not `# TYPE` families) a running daemon serves.
fn scrape_names(lab: &NsLab) -> BTreeSet<String> {
    let (_, body) = scrape(lab, "");
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split(['{', ' ']).next().expect("sample name").to_string())
        .collect()
}

const API: u16 = 8080;

#[test]
fn every_metric_in_the_dashboard_and_the_rules_is_exported() {
    let exprs = expressions();
    // A policy that makes every family of the daemon appear: a rule with an `unverified`
    // budget (attack and budget series) and escalation, and a source over its limit (top
    // sources), an `[app]` with an endpoint and a signal, and a `[fleet]` whose Redis is not
    // there (port 1 refuses at once).
    let app_socket =
        std::env::temp_dir().join(format!("shield-obs-app-{}.sock", std::process::id()));
    let lab = NsLab::new(
        &format!(
            r#"
[app]
socket = "{}"
group = "root"

[[endpoint]]
name = "login"
path = "/login"
limit = {{ rate = "5/min", burst = 5 }}

[[signal]]
name = "login_failed"
limit = {{ rate = "10/h", burst = 5 }}

[fleet]
redis = "redis://127.0.0.1:1/0"
host = "obs"

[[rule]]
name = "api"
protocol = "tcp"
ports = [8080]
connections = {{ rate = "5/s", burst = 10 }}
escalation = {{ strikes = 3, window = "1m", ban = "30s", scope = "rule" }}
unverified = {{ rate = "1000/s", burst = 1000 }}
"#,
            app_socket.display()
        ),
        &[API],
    );
    lab.connect(IpAddr::V4(LEGIT_V4), API, 3, Duration::from_millis(20));
    // Past the burst: refused attempts make the attacker a top source.
    let deadline = Instant::now() + Duration::from_secs(30);
    while counter(&lab.stats(), "api", "conn_limit") == 0 {
        assert!(
            Instant::now() < deadline,
            "no conn_limit drop after 30 s of an attacker over its limit"
        );
        lab.connect(IpAddr::V4(ATTACKER_V4), API, 40, Duration::from_millis(5));
    }
    let exported = scrape_names(&lab);

    // The format follows the scraper: curl and promtool get the classic text format, which
    // `promtool check metrics` accepts without a word (served as OpenMetrics, it reported
    // every counter as having no help text); Prometheus, which asks for OpenMetrics, gets it.
    let (head, classic) = scrape(&lab, "");
    assert!(
        head.contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    assert!(
        classic.contains("# TYPE shield_packets_total counter") && !classic.contains("# EOF"),
        "{classic}"
    );
    let mut lint = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is needed (Debian package prometheus)");
    lint.stdin
        .take()
        .expect("stdin")
        .write_all(classic.as_bytes())
        .expect("feed promtool");
    let lint = lint.wait_with_output().expect("promtool check metrics");
    assert!(
        lint.status.success() && lint.stdout.is_empty() && lint.stderr.is_empty(),
        "promtool check metrics on /metrics: {}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );
    let (head, openmetrics) = scrape(
        &lab,
        "Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5\r\n",
    );
    assert!(
        head.contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{head}"
    );
    assert!(
        openmetrics.ends_with("# EOF\n") && openmetrics.contains("# TYPE shield_packets counter"),
        "{openmetrics}"
    );

    let mut missing = Vec::new();
    let mut used = BTreeSet::new();
    for (origin, e) in &exprs {
        for name in metric_names(e) {
            used.insert(name.clone());
            if exported.contains(&name) || name == "up" {
                continue;
            }
            missing.push(format!("{origin}: {name} in {e}"));
        }
    }
    assert!(
        missing.is_empty(),
        "metrics the dashboard or the rules use that the daemon does not export:\n{}\nexported: {exported:?}",
        missing.join("\n")
    );
    // The check has teeth: the daemon's own families are used and were found.
    for core in [
        "shield_packets_total",
        "shield_active_bans",
        "shield_top_source_limited_packets",
        "shield_under_attack",
        "shield_reloads_total",
        "shield_events_lost_total",
        "shield_map_insert_failures_total",
        "shield_app_limited_total",
        "shield_fleet_connected",
    ] {
        assert!(used.contains(core), "{core} is used nowhere");
        assert!(exported.contains(core), "{core} not exported: {exported:?}");
    }
    let unused: Vec<&String> = exported.difference(&used).collect();
    println!(
        "{} metric names used, all exported but `up` (Prometheus's own); exported but on no panel: {unused:?}",
        used.len()
    );
}
