"""A drop-in for ``e2b_code_interpreter`` that runs on your airlock server.

Code written for E2B's code interpreter works by changing one import::

    # from e2b_code_interpreter import Sandbox
    from airlock.e2b import Sandbox

    with Sandbox.create() as sbx:
        execution = sbx.run_code("x = 1; x + 1", on_stdout=print)
        print(execution.text)               # "2"
        sbx.files.write("/home/user/data.txt", "hello")
        print(sbx.files.read("/home/user/data.txt"))

The classes here have the names, fields and types of ``e2b_code_interpreter``'s
models: ``Execution`` (``results``, ``logs``, ``error``, ``execution_count``,
``text``), ``Result`` (``text``, ``html``, ``png`` as base64 text, ...,
``is_main_result``), ``Logs`` (``stdout``/``stderr`` lists of strings),
``ExecutionError``, ``OutputMessage`` (what ``on_stdout``/``on_stderr`` receive).

What differs, because airlock is not E2B:

- The server is ``$AIRLOCK_URL`` (``api_url=`` also works) and the key
  ``$AIRLOCK_API_KEY`` (``api_key=`` also works); ``E2B_API_KEY`` is not used.
- Files live in the sandbox's workspace, the directory cells run in. E2B's home
  directory ``/home/user`` is mapped onto it: ``/home/user/data.csv`` and
  ``data.csv`` are the same file. Code that opens ``/home/user/...`` itself must use
  relative paths instead.
- Templates name E2B images: they are ignored (with a warning). Sandboxes have no
  network (``allow_internet_access`` is ignored, with a warning).
- ``run_code`` takes ``language`` ``"python"`` or ``"bash"``; per-run ``envs`` and
  contexts are not supported (pass ``envs`` to ``Sandbox.create``).
- A cell that runs out of time raises :class:`TimeoutException`, as in E2B; other
  limits (memory, output) come back as an ``error`` in the Execution.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, Dict, Iterable, List, Optional, Union

from . import _errors
from ._async import AsyncSandbox as _AsyncSandbox
from ._models import Execution as _Execution
from ._models import ExecutionError as _CoreError
from ._models import Result as _CoreResult
from ._sync import Sandbox as _Sandbox

# ---- exceptions, named as in the e2b package ----


class SandboxException(_errors.AirlockError):
    """Base of the shim's exceptions (``e2b.SandboxException``)."""


class TimeoutException(SandboxException, _errors.Timeout):
    """A cell ran out of time, or the server did not answer in time."""


class NotFoundException(SandboxException, _errors.NotFound):
    """No such sandbox or file."""


class InvalidArgumentException(SandboxException, _errors.InvalidRequest):
    """An argument is invalid or not supported here."""


class AuthenticationException(SandboxException, _errors.AuthError):
    """The server refused the API key."""


class RateLimitException(SandboxException, _errors.RateLimited):
    """The server is at capacity, or the key holds as many sandboxes as it may."""


def _translate(e: _errors.AirlockError) -> SandboxException:
    if isinstance(e, _errors.NotFound):
        cls: type = NotFoundException
    elif isinstance(e, _errors.Timeout):
        cls = TimeoutException
    elif isinstance(e, _errors.AuthError):
        cls = AuthenticationException
    elif isinstance(e, _errors.RateLimited):
        out = RateLimitException(e.message, retry_after=e.retry_after, code=e.code, status=e.status)
        return out
    elif isinstance(e, _errors.InvalidRequest):
        cls = InvalidArgumentException
    else:
        cls = SandboxException
    return cls(e.message, code=e.code, status=e.status, execution_id=e.execution_id)  # type: ignore[no-any-return]


