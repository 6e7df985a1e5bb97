"""The figures of a period, read from the store for ``retention report``: per agent and rule,
what the audit says was deleted and failed, what is due, overdue, held and in grace now, the
delays from due to deleted, deletions per day and the due backlog per day.

Each read is one grouped statement or one streamed walk over the rows the period touches
(deleted in it, or due and not deleted): the report costs no API call, and its memory follows
the number of agents, rules and days, plus one float per deletion in the period for the delay
percentiles.
"""

from __future__ import annotations

from array import array
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import and_, case, func, literal_column, or_, select, true
from sqlalchemy.sql.elements import ColumnElement

from retention.models import AuditOutcome, State
from retention.schema import audit, conversations
from retention.store import Store, unapproved_takes

Key = tuple[int, str | None]  # (agent id, rule or None)
COUNTS = ("deleted", "already_gone", "failed", "due", "overdue", "held", "in_grace", "blocked")


@dataclass(slots=True)
class Tally:
    """One agent's (or rule's, or account's) counts over the period, and its delays."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTS, 0))
    unapproved: int = 0  # due, unapproved and takeable now: blocked where the breaker trips
    delays: array[float] = field(default_factory=lambda: array("d"))

    def add(self, other: Tally) -> None:
        for key, value in other.counts.items():
            self.counts[key] += value
        self.unapproved += other.unapproved
        self.delays.extend(other.delays)

    def delay_summary(self) -> dict[str, float | int | None]:
        values = sorted(self.delays)
        if not values:
            return {"count": 0, "p50": None, "p95": None, "max": None, "early": 0}
        return {
            "count": len(values),
            "p50": percentile(values, 0.50),
            "p95": percentile(values, 0.95),
            "max": values[-1],
            "early": sum(1 for v in values if v < 0),  # deleted before they were due
        }


def percentile(ordered: list[float], q: float) -> float:
    """The nearest-rank percentile of sorted values: a value that occurred, never between two."""
    rank = max(1, -(-len(ordered) * q // 1))  # ceil(n * q), at least 1
    return ordered[int(rank) - 1]


async def tallies(
    store: Store, *, since: datetime, now: datetime, overdue_after: timedelta
) -> dict[Key, Tally]:
    """Per (agent, rule): the period's audit outcomes, the live figures now, and the delays."""
    out: dict[Key, Tally] = defaultdict(Tally)
    a = audit.c
    audited = (
        select(
            a.agent_id,
            a.rule,
            a.outcome,
            func.count(),
            func.count(func.distinct(a.session_id)),
        )
        .where(a.account == store.account, a.at >= since, a.at < now)
        .group_by(a.agent_id, a.rule, a.outcome)
    )
    c = conversations.c
    due = and_(c.state.in_([State.ACTIVE.value, State.DELETING.value]), c.due_at <= now)
    in_grace = and_(due, c.grace_until > now)
    overdue = and_(
        due, c.due_at <= now - overdue_after, or_(c.grace_until.is_(None), c.grace_until <= now)
    )
    live = (
        select(
            c.agent_id,
            c.rule,
            _sum(due),
            _sum(overdue),
            _sum(c.state == State.HELD.value),
            _sum(in_grace),
            _sum(unapproved_takes(store.account, now)),
        )
        .where(c.account == store.account, or_(c.state == State.HELD.value, due))
        .group_by(c.agent_id, c.rule)
    )
    delays = select(c.agent_id, c.rule, c.due_at, c.finished_at).where(
        c.account == store.account,
        c.state == State.DELETED.value,
        c.finished_at >= since,
        c.finished_at < now,
        c.due_at.is_not(None),
    )
    async with store.db.connect() as conn:
        for agent_id, rule, outcome, _rows, distinct in (await conn.execute(audited)).all():
            counts = out[(int(agent_id), rule)].counts
            # Conversations, not audit rows: a deletion found undone and done again, or a
            # failed attempt retried, is one conversation.
            if outcome == AuditOutcome.DELETED.value:
                counts["deleted"] += int(distinct)
            elif outcome == AuditOutcome.ALREADY_GONE.value:
                counts["already_gone"] += int(distinct)
            elif outcome == AuditOutcome.FAILED.value:
                counts["failed"] += int(distinct)
        for agent_id, rule, *figures in (await conn.execute(live)).all():
            tally = out[(int(agent_id), rule)]
            n_due, n_overdue, n_held, n_grace, n_unapproved = (int(v or 0) for v in figures)
            tally.counts.update(due=n_due, overdue=n_overdue, held=n_held, in_grace=n_grace)
            tally.unapproved = n_unapproved
        async for agent_id, rule, due_at, finished_at in await conn.stream(delays):
            # Not clamped: a deletion before its due time shows as a negative delay, and is
            # counted as early (it should never happen; an auditor wants to see it if it did).
            delay = (finished_at - due_at).total_seconds()
            out[(int(agent_id), rule)].delays.append(delay)
    return dict(out)


