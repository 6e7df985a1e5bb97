"""Never a wrong delete: fresh facts before deleting, a clock guard, the last decision in force.

Each test here is a path by which a conversation that should be kept was once deleted: a rename
onto a hold that an incremental walk could not see, a rename under an ``updated`` policy, and a
local clock running a day ahead.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import delete

from retention.emulator import Emulator, Fault, RateLimit
from retention.emulator.seed import EmuConversation
from retention.engine import FIRST_RULES_KEY, Engine
from retention.models import AgeFrom, AuditOutcome, State, SweepReport
from retention.policy import Hold, Policy, Rules
from retention.schema import meta
from retention.store import Store
from retention.sweep import EngineOptions

from .conftest import ClientFactory, EngineFactory, small_state

AGENT = 532
DAY = timedelta(days=1)
TEMP = Policy(
    name="temp", agents=frozenset({AGENT}), name_matches=("Temp*",), max_age=timedelta(hours=1)
)
LEGAL = Hold(name="legal", name_matches=("LEGAL*",))
FRESH = timedelta(seconds=1)  # facts_max_age for these tests: a second-old listing is stale


@pytest.fixture
def emulator() -> Emulator:
    return Emulator(small_state(conversations=0))


def add(emulator: Emulator, name: str, *, age: timedelta) -> EmuConversation:
    return emulator.state.add_conversation(AGENT, name, created_at=datetime.now(UTC) - age)


def rename(conversation: EmuConversation, name: str) -> None:
    """What PUT .../conversations/{session_id} does: a new name and a new updated_at."""
    conversation.name = name
    conversation.updated_at = datetime.now(UTC)


def alive(emulator: Emulator) -> set[str]:
    return emulator.live_sessions(AGENT)


def fill(emulator: Emulator, count: int) -> None:
    for n in range(count):
        add(emulator, f"Chat {n}", age=timedelta(minutes=1))


async def renamed_onto_the_hold_before_they_are_due(
    emulator: Emulator, engine: Engine, temps: list[EmuConversation]
) -> None:
    await engine.sweep()  # the full first walk: nothing due yet
    assert emulator.calls("DELETE") == []
    for n, conversation in enumerate(temps):
        rename(conversation, f"LEGAL matter {n}")
    await asyncio.sleep(2.2)  # now due under their old names, and the listing is stale


@pytest.mark.parametrize("renamed", [2, 10])
async def test_renames_onto_a_hold_on_pages_two_and_three_are_respected(
    emulator: Emulator, make_engine: EngineFactory, store: Store, renamed: int
) -> None:
    # Lists are newest first, 20 a page: the oldest ids are on the last page.
    due_soon = timedelta(hours=1) - timedelta(seconds=2)
    temps = [add(emulator, f"Temp {n}", age=due_soon) for n in range(renamed // 2)]  # page 3
    fill(emulator, 15)
    temps += [add(emulator, f"Temp {n}", age=due_soon) for n in range(renamed // 2, renamed)]
    fill(emulator, 45 - 15 - renamed)  # 45 in all: pages 1 to 3
    engine = make_engine((TEMP,), (LEGAL,), facts_max_age=FRESH)
    await renamed_onto_the_hold_before_they_are_due(emulator, engine, temps)

    listed_before = len(emulator.calls("GET", "*/projects/532/conversations"))
    report = await engine.sweep()

    assert emulator.calls("DELETE") == [], "not one deleted under its old name"
    assert {t.session_id for t in temps} <= alive(emulator)
    for conversation in temps:
        stored = await store.get(AGENT, conversation.session_id)
        assert stored is not None and stored.state is State.HELD and stored.rule == "legal"
    listed = len(emulator.calls("GET", "*/projects/532/conversations")) - listed_before
    if renamed == 2:  # two messages calls cost less than re-reading three pages
        assert (report.refreshed, report.refresh_walks) == (2, 0)
        assert len(emulator.calls("GET", "*/messages")) == 2
    else:  # ten calls cost more than three pages and a settings call: the agent is re-read
        assert report.refresh_walks == 1 and listed >= 1 + 3
        assert emulator.calls("GET", "*/messages") == []


async def test_a_rename_under_an_updated_policy_restarts_its_clock(
    emulator: Emulator, make_engine: EngineFactory
) -> None:
    idle = Policy(
        name="idle", agents=frozenset({AGENT}), max_age=timedelta(seconds=90),
        age_from=AgeFrom.UPDATED,
    )  # fmt: skip
    old = [add(emulator, f"Idle {n}", age=timedelta(seconds=88)) for n in range(5)]
    fill(emulator, 40)  # the five are on page 3
    engine = make_engine((idle,), facts_max_age=FRESH)
    await engine.sweep()
    for conversation in old:
        rename(conversation, conversation.name + " (renamed)")
    await asyncio.sleep(2.2)
    await engine.sweep()
    assert emulator.calls("DELETE") == [], "a rename bumps updated_at: not due for 90s"
    assert {c.session_id for c in old} <= alive(emulator)


async def test_a_decision_on_facts_that_never_change_costs_no_call(
    emulator: Emulator, make_engine: EngineFactory
) -> None:
    by_age = Policy(name="old", agents=frozenset({AGENT}), max_age=timedelta(hours=1))
    gone = [add(emulator, f"Anything {n}", age=timedelta(hours=2)) for n in range(3)]
    fill(emulator, 40)
    await make_engine((replace(by_age, max_age=timedelta(hours=3)),)).sweep()
    await asyncio.sleep(1.1)  # the listing is stale now; the decision does not rest on it
    report = await make_engine((by_age,), facts_max_age=FRESH).sweep()
    assert report.deleted == 3 and report.refreshed == 0
    assert emulator.calls("GET", "*/messages") == []
    assert not ({c.session_id for c in gone} & alive(emulator))


async def test_fresh_facts_are_not_read_twice(
    emulator: Emulator, make_engine: EngineFactory
) -> None:
    temps = [add(emulator, f"Temp {n}", age=timedelta(hours=2)) for n in range(3)]
    report = await make_engine((TEMP,), (LEGAL,)).sweep()  # default facts_max_age: 10m
    assert report.deleted == 3 and report.refreshed == 0, "just listed: fresh enough"
    assert emulator.calls("GET", "*/messages") == []
    assert not ({c.session_id for c in temps} & alive(emulator))


async def test_a_local_clock_a_day_ahead_deletes_nothing_and_says_why(
    emulator: Emulator, make_client: ClientFactory, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    by_age = Policy(name="day", agents=frozenset({AGENT}), max_age=timedelta(hours=24))
    chats = [add(emulator, f"Chat {n}", age=timedelta(hours=8)) for n in range(10)]  # due in 16h

    def ahead() -> datetime:
        return datetime.now(UTC) + timedelta(days=1)

    client = make_client(clock=ahead)
    engine = Engine(client, store, Rules((by_age,), ()), clock=ahead)
    report = await engine.sweep()
    assert emulator.calls("DELETE") == [] and {c.session_id for c in chats} <= alive(emulator)
    assert report.listed == 10, "discovery goes on"
    assert report.held_back is not None and "1d ahead of the server's Date" in report.held_back
    logged = [r.getMessage() for r in caplog.records if "deleting nothing" in r.getMessage()]
    assert len(logged) == 1, "said once per sweep"
    assert ahead().isoformat()[:13] in logged[0] and datetime.now(UTC).isoformat()[:13] in logged[0]
    assert await store.journal.audit_trail() == []


@pytest.mark.parametrize("skew", [timedelta(hours=2), -timedelta(hours=2), timedelta(minutes=6)])
async def test_a_server_date_far_from_ours_stops_deletion(
    make_client: ClientFactory, store: Store, emulator: Emulator, skew: timedelta
) -> None:
    emulator.clock = lambda: datetime.now(UTC) + skew
    old = add(emulator, "Temp old", age=timedelta(hours=3))
    engine = Engine(make_client(), store, Rules((TEMP,), ()))
    report = await engine.sweep()
    assert report.held_back is not None and old.session_id in alive(emulator)


async def test_a_server_date_within_the_allowed_skew_does_not_stop_deletion(
    make_client: ClientFactory, store: Store, emulator: Emulator
) -> None:
    emulator.clock = lambda: datetime.now(UTC) - timedelta(seconds=60)
    old = add(emulator, "Temp old", age=timedelta(hours=3))
    report = await Engine(make_client(), store, Rules((TEMP,), ())).sweep()
    assert report.held_back is None and report.deleted == 1
    assert old.session_id not in alive(emulator)
    [row] = await store.journal.audit_trail()
    assert row.outcome is AuditOutcome.DELETED


@pytest.mark.parametrize("skew", [timedelta(seconds=60), -timedelta(seconds=60)])
async def test_a_recent_message_is_not_read_twelve_hours_early_under_a_skewed_server_date(
    make_client: ClientFactory, store: Store, emulator: Emulator, skew: timedelta
) -> None:
    """Message times have no AM/PM: a server Date a minute off must not turn a message 20s old
    into one 12h20s old."""
    idle = Policy(
        name="idle", agents=frozenset({AGENT}), max_age=timedelta(hours=6),
        age_from=AgeFrom.LAST_ACTIVITY,
    )  # fmt: skip
    emulator.clock = lambda: datetime.now(UTC) + skew
    chats = [add(emulator, f"Support {n}", age=timedelta(hours=13)) for n in range(5)]
    for chat in chats:
        chat.messages.append(datetime.now(UTC) - timedelta(seconds=20))
    report = await Engine(make_client(), store, Rules((idle,), ())).sweep()
    assert report.held_back is None
    assert emulator.calls("DELETE") == [] and {c.session_id for c in chats} <= alive(emulator)
    assert report.postponed == 5, "read, and found recent"


async def test_a_wall_clock_stepped_since_the_last_response_deletes_nothing(
    emulator: Emulator, make_client: ClientFactory, store: Store
) -> None:
    """The clock jumps a day after discovery and before any new response could tell: the last
    reading, carried forward on the monotonic clock, tells at once."""
    step = [timedelta(0)]

    def wall() -> datetime:
        return datetime.now(UTC) + step[0]

    by_age = Policy(name="day", agents=frozenset({AGENT}), max_age=timedelta(hours=24))
    chats = [add(emulator, f"Chat {n}", age=timedelta(hours=8)) for n in range(4)]
    engine = Engine(make_client(clock=wall), store, Rules((by_age,), ()), clock=wall)
    assert (await engine.sweep("discover", delete=False)).listed == 4
    step[0] = timedelta(days=1)  # an NTP step, a resumed VM
    report = await engine.sweep("delete", discover=False)
    assert report.due == 4, "a day later by the stepped clock, they look due"
    assert report.held_back is not None and "1d ahead of the server's Date" in report.held_back
    assert emulator.calls("DELETE") == [] and {c.session_id for c in chats} <= alive(emulator)


async def test_widening_a_policy_to_a_new_agent_waits_out_the_grace(
    emulator: Emulator, make_engine: EngineFactory
) -> None:
    emulator.state.add_agent(533, "Sales bot", created_at=datetime.now(UTC) - timedelta(days=300))
    old = [
        emulator.state.add_conversation(533, f"Chat {n}", created_at=datetime.now(UTC) - 3 * DAY)
        for n in range(3)
    ]
    week = Policy(name="week", agents=frozenset({AGENT}), max_age=2 * DAY)
    grace = timedelta(hours=1)
    await make_engine((week,), policy_change_grace=grace).sweep()  # the first rules: no grace
    wider = replace(week, agents=frozenset({AGENT, 533}))  # an edit brings agent 533 in
    report = await make_engine((wider,), policy_change_grace=grace).sweep()
    assert report.new == 3 and report.deleted == 0
    assert {c.session_id for c in old} <= emulator.live_sessions(533)


async def test_a_slow_walk_stamps_facts_with_its_start_not_its_end(
    emulator: Emulator, make_engine: EngineFactory, store: Store
) -> None:
    chat = add(emulator, "Chat x", age=timedelta(minutes=5))
    fill(emulator, 60)  # pages 1 to 4; the chat on page 4
    emulator.faults.append(Fault.delay(0.5, path="*/conversations", times=-1))
    started = datetime.now(UTC)
    await make_engine((TEMP,)).sweep()
    stored = await store.get(AGENT, chat.session_id)
    assert stored is not None and stored.facts_at is not None
    assert stored.facts_at <= started + timedelta(seconds=0.5), "the walk's start, not its end"


async def test_a_refresh_answer_without_a_name_deletes_nothing(
    emulator: Emulator, make_engine: EngineFactory
) -> None:
    chat = add(emulator, "Temp x", age=timedelta(hours=1) - timedelta(seconds=2))
    fill(emulator, 40)
    by_age = Policy(name="old", agents=frozenset({AGENT}), max_age=timedelta(hours=1))
    engine = make_engine((by_age,), (LEGAL,), facts_max_age=FRESH)
    await engine.sweep()
    rename(chat, "LEGAL x")
    await asyncio.sleep(2.2)
    chat.name = ""  # as an answer with no name reads
    report = await engine.sweep()
    assert report.deleted == 0 and report.failed == 1
    assert chat.session_id in alive(emulator)


async def test_an_edit_that_makes_a_row_left_mid_delete_due_again_waits_out_the_grace(
    emulator: Emulator, make_engine: EngineFactory, store: Store
) -> None:
    chat = add(emulator, "Temp x", age=timedelta(hours=2))
    grace = timedelta(hours=1)
    engine = make_engine((TEMP,), policy_change_grace=grace)
    await engine.sweep("discover", delete=False)
    await store.set_state(AGENT, chat.session_id, State.DELETING, now=datetime.now(UTC))  # crash
    await engine.set_rules(Rules((replace(TEMP, max_age=30 * DAY),), ()))
    await engine.sweep()
    await engine.set_rules(Rules((TEMP,), ()))  # an edit makes it due again
    report = await engine.sweep()
    assert report.deleted == 0 and chat.session_id in alive(emulator)


async def _delete_sweep_until_first_answer(
    engine: Engine, emulator: Emulator, status: int
) -> asyncio.Task[SweepReport]:
    task = asyncio.create_task(engine.sweep("delete", discover=False))
    async with asyncio.timeout(10):
        while not any(s.status == status for s in emulator.calls("DELETE")):  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    return task


async def test_a_hold_put_in_force_while_the_delete_waits_out_a_429_withdraws_it(
    emulator: Emulator, make_client: ClientFactory, store: Store
) -> None:
    chat = add(emulator, "Temp chat", age=timedelta(hours=2))
    client = make_client()
    engine = Engine(client, store, Rules((TEMP,), ()))
    await engine.sweep("discover", delete=False)
    emulator.rate_limit = RateLimit(limit=1, window=3)
    await client.agent_settings(AGENT)  # the window's only request: the DELETE gets a 429
    task = await _delete_sweep_until_first_answer(engine, emulator, 429)
    hold = Hold(name="keep-this", session_ids=frozenset({chat.session_id}))
    await engine.set_rules(Rules((TEMP,), (hold,)))  # a reload, during the pause
    report = await asyncio.wait_for(task, 15)
    assert [s.status for s in emulator.calls("DELETE")] == [429], "the retry was withdrawn"
    assert report.deleted == 0 and chat.session_id in alive(emulator)
    stored = await store.get(AGENT, chat.session_id)
    assert stored is not None and (stored.state, stored.rule) == (State.HELD, "keep-this")


async def test_a_rename_during_a_429_pause_longer_than_facts_max_age_withdraws_the_delete(
    emulator: Emulator, make_client: ClientFactory, store: Store
) -> None:
    chat = add(emulator, "Temp chat", age=timedelta(hours=2))
    fill(emulator, 40)
    client = make_client()
    options = EngineOptions(facts_max_age=FRESH)
    engine = Engine(client, store, Rules((TEMP,), (LEGAL,)), options=options)
    await engine.sweep("discover", delete=False)
    emulator.rate_limit = RateLimit(limit=1, window=3)
    await client.agent_settings(AGENT)
    task = await _delete_sweep_until_first_answer(engine, emulator, 429)
    rename(chat, "LEGAL chat")  # after the last decision, before the retry
    report = await asyncio.wait_for(task, 15)
    assert report.deleted == 0 and chat.session_id in alive(emulator)


async def test_a_hold_put_in_force_while_a_503_is_retried_withdraws_the_retry(
    emulator: Emulator, make_client: ClientFactory, store: Store
) -> None:
    chat = add(emulator, "Temp chat", age=timedelta(hours=2))
    engine = Engine(make_client(), store, Rules((TEMP,), ()))
    await engine.sweep("discover", delete=False)
    emulator.faults.append(Fault.status(503, method="DELETE", times=1, delay_s=1.0))
    task = await _delete_sweep_until_first_answer(engine, emulator, -1)
    hold = Hold(name="keep-this", session_ids=frozenset({chat.session_id}))
    await engine.set_rules(Rules((TEMP,), (hold,)))
    report = await asyncio.wait_for(task, 15)
    assert report.deleted == 0 and chat.session_id in alive(emulator)
    assert len(emulator.calls("DELETE")) == 1, "the retry never went out"


async def test_a_first_walk_cut_short_by_a_restart_gets_no_grace(
    emulator: Emulator, make_engine: EngineFactory, store: Store
) -> None:
    """The first rules a store sees bring nothing into scope by an edit, even when the process
    that recorded them stopped before walking (a restart, a standby's takeover)."""
    old = [add(emulator, f"Temp {n}", age=2 * DAY) for n in range(3)]
    grace = timedelta(hours=1)
    await make_engine((TEMP,), policy_change_grace=grace).apply_rules()  # then it stopped
    report = await make_engine((TEMP,), policy_change_grace=grace).sweep()
    assert report.new == 3 and report.deleted == 3
    assert not {c.session_id for c in old} & alive(emulator)


async def test_a_store_that_cannot_tell_its_first_rules_holds_a_first_walk_back(
    emulator: Emulator, make_engine: EngineFactory, store: Store
) -> None:
    """A store from before the first rules were kept has rules, but not which came first: an
    agent walked for the first time counts as brought in by an edit (kept longer, not sooner)."""
    old = [add(emulator, f"Temp {n}", age=2 * DAY) for n in range(3)]
    grace = timedelta(hours=1)
    await make_engine((TEMP,), policy_change_grace=grace).apply_rules()
    async with store.db.begin() as conn:
        await conn.execute(delete(meta).where(meta.c.key == FIRST_RULES_KEY))
    report = await make_engine((TEMP,), policy_change_grace=grace).sweep()
    assert report.new == 3 and report.deleted == 0
    assert {c.session_id for c in old} <= alive(emulator)
