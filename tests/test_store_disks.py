"""The store survives what disks do: truncated to zero or schema-less (an error, never a fresh
store), and read-only then writable again (the next sweep works, no restart).

Read-only as root: file modes do not stop root, so the store is made immutable (`chattr +i`
on the database and its -wal; never the -shm, which SQLite maps into memory). An existing
connection then fails with a disk I/O error, and one opened meanwhile is opened read-only by
SQLite for good: exactly the bad handles the pool used to keep.
"""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from retention.cli import main
from retention.emulator import Emulator
from retention.errors import StoreError
from retention.store import Store

from .conftest import EngineFactory
from .test_engine import TEST_CHATS, add, alive

H = timedelta(hours=1)

CONFIG = """
[api]
base_url = "{url}"
requests_per_minute = 6000
[store]
url = "sqlite+aiosqlite:///{db}"
[schedule]
discover_every = "1s"
delete_every = "1s"
[admin]
listen = "127.0.0.1:{admin_port}"
[[policies]]
name = "test-chats"
agents = [532]
name_matches = ["Test*"]
max_age = "1h"
"""


async def cli(*argv: str) -> int:
    """The command line in a thread: it runs its own event loop, ours serves the emulator."""
    return await asyncio.to_thread(main, list(argv))


def tables(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return sorted(r[0] for r in rows)


async def rows(db: Path) -> set[tuple[int, str, str]]:
    store = await Store.open(f"sqlite+aiosqlite:///{db}", create=False)
    try:
        return {(c.agent_id, c.session_id, c.state.value) for c in await store.conversations()}
    finally:
        await store.close()


@pytest.mark.parametrize("damage", ["truncated", "schema-less"])
async def test_an_emptied_store_is_an_error_never_a_fresh_store(
    emulator: Emulator,
    tmp_path: Path,
    api_token: str,
    capsys: pytest.CaptureFixture[str],
    damage: str,
) -> None:
    db = tmp_path / "r.db"
    if damage == "truncated":
        db.write_bytes(b"")
    else:
        with sqlite3.connect(db) as conn:
            conn.execute("CREATE TABLE other (a)")
    before = db.read_bytes()
    async with emulator.serve() as url:
        config = tmp_path / "retention.toml"
        config.write_text(CONFIG.format(url=url, db=db, admin_port=0), encoding="utf-8")
        for command in (["once"], ["db", "upgrade"], ["run"]):
            assert await cli(*command, "--config", str(config)) == 2, command
            err = capsys.readouterr().err
            assert str(db) in err and "restore it from a backup" in err, err
            assert "remove it" in err
    assert db.read_bytes() == before
    assert tables(db) == ([] if damage == "truncated" else ["other"])
    assert not emulator.calls()


@pytest.fixture
def immutable() -> Iterator[list[Path]]:
    """Paths made immutable by the test, made mutable again whatever happens."""
    made: list[Path] = []
    yield made
    for path in made:
        subprocess.run(["chattr", "-i", str(path)], check=False)


def chattr(flag: str, *paths: Path) -> None:
    result = subprocess.run(["chattr", flag, *map(str, paths)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"chattr {flag} does not work here: {result.stderr.strip()}")


@pytest.mark.sqlite_only
async def test_read_only_then_writable_recovers_without_a_restart(
    emulator: Emulator, make_engine: EngineFactory, store: Store, immutable: list[Path]
) -> None:
    due = [add(emulator, f"Test {n}", 2 * H) for n in range(5)]
    engine = make_engine((TEST_CHATS,))
    await engine.sweep(delete=False)  # discovered; the clock is known
    db = store.db.path
    assert db is not None
    files = [db, db.with_name(db.name + "-wal")]
    immutable.extend(files)
    chattr("+i", *files)
    # Readers meanwhile (the admin surface, a sweep's workers) open connections: SQLite opens
    # them read-only, for good, and the pool keeps them.
    await asyncio.gather(*(store.conversations() for _ in range(10)))
    with pytest.raises(StoreError):
        await engine.sweep()
    assert not emulator.calls("DELETE")
    chattr("-i", *files)
    report = await engine.sweep()
    assert report.ok and report.deleted == len(due)
    assert not {c.session_id for c in due} & alive(emulator)
