"""Live reload under a running daemon: a bad edit changes nothing, a good one takes effect."""

from __future__ import annotations

import asyncio
import logging
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from retention.config import load_config
from retention.emulator import Emulator
from retention.reload import ConfigWatcher

from .conftest import EngineFactory
from .daemon_process import start, stop, wait_for

BASE = """
[api]
base_url = "{url}"
requests_per_minute = 6000
[store]
url = "sqlite+aiosqlite:///{db}"
[schedule]
discover_every = "1s"
delete_every = "1s"
watch_config = {watch}
[admin]
listen = ""
{safety}"""
NO_GRACE = '[safety]\npolicy_change_grace = "0"\n'
POLICY = """
[[policies]]
name = "chats"
agents = [532]
name_matches = {globs}
max_age = "{max_age}"
"""


def write(config: Path, base: str, *, globs: str, max_age: str) -> None:
    config.write_text(base + POLICY.format(globs=globs, max_age=max_age), encoding="utf-8")


async def test_bad_edit_is_rejected_and_a_good_edit_applies_without_restart(
    emulator: Emulator, tmp_path: Path
) -> None:
    temp = emulator.state.add_conversation(
        532, "Temp chat", created_at=datetime.now(UTC) - timedelta(hours=2)
    )
    async with emulator.serve() as url:
        base = BASE.format(url=url, db=tmp_path / "r.db", watch="true", safety=NO_GRACE)
        config = tmp_path / "retention.toml"
        write(config, base, globs='["Test*"]', max_age="1h")
        process = await start(config, "run", env={"CUSTOMGPT_API_TOKEN": "emulator-token"})
        try:
            await wait_for(lambda: len(emulator.calls("GET", "*/conversations")) >= 1)
            write(config, base, globs='["Test*", "Temp*"]', max_age="3 parsecs")
            # The watcher polls every 2s and reads until the file settles (1s): give it 6s.
            listed = len(emulator.calls("GET", "*/conversations"))
            await wait_for(
                lambda: len(emulator.calls("GET", "*/conversations")) >= listed + 6, within=20
            )
            assert temp.session_id in emulator.live_sessions(532), "the bad edit changed nothing"
            write(config, base, globs='["Test*", "Temp*"]', max_age="1h")
            await wait_for(lambda: temp.session_id not in emulator.live_sessions(532), within=20)
        finally:
            code, output = await stop(process)
    assert code == 0
    reloads = [line for line in output.splitlines() if '"logger": "retention.reload"' in line]
    rejected = [line for line in reloads if "rejected" in line]
    assert len(rejected) == 1
    assert "config reload (file changed) rejected, the rules in force stay" in rejected[0]
    assert "policies[0] 'chats': max_age: invalid duration '3 parsecs'" in rejected[0]
    assert "config reload (file changed): 1 policy and 0 holds in force" in output


async def test_sighup_reloads_when_watching_is_off(emulator: Emulator, tmp_path: Path) -> None:
    temp = emulator.state.add_conversation(
        532, "Temp chat", created_at=datetime.now(UTC) - timedelta(hours=2)
    )
    async with emulator.serve() as url:
        base = BASE.format(url=url, db=tmp_path / "r.db", watch="false", safety=NO_GRACE)
        config = tmp_path / "retention.toml"
        write(config, base, globs='["Test*"]', max_age="1h")
        process = await start(config, "run", env={"CUSTOMGPT_API_TOKEN": "emulator-token"})
        try:
            await wait_for(lambda: len(emulator.calls("GET", "*/conversations")) >= 1)
            write(config, base, globs='["Temp*"]', max_age="1h")
            await wait_for(lambda: len(emulator.calls("GET", "*/conversations")) >= 4, within=20)
            assert temp.session_id in emulator.live_sessions(532), "not watching: no reload yet"
            process.send_signal(signal.SIGHUP)
            await wait_for(lambda: temp.session_id not in emulator.live_sessions(532), within=20)
        finally:
            code, output = await stop(process)
    assert code == 0
    assert "config reload (SIGHUP)" in output


HOLD = """
[[holds]]
name = "legal"
name_matches = ["LEGAL*"]
"""


async def test_a_config_written_in_two_halves_deletes_nothing_held(
    emulator: Emulator, tmp_path: Path
) -> None:
    """The first half (valid, without the holds) settles and loads; the default grace keeps
    every conversation it un-holds until the second half restores the hold."""
    old = datetime.now(UTC) - timedelta(hours=2)
    held = [emulator.state.add_conversation(532, f"LEGAL {n}", created_at=old) for n in range(40)]
    temp = emulator.state.add_conversation(532, "Temp chat", created_at=old)
    async with emulator.serve() as url:
        base = BASE.format(url=url, db=tmp_path / "r.db", watch="true", safety="")
        policy = POLICY.format(globs='["*"]', max_age="1h")
        config = tmp_path / "retention.toml"
        config.write_text(base + policy + HOLD, encoding="utf-8")
        process = await start(config, "run", env={"CUSTOMGPT_API_TOKEN": "emulator-token"})
        try:
            await wait_for(lambda: temp.session_id not in emulator.live_sessions(532))
            config.write_text(base + policy, encoding="utf-8")  # the first half...
            await asyncio.sleep(4)
            config.write_text(base + policy + HOLD, encoding="utf-8")  # ...and the rest
            listed = len(emulator.calls("GET", "*/conversations"))
            await wait_for(
                lambda: len(emulator.calls("GET", "*/conversations")) >= listed + 4, within=20
            )
        finally:
            code, output = await stop(process)
    assert code == 0
    alive = emulator.live_sessions(532)
    assert [c.name for c in held if c.session_id not in alive] == [], "no held one deleted"
    assert "config reload (file changed): 1 policy and 0 holds in force" in output
    assert "40 conversations newly due wait out the policy change grace" in output
    assert "config reload (file changed): 1 policy and 1 hold in force" in output
    assert emulator.calls("DELETE") and len(emulator.calls("DELETE")) == 1


