//! The `jail` backend: the guest driver in Linux namespaces (user, mount, PID, network,
//! IPC, UTS, cgroup) on a read-only root, with seccomp, Landlock, rlimits and a cgroup
//! per sandbox (v1 or v2). It shares the host's kernel.
//!
//! One module per mechanism; `contain.rs` holds the order in which they are applied:
//!
//! | module | mechanism |
//! |---|---|
//! | [`user`] | user namespace and id maps |
//! | [`mount`] | the new root, `/proc`, `/dev`, `/tmp`, `/workspace`, `pivot_root` |
//! | [`net`] | network namespace, loopback |
//! | [`rlimit`] | resource limits |
//! | [`caps`] | capabilities |
//! | [`landlock`] | Landlock rules |
//! | [`seccomp`] | the system-call deny list |
//! | [`cgroup`] | cgroups v1 and v2 behind one trait |
//! | [`process`] | descriptors, session, `execve` |
//! | [`contain`] | the order |
//! | [`spawn`] | `clone` and the setup handshake |
//! | [`upload`] | files the host writes into a workspace, charged to the sandbox's memory |
//! | [`sys`] | the system-call seam (real or recorded) |
//! | [`zygote`] | fast start: a template's zygote forks sandboxes ([`Backend::factory`]) |
//!
//! See `docs/jail.md` for what each mechanism covers and what it does not.

pub mod caps;
pub mod cgroup;
pub mod contain;
pub mod landlock;
pub mod mount;
pub mod net;
pub mod process;
pub mod python;
pub mod rlimit;
pub mod sandbox;
pub mod seccomp;
pub mod spawn;
pub mod supervisor;
pub mod sys;
pub mod upload;
pub mod user;
pub mod zygote;

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use airlock_core::units::format_size;
use airlock_core::{
    Backend, BackendKind, Error, Factory, Isolation, NetworkPolicy, Probe, Recipe, Sandbox, SandboxSpec,
};
use airlock_guest::host::{Guest, GuestMeta, GuestPipes};
use airlock_guest::launch::{DriverBoot, channel_pair, guest_env};
use airlock_guest::workspace::Workspace;

use crate::cgroup::{CgroupLimits, CgroupOps, Driver};
use crate::mount::{RootSource, RootSpec};
use crate::sandbox::{CgroupGuard, JailSandbox};
use crate::user::{IdMap, JailIds};

/// How long the interpreter may take to start and greet the host.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

/// Settings of the `jail` backend.
#[derive(Debug, Clone, PartialEq)]
pub struct JailConfig {
    /// The interpreter: a host path in host mode, a path inside the root file system
    /// with [`JailConfig::rootfs`].
    pub python: PathBuf,
    /// A root file system directory to use instead of the host's `/usr` and `/etc`
    /// (anywhere on the host: see `mount::Taking`).
    pub rootfs: Option<PathBuf>,
    /// Host directories (site-packages, a virtualenv's `lib/pythonX.Y/site-packages`)
    /// bound read-only and added to `sys.path`: at the same path, or below `/airlock`
    /// when the sandbox holds that path (`/tmp/venv/...` is `/airlock/tmp/venv/...`;
    /// `mount::inside_path`).
    pub site_packages: Vec<PathBuf>,
    /// Further read-only binds `(host path, path inside)`.
    pub ro_binds: Vec<(PathBuf, PathBuf)>,
    /// CPU quota per sandbox, in cores (default 1; 0 for none).
    pub cpu_cores: f64,
    /// Host id range for sandboxes when airlock runs as root.
    pub ids: JailIds,
    /// Apply Landlock rules when the kernel has Landlock (default true).
    pub landlock: bool,
    /// Use `mount_setattr` (Linux 5.12+) for recursive read-only binds when the kernel
    /// has it (default true); false takes the path of older kernels (tests).
    pub mount_setattr: bool,
}

impl JailConfig {
    /// Defaults for `python`.
    pub fn new(python: PathBuf) -> Self {
        JailConfig {
            python,
            rootfs: None,
            site_packages: Vec::new(),
            ro_binds: Vec::new(),
            cpu_cores: 1.0,
            ids: JailIds::default(),
            landlock: true,
            mount_setattr: true,
        }
    }

