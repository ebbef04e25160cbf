//! The host side of the guest driver: start-up handshake and the one poll loop that
//! runs a cell, shared by every backend whose guest is a process with a channel,
//! a stdout pipe and a stderr pipe (`process`, `jail`, `microvm` through its agent).
//!
//! The loop enforces the per-cell limits that do not need the kernel's help: wall
//! time (interrupt first, so a session keeps its state; kill after a grace period),
//! CPU time where the backend can measure it, and the output caps: stdout and stderr
//! (`limits.output_bytes`) and rich results (`limits.result_bytes`). What passes a cap
//! is discarded as it is read (a frame too long for what is left is skipped unread),
//! so a 10 GB print or display never grows airlock's memory.

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use airlock_core::backend::{Canceller, EventSink};
use airlock_core::outcome::cut_text;
use airlock_core::units::{format_duration_ms, format_size};
use airlock_core::{BackendKind, Cell, Error, ErrorInfo, Event, Isolation, Outcome, ResultBundle, Status};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::capture::{ResultBudget, Stream, accept, emit, output_limit_reason, relabel_interrupt};
use crate::protocol::{Decoded, FrameDecoder, GuestFrame, HostFrame, PROTOCOL_VERSION, encode};

/// The most bytes of a protocol violation's description an outcome's reason carries.
pub const PROTOCOL_REASON_BYTES: usize = 512;
/// How long an interrupted cell may take to stop before the sandbox is killed.
pub const INTERRUPT_GRACE: Duration = Duration::from_millis(500);
/// How often the loop wakes to check CPU use and whether the guest is still alive.
const TICK: Duration = Duration::from_millis(50);
/// Read chunk size.
const CHUNK: usize = 64 * 1024;

/// How a guest process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExitInfo {
    /// Exit status, if it exited.
    pub code: Option<i32>,
    /// Terminating signal, if killed.
    pub signal: Option<i32>,
    /// CPU time of the process (and its waited-for children), if known.
    pub cpu_ms: Option<u64>,
    /// Peak resident memory, if known.
    pub peak_memory_bytes: Option<u64>,
}

/// What a backend provides so the loop can control and observe its guest.
pub trait Supervisor: Send {
    /// Asks the guest to stop the running cell (SIGINT to the driver); state survives.
    fn interrupt(&mut self);
    /// Kills every process of the sandbox.
    fn kill(&mut self);
    /// Whether the guest (the driver) has exited, without blocking. Once it has, every
    /// later call returns the same `ExitInfo` (implementations cache the reaped status).
    fn try_wait(&mut self) -> Option<ExitInfo>;
    /// A handle that kills the sandbox from any thread.
    fn kill_handle(&self) -> Arc<dyn Fn() + Send + Sync>;
    /// CPU time used by the whole sandbox so far, in ms, where measured (cgroups).
    fn cpu_ms(&mut self) -> Option<u64> {
        None
    }
    /// Peak memory of the whole sandbox, where measured (cgroups).
    fn peak_memory_bytes(&mut self) -> Option<u64> {
        None
    }
    /// A precise status for a guest that died, when the backend knows more than the
    /// signal says (e.g. the cgroup's OOM counter went up).
    fn explain_death(&mut self, _exit: &ExitInfo) -> Option<(Status, String)> {
        None
    }
    /// Whether the sandbox's memory reached its limit, as the host measures it, when a
    /// cell ends in `MemoryError` (the guest's own claim, which code can also make with
    /// `raise MemoryError()`): `Some(true)` it did, `Some(false)` it did not (the cell
    /// is then an ordinary `error`), `None` this backend cannot tell (the claim stands).
    fn memory_limit_reached(&mut self) -> Option<bool> {
        None
    }
    /// True when an agent inside the sandbox supervises the interpreter and reports
    /// its end with an `exited` frame (`microvm`). Everywhere else the host waits for
    /// the interpreter itself, and an `exited` frame is a forgery: a protocol
    /// violation that kills the sandbox.
    fn accepts_exited_frames(&self) -> bool {
        false
    }
    /// How long an interrupted cell may take to stop before the sandbox is killed
    /// (longer for guests that run slowly, e.g. an emulated VM).
    fn interrupt_grace(&self) -> Duration {
        INTERRUPT_GRACE
    }
    /// Waits up to `timeout` for the guest to exit.
    fn wait(&mut self, timeout: Duration) -> Option<ExitInfo> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(e) = self.try_wait() {
                return Some(e);
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// The three host-side fds of a guest.
#[derive(Debug)]
pub struct GuestPipes {
    /// The framed channel (a bidirectional socket).
    pub channel: OwnedFd,
    /// Read end of the guest's stdout.
    pub stdout: OwnedFd,
    /// Read end of the guest's stderr.
    pub stderr: OwnedFd,
}

/// What the guest said about itself at start-up.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Hello {
    /// Interpreter version, e.g. `3.11.2`.
    pub python: String,
    /// Interpreter implementation, e.g. `cpython`.
    pub implementation: String,
    /// The driver's pid as seen inside the sandbox.
    pub pid: i64,
}

/// Static facts about the sandbox a guest lives in, copied into every outcome.
#[derive(Debug, Clone)]
pub struct GuestMeta {
    /// The backend.
    pub backend: BackendKind,
    /// Its boundary.
    pub isolation: Isolation,
    /// The sandbox's id.
    pub sandbox_id: String,
    /// The sandbox's memory limit (for messages).
    pub memory_bytes: u64,
    /// Warnings to attach to every outcome (limits not enforced here, ...).
    pub warnings: Vec<String>,
}

/// Why the host stopped a cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Timeout,
    CpuLimit,
    OutputLimit,
}

