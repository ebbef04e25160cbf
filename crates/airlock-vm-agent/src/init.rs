//! PID 1: bring the guest up, serve, and stop the VM when done.
//!
//! The initramfs holds this binary as `/init`, the kernel modules it needs in
//! `/modules` (loaded in the order of `/modules/order`), and `/dev/console`. The
//! read-only root image is the first virtio block device.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use airlock_vm_agent::{GUEST_MPL_DIR, GUEST_UID, GUEST_WORKSPACE, IMAGE_MPL_CACHE, PORT_NAME, ServeConfig};
use nix::mount::{MsFlags, mount};

pub fn main() -> ! {
    match boot() {
        Ok(port) => {
            let cfg = ServeConfig {
                python: "/usr/bin/python3".into(),
                workspace: GUEST_WORKSPACE.into(),
                tmp: "/tmp".into(),
                run_as: Some((GUEST_UID, GUEST_UID)),
                mpl_config: Some(GUEST_MPL_DIR.into()),
                preload: preload_from_cmdline(),
                extra_env: env_from_cmdline(),
                in_vm: true,
            };
            if let Err(e) = airlock_vm_agent::serve(port, &cfg) {
                eprintln!("airlock-vm-agent: {e}");
            }
        }
        Err(e) => eprintln!("airlock-vm-agent: boot failed: {e}"),
    }
    nix::unistd::sync();
    // With QEMU's -no-reboot a reset ends the VM.
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

/// `airlock.openblas_coretype=NAME` on the kernel command line: the OpenBLAS kernel
/// to use (its CPU detection picks instructions an emulated `qemu64` CPU lacks).
fn env_from_cmdline() -> std::collections::BTreeMap<String, String> {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    cmdline
        .split_whitespace()
        .filter_map(|a| a.strip_prefix("airlock.openblas_coretype="))
        .map(|v| ("OPENBLAS_CORETYPE".to_string(), v.to_string()))
        .collect()
}

/// `airlock.preload=a,b,c` on the kernel command line: the template's modules.
fn preload_from_cmdline() -> Vec<String> {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    cmdline
        .split_whitespace()
        .find_map(|a| a.strip_prefix("airlock.preload="))
        .map(|v| v.split(',').filter(|m| !m.is_empty()).map(String::from).collect())
        .unwrap_or_default()
}

fn mnt(src: &str, target: &str, fstype: &str, flags: MsFlags, data: Option<&str>) -> Result<(), String> {
    mount(Some(src), target, Some(fstype), flags, data).map_err(|e| format!("mounting {fstype} on {target}: {e}"))
}

fn boot() -> Result<OwnedFd, String> {
    for d in ["/dev", "/proc", "/sys", "/newroot"] {
        let _ = std::fs::create_dir_all(d);
    }
    let nodev = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV;
    mnt("devtmpfs", "/dev", "devtmpfs", MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC, None)?;
    mnt("proc", "/proc", "proc", nodev, None)?;
    mnt("sysfs", "/sys", "sysfs", nodev, None)?;
    load_modules(Path::new("/modules"))?;
    let vda = Path::new("/dev/vda");
    wait_for(|| vda.exists(), Duration::from_secs(10)).ok_or("the root image (/dev/vda) did not appear")?;
    mnt("/dev/vda", "/newroot", "erofs", MsFlags::MS_RDONLY | MsFlags::MS_NODEV, None)?;
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    let ws = format!("mode=0755,uid={GUEST_UID},gid={GUEST_UID},size=64m");
    mnt("tmpfs", "/newroot/workspace", "tmpfs", nosuid, Some(&ws))?;
    mnt("tmpfs", "/newroot/tmp", "tmpfs", nosuid, Some("mode=1777,size=64m"))?;
    mnt("tmpfs", "/newroot/run", "tmpfs", nosuid, Some("mode=0755,size=16m"))?;
    for d in ["/dev", "/proc", "/sys"] {
        mount(Some(d), format!("/newroot{d}").as_str(), None::<&str>, MsFlags::MS_MOVE, None::<&str>)
            .map_err(|e| format!("moving {d}: {e}"))?;
    }
    std::env::set_current_dir("/newroot").map_err(|e| format!("chdir /newroot: {e}"))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>).map_err(|e| format!("switching root: {e}"))?;
    nix::unistd::chroot(".").map_err(|e| format!("chroot: {e}"))?;
    std::env::set_current_dir("/").map_err(|e| format!("chdir /: {e}"))?;
    let _ = std::fs::create_dir_all("/dev/shm");
    mnt("tmpfs", "/dev/shm", "tmpfs", nosuid, Some("mode=1777,size=16m"))?;
    let _ = nix::unistd::sethostname("airlock");
    let _ = std::fs::write("/proc/self/oom_score_adj", "-1000");
    prepare_mpl();
    let port = find_port()?;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&port)
        .map(OwnedFd::from)
        .map_err(|e| format!("opening {}: {e}", port.display()))
}

fn wait_for(mut ok: impl FnMut() -> bool, limit: Duration) -> Option<()> {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if ok() {
            return Some(());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    ok().then_some(())
}

fn load_modules(dir: &Path) -> Result<(), String> {
    let order = std::fs::read_to_string(dir.join("order")).map_err(|e| format!("reading /modules/order: {e}"))?;
    for name in order.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let f = std::fs::File::open(dir.join(name)).map_err(|e| format!("opening module {name}: {e}"))?;
        let params = c"";
        // SAFETY: finit_module reads the module from an fd we own and a NUL-terminated
        // parameter string that lives for the call.
        let r = unsafe { libc::syscall(libc::SYS_finit_module, f.as_raw_fd(), params.as_ptr(), 0) };
        if r != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                return Err(format!("loading module {name}: {e}"));
            }
        }
    }
    Ok(())
}

/// The device node of the virtio-serial port named [`PORT_NAME`].
fn find_port() -> Result<std::path::PathBuf, String> {
    let mut found = None;
    wait_for(
        || {
            let Ok(rd) = std::fs::read_dir("/sys/class/virtio-ports") else { return false };
            for e in rd.flatten() {
                let name = std::fs::read_to_string(e.path().join("name")).unwrap_or_default();
                if name.trim() == PORT_NAME {
                    let dev = Path::new("/dev").join(e.file_name());
                    if dev.exists() {
                        found = Some(dev);
                        return true;
                    }
                }
            }
            false
        },
        Duration::from_secs(10),
    );
    found.ok_or_else(|| format!("no virtio-serial port named {PORT_NAME} appeared"))
}

/// Copies the image's prebuilt matplotlib font cache to a directory the guest user
/// can write (matplotlib refuses a read-only configuration directory).
fn prepare_mpl() {
    let dst = Path::new(GUEST_MPL_DIR);
    if std::fs::create_dir_all(dst).is_err() {
        return;
    }
    if let Ok(rd) = std::fs::read_dir(IMAGE_MPL_CACHE) {
        for e in rd.flatten() {
            let _ = std::fs::copy(e.path(), dst.join(e.file_name()));
            let _ = std::os::unix::fs::chown(dst.join(e.file_name()), Some(GUEST_UID), Some(GUEST_UID));
        }
    }
    let _ = std::os::unix::fs::chown(dst, Some(GUEST_UID), Some(GUEST_UID));
}
