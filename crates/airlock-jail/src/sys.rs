//! The system-call seam of the containment sequence.
//!
//! Everything the cloned child does goes through [`Sys`]. In production that is
//! [`RealSys`]: thin wrappers over raw system calls that allocate nothing, because the
//! child is a copy of a multi-threaded process made by a raw `clone` (a lock another
//! thread held at that moment — the allocator's, say — stays locked forever in the
//! copy). In unit tests it is a recorder, so the mount and namespace sequence can be
//! checked without root.

use std::ffi::CStr;

use seccompiler::sock_filter;

/// An `errno` value.
pub type Errno = i32;
/// The result of a call through the seam.
pub type SysResult<T> = Result<T, Errno>;

/// The system calls the containment sequence makes, one method each.
pub trait Sys {
    /// Reads one byte; `None` at end of file.
    fn read_byte(&mut self, fd: i32) -> SysResult<Option<u8>>;
    /// Sends one message on a socket, optionally passing a file descriptor with it.
    fn send(&mut self, fd: i32, data: &[u8], pass_fd: Option<i32>) -> SysResult<()>;
    /// `unshare(2)`.
    fn unshare(&mut self, flags: i32) -> SysResult<()>;
    /// `setresgid(gid, gid, gid)`.
    fn setresgid(&mut self, gid: u32) -> SysResult<()>;
    /// `setresuid(uid, uid, uid)`.
    fn setresuid(&mut self, uid: u32) -> SysResult<()>;
    /// `prctl(option, arg2, arg3, 0, 0)`.
    fn prctl(&mut self, option: i32, arg2: u64, arg3: u64) -> SysResult<i32>;
    /// `mount(2)`.
    fn mount(
        &mut self,
        src: Option<&CStr>,
        target: &CStr,
        fstype: Option<&CStr>,
        flags: libc::c_ulong,
        data: Option<&CStr>,
    ) -> SysResult<()>;
    /// `mount_setattr(2)` setting `attr_set` on the mount at `path` (and below it when `recursive`).
    fn mount_setattr(&mut self, path: &CStr, recursive: bool, attr_set: u64) -> SysResult<()>;
    /// `umount2(target, MNT_DETACH)`.
    fn umount_detach(&mut self, target: &CStr) -> SysResult<()>;
    /// `open_tree(AT_FDCWD, path, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_SYMLINK_NOFOLLOW)`,
    /// with `AT_RECURSIVE` when `recursive`: a detached copy of the mounts at `path`.
    fn open_tree(&mut self, path: &CStr, recursive: bool) -> SysResult<i32>;
    /// `move_mount(fd, "", AT_FDCWD, target, MOVE_MOUNT_F_EMPTY_PATH)`: attaches the
    /// detached tree `fd` at `target`.
    fn move_mount(&mut self, fd: i32, target: &CStr) -> SysResult<()>;
    /// `mkdir(2)`.
    fn mkdir(&mut self, path: &CStr, mode: u32) -> SysResult<()>;
    /// `symlink(2)`.
    fn symlink(&mut self, target: &CStr, link: &CStr) -> SysResult<()>;
    /// `open(2)`; the descriptor is close-on-exec.
    fn open(&mut self, path: &CStr, flags: i32, mode: u32) -> SysResult<i32>;
    /// Writes all of `data`.
    fn write_all(&mut self, fd: i32, data: &[u8]) -> SysResult<()>;
    /// `close(2)`, errors ignored.
    fn close(&mut self, fd: i32);
    /// `pivot_root(2)`.
    fn pivot_root(&mut self, new_root: &CStr, put_old: &CStr) -> SysResult<()>;
    /// `chdir(2)`.
    fn chdir(&mut self, path: &CStr) -> SysResult<()>;
    /// `sethostname(2)`.
    fn sethostname(&mut self, name: &[u8]) -> SysResult<()>;
    /// Brings the loopback interface of the current network namespace up.
    fn loopback_up(&mut self) -> SysResult<()>;
    /// `setrlimit(resource, {value, value})`.
    fn setrlimit(&mut self, resource: u32, value: u64) -> SysResult<()>;
    /// `capset` with empty effective, permitted and inheritable sets.
    fn clear_capabilities(&mut self) -> SysResult<()>;
    /// `fcntl(fd, F_DUPFD_CLOEXEC, min)`.
    fn dup_above(&mut self, fd: i32, min: i32) -> SysResult<i32>;
    /// `dup2(from, to)` (the new descriptor is inherited across exec).
    fn dup2(&mut self, from: i32, to: i32) -> SysResult<()>;
    /// Marks every descriptor from `first` up close-on-exec.
    fn cloexec_from(&mut self, first: u32) -> SysResult<()>;
    /// `setsid(2)`.
    fn setsid(&mut self) -> SysResult<()>;
    /// Every signal's disposition back to the default (the mask is left alone).
    fn reset_signal_handlers(&mut self) -> SysResult<()>;
    /// Unblocks every signal.
    fn unblock_signals(&mut self) -> SysResult<()>;
    /// `landlock_create_ruleset(2)` with an attribute struct of `attr_size` bytes.
    fn landlock_create_ruleset(
        &mut self,
        handled_fs: u64,
        handled_net: u64,
        scoped: u64,
        attr_size: usize,
    ) -> SysResult<i32>;
    /// `landlock_add_rule(2)` with a path-beneath rule.
    fn landlock_add_path_rule(&mut self, ruleset: i32, allowed: u64, parent_fd: i32) -> SysResult<()>;
    /// `landlock_restrict_self(2)`.
    fn landlock_restrict_self(&mut self, ruleset: i32) -> SysResult<()>;
    /// `seccomp(SECCOMP_SET_MODE_FILTER, 0, prog)`.
    fn seccomp_install(&mut self, prog: &[sock_filter]) -> SysResult<()>;
    /// `execve(2)`; returns only on failure.
    fn execve(&mut self, image: &crate::process::ExecImage) -> Errno;
}

