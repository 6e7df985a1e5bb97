"""The pure policy centre: a table of decisions, validation, and hypothesis properties."""

from __future__ import annotations

import hashlib
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from retention.models import AgeFrom, ConversationFacts, Creator, DecisionKind, Fact, Origin
from retention.policy import (
    Hold,
    Policy,
    RuleError,
    Rules,
    compile_glob,
    compile_regex,
    decide,
    explain,
    validate_rules,
)

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
    assert decision.reason == "policy 'qa': max_age 1h from created"
    shown = explain(decision.reason, decision.due_at, NOW)
    assert shown == "policy 'qa': max_age 1h from created; due since 1h"
    assert decision.is_due(NOW)
    later = NOW + 2 * H
    assert decide(facts(), policies=(QA,), holds=(), now=later) == decision, "time-free"
    assert explain(decision.reason, decision.due_at, later).endswith("; due since 3h")


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
        (
            (replace(QA, name="zero", max_age=timedelta(0)),),
            (),
            "policies[0] 'zero': max_age: must be greater than zero",
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


def test_a_broad_policy_says_how_to_fix_it() -> None:
    with pytest.raises(RuleError) as caught:
        validate_rules((Policy(name="all", agents=None, max_age=H),))
    assert str(caught.value).endswith("narrow it or set confirm_broad = true")


@pytest.mark.parametrize("glob", ["", "  "])
def test_empty_globs_are_rejected(glob: str) -> None:
    with pytest.raises(ValueError) as caught:
        compile_glob(glob)
    assert str(caught.value) == "empty glob"


# (glob, names it accepts, names it refuses): fnmatch's brackets, case-insensitive, whole name.
BRACKET_GLOBS = [
    ("Test[0-9]*", ["Test1 chat", "test9", "TEST0"], ["TestA", "Test", "My Test1"]),
    ("[!x]*", ["abc", "y"], ["xyz", "Xyz", ""]),
    ("[]]x", ["]x"], ["x", "]]x", "a]x"]),
    ("[!]]x", ["ax", "!x"], ["]x", "x"]),
    ("[!a]", ["b"], ["a", "A", "ab"]),
    ("[]]", ["]"], ["", "]]"]),
    ("ab[!]]", ["abc"], ["ab]"]),
    ("[a]", ["a", "A"], ["b"]),
    ("*[[]*", ["a[b"], ["ab"]),
]


@pytest.mark.parametrize(("glob", "accepted", "refused"), BRACKET_GLOBS)
def test_bracket_globs(glob: str, accepted: list[str], refused: list[str]) -> None:
    policy = Policy(name="p", agents=None, name_matches=(glob,), max_age=D)
    hold = Hold(name="h", agents=None, name_matches=(glob,))
    assert [n for n in accepted + refused if policy.accepts_name(n)] == accepted
    assert [n for n in accepted + refused if hold.matches(facts(name=n))] == accepted


@pytest.mark.parametrize(
    "glob",
    ["[abc", "x[abc", "Test[", "Test[0-9", "[]", "xx[]", "[!]", "[!]x", "xx[!]", "[a][]", "[a]x[]"],
)
def test_unbalanced_bracket_globs_are_rejected(glob: str) -> None:
    # fnmatch would read an unclosed "[" as a literal one: refused instead, as a likely typo.
    with pytest.raises(ValueError) as caught:
        compile_glob(glob)
    assert str(caught.value) == f"invalid glob {glob!r}: unclosed '['"


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [
        ("(", "missing ): ("),
        (r"(a)\1", r"invalid escape sequence: \1"),
        ("(?=x)", "invalid perl operator: (?="),
        ("(é", "missing ): (é"),
    ],
)
def test_a_regex_re2_cannot_run_is_refused_by_name_and_quietly(
    capfd: pytest.CaptureFixture[str], pattern: str, problem: str
) -> None:
    with pytest.raises(ValueError) as caught:
        Policy(name="bad", agents=None, name_regex=pattern, max_age=H)
    assert str(caught.value) == (
        f"invalid regex {pattern!r}: {problem} "
        "(regexes run on RE2, in linear time: no backreferences or lookaround)"
    )
    assert capfd.readouterr().err == "", "RE2 logs nothing of its own"


