//! The XDP program's own log (aya-log): rare conditions only, at most once a second per
//! CPU, and nothing at all when the level set at load time disables it.

use std::sync::{Arc, Mutex};

use aya::programs::{TestRun as _, TestRunOptions, Xdp};
use shield_common::PROGRAM_NAME;
use shield_tests::{L4, Pkt, XDP_PASS, netlab::TempBpffs, require_root};
use shield_user::{loader, policy};

/// Keeps what the program logged.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<(log::Level, String)>>>);

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, r: &log::Record<'_>) {
        if let Ok(mut v) = self.0.lock() {
            v.push((r.level(), r.args().to_string()));
        }
    }
    fn flush(&self) {}
}

/// Loads the program at `level`, with a policy in one half and the other half (empty) put
/// in force, runs `frames` packets, and returns what it logged.
fn logged_with_no_policy_in_force(level: &str, frames: u32) -> Vec<(log::Level, String)> {
    require_root();
    let bpffs = TempBpffs::new().expect("private bpffs");
    let dir = loader::pin_dir(&bpffs.path, "log-test");
    let mut ebpf = loader::load_with_log_level(&dir, 1024, loader::program_log_level(level))
        .expect("loading the XDP object");
    let capture = Capture::default();
    let mut logger = aya_log::EbpfLogger::init_with_logger(&mut ebpf, capture.clone())
        .expect("the object carries aya-log's ring buffer");
    let mut tables = loader::PolicyMaps::open(&dir).expect("policy maps");
    let p = policy::parse_str(
        "t.toml",
        "[[rule]]\nname = \"api\"\nprotocol = \"tcp\"\nports = [8080]\nconnections = { rate = \"5/s\" }\n",
    )
    .expect("policy");
    let done = tables.install(&policy::compile(&p), 1, 0).expect("install");
    tables
        .restore_half(1 - done.half)
        .expect("putting the empty half in force");
    let prog: &Xdp = ebpf
        .program(PROGRAM_NAME)
        .expect("program")
        .try_into()
        .expect("xdp");
    let frame = Pkt::new("192.0.2.1", L4::syn(8080)).bytes();
    let mut out = vec![0u8; frame.len() + 256];
    for _ in 0..frames {
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(&frame),
                data_out: Some(&mut out),
                repeat: 1,
                ..Default::default()
            })
            .expect("BPF_PROG_TEST_RUN");
        assert_eq!(r.return_value, XDP_PASS, "no policy: everything passes");
    }
    logger.flush();
    capture.0.lock().expect("capture").clone()
}

#[test]
fn a_rare_condition_is_logged_once_a_second_and_never_when_disabled() {
    let logged = logged_with_no_policy_in_force("warn", 200);
    let matching: Vec<_> = logged
        .iter()
        .filter(|(l, m)| {
            *l == log::Level::Warn
                && shield_user::daemon::rare_conditions(m)
                    .is_some_and(|w| w.iter().any(|t| t.contains("no policy is loaded")))
        })
        .collect();
    // BPF_PROG_TEST_RUN runs on the calling thread's CPU; a second CPU may add one line.
    assert!(
        (1..=2).contains(&matching.len()),
        "200 packets without a policy log the condition once per CPU in a second: {logged:?}"
    );
    let quiet = logged_with_no_policy_in_force("error", 50);
    assert!(
        quiet.is_empty(),
        "with --log-level error the program logs no warning: {quiet:?}"
    );
}
