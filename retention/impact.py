"""What an edit of the rules does to the conversations a store knows: newly due (now, within a
day, within a week), no longer due, newly held, no longer held, and moved from one rule to
another; counted per account and agent, with a few examples of each. Pure: ``retention diff``
feeds it two decisions per conversation, and a reload feeds it the stored decision and the new
one.

"Due now" is due at the moment the impact is judged, and "newly" means not due by that bound
before the edit: a conversation due in a week that the edit makes due now counts as newly due
now. The first bound a conversation newly falls under is the one it is counted in.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from retention.models import ConversationFacts, Decision, DecisionKind
from retention.timefmt import format_duration

EXAMPLES = 3  # examples kept per agent and kind of change, unless asked for more
# The kinds of change, in the order people read them.
KINDS = (
    "newly_due_now",
    "newly_due_unconfirmed",
    "newly_due_within_day",
    "newly_due_within_week",
    "newly_deletable",
    "no_longer_due",
    "newly_held",
    "no_longer_held",
)
HORIZONS = (
    ("newly_due_now", timedelta(0)),
    ("newly_due_within_day", timedelta(days=1)),
    ("newly_due_within_week", timedelta(days=7)),
)


class Outcome(NamedTuple):
    """What a decision comes to, for comparing two: held or not, the rule, the due time, and
    whether that due time is only a lower bound (the newest message is not known yet)."""

    held: bool
    rule: str | None
    due_at: datetime | None
    provisional: bool = False
    dry_run: bool = False  # its policy's dry_run, or the config's: audited, never deleted

    @classmethod
    def of(cls, decision: Decision, *, dry_run_everywhere: bool = False) -> Outcome:
        held = decision.kind is DecisionKind.HELD
        dry = decision.dry_run or dry_run_everywhere
        return cls(held, decision.rule, decision.due_at, decision.provisional, dry)


def changes(before: Outcome, after: Outcome, now: datetime) -> list[str]:
    """The kinds of change (of :data:`KINDS`) from ``before`` to ``after``, judged at ``now``."""
    found = []
    for kind, horizon in HORIZONS:
        bound = now + horizon
        if _due_by(after, bound) and not _due_by(before, bound):
            # Due now only by a lower bound: the newest message decides, and `plan` reads it
            # (one call) before anything is deleted.
            unconfirmed = kind == "newly_due_now" and after.provisional
            found.append("newly_due_unconfirmed" if unconfirmed else kind)
            break
    week = now + HORIZONS[-1][1]
    if _due_by(after, week) and _due_by(before, week) and before.dry_run and not after.dry_run:
        found.append("newly_deletable")  # due either way, and no longer only audited
    if _due_by(before, now) and not _due_by(after, now):
        found.append("no_longer_due")
    if after.held and not before.held:
        found.append("newly_held")
    if before.held and not after.held:
        found.append("no_longer_held")
    return found


def _due_by(outcome: Outcome, bound: datetime) -> bool:
    return not outcome.held and outcome.due_at is not None and outcome.due_at <= bound


@dataclass(slots=True)
class AgentImpact:
    """One agent's changes: counts and a few examples per kind, and rule moves."""

    counts: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    moves: Counter[tuple[str | None, str | None]] = field(default_factory=Counter)


