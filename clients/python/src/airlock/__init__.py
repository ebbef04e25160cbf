"""airlock: run untrusted, model-written code in sandboxes on your own airlock server.

Quick start (with ``airlock serve`` running on this machine)::

    import airlock

    print(airlock.run("6 * 7").text)           # 42: one-shot, in a fresh sandbox

    with airlock.Sandbox.create() as sbx:      # a stateful session
        sbx.run_code("import math; r = 2")
        print(sbx.run_code("math.pi * r ** 2").text)

The server is ``$AIRLOCK_URL`` (default ``http://127.0.0.1:8080``) and the key
``$AIRLOCK_API_KEY``; both can be passed as ``url=`` and ``api_key=``.

Adapters: :mod:`airlock.e2b` (a drop-in for ``e2b_code_interpreter``),
:mod:`airlock.smolagents` (an executor for smolagents' ``CodeAgent``),
:mod:`airlock.langchain` (a LangChain tool).
"""

from ._async import AsyncClient, AsyncFiles, AsyncSandbox, arun
from ._core import DEFAULT_URL, RetryPolicy
from ._errors import (
    AirlockError,
    AuthError,
    BackendUnavailable,
    ConnectionFailed,
    FileNotFound,
    IdempotencyConflict,
    InvalidRequest,
    NotFound,
    RateLimited,
    SandboxBusy,
    SandboxNotFound,
    ServerError,
    Timeout,
    TooLarge,
)
from ._models import (
    Execution,
    ExecutionError,
    FileEntry,
    Limits,
    Logs,
    OutputFile,
    Result,
    SandboxInfo,
    Usage,
)
from ._sync import Client, Files, Sandbox, run

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_URL",
    "AirlockError",
    "AsyncClient",
    "AsyncFiles",
    "AsyncSandbox",
    "AuthError",
    "BackendUnavailable",
    "Client",
    "ConnectionFailed",
    "Execution",
    "ExecutionError",
    "FileEntry",
    "FileNotFound",
    "Files",
    "IdempotencyConflict",
    "InvalidRequest",
    "Limits",
    "Logs",
    "NotFound",
    "OutputFile",
    "RateLimited",
    "Result",
    "RetryPolicy",
    "Sandbox",
    "SandboxBusy",
    "SandboxInfo",
    "SandboxNotFound",
    "ServerError",
    "Timeout",
    "TooLarge",
    "Usage",
    "arun",
    "run",
]