    /// Defaults for `python`, then `AIRLOCK_JAIL_ROOTFS`, `AIRLOCK_JAIL_SITE_PACKAGES`
    /// (colon-separated) and `AIRLOCK_JAIL_CPU_CORES`.
    pub fn from_env(python: PathBuf) -> Self {
        let mut c = JailConfig::new(python);
        if let Some(r) = std::env::var_os("AIRLOCK_JAIL_ROOTFS").filter(|r| !r.is_empty()) {
            c.rootfs = Some(PathBuf::from(r));
        }
        if let Some(s) = std::env::var_os("AIRLOCK_JAIL_SITE_PACKAGES") {
            c.site_packages = std::env::split_paths(&s).filter(|p| !p.as_os_str().is_empty()).collect();
        }
        if let Some(n) = std::env::var("AIRLOCK_JAIL_CPU_CORES").ok().and_then(|v| v.parse().ok()) {
            c.cpu_cores = n;
        }
        c
    }
}

/// What is computed once per backend: the interpreter's layout, the kernel's features,
/// the cgroup driver, the seccomp program.
struct Prepared {
    python_inside: String,
    boot: DriverBoot,
    args: Vec<String>,
    source: RootSource,
    extra_ro: Vec<(PathBuf, PathBuf)>,
    staging: PathBuf,
    setattr: bool,
    /// The kernel mounts a procfs of processes only (`subset=pid`).
    proc_subset: bool,
    landlock: Option<landlock::Policy>,
    last_cap: u32,
    cgroups: Option<Driver>,
    cgroup_why: Option<String>,
    seccomp: &'static seccomp::Filters,
    mpl: Option<python::MplCache>,
    /// CPU quota per sandbox, in cores (0: none).
    cpu_cores: f64,
    /// What `site` would have set up (host mode), for a zygote's command line.
    site: Option<python::SiteState>,
    /// Directories appended to `sys.path` after `site` has run (rootfs mode: the
    /// site-packages, as the sandbox sees them), for a zygote's command line.
    extra_path: Vec<String>,
    /// Who takes the new root's sources from the host.
    taking: mount::Taking,
    /// The mount plan's fixed part, per `resolv.conf` choice, with when it was built.
    system: Mutex<Vec<(bool, std::time::Instant, Arc<mount::SystemPart>)>>,
}

/// How long the fixed part of the mount plan (which holds copies of `/etc` files) is
/// reused before it is read from the host again.
const SYSTEM_PART_TTL: Duration = Duration::from_secs(10);

impl Prepared {
    /// A new cgroup for sandbox `id` with `limits` (none when cgroups are unusable).
    pub(crate) fn new_cgroup(&self, id: &str, limits: &airlock_core::Limits) -> Result<CgroupGuard, Error> {
        static CLEANUP: Once = Once::new();
        let Some(driver) = &self.cgroups else { return Ok(CgroupGuard::new(None)) };
        CLEANUP.call_once(|| {
            let r = cgroup::cleanup_stale(driver);
            if !r.removed.is_empty() || !r.failed.is_empty() {
                tracing::info!("stale sandbox cgroups: removed {:?}, failed {:?}", r.removed, r.failed);
            }
        });
        let name = cgroup::group_name(id);
        let quota = (self.cpu_cores > 0.0).then(|| ((self.cpu_cores * cgroup::CPU_PERIOD_US as f64) as u64).max(1000));
        let g = driver.create(&name, quota.is_some()).map_err(|e| cgroup_error(driver, e))?;
        let guard = CgroupGuard::new(Some(Arc::new(g)));
        let cl = CgroupLimits { memory_bytes: limits.memory_bytes, pids: limits.processes.into(), cpu_quota_us: quota };
        if let Some(g) = &guard.0 {
            g.apply(&cl).map_err(|e| cgroup_error(driver, e))?;
        }
        Ok(guard)
    }

