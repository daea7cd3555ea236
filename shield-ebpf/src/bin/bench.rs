//! Test and benchmark programs, in an object of their own that only `tests/` loads: the
//! shipped `shield` embeds `shield` (src/main.rs) and nothing of this.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::Array,
    programs::XdpContext,
};

/// Generator settings: [mode, sources].
#[map]
static SHIELD_GEN: Array<[u32; 2]> = Array::with_max_entries(1, 0);

/// The cheapest possible XDP program: the baseline every cost figure is a ratio to (loaded
/// only by tests and benchmarks, never attached by the daemon).
#[xdp]
pub fn shield_baseline(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// The cheapest possible drop: the ceiling every flood figure is compared to (benchmarks
/// only, never attached by the daemon).
#[xdp]
pub fn shield_drop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}

/// The cheapest possible XDP_TX (the frame goes back out as it came): the ceiling of the
/// `syncookie` path's flood figure (benchmarks only, never attached by the daemon).
#[xdp]
pub fn shield_tx(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_TX
}

/// Benchmark traffic generator (never attached by the daemon): run through
/// BPF_PROG_TEST_RUN in live-frames mode on the attacker's veth, it rewrites the source of
/// each crafted IPv4 TCP SYN (`SHIELD_GEN[0]`: mode 0 fixed, 1 one of `n` sources, 2 random
/// in 10.0.0.0/8), fixes the checksums incrementally and transmits it (XDP_TX).
#[xdp]
pub fn shield_gen(ctx: XdpContext) -> u32 {
    let Some(cfg) = SHIELD_GEN.get(0) else {
        return xdp_action::XDP_ABORTED;
    };
    let start = ctx.data();
    // SAFETY: helper without arguments.
    let r = unsafe { aya_ebpf::helpers::generated::bpf_get_prandom_u32() };
    if cfg[0] == 3 {
        // IPv6: Ethernet 14 + IPv6 40 + TCP 20; a random interface id inside the /64.
        if start + 74 > ctx.data_end() {
            return xdp_action::XDP_ABORTED;
        }
        // SAFETY: 74 bytes checked above.
        let ip = unsafe { &mut *((start + 14) as *mut [u8; 40]) };
        // SAFETY: as above.
        let tcp = unsafe { &mut *((start + 54) as *mut [u8; 20]) };
        let old = [
            u16::from_be_bytes([ip[20], ip[21]]),
            u16::from_be_bytes([ip[22], ip[23]]),
        ];
        let new = [(r >> 16) as u16, r as u16];
        ip[20..24].copy_from_slice(&r.to_be_bytes());
        fix_checksum(tcp, 16, old, new);
        return xdp_action::XDP_TX;
    }
    // IPv4: Ethernet 14 + IPv4 20 + TCP 20.
    if start + 54 > ctx.data_end() {
        return xdp_action::XDP_ABORTED;
    }
    // SAFETY: 54 bytes checked above.
    let ip = unsafe { &mut *((start + 14) as *mut [u8; 20]) };
    // SAFETY: as above.
    let tcp = unsafe { &mut *((start + 34) as *mut [u8; 20]) };
    // A frame a filter answered in place (shield's `syncookie` SYN-ACK: addresses, ports
    // and MACs swapped) may come back to this page pool as it left: make it a SYN again.
    if tcp[13] != 0x02 {
        // SAFETY: 54 bytes checked above.
        let eth = unsafe { &mut *(start as *mut [u8; 12]) };
        let mut macs = [0u8; 12];
        macs[0..6].copy_from_slice(&eth[6..12]);
        macs[6..12].copy_from_slice(&eth[0..6]);
        *eth = macs;
        let mut dst = [0u8; 4];
        dst.copy_from_slice(&ip[12..16]);
        ip[16..20].copy_from_slice(&dst);
        ip[6] = 0;
        ip[8] = 64;
        let (sport, dport) = ([tcp[2], tcp[3]], [tcp[0], tcp[1]]);
        tcp[0..2].copy_from_slice(&sport);
        tcp[2..4].copy_from_slice(&dport);
        *tcp = [
            tcp[0],
            tcp[1],
            tcp[2],
            tcp[3],
            0,
            0,
            0,
            1,
            0,
            0,
            0,
            0,
            5 << 4,
            0x02,
            0xfa,
            0xf0,
            0,
            0,
            0,
            0,
        ];
        ip[10] = 0;
        ip[11] = 0;
        let c = full_checksum(ip, 0);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        let mut pseudo = 6u32 + 20;
        for i in 0..4 {
            pseudo += u32::from(u16::from_be_bytes([ip[12 + 2 * i], ip[13 + 2 * i]]));
        }
        let c = full_checksum(tcp, pseudo);
        tcp[16..18].copy_from_slice(&c.to_be_bytes());
    }
    let src: u32 = match cfg[0] {
        0 => u32::from_be_bytes([ip[12], ip[13], ip[14], ip[15]]),
        1 => 0x0a00_0000 | (r % cfg[1].max(1)),
        _ => 0x0a00_0000 | (r & 0x00ff_ffff),
    };
    let old = [
        u16::from_be_bytes([ip[12], ip[13]]),
        u16::from_be_bytes([ip[14], ip[15]]),
    ];
    let new = [(src >> 16) as u16, src as u16];
    ip[12..16].copy_from_slice(&src.to_be_bytes());
    // The source is in the IPv4 header checksum and in the TCP pseudo-header.
    fix_checksum(ip, 10, old, new);
    fix_checksum(tcp, 16, old, new);
    xdp_action::XDP_TX
}

/// RFC 1071 checksum of `hdr` (its checksum field zero) plus `acc`.
#[inline(always)]
fn full_checksum<const N: usize>(hdr: &[u8; N], mut acc: u32) -> u16 {
    for i in 0..N / 2 {
        acc += u32::from(u16::from_be_bytes([hdr[2 * i], hdr[2 * i + 1]]));
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// RFC 1624 incremental update of the checksum at `at` for two changed 16-bit words.
#[inline(always)]
fn fix_checksum<const N: usize>(hdr: &mut [u8; N], at: usize, old: [u16; 2], new: [u16; 2]) {
    if at + 1 >= N {
        return;
    }
    let mut sum = !u16::from_be_bytes([hdr[at], hdr[at + 1]]) as u32;
    for i in 0..2 {
        sum += (!old[i]) as u32 + new[i] as u32;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let c = (!(sum as u16)).to_be_bytes();
    hdr[at] = c[0];
    hdr[at + 1] = c[1];
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
