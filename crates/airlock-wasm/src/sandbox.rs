//! A live wasm sandbox: one guest whose interpreter persists between cells (each
//! cell is one `turn`), a workspace folder, and the mapping of what happened in a
//! turn to an [`Outcome`].

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use airlock_core::backend::{Canceller, EventSink};
use airlock_core::paths::WorkspacePath;
use airlock_core::units::{format_duration_ms, format_size};
use airlock_core::{
    BackendKind, Cell, Error, ErrorInfo, Event, FileEntry, Isolation, Language, Outcome, ResultBundle, Sandbox,
    SandboxSpec, Status,
};
use airlock_guest::capture::{Stream, accept, emit, output_limit_reason, relabel_interrupt};
use airlock_guest::protocol::{GuestFrame, HostFrame, PROTOCOL_VERSION};
use airlock_guest::workspace::Workspace;

use crate::guest::{
    GUEST_MPLCONFIG, GUEST_TMP, GUEST_WORKSPACE, Guest, GuestConfig, HostStop, Msg, ProtocolViolation, Stop, TurnEnd,
    TurnLimits, TurnResult,
};
use crate::{FUEL_PER_CPU_MS, Runtime};

/// The `turn` that starts the driver in a fresh sandbox.
const START: &str = "__import__('airlock_driver').wasi_start()";
/// The `turn` that runs one cell.
const CELL: &str = "__import__('airlock_driver').wasi_turn()";
/// The `turn` that first installs a guard policy (its own frame), then runs one cell.
const GUARDED_CELL: &str = "__import__('airlock_driver').wasi_turn()\n__import__('airlock_driver').wasi_turn()";
/// How long a sandbox's start (driver start-up inside the guest) may take.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A live `wasm` sandbox.
pub struct WasmSandbox {
    id: String,
    guest: Option<Guest>,
    workspace: Workspace,
    dir: Option<tempfile::TempDir>,
    file_bytes: u64,
    memory_bytes: u64,
    cancelled: Arc<AtomicBool>,
    alive: bool,
    /// The guard policy last sent to the guest (sent again only when it changes).
    guard_sent: Option<airlock_core::GuardPolicy>,
}

