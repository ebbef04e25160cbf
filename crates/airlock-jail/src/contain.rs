//! The containment sequence, in the order it runs. This file is the policy: each step
//! below is one line of [`plan`], executed top to bottom by the cloned child, and each
//! mechanism lives in its own module.
//!
//! Before the first step the parent has already (see `spawn.rs`): as root, opened
//! every host directory the new root binds as a detached mount (`mount::take_sources`;
//! the child inherits the descriptors);
//! created the child with `clone(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID |
//! CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWNET)` (no `CLONE_NEWNET` for the host
//! network), written its uid/gid maps (`setgroups` denied) and put it in its cgroup.
//!
//! 1. reset signal handlers inherited from airlock (signals stay blocked);
//! 2. wait until the parent says the maps and the cgroup are in place;
//! 3. become root of the new user namespace (uid/gid 0 = the unprivileged host ids);
//! 4. die with the parent (`PR_SET_PDEATHSIG`, `SIGKILL`): if airlock is killed, the
//!    driver — the PID namespace's init — dies and takes every process with it;
//! 5. bound the new user namespace's own inotify counters (`user.rs`), through
//!    `/proc/sys/user`, which shows the writer's user namespace;
//! 6. enter a new cgroup namespace (rooted at the sandbox's own cgroup);
//! 7. build the new root and `pivot_root` into it (`mount.rs`): rootless, first take
//!    every host directory it binds as a detached mount, while the host's file system is
//!    still visible at their paths; then attach each in place;
//! 8. set the host name (UTS namespace);
//! 9. bring loopback up (own network namespace only; `net.rs`);
//! 10. install stdin (`/dev/null`), stdout, stderr and the channel as fds 0-3; mark
//!     every other descriptor close-on-exec;
//! 11. new session (`setsid`): no controlling terminal to inject into;
//! 12. `chdir("/workspace")`;
//! 13. drop every capability (`caps.rs`);
//! 14. `no_new_privs`;
//! 15. Landlock (`landlock.rs`, best effort);
//! 16. hand the workspace directory to the host (an fd over the setup socket);
//! 17. set rlimits (`rlimit.rs`) — after every step that opens a descriptor: until
//!     `execve` the child still holds copies of airlock's descriptors (close-on-exec),
//!     and with `RLIMIT_NOFILE` lowered first, a busy server's numbers would leave it
//!     none below the limit;
//! 18. unblock signals;
//! 19. seccomp (`seccomp.rs`), last, so nothing above needs an exception in it;
//! 20. `execve` the interpreter with an environment rebuilt from scratch.

use std::ffi::CString;

use crate::landlock;
use crate::mount::{MountOp, SourceFds};
use crate::process::{ExecImage, Stdio};
use crate::rlimit::Rlimit;
use crate::seccomp::Filters;
use crate::sys::{Errno, Sys, SysResult};

/// The sandbox's host name.
pub const HOSTNAME: &str = "airlock";

