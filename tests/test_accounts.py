"""Several accounts in one process: each swept with its own token, base URL and budget, on one
store, and an account that fails (a 401) never holds the others back.

Two emulators stand for two CustomGPT accounts. Each knows only its own token (any other gets
a 401) and enforces its own budget (a request over it gets a 429), and both have an agent 532:
agent ids are unique only within an account.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from retention.cli import main
from retention.client import CustomGPTClient
from retention.config import load_config
from retention.emulator import Emulator, RateLimit
from retention.emulator.seed import EmulatorState
from retention.engine import Engine
from retention.lease import LeaseKeeper, lease_scope
from retention.models import State
from retention.policy import Rules
from retention.reload import ConfigWatcher
from retention.runtime import open_fleet, run_daemon
from retention.store import Store

H = timedelta(hours=1)
AGENT = 532
CONFIG = """
[api]
requests_per_minute = 60
max_attempts = 2

[store]
url = "{store}"

[schedule]
discover_every = "1s"
delete_every = "1s"

[admin]
listen = ""

[[accounts]]
name = "north"
token_env = "NORTH_TOKEN"
base_url = "{north}"
requests_per_minute = {north_rpm}
burst = 2

[[accounts]]
name = "south"
token_env = "SOUTH_TOKEN"
base_url = "{south}"
requests_per_minute = {south_rpm}
burst = 20

[[policies]]
name = "test-chats"
agents = "*"
name_matches = ["Test*"]
max_age = "1h"

