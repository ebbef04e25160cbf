//! Runs the Python SDK's test suite (`clients/python/tests`) against this build's
//! `airlock` binary: the SDK, its asyncio twin and its adapters (smolagents,
//! LangChain, the e2b shim) end to end over real `airlock serve` processes.
//!
//! Needs `python3` on PATH with pytest, pytest-asyncio and httpx (`bash .ci/run`
//! installs them with `.ci/setup.d/50-sdk.sh`); without them it prints
//! `skipped: <reason>` and returns. The SDK is imported from the source tree.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("the repository root exists")
}

/// Why the suite cannot run here, if it cannot.
fn missing_prerequisite(root: &Path, bin: &str) -> Option<String> {
    let probe = Command::new("python3")
        .args(["-c", "import pytest, pytest_asyncio, httpx"])
        .current_dir(root)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output();
    match probe {
        Err(e) => return Some(format!("python3 is not on PATH ({e})")),
        Ok(o) if !o.status.success() => {
            let err = String::from_utf8_lossy(&o.stderr);
            let last = err.lines().last().unwrap_or("").trim().to_string();
            return Some(format!(
                "the SDK's test dependencies are not installed ({last}); run `python3 -m pip install -e 'clients/python[test]'`"
            ));
        }
        Ok(_) => {}
    }
    let help = Command::new(bin).arg("--help").output().ok()?;
    let text = String::from_utf8_lossy(&help.stdout);
    if !text.lines().any(|l| l.trim_start().starts_with("serve")) {
        return Some("this airlock binary has no `serve` command, which the SDK talks to".into());
    }
    None
}

#[test]
fn python_sdk_suite_passes_against_airlock_serve() {
    let root = repo_root();
    let bin = env!("CARGO_BIN_EXE_airlock");
    if let Some(why) = missing_prerequisite(&root, bin) {
        println!("skipped: {why}");
        return;
    }
    let src = root.join("clients/python/src");
    let pythonpath = match std::env::var_os("PYTHONPATH") {
        Some(p) if !p.is_empty() => {
            let mut paths = vec![src.clone()];
            paths.extend(std::env::split_paths(&p));
            std::env::join_paths(paths).expect("PYTHONPATH entries are joinable")
        }
        _ => src.clone().into_os_string(),
    };
    let mut child = Command::new("python3")
        .args(["-m", "pytest", "clients/python/tests", "-q", "-rs", "-p", "no:cacheprovider"])
        .current_dir(&root)
        .env("AIRLOCK_BIN", bin)
        .env("PYTHONPATH", pythonpath)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env_remove("AIRLOCK_URL")
        .env_remove("AIRLOCK_API_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 starts");

    // Read the output on threads so that a chatty suite cannot block on a full pipe.
    let mut out = child.stdout.take().expect("stdout is piped");
    let mut err = child.stderr.take().expect("stderr is piped");
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut out, &mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut err, &mut s);
        s
    });

    let deadline = Instant::now() + Duration::from_secs(20 * 60);
    let status = loop {
        if let Some(st) = child.try_wait().expect("waiting for pytest") {
            break Some(st);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    println!("{stdout}");
    if !stderr.trim().is_empty() {
        eprintln!("{stderr}");
    }
    let status = status.unwrap_or_else(|| panic!("the Python SDK suite ran for more than 20 minutes"));
    match status.code() {
        Some(0) => {}
        Some(5) => panic!("pytest collected no tests in clients/python/tests"),
        other => panic!("the Python SDK suite failed (pytest exit status {other:?}); its output is above"),
    }
}
