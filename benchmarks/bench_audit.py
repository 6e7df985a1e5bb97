"""The audit's evidence commands on a big audit: export, verify and report, each in a process
of its own, with its wall time, CPU time and peak RSS (from ``os.wait4``).

    python benchmarks/bench_audit.py [--rows 1000000]

Builds (once; cached in /tmp/bench-audit) a SQLite store by the migrations whose audit holds
``--rows`` rows in one account's hash chain, spread over 30 days, 20 agents and 4 rules, then
runs ``retention audit export`` (JSON lines and CSV, to a file), ``audit verify`` and
``report --json`` on it. The goal: an export of a million rows in under 150 MB of peak RSS (it
streams; it never holds the rows).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from retention import chain
from retention.store import Store

ROOT = Path("/tmp/bench-audit")
GOAL_MIB = 150
# The audit columns after ``at`` and before the chain's, in the INSERT's order.
COLUMNS: tuple[str, ...] = ("account", "agent_id", "session_id", "name", "rule", "age_seconds")
COLUMNS += ("outcome", "detail", "sweep_id")
RULES = ("qa-tickets", "test-chats", "idle-anonymous", None)


def build(rows: int) -> Path:
    """A migrated store whose audit has ``rows`` chained rows (reused when already built)."""
    folder = ROOT / str(rows)
    db = folder / "retention.db"
    if (folder / "built").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("retention.db*"):
        stale.unlink()
    asyncio.run(_migrate(db))
    start = datetime.now(UTC) - timedelta(days=30)
    step = timedelta(days=30) / rows
    prev, batch = chain.GENESIS, []
    started = time.perf_counter()
    with sqlite3.connect(db) as conn:
        for seq in range(1, rows + 1):
            at = start + step * seq
            rule = RULES[seq % len(RULES)]
            values: dict[str, Any] = {
                "account": "default",
                "seq": seq,
                "prev": prev,
                "at": at,
                "agent_id": 1000 + seq % 20,
                "session_id": f"{seq:08x}-5f3e-4c2a-9d7b-0123456789ab",
                "name": f"QA-{seq} smoke test",
                "rule": rule,
                "age_seconds": round(86400 * 2 + seq % 7200, 3),
                "outcome": "failed" if seq % 97 == 0 else "deleted",
                "detail": f"policy {rule!r}: max_age 1d12h from created" if rule else None,
                "sweep_id": seq // 500 + 1,
            }
            digest = chain.digest(chain.link_fields(**values))
            text_at = at.isoformat(" ", "microseconds")[:-6]
            batch.append((text_at, *(values[k] for k in COLUMNS), seq, prev, digest))
            prev = digest
            if len(batch) == 20_000 or seq == rows:
                conn.executemany(
                    "INSERT INTO audit (at, account, agent_id, session_id, name, rule, "
                    "age_seconds, outcome, detail, sweep_id, seq, prev_hash, hash) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    batch,
                )
                batch.clear()
        conn.execute(
            "INSERT INTO audit_heads (account, seq, hash) VALUES ('default', ?, ?)", (rows, prev)
        )
    print(f"built {rows:,} chained audit rows in {time.perf_counter() - started:.1f} s")
    (folder / "retention.toml").write_text(
        f'[api]\nbase_url = "http://127.0.0.1:9/api/v1/"\n\n[store]\nurl = '
        f'"sqlite+aiosqlite:///{db}"\n\n[[policies]]\nname = "qa-tickets"\n'
        'agents = "*"\nname_regex = "^QA-"\nmax_age = "36h"\n',
        encoding="utf-8",
    )
    (folder / "built").touch()
    return folder


async def _migrate(db: Path) -> None:
    store = await Store.open(f"sqlite+aiosqlite:///{db}")
    await store.close()


def measure(label: str, command: list[str]) -> tuple[float, float, float]:
    """Run ``command``; (wall s, CPU s, peak RSS MiB) of that process alone."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _pid, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        assert process.stderr is not None
        sys.exit(f"{label} exited {code}: {process.stderr.read().decode()[-2000:]}")
    figures = (wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024)
    print(f"  {label:<22} {figures[0]:7.1f} s wall {figures[1]:7.1f} s CPU {figures[2]:7.0f} MiB")
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    folder = build(args.rows)
    config = str(folder / "retention.toml")
    retention = [sys.executable, "-m", "retention"]
    print(f"{args.rows:,} audit rows, one account; each command in its own process:", flush=True)
    results = {}
    for fmt in ("jsonl", "csv"):
        out = folder / f"export.{fmt}"
        out.unlink(missing_ok=True)
        export = [*retention, "audit", "export", "--config", config, "--format", fmt]
        results[fmt] = measure(f"audit export {fmt}", [*export, "--out", str(out)])
        size = out.stat().st_size / 2**20
        lines = sum(1 for _ in out.open("rb"))
        print(f"  {'':<22} {size:7.0f} MiB written, {lines:,} lines")
        out.unlink()
    results["verify"] = measure("audit verify", [*retention, "audit", "verify", "--config", config])
    results["report"] = measure(
        "report --json", [*retention, "report", "--config", config, "--json"]
    )
    peak = max(results["jsonl"][2], results["csv"][2])
    rate = args.rows / results["jsonl"][0]
    verdict = "met" if peak < GOAL_MIB else "NOT met"
    print(f"export: {rate:,.0f} rows/s; peak RSS {peak:.0f} MiB, goal < {GOAL_MIB} MiB: {verdict}")
    return 0 if peak < GOAL_MIB else 1


if __name__ == "__main__":
    sys.exit(main())
