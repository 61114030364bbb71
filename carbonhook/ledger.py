"""The capture ledger: a row before every call, spend reserved atomically, never two calls."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import (
    BigInteger,
    Connection,
    Engine,
    Update,
    and_,
    bindparam,
    select,
    text,
    update,
)

from carbonhook import spend
from carbonhook.actions import LIMITED_ACTION
from carbonhook.captures import Impact, PlannedCapture
from carbonhook.database import DriverStatement, insert_ignore, insert_ignore_statement
from carbonhook.errors import Conflict, NotFound
from carbonhook.schema import Capture, DeltaMark, UTCDateTime, utcnow
from carbonhook.spend import SpendLimits
from carbonhook.statuses import CaptureStatus
from carbonhook.store import record_capture


@dataclass(frozen=True, slots=True)
class CaptureRow:
    """One ledger row as a worker reads it: unique per (rule, subject_id, part).

    Its `status` moves through the capture state machine (carbonhook/statuses.py): `pending`
    is written before the call, so every call has an owner; `captured`, `failed` or `unknown`
    record the answer (or its absence); `held` waits for an admin over a spend limit;
    `skipped` and `dry_run` are never sent. `spend_day` is the UTC day whose windows hold its
    reserved pounds (None: nothing reserved).
    """

    id: int
    event_id: int
    rule: str
    subject_id: str
    part: int
    action: str
    amount: int
    customer_email: str | None
    customer_name: str | None
    notify: bool
    approved: bool
    status: str
    attempts: int
    attempted_at: datetime | None
    spend_day: str | None
    user_id: str | None
    time_utc: str | None


_ROW_COLUMNS = [getattr(Capture, name) for name in CaptureRow.__slots__]  # type: ignore[attr-defined]


class _OverLimit(Exception):
    """Raised inside a reservation's transaction to roll it back."""


class DeltaPlan(Protocol):
    """An `offset_delta` rule's plan: its amount depends on what it offset before."""

    @property
    def rule_name(self) -> str: ...
    @property
    def site_id(self) -> str: ...
    @property
    def period(self) -> str: ...
    @property
    def current_tco2e(self) -> float: ...
    def captures_after(self, offset_before: float) -> tuple[list[PlannedCapture], float]:
        """The captures to make given the tonnes offset before, and the new mark."""
        ...


