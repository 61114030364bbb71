"""Engines for the event store: the service picks its own drivers from a plain URL."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from receiver.settings import SettingsError

_SYNC_DRIVERS = {"sqlite": "sqlite+pysqlite", "postgresql": "postgresql+psycopg"}
_ASYNC_DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg"}


def _backend(url: str) -> tuple[str, Any]:
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    try:
        parsed = make_url(url)
    except Exception as exc:  # sqlalchemy raises ArgumentError with the URL inside
        raise SettingsError(f"CARBONHOOK_DATABASE_URL is not a database URL: {exc}") from None
    backend = parsed.get_backend_name()
    if backend not in _SYNC_DRIVERS:
        raise SettingsError(
            "CARBONHOOK_DATABASE_URL must be sqlite:///path or postgresql://user@host:port/db"
        )
    return backend, parsed


def sync_url(url: str) -> str:
    backend, parsed = _backend(url)
    return str(parsed.set(drivername=_SYNC_DRIVERS[backend]).render_as_string(hide_password=False))


def async_url(url: str) -> str:
    backend, parsed = _backend(url)
    return str(parsed.set(drivername=_ASYNC_DRIVERS[backend]).render_as_string(hide_password=False))


def is_sqlite(url: str) -> bool:
    return _backend(url)[0] == "sqlite"


def _tune_sqlite(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the intake write while workers read; busy_timeout queues writers instead of
    # failing them; NORMAL is still durable across a process crash in WAL mode.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def create_sync_engine(url: str, *, pool_size: int = 10) -> Engine:
    """An engine for workers, the CLI and the admin API."""
    if is_sqlite(url):
        engine = create_engine(sync_url(url), connect_args={"timeout": 10})
        event.listen(engine, "connect", _tune_sqlite)
        return engine
    return create_engine(
        sync_url(url),
        pool_size=pool_size,
        max_overflow=pool_size,
        # No ping before each use (a round trip per transaction): a connection the server
        # dropped fails once, SQLAlchemy then discards the whole pool, and the work is retried.
        pool_recycle=3600,
        connect_args={"connect_timeout": 5},
    )


def autocommit(engine: Engine) -> Connection:
    """A connection on which each statement commits by itself: for work that is one statement
    (or a few, each safe alone), it spares the BEGIN and COMMIT round trips of a transaction."""
    return engine.connect().execution_options(isolation_level="AUTOCOMMIT")


def create_intake_engine(url: str, *, pool_size: int = 10) -> AsyncEngine:
    """The intake's engine: async, autocommit, so an insert is one round trip and committed."""
    if is_sqlite(url):
        engine = create_async_engine(
            async_url(url), isolation_level="AUTOCOMMIT", connect_args={"timeout": 10}
        )
        event.listen(engine.sync_engine, "connect", _tune_sqlite)
        return engine
    return create_async_engine(
        async_url(url),
        isolation_level="AUTOCOMMIT",
        pool_size=pool_size,
        max_overflow=0,
        pool_timeout=5,
        connect_args={"timeout": 5, "command_timeout": 10},
    )
