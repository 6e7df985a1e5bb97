"""The store's records and figures: the audit trail, the sweep log, and per-agent counts.

:class:`retention.store.Store` owns one :class:`Journal` (``store.journal``) on the same
:class:`retention.database.Database`, which translates errors.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from retention.auditlog import AuditLog
from retention.database import Database
from retention.models import (
    LIVE_STATES,
    AgentStatus,
    AuditOutcome,
    AuditRecord,
    State,
    SweepRecord,
    SweepReport,
)
from retention.schema import (
    audit as audit_table,
)
from retention.schema import (
    conversation_counts,
    conversations,
    meta,
    sweep_from_row,
    sweeps,
)

STORE_ID_KEY = "store_id"


class Journal:
    """The audit trail, the sweep log and the figures ``status`` and ``/metrics`` show."""

    def __init__(self, db: Database, account: str) -> None:
        self.db = db
        self.account = account  # the account whose records these are
        self.audit = AuditLog(db, account)  # the account's tamper-evident audit chain
        self._store_id: str | None = None  # the store's own id, as first read

    async def check_identity(self) -> str | None:
        """Why the store is no longer the one opened, or None.

        Made at the start of every sweep, before it writes: a SQLite file removed, replaced or
        emptied under the running process (its connections would go on writing into a file
        nobody reads again), or a database whose own id (``meta.store_id``) changed.
        """
        if (problem := self.db.file_problem()) is not None:
            return problem
        async with self.db.connect() as conn:
            row = (
                await conn.execute(select(meta.c.value).where(meta.c.key == STORE_ID_KEY))
            ).first()
        store_id = str(row[0]) if row else None
        if self._store_id is None:
            self._store_id = store_id  # none yet: the first plan file makes one
        elif store_id != self._store_id:
            return f"the store's id changed from {self._store_id} to {store_id}: another database"
        return None

    # ---- audit -------------------------------------------------------------------------------

    async def add_audit(self, record: AuditRecord, *, sweep_id: int | None = None) -> None:
        """Append ``record`` to the account's hash chain (:class:`retention.auditlog.AuditLog`)."""
        await self.audit.append(record, sweep_id=sweep_id)

    async def audit_problem(self) -> str | None:
        """Why no deletion may be recorded now (the audit chain cannot take a row), or None."""
        return await self.audit.append_problem()

    async def audit_trail(
        self, agent_id: int | None = None, session_id: str | None = None
    ) -> list[AuditRecord]:
        return await self.audit.trail(agent_id, session_id)

    # ---- sweeps ------------------------------------------------------------------------------

    async def start_sweep(self, report: SweepReport) -> int:
        async with self.db.begin() as conn:
            result = await conn.execute(
                insert(sweeps).values(
                    account=self.account,
                    kind=report.kind,
                    dry_run=report.dry_run,
                    started_at=report.started_at,
                )
            )
        key = result.inserted_primary_key
        return int(key[0]) if key else 0

    async def finish_sweep(self, sweep_id: int, report: SweepReport) -> None:
        async with self.db.begin() as conn:
            await conn.execute(
                update(sweeps)
                .where(sweeps.c.id == sweep_id)
                .values(
                    finished_at=report.finished_at,
                    ok=report.ok,
                    listed=report.listed,
                    new=report.new,
                    due=report.due,
                    deleted=report.deleted,
                    already_gone=report.already_gone,
                    failed=report.failed,
                    api_calls=sum(report.api_calls.values()),
                    calls_by_kind=json.dumps(report.api_calls, sort_keys=True),
                    error=report.error,
                )
            )

    async def last_sweeps(self, limit: int = 10) -> list[SweepRecord]:
        """The newest sweeps first."""
        query = (
            select(sweeps)
            .where(sweeps.c.account == self.account)
            .order_by(sweeps.c.id.desc())
            .limit(limit)
        )
        async with self.db.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [sweep_from_row(r._mapping) for r in rows]

    async def would_delete(self, listed: list[SweepRecord], now: datetime) -> dict[int, int]:
        """How many conversations each of ``listed`` would have deleted: its dry-run audit rows
        (one per conversation, when first noted), by sweep id. Each count reads only the audit
        rows written while that sweep ran (the ``at`` index), whatever the store's size."""
        out: dict[int, int] = {}
        async with self.db.connect() as conn:
            for sweep in listed:
                query = select(func.count()).where(
                    audit_table.c.at >= sweep.started_at,
                    audit_table.c.at <= (sweep.finished_at or now),
                    audit_table.c.account == self.account,
                    audit_table.c.sweep_id == sweep.id,
                    audit_table.c.outcome == AuditOutcome.DRY_RUN.value,
                )
                count = int((await conn.execute(query)).scalar_one())
                if count:
                    out[sweep.id] = count
        return out

    # ---- figures -----------------------------------------------------------------------------

    async def status(self, now: datetime, *, overdue_after: timedelta) -> list[AgentStatus]:
        """Per agent: live (tracked), due, overdue, held, deleted in the last day, in grace.

        Costs a few rows whatever the store's size: live and held come from the counts the
        store's triggers keep; due, overdue and in grace from the ``(state, due_at)`` index
        (their cost follows the number due); deleted from ``(state, finished_at)`` (the number
        deleted in a day, which the request budget bounds).
        """
        c = conversations
        mine = c.c.account == self.account
        is_due = and_(
            c.c.state.in_([State.ACTIVE.value, State.DELETING.value]), c.c.due_at <= now, mine
        )
        overdue = and_(c.c.due_at <= now - overdue_after, _not_in_grace(c, now))
        due_query = (
            select(
                c.c.agent_id,
                func.count(),
                func.sum(_flag(overdue)),
                func.sum(_flag(c.c.grace_until > now)),
            )
            .where(is_due)
            .group_by(c.c.agent_id)
        )
        recent_query = (
            select(c.c.agent_id, func.count())
            .where(
                c.c.state == State.DELETED.value,
                c.c.finished_at >= now - timedelta(days=1),
                mine,
            )
            .group_by(c.c.agent_id)
        )
        async with self.db.connect() as conn:
            counts = await live_counts(conn, self.account)
            due = {int(r[0]): r[1:] for r in (await conn.execute(due_query)).all()}
            recent = {int(r[0]): int(r[1]) for r in (await conn.execute(recent_query)).all()}
        out = []
        for agent_id in sorted({a for a, (live, _) in counts.items() if live} | set(recent)):
            live, held = counts.get(agent_id, (0, 0))
            n_due, n_overdue, n_grace = (int(v or 0) for v in due.get(agent_id, (0, 0, 0)))
            out.append(
                AgentStatus(
                    agent_id, live, n_due, n_overdue, held, recent.get(agent_id, 0), n_grace
                )
            )
        return out


async def live_counts(conn: AsyncConnection, account: str) -> dict[int, tuple[int, int]]:
    """Per agent of ``account``: (live, held) conversations, from the counts the triggers keep
    exact."""
    k = conversation_counts.c
    query = select(k.agent_id, k.state, k.n).where(
        k.account == account, k.state.in_(LIVE_STATES), k.n > 0
    )
    out: dict[int, tuple[int, int]] = {}
    for agent_id, state, n in (await conn.execute(query)).all():
        live, held = out.get(int(agent_id), (0, 0))
        out[int(agent_id)] = (live + int(n), held + (int(n) if state == State.HELD.value else 0))
    return out


def _not_in_grace(c: Any, now: datetime) -> Any:
    return or_(c.c.grace_until.is_(None), c.c.grace_until <= now)


def _flag(condition: Any) -> Any:
    return case((condition, 1), else_=0)
