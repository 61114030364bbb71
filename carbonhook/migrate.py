"""Apply the Alembic migrations to the configured database, and say where its schema stands."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

import migrations
from carbonhook.database import describe_error
from carbonhook.errors import StoreUnavailable

MIGRATE_HINT = "run `carbonhook migrate`"


def alembic_config(database_url: str = "") -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Bring the schema up to `revision` (idempotent)."""
    command.upgrade(alembic_config(database_url), revision)


@dataclass(frozen=True)
class SchemaState:
    """The revision a database's schema is at, against the head of the migrations this version
    ships (`found` None: never migrated; `known`: `found` is one of this version's revisions)."""

    found: str | None
    needed: str
    known: bool

    @property
    def current(self) -> bool:
        return self.found == self.needed

    @property
    def problem(self) -> str | None:
        """What is wrong with the schema for this version, and what to do; None when current."""
        if self.current:
            return None
        if self.found is None:
            return (
                f"the database has no carbonhook schema (revision found: none, needed: "
                f"{self.needed}): {MIGRATE_HINT}"
            )
        if self.known:
            return (
                f"the database schema is at revision {self.found}, this version needs "
                f"{self.needed}: {MIGRATE_HINT}"
            )
        return (
            f"the database schema is at revision {self.found}, which this version of carbonhook "
            f"does not know (it needs {self.needed}): a newer version migrated it; run that one"
        )


@functools.cache
def _revisions() -> tuple[str, frozenset[str]]:
    """This version's head revision and every revision it ships (read once from migrations/)."""
    script = ScriptDirectory.from_config(alembic_config())
    head = script.get_current_head()
    assert head is not None, "migrations/ has one head"
    return head, frozenset(revision.revision for revision in script.walk_revisions())


def schema_state(engine: Engine) -> SchemaState:
    """Where `engine`'s schema stands (one query); `StoreUnavailable` if it cannot be read."""
    head, known = _revisions()
    try:
        with engine.connect() as conn:
            heads = MigrationContext.configure(conn).get_current_heads()
    except (SQLAlchemyError, OSError) as exc:
        raise StoreUnavailable(describe_error(exc)) from exc
    found = ",".join(heads) or None
    return SchemaState(found=found, needed=head, known=all(h in known for h in heads))
