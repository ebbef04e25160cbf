//! The `jail` zygote (fast start): forked sandboxes are fresh and as isolated as cold
//! ones, the zygote survives a misbehaving child, and a dead zygote's children are
//! reported dead. Each test prints "skipped: <reason>" where the host cannot run it.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use airlock_core::{Backend, Cell, Factory, Language, Limits, Outcome, Recipe, Sandbox, SandboxSpec, Status};
use airlock_jail::zygote::Zygote;
use airlock_jail::{JailBackend, JailConfig};

fn backend() -> Option<&'static JailBackend> {
    static B: OnceLock<Option<JailBackend>> = OnceLock::new();
    B.get_or_init(|| {
        let b = JailBackend::new(JailConfig::new(airlock_guest::launch::default_python()));
        let p = b.probe();
        if !p.available {
            eprintln!("skipped: jail is not available here: {}", p.detail);
            return None;
        }
        Some(b)
    })
    .as_ref()
}

fn recipe(modules: &[&str]) -> Recipe {
    Recipe {
        name: "test".into(),
        modules: modules.iter().map(|m| m.to_string()).collect(),
        optional_modules: true,
        limits: Limits::default(),
    }
}

/// One zygote shared by the tests (with `json` and, where installed, numpy imported).
fn zygote() -> Option<Arc<Zygote>> {
    static Z: OnceLock<Option<Arc<Zygote>>> = OnceLock::new();
    Z.get_or_init(|| {
        let b = backend()?;
        match Zygote::start(b, &recipe(&["json", "numpy"])) {
            Ok(z) => Some(Arc::new(z)),
            Err(e) => panic!("the zygote did not start: {e}"),
        }
    })
    .clone()
}

fn cell(sb: &mut dyn Sandbox, code: &str) -> Outcome {
    let c = Cell::new(Language::Python, code, &Limits { timeout_ms: 30_000, ..Limits::default() });
    sb.execute(&c, &mut |_| {}).expect("host error")
}

fn fork(z: &Zygote) -> Box<dyn Sandbox> {
    Box::new(z.fork(&SandboxSpec::new(Limits::default())).expect("fork"))
}

#[test]
fn a_forked_sandbox_runs_code_with_the_modules_imported() {
    let Some(z) = zygote() else { return };
    let mut sb = fork(&z);
    let o = cell(sb.as_mut(), "import sys, os\nprint(os.getpid(), 'json' in sys.modules)\n6*7");
    assert_eq!(o.status, Status::Ok, "{o:?}");
    assert_eq!(o.stdout, "1 True\n");
    assert_eq!(o.text(), Some("42"));
    assert!(z.imported().contains(&"json".to_string()));
    sb.destroy().unwrap();
}

fn limits(memory_mib: u64) -> Limits {
    Limits { memory_bytes: memory_mib << 20, timeout_ms: 30_000, ..Limits::default() }
}

/// Facts a sandbox reports about itself, one `key value` per line.
const FACTS: &str = r#"
import os, socket
def status(key):
    for line in open('/proc/self/status'):
        if line.startswith(key + ':'):
            return line.split()[1]
print('pid', os.getpid())
print('uid', os.getuid())
print('host', socket.gethostname())
print('capeff', status('CapEff'))
print('capbnd', status('CapBnd'))
print('nnp', status('NoNewPrivs'))
print('seccomp', status('Seccomp'))
print('procs', len([p for p in os.listdir('/proc') if p.isdigit()]))
print('ifaces', ','.join(sorted(l.split(':')[0].strip() for l in open('/proc/self/net/dev').readlines()[2:])))
print('proc', ','.join(sorted(e for e in os.listdir('/proc') if not e.isdigit())))
def writable(path):
    try:
        open(path, 'w').close()
        return 'yes'
    except OSError as e:
        return type(e).__name__
print('usr', writable('/usr/airlock-zygote-test'))
print('root', writable('/airlock-zygote-test'))
print('proc_sys', writable('/proc/sys/kernel/hostname'))
print('tmp', writable('/tmp/x'))
print('ws', writable('/workspace/x'))
print('cwd', os.getcwd())
print('env', sorted(os.environ).count('HOME'), os.environ.get('TMPDIR'))
print('fds', ','.join(sorted(os.listdir('/proc/self/fd'), key=int)))
print('cgroups', ','.join(sorted(set(l.strip().split(':')[2] for l in open('/proc/self/cgroup')))))
"#;

