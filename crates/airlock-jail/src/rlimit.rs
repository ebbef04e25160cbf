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
//!
//! `RLIMIT_AS` is never used: it breaks programs that reserve large address ranges.
//! CPU time is measured by the host from the cgroup, not by `RLIMIT_CPU`: the driver
//! is the PID namespace's init, and an init ignores `SIGXCPU`.

use airlock_core::Limits;

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
    ];
    if !memory_cgroup {
        v.push(Rlimit { resource: libc::RLIMIT_DATA, value: limits.memory_bytes });
    }
    v
}
