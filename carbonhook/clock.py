"""The database's clock, as SQL: times that decide (a lease's end, a retry's due time, the age of
a capture's attempt) are read from the one clock every process shares, never from a worker's.

A worker whose clock runs a minute fast would otherwise take over leases that have not expired,
or send a capture again before its settle window has passed. Values are naive UTC, like every
`UTCDateTime` column: on SQLite text with six decimals (as SQLAlchemy writes them, so that
comparisons of text order correctly), on PostgreSQL `timestamp without time zone`.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ColumnElement, FunctionElement
from sqlalchemy.types import NullType

from carbonhook.schema import UTCDateTime


class db_now(FunctionElement[Any]):
    """The database's current time, plus `seconds` (a number or a bound parameter) if given."""

    type = UTCDateTime()
    inherit_cache = True
    name = "db_now"


@compiles(db_now, "postgresql")
def _pg_now(element: db_now, compiler: SQLCompiler, **kw: Any) -> str:
    # clock_timestamp(), not now(): now() is the start of the transaction.
    now = "(clock_timestamp() AT TIME ZONE 'UTC')"
    args = list(element.clauses)
    if not args:
        return now
    return f"({now} + make_interval(secs => {compiler.process(args[0], **kw)}))"


@compiles(db_now, "sqlite")
def _sqlite_now(element: db_now, compiler: SQLCompiler, **kw: Any) -> str:
    args = list(element.clauses)
    if not args:
        return "strftime('%Y-%m-%d %H:%M:%f000', 'now')"
    seconds = compiler.process(args[0], **kw)
    return f"strftime('%Y-%m-%d %H:%M:%f000', 'now', printf('%+.6f seconds', {seconds}))"


def seconds_since(column: Any) -> ColumnElement[float]:
    """How many seconds ago `column` was, by the database's clock."""
    return _seconds_since(column)


class _seconds_since(FunctionElement[float]):
    # No type: the drivers' own float (no result conversion, which DriverStatement could not
    # set up without the column's type code).
    type = NullType()  # type: ignore[assignment]
    inherit_cache = True
    name = "seconds_since"


@compiles(_seconds_since, "postgresql")
def _pg_since(element: _seconds_since, compiler: SQLCompiler, **kw: Any) -> str:
    (column,) = list(element.clauses)
    return (
        "CAST(EXTRACT(EPOCH FROM ((clock_timestamp() AT TIME ZONE 'UTC') - "
        f"{compiler.process(column, **kw)})) AS double precision)"
    )


@compiles(_seconds_since, "sqlite")
def _sqlite_since(element: _seconds_since, compiler: SQLCompiler, **kw: Any) -> str:
    (column,) = list(element.clauses)
    return f"((julianday('now') - julianday({compiler.process(column, **kw)})) * 86400.0)"