/// The real system calls. Nothing here allocates.
#[derive(Debug, Default)]
pub struct RealSys;

fn errno() -> Errno {
    // SAFETY: __errno_location returns a valid pointer to this thread's errno.
    unsafe { *libc::__errno_location() }
}

fn check(r: libc::c_long) -> SysResult<libc::c_long> {
    if r < 0 { Err(errno()) } else { Ok(r) }
}

fn check_int(r: libc::c_int) -> SysResult<libc::c_int> {
    if r < 0 { Err(errno()) } else { Ok(r) }
}

fn opt_ptr(s: Option<&CStr>) -> *const libc::c_char {
    s.map_or(std::ptr::null(), |s| s.as_ptr())
}

/// `struct mount_attr` of `mount_setattr(2)`.
#[repr(C)]
pub(crate) struct MountAttr {
    pub(crate) attr_set: u64,
    pub(crate) attr_clr: u64,
    pub(crate) propagation: u64,
    pub(crate) userns_fd: u64,
}

/// `struct landlock_ruleset_attr` (ABI 6 layout; shorter sizes are passed to older kernels).
#[repr(C)]
struct RulesetAttr {
    handled_access_fs: u64,
    handled_access_net: u64,
    scoped: u64,
}

/// `struct landlock_path_beneath_attr` (packed in the kernel's UAPI).
#[repr(C, packed)]
struct PathBeneathAttr {
    allowed_access: u64,
    parent_fd: i32,
}

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

/// `struct __user_cap_data_struct`.
#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
const LANDLOCK_RULE_PATH_BENEATH: libc::c_int = 1;
const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
const SECCOMP_SET_MODE_FILTER: libc::c_uint = 1;

