"""One account's sweep context: what discovery, deletion and tracking share, and nothing more.

A :class:`Sweep` holds one account's API client, the parts of the store each half of a sweep
needs (as the small Protocols below), the rules in force, the per-agent gates, the clock, the
progress callback and the stopping flag. It decides one conversation with :meth:`Sweep.evaluate`.
The engine orchestrates sweeps over it; :mod:`retention.discovery`, :mod:`retention.deletion`
and :mod:`retention.tracking` take it as their first argument and import no engine.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Iterable,
    Sequence,
)
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Protocol

from retention.breaker import AgentDue, Limits
from retention.budget import CallStats
from retention.clocks import Clock, ClockReading, utc_now
from retention.models import (
    Agent,
    AgentRecord,
    AgentSettings,
    AuditRecord,
    Conversation,
    DeleteOutcome,
    Fact,
    Lease,
    State,
    SweepReport,
    TrackedConversation,
)
from retention.paging import WalkTally
from retention.policy import Rules
from retention.redecision import DecisionRow, StoredDecision, state_under
from retention.timefmt import format_duration

Progress = Callable[[str, int], None]  # ("pages" | "deletions", how many so far)


class Api(Protocol):
    """What a sweep needs from the CustomGPT client."""

    stats: CallStats

    @property
    def clock_reading(self) -> ClockReading | None: ...
    async def list_agents(self) -> list[Agent]: ...
    async def walk_conversations(
        self,
        agent_id: int,
        on_page: Callable[[tuple[Conversation, ...]], Awaitable[None]],
        *,
        newer_than: int | None = None,
    ) -> WalkTally: ...
    async def delete_conversation(
        self,
        agent_id: int,
        session_id: str,
        *,
        go_ahead: Callable[[], Awaitable[bool]] | None = None,
    ) -> DeleteOutcome: ...
    async def last_activity(
        self, agent_id: int, session_id: str, *, urgent: bool = False
    ) -> datetime | None: ...
    async def agent_settings(self, agent_id: int) -> AgentSettings: ...
    async def create_conversation(self, agent_id: int, name: str) -> Conversation: ...
    async def conversation_info(
        self, agent_id: int, session_id: str, *, urgent: bool = False
    ) -> tuple[Conversation, datetime | None]: ...


class AgentRepository(Protocol):
    """Discovery's memory of each agent: its sync cursor, last reconcile, platform setting."""

    async def agent(self, agent_id: int) -> AgentRecord | None: ...
    async def save_agent(self, record: AgentRecord, *, now: datetime) -> None: ...


class ConversationRepository(Protocol):
    """Tracked conversations: their facts, decisions and states."""

    async def conversations(
        self,
        agent_id: int | None = None,
        *,
        states: Iterable[State] | None = None,
        session_ids: Iterable[str] | None = None,
    ) -> list[TrackedConversation]: ...
    async def requested_agents(self) -> set[int]: ...
    async def get(self, agent_id: int, session_id: str) -> TrackedConversation | None: ...
    async def insert(self, items: Sequence[TrackedConversation], *, now: datetime) -> None: ...
    async def update(self, items: Sequence[TrackedConversation], *, now: datetime) -> None: ...
    async def touch(
        self,
        agent_id: int,
        session_ids: Iterable[str],
        *,
        now: datetime,
        facts_at: datetime | None = None,
    ) -> None: ...
    async def mark_vanished(
        self, agent_id: int, *, unseen_since: datetime, now: datetime
    ) -> int: ...
    async def due(
        self,
        now: datetime,
        *,
        limit: int,
        skip_dry_run_noted: bool = False,
        include_waiting: bool = False,
        approved_only: bool = False,
        approved_only_in: Collection[int] = (),
    ) -> list[TrackedConversation]: ...
    async def due_figures(self, now: datetime) -> list[AgentDue]: ...
    async def set_state(
        self,
        agent_id: int,
        session_id: str,
        state: State,
        *,
        now: datetime,
        error: str | None = None,
        count_attempt: bool = False,
        retry_at: datetime | None = None,
        fence: Lease | None = None,
        audit: AuditRecord | None = None,
        sweep_id: int | None = None,
    ) -> None: ...
    async def note_dry_run(self, agent_id: int, session_id: str, *, now: datetime) -> None: ...