    /// Moves `pid` into `group` (unless the kernel already created it there).
    pub(crate) fn place(&self, group: &CgroupGuard, pid: i32) -> Result<(), Error> {
        let Some(g) = &group.0 else { return Ok(()) };
        g.add(pid).map_err(|e| {
            let hint = if e.kind() == std::io::ErrorKind::InvalidInput && self.cpu_cores > 0.0 {
                " (a real-time airlock cannot put sandboxes in a v1 cpu group without cpu.rt_runtime_us; \
                 set AIRLOCK_JAIL_CPU_CORES=0)"
            } else {
                ""
            };
            Error::host(format!("placing the sandbox in its cgroup: {e}{hint}"))
        })
    }

    fn system_part(&self, spec: &RootSpec) -> Result<Arc<mount::SystemPart>, Error> {
        let mut cache = self.system.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, _, part)) =
            cache.iter().find(|(r, at, _)| *r == spec.resolv_conf && at.elapsed() < SYSTEM_PART_TTL)
        {
            return Ok(part.clone());
        }
        let part = Arc::new(mount::system_part(spec)?);
        cache.retain(|(r, _, _)| *r != spec.resolv_conf);
        cache.push((spec.resolv_conf, std::time::Instant::now(), part.clone()));
        Ok(part)
    }
}

/// The `jail` backend.
pub struct JailBackend {
    config: JailConfig,
    prepared: Mutex<Option<Arc<Prepared>>>,
}

impl JailBackend {
    /// A backend with these settings (nothing is checked until the first sandbox).
    pub fn new(config: JailConfig) -> Self {
        JailBackend { config, prepared: Mutex::new(None) }
    }

    /// Its settings.
    pub fn config(&self) -> &JailConfig {
        &self.config
    }

    fn prepared(&self) -> Result<Arc<Prepared>, Error> {
        let mut slot = self.prepared.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = slot.as_ref() {
            return Ok(p.clone());
        }
        let p = Arc::new(self.prepare()?);
        *slot = Some(p.clone());
        Ok(p)
    }