def test_a_hold_that_selects_by_regex_keeps_what_it_matches() -> None:
    # Issue 8: inverting the hold's regex match left every test green.
    hold = Hold(name="tickets", agents=frozenset({532}), name_regex=r"^HOLD-\d+")
    everything = Policy(name="all-532", agents=frozenset({532}), max_age=H)
    cases = [
        ("HOLD-12 refund", 532, True),
        ("hold-12", 532, False),  # a regex is case-sensitive unless it says (?i)
        ("x HOLD-12", 532, False),
        ("HOLD-", 532, False),
        ("HOLD-12", 533, False),  # a hold applies only within its agents
    ]
    for name, agent_id, held in cases:
        conversation = facts(name=name, agent_id=agent_id)
        decision = decide(conversation, policies=(everything,), holds=(hold,), now=NOW)
        assert (decision.kind is DecisionKind.HELD) is held, name
        assert hold.matches(conversation) is held, name
        if held:
            assert decision.rule == "tickets" and not decision.is_due(NOW + 1000 * D)


def test_a_hold_selects_by_any_of_its_selectors() -> None:
    hold = Hold(
        name="any",
        agents=None,
        session_ids=frozenset({"AAAA-1"}),
        name_matches=("LEGAL*",),
        name_regex="audit",
    )
    assert hold.session_ids == frozenset({"aaaa-1"})
    assert hold.matches(facts(session_id="aaaa-1", name="x"))
    assert hold.matches(facts(session_id="AAAA-1", name="x"))
    assert hold.matches(facts(name="legal x"))
    assert hold.matches(facts(name="an audit"))
    assert not hold.matches(facts(name="Audit"))
    assert not hold.matches(facts(name="x"))


def test_a_policy_regex_is_searched_in_the_name() -> None:
    policy = Policy(name="qa", agents=None, name_regex=r"QA-\d+", max_age=H)
    assert policy.matches(facts(name="re: QA-12"))
    assert not policy.matches(facts(name="QA-x"))
    both = Policy(name="both", agents=None, name_matches=("re:*",), name_regex=r"\d$", max_age=H)
    assert both.matches(facts(name="re: 7")) and not both.matches(facts(name="re: x"))
    assert not both.matches(facts(name="fw: 7"))


def test_compile_regex_returns_a_working_pattern() -> None:
    assert compile_regex(r"^a+$").search("aaa") is not None
    assert compile_regex(r"^a+$").search("aab") is None


# ---- the reasons and fields of a decision ----------------------------------------------------


@pytest.mark.parametrize(
    ("conversation", "policy", "reason", "provisional"),
    [
        (
            facts(agent_id=533, name="x", updated_at=NOW - 3 * D),
            RENAMED,
            "policy 'renamed': max_age 1d from updated; due since 2d",
            False,
        ),
        (
            facts(created_at=NOW - 60 * D, last_activity_at=NOW - 5 * D),
            IDLE,
            "policy 'idle': max_age 30d from last activity; due in 25d",
            False,
        ),
        (
            facts(created_at=NOW - 40 * D, updated_at=NOW - 35 * D),
            IDLE,
            "policy 'idle': max_age 30d from created/updated (unconfirmed); due since 5d",
            True,
        ),
        (
            facts(created_at=NOW - H),
            QA,
            "policy 'qa': max_age 1h from created; due since 0s",  # due exactly now
            False,
        ),
    ],
    ids=["updated", "last activity", "unconfirmed", "due this instant"],
)
def test_a_policy_decision_names_its_clock(
    conversation: ConversationFacts, policy: Policy, reason: str, provisional: bool
) -> None:
    decision = decide(conversation, policies=(policy,), holds=(), now=NOW)
    assert explain(decision.reason, decision.due_at, NOW) == reason
    assert decision.provisional is provisional
    assert decision.age_from is policy.age_from
    assert decision.is_due(NOW) is reason.endswith(("due since 2d", "due since 5d", "0s"))


