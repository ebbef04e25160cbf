//! What a caller asks for: [`ExecRequest`] and its parts.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::backend::BackendKind;
use crate::error::Error;
use crate::guard::GuardSettings;
use crate::paths::WorkspacePath;
use crate::units::{format_duration_ms, format_size};

/// The language of a piece of code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    /// Python 3, run by the guest driver with IPython-like semantics.
    #[default]
    Python,
    /// A `bash -c` script, run from the workspace directory.
    Bash,
}

impl Language {
    /// The lowercase name used on the wire and in the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Language::Python => "python",
            Language::Bash => "bash",
        }
    }
}

impl std::str::FromStr for Language {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.to_ascii_lowercase().as_str() {
            "python" | "py" | "python3" => Ok(Language::Python),
            "bash" | "sh" | "shell" => Ok(Language::Bash),
            other => Err(Error::invalid(format!("unknown language '{other}': use 'python' or 'bash'"))),
        }
    }
}

/// Network access granted to the sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum NetworkPolicy {
    /// No network: an empty network namespace with loopback only (or no sockets at all).
    #[default]
    None,
    /// The host's network, unfiltered. Only for trusted code; backends may refuse it.
    Host,
}

/// Resource limits of one execution (or of one cell of a session).
///
/// Every limit has a safe default; nothing is unlimited. Units are in the names.
/// Unknown fields are rejected so that a typo does not silently leave a default in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Wall-clock time for one execution, in milliseconds (default 30 000).
    /// When it passes the run stops with status `timeout`.
    pub timeout_ms: u64,
    /// CPU time for one execution, in milliseconds (default 30 000), summed over all
    /// processes of the sandbox where the backend can measure it.
    pub cpu_ms: u64,
    /// Memory of the whole sandbox, in bytes (default 512 MiB).
    pub memory_bytes: u64,
    /// Processes and threads the sandbox may have at once (default 64).
    pub processes: u32,
    /// stdout and stderr together, in bytes (default 1 MiB). Beyond it output is
    /// truncated and the run stops with status `output_limit`.
    pub output_bytes: u64,
    /// Rich results of one execution together (`display()` values, figures, the last
    /// expression's value), in bytes of their JSON (default 16 MiB). Results beyond it
    /// are dropped as they arrive and the run stops with status `output_limit`.
    pub result_bytes: u64,
    /// The largest file the code may write, and the size of the workspace, in bytes
    /// (default 64 MiB).
    pub file_bytes: u64,
    /// Open file descriptors per process (default 256).
    pub open_files: u32,
}

/// One mebibyte.
pub const MIB: u64 = 1024 * 1024;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout_ms: 30_000,
            cpu_ms: 30_000,
            memory_bytes: 512 * MIB,
            processes: 64,
            output_bytes: MIB,
            result_bytes: 16 * MIB,
            file_bytes: 64 * MIB,
            open_files: 256,
        }
    }
}

impl Limits {
    /// The smallest values a sandbox can run with; below them nothing useful starts.
    pub const MIN: Limits = Limits {
        timeout_ms: 1,
        cpu_ms: 1,
        memory_bytes: 16 * MIB,
        processes: 1,
        output_bytes: 0,
        result_bytes: 0,
        file_bytes: 0,
        open_files: 16,
    };

    /// Checks that every limit is at least [`Limits::MIN`] and at most `max`,
    /// naming the first offending field and what to do about it.
    pub fn validate(&self, max: &Limits) -> Result<(), Error> {
        let min = Limits::MIN;
        type Check = (&'static str, u64, u64, u64, fn(u64) -> String);
        let checks: [Check; 8] = [
            ("timeout_ms", self.timeout_ms, min.timeout_ms, max.timeout_ms, format_duration_ms),
            ("cpu_ms", self.cpu_ms, min.cpu_ms, max.cpu_ms, format_duration_ms),
            ("memory_bytes", self.memory_bytes, min.memory_bytes, max.memory_bytes, format_size),
            ("processes", self.processes.into(), min.processes.into(), max.processes.into(), |v| v.to_string()),
            ("output_bytes", self.output_bytes, min.output_bytes, max.output_bytes, format_size),
            ("result_bytes", self.result_bytes, min.result_bytes, max.result_bytes, format_size),
            ("file_bytes", self.file_bytes, min.file_bytes, max.file_bytes, format_size),
            ("open_files", self.open_files.into(), min.open_files.into(), max.open_files.into(), |v| v.to_string()),
        ];
        for (name, value, lo, hi, show) in checks {
            if value < lo {
                return Err(Error::invalid(format!(
                    "limits.{name} = {} is below the minimum of {}; raise it",
                    show(value),
                    show(lo)
                )));
            }
            if value > hi {
                return Err(Error::invalid(format!(
                    "limits.{name} = {} is above this server's maximum of {}; lower it",
                    show(value),
                    show(hi)
                )));
            }
        }
        Ok(())
    }

    /// Generous upper bounds used when no server configuration says otherwise.
    pub fn generous_max() -> Limits {
        Limits {
            timeout_ms: 24 * 3600 * 1000,
            cpu_ms: 24 * 3600 * 1000,
            memory_bytes: 64 * 1024 * MIB,
            processes: 4096,
            output_bytes: 1024 * MIB,
            result_bytes: 1024 * MIB,
            file_bytes: 16 * 1024 * MIB,
            open_files: 65_536,
        }
    }
}

/// How a file's `content` is encoded in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ContentEncoding {
    /// The content is the file's text, as UTF-8.
    #[default]
    Utf8,
    /// The content is standard base64 of the file's bytes.
    Base64,
}

