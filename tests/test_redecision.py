"""A stored decision meets a new one (the pure half of a rules change): table and properties."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from retention.models import AgeFrom, Decision, DecisionKind, State
from retention.redecision import StoredDecision, redecide

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
H = timedelta(hours=1)
GRACE = NOW + H  # a change's grace: what it makes due within the hour waits until then

STORED = StoredDecision(
    state=State.ACTIVE, due_at=NOW + 5 * H, rule="week", reason="policy 'week': ...",
    provisional=False, dry_run=False, age_from=AgeFrom.CREATED,
    grace_until=None, approved_at=None, dry_run_noted_at=None,
)  # fmt: skip


def policy(due_at: datetime | None, *, rule: str = "week", dry_run: bool = False) -> Decision:
    kind = DecisionKind.POLICY if due_at is not None else DecisionKind.NO_MATCH
    return Decision(kind, rule if due_at else None, due_at, "why", dry_run=dry_run)


HELD = Decision(DecisionKind.HELD, "legal", None, "held by 'legal'")


def run(stored: StoredDecision, decision: Decision, **kw: object) -> tuple[StoredDecision, bool]:
    options: dict[str, object] = {"now": NOW, "hold_back": GRACE, "dry_run_everywhere": False}
    return redecide(stored, decision, **(options | kw))  # type: ignore[arg-type]


G = GRACE


@pytest.mark.parametrize(
    ("stored", "decision", "hold_back", "state", "grace", "waits"),
    [
        (STORED, policy(NOW - H), G, State.ACTIVE, GRACE, True),  # newly due: waits
        (STORED, policy(NOW - H), None, State.ACTIVE, None, False),  # no grace for this change
        (STORED, policy(NOW + 3 * H), G, State.ACTIVE, None, False),  # sooner, beyond the grace
        (STORED, HELD, G, State.HELD, None, False),  # a hold: held, never due
        (STORED._replace(state=State.HELD), policy(NOW + 5 * H), G, State.ACTIVE, None, False),
        (STORED._replace(state=State.DELETING), HELD, G, State.DELETING, None, False),
        (STORED._replace(grace_until=G), policy(NOW + 5 * H), G, State.ACTIVE, GRACE, False),
        (STORED._replace(grace_until=G), policy(NOW + 9 * H), G, State.ACTIVE, None, False),
        (STORED._replace(grace_until=G), policy(None), G, State.ACTIVE, None, False),
    ],
    ids=[
        "newly due waits", "no grace asked", "sooner beyond the grace", "held",
        "hold lifted", "mid-delete keeps its state", "unmoved keeps its grace",
        "later drops the grace", "never drops the grace",
    ],
)  # fmt: skip
def test_a_new_decision_and_the_grace(
    stored: StoredDecision,
    decision: Decision,
    hold_back: datetime | None,
    state: State,
    grace: datetime | None,
    waits: bool,
) -> None:
    after, waited = run(stored, decision, hold_back=hold_back)
    assert (after.state, after.grace_until, waited) == (state, grace, waits)
    assert (after.due_at, after.rule) == (decision.due_at, decision.rule)


def test_an_approval_covers_only_what_stays_due() -> None:
    approved = STORED._replace(due_at=NOW - H, approved_at=NOW)
    assert run(approved, policy(NOW - 2 * H))[0].approved_at == NOW, "still due: still approved"
    assert run(approved, policy(NOW + H))[0].approved_at is None, "not due now"
    assert run(approved, HELD)[0].approved_at is None, "held"


def test_a_dry_run_note_stands_while_the_same_decision_stays_dry_run() -> None:
    noted = STORED._replace(dry_run=True, dry_run_noted_at=NOW)
    same = policy(STORED.due_at, dry_run=True)
    assert run(noted, same)[0].dry_run_noted_at == NOW
    assert run(noted, policy(STORED.due_at))[0].dry_run_noted_at is None, "no longer dry-run"
    assert run(noted, policy(STORED.due_at), dry_run_everywhere=True)[0].dry_run_noted_at == NOW
    assert run(noted, policy(NOW, dry_run=True))[0].dry_run_noted_at is None, "decided again"


times = st.none() | st.integers(-48, 48).map(lambda h: NOW + timedelta(hours=h))
stored_decisions = st.builds(
    StoredDecision,
    state=st.sampled_from([State.ACTIVE, State.HELD, State.DELETING]),
    due_at=times,
    rule=st.sampled_from([None, "week", "day"]),
    reason=st.just("why"),
    provisional=st.booleans(),
    dry_run=st.booleans(),
    age_from=st.sampled_from([None, *AgeFrom]),
    grace_until=times,
    approved_at=times,
    dry_run_noted_at=times,
)
decisions = st.one_of(
    st.just(HELD),
    st.builds(policy, times, rule=st.sampled_from(["week", "day"]), dry_run=st.booleans()),
)
hold_backs = st.none() | st.just(GRACE)


@given(stored_decisions, decisions, hold_backs, st.booleans())
def test_deciding_again_with_the_same_rules_writes_nothing(
    stored: StoredDecision, decision: Decision, hold_back: datetime | None, everywhere: bool
) -> None:
    first, _ = run(stored, decision, hold_back=hold_back, dry_run_everywhere=everywhere)
    again, waits = run(first, decision, hold_back=hold_back, dry_run_everywhere=everywhere)
    assert again == first and not waits


@given(stored_decisions, decisions, hold_backs)
def test_a_change_never_makes_a_row_due_before_its_grace_or_held_and_due(
    stored: StoredDecision, decision: Decision, hold_back: datetime | None
) -> None:
    after, waits = run(stored, decision, hold_back=hold_back)
    if after.state is State.HELD:
        assert after.due_at is None
    newly_due = after.due_at is not None and (stored.due_at is None or after.due_at < stored.due_at)
    if hold_back is not None and newly_due and after.due_at < hold_back:  # type: ignore[operator]
        assert waits and after.grace_until is not None and after.grace_until >= hold_back
    if after.approved_at is not None:
        assert after.due_at is not None and after.due_at <= NOW
