"""What the server returns, as Python objects: executions, results, sandboxes, files."""

from __future__ import annotations

import base64
import json as _json
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Union


@dataclass
class Limits:
    """Resource limits of a sandbox or of one execution. ``None`` means "the server's
    default" (30 s, 512 MiB, 64 processes, 1 MiB of output, 16 MiB of results, 64 MiB
    files unless the server is configured otherwise). Units are in the names.

    A sandbox's ``memory_bytes``, ``processes``, ``file_bytes`` and ``open_files``
    hold for its whole life; ``timeout_ms``, ``cpu_ms``, ``output_bytes`` and
    ``result_bytes`` are the defaults of each cell, which a cell may override.
    """

    timeout_ms: Optional[int] = None
    """Wall-clock time of one execution, in milliseconds."""
    cpu_ms: Optional[int] = None
    """CPU time of one execution, in milliseconds."""
    memory_bytes: Optional[int] = None
    """Memory of the whole sandbox, in bytes."""
    processes: Optional[int] = None
    """Processes and threads the sandbox may have at once."""
    output_bytes: Optional[int] = None
    """stdout and stderr together, in bytes, per execution."""
    result_bytes: Optional[int] = None
    """Rich results (displayed values, figures, the last value) together, in bytes of
    their JSON, per execution."""
    file_bytes: Optional[int] = None
    """The largest file the code may write, and the workspace's size, in bytes."""
    open_files: Optional[int] = None
    """Open file descriptors per process."""

    def to_json(self) -> Dict[str, int]:
        """The fields that are set, as the API takes them."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Limits":
        """Limits from the API's JSON (unknown keys are ignored)."""
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


LimitsLike = Union[Limits, Mapping[str, int], None]


def limits_json(limits: LimitsLike) -> Dict[str, Any]:
    """The JSON of ``limits`` given as :class:`Limits` or as a dict (passed through, so
    that the server names any unknown key)."""
    if limits is None:
        return {}
    if isinstance(limits, Limits):
        return limits.to_json()
    if isinstance(limits, Mapping):
        return {k: v for k, v in limits.items() if v is not None}
    raise TypeError(f"limits must be airlock.Limits or a dict, not {type(limits).__name__}")


# MIME type -> attribute name of Result.
_MIME_ATTRS = (
    ("text/plain", "text"),
    ("text/html", "html"),
    ("text/markdown", "markdown"),
    ("image/svg+xml", "svg"),
    ("image/png", "png"),
    ("image/jpeg", "jpeg"),
    ("application/pdf", "pdf"),
    ("text/latex", "latex"),
    ("application/json", "json"),
    ("application/javascript", "javascript"),
)


