//! One QEMU microvm: its command line, its jailed process, its monitor, and the
//! supervisor the shared cell loop (`airlock_guest::host`) drives it through.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use airlock_core::units::format_size;
use airlock_core::{Error, Status};
use airlock_guest::host::{ExitInfo, Supervisor, signal_name};
use airlock_guest::protocol::{FrameDecoder, encode};
use airlock_vm_agent::{AgentRequest, PORT_NAME};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::cgroup::{Cgroup, CgroupLimits};
use crate::image::Artifacts;
use crate::jail::{self, HostIdentity, JailSpec};
use crate::qmp::Qmp;

/// The QEMU binary (Debian's `qemu-system-x86`).
pub const QEMU: &str = "/usr/bin/qemu-system-x86_64";

/// How the guest's CPU is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Accel {
    /// Hardware virtualisation.
    Kvm,
    /// QEMU's software emulation.
    Tcg,
}

impl Accel {
    /// `kvm` or `tcg`.
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// The CPU model a KVM guest gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KvmCpu {
    /// `-cpu host`.
    #[default]
    Host,
    /// `-cpu host,-arch-capabilities`, for nested hosts whose KVM refuses the
    /// IA32_ARCH_CAPABILITIES MSR (the guest then assumes it is vulnerable and keeps
    /// its mitigations on).
    HostWithoutArchCapabilities,
}

impl KvmCpu {
    /// The `-cpu` value.
    pub fn as_arg(self) -> &'static str {
        match self {
            KvmCpu::Host => "host",
            KvmCpu::HostWithoutArchCapabilities => "host,-arch-capabilities",
        }
    }
}

/// Modules the `default` template preloads before its snapshot.
pub const DEFAULT_PRELOAD: &[&str] = &["numpy", "pandas", "matplotlib", "matplotlib.pyplot"];

/// What the snapshot's interpreter has already imported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Template {
    /// numpy, pandas and matplotlib preloaded (VMs of at least 256 MiB).
    Default,
    /// Nothing preloaded.
    Bare,
}

impl Template {
    /// Parses a template name (`None` is `default`).
    pub fn parse(name: Option<&str>) -> Result<Template, Error> {
        match name {
            None | Some("default") => Ok(Template::Default),
            Some("bare") => Ok(Template::Bare),
            Some(other) => {
                Err(Error::invalid(format!("backend 'microvm' has no template '{other}'; use 'default' or 'bare'")))
            }
        }
    }

    /// The name.
    pub fn as_str(self) -> &'static str {
        match self {
            Template::Default => "default",
            Template::Bare => "bare",
        }
    }

    /// The modules to preload in a VM of `memory_mib`.
    pub fn preload(self, memory_mib: u64) -> &'static [&'static str] {
        match self {
            Template::Default if memory_mib >= 256 => DEFAULT_PRELOAD,
            _ => &[],
        }
    }
}

/// The shape of one VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VmShape {
    /// KVM or TCG.
    pub accel: Accel,
    /// Guest memory in MiB (`-m`).
    pub memory_mib: u64,
    /// vCPUs (`-smp`).
    pub vcpus: u32,
    /// The CPU model under KVM.
    pub kvm_cpu: KvmCpu,
    /// What the guest preloads before it reports ready.
    pub template: Template,
    /// The host's TSC frequency in kHz, told to the guest under TCG (whose TSC is the
    /// host's), so the guest's clock runs at the right speed without calibration.
    pub tsc_khz: u64,
}

/// The CPU model under TCG (`$AIRLOCK_MICROVM_TCG_CPU`, default `qemu64`). Not `max`:
/// with AVX and ERMS advertised, glibc picks string routines TCG emulates slowly
/// (a 64 MiB memset took 4.5 s under `max` and 0.6 s under `qemu64` here).
pub fn tcg_cpu() -> &'static str {
    static CPU: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    CPU.get_or_init(|| {
        std::env::var("AIRLOCK_MICROVM_TCG_CPU").ok().filter(|c| !c.is_empty()).unwrap_or_else(|| "qemu64".into())
    })
}

/// How the VM starts.
pub enum Boot {
    /// Boot the kernel.
    Cold,
    /// Restore a saved state from this file.
    Restore(File),
}

/// QEMU's own memory beyond the guest's RAM, allowed by the cgroup.
const QEMU_OVERHEAD_BYTES: u64 = 512 << 20;

