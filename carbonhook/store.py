"""The event state machine in the database: claim, finish, retry, sweep, replay, list."""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Engine,
    Insert,
    Integer,
    String,
    Text,
    Update,
    and_,
    bindparam,
    func,
    insert,
    or_,
    select,
    update,
)

from carbonhook.database import DriverStatement
from carbonhook.errors import Conflict, NotFound
from carbonhook.schema import Capture, Event, EventAttempt, Replay, UTCDateTime, utcnow
from carbonhook.statuses import REPLAYABLE_EVENTS, EventStatus

# A delayed message may arrive a little before the time we computed (another host's clock).
CLOCK_SLACK_S = 0.5


@dataclass(frozen=True, slots=True)
class ClaimedEvent:
    """An event a worker holds under a lease."""

    id: int
    type: str
    subject_id: str
    data: dict[str, Any]
    attempts: int
    started_at: datetime
    received_at: datetime


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


class EventStore:
    """Synchronous access for workers, the sweeper, the CLI and the admin API."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # -- the queue hand-off ------------------------------------------------------------

    def mark_queued(self, ids: Sequence[int]) -> None:
        """Record that these pending events were handed to the broker."""
        self._move(ids, EventStatus.PENDING, EventStatus.QUEUED)

    def mark_pending(self, ids: Sequence[int]) -> None:
        """The intake stored these events as queued, but could not hand them to the broker:
        the sweeper takes pending events back after one sweep interval, not a lease."""
        self._move(ids, EventStatus.QUEUED, EventStatus.PENDING)

    def _move(self, ids: Sequence[int], from_status: str, to_status: str) -> None:
        if not ids:
            return
        with self.engine.begin() as conn:
            conn.execute(
                update(Event)
                .where(Event.id.in_(ids), Event.status == from_status)
                .values(status=to_status, updated_at=utcnow())
            )

    def due_for_enqueue(
        self, *, pending_after_s: float, queued_after_s: float, limit: int = 1000
    ) -> list[int]:
        """Ids the queue may have lost; each is stamped so the next sweep waits again.

        On PostgreSQL, `FOR UPDATE SKIP LOCKED` lets several sweepers split the rows.
        """
        now = utcnow()
        lost = or_(
            and_(
                Event.status == EventStatus.PENDING, Event.available_at <= now - _s(pending_after_s)
            ),
            and_(
                Event.status == EventStatus.QUEUED, Event.available_at <= now - _s(queued_after_s)
            ),
            and_(
                Event.status == EventStatus.PROCESSING,
                Event.lease_until < now,
                Event.available_at <= now - _s(pending_after_s),
            ),
        )
        candidates = select(Event.id).where(lost).order_by(Event.id).limit(limit)
        if self.engine.dialect.name == "postgresql":
            candidates = candidates.with_for_update(skip_locked=True)
        with self.engine.begin() as conn:
            ids = [row[0] for row in conn.execute(candidates)]
            if ids:
                conn.execute(update(Event).where(Event.id.in_(ids)).values(available_at=now))
        return ids

    # -- the worker's side -------------------------------------------------------------

    def claim(self, event_id: int, *, lease_s: float) -> ClaimedEvent | None:
        """Take the event under a lease, or return None if it is finished, held elsewhere,
        or waiting out a retry delay (see `seconds_until_due`)."""
        now = utcnow()
        params = {
            "event_id": event_id,
            "now": now,
            "due": now + _s(CLOCK_SLACK_S),
            "until": now + _s(lease_s),
        }
        row = _CLAIM.run(self.engine, params).first()
        if row is None:
            return None
        event_id, event_type, subject_id, body, attempts, received_at = row
        return ClaimedEvent(
            id=event_id,
            type=event_type,
            subject_id=subject_id,
            data=json.loads(body).get("data", {}),
            attempts=attempts,
            started_at=now,
            received_at=received_at,
        )

    def seconds_until_due(self, event_id: int) -> float | None:
        """For a queued event still waiting out its retry delay, how long is left."""
        row = _DUE_AT.run(self.engine, {"event_id": event_id}).first()
        if row is None:
            return None
        left = (row[0] - utcnow()).total_seconds()
        return left if left > CLOCK_SLACK_S else None

    def finish(
        self,
        event: ClaimedEvent,
        status: str,
        *,
        error: str | None = None,
        note: str | None = None,
        http_status: int | None = None,
        capture: tuple[int, Mapping[str, Any]] | None = None,
    ) -> None:
        """End an attempt with a final status (succeeded, failed, held). `capture`: a
        capture's id and the columns that record its answer, written with the event (on
        PostgreSQL in the same statement: the last capture of an event costs no round trip of
        its own). It is written even if the lease was lost: the answer is the ledger's."""
        extra = {"note": note, "lease_until": None}
        self._end_attempt(event, status, error, http_status, extra, capture=capture)

    def retry_later(
        self,
        event: ClaimedEvent,
        *,
        delay_s: float,
        error: str,
        http_status: int | None,
    ) -> None:
        """End an attempt that will be tried again after `delay_s`."""
        extra = {"lease_until": None, "available_at": utcnow() + _s(delay_s)}
        self._end_attempt(event, EventStatus.QUEUED, error, http_status, extra, outcome="retry")

    def release(self, event: ClaimedEvent) -> None:
        """Give an event back unfinished (the worker is stopping)."""
        extra = {"lease_until": None, "available_at": utcnow()}
        self._end_attempt(
            event, EventStatus.QUEUED, "worker stopped", None, extra, outcome="released"
        )

    def _end_attempt(
        self,
        event: ClaimedEvent,
        status: str,
        error: str | None,
        http_status: int | None,
        extra: dict[str, Any],
        outcome: str | None = None,
        capture: tuple[int, Mapping[str, Any]] | None = None,
    ) -> None:
        now = utcnow()
        values = {"status": status, "last_error": error, "updated_at": now, **extra}
        params = {f"new_{key}": value for key, value in values.items()}
        params |= {"event_id": event.id, "attempt": event.attempts}
        attempt = {
            "started_at": event.started_at,
            "finished_at": now,
            "outcome": outcome or status,
            "error": error,
            "http_status": http_status,
        }
        # Only the lease holder may end the attempt: a worker whose lease expired and was
        # taken over must not overwrite the newer attempt's state.
        recorded: tuple[str, ...] = ()
        if capture is not None:
            recorded = tuple(capture[1])
            params |= _capture_params(*capture)
        if self.engine.dialect.name == "postgresql":  # one statement, one round trip
            _end_and_record_statement(tuple(values), recorded).run(self.engine, params | attempt)
            return
        with self.engine.begin() as conn:
            if recorded:
                conn.execute(_record_capture_statement(recorded), params)
            if conn.execute(_end_attempt_statement(tuple(values)), params).rowcount:
                conn.execute(_RECORD_ATTEMPT, {"event_id": event.id, **attempt})

    def waiting_ids(
        self, statuses: Sequence[str] = (EventStatus.PENDING,), limit: int = 100_000
    ) -> list[int]:
        """Events waiting for a worker in one of `statuses` (start-up re-enqueue): `pending`
        ones were never handed to a queue; `queued` ones were, and an in-process queue lost
        them when its process ended."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(Event.id).where(Event.status.in_(statuses)).order_by(Event.id).limit(limit)
            )
            return [row[0] for row in rows]

    # -- admins ------------------------------------------------------------------------

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
        return detail

    def replay(
        self, event_id: int, *, via: str, reason: str | None, status: str = EventStatus.PENDING
    ) -> str:
        """Reset a replayable event to `status` (`queued`: the caller hands it to the queue;
        `pending`: a sweeper will) and record why; returns its previous status."""
        with self.engine.begin() as conn:
            row = conn.execute(select(Event.status).where(Event.id == event_id)).first()
            if row is None:
                raise NotFound(f"event {event_id} not found")
            if row.status not in REPLAYABLE_EVENTS:
                allowed = "/".join(REPLAYABLE_EVENTS)
                raise Conflict(f"event {event_id} is {row.status}; only {allowed} can be replayed")
            _reset_for_replay(conn, {event_id: row.status}, status, via=via, reason=reason)
        return str(row.status)

    def replay_many(
        self,
        event_ids: Sequence[int],
        *,
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
                _reset_for_replay(conn, previous, status, via=via, reason=reason)
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
    conn: Any, previous: dict[int, str], status: str, *, via: str, reason: str | None
) -> None:
    """Set these events (id → the status they had) back to `status` and record the replay,
    or raise `Conflict` (the caller's transaction rolls back) if one changed meanwhile."""
    assert status in (EventStatus.PENDING, EventStatus.QUEUED)
    now = utcnow()
    reset = conn.execute(
        update(Event)
        .where(Event.id.in_(previous), Event.status.in_(set(previous.values())))
        .values(status=status, available_at=now, updated_at=now, attempts=0, lease_until=None)
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
                "via": via,
                "reason": reason,
                "previous_status": status,
            }
            for event_id, status in previous.items()
        ],
    )


