//! Files the host writes into a sandbox's workspace, charged to the sandbox.
//!
//! The kernel charges a tmpfs page to the memory cgroup of the process that allocates
//! it: the owner of the address space, so moving one of airlock's threads into the
//! sandbox's group would not do (not even on cgroup v1, where single threads can be
//! moved: memory follows the address space). A file that airlock wrote into
//! `/workspace` itself would be held in *airlock's* memory, outside the sandbox's
//! `memory_bytes`: callers of the files API could pin sessions × workspace size of the
//! host's memory while every sandbox looked within its limit.
//!
//! So the bytes are written by a short-lived child of airlock that sits in the
//! sandbox's memory cgroup: created there (`clone3(CLONE_INTO_CGROUP)`, cgroup v2) or
//! moved there before it touches anything (v1). It runs the confined steps of every
//! workspace write ([`PreparedWrite`]: `openat2` beneath the workspace descriptor, no
//! links, regular files only), prepared by the parent so that the child, a fork of a
//! multi-threaded process, allocates nothing. Directories, the inode and the data are
//! all charged to the sandbox.
//!
//! Before anything starts, the parent checks that the bytes fit in the group's memory
//! (its cap, less what it holds, plus reclaimable file cache and the pages of the file
//! being replaced), and refuses them with a `TooLarge` error naming
//! `limits.memory_bytes` if not. Then, over a `SOCK_SEQPACKET` pair:
//!
//! 1. parent: fork (into the group, or then move the child into it); `GO`;
//! 2. child: its OOM score to the maximum (a write that outgrows the group anyway, say
//!    because the guest grew meanwhile, makes the kernel's OOM killer take the
//!    writer, not the guest); act as the sandbox's owner; create and open the file
//!    (truncating it); send the descriptor back; write; `DONE` (or the failed step
//!    and its `errno`); exit.
//!
//! A file whose write failed (a full workspace, the writer OOM-killed) is truncated
//! through that descriptor, which frees its pages, and removed.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use airlock_core::Error;
use airlock_core::paths::WorkspacePath;
use airlock_core::units::format_size;
use airlock_guest::workspace::{PreparedWrite, Workspace, WriteFailure, WriteStep};
use nix::errno::Errno;
use nix::sys::socket::{AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg, socketpair};

use crate::cgroup::{Cgroup, CgroupOps, MemoryState};
use crate::spawn::{pidfd_open, pidfd_signal};

/// Files up to this size may be written by airlock itself, without a writer process
/// (whose placement in a cgroup v1 group costs an RCU grace period, ~10 ms here): a
/// one-shot run's small inputs stay on the fast path.
pub(crate) const SMALL_FILE_BYTES: usize = 64 << 10;
/// How much of a sandbox's memory cap small files may take, in all.
pub(crate) const SMALL_FILES_ALLOWANCE: u64 = 1 << 20;
/// What a small file costs beyond its pages, per component of its path: an inode and
/// a dentry (parents may be created), generously.
const PER_COMPONENT_BYTES: u64 = 4096;
/// Room left between the group's usage and its lowered cap: a v2 cap set below the
/// usage makes the kernel reclaim, then OOM-kill.
const SMALL_FILE_MARGIN: u64 = 1 << 20;

/// For a small file that airlock may write itself: lowers the group's memory cap by
/// what the file will hold (its pages, rounded up, and its path's inodes) and returns
/// that cost. airlock's own memory then holds the file, and the sandbox's cap is
/// smaller by as much, so the two together stay within `memory_bytes`. `None` (the
/// writer process must do it) for a larger file, once the sandbox's allowance
/// (`taken` so far) is spent, or when the group has not that much room to give now.
/// A cap lowered for a file that is later removed stays lowered: the allowance bounds
/// what that can cost.
pub(crate) fn take_for_small_file(
    cgroup: &Cgroup,
    memory: &MemoryState,
    path: &WorkspacePath,
    len: usize,
    taken: u64,
) -> Option<u64> {
    if len > SMALL_FILE_BYTES {
        return None;
    }
    let cost = (len as u64).div_ceil(4096) * 4096 + PER_COMPONENT_BYTES * path.components().count() as u64;
    let free = memory.limit.saturating_sub(memory.usage);
    if taken + cost > SMALL_FILES_ALLOWANCE || cost + SMALL_FILE_MARGIN > free {
        return None;
    }
    cgroup.set_memory_limit(memory.limit - cost).ok()?;
    Some(cost)
}

