"""How a rules change reads and writes the store: SQLite's one-statement paths (a JSON batch
read, an UPDATE ... FROM VALUES write) against the portable ones, on real migrated files."""

from __future__ import annotations

import random
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from retention import decisions
from retention.models import AgeFrom, Origin, State, TrackedConversation
from retention.redecision import DecisionRow, StoredDecision
from retention.store import Store

NOW = datetime(2026, 11, 26, 12, 0, 0, 123456, tzinfo=UTC)
SIZE = 2 * decisions.SQLITE_ROWS[1] + 345  # full statements, a short last one, small groups
LIVE = (State.ACTIVE, State.HELD, State.DELETING)


def varied(n: int, rng: random.Random) -> TrackedConversation:
    """Rows with every decision column set or unset, in every state, names of every kind."""

    def some(delta: timedelta) -> datetime | None:
        return NOW + delta * rng.randint(-50, 50) if rng.random() < 0.4 else None

    origin = rng.choice(list(Origin))
    return TrackedConversation(
        agent_id=rng.choice([532, 533, 9_000_000_001]),
        session_id=f"s-{n}",
        remote_id=n if origin is Origin.DISCOVERED else rng.choice([None, n]),
        name=rng.choice(["Chat", "QA-12 smoke", 'quote " and \\ back', "ünï 💬", ""]) + str(n),
        created_by=rng.choice([None, 17]),
        created_at=NOW - timedelta(seconds=rng.randint(0, 10**7), microseconds=n),
        updated_at=NOW - timedelta(seconds=rng.randint(0, 10**6)),
        origin=origin,
        state=rng.choice([*LIVE, State.DELETED, State.GONE]),
        last_activity_at=some(timedelta(hours=1)),
        ttl=rng.choice([None, timedelta(hours=36), timedelta(seconds=1.5)]),
        ttl_from=some(timedelta(minutes=7)),
        due_at=some(timedelta(days=1)),
        rule=rng.choice([None, "qa-chats", "ttl"]),
        reason=rng.choice([None, "max_age 30d by created", "held by 'legal'"]),
        provisional=rng.random() < 0.5,
        dry_run=rng.random() < 0.5,
        age_from=rng.choice([None, *AgeFrom]),
        grace_until=some(timedelta(minutes=30)),
        approved_at=some(timedelta(hours=2)),
        dry_run_noted_at=some(timedelta(hours=3)),
    )


@pytest.fixture
async def filled(tmp_path: Path) -> tuple[Path, list[TrackedConversation]]:
    rng = random.Random(7)
    rows = [varied(n, rng) for n in range(SIZE)]
    path = tmp_path / "filled.db"
    store = await Store.open(f"sqlite+aiosqlite:///{path}")
    await store.insert(rows, now=NOW)
    await store.checkpoint()
    await store.close()
    return path, rows


async def read_all(store: Store, *, portable: bool, size: int = 700) -> list[DecisionRow]:
    read: list[DecisionRow] = []
    last = 0
    while True:
        async with store.db.connect() as conn:
            batch = await decisions.read_batch(conn, store.account, last, size, portable=portable)
        if not batch:
            return read
        read.extend(batch)
        last = batch[-1].key


async def test_the_json_read_gives_exactly_what_the_portable_read_gives(
    filled: tuple[Path, list[TrackedConversation]],
) -> None:
    path, rows = filled
    store = await Store.open(f"sqlite+aiosqlite:///{path}")
    try:
        fast, portable = await read_all(store, portable=False), await read_all(store, portable=True)
    finally:
        await store.close()
    assert fast == portable
    live = [c for c in rows if c.state in LIVE]
    assert [r.facts for r in fast] == [c.facts() for c in live]
    assert [r.key for r in fast] == sorted(r.key for r in fast)
    assert [r.stored for r in fast] == [
        StoredDecision(
            c.state,
            c.due_at,
            c.rule,
            c.reason,
            c.provisional,
            c.dry_run,
            c.age_from,
            c.grace_until,
            c.approved_at,
            c.dry_run_noted_at,
        )
        for c in live
    ]


