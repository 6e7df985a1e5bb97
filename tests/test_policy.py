"""The pure policy centre: a table of decisions, validation, and hypothesis properties."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from retention.models import AgeFrom, ConversationFacts, Creator, DecisionKind, Origin
from retention.policy import Hold, Policy, RuleError, compile_glob, decide, validate_rules

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
H = timedelta(hours=1)
D = timedelta(days=1)


def facts(**kw: object) -> ConversationFacts:
    base: dict[str, object] = {
        "agent_id": 532,
        "session_id": "11111111-1111-4111-8111-111111111111",
        "name": "Test chat",
        "created_at": NOW - 2 * H,
        "updated_at": NOW - 2 * H,
        "origin": Origin.DISCOVERED,
        "creator": Creator.ANONYMOUS,
    }
    base.update(kw)
    return ConversationFacts(**base)  # type: ignore[arg-type]


QA = Policy(name="qa", agents=frozenset({532}), name_matches=("Test*",), max_age=H)
IDLE = Policy(name="idle", agents=None, max_age=30 * D, age_from=AgeFrom.LAST_ACTIVITY)
RENAMED = Policy(name="renamed", agents=frozenset({533}), max_age=D, age_from=AgeFrom.UPDATED)
TICKETS = Policy(name="tickets", agents=None, name_regex=r"^QA-\d+", max_age=36 * H)
ANON = Policy(name="anon", agents=frozenset({534}), user_type=Creator.ANONYMOUS, max_age=H)
FOUND = Policy(
    name="found", agents=frozenset({535}), origins=frozenset({Origin.DISCOVERED}), max_age=H
)
LEGAL = Hold(name="legal", agents=None, name_matches=("LEGAL*",))
ONE = Hold(name="one", agents=frozenset({532}), session_ids=frozenset({"AAAA-1"}))
FREEZE = Hold(name="freeze", agents=frozenset({536}))
POLICIES = (QA, RENAMED, TICKETS, ANON, FOUND, IDLE)
HOLDS = (LEGAL, ONE, FREEZE)

CASES = [
    # (id, facts, kind, rule, due_at)
    ("glob match, due", facts(), DecisionKind.POLICY, "qa", NOW - H),
    ("glob is case-insensitive", facts(name="TEST chat"), DecisionKind.POLICY, "qa", NOW - H),
    (
        "glob is on the whole name",
        facts(name="My Test chat", agent_id=9),
        DecisionKind.POLICY,
        "idle",
        NOW - 2 * H + 30 * D,
    ),
    (
        "glob match, not yet due",
        facts(created_at=NOW - 10 * timedelta(minutes=1)),
        DecisionKind.POLICY,
        "qa",
        NOW + 50 * timedelta(minutes=1),
    ),
    (
        "other agent falls through to the catch-all",
        facts(agent_id=999),
        DecisionKind.POLICY,
        "idle",
        NOW - 2 * H + 30 * D,
    ),
    (
        "first match in file order wins",
        facts(name="QA-7 Test"),
        DecisionKind.POLICY,
        "tickets",
        NOW - 2 * H + 36 * H,
    ),
    (
        "regex is searched, not anchored by us",
        facts(agent_id=9, name="QA-12"),
        DecisionKind.POLICY,
        "tickets",
        NOW + 34 * H,
    ),
    (
        "updated clock",
        facts(agent_id=533, name="x", updated_at=NOW - 3 * D),
        DecisionKind.POLICY,
        "renamed",
        NOW - 2 * D,
    ),
    ("user type matches", facts(agent_id=534, name="x"), DecisionKind.POLICY, "anon", NOW - H),
    (
        "user type differs",
        facts(agent_id=534, name="x", creator=Creator.TEAM_MEMBER),
        DecisionKind.POLICY,
        "idle",
        NOW - 2 * H + 30 * D,
    ),
    (
        "unknown creator never satisfies a user type",
        facts(agent_id=534, name="x", creator=None),
        DecisionKind.POLICY,
        "idle",
        NOW - 2 * H + 30 * D,
    ),
    ("origin matches", facts(agent_id=535, name="x"), DecisionKind.POLICY, "found", NOW - H),
    (
        "origin differs",
        facts(agent_id=535, name="x", origin=Origin.CREATED),
        DecisionKind.POLICY,
        "idle",
        NOW - 2 * H + 30 * D,
    ),
    (
        "last activity known",
        facts(agent_id=9, name="x", created_at=NOW - 60 * D, last_activity_at=NOW - 5 * D),
        DecisionKind.POLICY,
        "idle",
        NOW + 25 * D,
    ),
    (
        "no messages: created",
        facts(agent_id=9, name="x", created_at=NOW - 60 * D, updated_at=NOW - 60 * D),
        DecisionKind.POLICY,
        "idle",
        NOW - 30 * D,
    ),
    ("held by glob", facts(name="LEGAL Test"), DecisionKind.HELD, "legal", None),
    ("held by session id, any case", facts(session_id="aaaa-1"), DecisionKind.HELD, "one", None),
    (
        "session hold is per agent",
        facts(session_id="aaaa-1", agent_id=9),
        DecisionKind.POLICY,
        "idle",
        NOW - 2 * H + 30 * D,
    ),
    (
        "hold with no selector freezes its agent",
        facts(agent_id=536),
        DecisionKind.HELD,
        "freeze",
        None,
    ),
    (
        "ttl beats policies",
        facts(ttl=5 * H, ttl_from=NOW - H),
        DecisionKind.TTL,
        "ttl",
        NOW + 4 * H,
    ),
    ("ttl runs from creation when no start given", facts(ttl=H), DecisionKind.TTL, "ttl", NOW - H),
    ("hold beats ttl", facts(name="LEGAL x", ttl=H), DecisionKind.HELD, "legal", None),
]


@pytest.mark.parametrize(
    ("conversation", "kind", "rule", "due_at"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_decision_table(
    conversation: ConversationFacts, kind: DecisionKind, rule: str | None, due_at: datetime | None
) -> None:
    decision = decide(conversation, policies=POLICIES, holds=HOLDS, now=NOW)
    assert (decision.kind, decision.rule, decision.due_at) == (kind, rule, due_at)
    assert decision.reason


def test_no_policy_matches_means_kept() -> None:
    decision = decide(facts(agent_id=9), policies=(QA,), holds=(), now=NOW)
    assert decision.kind is DecisionKind.NO_MATCH
    assert decision.due_at is None and not decision.is_due(NOW + 1000 * D)
    assert decision.reason == "no policy matches: kept"


def test_unknown_last_activity_is_a_provisional_lower_bound() -> None:
    unknown = facts(agent_id=9, created_at=NOW - 40 * D, updated_at=NOW - 35 * D)
    decision = decide(unknown, policies=(IDLE,), holds=(), now=NOW)
    assert decision.provisional
    assert decision.due_at == NOW - 5 * D
    known = replace(unknown, last_activity_at=NOW - D)
    confirmed = decide(known, policies=(IDLE,), holds=(), now=NOW)
    assert not confirmed.provisional and confirmed.due_at == NOW + 29 * D


def test_reason_names_the_rule_clock_and_timing() -> None:
    decision = decide(facts(), policies=(QA,), holds=(), now=NOW)
    assert decision.reason == "policy 'qa': max_age 1h from created, age 2h; due since 1h"
    assert decision.is_due(NOW)


def test_policy_dry_run_is_carried_into_the_decision() -> None:
    quiet = replace(QA, dry_run=True)
    assert decide(facts(), policies=(quiet,), holds=(), now=NOW).dry_run


@pytest.mark.parametrize(
    ("policies", "holds", "message"),
    [
        (
            (QA, replace(IDLE, name="QA")),
            (),
            "policies[1] 'QA': name: duplicate of policies[0] 'qa'",
        ),
        ((), (LEGAL, replace(ONE, name="legal")), "holds[1] 'legal': name: duplicate of holds[0]"),
        ((replace(QA, name="ttl"),), (), "policies[0] 'ttl': name: 'ttl' is reserved"),
        ((replace(QA, name=" "),), (), "policies[0]: name: must not be empty"),
        (
            (QA, replace(QA, name="neg", max_age=-H)),
            (),
            "policies[1] 'neg': max_age: must be greater than zero",
        ),
        (
            (Policy(name="all", agents=None, max_age=30 * timedelta(minutes=1)),),
            (),
            "policies[0] 'all': confirm_broad: applies to every conversation",
        ),
    ],
)
def test_validation_names_the_rule_by_index_and_name(
    policies: tuple[Policy, ...], holds: tuple[Hold, ...], message: str
) -> None:
    with pytest.raises(RuleError) as caught:
        validate_rules(policies, holds)
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize(
    "policy",
    [
        Policy(name="all", agents=None, max_age=timedelta(minutes=30), confirm_broad=True),
        Policy(name="all", agents=None, max_age=24 * H + timedelta(seconds=1)),  # over a day
        Policy(name="some", agents=frozenset({1}), max_age=timedelta(minutes=5)),
        Policy(name="named", agents=None, name_matches=("x*",), max_age=timedelta(minutes=5)),
    ],
)
def test_narrowed_or_confirmed_policies_are_valid(policy: Policy) -> None:
    validate_rules((policy,))


@pytest.mark.parametrize(("glob", "problem"), [("", "empty glob"), ("Test[", "unclosed '['")])
def test_invalid_globs_are_rejected(glob: str, problem: str) -> None:
    with pytest.raises(ValueError) as caught:
        compile_glob(glob)
    assert problem in str(caught.value)


def test_invalid_regex_is_rejected() -> None:
    with pytest.raises(ValueError, match="invalid regex"):
        Policy(name="bad", agents=None, name_regex="(", max_age=H)


# ---- properties -----------------------------------------------------------------------------

names = st.sampled_from(["Test 1", "test-2", "QA-9", "LEGAL 4", "Customer", "", "Renamed x"])
agents = st.sampled_from([1, 2, 3])
moments = st.integers(min_value=0, max_value=400 * 24).map(lambda h: NOW - timedelta(hours=h))
durations = st.integers(min_value=1, max_value=2000).map(lambda h: timedelta(hours=h))
agent_sets = st.one_of(st.none(), st.frozensets(agents, min_size=1))
globs = st.lists(st.sampled_from(["Test*", "*qa*", "LEGAL*", "?ustomer"]), max_size=2)


@st.composite
def conversation_facts(draw: st.DrawFn) -> ConversationFacts:
    created = draw(moments)
    return ConversationFacts(
        agent_id=draw(agents),
        session_id=draw(st.sampled_from(["s-1", "s-2", "s-3"])),
        name=draw(names),
        created_at=created,
        updated_at=created + draw(st.integers(0, 100).map(lambda h: timedelta(hours=h))),
        origin=draw(st.sampled_from(list(Origin))),
        creator=draw(st.sampled_from([None, *Creator])),
        last_activity_at=draw(st.one_of(st.none(), moments)),
        ttl=draw(st.one_of(st.none(), durations)),
    )


policies_st = st.lists(
    st.builds(
        Policy,
        name=st.uuids().map(str),
        agents=agent_sets,
        name_matches=globs.map(tuple),
        max_age=durations,
        age_from=st.sampled_from(list(AgeFrom)),
        user_type=st.sampled_from([None, *Creator]),
    ),
    max_size=4,
)
holds_st = st.lists(
    st.builds(
        Hold,
        name=st.uuids().map(str),
        agents=agent_sets,
        name_matches=globs.map(tuple),
        session_ids=st.frozensets(st.sampled_from(["s-1", "s-2"]), max_size=1),
    ),
    max_size=3,
)
nows = st.integers(min_value=0, max_value=800 * 24).map(lambda h: NOW + timedelta(hours=h))


@given(conversation_facts(), policies_st, holds_st, nows)
def test_a_held_conversation_is_never_due(
    conversation: ConversationFacts, policies: list[Policy], holds: list[Hold], now: datetime
) -> None:
    freeze = Hold(name="freeze", agents=frozenset({conversation.agent_id}))
    decision = decide(conversation, policies=policies, holds=[*holds, freeze], now=now)
    assert decision.kind is DecisionKind.HELD
    assert not decision.is_due(now)


@given(conversation_facts(), policies_st, holds_st, nows)
def test_a_conversation_no_policy_matches_is_never_due(
    conversation: ConversationFacts, policies: list[Policy], holds: list[Hold], now: datetime
) -> None:
    untracked = replace(conversation, ttl=None)
    unmatched = [p for p in policies if not p.matches(untracked)]
    decision = decide(untracked, policies=unmatched, holds=holds, now=now)
    assert decision.kind in (DecisionKind.NO_MATCH, DecisionKind.HELD)
    assert not decision.is_due(now)


@given(conversation_facts(), policies_st, st.data(), nows)
def test_a_longer_max_age_never_makes_a_conversation_due_sooner(
    conversation: ConversationFacts, policies: list[Policy], data: st.DataObject, now: datetime
) -> None:
    if not policies:
        return
    index = data.draw(st.integers(0, len(policies) - 1))
    longer = list(policies)
    longer[index] = replace(policies[index], max_age=policies[index].max_age + data.draw(durations))
    before = decide(conversation, policies=policies, holds=(), now=now)
    after = decide(conversation, policies=longer, holds=(), now=now)
    if after.due_at is not None:
        assert before.due_at is not None and after.due_at >= before.due_at
    if after.is_due(now):
        assert before.is_due(now)
