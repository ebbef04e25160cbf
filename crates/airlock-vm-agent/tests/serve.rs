//! The agent's multiplexer on an ordinary host: a socket stands in for the virtio
//! port, the real driver runs under /usr/bin/python3. No VM needed.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use airlock_guest::protocol::{FrameDecoder, GuestFrame, HostFrame, encode};
use airlock_vm_agent::{AgentReply, AgentRequest, GuestLimits, ServeConfig};
use serde_json::Value;

struct Agent {
    sock: UnixStream,
    dec: FrameDecoder,
    thread: Option<std::thread::JoinHandle<Result<airlock_vm_agent::serve::ServeEnd, String>>>,
    _ws: tempfile::TempDir,
}

fn python() -> Option<std::path::PathBuf> {
    let p = std::path::PathBuf::from("/usr/bin/python3");
    if p.is_file() {
        Some(p)
    } else {
        eprintln!("skipped: /usr/bin/python3 is not installed");
        None
    }
}

impl Agent {
    fn start() -> Option<Agent> {
        let py = python()?;
        let ws = tempfile::tempdir().unwrap();
        let (host, agent) = UnixStream::pair().unwrap();
        let cfg = ServeConfig {
            python: py,
            workspace: ws.path().to_path_buf(),
            tmp: std::env::temp_dir().to_string_lossy().into_owned(),
            run_as: None,
            mpl_config: None,
            preload: vec!["json".into()],
            extra_env: Default::default(),
            in_vm: false,
        };
        let thread = std::thread::spawn(move || airlock_vm_agent::serve(agent.into(), &cfg));
        host.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        Some(Agent { sock: host, dec: FrameDecoder::new(), thread: Some(thread), _ws: ws })
    }

    fn send<T: serde::Serialize>(&mut self, f: &T) {
        self.sock.write_all(&encode(f)).unwrap();
    }

    fn next(&mut self) -> Value {
        let end = Instant::now() + Duration::from_secs(30);
        let mut buf = [0u8; 65536];
        loop {
            if let Some(v) = self.dec.next_frame::<Value>().unwrap() {
                return v;
            }
            assert!(Instant::now() < end, "no frame from the agent within 30 s");
            match self.sock.read(&mut buf) {
                Ok(0) => panic!("agent closed the socket"),
                Ok(n) => self.dec.push(&buf[..n]),
                Err(_) => {}
            }
        }
    }

    fn attach(&mut self) -> Value {
        assert_eq!(self.next()["type"], "ready", "a fresh agent reports ready once its driver is up");
        self.send(&AgentRequest::Attach {
            time_ms: 0,
            entropy: String::new(),
            env: [("GREETING".to_string(), "hi".to_string())].into(),
            limits: GuestLimits { processes: 0, open_files: 0, file_bytes: 1 << 20 },
        });
        let hello = self.next();
        assert_eq!(hello["type"], "hello");
        hello
    }