def test_a_ttl_decision_says_when_it_started() -> None:
    decision = decide(facts(ttl=5 * H, ttl_from=NOW - H), policies=(), holds=(), now=NOW)
    assert decision.reason == "own TTL 5h from 2026-11-26 11:00:00Z"
    assert explain(decision.reason, decision.due_at, NOW).endswith("; due in 4h")
    kept = decide(facts(), policies=(), holds=(), now=NOW)
    assert explain(kept.reason, kept.due_at, NOW) == "no policy matches: kept", "never due"


# ---- the rules in force ----------------------------------------------------------------------


def test_rules_decide_as_decide_does() -> None:
    rules = Rules(POLICIES, HOLDS)
    for conversation in (facts(), facts(name="LEGAL x"), facts(agent_id=9), facts(ttl=H)):
        later = NOW + 3 * H
        expected = decide(conversation, policies=POLICIES, holds=HOLDS, now=later)
        assert rules.decide(conversation, later) == expected


def test_rules_name_the_agents_discovery_must_cover() -> None:
    assert Rules((QA, RENAMED)).agents_in_scope() == frozenset({532, 533})
    assert Rules((QA, IDLE)).agents_in_scope() is None
    assert Rules((), HOLDS).agents_in_scope() == frozenset()


def test_the_fingerprint_changes_with_the_rules_and_nothing_else() -> None:
    rules = Rules(POLICIES, HOLDS)
    print_ = rules.fingerprint(dry_run=False)
    assert re.fullmatch(r"[0-9a-f]{16}", print_)
    assert Rules(POLICIES, HOLDS).fingerprint(dry_run=False) == print_
    others = {
        rules.fingerprint(dry_run=True),
        Rules(POLICIES[:-1], HOLDS).fingerprint(dry_run=False),
        Rules(POLICIES, HOLDS[:-1]).fingerprint(dry_run=False),
        Rules((replace(QA, max_age=2 * H), *POLICIES[1:]), HOLDS).fingerprint(dry_run=False),
    }
    assert print_ not in others and len(others) == 4


# ---- accounts -------------------------------------------------------------------------------

ACME, GLOBEX = frozenset({"acme"}), frozenset({"globex"})


def test_rules_for_an_account_keep_its_policies_and_holds_in_order() -> None:
    rules = Rules(
        (replace(QA, accounts=ACME), IDLE, replace(TICKETS, accounts=GLOBEX | ACME)),
        (replace(LEGAL, accounts=GLOBEX), ONE),
    )
    acme, globex, other = (rules.for_account(n) for n in ("acme", "globex", "initech"))
    assert [p.name for p in acme.policies] == ["qa", "idle", "tickets"]
    assert [h.name for h in acme.holds] == ["one"]
    assert [p.name for p in globex.policies] == ["idle", "tickets"]
    assert [h.name for h in globex.holds] == ["legal", "one"]
    assert [p.name for p in other.policies] == ["idle"] and other.holds == (ONE,)
    assert Rules(POLICIES, HOLDS).for_account("acme") == Rules(POLICIES, HOLDS), "None: every one"