class Ledger:
    """The capture ledger over the event store's database.

    Every call to 1ClickImpact has a row written before it (`ensure`), an attempt begun under a
    conditional update that also reserves spend (`begin_attempt`: "go", "held" or "busy"), and
    its answer recorded (`captured`, `failed`, `unknown`). Admins decide held and unknown rows
    (`approve`, `reject`, `resolve`). The state machine is in carbonhook/statuses.py.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # -- planning -----------------------------------------------------------------------

    def ensure(
        self, event_id: int, subject_id: str, planned: PlannedCapture, rules_hash: str
    ) -> CaptureRow:
        """The ledger row for `planned`, written now if it is new; an existing row wins."""
        values = _planned_values(event_id, subject_id, planned, rules_hash)
        new = _INSERT_PLANNED.run(self.engine, values).first()  # insert-if-absent, then read
        if new is not None:
            return CaptureRow(*new)
        with self.engine.connect() as conn:
            return self._get(conn, planned.rule, subject_id, planned.part)

    def ensure_delta(
        self, event_id: int, subject_id: str, plan: DeltaPlan, rules_hash: str
    ) -> list[CaptureRow]:
        """Rows for an `offset_delta` rule, serialised per rule + site + period."""
        now = utcnow()
        key = and_(
            DeltaMark.rule == plan.rule_name,
            DeltaMark.site_id == plan.site_id,
            DeltaMark.period == plan.period,
        )
        with self.engine.begin() as conn:
            insert_ignore(
                conn,
                DeltaMark,
                {
                    "rule": plan.rule_name,
                    "site_id": plan.site_id,
                    "period": plan.period,
                    "offset_tco2e": 0.0,
                    "updated_at": now,
                },
            )
            # This UPDATE takes the row lock (PostgreSQL) or the write lock (SQLite): a second
            # bill of the same site waits here and then sees the new mark.
            conn.execute(update(DeltaMark).where(key).values(updated_at=now))
            existing = self._rows(
                conn,
                and_(Capture.rule == plan.rule_name, Capture.subject_id == subject_id),
            )
            if existing:
                return existing
            before = conn.execute(select(DeltaMark.offset_tco2e).where(key)).scalar_one()
            planned, mark = plan.captures_after(before)
            extra = {
                "site_id": plan.site_id,
                "period": plan.period,
                "basis_tco2e": plan.current_tco2e,
            }
            for capture in planned:
                values = _planned_values(event_id, subject_id, capture, rules_hash)
                insert_ignore(conn, Capture, values | extra)
            conn.execute(update(DeltaMark).where(key).values(offset_tco2e=mark))
            return self._rows(
                conn,
                and_(Capture.rule == plan.rule_name, Capture.subject_id == subject_id),
            )

    # -- one attempt ----------------------------------------------------------------------

    def begin_attempt(self, row: CaptureRow, limits: SpendLimits) -> str:
        """Claim the right to call for `row`: "go", "held" (over a limit) or "busy"."""
        now = utcnow()
        reserve = row.spend_day is None and row.action == LIMITED_ACTION
        day = now.date().isoformat()
        windows = spend.spend_windows(day, None if row.approved else limits)
        first = row.attempted_at is None
        params = {
            "capture_id": row.id,
            "seen_status": row.status,
            "seen_attempted_at": row.attempted_at,
            "now": now,
            "day": day,
        }
        if not reserve:  # one statement: no transaction needed
            started = _begin_attempt_alone(first).run(self.engine, params).rowcount
            return "go" if started else "busy"
        if self.engine.dialect.name == "postgresql":
            # The usual case in one round trip: while a transaction (BEGIN, three UPDATEs,
            # COMMIT) held the spend rows, every other capture of the day queued behind it.
            answer = _BEGIN_AND_RESERVE.run(
                self.engine, params | spend.limit_params(row.amount, windows)
            )
            seen, started = answer.rows[0]
            if started:
                return "go"
            if not seen:
                return "busy"
            # A spend row to create (the first capture of a day or month) or a limit reached:
            # the transaction below decides.
        try:
            with self.engine.begin() as conn:
                stmt = _begin_attempt_statement(first=first, reserve=True)
                if conn.execute(stmt, params).rowcount == 0:
                    return "busy"
                if not spend.reserve(conn, row.amount, windows):
                    raise _OverLimit
        except _OverLimit:
            with self.engine.begin() as conn:
                held = conn.execute(_hold_statement(first), params)
                return "held" if held.rowcount else "busy"
        return "go"

    def captured(self, capture_id: int, impact: Impact, *, note: str | None = None) -> None:
        record_capture(self.engine, capture_id, captured_columns(impact, note=note))

    def failed(self, capture_id: int, error: str, http_status: int | None) -> None:
        """A definite refusal: nothing happened, so the reserved spend is released."""
        with self.engine.begin() as conn:
            spend.release(conn, capture_id)
            conn.execute(
                update(Capture)
                .where(Capture.id == capture_id)
                .values(
                    status=CaptureStatus.FAILED,
                    error=error,
                    http_status=http_status,
                    updated_at=utcnow(),
                )
            )

    def unknown(self, capture_id: int, error: str, http_status: int | None) -> None:
        """The call may have happened: keep the spend, reconcile before any retry."""
        with self.engine.begin() as conn:
            conn.execute(
                update(Capture)
                .where(Capture.id == capture_id)
                .values(
                    status=CaptureStatus.UNKNOWN,
                    error=error,
                    http_status=http_status,
                    updated_at=utcnow(),
                )
            )

    def is_attributed(self, user_id: str, time_utc: str) -> bool:
        with self.engine.connect() as conn:
            found = conn.execute(
                select(Capture.id)
                .where(Capture.user_id == user_id, Capture.time_utc == time_utc)
                .limit(1)
            ).first()
        return found is not None

    # -- admins ---------------------------------------------------------------------------

    def approve(self, capture_id: int) -> CaptureRow:
        """A held capture may be sent once, past the limits."""
        return self._decide(
            capture_id,
            CaptureStatus.HELD,
            {
                "status": CaptureStatus.PENDING,
                "approved": True,
                "attempted_at": None,
                "note": "approved past the limits",
            },
        )

    def reject(self, capture_id: int) -> CaptureRow:
        return self._decide(
            capture_id,
            CaptureStatus.HELD,
            {"status": CaptureStatus.REJECTED, "note": "rejected by an admin"},
        )

    def resolve(self, capture_id: int, *, captured: bool) -> CaptureRow:
        """An admin's answer for an `unknown` capture after checking 1ClickImpact."""
        if captured:
            return self._decide(
                capture_id,
                (CaptureStatus.UNKNOWN, CaptureStatus.PENDING),
                {"status": CaptureStatus.CAPTURED, "note": "resolved by an admin: captured"},
            )
        with self.engine.begin() as conn:
            spend.release(conn, capture_id)
        return self._decide(
            capture_id,
            (CaptureStatus.UNKNOWN, CaptureStatus.PENDING),
            {
                "status": CaptureStatus.FAILED,
                "attempted_at": None,
                "note": "resolved by an admin: not captured",
            },
        )

    def _decide(
        self,
        capture_id: int,
        from_status: str | tuple[str, ...],
        values: dict[str, Any],
    ) -> CaptureRow:
        allowed = (from_status,) if isinstance(from_status, str) else from_status
        with self.engine.begin() as conn:
            changed = conn.execute(
                update(Capture)
                .where(Capture.id == capture_id, Capture.status.in_(allowed))
                .values(updated_at=utcnow(), **values)
            ).rowcount
            rows = self._rows(conn, Capture.id == capture_id)
        if not rows:
            raise NotFound(f"capture {capture_id} not found")
        if not changed:
            raise Conflict(f"capture {capture_id} is {rows[0].status}, not {' or '.join(allowed)}")
        return rows[0]

    def get(self, capture_id: int) -> CaptureRow:
        with self.engine.connect() as conn:
            rows = self._rows(conn, Capture.id == capture_id)
        if not rows:
            raise NotFound(f"capture {capture_id} not found")
        return rows[0]

    def list_captures(
        self,
        *,
        status: str | None = None,
        limit: int = 50,
        before_id: int | None = None,
    ) -> list[dict[str, Any]]:
        stmt = select(Capture)
        if status:
            stmt = stmt.where(Capture.status == status)
        if before_id is not None:
            stmt = stmt.where(Capture.id < before_id)
        with self.engine.connect() as conn:
            return [
                dict(row._mapping)
                for row in conn.execute(stmt.order_by(Capture.id.desc()).limit(limit))
            ]

    def spent(self, window: str) -> int:
        """Pounds reserved in `day:YYYY-MM-DD` or `month:YYYY-MM`."""
        with self.engine.connect() as conn:
            return spend.spent(conn, window)

    # -- internals ------------------------------------------------------------------------

    def _get(self, conn: Connection, rule: str, subject_id: str, part: int) -> CaptureRow:
        return self._rows(
            conn,
            and_(
                Capture.rule == rule,
                Capture.subject_id == subject_id,
                Capture.part == part,
            ),
        )[0]

    def _rows(self, conn: Connection, where: Any) -> list[CaptureRow]:
        return [
            CaptureRow(*row)
            for row in conn.execute(
                select(*_ROW_COLUMNS).where(where).order_by(Capture.part, Capture.id)
            )
        ]


