"""The event state machine in the database: claim, finish, retry, sweep, replay, list."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    and_,
    or_,
    select,
    update,
)

from carbonhook import outbox
from carbonhook.clock import db_now
from carbonhook.event_queries import EventQueries
from carbonhook.event_statements import (
    CLAIM,
    DUE_IN,
    RECORD_ATTEMPT,
    RENEW,
    SET_IN_SQL,
    end_and_record_statement,
    end_attempt_statement,
)
from carbonhook.notices import Notice
from carbonhook.schema import Event, utcnow
from carbonhook.statuses import EventStatus

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
    token: str  # this attempt's: every write of its outcome is conditional on it
    lease_until: datetime  # by the database's clock
    event_ts: datetime  # the event's own timestamp, as the sender gave it
    claimed_at: datetime  # by the database's clock
    has_captures: bool = True  # whether an earlier attempt planned captures already
    waiting_since: datetime | None = None  # when it first waited for a rule, by the database

    def waited_s(self) -> float:
        """Seconds since the event first waited for a rule's `wait_until` (0 if it never did),
        by the database's clock at the claim plus the time since by this worker's."""
        if self.waiting_since is None:
            return 0.0
        since_claim = (utcnow() - self.started_at).total_seconds()
        return (self.claimed_at - self.waiting_since).total_seconds() + since_claim

    def age_s(self) -> float:
        """Seconds from the event's timestamp to now: the database's clock at the claim,
        plus the time since by this worker's (an elapsed time, which its clock can tell)."""
        since_claim = (utcnow() - self.started_at).total_seconds()
        return (self.claimed_at - self.event_ts).total_seconds() + since_claim