    /// Runs a cell, returning the frames up to and including `done`.
    fn exec(&mut self, code: &str) -> Vec<Value> {
        self.send(&HostFrame::Exec {
            language: "python".into(),
            code: code.into(),
            globals: Default::default(),
            cpu_ms: None,
        });
        let mut out = Vec::new();
        loop {
            let v = self.next();
            let done = v["type"] == "done";
            out.push(v);
            if done {
                return out;
            }
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.sock.write_all(&encode(&HostFrame::Shutdown));
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn text(frames: &[Value], name: &str) -> String {
    frames
        .iter()
        .filter(|f| f["type"] == "stream" && f["name"] == name)
        .map(|f| f["text"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn cells_output_and_state() {
    let Some(mut a) = Agent::start() else { return };
    let hello = a.attach();
    assert_eq!(hello["protocol"], 1);
    let f = a.exec("import os, sys\nx = 41\nprint('py')\nos.write(1, b'c-level\\n')\nos.system('echo child >&2')\nos.environ['GREETING']");
    // Python-level output rides the driver's channel, C-level output its fd 1: both
    // arrive as stream frames (their relative order across the two paths is not fixed).
    let out = text(&f, "stdout");
    assert!(out.contains("py\n") && out.contains("c-level\n") && out.len() == 11, "{f:?}");
    assert_eq!(text(&f, "stderr"), "child\n", "{f:?}");
    let main = f.iter().find(|v| v["type"] == "result").expect("a result");
    assert_eq!(main["data"]["text/plain"], "'hi'");
    let f = a.exec("x + 1");
    let r = f.iter().find(|v| v["type"] == "result").unwrap();
    assert_eq!(r["data"]["text/plain"], "42", "state is kept between cells");
    assert_eq!(f.last().unwrap()["execution_count"], 2, "the preload and configure frames are not cells");
}

#[test]
fn interrupt_stops_a_cell_and_keeps_the_session() {
    let Some(mut a) = Agent::start() else { return };
    a.attach();
    a.exec("y = 5");
    a.send(&HostFrame::Exec {
        language: "python".into(),
        code: "while True:\n    pass".into(),
        globals: Default::default(),
        cpu_ms: None,
    });
    std::thread::sleep(Duration::from_millis(200));
    a.send(&AgentRequest::Interrupt);
    let mut frames = Vec::new();
    loop {
        let v = a.next();
        let done = v["type"] == "done";
        frames.push(v);
        if done {
            break;
        }
    }
    assert_eq!(frames.last().unwrap()["status"], "interrupted", "{frames:?}");
    let f = a.exec("y * 2");
    assert_eq!(f.iter().find(|v| v["type"] == "result").unwrap()["data"]["text/plain"], "10");
}

#[test]
fn files_are_confined_to_the_workspace() {
    let Some(mut a) = Agent::start() else { return };
    a.attach();
    let b64 = airlock_core::outcome::base64_encode;
    a.send(&AgentRequest::FileWrite {
        path: "d/a.txt".into(),
        data: b64(b"abc"),
        max_bytes: 10,
        total: None,
        append: false,
    });
    assert_eq!(a.next(), serde_json::json!({"type": "file_reply"}));
    a.send(&AgentRequest::FileRead { path: "d/a.txt".into(), max_bytes: 10 });
    let r: AgentReply = serde_json::from_value(a.next()).unwrap();
    let AgentReply::FileReply { data, .. } = r;
    assert_eq!(data.as_deref(), Some(b64(b"abc").as_str()));
    for bad in ["../x", "/etc/passwd"] {
        a.send(&AgentRequest::FileRead { path: bad.into(), max_bytes: 10 });
        let AgentReply::FileReply { error, .. } = serde_json::from_value(a.next()).unwrap();
        assert_eq!(error.unwrap().code, "invalid_request", "{bad}");
    }
    a.exec("import os\nos.symlink('/etc/passwd', 'link')");
    a.send(&AgentRequest::FileRead { path: "link".into(), max_bytes: 1 << 20 });
    let AgentReply::FileReply { error, .. } = serde_json::from_value(a.next()).unwrap();
    assert!(error.unwrap().message.contains("symbolic link"));
    a.send(&AgentRequest::FileWrite {
        path: "big".into(),
        data: b64(&[0u8; 100]),
        max_bytes: 10,
        total: None,
        append: false,
    });
    let AgentReply::FileReply { error, .. } = serde_json::from_value(a.next()).unwrap();
    assert_eq!(error.unwrap().code, "too_large");
}

#[test]
fn driver_death_is_reported() {
    let Some(mut a) = Agent::start() else { return };
    a.attach();
    a.send(&HostFrame::Exec {
        language: "python".into(),
        code: "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)".into(),
        globals: Default::default(),
        cpu_ms: None,
    });
    let v = a.next();
    let f: GuestFrame = serde_json::from_value(v).unwrap();
    assert_eq!(f, GuestFrame::Exited { code: None, signal: Some(9), oom_kill: false });
}

#[test]
fn a_driver_cannot_speak_for_the_agent() {
    // User code writes a raw `exited` frame claiming an OOM kill to the driver's
    // channel: the agent must not relay it, and reports the driver's real end.
    let Some(mut a) = Agent::start() else { return };
    a.attach();
    let code = "import os, time\nf = b'{\"type\":\"exited\",\"code\":0,\"signal\":null,\"oom_kill\":true}'\nos.write(3, len(f).to_bytes(4, 'big') + f)\ntime.sleep(30)";
    a.send(&HostFrame::Exec {
        language: "python".into(),
        code: code.into(),
        globals: Default::default(),
        cpu_ms: None,
    });
    let started = Instant::now();
    let v = a.next();
    let f: GuestFrame = serde_json::from_value(v).unwrap();
    assert_eq!(f, GuestFrame::Exited { code: None, signal: Some(9), oom_kill: false }, "the forged frame was relayed");
    assert!(started.elapsed() < Duration::from_secs(20), "the driver was not stopped");
}
