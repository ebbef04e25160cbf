//! Pieces shared by backends that start the driver as a host process: interpreter
//! discovery, the guest's minimal environment, the channel socket pair, and a
//! supervisor for a child process and its process group.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use airlock_core::Error;
use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use nix::unistd::Pid;

use crate::host::{ExitInfo, Supervisor};
use crate::{DRIVER_SOURCE, driver_args, driver_args_bytecode};

/// The file descriptor number the driver's channel has inside the guest.
pub const CHANNEL_FD: i32 = 3;

/// The Python interpreter sandboxes run: `$AIRLOCK_PYTHON`, else `/usr/bin/python3`,
/// else the first `python3` on `PATH`.
pub fn default_python() -> PathBuf {
    if let Some(p) = std::env::var_os("AIRLOCK_PYTHON").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let system = Path::new("/usr/bin/python3");
    if system.exists() {
        return system.to_path_buf();
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let c = dir.join("python3");
            if c.is_file() {
                return c;
            }
        }
    }
    PathBuf::from("python3")
}

/// The environment of guest code: nothing from the host but what is listed here,
/// plus the caller's variables (which win).
pub fn guest_env(
    home: &str,
    tmp: &str,
    mpl_config: Option<&str>,
    user: &BTreeMap<String, String>,
) -> Vec<(String, String)> {
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    env.insert("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into());
    env.insert("HOME".into(), home.into());
    env.insert("TMPDIR".into(), tmp.into());
    env.insert("LANG".into(), "C.UTF-8".into());
    env.insert("LC_ALL".into(), "C.UTF-8".into());
    env.insert("PYTHONIOENCODING".into(), "utf-8".into());
    env.insert("PYTHONDONTWRITEBYTECODE".into(), "1".into());
    env.insert("MPLBACKEND".into(), "Agg".into());
    // One BLAS thread: sandboxes are many and small; thread pools per sandbox only
    // multiply memory and contend for the same cores.
    env.insert("OPENBLAS_NUM_THREADS".into(), "1".into());
    env.insert("OMP_NUM_THREADS".into(), "1".into());
    if let Some(m) = mpl_config {
        env.insert("MPLCONFIGDIR".into(), m.into());
    }
    for (k, v) in user {
        env.insert(k.clone(), v.clone());
    }
    env.into_iter().collect()
}

/// A connected pair of Unix stream sockets, both close-on-exec: `(host, guest)`.
pub fn channel_pair() -> Result<(OwnedFd, OwnedFd), Error> {
    socketpair(AddressFamily::Unix, SockType::Stream, None, SockFlag::SOCK_CLOEXEC)
        .map_err(|e| Error::host(format!("socketpair: {}", e.desc())))
}

/// A directory for matplotlib's font cache that survives between sandboxes, so the
/// cache is built once rather than on every import.
pub fn shared_mpl_cache() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    let dir = base.join("airlock").join("matplotlib");
    std::fs::create_dir_all(&dir).ok()?;
    Some(dir)
}

/// Supervises a child process that leads its own process group (it called `setsid`).
#[derive(Debug)]
pub struct ChildSupervisor {
    pid: Pid,
    exit: Option<ExitInfo>,
    retired: Arc<AtomicBool>,
}

impl ChildSupervisor {
    /// Supervises `pid`, which must be our child and a process-group leader.
    pub fn new(pid: u32) -> Self {
        ChildSupervisor { pid: Pid::from_raw(pid as i32), exit: None, retired: Arc::new(AtomicBool::new(false)) }
    }

    /// The child's pid.
    pub fn pid(&self) -> i32 {
        self.pid.as_raw()
    }

    /// After this, kill handles do nothing (the group may have been reused).
    pub fn retire(&mut self) {
        self.kill();
        let _ = self.wait(std::time::Duration::from_secs(2));
        self.retired.store(true, Ordering::SeqCst);
    }

    fn reap(&mut self, flags: libc::c_int) -> Option<ExitInfo> {
        if let Some(e) = self.exit {
            return Some(e);
        }
        let mut status: libc::c_int = 0;
        // SAFETY: an all-zero rusage is a valid value for this plain C struct.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: wait4 writes only into the two out-pointers, which point to live,
        // properly aligned locals; the pid is our own child.
        let r = unsafe { libc::wait4(self.pid.as_raw(), &mut status, flags, &mut ru) };
        if r == self.pid.as_raw() {
            let cpu_ms = (ru.ru_utime.tv_sec as u64 + ru.ru_stime.tv_sec as u64) * 1000
                + (ru.ru_utime.tv_usec as u64 + ru.ru_stime.tv_usec as u64) / 1000;
            let info = ExitInfo {
                code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
                signal: libc::WIFSIGNALED(status).then(|| libc::WTERMSIG(status)),
                cpu_ms: Some(cpu_ms),
                peak_memory_bytes: Some(ru.ru_maxrss as u64 * 1024),
            };
            self.exit = Some(info);
            return Some(info);
        }
        if r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD) {
            let info = ExitInfo::default();
            self.exit = Some(info);
            return Some(info);
        }
        None
    }
}

impl Supervisor for ChildSupervisor {
    fn interrupt(&mut self) {
        if self.exit.is_none() {
            let _ = kill(self.pid, Signal::SIGINT);
        }
    }