class _Translated:
    """Re-raises airlock's errors as the shim's E2B-named ones."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, et: Any, ev: Any, tb: Any) -> None:
        if isinstance(ev, _errors.AirlockError) and not isinstance(ev, SandboxException):
            raise _translate(ev) from ev


# ---- models, with e2b_code_interpreter's names and types ----


@dataclass
class OutputMessage:
    """A chunk of output, as ``on_stdout``/``on_stderr`` receive it."""

    line: str
    """The output text."""
    timestamp: int
    """When it was received, in nanoseconds since the Unix epoch."""
    error: bool = False
    """True for stderr."""

    def __str__(self) -> str:
        return self.line


@dataclass
class ExecutionError:
    """The error of a cell: ``name``, ``value``, ``traceback``."""

    name: str
    """The exception type."""
    value: str
    """The exception message."""
    traceback: str
    """The traceback text."""

    def to_json(self) -> str:
        """The error as JSON."""
        return json.dumps({"name": self.name, "value": self.value, "traceback": self.traceback})


class Result:
    """One rich result. Fields are strings, as in E2B: ``png`` and ``jpeg`` are
    base64 text; ``json`` is a dict; ``is_main_result`` marks the last expression's
    value."""

    def __init__(
        self,
        text: Optional[str] = None,
        html: Optional[str] = None,
        markdown: Optional[str] = None,
        svg: Optional[str] = None,
        png: Optional[str] = None,
        jpeg: Optional[str] = None,
        pdf: Optional[str] = None,
        latex: Optional[str] = None,
        json: Optional[Any] = None,
        javascript: Optional[str] = None,
        data: Optional[Dict[str, Any]] = None,
        chart: Optional[Dict[str, Any]] = None,
        is_main_result: bool = False,
        extra: Optional[Dict[str, Any]] = None,
        **kwargs: Any,
    ) -> None:
        self.text = text
        self.html = html
        self.markdown = markdown
        self.svg = svg
        self.png = png
        self.jpeg = jpeg
        self.pdf = pdf
        self.latex = latex
        self.json = json
        self.javascript = javascript
        self.data = data
        self.chart = chart
        self.is_main_result = is_main_result
        self.extra = extra

    _FIELDS = ("text", "html", "markdown", "svg", "png", "jpeg", "pdf", "latex", "json", "javascript", "data", "chart")

    @classmethod
    def _from_core(cls, r: _CoreResult) -> "Result":
        d = r.data
        known = {"text/plain", "text/html", "text/markdown", "image/svg+xml", "image/png", "image/jpeg",
                 "application/pdf", "text/latex", "application/json", "application/javascript"}
        extra = {k: v for k, v in d.items() if k not in known} or None
        return cls(
            text=d.get("text/plain"),
            html=d.get("text/html"),
            markdown=d.get("text/markdown"),
            svg=d.get("image/svg+xml"),
            png=d.get("image/png"),
            jpeg=d.get("image/jpeg"),
            pdf=d.get("application/pdf"),
            latex=d.get("text/latex"),
            json=d.get("application/json"),
            javascript=d.get("application/javascript"),
            is_main_result=r.is_main_result,
            extra=extra,
        )

    def __getitem__(self, item: str) -> Any:
        return getattr(self, item)

    def formats(self) -> Iterable[str]:
        """The names of the formats present."""
        out = [f for f in self._FIELDS if getattr(self, f)]
        if self.extra:
            out.extend(self.extra)
        return out

    def __repr__(self) -> str:
        if self.text:
            return f"Result({self.text})"
        return "Result(Formats: " + ", ".join(self.formats()) + ")"

    __str__ = __repr__

    def _repr_html_(self) -> Optional[str]:
        return self.html

    def _repr_markdown_(self) -> Optional[str]:
        return self.markdown

    def _repr_svg_(self) -> Optional[str]:
        return self.svg

    def _repr_png_(self) -> Optional[str]:
        return self.png

    def _repr_jpeg_(self) -> Optional[str]:
        return self.jpeg

    def _repr_pdf_(self) -> Optional[str]:
        return self.pdf

    def _repr_latex_(self) -> Optional[str]:
        return self.latex

    def _repr_json_(self) -> Optional[Any]:
        return self.json

    def _repr_javascript_(self) -> Optional[str]:
        return self.javascript


@dataclass(repr=False)
class Logs:
    """Output of a cell: ``stdout`` and ``stderr`` as lists of strings."""

    stdout: List[str] = field(default_factory=list)
    """Chunks printed to stdout."""
    stderr: List[str] = field(default_factory=list)
    """Chunks printed to stderr."""

    def __repr__(self) -> str:
        return f"Logs(stdout: {self.stdout}, stderr: {self.stderr})"

    def to_json(self) -> str:
        """The logs as JSON."""
        return json.dumps({"stdout": self.stdout, "stderr": self.stderr})


@dataclass(repr=False)
class Execution:
    """The result of ``run_code``: ``results``, ``logs``, ``error``, ``execution_count``."""

    results: List[Result] = field(default_factory=list)
    """The main result and displayed values."""
    logs: Logs = field(default_factory=Logs)
    """stdout and stderr."""
    error: Optional[ExecutionError] = None
    """The error, if the cell failed."""
    execution_count: Optional[int] = None
    """The cell's number in the sandbox."""
    airlock: Optional[_Execution] = None
    """airlock's own Execution (status, reason, usage...)."""

    @property
    def text(self) -> Optional[str]:
        """The text of the main result."""
        for r in self.results:
            if r.is_main_result:
                return r.text
        return None

    def __repr__(self) -> str:
        return f"Execution(Results: {self.results}, Logs: {self.logs}, Error: {self.error})"

    def to_json(self) -> str:
        """The execution as JSON (the shape E2B gives)."""
        results = []
        for r in self.results:
            d = {k: r[k] for k in r.formats() if k in Result._FIELDS}
            d["text"] = r.text
            results.append(d)
        return json.dumps({
            "results": results,
            "logs": self.logs.to_json(),
            "error": self.error.to_json() if self.error else None,
        })


