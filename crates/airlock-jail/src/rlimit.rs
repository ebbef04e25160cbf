//! Resource limits (`setrlimit`) of the guest, a second line behind the cgroup.
//!
//! * `RLIMIT_CORE` 0: no core dumps (they would land in the workspace and leak memory).
//! * `RLIMIT_NOFILE` = `limits.open_files`.
//! * `RLIMIT_FSIZE` = `limits.file_bytes`: no single file beyond the workspace size.
//! * `RLIMIT_NPROC` = `limits.processes`. The kernel counts it per user *in the
//!   sandbox's own user namespace*, so it is a per-sandbox limit here, and the one that
//!   holds when no pids cgroup is available (rootless without delegation).
//! * `RLIMIT_DATA` = `limits.memory_bytes`, only when no memory cgroup enforces the
//!   limit (it counts reserved memory, so it is approximate).
//! * `RLIMIT_SIGPENDING` = [`SIGPENDING`], `RLIMIT_MEMLOCK` = [`MEMLOCK_BYTES`],
//!   `RLIMIT_MSGQUEUE` 0: the kernel keeps these three per user, counted at every
//!   user-namespace level up to the host (see `user.rs`). Inside the sandbox every
//!   process is the same user, so each limit is the sandbox's total: queued signals
//!   (and POSIX timers, which reserve one each), `SHM_LOCK`ed SysV memory and, per
//!   process, `mlock`ed memory; POSIX message queues are denied by seccomp, and the 0
//!   stands behind that. A zygote keeps airlock's own values for the first two: they
//!   cap what all of its children together may hold (each child sets its own after it
//!   has made its user namespace; see `zygote.rs`).
//!
//! `RLIMIT_AS` is never used: it breaks programs that reserve large address ranges.
//! CPU time is measured by the host from the cgroup, not by `RLIMIT_CPU`: the driver
//! is the PID namespace's init, and an init ignores `SIGXCPU`.

use airlock_core::Limits;

/// Signals a sandbox may have queued at once (`RLIMIT_SIGPENDING`), POSIX timers
/// included. Ordinary signals sent with `kill` are always delivered; only queued
/// real-time signals and new timers are refused past it (`EAGAIN`).
pub const SIGPENDING: u64 = 256;

/// Memory a sandbox may lock (`RLIMIT_MEMLOCK`): `SHM_LOCK` on SysV shared memory in
/// total, `mlock` per process. 64 KiB, the kernel's historical default.
pub const MEMLOCK_BYTES: u64 = 64 << 10;

use crate::sys::{Sys, SysResult};

/// One limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rlimit {
    /// `RLIMIT_*`.
    pub resource: u32,
    /// Soft and hard value.
    pub value: u64,
}

impl Rlimit {
    /// The resource's name.
    pub fn name(&self) -> &'static str {
        match self.resource {
            r if r == libc::RLIMIT_CORE => "RLIMIT_CORE",
            r if r == libc::RLIMIT_NOFILE => "RLIMIT_NOFILE",
            r if r == libc::RLIMIT_FSIZE => "RLIMIT_FSIZE",
            r if r == libc::RLIMIT_NPROC => "RLIMIT_NPROC",
            r if r == libc::RLIMIT_DATA => "RLIMIT_DATA",
            r if r == libc::RLIMIT_SIGPENDING => "RLIMIT_SIGPENDING",
            r if r == libc::RLIMIT_MEMLOCK => "RLIMIT_MEMLOCK",
            r if r == libc::RLIMIT_MSGQUEUE => "RLIMIT_MSGQUEUE",
            _ => "RLIMIT_?",
        }
    }

    /// Sets it.
    pub fn apply<S: Sys>(&self, sys: &mut S) -> SysResult<()> {
        sys.setrlimit(self.resource, self.value)
    }
}

/// The limits for a sandbox; `memory_cgroup` says whether a cgroup caps memory.
pub fn for_limits(limits: &Limits, memory_cgroup: bool) -> Vec<Rlimit> {
    let mut v = vec![
        Rlimit { resource: libc::RLIMIT_CORE, value: 0 },
        Rlimit { resource: libc::RLIMIT_NOFILE, value: limits.open_files.into() },
        Rlimit { resource: libc::RLIMIT_FSIZE, value: limits.file_bytes.max(1) },
        Rlimit { resource: libc::RLIMIT_NPROC, value: limits.processes.into() },
        Rlimit { resource: libc::RLIMIT_SIGPENDING, value: SIGPENDING },
        Rlimit { resource: libc::RLIMIT_MEMLOCK, value: MEMLOCK_BYTES },
        Rlimit { resource: libc::RLIMIT_MSGQUEUE, value: 0 },
    ];
    if !memory_cgroup {
        v.push(Rlimit { resource: libc::RLIMIT_DATA, value: limits.memory_bytes });
    }
    v
}

/// The limits of a zygote: a sandbox's, but for `RLIMIT_SIGPENDING` and
/// `RLIMIT_MEMLOCK`, which stay airlock's own. The kernel records a process's values of
/// these when it makes a user namespace, as the most the counter one level up may hold
/// when that namespace charges it; one level up from a zygote's children is the
/// zygote's own user, which all of them share. Were the zygote's values a sandbox's,
/// one child holding its share would leave its siblings nothing.
pub fn for_zygote(limits: &Limits, memory_cgroup: bool) -> Vec<Rlimit> {
    let shared = [libc::RLIMIT_SIGPENDING, libc::RLIMIT_MEMLOCK];
    for_limits(limits, memory_cgroup).into_iter().filter(|r| !shared.contains(&r.resource)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_user_kernel_counters_are_bounded_per_sandbox() {
        let v = for_limits(&Limits::default(), true);
        let get = |r| v.iter().find(|l| l.resource == r).map(|l| l.value);
        assert_eq!(get(libc::RLIMIT_SIGPENDING), Some(SIGPENDING));
        assert_eq!(get(libc::RLIMIT_MEMLOCK), Some(MEMLOCK_BYTES));
        assert_eq!(get(libc::RLIMIT_MSGQUEUE), Some(0));
        assert_eq!(get(libc::RLIMIT_DATA), None, "a memory cgroup enforces memory");
        // A zygote leaves the shared budgets at airlock's own values.
        let z = for_zygote(&Limits::default(), true);
        assert!(!z.iter().any(|l| l.resource == libc::RLIMIT_SIGPENDING || l.resource == libc::RLIMIT_MEMLOCK));
        assert!(z.iter().any(|l| l.resource == libc::RLIMIT_MSGQUEUE && l.value == 0));
        for r in &v {
            assert_ne!(r.name(), "RLIMIT_?");
        }
    }
}
