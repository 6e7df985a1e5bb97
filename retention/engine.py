"""The engine: orchestrates sweeps (discover, evaluate, delete), plans, and rules changes.

One :class:`Engine` drives one account's :class:`retention.sweep.Sweep`: discovery and deletion
are plain functions over that context, and the store is reached through the small Protocols of
:mod:`retention.sweep`. Policies are reached only through :class:`retention.policy.Rules`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any, ParamSpec, TypeVar

from retention.breaker import Verdict, judge
from retention.clocks import Clock, utc_now
from retention.deletion import delete_due, delete_these, refresh_if_stale
from retention.discovery import discover_all
from retention.errors import ApiError, AuthError, NotFoundError, StoreError
from retention.freshness import walk_where_cheaper
from retention.impact import Impact, Outcome
from retention.logs import ACCOUNT, SWEEP_COUNTERS, Event, fields
from retention.models import (
    DEFAULT_ACCOUNT,
    TTL_RULE,
    AgeFrom,
    PlanItem,
    State,
    SweepReport,
    TrackedConversation,
)
from retention.policy import Rules, explain
from retention.redecision import DecisionRow, StoredDecision, redecide
from retention.sweep import Api, EngineOptions, Progress, Repository, Sweep

logger = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")
RULES_KEY = "rules_fingerprint"
FIRST_RULES_KEY = "first_rules_fingerprint"
# Rows re-evaluated between two yields to the event loop when the rules change: about 40 ms of
# work each, so /healthz and the sweeps go on throughout a change to a store of any size.
REEVALUATE_BATCH = 2000


def _as_account(
    method: Callable[P, Coroutine[Any, Any, R]],
) -> Callable[P, Coroutine[Any, Any, R]]:
    """Every record logged while the engine's ``method`` runs names the engine's account."""

    @functools.wraps(method)
    async def wrapped(*args: P.args, **kwargs: P.kwargs) -> R:
        engine = args[0]
        assert isinstance(engine, Engine)
        token = ACCOUNT.set(engine.account)
        try:
            return await method(*args, **kwargs)
        finally:
            ACCOUNT.reset(token)

    return wrapped


def summary_fields(report: SweepReport) -> dict[str, object]:
    """The sweep summary's fields: its outcome, its counters and API calls as numbers."""
    seconds = (report.finished_at - report.started_at).total_seconds() if report.finished_at else 0
    return fields(
        Event.SWEEP,
        outcome="ok" if report.ok else "failed",
        kind=report.kind,
        dry_run=report.dry_run,
        started_at=report.started_at,
        duration_seconds=round(seconds, 3),
        **{counter: getattr(report, counter) for counter in SWEEP_COUNTERS},
        api_calls=sum(report.api_calls.values()),
        api_calls_by_kind=dict(report.api_calls),
        breaker=list(report.breaker),
        held_back=report.held_back,
        error=report.error,
    )


