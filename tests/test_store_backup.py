"""`retention db backup FILE` of a live store, while `retention run` (a real process) writes to
it: a consistent copy (SQLite's online backup API) that opens and holds the same rows, 0600,
never written over an existing file."""

from __future__ import annotations

import asyncio
import sqlite3
import stat
from contextlib import closing
from pathlib import Path

import aiohttp
import pytest
from alembic import command
from sqlalchemy import create_engine

from retention.cli import main
from retention.emulator import Emulator
from retention.migrate import alembic_config, head_revision

from .daemon_process import free_port, start, stop
from .test_engine import add
from .test_store_disks import CONFIG, H, cli, rows


async def test_backup_of_a_live_store_while_the_daemon_runs(
    emulator: Emulator, tmp_path: Path, api_token: str, capsys: pytest.CaptureFixture[str]
) -> None:
    admin_port = free_port()
    kept = [add(emulator, f"Test {n}", H / 2) for n in range(3)]
    db = tmp_path / "r.db"
    async with emulator.serve() as url:
        config = tmp_path / "retention.toml"
        config.write_text(CONFIG.format(url=url, db=db, admin_port=admin_port), encoding="utf-8")
        process = await start(config, "run")
        try:
            async with aiohttp.ClientSession() as http:

                async def ready() -> int:
                    try:
                        async with http.get(f"http://127.0.0.1:{admin_port}/readyz") as r:
                            return r.status
                    except aiohttp.ClientError:
                        return 0

                async with asyncio.timeout(15):
                    while await ready() != 200 or len(emulator.calls("GET")) < 2:  # noqa: ASYNC110
                        await asyncio.sleep(0.1)
            copy = tmp_path / "backup.db"
            assert await cli("db", "backup", str(copy), "--config", str(config)) == 0
            assert stat.S_IMODE(copy.stat().st_mode) == 0o600
            assert await rows(copy) == await rows(db)
            assert {c.session_id for c in kept} <= {k[1] for k in await rows(copy)}
            before = copy.read_bytes()
            assert await cli("db", "backup", str(copy), "--config", str(config)) == 2
            assert "never overwrites" in capsys.readouterr().err
            assert copy.read_bytes() == before
            assert process.returncode is None, "the daemon ran on throughout"
        finally:
            code, output = await stop(process)
    assert code == 0, output


def test_backup_of_a_store_at_an_older_migration_before_an_upgrade(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The copy to keep before `db upgrade`: an outdated store is backed up as it is, and the
    copy is the old one (the upgrade that follows does not touch it)."""
    db = tmp_path / "r.db"
    engine = create_engine(f"sqlite:///{db}")
    with engine.begin() as conn:
        cfg = alembic_config()
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0006")
    engine.dispose()
    config = tmp_path / "retention.toml"
    config.write_text(f'[store]\nurl = "sqlite+aiosqlite:///{db}"\n', encoding="utf-8")
    copy = tmp_path / "before-upgrade.db"
    assert main(["status", "--config", str(config)]) == 2, "outdated: status refuses"
    assert "db upgrade" in capsys.readouterr().err
    assert main(["db", "backup", str(copy), "--config", str(config)]) == 0
    assert main(["db", "upgrade", "--config", str(config)]) == 0
    assert revision(copy) == "0006" and revision(db) == head_revision()


def revision(db: Path) -> str:
    with closing(sqlite3.connect(db)) as conn:
        return str(conn.execute("SELECT version_num FROM alembic_version").fetchone()[0])
