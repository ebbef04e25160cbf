//! Starting QEMU jailed, as defence in depth behind the VM boundary (the way
//! Firecracker's jailer wraps Firecracker).
//!
//! QEMU is cloned into new user, mount, PID, network, IPC and UTS namespaces. Inside:
//! root is mapped to an unprivileged host uid; the mount namespace sees only a
//! read-only `/usr` (QEMU, its libraries and firmware), `/dev/null`, `/dev/zero`,
//! `/dev/urandom` (and `/dev/kvm` when asked) on an otherwise empty, read-only tmpfs
//! root, plus its own `/proc`; the network namespace has no interface but a down
//! loopback; QEMU is PID 1 of its PID namespace and sees no other process. Its
//! environment is empty, every descriptor but the ones handed over is closed,
//! `no_new_privs` is set, and a cgroup caps its memory, threads and CPU. QEMU's own
//! seccomp filter (`-sandbox on,...`, on the command line) comes on top. QEMU opens
//! the guest's kernel, initramfs, root image and snapshot through inherited
//! descriptors (`/proc/self/fd/N`), never by host path.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use airlock_core::Error;
use nix::sched::CloneFlags;
use nix::unistd::Pid;

use crate::cgroup::Cgroup;

/// Who QEMU is on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostIdentity {
    /// An unprivileged uid/gid (root inside the user namespace maps to it).
    Unprivileged(u32, u32),
    /// Host root, mapped into the user namespace (only used for KVM when `/dev/kvm`
    /// is accessible to root alone); namespaces, seccomp and the cgroup still apply.
    Root,
}

static NEXT_UID: AtomicU32 = AtomicU32::new(0);

/// The identity for the next jailed QEMU: a uid of its own from a high range when
/// airlock runs as root (so VMs cannot signal or read each other), else the caller's.
pub fn next_identity() -> HostIdentity {
    let euid = nix::unistd::geteuid().as_raw();
    if euid != 0 {
        return HostIdentity::Unprivileged(euid, nix::unistd::getegid().as_raw());
    }
    let n = NEXT_UID.fetch_add(1, Ordering::Relaxed);
    let uid = 1_700_000_000 + (std::process::id() % 1000) * 10_000 + n % 10_000;
    HostIdentity::Unprivileged(uid, uid)
}

/// How to start the jailed process.
#[derive(Debug)]
pub struct JailSpec {
    /// Absolute path of the program (inside `/usr`).
    pub program: String,
    /// Arguments, without the program name.
    pub args: Vec<String>,
    /// Descriptors to hand over: (descriptor, number in the child). 0, 1 and 2 must
    /// be among them.
    pub fds: Vec<(OwnedFd, RawFd)>,
    /// The KVM device node to bind as the jail's `/dev/kvm` (the host's
    /// `/dev/kvm`, or a private node owned by QEMU's uid), if any.
    pub kvm: Option<PathBuf>,
    /// Who the process is on the host.
    pub identity: HostIdentity,
}

/// A jailed process.
#[derive(Debug)]
pub struct Jailed {
    /// Its pid (in airlock's PID namespace).
    pub pid: Pid,
}

fn cstr(s: &str) -> Result<CString, Error> {
    CString::new(s).map_err(|_| Error::invalid(format!("{s:?} contains a NUL byte")))
}

/// Mount flags of `/usr` that an unprivileged bind remount must keep.
fn locked_flags(path: &str) -> libc::c_ulong {
    let Ok(st) = nix::sys::statvfs::statvfs(path) else { return 0 };
    use nix::sys::statvfs::FsFlags;
    let f = st.flags();
    let mut m: libc::c_ulong = 0;
    for (fs, ms) in [
        (FsFlags::ST_NOSUID, libc::MS_NOSUID),
        (FsFlags::ST_NODEV, libc::MS_NODEV),
        (FsFlags::ST_NOEXEC, libc::MS_NOEXEC),
        (FsFlags::ST_NOATIME, libc::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, libc::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, libc::MS_RELATIME),
    ] {
        if f.contains(fs) {
            m |= ms;
        }
    }
    m
}

/// Everything the child needs, prepared before `clone` (the child must not allocate).
struct Prepared {
    program: CString,
    argv: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    envp_ptrs: Vec<*const libc::c_char>,
    fds: Vec<(RawFd, RawFd)>,
    max_fd: RawFd,
    sync_r: RawFd,
    err_w: RawFd,
    usr_flags: libc::c_ulong,
    devs: Vec<Dev>,
    s: Strings,
}

/// A device node to bind into the jail. The child opens `src` (O_PATH) while the
/// host's tree is still visible, parks the descriptor at `fd`, and binds it through
/// `via` (`/proc/self/fd/<fd>`) once the jail's tmpfs root shadows `/tmp`, where a
/// private node may live.
struct Dev {
    src: CString,
    fd: RawFd,
    via: CString,
    dst: CString,
}

