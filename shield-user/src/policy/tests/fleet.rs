//! `[fleet]`: its defaults and its bad values, located.

use super::*;

#[test]
fn fleet_section_is_parsed_with_defaults() {
    let p = ok(
        "[fleet]\nredis = \"redis://:pw@10.0.0.5:6379/0\"\nhost = \"api-1\"\nkey_file = \"/etc/shield/fleet.key\"\n",
    );
    let f = p.fleet.expect("[fleet]");
    assert_eq!(f.redis, "redis://:pw@10.0.0.5:6379/0");
    assert_eq!(f.host, "api-1");
    assert_eq!(f.prefix, "shield");
    assert_eq!(
        f.key_file,
        Some(std::path::PathBuf::from("/etc/shield/fleet.key"))
    );
    assert_eq!(f.max_bans_per_minute, 600);
    // Three quarters of the ban table by default: a quarter stays for this host's own bans.
    assert_eq!(f.max_bans, 49_152);
    let p = ok("[fleet]\nredis = \"redis://h:1/0\"\nmax_bans = 1000\n");
    assert_eq!(p.fleet.expect("fleet").max_bans, 1000);
    assert!(ok("").fleet.is_none());
    // `shield check` shows it without the password.
    let shown = describe_fleet(&f);
    assert!(shown.contains("redis://:***@10.0.0.5:6379/0"), "{shown}");
    assert!(!shown.contains("pw"), "{shown}");
    // Default host: this machine's name.
    let p = ok("[fleet]\nredis = \"rediss://cache.internal:6380/1\"\n");
    assert_eq!(p.fleet.expect("fleet").host, hostname());
}

#[test]
fn bad_fleet_values_are_located() {
    let cases = [
        (
            "[fleet]\nredis = \"http://x:1\"\n",
            "t.toml:2:9: fleet.redis must be a redis:// or rediss:// (TLS) URL",
        ),
        (
            "[fleet]\nredis = \"redis://h:1/0\"\nhost = \"a b\"\n",
            "t.toml:3:8: fleet.host must be 1-64 letters",
        ),
        (
            "[fleet]\nredis = \"redis://h:1/0\"\nprefix = \"\"\n",
            "t.toml:3:10: fleet.prefix must be 1-64 letters",
        ),
        (
            "[fleet]\nredis = \"redis://h:1/0\"\nmax_bans_per_minute = 0\n",
            "t.toml:3:23: fleet.max_bans_per_minute must be between 1 and 1000000, got 0",
        ),
        (
            "[fleet]\nredis = \"redis://h:1/0\"\nmax_bans_per_minute = \"5\"\n",
            "t.toml:3:23: fleet.max_bans_per_minute must be a whole number",
        ),
        (
            "[fleet]\nredis = \"redis://h:1/0\"\nmax_bans = 65537\n",
            "t.toml:3:12: fleet.max_bans must be between 1 and 65536 (the ban table's size), got 65537",
        ),
        (
            "[fleet]\nredis = \"redis://h:1/0\"\nmax_bans = 0\n",
            "t.toml:3:12: fleet.max_bans must be between 1 and 65536",
        ),
        (
            "[fleet]\nredis = \"redis://:secret@h:notaport/0\"\n",
            "t.toml:2:9: fleet.redis",
        ),
    ];
    for (text, want) in cases {
        let e = parse_str("t.toml", text).expect_err(text).to_string();
        assert!(e.starts_with(want), "{text}: got {e}, want {want}");
        assert!(!e.contains("secret"), "the password must not show: {e}");
    }
    let e = parse_str("t.toml", "[fleet]\nhost = \"a\"\n").expect_err("redis is required");
    assert!(e.to_string().contains("redis"), "{e}");
    let e = parse_str("t.toml", "[fleet]\nredis = \"redis://h/0\"\nport = 1\n")
        .expect_err("unknown key");
    assert!(e.to_string().contains("port"), "{e}");
}
