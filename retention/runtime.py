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
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import aiohttp
from pydantic import SecretStr
from sqlalchemy.engine import make_url

from retention.breaker import Limits
from retention.budget import RequestBudget
from retention.chain import Verdict
from retention.client import CustomGPTClient
from retention.clocks import utc_now
from retention.config import ENV_PREFIX, TOKEN_ENV, Account, Settings, check_admin_listen
from retention.engine import Engine
from retention.errors import ConfigError
from retention.lease import LeaseKeeper, holder_name, lease_scope
from retention.logs import Secrets
from retention.models import DEFAULT_ACCOUNT
from retention.replicas import Replicas, Slot
from retention.store import Store
from retention.sweep import EngineOptions, Progress, Sweep
from retention.timefmt import format_duration

logger = logging.getLogger(__name__)


@dataclass
class Runtime:
    """What one account's work runs on; closed by the stack that built it."""

    settings: Settings
    store: Store  # the account's view of the store
    client: CustomGPTClient
    engine: Engine
    stack: AsyncExitStack
    lease: LeaseKeeper | None = None  # held by writers (run, once, apply)
    account: str = DEFAULT_ACCOUNT

    @property
    def sweep(self) -> Sweep:
        return self.engine.context


@dataclass
class Fleet:
    """Every account's :class:`Runtime`, in the config's order, on one store and one HTTP
    session; each account has its own token, request budget, rules, engine and lease."""

    settings: Settings
    store: Store  # the default account's view; each runtime has its own
    runtimes: dict[str, Runtime]
    stack: AsyncExitStack
    replicas: Replicas | None = None  # sharing the accounts with other replicas (run)

    def __iter__(self) -> Iterator[Runtime]:
        return iter(self.runtimes.values())

    def one(self, name: str | None = None) -> Runtime:
        """The named account's runtime, or the only one (a ConfigError among several)."""
        return self.runtimes[self.settings.account(name).name]


def require_token(settings: Settings, account: Account | None = None) -> SecretStr:
    account = account or settings.account(None)
    if account.token is None:
        if account.name == DEFAULT_ACCOUNT and not settings.accounts:
            where = f"set env {TOKEN_ENV} or [api] token_file"
        else:
            where = f"its token_env or token_file gives none ({account.token_source})"
        raise ConfigError(
            f"no API token for account {account.name!r}: {where}", source=settings.source
        )
    return account.token


def secrets_of(settings: Settings) -> Secrets:
    """The values no output may show: every account's API token and the admin token.

    Handed to the clients, which scrub the server's text with it where that text enters (the
    server may echo any token), and to the log handler.
    """
    tokens = [a.token for a in settings.account_list()] + [settings.admin_token]
    return Secrets(t.get_secret_value() for t in tokens if t)


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
        check_replica_timing(settings)
    except ConfigError as exc:
        if exc.source is not None or exc.key is None:
            raise
        env_name = ENV_PREFIX + exc.key.replace(".", "__").upper()
        source = f"env {env_name}" if env_name in os.environ else settings.source
        raise ConfigError(exc.problem, source=source, key=exc.key) from None


def check_replica_timing(settings: Settings) -> None:
    """On a shared database every `run` is a replica, which sends a request under an account's
    lease only while the lease outlasts the request timeout (so every request has ended before
    another replica can take the account over). Renewed every third of its time, the lease
    must be at least twice the request timeout for requests to go out at all."""
    if is_sqlite(settings.store.url):
        return
    ttl, timeout = settings.store.lease_ttl, settings.api.request_timeout
    if ttl < 2 * timeout:
        raise ConfigError(
            f"replicas on a shared store need lease_ttl ({format_duration(ttl)}) at least twice "
            f"[api] request_timeout ({format_duration(timeout)}): raise it to "
            f"{format_duration(2 * timeout)}, or lower request_timeout",
            key="store.lease_ttl",
        )


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
    account: str | None = None,
    dry_run: bool = False,
    progress: Progress | None = None,
    create: bool = True,
    writer: bool = False,
    standby: bool = False,
) -> AsyncIterator[Runtime]:
    """One account's store view, HTTP session, budget, client and engine, closed in reverse
    order on exit: the named account, or the only one (a ConfigError among several).

    ``create=False``: the store must exist and be current (see :func:`open_store`). A
    ``writer`` (once, apply, create, track) takes the account's lease first and keeps it while
    it runs (see :mod:`retention.lease`); ``standby`` waits for it instead of refusing.
    """
    chosen = settings.account(account).name
    async with open_fleet(
        settings,
        accounts=[chosen],
        dry_run=dry_run,
        progress=progress,
        create=create,
        writer=writer,
        standby=standby,
    ) as fleet:
        yield fleet.runtimes[chosen]


