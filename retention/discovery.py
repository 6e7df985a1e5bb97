"""Discovery: walk agents' conversation lists and bring the store up to date. Deletes nothing.

Cost in calls: per agent, one call per page read. An incremental walk stops at the first page
that reaches the agent's cursor, so a sweep with nothing new costs one call per agent. A full
reconcile (the first sync, then every ``reconcile_every``) reads every page and one settings
call per agent; policies with ``agents = "*"`` add one call per page of the account's agents.

Memory follows a page, not the agent: each page is stored before the next is read, and which
tracked conversations vanished is asked of the store after a complete walk.

A walk also verifies deletions: a conversation recorded as deleted (our DELETE got 200) that a
walk begun after the deletion still lists did not go. It is audited as failed, counted in
``SweepReport.unverified``, and queued again. A walk begun before the deletion finished proves
nothing: offset pages are read over time, and the page that listed it may predate the DELETE.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from retention.errors import ApiError
from retention.logs import OUTCOME_GONE, OUTCOME_KEPT, Event, fields
from retention.models import (
    TERMINAL_STATES,
    AgentRecord,
    AgentSettings,
    AuditOutcome,
    AuditRecord,
    Conversation,
    Origin,
    State,
    SweepReport,
    TrackedConversation,
)
from retention.paging import WalkTally
from retention.sweep import Sweep

logger = logging.getLogger(__name__)
UNVERIFIED = "still present after DELETE 200"


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
    """Walk one agent's list and bring the store up to date, one page at a time.

    Memory holds a page or two whatever the agent's size: each page is merged against the
    tracked rows of its own session ids and written (inserts, updates, touches) before the next
    page is read, so a walk cut short keeps what its pages found. What needs the whole walk is
    settled after it: the sync cursor, the reconcile's time and page count, and which tracked
    conversations vanished (only after a complete reconcile: those whose ``last_seen`` the walk
    did not stamp, asked of the store). A walk that fails part-way moves no cursor and marks
    nothing gone. Costs one store read and up to three writes per page read.
    """
    started = sweep.clock()
    record = await sweep.agents.agent(agent_id) or AgentRecord(id=agent_id, name="")
    if name:
        record = replace(record, name=name)
    reconcile = full or _reconcile_due(record, started, sweep)
    writer = _PageWriter(
        sweep, report, agent_id, started=started, first_walk=record.sync_cursor is None
    )
    walk = await sweep.api.walk_conversations(
        agent_id, writer.write, newer_than=None if reconcile else record.sync_cursor
    )
    writer.log_held_back()
    now = _stamp(sweep, started)
    if reconcile:
        report.gone += await _mark_vanished(sweep, walk, started=started, now=now)
    record = replace(record, sync_cursor=max(record.sync_cursor or 0, walk.newest or 0) or None)
    if reconcile:
        record = replace(record, last_full_sync_at=now, pages=walk.pages)
        record = await _with_platform_settings(sweep, record)
    sweep.still_the_writer()
    await sweep.agents.save_agent(record, now=now)


def _stamp(sweep: Sweep, started: datetime) -> datetime:
    """The time a walk writes with: never before its start, even when the wall clock stepped
    back, so every row it listed has ``last_seen`` at or after the start (see _mark_vanished)."""
    return max(sweep.clock(), started)


@dataclass(eq=False)
class _PageWriter:
    """Stores the pages of one walk as they come; keeps only counters between pages."""

    sweep: Sweep
    report: SweepReport
    agent_id: int
    started: datetime  # the walk's start: facts read from its pages are stamped with it
    first_walk: bool  # the agent's first walk: what it finds due may wait out a grace
    held_back: int = 0
    held_until: datetime | None = None

    async def write(self, listed: tuple[Conversation, ...]) -> None:
        """Merge one page's unseen conversations against their tracked rows and store them."""
        sweep, report = self.sweep, self.report
        report.pages += 1
        report.listed += len(listed)
        sweep.note("pages", report.pages)
        if not listed:
            return
        now = _stamp(sweep, self.started)
        tracked = await sweep.conversations.conversations(
            self.agent_id, session_ids=[c.session_id for c in listed]
        )
        known = {c.session_id: c for c in tracked}
        inserts, updates, unchanged, unverified = _merge(
            sweep, listed, known, now, started=self.started
        )
        if self.first_walk:
            inserts = self._held_back(inserts, now)
        sweep.still_the_writer()  # the walk takes time: a writer that lost the store writes nothing
        await sweep.conversations.insert(inserts, now=now)
        await sweep.conversations.update(updates, now=now)
        await sweep.conversations.touch(self.agent_id, unchanged, now=now, facts_at=self.started)
        for conversation in unverified:
            await _audit_unverified(sweep, report, conversation, now)
        report.new += len(inserts)

    def _held_back(
        self, inserts: list[TrackedConversation], now: datetime
    ) -> list[TrackedConversation]:
        held = _held_back_when_newly_in_scope(self.sweep, inserts, now)
        until = [c.grace_until for c in held if c.grace_until is not None]
        if until:
            self.held_back += len(until)
            self.held_until = max(until + ([self.held_until] if self.held_until else []))
        return held

    def log_held_back(self) -> None:
        """Once per walk, not per page."""
        if self.held_back and self.held_until is not None:
            logger.warning(
                "agent %s: newly in scope; %d conversations due at once wait out the policy "
                "change grace until %s",
                self.agent_id,
                self.held_back,
                self.held_until.isoformat(timespec="seconds"),
                extra=fields(
                    Event.GRACE,
                    agent_id=self.agent_id,
                    count=self.held_back,
                    grace_until=self.held_until,
                ),
            )


