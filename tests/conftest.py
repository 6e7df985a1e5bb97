"""Shared fixtures: a real emulator on a loopback port and real clients talking to it."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pydantic import SecretStr

from retention.admin import AdminContext
from retention.budget import RequestBudget
from retention.client import CustomGPTClient
from retention.daemon import Health
from retention.emulator import DEFAULT_TOKEN, Emulator
from retention.emulator.seed import EmulatorState
from retention.engine import Engine
from retention.metrics import Metrics
from retention.policy import Hold, Policy, Rules
from retention.store import Store
from retention.sweep import EngineOptions
from retention.web import serve
from tests import daemon_process
from tests.postgres import SETTING, Cluster, Unavailable

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"


def small_state(*, agent_id: int = 532, conversations: int = 45) -> EmulatorState:
    """One agent with ``conversations`` conversations, one a minute, oldest first."""
    now = datetime.now(UTC)
    state = EmulatorState()
    state.add_agent(agent_id, "Support bot", created_at=now - timedelta(days=400))
    for n in range(conversations):
        state.add_conversation(
            agent_id,
            f"Chat {n}",
            created_at=now - timedelta(minutes=conversations - n),
            created_by=None if n % 2 else 17,
        )
    return state


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test depends on the RETENTION_* or token variables of whoever runs it."""
    for key in list(os.environ):
        if key.startswith("RETENTION_") or key == "CUSTOMGPT_API_TOKEN":
            monkeypatch.delenv(key)


@pytest.fixture(autouse=True)
def reap_processes() -> Iterator[None]:
    """No `retention` process a test started outlives it, whatever the test's outcome."""
    yield
    daemon_process.reap()


@pytest.fixture
def api_token(monkeypatch: pytest.MonkeyPatch) -> str:
    """The emulator's token in CUSTOMGPT_API_TOKEN, for commands run in this process."""
    monkeypatch.setenv("CUSTOMGPT_API_TOKEN", DEFAULT_TOKEN)
    return DEFAULT_TOKEN


@pytest.fixture
def emulator() -> Emulator:
    return Emulator(small_state())


@pytest.fixture
async def api_url(emulator: Emulator) -> AsyncIterator[str]:
    async with emulator.serve() as url:
        yield url


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


ClientFactory = Callable[..., CustomGPTClient]


@pytest.fixture
def make_client(http: aiohttp.ClientSession, api_url: str) -> ClientFactory:
    """Build a client against the emulator; fast backoff so retries do not slow the suite."""

    def build(**overrides: Any) -> CustomGPTClient:
        budget = overrides.pop("budget", None) or RequestBudget(6000, burst=50)
        options: dict[str, Any] = {
            "base_url": api_url,
            "token": SecretStr(overrides.pop("token", DEFAULT_TOKEN)),
            "budget": budget,
            "max_attempts": 3,
            "backoff_initial": 0.01,
            "backoff_max": 0.05,
            "request_timeout": timedelta(seconds=5),
        }
        options.update(overrides)
        return CustomGPTClient(http, **options)

    return build


@pytest.fixture
def client(make_client: ClientFactory) -> CustomGPTClient:
    return make_client()


# The config of the command tests: the emulator at {url}, a budget and few retries, then the
# JSON tests' store and safety and log settings; QA_RULES are the policies and hold they share.
COMMAND_API = """
[api]
base_url = "{url}"
requests_per_minute = 600
max_attempts = 2
"""
COMMAND_SETTINGS = (
    COMMAND_API
    + """
[store]
url = "sqlite+aiosqlite:///{db}"

[safety]
max_deletions = {max_deletions}

[log]
format = "{log_format}"
"""
)
QA_RULES = """
[[policies]]
name = "qa-chats"
agents = [532]
name_matches = ["Test*"]
max_age = "1h"

[[policies]]
name = "qa-tickets"
agents = "*"
name_regex = "^QA-\\\\d+"
max_age = "36h"

[[holds]]
name = "legal"
name_matches = ["LEGAL*"]
"""


@dataclass
class CommandConfig:
    """The emulator being served, and a command test's config file that points at it: made
    from ``template`` (COMMAND_SETTINGS and rules) with the store beside the file."""

    emulator: Emulator
    url: str
    path: Path
    template: str
    log_format: str = "json"

    def write(self, *, log_format: str | None = None, max_deletions: int = 1000) -> None:
        text = self.template.format(
            url=self.url,
            db=self.path.parent / "r.db",
            log_format=log_format or self.log_format,
            max_deletions=max_deletions,
        )
        self.path.write_text(text, encoding="utf-8")


