//! The durable part of the service: the audit log of executions and the API keys.
//!
//! Both are traits so that a shared database (PostgreSQL, for several servers behind
//! one load balancer) can replace the embedded SQLite file ([`sqlite::SqliteStore`])
//! without touching the service.

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
    /// Marks `lost` every `running` record whose server is gone (crashed or killed).
    /// Returns how many.
    fn recover_lost(&self) -> Result<u64, Error>;
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

/// Both halves of the durable state.
pub trait Store: AuditStore + KeyStore {}

impl<T: AuditStore + KeyStore> Store for T {}

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
