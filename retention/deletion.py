"""Deletion: take the due set oldest-due first and delete it, with intent recorded first.

For each conversation: decide again with the rules in force (a hold added since wins); for a
``last_activity`` rule, read the newest message (one call) and let a recent one push the due
time forward; then record the intent (state ``deleting``), send the DELETE, and record the
outcome and its audit row. A crash between intent and outcome leaves ``deleting`` behind, and
the next sweep sends the DELETE again: a 404 then means it was gone already.

Dry-run runs exactly this code; only the DELETE is replaced by an audit row marked dry_run.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from datetime import datetime, timedelta

from retention.errors import ApiError, AuthError
from retention.models import (
    AgeFrom,
    AuditOutcome,
    AuditRecord,
    DeleteOutcome,
    State,
    SweepReport,
    TrackedConversation,
)
from retention.sweep import Sweep

logger = logging.getLogger(__name__)
MAX_RETRY_DELAY = timedelta(hours=1)


async def delete_due(sweep: Sweep, report: SweepReport, *, sweep_id: int | None = None) -> None:
    """Delete what is due, at most ``delete_batch`` per sweep, ``delete_concurrency`` at once."""
    options = sweep.options
    now = sweep.clock()
    candidates = await sweep.conversations.due(
        now, limit=options.delete_batch, skip_dry_run_noted=True
    )
    report.due = len(candidates)
    queue = iter(candidates)  # shared by the workers: oldest due first, whoever is free
    done = 0

    async def worker() -> None:
        nonlocal done
        for candidate in queue:
            if sweep.stopping.is_set():
                return
            async with sweep.gate(candidate.agent_id).delete():
                await _delete_one(sweep, candidate, report, sweep_id)
            done += 1
            sweep.note("deletions", done)

    workers = [asyncio.create_task(worker()) for _ in range(options.delete_concurrency)]
    try:
        results = await asyncio.gather(*workers, return_exceptions=True)
    finally:
        for task in workers:
            task.cancel()
    for result in results:
        if isinstance(result, BaseException):
            raise result


async def confirm_activity(
    sweep: Sweep, conversation: TrackedConversation, now: datetime
) -> TrackedConversation:
    """For a last-activity rule about to act, read the newest message time (one call)."""
    if conversation.due_at is None or conversation.due_at > now:
        return conversation
    if conversation.age_from is not AgeFrom.LAST_ACTIVITY:
        return conversation
    checked = conversation.activity_checked_at
    if checked is not None and now - checked < sweep.options.activity_fresh:
        return conversation
    newest = await sweep.api.last_activity(conversation.agent_id, conversation.session_id)
    refreshed = replace(conversation, last_activity_at=newest, activity_checked_at=now)
    # No messages: the clock is the creation time (DESIGN.md section 4).
    if newest is None:
        refreshed = replace(refreshed, last_activity_at=conversation.created_at)
    evaluated = sweep.evaluate(refreshed, now)
    await sweep.conversations.update([evaluated], now=now)
    return evaluated


async def _delete_one(
    sweep: Sweep,
    candidate: TrackedConversation,
    report: SweepReport,
    sweep_id: int | None,
) -> None:
    # The due set was read before this agent's gate was ours: a walk may have renamed the
    # conversation or found it gone since. Decide on what the store holds now.
    stored = await sweep.conversations.get(candidate.agent_id, candidate.session_id)
    if stored is None or stored.state not in (State.ACTIVE, State.DELETING):
        return
    candidate = stored
    now = sweep.clock()
    current = sweep.evaluate(candidate, now)
    if current.state is State.DELETING and current.due_at is None:
        # Left mid-delete, but the rules no longer delete it (a hold, or no match any more).
        current = replace(current, state=State.HELD if current.rule else State.ACTIVE)
    if current != candidate:
        await sweep.conversations.update([current], now=now)
    if current.due_at is None or current.due_at > now or current.state is State.HELD:
        return
    try:
        current = await confirm_activity(sweep, current, now)
    except AuthError:
        raise
    except ApiError as exc:
        report.failed += 1
        logger.warning("could not read the newest message of %s: %s", current.session_id, exc)
        return
    if current.due_at is None or current.due_at > now:
        report.postponed += 1
        logger.info(
            "agent %d: %r had activity; now due %s",
            current.agent_id,
            current.name,
            current.due_at.isoformat() if current.due_at else "never",
        )
        return
    if current.grace_until is not None and current.grace_until > now:
        return  # a policy change made it due: it waits out the grace
    if current.retry_at is not None and current.retry_at > now:
        return  # a DELETE failed lately: the next attempt waits
    if sweep.dry_run(current):
        if current.dry_run_noted_at is not None:
            return  # said once already
        await _audit(sweep, report, current, AuditOutcome.DRY_RUN, now, sweep_id)
        await sweep.conversations.note_dry_run(current.agent_id, current.session_id, now=now)
        report.would_delete += 1
        logger.info("dry-run: would delete %s (%s)", _label(current), current.reason)
        return
    await _send_delete(sweep, current, report, sweep_id)


async def _send_delete(
    sweep: Sweep, current: TrackedConversation, report: SweepReport, sweep_id: int | None
) -> None:
    store, now = sweep.conversations, sweep.clock()
    # Intent first: a crash after this line is resolved by the next sweep.
    await store.set_state(
        current.agent_id, current.session_id, State.DELETING, now=now, count_attempt=True
    )
    try:
        outcome = await sweep.api.delete_conversation(current.agent_id, current.session_id)
    except ApiError as exc:
        retry_at = now + retry_delay(sweep.options.retry_backoff, current.attempts + 1)
        await store.set_state(
            current.agent_id,
            current.session_id,
            State.ACTIVE,
            now=now,
            error=str(exc),
            retry_at=retry_at,
        )
        await _audit(sweep, report, current, AuditOutcome.FAILED, now, sweep_id, detail=str(exc))
        report.failed += 1
        logger.warning("could not delete %s: %s", _label(current), exc)
        if isinstance(exc, AuthError):
            raise  # every other delete would fail the same way: stop the sweep
        return
    done = sweep.clock()
    if outcome is DeleteOutcome.DELETED:
        await store.set_state(current.agent_id, current.session_id, State.DELETED, now=done)
        await _audit(sweep, report, current, AuditOutcome.DELETED, done, sweep_id)
        report.deleted += 1
        logger.info("deleted %s (%s)", _label(current), current.reason)
    else:
        await store.set_state(current.agent_id, current.session_id, State.GONE, now=done)
        await _audit(sweep, report, current, AuditOutcome.ALREADY_GONE, done, sweep_id)
        report.already_gone += 1
        logger.info("already gone: %s", _label(current))


async def _audit(
    sweep: Sweep,
    report: SweepReport,
    conversation: TrackedConversation,
    outcome: AuditOutcome,
    at: datetime,
    sweep_id: int | None,
    *,
    detail: str | None = None,
) -> None:
    report.outcomes[(outcome.value, conversation.rule or "")] += 1
    record = AuditRecord(
        at=at,
        agent_id=conversation.agent_id,
        session_id=conversation.session_id,
        name=conversation.name,
        rule=conversation.rule,
        age=at - conversation.created_at,
        outcome=outcome,
        detail=detail or conversation.reason,
    )
    await sweep.journal.add_audit(record, sweep_id=sweep_id)


def retry_delay(base: timedelta, attempts: int) -> timedelta:
    """base, 2 x base, 4 x base ... after each failed attempt, never more than an hour."""
    delay: timedelta = base * (2 ** max(0, attempts - 1))
    return min(delay, MAX_RETRY_DELAY)


def _label(conversation: TrackedConversation) -> str:
    return f"agent {conversation.agent_id} {conversation.session_id} {conversation.name!r}"
