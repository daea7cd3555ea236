//! The SYN flood generator shared by the benchmarks and the flood scenario tests: the
//! `shield_gen` XDP program run through BPF_PROG_TEST_RUN in live-frames mode on the
//! client veth, transmitting crafted SYNs (valid checksums) into the protected one, with
//! the source rewritten per frame.

use std::{
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use aya::{
    Ebpf,
    programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp},
};
use shield_user::loader;

use crate::netlab;

/// Source shapes (`SHIELD_GEN[0]`).
pub const MODE_FIXED: u32 = 0;
/// One of `sources` addresses in 10.0.0.0/8.
pub const MODE_SOURCES: u32 = 1;
/// A random address in 10.0.0.0/8 per frame (a spoofed flood).
pub const MODE_RANDOM: u32 = 2;
/// A random interface id in the IPv6 /64 of the frame's source.
pub const MODE_V6_ROTATE: u32 = 3;

fn csum(data: &[u8], mut sum: u32) -> u16 {
    for ch in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([ch[0], *ch.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A TCP SYN header with its checksum over `pseudo` (the IP pseudo-header without the
/// TCP segment), and the Ethernet header for `ethertype`.
fn syn_parts(dst_mac: [u8; 6], ethertype: u16, pseudo: &[u8], dport: u16) -> (Vec<u8>, [u8; 20]) {
    let mut eth = Vec::with_capacity(14);
    eth.extend_from_slice(&dst_mac);
    eth.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x99]);
    eth.extend_from_slice(&ethertype.to_be_bytes());
    let mut tcp = [0u8; 20];
    tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[4..8].copy_from_slice(&1u32.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x02;
    tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
    let c = csum(&[pseudo, &tcp[..]].concat(), 0);
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    (eth, tcp)
}

/// An Ethernet + IPv4 + TCP SYN frame with valid checksums.
pub fn syn_frame(dst_mac: [u8; 6], src: [u8; 4], dst: [u8; 4], dport: u16) -> Vec<u8> {
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&40u16.to_be_bytes());
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&src);
    ip[16..20].copy_from_slice(&dst);
    let c = csum(&ip, 0);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let pseudo = [&src[..], &dst[..], &[0, 6, 0, 20]].concat();
    let (eth, tcp) = syn_parts(dst_mac, 0x0800, &pseudo, dport);
    [&eth[..], &ip[..], &tcp[..]].concat()
}

/// An Ethernet + IPv6 + TCP SYN frame with a valid checksum.
pub fn syn_frame6(dst_mac: [u8; 6], src: [u8; 16], dst: [u8; 16], dport: u16) -> Vec<u8> {
    let mut ip = [0u8; 40];
    ip[0] = 0x60;
    ip[4..6].copy_from_slice(&20u16.to_be_bytes());
    ip[6] = 6;
    ip[7] = 64;
    ip[8..24].copy_from_slice(&src);
    ip[24..40].copy_from_slice(&dst);
    let pseudo = [&src[..], &dst[..], &[0, 0, 0, 20, 0, 0, 0, 6]].concat();
    let (eth, tcp) = syn_parts(dst_mac, 0x86dd, &pseudo, dport);
    [&eth[..], &ip[..], &tcp[..]].concat()
}

/// MAC address of `iface` in namespace `ns`.
pub fn mac_of(ns: &str, iface: &str) -> Result<[u8; 6], String> {
    let out = Command::new("ip")
        .args(["-n", ns, "-j", "link", "show", iface])
        .output()
        .map_err(|e| format!("ip (iproute2): {e}"))?;
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("ip -j link: {e}"))?;
    let text = v[0]["address"]
        .as_str()
        .ok_or_else(|| format!("{iface} in {ns} has no MAC address"))?;
    let mut mac = [0u8; 6];
    for (m, p) in mac.iter_mut().zip(text.split(':')) {
        *m = u8::from_str_radix(p, 16).unwrap_or(0);
    }
    Ok(mac)
}

