//! The server on a real socket, in-process (`airlock_server::serve` on
//! `127.0.0.1:0`), on the `process` backend: the connection cap and the deadlines
//! that keep slow or stalled clients from holding the server, file-transfer slots
//! under slow uploads and downloads, and draining on shutdown. Clients speak raw
//! HTTP/1.1 over TCP so that they can be exactly as slow as each test needs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_core::BackendKind;
use airlock_server::AppOptions;
use airlock_service::keys::create_key;
use airlock_service::store::sqlite::SqliteStore;
use airlock_service::{Config, Registry, ServerSettings, Service};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::timeout;

/// Every wait of these tests ends by this long.
const LIMIT: Duration = Duration::from_secs(20);

struct Server {
    addr: SocketAddr,
    svc: Arc<Service>,
    store: Arc<SqliteStore>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

fn settings() -> ServerSettings {
    ServerSettings { default_backend: Some(BackendKind::Process), pool_size: 0, ..ServerSettings::default() }
}

async fn start(s: ServerSettings) -> Server {
    let store = Arc::new(SqliteStore::in_memory().unwrap());
    let svc = Service::new(s, Registry::new(Config::from_env()), store.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(airlock_server::serve(svc.clone(), listener, AppOptions::default(), async move {
        let _ = stopped.await;
    }));
    Server { addr, svc, store, stop: Some(stop), task: Some(task) }
}

impl Server {
    /// Starts the drain, as SIGTERM does.
    fn shut_down(&mut self) {
        let _ = self.stop.take().unwrap().send(());
    }

    async fn finished(&mut self) {
        let t = self.task.take().unwrap();
        timeout(Duration::from_secs(60), t).await.expect("the server did not stop").unwrap().unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// A parsed response.
#[derive(Debug)]
struct Resp {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    fn code(&self) -> String {
        self.json()["error"]["code"].as_str().unwrap_or("").to_string()
    }
}

/// Reads one response with a `Content-Length` body, leaving the connection open.
async fn read_response(s: &mut (impl AsyncRead + Unpin)) -> Resp {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = timeout(LIMIT, s.read(&mut chunk)).await.expect("no response in time").expect("read failed");
        assert!(n > 0, "the connection closed before a response: {}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).expect("a status line");
    let mut r = Resp { status, head, body: Vec::new() };
    let len: usize = r.header("content-length").map(|v| v.parse().unwrap()).unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        let n = timeout(LIMIT, s.read(&mut chunk)).await.expect("no body in time").expect("read failed");
        assert!(n > 0, "the connection closed mid-body");
        body.extend_from_slice(&chunk[..n]);
    }
    r.body = body;
    r
}

/// Sends `raw` on a new connection and reads the whole answer (the request should
/// say `Connection: close`); chunked bodies are left as they came.
async fn exchange(addr: SocketAddr, raw: impl AsRef<[u8]>) -> (Resp, Duration) {
    let started = Instant::now();
    let mut s = timeout(LIMIT, TcpStream::connect(addr)).await.expect("connect in time").expect("connect");
    s.write_all(raw.as_ref()).await.unwrap();
    let mut all = Vec::new();
    timeout(LIMIT, s.read_to_end(&mut all)).await.expect("the response did not end in time").unwrap();
    let head_end = all.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head") + 4;
    let head = String::from_utf8_lossy(&all[..head_end]).to_string();
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap();
    (Resp { status, head, body: all[head_end..].to_vec() }, started.elapsed())
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").into_bytes()
}

fn post(path: &str, body: &Value, extra: &str) -> Vec<u8> {
    let body = body.to_string();
    format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Waits until the server closes `s` (EOF or reset), discarding what it sends.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> Result<Duration, String> {
    let started = Instant::now();
    let mut chunk = [0u8; 65536];
    loop {
        match timeout(limit.saturating_sub(started.elapsed()), s.read(&mut chunk)).await {
            Err(_) => return Err(format!("still open after {limit:?}")),
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(started.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

async fn sandbox(addr: SocketAddr, auth: &str) -> String {
    let (r, _) = exchange(addr, &post("/v1/sandboxes", &json!({}), auth)).await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    r.json()["id"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn half_sent_heads_are_closed_at_the_header_deadline_and_do_not_starve_others() {
    let cap = 4;
    let server =
        start(ServerSettings { max_connections: cap, header_timeout_ms: 600, keepalive_timeout_ms: 300, ..settings() })
            .await;
    // More half-sent heads than the cap: the headers never end.
    let mut slow = Vec::new();
    for _ in 0..10 {
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ").await.unwrap();
        slow.push(s);
    }
    // A well-behaved client behind them is served once slots free up: the held
    // connections go at the header deadline, and the backlog is served in order.
    let (r, took) = exchange(server.addr, &get("/healthz")).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(took < Duration::from_secs(8), "a well-behaved client waited {took:?}");
    eprintln!("a client behind 10 half-sent heads (cap {cap}, header deadline 600 ms) was served in {took:?}");
    for (i, s) in slow.iter_mut().enumerate() {
        let after = closed_within(s, Duration::from_secs(10)).await;
        assert!(after.is_ok(), "half-sent connection {i}: {}", after.unwrap_err());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idle_keep_alive_connection_is_closed() {
    let server = start(ServerSettings { header_timeout_ms: 5_000, keepalive_timeout_ms: 300, ..settings() }).await;
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    for _ in 0..2 {
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await.unwrap();
        let r = read_response(&mut s).await;
        assert_eq!(r.status, 200);
    }
    // Kept alive between requests; closed once idle for the keep-alive deadline,
    // well before the header deadline.
    let after = closed_within(&mut s, Duration::from_secs(4)).await.expect("an idle connection was kept open");
    assert!(after >= Duration::from_millis(200), "closed after {after:?}, before the keep-alive deadline");
    // A connection that never sends anything goes the same way.
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    closed_within(&mut s, Duration::from_secs(4)).await.expect("a silent connection was kept open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_trickling_body_is_cut_with_408_and_a_steady_one_is_not() {
    let server = start(ServerSettings {
        body_timeout_ms: 500,
        min_transfer_bytes_per_s: 200,
        per_key_file_transfers: 1,
        ..settings()
    })
    .await;
    let addr = server.addr;
    // 10 bytes a second against a minimum of 200: cut soon after the 500 ms grace.
    let trickle = |head: String| async move {
        let s = TcpStream::connect(addr).await.unwrap();
        let (mut rx, mut tx) = s.into_split();
        tx.write_all(head.as_bytes()).await.unwrap();
        let started = Instant::now();
        // A byte every 100 ms, for at most 10 s; the answer must come meanwhile.
        let writer = tokio::spawn(async move {
            for _ in 0..100 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if tx.write_all(b" ").await.is_err() {
                    break;
                }
            }
        });
        let r = timeout(LIMIT, read_response(&mut rx)).await.expect("no answer in time");
        writer.abort();
        (r, started.elapsed())
    };
    let (r, took) = trickle(
        "POST /v1/execute HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 5000\r\n\r\n{\"code\": \"1\""
            .into(),
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (408, "body_timeout"), "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("connection"), Some("close"));
    assert!(took < Duration::from_secs(5), "cut after {took:?}");

    // An upload that trickles is cut too, and gives its transfer share back.
    let id = sandbox(addr, "").await;
    let (r, _) = trickle(format!(
        "PUT /v1/sandboxes/{id}/files/slow.bin HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\nContent-Length: 100000\r\n\r\nabc"
    ))
    .await;
    assert_eq!((r.status, r.code().as_str()), (408, "body_timeout"), "{}", String::from_utf8_lossy(&r.body));
    let put = |name: &str, body: &[u8]| {
        let mut raw = format!(
            "PUT /v1/sandboxes/{id}/files/{name} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        raw.extend_from_slice(body);
        raw
    };
    let (r, _) = exchange(addr, &put("fast.bin", b"0123456789")).await;
    assert_eq!(r.status, 200, "the share of the cut upload was not given back: {}", String::from_utf8_lossy(&r.body));

    // A body sent steadily above the minimum rate takes longer than the grace and
    // is not cut: 2,000 bytes at about 1,000 bytes a second.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let code = format!("{{\"code\": \"6 * 7\"{}}}", " ".repeat(1983));
    assert_eq!(code.len(), 2000);
    s.write_all(
        format!(
            "POST /v1/execute HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            code.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    for part in code.as_bytes().chunks(100) {
        s.write_all(part).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = read_response(&mut s).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["status"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_uploads_hold_no_slot_that_another_key_needs() {
    let server = start(ServerSettings {
        max_file_transfers: 2,
        per_key_file_transfers: 2,
        queue_timeout_ms: 1_000,
        ..settings()
    })
    .await;
    server.svc.set_auth_required(true);
    let (a, _) = create_key(server.store.as_ref(), "a", None).unwrap();
    let (b, _) = create_key(server.store.as_ref(), "b", None).unwrap();
    let auth_a = format!("Authorization: Bearer {a}\r\n");
    let auth_b = format!("Authorization: Bearer {b}\r\n");
    let sa = sandbox(server.addr, &auth_a).await;
    let sb = sandbox(server.addr, &auth_b).await;
    let put_head = |id: &str, name: &str, auth: &str, len: usize| {
        format!(
            "PUT /v1/sandboxes/{id}/files/{name} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\nConnection: close\r\n{auth}\r\n"
        )
    };
    // Key a starts four uploads whose bodies stall after a few bytes (as many as
    // every slot of the server).
    let mut stalled = Vec::new();
    for i in 0..4 {
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        s.write_all(put_head(&sa, &format!("stall{i}"), &auth_a, 1_000_000).as_bytes()).await.unwrap();
        s.write_all(b"first bytes").await.unwrap();
        stalled.push(s);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Beyond its share, key a is told at once; its first two wait for their bodies.
    let mut refused = 0;
    for s in &mut stalled {
        if let Ok(r) = timeout(Duration::from_millis(300), read_response(s)).await {
            assert_eq!((r.status, r.code().as_str()), (429, "overloaded"), "{}", String::from_utf8_lossy(&r.body));
            refused += 1;
        }
    }
    assert_eq!(refused, 2, "key a's uploads beyond its share of 2");
    // Key b uploads and downloads at once.
    let started = Instant::now();
    let mut raw = put_head(&sb, "b.txt", &auth_b, 5).into_bytes();
    raw.extend_from_slice(b"hello");
    let (r, _) = exchange(server.addr, &raw).await;
    assert_eq!(r.status, 200, "key b's upload: {}", String::from_utf8_lossy(&r.body));
    let (r, _) = exchange(
        server.addr,
        format!("GET /v1/sandboxes/{sb}/files/b.txt HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{auth_b}\r\n")
            .as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200, "key b's download: {}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.body, b"hello");
    assert!(started.elapsed() < Duration::from_millis(900), "key b waited {:?} for a slot", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_stops_reading_is_cut_and_frees_its_slot() {
    let server = start(ServerSettings {
        max_file_transfers: 1,
        per_key_file_transfers: 2,
        queue_timeout_ms: 5_000,
        send_timeout_ms: 500,
        ..settings()
    })
    .await;
    let addr = server.addr;
    let id = sandbox(addr, "").await;
    let (r, _) = exchange(
        addr,
        &post(
            &format!("/v1/sandboxes/{id}/execute"),
            &json!({"code": "open('big', 'wb').write(b'x' * (32 << 20))"}),
            "",
        ),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let download = format!("GET /v1/sandboxes/{id}/files/big HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    // A client with a small receive buffer that asks for 32 MiB and reads none of it.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut stalled = sock.connect(addr).await.unwrap();
    stalled.write_all(download.as_bytes()).await.unwrap();
    let asked = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Another download gets the slot once the stalled one is cut.
    let (r, took) = exchange(addr, &download).await;
    assert_eq!(r.status, 200, "after {took:?}: {}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.body.len(), 32 << 20);
    eprintln!("a second download took {took:?}, {:?} after the stalled one asked", asked.elapsed());
    // The stalled one was closed before its 32 MiB were sent.
    let mut got = 0usize;
    let mut chunk = vec![0u8; 1 << 20];
    loop {
        match timeout(LIMIT, stalled.read(&mut chunk)).await.expect("the stalled connection is still open") {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    assert!(got < 32 << 20, "the stalled client got the whole file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_long_quiet_stream_is_not_cut_by_the_deadlines() {
    let server = start(ServerSettings {
        header_timeout_ms: 400,
        keepalive_timeout_ms: 200,
        body_timeout_ms: 400,
        send_timeout_ms: 400,
        ..settings()
    })
    .await;
    let code = "import time\nprint('a', flush=True)\ntime.sleep(1.5)\nprint('b')\n'done'";
    for accept in ["application/x-ndjson", "text/event-stream"] {
        let (r, took) =
            exchange(server.addr, &post("/v1/execute", &json!({ "code": code }), &format!("Accept: {accept}\r\n")))
                .await;
        assert_eq!(r.status, 200);
        let text = String::from_utf8_lossy(&r.body);
        assert!(took >= Duration::from_millis(1400), "{took:?}");
        for want in
            ["\"type\":\"stdout\",\"text\":\"a\\n\"", "\"text\":\"b\\n\"", "\"type\":\"end\"", "\"status\":\"ok\""]
        {
            assert!(text.contains(want), "{accept}: {want} missing from {text}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn draining_answers_503_while_a_running_cell_finishes() {
    let mut server = start(ServerSettings { drain_timeout_ms: 20_000, ..settings() }).await;
    let addr = server.addr;
    let id = sandbox(addr, "").await;
    let cell = tokio::spawn(exchange(
        addr,
        post(&format!("/v1/sandboxes/{id}/execute"), &json!({"code": "import time; time.sleep(4); 'drained'"}), ""),
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.shut_down();

    // Still accepting: health says draining (as soon as the drain has begun), new
    // work is refused with Retry-After.
    let asked = Instant::now();
    let r = loop {
        let (r, _) = exchange(addr, &get("/healthz")).await;
        if r.status != 200 || asked.elapsed() > Duration::from_secs(5) {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["status"], "draining");
    assert!(r.header("retry-after").is_some());
    for (path, body) in [("/v1/execute", json!({"code": "1"})), ("/v1/sandboxes", json!({}))] {
        let (r, _) = exchange(addr, &post(path, &body, "")).await;
        assert_eq!((r.status, r.code().as_str()), (503, "shutting_down"), "{path}");
        let retry: u64 = r.header("retry-after").expect("a Retry-After").parse().unwrap();
        assert!((1..=20).contains(&retry), "Retry-After: {retry}");
    }
    // The running cell finishes and is answered.
    let (r, _) = timeout(LIMIT, cell).await.unwrap().unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(String::from_utf8_lossy(&r.body).contains("'drained'"), "{}", String::from_utf8_lossy(&r.body));
    // Then the drain ends and the listener closes.
    server.finished().await;
    assert!(TcpStream::connect(addr).await.is_err(), "still accepting after the drain");
    assert_eq!(server.svc.live_sessions(), 0);
}
