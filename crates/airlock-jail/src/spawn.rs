//! Creating the sandbox's first process: the `clone` and the parent's half of the
//! setup handshake.
//!
//! Every sandbox is cloned by one long-lived "spawner" thread. Two reasons:
//!
//! * the parent-death signal (`PR_SET_PDEATHSIG`) fires when the *thread* that created
//!   the child exits, not the process: cloned from a short-lived worker thread (a
//!   server's blocking pool), a live session would be killed when that worker retires;
//! * when airlock runs as root, the spawner drops its own supplementary groups (a
//!   per-thread credential) once, so no sandbox inherits a host group, and it takes
//!   each sandbox's host uid and gid as its effective ids around that sandbox's
//!   `clone` (`user::Creator`), so the kernel charges the sandbox's per-user counters
//!   to that uid instead of root.
//!
//! The handshake, over a `SOCK_SEQPACKET` pair whose child end is close-on-exec:
//!
//! 1. parent: `clone` (through the spawner), then write the id maps and place the
//!    child in its cgroup, then send `G`;
//! 2. child: run the plan; after `pivot_root` send `W` with the workspace directory fd;
//! 3. child: `execve` — which closes its end: the parent reads end-of-file. A failing
//!    step instead sends `E` + step index + errno and exits, and the parent turns that
//!    into an error naming the step.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use airlock_core::{BackendKind, Error};
use nix::sys::socket::{AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg, socketpair};

use crate::contain::{Ctx, Plan, msg};

/// How long the child may take from `clone` to `execve`.
const SETUP_TIMEOUT: Duration = Duration::from_secs(15);

struct Job {
    plan: Arc<Plan>,
    ctx: Ctx,
    flags: i32,
    /// A cgroup v2 directory to create the child in (`CLONE_INTO_CGROUP`).
    cgroup_fd: Option<RawFd>,
    /// The host uid and gid to create the namespaces as (root mode).
    creator: Option<(u32, u32)>,
    reply: mpsc::Sender<Result<(i32, bool), CloneFailure>>,
}

/// Why the spawner made no child.
#[derive(Debug)]
enum CloneFailure {
    /// `clone` failed with this errno.
    Clone(i32),
    /// The spawner could not act as the sandbox's host uid (uid, errno).
    Creator(u32, i32),
    /// An earlier sandbox's ids could not be given back: the spawner makes no more.
    Stuck,
}

/// Set when the spawner thread could not return to its own ids after a clone; from
/// then on it refuses to make sandboxes rather than make them with unknown ids.
static CREDENTIALS_STUCK: AtomicBool = AtomicBool::new(false);

fn spawner() -> &'static Mutex<mpsc::Sender<Job>> {
    static TX: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    TX.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        let started = std::thread::Builder::new().name("airlock-jail-spawner".into()).spawn(move || {
            if nix::unistd::geteuid().is_root() {
                // SAFETY: setgroups(0, NULL) as a raw system call changes this thread's
                // credentials only (the libc wrapper would change every thread's).
                unsafe { libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) };
            }
            for job in rx {
                let r = clone_child(&job);
                let _ = job.reply.send(r);
            }
        });
        if let Err(e) = started {
            tracing::error!("cannot start the jail spawner thread: {e}");
        }
        Mutex::new(tx)
    })
}

