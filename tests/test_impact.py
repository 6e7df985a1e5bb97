"""What an edit does to decisions (`retention diff`, a reload's summary): pure tables."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from retention.impact import KINDS, Impact, Outcome, changes
from retention.models import ConversationFacts

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
H, D = timedelta(hours=1), timedelta(days=1)


def due(delta: timedelta, rule: str = "qa") -> Outcome:
    return Outcome(False, rule, NOW + delta)


HELD = Outcome(True, "legal", None)
KEPT = Outcome(False, None, None)


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        (KEPT, due(-H), ["newly_due_now"]),
        (due(2 * D), due(-H), ["newly_due_now"]),  # a week's due, now due: counted once, now
        (due(30 * D), due(5 * H), ["newly_due_within_day"]),
        (KEPT, due(3 * D), ["newly_due_within_week"]),
        (KEPT, due(30 * D), []),  # due, but not this week
        (due(-H), due(-2 * H), []),  # due before and after
        (due(-H), due(2 * H), ["no_longer_due"]),  # later, and still due within the day
        (due(-H), KEPT, ["no_longer_due"]),
        (due(-H), HELD, ["no_longer_due", "newly_held"]),
        (HELD, due(-H), ["newly_due_now", "no_longer_held"]),
        (HELD, KEPT, ["no_longer_held"]),
        (KEPT, HELD, ["newly_held"]),
        (due(-H, "a"), due(-H, "b"), []),  # a move: counted as a move, not a change of kind
    ],
)
def test_changes_between_two_outcomes(before: Outcome, after: Outcome, expected: list[str]) -> None:
    assert sorted(changes(before, after, NOW)) == sorted(expected)


def facts(n: int, agent: int = 532) -> ConversationFacts:
    return ConversationFacts(agent, f"s-{n}", f"Chat {n}", NOW - 3 * D, NOW - 3 * D)


def test_impact_counts_per_agent_keeps_a_few_examples_and_moves() -> None:
    impact = Impact("default", NOW)
    for n in range(5):
        impact.add(facts(n), KEPT, due(-H, "tickets"))
    impact.add(facts(9, agent=533), due(-H, "qa"), HELD)
    impact.add(facts(10), due(5 * D), due(5 * D))  # unchanged
    doc = impact.as_json()
    assert doc["conversations"] == 7 and impact.newly_due == 5
    assert doc["totals"]["newly_due_now"] == 5 and doc["totals"]["newly_held"] == 1
    (first, second) = doc["agents"]
    assert first["agent_id"] == 532 and len(first["examples"]["newly_due_now"]) == 3
    assert first["examples"]["newly_due_now"][0] == {
        "session_id": "s-0",
        "name": "Chat 0",
        "before": "kept: no policy",
        "after": "due since 1h by 'tickets'",
    }
    assert first["moves"] == [{"from": None, "to": "tickets", "count": 5}]
    assert second["moves"] == [{"from": "qa", "to": "legal", "count": 1}]
    assert impact.summary() == (
        "5 newly due now, 1 no longer due, 1 newly held, 6 moved to another rule"
    )
    assert Impact("default", NOW).summary() == "no conversation's outcome changes"


OUTCOMES = st.one_of(
    st.just(KEPT),
    st.just(HELD),
    st.builds(due, st.integers(-10, 400).map(lambda h: timedelta(hours=h))),
)


@given(OUTCOMES, OUTCOMES)
def test_newly_due_is_counted_once_and_only_when_it_becomes_due_sooner(
    before: Outcome, after: Outcome
) -> None:
    found = changes(before, after, NOW)
    assert set(found) <= set(KINDS) and len(found) == len(set(found))
    newly = [k for k in found if k.startswith("newly_due")]
    assert len(newly) <= 1
    if newly:
        assert after.due_at is not None and not after.held
        assert before.held or before.due_at is None or before.due_at > after.due_at
    if before == after:
        assert found == []


def test_a_due_conversation_no_longer_dry_run_is_newly_deletable() -> None:
    audited = Outcome(False, "qa", NOW - H, dry_run=True)
    deleted = Outcome(False, "qa", NOW - H, dry_run=False)
    assert changes(audited, deleted, NOW) == ["newly_deletable"]
    assert changes(deleted, audited, NOW) == []
    impact = Impact("default", NOW)
    impact.add(facts(1), audited, deleted)
    assert impact.newly_due == 1 and impact.newly_deletes


def test_agents_newly_in_scope_count_as_newly_deleting() -> None:
    impact = Impact("default", NOW)
    assert not impact.newly_deletes
    impact.newly_in_scope = [534]
    assert impact.newly_deletes and impact.newly_due == 0
    assert "agents 534 newly in scope" in impact.summary()
    assert impact.as_json()["agents_newly_in_scope"] == [534]
