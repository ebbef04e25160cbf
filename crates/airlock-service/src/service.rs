//! The service: one-shot executions, sessions, files, the audit log, admission
//! control, reaping and shutdown — everything the HTTP API and the MCP server do,
//! without either transport. Transports parse their input into the calls below and
//! render what they return; nothing here knows about HTTP.
//!
//! Backends are synchronous: every backend call runs on a blocking thread
//! (`spawn_blocking`), and events a running cell produces are forwarded through a
//! bounded queue with back-pressure (`events.rs`).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use airlock_core::backend::{Canceller, run_in};
use airlock_core::paths::WorkspacePath;
use airlock_core::request::validate_env;
use airlock_core::units::format_size;
use airlock_core::{
    BackendKind, CellRequest, Error, ErrorInfo, ExecRequest, FileEntry, Isolation, Limits, NetworkPolicy, Outcome,
    SandboxSpec,
};
use serde_json::Value;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, oneshot, watch};

use crate::Registry;
use crate::admission::{Admission, Rejected, Slot};
use crate::events::{EventSender, Forwarder};
use crate::keys::{Principal, check_shape, hash_key};
use crate::metrics::{Gauges, Metrics};
use crate::session::{
    AfterUse, Busy, CreateSandbox, Lease, Phase, Resources, SandboxInfo, SandboxStatus, Session, State,
};
use crate::settings::{AuthMode, ServerSettings};
use crate::store::{
    END_SHUTDOWN, ExecutionEnd, ExecutionKind, ExecutionPage, ExecutionQuery, ExecutionRecord, ExecutionStart,
    IdempotencyKey, KeyUse, RecordStatus, SandboxStart, Store, cut, now_ms, rfc3339,
};

/// What the operator is told when `process` is served.
const UNCONFINED_WARNING: &str = "WARNING: the `process` backend is served: code sent to it runs with NO isolation, \
as this server's own user (it can read this server's files and keys). Serve it only to callers you trust; \
remove it from `backends` / `--backends` otherwise";

/// The kinds of refusal and failure, each with a stable code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceErrorKind {
    /// The request is malformed or out of range (`invalid_request`).
    InvalidRequest,
    /// No valid API key (`unauthorized`).
    Unauthorized,
    /// No such sandbox, file or execution, or not yours (`not_found`).
    NotFound,
    /// The sandbox is running another cell (`busy`).
    Busy,
    /// The sandbox has stopped (`sandbox_gone`).
    SandboxGone,
    /// The server is at a cap and the queue did not help (`overloaded`).
    Overloaded,
    /// The key holds as many sandboxes as it may (`quota_exceeded`).
    QuotaExceeded,
    /// Something is larger than its limit (`too_large`).
    TooLarge,
    /// The backend cannot run here (`backend_unavailable`).
    BackendUnavailable,
    /// The server is shutting down (`shutting_down`).
    ShuttingDown,
    /// The audit log cannot be written, so nothing new runs (`audit_unavailable`).
    AuditUnavailable,
    /// A request with this idempotency key is still running (`idempotency_in_progress`).
    IdempotencyInProgress,
    /// The idempotency key was used for a different request (`idempotency_mismatch`).
    IdempotencyMismatch,
    /// The idempotency key's request ran, but its answer was not kept
    /// (`replay_unavailable`).
    ReplayUnavailable,
    /// A fault of the host (`internal`).
    Internal,
}

/// A refused request or a failure, with what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceError {
    /// What kind of error.
    pub kind: ServiceErrorKind,
    /// A sentence for the caller.
    pub message: String,
    /// For `overloaded`: seconds to wait before retrying.
    pub retry_after_s: Option<u64>,
    /// For `internal`: the id under which the cause was logged (the cause itself, which
    /// may name host paths, never reaches the caller).
    pub error_id: Option<String>,
}

impl std::fmt::Display for ServiceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code(), self.message)
    }
}

impl std::error::Error for ServiceError {}

impl ServiceError {
    fn new(kind: ServiceErrorKind, message: impl Into<String>) -> Self {
        ServiceError { kind, message: message.into(), retry_after_s: None, error_id: None }
    }

    /// An `invalid_request`.
    pub fn invalid(m: impl Into<String>) -> Self {
        Self::new(ServiceErrorKind::InvalidRequest, m)
    }

    /// An `unauthorized`.
    pub fn unauthorized(m: impl Into<String>) -> Self {
        Self::new(ServiceErrorKind::Unauthorized, m)
    }

    /// A `not_found`.
    pub fn not_found(m: impl Into<String>) -> Self {
        Self::new(ServiceErrorKind::NotFound, m)
    }

    /// A `busy`.
    pub fn busy(m: impl Into<String>) -> Self {
        Self::new(ServiceErrorKind::Busy, m)
    }

    /// A `sandbox_gone`.
    pub fn gone(m: impl Into<String>) -> Self {
        Self::new(ServiceErrorKind::SandboxGone, m)
    }

    /// An `internal`: `detail` (which may name host paths or airlock's internals) is
    /// logged under a new error id, and the caller gets only that id.
    pub fn internal(detail: impl Into<String>) -> Self {
        let id = airlock_core::new_id("err");
        tracing::error!(error_id = %id, "{}", detail.into());
        ServiceError {
            error_id: Some(id.clone()),
            ..Self::new(
                ServiceErrorKind::Internal,
                format!(
                    "the server could not complete this request (error {id}); the operator can find the cause in the server's log under that id"
                ),
            )
        }
    }

    /// An `overloaded` with a retry hint.
    pub fn overloaded(m: impl Into<String>, retry_after_s: u64) -> Self {
        ServiceError { retry_after_s: Some(retry_after_s), ..Self::new(ServiceErrorKind::Overloaded, m) }
    }

    /// The stable, machine-readable code.
    pub fn code(&self) -> &'static str {
        match self.kind {
            ServiceErrorKind::InvalidRequest => "invalid_request",
            ServiceErrorKind::Unauthorized => "unauthorized",
            ServiceErrorKind::NotFound => "not_found",
            ServiceErrorKind::Busy => "busy",
            ServiceErrorKind::SandboxGone => "sandbox_gone",
            ServiceErrorKind::Overloaded => "overloaded",
            ServiceErrorKind::QuotaExceeded => "quota_exceeded",
            ServiceErrorKind::TooLarge => "too_large",
            ServiceErrorKind::BackendUnavailable => "backend_unavailable",
            ServiceErrorKind::ShuttingDown => "shutting_down",
            ServiceErrorKind::AuditUnavailable => "audit_unavailable",
            ServiceErrorKind::IdempotencyInProgress => "idempotency_in_progress",
            ServiceErrorKind::IdempotencyMismatch => "idempotency_mismatch",
            ServiceErrorKind::ReplayUnavailable => "replay_unavailable",
            ServiceErrorKind::Internal => "internal",
        }
    }

    /// Every kind, for [`ServiceError::from_code`].
    const KINDS: [ServiceErrorKind; 15] = [
        ServiceErrorKind::InvalidRequest,
        ServiceErrorKind::Unauthorized,
        ServiceErrorKind::NotFound,
        ServiceErrorKind::Busy,
        ServiceErrorKind::SandboxGone,
        ServiceErrorKind::Overloaded,
        ServiceErrorKind::QuotaExceeded,
        ServiceErrorKind::TooLarge,
        ServiceErrorKind::BackendUnavailable,
        ServiceErrorKind::ShuttingDown,
        ServiceErrorKind::AuditUnavailable,
        ServiceErrorKind::IdempotencyInProgress,
        ServiceErrorKind::IdempotencyMismatch,
        ServiceErrorKind::ReplayUnavailable,
        ServiceErrorKind::Internal,
    ];

    /// The error a stable code names (an answer kept for an idempotent retry);
    /// unknown codes are `internal`.
    pub fn from_code(code: &str, message: impl Into<String>) -> Self {
        let kind =
            Self::KINDS.into_iter().find(|k| Self::new(*k, "").code() == code).unwrap_or(ServiceErrorKind::Internal);
        Self::new(kind, message)
    }
}

impl From<Error> for ServiceError {
    fn from(e: Error) -> Self {
        if let Error::Host(detail) = e {
            return ServiceError::internal(detail);
        }
        let kind = match &e {
            Error::Invalid(_) => ServiceErrorKind::InvalidRequest,
            Error::Unavailable { .. } => ServiceErrorKind::BackendUnavailable,
            Error::NotFound(_) => ServiceErrorKind::NotFound,
            Error::TooLarge(_) => ServiceErrorKind::TooLarge,
            Error::SandboxGone(_) => ServiceErrorKind::SandboxGone,
            Error::Busy(_) => ServiceErrorKind::Busy,
            Error::Host(_) => ServiceErrorKind::Internal,
        };
        let message = match e {
            Error::Invalid(m) | Error::NotFound(m) | Error::SandboxGone(m) | Error::Busy(m) => m,
            Error::TooLarge(m) => format!("too large: {m}"),
            other => other.to_string(),
        };
        ServiceError::new(kind, message)
    }
}

/// One live session per owner, counted; the count drops with the token.
pub struct QuotaToken {
    owner: Option<String>,
    counts: Weak<Mutex<HashMap<Option<String>, u32>>>,
}

impl Drop for QuotaToken {
    fn drop(&mut self) {
        if let Some(c) = self.counts.upgrade() {
            let mut m = c.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = m.get_mut(&self.owner) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    m.remove(&self.owner);
                }
            }
        }
    }
}

/// A session created (or, for a repeated idempotency key, found).
#[derive(Debug, Clone)]
pub struct Created {
    /// The session.
    pub info: SandboxInfo,
    /// True when an earlier request with the same idempotency key created it.
    pub replayed: bool,
}

