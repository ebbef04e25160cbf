//! `airlock run`: one request, one fresh sandbox, output streamed live.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use airlock_core::backend::Canceller;
use airlock_core::units::format_size;
use airlock_core::{
    BackendKind, Event, ExecRequest, FileInput, GuardProfile, GuardSettings, Language, Limits, NetworkPolicy, Outcome,
    Status,
};
use airlock_service::{Config, Registry};
use anyhow::{Context, bail};

use crate::exit;
use crate::term::Sanitizer;

/// Arguments of `airlock run`.
#[derive(clap::Args, Debug)]
#[command(after_help = exit::HELP)]
pub struct RunArgs {
    /// The code to run.
    #[arg(short = 'c', long = "code", value_name = "CODE", conflicts_with = "script")]
    code: Option<String>,
    /// A file with the code to run, or `-` for standard input.
    #[arg(value_name = "FILE")]
    script: Option<PathBuf>,
    /// Backend: jail, wasm, microvm or process (default: the safest that works here).
    #[arg(short = 'b', long, env = "AIRLOCK_BACKEND", value_parser = super::backend_arg)]
    backend: Option<BackendKind>,
    /// Language: python or bash (default: from the file's extension, else python).
    #[arg(short = 'l', long = "lang", value_parser = super::language_arg)]
    lang: Option<Language>,
    /// Wall-clock limit, in seconds or with a unit (1, 0.5, 250ms, 2m). Default 30 s.
    #[arg(short = 't', long, value_parser = super::duration_arg, value_name = "SECONDS")]
    timeout: Option<u64>,
    /// CPU time limit (same units as --timeout). Default 30 s.
    #[arg(long, value_parser = super::duration_arg, value_name = "SECONDS")]
    cpu: Option<u64>,
    /// Memory limit of the sandbox (128M, 1G). Default 512M.
    #[arg(short = 'm', long, value_parser = super::size_arg, value_name = "SIZE")]
    memory: Option<u64>,
    /// Limit on stdout+stderr (64K, 1M). Default 1M.
    #[arg(long = "output-limit", value_parser = super::size_arg, value_name = "SIZE")]
    output_limit: Option<u64>,
    /// Limit on rich results together (displayed values, figures), in bytes of JSON. Default 16M.
    #[arg(long = "result-limit", value_parser = super::size_arg, value_name = "SIZE")]
    result_limit: Option<u64>,
    /// Largest file the code may write, and the workspace size. Default 64M.
    #[arg(long = "file-limit", value_parser = super::size_arg, value_name = "SIZE")]
    file_limit: Option<u64>,
    /// Processes and threads the sandbox may have. Default 64.
    #[arg(long)]
    processes: Option<u32>,
    /// Copy a local file into the workspace (as REMOTE, default its file name). Repeatable.
    #[arg(short = 'f', long = "file", value_name = "LOCAL[:REMOTE]")]
    files: Vec<String>,
    /// Copy a workspace file out after the run (to LOCAL, default its file name). Repeatable.
    #[arg(short = 'o', long = "out", value_name = "REMOTE[:LOCAL]")]
    outputs: Vec<String>,
    /// An environment variable for the code. Repeatable.
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// A Python global defined before the code runs, as JSON (e.g. n=5, name='"x"'). Repeatable.
    #[arg(long = "var", value_name = "NAME=JSON")]
    vars: Vec<String>,
    /// Network: none (default) or host.
    #[arg(long, value_parser = super::network_arg, default_value = "none")]
    network: NetworkPolicy,
    /// Guard: off (default; the backend is the boundary), standard or strict. Checks the
    /// code before anything starts and refuses escapes at run time; a safety net, not a
    /// boundary (docs/guard.md).
    #[arg(long, env = "AIRLOCK_GUARD", value_parser = super::guard_arg, default_value = "off", value_name = "PROFILE")]
    guard: GuardProfile,
    /// A module the guard allows on top of its profile's list (repeatable; `pkg.*` allows
    /// a package and all its submodules).
    #[arg(long = "allow-import", value_name = "MODULE")]
    allow_imports: Vec<String>,
    /// Let the guard allow open() (files stay confined to the workspace at run time).
    #[arg(long = "allow-open")]
    allow_open: bool,
    /// Print the full outcome as JSON instead of streaming output.
    #[arg(long)]
    json: bool,
    /// Save rich results (plots, ...) as files in this directory.
    #[arg(long = "save-results", value_name = "DIR")]
    save_results: Option<PathBuf>,
    /// The Python interpreter for native backends (default: $AIRLOCK_PYTHON, /usr/bin/python3).
    #[arg(long, env = "AIRLOCK_PYTHON")]
    python: Option<PathBuf>,
    /// jail: a root file system directory to run in instead of the host's /usr and
    /// /etc allow-list (--python is then a path inside it); anywhere on the host, /tmp
    /// included. Also $AIRLOCK_JAIL_ROOTFS.
    #[arg(long, value_name = "DIR")]
    rootfs: Option<PathBuf>,
    /// jail: a site-packages directory to make importable, read-only, at its own path
    /// (below /airlock when that path is the sandbox's own, such as /tmp/...).
    /// Repeatable; also $AIRLOCK_JAIL_SITE_PACKAGES (colon-separated).
    #[arg(long = "site-packages", value_name = "DIR")]
    site_packages: Vec<PathBuf>,
    /// Run on this `airlock serve` (e.g. http://127.0.0.1:8787) instead of in a new
    /// sandbox made by this process: the server hands out a ready sandbox from its
    /// warm pool or forks one from its zygote, so the run starts in milliseconds with
    /// the template's modules imported. Also $AIRLOCK_URL. Authenticates with
    /// $AIRLOCK_API_KEY when set.
    #[arg(long, env = "AIRLOCK_URL", value_name = "URL")]
    server: Option<String>,
    /// With --server: the server template to run on (default: the server's `default`).
    #[arg(long, value_name = "NAME", requires = "server")]
    template: Option<String>,
}