fn facts(sb: &mut dyn Sandbox) -> std::collections::BTreeMap<String, String> {
    let o = cell(sb, FACTS);
    assert_eq!(o.status, Status::Ok, "{o:?}");
    o.stdout.lines().filter_map(|l| l.split_once(' ').map(|(k, v)| (k.to_string(), v.to_string()))).collect()
}

#[test]
fn a_forked_sandbox_is_confined_like_a_cold_one() {
    let Some(z) = zygote() else { return };
    let mut sb = fork(&z);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", z.host_pid())).unwrap();
    let nproc = limits.lines().find(|l| l.starts_with("Max processes")).unwrap().to_string();
    let ours = std::fs::read_to_string("/proc/self/limits").unwrap();
    let ours =
        ours.lines().find(|l| l.starts_with("Max processes")).unwrap().split_whitespace().nth(3).unwrap().to_string();
    let theirs = nproc.split_whitespace().nth(2).unwrap();
    assert!(
        theirs == ours || theirs == "unlimited" || theirs.parse::<u64>().is_ok_and(|n| n >= 4_000_000),
        "siblings share the zygote's RLIMIT_NPROC at its level, so it stays as high as airlock's ({ours}): {nproc}"
    );
    let f = facts(sb.as_mut());
    assert_eq!(f["pid"], "1", "PID 1 of its own PID namespace");
    assert_eq!(f["uid"], "0");
    assert_eq!(f["host"], "airlock");
    assert_eq!(f["capeff"], "0000000000000000", "no capabilities");
    assert_eq!(f["capbnd"], "0000000000000000", "an empty bounding set");
    assert_eq!(f["nnp"], "1");
    assert_eq!(f["seccomp"], "2", "a seccomp filter");
    assert!(f["procs"].parse::<u32>().unwrap() <= 2, "sees only its own processes: {f:?}");
    assert_eq!(f["ifaces"], "lo", "its own network namespace");
    if airlock_jail::mount::have_proc_subset() {
        assert_eq!(f["proc"], "self,thread-self", "/proc shows processes only: {f:?}");
    }
    assert_ne!(f["usr"], "yes");
    assert_ne!(f["root"], "yes");
    assert_ne!(f["proc_sys"], "yes", "/proc/sys is read-only");
    assert_eq!(f["tmp"], "yes");
    assert_eq!(f["ws"], "yes");
    assert_eq!(f["cwd"], "/workspace");
    assert_eq!(f["env"], "1 /tmp");
    // stdin, stdout, stderr, the channel, and 4: the listing's own descriptor.
    assert_eq!(f["fds"], "0,1,2,3,4", "no descriptor of the zygote's leaks: {f:?}");
    if airlock_jail::cgroup::Driver::detect().is_ok() {
        assert_eq!(f["cgroups"], "/", "a cgroup namespace rooted at its own cgroup: {f:?}");
    }
    sb.destroy().unwrap();
}