class SweepJournal(Protocol):
    """The audit trail and the sweep log: what was done, and by which sweep."""

    async def add_audit(self, record: AuditRecord, *, sweep_id: int | None = None) -> None: ...
    async def audit_problem(self) -> str | None: ...
    async def start_sweep(self, report: SweepReport) -> int: ...
    async def finish_sweep(self, sweep_id: int, report: SweepReport) -> None: ...
    async def check_identity(self) -> str | None: ...


class LeaseGuard(Protocol):
    """The store's lease, as deletion needs it: to fence intents, and to know it still holds."""

    def current(self) -> Lease: ...
    def valid(self) -> bool: ...


class ReevaluationRepository(Protocol):
    """The live conversations read a batch at a time, for a rules change: memory and the
    event loop's pauses follow the batch, not the store."""

    def decision_batches(self, size: int) -> AsyncGenerator[list[DecisionRow], None]: ...
    async def save_decisions(
        self, changes: Sequence[tuple[DecisionRow, StoredDecision]]
    ) -> None: ...
    async def checkpoint(self) -> None: ...


class MetaRepository(Protocol):
    """Small named values the engine keeps between runs (the rules' fingerprint)."""

    async def get_meta(self, key: str) -> str | None: ...
    async def set_meta(self, key: str, value: str) -> None: ...


class Repository(
    AgentRepository, ConversationRepository, ReevaluationRepository, MetaRepository, Protocol
):
    """The whole store as the engine is handed it; each part of a sweep sees one narrow side."""

    @property
    def account(self) -> str:
        """The account whose rows these are."""
        ...

    @property
    def journal(self) -> SweepJournal: ...


@dataclass(frozen=True)
class EngineOptions:
    dry_run: bool = False
    reconcile_every: timedelta = timedelta(hours=24)
    delete_concurrency: int = 4
    delete_batch: int = 500  # at most this many deletions per sweep; the rest wait their turn
    activity_fresh: timedelta = timedelta(minutes=1)  # a newest-message time this recent is used
    policy_change_grace: timedelta = timedelta(0)  # deletions a rules change newly causes wait
    # After a failed DELETE, wait this long before the next, doubling per attempt up to an hour:
    # a conversation the API keeps refusing must not eat the request budget every minute.
    retry_backoff: timedelta = timedelta(minutes=1)
    # A deletion resting on a name, an updated_at or a newest message read longer ago than this
    # reads them again first.
    facts_max_age: timedelta = timedelta(minutes=10)
    # Delete nothing while the local clock and the server's Date differ by more than this.
    max_clock_skew: timedelta = timedelta(minutes=5)
    breaker: Limits = Limits()  # the mass-deletion breaker's limits


class AgentGate:
    """Walks of one agent's list exclude its deletions; deletions share the gate among them.

    A waiting walk goes first, so a long run of deletions cannot keep discovery out. Offset
    pagination is why: a deletion on a page already read pulls the rest up, and the walk would
    silently skip items.
    """

    def __init__(self) -> None:
        self._changed = asyncio.Condition()
        self._walking = False
        self._walks_waiting = 0
        self._deleting = 0

    @asynccontextmanager
    async def walk(self) -> AsyncIterator[None]:
        async with self._changed:
            self._walks_waiting += 1
            try:
                await self._changed.wait_for(lambda: not self._walking and not self._deleting)
            finally:
                self._walks_waiting -= 1
            self._walking = True
        try:
            yield
        finally:
            async with self._changed:
                self._walking = False
                self._changed.notify_all()

    @asynccontextmanager
    async def delete(self) -> AsyncIterator[None]:
        async with self._changed:
            await self._changed.wait_for(lambda: not self._walking and not self._walks_waiting)
            self._deleting += 1
        try:
            yield
        finally:
            async with self._changed:
                self._deleting -= 1
                self._changed.notify_all()