/// Builds the request from the arguments, reading files as needed.
fn build_request(a: &RunArgs) -> anyhow::Result<ExecRequest> {
    let (code, guessed) = match (&a.code, &a.script) {
        (Some(c), _) => (c.clone(), None),
        (None, Some(p)) if p.as_os_str() == "-" => {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s).context("reading code from standard input")?;
            (s, None)
        }
        (None, Some(p)) => {
            let s = std::fs::read_to_string(p).with_context(|| format!("cannot read code from '{}'", p.display()))?;
            let lang = match p.extension().and_then(|e| e.to_str()) {
                Some("sh") | Some("bash") => Some(Language::Bash),
                _ => None,
            };
            (s, lang)
        }
        (None, None) => bail!("nothing to run: give code with -c CODE, a FILE, or - to read standard input"),
    };
    let mut req = ExecRequest::python(code);
    req.language = a.lang.or(guessed).unwrap_or(Language::Python);
    if a.guard == GuardProfile::Off && (!a.allow_imports.is_empty() || a.allow_open) {
        bail!("--allow-import and --allow-open adjust the guard: add --guard standard (or strict)");
    }
    req.guard = GuardSettings { profile: a.guard, allow_imports: a.allow_imports.clone(), allow_open: a.allow_open };
    req.backend = a.backend;
    req.network = a.network;
    let d = Limits::default();
    req.limits = Limits {
        timeout_ms: a.timeout.unwrap_or(d.timeout_ms),
        cpu_ms: a.cpu.unwrap_or(d.cpu_ms),
        memory_bytes: a.memory.unwrap_or(d.memory_bytes),
        processes: a.processes.unwrap_or(d.processes),
        output_bytes: a.output_limit.unwrap_or(d.output_bytes),
        result_bytes: a.result_limit.unwrap_or(d.result_bytes),
        file_bytes: a.file_limit.unwrap_or(d.file_bytes),
        open_files: d.open_files,
    };
    for spec in &a.files {
        let (local, remote) = match spec.split_once(':') {
            Some((l, r)) => (PathBuf::from(l), r.to_string()),
            None => {
                let p = PathBuf::from(spec);
                let name = p
                    .file_name()
                    .with_context(|| format!("--file '{spec}' names no file"))?
                    .to_string_lossy()
                    .into_owned();
                (p, name)
            }
        };
        let bytes = std::fs::read(&local).with_context(|| format!("--file: cannot read '{}'", local.display()))?;
        req.files.push(FileInput::binary(remote, &bytes));
    }
    for spec in &a.outputs {
        let remote = spec.split_once(':').map(|(r, _)| r).unwrap_or(spec);
        req.outputs.push(remote.to_string());
    }
    for kv in &a.env {
        let (k, v) = kv.split_once('=').with_context(|| format!("--env '{kv}' is not KEY=VALUE"))?;
        req.env.insert(k.to_string(), v.to_string());
    }
    for kv in &a.vars {
        let (k, v) = kv.split_once('=').with_context(|| format!("--var '{kv}' is not NAME=JSON"))?;
        let value: serde_json::Value = serde_json::from_str(v)
            .with_context(|| format!("--var {k}: '{v}' is not JSON (quote strings: {k}='\"text\"')"))?;
        req.global_variables.insert(k.to_string(), value);
    }
    req.validate(&Limits::generous_max())?;
    Ok(req)
}