/// The namespaces a sandbox reports, `kind -> id` (`net:[4026532...]`).
fn namespaces(sb: &mut dyn Sandbox) -> std::collections::BTreeMap<String, String> {
    let code = "import os\nfor k in ('user','mnt','pid','pid_for_children','net','ipc','uts','cgroup'): print(k, os.readlink('/proc/self/ns/' + k))";
    let o = cell(sb, code);
    assert_eq!(o.status, Status::Ok, "{o:?}");
    o.stdout.lines().filter_map(|l| l.split_once(' ')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
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

fn host_uid(pid: i32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find_map(|l| l.strip_prefix("Uid:")).unwrap();
    line.split_whitespace().next().unwrap().parse().unwrap()
}

/// The kernel charges a process's per-user counters (inotify, queued signals, locked
/// memory) up the chain of user-namespace creators to the host: the zygote's user
/// namespace must be its own host uid's, not root's, and so its children's chains end
/// there too.
#[test]
fn the_zygote_and_its_children_charge_the_zygote_s_host_uid() {
    let Some(z) = zygote() else { return };
    let zpid = z.host_pid();
    let uid = host_uid(zpid);
    assert_ne!(uid, 0, "the zygote runs as host root");
    assert_eq!(user_ns_owner(zpid), uid, "the zygote's user namespace was created by another host uid");
    let mut sb = fork(&z);
    assert_eq!(cell(sb.as_mut(), "1").status, Status::Ok);
    let children = std::fs::read_to_string(format!("/proc/{zpid}/task/{zpid}/children")).unwrap();
    let kids: Vec<i32> = children.split_whitespace().filter_map(|p| p.parse().ok()).collect();
    assert!(!kids.is_empty(), "the zygote has no child");
    for kid in kids {
        assert_eq!(host_uid(kid), uid, "a child runs as another host uid");
        assert_eq!(user_ns_owner(kid), uid, "a child's user namespace was created by another host uid");
    }
    sb.destroy().unwrap();
}

#[test]
fn every_forked_sandbox_has_namespaces_of_its_own() {
    let Some(z) = zygote() else { return };
    let (mut a, mut b) = (fork(&z), fork(&z));
    let (na, nb) = (namespaces(a.as_mut()), namespaces(b.as_mut()));
    assert_eq!(na.len(), 8, "{na:?}");
    assert_eq!(na["pid_for_children"], na["pid"], "its children stay in its PID namespace");
    let zygote = |kind: &str| std::fs::read_link(format!("/proc/{}/ns/{kind}", z.host_pid())).unwrap();
    for (kind, id) in &na {
        assert_ne!(id, &zygote(kind).to_string_lossy(), "{kind}: not the zygote's");
        assert_ne!(Some(id), nb.get(kind), "{kind}: not a sibling's");
    }
    // Between forks the zygote's children would go to its own PID namespace, never
    // to the last sandbox's.
    assert_eq!(zygote("pid_for_children"), zygote("pid"));
    a.destroy().unwrap();
    b.destroy().unwrap();
}

#[test]
fn seccomp_and_landlock_hold_in_a_forked_sandbox() {
    let Some(z) = zygote() else { return };
    let mut sb = fork(&z);
    let o = cell(
        sb.as_mut(),
        "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n\
         r = libc.unshare(0x10000000)\nprint('unshare', r, ctypes.get_errno())\n\
         r = libc.mount(b'tmpfs', b'/usr', b'tmpfs', 0, None)\nprint('mount', r, ctypes.get_errno())\n\
         r = libc.ptrace(16, 1, 0, 0)\nprint('ptrace', r)",
    );
    assert_eq!(o.status, Status::Ok, "{o:?}");
    assert!(o.stdout.contains("unshare -1 1\n"), "unshare is denied: {}", o.stdout);
    assert!(o.stdout.contains("mount -1 1\n"), "mount is denied: {}", o.stdout);
    assert!(o.stdout.contains("ptrace -1\n"), "ptrace is denied: {}", o.stdout);
    sb.destroy().unwrap();
}

#[test]
fn siblings_share_no_files_and_no_random_state() {
    let Some(z) = zygote() else { return };
    let mut a = fork(&z);
    let mut b = fork(&z);
    let code = "open('/workspace/mine', 'a').close(); open('/tmp/mine', 'a').close()\n\
                import os, random\nprint(sorted(os.listdir('/workspace')), sorted(os.listdir('/tmp')))\n\
                print(random.getrandbits(64))\n\
                try:\n    import numpy\n    print(numpy.random.randint(1 << 62))\nexcept ImportError:\n    print('-')";
    let oa = cell(a.as_mut(), code);
    let ob = cell(b.as_mut(), "import os\nprint(sorted(os.listdir('/workspace')), sorted(os.listdir('/tmp')))");
    assert_eq!(oa.status, Status::Ok, "{oa:?}");
    assert!(ob.stdout.starts_with("[] "), "a sibling's workspace is not shared: {}", ob.stdout);
    assert!(!ob.stdout.contains("mine"), "a sibling's /tmp is not shared: {}", ob.stdout);
    let ob = cell(b.as_mut(), code);
    let (la, lb): (Vec<&str>, Vec<&str>) = (oa.stdout.lines().collect(), ob.stdout.lines().collect());
    assert_ne!(la[1], lb[1], "random differs between siblings");
    if la[2] != "-" {
        assert_ne!(la[2], lb[2], "numpy's global generator differs between siblings");
    }
    a.destroy().unwrap();
    b.destroy().unwrap();
}

#[test]
fn each_forked_sandbox_has_its_own_cgroup_and_limits() {
    let Some(z) = zygote() else { return };
    let mut sb = Box::new(z.fork(&SandboxSpec::new(limits(64))).expect("fork"));
    let pid = sb.host_pid();
    let zcg = std::fs::read_to_string(format!("/proc/{}/cgroup", z.host_pid())).unwrap();
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    if airlock_jail::cgroup::Driver::detect().is_ok() {
        assert_ne!(zcg, cg, "the child left the zygote's cgroup");
    } else {
        eprintln!("skipped: cgroup placement (no usable cgroups here)");
    }
    // A memory bomb hits its own limit; the zygote and a sibling carry on.
    let o = cell(sb.as_mut(), "x = bytearray(200 << 20)\nx[::4096] = b'1' * len(x[::4096])");
    if airlock_jail::cgroup::Driver::detect().is_ok_and(|d| d.enforced().memory) {
        assert_eq!(o.status, Status::MemoryLimit, "{o:?}");
    }
    let mut sibling = fork(&z);
    assert_eq!(cell(sibling.as_mut(), "print('ok')").stdout, "ok\n");
    assert!(z.is_alive());
    sibling.destroy().unwrap();
    let _ = sb.destroy();
}

#[test]
fn a_child_that_exits_is_reported_with_its_status() {
    let Some(z) = zygote() else { return };
    let mut sb = fork(&z);
    let o = cell(sb.as_mut(), "import os\nos._exit(7)");
    assert_ne!(o.status, Status::Ok);
    assert_eq!(o.exit_code, Some(7), "{o:?}");
    assert!(!sb.is_alive());
    let _ = sb.destroy();
    let mut next = fork(&z);
    assert_eq!(cell(next.as_mut(), "print(1)").stdout, "1\n");
    next.destroy().unwrap();
}

#[test]
fn destroy_leaves_no_process() {
    let Some(z) = zygote() else { return };
    let mut sb = Box::new(z.fork(&SandboxSpec::new(Limits::default())).expect("fork"));
    let pid = sb.host_pid();
    cell(sb.as_mut(), "import subprocess\nsubprocess.Popen(['sleep', '300'])");
    (sb as Box<dyn Sandbox>).destroy().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let alive = std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| !s.contains("State:\tZ"));
    assert!(!alive, "the sandbox's init is gone");
}

#[test]
fn a_dead_zygote_takes_its_children_and_says_so() {
    let Some(b) = backend() else { return };
    let z = Zygote::start(b, &recipe(&[])).expect("zygote");
    let mut child = fork(&z);
    assert!(z.is_alive());
    // SAFETY: kills the zygote, our child.
    unsafe { libc::kill(z.host_pid(), libc::SIGKILL) };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while z.is_alive() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!z.is_alive(), "the factory notices its zygote died");
    let c = Cell::new(Language::Python, "print(1)", &Limits::default());
    // Either the host notices at once (an error) or the cell ends as not ok.
    if let Ok(o) = child.execute(&c, &mut |_| {}) {
        assert_ne!(o.status, Status::Ok, "{o:?}");
    }
    let e = z.fork(&SandboxSpec::new(Limits::default())).err().expect("no fork from a dead zygote");
    assert!(e.to_string().contains("gone"), "{e}");
}

