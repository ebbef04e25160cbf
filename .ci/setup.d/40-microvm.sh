#!/usr/bin/env bash
# The microvm backend: QEMU (microvm machine), the tools that build the guest image
# from Debian packages, then the image itself and the default snapshot, so the
# microvm conformance and escape tests run (under TCG on hosts without usable KVM).
set -euo pipefail
cd "$(dirname "$0")/../.."
export DEBIAN_FRONTEND=noninteractive
t0=$(date +%s)
apt-get install -y -qq --no-install-recommends qemu-system-x86 debootstrap erofs-utils >/dev/null
echo "microvm: packages installed in $(( $(date +%s) - t0 )) s"
cargo run -q --locked -p airlock -- setup microvm
echo "microvm: setup finished in $(( $(date +%s) - t0 )) s"
