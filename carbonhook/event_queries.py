"""What admins read and change on events: listings, one event in full, replays (and the
revival of an `invalid` event whose body parses now)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import Engine, String, func, insert, select, type_coerce, update
from sqlalchemy.exc import IntegrityError

from carbonhook.capture_rows import decisions_of
from carbonhook.clock import db_now
from carbonhook.errors import Conflict, NotFound
from carbonhook.schema import (
    Capture,
    Event,
    EventAttempt,
    Replay,
    Reversal,
    sqlite_event_ts,
    utcnow,
)
from carbonhook.statuses import REPLAYABLE_EVENTS, EventStatus


class Identity(Protocol):
    """What a delivery's body parses as, as far as the event store needs it (the receiver's
    `Delivery` is one)."""

    @property
    def type(self) -> str: ...
    @property
    def subject_id(self) -> str: ...
    @property
    def timestamp(self) -> datetime: ...


@dataclass(frozen=True, slots=True)
class EventFilter:
    """What an admin asks for: the same filter for listing and bulk replay."""

    status: str | None = None
    type: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def clauses(self) -> list[Any]:
        found: list[Any] = []
        if self.status:
            found.append(Event.status == self.status)
        if self.type:
            found.append(Event.type == self.type)
        if self.since:
            found.append(Event.received_at >= self.since)
        if self.until:
            found.append(Event.received_at < self.until)
        return found


class EventQueries:
    """The admins' side of the event store (the CLI, the admin API, the dashboard)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def list_events(
        self, filt: EventFilter, *, limit: int = 50, before_id: int | None = None
    ) -> list[dict[str, Any]]:
        """Newest first; `before_id` is the cursor of the next page."""
        stmt = select(*_SUMMARY).where(*filt.clauses())
        if before_id is not None:
            stmt = stmt.where(Event.id < before_id)
        stmt = stmt.order_by(Event.id.desc()).limit(limit)
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(stmt)]

    def count_by_status(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(Event.status, func.count()).group_by(Event.status))
            return {status: count for status, count in rows}

    def get_event(self, event_id: int) -> dict[str, Any]:
        """One event with its payload, attempts, replays and captures."""
        with self.engine.connect() as conn:
            row = conn.execute(select(Event).where(Event.id == event_id)).first()
            if row is None:
                raise NotFound(f"event {event_id} not found")
            detail = {c: getattr(row, c) for c in _SUMMARY_NAMES}
            detail["body"] = row.body.decode("utf-8", "replace")
            for key, table in (("attempt_history", EventAttempt), ("replays", Replay)):
                stmt = select(table).where(table.event_id == event_id).order_by(table.id)
                detail[key] = _rows(conn, stmt)
            by_subject = select(Capture).where(Capture.subject_id == row.subject_id)
            detail["captures"] = _rows(conn, by_subject.order_by(Capture.id))
            ids = [capture["id"] for capture in detail["captures"]]
            reversed_by: dict[int, list[dict[str, Any]]] = {}
            if ids:
                for reversal in _rows(conn, select(Reversal).where(Reversal.capture_id.in_(ids))):
                    reversed_by.setdefault(reversal["capture_id"], []).append(reversal)
            decided = decisions_of(conn, ids)
            for capture in detail["captures"]:
                capture["reversals"] = reversed_by.get(capture["id"], [])
                capture["decisions"] = decided.get(capture["id"], [])
        return detail

    def replay(
        self,
        event_id: int,
        *,
        admin: str,
        via: str,
        reason: str | None,
        status: str = EventStatus.PENDING,
    ) -> str:
        """Reset a replayable event to `status` (`queued`: the caller hands it to the queue;
        `pending`: a sweeper will) and record who, how and why; returns its previous status."""
        with self.engine.begin() as conn:
            row = conn.execute(select(Event.status).where(Event.id == event_id)).first()
            if row is None:
                raise NotFound(f"event {event_id} not found")
            if row.status not in REPLAYABLE_EVENTS:
                allowed = "/".join(REPLAYABLE_EVENTS)
                raise Conflict(f"event {event_id} is {row.status}; only {allowed} can be replayed")
            _reset_for_replay(
                conn, {event_id: row.status}, status, admin=admin, via=via, reason=reason
            )
        return str(row.status)

    def unparsed_body(self, event_id: int) -> bytes | None:
        """The body of an `invalid` event (signed, but it did not parse when it came); None
        for any other event."""
        with self.engine.connect() as conn:
            row = conn.execute(select(Event.status, Event.body).where(Event.id == event_id)).first()
        if row is None:
            raise NotFound(f"event {event_id} not found")
        return bytes(row.body) if row.status == EventStatus.INVALID else None

    def revive(
        self,
        event_id: int,
        identity: Identity,
        *,
        admin: str,
        via: str,
        reason: str | None,
        status: str = EventStatus.PENDING,
    ) -> None:
        """Make an `invalid` event the delivery its body now parses as, `status` (`queued` or
        `pending`, as in `replay`) like a new one, and record the replay; or raise `Conflict`
        when an event of that identity is stored already (the identity's unique constraint
        decides, so a duplicate never slips through), saying so on the invalid one."""
        assert status in (EventStatus.PENDING, EventStatus.QUEUED)
        # On SQLite the identity's time is matched as text: write it as the intake does.
        event_ts: Any = identity.timestamp
        if self.engine.dialect.name == "sqlite":
            event_ts = type_coerce(sqlite_event_ts(identity.timestamp), String())
        invalid = (Event.id == event_id, Event.status == EventStatus.INVALID)
        try:
            with self.engine.begin() as conn:
                revived = conn.execute(
                    update(Event)
                    .where(*invalid)
                    .values(
                        type=identity.type,
                        subject_id=identity.subject_id,
                        event_ts=event_ts,
                        status=status,
                        last_error=None,
                        attempts=0,
                        lease_until=None,
                        available_at=db_now(),
                        updated_at=db_now(),
                    )
                )
                if revived.rowcount != 1:
                    raise Conflict(f"event {event_id} changed while being replayed; try again")
                conn.execute(
                    insert(Replay),
                    {
                        "event_id": event_id,
                        "at": utcnow(),
                        "admin": admin,
                        "via": via,
                        "reason": reason,
                        "previous_status": EventStatus.INVALID,
                    },
                )
        except IntegrityError:
            same = (
                Event.type == identity.type,
                Event.subject_id == identity.subject_id,
                Event.event_ts == event_ts,
            )
            with self.engine.begin() as conn:
                other = conn.execute(select(Event.id).where(*same)).scalar()
                said = f"parses now, as a duplicate of event {other}: not replayed"
                conn.execute(
                    update(Event).where(*invalid).values(last_error=said, updated_at=db_now())
                )
            raise Conflict(f"event {event_id} {said}") from None

    def replay_many(
        self,
        event_ids: Sequence[int],
        *,
        admin: str,
        via: str,
        reason: str | None,
        status: str = EventStatus.PENDING,
    ) -> list[int]:
        """`replay` for many events in one transaction; returns the ids that were replayable
        (the others changed state since they were listed, or never could be replayed)."""
        if not event_ids:
            return []
        replayable = (
            select(Event.id, Event.status)
            .where(Event.id.in_(event_ids), Event.status.in_(REPLAYABLE_EVENTS))
            .order_by(Event.id)  # two bulk replays at once lock shared rows in the same order
        )
        if self.engine.dialect.name == "postgresql":
            replayable = replayable.with_for_update()
        with self.engine.begin() as conn:
            previous = {row.id: row.status for row in conn.execute(replayable)}
            if previous:
                _reset_for_replay(conn, previous, status, admin=admin, via=via, reason=reason)
        return [event_id for event_id in event_ids if event_id in previous]

    def matching_ids(self, filt: EventFilter, *, limit: int | None = None) -> list[int]:
        stmt = select(Event.id).where(*filt.clauses()).order_by(Event.id)
        if limit is not None:
            stmt = stmt.limit(limit)
        with self.engine.connect() as conn:
            return [row[0] for row in conn.execute(stmt)]


