//! Bans: their values and flags (host scope: `SHIELD_HBAN4/6`, LPM; rule scope:
//! `SHIELD_RBANS`, hash by `SourceKey`), the operators' notes, the ban counts and the
//! host bans' epoch, and the data path's cache of host-ban drops.

use crate::RULE_SLOTS;

/// Operators' reasons for manual bans, by ban: a hash map the daemon creates and pins
/// beside the program's maps (the program never reads it), so a reason survives a restart
/// and `shield bans` shows it without the daemon.
pub const MAP_BAN_NOTES: &str = "SHIELD_BANNOTES";
/// Longest reason kept for a ban, in bytes.
pub const BAN_NOTE_MAX: usize = 512;
/// `BanNoteKey::kind`: a host-scope ban (IPv4 or IPv6 host ban table).
pub const NOTE_HOST: u8 = 1;
/// `BanNoteKey::kind`: a rule-scope ban.
pub const NOTE_RULE: u8 = 2;

/// Key of `MAP_BAN_NOTES`: which ban a note belongs to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BanNoteKey {
    /// `NOTE_HOST` or `NOTE_RULE`.
    pub kind: u8,
    pub family: u8,
    pub prefix_len: u8,
    pub _pad: u8,
    /// Rule id of a rule-scope ban, else 0.
    pub rule: u16,
    pub _pad2: [u8; 2],
    /// Address, network byte order (IPv4 in the first 4 bytes).
    pub addr: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<BanNoteKey>() == 24);

/// Value of `MAP_BAN_NOTES`: the reason text (UTF-8, `len` bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BanNote {
    pub len: u16,
    pub _pad: [u8; 6],
    pub text: [u8; BAN_NOTE_MAX],
}
const _: () = assert!(core::mem::size_of::<BanNote>() == 8 + BAN_NOTE_MAX);

// ---- Ban values ----

/// `BanValue::flags`: set by an operator (`shield ban`), not by escalation.
pub const BAN_MANUAL: u8 = 1 << 0;
/// `BanValue::flags`: issued in monitor mode: packets are counted `would_ban` and pass.
pub const BAN_MONITOR: u8 = 1 << 1;
/// `BanValue::flags`: issued on evidence a spoofer can forge (every automatic ban: a rate
/// of SYNs, datagrams or segments, none of which proves its source address). The ban drops
/// what opens something new (TCP connection attempts, non-TCP packets) and lets segments of
/// TCP connections through to the normal judgement (the source's own limits still apply),
/// so a spoofer cannot get a victim's established connections cut. Without it (manual bans:
/// the operator's or the application's evidence) a ban drops everything.
pub const BAN_ATTEMPTS: u8 = 1 << 2;
/// Issued by the application layer (`[[endpoint]]`/`[[signal]]` escalation through the app
/// socket): for display only, the data path ignores it (it drops everything, like a manual
/// ban: the evidence is a completed HTTP request, which a spoofer cannot send).
pub const BAN_APP: u8 = 1 << 4;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BanValue {
    /// Clock (`bpf_ktime_get_coarse_ns` + offset) at which the ban ends.
    pub expires_ns: u64,
    pub duration_ns: u64,
    /// Rule that issued it (0: manual host ban).
    pub rule: u16,
    pub flags: u8,
    /// Position on the backoff ladder (0 = first ban).
    pub level: u8,
    /// Host bans: the prefix length of the key it is stored under, so that a lookup that
    /// finds it lapsed (or monitor-only) can go on to a shorter ban covering the same
    /// address (the LPM trie returns only the longest match). 0 in entries written before
    /// this field existed: the lookup stops there.
    pub prefix_len: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<BanValue>() == 24);

/// Whether `stored`, the ban in force on a key, stays when the data path's escalation
/// issues `new` on the same key at `now` (the ban tables hold one ban per key, so the new
/// one would replace it): a ban that has not ended stays when `new` would end it sooner, or
/// would make an enforced ban monitor-only. Attempts-only bans let a banned source's
/// segments through to the normal judgement, where they can strike again: under another
/// host-scope rule with a shorter `ban` or in monitor mode, under the same rule once
/// `forget` has reset its ladder, or against a longer ban from the fleet. Otherwise (the
/// stored ban has ended, `new` ends later, or `new` is enforced and the stored one only
/// monitor-mode) `new` replaces it.
#[inline(always)]
pub fn ban_stays(stored: &BanValue, new: &BanValue, now: u64) -> bool {
    let monitor = |b: &BanValue| b.flags & BAN_MONITOR != 0;
    now < stored.expires_ns
        && (!monitor(stored) || monitor(new))
        && (stored.expires_ns >= new.expires_ns || !monitor(stored) && monitor(new))
}

/// Most host bans one lookup walks through, longest prefix first: each lapsed or
/// monitor-only match is followed by a lookup for a shorter one, so an active ban is found
/// under up to 7 lapsed or monitor-only bans on longer prefixes of the same address. The
/// bound keeps the verifier's work in check (each step costs it about 10,000 instructions
/// of its 1,000,000; all 129 IPv6 lengths would not verify); the daemon removes lapsed bans
/// within a second, so only monitor bans nest in practice.
pub const HOST_BAN_WALK: usize = 8;

