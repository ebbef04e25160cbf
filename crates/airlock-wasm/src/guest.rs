//! One guest: a wasmtime [`Store`] holding a CPython instance, its WASI context and
//! the host functions that enforce airlock's limits.
//!
//! * **Boundary.** The WASI context has no sockets, no environment but the one given,
//!   and exactly three preopened folders, always in this order (the snapshot's
//!   wasi-libc has their numbers baked in): the standard library (read-only) at
//!   `/usr/local/lib`, matplotlib's data (read-only), and the sandbox's workspace
//!   (read-write) at `/workspace`. WASI preview 1 has no call that starts a
//!   process or opens a socket.
//! * **Wall clock and CPU.** The epoch ticker ([`crate::engine::TICK`]) makes every
//!   running guest call [`Watch::check`]: past a limit it first asks the guest to
//!   stop (the next door call answers `stop`, which raises `SandboxInterrupt` in the
//!   cell, so the session survives), and after [`GRACE`] it traps.
//! * **Instructions.** Fuel, set per turn.
//! * **Memory.** [`Limiter`] wraps [`StoreLimits`]: `memory.grow` past the limit
//!   fails (CPython raises `MemoryError`) and the refusal is recorded.
//! * **Output.** stdout and stderr (the WASI streams and the driver's `stream`
//!   frames) are counted against one cap per turn, and `result` frames against
//!   another (`limits.result_bytes`, their bytes as the guest wrote them); what passes
//!   a cap is dropped before it is parsed or queued, and the cell is stopped.
//! * **Files.** `path_open`, `fd_close`, `fd_write`, `fd_pwrite` and
//!   `fd_filestat_set_size` are wrapped to cap the open files and the bytes the guest
//!   may put in its workspace.
//! * **Sleeps.** `poll_oneoff` is airlock's own, so a `time.sleep` ends at the
//!   deadline instead of holding the thread.

use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Sender, channel};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use airlock_core::Error;

use airlock_guest::capture::ResultBudget;
use airlock_guest::protocol::GuestFrame;
use airlock_guest::workspace::Workspace;
use wasmtime::{
    Caller, Engine, Extern, InstancePre, Linker, Memory, Module, ResourceLimiter, Store, StoreLimits,
    StoreLimitsBuilder, TypedFunc, UpdateDeadline,
};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{FsPerms, HostMonotonicClock, WasiCtxBuilder};

use crate::engine::{GUEST_THREAD_STACK_BYTES, TICK, Ticking};

/// Where the standard library's folder appears in the guest.
pub const GUEST_LIB: &str = "/usr/local/lib";
/// Where matplotlib's data appears in the guest (beside its module in the zip).
pub const GUEST_MPL_DATA: &str = "/usr/local/lib/python315.zip/matplotlib/mpl-data";
/// Where the workspace appears in the guest (also its working folder and HOME).
pub const GUEST_WORKSPACE: &str = "/workspace";
/// The guest's temporary folder (inside the workspace).
pub const GUEST_TMP: &str = "/workspace/.tmp";
/// matplotlib's configuration and cache folder in the guest.
pub const GUEST_MPLCONFIG: &str = "/workspace/.tmp/matplotlib";

/// How long a guest asked to stop may run on before it is trapped (the same grace
/// the socket transport gives between SIGINT and SIGKILL).
pub const GRACE: Duration = airlock_guest::host::INTERRUPT_GRACE;
/// The signal number CPython's `PyErr_SetInterruptEx` is asked to raise.
const SIGINT: i32 = 2;

/// The guest's monotonic clock starts here (ns), above anything the snapshot's
/// interpreter may have read while it was built, so the clock never goes backwards.
const MONOTONIC_BASE_NS: u64 = 1 << 50;

const WASI: &str = "wasi_snapshot_preview1";
const ERRNO_SUCCESS: i32 = 0;
const ERRNO_FAULT: i32 = 21;
const ERRNO_FBIG: i32 = 22;
const ERRNO_INVAL: i32 = 28;
const ERRNO_MFILE: i32 = 33;
const ERRNO_NOMEM: i32 = 48;
/// `host::call` results the guest's `_door` module understands.
const DOOR_FAULT: i32 = -2;

/// Why the host stopped (or is stopping) a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The wall-clock limit passed.
    Timeout,
    /// The CPU-time limit passed.
    Cpu,
    /// The output limit passed.
    Output,
    /// The host cancelled the turn.
    Cancel,
}

/// The error an epoch callback returns to trap a guest.
#[derive(Debug)]
pub struct HostStop(pub Stop);

impl std::fmt::Display for HostStop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "stopped by airlock ({:?})", self.0)
    }
}

impl std::error::Error for HostStop {}

/// The error the door traps a guest with when it breaks the protocol (a malformed
/// frame, or one only the host side may send): the cell ends at once, `killed`.
#[derive(Debug)]
pub struct ProtocolViolation(pub String);

impl std::fmt::Display for ProtocolViolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "guest protocol violation: {}", self.0)
    }
}

impl std::error::Error for ProtocolViolation {}

