//! The data path's live clock (shield-ebpf/src/clock.rs: the coarse clock, read once per
//! jiffy per CPU): a source refused for its rate is admitted again once its interval has
//! passed, in real time, however many packets came between. BPF_PROG_TEST_RUN on the real
//! object with the clock running (not frozen); needs root (fails, never skips, without it).
//!
//! Each CPU keeps its own (jiffies, time) pair, so one CPU's `now` may be up to a tick
//! behind another's for a tick (the CPU that read in the moment the tick had moved
//! `jiffies` but not the time). State one CPU stamped is then judged by a CPU whose `now`
//! is earlier than the stamp: played here with the frozen clock stepped back a few ms.

use std::time::{Duration, Instant};

use shield_common::Reason;
use shield_tests::{Harness, L4, Pkt, XDP_DROP, XDP_PASS, XDP_TX};

/// One connection per 100 ms, no burst: the sketch tracks the source from its first SYN.
const POLICY: &str = r#"
[[rule]]
name = "api"
protocol = "tcp"
ports = [7070]
connections = { rate = "10/s", burst = 1 }
"#;

fn syn(src: &str) -> Vec<u8> {
    Pkt::new(src, L4::syn(7070)).bytes()
}

#[test]
fn a_refused_source_is_admitted_again_once_its_interval_has_passed_on_the_live_clock() {
    let h = Harness::new(POLICY);
    let frame = syn("198.51.100.9");
    let (mut refused_checked, mut late_passes) = (0, 0);
    for round in 0..5 {
        let start = Instant::now();
        assert_eq!(h.run(&frame), XDP_PASS, "round {round}: first SYN");
        // Many SYNs within the interval: each must see the clock where it is (refused),
        // not a time that runs ahead.
        for _ in 0..1000 {
            let action = h.run(&frame);
            // The interval is 100 ms; a run this late (a slow machine) may rightly find a
            // new token, less two coarse ticks by which the first SYN's time may lag.
            if start.elapsed() < Duration::from_millis(60) {
                assert_eq!(action, XDP_DROP, "round {round}: within the interval");
                refused_checked += 1;
            } else if action == XDP_PASS {
                late_passes += 1;
            }
        }
        // Two coarse ticks of slack (8 ms at HZ=250, 20 ms at HZ=100) past the interval.
        std::thread::sleep(Duration::from_millis(150));
    }
    // The first SYN of every round passed: the clock moved 150 ms each time on whichever
    // CPU ran it. A stuck per-CPU clock would have refused rounds 1-4.
    assert_eq!(h.count("api", Reason::Pass).packets, 5 + late_passes);
    assert!(
        refused_checked > 0,
        "every run came 60 ms or more after its round's first: the machine is too slow to check the refusals"
    );
}

/// A verified source, one connection a minute, refused SYNs answered with a RST.
const RESET_POLICY: &str = r#"
[[rule]]
name = "api"
protocol = "tcp"
ports = [7071]
connections = { rate = "1/min", burst = 1 }
over_limit = "reset"
"#;

#[test]
fn a_cpu_whose_clock_is_a_tick_behind_sends_no_second_rst_within_the_second() {
    const T0: u64 = 5_000_000_000_000;
    let mut h = Harness::frozen(RESET_POLICY, T0);
    let src = "192.0.2.77";
    h.verify(src.parse().unwrap(), T0);
    let frame = Pkt::new(src, L4::syn(7071)).bytes();
    assert_eq!(
        h.run(&frame),
        XDP_PASS,
        "the first connection is within the limit"
    );
    assert_eq!(h.run(&frame), XDP_TX, "over the limit: answered with a RST");
    // The next SYN handled by a CPU whose clock is 4 ms (a tick at HZ=250) behind: the
    // source was answered within the second, so it is dropped, not answered again.
    h.tables
        .freeze_clock(T0 - 4_000_000)
        .expect("stepping the frozen clock");
    assert_eq!(
        h.run(&frame),
        XDP_DROP,
        "one RST a second per source, also on a CPU whose clock lags"
    );
    assert_eq!(h.count("api", Reason::Reset).packets, 1);
    assert_eq!(h.count("api", Reason::ConnLimit).packets, 1);
}
