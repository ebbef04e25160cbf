//! The `microvm` backend: each sandbox is a QEMU `microvm` (no PCI, virtio-mmio
//! devices, a guest kernel of its own), started by restoring a snapshot of a booted,
//! idle guest, with QEMU itself jailed.
//!
//! * [`image`]: the guest image `airlock setup microvm` builds from Debian packages.
//! * [`vm`]: QEMU's command line, its process and the supervisor the shared cell loop
//!   (`airlock_guest::host`) drives; [`qmp`]: QEMU's monitor.
//! * [`jail`] and [`cgroup`]: QEMU in its own namespaces, with seccomp, a cgroup,
//!   `no_new_privs`, an empty environment and no stray descriptors.
//! * [`accel`]: whether KVM really boots a guest here (a bounded, cached probe), or
//!   TCG it is.
//!
//! Inside the VM the guest agent (`airlock-vm-agent`, PID 1) runs the same driver as
//! every other backend and multiplexes it over one virtio-serial port, so outcomes
//! look the same everywhere.

pub mod accel;
pub mod cgroup;
pub mod image;
pub mod jail;
pub mod qmp;
pub mod vm;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use airlock_core::backend::{Canceller, EventSink};
use airlock_core::paths::WorkspacePath;
use airlock_core::units::format_size;
use airlock_core::{
    Backend, BackendKind, Cell, Error, FileEntry, Isolation, NetworkPolicy, Outcome, Probe, Sandbox, SandboxSpec,
};
use airlock_guest::host::{Guest, GuestMeta, GuestPipes, Supervisor};
use airlock_guest::protocol::{FrameDecoder, encode};
use airlock_vm_agent::{AgentReply, AgentRequest, GuestLimits};

use crate::accel::AccelChoice;
use crate::image::Artifacts;
use crate::vm::{Accel, Boot, Template, Vm, VmShape, VmSupervisor};

/// The smallest guest memory the microvm backend accepts (the guest kernel, the agent
/// and Python need about this much before user code allocates anything).
pub const MIN_MEMORY_BYTES: u64 = 128 << 20;
/// How long a cold boot may take to reach the agent (TCG on a busy host is slow).
const COLD_BOOT_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a restored or freshly booted guest may take to answer the attach.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an interrupted cell may take to stop under TCG before the VM is killed.
const TCG_INTERRUPT_GRACE: Duration = Duration::from_secs(2);
/// How long a file request may take.
const FILE_TIMEOUT: Duration = Duration::from_secs(60);

/// Settings of the backend.
#[derive(Debug, Clone)]
pub struct MicrovmConfig {
    /// Airlock's data directory (artifacts live in `<data>/microvm`).
    pub data_dir: PathBuf,
    /// vCPUs per VM (`$AIRLOCK_MICROVM_VCPUS`, default 1; requests carry no vCPU count).
    pub vcpus: u32,
    /// Start sandboxes from snapshots (`$AIRLOCK_MICROVM_SNAPSHOTS=0` turns it off).
    pub snapshots: bool,
    /// Force an accelerator (`$AIRLOCK_MICROVM_ACCEL=kvm|tcg`); default: probe.
    pub accel: Option<Accel>,
}

impl MicrovmConfig {
    /// Defaults from the environment.
    pub fn from_env(data_dir: PathBuf) -> Self {
        let vcpus =
            std::env::var("AIRLOCK_MICROVM_VCPUS").ok().and_then(|v| v.parse().ok()).unwrap_or(1u32).clamp(1, 64);
        let snapshots = std::env::var("AIRLOCK_MICROVM_SNAPSHOTS").map(|v| v != "0").unwrap_or(true);
        let accel = match std::env::var("AIRLOCK_MICROVM_ACCEL").as_deref() {
            Ok("kvm") => Some(Accel::Kvm),
            Ok("tcg") => Some(Accel::Tcg),
            _ => None,
        };
        MicrovmConfig { data_dir, vcpus, snapshots, accel }
    }
}