/// Something the guest produced during a turn, delivered to the calling thread.
#[derive(Debug)]
pub enum Msg {
    /// Output bytes (already within the cap).
    Output {
        /// stdout (true) or stderr.
        is_out: bool,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// A frame from the driver.
    Frame(GuestFrame),
    /// A frame that did not parse.
    Malformed(String),
}

/// The output side of a turn, shared by the WASI streams and the door.
#[derive(Debug)]
pub struct CellIo {
    tx: Option<Sender<Msg>>,
    remaining: u64,
    /// The turn's budget for `result` frames.
    pub results: ResultBudget,
    /// True once output or a result was dropped at its cap.
    pub over: bool,
    /// Which streams lost bytes: `[stdout, stderr]`.
    pub truncated: [bool; 2],
    /// Output written outside any turn (kept for error messages, 64 KiB at most).
    pub stray: Vec<u8>,
}

impl Default for CellIo {
    fn default() -> Self {
        CellIo {
            tx: None,
            remaining: 0,
            results: ResultBudget::new(0),
            over: false,
            truncated: [false; 2],
            stray: Vec::new(),
        }
    }
}

impl CellIo {
    fn push(&mut self, is_out: bool, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        match &self.tx {
            Some(tx) => {
                let take = bytes.len().min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
                if take > 0 {
                    let _ = tx.send(Msg::Output { is_out, bytes: bytes[..take].to_vec() });
                    self.remaining -= take as u64;
                }
                if take < bytes.len() {
                    self.over = true;
                    self.truncated[usize::from(!is_out)] = true;
                }
            }
            None => {
                let room = (64usize << 10).saturating_sub(self.stray.len());
                self.stray.extend_from_slice(&bytes[..bytes.len().min(room)]);
            }
        }
    }

    fn send(&self, msg: Msg) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(msg);
        }
    }
}

fn lock(io: &Mutex<CellIo>) -> MutexGuard<'_, CellIo> {
    io.lock().unwrap_or_else(|p| p.into_inner())
}

/// The guest's stdout or stderr.
#[derive(Clone)]
struct GuestOutput {
    io: Arc<Mutex<CellIo>>,
    is_out: bool,
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestOutput {
    async fn ready(&mut self) {}
}

impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        lock(&self.io).push(self.is_out, &bytes);
        Ok(())
    }
    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }
    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 << 10)
    }
}

impl tokio::io::AsyncWrite for GuestOutput {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        lock(&self.io).push(self.is_out, buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The guest's monotonic clock: [`MONOTONIC_BASE_NS`] plus the time since the store
/// was made.
#[derive(Clone, Copy)]
struct GuestClock {
    origin: Instant,
}

impl GuestClock {
    fn now_ns(&self) -> u64 {
        MONOTONIC_BASE_NS + u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX / 2)
    }
}

impl HostMonotonicClock for GuestClock {
    fn resolution(&self) -> u64 {
        1
    }
    fn now(&self) -> u64 {
        self.now_ns()
    }
}

/// The memory limit: [`StoreLimits`], plus a record of refused growth.
pub struct Limiter {
    limits: StoreLimits,
    /// The size a refused `memory.grow` asked for, if one was refused.
    pub denied_bytes: Option<u64>,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        let ok = self.limits.memory_growing(current, desired, maximum)?;
        if !ok {
            self.denied_bytes = Some(desired as u64);
        }
        Ok(ok)
    }
    fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }
    fn instances(&self) -> usize {
        self.limits.instances()
    }
    fn tables(&self) -> usize {
        self.limits.tables()
    }
    fn memories(&self) -> usize {
        self.limits.memories()
    }
}

/// The CPU time of the calling thread, in nanoseconds.
pub fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec into the valid, aligned local `ts`.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if r != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The limits of one turn and where it stands against them. Read by the epoch
/// callback, the door and `poll_oneoff`, all on the guest's thread.
#[derive(Debug, Default)]
pub struct Watch {
    deadline: Option<Instant>,
    cpu_budget_ns: Option<u64>,
    /// The stop asked of the guest, and when.
    pub stop: Option<(Stop, Instant)>,
    /// The stop the guest was trapped for.
    pub trapped: Option<Stop>,
    cancelled: Arc<AtomicBool>,
}

impl Watch {
    /// Updates the stop state. `Ok(true)` when a stop was just decided (the caller
    /// interrupts the guest); `Err` when the guest must be trapped now.
    fn check(&mut self, io: &Mutex<CellIo>) -> Result<bool, HostStop> {
        if self.cancelled.load(Ordering::SeqCst) {
            self.trapped = Some(Stop::Cancel);
            return Err(HostStop(Stop::Cancel));
        }
        let now = Instant::now();
        let mut new = false;
        if self.stop.is_none() {
            let stop = if self.deadline.is_some_and(|d| now >= d) {
                Some(Stop::Timeout)
            } else if self.cpu_budget_ns.is_some_and(|b| thread_cpu_ns() >= b) {
                Some(Stop::Cpu)
            } else if lock(io).over {
                Some(Stop::Output)
            } else {
                None
            };
            if let Some(s) = stop {
                self.stop = Some((s, now));
                new = true;
            }
        }
        if let Some((s, at)) = self.stop
            && now.duration_since(at) >= GRACE
        {
            self.trapped = Some(s);
            return Err(HostStop(s));
        }
        Ok(new)
    }
}

/// Checks the turn's limits from a host function; interrupts the interpreter when a
/// stop was just decided. True while the guest is being stopped (or is cancelled).
fn stopping(caller: &mut Caller<'_, GuestState>) -> wasmtime::Result<bool> {
    let st = caller.data_mut();
    let io = st.io.clone();
    match st.watch.check(&io) {
        Err(_) => Ok(true),
        Ok(new) => {
            if new {
                interrupt(&mut *caller)?;
            }
            Ok(caller.data().watch.stop.is_some())
        }
    }
}

