//! The differential fuzzer in the suite: 100,000 random and malformed frames with random
//! policies and clock steps (fixed seed), through the real program and the reference
//! model; every verdict, counter, per-source state and ban must agree.

#[test]
fn the_program_agrees_with_the_reference_model_on_100k_frames() {
    let s = shield_tests::fuzz::run(20261130, 100_000);
    eprintln!(
        "{} frames, {} mismatches, {} policies; {:?}; bans {}, tracked {}",
        s.frames, s.mismatches, s.policies, s.by_reason, s.bans, s.tracked
    );
    assert_eq!(s.frames, 100_000);
    assert_eq!(
        s.mismatches, 0,
        "the XDP program and the reference model disagree (seed, policy and frames above)"
    );
    for reason in [
        "pass",
        "malformed",
        "bad_fragment",
        "conn_limit",
        "pkt_limit",
        "ban",
        "deny",
        "allow",
        "reset",
    ] {
        assert!(
            s.by_reason.get(reason).is_some_and(|n| *n > 0),
            "the fuzzer never produced a `{reason}` verdict: coverage lost"
        );
    }
}
