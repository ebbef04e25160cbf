//! The MCP server (official Rust SDK, `rmcp`): the same service as the HTTP API,
//! over stdio (`airlock mcp`) or streamable HTTP (`/mcp` on `airlock serve`).
//!
//! `run_python_code` is compatible with mcp-run-python (same name, arguments and
//! result text); the session tools keep an interpreter alive between calls. Images
//! the code displays (matplotlib figures) come back as MCP image content after the
//! text.

pub mod format;

use std::sync::Arc;

use airlock_core::{BackendKind, Event, Language, Outcome};
use airlock_service::keys::Principal;
use airlock_service::service::AuditState;
use airlock_service::session::CreateSandbox;
use airlock_service::{Pending, Service, ServiceError};
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock as Content};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler, tool, tool_handler, tool_router};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value, json};

pub use format::ReturnMode;

/// Arguments of `run_python_code`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct RunPythonCode {
    /// Python code to run. The value of the last expression is returned.
    pub python_code: String,
    /// Global variables defined before the code runs: names mapped to JSON values.
    #[serde(default)]
    pub global_variables: Map<String, Value>,
}

/// Arguments of `create_sandbox`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
pub struct CreateSandboxArgs {
    /// Isolation backend. Leave it out for the server's default; only backends that
    /// isolate at least as strongly as the default are accepted (the tool list names them).
    #[serde(default)]
    pub backend: Option<String>,
    /// Memory limit of the sandbox in bytes (default 512 MiB).
    #[serde(default)]
    pub memory_bytes: Option<u64>,
    /// Wall-clock limit of each code run in milliseconds (default 30000).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Destroy the sandbox after this many milliseconds without use (default: the server's).
    #[serde(default)]
    pub idle_timeout_ms: Option<u64>,
}

/// Arguments of `run_code`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct RunCodeArgs {
    /// The sandbox to run in (from create_sandbox).
    pub sandbox_id: String,
    /// The code. Variables, imports and files persist between runs in the same sandbox.
    pub code: String,
    /// `python` (default) or `bash`.
    #[serde(default)]
    pub language: Option<String>,
    /// Global variables defined before the code runs (Python only).
    #[serde(default)]
    pub global_variables: Map<String, Value>,
    /// Wall-clock limit of this run in milliseconds (default: the sandbox's).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// Arguments of `write_file`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct WriteFileArgs {
    /// The sandbox.
    pub sandbox_id: String,
    /// Path relative to the sandbox's workspace (its working directory), e.g. `data/input.csv`.
    pub path: String,
    /// The file's content: text, or base64 when `encoding` is `base64`.
    pub content: String,
    /// `utf8` (default) or `base64`.
    #[serde(default)]
    pub encoding: Option<String>,
}

/// Arguments of `read_file` and `list_files`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct PathArgs {
    /// The sandbox.
    pub sandbox_id: String,
    /// Path relative to the sandbox's workspace. For list_files, the directory (default: the workspace).
    #[serde(default)]
    pub path: Option<String>,
}

/// Arguments of `destroy_sandbox`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct SandboxArgs {
    /// The sandbox to destroy.
    pub sandbox_id: String,
}

/// The MCP server.
#[derive(Clone)]
pub struct AirlockMcp {
    service: Arc<Service>,
    mode: ReturnMode,
}

const RUN_PYTHON_DESCRIPTION: &str = "\
Run Python code in a fresh, isolated sandbox and return what it printed (stdout and stderr, in order) \
and the value of its last expression as JSON (a return value). If the code raises, the result has \
status run-error and the traceback. Nothing persists between calls: use create_sandbox and run_code \
to keep variables and files. Figures the code shows are returned as images.";

/// A tool-level error the model can read.
fn tool_error(e: ServiceError) -> CallToolResult {
    CallToolResult::error(vec![Content::text(format!("{}: {}", e.code(), e.message))])
}

fn images(o: &Outcome) -> Vec<Content> {
    let mut out = Vec::new();
    for r in &o.results {
        for mime in ["image/png", "image/jpeg"] {
            if let Some(b64) = r.data.get(mime).and_then(|v| v.as_str()) {
                out.push(Content::image(b64.to_string(), mime.to_string()));
                break;
            }
        }
    }
    out
}

#[tool_router]
impl AirlockMcp {
    /// A server over `service`, rendering results as `mode` says.
    pub fn new(service: Arc<Service>, mode: ReturnMode) -> Self {
        AirlockMcp { service, mode }
    }