def test_a_rules_accounts_are_part_of_its_identity_and_of_the_fingerprint() -> None:
    assert replace(QA, accounts=ACME) != QA and replace(QA, accounts=ACME) != replace(
        QA, accounts=GLOBEX
    )
    assert len({LEGAL, replace(LEGAL, accounts=ACME), replace(LEGAL, accounts=ACME)}) == 2
    prints = {
        Rules((QA,), (LEGAL,)).fingerprint(dry_run=False),
        Rules((replace(QA, accounts=ACME),), (LEGAL,)).fingerprint(dry_run=False),
        Rules((replace(QA, accounts=GLOBEX),), (LEGAL,)).fingerprint(dry_run=False),
        Rules((QA,), (replace(LEGAL, accounts=ACME),)).fingerprint(dry_run=False),
    }
    assert len(prints) == 4


def test_account_filtered_rules_differ_in_fingerprint_when_different_rules_apply() -> None:
    rules = Rules((replace(QA, accounts=ACME), IDLE), (replace(LEGAL, accounts=GLOBEX),))
    acme, globex = rules.for_account("acme"), rules.for_account("globex")
    assert acme.fingerprint(dry_run=False) != globex.fingerprint(dry_run=False)
    same = Rules((replace(QA, accounts=ACME), IDLE), ()).for_account("acme")
    assert same.fingerprint(dry_run=False) == acme.fingerprint(dry_run=False)


def test_rules_without_accounts_keep_the_fingerprint_they_had_before_accounts() -> None:
    """A store holds the fingerprint of its rules: an upgrade must not make them look edited."""
    assert "accounts" not in repr(QA) + repr(LEGAL)
    text = repr((POLICIES, HOLDS, False))
    expected = hashlib.sha256(text.encode()).hexdigest()[:16]
    assert Rules(POLICIES, HOLDS).fingerprint(dry_run=False) == expected


@pytest.mark.parametrize(
    ("policies", "holds", "expected"),
    [
        ((replace(QA, accounts=ACME),), (), "policies[0] 'qa': accounts: unknown account 'acme'"),
        ((), (ONE, replace(LEGAL, accounts=ACME | GLOBEX)), "holds[1] 'legal': accounts: unknown"),
        ((replace(QA, accounts=frozenset()),), (), "accounts: an empty list matches no account"),
    ],
)
def test_rules_may_name_only_accounts_that_exist(
    policies: tuple[Policy, ...], holds: tuple[Hold, ...], expected: str
) -> None:
    with pytest.raises(RuleError) as caught:
        validate_rules(policies, holds, accounts=["default", "initech"])
    assert expected in str(caught.value)
    assert caught.value.key == "accounts"
    validate_rules(
        tuple(replace(p, accounts=None) for p in policies),
        tuple(replace(h, accounts=None) for h in holds),
        accounts=["default"],
    )


def test_the_unknown_account_message_lists_the_accounts_in_their_order() -> None:
    with pytest.raises(RuleError, match=r"unknown account 'acme' \(accounts: zeta, alpha\)"):
        validate_rules((replace(QA, accounts=ACME),), accounts=["zeta", "alpha"])


# ---- properties -----------------------------------------------------------------------------

names = st.sampled_from(["Test 1", "test-2", "QA-9", "LEGAL 4", "Customer", "", "Renamed x"])
agents = st.sampled_from([1, 2, 3])
moments = st.integers(min_value=0, max_value=400 * 24).map(lambda h: NOW - timedelta(hours=h))
durations = st.integers(min_value=1, max_value=2000).map(lambda h: timedelta(hours=h))
agent_sets = st.one_of(st.none(), st.frozensets(agents, min_size=1))
globs = st.lists(st.sampled_from(["Test*", "*qa*", "LEGAL*", "?ustomer", "[!T]*"]), max_size=2)
REGEXES = [r"^QA-\d+", r"\d", "LEGAL", r"^$", "(?i)test", "x$"]
regexes = st.one_of(st.none(), st.sampled_from(REGEXES))


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
        name_regex=regexes,
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
        name_regex=regexes,
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


