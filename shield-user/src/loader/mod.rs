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
    MAP_ALLOW_V4, MAP_ALLOW_V6, MAP_CONFIG, MAP_CONTROL, MAP_DENY_V4, MAP_DENY_V6, MAP_PORTS,
    MAP_RULES, MAP_SOURCES, PORT_TABLE_LEN, PROGRAM_NAME, RULE_PRESENT, RULE_SLOTS, RULE_SYNCOOKIE,
    RULE_SYNCOOKIE_TS, RuleConfig,
};

use crate::policy::CompiledPolicy;

mod ban_count;
mod detach;
mod vfilter;

pub use ban_count::ban_counts_adopt;
pub use detach::{Detached, detach_pinned};
pub use vfilter::{vfilter_add, vfilter_adopt, vfilter_rebuild};

/// Where bpffs is normally mounted.
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf";
/// `statfs` magic of bpffs (include/uapi/linux/magic.h).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error(
        "shield must run as root (it needs CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN to load and attach XDP programs); try: sudo shield …"
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
    #[error("map {map}: {source}")]
    Map { map: &'static str, source: MapError },
    #[error(
        "the map {map} pinned in {dir} was created by another shield version (key {found_key} B, value {found_value} B; this version needs {key} B and {value} B). Start once with `shield run --fresh` (drops its counters, limiter state and bans), or remove the interface's pins with `shield detach IFACE`"
    )]
    Incompatible {
        map: &'static str,
        dir: PathBuf,
        found_key: u32,
        found_value: u32,
        key: usize,
        value: usize,
    },
    #[error("XDP program: {0}")]
    Program(#[from] ProgramError),
    #[error("XDP link: {0}")]
    Link(#[from] LinkError),
    #[error(
        "another XDP program is already attached to `{iface}`; remove it first (`ip link set dev {iface} xdp off`, or `shield detach {iface}` if it is a shield)"
    )]
    AlreadyAttached { iface: String },
    #[error("cannot attach to `{iface}` in {mode} mode: {source}")]
    Attach {
        iface: String,
        mode: &'static str,
        source: ProgramError,
    },
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
pub fn load(pin_dir: &Path, max_sources: u32) -> Result<Ebpf, LoaderError> {
    load_with_log_level(pin_dir, max_sources, program_log_level("warn"))
}

