//! The thin kernel layer: bpffs, loading the XDP object with pinned maps, writing a
//! compiled policy into the maps, attaching to an interface.

use std::{
    collections::HashSet,
    ffi::CString,
    io,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader, Pod,
    maps::{Array, LpmTrie, Map, MapData, MapError, lpm_trie::Key},
    programs::{
        ProgramError, Xdp, XdpMode,
        links::{FdLink, LinkError, PinnedLink},
        xdp::XdpLink,
    },
};
use shield_common::{
    ALL_MAPS, CFG_LOADED, Control, GlobalConfig, LINK_PIN, LIST_KEY_V4, LIST_KEY_V6, ListValue,
    MAP_ALLOW_V4, MAP_ALLOW_V6, MAP_CONFIG, MAP_CONTROL, MAP_DENY_V4, MAP_DENY_V6,
    MAP_LIST_SUMMARY, MAP_PORTS, MAP_RULES, MAP_SOURCES, PORT_TABLE_LEN, PROGRAM_NAME,
    RULE_PRESENT, RULE_SLOTS, RULE_SYNCOOKIE, RULE_SYNCOOKIE_TS, RuleConfig,
};

use crate::policy::CompiledPolicy;

mod attach;
mod ban_count;
mod detach;
mod forget;
mod mapped;
mod sfilter;
mod tables;
mod vfilter;

pub use attach::*;
pub use ban_count::{ban_counts_adopt, bump_ban_epoch};
pub use detach::{Detached, detach_pinned};
pub use forget::forget_rules;
pub use sfilter::{SFILTER_SETTLE, SfilterRebuild, SfilterStep, sfilter_adopt, sfilter_bits};
pub use tables::*;
pub use vfilter::{vfilter_add, vfilter_adopt, vfilter_rebuild};

/// Where bpffs is normally mounted.
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf";
/// `statfs` magic of bpffs (include/uapi/linux/magic.h).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error(
        "shield must run as root (it needs CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN for XDP programs and their pinned maps); try: sudo shield …"
    )]
    NotRoot,
    #[error("interface `{0}` does not exist (see `ip link`)")]
    NoSuchInterface(String),
    #[error("`{name}` is not a valid interface name: {why}")]
    BadInterfaceName { name: String, why: &'static str },
    #[error(
        "another shield daemon holds `{iface}` (the lock on {dir}); stop it first (a running daemon takes policy changes with `shield reload`)"
    )]
    Busy { iface: String, dir: PathBuf },
    #[error(
        "the link pinned in {dir} holds interface index {found}, but `{iface}` is index {want} (was the interface renamed?); remove the stale pins with `shield detach {iface}` or start with `--fresh`"
    )]
    ForeignLink {
        iface: String,
        dir: PathBuf,
        found: u32,
        want: u32,
    },
    #[error(
        "{path} is not a bpffs and not empty: shield will not mount bpffs over it (that would hide its contents); give --bpffs a new or empty directory"
    )]
    NotEmpty { path: PathBuf },
    #[error("{path} is not a bpffs mount, so it holds no shield pins; nothing was removed")]
    NotBpffs { path: PathBuf },
    #[error("{path}: {why}; nothing was removed")]
    NotShields { path: PathBuf, why: String },
    #[error("cannot mount bpffs at {path}: {source}")]
    Bpffs { path: PathBuf, source: io::Error },
    #[error("cannot prepare pin directory {path}: {source}")]
    PinDir { path: PathBuf, source: io::Error },
    #[error("loading the XDP program failed: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("the XDP object has no `{0}` (built from another version?)")]
    Missing(&'static str),
    #[error("map {map}: {}", with_os_error(.source))]
    Map { map: &'static str, source: MapError },
    #[error(
        "the map {map} pinned in {dir} was created by another shield version ({}, key {found_key} B, value {found_value} B, {found_entries} entries; this version needs {}, key {key} B, value {value} B and {entries} entries). Start once with `shield run --fresh` (drops its counters, limiter state and bans), or remove the interface's pins with `shield detach IFACE`",
        type_name(.found_type),
        type_name(.map_type)
    )]
    Incompatible {
        map: &'static str,
        dir: PathBuf,
        /// The map types (`None`: one aya does not know).
        found_type: Option<aya::maps::MapType>,
        map_type: Option<aya::maps::MapType>,
        found_key: u32,
        found_value: u32,
        found_entries: u32,
        key: usize,
        value: usize,
        entries: u32,
    },
    #[error("XDP program: {0}")]
    Program(#[from] ProgramError),
    #[error("XDP link: {0}")]
    Link(#[from] LinkError),
    #[error(
        "another XDP program is already attached to `{iface}`; remove it first (`ip link set dev {iface} xdp off`). If it is a shield (`ip link show {iface}` names the program), a daemon may still run on it with another --bpffs or in another mount namespace (each `ip netns exec` has its own): stop that daemon; with none running, `shield detach {iface} --bpffs DIR` removes it"
    )]
    AlreadyAttached { iface: String },
    #[error("cannot attach to `{iface}` in {mode} mode: {source}")]
    Attach {
        iface: String,
        mode: &'static str,
        source: ProgramError,
    },
}