/// CPUs this machine has.
pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Pins the calling thread to one CPU (the flood and the legit client apart).
pub fn pin_to(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is empty; valid pointers for the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Makes the calling thread SCHED_IDLE: the generator stands for remote attackers, so its
/// own CPU time yields to the host's tasks (the receive path and the filter still run at
/// full rate, in softirq).
pub fn run_idle() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: valid parameters for the calling thread.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
}

/// A loaded generator (its own copy of the object) with its source shape set.
pub struct Generator {
    obj: Ebpf,
}

impl Generator {
    pub fn new(mode: u32, sources: u32) -> Result<Generator, String> {
        let bytes = std::fs::read(shield_user::BENCH_OBJECT_PATH).map_err(|e| {
            format!(
                "the test programs' object {}: {e}",
                shield_user::BENCH_OBJECT_PATH
            )
        })?;
        let mut obj = aya::EbpfLoader::new()
            .load(&bytes)
            .map_err(|e| format!("loading the generator: {e}"))?;
        {
            let map = obj
                .map_mut(shield_common::MAP_GEN)
                .ok_or("the object lacks the generator map")?;
            let mut cfg: aya::maps::Array<_, [u32; 2]> =
                aya::maps::Array::try_from(map).map_err(|e| e.to_string())?;
            cfg.set(0, [mode, sources], 0).map_err(|e| e.to_string())?;
        }
        let prog: &mut Xdp = obj
            .program_mut(shield_common::GEN_PROGRAM_NAME)
            .ok_or("the object lacks the generator program")?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| e.to_string())?;
        prog.load()
            .map_err(|e| format!("loading the generator: {e}"))?;
        Ok(Generator { obj })
    }

    fn program(&self) -> &Xdp {
        self.obj
            .program(shield_common::GEN_PROGRAM_NAME)
            .and_then(|p| p.try_into().ok())
            .expect("loaded in new()")
    }

    /// Transmits `n` copies of `frame` (sources rewritten) out of `netlab::CLIENT_IF`.
    /// The calling thread must be in the client namespace.
    pub fn send(&self, frame: &[u8], n: u32) -> Result<(), String> {
        let ifindex = loader::if_index(netlab::CLIENT_IF).map_err(|e| e.to_string())?;
        // struct xdp_md: data 0, data_end = the frame's length (the kernel checks it),
        // data_meta 0, ingress_ifindex, rx_queue_index 0, egress_ifindex 0.
        let mut ctx = [0u8; 24];
        ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
        ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
        self.program()
            .test_run(TestRunOptions {
                data_in: Some(frame),
                ctx_in: Some(&ctx),
                repeat: n,
                attrs: TestRunAttrs::new().xdp_live_frames(64),
                ..Default::default()
            })
            .map(|_| ())
            .map_err(|e| {
                format!(
                    "live frames: {}",
                    std::error::Error::source(&e).map_or_else(|| e.to_string(), |s| s.to_string())
                )
            })
    }

    /// Sends `total` frames in batches of at most a million. Returns seconds taken. The
    /// calling thread must be in the client namespace.
    pub fn send_count(&self, frame: &[u8], total: u32) -> Result<f64, String> {
        let started = Instant::now();
        let mut left = total;
        while left > 0 {
            let n = left.min(1_000_000);
            self.send(frame, n)?;
            left -= n;
        }
        Ok(started.elapsed().as_secs_f64())
    }

    /// Floods until `stop`, in batches of `batch` frames; with `pps`, paced to that rate
    /// (else as fast as the machine goes). Returns (frames sent, seconds). The calling
    /// thread must be in the client namespace.
    pub fn flood_until(
        &self,
        frame: &[u8],
        stop: &AtomicBool,
        pps: Option<u32>,
    ) -> Result<(u64, f64), String> {
        let started = Instant::now();
        let mut sent = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let batch_started = Instant::now();
            let n = pps.map_or(100_000, |p| (p / 100).max(1));
            self.send(frame, n)?;
            sent += u64::from(n);
            if pps.is_some()
                && let Some(rest) = Duration::from_millis(10).checked_sub(batch_started.elapsed())
            {
                std::thread::sleep(rest);
            }
        }
        Ok((sent, started.elapsed().as_secs_f64()))
    }
}