/// The QEMU command line (without the program).
pub fn qemu_args(shape: &VmShape, restore: bool) -> Vec<String> {
    let mut cmdline = vec![
        "console=ttyS0",
        "quiet",
        "loglevel=3",
        "panic=-1",
        "rdinit=/init",
        "8250.nr_uarts=1",
        "tsc=reliable",
        "random.trust_cpu=on",
    ]
    .into_iter()
    .map(String::from)
    .collect::<Vec<_>>();
    let preload = shape.template.preload(shape.memory_mib);
    if !preload.is_empty() {
        cmdline.push(format!("airlock.preload={}", preload.join(",")));
    }
    let (accel, cpu) = match shape.accel {
        Accel::Kvm => ("kvm".to_string(), shape.kvm_cpu.as_arg()),
        Accel::Tcg => {
            cmdline.push(format!("tsc_early_khz={}", shape.tsc_khz));
            if tcg_cpu() == "qemu64" {
                // OpenBLAS takes qemu64 (an AMD family 15 CPU) for an Opteron and uses
                // instructions TCG's qemu64 lacks (SIGILL in numpy.dot); its SSE3
                // kernels run everywhere.
                cmdline.push("airlock.openblas_coretype=Prescott".into());
            }
            // Speculation is not emulated by TCG: the guest's mitigations only cost time.
            cmdline.push("mitigations=off".into());
            ("tcg,tb-size=256".to_string(), tcg_cpu())
        }
    };
    let mut a: Vec<String> = vec![
        "-M".into(),
        "microvm,acpi=on,isa-serial=on,rtc=on,pit=on,pic=on".into(),
        "-accel".into(),
        accel,
        "-cpu".into(),
        cpu.into(),
        "-m".into(),
        format!("{}M", shape.memory_mib),
        "-smp".into(),
        shape.vcpus.to_string(),
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-display".into(),
        "none".into(),
        "-no-reboot".into(),
        "-chardev".into(),
        "stdio,id=con,signal=off".into(),
        "-serial".into(),
        "chardev:con".into(),
        "-kernel".into(),
        format!("/proc/self/fd/{FD_KERNEL}"),
        "-initrd".into(),
        format!("/proc/self/fd/{FD_INITRD}"),
        "-append".into(),
        cmdline.join(" "),
        "-drive".into(),
        format!("file=/proc/self/fd/{FD_ROOTFS},format=raw,if=none,id=root,readonly=on,file.locking=off"),
        "-device".into(),
        "virtio-blk-device,drive=root".into(),
        "-device".into(),
        "virtio-serial-device,max_ports=2".into(),
        "-chardev".into(),
        format!("socket,id=chan,fd={FD_CHANNEL}"),
        "-device".into(),
        format!("virtserialport,chardev=chan,name={PORT_NAME}"),
        "-object".into(),
        "rng-builtin,id=rng".into(),
        "-device".into(),
        "virtio-rng-device,rng=rng".into(),
        "-chardev".into(),
        format!("socket,id=qmp,fd={FD_QMP}"),
        "-mon".into(),
        "chardev=qmp,mode=control".into(),
        "-sandbox".into(),
        "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny".into(),
    ];
    if restore {
        a.push("-incoming".into());
        a.push(format!("fd:{FD_SNAPSHOT}"));
    }
    a
}

const FD_CHANNEL: i32 = 3;
const FD_QMP: i32 = 4;
const FD_KERNEL: i32 = 5;
const FD_INITRD: i32 = 6;
const FD_ROOTFS: i32 = 7;
const FD_SNAPSHOT: i32 = 8;

/// A running VM.
pub struct Vm {
    /// QEMU's pid.
    pub pid: Pid,
    /// QEMU's monitor.
    pub qmp: Qmp,
    /// The host end of the virtio-serial channel (until handed to the cell loop).
    pub channel: Option<OwnedFd>,
    /// The VM's cgroup, if one could be made.
    pub cgroup: Option<Arc<Cgroup>>,
    /// Console and QEMU logs.
    pub run_dir: tempfile::TempDir,
    /// Why no cgroup was made, if none was.
    pub cgroup_error: Option<String>,
}

fn open_ro(p: &Path) -> Result<OwnedFd, Error> {
    File::open(p).map(OwnedFd::from).map_err(|e| Error::io(format!("opening {}", p.display()), e))
}