/// One step of the sequence.
#[derive(Debug)]
pub enum Step {
    /// Signal handlers back to their defaults.
    ResetSignals,
    /// Blocks until the parent sends the go-ahead byte on the setup socket.
    AwaitParent,
    /// `setresgid(0)`, `setresuid(0)` in the new user namespace.
    BecomeNamespaceRoot,
    /// `PR_SET_PDEATHSIG = SIGKILL` (after the id change, which would clear it).
    DieWithParent,
    /// Writes a per-user-namespace maximum (`/proc/sys/user/...`, see `user.rs`).
    LimitUserNamespace {
        /// The file.
        path: CString,
        /// The value, as text.
        text: Vec<u8>,
    },
    /// `unshare(CLONE_NEWCGROUP)`.
    EnterCgroupNamespace,
    /// One mount-namespace operation.
    Mount(MountOp),
    /// Opens the workspace and sends the descriptor to the host.
    SendWorkspace(CString),
    /// `sethostname`.
    SetHostname(&'static str),
    /// `lo` up.
    LoopbackUp,
    /// One rlimit.
    Rlimit(Rlimit),
    /// fds 0-3, every other fd close-on-exec.
    Stdio(Stdio),
    /// `setsid`.
    NewSession,
    /// `chdir`.
    Chdir(CString),
    /// Every capability, for good.
    DropCapabilities {
        /// `/proc/sys/kernel/cap_last_cap`.
        last_cap: u32,
        /// Capabilities kept in the bounding set, regained by uid 0 at `execve`
        /// (0 for every sandbox; `caps::ZYGOTE_CAPS` for a zygote, see [`Setup::keep_caps`]).
        keep: u64,
    },
    /// `PR_SET_NO_NEW_PRIVS`.
    NoNewPrivs,
    /// Landlock rules.
    Landlock(landlock::Policy),
    /// Unblocks every signal (the mask survives `execve`).
    UnblockSignals,
    /// seccomp filters.
    Seccomp(&'static Filters),
    /// `execve`.
    Exec(ExecImage),
}

impl Step {
    /// A one-line description, used in error messages ("jail setup failed at ...").
    pub fn describe(&self) -> String {
        match self {
            Step::ResetSignals => "reset signal handlers".into(),
            Step::AwaitParent => "wait for the host to set up ids and cgroups".into(),
            Step::BecomeNamespaceRoot => "become root of the user namespace".into(),
            Step::DieWithParent => "set the parent-death signal".into(),
            Step::LimitUserNamespace { path, text } => format!(
                "limit {} to {} in the sandbox's user namespace",
                path.to_string_lossy(),
                String::from_utf8_lossy(text)
            ),
            Step::EnterCgroupNamespace => "enter a new cgroup namespace".into(),
            Step::Mount(m) => m.describe(),
            Step::SendWorkspace(p) => format!("open {} and pass it to the host", p.to_string_lossy()),
            Step::SetHostname(h) => format!("set the host name to {h}"),
            Step::LoopbackUp => "bring the loopback interface up".into(),
            Step::Rlimit(r) => format!("set {} to {}", r.name(), r.value),
            Step::Stdio(_) => "install stdin, stdout, stderr and the channel".into(),
            Step::NewSession => "start a new session".into(),
            Step::Chdir(p) => format!("change directory to {}", p.to_string_lossy()),
            Step::DropCapabilities { keep: 0, .. } => "drop every capability".into(),
            Step::DropCapabilities { keep, .. } => format!("drop every capability but {keep:#x}"),
            Step::NoNewPrivs => "set no_new_privs".into(),
            Step::Landlock(p) => format!("apply Landlock rules (ABI {})", p.abi),
            Step::UnblockSignals => "unblock signals".into(),
            Step::Seccomp(f) => format!("install seccomp filters ({} instructions)", f.instructions()),
            Step::Exec(i) => format!("execute {}", i.path.to_string_lossy()),
        }
    }
}

/// File descriptors the sequence uses.
#[derive(Debug, Clone, Copy)]
pub struct Ctx {
    /// The child's end of the setup socket (close-on-exec).
    pub sync_fd: i32,
}

/// The setup socket's messages from the child.
pub mod msg {
    /// The workspace descriptor follows (`SCM_RIGHTS`).
    pub const WORKSPACE: u8 = b'W';
    /// A step failed: `E`, the step index (u32 LE) and the errno (i32 LE).
    pub const FAILED: u8 = b'E';
    /// The parent's go-ahead.
    pub const GO: u8 = b'G';
}

/// Everything the plan needs, prepared by the parent.
pub struct Setup {
    /// The new root (from `mount::plan`).
    pub mounts: Vec<MountOp>,
    /// The detached mounts of its sources (`mount::SystemPart::sources`), those airlock
    /// already took, and room for those the child takes.
    pub sources: SourceFds,
    /// A network namespace of our own (bring `lo` up).
    pub own_network: bool,
    /// Resource limits.
    pub rlimits: Vec<Rlimit>,
    /// Per-user-namespace maxima `(file, value)` (`user::namespace_limit_files`).
    pub namespace_limits: Vec<(CString, Vec<u8>)>,
    /// The guest's standard descriptors.
    pub stdio: Stdio,
    /// `/proc/sys/kernel/cap_last_cap`.
    pub last_cap: u32,
    /// Landlock policy, when the kernel has Landlock.
    pub landlock: Option<landlock::Policy>,
    /// seccomp filters.
    pub seccomp: &'static Filters,
    /// Apply Landlock and seccomp. False only for a zygote: Landlock would forbid its
    /// children's mounts and the filter their namespaces; each child applies both
    /// itself before any user code runs.
    pub confine: bool,
    /// Capabilities a zygote keeps (0 for sandboxes): `caps::ZYGOTE_CAPS`, which its
    /// children need to make their own namespaces. They are capabilities in the
    /// zygote's own user namespace only.
    pub keep_caps: u64,
    /// The interpreter.
    pub exec: ExecImage,
}

/// The whole sequence, in order.
#[derive(Debug)]
pub struct Plan {
    /// The steps.
    pub steps: Vec<Step>,
    /// The detached mounts the `Mount` steps take and attach.
    pub sources: SourceFds,
}

/// Builds the plan. The order of the lines below is the order of containment.
pub fn plan(setup: Setup) -> Plan {
    let workspace = CString::new(airlock_core::paths::WORKSPACE_MOUNT).expect("no NUL");
    let mut steps = vec![Step::ResetSignals, Step::AwaitParent, Step::BecomeNamespaceRoot, Step::DieWithParent];
    steps.extend(setup.namespace_limits.into_iter().map(|(path, text)| Step::LimitUserNamespace { path, text }));
    steps.push(Step::EnterCgroupNamespace);
    steps.extend(setup.mounts.into_iter().map(Step::Mount));
    steps.push(Step::SetHostname(HOSTNAME));
    if setup.own_network {
        steps.push(Step::LoopbackUp);
    }
    steps.push(Step::Stdio(setup.stdio));
    steps.push(Step::NewSession);
    steps.push(Step::Chdir(workspace.clone()));
    steps.push(Step::DropCapabilities { last_cap: setup.last_cap, keep: setup.keep_caps });
    steps.push(Step::NoNewPrivs);
    if let Some(l) = setup.landlock.filter(|_| setup.confine) {
        steps.push(Step::Landlock(l));
    }
    // As late as possible: the parent's next wake-up is then usually the exec itself.
    steps.push(Step::SendWorkspace(workspace));
    steps.extend(setup.rlimits.into_iter().map(Step::Rlimit));
    steps.push(Step::UnblockSignals);
    if setup.confine {
        steps.push(Step::Seccomp(setup.seccomp));
    }
    steps.push(Step::Exec(setup.exec));
    Plan { steps, sources: setup.sources }
}

fn apply<S: Sys>(step: &Step, sys: &mut S, ctx: &Ctx, sources: &SourceFds) -> SysResult<()> {
    match step {
        Step::ResetSignals => sys.reset_signal_handlers(),
        Step::AwaitParent => match sys.read_byte(ctx.sync_fd)? {
            Some(msg::GO) => Ok(()),
            // The parent gave up (or died): stop here.
            _ => Err(libc::ECANCELED),
        },
        Step::BecomeNamespaceRoot => crate::user::become_root(sys),
        Step::DieWithParent => sys.prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as u64, 0).map(drop),
        Step::LimitUserNamespace { path, text } => crate::user::set_namespace_limit(sys, path, text),
        Step::EnterCgroupNamespace => sys.unshare(libc::CLONE_NEWCGROUP),
        Step::Mount(m) => m.apply(sys, sources),
        Step::SendWorkspace(path) => {
            let fd = sys.open(path, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW, 0)?;
            let r = sys.send(ctx.sync_fd, &[msg::WORKSPACE], Some(fd));
            sys.close(fd);
            r
        }
        Step::SetHostname(h) => sys.sethostname(h.as_bytes()),
        Step::LoopbackUp => crate::net::loopback_up(sys),
        Step::Rlimit(r) => r.apply(sys),
        Step::Stdio(s) => s.apply(sys),
        Step::NewSession => sys.setsid(),
        Step::Chdir(p) => sys.chdir(p),
        Step::DropCapabilities { last_cap, keep: 0 } => crate::caps::drop_all(sys, *last_cap),
        Step::DropCapabilities { last_cap, keep } => crate::caps::drop_all_but(sys, *last_cap, *keep),
        Step::NoNewPrivs => sys.prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0).map(drop),
        Step::Landlock(p) => p.apply(sys),
        Step::UnblockSignals => sys.unblock_signals(),
        Step::Seccomp(f) => f.install(sys),
        Step::Exec(image) => Err(crate::process::exec(sys, image)),
    }
}

