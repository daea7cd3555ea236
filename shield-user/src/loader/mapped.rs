//! What the two bit filters' user-space sides share (`sfilter`, `vfilter`): a filter
//! array mapped into the daemon's memory, changed with atomic operations as the data path
//! changes it, and the listing of a hash table's keys with `BPF_MAP_LOOKUP_BATCH`.

use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    path::Path,
    sync::atomic::AtomicU64,
};

use aya::maps::MapData;

use super::{LoaderError, map_err};

/// A failed system call on `map`, as the loader reports map errors.
pub(super) fn sys_err(
    map: &'static str,
    call: &'static str,
    io_error: std::io::Error,
) -> LoaderError {
    LoaderError::Map {
        map,
        source: aya::maps::MapError::SyscallError(aya::sys::SyscallError { call, io_error }),
    }
}

/// The words of a pinned `BPF_F_MMAPABLE` array of u64, shared with the data path.
pub(super) struct Words {
    ptr: *mut AtomicU64,
    len: usize,
    _map: MapData,
}

impl Words {
    /// Maps the `len` words of the array pinned as `name` in `dir`.
    pub(super) fn open(dir: &Path, name: &'static str, len: usize) -> Result<Self, LoaderError> {
        let map = MapData::from_pin(dir.join(name)).map_err(map_err(name))?;
        let fd = map.fd().as_fd().as_raw_fd();
        // SAFETY: a shared mapping of the array's values (BPF_F_MMAPABLE, 8-byte values,
        // page-aligned), of at most its size (the kernel refuses a larger one); unmapped in
        // `drop`.
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
            return Err(sys_err(name, "mmap", std::io::Error::last_os_error()));
        }
        Ok(Words {
            ptr: ptr.cast(),
            len,
            _map: map,
        })
    }

    pub(super) fn words(&self) -> &[AtomicU64] {
        // SAFETY: `len` words mapped in `open`, alive until `drop`; AtomicU64 has u64's
        // layout, and every access (here and in the data path) is atomic.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
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

/// Every key of the hash table pinned as `name` in `dir` (values of `value_size` bytes),
/// listed with `BPF_MAP_LOOKUP_BATCH` (aya has no batch call): the kernel copies a bucket
/// at a time under its lock, so a key present for the whole listing is always in it,
/// however the table churns meanwhile (one key at a time, `get_next_key` can skip buckets
/// when its cursor is evicted and reused). A key inserted or removed during the listing
/// may or may not be in it. `K`: a plain-data key type of the table's key size.
pub(super) fn table_keys<K: Copy>(
    dir: &Path,
    name: &'static str,
    value_size: usize,
) -> Result<Vec<K>, LoaderError> {
    let data = MapData::from_pin(dir.join(name)).map_err(map_err(name))?;
    let fd = data.fd().as_fd().as_raw_fd();
    let ksz = size_of::<K>();
    let mut room = 4096usize;
    let mut keys = Vec::new();
    let mut token = 0u32;
    let mut first = true;
    loop {
        let mut kbuf = vec![0u8; room * ksz];
        let mut vbuf = vec![0u8; room * value_size];
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
            return Err(sys_err(name, "bpf_map_lookup_batch", e));
        }
        for k in kbuf.chunks_exact(ksz).take(attr.count as usize) {
            // SAFETY: `ksz` bytes the kernel wrote as a key of this table: a plain-data
            // `K`, read unaligned.
            keys.push(unsafe { std::ptr::read_unaligned(k.as_ptr() as *const K) });
        }
        if err.is_some() {
            // ENOENT: the last buckets are listed.
            return Ok(keys);
        }
        token = next;
        first = false;
    }
}
