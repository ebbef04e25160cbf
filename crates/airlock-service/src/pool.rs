//! Templates and the warm pool: sandboxes created ahead of time, with a template's
//! modules already imported, handed to one-shot runs and new sessions without waiting.
//!
//! A pooled sandbox is an ordinary sandbox made by [`Backend::create`], exactly as a
//! cold one is; the pool only moves *when* it is made. Each sandbox is handed out at
//! most once and never comes back: a one-shot run destroys it afterwards, a session
//! keeps it. So a request never sees another request's state.
//!
//! One background thread keeps every template's pool at its size, one sandbox at a
//! time, within a memory budget charged at each sandbox's `memory_bytes` limit (the
//! most it may use). Dead pooled sandboxes are discarded; a template whose
//! pre-import fails records why (shown by `GET /v1/templates` and `airlock doctor`)
//! and is retried later; requests for it are then created cold.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use airlock_core::backend::Cell;
use airlock_core::{
    Backend, BackendKind, Error, Factory, Language, Limits, NetworkPolicy, Outcome, Recipe, Sandbox, SandboxSpec,
    Status,
};
use serde::Serialize;
use utoipa::ToSchema;

/// The name of the template requests get when they name none.
pub const DEFAULT_TEMPLATE: &str = "default";

/// The modules the built-in `default` template imports when they are installed.
pub const DEFAULT_MODULES: [&str; 3] = ["numpy", "pandas", "matplotlib.pyplot"];

/// How often each ready sandbox is checked to be alive (an empty cell).
const CHECK_EVERY: Duration = Duration::from_secs(2);

/// How long a template whose preparation failed waits before it is tried again.
const RETRY_AFTER: Duration = Duration::from_secs(60);

/// A named sandbox recipe: which backend, which modules to import before any user
/// code, which limits.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    /// Its name (`default`, or one from the settings file).
    pub name: String,
    /// The backend its sandboxes run on.
    pub backend: BackendKind,
    /// Modules imported in every sandbox before it is handed out.
    pub modules: Vec<String>,
    /// When true, a module that is not installed is skipped instead of failing the
    /// template (the built-in `default` template).
    pub optional_modules: bool,
    /// The sandbox's limits. A request takes a pooled sandbox only when its
    /// whole-life limits (`memory_bytes`, `processes`, `file_bytes`, `open_files`)
    /// equal these.
    pub limits: Limits,
    /// Ready sandboxes to keep.
    pub pool_size: usize,
}

impl Template {
    /// The Python cell that imports the template's modules without binding any name
    /// in the user's namespace. Module names are validated when the settings are
    /// read (dotted identifiers), so they are safe to place in code.
    pub fn preimport_code(&self) -> String {
        let list = self.modules.iter().map(|m| format!("{m:?}")).collect::<Vec<_>>().join(", ");
        if self.optional_modules {
            format!(
                "for __airlock_m in ({list},):\n    try:\n        __import__(__airlock_m)\n    except ImportError:\n        pass\ndel __airlock_m\n"
            )
        } else {
            format!("for __airlock_m in ({list},):\n    __import__(__airlock_m)\ndel __airlock_m\n")
        }
    }

    /// The recipe a backend's factory (zygote) is started with.
    pub fn recipe(&self) -> Recipe {
        Recipe {
            name: self.name.clone(),
            modules: self.modules.clone(),
            optional_modules: self.optional_modules,
            limits: self.limits,
        }
    }

    /// Whether this template's factory can make a sandbox for `spec`: same backend and
    /// no network (a forked sandbox takes its limits and environment from `spec`).
    fn factory_fits(&self, kind: BackendKind, spec: &SandboxSpec) -> bool {
        self.backend == kind && spec.network == NetworkPolicy::None
    }

    /// Whether a sandbox made from this template fits `spec` (same backend, same
    /// whole-life limits, no extra environment, no network).
    fn fits(&self, kind: BackendKind, spec: &SandboxSpec) -> bool {
        let (a, b) = (&self.limits, &spec.limits);
        self.backend == kind
            && spec.env.is_empty()
            && spec.network == NetworkPolicy::None
            && a.memory_bytes == b.memory_bytes
            && a.processes == b.processes
            && a.file_bytes == b.file_bytes
            && a.open_files == b.open_files
    }
}

