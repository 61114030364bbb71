"""The statements that write a new ledger row and begin an attempt on one, built once.

Building a statement costs more CPU than sending it (bench/FINDINGS.md). A parameter named like
a column of the table an UPDATE writes would be taken for a value to set: hence `seen_…`,
`sig_…`. An attempt begins only if the row is as it was read (its status and its attempt's
token) and no other capture of its signature (action, amount, customer e-mail in any case) is
`unknown`: while one is, a record without our tag could be either's, so none is sent.
"""

from __future__ import annotations

import functools
from typing import Any

from sqlalchemy import BigInteger, ColumnElement, Update, bindparam, exists, func, text, update

from carbonhook.captures import PlannedCapture
from carbonhook.clock import db_now
from carbonhook.database import DriverStatement
from carbonhook.schema import Capture, utcnow
from carbonhook.statuses import CaptureStatus

_TWIN = Capture.__table__.alias("twin")


def same_signature(action: str, amount: int, customer_email: str | None) -> ColumnElement[bool]:
    """Rows of `Capture` with this action, amount and customer (e-mail in any case)."""
    return (
        (Capture.action == action)
        & (Capture.amount == amount)
        & (func.lower(func.coalesce(Capture.customer_email, "")) == (customer_email or "").lower())
    )


def _no_unknown_twin() -> ColumnElement[bool]:
    """No other row of the signature in `sig_action`, `sig_amount`, `sig_email` is unknown."""
    return ~exists().where(
        _TWIN.c.status == CaptureStatus.UNKNOWN,
        _TWIN.c.id != bindparam("capture_id"),
        _TWIN.c.action == bindparam("sig_action"),
        _TWIN.c.amount == bindparam("sig_amount", type_=BigInteger()),
        func.lower(func.coalesce(_TWIN.c.customer_email, "")) == bindparam("sig_email"),
    )


def _unchanged() -> ColumnElement[bool]:
    """The capture as it was read (`capture_id`, `seen_status`, `seen_token`)."""
    return (
        (Capture.id == bindparam("capture_id"))
        & (Capture.status == bindparam("seen_status"))
        & Capture.attempt_token.is_not_distinct_from(bindparam("seen_token"))
    )


@functools.cache
def begin_attempt_statement(*, reserve: bool) -> Update:
    """Mark a capture attempted under the token `token`, at the database's time."""
    values: dict[str, Any] = {
        "status": CaptureStatus.PENDING,
        "attempted_at": db_now(),
        "attempt_token": bindparam("token"),
        "attempts": Capture.attempts + 1,
        "error": None,
        "updated_at": db_now(),
    }
    if reserve:
        values["spend_day"] = bindparam("day")
    return update(Capture).where(_unchanged(), _no_unknown_twin()).values(values)


@functools.cache
def hold_statement() -> Update:
    """Hold a capture over a spend limit if nobody changed it since it was read."""
    return (
        update(Capture)
        .where(_unchanged())
        .values(
            status=CaptureStatus.HELD,
            note="over a spend limit: approve or reject",
            updated_at=db_now(),
        )
    )


@functools.cache
def begin_attempt_alone() -> DriverStatement:
    """`begin_attempt_statement` for a capture that reserves nothing: it commits by itself."""
    return DriverStatement(lambda _: begin_attempt_statement(reserve=False))


def signature_params(action: str, amount: int, customer_email: str | None) -> dict[str, Any]:
    return {"sig_action": action, "sig_amount": amount, "sig_email": (customer_email or "").lower()}


def planned_values(
    event_id: int, subject_id: str, planned: PlannedCapture, rules_hash: str
) -> dict[str, Any]:
    """A new ledger row for `planned`, as `INSERT_PLANNED`'s parameters."""
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
        "site_id": planned.site_id,
        "period": planned.period,
        "note": notes.get(status),
        "created_at": now,
        "updated_at": now,
    }


# PostgreSQL: mark a capture attempted and reserve its amount in one statement, only if it is
# unchanged since it was read, no twin of its signature is unknown, both spend rows exist and
# both stay within their limits; otherwise change nothing. Locks are taken in the
# transaction's order (the capture, then the day, then the month: ORDER BY under FOR UPDATE),
# so the two paths cannot deadlock. A row found locked is re-checked once the lock is released
# (READ COMMITTED), so the limit holds under concurrent reservations. `seen` = 0: busy;
# `started` = 0 with `seen` = 1: fall back to the transaction.
BEGIN_AND_RESERVE = DriverStatement(
    lambda _: text(
        """
    WITH seen AS MATERIALIZED (
        SELECT id FROM captures
        WHERE id = :capture_id AND status = :seen_status
          AND attempt_token IS NOT DISTINCT FROM :seen_token
          AND NOT EXISTS (
              SELECT FROM captures twin
              WHERE twin.status = :unknown AND twin.id <> :capture_id
                AND twin.action = :sig_action AND twin.amount = :sig_amount
                AND lower(coalesce(twin.customer_email, '')) = :sig_email)
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
        SET status = :pending, attempted_at = (clock_timestamp() AT TIME ZONE 'UTC'),
            attempt_token = :token, attempts = attempts + 1, error = NULL,
            updated_at = (clock_timestamp() AT TIME ZONE 'UTC'), spend_day = :day
        WHERE id IN (SELECT id FROM seen) AND EXISTS (SELECT FROM go)
        RETURNING id
    )
    SELECT (SELECT count(*) FROM seen) AS seen, (SELECT count(*) FROM started) AS started
    """
    ).bindparams(
        bindparam("amount", type_=BigInteger()),
        bindparam("sig_amount", type_=BigInteger()),
        bindparam("day_limit", type_=BigInteger()),
        bindparam("month_limit", type_=BigInteger()),
        bindparam("pending", value=CaptureStatus.PENDING),
        bindparam("unknown", value=CaptureStatus.UNKNOWN),
    )
)
