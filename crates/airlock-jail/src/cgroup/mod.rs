//! cgroups: one per sandbox, with a memory cap (swap off), a process cap and a CPU
//! quota, read back for CPU time, peak memory and OOM kills, killed as a whole on
//! timeout or teardown, and removed afterwards.
//!
//! Both cgroup versions sit behind [`CgroupOps`]; [`Cgroup`] dispatches to
//! [`v1::Group`] (one directory per controller hierarchy; kill = freeze + kill loop)
//! or [`v2::Group`] (one directory; `cgroup.kill`). [`Driver::detect`] finds what the
//! host has.
//!
//! Every sandbox cgroup lives under a fixed parent named `airlock`, and its name
//! records its owner: `<airlock pid>-<its start time>-<sandbox id>`. If airlock is
//! killed before it removes them, [`cleanup_stale`] (run once per process before the
//! first sandbox) kills what is left in groups whose owner is gone and removes them.

pub mod v1;
pub mod v2;

use std::io;
use std::path::{Path, PathBuf};

/// The name of the parent of every sandbox cgroup.
pub const PARENT: &str = "airlock";
/// The CFS period used for the CPU quota.
pub const CPU_PERIOD_US: u64 = 100_000;

/// What a sandbox's cgroup enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupLimits {
    /// Memory cap in bytes; swap is capped to 0.
    pub memory_bytes: u64,
    /// Most tasks (processes and threads).
    pub pids: u64,
    /// CPU quota per period, in microseconds (`None`: no quota).
    pub cpu_quota_us: Option<u64>,
}

/// A group's memory at one moment, for deciding whether more fits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryState {
    /// The cap (`memory.limit_in_bytes` / `memory.max`).
    pub limit: u64,
    /// Charged now (`memory.usage_in_bytes` / `memory.current`).
    pub usage: u64,
    /// Of that, page cache of ordinary files, which reclaim can free (the file LRU
    /// lists; tmpfs pages are not on them: without swap they cannot be freed).
    pub reclaimable: u64,
}

impl MemoryState {
    /// Bytes that can still be charged, counting reclaimable cache as free.
    pub fn room(&self) -> u64 {
        self.limit.saturating_sub(self.usage).saturating_add(self.reclaimable)
    }
}

/// Which limits a driver can enforce on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Enforced {
    /// Memory cap and OOM accounting.
    pub memory: bool,
    /// Process cap.
    pub pids: bool,
    /// CPU quota.
    pub cpu_quota: bool,
    /// CPU time accounting.
    pub cpu_time: bool,
    /// Freezing or `cgroup.kill` for an atomic kill.
    pub kill: bool,
}

impl Enforced {
    /// Controllers missing, by name.
    pub fn missing(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if !self.memory {
            v.push("memory");
        }
        if !self.pids {
            v.push("pids");
        }
        if !self.cpu_quota {
            v.push("cpu");
        }
        if !self.cpu_time {
            v.push("cpuacct");
        }
        v
    }
}

/// The operations on one sandbox's cgroup, whatever the version.
pub trait CgroupOps {
    /// Writes the limits.
    fn apply(&self, limits: &CgroupLimits) -> io::Result<()>;
    /// Moves a process (by host pid) into the group.
    fn add(&self, pid: i32) -> io::Result<()>;
    /// Moves a process into the group's memory controller only (v1: the memory
    /// hierarchy alone; v2 has one hierarchy, so this is [`CgroupOps::add`]): what
    /// the process allocates from then on is charged to the group.
    fn add_for_memory(&self, pid: i32) -> io::Result<()> {
        self.add(pid)
    }
    /// The group's memory cap, usage and reclaimable cache (`None` without a memory
    /// controller).
    fn memory_state(&self) -> Option<MemoryState>;
    /// Changes the memory cap alone (swap stays at 0).
    fn set_memory_limit(&self, bytes: u64) -> io::Result<()>;
    /// CPU time of every task so far, in nanoseconds.
    fn cpu_usage_ns(&self) -> Option<u64>;
    /// Peak memory so far, in bytes.
    fn memory_peak_bytes(&self) -> Option<u64>;
    /// How many times the kernel's OOM killer killed a task of the group.
    fn oom_kills(&self) -> Option<u64>;
    /// Host pids of the group's processes.
    fn pids(&self) -> Vec<i32>;
    /// Kills every process of the group and waits (bounded) until it is empty.
    fn kill_all(&self) -> io::Result<()>;
    /// Sends SIGKILL to the whole group without waiting, where that is race-free
    /// (`cgroup.kill`); safe to call from any thread, any number of times.
    fn kill_now(&self);
    /// Removes the group (it must be empty).
    fn remove(&self) -> io::Result<()>;
    /// The group's directories.
    fn paths(&self) -> Vec<PathBuf>;
    /// A directory descriptor to create the first process in (`clone3` with
    /// `CLONE_INTO_CGROUP`, cgroup v2 only).
    fn placement_fd(&self) -> Option<std::os::fd::OwnedFd> {
        None
    }
}

