//! The guest image: what `airlock setup microvm` builds, from Debian packages only.
//!
//! * `vmlinux`: the uncompressed kernel, extracted from Debian's `linux-image-amd64`
//!   (`CONFIG_PVH=y`, so QEMU boots it through PVH and skips real mode);
//! * `modules/`: the few kernel modules the guest needs (virtio-mmio, virtio-serial,
//!   virtio-blk, virtio-rng, erofs), in load order;
//! * `initrd.cpio`: the static guest agent as `/init`, those modules, `/dev/console`;
//! * `rootfs.erofs`: a read-only root (debootstrap's minbase with python3, numpy,
//!   pandas and matplotlib, a prebuilt matplotlib font cache, a guest user);
//! * `manifest.json`: what went in (package versions, kernel, agent hash).
//!
//! The initramfs is rebuilt on its own when the embedded agent changes (a new airlock
//! build), without rebuilding the root image.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use airlock_core::Error;
use serde::{Deserialize, Serialize};
use sha2::Digest;

/// The static guest agent, built by this crate's build script.
pub const AGENT_BINARY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/airlock-vm-agent"));

/// The Debian suite of the guest.
pub const SUITE: &str = "bookworm";
/// Packages added to debootstrap's minbase.
pub const PACKAGES: &[&str] = &["python3", "python3-numpy", "python3-pandas", "python3-matplotlib"];
/// Kernel modules the guest loads, in order (dependencies first).
pub const MODULES: &[&str] = &[
    "crc32c_generic",
    "libcrc32c",
    "erofs",
    "virtio",
    "virtio_ring",
    "virtio_mmio",
    "virtio_blk",
    "virtio_console",
    "virtio-rng",
];

/// What the image was built from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Debian suite.
    pub suite: String,
    /// The mirror used.
    pub mirror: String,
    /// The kernel package, e.g. `linux-image-6.1.0-28-amd64 6.1.119-1`.
    pub kernel_package: String,
    /// The kernel release, e.g. `6.1.0-28-amd64`.
    pub kernel_release: String,
    /// SHA-256 of the agent inside `initrd.cpio`.
    pub agent_sha256: String,
    /// SHA-256 of `rootfs.erofs`.
    pub rootfs_sha256: String,
    /// Every package in the root image and its version.
    pub packages: BTreeMap<String, String>,
}

/// The artifact directory (`<data>/microvm`).
#[derive(Debug, Clone)]
pub struct Artifacts {
    /// The directory.
    pub dir: PathBuf,
}

/// SHA-256 of bytes, as hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&sha2::Sha256::digest(bytes))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn sha256_file(path: &Path) -> Result<String, Error> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

/// The agent's hash (part of every snapshot's key).
pub fn agent_sha256() -> String {
    sha256_hex(AGENT_BINARY)
}

impl Artifacts {
    /// The artifacts under `data_dir/microvm`.
    pub fn new(data_dir: &Path) -> Self {
        Artifacts { dir: data_dir.join("microvm") }
    }

    /// The kernel.
    pub fn kernel(&self) -> PathBuf {
        self.dir.join("vmlinux")
    }
    /// The initramfs.
    pub fn initrd(&self) -> PathBuf {
        self.dir.join("initrd.cpio")
    }
    /// The root image.
    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs.erofs")
    }
    /// The manifest.
    pub fn manifest_path(&self) -> PathBuf {
        self.dir.join("manifest.json")
    }
    /// The snapshot directory.
    pub fn snapshots(&self) -> PathBuf {
        self.dir.join("snapshots")
    }

    /// The manifest, if the image is complete.
    pub fn manifest(&self) -> Option<Manifest> {
        let text = std::fs::read_to_string(self.manifest_path()).ok()?;
        let m: Manifest = serde_json::from_str(&text).ok()?;
        (self.kernel().is_file() && self.rootfs().is_file() && self.dir.join("modules").join("order").is_file())
            .then_some(m)
    }

    /// What is missing, as a sentence, or `None` when the image is ready.
    pub fn missing(&self) -> Option<String> {
        if self.manifest().is_none() {
            return Some(format!("the guest image is not built ({} is missing or incomplete)", self.dir.display()));
        }
        None
    }

    /// Makes sure `initrd.cpio` holds this build's agent (rebuilding it if not) and
    /// returns the agent hash it holds.
    pub fn ensure_initrd(&self) -> Result<String, Error> {
        let want = agent_sha256();
        let mut m = self.manifest().ok_or_else(|| Error::Unavailable {
            backend: airlock_core::BackendKind::Microvm,
            reason: "the guest image is not built".into(),
            fix: Some("run `airlock setup microvm`".into()),
        })?;
        if m.agent_sha256 == want && self.initrd().is_file() {
            return Ok(want);
        }
        tracing::info!("microvm: the embedded guest agent changed; rebuilding the initramfs");
        write_initrd(&self.dir.join("modules"), &self.initrd())?;
        m.agent_sha256 = want.clone();
        write_json(&self.manifest_path(), &m)?;
        // Snapshots hold the old agent in memory.
        let _ = std::fs::remove_dir_all(self.snapshots());
        Ok(want)
    }
}