/// Checks a module name given to a template: a dotted Python identifier.
pub fn check_module_name(m: &str) -> Result<(), Error> {
    let ok = !m.is_empty()
        && m.len() <= 200
        && m.split('.').all(|part| {
            let mut c = part.chars();
            c.next().is_some_and(|f| f == '_' || f.is_ascii_alphabetic())
                && c.all(|ch| ch == '_' || ch.is_ascii_alphanumeric())
        });
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "'{m}' is not a module name: use a dotted Python name such as 'numpy' or 'matplotlib.pyplot'"
        )))
    }
}

/// A template and its pool, as `GET /v1/templates` shows them.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct TemplateInfo {
    /// The template's name.
    pub name: String,
    /// The backend its sandboxes run on (absent when no backend works for it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<BackendKind>,
    /// Modules imported before user code.
    pub modules: Vec<String>,
    /// Of those, the ones the last prepared sandbox actually imported.
    pub imported: Vec<String>,
    /// Whole-life limits of its sandboxes.
    pub limits: Limits,
    /// Ready sandboxes the pool keeps.
    pub pool_size: usize,
    /// Ready sandboxes now.
    pub ready: usize,
    /// `ready` (the pool is full or filling), `failed` (see `error`), `off` (pool size 0).
    pub status: String,
    /// Why the template's sandboxes could not be prepared, with what to do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// How long preparing the last sandbox took (create + pre-import), in ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prepare_ms: Option<u64>,
    /// Requests served from the pool.
    pub served_warm: u64,
    /// Requests for this template that found the pool empty and were created cold.
    pub served_cold: u64,
    /// Pooled sandboxes discarded because they had died.
    pub discarded: u64,
    /// The template's zygote, when its backend has one: `zygote pid 1234, 56 forks`,
    /// `starting`, or why it failed (the pool then imports modules in each sandbox).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zygote: Option<String>,
    /// Requests that found the pool empty and got a sandbox forked by the zygote.
    pub served_forked: u64,
    /// Times the zygote was restarted after it died.
    pub zygote_restarts: u64,
}

/// A template's factory (zygote).
enum FactoryState {
    /// Not tried yet.
    Unknown,
    /// The backend has none.
    Absent,
    /// Running.
    Running(Arc<dyn Factory>),
    /// Could not start: why, and when it was tried.
    Failed(String, Instant),
}

/// The backend a template runs on, or why none works for it.
pub type BackendFor = Result<Arc<dyn Backend>, Error>;

struct Slot {
    template: Template,
    backend: Option<Arc<dyn Backend>>,
    state: Mutex<SlotState>,
    served_warm: AtomicU64,
    served_cold: AtomicU64,
    served_forked: AtomicU64,
    discarded: AtomicU64,
    factory: Mutex<FactoryState>,
    zygote_restarts: AtomicU64,
}

impl Slot {
    /// The running factory, if it is alive (never blocks on starting one).
    fn live_factory(&self) -> Option<Arc<dyn Factory>> {
        match &*lock(&self.factory) {
            FactoryState::Running(f) if f.is_alive() => Some(f.clone()),
            _ => None,
        }
    }

    /// Starts the factory if the backend has one and it is not running (restarting
    /// one that died; retrying one that failed after [`RETRY_AFTER`]). Slow: the
    /// zygote imports the template's modules. Called by the refill thread only.
    fn ensure_factory(&self, backend: &dyn Backend) {
        let restart = {
            let st = lock(&self.factory);
            match &*st {
                FactoryState::Absent => return,
                FactoryState::Running(f) if f.is_alive() => return,
                FactoryState::Running(_) => true,
                FactoryState::Failed(_, at) if at.elapsed() < RETRY_AFTER => return,
                FactoryState::Failed(..) | FactoryState::Unknown => false,
            }
        };
        if restart {
            tracing::warn!(template = %self.template.name, "the zygote died; restarting it");
            self.zygote_restarts.fetch_add(1, Ordering::Relaxed);
            // Dropping the old one kills what is left of it. Its ready children died
            // with it (it was their PID namespace's init): discard them all now rather
            // than when the next check notices.
            *lock(&self.factory) = FactoryState::Unknown;
            let dead: Vec<_> = lock(&self.state).ready.drain(..).collect();
            self.discarded.fetch_add(dead.len() as u64, Ordering::Relaxed);
            for sb in dead {
                let _ = sb.destroy();
            }
        }
        let next = match backend.factory(&self.template.recipe()) {
            Ok(Some(f)) => FactoryState::Running(Arc::from(f)),
            Ok(None) => FactoryState::Absent,
            Err(e) => {
                tracing::warn!(template = %self.template.name, "the zygote did not start: {e}");
                FactoryState::Failed(e.to_string(), Instant::now())
            }
        };
        *lock(&self.factory) = next;
    }

