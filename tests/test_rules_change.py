"""A rules change on a large store: re-evaluated a batch at a time, writing only what changed.

The admin surface answers throughout (the 100 ms bound is `make bench-store`'s to measure; here
it must answer at all while 100,000 rows are re-evaluated), a change that alters no decision
writes nothing, and one that does writes exactly the rows it changed.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
from sqlalchemy import text

from retention.engine import Engine
from retention.models import Origin, State, TrackedConversation
from retention.policy import Hold, Rules
from retention.store import Store

from .conftest import TEST_CHATS

ROWS = 100_000
AGENT = 532


async def fill(store: Store, count: int) -> None:
    """Tracked conversations, half of them "Test" ones the policy decides, through the store."""
    now = datetime.now(UTC)
    for start in range(0, count, 5000):
        batch = [
            TrackedConversation(
                agent_id=AGENT,
                session_id=f"s-{n}",
                remote_id=n,
                name=f"Test {n}" if n % 2 else f"Chat {n}",
                created_by=None,
                created_at=now - timedelta(minutes=n % 50),
                updated_at=now - timedelta(minutes=n % 50),
                origin=Origin.DISCOVERED,
                state=State.ACTIVE,
            )
            for n in range(start, min(count, start + 5000))
        ]
        await store.insert(batch, now=now)


async def count_updates(store: Store) -> None:
    """A trigger in this test's store counts every row UPDATE of conversations, whoever writes."""
    async with store.db.begin() as conn:
        await conn.execute(text("CREATE TABLE updates (n INTEGER NOT NULL)"))
        await conn.execute(text("INSERT INTO updates VALUES (0)"))
        if conn.dialect.name == "postgresql":
            await conn.execute(
                text(
                    "CREATE FUNCTION count_update() RETURNS trigger LANGUAGE plpgsql AS "
                    "$$ BEGIN UPDATE updates SET n = n + 1; RETURN NULL; END $$"
                )
            )
            body = "FOR EACH ROW EXECUTE FUNCTION count_update()"
        else:
            body = "BEGIN UPDATE updates SET n = n + 1; END"
        await conn.execute(
            text(f"CREATE TRIGGER count_updates AFTER UPDATE ON conversations {body}")
        )


async def updates(store: Store) -> int:
    async with store.db.connect() as conn:
        return int((await conn.execute(text("SELECT n FROM updates"))).scalar_one())


@pytest.mark.parametrize("rows", [ROWS])
async def test_healthz_answers_while_a_large_store_is_re_evaluated(
    engine: Engine,
    store: Store,
    admin: str,
    rows: int,
) -> None:
    await fill(store, rows)
    assert await engine.apply_rules() == rows  # the first rules decide every row
    shorter = Rules((replace(TEST_CHATS, max_age=timedelta(minutes=30)),))
    answered: list[float] = []
    async with aiohttp.ClientSession() as http:
        change = asyncio.create_task(engine.set_rules(shorter))
        while not change.done():
            started = time.monotonic()
            async with http.get(admin + "/healthz") as response:
                assert response.status == 200
            if not change.done():
                answered.append(time.monotonic() - started)
            await asyncio.sleep(0.05)
        written = await change
    assert written == rows // 2, "only the Test rows, whose due time moved"
    assert len(answered) >= 3, "it answered while the change ran"


async def test_a_change_that_alters_no_decision_writes_nothing(
    engine: Engine, store: Store
) -> None:
    await fill(store, 2000)
    await engine.apply_rules()
    await count_updates(store)
    nothing = Hold(name="nothing", name_matches=("No such chat*",))
    assert await engine.set_rules(Rules((TEST_CHATS,), (nothing,))) == 0
    assert await updates(store) == 0, "no row rewritten"
    shorter = Rules((replace(TEST_CHATS, max_age=timedelta(minutes=30)),))
    assert await engine.set_rules(shorter) == 1000
    assert await updates(store) == 1000, "exactly the rows whose decision changed"
