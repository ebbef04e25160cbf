//! Airlock's service layer without a transport: which backends exist, how they are
//! configured, and which one a request gets. The CLI, the HTTP server and the MCP
//! server all go through a [`Registry`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use airlock_core::backend::{Canceller, EventSink, run_in};
use airlock_core::{Backend, BackendKind, Error, ExecRequest, Limits, Outcome, Probe, Sandbox, SandboxSpec};

pub mod admission;
pub mod keys;
pub mod metrics;
pub mod service;
pub mod session;
pub mod settings;
pub mod store;

pub use service::{Pending, Service, ServiceError, ServiceErrorKind};
pub use settings::ServerSettings;

/// Settings every backend draws from.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where airlock keeps its state (artifacts, the audit store, keys).
    pub data_dir: PathBuf,
    /// The Python interpreter native backends run.
    pub python: PathBuf,
    /// The largest limits a request may ask for.
    pub max_limits: Limits,
    /// Settings of the `jail` backend (its `python` is replaced by [`Config::python`]).
    pub jail: airlock_jail::JailConfig,
}

impl Config {
    /// Defaults: `$AIRLOCK_DATA_DIR`, else `$XDG_DATA_HOME/airlock`, else
    /// `~/.local/share/airlock`; the interpreter from [`airlock_guest::launch::default_python`].
    pub fn from_env() -> Self {
        let python = airlock_guest::launch::default_python();
        Config {
            data_dir: default_data_dir(),
            jail: airlock_jail::JailConfig::from_env(python.clone()),
            python,
            max_limits: Limits::generous_max(),
        }
    }
}

/// Airlock's data directory (see [`Config::from_env`]).
pub fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("AIRLOCK_DATA_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("airlock");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h).join(".local/share/airlock");
    }
    PathBuf::from("/var/lib/airlock")
}

/// The backends of this build, with cached probes.
pub struct Registry {
    config: Config,
    backends: BTreeMap<BackendKind, Arc<dyn Backend>>,
    probes: Mutex<BTreeMap<BackendKind, Probe>>,
}

impl Registry {
    /// Every backend compiled into this build, configured from `config`.
    pub fn new(config: Config) -> Self {
        let mut backends: BTreeMap<BackendKind, Arc<dyn Backend>> = BTreeMap::new();
        backends.insert(BackendKind::Process, Arc::new(airlock_process::ProcessBackend::new(config.python.clone())));
        backends.insert(
            BackendKind::Microvm,
            Arc::new(airlock_microvm::MicrovmBackend::new(airlock_microvm::MicrovmConfig::from_env(
                config.data_dir.clone(),
            ))),
        );
        let jail = airlock_jail::JailConfig { python: config.python.clone(), ..config.jail.clone() };
        backends.insert(BackendKind::Jail, Arc::new(airlock_jail::JailBackend::new(jail)));
        backends.insert(BackendKind::Wasm, Arc::new(airlock_wasm::WasmBackend::new(config.data_dir.clone())));
        Registry { config, backends, probes: Mutex::new(BTreeMap::new()) }
    }