/// How the loop ended.
enum End {
    Done {
        status: String,
        exit_code: Option<i64>,
        signal: Option<i32>,
        count: u64,
        cpu_ms: u64,
        peak: u64,
        memory_error: bool,
    },
    Died(ExitInfo),
    /// An agent inside the sandbox reported the interpreter's end (`exited` frame);
    /// the flag says whether the guest kernel's OOM killer ran.
    Exited(ExitInfo, bool),
    Cancelled,
    Protocol(String),
}

/// A live guest driver and its supervisor.
pub struct Guest<S: Supervisor> {
    channel: File,
    stdout: File,
    stderr: File,
    decoder: FrameDecoder,
    sup: S,
    meta: GuestMeta,
    hello: Hello,
    alive: bool,
    cancelled: Arc<AtomicBool>,
    /// Output that arrived while no cell was running (start-up noise, stray background writes).
    stray: Vec<u8>,
    /// The guard policy last sent to the guest (it is sent again only when it changes).
    guard_sent: Option<airlock_core::GuardPolicy>,
}

fn set_nonblocking(fd: &OwnedFd) -> Result<(), Error> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = fcntl(fd.as_fd(), FcntlArg::F_GETFL).map_err(|e| Error::host(format!("fcntl: {e}")))?;
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
    fcntl(fd.as_fd(), FcntlArg::F_SETFL(flags)).map_err(|e| Error::host(format!("fcntl: {e}")))?;
    Ok(())
}

/// Reads what is available from a nonblocking fd. `Ok(None)` means end of file.
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

impl<S: Supervisor> Guest<S> {
    /// Takes over a freshly started guest and waits (up to `startup`) for its `hello`.
    /// On failure the guest is killed and the error says what it printed.
    pub fn connect(pipes: GuestPipes, mut sup: S, meta: GuestMeta, startup: Duration) -> Result<Self, Error> {
        for fd in [&pipes.channel, &pipes.stdout, &pipes.stderr] {
            if let Err(e) = set_nonblocking(fd) {
                sup.kill();
                return Err(e);
            }
        }
        let mut guest = Guest {
            channel: File::from(pipes.channel),
            stdout: File::from(pipes.stdout),
            stderr: File::from(pipes.stderr),
            decoder: FrameDecoder::new(),
            sup,
            meta,
            hello: Hello::default(),
            alive: true,
            cancelled: Arc::new(AtomicBool::new(false)),
            stray: Vec::new(),
            guard_sent: None,
        };
        match guest.await_hello(startup) {
            Ok(h) => {
                guest.hello = h;
                Ok(guest)
            }
            Err(e) => {
                guest.terminate();
                Err(e)
            }
        }
    }