@dataclass(slots=True)
class Impact:
    """The changes an edit makes in one account, per agent."""

    account: str
    now: datetime
    examples: int = EXAMPLES
    agents: dict[int, AgentImpact] = field(default_factory=dict)
    # Agents the new rules bring into discovery's scope ("*": every agent): the store does not
    # know their conversations, so nothing of them is weighed; `plan` walks them.
    newly_in_scope: list[int] | str | None = None
    weighed: int = 0  # conversations compared

    def add(self, facts: ConversationFacts, before: Outcome, after: Outcome) -> None:
        self.weighed += 1
        if before == after:
            return
        kinds = changes(before, after, self.now)
        moved = before.rule != after.rule
        if not kinds and not moved:
            return  # only the due time moved, within what nobody acts on this week
        agent = self.agents.setdefault(facts.agent_id, AgentImpact())
        if moved:
            agent.moves[(before.rule, after.rule)] += 1
        for kind in kinds:
            agent.counts[kind] += 1
            shown = agent.examples.setdefault(kind, [])
            if len(shown) < self.examples:
                shown.append(_example(facts, before, after, self.now))

    def totals(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for agent in self.agents.values():
            total.update(agent.counts)
        return total

    @property
    def newly_due(self) -> int:
        """Conversations the edit makes due within a week that were not before (those due now
        only by a lower bound too)."""
        total = self.totals()
        kinds = [k for k, _ in HORIZONS] + ["newly_due_unconfirmed", "newly_deletable"]
        return sum(total[kind] for kind in kinds)

    @property
    def newly_deletes(self) -> bool:
        """Whether the edit may delete what was safe before: conversations newly due (or due
        and no longer dry-run), or agents newly in scope whose conversations nobody weighed."""
        return self.newly_due > 0 or bool(self.newly_in_scope)

    def as_json(self) -> dict[str, Any]:
        totals = self.totals()
        return {
            "account": self.account,
            "conversations": self.weighed,
            "agents_newly_in_scope": self.newly_in_scope,
            "totals": {kind: totals[kind] for kind in KINDS},
            "moves": _moves_json(
                sum(
                    (a.moves for a in self.agents.values()),
                    Counter[tuple[str | None, str | None]](),
                )
            ),
            "agents": [
                {
                    "agent_id": agent_id,
                    "counts": {kind: impact.counts[kind] for kind in KINDS},
                    "moves": _moves_json(impact.moves),
                    "examples": dict(impact.examples),
                }
                for agent_id, impact in sorted(self.agents.items())
            ],
        }

    def moves(self) -> Counter[tuple[str | None, str | None]]:
        """Conversations that moved from one rule to another, by (from, to), in every agent."""
        total: Counter[tuple[str | None, str | None]] = Counter()
        for agent in self.agents.values():
            total.update(agent.moves)
        return total

    def summary(self) -> str:
        """One line: the counts that are not zero (a reload's log line)."""
        totals = self.totals()
        parts = [f"{totals[k]} {k.replace('_', ' ')}" for k in KINDS if totals[k]]
        moves = sum(self.moves().values())
        if moves:
            parts.append(f"{moves} moved to another rule")
        if self.newly_in_scope:
            scope = (
                "every agent"
                if self.newly_in_scope == "*"
                else "agents " + ", ".join(map(str, self.newly_in_scope))
            )
            parts.append(f"{scope} newly in scope (conversations not known yet: `plan` walks them)")
        return ", ".join(parts) or "no conversation's outcome changes"


def _moves_json(moves: Counter[tuple[str | None, str | None]]) -> list[dict[str, Any]]:
    return [
        {"from": old, "to": new, "count": n}
        for (old, new), n in sorted(moves.items(), key=lambda kv: (-kv[1], str(kv[0])))
    ]


def _example(
    facts: ConversationFacts, before: Outcome, after: Outcome, now: datetime
) -> dict[str, Any]:
    return {
        "session_id": facts.session_id,
        "name": facts.name,
        "before": _shown(before, now),
        "after": _shown(after, now),
    }


def _shown(outcome: Outcome, now: datetime) -> str:
    if outcome.held:
        return f"held by {outcome.rule!r}"
    if outcome.due_at is None:
        return "kept: no policy" if outcome.rule is None else f"kept by {outcome.rule!r}"
    when = (
        f"due since {format_duration(now - outcome.due_at)}"
        if outcome.due_at <= now
        else f"due in {format_duration(outcome.due_at - now)}"
    )
    return f"{when} by {outcome.rule!r}"