    fn factory_info(&self) -> Option<String> {
        match &*lock(&self.factory) {
            FactoryState::Unknown => (self.template.pool_size > 0).then(|| "starting".to_string()),
            FactoryState::Absent => None,
            FactoryState::Running(f) => Some(f.describe()),
            FactoryState::Failed(e, _) => Some(format!("failed: {e}")),
        }
    }
}

struct SlotState {
    ready: VecDeque<Box<dyn Sandbox>>,
    preparing: bool,
    error: Option<String>,
    failed_at: Option<Instant>,
    imported: Vec<String>,
    prepare_ms: Option<u64>,
    checked: Instant,
}

impl Default for SlotState {
    fn default() -> Self {
        SlotState {
            ready: VecDeque::new(),
            preparing: false,
            error: None,
            failed_at: None,
            imported: Vec::new(),
            prepare_ms: None,
            checked: Instant::now(),
        }
    }
}

/// The warm pool of every template. Start its refill thread with [`Pool::start`];
/// stop it with [`Pool::shutdown`].
pub struct Pool {
    slots: Vec<Slot>,
    budget_bytes: u64,
    stop: AtomicBool,
    wake: (Mutex<bool>, Condvar),
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Pool {
    /// A pool over `templates`, each with the backend it runs on (`Err`: why no
    /// backend works for it), charging at most `budget_bytes` of `memory_bytes`
    /// limits for ready sandboxes.
    pub fn new(templates: Vec<(Template, BackendFor)>, budget_bytes: u64) -> Arc<Self> {
        let slots = templates
            .into_iter()
            .map(|(template, backend)| {
                let (backend, error) = match backend {
                    Ok(b) => (Some(b), None),
                    Err(e) => (None, Some(format!("no backend for this template: {e}"))),
                };
                Slot {
                    template,
                    backend,
                    state: Mutex::new(SlotState { error, ..SlotState::default() }),
                    served_warm: AtomicU64::new(0),
                    served_cold: AtomicU64::new(0),
                    served_forked: AtomicU64::new(0),
                    discarded: AtomicU64::new(0),
                    factory: Mutex::new(FactoryState::Unknown),
                    zygote_restarts: AtomicU64::new(0),
                }
            })
            .collect();
        Arc::new(Pool {
            slots,
            budget_bytes,
            stop: AtomicBool::new(false),
            wake: (Mutex::new(false), Condvar::new()),
            thread: Mutex::new(None),
        })
    }

    /// Starts the background thread that keeps the pools full.
    pub fn start(self: &Arc<Self>) -> Result<(), Error> {
        let pool = self.clone();
        let handle = std::thread::Builder::new()
            .name("airlock-pool".into())
            .spawn(move || pool.refill_loop())
            .map_err(|e| Error::host(format!("cannot start the pool thread: {e}")))?;
        *lock(&self.thread) = Some(handle);
        Ok(())
    }

    /// The template called `name`.
    pub fn template(&self, name: &str) -> Option<&Template> {
        self.slots.iter().find(|s| s.template.name == name).map(|s| &s.template)
    }

    /// The templates' names.
    pub fn names(&self) -> Vec<String> {
        self.slots.iter().map(|s| s.template.name.clone()).collect()
    }

    /// Takes a ready sandbox of template `spec.template` (or `default`) that fits
    /// `spec`, if there is one; else forks one from the template's zygote, if it has
    /// a live one. `None`: create one cold.
    pub fn take(&self, kind: BackendKind, spec: &SandboxSpec) -> Option<Box<dyn Sandbox>> {
        let name = spec.template.as_deref().unwrap_or(DEFAULT_TEMPLATE);
        let slot = self.slots.iter().find(|s| s.template.name == name)?;
        if !slot.template.fits(kind, spec) {
            return self.fork(slot, kind, spec);
        }
        let mut dead = Vec::new();
        let found = {
            let mut st = lock(&slot.state);
            loop {
                match st.ready.pop_front() {
                    Some(sb) if sb.is_alive() => break Some(sb),
                    Some(sb) => dead.push(sb),
                    None => break None,
                }
            }
        };
        slot.discarded.fetch_add(dead.len() as u64, Ordering::Relaxed);
        for sb in dead {
            let _ = sb.destroy();
        }
        self.notify();
        match found {
            Some(sb) => {
                slot.served_warm.fetch_add(1, Ordering::Relaxed);
                Some(sb)
            }
            None => self.fork(slot, kind, spec),
        }
    }

    /// A sandbox forked for `spec` by the slot's zygote, if it has a live one that can
    /// make it; counts the request as forked or cold.
    fn fork(&self, slot: &Slot, kind: BackendKind, spec: &SandboxSpec) -> Option<Box<dyn Sandbox>> {
        let factory = slot.live_factory().filter(|_| slot.template.factory_fits(kind, spec));
        let made = factory.and_then(|f| match f.create(spec) {
            Ok(sb) => Some(sb),
            Err(e) => {
                tracing::warn!(template = %slot.template.name, "forking a sandbox failed ({e}); creating it cold");
                None
            }
        });
        match &made {
            Some(_) => slot.served_forked.fetch_add(1, Ordering::Relaxed),
            None => slot.served_cold.fetch_add(1, Ordering::Relaxed),
        };
        made
    }

    /// Every template and its pool.
    pub fn info(&self) -> Vec<TemplateInfo> {
        self.slots
            .iter()
            .map(|s| {
                let st = lock(&s.state);
                let status = if st.error.is_some() {
                    "failed"
                } else if s.template.pool_size == 0 {
                    "off"
                } else {
                    "ready"
                };
                TemplateInfo {
                    name: s.template.name.clone(),
                    backend: s.backend.as_ref().map(|b| b.kind()),
                    modules: s.template.modules.clone(),
                    imported: st.imported.clone(),
                    limits: s.template.limits,
                    pool_size: s.template.pool_size,
                    ready: st.ready.len(),
                    status: status.into(),
                    error: st.error.clone(),
                    prepare_ms: st.prepare_ms,
                    served_warm: s.served_warm.load(Ordering::Relaxed),
                    served_cold: s.served_cold.load(Ordering::Relaxed),
                    discarded: s.discarded.load(Ordering::Relaxed),
                    zygote: s.factory_info(),
                    served_forked: s.served_forked.load(Ordering::Relaxed),
                    zygote_restarts: s.zygote_restarts.load(Ordering::Relaxed),
                }
            })
            .collect()
    }

    /// Stops the refill thread (waiting for a sandbox it is preparing, which it then
    /// destroys) and destroys every ready sandbox.
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.notify();
        let handle = lock(&self.thread).take();
        if let Some(h) = handle
            && h.thread().id() != std::thread::current().id()
        {
            let _ = h.join();
        }
        for s in &self.slots {
            let drained: Vec<_> = lock(&s.state).ready.drain(..).collect();
            for sb in drained {
                let _ = sb.destroy();
            }
            // Its zygote goes when the last sandbox forked by it has been handed back.
            *lock(&s.factory) = FactoryState::Absent;
        }
    }

