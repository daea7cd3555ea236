//! Attaching the program to an interface through a pinned bpf link: adopting the link a
//! previous daemon left, the facts of a pinned link, setting map pins aside for a fresh
//! start and putting them back.

use super::*;

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
pub(super) fn is_busy(e: &ProgramError) -> bool {
    let errno = match e {
        ProgramError::SyscallError(s) => s.io_error.raw_os_error(),
        ProgramError::XdpError(aya::programs::XdpError::NetlinkError(n)) => n.raw_os_error(),
        _ => None,
    };
    matches!(errno, Some(libc::EBUSY) | Some(libc::EEXIST))
}

/// Tries to take over the link an earlier run pinned in `pin_dir`. A stale pin (its
/// interface gone) is removed.
pub(super) fn adopt(program: &mut Xdp, link_pin: &Path) -> Option<FdLink> {
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
/// The ban counts and the filters' bits are set again once attached
/// (`ban_counts_adopt`, `sfilter_adopt`, `vfilter_adopt`): call it when no `BanMaps` of `pin_dir` changes
/// bans.
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
        settle_then_adopt(pin_dir)?;
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
    // So with the filters' bits (an older program inserts without them, or into a filter
    // this load replaced).
    settle_then_adopt(pin_dir)?;
    Ok((FdLink::from(pinned), attached))
}

/// Once this program runs in place of an earlier one: waits until a run of the earlier
/// program that started before the switch has finished (`SFILTER_SETTLE`, far longer than
/// any run), then counts the bans and sets the bits of the source table's and the verified
/// set's filters again, so that nothing the earlier program inserted is left uncounted or
/// without its bit.
fn settle_then_adopt(pin_dir: &Path) -> Result<(), LoaderError> {
    std::thread::sleep(SFILTER_SETTLE);
    ban_counts_adopt(pin_dir)?;
    sfilter_adopt(pin_dir)?;
    vfilter_adopt(pin_dir)?;
    Ok(())
}

/// BPF_OBJ_GET: a new fd for the object pinned at `pin` (aya opens no pinned links by fd).
pub(super) fn obj_get(pin: &Path) -> io::Result<std::os::fd::OwnedFd> {
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

pub(super) fn link_facts_fd(fd: std::os::fd::BorrowedFd<'_>) -> Option<LinkFacts> {
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
pub(super) fn force_detach(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<()> {
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
pub(super) fn shield_pin_names() -> Vec<String> {
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
