//! What happened: [`Outcome`] and its parts.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::backend::{BackendKind, Isolation};
use crate::guard::GuardFinding;

/// Why a run ended. A guest that fails is described here, never by a host error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// The code ran to the end (a Python cell without an uncaught exception, a script
    /// with exit status 0).
    Ok,
    /// The code raised an exception or exited with a non-zero status.
    Error,
    /// The wall-clock or CPU time limit was reached.
    Timeout,
    /// The sandbox ran out of its memory limit (the kernel's OOM killer or the
    /// runtime's allocator refused memory).
    MemoryLimit,
    /// stdout and stderr exceeded `limits.output_bytes`, rich results exceeded
    /// `limits.result_bytes`, or a requested output file did not fit `limits.file_bytes`.
    OutputLimit,
    /// The guest was killed by a signal it did not ask for (e.g. `SIGSYS` from seccomp),
    /// or it broke the guest protocol.
    Killed,
    /// The request was refused before anything ran (a guard policy or a limit).
    Denied,
}

impl Status {
    /// The snake_case name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Error => "error",
            Status::Timeout => "timeout",
            Status::MemoryLimit => "memory_limit",
            Status::OutputLimit => "output_limit",
            Status::Killed => "killed",
            Status::Denied => "denied",
        }
    }

    /// Every status, in a stable order (for metrics and docs).
    pub const ALL: [Status; 7] = [
        Status::Ok,
        Status::Error,
        Status::Timeout,
        Status::MemoryLimit,
        Status::OutputLimit,
        Status::Killed,
        Status::Denied,
    ];
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Status {
    type Err = crate::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Status::ALL.into_iter().find(|st| st.as_str() == s).ok_or_else(|| {
            crate::Error::invalid(format!(
                "unknown status '{s}': use one of ok, error, timeout, memory_limit, output_limit, killed, denied"
            ))
        })
    }
}

/// An uncaught exception (Python) or a failed script, cleaned of airlock's own frames.
///
/// Its parts are bounded ([`ErrorInfo::NAME_BYTES`], [`ErrorInfo::VALUE_BYTES`],
/// [`ErrorInfo::TRACEBACK_BYTES`]); a part that was longer is cut, and the cut is
/// marked in the text (`...[truncated by airlock: N bytes in all]...`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorInfo {
    /// The exception type, e.g. `ZeroDivisionError`.
    pub name: String,
    /// The exception message, e.g. `division by zero`.
    pub value: String,
    /// The formatted traceback, showing only the user's code.
    pub traceback: String,
}

impl ErrorInfo {
    /// The most bytes of `name` an outcome carries.
    pub const NAME_BYTES: usize = 256;
    /// The most bytes of `value` an outcome carries (its start is kept).
    pub const VALUE_BYTES: usize = 16 << 10;
    /// The most bytes of `traceback` an outcome carries (its start and its end, where
    /// the exception line is, are kept).
    pub const TRACEBACK_BYTES: usize = 64 << 10;

    /// This error with each part cut to its bound, the cuts marked.
    pub fn bounded(self) -> ErrorInfo {
        self.cut_to(Self::NAME_BYTES, Self::VALUE_BYTES, Self::TRACEBACK_BYTES)
    }

    /// This error with `name` cut to `name` bytes, `value` to `value` bytes (keeping
    /// its start) and `traceback` to `traceback` bytes (keeping its start and end),
    /// each cut marked. Parts already within their bound are left as they are.
    pub fn cut_to(self, name: usize, value: usize, traceback: usize) -> ErrorInfo {
        ErrorInfo {
            name: cut_text(self.name, name, false),
            value: cut_text(self.value, value, false),
            traceback: cut_text(self.traceback, traceback, true),
        }
    }
}

