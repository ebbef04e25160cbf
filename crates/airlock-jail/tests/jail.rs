//! Real `jail` sandboxes: what the guest sees, what the host sees, the limits, the
//! rootless mode, and that nothing — process or cgroup — outlives a sandbox, even when
//! airlock itself is killed. Each test prints "skipped: <reason>" where the host
//! cannot run it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use airlock_core::{
    Backend, Cell, ExecRequest, Language, Limits, NetworkPolicy, Outcome, SandboxSpec, Status, run_once,
};
use airlock_jail::{JailBackend, JailConfig};

fn config() -> JailConfig {
    JailConfig::new(airlock_guest::launch::default_python())
}

fn backend_with(c: JailConfig) -> Option<JailBackend> {
    let b = JailBackend::new(c);
    let p = b.probe();
    if !p.available {
        eprintln!("skipped: jail is not available here: {} ({:?})", p.detail, p.fix);
        return None;
    }
    Some(b)
}

fn backend() -> Option<JailBackend> {
    backend_with(config())
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn run(b: &dyn Backend, code: &str) -> Outcome {
    run_once(b, &ExecRequest::python(code), None, &mut |_| {}).expect("host error")
}

fn run_json(b: &dyn Backend, code: &str) -> serde_json::Value {
    let o = run(b, code);
    assert_eq!(o.status, Status::Ok, "{}\n{}", o.stdout, o.stderr);
    serde_json::from_str(o.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {}", o.stdout))
}

fn marker() -> String {
    let n = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().subsec_nanos();
    format!("1000.{}{:09}", std::process::id(), n)
}

/// Host pids whose command line contains `m`.
fn pids_with(m: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " ").contains(m))
                .unwrap_or(false)
        })
        .collect()
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every sandbox cgroup directory (below any `airlock` parent) whose name contains `needle`.
fn cgroup_dirs(needle: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::from("/sys/fs/cgroup")];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let p = e.path();
            if d.file_name().is_some_and(|n| n == "airlock") && e.file_name().to_string_lossy().contains(needle) {
                out.push(p.clone());
            }
            if p.components().count() < 12 {
                stack.push(p);
            }
        }
    }
    out
}

/// The host uid that created the user namespace of process `pid` (`NS_GET_OWNER_UID`).
fn user_ns_owner(pid: i32) -> u32 {
    use std::os::fd::AsRawFd;
    const NS_GET_OWNER_UID: libc::c_ulong = 0xb7 << 8 | 4;
    let f = std::fs::File::open(format!("/proc/{pid}/ns/user")).unwrap();
    let mut uid: libc::uid_t = u32::MAX;
    // SAFETY: the ioctl writes one uid_t into the live local.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), NS_GET_OWNER_UID as _, &mut uid as *mut libc::uid_t) };
    assert_eq!(r, 0, "NS_GET_OWNER_UID: {}", std::io::Error::last_os_error());
    uid
}

/// A fresh directory in the host's `/tmp` (which every sandbox covers with its own
/// `/tmp`), with a space in its name, reached through a symbolic link: fixtures live
/// here so that the tests do not depend on where the checkout is, and cover those paths
/// wherever it is. Removed on drop.
struct HostTmp {
    dir: PathBuf,
    link: PathBuf,
}

impl HostTmp {
    fn new(tag: &str) -> HostTmp {
        Self::new_in(Path::new("/tmp"), tag)
    }

    /// The same in `parent` instead of `/tmp`.
    fn new_in(parent: &Path, tag: &str) -> HostTmp {
        let n = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
        let dir = parent.join(format!("airlock jail {tag} {}-{n}", std::process::id()));
        std::fs::create_dir(&dir).unwrap();
        let link = parent.join(format!("airlock-jail-{tag}-{}-{n}", std::process::id()));
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        HostTmp { dir, link }
    }

    /// The directory, through the link.
    fn path(&self) -> &Path {
        &self.link
    }
}

impl Drop for HostTmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.link);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A module `name.py` setting `VALUE = 42` in a new directory `dir`.
fn module_dir(dir: &Path, name: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(format!("{name}.py")), "VALUE = 42\n").unwrap();
    dir.to_path_buf()
}

/// Where a sandbox sees a host directory bound for it whose path is its own (`/tmp`).
fn relocated(host: &Path) -> String {
    assert!(host.starts_with("/tmp"), "{}", host.display());
    format!("/airlock{}", host.display())
}

/// Where a root file system's sandbox sees a host directory bound for it: below
/// `/airlock` when the sandbox or the root file system holds its path.
fn relocated_beside(root: &Path, host: &Path) -> String {
    let top = host.components().nth(1).unwrap().as_os_str().to_owned();
    let taken = ["tmp", "proc", "dev", "sys", "run", "workspace", "airlock"].iter().any(|t| top == *t)
        || root.join(&top).exists();
    if taken { format!("/airlock{}", host.display()) } else { host.display().to_string() }
}