    fn prepare(&self) -> Result<Prepared, Error> {
        let seccomp = seccomp::filters().map_err(|e| Error::Unavailable {
            backend: BackendKind::Jail,
            reason: e,
            fix: Some("run airlock on x86_64 or aarch64".into()),
        })?;
        let (cgroups, cgroup_why) = match Driver::detect() {
            Ok(d) => (Some(d), None),
            Err(e) => (None, Some(e)),
        };
        let python = self.config.python.clone();
        let python_str =
            python.to_str().ok_or_else(|| Error::invalid("the interpreter path is not UTF-8"))?.to_string();
        if !python.is_absolute() {
            return Err(Error::invalid(format!(
                "the jail interpreter must be an absolute path, not '{python_str}' (set AIRLOCK_PYTHON)"
            )));
        }
        let rootfs = match &self.config.rootfs {
            Some(root) => Some(
                std::fs::canonicalize(root).map_err(|e| Error::invalid(format!("rootfs {}: {e}", root.display())))?,
            ),
            None => None,
        };
        // A host directory bound for the sandbox keeps its path unless the sandbox's
        // own directories or the root file system's entries hold that path: then it is
        // placed below mount::RELOCATED_DIR (mount::inside_path).
        let root_entries: Vec<std::ffi::OsString> = match &rootfs {
            Some(root) => std::fs::read_dir(root)
                .map_err(|e| Error::invalid(format!("rootfs {} cannot be read: {e}", root.display())))?
                .filter_map(|e| e.ok().map(|e| e.file_name()))
                .collect(),
            None => Vec::new(),
        };
        let mut extra_ro: Vec<(PathBuf, PathBuf)> = self.config.ro_binds.clone();
        // Site-packages, as the sandbox sees them, for sys.path.
        let mut site: Vec<String> = Vec::new();
        for sp in &self.config.site_packages {
            let canon = std::fs::canonicalize(sp)
                .map_err(|e| Error::invalid(format!("site-packages directory {}: {e}", sp.display())))?;
            let inside = mount::inside_path(&canon, &root_entries);
            let text = inside.to_str().ok_or_else(|| {
                Error::invalid(format!("site-packages directory {}: the path is not UTF-8", sp.display()))
            })?;
            site.push(text.to_string());
            extra_ro.push((canon, inside));
        }
        let (source, python_inside, boot, args, mpl, site_state, extra_path) = match rootfs {
            Some(root) => {
                let inside = root.join(python.strip_prefix("/").unwrap_or(&python));
                if !inside.exists() {
                    return Err(Error::invalid(format!(
                        "the rootfs has no interpreter at {python_str} ({} does not exist); set --python",
                        inside.display()
                    )));
                }
                let boot = DriverBoot::Source;
                // `site` runs normally; site-packages are appended after it.
                let args = python::with_path(python::interpreter_args(&boot, None), &site);
                (RootSource::Dir(root), python_str, boot, args, None, None, site)
            }
            None => {
                if !python.exists() {
                    return Err(Error::Unavailable {
                        backend: BackendKind::Jail,
                        reason: format!("{python_str} does not exist"),
                        fix: Some("install Python 3 (apt-get install python3) or set AIRLOCK_PYTHON".into()),
                    });
                }
                let info = python::HostPython::query(&python)?;
                // Whatever the interpreter needs outside the bound system directories
                // (its prefix, a virtualenv, path entries) is bound read-only too.
                let mut needed: Vec<PathBuf> = info.prefixes.iter().map(PathBuf::from).collect();
                if let Some(prefix) = python.parent().and_then(Path::parent) {
                    needed.push(prefix.to_path_buf());
                }
                needed.extend(info.sys_path.iter().map(PathBuf::from));
                for p in needed {
                    if p.as_os_str().is_empty() || !p.exists() || is_system_path(&p) {
                        continue;
                    }
                    if seen_through(&extra_ro, &p).is_none() {
                        let inside = mount::inside_path(&p, &[]);
                        extra_ro.push((p, inside));
                    }
                }
                // The interpreter and its paths as the sandbox sees them.
                let inside = |p: &str| -> String {
                    seen_through(&extra_ro, Path::new(p))
                        .and_then(|i| i.to_str().map(str::to_string))
                        .unwrap_or_else(|| p.to_string())
                };
                let mut sys_path: Vec<String> = info.sys_path.iter().map(|p| inside(p)).collect();
                sys_path.extend(site);
                let state = python::SiteState {
                    sys_path,
                    prefix: inside(&info.prefix),
                    exec_prefix: inside(&info.exec_prefix),
                };
                let boot = DriverBoot::for_python(&python);
                let args = python::interpreter_args(&boot, Some(&state));
                let python_inside = inside(&python_str);
                let mpl = Some(python::MplCache::new(&python));
                (RootSource::Host, python_inside, boot, args, mpl, Some(state), Vec::new())
            }
        };
        // Shorter paths first, so a parent is bound before anything below it is considered.
        extra_ro.sort_by_key(|(_, inside)| inside.components().count());
        let landlock = match (self.config.landlock, landlock::abi()) {
            (true, Ok(abi)) => Some(landlock::Policy::for_abi(abi)),
            _ => None,
        };
        Ok(Prepared {
            python_inside,
            boot,
            args,
            source,
            extra_ro,
            staging: mount::staging_dir(),
            setattr: self.config.mount_setattr && mount::have_mount_setattr(),
            proc_subset: mount::have_proc_subset(),
            landlock,
            last_cap: caps::last_cap(),
            cgroups,
            cgroup_why,
            seccomp,
            mpl,
            cpu_cores: self.config.cpu_cores,
            site: site_state,
            extra_path,
            taking: mount::taking(),
            system: Mutex::new(Vec::new()),
        })
    }

    /// Warnings for every outcome of a sandbox with this spec: limits enforced only
    /// approximately, and the host network.
    fn warnings(p: &Prepared, spec: &SandboxSpec) -> Vec<String> {
        let mut w = Vec::new();
        let enforced = p.cgroups.as_ref().map(|d| d.enforced()).unwrap_or_default();
        let why = p.cgroup_why.clone().unwrap_or_else(|| "controller not available".into());
        if !enforced.memory {
            w.push(format!(
                "limits.memory_bytes ({}) was enforced only by RLIMIT_DATA, which counts reserved memory ({why})",
                format_size(spec.limits.memory_bytes)
            ));
        }
        if !enforced.pids {
            w.push(format!(
                "limits.processes was enforced by RLIMIT_NPROC in the sandbox's user namespace, not a pids cgroup ({why})"
            ));
        }
        if !enforced.cpu_time {
            w.push(format!(
                "limits.cpu_ms could not be measured (no CPU accounting: {why}); only the wall-clock limit applied"
            ));
        }
        if spec.network == NetworkPolicy::Host {
            w.push(net::HOST_NETWORK_WARNING.into());
        }
        w
    }

