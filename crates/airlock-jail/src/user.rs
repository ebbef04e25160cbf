//! The user namespace: who the guest is on the host.
//!
//! The sandbox's root (uid and gid 0 inside) maps to exactly one unprivileged host id,
//! never to host root:
//!
//! * when airlock runs as root, a per-sandbox id drawn from a high range
//!   ([`JailIds::uid_base`], 2^20 ids wide by default), so two sandboxes never share an
//!   owner by design and nothing on the host belongs to them;
//! * when airlock runs unprivileged (rootless), your own uid and gid — the only ids an
//!   unprivileged process may map.
//!
//! `setgroups` is denied in the namespace before the gid map is written, so the guest
//! cannot drop a supplementary group to escape a group-based denial, and the
//! supplementary groups of the host process are cleared before the clone (see
//! `spawn.rs`), so the guest carries no host group.
//!
//! **Who creates the namespace matters as much as the map.** The kernel charges every
//! per-user counter a process inside a user namespace uses (inotify instances and
//! watches, pending signals, POSIX message queue bytes, `SHM_LOCK`ed memory, processes,
//! namespaces) to its own user in that namespace *and* to the namespace's creator, one
//! level up, all the way to the host (`kernel/ucount.c`): the top-level counter is the
//! one of `(host, euid of whoever created the namespace)`. In root mode the spawner
//! thread therefore takes the sandbox's host uid and gid as its effective ids around the
//! `clone` ([`Creator`]), so a sandbox's use lands on its own host uid's counters, never
//! on root's (where it would starve host root and every other sandbox). Rootless, the
//! creator is your own uid: there the sandbox's own limits below and its rlimits
//! (`rlimit.rs`) bound what each sandbox takes of your budget.
//!
//! The sysctl-type counters (`user.max_inotify_*`) have a maximum per user namespace,
//! writable with `CAP_SYS_RESOURCE` in it; each sandbox sets small ones for its own
//! namespace while it still holds its capabilities ([`NAMESPACE_LIMITS`]).

use airlock_core::Error;

/// The range root-mode sandboxes draw their host uid/gid from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JailIds {
    /// First host id of the range (default 2 046 820 352 = 0x7A00_0000).
    pub uid_base: u32,
    /// Number of ids in the range (default 2^20).
    pub uid_count: u32,
}

impl Default for JailIds {
    fn default() -> Self {
        JailIds { uid_base: 0x7A00_0000, uid_count: 1 << 20 }
    }
}

/// The host ids a sandbox's root maps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdMap {
    /// Host uid of the sandbox's uid 0.
    pub host_uid: u32,
    /// Host gid of the sandbox's gid 0.
    pub host_gid: u32,
    /// True when airlock is unprivileged and maps its own ids.
    pub rootless: bool,
}

/// Random bits from the kernel (no userspace generator needed for one number).
fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    // SAFETY: getrandom writes at most 4 bytes into the live buffer.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n == 4 {
        u32::from_ne_bytes(b)
    } else {
        // Not random, but distinct enough per sandbox; collisions are harmless (see docs/jail.md).
        std::process::id().wrapping_mul(2_654_435_761)
            ^ (std::time::UNIX_EPOCH.elapsed().unwrap_or_default().subsec_nanos())
    }
}

impl IdMap {
    /// The mapping for a new sandbox of this process.
    pub fn for_new_sandbox(ids: &JailIds) -> Result<Self, Error> {
        let euid = nix::unistd::geteuid().as_raw();
        if euid != 0 {
            return Ok(IdMap { host_uid: euid, host_gid: nix::unistd::getegid().as_raw(), rootless: true });
        }
        if ids.uid_count == 0 || ids.uid_base == 0 || ids.uid_base.checked_add(ids.uid_count).is_none() {
            return Err(Error::invalid(format!(
                "jail uid range {}+{} is invalid: it must be non-empty, exclude 0 and stay below 2^32",
                ids.uid_base, ids.uid_count
            )));
        }
        let id = ids.uid_base + random_u32() % ids.uid_count;
        Ok(IdMap { host_uid: id, host_gid: id, rootless: false })
    }

    /// The host ids to create the sandbox's namespaces as: its own (root mode), or
    /// none (rootless: airlock's own ids are the only ones it can act as).
    pub fn creator(&self) -> Option<(u32, u32)> {
        (!self.rootless).then_some((self.host_uid, self.host_gid))
    }

    /// The `uid_map` line.
    pub fn uid_map(&self) -> String {
        format!("0 {} 1\n", self.host_uid)
    }

