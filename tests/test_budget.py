"""The request budget: pacing, 429 pauses, and reading the server's rate headers."""

from __future__ import annotations

import asyncio
import random
import time
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from retention.budget import MAX_PAUSE, CallStats, Lanes, RequestBudget, retry_after_seconds


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "7"}, 7.0),
        ({"Retry-After": "0.5"}, 0.5),
        ({"Retry-After": "7", "X-RateLimit-Reset": "99"}, 7.0),
        ({"X-RateLimit-Reset": "12"}, 12.0),
        ({"X-RateLimit-Reset": str(1_700_000_030)}, 30.0),  # an epoch time, 30 s after "now"
        ({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, None),
        ({"X-RateLimit-Reset": str(1_699_999_000)}, 0.0),  # an epoch already past
        ({"X-RateLimit-Reset": "1000000000"}, 1_000_000_000.0),  # not above 1e9: seconds
        ({"X-RateLimit-Reset": "1000000001"}, 0.0),  # above 1e9: an epoch, long past
        ({"Retry-After": "-3"}, 0.0),
        ({"X-RateLimit-Reset": "-3"}, 0.0),
        ({"Retry-After": "nan", "X-RateLimit-Reset": "4"}, 4.0),
        ({"Retry-After": "inf"}, None),
        ({"X-RateLimit-Reset": "soon"}, None),
        ({}, None),
    ],
)
def test_retry_after_reads_the_headers(headers: dict[str, str], expected: float | None) -> None:
    assert retry_after_seconds(headers, now=1_700_000_000) == expected


def test_retry_after_without_now_reads_an_epoch_reset_against_the_local_clock() -> None:
    # As the client calls it: no ``now`` and no Date header.
    waited = retry_after_seconds({"X-RateLimit-Reset": str(int(time.time()) + 30)})
    assert waited is not None and 25 <= waited <= 31


def test_retry_after_without_now_reads_an_epoch_reset_against_the_servers_date() -> None:
    # The server set the reset by its own clock: a local clock a day ahead or behind must not
    # turn the pause into nothing, or into a day.
    server = datetime(2015, 10, 21, 7, 28, tzinfo=UTC)
    headers = {
        "X-RateLimit-Reset": str(int(server.timestamp()) + 30),
        "Date": format_datetime(server, usegmt=True),
    }
    assert retry_after_seconds(headers) == 30.0
    assert retry_after_seconds(headers, now=server.timestamp() + 10) == 20.0
    assert retry_after_seconds({**headers, "Date": "garbage"}) == 0.0  # the local clock: past


def test_pause_without_a_hint_backs_off_more_each_time_and_success_resets_it() -> None:
    budget = RequestBudget(60)
    first = budget.pause(None)
    second = budget.pause(None)
    third = budget.pause(None)
    assert 0.5 <= first <= 1 and 1 <= second <= 2 and 2 <= third <= 4
    budget.observe({"X-RateLimit-Remaining": "41"}, ok=True)
    assert budget.remaining == 41
    assert budget.pause(None) <= 1
    assert budget.rate_limited == 4


def test_pause_trusts_the_server_but_not_beyond_a_cap() -> None:
    budget = RequestBudget(60)
    assert budget.pause(3.0) == 3.0
    assert 2.5 < budget.paused_for <= 3.0
    assert budget.pause(10_000) == MAX_PAUSE


def test_pause_takes_the_longer_of_two_pauses_and_never_a_negative_one() -> None:
    budget = RequestBudget(60)
    assert budget.pause(-5.0) == 0.0
    assert budget.paused_for == 0.0
    budget.pause(3.0)
    budget.pause(1.0)  # a shorter pause does not cut the longer one short
    assert 2.5 < budget.paused_for <= 3.0
    assert budget.rate_limited == 3


@pytest.mark.parametrize(
    ("headers", "remaining"),
    [
        ({"X-RateLimit-Remaining": "41"}, 41),
        ({"X-RateLimit-Remaining": " 7 "}, 7),
        ({"X-RateLimit-Remaining": "0"}, 0),
        ({"X-RateLimit-Remaining": "-1"}, None),
        ({"X-RateLimit-Remaining": "many"}, None),
        ({}, None),
    ],
)
def test_observe_reads_the_remaining_calls(headers: dict[str, str], remaining: int | None) -> None:
    budget = RequestBudget(60)
    budget.observe(headers, ok=False)
    assert budget.remaining == remaining