/// `clone`s the child with all signals blocked (the child unblocks them just before
/// `execve`), so none of airlock's signal handlers can run in the copy, and, in root
/// mode, with the sandbox's host ids as this thread's effective ids, so that they own
/// its user namespace (see `user::Creator`).
fn clone_child(job: &Job) -> Result<(i32, bool), CloneFailure> {
    if CREDENTIALS_STUCK.load(Ordering::SeqCst) {
        return Err(CloneFailure::Stuck);
    }
    let creator = match job.creator {
        Some((uid, gid)) => Some(crate::user::Creator::assume(uid, gid).map_err(|e| CloneFailure::Creator(uid, e))?),
        None => None,
    };
    // SAFETY: sigset operations on a live local.
    let (full, mut old) = unsafe {
        let mut full: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut full);
        (full, std::mem::zeroed::<libc::sigset_t>())
    };
    // SAFETY: blocks signals in this thread; `old` receives the previous mask.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &full, &mut old) };
    let r = fork_like(job.flags, job.cgroup_fd);
    if let Ok((0, _)) = r {
        crate::contain::child_main(&job.plan, &job.ctx);
    }
    // SAFETY: restores the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    if let Some(c) = creator {
        let uid = c.uid();
        if let Err(e) = c.restore() {
            CREDENTIALS_STUCK.store(true, Ordering::SeqCst);
            tracing::error!(
                "the jail spawner thread cannot return from host uid {uid} to its own ids ({}); \
                 it makes no more sandboxes",
                std::io::Error::from_raw_os_error(e)
            );
        }
    }
    r.map(|(pid, placed)| (pid as i32, placed)).map_err(CloneFailure::Clone)
}

/// `struct clone_args` of `clone3(2)` (version 2, with `cgroup`).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// A fork-like clone (no `CLONE_VM`, no new stack) with `flags`; returns `(0, _)` in
/// the child and `(pid, placed)` in the parent. With a cgroup v2 directory, `clone3`
/// creates the child inside it (`placed`): no migration afterwards, whose RCU grace
/// period costs about 10 ms on a busy host. Where `clone3` or `CLONE_INTO_CGROUP` is
/// missing (Linux < 5.7, cgroup v1), plain `clone` is used and the caller migrates.
pub(crate) fn fork_like(flags: i32, cgroup_fd: Option<RawFd>) -> Result<(i64, bool), i32> {
    if let Some(fd) = cgroup_fd {
        let args = CloneArgs {
            flags: flags as u32 as u64 | CLONE_INTO_CGROUP,
            exit_signal: libc::SIGCHLD as u64,
            cgroup: fd as u64,
            ..CloneArgs::default()
        };
        // SAFETY: like fork: args is a live struct of the size passed, stack 0 means the
        // child continues on a copy of this stack.
        let r = unsafe { libc::syscall(libc::SYS_clone3, &args as *const CloneArgs, std::mem::size_of::<CloneArgs>()) };
        if r >= 0 {
            return Ok((r, true));
        }
        // Any failure falls back to clone, whose error (if any) is the authoritative one.
    }
    let flags = (flags | libc::SIGCHLD) as libc::c_ulong;
    // SAFETY: like fork (see above): the child continues on a copy of this stack.
    let pid = unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) };
    if pid < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO));
    }
    Ok((pid, false))
}

/// A descriptor moved to a number of at least [`crate::process::HIGH_FD`], close-on-exec.
pub fn high_fd(fd: OwnedFd) -> Result<OwnedFd, Error> {
    if fd.as_raw_fd() >= crate::process::HIGH_FD {
        return Ok(fd);
    }
    // SAFETY: integer arguments only.
    let n = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, crate::process::HIGH_FD) };
    if n < 0 {
        return Err(Error::io("duplicating a descriptor", std::io::Error::last_os_error()));
    }
    // SAFETY: n is a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

/// The setup socket pair `(parent end, child end)`.
pub fn setup_pair() -> Result<(OwnedFd, OwnedFd), Error> {
    let (a, b) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)
        .map_err(|e| Error::host(format!("socketpair: {}", e.desc())))?;
    Ok((a, high_fd(b)?))
}

/// A running sandbox process.
#[derive(Debug)]
pub struct Spawned {
    /// Its pid on the host.
    pub pid: i32,
    /// A pidfd for race-free signals.
    pub pidfd: OwnedFd,
    /// The workspace directory (the sandbox's `/workspace` tmpfs).
    pub workspace: OwnedFd,
}

pub(crate) fn pidfd_open(pid: i32) -> Result<OwnedFd, Error> {
    // SAFETY: integer arguments only.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(Error::io("pidfd_open", std::io::Error::last_os_error()));
    }
    // SAFETY: a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Sends `sig` through a pidfd (a no-op once the process is gone).