    /// Starts a jailed interpreter: the guest driver ([`Role::Driver`]) or a zygote.
    fn launch(&self, p: &Prepared, spec: &SandboxSpec, role: Role) -> Result<Launched, Error> {
        let t0 = std::time::Instant::now();
        let limits = spec.limits;
        airlock_core::request::validate_env(&spec.env)?;
        let ids = IdMap::for_new_sandbox(&self.config.ids)?;

        // The guest's descriptors: the channel (a zygote's control socket), the two
        // output pipes and the setup socket; the child's ends get numbers above 10
        // (see process::Stdio).
        let (host_chan, guest_chan) = match role {
            Role::Driver => channel_pair()?,
            Role::Zygote => zygote::control_pair()?,
        };
        let guest_chan = spawn::high_fd(guest_chan)?;
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let sync = spawn::setup_pair()?;

        let root = RootSpec {
            staging: p.staging.clone(),
            source: p.source.clone(),
            extra_ro: p.extra_ro.clone(),
            tmp_bytes: limits.file_bytes,
            workspace_bytes: limits.file_bytes,
            mpl_cache: p.mpl.as_ref().and_then(|m| m.get()),
            resolv_conf: spec.network == NetworkPolicy::Host && p.source == RootSource::Host,
            setattr: p.setattr,
            nested_proc: role == Role::Zygote,
            proc_subset: p.proc_subset,
            taking: p.taking,
        };
        let part = p.system_part(&root)?;
        let mounts = mount::plan_with(&root, &part)?;
        // As root, airlock takes the sources itself (the child inherits the
        // descriptors); they are closed once the child has attached them (its copies).
        let taken = match p.taking {
            mount::Taking::Host => mount::take_sources(part.sources(), p.setattr)?,
            _ => Vec::new(),
        };
        let sources = mount::SourceFds::new(part.sources().len(), &taken.iter().map(raw).collect::<Vec<_>>());
        let t_plan = t0.elapsed();

        let cgroup = p.new_cgroup(&spec.id, &limits)?;
        let memory_cgroup = p.cgroups.as_ref().is_some_and(|d| d.enforced().memory);
        let t_cgroup = t0.elapsed();

        let env = guest_env(airlock_core::paths::WORKSPACE_MOUNT, "/tmp", Some(mount::MPL_CONFIG_DIR), &spec.env);
        let mut argv = vec![p.python_inside.clone()];
        match role {
            Role::Driver => argv.extend(p.args.iter().cloned()),
            Role::Zygote => argv.extend(python::with_path(
                python::with_site(airlock_guest::zygote_args(), p.site.as_ref()),
                &p.extra_path,
            )),
        }
        let exec = process::ExecImage::new(&p.python_inside, &argv, &env)?;

        let plan = contain::plan(contain::Setup {
            mounts,
            sources,
            own_network: spec.network == NetworkPolicy::None,
            rlimits: match role {
                Role::Driver => rlimit::for_limits(&limits, memory_cgroup),
                Role::Zygote => rlimit::for_zygote(&limits, memory_cgroup),
            },
            // A zygote's children set their own: a zygote's maxima would cap them all together.
            namespace_limits: if role == Role::Driver { user::namespace_limit_files() } else { Vec::new() },
            stdio: process::Stdio {
                stdin_path: c"/dev/null".into(),
                stdout: raw(&out_w),
                stderr: raw(&err_w),
                channel: raw(&guest_chan),
            },
            last_cap: p.last_cap,
            landlock: p.landlock.clone(),
            seccomp: p.seccomp,
            confine: role == Role::Driver,
            keep_caps: if role == Role::Zygote { caps::ZYGOTE_CAPS } else { 0 },
            exec,
        });
        let flags = libc::CLONE_NEWUSER
            | libc::CLONE_NEWNS
            | libc::CLONE_NEWPID
            | libc::CLONE_NEWIPC
            | libc::CLONE_NEWUTS
            | net::clone_flag(spec.network);
        let placement = cgroup.0.as_ref().and_then(|g| g.placement_fd());
        let spawned = spawn::spawn(plan, sync, flags, placement.as_ref(), ids.creator(), |pid, placed| {
            ids.write(pid)?;
            if !placed {
                p.place(&cgroup, pid)?;
            }
            Ok(())
        })?;
        drop((guest_chan, out_w, err_w, taken));
        tracing::debug!(
            sandbox = %spec.id,
            "jail launch: plan (with taking the sources) {:?}, cgroup {:?}, clone to exec {:?}",
            t_plan,
            t_cgroup - t_plan,
            t0.elapsed() - t_cgroup,
        );
        Ok(Launched { spawned, channel: host_chan, stdout: out_r, stderr: err_r, ids, cgroup })
    }

