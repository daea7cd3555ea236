//! The data path under traffic from two CPUs at once: the real program run through
//! BPF_PROG_TEST_RUN on two threads pinned to different CPUs, each with its own copy of
//! the program sharing the pinned maps (as two receive queues share them). One source's
//! buckets and strikes are updated from both CPUs: the limit must hold and a second must
//! never strike twice.

use std::sync::{
    Arc, Barrier,
    atomic::{AtomicBool, AtomicU32, Ordering},
};

use aya::maps::{MapData, PerCpuArray};
use aya::programs::{TestRun, TestRunOptions, Xdp};
use shield_common::{Counter, EV_LIMITED, MAP_COUNTERS, PROGRAM_NAME, Reason, counter_index};
use shield_tests::{Harness, L4, Pkt, XDP_DROP, XDP_PASS, synflood};
use shield_user::{bans::mono_coarse_ns, loader};

/// Runs `frame` `repeat` times on each of two CPUs at once, through programs loaded on
/// the harness' pinned maps, with `during` on a third thread from the moment they start
/// (it gets a flag set once both are done). Returns the data path's clock span of the
/// runs (ns).
fn run_on_two_cpus(
    h: &Harness,
    frame: &[u8],
    repeat: u32,
    during: impl FnOnce(&AtomicBool) + Send + 'static,
) -> u64 {
    assert!(
        synflood::cpus() >= 2,
        "this test needs two CPUs to race the data path across them"
    );
    let dir = loader::pin_dir(&h.bpffs.path, shield_tests::HARNESS_IFACE);
    let max_sources = h.stats().max_sources;
    let barrier = Arc::new(Barrier::new(3));
    let done = Arc::new(AtomicBool::new(false));
    let side = {
        let (barrier, done) = (barrier.clone(), done.clone());
        std::thread::spawn(move || {
            barrier.wait();
            during(&done);
        })
    };
    let threads: Vec<_> = (0..2)
        .map(|cpu| {
            let (dir, barrier, frame) = (dir.clone(), barrier.clone(), frame.to_vec());
            std::thread::spawn(move || {
                synflood::pin_to(cpu);
                let ebpf = loader::load(&dir, max_sources).expect("loading a second copy");
                let prog: &Xdp = ebpf
                    .program(PROGRAM_NAME)
                    .expect("program")
                    .try_into()
                    .expect("xdp");
                let mut out = vec![0u8; frame.len() + 256];
                barrier.wait();
                let start = mono_coarse_ns();
                let r = prog
                    .test_run(TestRunOptions {
                        data_in: Some(&frame),
                        data_out: Some(&mut out),
                        repeat,
                        ..Default::default()
                    })
                    .expect("BPF_PROG_TEST_RUN");
                assert!([XDP_PASS, XDP_DROP].contains(&r.return_value));
                (start, mono_coarse_ns())
            })
        })
        .collect();
    let spans: Vec<(u64, u64)> = threads
        .into_iter()
        .map(|t| t.join().expect("runner thread"))
        .collect();
    done.store(true, Ordering::Relaxed);
    side.join().expect("side thread");
    let start = spans.iter().map(|s| s.0).min().unwrap_or(0);
    let end = spans.iter().map(|s| s.1).max().unwrap_or(0);
    end - start
}

#[test]
fn one_source_on_two_cpus_gets_no_more_than_its_limit() {
    // 1,000,000/s with a 10 ms burst: the coarse clock (one tick every few ms) releases
    // thousands of tokens at once, which both CPUs then race for.
    let h = Harness::new(
        r#"
[[rule]]
name = "api"
protocol = "tcp"
ports = [8080]
connections = { rate = "1000000/s", burst = 10000 }
"#,
    );
    let frame = Pkt::new("192.0.2.1", L4::syn(8080)).bytes();
    assert_eq!(h.run(&frame), XDP_PASS, "creates the source's state");
    let elapsed = run_on_two_cpus(&h, &frame, 3_000_000, |_| {});
    let admitted = h.count("api", Reason::Pass).packets;
    let refused = h.count("api", Reason::ConnLimit).packets;
    assert_eq!(admitted + refused, 6_000_001, "every packet judged once");
    // What the limit allows over the run, with one clock tick (10 ms at most) of slack.
    let allowed = 10_000 + (elapsed + 10_000_000) / 1_000;
    eprintln!(
        "two CPUs, one source: {admitted} admitted in {:.3} s, at most {allowed} allowed ({:+.1} %)",
        elapsed as f64 / 1e9,
        (admitted as f64 / allowed as f64 - 1.0) * 100.0
    );
    assert!(
        admitted <= allowed,
        "two CPUs admitted {admitted} connection attempts of one source where the limit allows {allowed}: racing bucket updates"
    );
    // Racing CPUs may lose a draw to each other (8 attempts, then refused): under this
    // contention (millions of packets per second from one source on both CPUs) a source
    // gets 93-95 % of its rate on a quiet machine, never more than it. The floor asserted
    // here is loose on purpose: `elapsed` also counts time both runner threads spent
    // descheduled on a busy shared VM (where 84-88 % was seen), and speed belongs to the
    // benchmarks; what this guards is that contention never starves a source.
    let due = (elapsed.saturating_sub(10_000_000)) / 1_000;
    assert!(
        admitted * 100 >= due * 50,
        "two CPUs admitted {admitted} connection attempts where the limit gives at least {due}: contention refused tokens that were there"
    );
}

