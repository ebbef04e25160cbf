//! The interpreter inside the sandbox: how it is started, what it can import, and
//! matplotlib's font cache.
//!
//! In host mode the sandbox runs the host's own interpreter file (read-only), so the
//! driver boots from bytecode (`DriverBoot::for_python`), and the interpreter is
//! started with `-S`: `site` (about 20 ms here, most of it `.pth` files importing
//! `importlib.util` and friends) is skipped, and the `sys.path` that `site` would have
//! built is set directly from a list computed once on the host (cached on disk, checked
//! against the mtimes of its directories). The `exit`/`quit`/`help` builtins `site`
//! would have added are defined too. What is lost: code lines in `.pth` files are not
//! run (on Debian they are a distutils shim and a legacy `mpl_toolkits` namespace
//! hook, neither needed).
//!
//! With `--rootfs` the interpreter is the root file system's, possibly a different
//! version: the driver is compiled from source inside and `site` runs normally.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use airlock_core::Error;
use airlock_guest::launch::{DriverBoot, cache_dir};

/// What a host interpreter needs inside the sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPython {
    /// `sys.path` of `python -I` on the host (existing entries only).
    pub sys_path: Vec<String>,
    /// `sys.prefix` and `sys.base_prefix` (a virtualenv has both).
    pub prefixes: Vec<String>,
    /// `sys.prefix` and `sys.exec_prefix` as `site` leaves them (a virtualenv's).
    pub prefix: String,
    /// See [`HostPython::prefix`].
    pub exec_prefix: String,
}

const PROBE: &str = "import sys,json\nprint(json.dumps({'path':[p for p in sys.path if p],'prefixes':sorted({sys.prefix,sys.base_prefix,sys.exec_prefix}),'prefix':sys.prefix,'exec_prefix':sys.exec_prefix}))";

fn mtime_ns(p: &Path) -> i128 {
    std::fs::metadata(p)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as i128)
}

fn cache_key(python: &Path) -> Option<String> {
    use std::hash::{Hash, Hasher};
    use std::os::unix::fs::MetadataExt;
    let real = std::fs::canonicalize(python).ok()?;
    let m = std::fs::metadata(&real).ok()?;
    let mut h = std::hash::DefaultHasher::new();
    (python, &real, m.len(), m.mtime(), m.mtime_nsec(), m.ino()).hash(&mut h);
    Some(format!("{:016x}", h.finish()))
}

