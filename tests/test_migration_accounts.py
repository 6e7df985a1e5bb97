"""Migration 0010 (accounts) on a store that served one account: every row, TTL, decision,
audit entry and count is kept, and all of it belongs to the account ``default``. On both
backends, and back down to 0009 and up again."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from alembic import command
from sqlalchemy import Connection, text

from retention.migrate import alembic_config
from retention.models import AgentRecord, AuditOutcome, AuditRecord, Origin, State, SweepReport
from retention.models import TrackedConversation as Tracked
from retention.schema import REVISION, metadata
from retention.store import Store

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
H = timedelta(hours=1)
# Columns this comparison leaves out: the account itself, and the audit chain (migration 0012;
# tests/test_audit_chain.py), which 0009 does not have.
LATER = ("account", "seq", "prev_hash", "hash")
TABLES = ("agents", "conversations", "conversation_counts", "audit", "sweeps", "leases", "meta")


def conversation(n: int, agent: int, **kw: Any) -> Tracked:
    base: dict[str, Any] = {
        "agent_id": agent,
        "session_id": f"s-{n}",
        "remote_id": n,
        "name": f"Chat {n}",
        "created_by": 17 if n % 3 else None,
        "created_at": NOW - n * H,
        "updated_at": NOW - n * H / 2,
        "origin": Origin.DISCOVERED,
        "state": State.ACTIVE,
    }
    return Tracked(**{**base, **kw})


async def fill(store: Store) -> None:
    """What a single-account store holds after a while: agents, conversations in every state,
    some with their own TTL, decisions, an audit trail, sweeps and a lease."""
    for agent in (532, 533):
        await store.save_agent(
            AgentRecord(agent, f"Agent {agent}", 90, NOW, "days", 30, 4), now=NOW
        )
    rows = [
        conversation(n, 532 if n % 2 else 533, due_at=NOW + n * H, rule="qa") for n in range(40)
    ]
    rows += [
        conversation(
            100 + n,
            532,
            origin=Origin.CREATED,
            ttl=timedelta(hours=2 + n),
            ttl_from=NOW - H,
            due_at=NOW + (1 + n) * H,
            rule="own TTL",
        )
        for n in range(5)
    ]
    await store.insert(rows, now=NOW)
    await store.set_state(532, "s-1", State.HELD, now=NOW)
    await store.set_state(533, "s-2", State.DELETED, now=NOW)
    await store.set_state(532, "s-3", State.GONE, now=NOW)
    await store.set_state(533, "s-4", State.DELETING, now=NOW, error="timeout", count_attempt=True)
    report = SweepReport(kind="once", started_at=NOW, finished_at=NOW + H, deleted=1)
    sweep = await store.journal.start_sweep(report)
    await store.journal.finish_sweep(sweep, report)
    for n, outcome in ((2, AuditOutcome.DELETED), (4, AuditOutcome.FAILED)):
        record = AuditRecord(NOW, 533, f"s-{n}", f"Chat {n}", "qa", 2 * H, outcome, "detail")
        await store.journal.add_audit(record, sweep_id=sweep)
    await store.take_lease("account:default", "host pid=1", now=NOW, ttl=timedelta(seconds=30))
    await store.identity()


async def dump(store: Store) -> dict[str, list[tuple[Any, ...]]]:
    """Every table's rows, without the account column, in a stable order."""
    out = {}
    async with store.db.connect() as conn:
        for name in TABLES:
            columns = [c.name for c in metadata.tables[name].c if c.name not in LATER]
            result = await conn.execute(text(f"SELECT {', '.join(columns)} FROM {name}"))
            out[name] = sorted(tuple(r) for r in result.all())
    return out


async def accounts(store: Store) -> set[str]:
    found: set[str] = set()
    async with store.db.connect() as conn:
        for name in ("agents", "conversations", "conversation_counts", "audit", "sweeps"):
            result = await conn.execute(text(f"SELECT DISTINCT account FROM {name}"))
            found |= {str(r[0]) for r in result.all()}
    return found


async def migrate(store: Store, revision: str, *, down: bool = False) -> None:
    def run(sync: Connection) -> None:
        cfg = alembic_config()
        cfg.attributes["connection"] = sync
        (command.downgrade if down else command.upgrade)(cfg, revision)

    async with store.db.begin() as conn:
        await conn.run_sync(run)


async def test_a_single_account_store_keeps_every_row_through_the_accounts_migration(
    blank_store_url: str,
) -> None:
    store = await Store.open(blank_store_url, migrate=False)
    try:
        await migrate(store, "0009")
        await fill_at_0009(store)
        before = await dump(store)
        assert len(before["conversations"]) == 45 and len(before["audit"]) == 2

        await migrate(store, "head")
        after = await dump(store)
        assert after == before, "every row, TTL, decision, state and audit entry kept"
        assert await accounts(store) == {"default"}
        held = await store.get(532, "s-1")
        assert held is not None and held.state is State.HELD
        own = await store.get(532, "s-104")
        assert own is not None and own.ttl == timedelta(hours=6) and own.due_at == NOW + 5 * H
        assert [a.outcome for a in await store.journal.audit_trail(533, "s-2")] == [
            AuditOutcome.DELETED
        ]
        status = await store.journal.status(NOW, overdue_after=H)
        figures = {s.agent_id: (s.tracked, s.held) for s in status}
        assert figures == {532: (24, 1), 533: (19, 0)}, "the counts follow the rows"
        # Another account sees none of it.
        other = store.for_account("acme")
        assert await other.get(532, "s-1") is None
        assert await other.journal.status(NOW, overdue_after=H) == []

        await migrate(store, "0009", down=True)
        assert await dump(store) == before, "down again, nothing lost"
        await migrate(store, "head")
        assert await dump(store) == before
    finally:
        await store.close()


async def fill_at_0009(store: Store) -> None:
    """Rows written by the store as it was at migration 0009: at head now, then taken down,
    so the rows are the ones the code writes (the dump before and after must match)."""
    await migrate(store, "head")
    await fill(store)
    await migrate(store, "0009", down=True)


async def test_a_downgrade_refuses_while_another_accounts_rows_are_stored(store: Store) -> None:
    """Any table: an agent or an audit row of another account would be filed under default."""
    now = NOW
    await store.for_account("acme").save_agent(AgentRecord(900, "theirs", 1234), now=now)
    try:
        await migrate(store, "0009", down=True)
    except Exception as exc:  # alembic wraps nothing: the migration's own error
        assert "rows of agents belong to accounts other than 'default'" in str(exc)
    else:
        raise AssertionError("the downgrade went through")
    assert await store.revision() == REVISION, "the whole downgrade rolled back"
    agent = await store.for_account("acme").agent(900)
    assert agent is not None and agent.sync_cursor == 1234, "nothing was changed"