@given(conversation_facts(), policies_st, holds_st, nows, nows)
def test_a_decision_is_the_same_whenever_it_is_made(
    conversation: ConversationFacts,
    policies: list[Policy],
    holds: list[Hold],
    now: datetime,
    later: datetime,
) -> None:
    """Absolute times only: re-evaluating a store later rewrites only changed decisions."""
    first = decide(conversation, policies=policies, holds=holds, now=now)
    assert decide(conversation, policies=policies, holds=holds, now=later) == first
    shown = explain(first.reason, first.due_at, later)
    assert shown.startswith(first.reason)
    assert ("due since" in shown or "due in" in shown) is (first.due_at is not None)


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


@given(conversation_facts(), policies_st, st.sampled_from(REGEXES), nows)
def test_a_conversation_a_regex_hold_selects_is_held(
    conversation: ConversationFacts, policies: list[Policy], pattern: str, now: datetime
) -> None:
    hold = Hold(name="by-regex", agents=frozenset({conversation.agent_id}), name_regex=pattern)
    decision = decide(conversation, policies=policies, holds=[hold], now=now)
    selected = re.search(pattern, conversation.name) is not None  # Python's engine as the oracle
    assert (decision.kind is DecisionKind.HELD) is selected
    if selected:
        assert not decision.is_due(now)


account_sets = st.one_of(st.none(), st.frozensets(st.sampled_from(["a", "b", "c"]), min_size=1))


@given(policies_st, holds_st, st.data(), st.sampled_from(["a", "b", "c", "d"]))
def test_an_accounts_rules_are_exactly_those_naming_it_or_none(
    policies: list[Policy], holds: list[Hold], data: st.DataObject, account: str
) -> None:
    policies = [replace(p, accounts=data.draw(account_sets)) for p in policies]
    holds = [replace(h, accounts=data.draw(account_sets)) for h in holds]
    mine = Rules(tuple(policies), tuple(holds)).for_account(account)
    assert list(mine.policies) == [
        p for p in policies if p.accounts is None or account in p.accounts
    ]
    assert list(mine.holds) == [h for h in holds if h.accounts is None or account in h.accounts]


# ---- which facts a decision to delete rests on ------------------------------------------------

NAME, UPDATED, ACTIVITY = Fact.NAME, Fact.UPDATED, Fact.ACTIVITY
OLD = {"created_at": NOW - 400 * D, "updated_at": NOW - 400 * D, "last_activity_at": NOW - 400 * D}
BY_CREATION = Policy(name="by-creation", agents=frozenset({532}), max_age=H)
BY_NAME = Policy(name="by-name", agents=frozenset({532}), name_matches=("Test*",), max_age=H)
BY_REGEX = Policy(name="by-regex", agents=frozenset({532}), name_regex="^Test", max_age=H)
ELSEWHERE = Policy(name="elsewhere", agents=frozenset({9}), name_matches=("Test*",), max_age=H)
BY_UPDATE = Policy(name="by-update", agents=None, max_age=H, age_from=AgeFrom.UPDATED)
BY_ACTIVITY = Policy(name="by-activity", agents=None, max_age=H, age_from=AgeFrom.LAST_ACTIVITY)
NAME_HOLD = Hold(name="legal", agents=frozenset({532}), name_matches=("LEGAL*",))
REGEX_HOLD = Hold(name="legal-re", agents=None, name_regex="^LEGAL")
OTHER_HOLD = Hold(name="other", agents=frozenset({9}), name_matches=("LEGAL*",))
SESSION_HOLD = Hold(name="session", agents=None, session_ids=frozenset({"s-9"}))

