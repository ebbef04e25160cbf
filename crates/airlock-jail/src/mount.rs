//! The mount namespace: a fresh root the guest cannot write outside of.
//!
//! The new root is a small tmpfs built under a staging directory of the private mount
//! namespace, then `pivot_root`ed into; the old root is detached. Into it go:
//!
//! * read-only, recursive binds of what the interpreter needs: by default the host's
//!   `/usr` and the `/bin`, `/sbin`, `/lib*` links or directories; or every top-level
//!   entry of a `--rootfs` directory;
//! * an `/etc` made of an allow-list: small files are copied, a few directories
//!   (`ssl`, `fonts`, `alternatives`, `python3*`, ...) bound read-only, and `passwd`,
//!   `group`, `hosts` and `hostname` written fresh — never `/etc/shadow` or any other
//!   host file not on the list;
//! * read-only binds of the interpreter's own prefix, its `sys.path` entries and any
//!   configured site-packages or virtualenv, when they live outside those directories:
//!   at their host path, or below [`RELOCATED_DIR`] when that path is one of the
//!   sandbox's own ([`inside_path`]);
//! * a new `/proc` for the sandbox's PID namespace holding only its processes
//!   (`subset=pid`, Linux 5.8+): none of the host-wide files (`cmdline`, `config.gz`,
//!   `kallsyms`, `stat`, `meminfo`, `pressure/`, `sys/`, ...), so nothing of the host's
//!   kernel, boot or load shows through it; on older kernels the whole procfs, with
//!   `/proc/sys` read-only;
//! * a minimal `/dev`: `null`, `zero`, `full`, `random`, `urandom` (bound from the
//!   host), the `fd`/`stdin`/`stdout`/`stderr` links, `shm` pointing at `/tmp`; no
//!   `pts`, no `tty`;
//! * size-capped tmpfs mounts at `/tmp` and `/workspace`.
//!
//! Finally the root itself is made read-only: the only writable places are `/tmp`,
//! `/workspace` and the character devices.
//!
//! **Sources.** What is bound from the host (the system directories, a root file
//! system's entries, site-packages, a virtualenv: a [`Source`] each) is taken as a
//! detached mount (`open_tree(OPEN_TREE_CLONE)`) before anything of the new root exists,
//! and attached in place with `move_mount` ([`Taking`]): as root by airlock itself,
//! before the `clone` (so neither the source's path nor its parents' permissions
//! matter: a source below the staging directory, which the new root's tmpfs covers, or
//! below a `0700` directory the sandbox's unprivileged host uid cannot search, works);
//! rootless by the child, in its own mount namespace, before the staging tmpfs is
//! mounted. Each attached tree is made private (a copy of a shared mount would
//! otherwise be a peer of the host's: mounts made on either side would appear on the
//! other) and read-only.
use std::collections::BTreeSet;
use std::ffi::{CString, OsStr, OsString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};

use airlock_core::Error;

use crate::process::cstring;
use crate::sys::{Sys, SysResult};

/// `MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV`.
const ATTR_READ_ONLY: u64 = 0x1 | 0x2 | 0x4;

/// procfs's option for a mount that shows only processes (Linux 5.8+).
pub const PROC_SUBSET_PID: &std::ffi::CStr = c"subset=pid";

/// One mount-namespace operation, run in the child.
#[derive(Debug, Clone)]
pub enum MountOp {
    /// Stops mount events from propagating back to the host (`MS_REC | MS_PRIVATE` on `/`).
    MakePrivate,
    /// Mounts a tmpfs.
    Tmpfs {
        /// Mount point.
        target: CString,
        /// `MS_*` flags.
        flags: libc::c_ulong,
        /// Options (`size=...,nr_inodes=...,mode=...`).
        options: CString,
    },
    /// Creates a directory.
    Mkdir {
        /// Path.
        path: CString,
        /// Mode.
        mode: u32,
    },
    /// Creates a symbolic link at `link` pointing to `target`.
    Symlink {
        /// Where it points.
        target: CString,
        /// The link.
        link: CString,
    },
    /// Creates a file with the given contents (empty for a bind-mount target).
    File {
        /// Path.
        path: CString,
        /// Contents.
        contents: Arc<[u8]>,
        /// Mode.
        mode: u32,
        /// A failure (e.g. the tmpfs is too small) is ignored.
        optional: bool,
    },
    /// Takes source `index` as a detached copy of its mounts (`open_tree`), while its
    /// host path is still visible ([`Taking::Sandbox`]).
    Take {
        /// The source's index in the plan's [`SourceFds`].
        index: usize,
        /// Its host path.
        path: CString,
        /// With the mounts below it.
        recursive: bool,
    },
    /// Attaches source `index` at `dst` (`move_mount`) and makes it private; binds
    /// `src` by path when it was not taken ([`Taking::Path`]).
    Attach {
        /// The source's index in the plan's [`SourceFds`].
        index: usize,
        /// Its host path.
        src: CString,
        /// Target.
        dst: CString,
        /// With the mounts below it.
        recursive: bool,
    },
    /// Bind-mounts `src` at `dst`.
    Bind {
        /// Source (a host path, before `pivot_root`).
        src: CString,
        /// Target.
        dst: CString,
        /// Include the mounts below `src`.
        recursive: bool,
    },
    /// Makes a mount read-only, `nosuid` and `nodev`.
    ReadOnly {
        /// The mount point.
        path: CString,
        /// Also every mount below it (needs `mount_setattr`, Linux 5.12).
        recursive: bool,
        /// Use `mount_setattr`; else a bind remount that keeps these locked `MS_*` flags.
        setattr: bool,
        /// Flags of the source mount that a remount must repeat (a user namespace may not clear them).
        keep_flags: libc::c_ulong,
    },
    /// Mounts a new procfs (for the new PID namespace).
    Proc {
        /// Mount point.
        target: CString,
        /// Only the processes' part (`subset=pid`): no host-wide file.
        subset_pid: bool,
    },
    /// Makes `new_root` the root (`pivot_root(".", ".")`) and detaches the old one.
    PivotRoot {
        /// The staging directory holding the new root.
        new_root: CString,
    },
    /// Makes `/` (the new root's tmpfs) read-only.
    RemountRootReadOnly {
        /// Use `mount_setattr`.
        setattr: bool,
    },
}

impl MountOp {
    /// A one-line description for errors and plans.
    pub fn describe(&self) -> String {
        let s = |c: &CString| c.to_string_lossy().into_owned();
        match self {
            MountOp::MakePrivate => "make every mount private".into(),
            MountOp::Tmpfs { target, options, .. } => format!("mount a tmpfs at {} ({})", s(target), s(options)),
            MountOp::Mkdir { path, .. } => format!("create directory {}", s(path)),
            MountOp::Symlink { target, link } => format!("create link {} -> {}", s(link), s(target)),
            MountOp::File { path, contents, .. } => format!("write {} ({} bytes)", s(path), contents.len()),
            MountOp::Take { path, .. } => format!("take {} (a detached copy of its mounts)", s(path)),
            MountOp::Attach { src, dst, .. } => format!("attach {} at {}", s(src), s(dst)),
            MountOp::Bind { src, dst, .. } => format!("bind {} at {}", s(src), s(dst)),
            MountOp::ReadOnly { path, recursive, .. } => {
                format!("make {} read-only{}", s(path), if *recursive { " (recursively)" } else { "" })
            }
            MountOp::Proc { target, subset_pid: false } => format!("mount a new /proc at {}", s(target)),
            MountOp::Proc { target, subset_pid: true } => {
                format!("mount a new /proc at {} (processes only: subset=pid)", s(target))
            }
            MountOp::PivotRoot { new_root } => format!("pivot_root into {}", s(new_root)),
            MountOp::RemountRootReadOnly { .. } => "make the new root read-only".into(),
        }
    }

