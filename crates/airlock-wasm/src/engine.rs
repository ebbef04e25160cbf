//! The one wasmtime [`Engine`] of the process, the epoch ticker that drives every
//! wall-clock and CPU limit, and the compiled-module cache.
//!
//! Compiling the 100 MB CPython module takes minutes on two cores, so it is compiled
//! once by `airlock setup wasm` into a `.cwasm` file that later processes map into
//! memory with [`Module::deserialize_file`] (milliseconds). A `.cwasm` is only valid
//! for an engine with the same settings and wasmtime version; its file name carries
//! [`engine_key`], so an airlock built with another wasmtime simply does not find it
//! and `airlock doctor` says to run the setup again.

use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use airlock_core::Error;
use wasmtime::{Config, Engine, Module, OptLevel};

/// How often the ticker advances the epoch. Wall-clock and CPU limits are checked
/// at this period, so a limit is enforced within about one tick.
pub const TICK: Duration = Duration::from_millis(5);

/// The most native stack WebAssembly may use (CPython recurses in C for some
/// operations). Guest threads get [`GUEST_THREAD_STACK_BYTES`], which is larger.
pub const WASM_STACK_BYTES: usize = 8 << 20;

/// The stack of the threads that run guest code: the wasm stack plus room for the
/// host functions it calls.
pub const GUEST_THREAD_STACK_BYTES: usize = WASM_STACK_BYTES + (8 << 20);

/// Whether compiled code counts fuel (one unit per WebAssembly instruction, roughly).
/// Fuel is always on: it gives `usage.instructions` for every run and an instruction
/// cap that does not depend on the host's load; `docs/wasm.md` gives its measured cost.
pub const FUEL: bool = true;

/// The settings every compiled module of this backend is built with. The runtime
/// engine and `airlock setup wasm` must agree on them, or the `.cwasm` is refused.
fn config() -> Config {
    let mut cfg = Config::new();
    cfg.epoch_interruption(true)
        .consume_fuel(FUEL)
        .max_wasm_stack(WASM_STACK_BYTES)
        .async_stack_size(WASM_STACK_BYTES + (1 << 20))
        .wasm_exceptions(true)
        .cranelift_opt_level(OptLevel::Speed)
        .parallel_compilation(true);
    cfg
}

static ENGINE: OnceLock<Result<Engine, String>> = OnceLock::new();

/// The process's engine, made on first use.
pub fn engine() -> Result<&'static Engine, Error> {
    ENGINE
        .get_or_init(|| Engine::new(&config()).map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| Error::host(format!("cannot create the wasmtime engine: {e}")))
}

/// A short hex key naming the engine's compiled-code compatibility (wasmtime version,
/// target and settings): part of every `.cwasm` file name.
pub fn engine_key(engine: &Engine) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    format!("{:016x}", h.finish())
}

/// Compiles `wasm` with the runtime engine's settings and writes the result to `out`
/// (through a temporary file, so a half-written `.cwasm` never has the final name).
pub fn precompile(wasm: &[u8], out: &Path) -> Result<(), Error> {
    let engine = engine()?;
    let bytes =
        engine.precompile_module(wasm).map_err(|e| Error::host(format!("compiling the guest module: {e:#}")))?;
    crate::artifacts::write_atomic(out, &bytes)
}

/// Loads a `.cwasm` written by [`precompile`] (memory-mapped, copy-on-write).
pub fn load(cwasm: &Path) -> Result<Module, Error> {
    let engine = engine()?;
    // SAFETY: `deserialize_file` runs native code from the file without checking it;
    // the file is airlock's own output of `precompile`, written atomically into
    // airlock's data directory, which no guest can reach (only the read-only stdlib
    // and each sandbox's workspace are preopened).
    unsafe { Module::deserialize_file(engine, cwasm) }.map_err(|e| {
        Error::host(format!(
            "cannot load the compiled guest {}: {e:#}; run `airlock setup wasm` again",
            cwasm.display()
        ))
    })
}

/// Advances the engine's epoch every [`TICK`] while at least one guest runs; parks
/// otherwise.
struct Ticker {
    active: Mutex<usize>,
    wake: Condvar,
}

static TICKER: OnceLock<Arc<Ticker>> = OnceLock::new();

fn ticker() -> &'static Arc<Ticker> {
    TICKER.get_or_init(|| {
        let t = Arc::new(Ticker { active: Mutex::new(0), wake: Condvar::new() });
        let tt = t.clone();
        let spawned = std::thread::Builder::new().name("airlock-wasm-epoch".into()).spawn(move || {
            loop {
                {
                    let mut n = tt.active.lock().unwrap_or_else(|p| p.into_inner());
                    while *n == 0 {
                        n = tt.wake.wait(n).unwrap_or_else(|p| p.into_inner());
                    }
                }
                std::thread::sleep(TICK);
                if let Ok(engine) = engine() {
                    engine.increment_epoch();
                }
            }
        });
        if let Err(e) = spawned {
            tracing::error!("cannot start the wasm epoch ticker: {e}; wall-clock limits will not be enforced");
        }
        t
    })
}

/// Keeps the ticker running while it lives (one per running guest call).
pub struct Ticking {
    ticker: &'static Arc<Ticker>,
}

impl Ticking {
    /// Starts (or keeps) the ticker running.
    pub fn start() -> Ticking {
        let ticker = self::ticker();
        let mut n = ticker.active.lock().unwrap_or_else(|p| p.into_inner());
        *n += 1;
        ticker.wake.notify_all();
        Ticking { ticker }
    }
}

impl Drop for Ticking {
    fn drop(&mut self) {
        let mut n = self.ticker.active.lock().unwrap_or_else(|p| p.into_inner());
        *n = n.saturating_sub(1);
    }
}