/// The longest `Idempotency-Key` accepted, in bytes.
pub const MAX_IDEMPOTENCY_KEY: usize = 255;

/// JSON with object keys sorted, so that the same document always has the same text
/// (a request's fingerprint must not depend on the order its client wrote keys in).
fn canonical_json(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                canonical_json(&m[k], out);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_json(x, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// An idempotency key claimed for a sandbox creation: released (so that a retry can
/// create) unless the creation bound it, whatever way the request ends.
struct KeyClaim {
    store: Arc<dyn Store>,
    /// `None` once bound.
    key: Option<IdempotencyKey>,
}

impl Drop for KeyClaim {
    fn drop(&mut self) {
        let Some(key) = self.key.take() else { return };
        let store = self.store.clone();
        let release = move || {
            if let Err(e) = store.release_key(&key) {
                tracing::warn!("releasing an idempotency key: {e}");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn_blocking(release);
            }
            Err(_) => release(),
        }
    }
}

/// Counts a sandbox creation in progress for as long as it lives.
struct Creating<'a>(&'a AtomicUsize);

impl<'a> Creating<'a> {
    fn new(n: &'a AtomicUsize) -> Self {
        n.fetch_add(1, Ordering::SeqCst);
        Creating(n)
    }
}

impl Drop for Creating<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// An execution running now.
struct Running {
    backend: BackendKind,
    oneshot: bool,
    canceller: Option<Canceller>,
    /// Set when shutdown stops it at the end of the drain: the drain timeout in ms.
    drained: Option<u64>,
}

/// Whether the audit log holds an execution's end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuditState {
    /// Written.
    Recorded,
    /// Not written yet: the store refused it; it is kept in memory and written when the
    /// store takes writes again (lost if the server stops first).
    Pending,
    /// Not written and not kept (too many records were pending): after a restart the
    /// record says `lost`.
    Unrecorded,
}

/// How a run ended, with what the audit log holds of it (from [`RunHandle::finish`]).
#[derive(Debug)]
pub struct Finished {
    /// The outcome, or why there is none.
    pub result: Result<Outcome, ServiceError>,
    /// The execution this answer is about: the run's own id, or, for a replay, the
    /// first request's. `None` when no execution was recorded (the id would lead
    /// nowhere, so it is not shown).
    pub execution_id: Option<String>,
    /// Whether the end is in the audit log.
    pub audit: AuditState,
    /// True when this is the kept answer of an earlier request with the same
    /// idempotency key, not a new run.
    pub replayed: bool,
}

/// A write the audit store refused, kept to be retried.
enum PendingWrite {
    /// An execution's end.
    End { id: String, end: Box<ExecutionEnd> },
    /// A session's end.
    SandboxEnd { id: String, cause: &'static str, at_ms: u64 },
}

impl PendingWrite {
    fn bytes(&self) -> usize {
        match self {
            PendingWrite::End { end, .. } => {
                256 + end.stdout.len() + end.stderr.len() + end.response.as_ref().map_or(0, |r| r.len())
            }
            PendingWrite::SandboxEnd { .. } => 128,
        }
    }
}

/// Records kept in memory while the store refuses writes, at most; beyond, an end is
/// not kept (the client is told `unrecorded`).
const MAX_PENDING_WRITES: usize = 4096;
/// Bytes kept in memory for pending records, at most.
const MAX_PENDING_BYTES: usize = 64 << 20;
/// How often pending records are retried while the store refuses writes.
const AUDIT_RETRY_INTERVAL: Duration = Duration::from_millis(500);
/// How often the audit store is pruned (it is also pruned after much has been written).
const PRUNE_INTERVAL: Duration = Duration::from_secs(600);

#[derive(Default)]
struct Backlog {
    pending: VecDeque<PendingWrite>,
    bytes: usize,
    /// The last error of the store while degraded.
    fault: Option<String>,
}

/// The state of the audit log's writes: while `degraded`, records wait in memory and
/// no new execution starts.
#[derive(Default)]
struct AuditWrites {
    degraded: AtomicBool,
    backlog: Mutex<Backlog>,
    /// Bytes written since the last pruning pass (wakes the pruner past a share of
    /// `audit_max_bytes`).
    written: AtomicU64,
    prune_now: Arc<Notify>,
}

/// The health summary (`GET /healthz`).
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Health {
    /// `ok`; `degraded` while the audit log cannot be written (new executions are
    /// refused); `draining` during shutdown.
    pub status: String,
    /// Why the status is not `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Audit records (ends of executions and sessions) waiting in memory to be written.
    pub audit_pending: u64,
    /// airlock's version.
    pub version: String,
    /// Live sessions.
    pub sandboxes: u64,
    /// Backend operations running.
    pub running: u64,
    /// Requests waiting for a slot.
    pub queue_depth: u64,
    /// The backends this server serves (and that work here).
    pub backends: Vec<BackendKind>,
    /// The backend of requests that name none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_backend: Option<BackendKind>,
}

/// The service. Create it with [`Service::new`] and share it as `Arc<Service>`.
pub struct Service {
    registry: Arc<Registry>,
    settings: ServerSettings,
    store: Arc<dyn Store>,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    quotas: Arc<Mutex<HashMap<Option<String>, u32>>>,
    admission: Admission,
    metrics: Metrics,
    running: Mutex<HashMap<String, Running>>,
    creating: AtomicUsize,
    file_transfers: Arc<Semaphore>,
    auth_required: AtomicBool,
    shutting_down: AtomicBool,
    started: Instant,
    templates: Vec<crate::settings::TemplateSpec>,
    audit: AuditWrites,
    served: OnceLock<Vec<BackendKind>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs a blocking closure on the blocking pool, turning a panic into an error.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, ServiceError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ServiceError::internal(format!("a backend operation failed unexpectedly: {e}")))
}

/// Moves the `limits` of a JSON request over `base`, so omitted fields keep `base`'s
/// values rather than airlock's defaults. Unknown fields stay, to be refused by name.
pub fn overlay_limits(body: &mut Value, base: &Limits) -> Result<(), Error> {
    let obj = body.as_object_mut().ok_or_else(|| Error::invalid("the request body must be a JSON object"))?;
    let mut limits = serde_json::to_value(base).map_err(|e| Error::host(e.to_string()))?;
    match obj.remove("limits") {
        None | Some(Value::Null) => {}
        Some(Value::Object(given)) => {
            let l = limits.as_object_mut().expect("limits serialise to an object");
            for (k, v) in given {
                l.insert(k, v);
            }
        }
        Some(_) => return Err(Error::invalid("`limits` must be an object, e.g. {\"timeout_ms\": 5000}")),
    }
    obj.insert("limits".into(), limits);
    Ok(())
}

/// Deserialises a request, naming where in the document a problem is
/// (`limits: unknown field `timeout`, ...`).
fn from_json<T: serde::de::DeserializeOwned>(body: Value) -> Result<T, Error> {
    serde_path_to_error::deserialize(body).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path.is_empty() || path == "." {
            Error::invalid(inner.to_string())
        } else {
            Error::invalid(format!("{path}: {inner}"))
        }
    })
}

impl Service {
    /// A service over `registry` and `store` with `settings`. Call
    /// [`Service::start`] from inside a Tokio runtime before serving.
    pub fn new(settings: ServerSettings, registry: Registry, store: Arc<dyn Store>) -> Arc<Self> {
        let admission = Admission::new(
            settings.max_running,
            settings.max_sandboxes,
            settings.max_queue,
            Duration::from_millis(settings.queue_timeout_ms),
        );
        let templates = settings.templates().unwrap_or_else(|e| {
            tracing::error!("templates ignored: {e}");
            Vec::new()
        });
        Arc::new(Service {
            registry: Arc::new(registry),
            file_transfers: Arc::new(Semaphore::new(settings.max_file_transfers)),
            settings,
            store,
            sessions: Mutex::new(HashMap::new()),
            quotas: Arc::new(Mutex::new(HashMap::new())),
            admission,
            metrics: Metrics::default(),
            running: Mutex::new(HashMap::new()),
            creating: AtomicUsize::new(0),
            auth_required: AtomicBool::new(false),
            shutting_down: AtomicBool::new(false),
            started: Instant::now(),
            templates,
            audit: AuditWrites::default(),
            served: OnceLock::new(),
        })
    }

    /// Start-up work: marks executions of dead servers `lost` (and their sessions
    /// ended), removes sandboxes dead servers left behind, probes the backends, and
    /// starts the reaper, the task that retries audit writes the store refused, and the
    /// audit log's pruner. Returns lines describing what was recovered.
    pub async fn start(self: &Arc<Self>) -> Result<Vec<String>, ServiceError> {
        let svc = self.clone();
        blocking(move || svc.check_backends()).await??;
        let store = self.store.clone();
        let registry = self.registry.clone();
        let report = blocking(move || -> Result<Vec<String>, Error> {
            let mut lines = Vec::new();
            let lost = store.recover_lost()?;
            if lost > 0 {
                lines.push(format!("audit log: marked {lost} execution(s) of a stopped server as lost"));
            }
            for (kind, r) in registry.cleanup_stale() {
                match r {
                    Ok(found) => lines.extend(found),
                    Err(e) => lines.push(format!("{kind}: cleaning up stale sandboxes failed: {e}")),
                }
            }
            let _ = registry.probes();
            Ok(lines)
        })
        .await??;
        self.start_pool().await?;
        self.spawn_reaper();
        self.spawn_audit_tasks();
        Ok(report)
    }