fn write_json<T: Serialize>(path: &Path, v: &T) -> Result<(), Error> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, serde_json::to_vec_pretty(v).expect("serialisable"))
        .map_err(|e| Error::io(format!("writing {}", tmp.display()), e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(format!("renaming {}", tmp.display()), e))
}

// ---- the initramfs (cpio "newc") ----

fn cpio_entry(out: &mut Vec<u8>, ino: u32, name: &str, mode: u32, data: &[u8], rdev: (u32, u32)) {
    let namez = name.len() + 1;
    let header = format!(
        "070701{ino:08x}{mode:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{namez:08x}{:08x}",
        0,
        0,
        1,
        0,
        data.len(),
        0,
        0,
        rdev.0,
        rdev.1,
        0
    );
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
    out.extend_from_slice(data);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// An uncompressed newc archive with the agent as `/init`, the modules listed in
/// `modules/order`, and `/dev/console`. Timestamps are zero, so the same inputs give
/// the same bytes.
pub fn initrd_bytes(modules_dir: &Path, agent: &[u8]) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    let mut ino = 1;
    let mut next = || {
        ino += 1;
        ino
    };
    for d in ["dev", "proc", "sys", "newroot", "modules"] {
        cpio_entry(&mut out, next(), d, 0o040755, &[], (0, 0));
    }
    cpio_entry(&mut out, next(), "dev/console", 0o020600, &[], (5, 1));
    cpio_entry(&mut out, next(), "init", 0o100755, agent, (0, 0));
    let order_path = modules_dir.join("order");
    let order =
        std::fs::read_to_string(&order_path).map_err(|e| Error::io(format!("reading {}", order_path.display()), e))?;
    cpio_entry(&mut out, next(), "modules/order", 0o100644, order.as_bytes(), (0, 0));
    for name in order.lines().filter(|l| !l.trim().is_empty()) {
        let p = modules_dir.join(name.trim());
        let data = std::fs::read(&p).map_err(|e| Error::io(format!("reading {}", p.display()), e))?;
        cpio_entry(&mut out, next(), &format!("modules/{}", name.trim()), 0o100644, &data, (0, 0));
    }
    cpio_entry(&mut out, 0, "TRAILER!!!", 0, &[], (0, 0));
    Ok(out)
}

fn write_initrd(modules_dir: &Path, dest: &Path) -> Result<(), Error> {
    let bytes = initrd_bytes(modules_dir, AGENT_BINARY)?;
    // Unique per process: several airlock processes may notice a new agent at once.
    let tmp = dest.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(format!("writing {}", tmp.display()), e))?;
    set_mode(&tmp, 0o644)?;
    std::fs::rename(&tmp, dest).map_err(|e| Error::io(format!("renaming {}", tmp.display()), e))
}

fn set_mode(p: &Path, mode: u32) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io(format!("chmod {}", p.display()), e))
}

// ---- the kernel ----