@dataclass
class Result:
    """One rich result of a cell: the same value in several MIME types.

    The value of the cell's last expression has ``is_main_result`` set; figures and
    ``display(x)`` calls add more results. In Jupyter a Result displays itself (as
    HTML, a PNG image, Markdown, ...).
    """

    data: Dict[str, Any] = field(default_factory=dict)
    """MIME type to content, as the server sent it (images are base64 text)."""
    is_main_result: bool = False
    """True for the value of the cell's last expression."""

    @property
    def text(self) -> Optional[str]:
        """The ``text/plain`` form (the value's ``repr``)."""
        return self._str("text/plain")

    @property
    def html(self) -> Optional[str]:
        """The ``text/html`` form (e.g. a DataFrame's table)."""
        return self._str("text/html")

    @property
    def markdown(self) -> Optional[str]:
        """The ``text/markdown`` form."""
        return self._str("text/markdown")

    @property
    def svg(self) -> Optional[str]:
        """The ``image/svg+xml`` form."""
        return self._str("image/svg+xml")

    @property
    def latex(self) -> Optional[str]:
        """The ``text/latex`` form."""
        return self._str("text/latex")

    @property
    def javascript(self) -> Optional[str]:
        """The ``application/javascript`` form."""
        return self._str("application/javascript")

    @property
    def json(self) -> Any:
        """The ``application/json`` form: plain data (dicts, lists, numbers...)."""
        return self.data.get("application/json")

    @property
    def png(self) -> Optional[bytes]:
        """The ``image/png`` form, decoded: the bytes of a PNG file."""
        return self._bytes("image/png")

    @property
    def jpeg(self) -> Optional[bytes]:
        """The ``image/jpeg`` form, decoded."""
        return self._bytes("image/jpeg")

    @property
    def pdf(self) -> Optional[bytes]:
        """The ``application/pdf`` form, decoded."""
        return self._bytes("application/pdf")

    def formats(self) -> List[str]:
        """The short names of the forms present (``text``, ``html``, ``png``, ...)."""
        return [name for mime, name in _MIME_ATTRS if self.data.get(mime) is not None]

    def _str(self, mime: str) -> Optional[str]:
        v = self.data.get(mime)
        return v if isinstance(v, str) else None

    def _bytes(self, mime: str) -> Optional[bytes]:
        v = self.data.get(mime)
        if not isinstance(v, str):
            return None
        return base64.b64decode(v)

    # Jupyter's display protocol.
    def _repr_html_(self) -> Optional[str]:
        return self.html

    def _repr_markdown_(self) -> Optional[str]:
        return self.markdown

    def _repr_svg_(self) -> Optional[str]:
        return self.svg

    def _repr_png_(self) -> Optional[bytes]:
        return self.png

    def _repr_jpeg_(self) -> Optional[bytes]:
        return self.jpeg

    def _repr_latex_(self) -> Optional[str]:
        return self.latex

    def _repr_json_(self) -> Any:
        return self.json

    def __repr__(self) -> str:
        main = ", main" if self.is_main_result else ""
        if self.text is not None:
            t = self.text if len(self.text) <= 80 else self.text[:77] + "..."
            return f"Result({t}{main})"
        return f"Result(formats: {', '.join(self.formats())}{main})"

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Result":
        """A result from the API's JSON (``{"data": {...}, "is_main_result": ...}``)."""
        return cls(data=dict(d.get("data") or {}), is_main_result=bool(d.get("is_main_result", False)))


@dataclass
class Logs:
    """Output of a run, in the chunks it was streamed in (lines, usually)."""

    stdout: List[str] = field(default_factory=list)
    """Chunks written to standard output."""
    stderr: List[str] = field(default_factory=list)
    """Chunks written to standard error."""


@dataclass
class ExecutionError:
    """The uncaught exception of a Python cell (or a failed bash script)."""

    name: str
    """The exception type, e.g. ``ZeroDivisionError``."""
    value: str
    """The exception message, e.g. ``division by zero``."""
    traceback: str
    """The formatted traceback, showing only your code."""

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "ExecutionError":
        """An error from the API's JSON."""
        return cls(name=str(d.get("name", "")), value=str(d.get("value", "")), traceback=str(d.get("traceback", "")))


@dataclass
class Usage:
    """Resources one execution used."""

    wall_ms: int = 0
    """Wall-clock time of the execution, in milliseconds."""
    cpu_ms: int = 0
    """CPU time (user + system), in milliseconds, where the backend measures it."""
    peak_memory_bytes: int = 0
    """Peak memory of the sandbox, in bytes, where the backend measures it."""
    startup_ms: int = 0
    """Time spent creating the sandbox before the code started (0 for later cells)."""
    instructions: Optional[int] = None
    """WebAssembly instructions executed (the ``wasm`` backend only)."""

    @classmethod
    def from_json(cls, d: Optional[Mapping[str, Any]]) -> "Usage":
        """Usage from the API's JSON."""
        d = d or {}
        return cls(
            wall_ms=int(d.get("wall_ms", 0)),
            cpu_ms=int(d.get("cpu_ms", 0)),
            peak_memory_bytes=int(d.get("peak_memory_bytes", 0)),
            startup_ms=int(d.get("startup_ms", 0)),
            instructions=d.get("instructions"),
        )


@dataclass
class OutputFile:
    """A file returned from a one-shot run's workspace (``outputs=[...]``)."""

    path: str
    """Path relative to the workspace."""
    size: int
    """Size in bytes."""
    content: Optional[bytes] = None
    """The file's bytes; ``None`` when it was missing or too large (see ``error``)."""
    error: Optional[str] = None
    """Why ``content`` is missing."""

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "OutputFile":
        """An output file from the API's JSON."""
        b64 = d.get("content_base64")
        return cls(
            path=str(d.get("path", "")),
            size=int(d.get("size", 0)),
            content=base64.b64decode(b64) if isinstance(b64, str) else None,
            error=d.get("error"),
        )


