"""Accounts: every stored row names the CustomGPT account it belongs to.

One daemon may serve several accounts (``[[accounts]]``), and agent ids are only unique within
an account. ``conversations``, ``agents``, ``conversation_counts``, ``audit`` and ``sweeps``
gain an ``account`` column; the rows already there belong to ``default``, the account a config
without ``[[accounts]]`` serves, so a single-account store keeps working unchanged. Keys that
named an agent now name (account, agent): the conversations' unique key and agent index, the
agents' primary key, the counts' key and the audit's conversation index.

On SQLite, ``conversations`` and ``agents`` are copied to change their keys (a batch
``recreate``); the count triggers go with the copy and are created again here, with the account
(and, on PostgreSQL, their row locks taken in key order, as migration 0009 made them). The
counts are rebuilt from the conversations, as migration 0008 first built them.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-29
"""

from __future__ import annotations

from typing import Literal

import sqlalchemy as sa
from alembic import op

from retention.schema import UTCDateTime

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

DEFAULT = "default"


def _account() -> sa.Column[str]:
    return sa.Column("account", sa.String(64), nullable=False, server_default=DEFAULT)


SQLITE_TRIGGERS = (
    """
    CREATE TRIGGER conversation_counts_insert AFTER INSERT ON conversations
    BEGIN
        INSERT INTO conversation_counts (account, agent_id, state, requested, n)
        VALUES (NEW.account, NEW.agent_id, NEW.state, NEW.origin != 'discovered', 1)
        ON CONFLICT (account, agent_id, state, requested) DO UPDATE SET n = n + 1;
    END
    """,
    """
    CREATE TRIGGER conversation_counts_update AFTER UPDATE OF account, agent_id, state, origin
    ON conversations
    WHEN OLD.account IS NOT NEW.account OR OLD.agent_id IS NOT NEW.agent_id
    OR OLD.state IS NOT NEW.state OR OLD.origin IS NOT NEW.origin
    BEGIN
        UPDATE conversation_counts SET n = n - 1
        WHERE account = OLD.account AND agent_id = OLD.agent_id AND state = OLD.state
        AND requested = (OLD.origin != 'discovered');
        INSERT INTO conversation_counts (account, agent_id, state, requested, n)
        VALUES (NEW.account, NEW.agent_id, NEW.state, NEW.origin != 'discovered', 1)
        ON CONFLICT (account, agent_id, state, requested) DO UPDATE SET n = n + 1;
    END
    """,
    """
    CREATE TRIGGER conversation_counts_delete AFTER DELETE ON conversations
    BEGIN
        UPDATE conversation_counts SET n = n - 1
        WHERE account = OLD.account AND agent_id = OLD.agent_id AND state = OLD.state
        AND requested = (OLD.origin != 'discovered');
    END
    """,
)

POSTGRESQL_TRIGGERS = (
    """
    CREATE OR REPLACE FUNCTION conversation_counts_track() RETURNS trigger
    LANGUAGE plpgsql AS $$
    DECLARE
        old_first boolean := TG_OP = 'DELETE';
    BEGIN
        IF TG_OP = 'UPDATE' THEN
            old_first := (OLD.account, OLD.agent_id, OLD.state, OLD.origin != 'discovered')
                       < (NEW.account, NEW.agent_id, NEW.state, NEW.origin != 'discovered');
        END IF;
        IF old_first THEN
            UPDATE conversation_counts SET n = n - 1
            WHERE account = OLD.account AND agent_id = OLD.agent_id AND state = OLD.state
            AND requested = (OLD.origin != 'discovered');
        END IF;
        IF TG_OP IN ('INSERT', 'UPDATE') THEN
            INSERT INTO conversation_counts (account, agent_id, state, requested, n)
            VALUES (NEW.account, NEW.agent_id, NEW.state, NEW.origin != 'discovered', 1)
            ON CONFLICT (account, agent_id, state, requested)
            DO UPDATE SET n = conversation_counts.n + 1;
        END IF;
        IF TG_OP = 'UPDATE' AND NOT old_first THEN
            UPDATE conversation_counts SET n = n - 1
            WHERE account = OLD.account AND agent_id = OLD.agent_id AND state = OLD.state
            AND requested = (OLD.origin != 'discovered');
        END IF;
        RETURN NULL;
    END
    $$
    """,
    """
    CREATE TRIGGER conversation_counts_insert_delete AFTER INSERT OR DELETE ON conversations
    FOR EACH ROW EXECUTE FUNCTION conversation_counts_track()
    """,
    """
    CREATE TRIGGER conversation_counts_update AFTER UPDATE OF account, agent_id, state, origin
    ON conversations FOR EACH ROW
    WHEN (OLD.account IS DISTINCT FROM NEW.account OR OLD.agent_id IS DISTINCT FROM NEW.agent_id
          OR OLD.state IS DISTINCT FROM NEW.state OR OLD.origin IS DISTINCT FROM NEW.origin)
    EXECUTE FUNCTION conversation_counts_track()
    """,
)


def _recreate(postgresql: bool) -> Literal["auto", "always"]:
    """SQLite changes a table's keys by copying it; PostgreSQL alters it in place."""
    return "auto" if postgresql else "always"


def _drop_triggers(postgresql: bool) -> None:
    if postgresql:
        op.execute("DROP TRIGGER IF EXISTS conversation_counts_update ON conversations")
        op.execute("DROP TRIGGER IF EXISTS conversation_counts_insert_delete ON conversations")
    else:
        for name in ("insert", "update", "delete"):
            op.execute(f"DROP TRIGGER IF EXISTS conversation_counts_{name}")


