"""What a big store costs: the figures of the store-size issue at 10k, 100k and 1M tracked.

    python benchmarks/bench_store.py [--sizes 10000 100000 1000000] [--runs 3]
    make bench-store [SIZES="10000 100000"]

Each store holds N tracked conversations of 10 agents, 100 of them due now, the rest due within
the next weeks (anonymous ones, under one policy of 30 days) or never (team members' ones, which
no policy matches). It is built through the project's own code: :meth:`Store.insert` in batches of
rows decided by :meth:`Sweep.evaluate` under the benchmark's config, the agents' cursors by
:meth:`Store.save_agent`, the rules' fingerprint by :meth:`Store.set_meta`, so that a daemon
started on it has nothing to re-evaluate. Built stores are kept in ``--cache`` (keyed by size,
the migration head and a digest of the modules that decide and store, so that code which
decides or stores otherwise builds afresh; rebuilt after 5 days) and every measurement runs on
a fresh copy.

How each figure is measured (times are the median of ``--runs``; peak RSS and WAL the largest):

- **due-set query**: ``Store.due(now, limit=500)`` in this process, the mean of 10 calls a run.
- **GET /v1/plan, GET /metrics**: one request each, over loopback with aiohttp, to a real
  ``retention run`` process (``python -m retention run``) on the store, once its first discovery
  and deletion sweeps are over. The config is in dry-run, so the 100 due stay due.
- **discovery sweep, nothing new**: the API is an in-process emulator holding each agent's newest
  page (the store's newest 20 conversations of the agent, facts identical), so a sweep reads page
  1 per agent, finds nothing new and stops. The sweep runs in this process through
  :func:`retention.runtime.open_runtime` (as ``retention once`` wires it) with the engine's API
  wrapped so that the wall time spent inside API calls is added up; the local time is the sweep's
  wall time minus that. The emulator shares this process's event loop, so its handling of a
  request counts as API time, never as local time. One sweep warms up first (not counted).
- **retention status**: in-process, a fresh interpreter per run (``store_probes.py status``)
  times one call of the command after its imports and the config are loaded: open the store,
  query, render. The whole ``python -m retention status`` process's wall time is shown apart, as
  information (an interpreter's start alone is ~0.3 s).
- **rules change**: on the running daemon, the policy's ``max_age`` goes 30d -> 29d -> 30d ->
  29d (each edit re-decides every anonymous conversation); the file is replaced whole, then
  SIGHUP. Figures per edit: the wall time from SIGHUP to the log line "config reload (SIGHUP):
  ... re-evaluated N" (this includes the reload's own settle read, 1 s by design); the longest
  answer of GET /healthz polled every 10 ms meanwhile; the daemon's peak RSS during the change
  (VmHWM, reset through /proc/PID/clear_refs just before); the -wal file's size 1 s after.
  ``[store] lease_ttl`` is 1h so that a long change cannot lose the lease mid-way.
- **no-op rules change**: on a second daemon (fresh copy), an edit that adds (then alters) a hold
  naming a session that does not exist: it alters no decision. Rows written are counted by
  triggers that this benchmark adds to its copy of the store (every INSERT, UPDATE or DELETE on
  ``conversations`` adds one to a counter table), read just before SIGHUP and after the log line.
  A row rewritten with its own values counts too: "writes nothing" means 0 here.
- **walk of one agent**: a fresh store, an in-process emulator with one agent of N conversations
  (``--walk-per-page`` a page, default 100: the real API serves 20; bigger pages hold more per
  page, so the memory goal is only harder, and a 1M walk makes 10k calls, not 50k), and one
  discovery sweep (a first sync: every page) in a fresh interpreter (``store_probes.py walk``,
  the request budget lifted). Peak RSS is the walker's VmHWM as the kernel keeps it (read by the
  walker at its end, and polled from /proc while it runs). A walk that cannot finish within
  ``--walk-timeout`` seconds (judged from its pace after 20 s) is stopped: its peak RSS then is
  that of a partial walk, and the line says so.

Goals (at the largest size measured) are printed with their figures and whether they are met.
The exit status is 0 whatever the figures (a benchmark, not a test); a stage that fails prints
why and its figures show as n/a. The machine has 2 shared cores: expect noise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import inspect
import json
import math
import os
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import aiohttp
from pydantic import SecretStr

import retention
from retention.budget import RequestBudget
from retention.client import CustomGPTClient
from retention.config import load_config
from retention.emulator import EmuConversation, Emulator, EmulatorState
from retention.engine import FIRST_RULES_KEY, RULES_KEY, Engine
from retention.migrate import head_revision
from retention.models import AgentRecord, Origin, State, TrackedConversation
from retention.runtime import engine_options, open_runtime
from retention.store import Store
from retention.sweep import Api

AGENTS = tuple(range(1001, 1011))
DUE = 100
PER_PAGE = 20  # the emulator's page for the daemon's agents, as the real API's
FIRST_ID = 10_001
TEAM_MEMBER = 7
WALK_AGENT = 3001
LAYOUT = 1  # bump when the built store's contents change: cached stores are rebuilt
CACHE_DAYS = 5
BATCH = 5000
PROBES = Path(__file__).with_name("store_probes.py")
MIB = 1024 * 1024


class BenchError(Exception):
    """A stage could not measure: its figures stay n/a."""


# ---- the store's contents --------------------------------------------------------------------


def session_of(n: int) -> str:
    return str(uuid.UUID(int=n + 1, version=4))


def conversation(i: int, size: int, base: datetime) -> TrackedConversation:
    """The i-th conversation (ids and creation times grow together, as on the real service)."""
    if i < DUE:
        created = base - timedelta(days=40) + timedelta(seconds=i)
        created_by = None
    else:
        created = base - timedelta(days=20) + timedelta(seconds=int(i / size * 19 * 86400))
        created_by = TEAM_MEMBER if (i // len(AGENTS)) % 10 == 3 else None  # never due
    return TrackedConversation(
        agent_id=AGENTS[i % len(AGENTS)],
        session_id=session_of(i),
        remote_id=FIRST_ID + i,
        name=f"Chat {i}",
        created_by=created_by,
        created_at=created,
        updated_at=created,
        origin=Origin.DISCOVERED,
        state=State.ACTIVE,
        first_seen=base,
        facts_at=base,
    )


def config_text(
    *,
    api_url: str,
    store: Path,
    agents: tuple[int, ...] = AGENTS,
    max_age: str = "30d",
    noop_hold: int | None = None,
) -> str:
    hold = ""
    if noop_hold is not None:  # names a session nobody has: alters no decision
        hold = (
            f'\n[[holds]]\nname = "bench-no-op"\nagents = [{agents[0]}]\n'
            f'session_ids = ["{uuid.UUID(int=2**100 + noop_hold, version=4)}"]\n'
        )
    return f"""# written by benchmarks/bench_store.py
