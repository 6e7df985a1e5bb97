"""A stored decision meets a new one: what a rules change writes, and what it leaves alone.

Pure, no I/O. A rules change reads every live conversation's facts and stored decision
(:class:`DecisionRow`), decides again with the rules in force, and :func:`redecide` says what the
row must hold now: the new decision, with the policy change grace, approvals and dry-run notes
carried over or dropped by the rules below. When that equals what is stored, nothing is written:
a change that alters no decision writes no row, and a store of a million is read with a few
small objects per row.
"""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple

from retention.models import AgeFrom, ConversationFacts, Decision, DecisionKind, State


class StoredDecision(NamedTuple):
    """The columns of a row that hold its decision (and the state holds decide).

    Tuples, not frozen dataclasses: a rules change builds two per row and compares them, and
    a tuple is built and compared in C (a third of the cost, measured)."""

    state: State
    due_at: datetime | None
    rule: str | None
    reason: str | None
    provisional: bool
    dry_run: bool
    age_from: AgeFrom | None
    grace_until: datetime | None
    approved_at: datetime | None
    dry_run_noted_at: datetime | None


class DecisionRow(NamedTuple):
    """One live conversation as a rules change reads it."""

    facts: ConversationFacts
    stored: StoredDecision
    key: int  # the store's own key for the row, handed back when the decision is written


def state_under(state: State, decision: Decision) -> State:
    """A live conversation's state follows holds; one mid-delete (or finished) keeps its own."""
    if state in (State.ACTIVE, State.HELD):
        return State.HELD if decision.kind is DecisionKind.HELD else State.ACTIVE
    return state


def redecide(
    stored: StoredDecision,
    decision: Decision,
    *,
    now: datetime,
    hold_back: datetime | None,
    dry_run_everywhere: bool,
) -> tuple[StoredDecision, bool]:
    """What the row holds under ``decision``, and whether a policy change grace now holds it
    back (until ``hold_back``; None: no grace for this change).

    - A change that makes it due sooner, and within the grace, waits until the grace has
      passed (an earlier, longer grace stands).
    - A due time that moved later, or went, leaves nothing for a grace to hold back; one that
      did not move keeps its grace: an unrelated edit must not release what an earlier edit held.
    - An approval covers what was due when it was given: a conversation the new rules make not
      due (yet) is no longer covered.
    - A dry-run note stands while the same decision stays dry-run; otherwise it goes, so that
      the conversation is deleted, or noted afresh, by the next sweep.
    """
    due_at = decision.due_at
    before = stored.due_at
    decided_again = decision.rule != stored.rule or due_at != before
    noted = stored.dry_run_noted_at
    if noted is not None and (decided_again or not (dry_run_everywhere or decision.dry_run)):
        noted = None
    grace_until = stored.grace_until
    waits = False
    sooner = due_at is not None and (before is None or due_at < before)
    if hold_back is not None and sooner and due_at is not None and due_at < hold_back:
        grace_until = max(hold_back, grace_until or now)
        waits = True
    elif grace_until is not None and (due_at is None or (before is not None and due_at > before)):
        grace_until = None
    approved_at = stored.approved_at
    if approved_at is not None and (due_at is None or due_at > now):
        approved_at = None
    after = StoredDecision(
        state_under(stored.state, decision),
        due_at,
        decision.rule,
        decision.reason,
        decision.provisional,
        decision.dry_run,
        decision.age_from,
        grace_until,
        approved_at,
        noted,
    )
    return after, waits
