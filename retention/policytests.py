"""Policy tests: sample conversations and what the rules must do with them, checked against the
pure policy code (``retention test``, and ``retention check`` when the file is there).

The file sits beside the config and takes its name: ``retention.toml`` is tested by
``retention.tests.toml``. Times are given as a duration before ``at`` (the moment the cases are
judged at: the file's ``at``, else now) or as a timestamp, so a test means the same on any
day::

    at = "2026-11-26T12:00:00Z"

    [[cases]]
    name = "a test chat goes an hour after it was opened"
    agent = 532
    conversation = "Test checkout flow"
    created = "2h"
    expect = "deleted by 'qa-chats' after 1h"

Expectations: ``deleted by 'RULE' after DURATION`` (the policy decides, with that max_age;
``... from created|updated|last message`` also names its clock),
``deleted by own TTL after DURATION``, ``held by 'HOLD'``, ``kept: no policy``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from retention.errors import ConfigError
from retention.models import (
    DEFAULT_ACCOUNT,
    AgeFrom,
    ConversationFacts,
    Creator,
    DecisionKind,
    Origin,
)
from retention.policy import Rules
from retention.timefmt import format_duration, parse_duration, to_moment
from retention.trace import Verdict, trace

_EXPECT = (
    (
        re.compile(
            r"deleted by '(?P<rule>[^']+)' after (?P<after>\S+)"
            r"(?: from (?P<clock>created|updated|last message))?"
        ),
        DecisionKind.POLICY,
    ),
    (re.compile(r"deleted by own TTL after (?P<after>\S+)"), DecisionKind.TTL),
    (re.compile(r"held by '(?P<rule>[^']+)'"), DecisionKind.HELD),
    (re.compile(r"kept: no policy"), DecisionKind.NO_MATCH),
)
EXPECT_HELP = (
    'write "deleted by \'RULE\' after 36h" (optionally "... from created|updated|last '
    'message"), "deleted by own TTL after 2h", '
    '"held by \'HOLD\'" or "kept: no policy"'
)
KEYS = {
    "name", "agent", "account", "conversation", "session_id", "creator", "origin", "created",
    "updated", "last_message", "ttl", "expect",
}  # fmt: skip


CLOCKS = {
    "created": AgeFrom.CREATED,
    "updated": AgeFrom.UPDATED,
    "last message": AgeFrom.LAST_ACTIVITY,
}


@dataclass(frozen=True, slots=True)
class Expectation:
    kind: DecisionKind
    rule: str | None = None
    after: timedelta | None = None
    text: str = ""
    clock: AgeFrom | None = None  # the policy's clock, when the expectation names it


@dataclass(frozen=True, slots=True)
class Case:
    index: int
    name: str
    account: str
    facts: ConversationFacts
    at: datetime
    expect: Expectation

    @property
    def label(self) -> str:
        return f"cases[{self.index}] {self.name!r}"


def tests_path_for(config: str) -> str:
    """``retention.toml`` -> ``retention.tests.toml`` (beside it)."""
    stem = config[:-5] if config.endswith(".toml") else config
    return f"{stem}.tests.toml"


def parse(doc: Mapping[str, Any], *, source: str, now: datetime) -> list[Case]:
    """The cases of a tests file (parsed TOML). Raises ConfigError naming the case and key."""
    unknown = sorted(set(doc) - {"at", "cases"})
    if unknown:
        raise ConfigError("unknown key (use 'at' and [[cases]])", source=source, key=unknown[0])
    at = _moment(doc.get("at"), now, source, "at") if "at" in doc else now
    cases = doc.get("cases")
    if not isinstance(cases, list) or not cases:
        raise ConfigError("no [[cases]]: add at least one", source=source, key="cases")
    return [_case(i, raw, at, source) for i, raw in enumerate(cases)]


def _case(index: int, raw: Any, at: datetime, source: str) -> Case:
    if not isinstance(raw, dict):
        raise ConfigError("must be a table", source=source, key=f"cases[{index}]")
    name = str(raw.get("name") or f"case {index}")
    where = f"cases[{index}] {name!r}"

    def fail(key: str, problem: str) -> ConfigError:
        return ConfigError(problem, source=source, key=f"{where}: {key}")

    for key in sorted(set(raw) - KEYS):
        raise fail(key, f"unknown key (known: {', '.join(sorted(KEYS))})")
    agent = raw.get("agent")
    if not isinstance(agent, int) or isinstance(agent, bool) or agent < 1:
        raise fail("agent", "required: the agent id, a positive whole number")
    if "created" not in raw:
        raise fail("created", "required: how long before 'at' it was opened (e.g. '3d')")
    created = _moment(raw["created"], at, source, f"{where}: created")
    updated = _maybe(raw.get("updated"), at, source, f"{where}: updated") or created
    last = _maybe(raw.get("last_message"), at, source, f"{where}: last_message")
    ttl = None
    if raw.get("ttl") is not None:
        ttl = _duration(raw["ttl"], fail, "ttl")
    facts = ConversationFacts(
        agent_id=agent,
        session_id=str(raw.get("session_id") or f"test-case-{index}"),
        name=str(raw.get("conversation", "")),
        created_at=created,
        updated_at=max(updated, created),
        origin=_choice(raw.get("origin", "discovered"), Origin, fail, "origin"),
        creator=None
        if raw.get("creator") is None
        else _choice(raw["creator"], Creator, fail, "creator"),
        last_activity_at=last,
        ttl=ttl,
        ttl_from=created if ttl is not None else None,
    )
    expect = _expectation(raw.get("expect"), fail)
    account = str(raw.get("account") or DEFAULT_ACCOUNT)
    return Case(index, name, account, facts, at, expect)


def _expectation(text: Any, fail: Any) -> Expectation:
    if not isinstance(text, str):
        raise fail("expect", f"required: {EXPECT_HELP}")
    for pattern, kind in _EXPECT:
        match = pattern.fullmatch(text.strip())
        if match is None:
            continue
        groups = match.groupdict()
        after = _duration(groups["after"], fail, "expect") if "after" in groups else None
        clock = CLOCKS[groups["clock"]] if groups.get("clock") else None
        return Expectation(kind, groups.get("rule"), after, text.strip(), clock)
    raise fail("expect", f"cannot read {text!r}: {EXPECT_HELP}")


def _duration(value: Any, fail: Any, key: str) -> timedelta:
    try:
        return parse_duration(str(value))
    except ValueError as exc:
        raise fail(key, str(exc)) from None


def _choice(value: Any, enum: Any, fail: Any, key: str) -> Any:
    try:
        return enum(str(value))
    except ValueError:
        choices = ", ".join(e.value for e in enum)
        raise fail(key, f"{value!r} is not one of {choices}") from None


def _maybe(value: Any, at: datetime, source: str, key: str) -> datetime | None:
    return None if value is None else _moment(value, at, source, key)


def _moment(value: Any, at: datetime, source: str, key: str) -> datetime:
    """A duration before ``at`` (``3d``), or a timestamp (TOML's own, or text)."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    try:
        return to_moment(str(value), at)
    except ValueError as exc:
        raise ConfigError(str(exc), source=source, key=key) from None


@dataclass(frozen=True, slots=True)
class Failure:
    case: Case
    got: str
    decided_by: str  # the deciding step of the trace, or why nothing decided

    def message(self) -> str:
        return (
            f"{self.case.label}: expected {self.case.expect.text}, got {self.got} "
            f"({self.decided_by})"
        )


def run(case: Case, rules: Rules) -> Failure | None:
    """Check one case against ``rules`` (the account's share of them)."""
    account_rules = rules.for_account(case.account)
    result = trace(case.facts, account_rules, case.at)
    decision = result.decision
    got = _as_expectation(decision.kind, decision.rule, case, account_rules)
    want = case.expect
    same = (got.kind, got.rule, got.after) == (want.kind, want.rule, want.after)
    if same and (want.clock is None or want.clock == got.clock):
        return None
    if want.clock is not None and got.clock is not None:
        named = next(k for k, v in CLOCKS.items() if v == got.clock)
        got = Expectation(got.kind, got.rule, got.after, f"{got.text} from {named}", got.clock)
    decisive = [s.line() for s in result.steps if s.verdict is Verdict.DECIDED]
    why = decisive[0] if decisive else "no hold, TTL or policy took it"
    return Failure(case, got.text, why)


def _as_expectation(kind: DecisionKind, rule: str | None, case: Case, rules: Rules) -> Expectation:
    if kind is DecisionKind.HELD:
        return Expectation(kind, rule, None, f"held by {rule!r}")
    if kind is DecisionKind.TTL:
        ttl = case.facts.ttl
        shown = format_duration(ttl) if ttl else "?"
        return Expectation(kind, None, ttl, f"deleted by own TTL after {shown}")
    if kind is DecisionKind.POLICY:
        policy = next(p for p in rules.policies if p.name == rule)
        after = format_duration(policy.max_age)
        text = f"deleted by {rule!r} after {after}"
        return Expectation(kind, rule, policy.max_age, text, policy.age_from)
    return Expectation(kind, None, None, "kept: no policy")
