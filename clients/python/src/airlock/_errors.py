"""The exceptions the SDK raises.

Every error the server returns is ``{"error": {"code": ..., "message": ...}}`` with an
HTTP status; each is turned into one of the classes below, keeping the server's
``code``, ``message`` and ``status``. A guest that fails (an exception in your code, a
timeout, an out-of-memory kill) is *not* an exception here: it is an
:class:`~airlock.Execution` whose ``status`` says what happened.
"""

from __future__ import annotations

from typing import Optional


class AirlockError(Exception):
    """Base class of every error the SDK raises.

    Attributes:
        message: What went wrong and what to do about it.
        code: The server's stable error code (``invalid_request``, ``not_found``,
            ``busy``, ...) or a client-side code (``connection_failed``,
            ``request_timeout``, ``stream_interrupted``).
        status: The HTTP status, when the server answered.
        execution_id: The execution concerned, when known.
    """

    def __init__(
        self,
        message: str,
        *,
        code: str = "error",
        status: Optional[int] = None,
        execution_id: Optional[str] = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status
        self.execution_id = execution_id

    def __str__(self) -> str:
        where = f" (HTTP {self.status})" if self.status else ""
        return f"{self.code}{where}: {self.message}"


class AuthError(AirlockError):
    """The server refused the API key (401), or refused this client's ``Host`` (403)."""


class InvalidRequest(AirlockError):
    """The request was malformed or out of range (400, 413, 415, 422): fix the call."""


class BackendUnavailable(InvalidRequest):
    """The backend asked for cannot run on the server's host (422)."""


class TooLarge(InvalidRequest):
    """A body or file is larger than the server or the sandbox accepts (413)."""


class NotFound(AirlockError):
    """Something does not exist, or is not yours (404)."""


class SandboxNotFound(NotFound):
    """The sandbox does not exist: it was deleted, reaped after its idle timeout or
    lifetime, or belongs to another API key (404); or it has stopped (410)."""


class FileNotFound(NotFound):
    """The file or directory does not exist in the sandbox's workspace (404)."""


class SandboxBusy(AirlockError):
    """The sandbox is running another cell or file operation (409). A sandbox runs one
    thing at a time; wait for the other call to finish, or use a second sandbox."""


class RateLimited(AirlockError):
    """The server is at capacity (429 ``overloaded``) or your key holds as many
    sandboxes as it may (429 ``quota_exceeded``).

    Attributes:
        retry_after: Seconds the server asked to wait (from ``Retry-After``), or
            ``None`` when waiting will not help (a quota).
    """

    def __init__(self, message: str, *, retry_after: Optional[float] = None, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.retry_after = retry_after


class Timeout(AirlockError):
    """The HTTP request took longer than the client's timeout (the server did not
    answer in time). A cell that reaches *its* time limit is not an exception: its
    :class:`~airlock.Execution` has ``status == "timeout"``."""


class IdempotencyConflict(AirlockError):
    """A request sent with an idempotency key cannot be answered as asked: the first
    request with that key is still running (409 ``idempotency_in_progress``; retried
    while the retry budget lasts), ran but its answer was not kept (409
    ``replay_unavailable``; ``execution_id`` names it), or the key was used with a
    different request (422 ``idempotency_mismatch``)."""


class ServerError(AirlockError):
    """The server failed (5xx), is shutting down (503), could not be reached, or the
    connection broke while a run was streaming (then ``execution_id`` names the run,
    which may have finished: see :meth:`airlock.Client.get_execution`)."""


class ConnectionFailed(ServerError):
    """No connection to the server could be made (nothing was sent)."""


_BY_CODE = {
    "unauthorized": AuthError,
    "forbidden_host": AuthError,
    "invalid_request": InvalidRequest,
    "unsupported_media_type": InvalidRequest,
    "method_not_allowed": InvalidRequest,
    "too_large": TooLarge,
    "backend_unavailable": BackendUnavailable,
    "not_found": NotFound,
    "sandbox_gone": SandboxNotFound,
    "busy": SandboxBusy,
    "overloaded": RateLimited,
    "quota_exceeded": RateLimited,
    "shutting_down": ServerError,
    "audit_unavailable": ServerError,
    "idempotency_in_progress": IdempotencyConflict,
    "idempotency_mismatch": IdempotencyConflict,
    "replay_unavailable": IdempotencyConflict,
    "internal": ServerError,
}

_BY_STATUS = {
    400: InvalidRequest,
    401: AuthError,
    403: AuthError,
    404: NotFound,
    405: InvalidRequest,
    409: SandboxBusy,
    410: SandboxNotFound,
    413: TooLarge,
    415: InvalidRequest,
    422: BackendUnavailable,
    429: RateLimited,
}


def error_for(
    status: Optional[int],
    code: str,
    message: str,
    *,
    retry_after: Optional[float] = None,
    execution_id: Optional[str] = None,
    not_found: type = NotFound,
) -> AirlockError:
    """The exception for a server error: by its code, else by its HTTP status.

    ``not_found`` is the class to use for a plain ``not_found`` (the caller knows
    whether it asked about a sandbox or a file).
    """
    cls: Optional[type] = _BY_CODE.get(code)
    if cls is None:
        cls = _BY_STATUS.get(status or 0)
    if cls is None:
        cls = ServerError if (status or 0) >= 500 else AirlockError
    if cls is NotFound:
        cls = not_found
    if cls is RateLimited:
        return RateLimited(message, retry_after=retry_after, code=code, status=status, execution_id=execution_id)
    err: AirlockError = cls(message, code=code, status=status, execution_id=execution_id)
    return err