    /// Waits until every template is full or failed (tests, benchmarks), up to `timeout`.
    pub fn wait_filled(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let done = self.slots.iter().all(|s| {
                let st = lock(&s.state);
                st.error.is_some() || st.ready.len() >= s.template.pool_size
            });
            if done {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn notify(&self) {
        let (m, c) = &self.wake;
        *lock(m) = true;
        c.notify_all();
    }

    /// Bytes of `memory_bytes` limits charged by ready (and preparing) sandboxes.
    fn charged_bytes(&self) -> u64 {
        self.slots
            .iter()
            .map(|s| {
                let st = lock(&s.state);
                (st.ready.len() as u64 + u64::from(st.preparing)) * s.template.limits.memory_bytes
            })
            .sum()
    }

    fn refill_loop(&self) {
        while !self.stop.load(Ordering::SeqCst) {
            let mut worked = false;
            for slot in &self.slots {
                if self.stop.load(Ordering::SeqCst) {
                    break;
                }
                self.discard_dead(slot);
                let Some(backend) = &slot.backend else { continue };
                if slot.template.pool_size > 0 {
                    slot.ensure_factory(backend.as_ref());
                }
                {
                    let mut st = lock(&slot.state);
                    let retry_due = st.failed_at.is_none_or(|t| t.elapsed() >= RETRY_AFTER);
                    if st.ready.len() >= slot.template.pool_size || !retry_due {
                        continue;
                    }
                    drop(st);
                    if self.charged_bytes() + slot.template.limits.memory_bytes > self.budget_bytes {
                        continue;
                    }
                    st = lock(&slot.state);
                    st.preparing = true;
                }
                let started = Instant::now();
                let prepared = match slot.live_factory() {
                    Some(f) => {
                        fork_ready(f.as_ref(), &slot.template).or_else(|_| prepare(backend.as_ref(), &slot.template))
                    }
                    None => prepare(backend.as_ref(), &slot.template),
                };
                let mut st = lock(&slot.state);
                st.preparing = false;
                match prepared {
                    Ok((sb, imported)) => {
                        st.prepare_ms = Some(started.elapsed().as_millis() as u64);
                        st.imported = imported;
                        st.error = None;
                        st.failed_at = None;
                        if self.stop.load(Ordering::SeqCst) {
                            drop(st);
                            let _ = sb.destroy();
                        } else {
                            st.ready.push_back(sb);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(template = %slot.template.name, "preparing a pooled sandbox failed: {e}");
                        st.error = Some(e);
                        st.failed_at = Some(Instant::now());
                    }
                }
                worked = true;
            }
            if !worked {
                let (m, c) = &self.wake;
                let mut woken = lock(m);
                if !*woken {
                    woken = c.wait_timeout(woken, Duration::from_millis(500)).unwrap_or_else(|p| p.into_inner()).0;
                }
                *woken = false;
            }
        }
    }

    /// Drops ready sandboxes that died. An idle interpreter's death is only noticed
    /// when the host next talks to it, so each ready sandbox is also sent an empty
    /// cell every [`CHECK_EVERY`] (taken out of the pool meanwhile).
    fn discard_dead(&self, slot: &Slot) {
        let due: Vec<Box<dyn Sandbox>> = {
            let mut st = lock(&slot.state);
            if st.checked.elapsed() < CHECK_EVERY {
                Vec::new()
            } else {
                st.checked = Instant::now();
                st.ready.drain(..).collect()
            }
        };
        let mut checked = Vec::new();
        for mut sb in due {
            let mut cell = Cell::new(Language::Python, "pass", &slot.template.limits);
            cell.timeout_ms = 5_000;
            let ok = sb.is_alive() && sb.execute(&cell, &mut |_| {}).is_ok_and(|o| o.status == Status::Ok);
            checked.push((sb, ok));
        }
        let mut dead: Vec<Box<dyn Sandbox>> = Vec::new();
        {
            let mut st = lock(&slot.state);
            for (sb, ok) in checked {
                if ok { st.ready.push_back(sb) } else { dead.push(sb) }
            }
            let (alive, gone): (VecDeque<_>, VecDeque<_>) = st.ready.drain(..).partition(|sb| sb.is_alive());
            st.ready = alive;
            dead.extend(gone);
        }
        if !dead.is_empty() {
            tracing::warn!(template = %slot.template.name, "discarding {} pooled sandbox(es) that died", dead.len());
            slot.discarded.fetch_add(dead.len() as u64, Ordering::Relaxed);
        }
        for sb in dead {
            let _ = sb.destroy();
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Forks one sandbox of `t` from its zygote (the modules are already imported).
fn fork_ready(f: &dyn Factory, t: &Template) -> Result<(Box<dyn Sandbox>, Vec<String>), String> {
    match f.create(&SandboxSpec::new(t.limits)) {
        Ok(sb) => Ok((sb, f.imported())),
        Err(e) => {
            tracing::warn!(template = %t.name, "forking a pooled sandbox failed ({e}); creating one cold");
            Err(e.to_string())
        }
    }
}

/// Creates one sandbox of `t` and runs its pre-import cell. Returns the sandbox and
/// the modules it has imported, or why it could not be prepared.
pub fn prepare(backend: &dyn Backend, t: &Template) -> Result<(Box<dyn Sandbox>, Vec<String>), String> {
    let spec = SandboxSpec::new(t.limits);
    let mut sb = backend.create(&spec).map_err(|e| format!("creating a {} sandbox failed: {e}", t.backend))?;
    if t.modules.is_empty() {
        return Ok((sb, Vec::new()));
    }
    let mut cell = Cell::new(Language::Python, t.preimport_code(), &t.limits);
    // Which modules loaded, printed by the same cell.
    cell.code.push_str(&format!(
        "import sys as __airlock_sys\nprint(' '.join(m for m in ({},) if m in __airlock_sys.modules))\ndel __airlock_sys\n",
        t.modules.iter().map(|m| format!("{m:?}")).collect::<Vec<_>>().join(", ")
    ));
    let outcome = match sb.execute(&cell, &mut |_| {}) {
        Ok(o) => o,
        Err(e) => {
            let _ = sb.destroy();
            return Err(format!("pre-importing {} failed: {e}", t.modules.join(", ")));
        }
    };
    if outcome.status != Status::Ok || !sb.is_alive() {
        let _ = sb.destroy();
        return Err(describe_failure(t, &outcome));
    }
    let imported = outcome.stdout.split_whitespace().map(str::to_string).collect();
    Ok((sb, imported))
}

fn describe_failure(t: &Template, o: &Outcome) -> String {
    let why = match &o.error {
        Some(e) => format!("{}: {}", e.name, e.value),
        None => o.reason.clone().unwrap_or_else(|| format!("status {}", o.status)),
    };
    format!(
        "pre-importing {} on backend '{}' failed ({why}); install the module for the sandbox's interpreter or remove it from template '{}'",
        t.modules.join(", "),
        t.backend,
        t.name
    )
}

/// Starts the zygote of a configured template, forks one sandbox from it, runs an
/// empty cell and stops both (`airlock doctor`). `None`: its backend has no zygote.
/// `Some(Ok)`: the timings; `Some(Err)`: why the zygote does not work here (the pool
/// then makes that template's sandboxes cold).
pub fn check_zygote(registry: &crate::Registry, t: &crate::settings::TemplateSpec) -> Option<Result<String, String>> {
    let backend = registry.resolve(t.backend).ok()?;
    let recipe = Recipe {
        name: t.name.clone(),
        modules: t.modules.clone(),
        optional_modules: t.optional_modules,
        limits: t.limits,
    };
    let started = Instant::now();
    let factory = match backend.factory(&recipe) {
        Ok(None) => return None,
        Ok(Some(f)) => f,
        Err(e) => return Some(Err(e.to_string())),
    };
    let start_ms = started.elapsed().as_millis();
    let forked = Instant::now();
    let r = factory.create(&SandboxSpec::new(t.limits)).and_then(|mut sb| {
        let fork_ms = forked.elapsed().as_secs_f64() * 1000.0;
        let o = sb.execute(&Cell::new(Language::Python, "pass", &t.limits), &mut |_| {});
        let _ = sb.destroy();
        match o {
            Ok(o) if o.status == Status::Ok => Ok(fork_ms),
            Ok(o) => Err(Error::host(format!("a forked sandbox failed an empty cell: {}", o.status))),
            Err(e) => Err(e),
        }
    });
    Some(match r {
        Ok(fork_ms) => Ok(format!("zygote ready in {start_ms} ms; a fork took {fork_ms:.1} ms")),
        Err(e) => Err(format!("the zygote started but forking failed: {e}")),
    })
}

/// Prepares one sandbox of a configured template cold and destroys it (`airlock
/// doctor`): the modules it imported, or why the template cannot work here.
pub fn check_template(registry: &crate::Registry, t: &crate::settings::TemplateSpec) -> Result<Vec<String>, String> {
    let backend = registry.resolve(t.backend).map_err(|e| format!("no backend for this template: {e}"))?;
    let template = Template {
        name: t.name.clone(),
        backend: backend.kind(),
        modules: t.modules.clone(),
        optional_modules: t.optional_modules,
        limits: t.limits,
        pool_size: t.pool_size,
    };
    let (sb, imported) = prepare(backend.as_ref(), &template)?;
    let _ = sb.destroy();
    Ok(imported)
}
