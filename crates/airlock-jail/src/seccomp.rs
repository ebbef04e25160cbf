//! seccomp-bpf: the system calls the guest may not make.
//!
//! The policy is a deny list on top of the namespaces (which already confine most
//! calls): everything Docker's default profile blocks for an unprivileged container,
//! plus what a code sandbox must not reach. It is compiled once with `seccompiler`
//! and installed as the very last step before `execve`.
//!
//! | what | calls | answer |
//! |------|-------|--------|
//! | new namespaces, mounts | `unshare`, `setns`, `clone` with any `CLONE_NEW*` flag, `mount`, `umount2`, `pivot_root`, the new mount API (`fsopen`, `fsconfig`, `fsmount`, `fspick`, `move_mount`, `open_tree`, `open_tree_attr`, `mount_setattr`) | `EPERM` |
//! | `clone3` | its flags are in memory, where BPF cannot look | `ENOSYS`, so libc falls back to `clone`, whose flags are checked |
//! | other processes' memory | `ptrace`, `process_vm_readv`, `process_vm_writev`, `kcmp`, `pidfd_getfd` | `EPERM` |
//! | kernel attack surface | `bpf`, `perf_event_open`, `userfaultfd`, `io_uring_setup/enter/register`, `add_key`, `request_key`, `keyctl`, `open_by_handle_at`, `name_to_handle_at`, `fanotify_init` | `EPERM` |
//! | POSIX message queues | `mq_open`, `mq_unlink`, `mq_timedsend`, `mq_timedreceive`, `mq_notify`, `mq_getsetattr` (nothing in Python's standard library uses them; their bytes are a per-user kernel counter, and `mq_notify` has a history of exploitable bugs) | `EPERM` |
//! | host administration | `reboot`, `kexec_load`, `kexec_file_load`, `init_module`, `finit_module`, `delete_module`, `swapon`, `swapoff`, `acct`, `quotactl`, `quotactl_fd`, `syslog`, `vhangup`, `settimeofday`, `clock_settime`, `clock_adjtime`, `iopl`, `ioperm`, `sysfs`, `ustat`, `uselib`, `_sysctl`, the NUMA calls `mbind`, `set_mempolicy`, `get_mempolicy`, `move_pages` | `EPERM` |
//! | terminal injection | `ioctl` with `TIOCSTI` or `TIOCLINUX` (low 32 bits of the request compared, so high garbage bits do not bypass it) | `EPERM` |
//! | sockets | `socket(AF_ALG)` (kernel crypto), `socket(AF_VSOCK)` (hypervisor channel) | `EPERM` |
//! | execution domains | `personality` with anything but the values glibc uses (0, 8, 0x20000, 0x20008, query) | `EPERM` |
//! | other ABIs | a call with another architecture's number (i386 `int 0x80`, x32 numbers with bit 30 set) | **kill the process** |
//!
//! Denied calls fail with `EPERM` so programs see an ordinary error and can carry on
//! (Python raises `PermissionError`). The one exception is a call through another
//! ABI: a normal 64-bit interpreter never makes one, so it can only be an attempt to
//! reach a call by a number this list does not cover; the process is killed
//! (`SIGSYS`, reported as status `killed`) rather than answered.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op, SeccompCondition as Cond, SeccompFilter,
    SeccompRule, TargetArch, sock_filter,
};

use crate::sys::{Sys, SysResult};

/// The compiled filters, installed in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filters {
    /// Each a complete BPF program.
    pub programs: Vec<BpfProgram>,
}

impl Filters {
    /// Installs every filter (needs `no_new_privs`).
    pub fn install<S: Sys>(&self, sys: &mut S) -> SysResult<()> {
        for p in &self.programs {
            sys.seccomp_install(p)?;
        }
        Ok(())
    }

    /// Total BPF instructions.
    pub fn instructions(&self) -> usize {
        self.programs.iter().map(|p| p.len()).sum()
    }
}