    /// Runs the operation; `sources` holds the detached mounts of the plan's sources.
    pub fn apply<S: Sys>(&self, sys: &mut S, sources: &SourceFds) -> SysResult<()> {
        match self {
            MountOp::MakePrivate => sys.mount(None, c"/", None, libc::MS_REC | libc::MS_PRIVATE, None),
            MountOp::Tmpfs { target, flags, options } => {
                sys.mount(Some(c"tmpfs"), target, Some(c"tmpfs"), *flags, Some(options))
            }
            MountOp::Mkdir { path, mode } => match sys.mkdir(path, *mode) {
                Err(libc::EEXIST) => Ok(()),
                other => other,
            },
            MountOp::Symlink { target, link } => sys.symlink(target, link),
            MountOp::File { path, contents, mode, optional } => {
                let r = (|| {
                    let fd = sys.open(path, libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC, *mode)?;
                    let w = sys.write_all(fd, contents);
                    sys.close(fd);
                    w
                })();
                if *optional { Ok(()) } else { r }
            }
            MountOp::Take { index, path, recursive } => {
                let fd = sys.open_tree(path, *recursive)?;
                sources.set(*index, fd);
                Ok(())
            }
            MountOp::Attach { index, src, dst, recursive } => match sources.take(*index) {
                Some(fd) => {
                    let attached = sys.move_mount(fd, dst);
                    sys.close(fd);
                    attached?;
                    // A copy of a shared mount is a peer of the original: private, so
                    // that nothing mounted on either side appears on the other.
                    sys.mount(None, dst, None, libc::MS_REC | libc::MS_PRIVATE, None)
                }
                None => {
                    let flags = libc::MS_BIND | if *recursive { libc::MS_REC } else { 0 };
                    sys.mount(Some(src), dst, None, flags, None)
                }
            },
            MountOp::Bind { src, dst, recursive } => {
                let flags = libc::MS_BIND | if *recursive { libc::MS_REC } else { 0 };
                sys.mount(Some(src), dst, None, flags, None)
            }
            MountOp::ReadOnly { path, recursive, setattr, keep_flags } => {
                if *setattr {
                    sys.mount_setattr(path, *recursive, ATTR_READ_ONLY)
                } else {
                    let flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV;
                    sys.mount(None, path, None, flags | keep_flags, None)
                }
            }
            MountOp::Proc { target, subset_pid } => sys.mount(
                Some(c"proc"),
                target,
                Some(c"proc"),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                subset_pid.then_some(PROC_SUBSET_PID),
            ),
            MountOp::PivotRoot { new_root } => {
                sys.chdir(new_root)?;
                sys.pivot_root(c".", c".")?;
                sys.umount_detach(c".")?;
                sys.chdir(c"/")
            }
            MountOp::RemountRootReadOnly { setattr } => {
                if *setattr {
                    sys.mount_setattr(c"/", false, ATTR_READ_ONLY)
                } else {
                    let flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV;
                    sys.mount(None, c"/", None, flags, None)
                }
            }
        }
    }
}

/// Who takes the new root's [`Source`]s from the host, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taking {
    /// airlock opens each as a detached mount (`open_tree(OPEN_TREE_CLONE)`) before the
    /// `clone`, read-only and private; the child inherits the descriptors and attaches
    /// them. Neither a source's path nor its parents' permissions matter. Needs
    /// `CAP_SYS_ADMIN` in airlock's own mount namespace (root).
    Host,
    /// The child opens each as a detached mount in its own mount namespace before it
    /// mounts the staging tmpfs (rootless: its host uid is the operator's, so it can
    /// reach what the operator can).
    Sandbox,
    /// Bound by path (kernels without `open_tree`, before 5.2): a source below the
    /// staging directory is refused, since the new root's tmpfs covers it.
    Path,
}

/// A host file or directory bound (read-only) into the new root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// Its host path, canonical (no symbolic link in it when it was planned).
    pub path: PathBuf,
    /// A directory (else a file).
    pub dir: bool,
    /// With the mounts below it (only when they can all be made read-only: `mount_setattr`).
    pub recursive: bool,
}

/// The detached mounts of a plan's sources, by index: taken by airlock before the
/// `clone` ([`Taking::Host`]) or by the child's [`MountOp::Take`] steps; none for a
/// source bound by path. The child only reads and writes integers here (no allocation).
#[derive(Debug)]
pub struct SourceFds(Box<[AtomicI32]>);

impl SourceFds {
    /// Room for `n` sources, with the descriptors `taken` (by index) already in place.
    pub fn new(n: usize, taken: &[RawFd]) -> Self {
        let fds: Vec<AtomicI32> = (0..n).map(|i| AtomicI32::new(taken.get(i).copied().unwrap_or(-1))).collect();
        SourceFds(fds.into_boxed_slice())
    }

    fn set(&self, index: usize, fd: RawFd) {
        if let Some(slot) = self.0.get(index) {
            slot.store(fd, Ordering::Relaxed);
        }
    }

    /// The descriptor of source `index`, if it was taken; the slot is emptied.
    fn take(&self, index: usize) -> Option<RawFd> {
        let fd = self.0.get(index)?.swap(-1, Ordering::Relaxed);
        (fd >= 0).then_some(fd)
    }
}

/// Where host paths bound for the sandbox appear when their own path inside it is
/// taken: `/tmp/venv` is seen at `/airlock/tmp/venv`.
pub const RELOCATED_DIR: &str = "/airlock";

/// Where the sandbox sees the host directory `host` (absolute, canonical) that airlock
/// binds for it (site-packages, an interpreter's prefix): at the same path, unless its
/// first component is one of the sandbox's own directories (`/tmp`, `/workspace`,
/// `/proc`, `/dev`, `/sys`, `/run`, [`RELOCATED_DIR`]) or one of `root_entries` (the
/// top-level names of a root file system); then at the same path below
/// [`RELOCATED_DIR`].
pub fn inside_path(host: &Path, root_entries: &[OsString]) -> PathBuf {
    let top = host.components().find_map(|c| match c {
        Component::Normal(n) => Some(n),
        _ => None,
    });
    let own = |t: &OsStr| {
        OWN_DIRS.iter().any(|o| t == *o)
            || t == RELOCATED_DIR.trim_start_matches('/')
            || root_entries.iter().any(|e| e == t)
    };
    match top {
        Some(t) if own(t) => Path::new(RELOCATED_DIR).join(host.strip_prefix("/").unwrap_or(host)),
        _ => host.to_path_buf(),
    }
}

