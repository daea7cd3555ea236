//! The verifier's work on the XDP program: printed, and kept under half of the kernel's
//! 1,000,000-instruction budget so that later features have room (bounded loops, such as
//! the host-ban walk, cost it per step).

use shield_common::PROGRAM_NAME;
use shield_tests::Harness;

#[test]
fn the_program_verifies_with_headroom() {
    let h = Harness::new(
        "[[rule]]\nname = \"api\"\nprotocol = \"tcp\"\nports = [8080]\nconnections = { rate = \"1/s\", burst = 1 }\n",
    );
    let info = h
        .ebpf
        .program(PROGRAM_NAME)
        .expect("the shield program")
        .info()
        .expect("program info");
    let insns = info
        .verified_instruction_count()
        .expect("the kernel reports verified instructions (5.16+)");
    eprintln!("the verifier processed {insns} instructions (limit 1,000,000)");
    assert!(
        insns < 500_000,
        "the verifier processed {insns} instructions: over half its budget, the next change may not load"
    );
}