    /// The `gid_map` line.
    pub fn gid_map(&self) -> String {
        format!("0 {} 1\n", self.host_gid)
    }

    /// Writes `setgroups`, `uid_map` and `gid_map` of the child `pid` (from the parent).
    pub fn write(&self, pid: i32) -> Result<(), Error> {
        let w = |file: &str, text: &str| {
            std::fs::write(format!("/proc/{pid}/{file}"), text)
                .map_err(|e| Error::host(format!("writing /proc/{pid}/{file} ({}): {e}", text.trim())))
        };
        w("setgroups", "deny")?;
        w("uid_map", &self.uid_map())?;
        w("gid_map", &self.gid_map())
    }
}

/// A per-user-namespace maximum a sandbox sets for its own namespace (a file under
/// `/proc/sys/user/`, which always shows the writer's own user namespace).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NamespaceLimit {
    /// The file name under `/proc/sys/user/`.
    pub name: &'static str,
    /// The maximum.
    pub value: u32,
}

/// What each sandbox may hold of the per-user inotify counters. The host's own maxima
/// (`/proc/sys/user/max_inotify_*`, 128 instances by default) still cap the sum over
/// everything charged to the same host uid: one sandbox in root mode, every sibling of
/// a zygote, or every rootless sandbox and your own processes.
pub const NAMESPACE_LIMITS: &[NamespaceLimit] = &[
    NamespaceLimit { name: "max_inotify_instances", value: 8 },
    NamespaceLimit { name: "max_inotify_watches", value: 4096 },
];

/// Where a [`NamespaceLimit`] is written, with the text written there (prepared before
/// the clone: the child must not allocate).
pub fn namespace_limit_files() -> Vec<(std::ffi::CString, Vec<u8>)> {
    NAMESPACE_LIMITS
        .iter()
        .map(|l| {
            let path = std::ffi::CString::new(format!("/proc/sys/user/{}", l.name)).expect("no NUL");
            (path, l.value.to_string().into_bytes())
        })
        .collect()
}

/// Writes one namespace limit (in the child, while it holds `CAP_SYS_RESOURCE` in its
/// own user namespace). A kernel without the file (no inotify) has nothing to bound.
pub fn set_namespace_limit<S: crate::sys::Sys>(
    sys: &mut S,
    path: &std::ffi::CStr,
    text: &[u8],
) -> crate::sys::SysResult<()> {
    let fd = match sys.open(path, libc::O_WRONLY, 0) {
        Err(libc::ENOENT) => return Ok(()),
        other => other?,
    };
    let r = sys.write_all(fd, text);
    sys.close(fd);
    r
}

/// The spawner thread, acting as a sandbox's host uid and gid while it clones the
/// sandbox (root mode only), so that the kernel records that uid as the creator of the
/// sandbox's user namespace and charges its per-user counters there (see the module
/// documentation).
///
/// Only the effective ids change (`setresuid(-1, uid, -1)`, as raw system calls, so
/// only this thread): the real and saved ids stay 0, which is what lets [`restore`]
/// go back. The kernel clears the effective capabilities on the switch; they are set
/// again from the permitted set, so the clone is made with the same privilege as
/// before (a host that restricts user namespaces to `CAP_SYS_ADMIN` holders, such as
/// Ubuntu's AppArmor policy, still lets airlock make them; `clone3` can still create
/// the child in a root-owned cgroup). The child starts with these ids (real uid host
/// root, effective uid the sandbox's) and runs only airlock's code until it becomes
/// root of its namespace, as before. Like the workspace's `setfsuid` (`sandbox.rs`),
/// the switch makes the airlock process non-dumpable (`fs.suid_dumpable`).
///
/// [`restore`]: Creator::restore
#[derive(Debug)]
#[must_use = "the thread keeps the sandbox's ids until restore() is called"]
pub(crate) struct Creator {
    uid: u32,
    /// The thread's own effective uid and gid, restored afterwards.
    euid: u32,
    egid: u32,
}

