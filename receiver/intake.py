"""The hot path's one write: store a delivery exactly once, in one round trip.

A signed body that does not parse is kept as well (status `invalid`, with the reason), once per
distinct body by its SHA-256: the sender is still answered 400, and nothing it sent is lost.

On PostgreSQL the intake talks to asyncpg directly (a pool, one prepared statement): the
SQLAlchemy layer cost more CPU per delivery than the rest of the request (bench/FINDINGS.md).
SQLite goes through SQLAlchemy's aiosqlite engine.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import asyncpg
from sqlalchemy import make_url, text
from sqlalchemy.exc import DataError, DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncEngine

from carbonhook.database import create_intake_engine, describe_error, is_sqlite
from carbonhook.errors import InvalidDelivery, StoreUnavailable
from carbonhook.outbox import invalid_note_sql
from carbonhook.schema import UTCDateTime, sqlite_event_ts, utcnow
from carbonhook.statuses import EventStatus
from receiver.events import Delivery, parse_delivery

log = logging.getLogger(__name__)

# A new event is stored `queued`, whatever its type: the receiver hands it to the broker right
# after the insert commits, and marks it `pending` only if that fails. Marking every event
# `queued` once the broker had it cost a second write of the row and its five indexes
# (bench/FINDINGS.md). Whether a rule is on its type is the worker's to say, by the rules in
# force when it processes the event (it then ends `ignored` if none is): the receiver reads
# no rules, so its one statement per delivery is the same for every type.
_FIRST_STATUS = EventStatus.QUEUED


_COLUMNS = (
    "type, subject_id, event_ts, received_at, body, status, attempts, available_at, updated_at"
)
_VALUES = ":type, :subject_id, :event_ts, :now, :body, :status, 0, :now, :now"
_IDENTITY = "type = :type AND subject_id = :subject_id AND event_ts = :event_ts"

# PostgreSQL: insert or find in one statement. When a concurrent insert of the same identity
# commits after this statement's snapshot, neither branch returns a row; the caller then
# looks again (rare, and a second round trip only then).
_INSERT_OR_FIND_PG = text(
    f"WITH ins AS (INSERT INTO events ({_COLUMNS}) VALUES ({_VALUES}) "
    "ON CONFLICT (type, subject_id, event_ts) DO NOTHING RETURNING id) "
    "SELECT id, true AS created FROM ins "
    f"UNION ALL SELECT id, false FROM events WHERE {_IDENTITY} LIMIT 1"
)
_INSERT_SQLITE = text(
    f"INSERT INTO events ({_COLUMNS}) VALUES ({_VALUES}) "
    "ON CONFLICT (type, subject_id, event_ts) DO NOTHING RETURNING id, 1"
)
_FIND = text(f"SELECT id, 0 FROM events WHERE {_IDENTITY}")

# A signed body that did not parse: its identity is its SHA-256 (`body_sha256`, unique where
# set; `subject_id` holds it too, so that the identity constraint never joins two bodies).
# ON CONFLICT without a target: the conflict is on that partial unique index.
_KEPT_COLUMNS = f"{_COLUMNS}, last_error, body_sha256"
_KEPT_VALUES = "'', :sha256, :now, :now, :body, :status, 0, :now, :now, :reason, :sha256"
# A new one is told to operators in the same statement (carbonhook/outbox.py); the valid
# delivery's statements above write nothing more.
_NOTE_INVALID_PG = invalid_note_sql(event_id="id", now=":now") + " FROM ins ON CONFLICT DO NOTHING"
_KEEP_PG = text(
    f"WITH ins AS (INSERT INTO events ({_KEPT_COLUMNS}) VALUES ({_KEPT_VALUES}) "
    f"ON CONFLICT DO NOTHING RETURNING id), note AS ({_NOTE_INVALID_PG}) "
    "SELECT id, true AS created FROM ins "
    "UNION ALL SELECT id, false FROM events WHERE body_sha256 = :sha256 LIMIT 1"
)
_KEEP_SQLITE = text(
    f"INSERT INTO events ({_KEPT_COLUMNS}) VALUES ({_KEPT_VALUES}) "
    "ON CONFLICT DO NOTHING RETURNING id, 1"
)
_FIND_KEPT = text("SELECT id, 0 FROM events WHERE body_sha256 = :sha256")
# SQLite has no writing CTE: the notification is the second statement of one transaction.
_NOTE_INVALID_SQLITE = text(
    invalid_note_sql(event_id=":event_id", now=":now") + " ON CONFLICT DO NOTHING"
)


@dataclass(frozen=True, slots=True)
class Recorded:
    id: int
    created: bool


def _recorded(row: Any) -> Recorded:
    if row is None:  # only if the row vanished between the two statements
        raise StoreUnavailable("event not found after a conflicting insert")
    return Recorded(id=int(row[0]), created=bool(row[1]))


class Intake(Protocol):
    """Stores deliveries; every failure to reach the database is `StoreUnavailable`."""

    async def record(self, delivery: Delivery) -> Recorded:
        """Insert the delivery if its identity is new; return its id and whether it was."""
        ...

    async def keep_invalid(self, body: bytes, reason: str) -> Recorded:
        """Keep a signed body that did not parse as an `invalid` event, unless the same body
        is kept already; return its id and whether it is new."""
        ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...


async def take(intake: Intake, body: bytes) -> Recorded:
    """Store a signed body: the delivery it parses as, or, if it does not parse, the body kept
    `invalid` (by its SHA-256) before `InvalidDelivery` is raised all the same."""
    try:
        return await intake.record(parse_delivery(body))
    except InvalidDelivery as exc:
        try:
            kept = await intake.keep_invalid(body, str(exc))
        except InvalidDelivery:
            log.error("a signed delivery that did not parse could not be kept: %s", exc)
            raise exc from None
        if kept.created:
            log.warning(
                "signed delivery kept as invalid event %s: %s",
                kept.id,
                exc,
                extra={"event_id": kept.id, "outcome": EventStatus.INVALID},
            )
        raise


def sha256_of(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def create_intake(url: str, *, pool_size: int = 10) -> Intake:
    """The intake for a database URL; opens nothing until the first delivery."""
    if is_sqlite(url):
        return SqlIntake(create_intake_engine(url, pool_size=pool_size))
    return PostgresIntake(url, pool_size=pool_size)


_PG_INSERT_OR_FIND = (
    f"WITH ins AS (INSERT INTO events ({_COLUMNS}) "
    "VALUES ($1, $2, $3, $4, $5, $6, 0, $4, $4) "
    "ON CONFLICT (type, subject_id, event_ts) DO NOTHING RETURNING id) "
    "SELECT id, true AS created FROM ins "
    "UNION ALL SELECT id, false FROM events "
    "WHERE type = $1 AND subject_id = $2 AND event_ts = $3 LIMIT 1"
)
_PG_FIND = "SELECT id, false FROM events WHERE type = $1 AND subject_id = $2 AND event_ts = $3"
_PG_KEEP = (
    f"WITH ins AS (INSERT INTO events ({_KEPT_COLUMNS}) "
    "VALUES ('', $1, $2, $2, $3, $4, 0, $2, $2, $5, $1) "
    "ON CONFLICT DO NOTHING RETURNING id), "
    f"note AS ({invalid_note_sql(event_id='id', now='$2')} FROM ins ON CONFLICT DO NOTHING) "
    "SELECT id, true AS created FROM ins "
    "UNION ALL SELECT id, false FROM events WHERE body_sha256 = $1 LIMIT 1"
)
_PG_FIND_KEPT = "SELECT id, false FROM events WHERE body_sha256 = $1"
# What asyncpg raises when the server is down, restarting, or the connection was cut.
_PG_UNAVAILABLE = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Nothing to undo on release: the intake sets no session state, takes no advisory lock
    and never listens. (asyncpg still rolls back an open transaction itself.) The default
    reset costs a round trip per delivery (`RESET ALL`, `UNLISTEN *`, ...)."""


