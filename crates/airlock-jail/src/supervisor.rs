//! The host's handle on a running sandbox: signals through a pidfd (never a pid that
//! could have been reused), exit status through `wait4`, and accounting from the cgroup.
//!
//! The driver is the init of the sandbox's PID namespace, so one `SIGKILL` to it makes
//! the kernel kill every process of the namespace; the cgroup kill is the second line.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use airlock_core::Status;
use airlock_core::units::format_size;
use airlock_guest::host::{ExitInfo, Supervisor};

use crate::cgroup::{Cgroup, CgroupOps};
use crate::spawn::pidfd_signal;

/// Supervises one sandbox's driver process.
#[derive(Debug)]
pub struct JailSupervisor {
    pid: i32,
    pidfd: Arc<OwnedFd>,
    exit: Option<ExitInfo>,
    cgroup: Option<Arc<Cgroup>>,
    oom_seen: u64,
    memory_bytes: u64,
    /// For a zygote's child: the zygote reaps it and reports its exit here, under
    /// the id of the request that made it.
    reported: Option<(Arc<ExitBoard>, u64)>,
}

impl JailSupervisor {
    /// Supervises `pid` (our child).
    pub fn new(pid: i32, pidfd: OwnedFd, cgroup: Option<Arc<Cgroup>>, memory_bytes: u64) -> Self {
        let oom_seen = cgroup.as_ref().and_then(|c| c.oom_kills()).unwrap_or(0);
        JailSupervisor { pid, pidfd: Arc::new(pidfd), exit: None, cgroup, oom_seen, memory_bytes, reported: None }
    }

    /// Supervises `pid`, a zygote's child (not ours to wait for): its exit is read
    /// from `board`, where the zygote reports it under `request` (the fork request's id).
    pub fn for_zygote_child(
        pid: i32,
        pidfd: OwnedFd,
        cgroup: Option<Arc<Cgroup>>,
        memory_bytes: u64,
        board: Arc<ExitBoard>,
        request: u64,
    ) -> Self {
        let mut s = JailSupervisor::new(pid, pidfd, cgroup, memory_bytes);
        s.reported = Some((board, request));
        s
    }

    /// The driver's pid on the host.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Counts the group's OOM kills so far as seen, so that they do not explain a
    /// later death of the driver (the host's workspace writer was taken, not it).
    pub fn forget_oom_kills(&mut self) {
        if let Some(n) = self.cgroup.as_ref().and_then(|c| c.oom_kills()) {
            self.oom_seen = n;
        }
    }

    fn reap(&mut self, flags: libc::c_int) -> Option<ExitInfo> {
        if let Some(e) = self.exit {
            return Some(e);
        }
        if let Some((board, zpid)) = &self.reported {
            let wait = if flags & libc::WNOHANG != 0 { Duration::ZERO } else { Duration::from_secs(5) };
            self.exit = board.wait(*zpid, wait);
            return self.exit;
        }
        let mut status: libc::c_int = 0;
        // SAFETY: an all-zero rusage is a valid value for this plain C struct.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: wait4 writes only into the two live locals; the pid is our own child.
        let r = unsafe { libc::wait4(self.pid, &mut status, flags, &mut ru) };
        if r == self.pid {
            let cpu_ms = (ru.ru_utime.tv_sec as u64 + ru.ru_stime.tv_sec as u64) * 1000
                + (ru.ru_utime.tv_usec as u64 + ru.ru_stime.tv_usec as u64) / 1000;
            let info = ExitInfo {
                code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
                signal: libc::WIFSIGNALED(status).then(|| libc::WTERMSIG(status)),
                cpu_ms: Some(cpu_ms),
                peak_memory_bytes: Some(ru.ru_maxrss as u64 * 1024),
            };
            self.exit = Some(info);
            return Some(info);
        }
        if r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD) {
            self.exit = Some(ExitInfo::default());
            return self.exit;
        }
        None
    }
}

impl Supervisor for JailSupervisor {
    fn interrupt(&mut self) {
        if self.exit.is_none() {
            pidfd_signal(&self.pidfd, libc::SIGINT);
        }
    }

    /// SIGKILL to the driver — the PID namespace's init, so the kernel kills every
    /// other process of the sandbox — and to the whole cgroup.
    fn kill(&mut self) {
        pidfd_signal(&self.pidfd, libc::SIGKILL);
        if let Some(g) = &self.cgroup {
            g.kill_now();
        }
    }

    fn try_wait(&mut self) -> Option<ExitInfo> {
        self.reap(libc::WNOHANG)
    }

