"""Plain dataclasses shared by every module: what the API tells us and what policies decide."""

from __future__ import annotations

import enum
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta

TTL_RULE = "ttl"  # the rule name recorded when a per-conversation TTL decides


# The account of a config without [[accounts]] (its [api] section), and of every row stored
# before there were accounts (migration 0010).
DEFAULT_ACCOUNT = "default"


class Origin(enum.StrEnum):
    """How `retention` came to know a conversation."""

    CREATED = "created"  # the daemon created it through the API
    REGISTERED = "registered"  # somebody told the daemon about it (track)
    DISCOVERED = "discovered"  # found by listing the agent's conversations


class Creator(enum.StrEnum):
    """Who opened a conversation, as the API's ``userFilter`` names it."""

    ANONYMOUS = "anonymous"
    TEAM_MEMBER = "team_member"


class AgeFrom(enum.StrEnum):
    """Which clock a policy's ``max_age`` runs on."""

    CREATED = "created"
    UPDATED = "updated"
    LAST_ACTIVITY = "last_activity"


@dataclass(frozen=True, slots=True)
class Agent:
    """An agent (a "project" in the API)."""

    id: int
    name: str


@dataclass(frozen=True, slots=True)
class AgentSettings:
    """The part of an agent's settings that matters here: the platform's own retention."""

    agent_id: int
    retention_period: str | None  # "custom" | "year" | "never", or None when not reported
    retention_days: int | None

    @property
    def platform_max_age(self) -> timedelta | None:
        """How long the platform itself keeps conversations, or None for never/unknown."""
        if self.retention_period == "year":
            return timedelta(days=365)
        if self.retention_period == "custom" and self.retention_days:
            return timedelta(days=self.retention_days)
        return None


@dataclass(frozen=True, slots=True)
class Conversation:
    """A conversation as the API lists it."""

    id: int
    session_id: str
    agent_id: int
    name: str
    created_by: int | None
    created_at: datetime
    updated_at: datetime

    @property
    def creator(self) -> Creator:
        return Creator.ANONYMOUS if self.created_by is None else Creator.TEAM_MEMBER


@dataclass(frozen=True, slots=True)
class Listing:
    """One walk over an agent's conversation list, kept whole (small uses; discovery streams
    the walk and keeps only its :class:`retention.paging.WalkTally`)."""

    agent_id: int
    conversations: tuple[Conversation, ...]
    pages: int
    total: int  # the paginator's total on the last page read
    # True only for a walk to the last page during which the total never shrank and which saw
    # as many distinct conversations as the total: then nothing was skipped, and what it did
    # not see is gone. Deletions by others during a walk shift pages and cause silent skips.
    complete: bool


@dataclass(frozen=True, slots=True)
class ConversationPage:
    """One page of an agent's conversation list, with the paginator's own figures."""

    agent_id: int
    page: int
    last_page: int
    per_page: int
    total: int
    items: tuple[Conversation, ...]


class DeleteOutcome(enum.StrEnum):
    """What a DELETE achieved."""

    DELETED = "deleted"
    # 404 on a retry after an attempt that failed once the server may have acted (5xx, reset,
    # timeout): our own DELETE took, and the retry confirms it.
    DELETED_CONFIRMED_BY_404 = "deleted_confirmed_by_404"
    # Not sent: checked again once the request's turn came (after the budget, a 429 pause, a
    # retry's wait), the decision no longer held, so the DELETE was withdrawn.
    WITHDRAWN = "withdrawn"
    ALREADY_GONE = "already_gone"  # 404 at once: somebody (maybe us, before a crash) deleted it


@dataclass(frozen=True, slots=True)
class ConversationFacts:
    """Everything a policy may look at for one conversation. No message content, ever."""

    agent_id: int
    session_id: str
    name: str
    created_at: datetime
    updated_at: datetime
    origin: Origin = Origin.DISCOVERED
    creator: Creator | None = None  # None: not known (e.g. registered but not yet listed)
    last_activity_at: datetime | None = None  # None: messages not fetched yet
    ttl: timedelta | None = None  # a per-conversation TTL given at create or track time
    ttl_from: datetime | None = None  # when that TTL started to run


class Fact(enum.StrEnum):
    """A fact about a conversation that can change after it was read, so a decision resting on
    it must be re-read before it deletes anything. (Session id, agent, creator and creation time
    never change.)"""

    NAME = "name"  # a rename
    UPDATED = "updated"  # updated_at: a rename bumps it
    ACTIVITY = "activity"  # the newest message


class DecisionKind(enum.StrEnum):
    HELD = "held"
    TTL = "ttl"
    POLICY = "policy"
    NO_MATCH = "no_match"


