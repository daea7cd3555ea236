//! Builds the XDP program (`shield-ebpf`) for bpfel-unknown-none with the nightly toolchain
//! and leaves it in OUT_DIR, where `src/lib.rs` embeds it.
fn main() -> anyhow::Result<()> {
    let root_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../shield-ebpf");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "shield-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
