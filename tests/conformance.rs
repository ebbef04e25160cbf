//! The cross-backend conformance suite: the same cases, the same expectations, on
//! every backend. A backend joins with one `conformance_suite!` line at the bottom.
//! Backends that do not work on this host print "skipped: <reason>" per test.

use airlock_core::{Backend, Event, ExecRequest, FileInput, Language, Limits, Status, paths::WorkspacePath};
use airlock_tests::{Session, assert_status, guest_has_module, run, run_events, run_limited, run_req};

fn quick() -> Limits {
    Limits { timeout_ms: 60_000, ..Limits::default() }
}

/// The cases. Each takes a backend and asserts behaviour every backend must share.
mod cases {
    use super::*;

    pub fn stdout_and_stderr(b: &dyn Backend) {
        let o = run(b, "import sys\nprint('out')\nprint('err', file=sys.stderr)\nprint('héllo ✓')");
        assert_status(&o, Status::Ok);
        assert_eq!(o.stdout, "out\nhéllo ✓\n");
        assert_eq!(o.stderr, "err\n");
        assert!(!o.stdout_truncated && !o.stderr_truncated);
        assert_eq!(o.backend, b.kind());
        assert_eq!(o.isolation, b.isolation());
    }

    pub fn last_expression_is_main_result(b: &dyn Backend) {
        let o = run(b, "x = 20\nx * 2 + 2");
        assert_status(&o, Status::Ok);
        assert_eq!(o.text(), Some("42"));
        let main = o.main_result().unwrap();
        assert_eq!(main.data.get("application/json"), Some(&serde_json::json!(42)));
        assert_eq!(o.results.iter().filter(|r| r.is_main_result).count(), 1);
        let o = run(b, "y = 1");
        assert!(o.results.is_empty(), "a statement has no result: {:?}", o.results);
        let o = run(b, "None");
        assert!(o.results.is_empty(), "None is not displayed: {:?}", o.results);
    }

    pub fn exception_has_clean_traceback(b: &dyn Backend) {
        let o = run(b, "def f():\n    return 1/0\nf()");
        assert_status(&o, Status::Error);
        let e = o.error.as_ref().expect("error info");
        assert_eq!(e.name, "ZeroDivisionError");
        assert_eq!(e.value, "division by zero");
        assert!(e.traceback.contains("return 1/0"), "traceback shows user code: {}", e.traceback);
        assert!(e.traceback.contains("line 2, in f"), "{}", e.traceback);
        assert!(!e.traceback.contains("airlock-driver") && !e.traceback.contains("driver.py"), "{}", e.traceback);
        assert!(e.traceback.starts_with("Traceback"), "{}", e.traceback);
        let o = run(b, "def broken(:\n    pass");
        assert_status(&o, Status::Error);
        assert_eq!(o.error.as_ref().unwrap().name, "SyntaxError");
    }

    pub fn exit_codes(b: &dyn Backend) {
        let o = run(b, "import sys\nsys.exit(3)");
        assert_status(&o, Status::Error);
        assert_eq!(o.exit_code, Some(3));
        let o = run(b, "import sys\nprint('bye')\nsys.exit(0)");
        assert_status(&o, Status::Ok);
        assert_eq!(o.stdout, "bye\n");
    }

    pub fn timeout_stops_a_busy_loop(b: &dyn Backend) {
        let o = run_limited(b, "while True:\n    pass", Limits { timeout_ms: 1000, ..Limits::default() });
        assert_status(&o, Status::Timeout);
        assert!(o.usage.wall_ms >= 900 && o.usage.wall_ms < 5000, "wall_ms {}", o.usage.wall_ms);
        assert!(o.reason.as_deref().unwrap_or("").contains("timeout_ms"), "{:?}", o.reason);
        let o = run_limited(b, "import time\ntime.sleep(60)", Limits { timeout_ms: 500, ..Limits::default() });
        assert_status(&o, Status::Timeout);
        assert!(o.usage.wall_ms < 4000, "wall_ms {}", o.usage.wall_ms);
    }

