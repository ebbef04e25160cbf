//! The agent's multiplexer: one port to the host, and a driver with a channel, a
//! stdout pipe and a stderr pipe.
//!
//! Ordering: before a driver frame is forwarded, everything the driver wrote to its
//! pipes is drained into `stream` frames, so output precedes the results and the
//! `done` that follow it in time (the driver flushes its streams before `done`).
//!
//! Back-pressure: while more than [`MAX_QUEUED_BYTES`] wait to go to the host, the
//! agent stops reading the driver's pipes, so a flooding program blocks on its own
//! writes instead of growing the agent's memory; requests from the host (an
//! interrupt, in particular) are still read.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use airlock_core::Error;
use airlock_core::paths::WorkspacePath;
use airlock_guest::launch::{CHANNEL_FD, channel_pair, guest_env};
use airlock_guest::protocol::{FrameDecoder, GuestFrame, encode};
use airlock_guest::workspace::Workspace;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

use crate::frames::{AgentReply, AgentRequest, GuestLimits, WireError};

/// The most bytes queued towards the host before the agent stops reading the driver.
pub const MAX_QUEUED_BYTES: usize = 4 << 20;
/// How long the port's host side may stay disconnected before a VM powers off.
const HOST_GONE_AFTER: Duration = Duration::from_secs(2);
/// Read size for pipes and the port.
const CHUNK: usize = 32 * 1024;

/// How the agent runs the driver.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The Python interpreter.
    pub python: PathBuf,
    /// The workspace directory (the driver's working directory).
    pub workspace: PathBuf,
    /// The temporary directory.
    pub tmp: String,
    /// uid and gid to run the driver as (`None`: the agent's own).
    pub run_as: Option<(u32, u32)>,
    /// matplotlib's configuration directory, if prepared.
    pub mpl_config: Option<String>,
    /// Extra environment variables for the driver (e.g. an OpenBLAS kernel that the
    /// emulated CPU supports).
    pub extra_env: BTreeMap<String, String>,
    /// Modules the driver imports at boot, before the guest reports `ready` (a
    /// template's preload; the snapshot then holds them).
    pub preload: Vec<String>,
    /// True inside the VM: the agent may set the clock, seed the entropy pool and
    /// resize the tmpfs mounts on attach, and an end of file on the port means the
    /// host is not connected (rather than gone).
    pub in_vm: bool,
}

/// How `serve` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServeEnd {
    /// The host asked for a shutdown and the driver exited.
    Shutdown,
    /// The host closed the port (only outside a VM).
    HostGone,
}

/// Incomplete UTF-8 kept between reads of one stream.
#[derive(Default)]
struct StreamBuf {
    carry: Vec<u8>,
}

impl StreamBuf {
    /// Text made of complete characters from `bytes` (invalid bytes replaced).
    fn text(&mut self, bytes: &[u8], flush: bool) -> Option<String> {
        self.carry.extend_from_slice(bytes);
        let upto = if flush {
            self.carry.len()
        } else {
            match std::str::from_utf8(&self.carry) {
                Ok(_) => self.carry.len(),
                Err(e) if e.error_len().is_none() => e.valid_up_to(),
                Err(_) => self.carry.len(),
            }
        };
        if upto == 0 {
            return None;
        }
        let text = String::from_utf8_lossy(&self.carry[..upto]).into_owned();
        self.carry.drain(..upto);
        Some(text)
    }
}

struct Driver {
    pid: Pid,
    pidfd: OwnedFd,
    chan: File,
    stdout: Option<File>,
    stderr: Option<File>,
    child: std::process::Child,
}

struct State<'a> {
    cfg: &'a ServeConfig,
    port: File,
    port_dec: FrameDecoder,
    to_host: Vec<u8>,
    driver: Option<Driver>,
    drv_dec: FrameDecoder,
    to_driver: Vec<u8>,
    out: StreamBuf,
    err: StreamBuf,
    hello: Option<Value>,
    attach: Option<AgentRequest>,
    attached: bool,
    configure_pending: bool,
    ready_sent: bool,
    preloaded: bool,
    preload_pending: bool,
    interrupt_pending: bool,
    last_sigint: std::time::Instant,
    shutting_down: bool,
    workspace: Workspace,
    /// The file whose later pieces are still to come.
    upload: Option<(WorkspacePath, OwnedFd)>,
    oom_before: u64,
}

fn set_nonblocking(fd: &impl AsFd) -> std::io::Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = fcntl(fd.as_fd(), FcntlArg::F_GETFL)?;
    fcntl(fd.as_fd(), FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK))?;
    Ok(())
}

