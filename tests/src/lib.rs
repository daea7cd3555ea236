//! Helpers for the privileged integration tests, the demo and the benchmarks: crafted
//! frames, a `BPF_PROG_TEST_RUN` harness around the real XDP object, the path of the `shield`
//! binary, the namespace lab (`netlab`) and the policy-matrix acceptance suite.

pub mod acceptance;
pub mod app_client;
pub mod appbench;
pub mod applab;
pub mod bancache;
pub mod benchprose;
pub mod fleetlab;
pub mod fuzz;
pub mod netlab;
pub mod nslab;
pub mod synflood;
pub mod traffic;

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    programs::{TestRun, TestRunOptions, Xdp},
};
use shield_common::{PROGRAM_NAME, Reason};
use shield_user::{
    loader, policy,
    stats::{self, Count},
};

use crate::netlab::TempBpffs;

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;

/// The `shield` binary under test: `$SHIELD_BIN`, else target/debug/shield. `cargo xtask
/// test` builds it first.
pub fn shield_bin() -> PathBuf {
    let path = std::env::var_os("SHIELD_BIN").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/shield"),
        PathBuf::from,
    );
    assert!(
        path.exists(),
        "the shield binary is missing at {}: build it with `cargo build -p shield-user` (cargo xtask test does) or set SHIELD_BIN",
        path.display()
    );
    path
}

