"""The store is where the config says: a relative SQLite path is relative to the config file's
folder, commands that only read never create or migrate a store, and a new store is private
(file 0600, folders 0700)."""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from retention.cli import main
from retention.config import load_config
from retention.emulator import Emulator
from retention.migrate import head_revision
from retention.store import Store

from .conftest import small_state

RELATIVE = """
[api]
base_url = "{url}"
requests_per_minute = 600

[store]
url = "sqlite+aiosqlite:///{db}"

[[policies]]
name = "chats"
agents = [532]
name_matches = ["Chat 1*"]
max_age = "1m"
"""


async def cli(*argv: str) -> int:
    """The command line in a thread: it runs its own event loop, ours serves the emulator."""
    return await asyncio.to_thread(main, list(argv))


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The usual umask, under which SQLite alone would make a world-readable file."""
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.fixture(autouse=True)
def _token(api_token: str) -> None:
    """Commands here run in this process and read the token from the environment."""


def write_config(folder: Path, url: str, db: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "retention.toml"
    path.write_text(RELATIVE.format(url=url, db=db), encoding="utf-8")
    return path


# ---- where the store is ------------------------------------------------------------------------


@pytest.mark.parametrize("db", ["retention.db", "./data/retention.db", "../state/r.db"])
def test_a_relative_sqlite_path_is_relative_to_the_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db: str
) -> None:
    config = write_config(tmp_path / "etc", "https://app.customgpt.ai/api/v1/", db)
    monkeypatch.chdir(tmp_path)
    expected = os.path.normpath(tmp_path / "etc" / db)
    assert load_config(Path("etc/retention.toml")).store.url == f"sqlite+aiosqlite:///{expected}"
    assert load_config(config).store.url == f"sqlite+aiosqlite:///{expected}"


def test_absolute_and_non_file_urls_stay_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(tmp_path / "etc", "https://app.customgpt.ai/api/v1/", "/var/r.db")
    assert load_config(config).store.url == "sqlite+aiosqlite:////var/r.db"
    monkeypatch.setenv("RETENTION_STORE__URL", "sqlite+aiosqlite:////srv/x.db")
    assert load_config(config).store.url == "sqlite+aiosqlite:////srv/x.db"


def test_a_relative_path_from_env_is_relative_to_the_config_folder_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(tmp_path / "etc", "https://app.customgpt.ai/api/v1/", "/var/r.db")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RETENTION_STORE__URL", "sqlite+aiosqlite:///from-env.db")
    assert load_config(config).store.url == f"sqlite+aiosqlite:///{tmp_path / 'etc/from-env.db'}"


def test_check_shows_where_the_store_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path / "etc", "https://app.customgpt.ai/api/v1/", "r.db")
    monkeypatch.chdir(tmp_path)
    assert main(["check", "--config", "etc/retention.toml"]) == 0
    assert (
        f"store      sqlite+aiosqlite:///{tmp_path / 'etc' / 'r.db'}\n" in capsys.readouterr().out
    )
    assert files_under(tmp_path) == ["etc", "etc/retention.toml"], "check creates nothing"
    assert config.exists()


async def test_status_from_another_folder_reads_the_same_store_and_creates_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    emulator = Emulator(small_state(conversations=30))
    async with emulator.serve() as url:
        config = write_config(tmp_path / "etc" / "retention", url, "retention.db")
        first, second = tmp_path / "first", tmp_path / "second"
        first.mkdir()
        second.mkdir()
        monkeypatch.chdir(first)
        assert await cli("once", "--config", str(config)) == 0
        deleted = len(emulator.calls("DELETE", "*/conversations/*"))
        assert deleted == 11  # "Chat 1", "Chat 10" .. "Chat 19"
        capsys.readouterr()

        monkeypatch.chdir(second)
        assert await cli("status", "--config", str(config)) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("│   532 "))
    cells = [cell.strip() for cell in row.split("│") if cell.strip()]
    assert cells[:2] == ["532", "19"] and cells[5] == "11", "the store `once` filled, read here"
    assert files_under(first) == [] and files_under(second) == []
    assert (tmp_path / "etc" / "retention" / "retention.db").exists()


# ---- commands that only read never create or migrate -----------------------------------------


@pytest.mark.parametrize("command", ["status", "plan"])
async def test_a_missing_store_is_a_clear_error_and_nothing_is_created(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    emulator = Emulator(small_state())
    async with emulator.serve() as url:
        config = write_config(tmp_path / "etc", url, "state/retention.db")
        assert await cli(command, "--config", str(config)) == 2
    out, err = capsys.readouterr()
    assert out == ""
    store = tmp_path / "etc" / "state" / "retention.db"
    assert err == (
        f"retention: error: {config}: store.url: no store at '{store}': "
        f"`retention db upgrade --config {config}` creates or migrates it "
        "(`retention run` does too)\n"
    )
    assert files_under(tmp_path) == ["etc", "etc/retention.toml"], "no file, no folder"
    assert emulator.calls() == [], "refused before any API call"


async def test_an_empty_store_file_is_refused_by_status_not_migrated(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, "https://app.customgpt.ai/api/v1/", "r.db")
    (tmp_path / "r.db").touch()
    assert await cli("status", "--config", str(config)) == 2
    err = capsys.readouterr().err
    assert f"store.url: the store '{tmp_path / 'r.db'}' is empty (no schema): `retention db" in err
    assert (tmp_path / "r.db").stat().st_size == 0


async def test_db_upgrade_creates_the_store_that_status_then_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path / "etc", "https://app.customgpt.ai/api/v1/", "retention.db")
    monkeypatch.chdir(tmp_path)
    assert await cli("db", "upgrade", "--config", "etc/retention.toml") == 0
    assert f"store upgraded from empty to {head_revision()}" in capsys.readouterr().out
    assert await cli("status", "--config", str(config)) == 0
    made = files_under(tmp_path)
    assert {"etc/retention.db", "etc/retention.toml"} <= set(made)
    assert all(name == "etc" or name.startswith("etc/retention.") for name in made), made


# ---- a new store is private --------------------------------------------------------------------


@pytest.mark.usefixtures("umask_022")
async def test_a_new_store_is_0600_in_new_folders_0700_and_so_are_its_wal_files(
    tmp_path: Path,
) -> None:
    os.chmod(tmp_path, 0o755)
    file = tmp_path / "new" / "deeper" / "retention.db"
    store = await Store.open(f"sqlite+aiosqlite:///{file}")
    try:
        assert store.db.created
        await store.set_meta("k", "v")  # a write: the WAL and its index exist now
        for path in (file, file.with_name("retention.db-wal"), file.with_name("retention.db-shm")):
            assert mode(path) == 0o600, path
    finally:
        await store.close()
    assert mode(tmp_path / "new") == 0o700
    assert mode(tmp_path / "new" / "deeper") == 0o700
    assert mode(tmp_path) == 0o755, "an existing folder is left as it is"


@pytest.mark.usefixtures("umask_022")
async def test_an_existing_store_is_opened_as_it_is(tmp_path: Path) -> None:
    file = tmp_path / "retention.db"
    first = await Store.open(f"sqlite+aiosqlite:///{file}")
    await first.close()
    file.chmod(0o640)
    again = await Store.open(f"sqlite+aiosqlite:///{file}")
    try:
        assert not again.db.created
        assert await again.revision() == head_revision()
    finally:
        await again.close()
    assert mode(file) == 0o640


async def test_run_creates_the_store_beside_the_config_with_private_modes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, umask_022: None
) -> None:
    """`once` (as `run`) creates the store: where the config says, 0600 in a 0700 folder."""
    emulator = Emulator(small_state(conversations=3))
    async with emulator.serve() as url:
        config = write_config(tmp_path / "etc", url, "state/retention.db")
        monkeypatch.chdir(tmp_path)
        assert await cli("once", "--config", str(config)) == 0
    assert mode(tmp_path / "etc" / "state") == 0o700
    assert mode(tmp_path / "etc" / "state" / "retention.db") == 0o600
    assert sorted(os.listdir(tmp_path)) == ["etc"]
