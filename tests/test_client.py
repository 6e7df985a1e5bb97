"""The CustomGPT client against the emulator over real loopback HTTP."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

import pytest

from retention.budget import RequestBudget
from retention.client import CustomGPTClient
from retention.clocks import ClockReading
from retention.emulator import Arrival, Emulator, Fault, RateLimit
from retention.emulator.seed import EmuAgent
from retention.errors import (
    AuthError,
    BadRequestError,
    NotFoundError,
    RateLimited,
    TransientApiError,
)
from retention.models import DeleteOutcome

from .conftest import ClientFactory

LIST_PATH = "/api/v1/projects/532/conversations"


async def _all(client: CustomGPTClient, agent_id: int = 532) -> list[int]:
    return [c.id for c in (await client.list_conversations(agent_id)).conversations]


async def test_walks_every_page_with_an_odd_per_page(
    emulator: Emulator, client: CustomGPTClient
) -> None:
    emulator.per_page = 7
    ids = await _all(client)
    assert len(ids) == 45
    assert ids == sorted(ids, reverse=True), "newest first"
    assert len(emulator.calls("GET", LIST_PATH)) == 7  # ceil(45 / 7), read from last_page
    assert client.stats.count("list_conversations", "200") == 7


async def test_pages_carry_the_servers_paginator_figures(
    emulator: Emulator, client: CustomGPTClient
) -> None:
    emulator.per_page = 20
    pages = [p async for p in client.iter_pages(532)]
    assert [(p.page, p.last_page, p.per_page, p.total) for p in pages] == [
        (1, 3, 20, 45),
        (2, 3, 20, 45),
        (3, 3, 20, 45),
    ]
    assert [len(p.items) for p in pages] == [20, 20, 5]


async def test_arrivals_during_listing_miss_nothing_and_repeat_nothing(
    emulator: Emulator, client: CustomGPTClient
) -> None:
    emulator.per_page = 10
    before = {c.id for a in emulator.state.agents.values() for c in a.conversations.values()}
    emulator.arrivals.append(Arrival(532, count=4, on_page=2, times=2))
    ids = await _all(client)
    after = {c.id for c in emulator.state.agents[532].conversations.values()}
    assert len(after) == len(before) + 8
    assert len(ids) == len(set(ids)), "arrivals push items down a page: copies are dropped"
    assert set(ids) == after, "both the old and the arrived conversations are all seen"


async def test_a_full_quiet_walk_is_complete(emulator: Emulator, client: CustomGPTClient) -> None:
    listing = await client.list_conversations(532)
    assert listing.complete and listing.pages == 3 and listing.total == 45


async def test_deletions_elsewhere_during_a_walk_make_it_incomplete(
    emulator: Emulator, client: CustomGPTClient
) -> None:
    def delete_newest(agent: EmuAgent, page: int) -> None:
        if page == 2:
            del agent.conversations[next(reversed(agent.conversations))]

    emulator.before_list.append(delete_newest)
    listing = await client.list_conversations(532)
    assert not listing.complete, "a shrinking total means items shifted up and were skipped"


async def test_incremental_walk_stops_at_the_first_page_reaching_the_cursor(
    emulator: Emulator, client: CustomGPTClient
) -> None:
    newest = max(c.id for c in emulator.state.agents[532].conversations.values())
    listing = await client.list_conversations(532, newer_than=newest)
    assert listing.pages == 1 and not listing.complete
    listing = await client.list_conversations(532, newer_than=newest - 25)
    assert listing.pages == 2
    assert {c.id for c in listing.conversations} >= set(range(newest - 24, newest + 1))


async def test_rate_limit_pauses_every_concurrent_caller_for_retry_after(
    emulator: Emulator, make_client: ClientFactory
) -> None:
    emulator.rate_limit = RateLimit(limit=3, window=2.0)
    client = make_client(max_concurrency=6)
    results = await asyncio.gather(*(client.agent_settings(532) for _ in range(8)))
    assert all(r.agent_id == 532 for r in results)
    limited = [s for s in emulator.served if s.status == 429]
    assert limited, "the emulator's limit was reached"
    first = min(s.at for s in limited)
    # Callers that had already sent their request may meet a 429 too, but once the first 429 is
    # in, nobody sends anything until its Retry-After (>= 1s) has passed.
    quiet = [s for s in emulator.served if first + 0.2 < s.at < first + 0.9]
    assert quiet == []
    assert client.budget.rate_limited == len(limited)
    assert client.stats.count(status="429") == len(limited)


async def test_budget_paces_calls_to_requests_per_minute(
    emulator: Emulator, make_client: ClientFactory
) -> None:
    client = make_client(budget=RequestBudget(240, burst=2))  # 4 a second after a burst of 2
    await asyncio.gather(*(client.agent_settings(532) for _ in range(6)))
    arrivals = sorted(s.at for s in emulator.served)
    assert arrivals[-1] - arrivals[0] >= 0.9  # 4 calls beyond the burst at 0.25s each


async def test_5xx_is_retried_then_succeeds(emulator: Emulator, client: CustomGPTClient) -> None:
    emulator.faults.append(Fault.status(503, path=LIST_PATH, times=2))
    assert len(await _all(client)) == 45
    assert client.stats.count("list_conversations", "503") == 2
    assert client.stats.count("list_conversations", "200") == 3


async def test_5xx_exhausted_gives_a_clear_error(
    emulator: Emulator, client: CustomGPTClient
) -> None:
    emulator.faults.append(Fault.status(500, path="*/settings", times=-1))
    with pytest.raises(TransientApiError) as caught:
        await client.agent_settings(532)
    assert caught.value.status == 500
    assert "gave up after 3 attempts" in str(caught.value)
    assert "GET /projects/532/settings" in str(caught.value)
    assert len(emulator.calls("GET", "*/settings")) == 3


async def test_401_is_not_retried(emulator: Emulator, make_client: ClientFactory) -> None:
    client = make_client(token="wrong-token")
    with pytest.raises(AuthError) as caught:
        await client.list_agents()
    assert caught.value.status == 401
    assert len(emulator.served) == 1


@pytest.mark.parametrize("code", [400, 403, 422])
async def test_other_client_errors_are_not_retried(
    emulator: Emulator, client: CustomGPTClient, code: int
) -> None:
    emulator.faults.append(Fault.status(code, path="*/settings", times=-1))
    with pytest.raises(AuthError if code == 403 else BadRequestError):
        await client.agent_settings(532)
    assert len(emulator.served) == 1


async def test_404_on_delete_means_already_gone(
    emulator: Emulator, client: CustomGPTClient
) -> None:
    session_id = next(iter(emulator.state.agents[532].conversations))
    assert await client.delete_conversation(532, session_id) is DeleteOutcome.DELETED
    assert await client.delete_conversation(532, session_id) is DeleteOutcome.ALREADY_GONE
    assert session_id not in emulator.live_sessions(532)
    assert client.stats.count("delete", "404") == 1


async def test_404_elsewhere_is_an_error(client: CustomGPTClient) -> None:
    with pytest.raises(NotFoundError):
        await client.agent_settings(999)


async def test_malformed_json_is_retried_then_succeeds(
    emulator: Emulator, client: CustomGPTClient
) -> None:
    emulator.faults.append(Fault.malformed(path=LIST_PATH, times=1))
    assert len(await _all(client)) == 45
    assert client.stats.count("list_conversations", "malformed") == 1


async def test_malformed_json_exhausted_gives_a_clear_error(
    emulator: Emulator, client: CustomGPTClient
) -> None:
    emulator.faults.append(Fault.malformed(path=LIST_PATH, times=-1))
    with pytest.raises(TransientApiError, match="malformed response body: not JSON"):
        await _all(client)


async def test_html_error_page_is_transient(emulator: Emulator, client: CustomGPTClient) -> None:
    emulator.faults.append(Fault.html(path="*/settings", times=1))
    settings = await client.agent_settings(532)
    assert settings.retention_period == "year"
    assert client.stats.count("settings", "502") == 1


async def test_timeout_is_retried(emulator: Emulator, make_client: ClientFactory) -> None:
    client = make_client(request_timeout=timedelta(seconds=0.3))
    emulator.faults.append(Fault.delay(2.0, path="*/settings", times=1))
    await client.agent_settings(532)
    assert client.stats.count("settings", "timeout") == 1
    assert client.stats.count("settings", "200") == 1


async def test_connection_reset_is_retried(emulator: Emulator, client: CustomGPTClient) -> None:
    # aiohttp itself resends an idempotent request once when the connection drops (RFC 9112
    # section 9.3.1), so it takes two resets in a row for the client's own retry to be needed.
    emulator.faults.append(Fault.reset(path="*/settings", times=2))
    await client.agent_settings(532)
    assert client.stats.count("settings", "connection") == 1
    assert client.stats.count("settings", "200") == 1
    assert [s.status for s in emulator.calls("GET", "*/settings")] == [0, 0, 200]


async def test_connection_refused_gives_a_transient_error(make_client: ClientFactory) -> None:
    client = make_client(base_url="http://127.0.0.1:9/api/v1/")
    with pytest.raises(TransientApiError, match="connection failed"):
        await client.list_agents()


async def test_create_rename_and_settings(emulator: Emulator, client: CustomGPTClient) -> None:
    created = await client.create_conversation(532, "Made by test")
    assert created.agent_id == 532 and created.name == "Made by test"
    assert created.session_id in emulator.live_sessions(532)
    stored = emulator.state.agents[532].conversations[created.session_id]
    stored.created_at = stored.updated_at = stored.created_at - timedelta(hours=1)
    renamed = await client.rename_conversation(532, created.session_id, "Renamed")
    assert renamed.name == "Renamed"
    assert renamed.updated_at > renamed.created_at, "a rename bumps updated_at"
    emulator.state.agents[532].retention_period = "custom"
    emulator.state.agents[532].retention_days = 30
    settings = await client.agent_settings(532)
    assert settings.platform_max_age == timedelta(days=30)


async def test_list_agents_walks_pages(emulator: Emulator, client: CustomGPTClient) -> None:
    for agent_id in range(600, 625):
        emulator.state.add_agent(agent_id, f"Agent {agent_id}", created_at=datetime.now(UTC))
    agents = await client.list_agents()
    assert {a.id for a in agents} == {532, *range(600, 625)}
    assert client.stats.count("list_agents") == 2


@pytest.mark.parametrize("time_format", ["iso", "plain"])
async def test_conversation_timestamps_parse_in_both_list_formats(
    emulator: Emulator, client: CustomGPTClient, time_format: str
) -> None:
    emulator.time_format = time_format
    stored = {c.id: c for c in emulator.state.agents[532].conversations.values()}
    for conversation in (await client.list_conversations(532)).conversations:
        expected = stored[conversation.id].created_at.replace(microsecond=0)
        assert conversation.created_at == expected
        assert conversation.created_at.tzinfo is UTC


async def test_last_activity_reads_the_twelve_hour_message_format(
    emulator: Emulator, client: CustomGPTClient
) -> None:
    conversation = next(iter(emulator.state.agents[532].conversations.values()))
    assert await client.last_activity(532, conversation.session_id) is None
    now = datetime.now(UTC).replace(microsecond=0)
    # "05:01:11" may be AM or PM. The other reading of a message 3 hours old lies 9 hours in the
    # future, so it is read exactly.
    conversation.messages = [now - timedelta(days=3), now - timedelta(hours=3)]
    assert await client.last_activity(532, conversation.session_id) == now - timedelta(hours=3)
    # Of a message 13 hours old both readings ("hh" and "hh" + 12 on its date) lie in the
    # past; the later one is taken, so the conversation looks younger than it is and is kept
    # longer, never deleted sooner. (Which reading is the later one depends on the hour now.)
    old = now - timedelta(hours=13)
    conversation.messages = [old]
    later = old.replace(hour=old.hour % 12) + timedelta(hours=12)
    assert later in (old, now - timedelta(hours=1))
    assert await client.last_activity(532, conversation.session_id) == later


# ---- clocks: 12-hour message times and the clock reading ------------------------------------

EVENING = datetime(2026, 11, 26, 17, 0, 0, tzinfo=UTC)  # "05:00:00" in the message list


class Clocks:
    """The true time, and how far the server's clock and ours are off it."""

    def __init__(self, now: datetime, *, server: timedelta, local: timedelta) -> None:
        self.now, self.server_skew, self.local_skew = now, server, local

    def server(self) -> datetime:
        return self.now + self.server_skew

    def local(self) -> datetime:
        return self.now + self.local_skew


