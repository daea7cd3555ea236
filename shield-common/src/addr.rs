//! Source addresses as the data path keys them: 16 network-order bytes (IPv4 in the first
//! four), masked to the rule's prefix so that every address inside one prefix shares state.

/// Address family tags used in keys.
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// Masks a 16-byte network-order address to its first `prefix` bits (0..=128; larger
/// values keep everything). Branch-light and loop-free so the verifier sees a constant cost.
#[inline(always)]
pub fn mask_prefix(addr: [u8; 16], prefix: u8) -> [u8; 16] {
    let hi = u64::from_be_bytes([
        addr[0], addr[1], addr[2], addr[3], addr[4], addr[5], addr[6], addr[7],
    ]);
    let lo = u64::from_be_bytes([
        addr[8], addr[9], addr[10], addr[11], addr[12], addr[13], addr[14], addr[15],
    ]);
    let p = prefix as u32;
    let hi = hi & mask64(p);
    let lo = lo & mask64(p.saturating_sub(64));
    let h = hi.to_be_bytes();
    let l = lo.to_be_bytes();
    [
        h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7], l[0], l[1], l[2], l[3], l[4], l[5], l[6],
        l[7],
    ]
}

/// `mask_prefix` on the address as four 32-bit words in memory order (`u32::from_ne_bytes`
/// of each 4 bytes): the same bytes in a few word operations, for a data path that holds
/// the address word-aligned.
#[inline(always)]
pub fn mask_prefix_words(w: [u32; 4], prefix: u8) -> [u32; 4] {
    let p = prefix as u32;
    let mask = |i: u32| -> u32 {
        let bits = p.saturating_sub(32 * i).min(32);
        if bits == 0 {
            0
        } else {
            (u32::MAX << (32 - bits)).to_be()
        }
    };
    [
        w[0] & mask(0),
        w[1] & mask(1),
        w[2] & mask(2),
        w[3] & mask(3),
    ]
}

/// The top `bits` bits set (0..=64, larger saturates).
#[inline(always)]
const fn mask64(bits: u32) -> u64 {
    if bits == 0 {
        0
    } else if bits >= 64 {
        u64::MAX
    } else {
        u64::MAX << (64 - bits)
    }
}

/// An IPv4 address in the 16-byte key form.
#[inline(always)]
pub const fn v4_key(a: [u8; 4]) -> [u8; 16] {
    [a[0], a[1], a[2], a[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_masking_gives_the_same_bytes() {
        let a: [u8; 16] = [
            0x20, 0x01, 0x0d, 0xb8, 0xfe, 0xdc, 0xba, 0x98, 0x76, 0x54, 0x32, 0x10, 0xff, 0x0f,
            0xf0, 0x5a,
        ];
        let words = |b: [u8; 16]| {
            [0, 1, 2, 3]
                .map(|i| u32::from_ne_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]]))
        };
        for prefix in 0..=255u8 {
            assert_eq!(
                mask_prefix_words(words(a), prefix),
                words(mask_prefix(a, prefix)),
                "prefix {prefix}"
            );
        }
    }

    #[test]
    fn ipv4_prefixes() {
        let a = v4_key([192, 0, 2, 77]);
        assert_eq!(mask_prefix(a, 32), a);
        assert_eq!(mask_prefix(a, 24), v4_key([192, 0, 2, 0]));
        assert_eq!(mask_prefix(a, 20), v4_key([192, 0, 0, 0]));
        assert_eq!(mask_prefix(a, 0), [0; 16]);
    }

    #[test]
    fn ipv6_slash64_hides_interface_id() {
        let a: [u8; 16] = "2001:db8:1:2:aaaa:bbbb:cccc:dddd"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets();
        let b: [u8; 16] = "2001:db8:1:2::9"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets();
        assert_eq!(mask_prefix(a, 64), mask_prefix(b, 64));
        assert_ne!(mask_prefix(a, 65), mask_prefix(b, 65));
        assert_eq!(mask_prefix(a, 128), a);
        assert_eq!(mask_prefix(a, 200), a);
        let m = mask_prefix(a, 52);
        assert_eq!(&m[..6], &a[..6]);
        assert_eq!(m[6], a[6] & 0xf0);
        assert!(m[7..].iter().all(|b| *b == 0));
    }
}
