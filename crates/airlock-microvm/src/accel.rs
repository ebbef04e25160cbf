//! KVM or TCG: a bounded probe that boots a real guest under KVM and watches it
//! reach the agent, cached per host boot (nested KVM that hangs after real mode is
//! common in cloud VMs; `/dev/kvm` existing proves nothing).

use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::image::Artifacts;
use crate::vm::{self, Accel, Boot, KvmCpu, VmShape};

/// How long a KVM guest may take to boot to the agent before KVM is declared unusable.
pub const KVM_PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// The accelerator chosen, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccelChoice {
    /// KVM or TCG.
    #[serde(with = "accel_serde")]
    pub accel: Accel,
    /// The CPU model that booted under KVM.
    #[serde(default)]
    pub kvm_cpu: KvmCpu,
    /// Why, in a sentence.
    pub detail: String,
}

impl AccelChoice {
    fn tcg(detail: impl Into<String>) -> Self {
        AccelChoice { accel: Accel::Tcg, kvm_cpu: KvmCpu::Host, detail: detail.into() }
    }
}

mod accel_serde {
    use super::Accel;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(a: &Accel, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(a.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Accel, D::Error> {
        let s = String::deserialize(d)?;
        Ok(if s == "kvm" { Accel::Kvm } else { Accel::Tcg })
    }
}

/// The cached probe, valid for one host boot, QEMU version and guest image.
#[derive(Debug, Serialize, Deserialize)]
struct Cached {
    boot_id: String,
    qemu: String,
    agent: String,
    choice: AccelChoice,
    probe_ms: u64,
}

/// `QEMU emulator version ...` of the installed QEMU (cached).
pub fn qemu_version() -> String {
    static V: OnceLock<String> = OnceLock::new();
    V.get_or_init(|| {
        std::process::Command::new(vm::QEMU)
            .arg("--version")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.lines().next().map(|l| l.trim_start_matches("QEMU emulator version ").to_string()))
            .unwrap_or_else(|| "unknown".into())
    })
    .clone()
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default().trim().to_string()
}

/// The host's TSC frequency in kHz. Under TCG the guest's TSC is the host's, so the
/// guest is told this instead of calibrating (microvm has no PIT speaker port or
/// HPET to calibrate against). Measured once, rounded to 1 MHz so it is stable.
pub fn host_tsc_khz() -> u64 {
    static KHZ: OnceLock<u64> = OnceLock::new();
    *KHZ.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            let mut best = 0u64;
            for _ in 0..3 {
                let t0 = Instant::now();
                // SAFETY: rdtsc has no preconditions on x86_64.
                let c0 = unsafe { core::arch::x86_64::_rdtsc() };
                std::thread::sleep(Duration::from_millis(40));
                // SAFETY: as above.
                let c1 = unsafe { core::arch::x86_64::_rdtsc() };
                let ns = t0.elapsed().as_nanos() as u64;
                if ns > 0 {
                    let khz = (c1.wrapping_sub(c0) as u128 * 1_000_000 / ns as u128) as u64;
                    best = best.max(khz);
                }
            }
            ((best + 500) / 1000 * 1000).max(1000)
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            1_000_000
        }
    })
}

