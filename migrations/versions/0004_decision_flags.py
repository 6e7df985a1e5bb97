"""Keep the deciding policy's dry-run flag and clock with each conversation's decision.

With them stored, nothing looks a policy up by name after deciding. Rows written before this
revision have no such flags yet, so the rules' fingerprint is reset: the next start decides
every live conversation again (locally, no API call), with the same rules, so no due time moves.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("conversations") as batch:
        batch.add_column(sa.Column("dry_run", sa.Boolean(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("age_from", sa.String(16), nullable=True))
    meta = sa.table("meta", sa.column("key", sa.String), sa.column("value", sa.Text))
    op.execute(meta.update().where(meta.c.key == "rules_fingerprint").values(value="reset by 0004"))


def downgrade() -> None:
    with op.batch_alter_table("conversations") as batch:
        batch.drop_column("age_from")
        batch.drop_column("dry_run")
