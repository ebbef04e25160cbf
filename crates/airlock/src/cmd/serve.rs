//! `airlock serve`: the HTTP API, MCP over streamable HTTP at `/mcp`, sessions, and
//! the audit log, with an embedded store so it works with no setup.

use std::path::PathBuf;
use std::sync::Arc;

use airlock_core::BackendKind;
use airlock_server::mcp::ReturnMode;
use airlock_service::settings::AuthMode;
use airlock_service::store::sqlite::SqliteStore;
use airlock_service::{Config, Registry, ServerSettings, Service};
use anyhow::Context;

/// Arguments of `airlock serve`.
#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on. API keys are required on any non-loopback address.
    /// Default 127.0.0.1:8080.
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    #[command(flatten)]
    common: ServiceArgs,
    /// API keys: `auto` (required beyond loopback) or `required` (always).
    #[arg(long, value_parser = ["auto", "required"])]
    auth: Option<String>,
    /// How `run_python_code` results on /mcp are rendered: xml (as mcp-run-python) or json.
    #[arg(long = "mcp-return-mode", default_value = "xml", value_parser = parse_mode)]
    mcp_return_mode: ReturnMode,
}

/// Options shared by `airlock serve` and `airlock mcp`.
#[derive(clap::Args, Debug)]
pub struct ServiceArgs {
    /// Where the audit log and API keys live (default: $AIRLOCK_DATA_DIR, else
    /// ~/.local/share/airlock).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// A settings file (TOML; see docs/api.md). Default: DATA_DIR/server.toml if it exists.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Backend of requests that name none (default: the safest that works here).
    #[arg(short = 'b', long, env = "AIRLOCK_BACKEND", value_parser = super::backend_arg)]
    pub backend: Option<BackendKind>,
    /// The backends this server serves, comma-separated (default: every isolating
    /// backend that works here). `process` runs code with NO isolation and is served
    /// only when named here or with --backend.
    #[arg(long, value_delimiter = ',', value_parser = super::backend_arg, value_name = "LIST")]
    pub backends: Vec<BackendKind>,
    /// Let requests ask for `network: "host"` (jail only): code then reaches the host's
    /// network and every service on loopback. API keys become required on every request.
    #[arg(long)]
    pub allow_host_network: bool,
    /// Backend operations (executions, sandbox creations) running at once.
    #[arg(long)]
    pub max_running: Option<usize>,
    /// Live sessions on the whole server.
    #[arg(long)]
    pub max_sandboxes: Option<usize>,
    /// How long a request waits for a free slot before it gets 429 (1, 500ms, ...).
    #[arg(long, value_parser = super::duration_arg, value_name = "DURATION")]
    pub queue_timeout: Option<u64>,
    /// Ready sandboxes the warm pool keeps per template (0: no pool; a template's own
    /// `pool_size` in the settings file still wins). See docs/faststart.md.
    #[arg(long)]
    pub pool_size: Option<usize>,
    /// The Python interpreter for native backends (default: $AIRLOCK_PYTHON, /usr/bin/python3).
    #[arg(long, env = "AIRLOCK_PYTHON")]
    pub python: Option<PathBuf>,
}

fn parse_mode(s: &str) -> Result<ReturnMode, String> {
    s.parse()
}

/// Settings from the file and the command line (the command line wins).
pub fn settings(a: &ServiceArgs) -> anyhow::Result<ServerSettings> {
    let dir = a.data_dir.clone();
    let file = match &a.config {
        Some(f) => Some(f.clone()),
        None => {
            let d = dir.clone().unwrap_or_else(airlock_service::default_data_dir).join("server.toml");
            d.exists().then_some(d)
        }
    };
    let mut s = match &file {
        Some(f) => ServerSettings::from_file(f)?,
        None => ServerSettings::default(),
    };
    if dir.is_some() {
        s.data_dir = dir;
    }
    if let Some(b) = a.backend {
        s.default_backend = Some(b);
    }
    if !a.backends.is_empty() {
        s.backends = a.backends.clone();
    }
    if a.allow_host_network {
        s.allow_host_network = true;
    }
    if let Some(n) = a.max_running {
        s.max_running = n;
    }
    if let Some(n) = a.max_sandboxes {
        s.max_sandboxes = n;
    }
    if let Some(t) = a.queue_timeout {
        s.queue_timeout_ms = t;
    }
    if let Some(n) = a.pool_size {
        s.pool_size = n;
    }
    s.validate()?;
    Ok(s)
}

