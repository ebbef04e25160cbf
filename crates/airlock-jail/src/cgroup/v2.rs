//! cgroup v2: the unified hierarchy, the common case on current distributions.
//!
//! Where sandbox groups go:
//!
//! * as root: `<cgroup2 mount>/airlock/<group>` (the root cgroup may hold processes and
//!   children at once, so nothing about airlock's own cgroup has to move);
//! * rootless: below the nearest ancestor of airlock's own cgroup that this user owns
//!   (systemd delegates `user@UID.service` and the slices below it) and that holds no
//!   processes of its own, e.g. `.../user@1000.service/app.slice/airlock/<group>`.
//!   Without such a delegated ancestor there are no cgroup limits (see `doctor`).
//!
//! | purpose | file |
//! |---|---|
//! | memory cap | `memory.max`, `memory.swap.max` = 0 |
//! | peak | `memory.peak` (Linux 5.19+) |
//! | OOM kills | `oom_kill` in `memory.events` |
//! | processes | `pids.max` |
//! | CPU quota | `cpu.max` = `"<quota> <period>"` |
//! | CPU time | `usage_usec` in `cpu.stat` |
//! | kill all | `cgroup.kill` (Linux 5.14+), else `cgroup.freeze` + kill loop |

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::{
    CgroupLimits, CgroupOps, Enforced, Hot, MemoryState, PARENT, own_cgroups, parse_keyed, parse_u64, read_keyed,
    read_pids, rmdir_retry, under, write,
};

/// Where v2 sandbox groups are created.
#[derive(Debug, Clone)]
pub struct Root {
    /// The delegated ancestor (or the hierarchy's root) the `airlock` parent lives in.
    base: PathBuf,
    /// Controllers available there.
    controllers: Vec<String>,
    /// The controllers were enabled for the subtree by this process already.
    prepared: Arc<AtomicBool>,
    /// The same, for the `cpu` controller.
    cpu_prepared: Arc<AtomicBool>,
}

impl PartialEq for Root {
    fn eq(&self, other: &Self) -> bool {
        self.base == other.base && self.controllers == other.controllers
    }
}