    /// Builds the warm pool of the configured templates and starts filling it in
    /// the background (called by [`Service::start`]).
    pub async fn start_pool(self: &Arc<Self>) -> Result<(), ServiceError> {
        if self.registry.pool().is_some() {
            return Ok(());
        }
        let registry = self.registry.clone();
        // A template that names no backend runs on the server's default, never on a
        // backend the server does not serve.
        let default = self.default_backend_kind();
        let templates = self
            .templates
            .iter()
            .cloned()
            .map(|mut t| {
                t.backend = t.backend.or(default);
                t
            })
            .collect();
        let budget = self.settings.pool_memory_bytes;
        let pool = blocking(move || registry.build_pool(templates, budget)).await?;
        pool.start()?;
        Ok(())
    }

    /// The templates and their pools (`GET /v1/templates`). Before the pool is
    /// started, the configured templates with nothing ready.
    pub fn templates(&self) -> Vec<crate::pool::TemplateInfo> {
        if let Some(p) = self.registry.pool() {
            return p.info();
        }
        self.templates
            .iter()
            .map(|t| crate::pool::TemplateInfo {
                name: t.name.clone(),
                backend: t.backend,
                modules: t.modules.clone(),
                imported: Vec::new(),
                limits: t.limits,
                pool_size: t.pool_size,
                ready: 0,
                status: "off".into(),
                error: None,
                prepare_ms: None,
                served_warm: 0,
                served_cold: 0,
                discarded: 0,
                zygote: None,
                served_forked: 0,
                zygote_restarts: 0,
            })
            .collect()
    }

    /// Checks a request's template and returns the backend it implies: the
    /// request's own, else the template's. Unknown names are refused.
    fn check_template(
        &self,
        template: Option<&str>,
        backend: Option<BackendKind>,
    ) -> Result<Option<BackendKind>, ServiceError> {
        let Some(name) = template else { return Ok(backend) };
        let Some(t) = self.templates.iter().find(|t| t.name == name) else {
            let names = self.templates.iter().map(|t| t.name.as_str()).collect::<Vec<_>>().join(", ");
            return Err(ServiceError::invalid(format!(
                "unknown template '{name}': this server has {names} (GET /v1/templates lists them)"
            )));
        };
        match (backend, t.backend) {
            (Some(b), Some(tb)) if b != tb => Err(ServiceError::invalid(format!(
                "template '{name}' runs on backend '{tb}', but the request asks for '{b}'; leave `backend` out or pick another template"
            ))),
            (b, tb) => Ok(b.or(tb)),
        }
    }

    /// The backends this server serves and that work here, in the order a request
    /// that names none would get them (jail, wasm, microvm, process). Without a
    /// `backends` setting: every isolating backend that works, plus those the operator
    /// named (`default_backend`, templates); `process` is never served unless named.
    pub fn served_backends(&self) -> &[BackendKind] {
        self.served.get_or_init(|| {
            let named = self.settings.named_backends();
            let explicit = !self.settings.backends.is_empty();
            let order = [BackendKind::Jail, BackendKind::Wasm, BackendKind::Microvm, BackendKind::Process];
            order
                .into_iter()
                .filter(|k| named.contains(k) || (!explicit && crate::isolation_of(*k) != Isolation::None))
                .filter(|k| self.registry.probe(*k).is_some_and(|p| p.available))
                .collect()
        })
    }

    /// The backend of requests that name none: the configured default, else the
    /// first served one. `None` when nothing is served.
    pub fn default_backend_kind(&self) -> Option<BackendKind> {
        self.settings.default_backend.or_else(|| self.served_backends().first().copied())
    }

    /// Checks at start-up that every backend the operator named works here and that
    /// something is served.
    fn check_backends(&self) -> Result<(), ServiceError> {
        for k in self.settings.named_backends() {
            match self.registry.probe(k) {
                Some(p) if p.available => {}
                Some(p) => {
                    return Err(ServiceError::invalid(format!(
                        "backend '{k}' is configured but does not work here: {}{}",
                        p.detail,
                        p.fix.map(|f| format!(" (fix: {f})")).unwrap_or_default()
                    )));
                }
                None => return Err(ServiceError::invalid(format!("backend '{k}' is not built into this airlock"))),
            }
        }
        if self.served_backends().is_empty() {
            let why = [BackendKind::Jail, BackendKind::Wasm, BackendKind::Microvm]
                .into_iter()
                .filter_map(|k| self.registry.probe(k).map(|p| format!("{k}: {}", p.detail)))
                .collect::<Vec<_>>()
                .join("; ");
            return Err(ServiceError::invalid(format!(
                "no isolating backend works on this host ({why}); run `airlock doctor` to fix one, or serve \
                 the unconfined `process` backend explicitly with `--backends process`"
            )));
        }
        if self.served_backends().contains(&BackendKind::Process) {
            tracing::warn!("{}", UNCONFINED_WARNING);
        }
        Ok(())
    }