/// Opens each source as a detached, read-only, private mount ([`Taking::Host`]), in
/// order. A source is reached without following any symbolic link (its path was made
/// canonical when planned): a link put in its place since is refused, not followed
/// with airlock's privileges.
pub fn take_sources(sources: &[Source], setattr: bool) -> Result<Vec<OwnedFd>, Error> {
    sources
        .iter()
        .map(|s| {
            take_source(s, setattr).map_err(|e| {
                let hint = match e {
                    nix::errno::Errno::ELOOP => " (a symbolic link took its place since the sandbox was planned)",
                    nix::errno::Errno::ENOTDIR => " (it changed type since the sandbox was planned)",
                    _ => "",
                };
                Error::io(
                    format!("taking {} for the sandbox's root{hint}", s.path.display()),
                    std::io::Error::from_raw_os_error(e as i32),
                )
            })
        })
        .collect()
}

fn take_source(s: &Source, setattr: bool) -> Result<OwnedFd, nix::errno::Errno> {
    use nix::errno::Errno;
    use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
    // RESOLVE_NO_SYMLINKS refuses a link anywhere in the path, the last component too.
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let at = match nix::fcntl::openat2(nix::fcntl::AT_FDCWD, &s.path, how) {
        // Before Linux 5.6: only the last component is checked.
        Err(Errno::ENOSYS) => {
            let flags = OFlag::O_PATH | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW;
            nix::fcntl::open(&s.path, flags, nix::sys::stat::Mode::empty())?
        }
        r => r?,
    };
    let kind = nix::sys::stat::fstat(&at)?.st_mode & libc::S_IFMT;
    if kind == libc::S_IFLNK {
        return Err(Errno::ELOOP);
    }
    if (kind == libc::S_IFDIR) != s.dir {
        return Err(Errno::ENOTDIR);
    }
    let flags = libc::OPEN_TREE_CLONE
        | libc::OPEN_TREE_CLOEXEC
        | libc::AT_EMPTY_PATH as libc::c_uint
        | if s.recursive { libc::AT_RECURSIVE as libc::c_uint } else { 0 };
    // SAFETY: an empty NUL-terminated path relative to a descriptor we hold.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, at.as_raw_fd(), c"".as_ptr(), flags) };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: a new descriptor we own.
    let tree = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    if setattr {
        // Read-only and private before the sandbox ever holds it. (A copy of a shared
        // mount joins its peer group; the child makes it private again after attaching,
        // which is all that older kernels get.)
        let attr = crate::sys::MountAttr {
            attr_set: ATTR_READ_ONLY,
            attr_clr: 0,
            propagation: libc::MS_PRIVATE,
            userns_fd: 0,
        };
        let flags = libc::AT_EMPTY_PATH | if s.recursive { libc::AT_RECURSIVE } else { 0 };
        // SAFETY: an empty NUL-terminated path relative to our descriptor, and a live
        // struct of the size passed.
        let r = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                tree.as_raw_fd(),
                c"".as_ptr(),
                flags,
                &attr as *const crate::sys::MountAttr,
                std::mem::size_of::<crate::sys::MountAttr>(),
            )
        };
        if r < 0 {
            return Err(Errno::last());
        }
    }
    Ok(tree)
}

/// How this process can take sources (see [`Taking`]): by itself when it may clone
/// mounts, else through the sandbox; by path on kernels without `open_tree`.
pub fn taking() -> Taking {
    let open = |flags: libc::c_uint| {
        // SAFETY: a NUL-terminated constant path; the result is a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, c"/".as_ptr(), flags) };
        // SAFETY: a new descriptor we own, closed on drop.
        (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
    };
    // Without OPEN_TREE_CLONE it only opens a path (no privilege needed): it tells
    // whether the call exists (and is not filtered).
    if open(libc::OPEN_TREE_CLOEXEC).is_none() {
        return Taking::Path;
    }
    match open(libc::OPEN_TREE_CLOEXEC | libc::OPEN_TREE_CLONE) {
        Some(_) => Taking::Host,
        None => Taking::Sandbox,
    }
}

/// Where the new root's contents come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootSource {
    /// The host's system directories and an `/etc` allow-list.
    Host,
    /// Every top-level entry of this directory (a Debian/Alpine/... root file system).
    Dir(PathBuf),
}

/// Top-level host entries bound (directories) or recreated (links) in host mode.
pub const HOST_SYSTEM_DIRS: &[&str] = &["usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32"];

/// `/etc` files copied into the sandbox when present (links are recreated instead).
/// Nothing secret: no `shadow`, `gshadow`, `sudoers`, `ssh/`, `machine-id`, no credentials.
pub const ETC_FILES: &[&str] = &[
    "ld.so.cache",
    "ld.so.conf",
    "localtime",
    "timezone",
    "nsswitch.conf",
    "host.conf",
    "gai.conf",
    "protocols",
    "services",
    "mime.types",
    "matplotlibrc",
    "ssl/openssl.cnf",
    "os-release",
    "debian_version",
];

/// `/etc` directories bound read-only when present. Certificates only: never
/// `ssl/private` or `pki/tls/private` (a rootless sandbox keeps its user's
/// supplementary groups, which may open them).
pub const ETC_DIRS: &[&str] = &[
    "ld.so.conf.d",
    "alternatives",
    "fonts",
    "ssl/certs",
    "ca-certificates",
    "pki/tls/certs",
    "pki/ca-trust",
    "crypto-policies",
    "python3",
];

/// Top-level names of the sandbox's own (not bound): a `--rootfs` entry with one of
/// these names is skipped, and extra binds may not point into them.
const OWN_DIRS: &[&str] = &["proc", "dev", "sys", "tmp", "workspace", "run"];

/// What the new root contains.
#[derive(Debug, Clone)]
pub struct RootSpec {
    /// An existing host directory the new root is mounted on before `pivot_root`
    /// (only visible inside the private mount namespace).
    pub staging: PathBuf,
    /// Host system directories or a root file system.
    pub source: RootSource,
    /// Extra read-only binds `(host path, path inside)`: the interpreter's prefix,
    /// site-packages, a virtualenv.
    pub extra_ro: Vec<(PathBuf, PathBuf)>,
    /// Size of the `/tmp` tmpfs, in bytes.
    pub tmp_bytes: u64,
    /// Size of the `/workspace` tmpfs, in bytes.
    pub workspace_bytes: u64,
    /// A prebuilt matplotlib font cache `(file name, contents)` put in `/tmp/matplotlib`.
    pub mpl_cache: Option<(String, Arc<[u8]>)>,
    /// Copy the host's `/etc/resolv.conf` (host network only).
    pub resolv_conf: bool,
    /// The kernel has `mount_setattr` (recursive read-only binds).
    pub setattr: bool,
    /// Leave `/proc` without submounts (no read-only `/proc/sys` bind), so that a
    /// nested PID namespace may mount its own `/proc`: the kernel allows that only
    /// while a fully visible procfs exists (a zygote, whose children then make their
    /// own `/proc/sys` read-only).
    pub nested_proc: bool,
    /// The kernel can mount a procfs with only the processes' part
    /// ([`have_proc_subset`]); unless `nested_proc`, the sandbox's `/proc` is one.
    pub proc_subset: bool,
    /// Who takes the sources from the host ([`taking`]).
    pub taking: Taking,
}