def captured_columns(impact: Impact, *, note: str | None = None) -> dict[str, Any]:
    """The columns that record 1ClickImpact's answer on a capture."""
    values: dict[str, Any] = {
        "status": CaptureStatus.CAPTURED,
        "user_id": impact.user_id,
        "time_utc": impact.time_utc,
        "customer_id": impact.customer_id,
        "error": None,
        "http_status": None,
        "updated_at": utcnow(),
    }
    if note:
        values["note"] = note
    return values


def _planned_values(
    event_id: int, subject_id: str, planned: PlannedCapture, rules_hash: str
) -> dict[str, Any]:
    """A new ledger row for `planned`, as `_INSERT_PLANNED`'s parameters."""
    now = utcnow()
    status = (
        CaptureStatus.SKIPPED
        if planned.skipped
        else CaptureStatus.DRY_RUN
        if planned.dry_run
        else CaptureStatus.PENDING
    )
    notes = {
        CaptureStatus.DRY_RUN: "dry run: not sent",
        CaptureStatus.SKIPPED: "under 1 lb: not sent",
    }
    return {
        "event_id": event_id,
        "rule": planned.rule,
        "subject_id": subject_id,
        "part": planned.part,
        "action": planned.action,
        "amount": planned.amount,
        "customer_email": planned.customer_email,
        "customer_name": planned.customer_name,
        "notify": planned.notify,
        "approved": False,
        "status": status,
        "attempts": 0,
        "rules_hash": rules_hash,
        "note": notes.get(status),
        "created_at": now,
        "updated_at": now,
    }