/// Starts QEMU jailed with the given shape.
pub fn launch(art: &Artifacts, shape: &VmShape, boot: Boot, name: &str) -> Result<Vm, Error> {
    let run_dir = tempfile::Builder::new()
        .prefix("airlock-microvm-")
        .tempdir()
        .map_err(|e| Error::io("creating the VM's run directory", e))?;
    let console = File::create(run_dir.path().join("console.log")).map_err(|e| Error::io("creating console.log", e))?;
    let qlog = File::create(run_dir.path().join("qemu.log")).map_err(|e| Error::io("creating qemu.log", e))?;
    let (chan_host, chan_vm) = airlock_guest::launch::channel_pair()?;
    let (qmp_host, qmp_vm) = airlock_guest::launch::channel_pair()?;
    let restore = matches!(boot, Boot::Restore(_));
    let mut fds: Vec<(OwnedFd, i32)> = vec![
        (jail::dev_null()?, 0),
        (OwnedFd::from(console), 1),
        (OwnedFd::from(qlog), 2),
        (chan_vm, FD_CHANNEL),
        (qmp_vm, FD_QMP),
        (open_ro(&art.kernel())?, FD_KERNEL),
        (open_ro(&art.initrd())?, FD_INITRD),
        (open_ro(&art.rootfs())?, FD_ROOTFS),
    ];
    if let Boot::Restore(f) = boot {
        fds.push((OwnedFd::from(f), FD_SNAPSHOT));
    }
    let (cgroup, cgroup_error) = match Cgroup::create(
        name,
        CgroupLimits {
            memory_bytes: (shape.memory_mib << 20) + QEMU_OVERHEAD_BYTES,
            pids: 64 + shape.vcpus,
            cpus: shape.vcpus,
        },
    ) {
        Ok(c) => (Some(Arc::new(c)), None),
        Err(e) => {
            tracing::warn!("microvm: no cgroup for QEMU: {e}");
            (None, Some(e))
        }
    };
    let (identity, private_kvm) = match shape.accel {
        Accel::Tcg => (jail::next_identity(), None),
        Accel::Kvm => kvm_identity(),
    };
    let kvm = (shape.accel == Accel::Kvm)
        .then(|| private_kvm.as_ref().map_or_else(|| PathBuf::from(HOST_KVM), |d| d.path().to_path_buf()));
    let spec = JailSpec { program: QEMU.into(), args: qemu_args(shape, restore), fds, kvm, identity };
    let jailed = jail::spawn(spec, cgroup.as_deref())?;
    // The bind mount in QEMU's namespace keeps the node usable; the host copy goes.
    drop(private_kvm);
    tracing::debug!(pid = jailed.pid.as_raw(), accel = shape.accel.as_str(), restore, "microvm: QEMU started");
    let qmp = match Qmp::connect(qmp_host, Duration::from_secs(10)) {
        Ok(q) => q,
        Err(e) => {
            let _ = kill(jailed.pid, Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(jailed.pid, None);
            return Err(Error::host(format!("{e}{}", log_tail(run_dir.path(), "qemu.log"))));
        }
    };
    let mut vm = Vm { pid: jailed.pid, qmp, channel: Some(chan_host), cgroup, run_dir, cgroup_error };
    if restore && let Err(e) = vm.resume_restored(Duration::from_secs(60)) {
        let _ = kill(vm.pid, Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(vm.pid, None);
        return Err(Error::host(format!("{e}{}", log_tail(vm.run_dir.path(), "qemu.log"))));
    }
    Ok(vm)
}

/// Who QEMU runs as under KVM, and the private device node it gets as `/dev/kvm`
/// (none: the host's own node).
///
/// Unprivileged whenever possible: through `/dev/kvm`'s mode or group, or (as
/// root, when `/dev/kvm` is root-only, as on hosts without udev rules) through a
/// private device node in the VM's run directory owned by QEMU's uid alone. Host
/// root mapped into the namespaces is the last resort, when even that fails.
fn kvm_identity() -> (HostIdentity, Option<jail::PrivateDevice>) {
    use std::os::unix::fs::MetadataExt;
    let id = jail::next_identity();
    let Ok(m) = std::fs::metadata(HOST_KVM) else { return (id, None) };
    if m.mode() & 0o006 == 0o006 {
        return (id, None);
    }
    if let HostIdentity::Unprivileged(u, _) = id
        && m.mode() & 0o060 == 0o060
    {
        return (HostIdentity::Unprivileged(u, m.gid()), None);
    }
    if !nix::unistd::geteuid().is_root() {
        return (id, None);
    }
    if let HostIdentity::Unprivileged(uid, gid) = id {
        match jail::PrivateDevice::create(m.rdev(), uid, gid) {
            Ok(dev) => return (id, Some(dev)),
            Err(e) => tracing::warn!("microvm: QEMU keeps host root under KVM: {e}"),
        }
    }
    (HostIdentity::Root, None)
}

/// The host's KVM device.
const HOST_KVM: &str = "/dev/kvm";

/// The last lines of a log in the run directory, as a suffix for error messages.
pub fn log_tail(dir: &Path, name: &str) -> String {
    let text = std::fs::read_to_string(dir.join(name)).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        return String::new();
    }
    let tail = &lines[lines.len().saturating_sub(12)..];
    format!("; {name} ends with:\n{}", tail.join("\n"))
}

impl Vm {
    /// Waits for the incoming state to load, then starts the VM (the snapshot was
    /// taken of a paused VM, so QEMU leaves it paused).
    fn resume_restored(&mut self, timeout: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + timeout;
        loop {
            let st = self.qmp.status()?;
            match st.as_str() {
                "inmigrate" => {}
                "running" => return Ok(()),
                "paused" | "postmigrate" | "prelaunch" => {
                    self.qmp.execute("cont", None, Duration::from_secs(10))?;
                    return Ok(());
                }
                other => return Err(Error::host(format!("the restored VM is in state '{other}'"))),
            }
            if Instant::now() >= deadline {
                return Err(Error::host("loading the VM snapshot took too long"));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Waits for the agent's unsolicited `ready` frame after a cold boot.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<(), Error> {
        let chan = self.channel.as_ref().ok_or_else(|| Error::host("the channel was handed over"))?;
        let deadline = Instant::now() + timeout;
        let mut dec = FrameDecoder::new();
        let mut buf = vec![0u8; 4096];
        loop {
            if let Some(v) = dec.next_frame::<serde_json::Value>().map_err(|e| Error::host(e.to_string()))? {
                if v.get("type").and_then(|t| t.as_str()) == Some("ready") {
                    return Ok(());
                }
                return Err(Error::host(format!("the guest agent sent {v} before it was ready")));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::host(format!(
                    "the guest did not boot within {} ms{}",
                    timeout.as_millis(),
                    log_tail(self.run_dir.path(), "console.log")
                )));
            }
            let mut pfd = [nix::poll::PollFd::new(chan.as_fd(), nix::poll::PollFlags::POLLIN)];
            let ms = (deadline - now).min(Duration::from_millis(50)).as_millis() as u16;
            let _ = nix::poll::poll(&mut pfd, nix::poll::PollTimeout::from(ms));
            if pfd[0].revents().is_some_and(|r| !r.is_empty()) {
                let n =
                    nix::unistd::read(chan, &mut buf).map_err(|e| Error::host(format!("reading the channel: {e}")))?;
                if n == 0 {
                    return Err(Error::host(format!(
                        "QEMU closed the channel during boot{}{}",
                        log_tail(self.run_dir.path(), "qemu.log"),
                        log_tail(self.run_dir.path(), "console.log")
                    )));
                }
                dec.push(&buf[..n]);
            }
            if let Ok(nix::sys::wait::WaitStatus::Exited(..) | nix::sys::wait::WaitStatus::Signaled(..)) =
                nix::sys::wait::waitpid(self.pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG))
            {
                return Err(Error::host(format!(
                    "QEMU exited during boot{}{}",
                    log_tail(self.run_dir.path(), "qemu.log"),
                    log_tail(self.run_dir.path(), "console.log")
                )));
            }
        }
    }

    /// Pauses the VM, saves its state to `dest` (atomically), and resumes it.
    pub fn save_snapshot(&mut self, dest: &Path) -> Result<(), Error> {
        let dir = dest.parent().ok_or_else(|| Error::host("snapshot path has no parent"))?;
        std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| Error::io("creating the snapshot file", e))?;
        let t = Duration::from_secs(10);
        self.qmp.execute("stop", None, t)?;
        let saved = self.qmp.save_to(tmp.as_file(), Duration::from_secs(120));
        // Resume whatever happened.
        let resumed = self.qmp.execute("cont", None, t);
        saved?;
        resumed?;
        tmp.as_file().sync_all().ok();
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o644));
        }
        tmp.persist(dest).map_err(|e| Error::io(format!("saving {}", dest.display()), e.error))?;
        Ok(())
    }

    /// Sends the attach request (before the cell loop takes the channel over).
    pub fn attach(&mut self, req: &AgentRequest) -> Result<(), Error> {
        let chan = self.channel.as_ref().ok_or_else(|| Error::host("the channel was handed over"))?;
        let mut f = File::from(chan.try_clone().map_err(|e| Error::io("dup", e))?);
        f.write_all(&encode(req)).map_err(|e| Error::io("writing to the guest", e))
    }
}

