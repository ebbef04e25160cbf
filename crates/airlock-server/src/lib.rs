//! airlock's HTTP API (axum) and MCP server (rmcp) over the transport-free service
//! layer in `airlock-service`.
//!
//! [`app`] builds the whole router from an [`AppState`], so tests drive it without a
//! socket; [`serve`] runs it on a listener with its own accept loop (a connection
//! cap, and the deadlines of `conn` for slow clients) and drains on shutdown. The REST handlers
//! (`api`) and the MCP tools (`mcp`) are two thin front ends over one
//! [`airlock_service::Service`]: HTTP is parsed into service calls, and nothing
//! HTTP-shaped reaches the service or the backends.
//!
//! Routes: `/v1/...` (see `docs/api.md` and `/openapi.json`), `/mcp` (streamable
//! HTTP MCP), `/healthz`, `/metrics`.

pub mod api;
mod conn;
pub mod error;
pub mod mcp;
pub mod openapi;
pub mod stream;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use airlock_service::Service;
use airlock_service::keys::Principal;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use utoipa::OpenApi;

use crate::error::ApiError;
use crate::mcp::{AirlockMcp, ReturnMode};

/// Options of the HTTP front end.
#[derive(Debug, Clone, Default)]
pub struct AppOptions {
    /// How MCP tool results are rendered.
    pub mcp_return_mode: ReturnMode,
    /// Cancelled at shutdown: ends open MCP sessions.
    pub cancel: CancellationToken,
    /// The address the server listens on (its host is accepted in `Host` headers).
    pub listen: Option<SocketAddr>,
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The service.
    pub service: Arc<Service>,
    inflight: Arc<Semaphore>,
    transfers: Arc<Mutex<HashMap<Option<String>, usize>>>,
    drain_ends: Arc<Mutex<Option<Instant>>>,
    options: AppOptions,
}

impl AppState {
    /// State over `service`.
    pub fn new(service: Arc<Service>, options: AppOptions) -> Self {
        let inflight = Arc::new(Semaphore::new(service.settings().max_inflight_requests));
        AppState { service, inflight, transfers: Arc::default(), drain_ends: Arc::default(), options }
    }

    /// Notes that the drain has begun and ends within `drain` (for `Retry-After`).
    fn begin_drain(&self, drain: Duration) {
        *self.drain_ends.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now() + drain);
    }

    /// Seconds a refused client should wait: until the drain ends, at least 1.
    fn retry_after_s(&self) -> u64 {
        let ends = *self.drain_ends.lock().unwrap_or_else(|p| p.into_inner());
        let left = match ends {
            Some(t) => t.saturating_duration_since(Instant::now()),
            None => Duration::from_millis(self.service.settings().drain_timeout_ms),
        };
        left.as_secs_f64().ceil().max(1.0) as u64
    }

    /// One of the caller's `per_key_file_transfers`, held for as long as a transfer
    /// is under way (an upload from its first byte); beyond the share, `429` at once.
    pub(crate) fn transfer_share(&self, p: &Principal) -> Result<TransferShare, ApiError> {
        let max = self.service.settings().per_key_file_transfers;
        let mut m = self.transfers.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(p.key_id.clone()).or_insert(0);
        if *n >= max {
            let mut e = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "overloaded",
                format!(
                    "{} has {n} file transfers under way, as many as one key may (per_key_file_transfers); retry when one has finished",
                    if p.key_id.is_some() { "this API key" } else { "the local user" }
                ),
            );
            e.retry_after_s = Some(1);
            return Err(e);
        }
        *n += 1;
        Ok(TransferShare { owner: p.key_id.clone(), counts: self.transfers.clone() })
    }
}

/// A file transfer counted against its key's share until dropped.
pub(crate) struct TransferShare {
    owner: Option<String>,
    counts: Arc<Mutex<HashMap<Option<String>, usize>>>,
}

impl Drop for TransferShare {
    fn drop(&mut self) {
        let mut m = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.owner) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.owner);
            }
        }
    }
}

/// The value of `Authorization: Bearer <key>` or `X-API-Key: <key>`.
fn presented_key(req: &Request) -> Result<Option<String>, ApiError> {
    if let Some(v) = req.headers().get(header::AUTHORIZATION) {
        let v = v.to_str().unwrap_or("");
        let (scheme, key) = v.split_once(' ').unwrap_or((v, ""));
        if !scheme.eq_ignore_ascii_case("bearer") || key.trim().is_empty() {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "send the API key as `Authorization: Bearer <key>`",
            ));
        }
        return Ok(Some(key.trim().to_string()));
    }
    Ok(req.headers().get("x-api-key").and_then(|v| v.to_str().ok()).map(|s| s.trim().to_string()))
}

