"""events that wait for a rule's condition

Revision ID: 0006
Revises: 0005

- `events.waiting_since`: when the event first waited for a rule's `wait_until` (status
  `waiting`), by the database's clock; a rule's `wait_for` is measured from it. NULL for an
  event that never waited. A replay keeps it: it checks again, it does not restart the wait.

"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable and without a default: PostgreSQL adds it without rewriting the table.
    op.add_column("events", sa.Column("waiting_since", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("events") as batch_op:
        batch_op.drop_column("waiting_since")