DEPENDS = [
    # (id, policies, holds, facts, what the decision rests on)
    ("creation alone", (BY_CREATION,), (), facts(**OLD), set()),
    ("the deciding policy's glob", (BY_NAME,), (), facts(**OLD), {NAME}),
    ("the deciding policy's regex", (BY_REGEX,), (), facts(**OLD), {NAME}),
    ("a policy before, by name", (BY_NAME, BY_CREATION), (), facts(name="x", **OLD), {NAME}),
    ("a policy after, by name", (BY_CREATION, BY_NAME), (), facts(**OLD), set()),
    ("a policy of another agent", (ELSEWHERE, BY_CREATION), (), facts(**OLD), set()),
    ("a hold by glob", (BY_CREATION,), (NAME_HOLD,), facts(**OLD), {NAME}),
    ("a hold by regex", (BY_CREATION,), (REGEX_HOLD,), facts(**OLD), {NAME}),
    ("a hold of another agent", (BY_CREATION,), (OTHER_HOLD,), facts(**OLD), set()),
    ("a hold by session id", (BY_CREATION,), (SESSION_HOLD,), facts(**OLD), set()),
    ("updated_at", (BY_UPDATE,), (), facts(**OLD), {UPDATED}),
    ("the newest message", (BY_ACTIVITY,), (), facts(**OLD), {ACTIVITY}),
    ("both", (BY_NAME, BY_ACTIVITY), (NAME_HOLD,), facts(name="x", **OLD), {NAME, ACTIVITY}),
    ("a ttl", (BY_NAME,), (), facts(ttl=H, **OLD), set()),
    ("a ttl under a hold by name", (BY_UPDATE,), (NAME_HOLD,), facts(ttl=H, **OLD), {NAME}),
    (
        "due later, rests on them all the same",
        (BY_ACTIVITY,),
        (),
        facts(created_at=NOW),
        {ACTIVITY},
    ),
    ("held: nothing to delete", (BY_NAME,), (NAME_HOLD,), facts(name="LEGAL", **OLD), set()),
    ("no match: nothing to delete", (BY_NAME,), (), facts(agent_id=7, **OLD), set()),
]


@pytest.mark.parametrize(
    ("policies", "holds", "conversation", "expected"),
    [row[1:] for row in DEPENDS],
    ids=[row[0] for row in DEPENDS],
)
def test_a_decision_rests_on_the_facts_its_rules_read(
    policies: tuple[Policy, ...],
    holds: tuple[Hold, ...],
    conversation: ConversationFacts,
    expected: set[Fact],
) -> None:
    rules = Rules(policies, holds)
    decision = rules.decide(conversation, NOW)
    assert rules.depends_on(conversation, decision) == frozenset(expected)


# ---- where the platform's own retention cuts in ------------------------------------------

CONFLICT_RULES = Rules(
    policies=(
        Policy(name="short", agents=frozenset({532}), max_age=36 * H),
        Policy(name="year", agents=None, max_age=400 * D),
        Policy(name="other-agent", agents=frozenset({999}), max_age=400 * D),
    ),
    holds=(Hold(name="legal", agents=frozenset({532})), Hold(name="vip", agents=None)),
)


@pytest.mark.parametrize(
    ("agent", "limit", "expected"),
    [
        (532, None, []),  # the platform keeps conversations: nothing cuts in
        (532, 30 * D, [("year", "policy"), ("legal", "hold"), ("vip", "hold")]),
        (533, 30 * D, [("year", "policy"), ("vip", "hold")]),
        (532, 36 * H, [("year", "policy"), ("legal", "hold"), ("vip", "hold")]),  # equal: fits
        (532, 401 * D, [("legal", "hold"), ("vip", "hold")]),
        (999, 365 * D, [("year", "policy"), ("other-agent", "policy"), ("vip", "hold")]),
    ],
)
def test_platform_conflicts_are_the_longer_policies_and_every_hold_of_the_agent(
    agent: int, limit: timedelta | None, expected: list[tuple[str, str]]
) -> None:
    found = CONFLICT_RULES.platform_conflicts(agent, limit)
    assert [(c.rule, c.kind) for c in found] == expected
    for conflict in found:
        assert f"agent {agent}: the platform deletes conversations after" in conflict.message()
        assert conflict.rule in conflict.message()