impl WasmSandbox {
    /// Creates a sandbox: a workspace, a store instantiated from the snapshot, and the
    /// driver started inside it.
    pub(crate) fn create(rt: &Runtime, spec: &SandboxSpec) -> Result<WasmSandbox, Error> {
        if spec.network != airlock_core::NetworkPolicy::None {
            return Err(Error::invalid(
                "the wasm backend has no network at all (WASI preview 1 has no sockets); use network 'none', or the jail or process backend",
            ));
        }
        let dir = tempfile::Builder::new()
            .prefix("airlock-wasm-")
            .tempdir()
            .map_err(|e| Error::io("creating the sandbox's workspace", e))?;
        std::fs::create_dir(dir.path().join(".tmp"))
            .map_err(|e| Error::io("creating the sandbox's temporary folder", e))?;
        let workspace = Workspace::open(dir.path())?;
        let env = airlock_guest::launch::guest_env(GUEST_WORKSPACE, GUEST_TMP, Some(GUEST_MPLCONFIG), &spec.env);
        let cfg = GuestConfig {
            lib_dir: rt.layout.lib_dir(),
            mpl_data: rt.layout.mpl_data(),
            workspace: dir.path().to_path_buf(),
            env: env.clone(),
            memory_bytes: spec.limits.memory_bytes,
            open_files: spec.limits.open_files,
            file_bytes: spec.limits.file_bytes,
        };
        let cancelled = Arc::new(AtomicBool::new(false));
        let mut guest = Guest::new(rt.engine, &rt.linkers, &rt.pre, &cfg, crate::engine::FUEL, cancelled.clone())?;
        let limits = TurnLimits {
            timeout: Some(START_TIMEOUT),
            cpu: None,
            output_bytes: 64 << 10,
            result_bytes: 64 << 10,
            fuel: None,
        };
        let mut printed = Vec::new();
        if !rt.fresh_driver {
            let r = guest.turn(
                crate::snapshot::LOAD_DRIVER,
                vec![airlock_guest::DRIVER_SOURCE.as_bytes().to_vec()],
                limits,
                &mut |m| {
                    if let Msg::Output { bytes, .. } = m {
                        printed.extend_from_slice(&bytes)
                    }
                },
            )?;
            if !matches!(r.end, TurnEnd::Returned(0)) {
                return Err(start_error("loading the driver", &r, &printed));
            }
        }
        let config = serde_json::json!({
            "env": env.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
            "workspace": GUEST_WORKSPACE,
        });
        let mut hello = None;
        let r = guest.turn(START, vec![config.to_string().into_bytes()], limits, &mut |m| match m {
            Msg::Output { bytes, .. } => printed.extend_from_slice(&bytes),
            Msg::Frame(GuestFrame::Hello { protocol, .. }) => hello = Some(protocol),
            _ => {}
        })?;
        match (&r.end, hello) {
            (TurnEnd::Returned(0), Some(p)) if p == PROTOCOL_VERSION => {}
            (TurnEnd::Returned(0), Some(p)) => {
                return Err(Error::host(format!(
                    "the wasm guest's driver speaks protocol {p}, this host speaks {PROTOCOL_VERSION}; run `airlock setup wasm`"
                )));
            }
            _ => return Err(start_error("starting the driver", &r, &printed)),
        }
        Ok(WasmSandbox {
            id: spec.id.clone(),
            guest: Some(guest),
            workspace,
            dir: Some(dir),
            file_bytes: spec.limits.file_bytes,
            memory_bytes: spec.limits.memory_bytes,
            cancelled,
            alive: true,
            guard_sent: None,
        })
    }

    fn teardown(&mut self) -> Result<(), Error> {
        self.alive = false;
        self.guest = None;
        if let Some(dir) = self.dir.take() {
            let path: PathBuf = dir.path().to_path_buf();
            dir.close().map_err(|e| Error::io(format!("removing {}", path.display()), e))?;
        }
        Ok(())
    }
}

fn start_error(what: &str, r: &TurnResult, printed: &[u8]) -> Error {
    let text = String::from_utf8_lossy(printed);
    let how = match &r.end {
        TurnEnd::Returned(s) => format!("status {s}"),
        TurnEnd::Trapped(e) => format!("{e:#}"),
    };
    if r.memory_denied_bytes.is_some() {
        return Error::invalid(format!(
            "the wasm guest ran out of memory while {what}; raise limits.memory_bytes (the guest needs about {} to start)",
            format_size(r.memory_bytes + (32 << 20))
        ));
    }
    Error::host(format!(
        "the wasm guest failed while {what} ({how}){}",
        if text.trim().is_empty() { String::new() } else { format!("; it printed:\n{}", text.trim_end()) }
    ))
}

/// What the driver reported at the end of a cell.
struct Done {
    status: String,
    exit_code: Option<i64>,
    count: u64,
    memory_error: bool,
    protocol_error: Option<String>,
}

impl Sandbox for WasmSandbox {
    fn id(&self) -> &str {
        &self.id
    }

    fn kind(&self) -> BackendKind {
        BackendKind::Wasm
    }

