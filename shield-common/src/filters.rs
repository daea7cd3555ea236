//! The bit filters in front of two hash tables of the data path: the verified set
//! (`MAP_VFILTER`) and the per-source table (`MAP_SFILTER`). A key's bit says it may be in
//! the table; a clear bit skips the lookup.

use crate::SourceKey;

/// The map flag that makes an array mmapable (`BPF_F_MMAPABLE`): its values start on a
/// page and user space can map them.
pub const BPF_F_MMAPABLE: u32 = 1 << 10;

/// A key's address as four words.
#[inline(always)]
fn words(key: &SourceKey) -> [u32; 4] {
    let a = key.addr;
    let w = |i: usize| u32::from_ne_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]);
    [w(0), w(4), w(8), w(12)]
}

/// (word, mask) of a hash's bit in a filter of `words` words.
#[inline(always)]
fn bit(h: u32, words: u32) -> (u32, u64) {
    ((h >> 6) % words, 1u64 << (h & 63))
}

/// Words of the verified set's filter (`MAP_VFILTER`): 2^20 bits, 128 KiB.
pub const VFILTER_WORDS: u32 = 16_384;
/// `MAP_VFILTER`'s map flags: `BPF_F_MMAPABLE`, so that the daemon sets and clears its bits
/// with atomic operations on shared memory, as the data path does (as `SFILTER_MAP_FLAGS`).
pub const VFILTER_MAP_FLAGS: u32 = BPF_F_MMAPABLE;

/// Where a verified-set key has its bit in the filter in front of the set: (word, mask).
/// A source is looked up in the set only when its bit is set, so a spoofed flood of new
/// addresses costs one array read per SYN instead of a hash lookup. Bits are set wherever
/// a key enters the set (and again when a proof of a key already in it is seen); a bit
/// left by a key that expired or was evicted only costs that lookup. The daemon rebuilds
/// the filter from the set now and then (`loader::vfilter_rebuild`), clearing stale bits
/// with atomic operations and never the bit of a key in the set.
#[inline(always)]
pub fn vfilter_bit(key: &SourceKey) -> (u32, u64) {
    let w = words(key);
    let h = (w[0]
        ^ w[1].rotate_left(5)
        ^ w[2].rotate_left(11)
        ^ w[3].rotate_left(17)
        ^ u32::from(key.family) << 24
        ^ u32::from(key.prefix_len))
    .wrapping_mul(0x9e37_79b1)
        >> 12;
    bit(h, VFILTER_WORDS)
}

/// Words in each half of the per-source table's filter (`MAP_SFILTER`): 2^20 bits, 128 KiB.
pub const SFILTER_WORDS: u32 = 16_384;
/// `MAP_SFILTER`'s map flags: `BPF_F_MMAPABLE`, so that the daemon sets and clears its bits
/// with atomic operations on shared memory, as the data path does (a read and a write
/// through the bpf syscall could undo a bit the data path set between them).
pub const SFILTER_MAP_FLAGS: u32 = BPF_F_MMAPABLE;

/// Where a per-source key has its bit in each half of the filter in front of the source
/// table: (word, mask); the word of the second half is `SFILTER_WORDS + word`.
///
/// A source is looked up in the table only when its bit is set in either half, so a
/// random-source flood of untracked sources costs two reads of a 256 KiB array instead of
/// a hash lookup in a table of hundreds of thousands of buckets. The invariant: every key
/// in the table has its bit set in at least one half. The data path sets the bit in both
/// halves before it inserts a key; the daemon sets the bits of the keys it adopts from the
/// pins; and it rebuilds one half at a time while the other holds the invariant: clear
/// it, let in-flight packets finish, then set the bit of every key in the table
/// (`loader::sfilter`). Unseeded: a key chosen to share a victim's bit costs an extra
/// lookup, never a verdict.
#[inline(always)]
pub fn sfilter_bit(key: &SourceKey) -> (u32, u64) {
    let w = words(key);
    let h = (w[0]
        ^ w[1].rotate_left(7)
        ^ w[2].rotate_left(13)
        ^ w[3].rotate_left(19)
        ^ u32::from(key.rule).rotate_left(23)
        ^ u32::from(key.family) << 24
        ^ u32::from(key.prefix_len))
    .wrapping_mul(0x85eb_ca6b);
    let h = (h ^ (h >> 15)).wrapping_mul(0xc2b2_ae35) >> 12;
    bit(h, SFILTER_WORDS)
}