/// Extracts the uncompressed ELF kernel from a bzImage: the setup header says where
/// the compressed payload is (boot protocol >= 2.08); Debian compresses it with xz.
pub fn extract_vmlinux(bzimage: &[u8]) -> Result<Vec<u8>, Error> {
    let bad = |why: &str| Error::host(format!("cannot extract vmlinux from the kernel image: {why}"));
    if bzimage.len() < 0x260 || &bzimage[0x202..0x206] != b"HdrS" {
        return Err(bad("not a bzImage (no HdrS signature)"));
    }
    let version = u16::from_le_bytes([bzimage[0x206], bzimage[0x207]]);
    if version < 0x0208 {
        return Err(bad("boot protocol older than 2.08"));
    }
    let setup_sects = match bzimage[0x1f1] {
        0 => 4,
        n => n as usize,
    };
    let off = u32::from_le_bytes(bzimage[0x248..0x24c].try_into().expect("4 bytes")) as usize;
    let len = u32::from_le_bytes(bzimage[0x24c..0x250].try_into().expect("4 bytes")) as usize;
    let start = (setup_sects + 1) * 512 + off;
    let payload = bzimage.get(start..start + len).ok_or_else(|| bad("payload out of range"))?;
    if !payload.starts_with(b"\xfd7zXZ\x00") {
        return Err(bad("the payload is not xz-compressed (only xz is supported, as Debian uses)"));
    }
    // The kernel build appends the uncompressed size (4 bytes) after the xz stream,
    // which ends with the footer magic "YZ".
    let payload = if payload.len() > 6 && &payload[payload.len() - 6..payload.len() - 4] == b"YZ" {
        &payload[..payload.len() - 4]
    } else {
        payload
    };
    let mut out = Vec::new();
    xz2::read::XzDecoder::new(payload).read_to_end(&mut out).map_err(|e| bad(&format!("xz: {e}")))?;
    if !out.starts_with(b"\x7fELF") {
        return Err(bad("the payload is not an ELF file"));
    }
    Ok(out)
}

// ---- setup ----

/// Options of `airlock setup microvm`.
#[derive(Debug, Clone)]
pub struct SetupOptions {
    /// The Debian mirror.
    pub mirror: String,
    /// Rebuild even if the image exists.
    pub force: bool,
    /// Keep the debootstrap tree (for inspection or faster rebuilds).
    pub keep_work: bool,
}

impl Default for SetupOptions {
    fn default() -> Self {
        SetupOptions {
            mirror: std::env::var("AIRLOCK_DEBIAN_MIRROR").unwrap_or_else(|_| "http://deb.debian.org/debian".into()),
            force: false,
            keep_work: false,
        }
    }
}

fn run(cmd: &mut Command, what: &str, log: &Path) -> Result<(), Error> {
    let logf = std::fs::File::create(log).map_err(|e| Error::io(format!("creating {}", log.display()), e))?;
    let errf = logf.try_clone().map_err(|e| Error::io("dup", e))?;
    let status = cmd
        .stdin(Stdio::null())
        .stdout(logf)
        .stderr(errf)
        .status()
        .map_err(|e| Error::host(format!("{what}: cannot run {:?}: {e}", cmd.get_program())))?;
    if !status.success() {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(15).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(Error::host(format!(
            "{what} failed ({status}); last lines of {}:\n{}",
            log.display(),
            tail.join("\n")
        )));
    }
    Ok(())
}

fn need_tool(name: &str, package: &str) -> Result<(), Error> {
    let found = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
                .any(|d| d.join(name).is_file())
        })
        .unwrap_or(false);
    if found {
        Ok(())
    } else {
        Err(Error::Unavailable {
            backend: airlock_core::BackendKind::Microvm,
            reason: format!("`{name}` is not installed"),
            fix: Some(format!("apt-get install {package}")),
        })
    }
}

