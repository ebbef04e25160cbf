"""A LangChain tool that runs Python in an airlock sandbox.

Example::

    from airlock.langchain import AirlockPythonTool

    tool = AirlockPythonTool()                 # a sandbox is created on first use
    print(tool.invoke({"code": "x = 6 * 7\\nx"}))   # "42"
    print(tool.invoke({"code": "x + 1"}))           # "43": state persists
    tool.close()                               # destroys the sandbox

Give it to any LangChain agent or chat model (``model.bind_tools([tool])``). The
tool's answer is text the model can read (output, the last expression's value, the
error with its traceback); with ``response_format="content_and_artifact"`` (the
default), a ``ToolMessage``'s artifact is the full :class:`airlock.Execution`, with
figures as PNG bytes.

Requires ``langchain-core``.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple, Type

from langchain_core.tools import BaseTool
from pydantic import BaseModel, Field, PrivateAttr

from ._async import AsyncSandbox
from ._models import Execution
from ._sync import Sandbox


class PythonCode(BaseModel):
    """The tool's input."""

    code: str = Field(
        description=(
            "Python code to run. Variables, imports and files persist between calls. "
            "The value of the last line (if it is an expression) is returned, like in Jupyter; "
            "print() output is returned too."
        )
    )


class AirlockPythonTool(BaseTool):
    """Runs Python in a stateful airlock sandbox (one per tool instance).

    Args:
        sandbox: An existing :class:`airlock.Sandbox` to use (not destroyed by
            :meth:`close`). Default: one is created on first use, with
            ``sandbox_kwargs``, and destroyed by :meth:`close`.
        sandbox_kwargs: Arguments of :meth:`airlock.Sandbox.create` (``backend``,
            ``limits``, ``url``, ``api_key``...).
        timeout: Time limit of each call, in seconds (default: the sandbox's).
        max_output_chars: The answer is cut to this many characters (the model's
            context is precious).
    """

    name: str = "python"
    description: str = (
        "Run Python code in a secure sandbox and get its output. State persists between calls. "
        "Use it for calculations, data analysis and anything that needs running code. "
        "The sandbox has no network access."
    )
    args_schema: Type[BaseModel] = PythonCode
    response_format: str = "content_and_artifact"  # type: ignore[assignment]
    sandbox_kwargs: Dict[str, Any] = Field(default_factory=dict)
    timeout: Optional[float] = None
    max_output_chars: int = 20_000

    _sandbox: Optional[Sandbox] = PrivateAttr(default=None)
    _async_sandbox: Optional[AsyncSandbox] = PrivateAttr(default=None)
    _owns: bool = PrivateAttr(default=True)

    def __init__(self, sandbox: Optional[Sandbox] = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if sandbox is not None:
            self._sandbox = sandbox
            self._owns = False

    @property
    def sandbox_id(self) -> Optional[str]:
        """The sandbox's id, once there is one."""
        if self._sandbox is not None:
            return self._sandbox.id
        if self._async_sandbox is not None:
            return self._async_sandbox.id
        return None

    def _sync_sandbox(self) -> Sandbox:
        if self._sandbox is None:
            if self._async_sandbox is not None:  # the same sandbox, through a sync handle
                self._sandbox = Sandbox.connect(self._async_sandbox.id, **_conn(self.sandbox_kwargs))
            else:
                self._sandbox = Sandbox.create(**self.sandbox_kwargs)
        return self._sandbox

    async def _asandbox(self) -> AsyncSandbox:
        if self._async_sandbox is None:
            if self._sandbox is not None:
                self._async_sandbox = await AsyncSandbox.connect(self._sandbox.id, **_conn(self.sandbox_kwargs))
            else:
                self._async_sandbox = await AsyncSandbox.create(**self.sandbox_kwargs)
        return self._async_sandbox

    def _run(self, code: str, **_: Any) -> Tuple[str, Execution]:
        ex = self._sync_sandbox().run_code(code, timeout=self.timeout)
        return format_execution(ex, self.max_output_chars), ex

    async def _arun(self, code: str, **_: Any) -> Tuple[str, Execution]:
        sbx = await self._asandbox()
        ex = await sbx.run_code(code, timeout=self.timeout)
        return format_execution(ex, self.max_output_chars), ex

    def close(self) -> None:
        """Destroys the sandbox if the tool created it. A sandbox passed in is left
        alone (and usable)."""
        sb, asb = self._sandbox, self._async_sandbox
        self._sandbox = self._async_sandbox = None
        if not self._owns:
            return
        if sb is not None:
            sb.kill()
        elif asb is not None:
            # Only an async handle exists: destroy through a short-lived sync handle.
            Sandbox.connect(asb.id, **_conn(self.sandbox_kwargs)).kill()

    async def aclose(self) -> None:
        """Destroys the sandbox if the tool created it (for asyncio code), and closes
        the handles the tool made."""
        sb, asb = self._sandbox, self._async_sandbox
        self._sandbox = self._async_sandbox = None
        if self._owns:
            if asb is not None:
                await asb.kill()
                if sb is not None:
                    sb.close()
            elif sb is not None:
                sb.kill()
        elif asb is not None:
            await asb.close()  # the tool's own handle on the caller's sandbox


def _conn(kw: Dict[str, Any]) -> Dict[str, Any]:
    return {k: kw[k] for k in ("url", "api_key", "request_timeout") if k in kw}


def format_execution(ex: Execution, max_chars: int = 20_000) -> str:
    """An Execution as text for a model: output, the value, the error, why it stopped."""
    parts = []
    if ex.stdout:
        parts.append(ex.stdout.rstrip("\n"))
    if ex.stderr:
        parts.append("[stderr]\n" + ex.stderr.rstrip("\n"))
    for r in ex.results:
        if not r.is_main_result and r.png is not None:
            parts.append("[a figure was displayed]")
    if ex.text is not None:
        parts.append(ex.text if not parts else "Out: " + ex.text)
    if ex.error is not None:
        parts.append(ex.error.traceback.rstrip("\n") or f"{ex.error.name}: {ex.error.value}")
    if ex.status not in ("ok", "error"):
        parts.append(f"[stopped: {ex.status}: {ex.reason or ''}]".replace(": ]", "]"))
    text = "\n".join(parts) if parts else "[no output]"
    if len(text) > max_chars:
        keep = max(0, max_chars - 60)
        text = text[:keep] + f"\n...[{len(text) - keep} more characters cut]"
    return text


__all__ = ["AirlockPythonTool", "PythonCode", "format_execution"]