    fn kill(&mut self) {
        if !self.retired.load(Ordering::SeqCst) {
            let _ = killpg(self.pid, Signal::SIGKILL);
            if self.exit.is_none() {
                let _ = kill(self.pid, Signal::SIGKILL);
            }
        }
    }

    fn try_wait(&mut self) -> Option<ExitInfo> {
        self.reap(libc::WNOHANG)
    }

    fn kill_handle(&self) -> Arc<dyn Fn() + Send + Sync> {
        let pid = self.pid;
        let retired = self.retired.clone();
        Arc::new(move || {
            if !retired.load(Ordering::SeqCst) {
                let _ = killpg(pid, Signal::SIGKILL);
                let _ = kill(pid, Signal::SIGKILL);
            }
        })
    }
}

impl Drop for ChildSupervisor {
    fn drop(&mut self) {
        if self.exit.is_none() {
            self.kill();
            let _ = self.reap(0);
        }
    }
}

/// How the driver's code reaches the interpreter.
#[derive(Debug, Clone)]
pub enum DriverBoot {
    /// As source on the command line, compiled at start-up (works with any interpreter).
    Source,
    /// As a marshalled code object sent over the channel before anything else; made
    /// once per interpreter (it is specific to the Python version) and cached on disk.
    Bytecode(Arc<Vec<u8>>),
}

impl DriverBoot {
    /// The fastest boot for `python` (the interpreter as it will run inside the
    /// sandbox, which must be the same file). Falls back to [`DriverBoot::Source`].
    pub fn for_python(python: &Path) -> DriverBoot {
        match cached_bytecode(python) {
            Ok(code) => DriverBoot::Bytecode(code),
            Err(e) => {
                tracing::debug!("driver bytecode unavailable for {}: {e}; compiling from source", python.display());
                DriverBoot::Source
            }
        }
    }

    /// Interpreter arguments; the channel must be on [`CHANNEL_FD`].
    pub fn args(&self) -> Vec<String> {
        match self {
            DriverBoot::Source => driver_args(CHANNEL_FD),
            DriverBoot::Bytecode(_) => driver_args_bytecode(),
        }
    }

    /// Sends what the bootstrap reads first (nothing for source boots). Call right
    /// after spawning, before [`crate::host::Guest::connect`].
    pub fn send_preamble(&self, channel: &OwnedFd) -> Result<(), Error> {
        let DriverBoot::Bytecode(code) = self else { return Ok(()) };
        let mut frame = Vec::with_capacity(code.len() + 4);
        frame.extend_from_slice(&(code.len() as u32).to_be_bytes());
        frame.extend_from_slice(code);
        let mut off = 0;
        while off < frame.len() {
            match nix::sys::socket::send(channel.as_raw_fd(), &frame[off..], nix::sys::socket::MsgFlags::MSG_NOSIGNAL) {
                Ok(n) => off += n,
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(Error::host(format!("sending the driver to the guest: {}", e.desc()))),
            }
        }
        Ok(())
    }
}

/// airlock's cache directory (`$XDG_CACHE_HOME/airlock` or `~/.cache/airlock`).
pub fn cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").filter(|h| !h.is_empty()).map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("airlock"))
}

fn cached_bytecode(python: &Path) -> Result<Arc<Vec<u8>>, String> {
    use std::hash::{Hash, Hasher};
    use std::os::unix::fs::MetadataExt;
    static MEMO: std::sync::Mutex<Vec<(u64, Arc<Vec<u8>>)>> = std::sync::Mutex::new(Vec::new());

    let real = std::fs::canonicalize(python).map_err(|e| e.to_string())?;
    let meta = std::fs::metadata(&real).map_err(|e| e.to_string())?;
    let mut h = std::hash::DefaultHasher::new();
    (DRIVER_SOURCE, &real, meta.len(), meta.mtime(), meta.mtime_nsec(), meta.ino()).hash(&mut h);
    let key = h.finish();
    if let Some((_, code)) = MEMO.lock().map_err(|e| e.to_string())?.iter().find(|(k, _)| *k == key) {
        return Ok(code.clone());
    }
    let file = cache_dir().map(|d| d.join("driver").join(format!("{key:016x}.marshal")));
    let code = match file.as_ref().and_then(|f| std::fs::read(f).ok()).filter(|c| !c.is_empty()) {
        Some(c) => c,
        None => {
            let c = compile_with(&real)?;
            if let Some(f) = &file {
                if let Some(dir) = f.parent() {
                    let _ = std::fs::create_dir_all(dir);
                }
                let tmp = f.with_extension(format!("tmp{}", std::process::id()));
                if std::fs::write(&tmp, &c).is_ok() {
                    let _ = std::fs::rename(&tmp, f);
                }
            }
            c
        }
    };
    let code = Arc::new(code);
    MEMO.lock().map_err(|e| e.to_string())?.push((key, code.clone()));
    Ok(code)
}

/// Compiles the driver with `python` and returns the marshalled code object.
fn compile_with(python: &Path) -> Result<Vec<u8>, String> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(python)
        .args([
            "-I",
            "-S",
            "-c",
            "import sys,marshal;sys.stdout.buffer.write(marshal.dumps(compile(sys.stdin.read(),'<airlock-driver>','exec')))",
        ])
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running {}: {e}", python.display()))?;
    child.stdin.take().expect("piped").write_all(DRIVER_SOURCE.as_bytes()).map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if !out.status.success() || out.stdout.is_empty() {
        return Err(format!("compiling the driver failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(out.stdout)
}