async def test_reload_waits_for_the_file_to_settle_and_parses_what_it_read(
    make_engine: EngineFactory, tmp_path: Path
) -> None:
    config = tmp_path / "retention.toml"
    first = '[[policies]]\nname = "a"\nagents = [532]\nmax_age = "1h"\n'
    config.write_text(first, encoding="utf-8")
    watcher = ConfigWatcher(config, make_engine(), load_config(config), settle=0.3)
    final = first.replace('"a"', '"settled"')

    async def writer() -> None:  # a slow writer: half-written, then whole, many times over
        for n in range(8):
            config.write_text(final[: len(final) // 2] if n % 2 else final + f"# {n}\n")
            await asyncio.sleep(0.1)
        config.write_text(final, encoding="utf-8")

    writing = asyncio.create_task(writer())
    assert await watcher.reload("test")
    await writing
    assert [p.name for p in watcher.engines[0].rules.policies] == ["settled"]


async def test_every_reload_result_is_told_to_the_listeners(
    make_engine: EngineFactory, tmp_path: Path
) -> None:
    """What the metrics count (retention_reloads_total, the last successful reload's time)."""
    config = tmp_path / "retention.toml"
    good = '[[policies]]\nname = "a"\nagents = [532]\nmax_age = "1h"\n'
    config.write_text(good, encoding="utf-8")
    watcher = ConfigWatcher(config, make_engine(), load_config(config), settle=0.1)
    told: list[bool] = []
    watcher.listeners.append(told.append)
    config.write_text(good.replace('"1h"', '"1 fortnight"'), encoding="utf-8")
    assert not await watcher.reload("test")
    config.write_text(good.replace('"1h"', '"2h"'), encoding="utf-8")
    assert await watcher.reload("test")
    assert told == [False, True]


async def test_an_accepted_reload_says_what_it_changed(
    emulator: Emulator,
    make_engine: EngineFactory,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One log line and a metric with the diff's counts, and GET /v1/reloads/last serves it:
    an edit that takes a hold away from two conversations and makes them due."""
    from retention.metrics import Metrics
    from retention.policy import Hold, Policy

    caplog.set_level(logging.INFO, logger="retention.reload")
    now = datetime.now(UTC)
    for n in range(2):
        emulator.state.add_conversation(532, f"LEGAL chat {n}", created_at=now - timedelta(days=3))
    emulator.state.add_conversation(532, "Chat", created_at=now - timedelta(days=3))
    config = tmp_path / "retention.toml"
    everything = '[[policies]]\nname = "all"\nagents = [532]\nmax_age = "1d"\n'
    hold = '[[holds]]\nname = "legal"\nname_matches = ["LEGAL*"]\n'
    config.write_text(NO_GRACE + everything + hold, encoding="utf-8")
    engine = make_engine(
        (Policy(name="all", agents=frozenset({532}), max_age=timedelta(days=1)),),
        (Hold(name="legal", name_matches=("LEGAL*",)),),
    )
    await engine.sweep(delete=False)  # the store knows the three, two of them held
    watcher = ConfigWatcher(config, engine, load_config(config), settle=0.1)
    metrics = Metrics()
    metrics.add_account("default", stats=engine.context.api.stats, budget=engine.context.api.budget)  # type: ignore[attr-defined]
    watcher.listeners.append(lambda ok: metrics.observe_reload_impact(watcher.last))
    assert watcher.last is None
    config.write_text(NO_GRACE + everything, encoding="utf-8")  # the hold taken away
    assert await watcher.reload("test")
    last = watcher.last
    assert last is not None and last["trigger"] == "test"
    assert last["totals"]["newly_due_now"] == 2 and last["totals"]["no_longer_held"] == 2
    (account,) = last["accounts"]
    assert account["moves"] == [{"from": "legal", "to": "all", "count": 2}]
    line = [r for r in caplog.records if getattr(r, "event", None) == "reload"][-1]
    assert "2 newly due now, 2 no longer held, 2 moved to another rule" in line.getMessage()
    assert line.impact["newly_due_now"] == 2
    scrape = metrics.render().decode()
    assert 'retention_reload_changes_total{account="default",change="newly_due_now"} 2.0' in scrape
    assert 'retention_reload_changes_total{account="default",change="newly_held"} 0.0' in scrape