/// Supervises one QEMU process for the cell loop.
pub struct VmSupervisor {
    pid: Pid,
    exit: Option<ExitInfo>,
    retired: Arc<AtomicBool>,
    /// A duplicate of the channel, to send interrupts.
    chan: File,
    cgroup: Option<Arc<Cgroup>>,
    run_dir: PathBuf,
    memory_bytes: u64,
    /// Set when the cell loop killed the VM itself (a limit, a cancel).
    killed_by_host: bool,
    /// How long an interrupted cell may take before the VM is killed.
    interrupt_grace: Duration,
}

impl VmSupervisor {
    /// Supervises `pid`, sending interrupts over `chan`.
    pub fn new(pid: Pid, chan: File, cgroup: Option<Arc<Cgroup>>, run_dir: PathBuf, memory_bytes: u64) -> Self {
        VmSupervisor {
            pid,
            exit: None,
            retired: Arc::new(AtomicBool::new(false)),
            chan,
            cgroup,
            run_dir,
            memory_bytes,
            killed_by_host: false,
            interrupt_grace: Duration::from_millis(500),
        }
    }

    /// Sets how long an interrupted cell may take to stop (longer under TCG).
    pub fn with_interrupt_grace(mut self, grace: Duration) -> Self {
        self.interrupt_grace = grace;
        self
    }