/// The `microvm` backend.
pub struct MicrovmBackend {
    cfg: MicrovmConfig,
    art: Artifacts,
    accel: Mutex<Option<AccelChoice>>,
}

impl MicrovmBackend {
    /// A backend with artifacts under `cfg.data_dir`.
    pub fn new(cfg: MicrovmConfig) -> Self {
        let art = Artifacts::new(&cfg.data_dir);
        MicrovmBackend { cfg, art, accel: Mutex::new(None) }
    }

    /// The artifacts.
    pub fn artifacts(&self) -> &Artifacts {
        &self.art
    }

    /// The accelerator sandboxes use, probing KVM once (cached in memory and on disk).
    pub fn accel(&self) -> AccelChoice {
        let mut g = self.accel.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = g.as_ref() {
            return c.clone();
        }
        let c = accel::choose(&self.art, self.cfg.accel);
        if c.accel == Accel::Tcg {
            tracing::warn!("microvm: using TCG (software emulation): {}", c.detail);
        } else {
            tracing::info!("microvm: using KVM: {}", c.detail);
        }
        *g = Some(c.clone());
        c
    }

    fn shape(&self, spec: &SandboxSpec, accel: &AccelChoice) -> Result<VmShape, Error> {
        let template = Template::parse(spec.template.as_deref())?;
        Ok(VmShape {
            // Preloading only pays off when a snapshot keeps the result.
            template: if self.cfg.snapshots { template } else { Template::Bare },
            accel: accel.accel,
            kvm_cpu: accel.kvm_cpu,
            memory_mib: spec.limits.memory_bytes >> 20,
            vcpus: self.cfg.vcpus,
            tsc_khz: accel::host_tsc_khz(),
        })
    }

    /// The snapshot file for a shape (and this image and agent).
    pub fn snapshot_path(&self, shape: &VmShape, agent: &str) -> PathBuf {
        let rootfs = self.art.manifest().map(|m| m.rootfs_sha256).unwrap_or_default();
        let key = image::sha256_hex(
            format!(
                "{agent}/{rootfs}/{}/{}/{}/{}/{}/{}/{}",
                shape.template.as_str(),
                accel::qemu_version(),
                shape.accel.as_str(),
                if shape.accel == Accel::Kvm { shape.kvm_cpu.as_arg() } else { vm::tcg_cpu() },
                shape.memory_mib,
                shape.vcpus,
                shape.tsc_khz
            )
            .as_bytes(),
        );
        self.art.snapshots().join(format!(
            "{}-{}-{}m-{}cpu-{}.state",
            shape.template.as_str(),
            shape.accel.as_str(),
            shape.memory_mib,
            shape.vcpus,
            &key[..16]
        ))
    }

    /// Starts a VM for `spec` and returns it attached: restored from the snapshot when
    /// there is one; otherwise cold-booted (and, with snapshots on, saved first so the
    /// next sandbox of this shape restores). Also says which path was taken.
    fn start_vm(&self, spec: &SandboxSpec, choice: &AccelChoice) -> Result<(Vm, bool), Error> {
        let accel = choice.accel;
        let agent = self.art.ensure_initrd()?;
        let shape = self.shape(spec, choice)?;
        let snap = self.snapshot_path(&shape, &agent);
        if self.cfg.snapshots && snap.is_file() {
            let f = File::open(&snap).map_err(|e| Error::io(format!("opening {}", snap.display()), e))?;
            let t = Instant::now();
            match vm::launch(&self.art, &shape, Boot::Restore(f), &spec.id) {
                Ok(vm) => {
                    tracing::debug!(ms = t.elapsed().as_millis() as u64, "microvm: restored from snapshot");
                    return Ok((vm, true));
                }
                Err(e) => {
                    tracing::warn!("microvm: restoring {} failed ({e}); booting cold and replacing it", snap.display());
                    let _ = std::fs::remove_file(&snap);
                }
            }
        }
        let t = Instant::now();
        let mut vm = vm::launch(&self.art, &shape, Boot::Cold, &spec.id)?;
        vm.wait_ready(COLD_BOOT_TIMEOUT)?;
        tracing::info!(
            ms = t.elapsed().as_millis() as u64,
            accel = accel.as_str(),
            "microvm: cold boot reached the agent"
        );
        if self.cfg.snapshots {
            let t = Instant::now();
            match vm.save_snapshot(&snap) {
                Ok(()) => tracing::info!(
                    ms = t.elapsed().as_millis() as u64,
                    "microvm: saved snapshot {} ({})",
                    snap.display(),
                    std::fs::metadata(&snap).map(|m| format_size(m.len())).unwrap_or_default()
                ),
                Err(e) => tracing::warn!("microvm: could not save a snapshot: {e}"),
            }
        }
        Ok((vm, false))
    }
}

