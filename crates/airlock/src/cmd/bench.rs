//! `airlock bench`: the harness behind every performance figure airlock quotes.
//!
//! Each workload runs N times per backend and mode, and the baseline (a bare
//! `python3 -c` of the same code with the same interpreter) runs N times in the same
//! invocation, so every figure also appears as a ratio to a baseline measured under
//! the same conditions. Medians, not means; min and p99 beside them.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use airlock_core::{
    BackendKind, Cell, ExecRequest, GuardProfile, GuardSettings, Language, Limits, NetworkPolicy, SandboxSpec, Status,
    run_once,
};
use airlock_service::{Config, Registry};
use anyhow::{Context, bail};
use serde::Serialize;

/// Arguments of `airlock bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Backends to measure (repeatable; default: every backend that works here).
    #[arg(short = 'b', long = "backend", value_parser = super::backend_arg)]
    backends: Vec<BackendKind>,
    /// Workloads: print, pandas, cpu, guard (the static check of a 1,000-line program),
    /// guard-pandas (pandas under the guard's runtime layer). Repeatable; default: all
    /// that can run here.
    #[arg(short = 'w', long = "workload")]
    workloads: Vec<String>,
    /// Iterations per row (after one warm-up run).
    #[arg(short = 'n', long, default_value_t = 20)]
    iterations: usize,
    /// Modes: cold (fresh sandbox per run; a snapshot restore on microvm), cell (runs in
    /// one live session), and boot (microvm only: a cold boot of the guest kernel per
    /// run, no snapshot; slow under TCG, so not run unless asked).
    #[arg(long = "mode", default_values_t = ["cold".to_string(), "cell".to_string()])]
    modes: Vec<String>,
    /// Print the results as JSON.
    #[arg(long)]
    json: bool,
    /// The Python interpreter for native backends and the baseline.
    #[arg(long, env = "AIRLOCK_PYTHON")]
    python: Option<std::path::PathBuf>,
    /// Also measure request-to-result latency through a local `airlock serve` (one-shot
    /// `POST /v1/execute` and cells of a live session) and through the `airlock run`
    /// command, for the same code in the same run.
    #[arg(long)]
    server: bool,
    /// Live idle sessions kept at once to measure the memory of one (in-process
    /// backends: wasm); 0 skips it.
    #[arg(long, default_value_t = 20)]
    sessions: usize,
    /// With --server: one-shot requests of the `print` workload sent as fast as the
    /// server answers (fresh sandbox each), to measure sustained sandboxes per second,
    /// beside as many bare `python3 -c` runs at the same concurrency; 0 skips it.
    #[arg(long, default_value_t = 200)]
    burst: usize,
    /// Requests (and baseline processes) in flight at once for --burst and --server-sessions.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// With --server: live sessions to keep at once on the jail pool's template (memory
    /// per session, and latency for others while they live); 0 skips it.
    #[arg(long, default_value_t = 0)]
    server_sessions: usize,
}

/// Memory of live, idle sessions of a backend that runs inside this process.
#[derive(Debug, Serialize)]
struct SessionMemory {
    backend: String,
    sessions: usize,
    /// Growth of this process's resident memory per live session (after one cell each).
    rss_per_session_bytes: u64,
    /// Resident memory before the sessions were made.
    rss_before_bytes: u64,
}

/// This process's resident set size.
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0);
    // SAFETY: sysconf only reads a configuration value.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * u64::try_from(page).unwrap_or(4096)
}

/// Keeps `n` sessions alive (each has run one cell) and measures RSS growth per session.
fn session_memory(backend: &dyn airlock_core::Backend, n: usize) -> anyhow::Result<SessionMemory> {
    let limits = Limits::default();
    let cell = Cell::new(Language::Python, "x = 41", &limits);
    // A first session loads what every later one shares (the compiled module).
    let mut warm = backend.create(&SandboxSpec::new(limits))?;
    check(&warm.execute(&cell, &mut |_| {})?)?;
    let before = rss_bytes();
    let mut live = Vec::with_capacity(n);
    for _ in 0..n {
        let mut sb = backend.create(&SandboxSpec::new(limits))?;
        check(&sb.execute(&cell, &mut |_| {})?)?;
        live.push(sb);
    }
    let after = rss_bytes();
    for sb in live {
        sb.destroy()?;
    }
    warm.destroy()?;
    Ok(SessionMemory {
        backend: backend.kind().to_string(),
        sessions: n,
        rss_per_session_bytes: after.saturating_sub(before) / n as u64,
        rss_before_bytes: before,
    })
}