/// A directory of the test's own under the temp dir (`prefix` and a unique tail), removed
/// with what it holds on every exit path.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let d = std::env::temp_dir().join(netlab::unique(prefix));
        std::fs::create_dir_all(&d).expect("creating a temp dir");
        TempDir(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An `nft` of the test's own in `dir` (put `dir` first on the daemon's PATH: the value is
/// returned): a shell script whose body `script(real)` writes, given the real nft's path
/// (which the body should end by running: `exec REAL "$@"`).
pub fn nft_wrapper(dir: &Path, script: impl FnOnce(&str) -> String) -> String {
    let real = ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("nft (Debian package nftables) is needed: run `cargo xtask bootstrap`");
    let wrapper = dir.join("nft");
    // The daemon's once-a-second look for its syncookie tables (`list tables inet`) goes
    // through untouched: the wrappers hold or fail the reloads' and stops' calls.
    let passed = format!("if [ \"$*\" = 'list tables inet' ]; then exec {real} \"$@\"; fi\n");
    std::fs::write(&wrapper, format!("#!/bin/sh\n{passed}{}", script(real)))
        .expect("writing the nft wrapper");
    let mut perms = std::fs::metadata(&wrapper)
        .expect("nft wrapper")
        .permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&wrapper, perms).expect("chmod the nft wrapper");
    format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// Fails the test with what is missing (never skips silently).
pub fn require_root() {
    if let Err(e) = netlab::require_privileges() {
        panic!("this privileged test cannot run: {e:#}");
    }
}

/// Transport part of a crafted packet.
#[derive(Clone, Debug)]
pub enum L4 {
    /// TCP with these flags.
    Tcp {
        dport: u16,
        flags: u8,
    },
    Udp {
        dport: u16,
    },
    /// ICMP echo (ICMPv6 for IPv6 sources).
    Echo,
    /// ICMPv6 of this type (e.g. 135, neighbour solicitation).
    Icmp6 {
        ty: u8,
    },
    /// Any other IP protocol number, with a payload.
    Other {
        proto: u8,
        payload: Vec<u8>,
    },
}

pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;

impl L4 {
    pub fn syn(dport: u16) -> L4 {
        L4::Tcp { dport, flags: SYN }
    }
    pub fn ack(dport: u16) -> L4 {
        L4::Tcp { dport, flags: ACK }
    }
}

/// A crafted Ethernet frame.
#[derive(Clone, Debug)]
pub struct Pkt {
    pub src: IpAddr,
    pub l4: L4,
    /// VLAN tags, outermost first (0x8100 for the first, 0x88a8 would be QinQ outer).
    pub vlans: Vec<u16>,
    /// IPv4 options length in 32-bit words (0..=10).
    pub ipv4_option_words: u8,
    /// IPv6 extension headers before the transport: 0 (hop-by-hop), 43, 60, 44, 51.
    pub ipv6_ext: Vec<u8>,
    /// Fragment offset in 8-byte units (IPv4 header or IPv6 fragment header); non-zero =
    /// non-first fragment, sent without a transport header.
    pub frag_offset: u16,
    /// A first fragment (more-fragments set, offset 0) carrying only this many bytes of the
    /// transport header and payload.
    pub first_fragment: Option<usize>,
    /// Replaces the IP ethertype (e.g. 0x0806 ARP) to make a non-IP frame.
    pub ethertype: Option<u16>,
}

impl Pkt {
    pub fn new(src: &str, l4: L4) -> Pkt {
        Pkt {
            src: src.parse().expect("test source address"),
            l4,
            vlans: Vec::new(),
            ipv4_option_words: 0,
            ipv6_ext: Vec::new(),
            frag_offset: 0,
            first_fragment: None,
            ethertype: None,
        }
    }

    pub fn ethertype(mut self, ethertype: u16) -> Pkt {
        self.ethertype = Some(ethertype);
        self
    }

    pub fn vlans(mut self, tags: &[u16]) -> Pkt {
        self.vlans = tags.to_vec();
        self
    }
    pub fn options(mut self, words: u8) -> Pkt {
        self.ipv4_option_words = words;
        self
    }
    pub fn ext(mut self, chain: &[u8]) -> Pkt {
        self.ipv6_ext = chain.to_vec();
        self
    }
    pub fn fragment(mut self, offset: u16) -> Pkt {
        self.frag_offset = offset;
        self
    }
    /// A first fragment holding only `keep` bytes of the transport header.
    pub fn first_fragment(mut self, keep: usize) -> Pkt {
        self.first_fragment = Some(keep);
        self
    }

    fn l4_bytes(&self, v6: bool) -> (u8, Vec<u8>) {
        match &self.l4 {
            L4::Tcp { dport, flags } => {
                let mut t = vec![0u8; 20];
                t[0..2].copy_from_slice(&40000u16.to_be_bytes());
                t[2..4].copy_from_slice(&dport.to_be_bytes());
                t[12] = 5 << 4;
                t[13] = *flags;
                t[14..16].copy_from_slice(&64240u16.to_be_bytes());
                (6, t)
            }
            L4::Udp { dport } => {
                let mut u = vec![0u8; 12];
                u[0..2].copy_from_slice(&40000u16.to_be_bytes());
                u[2..4].copy_from_slice(&dport.to_be_bytes());
                u[4..6].copy_from_slice(&12u16.to_be_bytes());
                (17, u)
            }
            L4::Echo => {
                let ty = if v6 { 128 } else { 8 };
                (if v6 { 58 } else { 1 }, vec![ty, 0, 0, 0, 0, 1, 0, 1])
            }
            L4::Icmp6 { ty } => (58, vec![*ty, 0, 0, 0, 0, 0, 0, 0]),
            L4::Other { proto, payload } => (*proto, payload.clone()),
        }
    }

    /// The frame bytes.
    pub fn bytes(&self) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02];
        let v6 = self.src.is_ipv6();
        for (i, tag) in self.vlans.iter().enumerate() {
            let tpid: u16 = if i == 0 && self.vlans.len() == 2 {
                0x88a8
            } else {
                0x8100
            };
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&tag.to_be_bytes());
        }
        let ip_type = if v6 { 0x86ddu16 } else { 0x0800 };
        f.extend_from_slice(&self.ethertype.unwrap_or(ip_type).to_be_bytes());
        let (proto, l4) = self.l4_bytes(v6);
        let l4 = if self.frag_offset != 0 {
            vec![0xab; 16] // middle of someone's payload, no transport header
        } else if let Some(keep) = self.first_fragment {
            l4[..keep.min(l4.len())].to_vec()
        } else {
            l4
        };
        let more_fragments = self.first_fragment.is_some();
        match self.src {
            IpAddr::V4(src) => {
                let words = 5 + self.ipv4_option_words as usize;
                let mut ip = vec![0u8; words * 4];
                ip[0] = 0x40 | words as u8;
                let total = (ip.len() + l4.len()) as u16;
                ip[2..4].copy_from_slice(&total.to_be_bytes());
                let mf = if more_fragments { 0x2000 } else { 0 };
                ip[6..8].copy_from_slice(&((self.frag_offset & 0x1fff) | mf).to_be_bytes());
                ip[8] = 64;
                ip[9] = proto;
                ip[12..16].copy_from_slice(&src.octets());
                ip[16..20].copy_from_slice(&[198, 51, 100, 1]);
                // Options: NOPs, then end-of-list.
                for b in ip.iter_mut().skip(20) {
                    *b = 1;
                }
                if let Some(last) = ip.last_mut().filter(|_| words > 5) {
                    *last = 0;
                }
                f.extend_from_slice(&ip);
            }
            IpAddr::V6(src) => {
                let mut chain = self.ipv6_ext.clone();
                if (self.frag_offset != 0 || more_fragments) && !chain.contains(&44) {
                    chain.push(44);
                }
                let mut ext = Vec::new();
                for (i, h) in chain.iter().enumerate() {
                    let next = chain.get(i + 1).copied().unwrap_or(proto);
                    match *h {
                        44 => {
                            let mut e = vec![next, 0, 0, 0, 0, 0, 0, 7];
                            let m = u16::from(more_fragments);
                            e[2..4].copy_from_slice(&((self.frag_offset << 3) | m).to_be_bytes());
                            ext.extend_from_slice(&e);
                        }
                        51 => ext.extend_from_slice(&[
                            next, 2, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0,
                        ]),
                        _ => ext.extend_from_slice(&[
                            next, 1, 1, 4, 0, 0, 0, 0, 1, 6, 0, 0, 0, 0, 0, 0,
                        ]),
                    }
                }
                let mut ip = vec![0u8; 40];
                ip[0] = 0x60;
                ip[4..6].copy_from_slice(&((ext.len() + l4.len()) as u16).to_be_bytes());
                ip[6] = chain.first().copied().unwrap_or(proto);
                ip[7] = 64;
                ip[8..24].copy_from_slice(&src.octets());
                ip[24..40].copy_from_slice(&netlab::SERVER_V6.octets());
                f.extend_from_slice(&ip);
                f.extend_from_slice(&ext);
            }
        }
        f.extend_from_slice(&l4);
        f
    }
}