def _held_back_when_newly_in_scope(
    sweep: Sweep, inserts: list[TrackedConversation], now: datetime
) -> list[TrackedConversation]:
    """An agent's first walk after rules were already in force means an edit brought it into
    scope (``agents = [532]`` -> ``[532, 533]``, or ``"*"``): what that makes due at once is
    newly due by an edit, and waits out the policy change grace like any other. (The very first
    rules a store sees get no grace: the mass-deletion breaker guards a first run.) Applied to
    each page's inserts during the first walk; a first walk cut short leaves the cursor unset,
    so the next walk is a first walk still."""
    grace = sweep.options.policy_change_grace
    if not sweep.rules_seen_before or not grace:
        return inserts
    until = now + grace
    return [
        replace(c, grace_until=until) if c.due_at is not None and c.due_at < until else c
        for c in inserts
    ]


async def _mark_vanished(sweep: Sweep, walk: WalkTally, *, started: datetime, now: datetime) -> int:
    """Mark gone the tracked conversations a complete walk did not list; returns how many.
    Never judged on an incomplete walk, and never one first heard of after the walk began (it
    may have been created meanwhile): the store picks them, holding none here."""
    if not walk.complete:
        logger.info(
            "agent %d: the list changed under the walk; vanished conversations are judged at "
            "the next reconcile",
            walk.agent_id,
        )
        return 0
    sweep.still_the_writer()
    gone = await sweep.conversations.mark_vanished(walk.agent_id, unseen_since=started, now=now)
    if gone:
        logger.info(
            "agent %d: %d conversations vanished remotely, marked gone",
            walk.agent_id,
            gone,
            extra=fields(Event.VANISHED, agent_id=walk.agent_id, count=gone, outcome=OUTCOME_GONE),
        )
    return gone


def _reconcile_due(record: AgentRecord, now: datetime, sweep: Sweep) -> bool:
    if record.sync_cursor is None or record.last_full_sync_at is None:
        return True
    return now - record.last_full_sync_at >= sweep.options.reconcile_every


def _merge(
    sweep: Sweep,
    listed: Sequence[Conversation],
    known: dict[str, TrackedConversation],
    now: datetime,
    *,
    started: datetime,
) -> tuple[
    list[TrackedConversation], list[TrackedConversation], list[str], list[TrackedConversation]
]:
    """Inserts, updates, unchanged session ids, and deletions a listing shows did not take."""
    inserts: list[TrackedConversation] = []
    updates: list[TrackedConversation] = []
    unchanged: list[str] = []
    unverified: list[TrackedConversation] = []
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
                facts_at=started,  # pages are read over time: stamp the walk's start
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
            if current.finished_at is not None and current.finished_at >= started:
                continue  # the walk began before it went: its pages may predate the DELETE
            if current.state is State.DELETED:
                # Our DELETE got 200, and a walk begun after it still lists it: it did not take.
                logger.warning(
                    "agent %d: conversation %s %r is %s (deleted at %s); auditing a failed "
                    "deletion and queueing it again",
                    remote.agent_id,
                    remote.session_id,
                    remote.name,
                    UNVERIFIED,
                    current.finished_at.isoformat() if current.finished_at else "?",
                    extra=fields(
                        Event.UNVERIFIED,
                        agent_id=remote.agent_id,
                        session_id=remote.session_id,
                        rule=current.rule,
                        outcome=AuditOutcome.FAILED.value,
                        deleted_at=current.finished_at,
                    ),
                )
                unverified.append(current)
                merged = replace(merged, last_error=UNVERIFIED)
            else:
                # Listed again: it exists after all (a skipped walk, or somebody restored it).
                logger.warning(
                    "agent %d: conversation %s was %s but is listed again; tracking it anew",
                    remote.agent_id,
                    remote.session_id,
                    current.state.value,
                    extra=fields(
                        Event.RELISTED,
                        agent_id=remote.agent_id,
                        session_id=remote.session_id,
                        rule=current.rule,
                        outcome=OUTCOME_KEPT,
                    ),
                )
            merged = replace(merged, state=State.ACTIVE, finished_at=None)
        if merged != current:
            updates.append(sweep.evaluate(replace(merged, facts_at=started), now))
        else:
            unchanged.append(current.session_id)
    return inserts, updates, unchanged, unverified


async def _audit_unverified(
    sweep: Sweep, report: SweepReport, conversation: TrackedConversation, now: datetime
) -> None:
    """A failed deletion: the audit row, the sweep's figures (failed, unverified)."""
    rule = conversation.rule or ""
    report.outcomes[(AuditOutcome.FAILED.value, rule)] += 1
    report.unverified += 1
    report.failed += 1
    deleted_at = conversation.finished_at
    when = f" (recorded deleted at {deleted_at.isoformat()})" if deleted_at else ""
    record = AuditRecord(
        at=now,
        agent_id=conversation.agent_id,
        session_id=conversation.session_id,
        name=conversation.name,
        rule=conversation.rule,
        age=now - conversation.created_at,
        outcome=AuditOutcome.FAILED,
        detail=f"{UNVERIFIED}{when}; queued again",
    )
    await sweep.journal.add_audit(record)


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
    """Say where the platform's own retention deletes before a policy would, or deletes what a
    hold keeps (``retention report`` lists the same)."""
    limit = settings.platform_max_age
    for conflict in sweep.rules.platform_conflicts(settings.agent_id, limit):
        logger.warning(
            "%s",
            conflict.message(),
            extra=fields(
                Event.PLATFORM_RETENTION,
                agent_id=conflict.agent_id,
                rule=conflict.rule,
                kind=conflict.kind,
                platform_max_age_seconds=conflict.platform_max_age.total_seconds(),
                max_age_seconds=None
                if conflict.max_age is None
                else conflict.max_age.total_seconds(),
            ),
        )
