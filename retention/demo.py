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
from typing import TypeAlias

from rich.console import Console

from retention.config import load_config
from retention.emulator import (
    DEFAULT_TOKEN,
    HELD_SAMPLE_SESSION,
    EmuConversation,
    Emulator,
    EmulatorState,
    sample_state,
)
from retention.models import (
    TERMINAL_STATES,
    AuditOutcome,
    AuditRecord,
    State,
    TrackedConversation,
)
from retention.render import plural, titled
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
        token = base / "token"
        token.write_text(DEFAULT_TOKEN, encoding="utf-8")
        token.chmod(0o600)  # a token file, even the emulator's: readable by its owner only
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
        yield keep.resolve()  # the config names its files absolutely: run from anywhere
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
    table = titled(f"Deleted: {plural(len(deleted), 'conversation')}")
    for header in ("rule", "deleted", "for example", "age at deletion"):
        table.add_column(header)
    by_rule = Counter(a.rule for a in deleted)
    for rule, count in by_rule.most_common():
        example = next(a for a in deleted if a.rule == rule)
        table.add_row(str(rule), str(count), repr(example.name), format_duration(example.age))
    console.print(table)

    left = emulator.state.count()
    kept = titled(f"Kept, and why: the {plural(left, 'conversation')} still on the emulator")
    for header in ("why", "conversations", "for example"):
        kept.add_column(header)
    groups = _kept_groups(tracked, emulator, now)
    for key, members in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        kept.add_row(key, str(len(members)), _hint(key, members, now))
    console.print(kept)
    total_calls = sum(calls.values())
    detail = ", ".join(f"{k} {v}" for k, v in sorted(calls.items()))
    console.print(
        f"API calls: {total_calls} ({detail}). Still on the emulator: {left}.\n"
        "Every deletion has an audit row (rule, age, outcome); `retention plan` shows what "
        "would go next, and `retention emulate` serves this API for your own tests."
    )


NOT_SEEN = "arrived after the last discovery"
Kept: TypeAlias = TrackedConversation | EmuConversation  # seen by the daemon, or not yet


def _kept_groups(
    tracked: Sequence[TrackedConversation], emulator: Emulator, now: datetime
) -> dict[str, list[Kept]]:
    """Every conversation still on the emulator, by why it is there: so the rows add up to
    what is left, including the arrivals no walk has seen yet."""
    known = {c.session_id: c for c in tracked}
    groups: dict[str, list[Kept]] = {}
    for agent in emulator.state.agents.values():
        for remote in agent.conversations.values():
            c = known.get(remote.session_id)
            if c is None:
                key = NOT_SEEN
            elif c.state is State.HELD:
                key = f"held by {c.rule!r}"
            elif c.state is State.DELETING:
                key = "left mid-delete"
            elif c.state in TERMINAL_STATES:
                key = "recorded deleted, still listed"
            elif c.rule is None or c.due_at is None:
                key = "no policy matches"
            elif c.due_at <= now:
                key = f"due under {c.rule!r}"
            else:
                key = f"not yet due under {c.rule!r}"
            groups.setdefault(key, []).append(c if c is not None else remote)
    return groups


def _hint(key: str, members: Sequence[Kept], now: datetime) -> str:
    """An example of the group, and when the soonest of it is due (or since when)."""
    if key == NOT_SEEN:
        return f"{members[0].name!r}: the daemon's next walk finds it"
    records = [m for m in members if isinstance(m, TrackedConversation)]
    sample = min(records, key=lambda c: c.due_at or now)
    hint = repr(sample.name)
    if sample.due_at is not None and sample.due_at <= now:
        hint += f", due since {format_duration(now - sample.due_at)}: the next deletion sweep"
    elif sample.due_at is not None:
        hint += f", due in {format_duration(sample.due_at - now)}"
    return hint


def main(seconds: float, *, keep: Path | None = None) -> int:
    console = Console(file=sys.stdout, width=None if sys.stdout.isatty() else 120)
    return asyncio.run(run_demo(seconds=seconds, out=console, keep=keep))
