//! The policy's allow list for `tune`: allow-listed sources are never limited, so their
//! frames are left out of the per-source figures.

use std::{collections::HashSet, net::IpAddr};

use shield_common::addr::FAMILY_V4;

use crate::policy::Policy;

/// The policy's allow list, for a lookup per frame: per prefix length, the prefixes.
#[derive(Default)]
pub(super) struct AllowList {
    v4: Vec<(u32, HashSet<u32>)>,
    v6: Vec<(u32, HashSet<u128>)>,
}

impl AllowList {
    pub(super) fn new(policy: &Policy) -> AllowList {
        let mut list = AllowList::default();
        for c in &policy.allow {
            match c.addr {
                IpAddr::V4(a) => insert(&mut list.v4, c.len, mask4(a.into(), c.len.into())),
                IpAddr::V6(a) => insert(&mut list.v6, c.len, mask6(a.into(), c.len.into())),
            }
        }
        list
    }

    /// Whether `src` (network order, IPv4 in the first four bytes) is allow-listed.
    pub(super) fn holds(&self, family: u8, src: &[u8; 16]) -> bool {
        if family == FAMILY_V4 {
            let a = u32::from_be_bytes([src[0], src[1], src[2], src[3]]);
            self.v4
                .iter()
                .any(|(len, set)| set.contains(&mask4(a, *len)))
        } else {
            let a = u128::from_be_bytes(*src);
            self.v6
                .iter()
                .any(|(len, set)| set.contains(&mask6(a, *len)))
        }
    }
}

fn insert<T: std::hash::Hash + Eq>(by_len: &mut Vec<(u32, HashSet<T>)>, len: u8, v: T) {
    let len = u32::from(len);
    match by_len.iter_mut().find(|(l, _)| *l == len) {
        Some((_, set)) => {
            set.insert(v);
        }
        None => by_len.push((len, HashSet::from([v]))),
    }
}

fn mask4(a: u32, len: u32) -> u32 {
    a & u32::MAX.checked_shl(32 - len).unwrap_or(0)
}

fn mask6(a: u128, len: u32) -> u128 {
    a & u128::MAX.checked_shl(128 - len).unwrap_or(0)
}
