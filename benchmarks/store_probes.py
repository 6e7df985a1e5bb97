"""Probes that bench_store.py runs in fresh interpreters: `status`'s own work, and one walk.

    python benchmarks/store_probes.py status CONFIG   # one JSON line: seconds, exit code
    python benchmarks/store_probes.py walk CONFIG     # one JSON line: seconds, pages, listed, ...

``status`` imports everything ``retention status`` imports (the SQLite driver too), loads the
config, then times one call of the command itself (open the store, query, render to a buffer):
the work that follows the size of the store, without the interpreter's start and the imports.

``walk`` runs one discovery sweep (no deletion) through the same wiring as ``retention once``
(:func:`retention.runtime.open_runtime`) on the store the config names, with the request budget
lifted so that the walk is not paced at the account's calls a minute (the point is memory). The
parent reads the process's peak RSS from the OS (``wait4``); this prints its RSS before the walk.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import sys
import time
from pathlib import Path


def rss_kib(field: str = "VmRSS") -> int:
    """This process's resident set (or its peak, ``VmHWM``) in KiB, as the kernel counts it."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def status(config: Path) -> None:
    import sqlalchemy.dialects.sqlite.aiosqlite  # noqa: F401 - loaded at start-up, not timed

    from retention import commands
    from retention.config import load_config

    settings = load_config(config)

    async def timed() -> tuple[float, int, str]:
        out = io.StringIO()
        started = time.perf_counter()
        with contextlib.redirect_stdout(out):
            code = await commands.status(settings)
        return time.perf_counter() - started, code, out.getvalue()

    seconds, code, text = asyncio.run(timed())
    print(json.dumps({"seconds": seconds, "code": code, "lines": text.count("\n")}))


def walk(config: Path) -> None:
    from retention.budget import RequestBudget
    from retention.config import load_config
    from retention.runtime import open_runtime

    settings = load_config(config)

    async def run() -> dict[str, float | int | str | None]:
        async with open_runtime(settings) as runtime:
            runtime.client.budget = RequestBudget(1_000_000, burst=1000)
            baseline = rss_kib()
            print(f"walk starts rss_kib={baseline}", file=sys.stderr, flush=True)
            started = time.perf_counter()
            report = await runtime.engine.sweep("discover", discover=True, delete=False)
            seconds = time.perf_counter() - started
        return {
            "seconds": seconds,
            "pages": report.pages,
            "listed": report.listed,
            "new": report.new,
            "baseline_kib": baseline,
            "peak_kib": rss_kib("VmHWM"),
            "error": report.error,
        }

    print(json.dumps(asyncio.run(run())))


if __name__ == "__main__":
    probes = {"status": status, "walk": walk}
    if len(sys.argv) != 3 or sys.argv[1] not in probes:
        sys.exit(f"usage: {sys.argv[0]} {{status|walk}} CONFIG")
    probes[sys.argv[1]](Path(sys.argv[2]))
