"""A throwaway PostgreSQL cluster for the tests: the server binaries of the machine, a
temporary folder, a free loopback port, stopped when the session ends.

``RETENTION_TESTS_POSTGRES`` chooses (read once, at import; the tests' own environment is
cleaned per test):

- unset: start a cluster when the server binaries are found, else skip the PostgreSQL half
  with the reason;
- ``require`` (CI): start one, and fail instead of skipping;
- ``postgresql+asyncpg://...``: use that server (a role that may create databases).

As root (``initdb`` refuses root) the cluster runs as the ``postgres`` user, via ``runuser``.
Each test gets a database of its own, copied from a template that the migrations built once.
"""

from __future__ import annotations

import asyncio
import glob
import os
import pwd
import shutil
import socket
import sqlite3
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from retention.store import Store

SETTING = os.environ.get("RETENTION_TESTS_POSTGRES", "")
TEMPLATE = "retention_template"


class Unavailable(Exception):
    """No PostgreSQL for the tests, and why."""


def server_binaries() -> Path | None:
    """The folder of ``initdb`` and ``pg_ctl``: Debian's newest version folder, else PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb and shutil.which("pg_ctl") else None


def _version(path: str) -> tuple[int, ...]:
    part = Path(path).parent.parent.name
    return tuple(int(p) for p in part.split(".") if p.isdigit())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Cluster:
    """A running cluster (ours, or the one the setting names) and the databases made on it."""

    admin_url: str  # asyncpg's own form, for CREATE/DROP DATABASE
    host: str
    port: int
    user: str
    folder: Path | None = None
    bindir: Path | None = None
    run_as: list[str] = field(default_factory=list)
    made: int = 0

    @classmethod
    def start(cls) -> Cluster:
        if SETTING.startswith("postgresql"):
            return cls.external(SETTING)
        bindir = server_binaries()
        if bindir is None:
            raise Unavailable(
                "PostgreSQL server binaries not found (install the Debian package "
                "'postgresql', or set RETENTION_TESTS_POSTGRES to a server's URL)"
            )
        folder = Path(tempfile.mkdtemp(prefix="retention-pg-"))
        run_as: list[str] = []
        user = pwd.getpwuid(os.getuid()).pw_name
        if os.getuid() == 0:
            try:
                entry = pwd.getpwnam("postgres")
            except KeyError:
                raise Unavailable("running as root and there is no 'postgres' user") from None
            os.chown(folder, entry.pw_uid, entry.pw_gid)
            run_as, user = ["runuser", "-u", "postgres", "--"], "postgres"
        port = free_port()
        cluster = cls(
            admin_url=f"postgresql://{user}@127.0.0.1:{port}/postgres",
            host="127.0.0.1",
            port=port,
            user=user,
            folder=folder,
            bindir=bindir,
            run_as=run_as,
        )
        cluster._run(
            "initdb", "-D", str(folder / "data"), "-U", user, "--auth=trust", "-E", "UTF8",
            "--no-sync",
        )  # fmt: skip
        options = (
            f"-c listen_addresses=127.0.0.1 -p {port} -k {folder} -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        cluster._run(
            "pg_ctl", "-D", str(folder / "data"), "-l", str(folder / "server.log"),
            "-o", options, "-w", "-t", "60", "start",
        )  # fmt: skip
        return cluster

    @classmethod
    def external(cls, url: str) -> Cluster:
        plain = url.replace("postgresql+asyncpg://", "postgresql://", 1)
        parsed = plain.split("@", 1)[-1]
        host, _, rest = parsed.partition(":")
        port = int(rest.split("/", 1)[0] or 5432)
        user = plain.split("://", 1)[1].split("@", 1)[0].split(":", 1)[0]
        return cls(admin_url=plain, host=host, port=port, user=user)

    def _run(self, tool: str, *args: str) -> None:
        assert self.bindir is not None
        command = [*self.run_as, str(self.bindir / tool), *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise Unavailable(f"{tool} failed: {(done.stderr or done.stdout).strip()[-500:]}")

    def stop(self) -> None:
        if self.folder is None:
            return
        try:
            self._run("pg_ctl", "-D", str(self.folder / "data"), "-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    def url(self, database: str) -> str:
        return f"postgresql+asyncpg://{self.user}@{self.host}:{self.port}/{database}"

    async def prepare_template(self) -> None:
        """Build the template database once: every test's database is a copy of it."""
        await self._admin(f'DROP DATABASE IF EXISTS "{TEMPLATE}"', f'CREATE DATABASE "{TEMPLATE}"')
        store = await Store.open(self.url(TEMPLATE))
        await store.close()

    async def new_database(self, *, migrated: bool = True) -> str:
        """A fresh database for one test, migrated (a copy of the template) or empty: its URL."""
        self.made += 1
        name = f"retention_test_{os.getpid()}_{self.made}"
        template = f' TEMPLATE "{TEMPLATE}"' if migrated else ""
        await self._admin(
            f'DROP DATABASE IF EXISTS "{name}"', f'CREATE DATABASE "{name}"{template}'
        )
        return self.url(name)

    async def drop(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        await self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    async def _admin(self, *statements: str) -> None:
        deadline = time.monotonic() + 30
        while True:
            try:
                conn = await asyncpg.connect(self.admin_url, timeout=10)
                break
            except (OSError, asyncpg.PostgresError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()


def query_now(url: str, sql: str) -> list[tuple[object, ...]]:
    """Rows of one query, read outside the event loop (from a server hook, or to check what
    was committed) on either backend: ``sqlite3`` on a file, asyncpg on a loop of its own."""
    if url.startswith("sqlite"):
        with closing(sqlite3.connect(url.split("///", 1)[1])) as db:
            return [tuple(r) for r in db.execute(sql)]

    async def read() -> list[tuple[object, ...]]:
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
        try:
            return [tuple(r) for r in await conn.fetch(sql)]
        finally:
            await conn.close()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, read()).result()