/// One sandbox's cgroup.
#[derive(Debug)]
pub enum Cgroup {
    /// cgroup v1 (a directory per hierarchy).
    V1(v1::Group),
    /// cgroup v2 (the unified hierarchy).
    V2(v2::Group),
}

impl CgroupOps for Cgroup {
    fn apply(&self, limits: &CgroupLimits) -> io::Result<()> {
        match self {
            Cgroup::V1(g) => g.apply(limits),
            Cgroup::V2(g) => g.apply(limits),
        }
    }
    fn add(&self, pid: i32) -> io::Result<()> {
        match self {
            Cgroup::V1(g) => g.add(pid),
            Cgroup::V2(g) => g.add(pid),
        }
    }
    fn add_for_memory(&self, pid: i32) -> io::Result<()> {
        match self {
            Cgroup::V1(g) => g.add_for_memory(pid),
            Cgroup::V2(g) => g.add_for_memory(pid),
        }
    }
    fn memory_state(&self) -> Option<MemoryState> {
        match self {
            Cgroup::V1(g) => g.memory_state(),
            Cgroup::V2(g) => g.memory_state(),
        }
    }
    fn set_memory_limit(&self, bytes: u64) -> io::Result<()> {
        match self {
            Cgroup::V1(g) => g.set_memory_limit(bytes),
            Cgroup::V2(g) => g.set_memory_limit(bytes),
        }
    }
    fn cpu_usage_ns(&self) -> Option<u64> {
        match self {
            Cgroup::V1(g) => g.cpu_usage_ns(),
            Cgroup::V2(g) => g.cpu_usage_ns(),
        }
    }
    fn memory_peak_bytes(&self) -> Option<u64> {
        match self {
            Cgroup::V1(g) => g.memory_peak_bytes(),
            Cgroup::V2(g) => g.memory_peak_bytes(),
        }
    }
    fn oom_kills(&self) -> Option<u64> {
        match self {
            Cgroup::V1(g) => g.oom_kills(),
            Cgroup::V2(g) => g.oom_kills(),
        }
    }
    fn pids(&self) -> Vec<i32> {
        match self {
            Cgroup::V1(g) => g.pids(),
            Cgroup::V2(g) => g.pids(),
        }
    }
    fn kill_all(&self) -> io::Result<()> {
        match self {
            Cgroup::V1(g) => g.kill_all(),
            Cgroup::V2(g) => g.kill_all(),
        }
    }
    fn kill_now(&self) {
        match self {
            Cgroup::V1(g) => g.kill_now(),
            Cgroup::V2(g) => g.kill_now(),
        }
    }
    fn remove(&self) -> io::Result<()> {
        match self {
            Cgroup::V1(g) => g.remove(),
            Cgroup::V2(g) => g.remove(),
        }
    }
    fn paths(&self) -> Vec<PathBuf> {
        match self {
            Cgroup::V1(g) => g.paths(),
            Cgroup::V2(g) => g.paths(),
        }
    }
    fn placement_fd(&self) -> Option<std::os::fd::OwnedFd> {
        match self {
            Cgroup::V1(g) => g.placement_fd(),
            Cgroup::V2(g) => g.placement_fd(),
        }
    }
}

