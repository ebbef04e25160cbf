//! Fast start: a zygote per template.
//!
//! A zygote is a trusted interpreter, started in a jail of its own like any sandbox,
//! that has imported a template's modules (numpy, pandas, ...) and forks one child per
//! sandbox (`crates/airlock-guest/driver/zygote.py`). Children share the zygote's
//! pages copy-on-write, so a sandbox costs a fork instead of an interpreter start and
//! its imports, and its unique memory is only what it writes.
//!
//! Each child ends up as isolated as a cold sandbox, with these steps before any user
//! code runs:
//!
//! 1. it is forked as PID 1 of a new PID namespace (the zygote `setns`es back to its
//!    own PID namespace and unshares a new one for its next child before each fork);
//! 2. a mount namespace with its own `/proc` (processes only, or with `/proc/sys`
//!    read-only on kernels before 5.8), `/tmp` and `/workspace` tmpfs; then its own
//!    user, IPC, UTS and network namespaces, with its own inotify maxima
//!    (`user::NAMESPACE_LIMITS`); the host name; loopback up; descriptors 0-3; a new
//!    session;
//! 3. it hands its workspace directory to the host over a setup socket (then sets its
//!    rlimits: after its user namespace exists, so that the per-user ones bound it
//!    alone, not every sibling through the zygote's shared user); the host
//!    learns the child's host pid from the socket's credentials (`SO_PASSCRED`),
//!    checks it against the zygote's report, and moves it into a new cgroup with the
//!    sandbox's memory, pids and CPU limits;
//! 4. on the host's go-ahead: a cgroup namespace rooted at its cgroup, every capability
//!    dropped, `no_new_privs`, Landlock, and the same seccomp filters as a cold
//!    sandbox; then the guest driver greets the host.
//!
//! The zygote itself runs without Landlock and seccomp (they would forbid its
//! children's mounts and namespaces), keeps `CAP_SYS_ADMIN` and `CAP_SETFCAP` in its
//! own user namespace (`caps::ZYGOTE_CAPS`), and otherwise has every mechanism of a
//! cold sandbox (namespaces, read-only root, no network, a cgroup); it never runs user
//! code. Trade-offs are in SECURITY.md ("Fast start").

use std::collections::HashMap;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use airlock_core::{BackendKind, Error, Factory, Isolation, NetworkPolicy, Recipe, Sandbox, SandboxSpec};
use airlock_guest::host::{ExitInfo, Guest, GuestMeta, GuestPipes, Supervisor};
use airlock_guest::launch::{channel_pair, guest_env};
use airlock_guest::workspace::Workspace;
use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg, sendmsg, setsockopt,
    socketpair, sockopt,
};
use serde_json::json;

use crate::sandbox::{CgroupGuard, JailSandbox};
use crate::supervisor::{ExitBoard, JailSupervisor};
use crate::user::IdMap;
use crate::{JailBackend, Prepared, Role, STARTUP_TIMEOUT, caps, mount, rlimit, spawn};

/// How long a zygote may take to import its modules and say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a fork may take, from request to the child's workspace descriptor.
const FORK_TIMEOUT: Duration = Duration::from_secs(15);
/// The zygote's process limit, both its pids cgroup (its children pass through it
/// briefly) and `RLIMIT_NPROC`, at most: the kernel counts every sibling's processes
/// against the `RLIMIT_NPROC` the zygote had when their user namespaces were made, so
/// it must not be a per-sandbox figure (each child sets its own). Below the pids
/// cgroup's maximum (`PID_MAX_LIMIT`); lowered to airlock's own hard limit, which an
/// unprivileged process cannot exceed.
const ZYGOTE_PROCESSES: u32 = 4_000_000;

