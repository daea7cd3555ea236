//! `shield-fuzz [--frames N] [--seed S]`: the differential fuzzer behind `cargo xtask fuzz`
//! (root): random policies, frames and clock steps through the real XDP program and the
//! reference model. Prints `N frames, M mismatches`; exits 1 on any mismatch, having
//! printed the seed, the policy and the frame of each.

fn main() {
    let mut frames: u64 = 100_000;
    let mut seed: u64 = 1;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let value = |args: &mut dyn Iterator<Item = String>| {
            args.next()
                .and_then(|v| v.replace('_', "").parse::<u64>().ok())
                .unwrap_or_else(|| {
                    eprintln!("shield-fuzz: {a} needs a number");
                    std::process::exit(2)
                })
        };
        match a.as_str() {
            "--frames" => frames = value(&mut args),
            "--seed" => seed = value(&mut args),
            _ => {
                eprintln!("usage: shield-fuzz [--frames N] [--seed S]");
                std::process::exit(2);
            }
        }
    }
    let started = std::time::Instant::now();
    let s = shield_tests::fuzz::run(seed, frames);
    println!(
        "{} frames, {} mismatches (seed {seed}, {} policies, {:.1} s)",
        s.frames,
        s.mismatches,
        s.policies,
        started.elapsed().as_secs_f64()
    );
    let reasons: Vec<String> = s
        .by_reason
        .iter()
        .map(|(r, n)| format!("{r} {n}"))
        .collect();
    println!(
        "coverage: {}; bans issued {}, sources tracked {}",
        reasons.join(", "),
        s.bans,
        s.tracked
    );
    if s.mismatches != 0 {
        std::process::exit(1);
    }
}
