//! The `/v1` handlers. Each one parses HTTP into a service call and renders the
//! answer; the service never sees HTTP.

use airlock_core::paths::WorkspacePath;
use airlock_core::{CellRequest, ExecRequest, FileEntry, Outcome};
use airlock_service::ServiceError;
use airlock_service::keys::Principal;
use airlock_service::service::Health;
use airlock_service::session::{CreateSandbox, SandboxInfo};
use airlock_service::store::{ExecutionPage, ExecutionRecord, RecordStatus};
use axum::Extension;
use axum::body::{Body, Bytes};
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::error::{ApiError, ErrorBody};
use crate::stream::{Mode, respond};

type ApiResult<T> = Result<T, ApiError>;

/// Parses a JSON request body, insisting on `Content-Type: application/json` (which
/// also makes browsers ask before sending it cross-origin).
pub(crate) fn json_body(headers: &HeaderMap, body: Result<Bytes, BytesRejection>) -> ApiResult<Value> {
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if mime != "application/json" {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "send the body as JSON with `Content-Type: application/json` (got {})",
                if ct.is_empty() { "no Content-Type".to_string() } else { format!("'{ct}'") }
            ),
        ));
    }
    let bytes = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                "the request body is larger than this server's max_body_bytes; send files through the files API",
            )
        } else {
            ApiError::invalid(format!("cannot read the request body: {e}"))
        }
    })?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::invalid(format!("the request body is not valid JSON: {e}")))
}

fn mode(headers: &HeaderMap) -> Mode {
    Mode::from_accept(headers.get(header::ACCEPT))
}

/// `GET /healthz`: `200` while serving; `503` while the audit log cannot be written
/// (`degraded`: new executions are refused) or during shutdown (`draining`).
#[utoipa::path(get, path = "/healthz", tag = "service",
    responses((status = 200, description = "Serving", body = Health), (status = 503, description = "Degraded (the audit log cannot be written) or shutting down; `reason` says why", body = Health)))]
pub async fn health(State(st): State<AppState>) -> Response {
    let h = st.service.health();
    let code = if h.status == "ok" { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, axum::Json(h)).into_response()
}

/// `GET /metrics`.
#[utoipa::path(get, path = "/metrics", tag = "service",
    responses((status = 200, description = "Prometheus text format 0.0.4", body = String, content_type = "text/plain")))]
pub async fn metrics(State(st): State<AppState>) -> Response {
    let mut r = st.service.metrics_text().into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    r
}

/// The header a client names a request with, so that a retry does not run it twice.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

fn idempotency_header(headers: &HeaderMap) -> Option<&[u8]> {
    headers.get(IDEMPOTENCY_KEY).map(|v| v.as_bytes())
}

/// Runs code in a fresh sandbox that is destroyed afterwards.
///
/// The body is an `ExecRequest`; omitted limits take the server's defaults. With
/// `Accept: application/x-ndjson` (or `text/event-stream`) the events stream as they
/// happen and the last line carries the outcome. With an `Idempotency-Key`, a retry
/// of the same request gets the first one's answer instead of a second run.
#[utoipa::path(post, path = "/v1/execute", tag = "executions", request_body = ExecRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "A name for this request (1 to 255 visible ASCII characters, e.g. a UUID), unique per API key: a retry with the same key and body gets the first request's answer (`Idempotent-Replayed: true`) and runs nothing")),
    responses(
        (status = 200, description = "The outcome (or a stream of StreamEvent lines). `X-Airlock-Execution-Id` names its audit record; `X-Airlock-Audit: pending` (and `\"audit\": \"pending\"` in the body) says the audit log does not hold its end yet", body = Outcome),
        (status = 400, description = "Malformed request", body = ErrorBody),
        (status = 409, description = "The request with this Idempotency-Key is still running, or ran without its answer kept", body = ErrorBody),
        (status = 422, description = "This Idempotency-Key was used with another request", body = ErrorBody),
        (status = 429, description = "At capacity; see Retry-After", body = ErrorBody),
        (status = 503, description = "Shutting down, or the audit log cannot be written (nothing was run)", body = ErrorBody),
    ))]
pub async fn execute(
    State(st): State<AppState>,
    Extension(p): Extension<Principal>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let body = json_body(&headers, body)?;
    let key = st.service.idempotency_key(&p, idempotency_header(&headers), "execute", &body)?;
    let req = st.service.request_from_json(body)?;
    let pending = st.service.prepare_execute(&p, req).await?.with_idempotency_key(key);
    Ok(respond(pending, mode(&headers)).await)
}

/// The list of sandboxes.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SandboxList {
    /// The caller's sandboxes.
    pub sandboxes: Vec<SandboxInfo>,
}