    /// A registry with exactly these backends (tests, embedding).
    pub fn with_backends(config: Config, list: Vec<Arc<dyn Backend>>) -> Self {
        let backends = list.into_iter().map(|b| (b.kind(), b)).collect();
        Registry { config, backends, probes: Mutex::new(BTreeMap::new()) }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The probe of one backend (cached after the first call).
    pub fn probe(&self, kind: BackendKind) -> Option<Probe> {
        let backend = self.backends.get(&kind)?;
        let mut cache = self.probes.lock().unwrap_or_else(|p| p.into_inner());
        Some(cache.entry(kind).or_insert_with(|| backend.probe()).clone())
    }

    /// Probes of every known backend, including those not compiled in.
    pub fn probes(&self) -> Vec<Probe> {
        BackendKind::ALL
            .into_iter()
            .map(|k| {
                self.probe(k).unwrap_or_else(|| Probe {
                    backend: k,
                    isolation: isolation_of(k),
                    available: false,
                    detail: "not built into this airlock binary".into(),
                    fix: Some("build airlock with this backend's crate".into()),
                    checks: BTreeMap::new(),
                })
            })
            .collect()
    }

    /// The backend a request gets: the named one if it works here, else the first
    /// of [`BackendKind::PREFERENCE`] that works.
    pub fn resolve(&self, wanted: Option<BackendKind>) -> Result<Arc<dyn Backend>, Error> {
        match wanted {
            Some(kind) => {
                let backend = self.backends.get(&kind).ok_or_else(|| Error::Unavailable {
                    backend: kind,
                    reason: "not built into this airlock binary".into(),
                    fix: None,
                })?;
                let probe = self.probe(kind).expect("backend exists");
                if !probe.available {
                    return Err(Error::Unavailable { backend: kind, reason: probe.detail, fix: probe.fix });
                }
                Ok(backend.clone())
            }
            None => {
                for kind in BackendKind::PREFERENCE {
                    if self.probe(kind).is_some_and(|p| p.available) {
                        return Ok(self.backends[&kind].clone());
                    }
                }
                Err(Error::Unavailable {
                    backend: BackendKind::Process,
                    reason: "no backend works on this host".into(),
                    fix: Some("run `airlock doctor` to see why".into()),
                })
            }
        }
    }
}

impl Registry {
    /// Creates a sandbox: the one place where airlock makes sandboxes (one-shot runs and
    /// sessions alike), so that a pool of pre-initialised sandboxes can take over here.
    pub fn create_sandbox(&self, backend: &dyn Backend, spec: &SandboxSpec) -> Result<Box<dyn Sandbox>, Error> {
        backend.create(spec)
    }

    /// Runs every compiled-in backend's [`Backend::cleanup_stale`]: removes what
    /// sandboxes of dead airlock processes left behind. One entry per backend.
    pub fn cleanup_stale(&self) -> Vec<(BackendKind, Result<Vec<String>, Error>)> {
        self.backends.iter().map(|(k, b)| (*k, b.cleanup_stale())).collect()
    }
}

/// The boundary each backend kind provides (for backends not compiled in).
pub fn isolation_of(kind: BackendKind) -> airlock_core::Isolation {
    use airlock_core::Isolation;
    match kind {
        BackendKind::Process => Isolation::None,
        BackendKind::Jail => Isolation::Namespaces,
        BackendKind::Wasm => Isolation::Wasm,
        BackendKind::Microvm => Isolation::Vm,
    }
}

impl Registry {
    /// Runs one request in a fresh sandbox of the backend it asks for (or the default):
    /// validate, check the guard, create, copy files in, run, collect outputs, destroy.
    ///
    /// With a guard (`req.guard`), the code is checked on the host first
    /// ([`airlock_guard::screen`]); a violation returns status `denied` with every
    /// finding, and no sandbox is created. Otherwise the guard's runtime layer is
    /// installed in the sandbox before the code runs. A session (several cells in one
    /// sandbox) must call [`airlock_guard::screen_cell`] before each cell itself.
    ///
    /// `on_start` receives the sandbox's canceller once it exists (for Ctrl-C or
    /// server shutdown). Guest failures are `Ok(outcome)`; `Err` means the request was
    /// invalid or the host could not run it.
    pub fn execute(
        &self,
        req: &ExecRequest,
        execution_id: Option<String>,
        on_start: &mut dyn FnMut(Option<Canceller>),
        events: &mut EventSink<'_>,
    ) -> Result<Outcome, Error> {
        req.validate(&self.config.max_limits)?;
        let backend = self.resolve(req.backend)?;
        if let Some(denial) = airlock_guard::screen(req) {
            let id = execution_id.unwrap_or_else(|| airlock_core::new_id("exe"));
            let outcome = denial.outcome(id, backend.kind(), backend.isolation());
            if let Some(e) = &outcome.error {
                events(airlock_core::Event::Error { error: e.clone() });
            }
            return Ok(outcome);
        }
        let started = std::time::Instant::now();
        let spec = SandboxSpec { env: req.env.clone(), network: req.network, ..SandboxSpec::new(req.limits) };
        let mut sandbox = self.create_sandbox(backend.as_ref(), &spec)?;
        on_start(sandbox.canceller());
        let result = run_in(sandbox.as_mut(), req, execution_id, started, events);
        on_start(None);
        let destroyed = sandbox.destroy();
        let outcome = result?;
        if let Err(e) = destroyed {
            tracing::warn!(sandbox = %spec.id, "cleaning up the sandbox failed: {e}");
        }
        Ok(outcome)
    }
}
