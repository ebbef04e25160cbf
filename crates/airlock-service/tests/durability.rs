//! Durability: the service never tells a client more than its audit store holds, it
//! says what happened at shutdown and after a restart, and an idempotency key keeps a
//! retried request from running twice. On the `process` backend (it needs only
//! Python 3), with a store that fails on demand, and with SQLite on a full tmpfs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_core::{BackendKind, ExecRequest, Status};
use airlock_service::keys::Principal;
use airlock_service::service::{AuditState, Finished};
use airlock_service::store::fault::FaultyStore;
use airlock_service::store::sqlite::SqliteStore;
use airlock_service::store::{AuditStore, IdempotencyKey, RecordStatus, Store};
use airlock_service::{Config, Registry, ServerSettings, Service, ServiceErrorKind};

fn settings() -> ServerSettings {
    ServerSettings { default_backend: Some(BackendKind::Process), pool_size: 0, ..ServerSettings::default() }
}

fn service(store: Arc<dyn Store>) -> Arc<Service> {
    Service::new(settings(), Registry::new(Config::from_env()), store)
}

async fn run(svc: &Arc<Service>, code: &str) -> Finished {
    run_keyed(svc, code, None).await
}

async fn run_keyed(svc: &Arc<Service>, code: &str, key: Option<IdempotencyKey>) -> Finished {
    let p = svc.local_principal();
    match svc.prepare_execute(&p, ExecRequest::python(code)).await {
        Ok(pending) => pending.with_idempotency_key(key).start(None).finish().await,
        Err(e) => Finished { result: Err(e), execution_id: None, audit: AuditState::Recorded, replayed: false },
    }
}

fn all_records(store: &dyn AuditStore) -> usize {
    let q = airlock_service::store::ExecutionQuery { limit: 1000, ..Default::default() };
    store.executions(&q).unwrap().executions.len()
}

fn record_status(store: &dyn AuditStore, id: &str) -> Option<RecordStatus> {
    store.execution(id, None).unwrap().map(|r| r.status)
}

async fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_end_the_store_refuses_is_reported_pending_and_written_when_it_recovers() {
    let store = Arc::new(FaultyStore::new(SqliteStore::in_memory().unwrap()));
    let svc = service(store.clone());
    assert_eq!(svc.health().status, "ok");

    // The disk fills while the run is in progress: its start is recorded, its end is not.
    store.refuse_ends(true);
    let f = run(&svc, "print(42)").await;
    let o = f.result.expect("the run itself went fine");
    assert_eq!((o.status, o.stdout.as_str()), (Status::Ok, "42\n"));
    assert_eq!(f.audit, AuditState::Pending, "the client was not told that the end is unrecorded");
    assert!(o.warnings.iter().any(|w| w.contains("audit: pending")), "{:?}", o.warnings);
    let id = f.execution_id.expect("its start is recorded, so the id is shown");
    assert_eq!(record_status(store.as_ref(), &id), Some(RecordStatus::Running), "the store holds only the start");

    let h = svc.health();
    assert_eq!(h.status, "degraded");
    assert_eq!(h.audit_pending, 1);
    assert!(h.reason.as_deref().unwrap_or("").contains("audit log"), "{h:?}");
    assert!(svc.metrics_text().contains("airlock_audit_pending 1"));

    // Nothing new runs while the store refuses writes; nothing is recorded for it.
    let refused = run(&svc, "print('must not run')").await;
    let e = refused.result.unwrap_err();
    assert_eq!(e.kind, ServiceErrorKind::AuditUnavailable, "{e}");
    assert!(e.retry_after_s.is_some());
    assert!(refused.execution_id.is_none());
    assert_eq!(all_records(svc.store().as_ref()), 1);

    // Space returns: the pending end is written and new runs are accepted.
    store.refuse_ends(false);
    assert_eq!(svc.flush_audit().await, 0);
    let rec = svc.store().execution(&id, None).unwrap().unwrap();
    assert_eq!((rec.status, rec.stdout.as_str()), (RecordStatus::Ok, "42\n"));
    assert_eq!(svc.health().status, "ok");
    let again = run(&svc, "print(1)").await;
    assert_eq!(again.audit, AuditState::Recorded);
    assert_eq!(record_status(store.as_ref(), &again.execution_id.unwrap()), Some(RecordStatus::Ok));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_the_store_cannot_record_does_not_run_and_carries_no_id() {
    let store = Arc::new(FaultyStore::new(SqliteStore::in_memory().unwrap()));
    let svc = service(store.clone());
    svc.start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let code = format!("open({:?}, 'w').write('x')", marker.display().to_string());

    store.refuse_writes(true);
    let f = run(&svc, &code).await;
    let e = f.result.unwrap_err();
    assert_eq!(e.kind, ServiceErrorKind::AuditUnavailable, "{e}");
    assert!(e.message.contains("nothing was run"), "{}", e.message);
    assert!(f.execution_id.is_none(), "an id that GET /v1/executions/{{id}} cannot find was shown");
    assert!(!marker.exists(), "the code ran although it could not be recorded");
    assert_eq!(svc.health().status, "degraded");

    // The background task notices that the store takes writes again.
    store.refuse_writes(false);
    wait_until("the service leaves the degraded state", Duration::from_secs(10), || svc.health().status == "ok").await;
    let f = run(&svc, &code).await;
    assert_eq!(f.result.unwrap().status, Status::Ok);
    assert!(marker.exists());
    svc.shutdown(Duration::from_secs(5)).await;
}

/// A tmpfs of `size` mounted on a fresh directory, unmounted when dropped.
struct Tmpfs {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Tmpfs {
    fn mount(size: &str) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let path = dir.path().join("mnt");
        std::fs::create_dir(&path).map_err(|e| e.to_string())?;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "airlock-test"])
            .arg(&path)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!("mounting a tmpfs failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        Ok(Tmpfs { _dir: dir, path })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Fills the file system under `dir` to the last byte; returns the filler's path.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let p = dir.join("filler");
    let mut f = std::fs::File::create(&p).unwrap();
    let chunk = vec![0u8; 4096];
    loop {
        match f.write(&chunk) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    while f.write(&[0u8]).is_ok_and(|n| n > 0) {}
    let _ = f.sync_all();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_never_gets_a_client_told_more_than_the_store_holds() {
    let fs = match Tmpfs::mount("2m") {
        Ok(fs) => fs,
        Err(why) => return eprintln!("skipped: {why} (needs root or CAP_SYS_ADMIN)"),
    };
    let store = Arc::new(SqliteStore::open(&fs.path).unwrap());
    let svc = service(store.clone());
    assert_eq!(run(&svc, "print('before')").await.audit, AuditState::Recorded);

    // The disk fills while a run is in progress, then new runs come.
    let svc2 = svc.clone();
    let during = tokio::spawn(async move { run(&svc2, "import time; time.sleep(1); print('y' * 60000)").await });
    let q =
        airlock_service::store::ExecutionQuery { status: Some(RecordStatus::Running), limit: 10, ..Default::default() };
    wait_until("the run is recorded", Duration::from_secs(30), || store.executions(&q).unwrap().executions.len() == 1)
        .await;
    let filler = fill(&fs.path);
    let mut answers = vec![during.await.unwrap()];
    for _ in 0..40 {
        answers.push(run(&svc, "print('y' * 60000)").await);
        if answers.last().unwrap().result.is_err() {
            break;
        }
    }

    // Each answer must match what the store holds.
    let mut pending = Vec::new();
    let mut refused = 0;
    for f in answers {
        match (&f.result, f.audit, &f.execution_id) {
            (Ok(o), AuditState::Recorded, Some(id)) => {
                assert_eq!(o.status, Status::Ok);
                assert_eq!(record_status(store.as_ref(), id), Some(RecordStatus::Ok), "told recorded, but it is not");
            }
            (Ok(_), AuditState::Pending, Some(id)) => {
                assert_eq!(record_status(store.as_ref(), id), Some(RecordStatus::Running));
                pending.push(id.clone());
            }
            (Err(e), _, None) if e.kind == ServiceErrorKind::AuditUnavailable => refused += 1,
            other => panic!("an answer that does not match the store: {other:?}"),
        }
    }
    eprintln!("full disk: {} run(s) answered pending, {refused} refused", pending.len());
    assert!(refused > 0 || !pending.is_empty(), "a full disk never failed a write");
    assert_eq!(svc.health().status, "degraded");

    // Space returns: everything pending is written, and the server takes work again.
    std::fs::remove_file(filler).unwrap();
    assert_eq!(svc.flush_audit().await, 0);
    for id in &pending {
        assert_eq!(record_status(store.as_ref(), id), Some(RecordStatus::Ok), "{id} was not written");
    }
    assert_eq!(svc.health().status, "ok");
    assert_eq!(run(&svc, "print('after')").await.audit, AuditState::Recorded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_stopped_at_the_drain_deadline_says_the_server_was_shutting_down() {
    let store = Arc::new(SqliteStore::in_memory().unwrap());
    let svc = service(store.clone());
    let p = svc.local_principal();
    let pending = svc.prepare_execute(&p, ExecRequest::python("import time; time.sleep(60)")).await.unwrap();
    let id = pending.execution_id().to_string();
    let run = tokio::spawn(pending.run(None));
    wait_until("the run is recorded", Duration::from_secs(30), || {
        record_status(store.as_ref(), &id) == Some(RecordStatus::Running)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    svc.shutdown(Duration::from_millis(200)).await;
    let o = run.await.unwrap().unwrap();
    assert_eq!(o.status, Status::Killed);
    let reason = o.reason.unwrap_or_default();
    assert!(reason.contains("shutting down") && reason.contains("200 ms"), "{reason}");
    let rec = store.execution(&id, None).unwrap().unwrap();
    assert!(rec.reason.unwrap_or_default().contains("shutting down"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_from_before_a_restart_are_gone_for_their_owner_and_unknown_to_others() {
    let dir = tempfile::tempdir().unwrap();
    let owner = Principal::local(16);
    let other = Principal { key_id: Some("key_other".into()), max_sandboxes: 16 };

    // A graceful shutdown.
    let first = service(Arc::new(SqliteStore::open(dir.path()).unwrap()));
    first.start().await.unwrap();
    let shut = first.create_sandbox(&owner, Default::default()).await.unwrap().id;
    let deleted = first.create_sandbox(&owner, Default::default()).await.unwrap().id;
    first.delete_sandbox(&owner, &deleted).await.unwrap();
    first.shutdown(Duration::from_secs(5)).await;
    drop(first);

    // A crash: the service goes away without shutting down (its store is dropped
    // with the session still open, as after a kill).
    let second = service(Arc::new(SqliteStore::open(dir.path()).unwrap()));
    second.start().await.unwrap();
    let crashed = second.create_sandbox(&owner, Default::default()).await.unwrap().id;
    drop(second);

    let third = service(Arc::new(SqliteStore::open(dir.path()).unwrap()));
    third.start().await.unwrap();
    for (id, says) in [(&shut, "shut down"), (&crashed, "crash")] {
        let e = third.sandbox(&owner, id).await.unwrap_err();
        assert_eq!(e.kind, ServiceErrorKind::SandboxGone, "{id}: {e}");
        assert!(e.message.contains("the server restarted") && e.message.contains(says), "{e}");
        let e = third.execute_cell(&owner, id, airlock_core::CellRequest::python("1")).await.unwrap_err();
        assert_eq!(e.kind, ServiceErrorKind::SandboxGone, "{e}");
        // Another key learns nothing: the same 404 as an id that never existed.
        let e = third.sandbox(&other, id).await.unwrap_err();
        assert_eq!(e.kind, ServiceErrorKind::NotFound, "{e}");
    }
    let e = third.sandbox(&owner, &deleted).await.unwrap_err();
    assert_eq!(e.kind, ServiceErrorKind::NotFound, "a deleted sandbox is not 'gone by restart': {e}");
    let never = "sbx_0000000000000000000000000000beef";
    assert_eq!(third.sandbox(&owner, never).await.unwrap_err().kind, ServiceErrorKind::NotFound);
    third.shutdown(Duration::from_secs(5)).await;
}

fn key(svc: &Service, k: &str, body: &serde_json::Value) -> Option<IdempotencyKey> {
    svc.idempotency_key(&svc.local_principal(), Some(k.as_bytes()), "execute", body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_runs_a_request_once() {
    let store = Arc::new(SqliteStore::in_memory().unwrap());
    let svc = service(store.clone());
    let dir = tempfile::tempdir().unwrap();
    let counter = dir.path().join("count");
    let code = format!(
        "import time\nwith open({:?}, 'a') as f: f.write('x')\ntime.sleep(1)\nprint('done')",
        counter.display().to_string()
    );
    let body = serde_json::json!({ "code": code });
    let k = key(&svc, "retry-1", &body);

    // Two copies race: one runs, the other learns it is running.
    let (a, b) = tokio::join!(run_keyed(&svc, &code, k.clone()), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        run_keyed(&svc, &code, k.clone()).await
    });
    let first = a.result.unwrap();
    assert_eq!(first.stdout, "done\n");
    let e = b.result.unwrap_err();
    assert_eq!(e.kind, ServiceErrorKind::IdempotencyInProgress, "{e}");
    assert_eq!(b.execution_id.as_deref(), Some(first.id.as_str()));

    // A retry after the end gets the same answer and runs nothing.
    let c = run_keyed(&svc, &code, k.clone()).await;
    assert!(c.replayed);
    assert_eq!(c.result.unwrap(), first);
    assert_eq!(std::fs::read_to_string(&counter).unwrap(), "x", "the request ran more than once");
    assert_eq!(all_records(store.as_ref()), 1);

    // The same key with another request is refused; another key runs.
    let other = serde_json::json!({ "code": "print(2)" });
    let e = run_keyed(&svc, "print(2)", key(&svc, "retry-1", &other)).await.result.unwrap_err();
    assert_eq!(e.kind, ServiceErrorKind::IdempotencyMismatch, "{e}");
    assert_eq!(run_keyed(&svc, "print(2)", key(&svc, "retry-2", &other)).await.result.unwrap().stdout, "2\n");

    // The fingerprint does not depend on the order of keys in the body.
    let p = svc.local_principal();
    let x = serde_json::json!({"code": "1", "limits": {"timeout_ms": 5, "cpu_ms": 6}});
    let y: serde_json::Value =
        serde_json::from_str(r#"{"limits": {"cpu_ms": 6, "timeout_ms": 5}, "code": "1"}"#).unwrap();
    assert_eq!(
        svc.idempotency_key(&p, Some(b"k"), "execute", &x).unwrap(),
        svc.idempotency_key(&p, Some(b"k"), "execute", &y).unwrap()
    );
    assert_ne!(
        svc.idempotency_key(&p, Some(b"k"), "execute", &x).unwrap(),
        svc.idempotency_key(&p, Some(b"k"), "sandboxes", &x).unwrap()
    );
    for bad in [&b""[..], b"has space", &[b'a'; 256][..], "é".as_bytes()] {
        let e = svc.idempotency_key(&p, Some(bad), "execute", &x).unwrap_err();
        assert!(e.message.contains("Idempotency-Key"), "{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_prunes_in_the_background_and_keeps_running_records() {
    let store = Arc::new(SqliteStore::in_memory().unwrap());
    let s = ServerSettings { audit_retention_days: 1, ..settings() };
    let old = airlock_service::store::ExecutionStart {
        id: "exe_old".into(),
        kind: airlock_service::store::ExecutionKind::Oneshot,
        key_id: None,
        sandbox_id: None,
        backend: None,
        language: airlock_core::Language::Python,
        code: "1".into(),
        code_bytes: 1,
        created_at_ms: airlock_service::store::now_ms() - 3 * 86_400_000,
    };
    store.begin(&old).unwrap();
    store.begin(&airlock_service::store::ExecutionStart { id: "exe_old_running".into(), ..old.clone() }).unwrap();
    store
        .end(
            "exe_old",
            &airlock_service::store::ExecutionEnd {
                status: RecordStatus::Ok,
                reason: None,
                backend: None,
                exit_code: None,
                stdout: String::new(),
                stderr: String::new(),
                output_truncated: false,
                error: None,
                usage: None,
                finished_at_ms: old.created_at_ms,
                response: None,
            },
        )
        .unwrap();
    let svc = Service::new(s, Registry::new(Config::from_env()), store.clone());
    svc.start().await.unwrap();
    wait_until("the old record is pruned", Duration::from_secs(10), || {
        record_status(store.as_ref(), "exe_old").is_none()
    })
    .await;
    assert_eq!(record_status(store.as_ref(), "exe_old_running"), Some(RecordStatus::Running));
    svc.shutdown(Duration::from_secs(5)).await;
}