impl Sys for RealSys {
    fn read_byte(&mut self, fd: i32) -> SysResult<Option<u8>> {
        let mut b = 0u8;
        loop {
            // SAFETY: reads at most one byte into a live local.
            let r = unsafe { libc::read(fd, (&mut b as *mut u8).cast(), 1) };
            match r {
                0 => return Ok(None),
                1 => return Ok(Some(b)),
                _ if errno() == libc::EINTR => continue,
                _ => return Err(errno()),
            }
        }
    }

    fn send(&mut self, fd: i32, data: &[u8], pass_fd: Option<i32>) -> SysResult<()> {
        let mut iov = libc::iovec { iov_base: data.as_ptr() as *mut libc::c_void, iov_len: data.len() };
        // Room for one cmsghdr carrying one int, 8-byte aligned (CMSG_SPACE(4) is 24 on 64-bit).
        let mut cbuf = [0u64; 4];
        // SAFETY: an all-zero msghdr is valid; the pointers set below stay live for the call.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if let Some(pass) = pass_fd {
            // SAFETY: CMSG_SPACE/CMSG_LEN are arithmetic on a constant.
            let (space, len) = unsafe { (libc::CMSG_SPACE(4) as usize, libc::CMSG_LEN(4) as usize) };
            if space > std::mem::size_of_val(&cbuf) {
                return Err(libc::EINVAL);
            }
            msg.msg_control = cbuf.as_mut_ptr().cast();
            msg.msg_controllen = space as _;
            // SAFETY: msg_control points to `space` writable, aligned bytes, so the first
            // header and its data fit; CMSG_FIRSTHDR/CMSG_DATA only compute pointers into it.
            unsafe {
                let c = libc::CMSG_FIRSTHDR(&msg);
                (*c).cmsg_level = libc::SOL_SOCKET;
                (*c).cmsg_type = libc::SCM_RIGHTS;
                (*c).cmsg_len = len as _;
                std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<i32>(), pass);
            }
        }
        loop {
            // SAFETY: msg and everything it points to are live locals.
            let r = unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL) };
            if r >= 0 {
                return Ok(());
            }
            if errno() != libc::EINTR {
                return Err(errno());
            }
        }
    }

    fn unshare(&mut self, flags: i32) -> SysResult<()> {
        // SAFETY: unshare takes a flag word only.
        check_int(unsafe { libc::unshare(flags) }).map(drop)
    }

    fn setresgid(&mut self, gid: u32) -> SysResult<()> {
        // Raw system call: the libc wrapper would try to signal the (absent) other threads.
        // SAFETY: plain integer arguments.
        check(unsafe { libc::syscall(libc::SYS_setresgid, gid, gid, gid) }).map(drop)
    }

    fn setresuid(&mut self, uid: u32) -> SysResult<()> {
        // SAFETY: plain integer arguments; raw for the same reason as setresgid.
        check(unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) }).map(drop)
    }

    fn prctl(&mut self, option: i32, arg2: u64, arg3: u64) -> SysResult<i32> {
        // SAFETY: every option used by this crate takes integer arguments only.
        check_int(unsafe { libc::prctl(option, arg2 as libc::c_ulong, arg3 as libc::c_ulong, 0, 0) })
    }

    fn mount(
        &mut self,
        src: Option<&CStr>,
        target: &CStr,
        fstype: Option<&CStr>,
        flags: libc::c_ulong,
        data: Option<&CStr>,
    ) -> SysResult<()> {
        // SAFETY: every pointer is null or a NUL-terminated string that outlives the call.
        check_int(unsafe { libc::mount(opt_ptr(src), target.as_ptr(), opt_ptr(fstype), flags, opt_ptr(data).cast()) })
            .map(drop)
    }

    fn mount_setattr(&mut self, path: &CStr, recursive: bool, attr_set: u64) -> SysResult<()> {
        let attr = MountAttr { attr_set, attr_clr: 0, propagation: 0, userns_fd: 0 };
        let flags = libc::AT_SYMLINK_NOFOLLOW | if recursive { libc::AT_RECURSIVE } else { 0 };
        // SAFETY: path is NUL-terminated and attr is a live struct of the size passed.
        check(unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                libc::AT_FDCWD,
                path.as_ptr(),
                flags,
                &attr as *const MountAttr,
                std::mem::size_of::<MountAttr>(),
            )
        })
        .map(drop)
    }

    fn umount_detach(&mut self, target: &CStr) -> SysResult<()> {
        // SAFETY: target is NUL-terminated.
        check_int(unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) }).map(drop)
    }

    fn open_tree(&mut self, path: &CStr, recursive: bool) -> SysResult<i32> {
        let flags = libc::OPEN_TREE_CLONE
            | libc::OPEN_TREE_CLOEXEC
            | libc::AT_SYMLINK_NOFOLLOW as libc::c_uint
            | if recursive { libc::AT_RECURSIVE as libc::c_uint } else { 0 };
        // SAFETY: path is NUL-terminated; the rest are integers.
        check(unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, path.as_ptr(), flags) }).map(|fd| fd as i32)
    }

    fn move_mount(&mut self, fd: i32, target: &CStr) -> SysResult<()> {
        // SAFETY: both paths are NUL-terminated; the rest are integers.
        check(unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                fd,
                c"".as_ptr(),
                libc::AT_FDCWD,
                target.as_ptr(),
                libc::MOVE_MOUNT_F_EMPTY_PATH,
            )
        })
        .map(drop)
    }

    fn mkdir(&mut self, path: &CStr, mode: u32) -> SysResult<()> {
        // SAFETY: path is NUL-terminated.
        check_int(unsafe { libc::mkdir(path.as_ptr(), mode) }).map(drop)
    }

    fn symlink(&mut self, target: &CStr, link: &CStr) -> SysResult<()> {
        // SAFETY: both are NUL-terminated.
        check_int(unsafe { libc::symlink(target.as_ptr(), link.as_ptr()) }).map(drop)
    }

    fn open(&mut self, path: &CStr, flags: i32, mode: u32) -> SysResult<i32> {
        // SAFETY: path is NUL-terminated.
        check_int(unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC, mode) })
    }

    fn write_all(&mut self, fd: i32, mut data: &[u8]) -> SysResult<()> {
        while !data.is_empty() {
            // SAFETY: writes from a live slice of the given length.
            let r = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
            if r < 0 {
                if errno() == libc::EINTR {
                    continue;
                }
                return Err(errno());
            }
            data = &data[r as usize..];
        }
        Ok(())
    }

    fn close(&mut self, fd: i32) {
        // SAFETY: closing a descriptor this sequence opened.
        unsafe { libc::close(fd) };
    }

    fn pivot_root(&mut self, new_root: &CStr, put_old: &CStr) -> SysResult<()> {
        // SAFETY: both are NUL-terminated.
        check(unsafe { libc::syscall(libc::SYS_pivot_root, new_root.as_ptr(), put_old.as_ptr()) }).map(drop)
    }

    fn chdir(&mut self, path: &CStr) -> SysResult<()> {
        // SAFETY: path is NUL-terminated.
        check_int(unsafe { libc::chdir(path.as_ptr()) }).map(drop)
    }

    fn sethostname(&mut self, name: &[u8]) -> SysResult<()> {
        // SAFETY: reads name.len() bytes from a live slice.
        check_int(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) }).map(drop)
    }

    fn loopback_up(&mut self) -> SysResult<()> {
        // SAFETY: socket takes integers only.
        let s = check_int(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
        // SAFETY: an all-zero ifreq is valid.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        for (d, s) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
            *d = *s as libc::c_char;
        }
        // SAFETY: ifr is a live ifreq; the ioctls read and write only it.
        let r = unsafe {
            if libc::ioctl(s, libc::SIOCGIFFLAGS, &mut ifr) < 0 {
                -1
            } else {
                ifr.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
                libc::ioctl(s, libc::SIOCSIFFLAGS, &ifr)
            }
        };
        let e = errno();
        self.close(s);
        if r < 0 { Err(e) } else { Ok(()) }
    }

    fn setrlimit(&mut self, resource: u32, value: u64) -> SysResult<()> {
        let lim = libc::rlimit { rlim_cur: value as libc::rlim_t, rlim_max: value as libc::rlim_t };
        // SAFETY: lim is a live struct.
        check_int(unsafe { libc::setrlimit(resource as _, &lim) }).map(drop)
    }

    fn clear_capabilities(&mut self) -> SysResult<()> {
        let header = CapHeader { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
        let data = [CapData { effective: 0, permitted: 0, inheritable: 0 }; 2];
        // SAFETY: header and data are live and laid out as the v3 capset ABI requires.
        check(unsafe { libc::syscall(libc::SYS_capset, &header as *const CapHeader, data.as_ptr()) }).map(drop)
    }

    fn dup_above(&mut self, fd: i32, min: i32) -> SysResult<i32> {
        // SAFETY: integer arguments only.
        check_int(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, min) })
    }

    fn dup2(&mut self, from: i32, to: i32) -> SysResult<()> {
        // SAFETY: integer arguments only.
        check_int(unsafe { libc::dup2(from, to) }).map(drop)
    }

    fn cloexec_from(&mut self, first: u32) -> SysResult<()> {
        // SAFETY: integer arguments only.
        let r = unsafe { libc::syscall(libc::SYS_close_range, first, libc::c_uint::MAX, CLOSE_RANGE_CLOEXEC) };
        if r == 0 {
            return Ok(());
        }
        // Kernels before 5.11: walk the descriptor table.
        for fd in first as i32..65_536 {
            // SAFETY: integer arguments only; EBADF for unused numbers is expected.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
        Ok(())
    }

    fn setsid(&mut self) -> SysResult<()> {
        // SAFETY: no arguments.
        check_int(unsafe { libc::setsid() }).map(drop)
    }

    fn reset_signal_handlers(&mut self) -> SysResult<()> {
        for sig in 1..libc::SIGRTMAX() {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            // SAFETY: installs the default disposition; EINVAL for signals glibc reserves is ignored.
            unsafe { libc::signal(sig, libc::SIG_DFL) };
        }
        Ok(())
    }

    fn unblock_signals(&mut self) -> SysResult<()> {
        // SAFETY: set is a live, initialised sigset_t.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            check_int(libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()))
                .map(drop)
                .map_err(|_| libc::EINVAL)
        }
    }

    fn landlock_create_ruleset(
        &mut self,
        handled_fs: u64,
        handled_net: u64,
        scoped: u64,
        attr_size: usize,
    ) -> SysResult<i32> {
        let attr = RulesetAttr { handled_access_fs: handled_fs, handled_access_net: handled_net, scoped };
        let size = attr_size.min(std::mem::size_of::<RulesetAttr>());
        // SAFETY: attr is live and at least `size` bytes long.
        check(unsafe { libc::syscall(libc::SYS_landlock_create_ruleset, &attr as *const RulesetAttr, size, 0u32) })
            .map(|fd| fd as i32)
    }

    fn landlock_add_path_rule(&mut self, ruleset: i32, allowed: u64, parent_fd: i32) -> SysResult<()> {
        let attr = PathBeneathAttr { allowed_access: allowed, parent_fd };
        // SAFETY: attr is a live packed struct as the UAPI defines it.
        check(unsafe {
            libc::syscall(
                libc::SYS_landlock_add_rule,
                ruleset,
                LANDLOCK_RULE_PATH_BENEATH,
                &attr as *const PathBeneathAttr,
                0u32,
            )
        })
        .map(drop)
    }

    fn landlock_restrict_self(&mut self, ruleset: i32) -> SysResult<()> {
        // SAFETY: integer arguments only.
        check(unsafe { libc::syscall(libc::SYS_landlock_restrict_self, ruleset, 0u32) }).map(drop)
    }

    fn seccomp_install(&mut self, prog: &[sock_filter]) -> SysResult<()> {
        let fprog =
            libc::sock_fprog { len: prog.len() as libc::c_ushort, filter: prog.as_ptr() as *mut libc::sock_filter };
        // SAFETY: seccompiler's sock_filter has the kernel's layout (repr(C), same fields);
        // fprog points into `prog`, which outlives the call.
        check(unsafe {
            libc::syscall(libc::SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0u32, &fprog as *const libc::sock_fprog)
        })
        .map(drop)
    }

    fn execve(&mut self, image: &crate::process::ExecImage) -> Errno {
        // SAFETY: the image's pointer arrays are NULL-terminated and point into strings it owns.
        unsafe { libc::execve(image.path.as_ptr(), image.argv_ptrs(), image.envp_ptrs()) };
        errno()
    }
}