[[holds]]
name = "south-legal"
name_matches = ["Test keep*"]
accounts = ["south"]
"""


@dataclass
class Account:
    name: str
    token: str
    rpm: int
    emulator: Emulator

    def names(self) -> set[str]:
        return {c.name for c in self.emulator.state.agents[AGENT].conversations.values()}


def account(name: str, rpm: int) -> Account:
    now = datetime.now(UTC)
    state = EmulatorState()
    state.add_agent(AGENT, f"{name} agent", created_at=now - 400 * 24 * H)
    for n in range(4):
        state.add_conversation(AGENT, f"Test old {n}", created_at=now - 2 * H)
    state.add_conversation(AGENT, "Test keep me", created_at=now - 2 * H)
    state.add_conversation(AGENT, "Test young", created_at=now - H / 6)
    state.add_conversation(AGENT, "Customer", created_at=now - 30 * 24 * H)
    emulator = Emulator(state, token=f"{name}-token", per_page=3)
    emulator.rate_limit = RateLimit(rpm, 60.0)  # the account's own budget, enforced
    return Account(name, f"{name}-token", rpm, emulator)


@pytest.fixture
async def accounts(
    tmp_path: Path, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Path, Account, Account]]:
    # north's budget is tight (2 a second after a burst of 2); south's is ten times larger.
    north, south = account("north", 120), account("south", 1200)
    monkeypatch.setenv("NORTH_TOKEN", north.token)
    monkeypatch.setenv("SOUTH_TOKEN", south.token)
    async with north.emulator.serve() as north_url, south.emulator.serve() as south_url:
        config = tmp_path / "retention.toml"
        config.write_text(
            CONFIG.format(
                store=store_url,
                north=north_url,
                south=south_url,
                north_rpm=north.rpm,
                south_rpm=south.rpm,
            ),
            encoding="utf-8",
        )
        yield config, north, south


def statuses(emulator: Emulator) -> set[int]:
    return {s.status for s in emulator.served}


def paced(emulator: Emulator, *, rpm: int, burst: int) -> bool:
    """Whether the requests arrived within a budget of ``rpm`` after a burst of ``burst``: the
    n-th came no sooner than (n - burst) / rate after the first (a little slack for timers)."""
    times = sorted(s.at for s in emulator.served)
    rate = rpm / 60
    return all(t - times[0] >= (n + 1 - burst) / rate - 0.05 for n, t in enumerate(times))


async def test_each_account_is_swept_with_its_own_token_and_budget_on_one_store(
    accounts: tuple[Path, Account, Account], store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config, north, south = accounts
    assert await asyncio.to_thread(main, ["once", "--config", str(config)]) == 0

    # The hold names south only: north deletes its "Test keep me", south keeps its own.
    assert north.names() == {"Test young", "Customer"}
    assert south.names() == {"Test keep me", "Test young", "Customer"}
    for each in (north, south):
        assert 401 not in statuses(each.emulator), f"{each.name} got its own token only"
        assert 429 not in statuses(each.emulator), f"{each.name} stayed within its budget"
    assert len(north.emulator.served) >= 8
    assert paced(north.emulator, rpm=120, burst=2), "north's calls kept to north's budget"
    assert not paced(south.emulator, rpm=120, burst=2), "south's were not held to north's"
    captured = capsys.readouterr()
    assert "account=north" in captured.out and "account=south" in captured.out
    # Every log line of a deletion names its account (JSON logs off a terminal).
    records = [json.loads(line) for line in captured.err.splitlines() if line.startswith("{")]
    logged = Counter(r.get("account") for r in records if r["message"].startswith("deleted"))
    assert logged == {"north": 5, "south": 4}

    # One store; the same agent id in two accounts, each with its own rows and audit.
    store = await Store.open(store_url, create=False)
    try:
        for each, deleted in ((north, 5), (south, 4)):
            view = store.for_account(each.name)
            rows = await view.conversations(AGENT)
            assert sum(r.state is State.DELETED for r in rows) == deleted
            trail = await view.journal.audit_trail(AGENT)
            assert len(trail) == deleted, f"{each.name}'s audit holds its own deletions"
        assert await store.conversations(AGENT) == [], "nothing filed under the default account"
    finally:
        await store.close()


async def test_status_and_plan_name_the_account(
    accounts: tuple[Path, Account, Account], capsys: pytest.CaptureFixture[str]
) -> None:
    config, _north, _south = accounts
    assert await asyncio.to_thread(main, ["db", "upgrade", "--config", str(config)]) == 0
    capsys.readouterr()
    assert await asyncio.to_thread(main, ["plan", "--config", str(config), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    by_account = {(i["account"], i["name"]) for i in plan["due"]}
    assert by_account == {("north", f"Test old {n}") for n in range(4)} | {
        ("north", "Test keep me")
    } | {("south", f"Test old {n}") for n in range(4)}
    assert await asyncio.to_thread(main, ["status", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "account north: store at" in out and "account south: store at" in out
    assert out.count("lease: never taken") == 2, "plan takes no lease"
    # One account only, by name; a write needs one named among several.
    assert (
        await asyncio.to_thread(
            main, ["plan", "--config", str(config), "--json", "--account", "south"]
        )
        == 0
    )
    assert {i["account"] for i in json.loads(capsys.readouterr().out)["due"]} == {"south"}
    code = await asyncio.to_thread(
        main, ["create", "--config", str(config), "--agent", str(AGENT), "--name", "x"]
    )
    assert code == 2
    assert "several accounts" in capsys.readouterr().err


async def test_a_401_in_one_account_leaves_the_others_deletions_on_time(
    accounts: tuple[Path, Account, Account], capsys: pytest.CaptureFixture[str]
) -> None:
    config, north, south = accounts
    north.emulator.token = "rotated"  # north's token no longer works: every call a 401

    # once: north fails (exit 1, named), south deletes its whole due set regardless.
    assert await asyncio.to_thread(main, ["once", "--config", str(config)]) == 1
    assert "retention: account north failed" in capsys.readouterr().err
    assert south.names() == {"Test keep me", "Test young", "Customer"}
    assert len(north.names()) == 7, "north deleted nothing"

    # The daemon: north's sweeps fail every second; south's new due work goes on time.
    now = datetime.now(UTC)
    south.emulator.state.add_conversation(AGENT, "Test later", created_at=now - 2 * H)
    settings = load_config(config)
    async with AsyncExitStack() as stack:
        fleet = await stack.enter_async_context(open_fleet(settings, writer=True))
        daemon = asyncio.create_task(run_daemon(fleet, run_for=4.0))
        async with asyncio.timeout(10):
            while "Test later" in south.names():  # noqa: ASYNC110 - another account's server
                await asyncio.sleep(0.1)
        assert await daemon == 0
    assert statuses(north.emulator) == {401}
    assert 401 not in statuses(south.emulator)


def test_log_lines_name_the_account_of_the_work_in_hand() -> None:
    import io

    from retention import logs

    stream = io.StringIO()
    handler = logs.configure(fmt="text", stream=stream)
    try:
        token = logs.ACCOUNT.set("north")
        try:
            logging.getLogger("retention.test").info("deleted something")
        finally:
            logs.ACCOUNT.reset(token)
        logging.getLogger("retention.test").info("between accounts")
    finally:
        logging.getLogger().removeHandler(handler)
    first, second = stream.getvalue().splitlines()
    assert first.endswith("retention.test: [north] deleted something")
    assert second.endswith("retention.test: between accounts")


RELOAD = """
[store]
url = "{store}"

[[accounts]]
name = "north"
token_env = "NORTH_TOKEN"

[[accounts]]
name = "south"
token_env = "SOUTH_TOKEN"