@asynccontextmanager
async def open_fleet(
    settings: Settings,
    *,
    accounts: Sequence[str] | None = None,
    dry_run: bool = False,
    progress: Progress | None = None,
    create: bool = True,
    writer: bool = False,
    standby: bool = False,
    replica: bool = False,
) -> AsyncIterator[Fleet]:
    """A :class:`Runtime` for each account (``accounts``: these only), on one store and one
    HTTP session. A ``writer`` takes every account's lease (see :func:`open_runtime`); a
    ``replica`` takes none here: its :class:`Replicas` takes its share as it runs."""
    chosen = [a for a in settings.account_list() if accounts is None or a.name in accounts]
    tokens = {a.name: require_token(settings, a) for a in chosen}
    for warning in settings.warnings:
        logger.warning("%s", warning)
    secrets = secrets_of(settings)
    rules = settings.rules()
    async with AsyncExitStack() as stack:
        root = await stack.enter_async_context(open_store(settings, create=create))
        # One session for every account: room for each account's requests in flight at once
        # (aiohttp's default of 100 connections would have many accounts wait on each other).
        room = max(100, sum(a.max_concurrency for a in chosen))
        connector = aiohttp.TCPConnector(limit=room)
        session = await stack.enter_async_context(aiohttp.ClientSession(connector=connector))
        runtimes: dict[str, Runtime] = {}
        for account in chosen:
            store = root.for_account(account.name)
            client = CustomGPTClient(
                session,
                base_url=account.base_url,
                token=tokens[account.name],
                budget=RequestBudget(account.requests_per_minute, burst=account.burst),
                max_attempts=account.max_attempts,
                max_concurrency=account.max_concurrency,
                request_timeout=account.request_timeout,
                connect_timeout=account.connect_timeout,
                secrets=secrets,
            )
            engine = Engine(
                client,
                store,
                rules.for_account(account.name),
                options=engine_options(settings, dry_run=dry_run),
                progress=progress,
            )
            runtimes[account.name] = Runtime(
                settings, store, client, engine, stack, account=account.name
            )
        if writer or replica:
            await _refuse_unknown_accounts(settings, root)
        replicas = None
        if replica:
            replicas = _replicas(settings, root, runtimes)
        elif writer:
            for runtime in runtimes.values():
                runtime.lease = await _take_lease(settings, runtime, stack, standby=standby)
        yield Fleet(settings, root, runtimes, stack, replicas)


async def _refuse_unknown_accounts(settings: Settings, store: Store) -> None:
    """A writer starts only when every account with live conversations in the store is one
    the config names (or retires). Renaming an account in the config would otherwise leave
    its rows (own TTLs, deletions in progress, audit) under the old name, unseen, while the
    conversations are found again under the new one, without their TTLs."""
    known = {a.name for a in settings.account_list()} | set(settings.store.retired_accounts)
    unknown = {n: c for n, c in (await store.live_accounts()).items() if n not in known}
    if unknown:
        listed = ", ".join(f"{n!r} ({c} live)" for n, c in sorted(unknown.items()))
        raise ConfigError(
            f"the store holds conversations of accounts this config does not name: {listed}. "
            "If an account was renamed, give it its old name back (a config without "
            "[[accounts]] serves 'default'); if it is gone for good, list it in [store] "
            "retired_accounts (its rows are kept, and nothing is done in it)",
            source=settings.source,
            key="accounts",
        )


def _replicas(settings: Settings, root: Store, runtimes: dict[str, Runtime]) -> Replicas:
    """A lease per account, not taken yet, guarding its engine and client: the replica's
    coordinator takes and hands them over as the live replicas change."""
    holder = holder_name(utc_now())
    slots = []
    for runtime in runtimes.values():
        keeper = LeaseKeeper(
            runtime.store,
            scope=lease_scope(runtime.account),
            ttl=settings.store.lease_ttl,
            holder=holder,
            margin=settings.api.request_timeout,
        )
        runtime.lease = runtime.engine.context.lease = keeper
        runtime.client.identify = keeper.describe
        slots.append(Slot(runtime.account, keeper, idle=runtime.client.idle))
    return Replicas(
        root,
        slots,
        holder=holder,
        ttl=settings.store.lease_ttl,
        request_timeout=settings.api.request_timeout,
    )


async def _take_lease(
    settings: Settings, runtime: Runtime, stack: AsyncExitStack, *, standby: bool
) -> LeaseKeeper:
    keeper = LeaseKeeper(
        runtime.store,
        scope=lease_scope(runtime.account),
        ttl=settings.store.lease_ttl,
        lock_file=lock_file_of(settings, runtime.account),
    )
    await keeper.take(standby=standby)
    stack.push_async_callback(keeper.release)
    keeping = asyncio.create_task(keeper.keep())
    stack.callback(keeping.cancel)
    runtime.engine.context.lease = keeper
    runtime.client.identify = keeper.describe
    return keeper