/// `TIOCSTI`: push a byte into a terminal's input queue.
pub const TIOCSTI: u64 = 0x5412;
/// `TIOCLINUX`: Linux console subcodes (selection paste can inject input).
pub const TIOCLINUX: u64 = 0x541C;
const AF_ALG: u64 = 38;
const AF_VSOCK: u64 = 40;
/// `open_tree_attr` (Linux 6.15); numbers from 424 on are the same on every architecture.
const SYS_OPEN_TREE_ATTR: i64 = 467;

/// Calls denied outright (`EPERM`), on every architecture.
fn always_denied() -> Vec<i64> {
    use libc::*;
    let mut v: Vec<i64> = vec![
        SYS_unshare,
        SYS_setns,
        SYS_mount,
        SYS_umount2,
        SYS_pivot_root,
        SYS_fsopen,
        SYS_fsconfig,
        SYS_fsmount,
        SYS_fspick,
        SYS_move_mount,
        SYS_open_tree,
        SYS_mount_setattr,
        SYS_OPEN_TREE_ATTR,
        SYS_ptrace,
        SYS_process_vm_readv,
        SYS_process_vm_writev,
        SYS_kcmp,
        SYS_pidfd_getfd,
        SYS_bpf,
        SYS_perf_event_open,
        SYS_userfaultfd,
        SYS_io_uring_setup,
        SYS_io_uring_enter,
        SYS_io_uring_register,
        SYS_add_key,
        SYS_request_key,
        SYS_keyctl,
        SYS_open_by_handle_at,
        SYS_name_to_handle_at,
        SYS_fanotify_init,
        SYS_mq_open,
        SYS_mq_unlink,
        SYS_mq_timedsend,
        SYS_mq_timedreceive,
        SYS_mq_notify,
        SYS_mq_getsetattr,
        SYS_reboot,
        SYS_kexec_load,
        SYS_kexec_file_load,
        SYS_init_module,
        SYS_finit_module,
        SYS_delete_module,
        SYS_swapon,
        SYS_swapoff,
        SYS_acct,
        SYS_quotactl,
        SYS_quotactl_fd,
        SYS_syslog,
        SYS_vhangup,
        SYS_settimeofday,
        SYS_clock_settime,
        SYS_clock_adjtime,
        SYS_mbind,
        SYS_set_mempolicy,
        SYS_get_mempolicy,
        SYS_move_pages,
    ];
    #[cfg(target_arch = "x86_64")]
    v.extend([SYS_iopl, SYS_ioperm, SYS_sysfs, SYS_ustat, SYS_uselib, SYS__sysctl, SYS_lookup_dcookie]);
    #[cfg(target_arch = "aarch64")]
    v.extend([SYS_lookup_dcookie]);
    v
}

fn cond(arg: u8, len: Len, op: Op, value: u64) -> Cond {
    Cond::new(arg, len, op, value).expect("argument index below 6")
}

fn rule(conds: Vec<Cond>) -> SeccompRule {
    SeccompRule::new(conds).expect("a rule with conditions")
}

/// The deny rules: syscall → rules (an empty list denies unconditionally).
pub fn deny_rules() -> BTreeMap<i64, Vec<SeccompRule>> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = always_denied().into_iter().map(|n| (n, Vec::new())).collect();
    let ns_flags = [
        libc::CLONE_NEWNS,
        libc::CLONE_NEWUTS,
        libc::CLONE_NEWIPC,
        libc::CLONE_NEWUSER,
        libc::CLONE_NEWPID,
        libc::CLONE_NEWNET,
        libc::CLONE_NEWCGROUP,
    ];
    rules.insert(
        libc::SYS_clone,
        ns_flags.iter().map(|&f| rule(vec![cond(0, Len::Dword, Op::MaskedEq(f as u64), f as u64)])).collect(),
    );
    rules.insert(
        libc::SYS_ioctl,
        [TIOCSTI, TIOCLINUX].iter().map(|&r| rule(vec![cond(1, Len::Dword, Op::Eq, r)])).collect(),
    );
    rules.insert(
        libc::SYS_socket,
        [AF_ALG, AF_VSOCK].iter().map(|&f| rule(vec![cond(0, Len::Dword, Op::Eq, f)])).collect(),
    );
    rules.insert(
        libc::SYS_personality,
        vec![rule(
            [0u64, 0x0008, 0x0002_0000, 0x0002_0008, 0xffff_ffff]
                .iter()
                .map(|&p| cond(0, Len::Dword, Op::Ne, p))
                .collect(),
        )],
    );
    rules
}

