"""An executor for smolagents' ``CodeAgent`` that runs the agent's code in an airlock
sandbox instead of smolagents' in-process interpreter.

Example::

    from smolagents import CodeAgent
    from airlock.smolagents import AirlockExecutor

    agent = CodeAgent(tools=[], model=model, executor=AirlockExecutor())
    agent.run("What is the 20th Fibonacci number?")
    agent.cleanup()          # destroys the sandbox (or use `with CodeAgent(...) as agent:`)

The executor keeps one stateful sandbox for the agent's whole run: variables defined
in one step are there in the next, as with smolagents' own executors. Tools are
sent to the sandbox as source code (smolagents' ``RemotePythonExecutor`` protocol),
so they run inside the sandbox too; ``final_answer(...)`` ends the run.

Requires the ``smolagents`` package (``pip install smolagents``).
"""

from __future__ import annotations

from typing import Any, List, Mapping, Optional

from smolagents.local_python_executor import CodeOutput
from smolagents.monitoring import AgentLogger, LogLevel
from smolagents.remote_executors import RemotePythonExecutor
from smolagents.utils import AgentError

from ._models import Execution
from ._sync import Sandbox


class AirlockExecutor(RemotePythonExecutor):  # type: ignore[misc]  # smolagents is untyped
    """Runs a ``CodeAgent``'s code in an airlock sandbox.

    Args:
        additional_imports: Modules the agent may import. airlock sandboxes have no
            network, so nothing is installed: modules missing from the server's
            interpreter are reported in the log, and an import of them fails in the
            agent's code (the model sees the error).
        logger: smolagents' logger (default: a new ``AgentLogger``).
        sandbox: An existing :class:`airlock.Sandbox` to use (it is not destroyed by
            :meth:`cleanup`); default: one created here and destroyed by ``cleanup``.
        timeout: Time limit of each code step, in seconds (default: the sandbox's).
        allow_pickle: As in smolagents (``False``: final answers travel as JSON only).
        **sandbox_kwargs: Arguments of :meth:`airlock.Sandbox.create` (``backend``,
            ``limits``, ``url``, ``api_key``, ``client``, ...).
    """

    def __init__(
        self,
        additional_imports: Optional[List[str]] = None,
        logger: Optional[Any] = None,
        *,
        sandbox: Optional[Sandbox] = None,
        timeout: Optional[float] = None,
        allow_pickle: bool = False,
        **sandbox_kwargs: Any,
    ) -> None:
        super().__init__(list(additional_imports or []), logger or AgentLogger(level=LogLevel.INFO),
                         allow_pickle=allow_pickle)
        self.timeout = timeout
        self._owns_sandbox = sandbox is None
        self.sandbox: Optional[Sandbox] = sandbox if sandbox is not None else Sandbox.create(**sandbox_kwargs)
        self.installed_packages = self.install_packages(self.additional_imports)
        self.logger.log(f"airlock sandbox {self.sandbox.id} ({self.sandbox.info.backend}) is ready",
                        level=LogLevel.INFO)

    def install_packages(self, additional_imports: List[str]) -> List[str]:
        """Checks that the modules are importable in the sandbox (nothing can be
        installed: sandboxes have no network). Returns those that are."""
        names = sorted({m.split(".")[0] for m in additional_imports if m and m != "*"})
        if not names or self.sandbox is None:
            return []
        probe = (
            "import importlib.util as _u\n"
            f"[_m for _m in {names!r} if _u.find_spec(_m) is None]"
        )
        ex = self.sandbox.run_code(probe)
        missing = list(ex.main_result.json or []) if ex.main_result is not None else []
        if missing:
            self.logger.log(
                f"airlock: these modules are not installed on the server's interpreter and cannot be installed "
                f"in a sandbox: {', '.join(missing)}",
                level=LogLevel.INFO,
            )
        return [n for n in names if n not in missing]

    def run_code_raise_errors(self, code: str) -> CodeOutput:
        """Runs one step's code; returns its output, or raises ``AgentError`` with the
        traceback (which the agent shows the model)."""
        if self.sandbox is None:
            raise AgentError("the airlock sandbox was cleaned up; create a new executor", self.logger)
        ex = self.sandbox.run_code(code, timeout=self.timeout)
        logs = ex.stdout + ex.stderr
        if ex.error is not None and ex.error.name == self.FINAL_ANSWER_EXCEPTION:
            value = self._deserialize_final_answer(ex.error.value, self.allow_pickle)
            return CodeOutput(output=value, logs=logs, is_final_answer=True)
        if ex.error is not None or not ex.ok:
            raise AgentError(_failure_message(ex, logs), self.logger)
        return CodeOutput(output=_main_output(ex), logs=logs, is_final_answer=False)

    def send_variables(self, variables: Mapping[str, Any]) -> None:
        """Defines the agent's state variables in the sandbox."""
        super().send_variables(dict(variables))

    def cleanup(self) -> None:
        """Destroys the sandbox (if this executor created it)."""
        sb, self.sandbox = self.sandbox, None
        if sb is None:
            return
        if self._owns_sandbox:
            try:
                sb.kill()
            except Exception as e:  # cleanup must not hide the agent's own result
                self.logger.log_error(f"destroying airlock sandbox {sb.id} failed: {e}")

    def delete(self) -> None:
        """Same as :meth:`cleanup`."""
        self.cleanup()


def _main_output(ex: Execution) -> Any:
    """The step's value: an image for a figure, plain data when it is JSON, else its
    text form."""
    r = ex.main_result
    if r is None:
        return None
    img = r.png or r.jpeg
    if img is not None:
        try:
            import io

            import PIL.Image

            return PIL.Image.open(io.BytesIO(img))
        except Exception:
            pass
    if "application/json" in r.data:
        return r.json
    return r.text


def _failure_message(ex: Execution, logs: str) -> str:
    parts = []
    if logs:
        parts.append(logs.rstrip("\n"))
    parts.append("Executing code yielded an error:")
    if ex.error is not None:
        parts.append(ex.error.traceback.rstrip("\n") or f"{ex.error.name}: {ex.error.value}")
    if ex.status not in ("ok", "error") or ex.error is None:
        parts.append(f"[airlock: status {ex.status}: {ex.reason or 'no reason given'}]")
    return "\n".join(parts)


__all__ = ["AirlockExecutor"]
