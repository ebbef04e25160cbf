//! The guard's runtime layer (audit hooks in the guest driver), run for real.
//!
//! For each corpus file under `corpus/denied/` with a `# runtime:` header:
//! * `stopped`: the program attempts an escape that creates a file on the host (the
//!   `marker` global, a path outside the workspace). Unguarded on `process` (no
//!   isolation) the file appears, which proves the program really escapes; with only
//!   the runtime layer (the static check skipped) it must not appear, and the run
//!   must fail with `GuardViolation`.
//! * `refused`: with only the runtime layer, the run fails with `GuardViolation`.
//! * `network`: the program connects to a listener of this test (`port`); unguarded
//!   the connection arrives, guarded it must not.
//! * `inert`: the program does nothing harmful even unguarded (documented, not
//!   defended: see the file's comment).
//!
//! Then every request goes through both layers (`Registry::execute`): files with a
//! static rule are `denied` before a sandbox exists; runtime-only files fail with
//! `GuardViolation`. And every file under `corpus/allowed/` must run `ok` under
//! `standard` with both layers: the audit hooks must not break pandas, numpy or
//! matplotlib.
//!
//! Backends: `process` always; `jail` when this build has it and it works here
//! (otherwise the test prints "skipped: <reason>").

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use airlock_core::{
    Backend, BackendKind, Cell, ExecRequest, GuardProfile, GuardSettings, Language, Limits, NetworkPolicy, Outcome,
    SandboxSpec, Status, run_once,
};
use airlock_service::{Config, Registry};

fn registry() -> &'static Registry {
    static REG: OnceLock<Registry> = OnceLock::new();
    REG.get_or_init(|| Registry::new(Config::from_env()))
}

fn backend(kind: BackendKind) -> Option<Arc<dyn Backend>> {
    match registry().resolve(Some(kind)) {
        Ok(b) => Some(b),
        Err(e) => {
            eprintln!("skipped: {e}");
            None
        }
    }
}

struct Case {
    name: String,
    source: String,
    runtime: Option<String>,
    rules: Vec<String>,
    profile: GuardProfile,
    python: Option<String>,
}

fn header(source: &str, key: &str) -> Option<String> {
    source
        .lines()
        .take_while(|l| l.starts_with('#'))
        .find_map(|l| l.trim_start_matches('#').trim().strip_prefix(key).map(|v| v.trim().to_string()))
}

