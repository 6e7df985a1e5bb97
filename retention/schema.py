"""The store's tables (SQLAlchemy Core). Alembic migrations create them; this mirrors them.

A test compares the migrated database with this metadata, so the two cannot drift apart.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Dialect,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.types import TypeDecorator

from retention.models import (
    DEFAULT_ACCOUNT,
    AgeFrom,
    AgentRecord,
    AuditOutcome,
    AuditRecord,
    Lease,
    Origin,
    State,
    SweepRecord,
    TrackedConversation,
)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, even on SQLite (which stores text)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        utc = _as_utc(value)
        return None if utc is None else utc.replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if not isinstance(value, datetime):
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    # On SQLite the text is SQLAlchemy's "YYYY-MM-DD HH:MM:SS.ffffff", which Python's own C
    # parser and formatter read and write byte for byte: a rules change reads millions of
    # these, and SQLAlchemy's regex-based processing was a third of its time.

    def bind_processor(self, dialect: Dialect) -> Callable[[Any], Any] | None:
        if dialect.name != "sqlite":
            return super().bind_processor(dialect)

        def to_text(value: datetime | None) -> str | None:
            utc = _as_utc(value)
            return None if utc is None else utc.isoformat(" ", "microseconds")[:-6]  # no +00:00

        return to_text

    def result_processor(self, dialect: Dialect, coltype: object) -> Callable[[Any], Any] | None:
        if dialect.name != "sqlite":
            return super().result_processor(dialect, coltype)

        def from_text(value: str | None) -> datetime | None:
            return None if value is None else datetime.fromisoformat(value + "+00:00")

        return from_text


def _as_utc(value: datetime | None) -> datetime | None:
    """An aware datetime in UTC; a naive one is refused (its zone would be a guess)."""
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError("naive datetime given to the store; use an aware UTC datetime")
    return value if value.tzinfo is UTC else value.astimezone(UTC)


metadata = MetaData()
# The migration these tables mirror: the head of migrations/versions (a test checks it), known
# without parsing the migration scripts, which read-only commands and /readyz would pay for.
REVISION = "0012"

# Every row names its CustomGPT account (migration 0010): agent ids are unique only within one.
# The server default is the account of a config without [[accounts]]; the store always names it.


def _account(*, key: bool = False) -> Column[str]:
    return Column(
        "account", String(64), nullable=False, primary_key=key, server_default=DEFAULT_ACCOUNT
    )


agents = Table(
    "agents",
    metadata,
    _account(key=True),
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("name", String(255), nullable=False, server_default=""),
    Column("sync_cursor", Integer, nullable=True),
    Column("last_full_sync_at", UTCDateTime, nullable=True),
    Column("platform_retention_period", String(16), nullable=True),
    Column("platform_retention_days", Integer, nullable=True),
    Column("pages", Integer, nullable=True),
    Column("first_seen", UTCDateTime, nullable=False),
    Column("last_seen", UTCDateTime, nullable=False),
)

conversations = Table(
    "conversations",
    metadata,
    Column("id", Integer, primary_key=True),
    _account(),
    Column("agent_id", Integer, nullable=False),
    Column("session_id", String(64), nullable=False),
    Column("remote_id", Integer, nullable=True),
    Column("name", String(512), nullable=False, server_default=""),
    Column("created_by", Integer, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("last_activity_at", UTCDateTime, nullable=True),
    Column("activity_checked_at", UTCDateTime, nullable=True),
    Column("origin", String(16), nullable=False),
    Column("ttl_seconds", Float, nullable=True),
    Column("ttl_from", UTCDateTime, nullable=True),
    Column("due_at", UTCDateTime, nullable=True),
    Column("rule", String(255), nullable=True),
    Column("reason", Text, nullable=True),
    Column("provisional", Boolean, nullable=False, server_default="0"),
    Column("dry_run", Boolean, nullable=False, server_default="0"),
    Column("age_from", String(16), nullable=True),
    Column("state", String(16), nullable=False, server_default="active"),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("last_error", Text, nullable=True),
    Column("dry_run_noted_at", UTCDateTime, nullable=True),
    Column("grace_until", UTCDateTime, nullable=True),
    Column("retry_at", UTCDateTime, nullable=True),
    Column("first_seen", UTCDateTime, nullable=False),
    Column("last_seen", UTCDateTime, nullable=False),
    Column("finished_at", UTCDateTime, nullable=True),
    Column("facts_at", UTCDateTime, nullable=True),
    Column("approved_at", UTCDateTime, nullable=True),
    UniqueConstraint(
        "account", "agent_id", "session_id", name="uq_conversations_account_agent_session"
    ),
    # The due set is read through this index: its cost follows the number due, not tracked.
    Index("ix_conversations_state_due", "state", "due_at"),
    Index("ix_conversations_account_agent_state", "account", "agent_id", "state"),
    # Deleted in the last day (status, metrics): its cost follows recent deletions.
    Index("ix_conversations_state_finished", "state", "finished_at"),
)

# Per agent, state and origin (requested: created or registered through retention), how many
# conversations: kept exact by triggers (migration 0008), so the figures of a scrape or a status
# cost a few rows, not a count of every tracked conversation.
conversation_counts = Table(
    "conversation_counts",
    metadata,
    Column("account", String(64), primary_key=True),
    Column("agent_id", Integer, primary_key=True, autoincrement=False),
    Column("state", String(16), primary_key=True),
    Column("requested", Boolean, primary_key=True),
    Column("n", Integer, nullable=False),
)

audit = Table(
    "audit",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("at", UTCDateTime, nullable=False),
    _account(),
    Column("agent_id", Integer, nullable=False),
    Column("session_id", String(64), nullable=False),
    Column("name", String(512), nullable=False, server_default=""),
    Column("rule", String(255), nullable=True),
    Column("age_seconds", Float, nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("detail", Text, nullable=True),
    Column("sweep_id", Integer, nullable=True),
    # The hash chain (migration 0012; retention.chain): per account, 1, 2, 3, ...
    Column("seq", Integer, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    Index("ix_audit_conversation", "account", "agent_id", "session_id"),
    Index("ix_audit_at", "at"),
    Index("ux_audit_chain", "account", "seq", unique=True),
)

# Each account's chain head: the latest row's sequence number and hash. Appending updates it in
# the same transaction (its row lock orders concurrent writers); `audit verify` compares the
# chain's last row with it, which shows rows cut off the end.
audit_heads = Table(
    "audit_heads",
    metadata,
    Column("account", String(64), primary_key=True),
    Column("seq", Integer, nullable=False),
    Column("hash", String(64), nullable=False),
)

sweeps = Table(
    "sweeps",
    metadata,
    Column("id", Integer, primary_key=True),
    _account(),
    Column("kind", String(16), nullable=False),
    Column("dry_run", Boolean, nullable=False, server_default="0"),
    Column("started_at", UTCDateTime, nullable=False),
    Column("finished_at", UTCDateTime, nullable=True),
    Column("ok", Boolean, nullable=True),
    Column("listed", Integer, nullable=False, server_default="0"),
    Column("new", Integer, nullable=False, server_default="0"),
    Column("due", Integer, nullable=False, server_default="0"),
    Column("deleted", Integer, nullable=False, server_default="0"),
    Column("already_gone", Integer, nullable=False, server_default="0"),
    Column("failed", Integer, nullable=False, server_default="0"),
    Column("api_calls", Integer, nullable=False, server_default="0"),
    Column("calls_by_kind", Text, nullable=True),
    Column("error", Text, nullable=True),
    Index("ix_sweeps_started", "started_at"),
)

# One writer per store and account: the holder, a fencing token that only grows, an expiry.
leases = Table(
    "leases",
    metadata,
    Column("scope", String(128), primary_key=True),
    Column("holder", String(255), nullable=False),
    Column("token", Integer, nullable=False),
    Column("acquired_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
)

# Daemons sharing the store: a replica is live while its heartbeat is younger than the lease
# time; the live ones split the accounts between them (migration 0011).
replicas = Table(
    "replicas",
    metadata,
    Column("id", String(255), primary_key=True),
    Column("started_at", UTCDateTime, nullable=False),
    Column("beat_at", UTCDateTime, nullable=False),
)

meta = Table(
    "meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)


# ---- rows <-> models ------------------------------------------------------------------------


def conversation_row(c: TrackedConversation) -> dict[str, Any]:
    return {
        "agent_id": c.agent_id,
        "session_id": c.session_id,
        "remote_id": c.remote_id,
        "name": c.name,
        "created_by": c.created_by,
        "created_at": c.created_at,
        "updated_at": c.updated_at,
        "last_activity_at": c.last_activity_at,
        "activity_checked_at": c.activity_checked_at,
        "origin": c.origin.value,
        "ttl_seconds": c.ttl.total_seconds() if c.ttl is not None else None,
        "ttl_from": c.ttl_from,
        "due_at": c.due_at,
        "rule": c.rule,
        "reason": c.reason,
        "provisional": c.provisional,
        "dry_run": c.dry_run,
        "age_from": c.age_from.value if c.age_from is not None else None,
        "state": c.state.value,
        "attempts": c.attempts,
        "last_error": c.last_error,
        "dry_run_noted_at": c.dry_run_noted_at,
        "grace_until": c.grace_until,
        "retry_at": c.retry_at,
        "finished_at": c.finished_at,
        "facts_at": c.facts_at,
        "approved_at": c.approved_at,
    }


def conversation_from_row(m: Any) -> TrackedConversation:
    ttl = m["ttl_seconds"]
    return TrackedConversation(
        agent_id=m["agent_id"],
        session_id=m["session_id"],
        remote_id=m["remote_id"],
        name=m["name"],
        created_by=m["created_by"],
        created_at=m["created_at"],
        updated_at=m["updated_at"],
        origin=Origin(m["origin"]),
        state=State(m["state"]),
        last_activity_at=m["last_activity_at"],
        activity_checked_at=m["activity_checked_at"],
        ttl=timedelta(seconds=ttl) if ttl is not None else None,
        ttl_from=m["ttl_from"],
        due_at=m["due_at"],
        rule=m["rule"],
        reason=m["reason"],
        provisional=bool(m["provisional"]),
        dry_run=bool(m["dry_run"]),
        age_from=AgeFrom(m["age_from"]) if m["age_from"] else None,
        attempts=m["attempts"],
        last_error=m["last_error"],
        dry_run_noted_at=m["dry_run_noted_at"],
        grace_until=m["grace_until"],
        retry_at=m["retry_at"],
        first_seen=m["first_seen"],
        finished_at=m["finished_at"],
        facts_at=m["facts_at"],
        approved_at=m["approved_at"],
    )


def agent_from_row(m: Any) -> AgentRecord:
    return AgentRecord(
        id=m["id"],
        name=m["name"],
        sync_cursor=m["sync_cursor"],
        last_full_sync_at=m["last_full_sync_at"],
        platform_retention_period=m["platform_retention_period"],
        platform_retention_days=m["platform_retention_days"],
        pages=m["pages"],
    )


def audit_from_row(m: Any) -> AuditRecord:
    return AuditRecord(
        at=m["at"],
        agent_id=m["agent_id"],
        session_id=m["session_id"],
        name=m["name"],
        rule=m["rule"],
        age=timedelta(seconds=m["age_seconds"]),
        outcome=AuditOutcome(m["outcome"]),
        detail=m["detail"],
    )


def sweep_from_row(m: Any) -> SweepRecord:
    calls = json.loads(m["calls_by_kind"]) if m["calls_by_kind"] else {}
    return SweepRecord(
        id=m["id"],
        kind=m["kind"],
        dry_run=bool(m["dry_run"]),
        started_at=m["started_at"],
        finished_at=m["finished_at"],
        ok=None if m["ok"] is None else bool(m["ok"]),
        listed=m["listed"],
        new=m["new"],
        due=m["due"],
        deleted=m["deleted"],
        already_gone=m["already_gone"],
        failed=m["failed"],
        api_calls=m["api_calls"],
        calls_by_kind={str(k): int(v) for k, v in calls.items()},
        error=m["error"],
    )


def lease_from_row(m: Any) -> Lease:
    return Lease(
        scope=m["scope"],
        holder=m["holder"],
        token=m["token"],
        acquired_at=m["acquired_at"],
        expires_at=m["expires_at"],
    )
