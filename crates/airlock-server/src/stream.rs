//! Streaming a run's events as they happen: NDJSON (`application/x-ndjson`) or
//! server-sent events (`text/event-stream`).
//!
//! Each line (or SSE `data:`) is one JSON object tagged by `type`, shaped like E2B's
//! code-interpreter stream so that its clients port easily:
//!
//! ```text
//! {"type":"stdout","text":"hello\n"}
//! {"type":"stderr","text":"warning\n"}
//! {"type":"result","data":{"text/plain":"42"},"is_main_result":true}
//! {"type":"error","name":"ZeroDivisionError","value":"division by zero","traceback":"..."}
//! {"type":"end","outcome":{...the full Outcome...}}
//! ```
//!
//! `end` always comes last: with the `outcome`, or, if the host failed mid-run, with
//! `error: {code, message}` instead.

use std::convert::Infallible;

use airlock_core::{ErrorInfo, Event, Outcome, ResultBundle};
use airlock_service::events::event_channel;
use airlock_service::service::{AuditState, Finished};
use airlock_service::{Pending, ServiceError};
use axum::body::Body;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::Serialize;
use tokio_stream::wrappers::ReceiverStream;
use utoipa::ToSchema;

use crate::error::{ApiError, ErrorDetail};

/// One event of a streamed run.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamEvent {
    /// A chunk of standard output.
    Stdout {
        /// The text.
        text: String,
    },
    /// A chunk of standard error.
    Stderr {
        /// The text.
        text: String,
    },
    /// A rich result: `data` maps MIME types to content; the last expression's value
    /// has `is_main_result: true`.
    Result(ResultBundle),
    /// The uncaught exception: `name`, `value`, `traceback`.
    Error(ErrorInfo),
    /// The last event: the outcome, or the host error that ended the run.
    End {
        /// The full outcome, as the non-streaming call returns it.
        #[serde(skip_serializing_if = "Option::is_none")]
        outcome: Option<Box<Outcome>>,
        /// The host error, when there is no outcome.
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<ErrorDetail>,
        /// Present when the audit log does not hold the run's end: `pending` (kept in
        /// memory, written when the store takes writes again) or `unrecorded`.
        #[serde(skip_serializing_if = "Option::is_none")]
        audit: Option<AuditState>,
    },
}

impl From<Event> for StreamEvent {
    fn from(e: Event) -> Self {
        match e {
            Event::Stdout { text } => StreamEvent::Stdout { text },
            Event::Stderr { text } => StreamEvent::Stderr { text },
            Event::Result { result } => StreamEvent::Result(result),
            Event::Error { error } => StreamEvent::Error(error),
        }
    }
}

impl StreamEvent {
    /// The final event for a run's result.
    pub fn end(r: Result<Outcome, ServiceError>) -> Self {
        match r {
            Ok(o) => StreamEvent::End { outcome: Some(Box::new(o)), error: None, audit: None },
            Err(e) => StreamEvent::End { outcome: None, error: Some(ApiError::from(e).body().error), audit: None },
        }
    }

    /// The final event of a finished run, saying so when the audit log does not hold
    /// its end.
    pub fn finished(f: Finished) -> Self {
        let mut e = Self::end(f.result);
        if let StreamEvent::End { audit, .. } = &mut e
            && f.audit != AuditState::Recorded
        {
            *audit = Some(f.audit);
        }
        e
    }

    fn kind(&self) -> &'static str {
        match self {
            StreamEvent::Stdout { .. } => "stdout",
            StreamEvent::Stderr { .. } => "stderr",
            StreamEvent::Result(_) => "result",
            StreamEvent::Error(_) => "error",
            StreamEvent::End { .. } => "end",
        }
    }
}

/// How the caller asked for the result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One JSON outcome at the end.
    Json,
    /// Newline-delimited JSON events.
    Ndjson,
    /// Server-sent events.
    Sse,
}

impl Mode {
    /// From the `Accept` header: `application/x-ndjson` or `text/event-stream` stream;
    /// anything else gets the outcome as JSON.
    pub fn from_accept(accept: Option<&HeaderValue>) -> Mode {
        let a = accept.and_then(|v| v.to_str().ok()).unwrap_or("").to_ascii_lowercase();
        if a.contains("application/x-ndjson") || a.contains("application/jsonl") {
            Mode::Ndjson
        } else if a.contains("text/event-stream") {
            Mode::Sse
        } else {
            Mode::Json
        }
    }
}

