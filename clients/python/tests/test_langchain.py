"""The LangChain tool, invoked as LangChain invokes tools."""

from __future__ import annotations

import pytest

pytest.importorskip("langchain_core", reason="skipped: langchain-core is not installed")

from langchain_core.messages import ToolMessage  # noqa: E402
from langchain_core.tools import BaseTool  # noqa: E402

import airlock  # noqa: E402
from airlock.langchain import AirlockPythonTool, format_execution  # noqa: E402


def test_tool_invoke_keeps_a_session(server):
    tool = AirlockPythonTool(sandbox_kwargs={"url": server.url})
    assert isinstance(tool, BaseTool)
    assert tool.name == "python" and "code" in tool.args
    try:
        assert tool.invoke({"code": "x = 6 * 7\nx"}) == "42"
        assert tool.invoke({"code": "print('x is', x)\nx + 1"}) == "x is 42\nOut: 43"
        err = tool.invoke({"code": "undefined_name"})
        assert "NameError" in err and "undefined_name" in err
        # As a model's tool call: a ToolMessage whose artifact is the Execution.
        msg = tool.invoke({"type": "tool_call", "id": "call_1", "name": "python", "args": {"code": "x * 2"}})
        assert isinstance(msg, ToolMessage) and msg.tool_call_id == "call_1"
        assert msg.content == "84"
        assert isinstance(msg.artifact, airlock.Execution) and msg.artifact.text == "84"
        sid = tool.sandbox_id
        assert sid in [s.id for s in airlock.Sandbox.list(url=server.url)]
    finally:
        tool.close()
    assert sid not in [s.id for s in airlock.Sandbox.list(url=server.url)]


async def test_tool_ainvoke_shares_the_sandbox(server):
    tool = AirlockPythonTool(sandbox_kwargs={"url": server.url}, timeout=1)
    try:
        assert await tool.ainvoke({"code": "y = 5"}) == "[no output]"
        assert tool.invoke({"code": "y * 2"}) == "10"  # same sandbox, sync handle
        out = await tool.ainvoke({"code": "while True: pass"})
        assert "TimeoutError" in out and out.endswith("(limits.timeout_ms)]") and "[stopped: timeout" in out
        sid = tool.sandbox_id
    finally:
        await tool.aclose()
    assert tool.sandbox_id is None
    assert sid not in [s.id for s in airlock.Sandbox.list(url=server.url)]


def test_tool_on_an_existing_sandbox_and_output_cap(server):
    with airlock.Sandbox.create(url=server.url) as sbx:
        tool = AirlockPythonTool(sandbox=sbx, max_output_chars=100)
        out = tool.invoke({"code": "print('z' * 1000)"})
        assert len(out) <= 100 and out.endswith("more characters cut]")
        tool.close()
        assert sbx.is_running()  # not the tool's to destroy


def test_format_execution_shapes():
    ex = airlock.Execution.from_outcome({"status": "ok", "stdout": "", "stderr": "", "results": []})
    assert format_execution(ex) == "[no output]"
