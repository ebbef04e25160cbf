//! The escape corpus: small hostile programs (in `tests/escape/`, each with its
//! expected fate in its header) run against every backend that claims to contain
//! them. Every check looks at the host side — files, listeners, processes — not only
//! at the sandbox's exit status.
//!
//! A backend joins with one `escape_suite!` line at the bottom. The checks are shown
//! to detect real escapes by running some of them on `process` (no isolation), where
//! they must report the escape.

use std::io::ErrorKind;
use std::net::{TcpListener, UdpSocket};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use airlock_core::{Backend, Cell, ExecRequest, Language, Limits, Sandbox, SandboxSpec, Status};
use airlock_tests::run_req;

/// A name no other test or process uses.
fn unique(tag: &str) -> String {
    let n = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    format!("airlock-escape-{tag}-{}-{n}", std::process::id())
}

/// A number-like marker `sleep` accepts, unique to this run, to find stray processes by cmdline.
fn marker_seconds() -> String {
    let n = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().subsec_nanos();
    format!("1000.{}{:09}", std::process::id(), n)
}

fn request(program: &str, vars: serde_json::Value, limits: Limits) -> ExecRequest {
    let mut r = ExecRequest::python(program);
    r.limits = limits;
    if let serde_json::Value::Object(m) = vars {
        r.global_variables = m;
    }
    r
}

/// Host processes whose command line contains `marker`; kills them.
fn survivors(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    for _ in 0..20 {
        found.clear();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let name = entry.file_name();
            let Some(pid) = name.to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
            let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) else { continue };
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(marker) {
                found.push(format!("{pid}: {cmd}"));
            }
        }
        if found.is_empty() {
            return found;
        }
        // Give the kernel a moment to finish killing a cgroup or VM.
        std::thread::sleep(Duration::from_millis(100));
    }
    for f in &found {
        if let Some(pid) = f.split(':').next() {
            let _ = std::process::Command::new("kill").args(["-9", pid]).status();
        }
    }
    found
}

/// A sandbox kept alive while the host looks at what it holds; destroyed on drop.
struct Held(Option<Box<dyn Sandbox>>);

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(sb) = self.0.take() {
            let _ = sb.destroy();
        }
    }
}

/// Runs `program` (with `vars` set first) as the first cell of a new sandbox and keeps
/// the sandbox, with whatever the program left open, alive.
fn hold(b: &dyn Backend, program: &str, vars: serde_json::Value) -> (Held, airlock_core::Outcome) {
    let limits = Limits::default();
    let mut sb = b.create(&SandboxSpec::new(limits)).unwrap_or_else(|e| panic!("create on {}: {e}", b.kind()));
    let mut code = String::new();
    if let serde_json::Value::Object(m) = vars {
        for (k, v) in m {
            code.push_str(&format!("{k} = {v}\n"));
        }
    }
    code.push_str(program);
    let o = sb
        .execute(&Cell::new(Language::Python, code, &limits), &mut |_| {})
        .unwrap_or_else(|e| panic!("execute on {}: {e}", b.kind()));
    (Held(Some(sb)), o)
}

/// The number after `key` in a program's `key N REASON` line (0 when absent).
fn count(stdout: &str, key: &str) -> u64 {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn last_errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// What this process (host root, or the test's own user) can still do with the
/// per-user kernel counters a sandbox might have exhausted.
mod host {
    use super::last_errno;

    /// A new inotify instance and one watch on it.
    pub fn inotify() -> Result<(), String> {
        // SAFETY: a new descriptor, closed below.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(format!("inotify_init1: {}", last_errno()));
        }
        // SAFETY: a NUL-terminated path; fd is ours.
        let w = unsafe { libc::inotify_add_watch(fd, c"/".as_ptr(), libc::IN_ATTRIB) };
        let e = last_errno();
        // SAFETY: closes the descriptor opened above.
        unsafe { libc::close(fd) };
        if w < 0 { Err(format!("inotify_add_watch: {e}")) } else { Ok(()) }
    }

    /// A POSIX timer (it reserves one queued signal of the caller's budget), deleted again.
    pub fn timer() -> Result<(), String> {
        // SAFETY: a zeroed sigevent asking for no notification; the timer is deleted below.
        unsafe {
            let mut ev: libc::sigevent = std::mem::zeroed();
            ev.sigev_notify = libc::SIGEV_NONE;
            let mut t: libc::timer_t = std::mem::zeroed();
            if libc::timer_create(libc::CLOCK_MONOTONIC, &mut ev, &mut t) != 0 {
                return Err(format!("timer_create: {}", last_errno()));
            }
            libc::timer_delete(t);
        }
        Ok(())
    }

    /// A POSIX message queue of the default size, removed again.
    pub fn mqueue() -> Result<(), String> {
        let name = std::ffi::CString::new(super::unique("mq")).unwrap();
        // SAFETY: the raw call takes a NUL-terminated name (no leading slash) and a null
        // attribute pointer; the descriptor is closed and the queue unlinked below.
        unsafe {
            let fd = libc::syscall(
                libc::SYS_mq_open,
                name.as_ptr(),
                libc::O_CREAT | libc::O_RDWR | libc::O_CLOEXEC,
                0o600,
                std::ptr::null::<u8>(),
            );
            if fd < 0 {
                return Err(format!("mq_open: {}", last_errno()));
            }
            libc::close(fd as i32);
            libc::syscall(libc::SYS_mq_unlink, name.as_ptr());
        }
        Ok(())
    }
}

