//! Sessions: stateful sandboxes that live between requests, and what the API says
//! about them.
//!
//! A session's sandbox is *taken out* while a cell or a file operation uses it and
//! put back afterwards, so a second concurrent use finds it busy (`409`) instead of
//! waiting, and no lock is held while the backend works.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use airlock_core::backend::Canceller;
use airlock_core::{BackendKind, GuardSettings, Isolation, Limits, NetworkPolicy, Sandbox, SandboxTerms};
use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, watch};
use utoipa::ToSchema;

use crate::service::ServiceError;
use crate::store::rfc3339;

/// The body of `POST /v1/sandboxes`. Every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct CreateSandbox {
    /// The backend; omitted means the server's default (the safest that works).
    pub backend: Option<BackendKind>,
    /// Limits of the sandbox. `memory_bytes`, `processes`, `file_bytes` and
    /// `open_files` hold for its whole life; `timeout_ms`, `cpu_ms`, `output_bytes`
    /// and `result_bytes` are the defaults of each cell. Omitted fields take the
    /// server's defaults.
    pub limits: Limits,
    /// Environment variables of the sandbox's interpreter.
    pub env: BTreeMap<String, String>,
    /// Network access (default `none`).
    pub network: NetworkPolicy,
    /// Destroy the sandbox after this long without a request (default: the server's,
    /// 10 minutes unless configured).
    pub idle_timeout_ms: Option<u64>,
    /// Destroy the sandbox this long after its creation, busy or not (default: the
    /// server's, 1 hour unless configured).
    pub max_lifetime_ms: Option<u64>,
    /// Your own labels (at most 32, keys up to 64 bytes, values up to 512 bytes).
    pub metadata: BTreeMap<String, String>,
    /// A server template (its modules already imported, from the warm pool when
    /// one is ready); omitted means the server's `default` template.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// The guard of every cell (default off): each cell's code is checked on the
    /// host before it runs (status `denied` with findings) and the runtime layer is
    /// installed in the sandbox. Fixed for the sandbox's life; see docs/guard.md.
    #[serde(skip_serializing_if = "GuardSettings::is_off")]
    pub guard: GuardSettings,
}

/// The state of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SandboxStatus {
    /// Ready for a cell.
    Idle,
    /// Running a cell (or a file operation).
    Running,
    /// Its interpreter is gone (killed, crashed, or destroyed); see `stopped_reason`.
    Stopped,
}

/// A session, as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SandboxInfo {
    /// The sandbox's id (`sbx_...`).
    pub id: String,
    /// The backend it runs on.
    pub backend: BackendKind,
    /// The kind of boundary around it.
    pub isolation: Isolation,
    /// `idle`, `running` or `stopped`.
    pub status: SandboxStatus,
    /// Why it stopped, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_reason: Option<String>,
    /// The execution running now, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running_execution_id: Option<String>,
    /// Its limits.
    pub limits: Limits,
    /// Its network access.
    pub network: NetworkPolicy,
    /// Your labels.
    pub metadata: BTreeMap<String, String>,
    /// The guard of its cells (omitted when off).
    #[serde(default, skip_serializing_if = "GuardSettings::is_off")]
    pub guard: GuardSettings,
    /// Cells run so far.
    pub execution_count: u64,
    /// Creation time (RFC 3339).
    pub created_at: String,
    /// Time of the last request that used it (RFC 3339).
    pub last_active_at: String,
    /// When it will be destroyed if nothing uses it (RFC 3339): the earlier of idle
    /// timeout and lifetime.
    pub expires_at: String,
    /// Its idle timeout, in milliseconds.
    pub idle_timeout_ms: u64,
    /// Its lifetime, in milliseconds.
    pub max_lifetime_ms: u64,
}

