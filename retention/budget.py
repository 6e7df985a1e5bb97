"""The request budget shared by every call on one token, and the count of calls made.

The budget is a leaky bucket (aiolimiter): ``requests_per_minute`` on average, at most ``burst``
at once. A 429 pauses the whole budget, for every caller, for as long as the server asked
(``Retry-After`` or ``X-RateLimit-Reset``) or, when it did not say, for a growing backoff.
"""

from __future__ import annotations

import asyncio
import contextvars
import random
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

from aiolimiter import AsyncLimiter

MAX_PAUSE = 300.0  # never trust a header that asks us to sleep longer than five minutes


_SCOPE: contextvars.ContextVar[Counter[str] | None] = contextvars.ContextVar(
    "retention_call_scope", default=None
)


@dataclass
class CallStats:
    """Calls made, by kind ("list_conversations", "delete", ...) and status ("200", "timeout").

    :meth:`scope` also counts, by kind, the calls made by one piece of work and the tasks it
    starts, even while other work shares the client (the daemon's sweeps run side by side).
    """

    calls: Counter[tuple[str, str]] = field(default_factory=Counter)

    def record(self, kind: str, status: str) -> None:
        self.calls[(kind, status)] += 1
        scoped = _SCOPE.get()
        if scoped is not None:
            scoped[kind] += 1

    @contextmanager
    def scope(self) -> Iterator[Counter[str]]:
        counter: Counter[str] = Counter()
        token = _SCOPE.set(counter)
        try:
            yield counter
        finally:
            _SCOPE.reset(token)

    @property
    def total(self) -> int:
        return sum(self.calls.values())

    def by_kind(self) -> dict[str, int]:
        out: Counter[str] = Counter()
        for (kind, _status), count in self.calls.items():
            out[kind] += count
        return dict(sorted(out.items()))

    def count(self, kind: str | None = None, status: str | None = None) -> int:
        return sum(
            n
            for (k, s), n in self.calls.items()
            if (kind is None or k == kind) and (status is None or s == status)
        )


class RequestBudget:
    """Paces requests for one account. Every API call awaits :meth:`acquire` first."""

    def __init__(self, requests_per_minute: int, *, burst: int = 5) -> None:
        if requests_per_minute < 1 or burst < 1:
            raise ValueError("requests_per_minute and burst must be at least 1")
        self.requests_per_minute = requests_per_minute
        # burst tokens refill over burst * (60 / rpm) seconds: the average rate is exactly rpm.
        self._limiter = AsyncLimiter(burst, burst * 60.0 / requests_per_minute)
        self._resume_at = 0.0
        self._backoff_level = 0
        self.rate_limited = 0  # 429s seen
        self.remaining: int | None = None  # the server's X-RateLimit-Remaining, when it sends one

    @property
    def paused_for(self) -> float:
        """Seconds until a 429 pause ends (0 when not paused)."""
        return max(0.0, self._resume_at - time.monotonic())

    async def acquire(self) -> None:
        while True:
            pause = self.paused_for
            if pause > 0:
                await asyncio.sleep(pause)
                continue
            await self._limiter.acquire()
            if self.paused_for <= 0:  # a 429 may have arrived while we queued
                return

    def pause(self, retry_after: float | None) -> float:
        """A 429 arrived: stop everyone for ``retry_after`` seconds or a jittered backoff."""
        self.rate_limited += 1
        if retry_after is None:
            base = min(60.0, 2.0**self._backoff_level)
            self._backoff_level += 1
            seconds = base / 2 + random.uniform(0, base / 2)
        else:
            seconds = min(max(retry_after, 0.0), MAX_PAUSE)
        self._resume_at = max(self._resume_at, time.monotonic() + seconds)
        return seconds

    def observe(self, headers: Mapping[str, str], *, ok: bool) -> None:
        """Learn from a response's rate headers; a success ends any backoff escalation."""
        remaining = headers.get("X-RateLimit-Remaining")
        if remaining is not None and remaining.strip().isdigit():
            self.remaining = int(remaining)
        if ok:
            self._backoff_level = 0


def retry_after_seconds(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """The pause a 429 asks for: ``Retry-After`` seconds, else ``X-RateLimit-Reset``.

    ``X-RateLimit-Reset`` is read as an epoch time when it is large, as seconds otherwise.
    An HTTP-date ``Retry-After`` is not used by this API and is treated as absent.
    """
    value = headers.get("Retry-After")
    if value is not None:
        try:
            return max(0.0, float(value))
        except ValueError:
            pass
    reset = headers.get("X-RateLimit-Reset")
    if reset is not None:
        try:
            number = float(reset)
        except ValueError:
            return None
        if number > 1e9:
            return max(0.0, number - (time.time() if now is None else now))
        return max(0.0, number)
    return None