H = timedelta(hours=1)
S = timedelta(seconds=1)


@pytest.mark.parametrize(
    ("server_skew", "local_skew", "newest"),
    [
        # Issue 8: with Date 60 s behind, a message 20 s old was read 12 h older than it was.
        (-60 * S, timedelta(0), EVENING - 20 * S),
        (60 * S, timedelta(0), EVENING - 20 * S),
        (-2 * H, timedelta(0), EVENING - 20 * S),
        (2 * H, timedelta(0), EVENING - 20 * S),
        (timedelta(0), timedelta(days=1), EVENING - 20 * S),
        (-2 * H, -60 * S, EVENING - 20 * S),  # the later clock decides
    ],
    ids=["server -60s", "server +60s", "server -2h", "server +2h", "local +1d", "both behind"],
)
async def test_twelve_hour_message_times_resolve_young_under_skewed_clocks(
    emulator: Emulator,
    make_client: ClientFactory,
    server_skew: timedelta,
    local_skew: timedelta,
    newest: datetime,
) -> None:
    clocks = Clocks(EVENING, server=server_skew, local=local_skew)
    emulator.clock = clocks.server
    client = make_client(clock=clocks.local)
    conversation = next(iter(emulator.state.agents[532].conversations.values()))
    conversation.messages = [EVENING - timedelta(days=2), EVENING - 20 * S]
    assert await client.last_activity(532, conversation.session_id) == newest
    facts, activity = await client.conversation_info(532, conversation.session_id, urgent=True)
    assert activity == newest and facts.session_id == conversation.session_id


