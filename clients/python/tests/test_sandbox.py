"""The synchronous client against a real `airlock serve`: one-shot runs, sessions,
streaming, rich results, files, and the sandbox lifecycle."""

from __future__ import annotations

import base64
import threading
import time

import pytest

import airlock
from airlock import Limits, Sandbox


def test_run_one_shot(server):
    ex = airlock.run("import sys\nprint('hi')\n6 * 7", url=server.url)
    assert ex.status == "ok" and ex.ok
    assert ex.text == "42"
    assert ex.stdout == "hi\n"
    assert ex.logs.stdout == ["hi\n"]
    assert ex.error is None
    assert ex.backend == "process"
    assert ex.id.startswith("exe_")
    # A fresh sandbox: 0 ms when the warm pool had one ready (docs/faststart.md).
    assert ex.usage.startup_ms >= 0
    assert ex.main_result is not None and ex.main_result.json == 42


def test_run_with_files_outputs_env_and_globals(server):
    code = (
        "import os\n"
        "rows = open('data/in.csv').read().splitlines()\n"
        "open('out.txt', 'w').write(f'{len(rows)} rows, greeting={os.environ[\"GREETING\"]}, n={n}')\n"
        "open('blob.bin', 'wb').write(open('raw.bin', 'rb').read()[::-1])\n"
    )
    ex = airlock.run(
        code,
        url=server.url,
        files={"data/in.csv": "a,b\n1,2\n3,4\n", "raw.bin": b"\x00\x01\xff"},
        outputs=["out.txt", "blob.bin", "missing.txt"],
        env={"GREETING": "hello"},
        global_variables={"n": 7},
    )
    assert ex.ok, ex
    assert ex.file("out.txt") == b"3 rows, greeting=hello, n=7"
    assert ex.file("blob.bin") == b"\xff\x01\x00"
    with pytest.raises(KeyError, match="no content"):
        ex.file("missing.txt")
    with pytest.raises(KeyError, match="outputs="):
        ex.file("never-asked.txt")


def test_run_bash(server):
    ex = airlock.run("echo one; echo two >&2; exit 3", language="bash", url=server.url)
    assert ex.status == "error"
    assert ex.exit_code == 3
    assert ex.stdout == "one\n" and ex.stderr == "two\n"


def test_session_keeps_state(client):
    with client.create_sandbox() as sbx:
        assert sbx.id.startswith("sbx_") and sbx.sandbox_id == sbx.id
        a = sbx.run_code("import math\nr = 2")
        b = sbx.run_code("round(math.pi * r ** 2, 3)")
        assert b.text == "12.566"
        assert (a.execution_count, b.execution_count) == (1, 2)
        assert b.sandbox_id == sbx.id
        assert sbx.refresh().execution_count == 2


def test_streaming_callbacks_arrive_in_order_and_live(client):
    code = (
        "import sys, time\n"
        "print('first', flush=True)\n"
        "time.sleep(1.0)\n"
        "print('warn', file=sys.stderr, flush=True)\n"
        "display(123)\n"
        "print('last')\n"
        "'done'\n"
    )
    events = []
    t0 = time.monotonic()
    with client.create_sandbox() as sbx:
        ex = sbx.run_code(
            code,
            on_stdout=lambda t: events.append(("stdout", t, time.monotonic() - t0)),
            on_stderr=lambda t: events.append(("stderr", t, time.monotonic() - t0)),
            on_result=lambda r: events.append(("result", r.text, time.monotonic() - t0)),
        )
        end = time.monotonic() - t0
    kinds = [(k, v) for k, v, _ in events]
    assert kinds == [
        ("stdout", "first\n"),
        ("stderr", "warn\n"),
        ("result", "123"),
        ("stdout", "last\n"),
        ("result", "'done'"),
    ]
    # The first line was delivered while the cell was still sleeping.
    assert events[0][2] < end - 0.7, (events, end)
    assert ex.text == "'done'"
    assert [r.is_main_result for r in ex.results] == [False, True]
    assert ex.logs.stdout == ["first\n", "last\n"]


def test_errors_are_data_not_exceptions(client):
    seen = []
    with client.create_sandbox() as sbx:
        ex = sbx.run_code("def f():\n    return 1 / 0\nf()", on_error=seen.append)
        assert ex.status == "error" and not ex.ok
        assert ex.error is not None and ex.error.name == "ZeroDivisionError"
        assert ex.error.value == "division by zero"
        assert "return 1 / 0" in ex.error.traceback
        assert "driver" not in ex.error.traceback
        assert seen == [ex.error]
        # The sandbox is still usable.
        assert sbx.run_code("2 + 2").text == "4"


