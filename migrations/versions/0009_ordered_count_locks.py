"""PostgreSQL: the count triggers take their row locks in one order, so they cannot deadlock.

A state change moves one conversation between two rows of ``conversation_counts``: it takes
one away from the old (agent, state, requested) row and adds one to the new. Two transactions
moving conversations in opposite directions (one ``active`` to ``deleting``, the other
``deleting`` back to ``active`` after a failed delete) took the two row locks in opposite
orders, and PostgreSQL aborted one of them as a deadlock. The trigger now touches the two rows
in the order of their keys, whichever way the conversation moves. SQLite has one writer at a
time and is unchanged.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

ORDERED = """
CREATE OR REPLACE FUNCTION conversation_counts_track() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    old_first boolean := TG_OP = 'DELETE';
BEGIN
    IF TG_OP = 'UPDATE' THEN
        old_first := (OLD.agent_id, OLD.state, OLD.origin != 'discovered')
                   < (NEW.agent_id, NEW.state, NEW.origin != 'discovered');
    END IF;
    IF old_first THEN
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
    IF TG_OP = 'UPDATE' AND NOT old_first THEN
        UPDATE conversation_counts SET n = n - 1
        WHERE agent_id = OLD.agent_id AND state = OLD.state
        AND requested = (OLD.origin != 'discovered');
    END IF;
    RETURN NULL;
END
$$
"""

UNORDERED = """
CREATE OR REPLACE FUNCTION conversation_counts_track() RETURNS trigger LANGUAGE plpgsql AS $$
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
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(ORDERED)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(UNORDERED)
