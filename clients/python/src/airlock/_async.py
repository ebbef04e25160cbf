"""The asyncio client: :class:`AsyncClient`, :class:`AsyncSandbox`, :func:`arun`.

The same API as the synchronous one, with ``await``; callbacks may be plain
functions or coroutine functions.
"""

from __future__ import annotations

import asyncio
import inspect
import io
from typing import Any, Awaitable, Callable, Dict, List, Mapping, Optional, Tuple, Union

import httpx

from . import _core
from ._core import FilesArg, RetryPolicy
from ._errors import FileNotFound, NotFound, SandboxNotFound
from ._models import Execution, ExecutionError, FileEntry, LimitsLike, Result, SandboxInfo, dumps

AStrCallback = Optional[Callable[[str], Union[Any, Awaitable[Any]]]]
AResultCallback = Optional[Callable[[Result], Union[Any, Awaitable[Any]]]]
AErrorCallback = Optional[Callable[[ExecutionError], Union[Any, Awaitable[Any]]]]


class AsyncClient:
    """A connection to one airlock server, for asyncio. See :class:`airlock.Client`
    for the arguments."""

    def __init__(
        self,
        url: Optional[str] = None,
        api_key: Optional[str] = None,
        *,
        request_timeout: float = _core.DEFAULT_REQUEST_TIMEOUT_S,
        retry: Optional[RetryPolicy] = None,
        http_client: Optional[httpx.AsyncClient] = None,
    ) -> None:
        self.url = _core.resolve_url(url)
        self.api_key = _core.resolve_api_key(api_key)
        self.request_timeout = request_timeout
        self.retry = retry or RetryPolicy()
        self._owns_http = http_client is None
        self._http = http_client or httpx.AsyncClient(timeout=request_timeout, verify=_core.ssl_context(self.url))
        self._headers = _core.base_headers(self.api_key)

    async def aclose(self) -> None:
        """Closes the connections (not the sandboxes)."""
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"airlock.AsyncClient({self.url!r})"

    async def _request(
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
                r = await self._http.request(
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
            await asyncio.sleep(d)
            waited += d
            attempt += 1

    async def _execute(
        self,
        path: str,
        body: Dict[str, Any],
        timeout_ms: Optional[int],
        on_stdout: AStrCallback,
        on_stderr: AStrCallback,
        on_result: AResultCallback,
        on_error: AErrorCallback,
        not_found: type = NotFound,
        idempotency_key: Optional[str] = None,
    ) -> Execution:
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
        timeout = httpx.Timeout(self.request_timeout, read=_core.execution_timeout_s(timeout_ms))
        attempt, waited = 1, 0.0
        while True:
            try:
                async with self._http.stream("POST", url, content=data, headers=headers, timeout=timeout) as r:
                    if not r.is_success:
                        await r.aread()
                        err = _core.response_error(r.status_code, r.headers, r.content, not_found=not_found)
                        d = self.retry.delay(kind, attempt, waited, status=r.status_code, code=err.code,
                                             retry_after=getattr(err, "retry_after", None))
                        if d is None:
                            raise err
                    else:
                        return await self._read_stream(
                            r, on_stdout, on_stderr, on_result, on_error, resend=idempotency_key is not None
                        )
            except httpx.TransportError as e:
                d = self.retry.delay(kind, attempt, waited, exc=e)
                if d is None:
                    raise _core.transport_error(e, self.url) from None
            await asyncio.sleep(d)
            waited += d
            attempt += 1

    async def _read_stream(
        self,
        r: httpx.Response,
        on_stdout: AStrCallback,
        on_stderr: AStrCallback,
        on_result: AResultCallback,
        on_error: AErrorCallback,
        resend: bool = False,
    ) -> Execution:
        dec = _core.StreamDecoder(execution_id=r.headers.get("x-airlock-execution-id"))
        callbacks = {"stdout": on_stdout, "stderr": on_stderr, "result": on_result, "error": on_error}
        try:
            async for line in r.aiter_lines():
                ev = dec.feed(line)
                if ev is not None:
                    cb = callbacks[ev[0]]
                    if cb is not None:
                        out = cb(ev[1])
                        if inspect.isawaitable(out):
                            await out
                if dec.ended:
                    break
        except httpx.TransportError as e:
            if resend:
                raise  # the caller sends it again: the server answers with the first run's result
            raise _core.transport_error(e, self.url, execution_id=dec.execution_id) from None
        return dec.finish(self.url)

    async def health(self) -> Dict[str, Any]:
        """The server's health summary."""
        return dict((await self._request("GET", "/healthz", "idempotent")).json())

    async def run(
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
        on_stdout: AStrCallback = None,
        on_stderr: AStrCallback = None,
        on_result: AResultCallback = None,
        on_error: AErrorCallback = None,
        idempotency_key: Optional[str] = None,
    ) -> Execution:
        """Runs code once in a fresh sandbox (see :func:`airlock.run`)."""
        body = _core.execute_body(
            code, language=language, limits=limits, timeout=timeout, global_variables=global_variables,
            files=files, env=env, backend=backend, network=network, outputs=outputs,
        )
        timeout_ms = body.get("limits", {}).get("timeout_ms")
        return await self._execute(
            "/v1/execute", body, timeout_ms, on_stdout, on_stderr, on_result, on_error,
            idempotency_key=idempotency_key,
        )

    async def create_sandbox(self, **kwargs: Any) -> "AsyncSandbox":
        """Creates a sandbox through this client (see :meth:`AsyncSandbox.create`)."""
        return await AsyncSandbox.create(client=self, **kwargs)

    async def connect(self, sandbox_id: str) -> "AsyncSandbox":
        """A handle on an existing sandbox."""
        return await AsyncSandbox.connect(sandbox_id, client=self)

    async def list_sandboxes(self) -> List[SandboxInfo]:
        """Your live sandboxes, oldest first."""
        r = await self._request("GET", "/v1/sandboxes", "idempotent")
        return [SandboxInfo.from_json(s) for s in r.json().get("sandboxes", [])]

    async def get_sandbox(self, sandbox_id: str) -> SandboxInfo:
        """One sandbox's description. Raises :class:`SandboxNotFound`."""
        r = await self._request("GET", f"/v1/sandboxes/{_core.quote_id(sandbox_id)}", "idempotent",
                                not_found=SandboxNotFound)
        return SandboxInfo.from_json(r.json())

    async def delete_sandbox(self, sandbox_id: str) -> bool:
        """Destroys a sandbox; False if it did not exist (any more)."""
        try:
            await self._request("DELETE", f"/v1/sandboxes/{_core.quote_id(sandbox_id)}", "idempotent",
                                not_found=SandboxNotFound)
        except SandboxNotFound:
            return False
        return True

    async def get_execution(self, execution_id: str) -> Dict[str, Any]:
        """An execution's record from the server's audit log."""
        r = await self._request("GET", f"/v1/executions/{_core.quote_id(execution_id)}", "idempotent")
        return dict(r.json())


class AsyncFiles:
    """A sandbox's workspace files, for asyncio (see :class:`airlock.Files`)."""

    def __init__(self, sandbox: "AsyncSandbox") -> None:
        self._sb = sandbox

    async def _file_op(self, method: str, path: str, **kw: Any) -> httpx.Response:
        sb = self._sb
        sb._check_alive()
        try:
            return await sb._client._request(method, _core.file_url(sb.id, path), "idempotent",
                                             not_found=FileNotFound, **kw)
        except FileNotFound:
            await sb._client.get_sandbox(sb.id)
            raise

    async def write(self, path: str, data: Union[str, bytes, bytearray, io.IOBase]) -> FileEntry:
        """Writes a file (text as UTF-8, bytes, or a binary file object)."""
        if isinstance(data, str):
            content = data.encode("utf-8")
        elif isinstance(data, (bytes, bytearray, memoryview)):
            content = bytes(data)
        elif hasattr(data, "read"):
            raw = data.read()
            content = raw.encode("utf-8") if isinstance(raw, str) else bytes(raw)
        else:
            raise TypeError(f"data must be str, bytes or a file object, not {type(data).__name__}")
        r = await self._file_op("PUT", path, content=content, content_type="application/octet-stream")
        return FileEntry.from_json(r.json())

    async def read(self, path: str, format: str = "text") -> Any:
        """Reads a file as text (``"text"``) or bytes (``"bytes"``)."""
        if format not in ("text", "bytes"):
            raise ValueError(f"format must be 'text' or 'bytes', not {format!r}")
        data = (await self._file_op("GET", path)).content
        return data.decode("utf-8") if format == "text" else data

    async def read_bytes(self, path: str) -> bytes:
        """Reads a file's bytes."""
        return await self.read(path, format="bytes")  # type: ignore[no-any-return]

    async def list(self, path: str = "") -> List[FileEntry]:
        """Lists a directory of the workspace, recursively."""
        sb = self._sb
        sb._check_alive()
        try:
            r = await sb._client._request("GET", f"/v1/sandboxes/{_core.quote_id(sb.id)}/files", "idempotent",
                                          params={"path": path} if path else None, not_found=FileNotFound)
        except FileNotFound:
            await sb._client.get_sandbox(sb.id)
            raise
        return [FileEntry.from_json(e) for e in r.json().get("files", [])]

    async def remove(self, path: str) -> None:
        """Removes a file or an empty directory."""
        await self._file_op("DELETE", path)

    async def exists(self, path: str) -> bool:
        """True if the file or directory exists."""
        norm = path[len("/workspace/"):] if path.startswith("/workspace/") else path
        norm = norm.strip("/")
        parent = norm.rsplit("/", 1)[0] if "/" in norm else ""
        try:
            entries = await self.list(parent)
        except FileNotFound:
            return False
        return any(e.path.strip("/") == norm for e in entries)


class AsyncSandbox:
    """A stateful sandbox, for asyncio. The same API as :class:`airlock.Sandbox`
    with ``await``::

        async with await AsyncSandbox.create() as sbx:
            execution = await sbx.run_code("6 * 7")
    """

    def __init__(self, info: SandboxInfo, client: AsyncClient, *, owns_client: bool = False) -> None:
        self.info = info
        """What the server said about the sandbox (see :meth:`refresh`)."""
        self._client = client
        self._owns_client = owns_client
        self._killed = False
        self.files = AsyncFiles(self)
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
    def client(self) -> AsyncClient:
        """The client this sandbox talks through."""
        return self._client

    def __repr__(self) -> str:
        return f"AsyncSandbox({self.id!r}, backend={self.info.backend!r})"

    @staticmethod
    def _client_for(client: Optional[AsyncClient], url: Optional[str], api_key: Optional[str],
                    request_timeout: Optional[float]) -> Tuple[AsyncClient, bool]:
        if client is not None:
            if url is not None or api_key is not None:
                raise ValueError("pass either client= or url=/api_key=, not both")
            return client, False
        kw: Dict[str, Any] = {}
        if request_timeout is not None:
            kw["request_timeout"] = request_timeout
        return AsyncClient(url, api_key, **kw), True

    @classmethod
    async def create(
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
        client: Optional[AsyncClient] = None,
        request_timeout: Optional[float] = None,
        idempotency_key: Optional[str] = None,
    ) -> "AsyncSandbox":
        """Creates a sandbox (see :meth:`airlock.Sandbox.create` for the arguments)."""
        body = _core.create_body(
            backend=backend, template=template, limits=limits, timeout=timeout, idle_timeout=idle_timeout,
            env=env, network=network, metadata=metadata,
        )
        c, owns = cls._client_for(client, url, api_key, request_timeout)
        try:
            if idempotency_key is None:
                r = await c._request("POST", "/v1/sandboxes", "create", json=body)
            else:
                # A resent creation with the same key gets the same sandbox, never a second one.
                r = await c._request(
                    "POST", "/v1/sandboxes", "idempotent", json=body,
                    extra_headers={"Idempotency-Key": idempotency_key},
                )
        except BaseException:
            if owns:
                await c.aclose()
            raise
        return cls(SandboxInfo.from_json(r.json()), c, owns_client=owns)

    @classmethod
    async def connect(
        cls,
        sandbox_id: str,
        *,
        url: Optional[str] = None,
        api_key: Optional[str] = None,
        client: Optional[AsyncClient] = None,
        request_timeout: Optional[float] = None,
    ) -> "AsyncSandbox":
        """A handle on an existing sandbox. Raises :class:`SandboxNotFound`."""
        c, owns = cls._client_for(client, url, api_key, request_timeout)
        try:
            info = await c.get_sandbox(sandbox_id)
        except BaseException:
            if owns:
                await c.aclose()
            raise
        return cls(info, c, owns_client=owns)

    @classmethod
    async def list(
        cls,
        *,
        url: Optional[str] = None,
        api_key: Optional[str] = None,
        client: Optional[AsyncClient] = None,
    ) -> List[SandboxInfo]:
        """Your live sandboxes on the server."""
        c, owns = cls._client_for(client, url, api_key, None)
        try:
            return await c.list_sandboxes()
        finally:
            if owns:
                await c.aclose()

    async def run_code(
        self,
        code: str,
        language: str = "python",
        *,
        on_stdout: AStrCallback = None,
        on_stderr: AStrCallback = None,
        on_result: AResultCallback = None,
        on_error: AErrorCallback = None,
        timeout: Optional[float] = None,
        limits: LimitsLike = None,
        global_variables: Optional[Mapping[str, Any]] = None,
        files: FilesArg = None,
        outputs: Optional[List[str]] = None,
    ) -> Execution:
        """Runs a cell (see :meth:`airlock.Sandbox.run_code`); callbacks may be
        coroutine functions."""
        self._check_alive()
        body = _core.execute_body(code, language=language, limits=limits, timeout=timeout,
                                  global_variables=global_variables, files=files, outputs=outputs)
        timeout_ms = body.get("limits", {}).get("timeout_ms") or self.info.limits.timeout_ms
        return await self._client._execute(
            f"/v1/sandboxes/{_core.quote_id(self.id)}/execute", body, timeout_ms,
            on_stdout, on_stderr, on_result, on_error, not_found=SandboxNotFound,
        )

    def _check_alive(self) -> None:
        if self._killed:
            raise SandboxNotFound(f"sandbox {self.id} was killed through this handle", code="not_found")

    async def refresh(self) -> SandboxInfo:
        """Fetches the sandbox's current description."""
        self._check_alive()
        self.info = await self._client.get_sandbox(self.id)
        return self.info

    async def is_running(self) -> bool:
        """True while the sandbox exists and has not stopped."""
        try:
            return (await self.refresh()).status != "stopped"
        except SandboxNotFound:
            return False

    async def kill(self) -> bool:
        """Destroys the sandbox and closes this handle's own connections; False if it
        was already gone."""
        if self._killed:
            return False
        self._killed = True
        try:
            return await self._client.delete_sandbox(self.id)
        finally:
            await self.close()

    async def close(self) -> None:
        """Closes this handle's connections without destroying the sandbox."""
        if self._owns_client:
            await self._client.aclose()

    async def __aenter__(self) -> "AsyncSandbox":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.kill()


async def arun(
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
    on_stdout: AStrCallback = None,
    on_stderr: AStrCallback = None,
    on_result: AResultCallback = None,
    on_error: AErrorCallback = None,
    url: Optional[str] = None,
    api_key: Optional[str] = None,
    client: Optional[AsyncClient] = None,
    idempotency_key: Optional[str] = None,
) -> Execution:
    """Runs code once in a fresh sandbox (the asyncio twin of :func:`airlock.run`)."""
    c, owns = AsyncSandbox._client_for(client, url, api_key, None)
    try:
        return await c.run(
            code, language=language, timeout=timeout, limits=limits, files=files, outputs=outputs, env=env,
            global_variables=global_variables, backend=backend, network=network,
            on_stdout=on_stdout, on_stderr=on_stderr, on_result=on_result, on_error=on_error,
            idempotency_key=idempotency_key,
        )
    finally:
        if owns:
            await c.aclose()


__all__ = ["AsyncClient", "AsyncFiles", "AsyncSandbox", "arun"]