async def deletions_per_day(store: Store, *, since: datetime, now: datetime) -> list[Any]:
    """Deleted conversations per UTC day and rule, from the audit (non-zero entries only)."""
    a = audit.c
    day = _day(store, a.at)
    query = (
        select(day, a.rule, func.count(func.distinct(a.session_id)))
        .where(
            a.account == store.account,
            a.outcome == AuditOutcome.DELETED.value,
            a.at >= since,
            a.at < now,
        )
        .group_by(day, a.rule)
        .order_by(day, a.rule)
    )
    async with store.db.connect() as conn:
        rows = (await conn.execute(query)).all()
    return [{"day": str(d), "rule": rule, "deleted": int(n)} for d, rule, n in rows]


async def backlog_per_day(store: Store, *, since: datetime, now: datetime) -> list[Any]:
    """For each UTC day of the period, how many conversations were due and not yet deleted at
    its end (today: now), as the store knows them now: due before that moment and deleted (or
    gone) after it, or not yet. Held and undecided conversations have no due time."""
    days = list(_days(since, now))
    ends = [min(now, datetime.combine(d + timedelta(days=1), time(), UTC)) for d in days]
    change = [0] * (len(days) + 1)  # a difference array over the days
    c = conversations.c
    query = select(c.due_at, c.finished_at).where(
        c.account == store.account,
        c.due_at.is_not(None),
        c.due_at <= now,
        c.state != State.HELD.value,
        or_(c.finished_at.is_(None), c.finished_at > ends[0] if ends else true()),
    )
    async with store.db.connect() as conn:
        async for due_at, finished_at in await conn.stream(query):
            first = _first_end_at_or_after(ends, due_at)
            last = len(ends) if finished_at is None else _first_end_at_or_after(ends, finished_at)
            if first < last:  # due by the end of day `first`, still there until day `last`
                change[first] += 1
                change[last] -= 1
    out, running = [], 0
    for day, delta in zip(days, change, strict=False):
        running += delta
        out.append({"day": day.isoformat(), "due": running})
    return out


def _first_end_at_or_after(ends: list[datetime], moment: datetime) -> int:
    """The index of the first day whose end is at or after ``moment`` (len: none)."""
    lo, hi = 0, len(ends)
    while lo < hi:
        mid = (lo + hi) // 2
        if ends[mid] < moment:
            lo = mid + 1
        else:
            hi = mid
    return lo


def _days(since: datetime, now: datetime) -> Iterable[date]:
    day, last = since.astimezone(UTC).date(), now.astimezone(UTC).date()
    while day <= last:
        yield day
        day += timedelta(days=1)


def _sum(condition: Any) -> Any:
    return func.sum(case((condition, 1), else_=0))


def _day(store: Store, column: Any) -> ColumnElement[Any]:
    """A timestamp's UTC day as ``YYYY-MM-DD`` text, on either backend."""
    if store.db.bind.dialect.name == "sqlite":
        return func.substr(column, 1, 10)  # stored as "YYYY-MM-DD HH:MM:SS.ffffff", in UTC
    # A naive UTC timestamp: to_char formats it as stored, whatever the session's time zone.
    return func.to_char(column, literal_column("'YYYY-MM-DD'"))
