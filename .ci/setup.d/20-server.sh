#!/usr/bin/env bash
# airlock serve / airlock mcp: the MCP end-to-end tests drive the server with the
# official `mcp` Python client from PyPI. It is installed for the `python3` on PATH
# (the tests run it; sandboxes use /usr/bin/python3 and need nothing from here).
set -euo pipefail
if ! command -v python3 >/dev/null; then
    apt-get install -y -qq --no-install-recommends python3 >/dev/null
fi
# Debian's own python3 refuses pip installs into the system (PEP 668) unless told.
if python3 -m pip --version >/dev/null 2>&1; then
    python3 -m pip install -q mcp 2>/dev/null || python3 -m pip install -q --break-system-packages mcp
else
    apt-get install -y -qq --no-install-recommends python3-pip >/dev/null
    python3 -m pip install -q --break-system-packages mcp
fi
python3 -c 'import mcp, importlib.metadata as m; print("mcp", m.version("mcp"), "for", __import__("sys").executable)'
