"""Conversations retention creates or is told about, each with a TTL of its own.

Cost in calls: ``create`` one POST; ``track`` one GET (the first messages page, which carries
the conversation's facts and proves it exists). Precedence (DESIGN.md section 4): a hold still
wins over such a TTL; the TTL beats every policy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import timedelta

from retention.models import Conversation, Origin, State, TrackedConversation
from retention.sweep import Sweep

NAME_MAX = 255  # the longest name create accepts (the admin API's limit too)


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a new conversation, or None. The CLI's ``create --name`` and
    the admin API's ``POST /v1/conversations`` both ask this, so they refuse the same names:
    an empty or blank one (the CustomGPT API would name it "New conversation") or one too long.
    """
    if not name.strip():
        return "must not be empty or only spaces"
    if len(name) > NAME_MAX:
        return f"at most {NAME_MAX} characters"
    return None


async def create(
    sweep: Sweep, *, agent_id: int, name: str, ttl: timedelta | None
) -> TrackedConversation:
    """Create a conversation through the API and track it (with ``ttl``, if given).

    A name :func:`name_problem` refuses is a ValueError: the surfaces check it first.
    """
    if (problem := name_problem(name)) is not None:
        raise ValueError(f"name: {problem}")
    remote = await sweep.api.create_conversation(agent_id, name)
    return await _keep(sweep, remote, origin=Origin.CREATED, ttl=ttl)


async def track(
    sweep: Sweep, *, agent_id: int, session_id: str, ttl: timedelta | None
) -> TrackedConversation:
    """Register an existing conversation (it must exist: NotFoundError otherwise)."""
    remote, newest = await sweep.api.conversation_info(agent_id, session_id)
    seen = {"last_activity_at": newest or remote.created_at, "activity_checked_at": sweep.clock()}
    return await _keep(sweep, remote, origin=Origin.REGISTERED, ttl=ttl, extra=seen)


async def _keep(
    sweep: Sweep,
    remote: Conversation,
    *,
    origin: Origin,
    ttl: timedelta | None,
    extra: Mapping[str, object] | None = None,
) -> TrackedConversation:
    now = sweep.clock()
    known = await sweep.conversations.get(remote.agent_id, remote.session_id)
    facts = {
        "remote_id": remote.id,
        "name": remote.name,
        "created_by": remote.created_by,
        "created_at": remote.created_at,
        "updated_at": remote.updated_at,
        "ttl": ttl,
        "ttl_from": now if ttl is not None else None,
        "facts_at": now,
        **(extra or {}),
    }
    if known is None:
        fresh = TrackedConversation(
            agent_id=remote.agent_id,
            session_id=remote.session_id,
            origin=origin,
            state=State.ACTIVE,
            first_seen=now,
            **facts,  # type: ignore[arg-type]
        )
        record = sweep.evaluate(fresh, now)
        await sweep.conversations.insert([record], now=now)
        return record
    if known.origin is Origin.DISCOVERED:
        facts["origin"] = origin
    if known.state in (State.DELETED, State.GONE):
        facts["state"] = State.ACTIVE
        facts["finished_at"] = None
    record = sweep.evaluate(replace(known, **facts), now)  # type: ignore[arg-type]
    await sweep.conversations.update([record], now=now)
    return record
