//! The control plane against mistakes and abuse, with the real `shield run` in network
//! namespaces: one daemon per interface, every check before any attach, bans that cannot
//! mislead, and honest states after a stop or a detach. Needs root.

use std::{
    net::IpAddr,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use shield_tests::netlab::{ATTACKER_V4, LEGIT_V4, SERVER_IF, unique};
use shield_tests::{
    fleetlab::wait_until,
    nslab::{HandRun, NsLab, output_text},
    shield_bin,
};

const API: u16 = 8080;

const POLICY: &str = r#"
[lists]
allow = ["10.77.0.0/16"]

[[rule]]
name = "api"
protocol = "tcp"
ports = [8080]
connections = { rate = "50/s", burst = 100 }
"#;

const OTHER_POLICY: &str = r#"
[[rule]]
name = "other"
protocol = "tcp"
ports = [8080]
connections = { rate = "1/s", burst = 1 }
"#;

/// `shield run` started by hand in the lab's server namespace (not through the lab's
/// guard): the exit status, stdout + stderr, and how long it took. Killed after 30 s.
fn second_run(lab: &NsLab, args: &[&str]) -> (Option<i32>, String, Duration) {
    let started = Instant::now();
    let out = HandRun::start(&lab.topo.server, args).finish(Duration::from_secs(30));
    (out.status.code(), output_text(&out), started.elapsed())
}

/// Removes a file the test made, on every exit path.
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if self.0.is_dir() {
            let _ = std::fs::remove_dir_all(&self.0);
        } else {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

fn xdp_on_server(lab: &NsLab) -> bool {
    let link = Command::new("ip")
        .args(["-n", &lab.topo.server.name, "link", "show", SERVER_IF])
        .output()
        .expect("ip link");
    String::from_utf8_lossy(&link.stdout).contains("xdp")
}

/// A policy file, removed on drop.
fn policy_file(text: &str) -> RemoveOnDrop {
    let p = std::env::temp_dir().join(format!("{}.toml", unique("shield-other-")));
    std::fs::write(&p, text).expect("writing a policy");
    RemoveOnDrop(p)
}

/// Detaches the lab's interface with `shield detach`, which must succeed.
fn lab_stop_and_clear(lab: &NsLab) {
    let mut out = Command::new(shield_bin());
    out.args(["detach", SERVER_IF, "--bpffs"])
        .arg(&lab.bpffs.path);
    let r = out.output().expect("detach");
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
}

mod ban_output;
mod starts;
mod states;
mod stops;
