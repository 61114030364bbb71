"""signed but unparseable deliveries kept, once per body

Revision ID: 0005
Revises: 0004

- `events.body_sha256`: the SHA-256 (hex) of the body of a delivery that was signed but did not
  parse, stored as an `invalid` event; NULL for every other event (the intake computes none).
- `uq_events_body_sha256`, unique and partial (`WHERE body_sha256 IS NOT NULL`): one row per
  distinct unparseable body, however often it comes. Partial, so the intake's hot insert of a
  valid delivery adds no entry to it.

"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

INDEX = "uq_events_body_sha256"
PREDICATE = sa.text("body_sha256 IS NOT NULL")


def upgrade() -> None:
    # Nullable and without a default: PostgreSQL adds it without rewriting the table.
    op.add_column("events", sa.Column("body_sha256", sa.String(length=64), nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        # CONCURRENTLY: a large events table keeps taking deliveries while the index is built.
        with op.get_context().autocommit_block():
            op.create_index(
                INDEX,
                "events",
                ["body_sha256"],
                unique=True,
                postgresql_where=PREDICATE,
                postgresql_concurrently=True,
            )
        return
    op.create_index(INDEX, "events", ["body_sha256"], unique=True, sqlite_where=PREDICATE)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        with op.get_context().autocommit_block():
            op.drop_index(INDEX, table_name="events", postgresql_concurrently=True)
    else:
        op.drop_index(INDEX, table_name="events")
    with op.batch_alter_table("events") as batch_op:
        batch_op.drop_column("body_sha256")