/// Builds the guest image into `art.dir`, reporting progress through `progress`.
pub fn setup(art: &Artifacts, opts: &SetupOptions, progress: &mut dyn FnMut(&str)) -> Result<Manifest, Error> {
    if !opts.force
        && let Some(m) = art.manifest()
    {
        progress(&format!("guest image already built in {} (use --force to rebuild)", art.dir.display()));
        art.ensure_initrd()?;
        return Ok(m);
    }
    if !nix::unistd::geteuid().is_root() {
        return Err(Error::invalid(
            "building the microvm guest image needs root (debootstrap and chroot); run `sudo airlock setup microvm`",
        ));
    }
    for (tool, pkg) in
        [("debootstrap", "debootstrap"), ("mkfs.erofs", "erofs-utils"), ("dpkg-deb", "dpkg"), ("chroot", "coreutils")]
    {
        need_tool(tool, pkg)?;
    }
    std::fs::create_dir_all(&art.dir).map_err(|e| Error::io(format!("creating {}", art.dir.display()), e))?;
    set_mode(&art.dir, 0o755)?;
    let work = art.dir.join("work");
    std::fs::create_dir_all(&work).map_err(|e| Error::io(format!("creating {}", work.display()), e))?;
    let rootfs = work.join("rootfs");
    let done_marker = work.join("rootfs.complete");

    // 1. The root filesystem.
    if done_marker.is_file() && rootfs.is_dir() {
        progress("[1/6] root filesystem: reusing the debootstrap tree from an earlier run");
    } else {
        let _ = std::fs::remove_dir_all(&rootfs);
        progress(&format!(
            "[1/6] root filesystem: debootstrap {SUITE} minbase + {} from {} (a few minutes)",
            PACKAGES.join(", "),
            opts.mirror
        ));
        run(
            Command::new("debootstrap")
                .arg("--variant=minbase")
                .arg(format!("--include={}", PACKAGES.join(",")))
                .arg(SUITE)
                .arg(&rootfs)
                .arg(&opts.mirror),
            "debootstrap",
            &work.join("debootstrap.log"),
        )?;
        std::fs::write(&done_marker, b"").map_err(|e| Error::io("writing the debootstrap marker", e))?;
    }

    // 2. The kernel, from the same mirror and suite.
    progress("[2/6] kernel: downloading linux-image-amd64 and extracting an uncompressed vmlinux (PVH)");
    let (kernel_package, kernel_release) = fetch_kernel(&rootfs, &work, art)?;

    // 3. Guest tweaks.
    progress("[3/6] guest: user, mount points, matplotlib font cache");
    customize(&rootfs, &work)?;
    let packages = installed_packages(&rootfs)?;

    // 4. initramfs.
    progress("[4/6] initramfs: static guest agent as /init and the virtio/erofs modules");
    write_initrd(&art.dir.join("modules"), &art.initrd())?;

    // 5. Root image.
    progress("[5/6] root image: mkfs.erofs (read-only, uncompressed)");
    let image_tmp = art.dir.join("rootfs.erofs.tmp");
    run(
        Command::new("mkfs.erofs")
            .arg("-U")
            .arg("6169726c-6f63-6b00-0000-000000000001")
            .arg("-x-1")
            .arg(&image_tmp)
            .arg(&rootfs),
        "mkfs.erofs",
        &work.join("mkfs.log"),
    )?;
    set_mode(&image_tmp, 0o644)?;
    std::fs::rename(&image_tmp, art.rootfs()).map_err(|e| Error::io("renaming the root image", e))?;

    // 6. Manifest; old snapshots are invalid now.
    progress("[6/6] manifest");
    let _ = std::fs::remove_dir_all(art.snapshots());
    let m = Manifest {
        suite: SUITE.into(),
        mirror: opts.mirror.clone(),
        kernel_package,
        kernel_release,
        agent_sha256: agent_sha256(),
        rootfs_sha256: sha256_file(&art.rootfs())?,
        packages,
    };
    write_json(&art.manifest_path(), &m)?;
    if !opts.keep_work {
        let _ = std::fs::remove_dir_all(&work);
    }
    Ok(m)
}

