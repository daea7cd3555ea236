//! `shield detach`: rollback.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use shield_user::loader;

use super::BpffsArgs;

#[derive(Args)]
pub struct DetachArgs {
    /// Interface to remove shield from (a Linux interface name: 1-15 bytes, no `/`).
    #[arg(value_parser = loader::iface_arg)]
    pub iface: String,
    #[command(flatten)]
    pub bpffs: BpffsArgs,
}

pub fn run(a: DetachArgs) -> Result<ExitCode> {
    let (iface, bpffs) = (a.iface, a.bpffs.bpffs);
    loader::require_root()?;
    let done = loader::detach_pinned(&bpffs, &iface)?;
    // `challenge = "syncookie"`'s nftables table goes with the program.
    match shield_user::synproxy::remove(&iface) {
        Ok(true) => println!(
            "removed nftables table inet {}",
            shield_user::synproxy::table_name(&iface)
        ),
        // The table lives in the interface's network namespace: from another one it cannot be
        // seen, so say where to look rather than stay silent (unless nothing of shield was
        // found for that name at all: a typo needs only the error below).
        Ok(false) if done.found && matches!(loader::if_index_now(&iface), Ok(None)) => eprintln!(
            "shield: note: {iface} is not in this network namespace: its nftables table for `challenge = \"syncookie\"`, if it has one, is in the interface's namespace, out of sight here; run `ip netns exec NS shield detach {iface} …` there to remove it"
        ),
        Ok(false) => {}
        Err(e) => eprintln!("shield: warning: {e}"),
    }
    let dir = done.dir.display();
    anyhow::ensure!(done.found, "no shield pinned for {iface} under {dir}");
    if done.left.is_empty() {
        println!("detached shield from {iface} and removed {dir}");
    } else {
        println!(
            "detached shield from {iface} and removed its pins; left {dir} in place: it also holds {} (not shield's)",
            done.left.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}
