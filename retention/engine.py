"""The engine: one sweep = discover, evaluate, delete. It talks to the API and the store only
through the small Protocols below, and to policies only through :func:`retention.policy.decide`.

The engine never deletes in an agent while it walks that agent's pages: a per-agent gate keeps
discovery and deletion of one agent apart, because a deletion on a page already read pulls the
rest up and the walk would silently skip items.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Protocol

from retention.budget import CallStats
from retention.deletion import confirm_activity, delete_due
from retention.discovery import discover_all
from retention.models import (
    Agent,
    AgentRecord,
    AgentSettings,
    AuditRecord,
    Conversation,
    DecisionKind,
    DeleteOutcome,
    Listing,
    State,
    SweepReport,
    TrackedConversation,
)
from retention.policy import Hold, Policy, decide

logger = logging.getLogger(__name__)
RULES_KEY = "rules_fingerprint"
Progress = Callable[[str, int], None]  # ("pages" | "deletions", how many so far)


class Api(Protocol):
    """What the engine needs from the CustomGPT client."""

    stats: CallStats

    async def list_agents(self) -> list[Agent]: ...
    async def list_conversations(
        self, agent_id: int, *, newer_than: int | None = None
    ) -> Listing: ...
    async def delete_conversation(self, agent_id: int, session_id: str) -> DeleteOutcome: ...
    async def last_activity(self, agent_id: int, session_id: str) -> datetime | None: ...
    async def agent_settings(self, agent_id: int) -> AgentSettings: ...
    async def create_conversation(self, agent_id: int, name: str) -> Conversation: ...
    async def conversation_info(
        self, agent_id: int, session_id: str
    ) -> tuple[Conversation, datetime | None]: ...


class Repository(Protocol):
    """What the engine needs from the store."""

    async def agent(self, agent_id: int) -> AgentRecord | None: ...
    async def save_agent(self, record: AgentRecord, *, now: datetime) -> None: ...
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
    async def save_decisions(self, items: Sequence[TrackedConversation]) -> None: ...
    async def touch(self, agent_id: int, session_ids: Iterable[str], *, now: datetime) -> None: ...
    async def due(
        self,
        now: datetime,
        *,
        limit: int,
        skip_dry_run_noted: bool = False,
        include_waiting: bool = False,
    ) -> list[TrackedConversation]: ...
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
    ) -> None: ...
    async def note_dry_run(self, agent_id: int, session_id: str, *, now: datetime) -> None: ...
    async def add_audit(self, record: AuditRecord, *, sweep_id: int | None = None) -> None: ...
    async def start_sweep(self, report: SweepReport) -> int: ...
    async def finish_sweep(self, sweep_id: int, report: SweepReport) -> None: ...
    async def get_meta(self, key: str) -> str | None: ...
    async def set_meta(self, key: str, value: str) -> None: ...


@dataclass(frozen=True)
class Rules:
    """The policies and holds in force, in file order."""

    policies: tuple[Policy, ...]
    holds: tuple[Hold, ...]

    def fingerprint(self, *, dry_run: bool) -> str:
        text = repr((self.policies, self.holds, dry_run))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def agents_in_scope(self) -> frozenset[int] | None:
        """The agents discovery must cover; None means every agent of the account."""
        if any(p.agents is None for p in self.policies):
            return None
        return frozenset(a for p in self.policies for a in (p.agents or ()))


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


@dataclass(frozen=True)
class PlanItem:
    """One conversation that is due (``plan`` and the admin API show these)."""

    agent_id: int
    session_id: str
    name: str
    rule: str | None
    due_at: datetime
    age: timedelta
    reason: str
    dry_run: bool
    state: State
    grace_until: datetime | None = None  # waiting out a policy change's grace until then
    retry_at: datetime | None = None  # a DELETE failed; the next attempt waits until then
    unconfirmed: bool = False  # a last-activity rule whose newest message was not read


class AgentGate:
    """Walks of one agent's list exclude its deletions; deletions share the gate among them.

    A waiting walk goes first, so a long run of deletions cannot keep discovery out.
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


