"""The hot path's one write: store a delivery exactly once, in one round trip."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.exc import DataError, DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncEngine

from receiver.errors import InvalidDelivery, StoreUnavailable
from receiver.events import Delivery
from receiver.schema import UTCDateTime, utcnow

PENDING = "pending"
IGNORED = "ignored"

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


@dataclass(frozen=True, slots=True)
class Recorded:
    id: int
    created: bool


class Intake:
    """Stores deliveries; every failure to reach the database is `StoreUnavailable`."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._insert = _INSERT_OR_FIND_PG if engine.dialect.name == "postgresql" else _INSERT_SQLITE
        self._utc = UTCDateTime()

    async def record(self, delivery: Delivery) -> Recorded:
        """Insert the delivery if its identity is new; return its id and whether it was."""
        now = utcnow()
        bind = self._utc.process_bind_param
        params = {
            "type": delivery.type,
            "subject_id": delivery.subject_id,
            "event_ts": bind(delivery.timestamp, self.engine.dialect),
            "now": bind(now, self.engine.dialect),
            "body": delivery.body,
            "status": PENDING if delivery.is_processed else IGNORED,
        }
        try:
            async with self.engine.connect() as conn:
                row = (await conn.execute(self._insert, params)).first()
                if row is None:
                    row = (await conn.execute(_FIND, params)).first()
        except DataError as exc:  # a value the database refuses: the sender must not retry it
            raise InvalidDelivery("the delivery holds a value the event store cannot keep") from exc
        except (OperationalError, DBAPIError, PoolTimeout, OSError) as exc:
            raise StoreUnavailable(type(exc).__name__) from exc
        if row is None:  # only if the row vanished between the two statements
            raise StoreUnavailable("event not found after a conflicting insert")
        return Recorded(id=int(row[0]), created=bool(row[1]))

    async def ping(self) -> None:
        try:
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except (OperationalError, DBAPIError, PoolTimeout, OSError) as exc:
            raise StoreUnavailable(type(exc).__name__) from exc
