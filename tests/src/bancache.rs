//! What the tests of the data path's cache of host-ban drops (`SHIELD_BANHIT`) share: a
//! host ban as the daemon makes it, the host bans' epoch, and what a CPU's cache holds.

use std::net::IpAddr;
use std::time::Duration;

use aya::{
    Ebpf,
    maps::{Array, MapData, PerCpuArray},
};
use shield_common::{
    BAN_COUNT_USER, BAN_EPOCH, BAN_HIT_SLOTS, BanHit, MAP_BAN_COUNT, MAP_BAN_HITS,
    addr::{FAMILY_V4, FAMILY_V6},
};
use shield_user::{
    bans::{BanMaps, BanSpec},
    loader,
    policy::{BanScope, parse_cidr},
};

use crate::{HARNESS_IFACE, Harness};

/// A host ban of `cidr` for `dur` with `flags`, through the daemon's own ban code.
pub fn ban_for(maps: &mut BanMaps, cidr: &str, dur: Duration, flags: u8) {
    maps.ban_spec(&BanSpec {
        cidr: parse_cidr(cidr).expect("a CIDR"),
        dur,
        scope: BanScope::Host,
        rule: None,
        flags,
        level: 0,
        reason: None,
        issued: None,
    })
    .expect("a host ban");
}

/// The host bans' epoch as the data path reads it.
pub fn epoch(h: &Harness) -> u64 {
    let dir = loader::pin_dir(&h.bpffs.path, HARNESS_IFACE);
    let c: Array<MapData, u64> =
        Array::try_from(loader::open_pinned(&dir, MAP_BAN_COUNT).expect("ban counts"))
            .expect("an array");
    let ours = c.get(&BAN_EPOCH, 0).expect("data path's half");
    let users = c.get(&(BAN_COUNT_USER + BAN_EPOCH), 0).expect("user half");
    ours.wrapping_add(users)
}

/// An address as the cache holds it: (family, `Packet::src`'s words).
pub fn words(src: &str) -> (u8, [u32; 4]) {
    let (family, bytes) = match src.parse::<IpAddr>().expect("an address") {
        IpAddr::V4(a) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&a.octets());
            (FAMILY_V4, b)
        }
        IpAddr::V6(a) => (FAMILY_V6, a.octets()),
    };
    (
        family,
        std::array::from_fn(|i| {
            u32::from_ne_bytes(bytes[4 * i..4 * i + 4].try_into().expect("4 bytes"))
        }),
    )
}

/// How many of `srcs` CPU `cpu`'s cache of `ebpf` holds as drops it would trust now (noted
/// under the current epoch).
pub fn cached_on(ebpf: &Ebpf, h: &Harness, srcs: &[String], cpu: usize) -> usize {
    let now = epoch(h);
    let map: PerCpuArray<&MapData, BanHit> =
        PerCpuArray::try_from(ebpf.map(MAP_BAN_HITS).expect("the ban-hit cache"))
            .expect("a per-CPU array");
    let want: Vec<(u8, [u32; 4])> = srcs.iter().map(|s| words(s)).collect();
    (0..BAN_HIT_SLOTS)
        .filter(|i| {
            let e = &map.get(i, 0).expect("a slot")[cpu];
            e.epoch == now && e.until_ns != 0 && want.contains(&(e.family, e.addr))
        })
        .count()
}