def _shim_execution(ex: _Execution, results: List[Result]) -> Execution:
    err = ex.error
    if err is None and ex.status not in ("ok", "error"):
        # A limit stopped the cell without a Python exception (memory, output, a kill).
        err = _CoreError(name=ex.status, value=ex.reason or ex.status, traceback="")
    return Execution(
        results=results,
        logs=Logs(stdout=list(ex.logs.stdout), stderr=list(ex.logs.stderr)),
        error=ExecutionError(err.name, err.value, err.traceback) if err else None,
        execution_count=ex.execution_count,
        airlock=ex,
    )


# ---- files ----


class FileType(Enum):
    """The type of a workspace entry."""

    FILE = "file"
    DIR = "dir"


@dataclass
class WriteInfo:
    """What ``files.write`` returns."""

    name: str
    """The file's name."""
    type: Optional[FileType]
    """``FileType.FILE``."""
    path: str
    """The path, as given."""


@dataclass
class EntryInfo(WriteInfo):
    """An entry of ``files.list``."""

    size: int = 0
    """Size in bytes."""


_HOME = "/home/user"


def _workspace_path(path: str) -> str:
    """E2B's home directory is airlock's workspace."""
    if path == _HOME or path == _HOME + "/":
        return ""
    if path.startswith(_HOME + "/"):
        return path[len(_HOME) + 1:]
    return path


def _e2b_path(rel: str) -> str:
    return f"{_HOME}/{rel}" if rel else _HOME


