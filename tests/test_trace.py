"""The trace behind `retention explain`: every hold, the own TTL and every policy in order, each
with why it took the conversation or passed it by; and it always agrees with the decision."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retention.models import AgeFrom, ConversationFacts, Creator, DecisionKind, Origin
from retention.policy import Hold, Policy, Rules
from retention.trace import Verdict, trace

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
H, D = timedelta(hours=1), timedelta(days=1)

RULES = Rules(
    policies=(
        Policy(name="test-chats", agents=frozenset({532}), name_matches=("Test*",), max_age=H),
        Policy(name="tickets", agents=None, name_regex=r"^QA-\d+", max_age=36 * H),
        Policy(
            name="anon",
            agents=frozenset({533}),
            user_type=Creator.ANONYMOUS,
            max_age=30 * D,
            age_from=AgeFrom.LAST_ACTIVITY,
        ),
        Policy(name="created", agents=None, origins=frozenset({Origin.CREATED}), max_age=2 * H),
    ),
    holds=(
        Hold(
            name="legal", agents=None, session_ids=frozenset({"s-legal"}), name_matches=("LEGAL*",)
        ),
        Hold(name="vip", agents=frozenset({534})),
        Hold(name="regex", agents=frozenset({532}), name_regex=r"keep$"),
    ),
)


def facts(**kw: object) -> ConversationFacts:
    base: dict[str, object] = {
        "agent_id": 532,
        "session_id": "s-1",
        "name": "Chat",
        "created_at": NOW - 2 * D,
        "updated_at": NOW - 2 * D,
        "creator": Creator.TEAM_MEMBER,
    }
    return ConversationFacts(**{**base, **kw})  # type: ignore[arg-type]


def lines(f: ConversationFacts) -> list[str]:
    return [step.line() for step in trace(f, RULES, NOW).steps]


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        (
            facts(name="Test checkout"),
            [
                "hold 'legal': passed: none of its selectors takes 'Test checkout'",
                "hold 'vip': passed: agent 532 is not one of its agents (534)",
                "hold 'regex': passed: none of its selectors takes 'Test checkout'",
                "policy 'test-chats': decided: matches (first match decides): max_age 1h from"
                " created",
                "policy 'tickets': not reached: an earlier rule decided",
                "policy 'anon': not reached: an earlier rule decided",
                "policy 'created': not reached: an earlier rule decided",
            ],
        ),
        (
            facts(name="QA-12 smoke"),  # the glob passes it on; the regex takes it
            [
                "hold 'legal': passed: none of its selectors takes 'QA-12 smoke'",
                "hold 'vip': passed: agent 532 is not one of its agents (534)",
                "hold 'regex': passed: none of its selectors takes 'QA-12 smoke'",
                "policy 'test-chats': passed: name 'QA-12 smoke' matches none of 'Test*'",
                "policy 'tickets': decided: matches (first match decides): max_age 1d12h from"
                " created",
                "policy 'anon': not reached: an earlier rule decided",
                "policy 'created': not reached: an earlier rule decided",
            ],
        ),
        (
            facts(agent_id=533, name="Hello", creator=Creator.TEAM_MEMBER),
            [
                "hold 'legal': passed: none of its selectors takes 'Hello'",
                "hold 'vip': passed: agent 533 is not one of its agents (534)",
                "hold 'regex': passed: agent 533 is not one of its agents (532)",
                "policy 'test-chats': passed: agent 533 is not one of its agents (532)",
                "policy 'tickets': passed: name 'Hello' does not match /^QA-\\d+/",
                "policy 'anon': passed: creator is team_member, it wants anonymous",
                "policy 'created': passed: origin is discovered, it wants created",
            ],
        ),
        (
            facts(name="LEGAL hold, Test", session_id="s-9"),
            [
                "hold 'legal': decided: name 'LEGAL hold, Test' matches 'LEGAL*'",
                "hold 'vip': passed: agent 532 is not one of its agents (534)",
                "hold 'regex': passed: none of its selectors takes 'LEGAL hold, Test'",
                "policy 'test-chats': not reached: an earlier rule decided",
                "policy 'tickets': not reached: an earlier rule decided",
                "policy 'anon': not reached: an earlier rule decided",
                "policy 'created': not reached: an earlier rule decided",
            ],
        ),
        (
            facts(session_id="S-LEGAL", name="Test please keep"),  # two holds: the first decides
            [
                "hold 'legal': decided: lists session id S-LEGAL",
                "hold 'vip': passed: agent 532 is not one of its agents (534)",
                "hold 'regex': matched: name 'Test please keep' matches /keep$/",
                "policy 'test-chats': not reached: an earlier rule decided",
                "policy 'tickets': not reached: an earlier rule decided",
                "policy 'anon': not reached: an earlier rule decided",
                "policy 'created': not reached: an earlier rule decided",
            ],
        ),
        (
            facts(agent_id=534, name="anything"),
            [
                "hold 'legal': passed: none of its selectors takes 'anything'",
                "hold 'vip': decided: takes every conversation of agent 534 (no selector)",
                "hold 'regex': passed: agent 534 is not one of its agents (532)",
                "policy 'test-chats': not reached: an earlier rule decided",
                "policy 'tickets': not reached: an earlier rule decided",
                "policy 'anon': not reached: an earlier rule decided",
                "policy 'created': not reached: an earlier rule decided",
            ],
        ),
        (
            facts(name="Test run", ttl=2 * H, ttl_from=NOW - H, origin=Origin.CREATED),
            [
                "hold 'legal': passed: none of its selectors takes 'Test run'",
                "hold 'vip': passed: agent 532 is not one of its agents (534)",
                "hold 'regex': passed: none of its selectors takes 'Test run'",
                "ttl 'own TTL': decided: its own TTL 2h from 2026-11-26 11:00:00Z",
                "policy 'test-chats': not reached: an earlier rule decided",
                "policy 'tickets': not reached: an earlier rule decided",
                "policy 'anon': not reached: an earlier rule decided",
                "policy 'created': not reached: an earlier rule decided",
            ],
        ),
        (
            facts(agent_id=533, name="Hi", creator=None),  # creator not known yet
            [
                "hold 'legal': passed: none of its selectors takes 'Hi'",
                "hold 'vip': passed: agent 533 is not one of its agents (534)",
                "hold 'regex': passed: agent 533 is not one of its agents (532)",
                "policy 'test-chats': passed: agent 533 is not one of its agents (532)",
                "policy 'tickets': passed: name 'Hi' does not match /^QA-\\d+/",
                "policy 'anon': passed: creator is not known yet, it wants anonymous",
                "policy 'created': passed: origin is discovered, it wants created",
            ],
        ),
        (
            facts(agent_id=533, name="Hi", creator=Creator.ANONYMOUS),
            [
                "hold 'legal': passed: none of its selectors takes 'Hi'",
                "hold 'vip': passed: agent 533 is not one of its agents (534)",
                "hold 'regex': passed: agent 533 is not one of its agents (532)",
                "policy 'test-chats': passed: agent 533 is not one of its agents (532)",
                "policy 'tickets': passed: name 'Hi' does not match /^QA-\\d+/",
                "policy 'anon': decided: matches (first match decides): max_age 30d from last"
                " activity",
                "policy 'created': not reached: an earlier rule decided",
            ],
        ),
    ],
)
def test_every_rule_is_weighed_in_order_with_its_reason(
    case: ConversationFacts, expected: list[str]
) -> None:
    assert lines(case) == expected


NAMES = st.sampled_from(["Test a", "QA-7", "LEGAL x", "x keep", "Hello", "TEST", ""])


@settings(max_examples=300, deadline=None)
@given(
    agent=st.sampled_from([532, 533, 534, 999]),
    name=NAMES,
    session=st.sampled_from(["s-1", "s-legal"]),
    creator=st.none() | st.sampled_from(list(Creator)),
    origin=st.sampled_from(list(Origin)),
    ttl=st.none() | st.just(3 * H),
)
def test_the_trace_always_agrees_with_the_decision(
    agent: int,
    name: str,
    session: str,
    creator: Creator | None,
    origin: Origin,
    ttl: timedelta | None,
) -> None:
    f = facts(
        agent_id=agent, name=name, session_id=session, creator=creator, origin=origin, ttl=ttl
    )
    result = trace(f, RULES, NOW)
    decisive = [s for s in result.steps if s.verdict is Verdict.DECIDED]
    kind = result.decision.kind
    if kind is DecisionKind.NO_MATCH:
        assert decisive == [] and all(s.verdict is Verdict.PASSED for s in result.steps)
        return
    (step,) = decisive
    assert step.kind == {"held": "hold", "ttl": "ttl", "policy": "policy"}[kind.value]
    if kind is not DecisionKind.TTL:
        assert step.name == result.decision.rule
    after = result.steps[result.steps.index(step) + 1 :]
    assert all(s.verdict is not Verdict.PASSED for s in after if s.kind == "policy")


BOTH = Rules(
    policies=(Policy(name="p", agents=None, max_age=H),),
    holds=(Hold(name="both", agents=None, name_matches=("QA*",), name_regex="(?i)legal"),),
)


@pytest.mark.parametrize("name", ["LEGAL x", "QA-1", "QA legal", "other", "qa-2", "Legal"])
def test_a_hold_takes_on_any_of_its_selectors_in_the_trace_as_in_the_decision(name: str) -> None:
    """A hold with globs and a regex takes a conversation that either selects."""
    result = trace(facts(name=name), BOTH, NOW)
    held = result.decision.kind is DecisionKind.HELD
    (hold_step,) = [s for s in result.steps if s.kind == "hold"]
    assert (hold_step.verdict is Verdict.DECIDED) == held, hold_step.line()
    assert held == (name.upper().startswith("QA") or "legal" in name.lower())  # globs: any case
