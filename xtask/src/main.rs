//! `cargo xtask …`: toolchain bootstrap and the project's entry points. Cargo does the
//! building (shield-user/build.rs compiles the XDP object); this only orchestrates.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

mod package;
use package::package;

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
    /// namespace scenarios, the Debian package (built here once, from the release build, and
    /// passed as SHIELD_DEB) (needs root).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter after `--`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Benchmarks (root): per-packet cost against a trivial program and xdp-filter, floods,
    /// every path against its ceiling, memory and control-plane scale, the fuzzer, the application layer and the fleet;
    /// writes BENCHMARKS.md. `--quick`: shorter runs.
    Bench {
        /// Shorter runs (fewer frames and rounds; the fuzzer 1,000,000 frames instead of 10,000,000).
        #[arg(long)]
        quick: bool,
        /// Only these sections, comma-separated (1, 2, 2b, 3, 3b, 4, 5, 6, 7). The `--out` file is
        /// replaced by a report of these sections alone: give `--out` another file to keep
        /// BENCHMARKS.md whole.
        #[arg(long)]
        only: Option<String>,
        /// Section 2b: only the paths whose name contains this text (for example "without a
        /// budget"); the others are left out of the report, which says so. Text in no path's
        /// name is refused, as is --path with an --only that leaves 2b out.
        #[arg(long, value_name = "TEXT")]
        path: Option<String>,
        /// Report file, replaced except for the hand-written notes below its
        /// `<!-- shield-bench keeps ... -->` line (section 2 also writes benchmarks-flood.svg
        /// beside it).
        #[arg(long, default_value = "BENCHMARKS.md")]
        out: String,
    },
    /// Build the Debian package (target/debian/shield_VERSION-1_ARCH.deb) with cargo-deb:
    /// the release `shield`, its systemd unit, /etc/shield/policy.toml (a conffile), man
    /// pages and shell completions generated from the CLI, the dashboard and alert rules,
    /// and shield-flask/ when it exists; then lintian (fails on errors).
    Package,
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
/// python3-gevent for shield-flask's test of its connection pool under gevent; hping3 for
/// SYN floods in the acceptance suite; lintian to check the Debian package; prometheus for
/// `promtool check rules` on deploy/prometheus/shield-rules.yml (its service is not wanted:
/// see `quiet_prometheus`).
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "iproute2",
    "util-linux",
    "systemd",
    "python3-flask",
    "python3-gevent",
    "gunicorn",
    "hping3",
    "lintian",
    "prometheus",
    // The fleet tests start their own Redis.
    "redis-server",
    // challenge = "syncookie" keeps an nftables table of its own (its tests need nft).
    "nftables",
];

/// cargo-deb, pinned: newer releases may need a newer rustc than this machine's.
const CARGO_DEB_VERSION: &str = "3.8.0";

/// Peers the benchmarks compare with, and their load tools: wrk; Flask-Limiter and the redis
/// client for gunicorn's interpreter (Debian's python3, PEP 668: its packages come from
/// apt, not pip) and redis-server for sections 6 and 7.
const BENCH_PACKAGES: &[&str] = &[
    "xdp-tools",
    "bpftool",
    "ethtool",
    "nftables",
    "iptables",
    "wrk",
    "python3-flask-limiter",
    "python3-redis",
    "redis-server",
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

/// Replaces xtask with `cmd` (for the last step of `run` and `demo`): a Ctrl-C then reaches
/// only the program that handles it (the demo, or `shield run`, cleans up and exits), and the
/// shell prompt comes back once it is done, not while it still cleans up and prints.
fn exec(cmd: &mut Command) -> Result<()> {
    use std::os::unix::process::CommandExt as _;
    let shown = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    Err(cmd.exec()).with_context(|| format!("cannot start {shown}"))
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
        if missing.contains(&"prometheus") {
            quiet_prometheus()?;
        }
    }
    check_python()?;

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

    // 4. cargo-deb, for `cargo xtask package`.
    let cargo_deb = cargo_bin_dir().join("cargo-deb");
    if output(&cargo_deb.to_string_lossy(), &["--version"])
        .is_some_and(|v| v.contains(CARGO_DEB_VERSION))
    {
        step("cargo-deb present");
    } else {
        step(&format!(
            "installing cargo-deb {CARGO_DEB_VERSION} (cargo install: about 2 minutes, once)"
        ));
        run(Command::new("cargo").args([
            "install",
            "cargo-deb",
            "--locked",
            "--version",
            CARGO_DEB_VERSION,
        ]))?;
    }
    Ok(())
}