[api]
base_url = "{api_url}"
requests_per_minute = 6000
burst = 120
token_file = "token"

[store]
url = "sqlite+aiosqlite:///{store}"
lease_ttl = "1h"

[schedule]
discover_every = "1h"
delete_every = "1h"
reconcile_every = "52w"
watch_config = false

[safety]
dry_run = true

[admin]
listen = "127.0.0.1:0"

[log]
format = "json"
level = "INFO"

[[policies]]
name = "bench-chats"
agents = [{", ".join(str(a) for a in agents)}]
user_type = "anonymous"
max_age = "{max_age}"
{hold}"""


def write_config(folder: Path, **kwargs: Any) -> Path:
    """Write (replace whole, as an editor or a ConfigMap swap does) folder/retention.toml."""
    folder.mkdir(parents=True, exist_ok=True)
    token = folder / "token"
    if not token.exists():
        token.write_text("emulator-token\n")
        token.chmod(0o600)
    path = folder / "retention.toml"
    fresh = folder / "retention.toml.new"
    fresh.write_text(config_text(**kwargs))
    os.replace(fresh, path)
    return path


async def build_store(size: int, path: Path, base: datetime) -> None:
    """Build through the project's own code: Sweep.evaluate decides, Store.insert writes."""
    folder = path.parent / f"build-{size}"
    config = write_config(folder, api_url="http://127.0.0.1:9/api/v1/", store=path)
    settings = load_config(config)
    store = await Store.open(f"sqlite+aiosqlite:///{path}")
    try:
        async with aiohttp.ClientSession() as session:
            client = CustomGPTClient(
                session,
                base_url=settings.api.base_url,
                token=SecretStr("unused"),
                budget=RequestBudget(60),
            )
            engine = Engine(
                client, store, settings.rules(), options=engine_options(settings, dry_run=False)
            )
            for start in range(0, size, BATCH):
                batch = [
                    engine.context.evaluate(conversation(i, size, base), base)
                    for i in range(start, min(size, start + BATCH))
                ]
                await store.insert(batch, now=base)
            for agent in AGENTS:
                newest = max(
                    i for i in range(size - len(AGENTS), size) if AGENTS[i % len(AGENTS)] == agent
                )
                record = AgentRecord(
                    id=agent,
                    name=f"Agent {agent}",
                    sync_cursor=FIRST_ID + newest,
                    last_full_sync_at=base,
                    platform_retention_period="never",
                    pages=math.ceil(size / len(AGENTS) / PER_PAGE),
                )
                await store.save_agent(record, now=base)
            fingerprint = engine.fingerprint()
            await store.set_meta(FIRST_RULES_KEY, fingerprint)
            await store.set_meta(RULES_KEY, fingerprint)
            await store.identity()
    finally:
        await store.close()
    shutil.rmtree(folder, ignore_errors=True)


