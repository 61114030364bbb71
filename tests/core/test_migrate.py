"""Where a database's schema stands against the migrations (carbonhook/migrate.py), on real
SQLite: never migrated, behind, at the head, and ahead of this version."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from carbonhook.database import create_sync_engine
from carbonhook.errors import StoreUnavailable
from carbonhook.migrate import schema_state, upgrade
from tests.support import ROOT

# The migrations are numbered in order, one file each: the newest is the head, the one before
# it is behind.
REVISIONS = sorted(path.name[:4] for path in (ROOT / "migrations" / "versions").glob("[0-9]*.py"))
HEAD, BEHIND = REVISIONS[-1], REVISIONS[-2]


@pytest.fixture
def empty(tmp_path: Path) -> Iterator[tuple[str, Engine]]:
    url = f"sqlite:///{tmp_path}/never-migrated.db"
    engine = create_sync_engine(url)
    yield url, engine
    engine.dispose()


def test_a_database_never_migrated_has_no_revision_and_is_told_to_migrate(empty):
    _, engine = empty
    state = schema_state(engine)
    assert (state.found, state.needed, state.current) == (None, HEAD, False)
    assert state.problem is not None
    assert f"revision found: none, needed: {HEAD}" in state.problem
    assert state.problem.endswith("run `carbonhook migrate`")


def test_a_schema_behind_names_both_revisions(empty):
    url, engine = empty
    upgrade(url, BEHIND)
    state = schema_state(engine)
    assert (state.found, state.known, state.current) == (BEHIND, True, False)
    assert state.problem == (
        f"the database schema is at revision {BEHIND}, this version needs {HEAD}: "
        "run `carbonhook migrate`"
    )


def test_a_schema_at_the_head_is_current(empty):
    url, engine = empty
    upgrade(url)
    state = schema_state(engine)
    assert (state.found, state.current, state.problem) == (HEAD, True, None)


def test_a_schema_a_newer_version_migrated_is_not_current_and_not_migrated_down(empty):
    url, engine = empty
    upgrade(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    state = schema_state(engine)
    assert (state.found, state.known, state.current) == ("0099", False, False)
    assert state.problem is not None and f"does not know (it needs {HEAD})" in state.problem
    assert "carbonhook migrate" not in state.problem


def test_a_database_that_cannot_be_read_is_unavailable(tmp_path: Path):
    engine = create_sync_engine(f"sqlite:///{tmp_path}/no-such-folder/x.db")
    try:
        with pytest.raises(StoreUnavailable, match="OperationalError: unable to open database file"):
            schema_state(engine)
    finally:
        engine.dispose()