/// A map error's message, with the system's reason where a system call failed (aya's says
/// which call failed, its source why): a failed reload reports it on one line, without the
/// chain (`map SHIELD_ALLOW4: `bpf_map_update_elem` failed: Cannot allocate memory`).
fn with_os_error(e: &MapError) -> String {
    match e {
        MapError::SyscallError(s) => format!("{s}: {}", s.io_error),
        other => other.to_string(),
    }
}

/// A map type as aya names it (`LpmTrie`, `Hash`, …), for `Incompatible`.
fn type_name(t: &Option<aya::maps::MapType>) -> String {
    t.map_or("a map of an unknown type".into(), |t| format!("{t:?}"))
}

fn map_err(map: &'static str) -> impl FnOnce(MapError) -> LoaderError {
    move |source| LoaderError::Map { map, source }
}

/// Fails with a clear message unless running as root.
pub fn require_root() -> Result<(), LoaderError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(LoaderError::NotRoot);
    }
    Ok(())
}

/// The interface index, or a clear error.
pub fn if_index(iface: &str) -> Result<u32, LoaderError> {
    let name = CString::new(iface).map_err(|_| LoaderError::NoSuchInterface(iface.to_string()))?;
    // SAFETY: `name` is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(LoaderError::NoSuchInterface(iface.to_string()));
    }
    Ok(index)
}

/// The interface index now: `Ok(None)` when no interface has that name (ENODEV),
/// `Err` when the lookup itself failed (out of fds, …: nothing can be said).
pub fn if_index_now(iface: &str) -> io::Result<Option<u32>> {
    let name = CString::new(iface).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `name` is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index != 0 {
        return Ok(Some(index));
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::ENODEV) | Some(libc::ENXIO) => Ok(None),
        _ => Err(err),
    }
}

/// Whether `path` is a bpffs mount point.
pub fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: zeroed statfs is a valid out-buffer; `c` is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    rc == 0 && st.f_type as i64 == BPF_FS_MAGIC
}

/// Mounts bpffs at `root` unless it already is one (a fresh machine has nothing at
/// /sys/fs/bpf). Returns whether it mounted it.
pub fn ensure_bpffs(root: &Path) -> Result<bool, LoaderError> {
    if is_bpffs(root) {
        return Ok(false);
    }
    let err = |source| LoaderError::Bpffs {
        path: root.to_path_buf(),
        source,
    };
    if std::fs::read_dir(root).is_ok_and(|mut d| d.next().is_some()) {
        return Err(LoaderError::NotEmpty {
            path: root.to_path_buf(),
        });
    }
    std::fs::create_dir_all(root).map_err(err)?;
    let target = CString::new(root.as_os_str().as_bytes())
        .map_err(|_| err(io::Error::from(io::ErrorKind::InvalidInput)))?;
    // SAFETY: all pointers are valid NUL-terminated strings.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            c"mode=0700".as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(err(io::Error::last_os_error()));
    }
    Ok(true)
}

