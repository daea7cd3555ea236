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
    path::Path,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use shield_common::{MAP_SFILTER, MAP_SOURCES, SFILTER_WORDS, SourceKey, SourceState, sfilter_bit};

use super::{
    LoaderError,
    mapped::{Words as Mapped, table_keys as list_keys},
};

/// The filter's words, both halves, shared with the data path.
struct Words(Mapped);

impl Words {
    fn open(dir: &Path) -> Result<Self, LoaderError> {
        Mapped::open(dir, MAP_SFILTER, 2 * SFILTER_WORDS as usize).map(Words)
    }

    fn words(&self) -> &[AtomicU64] {
        self.0.words()
    }

    fn half(&self, half: usize) -> &[AtomicU64] {
        let n = SFILTER_WORDS as usize;
        &self.words()[half * n..(half + 1) * n]
    }
}

/// Every key in the source table (see `mapped::table_keys`).
pub(super) fn table_keys(dir: &Path) -> Result<Vec<SourceKey>, LoaderError> {
    list_keys(dir, MAP_SOURCES, size_of::<SourceState>())
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
