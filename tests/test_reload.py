"""Live reload under a running daemon: a bad edit changes nothing, a good one takes effect."""

from __future__ import annotations

import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path

from retention.emulator import Emulator

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
"""
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
        base = BASE.format(url=url, db=tmp_path / "r.db", watch="true")
        config = tmp_path / "retention.toml"
        write(config, base, globs='["Test*"]', max_age="1h")
        process = await start(config, "run", env={"CUSTOMGPT_API_TOKEN": "emulator-token"})
        try:
            await wait_for(lambda: len(emulator.calls("GET", "*/conversations")) >= 1)
            write(config, base, globs='["Test*", "Temp*"]', max_age="3 parsecs")
            await wait_for(lambda: len(emulator.calls("GET", "*/conversations")) >= 5, within=20)
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
    assert "config reload (file changed): 1 policies and 0 holds in force" in output


async def test_sighup_reloads_when_watching_is_off(emulator: Emulator, tmp_path: Path) -> None:
    temp = emulator.state.add_conversation(
        532, "Temp chat", created_at=datetime.now(UTC) - timedelta(hours=2)
    )
    async with emulator.serve() as url:
        base = BASE.format(url=url, db=tmp_path / "r.db", watch="false")
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