/// What a busy session is doing.
#[derive(Debug, Clone)]
pub(crate) enum Busy {
    /// Running the cell with this execution id.
    Cell(String),
    /// A file operation.
    Files(&'static str),
}

/// The phase of a session.
pub(crate) enum Phase {
    Idle,
    Busy { what: Busy, since: Instant, canceller: Option<Canceller> },
    Stopped { reason: String },
}

/// What a live session holds on the server's caps; released when its sandbox is gone.
pub(crate) struct Resources {
    pub _slot: OwnedSemaphorePermit,
    pub _quota: crate::service::QuotaToken,
}

pub(crate) struct State {
    pub sandbox: Option<Box<dyn Sandbox>>,
    pub phase: Phase,
    pub last_active: Instant,
    pub last_active_ms: u64,
    pub executions: u64,
    pub resources: Option<Resources>,
    /// Set when the session must be destroyed as soon as its current use ends.
    pub doomed: Option<&'static str>,
}

/// A live session.
pub struct Session {
    pub(crate) id: String,
    pub(crate) owner: Option<String>,
    pub(crate) backend: BackendKind,
    pub(crate) isolation: Isolation,
    pub(crate) limits: Limits,
    pub(crate) network: NetworkPolicy,
    pub(crate) guard: GuardSettings,
    pub(crate) metadata: BTreeMap<String, String>,
    pub(crate) created: Instant,
    pub(crate) created_ms: u64,
    pub(crate) idle_timeout: Duration,
    pub(crate) max_lifetime: Duration,
    pub(crate) state: Mutex<State>,
    /// Becomes true once the sandbox is destroyed and its resources released.
    pub(crate) ended: watch::Sender<bool>,
}

/// A session's sandbox, taken out for one use. However the use ends — normally, by
/// an error, by a panic, or because the request that started it was dropped — the
/// sandbox goes back to its session (or the session is marked stopped if the sandbox
/// was lost).
pub(crate) struct Lease {
    pub session: Arc<Session>,
    pub sandbox: Option<Box<dyn Sandbox>>,
    done: bool,
}

impl Lease {
    /// Ends the use. `cell` counts a cell; `broken` says the sandbox must not be used
    /// again. Returns what must happen to the sandbox.
    pub(crate) fn finish(mut self, cell: bool, broken: bool) -> AfterUse {
        self.done = true;
        self.session.give_back(self.sandbox.take(), cell, broken)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let lost = self.sandbox.is_none();
        match self.session.give_back(self.sandbox.take(), false, false) {
            AfterUse::Kept => {}
            AfterUse::Destroy(sb, _) => {
                drop(sb); // its Drop tears it down
                self.session.release();
            }
            AfterUse::Lost => {
                debug_assert!(lost);
                self.session.release();
            }
        }
    }
}

/// What to do with a sandbox after a use.
pub(crate) enum AfterUse {
    /// It went back into the session.
    Kept,
    /// It must be destroyed, for this cause.
    Destroy(Box<dyn Sandbox>, &'static str),
    /// It was lost (a panic); the session is stopped.
    Lost,
}

impl Session {
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The session's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether `key_id` may see this session.
    pub(crate) fn owned_by(&self, key_id: Option<&str>) -> bool {
        self.owner.as_deref() == key_id
    }

    /// Takes the sandbox out for a use, or says why not.
    pub(crate) fn take(self: &Arc<Self>, what: Busy) -> Result<Lease, ServiceError> {
        let mut st = self.lock();
        match &st.phase {
            Phase::Idle => {}
            Phase::Busy { what: Busy::Cell(exe), since, .. } => {
                return Err(ServiceError::busy(format!(
                    "sandbox {} is running execution {exe} (for {} ms); one cell runs at a time: wait for it to finish",
                    self.id,
                    since.elapsed().as_millis()
                )));
            }
            Phase::Busy { what: Busy::Files(op), .. } => {
                return Err(ServiceError::busy(format!(
                    "sandbox {} is busy with a file {op}; retry in a moment",
                    self.id
                )));
            }
            Phase::Stopped { reason } => {
                return Err(ServiceError::gone(format!(
                    "sandbox {} has stopped ({reason}); create a new sandbox",
                    self.id
                )));
            }
        }
        let Some(sb) = st.sandbox.take() else {
            st.phase = Phase::Stopped { reason: "its sandbox was lost".into() };
            return Err(ServiceError::gone(format!("sandbox {} has stopped; create a new sandbox", self.id)));
        };
        st.phase = Phase::Busy { what, since: Instant::now(), canceller: None };
        Ok(Lease { session: self.clone(), sandbox: Some(sb), done: false })
    }

    /// Records the canceller of the running cell (for deletion and shutdown).
    pub(crate) fn set_canceller(&self, c: Option<Canceller>) {
        if let Phase::Busy { canceller, .. } = &mut self.lock().phase {
            *canceller = c;
        }
    }