/// Asks CPython to raise KeyboardInterrupt at its next check (what SIGINT does to a
/// native interpreter): the driver turns it into `SandboxInterrupt`, and the cell ends
/// with the session intact.
fn interrupt(mut ctx: impl wasmtime::AsContextMut<Data = GuestState>) -> wasmtime::Result<()> {
    let mut ctx = ctx.as_context_mut();
    if let Some(f) = ctx.data().interrupt.clone() {
        // A deadline far enough away that the call cannot meet the epoch check
        // (whose callback is not re-entrant) on its way.
        ctx.set_epoch_deadline(1000);
        f.call(&mut ctx, SIGINT)?;
        ctx.set_epoch_deadline(1);
    }
    Ok(())
}

/// The files the guest holds open and the bytes it may still write.
pub struct FileGuard {
    open: HashSet<u32>,
    max_open: usize,
    cap_bytes: u64,
    measured_bytes: u64,
    written_since_bytes: u64,
    workspace: Option<Workspace>,
}

impl FileGuard {
    /// Whether `extra` more bytes fit in the workspace. Counts bytes written since
    /// the last measurement; when that says no, measures the workspace again.
    fn admit(&mut self, extra: u64) -> bool {
        if self.measured_bytes + self.written_since_bytes + extra <= self.cap_bytes {
            return true;
        }
        if let Some(ws) = &self.workspace {
            self.measured_bytes = ws.usage();
            self.written_since_bytes = 0;
        }
        self.measured_bytes + self.written_since_bytes + extra <= self.cap_bytes
    }
}

/// WASI `path_open(dirfd, dirflags, path, path_len, oflags, rights_base,
/// rights_inheriting, fdflags, opened_fd_out) -> errno`.
type PathOpen = TypedFunc<(i32, i32, i32, i32, i32, i64, i64, i32, i32), i32>;

/// The WASI functions the wrappers call through to.
#[derive(Clone)]
struct Originals {
    path_open: PathOpen,
    fd_close: TypedFunc<i32, i32>,
    fd_write: TypedFunc<(i32, i32, i32, i32), i32>,
    fd_pwrite: TypedFunc<(i32, i32, i32, i64, i32), i32>,
    fd_filestat_set_size: TypedFunc<(i32, i64), i32>,
}

/// The exports the host calls.
#[derive(Clone)]
pub struct Exports {
    /// The linear memory.
    pub memory: Memory,
    /// `host_alloc(len) -> ptr` (the guest frees it).
    pub host_alloc: TypedFunc<i32, i32>,
    /// `turn(ptr, len) -> status`: runs Python source in the interpreter.
    pub turn: TypedFunc<(i32, i32), i32>,
}

/// Everything a store holds besides the instance.
pub struct GuestState {
    wasi: WasiP1Ctx,
    /// The memory limit.
    pub limiter: Limiter,
    /// The output side of the current turn.
    pub io: Arc<Mutex<CellIo>>,
    /// Frames waiting for the guest's next empty door call.
    pub inbox: VecDeque<Vec<u8>>,
    /// Limits of the current turn.
    pub watch: Watch,
    files: FileGuard,
    clock: GuestClock,
    originals: Option<Originals>,
    exports: Option<Exports>,
    interrupt: Option<TypedFunc<i32, i32>>,
}

/// How to make a guest.
#[derive(Debug, Clone)]
pub struct GuestConfig {
    /// The folder holding the stdlib zip.
    pub lib_dir: PathBuf,
    /// matplotlib's data folder.
    pub mpl_data: PathBuf,
    /// The workspace folder (read-write).
    pub workspace: PathBuf,
    /// The guest's whole environment.
    pub env: Vec<(String, String)>,
    /// Linear memory limit.
    pub memory_bytes: u64,
    /// Files the guest may hold open at once (beyond stdio and the preopens).
    pub open_files: u32,
    /// Bytes the workspace may hold.
    pub file_bytes: u64,
}

/// The host functions, defined once per engine.
pub struct Linkers {
    base: Linker<GuestState>,
    main: Linker<GuestState>,
    trampoline: Module,
}

/// The WASI functions airlock wraps, in the trampoline's import order.
const WRAPPED: [&str; 5] = ["path_open", "fd_close", "fd_write", "fd_pwrite", "fd_filestat_set_size"];

