//! The filter in front of the per-source table (`MAP_SFILTER`, `shield_common::sfilter_bit`):
//! its two halves, mapped into the daemon's memory and changed with atomic operations, as
//! the data path changes them.
//!
//! The invariant: every key in the table has its bit set in at least one half (the data
//! path looks a source up only then). The data path sets a key's bit in both halves before
//! inserting it. The daemon sets the bits of the keys it finds in the pins
//! (`sfilter_adopt`), and rebuilds one half at a time (`SfilterRebuild`) while the other,
//! complete, holds the invariant: it clears the half, waits until every packet judged
//! before the clear has finished (its insert done), then sets the bit of every key in the
//! table. A key inserted after the clear set its own bit; one inserted before is found by
//! the listing. A rebuild that cannot finish its listing leaves its half incomplete, and
//! the other half is not cleared until this one is complete.

use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    path::Path,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use aya::maps::{HashMap, MapData};
use shield_common::{MAP_SFILTER, MAP_SOURCES, SFILTER_WORDS, SourceKey, SourceState, sfilter_bit};

use super::{LoaderError, map_err};

/// The filter's words, both halves, shared with the data path.
struct Words {
    ptr: *mut AtomicU64,
    len: usize,
    _map: MapData,
}

impl Words {
    fn open(dir: &Path) -> Result<Self, LoaderError> {
        let map = MapData::from_pin(dir.join(MAP_SFILTER)).map_err(map_err(MAP_SFILTER))?;
        let len = 2 * SFILTER_WORDS as usize;
        let fd = map.fd().as_fd().as_raw_fd();
        // SAFETY: a shared mapping of the array's values (BPF_F_MMAPABLE, 8-byte values,
        // page-aligned), of exactly its size; unmapped in `drop`.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len * 8,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(LoaderError::Map {
                map: MAP_SFILTER,
                source: aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                    call: "mmap",
                    io_error: std::io::Error::last_os_error(),
                }),
            });
        }
        Ok(Words {
            ptr: ptr.cast(),
            len,
            _map: map,
        })
    }

    fn words(&self) -> &[AtomicU64] {
        // SAFETY: `len` words mapped in `open`, alive until `drop`; AtomicU64 has u64's
        // layout, and every access (here and in the data path) is atomic.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    fn half(&self, half: usize) -> &[AtomicU64] {
        let n = SFILTER_WORDS as usize;
        &self.words()[half * n..(half + 1) * n]
    }
}

impl Drop for Words {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `open`.
        unsafe { libc::munmap(self.ptr.cast(), self.len * 8) };
    }
}

/// Sets the bits of every key in the source table into `halves` (atomic ORs). The listing
/// of a table that changes under it can start over (a key removed while it is the cursor);
/// past four times the table's size it gives up: `None`.
fn add_keys(dir: &Path, w: &Words, halves: &[usize]) -> Result<Option<u64>, LoaderError> {
    let data = MapData::from_pin(dir.join(MAP_SOURCES)).map_err(map_err(MAP_SOURCES))?;
    let bound = data
        .info()
        .map(|i| 4 * u64::from(i.max_entries()))
        .unwrap_or(u64::MAX);
    let table: HashMap<MapData, SourceKey, SourceState> =
        HashMap::try_from(aya::maps::Map::LruHashMap(data)).map_err(map_err(MAP_SOURCES))?;
    let mut seen = 0u64;
    for key in table.keys() {
        let key = key.map_err(map_err(MAP_SOURCES))?;
        seen += 1;
        if seen > bound {
            return Ok(None);
        }
        let (word, mask) = sfilter_bit(&key);
        for &h in halves {
            w.half(h)[word as usize].fetch_or(mask, Ordering::Relaxed);
        }
    }
    Ok(Some(seen))
}

/// Sets the bit of every key in the pinned source table, in both halves: run when the
/// program is loaded (a table left by a version without the filter, or a daemon stopped
/// mid-rebuild) and again once attached (an earlier program that does not set bits may run
/// until then). If the table cannot be listed to its end, every bit is set: each source
/// is then looked up, as before the filter, until the rebuilds clear what is stale.
/// Returns the keys listed.
pub fn sfilter_adopt(dir: &Path) -> Result<u64, LoaderError> {
    let w = Words::open(dir)?;
    match add_keys(dir, &w, &[0, 1])? {
        Some(n) => Ok(n),
        None => {
            for word in w.words() {
                word.store(u64::MAX, Ordering::Relaxed);
            }
            Ok(0)
        }
    }
}

