"""The commands behind the CLI, and the one place that builds the runtime objects.

``open_runtime`` creates the store, the HTTP session, the client and the engine inside one
AsyncExitStack, so a failed start closes whatever had been opened.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
from pydantic import SecretStr
from rich.console import Console

from retention import render, tracking, web
from retention.budget import RequestBudget
from retention.client import CustomGPTClient
from retention.config import TOKEN_ENV, Settings, parse_listen
from retention.daemon import Cadence, Daemon
from retention.engine import Engine, EngineOptions, Progress, Rules
from retention.errors import ConfigError
from retention.metrics import Metrics, overdue_after
from retention.models import TrackedConversation
from retention.reload import ConfigWatcher
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
        policy_change_grace=settings.safety.policy_change_grace,
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
    async with AsyncExitStack() as stack:
        runtime = await stack.enter_async_context(open_runtime(settings))
        engine, schedule = runtime.engine, settings.schedule
        metrics = Metrics(stats=runtime.client.stats, budget=runtime.client.budget)
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
        return await daemon.run()


async def create(
    settings: Settings, *, agent_id: int, name: str, ttl: timedelta | None, output: str
) -> int:
    async with open_runtime(settings) as runtime:
        record = await tracking.create(runtime.engine, agent_id=agent_id, name=name, ttl=ttl)
    _print_record(record, output, verb="created")
    return 0


async def track(
    settings: Settings, *, agent_id: int, session_id: str, ttl: timedelta | None, output: str
) -> int:
    async with open_runtime(settings) as runtime:
        record = await tracking.track(
            runtime.engine, agent_id=agent_id, session_id=session_id, ttl=ttl
        )
    _print_record(record, output, verb="tracking")
    return 0


def _print_record(record: TrackedConversation, output: str, *, verb: str) -> None:
    if output == "quiet":
        print(record.session_id)
    elif output == "json":
        print(json.dumps(render.record_json(record, now=datetime.now(UTC)), indent=2))
    else:
        due = render.stamp(record.due_at) if record.due_at else "never"
        print(
            f"{verb} {record.session_id} in agent {record.agent_id} ({record.name!r}): "
            f"due {due} by {record.rule or 'no rule'}"
        )


def probe(settings: Settings, *, ready: bool, timeout: float) -> int:
    """GET /healthz (or /readyz) on the configured admin address; 0 when it answers 200."""
    if not settings.admin.listen:
        raise ConfigError("the admin surface is off ([admin] listen is empty)", key="admin.listen")
    host, port = parse_listen(settings.admin.listen)
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/{'readyz' if ready else 'healthz'}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            print(response.read().decode(errors="replace"))
            return 0
    except urllib.error.HTTPError as exc:
        print(f"{url}: {exc.code} {exc.read().decode(errors='replace')}", file=sys.stderr)
    except (urllib.error.URLError, OSError) as exc:
        print(f"{url}: {exc}", file=sys.stderr)
    return 1


async def status(settings: Settings) -> int:
    store = await Store.open(settings.store.url)
    try:
        now = datetime.now(UTC)
        rows = await store.status(now, overdue_after=overdue_after(settings.schedule.delete_every))
        agents = {row.agent_id: await store.agent(row.agent_id) for row in rows}
        render.status_table(rows, agents, now=now, out=sys.stdout)
        render.sweeps_lines(await store.last_sweeps(5), out=sys.stdout)
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