impl Creator {
    /// Switches this thread's effective uid and gid to `uid`/`gid`, keeping its
    /// capabilities effective. On failure nothing is left changed.
    pub(crate) fn assume(uid: u32, gid: u32) -> Result<Creator, crate::sys::Errno> {
        let keep = u32::MAX; // (uid_t)-1: leave this id as it is
        let (mut r, mut euid, mut egid, mut s) = (0u32, 0u32, 0u32, 0u32);
        // SAFETY: the raw calls write three ids of this thread into live locals.
        unsafe {
            if libc::syscall(libc::SYS_getresuid, &mut r as *mut u32, &mut euid as *mut u32, &mut s as *mut u32) != 0
                || libc::syscall(libc::SYS_getresgid, &mut r as *mut u32, &mut egid as *mut u32, &mut s as *mut u32)
                    != 0
            {
                return Err(last_errno());
            }
        }
        // SAFETY: integer arguments; the raw call changes this thread's credentials only.
        if unsafe { libc::syscall(libc::SYS_setresgid, keep, gid, keep) } != 0 {
            return Err(last_errno());
        }
        // SAFETY: as above.
        if unsafe { libc::syscall(libc::SYS_setresuid, keep, uid, keep) } != 0 {
            let e = last_errno();
            // SAFETY: as above; back to this thread's own effective gid.
            unsafe { libc::syscall(libc::SYS_setresgid, keep, egid, keep) };
            return Err(e);
        }
        let c = Creator { uid, euid, egid };
        if let Err(e) = effective_from_permitted() {
            let _ = c.restore();
            return Err(e);
        }
        Ok(c)
    }

    /// Back to the thread's own effective uid and gid (root's: the kernel then sets
    /// the effective capabilities from the permitted set again).
    pub(crate) fn restore(self) -> Result<(), crate::sys::Errno> {
        let keep = u32::MAX;
        // SAFETY: integer arguments; this thread's credentials only. The saved uid
        // still holds the old effective one, so going back needs no capability.
        if unsafe { libc::syscall(libc::SYS_setresuid, keep, self.euid, keep) } != 0 {
            return Err(last_errno());
        }
        // SAFETY: as above (CAP_SETGID is effective again).
        if unsafe { libc::syscall(libc::SYS_setresgid, keep, self.egid, keep) } != 0 {
            return Err(last_errno());
        }
        Ok(())
    }

    /// The host uid this thread acts as.
    pub(crate) fn uid(&self) -> u32 {
        self.uid
    }
}

fn last_errno() -> crate::sys::Errno {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO)
}

/// `capget`, then `capset` with the effective set equal to the permitted one (this
/// thread only).
fn effective_from_permitted() -> Result<(), crate::sys::Errno> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let header = Header { version: 0x2008_0522, pid: 0 };
    let mut data = [Data::default(); 2];
    // SAFETY: header and data are live and laid out as the v3 capget ABI requires.
    if unsafe { libc::syscall(libc::SYS_capget, &header as *const Header, data.as_mut_ptr()) } != 0 {
        return Err(last_errno());
    }
    for d in &mut data {
        d.effective = d.permitted;
    }
    // SAFETY: as above; pid 0 is this thread.
    if unsafe { libc::syscall(libc::SYS_capset, &header as *const Header, data.as_ptr()) } != 0 {
        return Err(last_errno());
    }
    Ok(())
}

/// Inside the namespace: become its root (uid and gid 0, i.e. the mapped host ids).
/// The capabilities the namespace's creator holds in it are kept (the old ids were not
/// the namespace's root, so no "drop on setuid" rule applies).
pub fn become_root<S: crate::sys::Sys>(sys: &mut S) -> crate::sys::SysResult<()> {
    sys.setresgid(0)?;
    sys.setresuid(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_are_single_lines_to_one_host_id() {
        let m = IdMap { host_uid: 2_046_820_999, host_gid: 2_046_820_999, rootless: false };
        assert_eq!(m.uid_map(), "0 2046820999 1\n");
        assert_eq!(m.gid_map(), "0 2046820999 1\n");
    }

    #[test]
    fn root_mode_ids_stay_in_range_and_never_zero() {
        if !nix::unistd::geteuid().is_root() {
            let m = IdMap::for_new_sandbox(&JailIds::default()).unwrap();
            assert!(m.rootless);
            assert_eq!(m.host_uid, nix::unistd::geteuid().as_raw());
            return;
        }
        let ids = JailIds { uid_base: 1_000_000, uid_count: 16 };
        for _ in 0..100 {
            let m = IdMap::for_new_sandbox(&ids).unwrap();
            assert!(!m.rootless);
            assert!((1_000_000..1_000_016).contains(&m.host_uid), "{}", m.host_uid);
        }
        assert!(IdMap::for_new_sandbox(&JailIds { uid_base: 0, uid_count: 5 }).is_err());
        assert!(IdMap::for_new_sandbox(&JailIds { uid_base: u32::MAX, uid_count: 5 }).is_err());
    }
}