[[policies]]
name = "test-chats"
agents = "*"
name_matches = ["Test*"]
max_age = "1h"
"""


async def test_a_reload_puts_each_accounts_rules_in_force_at_once_whatever_fails(
    tmp_path: Path, store_url: str, client: CustomGPTClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hold added for south protects there at once, even when north's re-evaluation cannot
    run (here: a replica that does not hold north's lease)."""
    monkeypatch.setenv("NORTH_TOKEN", "n")
    monkeypatch.setenv("SOUTH_TOKEN", "s")
    config = tmp_path / "retention.toml"
    config.write_text(RELOAD.format(store=store_url), encoding="utf-8")
    settings = load_config(config)
    store = await Store.open(store_url)
    try:
        engines = {
            name: Engine(client, store.for_account(name), settings.rules().for_account(name))
            for name in ("north", "south")
        }
        # north's lease is another replica's: nothing may be written in north from here.
        engines["north"].context.lease = LeaseKeeper(store, scope=lease_scope("north"))
        watcher = ConfigWatcher(config, list(engines.values()), settings, settle=0.2)
        held = RELOAD + '\n[[holds]]\nname = "legal"\nname_matches = ["Test keep*"]\n'
        config.write_text(held.format(store=store_url) + 'accounts = ["south"]\n', encoding="utf-8")
        assert await watcher.reload("test") is True
        assert [h.name for h in engines["south"].rules.holds] == ["legal"]
        assert engines["north"].rules.holds == ()
    finally:
        await store.close()


async def test_no_accounts_token_reaches_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """With several accounts and none named default, each account's token is masked in every
    log line the command line writes (a server may echo a token in an error)."""
    monkeypatch.setenv("NORTH_TOKEN", "north-secret-token-123456")
    monkeypatch.setenv("SOUTH_TOKEN", "south-secret-token-654321")
    config = tmp_path / "retention.toml"
    db = tmp_path / "r.db"
    config.write_text(RELOAD.format(store=f"sqlite+aiosqlite:///{db}"), encoding="utf-8")

    # The command line installs the log handler, with the secrets it must mask.
    assert await asyncio.to_thread(main, ["db", "upgrade", "--config", str(config)]) == 0
    logging.getLogger("retention.test").warning(
        "echoed: north-secret-token-123456 and south-secret-token-654321"
    )
    err = capsys.readouterr().err
    assert "echoed: *** and ***" in err
    assert "secret-token" not in err


async def test_the_longest_account_name_fits_every_key_built_on_it(
    store: Store, client: CustomGPTClient
) -> None:
    """40 characters: its rules fingerprints (meta keys) and lease scope fit their columns on
    PostgreSQL too, which enforces the lengths."""
    longest = "a" * 40
    engine = Engine(client, store.for_account(longest), Rules(()))
    await engine.apply_rules()
    keeper = LeaseKeeper(store, scope=lease_scope(longest))
    assert await keeper.try_take()
    assert await store.get_meta(f"first_rules_fingerprint:{longest}") is not None


def test_check_refuses_replica_timing_that_would_send_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "retention.toml"
    shared = '[store]\nurl = "postgresql+asyncpg://r@db.internal/r"\n'
    config.write_text(shared, encoding="utf-8")
    assert main(["check", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "store.lease_ttl" in err and "at least twice [api] request_timeout (30s)" in err
    config.write_text(shared + 'lease_ttl = "30s"\n[api]\nrequest_timeout = "10s"\n', "utf-8")
    assert main(["check", "--config", str(config)]) == 0


async def test_a_renamed_account_is_refused_until_its_old_name_is_given_back_or_retired(
    accounts: tuple[Path, Account, Account],
    store_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The store served north and south; a config that renames north to east would leave
    north's rows (own TTLs, deletions in progress) unseen while east finds the conversations
    again without them. Writers refuse to start, naming what the store holds."""
    config, north, _south = accounts
    assert await asyncio.to_thread(main, ["once", "--config", str(config), "--dry-run"]) == 0
    renamed = config.read_text(encoding="utf-8").replace('name = "north"', 'name = "east"')
    config.write_text(renamed, encoding="utf-8")
    served = len(north.emulator.served)
    capsys.readouterr()
    assert await asyncio.to_thread(main, ["once", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "does not name: 'north' (7 live)" in err and "retired_accounts" in err
    assert len(north.emulator.served) == served, "nothing sent"
    retired = renamed.replace("[store]\n", '[store]\nretired_accounts = ["north"]\n')
    config.write_text(retired, encoding="utf-8")
    assert await asyncio.to_thread(main, ["once", "--config", str(config), "--dry-run"]) == 0