def _rebuild_counts(key: list[str]) -> None:
    """The counts table keyed by ``key`` (+ state, requested), filled from the conversations."""
    op.drop_table("conversation_counts")
    columns = [
        sa.Column("account", sa.String(64), nullable=False)
        if name == "account"
        else sa.Column("agent_id", sa.Integer(), nullable=False)
        for name in key
    ]
    op.create_table(
        "conversation_counts",
        *columns,
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("requested", sa.Boolean(), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint(*key, "state", "requested"),
    )
    names = ", ".join(key)
    op.execute(
        f"INSERT INTO conversation_counts ({names}, state, requested, n) "
        f"SELECT {names}, state, origin != 'discovered', count(*) FROM conversations "
        f"GROUP BY {names}, state, origin != 'discovered'"
    )


AGENT_COLUMNS = (
    "id, name, sync_cursor, last_full_sync_at, platform_retention_period, "
    "platform_retention_days, pages, first_seen, last_seen"
)


def _rekey_agents(key: list[str], postgresql: bool) -> None:
    """The agents table with primary key ``key``: (account, id), or (id) on the way down."""
    with_account = "account" in key
    if postgresql:
        if with_account:
            op.add_column("agents", _account())
        op.execute("ALTER TABLE agents DROP CONSTRAINT agents_pkey")
        op.execute(f"ALTER TABLE agents ADD CONSTRAINT agents_pkey PRIMARY KEY ({', '.join(key)})")
        if not with_account:
            op.drop_column("agents", "account")
        return
    # SQLite cannot change a primary key in place: a new table, the rows copied, renamed.
    op.create_table(
        "agents_rekeyed",
        *([_account()] if with_account else []),
        sa.Column("id", sa.Integer(), nullable=False, autoincrement=False),
        sa.Column("name", sa.String(255), nullable=False, server_default=""),
        sa.Column("sync_cursor", sa.Integer(), nullable=True),
        sa.Column("last_full_sync_at", UTCDateTime(), nullable=True),
        sa.Column("platform_retention_period", sa.String(16), nullable=True),
        sa.Column("platform_retention_days", sa.Integer(), nullable=True),
        sa.Column("pages", sa.Integer(), nullable=True),
        sa.Column("first_seen", UTCDateTime(), nullable=False),
        sa.Column("last_seen", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint(*key),
    )
    op.execute(f"INSERT INTO agents_rekeyed ({AGENT_COLUMNS}) SELECT {AGENT_COLUMNS} FROM agents")
    op.drop_table("agents")
    op.rename_table("agents_rekeyed", "agents")


def upgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    _drop_triggers(postgresql)
    with op.batch_alter_table("conversations", recreate=_recreate(postgresql)) as b:
        b.add_column(_account())
        b.drop_constraint("uq_conversations_agent_session", type_="unique")
        b.create_unique_constraint(
            "uq_conversations_account_agent_session", ["account", "agent_id", "session_id"]
        )
        b.drop_index("ix_conversations_agent_state")
        b.create_index("ix_conversations_account_agent_state", ["account", "agent_id", "state"])
    _rekey_agents(["account", "id"], postgresql)
    with op.batch_alter_table("audit") as b:
        b.add_column(_account())
    op.drop_index("ix_audit_conversation", "audit")
    op.create_index("ix_audit_conversation", "audit", ["account", "agent_id", "session_id"])
    with op.batch_alter_table("sweeps") as b:
        b.add_column(_account())
    _rebuild_counts(["account", "agent_id"])
    for statement in POSTGRESQL_TRIGGERS if postgresql else SQLITE_TRIGGERS:
        op.execute(statement)


def downgrade() -> None:
    """Back to one account: refused while rows of any other account are stored, in any table
    (they would be filed under the default account, and their agent ids could clash)."""
    bind = op.get_bind()
    postgresql = bind.dialect.name == "postgresql"
    for table in ("conversations", "agents", "audit", "sweeps"):
        others = bind.execute(
            sa.text(f"SELECT count(*) FROM {table} WHERE account != :a"), {"a": DEFAULT}
        ).scalar_one()
        if others:
            raise RuntimeError(
                f"{others} rows of {table} belong to accounts other than {DEFAULT!r}: a "
                "downgrade would file them under it; remove them first"
            )
    _drop_triggers(postgresql)
    with op.batch_alter_table("sweeps") as b:
        b.drop_column("account")
    op.drop_index("ix_audit_conversation", "audit")
    op.create_index("ix_audit_conversation", "audit", ["agent_id", "session_id"])
    with op.batch_alter_table("audit") as b:
        b.drop_column("account")
    _rekey_agents(["id"], postgresql)
    with op.batch_alter_table("conversations", recreate=_recreate(postgresql)) as b:
        b.drop_index("ix_conversations_account_agent_state")
        b.create_index("ix_conversations_agent_state", ["agent_id", "state"])
        b.drop_constraint("uq_conversations_account_agent_session", type_="unique")
        b.create_unique_constraint("uq_conversations_agent_session", ["agent_id", "session_id"])
        b.drop_column("account")
    _rebuild_counts(["agent_id"])
    # The triggers of migrations 0008 and 0009, without the account.
    from_0009 = [
        s.replace("account, agent_id", "agent_id")
        .replace("NEW.account, NEW.agent_id", "NEW.agent_id")
        .replace("OLD.account, OLD.agent_id", "OLD.agent_id")
        .replace("account = OLD.account AND ", "")
        .replace("OLD.account IS DISTINCT FROM NEW.account OR ", "")
        .replace("OLD.account IS NOT NEW.account OR ", "")
        for s in (POSTGRESQL_TRIGGERS if postgresql else SQLITE_TRIGGERS)
    ]
    for statement in from_0009:
        op.execute(statement)