const FACTS: &str = r#"
import os, json, socket
f = {"uid": os.getuid(), "gid": os.getgid(), "pid": os.getpid(), "hostname": socket.gethostname(),
     "root": sorted(os.listdir("/")), "etc": sorted(os.listdir("/etc")), "dev": sorted(os.listdir("/dev")),
     "groups": os.getgroups(), "cwd": os.getcwd()}
st = dict(l.split(":\t", 1) for l in open("/proc/self/status").read().splitlines() if ":\t" in l)
f["caps"] = [st[k].strip() for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")]
f["nnp"], f["seccomp"] = st["NoNewPrivs"].strip(), st["Seccomp"].strip()
f["cgroup"] = open("/proc/self/cgroup").read().splitlines()
f["ifaces"] = sorted(l.split(":")[0].strip() for l in open("/proc/self/net/dev").read().splitlines()[2:])
f["proc"] = sorted(e for e in os.listdir("/proc") if not e.isdigit())
def w(p):
    try:
        with open(p, "w") as h:
            h.write("x")
        return "ok"
    except OSError as e:
        return type(e).__name__
f["writes"] = {p: w(p) for p in ["/usr/x", "/etc/x", "/x", "/proc/x", "/workspace/x", "/tmp/x", "/dev/null", "/proc/self/comm"]}
f["fds"] = sorted(int(x) for x in os.listdir("/proc/self/fd"))
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(1)
socket.create_connection(s.getsockname(), timeout=2).close(); f["loopback"] = "ok"
f["rw_mounts"] = sorted(l.split()[4] for l in open("/proc/self/mountinfo") if "rw" in l.split()[5].split(","))
print(json.dumps(f))
"#;

#[test]
fn the_guest_sees_only_its_own_world() {
    let Some(b) = backend() else { return };
    check_guest_view(&b);
}

#[test]
fn the_old_kernel_mount_path_is_just_as_read_only() {
    let mut c = config();
    c.mount_setattr = false;
    let Some(b) = backend_with(c) else { return };
    check_guest_view(&b);
}

fn check_guest_view(b: &JailBackend) {
    let f = run_json(b, FACTS);
    assert_eq!((f["uid"].as_u64(), f["gid"].as_u64(), f["pid"].as_u64()), (Some(0), Some(0), Some(1)));
    assert_eq!(f["hostname"], "airlock");
    assert_eq!(f["cwd"], "/workspace");
    assert_eq!(f["groups"], serde_json::json!([]), "no supplementary groups");
    let root: Vec<&str> = f["root"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    let allowed = ["bin", "dev", "etc", "lib", "lib32", "lib64", "libx32", "proc", "sbin", "tmp", "usr", "workspace"];
    assert!(root.iter().all(|e| allowed.contains(e)), "unexpected entries in /: {root:?}");
    for needed in ["dev", "etc", "proc", "tmp", "usr", "workspace"] {
        assert!(root.contains(&needed), "{needed} missing from /: {root:?}");
    }
    let etc = f["etc"].to_string();
    for secret in ["shadow", "gshadow", "sudoers", "machine-id", "ssh\"", "private"] {
        assert!(!etc.contains(secret), "/etc has {secret}: {etc}");
    }
    assert!(etc.contains("\"passwd\"") && etc.contains("\"hosts\""), "{etc}");
    assert_eq!(
        f["dev"],
        serde_json::json!(["fd", "full", "null", "random", "shm", "stderr", "stdin", "stdout", "urandom", "zero"])
    );
    assert_eq!(f["caps"], serde_json::json!(vec!["0000000000000000"; 5]), "every capability is dropped");
    assert_eq!((f["nnp"].as_str(), f["seccomp"].as_str()), (Some("1"), Some("2")));
    for l in f["cgroup"].as_array().unwrap() {
        assert!(l.as_str().unwrap().ends_with(":/"), "the cgroup namespace hides host paths: {l}");
    }
    assert_eq!(f["ifaces"], serde_json::json!(["lo"]), "only loopback in the network namespace");
    assert_eq!(f["loopback"], "ok");
    if airlock_jail::mount::have_proc_subset() {
        assert_eq!(f["proc"], serde_json::json!(["self", "thread-self"]), "/proc shows processes only");
    }
    let writes = &f["writes"];
    for p in ["/usr/x", "/etc/x", "/x", "/proc/x"] {
        assert_ne!(writes[p], "ok", "{p} was writable");
    }
    for p in ["/workspace/x", "/tmp/x", "/dev/null"] {
        assert_eq!(writes[p], "ok", "{p} was not writable");
    }
    if airlock_jail::landlock::abi().is_ok() {
        assert_eq!(writes["/proc/self/comm"], "PermissionError", "Landlock allows writes only where listed");
    }
    let rw: Vec<&str> = f["rw_mounts"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    let rw_ok = ["/proc", "/tmp", "/workspace", "/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom"];
    assert!(rw.iter().all(|m| rw_ok.contains(m)), "writable mounts: {rw:?}");
    assert_eq!(f["fds"], serde_json::json!([0, 1, 2, 3, 4]), "stdio, the channel and listdir's own fd");
}

#[test]
fn the_host_sees_an_unprivileged_owner_and_a_cgroup_that_goes_away() {
    let Some(b) = backend() else { return };
    let m = marker();
    let limits = Limits { memory_bytes: 200 << 20, processes: 20, ..Limits::default() };
    let mut sb = b.create(&SandboxSpec::new(limits)).unwrap();
    let id = sb.id().to_string();
    let cell =
        Cell::new(Language::Python, format!("import subprocess\nsubprocess.Popen(['sleep', '{m}'])\nNone"), &limits);
    assert_eq!(sb.execute(&cell, &mut |_| {}).unwrap().status, Status::Ok);
    wait_until("the sleeper appears", Duration::from_secs(5), || !pids_with(&m).is_empty());
    let pid = pids_with(&m)[0];
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid: u32 = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_ne!(uid, 0, "a sandbox process runs as host root");
    if is_root() {
        assert!(uid >= airlock_jail::user::JailIds::default().uid_base, "uid {uid} is outside the sandbox range");
    } else {
        assert_eq!(uid, nix::unistd::geteuid().as_raw());
    }
    // The kernel charges the sandbox's per-user counters (inotify, queued signals,
    // locked memory, ...) to the creator of its user namespace too: that must be the
    // sandbox's own host uid, not root.
    assert_eq!(user_ns_owner(pid), uid, "the sandbox's user namespace was created by another host uid");
    let own_pidns = std::fs::read_link("/proc/self/ns/pid").unwrap();
    assert_ne!(std::fs::read_link(format!("/proc/{pid}/ns/pid")).unwrap(), own_pidns);
    let dirs = cgroup_dirs(&id);
    if is_root() {
        assert!(!dirs.is_empty(), "no cgroup for {id}");
        let mut seen_memory = false;
        for d in &dirs {
            if let Ok(v) = std::fs::read_to_string(d.join("memory.limit_in_bytes"))
                .or_else(|_| std::fs::read_to_string(d.join("memory.max")))
            {
                assert_eq!(v.trim(), (200u64 << 20).to_string());
                seen_memory = true;
            }
            if let Ok(v) = std::fs::read_to_string(d.join("pids.max")) {
                assert_eq!(v.trim(), "20");
            }
            let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap();
            assert!(procs.lines().any(|l| l.trim() == pid.to_string()), "{pid} not in {}", d.display());
        }
        assert!(seen_memory);
    } else {
        eprintln!("skipped (cgroup part): not root");
    }
    sb.destroy().unwrap();
    assert!(pids_with(&m).is_empty(), "a sandbox process outlived destroy()");
    assert!(cgroup_dirs(&id).is_empty(), "cgroups left behind: {:?}", cgroup_dirs(&id));
}

#[test]
fn usage_is_measured_by_the_cgroup() {
    let Some(b) = backend() else { return };
    if !is_root() {
        eprintln!("skipped: cgroup accounting needs root on this host");
        return;
    }
    let o = run(&b, "x = bytearray(64 << 20)\nsum(i for i in range(2_000_000))");
    assert_eq!(o.status, Status::Ok);
    assert!(o.usage.cpu_ms >= 10, "cpu_ms {}", o.usage.cpu_ms);
    assert!(o.usage.peak_memory_bytes >= 64 << 20, "peak {}", o.usage.peak_memory_bytes);
    assert!(o.warnings.is_empty(), "{:?}", o.warnings);
}

#[test]
fn an_oom_kill_is_reported_as_memory_limit_and_a_plain_kill_is_not() {
    let Some(b) = backend() else { return };
    if !is_root() {
        eprintln!("skipped: needs a memory cgroup (root on this host)");
        return;
    }
    let limits = Limits { memory_bytes: 64 << 20, ..Limits::default() };
    let mut r = ExecRequest::python(
        "import subprocess\nsubprocess.run(['python3', '-c', 'b = bytearray(256 << 20)']).returncode",
    );
    r.limits = limits;
    let o = run_once(&b, &r, None, &mut |_| {}).unwrap();
    // The child was OOM-killed; the driver survived and reports its -9.
    assert_eq!(o.text(), Some("-9"), "{o:?}");
    r.code = "b = bytearray(256 << 20)".into();
    let o = run_once(&b, &r, None, &mut |_| {}).unwrap();
    assert_eq!(o.status, Status::MemoryLimit, "{o:?}");
    assert!(o.reason.unwrap().contains("OOM killer"));
    r.code = "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)".into();
    let o = run_once(&b, &r, None, &mut |_| {}).unwrap();
    assert_ne!(o.status, Status::MemoryLimit, "an ordinary kill is not an OOM: {o:?}");
}

#[test]
fn a_session_outlives_the_thread_that_created_it() {
    let Some(b) = backend() else { return };
    let limits = Limits::default();
    let mut sb = std::thread::spawn({
        let b = JailBackend::new(b.config().clone());
        move || b.create(&SandboxSpec::new(Limits::default())).unwrap()
    })
    .join()
    .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let o = sb.execute(&Cell::new(Language::Python, "6 * 7", &limits), &mut |_| {}).unwrap();
    assert_eq!(o.text(), Some("42"), "the sandbox died with its creating thread: {o:?}");
    sb.destroy().unwrap();
}

#[test]
fn sandboxes_start_concurrently() {
    let Some(b) = backend() else { return };
    let b = std::sync::Arc::new(b);
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let b = b.clone();
            std::thread::spawn(move || run(b.as_ref(), &format!("{i} * 10")).text().map(str::to_string))
        })
        .collect();
    let got: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(got, [Some("0".into()), Some("10".into()), Some("20".into()), Some("30".into())]);
}

#[test]
fn host_network_policy_shares_the_host_namespace_and_says_so() {
    let Some(b) = backend() else { return };
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let mut r = ExecRequest::python(format!(
        "import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=5).close()\n'connected'"
    ));
    r.network = NetworkPolicy::Host;
    let o = run_once(&b, &r, None, &mut |_| {}).unwrap();
    assert_eq!(o.text(), Some("'connected'"), "{o:?}");
    assert!(o.warnings.iter().any(|w| w.contains("network 'host'")), "{:?}", o.warnings);
    r.network = NetworkPolicy::None;
    let o = run_once(&b, &r, None, &mut |_| {}).unwrap();
    assert_eq!(o.status, Status::Error, "policy none must not reach the host: {o:?}");
}

/// Site-packages and virtualenvs anywhere on the host, the host's `/tmp` included
/// (which the sandbox covers with its own: they appear below `/airlock`), given through
/// a symbolic link and with a space in the path.
#[test]
fn site_packages_and_virtualenvs_are_read_only_and_importable() {
    let base = HostTmp::new("sp");
    let sp = module_dir(&base.path().join("site-packages"), "airlock_sp_probe");
    let mut c = config();
    c.site_packages = vec![sp.clone()];
    let Some(b) = backend_with(c) else { return };
    let o = run(
        &b,
        "import airlock_sp_probe, os, sys\ntry:\n    open(os.path.join(os.path.dirname(airlock_sp_probe.__file__), 'x'), 'w')\n    w = 'writable'\nexcept OSError:\n    w = 'read-only'\n(airlock_sp_probe.VALUE, w, os.path.dirname(airlock_sp_probe.__file__), sys.path[-1])",
    );
    let inside = relocated(&std::fs::canonicalize(&sp).unwrap());
    assert_eq!(o.text(), Some(format!("(42, 'read-only', '{inside}', '{inside}')").as_str()), "{o:?}");
    assert!(!sp.join("x").exists());

    // A virtualenv outside the bound system directories: its prefix is bound too, and
    // its interpreter runs from where the sandbox sees it.
    let venv = base.path().join("venv");
    let made = Command::new(airlock_guest::launch::default_python())
        .args(["-m", "venv", "--without-pip", "--system-site-packages"])
        .arg(&venv)
        .status();
    if !made.is_ok_and(|s| s.success()) {
        eprintln!("skipped (virtualenv part): python3 -m venv is not available");
        return;
    }
    let venv_sp = std::fs::read_dir(venv.join("lib")).unwrap().flatten().next().unwrap().path().join("site-packages");
    module_dir(&venv_sp, "airlock_venv_probe");
    let Some(b) = backend_with(JailConfig::new(venv.join("bin/python"))) else { return };
    let o = run(
        &b,
        "import sys, airlock_venv_probe, numpy\n(sys.prefix, sys.prefix != sys.base_prefix, airlock_venv_probe.VALUE, sys.executable)",
    );
    let inside = relocated(&venv);
    assert_eq!(
        o.text(),
        Some(format!("('{inside}', True, 42, '{inside}/bin/python')").as_str()),
        "the virtualenv's own and the system's packages: {o:?}"
    );
}

/// A minimal root file system at `root`: the host's interpreter, its libraries and its
/// standard library, hard-linked where the file system allows (no copies), else
/// copied. Returns the interpreter's path inside it, or `None` (with "skipped: ...").
fn build_rootfs(root: &Path) -> Option<PathBuf> {
    if !is_root() {
        eprintln!("skipped: building a test rootfs from the host's files needs root");
        return None;
    }
    let python = std::fs::canonicalize(airlock_guest::launch::default_python()).unwrap();
    let Some(version) = python.file_name().and_then(|n| n.to_str()).filter(|n| n.starts_with("python3.")) else {
        eprintln!("skipped: {} is not a versioned CPython", python.display());
        return None;
    };
    let put = |src: &Path| {
        let dst = root.join(src.strip_prefix("/").unwrap());
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        if std::fs::hard_link(src, &dst).is_err() {
            std::fs::copy(src, &dst).unwrap();
        }
    };
    put(&python);
    let ldd = Command::new("ldd").arg(&python).output().unwrap();
    for l in String::from_utf8_lossy(&ldd.stdout).lines() {
        if let Some(p) = l.split_whitespace().find(|w| w.starts_with('/')) {
            let real = std::fs::canonicalize(p).unwrap();
            put(&real);
            let named = root.join(p.trim_start_matches('/'));
            if !named.exists() {
                std::fs::create_dir_all(named.parent().unwrap()).unwrap();
                std::os::unix::fs::symlink(&real, &named).unwrap();
            }
        }
    }
    let stdlib = Path::new("/usr/lib").join(version);
    let linked = Command::new("cp").arg("-al").arg(&stdlib).arg(root.join("usr/lib")).status().unwrap();
    if !linked.success() {
        let _ = std::fs::remove_dir_all(root.join("usr/lib").join(version));
        assert!(Command::new("cp").arg("-a").arg(&stdlib).arg(root.join("usr/lib")).status().unwrap().success());
    }
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:rootfs-marker:/:/bin/sh\n").unwrap();
    Some(PathBuf::from("/usr/bin").join(version))
}

/// Runs the checks of a root file system: its own `/etc`, a normal `site`, nothing of
/// the host's; then with a site-packages directory beside it, on `sys.path` (below
/// `/airlock`: its host path is in `/tmp`).
fn check_rootfs(root: &Path, python: PathBuf, sp: &Path) {
    let mut c = JailConfig::new(python);
    c.rootfs = Some(root.to_path_buf());
    let Some(b) = backend_with(c.clone()) else { return };
    let o = run(
        &b,
        "import sys, os\nprint(open('/etc/passwd').read().split(':')[4], sys.flags.no_site, sorted(os.listdir('/')))",
    );
    assert_eq!(o.status, Status::Ok, "{o:?}");
    assert!(o.stdout.starts_with("rootfs-marker 0 "), "the rootfs's own /etc and a normal site: {}", o.stdout);
    assert!(!o.stdout.contains("'bin'"), "nothing of the host's was added: {}", o.stdout);

    c.site_packages = vec![sp.to_path_buf()];
    let b = JailBackend::new(c);
    let o = run(
        &b,
        "import os, airlock_sp_probe\nprint(airlock_sp_probe.VALUE, os.path.dirname(airlock_sp_probe.__file__))",
    );
    let inside = relocated_beside(root, &std::fs::canonicalize(sp).unwrap());
    assert_eq!(o.stdout, format!("42 {inside}\n"), "site-packages importable: {o:?}");
}

/// `--rootfs` in the host's `/tmp` (which the sandbox's own `/tmp` covers while its
/// root is built), through a symbolic link and with a space in the path.
#[test]
fn a_rootfs_directory_replaces_the_host_system() {
    let base = HostTmp::new("rootfs");
    let root = base.path().join("root fs");
    let Some(python) = build_rootfs(&root) else { return };
    let sp = module_dir(&base.path().join("site-packages"), "airlock_sp_probe");
    check_rootfs(&root, python, &sp);
}

/// A root file system below a directory only root may search (a template in the
/// operator's `/root/...`): the sandbox's unprivileged host uid could not reach it, so
/// airlock takes it for the sandbox. (Outside `/tmp` where the host has `/var/tmp`, so
/// that only the permissions are in the way.)
#[test]
fn a_rootfs_below_a_directory_the_sandbox_cannot_search_works() {
    if !is_root() {
        eprintln!(
            "skipped: needs root (rootless, the sandbox runs as your own uid and reaches what you can; \
             a directory you cannot search is not usable as a rootfs at all)"
        );
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let var_tmp = Path::new("/var/tmp");
    let base = if var_tmp.is_dir() { HostTmp::new_in(var_tmp, "private") } else { HostTmp::new("private") };
    let private = base.path().join("private");
    std::fs::create_dir(&private).unwrap();
    let root = private.join("rootfs");
    let Some(python) = build_rootfs(&root) else { return };
    let sp = module_dir(&private.join("site-packages"), "airlock_sp_probe");
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    check_rootfs(&root, python, &sp);
}

/// What the sandbox sees of a host directory it was given (a site-packages in `/tmp`,
/// here with a mount of its own below it, shared with the host's peer group as on
/// systemd hosts): every mount of it read-only, none of them a peer of the host's
/// (so nothing mounted on the host later shows up inside, and nothing from inside could
/// reach the host), and the calls that would change that refused.
const GIVEN: &str = r#"
import ctypes, errno, json, os, re
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
def res(r):
    return "ok" if r >= 0 else errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))