class Engine:
    """Holds what a sweep needs; the CLI builds it and the daemon calls it."""

    def __init__(
        self,
        api: Api,
        store: Repository,
        rules: Rules,
        *,
        options: EngineOptions = EngineOptions(),
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        progress: Progress | None = None,
    ) -> None:
        self.api = api
        self.store = store
        self.rules = rules
        self.options = options
        self.clock = clock
        self.progress = progress
        self.stopping = asyncio.Event()
        self.listeners: list[Callable[[SweepReport], None]] = []  # told of every sweep's end
        self._gates: dict[int, AgentGate] = {}
        self._rules_lock = asyncio.Lock()

    def gate(self, agent_id: int) -> AgentGate:
        return self._gates.setdefault(agent_id, AgentGate())

    def evaluate(self, conversation: TrackedConversation, now: datetime) -> TrackedConversation:
        """Apply the rules in force to one conversation; its state follows holds."""
        decision = decide(
            conversation.facts(), policies=self.rules.policies, holds=self.rules.holds, now=now
        )
        state = conversation.state
        if state in (State.ACTIVE, State.HELD):
            state = State.HELD if decision.kind is DecisionKind.HELD else State.ACTIVE
        return replace(
            conversation,
            state=state,
            due_at=decision.due_at,
            rule=decision.rule,
            reason=decision.reason,
            provisional=decision.provisional,
        )

    async def apply_rules(self) -> int:
        """Re-evaluate every live conversation when the rules (or dry-run) changed. Local only.

        With ``policy_change_grace``, a conversation the change makes due (or due sooner) within
        the grace waits until the grace has passed: time to revert a bad edit before it costs
        data. The very first rules a store sees have nothing to be compared with.
        """
        async with self._rules_lock:
            return await self._apply_rules()

    async def _apply_rules(self) -> int:
        fingerprint = self.rules.fingerprint(dry_run=self.options.dry_run)
        previous = await self.store.get_meta(RULES_KEY)
        if previous == fingerprint:
            return 0
        now = self.clock()
        grace_until = now + self.options.policy_change_grace
        # A conversation mid-delete is decided again by the deletion itself, just before it acts.
        live = await self.store.conversations(states=(State.ACTIVE, State.HELD))
        changed = []
        waiting = 0
        for before in live:
            after = self.evaluate(before, now)
            # A dry-run note stands while the same decision stays dry-run; otherwise it goes,
            # so that the conversation is deleted (or noted afresh) by the next sweep.
            still_dry = self.options.dry_run or self.policy_dry_run(after.rule)
            decided_again = (after.rule, after.due_at) != (before.rule, before.due_at)
            if decided_again or not still_dry:
                after = replace(after, dry_run_noted_at=None)
            sooner = after.due_at is not None and (
                before.due_at is None or after.due_at < before.due_at
            )
            if previous is not None and sooner and after.due_at < grace_until:  # type: ignore[operator]
                after = replace(after, grace_until=grace_until)
                waiting += 1
            elif not sooner:
                after = replace(after, grace_until=None)
            if after != before:
                changed.append(after)
        await self.store.save_decisions(changed)
        await self.store.set_meta(RULES_KEY, fingerprint)
        if changed:
            logger.info("rules changed: re-evaluated %d conversations", len(changed))
        if waiting:
            logger.warning(
                "rules changed: %d conversations newly due wait out the policy change grace "
                "until %s",
                waiting,
                grace_until.isoformat(timespec="seconds"),
            )
        return len(changed)

    async def set_rules(self, rules: Rules) -> int:
        """Put new rules in force (a reload) and re-evaluate what the store holds."""
        self.rules = rules
        return await self.apply_rules()

    async def sweep(
        self, kind: str = "once", *, discover: bool = True, delete: bool = True
    ) -> SweepReport:
        """One sweep. Failures of single items are counted; a failure of the whole raises."""
        report = SweepReport(kind=kind, started_at=self.clock(), dry_run=self.options.dry_run)
        sweep_id = await self.store.start_sweep(report)
        with self.api.stats.scope() as calls:
            try:
                await self.apply_rules()
                if discover:
                    await discover_all(self, report)
                if delete:
                    await delete_due(self, report, sweep_id=sweep_id)
            except BaseException as exc:
                report.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                raise
            finally:
                report.finished_at = self.clock()
                report.api_calls = dict(sorted(calls.items()))
                await asyncio.shield(self.store.finish_sweep(sweep_id, report))
                log = logger.info if report.ok else logger.error
                log("%s", report.summary())
                for listener in self.listeners:
                    listener(report)
        return report

    async def plan(
        self, *, discover: bool = True, confirm: bool = True
    ) -> tuple[list[PlanItem], SweepReport]:
        """What is due now, including what waits out a policy change's grace. Deletes nothing.

        With ``confirm``, a last-activity candidate's newest message is read (one GET each);
        without it (the admin API), nothing is sent and such items are marked unconfirmed.
        """
        report = SweepReport(kind="plan", started_at=self.clock(), dry_run=self.options.dry_run)
        with self.api.stats.scope() as calls:
            await self.apply_rules()
            if discover:
                await discover_all(self, report)
            now = self.clock()
            candidates = await self.store.due(now, limit=1_000_000, include_waiting=True)
            confirmed = []
            for candidate in candidates:
                current = self.evaluate(candidate, now)
                if confirm:
                    current = await confirm_activity(self, current, now)
                confirmed.append(current)
        report.api_calls = dict(sorted(calls.items()))
        items = [
            item
            for current in confirmed
            if (item := self._plan_item(current, now, confirm=confirm)) is not None
        ]
        report.due = len(items)
        report.finished_at = self.clock()
        return items, report

    def _plan_item(
        self, current: TrackedConversation, now: datetime, *, confirm: bool
    ) -> PlanItem | None:
        if current.due_at is None or current.due_at > now or current.state is State.HELD:
            return None
        waiting = current.grace_until if current.grace_until and current.grace_until > now else None
        return PlanItem(
            agent_id=current.agent_id,
            session_id=current.session_id,
            name=current.name,
            rule=current.rule,
            due_at=current.due_at,
            age=now - current.created_at,
            reason=current.reason or "",
            dry_run=self.options.dry_run or self.policy_dry_run(current.rule),
            state=current.state,
            grace_until=waiting,
            retry_at=current.retry_at if current.retry_at and current.retry_at > now else None,
            unconfirmed=current.provisional and not confirm,
        )

    def policy_dry_run(self, rule: str | None) -> bool:
        return any(p.name == rule and p.dry_run for p in self.rules.policies)

    def note(self, event: str, count: int) -> None:
        if self.progress is not None:
            self.progress(event, count)
