"""The composition root: the one place that builds objects and wires them together.

:func:`open_runtime` opens the store, the HTTP session, the request budget, the client and the
engine inside one ``AsyncExitStack``, so a failed start closes whatever had been opened, in
reverse order. :func:`run_daemon` adds the metrics, the config watcher, the admin server and the
daemon to that same stack and runs until stopped. The commands, the demo and the Python API
(:mod:`retention.embed`) all start here; nothing else constructs these objects.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from pydantic import SecretStr
from sqlalchemy.engine import make_url

from retention.breaker import Limits
from retention.budget import RequestBudget
from retention.client import CustomGPTClient
from retention.config import ENV_PREFIX, TOKEN_ENV, Settings, check_admin_listen
from retention.engine import Engine
from retention.errors import ConfigError
from retention.lease import LeaseKeeper
from retention.logs import Secrets
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
    lease: LeaseKeeper | None = None  # held by writers (run, once, apply)

    @property
    def sweep(self) -> Sweep:
        return self.engine.context


def require_token(settings: Settings) -> SecretStr:
    if settings.token is None:
        raise ConfigError(
            f"no API token: set env {TOKEN_ENV} or [api] token_file", source=settings.source
        )
    return settings.token


def secrets_of(settings: Settings) -> Secrets:
    """The values no output may show: the API token and the admin token.

    Handed to the client, which scrubs the server's text with it where that text enters (the
    server may echo either token), and to the log handler.
    """
    return Secrets(t.get_secret_value() for t in (settings.token, settings.admin_token) if t)


def preflight(settings: Settings) -> None:
    """The start-up checks ``run`` makes, minus the network; ``check`` makes exactly these.

    The schedule's triggers are built as the daemon builds them (APScheduler parses the crons:
    loaded only when there is one), and the admin address meets the rule the admin server
    applies. A problem is one ConfigError naming the file (or env variable) and the key.
    """
    schedule = settings.schedule
    try:
        if schedule.discover_cron or schedule.delete_cron:
            from retention.triggers import build_trigger

            build_trigger(
                schedule.discover_every, schedule.discover_cron, key="schedule.discover_cron"
            )
            build_trigger(schedule.delete_every, schedule.delete_cron, key="schedule.delete_cron")
        check_admin_listen(settings.admin.listen, settings.admin_token)
    except ConfigError as exc:
        if exc.source is not None or exc.key is None:
            raise
        env_name = ENV_PREFIX + exc.key.replace(".", "__").upper()
        source = f"env {env_name}" if env_name in os.environ else settings.source
        raise ConfigError(exc.problem, source=source, key=exc.key) from None


def engine_options(settings: Settings, *, dry_run: bool) -> EngineOptions:
    return EngineOptions(
        dry_run=dry_run or settings.safety.dry_run,
        reconcile_every=settings.schedule.reconcile_every,
        delete_concurrency=settings.api.max_concurrency,
        policy_change_grace=settings.safety.policy_change_grace,
        facts_max_age=settings.safety.facts_max_age,
        max_clock_skew=settings.safety.max_clock_skew,
        breaker=breaker_limits(settings),
    )


def breaker_limits(settings: Settings) -> Limits:
    safety = settings.safety
    return Limits(
        max_deletions=safety.max_deletions,
        max_due_fraction=safety.max_due_fraction,
        floor=safety.breaker_floor,
    )


@asynccontextmanager
async def open_store(
    settings: Settings, *, migrate: bool = True, create: bool = True, current: bool = True
) -> AsyncIterator[Store]:
    """The store alone, for commands that make no API call (``status``, ``db upgrade``).

    ``create=False`` (the commands that only read, and ``plan``) neither creates nor migrates:
    a missing, empty or outdated store is a ConfigError naming the path and the command that
    makes it current. ``current=False`` takes one at an older migration too (``db backup``).
    """
    try:
        store = await Store.open(
            settings.store.url, migrate=migrate, create=create, current=current
        )
    except ConfigError as exc:
        if exc.key != "store.url" or exc.source is not None:
            raise
        raise ConfigError(
            f"{exc.problem}: `retention db upgrade --config {settings.source}` creates or "
            "migrates it (`retention run` does too)",
            source=settings.source,
            key=exc.key,
        ) from None
    try:
        yield store
    finally:
        await store.close()


@asynccontextmanager
async def open_runtime(
    settings: Settings,
    *,
    dry_run: bool = False,
    progress: Progress | None = None,
    create: bool = True,
    writer: bool = False,
    standby: bool = False,
) -> AsyncIterator[Runtime]:
    """Store, HTTP session, budget, client and engine, closed in reverse order on exit.

    ``create=False``: the store must exist and be current (see :func:`open_store`). A
    ``writer`` (run, once, apply) takes the store's lease first and keeps it while it runs
    (see :mod:`retention.lease`); ``standby`` waits for it instead of refusing.
    """
    token = require_token(settings)
    for warning in settings.warnings:
        logger.warning("%s", warning)
    async with AsyncExitStack() as stack:
        store = await stack.enter_async_context(open_store(settings, create=create))
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
            secrets=secrets_of(settings),
        )
        engine = Engine(
            client,
            store,
            settings.rules(),
            options=engine_options(settings, dry_run=dry_run),
            progress=progress,
        )
        keeper = None
        if writer:
            keeper = LeaseKeeper(
                store, ttl=settings.store.lease_ttl, lock_file=lock_file_of(settings)
            )
            await keeper.take(standby=standby)
            stack.push_async_callback(keeper.release)
            keeping = asyncio.create_task(keeper.keep())
            stack.callback(keeping.cancel)
            engine.context.lease = keeper
        yield Runtime(settings, store, client, engine, stack, keeper)


def lock_file_of(settings: Settings) -> Path | None:
    """The OS lock file beside a SQLite store (None for other databases)."""
    url = make_url(settings.store.url)
    if url.get_backend_name() != "sqlite" or not url.database:
        return None
    return Path(url.database + ".lock")


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
    keeper = runtime.lease
    if keeper is not None:  # a lost lease stops the daemon: another writer has taken over

        async def stop_when_lost() -> None:
            await keeper.lost.wait()
            daemon.request_stop()

        losing = asyncio.create_task(stop_when_lost())
        stack.callback(losing.cancel)
    # Everything built so far lives as long as the daemon: kept out of the cyclic collector's
    # full passes, which otherwise walk every imported module's objects again and again (a
    # fifth of a rules change's time on a store of a million). What is garbage now goes first.
    gc.collect()
    gc.freeze()
    try:
        code = await daemon.run(run_for=run_for)
    finally:
        gc.unfreeze()  # an in-process caller (the demo, a test) gets its collector back whole
    return 1 if keeper is not None and keeper.lost.is_set() else code