/// The topmost directory of `path` (itself or one of its parents) that does not exist
/// yet: what `create_dir_all(path)` would create first. `None` when `path` exists.
pub fn first_missing_dir(path: &Path) -> Option<PathBuf> {
    let mut top = None;
    for dir in path.ancestors() {
        if dir.as_os_str().is_empty() || dir.symlink_metadata().is_ok() {
            break;
        }
        top = Some(dir.to_path_buf());
    }
    top
}

/// Removes `path` and its parents up to `top` (as found by `first_missing_dir` before they
/// were created), each only if empty: a failed start leaves no directory of its own.
pub fn remove_created_dirs(path: &Path, top: &Path) {
    for dir in path.ancestors() {
        if std::fs::remove_dir(dir).is_err() || dir == top {
            break;
        }
    }
}

/// `<bpffs>/shield/:locks/<iface>`: the directories daemons lock. Apart from the pin
/// directories, so that `shield detach` (which removes a pin directory) never frees the
/// lock of a daemon still running. (`:` cannot be in an interface name; bpffs refuses
/// names with `.`.)
pub const LOCKS_DIR: &str = ":locks";

/// Longest interface name Linux accepts (IFNAMSIZ - 1).
pub const IFACE_NAME_MAX: usize = 15;

/// Checks `name` against Linux's rules for an interface name (`dev_valid_name` in
/// net/core/dev.c): 1 to 15 bytes, not `.` or `..`, no `/`, `:`, NUL or white space. Every
/// name that becomes a path (`pin_dir`) passes through here first, so `../x` or `/etc`
/// can never name a directory outside `<bpffs>/shield/`.
pub fn check_iface(name: &str) -> Result<(), LoaderError> {
    let why = if name.is_empty() {
        Some("it is empty")
    } else if name.len() > IFACE_NAME_MAX {
        Some("Linux interface names are at most 15 bytes")
    } else if name == "." || name == ".." {
        Some("`.` and `..` are not interface names")
    } else if name.contains('/') {
        Some("it contains `/`")
    } else if name.contains(':') {
        Some("it contains `:`")
    } else if name == ".locks" {
        Some("`.locks` is reserved (it would share the name of shield's lock directory)")
    } else if name.chars().any(|c| c.is_whitespace() || c == '\0') {
        Some("it contains white space or NUL")
    } else {
        None
    };
    match why {
        None => Ok(()),
        Some(why) => Err(LoaderError::BadInterfaceName {
            name: shorten(name),
            why,
        }),
    }
}

/// `name` cut to 40 characters (an error never echoes megabytes of input).
fn shorten(name: &str) -> String {
    match name.char_indices().nth(40) {
        Some((end, _)) => format!("{}… ({} bytes)", &name[..end], name.len()),
        None => name.to_string(),
    }
}

/// clap value parser for every interface argument.
pub fn iface_arg(name: &str) -> Result<String, String> {
    check_iface(name).map_err(|e| match e {
        LoaderError::BadInterfaceName { why, .. } => why.to_string(),
        other => other.to_string(),
    })?;
    Ok(name.to_string())
}

/// `<bpffs>/shield/<iface>`: where one interface's maps are pinned. `iface` must have
/// passed `check_iface` (the CLI's parsers and `daemon::run` do that). bpffs refuses `.` in
/// names, so a VLAN interface `eth0.100` pins under `eth0:100` (`:` is never in an
/// interface name, so the mapping is one to one).
pub fn pin_dir(bpffs: &Path, iface: &str) -> PathBuf {
    bpffs.join("shield").join(pin_name(iface))
}

/// The pin directory's name for `iface` (see `pin_dir`).
pub fn pin_name(iface: &str) -> String {
    iface.replace('.', ":")
}

/// The interface a pin directory's name stands for (see `pin_dir`).
pub fn iface_of_pin_name(name: &str) -> String {
    name.replace(':', ".")
}