async def _stopped(task: asyncio.Task[None]) -> None:
    """Cancel a background task and wait for it to end (its own clean-up included)."""
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def is_sqlite(url: str) -> bool:
    """Whether the store is a SQLite file (one writer) rather than a shared database."""
    return make_url(url).get_backend_name() == "sqlite"


def lock_file_of(settings: Settings, account: str = DEFAULT_ACCOUNT) -> Path | None:
    """The OS lock file of an account's lease beside a SQLite store (None for other
    databases): ``retention.db.lock`` for the default account, ``retention.db.NAME.lock``."""
    url = make_url(settings.store.url)
    if url.get_backend_name() != "sqlite" or not url.database:
        return None
    infix = "" if account == DEFAULT_ACCOUNT else f".{account}"
    return Path(f"{url.database}{infix}.lock")


async def run_daemon(fleet: Fleet | Runtime, *, run_for: float | None = None) -> int:
    """Wire the daemon, its metrics, live reload and admin server onto every account's runtime
    (or one), and run.

    Runs until SIGTERM or SIGINT (or for ``run_for`` seconds: the demo); returns the exit code.
    """
    # Imported here, not at the top: one-shot commands and the Python API never run the daemon,
    # and need not load APScheduler, aiohttp's server or the metrics registry.
    from retention import web
    from retention.admin import AdminContext
    from retention.auditwatch import Watched
    from retention.auditwatch import watch as watch_chains
    from retention.daemon import Cadence, Daemon
    from retention.metrics import Metrics, overdue_after
    from retention.reload import ConfigWatcher
    from retention.report import default_overdue_after
    from retention.sdnotify import Notifier

    runtimes = list(fleet) if isinstance(fleet, Fleet) else [fleet]
    settings, stack = fleet.settings, fleet.stack
    schedule = settings.schedule
    metrics = Metrics(max_clock_skew=settings.safety.max_clock_skew)
    for runtime in runtimes:
        client = runtime.client
        metrics.add_account(
            runtime.account,
            stats=client.stats,
            budget=client.budget,
            clock_reading=client.latest_clock_reading,
            held=runtime.lease.valid if runtime.lease is not None else None,
        )
        runtime.engine.listeners.append(metrics.observe_sweep)
    engines = [r.engine for r in runtimes]
    watcher = ConfigWatcher(Path(settings.source), engines, settings)
    metrics.last_reload.set(utc_now().timestamp())  # the rules in force date from the start
    watcher.listeners.append(lambda ok: metrics.observe_reload(ok, utc_now()))
    watcher.listeners.append(lambda ok: metrics.observe_reload_impact(watcher.last if ok else None))
    daemon = Daemon(
        engines,
        discover=Cadence(schedule.discover_every, schedule.discover_cron),
        delete=Cadence(schedule.delete_every, schedule.delete_cron),
        on_reload=watcher.reload,
        # systemd's $NOTIFY_SOCKET (Type=notify), if any; the demo (run_for) is no service
        notifier=Notifier.from_env() if run_for is None else None,
    )
    verdicts: dict[str, tuple[Verdict, datetime]] = {}  # GET /report serves these

    def walked(verdict: Verdict) -> None:
        at = utc_now()
        metrics.observe_chain(verdict, at)
        verdicts[verdict.account] = (verdict, at)

    if settings.admin.listen:
        context = AdminContext(
            engines={r.account: r.engine for r in runtimes},
            store=runtimes[0].store,
            metrics=metrics,
            health=daemon.health,
            admin_token=settings.admin_token,
            ready_after_failing=settings.admin.ready_after_failing,
            overdue_after=overdue_after(schedule.delete_every),
            report_overdue_after=default_overdue_after(schedule.delete_every),
            chain_verdicts=verdicts,
            last_reload=lambda: watcher.last,
        )
        await stack.enter_async_context(web.serve(context, settings.admin.listen))
    if schedule.watch_config:
        watching = asyncio.create_task(watcher.watch())
        stack.callback(watching.cancel)
    # Each account's audit chain, walked at start and hourly: retention_audit_chain_valid.
    chains = [
        Watched(r.store, r.lease.valid if r.lease is not None else lambda: True) for r in runtimes
    ]
    auditing = asyncio.create_task(watch_chains(chains, walked))
    stack.callback(auditing.cancel)
    replicas = fleet.replicas if isinstance(fleet, Fleet) else None
    if replicas is not None:  # a replica: its leases come and go; losing one stops nothing
        replicas.failing_since = daemon.health.failing_since  # /readyz: balancing failing
        balancing = asyncio.create_task(replicas.run())
        stack.push_async_callback(_stopped, balancing)
    keepers = [r.lease for r in runtimes if r.lease is not None and replicas is None]
    for keeper in keepers:  # a lost lease stops the daemon: another writer has taken over

        async def stop_when_lost(keeper: LeaseKeeper = keeper) -> None:
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
    return 1 if any(keeper.lost.is_set() for keeper in keepers) else code
