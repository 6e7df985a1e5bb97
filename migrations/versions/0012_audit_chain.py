"""A tamper-evident audit: each account's rows form a hash chain (``retention.chain``).

``audit`` gains ``seq`` (1, 2, 3, ... per account), ``prev_hash`` and ``hash``; existing rows
are chained in the order they were written (by ``id``), so the same rows always give the same
chain. ``audit_heads`` records each account's latest sequence number and hash. A downgrade drops
the chain; upgrading again rebuilds the same hashes from unchanged rows.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-29
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

from retention import chain
from retention.errors import ConfigError
from retention.schema import UTCDateTime

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

PAGE = 5000
leases = sa.table(
    "leases",
    sa.column("scope", sa.String),
    sa.column("holder", sa.String),
    sa.column("expires_at", UTCDateTime()),
)

audit = sa.table(
    "audit",
    sa.column("id", sa.Integer),
    sa.column("at", UTCDateTime()),
    sa.column("account", sa.String),
    sa.column("agent_id", sa.Integer),
    sa.column("session_id", sa.String),
    sa.column("name", sa.String),
    sa.column("rule", sa.String),
    sa.column("age_seconds", sa.Float),
    sa.column("outcome", sa.String),
    sa.column("detail", sa.Text),
    sa.column("sweep_id", sa.Integer),
    sa.column("seq", sa.Integer),
    sa.column("prev_hash", sa.String),
    sa.column("hash", sa.String),
)


def upgrade() -> None:
    _refuse_live_writers(op.get_bind())
    op.add_column("audit", sa.Column("seq", sa.Integer(), nullable=True))
    op.add_column("audit", sa.Column("prev_hash", sa.String(64), nullable=True))
    op.add_column("audit", sa.Column("hash", sa.String(64), nullable=True))
    heads = op.create_table(
        "audit_heads",
        sa.Column("account", sa.String(64), primary_key=True),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    conn = op.get_bind()
    accounts = [r[0] for r in conn.execute(sa.select(audit.c.account).distinct())]
    for account in sorted(accounts):
        seq, prev, after = 0, chain.GENESIS, 0
        while True:
            rows = conn.execute(
                sa.select(audit)
                .where(audit.c.account == account, audit.c.id > after)
                .order_by(audit.c.id)
                .limit(PAGE)
            ).all()
            if not rows:
                break
            updates = []
            for row in rows:
                seq += 1
                m = row._mapping
                fields = chain.row_fields(m, seq=seq, prev=prev)
                prev = chain.digest(fields)
                updates.append({"row_id": m["id"], "s": seq, "p": fields["prev"], "h": prev})
            conn.execute(
                sa.update(audit)
                .where(audit.c.id == sa.bindparam("row_id"))
                .values(seq=sa.bindparam("s"), prev_hash=sa.bindparam("p"), hash=sa.bindparam("h")),
                updates,
            )
            after = rows[-1]._mapping["id"]
        conn.execute(sa.insert(heads).values(account=account, seq=seq, hash=prev))
    with op.batch_alter_table("audit") as b:
        b.alter_column("seq", existing_type=sa.Integer(), nullable=False)
        b.alter_column("prev_hash", existing_type=sa.String(64), nullable=False)
        b.alter_column("hash", existing_type=sa.String(64), nullable=False)
    op.create_index("ux_audit_chain", "audit", ["account", "seq"], unique=True)


def _refuse_live_writers(conn: sa.Connection) -> None:
    """A writer of the previous version would write audit rows without the chain's columns,
    and its deletions would go unaudited: while any lease is held (a daemon, `once`, a
    replica), this migration waits for it to be stopped. A dead holder's lease lapses by its
    expiry."""
    now = datetime.now(UTC)
    for scope, holder, expires in conn.execute(
        sa.select(leases.c.scope, leases.c.holder, leases.c.expires_at).order_by(leases.c.scope)
    ):
        if expires is not None and expires > now:
            raise ConfigError(
                f"migration 0012 (the audit's hash chain) needs every writer stopped first: "
                f"{scope} is held by {holder} until {expires:%Y-%m-%d %H:%M:%S}Z; stop it (a "
                "dead holder's lease lapses by then), then upgrade",
                key="store.url",
            )


def downgrade() -> None:
    op.drop_index("ux_audit_chain", "audit")
    with op.batch_alter_table("audit") as b:
        b.drop_column("hash")
        b.drop_column("prev_hash")
        b.drop_column("seq")
    op.drop_table("audit_heads")
