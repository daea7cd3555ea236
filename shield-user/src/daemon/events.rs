//! One task per interface reads its ring buffer when the kernel says it is readable
//! (`AsyncFd`), and hands the events to the owner.

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
