//! What a flood reads from the kernel around it: the program's run-time stats
//! (`kernel.bpf_stats_enabled`), the frames the veth handed to XDP (`ethtool -S`) and the
//! packets the server's IP layer received (`/proc/net/snmp`).

use super::*;

/// `kernel.bpf_stats_enabled=1` while alive (per-program run time in fdinfo).
pub(crate) struct BpfStats;
impl BpfStats {
    pub(crate) fn on() -> BpfStats {
        let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1");
        BpfStats
    }
}
impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "0");
    }
}

pub(crate) fn run_stats(fd: i32) -> (u64, u64) {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap_or_default();
    let get = |k: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    (get("run_time_ns:"), get("run_cnt:"))
}

/// Nanoseconds per run between two `run_stats` readings.
pub(crate) fn per_run(before: (u64, u64), after: (u64, u64)) -> f64 {
    (after.0 - before.0) as f64 / (after.1 - before.1) as f64
}

/// Frames the server's veth took off its rings (`ethtool -S`, every queue's
/// `xdp_packets`): what its XDP program ran on, native or, with GRO's NAPI, generic. Read
/// from the driver, so that the rates need no `kernel.bpf_stats_enabled`.
pub(crate) fn ring_frames(netns: &str) -> Result<u64, String> {
    let o = Command::new("ip")
        .args([
            "netns",
            "exec",
            netns,
            "ethtool",
            "-S",
            shield_tests::netlab::SERVER_IF,
        ])
        .output()
        .map_err(|e| format!("ethtool (Debian package ethtool): {e}"))?;
    if !o.status.success() {
        return Err(format!(
            "ethtool -S {}: {}",
            shield_tests::netlab::SERVER_IF,
            String::from_utf8_lossy(&o.stderr).trim()
        ));
    }
    Ok(sum_xdp_packets(&String::from_utf8_lossy(&o.stdout)))
}

/// The sum of `rx_queue_N_xdp_packets` in `ethtool -S` output of a veth.
pub(crate) fn sum_xdp_packets(text: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.trim().split_once(':'))
        .filter(|(k, _)| k.starts_with("rx_queue_") && k.ends_with("_xdp_packets"))
        .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
        .sum()
}

/// The server namespace's `Ip: InReceives` (datagrams its IP layer received).
pub(crate) fn ip_in_receives(netns: &str) -> Result<u64, String> {
    let o = Command::new("ip")
        .args(["netns", "exec", netns, "cat", "/proc/net/snmp"])
        .output()
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&o.stdout);
    let mut ip = text.lines().filter(|l| l.starts_with("Ip:"));
    let (names, values) = (ip.next(), ip.next());
    names
        .zip(values)
        .and_then(|(n, v)| {
            let col = n.split_whitespace().position(|w| w == "InReceives")?;
            v.split_whitespace().nth(col)?.parse().ok()
        })
        .ok_or_else(|| format!("no Ip InReceives in {netns}'s /proc/net/snmp"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_frames_add_up_every_receive_queue_and_nothing_else() {
        let text = "NIC statistics:\n     peer_ifindex: 2\n     rx_queue_0_xdp_packets: 176131\n     rx_queue_0_xdp_bytes: 9511020\n     rx_queue_0_xdp_drops: 176118\n     rx_queue_1_xdp_packets: 19\n     tx_queue_0_xdp_xmit: 130496\n";
        assert_eq!(sum_xdp_packets(text), 176_150);
        assert_eq!(sum_xdp_packets("no statistics\n"), 0);
    }
}
