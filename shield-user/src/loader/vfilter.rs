//! The filter in front of the verified set (`MAP_VFILTER`, `shield_common::vfilter_bit`):
//! a key's bit set from user space, and the whole filter rebuilt from the set so that bits
//! of keys that expired or were evicted stop costing the data path a lookup.
//!
//! The filter is mapped into the daemon's memory and changed with atomic operations, as
//! the data path changes it (`VFILTER_MAP_FLAGS`): a read and a write through the bpf
//! syscall would undo a bit the data path set between them. The invariant: every key in
//! the set has its bit (the data path sets it right after each insert, and again at each
//! proof of a key already in the set).

use std::{path::Path, sync::atomic::Ordering};

use shield_common::{MAP_VERIFIED, MAP_VFILTER, SourceKey, VFILTER_WORDS, vfilter_bit};

use super::{
    LoaderError,
    mapped::{Words, table_keys},
};

fn filter(dir: &Path) -> Result<Words, LoaderError> {
    Words::open(dir, MAP_VFILTER, VFILTER_WORDS as usize)
}

/// Every key in the verified set (see `mapped::table_keys`).
fn set_keys(dir: &Path) -> Result<Vec<SourceKey>, LoaderError> {
    table_keys(dir, MAP_VERIFIED, size_of::<u64>())
}

/// Sets the bits of `keys` (atomic ORs); returns how many were clear.
fn add_keys(f: &Words, keys: &[SourceKey]) -> u64 {
    let mut set_bits = 0;
    for key in keys {
        let (word, mask) = vfilter_bit(key);
        let old = f.words()[word as usize].fetch_or(mask, Ordering::Relaxed);
        set_bits += u64::from(old & mask == 0);
    }
    set_bits
}

/// Sets `key`'s bit (for a key written into the verified set from user space).
pub fn vfilter_add(dir: &Path, key: &SourceKey) -> Result<(), LoaderError> {
    add_keys(&filter(dir)?, std::slice::from_ref(key));
    Ok(())
}

/// Sets the bit of every key in the verified set (clearing none): run when the program
/// is loaded, so that a set adopted from the pins is wholly in its filter before the
/// program runs (a set left by a version without the filter, or one whose filter was
/// replaced), and again once attached (an earlier program may run until then). Returns
/// how many bits it set.
pub fn vfilter_adopt(dir: &Path) -> Result<u64, LoaderError> {
    let keys = set_keys(dir)?;
    Ok(add_keys(&filter(dir)?, &keys))
}

/// Rewrites the filter from the keys in the verified set. Returns how many bits were
/// cleared. In three steps, so that no key in the set is left without its bit, whatever
/// the data path inserts meanwhile: the set is listed; the bits set then that no listed key
/// needs are cleared (atomic ANDs: a bit the data path sets meanwhile is kept); the set is
/// listed again and the bits of its keys set. A key the first listing missed (inserted
/// during it) may lose its bit to the clearing: it is in the second listing. A key inserted
/// after the clearing set its own bit after it. A listing that fails stops the rebuild
/// (after the clearing: the bits of keys inserted during the first listing stay clear until
/// their next proof or the next rebuild).
pub fn vfilter_rebuild(dir: &Path) -> Result<u64, LoaderError> {
    let mut want = vec![0u64; VFILTER_WORDS as usize];
    for key in set_keys(dir)? {
        let (word, mask) = vfilter_bit(&key);
        want[word as usize] |= mask;
    }
    let f = filter(dir)?;
    let mut stale = vec![0u64; VFILTER_WORDS as usize];
    for ((w, want), stale) in f.words().iter().zip(&want).zip(stale.iter_mut()) {
        let s = w.load(Ordering::Relaxed) & !want;
        if s != 0 {
            w.fetch_and(!s, Ordering::Relaxed);
            *stale = s;
        }
    }
    add_keys(&f, &set_keys(dir)?);
    Ok(f.words()
        .iter()
        .zip(&stale)
        .map(|(w, s)| u64::from((s & !w.load(Ordering::Relaxed)).count_ones()))
        .sum())
}
