"""The store: migrations build the schema, UTC survives SQLite, the due set is index-backed."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text

from retention.errors import StoreError
from retention.migrate import head_revision
from retention.models import (
    AgentRecord,
    AuditOutcome,
    AuditRecord,
    Origin,
    State,
    TrackedConversation,
)
from retention.redecision import DecisionRow
from retention.schema import REVISION, metadata
from retention.store import Store

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def tracked(n: int, **kw: object) -> TrackedConversation:
    base: dict[str, object] = {
        "agent_id": 532,
        "session_id": f"s-{n}",
        "remote_id": n,
        "name": f"Chat {n}",
        "created_by": None,
        "created_at": NOW - timedelta(days=n),
        "updated_at": NOW - timedelta(days=n),
        "origin": Origin.DISCOVERED,
        "state": State.ACTIVE,
    }
    base.update(kw)
    return TrackedConversation(**base)  # type: ignore[arg-type]


async def test_migrations_build_exactly_the_declared_schema(store: Store) -> None:
    async with store.db.connect() as conn:
        diff = await conn.run_sync(
            lambda sync: compare_metadata(MigrationContext.configure(sync), metadata)
        )
    assert diff == []
    assert await store.revision() == head_revision() == REVISION, "schema.REVISION is the head"


async def test_open_creates_folder_and_file_and_reopens_without_migrating(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'deep' / 'er' / 'r.db'}"
    first = await Store.open(url)
    await first.close()
    assert (tmp_path / "deep" / "er" / "r.db").exists()
    again = await Store.open(url, migrate=False)
    try:
        assert await again.upgrade() == (head_revision(), head_revision())
    finally:
        await again.close()


@pytest.mark.sqlite_only
async def test_sqlite_runs_in_wal_mode_with_a_busy_timeout(store: Store) -> None:
    async with store.db.connect() as conn:
        assert (await conn.execute(text("PRAGMA journal_mode"))).scalar() == "wal"
        assert (await conn.execute(text("PRAGMA busy_timeout"))).scalar() == 5000


async def test_datetimes_come_back_aware_and_utc(store: Store) -> None:
    plus_two = datetime(2026, 1, 1, 14, 0, tzinfo=UTC).astimezone(timezone(timedelta(hours=2)))
    await store.insert([tracked(1, created_at=plus_two, due_at=NOW)], now=NOW)
    got = await store.get(532, "s-1")
    assert got is not None
    assert got.created_at == datetime(2026, 1, 1, 14, 0, tzinfo=UTC)
    assert got.created_at.tzinfo is UTC and got.due_at == NOW and got.first_seen == NOW


async def test_naive_datetimes_are_refused(store: Store) -> None:
    with pytest.raises(StoreError, match="naive datetime"):
        await store.insert([tracked(1, created_at=datetime(2026, 1, 1))], now=NOW)


async def test_due_set_is_read_through_the_index(store: Store) -> None:
    query = (
        "SELECT * FROM conversations WHERE state = 'active' AND due_at <= :now "
        "ORDER BY due_at LIMIT 10"
    )
    now: object
    async with store.db.begin() as conn:
        if conn.dialect.name == "postgresql":  # an empty table is scanned unless told not to
            await conn.execute(text("SET LOCAL enable_seqscan = off"))
            explain, now = "EXPLAIN ", NOW.replace(tzinfo=None)
        else:
            explain, now = "EXPLAIN QUERY PLAN ", "2026-11-26 00:00:00"
        plan = (await conn.execute(text(explain + query), {"now": now})).all()
    detail = " ".join(str(row[-1]) for row in plan)
    assert "ix_conversations_state_due" in detail
    assert "SCAN conversations" not in detail


async def test_due_returns_unfinished_deletes_first_then_oldest_due(store: Store) -> None:
    items = [
        tracked(1, due_at=NOW - timedelta(hours=1)),
        tracked(2, due_at=NOW - timedelta(hours=5)),
        tracked(3, due_at=NOW + timedelta(hours=1)),  # not yet
        tracked(4, due_at=None),  # never
        tracked(5, due_at=NOW - timedelta(days=9), state=State.HELD),
        tracked(6, due_at=NOW - timedelta(days=9), state=State.DELETED),
        tracked(7, due_at=NOW, state=State.DELETING),
        tracked(8, due_at=NOW - timedelta(hours=9), dry_run_noted_at=NOW),
    ]
    await store.insert(items, now=NOW)
    due = await store.due(NOW, limit=10)
    assert [c.session_id for c in due] == ["s-7", "s-8", "s-2", "s-1"]
    quiet = await store.due(NOW, limit=10, skip_dry_run_noted=True)
    assert [c.session_id for c in quiet] == ["s-7", "s-2", "s-1"]
    assert [c.session_id for c in await store.due(NOW, limit=2)] == ["s-7", "s-8"]


async def test_update_and_state_changes(store: Store) -> None:
    await store.insert([tracked(1)], now=NOW)
    original = await store.get(532, "s-1")
    assert original is not None
    await store.update([replace(original, name="Renamed", ttl=timedelta(hours=2))], now=NOW)
    await store.set_state(532, "s-1", State.DELETING, now=NOW, count_attempt=True)
    await store.set_state(532, "s-1", State.DELETED, now=NOW + timedelta(seconds=1))
    final = await store.get(532, "s-1")
    assert final is not None
    assert (final.name, final.ttl, final.state, final.attempts) == (
        "Renamed",
        timedelta(hours=2),
        State.DELETED,
        1,
    )
    assert final.finished_at == NOW + timedelta(seconds=1)


async def test_audit_is_kept_in_order(store: Store) -> None:
    for outcome in (AuditOutcome.FAILED, AuditOutcome.DELETED):
        record = AuditRecord(NOW, 532, "s-1", "Chat", "qa", timedelta(hours=3), outcome)
        await store.journal.add_audit(record)
    trail = await store.journal.audit_trail(532, "s-1")
    assert [r.outcome for r in trail] == [AuditOutcome.FAILED, AuditOutcome.DELETED]
    assert trail[0].age == timedelta(hours=3)


async def test_status_counts_per_agent(store: Store) -> None:
    await store.insert(
        [
            tracked(1, due_at=NOW - timedelta(hours=1)),  # due and overdue
            tracked(2, due_at=NOW - timedelta(seconds=30)),  # due, not yet overdue
            tracked(3, due_at=NOW + timedelta(days=1)),
            tracked(4, state=State.HELD),
            tracked(5, state=State.DELETED, finished_at=NOW - timedelta(hours=2)),
            tracked(6, state=State.DELETED, finished_at=NOW - timedelta(days=3)),
            tracked(7, agent_id=533),
        ],
        now=NOW,
    )
    rows = await store.journal.status(NOW, overdue_after=timedelta(minutes=2))
    assert [(r.agent_id, r.tracked, r.due, r.overdue, r.held, r.deleted_24h) for r in rows] == [
        (532, 4, 2, 1, 1, 1),
        (533, 1, 0, 0, 0, 0),
    ]


async def test_agents_and_meta_round_trip(store: Store) -> None:
    assert await store.agent(532) is None
    await store.save_agent(AgentRecord(532, "Support", sync_cursor=10), now=NOW)
    await store.save_agent(
        AgentRecord(532, "Support", sync_cursor=12, last_full_sync_at=NOW), now=NOW
    )
    assert await store.agent(532) == AgentRecord(532, "Support", 12, NOW)
    await store.set_meta("k", "v1")
    await store.set_meta("k", "v2")
    assert await store.get_meta("k") == "v2"


async def test_bad_url_is_a_store_error() -> None:
    with pytest.raises(StoreError, match="not a SQLAlchemy URL"):
        await Store.open("not a url")
    with pytest.raises(StoreError, match="unknown database or driver 'nosuchdb\\+driver'"):
        await Store.open("nosuchdb+driver://x/y")
    with pytest.raises(StoreError, match="driver 'sqlite' is not async"):
        await Store.open("sqlite:///r.db")


async def read_decisions(store: Store) -> list[DecisionRow]:
    return [row async for batch in store.decision_batches(1) for row in batch]


async def test_decision_batches_read_the_live_rows_facts_and_decisions(store: Store) -> None:
    rows = [tracked(n, rule="old", due_at=NOW, reason="why") for n in range(5)]
    await store.insert(rows, now=NOW)
    await store.set_state(532, "s-3", State.GONE, now=NOW)
    read = await read_decisions(store)
    assert [r.facts for r in read] == [c.facts() for c in rows if c.session_id != "s-3"]
    assert {(r.stored.rule, r.stored.due_at, r.stored.reason) for r in read} == {
        ("old", NOW, "why")
    }


async def test_saving_decisions_leaves_rows_a_deletion_moved_on(store: Store) -> None:
    await store.insert([tracked(1), tracked(2)], now=NOW)
    snapshot = await read_decisions(store)
    await store.set_state(532, "s-2", State.DELETED, now=NOW)  # a deletion, meanwhile
    decided = [
        (r, r.stored._replace(rule="new", due_at=NOW, reason="re-evaluated")) for r in snapshot
    ]
    await store.save_decisions(decided)
    first, second = await store.get(532, "s-1"), await store.get(532, "s-2")
    assert first is not None and (first.rule, first.state) == ("new", State.ACTIVE)
    assert second is not None and (second.rule, second.state) == (None, State.DELETED)


async def test_saving_decisions_leaves_a_row_that_went_mid_delete_meanwhile(store: Store) -> None:
    await store.insert([tracked(1)], now=NOW)
    [before] = await read_decisions(store)
    await store.set_state(532, "s-1", State.DELETING, now=NOW)  # the intent, meanwhile
    await store.save_decisions([(before, before.stored._replace(rule="new", state=State.HELD))])
    row = await store.get(532, "s-1")
    assert row is not None and (row.rule, row.state) == (None, State.DELETING)
