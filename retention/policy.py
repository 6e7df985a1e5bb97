"""Pure policy logic: conversation facts + policies + holds + now -> a Decision.

No I/O happens here and nothing reads a clock: ``now`` is always an argument.

Precedence (DESIGN.md section 4):
1. a hold that matches wins: the conversation is never deleted;
2. a per-conversation TTL (given at create or track time) decides next;
3. otherwise the first policy, in file order, whose every matcher accepts the conversation;
4. no match: never deleted.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import re
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import re2

from retention.models import (
    TTL_RULE,
    AgeFrom,
    ConversationFacts,
    Creator,
    Decision,
    DecisionKind,
    Fact,
    Origin,
)
from retention.timefmt import format_duration

ALL_AGENTS = "*"
BROAD_MAX_AGE = timedelta(days=1)  # a policy on everything that acts this fast needs confirming
# Names a matcher must accept to count as accepting every name: varied in case, script, length
# and punctuation. No empty or blank name: names are never that in practice, and a glob such as
# "?*" or a regex such as "." or "\S" must not slip through on one.
PROBE_NAMES = (
    "a",
    "Z",
    "0",
    "Test chat",
    "QA-12 smoke",
    "LEGAL hold 2026",
    "Ünïcødé ✓ 会话",
    "-_/.()[]*?",
    "x" * 300,
)
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # a bad pattern is reported once, by us, not on stderr too


class RuleError(ValueError):
    """A policy or hold is invalid; names its section, index, name and key."""

    def __init__(self, section: str, index: int, name: str | None, key: str, problem: str) -> None:
        self.section, self.index, self.rule_name = section, index, name
        self.key, self.problem = key, problem
        label = f"{section}[{index}]" + (f" {name!r}" if name else "")
        super().__init__(f"{label}: {key}: {problem}")


def compile_glob(pattern: str) -> re.Pattern[str]:
    """fnmatch rules on the whole name, case-insensitive. Rejects empty and unbalanced globs."""
    if not pattern.strip():
        raise ValueError("empty glob")
    if not _brackets_balanced(pattern):
        raise ValueError(f"invalid glob {pattern!r}: unclosed '['")
    return re.compile(fnmatch.translate(pattern), re.IGNORECASE)


def _brackets_balanced(pattern: str) -> bool:
    i = 0
    while i < len(pattern):
        if pattern[i] == "[":
            j = i + 1
            if j < len(pattern) and pattern[j] == "!":
                j += 1
            if j < len(pattern) and pattern[j] == "]":
                j += 1
            close = pattern.find("]", j)
            if close < 0:
                return False
            i = close
        i += 1
    return True


def compile_regex(pattern: str) -> re2._Regexp[str]:
    """RE2 syntax, matched in time linear in the name: no pattern can freeze the daemon.

    RE2 has no backreferences and no lookaround; such a pattern is refused here, by name.
    """
    try:
        return re2.compile(pattern, _RE2_OPTIONS)
    except re2.error as exc:
        detail = exc.args[0] if exc.args else "not valid"
        problem = detail.decode(errors="replace") if isinstance(detail, bytes) else str(detail)
        raise ValueError(
            f"invalid regex {pattern!r}: {problem} (regexes run on RE2, in linear time: "
            "no backreferences or lookaround)"
        ) from None


@dataclass(frozen=True, kw_only=True)
class Matcher:
    """What policies and holds share: accounts, agents, name globs, name regex. All given must
    accept."""

    agents: frozenset[int] | None = None  # None means every agent ("*")
    name_matches: tuple[str, ...] = ()
    name_regex: str | None = None
    # The accounts (their config names) the rule applies in; None means every account. Facts
    # carry no account: one account's decisions are made with Rules.for_account(its name).
    # Part of the rule's identity (eq, hash) but not of its repr, so rules written before
    # accounts existed keep the fingerprint their stores hold (Rules.fingerprint adds accounts
    # when any rule names some).
    accounts: frozenset[str] | None = field(default=None, repr=False)
    _globs: tuple[re.Pattern[str], ...] = field(init=False, repr=False, compare=False)
    _regex: re2._Regexp[str] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_globs", tuple(compile_glob(g) for g in self.name_matches))
        regex = compile_regex(self.name_regex) if self.name_regex is not None else None
        object.__setattr__(self, "_regex", regex)

    def accepts_agent(self, agent_id: int) -> bool:
        return self.agents is None or agent_id in self.agents

    def accepts_account(self, account: str) -> bool:
        return self.accounts is None or account in self.accounts

    def accepts_name(self, name: str) -> bool:
        if self._globs and not any(g.match(name) for g in self._globs):
            return False
        return self._regex is None or self._regex.search(name) is not None

    @property
    def selects_by_name(self) -> bool:
        return bool(self._globs) or self._regex is not None

    @property
    def accepts_every_name(self) -> bool:
        """No name matcher, or only ones such as ``*``, ``""`` or ``.*`` that let any name by."""
        return all(self.accepts_name(name) for name in PROBE_NAMES)


@dataclass(frozen=True, kw_only=True)
class Policy(Matcher):
    """Delete conversations this policy matches once they are older than ``max_age``."""

    name: str = ""
    max_age: timedelta = timedelta(days=30)
    age_from: AgeFrom = AgeFrom.CREATED
    user_type: Creator | None = None  # None: any creator
    origins: frozenset[Origin] | None = None  # None: any origin
    confirm_broad: bool = False
    dry_run: bool = False

    def matches(self, facts: ConversationFacts) -> bool:
        if not self.accepts_agent(facts.agent_id) or not self.accepts_name(facts.name):
            return False
        # A creator that is not known yet never satisfies a user_type rule: better late than wrong.
        if self.user_type is not None and facts.creator != self.user_type:
            return False
        return self.origins is None or facts.origin in self.origins

    @property
    def is_broad(self) -> bool:
        """Every conversation of every agent, and quickly: the shape of a typo that costs data.

        Judged on what the matchers accept, not on which keys are set: ``name_matches = ["*"]``,
        ``name_regex = ".*"`` or all three origins narrow nothing.
        """
        every_origin = self.origins is None or self.origins >= frozenset(Origin)
        return (
            self.agents is None
            and self.accepts_every_name
            and self.user_type is None
            and every_origin
            and self.max_age <= BROAD_MAX_AGE
        )


@dataclass(frozen=True, kw_only=True)
class Hold(Matcher):
    """Conversations a hold matches are never deleted.

    Within its agents, a hold takes a conversation when *any* of its selectors does: one of its
    session ids, one of its globs, or its regex. A hold with no selector takes every conversation
    of its agents. (Policies narrow, holds widen: both err on the side of keeping.)
    """

    name: str = ""
    session_ids: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "session_ids", frozenset(s.lower() for s in self.session_ids))

    def matches(self, facts: ConversationFacts) -> bool:
        if not self.accepts_agent(facts.agent_id):
            return False
        if not (self.session_ids or self._globs or self._regex is not None):
            return True
        if facts.session_id.lower() in self.session_ids:
            return True
        if any(g.match(facts.name) for g in self._globs):
            return True
        return self._regex is not None and self._regex.search(facts.name) is not None


@dataclass(frozen=True, slots=True)
class PlatformConflict:
    """A rule the platform's own retention cuts short in one agent: a policy whose ``max_age``
    is longer, or a hold (the platform deletes held conversations too)."""

    agent_id: int
    rule: str
    kind: str  # "policy" or "hold"
    platform_max_age: timedelta
    max_age: timedelta | None  # the policy's; None for a hold

    def message(self) -> str:
        limit = format_duration(self.platform_max_age)
        if self.max_age is None:
            return (
                f"agent {self.agent_id}: the platform deletes conversations after {limit}, "
                f"held ones too: hold {self.rule!r} cannot keep them longer"
            )
        return (
            f"agent {self.agent_id}: the platform deletes conversations after {limit}, before "
            f"policy {self.rule!r} (max_age {format_duration(self.max_age)}) would"
        )


@dataclass(frozen=True)
class Rules:
    """The policies and holds in force, in file order: what :func:`decide` weighs."""

    policies: tuple[Policy, ...] = ()
    holds: tuple[Hold, ...] = ()

    def decide(self, facts: ConversationFacts, now: datetime) -> Decision:
        return decide(facts, policies=self.policies, holds=self.holds, now=now)

    def platform_conflicts(
        self, agent_id: int, platform_max_age: timedelta | None
    ) -> list[PlatformConflict]:
        """Where the platform's own retention (None: it keeps conversations) deletes this
        agent's conversations before a rule here would, or despite a hold."""
        if platform_max_age is None:
            return []
        found = [
            PlatformConflict(agent_id, p.name, "policy", platform_max_age, p.max_age)
            for p in self.policies
            if p.accepts_agent(agent_id) and p.max_age > platform_max_age
        ]
        return found + [
            PlatformConflict(agent_id, h.name, "hold", platform_max_age, None)
            for h in self.holds
            if h.accepts_agent(agent_id)
        ]

    def for_account(self, account: str) -> Rules:
        """The policies and holds that apply in ``account``, in the same order."""
        return Rules(
            tuple(p for p in self.policies if p.accepts_account(account)),
            tuple(h for h in self.holds if h.accepts_account(account)),
        )

    def fingerprint(self, *, dry_run: bool) -> str:
        """Changes whenever the rules (or the global dry-run) change: re-evaluate then."""
        parts: tuple[object, ...] = (self.policies, self.holds, dry_run)
        rules: tuple[Matcher, ...] = (*self.policies, *self.holds)
        if any(rule.accounts is not None for rule in rules):
            # Only then: rules without accounts keep the fingerprint they had before them.
            parts += (tuple(None if r.accounts is None else sorted(r.accounts) for r in rules),)
        text = repr(parts)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def depends_on(self, facts: ConversationFacts, decision: Decision) -> frozenset[Fact]:
        """The facts that can change and that this decision to delete rests on.

        The name, when a hold of the agent selects by name (a rename may bring it under the
        hold), or when the deciding policy or any policy before it selects by name (a rename may
        make another policy decide, or none); ``updated_at`` and the newest message, when they
        are the deciding policy's clock. A decision resting on none of these (creation time,
        creator, origin, agent) needs no re-reading.
        """
        if decision.due_at is None:
            return frozenset()  # nothing to delete, nothing to re-read
        needs: set[Fact] = set()
        if any(h.accepts_agent(facts.agent_id) and h.selects_by_name for h in self.holds):
            needs.add(Fact.NAME)
        if decision.kind is DecisionKind.POLICY:
            for policy in self.policies:
                if policy.accepts_agent(facts.agent_id) and policy.selects_by_name:
                    needs.add(Fact.NAME)
                if policy.name == decision.rule:
                    break
            if decision.age_from is AgeFrom.UPDATED:
                needs.add(Fact.UPDATED)
            elif decision.age_from is AgeFrom.LAST_ACTIVITY:
                needs.add(Fact.ACTIVITY)
        return frozenset(needs)

    def agents_in_scope(self) -> frozenset[int] | None:
        """The agents discovery must cover; None means every agent of the account."""
        if any(p.agents is None for p in self.policies):
            return None
        return frozenset(a for p in self.policies for a in (p.agents or ()))