/// Warnings every outcome of a sandbox carries.
fn warnings(accel: &AccelChoice, vm: &Vm) -> Vec<String> {
    let mut w = Vec::new();
    if accel.accel == Accel::Tcg {
        w.push(format!(
            "microvm ran under TCG software emulation, not KVM ({}); code runs several times slower than native",
            accel.detail
        ));
    }
    if let Some(e) = &vm.cgroup_error {
        w.push(format!("QEMU ran without a cgroup ({e}); its host memory and threads were not capped"));
    }
    w
}

impl Backend for MicrovmBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Microvm
    }

    fn isolation(&self) -> Isolation {
        Isolation::Vm
    }

    fn probe(&self) -> Probe {
        let mut checks = BTreeMap::new();
        let fix_setup = "apt-get install qemu-system-x86 debootstrap erofs-utils && airlock setup microvm".to_string();
        let qemu_ok = Path::new(vm::QEMU).is_file();
        checks.insert(
            "qemu".into(),
            if qemu_ok {
                format!("{} ({})", vm::QEMU, accel::qemu_version())
            } else {
                format!("{} is missing", vm::QEMU)
            },
        );
        let missing = self.art.missing();
        checks.insert(
            "image".into(),
            match (&missing, self.art.manifest()) {
                (None, Some(m)) => {
                    format!("{} (kernel {}, {} packages)", self.art.dir.display(), m.kernel_release, m.packages.len())
                }
                (Some(why), _) => why.clone(),
                _ => "incomplete".into(),
            },
        );
        checks.insert(
            "cgroup".into(),
            match cgroup::detect() {
                Some(v) if nix::unistd::geteuid().is_root() => format!("{v:?} (memory, pids, cpu caps on QEMU)"),
                Some(v) => format!("{v:?} present but airlock is not root: QEMU runs without a cgroup"),
                None => "none usable: QEMU runs without a cgroup".into(),
            },
        );
        checks.insert("channel".into(), "virtio-serial (no vhost-vsock needed)".into());
        if !qemu_ok || missing.is_some() {
            return Probe {
                backend: BackendKind::Microvm,
                isolation: Isolation::Vm,
                available: false,
                detail: if qemu_ok { missing.unwrap_or_default() } else { "QEMU is not installed".into() },
                fix: Some(fix_setup),
                checks,
            };
        }
        let a = self.accel();
        checks.insert("accel".into(), format!("{}: {}", a.accel.as_str(), a.detail));
        Probe {
            backend: BackendKind::Microvm,
            isolation: Isolation::Vm,
            available: true,
            detail: format!(
                "QEMU microvm under {}, guest kernel {}, started from snapshots{}",
                if a.accel == Accel::Kvm { "KVM" } else { "TCG (software emulation; KVM unusable here)" },
                self.art.manifest().map(|m| m.kernel_release).unwrap_or_default(),
                if self.cfg.snapshots { "" } else { " (off)" }
            ),
            fix: None,
            checks,
        }
    }

    fn create(&self, spec: &SandboxSpec) -> Result<Box<dyn Sandbox>, Error> {
        if spec.network == NetworkPolicy::Host {
            return Err(Error::invalid(
                "backend 'microvm' gives sandboxes no network device and refuses network policy 'host'; use network 'none', or the 'jail' or 'process' backend for code that needs the network",
            ));
        }
        if spec.limits.memory_bytes < MIN_MEMORY_BYTES {
            return Err(Error::invalid(format!(
                "limits.memory_bytes = {} is below the microvm backend's minimum of {} (the guest kernel needs room of its own); raise it",
                format_size(spec.limits.memory_bytes),
                format_size(MIN_MEMORY_BYTES)
            )));
        }
        Template::parse(spec.template.as_deref())?;
        airlock_core::request::validate_env(&spec.env)?;
        if let Some(why) = self.art.missing() {
            return Err(Error::Unavailable {
                backend: BackendKind::Microvm,
                reason: why,
                fix: Some("run `airlock setup microvm`".into()),
            });
        }
        let accel = self.accel();
        let started = Instant::now();
        let (mut vm, restored) = self.start_vm(spec, &accel)?;
        let limits = spec.limits;
        let attach = AgentRequest::Attach {
            time_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            entropy: airlock_core::outcome::base64_encode(&random_bytes(32)),
            env: spec.env.clone(),
            limits: GuestLimits {
                processes: limits.processes,
                open_files: limits.open_files,
                file_bytes: limits.file_bytes,
            },
        };
        vm.attach(&attach)?;
        let channel = vm.channel.take().expect("channel present until handed over");
        let files = vm::dup_file(&channel)?;
        let sup_chan = vm::dup_file(&channel)?;
        let (out_r, err_r) = (closed_pipe()?, closed_pipe()?);
        // Python handles an interrupt in a few milliseconds natively; an emulated guest
        // needs longer to unwind and format the traceback before it is killed.
        let grace = if accel.accel == Accel::Tcg { TCG_INTERRUPT_GRACE } else { Duration::from_millis(500) };
        let sup = VmSupervisor::new(
            vm.pid,
            sup_chan,
            vm.cgroup.clone(),
            vm.run_dir.path().to_path_buf(),
            limits.memory_bytes,
        )
        .with_interrupt_grace(grace);
        let meta = GuestMeta {
            backend: BackendKind::Microvm,
            isolation: Isolation::Vm,
            sandbox_id: spec.id.clone(),
            memory_bytes: limits.memory_bytes,
            warnings: warnings(&accel, &vm),
        };
        let guest =
            match Guest::connect(GuestPipes { channel, stdout: out_r, stderr: err_r }, sup, meta, ATTACH_TIMEOUT) {
                Ok(g) => g,
                Err(e) => {
                    let status = vm.qmp.status().unwrap_or_else(|e| e.to_string());
                    return Err(Error::host(format!(
                        "{e} (VM state: {status}){}{}",
                        vm::log_tail(vm.run_dir.path(), "qemu.log"),
                        vm::log_tail(vm.run_dir.path(), "console.log")
                    )));
                }
            };
        tracing::info!(
            sandbox = %spec.id,
            ms = started.elapsed().as_millis() as u64,
            path = if restored { "snapshot-restore" } else { "cold-boot" },
            accel = accel.accel.as_str(),
            "microvm: sandbox ready"
        );
        Ok(Box::new(MicrovmSandbox {
            id: spec.id.clone(),
            guest: Some(guest),
            vm: Some(vm),
            files,
            file_bytes: limits.file_bytes,
            alive: true,
            restored,
        }))
    }
}