/// The running sandbox's canceller, for Ctrl-C.
static CANCEL: Mutex<Option<Canceller>> = Mutex::new(None);

fn install_ctrlc() {
    let _ = ctrlc::set_handler(|| {
        let c = CANCEL.lock().ok().and_then(|g| g.clone());
        match c {
            Some(cancel) => cancel(),
            None => std::process::exit(130),
        }
    });
}

/// Runs the request on the server at `url`, streaming its events to `on_event`.
fn run_remote(url: &str, req: &ExecRequest, on_event: &mut dyn FnMut(Event)) -> anyhow::Result<Outcome> {
    use std::io::BufRead;
    let url = url.trim_end_matches('/');
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        bail!("--server '{url}' is not an http:// or https:// URL");
    }
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let mut call = agent.post(&format!("{url}/v1/execute")).header("Accept", "application/x-ndjson");
    if let Some(key) = std::env::var("AIRLOCK_API_KEY").ok().filter(|k| !k.is_empty()) {
        call = call.header("Authorization", &format!("Bearer {key}"));
    }
    let mut resp = call.send_json(req).with_context(|| {
        format!(
            "cannot reach the airlock server at {url} (is `airlock serve` running? unset AIRLOCK_URL to run locally)"
        )
    })?;
    let status = resp.status();
    if !status.is_success() {
        let body: serde_json::Value = resp.body_mut().read_json().unwrap_or_default();
        let msg = body["error"]["message"].as_str().map(str::to_string).unwrap_or_else(|| body.to_string());
        bail!("the server at {url} refused the run (HTTP {status}): {msg}");
    }
    let reader = std::io::BufReader::new(resp.body_mut().as_reader());
    for line in reader.lines() {
        let line = line.with_context(|| format!("reading the run's events from {url}"))?;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(&line).with_context(|| format!("the server sent a malformed event: {line}"))?;
        match v["type"].as_str() {
            Some("stdout") => on_event(Event::Stdout { text: v["text"].as_str().unwrap_or_default().to_string() }),
            Some("stderr") => on_event(Event::Stderr { text: v["text"].as_str().unwrap_or_default().to_string() }),
            Some("result") => on_event(Event::Result { result: serde_json::from_value(v)? }),
            Some("error") => on_event(Event::Error { error: serde_json::from_value(v)? }),
            Some("end") => {
                if let Some(o) = v.get("outcome").filter(|o| !o.is_null()) {
                    return Ok(serde_json::from_value(o.clone())?);
                }
                bail!("the server could not run it: {}", v["error"]["message"].as_str().unwrap_or("unknown error"));
            }
            _ => {}
        }
    }
    bail!("the server at {url} closed the connection before the run ended")
}

