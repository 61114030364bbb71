"""named admins: who replayed an event, who decided a capture

Revision ID: 0004
Revises: 0003

- `replays.admin`: the admin who replayed the event (a name in CARBONHOOK_ADMIN_TOKENS, the
  OS user of a command, or its `--as`); empty for replays made before names existed.
- `decisions`: each approve, reject and resolve of a capture, and what the row became: when,
  who, through which interface (cli, api, dashboard), why. Written in the same transaction as
  the decision's conditional update.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("replays") as batch_op:
        batch_op.add_column(sa.Column("admin", sa.String(length=64), nullable=True))
    op.create_table(
        "decisions",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("capture_id", Id, nullable=False),
        sa.Column("decision", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("admin", sa.String(length=64), nullable=False),
        sa.Column("via", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["capture_id"], ["captures.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_decisions_capture_id", "decisions", ["capture_id"])


def downgrade() -> None:
    op.drop_index("ix_decisions_capture_id", table_name="decisions")
    op.drop_table("decisions")
    with op.batch_alter_table("replays") as batch_op:
        batch_op.drop_column("admin")
