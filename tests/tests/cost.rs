//! Per-packet cost of the allowed path (known source under its limit, state updated in
//! place) next to a trivial XDP_PASS program, in the same run. Reports ns and the ratio;
//! asserts only what must hold whatever the machine's speed: every repetition passed and
//! was counted exactly once.

use shield_common::{BASELINE_PROGRAM_NAME, PROGRAM_NAME, Reason};
use shield_tests::{Harness, L4, Pkt, XDP_PASS};

const POLICY: &str = r#"
[[rule]]
name = "api"
protocol = "tcp"
ports = [8080]
connections = { rate = "100000000/s", burst = 100000000 }
"#;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[test]
fn allowed_path_cost_next_to_trivial_program() {
    let repeat: u32 = std::env::var("SHIELD_COST_REPEAT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let mut h = Harness::new(POLICY);
    let frame = Pkt::new("192.0.2.1", L4::syn(8080)).bytes();
    assert_eq!(h.run(&frame), XDP_PASS, "first packet creates the source");
    let (mut shield, mut base) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        let (action, ns) = h.run_repeat(PROGRAM_NAME, &frame, repeat);
        assert_eq!(action, XDP_PASS, "allowed path must pass");
        shield.push(ns);
        let (action, ns) = h.run_repeat(BASELINE_PROGRAM_NAME, &frame, repeat);
        assert_eq!(action, XDP_PASS);
        base.push(ns);
    }
    let counted = h.count("api", Reason::Pass).packets;
    assert_eq!(
        counted,
        1 + 3 * u64::from(repeat),
        "every repetition must be counted exactly once"
    );
    assert_eq!(h.stats().tracked_sources, 1, "known source: no new entries");
    let (s, b) = (median(shield), median(base));
    eprintln!(
        "per-packet cost, allowed path (known source, in-place update): {s:.1} ns; trivial XDP_PASS: {b:.1} ns; ratio {:.2}x ({repeat} repeats, median of 3)",
        s / b.max(1.0)
    );
}
