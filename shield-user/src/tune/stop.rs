//! Ending an observation early, as `tcpdump` or `perf record` do: while `EarlyStop` is
//! installed, the first SIGINT or SIGTERM only asks the observation to stop (the report
//! then covers what was observed); a second one ends the process at once, by that
//! signal's default action. Outside the observation both keep their former actions.

use std::{
    io,
    sync::atomic::{AtomicI32, AtomicU32, Ordering},
};

/// The signals that stop an observation early.
const SIGNALS: [libc::c_int; 2] = [libc::SIGINT, libc::SIGTERM];

/// Signals received since `install`, and the first of them.
static RECEIVED: AtomicU32 = AtomicU32::new(0);
static FIRST: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    // Async-signal-safe only: lock-free atomics, signal(2) and raise(3).
    if RECEIVED.fetch_add(1, Ordering::SeqCst) == 0 {
        FIRST.store(sig, Ordering::SeqCst);
        return;
    }
    // The second: the default action (the process ends by the signal) once this handler
    // returns and `sig` is no longer blocked.
    // SAFETY: both are async-signal-safe.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
}

/// SIGINT and SIGTERM caught for the observation. One at a time (the state is global).
pub struct EarlyStop {
    /// The actions to put back: (signal, its former action).
    former: Vec<(libc::c_int, libc::sigaction)>,
}

impl EarlyStop {
    /// Catches SIGINT and SIGTERM, except one that is ignored (a background job started
    /// by a shell ignores SIGINT: it stays ignored). Without SA_RESTART, so a blocking
    /// read returns at once with EINTR.
    pub fn install() -> io::Result<EarlyStop> {
        RECEIVED.store(0, Ordering::SeqCst);
        FIRST.store(0, Ordering::SeqCst);
        let mut stop = EarlyStop { former: Vec::new() };
        for sig in SIGNALS {
            // SAFETY: an all-zero sigaction is valid for sigaction(2) to fill.
            let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
            // SAFETY: reading the current action into `old`.
            if unsafe { libc::sigaction(sig, std::ptr::null(), &mut old) } != 0 {
                return Err(io::Error::last_os_error());
            }
            if old.sa_sigaction == libc::SIG_IGN {
                continue;
            }
            // SAFETY: all-zero, then the fields set: handler, empty mask, no flags.
            let mut new: libc::sigaction = unsafe { std::mem::zeroed() };
            new.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            // SAFETY: `new.sa_mask` is ours to initialise.
            unsafe { libc::sigemptyset(&mut new.sa_mask) };
            new.sa_flags = 0;
            // SAFETY: a valid action whose handler only does async-signal-safe work.
            if unsafe { libc::sigaction(sig, &new, std::ptr::null_mut()) } != 0 {
                return Err(io::Error::last_os_error());
            }
            stop.former.push((sig, old));
        }
        Ok(stop)
    }

    /// The first signal received since `install`, if any.
    pub fn requested(&self) -> Option<libc::c_int> {
        (RECEIVED.load(Ordering::SeqCst) > 0).then(|| FIRST.load(Ordering::SeqCst))
    }

    /// The observation is over: SIGINT and SIGTERM get their former actions back. A signal
    /// that came after the observation had ended by itself (`stopped_by_it` false) was
    /// meant to abort: it gets its former action now.
    pub fn end(self, stopped_by_it: bool) {
        let late = self.requested().filter(|_| !stopped_by_it);
        drop(self);
        if let Some(sig) = late {
            // SAFETY: raise(3) on ourselves.
            unsafe { libc::raise(sig) };
        }
    }
}

impl Drop for EarlyStop {
    fn drop(&mut self) {
        for (sig, old) in &self.former {
            // SAFETY: an action sigaction(2) gave us.
            unsafe { libc::sigaction(*sig, old, std::ptr::null_mut()) };
        }
    }
}

/// Runs `f` with SIGINT and SIGTERM held back: one that comes meanwhile takes effect once
/// `f` returned (a file is replaced whole and said so, or left alone, never cut off midway).
pub fn holding_signals<T>(f: impl FnOnce() -> T) -> T {
    // SAFETY: sigset_t values initialised by sigemptyset/sigaddset, then pthread_sigmask
    // on this thread (tune is single-threaded).
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in SIGNALS {
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
        let r = f();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        r
    }
}

/// "SIGINT", "SIGTERM".
pub fn signal_name(sig: libc::c_int) -> String {
    match sig {
        libc::SIGINT => "SIGINT".into(),
        libc::SIGTERM => "SIGTERM".into(),
        n => format!("signal {n}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One test for the process-wide state: the first signal is recorded, not fatal; the
    /// actions come back on `end`; a held signal waits for the end of the closure.
    #[test]
    fn the_first_signal_asks_and_the_actions_come_back() {
        // SIGTERM's default would end the test binary: catch it with a marker first.
        static MARK: AtomicU32 = AtomicU32::new(0);
        extern "C" fn mark(_: libc::c_int) {
            MARK.fetch_add(1, Ordering::SeqCst);
        }
        // SAFETY: a handler that only touches an atomic.
        let mut mine: libc::sigaction = unsafe { std::mem::zeroed() };
        mine.sa_sigaction = mark as extern "C" fn(libc::c_int) as libc::sighandler_t;
        // SAFETY: as above.
        unsafe { libc::sigaction(libc::SIGTERM, &mine, std::ptr::null_mut()) };

        let stop = EarlyStop::install().expect("install");
        assert_eq!(stop.requested(), None);
        // SAFETY: raise(3) on ourselves; the handler records it.
        unsafe { libc::raise(libc::SIGTERM) };
        assert_eq!(stop.requested(), Some(libc::SIGTERM));
        assert_eq!(MARK.load(Ordering::SeqCst), 0, "caught, not passed on");
        stop.end(true);
        // SAFETY: as above: our marker is SIGTERM's action again.
        unsafe { libc::raise(libc::SIGTERM) };
        assert_eq!(MARK.load(Ordering::SeqCst), 1, "the former action is back");

        let seen = holding_signals(|| {
            // SAFETY: as above; held until the closure returns.
            unsafe { libc::raise(libc::SIGTERM) };
            MARK.load(Ordering::SeqCst)
        });
        assert_eq!(seen, 1, "held back during the closure");
        assert_eq!(MARK.load(Ordering::SeqCst), 2, "delivered after it");
        assert_eq!(signal_name(libc::SIGINT), "SIGINT");
    }
}
