"""The daemon's job triggers, built in one place: ``run`` schedules them, ``check`` builds them.

APScheduler parses the cron expressions here and in :mod:`retention.daemon` only. Building a
trigger makes no network call and starts nothing, so ``retention check`` refuses exactly the
schedules ``retention run`` would refuse.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from retention.errors import ConfigError


def build_trigger(
    every: timedelta, cron: str | None, *, key: str, now: datetime | None = None
) -> BaseTrigger:
    """Every ``every``, or on ``cron`` (UTC) when one is given; a ConfigError naming ``key``
    for a cron expression APScheduler refuses or one that never fires (``0 0 30 2 *``)."""
    if cron is None:
        return IntervalTrigger(seconds=every.total_seconds(), timezone=UTC)
    try:
        trigger = CronTrigger.from_crontab(cron, timezone=UTC)
    except (ValueError, TypeError, KeyError) as exc:
        raise ConfigError(f"invalid cron expression {cron!r}: {exc}", key=key) from None
    if trigger.get_next_fire_time(None, now or datetime.now(UTC)) is None:
        raise ConfigError(f"cron expression {cron!r} never fires", key=key)
    return trigger