@asynccontextmanager
async def served_config(
    emulator: Emulator, tmp_path: Path, template: str, **fields: object
) -> AsyncIterator[Path]:
    """Serve the emulator and write a config from ``template`` ({url}, {db} and ``fields``)."""
    async with emulator.serve() as url:
        path = tmp_path / "retention.toml"
        text = template.format(url=url, db=tmp_path / "r.db", **fields)
        path.write_text(text, encoding="utf-8")
        yield path


@pytest.fixture(scope="session")
def postgres() -> Iterator[Cluster]:
    """A throwaway PostgreSQL cluster for the session (tests/postgres.py), or a skip."""
    try:
        cluster = Cluster.start()
        try:
            # Asked for from inside a test's event loop: build the template on a loop of its own.
            with ThreadPoolExecutor(1) as pool:
                pool.submit(asyncio.run, cluster.prepare_template()).result()
        except BaseException:
            cluster.stop()  # never leave a server running behind a failed start
            raise
    except Unavailable as exc:
        if SETTING == "require":
            pytest.fail(f"PostgreSQL is required here (RETENTION_TESTS_POSTGRES): {exc}")
        pytest.skip(f"the PostgreSQL half: {exc}")
    try:
        yield cluster
    finally:
        cluster.stop()


BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test marked ``sqlite_only`` (it checks the SQLite file itself: its journal mode, its
    file removed or made immutable) runs on the SQLite store only."""
    kept: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        spec = getattr(item, "callspec", None)
        on_postgres = spec is not None and "postgresql" in spec.params.values()
        (dropped if on_postgres and item.get_closest_marker("sqlite_only") else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.fixture(params=BACKENDS)
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A store's URL on each backend: a SQLite file (made on first open), or a database of its
    own on PostgreSQL (a copy of a migrated template)."""
    async with _database(request, tmp_path, migrated=True) as url:
        yield url


@pytest.fixture(params=BACKENDS)
async def blank_store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A store nobody has opened yet, on each backend: no SQLite file, or an empty database."""
    async with _database(request, tmp_path, migrated=False) as url:
        yield url


@asynccontextmanager
async def _database(
    request: pytest.FixtureRequest, tmp_path: Path, *, migrated: bool
) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'retention.db'}"
        return
    cluster: Cluster = request.getfixturevalue("postgres")
    url = await cluster.new_database(migrated=migrated)
    yield url
    await cluster.drop(url)


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    """A real store built by the migrations: a SQLite file, or a PostgreSQL database."""
    opened = await Store.open(store_url)
    yield opened
    await opened.close()


EngineFactory = Callable[..., Engine]


@pytest.fixture
def make_engine(client: CustomGPTClient, store: Store) -> EngineFactory:
    def build(
        policies: tuple[Policy, ...] = (),
        holds: tuple[Hold, ...] = (),
        **options: Any,
    ) -> Engine:
        return Engine(client, store, Rules(policies, holds), options=EngineOptions(**options))

    return build


# ---- an admin surface over a real engine and store (test_web, test_rules_change) -------------

ADMIN = "admin-SECRET-42"
TEST_CHATS = Policy(
    name="test-chats", agents=frozenset({532}), name_matches=("Test*",), max_age=timedelta(hours=1)
)


@pytest.fixture
def engine(make_engine: EngineFactory) -> Engine:
    return make_engine((TEST_CHATS,))


@pytest.fixture
def context(engine: Engine, store: Store) -> AdminContext:
    api = engine.context.api
    metrics = Metrics(
        stats=api.stats,
        budget=api.budget,  # type: ignore[attr-defined]
        clock_reading=lambda: api.clock_reading,
    )
    engine.listeners.append(metrics.observe_sweep)
    return AdminContext(
        engines={engine.account: engine},
        store=store,
        metrics=metrics,
        health=Health(started_at=datetime.now(UTC)),
        admin_token=SecretStr(ADMIN),
        ready_after_failing=timedelta(minutes=15),
        overdue_after=timedelta(minutes=2),
    )


@pytest.fixture
async def admin(context: AdminContext) -> AsyncIterator[str]:
    async with serve(context, "127.0.0.1:0") as url:
        yield url
