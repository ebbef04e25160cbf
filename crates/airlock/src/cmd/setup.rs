//! `airlock setup <target>`: prepare what a backend needs before its first sandbox.

use std::time::Instant;

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

/// Runs `airlock setup`.
pub fn main(a: SetupArgs) -> anyhow::Result<i32> {
    match a.target {
        Target::Microvm(m) => microvm(m),
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