/// The test and benchmark programs (`shield-ebpf/src/bin/bench.rs`: a trivial pass and
/// drop, the SYN generator), loaded from where the build left them: the shipped `shield`
/// does not carry them.
pub fn load_bench_object() -> Ebpf {
    let bytes = std::fs::read(shield_user::BENCH_OBJECT_PATH).unwrap_or_else(|e| {
        panic!(
            "the test programs' object is missing at {} ({e}): build with `cargo build -p shield-user` (cargo xtask test does)",
            shield_user::BENCH_OBJECT_PATH
        )
    });
    aya::EbpfLoader::new()
        .load(&bytes)
        .unwrap_or_else(|e| panic!("loading the test programs' object: {e}"))
}

/// The real XDP object loaded (not attached) with a policy, in a private bpffs.
pub struct Harness {
    pub ebpf: Ebpf,
    /// The test programs' object (baselines), loaded when first asked for.
    bench: Option<Ebpf>,
    /// Kept open like the daemon keeps it (it remembers what each half holds).
    pub tables: loader::PolicyMaps,
    pub bpffs: TempBpffs,
}

/// Interface name used for the harness' pin directory.
pub const HARNESS_IFACE: &str = "prog-test";

impl Harness {
    pub fn new(policy_toml: &str) -> Harness {
        require_root();
        let p = policy::parse_str("test.toml", policy_toml)
            .unwrap_or_else(|e| panic!("test policy is invalid: {e}"));
        let c = policy::compile(&p);
        let bpffs = TempBpffs::new().expect("mounting a private bpffs");
        let dir = loader::pin_dir(&bpffs.path, HARNESS_IFACE);
        let ebpf = loader::load(&dir, c.max_sources).expect("loading the XDP object");
        let mut tables = loader::PolicyMaps::open(&dir).expect("policy maps");
        tables.install(&c, 1, 0).expect("filling maps");
        Harness {
            ebpf,
            bench: None,
            tables,
            bpffs,
        }
    }

    fn program(&self, name: &str) -> &Xdp {
        self.ebpf
            .program(name)
            .unwrap_or_else(|| panic!("object lacks program {name}"))
            .try_into()
            .expect("an XDP program")
    }