const GO: u8 = b'g';
const OPENED: u8 = b'o';
const FAILED: u8 = b'e';
const DONE: u8 = b'd';

/// How long the writer may take to start and open the file.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the writer may take to write, on top of a rate of 16 MiB/s.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// The sandbox a write is charged to.
pub(crate) struct Target<'a> {
    /// Its cgroup, which has a memory controller.
    pub cgroup: &'a Cgroup,
    /// Its memory when the write was asked for.
    pub memory: MemoryState,
    /// Host ids to act as in the workspace (root mode).
    pub fs_ids: Option<(u32, u32)>,
}

/// Writes `data` to `path` from a process in the sandbox's memory cgroup, refusing
/// what its memory cannot hold (`check_room: false` skips the parent's check, leaving
/// the kernel's limit alone to stop the write: tests of that backstop).
pub(crate) fn write(
    ws: &Workspace,
    path: &WorkspacePath,
    data: &[u8],
    max_bytes: u64,
    t: &Target<'_>,
    check_room: bool,
) -> Result<(), Error> {
    let w = ws.prepare_write(path, data, max_bytes)?;
    let len = data.len() as u64;
    // tmpfs allocates whole pages; replacing a file frees the pages it holds.
    if check_room && len.div_ceil(4096) * 4096 > t.memory.room().saturating_add(ws.file_sizes(path).1) {
        return Err(no_room(path, len, &t.memory));
    }
    let (mine, theirs) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)
        .map_err(|e| Error::host(format!("socketpair: {}", e.desc())))?;
    let t0 = Instant::now();
    let placement = t.cgroup.placement_fd();
    let (pid, placed) = fork_writer(&w, &mine, &theirs, ws, placement.as_ref().map(|f| f.as_raw_fd()), t.fs_ids)?;
    let mut writer = Writer::new(pid)?;
    drop(theirs);
    let t_fork = t0.elapsed();
    if !placed {
        t.cgroup
            .add_for_memory(pid)
            .map_err(|e| Error::host(format!("placing the workspace writer in the sandbox's memory cgroup: {e}")))?;
    }
    let t_place = t0.elapsed();
    send(&mine, GO)?;
    let file = match recv(&mine, Instant::now() + OPEN_TIMEOUT, path)? {
        Reply::Opened(fd) => fd,
        Reply::Failed(f) => return Err(w.error(f)),
        Reply::Done | Reply::Gone => return Err(writer.death(path, len, t)),
    };
    let deadline = Instant::now() + WRITE_TIMEOUT + Duration::from_secs(len >> 24);
    let result = match recv(&mine, deadline, path) {
        Ok(Reply::Done) => Ok(()),
        Ok(Reply::Failed(f)) => Err(w.error(f)),
        Ok(Reply::Opened(_) | Reply::Gone) => Err(writer.death(path, len, t)),
        Err(e) => Err(e),
    };
    if result.is_err() {
        drop(writer); // killed and reaped if it still runs
        let _as = crate::sandbox::ActAs::new(t.fs_ids);
        ws.discard(path, &file);
    } else {
        writer.reap();
    }
    tracing::debug!(
        "workspace write of {len} bytes: fork {t_fork:?}, placement {:?} (moved: {}), open to exit {:?}",
        t_place - t_fork,
        !placed,
        t0.elapsed() - t_place
    );
    result
}

fn no_room(path: &WorkspacePath, len: u64, m: &MemoryState) -> Error {
    Error::TooLarge(format!(
        "'{path}' ({}) does not fit in the sandbox's memory: workspace files are held in it, and it uses {} of its \
         {} (limits.memory_bytes); remove files from the workspace or use a larger limits.memory_bytes",
        format_size(len),
        format_size(m.usage.saturating_sub(m.reclaimable)),
        format_size(m.limit),
    ))
}

