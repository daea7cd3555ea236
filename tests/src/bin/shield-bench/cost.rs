//! Section 1: the per-packet cost of every path (BPF_PROG_TEST_RUN), against a trivial
//! program in the same run and xdp-filter (xdp-tools) where it has an equivalent.

use super::*;

/// BPF_PROG_TEST_RUN on a raw program fd (for programs aya did not load): (retval, ns).
pub(crate) fn raw_test_run(fd: i32, data: &[u8], repeat: u32) -> std::io::Result<(u32, u32)> {
    const BPF_PROG_TEST_RUN: libc::c_long = 10;
    let mut out = vec![0u8; data.len() + 512];
    let mut attr = [0u8; 80];
    attr[0..4].copy_from_slice(&(fd as u32).to_ne_bytes());
    attr[8..12].copy_from_slice(&(data.len() as u32).to_ne_bytes());
    attr[12..16].copy_from_slice(&(out.len() as u32).to_ne_bytes());
    attr[16..24].copy_from_slice(&(data.as_ptr() as u64).to_ne_bytes());
    attr[24..32].copy_from_slice(&(out.as_mut_ptr() as u64).to_ne_bytes());
    attr[32..36].copy_from_slice(&repeat.to_ne_bytes());
    // SAFETY: a bpf_attr for BPF_PROG_TEST_RUN with live input/output buffers.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            attr.as_mut_ptr(),
            attr.len() as u32,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let retval = u32::from_ne_bytes(attr[4..8].try_into().expect("4 bytes"));
    let duration = u32::from_ne_bytes(attr[36..40].try_into().expect("4 bytes"));
    Ok((retval, duration))
}

pub(crate) struct Row {
    pub(crate) path: String,
    pub(crate) verdict: &'static str,
    pub(crate) shield_ns: f64,
    pub(crate) base_ns: f64,
    pub(crate) peer: Option<f64>,
}

pub(crate) fn verdict_name(v: u32) -> &'static str {
    match v {
        XDP_PASS => "pass",
        XDP_DROP => "drop",
        _ => "other",
    }
}

/// Median ns/packet of `program` and of the baseline, runs interleaved.
pub(crate) fn measure(h: &mut Harness, frame: &[u8], repeat: u32, runs: usize) -> (u32, f64, f64) {
    let (mut s, mut b, mut verdict) = (Vec::new(), Vec::new(), 0);
    for _ in 0..runs {
        let (v, ns) = h.run_repeat(PROGRAM_NAME, frame, repeat);
        verdict = v;
        s.push(ns);
        b.push(h.run_repeat(BASELINE_PROGRAM_NAME, frame, repeat).1);
    }
    (verdict, median(s), median(b))
}

pub(crate) fn big_deny(n: u32, extra: &str) -> String {
    let mut s = String::with_capacity(n as usize * 20);
    let _ = writeln!(s, "[lists]\ndeny = [\"{extra}\",");
    for i in 0..n {
        let a = (11u32 << 24) + i * 4;
        let _ = writeln!(s, "\"{}/30\",", std::net::Ipv4Addr::from(a));
    }
    s.push_str("]\n[[rule]]\nname = \"api\"\nprotocol = \"tcp\"\nports = [8080]\nconnections = { rate = \"100000000/s\", burst = 100000000 }\n");
    s
}

pub(crate) const FAST: &str = r#"
[lists]
allow = ["10.20.0.0/16"]
[[rule]]
name = "api"
protocol = "tcp"
ports = [8080]
connections = { rate = "100000000/s", burst = 100000000 }
[[rule]]
name = "slow"
protocol = "tcp"
ports = [9090]
connections = { rate = "1/h", burst = 1 }
[[rule]]
name = "spoofable"
protocol = "tcp"
ports = [7070]
connections = { rate = "100000000/s", burst = 100000000 }
unverified = { rate = "1/h", burst = 1 }
"#;

