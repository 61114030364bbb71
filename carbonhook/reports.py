"""Read-only figures for the dashboard's overview: spend, pounds per day, latest failures, the
types of ignored events."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, func, select

from carbonhook.actions import Action
from carbonhook.schema import Capture, Event, Spend
from carbonhook.statuses import CaptureStatus, EventStatus

# Only captured `capture_carbon` rows are pounds of carbon, and a row's `spend_day` is the UTC
# day its pounds were reserved against the daily limit (carbonhook/spend.py).


@dataclass(frozen=True, slots=True)
class DayTotal:
    day: date
    lbs: int


@dataclass(frozen=True, slots=True)
class Overview:
    """What the overview page shows, read in one connection."""

    spent_today: int
    spent_month: int
    lbs_per_day: list[DayTotal]  # oldest first, one entry per day, zeros included
    captures_by_status: dict[str, int]
    latest_failures: list[dict[str, Any]]
    ignored_by_type: list[tuple[str, int]]  # the most numerous first


def overview(
    engine: Engine, *, today: date, days: int = 30, failures: int = 5, ignored_types: int = 10
) -> Overview:
    """Spend in today's and this month's limit windows, captured pounds per day over the
    last `days` days (today included), capture counts, the latest failed events, and how
    many events of each type (the `ignored_types` most numerous) were ignored."""
    with engine.connect() as conn:
        return Overview(
            spent_today=_spent(conn, f"day:{today.isoformat()}"),
            spent_month=_spent(conn, f"month:{today.isoformat()[:7]}"),
            lbs_per_day=_lbs_per_day(conn, today, days),
            captures_by_status=_captures_by_status(conn),
            latest_failures=_latest_failures(conn, failures),
            ignored_by_type=_ignored_by_type(conn, ignored_types),
        )


def _spent(conn: Connection, window: str) -> int:
    found = conn.execute(select(Spend.lbs).where(Spend.window == window)).scalar()
    return int(found or 0)


def _lbs_per_day(conn: Connection, today: date, days: int) -> list[DayTotal]:
    first = today - timedelta(days=days - 1)
    # `spend_day` is ISO text, so the range is a string comparison on both databases.
    rows = conn.execute(
        select(Capture.spend_day, func.sum(Capture.amount))
        .where(
            Capture.status == CaptureStatus.CAPTURED,
            Capture.action == Action.CAPTURE_CARBON,
            Capture.spend_day >= first.isoformat(),
            Capture.spend_day <= today.isoformat(),
        )
        .group_by(Capture.spend_day)
    )
    totals = {day: int(lbs) for day, lbs in rows}
    series = (first + timedelta(days=n) for n in range(days))
    return [DayTotal(day, totals.get(day.isoformat(), 0)) for day in series]


def _captures_by_status(conn: Connection) -> dict[str, int]:
    rows = conn.execute(select(Capture.status, func.count()).group_by(Capture.status))
    return {status: int(count) for status, count in rows}


def _latest_failures(conn: Connection, limit: int) -> list[dict[str, Any]]:
    rows = conn.execute(
        select(Event.id, Event.type, Event.subject_id, Event.updated_at, Event.last_error)
        .where(Event.status == EventStatus.FAILED)
        .order_by(Event.updated_at.desc(), Event.id.desc())
        .limit(limit)
    )
    return [dict(row._mapping) for row in rows]


def _ignored_by_type(conn: Connection, limit: int) -> list[tuple[str, int]]:
    count = func.count().label("count")
    rows = conn.execute(
        select(Event.type, count)
        .where(Event.status == EventStatus.IGNORED)
        .group_by(Event.type)
        .order_by(count.desc(), Event.type)
        .limit(limit)
    )
    return [(str(event_type), int(n)) for event_type, n in rows]
