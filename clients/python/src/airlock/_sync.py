"""The synchronous client: :class:`Client`, :class:`Sandbox`, :func:`run`."""

from __future__ import annotations

import io
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

import httpx

from . import _core
from ._core import FilesArg, RetryPolicy
from ._errors import FileNotFound, NotFound, SandboxNotFound
from ._models import Execution, ExecutionError, FileEntry, LimitsLike, Result, SandboxInfo, dumps

StrCallback = Optional[Callable[[str], Any]]
ResultCallback = Optional[Callable[[Result], Any]]
ErrorCallback = Optional[Callable[[ExecutionError], Any]]


class Client:
    """A connection to one airlock server.

    Args:
        url: The server, e.g. ``http://127.0.0.1:8080``; default ``$AIRLOCK_URL``, else
            ``http://127.0.0.1:8080``.
        api_key: The API key (``ak_...``); default ``$AIRLOCK_API_KEY``. A server on
            loopback without ``--auth required`` needs none.
        request_timeout: How long a request other than a run may take, in seconds.
        retry: When failed requests are retried (see :class:`RetryPolicy`).
        http_client: An ``httpx.Client`` to use (its base URL and auth are left alone;
            the SDK sends full URLs and its own headers).

    A Client is thread-safe. Close it with :meth:`close` (or use it as a context
    manager); sandboxes created through it keep working until then.
    """

    def __init__(
        self,
        url: Optional[str] = None,
        api_key: Optional[str] = None,
        *,
        request_timeout: float = _core.DEFAULT_REQUEST_TIMEOUT_S,
        retry: Optional[RetryPolicy] = None,
        http_client: Optional[httpx.Client] = None,
    ) -> None:
        self.url = _core.resolve_url(url)
        self.api_key = _core.resolve_api_key(api_key)
        self.request_timeout = request_timeout
        self.retry = retry or RetryPolicy()
        self._owns_http = http_client is None
        self._http = http_client or httpx.Client(timeout=request_timeout, verify=_core.ssl_context(self.url))
        self._headers = _core.base_headers(self.api_key)

    def close(self) -> None:
        """Closes the connections (not the sandboxes: they live on the server)."""
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"airlock.Client({self.url!r})"

    # ---- plumbing ----

    def _request(
        self,
        method: str,
        path: str,
        kind: str,
        *,
        json: Any = None,
        content: Optional[bytes] = None,
        params: Optional[Dict[str, str]] = None,
        timeout: Optional[float] = None,
        not_found: type = NotFound,
        content_type: Optional[str] = None,
        extra_headers: Optional[Dict[str, str]] = None,
    ) -> httpx.Response:
        """Sends a request, retrying as the policy allows; returns a successful response
        (read) or raises the matching :class:`AirlockError`."""
        url = self.url + path
        headers = dict(self._headers)
        headers.update(extra_headers or {})
        body = content
        if json is not None:
            body = dumps(json).encode()
            headers["Content-Type"] = "application/json"
        elif content_type is not None:
            headers["Content-Type"] = content_type
        elif method not in ("GET", "HEAD"):
            # The server refuses a state-changing request without a non-form
            # Content-Type (its guard against cross-site requests from web pages).
            headers["Content-Type"] = "application/json"
        attempt, waited = 1, 0.0
        while True:
            try:
                r = self._http.request(
                    method, url, content=body, params=params, headers=headers,
                    timeout=timeout if timeout is not None else self.request_timeout,
                )
            except httpx.TransportError as e:
                d = self.retry.delay(kind, attempt, waited, exc=e)
                if d is None:
                    raise _core.transport_error(e, self.url) from None
            else:
                if r.is_success:
                    return r
                err = _core.response_error(r.status_code, r.headers, r.content, not_found=not_found)
                d = self.retry.delay(kind, attempt, waited, status=r.status_code, code=err.code,
                                     retry_after=getattr(err, "retry_after", None))
                if d is None:
                    raise err
            time.sleep(d)
            waited += d
            attempt += 1

    def _execute(
        self,
        path: str,
        body: Dict[str, Any],
        timeout_ms: Optional[int],
        on_stdout: StrCallback,
        on_stderr: StrCallback,
        on_result: ResultCallback,
        on_error: ErrorCallback,
        not_found: type = NotFound,
        idempotency_key: Optional[str] = None,
    ) -> Execution:
        """Starts a run and reads its event stream to the end, calling the callbacks as
        events arrive. Retried only when the server certainly did not start it."""
        url = self.url + path
        headers = dict(self._headers)
        headers["Content-Type"] = "application/json"
        headers["Accept"] = "application/x-ndjson"
        # With a key, a resent run cannot run twice: the server answers with the first.
        kind = "execute"
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
            kind = "idempotent"
        data = dumps(body).encode()
        wait = _core.execution_timeout_s(timeout_ms)
        timeout = httpx.Timeout(self.request_timeout, read=wait)
        attempt, waited = 1, 0.0
        while True:
            try:
                with self._http.stream("POST", url, content=data, headers=headers, timeout=timeout) as r:
                    if not r.is_success:
                        r.read()
                        err = _core.response_error(r.status_code, r.headers, r.content, not_found=not_found)
                        d = self.retry.delay(kind, attempt, waited, status=r.status_code, code=err.code,
                                             retry_after=getattr(err, "retry_after", None))
                        if d is None:
                            raise err
                    else:
                        return self._read_stream(
                            r, on_stdout, on_stderr, on_result, on_error, resend=idempotency_key is not None
                        )
            except httpx.TransportError as e:
                d = self.retry.delay(kind, attempt, waited, exc=e)
                if d is None:
                    raise _core.transport_error(e, self.url) from None
            time.sleep(d)
            waited += d
            attempt += 1

    def _read_stream(
        self,
        r: httpx.Response,
        on_stdout: StrCallback,
        on_stderr: StrCallback,
        on_result: ResultCallback,
        on_error: ErrorCallback,
        resend: bool = False,
    ) -> Execution:
        dec = _core.StreamDecoder(execution_id=r.headers.get("x-airlock-execution-id"))
        callbacks = {"stdout": on_stdout, "stderr": on_stderr, "result": on_result, "error": on_error}
        try:
            for line in r.iter_lines():
                ev = dec.feed(line)
                if ev is not None:
                    cb = callbacks[ev[0]]
                    if cb is not None:
                        cb(ev[1])
                if dec.ended:
                    break
        except httpx.TransportError as e:
            if resend:
                raise  # the caller sends it again: the server answers with the first run's result
            raise _core.transport_error(e, self.url, execution_id=dec.execution_id) from None
        return dec.finish(self.url)

    # ---- the API ----

    def health(self) -> Dict[str, Any]:
        """The server's health summary (``GET /healthz``): status, version, backends."""
        return dict(self._request("GET", "/healthz", "idempotent").json())

    def run(
        self,
        code: str,
        *,
        language: str = "python",
        timeout: Optional[float] = None,
        limits: LimitsLike = None,
        files: FilesArg = None,
        outputs: Optional[List[str]] = None,
        env: Optional[Mapping[str, str]] = None,
        global_variables: Optional[Mapping[str, Any]] = None,
        backend: Optional[str] = None,
        network: Optional[str] = None,
        on_stdout: StrCallback = None,
        on_stderr: StrCallback = None,
        on_result: ResultCallback = None,
        on_error: ErrorCallback = None,
        idempotency_key: Optional[str] = None,
    ) -> Execution:
        """Runs code once in a fresh sandbox that is destroyed afterwards
        (``POST /v1/execute``). See :func:`airlock.run`."""
        body = _core.execute_body(
            code, language=language, limits=limits, timeout=timeout, global_variables=global_variables,
            files=files, env=env, backend=backend, network=network, outputs=outputs,
        )
        timeout_ms = body.get("limits", {}).get("timeout_ms")
        return self._execute(
            "/v1/execute", body, timeout_ms, on_stdout, on_stderr, on_result, on_error,
            idempotency_key=idempotency_key,
        )

    def create_sandbox(self, **kwargs: Any) -> "Sandbox":
        """Creates a sandbox through this client; the arguments are those of
        :meth:`Sandbox.create`."""
        return Sandbox.create(client=self, **kwargs)

    def connect(self, sandbox_id: str) -> "Sandbox":
        """A handle on an existing sandbox (see :meth:`Sandbox.connect`)."""
        return Sandbox.connect(sandbox_id, client=self)

    def list_sandboxes(self) -> List[SandboxInfo]:
        """Your live sandboxes, oldest first."""
        r = self._request("GET", "/v1/sandboxes", "idempotent")
        return [SandboxInfo.from_json(s) for s in r.json().get("sandboxes", [])]

    def get_sandbox(self, sandbox_id: str) -> SandboxInfo:
        """One sandbox's description. Raises :class:`SandboxNotFound`."""
        r = self._request("GET", f"/v1/sandboxes/{_core.quote_id(sandbox_id)}", "idempotent",
                          not_found=SandboxNotFound)
        return SandboxInfo.from_json(r.json())

    def delete_sandbox(self, sandbox_id: str) -> bool:
        """Destroys a sandbox (stopping a running cell). Returns False if it did not
        exist (any more)."""
        try:
            self._request("DELETE", f"/v1/sandboxes/{_core.quote_id(sandbox_id)}", "idempotent",
                          not_found=SandboxNotFound)
        except SandboxNotFound:
            return False
        return True

    def get_execution(self, execution_id: str) -> Dict[str, Any]:
        """An execution's record from the server's audit log (``GET
        /v1/executions/{id}``): status, output (capped), error, usage, times."""
        r = self._request("GET", f"/v1/executions/{_core.quote_id(execution_id)}", "idempotent")
        return dict(r.json())