async def test_a_morning_message_is_not_read_as_the_evening_to_come(
    emulator: Emulator, make_client: ClientFactory
) -> None:
    clocks = Clocks(EVENING - 12 * H, server=2 * H, local=timedelta(0))
    emulator.clock = clocks.server
    client = make_client(clock=clocks.local)
    conversation = next(iter(emulator.state.agents[532].conversations.values()))
    conversation.messages = [EVENING - 12 * H - 20 * S]
    newest = await client.last_activity(532, conversation.session_id)
    assert newest == EVENING - 12 * H - 20 * S


@pytest.mark.parametrize(
    "skew", [timedelta(days=1), -2 * H], ids=["server a day ahead", "server 2h behind"]
)
async def test_every_response_records_our_clock_and_the_servers(
    emulator: Emulator, make_client: ClientFactory, skew: timedelta
) -> None:
    clocks = Clocks(EVENING, server=skew, local=timedelta(0))
    emulator.clock = clocks.server
    client = make_client(clock=clocks.local)
    assert client.clock_reading is None, "no response yet"
    await client.agent_settings(532)
    reading = client.clock_reading
    assert reading is not None
    assert (reading.local, reading.server, reading.skew) == (EVENING, EVENING + skew, skew)
    # An error answer carries a Date too, and the most recent response wins.
    clocks.now += H
    with pytest.raises(NotFoundError):
        await client.agent_settings(999)
    assert client.clock_reading == ClockReading(local=EVENING + H, server=EVENING + H + skew)