def _rows(conn: Any, stmt: Any) -> list[dict[str, Any]]:
    return [dict(row._mapping) for row in conn.execute(stmt)]


def _s(seconds: float) -> timedelta:
    return timedelta(seconds=seconds)


# The worker's statements, built once. Building a statement costs more CPU than sending it:
# a claim built per call took 1.7 ms of CPU, the same statement built once 0.47 ms
# (bench/FINDINGS.md). A parameter named like a column of the table an UPDATE writes would be
# taken for a value to set: hence `new_…`.
_CLAIM = DriverStatement(
    lambda _: (
        update(Event)
        .where(
            Event.id == bindparam("event_id"),
            or_(
                and_(
                    or_(Event.status == EventStatus.PENDING, Event.status == EventStatus.QUEUED),
                    Event.available_at <= bindparam("due"),
                ),
                and_(Event.status == EventStatus.PROCESSING, Event.lease_until < bindparam("now")),
            ),
        )
        .values(
            status=EventStatus.PROCESSING,
            lease_until=bindparam("until"),
            available_at=bindparam("now"),
            attempts=Event.attempts + 1,
            updated_at=bindparam("now"),
        )
        .returning(
            Event.id,
            Event.type,
            Event.subject_id,
            Event.body,
            Event.attempts,
            Event.received_at,
        )
    )
)
_DUE_AT = DriverStatement(
    lambda _: select(Event.available_at).where(
        Event.id == bindparam("event_id"), Event.status == EventStatus.QUEUED
    )
)
_RECORD_ATTEMPT = insert(EventAttempt)


