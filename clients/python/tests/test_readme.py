"""Every Python example in the README runs, against a real server.

Each ```python block runs in its own interpreter with ``AIRLOCK_URL`` pointing at the
test server; the comments that promise an output (``# 42``) are checked against what
the block printed. The smolagents example uses a ``model`` the README leaves to the
reader: here it is a scripted model, defined before the block runs.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"

SCRIPTED_MODEL = '''
from smolagents.models import ChatMessage, MessageRole, Model
from smolagents.monitoring import TokenUsage

class _ScriptedModel(Model):
    def __init__(self):
        super().__init__(model_id="scripted")
        self.steps = [
            "Thought: compute it\\n<code>\\na, b = 0, 1\\nfor _ in range(19):\\n    a, b = b, a + b\\nprint(a)\\n</code>",
            "Thought: done\\n<code>\\nfinal_answer(a)\\n</code>",
        ]
    def generate(self, messages, stop_sequences=None, response_format=None, tools_to_call_from=None, **kw):
        return ChatMessage(role=MessageRole.ASSISTANT, content=self.steps.pop(0), token_usage=TokenUsage(0, 0))

model = _ScriptedModel()
'''


def blocks():
    text = README.read_text()
    return [m.group(1) for m in re.finditer(r"```python\n(.*?)```", text, re.S)]


def expected_outputs(code):
    """The `# value` comments that promise output, in order, for print() lines."""
    out = []
    for line in code.splitlines():
        m = re.match(r"\s*print\(.*\)\s+#\s+(.+)$", line)
        if m:
            out.append(m.group(1).split(" — ")[0].strip())
    return out


def test_readme_has_examples():
    assert len(blocks()) >= 10


@pytest.mark.parametrize("index", range(len(blocks())))
def test_readme_example(index, server, tmp_path):
    code = blocks()[index]
    if "model=model" in code:
        pytest.importorskip("smolagents", reason="skipped: smolagents is not installed")
        code = SCRIPTED_MODEL + code
    if "airlock.langchain" in code:
        pytest.importorskip("langchain_core", reason="skipped: langchain-core is not installed")
    env = dict(os.environ, AIRLOCK_URL=server.url)
    env.pop("AIRLOCK_API_KEY", None)
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, f"README example {index} failed:\n{code}\n--- stderr ---\n{p.stderr}"
    printed = p.stdout
    for promise in expected_outputs(blocks()[index]):
        if promise.startswith(("only ", "the ")):
            continue  # a remark, not an output
        want = promise.replace("...", "").strip().rstrip("-").strip()
        assert want in printed, f"README example {index} promised {promise!r} but printed:\n{printed}"
