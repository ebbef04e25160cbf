//! `airlock run` (the real binary) printing a guest's output to a terminal, here a
//! pseudo-terminal: escape sequences reach it shown (`^[`), never as escapes; a pipe
//! and `--json` get the guest's bytes exactly.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const AIRLOCK: &str = env!("CARGO_BIN_EXE_airlock");

/// A guest that writes to the terminal's clipboard (OSC 52), asks it for the cursor
/// position (DSR, whose answer the terminal would type into the shell), sets its
/// title, uses 8-bit C1 introducers, clears the screen from a traceback, and colours
/// a word without resetting it.
const HOSTILE: &str = r#"
import sys
print("clip:\x1b]52;c;aGVsbG8=\x07 dsr:\x1b[6n title:\x1b]0;pwned\x07 c1:\x9b6n")
print("\x1b[31mred")
sys.stderr.write("err:\x1b]52;c;ZXJy\x07\n")
sys.stderr.flush()
raise ValueError("tb:\x1b[2J")
"#;

fn args(extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = ["run", "-b", "process", "-c", HOSTILE].iter().map(|s| s.to_string()).collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

/// Runs airlock with stdout and stderr on one pseudo-terminal; returns what the
/// terminal received.
fn on_a_terminal(extra: &[&str]) -> String {
    let pty = nix::pty::openpty(None, None).expect("openpty");
    let mut child = Command::new(AIRLOCK)
        .args(args(extra))
        .env_remove("AIRLOCK_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::from(pty.slave.try_clone().unwrap()))
        .stderr(Stdio::from(pty.slave))
        .spawn()
        .expect("starting airlock");
    let mut master = std::fs::File::from(pty.master);
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        // EIO once the child (the last holder of the terminal's other end) is gone.
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        out
    });
    let end = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > end {
            let _ = child.kill();
            panic!("airlock run did not finish");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    String::from_utf8_lossy(&reader.join().unwrap()).into_owned()
}

#[test]
fn a_terminal_sees_the_guests_escapes_shown_not_obeyed() {
    let out = on_a_terminal(&[]);
    assert!(out.contains("clip:"), "the guest did not run: {out:?}");
    for raw in ["\x1b]52", "\x1b[6n", "\x1b]0;", "\u{9b}", "\x1b[2J", "\x07"] {
        assert!(!out.contains(raw), "{raw:?} reached the terminal as an escape: {out:?}");
    }
    for shown in
        ["clip:^[]52;c;aGVsbG8=^G", "dsr:^[[6n", "title:^[]0;pwned^G", "c1:^[[6n", "err:^[]52;c;ZXJy^G", "tb:^[[2J"]
    {
        assert!(out.contains(shown), "{shown:?} is not shown: {out:?}");
    }
    // Colours pass, and are reset before airlock's own status line.
    let red = out.find("\x1b[31mred").unwrap_or_else(|| panic!("the colour did not pass: {out:?}"));
    let status = out.rfind("airlock: error").expect("status line");
    assert!(out[red..status].contains("\x1b[0m"), "the guest's colour is left on: {out:?}");
}

#[test]
fn pipes_and_json_get_the_guests_bytes_exactly() {
    let o = Command::new(AIRLOCK).args(args(&[])).env_remove("AIRLOCK_URL").output().unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stdout.contains("clip:\x1b]52;c;aGVsbG8=\x07 dsr:\x1b[6n title:\x1b]0;pwned\x07 c1:\u{9b}6n\n\x1b[31mred\n"),
        "{stdout:?}"
    );
    assert!(stderr.contains("err:\x1b]52;c;ZXJy\x07\n") && stderr.contains("tb:\x1b[2J"), "{stderr:?}");

    // --json on a terminal: the JSON document, whose strings hold the exact text.
    let out = on_a_terminal(&["--json"]);
    let json = &out[out.find('{').expect("a JSON document")..];
    let v: serde_json::Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json:?}"));
    let text = v["stdout"].as_str().unwrap();
    assert!(text.contains("clip:\x1b]52;c;aGVsbG8=\x07 dsr:\x1b[6n"), "{text:?}");
}