@functools.cache
def _end_attempt_statement(columns: tuple[str, ...]) -> Update:
    """Set `columns` (from `new_<column>`) if the caller still holds the lease."""
    return (
        update(Event)
        .where(
            Event.id == bindparam("event_id"),
            Event.status == EventStatus.PROCESSING,
            Event.attempts == bindparam("attempt"),
        )
        .values({column: bindparam(f"new_{column}") for column in columns})
    )


def record_capture(engine: Engine, capture_id: int, columns: Mapping[str, Any]) -> None:
    """Set `columns` of one capture, committing by itself (`finish` can do it with the event)."""
    _record_capture_alone(tuple(columns)).run(engine, _capture_params(capture_id, columns))


def _capture_params(capture_id: int, columns: Mapping[str, Any]) -> dict[str, Any]:
    return {"capture_id": capture_id} | {f"capture_{key}": value for key, value in columns.items()}


@functools.cache
def _record_capture_alone(columns: tuple[str, ...]) -> DriverStatement:
    return DriverStatement(lambda _: _record_capture_statement(columns))


@functools.cache
def _record_capture_statement(columns: tuple[str, ...]) -> Update:
    """Set `columns` of one capture (from `capture_<column>`)."""
    return (
        update(Capture)
        .where(Capture.id == bindparam("capture_id"))
        .values({column: bindparam(f"capture_{column}") for column in columns})
    )


@functools.cache
def _end_and_record_statement(
    columns: tuple[str, ...], capture_columns: tuple[str, ...]
) -> DriverStatement:
    """PostgreSQL: the same, and the attempt's row if it did, and the capture's answer (if
    `capture_columns`), in one statement."""
    return DriverStatement(lambda _: _end_and_record(columns, capture_columns))


def _end_and_record(columns: tuple[str, ...], capture_columns: tuple[str, ...]) -> Insert:
    ended = _end_attempt_statement(columns).returning(Event.id).cte("ended")
    statement = insert(EventAttempt).from_select(
        ["event_id", "started_at", "finished_at", "outcome", "error", "http_status"],
        select(
            ended.c.id,
            bindparam("started_at", type_=UTCDateTime()),
            bindparam("finished_at", type_=UTCDateTime()),
            bindparam("outcome", type_=String()),
            bindparam("error", type_=Text()),
            bindparam("http_status", type_=Integer()),
        ),
    )
    if not capture_columns:
        return statement
    # A data-modifying CTE runs whether or not the rest of the statement uses it.
    recorded = _record_capture_statement(capture_columns).returning(Capture.id).cte("recorded")
    return statement.add_cte(recorded)