/// A tiny module through which the wrappers call wasmtime's own WASI functions.
/// Those functions read the calling instance's `memory` export, and a host function
/// calling them directly has no calling instance: the trampoline imports the guest's
/// memory, exports it as `memory`, and forwards each call.
const TRAMPOLINE_WAT: &str = r#"(module
  (import "env" "memory" (memory 0))
  (import "wasi" "path_open" (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi" "fd_close" (func $fd_close (param i32) (result i32)))
  (import "wasi" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi" "fd_pwrite" (func $fd_pwrite (param i32 i32 i32 i64 i32) (result i32)))
  (import "wasi" "fd_filestat_set_size" (func $fd_filestat_set_size (param i32 i64) (result i32)))
  (export "memory" (memory 0))
  (func (export "path_open") (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)
    (call $path_open (local.get 0) (local.get 1) (local.get 2) (local.get 3) (local.get 4)
                     (local.get 5) (local.get 6) (local.get 7) (local.get 8)))
  (func (export "fd_close") (param i32) (result i32) (call $fd_close (local.get 0)))
  (func (export "fd_write") (param i32 i32 i32 i32) (result i32)
    (call $fd_write (local.get 0) (local.get 1) (local.get 2) (local.get 3)))
  (func (export "fd_pwrite") (param i32 i32 i32 i64 i32) (result i32)
    (call $fd_pwrite (local.get 0) (local.get 1) (local.get 2) (local.get 3) (local.get 4)))
  (func (export "fd_filestat_set_size") (param i32 i64) (result i32)
    (call $fd_filestat_set_size (local.get 0) (local.get 1))))"#;

fn memory_of(caller: &mut Caller<'_, GuestState>) -> Option<Memory> {
    match &caller.data().exports {
        Some(e) => Some(e.memory),
        None => caller.get_export("memory").and_then(Extern::into_memory),
    }
}

/// Before a write to `fd` (`fd_write`, `fd_pwrite`): whether the file counts against
/// the file-size cap and, if so, that the iovecs' total fits it. `Err`: the errno to
/// refuse the write with.
fn admit_write(caller: &mut Caller<'_, GuestState>, fd: i32, iovs: i32, n: i32) -> Result<bool, i32> {
    if !caller.data().files.open.contains(&(fd as u32)) {
        return Ok(false);
    }
    let mem = memory_of(caller).ok_or(ERRNO_FAULT)?;
    let want = iovec_total(mem.data(&*caller), iovs, n).ok_or(ERRNO_FAULT)?;
    if !caller.data_mut().files.admit(want) {
        return Err(ERRNO_FBIG);
    }
    Ok(true)
}

/// After a counted write succeeded: adds the bytes it wrote (read from `nwritten`).
fn count_written(caller: &mut Caller<'_, GuestState>, nwritten: i32) {
    let done = memory_of(caller).and_then(|m| read_u32(m.data(&*caller), nwritten as u32 as usize)).unwrap_or(0);
    caller.data_mut().files.written_since_bytes += u64::from(done);
}

fn read_u32(mem: &[u8], at: usize) -> Option<u32> {
    let b = mem.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn read_u64(mem: &[u8], at: usize) -> Option<u64> {
    let b = mem.get(at..at.checked_add(8)?)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    Some(u64::from_le_bytes(a))
}

/// The total length of a WASI iovec array, if it lies in memory.
fn iovec_total(mem: &[u8], iovs: i32, n: i32) -> Option<u64> {
    let (iovs, n) = (iovs as u32 as usize, n as u32 as usize);
    let mut total = 0u64;
    for i in 0..n.min(1024) {
        total += u64::from(read_u32(mem, iovs.checked_add(i * 8 + 4)?)?);
    }
    Some(total)
}

/// `host::call(ptr, len, out_ptr_ptr, out_len_ptr)`: the driver's channel. An empty
/// request takes the next frame from the inbox; any other request is a frame from
/// the guest, answered `stop` when the host wants the running cell stopped.
fn door(mut caller: Caller<'_, GuestState>, ptr: i32, len: i32, out_ptr: i32, out_len: i32) -> wasmtime::Result<i32> {
    let Some(memory) = memory_of(&mut caller) else { return Ok(DOOR_FAULT) };
    let (ptr, len) = (ptr as u32 as usize, len as u32 as usize);
    let (out_ptr, out_len) = (out_ptr as u32 as usize, out_len as u32 as usize);
    let size = memory.data_size(&caller);
    if ptr.checked_add(len).is_none_or(|e| e > size)
        || out_ptr.checked_add(4).is_none_or(|e| e > size)
        || out_len.checked_add(4).is_none_or(|e| e > size)
    {
        return Ok(DOOR_FAULT);
    }
    let response: Vec<u8> = if len == 0 {
        caller.data_mut().inbox.pop_front().unwrap_or_else(|| br#"{"type":"shutdown"}"#.to_vec())
    } else {
        let io = caller.data().io.clone();
        if len > lock(&io).results.frame_allowance() {
            // Longer than any frame but a result that fits: dropped unparsed.
            let mut io = lock(&io);
            io.results.dropped();
            io.over = true;
        } else {
            let parsed = serde_json::from_slice::<GuestFrame>(&memory.data(&caller)[ptr..ptr + len]);
            let mut io = lock(&io);
            match parsed {
                Ok(GuestFrame::Stream { name, text }) => io.push(name != "stderr", text.as_bytes()),
                Ok(frame @ GuestFrame::Result { .. }) => {
                    if io.results.admit(len) {
                        io.send(Msg::Frame(frame));
                    } else {
                        io.over = true;
                    }
                }
                Ok(GuestFrame::Exited { .. }) => {
                    // Only an agent supervising an interpreter from outside may say it
                    // ended; from the guest itself it is a forgery.
                    let why = "an `exited` frame, which only an agent inside a virtual machine may send";
                    io.send(Msg::Malformed(why.into()));
                    return Err(wasmtime::Error::new(ProtocolViolation(why.into())));
                }
                Ok(frame) => io.send(Msg::Frame(frame)),
                Err(e) => {
                    io.send(Msg::Malformed(e.to_string()));
                    return Err(wasmtime::Error::new(ProtocolViolation(e.to_string())));
                }
            }
        }
        if stopping(&mut caller)? { b"stop".to_vec() } else { b"ok".to_vec() }
    };
    let Some(exports) = caller.data().exports.clone() else { return Ok(DOOR_FAULT) };
    let rlen = i32::try_from(response.len()).map_err(|_| wasmtime::Error::msg("door response too large"))?;
    let p = exports.host_alloc.call(&mut caller, rlen)? as u32 as usize;
    if p == 0 || p.checked_add(response.len()).is_none_or(|e| e > memory.data_size(&caller)) {
        return Ok(DOOR_FAULT);
    }
    memory.write(&mut caller, p, &response)?;
    memory.write(&mut caller, out_ptr, &(p as u32).to_le_bytes())?;
    memory.write(&mut caller, out_len, &(response.len() as u32).to_le_bytes())?;
    Ok(0)
}

/// airlock's `poll_oneoff`: descriptors are always ready; clocks are waited for in
/// slices, and the wait ends early when the turn is being stopped.
fn poll_oneoff(
    mut caller: Caller<'_, GuestState>,
    in_ptr: i32,
    out_ptr: i32,
    n: i32,
    nevents_ptr: i32,
) -> wasmtime::Result<i32> {
    const SUB: usize = 48;
    const EVENT: usize = 32;
    let Some(memory) = memory_of(&mut caller) else { return Ok(ERRNO_FAULT) };
    let (in_ptr, out_ptr, n, nev) =
        (in_ptr as u32 as usize, out_ptr as u32 as usize, n as u32 as usize, nevents_ptr as u32 as usize);
    if n == 0 {
        return Ok(ERRNO_INVAL);
    }
    if n > 4096 {
        return Ok(ERRNO_NOMEM);
    }
    let size = memory.data_size(&caller);
    if in_ptr.checked_add(SUB * n).is_none_or(|e| e > size)
        || out_ptr.checked_add(EVENT * n).is_none_or(|e| e > size)
        || nev.checked_add(4).is_none_or(|e| e > size)
    {
        return Ok(ERRNO_FAULT);
    }
    let clock = caller.data().clock;
    let subs = memory.data(&caller)[in_ptr..in_ptr + SUB * n].to_vec();
    // (userdata, type, nbytes)
    let mut ready: Vec<(u64, u8)> = Vec::new();
    let mut clocks: Vec<(u64, u64)> = Vec::new(); // (wait ns, userdata)
    for s in subs.chunks_exact(SUB) {
        let userdata = read_u64(s, 0).unwrap_or(0);
        match s[8] {
            0 => {
                let id = read_u32(s, 16).unwrap_or(u32::MAX);
                let timeout = read_u64(s, 24).unwrap_or(0);
                let abstime = read_u32(s, 40).unwrap_or(0) & 1 == 1;
                let now = match id {
                    0 => u64::try_from(
                        SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_nanos(),
                    )
                    .unwrap_or(u64::MAX),
                    1 => clock.now_ns(),
                    _ => return Ok(ERRNO_INVAL),
                };
                let wait = if abstime { timeout.saturating_sub(now) } else { timeout };
                clocks.push((wait, userdata));
            }
            t @ (1 | 2) => ready.push((userdata, t)),
            _ => return Ok(ERRNO_INVAL),
        }
    }
    let mut events: Vec<(u64, u8)> = Vec::new();
    if !ready.is_empty() {
        events = ready;
    } else {
        let wait_ns = clocks.iter().map(|c| c.0).min().unwrap_or(0);
        let until = Instant::now() + Duration::from_nanos(wait_ns);
        loop {
            if stopping(&mut caller)? {
                break;
            }
            let now = Instant::now();
            if now >= until {
                break;
            }
            std::thread::sleep((until - now).min(TICK));
        }
        events.extend(clocks.iter().filter(|c| c.0 <= wait_ns).map(|c| (c.1, 0u8)));
    }
    let mut out = Vec::with_capacity(events.len() * EVENT);
    for (userdata, kind) in &events {
        let mut e = [0u8; EVENT];
        e[0..8].copy_from_slice(&userdata.to_le_bytes());
        e[10] = *kind;
        out.extend_from_slice(&e);
    }
    memory.write(&mut caller, out_ptr, &out)?;
    memory.write(&mut caller, nev, &(events.len() as u32).to_le_bytes())?;
    Ok(ERRNO_SUCCESS)
}

fn originals(caller: &Caller<'_, GuestState>) -> wasmtime::Result<Originals> {
    caller.data().originals.clone().ok_or_else(|| wasmtime::Error::msg("airlock: WASI wrappers used before set-up"))
}

impl Linkers {
    /// WASI preview 1, airlock's wrappers and the door, for `engine`.
    pub fn new(engine: &Engine) -> Result<Linkers, Error> {
        let err = |e: wasmtime::Error| Error::host(format!("defining the guest's host functions: {e:#}"));
        let mut base: Linker<GuestState> = Linker::new(engine);
        wasmtime_wasi::p1::add_to_linker_sync(&mut base, |s: &mut GuestState| &mut s.wasi).map_err(err)?;
        let mut main = base.clone();
        main.allow_shadowing(true);
        main.func_wrap("host", "call", door).map_err(err)?;
        main.func_wrap(WASI, "poll_oneoff", poll_oneoff).map_err(err)?;
        main.func_wrap(
            WASI,
            "path_open",
            |mut caller: Caller<'_, GuestState>,
             fd: i32,
             dirflags: i32,
             path: i32,
             path_len: i32,
             oflags: i32,
             base_rights: i64,
             inheriting: i64,
             fdflags: i32,
             opened: i32|
             -> wasmtime::Result<i32> {
                let f = originals(&caller)?;
                let st = caller.data();
                if st.files.open.len() >= st.files.max_open {
                    return Ok(ERRNO_MFILE);
                }
                let r = f.path_open.call(
                    &mut caller,
                    (fd, dirflags, path, path_len, oflags, base_rights, inheriting, fdflags, opened),
                )?;
                if r == ERRNO_SUCCESS
                    && let Some(mem) = memory_of(&mut caller)
                    && let Some(new_fd) = read_u32(mem.data(&caller), opened as u32 as usize)
                {
                    caller.data_mut().files.open.insert(new_fd);
                }
                Ok(r)
            },
        )
        .map_err(err)?;
        main.func_wrap(WASI, "fd_close", |mut caller: Caller<'_, GuestState>, fd: i32| -> wasmtime::Result<i32> {
            let f = originals(&caller)?;
            let r = f.fd_close.call(&mut caller, fd)?;
            if r == ERRNO_SUCCESS {
                caller.data_mut().files.open.remove(&(fd as u32));
            }
            Ok(r)
        })
        .map_err(err)?;
        main.func_wrap(
            WASI,
            "fd_write",
            |mut caller: Caller<'_, GuestState>, fd: i32, iovs: i32, n: i32, nwritten: i32| -> wasmtime::Result<i32> {
                let f = originals(&caller)?;
                let counted = match admit_write(&mut caller, fd, iovs, n) {
                    Ok(c) => c,
                    Err(errno) => return Ok(errno),
                };
                let r = f.fd_write.call(&mut caller, (fd, iovs, n, nwritten))?;
                if counted && r == ERRNO_SUCCESS {
                    count_written(&mut caller, nwritten);
                }
                Ok(r)
            },
        )
        .map_err(err)?;
        main.func_wrap(
            WASI,
            "fd_pwrite",
            |mut caller: Caller<'_, GuestState>,
             fd: i32,
             iovs: i32,
             n: i32,
             offset: i64,
             nwritten: i32|
             -> wasmtime::Result<i32> {
                let f = originals(&caller)?;
                let counted = match admit_write(&mut caller, fd, iovs, n) {
                    Ok(c) => c,
                    Err(errno) => return Ok(errno),
                };
                let r = f.fd_pwrite.call(&mut caller, (fd, iovs, n, offset, nwritten))?;
                if counted && r == ERRNO_SUCCESS {
                    count_written(&mut caller, nwritten);
                }
                Ok(r)
            },
        )
        .map_err(err)?;
        main.func_wrap(
            WASI,
            "fd_filestat_set_size",
            |mut caller: Caller<'_, GuestState>, fd: i32, size: i64| -> wasmtime::Result<i32> {
                let f = originals(&caller)?;
                let size = size.max(0) as u64;
                if caller.data().files.open.contains(&(fd as u32)) {
                    if !caller.data_mut().files.admit(size) {
                        return Ok(ERRNO_FBIG);
                    }
                    caller.data_mut().files.written_since_bytes += size;
                }
                f.fd_filestat_set_size.call(&mut caller, (fd, size as i64))
            },
        )
        .map_err(err)?;
        let trampoline = Module::new(engine, TRAMPOLINE_WAT).map_err(err)?;
        Ok(Linkers { base, main, trampoline })
    }

    /// Instantiates the trampoline over the guest's `memory` and returns its exports.
    fn originals(&self, store: &mut Store<GuestState>, memory: Memory) -> Result<Originals, Error> {
        let err = |e: wasmtime::Error| Error::host(format!("setting up the guest's WASI wrappers: {e:#}"));
        let mut imports = vec![Extern::Memory(memory)];
        for name in WRAPPED {
            let f = self.base.get(&mut *store, WASI, name).map_err(err)?;
            imports.push(f);
        }
        let t = wasmtime::Instance::new(&mut *store, &self.trampoline, &imports).map_err(err)?;
        Ok(Originals {
            path_open: t.get_typed_func(&mut *store, "path_open").map_err(err)?,
            fd_close: t.get_typed_func(&mut *store, "fd_close").map_err(err)?,
            fd_write: t.get_typed_func(&mut *store, "fd_write").map_err(err)?,
            fd_pwrite: t.get_typed_func(&mut *store, "fd_pwrite").map_err(err)?,
            fd_filestat_set_size: t.get_typed_func(&mut *store, "fd_filestat_set_size").map_err(err)?,
        })
    }

    /// Pre-instantiates `module` with these host functions.
    pub fn pre(&self, module: &Module) -> Result<InstancePre<GuestState>, Error> {
        self.main
            .instantiate_pre(module)
            .map_err(|e| Error::host(format!("the guest module does not link with airlock's host functions: {e:#}")))
    }
}

/// A live guest: its store and the exports the host calls.
pub struct Guest {
    /// The store (the guest's whole state).
    pub store: Store<GuestState>,
    /// Its exports.
    pub exports: Exports,
    /// The instance.
    pub instance: wasmtime::Instance,
    fuel: bool,
}

/// How a turn ended.
#[derive(Debug)]
pub enum TurnEnd {
    /// `turn` returned this status.
    Returned(i32),
    /// The guest trapped or exited.
    Trapped(wasmtime::Error),
}

/// Limits of one turn.
#[derive(Debug, Clone, Copy)]
pub struct TurnLimits {
    /// Wall-clock limit.
    pub timeout: Option<Duration>,
    /// CPU-time limit.
    pub cpu: Option<Duration>,
    /// Output limit (stdout + stderr).
    pub output_bytes: u64,
    /// Limit on `result` frames together.
    pub result_bytes: u64,
    /// Instruction limit (fuel), when fuel is on.
    pub fuel: Option<u64>,
}

impl TurnLimits {
    /// No limit but the output cap (set-up turns).
    pub fn setup(output_bytes: u64) -> Self {
        TurnLimits { timeout: None, cpu: None, output_bytes, result_bytes: output_bytes, fuel: None }
    }
}

/// What happened in a turn.
#[derive(Debug)]
pub struct TurnResult {
    /// How it ended.
    pub end: TurnEnd,
    /// CPU time of the guest's thread.
    pub cpu_ns: u64,
    /// Fuel consumed, when fuel is on.
    pub fuel_used: Option<u64>,
    /// The stop asked of the guest, if any.
    pub stop: Option<Stop>,
    /// The stop it was trapped for, if any.
    pub trapped: Option<Stop>,
    /// A refused `memory.grow`, if any (bytes asked).
    pub memory_denied_bytes: Option<u64>,
    /// Output dropped at the cap: `[stdout, stderr]`.
    pub truncated: [bool; 2],
    /// True when results were dropped at their cap.
    pub results_truncated: bool,
    /// Linear memory size after the turn.
    pub memory_bytes: u64,
}

impl Guest {
    /// Counts `bytes` the host wrote into the workspace (a file copied in) like the
    /// guest's own writes, so that the guest's share of `file_bytes` shrinks by them.
    pub fn count_host_write(&mut self, bytes: u64) {
        self.store.data_mut().files.written_since_bytes += bytes;
    }

    /// Makes a store with the guest's WASI context and limits, and instantiates.
    pub fn new(
        engine: &Engine,
        linkers: &Linkers,
        pre: &InstancePre<GuestState>,
        cfg: &GuestConfig,
        fuel: bool,
        cancelled: Arc<AtomicBool>,
    ) -> Result<Guest, Error> {
        let io = Arc::new(Mutex::new(CellIo::default()));
        let clock = GuestClock { origin: Instant::now() };
        let mut b = WasiCtxBuilder::new();
        b.allow_blocking_current_thread(true)
            .stdout(GuestOutput { io: io.clone(), is_out: true })
            .stderr(GuestOutput { io: io.clone(), is_out: false })
            .envs(&cfg.env)
            .args(&["python"])
            .monotonic_clock(clock)
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        let preopen = |b: &mut WasiCtxBuilder, host: &PathBuf, guest: &str, perms: FsPerms| -> Result<(), Error> {
            b.preopened_dir(host, guest, perms)
                .map(|_| ())
                .map_err(|e| Error::host(format!("preopening {} at {guest}: {e:#}", host.display())))
        };
        preopen(&mut b, &cfg.lib_dir, GUEST_LIB, FsPerms::ReadOnly)?;
        preopen(&mut b, &cfg.mpl_data, GUEST_MPL_DATA, FsPerms::ReadOnly)?;
        preopen(&mut b, &cfg.workspace, GUEST_WORKSPACE, FsPerms::ReadWrite)?;
        let limits = StoreLimitsBuilder::new()
            .memory_size(usize::try_from(cfg.memory_bytes).unwrap_or(usize::MAX))
            .instances(3)
            .memories(2)
            .tables(16)
            .trap_on_grow_failure(false)
            .build();
        let state = GuestState {
            wasi: b.build_p1(),
            limiter: Limiter { limits, denied_bytes: None },
            io,
            inbox: VecDeque::new(),
            watch: Watch { cancelled, ..Watch::default() },
            files: FileGuard {
                open: HashSet::new(),
                max_open: cfg.open_files as usize,
                cap_bytes: cfg.file_bytes,
                measured_bytes: 0,
                written_since_bytes: 0,
                workspace: Workspace::open(&cfg.workspace).ok(),
            },
            clock,
            originals: None,
            exports: None,
            interrupt: None,
        };
        let mut store = Store::new(engine, state);
        store.limiter(|s| &mut s.limiter);
        store.epoch_deadline_callback(|mut ctx| {
            let st = ctx.data_mut();
            let io = st.io.clone();
            match st.watch.check(&io) {
                Ok(new) => {
                    if new {
                        interrupt(&mut ctx)?;
                    }
                    Ok(UpdateDeadline::Continue(1))
                }
                Err(stop) => Err(wasmtime::Error::new(stop)),
            }
        });
        store.set_epoch_deadline(1);
        if fuel {
            store.set_fuel(u64::MAX).map_err(|e| Error::host(format!("setting fuel: {e:#}")))?;
        }
        let instance = pre.instantiate(&mut store).map_err(|e| {
            if store.data().limiter.denied_bytes.is_some() {
                Error::invalid(format!(
                    "limits.memory_bytes = {} is too small for the wasm guest, whose interpreter starts with {} of memory; raise it",
                    airlock_core::units::format_size(cfg.memory_bytes),
                    airlock_core::units::format_size(min_memory_bytes(pre.module()))
                ))
            } else {
                Error::host(format!("instantiating the guest: {e:#}"))
            }
        })?;
        let bad = |what: &str, e: wasmtime::Error| {
            Error::host(format!("the guest module's {what} export is unusable: {e:#}"))
        };
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or_else(|| Error::host("the guest module exports no memory"))?;
        let host_alloc = instance.get_typed_func(&mut store, "host_alloc").map_err(|e| bad("host_alloc", e))?;
        let turn = instance.get_typed_func(&mut store, "turn").map_err(|e| bad("turn", e))?;
        let exports = Exports { memory, host_alloc, turn };
        store.data_mut().exports = Some(exports.clone());
        store.data_mut().interrupt =
            instance.get_typed_func::<i32, i32>(&mut store, crate::snapshot::INTERRUPT_EXPORT).ok();
        let originals = linkers.originals(&mut store, memory)?;
        store.data_mut().originals = Some(originals);
        Ok(Guest { store, exports, instance, fuel })
    }

    /// Calls an export that takes and returns nothing (set-up only), on a guest thread.
    pub fn call_init(&mut self, name: &str) -> Result<bool, Error> {
        let Ok(f) = self.instance.get_typed_func::<(), ()>(&mut self.store, name) else { return Ok(false) };
        let store = &mut self.store;
        let r = std::thread::scope(|s| {
            std::thread::Builder::new()
                .name("airlock-wasm-guest".into())
                .stack_size(GUEST_THREAD_STACK_BYTES)
                .spawn_scoped(s, move || f.call(store, ()))
                .map_err(|e| Error::io("starting a guest thread", e))?
                .join()
                .map_err(|_| Error::host("the guest thread panicked"))
        })?;
        r.map_err(|e| Error::host(format!("the guest's {name} failed: {e:#}{}", self.stray_tail())))?;
        Ok(true)
    }

    /// What the guest wrote outside turns (for error messages).
    pub fn stray_tail(&self) -> String {
        let io = lock(&self.store.data().io);
        if io.stray.is_empty() {
            return String::new();
        }
        let text = String::from_utf8_lossy(&io.stray);
        let tail: String = text.chars().rev().take(3000).collect::<Vec<_>>().into_iter().rev().collect();
        format!("; it printed:\n{}", tail.trim_end())
    }

    /// Runs `code` (Python source) in the interpreter with `turn`, with `inbox` queued
    /// for the driver's door, under `limits`. Guest output and frames are handed to
    /// `on_msg` on this thread as they happen; the guest runs on a thread of its own
    /// (with a stack large enough for the wasm stack).
    pub fn turn(
        &mut self,
        code: &str,
        inbox: Vec<Vec<u8>>,
        limits: TurnLimits,
        on_msg: &mut dyn FnMut(Msg),
    ) -> Result<TurnResult, Error> {
        let (tx, rx) = channel();
        {
            let st = self.store.data_mut();
            st.inbox = inbox.into();
            let cancelled = st.watch.cancelled.clone();
            st.watch = Watch { cancelled, ..Watch::default() };
            st.watch.deadline = limits.timeout.map(|t| Instant::now() + t);
            st.watch.cpu_budget_ns = limits.cpu.map(|c| u64::try_from(c.as_nanos()).unwrap_or(u64::MAX));
            st.limiter.denied_bytes = None;
            let mut io = lock(&st.io);
            io.tx = Some(tx);
            io.remaining = limits.output_bytes;
            io.results = ResultBudget::new(limits.result_bytes);
            io.over = false;
            io.truncated = [false; 2];
        }
        let budget = limits.fuel.unwrap_or(u64::MAX);
        if self.fuel {
            self.store.set_fuel(budget).map_err(|e| Error::host(format!("setting fuel: {e:#}")))?;
        }
        self.store.set_epoch_deadline(1);
        let _ticking = Ticking::start();
        let exports = self.exports.clone();
        let store = &mut self.store;
        let code = code.as_bytes();
        let (end, cpu_ns) = std::thread::scope(|s| -> Result<(TurnEnd, u64), Error> {
            let handle = std::thread::Builder::new()
                .name("airlock-wasm-guest".into())
                .stack_size(GUEST_THREAD_STACK_BYTES)
                .spawn_scoped(s, move || {
                    /// Drops the turn's sender however the thread ends, so the
                    /// calling thread's receive loop ends.
                    struct Close(Arc<Mutex<CellIo>>);
                    impl Drop for Close {
                        fn drop(&mut self) {
                            lock(&self.0).tx = None;
                        }
                    }
                    let _close = Close(store.data().io.clone());
                    let end = match call_turn(store, &exports, code) {
                        Ok(status) => TurnEnd::Returned(status),
                        Err(e) => TurnEnd::Trapped(e),
                    };
                    (end, thread_cpu_ns())
                })
                .map_err(|e| Error::io("starting a guest thread", e))?;
            while let Ok(m) = rx.recv() {
                on_msg(m);
            }
            handle.join().map_err(|_| Error::host("the guest thread panicked"))
        })?;
        let fuel_used = if self.fuel { self.store.get_fuel().ok().map(|left| budget - left) } else { None };
        let st = self.store.data();
        let io = lock(&st.io);
        Ok(TurnResult {
            end,
            cpu_ns,
            fuel_used,
            stop: st.watch.stop.map(|s| s.0),
            trapped: st.watch.trapped,
            memory_denied_bytes: st.limiter.denied_bytes,
            truncated: io.truncated,
            results_truncated: io.results.truncated,
            memory_bytes: self.exports.memory.data_size(&self.store) as u64,
        })
    }
}

fn call_turn(store: &mut Store<GuestState>, ex: &Exports, code: &[u8]) -> wasmtime::Result<i32> {
    let len = i32::try_from(code.len()).map_err(|_| wasmtime::Error::msg("turn code too large"))?;
    let p = ex.host_alloc.call(&mut *store, len)?;
    if p == 0 {
        return Err(wasmtime::Error::msg("the guest could not allocate the turn's code (out of memory)"));
    }
    ex.memory.write(&mut *store, p as u32 as usize, code)?;
    ex.turn.call(&mut *store, (p, len))
}

/// The initial linear memory of a module, in bytes.
pub fn min_memory_bytes(module: &Module) -> u64 {
    module.exports().filter_map(|e| e.ty().memory().map(|m| m.minimum())).next().map(|pages| pages * 65536).unwrap_or(0)
}
