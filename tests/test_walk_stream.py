"""Streamed walks: a page at a time in memory, written as it comes, judged by the store after.

Discovery hands each page to the store before it reads the next, dedupes across pages with a
watermark on the ids, and asks the store (not a set in memory) which tracked conversations a
complete walk did not list. The emulator serves a page as a slice of its id-ordered list.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from retention.client import CustomGPTClient
from retention.discovery import discover_agent
from retention.emulator import Arrival, Emulator, Fault
from retention.emulator.seed import EmuAgent, EmuConversation, big_state
from retention.errors import TransientApiError
from retention.models import (
    Conversation,
    ConversationPage,
    Origin,
    State,
    SweepReport,
    TrackedConversation,
)
from retention.paging import WalkTally
from retention.policy import Policy
from retention.store import Store

from .conftest import EngineFactory, small_state
from .postgres import query_now

AGENT = 532
LIST_PATH = f"/api/v1/projects/{AGENT}/conversations"
NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
TEST_CHATS = Policy(
    name="chats", agents=frozenset({AGENT}), name_matches=("Chat*",), max_age=timedelta(days=9)
)


@pytest.fixture
def emulator() -> Emulator:
    return Emulator(small_state(conversations=45), per_page=10)  # five pages


def report() -> SweepReport:
    return SweepReport(kind="test", started_at=datetime.now(UTC))


def stored_sessions(url: str) -> set[str]:
    """What the store has committed now, read without the event loop (from a server hook)."""
    rows = query_now(url, f"SELECT session_id FROM conversations WHERE agent_id = {AGENT}")
    return {str(r[0]) for r in rows}


def newest_first(agent: EmuAgent) -> list[EmuConversation]:
    return sorted(agent.conversations.values(), key=lambda c: c.id, reverse=True)


# ---- the tally: dedupe by watermark, completeness from figures ------------------------------


def _conv(n: int) -> Conversation:
    return Conversation(n, f"s-{n}", AGENT, f"Chat {n}", None, NOW, NOW)


def _page(number: int, total: int, *ids: int, per_page: int = 3) -> ConversationPage:
    last = max(1, -(-total // per_page))
    return ConversationPage(AGENT, number, last, per_page, total, tuple(_conv(n) for n in ids))


def test_repeats_pushed_down_by_arrivals_are_dropped_by_the_watermark() -> None:
    tally = WalkTally(AGENT)
    assert [c.id for c in tally.take(_page(1, 9, 9, 8, 7))] == [9, 8, 7]
    # Two arrivals (11, 10) pushed 8 and 7 onto page 2: they are repeats, 6 is new.
    assert [c.id for c in tally.take(_page(2, 11, 8, 7, 6))] == [6]
    assert [c.id for c in tally.take(_page(3, 11, 5, 4, 3))] == [5, 4, 3]
    assert [c.id for c in tally.take(_page(4, 11, 2, 1))] == [2, 1]
    assert (tally.listed, tally.pages, tally.newest, tally.grew) == (9, 4, 9, True)
    assert not tally.complete, "11 and 10 not seen: fewer taken than the total"
    assert tally.reread() == 9, "the re-read takes only what is above the first pass's newest"
    assert [c.id for c in tally.take(_page(1, 11, 11, 10, 9))] == [11, 10]
    assert tally.newest == 11
    assert tally.complete and tally.listed == 11


def test_a_walk_is_complete_only_to_the_end_without_a_shrinking_total() -> None:
    whole = WalkTally(AGENT)
    for page in (_page(1, 5, 5, 4, 3), _page(2, 5, 2, 1)):
        whole.take(page)
    assert whole.complete and whole.listed == 5

    shrunk = WalkTally(AGENT)
    for page in (_page(1, 5, 5, 4, 3), _page(2, 4, 1)):  # 2 was deleted: 1 moved up
        shrunk.take(page)
    assert shrunk.shrank and not shrunk.complete

    stopped = WalkTally(AGENT)
    stopped.take(_page(1, 5, 5, 4, 3))
    stopped.reached_end = False  # an incremental walk that stopped at its cursor
    assert not stopped.complete


# ---- the client: one page at a time ---------------------------------------------------------


async def test_each_page_is_handed_over_before_the_next_is_asked_for(
    emulator: Emulator, client: CustomGPTClient
) -> None:
    asked: list[int] = []

    async def on_page(page: tuple[Conversation, ...]) -> None:
        asked.append(len(emulator.calls("GET", LIST_PATH)))

    walk = await client.walk_conversations(AGENT, on_page)
    assert asked == [1, 2, 3, 4, 5], "page N is handed over while only N pages were asked for"
    assert (walk.pages, walk.listed, walk.total, walk.complete) == (5, 45, 45, True)
    assert walk.newest == max(c.id for c in emulator.state.agents[AGENT].conversations.values())


async def test_arrivals_of_more_than_a_page_are_each_seen_once(
    emulator: Emulator, client: CustomGPTClient
) -> None:
    # 25 arrive before page 2 and 25 more before page 4: repeats on later pages, new ones on
    # pages already read; the watermark drops the one, the re-read from page 1 finds the other.
    emulator.arrivals.append(Arrival(AGENT, count=25, on_page=2, times=2))
    seen: list[int] = []

    async def on_page(page: tuple[Conversation, ...]) -> None:
        seen.extend(c.id for c in page)

    walk = await client.walk_conversations(AGENT, on_page)
    live = {c.id for c in emulator.state.agents[AGENT].conversations.values()}
    assert len(live) == 95
    assert len(seen) == len(set(seen)), "no conversation handed over twice"
    assert set(seen) == live, "every one, old and arrived, handed over"
    assert walk.listed == 95 and walk.newest == max(live)


# ---- discovery: written page by page ---------------------------------------------------------


async def test_pages_are_stored_while_the_walk_goes_on(
    emulator: Emulator, make_engine: EngineFactory, store: Store, store_url: str
) -> None:
    pages = [newest_first(emulator.state.agents[AGENT])[n * 10 : n * 10 + 10] for n in range(5)]
    stored_at: dict[int, set[str]] = {}

    def look(agent: EmuAgent, page: int) -> None:
        stored_at[page] = stored_sessions(store_url)  # the store fixture's

    emulator.before_list.append(look)
    engine = make_engine((TEST_CHATS,))
    await discover_agent(engine.context, AGENT, report())

    assert stored_at[1] == set()
    for page in range(2, 6):
        earlier = {c.session_id for p in pages[: page - 1] for c in p}
        assert stored_at[page] == earlier, f"pages before {page} are stored when it is read"


async def test_a_walk_failing_part_way_keeps_what_it_found_and_marks_nothing_gone(
    emulator: Emulator, make_engine: EngineFactory, store: Store
) -> None:
    engine = make_engine((TEST_CHATS,), reconcile_every=timedelta(0))
    await discover_agent(engine.context, AGENT, report())
    before = await store.agent(AGENT)
    assert before is not None and before.pages == 5
    conversations = emulator.state.agents[AGENT].conversations
    vanished = next(iter(conversations))  # the oldest: on the last page
    del conversations[vanished]
    fresh = emulator.state.add_conversation(AGENT, "Chat new", created_at=datetime.now(UTC))

    def fail_from_page_four(agent: EmuAgent, page: int) -> None:
        if page == 3:
            emulator.faults.append(Fault.status(503, path=LIST_PATH, method="GET", times=-1))

    emulator.before_list.append(fail_from_page_four)
    walked = report()
    with pytest.raises(TransientApiError):
        await discover_agent(engine.context, AGENT, walked)

    assert (walked.pages, walked.new, walked.gone) == (3, 1, 0)
    new = await store.get(AGENT, fresh.session_id)
    assert new is not None and new.state is State.ACTIVE, "page 1 was stored before the failure"
    old = await store.get(AGENT, vanished)
    assert old is not None and old.state is State.ACTIVE, "an incomplete walk proves nothing"
    assert await store.agent(AGENT) == before, "no cursor moved, no reconcile recorded"

    emulator.faults.clear()
    emulator.before_list.clear()
    again = report()
    await discover_agent(engine.context, AGENT, again)
    assert (again.new, again.gone, again.listed) == (0, 1, 45)
    gone = await store.get(AGENT, vanished)
    assert gone is not None and gone.state is State.GONE and gone.finished_at is not None
    after = await store.agent(AGENT)
    assert after is not None and after.sync_cursor == fresh.id


async def test_a_complete_walk_marks_gone_what_it_did_not_list_on_any_page(
    emulator: Emulator, make_engine: EngineFactory, store: Store
) -> None:
    engine = make_engine((TEST_CHATS,), reconcile_every=timedelta(0))
    await discover_agent(engine.context, AGENT, report())
    ordered = newest_first(emulator.state.agents[AGENT])
    victims = [ordered[n].session_id for n in (0, 17, 44)]  # pages 1, 2 and 5
    for session_id in victims:
        del emulator.state.agents[AGENT].conversations[session_id]
    held = ordered[30].session_id  # a live one, on page 4, that the walk lists: not gone
    await store.set_state(AGENT, held, State.HELD, now=datetime.now(UTC))

    walked = report()
    await discover_agent(engine.context, AGENT, walked)

    assert (walked.gone, walked.listed, walked.pages) == (3, 42, 5)
    rows = {c.session_id: c for c in await store.conversations(AGENT)}
    assert {s for s, c in rows.items() if c.state is State.GONE} == set(victims)
    assert rows[held].state is State.HELD


async def test_arrivals_during_a_reconcile_are_stored_once_and_nothing_is_gone(
    emulator: Emulator, make_engine: EngineFactory, store: Store
) -> None:
    engine = make_engine((TEST_CHATS,), reconcile_every=timedelta(0))
    await discover_agent(engine.context, AGENT, report())
    emulator.arrivals.append(Arrival(AGENT, count=12, on_page=2, times=2, name="Chat new {n}"))

    walked = report()
    await discover_agent(engine.context, AGENT, walked)

    live = emulator.live_sessions(AGENT)
    assert len(live) == 69
    rows = await store.conversations(AGENT)
    assert len(rows) == 69 and {c.session_id for c in rows} == live
    assert (walked.new, walked.listed, walked.gone) == (24, 69, 0)
    assert all(c.state is State.ACTIVE for c in rows)


async def test_a_deletion_that_did_not_take_is_caught_on_a_later_page(
    emulator: Emulator, make_engine: EngineFactory, store: Store
) -> None:
    engine = make_engine((TEST_CHATS,), reconcile_every=timedelta(0))
    await discover_agent(engine.context, AGENT, report())
    target = newest_first(emulator.state.agents[AGENT])[38]  # on page 4
    await store.set_state(
        AGENT, target.session_id, State.DELETED, now=datetime.now(UTC) - timedelta(minutes=1)
    )

    walked = report()
    await discover_agent(engine.context, AGENT, walked)

    assert (walked.unverified, walked.failed, walked.gone) == (1, 1, 0)
    row = await store.get(AGENT, target.session_id)
    assert row is not None and row.state is State.ACTIVE and row.finished_at is None


# ---- the store: which rows a complete walk judges --------------------------------------------


async def test_the_store_marks_gone_only_live_rows_known_before_and_unstamped_by_the_walk(
    store: Store,
) -> None:
    started = NOW
    before, during = started - timedelta(hours=1), started + timedelta(seconds=5)

    def row(session_id: str, state: State, first_seen: datetime) -> TrackedConversation:
        return TrackedConversation(
            agent_id=AGENT, session_id=session_id, remote_id=None, name="Chat",
            created_by=None, created_at=before, updated_at=before, origin=Origin.DISCOVERED,
            state=state, first_seen=first_seen,
        )  # fmt: skip

    await store.insert(
        [
            row("vanished", State.ACTIVE, before),
            row("held-vanished", State.HELD, before),
            row("deleting", State.DELETING, before),
            row("deleted", State.DELETED, before),
            row("listed", State.ACTIVE, before),
        ],
        now=before,
    )
    await store.insert([row("registered-meanwhile", State.ACTIVE, during)], now=before)
    await store.insert([replace(row("other", State.ACTIVE, before), agent_id=533)], now=before)
    await store.touch(AGENT, ["listed"], now=started, facts_at=started)  # stamped at the start

    assert await store.mark_vanished(AGENT, unseen_since=started, now=during) == 2
    states = {c.session_id: c.state for c in await store.conversations(AGENT)}
    assert states == {
        "vanished": State.GONE,
        "held-vanished": State.GONE,
        "deleting": State.DELETING,
        "deleted": State.DELETED,
        "listed": State.ACTIVE,
        "registered-meanwhile": State.ACTIVE,
    }
    other = await store.get(533, "other")
    assert other is not None and other.state is State.ACTIVE, "another agent's rows are not judged"
    gone = await store.get(AGENT, "vanished")
    assert gone is not None and gone.finished_at == during


# ---- the emulator: a page is a slice ---------------------------------------------------------


def test_a_big_state_is_ordered_by_id_and_pages_are_slices() -> None:
    state = big_state(now=NOW, conversations=1000, spacing=timedelta(minutes=1))
    conversations = state.agents[AGENT].conversations
    assert len(conversations) == 1000
    ids = [conversations[s].id for s in conversations]
    assert ids == sorted(ids) and len(set(ids)) == 1000
    newest = conversations[next(reversed(conversations))]
    assert newest.created_at == NOW and newest.name == "Chat 1000"
    page = conversations.by_id(20, 40)
    assert [c.id for c in page] == ids[::-1][20:40]
    assert [c.id for c in conversations.by_id(0, 3, newest_first=False)] == ids[:3]
    assert conversations.by_id(990, 1010) == [conversations[s] for s in list(conversations)[9::-1]]
    later = state.add_conversation(AGENT, "After", created_at=NOW)
    assert later.id == ids[-1] + 1, "ids go on growing after a bulk build"


def test_conversations_keep_their_id_order_through_removal_and_return() -> None:
    state = small_state(conversations=6)
    conversations = state.agents[AGENT].conversations
    order = list(conversations)
    middle = conversations.pop(order[2])
    assert list(conversations) == order[:2] + order[3:]
    conversations[middle.session_id] = middle  # put back: in its place by id, not at the end
    assert list(conversations) == order
    assert [c.session_id for c in conversations.by_id(0, 6)] == order[::-1]
    with pytest.raises(ValueError, match="own session id"):
        conversations["another"] = middle


async def test_a_list_page_of_a_big_agent_is_served_from_its_slice(
    client: CustomGPTClient, emulator: Emulator
) -> None:
    emulator.state = big_state(now=NOW, conversations=5000)
    pages = [p async for p in client.iter_pages(AGENT)]
    ids = [c.id for p in pages for c in p.items]
    assert len(pages) == 500 and pages[-1].total == 5000
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == 5000