/// Runs the plan. Returns only on failure (or, with a recording [`Sys`], after the
/// last step), with the index of the step that failed and its errno.
pub fn run<S: Sys>(plan: &Plan, sys: &mut S, ctx: &Ctx) -> (usize, Errno) {
    for (i, step) in plan.steps.iter().enumerate() {
        if let Err(e) = apply(step, sys, ctx, &plan.sources) {
            return (i, e);
        }
    }
    (plan.steps.len(), 0)
}

/// Runs the plan in the cloned child and never returns: either `execve` replaces the
/// process, or the failing step is reported on the setup socket and the child exits.
pub fn child_main(plan: &Plan, ctx: &Ctx) -> ! {
    let mut sys = crate::sys::RealSys;
    let (step, errno) = run(plan, &mut sys, ctx);
    let mut rec = [0u8; 9];
    rec[0] = msg::FAILED;
    rec[1..5].copy_from_slice(&(step as u32).to_le_bytes());
    rec[5..9].copy_from_slice(&errno.to_le_bytes());
    let _ = sys.send(ctx.sync_fd, &rec, None);
    // SAFETY: _exit never returns and runs no destructors or atexit handlers (which
    // belong to the parent's copy of the process).
    unsafe { libc::_exit(126) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mount::{RootSource, RootSpec};
    use crate::sys::Recorder;

    fn setup() -> Setup {
        let spec = RootSpec {
            staging: "/tmp".into(),
            source: RootSource::Host,
            extra_ro: Vec::new(),
            tmp_bytes: 1 << 20,
            workspace_bytes: 1 << 20,
            mpl_cache: None,
            resolv_conf: false,
            setattr: true,
            nested_proc: false,
            proc_subset: true,
            taking: crate::mount::Taking::Host,
        };
        let part = crate::mount::system_part(&spec).unwrap();
        Setup {
            mounts: crate::mount::plan_with(&spec, &part).unwrap(),
            sources: SourceFds::new(part.sources().len(), &[]),
            own_network: true,
            rlimits: crate::rlimit::for_limits(&airlock_core::Limits::default(), true),
            namespace_limits: crate::user::namespace_limit_files(),
            stdio: Stdio { stdin_path: c"/dev/null".into(), stdout: 11, stderr: 12, channel: 13 },
            last_cap: 40,
            landlock: Some(landlock::Policy::for_abi(6)),
            seccomp: crate::seccomp::filters().unwrap(),
            confine: true,
            keep_caps: 0,
            exec: ExecImage::new("/usr/bin/python3", &["python3".into(), "-I".into()], &[("A".into(), "1".into())])
                .unwrap(),
        }
    }

    fn recorded() -> Vec<String> {
        let p = plan(setup());
        let mut r = Recorder::default();
        let (i, e) = run(&p, &mut r, &Ctx { sync_fd: 20 });
        // The recorder's execve "fails" with errno 0: the run ends at the last step.
        assert_eq!((i, e), (p.steps.len() - 1, 0));
        r.calls
    }

    fn pos(calls: &[String], prefix: &str) -> usize {
        calls.iter().position(|c| c.starts_with(prefix)).unwrap_or_else(|| panic!("no call {prefix}: {calls:#?}"))
    }

    #[test]
    fn the_order_is_the_policy() {
        let c = recorded();
        let order = [
            "reset_signal_handlers",
            "read_byte 20",
            "setresgid 0",
            "setresuid 0",
            "prctl 1 9", // PR_SET_PDEATHSIG, SIGKILL
            "open /proc/sys/user/max_inotify_instances",
            "write",
            "open /proc/sys/user/max_inotify_watches",
            "write",
            "unshare 0x2000000",
            "mount  -> / () flags=0x44000",
            "pivot_root . .",
            "umount_detach .",
            "sethostname airlock",
            "loopback_up",
            "dup2",
            "cloexec_from 4",
            "setsid",
            "chdir /workspace",
            "capset 0",
            "prctl 38 1", // PR_SET_NO_NEW_PRIVS
            "landlock_restrict_self",
            "send 20 \"W\"",
            "setrlimit",
            "unblock_signals",
            "seccomp",
            "execve /usr/bin/python3",
        ];
        let mut last = 0;
        for o in order {
            let p = pos(&c[last..], o) + last;
            last = p;
        }
        // seccomp is the last thing before exec, and both filters are installed.
        let n = c.len();
        assert!(c[n - 1].starts_with("execve"));
        assert!(c[n - 2].starts_with("seccomp") && c[n - 3].starts_with("seccomp"), "{:?}", &c[n - 4..]);
    }

    /// A zygote's plan is a sandbox's without Landlock and seccomp, keeping only
    /// `CAP_SETFCAP` and `CAP_SYS_ADMIN` in its bounding set (see `zygote.rs`).
    #[test]
    fn a_zygote_plan_differs_only_where_its_children_need_it() {
        let p = plan(Setup { confine: false, keep_caps: crate::caps::ZYGOTE_CAPS, ..setup() });
        let mut r = Recorder::default();
        run(&p, &mut r, &Ctx { sync_fd: 20 });
        let c = r.calls;
        assert!(!c.iter().any(|l| l.starts_with("seccomp") || l.starts_with("landlock")), "{c:#?}");
        assert!(c.iter().any(|l| l.starts_with("prctl 38 1")), "no_new_privs is still set");
        let dropped: Vec<&String> = c.iter().filter(|l| l.starts_with("prctl 24 ")).collect();
        assert!(!dropped.iter().any(|l| *l == "prctl 24 31 0"), "CAP_SETFCAP stays in the bounding set");
        assert!(!dropped.iter().any(|l| *l == "prctl 24 21 0"), "CAP_SYS_ADMIN stays in the bounding set");
        assert!(dropped.iter().any(|l| *l == "prctl 24 12 0"), "CAP_NET_ADMIN is dropped");
        assert!(!c.iter().any(|l| l.starts_with("capset")), "the permitted set is left for execve to cut");
        assert!(c.last().unwrap().starts_with("execve"));
    }

    #[test]
    fn ids_and_pdeathsig_come_before_any_mount() {
        let c = recorded();
        let first_mount = pos(&c, "mount ");
        assert!(pos(&c, "setresuid 0") < first_mount);
        assert!(pos(&c, "prctl 1 9") > pos(&c, "setresuid 0"), "an id change would clear the parent-death signal");
        assert!(pos(&c, "unshare 0x2000000") < first_mount);
    }

    #[test]
    fn nothing_but_workspace_tmp_and_dev_stays_writable() {
        let c = recorded();
        let ro_root = pos(&c, "mount_setattr / recursive=false");
        assert!(ro_root > pos(&c, "pivot_root"));
        // Every tmpfs mounted after the root's is one of /dev, /tmp, /workspace.
        let tmpfs: Vec<&String> = c.iter().filter(|l| l.contains("(tmpfs)")).collect();
        let targets: Vec<&str> =
            tmpfs.iter().map(|l| l.split(" -> ").nth(1).unwrap().split(' ').next().unwrap()).collect();
        assert_eq!(targets, ["/tmp", "/tmp/dev", "/tmp/tmp", "/tmp/workspace"]);
    }

    #[test]
    fn a_failing_step_is_reported_by_index() {
        let p = plan(setup());
        let mut r = Recorder { fail: Some(("pivot_root".into(), libc::EINVAL)), ..Recorder::default() };
        let (i, e) = run(&p, &mut r, &Ctx { sync_fd: 20 });
        assert_eq!(e, libc::EINVAL);
        assert!(p.steps[i].describe().starts_with("pivot_root into /tmp"), "{}", p.steps[i].describe());
        assert!(!r.calls.iter().any(|c| c.starts_with("execve")));
    }

    #[test]
    fn no_loopback_step_on_the_host_network() {
        let mut s = setup();
        s.own_network = false;
        let p = plan(s);
        assert!(!p.steps.iter().any(|s| matches!(s, Step::LoopbackUp)));
    }
}