    /// After this, kill handles do nothing (the pid may be reused).
    pub fn retire(&mut self) {
        self.kill();
        let _ = self.wait(Duration::from_secs(2));
        self.retired.store(true, Ordering::SeqCst);
    }
}

impl Supervisor for VmSupervisor {
    fn interrupt(&mut self) {
        let bytes = encode(&AgentRequest::Interrupt);
        // Best effort: if the channel is full the VM is killed after the grace period.
        let _ = self.chan.write(&bytes);
    }

    fn kill(&mut self) {
        self.killed_by_host = true;
        if !self.retired.load(Ordering::SeqCst) && self.exit.is_none() {
            let _ = kill(self.pid, Signal::SIGKILL);
        }
    }

    fn try_wait(&mut self) -> Option<ExitInfo> {
        if let Some(e) = self.exit {
            return Some(e);
        }
        let mut status: libc::c_int = 0;
        // SAFETY: waitpid writes only to the status out-pointer, a live local.
        let r = unsafe { libc::waitpid(self.pid.as_raw(), &mut status, libc::WNOHANG) };
        if r == self.pid.as_raw() {
            let info = ExitInfo {
                code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
                signal: libc::WIFSIGNALED(status).then(|| libc::WTERMSIG(status)),
                cpu_ms: None,
                peak_memory_bytes: None,
            };
            self.exit = Some(info);
            return Some(info);
        }
        if r < 0 {
            let info = ExitInfo::default();
            self.exit = Some(info);
            return Some(info);
        }
        None
    }

    fn kill_handle(&self) -> Arc<dyn Fn() + Send + Sync> {
        let pid = self.pid;
        let retired = self.retired.clone();
        Arc::new(move || {
            if !retired.load(Ordering::SeqCst) {
                let _ = kill(pid, Signal::SIGKILL);
            }
        })
    }

    /// The agent inside the VM supervises the interpreter and reports its end.
    fn accepts_exited_frames(&self) -> bool {
        true
    }

    fn explain_death(&mut self, exit: &ExitInfo) -> Option<(Status, String)> {
        // Only QEMU's own end is ours to explain (a guest process killed by a signal
        // inside the VM is classified by the loop).
        self.exit?;
        if self.cgroup.as_ref().is_some_and(|c| c.oom_kills() > 0) {
            return Some((
                Status::MemoryLimit,
                format!(
                    "the virtual machine exceeded its host memory allowance ({} of guest RAM plus QEMU's overhead) and was killed",
                    format_size(self.memory_bytes)
                ),
            ));
        }
        if self.killed_by_host {
            // The loop's own reason (timeout, output cap, cancel) stands.
            return None;
        }
        let how = match (exit.signal, exit.code) {
            (Some(s), _) => format!("killed by {}", signal_name(s)),
            (None, Some(c)) => format!("exited with status {c}"),
            _ => "vanished".into(),
        };
        Some((
            Status::Killed,
            format!(
                "the virtual machine stopped (QEMU {how}){}",
                log_tail(&self.run_dir, "qemu.log").lines().take(4).collect::<Vec<_>>().join("\n")
            ),
        ))
    }

    fn interrupt_grace(&self) -> Duration {
        self.interrupt_grace
    }
}

impl Drop for VmSupervisor {
    fn drop(&mut self) {
        if self.exit.is_none() {
            self.kill();
            let _ = self.wait(Duration::from_secs(2));
        }
    }
}

/// Duplicates a descriptor into a `File`.
pub fn dup_file(fd: &OwnedFd) -> Result<File, Error> {
    fd.try_clone().map(File::from).map_err(|e| Error::io("duplicating the channel", e))
}
