"""The audit trail in the store: appending to each account's hash chain, reading its head,
walking it, and streaming rows out for export.

Appending takes the account's ``audit_heads`` row first (``UPDATE ... RETURNING``): its row
lock makes concurrent writers of one account append one after the other, and the unique
``(account, seq)`` index would refuse a fork anyway. Reads stream in pages, so walking or
exporting a million rows holds one page at a time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from retention import chain
from retention.chain import GENESIS, Head, Link, Verdict, Walker
from retention.database import Database
from retention.models import AuditRecord
from retention.schema import audit, audit_from_row, audit_heads

PAGE = 2000  # rows read per statement when walking or exporting


@dataclass(frozen=True, slots=True)
class AuditFilter:
    """Which rows an export or a report reads; None: any."""

    since: datetime | None = None
    until: datetime | None = None
    agent_id: int | None = None
    rule: str | None = None
    outcome: str | None = None


class AuditLog:
    """One account's audit chain."""

    def __init__(self, db: Database, account: str) -> None:
        self.db = db
        self.account = account

    async def append(self, record: AuditRecord, *, sweep_id: int | None = None) -> Head:
        """Add ``record`` as the chain's next row; returns the new head."""
        values = {
            "at": record.at,
            "account": self.account,
            "agent_id": record.agent_id,
            "session_id": record.session_id,
            "name": record.name,
            "rule": record.rule,
            "age_seconds": chain.age_ms(record.age.total_seconds()) / 1000,  # as hashed
            "outcome": record.outcome.value,
            "detail": record.detail,
            "sweep_id": sweep_id,
        }
        async with self.db.begin() as conn:
            seq, prev = await self._advance(conn)
            digest = chain.digest(chain.row_fields(values, seq=seq, prev=prev))
            await conn.execute(insert(audit).values(**values, seq=seq, prev_hash=prev, hash=digest))
            await conn.execute(
                update(audit_heads).where(audit_heads.c.account == self.account).values(hash=digest)
            )
        return Head(self.account, seq, digest)

    async def _advance(self, conn: AsyncConnection) -> tuple[int, str]:
        """Take the next sequence number: (seq, previous row's hash)."""
        bump = (
            update(audit_heads)
            .where(audit_heads.c.account == self.account)
            .values(seq=audit_heads.c.seq + 1)
            .returning(audit_heads.c.seq, audit_heads.c.hash)
        )
        row = (await conn.execute(bump)).first()
        if row is None:  # the account's first row: both dialects know ON CONFLICT
            await conn.execute(
                text(
                    "INSERT INTO audit_heads (account, seq, hash) VALUES (:a, 0, :g) "
                    "ON CONFLICT (account) DO NOTHING"
                ),
                {"a": self.account, "g": GENESIS},
            )
            row = (await conn.execute(bump)).first()
        assert row is not None
        return int(row[0]), str(row[1])

    async def head(self) -> Head:
        async with self.db.connect() as conn:
            return await _head(conn, self.account)

    async def trail(
        self, agent_id: int | None = None, session_id: str | None = None
    ) -> list[AuditRecord]:
        query = select(audit).where(audit.c.account == self.account)
        if agent_id is not None:
            query = query.where(audit.c.agent_id == agent_id)
        if session_id is not None:
            query = query.where(audit.c.session_id == session_id)
        async with self.db.connect() as conn:
            rows = (await conn.execute(query.order_by(audit.c.seq))).all()
        return [audit_from_row(r._mapping) for r in rows]

    async def verify(self, pin: Head | None = None) -> Verdict:
        """Walk the chain up to the head recorded when the walk starts; rows appended meanwhile
        are checked by the next walk. Costs one page read per :data:`PAGE` rows."""
        async with self.db.connect() as conn:
            recorded = await _head(conn, self.account)
        walker = Walker(self.account, recorded=recorded, pin=pin)
        query = select(audit).where(audit.c.account == self.account, audit.c.seq <= recorded.seq)
        async for m in self._pages(query):
            if (failed := walker.step(_link(m))) is not None:
                return failed
        async with self.db.connect() as conn:
            head_now = select(audit_heads.c.seq).where(audit_heads.c.account == self.account)
            past = (
                await conn.execute(
                    select(audit)
                    .where(
                        audit.c.account == self.account,
                        audit.c.seq > func.coalesce(head_now.scalar_subquery(), 0),
                    )
                    .order_by(audit.c.seq)
                    .limit(1)
                )
            ).first()
        return walker.end(None if past is None else _link(past._mapping))

    async def rows(self, where: AuditFilter) -> AsyncIterator[dict[str, Any]]:
        """The rows ``where`` selects, oldest first, as exported: the hashed fields plus
        ``hash``. Streams page by page."""
        query = select(audit).where(audit.c.account == self.account)
        if where.since is not None:
            query = query.where(audit.c.at >= where.since)
        if where.until is not None:
            query = query.where(audit.c.at < where.until)
        if where.agent_id is not None:
            query = query.where(audit.c.agent_id == where.agent_id)
        if where.rule is not None:
            query = query.where(audit.c.rule == where.rule)
        if where.outcome is not None:
            query = query.where(audit.c.outcome == where.outcome)
        async for m in self._pages(query):
            link = _link(m)
            yield {**link.fields, "hash": link.hash}

    async def _pages(self, query: Select[Any]) -> AsyncIterator[Any]:
        """``query``'s rows in ``seq`` order, a page at a time (keyset paging on the chain's
        unique index: each page is its own short read)."""
        after = 0
        while True:
            page = query.where(audit.c.seq > after).order_by(audit.c.seq).limit(PAGE)
            async with self.db.connect() as conn:
                rows = (await conn.execute(page)).all()
            for row in rows:
                yield row._mapping
            if len(rows) < PAGE:
                return
            after = int(rows[-1]._mapping["seq"])


async def _head(conn: AsyncConnection, account: str) -> Head:
    row = (
        await conn.execute(
            select(audit_heads.c.seq, audit_heads.c.hash).where(audit_heads.c.account == account)
        )
    ).first()
    return Head(account, 0, GENESIS) if row is None else Head(account, int(row[0]), str(row[1]))


async def heads(db: Database) -> list[Head]:
    """Every account's chain head (the chain lengths ``/metrics`` shows)."""
    async with db.connect() as conn:
        rows = (await conn.execute(select(audit_heads).order_by(audit_heads.c.account))).all()
    return [Head(str(r.account), int(r.seq), str(r.hash)) for r in rows]


def _link(m: Any) -> Link:
    return Link(chain.row_fields(m, seq=m["seq"], prev=m["prev_hash"]), m["hash"], m["id"])