@dataclass
class Execution:
    """The result of running code: output, rich results, the error if any, and why it
    ended.

    A run whose code fails is still an Execution (``status`` is ``error``,
    ``timeout``, ``memory_limit``, ``output_limit``, ``killed`` or ``denied``, and
    ``reason`` says why); exceptions are kept for faults of the service itself.
    """

    results: List[Result] = field(default_factory=list)
    """Rich results: displayed values and figures, and the last expression's value."""
    logs: Logs = field(default_factory=Logs)
    """stdout and stderr in chunks."""
    error: Optional[ExecutionError] = None
    """The uncaught exception, if any."""
    status: str = "ok"
    """``ok``, ``error``, ``timeout``, ``memory_limit``, ``output_limit``, ``killed``
    or ``denied``."""
    reason: Optional[str] = None
    """A sentence saying why the run stopped, for every status but ``ok``."""
    usage: Usage = field(default_factory=Usage)
    """Resources used."""
    execution_count: int = 0
    """The cell's number in its sandbox (1 for the first)."""
    id: str = ""
    """The execution's id (``exe_...``), its key in the server's audit log."""
    sandbox_id: Optional[str] = None
    """The sandbox it ran in."""
    backend: str = ""
    """The backend that ran it (``process``, ``jail``, ``wasm``, ``microvm``)."""
    isolation: str = ""
    """The kind of boundary around it (``none`` for the process backend)."""
    exit_code: Optional[int] = None
    """The program's exit status, when it exited (bash scripts, ``sys.exit``)."""
    stdout_truncated: bool = False
    """True when stdout was cut at the output limit."""
    stderr_truncated: bool = False
    """True when stderr was cut at the output limit."""
    results_truncated: bool = False
    """True when results were dropped at the result limit (``limits.result_bytes``)."""
    files: List[OutputFile] = field(default_factory=list)
    """Files asked for with ``outputs=`` (one-shot runs)."""
    warnings: List[str] = field(default_factory=list)
    """Things to know: a limit the backend could not enforce here, a fallback taken."""
    audit: str = "recorded"
    """Whether the server's audit log holds the run's end: ``recorded``, or
    ``pending`` (its store refused the write; it is retried) or ``unrecorded``."""
    outcome: Dict[str, Any] = field(default_factory=dict, repr=False)
    """The server's full outcome, as JSON."""

    @property
    def ok(self) -> bool:
        """True when the code ran to the end without an error."""
        return self.status == "ok"

    @property
    def main_result(self) -> Optional[Result]:
        """The value of the cell's last expression, if it had one."""
        for r in self.results:
            if r.is_main_result:
                return r
        return None

    @property
    def text(self) -> Optional[str]:
        """The ``text/plain`` form of the main result (``"42"`` for a cell ending in
        ``6 * 7``), or ``None``."""
        m = self.main_result
        return m.text if m is not None else None

    @property
    def stdout(self) -> str:
        """All of standard output, as one string."""
        return "".join(self.logs.stdout)

    @property
    def stderr(self) -> str:
        """All of standard error, as one string."""
        return "".join(self.logs.stderr)

    def file(self, path: str) -> bytes:
        """The content of an output file asked for with ``outputs=[path]``.

        Raises:
            KeyError: no such output, or it had no content (the message says why).
        """
        for f in self.files:
            if f.path == path or f.path == path.lstrip("/"):
                if f.content is None:
                    raise KeyError(f"output '{path}' has no content: {f.error or 'unknown reason'}")
                return f.content
        raise KeyError(f"no output '{path}'; ask for it with outputs=['{path}']")

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> Dict[str, Any]:
        # In Jupyter, an Execution displays as its main result (or its output).
        m = self.main_result
        if m is not None and m.data:
            return dict(m.data)
        return {"text/plain": repr(self)}

    @classmethod
    def from_outcome(cls, outcome: Mapping[str, Any], logs: Optional[Logs] = None) -> "Execution":
        """An Execution from the server's Outcome JSON. ``logs`` are the streamed chunks
        when the run was streamed; otherwise the outcome's whole stdout/stderr."""
        if logs is None:
            logs = Logs(
                stdout=[outcome["stdout"]] if outcome.get("stdout") else [],
                stderr=[outcome["stderr"]] if outcome.get("stderr") else [],
            )
        err = outcome.get("error")
        return cls(
            results=[Result.from_json(r) for r in outcome.get("results") or []],
            logs=logs,
            error=ExecutionError.from_json(err) if err else None,
            status=str(outcome.get("status", "ok")),
            reason=outcome.get("reason"),
            usage=Usage.from_json(outcome.get("usage")),
            execution_count=int(outcome.get("execution_count") or 0),
            id=str(outcome.get("id", "")),
            sandbox_id=outcome.get("sandbox_id"),
            backend=str(outcome.get("backend", "")),
            isolation=str(outcome.get("isolation", "")),
            exit_code=outcome.get("exit_code"),
            stdout_truncated=bool(outcome.get("stdout_truncated", False)),
            stderr_truncated=bool(outcome.get("stderr_truncated", False)),
            results_truncated=bool(outcome.get("results_truncated", False)),
            files=[OutputFile.from_json(f) for f in outcome.get("files") or []],
            warnings=list(outcome.get("warnings") or []),
            audit=str(outcome.get("audit") or "recorded"),
            outcome=dict(outcome),
        )

    def __repr__(self) -> str:
        parts = [f"status={self.status!r}"]
        if self.text is not None:
            parts.append(f"text={self.text!r}")
        if self.logs.stdout:
            out = self.stdout
            parts.append(f"stdout={out if len(out) <= 60 else out[:57] + '...'!r}")
        if self.error is not None:
            parts.append(f"error={self.error.name}: {self.error.value}")
        return f"Execution({', '.join(parts)})"