/// The read end of a pipe whose write end is already closed: the cell loop's stdout
/// and stderr, which a microvm does not use (its output comes as stream frames).
fn closed_pipe() -> Result<std::os::fd::OwnedFd, Error> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Error::host(format!("pipe: {e}")))?;
    drop(w);
    Ok(r)
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    if let Ok(mut f) = File::open("/dev/urandom") {
        let _ = f.read_exact(&mut b);
    }
    b
}

/// A live microvm sandbox.
pub struct MicrovmSandbox {
    id: String,
    guest: Option<Guest<VmSupervisor>>,
    vm: Option<Vm>,
    files: File,
    file_bytes: u64,
    alive: bool,
    restored: bool,
}

impl MicrovmSandbox {
    /// True when the sandbox was restored from a snapshot (false: cold boot).
    pub fn restored(&self) -> bool {
        self.restored
    }

    /// QEMU's pid on the host (for inspection), while the VM runs.
    pub fn qemu_pid(&self) -> Option<i32> {
        self.vm.as_ref().map(|v| v.pid.as_raw())
    }

    /// The guest's console log so far (kernel messages), for diagnostics.
    pub fn console_log(&self) -> String {
        self.vm
            .as_ref()
            .map(|v| std::fs::read_to_string(v.run_dir.path().join("console.log")).unwrap_or_default())
            .unwrap_or_default()
    }

