//! Shared helpers for airlock's cross-backend tests: pick a backend (or say why it is
//! skipped), run code, and assert on outcomes.

use std::sync::{Arc, OnceLock};

use airlock_core::{
    Backend, BackendKind, Cell, Event, ExecRequest, Factory, Language, Limits, Outcome, SandboxSpec, run_once,
};
use airlock_service::{Config, Registry};

/// The registry every test uses, built once from the environment.
pub fn registry() -> &'static Registry {
    static REG: OnceLock<Registry> = OnceLock::new();
    REG.get_or_init(|| Registry::new(Config::from_env()))
}

/// The backend, or `None` after printing "skipped: <reason>" when it does not work here.
pub fn backend(kind: BackendKind) -> Option<Arc<dyn Backend>> {
    match registry().resolve(Some(kind)) {
        Ok(b) => Some(b),
        Err(e) => {
            eprintln!("skipped: {e}");
            None
        }
    }
}

/// A backend whose sandboxes come from its [`Factory`] (the `jail` zygote), so the
/// shared suites also run on forked sandboxes. Requests a factory cannot serve (the
/// host network) are created cold.
pub struct Forked {
    inner: Arc<dyn Backend>,
    factory: Box<dyn Factory>,
}

impl Backend for Forked {
    fn kind(&self) -> BackendKind {
        self.inner.kind()
    }

    fn isolation(&self) -> airlock_core::Isolation {
        self.inner.isolation()
    }

    fn probe(&self) -> airlock_core::Probe {
        self.inner.probe()
    }

    fn create(&self, spec: &SandboxSpec) -> Result<Box<dyn airlock_core::Sandbox>, airlock_core::Error> {
        if spec.network == airlock_core::NetworkPolicy::None {
            self.factory.create(spec)
        } else {
            self.inner.create(spec)
        }
    }
}

/// The `jail` backend through a zygote with the default template's modules, or `None`
/// after printing "skipped: <reason>".
pub fn jail_zygote() -> Option<Arc<dyn Backend>> {
    static FORKED: OnceLock<Option<Arc<dyn Backend>>> = OnceLock::new();
    FORKED
        .get_or_init(|| {
            let inner = backend(BackendKind::Jail)?;
            let recipe = airlock_core::Recipe {
                name: "test".into(),
                modules: vec!["numpy".into(), "pandas".into(), "matplotlib.pyplot".into()],
                optional_modules: true,
                limits: Limits::default(),
            };
            match inner.factory(&recipe) {
                Ok(Some(factory)) => Some(Arc::new(Forked { inner, factory }) as Arc<dyn Backend>),
                Ok(None) => {
                    eprintln!("skipped: the jail backend has no zygote here (AIRLOCK_JAIL_ZYGOTE=0)");
                    None
                }
                Err(e) => panic!("the jail zygote did not start: {e}"),
            }
        })
        .clone()
}

/// Runs Python code in a fresh sandbox with default limits.
pub fn run(b: &dyn Backend, code: &str) -> Outcome {
    run_req(b, &ExecRequest::python(code))
}

/// Runs Python code in a fresh sandbox with the given limits.
pub fn run_limited(b: &dyn Backend, code: &str, limits: Limits) -> Outcome {
    let mut r = ExecRequest::python(code);
    r.limits = limits;
    run_req(b, &r)
}

/// Runs a request in a fresh sandbox; panics on host errors (a test failure).
pub fn run_req(b: &dyn Backend, req: &ExecRequest) -> Outcome {
    run_once(b, req, None, &mut |_| {}).unwrap_or_else(|e| panic!("host error on {}: {e}", b.kind()))
}

/// Runs a request and returns the events it streamed too.
pub fn run_events(b: &dyn Backend, req: &ExecRequest) -> (Outcome, Vec<Event>) {
    let mut evs = Vec::new();
    let o = run_once(b, req, None, &mut |e| evs.push(e)).unwrap_or_else(|e| panic!("host error on {}: {e}", b.kind()));
    (o, evs)
}

/// A live sandbox for multi-cell tests.
pub struct Session {
    sandbox: Box<dyn airlock_core::Sandbox>,
    limits: Limits,
}

impl Session {
    /// Creates a sandbox with these limits.
    pub fn new(b: &dyn Backend, limits: Limits) -> Session {
        let sandbox = b.create(&SandboxSpec::new(limits)).unwrap_or_else(|e| panic!("create on {}: {e}", b.kind()));
        Session { sandbox, limits }
    }

    /// Runs a Python cell.
    pub fn cell(&mut self, code: &str) -> Outcome {
        self.cell_with(Language::Python, code, self.limits)
    }

    /// Runs a cell with explicit language and limits.
    pub fn cell_with(&mut self, lang: Language, code: &str, limits: Limits) -> Outcome {
        let cell = Cell::new(lang, code, &limits);
        self.sandbox.execute(&cell, &mut |_| {}).unwrap_or_else(|e| panic!("execute: {e}"))
    }

    /// The sandbox itself.
    pub fn sandbox(&mut self) -> &mut dyn airlock_core::Sandbox {
        self.sandbox.as_mut()
    }
}

/// Asserts a status, showing the whole outcome when it differs.
#[track_caller]
pub fn assert_status(o: &Outcome, want: airlock_core::Status) {
    assert_eq!(o.status, want, "unexpected status; outcome: {}", serde_json::to_string_pretty(o).unwrap());
}

/// True when the code's Python can import `module` inside this backend.
pub fn guest_has_module(b: &dyn Backend, module: &str) -> bool {
    let o = run(b, &format!("import importlib.util\nimportlib.util.find_spec({module:?}) is not None"));
    o.text() == Some("True")
}
