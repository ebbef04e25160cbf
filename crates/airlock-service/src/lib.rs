//! Airlock's service layer without a transport: which backends exist, how they are
//! configured, and which one a request gets. The CLI, the HTTP server and the MCP
//! server all go through a [`Registry`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use airlock_core::backend::{Canceller, EventSink, run_in};
use airlock_core::{Backend, BackendKind, Error, ExecRequest, Limits, Outcome, Probe, Sandbox, SandboxSpec};

pub mod admission;
pub mod events;
pub mod keys;
pub mod metrics;
pub mod pool;
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
    pool: OnceLock<Arc<pool::Pool>>,
    destroying: Arc<std::sync::atomic::AtomicUsize>,
}

/// One-shot sandboxes being destroyed in the background at once, at most; beyond it
/// they are destroyed before the result is returned (back-pressure).
const MAX_BACKGROUND_DESTROYS: usize = 16;

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
        Registry::with_backends(config, backends.into_values().collect())
    }

    /// A registry with exactly these backends (tests, embedding).
    pub fn with_backends(config: Config, list: Vec<Arc<dyn Backend>>) -> Self {
        let backends = list.into_iter().map(|b| (b.kind(), b)).collect();
        Registry {
            config,
            backends,
            probes: Mutex::new(BTreeMap::new()),
            pool: OnceLock::new(),
            destroying: Arc::default(),
        }
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
    ///
    /// With a warm pool ([`Registry::set_pool`]), a ready sandbox of the spec's
    /// template (or `default`) that fits the spec is handed out; otherwise, and when
    /// the pool is empty, one is created cold.
    pub fn create_sandbox(&self, backend: &dyn Backend, spec: &SandboxSpec) -> Result<Box<dyn Sandbox>, Error> {
        if let Some(pool) = self.pool.get() {
            if let Some(sb) = pool.take(backend.kind(), spec) {
                return Ok(sb);
            }
            // Service-level templates are not the backend's own (microvm's snapshot
            // templates): a cold sandbox gets the backend's default.
            let cold = SandboxSpec { template: None, ..spec.clone() };
            return backend.create(&cold);
        }
        backend.create(spec)
    }

    /// Installs the warm pool `create_sandbox` draws from (once; later calls are ignored).
    pub fn set_pool(&self, pool: Arc<pool::Pool>) {
        let _ = self.pool.set(pool);
    }

    /// The warm pool, if one is installed.
    pub fn pool(&self) -> Option<&Arc<pool::Pool>> {
        self.pool.get()
    }

    /// Builds the warm pool of `templates`, resolving each one's backend here, and
    /// installs it. The caller starts its thread ([`pool::Pool::start`]).
    pub fn build_pool(&self, templates: Vec<settings::TemplateSpec>, budget_bytes: u64) -> Arc<pool::Pool> {
        let list = templates
            .into_iter()
            .map(|t| {
                let backend = self.resolve(t.backend);
                let template = pool::Template {
                    name: t.name,
                    backend: backend.as_ref().map(|b| b.kind()).unwrap_or(t.backend.unwrap_or(BackendKind::Process)),
                    modules: t.modules,
                    optional_modules: t.optional_modules,
                    limits: t.limits,
                    pool_size: t.pool_size,
                };
                (template, backend)
            })
            .collect();
        let pool = pool::Pool::new(list, budget_bytes);
        self.set_pool(pool.clone());
        pool
    }

    /// Runs every compiled-in backend's [`Backend::cleanup_stale`]: removes what
    /// sandboxes of dead airlock processes left behind. One entry per backend.
    pub fn cleanup_stale(&self) -> Vec<(BackendKind, Result<Vec<String>, Error>)> {
        self.backends.iter().map(|(k, b)| (*k, b.cleanup_stale())).collect()
    }
}

/// The one way code runs, for one-shots and session cells alike: the guard's static
/// check of `req` first — a refusal is the outcome (status `denied`, with findings, its
/// error sent as an event) and `run` is never called — then `run`, which installs the
/// guard's runtime layer with the request (see `airlock_core::backend::run_in`).
pub fn screen_then_run(
    req: &ExecRequest,
    execution_id: &str,
    (backend, isolation): (BackendKind, airlock_core::Isolation),
    events: &mut EventSink<'_>,
    run: impl FnOnce(&mut EventSink<'_>) -> Result<Outcome, Error>,
) -> Result<Outcome, Error> {
    if let Some(denial) = airlock_guard::screen(req) {
        let outcome = denial.outcome(execution_id.to_string(), backend, isolation);
        if let Some(e) = &outcome.error {
            events(airlock_core::Event::Error { error: e.clone() });
        }
        return Ok(outcome);
    }
    run(events)
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
        let id = execution_id.unwrap_or_else(|| airlock_core::new_id("exe"));
        screen_then_run(req, &id, (backend.kind(), backend.isolation()), events, |events| {
            self.create_and_run(backend.as_ref(), req, id.clone(), on_start, events)
        })
    }

    /// Creates a sandbox for `req`, runs it, and destroys the sandbox.
    fn create_and_run(
        &self,
        backend: &dyn Backend,
        req: &ExecRequest,
        id: String,
        on_start: &mut dyn FnMut(Option<Canceller>),
        events: &mut EventSink<'_>,
    ) -> Result<Outcome, Error> {
        let execution_id = Some(id);
        let started = std::time::Instant::now();
        let spec = SandboxSpec {
            env: req.env.clone(),
            network: req.network,
            template: req.template.clone(),
            ..SandboxSpec::new(req.limits)
        };
        let mut sandbox = self.create_sandbox(backend, &spec)?;
        on_start(sandbox.canceller());
        let result = run_in(sandbox.as_mut(), req, execution_id, started, events);
        on_start(None);
        if self.pool.get().is_some() {
            // A server: the result does not wait for the teardown (an interpreter
            // with pandas loaded takes longer to exit than to run `print(1)`).
            self.destroy_in_background(sandbox);
            return result;
        }
        let destroyed = sandbox.destroy();
        let outcome = result?;
        if let Err(e) = destroyed {
            tracing::warn!(sandbox = %spec.id, "cleaning up the sandbox failed: {e}");
        }
        Ok(outcome)
    }

    /// Destroys a used one-shot sandbox on a thread of its own, unless
    /// [`MAX_BACKGROUND_DESTROYS`] are already in progress (then here and now).
    fn destroy_in_background(&self, sandbox: Box<dyn Sandbox>) {
        use std::sync::atomic::Ordering;
        let destroy = |sandbox: Box<dyn Sandbox>| {
            let id = sandbox.id().to_string();
            if let Err(e) = sandbox.destroy() {
                tracing::warn!(sandbox = %id, "cleaning up the sandbox failed: {e}");
            }
        };
        if self.destroying.fetch_add(1, Ordering::SeqCst) >= MAX_BACKGROUND_DESTROYS {
            self.destroying.fetch_sub(1, Ordering::SeqCst);
            return destroy(sandbox);
        }
        let count = self.destroying.clone();
        let spawned = std::thread::Builder::new().name("airlock-destroy".into()).spawn(move || {
            destroy(sandbox);
            count.fetch_sub(1, Ordering::SeqCst);
        });
        if spawned.is_err() {
            // The closure (and the sandbox, destroyed on drop) went with the error.
            self.destroying.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Waits up to `timeout` for background destroys to finish (shutdown).
    pub fn wait_destroyed(&self, timeout: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        while self.destroying.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        true
    }
}
