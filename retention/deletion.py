"""Deletion: take the due set oldest-due first and delete it, with intent recorded first.

For each conversation: decide again with the rules in force (a hold added since wins); when the
decision rests on a name, an ``updated_at`` or a newest message read longer ago than
``facts_max_age``, read them again first (:mod:`retention.freshness`) and decide on what they
are now (a rename onto a hold keeps it; a recent message pushes the due time forward); then,
with no wait between the last decision and the act, record the intent (state ``deleting``), send
the DELETE, and record the outcome and its audit row. A crash between intent and outcome leaves
``deleting`` behind, and the next sweep sends the DELETE again: a 404 then means it was gone
already.

Nothing is deleted while the local clock and the server's ``Date`` disagree by more than
``max_clock_skew``, or before any response has told the server's time: ages are measured on
the local clock, and one running ahead deletes early.

Dry-run runs exactly this code; only the DELETE is replaced by an audit row marked dry_run.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta

from retention.breaker import Verdict, judge
from retention.errors import ApiError, AuthError, NotFoundError
from retention.freshness import refresh, walk_where_cheaper
from retention.logs import OUTCOME_GONE, OUTCOME_KEPT, Event, fields
from retention.models import (
    AuditOutcome,
    AuditRecord,
    DeleteOutcome,
    State,
    SweepReport,
    TrackedConversation,
)
from retention.policy import explain
from retention.sweep import Sweep

logger = logging.getLogger(__name__)
MAX_RETRY_DELAY = timedelta(hours=1)
CONFIRMED_BY_404 = "confirmed by 404: a retry after a failed attempt found it gone"


async def delete_due(
    sweep: Sweep,
    report: SweepReport,
    *,
    sweep_id: int | None = None,
    until_done: bool = False,
    cap: int | None = None,
) -> None:
    """Delete what is due, ``delete_batch`` at a time, ``delete_concurrency`` at once.

    One batch a sweep, or with ``until_done`` batch after batch until nothing due is left that
    this sweep may delete; ``cap`` bounds the conversations taken in all. Where the breaker
    stops deletion, only approved conversations are taken.
    """
    options = sweep.options
    seen: set[tuple[int, str]] = set()
    while cap is None or len(seen) < cap:
        now = sweep.clock()
        verdict = await _breaker(sweep, report, now)
        limit = options.delete_batch if cap is None else min(options.delete_batch, cap - len(seen))
        candidates = await sweep.conversations.due(
            now,
            limit=limit,
            skip_dry_run_noted=True,
            approved_only=verdict.account is not None,
            approved_only_in=tuple(verdict.agents),
        )
        fresh = [c for c in candidates if (c.agent_id, c.session_id) not in seen]
        if not fresh:
            return  # nothing left, or only what this sweep already took (it stays due)
        seen.update((c.agent_id, c.session_id) for c in fresh)
        report.due += len(fresh)
        if not _clock_trusted(sweep, report):
            return
        await _delete_batch(sweep, fresh, report, sweep_id, now)
        if not until_done or sweep.stopping.is_set() or report.held_back is not None:
            return


async def delete_these(
    sweep: Sweep,
    report: SweepReport,
    keys: Sequence[tuple[int, str]],
    *,
    sweep_id: int | None = None,
) -> None:
    """Delete exactly these conversations (a plan's), where each is still due and unheld under
    the rules in force; never any other. Each is decided again as in :func:`delete_due`."""
    candidates = []
    for agent_id, session_id in keys:
        stored = await sweep.conversations.get(agent_id, session_id)
        if stored is not None and stored.state in (State.ACTIVE, State.DELETING):
            candidates.append(stored)
    report.due = len(candidates)
    for start in range(0, len(candidates), sweep.options.delete_batch):
        if sweep.stopping.is_set() or not _clock_trusted(sweep, report):
            return
        batch = candidates[start : start + sweep.options.delete_batch]
        await _delete_batch(sweep, batch, report, sweep_id, sweep.clock())


async def _delete_batch(
    sweep: Sweep,
    candidates: list[TrackedConversation],
    report: SweepReport,
    sweep_id: int | None,
    now: datetime,
) -> None:
    if not await _audit_ready(sweep, report):
        return
    await walk_where_cheaper(sweep, candidates, report, now)
    queue = iter(candidates)  # shared by the workers: oldest due first, whoever is free
    done = report.deleted + report.would_delete
    halt = asyncio.Event()  # one worker failed: the others take nothing more

    async def worker() -> None:
        nonlocal done
        for candidate in queue:
            if sweep.stopping.is_set() or halt.is_set():
                return
            try:
                async with sweep.gate(candidate.agent_id).delete():
                    await _delete_one(sweep, candidate, report, sweep_id)
            except BaseException:
                halt.set()  # an outcome that cannot be recorded: send no further DELETE
                raise
            done += 1
            sweep.note("deletions", done)

    workers = [asyncio.create_task(worker()) for _ in range(sweep.options.delete_concurrency)]
    try:
        results = await asyncio.gather(*workers, return_exceptions=True)
    finally:
        for task in workers:
            task.cancel()
    for result in results:
        if isinstance(result, BaseException):
            raise result


async def _audit_ready(sweep: Sweep, report: SweepReport) -> bool:
    """Whether the audit chain can record what is deleted now; says why not once a sweep.
    Nothing is deleted that could not be audited."""
    if report.held_back is not None:
        return False
    problem = await sweep.journal.audit_problem()
    if problem is None:
        return True
    extra = fields(Event.AUDIT_CHAIN, outcome="held_back", problem=problem)
    return _hold_back(report, problem, "deleting nothing: %s", extra)


async def _breaker(sweep: Sweep, report: SweepReport, now: datetime) -> Verdict:
    """Judge the due set against the mass-deletion breaker; say so once a sweep when it trips.

    Dry-run deletes nothing, so the breaker has nothing to stop there.
    """
    if sweep.options.dry_run:
        return Verdict()
    verdict = judge(await sweep.conversations.due_figures(now), sweep.options.breaker)
    if verdict.tripped and not report.breaker:
        report.breaker = verdict.reasons()
        report.breaker_scopes = ["account"] if verdict.account else []
        report.breaker_scopes += [str(agent) for agent in sorted(verdict.agents)]
        logger.error(
            "mass-deletion breaker: deleting nothing unapproved in %s this sweep: %s; "
            "discovery goes on",
            "the account" if verdict.account else "agents " + ", ".join(report.breaker_scopes),
            "; ".join(report.breaker),
            extra=fields(
                Event.BREAKER,
                outcome="tripped",
                scopes=report.breaker_scopes,
                reasons=report.breaker,
            ),
        )
    return verdict


def _clock_trusted(sweep: Sweep, report: SweepReport) -> bool:
    """Whether the local clock may measure ages for deleting now; says why not once a sweep."""
    if report.held_back is not None:
        return False
    problem: str | None
    if sweep.api.clock_reading is None:
        problem = "no response from the API has told the server's time yet"
    else:
        problem = sweep.clock_skew_problem(sweep.clock())
    if problem is None:
        return True
    extra = fields(Event.CLOCK_GUARD, outcome="held_back", reason=problem)
    return _hold_back(report, problem, "deleting nothing this sweep: %s; discovery goes on", extra)


def _hold_back(report: SweepReport, problem: str, message: str, extra: dict[str, object]) -> bool:
    """Delete nothing more this sweep and say why, once (the guards' common end): False."""
    report.held_back = problem
    logger.error(message, problem, extra=extra)
    return False


async def refresh_if_stale(
    sweep: Sweep, conversation: TrackedConversation, now: datetime, *, urgent: bool = False
) -> TrackedConversation:
    """A due conversation whose decision rests on stale facts, with those facts read again."""
    if conversation.due_at is None or conversation.due_at > now:
        return conversation
    if not sweep.stale_facts(conversation, now):
        return conversation
    return await refresh(sweep, conversation, now, urgent=urgent)


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
    now = sweep.clock()
    current = await _decide(sweep, stored, now)
    if not _due(current, now):
        return
    try:
        fresh = await refresh_if_stale(sweep, current, now, urgent=True)
    except NotFoundError:
        await sweep.conversations.set_state(
            current.agent_id, current.session_id, State.GONE, now=now
        )
        report.gone += 1
        logger.info(
            "agent %d: %s is gone already",
            current.agent_id,
            current.session_id,
            extra=_fields(Event.GONE, current, OUTCOME_GONE),
        )
        return
    except AuthError:
        raise
    except ApiError as exc:
        report.failed += 1
        logger.warning(
            "could not read the facts of %s again: %s",
            _label(current),
            exc,
            extra=_fields(Event.REFRESH_FAILED, current, AuditOutcome.FAILED, error=str(exc)),
        )
        return
    if fresh is not current:
        report.refreshed += 1
    # The last decision, on the rules in force this instant, and nothing awaited between it and
    # the act: a reload may have added a hold or a dry-run while the facts were read.
    now = sweep.clock()
    final = _redecided(sweep, fresh, now)
    if not _due(final, now):
        if final != fresh:
            await sweep.conversations.update([final], now=now)
        report.postponed += 1
        held = final.state is State.HELD
        logger.info(
            "agent %d: %r is not due after all (%s); now due %s",
            final.agent_id,
            final.name,
            explain(final.reason, final.due_at, now),
            final.due_at.isoformat() if final.due_at else "never",
            extra=_fields(
                Event.HELD if held else Event.POSTPONED, final, OUTCOME_KEPT, due_at=final.due_at
            ),
        )
        return
    if final.grace_until is not None and final.grace_until > now:
        return  # a policy change made it due: it waits out the grace
    if final.retry_at is not None and final.retry_at > now:
        return  # a DELETE failed lately: the next attempt waits
    if not _clock_trusted(sweep, report):
        return  # the clock went wrong during this sweep
    if sweep.dry_run(final):
        if final.dry_run_noted_at is not None:
            return  # said once already
        await _audit(sweep, report, final, AuditOutcome.DRY_RUN, now, sweep_id)
        await sweep.conversations.note_dry_run(final.agent_id, final.session_id, now=now)
        report.would_delete += 1
        logger.info(
            "dry-run: would delete %s (%s)",
            _label(final),
            explain(final.reason, final.due_at, now),
            extra=_fields(Event.DRY_RUN, final, AuditOutcome.DRY_RUN, due_at=final.due_at),
        )
        return
    await _send_delete(sweep, final, report, sweep_id)


async def _still_to_delete(sweep: Sweep, decided: TrackedConversation) -> bool:
    """The last check, made when the DELETE's turn has come (after the budget, a 429 pause, a
    retry's wait): the row still mid-delete, still due and unheld under the rules in force now,
    on facts still fresh enough, not dry-run, not held back by a grace or the clock."""
    if sweep.lease is not None and not sweep.lease.valid():
        return False  # paused or cut off past the lease: another writer may have taken over
    now = sweep.clock()
    stored = await sweep.conversations.get(decided.agent_id, decided.session_id)
    if stored is None or stored.state is not State.DELETING:
        return False
    final = _redecided(sweep, stored, now)
    return (
        _due(final, now)
        and not sweep.stale_facts(final, now)
        and not sweep.dry_run(final)
        and (final.grace_until is None or final.grace_until <= now)
        and sweep.clock_skew_problem(now) is None
    )


async def _decide(sweep: Sweep, stored: TrackedConversation, now: datetime) -> TrackedConversation:
    """Decide again on the stored facts, and store the decision when it changed."""
    current = _redecided(sweep, stored, now)
    if current != stored:
        await sweep.conversations.update([current], now=now)
    return current


def _redecided(
    sweep: Sweep, conversation: TrackedConversation, now: datetime
) -> TrackedConversation:
    current = sweep.evaluate(conversation, now)
    if current.state is State.DELETING and current.due_at is None:
        # Left mid-delete, but the rules no longer delete it (a hold, or no match any more).
        return replace(current, state=State.HELD if current.rule else State.ACTIVE)
    return current


def _due(conversation: TrackedConversation, now: datetime) -> bool:
    due_at = conversation.due_at
    return due_at is not None and due_at <= now and conversation.state is not State.HELD


async def _send_delete(
    sweep: Sweep, current: TrackedConversation, report: SweepReport, sweep_id: int | None
) -> None:
    store, now = sweep.conversations, sweep.clock()
    # Intent first: a crash after this line is resolved by the next sweep. Fenced: a writer
    # that lost the store's lease cannot record it (LeaseLost ends the sweep).
    fence = sweep.lease.current() if sweep.lease is not None else None
    await store.set_state(
        current.agent_id,
        current.session_id,
        State.DELETING,
        now=now,
        count_attempt=True,
        fence=fence,
    )

    async def go_ahead() -> bool:
        return await _still_to_delete(sweep, current)

    try:
        outcome = await sweep.api.delete_conversation(
            current.agent_id, current.session_id, go_ahead=go_ahead
        )
    except ApiError as exc:
        retry_at = now + retry_delay(sweep.options.retry_backoff, current.attempts + 1)
        failed = _audit_record(report, current, AuditOutcome.FAILED, now, detail=str(exc))
        await store.set_state(
            current.agent_id,
            current.session_id,
            State.ACTIVE,
            now=now,
            error=str(exc),
            retry_at=retry_at,
            audit=failed,
            sweep_id=sweep_id,
        )
        report.failed += 1
        logger.warning(
            "could not delete %s: %s",
            _label(current),
            exc,
            extra=_fields(
                Event.DELETE_FAILED,
                current,
                AuditOutcome.FAILED,
                error=str(exc),
                status=exc.status,
                attempts=current.attempts + 1,
                retry_at=retry_at,
            ),
        )
        if isinstance(exc, AuthError):
            raise  # every other delete would fail the same way: stop the sweep
        return
    done = sweep.clock()
    if outcome is DeleteOutcome.WITHDRAWN:
        # Decided again at the last moment, it no longer holds: back to active, decided afresh.
        await store.set_state(current.agent_id, current.session_id, State.ACTIVE, now=done)
        stored = await store.get(current.agent_id, current.session_id)
        if stored is not None:
            await _decide(sweep, stored, done)
        report.postponed += 1
        logger.info(
            "withdrawn at the last moment, not deleted: %s",
            _label(current),
            extra=_fields(Event.WITHDRAWN, current, OUTCOME_KEPT),
        )
        return
    if outcome is not DeleteOutcome.ALREADY_GONE:
        # A 404 on a retry after an attempt the server may have acted on is our own deletion,
        # confirmed; "already gone" is kept for what somebody else deleted.
        confirmed = outcome is DeleteOutcome.DELETED_CONFIRMED_BY_404
        why = explain(current.reason, current.due_at, done)
        detail = f"{CONFIRMED_BY_404}; {why}" if confirmed else None
        # The state and its audit row in one transaction: never a deletion recorded unaudited.
        record = _audit_record(report, current, AuditOutcome.DELETED, done, detail=detail)
        await store.set_state(
            current.agent_id,
            current.session_id,
            State.DELETED,
            now=done,
            audit=record,
            sweep_id=sweep_id,
        )
        report.deleted += 1
        delay = None
        if current.due_at is not None:  # how late: the SLO's figure (retention_deletion_delay)
            delay = max(0.0, (done - current.due_at).total_seconds())
            report.delays.append(delay)
        logger.info(
            "deleted %s (%s)%s",
            _label(current),
            why,
            f": {CONFIRMED_BY_404}" if confirmed else "",
            extra=_fields(
                Event.DELETED,
                current,
                AuditOutcome.DELETED,
                confirmed_by_404=confirmed,
                due_at=current.due_at,
                delay_seconds=round(delay, 3) if delay is not None else None,
            ),
        )
    else:
        gone = _audit_record(report, current, AuditOutcome.ALREADY_GONE, done)
        await store.set_state(
            current.agent_id,
            current.session_id,
            State.GONE,
            now=done,
            audit=gone,
            sweep_id=sweep_id,
        )
        report.already_gone += 1
        logger.info(
            "already gone: %s",
            _label(current),
            extra=_fields(Event.ALREADY_GONE, current, AuditOutcome.ALREADY_GONE),
        )


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
    record = _audit_record(report, conversation, outcome, at, detail=detail)
    await sweep.journal.add_audit(record, sweep_id=sweep_id)


def _audit_record(
    report: SweepReport,
    conversation: TrackedConversation,
    outcome: AuditOutcome,
    at: datetime,
    *,
    detail: str | None = None,
) -> AuditRecord:
    """The audit row of an outcome (counted in the sweep's report)."""
    report.outcomes[(outcome.value, conversation.rule or "")] += 1
    return AuditRecord(
        at=at,
        agent_id=conversation.agent_id,
        session_id=conversation.session_id,
        name=conversation.name,
        rule=conversation.rule,
        age=at - conversation.created_at,
        outcome=outcome,
        detail=detail or explain(conversation.reason, conversation.due_at, at),
    )


def retry_delay(base: timedelta, attempts: int) -> timedelta:
    """base, 2 x base, 4 x base ... after each failed attempt, never more than an hour."""
    delay: timedelta = base * (2 ** max(0, attempts - 1))
    return min(delay, MAX_RETRY_DELAY)


def _label(conversation: TrackedConversation) -> str:
    return f"agent {conversation.agent_id} {conversation.session_id} {conversation.name!r}"


def _fields(
    event: Event, conversation: TrackedConversation, outcome: str, **more: object
) -> dict[str, object]:
    """A record's fields about one conversation (its account comes from the sweep's context)."""
    return fields(
        event,
        agent_id=conversation.agent_id,
        session_id=conversation.session_id,
        rule=conversation.rule,
        outcome=str(outcome),
        **more,
    )
