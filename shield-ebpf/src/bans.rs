//! The allow/deny lists and the ban tables (host scope: LPM, each overlapping ban
//! honoured; rule scope: hash), with a per-CPU cache of host-ban drops.

use shield_common::{BAN_COUNT_USER, BAN_EPOCH, BAN_HIT_SLOTS, BanHit};

use crate::*;

/// Per CPU: sources a host ban dropped lately, so that a banned source's flood is dropped
/// without the trie lookup (a call: 88 -> 74 ns a packet on the bench's banned row). An
/// entry drops a packet of the same address while the clock is before the ban's end and
/// the host bans' epoch (`shield_common::BAN_EPOCH`) is what it was read to be before
/// the trie lookup that found the ban: every insert and removal of a host ban moves the
/// epoch once it is done, so after an unban, an expiry swept or a ban changed in place,
/// the next packet looks the trie up again. Only bans that drop every packet are held (not attempts-only or
/// monitor-only ones). Not pinned: a pure cache, empty for every program loaded.
#[map]
static SHIELD_BANHIT: PerCpuArray<BanHit> = PerCpuArray::with_max_entries(BAN_HIT_SLOTS, 0);

/// The host bans' epoch (see `shield_common::BAN_EPOCH`); `None` if it cannot be read
/// (then nothing is cached).
#[inline(always)]
pub(crate) fn host_epoch() -> Option<u64> {
    let ours = SHIELD_BANCOUNT.get_ptr(BAN_EPOCH)?;
    let users = SHIELD_BANCOUNT.get_ptr(BAN_COUNT_USER + BAN_EPOCH)?;
    // SAFETY: array slots from successful lookups, 8-byte aligned. Read once each, before
    // the trie lookup (volatile: the order matters, see `SHIELD_BANHIT`).
    unsafe { Some(core::ptr::read_volatile(ours).wrapping_add(core::ptr::read_volatile(users))) }
}

/// The source address's words (`Packet::src` is the first field of an 8-byte aligned
/// struct).
#[inline(always)]
fn src_words(pkt: &Packet) -> [u32; 4] {
    // SAFETY: 16 plain bytes, 4-byte aligned (see above).
    unsafe { core::ptr::read(&pkt.src as *const [u8; 16] as *const [u32; 4]) }
}

#[inline(always)]
fn hit_slot(w: &[u32; 4]) -> u32 {
    let h = (w[0] ^ w[1].rotate_left(11) ^ w[2].rotate_left(17) ^ w[3].rotate_left(23))
        .wrapping_mul(0x9e37_79b1);
    h >> (32 - BAN_HIT_SLOTS.trailing_zeros())
}

/// Whether the cache holds a host ban that drops this packet (see `SHIELD_BANHIT`).
#[inline(always)]
pub(crate) fn banned_cached(pkt: &Packet, epoch: u64, now: u64) -> bool {
    let w = src_words(pkt);
    let Some(e) = SHIELD_BANHIT.get_ptr(hit_slot(&w)) else {
        return false;
    };
    // SAFETY: per-CPU slot from a successful lookup; nothing else runs on this CPU meanwhile.
    let e = unsafe { &*e };
    let a = e.addr;
    (a[0] ^ w[0]) | (a[1] ^ w[1]) | (a[2] ^ w[2]) | (a[3] ^ w[3]) == 0
        && e.family == pkt.family
        && e.epoch == epoch
        && now < e.until_ns
}

/// Notes that a host ban ending at `until_ns` drops every packet of this source.
#[inline(always)]
fn remember(pkt: &Packet, epoch: u64, until_ns: u64) {
    let w = src_words(pkt);
    if let Some(e) = SHIELD_BANHIT.get_ptr_mut(hit_slot(&w)) {
        // SAFETY: as in `banned_cached`.
        unsafe {
            *e = BanHit {
                addr: w,
                epoch,
                until_ns,
                family: pkt.family,
                _pad: [0; 7],
            }
        };
    }
}

/// Moves the host bans' epoch after an insert by the data path.
#[inline(always)]
pub(crate) fn bump_epoch() {
    if let Some(p) = SHIELD_BANCOUNT.get_ptr_mut(BAN_EPOCH) {
        // SAFETY: an array slot from a successful lookup, 8-byte aligned.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(p, 1) };
    }
}

#[inline(always)]
pub(crate) fn insert_host_ban(key: &SourceKey, ban: &BanValue) -> Result<(), i32> {
    let a = key.addr;
    if key.family == FAMILY_V4 {
        SHIELD_HBAN4.insert(
            Key {
                prefix_len: key.prefix_len as u32,
                data: [a[0], a[1], a[2], a[3]],
            },
            ban,
            0,
        )
    } else {
        SHIELD_HBAN6.insert(
            Key {
                prefix_len: key.prefix_len as u32,
                data: a,
            },
            ban,
            0,
        )
    }
}

/// The ban stored under exactly `key` (host scope: the trie's entry of that prefix
/// length, not a shorter one covering it), copied.
#[inline(always)]
pub(crate) fn stored_ban(key: &SourceKey, host: bool) -> Option<BanValue> {
    if !host {
        // SAFETY: a pointer from a successful lookup, valid during this run (RCU).
        return SHIELD_RBANS.get_ptr(key).map(|b| unsafe { *b });
    }
    let a = key.addr;
    let found = if key.family == FAMILY_V4 {
        SHIELD_HBAN4.get(Key {
            prefix_len: key.prefix_len as u32,
            data: [a[0], a[1], a[2], a[3]],
        })
    } else {
        SHIELD_HBAN6.get(Key {
            prefix_len: key.prefix_len as u32,
            data: a,
        })
    };
    found.filter(|b| b.prefix_len == key.prefix_len).copied()
}