/// Cuts `s` to at most `max` bytes (whole UTF-8 characters) with a marker saying how
/// long it was: the start is kept, and with `keep_end` the end too (half each side).
pub fn cut_text(s: String, max: usize, keep_end: bool) -> String {
    if s.len() <= max {
        return s;
    }
    let marker = format!("\n...[truncated by airlock: {} bytes in all]...\n", s.len());
    if marker.len() >= max {
        return s[..s.floor_char_boundary(max)].to_string();
    }
    let room = max - marker.len();
    let (head, tail) = if keep_end { (room / 2, room - room / 2) } else { (room, 0) };
    let head_end = s.floor_char_boundary(head);
    let tail_start = s.ceil_char_boundary(s.len() - tail);
    let mut out = String::with_capacity(max);
    out.push_str(&s[..head_end]);
    out.push_str(&marker);
    out.push_str(&s[tail_start..]);
    out
}

/// One rich result: the same value in several MIME types, as Jupyter and E2B return.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ResultBundle {
    /// MIME type to content: `text/plain` (repr), `text/html`, `image/png` (base64),
    /// `image/svg+xml`, `text/markdown`, `application/json` (a JSON value), ...
    #[schema(value_type = Object)]
    pub data: BTreeMap<String, serde_json::Value>,
    /// True for the value of the cell's last expression.
    #[serde(default)]
    pub is_main_result: bool,
}

impl ResultBundle {
    /// The `text/plain` form, if any.
    pub fn text(&self) -> Option<&str> {
        self.data.get("text/plain").and_then(|v| v.as_str())
    }

    /// The decoded `image/png` bytes, if any.
    pub fn png(&self) -> Option<Vec<u8>> {
        self.data.get("image/png").and_then(|v| v.as_str()).and_then(|s| base64_decode(s).ok())
    }
}

/// Resources one execution used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
pub struct Usage {
    /// Wall-clock time from the start of the execution to its result, in milliseconds.
    pub wall_ms: u64,
    /// CPU time used (user + system), in milliseconds, where the backend measures it.
    pub cpu_ms: u64,
    /// Peak memory of the sandbox in bytes, where the backend measures it.
    pub peak_memory_bytes: u64,
    /// WebAssembly instructions executed (fuel consumed); only the `wasm` backend counts them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instructions: Option<u64>,
    /// Time spent creating the sandbox before the code started, in milliseconds
    /// (0 for later cells of a session).
    #[serde(default)]
    pub startup_ms: u64,
}

/// A file returned from the workspace after the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OutputFile {
    /// Path relative to the workspace.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Base64 of the content; absent when the file was missing or too large.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_base64: Option<String>,
    /// Why the content is absent, when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The result of one execution, whatever the backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Outcome {
    /// The execution's id (`exe_...`), also its key in the audit log.
    pub id: String,
    /// Why the run ended.
    pub status: Status,
    /// A sentence saying why the run stopped, for every status but `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Captured standard output (UTF-8, invalid bytes replaced), at most `limits.output_bytes`.
    pub stdout: String,
    /// Captured standard error.
    pub stderr: String,
    /// True when stdout was cut at the output limit.
    #[serde(default)]
    pub stdout_truncated: bool,
    /// True when stderr was cut at the output limit.
    #[serde(default)]
    pub stderr_truncated: bool,
    /// Rich results: displayed values and figures, and the last expression's value
    /// (flagged `is_main_result`), at most `limits.result_bytes` of them together.
    #[serde(default)]
    pub results: Vec<ResultBundle>,
    /// True when results were dropped at `limits.result_bytes`.
    #[serde(default)]
    pub results_truncated: bool,
    /// The uncaught exception or failure, if any.
    #[serde(default)]
    pub error: Option<ErrorInfo>,
    /// The exit status of the program, when it exited (scripts, `sys.exit`, a crashed
    /// interpreter).
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// The signal that ended the guest, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// Resources used.
    pub usage: Usage,
    /// The backend that ran the code.
    pub backend: BackendKind,
    /// The kind of boundary the backend provides (`none` for `process`).
    pub isolation: Isolation,
    /// The sandbox the code ran in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox_id: Option<String>,
    /// The cell's number in its sandbox (1 for the first).
    #[serde(default)]
    pub execution_count: u64,
    /// Files requested with `outputs`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<OutputFile>,
    /// Things the caller should know: a limit the backend could not enforce here, a
    /// fallback that was taken.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Why the guard refused the code (status `denied`), one entry per violation;
    /// empty otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub guard_findings: Vec<GuardFinding>,
}