fn chroot_output(rootfs: &Path, args: &[&str]) -> Result<String, Error> {
    let out = Command::new("/usr/sbin/chroot")
        .arg(rootfs)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::host(format!("chroot {}: {e}", args.join(" "))))?;
    if !out.status.success() {
        return Err(Error::host(format!(
            "chroot {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn fetch_kernel(rootfs: &Path, work: &Path, art: &Artifacts) -> Result<(String, String), Error> {
    let deps = chroot_output(rootfs, &["apt-cache", "depends", "linux-image-amd64"])?;
    let pkg = deps
        .lines()
        .find_map(|l| l.trim().strip_prefix("Depends: ").filter(|p| p.starts_with("linux-image-")))
        .map(str::trim)
        .ok_or_else(|| Error::host(format!("linux-image-amd64 names no kernel package: {deps}")))?
        .to_string();
    let version = chroot_output(rootfs, &["apt-cache", "show", "--no-all-versions", &pkg])?
        .lines()
        .find_map(|l| l.strip_prefix("Version: "))
        .unwrap_or("")
        .trim()
        .to_string();
    let _ = std::fs::remove_dir_all(rootfs.join("tmp/kernel"));
    std::fs::create_dir_all(rootfs.join("tmp/kernel")).map_err(|e| Error::io("creating tmp/kernel", e))?;
    run(
        Command::new("/usr/sbin/chroot").arg(rootfs).args([
            "sh",
            "-c",
            &format!("cd /tmp/kernel && apt-get download {pkg}"),
        ]),
        "downloading the kernel package",
        &work.join("kernel-download.log"),
    )?;
    let deb = std::fs::read_dir(rootfs.join("tmp/kernel"))
        .map_err(|e| Error::io("listing tmp/kernel", e))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or_else(|| Error::host("apt-get download produced no .deb"))?;
    let kx = work.join("kernel");
    let _ = std::fs::remove_dir_all(&kx);
    run(
        Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&kx),
        "unpacking the kernel package",
        &work.join("dpkg-deb.log"),
    )?;
    let _ = std::fs::remove_dir_all(rootfs.join("tmp/kernel"));
    let release = pkg.trim_start_matches("linux-image-").to_string();
    let bz = kx.join("boot").join(format!("vmlinuz-{release}"));
    let bzimage = std::fs::read(&bz).map_err(|e| Error::io(format!("reading {}", bz.display()), e))?;
    let vmlinux = extract_vmlinux(&bzimage)?;
    let tmp = art.dir.join("vmlinux.tmp");
    std::fs::write(&tmp, vmlinux).map_err(|e| Error::io("writing vmlinux", e))?;
    set_mode(&tmp, 0o644)?;
    std::fs::rename(&tmp, art.kernel()).map_err(|e| Error::io("renaming vmlinux", e))?;
    // The modules, found by name under lib/modules/<release>/kernel.
    let mods_src = kx.join("lib/modules").join(&release).join("kernel");
    let mods_dst = art.dir.join("modules");
    let _ = std::fs::remove_dir_all(&mods_dst);
    std::fs::create_dir_all(&mods_dst).map_err(|e| Error::io("creating modules/", e))?;
    let mut found: BTreeMap<String, PathBuf> = BTreeMap::new();
    find_modules(&mods_src, &mut found);
    let mut order = String::new();
    for m in MODULES {
        let src = found.get(*m).ok_or_else(|| {
            Error::host(format!("kernel {release} has no module {m}.ko (is it built in or missing?)"))
        })?;
        let name = format!("{m}.ko");
        std::fs::copy(src, mods_dst.join(&name)).map_err(|e| Error::io(format!("copying {name}"), e))?;
        order.push_str(&name);
        order.push('\n');
    }
    std::fs::write(mods_dst.join("order"), order).map_err(|e| Error::io("writing modules/order", e))?;
    let _ = std::fs::remove_dir_all(&kx);
    Ok((format!("{pkg} {version}"), release))
}

fn find_modules(dir: &Path, out: &mut BTreeMap<String, PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            find_modules(&p, out);
        } else if let Some(name) = p.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".ko")) {
            out.insert(name.to_string(), p);
        }
    }
}

