"""The event store's hot statements (claim, renew, end an attempt), built once for
carbonhook/store.py: building a statement costs more CPU than sending it."""

from __future__ import annotations

import functools
from typing import Any

from sqlalchemy import (
    Float,
    Insert,
    Integer,
    String,
    Text,
    Update,
    and_,
    bindparam,
    exists,
    func,
    insert,
    or_,
    select,
    update,
)

from carbonhook.clock import db_now, seconds_since
from carbonhook.database import DriverStatement
from carbonhook.schema import Capture, Event, EventAttempt, UTCDateTime
from carbonhook.statuses import OPEN_CAPTURES, EventStatus

# The worker's statements, built once. Building a statement costs more CPU than sending it:
# a claim built per call took 1.7 ms of CPU, the same statement built once 0.47 ms
# (bench/FINDINGS.md). A parameter named like a column of the table an UPDATE writes would be
# taken for a value to set: hence `new_…`. Every time that decides is the database's.
CLAIM = DriverStatement(
    lambda _: (
        update(Event)
        .where(
            Event.id == bindparam("event_id"),
            or_(
                and_(
                    or_(
                        Event.status == EventStatus.PENDING,
                        Event.status == EventStatus.QUEUED,
                        Event.status == EventStatus.WAITING,
                    ),
                    Event.available_at <= db_now(bindparam("slack_s", type_=Float())),
                ),
                and_(Event.status == EventStatus.PROCESSING, Event.lease_until < db_now()),
            ),
        )
        .values(
            status=EventStatus.PROCESSING,
            lease_until=db_now(bindparam("lease_s", type_=Float())),
            available_at=db_now(),
            attempts=Event.attempts + 1,
            attempt_token=bindparam("token"),
            updated_at=db_now(),
        )
        .returning(
            Event.id,
            Event.type,
            Event.subject_id,
            Event.body,
            Event.attempts,
            Event.received_at,
            Event.event_ts,
            Event.lease_until,
            # By the parameter, not `Event.id`: SQLite's RETURNING names the columns bare, and
            # a bare `id` inside the subquery is the capture's own.
            exists().where(Capture.event_id == bindparam("event_id")),
            Event.waiting_since,
        )
    )
)
DUE_IN = DriverStatement(
    lambda _: select(seconds_since(Event.available_at)).where(
        Event.id == bindparam("event_id"),
        or_(Event.status == EventStatus.QUEUED, Event.status == EventStatus.WAITING),
    )
)
RENEW = DriverStatement(
    lambda _: (
        update(Event)
        .where(
            Event.id == bindparam("event_id"),
            Event.status == EventStatus.PROCESSING,
            Event.attempt_token == bindparam("token"),
        )
        .values(lease_until=db_now(bindparam("lease_s", type_=Float())), updated_at=db_now())
    )
)
RECORD_ATTEMPT = insert(EventAttempt)
_OPEN_CAPTURE = exists().where(
    Capture.event_id == bindparam("event_id"),
    or_(*(Capture.status == status for status in OPEN_CAPTURES)),
)


# Columns `end_attempt_statement` sets from the database alone: they take no parameter.
SET_IN_SQL = frozenset({"waiting_since"})


@functools.cache
def end_attempt_statement(columns: tuple[str, ...], guarded: bool) -> Update:
    """Set `columns` (from `new_<column>`; `available_at` is a delay in seconds, `attempts` a
    change, `waiting_since` the database's now unless set already) if the caller still holds
    the attempt's token; with `guarded`, only while no capture of the event is open."""
    values: dict[str, Any] = {"updated_at": db_now()}
    for column in columns:
        if column == "available_at":
            values[column] = db_now(bindparam("new_available_at", type_=Float()))
        elif column == "attempts":  # a change, not a value: `new_attempts` is added
            values[column] = Event.attempts + bindparam("new_attempts", type_=Integer())
        elif column == "waiting_since":  # the first wait's time stands: `wait_for` counts from it
            values[column] = func.coalesce(Event.waiting_since, db_now())
        else:
            values[column] = bindparam(f"new_{column}")
    where = [
        Event.id == bindparam("event_id"),
        Event.status == EventStatus.PROCESSING,
        Event.attempt_token == bindparam("token"),
    ]
    if guarded:
        where.append(~_OPEN_CAPTURE)
    return update(Event).where(*where).values(values)


@functools.cache
def end_and_record_statement(columns: tuple[str, ...], guarded: bool) -> DriverStatement:
    """PostgreSQL: the same, and the attempt's row if it did, in one statement."""
    return DriverStatement(lambda _: _end_and_record(columns, guarded))


def _end_and_record(columns: tuple[str, ...], guarded: bool) -> Insert:
    ended = end_attempt_statement(columns, guarded).returning(Event.id).cte("ended")
    return insert(EventAttempt).from_select(
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