def test_a_failure_does_not_end_the_backoff_escalation() -> None:
    budget = RequestBudget(60)
    budget.pause(None)
    budget.pause(None)
    budget.observe({}, ok=False)
    assert 2 <= budget.pause(None) <= 4


@pytest.mark.parametrize("jitter", ["least", "most"])
def test_the_backoff_doubles_up_to_a_minute(monkeypatch: pytest.MonkeyPatch, jitter: str) -> None:
    # The jitter drawn at one end of its range, so the pauses are exact.
    monkeypatch.setattr(random, "uniform", lambda a, b: a if jitter == "least" else b)
    budget = RequestBudget(60)
    pauses = [budget.pause(None) for _ in range(9)]
    bases = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]
    assert pauses == ([b / 2 for b in bases] if jitter == "least" else bases)


async def test_acquire_waits_out_a_pause() -> None:
    budget = RequestBudget(6000, burst=10)
    budget.pause(0.3)
    started = time.monotonic()
    await asyncio.gather(budget.acquire(), budget.acquire())
    assert time.monotonic() - started >= 0.28


async def test_acquire_takes_a_token_after_a_pause() -> None:
    # One token in the bucket, refilled once a second: after the pause, acquire must still take
    # it, or every 429 would be followed by a burst.
    budget = RequestBudget(60, burst=1)
    budget.pause(0.05)
    assert budget.has_capacity()
    await budget.acquire()
    assert not budget.has_capacity()


async def test_acquire_takes_one_token_after_a_pause_not_all() -> None:
    budget = RequestBudget(60, burst=2)
    budget.pause(0.2)
    await budget.acquire()
    assert budget.has_capacity()


async def test_a_pause_that_arrives_while_a_caller_queues_holds_it_back() -> None:
    # The caller waits for the pacer's next token (0.5 s) when a 429 pauses everyone for 0.75 s:
    # it must sit out the rest of the pause (and take a fresh token) before it returns.
    budget = RequestBudget(120, burst=1)
    await budget.acquire()
    queued = asyncio.create_task(budget.acquire())
    await asyncio.sleep(0)
    budget.pause(0.75)
    await queued
    assert budget.paused_for == 0.0


async def test_acquire_is_not_urgent_unless_asked() -> None:
    budget = RequestBudget(6000, burst=1)
    order: list[str] = []

    async def one(name: str, **urgent: bool) -> None:
        await budget.acquire(**urgent)
        order.append(name)

    # "first" takes the one token at once; "plain" waits for the next with the turn in hand;
    # of the two queued behind it, the urgent one goes first although it came last.
    await asyncio.gather(one("first"), one("plain"), one("plain again"), one("urgent", urgent=True))
    assert order == ["first", "plain", "urgent", "plain again"]


async def test_acquire_takes_a_token_without_a_pause() -> None:
    budget = RequestBudget(60, burst=2)
    await budget.acquire()
    assert budget.has_capacity()
    await budget.acquire(urgent=True)
    assert not budget.has_capacity()


async def _grants(budget: RequestBudget, lanes: list[bool]) -> list[bool]:
    """Start one acquire per entry of ``lanes`` at once, in order; the lanes in grant order."""
    order: list[bool] = []

    async def one(urgent: bool) -> None:
        await budget.acquire(urgent=urgent)
        order.append(urgent)

    await asyncio.gather(*(one(urgent) for urgent in lanes))
    return order


async def test_urgent_callers_get_half_the_grants_however_many_queued_first() -> None:
    # Issue 8: 120 admin creates delayed due deletions from 14 s to 138 s.
    budget = RequestBudget(6000, burst=1)
    order = await _grants(budget, [False] * 40 + [True] * 10)
    assert len(order) == 50
    urgent_at = [n for n, urgent in enumerate(order) if urgent]
    assert len(urgent_at) == 10
    assert max(urgent_at) < 21, f"urgent grants at {urgent_at}"
    assert order[:21].count(True) == 10 and order[:21].count(False) == 11  # in turn


async def test_normal_callers_keep_half_the_grants_while_urgent_ones_wait() -> None:
    budget = RequestBudget(6000, burst=1)
    order = await _grants(budget, [True] * 30 + [False] * 10)
    normal_at = [n for n, urgent in enumerate(order) if not urgent]
    assert len(normal_at) == 10 and max(normal_at) <= 21, f"normal grants at {normal_at}"


