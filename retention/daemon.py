"""The daemon: APScheduler 3.x runs discovery and deletion sweeps; signals stop it gracefully.

Only this module and :mod:`retention.triggers` import APScheduler. Jobs are rebuilt from the
configuration at every start (in-memory job store). Each account has its own two jobs (discovery
and deletion) on its own engine, so an account whose sweeps fail or wait on their budget never
delays another's. Each job is one sweep, ``max_instances=1`` and ``coalesce=True``: a slow sweep
delays the next instead of piling up. A sweep that fails is
logged with its traceback and the daemon runs on. On SIGTERM or SIGINT the daemon stops taking
work, lets running sweeps finish their current item (bounded by ``stop_timeout``), and returns.
Under systemd (``Type=notify``) it says READY once the scheduler runs, STOPPING when a stop
begins, and pings the watchdog from the event loop (:mod:`retention.sdnotify`).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.events import EVENT_JOB_MAX_INSTANCES, JobSubmissionEvent
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.base import BaseTrigger

from retention.engine import Engine
from retention.errors import LeaseLost
from retention.logs import Event, fields
from retention.models import DEFAULT_ACCOUNT
from retention.sdnotify import Notifier
from retention.timefmt import format_duration
from retention.triggers import build_trigger

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Cadence:
    """When a job runs: every ``every``, or on the cron expression when one is given."""

    every: timedelta
    cron: str | None = None

    def trigger(self, key: str) -> BaseTrigger:
        return build_trigger(self.every, self.cron, key=key)  # as `retention check` builds it


def job_key(kind: str, account: str) -> str:
    """A job's name: ``discover`` and ``delete`` for the default account, ``discover:NAME``
    and ``delete:NAME`` for the others."""
    return kind if account == DEFAULT_ACCOUNT else f"{kind}:{account}"


@dataclass
class Health:
    """What the admin surface reports about the sweeps, job by job (see :func:`job_key`).

    Each job keeps its own record, so a discovery that fails every time is not hidden by
    deletion sweeps that succeed (or the other way round).
    """

    started_at: datetime
    last_success_at: dict[str, datetime] = field(default_factory=dict)
    failing_since: dict[str, datetime] = field(default_factory=dict)


class Daemon:
    def __init__(
        self,
        engines: Engine | Sequence[Engine],
        *,
        discover: Cadence,
        delete: Cadence,
        stop_timeout: float = 30.0,
        on_reload: Callable[[], Coroutine[Any, Any, object]] | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.engines = [engines] if isinstance(engines, Engine) else list(engines)
        engine = self.engine = self.engines[0]
        self.discover = discover
        self.delete = delete
        self.stop_timeout = stop_timeout
        self.on_reload = on_reload
        self.notifier = notifier or Notifier(None)  # the runtime passes systemd's, if any
        self.health = Health(started_at=engine.clock())
        self._stop = asyncio.Event()
        self._running: set[asyncio.Task[object]] = set()

    def request_stop(self) -> None:
        if not self._stop.is_set():
            logger.info(
                "stopping: no new sweeps; waiting for running ones to finish",
                extra=fields(Event.DAEMON, outcome="stopping"),
            )
        self._stop.set()
        self.notifier.stopping("stopping: waiting for running sweeps to finish")

    async def run(self, *, run_for: float | None = None) -> int:
        """Run until a signal (or ``run_for`` seconds, for the demo). Returns the exit code."""
        loop = asyncio.get_running_loop()
        scheduler = AsyncIOScheduler(timezone=UTC, event_loop=loop)
        now = datetime.now(UTC)
        for engine in self.engines:
            for kind, cadence, first in (
                ("discover", self.discover, now),
                ("delete", self.delete, now + timedelta(seconds=1)),
            ):
                scheduler.add_job(
                    self._sweep,
                    trigger=cadence.trigger(f"schedule.{kind}_cron"),
                    args=(engine, kind),
                    id=job_key(kind, engine.account),
                    max_instances=1,
                    coalesce=True,
                    next_run_time=first,
                    misfire_grace_time=None,
                )
        scheduler.add_listener(_skipped, EVENT_JOB_MAX_INSTANCES)
        handled = self._install_signals(loop)
        scheduler.start()
        started = (
            f"discovery {_describe(self.discover)}, deletion {_describe(self.delete)}, "
            f"account{'s' if len(self.engines) > 1 else ''} "
            f"{', '.join(e.account for e in self.engines)}"
            f"{' (dry-run)' if self.engine.options.dry_run else ''}"
        )
        logger.info(
            "daemon started: %s",
            started,
            extra=fields(
                Event.DAEMON,
                outcome="started",
                accounts=[e.account for e in self.engines],
                dry_run=self.engine.options.dry_run,
            ),
        )
        # The admin surface is up already (the runtime starts it first): systemd may count the
        # service as started, and from now on expects the watchdog's pings.
        self.notifier.ready(f"running: {started}")
        watchdog = asyncio.create_task(self.notifier.keep_alive())
        try:
            await asyncio.wait_for(self._stop.wait(), timeout=run_for)
        except TimeoutError:
            pass
        finally:
            self.notifier.stopping("stopping: waiting for running sweeps to finish")
            # Stop taking work, let running sweeps finish their current item, then shut down:
            # APScheduler's asyncio executor cancels whatever still runs at shutdown. The
            # watchdog is pinged until then: a drain is no hang.
            try:
                scheduler.pause()
                for engine in self.engines:
                    engine.stop()
                for sig in handled:
                    loop.remove_signal_handler(sig)
                await self._drain()
                scheduler.shutdown(wait=False)
            finally:
                watchdog.cancel()
        logger.info("daemon stopped", extra=fields(Event.DAEMON, outcome="stopped"))
        return 0

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> list[signal.Signals]:
        handled = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self.request_stop)
                handled.append(sig)
            except (NotImplementedError, RuntimeError):  # not the main thread, or no signals
                pass
        if self.on_reload is not None:
            reload = self.on_reload
            try:
                loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(reload()))
                handled.append(signal.SIGHUP)
            except (NotImplementedError, RuntimeError):
                pass
        return handled

    async def _drain(self) -> None:
        running = [t for t in self._running if not t.done()]
        if not running:
            return
        logger.info("waiting up to %.0fs for %d running sweep(s)", self.stop_timeout, len(running))
        _done, pending = await asyncio.wait(running, timeout=self.stop_timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=5)
            logger.warning(
                "%d sweep(s) cancelled at the stop deadline",
                len(pending),
                extra=fields(Event.JOB, outcome="cancelled", count=len(pending)),
            )

    async def _sweep(self, engine: Engine, kind: str) -> None:
        if self._stop.is_set():
            return
        lease = engine.context.lease
        if lease is not None and not lease.valid():
            return  # a replica works only in the accounts whose lease it holds now
        task = asyncio.current_task()
        if task is not None:
            self._running.add(task)
        job = job_key(kind, engine.account)
        try:
            report = await engine.sweep(kind, discover=kind == "discover", delete=kind == "delete")
        except asyncio.CancelledError:
            raise
        except LeaseLost as exc:
            # Handed over, or lost while paused: another replica works in the account now.
            logger.info(
                "%s sweep of account %s stopped: %s",
                kind,
                engine.account,
                exc,
                extra=fields(
                    Event.LEASE, outcome="lost", account=engine.account, job=job, error=str(exc)
                ),
            )
        except Exception:
            # One bad sweep never kills the daemon, nor delays another account's: say what
            # happened and run on; the job runs again at its next time.
            logger.exception(
                "%s sweep of account %s failed",
                kind,
                engine.account,
                extra=fields(Event.JOB, outcome="failed", account=engine.account, job=job),
            )
            self.health.failing_since.setdefault(job, engine.clock())
        else:
            if report.finished_at is not None:
                self.health.last_success_at[job] = report.finished_at
            self.health.failing_since.pop(job, None)
        finally:
            if task is not None:
                self._running.discard(task)


def _skipped(event: JobSubmissionEvent) -> None:
    logger.info(
        "the previous %s sweep is still running: this run is skipped",
        event.job_id,
        extra=fields(Event.JOB, outcome="skipped", job=event.job_id),
    )


def _describe(cadence: Cadence) -> str:
    return f"cron '{cadence.cron}'" if cadence.cron else f"every {format_duration(cadence.every)}"
