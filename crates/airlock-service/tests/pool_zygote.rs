//! Templates on `jail` get a zygote: the pool is filled by forks of it, an empty pool
//! forks on demand instead of creating cold, and a zygote that dies is restarted.
//! Prints "skipped: <reason>" where the jail backend does not work.

use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_core::{BackendKind, ExecRequest, Status};
use airlock_service::pool::TemplateInfo;
use airlock_service::settings::TemplateSettings;
use airlock_service::store::sqlite::SqliteStore;
use airlock_service::{Config, Registry, ServerSettings, Service};

async fn service(pool_size: usize) -> Option<Arc<Service>> {
    let registry = Registry::new(Config::from_env());
    if let Err(e) = registry.resolve(Some(BackendKind::Jail)) {
        eprintln!("skipped: {e}");
        return None;
    }
    let settings = ServerSettings {
        default_backend: Some(BackendKind::Jail),
        pool_size: 0,
        templates: vec![TemplateSettings {
            name: "z".into(),
            backend: Some(BackendKind::Jail),
            modules: vec!["decimal".into(), "json".into()],
            limits: Default::default(),
            pool_size: Some(pool_size),
        }],
        ..ServerSettings::default()
    };
    settings.validate().unwrap();
    let svc = Service::new(settings, registry, Arc::new(SqliteStore::in_memory().unwrap()));
    svc.start().await.unwrap();
    let pool = svc.registry().pool().expect("the pool is started").clone();
    let ok = tokio::task::spawn_blocking(move || pool.wait_filled(Duration::from_secs(60))).await.unwrap();
    assert!(ok, "the pool did not fill: {:?}", svc.templates());
    Some(svc)
}

fn info(svc: &Service) -> TemplateInfo {
    svc.templates().into_iter().find(|t| t.name == "z").expect("template z")
}

fn zygote_pid(t: &TemplateInfo) -> i32 {
    let z = t.zygote.as_deref().unwrap_or_else(|| panic!("no zygote: {t:?}"));
    z.strip_prefix("zygote pid ")
        .and_then(|r| r.split(',').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("not a running zygote: {z}"))
}

fn req(code: &str) -> ExecRequest {
    let mut r = ExecRequest::python(code);
    r.template = Some("z".into());
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_pool_forks_from_the_zygote() {
    let Some(svc) = service(1).await else { return };
    let t = info(&svc);
    zygote_pid(&t);
    assert_eq!(t.imported, vec!["decimal".to_string(), "json".to_string()]);
    let p = svc.local_principal();
    // Six at once against a pool of one: the rest are forked, none created cold.
    let runs: Vec<_> = (0..6)
        .map(|i| {
            let svc = svc.clone();
            let p = p.clone();
            tokio::spawn(async move {
                let code =
                    format!("import sys, os\nprint('decimal' in sys.modules, os.getpid(), 'x' in globals())\nx = {i}");
                svc.execute(&p, req(&code)).await.unwrap()
            })
        })
        .collect();
    for r in runs {
        let o = r.await.unwrap();
        assert_eq!(o.status, Status::Ok, "{o:?}");
        assert_eq!(o.stdout, "True 1 False\n", "fresh, isolated, modules imported");
    }
    let t = info(&svc);
    assert_eq!(t.served_cold, 0, "{t:?}");
    assert!(t.served_forked >= 1 && t.served_warm + t.served_forked == 6, "{t:?}");
    // A request with its own limits and environment is forked too (the pool's ready
    // sandboxes could not serve it).
    let mut r = req("import os\nprint(os.environ['GREETING'])");
    r.env.insert("GREETING".into(), "hi".into());
    r.limits.memory_bytes = 300 << 20;
    let o = svc.execute(&p, r).await.unwrap();
    assert_eq!(o.stdout, "hi\n", "{o:?}");
    assert_eq!(info(&svc).served_cold, 0);
    svc.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_zygote_is_restarted() {
    let Some(svc) = service(1).await else { return };
    let first = zygote_pid(&info(&svc));
    // SAFETY: kills the zygote, a child of this process.
    unsafe { libc::kill(first, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let t = info(&svc);
        if t.zygote_restarts >= 1 && t.zygote.as_deref().is_some_and(|z| z.starts_with("zygote pid ")) {
            assert_ne!(zygote_pid(&t), first);
            break;
        }
        assert!(Instant::now() < deadline, "the zygote was not restarted: {t:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let o = svc.execute(&svc.local_principal(), req("print('after')")).await.unwrap();
    assert_eq!(o.stdout, "after\n", "{o:?}");
    svc.shutdown(Duration::from_secs(5)).await;
}