/// The writer process: killed and reaped unless it was reaped already.
struct Writer {
    pid: i32,
    pidfd: OwnedFd,
    status: Option<i32>,
}

impl Writer {
    fn new(pid: i32) -> Result<Writer, Error> {
        match pidfd_open(pid) {
            Ok(pidfd) => Ok(Writer { pid, pidfd, status: None }),
            Err(e) => {
                // SAFETY: our own unreaped child, so the pid cannot have been reused.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                    libc::waitpid(pid, std::ptr::null_mut(), 0);
                }
                Err(e)
            }
        }
    }

    /// Waits for the writer to exit (it has answered, or its end of the socket
    /// closed: it is exiting) and returns its wait status.
    fn reap(&mut self) -> i32 {
        if let Some(s) = self.status {
            return s;
        }
        let mut status = 0;
        // SAFETY: waits for our own child; status is a live local.
        unsafe { libc::waitpid(self.pid, &mut status, 0) };
        self.status = Some(status);
        status
    }

    /// Why the writer ended without answering.
    fn death(&mut self, path: &WorkspacePath, len: u64, t: &Target<'_>) -> Error {
        let status = self.reap();
        if libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL {
            // Nothing else kills it before it answers: the group's OOM killer did.
            let now = t.cgroup.memory_state().unwrap_or(t.memory);
            return Error::TooLarge(format!(
                "'{path}' ({}) went past the sandbox's memory limit of {} (limits.memory_bytes) while being \
                 written: workspace files are held in the sandbox's memory; remove files from the workspace or use \
                 a larger limits.memory_bytes",
                format_size(len),
                format_size(now.limit),
            ));
        }
        Error::host(format!("the workspace writer for '{path}' ended unexpectedly (wait status {status:#x})"))
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if self.status.is_none() {
            pidfd_signal(&self.pidfd, libc::SIGKILL);
            self.reap();
        }
    }
}

enum Reply {
    Opened(OwnedFd),
    Failed(WriteFailure),
    Done,
    /// The writer's end closed: it died.
    Gone,
}

fn send(sock: &OwnedFd, byte: u8) -> Result<(), Error> {
    nix::sys::socket::send(sock.as_raw_fd(), &[byte], MsgFlags::MSG_NOSIGNAL)
        .map(|_| ())
        .or_else(|e| if e == Errno::EPIPE || e == Errno::ECONNRESET { Ok(()) } else { Err(e) })
        .map_err(|e| Error::host(format!("talking to the workspace writer: {}", e.desc())))
}

fn recv(sock: &OwnedFd, deadline: Instant, path: &WorkspacePath) -> Result<Reply, Error> {
    use std::os::fd::AsFd;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::host(format!("writing '{path}' into the sandbox's workspace did not finish in time")));
        }
        let mut pfd = [nix::poll::PollFd::new(sock.as_fd(), nix::poll::PollFlags::POLLIN)];
        let ms = nix::poll::PollTimeout::try_from(left.as_millis() as u64).unwrap_or(nix::poll::PollTimeout::MAX);
        match nix::poll::poll(&mut pfd, ms) {
            Ok(0) | Err(Errno::EINTR) => continue,
            Ok(_) => {}
            Err(e) => return Err(Error::host(format!("poll: {}", e.desc()))),
        }
        let mut buf = [0u8; 8];
        let mut cmsg = nix::cmsg_space!([RawFd; 1]);
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let (n, fd) = match recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC) {
            Ok(m) => {
                let mut fd = None;
                for c in m.cmsgs().into_iter().flatten() {
                    if let ControlMessageOwned::ScmRights(v) = c {
                        // SAFETY: descriptors received with SCM_RIGHTS are new and ours.
                        fd = v.into_iter().map(|f| unsafe { OwnedFd::from_raw_fd(f) }).next();
                    }
                }
                (m.bytes, fd)
            }
            Err(Errno::EINTR) => continue,
            Err(Errno::ECONNRESET) => return Ok(Reply::Gone),
            Err(e) => return Err(Error::host(format!("reading from the workspace writer: {}", e.desc()))),
        };
        return Ok(match (n, buf[0], fd) {
            (0, _, _) => Reply::Gone,
            (1, OPENED, Some(fd)) => Reply::Opened(fd),
            (1, DONE, _) => Reply::Done,
            (6, FAILED, _) => {
                let step = match buf[1] {
                    0 => WriteStep::Directory,
                    1 => WriteStep::Open,
                    2 => WriteStep::NotRegular,
                    _ => WriteStep::Write,
                };
                let errno = i32::from_le_bytes(buf[2..6].try_into().expect("4 bytes"));
                Reply::Failed((step, Errno::from_raw(errno)))
            }
            _ => return Err(Error::host("the workspace writer sent a malformed message")),
        });
    }
}