def validate_rules(
    policies: Sequence[Policy],
    holds: Sequence[Hold] = (),
    *,
    accounts: Collection[str] | None = None,
) -> None:
    """Check what a single rule cannot check about itself. Raises RuleError on the first problem.

    ``accounts``: the accounts configured, in file order; every account a rule names must be one
    of them (None: not checked).
    """
    _check_names("policies", [p.name for p in policies])
    _check_names("holds", [h.name for h in holds])
    _check_accounts("policies", policies, accounts)
    _check_accounts("holds", holds, accounts)
    for index, policy in enumerate(policies):
        if policy.name == TTL_RULE:
            raise RuleError("policies", index, policy.name, "name", f"{TTL_RULE!r} is reserved")
        if policy.max_age <= timedelta(0):
            raise RuleError("policies", index, policy.name, "max_age", "must be greater than zero")
        if policy.is_broad and not policy.confirm_broad:
            raise RuleError(
                "policies",
                index,
                policy.name,
                "confirm_broad",
                f"applies to every conversation of every agent (any name, creator and origin) "
                f"with max_age {format_duration(policy.max_age)} (1 day or less); narrow it or "
                "set confirm_broad = true",
            )


def _check_accounts(
    section: str, rules: Sequence[Policy | Hold], known: Collection[str] | None
) -> None:
    for index, rule in enumerate(rules):
        if rule.accounts is None:
            continue
        if not rule.accounts:
            raise RuleError(
                section,
                index,
                rule.name,
                "accounts",
                "an empty list matches no account; leave accounts out for every account",
            )
        if known is None:
            continue
        unknown = sorted(rule.accounts.difference(known))
        if unknown:
            raise RuleError(
                section,
                index,
                rule.name,
                "accounts",
                f"unknown account {unknown[0]!r} (accounts: {', '.join(known)})",
            )