/// Runs `airlock run`.
pub fn main(a: RunArgs) -> anyhow::Result<i32> {
    let mut req = build_request(&a)?;
    req.template = a.template.clone();
    // With --server, --python, --rootfs and --site-packages (local settings) do not
    // apply: the server runs with its own.
    let mut config = Config::from_env();
    if let Some(p) = &a.python {
        config.python = p.clone();
    }
    if let Some(r) = &a.rootfs {
        config.jail.rootfs = Some(r.clone());
    }
    config.jail.site_packages.extend(a.site_packages.iter().cloned());
    let registry = Registry::new(config);
    if req.backend.is_none()
        && !a.json
        && a.server.is_none()
        && registry.resolve(None).is_ok_and(|b| b.kind() == BackendKind::Process)
    {
        eprintln!(
            "airlock: warning: no isolating backend works on this host (see `airlock doctor`); \
             running with backend 'process', which has NO ISOLATION"
        );
    }
    install_ctrlc();
    let started = Instant::now();

    let json = a.json;
    let saved = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut n_results = 0usize;
    let save_dir = a.save_results.clone();
    let saved_in = saved.clone();
    // Guest text reaches a terminal with its control characters shown, not obeyed
    // (see term.rs); pipes and files get it byte for byte.
    let mut out_term = Sanitizer::for_terminal(std::io::stdout().is_terminal());
    let mut err_term = Sanitizer::for_terminal(std::io::stderr().is_terminal());
    let mut on_event = |ev: Event| {
        if json {
            return;
        }
        match ev {
            Event::Stdout { text } => emit(&mut std::io::stdout().lock(), &mut out_term, &text),
            Event::Stderr { text } => emit(&mut std::io::stderr().lock(), &mut err_term, &text),
            Event::Result { result } => {
                n_results += 1;
                if let Some(dir) = &save_dir
                    && let Some(name) = save_result(dir, n_results, &result)
                {
                    saved_in.lock().unwrap_or_else(|p| p.into_inner()).push(name);
                }
                if result.is_main_result {
                    if let Some(t) = result.text() {
                        emit(&mut std::io::stdout().lock(), &mut out_term, &format!("{t}\n"));
                    }
                } else {
                    let kinds: Vec<&str> =
                        result.data.keys().filter(|k| *k != "text/plain").map(|s| s.as_str()).collect();
                    if kinds.is_empty() {
                        if let Some(t) = result.text() {
                            emit(&mut std::io::stdout().lock(), &mut out_term, &format!("{t}\n"));
                        }
                    } else if save_dir.is_none() {
                        let line =
                            format!("[result: {} — use --save-results DIR or --json to get it]\n", kinds.join(", "));
                        emit(&mut std::io::stderr().lock(), &mut err_term, &line);
                    }
                }
            }
            Event::Error { error } if !error.traceback.is_empty() => {
                let mut tb = error.traceback;
                if !tb.ends_with('\n') {
                    tb.push('\n');
                }
                emit(&mut std::io::stderr().lock(), &mut err_term, &tb);
            }
            Event::Error { .. } => {}
        }
    };
    let mut on_start = |c: Option<Canceller>| {
        if let Ok(mut g) = CANCEL.lock() {
            *g = c;
        }
    };
    let outcome = match a.server.as_deref().filter(|s| !s.is_empty()) {
        Some(url) => run_remote(url, &req, &mut on_event)?,
        None => registry.execute(&req, None, &mut on_start, &mut on_event)?,
    };
    // Whatever the guest left unfinished or coloured ends before airlock's own lines.
    finish(&mut std::io::stdout().lock(), &mut out_term);
    finish(&mut std::io::stderr().lock(), &mut err_term);
    write_outputs(&a, &outcome)?;

    if json {
        println!("{}", serde_json::to_string_pretty(&outcome)?);
    } else {
        for name in saved.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            eprintln!("[saved {name}]");
        }
        status_line(&outcome, started.elapsed().as_millis() as u64);
    }
    Ok(exit::for_outcome(&outcome))
}