/// The cgroup setup of this host: where sandbox groups go and what they enforce.
#[derive(Debug, Clone)]
pub enum Driver {
    /// cgroup v1 hierarchies.
    V1(v1::Hierarchies),
    /// The cgroup v2 unified hierarchy.
    V2(v2::Root),
}

impl Driver {
    /// Finds the host's cgroups from `/proc/self/mountinfo` and `/proc/self/cgroup`.
    /// `Err` says why no usable cgroup exists (to show in `doctor` and warnings).
    pub fn detect() -> Result<Driver, String> {
        let mountinfo =
            std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| format!("reading mountinfo: {e}"))?;
        let own =
            std::fs::read_to_string("/proc/self/cgroup").map_err(|e| format!("reading /proc/self/cgroup: {e}"))?;
        let root = nix::unistd::geteuid().is_root();
        let mut why = Vec::new();
        match v2::Root::detect(&mountinfo, &own, root) {
            Ok(r) => return Ok(Driver::V2(r)),
            Err(e) => why.push(format!("cgroup v2: {e}")),
        }
        match v1::Hierarchies::detect(&mountinfo, &own) {
            Ok(h) => return Ok(Driver::V1(h)),
            Err(e) => why.push(format!("cgroup v1: {e}")),
        }
        Err(why.join("; "))
    }

    /// `"v1"` or `"v2"`.
    pub fn version(&self) -> &'static str {
        match self {
            Driver::V1(_) => "v1",
            Driver::V2(_) => "v2",
        }
    }

    /// What it enforces.
    pub fn enforced(&self) -> Enforced {
        match self {
            Driver::V1(h) => h.enforced(),
            Driver::V2(r) => r.enforced(),
        }
    }

    /// A readable summary: version, controllers and where the groups go.
    pub fn describe(&self) -> String {
        match self {
            Driver::V1(h) => {
                let names: Vec<&str> = [
                    ("memory", &h.memory),
                    ("pids", &h.pids),
                    ("cpu", &h.cpu),
                    ("cpuacct", &h.cpuacct),
                    ("freezer", &h.freezer),
                ]
                .into_iter()
                .filter(|(_, p)| p.is_some())
                .map(|(n, _)| n)
                .collect();
                let at = h.memory.as_ref().or(h.pids.as_ref()).map(|p| p.display().to_string()).unwrap_or_default();
                format!("v1 ({}), groups in {at} and its sibling hierarchies", names.join(", "))
            }
            Driver::V2(r) => format!("v2, groups in {}", r.parent().display()),
        }
    }

    /// Where sandbox groups are created.
    pub fn parents(&self) -> Vec<PathBuf> {
        match self {
            Driver::V1(h) => h.parents(),
            Driver::V2(r) => vec![r.parent().to_path_buf()],
        }
    }

    /// Creates a group named `name` under the `airlock` parent(s). With `cpu_quota`
    /// false the group stays out of the `cpu` controller: no quota, and no grouping of
    /// the sandbox's CPU weight with the other sandboxes'.
    pub fn create(&self, name: &str, cpu_quota: bool) -> io::Result<Cgroup> {
        match self {
            Driver::V1(h) => h.create_with(name, cpu_quota).map(Cgroup::V1),
            Driver::V2(r) => r.create_with(name, cpu_quota).map(Cgroup::V2),
        }
    }

    /// Reopens an existing group (for stale cleanup).
    fn open(&self, name: &str) -> Cgroup {
        match self {
            Driver::V1(h) => Cgroup::V1(h.open(name)),
            Driver::V2(r) => Cgroup::V2(r.open(name)),
        }
    }
}

/// The start time of a process (field 22 of `/proc/<pid>/stat`), to tell a pid apart
/// from a later process that reused it.
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields after it start past ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(19)?.parse().ok()
}

/// The name of a new sandbox's group: `<pid>-<start time>-<sandbox id>`.
pub fn group_name(sandbox_id: &str) -> String {
    let pid = std::process::id();
    format!("{pid}-{}-{sandbox_id}", process_start_time(pid).unwrap_or(0))
}

