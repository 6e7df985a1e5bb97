"""Why a decision is what it is: every hold, the own TTL and every policy, in the order
:func:`retention.policy.decide` weighs them, each with what made it take the conversation or
pass it by. Pure: ``retention explain`` prints it, the admin "why" view returns it.

Holds come first (any hold that takes a conversation keeps it), then a conversation's own TTL,
then the policies in file order: the first that matches decides, and those after it are not
reached.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from retention.models import AgeFrom, ConversationFacts, Decision
from retention.policy import Hold, Matcher, Policy, Rules, compile_glob, explain
from retention.timefmt import format_duration


class Verdict(enum.StrEnum):
    DECIDED = "decided"  # this step made the decision
    MATCHED = "matched"  # it took the conversation, but an earlier step had decided
    PASSED = "passed"  # it did not take the conversation
    NOT_REACHED = "not reached"  # an earlier step decided: first match wins


@dataclass(frozen=True, slots=True)
class Step:
    """One rule weighed: ``kind`` is ``hold``, ``ttl`` or ``policy``."""

    kind: str
    name: str
    verdict: Verdict
    why: str

    def line(self) -> str:
        return f"{self.kind} {self.name!r}: {self.verdict.value}: {self.why}"


@dataclass(frozen=True, slots=True)
class Trace:
    decision: Decision
    steps: tuple[Step, ...]

    def as_json(self, now: datetime) -> dict[str, Any]:
        """The decision, its rule, reason and due time, and every step (``explain --json``
        and the admin "why" view)."""
        decision = self.decision
        due = decision.due_at
        return {
            "decision": decision.kind.value,
            "rule": decision.rule,
            "reason": explain(decision.reason, due, now),
            "due_at": None if due is None else due.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "steps": [
                {"kind": s.kind, "name": s.name, "verdict": s.verdict.value, "why": s.why}
                for s in self.steps
            ],
        }


def trace(facts: ConversationFacts, rules: Rules, now: datetime) -> Trace:
    """The decision ``rules`` make on ``facts`` and every step that led to it."""
    decision = rules.decide(facts, now)
    steps: list[Step] = []
    decided = False
    for hold in rules.holds:
        taken, why = _hold(hold, facts)
        steps.append(Step("hold", hold.name, _verdict(taken, decided), why))
        decided = decided or taken
    if facts.ttl is not None:
        start = facts.ttl_from or facts.created_at
        why = f"its own TTL {format_duration(facts.ttl)} from {_stamp(start)}"
        steps.append(Step("ttl", "own TTL", _verdict(True, decided), why))
        decided = True
    for policy in rules.policies:
        if decided:
            steps.append(
                Step("policy", policy.name, Verdict.NOT_REACHED, "an earlier rule decided")
            )
            continue
        why_not = _policy_miss(policy, facts)
        if why_not is None:
            steps.append(Step("policy", policy.name, Verdict.DECIDED, _policy_takes(policy)))
            decided = True
        else:
            steps.append(Step("policy", policy.name, Verdict.PASSED, why_not))
    return Trace(decision, tuple(steps))


def _verdict(taken: bool, decided: bool) -> Verdict:
    if not taken:
        return Verdict.PASSED
    return Verdict.MATCHED if decided else Verdict.DECIDED


def _hold(hold: Hold, facts: ConversationFacts) -> tuple[bool, str]:
    """Whether ``hold`` takes the conversation, and why (any of its selectors is enough)."""
    if not hold.accepts_agent(facts.agent_id):
        return False, _agents_miss(hold, facts.agent_id)
    if not (hold.session_ids or hold.name_matches or hold.name_regex is not None):
        return True, f"takes every conversation of agent {facts.agent_id} (no selector)"
    if facts.session_id.lower() in hold.session_ids:
        return True, f"lists session id {facts.session_id}"
    glob = _glob_hit(hold, facts.name)
    if glob is not None:
        return True, f"name {facts.name!r} matches {glob!r}"
    if hold.name_regex is not None and Matcher(name_regex=hold.name_regex).accepts_name(facts.name):
        return True, f"name {facts.name!r} matches /{hold.name_regex}/"
    return False, f"none of its selectors takes {facts.name!r}"


def _policy_miss(policy: Policy, facts: ConversationFacts) -> str | None:
    """The first of the policy's conditions the conversation fails, or None when it matches.
    The order is :meth:`Policy.matches`' order."""
    if not policy.accepts_agent(facts.agent_id):
        return _agents_miss(policy, facts.agent_id)
    if policy.name_matches and _glob_hit(policy, facts.name) is None:
        globs = ", ".join(repr(g) for g in policy.name_matches)
        return f"name {facts.name!r} matches none of {globs}"
    if policy.name_regex is not None and not policy.accepts_name(facts.name):
        return f"name {facts.name!r} does not match /{policy.name_regex}/"
    if policy.user_type is not None and facts.creator != policy.user_type:
        creator = "not known yet" if facts.creator is None else facts.creator.value
        return f"creator is {creator}, it wants {policy.user_type.value}"
    if policy.origins is not None and facts.origin not in policy.origins:
        wanted = ", ".join(sorted(o.value for o in policy.origins))
        return f"origin is {facts.origin.value}, it wants {wanted}"
    return None


def _policy_takes(policy: Policy) -> str:
    clock = {
        AgeFrom.CREATED: "created",
        AgeFrom.UPDATED: "updated",
        AgeFrom.LAST_ACTIVITY: "last activity",
    }[policy.age_from]
    return f"matches (first match decides): max_age {format_duration(policy.max_age)} from {clock}"


def _agents_miss(rule: Matcher, agent_id: int) -> str:
    agents = ", ".join(str(a) for a in sorted(rule.agents or ()))
    return f"agent {agent_id} is not one of its agents ({agents})"


def _glob_hit(rule: Matcher, name: str) -> str | None:
    """The first of the rule's globs that takes ``name``."""
    return next((g for g in rule.name_matches if compile_glob(g).match(name)), None)


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%SZ")