class Filesystem:
    """``sandbox.files``: read, write, list and remove workspace files."""

    def __init__(self, sbx: "Sandbox") -> None:
        self._sbx = sbx

    def read(self, path: str, format: str = "text", **_: Any) -> Any:
        """Reads a file as ``"text"`` (default) or ``"bytes"``."""
        if format == "stream":
            raise InvalidArgumentException("format='stream' is not supported; use 'text' or 'bytes'",
                                           code="invalid_request")
        with _Translated():
            return self._sbx._inner.files.read(_workspace_path(path), format=format)

    def write(self, path: str, data: Union[str, bytes, Any], **_: Any) -> WriteInfo:
        """Writes a file (text, bytes or a file object), creating parent directories."""
        with _Translated():
            e = self._sbx._inner.files.write(_workspace_path(path), data)
        return WriteInfo(name=e.name, type=FileType.FILE, path=path)

    def write_files(self, files: List[Dict[str, Any]], **_: Any) -> List[WriteInfo]:
        """Writes several files: ``[{"path": ..., "data": ...}, ...]``."""
        out = []
        for f in files:
            path = f["path"] if isinstance(f, dict) else f.path
            data = f["data"] if isinstance(f, dict) else f.data
            out.append(self.write(path, data))
        return out

    def list(self, path: str = _HOME, depth: Optional[int] = 1, **_: Any) -> List[EntryInfo]:
        """Lists a directory (``depth`` levels deep, 1 by default)."""
        base = _workspace_path(path).strip("/")
        with _Translated():
            entries = self._sbx._inner.files.list(base)
        out = []
        for e in entries:
            rel = e.path.strip("/")
            inner = rel[len(base) + 1:] if base else rel
            if depth is not None and inner.count("/") >= depth:
                continue
            out.append(EntryInfo(
                name=e.name,
                type=FileType.DIR if e.is_dir else FileType.FILE,
                path=_e2b_path(rel),
                size=e.size,
            ))
        return out

    def exists(self, path: str, **_: Any) -> bool:
        """True if the file or directory exists."""
        with _Translated():
            return self._sbx._inner.files.exists(_workspace_path(path))

    def remove(self, path: str, **_: Any) -> None:
        """Removes a file or an empty directory."""
        with _Translated():
            self._sbx._inner.files.remove(_workspace_path(path))


# ---- commands ----


@dataclass
class CommandResult:
    """What ``commands.run`` returns."""

    stdout: str
    """Standard output."""
    stderr: str
    """Standard error."""
    exit_code: int
    """The exit status."""
    error: Optional[str] = None
    """A description of the failure, when the command failed."""


class CommandExitException(SandboxException):
    """A command exited with a non-zero status (as in E2B, ``commands.run`` raises)."""

    def __init__(self, result: CommandResult) -> None:
        super().__init__(f"command exited with status {result.exit_code}: {result.stderr.strip()[-500:]}",
                         code="command_failed")
        self.stdout = result.stdout
        self.stderr = result.stderr
        self.exit_code = result.exit_code


class Commands:
    """``sandbox.commands``: run shell commands in the workspace (no background
    processes)."""

    def __init__(self, sbx: "Sandbox") -> None:
        self._sbx = sbx

    def run(
        self,
        cmd: str,
        background: bool = False,
        envs: Optional[Dict[str, str]] = None,
        cwd: Optional[str] = None,
        on_stdout: Optional[Callable[[str], Any]] = None,
        on_stderr: Optional[Callable[[str], Any]] = None,
        timeout: Optional[float] = 60,
        **_: Any,
    ) -> CommandResult:
        """Runs a bash command and waits for it. Raises :class:`CommandExitException`
        when it exits non-zero."""
        if background:
            raise InvalidArgumentException("background commands are not supported by airlock",
                                           code="invalid_request")
        if envs:
            raise InvalidArgumentException("per-command envs are not supported; pass envs to Sandbox.create",
                                           code="invalid_request")
        if cwd:
            import shlex

            cmd = f"cd {shlex.quote(_workspace_path(cwd) or '.')} && {cmd}"
        with _Translated():
            ex = self._sbx._inner.run_code(cmd, language="bash", on_stdout=on_stdout, on_stderr=on_stderr,
                                           timeout=timeout or None)
        if ex.status == "timeout":
            raise TimeoutException(ex.reason or "the command timed out", code="timeout", execution_id=ex.id)
        code = ex.exit_code if ex.exit_code is not None else (0 if ex.ok else 1)
        res = CommandResult(stdout=ex.stdout, stderr=ex.stderr, exit_code=code,
                            error=None if code == 0 else (ex.reason or f"exit status {code}"))
        if code != 0:
            raise CommandExitException(res)
        return res


# ---- the sandbox ----

_IGNORED_WITH_WARNING = ("allow_internet_access", "network", "mcp", "lifecycle", "volume_mounts", "iam")


