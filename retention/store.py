"""The local store: SQLAlchemy 2 async, SQLite (aiosqlite, WAL) by default, UTC kept intact.

It knows nothing of policies: it keeps facts, decisions already made, states and the audit
trail, and answers the engine's questions. Migrations (Alembic) are the only way the schema
changes; :meth:`Store.open` applies pending ones.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import (
    AsyncGenerator,
    Collection,
    Iterable,
    Sequence,
)
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, case, delete, func, insert, or_, select, update
from sqlalchemy.exc import SQLAlchemyError

from retention import decisions
from retention.breaker import AgentDue
from retention.clocks import utc_now
from retention.database import Database
from retention.errors import ConfigError, LeaseLost, StoreError
from retention.journal import Journal, live_counts
from retention.migrate import current_revision, upgrade_to_head
from retention.models import (
    DEFAULT_ACCOUNT,
    LIVE_STATES,
    TTL_RULE,
    AgentRecord,
    AuditRecord,
    Lease,
    State,
    TrackedConversation,
)
from retention.redecision import DecisionRow, StoredDecision
from retention.schema import (
    REVISION,
    agent_from_row,
    agents,
    conversation_counts,
    conversation_from_row,
    conversation_row,
    conversations,
    lease_from_row,
    leases,
    meta,
    replicas,
)

logger = logging.getLogger(__name__)
STORE_ID_KEY = "store_id"


class Store:
    """All reads and writes of the local database. Build it with :meth:`open`.

    A store reads and writes the rows of one account (:attr:`account`; ``default`` unless
    told): agent ids are unique only within an account, so every statement names it.
    :meth:`for_account` gives the same database seen as another account. The audit trail, the
    sweep log and the figures are its :attr:`journal`'s.
    """

    def __init__(self, db: Database, account: str = DEFAULT_ACCOUNT) -> None:
        self.db = db
        self.account = account
        self.journal = Journal(db, account)
        self._owns_db = True

    def for_account(self, account: str) -> Store:
        """This store's database, seen as ``account``'s (closing it leaves the database open)."""
        if account == self.account:
            return self
        view = Store(self.db, account)
        view._owns_db = False
        return view

    @classmethod
    async def open(
        cls, url: str, *, migrate: bool = True, create: bool = True, current: bool = True
    ) -> Store:
        """Connect (creating a SQLite file and its folder on first use) and migrate to head.

        ``create=False`` is for commands that only read (and the facts ``plan`` writes): the
        store must exist and be at the latest migration; nothing is created or migrated, and
        anything else is a ConfigError (key ``store.url``) saying so. ``current=False`` also
        takes a store at an older migration (``db backup``, before an upgrade).
        """
        store = cls(Database.open(url, create=create))
        try:
            if not create:
                await store._require_head(current=current)
            elif migrate:
                await store.upgrade()
        except BaseException:
            await store.close()
            raise
        return store

    async def _require_head(self, *, current: bool = True) -> None:
        revision, head = await self.revision(), REVISION
        if revision is None:
            raise ConfigError("the store has no schema", key="store.url")
        if current and revision != head:
            raise ConfigError(
                f"the store is at migration {revision}, this retention needs {head}",
                key="store.url",
            )

    async def close(self) -> None:
        if self._owns_db:
            await self.db.close()

    # ---- schema ------------------------------------------------------------------------------

    async def upgrade(self) -> tuple[str | None, str | None]:
        """Apply pending migrations; returns (revision before, revision after)."""
        try:
            async with self.db.bind.begin() as conn:
                before = await conn.run_sync(current_revision)
                await conn.run_sync(upgrade_to_head)
                after = await conn.run_sync(current_revision)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot migrate the store: {exc}") from None
        except OSError as exc:  # a database server that cannot be reached
            raise StoreError(f"cannot reach the database to migrate it: {exc}") from None
        if before != after:
            logger.info("store migrated from %s to %s", before or "empty", after)
        return before, after

    async def revision(self) -> str | None:
        async with self.db.connect() as conn:
            return await conn.run_sync(current_revision)

    # ---- agents ------------------------------------------------------------------------------

    async def agent(self, agent_id: int) -> AgentRecord | None:
        async with self.db.connect() as conn:
            query = select(agents).where(agents.c.account == self.account, agents.c.id == agent_id)
            row = (await conn.execute(query)).first()
        return agent_from_row(row._mapping) if row else None

    async def all_agents(self) -> dict[int, AgentRecord]:
        """Every agent the store knows (one row per agent: a small table), by id."""
        async with self.db.connect() as conn:
            rows = (
                await conn.execute(select(agents).where(agents.c.account == self.account))
            ).all()
        return {int(r.id): agent_from_row(r._mapping) for r in rows}

    async def save_agent(self, record: AgentRecord, *, now: datetime) -> None:
        values = {
            "name": record.name,
            "sync_cursor": record.sync_cursor,
            "last_full_sync_at": record.last_full_sync_at,
            "platform_retention_period": record.platform_retention_period,
            "platform_retention_days": record.platform_retention_days,
            "pages": record.pages,
            "last_seen": now,
        }
        async with self.db.begin() as conn:
            result = await conn.execute(
                update(agents)
                .where(agents.c.account == self.account, agents.c.id == record.id)
                .values(**values)
            )
            if result.rowcount == 0:
                await conn.execute(
                    insert(agents).values(
                        account=self.account, id=record.id, first_seen=now, **values
                    )
                )

    # ---- conversations -----------------------------------------------------------------------

    async def conversations(
        self,
        agent_id: int | None = None,
        *,
        states: Iterable[State] | None = None,
        session_ids: Iterable[str] | None = None,
    ) -> list[TrackedConversation]:
        query = select(conversations).where(conversations.c.account == self.account)
        if agent_id is not None:
            query = query.where(conversations.c.agent_id == agent_id)
        if states is not None:
            query = query.where(conversations.c.state.in_([s.value for s in states]))
        keys = list(session_ids) if session_ids is not None else None
        async with self.db.connect() as conn:
            if keys is None:
                rows = (await conn.execute(query.order_by(conversations.c.id))).all()
            else:  # in chunks: SQLite caps the number of bound parameters
                rows = []
                for start in range(0, len(keys), 500):
                    chunk = query.where(conversations.c.session_id.in_(keys[start : start + 500]))
                    rows += (await conn.execute(chunk)).all()
        return [conversation_from_row(r._mapping) for r in rows]

    async def decision_batches(self, size: int) -> AsyncGenerator[list[DecisionRow], None]:
        """Live conversations (active, held, deleting) as a rules change reads them: their facts
        and stored decision only, ``size`` at a time in id order, each batch read on its own
        connection: memory follows the batch, and writers go on between batches. A row changed
        meanwhile is seen as it is when its batch is read."""
        last = 0
        while True:
            async with self.db.connect() as conn:
                rows = await decisions.read_batch(conn, self.account, last, size)
            if not rows:
                return
            last = rows[-1].key
            yield rows

    async def checkpoint(self) -> None:
        """Fold SQLite's write-ahead log back into the file after a large change (no-op on
        other databases): the WAL would otherwise keep the size of the largest change."""
        await self.db.checkpoint()

    async def requested_agents(self) -> set[int]:
        """Agents of live conversations that were created or registered through retention.
        Read from the counts the store's triggers keep: a few rows, whatever is tracked."""
        k = conversation_counts.c
        query = (
            select(k.agent_id)
            .where(
                k.account == self.account,
                k.requested.is_(True),
                k.state.in_(LIVE_STATES),
                k.n > 0,
            )
            .distinct()
        )
        async with self.db.connect() as conn:
            return {int(r[0]) for r in (await conn.execute(query)).all()}

    async def live_accounts(self) -> dict[str, int]:
        """Every account with live conversations in the store, and how many (from the counts
        the triggers keep: a few rows)."""
        k = conversation_counts.c
        query = (
            select(k.account, func.sum(k.n))
            .where(k.state.in_(LIVE_STATES), k.n > 0)
            .group_by(k.account)
        )
        async with self.db.connect() as conn:
            return {str(r[0]): int(r[1]) for r in (await conn.execute(query)).all()}

    async def get(self, agent_id: int, session_id: str) -> TrackedConversation | None:
        query = select(conversations).where(
            conversations.c.account == self.account,
            conversations.c.agent_id == agent_id,
            conversations.c.session_id == session_id,
        )
        async with self.db.connect() as conn:
            row = (await conn.execute(query)).first()
        return conversation_from_row(row._mapping) if row else None

    async def insert(self, items: Sequence[TrackedConversation], *, now: datetime) -> None:
        if not items:
            return
        rows = [
            {
                **conversation_row(c),
                "account": self.account,
                "first_seen": c.first_seen or now,
                "last_seen": now,
            }
            for c in items
        ]
        async with self.db.begin() as conn:
            await conn.execute(insert(conversations), rows)

    async def update(self, items: Sequence[TrackedConversation], *, now: datetime) -> None:
        """Write back changed facts and decisions, keyed by (agent, session_id)."""
        if not items:
            return
        rows = [
            {**conversation_row(c), "k_agent": c.agent_id, "k_session": c.session_id} for c in items
        ]
        for row in rows:
            row["last_seen"] = now
        statement = (
            update(conversations)
            .where(
                conversations.c.account == self.account,
                conversations.c.agent_id == bindparam("k_agent"),
                conversations.c.session_id == bindparam("k_session"),
            )
            .values({name: bindparam(name) for name in rows[0] if not name.startswith("k_")})
        )
        async with self.db.begin() as conn:
            await conn.execute(statement, rows)

    async def save_decisions(self, changes: Sequence[tuple[DecisionRow, StoredDecision]]) -> None:
        """Write new decisions (``(row as read, decision to store)`` pairs), and nothing else:
        a row whose state moved on since it was read (a deletion) is left alone."""
        if not changes:
            return
        async with self.db.begin() as conn:
            await decisions.write(conn, changes)

    async def touch(
        self,
        agent_id: int,
        session_ids: Iterable[str],
        *,
        now: datetime,
        facts_at: datetime | None = None,
    ) -> None:
        """Note that these conversations were seen listed again, unchanged: their facts were
        read at ``facts_at`` (the walk's start; default ``now``)."""
        keys = list(session_ids)
        if not keys:
            return
        statement = (
            update(conversations)
            .where(
                conversations.c.account == self.account,
                conversations.c.agent_id == agent_id,
                conversations.c.session_id == bindparam("k_session"),
            )
            .values(last_seen=now, facts_at=facts_at or now)
        )
        async with self.db.begin() as conn:
            await conn.execute(statement, [{"k_session": k} for k in keys])

    async def mark_vanished(self, agent_id: int, *, unseen_since: datetime, now: datetime) -> int:
        """Mark gone the agent's live (active or held) conversations that were first seen and
        last seen before ``unseen_since``; returns how many.

        For a complete walk begun at ``unseen_since``: it stamped ``last_seen`` at or after its
        start on every conversation it listed, so a live row stamped earlier was not listed,
        and one first seen after the start may have been created meanwhile. One statement; it
        reads the agent's live rows through ``ix_conversations_agent_state``, and holds none.
        """
        c = conversations.c
        statement = (
            update(conversations)
            .where(
                c.account == self.account,
                c.agent_id == agent_id,
                c.state.in_([State.ACTIVE.value, State.HELD.value]),
                c.first_seen < unseen_since,
                c.last_seen < unseen_since,
            )
            .values(state=State.GONE.value, last_error=None, retry_at=None, finished_at=now)
        )
        async with self.db.begin() as conn:
            result = await conn.execute(statement)
        return int(result.rowcount or 0)

    async def due(
        self,
        now: datetime,
        *,
        limit: int,
        skip_dry_run_noted: bool = False,
        include_waiting: bool = False,
        approved_only: bool = False,
        approved_only_in: Collection[int] = (),
    ) -> list[TrackedConversation]:
        """Conversations left mid-delete first, then the due set, oldest due first.

        Both parts read ``ix_conversations_state_due``: the cost follows the number due.
        Those waiting (out a policy change's grace, or to retry a failed DELETE) are left out
        unless asked for. Where the breaker stops deletion (everywhere with ``approved_only``,
        or in the agents ``approved_only_in``) only approved conversations are due.
        """
        mine = conversations.c.account == self.account
        unfinished = select(conversations).where(
            conversations.c.state == State.DELETING.value, mine
        )
        due = select(conversations).where(
            conversations.c.state == State.ACTIVE.value,
            mine,
            conversations.c.due_at <= now,
        )
        if skip_dry_run_noted:
            due = due.where(conversations.c.dry_run_noted_at.is_(None))
        approved = conversations.c.approved_at.is_not(None)
        if approved_only:
            due = due.where(approved)
        elif approved_only_in:
            due = due.where(or_(approved, conversations.c.agent_id.not_in(list(approved_only_in))))
        if not include_waiting:
            for until in (conversations.c.grace_until, conversations.c.retry_at):
                due = due.where(or_(until.is_(None), until <= now))
        async with self.db.connect() as conn:
            first = (await conn.execute(unfinished.limit(limit))).all()
            rest = (
                await conn.execute(
                    due.order_by(conversations.c.due_at, conversations.c.id).limit(
                        max(0, limit - len(first))
                    )
                )
            ).all()
        return [conversation_from_row(r._mapping) for r in [*first, *rest]]

    async def due_figures(self, now: datetime) -> list[AgentDue]:
        """Per agent: unapproved conversations a deletion sweep would take now (by policy, by
        their own TTL) and live ones: what the mass-deletion breaker judges. Live counts come
        from the triggers' counts; due ones through the ``(state, due_at)`` index."""
        c = conversations.c
        takes = unapproved_takes(self.account, now)
        by_ttl = c.rule == TTL_RULE
        query = (
            select(
                c.agent_id,
                func.sum(case((or_(c.rule.is_(None), ~by_ttl), 1), else_=0)),
                func.sum(case((by_ttl, 1), else_=0)),
            )
            .where(takes)
            .group_by(c.agent_id)
        )
        async with self.db.connect() as conn:
            counts = await live_counts(conn, self.account)
            due = {int(r[0]): (int(r[1] or 0), int(r[2] or 0)) for r in await conn.execute(query)}
        return [
            AgentDue(agent_id, *due.get(agent_id, (0, 0)), live)
            for agent_id, (live, _held) in sorted(counts.items())
            if live
        ]

    async def approve(self, now: datetime, *, agent_id: int | None = None) -> int:
        """Approve exactly the conversations due now (of one agent, or all): the breaker lets
        them be deleted, over as many sweeps as the budget needs. Returns how many."""
        c = conversations.c
        statement = (
            update(conversations)
            .where(
                c.account == self.account,
                c.state == State.ACTIVE.value,
                c.due_at <= now,
                c.approved_at.is_(None),
                c.dry_run.is_(False),
            )
            .values(approved_at=now)
        )
        if agent_id is not None:
            statement = statement.where(c.agent_id == agent_id)
        async with self.db.begin() as conn:
            result = await conn.execute(statement)
        return int(result.rowcount or 0)

    async def set_state(
        self,
        agent_id: int,
        session_id: str,
        state: State,
        *,
        now: datetime,
        error: str | None = None,
        count_attempt: bool = False,
        retry_at: datetime | None = None,
        fence: Lease | None = None,
        audit: AuditRecord | None = None,
        sweep_id: int | None = None,
    ) -> None:
        """Move a conversation to ``state``. With ``fence`` (the intent to delete), only while
        that lease is still the one in force, in the same statement: a holder that lost its
        lease (paused, partitioned) cannot record an intent, so cannot delete. LeaseLost then.

        With ``audit``, its row is appended to the account's audit chain in the same
        transaction: an outcome is recorded with its audit row or not at all (a conversation
        left ``deleting`` is resolved, and audited, by the next sweep)."""
        values: dict[str, Any] = {"state": state.value, "last_error": error, "retry_at": retry_at}
        if state in (State.DELETED, State.GONE):
            values["finished_at"] = now
        if count_attempt:
            values["attempts"] = conversations.c.attempts + 1
        statement = (
            update(conversations)
            .where(
                conversations.c.account == self.account,
                conversations.c.agent_id == agent_id,
                conversations.c.session_id == session_id,
            )
            .values(**values)
        )
        if fence is not None:
            statement = statement.where(
                select(leases.c.token)
                .where(
                    leases.c.scope == fence.scope,
                    leases.c.token == fence.token,
                    leases.c.holder == fence.holder,
                    leases.c.expires_at > now,
                )
                .exists()
            )
        async with self.db.begin() as conn:
            result = await conn.execute(statement)
            if audit is not None and (fence is None or result.rowcount):
                await self.journal.audit.append(audit, sweep_id=sweep_id, conn=conn)
        if fence is not None and not result.rowcount:
            raise LeaseLost(f"the lease on {fence.scope} is no longer {fence.holder}'s")

    # ---- leases ------------------------------------------------------------------------------

    async def lease(self, scope: str) -> Lease | None:
        async with self.db.connect() as conn:
            row = (await conn.execute(select(leases).where(leases.c.scope == scope))).first()
        return lease_from_row(row._mapping) if row else None

    async def take_lease(
        self, scope: str, holder: str, *, now: datetime, ttl: timedelta, force: bool = False
    ) -> Lease | None:
        """Take the lease when it is free, lapsed or already ours; None while another holds it.
        ``force`` takes it from a holder known to be dead (its OS lock was free).

        Compare-and-swap on the token: of two takers of a lapsed lease one wins, and a new
        holder's token is one more than any before it.
        """
        current = await self.lease(scope)
        expires = now + ttl
        if current is None:
            try:
                async with self.db.begin() as conn:
                    await conn.execute(
                        insert(leases).values(
                            scope=scope, holder=holder, token=1, acquired_at=now, expires_at=expires
                        )
                    )
            except StoreError:
                return None  # another took it first
            return Lease(scope, holder, 1, now, expires)
        if current.holder != holder and current.expires_at > now and not force:
            return None
        token = current.token if current.holder == holder else current.token + 1
        async with self.db.begin() as conn:
            result = await conn.execute(
                update(leases)
                .where(leases.c.scope == scope, leases.c.token == current.token)
                .values(holder=holder, token=token, acquired_at=now, expires_at=expires)
            )
        return Lease(scope, holder, token, now, expires) if result.rowcount else None

    async def renew_lease(self, lease: Lease, *, now: datetime, ttl: timedelta) -> Lease | None:
        """Extend our lease; None when it is no longer ours (lapsed and taken, or gone)."""
        async with self.db.begin() as conn:
            result = await conn.execute(
                update(leases)
                .where(
                    leases.c.scope == lease.scope,
                    leases.c.holder == lease.holder,
                    leases.c.token == lease.token,
                )
                .values(expires_at=now + ttl)
            )
        return replace(lease, expires_at=now + ttl) if result.rowcount else None

    async def release_lease(self, lease: Lease, *, now: datetime) -> None:
        """Let the lease lapse now, if it is still ours: a standby takes over at once."""
        async with self.db.begin() as conn:
            await conn.execute(
                update(leases)
                .where(
                    leases.c.scope == lease.scope,
                    leases.c.holder == lease.holder,
                    leases.c.token == lease.token,
                )
                .values(expires_at=now)
            )

    async def db_now(self) -> datetime:
        """The database's clock, as leases and replicas compare their times on it: the
        server's ``statement_timestamp()`` on PostgreSQL (one clock for every machine); this
        host's clock for a SQLite file, which only this host's processes share."""
        if self.db.bind.dialect.name != "postgresql":
            return utc_now()
        async with self.db.connect() as conn:
            value = (await conn.execute(select(func.statement_timestamp()))).scalar_one()
        assert isinstance(value, datetime)
        return value.astimezone(UTC)

    async def leases(self, prefix: str = "") -> list[Lease]:
        """Every lease whose scope starts with ``prefix``, by scope."""
        query = select(leases).where(leases.c.scope.startswith(prefix)).order_by(leases.c.scope)
        async with self.db.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [lease_from_row(r._mapping) for r in rows]

    # ---- replicas ----------------------------------------------------------------------------

    async def beat(self, replica: str, *, started_at: datetime, now: datetime) -> None:
        """This replica is alive at ``now`` (its row made on the first beat)."""
        async with self.db.begin() as conn:
            result = await conn.execute(
                update(replicas).where(replicas.c.id == replica).values(beat_at=now)
            )
            if result.rowcount == 0:
                await conn.execute(
                    insert(replicas).values(id=replica, started_at=started_at, beat_at=now)
                )

    async def live_replicas(self, *, now: datetime, within: timedelta) -> list[str]:
        """The replicas whose last beat is younger than ``within``, by id."""
        query = (
            select(replicas.c.id).where(replicas.c.beat_at > now - within).order_by(replicas.c.id)
        )
        async with self.db.connect() as conn:
            return [str(r[0]) for r in (await conn.execute(query)).all()]

    async def forget_replica(self, replica: str) -> None:
        """Remove this replica's row (a clean stop)."""
        async with self.db.begin() as conn:
            await conn.execute(delete(replicas).where(replicas.c.id == replica))

    async def forget_dead_replicas(self, *, older_than: datetime) -> None:
        """Remove the rows of replicas whose last beat is older than ``older_than``."""
        async with self.db.begin() as conn:
            await conn.execute(delete(replicas).where(replicas.c.beat_at < older_than))

    async def note_dry_run(self, agent_id: int, session_id: str, *, now: datetime) -> None:
        statement = (
            update(conversations)
            .where(
                conversations.c.account == self.account,
                conversations.c.agent_id == agent_id,
                conversations.c.session_id == session_id,
            )
            .values(dry_run_noted_at=now)
        )
        async with self.db.begin() as conn:
            await conn.execute(statement)

    # ---- meta --------------------------------------------------------------------------------

    async def identity(self) -> str:
        """This store's own id, made at first use: a plan names the store it was made on."""
        known = await self.get_meta(STORE_ID_KEY)
        if known is None:
            known = uuid.uuid4().hex
            await self.set_meta(STORE_ID_KEY, known)
        return known

    async def approve_these(self, now: datetime, keys: Iterable[tuple[int, str]]) -> int:
        """Approve these conversations, where they are due now (applying a plan approves it)."""
        c = conversations.c
        statement = (
            update(conversations)
            .where(
                c.account == self.account,
                c.agent_id == bindparam("k_agent"),
                c.session_id == bindparam("k_session"),
                c.state == State.ACTIVE.value,
                c.due_at <= now,
                c.approved_at.is_(None),
            )
            .values(approved_at=now)
        )
        rows = [{"k_agent": agent, "k_session": session} for agent, session in keys]
        if not rows:
            return 0
        async with self.db.begin() as conn:
            result = await conn.execute(statement, rows)
        return int(result.rowcount or 0)

    async def get_meta(self, key: str) -> str | None:
        async with self.db.connect() as conn:
            row = (await conn.execute(select(meta.c.value).where(meta.c.key == key))).first()
        return str(row[0]) if row else None

    async def set_meta(self, key: str, value: str) -> None:
        async with self.db.begin() as conn:
            result = await conn.execute(update(meta).where(meta.c.key == key).values(value=value))
            if result.rowcount == 0:
                await conn.execute(insert(meta).values(key=key, value=value))


def unapproved_takes(account: str, now: datetime) -> Any:
    """The unapproved conversations of ``account`` a deletion sweep would take ``now``: what the
    mass-deletion breaker counts, and so what it blocks when it trips."""
    c = conversations.c
    return and_(
        c.state == State.ACTIVE.value,
        c.account == account,
        c.due_at <= now,
        c.approved_at.is_(None),
        c.dry_run.is_(False),
        c.dry_run_noted_at.is_(None),
        or_(c.grace_until.is_(None), c.grace_until <= now),
        or_(c.retry_at.is_(None), c.retry_at <= now),
    )
