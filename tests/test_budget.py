"""The request budget: pacing, 429 pauses, and reading the server's rate headers."""

from __future__ import annotations

import asyncio
import time

import pytest

from retention.budget import MAX_PAUSE, CallStats, RequestBudget, retry_after_seconds


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "7"}, 7.0),
        ({"Retry-After": "0.5"}, 0.5),
        ({"Retry-After": "7", "X-RateLimit-Reset": "99"}, 7.0),
        ({"X-RateLimit-Reset": "12"}, 12.0),
        ({"X-RateLimit-Reset": str(1_700_000_030)}, 30.0),  # an epoch time, 30 s after "now"
        ({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, None),
        ({"X-RateLimit-Reset": "soon"}, None),
        ({}, None),
    ],
)
def test_retry_after_reads_the_headers(headers: dict[str, str], expected: float | None) -> None:
    assert retry_after_seconds(headers, now=1_700_000_000) == expected


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


async def test_acquire_waits_out_a_pause() -> None:
    budget = RequestBudget(6000, burst=10)
    budget.pause(0.3)
    started = time.monotonic()
    await asyncio.gather(budget.acquire(), budget.acquire())
    assert time.monotonic() - started >= 0.28


def test_call_stats_count_by_kind_and_status() -> None:
    stats = CallStats()
    for kind, status in [("delete", "200"), ("delete", "404"), ("list_conversations", "200")]:
        stats.record(kind, status)
    assert stats.total == 3
    assert stats.by_kind() == {"delete": 2, "list_conversations": 1}
    assert stats.count("delete") == 2 and stats.count(status="200") == 2


def test_budget_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        RequestBudget(0)