# PostgreSQL: mark a capture attempted and reserve its pounds in one statement, only if it is
# unchanged since it was read, both spend rows exist and both stay within their limits;
# otherwise change nothing. Locks are taken in the transaction's order (the capture, then the
# day, then the month: ORDER BY under FOR UPDATE), so the two paths cannot deadlock. A row
# found locked is re-checked once the lock is released (READ COMMITTED), so the limit holds
# under concurrent reservations. `seen` = 0: busy; `started` = 0 with `seen` = 1: fall back.
_BEGIN_AND_RESERVE = DriverStatement(
    lambda _: text(
        """
    WITH seen AS MATERIALIZED (
        SELECT id FROM captures
        WHERE id = :capture_id AND status = :seen_status
          AND attempted_at IS NOT DISTINCT FROM :seen_attempted_at
        FOR UPDATE
    ), within AS MATERIALIZED (
        SELECT "window" FROM spend
        WHERE "window" IN (:day_window, :month_window) AND EXISTS (SELECT FROM seen)
          AND lbs + :amount <= CASE "window" WHEN :day_window THEN :day_limit
                                             ELSE :month_limit END
        ORDER BY "window"
        FOR UPDATE
    ), go AS MATERIALIZED (
        SELECT FROM within HAVING count(*) = 2
    ), added AS (
        UPDATE spend SET lbs = lbs + :amount
        WHERE "window" IN (SELECT "window" FROM within) AND EXISTS (SELECT FROM go)
        RETURNING "window"
    ), started AS (
        UPDATE captures
        SET status = :pending, attempted_at = :now, attempts = attempts + 1, error = NULL,
            updated_at = :now, spend_day = :day
        WHERE id IN (SELECT id FROM seen) AND EXISTS (SELECT FROM go)
        RETURNING id
    )
    SELECT (SELECT count(*) FROM seen) AS seen, (SELECT count(*) FROM started) AS started
    """
    ).bindparams(
        bindparam("seen_attempted_at", type_=UTCDateTime()),
        bindparam("now", type_=UTCDateTime()),
        bindparam("amount", type_=BigInteger()),
        bindparam("day_limit", type_=BigInteger()),
        bindparam("month_limit", type_=BigInteger()),
        bindparam("pending", value=CaptureStatus.PENDING),
    )
)


def _unchanged(first: bool) -> Any:
    """The capture as it was read (`capture_id`, `seen_status`, `seen_attempted_at`)."""
    return and_(
        Capture.id == bindparam("capture_id"),
        Capture.status == bindparam("seen_status"),
        Capture.attempted_at.is_(None)
        if first
        else Capture.attempted_at == bindparam("seen_attempted_at"),
    )


@functools.cache
def _begin_attempt_statement(*, first: bool, reserve: bool) -> Update:
    """Mark a capture attempted if nobody changed it since it was read."""
    values: dict[str, Any] = {
        "status": CaptureStatus.PENDING,
        "attempted_at": bindparam("now"),
        "attempts": Capture.attempts + 1,
        "error": None,
        "updated_at": bindparam("now"),
    }
    if reserve:
        values["spend_day"] = bindparam("day")
    return update(Capture).where(_unchanged(first)).values(values)


@functools.cache
def _hold_statement(first: bool) -> Update:
    """Hold a capture over a spend limit if nobody changed it since it was read."""
    return (
        update(Capture)
        .where(_unchanged(first))
        .values(
            status=CaptureStatus.HELD,
            note="over a spend limit: approve or reject",
            updated_at=bindparam("now"),
        )
    )


@functools.cache
def _begin_attempt_alone(first: bool) -> DriverStatement:
    """`_begin_attempt_statement` for a capture that reserves nothing: it commits by itself."""
    return DriverStatement(lambda _: _begin_attempt_statement(first=first, reserve=False))


# A new ledger row (`_planned_values`; a column it leaves out is NULL), and the row back if
# there was none.
_INSERT_PLANNED = DriverStatement(
    lambda dialect_name: (
        insert_ignore_statement(Capture, dialect_name)
        .values(
            {
                column.key: bindparam(column.key, required=False)
                for column in Capture.__table__.columns
                if column.key != "id"
            }
        )
        .returning(*_ROW_COLUMNS)
    )
)