class Files:
    """A sandbox's workspace: the directory its code runs in. Paths are relative to
    it (``data/input.csv``); ``/workspace/x`` names the same file as ``x``."""

    def __init__(self, sandbox: "Sandbox") -> None:
        self._sb = sandbox

    def _file_op(self, method: str, path: str, **kw: Any) -> httpx.Response:
        sb = self._sb
        sb._check_alive()
        try:
            return sb._client._request(method, _core.file_url(sb.id, path), "idempotent",
                                       not_found=FileNotFound, **kw)
        except FileNotFound:
            # 404 means either no such file or no such sandbox: tell them apart.
            sb._client.get_sandbox(sb.id)
            raise

    def write(self, path: str, data: Union[str, bytes, bytearray, io.IOBase]) -> FileEntry:
        """Writes a file (creating parent directories, replacing an existing file).

        ``data`` is text (written as UTF-8), bytes, or a binary file object.
        """
        if isinstance(data, str):
            content = data.encode("utf-8")
        elif isinstance(data, (bytes, bytearray, memoryview)):
            content = bytes(data)
        elif hasattr(data, "read"):
            raw = data.read()
            content = raw.encode("utf-8") if isinstance(raw, str) else bytes(raw)
        else:
            raise TypeError(f"data must be str, bytes or a file object, not {type(data).__name__}")
        r = self._file_op("PUT", path, content=content, content_type="application/octet-stream")
        return FileEntry.from_json(r.json())

    def read(self, path: str, format: str = "text") -> Any:
        """Reads a file: as text (``format="text"``, UTF-8) or bytes (``"bytes"``)."""
        if format not in ("text", "bytes"):
            raise ValueError(f"format must be 'text' or 'bytes', not {format!r}")
        data = self._file_op("GET", path).content
        return data.decode("utf-8") if format == "text" else data

    def read_bytes(self, path: str) -> bytes:
        """Reads a file's bytes."""
        return self.read(path, format="bytes")  # type: ignore[no-any-return]

    def list(self, path: str = "") -> List[FileEntry]:
        """Lists a directory of the workspace (default: all of it), recursively."""
        sb = self._sb
        sb._check_alive()
        try:
            r = sb._client._request("GET", f"/v1/sandboxes/{_core.quote_id(sb.id)}/files", "idempotent",
                                    params={"path": path} if path else None, not_found=FileNotFound)
        except FileNotFound:
            sb._client.get_sandbox(sb.id)
            raise
        return [FileEntry.from_json(e) for e in r.json().get("files", [])]

    def remove(self, path: str) -> None:
        """Removes a file or an empty directory."""
        self._file_op("DELETE", path)

    def exists(self, path: str) -> bool:
        """True if the file or directory exists."""
        norm = path[len("/workspace/"):] if path.startswith("/workspace/") else path
        norm = norm.strip("/")
        parent = norm.rsplit("/", 1)[0] if "/" in norm else ""
        try:
            entries = self.list(parent)
        except FileNotFound:
            return False
        return any(e.path.strip("/") == norm for e in entries)


