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
//! the listing (`BPF_MAP_LOOKUP_BATCH`, a bucket at a time under its lock, so a key present
//! throughout is never skipped). A rebuild whose listing fails leaves its half cleared, to
//! be filled at the next step, and the other half is not cleared until this one is full.

use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    path::Path,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use aya::maps::MapData;
use shield_common::{MAP_SFILTER, MAP_SOURCES, SFILTER_WORDS, SourceKey, SourceState, sfilter_bit};

use super::{LoaderError, map_err};

/// A failed system call on `map`, as the loader reports map errors.
fn sys_err(map: &'static str, call: &'static str, io_error: std::io::Error) -> LoaderError {
    LoaderError::Map {
        map,
        source: aya::maps::MapError::SyscallError(aya::sys::SyscallError { call, io_error }),
    }
}

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
            return Err(sys_err(
                MAP_SFILTER,
                "mmap",
                std::io::Error::last_os_error(),
            ));
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

/// `bpf_attr` for `BPF_MAP_LOOKUP_BATCH` (include/uapi/linux/bpf.h, `batch`).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// Every key in the source table, listed with `BPF_MAP_LOOKUP_BATCH` (aya has no batch
/// call): the kernel copies a bucket at a time under its lock, so a key present for the
/// whole listing is always in it, however the table churns meanwhile (one key at a time,
/// `get_next_key` can skip buckets when its cursor is evicted and reused). A key inserted
/// or removed during the listing may or may not be in it.
fn table_keys(dir: &Path) -> Result<Vec<SourceKey>, LoaderError> {
    let data = MapData::from_pin(dir.join(MAP_SOURCES)).map_err(map_err(MAP_SOURCES))?;
    let fd = data.fd().as_fd().as_raw_fd();
    let (ksz, vsz) = (size_of::<SourceKey>(), size_of::<SourceState>());
    let mut room = 4096usize;
    let mut keys = Vec::new();
    let mut token = 0u32;
    let mut first = true;
    loop {
        let mut kbuf = vec![0u8; room * ksz];
        let mut vbuf = vec![0u8; room * vsz];
        let mut next = 0u32;
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                &token as *const u32 as u64
            },
            out_batch: &mut next as *mut u32 as u64,
            keys: kbuf.as_mut_ptr() as u64,
            values: vbuf.as_mut_ptr() as u64,
            count: room as u32,
            map_fd: fd as u32,
            ..Default::default()
        };
        // SAFETY: `attr` is the command's attribute block, of its size; the buffers hold
        // `count` keys and values, the batch tokens are u32 (a hash table's bucket index).
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &mut attr as *mut BatchAttr,
                size_of::<BatchAttr>(),
            )
        };
        let err = (r < 0).then(std::io::Error::last_os_error);
        if err.as_ref().and_then(|e| e.raw_os_error()) == Some(libc::ENOSPC) {
            // One bucket holds more keys than the buffer: a larger one, same batch.
            room *= 2;
            continue;
        }
        if let Some(e) = err.as_ref()
            && e.raw_os_error() != Some(libc::ENOENT)
        {
            let e = std::io::Error::from_raw_os_error(e.raw_os_error().unwrap_or(0));
            return Err(sys_err(MAP_SOURCES, "bpf_map_lookup_batch", e));
        }
        for k in kbuf.chunks_exact(ksz).take(attr.count as usize) {
            // SAFETY: `ksz` bytes the kernel wrote as a key of this table: a plain-data
            // `SourceKey`, read unaligned.
            keys.push(unsafe { std::ptr::read_unaligned(k.as_ptr() as *const SourceKey) });
        }
        if err.is_some() {
            // ENOENT: the last buckets are listed.
            return Ok(keys);
        }
        token = next;
        first = false;
    }
}

/// Sets the bits of every key in the source table into `halves` (atomic ORs). Returns how
/// many keys it listed.
fn add_keys(dir: &Path, w: &Words, halves: &[usize]) -> Result<u64, LoaderError> {
    let keys = table_keys(dir)?;
    for key in &keys {
        let (word, mask) = sfilter_bit(key);
        for &h in halves {
            w.half(h)[word as usize].fetch_or(mask, Ordering::Relaxed);
        }
    }
    Ok(keys.len() as u64)
}

/// Sets the bit of every key in the pinned source table, in both halves: run when the
/// program is loaded (a table left by a version without the filter, or a daemon stopped
/// mid-rebuild) and again once attached (an earlier program that does not set bits may run
/// until then). If the table cannot be listed, every bit is set (each source is then looked
/// up, as before the filter, until the rebuilds clear what is stale) and the error is
/// returned. Returns the keys listed.
pub fn sfilter_adopt(dir: &Path) -> Result<u64, LoaderError> {
    let w = Words::open(dir)?;
    match add_keys(dir, &w, &[0, 1]) {
        Ok(n) => Ok(n),
        Err(e) => {
            for word in w.words() {
                word.store(u64::MAX, Ordering::Relaxed);
            }
            Err(e)
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
        // Most ticks have nothing to do: decided before the filter is mapped.
        let spaced = self
            .last_clear
            .is_none_or(|at| at.elapsed() >= SFILTER_SPACING);
        match self.cleared {
            Some((_, at)) if at.elapsed() < SFILTER_SETTLE => return Ok(SfilterStep::Idle),
            None if !force && !spaced => return Ok(SfilterStep::Idle),
            _ => {}
        }
        let w = Words::open(dir)?;
        if let Some((half, _)) = self.cleared {
            // A listing that fails leaves the half cleared (the other one holds), to be
            // filled at the next step.
            let keys = add_keys(dir, &w, &[half])?;
            self.cleared = None;
            self.next = 1 - half;
            self.listed = keys;
            return Ok(SfilterStep::Filled { half, keys });
        }
        let union: u64 = (0..SFILTER_WORDS as usize)
            .map(|i| {
                let a = w.half(0)[i].load(Ordering::Relaxed);
                let b = w.half(1)[i].load(Ordering::Relaxed);
                u64::from((a | b).count_ones())
            })
            .sum();
        if !force && union <= 2 * self.listed + 4096 {
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