pub fn pidfd_signal(pidfd: &OwnedFd, sig: i32) {
    // SAFETY: integer arguments and a null siginfo.
    unsafe { libc::syscall(libc::SYS_pidfd_send_signal, pidfd.as_raw_fd(), sig, std::ptr::null::<u8>(), 0) };
}

/// Kills and reaps a child that never became a sandbox; returns its exit status text.
fn discard(pid: i32, pidfd: Option<&OwnedFd>) -> String {
    match pidfd {
        Some(fd) => pidfd_signal(fd, libc::SIGKILL),
        // SAFETY: the pid is our unreaped child, so it cannot have been reused.
        None => unsafe {
            libc::kill(pid, libc::SIGKILL);
        },
    }
    let mut status = 0;
    // SAFETY: waits for our own child; status is a live local.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    if libc::WIFSIGNALED(status) {
        format!("killed by {}", airlock_guest::host::signal_name(libc::WTERMSIG(status)))
    } else {
        format!("exit status {}", libc::WEXITSTATUS(status))
    }
}

fn hint(errno: i32, step: &str) -> &'static str {
    match errno {
        libc::EACCES if step.starts_with("take ") || step.starts_with("attach ") => {
            "; the sandbox reaches this path as its host uid (yours, rootless), which cannot search a directory above it"
        }
        libc::EPERM | libc::EACCES if step.contains("/proc") => {
            "; the host's /proc is partly hidden (overmounted) or this container forbids mounting proc; run on a host or a privileged container"
        }
        libc::EPERM | libc::EACCES => {
            "; the host (a container runtime, AppArmor or SELinux) forbids this inside a user namespace"
        }
        libc::ENOENT if step.starts_with("execute") => {
            "; the interpreter does not exist inside the sandbox (check --python or --rootfs)"
        }
        libc::ENOSPC => "; the sandbox's tmpfs is too small (raise limits.file_bytes)",
        _ => "",
    }
}

/// Clones the child that will run `plan` (inside the cgroup v2 directory `cgroup` when
/// one is given and the kernel can; with the host ids `creator` as the creator of its
/// namespaces, see `user::Creator`), runs the parent's part of the handshake
/// (`before_go(pid, placed)` writes id maps and, unless `placed`, moves the child into
/// its cgroup) and waits until the child has executed the interpreter.
pub fn spawn(
    plan: Plan,
    sync: (OwnedFd, OwnedFd),
    flags: i32,
    cgroup: Option<&OwnedFd>,
    creator: Option<(u32, u32)>,
    before_go: impl FnOnce(i32, bool) -> Result<(), Error>,
) -> Result<Spawned, Error> {
    let (parent_end, child_end) = sync;
    let plan = Arc::new(plan);
    let (reply_tx, reply_rx) = mpsc::channel();
    let job = Job {
        plan: plan.clone(),
        ctx: Ctx { sync_fd: child_end.as_raw_fd() },
        flags,
        cgroup_fd: cgroup.map(|c| c.as_raw_fd()),
        creator,
        reply: reply_tx,
    };
    spawner()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .send(job)
        .map_err(|_| Error::host("the jail spawner thread is gone"))?;
    let (pid, placed) = match reply_rx.recv_timeout(Duration::from_secs(10)) {
        Ok(Ok(r)) => r,
        Ok(Err(CloneFailure::Clone(errno))) => return Err(clone_error(errno)),
        Ok(Err(CloneFailure::Creator(uid, errno))) => {
            return Err(Error::host(format!(
                "cannot act as the sandbox's host uid {uid} to create its namespaces: {}",
                std::io::Error::from_raw_os_error(errno)
            )));
        }
        Ok(Err(CloneFailure::Stuck)) => {
            return Err(Error::host(
                "the jail spawner thread could not return to its own ids after an earlier sandbox; restart airlock",
            ));
        }
        Err(_) => return Err(Error::host("the jail spawner thread did not answer")),
    };
    drop(child_end);
    let pidfd = match pidfd_open(pid) {
        Ok(fd) => fd,
        Err(e) => {
            discard(pid, None);
            return Err(e);
        }
    };
    let t = Instant::now();
    if let Err(e) = before_go(pid, placed) {
        discard(pid, Some(&pidfd));
        return Err(e);
    }
    let t_parent = t.elapsed();
    if let Err(e) = nix::sys::socket::send(parent_end.as_raw_fd(), &[msg::GO], MsgFlags::MSG_NOSIGNAL) {
        let status = discard(pid, Some(&pidfd));
        return Err(Error::host(format!("the sandbox's first process died before setup ({}; {status})", e.desc())));
    }
    let t = Instant::now();
    let workspace = await_exec(&parent_end, &plan).map_err(|e| {
        let status = discard(pid, Some(&pidfd));
        match e {
            Error::Host(m) if m.contains("ended before") => Error::host(format!("{m} ({status})")),
            other => other,
        }
    })?;
    tracing::debug!("jail spawn: ids and cgroup {t_parent:?}, child setup to exec {:?}", t.elapsed());
    Ok(Spawned { pid, pidfd, workspace })
}

