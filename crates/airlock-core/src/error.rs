//! The one error type of the contract. Guest failures are never errors: they are
//! [`crate::Outcome`]s. An `Error` is either the caller's mistake (with what to fix)
//! or a fault of the host.

use crate::backend::BackendKind;

/// A host-side failure or a refused request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The request is malformed or out of range; the message says what to change.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The backend cannot create sandboxes on this host.
    #[error("backend '{backend}' is not available here: {reason}{}", fix.as_ref().map(|f| format!(" (fix: {f})")).unwrap_or_default())]
    Unavailable {
        /// The backend.
        backend: BackendKind,
        /// Why not.
        reason: String,
        /// What makes it work, if anything.
        fix: Option<String>,
    },
    /// A file, sandbox or execution does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// Something is larger than its limit.
    #[error("too large: {0}")]
    TooLarge(String),
    /// The sandbox's interpreter is gone (killed, crashed or destroyed); create a new one.
    #[error("sandbox is no longer running: {0}")]
    SandboxGone(String),
    /// The sandbox is running another cell.
    #[error("busy: {0}")]
    Busy(String),
    /// A fault of the host (I/O, a missing interpreter, a broken guest protocol).
    #[error("host error: {0}")]
    Host(String),
}

impl Error {
    /// An [`Error::Invalid`].
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::Invalid(msg.into())
    }

    /// An [`Error::Host`].
    pub fn host(msg: impl Into<String>) -> Self {
        Error::Host(msg.into())
    }

    /// An [`Error::Host`] from an I/O error with what was being done.
    pub fn io(what: impl std::fmt::Display, e: std::io::Error) -> Self {
        Error::Host(format!("{what}: {e}"))
    }

    /// A stable, machine-readable code for APIs (`invalid_request`, `not_found`, ...).
    pub fn code(&self) -> &'static str {
        match self {
            Error::Invalid(_) => "invalid_request",
            Error::Unavailable { .. } => "backend_unavailable",
            Error::NotFound(_) => "not_found",
            Error::TooLarge(_) => "too_large",
            Error::SandboxGone(_) => "sandbox_gone",
            Error::Busy(_) => "busy",
            Error::Host(_) => "internal",
        }
    }
}