    fn spawn_sandbox(&self, p: &Prepared, spec: &SandboxSpec) -> Result<JailSandbox, Error> {
        let t0 = std::time::Instant::now();
        let l = self.launch(p, spec, Role::Driver)?;
        let t_exec = t0.elapsed();
        let sup = supervisor::JailSupervisor::new(
            l.spawned.pid,
            l.spawned.pidfd,
            l.cgroup.0.clone(),
            spec.limits.memory_bytes,
        );
        p.boot.send_preamble(&l.channel)?;
        let meta = GuestMeta {
            backend: BackendKind::Jail,
            isolation: Isolation::Namespaces,
            sandbox_id: spec.id.clone(),
            memory_bytes: spec.limits.memory_bytes,
            warnings: Self::warnings(p, spec),
        };
        let guest = Guest::connect(
            GuestPipes { channel: l.channel, stdout: l.stdout, stderr: l.stderr },
            sup,
            meta,
            STARTUP_TIMEOUT,
        )?;
        tracing::debug!(sandbox = %spec.id, "jail start: launch {t_exec:?}, interpreter to hello {:?}", t0.elapsed() - t_exec);
        let workspace = Workspace::from_fd(l.spawned.workspace).with_owner(l.ids.host_uid, l.ids.host_gid);
        Ok(JailSandbox {
            id: spec.id.clone(),
            guest,
            workspace,
            file_bytes: spec.limits.file_bytes,
            fs_ids: (!l.ids.rootless).then_some((l.ids.host_uid, l.ids.host_gid)),
            cgroup: l.cgroup,
            _keepalive: None,
        })
    }
}

/// What a jailed interpreter is started as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// The guest driver, fully confined, reading cells.
    Driver,
    /// A template's zygote (see [`zygote`]).
    Zygote,
}

/// A started jailed interpreter and the host's ends of its descriptors.
struct Launched {
    spawned: spawn::Spawned,
    channel: OwnedFd,
    stdout: OwnedFd,
    stderr: OwnedFd,
    ids: IdMap,
    cgroup: CgroupGuard,
}

fn raw(fd: &OwnedFd) -> i32 {
    std::os::fd::AsRawFd::as_raw_fd(fd)
}

fn pipe() -> Result<(OwnedFd, OwnedFd), Error> {
    let (r, w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Error::host(format!("pipe: {}", e.desc())))?;
    Ok((r, spawn::high_fd(w)?))
}

fn cgroup_error(driver: &Driver, e: std::io::Error) -> Error {
    Error::host(format!(
        "cannot set up the sandbox's cgroup ({} under {}): {e}",
        driver.version(),
        driver.parents().first().map(|p| p.display().to_string()).unwrap_or_default()
    ))
}

/// True for paths inside the directories every host-mode sandbox binds (`/usr`, ...).
fn is_system_path(p: &Path) -> bool {
    let canon = std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    ["/usr", "/etc"].iter().any(|d| canon.starts_with(d))
        || mount::HOST_SYSTEM_DIRS.iter().any(|d| {
            let top = Path::new("/").join(d);
            canon.starts_with(&top) && !std::fs::symlink_metadata(&top).is_ok_and(|m| m.file_type().is_symlink())
        })
}

