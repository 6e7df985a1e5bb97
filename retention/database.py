"""The database handle the store and its journal share: one connection pool, errors translated.

SQLAlchemy's exceptions stop here: :meth:`Database.begin` and :meth:`Database.connect` turn
every ``SQLAlchemyError`` raised inside them into a :class:`retention.errors.StoreError`.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from retention.errors import ConfigError, StoreError

BUSY_TIMEOUT_MS = 5000


class Database:
    """An async SQLAlchemy engine, opened from a URL. Build it with :meth:`open`."""

    def __init__(self, bind: AsyncEngine, *, created: bool = False) -> None:
        self.bind = bind
        self.created = created  # this open made the SQLite file (empty until migrated)

    @classmethod
    def open(cls, url: str, *, create: bool = True) -> Database:
        """Connect lazily. With ``create``, a SQLite file that does not exist yet is made here,
        mode 0600, in folders made 0700 (SQLite gives its -wal and -shm files the file's mode).
        Without it nothing is made: a missing SQLite file is a ConfigError naming the path."""
        parsed = parse_url(url)
        sqlite = parsed.get_backend_name() == "sqlite"
        database = parsed.database or ""
        created = False
        if sqlite and database not in ("", ":memory:") and not database.startswith("file:"):
            if create:
                created = _create_file(database)
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
        return cls(bind, created=created)

    def begin(self) -> AbstractAsyncContextManager[AsyncConnection]:
        """A connection in a transaction, committed when the block ends without an error."""
        return _translating(self.bind.begin())

    def connect(self) -> AbstractAsyncContextManager[AsyncConnection]:
        """A connection for reading."""
        return _translating(self.bind.connect())

    async def close(self) -> None:
        await self.bind.dispose()


@asynccontextmanager
async def _translating(
    opening: AbstractAsyncContextManager[AsyncConnection],
) -> AsyncIterator[AsyncConnection]:
    try:
        async with opening as conn:
            yield conn
    except SQLAlchemyError as exc:
        cause = getattr(exc, "orig", None) or exc
        raise StoreError(f"{type(cause).__name__}: {cause}") from exc


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
        raise StoreError(f"the driver of {parsed.drivername!r} is not installed") from None
    return parsed


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
