"""Engines for the event store: the service picks its own drivers from a plain URL."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.exc import DBAPIError, InvalidRequestError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.sql.elements import BindParameter

from carbonhook.errors import SettingsError

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


def describe_error(exc: BaseException) -> str:
    """A database error in one line for a log or /readyz: the driver's own words, without the
    statement and parameters SQLAlchemy adds (a delivery's body may be among them)."""
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    words = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {words[0]}" if words else type(cause).__name__


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


@dataclass(frozen=True, slots=True)
class DriverResult:
    rows: Sequence[Sequence[Any]]
    rowcount: int

    def first(self) -> Sequence[Any] | None:
        return self.rows[0] if self.rows else None


@dataclass(frozen=True, slots=True)
class _Param:
    name: str  # in the SQL
    key: str  # in the caller's parameters
    bind: BindParameter[Any]  # its own value, when the caller passes none
    to_driver: Callable[[Any], Any] | None


@dataclass(frozen=True, slots=True)
class _Compiled:
    sql: str
    params: tuple[_Param, ...]
    positions: tuple[str, ...] | None  # the parameters' order, for positional drivers
    results: tuple[Callable[[Any], Any] | None, ...]


class DriverStatement:
    """One statement that commits by itself, for the workers' hot path: compiled once per
    dialect and run on the pooled driver connection in autocommit, with the column types'
    own conversions (UTCDateTime's aware <-> naive) on the way in and out.

    Each of an event's five statements spent ~250 us of CPU in SQLAlchemy's `Connection`
    (its execution context, the result object, setting and resetting autocommit at every
    checkout) against ~170 us in psycopg itself (bench/FINDINGS.md). Errors are still
    SQLAlchemy's `DBAPIError`s, and a connection the server dropped leaves the pool.
    `build` gives the statement for a dialect's name (ON CONFLICT is dialect-specific).
    """

    def __init__(self, build: Callable[[str], Any]) -> None:
        self._build = build
        self._compiled: dict[str, _Compiled] = {}

    def run(self, engine: Engine, params: Mapping[str, Any]) -> DriverResult:
        dialect = engine.dialect
        plan = self._compiled.get(dialect.name) or self._compile(dialect)
        rows, rowcount = _execute(engine, plan.sql, _bind(plan, params))
        return DriverResult(_convert(plan, rows), rowcount)

    def _compile(self, dialect: Dialect) -> _Compiled:
        statement = self._build(dialect.name)
        compiled = statement.compile(dialect=dialect)
        if "POSTCOMPILE" in compiled.string:
            raise ValueError("a DriverStatement cannot expand IN parameters: write them out")
        # What SQLCompiler.construct_params does for these statements, without its generality
        # (cache keys, expanding and escaped names), which cost ~4% of a worker's CPU.
        if compiled.escaped_bind_names:
            raise ValueError("a DriverStatement's parameter names must need no escaping")
        params = tuple(
            _Param(
                name=name,
                key=bind.key,
                bind=bind,
                to_driver=bind.type.dialect_impl(dialect).bind_processor(dialect),
            )
            for bind, name in compiled.bind_names.items()
        )
        columns = getattr(statement, "exported_columns", ())
        plan = _Compiled(
            sql=compiled.string,
            params=params,
            positions=tuple(compiled.positiontup) if compiled.positiontup else None,
            results=tuple(
                column.type.dialect_impl(dialect).result_processor(dialect, None)
                for column in columns
            ),
        )
        self._compiled[dialect.name] = plan
        return plan


def _bind(plan: _Compiled, params: Mapping[str, Any]) -> Any:
    """The driver's parameters: the caller's values (or the statement's own), each converted
    by its column type, as a dict or, for a positional driver, a tuple."""
    values: Any = {}
    for param in plan.params:
        if param.key in params:
            value = params[param.key]
        elif param.bind.required:
            raise InvalidRequestError(f"A value is required for bind parameter {param.key!r}")
        else:
            value = param.bind.effective_value
        values[param.name] = value if param.to_driver is None else param.to_driver(value)
    if plan.positions is not None:
        values = tuple(values[name] for name in plan.positions)
    return values


def _execute(engine: Engine, sql: str, values: Any) -> tuple[Sequence[Any], int]:
    """Run `sql` in autocommit on a pooled driver connection; the rows and the row count."""
    dialect = engine.dialect
    connection = engine.raw_connection()
    cursor = None
    try:
        driver = connection.dbapi_connection
        assert driver is not None  # a connection just checked out of the pool
        dialect.set_isolation_level(driver, "AUTOCOMMIT")
        cursor = connection.cursor()
        cursor.execute(sql, values)
        rows = cursor.fetchall() if cursor.description else []
        rowcount = cursor.rowcount
        cursor.close()
        dialect.reset_isolation_level(driver)
    except BaseException as error:
        # Its autocommit may still be on: it must never serve a transaction again.
        connection.invalidate(error if isinstance(error, Exception) else None)
        if not isinstance(error, dialect.loaded_dbapi.Error):
            raise
        dropped = dialect.is_disconnect(error, driver, cursor)
        if dropped:  # the server went away: so did every other pooled connection
            engine.dispose(close=False)
        raise DBAPIError.instance(
            sql,
            values,
            error,
            dialect.loaded_dbapi.Error,
            connection_invalidated=dropped,
            dialect=dialect,
        ) from error
    finally:
        connection.close()
    return rows, rowcount


def _convert(plan: _Compiled, rows: Sequence[Any]) -> Sequence[Sequence[Any]]:
    """The rows with each column converted by its type (UTCDateTime: naive -> aware)."""
    if not any(plan.results):
        return rows
    return [
        tuple(
            value if convert is None else convert(value)
            for convert, value in zip(plan.results, row, strict=True)
        )
        for row in rows
    ]


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


def insert_ignore(conn: Connection, model: Any, values: dict[str, Any]) -> None:
    """INSERT … ON CONFLICT DO NOTHING of one row."""
    conn.execute(insert_ignore_statement(model, conn.dialect.name), values)


@functools.cache
def insert_ignore_statement(model: Any, dialect_name: str) -> Any:
    """The columns come from the parameters of each execution."""
    dialect = postgresql if dialect_name == "postgresql" else sqlite
    return dialect.insert(model).on_conflict_do_nothing()
