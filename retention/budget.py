"""The request budget shared by every call on one token, and the count of calls made.

The budget is a leaky bucket (aiolimiter): ``requests_per_minute`` on average, at most ``burst``
at once. A 429 pauses the whole budget, for every caller, for as long as the server asked
(``Retry-After`` or ``X-RateLimit-Reset``) or, when it did not say, for a growing backoff.

Callers queue in two lanes, urgent (due deletions) and the rest: while both lanes have
waiters they are served in turn, so urgent callers get at least half of the grants however
many others queued before them, and neither lane starves the other.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import random
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field

from aiolimiter import AsyncLimiter

from retention.timefmt import parse_http_date

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


class Lanes:
    """A counting semaphore with two queues, urgent and normal, served in turn.

    A freed place goes to the longest waiter of one lane: while both lanes have waiters they
    alternate (urgent first after a normal grant), and a lane alone gets every place. So urgent
    waiters get at least half of the places while they wait, and normal ones are never starved.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._free = capacity
        self._lanes: dict[bool, deque[asyncio.Future[None]]] = {True: deque(), False: deque()}
        self._urgent_next = True

    def waiting(self, *, urgent: bool) -> int:
        """How many callers wait in one lane."""
        return len(self._lanes[urgent])

    async def acquire(self, *, urgent: bool = False) -> None:
        if self._free > 0:  # then nobody waits: a freed place goes to a waiter first
            self._free -= 1
            return
        ticket: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        lane = self._lanes[urgent]
        lane.append(ticket)
        try:
            await ticket
        except asyncio.CancelledError:
            if ticket.cancelled():
                lane.remove(ticket)
            else:
                self.release()  # the place was handed to us as we were cancelled: pass it on
            raise

    def release(self) -> None:
        """Hand the place to the next waiter in turn, or free it when nobody waits."""
        urgent = self._next_lane()
        if urgent is None:
            self._free += 1
            return
        self._urgent_next = not urgent
        self._lanes[urgent].popleft().set_result(None)

    def _next_lane(self) -> bool | None:
        """The lane to serve next: True urgent, False normal, None when nobody waits."""
        urgent, normal = bool(self._lanes[True]), bool(self._lanes[False])
        if urgent and normal:
            return self._urgent_next
        if urgent or normal:
            return urgent
        return None

    @asynccontextmanager
    async def hold(self, *, urgent: bool = False) -> AsyncIterator[None]:
        await self.acquire(urgent=urgent)
        try:
            yield
        finally:
            self.release()


class RequestBudget:
    """Paces requests for one account. Every API call awaits :meth:`acquire` first."""

    def __init__(self, requests_per_minute: int, *, burst: int = 5) -> None:
        if requests_per_minute < 1 or burst < 1:
            raise ValueError("requests_per_minute and burst must be at least 1")
        self.requests_per_minute = requests_per_minute
        # burst tokens refill over burst * (60 / rpm) seconds: the average rate is exactly rpm.
        self._limiter = AsyncLimiter(burst, burst * 60.0 / requests_per_minute)
        # One caller at a time takes a token (or sits out a pause); the lanes pick who is next.
        self.lanes = Lanes(1)
        self._resume_at = -math.inf  # monotonic time when the current 429 pause ends
        self._backoff_level = 0
        self.rate_limited = 0  # 429s seen
        self.remaining: int | None = None  # the server's X-RateLimit-Remaining, when it sends one

    @property
    def paused_for(self) -> float:
        """Seconds until a 429 pause ends (0 when not paused)."""
        return max(0.0, self._resume_at - time.monotonic())

    def has_capacity(self) -> bool:
        """Whether the pacer would grant a call now without waiting (pauses aside)."""
        return self._limiter.has_capacity()

    async def acquire(self, *, urgent: bool = False) -> None:
        """Wait for the turn of our lane, then out any 429 pause, then for the pacer's token.

        ``urgent`` callers (due deletions) get at least half of the grants while they wait.
        """
        async with self.lanes.hold(urgent=urgent):
            while True:
                pause = self.paused_for
                if pause > 0:
                    await asyncio.sleep(pause)
                    continue  # and take a token after the pause like everyone else
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

    ``X-RateLimit-Reset`` is read as an epoch time when it is large, as seconds otherwise. An
    epoch is measured from ``now`` when given, else from the response's own ``Date`` (the
    server's clock, which set the reset: a wrong local clock must not turn the pause into
    nothing), else from the local clock. An HTTP-date ``Retry-After`` is not used by this API
    and is treated as absent, as is any value that is not a finite number.
    """
    value = _finite(headers.get("Retry-After"))
    if value is not None:
        return max(0.0, value)
    reset = _finite(headers.get("X-RateLimit-Reset"))
    if reset is None:
        return None
    if reset > 1e9:
        if now is None:
            server = parse_http_date(headers.get("Date"))
            now = server.timestamp() if server is not None else time.time()
        return max(0.0, reset - now)
    return max(0.0, reset)


def _finite(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None
