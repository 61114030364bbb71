"""The notifications outbox in the database: written in the transaction of the change each
reports, claimed by one sweeper at a time, and marked as its destinations take it.

Every change is written whether or not a destination is configured: writing is one insert in
a transaction that is open anyway, and it keeps the stores free of settings. A sweeper with no
destination marks what is due `dropped`, so a destination configured later is sent nothing
stale. A row is claimed with a fresh token and a lease by one conditional UPDATE (on
PostgreSQL the candidate is picked `FOR UPDATE SKIP LOCKED`); every later write of it is fenced
by that token, so two sweepers never send one row at once. A sweeper that dies between a
destination's answer and the write of it sends that row again after the lease: the one case
where a destination may see a notification twice.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    String,
    and_,
    cast,
    exists,
    func,
    literal,
    or_,
    select,
    update,
)

from carbonhook.clock import db_now, seconds_since
from carbonhook.database import insert_ignore
from carbonhook.notices import Notice, unknown_key
from carbonhook.schema import Capture, Event, Notification, Spend, utcnow
from carbonhook.statuses import CaptureStatus, NotificationKind, NotificationStatus


def write(conn: Connection, notice: Notice) -> None:
    """Add `notice` to the outbox inside the caller's transaction, unless its key is there."""
    now = utcnow()
    insert_ignore(
        conn,
        Notification,
        {
            "kind": str(notice.kind),
            "dedupe_key": notice.key[:200],
            "fields": json.dumps(dict(notice.fields), sort_keys=True),
            "status": NotificationStatus.PENDING.value,
            "attempts": 0,
            "created_at": now,
            "next_attempt_at": now,
        },
    )


def invalid_note_sql(*, event_id: str, now: str) -> str:
    """SQL that adds the `invalid` notification of the event whose id is `event_id` (an SQL
    expression), for the intake's own statements; `now` is the SQL of the time."""
    return (
        "INSERT INTO notifications (kind, dedupe_key, fields, status, attempts, created_at, "
        f"next_attempt_at) SELECT '{NotificationKind.INVALID.value}', 'invalid:' || {event_id}, "
        f"'{{\"event_id\": ' || {event_id} || '}}', '{NotificationStatus.PENDING.value}', 0, "
        f"{now}, {now}"
    )


@dataclass(frozen=True, slots=True)
class ClaimedNotification:
    """A notification one sweeper holds under a lease while it sends it."""

    id: int
    kind: str
    fields: dict[str, Any]
    delivered: frozenset[str]  # the destinations (by their key) that took it already
    attempts: int  # counting this one
    age_s: float  # since it was written, by the database's clock
    token: str


