"""The daemon: it survives failing sweeps, stops gracefully, and a restart finishes the job."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from retention.daemon import Cadence, Daemon
from retention.emulator import Emulator, Fault
from retention.models import State
from retention.policy import Policy
from retention.store import Store

from .conftest import EngineFactory, served_config

H = timedelta(hours=1)
FAST = Cadence(timedelta(seconds=0.2))
TEST_CHATS = Policy(name="test-chats", agents=frozenset({532}), name_matches=("Test*",), max_age=H)


def add_due(emulator: Emulator, count: int) -> list[str]:
    now = datetime.now(UTC)
    return [
        emulator.state.add_conversation(532, f"Test {n}", created_at=now - 2 * H).session_id
        for n in range(count)
    ]


async def wait_for(condition: Callable[[], bool], within: float = 10.0) -> None:
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110 - polls another process and a server log
            await asyncio.sleep(0.05)


async def test_daemon_survives_a_sweep_that_raises(
    emulator: Emulator, make_engine: EngineFactory, caplog: pytest.LogCaptureFixture
) -> None:
    due = add_due(emulator, 2)
    emulator.faults.append(Fault.status(500, path="*/conversations", times=-1))
    daemon = Daemon(make_engine((TEST_CHATS,)), discover=FAST, delete=FAST)
    running = asyncio.create_task(daemon.run())
    await wait_for(lambda: "discover" in daemon.health.failing_since)
    emulator.faults.clear()
    await wait_for(lambda: not (set(due) & emulator.live_sessions(532)))
    daemon.request_stop()
    assert await asyncio.wait_for(running, timeout=10) == 0
    failures = [
        r for r in caplog.records if r.getMessage() == "discover sweep of account default failed"
    ]
    assert failures and failures[0].exc_info is not None, "logged with its traceback"
    assert set(daemon.health.last_success_at) == {"discover", "delete"}
    assert daemon.health.failing_since == {}


async def test_stop_lets_the_running_sweep_finish_its_item_and_takes_no_more(
    emulator: Emulator, make_engine: EngineFactory, store: Store
) -> None:
    add_due(emulator, 8)
    emulator.faults.append(Fault.delay(0.4, method="DELETE", times=-1))
    engine = make_engine((TEST_CHATS,), delete_concurrency=1)
    daemon = Daemon(engine, discover=Cadence(timedelta(hours=1)), delete=FAST)
    running = asyncio.create_task(daemon.run())
    await wait_for(lambda: len(emulator.calls("DELETE")) >= 2)
    daemon.request_stop()
    assert await asyncio.wait_for(running, timeout=10) == 0
    sent = len(emulator.calls("DELETE"))
    assert sent < 8, "no new deletions after the stop"
    assert await store.conversations(states=(State.DELETING,)) == []
    assert len(await store.conversations(states=(State.DELETED,))) == sent


# ---- the real process: signals -----------------------------------------------------------

CONFIG = """
[api]
base_url = "{url}"
requests_per_minute = 6000
max_concurrency = 2
[store]
url = "sqlite+aiosqlite:///{db}"
[schedule]
discover_every = "1h"
delete_every = "1s"
[admin]
listen = "127.0.0.1:0"
[[policies]]
name = "test-chats"
agents = [532]
name_matches = ["Test*"]
max_age = "1h"
"""


@pytest.fixture
async def served(emulator: Emulator, tmp_path: Path) -> AsyncIterator[tuple[Emulator, Path]]:
    async with served_config(emulator, tmp_path, CONFIG) as config:
        yield emulator, config


async def start(*argv: str) -> asyncio.subprocess.Process:
    env = {**os.environ, "CUSTOMGPT_API_TOKEN": "emulator-token"}
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "retention", *argv,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def test_sigterm_mid_sweep_exits_cleanly(
    served: tuple[Emulator, Path], tmp_path: Path
) -> None:
    emulator, config = served
    add_due(emulator, 10)
    emulator.faults.append(Fault.delay(0.5, method="DELETE", times=-1))
    process = await start("run", "--config", str(config))
    await wait_for(lambda: len(emulator.calls("DELETE")) >= 1, within=30)
    process.send_signal(signal.SIGTERM)
    _out, err = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 0, err.decode()[-2000:]
    assert b"daemon stopped" in err
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'r.db'}")
    try:
        assert await store.conversations(states=(State.DELETING,)) == []
        assert len(await store.conversations(states=(State.DELETED,))) == len(
            emulator.calls("DELETE")
        )
    finally:
        await store.close()


async def test_a_restart_resolves_every_conversation_left_mid_delete(
    served: tuple[Emulator, Path], tmp_path: Path
) -> None:
    emulator, config = served
    due = add_due(emulator, 6)
    # DELETEs hang, so a hard kill lands between intent and outcome.
    emulator.faults.append(Fault.delay(30, method="DELETE", times=-1))
    process = await start("run", "--config", str(config))
    await wait_for(lambda: len(emulator.calls("DELETE")) >= 2, within=30)
    process.kill()
    await process.communicate()
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'r.db'}")
    try:
        assert len(await store.conversations(states=(State.DELETING,))) == 2
        # The first hung DELETE did reach the API and took effect there; the second did not.
        first = emulator.calls("DELETE")[0].path.rsplit("/", 1)[1]
        del emulator.state.agents[532].conversations[first]
        emulator.faults.clear()
        again = await start("once", "--config", str(config))
        _out, err = await asyncio.wait_for(again.communicate(), timeout=60)
        assert again.returncode == 0, err.decode()[-2000:]
        assert await store.conversations(states=(State.DELETING,)) == []
        gone = await store.get(532, first)
        assert gone is not None and gone.state is State.GONE
        assert not set(due) & emulator.live_sessions(532)
    finally:
        await store.close()