fn encode(mode: Mode, ev: &StreamEvent) -> Bytes {
    let json = serde_json::to_string(ev).unwrap_or_else(|e| {
        format!(r#"{{"type":"end","error":{{"code":"internal","message":"cannot encode an event: {e}"}}}}"#)
    });
    match mode {
        Mode::Sse => Bytes::from(format!("event: {}\ndata: {json}\n\n", ev.kind())),
        _ => Bytes::from(format!("{json}\n")),
    }
}

/// The response for an admitted run: the outcome as JSON, or a stream of its events.
/// The run goes on to its end (and is recorded) even if the client goes away.
///
/// Headers: `X-Airlock-Execution-Id` once the execution is in the audit log (never
/// for a run refused before it was recorded); `X-Airlock-Audit: pending|unrecorded`
/// when its end is not; `Idempotent-Replayed: true` for the kept answer of an earlier
/// request with the same `Idempotency-Key`.
pub async fn respond(pending: Pending, mode: Mode) -> Response {
    if mode == Mode::Json {
        return finished_response(pending.start(None).finish().await);
    }
    // Bounded: a client that reads slowly slows the run (up to its wall-clock limit)
    // instead of making the server buffer its output.
    let (tx, rx) = event_channel();
    let mut run = pending.start(Some(tx));
    if !run.started().await {
        // Nothing runs: a refusal is an ordinary error response; a replay is a stream
        // of its last event.
        let f = run.finish().await;
        if f.result.is_err() {
            return finished_response(f);
        }
        let (execution_id, audit, replayed) = (f.execution_id.clone(), f.audit, f.replayed);
        let end = encode(mode, &StreamEvent::finished(f));
        let mut r = stream_response(mode, futures_util::stream::once(async move { end }).boxed(), execution_id);
        mark(&mut r, audit, replayed);
        return r;
    }
    let id = run.execution_id().to_string();
    let events = ReceiverStream::new(rx).map(move |e| encode(mode, &StreamEvent::from(e)));
    let end = futures_util::stream::once(async move { encode(mode, &StreamEvent::finished(run.finish().await)) });
    stream_response(mode, events.chain(end).boxed(), Some(id))
}

fn stream_response(
    mode: Mode,
    lines: futures_util::stream::BoxStream<'static, Bytes>,
    execution_id: Option<String>,
) -> Response {
    let body = Body::from_stream(lines.map(Ok::<_, Infallible>));
    let ct = if mode == Mode::Sse { "text/event-stream" } else { "application/x-ndjson" };
    let mut r = Response::new(body);
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r.headers_mut().insert("x-accel-buffering", HeaderValue::from_static("no"));
    if let Some(v) = execution_id.and_then(|id| HeaderValue::from_str(&id).ok()) {
        r.headers_mut().insert("x-airlock-execution-id", v);
    }
    r
}

/// The JSON response of a finished run: the outcome (with `"audit"` when the audit
/// log does not hold its end) or the error.
fn finished_response(f: Finished) -> Response {
    let mut r = match f.result {
        Ok(o) if f.audit == AuditState::Recorded => axum::Json(o).into_response(),
        Ok(o) => {
            let mut v = serde_json::to_value(&o).unwrap_or_default();
            if let Some(obj) = v.as_object_mut() {
                obj.insert("audit".into(), serde_json::to_value(f.audit).unwrap_or_default());
            }
            axum::Json(v).into_response()
        }
        Err(e) => ApiError::from(e).into_response(),
    };
    if let Some(v) = f.execution_id.and_then(|id| HeaderValue::from_str(&id).ok()) {
        r.headers_mut().insert("x-airlock-execution-id", v);
    }
    mark(&mut r, f.audit, f.replayed);
    r
}

fn mark(r: &mut Response, audit: AuditState, replayed: bool) {
    match audit {
        AuditState::Recorded => {}
        AuditState::Pending => {
            r.headers_mut().insert("x-airlock-audit", HeaderValue::from_static("pending"));
        }
        AuditState::Unrecorded => {
            r.headers_mut().insert("x-airlock-audit", HeaderValue::from_static("unrecorded"));
        }
    }
    if replayed {
        r.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_shaped_like_e2b() {
        let s = |e: StreamEvent| serde_json::to_value(e).unwrap();
        assert_eq!(
            s(StreamEvent::Stdout { text: "hi\n".into() }),
            serde_json::json!({"type": "stdout", "text": "hi\n"})
        );
        let err = ErrorInfo { name: "E".into(), value: "v".into(), traceback: "tb".into() };
        assert_eq!(
            s(StreamEvent::Error(err)),
            serde_json::json!({"type": "error", "name": "E", "value": "v", "traceback": "tb"})
        );
        let mut data = std::collections::BTreeMap::new();
        data.insert("text/plain".to_string(), serde_json::json!("2"));
        assert_eq!(
            s(StreamEvent::Result(ResultBundle { data, is_main_result: true })),
            serde_json::json!({"type": "result", "data": {"text/plain": "2"}, "is_main_result": true})
        );
        let end = s(StreamEvent::end(Err(ServiceError::busy("x"))));
        assert_eq!(end, serde_json::json!({"type": "end", "error": {"code": "busy", "message": "x"}}));
        assert_eq!(
            encode(Mode::Sse, &StreamEvent::Stdout { text: "a".into() }),
            "event: stdout\ndata: {\"type\":\"stdout\",\"text\":\"a\"}\n\n"
        );
    }

    #[test]
    fn accept_header_picks_the_mode() {
        let m = |s: &str| Mode::from_accept(Some(&HeaderValue::from_str(s).unwrap()));
        assert_eq!(m("application/x-ndjson"), Mode::Ndjson);
        assert_eq!(m("text/event-stream"), Mode::Sse);
        assert_eq!(m("application/json"), Mode::Json);
        assert_eq!(Mode::from_accept(None), Mode::Json);
    }
}
