"""Catch-up events: a site's emissions, as `carbonhook catch-up` read them, stored once as an
`emissions.catch_up` event that the workers process like a delivery.

A reading's identity is its site, reporting period and figure (`Reading.subject_id`): however
often catch-up runs, the same figure is stored once, so a run with no new growth stores
nothing. What the offset is decided by the ledger's delta marks (`Ledger.ensure_delta`), shared
with the bill events of the same site and period.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, and_, false, func, insert, select, text, update

from carbonhook.event_types import EMISSIONS_CATCH_UP
from carbonhook.schema import DeltaMark, Event, utcnow
from carbonhook.statuses import EventStatus

# The widest reporting period the ledger keeps (`captures.period`, `delta_marks.period`).
MAX_PERIOD_CHARS = 32
# Two catch-ups storing at once take turns (`_take_turn`), so neither misses the other's
# reading: the identity has no timestamp to put under the events' unique constraint.
_LOCK_KEY = zlib.crc32(EMISSIONS_CATCH_UP.encode())


@dataclass(frozen=True)
class Reading:
    """One site's emissions in its current reporting period, as `GET /emissions` answered."""

    site_id: str
    period: str
    tco2e: float  # the total, the figure the identity names
    emissions: dict[str, Any]  # the whole answer: the rules read it as `emissions.…`
    read_at: datetime

    @property
    def subject_id(self) -> str:
        return f"catch_up:{self.site_id}:{self.period}:{self.tco2e!r}"

    def data(self) -> dict[str, Any]:
        """The event's `data`: what a rule's `when` and placeholders see as `event.…`."""
        return {
            "id": self.subject_id,
            "siteId": self.site_id,
            "reportingPeriod": self.period,
            "totalTco2e": self.tco2e,
            "emissions": self.emissions,
        }

    def body(self) -> bytes:
        """The stored body, shaped like a delivery so it shows and replays like one."""
        stamp = self.read_at.isoformat().replace("+00:00", "Z")
        event = {"event": EMISSIONS_CATCH_UP, "timestamp": stamp, "data": self.data()}
        return json.dumps(event, separators=(",", ":")).encode()


def reading_of(data: dict[str, Any]) -> dict[str, Any] | None:
    """The emissions a stored catch-up event read (its `data.emissions`), if it holds them."""
    emissions = data.get("emissions")
    return emissions if isinstance(emissions, dict) else None


@dataclass(frozen=True)
class Stored:
    """A reading's event: its id, and whether this run stored it (False: stored before)."""

    reading: Reading
    event_id: int
    created: bool


class CatchUpEvents:
    """Stores readings as events, once each, and reads the delta marks they will be offset
    against."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def store(self, readings: Sequence[Reading]) -> list[Stored]:
        """Store every new reading `pending` (to be handed to the queue), all or none, in one
        transaction; a reading stored before is returned with its event."""
        stored: list[Stored] = []
        with self.engine.begin() as conn:
            _take_turn(conn)
            for reading in readings:
                found = _find(conn, reading.subject_id)
                if found is not None:
                    stored.append(Stored(reading, found, created=False))
                    continue
                now = utcnow()
                new_id = conn.execute(
                    insert(Event)
                    .values(
                        type=EMISSIONS_CATCH_UP,
                        subject_id=reading.subject_id,
                        event_ts=reading.read_at,
                        received_at=now,
                        body=reading.body(),
                        status=EventStatus.PENDING,
                        attempts=0,
                        available_at=now,
                        updated_at=now,
                    )
                    .returning(Event.id)
                ).scalar_one()
                stored.append(Stored(reading, int(new_id), created=True))
        return stored

    def offset_before(self, rule: str, site_id: str, period: str) -> float:
        """The tonnes `rule` has offset for the site in the period so far (0 if none)."""
        with self.engine.connect() as conn:
            found = conn.execute(
                select(func.coalesce(func.max(DeltaMark.offset_tco2e), 0.0)).where(
                    and_(
                        DeltaMark.rule == rule,
                        DeltaMark.site_id == site_id,
                        DeltaMark.period == period,
                    )
                )
            ).scalar_one()
        return float(found)


def _take_turn(conn: Connection) -> None:
    """Wait for any other catch-up's transaction that is storing readings, until this one ends."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
    else:  # SQLite: a write, even of no row, takes the database's write lock
        conn.execute(update(Event).where(false()).values(status=Event.status))


def _find(conn: Connection, subject_id: str) -> int | None:
    found = conn.execute(
        select(Event.id)
        .where(Event.type == EMISSIONS_CATCH_UP, Event.subject_id == subject_id)
        .order_by(Event.id)
        .limit(1)
    ).scalar()
    return None if found is None else int(found)
