"""Three `retention run` replicas share six accounts on one PostgreSQL store while they are
killed (SIGKILL) and paused (SIGSTOP/SIGCONT) at random and conversations keep arriving.

At the end every due conversation is gone, nothing that was not due is gone, no account was
worked in by two replicas at once, and after a kill another replica held each of the dead one's
accounts within one lease period plus one sweep interval.

"At once" is read from the emulators' request logs: every request a replica sends names it and
the account's lease (``lease account:NAME#TOKEN``) in its User-Agent, and a new holder's token
is higher than any before it. So in each account's log, in arrival order, the tokens never go
down: a replica that lost an account (paused past its lease, or killed and restarted) sent
nothing after the replica that took over had started.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO

import asyncpg
import pytest

from retention.emulator import Emulator
from retention.emulator.seed import EmulatorState

from .postgres import Cluster

pytestmark = pytest.mark.postgresql

ACCOUNTS = [f"acct{n}" for n in range(6)]
REPLICAS = 3
AGENT = 532
TTL = 3.0  # [store] lease_ttl, seconds
INTERVAL = 1.0  # the sweeps' interval
CHAOS_SECONDS = float(os.environ.get("RETENTION_CHAOS_SECONDS", "60"))
H = timedelta(hours=1)
LEASE = re.compile(r"replica (?P<holder>.+?); lease account:(?P<account>[\w.-]+)#(?P<token>\d+)")

CONFIG_HEAD = f"""
[api]
requests_per_minute = 3000
burst = 50
max_attempts = 2
request_timeout = "1s"   # a lease of 3s must outlast it twice

[store]
url = "{{url}}"
lease_ttl = "{TTL:g}s"

[schedule]
discover_every = "{INTERVAL:g}s"
delete_every = "{INTERVAL:g}s"
watch_config = false

[admin]
listen = ""

[[policies]]
name = "test-chats"
agents = "*"
name_matches = ["Test*"]
max_age = "1h"
"""


@dataclass
class Replica:
    number: int
    config: Path
    env: dict[str, str]
    log: Path
    process: asyncio.subprocess.Process | None = None
    paused: bool = False
    _out: IO[bytes] | None = field(default=None, repr=False)

    async def start(self) -> None:
        self._close()
        self._out = self.log.open("ab")
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "retention", "run", "--config", str(self.config),
            env=self.env, stdout=self._out, stderr=self._out,
        )  # fmt: skip
        self.paused = False

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def signal(self, sig: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    async def kill(self) -> None:
        self.signal(signal.SIGKILL)
        assert self.process is not None
        await self.process.wait()
        self.paused = False

    def _close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None

    async def stop(self) -> int:
        if not self.running:
            self._close()
            return 0
        assert self.process is not None
        if self.paused:
            self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.process.wait(), timeout=30)
        finally:
            self._close()


@pytest.fixture
async def database(postgres: Cluster) -> AsyncIterator[str]:
    url = await postgres.new_database()
    yield url
    await postgres.drop(url)


async def holders(url: str) -> dict[str, tuple[str, datetime]]:
    """Each account lease's holder and expiry, as the store has them now."""
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        rows = await conn.fetch("SELECT scope, holder, expires_at FROM leases")
    finally:
        await conn.close()
    return {
        r["scope"].split(":", 1)[1]: (r["holder"], r["expires_at"].replace(tzinfo=UTC))
        for r in rows
    }