fn target_arch() -> Result<TargetArch, String> {
    TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|_| format!("seccomp filters are not built for {} (x86_64 and aarch64 only)", std::env::consts::ARCH))
}

/// Classic BPF opcodes used by the ABI guard.
mod op {
    /// `BPF_LD | BPF_W | BPF_ABS`.
    pub const LD_W_ABS: u16 = 0x20;
    /// `BPF_JMP | BPF_JEQ | BPF_K`.
    pub const JEQ_K: u16 = 0x05 | 0x10;
    /// `BPF_JMP | BPF_JGE | BPF_K`.
    pub const JGE_K: u16 = 0x05 | 0x30;
    /// `BPF_RET | BPF_K`.
    pub const RET_K: u16 = 0x06;
}

const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// Kills a process that uses the i386 or x32 ABI (x86_64 only; seccompiler's own
/// architecture check covers the rest, but not x32 numbers, which share x86_64's
/// audit architecture).
fn abi_guard() -> Vec<sock_filter> {
    if !cfg!(target_arch = "x86_64") {
        return Vec::new();
    }
    let kill = libc::SECCOMP_RET_KILL_PROCESS;
    vec![
        sock_filter { code: op::LD_W_ABS, jt: 0, jf: 0, k: 4 },
        sock_filter { code: op::JEQ_K, jt: 1, jf: 0, k: AUDIT_ARCH_X86_64 },
        sock_filter { code: op::RET_K, jt: 0, jf: 0, k: kill },
        sock_filter { code: op::LD_W_ABS, jt: 0, jf: 0, k: 0 },
        sock_filter { code: op::JGE_K, jt: 0, jf: 1, k: X32_SYSCALL_BIT },
        sock_filter { code: op::RET_K, jt: 0, jf: 0, k: kill },
    ]
}

/// Compiles the policy. Done once per process.
pub fn compile() -> Result<Filters, String> {
    let arch = target_arch()?;
    let deny = SeccompFilter::new(deny_rules(), SeccompAction::Allow, SeccompAction::Errno(libc::EPERM as u32), arch)
        .map_err(|e| format!("seccomp deny list: {e}"))?;
    let deny: BpfProgram = deny.try_into().map_err(|e: seccompiler::BackendError| format!("seccomp deny list: {e}"))?;
    let mut first = abi_guard();
    first.extend(deny);
    let clone3 = SeccompFilter::new(
        [(libc::SYS_clone3, Vec::new())].into_iter().collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )
    .map_err(|e| format!("seccomp clone3 filter: {e}"))?;
    let clone3: BpfProgram =
        clone3.try_into().map_err(|e: seccompiler::BackendError| format!("seccomp clone3 filter: {e}"))?;
    Ok(Filters { programs: vec![first, clone3] })
}

/// The compiled policy, shared by every sandbox of the process.
pub fn filters() -> Result<&'static Filters, String> {
    static F: std::sync::OnceLock<Result<Filters, String>> = std::sync::OnceLock::new();
    F.get_or_init(compile).as_ref().map_err(|e| e.clone())
}

