"""``retention demo``: the emulator, a readable config and the daemon, together for a minute.

It needs no token and no network: the emulator serves on a loopback port inside the process,
the store is a temporary SQLite file, and the daemon runs a few discovery and deletion cycles
while new conversations arrive and others come due. Then it shows what was deleted and why, and
what was kept and why.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from rich.console import Console
from rich.table import Table

from retention.config import load_config
from retention.emulator import (
    DEFAULT_TOKEN,
    HELD_SAMPLE_SESSION,
    Emulator,
    EmulatorState,
    sample_state,
)
from retention.models import AuditOutcome, AuditRecord, State, TrackedConversation
from retention.runtime import open_runtime, run_daemon
from retention.timefmt import format_duration

logger = logging.getLogger(__name__)

CONFIG = """\
# The demo's configuration: in a temporary folder, or the one `retention demo --keep` names.
[api]
base_url = "{base_url}"
requests_per_minute = 600     # the emulator's budget; real accounts have 60 to 120
token_file = "token"

[store]
url = "sqlite+aiosqlite:///{store}"

[schedule]
discover_every = "4s"
delete_every = "2s"
watch_config = false

[admin]
listen = ""                   # no admin surface: the demo needs no port of its own

[[policies]]                  # test chats go after an hour
name = "test-chats"
agents = [532, 533]
name_matches = ["Test*"]
max_age = "1h"

[[policies]]                  # QA tickets, on every agent, after a day and a half
name = "qa-tickets"
agents = "*"
name_regex = "^QA-\\\\d+"
max_age = "36h"

[[policies]]                  # anonymous sales chats idle for 30 days
name = "idle-anonymous"
agents = [533]
user_type = "anonymous"
max_age = "30d"
age_from = "last_activity"

[[holds]]                     # never delete legal material, or one named conversation
name = "legal"
agents = "*"
name_matches = ["LEGAL*"]
session_ids = ["{held}"]
"""


def demo_state(now: datetime) -> EmulatorState:
    """The sample (three agents, 100 conversations each) plus test chats about to expire."""
    state = sample_state(now=now, per_agent=100)
    for n, seconds in enumerate((8, 14, 20, 26), start=1):
        state.add_conversation(
            532,
            f"Test checkout flow {n}",
            created_at=now - timedelta(hours=1) + timedelta(seconds=seconds),
            created_by=17,
        )
    return state


async def _arrivals(emulator: Emulator, stop: asyncio.Event) -> None:
    """New chats keep arriving while the daemon runs, some of them already an hour old."""
    n = 0
    while not stop.is_set():
        await asyncio.sleep(3)
        n += 1
        now = datetime.now(UTC)
        emulator.state.add_conversation(
            533, f"Test import {n}", created_at=now - timedelta(hours=2)
        )
        emulator.state.add_conversation(533, f"Customer question {n}", created_at=now)


async def run_demo(
    *, seconds: float = 20.0, out: Console | None = None, keep: Path | None = None
) -> int:
    console = out or Console()
    now = datetime.now(UTC)
    emulator = Emulator(demo_state(now))
    with _folder(keep) as base:
        (base / "token").write_text(DEFAULT_TOKEN, encoding="utf-8")
        async with emulator.serve() as url:
            config = base / "retention.toml"
            text = CONFIG.format(
                base_url=url, store=base / "retention.db", held=HELD_SAMPLE_SESSION
            )
            config.write_text(text, encoding="utf-8")
            settings = load_config(config)
            console.print(
                f"[bold]retention demo[/]: an emulated CustomGPT API at {url} with "
                f"{emulator.state.count()} conversations in {len(emulator.state.agents)} agents.\n"
                f"Policies: test-chats (Test*, 1h), qa-tickets (QA-n, 36h), idle-anonymous "
                f"(agent 533, 30d idle); hold: legal.\nThe daemon runs for {seconds:.0f}s: "
                "discovery every 4s, deletion every 2s, while new chats arrive.\n"
            )
            stop = asyncio.Event()
            feeder = asyncio.create_task(_arrivals(emulator, stop))
            async with open_runtime(settings) as runtime:
                await run_daemon(runtime, run_for=seconds)
                stop.set()
                await feeder
                tracked = await runtime.store.conversations()
                trail = await runtime.store.journal.audit_trail()
                calls = runtime.client.stats.by_kind()
                chain = await runtime.store.journal.audit.verify()
        _report(console, tracked, trail, calls, emulator)
        verdict = "verified" if chain.ok else f"BROKEN: {chain.problem}"
        console.print(f"Audit chain: {chain.checked} rows, head #{chain.head.seq}, {verdict}.")
        if keep is not None:
            console.print(
                f"Kept in {keep}: try `retention audit verify --config {config}`, "
                f"`retention report --config {config}` and `retention status --config {config}`."
            )
    return 0


@contextmanager
def _folder(keep: Path | None) -> Iterator[Path]:
    """Where the demo's config and store go: ``keep`` (made if missing), or a temporary folder."""
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
        return
    with tempfile.TemporaryDirectory(prefix="retention-demo-") as folder:
        yield Path(folder)


def _report(
    console: Console,
    tracked: Sequence[TrackedConversation],
    trail: Sequence[AuditRecord],
    calls: dict[str, int],
    emulator: Emulator,
) -> None:
    now = datetime.now(UTC)
    deleted = [a for a in trail if a.outcome is AuditOutcome.DELETED]
    console.print()
    table = Table(title=f"Deleted: {len(deleted)} conversations", title_justify="left")
    for header in ("rule", "deleted", "for example", "age at deletion"):
        table.add_column(header)
    by_rule = Counter(a.rule for a in deleted)
    for rule, count in by_rule.most_common():
        example = next(a for a in deleted if a.rule == rule)
        table.add_row(str(rule), str(count), repr(example.name), format_duration(example.age))
    console.print(table)

    kept = Table(title="Kept, and why", title_justify="left")
    for header in ("why", "conversations", "for example"):
        kept.add_column(header)
    live = [c for c in tracked if c.state in (State.ACTIVE, State.HELD)]
    groups: dict[str, list[TrackedConversation]] = {}
    for c in live:
        if c.state is State.HELD:
            key = f"held by {c.rule!r}"
        elif c.rule is None:
            key = "no policy matches"
        else:
            key = f"not yet due under {c.rule!r}"
        groups.setdefault(key, []).append(c)
    for key, members in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        sample = min(members, key=lambda c: c.due_at or now)
        hint = repr(sample.name)
        if sample.due_at is not None and sample.due_at <= now:
            hint += ", due now: the next deletion sweep takes it"
        elif sample.due_at is not None:
            hint += f", due in {format_duration(sample.due_at - now)}"
        kept.add_row(key, str(len(members)), hint)
    console.print(kept)
    total_calls = sum(calls.values())
    detail = ", ".join(f"{k} {v}" for k, v in sorted(calls.items()))
    console.print(
        f"API calls: {total_calls} ({detail}). Still on the emulator: {emulator.state.count()}.\n"
        "Every deletion has an audit row (rule, age, outcome); `retention plan` shows what "
        "would go next, and `retention emulate` serves this API for your own tests."
    )


def main(seconds: float, *, keep: Path | None = None) -> int:
    console = Console(file=sys.stdout, width=None if sys.stdout.isatty() else 120)
    return asyncio.run(run_demo(seconds=seconds, out=console, keep=keep))
