//! Settings of the long-running service (`airlock serve`, `airlock mcp`): caps,
//! timeouts and limits. Every field has a default; a TOML file may set any of them,
//! and unknown keys are refused so that a typo never leaves a default in place.

use std::path::{Path, PathBuf};

use airlock_core::request::MIB;
use airlock_core::{BackendKind, Error, Limits};
use serde::{Deserialize, Serialize};

/// How API keys are required.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Required when the server listens on a non-loopback address; optional on
    /// loopback (a key that is sent is still checked).
    #[default]
    Auto,
    /// Always required.
    Required,
}

/// The service's settings. Durations are in milliseconds and sizes in bytes, as the
/// names say.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// Address to listen on (default `127.0.0.1:8080`).
    pub listen: String,
    /// Where the audit log and API keys live (default: airlock's data directory).
    pub data_dir: Option<PathBuf>,
    /// When API keys are required (default `auto`).
    pub auth: AuthMode,
    /// The backend of requests that name none (default: the first of jail, wasm,
    /// microvm that this server serves).
    pub default_backend: Option<BackendKind>,
    /// The backends this server runs code on; a request for any other is refused
    /// with `400`. Empty (the default): every isolating backend that works here (jail,
    /// wasm, microvm), plus any backend the operator names as `default_backend` or in a
    /// template. `process` runs code with no isolation, as the server's own user: it
    /// is served only when the operator names it, and the server warns at start-up.
    pub backends: Vec<BackendKind>,
    /// Whether requests may ask for `network: "host"` (the host's own network, `jail`
    /// only). Off by default. When on, API keys are required on every request,
    /// loopback included: code on the host's network reaches this server's port.
    pub allow_host_network: bool,
    /// Limits of requests that leave them out (default: airlock's defaults).
    pub default_limits: Limits,
    /// The largest limits a request may ask for.
    pub max_limits: Limits,
    /// Live sessions (stateful sandboxes) on the whole server (default 64).
    pub max_sandboxes: usize,
    /// Backend operations at once: running executions plus sandboxes being created
    /// (default: twice the CPUs, at least 2).
    pub max_running: usize,
    /// Requests that may wait for a slot at once; beyond it they get `429` at once
    /// (default 256).
    pub max_queue: usize,
    /// How long a request waits for a slot before it gets `429` (default 10 s).
    pub queue_timeout_ms: u64,
    /// Live sessions one API key may hold (default 16; a key may have its own).
    pub per_key_max_sandboxes: u32,
    /// A session without activity for this long is destroyed (default 10 min).
    pub idle_timeout_ms: u64,
    /// The longest idle timeout a session may ask for (default 24 h).
    pub max_idle_timeout_ms: u64,
    /// A session is destroyed this long after it was created (default 1 h).
    pub max_lifetime_ms: u64,
    /// The longest lifetime a session may ask for (default 24 h).
    pub max_max_lifetime_ms: u64,
    /// The largest JSON request body (default 8 MiB).
    pub max_body_bytes: u64,
    /// The largest file uploaded or downloaded through the files API (default 64 MiB).
    pub max_file_bytes: u64,
    /// File uploads and downloads holding a file in memory at once (default 4), so
    /// that their buffers stay bounded. An upload takes its slot only once its body
    /// has arrived.
    pub max_file_transfers: usize,
    /// File transfers one API key (or the local user) may have under way at once,
    /// an upload from its first byte to its last (default 2); beyond it `429` at
    /// once, so that one key cannot hold every slot of `max_file_transfers`.
    pub per_key_file_transfers: usize,
    /// HTTP requests in flight at once; beyond it requests get `429` (default 512).
    pub max_inflight_requests: usize,
    /// Open HTTP connections at once (default 512). At the cap the server stops
    /// accepting: further connections wait in the kernel's listen backlog until one
    /// closes, and take no file descriptor of the server meanwhile.
    pub max_connections: usize,
    /// A request's head (request line and headers) must be complete within this long
    /// of its connection becoming ready for it: accepted, or the previous response
    /// sent (default 10 s). Then the connection is closed.
    pub header_timeout_ms: u64,
    /// A connection with no request under way and no byte of a new one is closed
    /// after this long (default 5 s); at most `header_timeout_ms`.
    pub keepalive_timeout_ms: u64,
    /// A request body must arrive within this long, plus one second for every
    /// `min_transfer_bytes_per_s` bytes of it; else the request is answered `408`
    /// and the connection closed (default 30 s).
    pub body_timeout_ms: u64,
    /// The slowest a client may send a request body or take a response, in bytes per
    /// second (default 64 KiB/s), averaged as `body_timeout_ms` and `send_timeout_ms` say.
    pub min_transfer_bytes_per_s: u64,
    /// While the server has bytes to send that the client does not take, the client
    /// must take at least `min_transfer_bytes_per_s` times this long in each period of
    /// this long, else the connection is closed (default 30 s). A response that is
    /// waiting for a run's next output is not waiting on the client: streams of long
    /// runs are never cut by this.
    pub send_timeout_ms: u64,
    /// Origins (`scheme://host[:port]`) whose web pages may call this server, besides
    /// its own origin (the request's `Host`). A request with any other `Origin`
    /// header is refused (`403 forbidden_origin`). Default: none.
    pub allowed_origins: Vec<String>,
    /// On shutdown, running cells get this long to finish before they are stopped
    /// (default 30 s).
    pub drain_timeout_ms: u64,
    /// How often idle and expired sessions are looked for (default 1 s).
    pub reap_interval_ms: u64,
    /// stdout and stderr are each kept up to this size in the audit log (default 64 KiB).
    pub audit_output_bytes: u64,
    /// Code is kept up to this size in the audit log (default 64 KiB).
    pub audit_code_bytes: u64,
    /// Execution records accepted more than this many days ago are deleted, in the
    /// background (default 30). Ended sessions and idempotency keys expire with them.
    /// 0 keeps them forever.
    pub audit_retention_days: u64,
    /// The audit store is kept under this many bytes of data: past it, the oldest
    /// finished records are deleted, in the background, down to 90% of it (default
    /// 1 GiB). 0: no cap. Records of running executions are never deleted.
    pub audit_max_bytes: u64,
    /// The largest answer kept so that a retry with the same `Idempotency-Key` gets it
    /// again (default 1 MiB); a retry of a request whose answer was larger learns its
    /// execution id and status instead.
    pub idempotency_response_bytes: u64,
    /// Extra `Host` header values accepted by the MCP endpoint (`/mcp`), besides
    /// loopback names and the listen address (DNS-rebinding protection).
    pub mcp_allowed_hosts: Vec<String>,
    /// Ready sandboxes the warm pool keeps per template, unless the template sets
    /// its own `pool_size` (default 2; 0 turns the pool off).
    pub pool_size: usize,
    /// The most memory the warm pool may hold, charged at each ready sandbox's
    /// `memory_bytes` limit (default 4 GiB).
    pub pool_memory_bytes: u64,
    /// Templates besides the built-in `default` (which imports whichever of numpy,
    /// pandas and matplotlib.pyplot are installed); a template named `default`
    /// replaces the built-in one. In TOML: `[[templates]]` tables.
    pub templates: Vec<TemplateSettings>,
}