mod cases {
    use super::*;

    pub type Verdict = Result<(), String>;

    /// Runs `program` with `greedy` inputs in one sandbox that keeps what it got; then
    /// the host's `check` must still work, and a second sandbox running it with `modest`
    /// inputs must still get `key` (when the first got any: a backend where the
    /// facility does not exist has nothing to share).
    fn counter_case(
        b: &dyn Backend,
        program: &str,
        greedy: serde_json::Value,
        modest: serde_json::Value,
        key: &str,
        check: Option<fn() -> Result<(), String>>,
    ) -> Verdict {
        let (first, o1) = hold(b, program, greedy);
        if o1.status != Status::Ok {
            return Err(format!("the program failed: {} {:?}\n{}\n{}", o1.status, o1.reason, o1.stdout, o1.stderr));
        }
        let host = check.map(|c| c()).unwrap_or(Ok(()));
        let (second, o2) = hold(b, program, modest);
        drop((first, second));
        let one_line = |s: &str| s.trim().replace('\n', " | ");
        eprintln!("{} {key}: first sandbox: {}; second: {}", b.kind(), one_line(&o1.stdout), one_line(&o2.stdout));
        if let Err(e) = host {
            return Err(format!(
                "the host was starved while a sandbox held its share: {e}\nthe sandbox: {}",
                o1.stdout
            ));
        }
        if count(&o1.stdout, key) > 0 && count(&o2.stdout, key) == 0 {
            return Err(format!(
                "a second sandbox was starved while the first held its share:\nfirst: {}second: {}{}",
                o1.stdout, o2.stdout, o2.stderr
            ));
        }
        Ok(())
    }

    pub fn inotify_instances(b: &dyn Backend) -> Verdict {
        let program = include_str!("escape/inotify_exhaust.py");
        let greedy = serde_json::json!({"instances": 1000, "watches": 0});
        let modest = serde_json::json!({"instances": 1, "watches": 1});
        counter_case(b, program, greedy, modest, "instances", Some(host::inotify))
    }

    pub fn inotify_watches(b: &dyn Backend) -> Verdict {
        let program = include_str!("escape/inotify_exhaust.py");
        let greedy = serde_json::json!({"instances": 16, "watches": 400_000});
        let modest = serde_json::json!({"instances": 1, "watches": 1});
        counter_case(b, program, greedy, modest, "watches", Some(host::inotify))
    }

    pub fn signal_queue(b: &dyn Backend) -> Verdict {
        let program = include_str!("escape/signal_queue.py");
        let greedy = serde_json::json!({"signals": 300_000});
        let modest = serde_json::json!({"signals": 1});
        counter_case(b, program, greedy, modest, "signals", Some(host::timer))
    }

    pub fn mqueue_fill(b: &dyn Backend) -> Verdict {
        let program = include_str!("escape/mqueue_fill.py");
        let greedy = serde_json::json!({"queues": 1000});
        let modest = serde_json::json!({"queues": 1});
        counter_case(b, program, greedy, modest, "queues", Some(host::mqueue))
    }

    pub fn shm_lock_fill(b: &dyn Backend) -> Verdict {
        let program = include_str!("escape/shm_lock_fill.py");
        let greedy = serde_json::json!({"segments": 4096, "segment_bytes": 65536, "mlock_bytes": 1 << 20});
        let modest = serde_json::json!({"segments": 1, "segment_bytes": 4096, "mlock_bytes": 0});
        counter_case(b, program, greedy, modest, "segments", None)
    }

    /// SysV IPC objects live in the sandbox's IPC namespace: the host sees none under
    /// the key the sandbox used, and a full table there leaves the host's alone.
    pub fn sysv_ipc(b: &dyn Backend) -> Verdict {
        sysv_ipc_with(b, 40_000)
    }

