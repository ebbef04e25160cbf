//! The `process` backend: the guest driver as a plain child process.
//!
//! **This is not a security boundary.** The code runs as your user, sees your files,
//! your network and your other processes. What it does provide: a private temporary
//! working directory removed afterwards, a scrubbed environment, its own session and
//! process group (killed as a group), rlimits (CPU, data size, open files, file size,
//! no core dumps, and processes where the kernel counts them), and airlock's wall-time
//! and output limits. Use it for trusted code, for development, and as the baseline the
//! other backends are measured against. It is never chosen automatically while a safer
//! backend works.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use airlock_core::backend::{Canceller, EventSink};
use airlock_core::paths::WorkspacePath;
use airlock_core::units::format_size;
use airlock_core::{Backend, BackendKind, Cell, Error, FileEntry, Isolation, Outcome, Probe, Sandbox, SandboxSpec};
use airlock_guest::host::{Guest, GuestMeta, GuestPipes};
use airlock_guest::launch::{
    CHANNEL_FD, ChildSupervisor, DriverBoot, channel_pair, default_python, guest_env, shared_mpl_cache,
};
use airlock_guest::workspace::Workspace;
use nix::sys::resource::{Resource, setrlimit};

pub mod stale;

/// How long the interpreter may take to start and greet the host.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

/// The `process` backend.
#[derive(Debug, Clone)]
pub struct ProcessBackend {
    python: PathBuf,
}

impl Default for ProcessBackend {
    fn default() -> Self {
        ProcessBackend { python: default_python() }
    }
}

impl ProcessBackend {
    /// A backend that runs `python` (an interpreter path).
    pub fn new(python: PathBuf) -> Self {
        ProcessBackend { python }
    }

    /// The interpreter it runs.
    pub fn python(&self) -> &std::path::Path {
        &self.python
    }
}

/// The limits the `process` backend cannot enforce as asked, said once per outcome.
fn warnings(spec: &SandboxSpec) -> Vec<String> {
    let mut w = vec![
        "backend 'process' has NO isolation: the code ran as your user with access to your files and network"
            .to_string(),
    ];
    w.push(format!(
        "memory is limited by RLIMIT_DATA ({}), which counts reserved as well as used memory; only 'jail' and 'microvm' enforce limits.memory_bytes exactly",
        format_size(spec.limits.memory_bytes)
    ));
    if spec.network != airlock_core::NetworkPolicy::Host {
        w.push("network policy 'none' cannot be enforced by backend 'process'; the code had network access".into());
    }
    w
}