    /// Waits on the pidfd (readable once the process has exited) rather than polling;
    /// a zygote's child, on the zygote's report.
    fn wait(&mut self, timeout: std::time::Duration) -> Option<ExitInfo> {
        use std::os::fd::AsFd;
        if let Some((board, zpid)) = &self.reported {
            if self.exit.is_none() {
                self.exit = board.wait(*zpid, timeout);
            }
            return self.exit;
        }
        let end = std::time::Instant::now() + timeout;
        loop {
            if let Some(e) = self.try_wait() {
                return Some(e);
            }
            let left = end.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return None;
            }
            let mut fds = [nix::poll::PollFd::new(self.pidfd.as_fd(), nix::poll::PollFlags::POLLIN)];
            let ms =
                nix::poll::PollTimeout::try_from(left.as_millis().max(1) as u64).unwrap_or(nix::poll::PollTimeout::MAX);
            let _ = nix::poll::poll(&mut fds, ms);
        }
    }

    fn kill_handle(&self) -> Arc<dyn Fn() + Send + Sync> {
        let fd = self.pidfd.clone();
        let cgroup = self.cgroup.clone();
        Arc::new(move || {
            pidfd_signal(&fd, libc::SIGKILL);
            if let Some(g) = &cgroup {
                g.kill_now();
            }
        })
    }

    fn cpu_ms(&mut self) -> Option<u64> {
        self.cgroup.as_ref()?.cpu_usage_ns().map(|ns| ns / 1_000_000)
    }

    fn peak_memory_bytes(&mut self) -> Option<u64> {
        self.cgroup.as_ref()?.memory_peak_bytes()
    }

    /// From the cgroup's peak: a `MemoryError` counts as the memory limit only if the
    /// sandbox came within a sixteenth of it (the kernel charges pages, not the
    /// allocation that failed). Without a memory cgroup (RLIMIT_DATA) it cannot tell.
    fn memory_limit_reached(&mut self) -> Option<bool> {
        let peak = self.cgroup.as_ref()?.memory_peak_bytes()?;
        Some(peak >= self.memory_bytes - self.memory_bytes / 16)
    }

    fn explain_death(&mut self, exit: &ExitInfo) -> Option<(Status, String)> {
        let oom = self.cgroup.as_ref()?.oom_kills()?;
        let new_kills = oom > self.oom_seen;
        self.oom_seen = oom;
        (new_kills && exit.signal == Some(libc::SIGKILL)).then(|| {
            (
                Status::MemoryLimit,
                format!(
                    "the sandbox reached its memory limit of {} (limits.memory_bytes) and the kernel's OOM killer stopped it",
                    format_size(self.memory_bytes)
                ),
            )
        })
    }
}

impl Drop for JailSupervisor {
    fn drop(&mut self) {
        if self.exit.is_none() {
            self.kill();
            let _ = self.reap(0);
        }
    }
}

/// Exits of a zygote's children, as the zygote reports them (it reaps them: they are
/// its children, not airlock's).
#[derive(Debug, Default)]
pub struct ExitBoard {
    state: Mutex<BoardState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct BoardState {
    exits: HashMap<u64, ExitInfo>,
    /// Requests whose child never became a sandbox: their exits are not kept.
    abandoned: std::collections::HashSet<u64>,
    /// The zygote is gone, and with it (the init of their PID namespace) every child.
    closed: bool,
}

impl ExitBoard {
    fn lock(&self) -> std::sync::MutexGuard<'_, BoardState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that the child made by request `id` exited.
    pub fn record(&self, id: u64, info: ExitInfo) {
        let mut st = self.lock();
        if !st.abandoned.remove(&id) {
            st.exits.insert(id, info);
        }
        drop(st);
        self.changed.notify_all();
    }

    /// Forgets the report for request `id`, now or when it comes (a child that never
    /// became a sandbox).
    pub fn forget(&self, id: u64) {
        let mut st = self.lock();
        if st.exits.remove(&id).is_none() {
            st.abandoned.insert(id);
        }
    }

    /// The zygote is gone: every child not yet reported died with it.
    pub fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_all();
    }

    /// Takes the exit of request `id`'s child, waiting up to `timeout` for it.
    pub fn wait(&self, id: u64, timeout: Duration) -> Option<ExitInfo> {
        let deadline = Instant::now() + timeout;
        let mut st = self.lock();
        loop {
            if let Some(info) = st.exits.remove(&id) {
                return Some(info);
            }
            if st.closed {
                return Some(ExitInfo { signal: Some(libc::SIGKILL), ..ExitInfo::default() });
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            st = self.changed.wait_timeout(st, left).unwrap_or_else(|p| p.into_inner()).0;
        }
    }
}