    pub fn sysv_ipc_with(b: &dyn Backend, queues: u32) -> Verdict {
        let key = (std::process::id() as i32 & 0xffff) << 12
            | (SystemTime::now().duration_since(UNIX_EPOCH).unwrap().subsec_micros() as i32 & 0xfff)
            | 0x4000_0000;
        let vars = serde_json::json!({"key": key, "queues": queues});
        let (held, o) = hold(b, include_str!("escape/sysv_ipc.py"), vars);
        // SAFETY: System V lookups by key with no creation; anything found is removed.
        let (found, table_full) = unsafe {
            let mut found = Vec::new();
            let q = libc::msgget(key, 0);
            if q >= 0 {
                libc::msgctl(q, libc::IPC_RMID, std::ptr::null_mut());
                found.push("message queue");
            }
            let m = libc::shmget(key, 0, 0);
            if m >= 0 {
                libc::shmctl(m, libc::IPC_RMID, std::ptr::null_mut());
                found.push("shared memory");
            }
            let s = libc::semget(key, 0, 0);
            if s >= 0 {
                libc::semctl(s, 0, libc::IPC_RMID);
                found.push("semaphore set");
            }
            let mine = libc::msgget(libc::IPC_PRIVATE, libc::IPC_CREAT | 0o600);
            let full = (mine < 0).then(last_errno);
            if mine >= 0 {
                libc::msgctl(mine, libc::IPC_RMID, std::ptr::null_mut());
            }
            (found, full)
        };
        drop(held);
        if !found.is_empty() {
            return Err(format!("the sandbox made host SysV objects: {found:?}\n{}", o.stdout));
        }
        if let Some(e) = table_full {
            return Err(format!("the host could not make a message queue: {e}\n{}", o.stdout));
        }
        Ok(())
    }

    /// Files of `/proc` that tell about the host, with what the host itself reads there.
    fn host_proc_tokens() -> Vec<(String, String)> {
        let mut t = Vec::new();
        let mut add = |what: &str, v: Option<String>| {
            if let Some(v) = v.map(|v| v.trim().to_string()).filter(|v| v.len() >= 8) {
                t.push((what.to_string(), v));
            }
        };
        add("/proc/cmdline", std::fs::read_to_string("/proc/cmdline").ok().map(|c| c.chars().take(120).collect()));
        add("boot_id", std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok());
        let line = |path: &str, prefix: &str| {
            std::fs::read_to_string(path).ok()?.lines().find(|l| l.starts_with(prefix)).map(str::to_string)
        };
        add("/proc/stat btime", line("/proc/stat", "btime "));
        add("/proc/meminfo MemTotal", line("/proc/meminfo", "MemTotal:"));
        if let Ok(config) = std::fs::read("/proc/config.gz") {
            add("/proc/config.gz", Some(sha256_hex(&config)));
        }
        t
    }