# The modules whose code decides what a built store holds: rules, decisions, rows, tables.
STORE_CODE = ("config.py", "policy.py", "sweep.py", "models.py", "schema.py", "store.py",
              "database.py", "journal.py", "engine.py", "migrate.py")  # fmt: skip


def code_version() -> str:
    """A digest of the code that builds a store, and of this layout: a store built by other code
    (other decisions, other tables kept alongside) is built again, never reused."""
    digest = hashlib.sha256(f"layout {LAYOUT}".encode())
    package = Path(retention.__file__).parent
    for name in STORE_CODE:
        source = package / name
        digest.update(name.encode())
        digest.update(source.read_bytes() if source.exists() else b"")
    return digest.hexdigest()[:12]


def cache_entry(size: int, cache: Path) -> tuple[Path, Path, datetime | None]:
    """The cached store's path, its sidecar, and its base time when it is there and fresh.

    Anything else cached for this size (older layouts, migrations, half-built files) goes."""
    cache.mkdir(parents=True, exist_ok=True)
    key = f"store-{size}-{head_revision()}-{code_version()}"
    path, sidecar = cache / f"{key}.db", cache / f"{key}.json"
    if path.exists() and sidecar.exists():
        base = datetime.fromisoformat(json.loads(sidecar.read_text())["base"])
        if datetime.now(UTC) - base < timedelta(days=CACHE_DAYS):
            return path, sidecar, base
    for stale in cache.glob(f"store-{size}-*"):
        stale.unlink()
    return path, sidecar, None


async def cached_store(size: int, cache: Path) -> tuple[Path, datetime, float | None]:
    """The built store for this size (and its base time), building it when missing or old."""
    path, sidecar, base = cache_entry(size, cache)
    if base is not None:
        return path, base, None
    base = datetime.now(UTC).replace(microsecond=0)
    started = time.perf_counter()
    building = path.with_suffix(".building")
    await build_store(size, building, base)
    os.replace(building, path)
    sidecar.write_text(json.dumps({"base": base.isoformat(), "size": size}))
    return path, base, time.perf_counter() - started