def _check_names(section: str, names: Iterable[str]) -> None:
    """Names are unique without regard to case: the audit trail must say which rule acted."""
    seen: dict[str, tuple[int, str]] = {}
    for index, name in enumerate(names):
        if not name.strip():
            raise RuleError(section, index, None, "name", "must not be empty")
        key = name.casefold()
        if key in seen:
            first, original = seen[key]
            raise RuleError(
                section, index, name, "name", f"duplicate of {section}[{first}] {original!r}"
            )
        seen[key] = (index, name)


def decide(
    facts: ConversationFacts,
    *,
    policies: Sequence[Policy],
    holds: Sequence[Hold],
    now: datetime,
) -> Decision:
    """Decide whether and when a conversation is to be deleted, and say why.

    The decision holds absolute times only: the same facts and rules give the same decision at
    any ``now`` (the reason, too; :func:`explain` adds how soon when it is shown).
    """
    for hold in holds:
        if hold.matches(facts):
            return Decision(DecisionKind.HELD, hold.name, None, f"held by {hold.name!r}")
    if facts.ttl is not None:
        start = facts.ttl_from or facts.created_at
        due = start + facts.ttl
        why = f"own TTL {format_duration(facts.ttl)} from {_stamp(start)}"
        return Decision(DecisionKind.TTL, TTL_RULE, due, why)
    for policy in policies:
        if policy.matches(facts):
            return _policy_decision(policy, facts)
    return Decision(DecisionKind.NO_MATCH, None, None, "no policy matches: kept")


