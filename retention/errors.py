"""The project's exceptions: foreign errors are translated into these at the module boundaries.

    RetentionError
     +-- ConfigError            bad config file, key or policy (exit code 2)
     +-- StoreError             the local database cannot be opened, migrated, read or written
     +-- ApiError               a CustomGPT call failed; carries the call kind and HTTP status
          +-- TransientApiError 5xx, timeout, reset, malformed body: retried within bounds
          |    +-- RateLimited  429; the whole request budget pauses
          +-- AuthError         401 or 403: never retried
          +-- NotFoundError     404 (a delete turns it into "already gone", or into "deleted,
          |                          confirmed by 404" when it answers a retry)
          +-- BadRequestError   any other 4xx: never retried

No message built here ever contains a token: errors carry the call kind, the method, the path
and the status, never headers, and the client scrubs the server's own text (which may echo a
token) before it puts it into an ApiError.
"""

from __future__ import annotations


class RetentionError(Exception):
    """Base of every error this project raises on purpose."""


class ConfigError(RetentionError):
    """A configuration or policy problem; the message names the file, the key and the problem."""

    def __init__(self, message: str, *, source: str | None = None, key: str | None = None) -> None:
        self.source = source
        self.key = key
        self.problem = message
        parts = [p for p in (source, key) if p]
        super().__init__(": ".join([*parts, message]))


class StoreError(RetentionError):
    """The local store failed; the message says which operation and why."""


class LeaseLost(RetentionError):
    """This process no longer holds the store's lease: another writer took over."""


class ApiError(RetentionError):
    """A CustomGPT API call that did not succeed."""

    def __init__(
        self,
        message: str,
        *,
        kind: str,
        method: str,
        path: str,
        status: int | None = None,
    ) -> None:
        self.kind = kind
        self.method = method
        self.path = path
        self.status = status
        self.detail = message
        where = f"{method} {path}"
        status_text = f" -> {status}" if status is not None else ""
        super().__init__(f"{kind}: {where}{status_text}: {message}")


class TransientApiError(ApiError):
    """A failure worth retrying: 5xx, timeout, connection reset, malformed success body.

    ``may_have_acted`` is False only when the request cannot have reached the server's
    application (a refused connection, a connect timeout, a 429); a 5xx, a reset or a timeout
    after sending may come after the server did what was asked.
    """

    def __init__(
        self,
        message: str,
        *,
        kind: str,
        method: str,
        path: str,
        status: int | None = None,
        may_have_acted: bool = True,
    ) -> None:
        self.may_have_acted = may_have_acted
        super().__init__(message, kind=kind, method=method, path=path, status=status)


class RateLimited(TransientApiError):
    """HTTP 429. ``retry_after`` is the pause the server asked for, in seconds, if it said."""

    def __init__(self, message: str, *, retry_after: float | None, **kw: object) -> None:
        self.retry_after = retry_after
        kw.setdefault("may_have_acted", False)
        super().__init__(message, **kw)  # type: ignore[arg-type]


class AuthError(ApiError):
    """HTTP 401 or 403: the token is missing, wrong or not allowed to do this."""


class NotFoundError(ApiError):
    """HTTP 404: the agent or conversation does not exist (any more).

    ``after_failed_attempt`` is True when an earlier attempt of the same call failed after the
    server may have acted on it (see :attr:`TransientApiError.may_have_acted`): for a DELETE,
    the 404 then most likely confirms our own first attempt.
    """

    after_failed_attempt: bool = False


class BadRequestError(ApiError):
    """Any other 4xx: the request itself is wrong and repeating it will not help."""
