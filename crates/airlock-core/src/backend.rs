//! The [`Backend`] and [`Sandbox`] traits every isolation mechanism implements.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::Error;
use crate::guard::GuardPolicy;
use crate::outcome::{ErrorInfo, Outcome, OutputFile, ResultBundle, Status, base64_encode};
use crate::paths::WorkspacePath;
use crate::request::{ExecRequest, Language, Limits, NetworkPolicy};
use crate::units::format_size;

/// The backends airlock knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// A plain child process with rlimits. **No isolation**: the code runs as your user.
    Process,
    /// Linux namespaces, a read-only root, seccomp, Landlock and cgroups.
    Jail,
    /// CPython compiled to WebAssembly, run by wasmtime inside airlock.
    Wasm,
    /// A QEMU microvm with a guest kernel of its own.
    Microvm,
}

impl BackendKind {
    /// Every backend, safest-by-default order for automatic choice is [`BackendKind::PREFERENCE`].
    pub const ALL: [BackendKind; 4] =
        [BackendKind::Process, BackendKind::Jail, BackendKind::Wasm, BackendKind::Microvm];

    /// The order in which a backend is chosen when a request names none: the first
    /// that works on this host. `process` is last: it is never chosen while a
    /// safer backend works.
    pub const PREFERENCE: [BackendKind; 3] = [BackendKind::Jail, BackendKind::Wasm, BackendKind::Process];

    /// The lowercase name used on the wire and in the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Process => "process",
            BackendKind::Jail => "jail",
            BackendKind::Wasm => "wasm",
            BackendKind::Microvm => "microvm",
        }
    }
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for BackendKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        BackendKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s.to_ascii_lowercase())
            .ok_or_else(|| Error::invalid(format!("unknown backend '{s}': use one of process, jail, wasm, microvm")))
    }
}

/// The kind of boundary between the code and the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// No boundary at all: the code can do anything your user can.
    None,
    /// Linux namespaces, seccomp, Landlock and cgroups; shares the host kernel.
    Namespaces,
    /// A WebAssembly runtime: the code reaches only what the host hands it.
    Wasm,
    /// A virtual machine with its own kernel.
    Vm,
}

impl Isolation {
    /// A short human label, e.g. for `doctor` and the CLI's status line.
    pub fn label(self) -> &'static str {
        match self {
            Isolation::None => "NO ISOLATION (runs as your user)",
            Isolation::Namespaces => "namespaces + seccomp + landlock + cgroups",
            Isolation::Wasm => "WebAssembly (wasmtime)",
            Isolation::Vm => "virtual machine (own kernel)",
        }
    }

    /// How strong the boundary is, for policies such as "the model may not pick a
    /// weaker boundary than the operator's default": none (0) < namespaces (1) <
    /// WebAssembly (2: no system calls reach the host kernel) < a VM (3: its own kernel).
    pub fn rank(self) -> u8 {
        match self {
            Isolation::None => 0,
            Isolation::Namespaces => 1,
            Isolation::Wasm => 2,
            Isolation::Vm => 3,
        }
    }
}

/// What `airlock doctor` reports about one backend on this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Probe {
    /// The backend.
    pub backend: BackendKind,
    /// Its boundary.
    pub isolation: Isolation,
    /// True when sandboxes can be created here.
    pub available: bool,
    /// What was found, in a sentence or two.
    pub detail: String,
    /// The command or change that makes it work, when it does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
    /// Individual checks (mechanism → works or why not).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub checks: BTreeMap<String, String>,
}

/// How to create a sandbox.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxSpec {
    /// The sandbox's id (`sbx_...`).
    pub id: String,
    /// Limits of the sandbox; per-cell limits (time, CPU, output) are defaults for cells.
    pub limits: Limits,
    /// Environment variables added to the sandbox's minimal environment.
    pub env: BTreeMap<String, String>,
    /// Network access.
    pub network: NetworkPolicy,
    /// A named template (pre-imported modules, interpreter), if the backend supports them.
    pub template: Option<String>,
}

impl SandboxSpec {
    /// A spec with a fresh id and the given limits.
    pub fn new(limits: Limits) -> Self {
        SandboxSpec {
            id: crate::new_id("sbx"),
            limits,
            env: BTreeMap::new(),
            network: NetworkPolicy::None,
            template: None,
        }
    }
}

/// One piece of code to run in a sandbox.
#[derive(Debug, Clone, PartialEq)]
pub struct Cell {
    /// The execution id (`exe_...`) the outcome will carry.
    pub id: String,
    /// The language.
    pub language: Language,
    /// The code.
    pub code: String,
    /// Globals to define before the code runs (Python only).
    pub global_variables: serde_json::Map<String, serde_json::Value>,
    /// Wall-clock limit of this cell.
    pub timeout_ms: u64,
    /// CPU limit of this cell.
    pub cpu_ms: u64,
    /// Output limit of this cell (stdout + stderr).
    pub output_bytes: u64,
    /// Limit on this cell's rich results together (bytes of their JSON).
    pub result_bytes: u64,
    /// The guard's runtime policy, installed in the sandbox before this cell runs
    /// (see [`crate::guard`]). Once a sandbox is guarded it stays guarded.
    pub guard: Option<GuardPolicy>,
}

