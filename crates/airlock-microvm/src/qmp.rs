//! A small synchronous QMP (QEMU Machine Protocol) client over a connected Unix
//! socket: greeting, capability negotiation, commands with replies, asynchronous
//! events skipped, and file descriptors passed with `getfd` (SCM_RIGHTS).

use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use airlock_core::Error;
use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
use serde_json::{Value, json};

/// A QMP connection.
#[derive(Debug)]
pub struct Qmp {
    sock: UnixStream,
    buf: Vec<u8>,
}

impl Qmp {
    /// Takes over the host end of QEMU's monitor socket and negotiates capabilities.
    pub fn connect(fd: OwnedFd, timeout: Duration) -> Result<Self, Error> {
        let sock = UnixStream::from(fd);
        sock.set_nonblocking(false).map_err(|e| Error::io("QMP socket", e))?;
        let mut q = Qmp { sock, buf: Vec::new() };
        let deadline = Instant::now() + timeout;
        let greeting = q.read_message(deadline)?;
        if greeting.get("QMP").is_none() {
            return Err(Error::host(format!("QEMU's monitor did not greet with QMP: {greeting}")));
        }
        q.execute("qmp_capabilities", None, timeout)?;
        Ok(q)
    }

    fn read_message(&mut self, deadline: Instant) -> Result<Value, Error> {
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                let text = String::from_utf8_lossy(&line);
                if text.trim().is_empty() {
                    continue;
                }
                return serde_json::from_str(text.trim())
                    .map_err(|e| Error::host(format!("QEMU sent malformed QMP ({e}): {}", text.trim())));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::host("QEMU's monitor did not answer in time"));
            }
            self.sock.set_read_timeout(Some(deadline - now)).map_err(|e| Error::io("QMP socket", e))?;
            let mut chunk = [0u8; 8192];
            match self.sock.read(&mut chunk) {
                Ok(0) => return Err(Error::host("QEMU closed its monitor (it exited)")),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io("reading QEMU's monitor", e)),
            }
        }
    }

    fn send(&mut self, cmd: &Value, fd: Option<BorrowedFd<'_>>) -> Result<(), Error> {
        let mut line = serde_json::to_vec(cmd).expect("JSON values serialise");
        line.push(b'\n');
        match fd {
            None => self.sock.write_all(&line).map_err(|e| Error::io("writing to QEMU's monitor", e)),
            Some(fd) => {
                let fds = [fd.as_raw_fd()];
                let iov = [std::io::IoSlice::new(&line)];
                let cmsg = [ControlMessage::ScmRights(&fds)];
                let n = sendmsg::<()>(self.sock.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)
                    .map_err(|e| Error::host(format!("passing a descriptor to QEMU: {e}")))?;
                if n < line.len() {
                    self.sock.write_all(&line[n..]).map_err(|e| Error::io("writing to QEMU's monitor", e))?;
                }
                Ok(())
            }
        }
    }

    /// Runs one command and returns its `return` value; events that arrive meanwhile
    /// are skipped.
    pub fn execute(&mut self, command: &str, arguments: Option<Value>, timeout: Duration) -> Result<Value, Error> {
        self.execute_with_fd(command, arguments, None, timeout)
    }

    /// Like [`Qmp::execute`], passing `fd` along (for `getfd`).
    pub fn execute_with_fd(
        &mut self,
        command: &str,
        arguments: Option<Value>,
        fd: Option<BorrowedFd<'_>>,
        timeout: Duration,
    ) -> Result<Value, Error> {
        let mut cmd = json!({ "execute": command });
        if let Some(a) = arguments {
            cmd["arguments"] = a;
        }
        self.send(&cmd, fd)?;
        let deadline = Instant::now() + timeout;
        loop {
            let msg = self.read_message(deadline)?;
            if let Some(r) = msg.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = msg.get("error") {
                let desc = e.get("desc").and_then(Value::as_str).unwrap_or("unknown error");
                return Err(Error::host(format!("QEMU refused '{command}': {desc}")));
            }
            // An event ({"event": ...}): not ours.
        }
    }

    /// The VM's run state (`running`, `paused`, `inmigrate`, `postmigrate`, ...).
    pub fn status(&mut self) -> Result<String, Error> {
        let r = self.execute("query-status", None, Duration::from_secs(5))?;
        Ok(r.get("status").and_then(Value::as_str).unwrap_or("unknown").to_string())
    }

    /// Saves the paused VM's state to `file` (QEMU's migration stream), waiting up to
    /// `timeout`.
    pub fn save_to(&mut self, file: &impl AsFd, timeout: Duration) -> Result<(), Error> {
        let t = Duration::from_secs(5);
        self.execute_with_fd("getfd", Some(json!({"fdname": "airlock-snapshot"})), Some(file.as_fd()), t)?;
        self.execute("migrate-set-parameters", Some(json!({"max-bandwidth": 64u64 << 30, "downtime-limit": 2000})), t)?;
        self.execute("migrate", Some(json!({"uri": "fd:airlock-snapshot"})), t)?;
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.execute("query-migrate", None, t)?;
            match r.get("status").and_then(Value::as_str).unwrap_or("") {
                "completed" => return Ok(()),
                "failed" | "cancelled" => {
                    let why = r.get("error-desc").and_then(Value::as_str).unwrap_or("no reason given");
                    return Err(Error::host(format!("saving the VM snapshot failed: {why}")));
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                let _ = self.execute("migrate_cancel", None, t);
                return Err(Error::host("saving the VM snapshot took too long"));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Asks QEMU to exit at once.
    pub fn quit(&mut self) -> Result<(), Error> {
        match self.execute("quit", None, Duration::from_secs(2)) {
            Ok(_) => Ok(()),
            // QEMU may close the monitor before it answers.
            Err(Error::Host(m)) if m.contains("closed its monitor") => Ok(()),
            Err(e) => Err(e),
        }
    }
}