#[test]
fn two_cpus_never_strike_one_second_twice() {
    let mut h = Harness::new(
        r#"
[[rule]]
name = "api"
protocol = "tcp"
ports = [8080]
connections = { rate = "1/s", burst = 1 }
escalation = { strikes = 1000, window = "1h", ban = "1m" }
"#,
    );
    // One source flooded from both CPUs while a third thread moves the data path's clock
    // on by a second at a time: at every second's turn both CPUs see the new second at
    // once; only one may count it. The clock only moves on once the second it leaves has
    // refused a packet (on a loaded machine the runners can be descheduled for whole
    // turns), so every second counted here must strike exactly once.
    let frame = Pkt::new("192.0.2.1", L4::syn(8080)).bytes();
    let dir = loader::pin_dir(&h.bpffs.path, shield_tests::HARNESS_IFACE);
    let ticks = Arc::new(AtomicU32::new(0));
    let counted = ticks.clone();
    let elapsed = run_on_two_cpus(&h, &frame, 4_000_000, move |done| {
        let mut maps = loader::PolicyMaps::open(&dir).expect("policy maps");
        // The rule's refusals, read from its counter alone (a full stats read would let
        // few seconds turn during the flood).
        let (id, _) = maps.current_rules().expect("rules")[0];
        let counters: PerCpuArray<MapData, Counter> =
            PerCpuArray::try_from(loader::open_pinned(&dir, MAP_COUNTERS).expect("counters map"))
                .expect("a per-CPU array");
        let refused = || -> u64 {
            let per_cpu = counters
                .get(&counter_index(id, Reason::ConnLimit), 0)
                .expect("reading the counter");
            per_cpu.iter().map(|c| c.packets).sum()
        };
        let mut last = 0;
        // Below the rule's 1,000 strikes (the most a policy may ask), which would ban the
        // source (its packets then dropped as banned, not refused): on a fast machine the
        // flood lasts over 1,000 turns, and the last one, refused by the other CPU before the
        // ban showed, was counted with no strike to match (CI: 1,001 turns, 1,000 strikes).
        // The ring buffer (about 14,000 events) is far from full.
        while counted.load(Ordering::Relaxed) < 900 {
            let now = refused();
            if now == last {
                if done.load(Ordering::Relaxed) {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_micros(100));
                continue;
            }
            maps.advance_clock(1_000_000_000)
                .expect("advancing the clock");
            counted.fetch_add(1, Ordering::Relaxed);
            // Refusals judged under the old second (a run lasts well under a microsecond)
            // are counted by now: only a later one shows the new second refused.
            std::thread::sleep(std::time::Duration::from_micros(200));
            last = refused();
        }
    });
    let ticks = ticks.load(Ordering::Relaxed);
    let mut ts: Vec<u64> = h
        .events()
        .iter()
        .filter(|e| e.kind == EV_LIMITED)
        .map(|e| e.ts_ns)
        .collect();
    ts.sort_unstable();
    let close: Vec<u64> = ts
        .windows(2)
        .map(|w| w[1] - w[0])
        .filter(|d| *d < 1_000_000_000)
        .collect();
    eprintln!(
        "two CPUs, one source, {:.1} s, {ticks} seconds' turns: {} strikes, {} within a second of the previous one",
        elapsed as f64 / 1e9,
        ts.len(),
        close.len()
    );
    assert!(
        ts.len() as u32 >= ticks,
        "{} strikes over {ticks} seconds that each refused a packet: each must strike once",
        ts.len()
    );
    assert!(
        close.is_empty(),
        "a second was struck twice by two CPUs ({} times; gaps in ns: {close:?})",
        close.len()
    );
}
