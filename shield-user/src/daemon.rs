//! `shield run`: load, fill, attach on every interface, then wait for a signal and detach.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use aya::{Ebpf, maps::Array};
use shield_common::{GlobalConfig, MAP_CONFIG};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use crate::{
    loader::{self, AttachMode, Attached},
    policy,
};

pub struct RunOptions {
    pub ifaces: Vec<String>,
    pub policy: PathBuf,
    pub xdp_mode: AttachMode,
    pub bpffs: PathBuf,
}

/// One protected interface. Dropping it detaches the program (aya drops the link); the
/// pinned maps stay, so `shield stats` still reads the last counters.
struct Instance {
    iface: String,
    _ebpf: Ebpf,
}

/// The generation stored in an adopted config map, so that it keeps counting up.
fn previous_generation(ebpf: &mut Ebpf) -> u32 {
    ebpf.map_mut(MAP_CONFIG)
        .and_then(|m| Array::<_, GlobalConfig>::try_from(m).ok())
        .and_then(|a| a.get(&0, 0).ok())
        .map_or(0, |c| c.generation)
}

pub fn run(opts: &RunOptions) -> Result<()> {
    loader::require_root()?;
    anyhow::ensure!(!opts.ifaces.is_empty(), "give at least one --iface");
    let policy = policy::load(&opts.policy)?;
    let compiled = policy::compile(&policy);
    // Check every interface before touching any, so a typo changes nothing.
    for iface in &opts.ifaces {
        loader::if_index(iface)?;
    }
    loader::ensure_bpffs(&opts.bpffs)?;

    let mut instances = Vec::new();
    for iface in &opts.ifaces {
        let dir = loader::pin_dir(&opts.bpffs, iface);
        let mut ebpf = loader::load(&dir, compiled.max_sources)
            .with_context(|| format!("loading shield for {iface}"))?;
        let generation = previous_generation(&mut ebpf).wrapping_add(1);
        loader::sync(&mut ebpf, &compiled, generation)
            .with_context(|| format!("filling maps for {iface} from {}", opts.policy.display()))?;
        let (_, attached) = loader::attach(&mut ebpf, iface, opts.xdp_mode)
            .with_context(|| format!("attaching to {iface}"))?;
        if attached == Attached::Generic && opts.xdp_mode == AttachMode::Auto {
            eprintln!(
                "shield: warning: {iface} does not support native XDP; attached in generic mode (slower: packets reach XDP after the kernel allocated an skb)"
            );
        }
        eprintln!(
            "shield: protecting {iface} ({} XDP), policy {} generation {generation}: {} rules, {} allow and {} deny prefixes, mode {}; maps pinned in {}",
            attached.name(),
            opts.policy.display(),
            policy.rules.len(),
            policy.allow.len(),
            policy.deny.len(),
            policy.mode,
            dir.display()
        );
        instances.push(Instance {
            iface: iface.clone(),
            _ebpf: ebpf,
        });
    }

    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .context("installing signal handlers")?;
    eprintln!("shield: running; SIGTERM or Ctrl-C detaches");
    for sig in signals.forever() {
        match sig {
            SIGHUP => eprintln!(
                "shield: SIGHUP: live reload is not available in this version; restart shield to apply a new policy (the pinned counters and limiter state are kept)"
            ),
            _ => break,
        }
    }
    for inst in instances {
        let iface = inst.iface.clone();
        drop(inst);
        eprintln!("shield: detached from {iface}");
    }
    Ok(())
}
