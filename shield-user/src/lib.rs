//! shield's user side: policy compiler, loader, daemon, and stats.
//! Directions: cli (main.rs) → daemon → loader → policy → shield-common.

pub mod attack;
pub mod audit;
pub mod bans;
pub mod control;
pub mod daemon;
pub mod loader;
pub mod logging;
pub mod metrics;
pub mod policy;
pub mod stats;

/// The XDP program, built by build.rs (aya-build) and embedded at compile time.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/shield"));