/// Creates a stateful sandbox (a session). With an `Idempotency-Key`, a retry of the
/// same request gets the sandbox the first one created.
#[utoipa::path(post, path = "/v1/sandboxes", tag = "sandboxes", request_body = CreateSandbox,
    params(("Idempotency-Key" = Option<String>, Header, description = "A name for this request (1 to 255 visible ASCII characters), unique per API key: a retry with the same key and body gets the same sandbox (`Idempotent-Replayed: true`)")),
    responses(
        (status = 201, description = "Created (or, with `Idempotent-Replayed: true`, created by an earlier request with the same key)", body = SandboxInfo),
        (status = 400, description = "Malformed request", body = ErrorBody),
        (status = 409, description = "The request with this Idempotency-Key is still creating its sandbox", body = ErrorBody),
        (status = 422, description = "This Idempotency-Key was used with another request", body = ErrorBody),
        (status = 429, description = "At capacity, or the key's sandbox quota is used up", body = ErrorBody),
        (status = 503, description = "Shutting down, or the audit log cannot be written", body = ErrorBody),
    ))]
pub async fn create_sandbox(
    State(st): State<AppState>,
    Extension(p): Extension<Principal>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let body = match body {
        Ok(b) if b.is_empty() => Value::Object(Default::default()),
        other => json_body(&headers, other)?,
    };
    let key = st.service.idempotency_key(&p, idempotency_header(&headers), "sandboxes", &body)?;
    let req = st.service.create_request_from_json(body)?;
    let created = st.service.create_sandbox_keyed(&p, req, key).await?;
    let mut r = (StatusCode::CREATED, axum::Json(created.info)).into_response();
    if created.replayed {
        r.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(r)
}

/// The templates and their warm pools.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct TemplateList {
    /// Every template, with its pool's state and, if it failed, why.
    pub templates: Vec<airlock_service::pool::TemplateInfo>,
}

/// Lists the templates: their modules, pool sizes, ready sandboxes and failures.
#[utoipa::path(get, path = "/v1/templates", tag = "service",
    responses((status = 200, description = "The templates", body = TemplateList)))]
pub async fn list_templates(State(st): State<AppState>) -> axum::Json<TemplateList> {
    axum::Json(TemplateList { templates: st.service.templates() })
}

/// Lists the caller's sandboxes.
#[utoipa::path(get, path = "/v1/sandboxes", tag = "sandboxes",
    responses((status = 200, description = "The caller's sandboxes", body = SandboxList)))]
pub async fn list_sandboxes(State(st): State<AppState>, Extension(p): Extension<Principal>) -> axum::Json<SandboxList> {
    axum::Json(SandboxList { sandboxes: st.service.list_sandboxes(&p) })
}

/// One sandbox.
#[utoipa::path(get, path = "/v1/sandboxes/{id}", tag = "sandboxes", params(("id" = String, Path, description = "Sandbox id")),
    responses((status = 200, description = "The sandbox", body = SandboxInfo), (status = 404, description = "No such sandbox", body = ErrorBody),
        (status = 410, description = "It ended when the server restarted", body = ErrorBody)))]
pub async fn get_sandbox(
    State(st): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<SandboxInfo>> {
    Ok(axum::Json(st.service.sandbox(&p, &id).await?))
}

/// Destroys a sandbox (stopping a running cell).
#[utoipa::path(delete, path = "/v1/sandboxes/{id}", tag = "sandboxes", params(("id" = String, Path, description = "Sandbox id")),
    responses((status = 204, description = "Destroyed"), (status = 404, description = "No such sandbox", body = ErrorBody)))]
pub async fn delete_sandbox(
    State(st): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    st.service.delete_sandbox(&p, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Runs a cell in a sandbox; variables persist between cells.
///
/// The body is a `CellRequest`: an `ExecRequest` without what is fixed at creation
/// (`env`, `network`, `backend`, `guard`); omitted limits take the sandbox's, and only
/// `timeout_ms`, `cpu_ms`, `output_bytes` and `result_bytes` may differ from them. A
/// guarded sandbox's cells are checked before they run (status `denied` with
/// findings). One cell runs at a time: a second call while one runs gets `409 busy`.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/execute", tag = "sandboxes", request_body = CellRequest,
    params(("id" = String, Path, description = "Sandbox id")),
    responses(
        (status = 200, description = "The outcome (or a stream of StreamEvent lines)", body = Outcome),
        (status = 404, description = "No such sandbox", body = ErrorBody),
        (status = 409, description = "A cell is running", body = ErrorBody),
        (status = 410, description = "The sandbox has stopped, or ended when the server restarted", body = ErrorBody),
        (status = 429, description = "At capacity; see Retry-After", body = ErrorBody),
    ))]