    /// Start-up warnings for the operator (printed by `airlock serve` and `airlock mcp`).
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.served_backends().contains(&BackendKind::Process) {
            out.push(UNCONFINED_WARNING.to_string());
        }
        if self.settings.allow_host_network {
            out.push(
                "allow_host_network is on: requests may put code on this host's network (jail), where it \
                 reaches every service on loopback; API keys are required on every request"
                    .to_string(),
            );
        }
        out
    }

    /// The backend a request gets: the one it names (or its template's), else the
    /// default; refused with `400` when this server does not serve it.
    fn backend_for(&self, wanted: Option<BackendKind>) -> Result<Arc<dyn airlock_core::Backend>, ServiceError> {
        let served = self.served_backends();
        let list = || served.iter().map(|b| b.as_str()).collect::<Vec<_>>().join(", ");
        let kind = match wanted.or(self.settings.default_backend) {
            Some(k) if served.contains(&k) => k,
            Some(k) => {
                let why = if k == BackendKind::Process { " (it runs code without isolation)" } else { "" };
                return Err(ServiceError::invalid(format!(
                    "this server does not serve backend '{k}'{why}; it serves {}: leave `backend` out for the default{}",
                    list(),
                    self.default_backend_kind().map(|d| format!(" ({d})")).unwrap_or_default()
                )));
            }
            None => *served.first().ok_or_else(|| {
                ServiceError::new(
                    ServiceErrorKind::BackendUnavailable,
                    "this server serves no backend that works here; the operator should run `airlock doctor`",
                )
            })?,
        };
        Ok(self.registry.resolve(Some(kind))?)
    }

    /// Refuses `network: host` unless the operator allows it.
    fn check_network(&self, network: NetworkPolicy) -> Result<(), ServiceError> {
        if network == NetworkPolicy::Host && !self.settings.allow_host_network {
            return Err(ServiceError::invalid(
                "network 'host' is disabled on this server (the operator enables it with allow_host_network = true); \
                 use network 'none'",
            ));
        }
        Ok(())
    }

    /// The settings.
    pub fn settings(&self) -> &ServerSettings {
        &self.settings
    }

    /// The backend registry.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Requires API keys on every request (set when listening beyond loopback).
    pub fn set_auth_required(&self, on: bool) {
        self.auth_required.store(on, Ordering::SeqCst);
    }

    /// Whether API keys are required.
    pub fn auth_required(&self) -> bool {
        self.settings.auth == AuthMode::Required
            || self.settings.allow_host_network
            || self.auth_required.load(Ordering::SeqCst)
    }

    /// The unauthenticated local principal (stdio MCP, loopback without a key).
    pub fn local_principal(&self) -> Principal {
        Principal::local(self.settings.per_key_max_sandboxes)
    }

    /// Who is asking, from the key they presented (if any).
    pub async fn authenticate(&self, presented: Option<&str>) -> Result<Principal, ServiceError> {
        let Some(key) = presented else {
            if self.auth_required() {
                return Err(ServiceError::unauthorized(
                    "this server requires an API key: send `Authorization: Bearer <key>` (create one with `airlock keys create`)",
                ));
            }
            return Ok(self.local_principal());
        };
        check_shape(key).map_err(|e| ServiceError::unauthorized(ServiceError::from(e).message))?;
        let hash = hash_key(key);
        let store = self.store.clone();
        let found = blocking(move || store.key_by_hash(&hash)).await??;
        match found {
            Some(k) => Ok(Principal::of_key(&k, self.settings.per_key_max_sandboxes)),
            None => Err(ServiceError::unauthorized("this API key is unknown or has been revoked")),
        }
    }

    fn check_open(&self) -> Result<(), ServiceError> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(ServiceError::new(
                ServiceErrorKind::ShuttingDown,
                "the server is shutting down; retry against another instance or after it restarts",
            ));
        }
        Ok(())
    }

    fn rejected(&self, r: Rejected) -> ServiceError {
        self.metrics.rejected(r.reason);
        if r.reason == "shutting_down" {
            return ServiceError::new(ServiceErrorKind::ShuttingDown, r.message);
        }
        ServiceError::overloaded(r.message, self.metrics.retry_after_s())
    }

    async fn admit(&self, slot: Slot) -> Result<OwnedSemaphorePermit, ServiceError> {
        if slot == Slot::Run {
            self.check_recording()?;
        }
        let (permit, waited) = self.admission.admit(slot).await.map_err(|r| self.rejected(r))?;
        self.metrics.queue_wait(waited);
        Ok(permit)
    }

    /// Parses a one-shot request from JSON: omitted limits take the server's default
    /// limits, an omitted backend the server's default backend.
    pub fn request_from_json(&self, mut body: Value) -> Result<ExecRequest, ServiceError> {
        overlay_limits(&mut body, &self.settings.default_limits)?;
        Ok(from_json(body)?)
    }

    /// Validates and admits a one-shot execution. It runs when [`Pending::run`] is
    /// called; refusals (bad input, `429`) come back here, before anything streams.
    pub async fn prepare_execute(
        self: &Arc<Self>,
        principal: &Principal,
        mut req: ExecRequest,
    ) -> Result<Pending, ServiceError> {
        self.check_open()?;
        let wanted = self.check_template(req.template.as_deref(), req.backend)?;
        req.validate(&self.settings.max_limits)?;
        self.check_network(req.network)?;
        let backend = self.backend_for(wanted)?;
        req.backend = Some(backend.kind());
        let permit = self.admit(Slot::Run).await?;
        Ok(self.pending(principal, Work::Oneshot { req }, backend.kind(), permit))
    }

    fn pending(
        self: &Arc<Self>,
        p: &Principal,
        work: Work,
        backend: BackendKind,
        permit: OwnedSemaphorePermit,
    ) -> Pending {
        let id = match &work {
            Work::Cell { id, .. } => id.clone(),
            Work::Oneshot { .. } => airlock_core::new_id("exe"),
        };
        Pending {
            service: self.clone(),
            id,
            principal: p.clone(),
            backend,
            accepted: Instant::now(),
            accepted_ms: now_ms(),
            permit: Some(permit),
            work: Some(work),
            idempotency: None,
        }
    }

    /// Runs a one-shot execution to its end (no streaming).
    pub async fn execute(self: &Arc<Self>, principal: &Principal, req: ExecRequest) -> Result<Outcome, ServiceError> {
        self.prepare_execute(principal, req).await?.run(None).await
    }

    /// One of the caller's live sessions, or why there is none (`404`, or `410` for
    /// one of theirs that ended when the server restarted).
    async fn session(&self, p: &Principal, id: &str) -> Result<Arc<Session>, ServiceError> {
        let found = lock(&self.sessions).get(id).filter(|s| s.owned_by(p.key_id.as_deref())).cloned();
        match found {
            Some(s) => Ok(s),
            None => Err(self.no_session(p, id).await),
        }
    }

    /// Why the caller's sandbox `id` is not here. A sandbox of the caller's that ended
    /// because its server stopped (shut down, crashed or was killed) is `410` "the
    /// server restarted"; anything else, another key's sandboxes included, is the
    /// same `404` as an id that never existed.
    async fn no_session(&self, p: &Principal, id: &str) -> ServiceError {
        let not_found = ServiceError::not_found(format!(
            "no sandbox '{id}' (it may have been deleted, or destroyed after its idle timeout or lifetime)"
        ));
        let plausible =
            id.len() <= 100 && id.starts_with("sbx_") && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !plausible {
            return not_found;
        }
        let store = self.store.clone();
        let (id2, key) = (id.to_string(), p.key_id.clone());
        match blocking(move || store.sandbox(&id2, key.as_deref())).await {
            Ok(Ok(Some(r))) if r.ended_by_restart() => {
                let how = if r.end_cause.as_deref() == Some(END_SHUTDOWN) {
                    "it shut down"
                } else {
                    "it stopped unexpectedly (a crash or a kill)"
                };
                let when = r.ended_at_ms.map(|t| format!(", noted at {}", rfc3339(t))).unwrap_or_default();
                ServiceError::gone(format!(
                    "sandbox {id} ended when the server restarted ({how}{when}); its interpreter, variables and files are gone: create a new sandbox"
                ))
            }
            Ok(Err(e)) => {
                tracing::warn!(sandbox = %id, "looking up an old sandbox: {e}");
                not_found
            }
            _ => not_found,
        }
    }

    /// Parses the JSON body of a cell (`POST /v1/sandboxes/{id}/execute`), naming
    /// where in the document a problem is.
    pub fn cell_from_json(&self, body: Value) -> Result<CellRequest, ServiceError> {
        Ok(from_json(body)?)
    }

    /// Validates and admits a cell of a session: what the sandbox fixed at creation
    /// is inherited, and a cell that tries to change it is refused. Refusals come back
    /// here: `404`, `409` if a cell is running, `410` if the sandbox stopped, `429` at
    /// the cap.
    pub async fn prepare_cell(
        self: &Arc<Self>,
        principal: &Principal,
        sandbox_id: &str,
        cell: CellRequest,
    ) -> Result<Pending, ServiceError> {
        self.check_open()?;
        let session = self.session(principal, sandbox_id).await?;
        let req = cell.resolve(&session.terms(), &self.settings.max_limits)?;
        let id = airlock_core::new_id("exe");
        // If admission fails, or this future is dropped while it waits, the lease
        // puts the sandbox back.
        let lease = session.take(Busy::Cell(id.clone()))?;
        let permit = self.admit(Slot::Run).await?;
        let backend = session.backend;
        Ok(self.pending(principal, Work::Cell { id, lease, req }, backend, permit))
    }

    /// Runs a cell to its end (no streaming).
    pub async fn execute_cell(
        self: &Arc<Self>,
        principal: &Principal,
        sandbox_id: &str,
        cell: CellRequest,
    ) -> Result<Outcome, ServiceError> {
        self.prepare_cell(principal, sandbox_id, cell).await?.run(None).await
    }

    /// Parses the body of `POST /v1/sandboxes`: omitted limits take the server's defaults.
    pub fn create_request_from_json(&self, mut body: Value) -> Result<CreateSandbox, ServiceError> {
        overlay_limits(&mut body, &self.settings.default_limits)?;
        Ok(from_json(body)?)
    }

    fn reserve_quota(&self, p: &Principal) -> Result<QuotaToken, ServiceError> {
        let mut q = lock(&self.quotas);
        let n = q.entry(p.key_id.clone()).or_default();
        if *n >= p.max_sandboxes {
            self.metrics.rejected("quota");
            return Err(ServiceError::new(
                ServiceErrorKind::QuotaExceeded,
                format!(
                    "{} already holds {} live sandbox(es), its limit; delete one (DELETE /v1/sandboxes/{{id}}) first",
                    match &p.key_id {
                        Some(k) => format!("API key {k}"),
                        None => "the local user".to_string(),
                    },
                    p.max_sandboxes
                ),
            ));
        }
        *n += 1;
        Ok(QuotaToken { owner: p.key_id.clone(), counts: Arc::downgrade(&self.quotas) })
    }

    /// Creates a session.
    pub async fn create_sandbox(
        self: &Arc<Self>,
        principal: &Principal,
        req: CreateSandbox,
    ) -> Result<SandboxInfo, ServiceError> {
        Ok(self.create_sandbox_keyed(principal, req, None).await?.info)
    }

    /// Creates a session; with an idempotency key (from [`Service::idempotency_key`]),
    /// a repeated request gets the sandbox the first one created (`replayed`), or is
    /// told that it is still being created, and creates nothing.
    pub async fn create_sandbox_keyed(
        self: &Arc<Self>,
        principal: &Principal,
        req: CreateSandbox,
        key: Option<IdempotencyKey>,
    ) -> Result<Created, ServiceError> {
        self.check_open()?;
        let s = &self.settings;
        req.limits.validate(&s.max_limits)?;
        validate_env(&req.env)?;
        req.guard.validate()?;
        let idle = req.idle_timeout_ms.unwrap_or(s.idle_timeout_ms);
        let life = req.max_lifetime_ms.unwrap_or(s.max_lifetime_ms);
        if idle == 0 || idle > s.max_idle_timeout_ms {
            return Err(ServiceError::invalid(format!(
                "idle_timeout_ms = {idle} is out of range: use 1 to {} (this server's maximum)",
                s.max_idle_timeout_ms
            )));
        }
        if life == 0 || life > s.max_max_lifetime_ms {
            return Err(ServiceError::invalid(format!(
                "max_lifetime_ms = {life} is out of range: use 1 to {} (this server's maximum)",
                s.max_max_lifetime_ms
            )));
        }
        if req.metadata.len() > 32 || req.metadata.iter().any(|(k, v)| k.is_empty() || k.len() > 64 || v.len() > 512) {
            return Err(ServiceError::invalid(
                "metadata takes at most 32 entries, with keys of 1 to 64 bytes and values up to 512 bytes",
            ));
        }
        let wanted = self.check_template(req.template.as_deref(), req.backend)?;
        self.check_network(req.network)?;
        let backend = self.backend_for(wanted)?;
        let claim = match key {
            None => None,
            Some(key) => {
                self.check_recording()?;
                let store = self.store.clone();
                let k = key.clone();
                let prior = blocking(move || store.claim_sandbox_key(&k)).await?.map_err(|e| {
                    self.store_fault(&e);
                    self.audit_unavailable(&e.to_string())
                })?;
                match prior {
                    KeyUse::New => Some(KeyClaim { store: self.store.clone(), key: Some(key) }),
                    KeyUse::Sandbox { id: Some(id) } => {
                        let session = self.session(principal, &id).await?;
                        return Ok(Created { info: session.info(), replayed: true });
                    }
                    KeyUse::Sandbox { id: None } => {
                        return Err(ServiceError {
                            retry_after_s: Some(1),
                            ..ServiceError::new(
                                ServiceErrorKind::IdempotencyInProgress,
                                "the request with this Idempotency-Key is still creating its sandbox; retry in a moment",
                            )
                        });
                    }
                    KeyUse::Mismatch | KeyUse::Execution { .. } => {
                        return Err(ServiceError::new(
                            ServiceErrorKind::IdempotencyMismatch,
                            format!(
                                "Idempotency-Key '{}' was already used with a different request; use a new key for a new request",
                                key.key
                            ),
                        ));
                    }
                }
            }
        };
        let quota = self.reserve_quota(principal)?;
        let slot = self.admit(Slot::Sandbox).await?;
        let run = self.admit(Slot::Run).await?;

        let spec = SandboxSpec {
            env: req.env.clone(),
            network: req.network,
            template: req.template.clone(),
            ..SandboxSpec::new(req.limits)
        };
        // The creation finishes (and the session is registered) even if the caller
        // goes away meanwhile; an unclaimed session is reaped when idle.
        let svc = self.clone();
        let owner = principal.clone();
        let task = tokio::spawn(async move {
            let mut claim = claim;
            let creating = Creating::new(&svc.creating);
            let b = backend.clone();
            let svc2 = svc.clone();
            let key_id = owner.key_id.clone();
            let key = claim.as_ref().and_then(|c| c.key.clone());
            let created = blocking(move || -> Result<Box<dyn airlock_core::Sandbox>, ServiceError> {
                let sandbox = svc2.registry.create_sandbox(b.as_ref(), &spec)?;
                // A session the store does not know could not be answered for after a
                // restart (nor its idempotency key): it is not handed out.
                let row =
                    SandboxStart { id: sandbox.id().to_string(), key_id, backend: b.kind(), created_at_ms: now_ms() };
                if let Err(e) = svc2.store.sandbox_created(&row, key.as_ref()) {
                    svc2.store_fault(&e);
                    if let Err(d) = sandbox.destroy() {
                        tracing::warn!(sandbox = %row.id, "destroying an unrecorded sandbox failed: {d}");
                    }
                    return Err(svc2.audit_unavailable(&e.to_string()));
                }
                Ok(sandbox)
            })
            .await;
            drop(creating);
            drop(run);
            let sandbox = created??;
            if let Some(c) = &mut claim {
                c.key = None; // bound to the sandbox now
            }
            // A pooled sandbox keeps the id it was made with.
            let id = sandbox.id().to_string();
            let now = Instant::now();
            let session = Arc::new(Session {
                id: id.clone(),
                owner: owner.key_id.clone(),
                backend: backend.kind(),
                isolation: backend.isolation(),
                limits: req.limits,
                network: req.network,
                guard: req.guard,
                metadata: req.metadata,
                created: now,
                created_ms: now_ms(),
                idle_timeout: Duration::from_millis(idle),
                max_lifetime: Duration::from_millis(life),
                state: Mutex::new(State {
                    sandbox: Some(sandbox),
                    phase: Phase::Idle,
                    last_active: now,
                    last_active_ms: now_ms(),
                    executions: 0,
                    resources: Some(Resources { _slot: slot, _quota: quota }),
                    doomed: None,
                }),
                ended: watch::channel(false).0,
            });
            lock(&svc.sessions).insert(id.clone(), session.clone());
            svc.metrics.sandbox_created(backend.kind());
            if svc.shutting_down.load(Ordering::SeqCst) {
                lock(&svc.sessions).remove(&id);
                svc.end_session(&session, "shutdown").await;
                svc.check_open()?;
            }
            tracing::info!(sandbox = %id, backend = %backend.kind(), owner = owner.label(), "sandbox created");
            Ok::<_, ServiceError>(Created { info: session.info(), replayed: false })
        });
        task.await.map_err(|e| ServiceError::internal(format!("creating the sandbox failed unexpectedly: {e}")))?
    }

    /// Checks the `Idempotency-Key` a client sent with a request to `endpoint` (a
    /// name such as `execute`) and binds it to the caller and to the request `body`:
    /// the same key with another body, or at another endpoint, is refused.
    pub fn idempotency_key(
        &self,
        principal: &Principal,
        header: Option<&[u8]>,
        endpoint: &str,
        body: &Value,
    ) -> Result<Option<IdempotencyKey>, ServiceError> {
        let Some(raw) = header else { return Ok(None) };
        let ok = !raw.is_empty() && raw.len() <= MAX_IDEMPOTENCY_KEY && raw.iter().all(|b| (0x21..=0x7e).contains(b));
        if !ok {
            return Err(ServiceError::invalid(format!(
                "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters without spaces (a UUID is a good choice)"
            )));
        }
        let mut text = String::with_capacity(256);
        text.push_str(endpoint);
        text.push('\n');
        canonical_json(body, &mut text);
        Ok(Some(IdempotencyKey {
            key_id: principal.key_id.clone(),
            key: String::from_utf8_lossy(raw).into_owned(),
            fingerprint: hash_key(&text),
        }))
    }

    /// The caller's sessions, oldest first.
    pub fn list_sandboxes(&self, principal: &Principal) -> Vec<SandboxInfo> {
        let mut v: Vec<SandboxInfo> = lock(&self.sessions)
            .values()
            .filter(|s| s.owned_by(principal.key_id.as_deref()))
            .map(|s| s.info())
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// One of the caller's sessions.
    pub async fn sandbox(&self, principal: &Principal, id: &str) -> Result<SandboxInfo, ServiceError> {
        Ok(self.session(principal, id).await?.info())
    }

    /// Destroys a session (cancelling a running cell) and waits, up to 10 s, until its
    /// sandbox is gone.
    pub async fn delete_sandbox(self: &Arc<Self>, principal: &Principal, id: &str) -> Result<(), ServiceError> {
        let session = self.session(principal, id).await?;
        lock(&self.sessions).remove(id);
        self.end_session(&session, "deleted").await;
        let mut rx = session.ended.subscribe();
        if tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|ended| *ended)).await.is_err() {
            tracing::warn!(sandbox = %id, "the sandbox is taking more than 10 s to stop");
        }
        Ok(())
    }

    /// Dooms a session; destroys its sandbox now if nothing is using it, else when
    /// the current use ends (a running cell is cancelled).
    async fn end_session(self: &Arc<Self>, s: &Arc<Session>, cause: &'static str) {
        if let Some(sb) = s.doom(cause, true) {
            let (svc, s) = (self.clone(), s.clone());
            // Destroyed and released on the blocking thread, so that a dropped caller
            // cannot leave the session's resources held.
            if let Err(e) = blocking(move || svc.destroy_now(&s, sb, cause)).await {
                tracing::error!("destroying a sandbox: {e}");
            }
        } else if s.status() == SandboxStatus::Stopped {
            s.release();
        }
    }

    /// Destroys a sandbox (blocking) and releases its session's resources.
    fn destroy_now(&self, s: &Session, sb: Box<dyn airlock_core::Sandbox>, cause: &'static str) {
        if let Err(e) = sb.destroy() {
            tracing::warn!(sandbox = %s.id, "destroying the sandbox failed: {e}");
        }
        self.record_session_end(s, cause);
        s.release();
        self.metrics.sandbox_ended(cause);
        tracing::info!(sandbox = %s.id, cause, "sandbox destroyed");
    }

    /// Carries out what a finished use asks for (blocking).
    fn after_use_now(&self, s: &Session, after: AfterUse) {
        match after {
            AfterUse::Kept => {}
            AfterUse::Destroy(sb, cause) => self.destroy_now(s, sb, cause),
            AfterUse::Lost => {
                self.record_session_end(s, "lost");
                s.release();
            }
        }
    }

    /// Records a session's end (blocking); if the store refuses, keeps it to retry.
    fn record_session_end(&self, s: &Session, cause: &'static str) {
        let at_ms = now_ms();
        if let Err(e) = self.store.sandbox_ended(&s.id, cause, at_ms) {
            tracing::error!(sandbox = %s.id, "the audit log could not record the session's end (kept to retry): {e}");
            self.store_fault(&e);
            self.keep_pending(PendingWrite::SandboxEnd { id: s.id.clone(), cause, at_ms });
        }
    }

    /// Runs a blocking file operation on a session's sandbox. The whole use —
    /// including putting the sandbox back — happens on the blocking thread, so it
    /// completes even if the caller goes away.
    async fn with_sandbox<T: Send + 'static>(
        self: &Arc<Self>,
        principal: &Principal,
        id: &str,
        op: &'static str,
        f: impl FnOnce(&mut dyn airlock_core::Sandbox, &Session) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, ServiceError> {
        self.check_open()?;
        let session = self.session(principal, id).await?;
        let mut lease = session.take(Busy::Files(op))?;
        let svc = self.clone();
        let r = blocking(move || {
            let mut sb = lease.sandbox.take().expect("a lease holds its sandbox");
            let s = lease.session.clone();
            let r = std::panic::catch_unwind(AssertUnwindSafe(|| f(sb.as_mut(), &s)));
            lease.sandbox = Some(sb);
            let after = lease.finish(false, r.is_err());
            svc.after_use_now(&s, after);
            r
        })
        .await?;
        match r {
            Ok(r) => Ok(r?),
            Err(_) => {
                Err(ServiceError::internal(format!("the file {op} failed unexpectedly; the sandbox was stopped")))
            }
        }
    }

    /// A slot for one file transfer, waited for up to the queue timeout. Transports
    /// hold it while they buffer a file, so file buffers stay bounded.
    pub async fn file_transfer_slot(&self) -> Result<OwnedSemaphorePermit, ServiceError> {
        let wait = Duration::from_millis(self.settings.queue_timeout_ms);
        match tokio::time::timeout(wait, self.file_transfers.clone().acquire_owned()).await {
            Ok(Ok(p)) => Ok(p),
            _ => {
                self.metrics.rejected("file_transfers");
                Err(ServiceError::overloaded(
                    format!(
                        "{} file transfers are in progress, this server's limit; retry later",
                        self.settings.max_file_transfers
                    ),
                    1,
                ))
            }
        }
    }

    /// Writes a file into a session's workspace.
    pub async fn write_file(
        self: &Arc<Self>,
        principal: &Principal,
        id: &str,
        path: &str,
        data: Vec<u8>,
    ) -> Result<FileEntry, ServiceError> {
        let path = WorkspacePath::parse(path)?;
        if data.len() as u64 > self.settings.max_file_bytes {
            return Err(ServiceError::new(
                ServiceErrorKind::TooLarge,
                format!(
                    "the file is {} but this server takes files up to {}",
                    format_size(data.len() as u64),
                    format_size(self.settings.max_file_bytes)
                ),
            ));
        }
        let size = data.len() as u64;
        let shown = path.to_string();
        self.with_sandbox(principal, id, "write", move |sb, s| {
            if size > s.limits.file_bytes {
                return Err(Error::TooLarge(format!(
                    "'{path}' is {} but the sandbox's limits.file_bytes is {}",
                    format_size(size),
                    format_size(s.limits.file_bytes)
                )));
            }
            sb.write_file(&path, &data)
        })
        .await?;
        Ok(FileEntry { path: shown, size, is_dir: false })
    }

    /// Reads a file from a session's workspace.
    pub async fn read_file(
        self: &Arc<Self>,
        principal: &Principal,
        id: &str,
        path: &str,
    ) -> Result<Vec<u8>, ServiceError> {
        let path = WorkspacePath::parse(path)?;
        let cap = self.settings.max_file_bytes;
        self.with_sandbox(principal, id, "read", move |sb, s| sb.read_file(&path, cap.min(s.limits.file_bytes))).await
    }

    /// Lists a directory of a session's workspace (recursively, bounded).
    pub async fn list_files(
        self: &Arc<Self>,
        principal: &Principal,
        id: &str,
        dir: &str,
    ) -> Result<Vec<FileEntry>, ServiceError> {
        let dir = WorkspacePath::parse_dir(dir)?;
        self.with_sandbox(principal, id, "listing", move |sb, _| sb.list_files(&dir)).await
    }

    /// Removes a file or an empty directory from a session's workspace.
    pub async fn remove_file(
        self: &Arc<Self>,
        principal: &Principal,
        id: &str,
        path: &str,
    ) -> Result<(), ServiceError> {
        let path = WorkspacePath::parse(path)?;
        self.with_sandbox(principal, id, "removal", move |sb, _| sb.remove_file(&path)).await
    }

    /// One execution of the caller's from the audit log.
    pub async fn execution(&self, principal: &Principal, id: &str) -> Result<ExecutionRecord, ServiceError> {
        let store = self.store.clone();
        let (id2, key) = (id.to_string(), principal.key_id.clone());
        blocking(move || store.execution(&id2, key.as_deref()))
            .await??
            .ok_or_else(|| ServiceError::not_found(format!("no execution '{id}'")))
    }

    /// A page of the caller's executions, newest first (`limit` 1 to 1000).
    pub async fn executions(
        &self,
        principal: &Principal,
        sandbox_id: Option<String>,
        status: Option<RecordStatus>,
        limit: Option<u32>,
        cursor: Option<String>,
    ) -> Result<ExecutionPage, ServiceError> {
        let limit = limit.unwrap_or(50);
        if !(1..=1000).contains(&limit) {
            return Err(ServiceError::invalid(format!("limit = {limit} is out of range: use 1 to 1000")));
        }
        let q = ExecutionQuery { key_id: principal.key_id.clone(), sandbox_id, status, limit, cursor };
        let store = self.store.clone();
        Ok(blocking(move || store.executions(&q)).await??)
    }

    /// Live sessions (not stopped).
    pub fn live_sessions(&self) -> usize {
        lock(&self.sessions).values().filter(|s| s.status() != SandboxStatus::Stopped).count()
    }

    /// The health summary.
    pub fn health(&self) -> Health {
        let backends = self.served_backends().to_vec();
        let (pending, fault) = {
            let b = lock(&self.audit.backlog);
            (b.pending.len(), b.fault.clone())
        };
        let (status, reason) = if self.shutting_down.load(Ordering::SeqCst) {
            ("draining", Some("the server is shutting down".to_string()))
        } else if self.audit.degraded.load(Ordering::Acquire) {
            let fault = fault.unwrap_or_else(|| "a write failed".into());
            (
                "degraded",
                Some(format!(
                    "the audit log cannot be written ({fault}); {pending} record(s) wait in memory; new executions are refused until it can"
                )),
            )
        } else {
            ("ok", None)
        };
        Health {
            status: status.into(),
            reason,
            audit_pending: pending as u64,
            version: env!("CARGO_PKG_VERSION").into(),
            sandboxes: self.live_sessions() as u64,
            running: self.operations() as u64,
            queue_depth: self.admission.queue_depth() as u64,
            backends,
            default_backend: self.default_backend_kind(),
        }
    }

    /// Backend operations in progress: executions and sandbox creations.
    fn operations(&self) -> usize {
        lock(&self.running).len() + self.creating.load(Ordering::SeqCst)
    }

    /// The metrics in the Prometheus text format.
    pub fn metrics_text(&self) -> String {
        let mut g = Gauges {
            running: self.operations() as u64,
            queue_depth: self.admission.queue_depth() as u64,
            max_running: self.admission.max_running() as u64,
            max_sandboxes: self.admission.max_sandboxes() as u64,
            uptime_s: self.started.elapsed().as_secs_f64(),
            audit_pending: lock(&self.audit.backlog).pending.len() as u64,
            audit_degraded: self.audit.degraded.load(Ordering::Acquire),
            ..Default::default()
        };
        let mut live: BTreeMap<String, u64> = BTreeMap::new();
        for s in lock(&self.sessions).values() {
            let st = s.status();
            let name = match st {
                SandboxStatus::Idle => "idle",
                SandboxStatus::Running => "running",
                SandboxStatus::Stopped => "stopped",
            };
            *g.sessions.entry(name.into()).or_default() += 1;
            if st != SandboxStatus::Stopped {
                *live.entry(s.backend.as_str().into()).or_default() += 1;
            }
        }
        for r in lock(&self.running).values().filter(|r| r.oneshot) {
            *live.entry(r.backend.as_str().into()).or_default() += 1;
        }
        g.live_sandboxes = live;
        self.metrics.render(&g)
    }

    fn spawn_reaper(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let every = Duration::from_millis(self.settings.reap_interval_ms);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(svc) = weak.upgrade() else { break };
                if svc.shutting_down.load(Ordering::SeqCst) {
                    break;
                }
                svc.reap().await;
            }
        });
    }

    /// Ends sessions past their idle timeout or lifetime, and forgets stopped ones.
    pub async fn reap(self: &Arc<Self>) {
        let now = Instant::now();
        let due: Vec<(Arc<Session>, &'static str)> =
            lock(&self.sessions).values().filter_map(|s| s.expired(now).map(|why| (s.clone(), why))).collect();
        for (s, why) in due {
            lock(&self.sessions).remove(&s.id);
            tracing::info!(sandbox = %s.id, why, "reaping sandbox");
            self.end_session(&s, why).await;
        }
    }

    /// Refuses new work from now on (the first step of shutdown).
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        self.admission.close();
    }

    /// Shuts down: refuses new work, lets running operations finish for up to
    /// `drain`, cancels what is left, then destroys every session's sandbox.
    pub async fn shutdown(self: &Arc<Self>, drain: Duration) {
        self.begin_shutdown();
        if let Some(pool) = self.registry.pool() {
            let pool = pool.clone();
            let _ = blocking(move || pool.shutdown()).await;
        }
        let deadline = Instant::now() + drain;
        while self.operations() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if self.operations() > 0 {
            let drain_ms = drain.as_millis() as u64;
            let cancellers: Vec<Canceller> = lock(&self.running)
                .values_mut()
                .filter_map(|r| {
                    r.drained = Some(drain_ms);
                    r.canceller.clone()
                })
                .collect();
            tracing::warn!("stopping {} execution(s) still running after the drain timeout", cancellers.len());
            for c in cancellers {
                c();
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while self.operations() > 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let all: Vec<Arc<Session>> = lock(&self.sessions).drain().map(|(_, s)| s).collect();
        let mut waits = Vec::new();
        for s in &all {
            self.end_session(s, "shutdown").await;
            waits.push(s.ended.subscribe());
        }
        for mut rx in waits {
            let _ = tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|e| *e)).await;
        }
        // Used one-shot sandboxes still being torn down in the background.
        let registry = self.registry.clone();
        let _ = blocking(move || registry.wait_destroyed(Duration::from_secs(10))).await;
        // Last chance for records the store refused.
        let left = self.flush_audit().await;
        if left > 0 {
            let b = lock(&self.audit.backlog);
            for w in &b.pending {
                match w {
                    PendingWrite::End { id, end } => tracing::error!(
                        execution = %id,
                        status = %end.status,
                        "shutting down with this execution's end unrecorded; its record will say 'lost'"
                    ),
                    PendingWrite::SandboxEnd { id, cause, .. } => {
                        tracing::error!(sandbox = %id, cause, "shutting down with this session's end unrecorded")
                    }
                }
            }
        }
    }
}

