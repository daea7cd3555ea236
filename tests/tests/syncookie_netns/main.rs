//! The syncookie challenge with the real daemon in a namespace lab: connections completed
//! through the XDP cookie and SYNPROXY to the demo API (`cookie_path`), the host side the
//! daemon sets up and removes, and a failed start that leaves nothing behind
//! (`failed_start`), reloads that fail part-way (on the second of two interfaces, on the
//! third of three, with a hung `nft`) and change nothing, bans and IPv6 clients included
//! (`reloads`), bans served while a reload is held up (`reload_bans`), a spoofed flood
//! without ACK (`flood`), and the nftables meter that holds the connections completed
//! through cookies to the source's own limit (`meter`), and the table put back when an
//! operator flushes the ruleset under the daemon (`host_table`), and a captured cookie ACK
//! replayed from another address, source port or to another rule's port (`replay`).
//! (The full-rate SYN flood scenario is `syncookie_flood.rs`, alone in its binary.)

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Duration,
};

use shield_tests::{
    netlab::{self, Gunicorn, POOL_V4, SERVER_V4, http_get},
    nslab::{HandRun, NsLab},
};

/// A budget of one token an hour, then cookies.
const POLICY: &str = r#"
[[rule]]
name = "api"
protocol = "tcp"
ports = [8000]
unverified = { rate = "1/h", burst = 1 }
challenge = "syncookie"
"#;

/// `ARGS` run in the namespace `ns`.
fn run_in(ns: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .expect("ip netns exec")
}

/// Rule `api` as `shield stats --json` shows it.
fn api_rule(lab: &NsLab) -> serde_json::Value {
    lab.stats()["interfaces"][0]["rules"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["name"] == "api").cloned())
        .expect("rule api in the stats")
}

fn client(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(u32::from(POOL_V4.0) + 1000 + i))
}

/// An IPv6 client, each in its own /64 (sources are keyed, and verified, by /64).
fn client6(i: u32) -> IpAddr {
    IpAddr::V6(std::net::Ipv6Addr::from(
        u128::from(netlab::POOL_V6.0) + ((1000 + u128::from(i)) << 64) + 1,
    ))
}

mod cookie_path;
mod failed_start;
mod flood;
mod host_table;
mod meter;
mod reload_bans;
mod reloads;
mod replay;