    fn execute(&mut self, cell: &Cell, events: &mut EventSink<'_>) -> Result<Outcome, Error> {
        if !self.alive {
            return Err(Error::SandboxGone(format!("sandbox {} has stopped; create a new sandbox", self.id)));
        }
        if cell.language != Language::Python {
            return Err(Error::invalid(format!(
                "the wasm backend runs Python only (WASI cannot start a shell); run {} code on the jail or process backend",
                cell.language.as_str()
            )));
        }
        let guest = self.guest.as_mut().ok_or_else(|| Error::SandboxGone(self.id.clone()))?;
        let started = Instant::now();
        let frame = HostFrame::Exec {
            language: cell.language.as_str().to_string(),
            code: cell.code.clone(),
            globals: cell.global_variables.clone(),
            cpu_ms: Some(cell.cpu_ms),
        };
        let frame = serde_json::to_vec(&frame).map_err(|e| Error::host(format!("encoding the cell: {e}")))?;
        let guard = airlock_guest::host::guard_frame(cell).filter(|_| self.guard_sent.as_ref() != cell.guard.as_ref());
        let (code, inbox) = match &guard {
            Some(g) => {
                let g = serde_json::to_vec(g).map_err(|e| Error::host(format!("encoding the guard policy: {e}")))?;
                (GUARDED_CELL, vec![g, frame])
            }
            None => (CELL, vec![frame]),
        };
        let limits = TurnLimits {
            timeout: Some(Duration::from_millis(cell.timeout_ms)),
            cpu: Some(Duration::from_millis(cell.cpu_ms)),
            output_bytes: cell.output_bytes,
            result_bytes: cell.result_bytes,
            fuel: Some(cell.cpu_ms.saturating_mul(FUEL_PER_CPU_MS)),
        };
        let mut outcome = Outcome::new(cell.id.clone(), BackendKind::Wasm, Isolation::Wasm);
        outcome.sandbox_id = Some(self.id.clone());
        let mut out = Stream::default();
        let mut err = Stream::default();
        let mut total = 0u64;
        let mut error: Option<ErrorInfo> = None;
        let mut done: Option<Done> = None;
        let mut protocol: Option<String> = None;
        let r = guest.turn(code, inbox, limits, &mut |m| match m {
            Msg::Output { is_out, bytes } => {
                let s = if is_out { &mut out } else { &mut err };
                accept(s, &bytes, &mut total, cell.output_bytes);
                emit(s, is_out, false, events);
            }
            Msg::Frame(GuestFrame::Result { data, main }) => {
                let r = ResultBundle { data, is_main_result: main };
                events(Event::Result { result: r.clone() });
                outcome.results.push(r);
            }
            Msg::Frame(GuestFrame::Error { name, value, traceback }) => {
                error = Some(ErrorInfo { name, value, traceback }.bounded());
            }
            Msg::Frame(GuestFrame::Done {
                status, exit_code, execution_count, memory_error, protocol_error, ..
            }) => {
                // The first `done` ends the cell, as in the shared loop; later ones
                // (code writing frames of its own) change nothing.
                done.get_or_insert(Done { status, exit_code, count: execution_count, memory_error, protocol_error });
            }
            Msg::Frame(other) => {
                protocol.get_or_insert_with(|| format!("unexpected frame {other:?}"));
            }
            Msg::Malformed(e) => {
                protocol.get_or_insert(e);
            }
        })?;
        if guard.is_some() {
            self.guard_sent = cell.guard.clone();
        }
        emit(&mut out, true, true, events);
        emit(&mut err, false, true, events);
        outcome.stdout = String::from_utf8_lossy(&out.bytes).into_owned();
        outcome.stderr = String::from_utf8_lossy(&err.bytes).into_owned();
        outcome.stdout_truncated = out.truncated || r.truncated[0];
        outcome.stderr_truncated = err.truncated || r.truncated[1];
        outcome.results_truncated = r.results_truncated;
        outcome.error = error;
        outcome.usage.wall_ms = started.elapsed().as_millis() as u64;
        outcome.usage.cpu_ms = r.cpu_ns / 1_000_000;
        outcome.usage.peak_memory_bytes = r.memory_bytes;
        outcome.usage.instructions = r.fuel_used;
        let (status, reason, alive) = classify(&r, done.as_ref(), protocol, cell, self.memory_bytes, &mut outcome);
        outcome.status = status;
        outcome.reason = reason;
        if !alive {
            self.alive = false;
            self.guest = None;
            outcome.warnings.push(
                "the wasm interpreter was halted, so this sandbox's state is gone; later cells need a new sandbox"
                    .into(),
            );
        }
        if let Some(e) = &outcome.error {
            events(Event::Error { error: e.clone() });
        }
        Ok(outcome)
    }