/// The work of an admitted execution.
enum Work {
    Oneshot { req: ExecRequest },
    Cell { id: String, lease: Lease, req: ExecRequest },
}

/// An admitted execution, not started yet. Dropping it gives its slot and sandbox back
/// (the sandbox through its lease).
pub struct Pending {
    service: Arc<Service>,
    id: String,
    principal: Principal,
    backend: BackendKind,
    accepted: Instant,
    accepted_ms: u64,
    permit: Option<OwnedSemaphorePermit>,
    work: Option<Work>,
    idempotency: Option<IdempotencyKey>,
}

impl Pending {
    /// The execution's id (`exe_...`), known before it runs.
    pub fn execution_id(&self) -> &str {
        &self.id
    }

    /// The backend it will run on.
    pub fn backend(&self) -> BackendKind {
        self.backend
    }

    /// Makes the run idempotent under `key` (from [`Service::idempotency_key`]): if the
    /// key was used before, nothing runs and the earlier request's answer comes back
    /// (or why it cannot).
    pub fn with_idempotency_key(mut self, key: Option<IdempotencyKey>) -> Self {
        self.idempotency = key;
        self
    }

    /// Runs the execution: records it, runs it on a blocking thread, forwards its
    /// events to `events` as they happen (a bounded queue from
    /// [`crate::events::event_channel`]: a reader that falls behind slows the run, up
    /// to its wall-clock limit), records the end, and returns the outcome. The run
    /// continues to its end even if the caller stops waiting or reading.
    pub async fn run(self, events: Option<EventSender>) -> Result<Outcome, ServiceError> {
        self.start(events).finish().await.result
    }

