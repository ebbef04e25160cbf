//! Builds the guest agent (`airlock-vm-agent`) as a static executable for the VM's
//! initramfs and hands its path to the crate, which embeds it. The agent is built
//! by a nested cargo in a target directory of its own with
//! `-C target-feature=+crt-static` for x86_64-unknown-linux-gnu (glibc, statically
//! linked: no musl target needed).

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let agent_dir = manifest_dir.join("../airlock-vm-agent");
    let guest_dir = manifest_dir.join("../airlock-guest");
    let core_dir = manifest_dir.join("../airlock-core");
    for d in [&agent_dir, &guest_dir, &core_dir] {
        println!("cargo:rerun-if-changed={}", d.join("src").display());
        println!("cargo:rerun-if-changed={}", d.join("Cargo.toml").display());
    }
    println!("cargo:rerun-if-changed={}", guest_dir.join("driver").display());
    println!("cargo:rerun-if-env-changed=AIRLOCK_VM_AGENT");

    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets it"));
    let dest = out.join("airlock-vm-agent");
    // A prebuilt agent can be supplied (e.g. by a packager).
    if let Some(pre) = std::env::var_os("AIRLOCK_VM_AGENT").filter(|p| !p.is_empty()) {
        std::fs::copy(&pre, &dest).expect("copying $AIRLOCK_VM_AGENT");
        return;
    }
    let target = "x86_64-unknown-linux-gnu";
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target_dir = out.join("agent-target");
    let workspace_manifest = manifest_dir.join("../../Cargo.toml");
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "--release",
        "--offline",
        "-p",
        "airlock-vm-agent",
        "--bin",
        "airlock-vm-agent",
        "--target",
        target,
    ])
    .arg("--manifest-path")
    .arg(&workspace_manifest)
    .arg("--target-dir")
    .arg(&target_dir);
    // The outer build's settings must not leak into the nested one.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_MAKEFLAGS",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_BUILD_RUSTFLAGS",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("CARGO_ENCODED_RUSTFLAGS", "-Ctarget-feature=+crt-static")
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env("CARGO_PROFILE_RELEASE_STRIP", "true")
        .env("CARGO_PROFILE_RELEASE_OPT_LEVEL", "s")
        .env("CARGO_PROFILE_RELEASE_PANIC", "abort");
    let status = cmd.status().expect("running cargo to build the guest agent");
    if !status.success() {
        panic!("building the static guest agent failed ({status}); see the output above");
    }
    let built = target_dir.join(target).join("release").join("airlock-vm-agent");
    std::fs::copy(&built, &dest).expect("copying the built agent");
}