/// Where the guest's matplotlib configuration and font cache live.
pub const MPL_CONFIG_DIR: &str = "/tmp/matplotlib";

/// Options of a size-capped tmpfs (a size of 0 would mean "unlimited" to tmpfs).
pub fn tmpfs_options(bytes: u64, mode: u32) -> String {
    let size = bytes.max(4096);
    let inodes = (size / 1024).clamp(4096, 1 << 20);
    format!("size={size},nr_inodes={inodes},mode={mode:o}")
}

/// The `MS_*` flags of the mount holding `path` that a bind remount must keep.
fn locked_flags(path: &Path) -> libc::c_ulong {
    use nix::sys::statvfs::{FsFlags, statvfs};
    let Ok(st) = statvfs(path) else { return 0 };
    let f = st.flags();
    let mut out: libc::c_ulong = 0;
    for (fs, ms) in [
        (FsFlags::ST_NOEXEC, libc::MS_NOEXEC),
        (FsFlags::ST_NOATIME, libc::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, libc::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, libc::MS_RELATIME),
    ] {
        if f.contains(fs) {
            out |= ms;
        }
    }
    out
}

/// Builds the list of mount operations for a [`RootSpec`].
struct Builder<'a> {
    spec: &'a RootSpec,
    ops: Vec<MountOp>,
    /// Directories that exist (writable while building) in the new root.
    made: BTreeSet<PathBuf>,
    /// Read-only subtrees in the new root: binds, with their source's host path, and
    /// links (`None`).
    covered: Vec<(PathBuf, Option<PathBuf>)>,
    /// What is bound from the host, in the order of the plan's [`MountOp::Attach`]es.
    sources: Vec<Source>,
}

impl<'a> Builder<'a> {
    fn staged(&self, inside: &Path) -> Result<CString, Error> {
        let rel = inside.strip_prefix("/").unwrap_or(inside);
        let p = if rel.as_os_str().is_empty() { self.spec.staging.clone() } else { self.spec.staging.join(rel) };
        cstring(p.as_os_str().as_encoded_bytes(), "a mount path")
    }

    fn host(p: &Path) -> Result<CString, Error> {
        cstring(p.as_os_str().as_encoded_bytes(), "a host path")
    }

    /// The bind or link that `inside` is below, if any.
    fn covering(&self, inside: &Path) -> Option<&(PathBuf, Option<PathBuf>)> {
        self.covered.iter().find(|(c, _)| inside.starts_with(c))
    }

    fn mkdir(&mut self, inside: &Path, mode: u32) -> Result<(), Error> {
        if self.made.contains(inside) {
            return Ok(());
        }
        let path = self.staged(inside)?;
        self.ops.push(MountOp::Mkdir { path, mode });
        self.made.insert(inside.to_path_buf());
        Ok(())
    }

    /// Creates every missing ancestor of `inside` (not `inside` itself).
    fn parents(&mut self, inside: &Path) -> Result<(), Error> {
        let mut cur = PathBuf::from("/");
        let comps: Vec<Component> = inside.components().collect();
        for c in comps.iter().take(comps.len().saturating_sub(1)) {
            if let Component::Normal(n) = c {
                cur.push(n);
                self.mkdir(&cur, 0o755)?;
            }
        }
        Ok(())
    }

    fn symlink(&mut self, target: &Path, inside: &Path) -> Result<(), Error> {
        self.parents(inside)?;
        self.ops.push(MountOp::Symlink { target: Self::host(target)?, link: self.staged(inside)? });
        self.covered.push((inside.to_path_buf(), None));
        Ok(())
    }

    fn file(&mut self, inside: &Path, contents: Arc<[u8]>, mode: u32, optional: bool) -> Result<(), Error> {
        self.parents(inside)?;
        self.ops.push(MountOp::File { path: self.staged(inside)?, contents, mode, optional });
        Ok(())
    }

    /// A read-only bind of a host directory or file: a [`Source`], attached at `inside`.
    fn bind_ro(&mut self, host: &Path, inside: &Path) -> Result<(), Error> {
        // The canonical path: the host side reaches it later without following links.
        let path = std::fs::canonicalize(host).map_err(|e| Error::io(format!("cannot bind {}", host.display()), e))?;
        let meta = std::fs::metadata(&path).map_err(|e| Error::io(format!("cannot bind {}", host.display()), e))?;
        if self.spec.taking == Taking::Path && path.starts_with(&self.spec.staging) {
            return Err(Error::invalid(format!(
                "cannot bind {}: it is below {}, which the sandbox's new root covers while it is built, and this \
                 kernel (without open_tree, Linux 5.2) can only bind by path; move it elsewhere",
                host.display(),
                self.spec.staging.display()
            )));
        }
        self.parents(inside)?;
        let dst = self.staged(inside)?;
        if meta.is_dir() {
            self.mkdir(inside, 0o755)?;
        } else {
            self.ops.push(MountOp::File {
                path: dst.clone(),
                contents: Arc::from(&[][..]),
                mode: 0o644,
                optional: false,
            });
        }
        // Without mount_setattr only the top mount can be made read-only, so the mounts
        // below it are not bound at all.
        let recursive = meta.is_dir() && self.spec.setattr;
        let index = self.sources.len();
        self.ops.push(MountOp::Attach { index, src: Self::host(&path)?, dst: dst.clone(), recursive });
        self.ops.push(MountOp::ReadOnly {
            path: dst,
            recursive,
            setattr: self.spec.setattr,
            keep_flags: locked_flags(&path),
        });
        self.covered.push((inside.to_path_buf(), Some(path.clone())));
        self.sources.push(Source { path, dir: meta.is_dir(), recursive });
        Ok(())
    }

    /// A host entry: recreated if it is a link, bound read-only otherwise; skipped if absent.
    fn mirror(&mut self, host: &Path, inside: &Path) -> Result<(), Error> {
        match std::fs::symlink_metadata(host) {
            Ok(m) if m.file_type().is_symlink() => {
                let target =
                    std::fs::read_link(host).map_err(|e| Error::io(format!("reading {}", host.display()), e))?;
                self.symlink(&target, inside)
            }
            Ok(_) => self.bind_ro(host, inside),
            Err(_) => Ok(()),
        }
    }

    fn system(&mut self) -> Result<(), Error> {
        match &self.spec.source {
            RootSource::Host => {
                for name in HOST_SYSTEM_DIRS {
                    self.mirror(&Path::new("/").join(name), &Path::new("/").join(name))?;
                }
                self.etc()?;
            }
            RootSource::Dir(root) => {
                let mut names: Vec<_> = std::fs::read_dir(root)
                    .map_err(|e| Error::invalid(format!("rootfs {} cannot be read: {e}", root.display())))?
                    .filter_map(|e| e.ok().map(|e| e.file_name()))
                    .collect();
                names.sort();
                for name in names {
                    if OWN_DIRS.iter().any(|o| name == *o) {
                        continue;
                    }
                    self.mirror(&root.join(&name), &Path::new("/").join(&name))?;
                }
            }
        }
        Ok(())
    }