pub async fn execute_cell(
    State(st): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let cell = st.service.cell_from_json(json_body(&headers, body)?)?;
    let pending = st.service.prepare_cell(&p, &id, cell).await?;
    Ok(respond(pending, mode(&headers)).await)
}

/// Query of `GET /v1/sandboxes/{id}/files`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct FilesQuery {
    /// Directory to list, relative to the workspace (default: the workspace).
    pub path: Option<String>,
}

/// A directory listing.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct FileList {
    /// Entries, recursively (bounded).
    pub files: Vec<FileEntry>,
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> ApiResult<T> {
    q.map(|Query(q)| q).map_err(|e| ApiError::invalid(format!("bad query string: {}", e.body_text())))
}

/// Lists a directory of the workspace.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/files", tag = "files",
    params(("id" = String, Path, description = "Sandbox id"), FilesQuery),
    responses((status = 200, description = "Entries", body = FileList), (status = 404, description = "No such sandbox or directory", body = ErrorBody)))]
pub async fn list_files(
    State(st): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    q: Result<Query<FilesQuery>, QueryRejection>,
) -> ApiResult<axum::Json<FileList>> {
    let q = query(q)?;
    let files = st.service.list_files(&p, &id, q.path.as_deref().unwrap_or("")).await?;
    Ok(axum::Json(FileList { files }))
}

/// Uploads a file (the raw body) into the workspace, creating parent directories.
///
/// The body is received before the upload takes one of the server's file-transfer
/// slots, so a slow client holds only its own key's share (`per_key_file_transfers`)
/// and its connection, never a slot another key needs.
#[utoipa::path(put, path = "/v1/sandboxes/{id}/files/{path}", tag = "files",
    params(("id" = String, Path, description = "Sandbox id"), ("path" = String, Path, description = "Path in the workspace")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses(
        (status = 200, description = "Written", body = FileEntry),
        (status = 400, description = "The path leaves the workspace", body = ErrorBody),
        (status = 408, description = "The body arrived too slowly", body = ErrorBody),
        (status = 409, description = "A cell is running", body = ErrorBody),
        (status = 413, description = "Larger than the server's or the sandbox's file limit", body = ErrorBody),
        (status = 429, description = "The key's file transfers are all under way, or every slot is taken", body = ErrorBody),
    ))]
pub async fn put_file(
    State(st): State<AppState>,
    Extension(p): Extension<Principal>,
    Path((id, path)): Path<(String, String)>,
    body: Body,
) -> ApiResult<axum::Json<FileEntry>> {
    // What can be refused before the body is read, is.
    WorkspacePath::parse(&path)?;
    let info = st.service.sandbox(&p, &id).await?;
    let _share = st.transfer_share(&p)?;
    let server_max = st.service.settings().max_file_bytes;
    let cap = server_max.min(info.limits.file_bytes);
    let too_large = || {
        let why = if info.limits.file_bytes < server_max {
            format!("the sandbox's limits.file_bytes ({} bytes)", info.limits.file_bytes)
        } else {
            format!("this server's max_file_bytes ({server_max} bytes)")
        };
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", format!("the file is larger than {why}"))
    };
    let spool = receive_upload(body, cap, too_large).await?;
    // Only now a slot: it bounds how many files are held in memory at once.
    let _slot = st.service.file_transfer_slot().await?;
    let data = spool.into_vec().await?;
    Ok(axum::Json(st.service.write_file(&p, &id, &path, data).await?))
}

/// Uploads up to this size are kept in memory while they arrive; larger ones go to
/// an unnamed temporary file, so that slow uploads hold little memory.
const SPOOL_IN_MEMORY: usize = 64 * 1024;

/// An upload's bytes, received.
enum Spool {
    Memory(Vec<u8>),
    File { file: tokio::fs::File, len: u64 },
}

fn spool_error(e: std::io::Error) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        format!("cannot keep the upload in the server's temporary directory while it arrives: {e}"),
    )
}

/// Receives an upload of at most `cap` bytes: in memory up to [`SPOOL_IN_MEMORY`],
/// beyond it in a temporary file that has no name (nothing is left behind).
async fn receive_upload(mut body: Body, cap: u64, too_large: impl Fn() -> ApiError) -> ApiResult<Spool> {
    use http_body_util::BodyExt;
    use hyper::body::Body as _;
    use tokio::io::AsyncWriteExt;
    if body.size_hint().lower() > cap {
        return Err(too_large());
    }
    let mut mem = Vec::new();
    let mut file: Option<tokio::fs::File> = None;
    let mut len = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError::invalid(format!("cannot read the upload: {e}")))?;
        let Ok(data) = frame.into_data() else { continue };
        len += data.len() as u64;
        if len > cap {
            return Err(too_large());
        }
        match &mut file {
            Some(f) => f.write_all(&data).await.map_err(spool_error)?,
            None if mem.len() + data.len() <= SPOOL_IN_MEMORY => mem.extend_from_slice(&data),
            None => {
                let f = tokio::task::spawn_blocking(tempfile::tempfile)
                    .await
                    .map_err(|e| spool_error(std::io::Error::other(e)))?
                    .map_err(spool_error)?;
                let mut f = tokio::fs::File::from_std(f);
                f.write_all(&mem).await.map_err(spool_error)?;
                f.write_all(&data).await.map_err(spool_error)?;
                mem = Vec::new();
                file = Some(f);
            }
        }
    }
    Ok(match file {
        None => Spool::Memory(mem),
        Some(file) => Spool::File { file, len },
    })
}