    fn await_hello(&mut self, startup: Duration) -> Result<Hello, Error> {
        let deadline = Instant::now() + startup;
        let mut buf = vec![0u8; CHUNK];
        loop {
            match self.decoder.next_frame::<GuestFrame>() {
                Ok(Some(GuestFrame::Hello { protocol, python, implementation, pid })) => {
                    if protocol != PROTOCOL_VERSION {
                        return Err(Error::host(format!(
                            "guest driver speaks protocol {protocol}, this host speaks {PROTOCOL_VERSION}"
                        )));
                    }
                    return Ok(Hello { python, implementation, pid });
                }
                Ok(Some(other)) => {
                    return Err(Error::host(format!("guest sent {other:?} before hello")));
                }
                Ok(None) => {}
                Err(e) => return Err(Error::host(e.to_string())),
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::host(format!(
                    "the guest did not start within {}{}",
                    format_duration_ms(startup.as_millis() as u64),
                    self.stray_tail()
                )));
            }
            let wait = (deadline - now).min(TICK);
            let (chan_ready, out_ready, err_ready) = {
                let mut fds = [
                    PollFd::new(self.channel.as_fd(), PollFlags::POLLIN),
                    PollFd::new(self.stdout.as_fd(), PollFlags::POLLIN),
                    PollFd::new(self.stderr.as_fd(), PollFlags::POLLIN),
                ];
                let _ = poll(&mut fds, PollTimeout::try_from(wait.as_millis() as u64).unwrap_or(PollTimeout::MAX));
                let r = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
                (r(&fds[0]), r(&fds[1]), r(&fds[2]))
            };
            for (ready, which) in [(out_ready, 1), (err_ready, 2)] {
                if ready {
                    let f = if which == 1 { &mut self.stdout } else { &mut self.stderr };
                    if let Ok(Some(n)) = read_some(f, &mut buf)
                        && self.stray.len() < 64 * 1024
                    {
                        self.stray.extend_from_slice(&buf[..n]);
                    }
                }
            }
            if chan_ready {
                match read_some(&mut self.channel, &mut buf) {
                    Ok(Some(n)) => self.decoder.push(&buf[..n]),
                    Ok(None) | Err(_) => {
                        let exit = self.sup.wait(Duration::from_secs(2));
                        self.drain_stray(&mut buf);
                        return Err(Error::host(format!(
                            "the guest exited during start-up ({}){}",
                            describe_exit(exit.as_ref()),
                            self.stray_tail()
                        )));
                    }
                }
            } else if let Some(exit) = self.sup.try_wait() {
                self.drain_stray(&mut buf);
                return Err(Error::host(format!(
                    "the guest exited during start-up ({}){}",
                    describe_exit(Some(&exit)),
                    self.stray_tail()
                )));
            }
        }
    }

    fn drain_stray(&mut self, buf: &mut [u8]) {
        for which in [1, 2] {
            let f = if which == 1 { &mut self.stdout } else { &mut self.stderr };
            while let Ok(Some(n)) = read_some(f, buf) {
                if n == 0 || self.stray.len() >= 64 * 1024 {
                    break;
                }
                self.stray.extend_from_slice(&buf[..n]);
            }
        }
    }

    fn stray_tail(&self) -> String {
        if self.stray.is_empty() {
            return String::new();
        }
        let text = String::from_utf8_lossy(&self.stray);
        let tail: String = text.chars().rev().take(2000).collect::<Vec<_>>().into_iter().rev().collect();
        format!("; it printed:\n{}", tail.trim_end())
    }

    /// What the guest reported about itself.
    pub fn hello(&self) -> &Hello {
        &self.hello
    }

    /// The backend's supervisor.
    pub fn supervisor(&mut self) -> &mut S {
        &mut self.sup
    }

    /// The static facts copied into outcomes.
    pub fn meta_mut(&mut self) -> &mut GuestMeta {
        &mut self.meta
    }

    /// False once the driver is gone.
    pub fn is_alive(&self) -> bool {
        self.alive
    }

    /// A handle that kills the guest from another thread; the running cell ends with
    /// status `killed`.
    pub fn canceller(&self) -> Canceller {
        let flag = self.cancelled.clone();
        let kill = self.sup.kill_handle();
        Arc::new(move || {
            flag.store(true, Ordering::SeqCst);
            kill();
        })
    }

    /// Asks the driver to exit, then kills whatever is left. Idempotent.
    pub fn terminate(&mut self) {
        if self.alive {
            let _ = self.channel.write_all(&encode(&HostFrame::Shutdown));
            if self.sup.wait(Duration::from_millis(200)).is_none() {
                self.sup.kill();
                let _ = self.sup.wait(Duration::from_secs(2));
            }
            self.alive = false;
        }
        self.sup.kill();
    }

    fn send(&mut self, frame: &HostFrame, deadline: Instant) -> Result<(), Error> {
        let bytes = encode(frame);
        let mut off = 0;
        while off < bytes.len() {
            match self.channel.write(&bytes[off..]) {
                Ok(n) => off += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Err(Error::host("the guest stopped reading its channel"));
                    }
                    let mut fds = [PollFd::new(self.channel.as_fd(), PollFlags::POLLOUT)];
                    let ms = (deadline - now).min(TICK).as_millis() as u64;
                    let _ = poll(&mut fds, PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX));
                }
                Err(e) => return Err(Error::io("writing to the guest channel", e)),
            }
        }
        Ok(())
    }

    /// Runs one cell and returns its outcome. Guest failures are outcomes; `Err` only
    /// when the guest was already gone.
    pub fn execute(&mut self, cell: &Cell, events: &mut EventSink<'_>) -> Result<Outcome, Error> {
        if !self.alive {
            return Err(Error::SandboxGone(format!(
                "sandbox {} has stopped; create a new sandbox",
                self.meta.sandbox_id
            )));
        }
        let started = Instant::now();
        let deadline = started + Duration::from_millis(cell.timeout_ms);
        let cpu_start = self.sup.cpu_ms();
        let frame = HostFrame::Exec {
            language: cell.language.as_str().to_string(),
            code: cell.code.clone(),
            globals: cell.global_variables.clone(),
            cpu_ms: Some(cell.cpu_ms),
        };
        let mut outcome = Outcome::new(cell.id.clone(), self.meta.backend, self.meta.isolation);
        outcome.sandbox_id = Some(self.meta.sandbox_id.clone());
        outcome.warnings = self.meta.warnings.clone();
        self.stray.clear();
        let guard = guard_frame(cell).filter(|_| self.guard_sent.as_ref() != cell.guard.as_ref());
        let sent = match guard {
            Some(g) => self.send(&g, deadline).map(|()| self.guard_sent = cell.guard.clone()),
            None => Ok(()),
        };
        if let Err(e) = sent.and_then(|()| self.send(&frame, deadline)) {
            self.sup.kill();
            let exit = self.sup.wait(Duration::from_secs(2)).unwrap_or_default();
            self.alive = false;
            return Ok(self.finish(outcome, End::Protocol(e.to_string()), None, &exit, cpu_start, started, cell));
        }

        let mut out = Stream::pipe();
        let mut err = Stream::pipe();
        let mut total: u64 = 0;
        let mut results = ResultBudget::new(cell.result_bytes);
        let mut stop: Option<Stop> = None;
        let mut kill_at: Option<Instant> = None;
        let mut killed = false;
        let mut buf = vec![0u8; CHUNK];
        let mut error: Option<ErrorInfo> = None;
        let mut last_cpu_check = Instant::now();

        let end = loop {
            if self.cancelled.load(Ordering::SeqCst) {
                self.sup.kill();
                break End::Cancelled;
            }
            let now = Instant::now();
            if stop.is_none() && now >= deadline {
                stop = Some(Stop::Timeout);
            }
            if stop.is_none() && now.duration_since(last_cpu_check) >= TICK {
                last_cpu_check = now;
                if let (Some(c0), Some(c)) = (cpu_start, self.sup.cpu_ms())
                    && c.saturating_sub(c0) >= cell.cpu_ms
                {
                    stop = Some(Stop::CpuLimit);
                }
            }
            if stop.is_some() && kill_at.is_none() {
                self.sup.interrupt();
                kill_at = Some(now + self.sup.interrupt_grace());
            }
            if let Some(k) = kill_at
                && now >= k
                && !killed
            {
                self.sup.kill();
                killed = true;
            }

            let mut wake = now + TICK;
            if stop.is_none() {
                wake = wake.min(deadline);
            }
            if let Some(k) = kill_at
                && !killed
            {
                wake = wake.min(k);
            }
            let wait_ms = wake.saturating_duration_since(now).as_millis() as u64;
            let (chan_rev, out_rev, err_rev) = {
                let mut fds = Vec::with_capacity(3);
                fds.push(PollFd::new(self.channel.as_fd(), PollFlags::POLLIN));
                if out.open {
                    fds.push(PollFd::new(self.stdout.as_fd(), PollFlags::POLLIN));
                }
                if err.open {
                    fds.push(PollFd::new(self.stderr.as_fd(), PollFlags::POLLIN));
                }
                let _ = poll(&mut fds, PollTimeout::try_from(wait_ms).unwrap_or(PollTimeout::MAX));
                let ready = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
                let mut it = fds.iter();
                let c = ready(it.next().expect("channel is always polled"));
                let o = out.open && it.next().is_some_and(ready);
                let e = err.open && it.next().is_some_and(ready);
                (c, o, e)
            };

            // Output first, so that it precedes the results that follow it in time.
            for (ready, is_out) in [(out_rev, true), (err_rev, false)] {
                if !ready {
                    continue;
                }
                let (f, s) = if is_out { (&mut self.stdout, &mut out) } else { (&mut self.stderr, &mut err) };
                if let Some(over) = pump(f, s, &mut total, cell.output_bytes, &mut buf, is_out, events)
                    && over
                    && stop.is_none()
                {
                    stop = Some(Stop::OutputLimit);
                }
            }

            let mut eof = false;
            if chan_rev {
                match read_some(&mut self.channel, &mut buf) {
                    Ok(Some(n)) => self.decoder.push(&buf[..n]),
                    Ok(None) | Err(_) => eof = true,
                }
            }
            let mut finished = None;
            loop {
                // A frame longer than the results left to keep is skipped unread.
                self.decoder.drop_above(Some(results.frame_allowance()));
                match self.decoder.next_decoded::<GuestFrame>() {
                    Ok(None) => break,
                    Ok(Some(Decoded::Dropped(_))) => {
                        results.dropped();
                        stop.get_or_insert(Stop::OutputLimit);
                    }
                    Ok(Some(Decoded::Frame(GuestFrame::Result { data, main }, len))) => {
                        if results.admit(len) {
                            let r = ResultBundle { data, is_main_result: main };
                            events(Event::Result { result: r.clone() });
                            outcome.results.push(r);
                        } else {
                            stop.get_or_insert(Stop::OutputLimit);
                        }
                    }
                    Ok(Some(Decoded::Frame(GuestFrame::Error { name, value, traceback }, _))) => {
                        // Delivered as an event after the outcome is classified, so the
                        // stream and the outcome agree (e.g. a timeout's error).
                        error = Some(ErrorInfo { name, value, traceback }.bounded());
                    }
                    Ok(Some(Decoded::Frame(GuestFrame::Stream { name, text }, _))) => {
                        let is_out = name != "stderr";
                        let s = if is_out { &mut out } else { &mut err };
                        if accept(s, text.as_bytes(), &mut total, cell.output_bytes) && stop.is_none() {
                            stop = Some(Stop::OutputLimit);
                        }
                        emit(s, is_out, false, events);
                    }
                    Ok(Some(Decoded::Frame(
                        GuestFrame::Done {
                            status,
                            exit_code,
                            signal,
                            execution_count,
                            cpu_ms,
                            peak_memory_bytes,
                            memory_error,
                            protocol_error,
                        },
                        _,
                    ))) => {
                        if let Some(p) = protocol_error {
                            finished = Some(End::Protocol(p));
                        } else {
                            finished = Some(End::Done {
                                status,
                                exit_code,
                                signal,
                                count: execution_count,
                                cpu_ms,
                                peak: peak_memory_bytes,
                                memory_error,
                            });
                        }
                        break;
                    }
                    Ok(Some(Decoded::Frame(GuestFrame::Exited { code, signal, oom_kill }, _))) => {
                        finished = Some(if self.sup.accepts_exited_frames() {
                            End::Exited(ExitInfo { code, signal, ..ExitInfo::default() }, oom_kill)
                        } else {
                            End::Protocol(
                                "an `exited` frame, which only an agent inside a virtual machine may send".into(),
                            )
                        });
                        break;
                    }
                    Ok(Some(Decoded::Frame(GuestFrame::Hello { .. }, _))) => {
                        finished = Some(End::Protocol("unexpected hello".into()));
                        break;
                    }
                    Err(e) => {
                        finished = Some(End::Protocol(e.0));
                        break;
                    }
                }
            }
            if let Some(f) = finished {
                if matches!(f, End::Protocol(_)) {
                    self.sup.kill();
                }
                break f;
            }
            if eof || (now.duration_since(started) >= TICK && self.sup_exited()) {
                // The driver is gone; collect how it ended.
                let exit = self.sup.wait(Duration::from_secs(2)).unwrap_or_else(|| {
                    self.sup.kill();
                    self.sup.wait(Duration::from_secs(2)).unwrap_or_default()
                });
                break End::Died(exit);
            }
        };

        // Whatever the guest wrote before it finished is in the pipes now: drain it.
        for is_out in [true, false] {
            let (f, s) = if is_out { (&mut self.stdout, &mut out) } else { (&mut self.stderr, &mut err) };
            for _ in 0..1024 {
                match pump(f, s, &mut total, cell.output_bytes, &mut buf, is_out, events) {
                    Some(_) if s.open => {}
                    _ => break,
                }
                if !s.open {
                    break;
                }
                let mut fds = [PollFd::new(f.as_fd(), PollFlags::POLLIN)];
                if poll(&mut fds, PollTimeout::ZERO).unwrap_or(0) == 0 {
                    break;
                }
            }
            emit(s, is_out, true, events);
        }
        if out.truncated || err.truncated || results.truncated {
            stop.get_or_insert(Stop::OutputLimit);
        }

        let exit = match &end {
            End::Died(e) | End::Exited(e, _) => *e,
            End::Cancelled | End::Protocol(_) => {
                self.alive = false;
                self.sup.wait(Duration::from_secs(2)).unwrap_or_default()
            }
            End::Done { .. } => ExitInfo::default(),
        };
        if matches!(end, End::Died(_) | End::Exited(..)) {
            self.alive = false;
        }
        outcome.stdout = String::from_utf8_lossy(&out.bytes).into_owned();
        outcome.stderr = String::from_utf8_lossy(&err.bytes).into_owned();
        outcome.stdout_truncated = out.truncated;
        outcome.stderr_truncated = err.truncated;
        outcome.results_truncated = results.truncated;
        outcome.error = error;
        let outcome = self.finish(outcome, end, stop, &exit, cpu_start, started, cell);
        if let Some(e) = &outcome.error {
            events(Event::Error { error: e.clone() });
        }
        Ok(outcome)
    }

    fn sup_exited(&mut self) -> bool {
        self.sup.try_wait().is_some()
    }

    #[allow(clippy::too_many_arguments)]
    fn finish(
        &mut self,
        mut o: Outcome,
        end: End,
        stop: Option<Stop>,
        exit: &ExitInfo,
        cpu_start: Option<u64>,
        started: Instant,
        cell: &Cell,
    ) -> Outcome {
        o.usage.wall_ms = started.elapsed().as_millis() as u64;
        let (guest_cpu, guest_peak) = match &end {
            End::Done { cpu_ms, peak, count, .. } => {
                o.execution_count = *count;
                (Some(*cpu_ms), Some(*peak))
            }
            _ => (exit.cpu_ms, exit.peak_memory_bytes),
        };
        o.usage.cpu_ms = match (cpu_start, self.sup.cpu_ms()) {
            (Some(a), Some(b)) => b.saturating_sub(a),
            _ => guest_cpu.unwrap_or(0),
        };
        o.usage.peak_memory_bytes = self.sup.peak_memory_bytes().or(guest_peak).unwrap_or(0);
        let (streams_over, results_over) = (o.stdout_truncated || o.stderr_truncated, o.results_truncated);

        let limit_reason = |s: Stop| match s {
            Stop::Timeout => (
                Status::Timeout,
                format!(
                    "execution exceeded the wall-clock limit of {} (limits.timeout_ms)",
                    format_duration_ms(cell.timeout_ms)
                ),
            ),
            Stop::CpuLimit => (
                Status::Timeout,
                format!("execution used more than {} of CPU time (limits.cpu_ms)", format_duration_ms(cell.cpu_ms)),
            ),
            Stop::OutputLimit => (Status::OutputLimit, output_limit_reason(cell, streams_over, results_over)),
        };

        let (status, reason) = match end {
            End::Cancelled => {
                (Status::Killed, Some("the execution was cancelled by the host (sandbox killed)".to_string()))
            }
            End::Protocol(p) => {
                self.alive = false;
                // The guest's own words (a `protocol_error`) are kept short.
                let p = cut_text(p, PROTOCOL_REASON_BYTES, false);
                (Status::Killed, Some(format!("the guest broke the airlock protocol ({p}); the sandbox was killed")))
            }
            End::Exited(e, true) => {
                o.exit_code = e.code;
                o.signal = e.signal;
                (
                    Status::MemoryLimit,
                    Some(format!(
                        "the sandbox ran out of memory: the guest kernel's OOM killer ended the interpreter under the {} limit (limits.memory_bytes)",
                        format_size(self.meta.memory_bytes)
                    )),
                )
            }
            End::Died(e) | End::Exited(e, false) => {
                o.exit_code = e.code;
                o.signal = e.signal;
                if let Some((s, r)) = self.sup.explain_death(&e) {
                    (s, Some(r))
                } else if let Some(s) = stop {
                    let (st, r) = limit_reason(s);
                    (st, Some(r))
                } else {
                    classify_exit(&e, self.meta.memory_bytes)
                }
            }
            End::Done { status, exit_code, signal, memory_error, .. } => {
                o.exit_code = exit_code.map(|c| c.clamp(i32::MIN as i64, i32::MAX as i64) as i32);
                if let Some(s) = stop {
                    let (st, r) = limit_reason(s);
                    if let Some(e) = o.error.as_mut() {
                        relabel_interrupt(e, st, &r);
                    }
                    (st, Some(r))
                } else if let Some(sig) = signal {
                    o.signal = Some(sig);
                    let e = ExitInfo { signal: Some(sig), ..ExitInfo::default() };
                    self.sup
                        .explain_death(&e)
                        .map(|(s, r)| (s, Some(r)))
                        .unwrap_or_else(|| classify_exit(&e, self.meta.memory_bytes))
                } else {
                    match status.as_str() {
                        "ok" => (Status::Ok, None),
                        _ => match o.error.as_ref() {
                            Some(e) if memory_error => match self.sup.memory_limit_reached() {
                                Some(false) => (
                                    Status::Error,
                                    Some(format!(
                                        "{}: {} (the sandbox's memory stayed below its {} limit, so this is the program's own error, not limits.memory_bytes)",
                                        e.name,
                                        first_line(&e.value),
                                        format_size(self.meta.memory_bytes)
                                    )),
                                ),
                                _ => (
                                    Status::MemoryLimit,
                                    Some(format!(
                                        "the program ran out of memory (MemoryError) under the {} limit (limits.memory_bytes)",
                                        format_size(self.meta.memory_bytes)
                                    )),
                                ),
                            },
                            Some(e) => (Status::Error, Some(format!("{}: {}", e.name, first_line(&e.value)))),
                            None => match o.exit_code {
                                Some(c) => (Status::Error, Some(format!("the program exited with status {c}"))),
                                None => (Status::Error, Some("the program failed".to_string())),
                            },
                        },
                    }
                }
            }
        };
        o.status = status;
        o.reason = reason;
        o
    }
}