/// A named piece of code to time.
struct Workload {
    name: &'static str,
    code: &'static str,
    /// A module that must be importable by the baseline interpreter.
    needs: Option<&'static str>,
    /// The guard the code runs under (its runtime layer is installed in the sandbox).
    guard: Option<GuardProfile>,
}

const PANDAS: &str = "import pandas as pd\ndf = pd.DataFrame({'A': [1, 2, 3], 'B': [4, 5, 6]})\ndf.A.sum()";

/// The workload that times the guard's static check instead of running code.
const GUARD_CHECK: &str = "guard";

const WORKLOADS: &[Workload] = &[
    Workload { name: "print", code: "print(1)", needs: None, guard: None },
    Workload { name: "pandas", code: PANDAS, needs: Some("pandas"), guard: None },
    Workload { name: "cpu", code: "sum(i * i for i in range(1_000_000))", needs: None, guard: None },
    // The static check of a generated 1,000-line program, against CPython's own parser.
    Workload { name: GUARD_CHECK, code: "", needs: None, guard: Some(GuardProfile::Standard) },
    // The pandas workload with the guard's runtime layer (audit hooks) installed.
    Workload { name: "guard-pandas", code: PANDAS, needs: Some("pandas"), guard: Some(GuardProfile::Standard) },
];

/// Statistics of one row, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    /// Runs measured.
    pub n: usize,
    /// Fastest run.
    pub min_ms: f64,
    /// Median run.
    pub median_ms: f64,
    /// 99th percentile (nearest rank).
    pub p99_ms: f64,
    /// Runs per second, run one after another.
    pub throughput_per_s: f64,
}

impl Stats {
    /// Statistics of a set of durations.
    pub fn of(samples: &[Duration], total: Duration) -> Stats {
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
        ms.sort_by(|a, b| a.total_cmp(b));
        let n = ms.len();
        let median = if n % 2 == 1 { ms[n / 2] } else { (ms[n / 2 - 1] + ms[n / 2]) / 2.0 };
        let p99 = ms[((n as f64 * 0.99).ceil() as usize).clamp(1, n) - 1];
        Stats { n, min_ms: ms[0], median_ms: median, p99_ms: p99, throughput_per_s: n as f64 / total.as_secs_f64() }
    }
}

/// One line of the report.
#[derive(Debug, Serialize)]
struct Row {
    workload: String,
    /// `baseline` for bare python3, `bwrap` for bubblewrap, else the backend.
    target: String,
    /// `cold` (fresh sandbox per run), `cell` (in a live session), or `process` (baseline).
    mode: String,
    #[serde(flatten)]
    stats: Stats,
    /// Median divided by the baseline's median for the same workload.
    ratio_to_baseline: Option<f64>,
}

/// Runs `f` once to warm up, then `n` times, and returns the statistics.
pub(crate) fn measure(n: usize, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<Stats> {
    f()?;
    let mut samples = Vec::with_capacity(n);
    let total = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        f()?;
        samples.push(t.elapsed());
    }
    Ok(Stats::of(&samples, total.elapsed()))
}

fn baseline(python: &std::path::Path, code: &str) -> anyhow::Result<()> {
    let st = Command::new(python)
        .args(["-c", code])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .with_context(|| format!("running {}", python.display()))?;
    if !st.success() {
        bail!("baseline `{} -c` failed ({st})", python.display());
    }
    Ok(())
}

/// `bwrap` on `PATH`, if bubblewrap is installed.
fn find_bwrap() -> Option<std::path::PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join("bwrap")).find(|p| p.is_file())
}

