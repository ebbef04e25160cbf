"""What the sync and async clients share, without any I/O: configuration, request
bodies, the retry policy, error mapping and the streamed-event decoder."""

from __future__ import annotations

import base64
import json
import os
import random
import ssl
import threading
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

import httpx

from ._errors import AirlockError, NotFound, ServerError, error_for
from ._models import Execution, ExecutionError, Logs, Result, limits_json, LimitsLike

DEFAULT_URL = "http://127.0.0.1:8080"
"""The server the SDK talks to when neither ``url=`` nor ``AIRLOCK_URL`` says otherwise."""

DEFAULT_REQUEST_TIMEOUT_S = 30.0
"""How long a request other than a run may take, in seconds."""

EXECUTION_MARGIN_S = 30.0
"""How much longer than a run's own time limit the client waits for it: the server may
queue the run for a while (10 s by default) and needs time to stop it."""

DEFAULT_EXECUTION_TIMEOUT_S = 3600.0 + EXECUTION_MARGIN_S
"""How long the client waits for a run whose time limit it does not know (a one-shot
run without ``timeout=`` takes the server's default, which may be configured up to
the server's maximum, one hour by default)."""

USER_AGENT = "airlock-python/0.1.0"

FilesArg = Union[Mapping[str, Union[str, bytes]], None]


def resolve_url(url: Optional[str]) -> str:
    """``url``, else ``$AIRLOCK_URL``, else :data:`DEFAULT_URL`; without a trailing slash."""
    u = url or os.environ.get("AIRLOCK_URL") or DEFAULT_URL
    if "://" not in u:
        raise ValueError(f"airlock URL {u!r} has no scheme; use e.g. 'http://127.0.0.1:8080'")
    return u.rstrip("/")


def resolve_api_key(api_key: Optional[str]) -> Optional[str]:
    """``api_key``, else ``$AIRLOCK_API_KEY``, else none (a loopback server without
    required keys accepts that)."""
    k = api_key if api_key is not None else os.environ.get("AIRLOCK_API_KEY")
    return k or None


_SSL_LOCK = threading.Lock()
_SSL_CONTEXTS: Dict[bool, ssl.SSLContext] = {}


def ssl_context(url: str) -> ssl.SSLContext:
    """A TLS context for clients of ``url``, made once per process.

    Loading the CA bundle costs tens of milliseconds, which every new client would
    otherwise pay (``airlock.run`` makes one per call). A plain ``http://`` server
    gets a context with no CAs at all: it is never used, and would fail closed if it
    were.
    """
    https = url.lower().startswith("https://")
    with _SSL_LOCK:
        ctx = _SSL_CONTEXTS.get(https)
        if ctx is None:
            if https:
                try:
                    import certifi

                    ctx = ssl.create_default_context(cafile=certifi.where())
                except ImportError:  # pragma: no cover - httpx depends on certifi
                    ctx = ssl.create_default_context()
            else:
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            _SSL_CONTEXTS[https] = ctx
        return ctx


def base_headers(api_key: Optional[str]) -> Dict[str, str]:
    """Headers of every request."""
    h = {"User-Agent": USER_AGENT}
    if api_key:
        h["Authorization"] = f"Bearer {api_key}"
    return h


def seconds_to_ms(seconds: Optional[float], what: str) -> Optional[int]:
    """Seconds (as users write them) to the API's milliseconds."""
    if seconds is None:
        return None
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise TypeError(f"{what} must be a number of seconds, not {type(seconds).__name__}")
    if seconds <= 0:
        raise ValueError(f"{what} must be positive (got {seconds}); it is in seconds")
    return max(1, int(round(seconds * 1000)))


def file_inputs(files: FilesArg) -> List[Dict[str, str]]:
    """The ``files`` of an execute request: text as UTF-8, bytes as base64."""
    out: List[Dict[str, str]] = []
    for path, data in (files or {}).items():
        if isinstance(data, str):
            out.append({"path": path, "content": data, "encoding": "utf8"})
        elif isinstance(data, (bytes, bytearray, memoryview)):
            out.append({"path": path, "content": base64.b64encode(bytes(data)).decode("ascii"), "encoding": "base64"})
        else:
            raise TypeError(f"file {path!r}: content must be str or bytes, not {type(data).__name__}")
    return out