out = {}
for name, path in [("file", d + "/x"), ("submount", d + "/sub/x")]:
    try:
        open(path, "w").close()
        out[name] = "ok"
    except OSError as e:
        out[name] = errno.errorcode[e.errno]
b = d.encode()
out["remount"] = res(libc.mount(None, b, None, 0x1000 | 0x20, None))   # MS_BIND | MS_REMOUNT, no MS_RDONLY
out["umount"] = res(libc.umount2(b, 2))                                 # MNT_DETACH
class Attr(ctypes.Structure):
    _fields_ = [("set", ctypes.c_uint64), ("clr", ctypes.c_uint64), ("prop", ctypes.c_uint64), ("userns", ctypes.c_uint64)]
clr = Attr(0, 1, 0, 0)                                                  # clear MOUNT_ATTR_RDONLY
out["mount_setattr"] = res(libc.syscall(442, -100, b, 0x8000, ctypes.byref(clr), 32))
out["open_tree"] = res(libc.syscall(428, -100, b, 1))                   # OPEN_TREE_CLONE
unescape = lambda s: re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), s)
mounts = []
for line in open("/proc/self/mountinfo"):
    f = line.split()
    at = unescape(f[4])
    if at == d or at.startswith(d + "/"):
        peer = any(o.startswith(("shared:", "master:")) for o in f[6:f.index("-")])
        mounts.append([at[len(d):] or "/", f[5].split(",")[0], "peer" if peer else "private"])
