"""The commands behind the CLI, and the one place that builds the runtime objects.

``open_runtime`` creates the store, the HTTP session, the client and the engine inside one
AsyncExitStack, so a failed start closes whatever had been opened.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

import aiohttp
from pydantic import SecretStr
from rich.console import Console

from retention import render
from retention.budget import RequestBudget
from retention.client import CustomGPTClient
from retention.config import TOKEN_ENV, Settings
from retention.daemon import Cadence, Daemon
from retention.engine import Engine, EngineOptions, Progress, Rules
from retention.errors import ConfigError
from retention.store import Store

logger = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    store: Store
    client: CustomGPTClient
    engine: Engine


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
    )


@asynccontextmanager
async def open_runtime(
    settings: Settings, *, dry_run: bool = False, progress: Progress | None = None
) -> AsyncIterator[Runtime]:
    token = require_token(settings)
    async with AsyncExitStack() as stack:
        store = await Store.open(settings.store.url)
        stack.push_async_callback(store.close)
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
        policies, holds = settings.rules()
        engine = Engine(
            client,
            store,
            Rules(policies, holds),
            options=engine_options(settings, dry_run=dry_run),
            progress=progress,
        )
        yield Runtime(settings, store, client, engine)


@contextmanager
def terminal_progress() -> Iterator[Progress | None]:
    """A live line on stderr while pages are listed and deletions made; nothing off a TTY."""
    if not sys.stderr.isatty():
        yield None
        return
    console = Console(stderr=True)
    counts = {"pages": 0, "deletions": 0}
    with console.status("starting") as status:

        def update(event: str, count: int) -> None:
            counts[event] = count
            status.update(f"pages listed: {counts['pages']}, deletions: {counts['deletions']}")

        yield update


async def plan(settings: Settings, *, as_json: bool) -> int:
    with terminal_progress() as progress:
        # plan never reaches the deletion code; dry_run here would only mislabel the items.
        async with open_runtime(settings, progress=progress) as runtime:
            items, report = await runtime.engine.plan()
    now = datetime.now(UTC)
    if as_json:
        print(json.dumps(render.plan_json(items, report, now=now), indent=2))
    else:
        render.plan_table(items, now=now, out=sys.stdout)
        calls = sum(report.api_calls.values())
        print(f"{len(items)} due; this plan cost {calls} API calls", file=sys.stderr)
    return 0


async def once(settings: Settings, *, dry_run: bool) -> int:
    with terminal_progress() as progress:
        async with open_runtime(settings, dry_run=dry_run, progress=progress) as runtime:
            report = await runtime.engine.sweep("once")
    print(report.summary())
    return 0 if report.ok and report.failed == 0 else 1


async def run(settings: Settings) -> int:
    logger.info("effective configuration: %s", json.dumps(settings.describe(), sort_keys=True))
    async with open_runtime(settings) as runtime:
        schedule = settings.schedule
        daemon = Daemon(
            runtime.engine,
            discover=Cadence(schedule.discover_every, schedule.discover_cron),
            delete=Cadence(schedule.delete_every, schedule.delete_cron),
        )
        return await daemon.run()


async def status(settings: Settings) -> int:
    store = await Store.open(settings.store.url)
    try:
        now = datetime.now(UTC)
        rows = await store.status(now, overdue_after=settings.schedule.delete_every * 2)
        platform = {}
        for row in rows:
            agent = await store.agent(row.agent_id)
            if agent and agent.platform_retention_period:
                days = agent.platform_retention_days
                period = agent.platform_retention_period
                platform[row.agent_id] = f"{period} ({days}d)" if period == "custom" else period
        render.status_table(rows, platform, now=now, out=sys.stdout)
    finally:
        await store.close()
    return 0


async def db_upgrade(settings: Settings) -> int:
    store = await Store.open(settings.store.url, migrate=False)
    try:
        before, after = await store.upgrade()
    finally:
        await store.close()
    if before == after:
        print(f"store is at {after} (head): nothing to do")
    else:
        print(f"store upgraded from {before or 'empty'} to {after}")
    return 0