/// [`ZYGOTE_PROCESSES`], or airlock's own hard `RLIMIT_NPROC` when that is lower.
fn zygote_processes() -> u32 {
    // SAFETY: getrlimit writes only the local struct.
    let hard = unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NPROC, &mut r) == 0 { r.rlim_max } else { libc::RLIM_INFINITY }
    };
    u32::try_from(hard).unwrap_or(u32::MAX).min(ZYGOTE_PROCESSES)
}
/// How long a message to the zygote may wait for room in its control socket.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// The most environment a sandbox forked from a zygote takes, in bytes (it travels in
/// one message on the setup socket).
const MAX_ENV_BYTES: usize = 128 << 10;
/// Memory the zygote's cgroup may use beyond the template's limit: the kernel charges
/// it for its live children's page tables and the pages they touch before they are
/// moved into their own cgroups (about 1.5 MiB per live child with pandas imported).
const ZYGOTE_MEMORY_HEADROOM: u64 = 8 << 30;

/// A connected `SOCK_SEQPACKET` pair, both close-on-exec: the zygote's control socket
/// (one message per frame, descriptors attached to spawn requests).
pub(crate) fn control_pair() -> Result<(OwnedFd, OwnedFd), Error> {
    socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)
        .map_err(|e| Error::host(format!("socketpair: {}", e.desc())))
}

/// A running zygote for one recipe. Dropping it lets the zygote go once the last
/// sandbox it forked is gone (each holds it alive: killing it would kill them).
pub struct Zygote {
    inner: Arc<Inner>,
    process: Arc<Process>,
}

/// The zygote process (our child) and its cgroup; killed when the last holder goes.
struct Process(Mutex<Option<(JailSupervisor, CgroupGuard)>>);

impl Process {
    fn kill(&self) {
        if let Some((mut sup, mut cg)) = lock(&self.0).take() {
            sup.kill();
            let _ = sup.wait(Duration::from_secs(5));
            let _ = cg.release();
        }
    }

    fn is_alive(&self) -> bool {
        lock(&self.0).as_mut().is_some_and(|(sup, _)| sup.try_wait().is_none())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

struct Inner {
    recipe: Recipe,
    prepared: Arc<Prepared>,
    warnings: Vec<String>,
    ctl: OwnedFd,
    send_lock: Mutex<()>,
    pending: Mutex<HashMap<u64, mpsc::Sender<Result<i32, String>>>>,
    board: Arc<ExitBoard>,
    alive: AtomicBool,
    next_id: AtomicU64,
    forks: AtomicU64,
    imported: Vec<String>,
    ids: IdMap,
    host_pid: i32,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The seccomp programs as hex strings of `struct sock_filter` arrays in the kernel's
/// layout, for the zygote to install in each child.
fn seccomp_hex(p: &Prepared) -> Vec<String> {
    p.seccomp
        .programs
        .iter()
        .map(|prog| {
            let mut s = String::with_capacity(prog.len() * 16);
            for f in prog {
                let mut b = Vec::with_capacity(8);
                b.extend_from_slice(&f.code.to_ne_bytes());
                b.push(f.jt);
                b.push(f.jf);
                b.extend_from_slice(&f.k.to_ne_bytes());
                for byte in b {
                    s.push_str(&format!("{byte:02x}"));
                }
            }
            s
        })
        .collect()
}

/// Keeps the last few KiB of a pipe's text (the zygote's stderr), logging each line.
fn drain(fd: OwnedFd, tail: Arc<Mutex<String>>, name: &'static str) {
    let _ = std::thread::Builder::new().name("airlock-zygote-log".into()).spawn(move || {
        let mut f = std::fs::File::from(fd);
        let mut buf = [0u8; 4096];
        loop {
            match f.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let text = String::from_utf8_lossy(&buf[..n]);
                    tracing::debug!("zygote {name}: {}", text.trim_end());
                    let mut t = lock(&tail);
                    t.push_str(&text);
                    if t.len() > 8192 {
                        let cut = t.len() - 4096;
                        let cut = (cut..t.len()).find(|i| t.is_char_boundary(*i)).unwrap_or(t.len());
                        t.drain(..cut);
                    }
                }
            }
        }
    });
}

/// Receives one message (and descriptors, and the sender's credentials when the
/// socket has `SO_PASSCRED`) within `timeout` (`None`: no limit). `Ok(None)`: end of
/// file.
fn recv_msg(fd: &OwnedFd, timeout: Option<Duration>, buf: &mut [u8]) -> Result<Option<Received>, Error> {
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now())).unwrap_or(Duration::from_secs(3600));
        if left.is_zero() {
            return Err(Error::host("no answer in time"));
        }
        let mut pfd = [nix::poll::PollFd::new(fd.as_fd(), nix::poll::PollFlags::POLLIN)];
        let ms =
            nix::poll::PollTimeout::try_from(left.as_millis().max(1) as u64).unwrap_or(nix::poll::PollTimeout::MAX);
        match nix::poll::poll(&mut pfd, ms) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => {}
            Err(e) => return Err(Error::host(format!("poll: {}", e.desc()))),
        }
        let mut cmsg = nix::cmsg_space!([RawFd; 8], libc::ucred);
        let mut iov = [std::io::IoSliceMut::new(buf)];
        match recvmsg::<()>(fd.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC) {
            Ok(m) => {
                let mut r = Received { len: m.bytes, fds: Vec::new(), pid: None };
                if let Ok(cmsgs) = m.cmsgs() {
                    for c in cmsgs {
                        match c {
                            ControlMessageOwned::ScmRights(v) => {
                                // SAFETY: descriptors received with SCM_RIGHTS are new and ours.
                                r.fds.extend(v.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
                            }
                            ControlMessageOwned::ScmCredentials(c) => r.pid = Some(c.pid()),
                            _ => {}
                        }
                    }
                }
                if m.bytes == 0 && r.fds.is_empty() {
                    return Ok(None);
                }
                return Ok(Some(r));
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(Error::host(format!("recvmsg: {}", e.desc()))),
        }
    }
}