impl Cell {
    /// A cell with a fresh id whose per-cell limits come from `limits`.
    pub fn new(language: Language, code: impl Into<String>, limits: &Limits) -> Self {
        Cell {
            id: crate::new_id("exe"),
            language,
            code: code.into(),
            global_variables: serde_json::Map::new(),
            timeout_ms: limits.timeout_ms,
            cpu_ms: limits.cpu_ms,
            output_bytes: limits.output_bytes,
            result_bytes: limits.result_bytes,
            guard: None,
        }
    }
}

/// Something a running cell produced, delivered as it happens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A chunk of standard output.
    Stdout {
        /// The text.
        text: String,
    },
    /// A chunk of standard error.
    Stderr {
        /// The text.
        text: String,
    },
    /// A rich result (a displayed value, a figure, or the main result).
    Result {
        /// The result.
        result: ResultBundle,
    },
    /// The cell's uncaught exception.
    Error {
        /// The error.
        error: ErrorInfo,
    },
}

/// Receives [`Event`]s while a cell runs. Called on the thread running the cell.
pub type EventSink<'a> = dyn FnMut(Event) + 'a;

/// Stops a running cell from another thread: the cell ends with status `killed` and
/// the sandbox is no longer usable.
pub type Canceller = Arc<dyn Fn() + Send + Sync>;

/// An entry of a workspace listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FileEntry {
    /// Path relative to the workspace.
    pub path: String,
    /// Size in bytes (0 for directories).
    pub size: u64,
    /// True for directories.
    pub is_dir: bool,
}

/// An isolation mechanism: a factory of sandboxes.
pub trait Backend: Send + Sync {
    /// Which backend this is.
    fn kind(&self) -> BackendKind;
    /// The boundary it provides.
    fn isolation(&self) -> Isolation;
    /// Whether it works on this host, and why not.
    fn probe(&self) -> Probe;
    /// Creates a sandbox. `Err` means the host could not create it; guest failures
    /// come later, as outcomes.
    fn create(&self, spec: &SandboxSpec) -> Result<Box<dyn Sandbox>, Error>;
    /// Removes what sandboxes of this backend left on the host after the airlock
    /// process that owned them died without cleaning up (`kill -9`, a crash, a power
    /// cut): processes, cgroups, directories. It must leave alone every sandbox whose
    /// owner is still alive. Called when a long-running host (`airlock serve`) starts.
    /// Returns one line per thing removed. The default removes nothing.
    fn cleanup_stale(&self) -> Result<Vec<String>, Error> {
        Ok(Vec::new())
    }
    /// Starts a factory that makes sandboxes of `recipe` faster than [`Backend::create`]
    /// and with the recipe's modules already imported (the `jail` backend's zygote).
    /// `Ok(None)`: this backend has none, and callers create sandboxes and import the
    /// modules themselves. `Err`: it has one, but it could not start (the reason says
    /// why and what to do).
    fn factory(&self, recipe: &Recipe) -> Result<Option<Box<dyn Factory>>, Error> {
        let _ = recipe;
        Ok(None)
    }
}

/// What a [`Factory`] makes: sandboxes with these modules imported and these limits.
#[derive(Debug, Clone, PartialEq)]
pub struct Recipe {
    /// A name for logs and errors (the template's).
    pub name: String,
    /// Modules imported before any user code.
    pub modules: Vec<String>,
    /// Skip modules that are not installed instead of failing.
    pub optional_modules: bool,
    /// The limits of every sandbox made (whole-life limits must match a request's).
    pub limits: Limits,
}

/// A source of pre-initialized sandboxes (see [`Backend::factory`]). Each sandbox it
/// makes is as isolated as one from [`Backend::create`], and is fresh: no other
/// sandbox's code has run in it.
pub trait Factory: Send + Sync {
    /// Makes a sandbox for `spec`, whose whole-life limits must be the recipe's.
    fn create(&self, spec: &SandboxSpec) -> Result<Box<dyn Sandbox>, Error>;
    /// The recipe's modules that are imported in every sandbox.
    fn imported(&self) -> Vec<String>;
    /// False once the factory can make no more sandboxes (its process died).
    fn is_alive(&self) -> bool;
    /// One line about the factory for status pages (`zygote pid 1234, 12 forks`).
    fn describe(&self) -> String;
}

