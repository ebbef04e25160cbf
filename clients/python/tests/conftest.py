"""Fixtures: real `airlock serve` processes, started by the tests.

The binary is ``$AIRLOCK_BIN``, else ``target/debug/airlock`` or
``target/release/airlock`` under the repository root (``$CARGO_TARGET_DIR`` is
looked in too). Each server gets its own data directory, settings file and port.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import httpx
import pytest

REPO = Path(__file__).resolve().parents[3]
SDK = Path(__file__).resolve().parents[1]


def airlock_bin() -> Path:
    """The airlock binary the tests run."""
    env = os.environ.get("AIRLOCK_BIN")
    if env:
        p = Path(env)
        if not p.is_file():
            pytest.exit(f"AIRLOCK_BIN={env} is not a file", returncode=2)
        return p
    roots = [REPO / "target"]
    if os.environ.get("CARGO_TARGET_DIR"):
        roots.insert(0, Path(os.environ["CARGO_TARGET_DIR"]))
    candidates = [r / profile / "airlock" for r in roots for profile in ("debug", "release")]
    found = [c for c in candidates if c.is_file()]
    if not found:
        pytest.exit(
            "no airlock binary: build it (`cargo build -p airlock`) or set AIRLOCK_BIN; looked at "
            + ", ".join(str(c) for c in candidates),
            returncode=2,
        )
    return max(found, key=lambda p: p.stat().st_mtime)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(v)


class Server:
    """One `airlock serve` process."""

    def __init__(self, name: str, settings: Dict[str, object], keys: int = 0) -> None:
        self.bin = airlock_bin()
        self.dir = Path(tempfile.mkdtemp(prefix=f"airlock-sdk-{name}-"))
        self.data_dir = self.dir / "data"
        self.data_dir.mkdir()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = dict(os.environ, AIRLOCK_DATA_DIR=str(self.data_dir), RUST_LOG="warn")
        self.env.pop("AIRLOCK_URL", None)
        self.env.pop("AIRLOCK_API_KEY", None)
        tables = {k: v for k, v in settings.items() if isinstance(v, dict)}
        flat = {k: v for k, v in settings.items() if not isinstance(v, dict)}
        flat.setdefault("default_backend", "process")
        flat["listen"] = f"127.0.0.1:{self.port}"
        flat["data_dir"] = str(self.data_dir)
        lines = [f"{k} = {toml_value(v)}" for k, v in flat.items()]
        for t, vals in tables.items():
            lines.append(f"[{t}]")
            lines.extend(f"{k} = {toml_value(v)}" for k, v in vals.items())
        self.config = self.dir / "airlock.toml"
        self.config.write_text("\n".join(lines) + "\n")
        self.keys: List[str] = [self._create_key(f"key{i}") for i in range(keys)]
        self.log = open(self.dir / "server.log", "wb")
        self.proc = subprocess.Popen(
            [str(self.bin), "serve", "--config", str(self.config)],
            env=self.env, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        self._wait_ready()

    def _create_key(self, name: str) -> str:
        out = subprocess.run(
            [str(self.bin), "keys", "create", name, "--data-dir", str(self.data_dir)],
            env=self.env, capture_output=True, text=True, timeout=60,
        )
        if out.returncode != 0:
            raise RuntimeError(f"`airlock keys create` failed: {out.stderr or out.stdout}")
        m = re.search(r"\bak_[0-9a-f]{64}\b", out.stdout + out.stderr)
        if not m:
            raise RuntimeError(f"`airlock keys create` printed no key: {out.stdout!r} {out.stderr!r}")
        return m.group(0)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"airlock serve exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"airlock serve did not answer /healthz within 60 s:\n{self.output()}")

    def output(self) -> str:
        self.log.flush()
        return (self.dir / "server.log").read_text(errors="replace")[-5000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    """A server without API keys (loopback), process backend, default limits."""
    s = Server("open", {})
    yield s
    s.stop()


@pytest.fixture(scope="session")
def auth_server() -> Iterator[Server]:
    """A server that requires API keys; `auth_server.keys` holds two valid ones."""
    s = Server("auth", {"auth": "required"}, keys=2)
    yield s
    s.stop()


@pytest.fixture()
def tight_server() -> Iterator[Server]:
    """A server with room for one sandbox and no queue: the second gets 429 at once."""
    s = Server("tight", {"max_sandboxes": 1, "max_queue": 0, "max_running": 1})
    yield s
    s.stop()


@pytest.fixture()
def client(server: Server) -> Iterator["object"]:
    import airlock

    with airlock.Client(server.url) as c:
        yield c
    # Nothing may be left behind by a test.


@pytest.fixture()
def aclient(server: Server) -> "object":
    import airlock

    return airlock.AsyncClient(server.url)


@pytest.fixture(autouse=True)
def _no_env_leak(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests pass the server explicitly unless they test the environment variables."""
    monkeypatch.delenv("AIRLOCK_URL", raising=False)
    monkeypatch.delenv("AIRLOCK_API_KEY", raising=False)


def pytest_report_header(config: pytest.Config) -> str:
    try:
        return f"airlock binary: {airlock_bin()}; python: {sys.executable}"
    except BaseException:
        return "airlock binary: not found"