_SUMMARY = (
    Event.id,
    Event.type,
    Event.subject_id,
    Event.event_ts,
    Event.received_at,
    Event.status,
    Event.attempts,
    Event.last_error,
    Event.note,
    Event.updated_at,
)
_SUMMARY_NAMES = [c.key for c in _SUMMARY]


def _reset_for_replay(
    conn: Any,
    previous: dict[int, str],
    status: str,
    *,
    admin: str,
    via: str,
    reason: str | None,
) -> None:
    """Set these events (id → the status they had) back to `status` and record the replay,
    or raise `Conflict` (the caller's transaction rolls back) if one changed meanwhile."""
    assert status in (EventStatus.PENDING, EventStatus.QUEUED)
    now = utcnow()
    reset = conn.execute(
        update(Event)
        .where(Event.id.in_(previous), Event.status.in_(set(previous.values())))
        .values(
            status=status, available_at=db_now(), updated_at=db_now(), attempts=0, lease_until=None
        )
    )
    if reset.rowcount != len(previous):
        which = ("event " if len(previous) == 1 else "one of events ") + ", ".join(
            map(str, previous)
        )
        raise Conflict(f"{which} changed while being replayed; try again")
    conn.execute(
        insert(Replay),
        [
            {
                "event_id": event_id,
                "at": now,
                "admin": admin,
                "via": via,
                "reason": reason,
                "previous_status": status,
            }
            for event_id, status in previous.items()
        ],
    )


def _rows(conn: Any, stmt: Any) -> list[dict[str, Any]]:
    return [dict(row._mapping) for row in conn.execute(stmt)]
