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

/// Signals that come while the kernel verifies the program (in the daemon a SIGTERM or
/// SIGHUP during the start, in a test process a child's SIGCHLD where it is caught) make the
/// verifier give up with `EAGAIN`. The load tries again, as libbpf does: before, a signal in
/// each of aya's two attempts (without, then with the verifier's log) failed the load, and
/// the start, with a log that ends mid-program. Here four caught SIGUSR2 land while the
/// kernel verifies the main program (the window an undisturbed load shows: from its load
/// time to the RST program's).
#[test]
fn a_load_interrupted_by_signals_loads() {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };
    use std::time::SystemTime;

    shield_tests::require_root();
    let bpffs = shield_tests::netlab::TempBpffs::new().expect("mounting a private bpffs");
    let dir = shield_user::loader::pin_dir(&bpffs.path, "sig-test");
    // When, after the load starts, the kernel verifies the main program, undisturbed.
    let started = SystemTime::now();
    let ebpf = shield_user::loader::load(&dir, 1024).expect("an undisturbed load");
    let loaded_at = |name: &str| {
        ebpf.program(name)
            .and_then(|p| p.info().ok())
            .and_then(|i| i.loaded_at())
            .and_then(|t| t.duration_since(started).ok())
            .expect("the program's load time")
    };
    let (from, to) = (
        loaded_at(PROGRAM_NAME),
        loaded_at(shield_common::RESET_PROGRAM_NAME),
    );
    drop(ebpf);
    eprintln!("the main program was verified from {from:?} to {to:?} into the load");
    assert!(to > from, "the RST program loads after the main one");

    let caught = Arc::new(AtomicUsize::new(0));
    let count = caught.clone();
    // SAFETY: the handler only adds to an atomic counter (async-signal-safe).
    let handler = unsafe {
        signal_hook::low_level::register(libc::SIGUSR2, move || {
            count.fetch_add(1, Ordering::SeqCst);
        })
    }
    .expect("a SIGUSR2 handler");
    // SAFETY: pthread_self has no preconditions.
    let loader_thread = unsafe { libc::pthread_self() } as usize;
    let start = std::time::Instant::now();
    let sender = std::thread::spawn(move || {
        for k in 1..=4u32 {
            let at = from + (to - from) * k / 5;
            std::thread::sleep(at.saturating_sub(start.elapsed()));
            // SAFETY: the loading thread outlives this one (joined below).
            unsafe { libc::pthread_kill(loader_thread as libc::pthread_t, libc::SIGUSR2) };
        }
    });
    let loaded = shield_user::loader::load(&dir, 1024);
    sender.join().expect("the signal sender");
    signal_hook::low_level::unregister(handler);
    assert_eq!(caught.load(Ordering::SeqCst), 4, "all four signals came");
    if let Err(e) = loaded {
        let text = format!("{e:?}");
        panic!(
            "a load interrupted by signals failed: {}",
            &text[..text.len().min(400)]
        );
    }
}