impl<S: Supervisor> Drop for Guest<S> {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// The frame that installs `cell`'s guard policy in the guest, if it has one. A host
/// that drives the guest itself sends it before the cell's `exec` frame (the guest
/// ignores a policy identical to the one installed).
pub fn guard_frame(cell: &Cell) -> Option<HostFrame> {
    cell.guard.clone().map(|policy| HostFrame::Guard { policy })
}

fn first_line(s: &str) -> &str {
    let l = s.lines().next().unwrap_or("");
    if l.len() > 200 { &l[..l.floor_char_boundary(200)] } else { l }
}

/// Reads once from a stream into its capture. Returns `Some(over_limit)` if bytes were
/// read, `None` at EOF / nothing.
fn pump(
    f: &mut File,
    s: &mut Stream,
    total: &mut u64,
    cap: u64,
    buf: &mut [u8],
    is_out: bool,
    events: &mut EventSink<'_>,
) -> Option<bool> {
    match read_some(f, buf) {
        Ok(Some(0)) => None,
        Ok(Some(n)) => {
            let over = accept(s, &buf[..n], total, cap);
            emit(s, is_out, false, events);
            Some(over)
        }
        Ok(None) | Err(_) => {
            s.open = false;
            None
        }
    }
}

/// A signal's name, e.g. `SIGKILL`.
pub fn signal_name(sig: i32) -> String {
    nix::sys::signal::Signal::try_from(sig).map(|s| s.as_str().to_string()).unwrap_or_else(|_| format!("signal {sig}"))
}

fn describe_exit(exit: Option<&ExitInfo>) -> String {
    match exit {
        Some(ExitInfo { signal: Some(s), .. }) => format!("killed by {}", signal_name(*s)),
        Some(ExitInfo { code: Some(c), .. }) => format!("exit status {c}"),
        _ => "no exit status".to_string(),
    }
}

/// The status and reason for a guest that ended on its own or by a signal, when the
/// backend has nothing more precise to say.
pub fn classify_exit(e: &ExitInfo, memory_bytes: u64) -> (Status, Option<String>) {
    match (e.signal, e.code) {
        (Some(sig), _) if sig == libc::SIGXCPU => (
            Status::Timeout,
            Some("the program used up its CPU time limit (limits.cpu_ms) and was killed by SIGXCPU".into()),
        ),
        (Some(sig), _) if sig == libc::SIGSYS => {
            (Status::Killed, Some("the program was killed by SIGSYS: it made a system call the sandbox forbids".into()))
        }
        (Some(sig), _) if sig == libc::SIGXFSZ => (
            Status::Killed,
            Some("the program was killed by SIGXFSZ: it wrote a file larger than limits.file_bytes".into()),
        ),
        (Some(sig), _) => (Status::Killed, Some(format!("the interpreter was killed by {}", signal_name(sig)))),
        (None, Some(0)) => (Status::Ok, None),
        (None, Some(c)) => (
            Status::Error,
            Some(format!(
                "the interpreter exited with status {c} (os._exit, a crash, or memory exhaustion under {})",
                format_size(memory_bytes)
            )),
        ),
        (None, None) => (Status::Killed, Some("the interpreter disappeared without an exit status".into())),
    }
}