/// xdp-filter (libxdp) on a veth in a scratch namespace, denying 192.0.2.66 by source:
/// its dispatcher's id, and the guards keeping it alive.
/// Keeps xdp-filter loaded while measured; unloads it (and its pins) on drop.
pub(crate) struct XdpFilter {
    pub(crate) ns: Netns,
    pub(crate) bpffs: TempBpffs,
}

impl Drop for XdpFilter {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns.name,
                "xdp-filter",
                "unload",
                "xf0",
            ])
            .env("LIBXDP_BPFFS", &self.bpffs.path)
            .output();
    }
}

pub(crate) fn xdp_filter_peer() -> Result<(i32, XdpFilter, aya::programs::ProgramFd), String> {
    let ns = Netns::new("shb").map_err(|e| format!("{e:#}"))?;
    // libxdp pins into a bpffs of its own here, never into one of the host's.
    let bpffs = TempBpffs::new().map_err(|e| format!("{e:#}"))?;
    ns.ip(&["link", "add", "xf0", "type", "veth", "peer", "name", "xf1"])
        .map_err(|e| format!("{e:#}"))?;
    ns.ip(&["link", "set", "xf0", "up"])
        .map_err(|e| format!("{e:#}"))?;
    ns.ip(&["link", "set", "xf1", "up"])
        .map_err(|e| format!("{e:#}"))?;
    let run = |args: &[&str]| {
        Command::new("ip")
            .args(["netns", "exec", &ns.name, "xdp-filter"])
            .args(args)
            .env("LIBXDP_BPFFS", &bpffs.path)
            .output()
            .map_err(|e| format!("xdp-filter (Debian package xdp-tools): {e}"))
            .and_then(|o| {
                if o.status.success() {
                    Ok(())
                } else {
                    Err(String::from_utf8_lossy(&o.stderr).into_owned())
                }
            })
    };
    run(&["load", "--mode", "skb", "xf0"])?;
    run(&["ip", "--mode", "src", "192.0.2.66"])?;
    let out = Command::new("ip")
        .args(["-n", &ns.name, "-j", "link", "show", "xf0"])
        .output()
        .map_err(|e| e.to_string())?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    let id = v[0]["xdp"]["prog"]["id"]
        .as_u64()
        .or_else(|| v[0]["xdp"]["attached"][0]["prog"]["id"].as_u64())
        .ok_or_else(|| format!("no XDP program id in {v}"))? as u32;
    let fd = aya::programs::loaded_programs()
        .flatten()
        .find(|p| p.id() == id)
        .ok_or("xdp-filter's program not found")?
        .fd()
        .map_err(|e| e.to_string())?;
    let raw = fd.as_fd().as_raw_fd();
    Ok((raw, XdpFilter { ns, bpffs }, fd))
}

