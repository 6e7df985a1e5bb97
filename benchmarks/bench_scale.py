"""How many accounts one process serves: one ``retention once`` over many emulated accounts.

    python benchmarks/bench_scale.py [--accounts 200] [--conversations 500] [--rpm 600]
                                     [--store sqlite|URL] [--per-page 20]
    make bench-scale [BENCH_SCALE_ARGS="--conversations 300"]

Each account is an emulator of its own (own token, state and request log) with one agent (532)
of ``--conversations`` conversations, all created 2 hours ago: half named "Test old N", due
under the one policy (``name_matches = ["Test*"]``, ``max_age = "1h"``), the other half
"Customer N", which no policy matches. The page size is ``--per-page`` (20, the real API's).

The emulators run in a child process (``--serve-emulators``, all on one port through
:func:`retention.emulator.server.serve_many`), so that the retention process's CPU is measured
alone. The benchmark writes a config in ``--workdir`` with one ``[[accounts]]`` entry per account
(``requests_per_minute = --rpm``, ``burst = --burst``; the tokens in env variables it sets), the
mass-deletion breaker out of the way (``max_deletions`` above every account's due set,
``max_due_fraction = 1``), ``policy_change_grace = "0"``, no admin surface, and a fresh SQLite
store (or ``--store URL``: it must name an empty database, nothing is cleared there). It runs
``retention db upgrade`` (not measured), then ``python -m retention once`` as a subprocess:
every account swept at once, each deleting its whole due set on its own budget. Together the
budgets (200 x 600 a minute = 2,000 calls a second by default) are more than one process can
use: that is the point; the figures are what it does use.

Measured: the wall time of ``once`` (the interpreter's start and imports included), its CPU
seconds (user + sys) and peak RSS from ``os.wait4``, the calls the emulators served (from their
request logs), the rate overall and over the busy middle (between the 10th and 90th percentile
of arrival times), CPU seconds per 1,000 calls, and, for each account, the share of its budget
it used while it had due work: its calls from its first to its last DELETE, divided by what its
budget allows in that span (rpm / 60 x seconds + burst). The emulator child's CPU is shown too:
it shares the machine, and when it is near one core it is the emulators that bound the rate.

The run is checked: every due conversation deleted in every account, none of the others, and
``once`` exits 0; otherwise it prints why and exits 1. No figure is asserted (a benchmark, not
a test). On 2 cores the defaults (200 accounts of 500 conversations, 55,200 calls) take about
6 minutes; ``--conversations 300`` about 3.5.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from retention.emulator import Emulator
from retention.emulator.seed import EmulatorState
from retention.emulator.server import serve_many

AGENT_ID = 532
DUE_NAME = "Test old {n}"
KEPT_NAME = "Customer {n}"
TOKEN_ENV = "BENCH_SCALE_TOKEN_{name}"
Request = tuple[str, str, int, float]  # method, path, status, arrival (time.monotonic())


def account_names(count: int) -> list[str]:
    width = max(3, len(str(count)))
    return [f"acct{n:0{width}d}" for n in range(1, count + 1)]


def token_of(name: str) -> str:
    return f"bench-scale-token-{name}"


def token_env(name: str) -> str:
    return TOKEN_ENV.format(name=name.upper())


# ---- the child: the emulators -----------------------------------------------------------------


def seed_account(conversations: int, now: datetime) -> EmulatorState:
    state = EmulatorState()
    state.add_agent(AGENT_ID, "Support bot", created_at=now - timedelta(days=400))
    created = now - timedelta(hours=2)
    for n in range(conversations):
        name = (DUE_NAME if n % 2 == 0 else KEPT_NAME).format(n=n)
        state.add_conversation(AGENT_ID, name, created_at=created)
    return state


async def serve_emulators(
    names: list[str], conversations: int, per_page: int, urls_file: Path
) -> dict[str, Any]:
    """Serve every account's emulator on one port until SIGTERM; return their request logs and
    what is left in each."""
    now = datetime.now(UTC)
    emulators = {
        name: Emulator(seed_account(conversations, now), token=token_of(name), per_page=per_page)
        for name in names
    }
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with serve_many(emulators) as urls:
        partial = urls_file.with_suffix(".partial")
        await asyncio.to_thread(partial.write_text, json.dumps(urls), "utf-8")
        await asyncio.to_thread(partial.rename, urls_file)  # whole, or not there
        await stop.wait()
    out: dict[str, Any] = {}
    for name, emulator in emulators.items():
        left = [c.name for c in emulator.state.agents[AGENT_ID].conversations.values()]
        out[name] = {
            "requests": [[s.method, s.path, s.status, s.at] for s in emulator.served],
            "due_left": sum(n.startswith("Test") for n in left),
            "kept": sum(n.startswith("Customer") for n in left),
        }
    return out


def child_main(args: argparse.Namespace) -> None:
    names = account_names(args.accounts)
    logs = asyncio.run(serve_emulators(names, args.conversations, args.per_page, args.urls_file))
    partial = args.log_file.with_suffix(".partial")
    partial.write_text(json.dumps(logs), encoding="utf-8")
    partial.rename(args.log_file)


# ---- the parent: config, the measured run, the figures ------------------------------------------


def write_config(
    path: Path, urls: dict[str, str], args: argparse.Namespace, store_url: str
) -> None:
    lines = [
        "[api]",
        f"max_concurrency = {args.max_concurrency}",
        "",
        "[store]",
        f"url = {json.dumps(store_url)}",
        "",
        "[safety]",
        "dry_run = false",
        'policy_change_grace = "0"',
        f"max_deletions = {max(1, args.conversations)}",  # above every account's due set
        "max_due_fraction = 1.0",
        "",
        "[admin]",
        'listen = ""',
        "",
        "[log]",
        'format = "json"',
        'level = "INFO"',
        "",
    ]
    for name, url in urls.items():
        lines += [
            "[[accounts]]",
            f'name = "{name}"',
            f'token_env = "{token_env(name)}"',
            f'base_url = "{url}"',
            f"requests_per_minute = {args.rpm}",
            f"burst = {args.burst}",
            "",
        ]
    lines += [
        "[[policies]]",
        'name = "qa-chats"',
        f"agents = [{AGENT_ID}]",
        'name_matches = ["Test*"]',
        'max_age = "1h"',
        "",
    ]
    path.write_text("\n".join(lines), encoding="utf-8")


@dataclass
class Measured:
    code: int
    started: float  # time.monotonic() just before the start: the emulators' clock too
    wall: float
    user: float
    system: float
    max_rss_kib: int


def run_measured(
    command: list[str], *, env: dict[str, str], out: Path, err: Path, timeout: float
) -> Measured:
    """Run ``command`` and take its own resource usage from ``os.wait4`` (not its siblings')."""
    with out.open("wb") as stdout, err.open("wb") as stderr:
        started, monotonic = time.perf_counter(), time.monotonic()
        process = subprocess.Popen(
            command, env=env, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr
        )
        status, usage = reap(process, within=timeout)
        wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    return Measured(
        process.returncode, monotonic, wall, usage.ru_utime, usage.ru_stime, int(usage.ru_maxrss)
    )


def kind_of(method: str, path: str) -> str:
    if method == "DELETE":
        return "delete"
    if path.endswith("/settings"):
        return "settings"
    if path.endswith("/conversations"):
        return "list_conversations" if method == "GET" else "create"
    if path.endswith("/projects"):
        return "list_agents"
    if path.endswith("/messages"):
        return "messages"
    return f"{method} other"


def budget_share(requests: list[Request], rpm: int, burst: int) -> float | None:
    """The account's calls from its first to its last DELETE over what its budget allows then."""
    deletes = [r[3] for r in requests if r[0] == "DELETE"]
    if not deletes:
        return None
    first, last = min(deletes), max(deletes)
    calls = sum(first <= r[3] <= last for r in requests)
    return calls / (rpm / 60 * (last - first) + burst)


def spread(values: list[float], fmt: str) -> str:
    if not values:
        return "n/a"
    low, mid, high = min(values), statistics.median(values), max(values)
    return f"min {low:{fmt}}  median {mid:{fmt}}  max {high:{fmt}}"


def reap(process: subprocess.Popen[bytes], *, within: float) -> tuple[int, Any]:
    """Wait for ``process`` (SIGKILL after ``within`` seconds): its wait status and its own
    resource usage, from ``os.wait4``."""
    deadline = time.monotonic() + within
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            return status, usage
        if time.monotonic() > deadline:
            process.kill()
            _pid, status, usage = os.wait4(process.pid, 0)
            return status, usage
        time.sleep(0.05)


def stop_child(child: subprocess.Popen[bytes]) -> tuple[int, float]:
    """SIGTERM the emulators; their exit status and CPU seconds."""
    child.send_signal(signal.SIGTERM)
    status, usage = reap(child, within=120)
    child.returncode = os.waitstatus_to_exitcode(status)
    return child.returncode, usage.ru_utime + usage.ru_stime


def fail(message: str, *logs: Path) -> None:
    print(f"bench_scale: {message}", file=sys.stderr)
    for log in logs:
        if log.exists():
            tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
            print(f"--- last lines of {log}:", *tail, sep="\n", file=sys.stderr)
    sys.exit(1)


def main(args: argparse.Namespace) -> None:
    work: Path = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    urls_file, log_file = work / "urls.json", work / "requests.json"
    for stale in (urls_file, log_file):
        stale.unlink(missing_ok=True)
    names = account_names(args.accounts)
    due_each = (args.conversations + 1) // 2
    kept_each = args.conversations // 2

    child_code, emulator_cpu = -1, math.nan
    child_command = [
        sys.executable, __file__, "--serve-emulators",
        "--accounts", str(args.accounts), "--conversations", str(args.conversations),
        "--per-page", str(args.per_page),
        "--urls-file", str(urls_file), "--log-file", str(log_file),
    ]  # fmt: skip
    emulator_err = work / "emulators.log"
    with emulator_err.open("wb") as err:
        child = subprocess.Popen(child_command, stdin=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 300
        while not urls_file.exists():
            if child.poll() is not None or time.monotonic() > deadline:
                fail("the emulators did not start", emulator_err)
            time.sleep(0.1)
        urls: dict[str, str] = json.loads(urls_file.read_text(encoding="utf-8"))

        if args.store == "sqlite":
            database = work / "scale.db"
            for stale in work.glob("scale.db*"):  # the file, its -wal, -shm and lock files
                stale.unlink()
            store_url = f"sqlite+aiosqlite:///{database}"
        else:
            store_url = args.store
        config = work / "retention.toml"
        write_config(config, urls, args, store_url)
        env = {k: v for k, v in os.environ.items() if not k.startswith("RETENTION_")}
        env.update({token_env(name): token_of(name) for name in names})

        retention = [sys.executable, "-m", "retention"]
        upgrade = subprocess.run(
            [*retention, "db", "upgrade", "--config", str(config)],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if upgrade.returncode != 0:
            fail(f"retention db upgrade failed:\n{upgrade.stderr}")
        once_out, once_err = work / "once.out", work / "once.log"
        run = run_measured(
            [*retention, "once", "--config", str(config)],
            env=env,
            out=once_out,
            err=once_err,
            timeout=args.timeout,
        )
    finally:
        if child.returncode is None:
            child_code, emulator_cpu = stop_child(child)
    if child_code != 0 or not log_file.exists():
        fail(f"the emulators exited {child_code} without their request log", emulator_err)
    logs: dict[str, Any] = json.loads(log_file.read_text(encoding="utf-8"))

    # ---- correctness ----
    problems = []
    if run.code != 0:
        problems.append(f"retention once exited {run.code} (see {once_err})")
    for name in names:
        account = logs[name]
        if account["due_left"]:
            problems.append(f"{name}: {account['due_left']} due conversation(s) not deleted")
        if account["kept"] != kept_each:
            lost = kept_each - account["kept"]
            problems.append(f"{name}: {lost} conversation(s) deleted that were not due")
    if problems:
        more = [f"... and {len(problems) - 10} more"] if len(problems) > 10 else []
        fail("the run is wrong:\n  " + "\n  ".join(problems[:10] + more), once_err)

    # ---- figures ----
    kinds: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    arrivals: list[float] = []
    shares: list[float] = []
    spans: list[float] = []
    for name in names:
        requests: list[Request] = [
            (str(m), str(p), int(s), float(a)) for m, p, s, a in logs[name]["requests"]
        ]
        for method, path, status, at in requests:
            kinds[kind_of(method, path)] += 1
            statuses[status] += 1
            arrivals.append(at)
        share = budget_share(requests, args.rpm, args.burst)
        if share is not None:
            shares.append(share)
        if requests:
            spans.append(max(r[3] for r in requests) - min(r[3] for r in requests))
    arrivals.sort()
    calls = len(arrivals)
    cpu = run.user + run.system
    overall_rate = calls / run.wall
    p10, p90 = arrivals[int(0.1 * (calls - 1))], arrivals[int(0.9 * (calls - 1))]
    busy_calls = sum(p10 <= at <= p90 for at in arrivals)
    busy_rate = busy_calls / (p90 - p10) if p90 > p10 else math.nan
    cpu_per_1000 = cpu / calls * 1000
    budgets = args.accounts * args.rpm / 60
    first_call = arrivals[0] if arrivals else math.nan

    print(
        f"{args.accounts} accounts x {args.conversations} conversations (1 agent, "
        f"{due_each} due each; per_page {args.per_page}), {args.rpm} calls/min + burst "
        f"{args.burst} each = {budgets:,.0f} calls/s of budget, max_concurrency "
        f"{args.max_concurrency}, store {'SQLite' if args.store == 'sqlite' else args.store}"
    )
    rows = [
        ("retention once: wall time (process start to exit)", f"{run.wall:.1f} s"),
        ("  of which before its first call (start, leases)", f"{first_call - run.started:.1f} s"),
        ("  CPU user + sys", f"{run.user:.1f} + {run.system:.1f} = {cpu:.1f} s"),
        ("  CPU utilisation (of one core)", f"{cpu / run.wall:.0%}"),
        ("  peak RSS", f"{run.max_rss_kib / 1024:.0f} MiB"),
        ("API calls served", f"{calls:,}  {dict(sorted(kinds.items()))}"),
        ("  statuses", f"{dict(sorted(statuses.items()))}"),
        ("calls/s, whole run (calls / wall)", f"{overall_rate:.0f}"),
        ("calls/s, busy middle (10th-90th pct of arrivals)", f"{busy_rate:.0f}"),
        ("CPU seconds per 1,000 calls", f"{cpu_per_1000:.2f} s"),
        ("budget share used while due work was left", spread(shares, ".0%")),
        ("each account's first to last call", spread(spans, ".1f") + " s"),
        (
            "emulator process CPU (other process, same cores)",
            f"{emulator_cpu:.1f} s ({emulator_cpu / run.wall:.0%} of one core)",
        ),
    ]
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:{width}s}  {value}")
    # At 60 calls a minute an account needs 1 call/s. One process serves as many such accounts
    # as the lower of two limits allows: the calls/s it sustained here with every budget more
    # than it could use (busy middle rate / 1 call/s per account), and what one core's CPU
    # affords (1,000 / CPU seconds per 1,000 calls = calls/s per core, / 1 call/s per account).
    by_rate = busy_rate / 1.0
    by_cpu = 1000 / cpu_per_1000 / 1.0
    print(
        f"accounts one process can serve at 60 calls a minute each: ~{_round(min(by_rate, by_cpu))}"
        f" (the lower of {busy_rate:.0f} calls/s sustained / 1 call/s per account = "
        f"{by_rate:.0f}, and 1000 / {cpu_per_1000:.2f} CPU-s per 1,000 calls = {by_cpu:.0f} "
        "per core)"
    )
    if busy_rate > 0.9 * budgets:
        print(
            "  (the budgets, not the process, bound this run: the figure is a lower bound; "
            "add accounts or raise --rpm to measure the process)"
        )


def _round(value: float) -> str:
    if not math.isfinite(value) or value <= 0:
        return "n/a"
    digits = max(0, len(str(int(value))) - 2)
    return f"{round(value, -digits):,.0f}"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--accounts", type=int, default=200)
    parser.add_argument(
        "--conversations", type=int, default=500, help="per account (300: about 3.5 minutes)"
    )
    parser.add_argument("--rpm", type=int, default=600, help="each account's requests a minute")
    parser.add_argument("--burst", type=int, default=10, help="each account's burst")
    parser.add_argument("--per-page", type=int, default=20, help="the emulators' page size")
    parser.add_argument("--max-concurrency", type=int, default=4, help="[api] max_concurrency")
    parser.add_argument(
        "--store", default="sqlite", help="'sqlite' (a fresh file) or a store URL (empty database)"
    )
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench-scale"))
    parser.add_argument("--timeout", type=float, default=1200, help="seconds for `once`")
    parser.add_argument("--serve-emulators", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--urls-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--log-file", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.serve_emulators:
        child_main(arguments)
    else:
        main(arguments)
