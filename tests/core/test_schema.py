"""The models in carbonhook/schema.py match what the migrations build (carbonhook/schema.py's promise)."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from carbonhook.database import create_sync_engine
from carbonhook.schema import Base


def test_the_migrations_build_the_tables_the_models_describe(db_url: str):
    engine = create_sync_engine(db_url)
    try:
        with engine.connect() as conn:
            differences = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        engine.dispose()
    assert differences == []