    /// Starts the execution (as [`Pending::run`] does) and returns a handle that says
    /// when its start is recorded and how it finished, with what the audit log holds.
    pub fn start(mut self, events: Option<EventSender>) -> RunHandle {
        let work = self.work.take().expect("a pending execution runs once");
        let permit = self.permit.take();
        let svc = self.service.clone();
        let job = Job {
            id: self.id.clone(),
            principal: self.principal.clone(),
            backend: self.backend,
            accepted: self.accepted,
            accepted_ms: self.accepted_ms,
            idempotency: self.idempotency.take(),
        };
        let (begun_tx, begun) = oneshot::channel();
        let (tx, done) = oneshot::channel();
        tokio::spawn(async move {
            let r = svc.run_work(work, job, events, begun_tx).await;
            drop(permit);
            let _ = tx.send(r);
        });
        RunHandle { id: self.id.clone(), begun, done }
    }
}

/// A started execution (from [`Pending::start`]).
pub struct RunHandle {
    id: String,
    begun: oneshot::Receiver<bool>,
    done: oneshot::Receiver<Finished>,
}

impl RunHandle {
    /// The execution's id.
    pub fn execution_id(&self) -> &str {
        &self.id
    }

    /// Waits until the run's start is in the audit log. True: it runs, and its events
    /// follow. False: it does not run (the store refused it, or it is a repeated
    /// idempotency key), and [`RunHandle::finish`] answers at once.
    pub async fn started(&mut self) -> bool {
        (&mut self.begun).await.unwrap_or(false)
    }

