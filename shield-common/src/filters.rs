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

/// Where a verified-set key has its bit in the filter in front of the set: (word, mask).
/// A source is looked up in the set only when its bit is set, so a spoofed flood of new
/// addresses costs one array read per SYN instead of a hash lookup. Bits are set wherever
/// a key enters the set (and again when a proof of a key already in it is seen); a bit
/// left by a key that expired or was evicted only costs that lookup. The daemon rebuilds
/// the filter from the set now and then (`vfilter_rebuild`).
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
