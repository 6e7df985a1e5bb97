"""Due-set selection cost as the number tracked grows and the number due stays put.

    python benchmarks/bench_due.py [--due 100] [--sizes 10000 100000]

The query reads the (state, due_at) index, so its time should follow the number due.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from retention.models import Origin, State, TrackedConversation
from retention.store import Store


def rows(count: int, due: int, now: datetime) -> list[TrackedConversation]:
    out = []
    for n in range(count):
        due_at = now - timedelta(minutes=n + 1) if n < due else now + timedelta(days=n % 90 + 1)
        out.append(
            TrackedConversation(
                agent_id=1000 + n % 5,
                session_id=f"session-{n}",
                remote_id=n,
                name=f"Chat {n}",
                created_by=None,
                created_at=now - timedelta(days=30),
                updated_at=now - timedelta(days=30),
                origin=Origin.DISCOVERED,
                state=State.ACTIVE,
                due_at=due_at,
                rule="bench",
            )
        )
    return out


async def measure(size: int, due: int) -> float:
    now = datetime.now(UTC)
    with tempfile.TemporaryDirectory() as folder:
        store = await Store.open(f"sqlite+aiosqlite:///{Path(folder) / 'due.db'}")
        batch = rows(size, due, now)
        for start in range(0, size, 5000):
            await store.insert(batch[start : start + 5000], now=now)
        started = time.perf_counter()
        for _ in range(50):
            found = await store.due(now, limit=500)
        elapsed = (time.perf_counter() - started) / 50
        assert len(found) == due
        await store.close()
    return elapsed * 1000


async def main(due: int, sizes: list[int]) -> None:
    for size in sizes:
        print(f"tracked {size:7d}, due {due}: due-set query {await measure(size, due):6.2f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--due", type=int, default=100)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    args = parser.parse_args()
    asyncio.run(main(args.due, args.sizes))