impl Outcome {
    /// An empty outcome with status `ok`, to be filled in by a backend.
    pub fn new(id: String, backend: BackendKind, isolation: Isolation) -> Self {
        Outcome {
            id,
            status: Status::Ok,
            reason: None,
            stdout: String::new(),
            stderr: String::new(),
            stdout_truncated: false,
            stderr_truncated: false,
            results: Vec::new(),
            results_truncated: false,
            error: None,
            exit_code: None,
            signal: None,
            usage: Usage::default(),
            backend,
            isolation,
            sandbox_id: None,
            execution_count: 0,
            files: Vec::new(),
            warnings: Vec::new(),
            guard_findings: Vec::new(),
        }
    }

    /// An outcome for a request refused before it ran.
    pub fn denied(
        id: String,
        backend: BackendKind,
        isolation: Isolation,
        reason: impl Into<String>,
        error: Option<ErrorInfo>,
    ) -> Self {
        let mut o = Outcome::new(id, backend, isolation);
        o.status = Status::Denied;
        o.reason = Some(reason.into());
        o.error = error;
        o
    }

    /// The main result (the last expression's value), if any.
    pub fn main_result(&self) -> Option<&ResultBundle> {
        self.results.iter().find(|r| r.is_main_result)
    }

    /// The main result's `text/plain` form, if any.
    pub fn text(&self) -> Option<&str> {
        self.main_result().and_then(|r| r.text())
    }
}

/// Standard base64 with padding.
pub fn base64_encode(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Decodes standard base64 (padding optional, whitespace not allowed).
pub fn base64_decode(s: &str) -> Result<Vec<u8>, base64::DecodeError> {
    base64::engine::general_purpose::STANDARD_NO_PAD.decode(s.trim_end_matches('='))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_names_round_trip() {
        for s in Status::ALL {
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.as_str()));
            assert_eq!(s.as_str().parse::<Status>().unwrap(), s);
        }
    }

    #[test]
    fn main_result_text() {
        let mut o = Outcome::new("exe_1".into(), BackendKind::Process, Isolation::None);
        let mut data = BTreeMap::new();
        data.insert("text/plain".to_string(), serde_json::Value::from("2"));
        o.results.push(ResultBundle { data, is_main_result: true });
        assert_eq!(o.text(), Some("2"));
        let v = serde_json::to_value(&o).unwrap();
        assert_eq!(v["status"], "ok");
        assert_eq!(v["backend"], "process");
        assert_eq!(v["isolation"], "none");
        assert_eq!(v["results"][0]["is_main_result"], true);
    }

    #[test]
    fn errors_are_cut_with_a_marker() {
        let e = ErrorInfo {
            name: "N".repeat(1000),
            value: "é".repeat(100_000),
            traceback: format!("Traceback\n{}\nValueError: end", "x".repeat(1 << 20)),
        };
        let b = e.bounded();
        assert!(b.name.len() <= ErrorInfo::NAME_BYTES, "{}", b.name.len());
        assert!(
            b.value.len() <= ErrorInfo::VALUE_BYTES && b.value.contains("[truncated by airlock: 200000 bytes in all]")
        );
        assert!(b.value.starts_with("éé"));
        assert!(b.traceback.len() <= ErrorInfo::TRACEBACK_BYTES);
        assert!(
            b.traceback.starts_with("Traceback\n") && b.traceback.ends_with("\nValueError: end"),
            "the exception line is kept"
        );
        let small = ErrorInfo { name: "E".into(), value: "v".into(), traceback: "t".into() };
        assert_eq!(small.clone().bounded(), small);
        assert_eq!(cut_text("abcdef".into(), 3, true), "abc");
    }

    #[test]
    fn base64_round_trip() {
        let b = base64_encode(b"\x00\xffhello");
        assert_eq!(base64_decode(&b).unwrap(), b"\x00\xffhello");
        assert!(base64_decode("!!").is_err());
    }
}