def test_cell_timeout_is_a_status(client):
    with client.create_sandbox() as sbx:
        sbx.run_code("kept = 'yes'")
        t = time.monotonic()
        ex = sbx.run_code("while True:\n    pass", timeout=1)
        assert time.monotonic() - t < 15
        assert ex.status == "timeout"
        assert ex.reason
        # The interpreter was interrupted, not lost: state survives.
        assert sbx.run_code("kept").text == "'yes'"


def test_rich_results_html_png_and_jupyter_reprs(client):
    with client.create_sandbox() as sbx:
        html = sbx.run_code(
            "class T:\n"
            "    def _repr_html_(self):\n"
            "        return '<b>bold</b>'\n"
            "T()"
        )
        r = html.main_result
        assert r is not None and r.html == "<b>bold</b>"
        assert r._repr_html_() == "<b>bold</b>"
        assert "html" in r.formats() and "text" in r.formats()

        png1x1 = base64.b64encode(
            bytes.fromhex(
                "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                "1f15c4890000000d49444154789c6300010000000500010d0a2db40000000049454e44ae426082"
            )
        ).decode()
        img = sbx.run_code(
            "import base64\n"
            "class Img:\n"
            "    def _repr_png_(self):\n"
            f"        return base64.b64decode('{png1x1}')\n"
            "Img()"
        )
        r = img.main_result
        assert r is not None
        assert r.png is not None and r.png.startswith(b"\x89PNG\r\n\x1a\n")
        assert r._repr_png_() == r.png
        assert img._repr_mimebundle_()["image/png"] == png1x1


def test_matplotlib_figure_is_a_png_result(client):
    with client.create_sandbox() as sbx:
        probe = sbx.run_code("import matplotlib")
        if probe.error is not None:
            pytest.skip(f"skipped: matplotlib is not installed in the sandbox's interpreter ({probe.error.value})")
        ex = sbx.run_code(
            "import matplotlib.pyplot as plt\n"
            "plt.plot([1, 2, 3], [1, 4, 9])\n"
            "plt.title('squares')\n"
        )
        assert ex.ok, ex
        pngs = [r.png for r in ex.results if r.png]
        assert len(pngs) == 1 and pngs[0].startswith(b"\x89PNG")


def test_files_round_trip(client):
    with client.create_sandbox() as sbx:
        e = sbx.files.write("data/hello.txt", "héllo\n")
        assert (e.path, e.size, e.is_dir) == ("data/hello.txt", len("héllo\n".encode()), False)
        sbx.files.write("bin/blob.bin", bytes(range(256)))
        assert sbx.files.read("data/hello.txt") == "héllo\n"
        assert sbx.files.read("/workspace/data/hello.txt") == "héllo\n"
        assert sbx.files.read("bin/blob.bin", format="bytes") == bytes(range(256))
        # Code sees what was written, and files it writes can be read back.
        ex = sbx.run_code("open('data/hello.txt').read().strip() + '!'")
        assert ex.text == "'héllo!'"
        sbx.run_code("open('made.txt', 'w').write('by code')")
        assert sbx.files.read("made.txt") == "by code"
        listing = {f.path: f for f in sbx.files.list()}
        assert {"data", "data/hello.txt", "bin/blob.bin", "made.txt"} <= set(listing)
        assert listing["data"].is_dir and listing["bin/blob.bin"].size == 256
        assert [f.path for f in sbx.files.list("data")] == ["data/hello.txt"]
        assert sbx.files.exists("made.txt") and not sbx.files.exists("nope.txt")
        sbx.files.remove("made.txt")
        assert not sbx.files.exists("made.txt")
        with pytest.raises(airlock.FileNotFound):
            sbx.files.read("made.txt")
        with pytest.raises(airlock.InvalidRequest, match=r"\.\."):
            sbx.files.write("../escape.txt", "x")
        with pytest.raises(airlock.InvalidRequest, match="absolute"):
            sbx.files.read("/etc/passwd")