def fresh_copy(source: Path, target: Path) -> Path:
    for suffix in ("", "-wal", "-shm", ".lock"):
        Path(f"{target}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(source, target)
    return target


def newest_pages(size: int, base: datetime) -> EmulatorState:
    """Each agent's newest page, exactly as the store knows it: a quiet sweep finds nothing new."""
    state = EmulatorState()
    for agent in AGENTS:
        state.add_agent(
            agent, f"Agent {agent}", created_at=base - timedelta(days=400), retention_period="never"
        )
    for i in range(size - len(AGENTS) * PER_PAGE, size):
        c = conversation(i, size, base)
        assert c.remote_id is not None
        state.agents[c.agent_id].conversations[c.session_id] = EmuConversation(
            id=c.remote_id,
            session_id=c.session_id,
            project_id=c.agent_id,
            name=c.name,
            created_by=c.created_by,
            created_at=c.created_at,
            updated_at=c.updated_at,
        )
    return state


def add_write_counter(path: Path) -> None:
    """Instrument this copy of the store: every row written to ``conversations`` counts."""
    conn = sqlite3.connect(path)
    try:
        conn.executescript(
            """
            CREATE TABLE bench_writes (n INTEGER NOT NULL);
            INSERT INTO bench_writes VALUES (0);
            CREATE TRIGGER bench_ins AFTER INSERT ON conversations
                BEGIN UPDATE bench_writes SET n = n + 1; END;
            CREATE TRIGGER bench_upd AFTER UPDATE ON conversations
                BEGIN UPDATE bench_writes SET n = n + 1; END;
            CREATE TRIGGER bench_del AFTER DELETE ON conversations
                BEGIN UPDATE bench_writes SET n = n + 1; END;
            """
        )
        conn.commit()
    finally:
        conn.close()


def rows_written(path: Path) -> int:
    conn = sqlite3.connect(path, timeout=60)
    try:
        return int(conn.execute("SELECT n FROM bench_writes").fetchone()[0])
    finally:
        conn.close()


def wal_bytes(path: Path) -> int:
    try:
        return os.path.getsize(f"{path}-wal")
    except OSError:
        return 0


# ---- measuring helpers -----------------------------------------------------------------------


def proc_kib(pid: int, field: str) -> int | None:
    """VmHWM (peak) or VmRSS of a process, in KiB, from /proc; None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return None


def reset_peak(pid: int) -> bool:
    """Reset a process's VmHWM to its current RSS (Linux: 5 > /proc/PID/clear_refs)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class TimedApi:
    """Forwards to the API client, adding up the wall time spent inside its calls."""

    def __init__(self, inner: object) -> None:
        self._inner = inner
        self.seconds = 0.0

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._inner, name)
        if inspect.iscoroutinefunction(value):
            call = cast(Callable[..., Awaitable[Any]], value)

            async def timed(*args: Any, **kwargs: Any) -> Any:
                started = time.perf_counter()
                try:
                    return await call(*args, **kwargs)
                finally:
                    self.seconds += time.perf_counter() - started

            return timed
        if inspect.isasyncgenfunction(value):
            make = cast(Callable[..., Any], value)

            async def stepped(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
                iterator = make(*args, **kwargs)
                try:
                    while True:
                        started = time.perf_counter()
                        try:
                            item = await iterator.__anext__()
                        except StopAsyncIteration:
                            return
                        finally:
                            self.seconds += time.perf_counter() - started
                        yield item
                finally:
                    await iterator.aclose()

            return stepped
        return value


class Daemon:
    """A real ``retention run`` process; its JSON log lines are read as they come."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.messages: list[str] = []
        self._arrived = asyncio.Event()
        self.process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self.admin = ""

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def start(self, within: float = 300.0) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "retention", "run", "--config", str(self.config),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, limit=2**22,
        )  # fmt: skip
        self._reader = asyncio.create_task(self._read())
        _, line = await self.wait_for(r"admin surface listening on (http://\S+)", within=within)
        found = re.search(r"(http://\S+)", line)
        assert found is not None
        self.admin = found.group(1)
        await self.wait_for(r"^sweep discover\b", within=within)
        await self.wait_for(r"^sweep delete\b", within=within)

    async def _read(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        async for raw in self.process.stderr:
            text = raw.decode(errors="replace").rstrip("\n")
            try:
                entry = json.loads(text)
                message = str(entry.get("message", text))
                if "exception" in entry:
                    message += "\n" + str(entry["exception"])
            except (ValueError, AttributeError):
                message = text
            self.messages.append(message)
            self._arrived.set()
        self._arrived.set()

    async def wait_for(self, pattern: str, *, after: int = 0, within: float) -> tuple[int, str]:
        """The first log message from index ``after`` on that matches; BenchError on timeout."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + within
        seen = after
        while True:
            for index in range(seen, len(self.messages)):
                if regex.search(self.messages[index]):
                    return index, self.messages[index]
            seen = len(self.messages)
            assert self.process is not None
            if self.process.returncode is not None or (self._reader and self._reader.done()):
                raise BenchError(f"the daemon exited while waiting for {pattern!r}: {self.tail()}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"no log line {pattern!r} within {within:.0f}s: {self.tail()}")
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), timeout=min(left, 1.0))

    def tail(self, lines: int = 3) -> str:
        return " | ".join(m.splitlines()[0][:200] for m in self.messages[-lines:])

    async def stop(self) -> None:
        if self.process is None:
            return
        if self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), timeout=60)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        if self._reader is not None:
            await asyncio.wait_for(self._reader, timeout=10)


async def timed_get(http: aiohttp.ClientSession, url: str) -> tuple[float, bytes]:
    started = time.perf_counter()
    async with http.get(url) as response:
        body = await response.read()
        if response.status != 200:
            raise BenchError(f"GET {url}: {response.status} {body[:200]!r}")
    return time.perf_counter() - started, body


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


# ---- the figures -----------------------------------------------------------------------------


@dataclass
class Change:
    seconds: float | None = None
    reevaluated: int | None = None
    healthz_max: float | None = None
    peak_kib: int | None = None
    wal: int | None = None
    written: int | None = None


@dataclass
class Walk:
    finished: bool = False
    seconds: float | None = None
    pages: int | None = None
    listed: int | None = None
    peak_kib: int | None = None
    baseline_kib: int | None = None
    note: str = ""

    @property
    def kib_each(self) -> float | None:
        if self.peak_kib is None or self.baseline_kib is None or not self.listed:
            return None
        return (self.peak_kib - self.baseline_kib) / self.listed


@dataclass
class Figures:
    size: int
    build_s: float | None = None
    store_bytes: int | None = None
    due_query: list[float] = field(default_factory=list)
    due_count: int | None = None
    plan: list[float] = field(default_factory=list)
    plan_count: int | None = None
    metrics: list[float] = field(default_factory=list)
    sweep_total: list[float] = field(default_factory=list)
    sweep_local: list[float] = field(default_factory=list)
    sweep_calls: int | None = None
    sweep_new: int | None = None
    status_own: list[float] = field(default_factory=list)
    status_process: list[float] = field(default_factory=list)
    daemon_peak_kib: int | None = None
    changes: list[Change] = field(default_factory=list)
    noops: list[Change] = field(default_factory=list)
    walk: Walk = field(default_factory=Walk)
    problems: list[str] = field(default_factory=list)

    def change(self, which: str, attr: str, *, worst: bool = False) -> float | None:
        values = [
            float(v)
            for c in (self.changes if which == "change" else self.noops)
            if (v := getattr(c, attr)) is not None
        ]
        if not values:
            return None
        return max(values) if worst else statistics.median(values)