@pytest.mark.parametrize("urgent", [False, True])
async def test_a_lane_alone_gets_every_grant(urgent: bool) -> None:
    budget = RequestBudget(6000, burst=1)
    assert await _grants(budget, [urgent] * 20) == [urgent] * 20


async def test_lanes_hand_places_in_turn_and_free_them_when_nobody_waits() -> None:
    lanes = Lanes(2)
    await lanes.acquire()
    await lanes.acquire(urgent=True)
    order: list[str] = []

    async def wait(name: str, urgent: bool) -> None:
        await lanes.acquire(urgent=urgent)
        order.append(name)

    tasks = [
        asyncio.create_task(wait(name, name.startswith("u")))
        for name in ("n1", "n2", "n3", "u1", "u2")
    ]
    await asyncio.sleep(0)
    assert (lanes.waiting(urgent=True), lanes.waiting(urgent=False)) == (2, 3)
    for _ in range(5):
        lanes.release()
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert order == ["u1", "n1", "u2", "n2", "n3"]
    lanes.release()
    lanes.release()  # both places free again: two acquire at once, a third waits
    await lanes.acquire()
    await lanes.acquire()
    third = asyncio.create_task(lanes.acquire())
    await asyncio.sleep(0)
    assert not third.done()
    lanes.release()
    await third


async def test_a_cancelled_waiter_gives_up_its_place_in_the_queue() -> None:
    lanes = Lanes(1)
    await lanes.acquire()
    leaving = asyncio.create_task(lanes.acquire(urgent=True))
    staying = asyncio.create_task(lanes.acquire())
    await asyncio.sleep(0)
    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    assert lanes.waiting(urgent=True) == 0
    lanes.release()
    await staying  # the place went to the one still waiting


async def test_a_waiter_cancelled_after_its_turn_came_passes_the_place_on() -> None:
    lanes = Lanes(1)
    await lanes.acquire()
    first = asyncio.create_task(lanes.acquire())
    second = asyncio.create_task(lanes.acquire())
    await asyncio.sleep(0)
    lanes.release()  # hands the place to first, which has not run yet...
    first.cancel()  # ...and is cancelled before it does
    with pytest.raises(asyncio.CancelledError):
        await first
    await second
    assert lanes.waiting(urgent=False) == 0


def test_lanes_need_a_place() -> None:
    with pytest.raises(ValueError, match=r"^capacity must be at least 1$"):
        Lanes(0)


def test_call_stats_count_by_kind_and_status() -> None:
    stats = CallStats()
    for kind, status in [
        ("delete", "200"),
        ("delete", "404"),
        ("list_conversations", "200"),
        ("delete", "200"),
    ]:
        stats.record(kind, status)
    assert stats.total == 4
    assert stats.calls[("delete", "200")] == 2
    assert stats.by_kind() == {"delete": 3, "list_conversations": 1}
    assert stats.count("delete") == 3 and stats.count(status="200") == 3
    assert stats.count("delete", "404") == 1 and stats.count() == 4


async def test_call_stats_scope_counts_one_piece_of_work_and_its_tasks() -> None:
    stats = CallStats()
    stats.record("list_agents", "200")  # outside any scope: counted in the total only

    async def call(kind: str) -> None:
        stats.record(kind, "200")

    with stats.scope() as mine:
        stats.record("delete", "200")
        stats.record("delete", "404")
        await asyncio.gather(call("messages"), call("messages"))
    outside = asyncio.create_task(call("settings"))  # started after the scope: not its work
    await outside
    assert mine == {"delete": 2, "messages": 2}
    assert stats.total == 6


@pytest.mark.parametrize(("rpm", "burst"), [(0, 5), (60, 0)])
def test_budget_rejects_nonsense(rpm: int, burst: int) -> None:
    with pytest.raises(ValueError, match=r"^requests_per_minute and burst must be at least 1$"):
        RequestBudget(rpm, burst=burst)


async def test_budget_paces_at_its_rate_with_a_burst_of_five_by_default() -> None:
    budget = RequestBudget(1)  # the least there is
    assert budget.requests_per_minute == 1
    # burst tokens that refill over burst * 60 / rpm seconds: exactly rpm a minute
    assert (budget._limiter.max_rate, budget._limiter.time_period) == (5, 300.0)
    for _ in range(4):
        await budget.acquire()
    assert budget.has_capacity()
    await budget.acquire()
    assert not budget.has_capacity()
    assert RequestBudget(90, burst=3)._limiter.time_period == 2.0
