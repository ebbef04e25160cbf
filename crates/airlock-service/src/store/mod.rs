//! The durable part of the service: the audit log of executions, the API keys, what
//! is remembered of sessions, and idempotency keys.
//!
//! All are traits so that a shared database (PostgreSQL, for several servers behind
//! one load balancer) can replace the embedded SQLite file ([`sqlite::SqliteStore`])
//! without touching the service.

pub mod fault;
pub mod sqlite;

use airlock_core::{BackendKind, Error, ErrorInfo, Language, Status, Usage};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Where an execution ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ExecutionKind {
    /// `POST /v1/execute`: a fresh sandbox, destroyed afterwards.
    Oneshot,
    /// A cell of a session (`POST /v1/sandboxes/{id}/execute`).
    Cell,
}

impl ExecutionKind {
    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            ExecutionKind::Oneshot => "oneshot",
            ExecutionKind::Cell => "cell",
        }
    }
}

/// The state of an execution in the audit log: `running`, one of the outcome
/// statuses, `lost` (the server stopped before the run finished) or `failed` (the
/// host could not run it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RecordStatus {
    /// Accepted and not finished yet.
    Running,
    /// Outcome status `ok`.
    Ok,
    /// Outcome status `error`.
    Error,
    /// Outcome status `timeout`.
    Timeout,
    /// Outcome status `memory_limit`.
    MemoryLimit,
    /// Outcome status `output_limit`.
    OutputLimit,
    /// Outcome status `killed`.
    Killed,
    /// Outcome status `denied`.
    Denied,
    /// The server stopped (crash, `kill -9`, power cut) before the run finished.
    Lost,
    /// The host could not run it (the sandbox could not be created, an I/O error).
    Failed,
}

impl RecordStatus {
    /// Every status, in a stable order.
    pub const ALL: [RecordStatus; 10] = [
        RecordStatus::Running,
        RecordStatus::Ok,
        RecordStatus::Error,
        RecordStatus::Timeout,
        RecordStatus::MemoryLimit,
        RecordStatus::OutputLimit,
        RecordStatus::Killed,
        RecordStatus::Denied,
        RecordStatus::Lost,
        RecordStatus::Failed,
    ];

    /// The snake_case name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordStatus::Running => "running",
            RecordStatus::Ok => "ok",
            RecordStatus::Error => "error",
            RecordStatus::Timeout => "timeout",
            RecordStatus::MemoryLimit => "memory_limit",
            RecordStatus::OutputLimit => "output_limit",
            RecordStatus::Killed => "killed",
            RecordStatus::Denied => "denied",
            RecordStatus::Lost => "lost",
            RecordStatus::Failed => "failed",
        }
    }
}

impl From<Status> for RecordStatus {
    fn from(s: Status) -> Self {
        match s {
            Status::Ok => RecordStatus::Ok,
            Status::Error => RecordStatus::Error,
            Status::Timeout => RecordStatus::Timeout,
            Status::MemoryLimit => RecordStatus::MemoryLimit,
            Status::OutputLimit => RecordStatus::OutputLimit,
            Status::Killed => RecordStatus::Killed,
            Status::Denied => RecordStatus::Denied,
        }
    }
}

impl std::fmt::Display for RecordStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for RecordStatus {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        RecordStatus::ALL.into_iter().find(|x| x.as_str() == s).ok_or_else(|| {
            Error::invalid(format!(
                "unknown status '{s}': use one of {}",
                RecordStatus::ALL.iter().map(|x| x.as_str()).collect::<Vec<_>>().join(", ")
            ))
        })
    }
}

/// What is written when an execution is accepted, before it runs.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecutionStart {
    /// The execution id (`exe_...`).
    pub id: String,
    /// One-shot or session cell.
    pub kind: ExecutionKind,
    /// The API key that asked for it (`None` for unauthenticated local use).
    pub key_id: Option<String>,
    /// The session, for cells.
    pub sandbox_id: Option<String>,
    /// The backend, when known before the run.
    pub backend: Option<BackendKind>,
    /// The language.
    pub language: Language,
    /// The code, cut to the audit size.
    pub code: String,
    /// The code's full size in bytes.
    pub code_bytes: u64,
    /// When it was accepted, in ms since the Unix epoch.
    pub created_at_ms: u64,
}

