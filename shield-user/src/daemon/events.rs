//! One task per interface reads its ring buffer when the kernel says it is readable
//! (`AsyncFd`), and hands the events to the owner; another forwards the XDP program's own
//! log (aya-log: rare conditions only) to the daemon's log, with the interface name.

use aya::maps::{MapData, RingBuf};
use shield_common::Event;
use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::{mpsc, watch},
};
use tracing::error;

use super::owner::Msg;

fn drain(ring: &mut RingBuf<MapData>) -> Vec<Event> {
    let mut events = Vec::new();
    while let Some(item) = ring.next() {
        if item.len() < std::mem::size_of::<Event>() {
            continue;
        }
        // SAFETY: the buffer holds at least one Event, written by the program as #[repr(C)].
        events.push(unsafe { std::ptr::read_unaligned::<Event>(item.as_ptr().cast()) });
    }
    events
}

/// Reads interface `idx`'s events until `stop`; then drains what is left and returns.
pub(super) async fn read(
    idx: usize,
    iface: String,
    ring: RingBuf<MapData>,
    tx: mpsc::Sender<Msg>,
    mut stop: watch::Receiver<bool>,
) {
    // SAFETY: the RingBuf owns its map fd and keeps it open, unchanged, until it is dropped,
    // which only happens with the AsyncFd that owns it.
    let registered = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            error!(%iface, "cannot watch the event ring buffer: {e}; no audit events from it");
            return;
        }
    };
    loop {
        let events = tokio::select! {
            _ = stop.changed() => None,
            guard = fd.readable_mut() => match guard {
                Ok(mut guard) => {
                    let events = drain(guard.get_inner_mut());
                    guard.clear_ready();
                    Some(events)
                }
                Err(e) => {
                    error!(%iface, "event ring buffer: {e}");
                    return;
                }
            },
        };
        match events {
            Some(events) if events.is_empty() => {}
            Some(events) => {
                if tx.send(Msg::Events(idx, events)).await.is_err() {
                    return;
                }
            }
            None => {
                let events = drain(fd.get_mut());
                if !events.is_empty() {
                    let _ = tx.send(Msg::Events(idx, events)).await;
                }
                return;
            }
        }
    }
}

/// The XDP program's aya-log records, as the daemon's log lines with the interface name.
pub(crate) struct IfaceLog {
    pub iface: String,
}

impl log::Log for IfaceLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let iface = &self.iface;
        let text = record.args().to_string();
        let msg = match rare_conditions(&text) {
            Some(words) => words.join("; "),
            None => text,
        };
        match record.level() {
            log::Level::Error => tracing::error!(%iface, "XDP: {msg}"),
            log::Level::Warn => tracing::warn!(%iface, "XDP: {msg}"),
            log::Level::Info => tracing::info!(%iface, "XDP: {msg}"),
            log::Level::Debug => tracing::debug!(%iface, "XDP: {msg}"),
            log::Level::Trace => tracing::trace!(%iface, "XDP: {msg}"),
        }
    }

    fn flush(&self) {}
}

/// Forwards interface `iface`'s program log until `stop`.
pub(super) async fn forward_log(
    iface: String,
    logger: aya_log::EbpfLogger<IfaceLog>,
    mut stop: watch::Receiver<bool>,
) {
    // SAFETY: the logger owns its ring buffer's fd and keeps it open, unchanged, until it is
    // dropped, which only happens with the AsyncFd that owns it.
    let registered = unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            error!(%iface, "cannot watch the XDP program's log: {e}");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = stop.changed() => {
                fd.get_mut().flush();
                return;
            }
            guard = fd.readable_mut() => match guard {
                Ok(mut guard) => {
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
                Err(e) => {
                    error!(%iface, "the XDP program's log: {e}");
                    return;
                }
            },
        }
    }
}

/// The words of the program's "rare conditions MASK" line (`shield_common::RARE_*`).
pub fn rare_conditions(line: &str) -> Option<Vec<&'static str>> {
    let mask: u64 = line.strip_prefix("rare conditions ")?.trim().parse().ok()?;
    Some(
        shield_common::RARE_TEXT
            .iter()
            .enumerate()
            .filter(|(i, _)| mask & (1 << i) != 0)
            .map(|(_, t)| *t)
            .collect(),
    )
}