class Sandbox:
    """A stateful sandbox: variables, imports and files persist between
    :meth:`run_code` calls, like a Jupyter kernel.

    Create one with :meth:`Sandbox.create` (best as a context manager, which destroys
    it on exit), or attach to an existing one with :meth:`Sandbox.connect`.

    Example::

        with Sandbox.create() as sbx:
            sbx.run_code("x = 6 * 7")
            print(sbx.run_code("x").text)   # 42
    """

    def __init__(self, info: SandboxInfo, client: Client, *, owns_client: bool = False) -> None:
        self.info = info
        """What the server said about the sandbox when this handle was made (see
        :meth:`refresh`)."""
        self._client = client
        self._owns_client = owns_client
        self._killed = False
        self.files = Files(self)
        """The sandbox's workspace files."""

    @property
    def id(self) -> str:
        """The sandbox's id (``sbx_...``)."""
        return self.info.id

    @property
    def sandbox_id(self) -> str:
        """The sandbox's id (the name E2B uses)."""
        return self.info.id

    @property
    def client(self) -> Client:
        """The client this sandbox talks through."""
        return self._client

    def __repr__(self) -> str:
        return f"Sandbox({self.id!r}, backend={self.info.backend!r})"

    @staticmethod
    def _client_for(client: Optional[Client], url: Optional[str], api_key: Optional[str],
                    request_timeout: Optional[float]) -> Tuple[Client, bool]:
        if client is not None:
            if url is not None or api_key is not None:
                raise ValueError("pass either client= or url=/api_key=, not both")
            return client, False
        kw: Dict[str, Any] = {}
        if request_timeout is not None:
            kw["request_timeout"] = request_timeout
        return Client(url, api_key, **kw), True

    @classmethod
    def create(
        cls,
        backend: Optional[str] = None,
        template: Optional[str] = None,
        limits: LimitsLike = None,
        timeout: Optional[float] = None,
        *,
        idle_timeout: Optional[float] = None,
        env: Optional[Mapping[str, str]] = None,
        network: Optional[str] = None,
        metadata: Optional[Mapping[str, str]] = None,
        url: Optional[str] = None,
        api_key: Optional[str] = None,
        client: Optional[Client] = None,
        request_timeout: Optional[float] = None,
        idempotency_key: Optional[str] = None,
    ) -> "Sandbox":
        """Creates a sandbox on the server (``POST /v1/sandboxes``).

        Args:
            backend: ``process``, ``jail``, ``wasm`` or ``microvm``; default: the
                server's (the safest that works on its host).
            template: Accepted for E2B-style code; airlock has no sandbox images, so only
                a backend name is valid here (it means ``backend=``).
            limits: :class:`Limits` (or a dict of them) for the sandbox; omitted fields
                take the server's defaults.
            timeout: The sandbox's lifetime in seconds: it is destroyed this long after
                its creation, busy or not (default: the server's, 1 hour).
            idle_timeout: Destroy it after this many seconds without a request
                (default: the server's, 10 minutes).
            env: Environment variables of its interpreter.
            network: ``"none"`` (the default) or ``"host"`` (trusted code only; backends
                may refuse it).
            metadata: Your labels (at most 32).
            url, api_key: The server and key (default ``$AIRLOCK_URL``,
                ``$AIRLOCK_API_KEY``).
            client: A :class:`Client` to share instead of making one.
            request_timeout: Timeout of requests other than runs, in seconds.
            idempotency_key: A name for this creation, unique per API key. With it, the
                request is sent again after a broken connection, and a repeat gets the
                sandbox the first one created instead of a second one.

        Raises:
            RateLimited: the server stayed at capacity through the retry budget, or
                your key holds as many sandboxes as it may (``code ==
                "quota_exceeded"``).
            InvalidRequest: bad limits or options (the message names them).
        """
        body = _core.create_body(
            backend=backend, template=template, limits=limits, timeout=timeout, idle_timeout=idle_timeout,
            env=env, network=network, metadata=metadata,
        )
        c, owns = cls._client_for(client, url, api_key, request_timeout)
        try:
            if idempotency_key is None:
                r = c._request("POST", "/v1/sandboxes", "create", json=body)
            else:
                # A resent creation with the same key gets the same sandbox, never a second one.
                r = c._request(
                    "POST", "/v1/sandboxes", "idempotent", json=body,
                    extra_headers={"Idempotency-Key": idempotency_key},
                )
        except BaseException:
            if owns:
                c.close()
            raise
        return cls(SandboxInfo.from_json(r.json()), c, owns_client=owns)

    @classmethod
    def connect(
        cls,
        sandbox_id: str,
        *,
        url: Optional[str] = None,
        api_key: Optional[str] = None,
        client: Optional[Client] = None,
        request_timeout: Optional[float] = None,
    ) -> "Sandbox":
        """A handle on an existing sandbox (made by another process, say).

        Raises:
            SandboxNotFound: no such sandbox for this API key.
        """
        c, owns = cls._client_for(client, url, api_key, request_timeout)
        try:
            info = c.get_sandbox(sandbox_id)
        except BaseException:
            if owns:
                c.close()
            raise
        return cls(info, c, owns_client=owns)

    @classmethod
    def list(
        cls,
        *,
        url: Optional[str] = None,
        api_key: Optional[str] = None,
        client: Optional[Client] = None,
    ) -> List[SandboxInfo]:
        """Your live sandboxes on the server."""
        c, owns = cls._client_for(client, url, api_key, None)
        try:
            return c.list_sandboxes()
        finally:
            if owns:
                c.close()

    def run_code(
        self,
        code: str,
        language: str = "python",
        *,
        on_stdout: StrCallback = None,
        on_stderr: StrCallback = None,
        on_result: ResultCallback = None,
        on_error: ErrorCallback = None,
        timeout: Optional[float] = None,
        limits: LimitsLike = None,
        global_variables: Optional[Mapping[str, Any]] = None,
        files: FilesArg = None,
        outputs: Optional[List[str]] = None,
    ) -> Execution:
        """Runs a cell in the sandbox and returns its :class:`Execution`.

        Output is streamed: the callbacks are called as it happens, in order
        (``on_stdout(text)``, ``on_stderr(text)``, ``on_result(Result)``,
        ``on_error(ExecutionError)``). The value of the last expression is the main
        result (``execution.text``). Code that raises, runs out of time or memory is
        reported in ``execution.status``/``error``, not raised.

        Args:
            code: Python source (or a bash script with ``language="bash"``).
            language: ``python`` or ``bash``.
            timeout: This cell's time limit in seconds (default: the sandbox's).
            limits: This cell's ``timeout_ms``, ``cpu_ms``, ``output_bytes`` and ``result_bytes`` (the
                sandbox's other limits are fixed).
            global_variables: JSON values to define as globals before the code runs.
            files: Files to write into the workspace first (``{path: text or bytes}``).
            outputs: Workspace paths to return in ``execution.files`` afterwards.

        A callback that raises stops the reading of the stream and the exception
        propagates; the cell itself runs on to its end on the server.

        Raises:
            SandboxBusy: another cell or file operation is running in this sandbox.
            SandboxNotFound: the sandbox is gone (deleted, reaped, or stopped).
            RateLimited: the server stayed at capacity through the retry budget.
        """
        self._check_alive()
        body = _core.execute_body(code, language=language, limits=limits, timeout=timeout,
                                  global_variables=global_variables, files=files, outputs=outputs)
        timeout_ms = body.get("limits", {}).get("timeout_ms") or self.info.limits.timeout_ms
        return self._client._execute(
            f"/v1/sandboxes/{_core.quote_id(self.id)}/execute", body, timeout_ms,
            on_stdout, on_stderr, on_result, on_error, not_found=SandboxNotFound,
        )

    def _check_alive(self) -> None:
        if self._killed:
            raise SandboxNotFound(f"sandbox {self.id} was killed through this handle", code="not_found")

    def refresh(self) -> SandboxInfo:
        """Fetches the sandbox's current description (status, execution count, expiry)."""
        self._check_alive()
        self.info = self._client.get_sandbox(self.id)
        return self.info

    def is_running(self) -> bool:
        """True while the sandbox exists and has not stopped."""
        try:
            return self.refresh().status != "stopped"
        except SandboxNotFound:
            return False

    def kill(self) -> bool:
        """Destroys the sandbox (stopping a running cell) and closes this handle's own
        connections. Returns False if it was already gone."""
        if self._killed:
            return False
        self._killed = True
        try:
            return self._client.delete_sandbox(self.id)
        finally:
            self.close()

    def close(self) -> None:
        """Closes this handle's connections without destroying the sandbox (it is
        reaped after its idle timeout)."""
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.kill()


