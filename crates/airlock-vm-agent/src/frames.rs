//! Agent-level frames: what the host asks the agent itself (as opposed to the driver).
//!
//! They travel in the same length-prefixed JSON framing as the driver protocol
//! (`airlock_guest::protocol`), tagged by `type`; their type names never collide
//! with the driver's (`exec`, `shutdown`, `hello`, `result`, ...).

use std::collections::BTreeMap;

use airlock_core::{Error, FileEntry};
use serde::{Deserialize, Serialize};

/// The most file content one [`AgentRequest::FileWrite`] carries.
pub const FILE_PIECE_BYTES: usize = 1 << 20;

/// Limits the agent applies to the driver when a sandbox attaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct GuestLimits {
    /// RLIMIT_NPROC of the guest user (processes and threads).
    pub processes: u32,
    /// RLIMIT_NOFILE of the driver.
    pub open_files: u32,
    /// RLIMIT_FSIZE of the driver, and the size of the `/workspace` and `/tmp` tmpfs.
    pub file_bytes: u64,
}

/// Requests the agent handles itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentRequest {
    /// A host takes over the VM (after a cold boot or a snapshot restore): set the
    /// clock, mix in fresh entropy, apply limits and environment, then answer with
    /// the driver's `hello`.
    Attach {
        /// The host's wall clock, in milliseconds since the Unix epoch.
        time_ms: u64,
        /// Base64 of random bytes from the host, added to the guest's entropy pool
        /// (every clone of a snapshot otherwise starts with the same pool).
        #[serde(default)]
        entropy: String,
        /// Environment variables for the code.
        #[serde(default)]
        env: BTreeMap<String, String>,
        /// Limits to apply to the driver.
        limits: GuestLimits,
    },
    /// Stop the running cell (SIGINT to the driver); the session survives.
    Interrupt,
    /// Write a workspace file, or one piece of it: the host sends a file in pieces of
    /// at most [`FILE_PIECE_BYTES`], so that the guest never holds more than a piece
    /// of it beside what it has written (the file itself is in the guest's memory).
    FileWrite {
        /// Workspace-relative path.
        path: String,
        /// Base64 of the content (of this piece).
        data: String,
        /// The largest file accepted.
        max_bytes: u64,
        /// On the first piece: the whole file's size, checked against `max_bytes` and
        /// the guest's free memory before anything is written (absent: this piece is
        /// the whole file).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        total: Option<u64>,
        /// A later piece of the file the previous `FileWrite` opened: appended to it.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        append: bool,
    },
    /// Read a workspace file.
    FileRead {
        /// Workspace-relative path.
        path: String,
        /// The largest file returned.
        max_bytes: u64,
    },
    /// List a workspace directory recursively.
    FileList {
        /// Workspace-relative path (`""` for the root).
        path: String,
    },
    /// Remove a workspace file or empty directory.
    FileRemove {
        /// Workspace-relative path.
        path: String,
    },
}

/// An error carried over the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireError {
    /// [`Error::code`] of the error.
    pub code: String,
    /// Its message.
    pub message: String,
}

impl WireError {
    /// The wire form of an [`Error`].
    pub fn from_error(e: &Error) -> Self {
        let message = match e {
            Error::Invalid(m)
            | Error::NotFound(m)
            | Error::TooLarge(m)
            | Error::SandboxGone(m)
            | Error::Busy(m)
            | Error::Host(m) => m.clone(),
            other => other.to_string(),
        };
        WireError { code: e.code().to_string(), message }
    }

    /// Back to an [`Error`] on the host.
    pub fn into_error(self) -> Error {
        match self.code.as_str() {
            "invalid_request" => Error::Invalid(self.message),
            "not_found" => Error::NotFound(self.message),
            "too_large" => Error::TooLarge(self.message),
            "sandbox_gone" => Error::SandboxGone(self.message),
            "busy" => Error::Busy(self.message),
            _ => Error::Host(format!("in the guest: {}", self.message)),
        }
    }
}

/// The agent's answers to file requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentReply {
    /// The result of one file request: exactly one of the fields is set, or none
    /// for a write or remove that succeeded.
    FileReply {
        /// Base64 of a file that was read.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        data: Option<String>,
        /// A listing.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        entries: Option<Vec<FileEntry>>,
        /// Why the request failed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<WireError>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_round_trip() {
        for e in
            [Error::NotFound("'a' does not exist".into()), Error::TooLarge("big".into()), Error::Invalid("bad".into())]
        {
            assert_eq!(WireError::from_error(&e).into_error(), e);
        }
        let host = WireError::from_error(&Error::host("disk on fire")).into_error();
        assert_eq!(host, Error::Host("in the guest: disk on fire".into()));
    }

    #[test]
    fn request_shape() {
        let r = AgentRequest::FileRead { path: "a.txt".into(), max_bytes: 5 };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v, serde_json::json!({"type": "file_read", "path": "a.txt", "max_bytes": 5}));
        let back: AgentRequest = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
    }
}
