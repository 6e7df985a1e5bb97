"""Clocks: the local one, as an injectable callable, and a reading of it beside the server's.

Pure: no I/O. The client records a :class:`ClockReading` on every response that carries a
``Date`` header; whatever guards against a wrong clock builds on :attr:`ClockReading.skew`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
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

    @property
    def skew(self) -> timedelta:
        """How far the server's clock is ahead of ours (negative: behind)."""
        return self.server - self.local