/// The owner `(pid, start time)` recorded in a group name.
pub fn owner_of(name: &str) -> Option<(u32, u64)> {
    let mut it = name.splitn(3, '-');
    let pid = it.next()?.parse().ok()?;
    let start = it.next()?.parse().ok()?;
    it.next()?;
    Some((pid, start))
}

/// True when the owner recorded in `name` is no longer running.
fn is_stale(name: &str) -> bool {
    match owner_of(name) {
        Some((pid, start)) => process_start_time(pid) != Some(start),
        None => false, // not ours: leave it alone
    }
}

/// What [`cleanup_stale`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CleanupReport {
    /// Stale groups removed.
    pub removed: Vec<String>,
    /// Processes killed in them.
    pub killed: usize,
    /// Groups that could not be removed, with why.
    pub failed: Vec<String>,
}

fn group_names(parent: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(parent)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Kills and removes sandbox groups left behind by airlock processes that are gone.
pub fn cleanup_stale(driver: &Driver) -> CleanupReport {
    let mut report = CleanupReport::default();
    let mut names: Vec<String> = driver.parents().iter().flat_map(|p| group_names(p)).collect();
    names.sort();
    names.dedup();
    for name in names.into_iter().filter(|n| is_stale(n)) {
        let g = driver.open(&name);
        report.killed += g.pids().len();
        match g.kill_all().and_then(|_| g.remove()) {
            Ok(()) => report.removed.push(name),
            Err(e) => report.failed.push(format!("{name}: {e}")),
        }
    }
    report
}

/// Parses one unsigned integer (or `max`).
pub(crate) fn parse_u64(s: &str) -> Option<u64> {
    let s = s.trim();
    if s == "max" { Some(u64::MAX) } else { s.parse().ok() }
}

/// Finds `key value` among lines (e.g. `memory.events`) and returns the value.
pub(crate) fn parse_keyed(s: &str, key: &str) -> Option<u64> {
    s.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        (it.next()? == key).then_some(())?;
        it.next()?.parse().ok()
    })
}

/// Reads `key value` lines (e.g. `memory.events`) and returns the value of `key`.
pub(crate) fn read_keyed(path: &Path, key: &str) -> Option<u64> {
    parse_keyed(&std::fs::read_to_string(path).ok()?, key)
}

/// A control file read often (CPU time every 50 ms while a cell runs): opened once
/// and re-read from offset 0, instead of an open/read/close each time.
#[derive(Debug, Default)]
pub(crate) struct Hot(std::sync::OnceLock<Option<std::fs::File>>);

impl Clone for Hot {
    fn clone(&self) -> Self {
        Hot::default()
    }
}

impl PartialEq for Hot {
    fn eq(&self, _: &Self) -> bool {
        true // a cache, not part of the value
    }
}

impl Eq for Hot {}

impl Hot {
    /// The file's current contents (the first 4 KiB).
    pub(crate) fn read(&self, path: &Path) -> Option<String> {
        use std::os::unix::fs::FileExt;
        let f = self.0.get_or_init(|| std::fs::File::open(path).ok()).as_ref()?;
        let mut buf = [0u8; 4096];
        let n = f.read_at(&mut buf, 0).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }
}

/// Writes a control file, saying which in the error.
pub(crate) fn write(path: &Path, value: &str) -> io::Result<()> {
    std::fs::write(path, value)
        .map_err(|e| io::Error::new(e.kind(), format!("writing {value:?} to {}: {e}", path.display())))
}

/// Pids listed in a `cgroup.procs` file.
pub(crate) fn read_pids(path: &Path) -> Vec<i32> {
    std::fs::read_to_string(path).map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect()).unwrap_or_default()
}

/// Removes a group directory, retrying while the kernel finishes tearing it down.
pub(crate) fn rmdir_retry(path: &Path) -> io::Result<()> {
    let mut delay = std::time::Duration::from_millis(1);
    for _ in 0..12 {
        match std::fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                std::thread::sleep(delay);
                delay = (delay * 2).min(std::time::Duration::from_millis(200));
            }
            Err(e) => return Err(io::Error::new(e.kind(), format!("removing {}: {e}", path.display()))),
        }
    }
    Err(io::Error::new(io::ErrorKind::ResourceBusy, format!("removing {}: still busy", path.display())))
}