/// What is written when an execution ends.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecutionEnd {
    /// How it ended.
    pub status: RecordStatus,
    /// Why, for anything but `ok`.
    pub reason: Option<String>,
    /// The backend that ran it.
    pub backend: Option<BackendKind>,
    /// The program's exit status, if it exited.
    pub exit_code: Option<i32>,
    /// stdout, cut to the audit size.
    pub stdout: String,
    /// stderr, cut to the audit size.
    pub stderr: String,
    /// True when stdout or stderr was cut (by the audit size or the output limit).
    pub output_truncated: bool,
    /// The uncaught exception, if any.
    pub error: Option<ErrorInfo>,
    /// Resources used, when it ran.
    pub usage: Option<Usage>,
    /// When it ended, in ms since the Unix epoch.
    pub finished_at_ms: u64,
    /// The answer given to the client, as JSON, for a request made with an
    /// idempotency key (so that a retry gets the same answer); `None` otherwise, or
    /// when the answer was larger than the server keeps.
    pub response: Option<String>,
}

/// One execution in the audit log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ExecutionRecord {
    /// The execution id (`exe_...`), the same as the outcome's.
    pub id: String,
    /// `oneshot` or `cell`.
    pub kind: ExecutionKind,
    /// `running`, an outcome status, `lost` or `failed`.
    pub status: RecordStatus,
    /// Why it ended so, for anything but `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The API key id that asked for it (absent for unauthenticated local use).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// The session, for cells.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox_id: Option<String>,
    /// The backend that ran it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<BackendKind>,
    /// The language.
    pub language: Language,
    /// The code (cut to the server's audit size).
    pub code: String,
    /// True when `code` was cut.
    pub code_truncated: bool,
    /// stdout (cut to the server's audit size).
    pub stdout: String,
    /// stderr (cut to the server's audit size).
    pub stderr: String,
    /// True when stdout or stderr was cut.
    pub output_truncated: bool,
    /// The uncaught exception, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
    /// The program's exit status, if it exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Resources used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// When it was accepted (RFC 3339).
    pub created_at: String,
    /// When it ended (RFC 3339), unless it is still running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// From acceptance to the end, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
}

/// A query of the audit log. Results are newest first.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ExecutionQuery {
    /// Whose executions: an API key id, or `None` for unauthenticated local use.
    pub key_id: Option<String>,
    /// Only this session's cells.
    pub sandbox_id: Option<String>,
    /// Only this status.
    pub status: Option<RecordStatus>,
    /// At most this many.
    pub limit: u32,
    /// Continue after this cursor (from a previous page's `next_cursor`).
    pub cursor: Option<String>,
}

/// One page of the audit log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ExecutionPage {
    /// Executions, newest first.
    pub executions: Vec<ExecutionRecord>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// The audit log: every accepted execution gets a record before it runs and a
/// terminal record after.
pub trait AuditStore: Send + Sync {
    /// Records an accepted execution (status `running`).
    fn begin(&self, start: &ExecutionStart) -> Result<(), Error>;
    /// Records how an execution ended.
    fn end(&self, id: &str, end: &ExecutionEnd) -> Result<(), Error>;
    /// One execution, if it exists and belongs to `key_id` (`None`: unauthenticated).
    fn execution(&self, id: &str, key_id: Option<&str>) -> Result<Option<ExecutionRecord>, Error>;
    /// A page of executions.
    fn executions(&self, q: &ExecutionQuery) -> Result<ExecutionPage, Error>;
    /// Marks `lost` every `running` record whose server is gone (crashed or killed),
    /// and ends the sessions such servers held (cause `server_stopped`). Returns how
    /// many executions.
    fn recover_lost(&self) -> Result<u64, Error>;
    /// Checks that the store takes writes now (a small write that changes nothing
    /// the API shows). Used to leave the degraded state after a failure.
    fn probe(&self) -> Result<(), Error>;
    /// Deletes what `retention` no longer keeps, oldest first, never a `running`
    /// record or a live session, in small batches so that other writers wait at most
    /// one batch; then gives the freed space back where the store can.
    fn prune(&self, retention: &Retention) -> Result<Pruned, Error>;
}