/// Where the child parks device descriptors (clear of the handed-over ones).
const DEV_FD_BASE: RawFd = 900;

/// Fixed strings used by the child.
struct Strings {
    root: CString,
    tmpfs: CString,
    tmpfs_opts: CString,
    usr_src: CString,
    usr_dst: CString,
    proc_: CString,
    proc_dst: CString,
    dev_dir: CString,
    old: CString,
    old_abs: CString,
    dot: CString,
    slash: CString,
    links: Vec<(CString, CString)>,
    hostname: CString,
}

/// Failure steps reported by the child (for the error message).
const STEPS: [&str; 16] = [
    "waiting for the parent",
    "setsid",
    "making mounts private",
    "mounting the jail's tmpfs root",
    "bind-mounting /usr",
    "remounting /usr read-only",
    "creating /dev nodes",
    "pivot_root",
    "detaching the old root",
    "mounting /proc",
    "remounting the root read-only",
    "arranging descriptors",
    "setting no_new_privs",
    "exec",
    "creating the jail's directories",
    "switching to the mapped identity",
];

/// The child's side. Only async-signal-safe calls on prepared data.
fn child(p: &Prepared) -> isize {
    // SAFETY: every call below is a plain system call on descriptors and
    // NUL-terminated strings prepared by the parent before clone; nothing allocates.
    unsafe {
        let fail = |step: u32| -> isize {
            let errno = *libc::__errno_location();
            let msg = [step, errno as u32];
            libc::write(p.err_w, msg.as_ptr().cast(), 8);
            libc::_exit(127);
        };
        let mut b = [0u8; 1];
        if libc::read(p.sync_r, b.as_mut_ptr().cast(), 1) != 1 || b[0] != 1 {
            return fail(0);
        }
        if libc::setsid() < 0 {
            return fail(1);
        }
        // Become the namespace's root, i.e. the mapped host identity: until now we
        // still carry the parent's host credentials. Supplementary groups are dropped
        // where the parent was allowed to leave setgroups enabled (it was root).
        // Raw system calls: glibc's wrappers broadcast credential changes to every
        // thread it knows of, and in a child cloned from a multi-threaded process
        // those threads do not exist (the wrapper can block forever on its lock).
        libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>());
        if libc::syscall(libc::SYS_setresgid, 0, 0, 0) != 0 || libc::syscall(libc::SYS_setresuid, 0, 0, 0) != 0 {
            return fail(15);
        }
        let s = &p.s;
        let null = std::ptr::null::<libc::c_char>();
        if libc::mount(null, s.slash.as_ptr(), null, libc::MS_REC | libc::MS_PRIVATE, std::ptr::null()) != 0 {
            return fail(2);
        }
        for d in &p.devs {
            let fd = libc::open(d.src.as_ptr(), libc::O_PATH | libc::O_CLOEXEC);
            if fd < 0 || libc::dup3(fd, d.fd, libc::O_CLOEXEC) < 0 {
                return fail(6);
            }
            libc::close(fd);
        }
        if libc::mount(
            s.tmpfs.as_ptr(),
            s.root.as_ptr(),
            s.tmpfs.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            s.tmpfs_opts.as_ptr().cast(),
        ) != 0
        {
            return fail(3);
        }
        if libc::chdir(s.root.as_ptr()) != 0 {
            return fail(3);
        }
        for d in [&s.usr_dst, &s.proc_dst, &s.dev_dir, &s.old] {
            if libc::mkdir(d.as_ptr(), 0o755) != 0 {
                return fail(14);
            }
        }
        if libc::mount(s.usr_src.as_ptr(), s.usr_dst.as_ptr(), null, libc::MS_BIND | libc::MS_REC, std::ptr::null())
            != 0
        {
            return fail(4);
        }
        let ro = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | p.usr_flags;
        if libc::mount(null, s.usr_dst.as_ptr(), null, ro, std::ptr::null()) != 0 {
            return fail(5);
        }
        for (target, link) in &s.links {
            libc::symlink(target.as_ptr(), link.as_ptr());
        }
        for d in &p.devs {
            let fd = libc::open(d.dst.as_ptr(), libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC, 0o644);
            if fd < 0 {
                return fail(6);
            }
            libc::close(fd);
            if libc::mount(d.via.as_ptr(), d.dst.as_ptr(), null, libc::MS_BIND, std::ptr::null()) != 0 {
                return fail(6);
            }
        }
        // A fresh /proc for the new PID namespace; mounted while the host's /proc is
        // still visible (the kernel only lets a user namespace mount proc then).
        if libc::mount(
            s.proc_.as_ptr(),
            s.proc_dst.as_ptr(),
            s.proc_.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            std::ptr::null(),
        ) != 0
        {
            return fail(9);
        }
        if libc::syscall(libc::SYS_pivot_root, s.dot.as_ptr(), s.old.as_ptr()) != 0 {
            return fail(7);
        }
        if libc::chdir(s.slash.as_ptr()) != 0 || libc::umount2(s.old_abs.as_ptr(), libc::MNT_DETACH) != 0 {
            return fail(8);
        }
        libc::rmdir(s.old_abs.as_ptr());
        if libc::mount(
            null,
            s.slash.as_ptr(),
            null,
            libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
            std::ptr::null(),
        ) != 0
        {
            return fail(10);
        }
        libc::sethostname(s.hostname.as_ptr(), s.hostname.as_bytes().len());
        // Move every handed-over descriptor out of the way first, then into place.
        let mut tmp = [0 as RawFd; 16];
        for (i, (src, _)) in p.fds.iter().enumerate() {
            let t = libc::fcntl(*src, libc::F_DUPFD_CLOEXEC, 1000);
            if t < 0 {
                return fail(11);
            }
            tmp[i] = t;
        }
        for (i, (_, dst)) in p.fds.iter().enumerate() {
            if libc::dup2(tmp[i], *dst) < 0 {
                return fail(11);
            }
        }
        if libc::syscall(libc::SYS_close_range, (p.max_fd + 1) as libc::c_uint, libc::c_uint::MAX, 0) != 0 {
            // Old kernels: close one by one.
            for fd in (p.max_fd + 1)..4096 {
                if fd != p.err_w {
                    libc::close(fd);
                }
            }
        }
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return fail(12);
        }
        libc::execve(p.program.as_ptr(), p.argv_ptrs.as_ptr(), p.envp_ptrs.as_ptr());
        fail(13)
    }
}