    fn sha256_hex(data: &[u8]) -> String {
        use sha2::Digest;
        sha2::Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Nothing the host's own `/proc` says about its kernel, boot or memory shows
    /// through the sandbox's.
    pub fn proc_leaks(b: &dyn Backend) -> Verdict {
        let o = run_req(b, &request(include_str!("escape/proc_leaks.py"), serde_json::json!({}), Limits::default()));
        let leaked: Vec<String> =
            host_proc_tokens().into_iter().filter(|(_, v)| o.stdout.contains(v.as_str())).map(|(w, _)| w).collect();
        if leaked.is_empty() { Ok(()) } else { Err(format!("the host's {leaked:?} showed through:\n{}", o.stdout)) }
    }

    pub fn read_host_secret(b: &dyn Backend) -> Verdict {
        let program = include_str!("escape/read_host_secret.py");
        let o = run_req(b, &request(program, serde_json::json!({"host_pid": std::process::id()}), Limits::default()));
        let mut secrets: Vec<String> = Vec::new();
        if let Ok(shadow) = std::fs::read_to_string("/etc/shadow") {
            secrets.extend(shadow.lines().filter(|l| l.len() > 8).take(3).map(|l| l.to_string()));
        }
        if let Ok(dir) = std::env::var("CARGO_MANIFEST_DIR") {
            secrets.push(format!("CARGO_MANIFEST_DIR={dir}"));
        }
        for s in &secrets {
            if o.stdout.contains(s.as_str()) {
                return Err(format!("host secret {s:?} was read:\n{}", o.stdout));
            }
        }
        Ok(())
    }

    pub fn write_outside_workspace(b: &dyn Backend) -> Verdict {
        let marker = unique("write");
        let host_tmp = std::env::temp_dir();
        let python = std::fs::canonicalize(airlock_tests::registry().config().python.clone()).ok();
        let before = python.as_ref().and_then(|p| std::fs::read(p).ok());
        let program = include_str!("escape/write_outside_workspace.py");
        let vars = serde_json::json!({"marker": marker, "host_tmp": host_tmp});
        let o = run_req(b, &request(program, vars, Limits::default()));
        let mut escaped = Vec::new();
        for dir in ["/tmp", "/etc", "/root", "/var/tmp", host_tmp.to_str().unwrap()] {
            let p = std::path::Path::new(dir).join(&marker);
            if p.exists() {
                let _ = std::fs::remove_file(&p);
                escaped.push(p.display().to_string());
            }
        }
        if let (Some(p), Some(before)) = (python, before)
            && std::fs::read(&p).ok().as_ref() != Some(&before)
        {
            escaped.push(format!("{} was modified", p.display()));
        }
        if escaped.is_empty() { Ok(()) } else { Err(format!("wrote on the host: {escaped:?}\n{}", o.stdout)) }
    }

    pub fn host_network(b: &dyn Backend) -> Verdict {
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let abstract_name = unique("sock");
        let unix = UnixListener::bind_addr(&SocketAddr::from_abstract_name(abstract_name.as_bytes()).unwrap()).unwrap();
        let vars = serde_json::json!({
            "tcp_port": tcp.local_addr().unwrap().port(),
            "udp_port": udp.local_addr().unwrap().port(),
            "abstract_name": abstract_name,
        });
        let o = run_req(b, &request(include_str!("escape/host_network.py"), vars, Limits::default()));
        tcp.set_nonblocking(true).unwrap();
        udp.set_nonblocking(true).unwrap();
        unix.set_nonblocking(true).unwrap();
        let mut reached = Vec::new();
        if !matches!(tcp.accept(), Err(ref e) if e.kind() == ErrorKind::WouldBlock) {
            reached.push("tcp");
        }
        let mut buf = [0u8; 64];
        if !matches!(udp.recv_from(&mut buf), Err(ref e) if e.kind() == ErrorKind::WouldBlock) {
            reached.push("udp");
        }
        if !matches!(unix.accept(), Err(ref e) if e.kind() == ErrorKind::WouldBlock) {
            reached.push("abstract unix socket");
        }
        if reached.is_empty() { Ok(()) } else { Err(format!("reached host listeners: {reached:?}\n{}", o.stdout)) }
    }

    pub fn signal_host_process(b: &dyn Backend) -> Verdict {
        let mut victim = std::process::Command::new("sleep").arg("60").spawn().unwrap();
        let vars = serde_json::json!({"host_pid": victim.id()});
        let o = run_req(b, &request(include_str!("escape/signal_host_process.py"), vars, Limits::default()));
        std::thread::sleep(Duration::from_millis(100));
        let alive = victim.try_wait().unwrap().is_none();
        let _ = victim.kill();
        let _ = victim.wait();
        if alive { Ok(()) } else { Err(format!("a host process was killed from the sandbox:\n{}", o.stdout)) }
    }

    pub fn fork_bomb(b: &dyn Backend) -> Verdict {
        let marker = marker_seconds();
        let limits = Limits { processes: 32, timeout_ms: 20_000, ..Limits::default() };
        let o = run_req(
            b,
            &request(include_str!("escape/fork_bomb.py"), serde_json::json!({"marker_seconds": marker}), limits),
        );
        let left = survivors(&marker);
        if !left.is_empty() {
            return Err(format!("{} processes outlived the sandbox: {:?}", left.len(), &left[..left.len().min(3)]));
        }
        if o.stdout.contains("fork stopped after") || o.status != Status::Ok {
            Ok(())
        } else {
            Err(format!("the fork bomb was not limited: {}", o.stdout))
        }
    }

    pub fn memory_bomb(b: &dyn Backend) -> Verdict {
        let limits = Limits { memory_bytes: 256 << 20, timeout_ms: 30_000, ..Limits::default() };
        let o = run_req(b, &request(include_str!("escape/memory_bomb.py"), serde_json::json!({}), limits));
        if o.status == Status::MemoryLimit {
            Ok(())
        } else {
            Err(format!("expected memory_limit, got {} ({:?})", o.status, o.reason))
        }
    }

    pub fn cpu_bomb(b: &dyn Backend) -> Verdict {
        let marker = marker_seconds();
        let limits = Limits { timeout_ms: 1000, ..Limits::default() };
        let o = run_req(
            b,
            &request(include_str!("escape/cpu_bomb.py"), serde_json::json!({"marker_seconds": marker}), limits),
        );
        let left = survivors(&marker);
        if !left.is_empty() {
            return Err(format!("busy processes outlived the sandbox: {left:?}"));
        }
        if o.status != Status::Timeout {
            return Err(format!("expected timeout, got {} ({:?})", o.status, o.reason));
        }
        if o.usage.wall_ms > 6000 {
            return Err(format!("the timeout took {} ms to act", o.usage.wall_ms));
        }
        Ok(())
    }

    pub fn disk_fill(b: &dyn Backend) -> Verdict {
        let limits = Limits { file_bytes: 16 << 20, timeout_ms: 30_000, ..Limits::default() };
        let o = run_req(b, &request(include_str!("escape/disk_fill.py"), serde_json::json!({}), limits));
        if o.status == Status::Ok {
            return Err(format!("the disk fill was not stopped: {}", o.stdout));
        }
        Ok(())
    }

    pub fn symlink_copy_out(b: &dyn Backend) -> Verdict {
        let mut req = request(include_str!("escape/symlink_copy_out.py"), serde_json::json!({}), Limits::default());
        req.outputs = vec!["out.txt".into(), "d/etc/passwd".into()];
        let o = run_req(b, &req);
        if o.stdout.trim() != "planted" {
            return Ok(()); // the guest could not even plant the links
        }
        for f in &o.files {
            if f.content_base64.is_some() {
                return Err(format!("copy-out followed a planted symlink: {}", f.path));
            }
        }
        Ok(())
    }

    pub fn output_flood(b: &dyn Backend) -> Verdict {
        let marker = marker_seconds();
        let limits = Limits { output_bytes: 256 * 1024, timeout_ms: 20_000, ..Limits::default() };
        let started = std::time::Instant::now();
        let o = run_req(
            b,
            &request(include_str!("escape/output_flood.py"), serde_json::json!({"marker_seconds": marker}), limits),
        );
        let left = survivors(&marker);
        if !left.is_empty() {
            return Err(format!("flooding processes outlived the sandbox: {left:?}"));
        }
        let kept = (o.stdout.len() + o.stderr.len()) as u64;
        if kept > limits.output_bytes {
            return Err(format!("airlock kept {kept} bytes of output, more than the {} allowed", limits.output_bytes));
        }
        if o.status != Status::OutputLimit {
            return Err(format!("expected output_limit, got {} ({:?})", o.status, o.reason));
        }
        if started.elapsed() > Duration::from_secs(15) {
            return Err(format!("stopping the flood took {:?}", started.elapsed()));
        }
        Ok(())
    }

    pub fn result_flood(b: &dyn Backend) -> Verdict {
        let limits = Limits { result_bytes: 1 << 20, timeout_ms: 20_000, ..Limits::default() };
        let started = std::time::Instant::now();
        let o = run_req(b, &request(include_str!("escape/result_flood.py"), serde_json::json!({}), limits));
        let kept: usize = o.results.iter().map(|r| serde_json::to_vec(&r.data).unwrap_or_default().len()).sum();
        if kept as u64 > limits.result_bytes {
            return Err(format!("airlock kept {kept} bytes of results, more than the {} allowed", limits.result_bytes));
        }
        if o.status != Status::OutputLimit || !o.results_truncated {
            return Err(format!("expected output_limit with results_truncated, got {} ({:?})", o.status, o.reason));
        }
        if started.elapsed() > Duration::from_secs(15) {
            return Err(format!("stopping the flood took {:?}", started.elapsed()));
        }
        Ok(())
    }

    pub fn forged_exited(b: &dyn Backend) -> Verdict {
        let limits = Limits { timeout_ms: 20_000, ..Limits::default() };
        let o = run_req(b, &request(include_str!("escape/forged_exited.py"), serde_json::json!({}), limits));
        if o.status == Status::Killed && !o.stdout.contains("not stopped") {
            Ok(())
        } else {
            Err(format!("a forged `exited` frame was believed: {} ({:?})", o.status, o.reason))
        }
    }

    pub fn forged_memory_error(b: &dyn Backend) -> Verdict {
        let o = run_req(
            b,
            &request(include_str!("escape/forged_memory_error.py"), serde_json::json!({}), Limits::default()),
        );
        // Inside a VM the guest kernel's word is all there is; elsewhere the host measures.
        let host_measures = b.kind() != airlock_core::BackendKind::Microvm;
        match o.status {
            Status::MemoryLimit if host_measures => {
                Err(format!("a guest's MemoryError claim became memory_limit: {:?}", o.reason))
            }
            Status::Error | Status::MemoryLimit => Ok(()),
            other => Err(format!("expected error, got {other} ({:?})", o.reason)),
        }
    }

    pub fn leaked_fds(b: &dyn Backend) -> Verdict {
        use std::os::unix::ffi::OsStrExt;
        let dir = std::env::temp_dir().join(unique("fds"));
        std::fs::create_dir(&dir).unwrap();
        let secret = unique("secret-content");
        let marker_file = unique("listed");
        std::fs::write(dir.join("secret.txt"), &secret).unwrap();
        std::fs::write(dir.join(&marker_file), b"").unwrap();
        let c = |p: &std::path::Path| std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
        // Deliberately inheritable (no O_CLOEXEC): what a careless host leaks to children.
        // SAFETY: opens two paths this test created; the descriptors are closed below.
        let (file_fd, dir_fd) = unsafe {
            (
                libc::open(c(&dir.join("secret.txt")).as_ptr(), libc::O_RDONLY),
                libc::open(c(&dir).as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY),
            )
        };
        assert!(file_fd >= 0 && dir_fd >= 0, "opening the bait failed");
        let o = run_req(b, &request(include_str!("escape/leaked_fds.py"), serde_json::json!({}), Limits::default()));
        // SAFETY: closes the two descriptors opened above.
        unsafe {
            libc::close(file_fd);
            libc::close(dir_fd);
        }
        let _ = std::fs::remove_dir_all(&dir);
        if o.stdout.contains(&secret) || o.stdout.contains(&marker_file) {
            return Err(format!("a leaked host descriptor was used:\n{}", o.stdout));
        }
        Ok(())
    }

    pub fn copy_out_tricks(b: &dyn Backend) -> Verdict {
        let mut req = request(include_str!("escape/copy_out_tricks.py"), serde_json::json!({}), Limits::default());
        req.outputs =
            vec!["fifo.txt".into(), "procroot/passwd".into(), "rootlink/etc/shadow".into(), "d/passwd".into()];
        let started = std::time::Instant::now();
        let o = run_req(b, &req);
        if started.elapsed() > Duration::from_secs(20) {
            return Err(format!("the copy-out took {:?} (blocked on the FIFO?)", started.elapsed()));
        }
        if o.stdout.trim() != "planted" {
            return Ok(()); // the guest could not even plant them
        }
        for f in &o.files {
            if f.content_base64.is_some() {
                return Err(format!("copy-out followed a planted link or FIFO: {}", f.path));
            }
        }
        Ok(())
    }
}

/// Expands to one `#[test]` per case for the backend `$get` returns (`None`: skipped).
macro_rules! escape_cases {
    ($name:ident, $get:expr; $($case:ident),* $(,)?) => {$(
        #[test]
        fn $case() {
            if let Some(b) = $get {
                if let Err(e) = super::cases::$case(b.as_ref()) {
                    panic!("{} escaped on {}: {e}", stringify!($case), stringify!($name));
                }
            }
        }
    )*};
}

/// Generates one `#[test]` per case for a backend.
macro_rules! escape_suite {
    ($name:ident, $get:expr) => {
        mod $name {
            escape_cases!($name, $get;
                read_host_secret,
                write_outside_workspace,
                host_network,
                signal_host_process,
                fork_bomb,
                memory_bomb,
                cpu_bomb,
                disk_fill,
                symlink_copy_out,
                output_flood,
                result_flood,
                forged_exited,
                forged_memory_error,
                leaked_fds,
                copy_out_tricks,
                inotify_instances,
                inotify_watches,
                signal_queue,
                mqueue_fill,
                shm_lock_fill,
                sysv_ipc,
                proc_leaks,
            );
        }
    };
}

/// The checks must be able to fail: on `process` (no isolation) these escapes succeed
/// and each check has to say so.
mod checks_detect_escapes {
    use super::*;

