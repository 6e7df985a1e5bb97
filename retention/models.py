"""Plain dataclasses shared by every module: what the API tells us and what policies decide."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta


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
    ALREADY_GONE = "already_gone"  # 404: somebody (maybe us, before a crash) deleted it


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

    def is_due(self, now: datetime) -> bool:
        return self.due_at is not None and self.due_at <= now
