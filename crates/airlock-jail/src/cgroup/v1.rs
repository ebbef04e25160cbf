//! cgroup v1: one hierarchy per controller (`/sys/fs/cgroup/{memory,pids,cpu,cpuacct,freezer}`,
//! `cpu` and `cpuacct` often mounted together).
//!
//! A sandbox's group is created in each hierarchy below airlock's own cgroup there
//! (so the sandboxes stay inside whatever limits airlock itself was given), under the
//! fixed `airlock` parent:
//!
//! | purpose | file |
//! |---|---|
//! | memory cap | `memory.limit_in_bytes`, and `memory.memsw.limit_in_bytes` (memory + swap) at the same value when swap accounting exists; `memory.swappiness` 0 |
//! | peak | `memory.max_usage_in_bytes` |
//! | OOM kills | `oom_kill` in `memory.oom_control` |
//! | processes | `pids.max` |
//! | CPU quota | `cpu.cfs_quota_us` / `cpu.cfs_period_us` |
//! | CPU time | `cpuacct.usage` (ns) |
//! | kill all | `freezer.state` = `FROZEN`, SIGKILL every pid, `THAWED`, until `cgroup.procs` is empty |

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{
    CgroupLimits, CgroupOps, Enforced, Hot, MemoryState, PARENT, own_cgroups, parse_keyed, parse_u64, read_keyed,
    read_pids, rmdir_retry, under, write,
};

/// The v1 hierarchies usable for sandboxes: each controller's `airlock` parent directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hierarchies {
    /// `.../memory/<own>/airlock`.
    pub memory: Option<PathBuf>,
    /// `.../pids/<own>/airlock`.
    pub pids: Option<PathBuf>,
    /// `.../cpu/<own>/airlock`.
    pub cpu: Option<PathBuf>,
    /// `.../cpuacct/<own>/airlock`.
    pub cpuacct: Option<PathBuf>,
    /// `.../freezer/<own>/airlock`.
    pub freezer: Option<PathBuf>,
}

/// True if the current user may create groups in `dir` (an existing cgroup directory).
fn writable(dir: &Path) -> bool {
    nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK).is_ok()
}

impl Hierarchies {
    /// Finds the v1 hierarchies from mountinfo and `/proc/self/cgroup` text.
    pub fn detect(mountinfo: &str, own: &str) -> Result<Hierarchies, String> {
        Self::detect_with(mountinfo, own, writable)
    }

    /// [`Hierarchies::detect`] with an injectable writability check (tests).
    pub fn detect_with(mountinfo: &str, own: &str, can_write: impl Fn(&Path) -> bool) -> Result<Hierarchies, String> {
        let own = own_cgroups(own);
        let mut h = Hierarchies::default();
        let mut seen = Vec::new();
        for (mount, fstype, opts) in super::mounts(mountinfo) {
            if fstype != "cgroup" {
                continue;
            }
            let ctrls: Vec<&str> = opts.split(',').collect();
            for ctrl in ["memory", "pids", "cpu", "cpuacct", "freezer"] {
                if !ctrls.contains(&ctrl) {
                    continue;
                }
                let Some((_, _, path)) = own.iter().find(|(_, c, _)| c.iter().any(|x| x == ctrl)) else { continue };
                let base = under(&mount, path);
                if !base.is_dir() || !can_write(&base) {
                    continue;
                }
                seen.push(ctrl);
                let parent = Some(base.join(PARENT));
                match ctrl {
                    "memory" => h.memory = parent,
                    "pids" => h.pids = parent,
                    "cpu" => h.cpu = parent,
                    "cpuacct" => h.cpuacct = parent,
                    _ => h.freezer = parent,
                }
            }
        }
        if h.memory.is_none() && h.pids.is_none() {
            return Err(if nix::unistd::geteuid().is_root() {
                "no v1 memory or pids hierarchy is mounted".into()
            } else {
                "the v1 memory and pids hierarchies are not writable by this user (cgroup v1 has no delegation; run airlock as root for cgroup limits)".into()
            });
        }
        Ok(h)
    }

