"""What fresh facts cost: API calls per deleted conversation, with and without rules on names.

    python benchmarks/bench_fresh.py [--agents 5] [--per-agent 400]

A deletion that rests on a name (a policy or hold selecting by name) re-reads it when the last
listing is older than ``facts_max_age`` (10m): one messages call per due conversation, or a
re-read of the agent's pages where that is cheaper. A decision on the creation time alone costs
nothing extra. Here a first (full) sweep lists everything under a 2h policy, the listing is
then made an hour old, and a second sweep under a 1h policy deletes what that makes due; its
calls are shown. Prints one line per case.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
from pydantic import SecretStr
from sqlalchemy import update

from retention.budget import RequestBudget
from retention.client import CustomGPTClient
from retention.emulator import DEFAULT_TOKEN, Emulator
from retention.emulator.seed import EmulatorState
from retention.engine import Engine
from retention.policy import Policy, Rules
from retention.schema import conversations
from retention.store import Store
from retention.sweep import EngineOptions

MAX_AGE = timedelta(hours=1)


def seed(agents: int, per_agent: int, due_share: float) -> EmulatorState:
    now = datetime.now(UTC)
    state = EmulatorState()
    due_every = round(1 / due_share)
    for a in range(agents):
        agent_id = 1000 + a
        state.add_agent(agent_id, f"Agent {agent_id}", created_at=now - timedelta(days=400))
        for n in range(per_agent):
            due = n % due_every == 0
            age = timedelta(minutes=90) if due else timedelta(minutes=5)
            state.add_conversation(agent_id, f"Test {n}", created_at=now - age)
    return state


async def case(agents: int, per_agent: int, due_share: float, *, by_name: bool) -> str:
    emulator = Emulator(seed(agents, per_agent, due_share))
    ids = frozenset(1000 + a for a in range(agents))
    names = ("Test*",) if by_name else ()
    policy = Policy(name="tests", agents=ids, name_matches=names, max_age=MAX_AGE)
    with tempfile.TemporaryDirectory() as folder:
        async with emulator.serve() as url, aiohttp.ClientSession() as session:
            store = await Store.open(f"sqlite+aiosqlite:///{Path(folder) / 'bench.db'}")
            client = CustomGPTClient(
                session,
                base_url=url,
                token=SecretStr(DEFAULT_TOKEN),
                budget=RequestBudget(1_000_000, burst=1000),
            )
            options = EngineOptions(delete_batch=10**6)
            slower = replace(policy, max_age=2 * MAX_AGE)
            await Engine(client, store, Rules((slower,), ()), options=options).sweep()
            async with store.db.begin() as conn:  # as if the listing were an hour old
                hour_ago = datetime.now(UTC) - timedelta(hours=1)
                await conn.execute(update(conversations).values(facts_at=hour_ago))
            engine = Engine(client, store, Rules((policy,), ()), options=options)
            report = await engine.sweep()
            await store.close()
    calls = dict(sorted(report.api_calls.items()))
    total = sum(calls.values())
    rule = "name-dependent (Test*)" if by_name else "creation time only"
    return (
        f"{rule:24s} due {due_share:4.0%}: deleted {report.deleted:5d}  API calls {total:5d}"
        f"  per deleted {total / max(report.deleted, 1):5.2f}  refreshed {report.refreshed:4d}"
        f"  agent re-reads {report.refresh_walks}  {calls}"
    )


async def main(agents: int, per_agent: int) -> None:
    pages = -(-per_agent // 20)
    print(
        f"account: {agents} agents x {per_agent} conversations ({pages} pages each); the due "
        "ones come due by a rules change an hour after the last listing"
    )
    for due_share in (0.01, 0.2):
        for by_name in (False, True):
            print(await case(agents, per_agent, due_share, by_name=by_name))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--agents", type=int, default=5)
    parser.add_argument("--per-agent", type=int, default=400)
    args = parser.parse_args()
    asyncio.run(main(args.agents, args.per_agent))