impl HostPython {
    /// Asks `python` (once; cached on disk while its path directories are unchanged).
    pub fn query(python: &Path) -> Result<HostPython, Error> {
        let key = cache_key(python);
        let file = cache_dir().zip(key).map(|(d, k)| d.join("jail").join(format!("python-v2-{k}.json")));
        if let Some(f) = &file
            && let Ok(text) = std::fs::read_to_string(f)
            && let Some(info) = Self::parse_cached(&text)
        {
            return Ok(info);
        }
        let out = std::process::Command::new(python)
            .args(["-I", "-c", PROBE])
            .env_clear()
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| Error::Unavailable {
                backend: airlock_core::BackendKind::Jail,
                reason: format!("cannot run {}: {e}", python.display()),
                fix: Some("install Python 3 or set AIRLOCK_PYTHON to a working interpreter".into()),
            })?;
        if !out.status.success() {
            return Err(Error::host(format!(
                "{} failed to report its sys.path: {}",
                python.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| Error::host(format!("{} printed an unreadable sys.path: {e}", python.display())))?;
        let strings = |k: &str| -> Vec<String> {
            v[k].as_array().into_iter().flatten().filter_map(|s| s.as_str().map(str::to_string)).collect()
        };
        let info = HostPython {
            sys_path: strings("path").into_iter().filter(|p| Path::new(p).exists()).collect(),
            prefixes: strings("prefixes"),
            prefix: v["prefix"].as_str().unwrap_or_default().to_string(),
            exec_prefix: v["exec_prefix"].as_str().unwrap_or_default().to_string(),
        };
        if let Some(f) = &file {
            let stamp: Vec<serde_json::Value> =
                info.sys_path.iter().map(|p| serde_json::json!([p, mtime_ns(Path::new(p)).to_string()])).collect();
            let doc = serde_json::json!({"path": info.sys_path, "prefixes": info.prefixes, "prefix": info.prefix,
                "exec_prefix": info.exec_prefix, "stamps": stamp});
            if let Some(dir) = f.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            let tmp = f.with_extension(format!("tmp{}", std::process::id()));
            if std::fs::write(&tmp, doc.to_string()).is_ok() {
                let _ = std::fs::rename(&tmp, f);
            }
        }
        Ok(info)
    }

    fn parse_cached(text: &str) -> Option<HostPython> {
        let v: serde_json::Value = serde_json::from_str(text).ok()?;
        for s in v["stamps"].as_array()? {
            let p = s[0].as_str()?;
            if mtime_ns(Path::new(p)).to_string() != s[1].as_str()? {
                return None; // a directory changed (a package added a .pth file?): ask again
            }
        }
        let strings = |k: &str| -> Option<Vec<String>> {
            v[k].as_array()?.iter().map(|s| s.as_str().map(str::to_string)).collect()
        };
        Some(HostPython {
            sys_path: strings("path")?,
            prefixes: strings("prefixes")?,
            prefix: v["prefix"].as_str()?.to_string(),
            exec_prefix: v["exec_prefix"].as_str()?.to_string(),
        })
    }
}

/// What `site` would have set up, for interpreters started with `-S`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteState {
    /// `sys.path`.
    pub sys_path: Vec<String>,
    /// `sys.prefix` (a virtualenv's, where `site` would have switched to it).
    pub prefix: String,
    /// `sys.exec_prefix`.
    pub exec_prefix: String,
}

/// The code run before the driver's bootstrap when `site` is skipped: the import path
/// and prefixes `site` would have set, and the builtins it would have added.
pub fn site_prelude(site: &SiteState) -> String {
    let list = serde_json::to_string(&site.sys_path).expect("strings serialise");
    let prefix = serde_json::to_string(&site.prefix).expect("strings serialise");
    let exec_prefix = serde_json::to_string(&site.exec_prefix).expect("strings serialise");
    format!(
        "import sys;sys.path[:]={list};sys.prefix={prefix};sys.exec_prefix={exec_prefix}\n\
         import builtins,_sitebuiltins as _s\n\
         builtins.exit=_s.Quitter('exit','Ctrl-D (i.e. EOF)');builtins.quit=_s.Quitter('quit','Ctrl-D (i.e. EOF)');builtins.help=_s._Helper();del _s\n"
    )
}

/// Interpreter arguments (after argv[0]): the driver boot's, plus `-S` and the
/// prelude when a `sys.path` is given.
pub fn interpreter_args(boot: &DriverBoot, site: Option<&SiteState>) -> Vec<String> {
    with_site(boot.args(), site)
}

/// `args` (which run code with `-c`) with `-S` and the prelude when a `sys.path` is given.
pub fn with_site(mut args: Vec<String>, site: Option<&SiteState>) -> Vec<String> {
    let Some(site) = site else { return args };
    if let Some(i) = args.iter().position(|a| a == "-c")
        && i + 1 < args.len()
    {
        args[i + 1] = format!("{}{}", site_prelude(site), args[i + 1]);
        args.insert(i, "-S".into());
    }
    args
}

/// `args` (which run code with `-c`) with code that appends `dirs` to `sys.path` before
/// it: for an interpreter whose `site` runs normally (a root file system's).
pub fn with_path(mut args: Vec<String>, dirs: &[String]) -> Vec<String> {
    if dirs.is_empty() {
        return args;
    }
    let list = serde_json::to_string(dirs).expect("strings serialise");
    if let Some(i) = args.iter().position(|a| a == "-c")
        && i + 1 < args.len()
    {
        args[i + 1] = format!("import sys;sys.path.extend({list})\n{}", args[i + 1]);
    }
    args
}

/// A matplotlib font cache built once on the host and copied into every sandbox's
/// `/tmp/matplotlib`, so `import matplotlib.pyplot` does not rebuild it (seconds) in
/// each sandbox. Built in the background by the host's own interpreter, with no
/// untrusted input; until it exists, sandboxes build their own.
#[derive(Debug)]
pub struct MplCache {
    python: PathBuf,
    dir: Option<PathBuf>,
    loaded: Mutex<Option<(String, Arc<[u8]>)>>,
    building: AtomicBool,
}

impl MplCache {
    /// The cache for `python`, kept in `~/.cache/airlock/jail/matplotlib`.
    pub fn new(python: &Path) -> MplCache {
        MplCache {
            python: python.to_path_buf(),
            dir: cache_dir().map(|d| d.join("jail").join("matplotlib")),
            loaded: Mutex::new(None),
            building: AtomicBool::new(false),
        }
    }

