//! The filter in front of the verified set (`MAP_VFILTER`, `shield_common::vfilter_bit`):
//! a key's bit set from user space, and the whole filter rebuilt from the set so that bits
//! of keys that expired or were evicted stop costing the data path a lookup.

use std::path::Path;

use aya::maps::{Array, HashMap, MapData};
use shield_common::{MAP_VERIFIED, MAP_VFILTER, SourceKey, VFILTER_WORDS, vfilter_bit};

use super::{LoaderError, map_err, open_pinned};

fn filter(dir: &Path) -> Result<Array<MapData, u64>, LoaderError> {
    Array::try_from(open_pinned(dir, MAP_VFILTER)?).map_err(map_err(MAP_VFILTER))
}

/// Sets `key`'s bit (for a key written into the verified set from user space).
pub fn vfilter_add(dir: &Path, key: &SourceKey) -> Result<(), LoaderError> {
    let mut f = filter(dir)?;
    let (word, mask) = vfilter_bit(key);
    let old = f.get(&word, 0).map_err(map_err(MAP_VFILTER))?;
    f.set(word, old | mask, 0).map_err(map_err(MAP_VFILTER))
}

/// Sets the bit of every key in the verified set (clearing none): run when the program
/// is loaded, so that a set adopted from the pins is wholly in its filter before the
/// program runs (a set left by a version without the filter, or bits lost to a rebuild
/// racing the data path; a bit the data path sets between this read and write can be lost
/// the same way, and its next proof sets it again). Returns how many bits it set.
pub fn vfilter_adopt(dir: &Path) -> Result<u64, LoaderError> {
    let set: HashMap<MapData, SourceKey, u64> =
        HashMap::try_from(open_pinned(dir, MAP_VERIFIED)?).map_err(map_err(MAP_VERIFIED))?;
    let mut want = std::collections::BTreeMap::<u32, u64>::new();
    for key in set.keys() {
        let (word, mask) = vfilter_bit(&key.map_err(map_err(MAP_VERIFIED))?);
        *want.entry(word).or_insert(0) |= mask;
    }
    if want.is_empty() {
        return Ok(0);
    }
    let mut f = filter(dir)?;
    let mut set_bits = 0u64;
    for (word, mask) in want {
        let old = f.get(&word, 0).map_err(map_err(MAP_VFILTER))?;
        if old & mask != mask {
            set_bits += u64::from((mask & !old).count_ones());
            f.set(word, old | mask, 0).map_err(map_err(MAP_VFILTER))?;
        }
    }
    Ok(set_bits)
}

/// Rewrites the filter from the keys in the verified set: the words that change, only.
/// Returns how many bits were cleared. A key the data path inserts while this runs may
/// lose its bit; its next proof (any data segment) sets it again, and until then it is
/// only judged as unverified.
pub fn vfilter_rebuild(dir: &Path) -> Result<u64, LoaderError> {
    let set: HashMap<MapData, SourceKey, u64> =
        HashMap::try_from(open_pinned(dir, MAP_VERIFIED)?).map_err(map_err(MAP_VERIFIED))?;
    let mut want = vec![0u64; VFILTER_WORDS as usize];
    // A listing that fails part-way stops the rebuild: the bits of the keys it did not
    // reach would be cleared, and those sources taken for unverified.
    for key in set.keys() {
        let (word, mask) = vfilter_bit(&key.map_err(map_err(MAP_VERIFIED))?);
        want[word as usize] |= mask;
    }
    let mut f = filter(dir)?;
    let mut cleared = 0u64;
    for (i, w) in want.iter().enumerate() {
        let i = i as u32;
        let old = f.get(&i, 0).map_err(map_err(MAP_VFILTER))?;
        if old != *w {
            cleared += u64::from((old & !w).count_ones());
            f.set(i, *w, 0).map_err(map_err(MAP_VFILTER))?;
        }
    }
    Ok(cleared)
}