/// A file to place in the workspace before the code runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FileInput {
    /// Path relative to the workspace, e.g. `data/input.csv`.
    pub path: String,
    /// The file's content, encoded as `encoding` says.
    pub content: String,
    /// `utf8` (default) or `base64`.
    #[serde(default)]
    pub encoding: ContentEncoding,
}

impl FileInput {
    /// A text file.
    pub fn text(path: impl Into<String>, content: impl Into<String>) -> Self {
        FileInput { path: path.into(), content: content.into(), encoding: ContentEncoding::Utf8 }
    }

    /// A binary file, stored base64-encoded.
    pub fn binary(path: impl Into<String>, bytes: &[u8]) -> Self {
        FileInput {
            path: path.into(),
            content: crate::outcome::base64_encode(bytes),
            encoding: ContentEncoding::Base64,
        }
    }

    /// The checked workspace path and decoded bytes of this file.
    pub fn decode(&self) -> Result<(WorkspacePath, Vec<u8>), Error> {
        let path = WorkspacePath::parse(&self.path)?;
        let bytes = match self.encoding {
            ContentEncoding::Utf8 => self.content.as_bytes().to_vec(),
            ContentEncoding::Base64 => crate::outcome::base64_decode(&self.content)
                .map_err(|e| Error::invalid(format!("file '{}': content is not valid base64: {e}", self.path)))?,
        };
        Ok((path, bytes))
    }
}

/// One execution request: the unit every interface (CLI, HTTP, MCP, SDK) turns into.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// `python` (default) or `bash`.
    #[serde(default)]
    pub language: Language,
    /// The code to run.
    pub code: String,
    /// Files to place in the workspace before the run.
    #[serde(default)]
    pub files: Vec<FileInput>,
    /// Environment variables for the code (the sandbox's environment is otherwise minimal).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Python globals defined before the code runs (JSON values), as in mcp-run-python.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub global_variables: serde_json::Map<String, serde_json::Value>,
    /// Resource limits; omitted fields take their defaults.
    #[serde(default)]
    pub limits: Limits,
    /// Network access (default `none`).
    #[serde(default)]
    pub network: NetworkPolicy,
    /// The backend to run on; omitted means the safest one that works on this host.
    #[serde(default)]
    pub backend: Option<BackendKind>,
    /// Workspace paths to return in [`crate::Outcome::files`] after the run, each
    /// named once. Each file is at most `limits.file_bytes`, and so are all of them
    /// together.
    #[serde(default)]
    pub outputs: Vec<String>,
    /// The guard: a static policy checked on the host before anything starts, and a
    /// runtime audit hook in the sandbox (default profile `off`: the backend is the
    /// boundary). A safety net, not a boundary; see docs/guard.md.
    #[serde(default, skip_serializing_if = "GuardSettings::is_off")]
    pub guard: GuardSettings,
    /// A server template (its modules already imported, from the warm pool when
    /// one is ready); omitted means the server's `default` template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
}

impl ExecRequest {
    /// A Python request with default limits.
    pub fn python(code: impl Into<String>) -> Self {
        ExecRequest {
            language: Language::Python,
            code: code.into(),
            files: Vec::new(),
            env: BTreeMap::new(),
            global_variables: serde_json::Map::new(),
            limits: Limits::default(),
            network: NetworkPolicy::None,
            backend: None,
            outputs: Vec::new(),
            guard: GuardSettings::default(),
            template: None,
        }
    }

