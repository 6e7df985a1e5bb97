"""The database handle the store and its journal share: one connection pool, errors translated.

SQLAlchemy's exceptions stop here: :meth:`Database.begin` and :meth:`Database.connect` turn
every ``SQLAlchemyError`` raised inside them into a :class:`retention.errors.StoreError`.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from retention.errors import ConfigError, StoreError

BUSY_TIMEOUT_MS = 5000


class Database:
    """An async SQLAlchemy engine, opened from a URL. Build it with :meth:`open`."""

    def __init__(
        self, bind: AsyncEngine, *, created: bool = False, path: Path | None = None
    ) -> None:
        self.bind = bind
        self.created = created  # this open made the SQLite file (empty until migrated)
        self.path = path  # the SQLite file, when the store is one
        self._file_id = _file_id(path) if path is not None else None  # (st_dev, st_ino) opened

    @classmethod
    def open(cls, url: str, *, create: bool = True) -> Database:
        """Connect lazily. With ``create``, a SQLite file that does not exist yet is made here,
        mode 0600, in folders made 0700 (SQLite gives its -wal and -shm files the file's mode).
        Without it nothing is made: a missing SQLite file is a ConfigError naming the path."""
        parsed = parse_url(url)
        sqlite = parsed.get_backend_name() == "sqlite"
        database = parsed.database or ""
        created = False
        path = None
        if sqlite and database not in ("", ":memory:") and not database.startswith("file:"):
            path = Path(database)
            if create:
                created = _create_file(database)
                if not created:
                    _require_schema(database)
            elif not Path(database).exists():
                raise ConfigError(f"no store at {database!r}", key="store.url")
            elif Path(database).stat().st_size == 0:  # refused before a connection writes it
                raise ConfigError(f"the store {database!r} is empty (no schema)", key="store.url")
        try:
            bind = create_async_engine(url)
        except Exception as exc:  # an unknown driver is an ImportError or a NoSuchModuleError
            raise StoreError(f"cannot use store URL: {exc}") from None
        if sqlite:
            event.listen(bind.sync_engine, "connect", _sqlite_pragmas)
        return cls(bind, created=created, path=path)

    def begin(self) -> AbstractAsyncContextManager[AsyncConnection]:
        """A connection in a transaction, committed when the block ends without an error."""
        return self._translating(self.bind.begin())

    def connect(self) -> AbstractAsyncContextManager[AsyncConnection]:
        """A connection for reading."""
        return self._translating(self.bind.connect())

    async def close(self) -> None:
        await self.bind.dispose()

    def file_problem(self) -> str | None:
        """Why the SQLite file at the store's path is no longer the one opened, or None: removed,
        replaced by another file (another inode), or emptied. Connections opened before go on
        reading and writing the old file, which nobody will read again: nothing must be written.
        """
        if self.path is None or self._file_id is None:
            return None
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return f"the store file {str(self.path)!r} was removed"
        except OSError as exc:
            return f"the store file {str(self.path)!r} cannot be found: {exc.strerror}"
        if (stat.st_dev, stat.st_ino) != self._file_id:
            return f"the store file {str(self.path)!r} was replaced by another file"
        if stat.st_size == 0:
            return f"the store file {str(self.path)!r} was truncated to 0 bytes"
        return None

    async def checkpoint(self) -> None:
        """``PRAGMA wal_checkpoint(TRUNCATE)`` on a SQLite store: the WAL goes back to 0 bytes
        once no reader needs it (a reader still busy leaves it for SQLite's own checkpoints)."""
        if self.bind.dialect.name != "sqlite":
            return
        async with self.connect() as conn:
            await conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")

    async def backup(self, target: Path) -> None:
        """Copy the live SQLite store to ``target`` (made 0600, never overwritten) with SQLite's
        online backup API: a consistent copy while the daemon goes on writing."""
        if self.path is None:
            raise ConfigError(
                "only a SQLite store file is backed up here; back up a PostgreSQL store with "
                "its own tools (pg_dump)",
                key="store.url",
            )
        await asyncio.to_thread(_backup, self.path, target)

    @asynccontextmanager
    async def _translating(
        self, opening: AbstractAsyncContextManager[AsyncConnection]
    ) -> AsyncIterator[AsyncConnection]:
        try:
            async with opening as conn:
                yield conn
        except (SQLAlchemyError, sqlite3.Error) as exc:
            # sqlite3's own errors come from statements sent to the driver directly (bulk
            # writes of a rules change); the rest come wrapped by SQLAlchemy.
            cause = getattr(exc, "orig", None) or exc
            if isinstance(exc, OperationalError | sqlite3.OperationalError):
                # A read-only file or folder, a full disk: the pool keeps the connections whose
                # SQLite handle went bad (SQLite opens a file it cannot write read-only, for
                # good). Drop them all, so the next use opens fresh ones and the store is used
                # again by itself once it is writable. Connections in use close when returned.
                await self.bind.dispose()
            raise StoreError(f"{type(cause).__name__}: {cause}") from exc
        except OSError as exc:
            # A database server that cannot be reached (refused, reset, timed out): asyncpg
            # raises these as they are, before SQLAlchemy has a connection to wrap them in.
            raise StoreError(f"cannot reach the database: {type(exc).__name__}: {exc}") from exc


def parse_url(url: str) -> URL:
    """The store URL as :meth:`Database.open` reads it, or a StoreError saying why it cannot be
    used: not a URL, an unknown database or driver, or a driver that is not async. The config
    loader calls it too, so ``retention check`` refuses what opening the store would."""
    try:
        parsed = make_url(url)
    except Exception:  # sqlalchemy raises ArgumentError with the URL (and any password) in it
        raise StoreError(
            "not a SQLAlchemy URL; e.g. 'sqlite+aiosqlite:////var/lib/retention/retention.db'"
        ) from None
    try:
        dialect = parsed.get_dialect()
    except Exception:  # NoSuchModuleError, or an ImportError from the dialect's module
        raise StoreError(f"unknown database or driver {parsed.drivername!r}") from None
    if not getattr(dialect, "is_async", False):
        raise StoreError(
            f"driver {parsed.drivername!r} is not async; use an async one, e.g. "
            "'sqlite+aiosqlite' or 'postgresql+asyncpg'"
        )
    try:
        dialect.import_dbapi()
    except ImportError:
        extra = (
            " (pip install 'retention[postgres]')" if parsed.drivername.endswith("asyncpg") else ""
        )
        raise StoreError(f"the driver of {parsed.drivername!r} is not installed{extra}") from None
    return parsed


def _file_id(path: Path) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def _require_schema(database: str) -> None:
    """An existing store file this open did not make must be a store: a file truncated to 0
    bytes, or a SQLite file without retention's tables, is never silently made a fresh store
    (its TTLs and deletions in progress would be lost without a word)."""
    restore = (
        "restore it from a backup (README: Deployment, restoring the store), or remove it "
        "to start an empty store"
    )
    if os.stat(database).st_size == 0:
        raise ConfigError(f"the store {database!r} is empty (0 bytes): {restore}", key="store.url")
    try:
        conn = sqlite3.connect(f"{Path(database).resolve().as_uri()}?mode=ro", uri=True)
        try:
            found = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'alembic_version'"
            ).fetchone()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise ConfigError(
            f"the store {database!r} cannot be read ({exc}): {restore}", key="store.url"
        ) from None
    if found is None:
        raise ConfigError(
            f"the store {database!r} has no retention schema: {restore}", key="store.url"
        )


def _backup(source: Path, target: Path) -> None:
    try:
        os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        raise ConfigError(f"{str(target)!r} exists: a backup never overwrites a file") from None
    except OSError as exc:
        raise StoreError(f"cannot create {str(target)!r}: {exc.strerror}") from None
    try:
        src = sqlite3.connect(source)
        try:
            dst = sqlite3.connect(target)
            try:
                src.backup(dst)
            finally:
                dst.close()
        finally:
            src.close()
    except sqlite3.Error as exc:
        target.unlink(missing_ok=True)
        raise StoreError(f"cannot back up {str(source)!r}: {exc}") from None
    except BaseException:
        target.unlink(missing_ok=True)
        raise


def _create_file(database: str) -> bool:
    """Make the SQLite file, 0600, and any missing folder, 0700, before SQLite would make them
    with the umask's looser modes (the store holds conversation names). True when made here."""
    path = Path(database)
    missing = []
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    try:
        for new in reversed(missing):
            new.mkdir(mode=0o700, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create the folder for {database!r}: {exc.strerror}") from None
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        return False
    except OSError as exc:
        raise StoreError(f"cannot create the store {database!r}: {exc.strerror}") from None
    return True


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
