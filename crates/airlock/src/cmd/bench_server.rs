//! `airlock bench --server`: the same code through a local `airlock serve` (one-shot
//! requests and cells of a live session) and through the `airlock run` command, so
//! the cost of the HTTP layer and of a CLI process is measured beside the library.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use airlock_core::BackendKind;
use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::bench::{Stats, measure};

/// A server started for the benchmark, stopped (SIGTERM) when dropped.
pub struct LocalServer {
    child: Child,
    base: String,
    agent: ureq::Agent,
    pandas: bool,
    _dir: tempfile::TempDir,
}

/// An HTTP agent that hands back 4xx/5xx responses instead of failing on them.
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(300)))
        .build()
        .into()
}

impl LocalServer {
    /// Starts `airlock serve` on a free loopback port with a private data directory,
    /// and a warm-pool template `pool-<backend>` for `jail` and `process` (importing
    /// pandas when `pandas` is true); the built-in `default` template's pool is off.
    /// Room is made for `sessions` live sessions (besides the default limits).
    pub fn start(python: &Path, pandas: bool, sessions: usize) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir().context("creating a data directory for the server")?;
        let exe = std::env::current_exe().context("finding the airlock executable")?;
        let modules = if pandas { "[\"pandas\"]" } else { "[]" };
        let room = sessions + 64;
        let mut config = format!(
            "pool_size = 0\nmax_sandboxes = {room}\nper_key_max_sandboxes = {room}\nmax_running = {}\n",
            room.min(256)
        );
        for kind in POOLED {
            config.push_str(&format!(
                "[[templates]]\nname = \"pool-{kind}\"\nbackend = \"{kind}\"\nmodules = {modules}\npool_size = {POOL_SIZE}\n"
            ));
        }
        // For bursts of short programs: a template that imports nothing (on jail, a
        // small zygote, so each fork copies little).
        config.push_str(&format!(
            "[[templates]]\nname = \"lean-jail\"\nbackend = \"jail\"\nmodules = []\npool_size = {POOL_SIZE}\n"
        ));
        let config_path = dir.path().join("airlock.toml");
        std::fs::write(&config_path, config).context("writing the server's settings")?;
        let mut child = Command::new(exe)
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&config_path)
            .arg("--data-dir")
            .arg(dir.path())
            .env("AIRLOCK_PYTHON", python)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting airlock serve")?;
        let stderr = child.stderr.take().expect("piped");
        let mut lines = BufReader::new(stderr).lines();
        let base = loop {
            match lines.next() {
                Some(Ok(l)) => {
                    if let Some(rest) = l.split("listening on ").nth(1) {
                        break rest.split_whitespace().next().unwrap_or("").to_string();
                    }
                }
                _ => {
                    let _ = child.kill();
                    bail!("airlock serve exited before listening");
                }
            }
        };
        // Keep draining its stderr so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Ok(LocalServer { child, base, agent: agent(), pandas, _dir: dir })
    }

    fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let mut r = self.agent.post(&format!("{}{path}", self.base)).send_json(body)?;
        let status = r.status();
        let v: Value = r.body_mut().read_json()?;
        if !status.is_success() {
            bail!("{path}: HTTP {status}: {v}");
        }
        Ok(v)
    }

    /// Measures `code` on `kind` as `cli`, `http-oneshot` and `http-cell` rows.
    pub fn measure(
        &self,
        kind: BackendKind,
        code: &str,
        n: usize,
        python: &Path,
    ) -> Vec<(&'static str, anyhow::Result<Stats>)> {
        let limits = json!({"timeout_ms": 120_000, "cpu_ms": 120_000});
        let ok = |v: Value| -> anyhow::Result<()> {
            if v["status"] != "ok" {
                bail!("status {}: {}", v["status"], v["reason"]);
            }
            Ok(())
        };
        let cli = measure(n, || {
            let exe = std::env::current_exe()?;
            let st = Command::new(exe)
                .args(["run", "-b", kind.as_str(), "-c", code])
                .env("AIRLOCK_PYTHON", python)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()?;
            if !st.success() {
                bail!("airlock run exited with {st}");
            }
            Ok(())
        });
        let body = json!({"code": code, "backend": kind, "limits": limits});
        let oneshot = measure(n, || ok(self.post("/v1/execute", &body)?));
        let cell = (|| {
            let sbx = self.post("/v1/sandboxes", &json!({"backend": kind, "limits": limits}))?;
            let id = sbx["id"].as_str().context("no sandbox id")?.to_string();
            let cell_body = json!({"code": code});
            let r = measure(n, || ok(self.post(&format!("/v1/sandboxes/{id}/execute"), &cell_body)?));
            let _ = self
                .agent
                .delete(&format!("{}/v1/sandboxes/{id}", self.base))
                .header("content-type", "application/json")
                .call();
            r
        })();
        let mut rows = vec![("cli", cli), ("http-oneshot", oneshot), ("http-cell", cell)];
        if POOLED.contains(&kind) {
            rows.push(("http-pool", self.measure_pool(kind, code, n)));
        }
        rows
    }

    /// Measures one-shot requests that find a ready sandbox in the pool: before each
    /// (untimed) the benchmark waits until template `pool-<kind>` has one ready.
    /// Its runs/s is 1 / mean latency, not a sustained rate (refilling is slower).
    fn measure_pool(&self, kind: BackendKind, code: &str, n: usize) -> anyhow::Result<Stats> {
        let name = format!("pool-{kind}");
        let body = json!({"code": code, "template": name, "limits": {"timeout_ms": 120_000, "cpu_ms": 120_000}});
        let mut samples = Vec::with_capacity(n);
        for i in 0..=n {
            self.wait_ready(&name, 1)?;
            let t = Instant::now();
            let v = self.post("/v1/execute", &body)?;
            let took = t.elapsed();
            if v["status"] != "ok" {
                bail!("status {}: {}", v["status"], v["reason"]);
            }
            if i > 0 {
                samples.push(took);
            }
        }
        let total = samples.iter().sum();
        Ok(Stats::of(&samples, total))
    }

    /// `total` one-shot requests of `code` on template `pool-<kind>`, `concurrency` at
    /// a time, as fast as the server answers: fresh sandboxes per second, sustained
    /// (the pool empties after its first few; the zygote forks the rest, or, without
    /// one, they are created cold). Latencies are per request.
    pub fn burst(&self, template: &str, code: &str, total: usize, concurrency: usize) -> anyhow::Result<Stats> {
        let name = template.to_string();
        self.wait_ready(&name, POOL_SIZE)?;
        let body = json!({"code": code, "template": name, "limits": {"timeout_ms": 120_000, "cpu_ms": 120_000}});
        concurrently(total, concurrency, || {
            let v = self.post("/v1/execute", &body)?;
            if v["status"] != "ok" {
                bail!("status {}: {}", v["status"], v["reason"]);
            }
            Ok(())
        })
    }

    /// `n` live sessions of template `pool-<kind>` (each after one cell): how fast
    /// they are made, the memory they take, and whether the server stays fast for
    /// others meanwhile. Returns lines for the report.
    pub fn sessions(&self, kind: BackendKind, n: usize, iterations: usize) -> anyhow::Result<Vec<String>> {
        let name = format!("pool-{kind}");
        self.wait_ready(&name, POOL_SIZE)?;
        let oneshot = json!({"code": "print(1)", "template": name});
        let before = measure(iterations, || ok(self.post("/v1/execute", &oneshot)?))?;
        let avail_before = meminfo("MemAvailable:");
        let ids = std::sync::Mutex::new(Vec::with_capacity(n));
        let create = json!({"template": name, "idle_timeout_ms": 3_600_000});
        let made = concurrently(n, 4, || {
            let sbx = self.post("/v1/sandboxes", &create)?;
            let id = sbx["id"].as_str().context("no sandbox id")?.to_string();
            ok(self.post(&format!("/v1/sandboxes/{id}/execute"), &json!({"code": "x = list(range(1000))"}))?)?;
            ids.lock().unwrap_or_else(|p| p.into_inner()).push(id);
            Ok(())
        });
        let ids = ids.into_inner().unwrap_or_else(|p| p.into_inner());
        let result = (|| {
            let made = made?;
            std::thread::sleep(Duration::from_secs(1));
            let avail_after = meminfo("MemAvailable:");
            let zygotes = self.zygote_pids(Some(&name))?;
            let children: Vec<u32> = zygotes.iter().flat_map(|z| descendants(*z)).collect();
            let uss: Vec<u64> = children.iter().filter_map(|p| uss_bytes(*p)).collect();
            let per = uss.iter().sum::<u64>() as f64 / uss.len().max(1) as f64;
            let during = measure(iterations, || ok(self.post("/v1/execute", &oneshot)?))?;
            let cell_body = json!({"code": "len(x)"});
            let mut k = 0;
            let cells = measure(iterations, || {
                k = (k + 7919) % ids.len().max(1);
                ok(self.post(&format!("/v1/sandboxes/{}/execute", ids[k]), &cell_body)?)
            })?;
            let fell = avail_before.saturating_sub(avail_after);
            Ok(vec![
                format!(
                    "sessions: {} live {kind} sessions of template {name} (each after one cell) made in {:.1} s ({:.0}/s, 4 at a time)",
                    ids.len(),
                    made.n as f64 / made.throughput_per_s,
                    made.throughput_per_s
                ),
                format!(
                    "sessions: host MemAvailable fell by {:.0} MiB ({:.1} MiB per session); USS {:.1} MiB per session (mean of {} processes forked by the zygote); swap in use: {} KiB",
                    fell as f64 / 1048576.0,
                    fell as f64 / ids.len().max(1) as f64 / 1048576.0,
                    per / 1048576.0,
                    uss.len(),
                    meminfo("SwapTotal:").saturating_sub(meminfo("SwapFree:")) / 1024
                ),
                format!(
                    "sessions: with them live, a one-shot print(1) takes {:.1} ms (median; {:.1} ms before) and a cell in one of them {:.1} ms",
                    during.median_ms, before.median_ms, cells.median_ms
                ),
            ])
        })();
        for id in &ids {
            let _ = self
                .agent
                .delete(&format!("{}/v1/sandboxes/{id}", self.base))
                .header("content-type", "application/json")
                .call();
        }
        result
    }

    /// The pid of template `name`'s zygote (from `GET /v1/templates`), if it has one;
    /// every template's with `None`.
    fn zygote_pids(&self, name: Option<&str>) -> anyhow::Result<Vec<u32>> {
        let v: Value = self.agent.get(&format!("{}/v1/templates", self.base)).call()?.body_mut().read_json()?;
        let all = v["templates"].as_array().cloned().unwrap_or_default();
        Ok(all
            .iter()
            .filter(|t| name.is_none_or(|n| t["name"] == n))
            .filter_map(|t| t["zygote"].as_str()?.strip_prefix("zygote pid ")?.split(',').next()?.trim().parse().ok())
            .collect())
    }

    /// Waits until template `name` has `ready` sandboxes (or fails, saying why).
    fn wait_ready(&self, name: &str, ready: u64) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let v: Value = self.agent.get(&format!("{}/v1/templates", self.base)).call()?.body_mut().read_json()?;
            let t = v["templates"].as_array().and_then(|a| a.iter().find(|t| t["name"] == name)).cloned();
            let t = t.with_context(|| format!("the server has no template {name}"))?;
            if let Some(e) = t["error"].as_str() {
                bail!("template {name} failed: {e}");
            }
            if t["ready"].as_u64().unwrap_or(0) >= ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("template {name} did not get {ready} ready sandbox(es) within 300 s");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// USS (Private_Clean + Private_Dirty of /proc/<pid>/smaps_rollup) of every
    /// process under the server, divided by the pool's size, once the pool of
    /// `pool-<kind>` is full and nothing else runs: the unique memory of one idle
    /// pooled sandbox. Returns a line for the report.
    pub fn pool_uss(&self, kind: BackendKind) -> anyhow::Result<String> {
        let name = format!("pool-{kind}");
        self.wait_ready(&name, POOL_SIZE)?;
        // Other templates may still be filling: wait for them too, so only ready
        // sandboxes are counted.
        for k in POOLED {
            self.wait_ready(&format!("pool-{k}"), POOL_SIZE)?;
        }
        // A zygote's children are the pooled sandboxes of its template; the zygote
        // itself is paid once per template, however many sandboxes it forks.
        let zygotes = self.zygote_pids(Some(&name))?;
        let mut lines = Vec::new();
        if let Some(&z) = zygotes.first() {
            let pids = descendants(z);
            let mean = |v: Vec<u64>| v.iter().sum::<u64>() as f64 / v.len().max(1) as f64 / 1048576.0;
            lines.push(format!(
                "memory: {:.1} MiB USS per idle pooled {kind} sandbox (mean of {} forked by the zygote; pool holds {} imports; PSS {:.1} MiB each); the zygote: {:.1} MiB USS, {:.1} MiB PSS, once per template",
                mean(pids.iter().filter_map(|p| uss_bytes(*p)).collect()),
                pids.len(),
                if self.pandas { "pandas" } else { "no" },
                mean(pids.iter().filter_map(|p| pss_bytes(*p)).collect()),
                uss_bytes(z).unwrap_or(0) as f64 / 1048576.0,
                pss_bytes(z).unwrap_or(0) as f64 / 1048576.0
            ));
        }
        let root = self.child.id();
        let forked: Vec<u32> =
            self.zygote_pids(None)?.into_iter().flat_map(|z| descendants(z).into_iter().chain([z])).collect();
        let others: Vec<u64> =
            descendants(root).into_iter().filter(|p| !forked.contains(p)).filter_map(uss_bytes).collect();
        let unforked = POOLED.len() as u64 * POOL_SIZE - if zygotes.is_empty() { 0 } else { POOL_SIZE };
        if unforked > 0 {
            lines.push(format!(
                "memory: {:.1} MiB USS per idle pooled sandbox without a zygote ({} processes, {} ready sandboxes of {}; pools hold {} imports)",
                others.iter().sum::<u64>() as f64 / unforked as f64 / 1048576.0,
                others.len(),
                unforked,
                POOLED.iter().filter(|k| zygotes.is_empty() || **k != kind).map(|k| k.as_str()).collect::<Vec<_>>().join(" and "),
                if self.pandas { "pandas" } else { "no" }
            ));
        }
        Ok(lines.join("\n"))
    }
}