    fn etc(&mut self) -> Result<(), Error> {
        let etc = Path::new("/etc");
        self.mkdir(etc, 0o755)?;
        for name in ETC_FILES {
            let host = etc.join(name);
            match std::fs::symlink_metadata(&host) {
                Ok(m) if m.file_type().is_symlink() => self.mirror(&host, &host)?,
                Ok(m) if m.is_file() => {
                    // A file that cannot be read is left out, never made up.
                    if let Ok(bytes) = std::fs::read(&host) {
                        self.file(&host, bytes.into(), 0o644, false)?;
                    }
                }
                _ => {}
            }
        }
        let mut dirs: Vec<String> = ETC_DIRS.iter().map(|s| s.to_string()).collect();
        // Per-version Python configuration (/etc/python3.11, holding sitecustomize.py on Debian).
        if let Ok(rd) = std::fs::read_dir(etc) {
            let mut versions: Vec<String> = rd
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with("python3.") && n[8..].chars().all(|c| c.is_ascii_digit()))
                .collect();
            versions.sort();
            dirs.extend(versions);
        }
        for name in dirs {
            let host = etc.join(&name);
            if std::fs::symlink_metadata(&host).is_ok_and(|m| m.is_dir() || m.file_type().is_symlink()) {
                self.mirror(&host, &host)?;
            }
        }
        let hostname = crate::contain::HOSTNAME;
        let synthetic: [(&str, String); 4] = [
            (
                "passwd",
                "root:x:0:0:root:/workspace:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
                    .into(),
            ),
            ("group", "root:x:0:\nnogroup:x:65534:\n".into()),
            ("hosts", format!("127.0.0.1\tlocalhost {hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n")),
            ("hostname", format!("{hostname}\n")),
        ];
        for (name, text) in synthetic {
            self.file(&etc.join(name), text.into_bytes().into(), 0o644, false)?;
        }
        if self.spec.resolv_conf {
            let bytes = std::fs::read("/etc/resolv.conf").unwrap_or_default();
            self.file(&etc.join("resolv.conf"), bytes.into(), 0o644, false)?;
        }
        Ok(())
    }

    fn extra(&mut self) -> Result<(), Error> {
        for (host, inside) in &self.spec.extra_ro {
            if !inside.is_absolute() || inside.components().any(|c| matches!(c, Component::ParentDir)) {
                return Err(Error::invalid(format!(
                    "bind target {} must be an absolute path without '..'",
                    inside.display()
                )));
            }
            let top = inside.components().nth(1).map(|c| c.as_os_str().to_string_lossy().into_owned());
            if let Some(top) = top.filter(|t| OWN_DIRS.contains(&t.as_str())) {
                return Err(Error::invalid(format!(
                    "cannot bind {} at {}: /{top} belongs to the sandbox; choose another path",
                    host.display(),
                    inside.display()
                )));
            }
            if let Some((at, from)) = self.covering(inside) {
                // Already visible, read-only, when what covers it shows the same host
                // files there: a system directory or a host link; anything else would be
                // silently replaced by what the root already holds.
                let same = match from {
                    None => self.spec.source == RootSource::Host,
                    Some(from) => {
                        let host = std::fs::canonicalize(host).unwrap_or_else(|_| host.clone());
                        host.strip_prefix(from).ok() == inside.strip_prefix(at).ok()
                    }
                };
                if same {
                    continue;
                }
                return Err(Error::invalid(format!(
                    "cannot bind {} at {}: {} in the sandbox already shows {}; choose another path",
                    host.display(),
                    inside.display(),
                    at.display(),
                    from.as_ref().map_or("a link of the root".into(), |f| f.display().to_string())
                )));
            }
            self.bind_ro(host, inside)?;
        }
        Ok(())
    }

    fn proc_dev_tmp(&mut self) -> Result<(), Error> {
        let nosuid_nodev = libc::MS_NOSUID | libc::MS_NODEV;
        // /proc: the processes only where the kernel can (no /proc/sys then), else the
        // whole procfs with /proc/sys read-only; a zygote's is whole and bare.
        self.mkdir(Path::new("/proc"), 0o555)?;
        let proc_ = self.staged(Path::new("/proc"))?;
        let subset_pid = self.spec.proc_subset && !self.spec.nested_proc;
        self.ops.push(MountOp::Proc { target: proc_, subset_pid });
        if !self.spec.nested_proc && !subset_pid {
            let sys = self.staged(Path::new("/proc/sys"))?;
            self.ops.push(MountOp::Bind { src: sys.clone(), dst: sys.clone(), recursive: true });
            self.ops.push(MountOp::ReadOnly {
                path: sys,
                recursive: self.spec.setattr,
                setattr: self.spec.setattr,
                keep_flags: libc::MS_NOEXEC,
            });
        }

        // A minimal /dev.
        self.mkdir(Path::new("/dev"), 0o755)?;
        let dev_flags = libc::MS_NOSUID | libc::MS_NOEXEC | libc::MS_NODEV;
        self.ops.push(MountOp::Tmpfs {
            target: self.staged(Path::new("/dev"))?,
            flags: dev_flags,
            options: cstring("size=65536,nr_inodes=64,mode=755", "tmpfs options")?,
        });
        for name in ["null", "zero", "full", "random", "urandom"] {
            let inside = Path::new("/dev").join(name);
            let dst = self.staged(&inside)?;
            self.ops.push(MountOp::File {
                path: dst.clone(),
                contents: Arc::from(&[][..]),
                mode: 0o666,
                optional: false,
            });
            self.ops.push(MountOp::Bind { src: Self::host(&inside)?, dst, recursive: false });
        }
        for (name, target) in [
            ("fd", "/proc/self/fd"),
            ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"),
            ("stderr", "/proc/self/fd/2"),
            ("shm", "/tmp"),
        ] {
            let link = self.staged(&Path::new("/dev").join(name))?;
            self.ops.push(MountOp::Symlink { target: Self::host(Path::new(target))?, link });
        }
        self.ops.push(MountOp::ReadOnly {
            path: self.staged(Path::new("/dev"))?,
            recursive: false,
            setattr: self.spec.setattr,
            keep_flags: libc::MS_NOEXEC,
        });

        // /tmp and /workspace: the only writable file systems, size-capped.
        self.mkdir(Path::new("/tmp"), 0o1777)?;
        self.ops.push(MountOp::Tmpfs {
            target: self.staged(Path::new("/tmp"))?,
            flags: nosuid_nodev,
            options: cstring(tmpfs_options(self.spec.tmp_bytes, 0o1777), "tmpfs options")?,
        });
        if let Some((name, bytes)) = self.spec.mpl_cache.clone() {
            let dir = Path::new(MPL_CONFIG_DIR);
            self.ops.push(MountOp::Mkdir { path: self.staged(dir)?, mode: 0o700 });
            self.ops.push(MountOp::File {
                path: self.staged(&dir.join(name))?,
                contents: bytes,
                mode: 0o644,
                optional: true,
            });
        }
        self.mkdir(Path::new(airlock_core::paths::WORKSPACE_MOUNT), 0o755)?;
        self.ops.push(MountOp::Tmpfs {
            target: self.staged(Path::new(airlock_core::paths::WORKSPACE_MOUNT))?,
            flags: nosuid_nodev,
            options: cstring(tmpfs_options(self.spec.workspace_bytes, 0o755), "tmpfs options")?,
        });
        Ok(())
    }
}