/// A template in the settings file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateSettings {
    /// Its name (letters, digits, `-`, `_`; up to 64 bytes), chosen per request
    /// with `"template": "<name>"`.
    pub name: String,
    /// Its backend (default: the server's default backend).
    #[serde(default)]
    pub backend: Option<BackendKind>,
    /// Modules imported before user code runs (e.g. `["numpy", "pandas"]`); each
    /// must import, or the template reports the failure.
    #[serde(default)]
    pub modules: Vec<String>,
    /// Its sandboxes' limits; omitted fields take `default_limits`.
    #[serde(default)]
    pub limits: toml::Table,
    /// Ready sandboxes to keep (default: the server's `pool_size`).
    #[serde(default)]
    pub pool_size: Option<usize>,
}

impl Default for ServerSettings {
    fn default() -> Self {
        let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        ServerSettings {
            listen: "127.0.0.1:8080".into(),
            data_dir: None,
            auth: AuthMode::Auto,
            default_backend: None,
            backends: Vec::new(),
            allow_host_network: false,
            default_limits: Limits::default(),
            max_limits: Limits {
                timeout_ms: 3_600_000,
                cpu_ms: 3_600_000,
                memory_bytes: 8 * 1024 * MIB,
                processes: 1024,
                output_bytes: 64 * MIB,
                result_bytes: 64 * MIB,
                file_bytes: 1024 * MIB,
                open_files: 4096,
            },
            max_sandboxes: 64,
            max_running: (2 * cpus).max(2),
            max_queue: 256,
            queue_timeout_ms: 10_000,
            per_key_max_sandboxes: 16,
            idle_timeout_ms: 600_000,
            max_idle_timeout_ms: 86_400_000,
            max_lifetime_ms: 3_600_000,
            max_max_lifetime_ms: 86_400_000,
            max_body_bytes: 8 * MIB,
            max_file_bytes: 64 * MIB,
            max_file_transfers: 4,
            per_key_file_transfers: 2,
            max_inflight_requests: 512,
            max_connections: 512,
            header_timeout_ms: 10_000,
            keepalive_timeout_ms: 5_000,
            body_timeout_ms: 30_000,
            min_transfer_bytes_per_s: 64 * 1024,
            send_timeout_ms: 30_000,
            allowed_origins: Vec::new(),
            drain_timeout_ms: 30_000,
            reap_interval_ms: 1_000,
            audit_output_bytes: 64 * 1024,
            audit_code_bytes: 64 * 1024,
            audit_retention_days: 30,
            audit_max_bytes: 1024 * MIB,
            idempotency_response_bytes: MIB,
            mcp_allowed_hosts: Vec::new(),
            pool_size: 2,
            pool_memory_bytes: 4096 * MIB,
            templates: Vec::new(),
        }
    }
}