/// Whether the kernel supports seccomp filters (without installing one).
pub fn supported() -> Result<(), String> {
    // With a null program the call fails with EFAULT when filters are supported and
    // EINVAL when the kernel lacks CONFIG_SECCOMP_FILTER.
    // SAFETY: a null filter pointer is rejected before anything is installed.
    let r = unsafe { libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, 0usize, 0, 0) };
    match std::io::Error::last_os_error().raw_os_error() {
        _ if r == 0 => Ok(()),
        Some(libc::EFAULT) => Ok(()),
        Some(libc::EINVAL) => Err("the kernel has no seccomp filter support (CONFIG_SECCOMP_FILTER)".into()),
        other => Err(format!("seccomp probe failed: errno {other:?}")),
    }
}

#[cfg(test)]
pub(crate) mod bpf_eval {
    //! A classic-BPF interpreter for the instructions seccompiler and the ABI guard
    //! emit, so the policy can be checked call by call without installing it.
    use seccompiler::sock_filter;

    /// The kernel's `struct seccomp_data`.
    pub struct Data {
        pub nr: i32,
        pub arch: u32,
        pub args: [u64; 6],
    }

    fn word(d: &Data, off: u32) -> u32 {
        match off {
            0 => d.nr as u32,
            4 => d.arch,
            o if (16..64).contains(&o) => {
                let a = d.args[((o - 16) / 8) as usize];
                if (o - 16) % 8 == 0 { a as u32 } else { (a >> 32) as u32 }
            }
            o => panic!("load at offset {o}"),
        }
    }

    /// Runs one program.
    pub fn run(prog: &[sock_filter], d: &Data) -> u32 {
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let i = &prog[pc];
            pc += 1;
            match i.code {
                0x20 => acc = word(d, i.k),
                0x54 => acc &= i.k,
                0x05 => pc += i.k as usize,
                0x15 | 0x25 | 0x35 | 0x45 => {
                    let t = match i.code {
                        0x15 => acc == i.k,
                        0x25 => acc > i.k,
                        0x35 => acc >= i.k,
                        _ => acc & i.k != 0,
                    };
                    pc += if t { i.jt } else { i.jf } as usize;
                }
                0x06 => return i.k,
                c => panic!("unexpected BPF opcode {c:#x}"),
            }
        }
    }

    /// The kernel's verdict over several filters: the most restrictive action wins.
    pub fn verdict(progs: &[Vec<sock_filter>], d: &Data) -> u32 {
        progs.iter().map(|p| run(p, d)).min_by_key(|&r| r as i32).expect("at least one filter")
    }
}

#[cfg(test)]
mod tests {
    use super::bpf_eval::{Data, verdict};
    use super::*;

    const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
    const KILL: u32 = libc::SECCOMP_RET_KILL_PROCESS;

    fn errno(e: i32) -> u32 {
        libc::SECCOMP_RET_ERRNO | e as u32
    }

    fn native_arch() -> u32 {
        if cfg!(target_arch = "x86_64") { AUDIT_ARCH_X86_64 } else { 0xC000_00B7 }
    }

    fn check(nr: i64, args: [u64; 6]) -> u32 {
        let f = compile().unwrap();
        verdict(&f.programs, &Data { nr: nr as i32, arch: native_arch(), args })
    }

    #[test]
    fn ordinary_calls_are_allowed() {
        for nr in [libc::SYS_read, libc::SYS_write, libc::SYS_openat, libc::SYS_mmap, libc::SYS_execve, libc::SYS_wait4]
        {
            assert_eq!(check(nr, [0; 6]), ALLOW, "syscall {nr}");
        }
        // A plain fork-style clone and a thread clone are fine.
        assert_eq!(check(libc::SYS_clone, [libc::SIGCHLD as u64, 0, 0, 0, 0, 0]), ALLOW);
        let thread =
            (libc::CLONE_VM | libc::CLONE_FS | libc::CLONE_FILES | libc::CLONE_SIGHAND | libc::CLONE_THREAD) as u64;
        assert_eq!(check(libc::SYS_clone, [thread, 0, 0, 0, 0, 0]), ALLOW);
        assert_eq!(check(libc::SYS_ioctl, [1, libc::TCGETS, 0, 0, 0, 0]), ALLOW);
        assert_eq!(check(libc::SYS_socket, [libc::AF_INET as u64, 1, 0, 0, 0, 0]), ALLOW);
        assert_eq!(check(libc::SYS_personality, [0xffff_ffff, 0, 0, 0, 0, 0]), ALLOW);
    }