/// The part of the plan that is the same for every sandbox of a backend (the new
/// root's tmpfs, the system directories, `/etc`, the extra binds): built from host
/// files once and reused for a while (see `lib.rs`).
#[derive(Debug, Clone)]
pub struct SystemPart {
    ops: Vec<MountOp>,
    made: BTreeSet<PathBuf>,
    covered: Vec<(PathBuf, Option<PathBuf>)>,
    sources: Vec<Source>,
}

impl SystemPart {
    /// What the plan binds from the host, by index ([`SourceFds`]).
    pub fn sources(&self) -> &[Source] {
        &self.sources
    }
}

/// Builds the [`SystemPart`] of a spec (reads the host's `/etc` files).
pub fn system_part(spec: &RootSpec) -> Result<SystemPart, Error> {
    let mut b = Builder { spec, ops: Vec::new(), made: BTreeSet::new(), covered: Vec::new(), sources: Vec::new() };
    b.ops.push(MountOp::MakePrivate);
    b.ops.push(MountOp::Tmpfs {
        target: b.staged(Path::new("/"))?,
        flags: libc::MS_NOSUID | libc::MS_NODEV,
        options: cstring(tmpfs_options(4 << 20, 0o755), "tmpfs options")?,
    });
    b.made.insert(PathBuf::from("/"));
    b.system()?;
    b.extra()?;
    if spec.taking == Taking::Sandbox {
        // Every source is taken before the staging tmpfs (the second operation) can
        // cover it, right after the mounts were made private (so are the copies).
        let takes = b
            .sources
            .iter()
            .enumerate()
            .map(|(index, s)| Ok(MountOp::Take { index, path: Builder::host(&s.path)?, recursive: s.recursive }));
        let takes = takes.collect::<Result<Vec<_>, Error>>()?;
        b.ops.splice(1..1, takes);
    }
    Ok(SystemPart { ops: b.ops, made: b.made, covered: b.covered, sources: b.sources })
}

/// The whole plan from a prebuilt [`SystemPart`]: adds `/proc`, `/dev`, `/tmp` and
/// `/workspace` (sized for this sandbox), `pivot_root` and the read-only remount of `/`.
/// Its [`MountOp::Attach`]es refer to `part.sources()` by index.
pub fn plan_with(spec: &RootSpec, part: &SystemPart) -> Result<Vec<MountOp>, Error> {
    let SystemPart { ops, made, covered, sources } = part.clone();
    let mut b = Builder { spec, ops, made, covered, sources };
    b.proc_dev_tmp()?;
    b.ops.push(MountOp::PivotRoot { new_root: b.staged(Path::new("/"))? });
    b.ops.push(MountOp::RemountRootReadOnly { setattr: spec.setattr });
    Ok(b.ops)
}

/// The mount operations that build the new root, in order, ending with `pivot_root`
/// and the read-only remount of `/`.
pub fn plan(spec: &RootSpec) -> Result<Vec<MountOp>, Error> {
    plan_with(spec, &system_part(spec)?)
}

/// True when the kernel can mount a procfs that shows only processes
/// (`subset=pid`, Linux 5.8+), judged from its release.
pub fn have_proc_subset() -> bool {
    // SAFETY: uname fills the zeroed struct it is given.
    let release = unsafe {
        let mut u: libc::utsname = std::mem::zeroed();
        if libc::uname(&mut u) != 0 {
            return false;
        }
        std::ffi::CStr::from_ptr(u.release.as_ptr()).to_string_lossy().into_owned()
    };
    proc_subset_in(&release)
}

fn proc_subset_in(release: &str) -> bool {
    let mut parts = release.split(|c: char| !c.is_ascii_digit()).filter(|p| !p.is_empty());
    let major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (major, minor) >= (5, 8)
}

