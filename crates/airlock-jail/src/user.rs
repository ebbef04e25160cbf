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
