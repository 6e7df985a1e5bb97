"""Figures that do not grow with the store: per-agent counts kept by triggers, and an index.

``conversation_counts`` holds, per agent, state and whether they were requested (created or
registered through retention rather than discovered), how many conversations the store has.
Triggers on ``conversations`` keep it exact in the same transaction as every insert, state
change and delete, whoever writes (the engine, a migration, an operator's SQL), so a
``/metrics`` scrape or ``retention status`` reads a few rows instead of counting every tracked
conversation. The figures that depend on the time (due, overdue, in grace, deleted in the last
day) are counted through indexes whose size follows the number due or recently deleted:
``(state, due_at)`` already exists; ``(state, finished_at)`` is added here. Discovery's
question "which agents have live conversations created or registered through retention" reads
the counts too.

Stored reasons lose their time-relative tail ("age 2h; due since 1h"): a decision's reason now
says what decided and by which clock, and the time is added when it is shown, so that
re-evaluating the store rewrites only the rows whose decision changed.

A later migration that makes SQLite copy the ``conversations`` table (a batch ``recreate``)
drops these triggers with it and must create them again.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

SQLITE_TRIGGERS = (
    """
    CREATE TRIGGER conversation_counts_insert AFTER INSERT ON conversations
    BEGIN
        INSERT INTO conversation_counts (agent_id, state, requested, n)
        VALUES (NEW.agent_id, NEW.state, NEW.origin != 'discovered', 1)
        ON CONFLICT (agent_id, state, requested) DO UPDATE SET n = n + 1;
    END
    """,
    """
    CREATE TRIGGER conversation_counts_update AFTER UPDATE OF agent_id, state, origin
    ON conversations
    WHEN OLD.agent_id IS NOT NEW.agent_id OR OLD.state IS NOT NEW.state
    OR OLD.origin IS NOT NEW.origin
    BEGIN
        UPDATE conversation_counts SET n = n - 1
        WHERE agent_id = OLD.agent_id AND state = OLD.state
        AND requested = (OLD.origin != 'discovered');
        INSERT INTO conversation_counts (agent_id, state, requested, n)
        VALUES (NEW.agent_id, NEW.state, NEW.origin != 'discovered', 1)
        ON CONFLICT (agent_id, state, requested) DO UPDATE SET n = n + 1;
    END
    """,
    """
    CREATE TRIGGER conversation_counts_delete AFTER DELETE ON conversations
    BEGIN
        UPDATE conversation_counts SET n = n - 1
        WHERE agent_id = OLD.agent_id AND state = OLD.state
        AND requested = (OLD.origin != 'discovered');
    END
    """,
)

POSTGRESQL_TRIGGERS = (
    """
    CREATE FUNCTION conversation_counts_track() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP IN ('UPDATE', 'DELETE') THEN
            UPDATE conversation_counts SET n = n - 1
            WHERE agent_id = OLD.agent_id AND state = OLD.state
            AND requested = (OLD.origin != 'discovered');
        END IF;
        IF TG_OP IN ('INSERT', 'UPDATE') THEN
            INSERT INTO conversation_counts (agent_id, state, requested, n)
            VALUES (NEW.agent_id, NEW.state, NEW.origin != 'discovered', 1)
            ON CONFLICT (agent_id, state, requested)
            DO UPDATE SET n = conversation_counts.n + 1;
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
    CREATE TRIGGER conversation_counts_update AFTER UPDATE OF agent_id, state, origin
    ON conversations FOR EACH ROW
    WHEN (OLD.agent_id IS DISTINCT FROM NEW.agent_id OR OLD.state IS DISTINCT FROM NEW.state
          OR OLD.origin IS DISTINCT FROM NEW.origin)
    EXECUTE FUNCTION conversation_counts_track()
    """,
)


CLOCKS = ("created", "updated", "last activity", "created/updated (unconfirmed)")


def _timeless_reasons(find: str) -> None:
    """Cut "..., age X; due ..." from policy reasons and "; due ..." from own-TTL reasons."""
    for clock in CLOCKS:
        marker = f" from {clock}, age "
        keep = len(f" from {clock}")
        op.execute(
            f"UPDATE conversations SET reason = substr(reason, 1, {find}(reason, '{marker}') "
            f"+ {keep - 1}) WHERE reason LIKE 'policy %' AND {find}(reason, '{marker}') > 0"
        )
    op.execute(
        f"UPDATE conversations SET reason = substr(reason, 1, {find}(reason, '; due ') - 1) "
        f"WHERE reason LIKE 'own TTL %' AND {find}(reason, '; due ') > 0"
    )


def upgrade() -> None:
    op.create_table(
        "conversation_counts",
        sa.Column("agent_id", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("requested", sa.Boolean(), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("agent_id", "state", "requested"),
    )
    op.execute(
        "INSERT INTO conversation_counts (agent_id, state, requested, n) "
        "SELECT agent_id, state, origin != 'discovered', count(*) FROM conversations "
        "GROUP BY agent_id, state, origin != 'discovered'"
    )
    dialect = op.get_bind().dialect.name
    for statement in POSTGRESQL_TRIGGERS if dialect == "postgresql" else SQLITE_TRIGGERS:
        op.execute(statement)
    _timeless_reasons("strpos" if dialect == "postgresql" else "instr")
    # Plain CREATE INDEX (not a batch): a batch could copy the table and drop the triggers.
    op.create_index("ix_conversations_state_finished", "conversations", ["state", "finished_at"])


def downgrade() -> None:
    op.drop_index("ix_conversations_state_finished", "conversations")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER conversation_counts_update ON conversations")
        op.execute("DROP TRIGGER conversation_counts_insert_delete ON conversations")
        op.execute("DROP FUNCTION conversation_counts_track()")
    else:
        for name in ("insert", "update", "delete"):
            op.execute(f"DROP TRIGGER conversation_counts_{name}")
    op.drop_table("conversation_counts")
