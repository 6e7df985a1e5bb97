"""`retention run` end to end: a conversation created over HTTP with a TTL, and no secret in
any output of a whole session."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from retention.emulator import Emulator, Fault

from .daemon_process import free_port, start, stop, until_up, wait_for

API_TOKEN = "sk-live-API-SECRET-1234567890"
ADMIN_TOKEN = "admin-ADMIN-SECRET-0987654321"
CONFIG = """
[api]
base_url = "{url}"
requests_per_minute = 6000
max_attempts = 2
[store]
url = "sqlite+aiosqlite:///{db}"
[schedule]
discover_every = "2s"
delete_every = "1s"
[admin]
listen = "127.0.0.1:{admin_port}"
[[policies]]
name = "test-chats"
agents = [532]
name_matches = ["Test*"]
max_age = "1h"
"""


async def _run_session(emulator: Emulator, tmp_path: Path) -> tuple[str, str, dict[str, Any]]:
    admin_port = free_port()
    emulator.token = API_TOKEN
    emulator.state.add_conversation(
        532, "Test old", created_at=datetime.now(UTC) - timedelta(hours=2)
    )
    async with emulator.serve() as url:
        config = tmp_path / "retention.toml"
        config.write_text(
            CONFIG.format(url=url, db=tmp_path / "r.db", admin_port=admin_port), encoding="utf-8"
        )
        env = {"CUSTOMGPT_API_TOKEN": API_TOKEN, "RETENTION_ADMIN_TOKEN": ADMIN_TOKEN}
        process = await start(config, "run", env=env)
        admin = f"http://127.0.0.1:{admin_port}"
        auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        try:
            async with aiohttp.ClientSession() as http:
                await until_up(http, admin)
                body = {"agent_id": 532, "name": "Short-lived", "ttl": "2s"}
                async with http.post(admin + "/v1/conversations", json=body, headers=auth) as r:
                    assert r.status == 201
                    record = await r.json()
                assert record["session_id"] in emulator.live_sessions(532)
                created = asyncio.get_running_loop().time()
                # An error or two on the way: a wrong admin token, and a listing that fails.
                async with http.post(
                    admin + "/v1/tracked", json={}, headers={"Authorization": "Bearer x"}
                ) as r:
                    assert r.status == 401
                emulator.faults.append(
                    Fault.status(503, path="*/conversations", method="GET", times=2)
                )
                await wait_for(lambda: record["session_id"] not in emulator.live_sessions(532))
                record["deleted_after"] = asyncio.get_running_loop().time() - created
                why_url = f"{admin}/v1/conversations/532/{record['session_id']}"
                # The API has answered the DELETE; the daemon records the outcome right after.
                async with asyncio.timeout(10):
                    while True:
                        async with http.get(why_url, headers=auth) as r:
                            why = await r.json()
                        if why["state"] != "deleting":
                            break
                        await asyncio.sleep(0.05)
                async with http.get(admin + "/metrics") as r:
                    metrics = await r.text()
        finally:
            code, output = await stop(process)
        assert code == 0, output[-3000:]
        return output, metrics, {"record": record, "why": why}


async def test_ttl_conversation_created_over_http_is_deleted_on_time_with_rule_ttl(
    emulator: Emulator, tmp_path: Path
) -> None:
    output, _metrics, seen = await _run_session(emulator, tmp_path)
    # Due 2 s after creation; the deletion job runs every second.
    assert seen["record"]["deleted_after"] < 2 + 1 + 1.5, seen["record"]["deleted_after"]
    why = seen["why"]
    assert why["state"] == "deleted" and why["rule"] == "ttl"
    assert [(a["outcome"], a["rule"]) for a in why["audit"]] == [("deleted", "ttl")]
    assert "deleted agent 532" in output


async def test_no_token_appears_anywhere_in_a_whole_sessions_output(
    emulator: Emulator, tmp_path: Path
) -> None:
    output, metrics, _seen = await _run_session(emulator, tmp_path)
    assert '"level": "info"' in output, "JSON lines when not on a terminal"
    assert "sweep" in output and "503" in output, "the session did sweep and meet errors"
    for secret in (API_TOKEN, ADMIN_TOKEN):
        assert secret not in output
        assert secret not in metrics
    db = (tmp_path / "r.db").read_bytes()
    assert API_TOKEN.encode() not in db and ADMIN_TOKEN.encode() not in db


LIBFAKETIME = next(iter(sorted(Path("/usr/lib").glob("*/faketime/libfaketimeMT.so.1"))), None)


@pytest.mark.skipif(
    LIBFAKETIME is None,
    reason="needs libfaketime (Debian package faketime; .ci/run installs it)",
)
async def test_a_daemon_whose_clock_runs_a_day_ahead_deletes_nothing(
    emulator: Emulator, tmp_path: Path
) -> None:
    """The whole daemon under libfaketime, a day ahead of the emulator's (true) clock: a chat
    due in 30 minutes looks a day old to it, and must not be deleted."""
    admin_port = free_port()
    young = emulator.state.add_conversation(
        532, "Test young", created_at=datetime.now(UTC) - timedelta(minutes=30)
    )
    async with emulator.serve() as url:
        config = tmp_path / "retention.toml"
        config.write_text(
            CONFIG.format(url=url, db=tmp_path / "r.db", admin_port=admin_port), encoding="utf-8"
        )
        # libfaketime, preloaded into the daemon alone: its clock runs a day ahead.
        env = {"CUSTOMGPT_API_TOKEN": API_TOKEN, "LD_PRELOAD": str(LIBFAKETIME), "FAKETIME": "+1d"}
        emulator.token = API_TOKEN
        process = await start(config, "run", env=env)
        admin = f"http://127.0.0.1:{admin_port}"
        try:
            async with aiohttp.ClientSession() as http:
                await until_up(http, admin)
                await wait_for(lambda: len(emulator.calls("GET", "*/conversations")) >= 3)
                await asyncio.sleep(2.5)  # two deletion sweeps at least (every 1s)
                async with http.get(admin + "/readyz") as response:
                    assert response.status == 503
                    problems = (await response.json())["problems"]
                async with http.get(admin + "/metrics") as response:
                    metrics = await response.text()
        finally:
            code, output = await stop(process)
    assert code == 0
    assert young.session_id in emulator.live_sessions(532)
    assert emulator.calls("DELETE") == []
    assert any("1d ahead of the server's Date" in p for p in problems), problems
    assert 'retention_clock_skew_exceeded{account="default"} 1.0' in metrics
    assert "deleting nothing this sweep: the local clock" in output, output
