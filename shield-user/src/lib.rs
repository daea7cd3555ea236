//! shield's user side: policy compiler, loader, daemon, and stats.
//! Directions: cli (main.rs) → daemon → loader → policy → shield-common.

pub mod app;
pub mod attack;
pub mod audit;
pub mod bans;
pub mod control;
pub mod daemon;
pub mod exposition;
pub mod fleet;
pub mod loader;
pub mod logging;
pub mod metrics;
pub mod policy;
pub mod stats;
pub mod synproxy;
pub mod tune;

/// The XDP program, built by build.rs (aya-build) and embedded at compile time.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/shield"));

/// Where build.rs left the test and benchmark programs (`shield-ebpf/src/bin/bench.rs`):
/// a path for `tests/` to read, never embedded, so the shipped binary carries none of it.
#[doc(hidden)]
pub const BENCH_OBJECT_PATH: &str = concat!(env!("OUT_DIR"), "/bench");