    /// The backends the model may name in `create_sandbox`: those served that isolate
    /// at least as strongly as the operator's default, so that a prompt injection
    /// cannot pick a weaker boundary than the operator chose.
    fn model_may_choose(&self) -> Vec<BackendKind> {
        let floor = self.service.default_backend_kind().map(|d| airlock_service::isolation_of(d).rank()).unwrap_or(0);
        self.service
            .served_backends()
            .iter()
            .copied()
            .filter(|b| airlock_service::isolation_of(*b).rank() >= floor)
            .collect()
    }

    /// The tools, with `create_sandbox`'s `backend` argument narrowed to what the
    /// model may choose on this server.
    fn tools(&self) -> Vec<rmcp::model::Tool> {
        let allowed = self.model_may_choose();
        Self::tool_router()
            .list_all()
            .into_iter()
            .map(|mut t| {
                if t.name == "create_sandbox" {
                    let mut schema = (*t.input_schema).clone();
                    if let Some(Value::Object(props)) = schema.get_mut("properties") {
                        props.insert(
                            "backend".into(),
                            json!({
                                "type": "string",
                                "enum": allowed.iter().map(|b| b.as_str()).collect::<Vec<_>>(),
                                "description": format!(
                                    "Isolation backend: one of {}. Leave it out for the server's default.",
                                    names(&allowed)
                                ),
                            }),
                        );
                    }
                    t.input_schema = Arc::new(schema);
                }
                t
            })
            .collect()
    }

    /// The caller: the API key the HTTP layer authenticated, or the local user (stdio).
    fn principal(&self, ctx: &RequestContext<RoleServer>) -> Principal {
        ctx.extensions
            .get::<axum::http::request::Parts>()
            .and_then(|p| p.extensions.get::<Principal>())
            .cloned()
            .unwrap_or_else(|| self.service.local_principal())
    }

    async fn run(&self, pending: Pending) -> CallToolResult {
        let (tx, mut rx) = airlock_service::events::event_channel();
        // Read while it runs (the queue is bounded); only the output's order is needed
        // beyond the outcome, so results are not kept twice.
        let collect = async move {
            let mut events: Vec<Event> = Vec::new();
            while let Some(e) = rx.recv().await {
                if matches!(e, Event::Stdout { .. } | Event::Stderr { .. }) {
                    events.push(e);
                }
            }
            events
        };
        let (finished, events) = tokio::join!(pending.start(Some(tx)).finish(), collect);
        let audit = finished.audit;
        let outcome = match finished.result {
            Ok(o) => o,
            Err(e) => return tool_error(e),
        };
        let mut content = vec![Content::text(format::render(self.mode, &outcome, &events))];
        if audit != AuditState::Recorded {
            // Never more than the store holds: say so when the audit log lacks the end.
            content.push(Content::text(format!(
                "note: the server's audit log has not recorded this run's end (audit: {})",
                if audit == AuditState::Pending { "pending" } else { "unrecorded" }
            )));
        }
        content.extend(images(&outcome));
        // A failing run is still a successful tool call: the text says what happened.
        CallToolResult::success(content)
    }

    #[tool(description = RUN_PYTHON_DESCRIPTION)]
    async fn run_python_code(
        &self,
        Parameters(args): Parameters<RunPythonCode>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let p = self.principal(&ctx);
        let mut req = airlock_core::ExecRequest::python(args.python_code);
        req.global_variables = args.global_variables;
        req.limits = self.service.settings().default_limits;
        match self.service.prepare_execute(&p, req).await {
            Ok(pending) => Ok(self.run(pending).await),
            Err(e) => Ok(tool_error(e)),
        }
    }

    /// Create a sandbox that keeps its Python interpreter, variables and files between run_code calls. Returns its id. Destroy it with destroy_sandbox when done.
    #[tool]
    async fn create_sandbox(
        &self,
        Parameters(args): Parameters<CreateSandboxArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let p = self.principal(&ctx);
        let backend = match args.backend.as_deref().map(str::parse::<BackendKind>).transpose() {
            Ok(b) => b,
            Err(e) => return Ok(tool_error(e.into())),
        };
        if let Some(b) = backend
            && !self.model_may_choose().contains(&b)
        {
            return Ok(tool_error(ServiceError::invalid(format!(
                "backend '{b}' is not offered here: a sandbox may only use {} (leave `backend` out for the server's default)",
                names(&self.model_may_choose())
            ))));
        }
        let mut limits = self.service.settings().default_limits;
        if let Some(m) = args.memory_bytes {
            limits.memory_bytes = m;
        }
        if let Some(t) = args.timeout_ms {
            limits.timeout_ms = t;
        }
        let req = CreateSandbox { backend, limits, idle_timeout_ms: args.idle_timeout_ms, ..Default::default() };
        match self.service.create_sandbox(&p, req).await {
            Ok(info) => Ok(CallToolResult::success(vec![Content::text(
                json!({
                    "sandbox_id": info.id,
                    "backend": info.backend,
                    "isolation": info.isolation,
                    "expires_at": info.expires_at,
                })
                .to_string(),
            )])),
            Err(e) => Ok(tool_error(e)),
        }
    }