impl Backend for ProcessBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Process
    }

    fn isolation(&self) -> Isolation {
        Isolation::None
    }

    /// A cheap check (no process is started): the interpreter exists and is
    /// executable. `airlock doctor` runs a real sandbox on top of this.
    fn probe(&self) -> Probe {
        use std::os::unix::fs::PermissionsExt;
        let fix = Some(
            "install Python 3 (apt-get install python3) or set AIRLOCK_PYTHON to a working interpreter".to_string(),
        );
        let (available, detail, fix) = match std::fs::metadata(&self.python) {
            Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => {
                (true, format!("runs {} as your user with rlimits only: NO isolation", self.python.display()), None)
            }
            Ok(_) => (false, format!("{} is not an executable file", self.python.display()), fix),
            Err(e) => (false, format!("cannot use {}: {e}", self.python.display()), fix),
        };
        Probe {
            backend: BackendKind::Process,
            isolation: Isolation::None,
            available,
            detail,
            fix,
            checks: BTreeMap::new(),
        }
    }

    /// Kills the guests and removes the directories of sandboxes whose airlock died
    /// (their directory lock is free); see [`stale`].
    fn cleanup_stale(&self) -> Result<Vec<String>, Error> {
        stale::cleanup(&std::env::temp_dir())
    }

    fn create(&self, spec: &SandboxSpec) -> Result<Box<dyn Sandbox>, Error> {
        let dir = tempfile::Builder::new()
            .prefix(&stale::dir_prefix(&spec.id))
            .tempdir()
            .map_err(|e| Error::io("creating the sandbox's working directory", e))?;
        // Held for the sandbox's life: a later `cleanup_stale` knows the directory is
        // in use for as long as this process lives (see `stale`).
        let owner_lock = stale::lock_dir(dir.path())?;
        let tmp = dir.path().join(".tmp");
        std::fs::create_dir(&tmp).map_err(|e| Error::io("creating the sandbox's temporary directory", e))?;
        let workspace = Workspace::open(dir.path())?;
        let (host_end, guest_end) = channel_pair()?;

        let home = dir.path().to_string_lossy().into_owned();
        let mpl = shared_mpl_cache();
        let env = guest_env(&home, &tmp.to_string_lossy(), mpl.as_deref().and_then(|p| p.to_str()), &spec.env);
        let limits = spec.limits;
        let guest_raw = guest_end.as_raw_fd();
        let is_root = nix::unistd::geteuid().is_root();

        let boot = DriverBoot::for_python(&self.python);
        let mut cmd = Command::new(&self.python);
        cmd.args(boot.args())
            .env_clear()
            .envs(env)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: the closure runs in the forked child before exec and only makes
        // async-signal-safe system calls (setsid, dup2, fcntl, setrlimit) on values
        // captured by copy; it allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                nix::unistd::setsid().map_err(std::io::Error::from)?;
                if guest_raw == CHANNEL_FD {
                    let flags = libc::fcntl(CHANNEL_FD, libc::F_GETFD);
                    if flags < 0 || libc::fcntl(CHANNEL_FD, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                } else if libc::dup2(guest_raw, CHANNEL_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let set = |r: Resource, v: u64| setrlimit(r, v, v).map_err(std::io::Error::from);
                set(Resource::RLIMIT_CORE, 0)?;
                set(Resource::RLIMIT_NOFILE, limits.open_files.into())?;
                set(Resource::RLIMIT_FSIZE, limits.file_bytes.max(1))?;
                set(Resource::RLIMIT_DATA, limits.memory_bytes)?;
                // The driver lowers the soft CPU limit per cell; the hard limit stays open.
                setrlimit(Resource::RLIMIT_CPU, limits.cpu_ms.div_ceil(1000) + 1, libc::RLIM_INFINITY)
                    .map_err(std::io::Error::from)?;
                if !is_root {
                    // RLIMIT_NPROC counts every process of the user, not of this sandbox;
                    // it is only a backstop against fork bombs here.
                    set(Resource::RLIMIT_NPROC, u64::from(limits.processes) + 512)?;
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|e| Error::Unavailable {
            backend: BackendKind::Process,
            reason: format!("cannot start {}: {e}", self.python.display()),
            fix: Some("install Python 3 or set AIRLOCK_PYTHON".into()),
        })?;
        drop(guest_end);
        let sup = ChildSupervisor::new(child.id());
        boot.send_preamble(&host_end)?;
        let stdout: OwnedFd = child.stdout.take().expect("stdout is piped").into();
        let stderr: OwnedFd = child.stderr.take().expect("stderr is piped").into();
        let meta = GuestMeta {
            backend: BackendKind::Process,
            isolation: Isolation::None,
            sandbox_id: spec.id.clone(),
            memory_bytes: limits.memory_bytes,
            warnings: warnings(spec),
        };
        let guest = Guest::connect(GuestPipes { channel: host_end, stdout, stderr }, sup, meta, STARTUP_TIMEOUT)?;
        Ok(Box::new(ProcessSandbox {
            id: spec.id.clone(),
            guest,
            workspace,
            dir: Some(dir),
            _owner_lock: owner_lock,
            file_bytes: limits.file_bytes,
        }))
    }
}

/// A live `process` sandbox.
pub struct ProcessSandbox {
    id: String,
    guest: Guest<ChildSupervisor>,
    workspace: Workspace,
    dir: Option<tempfile::TempDir>,
    _owner_lock: nix::fcntl::Flock<std::fs::File>,
    file_bytes: u64,
}

impl Sandbox for ProcessSandbox {
    fn id(&self) -> &str {
        &self.id
    }

    fn kind(&self) -> BackendKind {
        BackendKind::Process
    }

    fn execute(&mut self, cell: &Cell, events: &mut EventSink<'_>) -> Result<Outcome, Error> {
        self.guest.execute(cell, events)
    }

    fn write_file(&mut self, path: &WorkspacePath, data: &[u8]) -> Result<(), Error> {
        self.workspace.write(path, data, self.file_bytes)
    }

    fn read_file(&mut self, path: &WorkspacePath, max_bytes: u64) -> Result<Vec<u8>, Error> {
        self.workspace.read(path, max_bytes)
    }

    fn list_files(&mut self, dir: &WorkspacePath) -> Result<Vec<FileEntry>, Error> {
        self.workspace.list(dir)
    }

    fn remove_file(&mut self, path: &WorkspacePath) -> Result<(), Error> {
        self.workspace.remove(path)
    }

    fn is_alive(&self) -> bool {
        self.guest.is_alive()
    }

    fn canceller(&self) -> Option<Canceller> {
        Some(self.guest.canceller())
    }

    fn destroy(mut self: Box<Self>) -> Result<(), Error> {
        self.teardown()
    }
}

impl ProcessSandbox {
    fn teardown(&mut self) -> Result<(), Error> {
        self.guest.terminate();
        self.guest.supervisor().retire();
        if let Some(dir) = self.dir.take() {
            let path = dir.path().to_path_buf();
            dir.close().map_err(|e| Error::io(format!("removing {}", path.display()), e))?;
        }
        Ok(())
    }
}

impl Drop for ProcessSandbox {
    fn drop(&mut self) {
        let _ = self.teardown();
    }
}