    pub fn output_cap(b: &dyn Backend) {
        let limits = Limits { output_bytes: 64 * 1024, ..quick() };
        let o = run_limited(b, "for i in range(200000):\n    print('x' * 99)", limits);
        assert_status(&o, Status::OutputLimit);
        assert!(o.stdout_truncated);
        assert!(o.stdout.len() as u64 <= limits.output_bytes, "{} bytes kept", o.stdout.len());
        assert!(o.stdout.starts_with(&"x".repeat(99)));
    }

    pub fn result_cap(b: &dyn Backend) {
        // The review's flood, small: output_bytes does not cover results, result_bytes does.
        let limits = Limits { output_bytes: 1024, result_bytes: 256 << 10, ..quick() };
        let mut s = Session::new(b, limits);
        assert_status(&s.cell("x = 7"), Status::Ok);
        let o = s.cell("for i in range(10):\n    display('A' * 100_000)\nprint('not reached')");
        assert_status(&o, Status::OutputLimit);
        assert!(o.results_truncated && !o.stdout_truncated, "{:?}", o.reason);
        assert!(o.reason.as_deref().unwrap_or("").contains("limits.result_bytes"), "{:?}", o.reason);
        let kept: usize = o.results.iter().map(|r| serde_json::to_vec(&r.data).unwrap().len()).sum();
        assert!((1..=(256 << 10)).contains(&kept), "{kept} bytes of results kept");
        assert!(serde_json::to_vec(&o).unwrap().len() < 512 << 10, "the outcome stays small");
        assert_eq!(o.error.as_ref().map(|e| e.name.as_str()), Some("OutputLimitError"), "{:?}", o.error);
        assert!(!o.stdout.contains("not reached"), "the cell was stopped");
        assert_eq!(s.cell("x * 6").text(), Some("42"), "the interpreter survived the stopped cell");
        // One result far past the budget: skipped unread, and the interrupt that follows
        // must not cut the driver's frame in half (the session would be lost).
        let o = s.cell("display('B' * 8_000_000)\nprint('not reached')");
        assert_status(&o, Status::OutputLimit);
        assert!(o.results.is_empty() && o.results_truncated);
        assert_eq!(s.cell("x * 6").text(), Some("42"), "the interpreter survived a skipped frame");
    }

    pub fn huge_exception_is_bounded(b: &dyn Backend) {
        let o = run(b, "raise ValueError('E' * 30_000_000)");
        assert_status(&o, Status::Error);
        let e = o.error.as_ref().expect("error info");
        assert_eq!(e.name, "ValueError");
        assert!(e.value.len() <= airlock_core::ErrorInfo::VALUE_BYTES, "{} bytes of value", e.value.len());
        assert!(e.traceback.len() <= airlock_core::ErrorInfo::TRACEBACK_BYTES, "{} bytes", e.traceback.len());
        assert!(e.value.starts_with("EEEE") && e.value.contains("truncated by airlock"), "cut with a marker");
        assert!(e.traceback.starts_with("Traceback") && e.traceback.contains("truncated by airlock"));
        assert!(serde_json::to_vec(&o).unwrap().len() < 128 << 10, "the outcome stays small");
    }