/// Forks the writer (into the cgroup `placement` when given and the kernel can) with
/// every signal blocked, so none of airlock's handlers can run in the copy. Returns
/// `(pid, placed)`.
fn fork_writer(
    w: &PreparedWrite<'_>,
    mine: &OwnedFd,
    theirs: &OwnedFd,
    ws: &Workspace,
    placement: Option<RawFd>,
    fs_ids: Option<(u32, u32)>,
) -> Result<(i32, bool), Error> {
    // SAFETY: sigset operations on live locals.
    let (full, mut old) = unsafe {
        let mut full: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut full);
        (full, std::mem::zeroed::<libc::sigset_t>())
    };
    // SAFETY: blocks signals in this thread; `old` receives the previous mask.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &full, &mut old) };
    let r = crate::spawn::fork_like(0, placement);
    if let Ok((0, _)) = r {
        writer_main(theirs.as_raw_fd(), mine.as_raw_fd(), ws.fd().as_raw_fd(), w, fs_ids);
    }
    // SAFETY: restores the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    r.map(|(pid, placed)| (pid as i32, placed)).map_err(|errno| {
        Error::host(format!("cannot start the workspace writer: {}", std::io::Error::from_raw_os_error(errno)))
    })
}

/// The writer, in the forked child: raw system calls on what the parent prepared,
/// no allocation (another thread of the parent may have held the allocator's lock at
/// the fork), and never a return.
fn writer_main(sock: RawFd, other: RawFd, ws_fd: RawFd, w: &PreparedWrite<'_>, fs_ids: Option<(u32, u32)>) -> ! {
    // SAFETY: closes descriptors of this process's own copy of the table (the
    // parent's stay open) and writes a constant to its own OOM score.
    unsafe {
        libc::close(other);
        close_all_but(sock, ws_fd);
        let fd = libc::open(c"/proc/self/oom_score_adj".as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd >= 0 {
            libc::write(fd, b"1000".as_ptr().cast(), 4);
            libc::close(fd);
        }
    }
    if recv_byte(sock) != Some(GO) {
        exit(1);
    }
    if let Some((uid, gid)) = fs_ids {
        // SAFETY: changes this (single-threaded) process's file-system ids.
        unsafe {
            libc::syscall(libc::SYS_setfsgid, gid);
            libc::syscall(libc::SYS_setfsuid, uid);
        }
    }
    let file = match w.open() {
        Ok(f) => f,
        Err(f) => {
            send_failed(sock, f);
            exit(2);
        }
    };
    if !send_fd(sock, file.as_raw_fd()) {
        exit(3);
    }
    match w.write_to(&file) {
        Ok(()) => {
            send_bytes(sock, &[DONE]);
        }
        Err(f) => send_failed(sock, f),
    }
    exit(0)
}

fn exit(code: i32) -> ! {
    // SAFETY: ends the child without running anything of the parent's.
    unsafe { libc::_exit(code) }
}

/// Closes every descriptor from 3 up but `a` and `b` (a no-op before Linux 5.9).
///
/// # Safety
/// Only for the forked writer: it closes descriptors it does not own in Rust terms.
unsafe fn close_all_but(a: RawFd, b: RawFd) {
    let (lo, hi) = (a.min(b) as u32, a.max(b) as u32);
    for (first, last) in [(3, lo.saturating_sub(1)), (lo + 1, hi.saturating_sub(1)), (hi + 1, u32::MAX)] {
        if first.max(3) <= last {
            // SAFETY: integer arguments only.
            unsafe { libc::syscall(libc::SYS_close_range, first.max(3), last, 0) };
        }
    }
}

fn recv_byte(sock: RawFd) -> Option<u8> {
    let mut b = 0u8;
    loop {
        // SAFETY: reads at most one byte into a live local.
        let n = unsafe { libc::recv(sock, (&mut b as *mut u8).cast(), 1, 0) };
        if n == 1 {
            return Some(b);
        }
        if n < 0 && Errno::last() == Errno::EINTR {
            continue;
        }
        return None;
    }
}

fn send_bytes(sock: RawFd, bytes: &[u8]) -> bool {
    // SAFETY: sends from a live slice.
    unsafe { libc::send(sock, bytes.as_ptr().cast(), bytes.len(), libc::MSG_NOSIGNAL) == bytes.len() as isize }
}

fn send_failed(sock: RawFd, (step, errno): WriteFailure) {
    let code = match step {
        WriteStep::Directory => 0,
        WriteStep::Open => 1,
        WriteStep::NotRegular => 2,
        WriteStep::Write => 3,
    };
    let e = (errno as i32).to_le_bytes();
    send_bytes(sock, &[FAILED, code, e[0], e[1], e[2], e[3]]);
}

/// Sends `OPENED` with `fd` attached (`SCM_RIGHTS`), from a buffer on the stack.
fn send_fd(sock: RawFd, fd: RawFd) -> bool {
    #[repr(C)]
    union Cmsg {
        hdr: libc::cmsghdr,
        buf: [u8; 64],
    }
    let byte = [OPENED];
    let mut iov = libc::iovec { iov_base: byte.as_ptr() as *mut libc::c_void, iov_len: 1 };
    let mut space = Cmsg { buf: [0; 64] };
    // SAFETY: CMSG_SPACE/CMSG_LEN are arithmetic; the header and the descriptor are
    // written inside `space`, which is larger than CMSG_SPACE(sizeof(int)), and
    // sendmsg reads only the live locals it is given.
    unsafe {
        let len = libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) as usize;
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = (&mut space as *mut Cmsg).cast();
        msg.msg_controllen = len;
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<RawFd>(), fd);
        libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) == 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::{CgroupLimits, Driver};

    fn p(s: &str) -> WorkspacePath {
        WorkspacePath::parse(s).unwrap()
    }

    /// A memory-capped cgroup, removed (after a kill of anything left) when dropped.
    struct Group(Cgroup);

    impl Drop for Group {
        fn drop(&mut self) {
            let _ = self.0.kill_all();
            let _ = self.0.remove();
        }
    }

    /// A group capped at `limit`, and a directory on a tmpfs (`/dev/shm`) as the
    /// workspace: tmpfs pages are what the kernel charges to the writer for good.
    fn setup(limit: u64) -> Option<(Group, tempfile::TempDir)> {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: a memory cgroup needs root on this host");
            return None;
        }
        let driver = match Driver::detect() {
            Ok(d) if d.enforced().memory => d,
            other => {
                eprintln!("skipped: no memory cgroup controller ({:?})", other.err());
                return None;
            }
        };
        let dir = match tempfile::tempdir_in("/dev/shm") {
            Ok(d)
                if nix::sys::statfs::statfs(d.path())
                    .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC) =>
            {
                d
            }
            _ => {
                eprintln!("skipped: /dev/shm is not a writable tmpfs here");
                return None;
            }
        };
        let n = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        let g = Group(driver.create(&crate::cgroup::group_name(&format!("sbx_upload{n}")), false).unwrap());
        g.0.apply(&CgroupLimits { memory_bytes: limit, pids: 16, cpu_quota_us: None }).unwrap();
        Some((g, dir))
    }

    fn target(g: &Cgroup) -> Target<'_> {
        Target { cgroup: g, memory: g.memory_state().unwrap(), fs_ids: None }
    }

    #[test]
    fn bytes_are_charged_to_the_group_and_what_it_cannot_hold_is_refused() {
        const MIB: u64 = 1 << 20;
        let Some((g, dir)) = setup(24 * MIB) else { return };
        let g = &g.0;
        let ws = Workspace::open(dir.path()).unwrap();
        let usage = || g.memory_state().unwrap().usage;

        let before = usage();
        write(&ws, &p("a/b/one"), &vec![1u8; 8 << 20], 1 << 30, &target(g), true).unwrap();
        // (The kernel charges in batches, so the counter may trail by a few pages.)
        assert!(usage() >= before + 7 * MIB, "not charged to the group: {} -> {}", before, usage());
        assert_eq!(std::fs::read(dir.path().join("a/b/one")).unwrap(), vec![1u8; 8 << 20]);

        // More than the cap: refused before anything starts.
        let e = write(&ws, &p("big"), &vec![2u8; 32 << 20], 1 << 30, &target(g), true).unwrap_err();
        assert!(matches!(e, Error::TooLarge(_)) && e.to_string().contains("limits.memory_bytes"), "{e}");
        assert!(!dir.path().join("big").exists());

        // Within the cap, but not beside the first file: refused as well.
        let e = write(&ws, &p("second"), &vec![3u8; 20 << 20], 1 << 30, &target(g), true).unwrap_err();
        assert!(matches!(e, Error::TooLarge(_)) && e.to_string().contains("limits.memory_bytes"), "{e}");
        assert!(!dir.path().join("second").exists(), "a refused file is left behind");

        // Without that check the kernel stops the write: the OOM killer takes the
        // writer, and the partial file goes, its pages with it.
        let kills = g.oom_kills().unwrap_or(0);
        let e = write(&ws, &p("third"), &vec![4u8; 20 << 20], 1 << 30, &target(g), false).unwrap_err();
        assert!(matches!(e, Error::TooLarge(_)) && e.to_string().contains("went past"), "{e}");
        assert!(g.oom_kills().unwrap_or(0) > kills, "the writer was not OOM-killed");
        assert!(!dir.path().join("third").exists(), "a partial file is left behind");
        assert!(usage() < before + 12 * MIB, "the partial file's pages are still charged: {}", usage());

        // Replacing the first file with as much again fits: its old pages go first.
        write(&ws, &p("a/b/one"), &vec![5u8; 8 << 20], 1 << 30, &target(g), true).unwrap();
        assert_eq!(std::fs::read(dir.path().join("a/b/one")).unwrap(), vec![5u8; 8 << 20]);

        // The writer is as confined as any workspace write: no link is followed.
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("link")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("y"), dir.path().join("file-link")).unwrap();
        assert!(write(&ws, &p("link/x"), b"pwned", 1 << 30, &target(g), true).is_err());
        let e = write(&ws, &p("file-link"), b"pwned", 1 << 30, &target(g), true).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert!(!outside.path().join("x").exists() && !outside.path().join("y").exists());
        let e = write(&ws, &p("a/b/one/x"), b"x", 1 << 30, &target(g), true).unwrap_err();
        assert!(e.to_string().contains("not a directory"), "{e}");

        // A small file airlock writes itself costs the group its pages and its path's
        // inodes off the cap, within an allowance, and only while there is room.
        let m = g.memory_state().unwrap();
        let cost = take_for_small_file(g, &m, &p("s/a"), 10, 0).unwrap();
        assert_eq!(cost, 4096 + 2 * 4096);
        assert_eq!(g.memory_state().unwrap().limit, m.limit - cost);
        assert_eq!(take_for_small_file(g, &m, &p("s/a"), 10, SMALL_FILES_ALLOWANCE - 4096), None);
        assert_eq!(take_for_small_file(g, &m, &p("s/a"), SMALL_FILE_BYTES + 1, 0), None);
        let full = MemoryState { usage: m.limit - SMALL_FILE_MARGIN, ..m };
        assert_eq!(take_for_small_file(g, &full, &p("s/a"), 10, 0), None, "no room to give");
    }
}