/// Loads the program with its maps pinned under `pin_dir`. Maps already pinned there are
/// adopted (counters and limiter state survive a restart), except a source table of
/// another capacity, which is replaced. `log_level` (`program_log_level`) is written into
/// the object before load: the data path skips disabled log statements for the cost of
/// one global read.
pub fn load_with_log_level(
    pin_dir: &Path,
    max_sources: u32,
    log_level: u8,
) -> Result<Ebpf, LoaderError> {
    std::fs::create_dir_all(pin_dir).map_err(|source| LoaderError::PinDir {
        path: pin_dir.to_path_buf(),
        source,
    })?;
    let sources_pin = pin_dir.join(MAP_SOURCES);
    if let Ok(old) = MapData::from_pin(&sources_pin) {
        let same = old.info().is_ok_and(|i| i.max_entries() == max_sources);
        if !same {
            std::fs::remove_file(&sources_pin).map_err(|source| LoaderError::PinDir {
                path: sources_pin.clone(),
                source,
            })?;
        }
    }
    for (map, key, value) in shield_common::MAP_LAYOUTS {
        let Ok(info) = MapData::from_pin(pin_dir.join(map)).and_then(|m| m.info()) else {
            continue;
        };
        if (info.key_size() as usize, info.value_size() as usize) != (key, value) {
            return Err(LoaderError::Incompatible {
                map,
                dir: pin_dir.to_path_buf(),
                found_key: info.key_size(),
                found_value: info.value_size(),
                key,
                value,
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
    program.load()?;
    // `over_limit = "reset"`: the RST program, reached by a tail call from the judgement.
    let reset: &mut Xdp = ebpf
        .program_mut(shield_common::RESET_PROGRAM_NAME)
        .ok_or(LoaderError::Missing("reset program"))?
        .try_into()?;
    reset.load()?;
    let fd = reset.fd()?.try_clone().map_err(ProgramError::from)?;
    let tails = ebpf
        .map_mut(shield_common::MAP_TAILS)
        .ok_or(LoaderError::Missing("program array"))?;
    aya::maps::ProgramArray::try_from(tails)
        .and_then(|mut t| t.set(0, &fd, 0))
        .map_err(map_err(shield_common::MAP_TAILS))?;
    // An adopted verified set: its keys' bits set before the program runs, so that no
    // source in it is taken for unverified (a set left by a version without the filter,
    // bits lost to a rebuild racing the data path, a daemon stopped mid-rebuild).
    vfilter_adopt(pin_dir)?;
    // The bans adopted from the pins, counted before the program can skip their lookups.
    ban_counts_adopt(pin_dir)?;
    Ok(ebpf)
}

/// The policy tables of one interface, opened from their pins. `install` writes a compiled
/// policy into the inactive half and then flips the active half with one aligned 4-byte
/// write: a packet is judged wholly by the old policy or wholly by the new one, and a
/// failure before the flip leaves the old policy fully in force.
pub struct PolicyMaps {
    control: Array<MapData, Control>,
    config: Array<MapData, GlobalConfig>,
    ports: Array<MapData, u32>,
    rules: Array<MapData, RuleConfig>,
    allow4: LpmTrie<MapData, [u8; LIST_KEY_V4], ListValue>,
    allow6: LpmTrie<MapData, [u8; LIST_KEY_V6], ListValue>,
    deny4: LpmTrie<MapData, [u8; LIST_KEY_V4], ListValue>,
    deny6: LpmTrie<MapData, [u8; LIST_KEY_V6], ListValue>,
    /// What each half's port table holds, when known (lets a reload write only changes).
    ports_cache: [Option<Vec<u32>>; 2],
    /// The lists each list half holds, when known.
    lists_cache: [Option<Lists>; 2],
    /// Sketch hash seed: kept from the policy in force (a restart keeps the sketch
    /// meaningful), else random.
    sketch_seed: u64,
    /// While set, an install that swaps the lists leaves the old list half as it was
    /// (`stale_lists`), so `restore_half` can still go back to the old policy whole; a
    /// daemon sets it for its start and calls `settle` once the start succeeded.
    pub keep_old_lists: bool,
    stale_lists: Option<u8>,
    /// Whether `syncookie` rules' cookie SYN-ACKs offer timestamps (`RULE_SYNCOOKIE_TS`):
    /// `synproxy::timestamps_work()` when opened.
    pub syncookie_timestamps: bool,
}

/// A policy's four lists, as compiled.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lists {
    pub allow_v4: Vec<([u8; 4], u8)>,
    pub allow_v6: Vec<([u8; 16], u8)>,
    pub deny_v4: Vec<([u8; 4], u8)>,
    pub deny_v6: Vec<([u8; 16], u8)>,
}

impl Lists {
    fn of(p: &CompiledPolicy) -> Lists {
        Lists {
            allow_v4: p.allow_v4.clone(),
            allow_v6: p.allow_v6.clone(),
            deny_v4: p.deny_v4.clone(),
            deny_v6: p.deny_v6.clone(),
        }
    }
    fn sorted(mut self) -> Lists {
        self.allow_v4.sort_unstable();
        self.allow_v6.sort_unstable();
        self.deny_v4.sort_unstable();
        self.deny_v6.sort_unstable();
        self
    }
}

/// What an `install` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Installed {
    pub half: u32,
    pub generation: u32,
    /// Port-table slots written (all of them on a first install).
    pub ports_written: usize,
    /// The lists changed and were written into the other list half.
    pub lists_swapped: bool,
}

fn typed<T: TryFrom<Map, Error = MapError>>(
    pin_dir: &Path,
    name: &'static str,
) -> Result<T, LoaderError> {
    T::try_from(open_pinned(pin_dir, name)?).map_err(map_err(name))
}

impl PolicyMaps {
    pub fn open(pin_dir: &Path) -> Result<PolicyMaps, LoaderError> {
        let mut maps = PolicyMaps {
            control: typed(pin_dir, MAP_CONTROL)?,
            config: typed(pin_dir, MAP_CONFIG)?,
            ports: typed(pin_dir, MAP_PORTS)?,
            rules: typed(pin_dir, MAP_RULES)?,
            allow4: typed(pin_dir, MAP_ALLOW_V4)?,
            allow6: typed(pin_dir, MAP_ALLOW_V6)?,
            deny4: typed(pin_dir, MAP_DENY_V4)?,
            deny6: typed(pin_dir, MAP_DENY_V6)?,
            ports_cache: [None, None],
            lists_cache: [None, None],
            sketch_seed: 0,
            keep_old_lists: false,
            stale_lists: None,
            syncookie_timestamps: crate::synproxy::timestamps_work(),
        };
        maps.sketch_seed = match maps.active() {
            Ok((_, cfg)) if cfg.sketch_seed != 0 => cfg.sketch_seed,
            _ => random_seed(),
        };
        Ok(maps)
    }

    pub fn control(&self) -> Result<Control, LoaderError> {
        self.control.get(&0, 0).map_err(map_err(MAP_CONTROL))
    }

    /// The half in force and its config.
    pub fn active(&self) -> Result<(u32, GlobalConfig), LoaderError> {
        let half = self.control()?.active & 1;
        Ok((
            half,
            self.config.get(&half, 0).map_err(map_err(MAP_CONFIG))?,
        ))
    }

    /// Rules of the policy in force: (id, config), for stable ids across reloads/restarts.
    pub fn current_rules(&self) -> Result<Vec<(u32, RuleConfig)>, LoaderError> {
        let (half, cfg) = self.active()?;
        if cfg.flags & CFG_LOADED == 0 {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for id in 1..RULE_SLOTS {
            let r = self
                .rules
                .get(&(half * RULE_SLOTS + id), 0)
                .map_err(map_err(MAP_RULES))?;
            if r.flags & RULE_PRESENT != 0 {
                out.push((id, r));
            }
        }
        Ok(out)
    }

    /// Stops the data path's clock at `now_ns` (tests only: the differential fuzzer; see
    /// `Control::clock_frozen`). `advance_clock` then moves it.
    pub fn freeze_clock(&mut self, now_ns: u64) -> Result<(), LoaderError> {
        let mut c = self.control()?;
        c.clock_frozen = 1;
        c.clock_offset_ns = now_ns;
        self.control.set(0, c, 0).map_err(map_err(MAP_CONTROL))
    }

    /// Moves the data path's clock (tests only; see `Control::clock_offset_ns`).
    pub fn advance_clock(&mut self, by_ns: u64) -> Result<(), LoaderError> {
        let mut c = self.control()?;
        c.clock_offset_ns = c.clock_offset_ns.wrapping_add(by_ns);
        self.control.set(0, c, 0).map_err(map_err(MAP_CONTROL))
    }

    /// Empties a list half no config points at any more.
    fn empty_list_half(&mut self, half: u8) -> Result<(), LoaderError> {
        // Packets that read the old half finish within microseconds; then the old list
        // half is emptied so a later swap starts clean.
        std::thread::sleep(std::time::Duration::from_millis(10));
        self.write_lists(half, &Lists::default())?;
        self.lists_cache[half as usize] = Some(Lists::default());
        Ok(())
    }

    /// After a successful start: stop keeping the old lists, and empty them.
    pub fn settle(&mut self) -> Result<(), LoaderError> {
        self.keep_old_lists = false;
        match self.stale_lists.take() {
            Some(half) => self.empty_list_half(half),
            None => Ok(()),
        }
    }

    /// Makes `half` the half in force again (undoing an `install` whose lists did not swap:
    /// the old half is then intact).
    pub fn restore_half(&mut self, half: u32) -> Result<(), LoaderError> {
        let mut ctl = self.control()?;
        ctl.active = half & 1;
        self.control.set(0, ctl, 0).map_err(map_err(MAP_CONTROL))
    }

    /// Sets or clears CFG_BANS in the config in force.
    pub fn set_flag(&mut self, flag: u32, on: bool) -> Result<(), LoaderError> {
        let (half, mut cfg) = self.active()?;
        let want = if on {
            cfg.flags | flag
        } else {
            cfg.flags & !flag
        };
        if want != cfg.flags {
            cfg.flags = want;
            self.config.set(half, cfg, 0).map_err(map_err(MAP_CONFIG))?;
        }
        Ok(())
    }

    /// Installs `policy` as generation `generation`: fills the inactive half, then flips.
    /// `extra_flags` are OR-ed into the new config (the daemon passes CFG_BANS while bans
    /// exist).
    pub fn install(
        &mut self,
        policy: &CompiledPolicy,
        generation: u32,
        extra_flags: u32,
    ) -> Result<Installed, LoaderError> {
        let (active, active_cfg) = self.active()?;
        let loaded = active_cfg.flags & CFG_LOADED != 0;
        let half = if loaded { 1 - active } else { active };

        // Rules: 256 slots, always written in full.
        for (id, r) in policy.rules.iter().enumerate() {
            let mut r = *r;
            if self.syncookie_timestamps && r.flags & RULE_SYNCOOKIE != 0 {
                r.flags |= RULE_SYNCOOKIE_TS;
            }
            self.rules
                .set(half * RULE_SLOTS + id as u32, r, 0)
                .map_err(map_err(MAP_RULES))?;
        }
        // Ports: only what differs from what this half is known to hold.
        let base = half * PORT_TABLE_LEN;
        let known = self.ports_cache[half as usize].take();
        let mut written = 0;
        for (i, id) in policy.ports.iter().enumerate() {
            if known.as_ref().is_some_and(|k| k[i] == *id) {
                continue;
            }
            self.ports
                .set(base + i as u32, id, 0)
                .map_err(map_err(MAP_PORTS))?;
            written += 1;
        }
        self.ports_cache[half as usize] = Some(policy.ports.clone());

        // Lists: unchanged lists stay in their half; changed ones go to the other half.
        let want = Lists::of(policy).sorted();
        let current_half = if loaded { active_cfg.list_half & 1 } else { 0 };
        let current = match self.lists_cache[current_half as usize].clone() {
            Some(l) => l,
            None => self.read_lists(current_half as u8)?,
        };
        let (list_half, swapped) = if loaded && current == want {
            (current_half, false)
        } else {
            let target = if loaded {
                1 - current_half
            } else {
                current_half
            };
            self.write_lists(target as u8, &want)?;
            self.lists_cache[target as usize] = Some(want);
            (target, loaded)
        };
        if current_half != list_half || !loaded {
            self.lists_cache[current_half as usize] = Some(current);
        }

        let cfg = GlobalConfig {
            flags: policy.global.flags | extra_flags,
            generation,
            list_half,
            sketch_seed: self.sketch_seed,
            ..policy.global
        };
        self.config.set(half, cfg, 0).map_err(map_err(MAP_CONFIG))?;
        // The switch: one aligned u32 in the control value.
        let mut ctl = self.control()?;
        ctl.active = half;
        self.control.set(0, ctl, 0).map_err(map_err(MAP_CONTROL))?;

        if swapped && self.keep_old_lists {
            self.stale_lists = Some(current_half as u8);
        } else if swapped {
            self.empty_list_half(current_half as u8)?;
        }
        Ok(Installed {
            half,
            generation,
            ports_written: written,
            lists_swapped: swapped,
        })
    }

    fn read_lists(&self, half: u8) -> Result<Lists, LoaderError> {
        fn read<const N: usize, const A: usize>(
            t: &LpmTrie<MapData, [u8; N], ListValue>,
            half: u8,
            name: &'static str,
        ) -> Result<Vec<([u8; A], u8)>, LoaderError> {
            let mut out = Vec::new();
            for k in t.keys() {
                let k = k.map_err(map_err(name))?;
                let d = k.data();
                if d[0] == half {
                    let mut a = [0u8; A];
                    a.copy_from_slice(&d[1..]);
                    out.push((a, (k.prefix_len() - 8) as u8));
                }
            }
            Ok(out)
        }
        Ok(Lists {
            allow_v4: read(&self.allow4, half, MAP_ALLOW_V4)?,
            allow_v6: read(&self.allow6, half, MAP_ALLOW_V6)?,
            deny_v4: read(&self.deny4, half, MAP_DENY_V4)?,
            deny_v6: read(&self.deny6, half, MAP_DENY_V6)?,
        }
        .sorted())
    }

    /// Makes list half `half` hold exactly `want`.
    fn write_lists(&mut self, half: u8, want: &Lists) -> Result<(), LoaderError> {
        fn write<const N: usize, const A: usize>(
            t: &mut LpmTrie<MapData, [u8; N], ListValue>,
            half: u8,
            want: &[([u8; A], u8)],
            name: &'static str,
        ) -> Result<(), LoaderError>
        where
            [u8; N]: Pod,
        {
            let key = |a: &[u8; A], len: u8| {
                let mut d = [0u8; N];
                d[0] = half;
                d[1..].copy_from_slice(a);
                Key::new(u32::from(len) + 8, d)
            };
            let want_set: HashSet<([u8; A], u8)> = want.iter().copied().collect();
            let mut stale = Vec::new();
            for k in t.keys() {
                let k = k.map_err(map_err(name))?;
                let d = k.data();
                if d[0] != half {
                    continue;
                }
                let mut a = [0u8; A];
                a.copy_from_slice(&d[1..]);
                if !want_set.contains(&(a, (k.prefix_len() - 8) as u8)) {
                    stale.push(k);
                }
            }
            for k in stale {
                t.remove(&k).map_err(map_err(name))?;
            }
            for (a, len) in want {
                t.insert(&key(a, *len), 1, 0).map_err(map_err(name))?;
            }
            Ok(())
        }
        write(&mut self.allow4, half, &want.allow_v4, MAP_ALLOW_V4)?;
        write(&mut self.allow6, half, &want.allow_v6, MAP_ALLOW_V6)?;
        write(&mut self.deny4, half, &want.deny_v4, MAP_DENY_V4)?;
        write(&mut self.deny6, half, &want.deny_v6, MAP_DENY_V6)?;
        Ok(())
    }
}

/// How to attach.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    /// Native (driver) XDP, else generic with a warning.
    Auto,
    /// Native (driver) XDP only.
    Native,
    /// Generic (skb) XDP: works everywhere, slower.
    Generic,
}

/// What `attach` ended up doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attached {
    Native,
    Generic,
    /// A link pinned by an earlier run (still protecting the interface) now runs this
    /// program: swapped atomically with `bpf_link_update`, no gap.
    Adopted,
}

impl Attached {
    pub const fn name(self) -> &'static str {
        match self {
            Attached::Native => "native",
            Attached::Generic => "generic",
            Attached::Adopted => "adopted",
        }
    }
}

