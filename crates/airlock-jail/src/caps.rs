//! Capabilities: the guest ends with none.
//!
//! The child is root of its user namespace until this step (it needs that to mount).
//! Then, in this order: securebits that stop uid 0 from regaining capabilities on
//! `execve` (`SECBIT_NOROOT`) and forbid ambient raises, both locked; every capability
//! dropped from the bounding set; the ambient set cleared; and the effective,
//! permitted and inheritable sets emptied with `capset`. Together with
//! `no_new_privs`, no later `execve` (even of a set-uid or file-capability binary) can
//! give any back.

use crate::sys::{Sys, SysResult};

const SECBIT_NOROOT: u64 = 1 << 0;
const SECBIT_NOROOT_LOCKED: u64 = 1 << 1;
const SECBIT_KEEP_CAPS_LOCKED: u64 = 1 << 5;
const SECBIT_NO_CAP_AMBIENT_RAISE: u64 = 1 << 6;
const SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED: u64 = 1 << 7;

/// The securebits the guest runs with.
pub const SECUREBITS: u64 = SECBIT_NOROOT
    | SECBIT_NOROOT_LOCKED
    | SECBIT_KEEP_CAPS_LOCKED
    | SECBIT_NO_CAP_AMBIENT_RAISE
    | SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED;

/// The highest capability number this kernel knows (`/proc/sys/kernel/cap_last_cap`).
pub fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(63)
}

/// `CAP_SETFCAP`: since Linux 5.12 the kernel lets a process map a new user
/// namespace's root to its parent's root only with it.
pub const CAP_SETFCAP: u64 = 1 << 31;

/// `CAP_SYS_ADMIN`: needed to create a PID namespace, and to mount a `/proc` for it.
pub const CAP_SYS_ADMIN: u64 = 1 << 21;

/// What a zygote keeps, in its own user namespace only, so that it can make each
/// child PID 1 of a new PID namespace (`CAP_SYS_ADMIN`) and the child can mount that
/// namespace's `/proc` and map its new user namespace's root (`CAP_SETFCAP`). Its
/// children drop both, with everything else, before any user code runs.
pub const ZYGOTE_CAPS: u64 = CAP_SETFCAP | CAP_SYS_ADMIN;

/// Drops every capability but those in `keep` from the bounding set (a zygote's). uid 0
/// keeps exactly `keep` through its `execve` (no `SECBIT_NOROOT`; the permitted set is
/// left as it is, because `no_new_privs` caps what `execve` grants at what was
/// permitted before); ambient raises stay forbidden.
pub fn drop_all_but<S: Sys>(sys: &mut S, last_cap: u32, keep: u64) -> SysResult<()> {
    let bits = SECBIT_KEEP_CAPS_LOCKED | SECBIT_NO_CAP_AMBIENT_RAISE | SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED;
    sys.prctl(libc::PR_SET_SECUREBITS, bits, 0)?;
    drop_bounding_and_ambient(sys, last_cap, keep)
}

/// Drops every capability for good.
pub fn drop_all<S: Sys>(sys: &mut S, last_cap: u32) -> SysResult<()> {
    sys.prctl(libc::PR_SET_SECUREBITS, SECUREBITS, 0)?;
    drop_bounding_and_ambient(sys, last_cap, 0)?;
    sys.clear_capabilities()
}

/// Every capability not in `keep` out of the bounding set, and the ambient set cleared
/// (a kernel that does not know a capability or ambient sets is not an error).
fn drop_bounding_and_ambient<S: Sys>(sys: &mut S, last_cap: u32, keep: u64) -> SysResult<()> {
    for cap in (0..=last_cap.min(63)).filter(|c| keep & (1u64 << c) == 0) {
        match sys.prctl(libc::PR_CAPBSET_DROP, cap.into(), 0) {
            Ok(_) | Err(libc::EINVAL) => {}
            Err(e) => return Err(e),
        }
    }
    match sys.prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL as u64, 0) {
        Ok(_) | Err(libc::EINVAL) => Ok(()),
        Err(e) => Err(e),
    }
}