fn clone_error(errno: i32) -> Error {
    let e = std::io::Error::from_raw_os_error(errno);
    let fix = match errno {
        libc::EPERM | libc::EACCES => Some(
            "allow unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1 on Debian; \
             kernel.apparmor_restrict_unprivileged_userns=0 on Ubuntu) or run airlock as root"
                .to_string(),
        ),
        libc::ENOSPC => Some("raise the namespace limit: sysctl -w user.max_user_namespaces=15000".to_string()),
        libc::EINVAL => Some("use a kernel built with user, mount, PID and network namespaces".to_string()),
        _ => None,
    };
    Error::Unavailable {
        backend: BackendKind::Jail,
        reason: format!("cannot create the sandbox's namespaces: {e}"),
        fix,
    }
}

/// Reads the child's messages until `execve` closes its end.
fn await_exec(sock: &OwnedFd, plan: &Plan) -> Result<OwnedFd, Error> {
    let deadline = Instant::now() + SETUP_TIMEOUT;
    let mut workspace: Option<OwnedFd> = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::host("the sandbox did not finish its setup within 15 s"));
        }
        let mut pfd = [nix::poll::PollFd::new(sock.as_fd(), nix::poll::PollFlags::POLLIN)];
        let ms = nix::poll::PollTimeout::try_from(left.as_millis() as u64).unwrap_or(nix::poll::PollTimeout::MAX);
        match nix::poll::poll(&mut pfd, ms) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(Error::host(format!("poll: {}", e.desc()))),
        }
        let mut buf = [0u8; 16];
        let mut cmsg = nix::cmsg_space!([RawFd; 1]);
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let (n, fds) = match recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC) {
            Ok(m) => {
                let mut fds = Vec::new();
                if let Ok(cmsgs) = m.cmsgs() {
                    for c in cmsgs {
                        if let ControlMessageOwned::ScmRights(v) = c {
                            // SAFETY: descriptors received with SCM_RIGHTS are new and ours.
                            fds.extend(v.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
                        }
                    }
                }
                (m.bytes, fds)
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(Error::host(format!("reading the sandbox's setup socket: {}", e.desc()))),
        };
        match (n, buf[0]) {
            (0, _) => {
                return workspace
                    .ok_or_else(|| Error::host("the sandbox's first process ended before its setup was done"));
            }
            (1, msg::WORKSPACE) => {
                workspace =
                    Some(fds.into_iter().next().ok_or_else(|| Error::host("the workspace descriptor was not passed"))?);
            }
            (9, msg::FAILED) => {
                let step = u32::from_le_bytes(buf[1..5].try_into().expect("4 bytes")) as usize;
                let errno = i32::from_le_bytes(buf[5..9].try_into().expect("4 bytes"));
                let what = plan.steps.get(step).map(|s| s.describe()).unwrap_or_else(|| format!("step {step}"));
                let e = std::io::Error::from_raw_os_error(errno);
                return Err(Error::host(format!(
                    "jail setup failed at step {step} ({what}): {e}{}",
                    hint(errno, &what)
                )));
            }
            _ => return Err(Error::host("the sandbox sent a malformed setup message")),
        }
    }
}