    fn gone(&self) -> Error {
        Error::SandboxGone(format!("sandbox {} has stopped; create a new sandbox", self.id))
    }

    /// One agent request and its reply, between cells.
    fn request(&mut self, req: &AgentRequest) -> Result<AgentReply, Error> {
        if !self.alive || !self.guest.as_ref().is_some_and(|g| g.is_alive()) {
            return Err(self.gone());
        }
        let deadline = Instant::now() + FILE_TIMEOUT;
        let bytes = encode(req);
        let mut off = 0;
        while off < bytes.len() {
            match self.files.write(&bytes[off..]) {
                Ok(n) => off += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        return Err(Error::host("the guest stopped reading its channel"));
                    }
                    let mut p = [nix::poll::PollFd::new(self.files.as_fd(), nix::poll::PollFlags::POLLOUT)];
                    let _ = nix::poll::poll(&mut p, nix::poll::PollTimeout::from(50u16));
                }
                Err(e) => {
                    self.alive = false;
                    return Err(Error::io("writing to the guest", e));
                }
            }
        }
        let mut dec = FrameDecoder::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match dec.next_frame::<serde_json::Value>() {
                Ok(Some(v)) => {
                    let kind = v.get("type").and_then(|t| t.as_str()).unwrap_or("").to_string();
                    match kind.as_str() {
                        "file_reply" => {
                            return serde_json::from_value(v)
                                .map_err(|e| Error::host(format!("malformed reply from the guest agent: {e}")));
                        }
                        "exited" => {
                            self.alive = false;
                            return Err(self.gone());
                        }
                        // Output a background process wrote between cells: not part of any cell.
                        "stream" => continue,
                        other => {
                            self.kill();
                            return Err(Error::host(format!("the guest agent answered a file request with '{other}'")));
                        }
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    self.kill();
                    return Err(Error::host(e.to_string()));
                }
            }
            let now = Instant::now();
            if now >= deadline {
                self.kill();
                return Err(Error::host(
                    "the guest agent did not answer a file request in time; the sandbox was stopped",
                ));
            }
            let mut p = [nix::poll::PollFd::new(self.files.as_fd(), nix::poll::PollFlags::POLLIN)];
            let _ = nix::poll::poll(&mut p, nix::poll::PollTimeout::from(50u16));
            match self.files.read(&mut buf) {
                Ok(0) => {
                    self.alive = false;
                    return Err(self.gone());
                }
                Ok(n) => dec.push(&buf[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
                Err(e) => return Err(Error::io("reading from the guest", e)),
            }
        }
    }

    fn file_reply(&mut self, req: &AgentRequest) -> Result<(Option<String>, Option<Vec<FileEntry>>), Error> {
        match self.request(req)? {
            AgentReply::FileReply { error: Some(e), .. } => Err(e.into_error()),
            AgentReply::FileReply { data, entries, .. } => Ok((data, entries)),
        }
    }

    fn kill(&mut self) {
        self.alive = false;
        if let Some(g) = self.guest.as_mut() {
            g.supervisor().kill();
        }
    }

    fn teardown(&mut self) {
        // QMP `quit` stops QEMU at once; the cell loop's terminate then finds it gone
        // (and kills it if `quit` did not get through).
        if self.guest.as_ref().is_some_and(|g| g.is_alive())
            && let Some(vm) = self.vm.as_mut()
            && let Err(e) = vm.qmp.quit()
        {
            tracing::debug!("microvm: QMP quit failed ({e}); killing QEMU");
        }
        if let Some(mut g) = self.guest.take() {
            g.terminate();
            g.supervisor().retire();
        }
        if let Some(vm) = self.vm.take() {
            // QEMU was reaped by the supervisor; its cgroup can go now.
            drop(vm);
        }
        self.alive = false;
    }
}