class Engine:
    """Runs sweeps, plans and rules changes over one account's :class:`Sweep`.

    The runtime builds it; the daemon, the commands and the admin surface call it.
    """

    def __init__(
        self,
        api: Api,
        store: Repository,
        rules: Rules,
        *,
        options: EngineOptions = EngineOptions(),
        clock: Clock = utc_now,
        progress: Progress | None = None,
    ) -> None:
        self.store = store
        self.context = Sweep.over(
            api, store, rules, options=options, clock=clock, progress=progress
        )
        self.listeners: list[Callable[[SweepReport], None]] = []  # told of every sweep's end
        # What the last re-evaluation under changed rules did (newly due, held, ...), or None.
        self.last_impact: Impact | None = None
        self._rules_lock = asyncio.Lock()

    @property
    def options(self) -> EngineOptions:
        return self.context.options

    @property
    def rules(self) -> Rules:
        return self.context.rules

    @property
    def account(self) -> str:
        """The account this engine works in (its store's)."""
        return self.store.account

    def clock(self) -> datetime:
        return self.context.clock()

    def _meta_key(self, key: str) -> str:
        """A store-wide setting of this account's: the default account's keep their old names."""
        return key if self.account == DEFAULT_ACCOUNT else f"{key}:{self.account}"

    def stop(self) -> None:
        """Take no new item: running sweeps finish the one in hand and return."""
        self.context.stopping.set()

    @_as_account
    async def apply_rules(self) -> int:
        """Re-evaluate every live conversation when the rules (or dry-run) changed. Local only.

        With ``policy_change_grace``, a conversation the change makes due (or due sooner) within
        the grace waits until the grace has passed: time to revert a bad edit before it costs
        data. The very first rules a store sees have nothing to be compared with.
        """
        async with self._rules_lock:
            return await self._apply_rules()

    async def _apply_rules(self) -> int:
        context = self.context
        self.last_impact = None  # set again only when this call re-evaluates under new rules
        fingerprint = context.rules.fingerprint(dry_run=context.options.dry_run)
        previous = await self.store.get_meta(self._meta_key(RULES_KEY))
        first = await self.store.get_meta(self._meta_key(FIRST_RULES_KEY))
        if previous is None and first is None:
            context.still_the_writer()
            await self.store.set_meta(self._meta_key(FIRST_RULES_KEY), first := fingerprint)
        # Rules the store has always had bring no agent into scope by an edit, even when a
        # first walk was cut short (a restart, a takeover). A store from before this key
        # existed cannot tell: it counts as edited, which only holds back longer.
        context.rules_seen_before = first != fingerprint
        if previous == fingerprint:
            return 0
        now = self.clock()
        grace = context.options.policy_change_grace
        grace_until = now + grace
        # A conversation left mid-delete keeps its state (the deletion decides it again before
        # it acts), but a change that makes it newly due holds it back too.
        changed = waiting = 0
        impact = Impact(self.account, now)  # what the change does: a reload's summary
        hold_back = grace_until if previous is not None and grace else None
        batches = self.store.decision_batches(REEVALUATE_BATCH)
        decide, everywhere = context.rules.decide, context.options.dry_run
        saving: asyncio.Future[None] | None = None
        reading: asyncio.Future[list[DecisionRow] | None] | None = None
        try:
            reading = asyncio.ensure_future(anext(batches, None))
            while (batch := await reading) is not None:
                reading = asyncio.ensure_future(anext(batches, None))
                writes = []
                for row in batch:
                    after, waits = redecide(
                        row.stored,
                        decide(row.facts, now),
                        now=now,
                        hold_back=hold_back,
                        dry_run_everywhere=everywhere,
                    )
                    waiting += waits
                    if after != row.stored:
                        writes.append((row, after))
                        impact.add(row.facts, _outcome(row.stored), _outcome(after))
                # The next batch is read and this one written (in the driver's threads) while
                # the next is decided: the two cores share the work.
                if saving is not None:
                    await saving
                    saving = None
                if writes:
                    context.still_the_writer()
                    saving = asyncio.ensure_future(self.store.save_decisions(writes))
                    changed += len(writes)
                await asyncio.sleep(0)  # a batch at a time: /healthz and the sweeps go on
            if saving is not None:
                await saving
        finally:
            for task in (reading, saving):  # on a failure: stop both, retrieve their errors
                if task is not None:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
            await batches.aclose()
        context.still_the_writer()
        await self.store.set_meta(self._meta_key(RULES_KEY), fingerprint)
        # Only the dry-run flag moved (`once --dry-run`, then `once`): the rules did not.
        flag_only = previous == context.rules.fingerprint(dry_run=not everywhere)
        self.last_impact = impact
        if changed:
            await self.store.checkpoint()
            decisions = f"{changed} decision{'s' if changed != 1 else ''}"
            if flag_only:
                logger.info(
                    "dry-run turned %s (the rules are unchanged): %s updated (dry-run notes "
                    "dropped: those conversations are deleted when due)",
                    "on" if everywhere else "off",
                    decisions,
                    extra=fields(Event.RULES_CHANGED, changed=changed, cause="dry_run"),
                )
            else:
                logger.info(
                    "rules changed: %s changed and written",
                    decisions,
                    extra=fields(Event.RULES_CHANGED, changed=changed, cause="rules"),
                )
        if waiting:
            logger.warning(
                "rules changed: %s newly due wait%s out the policy change grace until %s",
                f"{waiting} conversation{'s' if waiting != 1 else ''}",
                "s" if waiting == 1 else "",
                grace_until.isoformat(timespec="seconds"),
                extra=fields(Event.GRACE, count=waiting, grace_until=grace_until),
            )
        return changed

    async def set_rules(self, rules: Rules) -> int:
        """Put new rules in force (a reload) and re-evaluate what the store holds."""
        self.context.rules = rules
        return await self.apply_rules()

    @_as_account
    async def sweep(
        self,
        kind: str = "once",
        *,
        discover: bool = True,
        delete: bool = True,
        until_done: bool = False,
        cap: int | None = None,
        only: Sequence[tuple[int, str]] | None = None,
    ) -> SweepReport:
        """One sweep. Failures of single items are counted; a failure of the whole raises.

        A daemon's sweep deletes one batch; ``until_done`` (``once``) goes on batch after batch
        until nothing it may delete is left, at most ``cap`` conversations.
        """
        journal = self.context.journal
        # Before anything is written (daemon, once, apply): a store file removed or replaced
        # under us would take every write (facts, intents, audit) into a file nobody reads again.
        if (lost := await journal.check_identity()) is not None:
            raise StoreError(
                f"the store is lost: {lost}; this sweep deletes nothing and discovers nothing "
                "(its writes would be lost): stop the daemon, restore the store from a backup "
                "(README: Deployment) or remove it, and start again"
            )
        report = SweepReport(
            kind=kind, started_at=self.clock(), dry_run=self.options.dry_run, account=self.account
        )
        sweep_id = await journal.start_sweep(report)
        with self.context.api.stats.scope() as calls:
            try:
                await self.apply_rules()
                if discover:
                    await discover_all(self.context, report)
                if delete and only is not None:
                    await delete_these(self.context, report, only, sweep_id=sweep_id)
                elif delete:
                    await delete_due(
                        self.context, report, sweep_id=sweep_id, until_done=until_done, cap=cap
                    )
            except BaseException as exc:
                report.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                raise
            finally:
                report.finished_at = self.clock()
                report.api_calls = dict(sorted(calls.items()))
                await asyncio.shield(journal.finish_sweep(sweep_id, report))
                log = logger.info if report.ok else logger.error
                log("%s", report.summary(), extra=summary_fields(report))
                for listener in self.listeners:
                    listener(report)
        return report

    async def breaker_verdict(self, now: datetime) -> Verdict:
        """Where the mass-deletion breaker stops deletion now (nowhere under dry-run)."""
        if self.options.dry_run:
            return Verdict()
        return judge(await self.store.due_figures(now), self.options.breaker)

    async def remaining(self, *, among: Sequence[tuple[int, str]] | None = None) -> int:
        """How many conversations a deletion sweep would still take now (dry-run notes aside),
        whatever the breaker says; of ``among`` only, when given."""
        now = self.clock()
        due = await self.store.due(now, limit=1_000_000, skip_dry_run_noted=True)
        if among is not None:
            keys = set(among)
            due = [c for c in due if (c.agent_id, c.session_id) in keys]
        return len(due)

    def fingerprint(self) -> str:
        """The rules in force, and the dry-run flag: what a plan is made under."""
        return self.rules.fingerprint(dry_run=self.options.dry_run)

    @_as_account
    async def plan(
        self, *, discover: bool = True, confirm: bool = True
    ) -> tuple[list[PlanItem], SweepReport]:
        """What is due now, including what waits out a policy change's grace. Deletes nothing.

        With ``confirm``, a candidate whose decision rests on stale facts (a name, an
        ``updated_at``, a newest message) has them read again as a deletion would (one GET
        each, or a walk of its agent where that is cheaper); without it (the admin API),
        nothing is sent and such items are marked unconfirmed.
        """
        report = SweepReport(
            kind="plan", started_at=self.clock(), dry_run=self.options.dry_run, account=self.account
        )
        context = self.context
        with context.api.stats.scope() as calls:
            if context.lease is None or context.lease.valid():
                # Another replica's account is re-evaluated by that replica: this one plans
                # from the decisions stored there (the admin surface's reads).
                await self.apply_rules()
            if discover:
                await discover_all(context, report)
            now = self.clock()
            candidates = await self.store.due(now, limit=1_000_000, include_waiting=True)
            if confirm:
                await walk_where_cheaper(context, candidates, report, now)
                candidates = await self.store.due(now, limit=1_000_000, include_waiting=True)
            confirmed = []
            for candidate in candidates:
                current = context.evaluate(candidate, now)
                if confirm:
                    try:
                        current = await refresh_if_stale(context, current, now)
                    except NotFoundError:
                        continue  # gone already: nothing to plan
                    except AuthError:
                        raise
                    except ApiError as exc:
                        logger.warning("plan: could not read %s again: %s", current.name, exc)
                confirmed.append(current)
        report.api_calls = dict(sorted(calls.items()))
        verdict = await self.breaker_verdict(now)
        report.breaker = verdict.reasons()
        report.held_back = context.clock_skew_problem(now)
        items = [
            replace(item, held_by_breaker=verdict.stops(item.agent_id) and not current.approved_at)
            for current in confirmed
            if (item := self._plan_item(current, now)) is not None
        ]
        report.due = len(items)
        report.finished_at = self.clock()
        return items, report

    def _plan_item(self, current: TrackedConversation, now: datetime) -> PlanItem | None:
        if current.due_at is None or current.due_at > now or current.state is State.HELD:
            return None
        waiting = current.grace_until if current.grace_until and current.grace_until > now else None
        age_from, started = _clock_of(current)
        return PlanItem(
            account=self.account,
            agent_id=current.agent_id,
            session_id=current.session_id,
            name=current.name,
            rule=current.rule,
            due_at=current.due_at,
            age=now - started,
            age_from=age_from,
            basis=current.reason or "",
            reason=explain(current.reason, current.due_at, now),
            dry_run=self.context.dry_run(current),
            state=current.state,
            grace_until=waiting,
            retry_at=current.retry_at if current.retry_at and current.retry_at > now else None,
            unconfirmed=bool(self.context.stale_facts(current, now)),
        )


def _clock_of(current: TrackedConversation) -> tuple[str, datetime]:
    """The clock the deciding rule measures age on, and when it started: the start
    :func:`retention.policy.decide` adds ``max_age`` (or the TTL) to. A plan shows the age on
    it, as the deletion's log line does ("max_age 30d from last activity; due since 2h")."""
    if current.rule == TTL_RULE and current.ttl is not None:
        return TTL_RULE, current.ttl_from or current.created_at
    if current.age_from is AgeFrom.UPDATED:
        return AgeFrom.UPDATED.value, current.updated_at
    if current.age_from is AgeFrom.LAST_ACTIVITY:
        if current.last_activity_at is not None:
            return AgeFrom.LAST_ACTIVITY.value, max(current.last_activity_at, current.created_at)
        # Newest message not known yet: no earlier than creation or a rename (unconfirmed).
        return AgeFrom.LAST_ACTIVITY.value, max(current.created_at, current.updated_at)
    return AgeFrom.CREATED.value, current.created_at


def _outcome(stored: StoredDecision) -> Outcome:
    """A stored decision as :mod:`retention.impact` compares them."""
    held = stored.state is State.HELD
    return Outcome(held, stored.rule, stored.due_at, stored.provisional, stored.dry_run)
