//! `shield-acceptance POLICY.toml…`: derives the acceptance checks from each policy and plays
//! them with real traffic in a namespace lab (needs root). Exit 1 if any check fails.

fn main() -> std::process::ExitCode {
    let files: Vec<String> = std::env::args().skip(1).collect();
    if files.is_empty() || files.iter().any(|f| f == "-h" || f == "--help") {
        eprintln!("usage: shield-acceptance POLICY.toml…  (SHIELD_BIN: the shield binary to test)");
        return std::process::ExitCode::from(2);
    }
    shield_tests::require_root();
    let bin = shield_tests::shield_bin();
    let mut failed = false;
    for f in files {
        let mut lab = match shield_tests::acceptance::Lab::new(&bin, std::path::Path::new(&f)) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("{f}: cannot build the lab: {e}");
                failed = true;
                continue;
            }
        };
        lab.run_all(&bin);
        let bad = lab.failures().len();
        println!("{f}: {} checks, {bad} failed", lab.outcomes.len());
        failed |= bad > 0;
    }
    if failed {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    }
}