    fn process() -> Option<std::sync::Arc<dyn Backend>> {
        airlock_tests::backend(airlock_core::BackendKind::Process)
    }

    #[test]
    fn process_backend_leaks_host_files() {
        let Some(b) = process() else { return };
        assert!(cases::write_outside_workspace(b.as_ref()).is_err(), "the check missed a write to /tmp");
        if std::fs::read_to_string("/etc/shadow").is_ok() {
            assert!(cases::read_host_secret(b.as_ref()).is_err(), "the check missed a read of /etc/shadow");
        } else {
            eprintln!("skipped: /etc/shadow is not readable by this test, cannot show the read check firing");
        }
    }

    #[test]
    fn process_backend_reaches_host_network() {
        let Some(b) = process() else { return };
        assert!(cases::host_network(b.as_ref()).is_err(), "the check missed a loopback connection");
    }

    #[test]
    fn process_backend_can_signal_host_processes() {
        let Some(b) = process() else { return };
        assert!(cases::signal_host_process(b.as_ref()).is_err(), "the check missed a killed host process");
    }

    #[test]
    fn process_backend_leaks_inheritable_fds() {
        let Some(b) = process() else { return };
        assert!(cases::leaked_fds(b.as_ref()).is_err(), "the check missed a leaked descriptor");
    }