    /// Waits for the end.
    pub async fn finish(self) -> Finished {
        self.done.await.unwrap_or_else(|_| Finished {
            result: Err(ServiceError::internal("the execution ended without a result")),
            execution_id: Some(self.id),
            audit: AuditState::Recorded,
            replayed: false,
        })
    }
}

/// What a run needs besides its work.
struct Job {
    id: String,
    principal: Principal,
    backend: BackendKind,
    accepted: Instant,
    accepted_ms: u64,
    idempotency: Option<IdempotencyKey>,
}

impl Service {
    /// Runs admitted work on one blocking thread: the audit record before, the run,
    /// the sandbox put back, the audit record after. One thread hand-off per
    /// execution, and nothing in it depends on the caller still waiting.
    async fn run_work(
        self: &Arc<Self>,
        work: Work,
        job: Job,
        events: Option<EventSender>,
        begun: oneshot::Sender<bool>,
    ) -> Finished {
        let svc = self.clone();
        let id = job.id.clone();
        match blocking(move || svc.run_work_now(work, job, events, begun)).await {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(execution = %id, "the run failed unexpectedly: {}", e.message);
                Finished {
                    result: Err(e),
                    // Its start may or may not be recorded: show no id that could lead nowhere.
                    execution_id: None,
                    audit: AuditState::Recorded,
                    replayed: false,
                }
            }
        }
    }

    /// The answer to a request whose idempotency key was used before (no new run).
    fn replay(&self, key: &IdempotencyKey, prior: KeyUse) -> Finished {
        let not_run = |e: ServiceError, id: Option<String>| Finished {
            result: Err(e),
            execution_id: id,
            audit: AuditState::Recorded,
            replayed: true,
        };
        match prior {
            KeyUse::New => not_run(ServiceError::internal("an idempotency key was claimed twice"), None),
            KeyUse::Mismatch | KeyUse::Sandbox { .. } => not_run(
                ServiceError::new(
                    ServiceErrorKind::IdempotencyMismatch,
                    format!(
                        "Idempotency-Key '{}' was already used with a different request; use a new key for a new request",
                        key.key
                    ),
                ),
                None,
            ),
            KeyUse::Execution { id, status: RecordStatus::Running, .. } => not_run(
                ServiceError {
                    retry_after_s: Some(1),
                    ..ServiceError::new(
                        ServiceErrorKind::IdempotencyInProgress,
                        format!(
                            "the request with this Idempotency-Key is still running as execution {id}; retry later for its answer, or read GET /v1/executions/{id}"
                        ),
                    )
                },
                Some(id),
            ),
            KeyUse::Execution { id, response: Some(r), .. } => {
                let result = match serde_json::from_str::<Value>(&r) {
                    Ok(mut v) if v.get("outcome").is_some() => serde_json::from_value::<Outcome>(v["outcome"].take())
                        .map_err(|e| ServiceError::internal(format!("the kept answer of {id} cannot be read: {e}"))),
                    Ok(v) => Err(ServiceError::from_code(
                        v["error"]["code"].as_str().unwrap_or("internal"),
                        v["error"]["message"].as_str().unwrap_or("").to_string(),
                    )),
                    Err(e) => Err(ServiceError::internal(format!("the kept answer of {id} cannot be read: {e}"))),
                };
                Finished { result, execution_id: Some(id), audit: AuditState::Recorded, replayed: true }
            }
            KeyUse::Execution { id, status, response: None } => not_run(
                ServiceError::new(
                    ServiceErrorKind::ReplayUnavailable,
                    format!(
                        "the request with this Idempotency-Key already ran as execution {id} (status {status}), but its answer was not kept (it was larger than this server keeps, or the run did not finish); read its record with GET /v1/executions/{id}"
                    ),
                ),
                Some(id),
            ),
        }
    }

    fn run_work_now(
        &self,
        work: Work,
        job: Job,
        events: Option<EventSender>,
        begun: oneshot::Sender<bool>,
    ) -> Finished {
        let Job { id, principal, backend, accepted, accepted_ms, idempotency } = job;
        let id = id.as_str();
        let (kind, req, sandbox_id) = match &work {
            Work::Oneshot { req } => (ExecutionKind::Oneshot, req, None),
            Work::Cell { lease, req, .. } => (ExecutionKind::Cell, req, Some(lease.session.id.clone())),
        };
        let (code, _) = cut(&req.code, self.settings.audit_code_bytes);
        let start = ExecutionStart {
            id: id.to_string(),
            kind,
            key_id: principal.key_id.clone(),
            sandbox_id,
            backend: Some(backend),
            language: req.language,
            code,
            code_bytes: req.code.len() as u64,
            created_at_ms: accepted_ms,
        };
        let begin = match &idempotency {
            None => self.store.begin(&start).map(|()| KeyUse::New),
            Some(k) => self.store.begin_keyed(&start, k),
        };
        match begin {
            Ok(KeyUse::New) => {
                let _ = begun.send(true);
            }
            Ok(prior) => {
                drop(work); // a cell's lease puts its sandbox back
                let _ = begun.send(false);
                let key = idempotency.as_ref().expect("only a keyed request has a prior use");
                return self.replay(key, prior);
            }
            Err(e) => {
                tracing::error!(execution = %id, "the audit log refused the execution: {e}");
                self.store_fault(&e);
                drop(work);
                let _ = begun.send(false);
                // Nothing was recorded: the answer carries no execution id.
                return Finished {
                    result: Err(self.audit_unavailable(&e.to_string())),
                    execution_id: None,
                    audit: AuditState::Recorded,
                    replayed: false,
                };
            }
        }

        let mut events = Forwarder::new(events, Instant::now() + Duration::from_millis(req.limits.timeout_ms));
        let wrap = events.cancel_wrapper();
        let exe = id.to_string();
        // The drain timeout, when shutdown stopped this run.
        let drained = std::cell::Cell::new(None);
        let mut result: Result<Outcome, ServiceError> = match work {
            Work::Oneshot { req } => {
                let mut on_start = |c: Option<Canceller>| {
                    let mut running = lock(&self.running);
                    match c {
                        Some(c) => {
                            running.insert(
                                exe.clone(),
                                Running { backend, oneshot: true, canceller: Some(wrap(c)), drained: None },
                            );
                        }
                        None => {
                            if let Some(r) = running.remove(&exe) {
                                drained.set(r.drained);
                            }
                        }
                    }
                };
                let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    self.registry.execute(&req, Some(exe.clone()), &mut on_start, &mut |ev| events.send(ev))
                }));
                if let Some(r) = lock(&self.running).remove(&exe) {
                    drained.set(r.drained);
                }
                match r {
                    Ok(r) => r.map_err(ServiceError::from),
                    Err(_) => Err(ServiceError::internal("airlock failed unexpectedly while running this execution")),
                }
            }
            Work::Cell { mut lease, req, .. } => {
                let sess = lease.session.clone();
                let mut sandbox = lease.sandbox.take().expect("a lease holds its sandbox");
                let c = sandbox.canceller().map(wrap);
                sess.set_canceller(c.clone());
                lock(&self.running)
                    .insert(exe.clone(), Running { backend, oneshot: false, canceller: c, drained: None });
                // The session may have been deleted between admission and now.
                let r = if sess.lock().doomed.is_some() {
                    Ok(Err(ServiceError::gone(format!("sandbox {} was deleted before the cell started", sess.id))))
                } else {
                    std::panic::catch_unwind(AssertUnwindSafe(|| {
                        let mut sink = |ev| events.send(ev);
                        crate::screen_then_run(&req, &exe, (sess.backend, sess.isolation), &mut sink, |sink| {
                            run_in(sandbox.as_mut(), &req, Some(exe.clone()), Instant::now(), sink)
                        })
                        .map_err(ServiceError::from)
                    }))
                };
                if let Some(r) = lock(&self.running).remove(&exe) {
                    drained.set(r.drained);
                }
                lease.sandbox = Some(sandbox);
                let after = lease.finish(true, r.is_err());
                self.after_use_now(&sess, after);
                match r {
                    Ok(r) => r,
                    Err(_) => Err(ServiceError::internal("airlock failed unexpectedly while running this cell")),
                }
            }
        };
        drop(events); // the stream ends before the final result is handed back
        if let (Some(ms), Ok(o)) = (drained.get(), &mut result)
            && o.status == airlock_core::Status::Killed
        {
            o.reason = Some(format!(
                "the server was shutting down: it stopped this execution when the drain timeout ({ms} ms) ran out"
            ));
        }

        let response = idempotency.as_ref().and_then(|_| {
            let v = match &result {
                Ok(o) => serde_json::json!({ "outcome": o }),
                Err(e) => serde_json::json!({ "error": { "code": e.code(), "message": e.message } }),
            };
            let text = v.to_string();
            (text.len() as u64 <= self.settings.idempotency_response_bytes).then_some(text)
        });
        let end = match &result {
            Ok(o) => {
                let (stdout, c1) = cut(&o.stdout, self.settings.audit_output_bytes);
                let (stderr, c2) = cut(&o.stderr, self.settings.audit_output_bytes);
                ExecutionEnd {
                    status: o.status.into(),
                    reason: o.reason.clone(),
                    backend: Some(o.backend),
                    exit_code: o.exit_code,
                    stdout,
                    stderr,
                    output_truncated: c1 || c2 || o.stdout_truncated || o.stderr_truncated,
                    error: o.error.clone().map(|e| {
                        let cap = usize::try_from(self.settings.audit_output_bytes).unwrap_or(usize::MAX);
                        e.cut_to(ErrorInfo::NAME_BYTES, cap, cap)
                    }),
                    usage: Some(o.usage),
                    finished_at_ms: now_ms(),
                    response,
                }
            }
            Err(e) => ExecutionEnd {
                status: RecordStatus::Failed,
                reason: Some(e.message.clone()),
                backend: Some(backend),
                exit_code: None,
                stdout: String::new(),
                stderr: String::new(),
                output_truncated: false,
                error: None,
                usage: None,
                finished_at_ms: now_ms(),
                response,
            },
        };
        self.metrics.execution(Some(backend), kind, end.status, accepted.elapsed());
        let written = (end.stdout.len() + end.stderr.len() + start.code.len()) as u64;
        let audit = match self.store.end(id, &end) {
            Ok(()) => {
                self.wrote(written);
                AuditState::Recorded
            }
            Err(e) => {
                tracing::error!(execution = %id, "the audit log could not record the end (kept to retry): {e}");
                self.store_fault(&e);
                self.keep_pending(PendingWrite::End { id: id.to_string(), end: Box::new(end) })
            }
        };
        if let (AuditState::Pending | AuditState::Unrecorded, Ok(o)) = (audit, &mut result) {
            o.warnings.push(match audit {
                AuditState::Pending => "the audit log could not record this execution's end yet (audit: pending); it is written when the store takes writes again, unless the server stops first".into(),
                _ => "the audit log could not record this execution's end (audit: unrecorded); after a restart its record says 'lost'".into(),
            });
        }
        Finished { result, execution_id: Some(id.to_string()), audit, replayed: false }
    }

    /// The error of a request refused because the audit log cannot record it.
    fn audit_unavailable(&self, why: &str) -> ServiceError {
        ServiceError {
            retry_after_s: Some(5),
            ..ServiceError::new(
                ServiceErrorKind::AuditUnavailable,
                format!(
                    "the server cannot record executions in its audit log now ({why}); nothing was run: retry later"
                ),
            )
        }
    }

    /// Refuses new runs while the audit log cannot be written.
    fn check_recording(&self) -> Result<(), ServiceError> {
        if !self.audit.degraded.load(Ordering::Acquire) {
            return Ok(());
        }
        self.metrics.rejected("audit_unavailable");
        let fault =
            lock(&self.audit.backlog).fault.clone().unwrap_or_else(|| "records are waiting to be written".into());
        Err(self.audit_unavailable(&fault))
    }

    /// Enters the degraded state after the store refused a write.
    fn store_fault(&self, e: &Error) {
        self.metrics.audit_write_failed();
        let mut b = lock(&self.audit.backlog);
        b.fault = Some(e.to_string());
        if !self.audit.degraded.swap(true, Ordering::AcqRel) {
            tracing::error!("the audit log cannot be written: new executions are refused until it can ({e})");
        }
    }

    /// Keeps a refused write for the retry task, if there is room.
    fn keep_pending(&self, w: PendingWrite) -> AuditState {
        let mut b = lock(&self.audit.backlog);
        self.audit.degraded.store(true, Ordering::Release);
        let size = w.bytes();
        if b.pending.len() >= MAX_PENDING_WRITES || b.bytes + size > MAX_PENDING_BYTES {
            tracing::error!("{} audit records are already waiting; this one is dropped", b.pending.len());
            return AuditState::Unrecorded;
        }
        b.bytes += size;
        b.pending.push_back(w);
        AuditState::Pending
    }

    /// Counts bytes written to the audit log; past a share of `audit_max_bytes` since
    /// the last pass, wakes the pruner.
    fn wrote(&self, bytes: u64) {
        let max = self.settings.audit_max_bytes;
        if max == 0 {
            return;
        }
        let total = self.audit.written.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if total > max / 16 {
            self.audit.written.store(0, Ordering::Relaxed);
            self.audit.prune_now.notify_one();
        }
    }

    fn write_pending(&self, w: &PendingWrite) -> Result<(), Error> {
        match w {
            PendingWrite::End { id, end } => self.store.end(id, end),
            PendingWrite::SandboxEnd { id, cause, at_ms } => self.store.sandbox_ended(id, cause, *at_ms),
        }
    }

    /// Writes the records waiting in memory, oldest first (blocking), and leaves the
    /// degraded state once the store takes writes again. Returns how many still wait.
    fn flush_audit_now(&self) -> usize {
        if !self.audit.degraded.load(Ordering::Acquire) {
            return 0;
        }
        loop {
            let next = {
                let mut b = lock(&self.audit.backlog);
                let w = b.pending.pop_front();
                if let Some(w) = &w {
                    b.bytes -= w.bytes();
                }
                w
            };
            let Some(w) = next else { break };
            if let Err(e) = self.write_pending(&w) {
                let mut b = lock(&self.audit.backlog);
                b.fault = Some(e.to_string());
                b.bytes += w.bytes();
                b.pending.push_front(w);
                return b.pending.len();
            }
        }
        let probe = self.store.probe();
        let mut b = lock(&self.audit.backlog);
        match probe {
            Ok(()) if b.pending.is_empty() => {
                b.fault = None;
                self.audit.degraded.store(false, Ordering::Release);
                tracing::info!("the audit log takes writes again: new executions are accepted");
                0
            }
            Ok(()) => b.pending.len(),
            Err(e) => {
                b.fault = Some(e.to_string());
                b.pending.len()
            }
        }
    }

    /// Writes the audit records waiting in memory now, if the store takes them, and
    /// leaves the degraded state if it does (the background task does this every
    /// 500 ms while degraded). Returns how many still wait.
    pub async fn flush_audit(self: &Arc<Self>) -> usize {
        let svc = self.clone();
        blocking(move || svc.flush_audit_now()).await.unwrap_or(usize::MAX)
    }

    /// Prunes the audit store as the settings say (blocking).
    fn prune_now(&self) {
        let Some(r) = self.settings.retention(now_ms()) else { return };
        match self.store.prune(&r) {
            Ok(p) if p.executions + p.sandboxes + p.keys > 0 => {
                self.metrics.pruned(p.executions);
                tracing::info!(
                    executions = p.executions,
                    sessions = p.sandboxes,
                    keys = p.keys,
                    "audit log pruned from {} to {}",
                    format_size(p.bytes_before),
                    format_size(p.bytes_after)
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("pruning the audit log failed: {e}"),
        }
    }

    /// Prunes the audit store now as the settings say (the background task does this
    /// at start-up, every 10 minutes, and after much has been written).
    pub async fn prune_audit(self: &Arc<Self>) {
        let svc = self.clone();
        let _ = blocking(move || svc.prune_now()).await;
    }

    /// Starts the task that retries refused audit writes and the pruner.
    fn spawn_audit_tasks(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(AUDIT_RETRY_INTERVAL).await;
                let Some(svc) = weak.upgrade() else { break };
                if svc.audit.degraded.load(Ordering::Acquire) {
                    svc.flush_audit().await;
                }
            }
        });
        if self.settings.retention(now_ms()).is_none() {
            return;
        }
        let weak = Arc::downgrade(self);
        let wake = self.audit.prune_now.clone();
        tokio::spawn(async move {
            loop {
                let Some(svc) = weak.upgrade() else { break };
                if svc.shutting_down.load(Ordering::SeqCst) {
                    break;
                }
                svc.prune_audit().await;
                drop(svc);
                tokio::select! {
                    _ = tokio::time::sleep(PRUNE_INTERVAL) => {}
                    _ = wake.notified() => {}
                }
            }
        });
    }
}