def execute_body(
    code: str,
    *,
    language: str,
    limits: LimitsLike,
    timeout: Optional[float],
    global_variables: Optional[Mapping[str, Any]] = None,
    files: FilesArg = None,
    env: Optional[Mapping[str, str]] = None,
    backend: Optional[str] = None,
    network: Optional[str] = None,
    outputs: Optional[List[str]] = None,
) -> Dict[str, Any]:
    """The JSON body of ``POST /v1/execute`` or ``POST /v1/sandboxes/{id}/execute``."""
    if not isinstance(code, str):
        raise TypeError(f"code must be a str, not {type(code).__name__}")
    body: Dict[str, Any] = {"language": language, "code": code}
    lim = limits_json(limits)
    t = seconds_to_ms(timeout, "timeout")
    if t is not None:
        lim["timeout_ms"] = t
    if lim:
        body["limits"] = lim
    if global_variables:
        body["global_variables"] = dict(global_variables)
    if files:
        body["files"] = file_inputs(files)
    if env:
        body["env"] = dict(env)
    if backend is not None:
        body["backend"] = backend
    if network is not None:
        body["network"] = network
    if outputs:
        body["outputs"] = list(outputs)
    return body


BACKENDS = ("process", "jail", "wasm", "microvm")


def create_body(
    *,
    backend: Optional[str],
    template: Optional[str],
    limits: LimitsLike,
    timeout: Optional[float],
    idle_timeout: Optional[float],
    env: Optional[Mapping[str, str]],
    network: Optional[str],
    metadata: Optional[Mapping[str, str]],
) -> Dict[str, Any]:
    """The JSON body of ``POST /v1/sandboxes``."""
    if template is not None:
        if template not in BACKENDS:
            raise ValueError(
                f"template {template!r} is unknown: airlock has no sandbox images; a sandbox runs the "
                f"server's own interpreter. Name a backend instead ({', '.join(BACKENDS)}), or leave "
                "template out"
            )
        if backend is not None and backend != template:
            raise ValueError(f"backend={backend!r} and template={template!r} disagree; give one of them")
        backend = template
    body: Dict[str, Any] = {}
    if backend is not None:
        body["backend"] = backend
    lim = limits_json(limits)
    if lim:
        body["limits"] = lim
    life = seconds_to_ms(timeout, "timeout")
    if life is not None:
        body["max_lifetime_ms"] = life
    idle = seconds_to_ms(idle_timeout, "idle_timeout")
    if idle is not None:
        body["idle_timeout_ms"] = idle
    if env:
        body["env"] = dict(env)
    if network is not None:
        body["network"] = network
    if metadata:
        body["metadata"] = dict(metadata)
    return body


def file_url(sandbox_id: str, path: str) -> str:
    """The URL path of a workspace file. A leading ``/`` is kept (encoded), so that the
    server refuses an absolute path outside the workspace with its own message."""
    if not isinstance(path, str) or path == "":
        raise ValueError("a file path must be a non-empty string, relative to the workspace")
    lead = ""
    if path.startswith("/"):
        lead, path = "%2F", path[1:]
    # Dot segments are encoded: HTTP clients would otherwise resolve `a/../b` to `b`
    # before sending, and the server could not refuse what it never saw.
    segs = [urllib.parse.quote(seg, safe="").replace(".", "%2E") if seg in (".", "..") else
            urllib.parse.quote(seg, safe="") for seg in path.split("/")]
    return f"/v1/sandboxes/{quote_id(sandbox_id)}/files/{lead}{'/'.join(segs)}"


def quote_id(sandbox_id: str) -> str:
    """A sandbox id as a URL path segment."""
    if not isinstance(sandbox_id, str) or not sandbox_id:
        raise ValueError("a sandbox id must be a non-empty string (like 'sbx_...')")
    return urllib.parse.quote(sandbox_id, safe="")