    /// Runs the shield program once on `frame`: the XDP action and the frame as the
    /// program left it (an `XDP_TX` reply, e.g. a RST).
    pub fn run_out(&self, frame: &[u8]) -> (u32, Vec<u8>) {
        let mut out = vec![0u8; frame.len() + 256];
        let r = self
            .program(PROGRAM_NAME)
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                repeat: 1,
                ..Default::default()
            })
            .expect("BPF_PROG_TEST_RUN");
        out.truncate(r.data_size_out as usize);
        (r.return_value, out)
    }

    /// Marks `src` verified (as a data segment on an established connection would) at the
    /// program's clock `now`: tests of what only proven sources get, without sockets.
    pub fn verify(&self, src: std::net::IpAddr, now: u64) {
        let (family, addr) = match src {
            std::net::IpAddr::V4(a) => (
                shield_common::addr::FAMILY_V4,
                shield_common::addr::v4_key(a.octets()),
            ),
            std::net::IpAddr::V6(a) => (shield_common::addr::FAMILY_V6, a.octets()),
        };
        let key = shield_common::judge::verified_key(family, addr);
        let dir = loader::pin_dir(&self.bpffs.path, HARNESS_IFACE);
        let map = aya::maps::MapData::from_pin(dir.join(shield_common::MAP_VERIFIED))
            .expect("pinned verified set");
        let mut set: aya::maps::HashMap<_, shield_common::SourceKey, u64> =
            aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(map)).expect("verified set");
        set.insert(key, now, 0).expect("verifying a source");
        shield_user::loader::vfilter_add(&dir, &key).expect("the verified set's filter");
    }

    /// `new`, with the data path's clock frozen at `now` (tests that play time exactly).
    pub fn frozen(policy_toml: &str, now: u64) -> Harness {
        let h = Harness::new(policy_toml);
        loader::PolicyMaps::open(&loader::pin_dir(&h.bpffs.path, HARNESS_IFACE))
            .expect("policy maps")
            .freeze_clock(now)
            .expect("freezing the clock");
        h
    }

    /// Runs the shield program once on `frame`; returns the XDP action.
    pub fn run(&self, frame: &[u8]) -> u32 {
        self.run_out(frame).0
    }

    /// Runs `program` `repeat` times on `frame`: (action, kernel-measured ns per run).
    pub fn run_repeat(&mut self, program: &str, frame: &[u8], repeat: u32) -> (u32, f64) {
        let obj = if program == PROGRAM_NAME {
            &mut self.ebpf
        } else {
            let bench = self.bench.get_or_insert_with(load_bench_object);
            let p: &mut Xdp = bench
                .program_mut(program)
                .unwrap_or_else(|| panic!("the test object lacks program {program}"))
                .try_into()
                .expect("xdp");
            // Loading twice is an error; ignore "already loaded".
            let _ = p.load();
            bench
        };
        let prog: &Xdp = obj
            .program(program)
            .unwrap_or_else(|| panic!("object lacks program {program}"))
            .try_into()
            .expect("an XDP program");
        let mut out = vec![0u8; frame.len() + 256];
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                repeat,
                ..Default::default()
            })
            .expect("BPF_PROG_TEST_RUN");
        // The kernel reports the mean duration per repetition.
        (r.return_value, r.duration.as_nanos() as f64)
    }

    /// Packets and bytes counted for `rule` (name, or "(none)") × `reason`.
    pub fn count(&self, rule: &str, reason: Reason) -> Count {
        let s = stats::read_iface(&self.bpffs.path, HARNESS_IFACE).expect("reading counters");
        let r = s
            .rules
            .iter()
            .find(|r| r.name == rule)
            .unwrap_or_else(|| panic!("no rule {rule} in stats"));
        r.counters[reason.name()]
    }

    /// Moves the data path's clock forward (the control map's test offset).
    pub fn advance(&mut self, by: std::time::Duration) {
        loader::PolicyMaps::open(&loader::pin_dir(&self.bpffs.path, HARNESS_IFACE))
            .expect("policy maps")
            .advance_clock(by.as_nanos() as u64)
            .expect("advancing the clock");
    }

    /// Installs another policy (a reload), as generation `generation`.
    pub fn reload(&mut self, policy_toml: &str, generation: u32) -> loader::Installed {
        let p = policy::parse_str("reload.toml", policy_toml)
            .unwrap_or_else(|e| panic!("test policy is invalid: {e}"));
        let previous = self
            .tables
            .current_rules()
            .expect("rules")
            .into_iter()
            .map(|(id, r)| (loader::rule_name(&r), id))
            .collect();
        let c = policy::compile_with_ids(&p, &previous);
        self.tables.install(&c, generation, 0).expect("installing")
    }

    /// Events queued by the data path since the last call.
    pub fn events(&mut self) -> Vec<shield_common::Event> {
        let map = self
            .ebpf
            .map_mut(shield_common::MAP_EVENTS)
            .expect("events map");
        let mut ring = aya::maps::RingBuf::try_from(map).expect("ring buffer");
        let mut out = Vec::new();
        while let Some(item) = ring.next() {
            // SAFETY: each record is one Event written by the program.
            out.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) });
        }
        out
    }

    pub fn bans(&self) -> Vec<shield_user::bans::BanEntry> {
        shield_user::bans::BanMaps::open(&loader::pin_dir(&self.bpffs.path, HARNESS_IFACE))
            .expect("ban maps")
            .active()
    }

    pub fn stats(&self) -> stats::IfaceStats {
        stats::read_iface(&self.bpffs.path, HARNESS_IFACE).expect("reading counters")
    }
}
