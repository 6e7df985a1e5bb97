"""Record when each conversation's changeable facts were last read, and each agent's pages.

``conversations.facts_at``: when the name and ``updated_at`` were last read from the API; a
deletion that rests on them re-reads them first when they are older than ``facts_max_age``.
Rows from before have none, so they count as stale. ``agents.pages``: how many pages the last
full walk read, which is what re-reading the whole agent costs.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from retention.schema import UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("conversations") as batch:
        batch.add_column(sa.Column("facts_at", UTCDateTime(), nullable=True))
    with op.batch_alter_table("agents") as batch:
        batch.add_column(sa.Column("pages", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("agents") as batch:
        batch.drop_column("pages")
    with op.batch_alter_table("conversations") as batch:
        batch.drop_column("facts_at")