def run(
    code: str,
    *,
    language: str = "python",
    timeout: Optional[float] = None,
    limits: LimitsLike = None,
    files: FilesArg = None,
    outputs: Optional[List[str]] = None,
    env: Optional[Mapping[str, str]] = None,
    global_variables: Optional[Mapping[str, Any]] = None,
    backend: Optional[str] = None,
    network: Optional[str] = None,
    on_stdout: StrCallback = None,
    on_stderr: StrCallback = None,
    on_result: ResultCallback = None,
    on_error: ErrorCallback = None,
    url: Optional[str] = None,
    api_key: Optional[str] = None,
    client: Optional[Client] = None,
    idempotency_key: Optional[str] = None,
) -> Execution:
    """Runs code once, in a fresh sandbox destroyed afterwards (``POST /v1/execute``).

    Args:
        code: Python source (or a bash script with ``language="bash"``).
        timeout: Time limit in seconds (default: the server's, 30 s).
        limits: Other limits (:class:`Limits` or a dict).
        files: Files to place in the workspace first: ``{"data.csv": "a,b\\n1,2\\n"}``
            (text) or bytes.
        outputs: Workspace paths to return after the run, in ``execution.files``
            (read them with ``execution.file(path)``).
        env: Environment variables.
        global_variables: JSON values defined as globals before the code runs.
        backend: The backend (default: the server's).
        network: ``"none"`` (default) or ``"host"``.
        on_stdout, on_stderr, on_result, on_error: Called as output happens.
        url, api_key, client: Which server (default ``$AIRLOCK_URL``,
            ``$AIRLOCK_API_KEY``).
        idempotency_key: A name for this request, unique per API key (e.g.
            ``str(uuid.uuid4())``). With it, the run is sent again after a broken
            connection and never runs twice: the server answers a repeat with the first
            run's result.

    Returns:
        The :class:`Execution`.
    """
    c, owns = Sandbox._client_for(client, url, api_key, None)
    try:
        return c.run(
            code, language=language, timeout=timeout, limits=limits, files=files, outputs=outputs, env=env,
            global_variables=global_variables, backend=backend, network=network,
            on_stdout=on_stdout, on_stderr=on_stderr, on_result=on_result, on_error=on_error,
            idempotency_key=idempotency_key,
        )
    finally:
        if owns:
            c.close()


__all__ = ["Client", "Files", "Sandbox", "run"]