async def test_a_429_records_the_clock_reading_too(
    emulator: Emulator, make_client: ClientFactory
) -> None:
    clocks = Clocks(EVENING, server=-2 * H, local=timedelta(0))
    emulator.clock = clocks.server
    client = make_client(clock=clocks.local)
    emulator.faults.append(Fault.status(429, path="*/settings", times=1))
    call = asyncio.create_task(client.agent_settings(532))
    for _ in range(500):  # until the 429 is in (the retry waits out a pause of 0.5 s or more)
        if client.budget.rate_limited:
            break
        await asyncio.sleep(0.01)
    assert client.budget.rate_limited == 1
    assert client.clock_reading == ClockReading(local=EVENING, server=EVENING - 2 * H)
    clocks.now += H
    await call
    assert client.clock_reading == ClockReading(local=EVENING + H, server=EVENING - H)


async def test_without_a_clock_given_the_client_reads_the_system_clock(
    client: CustomGPTClient,
) -> None:
    before = datetime.now(UTC)
    await client.agent_settings(532)
    after = datetime.now(UTC)
    reading = client.clock_reading
    assert reading is not None and before <= reading.local <= after
    assert abs(reading.skew) < timedelta(seconds=2)


# ---- priority: deletions keep half the budget -------------------------------------------------


async def test_deletions_overtake_queued_calls(
    emulator: Emulator, make_client: ClientFactory
) -> None:
    # Issue 8: 120 admin creates at 60 calls a minute delayed due deletions from 14 s to 138 s.
    client = make_client(budget=RequestBudget(1200, burst=1), max_concurrency=4)
    doomed = list(emulator.state.agents[532].conversations)[:5]
    creates = [client.create_conversation(532, f"Admin {n}") for n in range(20)]
    deletes = [client.delete_conversation(532, session_id) for session_id in doomed]
    outcomes = await asyncio.gather(*creates, *deletes)
    assert outcomes[20:] == [DeleteOutcome.DELETED] * 5
    order = [s.method for s in emulator.served]
    assert order.count("POST") == 20
    last_delete = max(n for n, method in enumerate(order) if method == "DELETE")
    # Without priority the five deletions would go last (positions 20 to 24). In turn with the
    # creates, after the four that held the slots first, they are done by position 14.
    assert last_delete <= 14, order


async def test_token_appears_in_no_log_record_and_no_error(
    emulator: Emulator, make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "sk-test-SECRET-0123456789"
    emulator.token = secret
    caplog.set_level(logging.DEBUG)
    good = make_client(token=secret)
    bad = make_client(token=secret + "x")
    texts: list[str] = [repr(good)]
    emulator.rate_limit = RateLimit(limit=2, window=1.0)
    emulator.faults += [
        Fault.status(503, path="*/settings", times=-1),
        Fault.malformed(path=LIST_PATH, times=-1),
    ]
    calls = [
        bad.list_agents(),
        good.agent_settings(532),
        _all(good),
        good.list_agents(),
        good.list_agents(),
    ]
    for call in calls:
        try:
            await call
        except (AuthError, TransientApiError, RateLimited) as exc:
            texts += [str(exc), repr(exc)]
    texts += [r.getMessage() for r in caplog.records]
    texts += [caplog.text]
    assert any("429" in t or "rate limited" in t for t in texts)
    assert all(secret not in t for t in texts)
