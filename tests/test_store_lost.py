"""A store removed under a running `retention run` (a real process): it stops deleting and
discovering, fails /readyz with the reason and says why."""

from __future__ import annotations

import asyncio
import shutil
from datetime import timedelta
from pathlib import Path

import aiohttp
import pytest

from retention.emulator import Emulator

from .daemon_process import free_port, start, stop
from .test_engine import add, alive
from .test_store_disks import CONFIG, H


async def test_removed_under_a_running_daemon_stops_deleting_and_fails_readyz(
    emulator: Emulator, tmp_path: Path, api_token: str, capsys: pytest.CaptureFixture[str]
) -> None:
    admin_port = free_port()
    # Due a few seconds after the start: discovered first, due only once the store is gone.
    soon = [add(emulator, f"Test {n}", H - timedelta(seconds=8)) for n in range(3)]
    db = tmp_path / "data" / "r.db"
    async with emulator.serve() as url:
        config = tmp_path / "retention.toml"
        config.write_text(CONFIG.format(url=url, db=db, admin_port=admin_port), encoding="utf-8")
        process = await start(config, "run")
        admin = f"http://127.0.0.1:{admin_port}"
        try:
            async with aiohttp.ClientSession() as http:

                async def ready() -> int:
                    try:
                        async with http.get(admin + "/readyz") as r:
                            return r.status
                    except aiohttp.ClientError:
                        return 0

                async with asyncio.timeout(15):
                    while await ready() != 200 or len(emulator.calls("GET")) < 2:  # noqa: ASYNC110
                        await asyncio.sleep(0.1)
                shutil.rmtree(db.parent)
                async with asyncio.timeout(10):
                    while await ready() != 503:  # noqa: ASYNC110 - polls another process
                        await asyncio.sleep(0.1)
                await asyncio.sleep(1)  # a sweep begun before the removal has ended
                removed_at = len(emulator.calls())
                async with http.get(admin + "/readyz") as r:
                    body = await r.json()
                assert any("was removed" in p and str(db) in p for p in body["problems"])
                # Past the conversations' due time, and a few deletion sweeps more.
                await asyncio.sleep(9)
        finally:
            code, output = await stop(process)
    assert code == 0, output
    assert not emulator.calls("DELETE"), "nothing deleted once the store was gone"
    assert {s.session_id for s in soon} <= alive(emulator)
    assert len(emulator.calls()) == removed_at, "no discovery either: its writes would be lost"
    assert "the store is lost" in output and "was removed" in output
    assert not db.exists()
