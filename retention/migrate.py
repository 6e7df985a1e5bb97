"""Alembic plumbing: find the migration scripts, apply them on a connection, read revisions."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection


def script_location() -> str:
    """Where the migration scripts are: inside the package, or the repository's top level.

    The scripts live in the repository's top-level ``migrations/``; the wheel carries them as
    ``retention/migrations`` (pyproject.toml's force-include). An installed wheel has only the
    latter; an editable install or a checkout imports the package from the repository, where
    only the former exists, beside the package.
    """
    packaged = resources.files("retention") / "migrations"
    if packaged.is_dir():
        return str(packaged)
    return str(Path(__file__).resolve().parent.parent / "migrations")


def alembic_config() -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", script_location())
    return cfg


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def upgrade_to_head(connection: Connection) -> None:
    cfg = alembic_config()
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, "head")


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()
