//! The HTTP API driven through the router, without a socket, on the `process`
//! backend (always available: it needs only Python 3).

use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_core::BackendKind;
use airlock_server::{AppOptions, AppState, app};
use airlock_service::keys::create_key;
use airlock_service::store::Store;
use airlock_service::store::fault::FaultyStore;
use airlock_service::store::sqlite::SqliteStore;
use airlock_service::{Config, Registry, ServerSettings, Service};
use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use futures_util::StreamExt;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

/// What every state-changing request must carry (the server's guard against
/// cross-site requests).
const JSON: &[(&str, &str)] = &[("content-type", "application/json")];
/// The usual type of an upload.
const OCTETS: &[(&str, &str)] = &[("content-type", "application/octet-stream")];

struct Harness {
    app: Router,
    svc: Arc<Service>,
    store: Arc<dyn Store>,
}

fn settings() -> ServerSettings {
    ServerSettings { default_backend: Some(BackendKind::Process), ..ServerSettings::default() }
}

fn harness(s: ServerSettings) -> Harness {
    harness_on(s, Registry::new(Config::from_env()), Arc::new(SqliteStore::in_memory().unwrap()))
}

fn harness_on(s: ServerSettings, registry: Registry, store: Arc<dyn Store>) -> Harness {
    let svc = Service::new(s, registry, store.clone());
    let app = app(AppState::new(svc.clone(), AppOptions::default()));
    Harness { app, svc, store }
}

struct Resp {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    fn code(&self) -> String {
        self.json()["error"]["code"].as_str().unwrap_or("").to_string()
    }
    fn message(&self) -> String {
        self.json()["error"]["message"].as_str().unwrap_or("").to_string()
    }
}

impl Harness {
    async fn req(&self, method: Method, uri: &str, headers: &[(&str, &str)], body: Body) -> Resp {
        let mut b = Request::builder().method(method).uri(uri).header(header::HOST, "127.0.0.1:8080");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let resp = self.app.clone().oneshot(b.body(body).unwrap()).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap().to_bytes().to_vec();
        Resp { status, headers, body }
    }

    async fn post(&self, uri: &str, body: Value) -> Resp {
        self.post_as(uri, body, None).await
    }

    async fn post_as(&self, uri: &str, body: Value, key: Option<&str>) -> Resp {
        let auth = key.map(|k| format!("Bearer {k}"));
        let mut h = vec![("content-type", "application/json")];
        if let Some(a) = &auth {
            h.push(("authorization", a.as_str()));
        }
        self.req(Method::POST, uri, &h, Body::from(body.to_string())).await
    }

    async fn get(&self, uri: &str) -> Resp {
        self.req(Method::GET, uri, &[], Body::empty()).await
    }

    async fn get_as(&self, uri: &str, key: &str) -> Resp {
        let a = format!("Bearer {key}");
        self.req(Method::GET, uri, &[("authorization", &a)], Body::empty()).await
    }

    async fn sandbox(&self, body: Value) -> String {
        let r = self.post("/v1/sandboxes", body).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&r.body));
        r.json()["id"].as_str().unwrap().to_string()
    }

    async fn cell(&self, id: &str, code: &str) -> Value {
        let r = self.post(&format!("/v1/sandboxes/{id}/execute"), json!({ "code": code })).await;
        assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
        r.json()
    }
}