def _policy_decision(policy: Policy, facts: ConversationFacts) -> Decision:
    provisional = False
    if policy.age_from is AgeFrom.CREATED:
        start, clock = facts.created_at, "created"
    elif policy.age_from is AgeFrom.UPDATED:
        start, clock = facts.updated_at, "updated"
    elif facts.last_activity_at is not None:
        start, clock = max(facts.last_activity_at, facts.created_at), "last activity"
    else:
        # Newest message unknown: activity is no earlier than creation (or a rename), so this is
        # a lower bound on the due time. The engine confirms it before deleting anything.
        start, clock = max(facts.created_at, facts.updated_at), "created/updated (unconfirmed)"
        provisional = True
    due = start + policy.max_age
    why = _basis(policy.name, policy.max_age, clock)
    return Decision(
        DecisionKind.POLICY,
        policy.name,
        due,
        why,
        dry_run=policy.dry_run,
        provisional=provisional,
        age_from=policy.age_from,
    )


@functools.lru_cache(maxsize=1024)
def _basis(name: str, max_age: timedelta, clock: str) -> str:
    """A policy decision's reason: the same for every conversation it decides (a rules change
    decides millions again)."""
    return f"policy {name!r}: max_age {format_duration(max_age)} from {clock}"


def explain(reason: str | None, due_at: datetime | None, now: datetime) -> str:
    """The human reason for a decision, as of ``now``: what was decided, and when it is due.

    A decision's own ``reason`` says what decided and by which clock, never how long ago or
    how soon: it stays the same while the decision does, so re-evaluating a store rewrites only
    the rows whose decision changed. The time is put in here, when the reason is shown.
    """
    text = reason or ""
    if due_at is None:
        return text
    return f"{text}; {_when(due_at, now)}" if text else _when(due_at, now)


def _when(due: datetime, now: datetime) -> str:
    if due <= now:
        return f"due since {format_duration(now - due)}"
    return f"due in {format_duration(due - now)}"


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%SZ")