    pub fn outputs_together_are_capped(b: &dyn Backend) {
        // One 3 MiB file under five names (hard links take no room in the workspace).
        let limits = Limits { file_bytes: 8 << 20, ..quick() };
        let mut req = ExecRequest::python(
            "import os\nopen('a.bin', 'wb').write(b'x' * (3 << 20))\nn = 0\nfor name in 'bcde':\n    try:\n        os.link('a.bin', name + '.bin')\n        n += 1\n    except OSError:\n        pass\nn",
        );
        req.limits = limits;
        req.outputs = ["a", "b", "c", "d", "e"].iter().map(|n| format!("{n}.bin")).collect();
        let o = run_req(b, &req);
        if o.text() != Some("4") {
            eprintln!("skipped: {} cannot hard-link workspace files ({:?})", b.kind(), o.text());
        } else {
            let returned: Vec<&str> =
                o.files.iter().filter(|f| f.content_base64.is_some()).map(|f| f.path.as_str()).collect();
            assert_eq!(returned, ["a.bin", "b.bin"], "{:?}", o.files);
            let sent: u64 = o.files.iter().filter(|f| f.content_base64.is_some()).map(|f| f.size).sum();
            assert!(sent <= limits.file_bytes);
            for f in &o.files[2..] {
                assert!(f.error.as_deref().unwrap_or("").contains("together"), "{f:?}");
            }
            assert_status(&o, Status::OutputLimit);
            assert!(o.reason.as_deref().unwrap_or("").contains("limits.file_bytes"), "{:?}", o.reason);
        }
        // A file named twice is refused before anything runs.
        req.outputs = vec!["a.bin".into(), "./a.bin".into()];
        let err = airlock_core::run_once(b, &req, None, &mut |_| {}).unwrap_err().to_string();
        assert!(err.contains("more than once"), "{err}");
    }

    pub fn forged_frames_get_a_short_reason(b: &dyn Backend) {
        // Raw frames written to the driver's channel (or the wasm door) are the guest's
        // words: a `done` carrying a long `protocol_error` must not make a long reason.
        let o = run(
            b,
            "import json, os, time\nf = json.dumps({'type': 'done', 'status': 'error', 'protocol_error': 'P' * 900_000}).encode()\ntry:\n    import _host\n    _host.call(f)\nexcept ImportError:\n    os.write(3, len(f).to_bytes(4, 'big') + f)\ntime.sleep(2)",
        );
        assert_status(&o, Status::Killed);
        let reason = o.reason.as_deref().unwrap_or("");
        assert!(reason.contains("protocol") && reason.len() < 1024, "{} bytes of reason", reason.len());
    }

    pub fn memory_cap(b: &dyn Backend) {
        let limits = Limits { memory_bytes: 256 << 20, ..quick() };
        let o = run_limited(
            b,
            "blocks = []\nfor i in range(100):\n    blocks.append(bytearray(64 << 20))\nlen(blocks)",
            limits,
        );
        assert_status(&o, Status::MemoryLimit);
        assert!(o.reason.as_deref().unwrap_or("").contains("memory"), "{:?}", o.reason);
    }

    pub fn files_in_and_out(b: &dyn Backend) {
        let mut req = ExecRequest::python(
            "data = open('input/data.txt').read()\nopen('out.txt', 'w').write(data.upper())\nimport os\nsorted(os.listdir('.'))",
        );
        req.files.push(FileInput::text("input/data.txt", "hello airlock"));
        req.files.push(FileInput::binary("blob.bin", &[0, 1, 2, 255]));
        req.outputs = vec!["out.txt".into(), "blob.bin".into(), "missing.txt".into()];
        let o = run_req(b, &req);
        assert_status(&o, Status::Ok);
        assert!(o.text().unwrap().contains("'out.txt'"), "{:?}", o.text());
        let out = &o.files[0];
        assert_eq!(out.path, "out.txt");
        assert_eq!(
            airlock_core::outcome::base64_decode(out.content_base64.as_ref().unwrap()).unwrap(),
            b"HELLO AIRLOCK"
        );
        assert_eq!(
            airlock_core::outcome::base64_decode(o.files[1].content_base64.as_ref().unwrap()).unwrap(),
            [0, 1, 2, 255]
        );
        assert!(o.files[2].content_base64.is_none() && o.files[2].error.as_ref().unwrap().contains("does not exist"));
    }