async def stage(figures: Figures, name: str, work: Awaitable[None]) -> None:
    """Run one stage; a failure is reported and leaves its figures n/a."""
    started = time.perf_counter()
    print(f"  {name} ...", end="", flush=True)
    try:
        await work
    except Exception as exc:
        figures.problems.append(f"{name}: {type(exc).__name__}: {exc}")
        print(f" FAILED ({type(exc).__name__}: {str(exc)[:300]})", flush=True)
        if os.environ.get("BENCH_STORE_DEBUG"):
            traceback.print_exc()
        return
    print(f" {time.perf_counter() - started:.1f} s", flush=True)


async def due_query(figures: Figures, db: Path, runs: int) -> None:
    store = await Store.open(f"sqlite+aiosqlite:///{db}", create=False)
    try:
        for _ in range(runs):
            now = datetime.now(UTC)
            started = time.perf_counter()
            for _ in range(10):
                found = await store.due(now, limit=500)
            figures.due_query.append((time.perf_counter() - started) / 10)
            figures.due_count = len(found)
    finally:
        await store.close()


async def quiet_sweeps(figures: Figures, config: Path, runs: int) -> None:
    settings = load_config(config)
    async with open_runtime(settings) as runtime:
        api = TimedApi(runtime.engine.context.api)
        runtime.engine.context.api = cast(Api, api)
        for run in range(runs + 1):  # the first warms up
            api.seconds = 0.0
            started = time.perf_counter()
            report = await runtime.engine.sweep("discover", discover=True, delete=False)
            total = time.perf_counter() - started
            if report.error:
                raise BenchError(report.error)
            if run:
                figures.sweep_total.append(total)
                figures.sweep_local.append(total - api.seconds)
                figures.sweep_calls = sum(report.api_calls.values())
                figures.sweep_new = report.new


async def run_probe(*args: str, within: float = 600) -> tuple[float, str]:
    started = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        sys.executable, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=within)
    wall = time.perf_counter() - started
    if process.returncode != 0:
        raise BenchError(
            f"{' '.join(args[-3:])} exited {process.returncode}: {err.decode()[-300:]}"
        )
    return wall, out.decode()


async def status_runs(figures: Figures, config: Path, runs: int) -> None:
    for _ in range(runs):
        _, out = await run_probe(str(PROBES), "status", str(config))
        result = json.loads(out.strip().splitlines()[-1])
        if result["code"] != 0:
            raise BenchError(f"status exited {result['code']}")
        figures.status_own.append(float(result["seconds"]))
    for _ in range(runs):
        wall, _ = await run_probe("-m", "retention", "status", "--config", str(config))
        figures.status_process.append(wall)


async def daemon_reads(
    figures: Figures, daemon: Daemon, http: aiohttp.ClientSession, runs: int
) -> None:
    for _ in range(runs):
        seconds, _ = await timed_get(http, daemon.admin + "/metrics")
        figures.metrics.append(seconds)
    for _ in range(runs):
        seconds, body = await timed_get(http, daemon.admin + "/v1/plan")
        figures.plan.append(seconds)
        figures.plan_count = int(json.loads(body).get("count", -1))
    figures.daemon_peak_kib = proc_kib(daemon.pid, "VmHWM")


async def rules_change(
    daemon: Daemon,
    http: aiohttp.ClientSession,
    db: Path,
    rewrite: Callable[[], None],
    *,
    count: bool,
) -> Change:
    """Edit, SIGHUP, and watch: /healthz every 10 ms until the reload's log line."""
    change = Change()
    await asyncio.sleep(1.0)  # let the daemon be idle
    before = rows_written(db) if count else None
    rewrite()
    mark = len(daemon.messages)
    reset = reset_peak(daemon.pid)
    done = asyncio.Event()
    waits: list[float] = []

    async def poll() -> None:
        while not done.is_set():
            started = time.perf_counter()
            async with http.get(daemon.admin + "/healthz") as response:
                await response.read()
            waits.append(time.perf_counter() - started)
            await asyncio.sleep(0.01)

    started = time.perf_counter()
    os.kill(daemon.pid, signal.SIGHUP)
    poller = asyncio.create_task(poll())
    try:
        _, line = await daemon.wait_for(
            r"config reload \(SIGHUP\).*(re-evaluated|rejected|failed)", after=mark, within=1800
        )
        change.seconds = time.perf_counter() - started
    finally:
        done.set()
        await poller
    if "re-evaluated" not in line or "failed" in line:
        raise BenchError(f"the reload did not go through: {line[:300]}")
    found = re.search(r"(\d+) conversations re-evaluated", line) or re.search(
        r"re-evaluated (\d+)", line
    )
    change.reevaluated = int(found.group(1)) if found else None
    change.healthz_max = max(waits) if waits else None
    change.peak_kib = proc_kib(daemon.pid, "VmHWM") if reset else None
    await asyncio.sleep(1.0)
    change.wal = wal_bytes(db)
    if before is not None:
        change.written = rows_written(db) - before
    return change


