"""Discovery: walk agents' conversation lists and bring the store up to date. Deletes nothing.

Cost in calls: per agent, one call per page read. An incremental walk stops at the first page
that reaches the agent's cursor, so a sweep with nothing new costs one call per agent. A full
reconcile (the first sync, then every ``reconcile_every``) reads every page and one settings
call per agent; policies with ``agents = "*"`` add one call per page of the account's agents.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import datetime

from retention.errors import ApiError
from retention.models import (
    TERMINAL_STATES,
    AgentRecord,
    AgentSettings,
    Conversation,
    Listing,
    Origin,
    State,
    SweepReport,
    TrackedConversation,
)
from retention.sweep import Sweep
from retention.timefmt import format_duration

logger = logging.getLogger(__name__)


async def agents_to_cover(sweep: Sweep) -> dict[int, str | None]:
    """Agents named by policies (or all of the account's, with their names), plus those we
    track on request."""
    scope = sweep.rules.agents_in_scope()
    if scope is None:
        agents: dict[int, str | None] = {a.id: a.name for a in await sweep.api.list_agents()}
    else:
        agents = dict.fromkeys(scope)
    for agent_id in await sweep.conversations.requested_agents():
        agents.setdefault(agent_id, None)
    return dict(sorted(agents.items()))


async def discover_all(sweep: Sweep, report: SweepReport, *, full: bool = False) -> None:
    for agent_id, name in (await agents_to_cover(sweep)).items():
        if sweep.stopping.is_set():
            break
        async with sweep.gate(agent_id).walk():
            await discover_agent(sweep, agent_id, report, full=full, name=name)
        report.agents += 1


async def discover_agent(
    sweep: Sweep,
    agent_id: int,
    report: SweepReport,
    *,
    full: bool = False,
    name: str | None = None,
) -> None:
    started = sweep.clock()
    record = await sweep.agents.agent(agent_id) or AgentRecord(id=agent_id, name="")
    if name:
        record = replace(record, name=name)
    reconcile = full or _reconcile_due(record, started, sweep)
    listing = await sweep.api.list_conversations(
        agent_id, newer_than=None if reconcile else record.sync_cursor
    )
    report.pages += listing.pages
    report.listed += len(listing.conversations)
    sweep.note("pages", report.pages)
    now = sweep.clock()
    # A reconcile needs every tracked conversation (to see which vanished); an incremental
    # walk only those it listed, so its cost follows what is new, not what is tracked.
    listed_ids = None if reconcile else [c.session_id for c in listing.conversations]
    tracked = await sweep.conversations.conversations(agent_id, session_ids=listed_ids)
    known = {c.session_id: c for c in tracked}
    inserts, updates, unchanged = _merge(sweep, listing.conversations, known, now)
    gone = _vanished(listing, known, started) if reconcile else []
    await sweep.conversations.insert(inserts, now=now)
    await sweep.conversations.update(updates, now=now)
    await sweep.conversations.touch(agent_id, unchanged, now=now)
    for conversation in gone:
        await sweep.conversations.set_state(agent_id, conversation.session_id, State.GONE, now=now)
    report.new += len(inserts)
    report.gone += len(gone)
    if gone:
        logger.info(
            "agent %d: %d conversations vanished remotely, marked gone", agent_id, len(gone)
        )
    if reconcile and not listing.complete:
        logger.info(
            "agent %d: the list changed under the walk; vanished conversations are judged at "
            "the next reconcile",
            agent_id,
        )
    ids = [c.id for c in listing.conversations]
    record = replace(record, sync_cursor=max([record.sync_cursor or 0, *ids]) or None)
    if reconcile:
        record = replace(record, last_full_sync_at=now, pages=listing.pages)
        record = await _with_platform_settings(sweep, record)
    await sweep.agents.save_agent(record, now=now)


def _reconcile_due(record: AgentRecord, now: datetime, sweep: Sweep) -> bool:
    if record.sync_cursor is None or record.last_full_sync_at is None:
        return True
    return now - record.last_full_sync_at >= sweep.options.reconcile_every


def _merge(
    sweep: Sweep,
    listed: tuple[Conversation, ...],
    known: dict[str, TrackedConversation],
    now: datetime,
) -> tuple[list[TrackedConversation], list[TrackedConversation], list[str]]:
    inserts: list[TrackedConversation] = []
    updates: list[TrackedConversation] = []
    unchanged: list[str] = []
    for remote in listed:
        current = known.get(remote.session_id)
        if current is None:
            fresh = TrackedConversation(
                agent_id=remote.agent_id,
                session_id=remote.session_id,
                remote_id=remote.id,
                name=remote.name,
                created_by=remote.created_by,
                created_at=remote.created_at,
                updated_at=remote.updated_at,
                origin=Origin.DISCOVERED,
                state=State.ACTIVE,
                first_seen=now,
                facts_at=now,
            )
            inserts.append(sweep.evaluate(fresh, now))
            continue
        merged = replace(
            current,
            remote_id=remote.id,
            name=remote.name,
            created_by=remote.created_by,
            created_at=remote.created_at,
            updated_at=remote.updated_at,
        )
        if current.state in TERMINAL_STATES:
            # Listed again: it exists after all (a skipped walk, or a delete that did not take).
            logger.warning(
                "agent %d: conversation %s was %s but is listed again; tracking it anew",
                remote.agent_id,
                remote.session_id,
                current.state.value,
            )
            merged = replace(merged, state=State.ACTIVE, finished_at=None)
        if merged != current:
            updates.append(sweep.evaluate(replace(merged, facts_at=now), now))
        else:
            unchanged.append(current.session_id)
    return inserts, updates, unchanged


def _vanished(
    listing: Listing, known: dict[str, TrackedConversation], started: datetime
) -> list[TrackedConversation]:
    """Tracked conversations a complete walk did not see. Never judged on an incomplete walk,
    and never one first heard of after the walk began (it may have been created meanwhile)."""
    if not listing.complete:
        return []
    seen = {c.session_id for c in listing.conversations}
    return [
        c
        for c in known.values()
        if c.session_id not in seen
        and c.state in (State.ACTIVE, State.HELD)
        and (c.first_seen is None or c.first_seen < started)
    ]


async def _with_platform_settings(sweep: Sweep, record: AgentRecord) -> AgentRecord:
    """Read the platform's own retention (one call) and say where it cuts in before a policy."""
    try:
        settings = await sweep.api.agent_settings(record.id)
    except ApiError as exc:
        logger.warning(
            "agent %d: could not read the platform's retention setting: %s", record.id, exc
        )
        return record
    _warn_about_platform(sweep, settings)
    return replace(
        record,
        platform_retention_period=settings.retention_period,
        platform_retention_days=settings.retention_days,
    )


def _warn_about_platform(sweep: Sweep, settings: AgentSettings) -> None:
    limit = settings.platform_max_age
    if limit is None:
        return
    for policy in sweep.rules.policies:
        applies = policy.agents is None or settings.agent_id in policy.agents
        if applies and policy.max_age > limit:
            logger.warning(
                "agent %d: the platform deletes conversations after %s, before policy %r "
                "(max_age %s) would",
                settings.agent_id,
                format_duration(limit),
                policy.name,
                format_duration(policy.max_age),
            )