    pub fn workspace_file_api(b: &dyn Backend) {
        let mut s = Session::new(b, quick());
        let p = |x: &str| WorkspacePath::parse(x).unwrap();
        s.sandbox().write_file(&p("dir/a.txt"), b"abc").unwrap();
        // WASI refuses absolute link targets; a link inside the workspace is still a link.
        let o = s.cell(
            "import os\ntry:\n    os.symlink('/etc/passwd', 'link')\nexcept OSError:\n    os.symlink('dir/a.txt', 'link')\nopen('dir/a.txt').read()",
        );
        assert_status(&o, Status::Ok);
        assert_eq!(o.text(), Some("'abc'"));
        let names: Vec<String> = s
            .sandbox()
            .list_files(&WorkspacePath::parse_dir("").unwrap())
            .unwrap()
            .into_iter()
            .map(|e| e.path)
            .collect();
        assert!(names.contains(&"dir/a.txt".to_string()) && names.contains(&"link".to_string()), "{names:?}");
        assert_eq!(s.sandbox().read_file(&p("dir/a.txt"), 100).unwrap(), b"abc");
        let err = s.sandbox().read_file(&p("link"), 1 << 20).unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "reading through a guest symlink must fail: {err}");
        assert!(s.sandbox().read_file(&p("dir/a.txt"), 2).is_err(), "size cap");
        s.sandbox().remove_file(&p("dir/a.txt")).unwrap();
        assert!(s.sandbox().read_file(&p("dir/a.txt"), 100).is_err());
    }

    pub fn state_is_kept_across_cells(b: &dyn Backend) {
        let mut s = Session::new(b, quick());
        assert_status(&s.cell("x = 41\ndef inc(v):\n    return v + 1"), Status::Ok);
        let o = s.cell("inc(x)");
        assert_eq!(o.text(), Some("42"));
        assert_eq!(o.execution_count, 2);
        let o = s.cell("1/0");
        assert_status(&o, Status::Error);
        assert_eq!(s.cell("x").text(), Some("41"), "an exception does not lose state");
    }

    pub fn state_survives_a_timeout(b: &dyn Backend) {
        let mut s = Session::new(b, quick());
        s.cell("x = 7");
        let o = s.cell_with(Language::Python, "while True:\n    pass", Limits { timeout_ms: 500, ..quick() });
        assert_status(&o, Status::Timeout);
        assert_eq!(o.error.as_ref().map(|e| e.name.as_str()), Some("TimeoutError"));
        assert_eq!(s.cell("x * 6").text(), Some("42"), "the interpreter survived the interrupted cell");
    }

    pub fn global_variables(b: &dyn Backend) {
        let mut req = ExecRequest::python("f'{name}: {n * 2}'");
        req.global_variables.insert("n".into(), serde_json::json!(21));
        req.global_variables.insert("name".into(), serde_json::json!("answer"));
        let o = run_req(b, &req);
        assert_eq!(o.text(), Some("'answer: 42'"));
    }

    pub fn environment_is_minimal(b: &dyn Backend) {
        let mut req = ExecRequest::python(
            "import os\nsorted(k for k in os.environ if k.startswith(('CARGO', 'RUST', 'SSH', 'AIRLOCK_T'))), os.environ['GREETING']",
        );
        req.env.insert("GREETING".into(), "hi".into());
        let o = run_req(b, &req);
        assert_status(&o, Status::Ok);
        assert_eq!(o.text(), Some("([], 'hi')"), "host variables must not leak into the guest");
    }

    pub fn bash_cells(b: &dyn Backend) {
        let mut req = ExecRequest::python("echo hi; echo oops >&2; exit 4");
        req.language = Language::Bash;
        if b.isolation() == airlock_core::Isolation::Wasm {
            // WASI has no way to start a process: the request must be refused, clearly.
            match airlock_core::run_once(b, &req, None, &mut |_| {}) {
                Err(airlock_core::Error::Invalid(msg)) => {
                    eprintln!("skipped: {} cannot run bash ({msg})", b.kind());
                    return;
                }
                other => panic!("a wasm backend must refuse bash cells as invalid, got {other:?}"),
            }
        }
        let o = run_req(b, &req);
        assert_status(&o, Status::Error);
        assert_eq!(o.exit_code, Some(4));
        assert_eq!(o.stdout, "hi\n");
        assert_eq!(o.stderr, "oops\n");
    }

    pub fn streaming_order(b: &dyn Backend) {
        let req = ExecRequest::python("print('a')\ndisplay(1)\nprint('b')\n2");
        let (o, evs) = run_events(b, &req);
        assert_status(&o, Status::Ok);
        let seq: Vec<String> = evs
            .iter()
            .map(|e| match e {
                Event::Stdout { text } => format!("out:{}", text.trim()),
                Event::Stderr { text } => format!("err:{}", text.trim()),
                Event::Result { result } => format!("result:{}:{}", result.text().unwrap_or(""), result.is_main_result),
                Event::Error { error } => format!("error:{}", error.name),
            })
            .collect();
        assert_eq!(seq, ["out:a", "result:1:false", "out:b", "result:2:true"]);
    }

    pub fn rich_results(b: &dyn Backend) {
        if !guest_has_module(b, "pandas") || !guest_has_module(b, "matplotlib") {
            eprintln!("skipped: pandas/matplotlib are not importable inside {}", b.kind());
            return;
        }
        let o = run(b, "import pandas as pd\npd.DataFrame({'A': [1, 2, 3], 'B': [4, 5, 6]})");
        assert_status(&o, Status::Ok);
        let html = o.main_result().unwrap().data.get("text/html").and_then(|v| v.as_str()).unwrap_or("");
        assert!(html.contains("<table"), "DataFrame has an HTML form: {html}");
        let o = run(b, "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.title('t')\nNone");
        assert_status(&o, Status::Ok);
        let png = o.results.iter().find_map(|r| r.png()).expect("a PNG result for the open figure");
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        assert!(o.results.iter().all(|r| !r.is_main_result));
    }

    pub fn cancel_kills_the_cell(b: &dyn Backend) {
        let mut sb = b.create(&airlock_core::SandboxSpec::new(quick())).unwrap();
        let Some(cancel) = sb.canceller() else {
            eprintln!("skipped: {} sandboxes cannot be cancelled", b.kind());
            return;
        };
        let t = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(500));
            cancel();
        });
        let cell = airlock_core::Cell::new(Language::Python, "import time\ntime.sleep(30)", &quick());
        let started = std::time::Instant::now();
        let o = sb.execute(&cell, &mut |_| {}).unwrap();
        t.join().unwrap();
        assert_status(&o, Status::Killed);
        assert!(started.elapsed().as_secs() < 10);
        assert!(!sb.is_alive());
        assert!(sb.execute(&cell, &mut |_| {}).is_err(), "a dead sandbox refuses cells");
    }
}