class EventStore(EventQueries):
    """Synchronous access for workers, the sweeper, the CLI and the admin API."""

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

        Ages are the database's: every sweeper agrees whatever its own clock says. On
        PostgreSQL, `FOR UPDATE SKIP LOCKED` lets several sweepers split the rows.
        """
        pending_before = db_now(-pending_after_s)
        lost = or_(
            and_(Event.status == EventStatus.PENDING, Event.available_at <= pending_before),
            and_(
                Event.status.in_((EventStatus.QUEUED, EventStatus.WAITING)),
                Event.available_at <= db_now(-queued_after_s),
            ),
            and_(
                Event.status == EventStatus.PROCESSING,
                Event.lease_until < db_now(),
                Event.available_at <= pending_before,
            ),
        )
        candidates = select(Event.id).where(lost).order_by(Event.id).limit(limit)
        if self.engine.dialect.name == "postgresql":
            candidates = candidates.with_for_update(skip_locked=True)
        with self.engine.begin() as conn:
            ids = [row[0] for row in conn.execute(candidates)]
            if ids:
                conn.execute(update(Event).where(Event.id.in_(ids)).values(available_at=db_now()))
        return ids

    # -- the worker's side -------------------------------------------------------------

    def claim(self, event_id: int, *, lease_s: float) -> ClaimedEvent | None:
        """Take the event under a lease and a new token, or return None if it is finished,
        held elsewhere, or waiting out a retry delay or a re-check's (see `seconds_until_due`)."""
        token = uuid.uuid4().hex
        params = {"event_id": event_id, "slack_s": CLOCK_SLACK_S, "lease_s": lease_s}
        row = CLAIM.run(self.engine, params | {"token": token}).first()
        if row is None:
            return None
        (
            event_id,
            event_type,
            subject_id,
            body,
            attempts,
            received_at,
            event_ts,
            lease_until,
            planned,
            waiting_since,
        ) = row
        return ClaimedEvent(
            id=event_id,
            type=event_type,
            subject_id=subject_id,
            data=json.loads(body).get("data", {}),
            attempts=attempts,
            started_at=utcnow(),
            received_at=received_at,
            token=token,
            lease_until=lease_until,
            has_captures=bool(planned),
            event_ts=event_ts,
            claimed_at=lease_until - timedelta(seconds=lease_s),
            waiting_since=waiting_since,
        )

    def seconds_until_due(self, event_id: int) -> float | None:
        """For a queued event still waiting out its retry delay, or a waiting one its next
        re-check, how long is left."""
        row = DUE_IN.run(self.engine, {"event_id": event_id}).first()
        if row is None or row[0] is None:
            return None
        left = -float(row[0])
        return left if left > CLOCK_SLACK_S else None

    def renew(self, event: ClaimedEvent, *, lease_s: float) -> bool:
        """Extend the lease `event` holds to `lease_s` from now; False if it was lost."""
        return bool(
            RENEW.run(
                self.engine, {"event_id": event.id, "token": event.token, "lease_s": lease_s}
            ).rowcount
        )

    def finish(
        self,
        event: ClaimedEvent,
        status: str,
        *,
        error: str | None = None,
        note: str | None = None,
        http_status: int | None = None,
        notice: Notice | None = None,
    ) -> bool:
        """End an attempt with a final status (succeeded, failed, held); False if the lease was
        lost, or, for `succeeded`, while a capture of the event is still `pending` or
        `unknown` (the database refuses: an event never succeeds over an open capture).
        `notice` goes to the outbox in the same transaction, only if the attempt ended."""
        extra = {"note": note, "lease_until": None}
        return self._end_attempt(event, status, error, http_status, extra, notice=notice)

    def retry_later(
        self,
        event: ClaimedEvent,
        *,
        delay_s: float,
        error: str,
        http_status: int | None,
        counted: bool = True,
    ) -> bool:
        """End an attempt that will be tried again after `delay_s` (by the database's clock);
        not `counted`, it gives back the attempt its claim counted (it only waited)."""
        extra: dict[str, Any] = {"lease_until": None, "available_at": delay_s}
        if not counted:
            extra["attempts"] = -1
        return self._end_attempt(
            event, EventStatus.QUEUED, error, http_status, extra, outcome="retry"
        )

    def wait(self, event: ClaimedEvent, *, delay_s: float, note: str) -> bool:
        """End an attempt that found a rule's `wait_until` not holding yet: the event waits
        `delay_s` (by the database's clock) for its next re-check, holding no lease and giving
        back the attempt its claim counted (waiting is not failing)."""
        extra: dict[str, Any] = {
            "lease_until": None,
            "available_at": delay_s,
            "attempts": -1,
            "note": note,
            "waiting_since": None,  # kept if set: see `end_attempt_statement`
        }
        return self._end_attempt(event, EventStatus.WAITING, None, None, extra)

    def release(self, event: ClaimedEvent) -> bool:
        """Give an event back unfinished (the worker is stopping)."""
        extra = {"lease_until": None, "available_at": 0.0}
        return self._end_attempt(
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
        notice: Notice | None = None,
    ) -> bool:
        values = {"status": status, "last_error": error, **extra}
        params = {f"new_{key}": value for key, value in values.items() if key not in SET_IN_SQL}
        params |= {"event_id": event.id, "token": event.token}
        attempt = {
            "started_at": event.started_at,
            "finished_at": utcnow(),
            "outcome": outcome or status,
            "error": error,
            "http_status": http_status,
        }
        # Only the holder of the attempt's token may end it: a worker whose lease expired and
        # was taken over must not overwrite the newer attempt's state.
        guarded = status == EventStatus.SUCCEEDED
        if notice is None and self.engine.dialect.name == "postgresql":
            # one statement, one round trip
            ended = end_and_record_statement(tuple(values), guarded)
            return bool(ended.run(self.engine, params | attempt).rowcount)
        with self.engine.begin() as conn:
            if conn.execute(end_attempt_statement(tuple(values), guarded), params).rowcount:
                conn.execute(RECORD_ATTEMPT, {"event_id": event.id, **attempt})
                if notice is not None:
                    outbox.write(conn, notice)
                return True
        return False

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
