//! One source's SYNs arriving on both CPUs of a multi-queue veth (the live-frames generator
//! on each CPU: on veth the receive path runs on the sending CPU), with the real daemon:
//! the source gets no more than its limit between the two receive queues. (On veth the
//! receive path is slow enough that the old read-modify-write did not overshoot here at
//! 100,000/s or 1,000,000/s; the race itself is shown by `concurrency`, where both CPUs
//! run the program back to back.)

use std::time::Instant;

use shield_tests::netlab;
use shield_tests::{
    nslab::{NsLab, counter},
    synflood::{Generator, MODE_FIXED, cpus, mac_of, pin_to, syn_frame},
};

const POLICY: &str = r#"
[[rule]]
name = "api"
protocol = "tcp"
ports = [8000]
connections = { rate = "100000/s", burst = 1000 }
"#;

#[test]
fn one_source_on_two_receive_queues_gets_no_more_than_its_limit() {
    assert!(cpus() >= 2, "this test needs two CPUs");
    let lab = NsLab::with_queues(POLICY, &[], 2);
    let mac = mac_of(&lab.topo.server.name, netlab::SERVER_IF).expect("server MAC");
    let frame = syn_frame(mac, [10, 9, 9, 9], netlab::SERVER_V4.octets(), 8000);
    let per_cpu: u32 = 1_500_000;
    let started = Instant::now();
    let spans: Vec<(Instant, Instant)> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..2)
            .map(|cpu| {
                let (lab, frame) = (&lab, &frame);
                s.spawn(move || {
                    lab.topo
                        .client
                        .run_in(|| {
                            pin_to(cpu);
                            let g = Generator::new(MODE_FIXED, 0).expect("generator");
                            let from = Instant::now();
                            g.send_count(frame, per_cpu).expect("flood");
                            (from, Instant::now())
                        })
                        .expect("client namespace")
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().expect("flood thread"))
            .collect()
    });
    let wall = started.elapsed().as_secs_f64();
    let stats = lab.stats();
    let admitted = counter(&stats, "api", "pass");
    let refused = counter(&stats, "api", "conn_limit");
    // The limit from the first flood's start to the last one's end, plus a few coarse
    // clock ticks of slack.
    let first = spans.iter().map(|s| s.0).min().expect("two floods");
    let last = spans.iter().map(|s| s.1).max().expect("two floods");
    let span = (last - first).as_secs_f64();
    let overlap = spans
        .iter()
        .map(|s| s.1)
        .min()
        .expect("two floods")
        .saturating_duration_since(spans.iter().map(|s| s.0).max().expect("two floods"))
        .as_secs_f64();
    let allowed = 1_000.0 + 100_000.0 * (span + 0.02);
    eprintln!(
        "two receive queues, one source: {} SYNs judged ({admitted} admitted, {refused} refused) in {wall:.2} s (floods over {span:.2} s, both at once for {overlap:.2} s); at most {allowed:.0} allowed",
        admitted + refused
    );
    assert!(
        admitted + refused >= u64::from(per_cpu),
        "the program saw {} of {} SYNs",
        admitted + refused,
        2 * per_cpu
    );
    assert!(
        admitted as f64 <= allowed,
        "one source on two receive queues got {admitted} connection attempts admitted, the limit allows {allowed:.0}: racing bucket updates"
    );
}
