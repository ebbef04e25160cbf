//! `airlock bench --server`: the same code through a local `airlock serve` (one-shot
//! requests and cells of a live session) and through the `airlock run` command, so
//! the cost of the HTTP layer and of a CLI process is measured beside the library.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use airlock_core::BackendKind;
use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::bench::{Stats, measure};

/// A server started for the benchmark, stopped (SIGTERM) when dropped.
pub struct LocalServer {
    child: Child,
    base: String,
    agent: ureq::Agent,
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
    /// Starts `airlock serve` on a free loopback port with a private data directory.
    pub fn start(python: &Path) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir().context("creating a data directory for the server")?;
        let exe = std::env::current_exe().context("finding the airlock executable")?;
        let mut child = Command::new(exe)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
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
        Ok(LocalServer { child, base, agent: agent(), _dir: dir })
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
        vec![("cli", cli), ("http-oneshot", oneshot), ("http-cell", cell)]
    }
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
