//! airlock's HTTP API (axum) and MCP server (rmcp) over the transport-free service
//! layer in `airlock-service`.
//!
//! [`app`] builds the whole router from an [`AppState`], so tests drive it without a
//! socket; [`serve`] runs it on a listener with graceful shutdown. The REST handlers
//! (`api`) and the MCP tools (`mcp`) are two thin front ends over one
//! [`airlock_service::Service`]: HTTP is parsed into service calls, and nothing
//! HTTP-shaped reaches the service or the backends.
//!
//! Routes: `/v1/...` (see `docs/api.md` and `/openapi.json`), `/mcp` (streamable
//! HTTP MCP), `/healthz`, `/metrics`.

pub mod api;
pub mod error;
pub mod mcp;
pub mod openapi;
pub mod stream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use airlock_service::Service;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio::sync::Semaphore;
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
    options: AppOptions,
}

impl AppState {
    /// State over `service`.
    pub fn new(service: Arc<Service>, options: AppOptions) -> Self {
        let inflight = Arc::new(Semaphore::new(service.settings().max_inflight_requests));
        AppState { service, inflight, options }
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
/// page, and is refused.
async fn host_guard(State(st): State<AppState>, req: Request, next: Next) -> Response {
    if !st.service.auth_required() {
        let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
        let listen_ok = st.options.listen.is_some_and(|a| host == a.to_string());
        let extra_ok = st.service.settings().mcp_allowed_hosts.iter().any(|h| h == host);
        if !host.is_empty() && !is_loopback_host(host) && !listen_ok && !extra_ok {
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
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(state.clone(), host_guard))
        .layer(middleware::from_fn_with_state(state.clone(), inflight))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(panic_response))
        .with_state(state)
}

/// Serves `app` on `listener` until `shutdown` completes, then drains: new requests
/// are refused, running cells get `drain_timeout_ms` to finish (then are stopped),
/// open connections get a little longer, and every sandbox is destroyed before this
/// returns.
pub async fn serve(
    service: Arc<Service>,
    listener: tokio::net::TcpListener,
    mut options: AppOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    options.listen = Some(addr);
    let cancel = options.cancel.clone();
    let drain = Duration::from_millis(service.settings().drain_timeout_ms);
    let app = app(AppState::new(service.clone(), options));

    let (sig_tx, sig_rx) = tokio::sync::watch::channel(false);
    let svc = service.clone();
    let drainer = tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutting down: refusing new work, draining running cells");
        svc.begin_shutdown();
        cancel.cancel();
        let _ = sig_tx.send(true);
        svc.shutdown(drain).await;
    });
    let mut rx = sig_rx.clone();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        let _ = rx.wait_for(|s| *s).await;
    });
    let mut rx2 = sig_rx;
    let deadline = async move {
        let _ = rx2.wait_for(|s| *s).await;
        tokio::time::sleep(drain + Duration::from_secs(15)).await;
    };
    tokio::select! {
        r = server => r?,
        _ = deadline => tracing::warn!("connections still open after the drain timeout; closing them"),
    }
    // Sessions are destroyed by the drainer; wait for it.
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
    fn loopback_hosts() {
        for h in ["localhost", "localhost:8080", "127.0.0.1:1", "127.0.0.1", "[::1]:80", "LOCALHOST"] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in ["evil.example:8080", "10.0.0.1:80", "[2001:db8::1]:80", "localhost.evil.com"] {
            assert!(!is_loopback_host(h), "{h}");
        }
    }
}