struct Received {
    len: usize,
    fds: Vec<OwnedFd>,
    pid: Option<i32>,
}

/// Sends one message (with descriptors), waiting at most [`SEND_TIMEOUT`] for room.
fn send_msg(fd: &OwnedFd, bytes: &[u8], fds: &[RawFd]) -> Result<(), Error> {
    let iov = [std::io::IoSlice::new(bytes)];
    let cmsgs: Vec<ControlMessage<'_>> = if fds.is_empty() { Vec::new() } else { vec![ControlMessage::ScmRights(fds)] };
    let deadline = Instant::now() + SEND_TIMEOUT;
    loop {
        match sendmsg::<()>(fd.as_raw_fd(), &iov, &cmsgs, MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT, None) {
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(nix::errno::Errno::EAGAIN) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(Error::host("the other end took no message for 10 s"));
                }
                let mut pfd = [nix::poll::PollFd::new(fd.as_fd(), nix::poll::PollFlags::POLLOUT)];
                let ms = nix::poll::PollTimeout::try_from(left.as_millis().max(1) as u64)
                    .unwrap_or(nix::poll::PollTimeout::MAX);
                let _ = nix::poll::poll(&mut pfd, ms);
            }
            Err(e) => return Err(Error::host(format!("sending to the zygote: {}", e.desc()))),
        }
    }
}

fn send_json(fd: &OwnedFd, v: &serde_json::Value, fds: &[RawFd]) -> Result<(), Error> {
    send_msg(fd, v.to_string().as_bytes(), fds)
}

