"""Walking one big agent: the walker's peak memory, wall time and calls.

    python benchmarks/bench_walk.py [--conversations 1000000] [--per-page 100]

The emulator runs in a child process, so its own million conversations are not counted in
ours; this process only walks. Two walks of the same agent: the first finds every conversation
new (inserts), the second is a reconcile that finds them all unchanged (touches), then asks the
store which vanished. Prints the peak RSS (``VmHWM``) of this process before and after each, the
time and the pages read. The request budget is lifted: the point is our own cost per page.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import resource
import tempfile
import time
from datetime import UTC, datetime, timedelta
from multiprocessing.queues import Queue
from pathlib import Path

import aiohttp
from pydantic import SecretStr

from retention.budget import RequestBudget
from retention.client import CustomGPTClient
from retention.discovery import discover_agent
from retention.engine import Engine
from retention.models import SweepReport
from retention.policy import Policy, Rules
from retention.store import Store

AGENT = 532


def peak_rss_mib() -> float:
    """This process's peak resident set: VmHWM from /proc, else getrusage (KiB on Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def serve(conversations: int, per_page: int, ready: Queue[tuple[str, float]]) -> None:
    """The child: build the big agent, serve it on loopback, say where, and serve until killed."""
    from retention.emulator import Emulator
    from retention.emulator.seed import big_state

    async def run() -> None:
        started = time.perf_counter()
        state = big_state(now=datetime.now(UTC), agent_id=AGENT, conversations=conversations)
        seeded = time.perf_counter() - started
        emulator = Emulator(state, per_page=per_page, keep_log=False)
        async with emulator.serve() as url:
            ready.put((url, seeded))
            await asyncio.Event().wait()

    asyncio.run(run())


async def walk(url: str, folder: Path) -> list[tuple[str, float, float, SweepReport]]:
    rows = []
    policy = Policy(name="old", agents=frozenset({AGENT}), max_age=timedelta(days=30))
    async with aiohttp.ClientSession() as session:
        store = await Store.open(f"sqlite+aiosqlite:///{folder / 'bench.db'}")
        client = CustomGPTClient(
            session,
            base_url=url,
            token=SecretStr("emulator-token"),
            budget=RequestBudget(1_000_000, burst=1000),
        )
        engine = Engine(client, store, Rules((policy,), ()))
        for label in ("first walk (all new)", "reconcile (all unchanged)"):
            report = SweepReport(kind="bench", started_at=datetime.now(UTC))
            started = time.perf_counter()
            await discover_agent(engine.context, AGENT, report, full=True)
            rows.append((label, time.perf_counter() - started, peak_rss_mib(), report))
        await store.close()
    return rows


def main(conversations: int, per_page: int) -> None:
    context = multiprocessing.get_context("spawn")
    ready: Queue[tuple[str, float]] = context.Queue()
    child = context.Process(target=serve, args=(conversations, per_page, ready), daemon=True)
    child.start()
    try:
        url, seeded = ready.get(timeout=600)
        before = peak_rss_mib()
        with tempfile.TemporaryDirectory() as folder:
            rows = asyncio.run(walk(url, Path(folder)))
    finally:
        child.terminate()
        child.join()
    print(f"agent of {conversations} conversations, per_page {per_page}")
    print(f"emulator seeded in {seeded:.1f} s (in its own process)")
    print(f"walker peak RSS before walking   {before:7.1f} MiB")
    for label, seconds, peak, report in rows:
        print(
            f"{label:28s} {seconds:8.1f} s  {report.pages:6d} pages  listed {report.listed:8d}"
            f"  new {report.new:8d}  gone {report.gone}  peak RSS {peak:7.1f} MiB"
            f"  ({report.listed / max(seconds, 1e-9):,.0f} conversations/s)"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=1_000_000)
    parser.add_argument("--per-page", type=int, default=100)
    args = parser.parse_args()
    main(args.conversations, args.per_page)
