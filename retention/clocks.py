"""Clocks: the local one, as an injectable callable, and a reading of it beside the server's.

Pure: no I/O. The client records a :class:`ClockReading` on every response that carries a
``Date`` header; whatever guards against a wrong clock builds on :attr:`ClockReading.skew`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """The local wall clock, aware UTC: the default :data:`Clock`."""
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class ClockReading:
    """The local clock when a response arrived, and the server's ``Date`` on that response."""

    local: datetime
    server: datetime
    # time.monotonic() when the response arrived: carries the reading forward, says nothing new
    monotonic: float = field(default=0.0, compare=False)

    @property
    def skew(self) -> timedelta:
        """How far the server's clock was ahead of ours (negative: behind) at the reading."""
        return self.server - self.local

    def skew_at(self, now: datetime, monotonic: float) -> timedelta:
        """How far the server's clock is ahead of ours now, ``now`` being our wall clock and
        ``monotonic`` the monotonic clock at the same moment.

        The server's clock is carried forward by the monotonic time elapsed since the reading,
        so a wall clock stepped since the last response (NTP, a suspended VM) shows at once,
        before any new response could tell it.
        """
        return self.server + timedelta(seconds=monotonic - self.monotonic) - now