class PostgresIntake:
    """asyncpg pool, autocommit: each delivery is one prepared statement, one round trip."""

    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        parsed = make_url(url).set(drivername="postgresql")
        self._dsn = parsed.render_as_string(hide_password=False)
        self._pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self._opening = asyncio.Lock()

    async def _get_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            async with self._opening:
                if self._pool is None:  # the database may be down now: try again next time
                    self._pool = await asyncpg.create_pool(
                        self._dsn,
                        min_size=1,
                        max_size=self._pool_size,
                        timeout=5,
                        command_timeout=10,
                        reset=_keep_session,
                    )
        return self._pool

    async def record(self, delivery: Delivery) -> Recorded:
        now = utcnow().replace(tzinfo=None)
        event_ts = delivery.timestamp.astimezone(UTC).replace(tzinfo=None)
        status = _FIRST_STATUS
        args = (delivery.type, delivery.subject_id, event_ts, now, delivery.body, status)
        return await self._store(_PG_INSERT_OR_FIND, args, _PG_FIND, args[:3])

    async def keep_invalid(self, body: bytes, reason: str) -> Recorded:
        now = utcnow().replace(tzinfo=None)
        sha256 = sha256_of(body)
        args = (sha256, now, body, EventStatus.INVALID.value, reason)
        return await self._store(_PG_KEEP, args, _PG_FIND_KEPT, (sha256,))

    async def _store(
        self, insert: str, args: tuple[Any, ...], find: str, find_args: tuple[Any, ...]
    ) -> Recorded:
        """One statement; a second only when a concurrent insert of the same row hid it."""
        try:
            pool = await self._get_pool()
            async with pool.acquire(timeout=5) as conn:
                row = await conn.fetchrow(insert, *args)
                if row is None:
                    row = await conn.fetchrow(find, *find_args)
        except asyncpg.DataError as exc:  # a value the database refuses: no retry will help
            raise InvalidDelivery("the delivery holds a value the event store cannot keep") from exc
        except _PG_UNAVAILABLE as exc:
            raise StoreUnavailable(describe_error(exc)) from exc
        return _recorded(row)

    async def ping(self) -> None:
        try:
            pool = await self._get_pool()
            async with pool.acquire(timeout=5) as conn:
                await conn.fetchval("SELECT 1")
        except _PG_UNAVAILABLE as exc:
            raise StoreUnavailable(describe_error(exc)) from exc

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None