@dataclass(frozen=True, slots=True)
class Decision:
    """The verdict on one conversation: never (``due_at`` None) or due at a time, and why."""

    kind: DecisionKind
    rule: str | None  # the hold's or policy's name, "ttl", or None when nothing matched
    due_at: datetime | None
    reason: str
    dry_run: bool = False  # the deciding policy says dry_run = true
    # True when the policy runs on last activity but the newest message is not known yet:
    # due_at is then a lower bound that must be confirmed before anything is deleted.
    provisional: bool = False
    age_from: AgeFrom | None = None  # the deciding policy's clock (None: not a policy)

    def is_due(self, now: datetime) -> bool:
        return self.due_at is not None and self.due_at <= now


class State(enum.StrEnum):
    """Where a tracked conversation stands."""

    ACTIVE = "active"  # known, not held; due_at says when (None: never)
    HELD = "held"  # a hold matches: never deleted while it does
    DELETING = "deleting"  # a DELETE was decided and may have been sent: resolve it
    DELETED = "deleted"  # we deleted it
    GONE = "gone"  # it vanished remotely (deleted elsewhere, or a 404 on our DELETE)


TERMINAL_STATES = frozenset({State.DELETED, State.GONE})
# The states of a conversation still tracked (not finished), as stored.
LIVE_STATES = (State.ACTIVE.value, State.HELD.value, State.DELETING.value)


class AuditOutcome(enum.StrEnum):
    DELETED = "deleted"
    ALREADY_GONE = "already_gone"
    FAILED = "failed"
    DRY_RUN = "dry_run"  # would have been deleted


def creator_of(origin: Origin, remote_id: int | None, created_by: int | None) -> Creator | None:
    """Who opened a tracked conversation; None while it was never listed (not known)."""
    if origin is not Origin.DISCOVERED and remote_id is None:
        return None
    return Creator.ANONYMOUS if created_by is None else Creator.TEAM_MEMBER


@dataclass(frozen=True, slots=True)
class TrackedConversation:
    """A conversation as the store knows it: facts, the last decision, and its state."""

    agent_id: int
    session_id: str
    remote_id: int | None
    name: str
    created_by: int | None
    created_at: datetime
    updated_at: datetime
    origin: Origin
    state: State
    last_activity_at: datetime | None = None
    activity_checked_at: datetime | None = None
    ttl: timedelta | None = None
    ttl_from: datetime | None = None
    due_at: datetime | None = None
    rule: str | None = None
    reason: str | None = None
    provisional: bool = False
    # What the deciding policy said when it decided, kept so nothing looks it up by name again.
    dry_run: bool = False  # the deciding policy says dry_run = true
    age_from: AgeFrom | None = None  # the deciding policy's clock (None: not a policy)
    attempts: int = 0
    last_error: str | None = None
    dry_run_noted_at: datetime | None = None
    # A policy change made this conversation due (sooner): it waits until then before deletion.
    grace_until: datetime | None = None
    retry_at: datetime | None = None  # a DELETE failed: the next attempt waits until then
    first_seen: datetime | None = None
    finished_at: datetime | None = None
    # When the name and updated_at were last read from the API (a listing or a messages call).
    facts_at: datetime | None = None
    # When an operator approved deleting it past the mass-deletion breaker (approve, apply).
    approved_at: datetime | None = None

    @property
    def creator(self) -> Creator | None:
        return creator_of(self.origin, self.remote_id, self.created_by)

    def facts(self) -> ConversationFacts:
        return ConversationFacts(
            agent_id=self.agent_id,
            session_id=self.session_id,
            name=self.name,
            created_at=self.created_at,
            updated_at=self.updated_at,
            origin=self.origin,
            creator=self.creator,
            last_activity_at=self.last_activity_at,
            ttl=self.ttl,
            ttl_from=self.ttl_from,
        )


@dataclass(frozen=True, slots=True)
class PlanItem:
    """One conversation that is due (``plan`` and the admin API show these)."""

    agent_id: int
    session_id: str
    name: str
    rule: str | None
    due_at: datetime
    age: timedelta  # on the deciding rule's clock (``age_from``), as the due time is
    reason: str
    dry_run: bool
    state: State
    grace_until: datetime | None = None  # waiting out a policy change's grace until then
    retry_at: datetime | None = None  # a DELETE failed; the next attempt waits until then
    unconfirmed: bool = False  # rests on facts not read again lately (a name, a message)
    held_by_breaker: bool = False  # the mass-deletion breaker stops it until approved
    account: str = DEFAULT_ACCOUNT  # the CustomGPT account it belongs to
    # The clock ``age`` runs on: an AgeFrom value, or "ttl" (its own TTL, from when it was set).
    age_from: str = AgeFrom.CREATED.value
    basis: str = ""  # what decided, without the time: "policy 'qa': max_age 1h from created"