    /// Checks everything that can be checked without running: limits against `max`,
    /// file paths and encodings, output paths, environment names.
    pub fn validate(&self, max: &Limits) -> Result<(), Error> {
        self.limits.validate(max)?;
        for f in &self.files {
            let (_, bytes) = f.decode()?;
            if bytes.len() as u64 > self.limits.file_bytes {
                return Err(Error::invalid(format!(
                    "file '{}' is {} but limits.file_bytes is {}; raise the limit or send a smaller file",
                    f.path,
                    format_size(bytes.len() as u64),
                    format_size(self.limits.file_bytes)
                )));
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for p in &self.outputs {
            let path = WorkspacePath::parse(p)?;
            if !seen.insert(path) {
                return Err(Error::invalid(format!("outputs names '{p}' more than once; list each file once")));
            }
        }
        self.guard.validate()?;
        validate_env(&self.env)
    }
}

/// The limits a cell may give: each one omitted takes the sandbox's. `timeout_ms`,
/// `cpu_ms`, `output_bytes` and `result_bytes` may differ from the sandbox's; the
/// others are fixed when the sandbox is created and, when given, must equal its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct CellLimits {
    /// Wall-clock time of this cell, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// CPU time of this cell, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_ms: Option<u64>,
    /// stdout and stderr of this cell, in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_bytes: Option<u64>,
    /// Rich results of this cell, in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result_bytes: Option<u64>,
    /// Fixed at creation: must equal the sandbox's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// Fixed at creation: must equal the sandbox's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub processes: Option<u32>,
    /// Fixed at creation: must equal the sandbox's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_bytes: Option<u64>,
    /// Fixed at creation: must equal the sandbox's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub open_files: Option<u32>,
}

/// What a sandbox fixed when it was created, and a cell inherits.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxTerms<'a> {
    /// The sandbox's id (for messages).
    pub id: &'a str,
    /// Its backend.
    pub backend: BackendKind,
    /// Its limits (the cells' defaults for the per-cell ones).
    pub limits: Limits,
    /// Its network.
    pub network: NetworkPolicy,
    /// Its guard.
    pub guard: &'a GuardSettings,
}

/// One cell of a session (`POST /v1/sandboxes/{id}/execute`, MCP `run_code`): an
/// [`ExecRequest`] without what is fixed when the sandbox is created. `backend`,
/// `network`, `env` and `guard` are accepted only when they repeat the sandbox's own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CellRequest {
    /// `python` (default) or `bash`.
    #[serde(default)]
    pub language: Language,
    /// The code to run.
    pub code: String,
    /// Files to place in the workspace before the run.
    #[serde(default)]
    pub files: Vec<FileInput>,
    /// Python globals defined before the code runs (JSON values).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub global_variables: serde_json::Map<String, serde_json::Value>,
    /// This cell's limits; omitted ones take the sandbox's.
    #[serde(default)]
    pub limits: CellLimits,
    /// Workspace paths to return in [`crate::Outcome::files`] after the run.
    #[serde(default)]
    pub outputs: Vec<String>,
    /// Fixed at creation: omit it, or repeat the sandbox's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<BackendKind>,
    /// Fixed at creation: omit it, or repeat the sandbox's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkPolicy>,
    /// Fixed at creation: must be empty.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Fixed at creation (`guard` of `POST /v1/sandboxes`): omit it, or repeat the sandbox's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<GuardSettings>,
}

impl CellRequest {
    /// A Python cell with everything else left to the sandbox.
    pub fn python(code: impl Into<String>) -> Self {
        CellRequest {
            language: Language::Python,
            code: code.into(),
            files: Vec::new(),
            global_variables: serde_json::Map::new(),
            limits: CellLimits::default(),
            outputs: Vec::new(),
            backend: None,
            network: None,
            env: BTreeMap::new(),
            guard: None,
        }
    }

    /// The full request this cell makes in a sandbox created with `terms`, checked
    /// against `max`: what the sandbox fixed is inherited, and a cell that tries to
    /// change it is refused, naming the field and what to do.
    pub fn resolve(self, terms: &SandboxTerms<'_>, max: &Limits) -> Result<ExecRequest, Error> {
        let fixed = |what: &str, how: &str| {
            Error::invalid(format!(
                "`{what}` is fixed when a sandbox is created (POST /v1/sandboxes); {how} (sandbox {})",
                terms.id
            ))
        };
        if self.backend.is_some_and(|b| b != terms.backend) {
            return Err(fixed(
                "backend",
                &format!("this one runs on '{}': leave `backend` out of a cell", terms.backend),
            ));
        }
        if self.network.is_some_and(|n| n != terms.network) {
            return Err(fixed("network", "leave it out of a cell"));
        }
        if !self.env.is_empty() {
            return Err(fixed("env", "leave it out of a cell"));
        }
        if self.guard.as_ref().is_some_and(|g| g != terms.guard) {
            return Err(fixed("guard", "leave it out of a cell, or create a sandbox with the guard you want"));
        }
        let base = terms.limits;
        let l = self.limits;
        let same: [(&str, Option<u64>, u64); 4] = [
            ("memory_bytes", l.memory_bytes, base.memory_bytes),
            ("processes", l.processes.map(u64::from), base.processes.into()),
            ("file_bytes", l.file_bytes, base.file_bytes),
            ("open_files", l.open_files.map(u64::from), base.open_files.into()),
        ];
        for (name, asked, fixed) in same {
            if asked.is_some_and(|a| a != fixed) {
                return Err(Error::invalid(format!(
                    "limits.{name} is fixed when the sandbox is created ({fixed}); a cell may change only timeout_ms, cpu_ms, output_bytes and result_bytes"
                )));
            }
        }
        let limits = Limits {
            timeout_ms: l.timeout_ms.unwrap_or(base.timeout_ms),
            cpu_ms: l.cpu_ms.unwrap_or(base.cpu_ms),
            output_bytes: l.output_bytes.unwrap_or(base.output_bytes),
            result_bytes: l.result_bytes.unwrap_or(base.result_bytes),
            ..base
        };
        let req = ExecRequest {
            language: self.language,
            code: self.code,
            files: self.files,
            env: BTreeMap::new(),
            global_variables: self.global_variables,
            limits,
            network: terms.network,
            backend: Some(terms.backend),
            outputs: self.outputs,
            guard: terms.guard.clone(),
            template: None,
        };
        req.validate(max)?;
        Ok(req)
    }
}