    /// What these hierarchies enforce.
    pub fn enforced(&self) -> Enforced {
        Enforced {
            memory: self.memory.is_some(),
            pids: self.pids.is_some(),
            cpu_quota: self.cpu.is_some(),
            cpu_time: self.cpuacct.is_some(),
            kill: self.freezer.is_some(),
        }
    }

    /// The distinct `airlock` parent directories.
    pub fn parents(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = [&self.memory, &self.pids, &self.cpu, &self.cpuacct, &self.freezer]
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// The group `name` (not created).
    pub fn open(&self, name: &str) -> Group {
        let j = |p: &Option<PathBuf>| p.as_ref().map(|p| p.join(name));
        Group {
            memory: j(&self.memory),
            pids: j(&self.pids),
            cpu: j(&self.cpu),
            cpuacct: j(&self.cpuacct),
            freezer: j(&self.freezer),
            hot_cpu: Hot::default(),
            hot_peak: Hot::default(),
        }
    }

    /// Creates the group `name` in every hierarchy.
    pub fn create(&self, name: &str) -> io::Result<Group> {
        self.create_with(name, true)
    }

    /// Creates the group `name`, in the `cpu` hierarchy only if `cpu` (for a quota).
    pub fn create_with(&self, name: &str, cpu: bool) -> io::Result<Group> {
        let mut g = self.open(name);
        if !cpu {
            g.cpu = None;
        }
        for parent in g.paths().iter().filter_map(|p| p.parent()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| io::Error::new(e.kind(), format!("creating {}: {e}", parent.display())))?;
        }
        for dir in g.paths() {
            if let Err(e) = std::fs::create_dir(&dir) {
                let _ = g.remove();
                return Err(io::Error::new(e.kind(), format!("creating {}: {e}", dir.display())));
            }
        }
        Ok(g)
    }
}

/// One sandbox's v1 group: its directory in each hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    memory: Option<PathBuf>,
    pids: Option<PathBuf>,
    cpu: Option<PathBuf>,
    cpuacct: Option<PathBuf>,
    freezer: Option<PathBuf>,
    hot_cpu: Hot,
    hot_peak: Hot,
}

impl Group {
    fn procs_file(&self) -> Option<PathBuf> {
        self.pids.as_ref().or(self.memory.as_ref()).or(self.freezer.as_ref()).map(|d| d.join("cgroup.procs"))
    }

