"""The capture ledger: a row before every call, attempts fenced by their token, spend reserved
atomically, every decision one conditional update."""

from __future__ import annotations

import uuid
from typing import Any, NamedTuple, Protocol

from sqlalchemy import Engine, and_, bindparam, func, select, update
from sqlalchemy.exc import IntegrityError

from carbonhook import notices, outbox, spend
from carbonhook.attempts import (
    BEGIN_AND_RESERVE,
    begin_attempt_alone,
    begin_attempt_statement,
    hold_statement,
    planned_values,
    same_signature,
    signature_params,
)
from carbonhook.capture_rows import ROW_COLUMNS, CaptureRow
from carbonhook.captures import Impact, PlannedCapture
from carbonhook.clock import db_now, seconds_since
from carbonhook.database import DriverStatement, insert_ignore, insert_ignore_statement
from carbonhook.decisions import Decisions
from carbonhook.schema import Capture, DeltaMark, Deployment, utcnow
from carbonhook.spend import SpendLimits
from carbonhook.statuses import CaptureStatus

# A new ledger row (`planned_values`; a column it leaves out is NULL), and the row back if
# there was none.
INSERT_PLANNED = DriverStatement(
    lambda dialect_name: (
        insert_ignore_statement(Capture, dialect_name)
        .values(
            {
                column.key: bindparam(column.key, required=False)
                for column in Capture.__table__.columns
                if column.key != "id"
            }
        )
        .returning(*ROW_COLUMNS)
    )
)


# 1ClickImpact's answer for one attempt, in one statement that commits by itself.
_RECORD_CAPTURED = DriverStatement(
    lambda _: (
        update(Capture)
        .where(
            Capture.id == bindparam("capture_id"),
            Capture.attempt_token == bindparam("token"),
            (Capture.status == CaptureStatus.PENDING) | (Capture.status == CaptureStatus.UNKNOWN),
        )
        .values(
            status=CaptureStatus.CAPTURED,
            user_id=bindparam("new_user_id"),
            time_utc=bindparam("new_time_utc"),
            customer_id=bindparam("new_customer_id"),
            note=func.coalesce(bindparam("new_note"), Capture.note),
            error=None,
            http_status=None,
            updated_at=db_now(),
        )
    )
)


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


class AttemptStart(NamedTuple):
    """What `begin_attempt` decided: "go" with the new attempt's token, "held" (over a spend
    limit) or "busy" (the row changed since it was read, or a twin of its signature is
    unknown)."""

    decision: str
    token: str | None = None


class _GroupChanged(Exception):
    """Raised inside a group's transaction to roll it back."""


class _OverLimit(Exception):
    """Raised inside a reservation's transaction to roll it back."""