    #[test]
    fn dangerous_calls_get_eperm() {
        for nr in [
            libc::SYS_ptrace,
            libc::SYS_mount,
            libc::SYS_unshare,
            libc::SYS_setns,
            libc::SYS_keyctl,
            libc::SYS_add_key,
            libc::SYS_bpf,
            libc::SYS_perf_event_open,
            libc::SYS_userfaultfd,
            libc::SYS_io_uring_setup,
            libc::SYS_process_vm_readv,
            libc::SYS_process_vm_writev,
            libc::SYS_fsopen,
            libc::SYS_move_mount,
            libc::SYS_open_tree,
            libc::SYS_mount_setattr,
            libc::SYS_kexec_load,
            libc::SYS_init_module,
            libc::SYS_reboot,
            libc::SYS_mq_open,
            libc::SYS_mq_notify,
            libc::SYS_mq_timedsend,
            SYS_OPEN_TREE_ATTR,
        ] {
            assert_eq!(check(nr, [0; 6]), errno(libc::EPERM), "syscall {nr}");
        }
    }

    #[test]
    fn clone_with_namespace_flags_is_denied_and_clone3_falls_back() {
        for f in [libc::CLONE_NEWUSER, libc::CLONE_NEWNS, libc::CLONE_NEWPID, libc::CLONE_NEWNET, libc::CLONE_NEWCGROUP]
        {
            let flags = (f | libc::SIGCHLD) as u64;
            assert_eq!(check(libc::SYS_clone, [flags, 0, 0, 0, 0, 0]), errno(libc::EPERM), "flag {f:#x}");
        }
        assert_eq!(check(libc::SYS_clone3, [0; 6]), errno(libc::ENOSYS));
    }

    #[test]
    fn terminal_injection_is_denied_whatever_the_high_bits() {
        for req in [TIOCSTI, TIOCLINUX, TIOCSTI | 0xdead_beef_0000_0000, TIOCLINUX | 0x1_0000_0000] {
            assert_eq!(check(libc::SYS_ioctl, [0, req, 0, 0, 0, 0]), errno(libc::EPERM), "request {req:#x}");
        }
    }

    #[test]
    fn alg_and_vsock_sockets_are_denied() {
        assert_eq!(check(libc::SYS_socket, [AF_ALG, 5, 0, 0, 0, 0]), errno(libc::EPERM));
        assert_eq!(check(libc::SYS_socket, [AF_VSOCK, 1, 0, 0, 0, 0]), errno(libc::EPERM));
        assert_eq!(check(libc::SYS_personality, [0x0040_0000, 0, 0, 0, 0, 0]), errno(libc::EPERM));
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn other_abis_are_killed() {
        let f = compile().unwrap();
        // i386 (int 0x80): audit arch 0x40000003.
        let i386 = Data { nr: 26, arch: 0x4000_0003, args: [0; 6] };
        assert_eq!(verdict(&f.programs, &i386), KILL);
        // x32: x86_64's audit arch with bit 30 set in the number (x32 ptrace is 521).
        let x32 = Data { nr: 0x4000_0000 + 521, arch: AUDIT_ARCH_X86_64, args: [0; 6] };
        assert_eq!(verdict(&f.programs, &x32), KILL);
    }

    #[test]
    fn seccomp_is_supported_here() {
        match supported() {
            Ok(()) => {}
            Err(e) => eprintln!("skipped: {e}"),
        }
        assert!(filters().unwrap().instructions() < 4096);
    }
}