/// Writes guest text to a stream, through its sanitizer when it is a terminal.
fn emit(w: &mut dyn Write, term: &mut Option<Sanitizer>, text: &str) {
    match term {
        Some(t) => {
            let mut shown = String::with_capacity(text.len());
            t.push(text, &mut shown);
            let _ = w.write_all(shown.as_bytes());
        }
        None => {
            let _ = w.write_all(text.as_bytes());
        }
    }
    let _ = w.flush();
}

/// Ends a stream's guest text: an unfinished sequence shown, colours reset.
fn finish(w: &mut dyn Write, term: &mut Option<Sanitizer>) {
    if let Some(t) = term {
        let mut tail = String::new();
        t.finish(&mut tail);
        let _ = w.write_all(tail.as_bytes());
        let _ = w.flush();
    }
}

/// `text` as it may be written to standard error: control characters shown when that
/// is a terminal (see term.rs).
pub fn for_stderr(text: &str) -> std::borrow::Cow<'_, str> {
    if std::io::stderr().is_terminal() { Sanitizer::clean(text).into() } else { text.into() }
}

/// Saves files fetched with `--out`.
fn write_outputs(a: &RunArgs, o: &Outcome) -> anyhow::Result<()> {
    for (spec, file) in a.outputs.iter().zip(&o.files) {
        let local = match spec.split_once(':') {
            Some((_, l)) => PathBuf::from(l),
            None => PathBuf::from(file.path.rsplit('/').next().unwrap_or(&file.path)),
        };
        match &file.content_base64 {
            Some(b64) => {
                let bytes = airlock_core::outcome::base64_decode(b64).context("decoding an output file")?;
                std::fs::write(&local, bytes).with_context(|| format!("writing '{}'", local.display()))?;
                if !a.json {
                    eprintln!("[copied {} -> {}]", file.path, local.display());
                }
            }
            None => eprintln!(
                "airlock: could not copy '{}': {}",
                for_stderr(&file.path),
                for_stderr(file.error.as_deref().unwrap_or("unknown error"))
            ),
        }
    }
    Ok(())
}

fn save_result(dir: &std::path::Path, n: usize, r: &airlock_core::ResultBundle) -> Option<String> {
    let _ = std::fs::create_dir_all(dir);
    for (mime, ext) in [("image/png", "png"), ("image/jpeg", "jpg"), ("image/svg+xml", "svg"), ("text/html", "html")] {
        let Some(v) = r.data.get(mime).and_then(|v| v.as_str()) else { continue };
        let bytes = if ext == "png" || ext == "jpg" {
            airlock_core::outcome::base64_decode(v).ok()?
        } else {
            v.as_bytes().to_vec()
        };
        let path = dir.join(format!("result-{n}.{ext}"));
        std::fs::write(&path, bytes).ok()?;
        return Some(path.display().to_string());
    }
    None
}

/// The one-line summary printed after the run.
fn status_line(o: &Outcome, total_ms: u64) {
    let color = std::io::stderr().is_terminal();
    let (on, off) = match (color, o.status) {
        (false, _) => ("", ""),
        (true, Status::Ok) => ("\x1b[32m", "\x1b[0m"),
        (true, _) => ("\x1b[31m", "\x1b[0m"),
    };
    let iso = if o.backend == BackendKind::Process { " (NO ISOLATION)".to_string() } else { String::new() };
    let mut line = format!("{on}airlock: {}{off}", o.status);
    if let Some(r) = &o.reason
        && (o.status != Status::Error || o.error.as_ref().is_none_or(|e| e.traceback.is_empty()))
    {
        // The reason can quote the guest (an exception's message).
        line.push_str(&format!(" — {}", for_stderr(r)));
    }
    line.push_str(&format!(
        " · {}{iso} · {} ms (run {} ms) · cpu {} ms · peak {}",
        o.backend,
        total_ms,
        o.usage.wall_ms,
        o.usage.cpu_ms,
        format_size(o.usage.peak_memory_bytes)
    ));
    if o.stdout_truncated || o.stderr_truncated {
        line.push_str(" · output truncated");
    }
    eprintln!("{line}");
}