/// The child's pid in its parent PID namespace, from `/proc/<pid>/status` (`NSpid`:
/// host pid, zygote-namespace pid, 1).
fn zygote_ns_pid(host_pid: i32) -> Option<i32> {
    let status = std::fs::read_to_string(format!("/proc/{host_pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("NSpid:"))?;
    let pids: Vec<i32> = line["NSpid:".len()..].split_whitespace().filter_map(|p| p.parse().ok()).collect();
    (pids.len() >= 2).then(|| pids[pids.len() - 2])
}

fn exit_info(v: &serde_json::Value) -> ExitInfo {
    let status = v["status"].as_i64().unwrap_or(0) as i32;
    ExitInfo {
        code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
        signal: libc::WIFSIGNALED(status).then(|| libc::WTERMSIG(status)),
        cpu_ms: v["cpu_ms"].as_u64(),
        peak_memory_bytes: v["maxrss_kb"].as_u64().map(|k| k * 1024),
    }
}

impl Zygote {
    /// Starts a zygote for `recipe` and waits until it has imported the modules.
    pub fn start(backend: &JailBackend, recipe: &Recipe) -> Result<Zygote, Error> {
        let p = backend.prepared()?;
        let mut limits = recipe.limits;
        limits.processes = limits.processes.max(zygote_processes());
        limits.memory_bytes = limits.memory_bytes.saturating_add(ZYGOTE_MEMORY_HEADROOM);
        let mut spec = SandboxSpec::new(limits);
        spec.id = airlock_core::new_id("zyg");
        let l = backend.launch(&p, &spec, Role::Zygote)?;
        let tail = Arc::new(Mutex::new(String::new()));
        drain(l.stdout, tail.clone(), "stdout");
        drain(l.stderr, tail.clone(), "stderr");
        let sup = JailSupervisor::new(l.spawned.pid, l.spawned.pidfd, l.cgroup.0.clone(), limits.memory_bytes);
        let host_pid = l.spawned.pid;
        let mut process = Some((sup, l.cgroup));
        let failed = |process: &mut Option<(JailSupervisor, CgroupGuard)>, why: String| {
            if let Some((mut sup, mut cg)) = process.take() {
                sup.kill();
                let _ = sup.wait(Duration::from_secs(5));
                let _ = cg.release();
            }
            std::thread::sleep(Duration::from_millis(20)); // the log threads read the last words
            let said = lock(&tail).trim().to_string();
            let said = if said.is_empty() { String::new() } else { format!("; it said: {said}") };
            Error::host(format!("the zygote of template '{}' failed: {why}{said}", recipe.name))
        };

        let landlock = p.landlock.as_ref().map(|l| {
            json!({
                "handled_fs": l.handled_fs,
                "scoped": l.scoped,
                "attr_size": l.attr_size(),
                "rules": l.rules.iter().map(|(path, a)| json!([path.to_string_lossy(), a])).collect::<Vec<_>>(),
            })
        });
        let mpl = p.mpl.as_ref().and_then(|m| m.get()).map(|(name, _)| format!("{}/{name}", mount::MPL_CONFIG_DIR));
        let cfg = json!({
            "modules": recipe.modules,
            "optional_modules": recipe.optional_modules,
            "seccomp": seccomp_hex(&p),
            "landlock": landlock,
            "last_cap": p.last_cap,
            "securebits": caps::SECUREBITS,
            "hostname": crate::contain::HOSTNAME,
            "mpl": mpl,
            "proc_subset": p.proc_subset,
            "user_limits": crate::user::NAMESPACE_LIMITS.iter().map(|l| json!([l.name, l.value])).collect::<Vec<_>>(),
        });
        if let Err(e) = send_json(&l.channel, &cfg, &[]) {
            return Err(failed(&mut process, e.to_string()));
        }
        let mut buf = vec![0u8; 1 << 16];
        let ready = match recv_msg(&l.channel, Some(READY_TIMEOUT), &mut buf) {
            Ok(Some(r)) => serde_json::from_slice::<serde_json::Value>(&buf[..r.len]).unwrap_or_default(),
            Ok(None) => return Err(failed(&mut process, "it exited while importing its modules".into())),
            Err(e) => {
                return Err(failed(&mut process, format!("no answer within {} s ({e})", READY_TIMEOUT.as_secs())));
            }
        };
        match ready["type"].as_str() {
            Some("ready") => {}
            Some("failed") => {
                let why = ready["error"].as_str().unwrap_or("unknown").to_string();
                return Err(failed(&mut process, why));
            }
            _ => return Err(failed(&mut process, format!("unexpected answer {ready}"))),
        }
        let imported = ready["imported"]
            .as_array()
            .map(|a| a.iter().filter_map(|m| m.as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        let inner = Arc::new(Inner {
            recipe: recipe.clone(),
            warnings: JailBackend::warnings(&p, &SandboxSpec::new(recipe.limits)),
            prepared: p,
            ctl: l.channel,
            send_lock: Mutex::new(()),
            pending: Mutex::new(HashMap::new()),
            board: Arc::new(ExitBoard::default()),
            alive: AtomicBool::new(true),
            next_id: AtomicU64::new(1),
            forks: AtomicU64::new(0),
            imported,
            ids: l.ids,
            host_pid,
        });
        let process = Arc::new(Process(Mutex::new(process)));
        // The reader runs as long as the zygote does (it holds no reference to the
        // process, so the zygote goes when its last holder does, and then it ends).
        let reader = inner.clone();
        std::thread::Builder::new()
            .name("airlock-zygote".into())
            .spawn(move || reader.read_loop())
            .map_err(|e| Error::host(format!("cannot start the zygote's reader thread: {e}")))?;
        tracing::info!(template = %recipe.name, pid = host_pid, "zygote ready");
        Ok(Zygote { inner, process })
    }

    /// The zygote's pid on the host.
    pub fn host_pid(&self) -> i32 {
        self.inner.host_pid
    }

    /// Forks a new sandbox.
    pub fn fork(&self, spec: &SandboxSpec) -> Result<JailSandbox, Error> {
        self.inner.fork(spec, &self.process)
    }

    /// Kills the zygote now (its children die with it: it is their PID namespace's
    /// init), whoever else holds it.
    pub fn kill(&self) {
        self.inner.alive.store(false, Ordering::SeqCst);
        self.process.kill();
    }
}

impl Inner {
    /// Routes the zygote's messages: fork replies to their waiters, exits to the board.
    fn read_loop(&self) {
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let r = match recv_msg(&self.ctl, None, &mut buf) {
                Ok(Some(r)) => r,
                Ok(None) | Err(_) => break,
            };
            let v: serde_json::Value = serde_json::from_slice(&buf[..r.len]).unwrap_or_default();
            match v["type"].as_str() {
                Some("spawned") => {
                    let id = v["id"].as_u64().unwrap_or(0);
                    let reply = match (v["pid"].as_i64(), v["error"].as_str()) {
                        (Some(pid), _) => Ok(pid as i32),
                        (None, e) => Err(e.unwrap_or("no pid").to_string()),
                    };
                    if let Some(tx) = lock(&self.pending).remove(&id) {
                        let _ = tx.send(reply);
                    }
                }
                Some("exit") => {
                    if let Some(id) = v["id"].as_u64() {
                        self.board.record(id, exit_info(&v));
                    }
                }
                _ => tracing::warn!("the zygote sent an unexpected message: {v}"),
            }
        }
        self.alive.store(false, Ordering::SeqCst);
        self.board.close();
        lock(&self.pending).clear(); // waiters see their sender dropped
        tracing::info!(template = %self.recipe.name, "zygote gone");
    }

    fn fork(&self, spec: &SandboxSpec, process: &Arc<Process>) -> Result<JailSandbox, Error> {
        let t0 = Instant::now();
        if spec.network != NetworkPolicy::None {
            return Err(Error::invalid(
                "a zygote's sandboxes have no network; create this sandbox cold (network 'host')",
            ));
        }
        airlock_core::request::validate_env(&spec.env)?;
        if !self.alive.load(Ordering::SeqCst) {
            return Err(Error::host(format!("the zygote of template '{}' is gone", self.recipe.name)));
        }
        let limits = spec.limits;
        let p = &self.prepared;
        let (host_chan, guest_chan) = channel_pair()?;
        let (out_r, out_w) = crate::pipe()?;
        let (err_r, err_w) = crate::pipe()?;
        let (setup, setup_child) = control_pair()?;
        setsockopt(&setup, sockopt::PassCred, &true).map_err(|e| Error::host(format!("SO_PASSCRED: {}", e.desc())))?;
        let memory_cgroup = p.cgroups.as_ref().is_some_and(|d| d.enforced().memory);
        let rlimits: Vec<[u64; 2]> =
            rlimit::for_limits(&limits, memory_cgroup).iter().map(|r| [u64::from(r.resource), r.value]).collect();
        // The environment goes to the child alone, with its go-ahead: never through the
        // zygote, whose freed memory every later sibling would inherit.
        let env: serde_json::Map<String, serde_json::Value> =
            guest_env(airlock_core::paths::WORKSPACE_MOUNT, "/tmp", Some(mount::MPL_CONFIG_DIR), &spec.env)
                .into_iter()
                .map(|(k, v)| (k, serde_json::Value::String(v)))
                .collect();
        let mut go = b"G".to_vec();
        go.extend_from_slice(serde_json::Value::Object(env).to_string().as_bytes());
        if go.len() > MAX_ENV_BYTES {
            return Err(Error::invalid(format!(
                "the environment is {} KiB; a sandbox takes at most {} KiB of environment variables",
                go.len() >> 10,
                MAX_ENV_BYTES >> 10
            )));
        }
        // The cgroup is made while the zygote forks; only the move waits for the child.
        let cgroup = p.new_cgroup(&spec.id, &limits)?;
        let t_mk = t0.elapsed();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let req = json!({
            "type": "spawn",
            "id": id,
            "rlimits": rlimits,
            "tmp_options": mount::tmpfs_options(limits.file_bytes, 0o1777),
            "workspace_options": mount::tmpfs_options(limits.file_bytes, 0o755),
        });
        let (tx, rx) = mpsc::channel();
        lock(&self.pending).insert(id, tx);
        {
            let _g = lock(&self.send_lock);
            let fds = [guest_chan.as_raw_fd(), out_w.as_raw_fd(), err_w.as_raw_fd(), setup_child.as_raw_fd()];
            if let Err(e) = send_json(&self.ctl, &req, &fds) {
                lock(&self.pending).remove(&id);
                return Err(e);
            }
        }
        drop((guest_chan, out_w, err_w, setup_child));
        let zpid = match rx.recv_timeout(FORK_TIMEOUT) {
            Ok(Ok(pid)) => pid,
            Ok(Err(e)) => return Err(Error::host(format!("the zygote could not fork a sandbox: {e}"))),
            Err(_) => {
                lock(&self.pending).remove(&id);
                // A fork that comes later still reports its child's exit: drop it then.
                self.board.forget(id);
                return Err(Error::host(format!(
                    "the zygote of template '{}' did not answer a fork request{}",
                    self.recipe.name,
                    if self.alive.load(Ordering::SeqCst) { " within 15 s" } else { " (it died)" }
                )));
            }
        };
        let t_fork = t0.elapsed();
        // From here on, a failure drops `setup`, which makes the child exit; its exit
        // report is not kept.
        let (ws, host_pid, pidfd) = self.await_report(&setup, zpid).inspect_err(|_| self.board.forget(id))?;
        let t_report = t0.elapsed();
        let discard = |pidfd: &OwnedFd| {
            spawn::pidfd_signal(pidfd, libc::SIGKILL);
            self.board.forget(id);
        };
        if let Err(e) = p.place(&cgroup, host_pid) {
            discard(&pidfd);
            return Err(e);
        }
        let t_cgroup = t0.elapsed();
        if let Err(e) = send_msg(&setup, &go, &[]) {
            discard(&pidfd);
            return Err(Error::host(format!("the new sandbox died before its confinement ({e})")));
        }
        // End of file: confined and running the driver; `E`: a step failed.
        let mut buf = [0u8; 4096];
        match recv_msg(&setup, Some(FORK_TIMEOUT), &mut buf) {
            Ok(None) => {}
            Ok(Some(r)) if r.len > 0 && buf[0] == b'E' => {
                discard(&pidfd);
                return Err(Error::host(format!(
                    "the zygote's child failed its confinement: {}",
                    String::from_utf8_lossy(&buf[1..r.len])
                )));
            }
            Ok(Some(_)) => {
                discard(&pidfd);
                return Err(Error::host("the zygote's child sent a malformed setup message"));
            }
            Err(e) => {
                discard(&pidfd);
                return Err(Error::host(format!("the new sandbox did not finish its confinement ({e})")));
            }
        }
        let sup = JailSupervisor::for_zygote_child(
            host_pid,
            pidfd,
            cgroup.0.clone(),
            limits.memory_bytes,
            self.board.clone(),
            id,
        );
        let meta = GuestMeta {
            backend: BackendKind::Jail,
            isolation: Isolation::Namespaces,
            sandbox_id: spec.id.clone(),
            memory_bytes: limits.memory_bytes,
            warnings: self.warnings.clone(),
        };
        let guest = Guest::connect(
            GuestPipes { channel: host_chan, stdout: out_r, stderr: err_r },
            sup,
            meta,
            STARTUP_TIMEOUT,
        )?;
        self.forks.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            sandbox = %spec.id,
            "zygote fork: cgroup made {t_mk:?}, forked {t_fork:?}, child reported {t_report:?}, placed {t_cgroup:?}, greeted {:?}",
            t0.elapsed()
        );
        let workspace = Workspace::from_fd(ws).with_owner(self.ids.host_uid, self.ids.host_gid);
        Ok(JailSandbox {
            id: spec.id.clone(),
            guest,
            workspace,
            file_bytes: limits.file_bytes,
            fs_ids: (!self.ids.rootless).then_some((self.ids.host_uid, self.ids.host_gid)),
            cgroup,
            _keepalive: Some(process.clone()),
        })
    }

    /// The child's first report on its setup socket: its workspace, with its host pid
    /// in the credentials. The pid is pinned with a pidfd, then checked to be the
    /// zygote's fork `zpid`.
    fn await_report(&self, setup: &OwnedFd, zpid: i32) -> Result<(OwnedFd, i32, OwnedFd), Error> {
        let mut buf = [0u8; 4096];
        let first = recv_msg(setup, Some(FORK_TIMEOUT), &mut buf)
            .map_err(|e| Error::host(format!("the new sandbox did not report ({e})")))?;
        let (ws, host_pid) = match first {
            Some(mut r) if r.len == 1 && buf[0] == b'W' && r.fds.len() == 1 && r.pid.is_some() => {
                (r.fds.remove(0), r.pid.unwrap_or(0))
            }
            Some(r) if r.len > 0 && buf[0] == b'E' => {
                return Err(Error::host(format!(
                    "the zygote's child failed its setup: {}",
                    String::from_utf8_lossy(&buf[1..r.len])
                )));
            }
            _ => return Err(Error::host("the zygote's child ended before its setup was done")),
        };
        let pidfd = spawn::pidfd_open(host_pid)?;
        if zygote_ns_pid(host_pid) != Some(zpid) {
            spawn::pidfd_signal(&pidfd, libc::SIGKILL);
            return Err(Error::host(format!(
                "the zygote's child reported host pid {host_pid}, which is not its fork {zpid}"
            )));
        }
        Ok((ws, host_pid, pidfd))
    }
}

impl Factory for Zygote {
    fn create(&self, spec: &SandboxSpec) -> Result<Box<dyn Sandbox>, Error> {
        Ok(Box::new(self.fork(spec)?))
    }

    fn imported(&self) -> Vec<String> {
        self.inner.imported.clone()
    }

    fn is_alive(&self) -> bool {
        if !self.inner.alive.load(Ordering::SeqCst) {
            return false;
        }
        self.process.is_alive()
    }

    fn describe(&self) -> String {
        format!(
            "zygote pid {}, {} forks{}",
            self.inner.host_pid,
            self.inner.forks.load(Ordering::Relaxed),
            if self.is_alive() { "" } else { " (dead)" }
        )
    }
}