@dataclass
class SandboxInfo:
    """A sandbox as the server describes it."""

    id: str
    """The sandbox's id (``sbx_...``)."""
    backend: str
    """The backend it runs on."""
    isolation: str
    """The kind of boundary around it."""
    status: str
    """``idle``, ``running`` or ``stopped``."""
    limits: Limits
    """Its limits."""
    network: str = "none"
    """Its network access (``none`` or ``host``)."""
    metadata: Dict[str, str] = field(default_factory=dict)
    """Your labels."""
    execution_count: int = 0
    """Cells run so far."""
    created_at: str = ""
    """Creation time (RFC 3339)."""
    last_active_at: str = ""
    """Time of the last request that used it (RFC 3339)."""
    expires_at: str = ""
    """When it will be destroyed if nothing uses it (RFC 3339)."""
    idle_timeout_ms: int = 0
    """Its idle timeout, in milliseconds."""
    max_lifetime_ms: int = 0
    """Its lifetime, in milliseconds."""
    stopped_reason: Optional[str] = None
    """Why it stopped, when it did."""
    running_execution_id: Optional[str] = None
    """The execution running now, if any."""

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "SandboxInfo":
        """Sandbox info from the API's JSON."""
        return cls(
            id=str(d["id"]),
            backend=str(d.get("backend", "")),
            isolation=str(d.get("isolation", "")),
            status=str(d.get("status", "")),
            limits=Limits.from_json(d.get("limits") or {}),
            network=str(d.get("network", "none")),
            metadata=dict(d.get("metadata") or {}),
            execution_count=int(d.get("execution_count") or 0),
            created_at=str(d.get("created_at", "")),
            last_active_at=str(d.get("last_active_at", "")),
            expires_at=str(d.get("expires_at", "")),
            idle_timeout_ms=int(d.get("idle_timeout_ms") or 0),
            max_lifetime_ms=int(d.get("max_lifetime_ms") or 0),
            stopped_reason=d.get("stopped_reason"),
            running_execution_id=d.get("running_execution_id"),
        )


@dataclass
class FileEntry:
    """An entry of a workspace listing."""

    path: str
    """Path relative to the workspace."""
    size: int
    """Size in bytes (0 for directories)."""
    is_dir: bool
    """True for directories."""

    @property
    def name(self) -> str:
        """The last component of the path."""
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "FileEntry":
        """An entry from the API's JSON."""
        return cls(path=str(d["path"]), size=int(d.get("size", 0)), is_dir=bool(d.get("is_dir", False)))


def dumps(obj: Any) -> str:
    """Compact JSON."""
    return _json.dumps(obj, separators=(",", ":"))
