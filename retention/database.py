"""The database handle the store and its journal share: one connection pool, errors translated.

SQLAlchemy's exceptions stop here: :meth:`Database.begin` and :meth:`Database.connect` turn
every ``SQLAlchemyError`` raised inside them into a :class:`retention.errors.StoreError`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from retention.errors import StoreError

BUSY_TIMEOUT_MS = 5000


class Database:
    """An async SQLAlchemy engine, opened from a URL. Build it with :meth:`open`."""

    def __init__(self, bind: AsyncEngine) -> None:
        self.bind = bind

    @classmethod
    def open(cls, url: str) -> Database:
        """Connect lazily; a SQLite file's folder is created on first use."""
        try:
            parsed = make_url(url)
        except Exception as exc:  # sqlalchemy raises ArgumentError with the URL in it
            raise StoreError(f"invalid store URL: {exc}") from None
        sqlite = parsed.get_backend_name() == "sqlite"
        if sqlite and parsed.database not in (None, "", ":memory:"):
            _make_parent(parsed.database)
        try:
            bind = create_async_engine(url)
        except Exception as exc:  # an unknown driver is an ImportError or a NoSuchModuleError
            raise StoreError(f"cannot use store URL: {exc}") from None
        if sqlite:
            event.listen(bind.sync_engine, "connect", _sqlite_pragmas)
        return cls(bind)

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


def _make_parent(database: str) -> None:
    try:
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create the folder for {database!r}: {exc.strerror}") from None


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