def test_connect_list_and_kill(server, client):
    sbx = Sandbox.create(url=server.url, metadata={"owner": "tests"}, limits=Limits(memory_bytes=256 << 20))
    try:
        assert sbx.info.limits.memory_bytes == 256 << 20
        assert sbx.info.metadata == {"owner": "tests"}
        sbx.run_code("secret = 41")
        other = Sandbox.connect(sbx.id, url=server.url)
        assert other.run_code("secret + 1").text == "42"
        other.close()
        assert sbx.id in [s.id for s in Sandbox.list(url=server.url)]
        assert sbx.is_running()
    finally:
        assert sbx.kill() is True
    assert sbx.id not in [s.id for s in client.list_sandboxes()]
    assert client.delete_sandbox(sbx.id) is False
    with pytest.raises(airlock.SandboxNotFound):
        Sandbox.connect(sbx.id, url=server.url)
    with pytest.raises(airlock.SandboxNotFound):
        client.connect(sbx.id)
    gone = Sandbox(sbx.info, client)
    assert not gone.is_running()
    with pytest.raises(airlock.SandboxNotFound):
        gone.run_code("1")
    with pytest.raises(airlock.SandboxNotFound):
        gone.files.read("x.txt")


def test_context_manager_destroys_the_sandbox(server, client):
    with Sandbox.create(url=server.url) as sbx:
        sid = sbx.id
        assert sid in [s.id for s in client.list_sandboxes()]
    assert sid not in [s.id for s in client.list_sandboxes()]


def test_busy_sandbox_is_409(client):
    with client.create_sandbox() as sbx:
        started = threading.Event()
        box = {}

        def long_cell():
            box["ex"] = sbx.run_code("import time\nprint('go', flush=True)\ntime.sleep(2)\n'slept'",
                                     on_stdout=lambda _: started.set())

        t = threading.Thread(target=long_cell)
        t.start()
        assert started.wait(30)
        with pytest.raises(airlock.SandboxBusy) as e:
            sbx.run_code("1")
        assert e.value.status == 409 and e.value.code == "busy"
        with pytest.raises(airlock.SandboxBusy):
            sbx.files.write("x.txt", "x")
        t.join()
        assert box["ex"].text == "'slept'"


def test_execution_record_is_in_the_audit_log(client):
    ex = client.run("print('audited')")
    rec = client.get_execution(ex.id)
    assert rec["id"] == ex.id
    assert rec["status"] == "ok"


def test_health(client):
    h = client.health()
    assert h["status"] == "ok"
    assert "process" in h["backends"]


def test_cell_files_and_outputs(client):
    with client.create_sandbox() as sbx:
        ex = sbx.run_code(
            "data = open('in.txt').read()\nopen('out.txt', 'w').write(data.upper())\nlen(data)",
            files={"in.txt": "shout"},
            outputs=["out.txt"],
        )
        assert ex.text == "5"
        assert ex.file("out.txt") == b"SHOUT"
        assert sbx.files.read("in.txt") == "shout"  # inputs stay in the workspace


def test_results_display_in_jupyter(client):
    """IPython's own display formatter renders a Result as Jupyter would."""
    formatters = pytest.importorskip("IPython.core.formatters", reason="skipped: IPython is not installed")
    with client.create_sandbox() as sbx:
        ex = sbx.run_code(
            "class Both:\n"
            "    def _repr_html_(self):\n"
            "        return '<i>both</i>'\n"
            "    def _repr_png_(self):\n"
            "        return b'\\x89PNG\\r\\n\\x1a\\nfake'\n"
            "Both()"
        )
    data, _ = formatters.DisplayFormatter().format(ex.main_result)
    assert data["text/html"] == "<i>both</i>"
    assert data["image/png"] == b"\x89PNG\r\n\x1a\nfake"  # the kernel base64-encodes it
    data, _ = formatters.DisplayFormatter().format(ex)  # an Execution shows its main result
    assert data["text/html"] == "<i>both</i>"


def test_an_idempotency_key_runs_a_request_once(client):
    import uuid

    key = str(uuid.uuid4())
    code = "import random\nprint(random.random())"
    first = client.run(code, idempotency_key=key)
    again = client.run(code, idempotency_key=key)
    assert again.id == first.id and again.stdout == first.stdout, "the run ran twice"
    assert first.audit == "recorded"
    with pytest.raises(airlock.IdempotencyConflict) as e:
        client.run("print(2)", idempotency_key=key)
    assert e.value.code == "idempotency_mismatch" and e.value.status == 422
    other = client.run(code, idempotency_key=str(uuid.uuid4()))
    assert other.id != first.id

    skey = str(uuid.uuid4())
    a = client.create_sandbox(idempotency_key=skey)
    try:
        b = client.create_sandbox(idempotency_key=skey)
        assert b.id == a.id, "a second sandbox was created"
    finally:
        a.kill()