async def changes(
    figures: Figures, daemon: Daemon, http: aiohttp.ClientSession, db: Path, folder: Path,
    url: str, runs: int,
) -> None:  # fmt: skip
    for run in range(runs):
        max_age = "29d" if run % 2 == 0 else "30d"

        def rewrite(max_age: str = max_age) -> None:
            write_config(folder, api_url=url, store=db, max_age=max_age)

        figures.changes.append(await rules_change(daemon, http, db, rewrite, count=False))


async def noops(
    figures: Figures, daemon: Daemon, http: aiohttp.ClientSession, db: Path, folder: Path,
    url: str, runs: int,
) -> None:  # fmt: skip
    for run in range(runs):

        def rewrite(run: int = run) -> None:
            write_config(folder, api_url=url, store=db, noop_hold=run)

        figures.noops.append(await rules_change(daemon, http, db, rewrite, count=True))


async def walk(figures: Figures, size: int, folder: Path, per_page: int, limit: float) -> None:
    result = figures.walk
    now = datetime.now(UTC).replace(microsecond=0)
    state = EmulatorState()
    agent = state.add_agent(WALK_AGENT, "Walked agent", created_at=now - timedelta(days=400))
    created = now - timedelta(days=2)
    for i in range(size):
        session = session_of(i)
        agent.conversations[session] = EmuConversation(
            id=FIRST_ID + i,
            session_id=session,
            project_id=WALK_AGENT,
            name=f"Walk {i}",
            created_by=None,
            created_at=created,
            updated_at=created,
        )
    emulator = Emulator(state, per_page=per_page)
    total_pages = math.ceil(size / per_page)
    async with emulator.serve() as url:
        config = write_config(
            folder, api_url=url, store=folder / "walk.db", agents=(WALK_AGENT,), max_age="365d"
        )
        process = await asyncio.create_subprocess_exec(
            sys.executable, str(PROBES), "walk", str(config),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        communicating = asyncio.create_task(process.communicate())
        started = time.monotonic()
        peak = 0
        stopped = ""
        while not communicating.done():
            await asyncio.wait({communicating}, timeout=0.5)
            peak = max(peak, proc_kib(process.pid, "VmHWM") or 0)
            elapsed = time.monotonic() - started
            served = len(emulator.calls("GET", "*/conversations"))
            if communicating.done():
                break
            pace = elapsed / served * total_pages if served else math.inf
            if elapsed > limit or (elapsed > 20 and pace > limit):
                eta = f"~{pace:.0f} s" if served else "unknown"
                stopped = (
                    f"stopped after {elapsed:.0f} s at page {served} of {total_pages}: at that "
                    f"pace the walk alone would take {eta} (limit {limit:.0f} s)"
                )
                process.kill()
                break
        out, err = await communicating
    served = len(emulator.calls("GET", "*/conversations"))
    baseline = re.search(rb"walk starts rss_kib=(\d+)", err)
    result.baseline_kib = int(baseline.group(1)) if baseline else None
    if stopped:
        result.note = stopped
        result.pages = served
        result.listed = min(size, served * per_page)
        result.peak_kib = peak or None
        result.seconds = None
        return
    if process.returncode != 0:
        raise BenchError(f"the walk exited {process.returncode}: {err.decode()[-300:]}")
    data = json.loads(out.decode().strip().splitlines()[-1])
    if data.get("error"):
        raise BenchError(f"the walk failed: {data['error']}")
    result.finished = True
    result.seconds = float(data["seconds"])
    result.pages = int(data["pages"])
    result.listed = int(data["listed"])
    result.peak_kib = max(int(data["peak_kib"]), peak)
    if result.listed != size:
        result.note = f"listed {result.listed} of {size}"


async def measure(size: int, args: argparse.Namespace, work: Path) -> Figures:
    figures = Figures(size)
    print(f"\n== {size} tracked conversations ({len(AGENTS)} agents, {DUE} due) ==", flush=True)
    started = time.perf_counter()
    print("  store ...", end="", flush=True)
    cached, base, figures.build_s = await cached_store(size, args.cache)
    figures.store_bytes = cached.stat().st_size
    how = f"built in {figures.build_s:.1f} s" if figures.build_s is not None else "from the cache"
    print(f" {how} ({cached}, {figures.store_bytes / MIB:.0f} MiB)", flush=True)
    folder = work / str(size)
    emulator = Emulator(newest_pages(size, base), per_page=PER_PAGE)
    timeout = aiohttp.ClientTimeout(total=1800)
    async with emulator.serve() as url, aiohttp.ClientSession(timeout=timeout) as http:
        _mkdir(folder / "a")
        db_a = fresh_copy(cached, folder / "a" / "store.db")
        config_a = write_config(folder / "a", api_url=url, store=db_a)
        await stage(figures, "due-set query", due_query(figures, db_a, args.runs))
        await stage(
            figures, "discovery sweeps (in-process)", quiet_sweeps(figures, config_a, args.runs)
        )
        await stage(figures, "retention status", status_runs(figures, config_a, args.runs))
        daemon = Daemon(config_a)
        try:
            await stage(figures, "daemon start", daemon.start())
            if daemon.admin:
                await stage(
                    figures,
                    "GET /metrics, /v1/plan",
                    daemon_reads(figures, daemon, http, args.runs),
                )
                await stage(
                    figures, "rules changes",
                    changes(figures, daemon, http, db_a, folder / "a", url, args.runs),
                )  # fmt: skip
        finally:
            await daemon.stop()
        shutil.rmtree(folder / "a", ignore_errors=True)
        _mkdir(folder / "b")
        db_b = fresh_copy(cached, folder / "b" / "store.db")
        add_write_counter(db_b)
        config_b = write_config(folder / "b", api_url=url, store=db_b)
        daemon = Daemon(config_b)
        try:
            await stage(figures, "daemon start (write counter)", daemon.start())
            if daemon.admin:
                await stage(
                    figures, "no-op rules changes",
                    noops(figures, daemon, http, db_b, folder / "b", url, args.runs),
                )  # fmt: skip
        finally:
            await daemon.stop()
        shutil.rmtree(folder / "b", ignore_errors=True)
    if not args.no_walk:
        _mkdir(folder / "walk")
        await stage(
            figures, f"walk of one agent of {size}",
            walk(figures, size, folder / "walk", args.walk_per_page, args.walk_timeout),
        )  # fmt: skip
        shutil.rmtree(folder / "walk", ignore_errors=True)
    print(f"  ({time.perf_counter() - started:.0f} s for this size)", flush=True)
    print_size(figures)
    return figures


def _mkdir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)


