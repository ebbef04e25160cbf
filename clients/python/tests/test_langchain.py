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


def test_a_chat_models_tool_calls_run_in_the_sandbox(server):
    """What a LangChain agent loop does: the model's schema for the tool, the model's
    tool calls, ToolMessages back."""
    from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
    from langchain_core.messages import AIMessage, HumanMessage
    from langchain_core.utils.function_calling import convert_to_openai_tool

    tool = AirlockPythonTool(sandbox_kwargs={"url": server.url})
    schema = convert_to_openai_tool(tool)["function"]
    assert schema["name"] == "python"
    assert schema["parameters"]["required"] == ["code"]

    model = FakeMessagesListChatModel(responses=[
        AIMessage(content="", tool_calls=[
            {"name": "python", "args": {"code": "import statistics\nstatistics.mean([2, 4, 9])"}, "id": "c1"},
        ]),
        AIMessage(content="The mean is 5."),
    ])
    history = [HumanMessage("What is the mean of 2, 4 and 9?")]
    try:
        while True:
            ai = model.invoke(history)
            history.append(ai)
            if not ai.tool_calls:
                break
            for call in ai.tool_calls:
                history.append(tool.invoke({**call, "type": "tool_call"}))
    finally:
        tool.close()
    tool_msgs = [m for m in history if isinstance(m, ToolMessage)]
    assert [m.content for m in tool_msgs] == ["5"]
    assert history[-1].content == "The mean is 5."