impl ServerSettings {
    /// Reads settings from a TOML file; keys it leaves out keep their defaults.
    pub fn from_file(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::invalid(format!("cannot read the settings file {}: {e}", path.display())))?;
        let s = Self::from_toml(&text).map_err(|e| Error::invalid(format!("settings file {}: {e}", path.display())))?;
        s.validate().map_err(|e| {
            Error::invalid(format!(
                "settings file {}: {}",
                path.display(),
                e.to_string().trim_start_matches("invalid request: ")
            ))
        })?;
        Ok(s)
    }

    /// Parses settings from TOML text. Tables merge into the defaults key by key, so
    /// `[max_limits] timeout_ms = 5000` changes only that maximum.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        // Parsed once as-is for precise messages about unknown keys and wrong types...
        toml::from_str::<ServerSettings>(text).map_err(|e| e.to_string().trim().to_string())?;
        // ...then merged into the defaults.
        let mut base = toml::Value::try_from(ServerSettings::default()).map_err(|e| e.to_string())?;
        let given: toml::Value = toml::from_str(text).map_err(|e| e.to_string().trim().to_string())?;
        merge(&mut base, given);
        base.try_into().map_err(|e: toml::de::Error| e.to_string().trim().to_string())
    }

    /// The data directory: the configured one, else airlock's default.
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(crate::default_data_dir)
    }

    /// Checks that the settings make sense together, naming what to change.
    pub fn validate(&self) -> Result<(), Error> {
        self.max_limits.validate(&Limits::generous_max()).map_err(|e| {
            Error::invalid(format!("max_limits: {}", e.to_string().trim_start_matches("invalid request: ")))
        })?;
        self.default_limits.validate(&self.max_limits).map_err(|e| {
            Error::invalid(format!(
                "default_limits must be within max_limits: {}",
                e.to_string().trim_start_matches("invalid request: ")
            ))
        })?;
        let positive: [(&str, u64); 15] = [
            ("max_sandboxes", self.max_sandboxes as u64),
            ("max_running", self.max_running as u64),
            ("max_file_transfers", self.max_file_transfers as u64),
            ("per_key_file_transfers", self.per_key_file_transfers as u64),
            ("max_inflight_requests", self.max_inflight_requests as u64),
            ("max_connections", self.max_connections as u64),
            ("header_timeout_ms", self.header_timeout_ms),
            ("keepalive_timeout_ms", self.keepalive_timeout_ms),
            ("body_timeout_ms", self.body_timeout_ms),
            ("min_transfer_bytes_per_s", self.min_transfer_bytes_per_s),
            ("send_timeout_ms", self.send_timeout_ms),
            ("max_body_bytes", self.max_body_bytes),
            ("reap_interval_ms", self.reap_interval_ms),
            ("idle_timeout_ms", self.idle_timeout_ms),
            ("max_lifetime_ms", self.max_lifetime_ms),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(Error::invalid(format!("{name} must be at least 1")));
            }
        }
        if self.audit_max_bytes != 0 && self.audit_max_bytes < 16 * MIB {
            return Err(Error::invalid(format!(
                "audit_max_bytes = {} is too small to keep a useful log: use at least 16 MiB ({}), or 0 for no cap",
                self.audit_max_bytes,
                16 * MIB
            )));
        }
        if self.audit_retention_days > 36_500 {
            return Err(Error::invalid("audit_retention_days is more than 100 years: use 0 to keep the log forever"));
        }
        if self.keepalive_timeout_ms > self.header_timeout_ms {
            return Err(Error::invalid(format!(
                "keepalive_timeout_ms ({}) must not exceed header_timeout_ms ({}): a connection waiting for its next request is closed at the header deadline anyway; raise header_timeout_ms or lower keepalive_timeout_ms",
                self.keepalive_timeout_ms, self.header_timeout_ms
            )));
        }
        for o in &self.allowed_origins {
            check_origin(o)?;
        }
        if self.idle_timeout_ms > self.max_idle_timeout_ms {
            return Err(Error::invalid("idle_timeout_ms must not exceed max_idle_timeout_ms"));
        }
        if self.max_lifetime_ms > self.max_max_lifetime_ms {
            return Err(Error::invalid("max_lifetime_ms must not exceed max_max_lifetime_ms"));
        }
        if !self.backends.is_empty() {
            let served = |b: &BackendKind| self.backends.contains(b);
            let list = || self.backends.iter().map(|b| b.as_str()).collect::<Vec<_>>().join(", ");
            if let Some(d) = self.default_backend.filter(|d| !served(d)) {
                return Err(Error::invalid(format!(
                    "default_backend '{d}' is not in backends ({}); add it there or choose one of them",
                    list()
                )));
            }
            if let Some(t) = self.templates.iter().find(|t| t.backend.is_some_and(|b| !served(&b))) {
                return Err(Error::invalid(format!(
                    "template '{}' runs on '{}', which is not in backends ({}); add it there or change the template",
                    t.name,
                    t.backend.map(|b| b.as_str()).unwrap_or_default(),
                    list()
                )));
            }
        }
        self.templates()?;
        Ok(())
    }

    /// What the audit store keeps, as of `now_ms`: `None` when it keeps everything.
    pub fn retention(&self, now_ms: u64) -> Option<crate::store::Retention> {
        let older_than_ms =
            (self.audit_retention_days > 0).then(|| now_ms.saturating_sub(self.audit_retention_days * 86_400_000));
        let max_bytes = (self.audit_max_bytes > 0).then_some(self.audit_max_bytes);
        (older_than_ms.is_some() || max_bytes.is_some()).then_some(crate::store::Retention { older_than_ms, max_bytes })
    }

    /// The backends the operator named: `backends` if set, else `default_backend` and
    /// the templates' backends. Only these may be served without isolation.
    pub fn named_backends(&self) -> Vec<BackendKind> {
        if !self.backends.is_empty() {
            return self.backends.clone();
        }
        let mut out: Vec<BackendKind> = self.default_backend.into_iter().collect();
        for b in self.templates.iter().filter_map(|t| t.backend) {
            if !out.contains(&b) {
                out.push(b);
            }
        }
        out
    }

    /// The templates: the built-in `default` (unless replaced) and those of the
    /// settings file, checked. A template whose backend is not given gets
    /// [`ServerSettings::default_backend`] (or, if that is unset, `None`: the
    /// registry's choice).
    pub fn templates(&self) -> Result<Vec<TemplateSpec>, Error> {
        let mut out: Vec<TemplateSpec> = Vec::new();
        if !self.templates.iter().any(|t| t.name == crate::pool::DEFAULT_TEMPLATE) {
            out.push(TemplateSpec {
                name: crate::pool::DEFAULT_TEMPLATE.into(),
                backend: self.default_backend,
                modules: crate::pool::DEFAULT_MODULES.iter().map(|m| m.to_string()).collect(),
                optional_modules: true,
                limits: self.default_limits,
                pool_size: self.pool_size,
            });
        }
        for t in &self.templates {
            let at = |e: Error| {
                Error::invalid(format!(
                    "template '{}': {}",
                    t.name,
                    e.to_string().trim_start_matches("invalid request: ")
                ))
            };
            let name_ok = !t.name.is_empty()
                && t.name.len() <= 64
                && t.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !name_ok {
                return Err(Error::invalid(format!(
                    "template name '{}' is not valid: use 1 to 64 letters, digits, '-' or '_'",
                    t.name
                )));
            }
            if out.iter().any(|o| o.name == t.name) {
                return Err(Error::invalid(format!("template '{}' is defined twice", t.name)));
            }
            for m in &t.modules {
                crate::pool::check_module_name(m).map_err(at)?;
            }
            let mut limits = toml::Value::try_from(self.default_limits).map_err(|e| Error::host(e.to_string()))?;
            merge(&mut limits, toml::Value::Table(t.limits.clone()));
            let limits: Limits = limits
                .try_into()
                .map_err(|e: toml::de::Error| at(Error::invalid(format!("limits: {}", e.to_string().trim()))))?;
            limits.validate(&self.max_limits).map_err(at)?;
            let pool_size = t.pool_size.unwrap_or(self.pool_size);
            if pool_size > 256 {
                return Err(at(Error::invalid(format!("pool_size = {pool_size} is too large: use 0 to 256"))));
            }
            out.push(TemplateSpec {
                name: t.name.clone(),
                backend: t.backend.or(self.default_backend),
                modules: t.modules.clone(),
                optional_modules: false,
                limits,
                pool_size,
            });
        }
        Ok(out)
    }
}