out["mounts"] = mounts
print(json.dumps(out))
"#;

#[test]
fn what_a_sandbox_is_given_stays_read_only_and_its_own() {
    let base = HostTmp::new("given");
    let sp = module_dir(&base.path().join("site-packages"), "airlock_sp_probe");
    let sub = sp.join("sub");
    std::fs::create_dir(&sub).unwrap();
    // As root: a tmpfs below it, in a peer group of its own (as systemd makes every mount).
    struct Unmount(Vec<PathBuf>);
    impl Drop for Unmount {
        fn drop(&mut self) {
            for p in self.0.iter().rev() {
                let _ = nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }
    let mut mounted = Unmount(Vec::new());
    if is_root() {
        use nix::mount::{MsFlags, mount};
        mount(Some("tmpfs"), &sub, Some("tmpfs"), MsFlags::empty(), Some("size=64k")).unwrap();
        mounted.0.push(sub.clone());
        mount(None::<&str>, &sub, None::<&str>, MsFlags::MS_SHARED, None::<&str>).unwrap();
        std::fs::create_dir(sub.join("late")).unwrap();
    } else {
        eprintln!("skipped (submount part): mounting on the host needs root");
    }
    let host_files = || {
        let mut v: Vec<_> = std::fs::read_dir(&sp).unwrap().flatten().map(|e| e.file_name()).collect();
        v.sort();
        v
    };
    let before = host_files();
    let mut c = config();
    c.site_packages = vec![sp.clone()];
    let Some(b) = backend_with(c) else { return };
    let limits = Limits::default();
    let mut sb = b.create(&SandboxSpec::new(limits)).unwrap();
    let d = relocated(&std::fs::canonicalize(&sp).unwrap());
    let code = format!("d = {d:?}\n{GIVEN}");
    let o = sb.execute(&Cell::new(Language::Python, code.clone(), &limits), &mut |_| {}).unwrap();
    assert_eq!(o.status, Status::Ok, "{o:?}");
    let v: serde_json::Value = serde_json::from_str(o.stdout.trim()).unwrap();
    assert_eq!(v["file"], "EROFS", "{v}");
    for call in ["remount", "umount", "mount_setattr", "open_tree"] {
        assert_eq!(v[call], "EPERM", "{call}: {v}");
    }
    let mut expected = vec![serde_json::json!(["/", "ro", "private"])];
    if is_root() {
        assert_eq!(v["submount"], "EROFS", "{v}");
        expected.push(serde_json::json!(["/sub", "ro", "private"]));
        // A mount the host makes now, below the shared one, must not appear inside.
        use nix::mount::{MsFlags, mount};
        mount(Some("tmpfs"), &sub.join("late"), Some("tmpfs"), MsFlags::empty(), Some("size=64k")).unwrap();
        mounted.0.push(sub.join("late"));
    }
    assert_eq!(v["mounts"], serde_json::Value::Array(expected.clone()), "{v}");
    let o = sb.execute(&Cell::new(Language::Python, code, &limits), &mut |_| {}).unwrap();
    let v: serde_json::Value = serde_json::from_str(o.stdout.trim()).unwrap();
    assert_eq!(v["mounts"], serde_json::Value::Array(expected), "a host mount propagated into the sandbox: {v}");
    sb.destroy().unwrap();
    assert_eq!(host_files(), before, "the host directory changed");
}

#[test]
fn bad_configuration_gives_clear_errors() {
    let mut c = config();
    c.site_packages = vec![PathBuf::from("/nonexistent/site-packages")];
    let b = JailBackend::new(c);
    if !b.probe().available {
        eprintln!("skipped: jail is not available here");
        return;
    }
    let e = b.create(&SandboxSpec::new(Limits::default())).err().expect("an error").to_string();
    assert!(e.contains("/nonexistent/site-packages"), "{e}");
    let mut c = config();
    c.ro_binds = vec![(PathBuf::from("/usr/share"), PathBuf::from("/workspace/share"))];
    let e = JailBackend::new(c).create(&SandboxSpec::new(Limits::default())).err().expect("an error").to_string();
    assert!(e.contains("belongs to the sandbox"), "{e}");
    let e = JailBackend::new(JailConfig::new(PathBuf::from("/no/python3")))
        .create(&SandboxSpec::new(Limits::default()))
        .err()
        .expect("an error");
    assert!(matches!(e, airlock_core::Error::Unavailable { .. }), "{e}");
    let p = JailBackend::new(JailConfig::new(PathBuf::from("/no/python3"))).probe();
    assert!(!p.available && p.fix.is_some(), "{p:?}");
}

// ---- tests that need a second process ----

const HELPER_ENV: &str = "AIRLOCK_JAIL_TEST_HELPER";

/// Not a test on its own: the body of the helper processes below.
#[test]
#[ignore = "run as a separate process by other tests"]
fn helper() {
    match std::env::var(HELPER_ENV).as_deref() {
        Ok("hold") => hold_a_sandbox(),
        Ok("rootless") => rootless_report(),
        _ => {}
    }
}

/// Starts a sandbox with a background process, says so, and waits to be killed.
fn hold_a_sandbox() {
    let m = std::env::var("AIRLOCK_JAIL_TEST_MARKER").unwrap();
    let b = JailBackend::new(config());
    let mut sb = b.create(&SandboxSpec::new(Limits::default())).unwrap();
    let cell = Cell::new(
        Language::Python,
        format!("import subprocess\nsubprocess.Popen(['sleep', '{m}'])\nNone"),
        &Limits::default(),
    );
    sb.execute(&cell, &mut |_| {}).unwrap();
    println!("HELPER:READY {}", sb.id());
    std::thread::sleep(Duration::from_secs(120));
}

/// Runs checks as an unprivileged user and prints them as JSON.
fn rootless_report() {
    let b = JailBackend::new(config());
    let probe = b.probe();
    let facts = run(&b, FACTS);
    let mut fork = ExecRequest::python(
        "import os\nn = 0\ntry:\n    for _ in range(1000):\n        if os.fork() == 0:\n            import time; time.sleep(30); os._exit(0)\n        n += 1\nexcept OSError as e:\n    print('stopped', n, type(e).__name__)",
    );
    fork.limits = Limits { processes: 16, ..Limits::default() };
    let forked = run_once(&b, &fork, None, &mut |_| {}).unwrap();
    // A template's zygote and one sandbox forked from it, unprivileged too.
    let recipe = airlock_core::Recipe {
        name: "rootless".into(),
        modules: vec!["json".into()],
        optional_modules: false,
        limits: Limits::default(),
    };
    let zygote = match airlock_jail::zygote::Zygote::start(&b, &recipe) {
        Ok(z) => match z.fork(&SandboxSpec::new(Limits::default())) {
            Ok(mut sb) => {
                let code = "import os\nprint(os.getpid(), os.getuid(), open('/proc/self/status').read().count('Seccomp:\\t2'))";
                let o = airlock_core::Sandbox::execute(
                    &mut sb,
                    &Cell::new(Language::Python, code, &Limits::default()),
                    &mut |_| {},
                )
                .unwrap();
                o.stdout
            }
            Err(e) => format!("fork failed: {e}"),
        },
        Err(e) => format!("start failed: {e}"),
    };
    // Site-packages in the host's /tmp: rootless, the sandbox takes them itself before
    // its own /tmp covers them.
    let site = match std::env::var_os("AIRLOCK_JAIL_TEST_SP") {
        Some(sp) => {
            let mut c = config();
            c.site_packages = vec![PathBuf::from(sp)];
            let o = run(
                &JailBackend::new(c),
                "import os, airlock_sp_probe\nprint(airlock_sp_probe.VALUE, os.path.dirname(airlock_sp_probe.__file__))",
            );
            format!("{} {}", o.stdout.trim(), o.reason.unwrap_or_default())
        }
        None => String::new(),
    };
    let v = serde_json::json!({
        "available": probe.available,
        "site": site,
        "identity": probe.checks.get("identity"),
        "facts": facts.stdout,
        "facts_status": facts.status,
        "warnings": facts.warnings,
        "fork": forked.stdout,
        "zygote": zygote,
    });
    println!("HELPER:{v}");
}

fn helper_command(mode: &str) -> Command {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args(["--ignored", "--exact", "helper", "--nocapture", "--test-threads=1"])
        .env(HELPER_ENV, mode)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    c
}

#[test]
fn killing_airlock_kills_its_sandboxes_and_stale_cgroups_are_cleaned() {
    if backend().is_none() {
        return;
    }
    let m = marker();
    let mut child = helper_command("hold").env("AIRLOCK_JAIL_TEST_MARKER", &m).spawn().unwrap();
    let helper_pid = child.id();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let id = loop {
        let l = lines.next().expect("the helper exited early").unwrap();
        // libtest prints "test helper ... " on the same line first.
        if let Some((_, rest)) = l.split_once("HELPER:READY ") {
            break rest.trim().to_string();
        }
    };
    wait_until("the sandbox's sleeper appears", Duration::from_secs(5), || !pids_with(&m).is_empty());
    // airlock dies without any chance to clean up.
    child.kill().unwrap();
    child.wait().unwrap();
    wait_until("the sandbox dies with airlock", Duration::from_secs(5), || pids_with(&m).is_empty());
    if is_root() {
        let left = cgroup_dirs(&id);
        assert!(!left.is_empty(), "expected the dead helper's cgroup to be left for cleanup");
        assert!(left.iter().all(|d| d.file_name().unwrap().to_string_lossy().starts_with(&format!("{helper_pid}-"))));
        let report = airlock_jail::cleanup_stale().unwrap();
        assert!(report.removed.iter().any(|n| n.contains(&id)), "{report:?}");
        assert!(cgroup_dirs(&id).is_empty(), "stale cgroups remain: {:?}", cgroup_dirs(&id));
    } else {
        eprintln!("skipped (cgroup part): not root");
    }
}

/// True when every directory above `exe` is searchable and `exe` readable and
/// executable by "others".
fn reachable_by_others(exe: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).map(|m| m.permissions().mode()).unwrap_or(0);
    mode(exe) & 0o005 == 0o005 && exe.ancestors().skip(1).all(|d| mode(d) & 0o001 != 0)
}

#[test]
fn rootless_mode_runs_as_an_unprivileged_user() {
    if !is_root() {
        eprintln!("skipped: this test switches to uid 65534 with setpriv, which needs root");
        return;
    }
    if backend().is_none() {
        return;
    }
    if Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("skipped: setpriv is not installed");
        return;
    }
    let exe = std::env::current_exe().unwrap();
    if !reachable_by_others(&exe) {
        eprintln!("skipped: {} is not readable and executable by other users (uid 65534)", exe.display());
        return;
    }
    let fixtures = HostTmp::new("rootless");
    let sp = module_dir(&fixtures.path().join("site-packages"), "airlock_sp_probe");
    let home = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("jail-nobody-{}", std::process::id()));
    std::fs::create_dir_all(&home).unwrap();
    nix::unistd::chown(&home, Some(nix::unistd::Uid::from_raw(65534)), Some(nix::unistd::Gid::from_raw(65534)))
        .unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(&exe)
        .args(["--ignored", "--exact", "helper", "--nocapture", "--test-threads=1"])
        .env_clear()
        .env(HELPER_ENV, "rootless")
        .env("AIRLOCK_JAIL_TEST_SP", &sp)
        .env("HOME", &home)
        .env("PATH", "/usr/bin:/bin")
        .current_dir(&home)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().find_map(|l| l.split_once("HELPER:").map(|(_, r)| r)).unwrap_or_else(|| {
        panic!("no report from the unprivileged helper:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr))
    });
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    let _ = std::fs::remove_dir_all(&home);
    if v["available"] != true {
        eprintln!("skipped: unprivileged user namespaces do not work here: {v}");
        return;
    }
    assert!(v["identity"].as_str().unwrap().starts_with("rootless: sandboxes run as your uid 65534"), "{v}");
    assert_eq!(v["facts_status"], "ok", "{v}");
    let f: serde_json::Value = serde_json::from_str(v["facts"].as_str().unwrap().trim()).unwrap();
    assert_eq!((f["uid"].as_u64(), f["pid"].as_u64()), (Some(0), Some(1)));
    assert_eq!(f["caps"], serde_json::json!(vec!["0000000000000000"; 5]));
    assert_eq!(f["ifaces"], serde_json::json!(["lo"]));
    assert_ne!(f["writes"]["/etc/x"], "ok");
    let warnings = v["warnings"].to_string();
    assert!(warnings.contains("RLIMIT_NPROC") && warnings.contains("RLIMIT_DATA"), "rootless warnings: {warnings}");
    // RLIMIT_NPROC counts per user namespace, so the process limit holds without cgroups.
    let fork = v["fork"].as_str().unwrap();
    assert!(fork.starts_with("stopped ") && fork.contains("BlockingIOError"), "{fork}");
    let n: u32 = fork.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(n < 16, "{n} forks under a limit of 16");
    // The zygote works without root: its child is PID 1, root of its own namespace, under seccomp.
    assert_eq!(v["zygote"], "1 0 1\n", "{v}");
    let inside = relocated(&std::fs::canonicalize(&sp).unwrap());
    assert_eq!(v["site"], format!("42 {inside} "), "site-packages in /tmp, rootless: {v}");
}

/// A busy server holds thousands of descriptors; the sandbox's `RLIMIT_NOFILE` (256 by
/// default) must not leave its setup without a free descriptor number.
#[test]
fn a_host_with_many_open_descriptors_still_starts_sandboxes() {
    let Some(b) = backend() else { return };
    let held: Vec<std::fs::File> = (0..1500).filter_map(|_| std::fs::File::open("/dev/null").ok()).collect();
    assert!(held.len() > 1000, "could not open enough descriptors to test ({})", held.len());
    let o = run(&b, "import os\nprint(len(os.listdir('/proc/self/fd')))");
    assert_eq!(o.status, Status::Ok, "{}\n{:?}", o.stderr, o.reason);
    assert_eq!(o.stdout, "5\n", "only fds 0-3 (and the listing's own) reach the guest");
    drop(held);
}