@dataclass(frozen=True, slots=True)
class AgentStatus:
    """``retention status`` figures for one agent."""

    agent_id: int
    tracked: int
    due: int
    overdue: int
    held: int
    deleted_24h: int
    grace: int = 0  # due, but waiting out a policy change's grace


@dataclass(frozen=True, slots=True)
class SweepRecord:
    """One sweep as the store's sweep log keeps it (``retention status`` shows the last few)."""

    id: int
    kind: str
    dry_run: bool
    started_at: datetime
    finished_at: datetime | None
    ok: bool | None  # None: still running, or killed before it could say
    listed: int
    new: int
    due: int
    deleted: int
    already_gone: int
    failed: int
    api_calls: int
    calls_by_kind: dict[str, int]
    error: str | None


@dataclass(frozen=True, slots=True)
class Lease:
    """Who may change a store's conversations of one scope (an account), until when."""

    scope: str
    holder: str
    token: int  # the fencing token: grows with every new holder
    acquired_at: datetime
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class AgentRecord:
    """What the store keeps about an agent between sweeps."""

    id: int
    name: str
    sync_cursor: int | None = None  # the highest conversation id seen
    last_full_sync_at: datetime | None = None
    platform_retention_period: str | None = None
    platform_retention_days: int | None = None
    pages: int | None = None  # pages the last full walk read: what re-reading them all costs

    def platform_retention(self) -> dict[str, str | int | None] | None:
        """The platform's own retention setting as documents show it, or None when unknown."""
        if self.platform_retention_period is None:
            return None
        return {"period": self.platform_retention_period, "days": self.platform_retention_days}

    @property
    def platform_max_age(self) -> timedelta | None:
        """How long the platform itself keeps this agent's conversations (None: for ever, or
        not known)."""
        return AgentSettings(
            self.id, self.platform_retention_period, self.platform_retention_days
        ).platform_max_age


@dataclass(frozen=True, slots=True)
class AuditRecord:
    at: datetime
    agent_id: int
    session_id: str
    name: str
    rule: str | None
    age: timedelta
    outcome: AuditOutcome
    detail: str | None = None


@dataclass(slots=True)
class SweepReport:
    """What one sweep did, counted. Logged as one line at the end of every sweep."""

    kind: str  # "once", "discover", "delete" or "plan"
    started_at: datetime
    account: str = DEFAULT_ACCOUNT
    dry_run: bool = False
    finished_at: datetime | None = None
    agents: int = 0
    pages: int = 0
    listed: int = 0
    new: int = 0
    gone: int = 0
    due: int = 0
    deleted: int = 0
    already_gone: int = 0
    failed: int = 0
    unverified: int = 0  # recorded deleted (DELETE 200), yet a later listing still showed it
    would_delete: int = 0
    postponed: int = 0  # facts read again (a message, a rename) made it not due after all
    refreshed: int = 0  # due conversations whose facts were read again (one call each)
    refresh_walks: int = 0  # agents re-read whole because that was cheaper
    held_back: str | None = None  # why nothing was deleted (the clock), or None
    breaker: list[str] = field(default_factory=list)  # where the breaker stopped deletion, why
    breaker_scopes: list[str] = field(default_factory=list)  # "account" or agent ids
    api_calls: dict[str, int] = field(default_factory=dict)
    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)  # (outcome, rule)
    delays: list[float] = field(default_factory=list)  # seconds from due to deleted, each
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def summary(self) -> str:
        calls = sum(self.api_calls.values())
        kinds = ",".join(f"{k}={v}" for k, v in sorted(self.api_calls.items()))
        seconds = (self.finished_at - self.started_at).total_seconds() if self.finished_at else 0.0
        parts = [
            f"sweep {self.kind}{' (dry-run)' if self.dry_run else ''}",
            f"{'ok' if self.ok else 'FAILED'} in {seconds:.1f}s:",
            f"account={self.account} agents={self.agents} pages={self.pages}",
            f"listed={self.listed} new={self.new}",
            f"gone={self.gone} due={self.due} deleted={self.deleted}",
            f"already_gone={self.already_gone} failed={self.failed}",
            f"would_delete={self.would_delete} postponed={self.postponed}",
            f"refreshed={self.refreshed} refresh_walks={self.refresh_walks}",
            f"api_calls={calls}" + (f" ({kinds})" if kinds else ""),
        ]
        if self.unverified:
            parts.append(f"unverified={self.unverified}")
        if self.held_back:
            parts.append(f"held_back={self.held_back!r}")
        if self.breaker:
            parts.append(f"breaker={'; '.join(self.breaker)!r}")
        if self.error:
            parts.append(f"error={self.error}")
        return " ".join(parts)