/// Reads what is available. `Ok(None)` at end of file, `Ok(Some(0))` when nothing is.
fn read_some(f: &mut File, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
    loop {
        match f.read(buf) {
            Ok(0) => return Ok(None),
            Ok(n) => return Ok(Some(n)),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(Some(0)),
            Err(e) => return Err(e),
        }
    }
}

/// Writes as much of `queue` as the fd takes now.
fn flush_some(f: &mut File, queue: &mut Vec<u8>) -> std::io::Result<()> {
    while !queue.is_empty() {
        match f.write(queue) {
            Ok(0) => return Err(std::io::Error::new(ErrorKind::WriteZero, "wrote nothing")),
            Ok(n) => {
                queue.drain(..n);
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The guest kernel's count of OOM kills so far (0 where unknown).
pub fn oom_kills() -> u64 {
    std::fs::read_to_string("/proc/vmstat")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("oom_kill ").and_then(|v| v.trim().parse().ok())))
        .unwrap_or(0)
}

fn spawn_driver(cfg: &ServeConfig) -> Result<Driver, String> {
    let (agent_end, driver_end) = channel_pair().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(&cfg.python);
    let home = cfg.workspace.to_string_lossy().into_owned();
    let env = guest_env(&home, &cfg.tmp, cfg.mpl_config.as_deref(), &cfg.extra_env);
    cmd.args(airlock_guest::driver_args(CHANNEL_FD))
        .env_clear()
        .envs(env)
        .current_dir(&cfg.workspace)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some((uid, gid)) = cfg.run_as {
        cmd.uid(uid).gid(gid);
    }
    let raw = driver_end.as_raw_fd();
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe system calls (setsid, dup2, fcntl, setrlimit) on copied values.
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            if raw == CHANNEL_FD {
                let flags = libc::fcntl(CHANNEL_FD, libc::F_GETFD);
                if flags < 0 || libc::fcntl(CHANNEL_FD, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(raw, CHANNEL_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let core = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            libc::setrlimit(libc::RLIMIT_CORE, &core);
            // The agent protects itself from the OOM killer (-1000); the code must not
            // inherit that, or an out-of-memory guest has nothing to kill and panics.
            let fd = libc::open(c"/proc/self/oom_score_adj".as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd >= 0 {
                libc::write(fd, b"500".as_ptr().cast(), 3);
                libc::close(fd);
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| format!("cannot start {}: {e}", cfg.python.display()))?;
    drop(driver_end);
    let pid = Pid::from_raw(child.id() as i32);
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if pidfd < 0 {
        let e = std::io::Error::last_os_error();
        let _ = child.kill();
        return Err(format!("pidfd_open: {e}"));
    }
    // SAFETY: pidfd_open returned a new descriptor that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as i32) };
    let stdout = File::from(OwnedFd::from(child.stdout.take().expect("piped")));
    let stderr = File::from(OwnedFd::from(child.stderr.take().expect("piped")));
    let chan = File::from(agent_end);
    for f in [&chan, &stdout, &stderr] {
        set_nonblocking(f).map_err(|e| format!("fcntl: {e}"))?;
    }
    Ok(Driver { pid, pidfd, chan, stdout: Some(stdout), stderr: Some(stderr), child })
}

/// Runs the agent over `port` until the host shuts it down (or, outside a VM, goes
/// away). Starts the driver first.
pub fn serve(port: OwnedFd, cfg: &ServeConfig) -> Result<ServeEnd, String> {
    set_nonblocking(&port).map_err(|e| format!("fcntl on the port: {e}"))?;
    let mut workspace = Workspace::open(&cfg.workspace).map_err(|e| e.to_string())?;
    if let Some((u, g)) = cfg.run_as {
        workspace = workspace.with_owner(u, g);
    }
    let driver = spawn_driver(cfg)?;
    let mut st = State {
        cfg,
        port: File::from(port),
        port_dec: FrameDecoder::new(),
        to_host: Vec::new(),
        driver: Some(driver),
        drv_dec: FrameDecoder::new(),
        to_driver: Vec::new(),
        out: StreamBuf::default(),
        err: StreamBuf::default(),
        hello: None,
        attach: None,
        attached: false,
        configure_pending: false,
        ready_sent: false,
        preloaded: false,
        preload_pending: false,
        interrupt_pending: false,
        last_sigint: std::time::Instant::now(),
        shutting_down: false,
        workspace,
        upload: None,
        oom_before: oom_kills(),
    };
    st.run()
}

impl State<'_> {
    fn run(&mut self) -> Result<ServeEnd, String> {
        let mut buf = vec![0u8; CHUNK];
        let mut port_hup = false;
        let mut hup_since: Option<std::time::Instant> = None;
        loop {
            let backlog = self.to_host.len() >= MAX_QUEUED_BYTES;
            let (p_in, p_out, c_in, c_out, o_in, e_in, dead) = {
                let mut fds: Vec<PollFd> = Vec::with_capacity(6);
                let mut pflags = PollFlags::empty();
                if !port_hup {
                    pflags |= PollFlags::POLLIN;
                }
                if !self.to_host.is_empty() {
                    pflags |= PollFlags::POLLOUT;
                }
                fds.push(PollFd::new(self.port.as_fd(), pflags));
                let mut idx = [usize::MAX; 5];
                if let Some(d) = &self.driver {
                    let mut cf = PollFlags::empty();
                    if !backlog {
                        cf |= PollFlags::POLLIN;
                    }
                    if !self.to_driver.is_empty() {
                        cf |= PollFlags::POLLOUT;
                    }
                    idx[0] = fds.len();
                    fds.push(PollFd::new(d.chan.as_fd(), cf));
                    if !backlog {
                        if let Some(o) = &d.stdout {
                            idx[1] = fds.len();
                            fds.push(PollFd::new(o.as_fd(), PollFlags::POLLIN));
                        }
                        if let Some(e) = &d.stderr {
                            idx[2] = fds.len();
                            fds.push(PollFd::new(e.as_fd(), PollFlags::POLLIN));
                        }
                    }
                    idx[3] = fds.len();
                    fds.push(PollFd::new(d.pidfd.as_fd(), PollFlags::POLLIN));
                }
                let timeout = if port_hup {
                    20u16
                } else if self.interrupt_pending {
                    100
                } else {
                    1000
                };
                match poll(&mut fds, PollTimeout::from(timeout)) {
                    Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                    Err(e) => return Err(format!("poll: {e}")),
                }
                let rev = |i: usize, f: PollFlags| {
                    i != usize::MAX && fds.get(i).and_then(|p| p.revents()).is_some_and(|r| r.intersects(f))
                };
                let any_in = PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR;
                (
                    rev(0, any_in),
                    rev(0, PollFlags::POLLOUT),
                    rev(idx[0], any_in),
                    rev(idx[0], PollFlags::POLLOUT),
                    rev(idx[1], any_in),
                    rev(idx[2], any_in),
                    rev(idx[3], PollFlags::POLLIN),
                )
            };
            if port_hup {
                port_hup = false; // look again: the host may have connected
            }
            if self.interrupt_pending
                && self.last_sigint.elapsed() >= Duration::from_millis(250)
                && let Some(d) = &self.driver
            {
                let _ = kill(d.pid, Signal::SIGINT);
                self.last_sigint = std::time::Instant::now();
            }
            if p_out {
                flush_some(&mut self.port, &mut self.to_host).map_err(|e| format!("writing to the host: {e}"))?;
            }
            if c_out && let Some(d) = &mut self.driver {
                let _ = flush_some(&mut d.chan, &mut self.to_driver);
            }
            if o_in {
                self.pump_stream(true, &mut buf);
            }
            if e_in {
                self.pump_stream(false, &mut buf);
            }
            if c_in {
                self.read_driver(&mut buf);
            }
            if dead {
                self.reap_driver(&mut buf);
                if self.shutting_down {
                    self.flush_host_blocking();
                    return Ok(ServeEnd::Shutdown);
                }
            }
            if p_in {
                match read_some(&mut self.port, &mut buf) {
                    Ok(Some(0)) => {}
                    Ok(Some(n)) => {
                        self.port_dec.push(&buf[..n]);
                        self.handle_host_frames()?;
                    }
                    Ok(None) => {
                        if !self.cfg.in_vm {
                            // Outside a VM the socket closed: the host is gone.
                            self.kill_driver();
                            return Ok(ServeEnd::HostGone);
                        }
                        // Inside, the port's host side is not connected.
                        port_hup = true;
                    }
                    Err(e) if self.cfg.in_vm => {
                        let _ = e;
                        port_hup = true;
                    }
                    Err(e) => return Err(format!("reading from the host: {e}")),
                }
            }
            if port_hup {
                // airlock died (its end of QEMU's chardev closed): nobody will ever
                // collect this VM, so it stops itself rather than run on orphaned.
                let since = *hup_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() >= HOST_GONE_AFTER {
                    self.kill_driver();
                    return Ok(ServeEnd::HostGone);
                }
                std::thread::sleep(Duration::from_millis(20));
            } else if p_in {
                hup_since = None;
            }
        }
    }

    fn queue_host(&mut self, bytes: Vec<u8>) {
        if self.to_host.is_empty() {
            self.to_host = bytes;
        } else {
            self.to_host.extend_from_slice(&bytes);
        }
        let _ = flush_some(&mut self.port, &mut self.to_host);
    }

    fn flush_host_blocking(&mut self) {
        for _ in 0..500 {
            if self.to_host.is_empty() {
                return;
            }
            if flush_some(&mut self.port, &mut self.to_host).is_err() {
                return;
            }
            let mut fds = [PollFd::new(self.port.as_fd(), PollFlags::POLLOUT)];
            let _ = poll(&mut fds, PollTimeout::from(10u16));
        }
    }

    /// Reads once from the driver's stdout or stderr and queues a stream frame.
    fn pump_stream(&mut self, is_out: bool, buf: &mut [u8]) {
        let Some(d) = &mut self.driver else { return };
        let slot = if is_out { &mut d.stdout } else { &mut d.stderr };
        let Some(f) = slot else { return };
        let text = match read_some(f, buf) {
            Ok(Some(0)) => return,
            Ok(Some(n)) => {
                let sb = if is_out { &mut self.out } else { &mut self.err };
                sb.text(&buf[..n], false)
            }
            Ok(None) | Err(_) => {
                *slot = None;
                let sb = if is_out { &mut self.out } else { &mut self.err };
                sb.text(&[], true)
            }
        };
        if let Some(text) = text
            && self.attached
        {
            let name = if is_out { "stdout" } else { "stderr" }.to_string();
            self.queue_host(encode(&GuestFrame::Stream { name, text }));
        }
    }

    /// Moves everything already in the driver's pipes into stream frames.
    fn drain_streams(&mut self, buf: &mut [u8]) {
        for is_out in [true, false] {
            for _ in 0..256 {
                let open =
                    self.driver.as_ref().is_some_and(|d| if is_out { d.stdout.is_some() } else { d.stderr.is_some() });
                if !open {
                    break;
                }
                let before = self.to_host.len();
                let ready = {
                    let d = self.driver.as_ref().expect("checked");
                    let f = if is_out { d.stdout.as_ref() } else { d.stderr.as_ref() }.expect("checked");
                    let mut fds = [PollFd::new(f.as_fd(), PollFlags::POLLIN)];
                    poll(&mut fds, PollTimeout::ZERO).unwrap_or(0) > 0
                };
                if !ready {
                    break;
                }
                self.pump_stream(is_out, buf);
                if self.to_host.len() == before
                    && self.driver.as_ref().is_some_and(
                        |d| {
                            if is_out { d.stdout.is_some() } else { d.stderr.is_some() }
                        },
                    )
                {
                    // Readable but nothing came (an incomplete character): move on.
                    break;
                }
            }
        }
    }

    fn read_driver(&mut self, buf: &mut [u8]) {
        let Some(d) = &mut self.driver else { return };
        match read_some(&mut d.chan, buf) {
            Ok(Some(0)) => return,
            Ok(Some(n)) => self.drv_dec.push(&buf[..n]),
            Ok(None) | Err(_) => return, // the pidfd reports the exit
        }
        self.forward_driver_frames(buf);
    }

    fn forward_driver_frames(&mut self, buf: &mut [u8]) {
        loop {
            let frame: Value = match self.drv_dec.next_frame::<Value>() {
                Ok(Some(v)) => v,
                Ok(None) => return,
                Err(e) => {
                    // The driver is ours; a broken frame means it is compromised or
                    // corrupted. Kill it; the exit is reported.
                    eprintln!("airlock-vm-agent: driver sent a bad frame ({e}); killing it");
                    self.kill_driver();
                    return;
                }
            };
            let kind = frame.get("type").and_then(Value::as_str).unwrap_or("").to_string();
            if kind == "hello" {
                self.hello = Some(frame);
                if !self.cfg.preload.is_empty() && !self.preloaded {
                    // The template's modules first; `ready` follows their `done`.
                    self.preloaded = true;
                    self.preload_pending = true;
                    let f = encode(&airlock_guest::protocol::HostFrame::Configure {
                        env: BTreeMap::new(),
                        preload: self.cfg.preload.clone(),
                    });
                    self.send_to_driver(f);
                    continue;
                }
                self.after_hello();
                continue;
            }
            if kind == "done" && self.preload_pending {
                self.preload_pending = false;
                self.after_hello();
                continue;
            }
            if kind == "done" && self.configure_pending {
                self.configure_pending = false;
                self.attached = true;
                if let Some(h) = &self.hello {
                    let bytes = encode(h);
                    self.queue_host(bytes);
                }
                continue;
            }
            if !self.attached {
                continue;
            }
            if !matches!(kind.as_str(), "result" | "error" | "stream" | "done") {
                // Only the agent speaks for itself (`exited`, `file_reply`, `ready`): a
                // driver that sends such a frame is forging the agent's word. Kill it;
                // its real exit is reported.
                eprintln!("airlock-vm-agent: driver sent a '{kind}' frame, which only the agent may send; killing it");
                self.kill_driver();
                return;
            }
            if kind == "done" {
                self.interrupt_pending = false;
            }
            self.drain_streams(buf);
            self.queue_host(encode(&frame));
        }
    }

    /// The driver is up (and its template preloaded): attach if a host asked, else
    /// tell a cold-booting host that the guest is idle and may be snapshotted
    /// (restored clones never send `ready` again).
    fn after_hello(&mut self) {
        if let Some(a) = self.attach.take() {
            self.do_attach(a);
        } else if !self.ready_sent {
            self.ready_sent = true;
            self.queue_host(encode(&serde_json::json!({"type": "ready"})));
        }
    }

    fn reap_driver(&mut self, buf: &mut [u8]) {
        // Frames and output the driver left behind come first.
        while let Some(d) = &mut self.driver {
            match read_some(&mut d.chan, buf) {
                Ok(Some(n)) if n > 0 => self.drv_dec.push(&buf[..n]),
                _ => break,
            }
        }
        self.forward_driver_frames(buf);
        self.drain_streams(buf);
        let Some(mut d) = self.driver.take() else { return };
        let status = d.child.wait().ok();
        use std::os::unix::process::ExitStatusExt;
        let code = status.and_then(|s| s.code());
        let signal = status.and_then(|s| s.signal());
        let oom_kill = oom_kills() > self.oom_before;
        for (sb, name) in [(&mut self.out, "stdout"), (&mut self.err, "stderr")] {
            if let Some(text) = sb.text(&[], true)
                && self.attached
            {
                let f = encode(&GuestFrame::Stream { name: name.into(), text });
                self.to_host.extend_from_slice(&f);
            }
        }
        if !self.shutting_down {
            let f = encode(&GuestFrame::Exited { code, signal, oom_kill });
            self.queue_host(f);
        }
    }

    fn kill_driver(&mut self) {
        if let Some(d) = &self.driver {
            let _ = kill(Pid::from_raw(-d.pid.as_raw()), Signal::SIGKILL);
            let _ = kill(d.pid, Signal::SIGKILL);
        }
    }

    fn send_to_driver(&mut self, bytes: Vec<u8>) {
        self.to_driver.extend_from_slice(&bytes);
        if let Some(d) = &mut self.driver {
            let _ = flush_some(&mut d.chan, &mut self.to_driver);
        }
    }

    fn handle_host_frames(&mut self) -> Result<(), String> {
        loop {
            let frame: Value = match self.port_dec.next_frame::<Value>() {
                Ok(Some(v)) => {
                    if self.port_dec.pending() == 0 {
                        // A large frame (a file) leaves a large buffer behind; the
                        // guest's memory is the sandbox's, so it goes back before
                        // the frame is handled.
                        self.port_dec = FrameDecoder::new();
                    }
                    v
                }
                Ok(None) => return Ok(()),
                Err(e) => {
                    // Resynchronising a byte stream is guesswork; start over clean.
                    eprintln!("airlock-vm-agent: bad frame from the host: {e}");
                    self.port_dec = FrameDecoder::new();
                    return Ok(());
                }
            };
            let kind = frame.get("type").and_then(Value::as_str).unwrap_or("").to_string();
            match kind.as_str() {
                // Frames for the driver itself (a guard policy arrives before the
                // first guarded cell), forwarded as they are.
                "exec" | "shutdown" | "guard" => {
                    if kind == "shutdown" {
                        self.shutting_down = true;
                    }
                    if self.driver.is_some() {
                        self.send_to_driver(encode(&frame));
                    } else if self.shutting_down {
                        return Ok(());
                    } else {
                        let f = encode(&GuestFrame::Exited { code: None, signal: None, oom_kill: false });
                        self.queue_host(f);
                    }
                }
                _ => match serde_json::from_value::<AgentRequest>(frame) {
                    Ok(req) => self.handle_request(req),
                    Err(e) => {
                        let reply = AgentReply::FileReply {
                            data: None,
                            entries: None,
                            error: Some(WireError::from_error(&Error::invalid(format!(
                                "the agent does not understand '{kind}': {e}"
                            )))),
                        };
                        self.queue_host(encode(&reply));
                    }
                },
            }
        }
    }

    fn handle_request(&mut self, req: AgentRequest) {
        match req {
            AgentRequest::Attach { .. } => {
                if self.hello.is_some() && !self.preload_pending {
                    self.do_attach(req);
                } else {
                    self.attach = Some(req);
                }
            }
            AgentRequest::Interrupt => {
                if let Some(d) = &self.driver {
                    let _ = kill(d.pid, Signal::SIGINT);
                    // The driver ignores SIGINT outside user code; in a slow guest the
                    // cell may not have started yet, so repeat until its `done`.
                    self.interrupt_pending = true;
                    self.last_sigint = std::time::Instant::now();
                }
            }
            AgentRequest::FileWrite { path, data, max_bytes, total, append } => {
                // Outside a VM (tests) the host's memory is not the sandbox's to judge.
                let available = if self.cfg.in_vm { mem_available_bytes() } else { None };
                let r = WorkspacePath::parse(&path).and_then(|p| {
                    let ws = &self.workspace;
                    if append {
                        let Some((open, fd)) = self.upload.take().filter(|(open, _)| *open == p) else {
                            return Err(Error::invalid(format!("a piece of '{p}' came without its first piece")));
                        };
                        write_piece(ws, &open, &fd, &data)?;
                        self.upload = Some((open, fd));
                        return Ok(());
                    }
                    self.upload = None;
                    let fd = begin_file(ws, &p, &data, total, max_bytes, available)?;
                    write_piece(ws, &p, &fd, &data)?;
                    if total.is_some_and(|t| t > decoded_len(&data)) {
                        self.upload = Some((p, fd));
                    }
                    Ok(())
                });
                drop(data);
                self.reply(r.map(|()| (None, None)));
            }
            AgentRequest::FileRead { path, max_bytes } => {
                let r = WorkspacePath::parse(&path).and_then(|p| self.workspace.read(&p, max_bytes));
                self.reply(r.map(|b| (Some(airlock_core::outcome::base64_encode(&b)), None)));
            }
            AgentRequest::FileList { path } => {
                let r = WorkspacePath::parse_dir(&path).and_then(|p| self.workspace.list(&p));
                self.reply(r.map(|e| (None, Some(e))));
            }
            AgentRequest::FileRemove { path } => {
                let r = WorkspacePath::parse(&path).and_then(|p| self.workspace.remove(&p));
                self.reply(r.map(|()| (None, None)));
            }
        }
    }

    #[allow(clippy::type_complexity)]
    fn reply(&mut self, r: Result<(Option<String>, Option<Vec<airlock_core::FileEntry>>), Error>) {
        let reply = match r {
            Ok((data, entries)) => AgentReply::FileReply { data, entries, error: None },
            Err(e) => AgentReply::FileReply { data: None, entries: None, error: Some(WireError::from_error(&e)) },
        };
        self.queue_host(encode(&reply));
    }

    fn do_attach(&mut self, req: AgentRequest) {
        let AgentRequest::Attach { time_ms, entropy, env, limits } = req else { return };
        if self.cfg.in_vm {
            set_clock(time_ms);
            if let Ok(bytes) = b64_decode(&entropy) {
                add_entropy(&bytes);
            }
            resize_tmpfs(&limits);
        }
        if let Some(d) = &self.driver {
            apply_limits(d.pid, &limits, self.cfg.in_vm);
        }
        self.configure_pending = true;
        let f = encode(&airlock_guest::protocol::HostFrame::Configure { env, preload: Vec::new() });
        self.send_to_driver(f);
    }
}

fn b64_decode(s: &str) -> Result<Vec<u8>, Error> {
    airlock_core::outcome::base64_decode(s).map_err(|e| Error::invalid(format!("content is not valid base64: {e}")))
}

fn set_clock(time_ms: u64) {
    let ts = libc::timespec { tv_sec: (time_ms / 1000) as libc::time_t, tv_nsec: ((time_ms % 1000) * 1_000_000) as _ };
    // SAFETY: clock_settime reads the timespec we pass by reference.
    unsafe {
        libc::clock_settime(libc::CLOCK_REALTIME, &ts);
    }
}

/// Mixes host entropy into the guest kernel's pool and reseeds its CRNG, so clones of
/// one snapshot do not share their random numbers.
fn add_entropy(bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    let Ok(f) = std::fs::OpenOptions::new().write(true).open("/dev/urandom") else { return };
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let mut info: Vec<u8> = Vec::with_capacity(8 + bytes.len() + 4);
    info.extend_from_slice(&((bytes.len() * 8) as i32).to_ne_bytes());
    info.extend_from_slice(&(bytes.len() as i32).to_ne_bytes());
    info.extend_from_slice(bytes);
    info.resize(8 + bytes.len().div_ceil(4) * 4, 0);
    const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
    const RNDRESEEDCRNG: libc::c_ulong = 0x5207;
    // SAFETY: both ioctls read a buffer we own (RNDADDENTROPY, sized as its header
    // says) or take no argument (RNDRESEEDCRNG) on an fd we opened.
    unsafe {
        libc::ioctl(f.as_raw_fd(), RNDADDENTROPY, info.as_ptr());
        libc::ioctl(f.as_raw_fd(), RNDRESEEDCRNG);
    }
}

fn resize_tmpfs(limits: &GuestLimits) {
    let size = limits.file_bytes.max(1 << 20);
    for dir in [crate::GUEST_WORKSPACE, "/tmp"] {
        let data = format!("size={size}");
        let _ = nix::mount::mount(
            None::<&str>,
            dir,
            None::<&str>,
            nix::mount::MsFlags::MS_REMOUNT | nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
            Some(data.as_str()),
        );
    }
}

fn apply_limits(pid: Pid, limits: &GuestLimits, in_vm: bool) {
    let set = |res: libc::__rlimit_resource_t, v: u64| {
        let r = libc::rlimit { rlim_cur: v, rlim_max: v };
        // SAFETY: prlimit reads the rlimit we pass and writes nothing (old is null).
        unsafe { libc::prlimit(pid.as_raw(), res, &r, std::ptr::null_mut()) };
    };
    if limits.processes > 0 {
        set(libc::RLIMIT_NPROC, limits.processes.into());
    }
    if limits.open_files > 0 {
        set(libc::RLIMIT_NOFILE, limits.open_files.into());
    }
    if limits.file_bytes > 0 {
        set(libc::RLIMIT_FSIZE, limits.file_bytes);
    }
    if in_vm && let Some(total) = mem_total_bytes() {
        // Allocations fail (MemoryError) while the guest still has room, instead of
        // the kernel thrashing its page cache before the OOM killer acts, which an
        // emulated guest does for minutes. The VM's size stays the hard cap.
        let reserve = (total / 8).max(32 << 20);
        set(libc::RLIMIT_DATA, total.saturating_sub(reserve).max(32 << 20));
    }
}

/// A `/proc/meminfo` field, in bytes.
fn meminfo_bytes(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 =
        text.lines().find_map(|l| l.strip_prefix(field))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb * 1024)
}

/// The guest's memory (`MemTotal`), in bytes.
fn mem_total_bytes() -> Option<u64> {
    meminfo_bytes("MemTotal:")
}

/// Memory the guest can still give (`MemAvailable`), in bytes.
fn mem_available_bytes() -> Option<u64> {
    meminfo_bytes("MemAvailable:")
}

/// What the guest keeps free for its kernel and the driver when a file comes in.
const WRITE_RESERVE_BYTES: u64 = 8 << 20;

/// The size of what base64 `data` decodes to.
fn decoded_len(data: &str) -> u64 {
    data.trim_end_matches('=').len() as u64 * 3 / 4
}

/// Opens (creating or truncating) the file a `FileWrite` starts, after checking that
/// the whole file (`total`, else this piece) fits in `max_bytes` and in the guest's
/// free memory (`available`, beside a reserve; what the file it replaces holds counts
/// as free): the workspace is a tmpfs, so the file lives in the VM's memory
/// (`memory_bytes`), and one the guest cannot hold is refused, not left to run the
/// guest out of memory and end the session.
fn begin_file(
    ws: &Workspace,
    path: &WorkspacePath,
    data: &str,
    total: Option<u64>,
    max_bytes: u64,
    available: Option<u64>,
) -> Result<OwnedFd, Error> {
    use airlock_core::units::format_size;
    let len = total.unwrap_or_else(|| decoded_len(data));
    if len > max_bytes {
        return Err(Error::TooLarge(format!(
            "'{path}' is {} but the limit is {} (limits.file_bytes)",
            format_size(len),
            format_size(max_bytes)
        )));
    }
    if let Some(free) = available {
        let free = free.saturating_add(ws.file_sizes(path).1);
        if len.saturating_add(WRITE_RESERVE_BYTES) > free {
            return Err(Error::TooLarge(format!(
                "'{path}' ({}) does not fit in the sandbox's memory: workspace files are held in it, and {} of its \
                 {} is free (limits.memory_bytes); remove files from the workspace or use a larger limits.memory_bytes",
                format_size(len),
                format_size(free.saturating_sub(WRITE_RESERVE_BYTES)),
                format_size(mem_total_bytes().unwrap_or(0)),
            )));
        }
    }
    let w = ws.prepare_write(path, &[], max_bytes)?;
    w.open().map_err(|f| w.error(f))
}

/// Decodes one piece (base64) into the open file `fd`, 48 KiB at a time; on failure
/// the file is truncated and removed.
fn write_piece(ws: &Workspace, path: &WorkspacePath, fd: &OwnedFd, data: &str) -> Result<(), Error> {
    let fail = |e: Error| {
        ws.discard(path, fd);
        e
    };
    let data = data.trim_end_matches('=');
    // 64 KiB of text (a multiple of 4) decodes on its own.
    for piece in data.as_bytes().chunks(64 << 10) {
        let bytes = std::str::from_utf8(piece)
            .map_err(|e| e.to_string())
            .and_then(|t| airlock_core::outcome::base64_decode(t).map_err(|e| e.to_string()))
            .map_err(|e| fail(Error::invalid(format!("content is not valid base64: {e}"))))?;
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            match nix::unistd::write(fd, rest) {
                Ok(n) => rest = &rest[n..],
                Err(nix::errno::Errno::EINTR) => {}
                Err(nix::errno::Errno::ENOSPC) => {
                    return Err(fail(Error::TooLarge(format!("the workspace is full while writing '{path}'"))));
                }
                Err(nix::errno::Errno::EFBIG) => {
                    return Err(fail(Error::TooLarge(format!("'{path}' exceeds the sandbox's file size limit"))));
                }
                Err(e) => return Err(fail(Error::host(format!("writing '{path}': {}", e.desc())))),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_come_in_pieces_and_are_refused_when_memory_is_short() {
        let tmp = tempfile::tempdir().unwrap();
        let ws = Workspace::open(tmp.path()).unwrap();
        let p = |s: &str| WorkspacePath::parse(s).unwrap();
        let enc = airlock_core::outcome::base64_encode;
        let big: Vec<u8> = (0..200_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        for n in [0usize, 1, 2, 3, 4, 65_535, 65_536, 65_537, 200_000] {
            let fd = begin_file(&ws, &p("d/f"), &enc(&big[..n]), None, 1 << 20, Some(1 << 30)).unwrap();
            write_piece(&ws, &p("d/f"), &fd, &enc(&big[..n])).unwrap();
            assert_eq!(std::fs::read(tmp.path().join("d/f")).unwrap(), &big[..n], "{n} bytes");
        }
        // In pieces: the first says how large the whole file is.
        let fd = begin_file(&ws, &p("d/f"), &enc(&big[..70_000]), Some(200_000), 1 << 20, Some(1 << 30)).unwrap();
        for piece in big.chunks(70_000) {
            write_piece(&ws, &p("d/f"), &fd, &enc(piece)).unwrap();
        }
        assert_eq!(std::fs::read(tmp.path().join("d/f")).unwrap(), big);
        // The whole file is checked against the guest's free memory up front; what the
        // file it replaces holds counts as free.
        let free = WRITE_RESERVE_BYTES + 150_000;
        let e = begin_file(&ws, &p("g"), &enc(&big[..10]), Some(200_000), 1 << 20, Some(free)).unwrap_err();
        assert!(matches!(e, Error::TooLarge(_)) && e.to_string().contains("limits.memory_bytes"), "{e}");
        assert!(!tmp.path().join("g").exists());
        begin_file(&ws, &p("d/f"), &enc(&big[..10]), Some(200_000), 1 << 20, Some(free)).unwrap();
        let e = begin_file(&ws, &p("g"), "", Some(2000), 1000, None).unwrap_err();
        assert!(e.to_string().contains("limits.file_bytes"), "{e}");
        let mut bad = "A".repeat(70_000);
        bad.push('*');
        let fd = begin_file(&ws, &p("g"), &bad, None, 1 << 20, None).unwrap();
        let e = write_piece(&ws, &p("g"), &fd, &bad).unwrap_err();
        assert!(e.to_string().contains("base64"), "{e}");
        assert!(!tmp.path().join("g").exists(), "a half-decoded file is left behind");
    }

    #[test]
    fn stream_buf_keeps_split_characters() {
        let mut s = StreamBuf::default();
        let e = "é".as_bytes();
        assert_eq!(s.text(&e[..1], false), None);
        assert_eq!(s.text(&e[1..], false).as_deref(), Some("é"));
        assert_eq!(s.text(b"\xff", true).as_deref(), Some("\u{fffd}"));
    }
}
