"""smolagents' CodeAgent with AirlockExecutor, driven by a scripted model (no LLM)."""

from __future__ import annotations

import pytest

pytest.importorskip("smolagents", reason="skipped: smolagents is not installed")

from smolagents import CodeAgent, tool  # noqa: E402
from smolagents.models import ChatMessage, MessageRole, Model  # noqa: E402
from smolagents.monitoring import LogLevel, TokenUsage  # noqa: E402

import airlock  # noqa: E402
from airlock.smolagents import AirlockExecutor  # noqa: E402


class ScriptedModel(Model):
    """Answers with the next scripted step and records what it was shown."""

    def __init__(self, steps):
        super().__init__(model_id="scripted")
        self.steps = list(steps)
        self.seen = []

    def generate(self, messages, stop_sequences=None, response_format=None, tools_to_call_from=None, **kwargs):
        self.seen.append("\n".join(_text(m) for m in messages))
        content = self.steps.pop(0)
        return ChatMessage(role=MessageRole.ASSISTANT, content=content, token_usage=TokenUsage(0, 0))


def _text(m):
    content = m.content if hasattr(m, "content") else m.get("content")
    if isinstance(content, list):
        return "\n".join(c.get("text", "") for c in content if isinstance(c, dict))
    return str(content or "")


def step(thought, code):
    return f"Thought: {thought}\n<code>\n{code}\n</code>"


@tool
def double(x: int) -> int:
    """Doubles a number.

    Args:
        x: the number
    """
    return 2 * x


def test_code_agent_runs_its_code_in_airlock(server):
    model = ScriptedModel([
        step("Compute with state, a tool, and a file.",
             "import os\n"
             "fib = [0, 1]\n"
             "for _ in range(18):\n"
             "    fib.append(fib[-1] + fib[-2])\n"
             "open('proof.txt', 'w').write(f'pid={os.getpid()}')\n"
             "print('twentieth:', fib[19])"),
        step("Now a mistake.", "1 / 0"),
        step("Use the state from step one and the tool.", "final_answer(double(fib[19]) // 2)"),
    ])
    executor = AirlockExecutor(url=server.url)
    with CodeAgent(tools=[double], model=model, executor=executor, verbosity_level=LogLevel.OFF) as agent:
        answer = agent.run("What is the 20th Fibonacci number?")
        proof = executor.sandbox.files.read("proof.txt")
        sid = executor.sandbox.id
    assert answer == 4181
    # The code ran in the sandbox (a separate process), not in this interpreter.
    import os

    assert proof.startswith("pid=") and proof != f"pid={os.getpid()}"
    # Observations went back to the model: the output of step 1, the error of step 2.
    assert "twentieth: 4181" in model.seen[1]
    assert "ZeroDivisionError" in model.seen[2]
    # Leaving the `with` destroyed the sandbox.
    assert sid not in [s.id for s in airlock.Sandbox.list(url=server.url)]


def test_executor_values_state_and_limits(server):
    with airlock.Sandbox.create(url=server.url) as sbx:
        executor = AirlockExecutor(sandbox=sbx, additional_imports=["json", "surely_not_a_module"], timeout=1)
        assert executor.installed_packages == ["json"]
        executor.send_variables({"numbers": [1, 2, 3]})
        out = executor("sum(numbers)")
        assert out.output == 6 and out.is_final_answer is False
        with pytest.raises(Exception, match="timeout"):
            executor("while True: pass")
        executor.cleanup()
        # A sandbox passed in is not destroyed by cleanup.
        assert sbx.is_running()