fn main_text(o: &Value) -> Option<String> {
    o["results"].as_array()?.iter().find(|r| r["is_main_result"] == true)?["data"]["text/plain"]
        .as_str()
        .map(String::from)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_openapi_and_json_errors_for_unknown_routes() {
    let h = harness(settings());
    let r = h.get("/healthz").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["status"], "ok");
    assert!(r.json()["backends"].as_array().unwrap().contains(&json!("process")));

    let doc = h.get("/openapi.json").await.json();
    for p in ["/v1/execute", "/v1/sandboxes/{id}/execute", "/v1/sandboxes/{id}/files/{path}", "/v1/executions"] {
        assert!(doc["paths"].get(p).is_some(), "{p} missing from the OpenAPI document");
    }
    assert!(doc["components"]["schemas"].get("ExecRequest").is_some());
    assert!(doc["components"]["schemas"].get("StreamEvent").is_some());

    let r = h.get("/v2/nothing").await;
    assert_eq!((r.status, r.code().as_str()), (StatusCode::NOT_FOUND, "not_found"));
    let r = h.req(Method::PATCH, "/v1/execute", &[], Body::empty()).await;
    assert_eq!((r.status, r.code().as_str()), (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"));

    let m = h.get("/metrics").await;
    assert_eq!(m.status, StatusCode::OK);
    let text = String::from_utf8(m.body).unwrap();
    assert!(text.contains("# TYPE airlock_executions_total counter"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_shot_execution_returns_the_outcome_and_is_audited() {
    let h = harness(settings());
    let r = h.post("/v1/execute", json!({"code": "print(6 * 7)\nn * 2", "global_variables": {"n": 21}})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    let o = r.json();
    assert_eq!(o["status"], "ok");
    assert_eq!(o["stdout"], "42\n");
    assert_eq!(main_text(&o).as_deref(), Some("42"));
    assert_eq!(o["backend"], "process");
    let id = o["id"].as_str().unwrap();
    assert_eq!(r.headers["x-airlock-execution-id"], id);

    let rec = h.get(&format!("/v1/executions/{id}")).await;
    assert_eq!(rec.status, StatusCode::OK);
    let rec = rec.json();
    assert_eq!(rec["status"], "ok");
    assert_eq!(rec["kind"], "oneshot");
    assert_eq!(rec["stdout"], "42\n");
    assert!(rec["code"].as_str().unwrap().contains("print(6 * 7)"));
    assert!(rec["finished_at"].is_string());

    let r = h.post("/v1/execute", json!({"code": "1/0"})).await;
    assert_eq!(r.json()["status"], "error");
    assert_eq!(r.json()["error"]["name"], "ZeroDivisionError");
    let page = h.get("/v1/executions?status=error").await.json();
    assert_eq!(page["executions"].as_array().unwrap().len(), 1);
    assert_eq!(page["executions"][0]["error"]["name"], "ZeroDivisionError");
    let page = h.get("/v1/executions?limit=1").await.json();
    assert_eq!(page["executions"].as_array().unwrap().len(), 1);
    assert!(page["next_cursor"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_gets_a_4xx_that_says_what_to_fix() {
    let h = harness(ServerSettings { max_body_bytes: 4096, ..settings() });
    let cases: Vec<(Value, StatusCode, &str, &str)> = vec![
        (
            json!({"code": "1", "limits": {"timeout": 5}}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "limits.timeout: unknown field `timeout`",
        ),
        (json!({"code": "1", "backend": "docker"}), StatusCode::BAD_REQUEST, "invalid_request", "docker"),
        (
            json!({"code": "1", "limits": {"timeout_ms": 999_999_999}}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "maximum",
        ),
        (json!({"language": "python"}), StatusCode::BAD_REQUEST, "invalid_request", "code"),
        (json!({"code": "1", "colour": "red"}), StatusCode::BAD_REQUEST, "invalid_request", "colour"),
        (json!([1, 2]), StatusCode::BAD_REQUEST, "invalid_request", "object"),
        (
            json!({"code": "1", "files": [{"path": "../x", "content": "y"}]}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "..",
        ),
        (json!({"code": "x".repeat(5000)}), StatusCode::PAYLOAD_TOO_LARGE, "too_large", "max_body_bytes"),
    ];
    for (body, status, code, says) in cases {
        let r = h.post("/v1/execute", body.clone()).await;
        assert_eq!((r.status, r.code().as_str()), (status, code), "{body}: {}", String::from_utf8_lossy(&r.body));
        assert!(r.message().contains(says), "{body}: message '{}' does not mention '{says}'", r.message());
    }
    let r = h.req(Method::POST, "/v1/execute", &[("content-type", "application/json")], Body::from("{nope")).await;
    assert_eq!(r.code(), "invalid_request");
    assert!(r.message().contains("not valid JSON"), "{}", r.message());
    let r = h.req(Method::POST, "/v1/execute", &[("content-type", "text/plain")], Body::from("{}")).await;
    assert_eq!((r.status, r.code().as_str()), (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"));
    let r = h.get("/v1/executions?status=fine").await;
    assert!(r.message().contains("lost"), "{}", r.message());
    let r = h.get("/v1/executions?colour=red").await;
    assert_eq!(r.code(), "invalid_request");
    let r = h.get("/v1/executions?limit=0").await;
    assert_eq!(r.code(), "invalid_request");
    // Nothing was run for any of these.
    assert!(h.get("/v1/executions").await.json()["executions"].as_array().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_session_keeps_variables_between_cells() {
    let h = harness(settings());
    let id = h.sandbox(json!({"metadata": {"user": "ada"}, "limits": {"timeout_ms": 5000}})).await;
    let info = h.get(&format!("/v1/sandboxes/{id}")).await.json();
    assert_eq!(info["status"], "idle");
    assert_eq!(info["backend"], "process");
    assert_eq!(info["limits"]["timeout_ms"], 5000);
    assert_eq!(info["limits"]["memory_bytes"], 512 * 1024 * 1024, "omitted limits take the defaults");
    assert_eq!(info["metadata"]["user"], "ada");

    let o = h.cell(&id, "x = 41").await;
    assert_eq!(o["status"], "ok");
    let o = h.cell(&id, "x + 1").await;
    assert_eq!(main_text(&o).as_deref(), Some("42"));
    assert_eq!(o["sandbox_id"], id.as_str());

    // A cell's own limits: only per-cell ones may change.
    let r =
        h.post(&format!("/v1/sandboxes/{id}/execute"), json!({"code": "1", "limits": {"memory_bytes": 1 << 30}})).await;
    assert!(r.message().contains("memory_bytes is fixed"), "{}", r.message());
    let r = h.post(&format!("/v1/sandboxes/{id}/execute"), json!({"code": "1", "env": {"A": "b"}})).await;
    assert!(r.message().contains("env"), "{}", r.message());
    let o = h
        .post(
            &format!("/v1/sandboxes/{id}/execute"),
            json!({"code": "import time; time.sleep(5)", "limits": {"timeout_ms": 300}}),
        )
        .await
        .json();
    assert_eq!(o["status"], "timeout");
    assert_eq!(main_text(&h.cell(&id, "x").await).as_deref(), Some("41"), "a timed-out cell keeps the session's state");

    let info = h.get(&format!("/v1/sandboxes/{id}")).await.json();
    assert_eq!(info["execution_count"], 4);
    let cells = h.get(&format!("/v1/executions?sandbox={id}")).await.json();
    assert_eq!(cells["executions"].as_array().unwrap().len(), 4);
    assert_eq!(cells["executions"][0]["kind"], "cell");

    let list = h.get("/v1/sandboxes").await.json();
    assert_eq!(list["sandboxes"].as_array().unwrap().len(), 1);
    let r = h.req(Method::DELETE, &format!("/v1/sandboxes/{id}"), JSON, Body::empty()).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = h.get(&format!("/v1/sandboxes/{id}")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = h.post(&format!("/v1/sandboxes/{id}/execute"), json!({"code": "x"})).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn files_go_in_and_out_of_the_workspace_and_stay_inside_it() {
    let h = harness(settings());
    let id = h.sandbox(json!({})).await;
    let base = format!("/v1/sandboxes/{id}/files");
    let r = h.req(Method::PUT, &format!("{base}/data/in.csv"), OCTETS, Body::from("a,b\n1,2\n")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["size"], 8);
    let o = h.cell(&id, "open('data/in.csv').read().splitlines()[1]").await;
    assert_eq!(main_text(&o).as_deref(), Some("'1,2'"));
    h.cell(&id, "open('out.bin', 'wb').write(bytes(range(256)))").await;
    let r = h.get(&format!("{base}/out.bin")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, (0..=255u8).collect::<Vec<_>>());
    assert_eq!(r.headers[header::CONTENT_TYPE], "application/octet-stream");

    let list = h.get(&base).await.json();
    let paths: Vec<&str> = list["files"].as_array().unwrap().iter().map(|f| f["path"].as_str().unwrap()).collect();
    assert!(paths.contains(&"data/in.csv") && paths.contains(&"out.bin"), "{paths:?}");
    let sub = h.get(&format!("{base}?path=data")).await.json();
    assert_eq!(sub["files"].as_array().unwrap().len(), 1);

    let r = h.req(Method::DELETE, &format!("{base}/out.bin"), JSON, Body::empty()).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = h.get(&format!("{base}/out.bin")).await;
    assert_eq!((r.status, r.code().as_str()), (StatusCode::NOT_FOUND, "not_found"));

    // Escapes are refused, whatever the spelling.
    for bad in ["../escape.txt", "a/../../escape.txt", "/etc/passwd"] {
        let r = h.req(Method::PUT, &format!("{base}/{bad}"), OCTETS, Body::from("x")).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}: {}", String::from_utf8_lossy(&r.body));
    }
    h.cell(&id, "import os; os.symlink('/etc', 'etc')").await;
    let r = h.get(&format!("{base}/etc/passwd")).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.message().contains("symbolic link"), "{}", r.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn file_size_caps() {
    let h = harness(ServerSettings { max_file_bytes: 1000, ..settings() });
    let id = h.sandbox(json!({"limits": {"file_bytes": 100}})).await;
    let base = format!("/v1/sandboxes/{id}/files");
    let r = h.req(Method::PUT, &format!("{base}/big"), OCTETS, Body::from(vec![b'x'; 2000])).await;
    assert_eq!((r.status, r.code().as_str()), (StatusCode::PAYLOAD_TOO_LARGE, "too_large"));
    let r = h.req(Method::PUT, &format!("{base}/mid"), OCTETS, Body::from(vec![b'x'; 500])).await;
    assert_eq!((r.status, r.code().as_str()), (StatusCode::PAYLOAD_TOO_LARGE, "too_large"));
    assert!(r.message().contains("file_bytes"), "{}", r.message());
}

/// On `jail`, files PUT into a session are held in the sandbox's memory: beyond its
/// `memory_bytes` they are refused with a 413 that names the limit, even though the
/// workspace (`file_bytes`) would have room.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn uploads_beyond_a_jail_sessions_memory_get_413() {
    let reg = Registry::new(Config::from_env());
    if let Err(e) = reg.resolve(Some(BackendKind::Jail)) {
        eprintln!("skipped: {e}");
        return;
    }
    let h = harness(ServerSettings { default_backend: Some(BackendKind::Jail), pool_size: 0, ..settings() });
    let id = h.sandbox(json!({"limits": {"memory_bytes": 64 << 20, "file_bytes": 512 << 20}})).await;
    let base = format!("/v1/sandboxes/{id}/files");
    let mut refused = None;
    for i in 0..8 {
        let r = h.req(Method::PUT, &format!("{base}/f{i}"), &[], Body::from(vec![b'x'; 16 << 20])).await;
        if r.status != StatusCode::OK {
            refused = Some((i, r));
            break;
        }
    }
    let Some((i, r)) = refused else { panic!("128 MiB of files accepted into a session of 64 MiB") };
    assert!((1..=4).contains(&i), "refused after {i} files of 16 MiB");
    assert_eq!((r.status, r.code().as_str()), (StatusCode::PAYLOAD_TOO_LARGE, "too_large"), "{}", r.message());
    assert!(r.message().contains("limits.memory_bytes"), "{}", r.message());
    // The session is intact and holds what was accepted.
    let o = h.cell(&id, "import os\nlen(os.listdir('.'))").await;
    assert_eq!(main_text(&o), Some(i.to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streaming_delivers_events_in_order_as_they_happen() {
    let h = harness(settings());
    let id = h.sandbox(json!({})).await;
    let code = "import sys, time\nprint('first', flush=True)\ntime.sleep(1)\nprint('oops', file=sys.stderr)\nprint('second')\n40 + 2";
    let req = Request::builder()
        .method(Method::POST)
        .uri(format!("/v1/sandboxes/{id}/execute"))
        .header(header::HOST, "localhost:8080")
        .header("content-type", "application/json")
        .header("accept", "application/x-ndjson")
        .body(Body::from(json!({ "code": code }).to_string()))
        .unwrap();
    let start = Instant::now();
    let resp = h.app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/x-ndjson");
    let mut stream = resp.into_body().into_data_stream();
    let mut buf = Vec::new();
    let mut first_at = None;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        if first_at.is_none() && !chunk.is_empty() {
            first_at = Some(start.elapsed());
        }
        buf.extend_from_slice(&chunk);
    }
    let total = start.elapsed();
    let lines: Vec<Value> = String::from_utf8(buf).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let kinds: Vec<&str> = lines.iter().map(|l| l["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["stdout", "stderr", "stdout", "result", "end"], "{lines:?}");
    assert_eq!(lines[0]["text"], "first\n");
    assert_eq!(lines[3]["data"]["text/plain"], "42");
    assert_eq!(lines[3]["is_main_result"], true);
    assert_eq!(lines[4]["outcome"]["status"], "ok");
    let first_at = first_at.unwrap();
    assert!(
        first_at + Duration::from_millis(700) < total,
        "the first event came at {first_at:?}, not before the 1 s sleep ended ({total:?})"
    );

    // SSE carries the same events.
    let req = Request::builder()
        .method(Method::POST)
        .uri("/v1/execute")
        .header(header::HOST, "localhost")
        .header("content-type", "application/json")
        .header("accept", "text/event-stream")
        .body(Body::from(json!({"code": "print(1)\n1/0"}).to_string()))
        .unwrap();
    let resp = h.app.clone().oneshot(req).await.unwrap();
    let text = String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    let events: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("event: ")).collect();
    assert_eq!(events, ["stdout", "error", "end"], "{text}");
    assert!(text.contains("\"name\":\"ZeroDivisionError\""), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_cell_at_a_time_per_sandbox() {
    let h = Arc::new(harness(settings()));
    let id = h.sandbox(json!({})).await;
    let h2 = h.clone();
    let id2 = id.clone();
    let slow = tokio::spawn(async move { h2.cell(&id2, "import time; time.sleep(1.5); 'done'").await });
    tokio::time::sleep(Duration::from_millis(400)).await;
    let r = h.post(&format!("/v1/sandboxes/{id}/execute"), json!({"code": "1"})).await;
    assert_eq!((r.status, r.code().as_str()), (StatusCode::CONFLICT, "busy"));
    assert!(r.message().contains("one cell runs at a time"), "{}", r.message());
    let r = h.get(&format!("/v1/sandboxes/{id}/files")).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "file operations wait for the cell too");
    let info = h.get(&format!("/v1/sandboxes/{id}")).await.json();
    assert_eq!(info["status"], "running");
    assert!(info["running_execution_id"].is_string());
    assert_eq!(main_text(&slow.await.unwrap()).as_deref(), Some("'done'"));
    assert_eq!(main_text(&h.cell(&id, "2").await).as_deref(), Some("2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overload_queues_then_answers_429_with_retry_after() {
    let h = Arc::new(harness(ServerSettings { max_running: 1, queue_timeout_ms: 300, max_queue: 8, ..settings() }));
    let h2 = h.clone();
    let long = tokio::spawn(async move { h2.post("/v1/execute", json!({"code": "import time; time.sleep(2)"})).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t = Instant::now();
    let r = h.post("/v1/execute", json!({"code": "1"})).await;
    assert_eq!((r.status, r.code().as_str()), (StatusCode::TOO_MANY_REQUESTS, "overloaded"));
    assert!(t.elapsed() >= Duration::from_millis(250), "it did not wait in the queue first");
    let retry: u64 = r.headers[header::RETRY_AFTER].to_str().unwrap().parse().unwrap();
    assert!(retry >= 1);
    assert_eq!(long.await.unwrap().json()["status"], "ok");
    // With the slot free again, the same request runs.
    assert_eq!(h.post("/v1/execute", json!({"code": "1"})).await.json()["status"], "ok");
    let metrics = String::from_utf8(h.get("/metrics").await.body).unwrap();
    assert!(metrics.contains("airlock_rejected_total{reason=\"queue_timeout\"} 1"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keys_are_required_when_asked_and_see_only_their_own() {
    let h = harness(ServerSettings { per_key_max_sandboxes: 1, ..settings() });
    h.svc.set_auth_required(true);
    let (a, _) = create_key(h.store.as_ref(), "a", None).unwrap();
    let (b, _) = create_key(h.store.as_ref(), "b", Some(2)).unwrap();

    let r = h.post("/v1/execute", json!({"code": "1"})).await;
    assert_eq!((r.status, r.code().as_str()), (StatusCode::UNAUTHORIZED, "unauthorized"));
    assert!(r.message().contains("airlock keys create"), "{}", r.message());
    assert_eq!(r.headers[header::WWW_AUTHENTICATE], "Bearer");
    let r = h.post_as("/v1/execute", json!({"code": "1"}), Some(&format!("ak_{}", "0".repeat(64)))).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(h.get("/healthz").await.status, StatusCode::OK, "health stays public");
    assert_eq!(h.get("/metrics").await.status, StatusCode::UNAUTHORIZED);

    let r = h.post_as("/v1/sandboxes", json!({}), Some(&a)).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let sa = r.json()["id"].as_str().unwrap().to_string();
    let r = h.post_as("/v1/sandboxes", json!({}), Some(&a)).await;
    assert_eq!((r.status, r.code().as_str()), (StatusCode::TOO_MANY_REQUESTS, "quota_exceeded"));
    let o = h.post_as(&format!("/v1/sandboxes/{sa}/execute"), json!({"code": "'mine'"}), Some(&a)).await.json();
    let exe = o["id"].as_str().unwrap().to_string();

    // Key b sees none of a's sandboxes or executions.
    assert_eq!(h.get_as(&format!("/v1/sandboxes/{sa}"), &b).await.status, StatusCode::NOT_FOUND);
    let r = h.post_as(&format!("/v1/sandboxes/{sa}/execute"), json!({"code": "1"}), Some(&b)).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(h.get_as("/v1/sandboxes", &b).await.json()["sandboxes"].as_array().unwrap().is_empty());
    assert_eq!(h.get_as(&format!("/v1/executions/{exe}"), &b).await.status, StatusCode::NOT_FOUND);
    assert!(h.get_as("/v1/executions", &b).await.json()["executions"].as_array().unwrap().is_empty());
    assert_eq!(h.get_as(&format!("/v1/sandboxes/{sa}/files"), &b).await.status, StatusCode::NOT_FOUND);
    // Key a sees its own, with its key id on the record.
    let rec = h.get_as(&format!("/v1/executions/{exe}"), &a).await.json();
    assert!(rec["key_id"].as_str().unwrap().starts_with("key_"));
    // b's own quota is 2.
    assert_eq!(h.post_as("/v1/sandboxes", json!({}), Some(&b)).await.status, StatusCode::CREATED);
    assert_eq!(h.post_as("/v1/sandboxes", json!({}), Some(&b)).await.status, StatusCode::CREATED);

    // A revoked key stops working at once.
    assert!(h.store.revoke_key("a").unwrap());
    assert_eq!(h.get_as("/v1/sandboxes", &a).await.status, StatusCode::UNAUTHORIZED);
    // X-API-Key works too; a malformed Authorization header says how to send it.
    let r = h.req(Method::GET, "/v1/sandboxes", &[("x-api-key", &b)], Body::empty()).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = h.req(Method::GET, "/v1/sandboxes", &[("authorization", "Basic Zm9v")], Body::empty()).await;
    assert!(r.message().contains("Bearer"), "{}", r.message());
    h.svc.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_keys_only_loopback_hosts_are_served() {
    let h = harness(settings());
    let req =
        Request::builder().uri("/v1/sandboxes").header(header::HOST, "attacker.example").body(Body::empty()).unwrap();
    let resp = h.app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let body: Value = serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["error"]["code"], "forbidden_host");
    let req = Request::builder().uri("/v1/sandboxes").header(header::HOST, "[::1]:9").body(Body::empty()).unwrap();
    assert_eq!(h.app.clone().oneshot(req).await.unwrap().status(), StatusCode::OK);
}

/// A request with exactly these headers (no `Host` unless given).
async fn raw(app: &Router, method: Method, uri: &str, headers: &[(&str, &str)], body: &str) -> Resp {
    let mut b = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = app.clone().oneshot(b.body(Body::from(body.to_string())).unwrap()).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes().to_vec();
    Resp { status, headers, body }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_keys_a_request_with_no_host_is_refused() {
    let h = harness(settings());
    for headers in [&[][..], &[("host", "")][..], &[("host", "  ")][..]] {
        let r = raw(&h.app, Method::GET, "/v1/sandboxes", headers, "").await;
        assert_eq!((r.status, r.code().as_str()), (StatusCode::FORBIDDEN, "forbidden_host"), "{headers:?}");
        assert!(r.message().contains("Host"), "{}", r.message());
        let r = raw(&h.app, Method::POST, "/v1/execute", &[headers, JSON].concat(), r#"{"code": "1"}"#).await;
        assert_eq!((r.status, r.code().as_str()), (StatusCode::FORBIDDEN, "forbidden_host"), "{headers:?}");
    }
    // With keys required, the key is what counts: Host is not checked.
    let h = harness(settings());
    h.svc.set_auth_required(true);
    let key = create_key(h.store.as_ref(), "k", None).unwrap().0;
    let auth = format!("Bearer {key}");
    let r = raw(&h.app, Method::GET, "/v1/sandboxes", &[("authorization", &auth)], "").await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cross_site_requests_are_refused() {
    let h = harness(ServerSettings { allowed_origins: vec!["http://localhost:6274".into()], ..settings() });
    let host = ("host", "127.0.0.1:8080");
    let live = || h.svc.list_sandboxes(&h.svc.local_principal()).len();

    // What an HTML form (or fetch in no-cors mode) on another site sends: a simple
    // POST, text/plain, empty body. Refused, and nothing is created.
    let form = [host, ("content-type", "text/plain")];
    let r = raw(&h.app, Method::POST, "/v1/sandboxes", &form, "").await;
    assert_eq!((r.status, r.code().as_str()), (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"));
    assert!(r.message().contains("application/json"), "{}", r.message());
    for ct in ["application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "text/plain; charset=utf-8"] {
        let r = raw(&h.app, Method::POST, "/v1/execute", &[host, ("content-type", ct)], r#"{"code": "1"}"#).await;
        assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{ct}");
    }
    let r = raw(&h.app, Method::POST, "/v1/sandboxes", &[host], "").await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "an empty POST without Content-Type");
    let r = raw(&h.app, Method::POST, "/mcp", &form, r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#).await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "/mcp");
    assert_eq!(live(), 0, "a cross-site request created a sandbox");

    // A foreign Origin is refused even with JSON; the server's own origin and the
    // operator's allowed ones are not.
    let json_from = |origin: &'static str| [host, ("content-type", "application/json"), ("origin", origin)];
    for origin in ["http://evil.example", "null", "http://127.0.0.1:8081", "https://127.0.0.1:8080.evil.example"] {
        let r = raw(&h.app, Method::POST, "/v1/sandboxes", &json_from(origin), "{}").await;
        assert_eq!((r.status, r.code().as_str()), (StatusCode::FORBIDDEN, "forbidden_origin"), "{origin}");
        assert!(r.message().contains("allowed_origins"), "{}", r.message());
        let r = raw(&h.app, Method::GET, "/v1/sandboxes", &[host, ("origin", origin)], "").await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "GET from {origin}");
    }
    assert_eq!(live(), 0);
    let r = raw(&h.app, Method::POST, "/v1/sandboxes", &json_from("http://127.0.0.1:8080"), "").await;
    assert_eq!(r.status, StatusCode::CREATED, "own origin: {}", String::from_utf8_lossy(&r.body));
    let id = r.json()["id"].as_str().unwrap().to_string();
    let r = raw(&h.app, Method::POST, "/v1/sandboxes", &json_from("http://localhost:6274"), "{}").await;
    assert_eq!(r.status, StatusCode::CREATED, "allowed origin: {}", String::from_utf8_lossy(&r.body));

    // PUT and DELETE are never sent cross-site without a preflight (which this server
    // never grants), so they need no Content-Type: `curl -X DELETE` works.
    let file = format!("/v1/sandboxes/{id}/files/a.txt");
    let r = raw(&h.app, Method::PUT, &file, &[host], "x").await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    let r = raw(&h.app, Method::PUT, &file, &[host, ("content-type", "text/csv")], "y").await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    let r = raw(&h.app, Method::DELETE, &file, &[host], "").await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    // ...but a foreign Origin is refused on them too.
    let r =
        raw(&h.app, Method::DELETE, &format!("/v1/sandboxes/{id}"), &[host, ("origin", "https://evil.example")], "")
            .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(live(), 2);
    let r = raw(&h.app, Method::DELETE, "/mcp", &[host, ("mcp-session-id", "nope")], "").await;
    assert_ne!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "an MCP session end is not a form");
    h.svc.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_and_lifetime_reaping() {
    let h = harness(settings());
    let idle = h.sandbox(json!({"idle_timeout_ms": 200})).await;
    let short = h.sandbox(json!({"max_lifetime_ms": 600})).await;
    let keep = h.sandbox(json!({})).await;
    let cwd = main_text(&h.cell(&idle, "import os; os.getcwd()").await).unwrap();
    let dir = cwd.trim_matches('\'').to_string();
    assert!(std::path::Path::new(&dir).exists());
    // The lifetime ends even while a cell runs: the cell is stopped.
    let h = Arc::new(h);
    let h2 = h.clone();
    let s2 = short.clone();
    let running = tokio::spawn(async move { h2.cell(&s2, "import time; time.sleep(30)").await });
    tokio::time::sleep(Duration::from_millis(700)).await;
    h.svc.reap().await;
    let o = running.await.unwrap();
    assert_eq!(o["status"], "killed", "{o}");
    assert_eq!(h.get(&format!("/v1/sandboxes/{idle}")).await.status, StatusCode::NOT_FOUND);
    assert_eq!(h.get(&format!("/v1/sandboxes/{short}")).await.status, StatusCode::NOT_FOUND);
    assert_eq!(h.get(&format!("/v1/sandboxes/{keep}")).await.status, StatusCode::OK);
    assert!(!std::path::Path::new(&dir).exists(), "the reaped sandbox's directory is still there");
    let r = h.post("/v1/sandboxes", json!({"idle_timeout_ms": 0})).await;
    assert_eq!(r.code(), "invalid_request");
    h.svc.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sandbox_whose_interpreter_dies_is_reported_gone() {
    let h = harness(settings());
    let id = h.sandbox(json!({})).await;
    let o = h.cell(&id, "import os, signal; os.kill(os.getpid(), signal.SIGKILL)").await;
    assert_eq!(o["status"], "killed");
    let info = h.get(&format!("/v1/sandboxes/{id}")).await.json();
    assert_eq!(info["status"], "stopped");
    assert!(info["stopped_reason"].is_string());
    let r = h.post(&format!("/v1/sandboxes/{id}/execute"), json!({"code": "1"})).await;
    assert_eq!((r.status, r.code().as_str()), (StatusCode::GONE, "sandbox_gone"));
    assert!(r.message().contains("create a new sandbox"), "{}", r.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_drains_running_cells_then_destroys_every_sandbox() {
    let h = Arc::new(harness(settings()));
    let a = h.sandbox(json!({})).await;
    let b = h.sandbox(json!({})).await;
    let dir = main_text(&h.cell(&b, "import os; os.getcwd()").await).unwrap().trim_matches('\'').to_string();
    let h2 = h.clone();
    let a2 = a.clone();
    let cell = tokio::spawn(async move { h2.cell(&a2, "import time; time.sleep(1); 'finished'").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    h.svc.shutdown(Duration::from_secs(10)).await;
    assert_eq!(main_text(&cell.await.unwrap()).as_deref(), Some("'finished'"), "the running cell was not drained");
    assert!(!std::path::Path::new(&dir).exists(), "a sandbox survived shutdown");
    let r = h.post("/v1/execute", json!({"code": "1"})).await;
    assert_eq!((r.status, r.code().as_str()), (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"));
    assert_eq!(h.get("/healthz").await.status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_stops_cells_that_outlive_the_drain_timeout() {
    let h = Arc::new(harness(settings()));
    let a = h.sandbox(json!({})).await;
    let h2 = h.clone();
    let cell = tokio::spawn(async move { h2.cell(&a, "import time; time.sleep(60)").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    h.svc.shutdown(Duration::from_millis(200)).await;
    assert!(t.elapsed() < Duration::from_secs(10));
    let o = cell.await.unwrap();
    assert_eq!(o["status"], "killed");
    // It says why: not only "killed by SIGKILL".
    let reason = o["reason"].as_str().unwrap_or("");
    assert!(reason.contains("shutting down") && reason.contains("drain timeout"), "{o}");
    let rec = h.get(&format!("/v1/executions/{}", o["id"].as_str().unwrap())).await.json();
    assert!(rec["reason"].as_str().unwrap_or("").contains("shutting down"), "{rec}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_gives_up_in_the_queue_leaves_the_sandbox_usable() {
    let h = Arc::new(harness(ServerSettings { max_running: 1, queue_timeout_ms: 5000, ..settings() }));
    let id = h.sandbox(json!({})).await;
    let h2 = h.clone();
    let long = tokio::spawn(async move { h2.post("/v1/execute", json!({"code": "import time; time.sleep(1)"})).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // This cell waits in the queue; its client goes away (the request future is dropped).
    let gave_up = tokio::time::timeout(
        Duration::from_millis(200),
        h.post(&format!("/v1/sandboxes/{id}/execute"), json!({"code": "1"})),
    )
    .await;
    assert!(gave_up.is_err(), "the cell was not queued");
    assert_eq!(long.await.unwrap().json()["status"], "ok");
    let info = h.get(&format!("/v1/sandboxes/{id}")).await.json();
    assert_eq!(info["status"], "idle", "{info}");
    assert_eq!(main_text(&h.cell(&id, "6 * 7").await).as_deref(), Some("42"));
    // Nothing ran for the abandoned request.
    assert_eq!(info["execution_count"], 0);
}

impl Harness {
    async fn post_with(&self, uri: &str, body: Value, extra: &[(&str, &str)]) -> Resp {
        let mut h = vec![("content-type", "application/json")];
        h.extend_from_slice(extra);
        self.req(Method::POST, uri, &h, Body::from(body.to_string())).await
    }
}

fn records(h: &Harness) -> usize {
    let q = airlock_service::store::ExecutionQuery { limit: 1000, ..Default::default() };
    h.store.executions(&q).unwrap().executions.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idempotency_key_makes_a_retried_execute_safe() {
    let h = harness(settings());
    let body = json!({"code": "import random\nprint(random.random())"});
    let k = [("idempotency-key", "5b0e1f2a-retry")];
    let first = h.post_with("/v1/execute", body.clone(), &k).await;
    assert_eq!(first.status, StatusCode::OK, "{}", String::from_utf8_lossy(&first.body));
    assert!(first.headers.get("idempotent-replayed").is_none());
    let id = first.json()["id"].as_str().unwrap().to_string();

    // The connection dropped; the client sends the same request again.
    let again = h.post_with("/v1/execute", body.clone(), &k).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_eq!(again.headers["x-airlock-execution-id"], id.as_str());
    assert_eq!(again.json(), first.json(), "the retry did not get the first answer");
    assert_eq!(records(&h), 1, "the request ran twice");
    // Streaming asks get the same answer as a one-line stream.
    let streamed = h.post_with("/v1/execute", body.clone(), &[k[0], ("accept", "application/x-ndjson")]).await;
    assert_eq!(streamed.headers[header::CONTENT_TYPE], "application/x-ndjson");
    let line: Value = serde_json::from_slice(&streamed.body).unwrap();
    assert_eq!((line["type"].as_str(), &line["outcome"]), (Some("end"), &first.json()));
    assert_eq!(records(&h), 1);

    // The same key with another request is refused; bad keys are refused by name.
    let r = h.post_with("/v1/execute", json!({"code": "print(2)"}), &k).await;
    assert_eq!((r.status, r.code().as_str()), (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_mismatch"));
    let long = "k".repeat(300);
    for bad in ["has spaces", long.as_str()] {
        let r = h.post_with("/v1/execute", body.clone(), &[("idempotency-key", bad)]).await;
        assert_eq!((r.status, r.code().as_str()), (StatusCode::BAD_REQUEST, "invalid_request"), "{bad}");
        assert!(r.message().contains("Idempotency-Key"), "{}", r.message());
    }
    assert_eq!(records(&h), 1);

    // Keys are per API key: another key's identical request is its own.
    h.svc.set_auth_required(true);
    let (a, _) = create_key(h.store.as_ref(), "a", None).unwrap();
    let (b, _) = create_key(h.store.as_ref(), "b", None).unwrap();
    let (ba, bb) = (format!("Bearer {a}"), format!("Bearer {b}"));
    let ra = h.post_with("/v1/execute", body.clone(), &[k[0], ("authorization", &ba)]).await.json();
    let rb = h.post_with("/v1/execute", body.clone(), &[k[0], ("authorization", &bb)]).await.json();
    assert_ne!(ra["id"], rb["id"]);
    assert_ne!(ra["id"].as_str(), Some(id.as_str()));
    let rb2 = h.post_with("/v1/execute", body.clone(), &[k[0], ("authorization", &bb)]).await.json();
    assert_eq!(rb2["id"], rb["id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idempotency_key_makes_a_retried_sandbox_creation_safe() {
    let h = harness(settings());
    let k = [("idempotency-key", "create-1")];
    let body = json!({"metadata": {"user": "ada"}});
    let first = h.post_with("/v1/sandboxes", body.clone(), &k).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&first.body));
    let id = first.json()["id"].as_str().unwrap().to_string();
    let again = h.post_with("/v1/sandboxes", body.clone(), &k).await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_eq!(again.json()["id"], id.as_str());
    assert_eq!(h.get("/v1/sandboxes").await.json()["sandboxes"].as_array().unwrap().len(), 1);
    let r = h.post_with("/v1/sandboxes", json!({}), &k).await;
    assert_eq!((r.status, r.code().as_str()), (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_mismatch"));
    // A creation that was refused (quota) leaves the key free for a retry.
    let h1 = harness(ServerSettings { per_key_max_sandboxes: 1, ..settings() });
    let _ = h1.sandbox(json!({})).await;
    let r = h1.post_with("/v1/sandboxes", json!({}), &[("idempotency-key", "q")]).await;
    assert_eq!(r.code(), "quota_exceeded");
    let only = h1.get("/v1/sandboxes").await.json()["sandboxes"][0]["id"].as_str().unwrap().to_string();
    h1.req(Method::DELETE, &format!("/v1/sandboxes/{only}"), &[], Body::empty()).await;
    tokio::time::sleep(Duration::from_millis(200)).await; // the claim is released on a blocking thread
    let r = h1.post_with("/v1/sandboxes", json!({}), &[("idempotency-key", "q")]).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.headers.get("idempotent-replayed").is_none());
    h.svc.shutdown(Duration::from_secs(1)).await;
    h1.svc.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sandbox_from_before_a_restart_answers_410_to_its_owner_only() {
    let dir = tempfile::tempdir().unwrap();
    let open = || -> Arc<dyn Store> { Arc::new(SqliteStore::open(dir.path()).unwrap()) };
    let h = harness_on(settings(), Registry::new(Config::from_env()), open());
    let (a, _) = create_key(h.store.as_ref(), "a", None).unwrap();
    let (b, _) = create_key(h.store.as_ref(), "b", None).unwrap();
    let id = h.post_as("/v1/sandboxes", json!({}), Some(&a)).await.json()["id"].as_str().unwrap().to_string();
    h.svc.shutdown(Duration::from_secs(5)).await;
    drop(h);

    let h = harness_on(settings(), Registry::new(Config::from_env()), open());
    h.svc.start().await.unwrap();
    let r = h.get_as(&format!("/v1/sandboxes/{id}"), &a).await;
    assert_eq!((r.status, r.code().as_str()), (StatusCode::GONE, "sandbox_gone"), "{}", r.message());
    assert!(r.message().contains("the server restarted"), "{}", r.message());
    let r = h.post_as(&format!("/v1/sandboxes/{id}/execute"), json!({"code": "1"}), Some(&a)).await;
    assert_eq!(r.status, StatusCode::GONE);
    let r = h.get_as(&format!("/v1/sandboxes/{id}"), &b).await;
    assert_eq!((r.status, r.code().as_str()), (StatusCode::NOT_FOUND, "not_found"), "another key learns it existed");
    let never = h.get_as("/v1/sandboxes/sbx_00000000000000000000000000000000", &b).await;
    assert_eq!(r.message().replace(&id, "X"), never.message().replace("sbx_00000000000000000000000000000000", "X"));
    h.svc.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn while_the_audit_log_cannot_be_written_the_server_says_so_and_runs_nothing() {
    let store = Arc::new(FaultyStore::new(SqliteStore::in_memory().unwrap()));
    let h = harness_on(settings(), Registry::new(Config::from_env()), store.clone());

    // The disk fills during a run: the answer says its end is not recorded.
    let h = Arc::new(h);
    for accept in ["application/json", "application/x-ndjson"] {
        let h2 = h.clone();
        let accept2 = accept.to_string();
        let run = tokio::spawn(async move {
            h2.post_with(
                "/v1/execute",
                json!({"code": "import time; time.sleep(0.7); print(1)"}),
                &[("accept", &accept2)],
            )
            .await
        });
        tokio::time::sleep(Duration::from_millis(400)).await;
        store.refuse_ends(true);
        let r = run.await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "{accept}");
        let id = r.headers["x-airlock-execution-id"].to_str().unwrap().to_string();
        let outcome = if accept == "application/json" {
            assert_eq!(r.headers["x-airlock-audit"], "pending");
            let o = r.json();
            assert_eq!(o["audit"], "pending", "{o}");
            o
        } else {
            let end: Value = serde_json::from_str(String::from_utf8_lossy(&r.body).lines().last().unwrap()).unwrap();
            assert_eq!(end["audit"], "pending", "{end}");
            end["outcome"].clone()
        };
        assert_eq!(outcome["stdout"], "1\n");
        // The record holds what the store holds: the start.
        assert_eq!(h.get(&format!("/v1/executions/{id}")).await.json()["status"], "running");

        let health = h.get("/healthz").await;
        assert_eq!(health.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(health.json()["status"], "degraded");
        assert!(health.json()["reason"].as_str().unwrap().contains("audit log"), "{}", health.json());
        // New work is refused before it runs, with no execution id to chase.
        let r = h.post("/v1/execute", json!({"code": "1"})).await;
        assert_eq!((r.status, r.code().as_str()), (StatusCode::SERVICE_UNAVAILABLE, "audit_unavailable"));
        assert!(r.headers.get("x-airlock-execution-id").is_none());
        assert!(r.headers.get(header::RETRY_AFTER).is_some());
        let r = h.post("/v1/sandboxes", json!({})).await;
        assert_eq!(r.code(), "audit_unavailable");
        let m = String::from_utf8(h.get("/metrics").await.body).unwrap();
        assert!(m.contains("airlock_audit_degraded 1"), "{m}");

        store.refuse_ends(false);
        assert_eq!(h.svc.flush_audit().await, 0);
        assert_eq!(h.get(&format!("/v1/executions/{id}")).await.json()["status"], "ok");
        assert_eq!(h.get("/healthz").await.json()["status"], "ok");
    }

    // A store that refuses everything: nothing runs, and no id is given out.
    store.refuse_writes(true);
    let h2 = h.clone();
    let r = h2.post_with("/v1/execute", json!({"code": "1"}), &[("accept", "application/x-ndjson")]).await;
    assert_eq!((r.status, r.code().as_str()), (StatusCode::SERVICE_UNAVAILABLE, "audit_unavailable"));
    assert!(r.headers.get("x-airlock-execution-id").is_none(), "an id that leads nowhere was given out");
}

/// A backend whose sandboxes can never be created: every run is a host fault.
struct BrokenBackend;

impl airlock_core::Backend for BrokenBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Process
    }
    fn isolation(&self) -> airlock_core::Isolation {
        airlock_core::Isolation::None
    }
    fn probe(&self) -> airlock_core::Probe {
        airlock_core::Probe {
            backend: BackendKind::Process,
            isolation: airlock_core::Isolation::None,
            available: true,
            detail: "broken on purpose".into(),
            fix: None,
            checks: Default::default(),
        }
    }
    fn create(&self, _: &airlock_core::SandboxSpec) -> Result<Box<dyn airlock_core::Sandbox>, airlock_core::Error> {
        Err(airlock_core::Error::host("creating the sandbox's workspace: no space left on device"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_500_that_carries_an_execution_id_is_in_the_audit_log() {
    let registry = Registry::with_backends(Config::from_env(), vec![Arc::new(BrokenBackend)]);
    let h = harness_on(settings(), registry, Arc::new(SqliteStore::in_memory().unwrap()));
    let r = h.post("/v1/execute", json!({"code": "1"})).await;
    assert_eq!((r.status, r.code().as_str()), (StatusCode::INTERNAL_SERVER_ERROR, "internal"));
    let id = r.headers["x-airlock-execution-id"].to_str().unwrap();
    let rec = h.get(&format!("/v1/executions/{id}")).await;
    assert_eq!(rec.status, StatusCode::OK, "a 500 named {id}, which the audit log does not have");
    assert_eq!(rec.json()["status"], "failed");
}

/// Whether the jail works here (the default backend of a server nobody configured).
fn jail_works() -> bool {
    let ok = Registry::new(Config::from_env()).probe(BackendKind::Jail).is_some_and(|p| p.available);
    if !ok {
        eprintln!("skipped: the jail backend does not work here");
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_unconfined_backend_is_served_only_when_the_operator_names_it() {
    if !jail_works() {
        return;
    }
    // A server nobody configured: isolating backends only.
    let h = harness(ServerSettings { pool_size: 0, ..ServerSettings::default() });
    let health = h.get("/healthz").await.json();
    let served = health["backends"].as_array().unwrap().clone();
    assert!(served.contains(&json!("jail")) && !served.contains(&json!("process")), "{health}");
    assert_eq!(health["default_backend"], "jail");
    for (uri, body) in [
        ("/v1/execute", json!({"backend": "process", "code": "open('/etc/shadow').read()"})),
        ("/v1/sandboxes", json!({"backend": "process"})),
    ] {
        let r = h.post(uri, body).await;
        assert_eq!((r.status, r.code().as_str()), (StatusCode::BAD_REQUEST, "invalid_request"), "{uri}");
        let m = r.message();
        assert!(m.contains("does not serve backend 'process'") && m.contains("jail"), "{m}");
    }
    // What the caller leaves out runs isolated.
    let o = h.post("/v1/execute", json!({"code": "1"})).await.json();
    assert_eq!((o["status"].as_str(), o["backend"].as_str()), (Some("ok"), Some("jail")), "{o}");

    // The operator's list is the list: jail alone refuses wasm and process alike.
    let h = harness(ServerSettings { backends: vec![BackendKind::Jail], pool_size: 0, ..ServerSettings::default() });
    let r = h.post("/v1/execute", json!({"backend": "wasm", "code": "1"})).await;
    assert!(
        r.message().contains("does not serve backend 'wasm'") && r.message().contains("serves jail"),
        "{}",
        r.message()
    );
    // Naming `process` serves it (the operator's choice), beside the default.
    let h = harness(ServerSettings {
        backends: vec![BackendKind::Jail, BackendKind::Process],
        pool_size: 0,
        ..ServerSettings::default()
    });
    let o = h.post("/v1/execute", json!({"backend": "process", "code": "1"})).await.json();
    assert_eq!(o["isolation"], "none", "{o}");
    assert!(h.svc.warnings().iter().any(|w| w.contains("NO isolation")), "{:?}", h.svc.warnings());
    assert_eq!(h.get("/healthz").await.json()["default_backend"], "jail");

    // A default outside the list is a configuration error that says what to change.
    let bad = ServerSettings {
        backends: vec![BackendKind::Jail],
        default_backend: Some(BackendKind::Process),
        ..ServerSettings::default()
    };
    let e = bad.validate().unwrap_err().to_string();
    assert!(e.contains("default_backend 'process' is not in backends"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn host_network_is_refused_unless_enabled_and_then_keys_are_required_on_loopback() {
    let h = harness(settings());
    for (uri, body) in
        [("/v1/execute", json!({"network": "host", "code": "1"})), ("/v1/sandboxes", json!({"network": "host"}))]
    {
        let r = h.post(uri, body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{uri}");
        assert!(r.message().contains("allow_host_network"), "{}", r.message());
    }
    assert_eq!(h.get("/v1/sandboxes").await.status, StatusCode::OK, "loopback without a key is served by default");

    // Enabled: code on the host's network can reach this port, so no request is trusted
    // for coming from loopback any more.
    let h = harness(ServerSettings { allow_host_network: true, ..settings() });
    assert!(h.svc.auth_required());
    let r = h.post("/v1/execute", json!({"network": "host", "code": "1"})).await;
    assert_eq!((r.status, r.code().as_str()), (StatusCode::UNAUTHORIZED, "unauthorized"));
    assert_eq!(h.get("/v1/sandboxes").await.status, StatusCode::UNAUTHORIZED);
    let (key, _) = create_key(h.store.as_ref(), "ops", None).unwrap();
    let o = h.post_as("/v1/execute", json!({"code": "1"}), Some(&key)).await;
    assert_eq!(o.status, StatusCode::OK);
    assert!(h.svc.warnings().iter().any(|w| w.contains("allow_host_network")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_guarded_sessions_cells_are_checked_before_they_run() {
    let h = harness(settings());
    let id = h.sandbox(json!({"guard": {"profile": "standard"}})).await;
    assert_eq!(h.get(&format!("/v1/sandboxes/{id}")).await.json()["guard"]["profile"], "standard");
    // The static check refuses before anything runs: `denied`, with findings the
    // model can act on, exactly like a one-shot.
    let o = h.post(&format!("/v1/sandboxes/{id}/execute"), json!({"code": "import ctypes\nctypes.CDLL(None)"})).await;
    assert_eq!(o.status, StatusCode::OK);
    let o = o.json();
    assert_eq!(o["status"], "denied", "{o}");
    assert!(o["guard_findings"].as_array().is_some_and(|f| !f.is_empty()), "{o}");
    let one_shot =
        h.post("/v1/execute", json!({"code": "import ctypes", "guard": {"profile": "standard"}})).await.json();
    assert_eq!(one_shot["guard_findings"], o["guard_findings"], "cells and one-shots are checked alike");
    // Something only the static check catches (a dunder walk) is refused too.
    let o = h.cell(&id, "().__class__.__base__.__subclasses__()").await;
    assert_eq!(o["status"], "denied", "{o}");
    // Allowed code runs, under the runtime layer.
    let o = h.cell(&id, "x = 6 * 7\nx").await;
    assert_eq!((o["status"].as_str(), main_text(&o).as_deref()), (Some("ok"), Some("42")), "{o}");
    // The guard is the sandbox's: a cell cannot change or drop it.
    for guard in [json!({"profile": "off"}), json!({"profile": "strict"})] {
        let r = h.post(&format!("/v1/sandboxes/{id}/execute"), json!({"code": "1", "guard": guard})).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{guard}");
        assert!(r.message().contains("`guard` is fixed when a sandbox is created"), "{}", r.message());
    }
    // Repeating it is fine, and so are the other fixed fields when they repeat the sandbox's.
    let same = json!({"code": "x", "guard": {"profile": "standard"}, "network": "none", "backend": "process"});
    assert_eq!(h.post(&format!("/v1/sandboxes/{id}/execute"), same).await.json()["status"], "ok");
    let r = h
        .post(&format!("/v1/sandboxes/{id}/execute"), json!({"code": "x", "limits": {"memory_bytes": 99_999_999}}))
        .await;
    assert!(r.message().contains("limits.memory_bytes is fixed"), "{}", r.message());
    let r = h.post(&format!("/v1/sandboxes/{id}/execute"), json!({"code": "x", "template": "default"})).await;
    assert!(r.message().contains("unknown field `template`"), "{}", r.message());
    // The refusal is in the audit log as `denied`.
    let page = h.get(&format!("/v1/executions?sandbox={id}&status=denied")).await.json();
    assert_eq!(page["executions"].as_array().unwrap().len(), 2, "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn host_faults_reach_the_client_as_an_error_id_not_as_host_details() {
    // An "interpreter" that fails at start-up and names a host path, as a broken
    // installation would.
    let dir = tempfile::tempdir().unwrap();
    let python = dir.path().join("python3");
    std::fs::write(&python, "#!/bin/sh\necho 'cannot open /srv/secret-host-dir/lib' >&2\nexit 3\n").unwrap();
    std::fs::set_permissions(&python, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let config = Config { python, ..Config::from_env() };
    let svc = Service::new(settings(), Registry::new(config), Arc::new(SqliteStore::in_memory().unwrap()));
    let h = Harness {
        app: app(AppState::new(svc.clone(), AppOptions::default())),
        svc,
        store: Arc::new(SqliteStore::in_memory().unwrap()),
    };
    for (uri, body) in [("/v1/execute", json!({"code": "1"})), ("/v1/sandboxes", json!({}))] {
        let r = h.post(uri, body).await;
        assert_eq!((r.status, r.code().as_str()), (StatusCode::INTERNAL_SERVER_ERROR, "internal"), "{}", r.message());
        let body = String::from_utf8_lossy(&r.body).to_string();
        assert!(
            !body.contains("secret-host-dir") && !body.contains(dir.path().to_str().unwrap()),
            "host details leaked: {body}"
        );
        let id = r.json()["error"]["id"].as_str().unwrap_or_default().to_string();
        assert!(id.starts_with("err_") && r.message().contains(&id), "{body}");
    }
}

/// Sends an NDJSON request and returns the response's body as a stream of chunks.
async fn ndjson(h: &Harness, uri: &str, body: Value) -> (HeaderMap, axum::body::BodyDataStream) {
    let req = Request::builder()
        .method(Method::POST)
        .uri(uri)
        .header(header::HOST, "localhost:8080")
        .header("content-type", "application/json")
        .header("accept", "application/x-ndjson")
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = h.app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let headers = resp.headers().clone();
    (headers, resp.into_body().into_data_stream())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_stream_reader_holds_the_run_back_instead_of_filling_memory() {
    let h = harness(settings());
    let code = "for i in range(300):\n    print(i, flush=True)\n'done'";
    let (_, mut stream) = ndjson(&h, "/v1/execute", json!({ "code": code })).await;
    let mut buf = stream.next().await.unwrap().unwrap().to_vec();
    // Not reading: the server may hold a bounded queue of events, so the run has to
    // wait for this reader instead of running ahead into memory.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    while let Some(chunk) = stream.next().await {
        buf.extend_from_slice(&chunk.unwrap());
    }
    let lines: Vec<Value> = String::from_utf8(buf).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let text: String =
        lines.iter().filter(|l| l["type"] == "stdout").map(|l| l["text"].as_str().unwrap().to_string()).collect();
    let want: String = (0..300).map(|i| format!("{i}\n")).collect();
    assert_eq!(text, want, "every event arrived, in order, none dropped");
    let end = lines.last().unwrap();
    assert_eq!(end["type"], "end");
    assert_eq!(end["outcome"]["status"], "ok", "{end}");
    let wall = end["outcome"]["usage"]["wall_ms"].as_u64().unwrap();
    assert!(
        wall >= 1000,
        "the run finished in {wall} ms while its reader read nothing for 1.5 s: its events were buffered without bound"
    );
    // The queue must be smaller than what this run produced for the test to mean anything.
    const { assert!(airlock_service::events::EVENT_QUEUE < 300) };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_reader_that_goes_away_does_not_stop_the_run() {
    let h = harness(settings());
    let code = "for i in range(300):\n    print(i, flush=True)\n'done'";
    let (headers, mut stream) = ndjson(&h, "/v1/execute", json!({ "code": code })).await;
    let id = headers["x-airlock-execution-id"].to_str().unwrap().to_string();
    let _ = stream.next().await;
    drop(stream);
    let end = Instant::now() + Duration::from_secs(20);
    let rec = loop {
        let rec = h.get(&format!("/v1/executions/{id}")).await.json();
        if rec["status"] != "running" {
            break rec;
        }
        assert!(Instant::now() < end, "the run never finished after its reader went away: {rec}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(rec["status"], "ok", "{rec}");
    assert!(rec["stdout"].as_str().unwrap().ends_with("299\n"), "{rec}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_huge_exception_gives_a_small_outcome_and_audit_record() {
    let h = harness(settings());
    let r = h.post("/v1/execute", json!({"code": "raise ValueError('E' * 30_000_000)"})).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.len() < 128 << 10, "the outcome is {} bytes", r.body.len());
    let o = r.json();
    assert_eq!(o["status"], "error");
    assert!(o["error"]["value"].as_str().unwrap().contains("truncated by airlock"), "{}", o["error"]["value"]);
    let id = o["id"].as_str().unwrap();
    let rec = h.get(&format!("/v1/executions/{id}")).await;
    assert!(rec.body.len() < 160 << 10, "the audit record is {} bytes", rec.body.len());
    assert_eq!(rec.json()["error"]["name"], "ValueError");
    let page = h.get("/v1/executions").await;
    assert!(page.body.len() < 160 << 10, "the audit listing is {} bytes", page.body.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_display_flood_is_cut_at_the_default_result_limit() {
    // The review's reproduction: output_bytes alone never bounded results.
    let h = harness(settings());
    let code = "for i in range(40):\n    display('A' * 1_000_000)";
    let r = h.post("/v1/execute", json!({"code": code, "limits": {"output_bytes": 1024}})).await;
    assert_eq!(r.status, StatusCode::OK);
    let cap = 16 << 20; // the default limits.result_bytes
    assert!(r.body.len() < cap + (1 << 20), "the outcome is {} bytes", r.body.len());
    let o = r.json();
    assert_eq!(o["status"], "output_limit", "{}", o["reason"]);
    assert_eq!(o["results_truncated"], true);
}