/// True when the kernel has `mount_setattr(2)` (Linux 5.12+).
pub fn have_mount_setattr() -> bool {
    // SAFETY: an invalid call (bad fd, null attr) that only reports whether the
    // system call exists; nothing is changed.
    let r = unsafe { libc::syscall(libc::SYS_mount_setattr, -1, c"".as_ptr(), 0, std::ptr::null::<u8>(), 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ENOSYS)
}

/// An existing directory to stage the new root on (only the private mount namespace
/// ever sees the tmpfs mounted there).
pub fn staging_dir() -> PathBuf {
    for d in ["/tmp", "/mnt", "/var/tmp", "/media"] {
        let p = Path::new(d);
        if std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir()) {
            return p.to_path_buf();
        }
    }
    PathBuf::from("/tmp")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> RootSpec {
        RootSpec {
            staging: PathBuf::from("/tmp"),
            source: RootSource::Host,
            extra_ro: Vec::new(),
            tmp_bytes: 1 << 20,
            workspace_bytes: 2 << 20,
            mpl_cache: None,
            resolv_conf: false,
            setattr: true,
            nested_proc: false,
            proc_subset: true,
            taking: Taking::Host,
        }
    }

    fn lines(ops: &[MountOp]) -> Vec<String> {
        ops.iter().map(|o| o.describe()).collect()
    }

    #[test]
    fn tmpfs_size_zero_is_never_unlimited() {
        assert!(tmpfs_options(0, 0o755).starts_with("size=4096,"));
        assert_eq!(tmpfs_options(64 << 20, 0o1777), "size=67108864,nr_inodes=65536,mode=1777");
    }

    #[test]
    fn no_secret_is_ever_mounted_or_copied() {
        let ops = plan(&spec()).unwrap();
        for l in lines(&ops) {
            for secret in ["shadow", "gshadow", "sudoers", "/etc/ssh", "machine-id", "/root", "/home", "/private"] {
                assert!(!l.contains(secret), "{secret} appears in: {l}");
            }
        }
        // passwd is made up, not the host's.
        let passwd = ops.iter().find_map(|o| match o {
            MountOp::File { path, contents, .. } if path.to_bytes().ends_with(b"/etc/passwd") => Some(contents.clone()),
            _ => None,
        });
        assert!(passwd.unwrap().starts_with(b"root:x:0:0:root:/workspace:"));
    }

    #[test]
    fn every_host_bind_is_made_read_only() {
        let ops = plan(&spec()).unwrap();
        for (i, op) in ops.iter().enumerate() {
            if let MountOp::Bind { src, dst, .. } | MountOp::Attach { src, dst, .. } = op {
                let dev = dst.to_bytes().starts_with(b"/tmp/dev/");
                let ro = ops[i + 1..].iter().any(|o| matches!(o, MountOp::ReadOnly { path, .. } if path == dst));
                assert!(dev || ro, "bind of {src:?} at {dst:?} is never made read-only");
            }
        }
    }

    #[test]
    fn pivot_root_comes_last_and_root_ends_read_only() {
        let ops = plan(&spec()).unwrap();
        let n = ops.len();
        assert!(matches!(ops[0], MountOp::MakePrivate));
        assert!(matches!(ops[n - 2], MountOp::PivotRoot { .. }));
        assert!(matches!(ops[n - 1], MountOp::RemountRootReadOnly { .. }));
        let ls = lines(&ops);
        let ws = ls.iter().position(|l| l.starts_with("mount a tmpfs at /tmp/workspace")).unwrap();
        assert!(ls[ws].contains("size=2097152"), "{}", ls[ws]);
        assert!(ls.iter().any(|l| l.starts_with("mount a tmpfs at /tmp/tmp (size=1048576")));
        assert!(ls.iter().any(|l| l == "attach /usr at /tmp/usr"));
        assert!(ls.iter().any(|l| l.starts_with("mount a new /proc at /tmp/proc")));
    }

    /// The sandbox's /proc shows processes only: no host-wide file, and so no
    /// /proc/sys to make read-only. A zygote keeps a whole /proc (its children mount
    /// theirs); a kernel before 5.8 gets the whole procfs with /proc/sys read-only.
    #[test]
    fn proc_shows_only_processes_where_the_kernel_can() {
        let ls = lines(&plan(&spec()).unwrap());
        assert!(ls.contains(&"mount a new /proc at /tmp/proc (processes only: subset=pid)".to_string()), "{ls:?}");
        assert!(!ls.iter().any(|l| l.contains("/proc/sys")), "{ls:?}");
        let old = RootSpec { proc_subset: false, ..spec() };
        let ls = lines(&plan(&old).unwrap());
        assert!(ls.contains(&"mount a new /proc at /tmp/proc".to_string()), "{ls:?}");
        assert!(ls.contains(&"make /tmp/proc/sys read-only (recursively)".to_string()), "{ls:?}");
        let zygote = RootSpec { nested_proc: true, ..spec() };
        let ls = lines(&plan(&zygote).unwrap());
        assert!(ls.contains(&"mount a new /proc at /tmp/proc".to_string()), "{ls:?}");
        assert!(!ls.iter().any(|l| l.contains("/proc/sys")), "{ls:?}");
        assert!(proc_subset_in("6.18.44-fc-v1252") && proc_subset_in("5.8.0") && proc_subset_in("10.0"));
        assert!(!proc_subset_in("5.4.0-150-generic") && !proc_subset_in("4.18.0-553.el8_10.x86_64"));
        assert!(!proc_subset_in("garbage"));
    }

    #[test]
    fn extra_binds_are_checked() {
        let mut s = spec();
        s.extra_ro = vec![(PathBuf::from("/usr/lib"), PathBuf::from("/tmp/x"))];
        assert!(plan(&s).unwrap_err().to_string().contains("belongs to the sandbox"));
        s.extra_ro = vec![(PathBuf::from("/usr/lib"), PathBuf::from("relative"))];
        assert!(plan(&s).is_err());
        // Under /usr: already visible, no second bind.
        s.extra_ro = vec![(PathBuf::from("/usr/lib"), PathBuf::from("/usr/lib"))];
        let n = plan(&s).unwrap().iter().filter(|o| matches!(o, MountOp::Attach { .. })).count();
        assert_eq!(n, plan(&spec()).unwrap().iter().filter(|o| matches!(o, MountOp::Attach { .. })).count());
        // Elsewhere: parents are created, the bind is read-only.
        let dir = tempfile::tempdir().unwrap();
        s.extra_ro = vec![(dir.path().to_path_buf(), PathBuf::from("/opt/venv"))];
        let ls = lines(&plan(&s).unwrap());
        assert!(ls.contains(&"create directory /tmp/opt".to_string()), "{ls:?}");
        let canon = std::fs::canonicalize(dir.path()).unwrap();
        assert!(ls.contains(&format!("attach {} at /tmp/opt/venv", canon.display())), "{ls:?}");
        assert!(ls.contains(&"make /tmp/opt/venv read-only (recursively)".to_string()));
    }

    #[test]
    fn rootfs_mode_binds_the_directory_entries() {
        let root = tempfile::tempdir().unwrap();
        for d in ["usr", "etc", "proc", "tmp"] {
            std::fs::create_dir(root.path().join(d)).unwrap();
        }
        std::os::unix::fs::symlink("usr/bin", root.path().join("bin")).unwrap();
        let mut s = spec();
        let canon = std::fs::canonicalize(root.path()).unwrap();
        s.source = RootSource::Dir(canon.clone());
        let ls = lines(&plan(&s).unwrap());
        assert!(ls.contains(&format!("attach {}/usr at /tmp/usr", canon.display())), "{ls:?}");
        assert!(ls.contains(&format!("attach {}/etc at /tmp/etc", canon.display())));
        assert!(ls.contains(&"create link /tmp/bin -> usr/bin".to_string()));
        assert!(!ls.iter().any(|l| l.contains(&format!("{}/proc", root.path().display()))), "{ls:?}");
        assert!(!ls.iter().any(|l| l.contains("/etc/passwd")), "a rootfs keeps its own /etc");
    }

    /// Every source is taken before the staging tmpfs can cover it (rootless: by the
    /// child; as root, airlock takes them before the clone and the plan only attaches),
    /// and each is attached, made private and read-only in the new root.
    #[test]
    fn sources_are_taken_before_anything_can_cover_them() {
        let dir = tempfile::tempdir().unwrap();
        let canon = std::fs::canonicalize(dir.path()).unwrap();
        let mut s = RootSpec { taking: Taking::Sandbox, ..spec() };
        s.extra_ro = vec![(canon.clone(), inside_path(&canon, &[]))];
        let part = system_part(&s).unwrap();
        let ops = plan_with(&s, &part).unwrap();
        let ls = lines(&ops);
        let n = part.sources().len();
        assert!(n >= 2, "{ls:?}");
        assert_eq!(ls[0], "make every mount private");
        for (i, src) in part.sources().iter().enumerate() {
            assert_eq!(ls[1 + i], format!("take {} (a detached copy of its mounts)", src.path.display()));
        }
        assert!(ls[1 + n].starts_with("mount a tmpfs at /tmp ("), "the staging tmpfs comes after every take: {ls:?}");
        let dst = format!("/tmp/airlock{}", canon.display());
        assert!(ls.contains(&format!("attach {} at {dst}", canon.display())), "{ls:?}");
        assert!(ls.contains(&format!("make {dst} read-only (recursively)")), "{ls:?}");

        // Run it: each attach moves the taken tree into place, closes it and makes it private.
        let mut r = crate::sys::Recorder::default();
        let fds = SourceFds::new(n, &[]);
        for op in &ops {
            op.apply(&mut r, &fds).unwrap();
        }
        let c = r.calls;
        let first_tmpfs = c.iter().position(|l| l.contains("(tmpfs)")).unwrap();
        let takes: Vec<usize> = (0..c.len()).filter(|&i| c[i].starts_with("open_tree ")).collect();
        assert_eq!(takes.len(), n);
        assert!(takes.iter().all(|&i| i < first_tmpfs), "{c:#?}");
        let moved = c.iter().position(|l| l.starts_with("move_mount ") && l.ends_with(&dst)).unwrap();
        assert!(c[moved + 1].starts_with("close "), "{c:#?}");
        assert_eq!(c[moved + 2], format!("mount  -> {dst} () flags=0x44000 data="), "made private: {c:#?}");
        assert!(c[moved + 3].starts_with(&format!("mount_setattr {dst} recursive=true")), "{c:#?}");

        // As root the plan holds no take: airlock's descriptors are attached.
        let host = RootSpec { taking: Taking::Host, ..s.clone() };
        let ops = plan(&host).unwrap();
        assert!(!ops.iter().any(|o| matches!(o, MountOp::Take { .. })));
        let mut r = crate::sys::Recorder::default();
        let fds = SourceFds::new(n, &(100..100 + n as i32).collect::<Vec<_>>());
        for op in &ops {
            op.apply(&mut r, &fds).unwrap();
        }
        let moves = r.calls.iter().filter(|l| l.starts_with("move_mount ")).count();
        assert_eq!(moves, n, "{:#?}", r.calls);
        assert!(!r.calls.iter().any(|l| l.starts_with("open_tree") || l.contains(" flags=0x5000 ")), "{:#?}", r.calls);

        // Without open_tree: bound by path.
        let path = RootSpec { taking: Taking::Path, extra_ro: Vec::new(), ..s.clone() };
        let ops = plan(&path).unwrap();
        let mut r = crate::sys::Recorder::default();
        let fds = SourceFds::new(n, &[]);
        for op in &ops {
            op.apply(&mut r, &fds).unwrap();
        }
        assert!(r.calls.iter().any(|l| l == "mount /usr -> /tmp/usr () flags=0x5000 data="), "{:#?}", r.calls);
        assert!(!r.calls.iter().any(|l| l.starts_with("move_mount") || l.starts_with("open_tree")));
    }

    /// Without open_tree, a source below the staging directory cannot be reached once
    /// the new root's tmpfs is mounted there: refused with what to do, not a failure
    /// inside the child.
    #[test]
    fn binding_by_path_refuses_what_the_staging_tmpfs_covers() {
        let dir = tempfile::tempdir_in("/tmp").unwrap();
        let canon = std::fs::canonicalize(dir.path()).unwrap();
        let s = RootSpec { taking: Taking::Path, extra_ro: vec![(canon.clone(), PathBuf::from("/opt/sp"))], ..spec() };
        let e = plan(&s).unwrap_err().to_string();
        assert!(e.contains(&canon.display().to_string()) && e.contains("move it elsewhere"), "{e}");
        for taking in [Taking::Host, Taking::Sandbox] {
            assert!(plan(&RootSpec { taking, ..s.clone() }).is_ok());
        }
    }

    #[test]
    fn a_source_keeps_its_path_unless_the_sandbox_holds_it() {
        let none: &[OsString] = &[];
        for (host, inside) in [
            ("/opt/venv/lib", "/opt/venv/lib"),
            ("/usr/lib/python3/dist-packages", "/usr/lib/python3/dist-packages"),
            ("/tmp/venv", "/airlock/tmp/venv"),
            ("/tmp/with space/sp", "/airlock/tmp/with space/sp"),
            ("/workspace/sp", "/airlock/workspace/sp"),
            ("/proc/1/root/x", "/airlock/proc/1/root/x"),
            ("/dev/shm/sp", "/airlock/dev/shm/sp"),
            ("/run/user/1000/sp", "/airlock/run/user/1000/sp"),
            ("/airlock/x", "/airlock/airlock/x"),
            ("/tmpx/sp", "/tmpx/sp"),
        ] {
            assert_eq!(inside_path(Path::new(host), none), Path::new(inside), "{host}");
        }
        // A root file system's own entries are taken too.
        let entries = [OsString::from("usr"), OsString::from("opt")];
        assert_eq!(inside_path(Path::new("/opt/sp"), &entries), Path::new("/airlock/opt/sp"));
        assert_eq!(inside_path(Path::new("/srv/sp"), &entries), Path::new("/srv/sp"));
    }

    /// A bind below something the root already shows from elsewhere would be hidden by
    /// it (or hide it): refused, not skipped. Below a bind of the same host directory it
    /// is already visible.
    #[test]
    fn a_bind_hidden_by_another_source_is_refused() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("usr")).unwrap();
        let canon = std::fs::canonicalize(root.path()).unwrap();
        let s = RootSpec {
            source: RootSource::Dir(canon.clone()),
            extra_ro: vec![(PathBuf::from("/usr/lib"), PathBuf::from("/usr/lib"))],
            ..spec()
        };
        let e = plan(&s).unwrap_err().to_string();
        assert!(e.contains(&format!("/usr in the sandbox already shows {}/usr", canon.display())), "{e}");
        let s = RootSpec { extra_ro: vec![(canon.join("usr"), PathBuf::from("/usr"))], ..s };
        assert!(plan(&s).is_ok(), "the same directory again is already visible");
    }

    /// As root, airlock opens sources with its own privileges: a link put in a
    /// source's place (or in a directory above it) after planning is refused, never
    /// followed to somewhere the operator did not name; so is a change of type.
    #[test]
    fn taking_never_follows_a_link_put_in_a_source_s_place() {
        if taking() != Taking::Host {
            eprintln!("skipped: only a process that may clone mounts (root) takes sources itself");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(dir.path()).unwrap();
        std::fs::create_dir_all(base.join("a/sp")).unwrap();
        let src = Source { path: base.join("a/sp"), dir: true, recursive: true };
        assert_eq!(take_sources(std::slice::from_ref(&src), true).unwrap().len(), 1);
        // The source itself becomes a link.
        std::fs::remove_dir(base.join("a/sp")).unwrap();
        std::os::unix::fs::symlink("/etc", base.join("a/sp")).unwrap();
        let e = take_sources(std::slice::from_ref(&src), true).unwrap_err().to_string();
        assert!(e.contains("a symbolic link took its place"), "{e}");
        // A directory above it becomes a link to a look-alike.
        std::fs::remove_file(base.join("a/sp")).unwrap();
        std::fs::create_dir_all(base.join("b/sp")).unwrap();
        std::fs::rename(base.join("a"), base.join("old")).unwrap();
        std::os::unix::fs::symlink(base.join("b"), base.join("a")).unwrap();
        let e = take_sources(std::slice::from_ref(&src), true).unwrap_err().to_string();
        assert!(e.contains("a symbolic link took its place"), "{e}");
        // A file where a directory was planned.
        let file = Source { dir: false, ..src.clone() };
        std::fs::remove_file(base.join("a")).unwrap();
        std::fs::create_dir_all(base.join("a/sp")).unwrap();
        let e = take_sources(&[file], true).unwrap_err().to_string();
        assert!(e.contains("changed type"), "{e}");
    }
}