/// bpf_link_create answers EBUSY when a program (netlink or link) is attached already; the
/// netlink fallback answers EEXIST or EBUSY.
fn is_busy(e: &ProgramError) -> bool {
    let errno = match e {
        ProgramError::SyscallError(s) => s.io_error.raw_os_error(),
        ProgramError::XdpError(aya::programs::XdpError::NetlinkError(n)) => n.raw_os_error(),
        _ => None,
    };
    matches!(errno, Some(libc::EBUSY) | Some(libc::EEXIST))
}

/// Tries to take over the link an earlier run pinned in `pin_dir`. A stale pin (its
/// interface gone) is removed.
fn adopt(program: &mut Xdp, link_pin: &Path) -> Option<FdLink> {
    let pinned = PinnedLink::from_pin(link_pin).ok();
    let adopted = pinned.and_then(|p| {
        let xdp = XdpLink::try_from(FdLink::from(p)).ok()?;
        let id = program.attach_to_link(xdp).ok()?;
        FdLink::try_from(program.take_link(id).ok()?).ok()
    });
    if adopted.is_none() {
        let _ = std::fs::remove_file(link_pin);
    }
    adopted
}

/// Attaches the program to `iface` through a bpf link pinned at `<pin_dir>/link`, so the
/// protection outlives the daemon (crash, `kill -9`, upgrade). If an earlier run left its
/// link pinned, this program takes it over instead. In `Auto`, native first, then generic.
/// The ban counts are set again once attached (`ban_counts_adopt`): call it when no
/// `BanMaps` of `pin_dir` changes bans.
pub fn attach(
    ebpf: &mut Ebpf,
    iface: &str,
    mode: AttachMode,
    pin_dir: &Path,
) -> Result<(FdLink, Attached), LoaderError> {
    if_index(iface)?;
    let program: &mut Xdp = ebpf
        .program_mut(PROGRAM_NAME)
        .ok_or(LoaderError::Missing("program"))?
        .try_into()?;
    let link_pin = pin_dir.join(LINK_PIN);
    if let Some(f) = pinned_link_facts(&link_pin)
        && f.kind == LINK_TYPE_XDP
        && f.ifindex != 0
    {
        let want = if_index(iface)?;
        if f.ifindex != want {
            return Err(LoaderError::ForeignLink {
                iface: iface.to_string(),
                dir: pin_dir.to_path_buf(),
                found: f.ifindex,
                want,
            });
        }
    }
    if link_pin.exists()
        && let Some(link) = adopt(program, &link_pin)
    {
        // Counted again now that the earlier program no longer runs (see below).
        ban_counts_adopt(pin_dir)?;
        return Ok((link, Attached::Adopted));
    }
    let try_mode = |program: &mut Xdp, m: XdpMode, name: &'static str| {
        program.attach(iface, m).map_err(|source| {
            if is_busy(&source) {
                LoaderError::AlreadyAttached {
                    iface: iface.to_string(),
                }
            } else {
                LoaderError::Attach {
                    iface: iface.to_string(),
                    mode: name,
                    source,
                }
            }
        })
    };
    let (id, attached) = match mode {
        AttachMode::Native => (
            try_mode(program, XdpMode::Driver, "native")?,
            Attached::Native,
        ),
        AttachMode::Generic => (
            try_mode(program, XdpMode::Skb, "generic")?,
            Attached::Generic,
        ),
        AttachMode::Auto => match try_mode(program, XdpMode::Driver, "native") {
            Ok(id) => (id, Attached::Native),
            Err(e @ LoaderError::AlreadyAttached { .. }) => return Err(e),
            Err(_) => (
                try_mode(program, XdpMode::Skb, "generic")?,
                Attached::Generic,
            ),
        },
    };
    let link = FdLink::try_from(program.take_link(id)?)?;
    let pinned = link.pin(&link_pin).map_err(|e| LoaderError::PinDir {
        path: link_pin.clone(),
        source: io::Error::other(e.to_string()),
    })?;
    // An earlier program left attached (an older version's, without the count map) bans
    // uncounted between the load's count and this attach: count again now that this
    // program runs in its place. (Nothing else writes user space's counts during a start.)
    ban_counts_adopt(pin_dir)?;
    Ok((FdLink::from(pinned), attached))
}

