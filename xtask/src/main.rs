//! `cargo xtask …`: toolchain bootstrap and the project's entry points. Cargo does the
//! building (shield-user/build.rs compiles the XDP object); this only orchestrates.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "shield's developer tasks")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install whatever is missing to build and test shield (idempotent): Debian packages,
    /// the nightly rust-src component, bpf-linker.
    Bootstrap,
    /// Bootstrap, then build the `shield` binary (with the embedded XDP program).
    Build {
        #[arg(long)]
        release: bool,
    },
    /// The main job. With no arguments: the demo (`cargo xtask demo`: the daemon protecting
    /// a Flask API in throwaway network namespaces, never a real interface). With `-- ARGS`:
    /// `shield run ARGS`.
    Run {
        /// Arguments for `shield run` (e.g. `-- --iface eth0 --policy /etc/shield.toml`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// The demo with policy/demo.toml (`shield-demo` from the tests crate running the built
    /// `shield`): under a minute, cleans up after itself.
    Demo,
    /// Bootstrap, build, and run every test: unit, BPF_PROG_TEST_RUN verdicts, network
    /// namespace scenarios (needs root).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter after `--`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Benchmarks (root): per-packet cost against a trivial program and xdp-filter, memory
    /// and control-plane scale; writes BENCHMARKS.md. `--quick`: a shorter subset.
    Bench {
        #[arg(long)]
        quick: bool,
        /// Only these sections, comma-separated (1, 2, 3, 3b, 4, 5), into the `--out` file.
        #[arg(long)]
        only: Option<String>,
        /// Report file (default BENCHMARKS.md).
        #[arg(long, default_value = "BENCHMARKS.md")]
        out: String,
    },
    /// cargo fmt --check and clippy -D warnings on every crate (host crates, then the
    /// eBPF crate for bpfel-unknown-none).
    Lint,
    /// Differential fuzzing (root): random policies, random and malformed frames and clock
    /// steps through the real XDP program (BPF_PROG_TEST_RUN) and the reference model in
    /// shield-common; prints `N frames, M mismatches`, exits non-zero on any mismatch.
    Fuzz {
        /// Frames to run.
        #[arg(long, default_value_t = 1_000_000)]
        frames: u64,
        /// Seed (the same seed replays the same policies, frames and clock steps).
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

/// Debian packages: llvm-22-dev (+ the libraries bpf-linker links with) to build
/// bpf-linker; iproute2 and util-linux (setpriv) for the namespace tests; systemd
/// (systemd-analyze) to check the unit; python3-flask and gunicorn for the demo API;
/// hping3 for SYN floods in the acceptance suite.
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "iproute2",
    "util-linux",
    "systemd",
    "python3-flask",
    "gunicorn",
    "hping3",
    "nftables",
];

/// Peers the benchmarks compare with.
const BENCH_PACKAGES: &[&str] = &[
    "xdp-tools",
    "bpftool",
    "ethtool",
    "nftables",
    "iptables",
    "wrk",
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn step(msg: &str) {
    eprintln!("xtask: {msg}");
}

fn run(cmd: &mut Command) -> Result<()> {
    let shown = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(())
}

fn output(program: &str, args: &[&str]) -> Option<String> {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
}

fn is_root() -> bool {
    output("id", &["-u"]).is_some_and(|u| u.trim() == "0")
}

fn cargo_bin_dir() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
        .join("bin")
}

fn bootstrap() -> Result<()> {
    // 1. Debian packages.
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            !output("dpkg-query", &["-W", "-f=${Status}", p])
                .is_some_and(|s| s.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        step("Debian packages present");
    } else {
        if !is_root() {
            bail!(
                "missing Debian packages {missing:?}; install them as root: apt-get install {}",
                missing.join(" ")
            );
        }
        step(&format!(
            "installing Debian packages: {}",
            missing.join(" ")
        ));
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }

    // 2. Nightly with rust-src (the eBPF crate builds core with -Z build-std).
    let toolchains = output("rustup", &["toolchain", "list"]).unwrap_or_default();
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        step("installing the nightly toolchain (minimal profile)");
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    let components = output(
        "rustup",
        &["component", "list", "--toolchain", "nightly", "--installed"],
    )
    .unwrap_or_default();
    if components.lines().any(|l| l.starts_with("rust-src")) {
        step("nightly rust-src present");
    } else {
        step("adding rust-src to nightly");
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }

    // 3. bpf-linker, built against Debian's LLVM 22.
    let linker = cargo_bin_dir().join("bpf-linker");
    let have_linker = output("bpf-linker", &["--version"]).is_some()
        || output(&linker.to_string_lossy(), &["--version"]).is_some();
    if have_linker {
        step("bpf-linker present");
    } else {
        step("building bpf-linker against LLVM 22 (a few minutes, once)");
        run(Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("LLVM_PREFIX", "/usr/lib/llvm-22"))?;
    }
    Ok(())
}

/// `cargo` with the cargo bin dir on PATH (bpf-linker lives there) and in the workspace.
fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    dirs.insert(0, cargo_bin_dir());
    if let Ok(joined) = std::env::join_paths(dirs) {
        c.env("PATH", joined);
    }
    c.current_dir(root());
    c
}