// ---- Ban counts (MAP_BAN_COUNT) ----

/// `MAP_BAN_COUNT`'s slot for host-scope bans (rule ids take slots 0..RULE_SLOTS).
pub const BAN_COUNT_HOST: u32 = RULE_SLOTS;
/// Offset of user space's slots in `MAP_BAN_COUNT`. Slot `s` (a rule id or
/// `BAN_COUNT_HOST`) counts the bans the data path inserted (it adds 1 atomically before
/// every insert, and never removes one); slot `BAN_COUNT_USER + s` the daemon's own inserts
/// less every removal (it alone writes it: +1 before inserting a key that was not there,
/// -1 after a removal that found it), wrapping. Their wrapping sum is never below the
/// bans stored, so the data path skips the lookups when it is 0. Rewritten at every load
/// (`loader::ban_counts_adopt`: the data path's slot read first, then the maps) so that
/// pins from a version without the map, or an overcount, are set right.
pub const BAN_COUNT_USER: u32 = RULE_SLOTS + 1;
/// Slots of `MAP_BAN_COUNT`.
pub const BAN_COUNT_SLOTS: u32 = 2 * (RULE_SLOTS + 1);
/// `MAP_BAN_COUNT`'s slots of rule 0 (which has no bans) hold the host bans' epoch
/// instead, the wrapping sum of two counts that only grow: slot `BAN_EPOCH`, which the
/// data path adds 1 to (atomically) after each host ban it inserts, and slot
/// `BAN_COUNT_USER + BAN_EPOCH`, which the daemon adds 1 to after each host ban it inserts
/// or removes (and at every load). The data path's per-CPU cache of host-ban drops
/// (shield-ebpf/src/bans.rs) trusts an entry only while the epoch is what it read before
/// the lookup that found the ban, so no removal or change of a ban is missed.
pub const BAN_EPOCH: u32 = 0;

// ---- The data path's cache of host-ban drops (per CPU, not pinned) ----

/// Its map: read by tests only (the daemon never needs it).
pub const MAP_BAN_HITS: &str = "SHIELD_BANHIT";
/// Its slots per CPU (40 KiB a CPU): a flood from more banned addresses than this at once
/// costs a trie lookup and an entry's store a packet, as without the cache.
pub const BAN_HIT_SLOTS: u32 = 1024;

/// A source a host ban drops every packet of (shield-ebpf/src/bans.rs, `SHIELD_BANHIT`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BanHit {
    /// `Packet::src`'s words: network byte order, IPv4 in the first 4 bytes.
    pub addr: [u32; 4],
    /// The host bans' epoch (`BAN_EPOCH`) read before the lookup that found the ban.
    pub epoch: u64,
    /// The ban's end (`BanValue::expires_ns`).
    pub until_ns: u64,
    pub family: u8,
    pub _pad: [u8; 7],
}
const _: () = assert!(core::mem::size_of::<BanHit>() == 40);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all these are #[repr(C)] with only integer fields and explicit padding, so
    // every bit pattern is valid and there are no implicit padding bytes.
    unsafe impl aya::Pod for BanValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for BanNoteKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for BanNote {}
    // SAFETY: as above.
    unsafe impl aya::Pod for BanHit {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ban(expires_ns: u64, flags: u8) -> BanValue {
        BanValue {
            expires_ns,
            flags,
            ..Default::default()
        }
    }

    #[test]
    fn an_automatic_ban_never_shortens_or_weakens_one_in_force() {
        let (att, mon) = (BAN_ATTEMPTS, BAN_ATTEMPTS | BAN_MONITOR);
        let now = 1_000;
        // Enforced, in force: a shorter ban or a monitor-mode one leaves it.
        assert!(ban_stays(&ban(5_000, att), &ban(2_000, att), now));
        assert!(ban_stays(&ban(5_000, att), &ban(9_000, mon), now));
        assert!(ban_stays(&ban(5_000, BAN_MANUAL), &ban(2_000, att), now));
        assert!(ban_stays(&ban(5_000, att), &ban(5_000, att), now));
        // One ending later replaces it.
        assert!(!ban_stays(&ban(5_000, att), &ban(9_000, att), now));
        // Monitor-mode: an enforced ban replaces it, whatever its end; a monitor-mode one
        // only if it ends no earlier.
        assert!(!ban_stays(&ban(5_000, mon), &ban(2_000, att), now));
        assert!(ban_stays(&ban(5_000, mon), &ban(2_000, mon), now));
        assert!(!ban_stays(&ban(5_000, mon), &ban(9_000, mon), now));
        // A ban that has ended is replaced by anything.
        assert!(!ban_stays(&ban(1_000, att), &ban(1_500, mon), now));
        assert!(!ban_stays(&ban(0, BAN_MANUAL), &ban(1_500, att), now));
    }
}