/// Where the sandbox sees host path `p` through one of the `binds` (host, inside), if any.
fn seen_through(binds: &[(PathBuf, PathBuf)], p: &Path) -> Option<PathBuf> {
    binds.iter().find_map(|(host, inside)| {
        let rel = p.strip_prefix(host).ok()?;
        Some(if rel.as_os_str().is_empty() { inside.clone() } else { inside.join(rel) })
    })
}

/// Kills and removes sandbox cgroups left by airlock processes that died without
/// cleaning up (also run automatically before a process's first sandbox).
pub fn cleanup_stale() -> Result<cgroup::CleanupReport, Error> {
    let driver = Driver::detect().map_err(|e| Error::host(format!("no usable cgroups: {e}")))?;
    Ok(cgroup::cleanup_stale(&driver))
}

impl Backend for JailBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Jail
    }

    fn isolation(&self) -> Isolation {
        Isolation::Namespaces
    }

    /// Cheap: a namespace clone that exits at once, and reads of kernel interfaces; no
    /// sandbox is started (`airlock doctor` does a real run on top).
    fn probe(&self) -> Probe {
        probe(&self.config)
    }

    fn create(&self, spec: &SandboxSpec) -> Result<Box<dyn Sandbox>, Error> {
        let p = self.prepared()?;
        Ok(Box::new(self.spawn_sandbox(&p, spec)?))
    }

    /// A zygote for the recipe (see [`zygote`]); none when `AIRLOCK_JAIL_ZYGOTE=0`.
    fn factory(&self, recipe: &Recipe) -> Result<Option<Box<dyn Factory>>, Error> {
        if std::env::var_os("AIRLOCK_JAIL_ZYGOTE").is_some_and(|v| v == "0") {
            return Ok(None);
        }
        Ok(Some(Box::new(zygote::Zygote::start(self, recipe)?)))
    }
}