    /// Run code in a sandbox made by create_sandbox. Variables, imports and files persist between runs. Returns the output and the last expression's value, like run_python_code.
    #[tool]
    async fn run_code(
        &self,
        Parameters(args): Parameters<RunCodeArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let p = self.principal(&ctx);
        let language = match args.language.as_deref().map(str::parse::<Language>).transpose() {
            Ok(l) => l.unwrap_or_default(),
            Err(e) => return Ok(tool_error(e.into())),
        };
        let mut cell = airlock_core::CellRequest::python(args.code);
        cell.language = language;
        cell.global_variables = args.global_variables;
        cell.limits.timeout_ms = args.timeout_ms;
        match self.service.prepare_cell(&p, &args.sandbox_id, cell).await {
            Ok(pending) => Ok(self.run(pending).await),
            Err(e) => Ok(tool_error(e)),
        }
    }

    /// Write a file into a sandbox's workspace (its working directory), creating parent directories.
    #[tool]
    async fn write_file(
        &self,
        Parameters(args): Parameters<WriteFileArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let p = self.principal(&ctx);
        let bytes = match args.encoding.as_deref().unwrap_or("utf8") {
            "utf8" | "utf-8" | "text" => args.content.into_bytes(),
            "base64" => match airlock_core::outcome::base64_decode(args.content.trim()) {
                Ok(b) => b,
                Err(e) => return Ok(tool_error(ServiceError::invalid(format!("content is not valid base64: {e}")))),
            },
            other => {
                return Ok(tool_error(ServiceError::invalid(format!(
                    "unknown encoding '{other}': use utf8 or base64"
                ))));
            }
        };
        let slot = match self.service.file_transfer_slot().await {
            Ok(s) => s,
            Err(e) => return Ok(tool_error(e)),
        };
        let r = self.service.write_file(&p, &args.sandbox_id, &args.path, bytes).await;
        drop(slot);
        match r {
            Ok(f) => Ok(CallToolResult::success(vec![Content::text(format!("wrote {} ({} bytes)", f.path, f.size))])),
            Err(e) => Ok(tool_error(e)),
        }
    }

    /// Read a file from a sandbox's workspace. Text comes back as text, PNG and JPEG images as images, anything else as base64.
    #[tool]
    async fn read_file(
        &self,
        Parameters(args): Parameters<PathArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let p = self.principal(&ctx);
        let Some(path) = args.path else {
            return Ok(tool_error(ServiceError::invalid("give the `path` of the file to read")));
        };
        let slot = match self.service.file_transfer_slot().await {
            Ok(s) => s,
            Err(e) => return Ok(tool_error(e)),
        };
        let r = self.service.read_file(&p, &args.sandbox_id, &path).await;
        drop(slot);
        let data = match r {
            Ok(d) => d,
            Err(e) => return Ok(tool_error(e)),
        };
        let b64 = || airlock_core::outcome::base64_encode(&data);
        let content = if data.starts_with(b"\x89PNG\r\n\x1a\n") {
            Content::image(b64(), "image/png")
        } else if data.starts_with(&[0xff, 0xd8, 0xff]) {
            Content::image(b64(), "image/jpeg")
        } else {
            match std::str::from_utf8(&data) {
                Ok(t) => Content::text(t.to_string()),
                Err(_) => Content::text(format!("(binary file, {} bytes, base64)\n{}", data.len(), b64())),
            }
        };
        Ok(CallToolResult::success(vec![content]))
    }

    /// List the files of a sandbox's workspace (recursively).
    #[tool]
    async fn list_files(
        &self,
        Parameters(args): Parameters<PathArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let p = self.principal(&ctx);
        match self.service.list_files(&p, &args.sandbox_id, args.path.as_deref().unwrap_or("")).await {
            Ok(files) => {
                let lines: Vec<String> = files
                    .iter()
                    .map(|f| if f.is_dir { format!("{}/", f.path) } else { format!("{} ({} bytes)", f.path, f.size) })
                    .collect();
                let text = if lines.is_empty() { "(empty)".to_string() } else { lines.join("\n") };
                Ok(CallToolResult::success(vec![Content::text(text)]))
            }
            Err(e) => Ok(tool_error(e)),
        }
    }