/// What the audit store keeps (see [`AuditStore::prune`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Retention {
    /// Records older than this (by acceptance time), in ms since the Unix epoch, go;
    /// `None` keeps them whatever their age.
    pub older_than_ms: Option<u64>,
    /// Oldest records go until the store's data is under this many bytes (with some
    /// slack below it, so pruning does not run on every write); `None`: no cap.
    pub max_bytes: Option<u64>,
}

/// What one pruning pass did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pruned {
    /// Execution records deleted.
    pub executions: u64,
    /// Ended sessions forgotten.
    pub sandboxes: u64,
    /// Idempotency keys that expired.
    pub keys: u64,
    /// Bytes of data in the store before.
    pub bytes_before: u64,
    /// Bytes of data in the store after.
    pub bytes_after: u64,
}

/// A session as the store keeps it, written when it is created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxStart {
    /// The sandbox id (`sbx_...`).
    pub id: String,
    /// The API key that owns it (`None` for unauthenticated local use).
    pub key_id: Option<String>,
    /// Its backend.
    pub backend: BackendKind,
    /// When it was created, in ms since the Unix epoch.
    pub created_at_ms: u64,
}

/// A session the store knows, to answer for it after it is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxRecord {
    /// The sandbox id.
    pub id: String,
    /// When it was created, in ms since the Unix epoch.
    pub created_at_ms: u64,
    /// When it ended, if it did.
    pub ended_at_ms: Option<u64>,
    /// Why it ended: `deleted`, `idle`, `lifetime`, `died`, `shutdown` (its server
    /// shut down), `server_stopped` (its server crashed or was killed), ...
    pub end_cause: Option<String>,
}

impl SandboxRecord {
    /// True when the session ended because its server stopped (a shutdown, a crash or
    /// a kill), not because of something done to it.
    pub fn ended_by_restart(&self) -> bool {
        matches!(self.end_cause.as_deref(), Some(END_SHUTDOWN | END_SERVER_STOPPED))
    }
}

/// The end cause of sessions destroyed by a graceful shutdown.
pub const END_SHUTDOWN: &str = "shutdown";
/// The end cause of sessions whose server crashed or was killed (set at the next start).
pub const END_SERVER_STOPPED: &str = "server_stopped";

/// The sessions: what the store remembers of them once they are gone.
pub trait SandboxStore: Send + Sync {
    /// Records a new session; with `key`, also binds that idempotency key (claimed
    /// with [`IdempotencyStore::claim_sandbox_key`]) to it, in the same transaction.
    fn sandbox_created(&self, s: &SandboxStart, key: Option<&IdempotencyKey>) -> Result<(), Error>;
    /// Records how a session ended.
    fn sandbox_ended(&self, id: &str, cause: &str, at_ms: u64) -> Result<(), Error>;
    /// A session, if the store knows it and it belongs to `key_id`.
    fn sandbox(&self, id: &str, key_id: Option<&str>) -> Result<Option<SandboxRecord>, Error>;
}

/// A client-chosen idempotency key, scoped to the API key that sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    /// The API key that sent it (`None`: unauthenticated local use).
    pub key_id: Option<String>,
    /// The `Idempotency-Key` header.
    pub key: String,
    /// A digest of the endpoint and the request body: the same key with another
    /// request is refused.
    pub fingerprint: String,
}