pub(crate) fn section1(o: &Opts, report: &mut String) {
    let repeat = if o.quick { 200_000 } else { 1_000_000 };
    let runs = if o.quick { 3 } else { 5 };
    eprintln!("bench: 1. per-packet cost ({repeat} repeats, median of {runs})");
    let mut rows = Vec::new();
    let peer = xdp_filter_peer();
    let peer_ns = |frame: &[u8]| -> Option<f64> {
        let (fd, _, _) = peer.as_ref().ok()?;
        let v: Vec<f64> = (0..runs)
            .filter_map(|_| {
                raw_test_run(*fd, frame, repeat)
                    .ok()
                    .map(|(_, d)| f64::from(d))
            })
            .collect();
        (!v.is_empty()).then(|| median(v))
    };

    let mut h = Harness::new(FAST);
    let mut add = |h: &mut Harness, path: &str, pkt: Pkt, peer: bool| {
        let frame = pkt.bytes();
        h.run(&frame);
        let (v, s, b) = measure(h, &frame, repeat, runs);
        rows.push(Row {
            path: path.to_string(),
            verdict: verdict_name(v),
            shield_ns: s,
            base_ns: b,
            peer: if peer { peer_ns(&frame) } else { None },
        });
    };
    add(
        &mut h,
        "non-IP frame (ARP)",
        Pkt::new("192.0.2.1", L4::syn(8080)).ethertype(0x0806),
        false,
    );
    add(
        &mut h,
        "allowed source under its limit (known, updated in place)",
        Pkt::new("192.0.2.1", L4::syn(8080)),
        true,
    );
    add(
        &mut h,
        "source over its limit (dropped)",
        Pkt::new("192.0.2.2", L4::syn(9090)),
        false,
    );
    add(
        &mut h,
        "unverified source over the `unverified` budget (dropped)",
        Pkt::new("192.0.2.3", L4::syn(7070)),
        false,
    );
    add(
        &mut h,
        "allow-list hit",
        Pkt::new("10.20.0.7", L4::syn(8080)),
        false,
    );
    add(
        &mut h,
        "IPv6 with 3 extension headers (allowed)",
        Pkt::new("2001:db8:9::1", L4::syn(8080)).ext(&[0, 60, 43]),
        false,
    );
    add(
        &mut h,
        "unmatched port (no rule)",
        Pkt::new("192.0.2.1", L4::syn(22)),
        false,
    );
    // Banned: a manual host ban on the source.
    let dir = loader::pin_dir(&h.bpffs.path, shield_tests::HARNESS_IFACE);
    BanMaps::open(&dir)
        .and_then(|mut m| {
            m.ban(
                policy::parse_cidr("192.0.2.9").expect("cidr"),
                Duration::from_secs(3600),
                None,
                None,
            )
        })
        .expect("manual ban");
    add(
        &mut h,
        "banned source (host ban)",
        Pkt::new("192.0.2.9", L4::syn(8080)),
        false,
    );
    drop(h);

    // Deny-list hit with 1,000,000 prefixes loaded.
    let mut h = Harness::new(&big_deny(1_000_000, "192.0.2.66/32"));
    let frame = Pkt::new("192.0.2.66", L4::syn(8080)).bytes();
    let (v, s, b) = measure(&mut h, &frame, repeat, runs);
    rows.push(Row {
        path: "deny-list hit, 1,000,000 prefixes loaded".into(),
        verdict: verdict_name(v),
        shield_ns: s,
        base_ns: b,
        peer: peer_ns(&frame),
    });
    drop(h);

    let _ = writeln!(report, "## 1. Per-packet cost (BPF_PROG_TEST_RUN)\n");
    let _ = writeln!(
        report,
        "ns per packet as the kernel reports it for `{repeat}` repeats, median of {runs} runs; the trivial `XDP_PASS` program is run alternately with shield on the same frame. xdp-filter (Debian xdp-tools, libxdp dispatcher, generic mode) is measured on the paths where it has an equivalent (deny by source address; a source not on its list passes).{}\n",
        match &peer {
            Ok(_) => String::new(),
            Err(e) => format!(" xdp-filter could not be measured here: {e}."),
        }
    );
    let _ = writeln!(
        report,
        "| path | verdict | shield ns | trivial ns | shield / trivial | xdp-filter ns | xdp-filter / shield |"
    );
    let _ = writeln!(report, "| --- | --- | ---: | ---: | ---: | ---: | ---: |");
    for r in &rows {
        let (pn, pr) = match r.peer {
            Some(p) => (
                format!("{p:.1}"),
                format!("{:.2}", p / r.shield_ns.max(0.1)),
            ),
            None => ("-".into(), "-".into()),
        };
        let _ = writeln!(
            report,
            "| {} | {} | {:.1} | {:.1} | {:.2} | {pn} | {pr} |",
            r.path,
            r.verdict,
            r.shield_ns,
            r.base_ns,
            r.shield_ns / r.base_ns.max(0.1)
        );
    }
    let spread: Vec<(String, f64)> = rows
        .iter()
        .filter(|r| r.path != "non-IP frame (ARP)")
        .map(|r| (r.path.clone(), r.shield_ns / r.base_ns.max(0.1)))
        .collect();
    report.push_str(&benchprose::cost_reading(&spread));
}