/// Creates the interface's pin directory (if needed) and takes an exclusive `flock` on it
/// for as long as the returned handle lives: one daemon per interface. The kernel drops the
/// lock when the daemon exits, even on `kill -9`. Returns the handle and whether this call
/// created the directory.
pub fn lock_iface(bpffs: &Path, iface: &str) -> Result<(std::fs::File, bool), LoaderError> {
    check_iface(iface)?;
    let dir = pin_dir(bpffs, iface);
    let lock_dir = bpffs.join("shield").join(LOCKS_DIR).join(pin_name(iface));
    std::fs::create_dir_all(&lock_dir).map_err(|source| LoaderError::PinDir {
        path: lock_dir.clone(),
        source,
    })?;
    let file = std::fs::File::open(&lock_dir).map_err(|source| LoaderError::PinDir {
        path: lock_dir.clone(),
        source,
    })?;
    // SAFETY: flock on a file descriptor we own.
    let rc = unsafe {
        libc::flock(
            std::os::fd::AsRawFd::as_raw_fd(&file),
            libc::LOCK_EX | libc::LOCK_NB,
        )
    };
    if rc != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(LoaderError::Busy {
                iface: iface.to_string(),
                dir: lock_dir,
            });
        }
        return Err(LoaderError::PinDir {
            path: lock_dir,
            source: err,
        });
    }
    // Only now, under the lock: the pin directory.
    let created = !dir.exists();
    std::fs::create_dir_all(&dir).map_err(|source| LoaderError::PinDir {
        path: dir.clone(),
        source,
    })?;
    Ok((file, created))
}

/// Whether shield's program is attached to `iface` through the pins under `bpffs`: the link
/// is pinned (a clean stop and `shield detach` remove the pin; a crash leaves it, and the
/// program stays attached) and still holds its interface.
pub fn is_attached(bpffs: &Path, iface: &str) -> bool {
    check_iface(iface).is_ok() && link_attached(&pin_dir(bpffs, iface).join(LINK_PIN))
}

/// The program's aya-log level (`AYA_LOG_LEVEL`: 0 off, 1 error … 5 trace) for a
/// `--log-level` name.
pub fn program_log_level(level: &str) -> u8 {
    match level {
        "error" => 1,
        "warn" => 2,
        "info" => 3,
        "debug" => 4,
        "trace" => 5,
        _ => 0,
    }
}

/// Loads the program with its maps pinned under `pin_dir` and its log at `warn` (see
/// `load_with_log_level`).
/// How many times a program load is tried while the verifier is interrupted (as libbpf).
const LOAD_ATTEMPTS: u32 = 5;

/// Loads `program`, again when the kernel's verifier gave up because a signal came in
/// (`EAGAIN`: a SIGHUP or SIGTERM during the start, a child's SIGCHLD where it is handled),
/// up to `LOAD_ATTEMPTS` times, as libbpf does; the verifier's verdict does not depend on it.
fn load_program(program: &mut Xdp) -> Result<(), ProgramError> {
    let mut attempt = 1;
    loop {
        match program.load() {
            Err(ProgramError::LoadError { io_error, .. })
                if io_error.kind() == std::io::ErrorKind::WouldBlock && attempt < LOAD_ATTEMPTS =>
            {
                attempt += 1;
            }
            other => return other,
        }
    }
}

pub fn load(pin_dir: &Path, max_sources: u32) -> Result<Ebpf, LoaderError> {
    load_with_log_level(pin_dir, max_sources, program_log_level("warn"))
}

/// Loads the program with its maps pinned under `pin_dir`. Maps already pinned there are
/// adopted (counters and limiter state survive a restart), except a source table of
/// another capacity, and a sketch, source-table filter or lists' summary of another size,
/// which are replaced (an upgrade from a narrower sketch starts the new one empty; the
/// filter and the summary are rebuilt).
/// `log_level` (`program_log_level`) is written into the object before load: the data
/// path skips disabled log statements for the cost of one global read.
pub fn load_with_log_level(
    pin_dir: &Path,
    max_sources: u32,
    log_level: u8,
) -> Result<Ebpf, LoaderError> {
    load_with_tables(pin_dir, max_sources, log_level).map(|(ebpf, _)| ebpf)
}