    fn freeze(&self, dir: &Path, state: &str) -> io::Result<()> {
        write(&dir.join("freezer.state"), state)?;
        let end = Instant::now() + Duration::from_secs(1);
        while Instant::now() < end {
            let now = std::fs::read_to_string(dir.join("freezer.state")).unwrap_or_default();
            if now.trim() == state {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }
}

impl CgroupOps for Group {
    fn apply(&self, l: &CgroupLimits) -> io::Result<()> {
        if let Some(m) = &self.memory {
            write(&m.join("memory.limit_in_bytes"), &l.memory_bytes.to_string())?;
            let memsw = m.join("memory.memsw.limit_in_bytes");
            if memsw.exists() {
                write(&memsw, &l.memory_bytes.to_string())?;
            }
            let _ = write(&m.join("memory.swappiness"), "0");
        }
        if let Some(p) = &self.pids {
            write(&p.join("pids.max"), &l.pids.to_string())?;
        }
        if let (Some(c), Some(q)) = (&self.cpu, l.cpu_quota_us) {
            write(&c.join("cpu.cfs_period_us"), &super::CPU_PERIOD_US.to_string())?;
            write(&c.join("cpu.cfs_quota_us"), &q.to_string())?;
        }
        Ok(())
    }

    fn add(&self, pid: i32) -> io::Result<()> {
        for dir in self.paths() {
            write(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    fn add_for_memory(&self, pid: i32) -> io::Result<()> {
        match &self.memory {
            Some(m) => write(&m.join("cgroup.procs"), &pid.to_string()),
            None => Err(io::Error::new(io::ErrorKind::Unsupported, "no memory hierarchy")),
        }
    }

    /// Lowering: the cap first (memory + swap may not be below it), then memory + swap.
    fn set_memory_limit(&self, bytes: u64) -> io::Result<()> {
        let Some(m) = &self.memory else {
            return Err(io::Error::new(io::ErrorKind::Unsupported, "no memory hierarchy"));
        };
        write(&m.join("memory.limit_in_bytes"), &bytes.to_string())?;
        let memsw = m.join("memory.memsw.limit_in_bytes");
        if memsw.exists() {
            write(&memsw, &bytes.to_string())?;
        }
        Ok(())
    }

    fn memory_state(&self) -> Option<MemoryState> {
        let m = self.memory.as_ref()?;
        let num = |f: &str| parse_u64(&std::fs::read_to_string(m.join(f)).ok()?);
        let stat = std::fs::read_to_string(m.join("memory.stat")).ok()?;
        let file = |k: &str| parse_keyed(&stat, k).unwrap_or(0);
        Some(MemoryState {
            limit: num("memory.limit_in_bytes")?,
            usage: num("memory.usage_in_bytes")?,
            reclaimable: file("total_inactive_file") + file("total_active_file"),
        })
    }

    fn cpu_usage_ns(&self) -> Option<u64> {
        parse_u64(&self.hot_cpu.read(&self.cpuacct.as_ref()?.join("cpuacct.usage"))?)
    }

    fn memory_peak_bytes(&self) -> Option<u64> {
        parse_u64(&self.hot_peak.read(&self.memory.as_ref()?.join("memory.max_usage_in_bytes"))?)
    }

    fn oom_kills(&self) -> Option<u64> {
        read_keyed(&self.memory.as_ref()?.join("memory.oom_control"), "oom_kill")
    }

    fn pids(&self) -> Vec<i32> {
        self.procs_file().map(|f| read_pids(&f)).unwrap_or_default()
    }

    fn kill_all(&self) -> io::Result<()> {
        let end = Instant::now() + Duration::from_secs(3);
        loop {
            let pids = self.pids();
            if pids.is_empty() {
                return Ok(());
            }
            // Frozen tasks cannot fork or exit, so every listed pid is still ours when signalled.
            if let Some(f) = &self.freezer {
                self.freeze(f, "FROZEN")?;
            }
            for pid in self.pids() {
                // SAFETY: sends a signal to a pid listed in our own cgroup.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            if let Some(f) = &self.freezer {
                self.freeze(f, "THAWED")?;
            }
            if Instant::now() >= end {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{} processes survived SIGKILL in the sandbox's cgroup", pids.len()),
                ));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Nothing: v1 has no atomic kill, and signalling pids read from `cgroup.procs`
    /// without freezing first could hit a reused pid. The PID-namespace kill that comes
    /// with it ends every process anyway; [`CgroupOps::kill_all`] (freezer) follows at
    /// teardown.
    fn kill_now(&self) {}

    fn remove(&self) -> io::Result<()> {
        let mut first_err = None;
        for dir in self.paths() {
            if let Err(e) = rmdir_retry(&dir) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    fn paths(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = [&self.memory, &self.pids, &self.cpu, &self.cpuacct, &self.freezer]
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        v.sort();
        v.dedup();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n\
        35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n\
        37 31 0:34 / /sys/fs/cgroup/freezer rw - cgroup cgroup rw,freezer\n\
        39 31 0:36 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n";
    const OWN: &str = "8:pids:/\n6:freezer:/\n4:memory:/svc/x\n2:cpu,cpuacct:/\n0::/\n";

    #[test]
    fn detects_co_mounted_controllers_below_our_own_cgroup() {
        // The directories need not exist for this test: pretend they do and are writable.
        let mi = MOUNTINFO;
        let dirs = tempfile::tempdir().unwrap();
        let fake: String = mi.replace("/sys/fs/cgroup", &dirs.path().display().to_string());
        for d in ["cpu,cpuacct", "memory/svc/x", "freezer", "pids"] {
            std::fs::create_dir_all(dirs.path().join(d)).unwrap();
        }
        let h = Hierarchies::detect_with(&fake, OWN, |_| true).unwrap();
        assert_eq!(h.memory, Some(dirs.path().join("memory/svc/x/airlock")));
        assert_eq!(h.cpu, h.cpuacct);
        assert_eq!(h.parents().len(), 4, "cpu and cpuacct share a directory");
        assert!(h.enforced().kill && h.enforced().memory && h.enforced().cpu_time);
        let err = Hierarchies::detect_with(&fake, OWN, |_| false).unwrap_err();
        assert!(err.contains("memory"), "{err}");
    }

    #[test]
    fn group_files_in_a_fake_hierarchy() {
        let root = tempfile::tempdir().unwrap();
        let h = Hierarchies {
            memory: Some(root.path().join("memory/airlock")),
            pids: Some(root.path().join("pids/airlock")),
            cpu: Some(root.path().join("cpu/airlock")),
            cpuacct: Some(root.path().join("cpu/airlock")),
            freezer: None,
        };
        let g = h.create("1-2-sbx_t").unwrap();
        assert_eq!(g.paths().len(), 3);
        let m = root.path().join("memory/airlock/1-2-sbx_t");
        std::fs::write(m.join("memory.memsw.limit_in_bytes"), "").unwrap();
        g.apply(&CgroupLimits { memory_bytes: 1 << 28, pids: 32, cpu_quota_us: Some(50_000) }).unwrap();
        assert_eq!(std::fs::read_to_string(m.join("memory.limit_in_bytes")).unwrap(), "268435456");
        assert_eq!(std::fs::read_to_string(m.join("memory.memsw.limit_in_bytes")).unwrap(), "268435456");
        assert_eq!(std::fs::read_to_string(root.path().join("pids/airlock/1-2-sbx_t/pids.max")).unwrap(), "32");
        let c = root.path().join("cpu/airlock/1-2-sbx_t");
        assert_eq!(std::fs::read_to_string(c.join("cpu.cfs_quota_us")).unwrap(), "50000");
        std::fs::write(m.join("memory.oom_control"), "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n").unwrap();
        assert_eq!(g.oom_kills(), Some(3));
        std::fs::write(c.join("cpuacct.usage"), "1500000\n").unwrap();
        assert_eq!(g.cpu_usage_ns(), Some(1_500_000));
        assert!(g.pids().is_empty());
        // Room for more: the cap less the usage, plus the (hierarchical) file cache;
        // shmem (tmpfs) and anonymous memory cannot be reclaimed without swap.
        std::fs::write(m.join("memory.usage_in_bytes"), "200000000\n").unwrap();
        std::fs::write(
            m.join("memory.stat"),
            "cache 9\nshmem 100000000\ninactive_file 5\ntotal_shmem 100000000\ntotal_inactive_file 1000\ntotal_active_file 24\n",
        )
        .unwrap();
        let st = g.memory_state().unwrap();
        assert_eq!((st.limit, st.usage, st.reclaimable), (268_435_456, 200_000_000, 1024));
        assert_eq!(st.room(), 268_435_456 - 200_000_000 + 1024);
        // Only the memory hierarchy gets a process moved in for memory.
        std::fs::write(m.join("cgroup.procs"), "").unwrap();
        g.add_for_memory(4242).unwrap();
        assert_eq!(std::fs::read_to_string(m.join("cgroup.procs")).unwrap(), "4242");
        assert!(!root.path().join("pids/airlock/1-2-sbx_t/cgroup.procs").exists());
        g.kill_all().unwrap();
    }
}
