//! Types and pure logic shared by the XDP program (`shield-ebpf`) and the daemon
//! (`shield-user`): map names and sizes, map keys and values, reason codes, the token-bucket
//! arithmetic and address masking.
//!
//! Everything here compiles for `bpfel-unknown-none` (no_std, no allocation, no panics on the
//! paths the XDP program uses) and is unit-tested on the host.
#![cfg_attr(target_arch = "bpf", no_std)]

pub mod addr;
pub mod bans;
pub mod bucket;
pub mod filters;
pub mod judge;
pub mod maps;
#[cfg(not(target_arch = "bpf"))]
pub mod model;
pub mod reason;
pub mod reset;
pub mod sketch;

pub use bans::*;
pub use bucket::Gcra;
pub use filters::*;
pub use maps::*;
pub use reason::Reason;
