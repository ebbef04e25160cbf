//! `airlock doctor`: which backends work here, why the others do not, and the fix.

use std::time::Instant;

use airlock_core::{BackendKind, ExecRequest, Limits, Probe, run_once};
use airlock_service::{Config, Registry};
use serde::Serialize;

/// Arguments of `airlock doctor`.
#[derive(clap::Args, Debug)]
pub struct DoctorArgs {
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Only inspect the host; do not start a test sandbox on each backend.
    #[arg(long)]
    no_smoke: bool,
    /// The server's settings file whose templates to check (default:
    /// DATA_DIR/server.toml if it exists, else the built-in `default` template).
    #[arg(long, value_name = "FILE")]
    config: Option<std::path::PathBuf>,
}

/// A template's line in the report: it was prepared once, cold (create + pre-import).
#[derive(Debug, Serialize)]
struct TemplateCheck {
    name: String,
    ok: bool,
    ms: u64,
    /// The modules imported, or why preparing failed.
    detail: String,
    /// The template's zygote (jail): its start and one fork, or why it fails.
    #[serde(skip_serializing_if = "Option::is_none")]
    zygote: Option<String>,
}

fn check_templates(registry: &Registry, config: Option<&std::path::Path>) -> anyhow::Result<Vec<TemplateCheck>> {
    let file = match config {
        Some(f) => Some(f.to_path_buf()),
        None => Some(registry.config().data_dir.join("server.toml")).filter(|p| p.exists()),
    };
    let settings = match &file {
        Some(f) => airlock_service::ServerSettings::from_file(f)?,
        None => airlock_service::ServerSettings::default(),
    };
    let mut out = Vec::new();
    for t in settings.templates()? {
        let started = Instant::now();
        let r = airlock_service::pool::check_template(registry, &t);
        let ms = started.elapsed().as_millis() as u64;
        let zygote = airlock_service::pool::check_zygote(registry, &t).map(|z| match z {
            Ok(s) => s,
            Err(e) => format!("FAILED: {e} (the pool makes this template's sandboxes cold instead)"),
        });
        out.push(match r {
            Ok(imported) => TemplateCheck {
                name: t.name,
                ok: true,
                ms,
                detail: if imported.is_empty() {
                    "no modules".into()
                } else {
                    format!("imports {}", imported.join(", "))
                },
                zygote,
            },
            Err(e) => TemplateCheck { name: t.name, ok: false, ms, detail: e, zygote },
        });
    }
    Ok(out)
}

/// One backend's line in the report.
#[derive(Debug, Serialize)]
struct Report {
    #[serde(flatten)]
    probe: Probe,
    /// Result of a real test run, when one was made.
    #[serde(skip_serializing_if = "Option::is_none")]
    smoke: Option<Smoke>,
}

#[derive(Debug, Serialize)]
struct Smoke {
    ok: bool,
    ms: u64,
    detail: String,
}

fn smoke(registry: &Registry, kind: BackendKind) -> Smoke {
    let t = Instant::now();
    let mut req = ExecRequest::python("import sys\nprint(sys.version.split()[0])\n6 * 7");
    req.limits = Limits { timeout_ms: 60_000, ..Limits::default() };
    let res = registry.resolve(Some(kind)).and_then(|b| run_once(b.as_ref(), &req, None, &mut |_| {}));
    let ms = t.elapsed().as_millis() as u64;
    match res {
        Ok(o) if o.text() == Some("42") => Smoke { ok: true, ms, detail: format!("ran Python {}", o.stdout.trim()) },
        Ok(o) => Smoke {
            ok: false,
            ms,
            detail: format!(
                "test run ended with status {}: {}{}",
                o.status,
                o.reason.unwrap_or_default(),
                if o.stderr.is_empty() { String::new() } else { format!(" (stderr: {})", o.stderr.trim()) }
            ),
        },
        Err(e) => Smoke { ok: false, ms, detail: format!("test run failed: {e}") },
    }
}

/// Runs `airlock doctor`. Exit status 0 when at least one backend works.
pub fn main(a: DoctorArgs) -> anyhow::Result<i32> {
    let registry = Registry::new(Config::from_env());
    let mut reports = Vec::new();
    for probe in registry.probes() {
        let smoke = (probe.available && !a.no_smoke).then(|| smoke(&registry, probe.backend));
        reports.push(Report { probe, smoke });
    }
    let default = registry.resolve(None).ok().map(|b| b.kind());
    let templates = if a.no_smoke { Vec::new() } else { check_templates(&registry, a.config.as_deref())? };
    let any = reports.iter().any(|r| r.probe.available && r.smoke.as_ref().is_none_or(|s| s.ok));
    if a.json {
        let v = serde_json::json!({
            "backends": reports,
            "templates": templates,
            "default_backend": default,
            "data_dir": registry.config().data_dir,
            "python": registry.config().python,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(if any { 0 } else { 1 });
    }
    println!("airlock doctor — what works on this host\n");
    for r in &reports {
        let works = r.probe.available && r.smoke.as_ref().is_none_or(|s| s.ok);
        let mark = if works { "works" } else { "NOT AVAILABLE" };
        println!("{:<8} {:<14} {}", r.probe.backend, mark, r.probe.isolation.label());
        println!("         {}", r.probe.detail);
        if let Some(s) = &r.smoke {
            println!(
                "         test run: {} in {} ms{}",
                if s.ok { "ok" } else { "FAILED" },
                s.ms,
                if s.ok { format!(" ({})", s.detail) } else { format!(": {}", s.detail) }
            );
        }
        for (k, v) in &r.probe.checks {
            println!("         - {k}: {v}");
        }
        if !works && let Some(f) = &r.probe.fix {
            println!("         fix: {f}");
        }
        println!();
    }
    for t in &templates {
        println!("template {}: {} in {} ms: {}", t.name, if t.ok { "prepared" } else { "FAILED" }, t.ms, t.detail);
        if let Some(z) = &t.zygote {
            println!("template {}: {z}", t.name);
        }
    }
    match default {
        Some(k) => println!(
            "default backend: {k}{}",
            if k == BackendKind::Process { " (WARNING: no isolation; make a safer backend work)" } else { "" }
        ),
        None => println!("no backend works here"),
    }
    println!("data directory: {}", registry.config().data_dir.display());
    Ok(if any { 0 } else { 1 })
}
