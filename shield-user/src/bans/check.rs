//! What a manual ban must pass before anything is written: the shortest prefix it may
//! cover, the allow list, and the characters its reason may hold.

use std::net::IpAddr;

use crate::policy::Cidr;

/// Shortest prefixes a manual ban may cover without `--force` (the policy's
/// `min_ban_ipv4_prefix` and `min_ban_ipv6_prefix`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BanFloor {
    pub ipv4: u8,
    pub ipv6: u8,
}

impl Default for BanFloor {
    fn default() -> BanFloor {
        BanFloor { ipv4: 8, ipv6: 32 }
    }
}

/// What a ban's reason may not hold: control characters, line and paragraph separators
/// (U+2028, U+2029: line breaks to many log readers) and bidirectional overrides
/// (U+202A-U+202E, U+2066-U+2069): a reason must not reorder or break what `shield bans`
/// and the logs show.
pub fn unprintable(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Whether prefix `outer` contains prefix `inner` (same family, `outer` no longer).
pub fn covers(outer: &Cidr, inner: &Cidr) -> bool {
    match (outer.addr, inner.addr) {
        (IpAddr::V4(o), IpAddr::V4(i)) if outer.len <= inner.len => {
            let m = u32::MAX.checked_shl(32 - u32::from(outer.len)).unwrap_or(0);
            u32::from(o) & m == u32::from(i) & m
        }
        (IpAddr::V6(o), IpAddr::V6(i)) if outer.len <= inner.len => {
            let m = u128::MAX
                .checked_shl(128 - u32::from(outer.len))
                .unwrap_or(0);
            u128::from(o) & m == u128::from(i) & m
        }
        _ => false,
    }
}

/// Checks a manual ban against the policy before anything is written: a prefix shorter
/// than `floor` is refused unless `force` (a typo like `0.0.0.0/0` would cut off the
/// world); a source wholly inside an allow-listed prefix is refused (allow beats every
/// ban in the data path, so the ban would do nothing). Returns warnings for a ban that
/// holds allow-listed prefixes (those stay reachable).
pub fn check_manual_ban(
    cidr: &Cidr,
    allow: &[Cidr],
    floor: BanFloor,
    force: bool,
) -> Result<Vec<String>, String> {
    let (min, family) = if cidr.addr.is_ipv4() {
        (floor.ipv4, "IPv4")
    } else {
        (floor.ipv6, "IPv6")
    };
    if cidr.len < min && !force {
        return Err(format!(
            "refusing to ban {cidr}: it is wider than /{min}, the shortest {family} prefix a ban may cover without --force (a ban this wide can cut off a large part of the internet; the policy's [defaults] min_ban_{}_prefix sets the limit)",
            family.to_lowercase()
        ));
    }
    if let Some(a) = allow.iter().find(|a| covers(a, cidr)) {
        return Err(format!(
            "refusing to ban {cidr}: it is on the allow list ({a}), and allow-listed sources are never dropped, so the ban would do nothing; remove it from [lists] allow first"
        ));
    }
    let inside: Vec<&Cidr> = allow.iter().filter(|a| covers(cidr, a)).collect();
    Ok(match inside.as_slice() {
        [] => Vec::new(),
        [one] => vec![format!(
            "the allow-listed {one} inside {cidr} stays reachable (allow beats bans)"
        )],
        [first, rest @ ..] => vec![format!(
            "{} allow-listed prefixes inside {cidr} (e.g. {first}) stay reachable (allow beats bans)",
            rest.len() + 1
        )],
    })
}
