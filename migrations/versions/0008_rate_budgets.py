"""rate budgets shared by every worker (without Redis)

Revision ID: 0008
Revises: 0007

- `rate_budgets`: one row per outbound API (`carbonpass`, `impact`), made by the first worker
  that needs it: the token bucket's theoretical arrival time (`tat_us`), the pause a 429 set
  (`paused_until_us`), and the 429s in a row that set a backoff (`strikes`, the last at
  `struck_at_us`); times in microseconds since the epoch. With Redis the same lives there.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rate_budgets",
        sa.Column("api", sa.String(length=32), nullable=False),
        sa.Column("tat_us", sa.BigInteger(), nullable=False),
        sa.Column("paused_until_us", sa.BigInteger(), nullable=False),
        sa.Column("strikes", sa.Integer(), nullable=False),
        sa.Column("struck_at_us", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("api"),
    )


def downgrade() -> None:
    op.drop_table("rate_budgets")