/// Bits set in each half.
pub fn sfilter_bits(dir: &Path) -> Result<[u64; 2], LoaderError> {
    let w = Words::open(dir)?;
    let count = |h: usize| {
        w.half(h)
            .iter()
            .map(|x| u64::from(x.load(Ordering::Relaxed).count_ones()))
            .sum()
    };
    Ok([count(0), count(1)])
}

/// How long a cleared half waits before its keys are set again: far longer than any
/// program run (microseconds), so that every insert whose bit the clear removed is done.
pub const SFILTER_SETTLE: Duration = Duration::from_millis(50);

/// One interface's rebuild of its filter, a half at a time (see the module's text).
#[derive(Debug)]
pub struct SfilterRebuild {
    /// The half to rebuild next.
    next: usize,
    /// The half cleared and when, waiting to be filled.
    cleared: Option<(usize, Instant)>,
    /// Keys the last complete listing found.
    pub listed: u64,
    /// When a half was last cleared (`SFILTER_SPACING`).
    last_clear: Option<Instant>,
}

/// Unforced rebuilds start at most this often: each lists the whole source table.
pub const SFILTER_SPACING: Duration = Duration::from_secs(10);

impl Default for SfilterRebuild {
    fn default() -> Self {
        Self::new()
    }
}

/// What a call to `SfilterRebuild::step` did.
#[derive(Debug, PartialEq, Eq)]
pub enum SfilterStep {
    /// Nothing to do (the filter holds few stale bits, or a cleared half is settling).
    Idle,
    /// This half was cleared (`bits` were set in it).
    Cleared { half: usize, bits: u64 },
    /// This half is complete again, with the bits of `keys` keys.
    Filled { half: usize, keys: u64 },
    /// The listing did not reach the table's end: the half stays incomplete, to be filled
    /// at the next step.
    Incomplete { half: usize },
}

impl SfilterRebuild {
    /// Both halves complete (as `sfilter_adopt` leaves them).
    pub fn new() -> Self {
        SfilterRebuild {
            next: 0,
            cleared: None,
            listed: 0,
            last_clear: None,
        }
    }

    /// Moves the rebuild on: fills a cleared half once it has settled; else clears the
    /// next half when `force`, or when the filter holds more than twice the bits the last
    /// listing's keys need (plus 4,096) and no half was cleared in `SFILTER_SPACING`.
    pub fn step(&mut self, dir: &Path, force: bool) -> Result<SfilterStep, LoaderError> {
        let w = Words::open(dir)?;
        if let Some((half, at)) = self.cleared {
            if at.elapsed() < SFILTER_SETTLE {
                return Ok(SfilterStep::Idle);
            }
            return Ok(match add_keys(dir, &w, &[half])? {
                Some(keys) => {
                    self.cleared = None;
                    self.next = 1 - half;
                    self.listed = keys;
                    SfilterStep::Filled { half, keys }
                }
                None => SfilterStep::Incomplete { half },
            });
        }
        let union: u64 = (0..SFILTER_WORDS as usize)
            .map(|i| {
                let a = w.half(0)[i].load(Ordering::Relaxed);
                let b = w.half(1)[i].load(Ordering::Relaxed);
                u64::from((a | b).count_ones())
            })
            .sum();
        let spaced = self
            .last_clear
            .is_none_or(|at| at.elapsed() >= SFILTER_SPACING);
        if !force && (!spaced || union <= 2 * self.listed + 4096) {
            return Ok(SfilterStep::Idle);
        }
        let half = self.next;
        let bits = w
            .half(half)
            .iter()
            .map(|x| u64::from(x.swap(0, Ordering::Relaxed).count_ones()))
            .sum();
        self.cleared = Some((half, Instant::now()));
        self.last_clear = Some(Instant::now());
        Ok(SfilterStep::Cleared { half, bits })
    }

    /// Runs a whole rebuild of one half now (clear, settle, fill): for tests and tools.
    pub fn rebuild_now(&mut self, dir: &Path) -> Result<SfilterStep, LoaderError> {
        self.step(dir, true)?;
        std::thread::sleep(SFILTER_SETTLE);
        self.step(dir, false)
    }
}
