//! Scratch exploration (temporary).
#![allow(missing_docs)]
use std::time::Instant;
use wasmtime::*;
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

struct D { wasi: WasiP1Ctx }

fn main() -> wasmtime::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let wasm = &args[1];
    let cwasm = format!("{wasm}.cwasm");
    let mut cfg = Config::new();
    cfg.epoch_interruption(true);
    cfg.max_wasm_stack(8 << 20);
    let engine = Engine::new(&cfg)?;
    let t = Instant::now();
    let module = if std::path::Path::new(&cwasm).exists() {
        unsafe { Module::deserialize_file(&engine, &cwasm)? }
    } else {
        let bytes = engine.precompile_module(&std::fs::read(wasm)?)?;
        std::fs::write(&cwasm, &bytes)?;
        unsafe { Module::deserialize_file(&engine, &cwasm)? }
    };
    eprintln!("module ready in {:?}", t.elapsed());
    let mut linker: Linker<D> = Linker::new(&engine);
    wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |d| &mut d.wasi)?;
    linker.func_wrap("host", "call", |mut caller: Caller<'_, D>, ptr: i32, len: i32, optr: i32, olen: i32| -> Result<i32> {
        let mem = caller.get_export("memory").unwrap().into_memory().unwrap();
        let req = mem.data(&caller)[ptr as u32 as usize..(ptr as u32 + len as u32) as usize].to_vec();
        eprintln!("door: {:?}", String::from_utf8_lossy(&req));
        let resp = b"pong".to_vec();
        let alloc = caller.get_export("host_alloc").unwrap().into_func().unwrap().typed::<i32, i32>(&caller)?;
        let p = alloc.call(&mut caller, resp.len() as i32)?;
        mem.write(&mut caller, p as u32 as usize, &resp)?;
        mem.write(&mut caller, optr as u32 as usize, &(p as u32).to_le_bytes())?;
        mem.write(&mut caller, olen as u32 as usize, &(resp.len() as u32).to_le_bytes())?;
        Ok(0)
    })?;
    let pre = linker.instantiate_pre(&module)?;
    for round in 0..2 {
        let t = Instant::now();
        let mut b = WasiCtxBuilder::new();
        b.inherit_stdout().inherit_stderr();
        b.env("HOME", "/workspace");
        b.preopened_dir("/work/tmp-wasm/lib", "/usr/local/lib", FsPerms::ReadOnly)?;
        let mut store = Store::new(&engine, D { wasi: b.build_p1() });
        store.set_epoch_deadline(u64::MAX / 2);
        let inst = pre.instantiate(&mut store)?;
        eprintln!("instantiated in {:?}", t.elapsed());
        if let Ok(f) = inst.get_typed_func::<(), ()>(&mut store, "_initialize") {
            let t = Instant::now();
            f.call(&mut store, ())?;
            eprintln!("_initialize {:?}", t.elapsed());
        }
        let turn = inst.get_typed_func::<(i32, i32), i32>(&mut store, "turn")?;
        let alloc = inst.get_typed_func::<i32, i32>(&mut store, "host_alloc")?;
        let mem = inst.get_memory(&mut store, "memory").unwrap();
        for code in args[2..].iter() {
            let t = Instant::now();
            let p = alloc.call(&mut store, code.len() as i32)?;
            mem.write(&mut store, p as usize, code.as_bytes())?;
            let r = turn.call(&mut store, (p, code.len() as i32));
            eprintln!("[{round}] turn -> {:?} in {:?}; memory {} MiB", r, t.elapsed(), mem.data_size(&store) >> 20);
        }
    }
    Ok(())
}
