"""fenced attempts, exact tags, the audit's reversals

Revision ID: 0003
Revises: 0002

- `events.attempt_token`, `captures.attempt_token`: each attempt's token, never reused (a
  replay does not reset it); every write of an attempt's outcome is conditional on it.
- `deployment`: one random id, made here once, in every tag a capture carries at 1ClickImpact,
  so that a record tagged by another deployment (or another database) is never taken for ours.
- `captures (user_id, time_utc)` unique: one impact at 1ClickImpact is never claimed by two rows.
- `captures.confirmed_at`: when the audit saw the capture's record in a listing;
  `captures.audit_note`: what the audit found wrong with the row (cleared once it is right).
- `reversals`: an impact found standing twice for one row, and its reversal at 1ClickImpact.
"""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    deployment = op.create_table(
        "deployment",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.execute(
        deployment.insert().values(id=str(uuid.uuid4()), created_at=sa.func.current_timestamp())
    )
    with op.batch_alter_table("events") as batch_op:
        batch_op.add_column(sa.Column("attempt_token", sa.String(length=32), nullable=True))
    with op.batch_alter_table("captures") as batch_op:
        batch_op.add_column(sa.Column("attempt_token", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("confirmed_at", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("audit_note", sa.Text(), nullable=True))
        batch_op.create_unique_constraint("uq_captures_impact", ["user_id", "time_utc"])
    op.create_table(
        "reversals",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("capture_id", Id, nullable=False),
        sa.Column("user_id", sa.String(length=100), nullable=False),
        sa.Column("time_utc", sa.String(length=40), nullable=False),
        sa.Column("reason", sa.String(length=200), nullable=False),
        sa.Column("found_at", sa.DateTime(), nullable=False),
        sa.Column("cancelled_at", sa.DateTime(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["capture_id"], ["captures.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("user_id", "time_utc", name="uq_reversals_impact"),
    )
    op.create_index("ix_reversals_capture_id", "reversals", ["capture_id"])


def downgrade() -> None:
    op.drop_index("ix_reversals_capture_id", table_name="reversals")
    op.drop_table("reversals")
    with op.batch_alter_table("captures") as batch_op:
        batch_op.drop_constraint("uq_captures_impact", type_="unique")
        batch_op.drop_column("audit_note")
        batch_op.drop_column("confirmed_at")
        batch_op.drop_column("attempt_token")
    with op.batch_alter_table("events") as batch_op:
        batch_op.drop_column("attempt_token")
    op.drop_table("deployment")
