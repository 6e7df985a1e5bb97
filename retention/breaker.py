"""The mass-deletion breaker: pure judgement of a due set against the limits. No I/O.

A bad edit (``agents = "*"``, ``name_matches = ["*"]``, ``max_age = "1s"``) or a first run on
an account with a large backlog makes many conversations due at once. Rather than deleting them
at the budget's pace, a sweep whose due set is too large deletes nothing in the affected scope
until an operator raises the limit or approves exactly that set:

- the account: more than ``max_deletions`` unapproved conversations due;
- an agent: more than ``max_due_fraction`` of its live conversations due under policies,
  counted only once at least ``floor`` of them are due (small agents are not blocked).

Conversations due under their own TTL were asked for one by one: they count toward
``max_deletions`` only. Approved conversations (``retention approve``, or ``retention apply``
of a plan) count toward nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Limits:
    max_deletions: int = 1000
    max_due_fraction: float = 0.5
    floor: int = 20


@dataclass(frozen=True, slots=True)
class AgentDue:
    """One agent's figures for the breaker: unapproved due, by cause, and live conversations."""

    agent_id: int
    due_by_policy: int
    due_by_ttl: int
    live: int


@dataclass(frozen=True, slots=True)
class Verdict:
    """Where the breaker stops deletion; empty when it does not."""

    account: str | None = None  # why the whole account is stopped, or None
    agents: Mapping[int, str] = field(default_factory=dict)  # agent -> why it is stopped

    @property
    def tripped(self) -> bool:
        return self.account is not None or bool(self.agents)

    def stops(self, agent_id: int) -> bool:
        """Whether an unapproved conversation of this agent may not be deleted now."""
        return self.account is not None or agent_id in self.agents

    def reasons(self) -> list[str]:
        lines = [self.account] if self.account else []
        return lines + [self.agents[agent] for agent in sorted(self.agents)]


def judge(figures: Iterable[AgentDue], limits: Limits) -> Verdict:
    rows = list(figures)
    total = sum(r.due_by_policy + r.due_by_ttl for r in rows)
    account = None
    if total > limits.max_deletions:
        account = (
            f"{total} conversations due and not approved, more than max_deletions "
            f"{limits.max_deletions}: approve them (retention approve) or raise the limit"
        )
    agents = {}
    for row in rows:
        due = row.due_by_policy
        if due >= limits.floor and row.live and due / row.live > limits.max_due_fraction:
            agents[row.agent_id] = (
                f"agent {row.agent_id}: {due} of {row.live} live conversations due and not "
                f"approved ({due / row.live:.0%}), more than max_due_fraction "
                f"{limits.max_due_fraction:.0%}: approve them (retention approve --agent "
                f"{row.agent_id}) or raise the limit"
            )
    return Verdict(account=account, agents=agents)
