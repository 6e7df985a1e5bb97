"""One writer per store: the lease in the store, its fencing token, and real processes racing."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from retention.emulator import Emulator
from retention.errors import LeaseLost
from retention.lease import LeaseKeeper
from retention.models import Origin, State, TrackedConversation
from retention.policy import Policy
from retention.store import Store

from .conftest import EngineFactory
from .daemon_process import start, stop, wait_for

SCOPE = "account:default"
T = timedelta(seconds=30)


async def test_the_lease_goes_to_one_holder_and_its_token_only_grows(store: Store) -> None:
    now = datetime.now(UTC)
    first = await store.take_lease(SCOPE, "a", now=now, ttl=T)
    assert first is not None and first.token == 1
    assert await store.take_lease(SCOPE, "b", now=now, ttl=T) is None, "held by a"
    again = await store.take_lease(SCOPE, "a", now=now, ttl=T)
    assert again is not None and again.token == 1, "a holder taking it again keeps its token"
    later = now + 2 * T
    second = await store.take_lease(SCOPE, "b", now=later, ttl=T)
    assert second is not None and second.token == 2, "lapsed: b takes over, the token grows"
    assert await store.renew_lease(first, now=later, ttl=T) is None, "a cannot renew"
    forced = await store.take_lease(SCOPE, "c", now=later, ttl=T, force=True)
    assert forced is not None and forced.token == 3


async def test_an_intent_fenced_by_a_lost_lease_is_refused_and_writes_nothing(
    store: Store,
) -> None:
    now = datetime.now(UTC)
    row = TrackedConversation(
        agent_id=532, session_id="s-1", remote_id=1, name="Chat", created_by=None,
        created_at=now, updated_at=now, origin=Origin.DISCOVERED, state=State.ACTIVE,
    )  # fmt: skip
    await store.insert([row], now=now)
    old = await store.take_lease(SCOPE, "a", now=now, ttl=T)
    assert old is not None
    await store.set_state(532, "s-1", State.DELETING, now=now, fence=old)  # still ours: ok
    await store.set_state(532, "s-1", State.ACTIVE, now=now)
    assert await store.take_lease(SCOPE, "b", now=now + 2 * T, ttl=T) is not None
    with pytest.raises(LeaseLost):
        await store.set_state(532, "s-1", State.DELETING, now=now + 2 * T, fence=old)
    stored = await store.get(532, "s-1")
    assert stored is not None and stored.state is State.ACTIVE


async def test_a_writer_past_its_lease_writes_nothing_a_walk_found(
    emulator: Emulator, make_engine: EngineFactory, store: Store
) -> None:
    """A writer paused past its lease in the middle of a walk: what the walk found is not
    written (the writer that took over owns the store), and nothing is deleted."""
    tick = [0.0]
    keeper = LeaseKeeper(store, ttl=T, monotonic=lambda: tick[0])
    await keeper.take()
    old = datetime.now(UTC) - timedelta(hours=2)
    due = emulator.state.add_conversation(532, "Old one", created_at=old).session_id
    engine = make_engine((Policy(name="old", agents=frozenset({532}), max_age=T),))
    engine.context.lease = keeper
    await engine.apply_rules()  # the rules go in while the lease holds
    tick[0] = 2 * T.total_seconds()  # paused past the lease: it resumes into its next sweep
    with pytest.raises(LeaseLost):
        await engine.sweep()
    assert await store.conversations(532) == [], "nothing written from the walk"
    assert emulator.calls("DELETE") == [] and due in emulator.live_sessions(532)


CONFIG = """
[api]
base_url = "{url}"
requests_per_minute = 6000
[store]
url = "sqlite+aiosqlite:///{db}"
lease_ttl = "2s"
[schedule]
discover_every = "1s"
delete_every = "1s"
[admin]
listen = ""
[[policies]]
name = "chats"
agents = [532]
name_matches = ["Old*"]
max_age = "1h"
"""
ENV = {"CUSTOMGPT_API_TOKEN": "emulator-token"}


def add_old(emulator: Emulator, count: int, tag: str) -> list[str]:
    old = datetime.now(UTC) - timedelta(hours=2)
    return [
        emulator.state.add_conversation(532, f"Old {tag} {n}", created_at=old).session_id
        for n in range(count)
    ]


async def test_a_second_daemon_refuses_and_a_standby_takes_over_after_a_kill(
    emulator: Emulator, tmp_path: Path
) -> None:
    async with emulator.serve() as url:
        config = tmp_path / "retention.toml"
        config.write_text(CONFIG.format(url=url, db=tmp_path / "r.db"), encoding="utf-8")
        first = await start(config, "run", env=ENV)
        await wait_for(lambda: len(emulator.calls("GET", "*/conversations")) >= 1, within=30)
        second = await start(config, "run", env=ENV)
        out, err = await asyncio.wait_for(second.communicate(), timeout=30)
        code, output = second.returncode, (out + err).decode()
        assert code == 2
        assert f"another retention holds the store's lease on {SCOPE}" in output
        assert f"pid={first.pid}" in output
        standby = await start(config, "run", "--standby", env=ENV)
        try:
            await asyncio.sleep(1.5)
            first.kill()
            await first.communicate()
            due = add_old(emulator, 5, "after")
            await wait_for(lambda: not set(due) & emulator.live_sessions(532), within=30)
        finally:
            code, output = await stop(standby)
    assert code == 0 and "standing by:" in output
    deleted = [c.path for c in emulator.calls("DELETE")]
    assert len(deleted) == len(set(deleted)) == 5, "no conversation got two DELETEs"


async def test_a_holder_paused_past_its_lease_deletes_nothing_after_it_resumes(
    emulator: Emulator, tmp_path: Path
) -> None:
    async with emulator.serve() as url:
        config = tmp_path / "retention.toml"
        config.write_text(CONFIG.format(url=url, db=tmp_path / "r.db"), encoding="utf-8")
        holder = await start(config, "run", env=ENV)
        await wait_for(lambda: len(emulator.calls("GET", "*/conversations")) >= 1, within=30)
        standby = await start(config, "run", "--standby", env=ENV)
        await pause_outside_a_write(holder, tmp_path / "r.db", standby.pid)
        first = add_old(emulator, 3, "first")
        await wait_for(lambda: not set(first) & emulator.live_sessions(532), within=30)
        code, _ = await stop(standby)  # the standby took over, deleted, and stopped
        assert code == 0
        deletes = len(emulator.calls("DELETE"))
        left = add_old(emulator, 3, "left")  # due: the paused holder would delete them
        if holder.returncode is None:
            holder.send_signal(signal.SIGCONT)
        await asyncio.sleep(4)  # it resumes, finds its lease gone, and stops by itself
        code, output = await stop(holder)
    assert len(emulator.calls("DELETE")) == deletes, "no DELETE after resuming"
    assert set(left) <= emulator.live_sessions(532)
    assert code == 1 and "lost the lease" in output


async def pause_outside_a_write(
    holder: asyncio.subprocess.Process, db: Path, standby_pid: int
) -> None:
    """SIGSTOP the holder until the standby has taken the lease. A holder paused inside one of
    its (short) write transactions keeps SQLite's write lock, and nobody can write until it
    resumes: then it is resumed and paused again."""

    def lease_holder() -> str:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
            row = conn.execute("SELECT holder FROM leases").fetchone()
        return str(row[0]) if row else ""

    for _ in range(5):
        holder.send_signal(signal.SIGSTOP)
        for _ in range(40):  # 8s: the 2s lease lapses, and the standby takes it
            if f"pid={standby_pid} " in await asyncio.to_thread(lease_holder):
                return
            await asyncio.sleep(0.2)
        holder.send_signal(signal.SIGCONT)
        await asyncio.sleep(0.3)
        if f"pid={standby_pid} " in await asyncio.to_thread(lease_holder):
            return  # taken while it was paused after all: it has resumed past its lease
    raise AssertionError("the standby never took the lease")


async def test_create_from_the_command_line_refuses_while_a_daemon_holds_the_store(
    emulator: Emulator, tmp_path: Path
) -> None:
    async with emulator.serve() as url:
        config = tmp_path / "retention.toml"
        config.write_text(CONFIG.format(url=url, db=tmp_path / "r.db"), encoding="utf-8")
        daemon = await start(config, "run", env=ENV)
        try:
            await wait_for(lambda: len(emulator.calls("GET", "*/conversations")) >= 1, within=30)
            create = await start(config, "create", "--agent", "532", "--name", "x", env=ENV)
            _out, err = await asyncio.wait_for(create.communicate(), timeout=30)
        finally:
            await stop(daemon)
    assert create.returncode == 2 and "create and track through its admin API" in err.decode()
    assert emulator.calls("POST") == [], "refused before any API call"