def execution_timeout_s(timeout_ms: Optional[int]) -> float:
    """How long to wait for the response of a run whose time limit is ``timeout_ms``."""
    if timeout_ms is None:
        return DEFAULT_EXECUTION_TIMEOUT_S
    return timeout_ms / 1000.0 + EXECUTION_MARGIN_S


# ---- retries ----


@dataclass
class RetryPolicy:
    """When a failed request is sent again.

    - Requests that cannot have reached the server (no connection could be made) are
      retried whatever they are.
    - ``GET``, ``PUT`` and ``DELETE`` (idempotent) are also retried after a broken
      connection, a ``502``/``504`` or a ``429 overloaded``.
    - Creating a sandbox and starting a run are retried after a ``429 overloaded`` (the
      server refused them before doing anything), honouring ``Retry-After``, but never
      after the request may have reached the server otherwise: a run is never run
      twice.
    - A ``429 quota_exceeded`` is not retried: waiting does not free a sandbox.
    - A ``503 audit_unavailable`` is retried like a ``429``: the server ran nothing.
    - A request sent with an idempotency key is idempotent: it is also retried after a
      broken connection (a streaming run too, mid-stream), and while the server says
      ``409 idempotency_in_progress``; the retry gets the first request's answer.

    Attributes:
        max_attempts: Attempts in all, the first included.
        budget_s: The longest total time spent waiting between attempts, in seconds.
        backoff_s: The first wait when the server gives no ``Retry-After``; it doubles.
    """

    max_attempts: int = 4
    budget_s: float = 30.0
    backoff_s: float = 0.25

    def delay(
        self,
        kind: str,
        attempt: int,
        waited_s: float,
        *,
        status: Optional[int] = None,
        code: Optional[str] = None,
        retry_after: Optional[float] = None,
        exc: Optional[BaseException] = None,
    ) -> Optional[float]:
        """Seconds to wait before attempt ``attempt + 1``, or ``None`` not to retry.

        ``kind`` is ``idempotent``, ``create`` or ``execute``.
        """
        if attempt >= self.max_attempts:
            return None
        retry = False
        if exc is not None:
            if not_sent(exc):
                retry = True
            elif kind == "idempotent" and isinstance(exc, httpx.TransportError):
                retry = True
        elif status == 429 and code != "quota_exceeded":
            retry = True
        elif status == 503 and code == "audit_unavailable":
            retry = True
        elif status == 409 and code == "idempotency_in_progress":
            retry = True
        elif status in (502, 504) and kind == "idempotent":
            retry = True
        if not retry:
            return None
        d = retry_after if retry_after is not None else self.backoff_s * (2 ** (attempt - 1))
        d = d * (1.0 + 0.1 * random.random())  # a little jitter
        if waited_s + d > self.budget_s:
            return None
        return d


def not_sent(exc: BaseException) -> bool:
    """True when the request certainly did not reach the server."""
    return isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout))


def retry_after_s(headers: Mapping[str, str]) -> Optional[float]:
    """The ``Retry-After`` header in seconds (delay-seconds form only)."""
    v = headers.get("retry-after")
    if v is None:
        return None
    try:
        return max(0.0, float(v))
    except ValueError:
        return None


def parse_error_body(body: bytes) -> Tuple[str, str]:
    """``(code, message)`` of an error response; a body that is not airlock's error JSON
    (a proxy's HTML page, say) becomes its text."""
    try:
        doc = json.loads(body.decode("utf-8", "replace"))
        err = doc.get("error") if isinstance(doc, dict) else None
        if isinstance(err, dict):
            return str(err.get("code") or "error"), str(err.get("message") or "")
    except ValueError:
        pass
    text = body.decode("utf-8", "replace").strip()
    return "http_error", (text[:500] or "the server answered with an error and no body")


def response_error(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    not_found: type = NotFound,
) -> AirlockError:
    """The exception for an error response."""
    code, message = parse_error_body(body)
    if code == "http_error":
        message = f"HTTP {status}: {message}"
    return error_for(
        status,
        code,
        message,
        retry_after=retry_after_s(headers),
        execution_id=headers.get("x-airlock-execution-id"),
        not_found=not_found,
    )


