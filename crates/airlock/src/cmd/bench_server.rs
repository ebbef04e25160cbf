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
    pub fn start(python: &Path, pandas: bool) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir().context("creating a data directory for the server")?;
        let exe = std::env::current_exe().context("finding the airlock executable")?;
        let modules = if pandas { "[\"pandas\"]" } else { "[]" };
        let mut config = String::from("pool_size = 0\n");
        for kind in POOLED {
            config.push_str(&format!(
                "[[templates]]\nname = \"pool-{kind}\"\nbackend = \"{kind}\"\nmodules = {modules}\npool_size = {POOL_SIZE}\n"
            ));
        }
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
            let _ = self.agent.delete(&format!("{}/v1/sandboxes/{id}", self.base)).call();
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
        let root = self.child.id();
        let counted: Vec<u64> = descendants(root).into_iter().filter_map(uss_bytes).collect();
        let total: u64 = counted.iter().sum();
        let sandboxes = POOLED.len() as u64 * POOL_SIZE;
        Ok(format!(
            "memory: {:.1} MiB USS per idle pooled sandbox ({} processes under the server, {:.1} MiB in all, {} ready sandboxes of {}; pools hold {} imports)",
            total as f64 / sandboxes as f64 / 1048576.0,
            counted.len(),
            total as f64 / 1048576.0,
            sandboxes,
            POOLED.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(" and "),
            if self.pandas { "pandas" } else { "no" }
        ))
    }
}

/// The backends `bench --server` keeps a warm pool for.
const POOLED: [BackendKind; 2] = [BackendKind::Jail, BackendKind::Process];

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
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let mut kib = 0;
    for line in text.lines() {
        if line.starts_with("Private_Clean:") || line.starts_with("Private_Dirty:") {
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