def new_decision(row: DecisionRow, rng: random.Random) -> StoredDecision:
    state = row.stored.state
    if state is not State.DELETING and rng.random() < 0.3:
        state = State.HELD if state is State.ACTIVE else State.ACTIVE
    return row.stored._replace(
        state=state,
        due_at=None if rng.random() < 0.2 else NOW + timedelta(minutes=rng.randint(-999, 999)),
        rule=rng.choice([None, "test-chats"]),
        reason="re-decided",
        provisional=not row.stored.provisional,
        age_from=rng.choice([None, AgeFrom.UPDATED]),
        grace_until=None,
        approved_at=rng.choice([None, NOW]),
    )


async def write_with(path: Path, *, portable: bool) -> tuple[list[dict[str, object]], set[int]]:
    """Re-decide every live row, while a deletion moves some of them on; then dump the table."""
    rng = random.Random(11)
    store = await Store.open(f"sqlite+aiosqlite:///{path}")
    try:
        read = await read_all(store, portable=portable)
        changes = [(row, new_decision(row, rng)) for row in read if rng.random() < 0.8]
        meanwhile = {row.key for row, _ in changes[::97]}
        for row, _ in changes[::97]:  # meanwhile, a deletion takes some of them
            await store.set_state(row.facts.agent_id, row.facts.session_id, State.DELETED, now=NOW)
        async with store.db.begin() as conn:
            await decisions.write(conn, changes, portable=portable)
        again = await read_all(store, portable=portable)  # and a small change after it
        async with store.db.begin() as conn:
            await decisions.write(
                conn, [(r, new_decision(r, rng)) for r in again[:7]], portable=portable
            )
        async with store.db.connect() as conn:
            dump = (await conn.execute(text("SELECT * FROM conversations ORDER BY id"))).all()
            counts = (
                await conn.execute(text("SELECT * FROM conversation_counts ORDER BY 1, 2, 3"))
            ).all()
    finally:
        await store.close()
    tables = [dict(r._mapping) for r in dump] + [dict(c._mapping) for c in counts]
    return tables, meanwhile


async def test_the_one_statement_write_stores_exactly_what_the_portable_write_stores(
    filled: tuple[Path, list[TrackedConversation]], tmp_path: Path
) -> None:
    path, _ = filled
    copy = tmp_path / "copy.db"
    shutil.copy(path, copy)
    before, meanwhile = await write_with(path, portable=True)
    after, _ = await write_with(copy, portable=False)
    assert after == before
    rows = {r["id"]: r for r in after if "id" in r}
    assert sum(r["reason"] == "re-decided" for r in rows.values()) > SIZE // 3
    assert meanwhile and all(
        (rows[k]["state"], rows[k]["reason"]) != (State.DELETED.value, "re-decided")
        and rows[k]["state"] == State.DELETED.value
        for k in meanwhile
    )


@pytest.mark.sqlite_only
@pytest.mark.parametrize("as_json", [True, False])
async def test_a_batch_is_read_by_its_id_range_never_by_sorting_the_account(
    store_url: str, store: Store, as_json: bool
) -> None:
    """Each batch costs its own size: SQLite must walk the primary key from the last id, not
    read every row of the account through another index and sort them (a million rows read
    per batch made a rules change on a store of a million quadratic)."""
    compiled = decisions._read_query(store.db.bind.dialect, as_json)
    state = compiled.construct_expanded_state({"account": "default", "after": 0, "size": 2000})
    async with store.db.connect() as conn:
        plan = (
            await conn.exec_driver_sql(
                "EXPLAIN QUERY PLAN " + state.statement, state.positional_parameters
            )
        ).all()
    details = " / ".join(str(row[-1]) for row in plan)
    assert "INTEGER PRIMARY KEY (rowid>?)" in details, details
    assert "TEMP B-TREE" not in details and "ix_conversations_account" not in details, details