/// A checked template, before its backend is resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct TemplateSpec {
    /// Its name.
    pub name: String,
    /// The backend it asks for (`None`: the registry's choice).
    pub backend: Option<BackendKind>,
    /// Modules to import before user code.
    pub modules: Vec<String>,
    /// Whether a module that is not installed is skipped (built-in `default`).
    pub optional_modules: bool,
    /// Its sandboxes' limits.
    pub limits: Limits,
    /// Ready sandboxes to keep.
    pub pool_size: usize,
}

/// Checks an entry of `allowed_origins`: `http://` or `https://`, a host, an optional
/// port, and nothing else (an origin has no path).
fn check_origin(o: &str) -> Result<(), Error> {
    let bad = |why: &str| {
        Error::invalid(format!(
            "allowed_origins: '{o}' is not an origin ({why}); write it as a browser sends it, e.g. 'https://app.example.com' or 'http://localhost:3000'"
        ))
    };
    let rest = o
        .strip_prefix("http://")
        .or_else(|| o.strip_prefix("https://"))
        .ok_or_else(|| bad("it must start with http:// or https://"))?;
    if rest.is_empty() {
        return Err(bad("it has no host"));
    }
    if rest.contains(['/', '?', '#', '@', ' ', '*']) {
        return Err(bad("an origin is a scheme, a host and a port only: no path, user, wildcard or spaces"));
    }
    Ok(())
}