/// Expands to one `#[test]` per case for the backend `$get` returns (`None`: skipped).
macro_rules! conformance_cases {
    ($get:expr; $($case:ident),* $(,)?) => {$(
        #[test]
        fn $case() {
            if let Some(b) = $get {
                super::cases::$case(b.as_ref());
            }
        }
    )*};
}

/// Generates one `#[test]` per case for a backend.
macro_rules! conformance_suite {
    ($name:ident, $get:expr) => {
        mod $name {
            conformance_cases!($get;
                stdout_and_stderr,
                last_expression_is_main_result,
                exception_has_clean_traceback,
                exit_codes,
                timeout_stops_a_busy_loop,
                output_cap,
                result_cap,
                huge_exception_is_bounded,
                outputs_together_are_capped,
                forged_frames_get_a_short_reason,
                memory_cap,
                files_in_and_out,
                workspace_file_api,
                state_is_kept_across_cells,
                state_survives_a_timeout,
                global_variables,
                environment_is_minimal,
                bash_cells,
                streaming_order,
                rich_results,
                cancel_kills_the_cell,
            );
        }
    };
}

// One line per backend.
conformance_suite!(process, airlock_tests::backend(airlock_core::BackendKind::Process));
conformance_suite!(microvm, airlock_tests::backend(airlock_core::BackendKind::Microvm));
conformance_suite!(jail, airlock_tests::backend(airlock_core::BackendKind::Jail));
conformance_suite!(wasm, airlock_tests::backend(airlock_core::BackendKind::Wasm));
// The jail backend again, every sandbox forked from a zygote (fast start).
conformance_suite!(jail_zygote, airlock_tests::jail_zygote());