/// Rejects environment variable names or values the OS cannot carry.
pub fn validate_env(env: &BTreeMap<String, String>) -> Result<(), Error> {
    for (k, v) in env {
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            return Err(Error::invalid(format!(
                "environment variable name {k:?} is invalid: it must be non-empty and contain no '=' or NUL"
            )));
        }
        if v.contains('\0') {
            return Err(Error::invalid(format!("environment variable {k} contains a NUL byte")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_missing_limits() {
        let l: Limits = serde_json::from_str(r#"{"timeout_ms": 1000}"#).unwrap();
        assert_eq!(l.timeout_ms, 1000);
        assert_eq!(l.memory_bytes, 512 * MIB);
        assert_eq!(l.output_bytes, MIB);
    }

    #[test]
    fn unknown_limit_is_rejected() {
        let err = serde_json::from_str::<Limits>(r#"{"timeout": 1000}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `timeout`"), "{err}");
    }

    #[test]
    fn limits_validate_names_the_field() {
        let l = Limits { memory_bytes: 1024, ..Limits::default() };
        let e = l.validate(&Limits::generous_max()).unwrap_err().to_string();
        assert!(e.contains("limits.memory_bytes") && e.contains("minimum"), "{e}");
        let l = Limits { timeout_ms: 10_000, ..Limits::default() };
        let max = Limits { timeout_ms: 5_000, ..Limits::generous_max() };
        let e = l.validate(&max).unwrap_err().to_string();
        assert!(e.contains("limits.timeout_ms") && e.contains("maximum"), "{e}");
    }

    #[test]
    fn request_round_trips_with_defaults() {
        let r: ExecRequest = serde_json::from_str(r#"{"code": "1+1"}"#).unwrap();
        assert_eq!(r.language, Language::Python);
        assert_eq!(r.network, NetworkPolicy::None);
        assert!(r.backend.is_none());
        let back: ExecRequest = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn request_validation_checks_files_and_env() {
        let mut r = ExecRequest::python("print(1)");
        r.files.push(FileInput::text("../etc/passwd", "x"));
        assert!(r.validate(&Limits::generous_max()).unwrap_err().to_string().contains(".."));
        let mut r = ExecRequest::python("print(1)");
        r.files.push(FileInput { path: "a.bin".into(), content: "!!".into(), encoding: ContentEncoding::Base64 });
        assert!(r.validate(&Limits::generous_max()).unwrap_err().to_string().contains("base64"));
        let mut r = ExecRequest::python("print(1)");
        r.env.insert("A=B".into(), "x".into());
        assert!(r.validate(&Limits::generous_max()).is_err());
    }

    #[test]
    fn an_output_named_twice_is_refused() {
        let mut r = ExecRequest::python("1");
        r.outputs = vec!["a.txt".into(), "b.txt".into(), "/workspace/./a.txt".into()];
        let e = r.validate(&Limits::generous_max()).unwrap_err().to_string();
        assert!(e.contains("more than once") && e.contains("/workspace/./a.txt"), "{e}");
        r.outputs.pop();
        r.validate(&Limits::generous_max()).unwrap();
    }

    #[test]
    fn language_parses_aliases() {
        assert_eq!("py".parse::<Language>().unwrap(), Language::Python);
        assert_eq!("sh".parse::<Language>().unwrap(), Language::Bash);
        assert!("cobol".parse::<Language>().unwrap_err().to_string().contains("cobol"));
    }
}