/// Checks that this host can create the sandbox's namespaces and mount inside them,
/// with a child that makes its (private) mounts private and exits: `airlock doctor`'s
/// cheap probe (no new root, no interpreter).
pub fn namespaces_work(flags: i32) -> Result<(), Error> {
    // SAFETY: a fork-like clone whose child makes one mount call and _exits.
    let pid = unsafe {
        libc::syscall(libc::SYS_clone, (flags | libc::SIGCHLD) as libc::c_ulong, 0usize, 0usize, 0usize, 0usize)
    };
    if pid == 0 {
        // SAFETY: one mount call on a constant string in the child's own mount
        // namespace, then _exit without running anything of the parent's.
        unsafe {
            let r = libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            );
            libc::_exit(if r == 0 { 0 } else { 2 })
        };
    }
    if pid < 0 {
        return Err(clone_error(std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO)));
    }
    let mut status = 0;
    // SAFETY: waits for our own child.
    unsafe { libc::waitpid(pid as i32, &mut status, 0) };
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 2 {
        return Err(Error::Unavailable {
            backend: BackendKind::Jail,
            reason: "user namespaces can be created but mounting inside them is denied \
                     (an AppArmor/SELinux policy or a container runtime)"
                .into(),
            fix: Some(
                "on Ubuntu 23.10+: sysctl kernel.apparmor_restrict_unprivileged_userns=0; \
                 in a container: allow mount in user namespaces; or run airlock as root"
                    .into(),
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_line(status: &str, key: &str) -> String {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_default()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Root mode: the spawner acts as the sandbox's host uid around the clone, so the
    /// new user namespace is that uid's (the kernel charges its per-user counters
    /// there), the clone keeps its privileges (a child can still be created in a
    /// root-owned cgroup), and the thread gets its own ids and capabilities back.
    #[test]
    fn the_sandbox_s_host_uid_creates_its_user_namespace() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: acting as another uid needs root");
            return;
        }
        let uid = crate::user::JailIds::default().uid_base + 0xF_FFF0;
        let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let cgroup = crate::cgroup::mounts(&mi).into_iter().find(|(_, t, _)| t == "cgroup2").and_then(|(m, _, _)| {
            let dir = m.join(format!("airlock-creator-test-{}", std::process::id()));
            std::fs::create_dir(&dir).ok()?;
            use nix::fcntl::OFlag;
            let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
            Some((nix::fcntl::open(&dir, flags, nix::sys::stat::Mode::empty()).unwrap(), dir))
        });
        let before = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        let c = crate::user::Creator::assume(uid, uid).unwrap();
        let acting = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        let r = fork_like(libc::CLONE_NEWUSER, cgroup.as_ref().map(|(fd, _)| fd.as_raw_fd()));
        if let Ok((0, _)) = r {
            loop {
                // SAFETY: the child only waits to be killed.
                unsafe { libc::pause() };
            }
        }
        c.restore().unwrap();
        let after = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        let (pid, placed) = r.unwrap();
        let owner = {
            const NS_GET_OWNER_UID: libc::c_ulong = 0xb7 << 8 | 4;
            let f = std::fs::File::open(format!("/proc/{pid}/ns/user")).unwrap();
            let mut owner: libc::uid_t = u32::MAX;
            // SAFETY: the ioctl writes one uid_t into the live local.
            unsafe { libc::ioctl(f.as_raw_fd(), NS_GET_OWNER_UID as _, &mut owner as *mut libc::uid_t) };
            owner
        };
        let child_cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        // SAFETY: kills and reaps our own child.
        unsafe {
            libc::kill(pid as i32, libc::SIGKILL);
            libc::waitpid(pid as i32, std::ptr::null_mut(), 0);
        }
        if let Some((_, dir)) = &cgroup {
            let _ = std::fs::remove_dir(dir);
        }
        assert_eq!(owner, uid, "the new user namespace belongs to the sandbox's host uid");
        assert_eq!(status_line(&acting, "Uid:"), format!("0 {uid} 0 {uid}"));
        assert_eq!(status_line(&acting, "Gid:"), format!("0 {uid} 0 {uid}"));
        assert_eq!(status_line(&acting, "CapEff:"), status_line(&acting, "CapPrm:"), "privileges kept for the clone");
        for key in ["Uid:", "Gid:", "CapEff:", "CapPrm:"] {
            assert_eq!(status_line(&after, key), status_line(&before, key), "{key} is back");
        }
        if let Some((_, dir)) = &cgroup {
            let name = dir.file_name().unwrap().to_string_lossy();
            if placed {
                assert!(child_cgroup.lines().any(|l| l == format!("0::/{name}")), "{child_cgroup}");
            } else {
                // The plain clone3 test above tells whether this kernel can place at all.
                let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
                let dir = crate::cgroup::mounts(&mi).into_iter().find(|(_, t, _)| t == "cgroup2").unwrap().0;
                let probe = dir.join(format!("airlock-creator-probe-{}", std::process::id()));
                std::fs::create_dir(&probe).unwrap();
                use nix::fcntl::OFlag;
                let fd = nix::fcntl::open(
                    &probe,
                    OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                    nix::sys::stat::Mode::empty(),
                )
                .unwrap();
                let (pid, could) = match fork_like(0, Some(fd.as_raw_fd())) {
                    // SAFETY: the child exits at once, running nothing of the test's.
                    Ok((0, _)) => unsafe { libc::_exit(0) },
                    r => r.unwrap(),
                };
                // SAFETY: reaps our own child, which exits at once.
                unsafe { libc::waitpid(pid as i32, std::ptr::null_mut(), 0) };
                std::fs::remove_dir(&probe).unwrap();
                assert!(!could, "root can create a child in {name}, but not while acting as the sandbox's uid");
                eprintln!("skipped (cgroup part): no clone3 CLONE_INTO_CGROUP here");
            }
        }
    }

    /// `clone3(CLONE_INTO_CGROUP)` against the host's cgroup2 mount (on a v1 host, the
    /// controller-less `unified` hierarchy is enough to check the placement).
    #[test]
    fn clone_into_cgroup_places_the_child() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: creating a cgroup2 directory needs root");
            return;
        }
        let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let Some((mount, _, _)) = crate::cgroup::mounts(&mi).into_iter().find(|(_, t, _)| t == "cgroup2") else {
            eprintln!("skipped: no cgroup2 mount");
            return;
        };
        let name = format!("airlock-clone3-test-{}", std::process::id());
        let dir = mount.join(&name);
        if let Err(e) = std::fs::create_dir(&dir) {
            eprintln!("skipped: cannot create {}: {e}", dir.display());
            return;
        }
        use nix::fcntl::OFlag;
        let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let fd = nix::fcntl::open(&dir, flags, nix::sys::stat::Mode::empty()).unwrap();
        let (pid, placed) = match fork_like(0, Some(fd.as_raw_fd())) {
            Ok((0, _)) => loop {
                // SAFETY: the child only waits to be killed.
                unsafe { libc::pause() };
            },
            Ok(r) => r,
            Err(e) => panic!("clone failed: {e}"),
        };
        let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        // SAFETY: kills and reaps our own child.
        unsafe {
            libc::kill(pid as i32, libc::SIGKILL);
            libc::waitpid(pid as i32, std::ptr::null_mut(), 0);
        }
        std::fs::remove_dir(&dir).unwrap();
        if !placed {
            eprintln!("skipped: this kernel has no clone3 CLONE_INTO_CGROUP (fell back to clone)");
            return;
        }
        assert!(cg.lines().any(|l| l == format!("0::/{name}")), "child not created in the cgroup: {cg}");
    }
}