/// BPF_OBJ_GET: a new fd for the object pinned at `pin` (aya opens no pinned links by fd).
fn obj_get(pin: &Path) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd as _;
    const BPF_OBJ_GET: libc::c_long = 7;
    let path = CString::new(pin.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut attr = [0u64; 8];
    attr[0] = path.as_ptr() as u64;
    // SAFETY: a zeroed bpf_attr with obj_get.pathname set to a live C string.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_GET, attr.as_mut_ptr(), 64u32) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: BPF_OBJ_GET returned a new fd that nothing else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// What the kernel says of a bpf link (`struct bpf_link_info`, XDP part).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkFacts {
    /// `BPF_LINK_TYPE_*` (6: XDP).
    pub kind: u32,
    pub id: u32,
    pub prog_id: u32,
    /// The interface an XDP link holds; 0 once detached (BPF_LINK_DETACH) or the interface
    /// is gone.
    pub ifindex: u32,
}

/// `BPF_LINK_TYPE_XDP`.
pub const LINK_TYPE_XDP: u32 = 6;

fn link_facts_fd(fd: std::os::fd::BorrowedFd<'_>) -> Option<LinkFacts> {
    use std::os::fd::AsRawFd as _;
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    // struct bpf_link_info: type, id, prog_id, then (8-aligned) the union: xdp.ifindex.
    let mut info = [0u32; 16];
    let mut attr = [0u64; 8];
    attr[0] = (fd.as_raw_fd() as u64) | ((std::mem::size_of_val(&info) as u64) << 32);
    attr[1] = info.as_mut_ptr() as u64;
    // SAFETY: a zeroed bpf_attr with info.bpf_fd, info_len and info pointing at a buffer of
    // info_len bytes that lives across the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            attr.as_mut_ptr(),
            64u32,
        )
    };
    (rc == 0).then_some(LinkFacts {
        kind: info[0],
        id: info[1],
        prog_id: info[2],
        ifindex: info[4],
    })
}