# ---- printing --------------------------------------------------------------------------------


def ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 1000:.1f} ms"


def secs(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} s"


def mib(kib: float | None) -> str:
    return "n/a" if kib is None else f"{kib / 1024:.0f} MiB"


def count(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}"


def rows_of(f: Figures) -> list[tuple[str, str, str]]:
    """(figure, value, a note for the per-size block) for one size."""
    w = f.walk
    wal = f.change("change", "wal", worst=True)
    walk_note = f"{w.pages} pages" if w.pages is not None else ""
    if w.kib_each is not None:
        walk_note += f", ~{w.kib_each:.2f} KiB per conversation above the walker's start"
    return [
        ("due-set query", ms(median(f.due_query)), f"{count(f.due_count)} due"),
        ("GET /v1/plan", ms(median(f.plan)), f"{count(f.plan_count)} items"),
        ("GET /metrics, one scrape", ms(median(f.metrics)), ""),
        (
            "discovery sweep, nothing new: wall",
            ms(median(f.sweep_total)),
            f"{count(f.sweep_calls)} API calls, {count(f.sweep_new)} new",
        ),
        ("  local time (wall - time in API calls)", ms(median(f.sweep_local)), ""),
        ("retention status: the command's own work", ms(median(f.status_own)), "in-process"),
        ("  whole process (information)", secs(median(f.status_process)), ""),
        (
            "rules change: SIGHUP to done",
            secs(f.change("change", "seconds")),
            f"{count(f.change('change', 'reevaluated'))} re-evaluated; includes the 1 s settle",
        ),
        ("  daemon peak RSS during it", mib(f.change("change", "peak_kib", worst=True)), ""),
        ("  longest /healthz wait", ms(f.change("change", "healthz_max")), "polled every 10 ms"),
        ("  WAL on disk 1 s after", mib(None if wal is None else wal / 1024), ""),
        (
            "no-op rules change: SIGHUP to done",
            secs(f.change("noop", "seconds")),
            f"{count(f.change('noop', 'reevaluated'))} re-evaluated",
        ),
        ("  conversation rows written", count(f.change("noop", "written", worst=True)), ""),
        ("  longest /healthz wait", ms(f.change("noop", "healthz_max")), ""),
        ("walk of one agent of N: peak RSS", mib(w.peak_kib), walk_note),
        ("  walk time", secs(w.seconds) if w.finished else "not finished", w.note),
        ("daemon peak RSS after start and reads", mib(f.daemon_peak_kib), ""),
    ]


def print_size(f: Figures) -> None:
    print(f"-- figures at {f.size} tracked (times: median of the runs) --")
    for label, value, note in rows_of(f):
        print(f"  {label:44s} {value:>12s}  {note}".rstrip())
    for problem in f.problems:
        print(f"  problem: {problem}")


