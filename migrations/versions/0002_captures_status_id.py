"""captures listed by status, newest first

Revision ID: 0002
Revises: 0001

`(status, id)` instead of `(status, updated_at)`: `captures list --status …` (newest first)
reads the index in order instead of sorting every capture of that status, and the index no
longer holds `updated_at`, which every write changes. Starting an attempt on a pending capture
then touches no indexed column, so PostgreSQL can update the row in place (a HOT update: no
new entry in any of the table's indexes).
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    _swap("ix_captures_status", "ix_captures_status_id", ["status", "id"])


def downgrade() -> None:
    _swap("ix_captures_status_id", "ix_captures_status", ["status", "updated_at"])


def _swap(old: str, new: str, columns: list[str]) -> None:
    if op.get_bind().dialect.name == "postgresql":
        # CONCURRENTLY: a large ledger keeps taking writes while the index is built.
        with op.get_context().autocommit_block():
            op.create_index(new, "captures", columns, postgresql_concurrently=True)
            op.drop_index(old, table_name="captures", postgresql_concurrently=True)
        return
    with op.batch_alter_table("captures") as batch_op:
        batch_op.create_index(new, columns)
        batch_op.drop_index(old)