fn probe(config: &JailConfig) -> Probe {
    let mut checks = BTreeMap::new();
    let mut blockers: Vec<(String, Option<String>)> = Vec::new();
    let root = nix::unistd::geteuid().is_root();

    let ns_flags = libc::CLONE_NEWUSER
        | libc::CLONE_NEWNS
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWNET
        | libc::CLONE_NEWCGROUP;
    match spawn::namespaces_work(ns_flags) {
        Ok(()) => {
            checks.insert("namespaces".into(), "ok: user, mount, PID, network, IPC, UTS and cgroup namespaces".into());
        }
        Err(Error::Unavailable { reason, fix, .. }) => {
            checks.insert("namespaces".into(), format!("MISSING: {reason}"));
            blockers.push((reason, fix));
        }
        Err(e) => {
            checks.insert("namespaces".into(), format!("MISSING: {e}"));
            blockers.push((e.to_string(), None));
        }
    }
    checks.insert(
        "identity".into(),
        if root {
            let ids = config.ids;
            format!(
                "running as root: each sandbox's root maps to its own host uid in {}..{}",
                ids.uid_base,
                ids.uid_base.saturating_add(ids.uid_count)
            )
        } else {
            format!(
                "rootless: sandboxes run as your uid {} (unprivileged user namespaces)",
                nix::unistd::geteuid().as_raw()
            )
        },
    );
    match seccomp::supported().and_then(|_| seccomp::filters().map(|f| f.instructions())) {
        Ok(n) => {
            checks.insert("seccomp".into(), format!("ok: deny list of {n} BPF instructions"));
        }
        Err(e) => {
            checks.insert("seccomp".into(), format!("MISSING: {e}"));
            blockers.push((e, Some("use a kernel with CONFIG_SECCOMP_FILTER on x86_64 or aarch64".into())));
        }
    }
    checks.insert(
        "landlock".into(),
        match (config.landlock, landlock::abi()) {
            (false, _) => "off (disabled in the configuration)".into(),
            (true, Ok(abi)) => format!(
                "ok: ABI {abi}: read-only except /workspace, /tmp and /dev{}",
                if abi >= 6 { "; abstract sockets and signals scoped to the sandbox" } else { "" }
            ),
            (true, Err(e)) => format!("not used: {e}; the mount namespace alone confines file access"),
        },
    );
    checks.insert(
        "cgroups".into(),
        match Driver::detect() {
            Ok(d) => {
                let e = d.enforced();
                let missing = e.missing();
                format!(
                    "{}{}",
                    d.describe(),
                    if missing.is_empty() {
                        ": memory (swap off), pids, CPU quota and accounting enforced".into()
                    } else {
                        format!(
                            ": missing {} (those limits fall back to rlimits or wall time; enable the controllers: \
                             v1 mounts them under /sys/fs/cgroup, v2 lists them in the parent's cgroup.subtree_control)",
                            missing.join(", ")
                        )
                    }
                )
            }
            Err(e) => format!(
                "not used: {e}; memory is then limited by RLIMIT_DATA (approximate), processes by RLIMIT_NPROC in the sandbox's user namespace, CPU by wall time only"
            ),
        },
    );
    let sources = match mount::taking() {
        mount::Taking::Host => "host directories are taken by airlock (open_tree) wherever they are",
        mount::Taking::Sandbox => "host directories are taken by each sandbox as your uid, wherever you can reach them",
        mount::Taking::Path => {
            "old kernel (< 5.2, no open_tree): host directories are bound by path; none may be below /tmp"
        }
    };
    checks.insert(
        "mounts".into(),
        if mount::have_mount_setattr() {
            format!("ok: recursive read-only binds (mount_setattr); {sources}")
        } else {
            format!(
                "old kernel (< 5.12): binds are made read-only one mount at a time, submounts are not bound; {sources}"
            )
        },
    );
    checks.insert(
        "proc".into(),
        if mount::have_proc_subset() {
            "ok: a sandbox's /proc shows its own processes only (subset=pid), no host-wide file".into()
        } else {
            "old kernel (< 5.8): a sandbox's /proc also shows the host's global files (cmdline, stat, meminfo, \
             config.gz, ...), read-only"
                .into()
        },
    );
    let python_ok = match &config.rootfs {
        Some(r) => {
            let inside = r.join(config.python.strip_prefix("/").unwrap_or(&config.python));
            let ok = r.is_dir() && inside.exists();
            checks.insert(
                "interpreter".into(),
                if ok {
                    format!("{} inside rootfs {}", config.python.display(), r.display())
                } else {
                    format!("MISSING: {} not found in rootfs {}", config.python.display(), r.display())
                },
            );
            if !ok {
                blockers.push((
                    format!("the rootfs {} has no interpreter {}", r.display(), config.python.display()),
                    Some("point --rootfs at a root file system with Python 3, or set --python".into()),
                ));
            }
            ok
        }
        None => {
            use std::os::unix::fs::PermissionsExt;
            let ok =
                std::fs::metadata(&config.python).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
            checks.insert(
                "interpreter".into(),
                if ok {
                    format!("{} (the host's, read-only)", config.python.display())
                } else {
                    format!("MISSING: {} is not an executable file", config.python.display())
                },
            );
            if !ok {
                blockers.push((
                    format!("{} is not an executable interpreter", config.python.display()),
                    Some("install Python 3 (apt-get install python3) or set AIRLOCK_PYTHON".into()),
                ));
            }
            ok
        }
    };
    let available = blockers.is_empty() && python_ok;
    let (detail, fix) = if available {
        (
            format!(
                "namespaces, a read-only root, seccomp{}{}; runs {}",
                if landlock::abi().is_ok() && config.landlock { ", Landlock" } else { "" },
                match Driver::detect() {
                    Ok(d) => format!(" and cgroup {} limits", d.version()),
                    Err(_) => " (no cgroup limits)".into(),
                },
                config.python.display()
            ),
            None,
        )
    } else {
        let reason = blockers.iter().map(|(r, _)| r.clone()).collect::<Vec<_>>().join("; ");
        let fix = blockers.iter().filter_map(|(_, f)| f.clone()).collect::<Vec<_>>().join("; ");
        (reason, (!fix.is_empty()).then_some(fix))
    };
    Probe { backend: BackendKind::Jail, isolation: Isolation::Namespaces, available, detail, fix, checks }
}