/// Debian's prometheus package enables and starts a Prometheus server (port 9090) on a
/// machine booted with systemd. Only its promtool is wanted here: the server it just
/// installed is stopped and disabled (it would scrape and store for nothing). Without
/// systemd as PID 1 (containers, CI here) the package starts nothing.
fn quiet_prometheus() -> Result<()> {
    if Path::new("/run/systemd/system").exists() {
        step("stopping and disabling the prometheus service (only promtool is used)");
        run(Command::new("systemctl").args(["disable", "--now", "prometheus.service"]))?;
    }
    Ok(())
}

/// The interpreter gunicorn runs (its shebang; Debian's /usr/bin/python3 with python3-flask
/// from APT_PACKAGES): the Python tests use the same one, so they test what the demo runs.
fn gunicorn_python() -> PathBuf {
    let shebang = output("which", &["gunicorn"])
        .and_then(|p| std::fs::read_to_string(p.trim()).ok())
        .and_then(|text| {
            let first = text.lines().next()?.strip_prefix("#!")?.trim().to_string();
            let program = first.split_whitespace().next()?.to_string();
            Some(PathBuf::from(program))
        });
    shebang
        .filter(|p| p.is_absolute() && p.is_file())
        .unwrap_or_else(|| PathBuf::from("/usr/bin/python3"))
}

/// shield-flask is imported from the worktree through PYTHONPATH (no install into the
/// system interpreter): every launcher (these tests, the tests crate's gunicorn) sets it.
fn shield_flask_dir() -> PathBuf {
    root().join("shield-flask")
}

/// Checks that gunicorn's interpreter imports flask and, with PYTHONPATH, shield_flask.
fn check_python() -> Result<()> {
    let python = gunicorn_python();
    let out = Command::new(&python)
        .args(["-c", "import flask, shield_flask"])
        .env("PYTHONPATH", shield_flask_dir())
        .output()
        .with_context(|| format!("cannot run {}", python.display()))?;
    if !out.status.success() {
        bail!(
            "{} cannot import flask and shield_flask: {}",
            python.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    step(&format!(
        "{} (gunicorn's) imports flask and shield_flask (PYTHONPATH={})",
        python.display(),
        shield_flask_dir().display()
    ));
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
    exec(
        cargo()
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
            .arg(shield),
    )
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
            exec(
                Command::new(&bin)
                    .current_dir(root())
                    .arg("run")
                    .args(&args),
            )
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
            // The package test installs this very package (one release build, reused).
            let deb = package()?;
            step("shield-flask: the Python package's tests (a fake daemon on a temp socket)");
            run(Command::new(gunicorn_python())
                .current_dir(root())
                .args([
                    "-m",
                    "unittest",
                    "discover",
                    "--start-directory",
                    "shield-flask/tests",
                    "--verbose",
                ])
                .env("PYTHONPATH", shield_flask_dir()))?;
            step("running every test (unit, BPF_PROG_TEST_RUN, network namespaces)");
            run(cargo()
                .args(["test", "--workspace", "--exclude", "shield-ebpf"])
                .args(&args)
                .env("SHIELD_BIN", &bin)
                .env("SHIELD_DEB", &deb))
        }
        Task::Bench {
            quick,
            only,
            path,
            out,
        } => {
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
            if let Some(path) = path {
                c.args(["--path", &path]);
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
        Task::Package => {
            bootstrap()?;
            let deb = package()?;
            step(&format!(
                "built {} (install: dpkg -i {})",
                deb.display(),
                deb.display()
            ));
            Ok(())
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
