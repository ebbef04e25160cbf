#!/usr/bin/env bash
# The Python SDK (clients/python): its test suite runs from `cargo test` through
# crates/airlock/tests/python_sdk.rs with the `python3` on PATH, which needs pytest,
# pytest-asyncio and httpx, and the adapters' packages to test them against the real
# thing. Versions are pinned to ones the suite passes with. Measured on the 2-core dev
# machine: 85 s into a fresh environment with no pip cache; seconds when already installed.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore

if ! python3 -m pip --version >/dev/null 2>&1; then
    echo "50-sdk: python3 on PATH ($(command -v python3 || echo none)) has no pip; the SDK tests will be skipped" >&2
    exit 0
fi

start=$(date +%s)
python3 -m pip install -q \
    -e 'clients/python[test]' \
    'httpx==0.28.1' \
    'pytest==9.2.0' \
    'pytest-asyncio==1.5.0' \
    'smolagents==1.26.0' \
    'langchain-core==1.8.1' \
    'e2b-code-interpreter==2.11.5'
echo "50-sdk: installed the SDK and its test dependencies in $(( $(date +%s) - start ))s"