impl Spool {
    async fn into_vec(self) -> ApiResult<Vec<u8>> {
        use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
        match self {
            Spool::Memory(v) => Ok(v),
            Spool::File { mut file, len } => {
                file.flush().await.map_err(spool_error)?;
                file.seek(std::io::SeekFrom::Start(0)).await.map_err(spool_error)?;
                let mut v = Vec::with_capacity(len as usize);
                file.read_to_end(&mut v).await.map_err(spool_error)?;
                Ok(v)
            }
        }
    }
}

/// Downloads a file from the workspace.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/files/{path}", tag = "files",
    params(("id" = String, Path, description = "Sandbox id"), ("path" = String, Path, description = "Path in the workspace")),
    responses(
        (status = 200, description = "The file's bytes", body = Vec<u8>, content_type = "application/octet-stream"),
        (status = 404, description = "No such sandbox or file", body = ErrorBody),
        (status = 413, description = "Larger than the file limit", body = ErrorBody),
        (status = 429, description = "The key's file transfers are all under way, or every slot is taken", body = ErrorBody),
    ))]
pub async fn get_file(
    State(st): State<AppState>,
    Extension(p): Extension<Principal>,
    Path((id, path)): Path<(String, String)>,
) -> ApiResult<Response> {
    let share = st.transfer_share(&p)?;
    let slot = st.service.file_transfer_slot().await?;
    let data = st.service.read_file(&p, &id, &path).await?;
    let len = data.len();
    // The slot and the share live as long as the body, which hyper drops once it has
    // sent (nearly) all of it; a client that stops reading is cut by the connection's
    // send deadline.
    let held = (slot, share);
    let body = Body::from_stream(
        futures_util::stream::once(async move { Ok::<_, std::convert::Infallible>(Bytes::from(data)) }).map(
            move |chunk| {
                let _ = &held;
                chunk
            },
        ),
    );
    let mut r = Response::new(body);
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    r.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    Ok(r)
}

/// Removes a file or an empty directory from the workspace.
#[utoipa::path(delete, path = "/v1/sandboxes/{id}/files/{path}", tag = "files",
    params(("id" = String, Path, description = "Sandbox id"), ("path" = String, Path, description = "Path in the workspace")),
    responses((status = 204, description = "Removed"), (status = 404, description = "No such sandbox or file", body = ErrorBody)))]
pub async fn delete_file(
    State(st): State<AppState>,
    Extension(p): Extension<Principal>,
    Path((id, path)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    st.service.remove_file(&p, &id, &path).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Query of `GET /v1/executions`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ExecutionsQuery {
    /// Only this sandbox's cells.
    pub sandbox: Option<String>,
    /// Only this status: running, ok, error, timeout, memory_limit, output_limit,
    /// killed, denied, lost, failed.
    pub status: Option<String>,
    /// Page size, 1 to 1000 (default 50).
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// The audit log, newest first.
#[utoipa::path(get, path = "/v1/executions", tag = "executions", params(ExecutionsQuery),
    responses((status = 200, description = "A page of executions", body = ExecutionPage), (status = 400, description = "Bad query", body = ErrorBody)))]
pub async fn list_executions(
    State(st): State<AppState>,
    Extension(p): Extension<Principal>,
    q: Result<Query<ExecutionsQuery>, QueryRejection>,
) -> ApiResult<axum::Json<ExecutionPage>> {
    let q = query(q)?;
    let status = q.status.as_deref().map(str::parse::<RecordStatus>).transpose().map_err(ServiceError::from)?;
    Ok(axum::Json(st.service.executions(&p, q.sandbox, status, q.limit, q.cursor).await?))
}

/// One execution from the audit log.
#[utoipa::path(get, path = "/v1/executions/{id}", tag = "executions", params(("id" = String, Path, description = "Execution id")),
    responses((status = 200, description = "The record", body = ExecutionRecord), (status = 404, description = "No such execution", body = ErrorBody)))]
pub async fn get_execution(
    State(st): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<ExecutionRecord>> {
    Ok(axum::Json(st.service.execution(&p, &id).await?))
}