fn controllers_of(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("cgroup.controllers"))
        .map(|s| s.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

fn owned_by_us(dir: &Path) -> bool {
    use nix::unistd::{AccessFlags, access};
    ["", "cgroup.procs", "cgroup.subtree_control"].iter().all(|f| access(&dir.join(f), AccessFlags::W_OK).is_ok())
}

impl Root {
    /// A root at `base` with these controllers (tests and explicit configuration).
    pub fn at(base: PathBuf, controllers: Vec<String>) -> Root {
        Root {
            base,
            controllers,
            prepared: Arc::new(AtomicBool::new(false)),
            cpu_prepared: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Finds the v2 hierarchy and the place to put sandboxes.
    pub fn detect(mountinfo: &str, own: &str, is_root: bool) -> Result<Root, String> {
        let mount = super::mounts(mountinfo)
            .into_iter()
            .find(|(_, t, _)| t == "cgroup2")
            .map(|(m, _, _)| m)
            .ok_or("no cgroup2 file system is mounted")?;
        let needed = ["memory", "pids"];
        let has_needed = |c: &[String]| needed.iter().all(|n| c.iter().any(|x| x == n));
        if is_root {
            let c = controllers_of(&mount);
            if !has_needed(&c) {
                return Err(format!(
                    "{} offers no memory/pids controllers (they are bound to cgroup v1 hierarchies on this host)",
                    mount.display()
                ));
            }
            return Ok(Root::at(mount, c));
        }
        let own_path = own_cgroups(own)
            .into_iter()
            .find(|(id, c, _)| id == "0" && c.is_empty())
            .map(|(_, _, p)| p)
            .ok_or("this process has no cgroup v2 path")?;
        // Our own cgroup holds our process, so it cannot have controller-enabled
        // children: start at its parent and walk up while we own the directory.
        let mut dir = under(&mount, &own_path);
        let mut best = None;
        while dir.pop() && dir.starts_with(&mount) && dir != mount {
            if !owned_by_us(&dir) {
                break;
            }
            let c = controllers_of(&dir);
            if has_needed(&c) {
                best = Some(Root::at(dir.clone(), c));
            }
        }
        best.ok_or_else(|| {
            format!(
                "no delegated cgroup above {own_path} is writable by this user with memory and pids controllers \
                 (run airlock inside `systemd-run --user --scope -p Delegate=yes`, or as root)"
            )
        })
    }

    /// The `airlock` parent.
    pub fn parent(&self) -> PathBuf {
        self.base.join(PARENT)
    }

    fn has(&self, c: &str) -> bool {
        self.controllers.iter().any(|x| x == c)
    }

    /// What groups here enforce.
    pub fn enforced(&self) -> Enforced {
        Enforced {
            memory: self.has("memory"),
            pids: self.has("pids"),
            cpu_quota: self.has("cpu"),
            cpu_time: true, // cpu.stat's usage_usec exists without the cpu controller
            kill: true,
        }
    }

    fn wanted(&self, cpu: bool) -> String {
        ["memory", "pids", "cpu"]
            .iter()
            .filter(|c| self.has(c) && (cpu || **c != "cpu"))
            .map(|c| format!("+{c}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Enables the controllers for the `airlock` subtree (once per process, or again
    /// when the `cpu` controller is first wanted).
    fn prepare(&self, cpu: bool) -> io::Result<()> {
        if self.prepared.load(Ordering::SeqCst) && (!cpu || self.cpu_prepared.load(Ordering::SeqCst)) {
            return Ok(());
        }
        let wanted = self.wanted(cpu);
        write(&self.base.join("cgroup.subtree_control"), &wanted)?;
        let parent = self.parent();
        match std::fs::create_dir(&parent) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io::Error::new(e.kind(), format!("creating {}: {e}", parent.display()))),
        }
        write(&parent.join("cgroup.subtree_control"), &wanted)?;
        self.prepared.store(true, Ordering::SeqCst);
        if cpu {
            self.cpu_prepared.store(true, Ordering::SeqCst);
        }
        Ok(())
    }

    /// The group `name` (not created).
    pub fn open(&self, name: &str) -> Group {
        Group { dir: self.parent().join(name), cpu: self.has("cpu"), hot_cpu: Hot::default(), hot_peak: Hot::default() }
    }

    /// Creates the group `name`.
    pub fn create(&self, name: &str) -> io::Result<Group> {
        self.create_with(name, true)
    }

    /// Creates the group `name`, with the `cpu` controller only if `cpu` (for a quota).
    pub fn create_with(&self, name: &str, cpu: bool) -> io::Result<Group> {
        self.prepare(cpu)?;
        let mut g = self.open(name);
        g.cpu = g.cpu && cpu;
        std::fs::create_dir(&g.dir)
            .map_err(|e| io::Error::new(e.kind(), format!("creating {}: {e}", g.dir.display())))?;
        Ok(g)
    }
}

/// One sandbox's v2 group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    dir: PathBuf,
    cpu: bool,
    hot_cpu: Hot,
    hot_peak: Hot,
}

impl Group {
    fn f(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn wait_empty(&self, until: Instant) -> bool {
        loop {
            if self.pids().is_empty() {
                return true;
            }
            if Instant::now() >= until {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl CgroupOps for Group {
    fn apply(&self, l: &CgroupLimits) -> io::Result<()> {
        write(&self.f("memory.max"), &l.memory_bytes.to_string())?;
        if self.f("memory.swap.max").exists() {
            write(&self.f("memory.swap.max"), "0")?;
        }
        write(&self.f("pids.max"), &l.pids.to_string())?;
        if let (true, Some(q)) = (self.cpu, l.cpu_quota_us) {
            write(&self.f("cpu.max"), &format!("{q} {}", super::CPU_PERIOD_US))?;
        }
        Ok(())
    }

    fn add(&self, pid: i32) -> io::Result<()> {
        write(&self.f("cgroup.procs"), &pid.to_string())
    }

    fn set_memory_limit(&self, bytes: u64) -> io::Result<()> {
        write(&self.f("memory.max"), &bytes.to_string())
    }

    fn memory_state(&self) -> Option<MemoryState> {
        let num = |f: &str| parse_u64(&std::fs::read_to_string(self.f(f)).ok()?);
        let stat = std::fs::read_to_string(self.f("memory.stat")).ok()?;
        let file = |k: &str| parse_keyed(&stat, k).unwrap_or(0);
        Some(MemoryState {
            limit: num("memory.max")?,
            usage: num("memory.current")?,
            reclaimable: file("inactive_file") + file("active_file"),
        })
    }

    fn cpu_usage_ns(&self) -> Option<u64> {
        parse_keyed(&self.hot_cpu.read(&self.f("cpu.stat"))?, "usage_usec").map(|us| us.saturating_mul(1000))
    }

    fn memory_peak_bytes(&self) -> Option<u64> {
        parse_u64(&self.hot_peak.read(&self.f("memory.peak"))?)
    }

    fn oom_kills(&self) -> Option<u64> {
        read_keyed(&self.f("memory.events"), "oom_kill")
    }

    fn pids(&self) -> Vec<i32> {
        read_pids(&self.f("cgroup.procs"))
    }

    fn kill_all(&self) -> io::Result<()> {
        let end = Instant::now() + Duration::from_secs(3);
        if self.f("cgroup.kill").exists() {
            write(&self.f("cgroup.kill"), "1")?;
            if self.wait_empty(end) {
                return Ok(());
            }
        }
        let freeze = self.f("cgroup.freeze");
        loop {
            let pids = self.pids();
            if pids.is_empty() {
                return Ok(());
            }
            let frozen = freeze.exists() && write(&freeze, "1").is_ok();
            for pid in pids.iter().copied() {
                // SAFETY: sends a signal to a pid listed in our own cgroup.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            if frozen {
                write(&freeze, "0")?;
            }
            if Instant::now() >= end {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{} processes survived SIGKILL in {}", pids.len(), self.dir.display()),
                ));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// `cgroup.kill` (Linux 5.14+; nothing on older kernels, where the PID-namespace
    /// kill that comes with it and the freezer-based [`CgroupOps::kill_all`] at
    /// teardown do the work).
    fn kill_now(&self) {
        let _ = write(&self.f("cgroup.kill"), "1");
    }

    fn remove(&self) -> io::Result<()> {
        rmdir_retry(&self.dir)
    }

    fn paths(&self) -> Vec<PathBuf> {
        vec![self.dir.clone()]
    }

    fn placement_fd(&self) -> Option<std::os::fd::OwnedFd> {
        use nix::fcntl::OFlag;
        nix::fcntl::open(
            &self.dir,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .ok()
    }
}

#[cfg(test)]
mod tests {
    //! The v2 code paths against a fake cgroupfs directory (this machine runs v1).
    use super::*;

    fn fake() -> (tempfile::TempDir, Root) {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("cgroup.controllers"), "cpuset cpu io memory pids\n").unwrap();
        let r = Root::at(d.path().to_path_buf(), controllers_of(d.path()));
        (d, r)
    }

    #[test]
    fn creating_enables_controllers_for_the_subtree() {
        let (d, r) = fake();
        let g = r.create("1-2-sbx_a").unwrap();
        assert_eq!(std::fs::read_to_string(d.path().join("cgroup.subtree_control")).unwrap(), "+memory +pids +cpu");
        assert_eq!(
            std::fs::read_to_string(d.path().join("airlock/cgroup.subtree_control")).unwrap(),
            "+memory +pids +cpu"
        );
        assert_eq!(g.paths(), vec![d.path().join("airlock/1-2-sbx_a")]);
        assert!(r.create("1-2-sbx_a").is_err(), "a name is used once");
        // Without a quota, no cpu controller for a fresh subtree.
        let (d2, r2) = fake();
        r2.create_with("1-2-sbx_n", false).unwrap();
        assert_eq!(std::fs::read_to_string(d2.path().join("airlock/cgroup.subtree_control")).unwrap(), "+memory +pids");
    }

    #[test]
    fn limits_are_written_in_v2_syntax() {
        let (d, r) = fake();
        let g = r.create("1-2-sbx_b").unwrap();
        let dir = d.path().join("airlock/1-2-sbx_b");
        std::fs::write(dir.join("memory.swap.max"), "max").unwrap();
        g.apply(&CgroupLimits { memory_bytes: 256 << 20, pids: 64, cpu_quota_us: Some(100_000) }).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("memory.max")).unwrap(), "268435456");
        assert_eq!(std::fs::read_to_string(dir.join("memory.swap.max")).unwrap(), "0");
        assert_eq!(std::fs::read_to_string(dir.join("pids.max")).unwrap(), "64");
        assert_eq!(std::fs::read_to_string(dir.join("cpu.max")).unwrap(), "100000 100000");
        // Without the cpu controller no quota is written.
        let r2 = Root::at(d.path().to_path_buf(), vec!["memory".into(), "pids".into()]);
        let g2 = r2.create("1-2-sbx_c").unwrap();
        g2.apply(&CgroupLimits { memory_bytes: 1 << 30, pids: 8, cpu_quota_us: Some(1) }).unwrap();
        assert!(!d.path().join("airlock/1-2-sbx_c/cpu.max").exists());
        assert!(!r2.enforced().cpu_quota && r.enforced().cpu_quota);
    }

    #[test]
    fn accounting_is_read_back() {
        let (d, r) = fake();
        let g = r.create("1-2-sbx_d").unwrap();
        let dir = d.path().join("airlock/1-2-sbx_d");
        std::fs::write(dir.join("cpu.stat"), "usage_usec 2500\nuser_usec 2000\nsystem_usec 500\n").unwrap();
        std::fs::write(dir.join("memory.peak"), "12345678\n").unwrap();
        std::fs::write(dir.join("memory.events"), "low 0\nhigh 0\nmax 9\noom 2\noom_kill 1\noom_group_kill 0\n")
            .unwrap();
        std::fs::write(dir.join("cgroup.procs"), "101\n102\n").unwrap();
        assert_eq!(g.cpu_usage_ns(), Some(2_500_000));
        assert_eq!(g.memory_peak_bytes(), Some(12_345_678));
        assert_eq!(g.oom_kills(), Some(1));
        assert_eq!(g.pids(), vec![101, 102]);
        assert_eq!(g.memory_state(), None, "no memory.max: no memory controller");
        std::fs::write(dir.join("memory.max"), "max\n").unwrap();
        std::fs::write(dir.join("memory.current"), "7000\n").unwrap();
        std::fs::write(dir.join("memory.stat"), "anon 100\nfile 900\nshmem 600\ninactive_file 200\nactive_file 100\n")
            .unwrap();
        let st = g.memory_state().unwrap();
        assert_eq!((st.limit, st.usage, st.reclaimable), (u64::MAX, 7000, 300));
        assert_eq!(st.room(), u64::MAX - 6700, "no cap: no overflow either");
    }

    #[test]
    fn kill_uses_cgroup_kill_then_the_group_is_removed() {
        let (d, r) = fake();
        let g = r.create("1-2-sbx_e").unwrap();
        let dir = d.path().join("airlock/1-2-sbx_e");
        std::fs::write(dir.join("cgroup.kill"), "").unwrap();
        std::fs::write(dir.join("cgroup.procs"), "").unwrap();
        g.kill_all().unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("cgroup.kill")).unwrap(), "1");
        // A real cgroup directory holds only kernel files; emulate rmdir's view.
        for f in std::fs::read_dir(&dir).unwrap() {
            std::fs::remove_file(f.unwrap().path()).unwrap();
        }
        g.remove().unwrap();
        assert!(!dir.exists());
    }

    #[test]
    fn stale_groups_of_dead_owners_are_removed() {
        let (d, r) = fake();
        let driver = crate::cgroup::Driver::V2(r.clone());
        r.create("999999999-1-sbx_dead").unwrap();
        let mine = crate::cgroup::group_name("sbx_live");
        r.create(&mine).unwrap();
        r.create("not-ours").unwrap();
        let rep = crate::cgroup::cleanup_stale(&driver);
        assert_eq!(rep.removed, vec!["999999999-1-sbx_dead".to_string()]);
        assert!(d.path().join("airlock").join(&mine).exists());
        assert!(d.path().join("airlock/not-ours").exists());
    }

    #[test]
    fn detection_on_a_hybrid_host_says_why_v2_is_unusable() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("cgroup.controllers"), "").unwrap();
        let mi = format!("41 31 0:38 / {} rw - cgroup2 cgroup2 rw\n", d.path().display());
        let e = Root::detect(&mi, "0::/\n", true).unwrap_err();
        assert!(e.contains("no memory/pids controllers"), "{e}");
        std::fs::write(d.path().join("cgroup.controllers"), "memory pids cpu\n").unwrap();
        let r = Root::detect(&mi, "0::/\n", true).unwrap();
        assert_eq!(r.parent(), d.path().join("airlock"));
    }
}