#[test]
fn a_template_whose_module_is_missing_says_which() {
    let Some(b) = backend() else { return };
    let mut r = recipe(&["json", "airlock_no_such_module"]);
    r.optional_modules = false;
    let e = Zygote::start(b, &r).err().expect("the zygote must refuse");
    let text = e.to_string();
    assert!(text.contains("airlock_no_such_module") && text.contains("template 'test'"), "{text}");
}

#[test]
fn a_host_network_sandbox_is_refused() {
    let Some(z) = zygote() else { return };
    let mut spec = SandboxSpec::new(Limits::default());
    spec.network = airlock_core::NetworkPolicy::Host;
    let e = z.fork(&spec).err().expect("refused");
    assert!(e.to_string().contains("network"), "{e}");
}

#[test]
fn a_forked_sandbox_keeps_its_zygote_alive() {
    let Some(b) = backend() else { return };
    let z = Zygote::start(b, &recipe(&[])).expect("zygote");
    let zpid = z.host_pid();
    let mut child = fork(&z);
    drop(z);
    assert_eq!(cell(child.as_mut(), "print('still here')").stdout, "still here\n");
    assert!(std::path::Path::new(&format!("/proc/{zpid}")).exists(), "the zygote lives while its child does");
    child.destroy().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(format!("/proc/{zpid}/stat")).is_ok_and(|s| !s.contains(") Z ")) {
        assert!(std::time::Instant::now() < deadline, "the zygote outlived its last child");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads every writable private mapping of `pid` (as root) and says whether `needle`
/// occurs in it.
fn memory_contains(pid: i32, needle: &[u8]) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (range, perms) = (f.next().unwrap(), f.next().unwrap());
        if !perms.starts_with("rw") {
            continue;
        }
        let (a, b) = range.split_once('-').unwrap();
        let (a, b) = (u64::from_str_radix(a, 16).unwrap(), u64::from_str_radix(b, 16).unwrap());
        let mut buf = vec![0u8; (b - a) as usize];
        if mem.seek(SeekFrom::Start(a)).is_err() || mem.read_exact(&mut buf).is_err() {
            continue;
        }
        if buf.windows(needle.len()).any(|w| w == needle) {
            return true;
        }
    }
    false
}