/// `load_with_log_level`, also handing back the policy tables it opened to summarise the
/// lists: they know what each list half holds, so the daemon's first `install` does not
/// list the tries a second time.
pub fn load_with_tables(
    pin_dir: &Path,
    max_sources: u32,
    log_level: u8,
) -> Result<(Ebpf, PolicyMaps), LoaderError> {
    std::fs::create_dir_all(pin_dir).map_err(|source| LoaderError::PinDir {
        path: pin_dir.to_path_buf(),
        source,
    })?;
    // Tables whose size this build sets and whose contents may be lost: one of another
    // size (or, for the sketch, other flags) is replaced.
    for (map, entries, flags) in [
        (MAP_SOURCES, max_sources, None),
        (
            shield_common::MAP_SKETCH,
            shield_common::sketch::SKETCH_CELLS,
            Some(shield_common::SKETCH_MAP_FLAGS),
        ),
        // Its contents are rebuilt from the verified set (`vfilter_adopt`).
        (
            shield_common::MAP_VFILTER,
            shield_common::VFILTER_WORDS,
            Some(shield_common::VFILTER_MAP_FLAGS),
        ),
        // Its contents are rebuilt from the source table (`sfilter_adopt`).
        (
            shield_common::MAP_SFILTER,
            2 * shield_common::SFILTER_WORDS,
            Some(shield_common::SFILTER_MAP_FLAGS),
        ),
        // Its contents are rebuilt from the list tries (`rebuild_summaries`).
        (MAP_LIST_SUMMARY, shield_common::LSUM_WORDS, Some(0)),
    ] {
        let pin = pin_dir.join(map);
        if let Ok(old) = MapData::from_pin(&pin) {
            let same = old.info().is_ok_and(|i| {
                i.max_entries() == entries && flags.is_none_or(|f| i.map_flags() == f)
            });
            if !same {
                std::fs::remove_file(&pin).map_err(|source| LoaderError::PinDir {
                    path: pin.clone(),
                    source,
                })?;
            }
        }
    }
    // The type and entries each map has in the object (the source table's entries:
    // `max_sources`). A pin of another type or size is no table of this version either:
    // adopted, its writes would fail on a reload part-way (a list trie too small for the
    // new lists), the program's lookups past its end would find nothing, or a hash would
    // stand for a trie (the program loads all the same).
    let defs = aya_obj::Object::parse(crate::EBPF_OBJECT)
        .map(|o| o.maps)
        .unwrap_or_default();
    for (map, key, value) in shield_common::MAP_LAYOUTS {
        let Ok(info) = MapData::from_pin(pin_dir.join(map)).and_then(|m| m.info()) else {
            continue;
        };
        let def = defs.get(map);
        let entries = match map {
            MAP_SOURCES => max_sources,
            _ => def.map_or(info.max_entries(), |d| d.max_entries()),
        };
        let found_type = info.map_type().ok();
        let map_type = def
            .and_then(|d| aya_obj::generated::bpf_map_type::try_from(d.map_type()).ok())
            .and_then(|t| aya::maps::MapType::try_from(t).ok())
            .or(found_type);
        if (info.key_size() as usize, info.value_size() as usize) != (key, value)
            || info.max_entries() != entries
            || found_type != map_type
        {
            return Err(LoaderError::Incompatible {
                map,
                dir: pin_dir.to_path_buf(),
                found_type,
                map_type,
                found_key: info.key_size(),
                found_value: info.value_size(),
                found_entries: info.max_entries(),
                key,
                value,
                entries,
            });
        }
    }
    let mut loader = EbpfLoader::new();
    loader.map_max_entries(MAP_SOURCES, max_sources);
    loader.override_global(aya_log::LEVEL, &log_level, true);
    let paths: Vec<(&str, PathBuf)> = ALL_MAPS.iter().map(|m| (*m, pin_dir.join(m))).collect();
    for (name, path) in &paths {
        loader.map_pin_path(name, path.as_path());
    }
    let mut ebpf = loader.load(crate::EBPF_OBJECT)?;
    let program: &mut Xdp = ebpf
        .program_mut(PROGRAM_NAME)
        .ok_or(LoaderError::Missing("program"))?
        .try_into()?;
    load_program(program)?;
    // `over_limit = "reset"`: the RST program, reached by a tail call from the judgement.
    let reset: &mut Xdp = ebpf
        .program_mut(shield_common::RESET_PROGRAM_NAME)
        .ok_or(LoaderError::Missing("reset program"))?
        .try_into()?;
    load_program(reset)?;
    let fd = reset.fd()?.try_clone().map_err(ProgramError::from)?;
    let tails = ebpf
        .map_mut(shield_common::MAP_TAILS)
        .ok_or(LoaderError::Missing("program array"))?;
    aya::maps::ProgramArray::try_from(tails)
        .and_then(|mut t| t.set(0, &fd, 0))
        .map_err(map_err(shield_common::MAP_TAILS))?;
    // An adopted verified set: its keys' bits set before the program runs, so that no
    // source in it is taken for unverified (a set left by a version without the filter,
    // a filter this load replaced).
    vfilter_adopt(pin_dir)?;
    // The bans adopted from the pins, counted before the program can skip their lookups.
    ban_counts_adopt(pin_dir)?;
    // Likewise the source table's keys: their filter bits set before the program can skip
    // their lookups.
    sfilter_adopt(pin_dir)?;
    // And the lists' summaries, written from the tries before the program can trust them.
    let mut tables = PolicyMaps::open(pin_dir)?;
    // Pinned by this load: a summary that cannot be opened now must not be left stale by
    // the list writes of the tables handed back.
    tables.require_summary(pin_dir)?;
    tables.rebuild_summaries()?;
    Ok((ebpf, tables))
}