@dataclass(eq=False, kw_only=True)
class Sweep:
    """One account's sweep: its API, the store's sides it needs, the rules in force, gates."""

    api: Api
    conversations: ConversationRepository
    agents: AgentRepository
    journal: SweepJournal
    rules: Rules  # replaced as a whole when a reload puts new rules in force
    options: EngineOptions = EngineOptions()
    clock: Clock = utc_now
    progress: Progress | None = None
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    monotonic: Callable[[], float] = time.monotonic  # carries the server's time forward
    # Whether the rules in force differ from the first rules the store ever saw (set by the
    # engine): an agent walked for the first time under them was brought into scope by an edit.
    rules_seen_before: bool = False
    lease: LeaseGuard | None = None  # a writer's lease; None: no lease in use (tests, plan)
    _gates: dict[int, AgentGate] = field(default_factory=dict, repr=False)

    @classmethod
    def over(
        cls,
        api: Api,
        store: Repository,
        rules: Rules,
        *,
        options: EngineOptions = EngineOptions(),
        clock: Clock = utc_now,
        progress: Progress | None = None,
    ) -> Sweep:
        """A sweep on one store: every side of it comes from the same database."""
        return cls(
            api=api,
            conversations=store,
            agents=store,
            journal=store.journal,
            rules=rules,
            options=options,
            clock=clock,
            progress=progress,
        )

    def still_the_writer(self) -> None:
        """LeaseLost when this process no longer holds the store's lease (paused or cut off
        past it): its writes would race the writer that took over. Local, no store query."""
        if self.lease is not None:
            self.lease.current()

    def gate(self, agent_id: int) -> AgentGate:
        return self._gates.setdefault(agent_id, AgentGate())

    def evaluate(self, conversation: TrackedConversation, now: datetime) -> TrackedConversation:
        """Apply the rules in force to one conversation; its state follows holds.

        The decision is kept whole (due time, rule, reason, the policy's dry-run flag and
        clock), so nothing downstream looks a policy up by name again.
        """
        decision = self.rules.decide(conversation.facts(), now)
        state = state_under(conversation.state, decision)
        c = conversation
        if (c.state, c.due_at, c.rule, c.reason, c.provisional, c.dry_run, c.age_from) == (
            state,
            decision.due_at,
            decision.rule,
            decision.reason,
            decision.provisional,
            decision.dry_run,
            decision.age_from,
        ):
            return conversation  # decided as before: no copy (a rules change reads millions)
        return replace(
            conversation,
            state=state,
            due_at=decision.due_at,
            rule=decision.rule,
            reason=decision.reason,
            provisional=decision.provisional,
            dry_run=decision.dry_run,
            age_from=decision.age_from,
        )

    def stale_facts(self, conversation: TrackedConversation, now: datetime) -> frozenset[Fact]:
        """What the decision to delete this conversation rests on and was read too long ago."""
        facts = conversation.facts()
        needs = self.rules.depends_on(facts, self.rules.decide(facts, now))
        limit = self.options.facts_max_age
        stale: set[Fact] = set()
        if needs & {Fact.NAME, Fact.UPDATED} and _older(conversation.facts_at, now, limit):
            stale |= needs & {Fact.NAME, Fact.UPDATED}
        activity_limit = min(limit, self.options.activity_fresh)
        if Fact.ACTIVITY in needs and _older(conversation.activity_checked_at, now, activity_limit):
            stale.add(Fact.ACTIVITY)
        return frozenset(stale)

    def clock_skew_problem(self, now: datetime) -> str | None:
        """Why the local clock is not to be trusted now, or None when it agrees with the server's.

        Ages are measured on the local clock: one that runs ahead deletes early. So it must
        agree within ``max_clock_skew`` with the server's ``Date`` on the latest response,
        carried forward to ``now`` on the monotonic clock (a wall clock stepped since that
        response shows too). None when no response has told the server's time yet (the
        deletion waits for one).
        """
        reading = self.api.clock_reading
        if reading is None:
            return None
        skew = reading.skew_at(now, self.monotonic())
        if abs(skew) > self.options.max_clock_skew:
            ahead = "behind" if skew > timedelta(0) else "ahead of"
            server_now = now + skew
            return (
                f"the local clock ({now.isoformat(timespec='seconds')}) is "
                f"{format_duration(abs(skew))} {ahead} the server's Date "
                f"({server_now.isoformat(timespec='seconds')}, carried forward from the last "
                f"response), more than max_clock_skew "
                f"{format_duration(self.options.max_clock_skew)}"
            )
        return None

    def dry_run(self, conversation: TrackedConversation) -> bool:
        """Whether acting on this conversation only says what it would do."""
        return self.options.dry_run or conversation.dry_run

    def note(self, event: str, count: int) -> None:
        if self.progress is not None:
            self.progress(event, count)


def _older(moment: datetime | None, now: datetime, limit: timedelta) -> bool:
    return moment is None or now - moment > limit