fn ok(v: Value) -> anyhow::Result<()> {
    if v["status"] != "ok" {
        bail!("status {}: {}", v["status"], v["reason"]);
    }
    Ok(())
}

/// Runs `f` `total` times on `concurrency` threads; per-run latencies, and runs per
/// second over the whole wall-clock time.
pub fn concurrently(
    total: usize,
    concurrency: usize,
    f: impl Fn() -> anyhow::Result<()> + Sync,
) -> anyhow::Result<Stats> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    if total == 0 {
        bail!("nothing to run");
    }
    let next = AtomicUsize::new(0);
    let samples = std::sync::Mutex::new(Vec::with_capacity(total));
    let failed = std::sync::Mutex::new(None);
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..concurrency.max(1) {
            s.spawn(|| {
                while next.fetch_add(1, Ordering::Relaxed) < total {
                    let t = Instant::now();
                    match f() {
                        Ok(()) => samples.lock().unwrap_or_else(|p| p.into_inner()).push(t.elapsed()),
                        Err(e) => {
                            *failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                            next.store(total, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    let samples = samples.into_inner().unwrap_or_else(|p| p.into_inner());
    Ok(Stats::of(&samples, start.elapsed()))
}

/// A `/proc/meminfo` field, in bytes.
fn meminfo(field: &str) -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024
}

/// The backends `bench --server` keeps a warm pool for.
pub const POOLED: [BackendKind; 2] = [BackendKind::Jail, BackendKind::Process];

/// Ready sandboxes per pooled backend.
const POOL_SIZE: u64 = 2;

/// Every descendant of `root` (not `root` itself), from /proc's parent links.
fn descendants(root: u32) -> Vec<u32> {
    let mut parent = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
            // The fields after the command name (which may hold spaces) in parentheses.
            let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { continue };
            if let Some(ppid) = rest.split_whitespace().nth(1).and_then(|p| p.parse::<u32>().ok()) {
                parent.push((pid, ppid));
            }
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for &(c, pp) in &parent {
            if pp == p && !out.contains(&c) {
                out.push(c);
                frontier.push(c);
            }
        }
    }
    out
}

/// Private_Clean + Private_Dirty of a process, in bytes.
fn uss_bytes(pid: u32) -> Option<u64> {
    smaps(pid, &["Private_Clean:", "Private_Dirty:"])
}

/// The proportional set size of a process (shared pages divided among their users).
fn pss_bytes(pid: u32) -> Option<u64> {
    smaps(pid, &["Pss:"])
}

/// The sum of `fields` of `/proc/<pid>/smaps_rollup`, in bytes.
fn smaps(pid: u32, fields: &[&str]) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let mut kib = 0;
    for line in text.lines() {
        if fields.iter().any(|f| line.starts_with(f)) {
            kib += line.split_whitespace().nth(1)?.parse::<u64>().ok()?;
        }
    }
    Some(kib * 1024)
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        // SAFETY: kill(2) takes plain integers and touches no memory of ours; the pid
        // is our own child, not yet reaped, so it cannot name another process.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        for _ in 0..300 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The floor under a zygote's bursts (`fork_floor.py`): `total` children of an
/// interpreter that imported `modules`, `concurrency` at a time, each forked into the
/// namespaces a zygote's child makes and doing nothing else. Returns their statistics
/// and the CPU time spent per child (by the forking processes and the children).
pub fn fork_floor(
    python: &std::path::Path,
    total: usize,
    concurrency: usize,
    modules: &[&str],
) -> anyhow::Result<(Stats, f64)> {
    // A guest's environment, as a zygote has (one BLAS thread, so pandas starts none).
    let env = airlock_guest::launch::guest_env("/tmp", "/tmp", None, &Default::default());
    let out = Command::new(python)
        .args(["-c", include_str!("fork_floor.py"), &total.to_string(), &concurrency.to_string(), &modules.join(",")])
        .env_clear()
        .envs(env)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", python.display()))?;
    if !out.status.success() {
        bail!("{} ({})", String::from_utf8_lossy(&out.stderr).trim(), out.status);
    }
    #[derive(serde::Deserialize)]
    struct Floor {
        samples_ms: Vec<f64>,
        elapsed_s: f64,
        cpu_s: f64,
    }
    let f: Floor = serde_json::from_slice(&out.stdout).context("reading the floor's result")?;
    let samples: Vec<Duration> = f.samples_ms.iter().map(|ms| Duration::from_secs_f64(ms / 1000.0)).collect();
    let cpu_ms = f.cpu_s * 1000.0 / samples.len().max(1) as f64;
    Ok((Stats::of(&samples, Duration::from_secs_f64(f.elapsed_s)), cpu_ms))
}