    /// Files copied in count against `file_bytes` for the whole workspace, as the
    /// guest's writes do: the workspace is a folder on the host's disk, and without
    /// this check callers could fill it a file at a time.
    fn write_file(&mut self, path: &WorkspacePath, data: &[u8]) -> Result<(), Error> {
        let len = data.len() as u64;
        let used = self.workspace.usage().saturating_sub(self.workspace.file_sizes(path).0);
        if used.saturating_add(len) > self.file_bytes {
            return Err(Error::TooLarge(format!(
                "'{path}' ({}) does not fit in the workspace: it holds {} of its {} (limits.file_bytes); \
                 remove files from it or use a larger limits.file_bytes",
                format_size(len),
                format_size(used),
                format_size(self.file_bytes)
            )));
        }
        self.workspace.write(path, data, self.file_bytes)?;
        if let Some(g) = &mut self.guest {
            g.count_host_write(len);
        }
        Ok(())
    }

    fn read_file(&mut self, path: &WorkspacePath, max_bytes: u64) -> Result<Vec<u8>, Error> {
        self.workspace.read(path, max_bytes)
    }

    fn list_files(&mut self, dir: &WorkspacePath) -> Result<Vec<FileEntry>, Error> {
        self.workspace.list(dir)
    }

    fn remove_file(&mut self, path: &WorkspacePath) -> Result<(), Error> {
        self.workspace.remove(path)
    }

    fn is_alive(&self) -> bool {
        self.alive
    }

    fn canceller(&self) -> Option<Canceller> {
        let flag = self.cancelled.clone();
        Some(Arc::new(move || flag.store(true, Ordering::SeqCst)))
    }

    fn destroy(mut self: Box<Self>) -> Result<(), Error> {
        self.teardown()
    }
}

impl Drop for WasmSandbox {
    fn drop(&mut self) {
        let _ = self.teardown();
    }
}

fn stop_reason(stop: Stop, cell: &Cell, halted: bool, o: &Outcome) -> (Status, String) {
    let tail = if halted { "; the interpreter did not stop when asked and was halted" } else { "" };
    match stop {
        Stop::Timeout => (
            Status::Timeout,
            format!(
                "execution exceeded the wall-clock limit of {} (limits.timeout_ms){tail}",
                format_duration_ms(cell.timeout_ms)
            ),
        ),
        Stop::Cpu => (
            Status::Timeout,
            format!("execution used more than {} of CPU time (limits.cpu_ms){tail}", format_duration_ms(cell.cpu_ms)),
        ),
        Stop::Output => (
            Status::OutputLimit,
            format!(
                "{}{tail}",
                output_limit_reason(cell, o.stdout_truncated || o.stderr_truncated, o.results_truncated)
            ),
        ),
        Stop::Cancel => (Status::Killed, "the execution was cancelled by the host (sandbox stopped)".into()),
    }
}