fn customize(rootfs: &Path, work: &Path) -> Result<(), Error> {
    let uid = airlock_vm_agent::GUEST_UID;
    let append = |file: &str, line: String| -> Result<(), Error> {
        let p = rootfs.join(file);
        let text = std::fs::read_to_string(&p).unwrap_or_default();
        if text.lines().any(|l| l.starts_with("airlock:")) {
            return Ok(());
        }
        let mut f =
            std::fs::OpenOptions::new().append(true).open(&p).map_err(|e| Error::io(format!("opening {file}"), e))?;
        f.write_all(line.as_bytes()).map_err(|e| Error::io(format!("writing {file}"), e))
    };
    append("etc/passwd", format!("airlock:x:{uid}:{uid}:airlock sandbox:/workspace:/bin/bash\n"))?;
    append("etc/group", format!("airlock:x:{uid}:\n"))?;
    for d in ["workspace", "run", "tmp", "dev", "proc", "sys", "usr/share/airlock"] {
        std::fs::create_dir_all(rootfs.join(d)).map_err(|e| Error::io(format!("creating {d}"), e))?;
    }
    let mpl = airlock_vm_agent::IMAGE_MPL_CACHE.trim_start_matches('/');
    let _ = std::fs::remove_dir_all(rootfs.join(mpl));
    std::fs::create_dir_all(rootfs.join(mpl)).map_err(|e| Error::io("creating the matplotlib cache dir", e))?;
    run(
        Command::new("/usr/sbin/chroot")
            .arg(rootfs)
            .args([
                "/usr/bin/python3",
                "-c",
                "import matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot as plt; plt.figure(); print(matplotlib.__version__)",
            ])
            .env_clear()
            .env("MPLCONFIGDIR", airlock_vm_agent::IMAGE_MPL_CACHE)
            .env("HOME", "/tmp")
            .env("PATH", "/usr/bin:/bin"),
        "building matplotlib's font cache",
        &work.join("mpl.log"),
    )?;
    // What a sandbox never needs: package caches, documentation, compilers' headers.
    for d in [
        "var/cache/apt/archives",
        "usr/share/doc",
        "usr/share/man",
        "usr/share/info",
        "usr/include",
        "var/lib/apt/lists",
    ] {
        let p = rootfs.join(d);
        if let Ok(rd) = std::fs::read_dir(&p) {
            for e in rd.flatten() {
                let ep = e.path();
                if ep.is_dir() && !ep.is_symlink() {
                    let _ = std::fs::remove_dir_all(&ep);
                } else {
                    let _ = std::fs::remove_file(&ep);
                }
            }
        }
    }
    Ok(())
}

fn installed_packages(rootfs: &Path) -> Result<BTreeMap<String, String>, Error> {
    let text = chroot_output(rootfs, &["dpkg-query", "-W", "-f", "${Package} ${Version}\n"])?;
    Ok(text.lines().filter_map(|l| l.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string()))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpio_is_newc_and_deterministic() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("order"), "a.ko\n").unwrap();
        std::fs::write(dir.path().join("a.ko"), b"module").unwrap();
        let a = initrd_bytes(dir.path(), b"agent").unwrap();
        let b = initrd_bytes(dir.path(), b"agent").unwrap();
        assert_eq!(a, b);
        assert!(a.starts_with(b"070701"));
        assert!(a.len().is_multiple_of(4));
        let text = String::from_utf8_lossy(&a);
        for name in ["init", "dev/console", "modules/order", "modules/a.ko", "TRAILER!!!"] {
            assert!(text.contains(name), "{name} missing");
        }
    }

    #[test]
    fn vmlinux_extraction_rejects_garbage() {
        let e = extract_vmlinux(&[0u8; 1024]).unwrap_err().to_string();
        assert!(e.contains("not a bzImage"), "{e}");
    }

    #[test]
    fn agent_is_static() {
        // A static executable has no PT_INTERP program header.
        assert!(AGENT_BINARY.starts_with(b"\x7fELF"));
        let a = AGENT_BINARY;
        let u16_at = |o: usize| u16::from_le_bytes([a[o], a[o + 1]]) as usize;
        let phoff = u64::from_le_bytes(a[0x20..0x28].try_into().unwrap()) as usize;
        let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
        const PT_INTERP: u32 = 3;
        for i in 0..phnum {
            let o = phoff + i * phentsize;
            let p_type = u32::from_le_bytes(a[o..o + 4].try_into().unwrap());
            assert_ne!(p_type, PT_INTERP, "the agent needs a dynamic loader; it must be static");
        }
    }
}