/// Authenticates the request and hands its principal to the handler (and to MCP tools
/// through the request's extensions).
async fn auth(State(st): State<AppState>, mut req: Request, next: Next) -> Response {
    let key = match presented_key(&req) {
        Ok(k) => k,
        Err(e) => return e.into_response(),
    };
    match st.service.authenticate(key.as_deref()).await {
        Ok(p) => {
            req.extensions_mut().insert(p);
            next.run(req).await
        }
        Err(e) => ApiError::from(e).into_response(),
    }
}

fn is_loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host)
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Without API keys the server trusts loopback callers only: a `Host` header other
/// than a loopback name (or the listen address) is a DNS-rebinding attempt from a web
/// page, and is refused; so is a request with no `Host` (or an empty one), which
/// cannot show that it is meant for a loopback name.
async fn host_guard(State(st): State<AppState>, req: Request, next: Next) -> Response {
    if !st.service.auth_required() {
        let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("").trim();
        if host.is_empty() {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden_host",
                "the request has no usable Host header; without API keys this server answers only requests whose Host is a loopback name (send `Host: localhost`, as every HTTP/1.1 client does)",
            )
            .into_response();
        }
        let listen_ok = st.options.listen.is_some_and(|a| host == a.to_string());
        let extra_ok = st.service.settings().mcp_allowed_hosts.iter().any(|h| h == host);
        if !is_loopback_host(host) && !listen_ok && !extra_ok {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden_host",
                format!(
                    "Host '{host}' is not a loopback name; without API keys this server answers loopback clients only (require keys with `--auth required` to serve other names)"
                ),
            )
            .into_response();
        }
    }
    next.run(req).await
}

/// The `Content-Type`s a web page may send to another site without the browser
/// asking the server first (a CORS "simple" request): the HTML form types.
fn is_form_type(content_type: &str) -> bool {
    let mime = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    matches!(mime.as_str(), "application/x-www-form-urlencoded" | "multipart/form-data" | "text/plain")
}

/// `scheme://host[:port]` without the scheme's default port, lowercased.
fn normalize_origin(origin: &str) -> Option<String> {
    let o = origin.trim().to_ascii_lowercase();
    let (scheme, authority) = o.split_once("://")?;
    let authority = match scheme {
        "http" => authority.strip_suffix(":80").unwrap_or(authority),
        "https" => authority.strip_suffix(":443").unwrap_or(authority),
        _ => return None,
    };
    (!authority.is_empty()).then(|| format!("{scheme}://{authority}"))
}

/// Whether a web page at `origin` may call this server: its own origin (the one the
/// request's `Host` names, over http or https) or one the operator allowed.
fn origin_allowed(origin: &str, host: &str, allowed: &[String]) -> bool {
    let Some(o) = normalize_origin(origin) else { return false };
    if allowed.iter().filter_map(|a| normalize_origin(a)).any(|a| a == o) {
        return true;
    }
    let host = host.trim().to_ascii_lowercase();
    !host.is_empty()
        && ["http", "https"].iter().any(|scheme| normalize_origin(&format!("{scheme}://{host}")).as_deref() == Some(&o))
}

/// Cross-site request forgery: a web page on another site can make a browser send
/// requests to this server carrying its ambient trust (a loopback address that needs
/// no key). Refused: any request whose `Origin` is not this server's own or an
/// allowed one; and any POST a browser would send without asking first: without a
/// `Content-Type` other than the HTML form types (JSON bodies need
/// `application/json`). POST is the only state-changing method a page may send to
/// another site without a CORS preflight (forms and `fetch(..., {mode: "no-cors"})`
/// allow only GET, HEAD and POST); PUT, PATCH and DELETE are always preflighted, and
/// this server grants no preflight, so they need no such check (a bare
/// `curl -X DELETE` keeps working).
async fn browser_guard(State(st): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
        if !origin_allowed(origin, host, &st.service.settings().allowed_origins) {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden_origin",
                format!(
                    "requests from web pages at '{origin}' are refused: a page may call this server only from its own origin or one listed in the server's allowed_origins setting"
                ),
            )
            .into_response();
        }
    }
    if req.method() == Method::POST {
        let ct = req.headers().get(header::CONTENT_TYPE).map(|v| v.to_str().unwrap_or("?"));
        let non_form = ct.is_some_and(|ct| !ct.trim().is_empty() && !is_form_type(ct));
        if !non_form {
            return ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!(
                    "a POST must carry `Content-Type: application/json`, so that no web page can send it from another site (got {})",
                    match ct {
                        Some(ct) => format!("'{ct}'"),
                        None => "no Content-Type".into(),
                    }
                ),
            )
            .into_response();
        }
    }
    next.run(req).await
}

