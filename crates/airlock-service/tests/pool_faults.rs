//! A pooled sandbox that dies is discarded and replaced. In a test binary of its
//! own: it kills every child process of this process, which must be the pool's.

use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_core::{BackendKind, ExecRequest};
use airlock_service::settings::TemplateSettings;
use airlock_service::store::sqlite::SqliteStore;
use airlock_service::{Config, Registry, ServerSettings, Service};

/// Pids whose parent is this process.
fn children() -> Vec<i32> {
    let me = std::process::id().to_string();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let Some((_, rest)) = stat.rsplit_once(')') else { continue };
        if rest.split_whitespace().nth(1) == Some(me.as_str()) {
            out.push(pid);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_pooled_sandbox_is_discarded_and_replaced() {
    let settings = ServerSettings {
        default_backend: Some(BackendKind::Process),
        pool_size: 0,
        templates: vec![TemplateSettings {
            name: "light".into(),
            backend: None,
            modules: vec!["decimal".into()],
            limits: Default::default(),
            pool_size: Some(2),
        }],
        ..ServerSettings::default()
    };
    let svc = Service::new(settings, Registry::new(Config::from_env()), Arc::new(SqliteStore::in_memory().unwrap()));
    svc.start().await.unwrap();
    let pool = svc.registry().pool().unwrap().clone();
    let p2 = pool.clone();
    assert!(tokio::task::spawn_blocking(move || p2.wait_filled(Duration::from_secs(60))).await.unwrap());
    let victims = children();
    assert!(!victims.is_empty(), "the pooled sandboxes are child processes of this test");
    for pid in &victims {
        // SAFETY: kill(2) with plain integers; the pids are this process's own
        // children (the pool's interpreters), not yet reaped.
        unsafe {
            libc::kill(*pid, libc::SIGKILL);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let t = pool.info().into_iter().find(|t| t.name == "light").unwrap();
        if t.discarded >= 2 && t.ready == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "not discarded and refilled within 60 s: {t:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut r = ExecRequest::python("import sys; print('decimal' in sys.modules)");
    r.template = Some("light".into());
    let o = svc.execute(&svc.local_principal(), r).await.unwrap();
    assert_eq!(o.stdout, "True\n", "served by a live replacement: {o:?}");
    svc.shutdown(Duration::from_secs(5)).await;
}