/// The same code under bubblewrap with every namespace unshared and the host's root
/// read-only: the cost of the namespaces alone, for comparison with `jail`.
fn bwrap_baseline(bwrap: &std::path::Path, python: &std::path::Path, code: &str) -> anyhow::Result<()> {
    let st = Command::new(bwrap)
        .args(["--unshare-all", "--die-with-parent", "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev"])
        .args(["--tmpfs", "/tmp", "--"])
        .arg(python)
        .args(["-c", code])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .with_context(|| format!("running {}", bwrap.display()))?;
    if !st.success() {
        bail!("`bwrap --unshare-all {} -c` failed ({st})", python.display());
    }
    Ok(())
}

fn importable(python: &std::path::Path, module: &str) -> bool {
    Command::new(python)
        .args(["-c", &format!("import {module}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn check(o: &airlock_core::Outcome) -> anyhow::Result<()> {
    if o.status != Status::Ok {
        bail!("{} on {}: {}\n{}", o.status, o.backend, o.reason.clone().unwrap_or_default(), o.stderr);
    }
    Ok(())
}

/// Runs `airlock bench`.
pub fn main(a: BenchArgs) -> anyhow::Result<i32> {
    if a.iterations == 0 {
        bail!("--iterations must be at least 1");
    }
    let mut config = Config::from_env();
    if let Some(p) = &a.python {
        config.python = p.clone();
    }
    let python = config.python.clone();
    let registry = Registry::new(config);
    let backends: Vec<BackendKind> = if a.backends.is_empty() {
        registry.probes().into_iter().filter(|p| p.available).map(|p| p.backend).collect()
    } else {
        a.backends.clone()
    };
    for m in &a.modes {
        if m != "cold" && m != "cell" && m != "boot" {
            bail!("unknown mode '{m}': use cold, cell or boot");
        }
    }
    let selected: Vec<&Workload> = if a.workloads.is_empty() {
        WORKLOADS.iter().collect()
    } else {
        a.workloads
            .iter()
            .map(|w| {
                WORKLOADS.iter().find(|x| x.name == w).with_context(|| {
                    format!(
                        "unknown workload '{w}': use {}",
                        WORKLOADS.iter().map(|x| x.name).collect::<Vec<_>>().join(", ")
                    )
                })
            })
            .collect::<anyhow::Result<_>>()?
    };

    let mut rows = Vec::new();
    let mut skipped = Vec::new();
    let mut notes = Vec::new();
    let server = if a.server {
        if !a.json {
            eprintln!("starting a local airlock serve ...");
        }
        Some(super::bench_server::LocalServer::start(&python, importable(&python, "pandas"), a.server_sessions)?)
    } else {
        None
    };
    for w in selected {
        if let Some(m) = w.needs
            && !importable(&python, m)
        {
            skipped.push(format!("{}: skipped: {} cannot import {m}", w.name, python.display()));
            continue;
        }
        if !a.json {
            eprintln!("measuring {} ...", w.name);
        }
        if w.name == GUARD_CHECK {
            match bench_guard_check(&python, a.iterations) {
                Ok(r) => rows.extend(r),
                Err(e) => skipped.push(format!("{}: failed: {e:#}", w.name)),
            }
            continue;
        }
        let base = measure(a.iterations, || baseline(&python, w.code))?;
        let base_median = base.median_ms;
        rows.push(Row {
            workload: w.name.into(),
            target: "baseline".into(),
            mode: format!("{} -c", python.display()),
            stats: base,
            ratio_to_baseline: Some(1.0),
        });
        let bursting = server.is_some() && a.burst > 0 && w.name == "print";
        if bursting {
            let c = a.concurrency;
            let mut add = |target: &str, label: &str, r: anyhow::Result<Stats>| match r {
                Ok(s) => rows.push(Row {
                    workload: w.name.into(),
                    target: target.into(),
                    mode: format!("{label} x{c}"),
                    ratio_to_baseline: Some(s.median_ms / base_median),
                    stats: s,
                }),
                // A floor that cannot run here (no user namespaces, no pandas) is skipped;
                // a baseline that fails has failed.
                Err(e) => {
                    let word = if target == "floor" { "skipped" } else { "failed" };
                    skipped.push(format!("{}/{target}/{label}: {word}: {e:#}", w.name))
                }
            };
            add("baseline", "burst", super::bench_server::concurrently(a.burst, c, || baseline(&python, w.code)));
            // What the kernel and a forking interpreter alone allow: the ceiling for the
            // jail bursts below (lean-jail imports nothing; pool-jail imports pandas).
            for (modules, label) in [(&[][..], "fork+namespaces"), (&["pandas"][..], "fork+namespaces pandas")] {
                let floor = super::bench_server::fork_floor(&python, a.burst, c, modules).map(|(s, cpu_ms)| {
                    notes.push(format!(
                        "floor {label}: {cpu_ms:.1} ms of CPU per child, all processes counted (the kernel workers' \
                         later namespace teardown not)"
                    ));
                    s
                });
                add("floor", label, floor);
            }
        }
        if let Some(bwrap) = find_bwrap() {
            match measure(a.iterations, || bwrap_baseline(&bwrap, &python, w.code)) {
                Ok(s) => {
                    let ratio = s.median_ms / base_median;
                    rows.push(Row {
                        workload: w.name.into(),
                        target: "bwrap".into(),
                        mode: "--unshare-all".into(),
                        stats: s,
                        ratio_to_baseline: Some(ratio),
                    });
                }
                Err(e) => skipped.push(format!("{}/bwrap: skipped: {e:#}", w.name)),
            }
        }
        for &kind in &backends {
            let backend = match registry.resolve(Some(kind)) {
                Ok(b) => b,
                Err(e) => {
                    skipped.push(format!("{}/{kind}: skipped: {e}", w.name));
                    continue;
                }
            };
            let mut req = ExecRequest::python(w.code);
            req.limits = Limits { timeout_ms: 120_000, cpu_ms: 120_000, ..Limits::default() };
            req.guard = GuardSettings::profile(w.guard.unwrap_or_default());
            for mode in &a.modes {
                let stats = if mode == "boot" {
                    if kind != BackendKind::Microvm {
                        skipped.push(format!("{}/{kind}/boot: skipped: only microvm boots a kernel", w.name));
                        continue;
                    }
                    let mut cfg = airlock_microvm::MicrovmConfig::from_env(registry.config().data_dir.clone());
                    cfg.snapshots = false;
                    let booting = airlock_microvm::MicrovmBackend::new(cfg);
                    measure(a.iterations, || check(&run_once(&booting, &req, None, &mut |_| {})?))
                } else if mode == "cold" {
                    measure(a.iterations, || check(&run_once(backend.as_ref(), &req, None, &mut |_| {})?))
                } else {
                    let mut sb = backend.create(&SandboxSpec::new(req.limits))?;
                    let mut cell = Cell::new(Language::Python, w.code, &req.limits);
                    cell.guard = req.guard.policy(req.network);
                    let r = measure(a.iterations, || check(&sb.execute(&cell, &mut |_| {})?));
                    sb.destroy()?;
                    r
                };
                match stats {
                    Ok(s) => {
                        let ratio = s.median_ms / base_median;
                        rows.push(Row {
                            workload: w.name.into(),
                            target: kind.to_string(),
                            mode: mode.clone(),
                            stats: s,
                            ratio_to_baseline: Some(ratio),
                        });
                    }
                    Err(e) => skipped.push(format!("{}/{kind}/{mode}: failed: {e:#}", w.name)),
                }
            }
            if let Some(srv) = &server {
                for (mode, stats) in srv.measure(kind, w.code, a.iterations, &python) {
                    match stats {
                        Ok(s) => {
                            let ratio = s.median_ms / base_median;
                            rows.push(Row {
                                workload: w.name.into(),
                                target: kind.to_string(),
                                mode: mode.into(),
                                stats: s,
                                ratio_to_baseline: Some(ratio),
                            });
                        }
                        Err(e) => skipped.push(format!("{}/{kind}/{mode}: failed: {e:#}", w.name)),
                    }
                }
                let mut bursts = Vec::new();
                if bursting && super::bench_server::POOLED.contains(&kind) {
                    bursts.push((format!("pool-{kind}"), "http-burst"));
                }
                if bursting && kind == BackendKind::Jail {
                    bursts.push(("lean-jail".to_string(), "http-burst-lean"));
                }
                for (template, label) in bursts {
                    match srv.burst(&template, w.code, a.burst, a.concurrency) {
                        Ok(s) => rows.push(Row {
                            workload: w.name.into(),
                            target: kind.to_string(),
                            mode: format!("{label} x{}", a.concurrency),
                            ratio_to_baseline: Some(s.median_ms / base_median),
                            stats: s,
                        }),
                        Err(e) => skipped.push(format!("{}/{kind}/{label}: failed: {e:#}", w.name)),
                    }
                }
            }
        }
    }
    if let Some(srv) = &server {
        match srv.pool_uss(BackendKind::Jail) {
            Ok(line) => notes.push(line),
            Err(e) => skipped.push(format!("pool memory: skipped: {e:#}")),
        }
        if a.server_sessions > 0 {
            if !a.json {
                eprintln!("keeping {} live jail sessions ...", a.server_sessions);
            }
            match srv.sessions(BackendKind::Jail, a.server_sessions, a.iterations) {
                Ok(lines) => notes.extend(lines),
                Err(e) => skipped.push(format!("sessions: failed: {e:#}")),
            }
        }
    }
    drop(server);

    let mut memory = Vec::new();
    if a.sessions > 0 && backends.contains(&BackendKind::Wasm) {
        if !a.json {
            eprintln!("measuring memory of {} live wasm sessions ...", a.sessions);
        }
        match registry
            .resolve(Some(BackendKind::Wasm))
            .map_err(anyhow::Error::from)
            .and_then(|b| session_memory(b.as_ref(), a.sessions))
        {
            Ok(m) => memory.push(m),
            Err(e) => skipped.push(format!("session memory/wasm: failed: {e:#}")),
        }
    }

    if a.json {
        let v = serde_json::json!({
            "iterations": a.iterations,
            "python": python,
            "host": host_info(),
            "rows": rows,
            "session_memory": memory,
            "skipped": skipped,
            "notes": notes,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    println!("airlock bench — {} iterations per row after one warm-up; {}", a.iterations, host_info());
    println!(
        "{:<12} {:<10} {:<30} {:>9} {:>9} {:>9} {:>10} {:>8}",
        "workload", "target", "mode", "min ms", "median", "p99", "runs/s", "ratio"
    );
    for r in &rows {
        println!(
            "{:<12} {:<10} {:<30} {:>9.3} {:>9.3} {:>9.3} {:>10.1} {:>7.2}x",
            r.workload,
            r.target,
            r.mode,
            r.stats.min_ms,
            r.stats.median_ms,
            r.stats.p99_ms,
            r.stats.throughput_per_s,
            r.ratio_to_baseline.unwrap_or(f64::NAN)
        );
    }
    for m in &memory {
        println!(
            "{}: memory per live idle session: {} (resident memory growth over {} sessions, each after one cell)",
            m.backend,
            airlock_core::units::format_size(m.rss_per_session_bytes),
            m.sessions
        );
    }
    for s in skipped.iter().chain(&notes) {
        println!("{s}");
    }
    println!("ratio = median / median of the baseline (bare `python3 -c` of the same code) measured in this run");
    if a.server {
        println!(
            "modes: cold/cell = in-process library calls; cli = `airlock run` as a new process; http-oneshot = POST /v1/execute; http-cell = POST /v1/sandboxes/{{id}}/execute in a live session (request to result, over loopback TCP); http-pool = POST /v1/execute taking a ready sandbox from the warm pool (template pool-<backend>, pre-imported; the bench waits, untimed, for one to be ready before each run; its runs/s is 1/mean latency); burst / http-burst = the same runs sent {} at a time for as long as they take, fresh sandbox each (runs/s is the sustained rate; http-burst-lean on a template that imports nothing); floor fork+namespaces = a bare interpreter forking children into a zygote child's namespaces, with /proc and a tmpfs mounted, doing nothing else (no cgroup, Landlock, seccomp, program): the ceiling for http-burst-lean (and, with pandas imported, for http-burst)",
            a.concurrency
        );
    }
    if rows.iter().any(|r| r.workload == GUARD_CHECK) {
        println!("guard rows: the baseline is CPython's ast.parse of the same program, timed inside python3");
    }
    Ok(0)
}

/// Times the guard's static check of a generated 1,000-line program (the `guard`
/// workload) against CPython's `ast.parse` of the same text, timed inside one
/// `python3` process (so interpreter start-up is not counted).
fn bench_guard_check(python: &std::path::Path, iterations: usize) -> anyhow::Result<Vec<Row>> {
    use std::io::Write;
    let n = iterations.max(100);
    let program = airlock_guard::sample_program(1000);
    let lines = program.lines().count();
    let policy = GuardSettings::profile(GuardProfile::Standard)
        .policy(NetworkPolicy::None)
        .context("the standard profile has a policy")?;
    let findings = airlock_guard::check(&program, &policy);
    if !findings.is_empty() {
        bail!("the generated program should pass the standard profile, but: {}", findings[0]);
    }
    let guard = measure(n, || {
        std::hint::black_box(airlock_guard::check(std::hint::black_box(&program), &policy));
        Ok(())
    })?;

    let script = format!(
        "import ast, sys, time, json\nsrc = sys.stdin.read()\nast.parse(src)\nout = []\n\
         for _ in range({n}):\n    t = time.perf_counter()\n    ast.parse(src)\n    out.append(time.perf_counter() - t)\n\
         print(json.dumps(out))\n"
    );
    let mut child = Command::new(python)
        .args(["-I", "-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", python.display()))?;
    child.stdin.take().context("stdin is piped")?.write_all(program.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("timing ast.parse failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let secs: Vec<f64> = serde_json::from_slice(&out.stdout).context("reading ast.parse timings")?;
    let samples: Vec<Duration> = secs.iter().map(|s| Duration::from_secs_f64(*s)).collect();
    let total: Duration = samples.iter().sum();
    let base = Stats::of(&samples, total);
    let ratio = guard.median_ms / base.median_ms;
    Ok(vec![
        Row {
            workload: GUARD_CHECK.into(),
            target: "baseline".into(),
            mode: format!("ast.parse, {lines} lines"),
            stats: base,
            ratio_to_baseline: Some(1.0),
        },
        Row {
            workload: GUARD_CHECK.into(),
            target: "guard".into(),
            mode: format!("check, {lines} lines"),
            stats: guard,
            ratio_to_baseline: Some(ratio),
        },
    ])
}

fn host_info() -> String {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpus} CPUs, Linux {}", kernel.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_median_and_p99() {
        let d: Vec<Duration> = [5, 1, 3, 2, 4].iter().map(|&m| Duration::from_millis(m)).collect();
        let s = Stats::of(&d, Duration::from_millis(15));
        assert_eq!(s.min_ms, 1.0);
        assert_eq!(s.median_ms, 3.0);
        assert_eq!(s.p99_ms, 5.0);
        assert!((s.throughput_per_s - 333.33).abs() < 0.1);
        let d: Vec<Duration> = [4, 1, 3, 2].iter().map(|&m| Duration::from_millis(m)).collect();
        assert_eq!(Stats::of(&d, Duration::from_millis(10)).median_ms, 2.5);
    }

    /// The floor row's program forks every child it is asked for, or says why not.
    #[test]
    fn the_fork_floor_counts_every_child() {
        let python = airlock_guest::launch::default_python();
        match super::super::bench_server::fork_floor(&python, 5, 2, &["json"]) {
            Ok((s, cpu_ms)) => {
                assert_eq!(s.n, 5, "{s:?}");
                assert!(cpu_ms > 0.0, "the children's CPU time is counted: {cpu_ms}");
            }
            Err(e) => {
                let why = format!("{e:#}");
                assert!(!why.is_empty() && !why.contains("Traceback"), "a clear reason, not a crash: {why}");
                eprintln!("skipped: the floor cannot run here: {why}");
            }
        }
    }
}