    /// Destroy a sandbox made by create_sandbox, stopping anything running in it.
    #[tool]
    async fn destroy_sandbox(
        &self,
        Parameters(args): Parameters<SandboxArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let p = self.principal(&ctx);
        match self.service.delete_sandbox(&p, &args.sandbox_id).await {
            Ok(()) => Ok(CallToolResult::success(vec![Content::text(format!("destroyed {}", args.sandbox_id))])),
            Err(e) => Ok(tool_error(e)),
        }
    }
}

#[tool_handler(
    name = "airlock",
    instructions = "Run Python in isolated sandboxes. run_python_code runs code in a fresh sandbox each time. \
                    To keep state, call create_sandbox, then run_code with its sandbox_id as often as needed \
                    (files: write_file, read_file, list_files), and destroy_sandbox at the end."
)]
impl ServerHandler for AirlockMcp {
    async fn list_tools(
        &self,
        _request: Option<rmcp::model::PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::ListToolsResult, ErrorData> {
        let mut r = rmcp::model::ListToolsResult::with_all_items(self.tools());
        // Peers of the 2026-07-28 protocol expect cache hints; the list is fixed for
        // this server's lifetime.
        if context.protocol_version().is_some_and(|v| v >= rmcp::model::ProtocolVersion::V_2026_07_28) {
            r = r.with_ttl_ms(0);
            r.cache_scope = Some(rmcp::model::CacheScope::Public);
        }
        Ok(r)
    }

    fn get_tool(&self, name: &str) -> Option<rmcp::model::Tool> {
        self.tools().into_iter().find(|t| t.name == name)
    }
}

/// `a, b or c`.
fn names(list: &[BackendKind]) -> String {
    match list {
        [] => "none".into(),
        [one] => one.to_string(),
        [init @ .., last] => {
            format!("{} or {last}", init.iter().map(|b| b.as_str()).collect::<Vec<_>>().join(", "))
        }
    }
}

/// Serves MCP on stdin/stdout until the client disconnects.
pub async fn serve_stdio(service: Arc<Service>, mode: ReturnMode) -> Result<(), String> {
    use rmcp::ServiceExt;
    let running = AirlockMcp::new(service, mode)
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|e| format!("starting the MCP server on stdio: {e}"))?;
    running.waiting().await.map_err(|e| format!("the MCP server failed: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use airlock_service::store::sqlite::SqliteStore;
    use airlock_service::{Config, Registry, ServerSettings};

    fn server(backends: Vec<BackendKind>, default_backend: Option<BackendKind>) -> AirlockMcp {
        let settings = ServerSettings { backends, default_backend, pool_size: 0, ..ServerSettings::default() };
        let store = Arc::new(SqliteStore::in_memory().unwrap());
        AirlockMcp::new(Service::new(settings, Registry::new(Config::from_env()), store), ReturnMode::Xml)
    }

    fn offered(m: &AirlockMcp) -> Value {
        let tool = m.tools().into_iter().find(|t| t.name == "create_sandbox").unwrap();
        tool.input_schema["properties"]["backend"].clone()
    }

    #[test]
    fn the_model_is_never_offered_a_weaker_boundary_than_the_default() {
        if !Registry::new(Config::from_env()).probe(BackendKind::Jail).is_some_and(|p| p.available) {
            return eprintln!("skipped: the jail backend does not work here");
        }
        // The operator serves process beside jail, but jail is the default: the model
        // sees (and may pick) jail only.
        let m = server(vec![BackendKind::Jail, BackendKind::Process], Some(BackendKind::Jail));
        let b = offered(&m);
        assert_eq!(b["enum"], json!(["jail"]), "{b}");
        assert!(!b["description"].as_str().unwrap().contains("process"), "{b}");
        assert_eq!(m.model_may_choose(), vec![BackendKind::Jail]);
        assert_eq!(m.get_tool("create_sandbox").unwrap().input_schema["properties"]["backend"], b);
        // With process as the operator's own default, both are the operator's choice.
        let m = server(vec![BackendKind::Jail, BackendKind::Process], Some(BackendKind::Process));
        assert_eq!(offered(&m)["enum"], json!(["jail", "process"]));
    }
}