    #[test]
    fn process_backend_shows_the_host_s_proc_and_sysv_ipc() {
        let Some(b) = process() else { return };
        assert!(cases::proc_leaks(b.as_ref()).is_err(), "the check missed the host's /proc");
        // No extra queues: on `process` they would be the host's.
        assert!(cases::sysv_ipc_with(b.as_ref(), 0).is_err(), "the check missed a host SysV object");
    }

    #[test]
    fn symlink_copy_out_is_refused_even_without_isolation() {
        // Copy-out confinement is airlock's own code and holds on every backend.
        let Some(b) = process() else { return };
        cases::symlink_copy_out(b.as_ref()).unwrap();
        cases::copy_out_tricks(b.as_ref()).unwrap();
    }

    #[test]
    fn process_backend_believes_a_memory_error() {
        // `process` measures no memory, so a guest's MemoryError stands there (and the
        // check, run on it, has to say so).
        let Some(b) = process() else { return };
        assert!(cases::forged_memory_error(b.as_ref()).is_err(), "the check missed a believed claim");
    }

    #[test]
    fn corpus_files_state_their_fate() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("escape");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let text = std::fs::read_to_string(&p).unwrap();
            assert!(
                text.starts_with("# Escape: ") && text.contains("\n# Expect: "),
                "{} lacks its header",
                p.display()
            );
            n += 1;
        }
        assert!(n >= 23, "corpus has {n} programs");
    }
}