/// `/proc/self/cgroup` lines as `(hierarchy id, controllers, path)`.
pub(crate) fn own_cgroups(own: &str) -> Vec<(String, Vec<String>, String)> {
    own.lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ':');
            let id = it.next()?.to_string();
            let ctrls = it.next()?.split(',').filter(|c| !c.is_empty()).map(str::to_string).collect();
            let path = it.next()?.to_string();
            Some((id, ctrls, path))
        })
        .collect()
}

/// Mount points from `/proc/self/mountinfo` as `(mount point, fs type, super options)`.
pub(crate) fn mounts(mountinfo: &str) -> Vec<(PathBuf, String, String)> {
    mountinfo
        .lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let mount_point = pre.split(' ').nth(4)?;
            let mut post = post.split(' ');
            let fstype = post.next()?.to_string();
            let _source = post.next()?;
            let opts = post.next().unwrap_or("").to_string();
            Some((PathBuf::from(unescape(mount_point)), fstype, opts))
        })
        .collect()
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Joins a cgroup path (`/a/b`) onto a mount point.
pub(crate) fn under(mount: &Path, cg_path: &str) -> PathBuf {
    let rel = cg_path.trim_start_matches('/');
    if rel.is_empty() { mount.to_path_buf() } else { mount.join(rel) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_names_record_a_live_owner() {
        let n = group_name("sbx_abc");
        let (pid, start) = owner_of(&n).unwrap();
        assert_eq!(pid, std::process::id());
        assert!(start > 0);
        assert!(!is_stale(&n), "our own groups are not stale");
        assert!(is_stale(&format!("{pid}-{}-sbx_x", start + 1)), "a reused pid is stale");
        assert!(is_stale("999999999-1-sbx_x"), "a dead owner is stale");
        assert!(!is_stale("something-else"), "foreign names are left alone");
    }

    #[test]
    fn parses_mountinfo_and_own_cgroups() {
        let mi = "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
                  41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n\
                  50 1 0:40 / /mnt/with\\040space rw - tmpfs tmpfs rw\n";
        let m = mounts(mi);
        assert_eq!(m[0], (PathBuf::from("/sys/fs/cgroup/memory"), "cgroup".into(), "rw,memory".into()));
        assert_eq!(m[1].1, "cgroup2");
        assert_eq!(m[2].0, PathBuf::from("/mnt/with space"));
        let own = own_cgroups("4:memory:/process_api/x\n2:cpu,cpuacct:/\n0::/user.slice\n");
        assert_eq!(own[0], ("4".into(), vec!["memory".into()], "/process_api/x".into()));
        assert_eq!(own[1].1, vec!["cpu".to_string(), "cpuacct".to_string()]);
        assert_eq!(own[2], ("0".into(), vec![], "/user.slice".into()));
        assert_eq!(under(Path::new("/sys/fs/cgroup/memory"), "/"), PathBuf::from("/sys/fs/cgroup/memory"));
        assert_eq!(under(Path::new("/sys/fs/cgroup/memory"), "/a/b"), PathBuf::from("/sys/fs/cgroup/memory/a/b"));
    }

    #[test]
    fn keyed_and_numeric_files() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("memory.events"), "low 0\nhigh 0\nmax 3\noom 1\noom_kill 2\n").unwrap();
        assert_eq!(read_keyed(&d.path().join("memory.events"), "oom_kill"), Some(2));
        assert_eq!(read_keyed(&d.path().join("memory.events"), "oom"), Some(1));
        std::fs::write(d.path().join("pids.max"), "max\n").unwrap();
        assert_eq!(parse_u64(&std::fs::read_to_string(d.path().join("pids.max")).unwrap()), Some(u64::MAX));
        let hot = Hot::default();
        std::fs::write(d.path().join("cpuacct.usage"), "5\n").unwrap();
        assert_eq!(hot.read(&d.path().join("cpuacct.usage")).as_deref(), Some("5\n"));
        std::fs::write(d.path().join("cpuacct.usage"), "123456\n").unwrap();
        assert_eq!(hot.read(&d.path().join("cpuacct.usage")).as_deref(), Some("123456\n"), "re-read, not cached");
    }
}
