"""`retention diff` on a store of a million conversations: wall time, CPU and peak RSS.

    python benchmarks/bench_diff.py [--size 1000000]

Uses the store `make bench-store` builds and caches (ten agents, anonymous chats created over
the last 20 days, a hundred 40 days old; one policy, `max_age = "30d"`), and compares it with an
edit that shortens the policy to 10 days: about half the store becomes newly due. The diff runs
in a process of its own (`os.wait4` gives its CPU time and peak RSS). Goals: under a minute,
and memory that does not follow the store (under 150 MiB).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench_store import cached_store, fresh_copy, write_config

CACHE = Path("/tmp/retention-bench-store")
WORK = Path("/tmp/bench-diff")
GOAL_SECONDS, GOAL_MIB = 60.0, 150.0


def measure(command: list[str]) -> tuple[float, float, float, bytes]:
    """(wall s, CPU s, peak RSS MiB, stdout) of ``command``'s own process (``os.wait4``)."""
    out, err = WORK / "diff.out", WORK / "diff.err"
    started = time.perf_counter()
    with out.open("wb") as stdout, err.open("wb") as stderr:
        process = subprocess.Popen(command, stdout=stdout, stderr=stderr)
        _pid, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, 3):  # 3: the edit newly makes conversations due
        sys.exit(f"diff exited {code}: {err.read_text()[-2000:]}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, out.read_bytes()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1_000_000)
    args = parser.parse_args()
    source, _base, built = asyncio.run(cached_store(args.size, CACHE))
    if built is not None:
        print(f"built a store of {args.size:,} conversations in {built:.0f} s", flush=True)
    WORK.mkdir(parents=True, exist_ok=True)
    db = fresh_copy(source, WORK / "retention.db")
    api = "http://127.0.0.1:9/api/v1/"
    current = write_config(WORK / "current", api_url=api, store=db, max_age="30d")
    edited = write_config(WORK / "edited", api_url=api, store=db, max_age="10d")
    retention = [sys.executable, "-m", "retention"]
    subprocess.run([*retention, "db", "upgrade", "--config", str(current)], check=True)
    command = [*retention, "diff", "--config", str(current), str(edited), "--json"]
    wall, cpu, rss, out = measure(command)
    doc = json.loads(out)
    weighed = sum(a["conversations"] for a in doc["accounts"])
    print(f"retention diff on {weighed:,} conversations (max_age 30d -> 10d):")
    print(f"  {doc['newly_due']:,} newly due; {wall:.1f} s wall, {cpu:.1f} s CPU, {rss:.0f} MiB")
    met = wall < GOAL_SECONDS and rss < GOAL_MIB
    print(
        f"goals: under {GOAL_SECONDS:.0f} s and {GOAL_MIB:.0f} MiB: {'met' if met else 'NOT met'}"
    )
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