fn build(release: bool) -> Result<PathBuf> {
    step("building shield (and its XDP program)");
    let mut c = cargo();
    c.args(["build", "--package", "shield-user", "--bins"]);
    if release {
        c.arg("--release");
    }
    run(&mut c)?;
    Ok(root()
        .join("target")
        .join(if release { "release" } else { "debug" })
        .join("shield"))
}

/// The demo: `shield-demo` from the tests crate (not shipped), with `shield` as its daemon.
fn demo(shield: &Path) -> Result<()> {
    step("running the demo (Ctrl-C stops it and cleans up)");
    run(cargo()
        .args([
            "run",
            "--quiet",
            "--package",
            "shield-tests",
            "--bin",
            "shield-demo",
            "--",
            "--policy",
            "policy/demo.toml",
            "--shield",
        ])
        .arg(shield))
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Task::Bootstrap => bootstrap(),
        Task::Build { release } => {
            bootstrap()?;
            let bin = build(release)?;
            step(&format!("built {}", bin.display()));
            Ok(())
        }
        Task::Run { args } => {
            bootstrap()?;
            let bin = build(false)?;
            if !is_root() {
                bail!(
                    "shield needs root to load XDP programs and build namespaces; run as root (sudo -E cargo xtask run)"
                );
            }
            if args.is_empty() {
                step("no interface given: running the demo instead (throwaway namespaces)");
                return demo(&bin);
            }
            run(Command::new(&bin)
                .current_dir(root())
                .arg("run")
                .args(&args))
        }
        Task::Demo => {
            bootstrap()?;
            let bin = build(false)?;
            if !is_root() {
                bail!(
                    "the demo needs root to build namespaces and load XDP; run as root (sudo -E cargo xtask demo)"
                );
            }
            demo(&bin)
        }
        Task::Test { args } => {
            bootstrap()?;
            let bin = build(false)?;
            step("running every test (unit, BPF_PROG_TEST_RUN, network namespaces)");
            run(cargo()
                .args(["test", "--workspace", "--exclude", "shield-ebpf"])
                .args(&args)
                .env("SHIELD_BIN", &bin))
        }
        Task::Bench { quick, only, out } => {
            bootstrap()?;
            for p in BENCH_PACKAGES {
                if output("dpkg-query", &["-W", "-f=${Status}", p])
                    .is_none_or(|s| !s.contains("install ok installed"))
                {
                    step(&format!("installing {p} for the benchmarks"));
                    run(Command::new("apt-get")
                        .args(["install", "-y", "-qq", "--no-install-recommends", p])
                        .env("DEBIAN_FRONTEND", "noninteractive"))?;
                }
            }
            let bin = build(true)?;
            step("running the benchmarks (release build)");
            let mut c = cargo();
            c.args([
                "run",
                "--release",
                "--quiet",
                "--package",
                "shield-tests",
                "--bin",
                "shield-bench",
                "--",
            ])
            .args(["--out", &out])
            .env("SHIELD_BIN", &bin);
            if quick {
                c.arg("--quick");
            }
            if let Some(only) = only {
                c.args(["--only", &only]);
            }
            run(&mut c)
        }
        Task::Fuzz { frames, seed } => {
            bootstrap()?;
            if !is_root() {
                bail!("the fuzzer loads XDP programs: run as root (sudo -E cargo xtask fuzz)");
            }
            step("running the differential fuzzer (release build)");
            run(cargo().args([
                "run",
                "--release",
                "--quiet",
                "--package",
                "shield-tests",
                "--bin",
                "shield-fuzz",
                "--",
                "--frames",
                &frames.to_string(),
                "--seed",
                &seed.to_string(),
            ]))
        }
        Task::Lint => {
            bootstrap()?;
            step("cargo fmt --check");
            run(cargo().args(["fmt", "--all", "--", "--check"]))?;
            step("clippy: host crates");
            run(cargo().args([
                "clippy",
                "--workspace",
                "--exclude",
                "shield-ebpf",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]))?;
            step("clippy: eBPF crate (bpfel-unknown-none)");
            // `rustup run`: $CARGO is the stable cargo itself, which takes no `+nightly`.
            run(Command::new("rustup").current_dir(root()).args([
                "run",
                "nightly",
                "cargo",
                "clippy",
                "--package",
                "shield-ebpf",
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
                "--",
                "-D",
                "warnings",
            ]))
        }
    }
}