class Outbox:
    """The sweeper's and `carbonhook notify`'s access to the outbox."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def claim(self, *, lease_s: float) -> ClaimedNotification | None:
        """The oldest due notification, taken under a new token until `lease_s` from now."""
        token = uuid.uuid4().hex
        free = or_(Notification.lease_until.is_(None), Notification.lease_until < db_now())
        due = and_(
            Notification.status == NotificationStatus.PENDING,
            Notification.next_attempt_at <= db_now(),
            free,
        )
        candidate = select(Notification.id).where(due).order_by(Notification.id).limit(1)
        if self.engine.dialect.name == "postgresql":
            candidate = candidate.with_for_update(skip_locked=True)
        taken = (
            update(Notification)
            .where(Notification.id == candidate.scalar_subquery(), due)
            .values(
                claim_token=token,
                lease_until=db_now(lease_s),
                attempts=Notification.attempts + 1,
            )
            .returning(
                Notification.id,
                Notification.kind,
                Notification.fields,
                Notification.delivered,
                Notification.attempts,
                seconds_since(Notification.created_at),
            )
        )
        with self.engine.begin() as conn:
            row = conn.execute(taken).first()
        if row is None:
            return None
        return ClaimedNotification(
            id=row[0],
            kind=row[1],
            fields=json.loads(row[2]),
            delivered=frozenset(json.loads(row[3] or "[]")),
            attempts=row[4],
            age_s=float(row[5] or 0.0),
            token=token,
        )

    def sent(self, claimed: ClaimedNotification, delivered: Sequence[str]) -> bool:
        """Every destination took it; False if the claim was lost meanwhile."""
        return self._end(
            claimed,
            status=NotificationStatus.SENT,
            delivered=json.dumps(sorted(delivered)),
            sent_at=db_now(),
            last_error=None,
        )

    def retry(
        self, claimed: ClaimedNotification, delivered: Sequence[str], *, delay_s: float, error: str
    ) -> bool:
        """Some destination did not take it: try the others again after `delay_s`."""
        return self._end(
            claimed,
            delivered=json.dumps(sorted(delivered)),
            next_attempt_at=db_now(delay_s),
            last_error=error[:500],
        )

    def give_up(self, claimed: ClaimedNotification, delivered: Sequence[str], error: str) -> bool:
        return self._end(
            claimed,
            status=NotificationStatus.GIVEN_UP,
            delivered=json.dumps(sorted(delivered)),
            last_error=error[:500],
        )

    def _end(self, claimed: ClaimedNotification, **values: Any) -> bool:
        with self.engine.begin() as conn:
            changed = conn.execute(
                update(Notification)
                .where(
                    Notification.id == claimed.id,
                    Notification.claim_token == claimed.token,
                    Notification.status == NotificationStatus.PENDING,
                )
                .values(claim_token=None, lease_until=None, **values)
            ).rowcount
        return bool(changed)

    def drop_due(self) -> int:
        """No destination is configured: what is due is dropped, not kept for a later one."""
        with self.engine.begin() as conn:
            return conn.execute(
                update(Notification)
                .where(
                    Notification.status == NotificationStatus.PENDING,
                    Notification.next_attempt_at <= db_now(),
                )
                .values(status=NotificationStatus.DROPPED, last_error="no destination configured")
            ).rowcount

    def note_overdue_unknown(self, *, settle_s: float) -> int:
        """One `unknown` notification per capture attempt still `unknown` past the settle
        window (a change the workers make by not hearing back: the sweeper looks for it)."""
        key = literal("unknown:") + cast(Capture.id, String) + literal(":") + Capture.attempt_token
        noted = exists().where(Notification.dedupe_key == key)
        query = select(
            Capture.id,
            Capture.attempt_token,
            Capture.event_id,
            Capture.rule,
            Capture.amount,
            Capture.action,
        ).where(
            Capture.status == CaptureStatus.UNKNOWN,
            Capture.attempt_token.is_not(None),
            Capture.attempted_at <= db_now(-settle_s),
            ~noted,
        )
        count = 0
        with self.engine.begin() as conn:
            for capture_id, token, event_id, rule, amount, action in conn.execute(query):
                fields = {
                    "capture_id": capture_id,
                    "event_id": event_id,
                    "rule": rule,
                    "amount": amount,
                    "action": action,
                }
                write(
                    conn,
                    Notice(NotificationKind.UNKNOWN, unknown_key(capture_id, str(token)), fields),
                )
                count += 1
        return count

    def has(self, key: str) -> bool:
        with self.engine.connect() as conn:
            found = conn.execute(
                select(Notification.id).where(Notification.dedupe_key == key)
            ).first()
        return found is not None

    def digest_figures(self, now: datetime) -> tuple[dict[str, int], dict[str, int]]:
        """Events received in the 24 hours before `now` by status, and the pounds of CO2
        reserved on its UTC day and in its month (the spend windows' own names)."""
        since = now - timedelta(days=1)
        day = now.astimezone(UTC).date().isoformat()
        with self.engine.connect() as conn:
            events = {
                status: int(count)
                for status, count in conn.execute(
                    select(Event.status, func.count())
                    .where(Event.received_at >= since)
                    .group_by(Event.status)
                )
            }
            windows = {f"day:{day}": "day_lbs", f"month:{day[:7]}": "month_lbs"}
            spend = {name: 0 for name in windows.values()}
            for window, lbs in conn.execute(
                select(Spend.window, Spend.lbs).where(Spend.window.in_(list(windows)))
            ):
                spend[windows[window]] = int(lbs)
        return events, spend

    def write_one(self, notice: Notice) -> None:
        """Write `notice` in a transaction of its own (a change that is the day passing)."""
        with self.engine.begin() as conn:
            write(conn, notice)

    def rows(self, *, kind: str | None = None) -> list[dict[str, Any]]:
        """Every notification, oldest first (`notify list`, tests)."""
        query = select(*Notification.__table__.c).order_by(Notification.id)
        if kind is not None:
            query = query.where(Notification.kind == kind)
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]
