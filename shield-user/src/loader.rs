//! The thin kernel layer: bpffs, loading the XDP object with pinned maps, writing a
//! compiled policy into the maps, attaching to an interface.

use std::{
    collections::HashSet,
    ffi::CString,
    hash::Hash,
    io,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader, Pod,
    maps::{Array, LpmTrie, Map, MapData, MapError, lpm_trie::Key},
    programs::{ProgramError, Xdp, XdpMode, xdp::XdpLinkId},
};
use shield_common::{
    ALL_MAPS, GlobalConfig, ListValue, MAP_ALLOW_V4, MAP_ALLOW_V6, MAP_CONFIG, MAP_DENY_V4,
    MAP_DENY_V6, MAP_PORTS, MAP_RULES, MAP_SOURCES, PROGRAM_NAME, RuleConfig,
};

use crate::policy::CompiledPolicy;

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
    #[error("XDP program: {0}")]
    Program(#[from] ProgramError),
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
/// /sys/fs/bpf).
pub fn ensure_bpffs(root: &Path) -> Result<(), LoaderError> {
    if is_bpffs(root) {
        return Ok(());
    }
    let err = |source| LoaderError::Bpffs {
        path: root.to_path_buf(),
        source,
    };
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
    Ok(())
}

/// `<bpffs>/shield/<iface>`: where one interface's maps are pinned.
pub fn pin_dir(bpffs: &Path, iface: &str) -> PathBuf {
    bpffs.join("shield").join(iface)
}

/// Loads the program with its maps pinned under `pin_dir`. Maps already pinned there are
/// adopted (counters and limiter state survive a restart), except a source table of
/// another capacity, which is replaced.
pub fn load(pin_dir: &Path, max_sources: u32) -> Result<Ebpf, LoaderError> {
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
    let mut loader = EbpfLoader::new();
    loader.map_max_entries(MAP_SOURCES, max_sources);
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
    Ok(ebpf)
}

fn map_mut<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Map, LoaderError> {
    ebpf.map_mut(name).ok_or(LoaderError::Missing(name))
}

/// Writes `policy` into the maps. The global config (which turns enforcement on) is
/// written last, so a first load never runs on half-filled tables.
pub fn sync(ebpf: &mut Ebpf, policy: &CompiledPolicy, generation: u32) -> Result<(), LoaderError> {
    {
        let mut rules: Array<_, RuleConfig> =
            Array::try_from(map_mut(ebpf, MAP_RULES)?).map_err(map_err(MAP_RULES))?;
        for (i, r) in policy.rules.iter().enumerate() {
            rules.set(i as u32, r, 0).map_err(map_err(MAP_RULES))?;
        }
    }
    {
        let mut ports: Array<_, u32> =
            Array::try_from(map_mut(ebpf, MAP_PORTS)?).map_err(map_err(MAP_PORTS))?;
        for (i, r) in policy.ports.iter().enumerate() {
            ports.set(i as u32, r, 0).map_err(map_err(MAP_PORTS))?;
        }
    }
    sync_list(map_mut(ebpf, MAP_ALLOW_V4)?, MAP_ALLOW_V4, &policy.allow_v4)?;
    sync_list(map_mut(ebpf, MAP_ALLOW_V6)?, MAP_ALLOW_V6, &policy.allow_v6)?;
    sync_list(map_mut(ebpf, MAP_DENY_V4)?, MAP_DENY_V4, &policy.deny_v4)?;
    sync_list(map_mut(ebpf, MAP_DENY_V6)?, MAP_DENY_V6, &policy.deny_v6)?;
    let mut config: Array<_, GlobalConfig> =
        Array::try_from(map_mut(ebpf, MAP_CONFIG)?).map_err(map_err(MAP_CONFIG))?;
    let global = GlobalConfig {
        generation,
        ..policy.global
    };
    config.set(0, global, 0).map_err(map_err(MAP_CONFIG))?;
    Ok(())
}

/// Makes an LPM trie hold exactly `want`: removes what is no longer listed, adds the rest.
fn sync_list<const N: usize>(
    map: &mut Map,
    name: &'static str,
    want: &[([u8; N], u8)],
) -> Result<(), LoaderError>
where
    [u8; N]: Pod + Hash + Eq,
{
    let mut trie: LpmTrie<_, [u8; N], ListValue> = LpmTrie::try_from(map).map_err(map_err(name))?;
    let want_set: HashSet<([u8; N], u8)> = want.iter().copied().collect();
    let mut stale = Vec::new();
    for key in trie.keys() {
        let key = key.map_err(map_err(name))?;
        let entry = (key.data(), key.prefix_len() as u8);
        if !want_set.contains(&entry) {
            stale.push(key);
        }
    }
    for key in stale {
        trie.remove(&key).map_err(map_err(name))?;
    }
    for (addr, len) in want {
        trie.insert(&Key::new(u32::from(*len), *addr), 1, 0)
            .map_err(map_err(name))?;
    }
    Ok(())
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
}

impl Attached {
    pub const fn name(self) -> &'static str {
        match self {
            Attached::Native => "native",
            Attached::Generic => "generic",
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

/// Attaches the program to `iface`. In `Auto`, native first, then generic (the returned
/// value says which; the caller warns).
pub fn attach(
    ebpf: &mut Ebpf,
    iface: &str,
    mode: AttachMode,
) -> Result<(XdpLinkId, Attached), LoaderError> {
    if_index(iface)?;
    let program: &mut Xdp = ebpf
        .program_mut(PROGRAM_NAME)
        .ok_or(LoaderError::Missing("program"))?
        .try_into()?;
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
    match mode {
        AttachMode::Native => Ok((
            try_mode(program, XdpMode::Driver, "native")?,
            Attached::Native,
        )),
        AttachMode::Generic => Ok((
            try_mode(program, XdpMode::Skb, "generic")?,
            Attached::Generic,
        )),
        AttachMode::Auto => match try_mode(program, XdpMode::Driver, "native") {
            Ok(id) => Ok((id, Attached::Native)),
            Err(e @ LoaderError::AlreadyAttached { .. }) => Err(e),
            Err(_) => Ok((
                try_mode(program, XdpMode::Skb, "generic")?,
                Attached::Generic,
            )),
        },
    }
}

/// Opens a pinned map of `pin_dir` (for `shield stats` without the daemon).
pub fn open_pinned(pin_dir: &Path, name: &'static str) -> Result<Map, LoaderError> {
    let data = MapData::from_pin(pin_dir.join(name)).map_err(map_err(name))?;
    Map::from_map_data(data).map_err(map_err(name))
}