/// Starts `spec.program` jailed. Returns once it has exec'd (or failed to).
pub fn spawn(spec: JailSpec, cgroup: Option<&Cgroup>) -> Result<Jailed, Error> {
    if spec.fds.len() > 16 {
        return Err(Error::host("too many descriptors for the jail"));
    }
    let program = cstr(&spec.program)?;
    let mut argv = vec![program.clone()];
    for a in &spec.args {
        argv.push(cstr(a)?);
    }
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|c| c.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let envp_ptrs = vec![std::ptr::null()];
    let (sync_r, sync_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Error::host(format!("pipe: {e}")))?;
    let (err_r, err_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Error::host(format!("pipe: {e}")))?;
    let c = |s: &str| CString::new(s).expect("static strings have no NUL");
    let mut nodes = vec![(c("/dev/null"), "null"), (c("/dev/zero"), "zero"), (c("/dev/urandom"), "urandom")];
    if let Some(node) = &spec.kvm {
        nodes.push((cstr(&node.to_string_lossy())?, "kvm"));
    }
    let devs = nodes
        .into_iter()
        .zip(DEV_FD_BASE..)
        .map(|((src, name), fd)| Dev {
            src,
            fd,
            via: c(&format!("/proc/self/fd/{fd}")),
            dst: c(&format!("dev/{name}")),
        })
        .collect();
    let max_fd = spec.fds.iter().map(|(_, d)| *d).max().unwrap_or(2);
    let prepared = Prepared {
        program,
        argv_ptrs,
        argv,
        envp_ptrs,
        fds: spec.fds.iter().map(|(fd, d)| (fd.as_raw_fd(), *d)).collect(),
        max_fd,
        sync_r: sync_r.as_raw_fd(),
        err_w: err_w.as_raw_fd(),
        usr_flags: locked_flags("/usr"),
        devs,
        s: Strings {
            // The jail's root is a tmpfs mounted over /tmp inside the new mount
            // namespace (any directory every uid can reach would do).
            root: c("/tmp"),
            tmpfs: c("tmpfs"),
            tmpfs_opts: c("mode=0755,size=1m"),
            usr_src: c("/usr"),
            usr_dst: c("usr"),
            proc_: c("proc"),
            proc_dst: c("proc"),
            dev_dir: c("dev"),
            old: c("old"),
            old_abs: c("/old"),
            dot: c("."),
            slash: c("/"),
            links: vec![
                (c("usr/lib"), c("lib")),
                (c("usr/lib64"), c("lib64")),
                (c("usr/bin"), c("bin")),
                (c("usr/sbin"), c("sbin")),
            ],
            hostname: c("airlock-vmm"),
        },
    };
    let _ = &prepared.argv;
    let flags = CloneFlags::CLONE_NEWUSER
        | CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWNET
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWCGROUP;
    let mut stack = vec![0u8; 256 * 1024];
    let cb: nix::sched::CloneCb<'_> = Box::new(|| child(&prepared));
    // SAFETY: without CLONE_VM the child gets a copy of our memory; it runs `child`,
    // which only makes system calls on data prepared above and then execs or exits.
    let pid = unsafe { nix::sched::clone(cb, &mut stack, flags, Some(libc::SIGCHLD)) }
        .map_err(|e| Error::host(format!("cannot create QEMU's namespaces (clone): {e}")))?;
    drop(err_w);
    drop(sync_r);
    let abort = |why: String| -> Error {
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(pid, None);
        Error::host(why)
    };
    let (uid, gid) = match spec.identity {
        HostIdentity::Unprivileged(u, g) => (u, g),
        HostIdentity::Root => (0, 0),
    };
    let proc_dir = format!("/proc/{}", pid.as_raw());
    if !nix::unistd::geteuid().is_root() {
        // Required before an unprivileged gid_map write.
        let _ = std::fs::write(format!("{proc_dir}/setgroups"), "deny");
    }
    if let Err(e) = std::fs::write(format!("{proc_dir}/uid_map"), format!("0 {uid} 1")) {
        return Err(abort(format!("mapping QEMU's user namespace (uid {uid}): {e}")));
    }
    if let Err(e) = std::fs::write(format!("{proc_dir}/gid_map"), format!("0 {gid} 1")) {
        return Err(abort(format!("mapping QEMU's user namespace (gid {gid}): {e}")));
    }
    if let Some(cg) = cgroup
        && let Err(e) = cg.add(pid.as_raw())
    {
        return Err(abort(format!("moving QEMU into its cgroup: {e}")));
    }
    let sync_w = std::fs::File::from(sync_w);
    use std::io::{Read, Write};
    if (&sync_w).write_all(&[1]).is_err() {
        return Err(abort("the jailed process died before it started".into()));
    }
    drop(sync_w);
    drop(spec.fds);
    let mut msg = [0u8; 8];
    let mut err_r = std::fs::File::from(err_r);
    match err_r.read(&mut msg) {
        Ok(0) => Ok(Jailed { pid }),
        Ok(_) => {
            let step = u32::from_ne_bytes(msg[..4].try_into().expect("4 bytes")) as usize;
            let errno = i32::from_ne_bytes(msg[4..].try_into().expect("4 bytes"));
            let what = STEPS.get(step).copied().unwrap_or("setup");
            let _ = nix::sys::wait::waitpid(pid, None);
            Err(Error::host(format!("jailing QEMU failed at '{what}': {}", std::io::Error::from_raw_os_error(errno))))
        }
        Err(e) => Err(abort(format!("reading the jail's status: {e}"))),
    }
}