/// The status and reason of a turn, and whether the sandbox survives it.
fn classify(
    r: &TurnResult,
    done: Option<&Done>,
    protocol: Option<String>,
    cell: &Cell,
    memory_bytes: u64,
    o: &mut Outcome,
) -> (Status, Option<String>, bool) {
    if let Some(d) = done {
        o.execution_count = d.count;
        o.exit_code = d.exit_code.map(|c| c.clamp(i32::MIN as i64, i32::MAX as i64) as i32);
    }
    match &r.end {
        TurnEnd::Trapped(e) => {
            if e.downcast_ref::<ProtocolViolation>().is_some()
                && let Some(p) = protocol
            {
                let p = airlock_core::outcome::cut_text(p, airlock_guest::host::PROTOCOL_REASON_BYTES, false);
                return (
                    Status::Killed,
                    Some(format!("the guest broke the airlock protocol ({p}); the sandbox was stopped")),
                    false,
                );
            }
            if let Some(stop) = e.downcast_ref::<HostStop>().map(|s| s.0).or(r.trapped) {
                let (s, why) = stop_reason(stop, cell, true, o);
                return (s, Some(why), false);
            }
            if let Some(exit) = e.downcast_ref::<wasmtime_wasi::I32Exit>() {
                o.exit_code = Some(exit.0);
                return (
                    if exit.0 == 0 { Status::Ok } else { Status::Error },
                    (exit.0 != 0).then(|| format!("the interpreter exited with status {} (os._exit)", exit.0)),
                    false,
                );
            }
            if let Some(stop) = r.stop {
                let (s, why) = stop_reason(stop, cell, true, o);
                return (s, Some(why), false);
            }
            let trap = e.downcast_ref::<wasmtime::Trap>().copied();
            if trap == Some(wasmtime::Trap::OutOfFuel) {
                return (
                    Status::Timeout,
                    Some(format!(
                        "execution used its instruction budget of {} WebAssembly instructions ({} per ms of limits.cpu_ms = {})",
                        cell.cpu_ms.saturating_mul(FUEL_PER_CPU_MS),
                        FUEL_PER_CPU_MS,
                        format_duration_ms(cell.cpu_ms)
                    )),
                    false,
                );
            }
            if r.memory_denied_bytes.is_some() {
                return (
                    Status::MemoryLimit,
                    Some(format!(
                        "the interpreter ran out of memory under the {} limit (limits.memory_bytes) and trapped ({})",
                        format_size(memory_bytes),
                        trap.map(|t| t.to_string()).unwrap_or_else(|| format!("{e}"))
                    )),
                    false,
                );
            }
            let what = match trap {
                Some(t) => t.to_string(),
                None => format!("{e:#}"),
            };
            (Status::Killed, Some(format!("the WebAssembly interpreter trapped: {what}")), false)
        }
        TurnEnd::Returned(code) => {
            if let Some(p) = protocol.or_else(|| done.and_then(|d| d.protocol_error.clone())) {
                let p = airlock_core::outcome::cut_text(p, airlock_guest::host::PROTOCOL_REASON_BYTES, false);
                return (
                    Status::Killed,
                    Some(format!("the guest broke the airlock protocol ({p}); the sandbox was stopped")),
                    false,
                );
            }
            let Some(d) = done else {
                return (
                    Status::Killed,
                    Some(format!(
                        "the guest driver ended the cell without reporting it (turn status {code}); the sandbox was stopped"
                    )),
                    false,
                );
            };
            if let Some(stop) = r.stop {
                let (st, why) = stop_reason(stop, cell, false, o);
                if let Some(e) = o.error.as_mut() {
                    relabel_interrupt(e, st, &why);
                }
                return (st, Some(why), true);
            }
            if d.status == "ok" {
                return (Status::Ok, None, true);
            }
            match o.error.as_ref() {
                // Only a refused `memory.grow` is the memory limit: the guest's own
                // claim (`memory_error`, or `raise MemoryError()`) is not evidence.
                Some(e) if r.memory_denied_bytes.is_some() && (d.memory_error || e.name == "MemoryError") => (
                    Status::MemoryLimit,
                    Some(format!(
                        "the program ran out of memory (MemoryError) under the {} limit (limits.memory_bytes)",
                        format_size(memory_bytes)
                    )),
                    true,
                ),
                Some(e) => {
                    let first = e.value.lines().next().unwrap_or("");
                    let first = &first[..first.floor_char_boundary(200)];
                    (Status::Error, Some(format!("{}: {first}", e.name)), true)
                }
                None => match o.exit_code {
                    Some(c) => (Status::Error, Some(format!("the program exited with status {c}")), true),
                    None => (Status::Error, Some("the program failed".into()), true),
                },
            }
        }
    }
}