/// What an idempotency key stood for before this request.
#[derive(Debug, Clone, PartialEq)]
pub enum KeyUse {
    /// Never used (or its earlier use expired): it is recorded for this request now.
    New,
    /// Used for a different request (another body or endpoint).
    Mismatch,
    /// Used for this execution.
    Execution {
        /// The execution id.
        id: String,
        /// Its status in the audit log.
        status: RecordStatus,
        /// The answer it got, if it was kept.
        response: Option<String>,
    },
    /// Used to create this sandbox; `None` while it is being created.
    Sandbox {
        /// The sandbox id, once created.
        id: Option<String>,
    },
}

/// Idempotency keys: a repeated request learns what the first one did.
pub trait IdempotencyStore: Send + Sync {
    /// Like [`AuditStore::begin`], for a request with an idempotency key: in one
    /// transaction, either records the key and the accepted execution (`New`), or
    /// writes nothing and says what the key was used for.
    fn begin_keyed(&self, start: &ExecutionStart, key: &IdempotencyKey) -> Result<KeyUse, Error>;
    /// Claims a key for a sandbox creation: `New` if it is now claimed (bind it with
    /// [`SandboxStore::sandbox_created`], or give it up with
    /// [`IdempotencyStore::release_key`]), else what it was used for. A claim left
    /// unbound by a server that died is taken over.
    fn claim_sandbox_key(&self, key: &IdempotencyKey) -> Result<KeyUse, Error>;
    /// Gives up a claim that was not bound (the creation failed or was abandoned).
    fn release_key(&self, key: &IdempotencyKey) -> Result<(), Error>;
}

/// An API key as listed (never the key itself: only its hash is stored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyInfo {
    /// The key's id (`key_...`), shown in the audit log.
    pub id: String,
    /// A name to recognise it by.
    pub name: String,
    /// The key's first characters, to recognise it by.
    pub prefix: String,
    /// Live sessions this key may hold; `None` means the server's default.
    pub max_sandboxes: Option<u32>,
    /// When it was created (RFC 3339).
    pub created_at: String,
    /// When it was revoked (RFC 3339), if it was.
    pub revoked_at: Option<String>,
}

/// A key to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewKey {
    /// The key's id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// SHA-256 of the key, lowercase hex.
    pub hash: String,
    /// Its first characters.
    pub prefix: String,
    /// Its own live-session limit.
    pub max_sandboxes: Option<u32>,
    /// Creation time, ms since the Unix epoch.
    pub created_at_ms: u64,
}

/// The API keys.
pub trait KeyStore: Send + Sync {
    /// Stores a new key.
    fn create_key(&self, key: &NewKey) -> Result<(), Error>;
    /// The unrevoked key with this hash.
    fn key_by_hash(&self, hash: &str) -> Result<Option<KeyInfo>, Error>;
    /// Every key, revoked ones included, oldest first.
    fn keys(&self) -> Result<Vec<KeyInfo>, Error>;
    /// Revokes a key by id or name; false if there is no such unrevoked key.
    fn revoke_key(&self, id_or_name: &str) -> Result<bool, Error>;
}

/// The whole durable state.
pub trait Store: AuditStore + KeyStore + SandboxStore + IdempotencyStore {}

impl<T: AuditStore + KeyStore + SandboxStore + IdempotencyStore> Store for T {}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// RFC 3339 (UTC, milliseconds) of a time in ms since the Unix epoch.
pub fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms)).to_string()
}

/// Cuts `s` to at most `max` bytes on a character boundary; true if it was cut.
pub fn cut(s: &str, max: u64) -> (String, bool) {
    if s.len() as u64 <= max {
        return (s.to_string(), false);
    }
    let mut end = max as usize;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    (s[..end].to_string(), true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip() {
        for s in RecordStatus::ALL {
            assert_eq!(s.as_str().parse::<RecordStatus>().unwrap(), s);
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        assert!("fine".parse::<RecordStatus>().unwrap_err().to_string().contains("lost"));
    }

    #[test]
    fn cut_respects_characters() {
        assert_eq!(cut("héllo", 2), ("h".to_string(), true));
        assert_eq!(cut("abc", 3), ("abc".to_string(), false));
    }

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
    }
}