def transport_error(exc: BaseException, url: str, *, execution_id: Optional[str] = None) -> AirlockError:
    """The exception for a failure of the connection itself."""
    from ._errors import ConnectionFailed, Timeout

    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
        return ConnectionFailed(
            f"cannot connect to the airlock server at {url}: {exc}. Is `airlock serve` running there? "
            "Set AIRLOCK_URL or pass url= to point elsewhere",
            code="connection_failed",
        )
    if isinstance(exc, httpx.TimeoutException):
        extra = f" (execution {execution_id} may still be running on the server)" if execution_id else ""
        return Timeout(f"the server at {url} did not answer in time{extra}: {exc!r}", code="request_timeout",
                       execution_id=execution_id)
    return ServerError(f"the connection to {url} failed: {exc!r}", code="connection_failed", execution_id=execution_id)


# ---- streamed runs ----

Callback = Optional[Callable[[Any], Any]]


@dataclass
class StreamDecoder:
    """Turns the NDJSON lines of a streamed run into callbacks and, at the end, an
    :class:`Execution`.

    Lines look like ``{"type": "stdout", "text": "..."}``, ``{"type": "result",
    "data": {...}, "is_main_result": true}``, ``{"type": "error", "name": ...}`` and,
    last, ``{"type": "end", "outcome": {...}}`` or ``{"type": "end", "error": {"code":
    ..., "message": ...}}``.
    """

    execution_id: Optional[str] = None
    logs: Logs = field(default_factory=Logs)
    outcome: Optional[Dict[str, Any]] = None
    end_error: Optional[Dict[str, Any]] = None

    def feed(self, line: str) -> Optional[Tuple[str, Any]]:
        """Decodes one line; returns ``(event, payload)`` for the callback to call
        (``stdout``/``stderr`` with the text, ``result`` with a :class:`Result`,
        ``error`` with an :class:`ExecutionError`), or ``None``."""
        line = line.strip()
        if not line:
            return None
        try:
            ev = json.loads(line)
        except ValueError as e:
            raise ServerError(
                f"the server sent a line that is not JSON in a streamed run: {line[:200]!r} ({e})",
                code="bad_stream",
                execution_id=self.execution_id,
            ) from None
        kind = ev.get("type") if isinstance(ev, dict) else None
        if kind == "stdout":
            text = str(ev.get("text", ""))
            self.logs.stdout.append(text)
            return ("stdout", text)
        if kind == "stderr":
            text = str(ev.get("text", ""))
            self.logs.stderr.append(text)
            return ("stderr", text)
        if kind == "result":
            return ("result", Result.from_json(ev))
        if kind == "error":
            return ("error", ExecutionError.from_json(ev))
        if kind == "end":
            if isinstance(ev.get("outcome"), dict):
                self.outcome = ev["outcome"]
            else:
                self.end_error = ev.get("error") if isinstance(ev.get("error"), dict) else {}
            return None
        return None  # an event type this client does not know: ignored

    @property
    def ended(self) -> bool:
        """True once the ``end`` line has been read."""
        return self.outcome is not None or self.end_error is not None

    def finish(self, url: str) -> Execution:
        """The Execution, or the exception the run ended with."""
        if self.outcome is not None:
            # No output events (a replayed answer to an idempotency key is its `end`
            # line alone): the outcome's own stdout and stderr.
            streamed = bool(self.logs.stdout or self.logs.stderr)
            return Execution.from_outcome(self.outcome, logs=self.logs if streamed else None)
        if self.end_error is not None:
            code = str(self.end_error.get("code") or "internal")
            msg = str(self.end_error.get("message") or "the run failed on the server")
            return_err = error_for(None, code, msg, execution_id=self.execution_id)
            raise return_err
        raise ServerError(
            f"the stream from {url} ended before the run's outcome"
            + (f"; execution {self.execution_id} may have finished: look it up with get_execution()"
               if self.execution_id else ""),
            code="stream_interrupted",
            execution_id=self.execution_id,
        )


def plain_execution(outcome: Mapping[str, Any]) -> Execution:
    """An Execution from a non-streamed outcome."""
    return Execution.from_outcome(outcome)
