//! The ban counts (`MAP_BAN_COUNT`, `shield_common::BAN_COUNT_USER`): how many bans may
//! exist per rule and for the host, so that the data path skips the ban lookups where none
//! can. User space's slots are rewritten from the ban maps at every load.

use std::path::Path;

use aya::maps::{Array, HashMap, LpmTrie, MapData};
use shield_common::{
    BAN_COUNT_HOST, BAN_COUNT_USER, BAN_EPOCH, BanValue, MAP_BAN_COUNT, MAP_HOST_BANS_V4,
    MAP_HOST_BANS_V6, MAP_RULE_BANS, RULE_SLOTS, SourceKey,
};

use super::{LoaderError, map_err, open_pinned};

/// Sets user space's slots so that each slot's sum is exactly the bans stored: the data
/// path's slots are read first, then the maps, so a ban the data path inserts meanwhile is
/// in the sum at least once (never below the bans stored). Run when the program is loaded:
/// pins left by a version without the counts, or counts left high by inserts that replaced
/// a ban, are set right. Returns the bans counted.
pub fn ban_counts_adopt(dir: &Path) -> Result<u64, LoaderError> {
    let mut counts: Array<MapData, u64> =
        Array::try_from(open_pinned(dir, MAP_BAN_COUNT)?).map_err(map_err(MAP_BAN_COUNT))?;
    let slots = (RULE_SLOTS + 1) as usize;
    let mut ours = vec![0u64; slots];
    for (slot, v) in ours.iter_mut().enumerate() {
        *v = counts
            .get(&(slot as u32), 0)
            .map_err(map_err(MAP_BAN_COUNT))?;
    }
    let mut stored = vec![0u64; slots];
    let rules: HashMap<MapData, SourceKey, BanValue> =
        HashMap::try_from(open_pinned(dir, MAP_RULE_BANS)?).map_err(map_err(MAP_RULE_BANS))?;
    for key in rules.keys() {
        let key = key.map_err(map_err(MAP_RULE_BANS))?;
        // A rule id beyond the slots cannot be judged by the data path: nothing to count.
        if let Some(n) = stored.get_mut(usize::from(key.rule)) {
            *n += 1;
        }
    }
    let host4: LpmTrie<MapData, [u8; 4], BanValue> =
        LpmTrie::try_from(open_pinned(dir, MAP_HOST_BANS_V4)?)
            .map_err(map_err(MAP_HOST_BANS_V4))?;
    let host6: LpmTrie<MapData, [u8; 16], BanValue> =
        LpmTrie::try_from(open_pinned(dir, MAP_HOST_BANS_V6)?)
            .map_err(map_err(MAP_HOST_BANS_V6))?;
    stored[BAN_COUNT_HOST as usize] = host4.keys().count() as u64 + host6.keys().count() as u64;
    // Slot BAN_EPOCH (rule 0 has no bans) holds the host bans' epoch: moved on, never
    // rewritten (a cache entry of a program still running must not match again).
    for slot in (0..slots).filter(|s| *s != BAN_EPOCH as usize) {
        let users = stored[slot].wrapping_sub(ours[slot]);
        counts
            .set(BAN_COUNT_USER + slot as u32, users, 0)
            .map_err(map_err(MAP_BAN_COUNT))?;
    }
    bump_ban_epoch(&mut counts).map_err(map_err(MAP_BAN_COUNT))?;
    Ok(stored.iter().sum())
}

/// Adds 1 to user space's half of the host bans' epoch (`shield_common::BAN_EPOCH`; the
/// daemon is its one writer).
pub fn bump_ban_epoch(counts: &mut Array<MapData, u64>) -> Result<(), aya::maps::MapError> {
    let i = BAN_COUNT_USER + BAN_EPOCH;
    let v = counts.get(&i, 0)?;
    counts.set(i, v.wrapping_add(1), 0)
}