@pytest.mark.timeout(CHAOS_SECONDS + 180)
async def test_three_replicas_share_six_accounts_through_kills_and_pauses(
    database: str, tmp_path: Path
) -> None:
    rng = random.Random(int(os.environ.get("RETENTION_CHAOS_SEED", "7")))
    now = datetime.now(UTC)
    emulators: dict[str, Emulator] = {}
    due: dict[str, set[str]] = {a: set() for a in ACCOUNTS}
    kept: dict[str, set[str]] = {a: set() for a in ACCOUNTS}
    for account in ACCOUNTS:
        state = EmulatorState()
        state.add_agent(AGENT, f"{account} agent", created_at=now - 400 * 24 * H)
        for n in range(25):
            old = now - 30 * 24 * H
            kept[account].add(
                state.add_conversation(AGENT, f"Customer {n}", created_at=old).session_id
            )
        emulators[account] = Emulator(state, token=f"{account}-token", per_page=10)

    def arrive() -> None:
        account = rng.choice(ACCOUNTS)
        state = emulators[account].state
        at = datetime.now(UTC)
        old = state.add_conversation(AGENT, "Test old", created_at=at - 2 * H)
        due[account].add(old.session_id)
        kept[account].add(state.add_conversation(AGENT, "Test young", created_at=at).session_id)

    takeovers: list[float] = []
    pauses = 0
    async with AsyncExitStack() as stack:
        urls = {a: await stack.enter_async_context(e.serve()) for a, e in emulators.items()}
        config = tmp_path / "retention.toml"
        config.write_text(
            CONFIG_HEAD.format(url=database)
            + "".join(
                f'\n[[accounts]]\nname = "{a}"\ntoken_env = "TOKEN_{a.upper()}"\n'
                f'base_url = "{urls[a]}"\n'
                for a in ACCOUNTS
            ),
            encoding="utf-8",
        )
        env = {**os.environ} | {f"TOKEN_{a.upper()}": f"{a}-token" for a in ACCOUNTS}
        replicas = [Replica(n, config, env, tmp_path / f"replica-{n}.log") for n in range(REPLICAS)]
        try:
            for replica in replicas:
                await replica.start()
            await until_every_account_is_held(database, within=20)

            deadline = time.monotonic() + CHAOS_SECONDS
            while time.monotonic() < deadline:
                arrive()
                await asyncio.sleep(rng.uniform(0.3, 1.2))
                awake = [r for r in replicas if r.running and not r.paused]
                action = rng.random()
                if action < 0.12 and len(awake) > 1:
                    victim = rng.choice(awake)
                    mark = f"pid={victim.process.pid} "  # type: ignore[union-attr]
                    lost = await held_by(database, victim)
                    killed_at = time.monotonic()
                    await victim.kill()
                    takeovers.append(await taken_over(database, lost, mark, since=killed_at))
                    await victim.start()
                elif action < 0.24 and len(awake) > 1:
                    victim = rng.choice(awake)
                    pauses += 1
                    victim.signal(signal.SIGSTOP)
                    victim.paused = True
                elif action < 0.4:
                    for replica in replicas:
                        if replica.paused:
                            replica.signal(signal.SIGCONT)
                            replica.paused = False
            for replica in replicas:  # the end: everyone awake, the work catches up
                if replica.paused:
                    replica.signal(signal.SIGCONT)
                    replica.paused = False
            # Everyone awake again: the three split the six evenly, and the work catches up.
            split = await evenly_split(database, replicas, within=6 * TTL)
            async with asyncio.timeout(40):
                while any(due[a] & emulators[a].live_sessions(AGENT) for a in ACCOUNTS):  # noqa: ASYNC110
                    await asyncio.sleep(0.2)
        finally:
            codes = [await r.stop() for r in replicas]

    assert codes == [0] * REPLICAS, [r.log.read_text()[-2000:] for r in replicas]
    for account in ACCOUNTS:
        live = emulators[account].live_sessions(AGENT)
        assert not due[account] & live, f"{account}: every due conversation is gone"
        assert kept[account] <= live, f"{account}: nothing that was not due is gone"
        check_one_holder_at_a_time(account, emulators[account])
    bound = TTL + INTERVAL + 1.0  # a lease period, a sweep interval, and a second of slack
    assert takeovers, "the chaos killed at least one replica"
    assert max(takeovers) <= bound, f"takeovers after a kill took {takeovers}s"
    assert sorted(split.values()) == [2, 2, 2], split
    print(  # noqa: T201 - the figures, with pytest -s
        f"\n{len(takeovers)} kills, {pauses} pauses; takeover after a kill: "
        f"max {max(takeovers):.2f}s (bound {bound:g}s)"
    )


def check_one_holder_at_a_time(account: str, emulator: Emulator) -> None:
    """In arrival order the lease tokens never go down, each token is one replica's, and every
    request named the account's lease."""
    tokens: list[int] = []
    owner: dict[int, str] = {}
    for served in sorted(emulator.served, key=lambda s: s.at):
        found = LEASE.search(served.user_agent)
        assert found is not None, f"{account}: {served.method} {served.path} without a lease"
        assert found["account"] == account
        token = int(found["token"])
        assert owner.setdefault(token, found["holder"]) == found["holder"], "one holder a token"
        tokens.append(token)
    assert tokens == sorted(tokens), f"{account}: an older holder acted after a newer one"
    deleted = [s.path for s in emulator.served if s.method == "DELETE" and s.status == 200]
    assert len(deleted) == len(set(deleted)), f"{account}: a conversation deleted twice"


async def held_by(url: str, replica: Replica) -> list[str]:
    """The accounts whose lease this replica's process holds now (not lapsed or given back)."""
    assert replica.process is not None
    mark, now = f"pid={replica.process.pid} ", datetime.now(UTC)
    held = await holders(url)
    return [a for a, (holder, until) in held.items() if mark in holder and until > now]


async def evenly_split(url: str, replicas: list[Replica], *, within: float) -> dict[int, int]:
    """Wait until each replica holds its fair share; how many each holds."""
    counts: dict[int, int] = {}
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(within):
            while sorted(counts.values()) != [2] * REPLICAS:
                counts = {r.number: len(await held_by(url, r)) for r in replicas}
                await asyncio.sleep(0.2)
    return counts


async def until_every_account_is_held(url: str, *, within: float) -> None:
    async with asyncio.timeout(within):
        while True:
            held = await holders(url)
            alive = datetime.now(UTC)
            if len(held) == len(ACCOUNTS) and all(e > alive for _, e in held.values()):
                return
            await asyncio.sleep(0.2)


async def taken_over(url: str, accounts: list[str], dead: str, *, since: float) -> float:
    """Seconds from ``since`` until each of ``accounts`` has a live holder other than the dead
    replica (whose holder name contains ``dead``)."""
    async with asyncio.timeout(30):
        while True:
            now, current = datetime.now(UTC), await holders(url)
            if all(dead not in current[a][0] and current[a][1] > now for a in accounts):
                return time.monotonic() - since
            await asyncio.sleep(0.1)