/// A [`Sys`] that records every call instead of making it (unit tests).
#[cfg(test)]
#[derive(Debug, Default)]
pub struct Recorder {
    /// One line per call, e.g. `mount tmpfs -> /tmp (tmpfs) flags=0x6 data=size=4m`.
    pub calls: Vec<String>,
    pub(crate) next_fd: i32,
    /// Make the call whose line starts with this prefix fail with this errno.
    pub fail: Option<(String, Errno)>,
}

#[cfg(test)]
impl Recorder {
    fn rec(&mut self, line: String) -> SysResult<()> {
        let fail = self.fail.as_ref().filter(|(p, _)| line.starts_with(p.as_str())).map(|(_, e)| *e);
        self.calls.push(line);
        match fail {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn fd(&mut self) -> i32 {
        self.next_fd += 1;
        99 + self.next_fd
    }
}

#[cfg(test)]
fn s(c: &CStr) -> String {
    c.to_string_lossy().into_owned()
}

#[cfg(test)]
impl Sys for Recorder {
    fn read_byte(&mut self, fd: i32) -> SysResult<Option<u8>> {
        self.rec(format!("read_byte {fd}")).map(|_| Some(b'G'))
    }
    fn send(&mut self, fd: i32, data: &[u8], pass_fd: Option<i32>) -> SysResult<()> {
        self.rec(format!("send {fd} {:?} fd={pass_fd:?}", String::from_utf8_lossy(data)))
    }
    fn unshare(&mut self, flags: i32) -> SysResult<()> {
        self.rec(format!("unshare {flags:#x}"))
    }
    fn setresgid(&mut self, gid: u32) -> SysResult<()> {
        self.rec(format!("setresgid {gid}"))
    }
    fn setresuid(&mut self, uid: u32) -> SysResult<()> {
        self.rec(format!("setresuid {uid}"))
    }
    fn prctl(&mut self, option: i32, arg2: u64, arg3: u64) -> SysResult<i32> {
        self.rec(format!("prctl {option} {arg2} {arg3}")).map(|_| 0)
    }
    fn mount(
        &mut self,
        src: Option<&CStr>,
        target: &CStr,
        fstype: Option<&CStr>,
        flags: libc::c_ulong,
        data: Option<&CStr>,
    ) -> SysResult<()> {
        self.rec(format!(
            "mount {} -> {} ({}) flags={flags:#x} data={}",
            src.map(s).unwrap_or_default(),
            s(target),
            fstype.map(s).unwrap_or_default(),
            data.map(s).unwrap_or_default()
        ))
    }
    fn mount_setattr(&mut self, path: &CStr, recursive: bool, attr_set: u64) -> SysResult<()> {
        self.rec(format!("mount_setattr {} recursive={recursive} set={attr_set:#x}", s(path)))
    }
    fn umount_detach(&mut self, target: &CStr) -> SysResult<()> {
        self.rec(format!("umount_detach {}", s(target)))
    }
    fn open_tree(&mut self, path: &CStr, recursive: bool) -> SysResult<i32> {
        self.rec(format!("open_tree {} recursive={recursive}", s(path)))?;
        Ok(self.fd())
    }
    fn move_mount(&mut self, fd: i32, target: &CStr) -> SysResult<()> {
        self.rec(format!("move_mount {fd} -> {}", s(target)))
    }
    fn mkdir(&mut self, path: &CStr, mode: u32) -> SysResult<()> {
        self.rec(format!("mkdir {} {mode:o}", s(path)))
    }
    fn symlink(&mut self, target: &CStr, link: &CStr) -> SysResult<()> {
        self.rec(format!("symlink {} -> {}", s(link), s(target)))
    }
    fn open(&mut self, path: &CStr, flags: i32, mode: u32) -> SysResult<i32> {
        self.rec(format!("open {} {flags:#x} {mode:o}", s(path)))?;
        Ok(self.fd())
    }
    fn write_all(&mut self, fd: i32, data: &[u8]) -> SysResult<()> {
        self.rec(format!("write {fd} {} bytes", data.len()))
    }
    fn close(&mut self, fd: i32) {
        let _ = self.rec(format!("close {fd}"));
    }
    fn pivot_root(&mut self, new_root: &CStr, put_old: &CStr) -> SysResult<()> {
        self.rec(format!("pivot_root {} {}", s(new_root), s(put_old)))
    }
    fn chdir(&mut self, path: &CStr) -> SysResult<()> {
        self.rec(format!("chdir {}", s(path)))
    }
    fn sethostname(&mut self, name: &[u8]) -> SysResult<()> {
        self.rec(format!("sethostname {}", String::from_utf8_lossy(name)))
    }
    fn loopback_up(&mut self) -> SysResult<()> {
        self.rec("loopback_up".into())
    }
    fn setrlimit(&mut self, resource: u32, value: u64) -> SysResult<()> {
        self.rec(format!("setrlimit {resource} {value}"))
    }
    fn clear_capabilities(&mut self) -> SysResult<()> {
        self.rec("capset 0".into())
    }
    fn dup_above(&mut self, fd: i32, min: i32) -> SysResult<i32> {
        self.rec(format!("dup_above {fd} {min}"))?;
        Ok(self.fd())
    }
    fn dup2(&mut self, from: i32, to: i32) -> SysResult<()> {
        self.rec(format!("dup2 {from} {to}"))
    }
    fn cloexec_from(&mut self, first: u32) -> SysResult<()> {
        self.rec(format!("cloexec_from {first}"))
    }
    fn setsid(&mut self) -> SysResult<()> {
        self.rec("setsid".into())
    }
    fn reset_signal_handlers(&mut self) -> SysResult<()> {
        self.rec("reset_signal_handlers".into())
    }
    fn unblock_signals(&mut self) -> SysResult<()> {
        self.rec("unblock_signals".into())
    }
    fn landlock_create_ruleset(&mut self, fs: u64, net: u64, scoped: u64, size: usize) -> SysResult<i32> {
        self.rec(format!("landlock_create_ruleset fs={fs:#x} net={net:#x} scoped={scoped:#x} size={size}"))?;
        Ok(self.fd())
    }
    fn landlock_add_path_rule(&mut self, ruleset: i32, allowed: u64, parent_fd: i32) -> SysResult<()> {
        self.rec(format!("landlock_add_rule {ruleset} {allowed:#x} {parent_fd}"))
    }
    fn landlock_restrict_self(&mut self, ruleset: i32) -> SysResult<()> {
        self.rec(format!("landlock_restrict_self {ruleset}"))
    }
    fn seccomp_install(&mut self, prog: &[sock_filter]) -> SysResult<()> {
        self.rec(format!("seccomp {} instructions", prog.len()))
    }
    fn execve(&mut self, image: &crate::process::ExecImage) -> Errno {
        let _ = self.rec(format!("execve {}", s(&image.path)));
        0
    }
}
