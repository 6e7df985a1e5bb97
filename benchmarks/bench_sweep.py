"""Sweep cost against the emulator: wall time, API calls and store work for a large account.

    python benchmarks/bench_sweep.py [--agents 5] [--per-agent 2000] [--due 0.1]

Prints one block of figures. The request budget is lifted (the point is our own overhead and
the number of calls; at a real account's 60 to 120 calls a minute, calls are the wall time).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
from pydantic import SecretStr

from retention.budget import RequestBudget
from retention.client import CustomGPTClient
from retention.emulator import DEFAULT_TOKEN, Emulator
from retention.emulator.seed import EmulatorState
from retention.engine import Engine
from retention.policy import Policy, Rules
from retention.store import Store
from retention.sweep import EngineOptions


def seed(agents: int, per_agent: int, due_share: float) -> EmulatorState:
    now = datetime.now(UTC)
    state = EmulatorState()
    due_every = max(1, round(1 / due_share)) if due_share > 0 else 0
    for a in range(agents):
        agent_id = 1000 + a
        state.add_agent(agent_id, f"Agent {agent_id}", created_at=now - timedelta(days=400))
        for n in range(per_agent):
            due = due_every and n % due_every == 0
            age = timedelta(hours=3) if due else timedelta(minutes=5)
            state.add_conversation(agent_id, f"Test {n}", created_at=now - age)
    return state


async def main(agents: int, per_agent: int, due_share: float) -> None:
    emulator = Emulator(seed(agents, per_agent, due_share))
    policy = Policy(name="tests", agents=None, name_matches=("Test*",), max_age=timedelta(hours=1))
    with tempfile.TemporaryDirectory() as folder:
        async with emulator.serve() as url, aiohttp.ClientSession() as session:
            store = await Store.open(f"sqlite+aiosqlite:///{Path(folder) / 'bench.db'}")
            client = CustomGPTClient(
                session,
                base_url=url,
                token=SecretStr(DEFAULT_TOKEN),
                budget=RequestBudget(1_000_000, burst=1000),
            )
            engine = Engine(
                client, store, Rules((policy,), ()), options=EngineOptions(delete_batch=10**6)
            )
            rows = []
            for label in ("first sweep (full sync)", "second sweep (nothing new)"):
                started = time.perf_counter()
                report = await engine.sweep()
                seconds = time.perf_counter() - started
                rows.append((label, seconds, report))
            started = time.perf_counter()
            for _ in range(20):
                await store.due(datetime.now(UTC), limit=500)
            due_ms = (time.perf_counter() - started) / 20 * 1000
            await store.close()
    total = agents * per_agent
    print(f"account: {agents} agents x {per_agent} conversations = {total}, per_page 20")
    for label, seconds, report in rows:
        calls = sum(report.api_calls.values())
        print(
            f"{label:28s} {seconds:7.2f} s  listed {report.listed:6d}  deleted {report.deleted:6d}"
            f"  API calls {calls:6d} {dict(sorted(report.api_calls.items()))}"
        )
    first_calls = sum(rows[0][2].api_calls.values())
    print(
        f"calls per 60-call minute budget: first sweep needs {first_calls / 60:.1f} min at 60/min"
    )
    print(f"due-set query with {total} tracked, none left due: {due_ms:.2f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--agents", type=int, default=5)
    parser.add_argument("--per-agent", type=int, default=2000)
    parser.add_argument("--due", type=float, default=0.1, help="share of conversations due")
    args = parser.parse_args()
    asyncio.run(main(args.agents, args.per_agent, args.due))
