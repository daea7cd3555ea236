//! The data path's live clock (shield-ebpf/src/clock.rs: the coarse clock, read once per
//! jiffy per CPU): a source refused for its rate is admitted again once its interval has
//! passed, in real time, however many packets came between. BPF_PROG_TEST_RUN on the real
//! object with the clock running (not frozen); needs root (fails, never skips, without it).

use std::time::{Duration, Instant};

use shield_common::Reason;
use shield_tests::{Harness, L4, Pkt, XDP_DROP, XDP_PASS};

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
