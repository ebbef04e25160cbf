//! Landlock: file-system access rules enforced by the kernel's LSM, a second fence
//! behind the mount namespace (best effort: used when the kernel has it, reported by
//! `airlock doctor` when it does not).
//!
//! Rules, for every right the running kernel's ABI knows:
//!
//! * `/` (everything the sandbox can see): read, list and execute only;
//! * `/workspace` and `/tmp`: everything (create, write, remove, rename, truncate);
//! * `/dev`: read and write (the null, zero, full and random devices) and device ioctls.
//!
//! With ABI 6 (Linux 6.12) the sandbox is also *scoped*: it cannot connect to abstract
//! Unix sockets or signal processes created outside it — which matters when the host's
//! network namespace is shared.
//!
//! The system calls are made directly (three of them) because the child must not
//! allocate; the `landlock` crate's builder does.

use std::ffi::CString;

use crate::sys::{Sys, SysResult};

const EXECUTE: u64 = 1 << 0;
const WRITE_FILE: u64 = 1 << 1;
const READ_FILE: u64 = 1 << 2;
const READ_DIR: u64 = 1 << 3;
const REFER: u64 = 1 << 13;
const TRUNCATE: u64 = 1 << 14;
const IOCTL_DEV: u64 = 1 << 15;
const SCOPE_ABSTRACT_UNIX_SOCKET: u64 = 1 << 0;
const SCOPE_SIGNAL: u64 = 1 << 1;
const CREATE_RULESET_VERSION: u32 = 1 << 0;

/// The Landlock ABI version of the running kernel, or why there is none.
pub fn abi() -> Result<u32, String> {
    // SAFETY: the version query takes no attribute struct.
    let r = unsafe {
        libc::syscall(libc::SYS_landlock_create_ruleset, std::ptr::null::<u8>(), 0usize, CREATE_RULESET_VERSION)
    };
    if r >= 0 {
        return Ok(r as u32);
    }
    match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::ENOSYS) => {
            Err("the kernel has no Landlock; use Linux 5.13+ built with CONFIG_SECURITY_LANDLOCK=y".into())
        }
        Some(libc::EOPNOTSUPP) => {
            Err("Landlock is built in but disabled; add 'landlock' to the lsm= kernel parameter".into())
        }
        other => Err(format!("Landlock probe failed: errno {other:?}")),
    }
}

/// File-system rights an ABI version can restrict.
pub fn handled_fs(abi: u32) -> u64 {
    let mut all = (1u64 << 13) - 1;
    if abi >= 2 {
        all |= REFER;
    }
    if abi >= 3 {
        all |= TRUNCATE;
    }
    if abi >= 5 {
        all |= IOCTL_DEV;
    }
    all
}

/// The Landlock policy of a sandbox.
#[derive(Debug, Clone)]
pub struct Policy {
    /// ABI version the policy was made for.
    pub abi: u32,
    /// Rights restricted.
    pub handled_fs: u64,
    /// Scopes (ABI 6+).
    pub scoped: u64,
    /// `(path inside the sandbox, rights granted beneath it)`.
    pub rules: Vec<(CString, u64)>,
}

impl Policy {
    /// The sandbox policy for a kernel with Landlock ABI `abi`.
    pub fn for_abi(abi: u32) -> Policy {
        let handled = handled_fs(abi);
        let read = EXECUTE | READ_FILE | READ_DIR;
        let dev = (READ_FILE | WRITE_FILE | TRUNCATE | IOCTL_DEV) & handled;
        let ws = std::ffi::CString::new(airlock_core::paths::WORKSPACE_MOUNT).expect("no NUL");
        Policy {
            abi,
            handled_fs: handled,
            scoped: if abi >= 6 { SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL } else { 0 },
            rules: vec![(c"/".into(), read), (ws, handled), (c"/tmp".into(), handled), (c"/dev".into(), dev)],
        }
    }

    pub(crate) fn attr_size(&self) -> usize {
        match self.abi {
            0..=3 => 8,
            4 | 5 => 16,
            _ => 24,
        }
    }

    /// Creates the ruleset, adds the rules and restricts the calling process (which
    /// must have `no_new_privs`). A kernel without Landlock is not an error.
    pub fn apply<S: Sys>(&self, sys: &mut S) -> SysResult<()> {
        let rs = match sys.landlock_create_ruleset(self.handled_fs, 0, self.scoped, self.attr_size()) {
            Ok(fd) => fd,
            Err(libc::ENOSYS) | Err(libc::EOPNOTSUPP) => return Ok(()),
            Err(e) => return Err(e),
        };
        for (path, access) in &self.rules {
            let fd = sys.open(path, libc::O_PATH, 0)?;
            let r = sys.landlock_add_path_rule(rs, access & self.handled_fs, fd);
            sys.close(fd);
            r?;
        }
        let r = sys.landlock_restrict_self(rs);
        sys.close(rs);
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::Recorder;

    #[test]
    fn policy_is_read_only_but_for_workspace_tmp_and_dev() {
        let p = Policy::for_abi(6);
        let root = p.rules.iter().find(|(p, _)| p.as_bytes() == b"/").unwrap().1;
        assert_eq!(root & (WRITE_FILE | (1 << 8) | (1 << 5)), 0, "no write, create or remove under /");
        let ws = p.rules.iter().find(|(p, _)| p.as_bytes() == b"/workspace").unwrap().1;
        assert_eq!(ws, handled_fs(6));
        assert_eq!(p.scoped, SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL);
        assert_eq!(Policy::for_abi(3).scoped, 0);
        assert_eq!(handled_fs(1), 0x1fff);
    }

    #[test]
    fn apply_opens_each_path_and_restricts_last() {
        let mut r = Recorder::default();
        Policy::for_abi(4).apply(&mut r).unwrap();
        assert!(r.calls[0].starts_with("landlock_create_ruleset") && r.calls[0].ends_with("size=16"), "{:?}", r.calls);
        assert!(r.calls.last().unwrap().starts_with("close"));
        assert!(r.calls[r.calls.len() - 2].starts_with("landlock_restrict_self"));
        assert_eq!(r.calls.iter().filter(|c| c.starts_with("landlock_add_rule")).count(), 4);
        // A kernel without Landlock: nothing else happens, and no error.
        let mut r = Recorder { fail: Some(("landlock_create_ruleset".into(), libc::ENOSYS)), ..Recorder::default() };
        Policy::for_abi(4).apply(&mut r).unwrap();
        assert_eq!(r.calls.len(), 1);
    }

    #[test]
    fn abi_probe_answers() {
        match abi() {
            Ok(v) => assert!(v >= 1),
            Err(e) => eprintln!("skipped: {e}"),
        }
    }
}
