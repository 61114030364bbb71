"""Alembic migrations: the only source of the event store's schema."""