class Ledger(Decisions):
    """The capture ledger over the event store's database.

    Every call to 1ClickImpact has a row written before it (`ensure`), an attempt begun under a
    conditional update that also reserves spend (`begin_attempt`: a new token, "held" or
    "busy"), and its answer recorded under that token (`captured`, `failed`, `unknown`). A row
    no longer planned is `supersede`d. Admins decide held and unknown rows (`approve`,
    `reject`, `resolve`), each one conditional update. The state machine is in
    carbonhook/statuses.py; reservations and limits in carbonhook/spend.py.
    """

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        self._deployment: str | None = None

    def deployment_id(self) -> str:
        """This deployment's id (made once by the migrations), part of every capture's tag."""
        if self._deployment is None:
            with self.engine.connect() as conn:
                self._deployment = str(conn.execute(select(Deployment.id)).scalar_one())
        return self._deployment

    # -- planning -----------------------------------------------------------------------

    def ensure(
        self, event_id: int, subject_id: str, planned: PlannedCapture, rules_hash: str
    ) -> CaptureRow:
        """The ledger row for `planned`, written now if it is new; an existing row wins."""
        values = planned_values(event_id, subject_id, planned, rules_hash)
        new = INSERT_PLANNED.run(self.engine, values).first()  # insert-if-absent, then read
        if new is not None:
            return CaptureRow(*new)
        with self.engine.connect() as conn:
            return self._rows(
                conn,
                and_(
                    Capture.rule == planned.rule,
                    Capture.subject_id == subject_id,
                    Capture.part == planned.part,
                ),
            )[0]

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
        mark = {
            "rule": plan.rule_name,
            "site_id": plan.site_id,
            "period": plan.period,
            "offset_tco2e": 0.0,
            "updated_at": now,
        }
        ours = and_(Capture.rule == plan.rule_name, Capture.subject_id == subject_id)
        with self.engine.begin() as conn:
            insert_ignore(conn, DeltaMark, mark)
            # This UPDATE takes the row lock (PostgreSQL) or the write lock (SQLite): a second
            # bill of the same site waits here and then sees the new mark.
            conn.execute(update(DeltaMark).where(key).values(updated_at=now))
            existing = self._rows(conn, ours)
            if existing:
                return existing
            before = conn.execute(select(DeltaMark.offset_tco2e).where(key)).scalar_one()
            planned, after = plan.captures_after(before)
            extra = {
                "site_id": plan.site_id,
                "period": plan.period,
                "basis_tco2e": plan.current_tco2e,
            }
            for capture in planned:
                values = planned_values(event_id, subject_id, capture, rules_hash)
                insert_ignore(conn, Capture, values | extra)
            conn.execute(update(DeltaMark).where(key).values(offset_tco2e=after))
            return self._rows(conn, ours)

    # -- one attempt ----------------------------------------------------------------------

    def begin_attempt(self, row: CaptureRow, limits: SpendLimits) -> AttemptStart:
        """Claim the right to call for `row`, if nobody changed it since it was read and no
        other capture of its signature is `unknown`. The attempt's time is the database's."""
        token = uuid.uuid4().hex
        reserve = row.spend_day is None
        day = utcnow().date().isoformat()
        windows = spend.spend_windows(row.action, day, None if row.approved else limits)
        params = {
            "capture_id": row.id,
            "seen_status": row.status,
            "seen_token": row.attempt_token,
            "token": token,
            "day": day,
        } | signature_params(row.action, row.amount, row.customer_email)
        if not reserve:  # one statement: no transaction needed
            started = begin_attempt_alone().run(self.engine, params).rowcount
            return AttemptStart("go", token) if started else AttemptStart("busy")
        if self.engine.dialect.name == "postgresql":
            # The usual case in one round trip: while a transaction (BEGIN, three UPDATEs,
            # COMMIT) held the spend rows, every other capture of the day queued behind it.
            answer = BEGIN_AND_RESERVE.run(
                self.engine, params | spend.limit_params(row.amount, windows)
            )
            seen, started = answer.rows[0]
            if started:
                return AttemptStart("go", token)
            if not seen:
                return AttemptStart("busy")
            # A spend row to create (the first capture of a day or month) or a limit reached:
            # the transaction below decides.
        try:
            with self.engine.begin() as conn:
                if conn.execute(begin_attempt_statement(reserve=True), params).rowcount == 0:
                    return AttemptStart("busy")
                if not spend.reserve(conn, row.amount, windows):
                    raise _OverLimit
        except _OverLimit:
            with self.engine.begin() as conn:
                if not conn.execute(hold_statement(), params).rowcount:
                    return AttemptStart("busy")
                notice = notices.held(row.id, token, row.event_id, row.rule, row.amount, row.action)
                outbox.write(conn, notice)
                return AttemptStart("held")
        return AttemptStart("go", token)

    def signature_unknown(self, row: CaptureRow) -> bool:
        """Another capture of `row`'s action, amount and customer is `unknown`."""
        with self.engine.connect() as conn:
            found = conn.execute(
                select(Capture.id)
                .where(
                    Capture.status == CaptureStatus.UNKNOWN,
                    Capture.id != row.id,
                    same_signature(row.action, row.amount, row.customer_email),
                )
                .limit(1)
            ).first()
        return found is not None

    def open_twins(self, row: CaptureRow) -> list[tuple[CaptureRow, float]]:
        """The other captures of `row`'s signature with a call whose outcome is not known
        (`unknown`, or `pending` with an attempt), each with its attempt's age (the database's
        clock)."""
        open_attempt = (Capture.status == CaptureStatus.UNKNOWN) | (
            (Capture.status == CaptureStatus.PENDING) & Capture.attempt_token.is_not(None)
        )
        with self.engine.connect() as conn:
            found = conn.execute(
                select(*ROW_COLUMNS, seconds_since(Capture.attempted_at))
                .where(
                    open_attempt,
                    Capture.id != row.id,
                    same_signature(row.action, row.amount, row.customer_email),
                )
                .order_by(Capture.id)
            ).all()
        return [(CaptureRow(*values[:-1]), float(values[-1] or 0.0)) for values in found]

    def captured(
        self, capture_id: int, impact: Impact, *, token: str, note: str | None = None
    ) -> bool:
        """Record 1ClickImpact's answer for the attempt `token`; False if a newer attempt (or
        an admin) has changed the row since, or another row already claims this impact."""
        values: dict[str, Any] = {
            "capture_id": capture_id,
            "token": token,
            "new_user_id": impact.user_id,
            "new_time_utc": impact.time_utc,
            "new_customer_id": impact.customer_id,
            "new_note": note,
        }
        try:
            return bool(_RECORD_CAPTURED.run(self.engine, values).rowcount)
        except IntegrityError:
            return False  # the impact is another row's: the database refuses a second claim

    def failed(self, capture_id: int, error: str, http_status: int | None, *, token: str) -> bool:
        """A definite refusal, or nothing left the machine: the reserved spend is released."""
        return self._end(
            capture_id,
            token,
            {"status": CaptureStatus.FAILED, "error": error, "http_status": http_status},
            release=True,
        )

    def unknown(self, capture_id: int, error: str, http_status: int | None, *, token: str) -> bool:
        """The call may have happened: keep the spend, reconcile before any retry."""
        return self._end(
            capture_id,
            token,
            {"status": CaptureStatus.UNKNOWN, "error": error, "http_status": http_status},
            release=False,
        )

    def supersede(self, row: CaptureRow, reason: str) -> bool:
        """A row that was never sent, or is proved not to have happened, and is no longer
        planned: `superseded`, its reserved spend given back, if it is still as it was read."""
        with self.engine.begin() as conn:
            changed = conn.execute(
                update(Capture)
                .where(
                    Capture.id == row.id,
                    Capture.status == row.status,
                    Capture.attempt_token.is_not_distinct_from(row.attempt_token),
                    Capture.status.not_in(
                        (CaptureStatus.CAPTURED, CaptureStatus.SKIPPED, CaptureStatus.DRY_RUN)
                    ),
                )
                .values(status=CaptureStatus.SUPERSEDED, note=reason[:500], updated_at=utcnow())
            ).rowcount
            if changed:
                spend.release(conn, row.id)
        return bool(changed)

    def settle_group(self, assignment: list[tuple[CaptureRow, Impact | None]]) -> bool:
        """Every capture of one signature whose outcome is not known, at once, in one
        transaction (the caller read them all past their settle windows): each row
        captured by its record, or `failed` (its amount given back) where it has none; False,
        and nothing changed, if a row changed since it was read or a record is claimed."""
        try:
            with self.engine.begin() as conn:
                for row, record in assignment:
                    unchanged = (
                        (Capture.id == row.id)
                        & (Capture.status == row.status)  # unknown, or pending and orphaned
                        & Capture.attempt_token.is_not_distinct_from(row.attempt_token)
                    )
                    values: dict[str, Any] = {"updated_at": utcnow(), "error": None}
                    if record is None:
                        values |= {
                            "status": CaptureStatus.FAILED,
                            "note": "not found at 1ClickImpact: fewer records than captures "
                            "of its signature",
                        }
                    else:
                        values |= {
                            "status": CaptureStatus.CAPTURED,
                            "user_id": record.user_id,
                            "time_utc": record.time_utc,
                            "customer_id": record.customer_id,
                            "note": "found by reconciliation (by its signature, in order)",
                        }
                    if conn.execute(update(Capture).where(unchanged).values(values)).rowcount != 1:
                        raise _GroupChanged
                    if record is None:
                        spend.release(conn, row.id)
        except (_GroupChanged, IntegrityError):
            return False
        return True

    def revive(self, row: CaptureRow) -> CaptureRow | None:
        """A superseded row planned again: `pending`, as if new (it was never sent, or proved
        not to have happened); None if it changed since it was read."""
        with self.engine.begin() as conn:
            changed = conn.execute(
                update(Capture)
                .where(
                    Capture.id == row.id,
                    Capture.status == CaptureStatus.SUPERSEDED,
                    Capture.attempt_token.is_not_distinct_from(row.attempt_token),
                )
                .values(
                    status=CaptureStatus.PENDING,
                    attempt_token=None,
                    attempted_at=None,
                    note="planned again",
                    updated_at=utcnow(),
                )
            ).rowcount
            rows = self._rows(conn, Capture.id == row.id) if changed else []
        return rows[0] if rows else None

    def attempt_age_s(self, capture_id: int) -> float | None:
        """Seconds since the row's last attempt began, by the database's clock."""
        with self.engine.connect() as conn:
            age = conn.execute(
                select(seconds_since(Capture.attempted_at)).where(Capture.id == capture_id)
            ).scalar()
        return None if age is None else float(age)

    def _end(self, capture_id: int, token: str, values: dict[str, Any], *, release: bool) -> bool:
        with self.engine.begin() as conn:
            changed = conn.execute(
                update(Capture)
                .where(
                    Capture.id == capture_id,
                    Capture.attempt_token == token,
                    Capture.status == CaptureStatus.PENDING,
                )
                .values(updated_at=utcnow(), **values)
            ).rowcount
            if changed and release:
                spend.release(conn, capture_id)
        return bool(changed)