fn cases(dir: &str) -> Vec<Case> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus").join(dir);
    let mut out: Vec<Case> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "py"))
        .map(|path| {
            let source = std::fs::read_to_string(&path).unwrap();
            Case {
                name: path.file_name().unwrap().to_string_lossy().into_owned(),
                runtime: header(&source, "runtime:"),
                rules: header(&source, "rule:")
                    .map(|r| r.split(',').map(|s| s.trim().to_string()).collect())
                    .unwrap_or_default(),
                profile: header(&source, "profile:").map(|p| p.parse().unwrap()).unwrap_or(GuardProfile::Standard),
                python: header(&source, "python:"),
                source,
            }
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// A host directory outside every sandbox's workspace and temporary directory (a
/// sandbox's `TMPDIR` may be `/tmp`, where the guard lets code write), one per test;
/// removed when dropped.
/// Marker paths directly in a directory the guest has too, so that a library that
/// checks the parent directory before writing (pandas does) still reaches the write
/// the guard must stop: the host's `/tmp` for `process` (an unguarded run must be
/// seen escaping there), `/` elsewhere (a jail's or a VM's own `/tmp` is the sandbox's
/// scratch space, which the guard lets code write).
struct MarkerDir(String);

impl MarkerDir {
    fn new(test: &str) -> MarkerDir {
        MarkerDir::in_dir("/tmp", test)
    }

    fn for_backend(kind: BackendKind, test: &str) -> MarkerDir {
        let dir = match kind {
            BackendKind::Process => "/tmp",
            // The guest's read-only standard library folder: a directory it has.
            BackendKind::Wasm => "/usr/local/lib",
            _ => "",
        };
        MarkerDir::in_dir(dir, test)
    }

    fn in_dir(dir: &str, test: &str) -> MarkerDir {
        MarkerDir(format!("{dir}/airlock-guard-{test}-{}", std::process::id()))
    }

    /// A fresh path (nothing is created).
    fn marker(&self, tag: &str) -> PathBuf {
        let n = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
        PathBuf::from(format!("{}-{tag}-{n}", self.0))
    }
}

/// Removes a marker.
fn clean(marker: &Path) {
    let _ = std::fs::remove_file(marker);
}

fn request(case: &Case, guard: GuardProfile, marker: &Path, port: u16) -> ExecRequest {
    let mut r = ExecRequest::python(case.source.clone());
    r.limits = Limits { timeout_ms: 60_000, cpu_ms: 60_000, ..Limits::default() };
    r.guard = GuardSettings::profile(guard);
    r.global_variables.insert("marker".into(), marker.to_string_lossy().into_owned().into());
    r.global_variables.insert("port".into(), port.into());
    r
}

fn run(b: &dyn Backend, req: &ExecRequest) -> Outcome {
    run_once(b, req, None, &mut |_| {}).unwrap_or_else(|e| panic!("host error on {}: {e}", b.kind()))
}

fn describe(o: &Outcome) -> String {
    format!(
        "status {} ({}), error {:?}\nstdout: {}\nstderr: {}",
        o.status,
        o.reason.as_deref().unwrap_or(""),
        o.error.as_ref().map(|e| format!("{}: {}\n{}", e.name, e.value, e.traceback)),
        o.stdout,
        o.stderr
    )
}

/// The run failed because of the guard: a `GuardViolation`, or an exception a library
/// raised from one (numpy turns it into "Failed to interpret file ... as a pickle").
fn guard_violation(o: &Outcome) -> bool {
    o.status == Status::Error
        && o.error.as_ref().is_some_and(|e| {
            e.name == "GuardViolation" || e.traceback.contains("\nGuardViolation: airlock guard (profile")
        })
}

/// A loopback listener that counts connections (each is closed at once, so a client
/// fails fast instead of waiting for an answer).
struct Listener {
    port: u16,
    hits: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Listener {
    fn new() -> Listener {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let port = l.local_addr().unwrap().port();
        let hits = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (h, s) = (hits.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((stream, _)) => {
                        h.fetch_add(1, Ordering::SeqCst);
                        drop(stream);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Listener { port, hits, stop }
    }

    /// Whether anything connected, waiting up to `wait` for it.
    fn connected(&self, wait: Duration) -> bool {
        let end = Instant::now() + wait;
        while self.hits.load(Ordering::SeqCst) == 0 && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.hits.load(Ordering::SeqCst) > 0
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Runs the runtime cases on one backend. `prove_escape` also runs each case unguarded
/// and checks that it escapes (only meaningful on `process`, which has no boundary).
fn runtime_cases(b: &dyn Backend, prove_escape: bool) {
    runtime_cases_matching(b, prove_escape, |_| true, 20)
}

fn runtime_cases_matching(b: &dyn Backend, prove_escape: bool, select: impl Fn(&str) -> bool, at_least: usize) {
    let mut failures = Vec::new();
    let mut n = 0;
    let dir = MarkerDir::for_backend(b.kind(), &format!("runtime-{}", b.kind()));
    for case in cases("denied") {
        let Some(kind) = case.runtime.clone() else { continue };
        if !select(&case.name) {
            continue;
        }
        n += 1;
        let marker = dir.marker(&case.name.replace(".py", ""));
        let l = Listener::new();
        let port = l.port;
        if prove_escape {
            let o = run(b, &request(&case, GuardProfile::Off, &marker, port));
            let escaped = match kind.as_str() {
                "stopped" | "inert" => marker.exists(),
                "network" => l.connected(Duration::from_secs(2)),
                _ => false,
            };
            clean(&marker);
            match kind.as_str() {
                "stopped" | "network" if !escaped => failures.push(format!(
                    "{}: unguarded it should escape (proving the test can see an escape) but did not: {}",
                    case.name,
                    describe(&o)
                )),
                "inert" if escaped || o.status != Status::Ok => {
                    failures.push(format!("{}: expected to be inert unguarded: {}", case.name, describe(&o)))
                }
                _ => {}
            }
        }
        // The runtime layer alone: run_once installs it but does not run the static check.
        let l = Listener::new();
        let o = run(b, &request(&case, case.profile, &marker, l.port));
        let escaped = marker.exists() || (kind == "network" && l.connected(Duration::from_millis(500)));
        clean(&marker);
        let ok = match kind.as_str() {
            "stopped" | "network" => !escaped && guard_violation(&o),
            "refused" => guard_violation(&o),
            "inert" => !escaped,
            other => panic!("{}: unknown runtime expectation '{other}'", case.name),
        };
        if !ok {
            failures.push(format!("{} ({kind}) on {}: escaped={escaped}: {}", case.name, b.kind(), describe(&o)));
        }
    }
    assert!(n >= at_least, "expected at least {at_least} runtime cases, found {n}");
    assert!(failures.is_empty(), "{} failure(s):\n\n{}", failures.len(), failures.join("\n\n"));
}

#[test]
fn runtime_layer_stops_escapes_on_process() {
    let Some(b) = backend(BackendKind::Process) else { return };
    runtime_cases(b.as_ref(), true);
}

#[test]
fn runtime_layer_stops_escapes_on_jail() {
    let Some(b) = backend(BackendKind::Jail) else { return };
    runtime_cases(b.as_ref(), false);
}

/// The guard frame reaches the driver through the microvm's agent too. A few cases
/// only: each run boots (or restores) a VM.
#[test]
fn runtime_layer_stops_escapes_on_microvm() {
    let Some(b) = backend(BackendKind::Microvm) else { return };
    let few = ["module_attribute.py", "generator_frame.py", "pandas_write_outside.py", "nfkc_import.py"];
    runtime_cases_matching(b.as_ref(), false, |name| few.contains(&name), few.len());
}

/// The guard frame reaches the driver inside wasm too (sent with the first guarded
/// cell's turn). A few cases: WASI has no sockets or processes to refuse.
#[test]
fn runtime_layer_stops_escapes_on_wasm() {
    let Some(b) = backend(BackendKind::Wasm) else { return };
    let few = ["io_open.py", "generator_frame.py", "pandas_write_outside.py", "nfkc_import.py"];
    runtime_cases_matching(b.as_ref(), false, |name| few.contains(&name), few.len());
}

/// Both layers through the service: static findings deny before a sandbox exists.
#[test]
fn both_layers_through_the_registry() {
    let Some(_) = backend(BackendKind::Process) else { return };
    let mut failures = Vec::new();
    let dir = MarkerDir::new("registry");
    for case in cases("denied") {
        if case.rules == ["global-variable"] {
            continue;
        }
        let marker = dir.marker("registry");
        let l = Listener::new();
        let mut req = request(&case, case.profile, &marker, l.port);
        req.backend = Some(BackendKind::Process);
        let mut errors = Vec::new();
        let o = registry()
            .execute(&req, None, &mut |_| {}, &mut |e| {
                if let airlock_core::Event::Error { error } = e {
                    errors.push(error)
                }
            })
            .unwrap();
        clean(&marker);
        if case.rules == ["runtime"] {
            if !guard_violation(&o) {
                failures.push(format!("{}: expected a runtime GuardViolation: {}", case.name, describe(&o)));
            }
            continue;
        }
        let ok = o.status == Status::Denied
            && o.usage.wall_ms == 0
            && o.sandbox_id.is_none()
            && !o.guard_findings.is_empty()
            && o.error.as_ref().is_some_and(|e| e.name == "GuardViolation")
            && errors.len() == 1;
        if !ok {
            failures.push(format!("{}: expected denied before start: {}", case.name, describe(&o)));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

fn python_at_least(major: u32, minor: u32) -> Result<(), String> {
    let python = Config::from_env().python;
    let out = std::process::Command::new(&python)
        .args(["-c", "import sys; print('%d.%d' % sys.version_info[:2])"])
        .output()
        .map_err(|e| e.to_string())?;
    let v = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let (a, b) = v.split_once('.').ok_or_else(|| format!("cannot read the version of {}", python.display()))?;
    let (a, b): (u32, u32) = (a.parse().map_err(|_| v.clone())?, b.parse().map_err(|_| v.clone())?);
    if (a, b) >= (major, minor) { Ok(()) } else { Err(format!("{} is Python {v}", python.display())) }
}

/// No false positives at run time: ordinary data-analysis programs run `ok` under
/// `standard`, with both layers.
#[test]
fn allowed_programs_run_under_standard() {
    let Some(_) = backend(BackendKind::Process) else { return };
    let mut failures = Vec::new();
    for case in cases("allowed") {
        if let Some(v) = &case.python {
            let (a, b) = v.split_once('.').unwrap();
            if let Err(why) = python_at_least(a.parse().unwrap(), b.parse().unwrap()) {
                eprintln!("{}: skipped: needs Python {v}; {why}", case.name);
                continue;
            }
        }
        let mut req = ExecRequest::python(case.source.clone());
        req.limits = Limits { timeout_ms: 120_000, cpu_ms: 120_000, ..Limits::default() };
        req.guard = GuardSettings::profile(GuardProfile::Standard);
        req.backend = Some(BackendKind::Process);
        let o = registry().execute(&req, None, &mut |_| {}, &mut |_| {}).unwrap();
        if o.status != Status::Ok {
            failures.push(format!("{}: {}", case.name, describe(&o)));
        }
    }
    assert!(failures.is_empty(), "false positives at run time:\n\n{}", failures.join("\n\n"));
}

/// A figure comes back as a PNG result under the guard (matplotlib's font cache, Agg
/// and the driver's rendering all work with the hooks installed).
#[test]
fn plots_render_under_the_guard() {
    let Some(_) = backend(BackendKind::Process) else { return };
    let mut req = ExecRequest::python("import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.title('x')\n");
    req.guard = GuardSettings::profile(GuardProfile::Standard);
    req.backend = Some(BackendKind::Process);
    let o = registry().execute(&req, None, &mut |_| {}, &mut |_| {}).unwrap();
    assert_eq!(o.status, Status::Ok, "{}", describe(&o));
    let png = o.results.iter().find_map(|r| r.png()).expect("a PNG result");
    assert!(png.starts_with(b"\x89PNG"));
}

/// The runtime exception is readable by a model: what was refused, and why.
#[test]
fn runtime_messages_are_readable() {
    let Some(b) = backend(BackendKind::Process) else { return };
    let mut req = ExecRequest::python("import matplotlib\nmatplotlib.subprocess.run(['true'])\n");
    req.guard = GuardSettings::profile(GuardProfile::Standard);
    let o = run(b.as_ref(), &req);
    let e = o.error.as_ref().expect("an error");
    assert_eq!(e.name, "GuardViolation", "{}", describe(&o));
    assert!(e.value.contains("airlock guard (profile 'standard')"), "{}", e.value);
    assert!(e.value.contains("subprocess.Popen"), "{}", e.value);
    assert!(!e.traceback.contains("airlock-driver"), "driver frames leak into the traceback:\n{}", e.traceback);
    assert!(e.traceback.contains("<cell-1>"), "{}", e.traceback);
    // It is a PermissionError, so code that handles refused files keeps working.
    let mut req = ExecRequest::python(
        "import pandas as pd\ntry:\n    pd.read_csv('/etc/passwd')\nexcept PermissionError as e:\n    print('refused:', e)\n",
    );
    req.guard = GuardSettings::profile(GuardProfile::Standard);
    let o = run(b.as_ref(), &req);
    assert_eq!(o.status, Status::Ok, "{}", describe(&o));
    assert!(o.stdout.contains("refused: airlock guard") && o.stdout.contains("/etc/passwd"), "{}", o.stdout);
}

fn cell(code: &str, guard: Option<&GuardSettings>) -> Cell {
    let mut c = Cell::new(Language::Python, code, &Limits::default());
    c.guard = guard.and_then(|g| g.policy(NetworkPolicy::None));
    c
}

/// Sessions: the guard is installed before the first cell and cannot be removed or
/// changed; a guarded sandbox refuses bash at run time too.
#[test]
fn a_guarded_sandbox_stays_guarded() {
    let Some(b) = backend(BackendKind::Process) else { return };
    let standard = GuardSettings::profile(GuardProfile::Standard);
    let mut sb = b.create(&SandboxSpec::new(Limits::default())).unwrap();
    let o = sb.execute(&cell("import math\nx = math.sqrt(16)\nx", Some(&standard)), &mut |_| {}).unwrap();
    assert_eq!(o.status, Status::Ok, "{}", describe(&o));
    // A later cell without a guard is still guarded.
    let o = sb.execute(&cell("import matplotlib\nmatplotlib.subprocess.run(['true'])", None), &mut |_| {}).unwrap();
    assert!(guard_violation(&o), "{}", describe(&o));
    // State survives refusals.
    let o = sb.execute(&cell("x + 1", None), &mut |_| {}).unwrap();
    assert_eq!(o.text(), Some("5.0"), "{}", describe(&o));
    // Bash runs a program: refused.
    let mut bash = Cell::new(Language::Bash, "echo hi", &Limits::default());
    bash.guard = None;
    let o = sb.execute(&bash, &mut |_| {}).unwrap();
    assert!(guard_violation(&o), "{}", describe(&o));
    // Another policy cannot be installed.
    let strict = GuardSettings::profile(GuardProfile::Strict);
    let o = sb.execute(&cell("1", Some(&strict)), &mut |_| {}).unwrap();
    assert!(guard_violation(&o), "{}", describe(&o));
    assert!(o.error.unwrap().value.contains("cannot change"));
    sb.destroy().unwrap();

    // A guard that arrives after unguarded cells is refused, not installed late.
    let mut sb = b.create(&SandboxSpec::new(Limits::default())).unwrap();
    let o = sb.execute(&cell("y = 1", None), &mut |_| {}).unwrap();
    assert_eq!(o.status, Status::Ok);
    let o = sb.execute(&cell("y", Some(&standard)), &mut |_| {}).unwrap();
    assert!(guard_violation(&o), "{}", describe(&o));
    assert!(o.error.unwrap().value.contains("first cell"));
    sb.destroy().unwrap();
}

/// `allow_open` lets the user's code open files, still confined to the workspace for
/// writes; `network: host` lets sockets connect.
#[test]
fn overrides_reach_the_runtime_layer() {
    let Some(b) = backend(BackendKind::Process) else { return };
    let dir = MarkerDir::new("allow-open");
    let marker = dir.marker("allow-open");
    let code = format!(
        "with open('inside.txt', 'w') as f:\n    f.write('ok')\nprint(open('inside.txt').read())\n\
         try:\n    open({:?}, 'w')\nexcept PermissionError as e:\n    print('outside refused')\n",
        marker.to_string_lossy()
    );
    let mut req = ExecRequest::python(code);
    req.guard = GuardSettings { allow_open: true, ..GuardSettings::profile(GuardProfile::Standard) };
    let o = run(b.as_ref(), &req);
    assert_eq!(o.status, Status::Ok, "{}", describe(&o));
    assert_eq!(o.stdout, "ok\noutside refused\n");
    assert!(!marker.exists());
    clean(&marker);

    let l = Listener::new();
    let port = l.port;
    let code = format!(
        "import pandas as pd\ntry:\n    pd.read_csv('http://127.0.0.1:{port}/x.csv')\nexcept Exception as e:\n    print(type(e).__name__)\n"
    );
    let mut req = ExecRequest::python(code);
    req.guard = GuardSettings::profile(GuardProfile::Standard);
    req.network = NetworkPolicy::Host;
    let o = run(b.as_ref(), &req);
    assert!(l.connected(Duration::from_secs(2)), "network: host must let the connection through: {}", describe(&o));
}