/// Words of one IPv4 list's summary in `MAP_LIST_SUMMARY`: two bits for each of the 65,536
/// /16 blocks.
pub const LSUM_WORDS_PER_LIST: u32 = 2_048;
/// Words of `MAP_LIST_SUMMARY`: a summary per list half and list (allow, deny), 64 KiB.
pub const LSUM_WORDS: u32 = 4 * LSUM_WORDS_PER_LIST;
/// A /16 block's state: no prefix of the list lies in it or covers it (not listed).
pub const LSUM_NONE: u64 = 0;
/// A prefix of the list of length 16 or less covers the whole block (listed).
pub const LSUM_ALL: u64 = 1;
/// Longer prefixes of the list lie in the block: the trie says.
pub const LSUM_SOME: u64 = 2;

/// Where the 2-bit state of the /16 block `a0.a1` is in the summary of list half `half`'s
/// allow or deny list: (word, shift).
///
/// The summary answers most IPv4 lookups of the allow and deny lists with one read of a
/// 64 KiB array instead of an LPM trie lookup (a helper call and a walk): an address in a
/// block no prefix touches is not listed, one in a block a short prefix covers is; only
/// blocks that hold longer prefixes ask the trie. The daemon writes a half's summary with
/// that half's tries, before any config points at it, and rebuilds both from the tries at
/// every program load (`loader::PolicyMaps::rebuild_summaries`).
#[inline(always)]
pub fn lsum_slot(half: u8, deny: bool, a0: u8, a1: u8) -> (u32, u32) {
    let block = u32::from(a0) << 8 | u32::from(a1);
    let list = (u32::from(half & 1) << 1 | deny as u32) * LSUM_WORDS_PER_LIST;
    (list + (block >> 5), (block & 31) * 2)
}

/// One IPv4 list's summary (`LSUM_WORDS_PER_LIST` words; see `lsum_slot`).
#[cfg(not(target_arch = "bpf"))]
pub fn lsum_build(list: &[([u8; 4], u8)]) -> Vec<u64> {
    let mut state = vec![LSUM_NONE; 1 << 16];
    for (a, len) in list {
        let block = usize::from(a[0]) << 8 | usize::from(a[1]);
        if *len <= 16 {
            let n = 1usize << (16 - len);
            let start = block & !(n - 1);
            state[start..start + n].fill(LSUM_ALL);
        } else if state[block] != LSUM_ALL {
            state[block] = LSUM_SOME;
        }
    }
    state
        .chunks(32)
        .map(|c| c.iter().enumerate().fold(0, |w, (i, s)| w | s << (2 * i)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(words: &[u64], a0: u8, a1: u8) -> u64 {
        let (w, shift) = lsum_slot(0, false, a0, a1);
        (words[w as usize] >> shift) & 3
    }

    #[test]
    fn the_list_summary_says_listed_not_listed_or_ask_the_trie() {
        let words = lsum_build(&[
            ([10, 0, 0, 0], 8),
            ([172, 16, 5, 0], 24),
            ([192, 168, 0, 0], 16),
            ([192, 168, 7, 0], 24),
            ([203, 0, 113, 9], 32),
        ]);
        assert_eq!(words.len(), LSUM_WORDS_PER_LIST as usize);
        for a1 in [0, 77, 255] {
            assert_eq!(state(&words, 10, a1), LSUM_ALL, "10/8 covers 10.{a1}/16");
        }
        assert_eq!(state(&words, 11, 0), LSUM_NONE);
        assert_eq!(state(&words, 9, 255), LSUM_NONE);
        assert_eq!(
            state(&words, 172, 16),
            LSUM_SOME,
            "a /24 inside: ask the trie"
        );
        assert_eq!(state(&words, 172, 17), LSUM_NONE);
        assert_eq!(state(&words, 192, 168), LSUM_ALL, "the /16 covers its /24");
        assert_eq!(state(&words, 203, 0), LSUM_SOME);
        // Order does not matter: the /24 before the /16 that covers it.
        let words = lsum_build(&[([192, 168, 7, 0], 24), ([192, 168, 0, 0], 16)]);
        assert_eq!(state(&words, 192, 168), LSUM_ALL);
        assert!(
            lsum_build(&[([0; 4], 0)])
                .iter()
                .all(|w| *w == 0x5555_5555_5555_5555)
        );
        assert!(lsum_build(&[]).iter().all(|w| *w == 0));
    }

    #[test]
    fn each_half_and_list_has_its_own_summary() {
        let mut seen = std::collections::HashSet::new();
        for half in 0..2 {
            for deny in [false, true] {
                let (w, shift) = lsum_slot(half, deny, 255, 255);
                assert!(w < LSUM_WORDS && shift == 62);
                assert!(seen.insert(w / LSUM_WORDS_PER_LIST));
            }
        }
    }
}
