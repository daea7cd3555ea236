//! The policy-matrix acceptance suite (see `shield_tests::acceptance`) on the shipped
//! policies: the example, the demo, and three more of different shapes. Real traffic,
//! real daemon, namespace labs. Needs root.

use std::path::PathBuf;

use shield_tests::{acceptance::check_policy_file, require_root, shield_bin};

fn policy(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../policy")
        .join(name)
}

#[test]
fn example_policy() {
    require_root();
    check_policy_file(&shield_bin(), &policy("example.toml"));
}

#[test]
fn demo_policy() {
    require_root();
    check_policy_file(&shield_bin(), &policy("demo.toml"));
}

#[test]
fn many_rules_policy() {
    require_root();
    check_policy_file(&shield_bin(), &policy("acceptance/many-rules.toml"));
}

#[test]
fn ipv6_policy() {
    require_root();
    check_policy_file(&shield_bin(), &policy("acceptance/ipv6.toml"));
}

#[test]
fn udp_policy() {
    require_root();
    check_policy_file(&shield_bin(), &policy("acceptance/udp.toml"));
}