    /// Puts the sandbox back after a use (`None` if it was lost). `cell` counts a cell.
    /// `broken` says the sandbox must not be used again.
    pub(crate) fn give_back(&self, sandbox: Option<Box<dyn Sandbox>>, cell: bool, broken: bool) -> AfterUse {
        let mut st = self.lock();
        st.last_active = Instant::now();
        st.last_active_ms = crate::store::now_ms();
        if cell {
            st.executions += 1;
        }
        let Some(sb) = sandbox else {
            st.phase = Phase::Stopped { reason: "airlock lost the sandbox after an internal error".into() };
            return AfterUse::Lost;
        };
        if let Some(cause) = st.doomed {
            st.phase = Phase::Stopped { reason: stop_reason(cause) };
            return AfterUse::Destroy(sb, cause);
        }
        if broken || !sb.is_alive() {
            let reason = if broken {
                "airlock stopped it after an internal error".to_string()
            } else {
                "its interpreter exited or was killed (see the last execution's status)".to_string()
            };
            st.phase = Phase::Stopped { reason };
            return AfterUse::Destroy(sb, "died");
        }
        st.sandbox = Some(sb);
        st.phase = Phase::Idle;
        AfterUse::Kept
    }

    /// Marks the session for destruction: returns the sandbox if it can be destroyed
    /// now; if it is busy, cancels a running cell (unless `cancel` is false) and
    /// leaves the destruction to the end of that use.
    pub(crate) fn doom(&self, cause: &'static str, cancel: bool) -> Option<Box<dyn Sandbox>> {
        let mut st = self.lock();
        match &st.phase {
            Phase::Idle => {
                st.phase = Phase::Stopped { reason: stop_reason(cause) };
                st.sandbox.take()
            }
            Phase::Busy { canceller, .. } => {
                if cancel && let Some(c) = canceller {
                    c();
                }
                st.doomed = Some(cause);
                None
            }
            Phase::Stopped { .. } => {
                // Nothing runs; its resources may still be held if it stopped by dying.
                st.sandbox.take()
            }
        }
    }

    /// Releases the session's hold on the server's caps and tells waiters it ended.
    pub(crate) fn release(&self) {
        self.lock().resources = None;
        self.ended.send_replace(true);
    }

    /// Why the reaper should end this session now, if it should.
    pub(crate) fn expired(&self, now: Instant) -> Option<&'static str> {
        let st = self.lock();
        if now.duration_since(self.created) >= self.max_lifetime && !matches!(st.phase, Phase::Stopped { .. }) {
            return Some("lifetime");
        }
        let idle = now.duration_since(st.last_active) >= self.idle_timeout;
        match st.phase {
            Phase::Idle if idle => Some("idle"),
            Phase::Stopped { .. } if idle => Some("forgotten"),
            _ => None,
        }
    }

    /// Whether the session holds a live sandbox, and its phase name.
    pub(crate) fn status(&self) -> SandboxStatus {
        match self.lock().phase {
            Phase::Idle => SandboxStatus::Idle,
            Phase::Busy { .. } => SandboxStatus::Running,
            Phase::Stopped { .. } => SandboxStatus::Stopped,
        }
    }

    /// What the sandbox fixed at creation, which its cells inherit.
    pub fn terms(&self) -> SandboxTerms<'_> {
        SandboxTerms {
            id: &self.id,
            backend: self.backend,
            limits: self.limits,
            network: self.network,
            guard: &self.guard,
        }
    }

    /// What the API shows.
    pub fn info(&self) -> SandboxInfo {
        let st = self.lock();
        let (status, stopped_reason, running) = match &st.phase {
            Phase::Idle => (SandboxStatus::Idle, None, None),
            Phase::Busy { what: Busy::Cell(e), .. } => (SandboxStatus::Running, None, Some(e.clone())),
            Phase::Busy { .. } => (SandboxStatus::Running, None, None),
            Phase::Stopped { reason } => (SandboxStatus::Stopped, Some(reason.clone()), None),
        };
        let idle_end = st.last_active_ms + self.idle_timeout.as_millis() as u64;
        let life_end = self.created_ms + self.max_lifetime.as_millis() as u64;
        SandboxInfo {
            id: self.id.clone(),
            backend: self.backend,
            isolation: self.isolation,
            status,
            stopped_reason,
            running_execution_id: running,
            limits: self.limits,
            network: self.network,
            metadata: self.metadata.clone(),
            guard: self.guard.clone(),
            execution_count: st.executions,
            created_at: rfc3339(self.created_ms),
            last_active_at: rfc3339(st.last_active_ms),
            expires_at: rfc3339(idle_end.min(life_end)),
            idle_timeout_ms: self.idle_timeout.as_millis() as u64,
            max_lifetime_ms: self.max_lifetime.as_millis() as u64,
        }
    }
}

fn stop_reason(cause: &str) -> String {
    match cause {
        "idle" => "destroyed after its idle timeout".into(),
        "lifetime" => "destroyed at the end of its lifetime".into(),
        "deleted" => "deleted".into(),
        "shutdown" => "the server shut down".into(),
        other => other.to_string(),
    }
}
