//! `airlock run` on the `jail` backend with a root file system and site-packages in the
//! host's `/tmp` (which every sandbox covers with its own `/tmp`), as a user would type
//! it. Prints "skipped: <reason>" where the jail cannot run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

const AIRLOCK: &str = env!("CARGO_BIN_EXE_airlock");

/// A fresh directory in `/tmp` with a space in its name; removed on drop.
struct Fixture(PathBuf);

impl Fixture {
    fn new(tag: &str) -> Fixture {
        let n = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
        let dir = PathBuf::from(format!("/tmp/airlock run {tag} {}-{n}", std::process::id()));
        std::fs::create_dir(&dir).unwrap();
        Fixture(dir)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `airlock run --backend jail ARGS`: (success, stdout, stderr).
fn run(args: &[&str]) -> (bool, String, String) {
    let o = Command::new(AIRLOCK)
        .args(["run", "--backend", "jail"])
        .args(args)
        .env_remove("AIRLOCK_URL")
        .env_remove("AIRLOCK_JAIL_ROOTFS")
        .env_remove("AIRLOCK_JAIL_SITE_PACKAGES")
        .output()
        .expect("airlock run");
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// True when `airlock run -b jail` works here at all.
fn jail_works() -> bool {
    let (ok, out, err) = run(&["-c", "print(1)"]);
    if !(ok && out == "1\n") {
        eprintln!("skipped: the jail backend does not run here: {err}");
        return false;
    }
    true
}

#[test]
fn site_packages_in_tmp() {
    if !jail_works() {
        return;
    }
    let f = Fixture::new("sp");
    let sp = f.0.join("venv/lib/site-packages");
    std::fs::create_dir_all(&sp).unwrap();
    std::fs::write(sp.join("airlock_cli_probe.py"), "VALUE = 42\n").unwrap();
    let code = "import os, airlock_cli_probe as m\nprint(m.VALUE, os.path.dirname(m.__file__))";
    let (ok, out, err) = run(&["--site-packages", sp.to_str().unwrap(), "-c", code]);
    assert!(ok, "{out}\n{err}");
    assert_eq!(out, format!("42 /airlock{}\n", sp.display()), "{err}");
}

#[test]
fn rootfs_in_tmp() {
    if !is_root() {
        eprintln!("skipped: building a test rootfs from the host's files needs root");
        return;
    }
    if !jail_works() {
        return;
    }
    let python = std::fs::canonicalize("/usr/bin/python3").unwrap();
    let Some(version) = python.file_name().and_then(|n| n.to_str()).filter(|n| n.starts_with("python3.")) else {
        eprintln!("skipped: /usr/bin/python3 is not a versioned CPython");
        return;
    };
    let f = Fixture::new("rootfs");
    let root = f.0.join("rfs/root");
    // The interpreter, its libraries and its standard library, hard-linked (or copied).
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
    if !Command::new("cp").arg("-al").arg(&stdlib).arg(root.join("usr/lib")).status().unwrap().success() {
        let _ = std::fs::remove_dir_all(root.join("usr/lib").join(version));
        assert!(Command::new("cp").arg("-a").arg(&stdlib).arg(root.join("usr/lib")).status().unwrap().success());
    }
    std::fs::create_dir_all(root.join("boot")).unwrap();
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/os-release"), "ID=airlock-test-rootfs\n").unwrap();
    let python_inside = format!("/usr/bin/{version}");
    let code = "import os\nprint(1, open('/etc/os-release').read().strip(), sorted(os.listdir('/'))[:2])";
    let (ok, out, err) = run(&["--rootfs", root.to_str().unwrap(), "--python", &python_inside, "-c", code]);
    assert!(ok, "{out}\n{err}");
    assert_eq!(out, "1 ID=airlock-test-rootfs ['boot', 'dev']\n", "{err}");
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
