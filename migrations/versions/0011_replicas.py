"""Replicas: each running daemon (``retention run``) on a shared store heartbeats a row.

Several replicas on one PostgreSQL store share the accounts: each takes free or lapsed account
leases up to its fair share of the live replicas, and a replica is live while its heartbeat is
younger than the lease time. ``id`` is the replica's holder name (host, pid, start time), as
its leases name it.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from retention.schema import UTCDateTime

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "replicas",
        sa.Column("id", sa.String(255), primary_key=True),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("beat_at", UTCDateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("replicas")