/// `/dev/null` opened for reading (QEMU's stdin).
pub fn dev_null() -> Result<OwnedFd, Error> {
    let f = std::fs::File::open("/dev/null").map_err(|e| Error::io("opening /dev/null", e))?;
    Ok(OwnedFd::from(f))
}

/// A device node (e.g. KVM's) owned by one jailed uid alone: in a directory of its
/// own (mode 0700, owned by that uid) so that nobody else can even reach it.
#[derive(Debug)]
pub struct PrivateDevice {
    /// Held so that the directory and the node go away with this value.
    _dir: tempfile::TempDir,
    node: PathBuf,
}

impl PrivateDevice {
    /// Creates a character device node with device number `rdev`, owned by
    /// `uid`/`gid` with mode 0600, in a new directory under the temporary directory,
    /// which must be on a filesystem that honours device nodes.
    pub fn create(rdev: u64, uid: u32, gid: u32) -> Result<Self, String> {
        use nix::sys::stat::{Mode, SFlag, mknod};
        let dir = tempfile::Builder::new()
            .prefix("airlock-dev-")
            .tempdir()
            .map_err(|e| format!("creating a directory for a private device node: {e}"))?;
        let st =
            nix::sys::statvfs::statvfs(dir.path()).map_err(|e| format!("statvfs {}: {e}", dir.path().display()))?;
        if st.flags().contains(nix::sys::statvfs::FsFlags::ST_NODEV) {
            return Err(format!(
                "{} is on a nodev filesystem (point TMPDIR at one that allows device nodes)",
                dir.path().display()
            ));
        }
        let node = dir.path().join("dev");
        mknod(&node, SFlag::S_IFCHR, Mode::from_bits_truncate(0o600), rdev)
            .map_err(|e| format!("mknod {}: {e}", node.display()))?;
        for p in [&node, &dir.path().to_path_buf()] {
            std::os::unix::fs::chown(p, Some(uid), Some(gid)).map_err(|e| format!("chown {}: {e}", p.display()))?;
        }
        Ok(PrivateDevice { _dir: dir, node })
    }

    /// The node's path.
    pub fn path(&self) -> &Path {
        &self.node
    }
}
