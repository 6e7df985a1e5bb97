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
from retention.errors import StoreError
from retention.models import AuditOutcome, AuditRecord, State
from retention.schema import audit, audit_from_row, audit_heads, conversations

PAGE = 2000  # rows read per statement when walking or exporting


# What reading back a value that is not what its column holds raises (a text where a time or a
# number belongs: SQLite keeps what it is given).
UNREADABLE = (ValueError, TypeError, KeyError, OverflowError, AttributeError)


class UnreadableRow(Exception):
    """An audit row whose values cannot be read back: the message names it."""


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

    async def append(
        self,
        record: AuditRecord,
        *,
        sweep_id: int | None = None,
        conn: AsyncConnection | None = None,
    ) -> Head:
        """Add ``record`` as the chain's next row, in ``conn``'s transaction when given (the
        outcome it records is written in the same one); returns the new head."""
        if conn is None:
            async with self.db.begin() as own:
                return await self.append(record, sweep_id=sweep_id, conn=own)
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
            made = await conn.execute(
                text(
                    "INSERT INTO audit_heads (account, seq, hash) VALUES (:a, 0, :g) "
                    "ON CONFLICT (account) DO NOTHING"
                ),
                {"a": self.account, "g": GENESIS},
            )
            # Made here (not by a concurrent first append): a chain must not have rows yet.
            # Rows without a head were cut loose from it: never start the chain again silently.
            last = (
                await conn.execute(
                    select(func.max(audit.c.seq)).where(audit.c.account == self.account)
                )
            ).scalar()
            if made.rowcount and last is not None:
                raise StoreError(
                    f"the audit chain of account {self.account!r} has rows up to #{last} but "
                    "no recorded head (audit_heads): nothing is recorded, so nothing is "
                    "deleted, until it is restored; `retention audit verify` says more"
                )
            row = (await conn.execute(bump)).first()
        assert row is not None
        return int(row[0]), str(row[1])

    async def append_problem(self) -> str | None:
        """Why the chain cannot take the next row as it stands, or None: its recorded head is
        gone while rows remain, or does not name the last row (rows added or removed outside
        retention). One statement: the head and the last row from the same snapshot."""
        last_seq = (
            select(func.max(audit.c.seq)).where(audit.c.account == self.account).scalar_subquery()
        )
        query = select(audit_heads.c.seq, last_seq).where(audit_heads.c.account == self.account)
        async with self.db.connect() as conn:
            row = (await conn.execute(query)).first()
            if row is None:
                orphan = (await conn.execute(select(last_seq))).scalar()
                if orphan is None:
                    return None  # no chain yet: the first row starts it
                return (
                    f"the audit chain has rows up to #{orphan} but no recorded head: "
                    "`retention audit verify` says more"
                )
        head, last = int(row[0]), row[1]
        if (last or 0) != head:
            return (
                f"the audit chain's recorded head #{head} is not its last row "
                f"(#{last or 0}): rows were added or removed outside retention; "
                "`retention audit verify` says more"
            )
        return None

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
        """Walk the chain up to the head recorded when the walk starts (rows appended meanwhile
        are checked by the next walk), then check that every conversation the store records
        as deleted has its audit row: a chain cut at its end, or wiped with its head, holds
        together, but the conversations it recorded are still there. Costs one page read per
        :data:`PAGE` rows, and one indexed read of the deleted conversations."""
        async with self.db.connect() as conn:
            recorded = await _head(conn, self.account)
        walker = Walker(self.account, recorded=recorded, pin=pin)
        query = select(audit).where(audit.c.account == self.account, audit.c.seq <= recorded.seq)
        try:
            async for m in self._pages(query):
                link = _readable(m)
                if isinstance(link, str):
                    return Verdict(self.account, walker.checked, walker.last, link, m.get("seq"))
                if (failed := walker.step(link)) is not None:
                    return failed
        except UnreadableRow as exc:
            return Verdict(self.account, walker.checked, walker.last, str(exc))
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
            unaudited = (await conn.execute(self._unaudited())).first()
        beyond = None if past is None else _readable(past._mapping)
        if isinstance(beyond, str):
            return Verdict(self.account, walker.checked, walker.last, beyond)
        verdict = walker.end(beyond)
        if verdict.ok and unaudited is not None:
            agent_id, session_id, finished_at = unaudited
            when = f" at {finished_at:%Y-%m-%d %H:%M:%S}Z" if finished_at else ""
            problem = (
                f"conversation {session_id} of agent {agent_id} is recorded deleted{when} but "
                "no audit row says so: audit rows were removed (the chain's end cut off, or "
                "the chain wiped with its head), or an earlier version could not audit it"
            )
            return Verdict(self.account, verdict.checked, verdict.head, problem)
        return verdict

    def _unaudited(self) -> Select[Any]:
        """The first conversation recorded deleted with no ``deleted`` audit row."""
        c = conversations.c
        audited = (
            select(audit.c.id)
            .where(
                audit.c.account == c.account,
                audit.c.agent_id == c.agent_id,
                audit.c.session_id == c.session_id,
                audit.c.outcome == AuditOutcome.DELETED.value,
            )
            .exists()
        )
        return (
            select(c.agent_id, c.session_id, c.finished_at)
            .where(c.account == self.account, c.state == State.DELETED.value, ~audited)
            .order_by(c.finished_at)
            .limit(1)
        )

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
        try:
            async for m in self._pages(query):
                link = _readable(m)
                if isinstance(link, str):
                    raise StoreError(link)
                yield {**link.fields, "hash": link.hash}
        except UnreadableRow as exc:
            raise StoreError(str(exc)) from None

    async def _pages(self, query: Select[Any]) -> AsyncIterator[Any]:
        """``query``'s rows in ``seq`` order, a page at a time (keyset paging on the chain's
        unique index: each page is its own short read). A row whose values cannot be read back
        (only an edit outside retention makes one) raises :class:`UnreadableRow` naming it."""
        after = 0
        while True:
            page = query.where(audit.c.seq > after).order_by(audit.c.seq).limit(PAGE)
            try:
                async with self.db.connect() as conn:
                    rows = (await conn.execute(page)).all()
            except UNREADABLE:
                await self._name_unreadable(page)
                raise  # not reached: the row by row read raises first
            for row in rows:
                yield row._mapping
            if len(rows) < PAGE:
                return
            after = int(rows[-1]._mapping["seq"])

    async def _name_unreadable(self, page: Select[Any]) -> None:
        """Read ``page`` again row by row, to raise :class:`UnreadableRow` at the first row
        that cannot be read."""
        keys = page.with_only_columns(audit.c.id, audit.c.seq)
        async with self.db.connect() as conn:
            for row_id, seq in (await conn.execute(keys)).all():
                try:
                    (await conn.execute(select(audit).where(audit.c.id == row_id))).all()
                except UNREADABLE as exc:
                    raise UnreadableRow(
                        f"audit row #{seq} (id {row_id}) cannot be read: "
                        f"{type(exc).__name__}: {exc}: it was edited"
                    ) from None


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


def _readable(m: Any) -> Link | str:
    """The row as a link, or what makes it unreadable (a value that is not what the column
    holds: only an edit outside retention puts one there)."""
    try:
        return _link(m)
    except UNREADABLE as exc:
        where = f"audit row #{m.get('seq')} (id {m.get('id')})"
        return f"{where} cannot be read: {type(exc).__name__}: {exc}: it was edited"


def _link(m: Any) -> Link:
    return Link(chain.row_fields(m, seq=m["seq"], prev=m["prev_hash"]), m["hash"], m["id"])