/// What the link pinned at `link_pin` is (None: no pin, or not a link).
pub fn pinned_link_facts(link_pin: &Path) -> Option<LinkFacts> {
    use std::os::fd::AsFd as _;
    let fd = obj_get(link_pin).ok()?;
    link_facts_fd(fd.as_fd())
}

/// What link `id` is now (BPF_LINK_GET_FD_BY_ID): a daemon follows its own link this way,
/// whatever happens to the pin.
pub fn link_facts_by_id(id: u32) -> Option<LinkFacts> {
    use std::os::fd::{AsFd as _, FromRawFd as _};
    const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;
    let mut attr = [0u64; 8];
    attr[0] = u64::from(id);
    // SAFETY: a zeroed bpf_attr with link_id set.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_GET_FD_BY_ID,
            attr.as_mut_ptr(),
            64u32,
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: a new fd the kernel just gave us.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
    link_facts_fd(fd.as_fd())
}

/// Whether the XDP link pinned at `link_pin` still holds an interface. Works from any
/// network namespace, unlike a name lookup.
pub fn link_attached(link_pin: &Path) -> bool {
    pinned_link_facts(link_pin).is_some_and(|f| f.kind == LINK_TYPE_XDP && f.ifindex != 0)
}

/// BPF_LINK_DETACH (Linux 5.9): detaches the link no matter who else holds it (aya
/// exposes no such call).
fn force_detach(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<()> {
    use std::os::fd::AsRawFd as _;
    const BPF_LINK_DETACH: libc::c_long = 34;
    let mut attr = [0u64; 8];
    attr[0] = fd.as_raw_fd() as u64 & 0xffff_ffff;
    // SAFETY: a zeroed bpf_attr with link_detach.link_fd set.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_LINK_DETACH, attr.as_mut_ptr(), 64u32) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Suffix of map pins a `--fresh` start set aside until it succeeds (bpffs refuses `.`).
pub const ASIDE_SUFFIX: &str = ":previous";

/// Every pin name shield may leave in a pin directory (for `detach`).
fn shield_pin_names() -> Vec<String> {
    let mut names: Vec<String> = ALL_MAPS
        .iter()
        .chain([&shield_common::MAP_BAN_NOTES])
        .flat_map(|n| [n.to_string(), format!("{n}{ASIDE_SUFFIX}")])
        .collect();
    names.push(LINK_PIN.to_string());
    names
}

/// `--fresh`, first step: renames the map pins aside (`NAME.previous`), so the new maps
/// start empty while a failed start can still put the old ones back. Returns whether
/// anything was set aside.
pub fn set_aside_map_pins(pin_dir: &Path) -> Result<bool, LoaderError> {
    let mut any = false;
    for name in ALL_MAPS.iter().chain([&shield_common::MAP_BAN_NOTES]) {
        let from = pin_dir.join(name);
        if std::fs::symlink_metadata(&from).is_ok() {
            let to = pin_dir.join(format!("{name}{ASIDE_SUFFIX}"));
            std::fs::rename(&from, &to)
                .map_err(|source| LoaderError::PinDir { path: from, source })?;
            any = true;
        }
    }
    Ok(any)
}

/// A failed `--fresh` start: the new map pins go, the old ones come back.
pub fn restore_aside_map_pins(pin_dir: &Path) {
    for name in ALL_MAPS.iter().chain([&shield_common::MAP_BAN_NOTES]) {
        let aside = pin_dir.join(format!("{name}{ASIDE_SUFFIX}"));
        if std::fs::symlink_metadata(&aside).is_ok() {
            let _ = std::fs::remove_file(pin_dir.join(name));
            let _ = std::fs::rename(&aside, pin_dir.join(name));
        }
    }
}

/// A successful `--fresh` start: the old map pins are dropped for good.
pub fn drop_aside_map_pins(pin_dir: &Path) {
    for name in ALL_MAPS.iter().chain([&shield_common::MAP_BAN_NOTES]) {
        let _ = std::fs::remove_file(pin_dir.join(format!("{name}{ASIDE_SUFFIX}")));
    }
}

/// An fd on program `id` (BPF_PROG_GET_FD_BY_ID): keeps a program alive, to put it back.
pub fn prog_fd_by_id(id: u32) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd as _;
    const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
    let mut attr = [0u64; 8];
    attr[0] = u64::from(id);
    // SAFETY: a zeroed bpf_attr with prog_id set.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_GET_FD_BY_ID,
            attr.as_mut_ptr(),
            64u32,
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: a new fd the kernel just gave us.
    Some(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// Puts `prog` back into the link pinned at `link_pin` (BPF_LINK_UPDATE): undoes an
/// adoption, which replaced the link's program with this start's.
pub fn restore_link_program(link_pin: &Path, prog: std::os::fd::BorrowedFd<'_>) -> io::Result<()> {
    use std::os::fd::AsRawFd as _;
    const BPF_LINK_UPDATE: libc::c_long = 29;
    let link = obj_get(link_pin)?;
    // struct { u32 link_fd; u32 new_prog_fd; u32 flags; u32 old_prog_fd; }
    let mut attr = [0u32; 16];
    attr[0] = link.as_raw_fd() as u32;
    attr[1] = prog.as_raw_fd() as u32;
    // SAFETY: a zeroed bpf_attr with link_update set up; both fds are live.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_LINK_UPDATE, attr.as_mut_ptr(), 64u32) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
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