#[test]
fn a_sandboxs_environment_never_passes_through_the_zygote() {
    let Some(b) = backend() else { return };
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: reading the zygote's memory needs root");
        return;
    }
    let z = Zygote::start(b, &recipe(&[])).expect("zygote");
    let token = format!("airlock-secret-{}-{}", std::process::id(), airlock_core::new_id("t"));
    let mut spec = SandboxSpec::new(Limits::default());
    spec.env.insert("API_TOKEN".into(), token.clone());
    let mut sb: Box<dyn Sandbox> = Box::new(z.fork(&spec).expect("fork"));
    assert_eq!(cell(sb.as_mut(), "import os\nprint(os.environ['API_TOKEN'])").stdout, format!("{token}\n"));
    // Later siblings are forked from the zygote's memory: the token must not be in it.
    assert!(!memory_contains(z.host_pid(), token.as_bytes()), "the environment reached the zygote's memory");
    sb.destroy().unwrap();
}

/// A template with site-packages in the host's `/tmp` (covered by the zygote's own
/// `/tmp` while its root is built; here with a space in the path and given through a
/// symbolic link): the zygote is built like a cold sandbox, takes them the same way and
/// imports from them, and its children see them read-only below `/airlock`.
#[test]
fn a_zygote_takes_site_packages_from_the_host_s_tmp() {
    let Some(_) = backend() else { return };
    let n = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let dir = std::path::PathBuf::from(format!("/tmp/airlock zygote sp {}-{n}", std::process::id()));
    let link = std::path::PathBuf::from(format!("/tmp/airlock-zygote-sp-{}-{n}", std::process::id()));
    std::fs::create_dir_all(dir.join("site-packages")).unwrap();
    std::fs::write(dir.join("site-packages/airlock_zygote_probe.py"), "VALUE = 42\n").unwrap();
    std::os::unix::fs::symlink(&dir, &link).unwrap();
    let cleanup = || {
        let _ = std::fs::remove_file(&link);
        let _ = std::fs::remove_dir_all(&dir);
    };
    let mut c = JailConfig::new(airlock_guest::launch::default_python());
    c.site_packages = vec![link.join("site-packages")];
    let b = JailBackend::new(c);
    let z = Zygote::start(&b, &recipe(&["airlock_zygote_probe"]));
    let z = match z {
        Ok(z) => z,
        Err(e) => {
            cleanup();
            panic!("the zygote did not start: {e}");
        }
    };
    assert_eq!(z.imported(), ["airlock_zygote_probe"], "imported in the zygote");
    let mut sb = fork(&z);
    let code = "import os, sys, airlock_zygote_probe as m\nd = os.path.dirname(m.__file__)\ntry:\n    open(d + '/x', 'w')\n    w = 'writable'\nexcept OSError as e:\n    w = type(e).__name__\nprint(m.VALUE, d, w, 'airlock_zygote_probe' in sys.modules)";
    let o = cell(sb.as_mut(), code);
    sb.destroy().unwrap();
    z.kill();
    cleanup();
    assert_eq!(o.stdout, format!("42 /airlock{}/site-packages OSError True\n", dir.display()), "{o:?}");
}
