"""The e2b_code_interpreter shim: code written for E2B runs by changing the import."""

from __future__ import annotations

import base64
import dataclasses
import inspect
import sys
import warnings

import pytest

import airlock
import airlock.e2b as shim


def e2b_style_program(Sandbox):
    """A program as E2B's docs write them; only the `Sandbox` class is swapped."""
    out, results = [], []
    with Sandbox.create() as sbx:
        sbx.files.write("/home/user/data.csv", "x,y\n1,2\n3,4\n")
        execution = sbx.run_code(
            "import csv\n"
            "rows = list(csv.DictReader(open('data.csv')))\n"
            "print(f'{len(rows)} rows')\n"
            "sum(int(r['y']) for r in rows)",
            on_stdout=lambda msg: out.append(msg),
            on_result=lambda r: results.append(r),
        )
        failed = sbx.run_code("1/0")
        files = sbx.files.list("/home/user")
        sbx.run_code("open('report.txt', 'w').write('done')")
        report = sbx.files.read("/home/user/report.txt")
    return execution, out, results, failed, files, report


def test_e2b_program_runs_unchanged(server, monkeypatch):
    monkeypatch.setenv("AIRLOCK_URL", server.url)
    execution, out, results, failed, files, report = e2b_style_program(shim.Sandbox)
    assert execution.text == "6"
    assert execution.logs.stdout == ["2 rows\n"]
    assert execution.logs.stderr == []
    assert execution.error is None
    assert execution.execution_count == 1
    assert [str(m) for m in out] == ["2 rows\n"]
    assert out[0].line == "2 rows\n" and out[0].error is False and out[0].timestamp > 0
    assert len(results) == 1 and results[0].is_main_result and results[0].text == "6"
    assert execution.results[0].text == "6"
    assert failed.error is not None
    assert (failed.error.name, failed.error.value) == ("ZeroDivisionError", "division by zero")
    assert "1/0" in failed.error.traceback
    assert ("data.csv", "/home/user/data.csv", shim.FileType.FILE) in [(f.name, f.path, f.type) for f in files]
    assert report == "done"
    assert '"results"' in execution.to_json()


def test_constructor_png_bytes_and_timeout(server):
    with pytest.warns(UserWarning, match="template"):
        sbx = shim.Sandbox(template="code-interpreter-v1", url=server.url)
    with sbx:
        r = sbx.run_code(
            "import base64\n"
            "class Img:\n"
            "    def _repr_png_(self):\n"
            "        return b'\\x89PNG\\r\\n\\x1a\\nrest'\n"
            "    def _repr_html_(self):\n"
            "        return '<img>'\n"
            "Img()"
        ).results[0]
        # As in E2B, png is base64 text.
        assert isinstance(r.png, str) and base64.b64decode(r.png) == b"\x89PNG\r\n\x1a\nrest"
        assert r.html == "<img>" and r._repr_html_() == "<img>"
        assert set(r.formats()) >= {"text", "html", "png"}
        with pytest.raises(shim.TimeoutException):
            sbx.run_code("while True: pass", timeout=1)
        with pytest.raises(shim.InvalidArgumentException, match="language"):
            sbx.run_code("console.log(1)", language="javascript")
        assert sbx.commands.run("echo hi").stdout == "hi\n"
        with pytest.raises(shim.CommandExitException) as e:
            sbx.commands.run("echo oops >&2; exit 4")
        assert e.value.exit_code == 4 and "oops" in e.value.stderr
        with pytest.raises(shim.NotFoundException):
            sbx.files.read("/home/user/missing.txt")
        sid = sbx.sandbox_id
        assert sbx.is_running()
        same = shim.Sandbox.connect(sid, url=server.url)
        assert same.run_code("1+1").text == "2"
    assert not same.is_running()
    with pytest.raises(shim.NotFoundException):
        shim.Sandbox.connect(sid, url=server.url)
    # Errors are both E2B-named and airlock's.
    assert issubclass(shim.NotFoundException, airlock.NotFound)


async def test_async_shim(server):
    sbx = await shim.AsyncSandbox.create(url=server.url)
    async with sbx:
        seen = []

        async def on_stdout(m):
            seen.append(m.line)

        ex = await sbx.run_code("print('a')\n2 * 21", on_stdout=on_stdout)
        assert ex.text == "42" and seen == ["a\n"]
        await sbx.files.write("/home/user/f.txt", b"bytes")
        assert await sbx.files.read("f.txt", format="bytes") == b"bytes"


def test_models_match_the_real_e2b_package():
    e2b = pytest.importorskip("e2b_code_interpreter", reason="skipped: e2b-code-interpreter is not installed")
    from e2b_code_interpreter import models

    real_result = set(inspect.signature(models.Result.__init__).parameters) - {"self", "kwargs"}
    ours = set(inspect.signature(shim.Result.__init__).parameters) - {"self", "kwargs"}
    assert real_result <= ours, real_result - ours
    for name in ("formats", "_repr_html_", "_repr_png_", "__getitem__"):
        assert hasattr(shim.Result, name)
    for real, mine in [
        (models.Logs, shim.Logs),
        (models.ExecutionError, shim.ExecutionError),
        (models.OutputMessage, shim.OutputMessage),
    ]:
        assert {f.name for f in dataclasses.fields(real)} <= {f.name for f in dataclasses.fields(mine)}
    real_exec = {f.name for f in dataclasses.fields(models.Execution)}
    assert real_exec <= {f.name for f in dataclasses.fields(shim.Execution)}
    assert isinstance(getattr(models.Execution, "text"), property) and isinstance(shim.Execution.text, property)
    real_run = set(inspect.signature(e2b.Sandbox.run_code).parameters)
    assert real_run <= set(inspect.signature(shim.Sandbox.run_code).parameters)
    assert e2b.Sandbox.__name__ == shim.Sandbox.__name__


def test_smolagents_own_e2b_executor_runs_on_the_shim(server, monkeypatch):
    """smolagents' E2BExecutor is third-party code written for e2b_code_interpreter:
    pointed at the shim, it runs on airlock unchanged."""
    pytest.importorskip("smolagents", reason="skipped: smolagents is not installed")
    from smolagents.monitoring import AgentLogger, LogLevel
    from smolagents.remote_executors import E2BExecutor

    monkeypatch.setitem(sys.modules, "e2b_code_interpreter", shim)
    monkeypatch.setenv("AIRLOCK_URL", server.url)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ex = E2BExecutor([], AgentLogger(level=LogLevel.OFF))
    try:
        ex.send_variables({"start": 10})
        out = ex("total = start + 32\nprint('computed')\ntotal")
        # airlock also sends plain data as application/json, which E2BExecutor prefers.
        assert out.output == 42 and out.logs == "computed\n" and not out.is_final_answer
    finally:
        ex.cleanup()
    assert not hasattr(ex, "sandbox")