/// Adds `Retry-After` to a `503` (the server is draining) that has none.
async fn retry_after(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    if resp.status() == StatusCode::SERVICE_UNAVAILABLE && !resp.headers().contains_key(header::RETRY_AFTER) {
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(st.retry_after_s()));
    }
    resp
}

/// Bounds the requests in flight; beyond the cap, `429` at once.
async fn inflight(State(st): State<AppState>, req: Request, next: Next) -> Response {
    match st.inflight.clone().try_acquire_owned() {
        Ok(_permit) => next.run(req).await,
        Err(_) => {
            let mut e = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "overloaded",
                "the server has as many requests in flight as it accepts; retry shortly",
            );
            e.retry_after_s = Some(1);
            e.into_response()
        }
    }
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint; see GET /openapi.json")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this endpoint does not take that method")
}

async fn openapi_json() -> impl IntoResponse {
    axum::Json(openapi::ApiDoc::openapi())
}

fn panic_response(err: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let what = err
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| err.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default();
    ApiError::from(airlock_service::ServiceError::internal(format!("a request handler panicked: {what}")))
        .into_response()
}

/// The MCP endpoint: streamable HTTP over the same service.
fn mcp_service(st: &AppState) -> StreamableHttpService<AirlockMcp, LocalSessionManager> {
    let service = st.service.clone();
    let mode = st.options.mcp_return_mode;
    let mut config = StreamableHttpServerConfig::default()
        .with_cancellation_token(st.options.cancel.clone())
        .with_max_request_body_bytes(st.service.settings().max_body_bytes as usize);
    // Host checks are done by `host_guard` for the whole server (and keys guard the rest).
    config = config.disable_allowed_hosts();
    StreamableHttpService::new(
        move || Ok(AirlockMcp::new(service.clone(), mode)),
        Arc::new(LocalSessionManager::default()),
        config,
    )
}

/// The whole HTTP application.
pub fn app(state: AppState) -> Router {
    let protected = Router::new()
        .route("/v1/execute", post(api::execute))
        .route("/v1/sandboxes", post(api::create_sandbox).get(api::list_sandboxes))
        .route("/v1/sandboxes/{id}", get(api::get_sandbox).delete(api::delete_sandbox))
        .route("/v1/sandboxes/{id}/execute", post(api::execute_cell))
        .route("/v1/sandboxes/{id}/files", get(api::list_files))
        .route("/v1/sandboxes/{id}/files/{*path}", get(api::get_file).put(api::put_file).delete(api::delete_file))
        .route("/v1/templates", get(api::list_templates))
        .route("/v1/executions", get(api::list_executions))
        .route("/v1/executions/{id}", get(api::get_execution))
        .route("/metrics", get(api::metrics))
        .nest_service("/mcp", mcp_service(&state))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    let public = Router::new().route("/healthz", get(api::health)).route("/openapi.json", get(openapi_json));
    let body_limit = state.service.settings().max_body_bytes as usize;
    public
        .merge(protected)
        // On every route (not on 404 and 405, which change nothing).
        .route_layer(middleware::from_fn_with_state(state.clone(), browser_guard))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(state.clone(), host_guard))
        .layer(middleware::from_fn_with_state(state.clone(), retry_after))
        .layer(middleware::from_fn_with_state(state.clone(), inflight))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(panic_response))
        .with_state(state)
}

