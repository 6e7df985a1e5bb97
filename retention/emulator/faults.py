"""The emulator's misbehaviour on request: faults by path, a rate limit, arrivals mid-listing."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Fault:
    """Misbehave on requests whose method and path (a glob, without the query) match.

    ``times`` is how many matching requests it spoils (-1: all). Build one with the class
    methods: ``Fault.status(503)``, ``Fault.malformed()``, ``Fault.html()``, ``Fault.reset()``,
    ``Fault.delay(2.0)``, ``Fault.hang()``, ``Fault.echo_token(500)``,
    ``Fault.ok_without_acting()``.

    ``after=True`` serves the request first (a DELETE deletes) and then spoils the answer: a
    5xx, a reset or a hang after the server acted. ``echo`` is an error message in which
    ``{authorization}`` becomes the request's Authorization header, as careless servers do.
    """

    path: str = "*"
    method: str = "*"
    times: int = 1
    status_code: int | None = None
    body: str | None = None
    content_type: str = "application/json"
    delay_s: float = 0.0
    reset_connection: bool = False
    after: bool = False
    echo: str | None = None

    @classmethod
    def status(cls, code: int, path: str = "*", **kw: Any) -> Fault:
        return cls(path=path, status_code=code, **kw)

    @classmethod
    def malformed(cls, path: str = "*", **kw: Any) -> Fault:
        return cls(path=path, status_code=200, body='{"status":"success","data":{"current_pa', **kw)

    @classmethod
    def html(cls, path: str = "*", code: int = 502, **kw: Any) -> Fault:
        page = "<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"
        return cls(path=path, status_code=code, body=page, content_type="text/html", **kw)

    @classmethod
    def reset(cls, path: str = "*", **kw: Any) -> Fault:
        return cls(path=path, reset_connection=True, **kw)

    @classmethod
    def delay(cls, seconds: float, path: str = "*", **kw: Any) -> Fault:
        return cls(path=path, delay_s=seconds, **kw)

    @classmethod
    def hang(cls, path: str = "*", **kw: Any) -> Fault:
        return cls(path=path, delay_s=3600.0, **kw)

    @classmethod
    def echo_token(
        cls,
        code: int = 500,
        path: str = "*",
        message: str = "Request failed for Authorization: {authorization}",
        **kw: Any,
    ) -> Fault:
        """An error answer whose message repeats the request's Authorization header."""
        return cls(path=path, status_code=code, echo=message, **kw)

    @classmethod
    def ok_without_acting(cls, path: str = "*", **kw: Any) -> Fault:
        """200 with ``{"deleted": true}``, and nothing done: a DELETE that did not take."""
        body = '{"status":"success","data":{"deleted":true}}'
        return cls(path=path, status_code=200, body=body, **kw)

    def matches(self, method: str, path: str) -> bool:
        if self.times == 0:
            return False
        return fnmatch.fnmatchcase(method, self.method) and fnmatch.fnmatchcase(path, self.path)


@dataclass
class RateLimit:
    """At most ``limit`` requests per fixed ``window`` seconds, then 429 with Retry-After."""

    limit: int
    window: float = 60.0
    _window_start: float = field(default=0.0, repr=False)
    _used: int = field(default=0, repr=False)

    def take(self, now: float) -> tuple[bool, int, float]:
        """Count one request: (allowed, remaining, seconds until the window resets)."""
        if now - self._window_start >= self.window:
            self._window_start, self._used = now, 0
        reset_in = self._window_start + self.window - now
        if self._used >= self.limit:
            return False, 0, reset_in
        self._used += 1
        return True, self.limit - self._used, reset_in


@dataclass
class Arrival:
    """New conversations appear in ``agent_id`` just before a list page >= ``on_page`` is served."""

    agent_id: int
    count: int = 1
    on_page: int = 2
    times: int = 1
    name: str = "Arrived {n}"
    age_s: float = 0.0  # how old the arrivals already are (a due one: larger than a max_age)
    _made: int = field(default=0, repr=False)