/// `--fresh`: removes the pinned maps (not the link, which the new program takes over).
pub fn remove_map_pins(pin_dir: &Path) -> Result<(), LoaderError> {
    for name in ALL_MAPS {
        let p = pin_dir.join(name);
        if p.exists() {
            std::fs::remove_file(&p).map_err(|source| LoaderError::PinDir { path: p, source })?;
        }
    }
    Ok(())
}

/// Opens a pinned map of `pin_dir` (for `shield stats` without the daemon).
/// A random non-zero u64 from the standard library's OS-seeded hasher keys.
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id().into());
    h.finish() | 1
}

pub fn open_pinned(pin_dir: &Path, name: &'static str) -> Result<Map, LoaderError> {
    let data = MapData::from_pin(pin_dir.join(name)).map_err(map_err(name))?;
    Map::from_map_data(data).map_err(map_err(name))
}

/// The clock the data path uses: CLOCK_MONOTONIC_COARSE (`bpf_ktime_get_coarse_ns`).
pub fn mono_coarse_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A rule's name as stored in its map slot.
pub fn rule_name(cfg: &RuleConfig) -> String {
    let end = cfg
        .name
        .iter()
        .position(|b| *b == 0)
        .unwrap_or(cfg.name.len());
    String::from_utf8_lossy(&cfg.name[..end]).into_owned()
}

#[cfg(test)]
mod dir_tests {
    use super::{first_missing_dir, remove_created_dirs};

    #[test]
    fn a_failed_start_removes_the_bpffs_directories_it_created_and_nothing_else() {
        let base = std::env::temp_dir().join(format!("shield-mkbpffs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(base.join("kept")).expect("mkdir");
        std::fs::write(base.join("kept/file"), "x").expect("file");
        assert_eq!(first_missing_dir(&base), None, "an existing directory");
        let deep = base.join("new/a/b");
        let top = first_missing_dir(&deep).expect("missing");
        assert_eq!(top, base.join("new"));
        std::fs::create_dir_all(&deep).expect("mkdir");
        remove_created_dirs(&deep, &top);
        assert!(
            !base.join("new").exists(),
            "every directory created is gone"
        );
        assert!(base.exists(), "the parent that existed stays");
        // A directory that is not empty (something else was put there) stays.
        let other = base.join("kept/sub");
        let top = first_missing_dir(&other).expect("missing");
        std::fs::create_dir_all(&other).expect("mkdir");
        std::fs::write(other.join("theirs"), "x").expect("file");
        remove_created_dirs(&other, &top);
        assert!(other.join("theirs").exists());
        std::fs::remove_dir_all(&base).expect("cleanup");
    }
}