/// How long open connections get, after the drain, to finish what they are sending
/// before they are dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` until `shutdown` completes, then drains.
///
/// Connections are capped at `max_connections`: at the cap the loop stops accepting
/// and further clients wait in the kernel's listen backlog (holding no descriptor of
/// this process) until a connection closes; the deadlines of `conn` close those
/// that stall. On shutdown the server keeps accepting while it drains: `/healthz`
/// answers `503 draining`, new work `503 shutting_down` with `Retry-After`, and running
/// cells get `drain_timeout_ms` to finish (then are stopped). When the drain is over
/// (every sandbox destroyed) the listener closes, idle connections close at once and
/// busy ones get a little longer to finish their responses.
pub async fn serve(
    service: Arc<Service>,
    listener: tokio::net::TcpListener,
    mut options: AppOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    options.listen = Some(addr);
    let cancel = options.cancel.clone();
    let settings = service.settings();
    let drain = Duration::from_millis(settings.drain_timeout_ms);
    let deadlines = conn::Deadlines::from_settings(settings);
    let slots = Arc::new(Semaphore::new(settings.max_connections));
    let state = AppState::new(service.clone(), options);
    let router = app(state.clone());

    let (drained_tx, mut drained) = watch::channel(false);
    let svc = service.clone();
    let drainer = tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutting down: new work gets 503; running cells get {drain:?} to finish");
        state.begin_drain(drain);
        svc.begin_shutdown();
        cancel.cancel();
        svc.shutdown(drain).await;
        let _ = drained_tx.send(true);
    });

    let (closing_tx, closing) = watch::channel(false);
    let mut conns = tokio::task::JoinSet::new();
    let mut warned: Option<Instant> = None;
    loop {
        let permit = tokio::select! {
            biased;
            _ = drained.wait_for(|d| *d) => break,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            biased;
            _ = drained.wait_for(|d| *d) => break,
            r = listener.accept() => r,
        };
        while conns.try_join_next().is_some() {}
        match accepted {
            Ok((stream, _peer)) => {
                let (router, closing) = (router.clone(), closing.clone());
                conns.spawn(async move {
                    let _permit = permit;
                    conn::serve_connection(stream, router, deadlines, closing).await;
                });
            }
            // The client gave up before it was accepted: nothing to do.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionAborted
                        | std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::ConnectionRefused
                ) => {}
            // Out of descriptors or memory: wait instead of spinning, and say so
            // (once a minute at most).
            Err(e) => {
                if warned.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                    tracing::warn!(
                        "cannot accept connections: {e}; retrying every 100 ms (raise the open-file limit or lower max_connections)"
                    );
                    warned = Some(Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    drop(listener);
    let _ = closing_tx.send(true);
    let all_closed = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(CLOSE_GRACE, all_closed).await.is_err() {
        tracing::warn!("{} connection(s) still open {CLOSE_GRACE:?} after the drain; closing them", conns.len());
        conns.abort_all();
        while conns.join_next().await.is_some() {}
    }
    if let Err(e) = drainer.await {
        tracing::error!("shutdown failed: {e}");
    }
    Ok(())
}

/// SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        let allowed = vec!["http://localhost:3000".to_string(), "https://app.example".to_string()];
        for (origin, host) in [
            ("http://127.0.0.1:8080", "127.0.0.1:8080"),
            ("http://localhost", "localhost:80"),
            ("https://api.example", "api.example"),
            ("HTTP://LOCALHOST:8080", "localhost:8080"),
            ("http://localhost:3000", "127.0.0.1:8080"),
            ("https://app.example:443", "127.0.0.1:8080"),
        ] {
            assert!(origin_allowed(origin, host, &allowed), "{origin} on {host}");
        }
        for (origin, host) in [
            ("http://evil.example", "127.0.0.1:8080"),
            ("http://127.0.0.1:8081", "127.0.0.1:8080"),
            ("null", "127.0.0.1:8080"),
            ("", "127.0.0.1:8080"),
            ("http://127.0.0.1:8080", ""),
            ("file://", "127.0.0.1:8080"),
            ("http://localhost:3000.evil.example", "127.0.0.1:8080"),
        ] {
            assert!(!origin_allowed(origin, host, &allowed), "{origin} on {host}");
        }
        for t in [
            "text/plain",
            "text/plain; charset=utf-8",
            "Multipart/Form-Data; boundary=x",
            "application/x-www-form-urlencoded",
        ] {
            assert!(is_form_type(t), "{t}");
        }
        for t in ["application/json", "application/octet-stream", "text/csv"] {
            assert!(!is_form_type(t), "{t}");
        }
    }

    #[test]
    fn loopback_hosts() {
        for h in ["localhost", "localhost:8080", "127.0.0.1:1", "127.0.0.1", "[::1]:80", "LOCALHOST"] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in ["evil.example:8080", "10.0.0.1:80", "[2001:db8::1]:80", "localhost.evil.com"] {
            assert!(!is_loopback_host(h), "{h}");
        }
    }
}