/// The strongest host ban covering the packet's source (`BAN_HIT_*`). The trie answers
/// with the longest matching prefix only; when that ban has lapsed or is monitor-only, the
/// lookup goes on below its prefix length, so an active ban on a shorter prefix (a /24
/// under a lapsed /32) is still honoured. One lookup while the first match is active or
/// there is none, which is every packet but those of such nested bans. A drop by a ban
/// of every packet is noted in the cache when `cache` (`epoch`: `host_epoch`, read
/// before).
#[inline(never)]
pub(crate) fn host_ban(pkt: &Packet, now: u64, epoch: u64, cache: bool) -> u8 {
    let v4 = pkt.family == FAMILY_V4;
    let mut plen: u32 = if v4 { 32 } else { 128 };
    let mut hit = BAN_HIT_NONE;
    for _ in 0..HOST_BAN_WALK {
        let s = pkt.src;
        let found = if v4 {
            SHIELD_HBAN4.get(Key {
                prefix_len: plen,
                data: [s[0], s[1], s[2], s[3]],
            })
        } else {
            SHIELD_HBAN6.get(Key {
                prefix_len: plen,
                data: s,
            })
        };
        let Some(ban) = found else {
            break;
        };
        match ban_hit(ban, now, pkt) {
            BAN_HIT_DROP => {
                if cache && ban.flags & BAN_ATTEMPTS == 0 {
                    remember(pkt, epoch, ban.expires_ns);
                }
                return BAN_HIT_DROP;
            }
            BAN_HIT_MONITOR => hit = BAN_HIT_MONITOR,
            _ => {}
        }
        let found_len = ban.prefix_len as u32;
        if found_len == 0 || found_len > plen {
            break;
        }
        plen = found_len - 1;
    }
    hit
}

/// Ban flags that let this packet through: an attempts-only ban (`BAN_ATTEMPTS`) passes
/// the segments of TCP connections (no SYN), which go on to the normal judgement.
#[inline(always)]
pub(crate) fn passes(pkt: &Packet) -> u8 {
    if pkt.l4 == L4_TCP && !pkt.conn_attempt {
        BAN_ATTEMPTS
    } else {
        0
    }
}

/// `ban_hit`: the ban has expired (the daemon removes expired bans and logs their end).
pub(crate) const BAN_HIT_NONE: u8 = 0;

/// An active ban: the packet is dropped.
pub(crate) const BAN_HIT_DROP: u8 = 1;

/// An active monitor-mode ban: the packet is judged as if unbanned; a pass counts as
/// `would_ban`.
pub(crate) const BAN_HIT_MONITOR: u8 = 2;

#[inline(always)]
pub(crate) fn ban_hit(ban: &BanValue, now: u64, pkt: &Packet) -> u8 {
    if now >= ban.expires_ns || ban.flags & passes(pkt) != 0 {
        BAN_HIT_NONE
    } else if ban.flags & BAN_MONITOR != 0 {
        BAN_HIT_MONITOR
    } else {
        BAN_HIT_DROP
    }
}

#[inline(always)]
pub(crate) fn listed(pkt: &Packet, half: u8, allow: bool) -> bool {
    let a = pkt.src;
    if pkt.family == FAMILY_V4 {
        // Most addresses are answered by the summary of their /16 block, without the trie.
        let (word, shift) = shield_common::lsum_slot(half, !allow, a[0], a[1]);
        if let Some(w) = SHIELD_LSUM.get(word) {
            match (*w >> shift) & 3 {
                shield_common::LSUM_NONE => return false,
                shield_common::LSUM_ALL => return true,
                _ => {}
            }
        }
        let key = Key {
            prefix_len: 40,
            data: [half, a[0], a[1], a[2], a[3]],
        };
        let trie = if allow { &SHIELD_ALLOW4 } else { &SHIELD_DENY4 };
        trie.get(&key).is_some()
    } else {
        let key = Key {
            prefix_len: 136,
            data: [
                half, a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9], a[10], a[11],
                a[12], a[13], a[14], a[15],
            ],
        };
        let trie = if allow { &SHIELD_ALLOW6 } else { &SHIELD_DENY6 };
        trie.get(&key).is_some()
    }
}

/// Whether bans of `slot` (a rule id, or `BAN_COUNT_HOST`) may exist: the data path's and
/// user space's counts (`shield_common::BAN_COUNT_USER`) do not add up to 0. A slot that
/// cannot be read says they may.
#[inline(always)]
pub(crate) fn may_exist(slot: u32) -> bool {
    let ours = SHIELD_BANCOUNT.get(slot).copied().unwrap_or(1);
    let users = SHIELD_BANCOUNT
        .get(slot.wrapping_add(shield_common::BAN_COUNT_USER))
        .copied()
        .unwrap_or(1);
    ours.wrapping_add(users) != 0
}

/// Counts a ban of `slot` about to be inserted (before the insert: the count is never
/// below the bans stored).
#[inline(always)]
pub(crate) fn count_insert(slot: u32) {
    if let Some(p) = SHIELD_BANCOUNT.get_ptr_mut(slot) {
        // SAFETY: an array slot from a successful lookup, 8-byte aligned.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(p, 1) };
    }
}
