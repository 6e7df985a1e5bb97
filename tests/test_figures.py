"""The figures a scrape and `status` show stay exact while they no longer count every row.

They come from counts the store's triggers keep (live, held, requested) and from index-backed
queries (due, overdue, in grace, deleted in the last day). After a random mix of discoveries,
deletions, holds, TTL registrations, creations, remote deletions and rules changes, each one
equals a full recount over every row, done here the slow way.
"""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from retention.breaker import Limits
from retention.emulator import Emulator
from retention.engine import Engine
from retention.metrics import Metrics
from retention.models import TTL_RULE, AgentStatus, Origin, State
from retention.policy import Hold, Policy, Rules
from retention.schema import conversation_from_row, conversations
from retention.store import Store
from retention.sweep import EngineOptions
from retention.tracking import create, track

from .conftest import small_state

AGENTS = (532, 533)
OVERDUE_AFTER = timedelta(minutes=30)
HOUR = timedelta(hours=1)
TEMP = Policy(name="temp", agents=frozenset(AGENTS), name_matches=("Temp*",), max_age=HOUR)
ALL = Policy(name="all", agents=frozenset(AGENTS), max_age=2 * HOUR)
SHORT = Policy(
    name="short", agents=frozenset({532}), name_matches=("Temp*", "Chat*"), max_age=HOUR / 2
)
LEGAL = Hold(name="legal", name_matches=("LEGAL*",))
EVERYTHING = Hold(name="all", agents=frozenset(AGENTS))
RULES = (Rules((TEMP,)), Rules((ALL,), (LEGAL,)), Rules((SHORT,)), Rules((), (EVERYTHING,)))


@pytest.fixture
def emulator() -> Emulator:
    state = small_state(conversations=10)
    state.add_agent(533, "Sales bot", created_at=datetime.now(UTC) - timedelta(days=300))
    return Emulator(state)


async def recount(store: Store, now: datetime) -> tuple[list[AgentStatus], set[int], dict]:  # type: ignore[type-arg]
    """Every row read and counted in Python: the figures as they are by definition."""
    async with store.db.connect() as conn:
        rows = [
            conversation_from_row(r._mapping) for r in await conn.execute(select(conversations))
        ]
    live = (State.ACTIVE, State.HELD, State.DELETING)
    figures: dict[int, Counter[str]] = {}
    breaker: dict[int, Counter[str]] = {}
    requested = set()
    for c in rows:
        f = figures.setdefault(c.agent_id, Counter())
        due = c.state in (State.ACTIVE, State.DELETING) and c.due_at is not None and c.due_at <= now
        in_grace = c.grace_until is not None and c.grace_until > now
        f["tracked"] += c.state in live
        f["held"] += c.state is State.HELD
        f["due"] += due
        f["grace"] += due and in_grace
        f["overdue"] += due and not in_grace and c.due_at <= now - OVERDUE_AFTER  # type: ignore[operator]
        f["deleted"] += c.state is State.DELETED and c.finished_at >= now - timedelta(days=1)  # type: ignore[operator]
        if c.state in live and c.origin is not Origin.DISCOVERED:
            requested.add(c.agent_id)
        if c.state in live:
            b = breaker.setdefault(c.agent_id, Counter())
            b["live"] += 1
            takes = (
                c.state is State.ACTIVE and due and c.approved_at is None and not c.dry_run
                and c.dry_run_noted_at is None and not in_grace
                and (c.retry_at is None or c.retry_at <= now)
            )  # fmt: skip
            b["ttl" if c.rule == TTL_RULE else "policy"] += takes
    status = [
        AgentStatus(a, f["tracked"], f["due"], f["overdue"], f["held"], f["deleted"], f["grace"])
        for a, f in sorted(figures.items())
        if f["tracked"] or f["deleted"]
    ]
    return status, requested, breaker


async def step(rng: random.Random, engine: Engine, emulator: Emulator) -> str:
    now = datetime.now(UTC)
    agent = rng.choice(AGENTS)
    op = rng.choice(["add", "discover", "sweep", "rules", "track", "create", "vanish"])
    if op == "add":
        for _ in range(rng.randint(1, 8)):
            name = rng.choice(["Temp", "Chat", "LEGAL"]) + f" {rng.randint(1, 999)}"
            age = timedelta(minutes=rng.choice([5, 40, 90, 200]))
            emulator.state.add_conversation(agent, name, created_at=now - age)
    elif op == "discover":
        await engine.sweep("discover", delete=False)  # due ones stay until a deletion sweep
    elif op == "sweep":
        await engine.sweep()
    elif op == "rules":
        await engine.set_rules(rng.choice(RULES))
    elif op in ("track", "vanish"):
        by_id = sorted(emulator.state.agents[agent].conversations.values(), key=lambda c: c.id)
        if not by_id:
            return op
        session_id = rng.choice(by_id).session_id  # by id: session ids are random uuids
        if op == "track":
            ttl = timedelta(minutes=rng.choice([1, 60]))
            await track(engine.context, agent_id=agent, session_id=session_id, ttl=ttl)
        else:  # somebody else deletes it; the next reconcile marks it gone
            del emulator.state.agents[agent].conversations[session_id]
    elif op == "create":
        await create(engine.context, agent_id=agent, name="Created", ttl=timedelta(seconds=0.5))
    return op


@pytest.mark.parametrize("seed", [4, 5, 6, 8, 12])  # seeds whose mix reaches every figure
async def test_scrape_and_status_figures_equal_a_full_recount_after_random_operations(
    emulator: Emulator, client: object, store: Store, seed: int
) -> None:
    rng = random.Random(seed)
    options = EngineOptions(
        reconcile_every=timedelta(0),  # every walk is a reconcile: vanished ones go gone
        policy_change_grace=timedelta(hours=1),  # a rules change makes some due wait
        breaker=Limits(max_deletions=10_000, max_due_fraction=1.0),
    )
    engine = Engine(client, store, RULES[0], options=options)  # type: ignore[arg-type]
    seen: Counter[str] = Counter()
    done = []
    for _ in range(40):
        done.append(await step(rng, engine, emulator))
        now = engine.clock()
        status, requested, breaker = await recount(store, now)
        assert await store.journal.status(now, overdue_after=OVERDUE_AFTER) == status, done
        assert await store.requested_agents() == requested, done
        figures = await store.due_figures(now)
        assert {(f.agent_id, f.live, f.due_by_policy, f.due_by_ttl) for f in figures} == {
            (a, b["live"], b["policy"], b["ttl"]) for a, b in breaker.items()
        }, done
        for row in status:
            seen.update(held=row.held, due=row.due, deleted=row.deleted_24h)
            seen.update(grace=row.grace, overdue=row.overdue)
        seen.update(requested=len(requested))
    assert min(seen[k] for k in ("held", "due", "deleted", "requested", "overdue", "grace")) > 0, (
        seen,
        done,
    )
    scrape = Metrics(stats=client.stats, budget=client.budget)  # type: ignore[attr-defined]
    scrape.set_store_figures(
        {store.account: await store.journal.status(now, overdue_after=OVERDUE_AFTER)}
    )
    text = scrape.render().decode()
    for row in status:
        labels = f'{{account="default",agent="{row.agent_id}"}}'
        assert f"retention_conversations_tracked{labels} {row.tracked}.0" in text
        assert f"retention_conversations_held{labels} {row.held}.0" in text
