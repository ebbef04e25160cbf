//! Every error the HTTP API returns: `{"error": {"code": ..., "message": ...}}` with a
//! stable code and a status that matches it.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use airlock_service::{ServiceError, ServiceErrorKind};

/// The body of every error response.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable, machine-readable code: `invalid_request`, `unauthorized`,
    /// `forbidden_host`, `forbidden_origin`, `not_found`, `method_not_allowed`,
    /// `body_timeout`, `busy`, `sandbox_gone`, `too_large`, `unsupported_media_type`,
    /// `backend_unavailable`, `overloaded`, `quota_exceeded`, `shutting_down`,
    /// `audit_unavailable`, `idempotency_in_progress`, `idempotency_mismatch`,
    /// `replay_unavailable`, `internal`.
    pub code: String,
    /// What happened and what to do about it.
    pub message: String,
    /// For `internal` errors: the id under which the server logged the cause.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// An error response.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The stable code.
    pub code: &'static str,
    /// The message.
    pub message: String,
    /// Seconds for a `Retry-After` header.
    pub retry_after_s: Option<u64>,
    /// The id of a logged internal error.
    pub error_id: Option<String>,
}

impl ApiError {
    /// An error with this status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), retry_after_s: None, error_id: None }
    }

    /// A `400 invalid_request`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    /// The body, for tests and streams.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail { code: self.code.into(), message: self.message.clone(), id: self.error_id.clone() },
        }
    }
}

/// The HTTP status of each service error kind.
pub fn status_of(kind: ServiceErrorKind) -> StatusCode {
    match kind {
        ServiceErrorKind::InvalidRequest => StatusCode::BAD_REQUEST,
        ServiceErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
        ServiceErrorKind::NotFound => StatusCode::NOT_FOUND,
        ServiceErrorKind::Busy => StatusCode::CONFLICT,
        ServiceErrorKind::SandboxGone => StatusCode::GONE,
        ServiceErrorKind::Overloaded | ServiceErrorKind::QuotaExceeded => StatusCode::TOO_MANY_REQUESTS,
        ServiceErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ServiceErrorKind::BackendUnavailable => StatusCode::UNPROCESSABLE_ENTITY,
        ServiceErrorKind::ShuttingDown | ServiceErrorKind::AuditUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        ServiceErrorKind::IdempotencyInProgress | ServiceErrorKind::ReplayUnavailable => StatusCode::CONFLICT,
        ServiceErrorKind::IdempotencyMismatch => StatusCode::UNPROCESSABLE_ENTITY,
        ServiceErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        ApiError {
            status: status_of(e.kind),
            code: e.code(),
            message: e.message.clone(),
            retry_after_s: e.retry_after_s,
            error_id: e.error_id.clone(),
        }
    }
}

impl From<airlock_core::Error> for ApiError {
    fn from(e: airlock_core::Error) -> Self {
        ServiceError::from(e).into()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(code = self.code, "{}", self.message);
        }
        let mut resp = (self.status, axum::Json(self.body())).into_response();
        if let Some(s) = self.retry_after_s
            && let Ok(v) = HeaderValue::from_str(&s.to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}