/// Chooses the accelerator: `forced` if given, else KVM when the probe boots a guest
/// with it, else TCG.
pub fn choose(art: &Artifacts, forced: Option<Accel>) -> AccelChoice {
    match forced {
        Some(Accel::Tcg) => {
            return AccelChoice::tcg("TCG forced by AIRLOCK_MICROVM_ACCEL=tcg");
        }
        Some(Accel::Kvm) => {
            return AccelChoice {
                accel: Accel::Kvm,
                kvm_cpu: KvmCpu::Host,
                detail: "KVM forced by AIRLOCK_MICROVM_ACCEL=kvm (not probed)".into(),
            };
        }
        None => {}
    }
    if !Path::new("/dev/kvm").exists() {
        return AccelChoice::tcg("no /dev/kvm on this host");
    }
    let cache_path = art.dir.join("kvm-probe.json");
    let agent = crate::image::agent_sha256();
    if let Ok(text) = std::fs::read_to_string(&cache_path)
        && let Ok(c) = serde_json::from_str::<Cached>(&text)
        && c.boot_id == boot_id()
        && c.qemu == qemu_version()
        && c.agent == agent
    {
        return c.choice;
    }
    let t = Instant::now();
    let (choice, definitive) = match probe_kvm(art) {
        Ok((ms, kvm_cpu)) => (
            AccelChoice {
                accel: Accel::Kvm,
                kvm_cpu,
                detail: format!("a KVM guest (-cpu {}) booted to the agent in {ms} ms", kvm_cpu.as_arg()),
            },
            true,
        ),
        Err((why, definitive)) => (AccelChoice::tcg(format!("KVM probe failed: {why}")), definitive),
    };
    let probe_ms = t.elapsed().as_millis() as u64;
    tracing::info!(probe_ms, accel = choice.accel.as_str(), "microvm: KVM probe: {}", choice.detail);
    let cached = Cached { boot_id: boot_id(), qemu: qemu_version(), agent, choice: choice.clone(), probe_ms };
    // Only a guest that booted or hung says something lasting about KVM; a host
    // fault (QEMU not starting) is tried again next time.
    if definitive && let Ok(bytes) = serde_json::to_vec_pretty(&cached) {
        let _ = std::fs::write(&cache_path, bytes);
    }
    choice
}

/// Boots the real guest under KVM and waits (bounded) for the agent. Tries `-cpu
/// host`, then `-cpu host,-arch-capabilities` if QEMU cannot even start with the
/// first (nested hosts that refuse that MSR). `Err((why, definitive))`: definitive
/// when a guest was started and failed to boot (worth caching).
fn probe_kvm(art: &Artifacts) -> Result<(u64, KvmCpu), (String, bool)> {
    if let Err(e) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        return Err((format!("cannot open /dev/kvm: {e}"), true));
    }
    art.ensure_initrd().map_err(|e| (e.to_string(), false))?;
    let mut start_errors = Vec::new();
    for kvm_cpu in [KvmCpu::Host, KvmCpu::HostWithoutArchCapabilities] {
        let shape = VmShape {
            accel: Accel::Kvm,
            memory_mib: 256,
            vcpus: 1,
            kvm_cpu,
            template: vm::Template::Bare,
            tsc_khz: host_tsc_khz(),
        };
        let t = Instant::now();
        let mut vm = match vm::launch(art, &shape, Boot::Cold, &format!("kvm-probe-{}", std::process::id())) {
            Ok(vm) => vm,
            Err(e) => {
                let e = e.to_string();
                let last = e.lines().last().unwrap_or("").to_string();
                start_errors.push(format!("-cpu {}: QEMU did not start ({last})", kvm_cpu.as_arg()));
                continue;
            }
        };
        let r = vm.wait_ready(KVM_PROBE_TIMEOUT);
        let _ = nix::sys::signal::kill(vm.pid, nix::sys::signal::Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(vm.pid, None);
        return match r {
            Ok(()) => Ok((t.elapsed().as_millis() as u64, kvm_cpu)),
            Err(_) => {
                let console = std::fs::read_to_string(vm.run_dir.path().join("console.log")).unwrap_or_default();
                let progressed = !console.trim().is_empty();
                start_errors.push(format!(
                    "-cpu {}: the guest did not reach the agent within {} s ({})",
                    kvm_cpu.as_arg(),
                    KVM_PROBE_TIMEOUT.as_secs(),
                    if progressed {
                        "the kernel printed something, then stalled"
                    } else {
                        "the kernel printed nothing: it hangs early, as nested KVM does on some hosts"
                    }
                ));
                Err((start_errors.join("; "), true))
            }
        };
    }
    // QEMU could not start a KVM guest with any CPU model: a lasting property too.
    Err((start_errors.join("; "), true))
}
