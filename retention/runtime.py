"""The composition root: the one place that builds objects and wires them together.

:func:`open_runtime` opens the store, the HTTP session, the request budget, the client and the
engine inside one ``AsyncExitStack``, so a failed start closes whatever had been opened, in
reverse order. :func:`run_daemon` adds the metrics, the config watcher, the admin server and the
daemon to that same stack and runs until stopped. The commands, the demo and the Python API
(:mod:`retention.embed`) all start here; nothing else constructs these objects.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from pydantic import SecretStr

from retention.budget import RequestBudget
from retention.client import CustomGPTClient
from retention.config import TOKEN_ENV, Settings
from retention.engine import Engine
from retention.errors import ConfigError
from retention.store import Store
from retention.sweep import EngineOptions, Progress, Sweep

logger = logging.getLogger(__name__)


@dataclass
class Runtime:
    """What one account's work runs on; closed by the stack that built it."""

    settings: Settings
    store: Store
    client: CustomGPTClient
    engine: Engine
    stack: AsyncExitStack

    @property
    def sweep(self) -> Sweep:
        return self.engine.context


def require_token(settings: Settings) -> SecretStr:
    if settings.token is None:
        raise ConfigError(
            f"no API token: set env {TOKEN_ENV} or [api] token_file", source=settings.source
        )
    return settings.token


def engine_options(settings: Settings, *, dry_run: bool) -> EngineOptions:
    return EngineOptions(
        dry_run=dry_run or settings.safety.dry_run,
        reconcile_every=settings.schedule.reconcile_every,
        delete_concurrency=settings.api.max_concurrency,
        policy_change_grace=settings.safety.policy_change_grace,
        facts_max_age=settings.safety.facts_max_age,
        max_clock_skew=settings.safety.max_clock_skew,
    )


@asynccontextmanager
async def open_store(settings: Settings, *, migrate: bool = True) -> AsyncIterator[Store]:
    """The store alone, for commands that make no API call (``status``, ``db upgrade``)."""
    store = await Store.open(settings.store.url, migrate=migrate)
    try:
        yield store
    finally:
        await store.close()


@asynccontextmanager
async def open_runtime(
    settings: Settings, *, dry_run: bool = False, progress: Progress | None = None
) -> AsyncIterator[Runtime]:
    """Store, HTTP session, budget, client and engine, closed in reverse order on exit."""
    token = require_token(settings)
    async with AsyncExitStack() as stack:
        store = await stack.enter_async_context(open_store(settings))
        session = await stack.enter_async_context(aiohttp.ClientSession())
        api = settings.api
        client = CustomGPTClient(
            session,
            base_url=api.base_url,
            token=token,
            budget=RequestBudget(api.requests_per_minute, burst=api.burst),
            max_attempts=api.max_attempts,
            max_concurrency=api.max_concurrency,
            request_timeout=api.request_timeout,
            connect_timeout=api.connect_timeout,
        )
        engine = Engine(
            client,
            store,
            settings.rules(),
            options=engine_options(settings, dry_run=dry_run),
            progress=progress,
        )
        yield Runtime(settings, store, client, engine, stack)


async def run_daemon(runtime: Runtime, *, run_for: float | None = None) -> int:
    """Wire the daemon, its metrics, live reload and admin server onto ``runtime``, and run.

    Runs until SIGTERM or SIGINT (or for ``run_for`` seconds: the demo); returns the exit code.
    """
    # Imported here, not at the top: one-shot commands and the Python API never run the daemon,
    # and need not load APScheduler, aiohttp's server or the metrics registry.
    from retention import web
    from retention.daemon import Cadence, Daemon
    from retention.metrics import Metrics, overdue_after
    from retention.reload import ConfigWatcher

    settings, engine, stack = runtime.settings, runtime.engine, runtime.stack
    schedule = settings.schedule
    client = runtime.client
    metrics = Metrics(
        stats=client.stats,
        budget=client.budget,
        clock_reading=lambda: client.clock_reading,
        max_clock_skew=settings.safety.max_clock_skew,
    )
    engine.listeners.append(metrics.observe_sweep)
    watcher = ConfigWatcher(Path(settings.source), engine, settings)
    daemon = Daemon(
        engine,
        discover=Cadence(schedule.discover_every, schedule.discover_cron),
        delete=Cadence(schedule.delete_every, schedule.delete_cron),
        on_reload=watcher.reload,
    )
    if settings.admin.listen:
        context = web.AdminContext(
            engine=engine,
            store=runtime.store,
            metrics=metrics,
            health=daemon.health,
            admin_token=settings.admin_token,
            ready_after_failing=settings.admin.ready_after_failing,
            overdue_after=overdue_after(schedule.delete_every),
        )
        await stack.enter_async_context(web.serve(context, settings.admin.listen))
    if schedule.watch_config:
        watching = asyncio.create_task(watcher.watch())
        stack.callback(watching.cancel)
    return await daemon.run(run_for=run_for)