    fn find(dir: &Path) -> Option<(String, Arc<[u8]>)> {
        let name = std::fs::read_dir(dir)
            .ok()?
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.starts_with("fontlist-v") && n.ends_with(".json"))
            .max()?;
        let bytes = std::fs::read(dir.join(&name)).ok()?;
        (!bytes.is_empty()).then(|| (name, Arc::from(bytes)))
    }

    /// The cache file, if built; starts building it otherwise.
    pub fn get(&self) -> Option<(String, Arc<[u8]>)> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = loaded.as_ref() {
            return Some(c.clone());
        }
        let dir = self.dir.as_ref()?;
        if let Some(found) = Self::find(dir) {
            *loaded = Some(found.clone());
            return Some(found);
        }
        if !self.building.swap(true, Ordering::SeqCst) {
            let (python, dir) = (self.python.clone(), dir.clone());
            let _ = std::thread::Builder::new().name("airlock-mpl-cache".into()).spawn(move || {
                let _ = std::fs::create_dir_all(&dir);
                let r = std::process::Command::new(&python)
                    .args(["-I", "-c", "import matplotlib.font_manager"])
                    .env_clear()
                    .env("MPLCONFIGDIR", &dir)
                    .env("HOME", &dir)
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .status();
                tracing::debug!("building the matplotlib font cache in {}: {r:?}", dir.display());
            });
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(path: &[&str]) -> SiteState {
        SiteState {
            sys_path: path.iter().map(|s| s.to_string()).collect(),
            prefix: "/usr".into(),
            exec_prefix: "/usr".into(),
        }
    }

    #[test]
    fn prelude_sets_the_path_and_exit() {
        let p = site_prelude(&site(&["/usr/lib/python3.11", "/x/it's"]));
        assert!(
            p.starts_with("import sys;sys.path[:]=[\"/usr/lib/python3.11\",\"/x/it's\"];sys.prefix=\"/usr\";sys.exec_prefix=\"/usr\"\n"),
            "{p}"
        );
        let boot = DriverBoot::Source;
        let args = interpreter_args(&boot, Some(&site(&["/a"])));
        let c = args.iter().position(|a| a == "-c").unwrap();
        assert_eq!(args[c - 1], "-S");
        assert!(args[c + 1].starts_with("import sys;sys.path[:]=[\"/a\"];"));
        assert!(args[c + 1].contains("exec(compile("), "the original bootstrap follows");
        assert_eq!(interpreter_args(&boot, None), boot.args());
    }

    /// A root file system's interpreter runs `site` itself; site-packages are appended
    /// after it, before the bootstrap.
    #[test]
    fn extra_path_is_appended_before_the_bootstrap() {
        let boot = DriverBoot::Source;
        assert_eq!(with_path(boot.args(), &[]), boot.args());
        let args = with_path(boot.args(), &["/airlock/tmp/a b/it's".into()]);
        let c = args.iter().position(|a| a == "-c").unwrap();
        assert!(!args.contains(&"-S".to_string()), "site still runs");
        assert!(
            args[c + 1].starts_with("import sys;sys.path.extend([\"/airlock/tmp/a b/it's\"])\n"),
            "{}",
            args[c + 1]
        );
        assert!(args[c + 1].ends_with(&boot.args()[c + 1]), "the original bootstrap follows");
    }

    #[test]
    fn prelude_runs_under_python() {
        let python = airlock_guest::launch::default_python();
        if !python.exists() {
            eprintln!("skipped: no interpreter at {}", python.display());
            return;
        }
        let info = HostPython::query(&python).unwrap();
        assert!(!info.sys_path.is_empty());
        let st = SiteState {
            sys_path: info.sys_path.clone(),
            prefix: info.prefix.clone(),
            exec_prefix: info.exec_prefix.clone(),
        };
        let code = format!("{}print(sys.path == {:?} and callable(exit))", site_prelude(&st), info.sys_path);
        let out = std::process::Command::new(&python).args(["-I", "-S", "-c", &code]).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "True", "{}", String::from_utf8_lossy(&out.stderr));
        // Cached the second time, and identical.
        assert_eq!(HostPython::query(&python).unwrap(), info);
    }
}
