"""Fresh facts before a deletion: re-read what a decision rests on when it is older than allowed.

A rename is invisible to an incremental walk, and ``updated_at`` and the newest message move
without one, so a decision to delete that rests on a name, an ``updated_at`` or a last activity
read longer ago than ``facts_max_age`` (see :meth:`retention.sweep.Sweep.stale_facts`) reads
them again first, by the cheaper of two ways, chosen per agent and sweep:

- one messages call per such conversation (:func:`refresh`): it returns the conversation's
  current name and ``updated_at`` together with its newest messages, so it serves every fact;
- or re-reading every page of the agent (:func:`walk_where_cheaper`): ``pages`` calls (plus the
  settings call of a reconcile) refresh the name and ``updated_at`` of every conversation in
  it. Only a newest message still needs its own call after that. The walk is discovery's own,
  streamed: a page at a time in memory, whatever the agent's size.

Decisions that rest only on facts that never change (creation time, creator, origin, agent)
cost nothing here.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime

from retention.discovery import discover_agent
from retention.errors import ApiError
from retention.models import Fact, SweepReport, TrackedConversation
from retention.policy import explain
from retention.sweep import Sweep

logger = logging.getLogger(__name__)


async def refresh(
    sweep: Sweep, conversation: TrackedConversation, now: datetime, *, urgent: bool = False
) -> TrackedConversation:
    """Re-read one conversation's name, ``updated_at`` and newest message (one messages call),
    decide again and store the result. Raises NotFoundError when it is gone."""
    remote, newest = await sweep.api.conversation_info(
        conversation.agent_id, conversation.session_id, urgent=urgent
    )
    if not remote.name and conversation.name:
        # An answer without the name cannot show a rename onto a hold: decide on nothing.
        raise ApiError(
            "the answer carried no conversation name",
            kind="messages",
            method="GET",
            path=f"projects/{conversation.agent_id}/conversations/{conversation.session_id}",
        )
    refreshed = replace(
        conversation,
        remote_id=remote.id,
        name=remote.name,
        created_by=remote.created_by,
        updated_at=remote.updated_at,
        # No messages: the clock is the creation time (DESIGN.md section 4).
        last_activity_at=newest or conversation.created_at,
        activity_checked_at=now,
        facts_at=now,
    )
    evaluated = sweep.evaluate(refreshed, now)
    await sweep.conversations.update([evaluated], now=now)
    if evaluated.name != conversation.name:
        logger.info(
            "agent %d: %s was renamed %r -> %r; decided again: %s",
            conversation.agent_id,
            conversation.session_id,
            conversation.name,
            evaluated.name,
            explain(evaluated.reason, evaluated.due_at, now),
        )
    return evaluated


async def walk_where_cheaper(
    sweep: Sweep, candidates: Sequence[TrackedConversation], report: SweepReport, now: datetime
) -> None:
    """Re-read whole agents where that costs fewer calls than one messages call per stale
    candidate. Candidates whose newest message is stale need their own call anyway, so they do
    not count towards a walk."""
    stale_names: Counter[int] = Counter()
    for candidate in candidates:
        stale = sweep.stale_facts(sweep.evaluate(candidate, now), now)
        if stale and Fact.ACTIVITY not in stale:
            stale_names[candidate.agent_id] += 1
    for agent_id, count in sorted(stale_names.items()):
        record = await sweep.agents.agent(agent_id)
        if record is None or record.pages is None or record.pages + 1 >= count:
            continue  # one call each is as cheap (a walk costs its pages and a settings call)
        if sweep.stopping.is_set():
            return
        logger.info(
            "agent %d: re-reading its %d pages refreshes %d stale candidates for less than "
            "one call each",
            agent_id,
            record.pages,
            count,
        )
        async with sweep.gate(agent_id).walk():
            await discover_agent(sweep, agent_id, report, full=True)
        report.refresh_walks += 1