/// A live sandbox: one interpreter whose state is kept between cells.
pub trait Sandbox: Send {
    /// The sandbox's id.
    fn id(&self) -> &str;
    /// Which backend it belongs to.
    fn kind(&self) -> BackendKind;
    /// Runs one cell. A guest failure (exception, timeout, OOM, kill) is an `Ok`
    /// outcome; `Err` is for host faults and for a sandbox that is no longer alive.
    fn execute(&mut self, cell: &Cell, events: &mut EventSink<'_>) -> Result<Outcome, Error>;
    /// Writes a file into the workspace, creating parent directories.
    fn write_file(&mut self, path: &WorkspacePath, data: &[u8]) -> Result<(), Error>;
    /// Reads a workspace file of at most `max_bytes`.
    fn read_file(&mut self, path: &WorkspacePath, max_bytes: u64) -> Result<Vec<u8>, Error>;
    /// Lists a workspace directory (recursively, up to a bounded number of entries).
    fn list_files(&mut self, dir: &WorkspacePath) -> Result<Vec<FileEntry>, Error>;
    /// Removes a workspace file or empty directory.
    fn remove_file(&mut self, path: &WorkspacePath) -> Result<(), Error>;
    /// False once the interpreter has died (killed, crashed, exited).
    fn is_alive(&self) -> bool;
    /// A handle that stops the running cell from another thread, if supported.
    fn canceller(&self) -> Option<Canceller> {
        None
    }
    /// Destroys the sandbox and everything it created on the host. Also done on drop.
    fn destroy(self: Box<Self>) -> Result<(), Error>;
}

/// Runs one request in a fresh sandbox: create, copy files in, run, collect the
/// requested outputs, destroy. Validates the request against generous maxima first.
pub fn run_once(
    backend: &dyn Backend,
    req: &ExecRequest,
    execution_id: Option<String>,
    events: &mut EventSink<'_>,
) -> Result<Outcome, Error> {
    req.validate(&Limits::generous_max())?;
    let started = Instant::now();
    let spec = SandboxSpec { env: req.env.clone(), network: req.network, ..SandboxSpec::new(req.limits) };
    let mut sandbox = backend.create(&spec)?;
    let result = run_in(sandbox.as_mut(), req, execution_id, started, events);
    let destroyed = sandbox.destroy();
    let outcome = result?;
    destroyed?;
    Ok(outcome)
}

/// Runs one request in an existing sandbox: copy files in, run, collect outputs.
/// `started` is when the caller began creating the sandbox (for `usage.startup_ms`).
pub fn run_in(
    sandbox: &mut dyn Sandbox,
    req: &ExecRequest,
    execution_id: Option<String>,
    started: Instant,
    events: &mut EventSink<'_>,
) -> Result<Outcome, Error> {
    for f in &req.files {
        let (path, bytes) = f.decode()?;
        sandbox.write_file(&path, &bytes)?;
    }
    let mut cell = Cell::new(req.language, req.code.clone(), &req.limits);
    if let Some(id) = execution_id {
        cell.id = id;
    }
    cell.global_variables = req.global_variables.clone();
    cell.guard = req.guard.policy(req.network);
    let startup_ms = started.elapsed().as_millis() as u64;
    let mut outcome = sandbox.execute(&cell, events)?;
    outcome.usage.startup_ms = startup_ms;
    collect_outputs(sandbox, req, &mut outcome)?;
    Ok(outcome)
}

/// Copies the requested `outputs` into the outcome: each file at most
/// `limits.file_bytes`, and all of them together at most `limits.file_bytes` too
/// (the workspace's own size), so a list that names large files many times cannot
/// make the outcome large. A file that does not fit is listed with an `error` instead
/// of its content, and an `ok` run becomes `output_limit`.
fn collect_outputs(sandbox: &mut dyn Sandbox, req: &ExecRequest, outcome: &mut Outcome) -> Result<(), Error> {
    let cap = req.limits.file_bytes;
    let mut left = cap;
    let mut withheld = Vec::new();
    for p in &req.outputs {
        let path = WorkspacePath::parse(p)?;
        let file = match sandbox.read_file(&path, left) {
            Ok(bytes) => {
                left -= bytes.len() as u64;
                OutputFile {
                    path: path.to_string(),
                    size: bytes.len() as u64,
                    content_base64: Some(base64_encode(&bytes)),
                    error: None,
                }
            }
            Err(e) => {
                let too_large = matches!(e, Error::TooLarge(_));
                let error = if too_large && left < cap {
                    format!(
                        "'{path}' was not returned: the requested outputs together may hold at most {} (limits.file_bytes) and only {} was left",
                        format_size(cap),
                        format_size(left)
                    )
                } else {
                    e.to_string()
                };
                if too_large {
                    withheld.push(path.to_string());
                }
                OutputFile { path: path.to_string(), size: 0, content_base64: None, error: Some(error) }
            }
        };
        outcome.files.push(file);
    }
    if !withheld.is_empty() && outcome.status == Status::Ok {
        outcome.status = Status::OutputLimit;
        outcome.reason = Some(format!(
            "requested output files exceeded {} (limits.file_bytes, for each file and for all of them together); not returned: {}{}",
            format_size(cap),
            withheld.iter().take(5).cloned().collect::<Vec<_>>().join(", "),
            if withheld.len() > 5 { format!(" and {} more", withheld.len() - 5) } else { String::new() }
        ));
    }
    Ok(())
}