def _connection(kw: Dict[str, Any]) -> Dict[str, Any]:
    url = kw.pop("url", None) or kw.pop("api_url", None)
    kw.pop("domain", None)
    kw.pop("debug", None)
    kw.pop("secure", None)
    kw.pop("logger", None)
    kw.pop("idempotency_key", None)
    kw.pop("headers", None)
    kw.pop("proxy", None)
    return {"url": url, "api_key": kw.pop("api_key", None), "request_timeout": kw.pop("request_timeout", None)}


def _language(language: Optional[str]) -> str:
    lang = (language or "python").lower()
    if lang in ("python", "py", "python3"):
        return "python"
    if lang in ("bash", "sh", "shell"):
        return "bash"
    raise InvalidArgumentException(f"language {language!r} is not supported by airlock: use 'python' or 'bash'",
                                   code="invalid_request")


class Sandbox:
    """A sandbox with E2B's code-interpreter API, running on airlock.

    ``Sandbox()`` and ``Sandbox.create()`` both create one; use it as a context
    manager to kill it at the end.
    """

    default_template = "code-interpreter-v1"

    def __init__(self, template: Optional[str] = None, timeout: Optional[int] = None,
                 metadata: Optional[Dict[str, str]] = None, envs: Optional[Dict[str, str]] = None,
                 **opts: Any) -> None:
        inner = opts.pop("_inner", None)
        if inner is None:
            conn = _connection(opts)
            if template is not None:
                warnings.warn(f"airlock.e2b: template {template!r} ignored (airlock has no sandbox images)",
                              stacklevel=3)
            for k in _IGNORED_WITH_WARNING:
                if opts.pop(k, None) is not None:
                    warnings.warn(f"airlock.e2b: {k}= is not supported and was ignored", stacklevel=3)
            limits = opts.pop("limits", None)
            backend = opts.pop("backend", None)
            if opts:
                raise InvalidArgumentException(f"unknown arguments: {', '.join(sorted(opts))}",
                                               code="invalid_request")
            with _Translated():
                inner = _Sandbox.create(backend=backend, limits=limits, timeout=timeout, env=envs,
                                        metadata=metadata, **conn)
        self._inner: _Sandbox = inner
        self.files = Filesystem(self)
        """Workspace files."""
        self.commands = Commands(self)
        """Shell commands."""

    @classmethod
    def create(cls, template: Optional[str] = None, timeout: Optional[int] = None,
               metadata: Optional[Dict[str, str]] = None, envs: Optional[Dict[str, str]] = None,
               **opts: Any) -> "Sandbox":
        """Creates a sandbox. ``timeout`` is its lifetime in seconds; ``envs`` its
        environment; ``template`` is ignored. airlock extras: ``backend=``,
        ``limits=``, ``url=``, ``api_key=``."""
        return cls(template=template, timeout=timeout, metadata=metadata, envs=envs, **opts)

    @classmethod
    def connect(cls, sandbox_id: str, **opts: Any) -> "Sandbox":
        """Attaches to an existing sandbox."""
        conn = _connection(opts)
        with _Translated():
            inner = _Sandbox.connect(sandbox_id, **conn)
        return cls(_inner=inner)

    @property
    def sandbox_id(self) -> str:
        """The sandbox's id."""
        return self._inner.id

    def run_code(
        self,
        code: str,
        language: Optional[str] = None,
        context: Any = None,
        on_stdout: Optional[Callable[[OutputMessage], Any]] = None,
        on_stderr: Optional[Callable[[OutputMessage], Any]] = None,
        on_result: Optional[Callable[[Result], Any]] = None,
        on_error: Optional[Callable[[ExecutionError], Any]] = None,
        envs: Optional[Dict[str, str]] = None,
        timeout: Optional[float] = None,
        request_timeout: Optional[float] = None,
    ) -> Execution:
        """Runs code (Python by default) and returns an E2B-shaped
        :class:`Execution`. Callbacks are called as output arrives.

        Raises:
            TimeoutException: the cell ran out of time.
        """
        if context is not None:
            raise InvalidArgumentException("code contexts are not supported by airlock; use another Sandbox",
                                           code="invalid_request")
        if envs:
            raise InvalidArgumentException("per-run envs are not supported; pass envs to Sandbox.create",
                                           code="invalid_request")
        results: List[Result] = []
        cb = _Callbacks(on_stdout, on_stderr, on_result, on_error, results)
        with _Translated():
            ex = self._inner.run_code(
                code, language=_language(language), on_stdout=cb.stdout, on_stderr=cb.stderr,
                on_result=cb.result, on_error=cb.error, timeout=timeout or None,
            )
        if ex.status == "timeout":
            raise TimeoutException(
                f"{ex.reason or 'the cell ran out of time'}: this error is raised when the code runs longer "
                "than timeout= (default: the sandbox's time limit)",
                code="timeout", execution_id=ex.id,
            )
        return _shim_execution(ex, results)

    def is_running(self, **_: Any) -> bool:
        """True while the sandbox exists."""
        with _Translated():
            return self._inner.is_running()

    def get_info(self, **_: Any) -> Any:
        """airlock's description of the sandbox (:class:`airlock.SandboxInfo`)."""
        with _Translated():
            return self._inner.refresh()

    def set_timeout(self, timeout: int, **_: Any) -> None:
        """Not supported: airlock fixes a sandbox's lifetime when it is created."""
        raise InvalidArgumentException(
            "airlock cannot change a sandbox's lifetime after creation; pass timeout= to Sandbox.create",
            code="invalid_request",
        )

    def kill(self, **_: Any) -> bool:
        """Destroys the sandbox; False if it was already gone."""
        with _Translated():
            return self._inner.kill()

    @staticmethod
    def list(**opts: Any) -> List[Any]:
        """Your live sandboxes (:class:`airlock.SandboxInfo` objects)."""
        conn = _connection(opts)
        conn.pop("request_timeout", None)
        with _Translated():
            return _Sandbox.list(**conn)

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.kill()

    def __repr__(self) -> str:
        return f"Sandbox(sandbox_id={self.sandbox_id!r})"