impl Sandbox for MicrovmSandbox {
    fn id(&self) -> &str {
        &self.id
    }

    fn kind(&self) -> BackendKind {
        BackendKind::Microvm
    }

    fn execute(&mut self, cell: &Cell, events: &mut EventSink<'_>) -> Result<Outcome, Error> {
        if !self.alive {
            return Err(self.gone());
        }
        let g = self.guest.as_mut().ok_or_else(|| Error::SandboxGone("destroyed".into()))?;
        let out = g.execute(cell, events);
        if !g.is_alive() {
            self.alive = false;
        }
        out
    }

    fn write_file(&mut self, path: &WorkspacePath, data: &[u8]) -> Result<(), Error> {
        if data.len() as u64 > self.file_bytes {
            return Err(Error::TooLarge(format!(
                "'{path}' is {} but the limit is {} (limits.file_bytes)",
                format_size(data.len() as u64),
                format_size(self.file_bytes)
            )));
        }
        // In pieces: the guest holds one piece of the file in transit beside what it
        // has written, never the whole file twice (decoded and encoded).
        let pieces: Vec<&[u8]> = if data.is_empty() {
            vec![data]
        } else {
            data.chunks(airlock_vm_agent::frames::FILE_PIECE_BYTES).collect()
        };
        for (i, piece) in pieces.into_iter().enumerate() {
            let req = AgentRequest::FileWrite {
                path: path.as_str().to_string(),
                data: airlock_core::outcome::base64_encode(piece),
                max_bytes: self.file_bytes,
                total: (i == 0).then_some(data.len() as u64),
                append: i > 0,
            };
            self.file_reply(&req)?;
        }
        Ok(())
    }

    fn read_file(&mut self, path: &WorkspacePath, max_bytes: u64) -> Result<Vec<u8>, Error> {
        let cap = max_bytes.min(airlock_guest::protocol::MAX_FRAME_BYTES as u64 * 3 / 4 - 1024);
        let (data, _) = self.file_reply(&AgentRequest::FileRead { path: path.as_str().to_string(), max_bytes: cap })?;
        let data = data.ok_or_else(|| Error::host("the guest agent returned no data"))?;
        airlock_core::outcome::base64_decode(&data)
            .map_err(|e| Error::host(format!("the guest agent sent bad base64: {e}")))
    }

    fn list_files(&mut self, dir: &WorkspacePath) -> Result<Vec<FileEntry>, Error> {
        let (_, entries) = self.file_reply(&AgentRequest::FileList { path: dir.as_str().to_string() })?;
        Ok(entries.unwrap_or_default())
    }

    fn remove_file(&mut self, path: &WorkspacePath) -> Result<(), Error> {
        self.file_reply(&AgentRequest::FileRemove { path: path.as_str().to_string() }).map(|_| ())
    }

    fn is_alive(&self) -> bool {
        self.alive && self.guest.as_ref().is_some_and(|g| g.is_alive())
    }

    fn canceller(&self) -> Option<Canceller> {
        self.guest.as_ref().map(|g| g.canceller())
    }

    fn destroy(mut self: Box<Self>) -> Result<(), Error> {
        self.teardown();
        Ok(())
    }
}

impl Drop for MicrovmSandbox {
    fn drop(&mut self) {
        self.teardown();
    }
}
