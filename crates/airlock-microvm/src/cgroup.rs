//! A cgroup for one QEMU process: memory, pids and CPU caps, the OOM counter and
//! peak memory. cgroup v1 (one directory per controller) and v2 (one unified
//! directory) behind one type. Creating cgroups needs privileges; without them the
//! VM runs without one and the backend says so.

use std::path::{Path, PathBuf};

/// Which hierarchy a cgroup lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// One directory per controller under `/sys/fs/cgroup/<controller>`.
    V1,
    /// The unified hierarchy at `/sys/fs/cgroup`.
    V2,
}

/// Limits of one VM's cgroup.
#[derive(Debug, Clone, Copy)]
pub struct CgroupLimits {
    /// Memory of the QEMU process (guest RAM plus QEMU's own overhead).
    pub memory_bytes: u64,
    /// Threads of the QEMU process.
    pub pids: u32,
    /// CPUs' worth of time per period.
    pub cpus: u32,
}

/// A cgroup made for one VM, removed on drop.
#[derive(Debug)]
pub struct Cgroup {
    version: Version,
    dirs: Vec<PathBuf>,
}

const ROOT: &str = "/sys/fs/cgroup";

/// Which hierarchy this host offers for airlock's use, if any.
pub fn detect() -> Option<Version> {
    let root = Path::new(ROOT);
    if root.join("memory").join("cgroup.procs").exists() && root.join("pids").join("cgroup.procs").exists() {
        return Some(Version::V1);
    }
    let controllers = std::fs::read_to_string(root.join("cgroup.controllers")).ok()?;
    let has = |c: &str| controllers.split_whitespace().any(|x| x == c);
    (has("memory") && has("pids")).then_some(Version::V2)
}

fn write(path: &Path, value: &str) -> Result<(), String> {
    std::fs::write(path, value).map_err(|e| format!("writing {value:?} to {}: {e}", path.display()))
}

impl Cgroup {
    /// Creates `airlock/<name>` with `limits`.
    pub fn create(name: &str, limits: CgroupLimits) -> Result<Self, String> {
        let version = detect().ok_or("no usable cgroup hierarchy (memory and pids controllers) on this host")?;
        let root = Path::new(ROOT);
        let mut cg = Cgroup { version, dirs: Vec::new() };
        match version {
            Version::V1 => {
                for ctrl in ["memory", "pids", "cpu"] {
                    let base = root.join(ctrl);
                    if !base.exists() {
                        continue;
                    }
                    let dir = base.join("airlock").join(name);
                    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
                    cg.dirs.push(dir.clone());
                    match ctrl {
                        "memory" => {
                            write(&dir.join("memory.limit_in_bytes"), &limits.memory_bytes.to_string())?;
                            // No swap here, but where there is, the cap must cover it too.
                            let _ = std::fs::write(
                                dir.join("memory.memsw.limit_in_bytes"),
                                limits.memory_bytes.to_string(),
                            );
                        }
                        "pids" => write(&dir.join("pids.max"), &limits.pids.to_string())?,
                        _ => {
                            write(&dir.join("cpu.cfs_period_us"), "100000")?;
                            write(&dir.join("cpu.cfs_quota_us"), &(u64::from(limits.cpus) * 100_000).to_string())?;
                        }
                    }
                }
            }
            Version::V2 => {
                let parent = root.join("airlock");
                std::fs::create_dir_all(&parent).map_err(|e| format!("creating {}: {e}", parent.display()))?;
                let _ = std::fs::write(root.join("cgroup.subtree_control"), "+memory +pids +cpu");
                let _ = std::fs::write(parent.join("cgroup.subtree_control"), "+memory +pids +cpu");
                let dir = parent.join(name);
                std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
                cg.dirs.push(dir.clone());
                write(&dir.join("memory.max"), &limits.memory_bytes.to_string())?;
                let _ = std::fs::write(dir.join("memory.swap.max"), "0");
                write(&dir.join("pids.max"), &limits.pids.to_string())?;
                let _ = std::fs::write(dir.join("cpu.max"), format!("{} 100000", u64::from(limits.cpus) * 100_000));
            }
        }
        Ok(cg)
    }

    /// Moves `pid` into the cgroup.
    pub fn add(&self, pid: i32) -> Result<(), String> {
        for d in &self.dirs {
            write(&d.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    fn memory_dir(&self) -> Option<&PathBuf> {
        match self.version {
            Version::V1 => self.dirs.iter().find(|d| d.starts_with(Path::new(ROOT).join("memory"))),
            Version::V2 => self.dirs.first(),
        }
    }

    /// OOM kills in this cgroup so far.
    pub fn oom_kills(&self) -> u64 {
        let Some(d) = self.memory_dir() else { return 0 };
        let (file, key) = match self.version {
            Version::V1 => ("memory.oom_control", "oom_kill "),
            Version::V2 => ("memory.events", "oom_kill "),
        };
        std::fs::read_to_string(d.join(file))
            .ok()
            .and_then(|s| s.lines().find_map(|l| l.strip_prefix(key).and_then(|v| v.trim().parse().ok())))
            .unwrap_or(0)
    }

    /// Peak memory of the cgroup, where the kernel reports it.
    pub fn peak_memory_bytes(&self) -> Option<u64> {
        let d = self.memory_dir()?;
        let file = match self.version {
            Version::V1 => "memory.max_usage_in_bytes",
            Version::V2 => "memory.peak",
        };
        std::fs::read_to_string(d.join(file)).ok()?.trim().parse().ok()
    }

    /// A description for `doctor` and logs.
    pub fn describe(&self) -> String {
        format!(
            "cgroup {:?} at {}",
            self.version,
            self.dirs.first().map(|d| d.display().to_string()).unwrap_or_default()
        )
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        for d in &self.dirs {
            // Fails while a process is still inside: a killed QEMU with a large guest
            // takes a moment to release its memory even after it was reaped.
            for _ in 0..100 {
                if std::fs::remove_dir(d).is_ok() || !d.exists() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
    }
}