def print_table(all_figures: list[Figures]) -> None:
    print("\n== all sizes (times: median of the runs; peak RSS, WAL and rows written: largest) ==")
    columns = [rows_of(f) for f in all_figures]
    header = "".join(f"{f.size:>14d}" for f in all_figures)
    print(f"{'tracked conversations':44s}{header}")
    for index, (label, _, _) in enumerate(columns[0]):
        values = "".join(f"{c[index][1]:>14s}" for c in columns)
        print(f"{label:44s}{values}")


def goals(f: Figures) -> list[tuple[str, str, bool | None]]:
    """(goal, figure, met) at one size; met is None when the figure is missing."""

    def under(value: float | None, limit: float) -> bool | None:
        return None if value is None else value < limit

    walk = f.walk
    written = f.change("noop", "written", worst=True)
    wal = f.change("change", "wal", worst=True)
    walk_figure = mib(walk.peak_kib) + ("" if walk.finished else " (walk not finished)")
    return [
        ("/metrics scrape < 50 ms", ms(median(f.metrics)), under(median(f.metrics), 0.05)),
        (
            "retention status, the command's own work < 50 ms",
            ms(median(f.status_own)) + f" (whole process {secs(median(f.status_process))})",
            under(median(f.status_own), 0.05),
        ),
        (
            "discovery sweep finding nothing new: local time < 50 ms",
            ms(median(f.sweep_local)),
            under(median(f.sweep_local), 0.05),
        ),
        (
            "rules change: /healthz answers within 100 ms throughout",
            ms(f.change("change", "healthz_max")),
            under(f.change("change", "healthz_max"), 0.1),
        ),
        (
            "rules change: daemon peak RSS < 150 MiB",
            mib(f.change("change", "peak_kib", worst=True)),
            under(f.change("change", "peak_kib", worst=True), 150 * 1024),
        ),
        (
            "a change that alters no decision writes nothing",
            f"{count(written)} rows written",
            None if written is None else written == 0,
        ),
        (
            "rules change: WAL checkpointed after (<= 4 MiB left)",
            mib(None if wal is None else wal / 1024),
            None if wal is None else wal <= 4 * MIB,
        ),
        (
            "rules change: done in < 30 s",
            secs(f.change("change", "seconds")),
            under(f.change("change", "seconds"), 30),
        ),
        (
            f"walk of an agent of {f.size}: peak RSS < 150 MiB",
            walk_figure,
            None if walk.peak_kib is None or not walk.finished else walk.peak_kib < 150 * 1024,
        ),
    ]


def print_goals(f: Figures) -> None:
    print(f"\n== goals at {f.size} tracked ==")
    rows = goals(f)
    met = sum(1 for _, _, ok in rows if ok)
    for goal, figure, ok in rows:
        verdict = "n/a" if ok is None else ("yes" if ok else "NO")
        print(f"  {goal:58s} {figure:34s} met: {verdict}")
    print(f"  {met} of {len(rows)} goals met")


def describe_tree() -> str:
    """The git state of the checkout the imported ``retention`` comes from."""
    try:
        found = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            capture_output=True, text=True, cwd=Path(retention.__file__).parent, timeout=10,
            check=False,
        )  # fmt: skip
    except OSError:
        return "git ?"
    return f"git {found.stdout.strip()}" if found.returncode == 0 else "not a git checkout"


async def main(args: argparse.Namespace) -> None:
    print(
        f"bench-store: sizes {' '.join(map(str, args.sizes))}, {args.runs} runs, "
        f"retention from {Path(retention.__file__).parent} ({describe_tree()}), "
        f"store migration {head_revision()}, "
        f"{datetime.now(UTC).isoformat(timespec='seconds')}, {os.cpu_count()} CPUs",
        flush=True,
    )
    work = Path(tempfile.mkdtemp(prefix="bench-store-"))
    results = []
    started = time.perf_counter()
    try:
        for size in args.sizes:
            results.append(await measure(size, args, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_table(results)
    print_goals(results[-1])
    print(f"\nbench-store took {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--runs", type=int, default=3, help="runs per timed figure (median)")
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path(tempfile.gettempdir()) / "retention-bench-store",
        help="where built stores are kept between runs",
    )
    parser.add_argument("--walk-per-page", type=int, default=100)
    parser.add_argument("--walk-timeout", type=float, default=300.0, help="seconds")
    parser.add_argument("--no-walk", action="store_true", help="skip the walk")
    arguments = parser.parse_args()
    if min(arguments.sizes) < len(AGENTS) * PER_PAGE + DUE:
        parser.error(f"sizes must be at least {len(AGENTS) * PER_PAGE + DUE}")
    asyncio.run(main(arguments))