class _Callbacks:
    """Adapts airlock's streamed events to E2B's callback types."""

    def __init__(self, on_stdout: Any, on_stderr: Any, on_result: Any, on_error: Any, results: List[Result]) -> None:
        self.on_stdout, self.on_stderr, self.on_result, self.on_error = on_stdout, on_stderr, on_result, on_error
        self.results = results

    def stdout(self, text: str) -> Any:
        if self.on_stdout:
            return self.on_stdout(OutputMessage(text, time.time_ns(), False))
        return None

    def stderr(self, text: str) -> Any:
        if self.on_stderr:
            return self.on_stderr(OutputMessage(text, time.time_ns(), True))
        return None

    def result(self, r: _CoreResult) -> Any:
        res = Result._from_core(r)
        self.results.append(res)
        if self.on_result:
            return self.on_result(res)
        return None

    def error(self, e: _CoreError) -> Any:
        if self.on_error:
            return self.on_error(ExecutionError(e.name, e.value, e.traceback))
        return None


class AsyncSandbox:
    """The asyncio twin of :class:`Sandbox` (``e2b_code_interpreter.AsyncSandbox``)."""

    def __init__(self, inner: _AsyncSandbox) -> None:
        self._inner = inner
        self.files = _AsyncFilesystem(self)
        """Workspace files."""

    @classmethod
    async def create(cls, template: Optional[str] = None, timeout: Optional[int] = None,
                     metadata: Optional[Dict[str, str]] = None, envs: Optional[Dict[str, str]] = None,
                     **opts: Any) -> "AsyncSandbox":
        """Creates a sandbox (see :meth:`Sandbox.create`)."""
        conn = _connection(opts)
        if template is not None:
            warnings.warn(f"airlock.e2b: template {template!r} ignored (airlock has no sandbox images)",
                          stacklevel=2)
        for k in _IGNORED_WITH_WARNING:
            if opts.pop(k, None) is not None:
                warnings.warn(f"airlock.e2b: {k}= is not supported and was ignored", stacklevel=2)
        limits, backend = opts.pop("limits", None), opts.pop("backend", None)
        if opts:
            raise InvalidArgumentException(f"unknown arguments: {', '.join(sorted(opts))}", code="invalid_request")
        with _Translated():
            inner = await _AsyncSandbox.create(backend=backend, limits=limits, timeout=timeout, env=envs,
                                               metadata=metadata, **conn)
        return cls(inner)

    @classmethod
    async def connect(cls, sandbox_id: str, **opts: Any) -> "AsyncSandbox":
        """Attaches to an existing sandbox."""
        with _Translated():
            return cls(await _AsyncSandbox.connect(sandbox_id, **_connection(opts)))

    @property
    def sandbox_id(self) -> str:
        """The sandbox's id."""
        return self._inner.id

    async def run_code(
        self,
        code: str,
        language: Optional[str] = None,
        context: Any = None,
        on_stdout: Optional[Callable[[OutputMessage], Any]] = None,
        on_stderr: Optional[Callable[[OutputMessage], Any]] = None,
        on_result: Optional[Callable[[Result], Any]] = None,
        on_error: Optional[Callable[[ExecutionError], Any]] = None,
        envs: Optional[Dict[str, str]] = None,
        timeout: Optional[float] = None,
        request_timeout: Optional[float] = None,
    ) -> Execution:
        """Runs code (see :meth:`Sandbox.run_code`); callbacks may be coroutines."""
        if context is not None or envs:
            raise InvalidArgumentException("contexts and per-run envs are not supported by airlock",
                                           code="invalid_request")
        results: List[Result] = []
        cb = _Callbacks(on_stdout, on_stderr, on_result, on_error, results)
        with _Translated():
            ex = await self._inner.run_code(
                code, language=_language(language), on_stdout=cb.stdout, on_stderr=cb.stderr,
                on_result=cb.result, on_error=cb.error, timeout=timeout or None,
            )
        if ex.status == "timeout":
            raise TimeoutException(ex.reason or "the cell ran out of time", code="timeout", execution_id=ex.id)
        return _shim_execution(ex, results)

    async def is_running(self, **_: Any) -> bool:
        """True while the sandbox exists."""
        with _Translated():
            return await self._inner.is_running()

    async def kill(self, **_: Any) -> bool:
        """Destroys the sandbox; False if it was already gone."""
        with _Translated():
            return await self._inner.kill()

    async def __aenter__(self) -> "AsyncSandbox":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.kill()