/// Merges `over` into `base`: tables key by key, anything else replaced.
fn merge(base: &mut toml::Value, over: toml::Value) {
    match (base, over) {
        (toml::Value::Table(b), toml::Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        ServerSettings::default().validate().unwrap();
    }

    #[test]
    fn file_overrides_some_keys_and_refuses_unknown_ones() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("airlock.toml");
        std::fs::write(&p, "max_running = 3\ndefault_backend = \"process\"\n[max_limits]\ntimeout_ms = 60000\n")
            .unwrap();
        let s = ServerSettings::from_file(&p).unwrap();
        assert_eq!(s.max_running, 3);
        assert_eq!(s.default_backend, Some(BackendKind::Process));
        assert_eq!(s.max_limits.timeout_ms, 60000);
        assert_eq!(s.max_limits.memory_bytes, ServerSettings::default().max_limits.memory_bytes);
        // The default timeout (30 s) would exceed the new maximum: refused, saying what to change.
        std::fs::write(&p, "[max_limits]\ntimeout_ms = 5000\n").unwrap();
        let e = ServerSettings::from_file(&p).unwrap_err().to_string();
        assert!(e.contains("default_limits") && e.contains("timeout_ms"), "{e}");
        std::fs::write(&p, "[max_limits]\ntimeout_ms = 5000\n[default_limits]\ntimeout_ms = 1000\n").unwrap();
        assert_eq!(ServerSettings::from_file(&p).unwrap().default_limits.timeout_ms, 1000);
        std::fs::write(&p, "keepalive_timeout_ms = 20000\nheader_timeout_ms = 10000\n").unwrap();
        let e = ServerSettings::from_file(&p).unwrap_err().to_string();
        assert!(e.contains("keepalive_timeout_ms") && e.contains("header_timeout_ms"), "{e}");
        for bad in ["localhost:3000", "http://a.example/path", "https://*.example", "http://"] {
            std::fs::write(&p, format!("allowed_origins = [\"{bad}\"]\n")).unwrap();
            let e = ServerSettings::from_file(&p).unwrap_err().to_string();
            assert!(e.contains("allowed_origins") && e.contains(bad), "{bad}: {e}");
        }
        std::fs::write(&p, "allowed_origins = [\"http://localhost:3000\", \"https://app.example\"]\n").unwrap();
        assert_eq!(ServerSettings::from_file(&p).unwrap().allowed_origins.len(), 2);
        std::fs::write(&p, "max_connections = 0\n").unwrap();
        let e = ServerSettings::from_file(&p).unwrap_err().to_string();
        assert!(e.contains("max_connections must be at least 1"), "{e}");
        std::fs::write(&p, "max_runing = 3\n").unwrap();
        let e = ServerSettings::from_file(&p).unwrap_err().to_string();
        assert!(e.contains("max_runing"), "{e}");
    }
}