/// The service over the data directory's store, started: stale sandboxes of dead
/// servers removed, their unfinished executions marked lost.
pub async fn start_service(a: &ServiceArgs, s: ServerSettings) -> anyhow::Result<Arc<Service>> {
    let _ = raise_open_file_limit();
    let data_dir = s.data_dir();
    let mut config = Config::from_env();
    config.data_dir = data_dir.clone();
    config.max_limits = s.max_limits;
    if let Some(p) = &a.python {
        config.python = p.clone();
    }
    let store =
        SqliteStore::open(&data_dir).with_context(|| format!("opening the audit store in {}", data_dir.display()))?;
    let service = Service::new(s, Registry::new(config), Arc::new(store));
    let recovered = service.start().await.map_err(|e| anyhow::anyhow!("{}", e.message))?;
    for line in recovered {
        eprintln!("airlock: recovered: {line}");
    }
    for w in service.warnings() {
        eprintln!("airlock: {w}");
    }
    Ok(service)
}

/// Raises this process's soft limit on open files to its hard limit: each live
/// sandbox holds several descriptors (its channel, output pipes, pidfd, workspace and
/// cgroup), so a server with many sessions needs more than the usual 1,024. Sandboxes
/// set their own limit (`limits.open_files`), so they do not inherit this one.
/// Returns the soft limit in force afterwards, if it can be read.
fn raise_open_file_limit() -> Option<u64> {
    // SAFETY: getrlimit/setrlimit read and write only the local struct.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return None;
        }
        if r.rlim_cur < r.rlim_max {
            let mut raised = r;
            raised.rlim_cur = r.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                r = raised;
            }
        }
        Some(r.rlim_cur as u64)
    }
}

/// Keeps `max_connections` within half the open-file limit, so that connections
/// cannot take the descriptors sandboxes, the store and the listener need: lowered
/// (and said so) when the limit is smaller than the setting assumes.
fn fit_connections(s: &mut ServerSettings, open_files: Option<u64>) {
    let Some(limit) = open_files else { return };
    let budget = (limit / 2).max(16) as usize;
    if s.max_connections > budget {
        eprintln!(
            "airlock serve: max_connections lowered from {} to {budget}: the open-file limit is {limit} (raise it, e.g. `ulimit -n`, or LimitNOFILE= in a systemd unit, to serve more)",
            s.max_connections
        );
        s.max_connections = budget;
    }
}

/// Runs `airlock serve`.
pub fn main(a: ServeArgs) -> anyhow::Result<i32> {
    let mut s = settings(&a.common)?;
    if let Some(l) = &a.listen {
        s.listen = l.clone();
    }
    if let Some(m) = &a.auth {
        s.auth = if m == "required" { AuthMode::Required } else { AuthMode::Auto };
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    rt.block_on(run(a, s))?;
    Ok(0)
}

async fn run(a: ServeArgs, mut s: ServerSettings) -> anyhow::Result<()> {
    fit_connections(&mut s, raise_open_file_limit());
    let listen = s.listen.clone();
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("cannot listen on '{listen}' (use --listen HOST:PORT)"))?;
    let addr = listener.local_addr()?;
    let service = start_service(&a.common, s).await?;
    service.set_auth_required(!addr.ip().is_loopback());
    let keys = service.store().keys().map(|k| k.iter().filter(|k| k.revoked_at.is_none()).count()).unwrap_or(0);
    let auth = if service.auth_required() { "required" } else { "optional (loopback)" };
    eprintln!(
        "airlock serve: listening on http://{addr} (API keys: {auth}; data: {}; backends: {}; default: {})",
        service.settings().data_dir().display(),
        service.served_backends().iter().map(|b| b.as_str()).collect::<Vec<_>>().join(", "),
        service.default_backend_kind().map(|b| b.to_string()).unwrap_or_else(|| "none".into())
    );
    let st = service.settings();
    let days = match st.audit_retention_days {
        0 => "for ever".to_string(),
        d => format!("{d} day(s)"),
    };
    let size = match st.audit_max_bytes {
        0 => "no size cap".to_string(),
        b => format!("at most {}", airlock_core::units::format_size(b)),
    };
    eprintln!(
        "airlock serve: the audit log keeps records {days}, {size} (settings audit_retention_days, audit_max_bytes; 0 keeps everything)"
    );
    if service.auth_required() && keys == 0 {
        eprintln!("airlock serve: no API key exists yet: create one with `airlock keys create NAME`");
    }
    let options = airlock_server::AppOptions { mcp_return_mode: a.mcp_return_mode, ..Default::default() };
    airlock_server::serve(service, listener, options, airlock_server::shutdown_signal()).await?;
    eprintln!("airlock serve: stopped; every sandbox was destroyed");
    Ok(())
}