class SqlIntake:
    """The same through a SQLAlchemy async engine (SQLite; PostgreSQL works too, slower)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._postgres = engine.dialect.name == "postgresql"
        self._insert = _INSERT_OR_FIND_PG if self._postgres else _INSERT_SQLITE
        self._keep = _KEEP_PG if self._postgres else _KEEP_SQLITE
        self._utc = UTCDateTime()

    async def record(self, delivery: Delivery) -> Recorded:
        params = {
            "type": delivery.type,
            "subject_id": delivery.subject_id,
            "event_ts": self._time(delivery.timestamp),
            "now": self._time(utcnow()),
            "body": delivery.body,
            "status": _FIRST_STATUS,
        }
        return await self._store(self._insert, _FIND, params)

    async def keep_invalid(self, body: bytes, reason: str) -> Recorded:
        params = {
            "sha256": sha256_of(body),
            "now": self._time(utcnow()),
            "body": body,
            "status": EventStatus.INVALID.value,
            "reason": reason,
        }
        if self._postgres:
            return await self._store(self._keep, _FIND_KEPT, params)
        return await self._keep_sqlite(params)

    async def _keep_sqlite(self, params: dict[str, Any]) -> Recorded:
        """The invalid event and its notification in one transaction (the engine autocommits:
        the transaction is opened by hand)."""
        try:
            async with self.engine.connect() as conn:
                await conn.execute(text("BEGIN IMMEDIATE"))
                try:
                    row = (await conn.execute(self._keep, params)).first()
                    if row is None:
                        row = (await conn.execute(_FIND_KEPT, params)).first()
                    else:
                        note = {"event_id": int(row[0]), "now": params["now"]}
                        await conn.execute(_NOTE_INVALID_SQLITE, note)
                    await conn.execute(text("COMMIT"))
                except BaseException:
                    await conn.execute(text("ROLLBACK"))
                    raise
        except DataError as exc:
            raise InvalidDelivery("the delivery holds a value the event store cannot keep") from exc
        except (OperationalError, DBAPIError, PoolTimeout, OSError) as exc:
            raise StoreUnavailable(describe_error(exc)) from exc
        return _recorded(row)

    async def _store(self, insert: Any, find: Any, params: dict[str, Any]) -> Recorded:
        try:
            async with self.engine.connect() as conn:
                row = (await conn.execute(insert, params)).first()
                if row is None:
                    row = (await conn.execute(find, params)).first()
        except DataError as exc:  # a value the database refuses: the sender must not retry it
            raise InvalidDelivery("the delivery holds a value the event store cannot keep") from exc
        except (OperationalError, DBAPIError, PoolTimeout, OSError) as exc:
            raise StoreUnavailable(describe_error(exc)) from exc
        return _recorded(row)

    def _time(self, moment: datetime) -> datetime | str:
        """Naive UTC; on SQLite the text redelivered events are matched on
        (`carbonhook.schema.sqlite_event_ts`)."""
        if not self._postgres:
            return sqlite_event_ts(moment)
        naive = self._utc.process_bind_param(moment, self.engine.dialect)
        assert naive is not None
        return naive

    async def ping(self) -> None:
        try:
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except (OperationalError, DBAPIError, PoolTimeout, OSError) as exc:
            raise StoreUnavailable(describe_error(exc)) from exc

    async def close(self) -> None:
        await self.engine.dispose()