// One line per backend that claims containment (`process` claims none).
escape_suite!(microvm, airlock_tests::backend(airlock_core::BackendKind::Microvm));
escape_suite!(jail, airlock_tests::backend(airlock_core::BackendKind::Jail));
escape_suite!(wasm, airlock_tests::backend(airlock_core::BackendKind::Wasm));
// Sandboxes forked from a jail zygote claim the same containment as cold ones.
escape_suite!(jail_zygote, airlock_tests::jail_zygote());

/// True when the host kernel can mount a procfs of processes only (`subset=pid`, 5.8+).
fn proc_subset_kernel() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut v =
        release.split(|c: char| !c.is_ascii_digit()).filter(|p| !p.is_empty()).map(|p| p.parse::<u32>().unwrap_or(0));
    (v.next().unwrap_or(0), v.next().unwrap_or(0)) >= (5, 8)
}

/// Cases only a backend sharing the host kernel must answer (its seccomp filter and
/// PID namespace are what stop them); a VM may legitimately let its guest mount or
/// trace inside its own kernel.
macro_rules! jail_specific {
    ($name:ident, $get:expr) => {
        mod $name {
            use super::*;

            fn jail() -> Option<std::sync::Arc<dyn Backend>> {
                $get
            }

            fn lines(stdout: &str) -> std::collections::BTreeMap<String, String> {
                stdout.lines().filter_map(|l| l.rsplit_once(' ').map(|(k, v)| (k.to_string(), v.to_string()))).collect()
            }

            #[test]
            fn dangerous_syscalls_are_denied() {
                let Some(b) = jail() else { return };
                let mut victim = std::process::Command::new("sleep").arg("60").spawn().unwrap();
                let mounts_before = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
                let vars = serde_json::json!({"host_pid": victim.id()});
                let o = run_req(b.as_ref(), &request(include_str!("escape/syscall_denials.py"), vars, Limits::default()));
                let status = std::fs::read_to_string(format!("/proc/{}/status", victim.id())).unwrap_or_default();
                let _ = victim.kill();
                let _ = victim.wait();
                assert_eq!(o.status, Status::Ok, "{}\n{}", o.stdout, o.stderr);
                assert!(status.contains("TracerPid:\t0"), "the host process was traced: {status}");
                assert_eq!(std::fs::read_to_string("/proc/self/mountinfo").unwrap(), mounts_before, "host mounts changed");
                let got = lines(&o.stdout);
                assert!(got.len() >= 20, "{}", o.stdout);
                for (call, result) in &got {
                    let want = if call == "clone3" { "ENOSYS" } else { "EPERM" };
                    assert_eq!(result, want, "{call} was not denied as expected:\n{}", o.stdout);
                }
            }

            #[test]
            fn terminal_injection_is_impossible() {
                let Some(b) = jail() else { return };
                let o = run_req(
                    b.as_ref(),
                    &request(include_str!("escape/terminal_injection.py"), serde_json::json!({}), Limits::default()),
                );
                assert_eq!(o.status, Status::Ok, "{}\n{}", o.stdout, o.stderr);
                assert!(!o.stdout.contains("/dev/tty opened") && !o.stdout.contains(" OK"), "{}", o.stdout);
                assert!(o.stdout.contains("session leader True"), "{}", o.stdout);
                assert_eq!(o.stdout.lines().filter(|l| l.ends_with(" EPERM")).count(), 9, "{}", o.stdout);
            }

            /// A sandbox's share of each per-user kernel counter is at most half of a
            /// whole user's budget on the host, so it cannot starve whoever shares that
            /// counter with it: the operator in rootless mode, its zygote siblings, a
            /// sandbox that drew the same host uid. (Where the host's own budget is too
            /// small to tell, that counter is skipped.)
            #[test]
            fn a_sandbox_takes_a_small_share_of_each_per_user_counter() {
                let Some(b) = jail() else { return };
                let soft = |r| {
                    // SAFETY: getrlimit writes the live local.
                    unsafe {
                        let mut l: libc::rlimit = std::mem::zeroed();
                        libc::getrlimit(r, &mut l);
                        l.rlim_cur
                    }
                };
                let instances: u64 = std::fs::read_to_string("/proc/sys/user/max_inotify_instances")
                    .ok()
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                let checks: [(&str, serde_json::Value, &str, u64, u64); 3] = [
                    (include_str!("escape/inotify_exhaust.py"), serde_json::json!({"instances": 100_000, "watches": 0}), "instances", 1, instances),
                    (include_str!("escape/signal_queue.py"), serde_json::json!({"signals": 1_000_000}), "signals", 1, soft(libc::RLIMIT_SIGPENDING)),
                    (
                        include_str!("escape/shm_lock_fill.py"),
                        serde_json::json!({"segments": 100_000, "segment_bytes": 4096, "mlock_bytes": 0}),
                        "segments",
                        4096,
                        soft(libc::RLIMIT_MEMLOCK),
                    ),
                ];
                for (program, vars, key, unit, budget) in checks {
                    if budget < 64 * unit || budget == libc::RLIM_INFINITY {
                        eprintln!("skipped ({key}): the host's own budget ({budget}) is too small or unlimited to tell");
                        continue;
                    }
                    let (held, o) = hold(b.as_ref(), program, vars);
                    drop(held);
                    let got = count(&o.stdout, key) * unit;
                    assert!(got > 0, "{key}: the sandbox got none at all: {}{}", o.stdout, o.stderr);
                    assert!(got <= budget / 2, "{key}: one sandbox took {got} of a whole user's {budget}: {}", o.stdout);
                }
                // mlock is bounded per process by the same limit.
                let (held, o) = hold(
                    b.as_ref(),
                    include_str!("escape/shm_lock_fill.py"),
                    serde_json::json!({"segments": 0, "segment_bytes": 4096, "mlock_bytes": 8 << 20}),
                );
                drop(held);
                assert!(o.stdout.contains("mlock 8388608 ") && !o.stdout.contains(" OK"), "{}", o.stdout);
            }

            /// The sandbox's `/proc` holds its processes only: every host-wide file is
            /// absent (not merely empty), `/proc/self` works, and so does `os.cpu_count()`.
            #[test]
            fn proc_holds_only_the_sandbox_s_processes() {
                let Some(b) = jail() else { return };
                if !proc_subset_kernel() {
                    eprintln!("skipped: this kernel (< 5.8) cannot mount a procfs of processes only");
                    return;
                }
                let o = run_req(b.as_ref(), &request(include_str!("escape/proc_leaks.py"), serde_json::json!({}), Limits::default()));
                assert_eq!(o.status, Status::Ok, "{}\n{}", o.stdout, o.stderr);
                let mut n = 0;
                for l in o.stdout.lines().filter(|l| l.starts_with("/proc/")) {
                    assert!(l.ends_with(" ERR FileNotFoundError"), "{l}\n{}", o.stdout);
                    n += 1;
                }
                assert!(n >= 30, "{}", o.stdout);
                assert!(o.stdout.contains("\nself True\n"), "{}", o.stdout);
                let cpus: u32 = o.stdout.lines().find_map(|l| l.strip_prefix("cpus ")).and_then(|c| c.parse().ok()).unwrap_or(0);
                assert!(cpus >= 1, "{}", o.stdout);
            }

            #[test]
            fn host_processes_are_invisible() {
                let Some(b) = jail() else { return };
                let mut victim = std::process::Command::new("sleep").arg("60").spawn().unwrap();
                let vars = serde_json::json!({"host_pid": victim.id()});
                let o = run_req(b.as_ref(), &request(include_str!("escape/signal_host_process.py"), vars, Limits::default()));
                let alive = victim.try_wait().unwrap().is_none();
                let _ = victim.kill();
                let _ = victim.wait();
                assert!(alive, "the host process was killed:\n{}", o.stdout);
                let visible: usize = o
                    .stdout
                    .lines()
                    .find_map(|l| l.strip_prefix("visible pids: "))
                    .and_then(|n| n.trim().parse().ok())
                    .unwrap_or_else(|| panic!("no count in {}", o.stdout));
                assert!(visible <= 2, "the sandbox saw {visible} processes (only its own should be visible)");
            }
        }
    };
}

jail_specific!(jail_specific, airlock_tests::backend(airlock_core::BackendKind::Jail));
jail_specific!(jail_zygote_specific, airlock_tests::jail_zygote());