class _AsyncFilesystem:
    """``AsyncSandbox.files``."""

    def __init__(self, sbx: AsyncSandbox) -> None:
        self._sbx = sbx

    async def read(self, path: str, format: str = "text", **_: Any) -> Any:
        """Reads a file as ``"text"`` or ``"bytes"``."""
        with _Translated():
            return await self._sbx._inner.files.read(_workspace_path(path), format=format)

    async def write(self, path: str, data: Union[str, bytes, Any], **_: Any) -> WriteInfo:
        """Writes a file."""
        with _Translated():
            e = await self._sbx._inner.files.write(_workspace_path(path), data)
        return WriteInfo(name=e.name, type=FileType.FILE, path=path)

    async def remove(self, path: str, **_: Any) -> None:
        """Removes a file."""
        with _Translated():
            await self._sbx._inner.files.remove(_workspace_path(path))

    async def exists(self, path: str, **_: Any) -> bool:
        """True if the file exists."""
        with _Translated():
            return await self._sbx._inner.files.exists(_workspace_path(path))


__all__ = [
    "AsyncSandbox",
    "AuthenticationException",
    "CommandExitException",
    "CommandResult",
    "EntryInfo",
    "Execution",
    "ExecutionError",
    "FileType",
    "InvalidArgumentException",
    "Logs",
    "NotFoundException",
    "OutputMessage",
    "RateLimitException",
    "Result",
    "Sandbox",
    "SandboxException",
    "TimeoutException",
    "WriteInfo",
]
