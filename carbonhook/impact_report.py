"""The impact report: what stands at 1ClickImpact for the company, when, for which CRP or bill,
with 1ClickImpact's proof; totals by a grouping; the tonnes offset beside CarbonPass's emissions
per reporting period; and the duplicates the audit reversed, listed apart and never counted.

A standing impact is a `captured` row (`dry_run`, `skipped`, `superseded` and the rest never
count). It is placed in the period by the time 1ClickImpact recorded it (`time_utc`); a row an
admin resolved as captured has no such proof, and is placed by the time of that decision.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, Engine, and_, select

from carbonhook.actions import ACTIONS, Action
from carbonhook.errors import BadRequest, CarbonhookError
from carbonhook.schema import Capture, Event, Reversal
from carbonhook.statuses import CaptureStatus

GROUPINGS = ("day", "month", "rule", "site")
FORMATS = ("table", "csv", "json")
LBS_PER_TONNE = Decimal("2204.62262")
UNKNOWN = "(unknown)"  # a site or reporting period the ledger does not know
# A spreadsheet runs a cell starting with one of these as a formula (CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")

# CarbonPass's `GET /emissions` data (unwrapped); its `reportingPeriod` names the one period it
# serves, the current one.
EmissionsLookup = Callable[[], Mapping[str, Any]]


@dataclass(frozen=True, slots=True)
class ReportQuery:
    """Impacts recorded from `start` to `end` (UTC days, both included), totalled by `by`."""

    start: date
    end: date
    by: str = "month"


def report_query(start: str | None, end: str | None, by: str | None, *, today: date) -> ReportQuery:
    """A query from text (`YYYY-MM-DD`); by default this UTC month up to `today`, by month.
    Anything else is a `BadRequest` that says what was wrong."""
    by = by or "month"
    if by not in GROUPINGS:
        raise BadRequest(f"unknown grouping {by!r}; one of {', '.join(GROUPINGS)}")
    first = _day(start, "from") or today.replace(day=1)
    last = _day(end, "to") or today
    if first > last:
        raise BadRequest(f"'from' ({first}) is after 'to' ({last})")
    return ReportQuery(first, last, by)


def check_format(value: str | None, formats: tuple[str, ...] = FORMATS) -> str:
    """A report format among `formats` (the first by default)."""
    if value is None or value == "":
        return formats[0]
    if value not in formats:
        raise BadRequest(f"unknown format {value!r}; one of {', '.join(formats)}")
    return value


def _day(value: str | None, name: str) -> date | None:
    if value is None or value == "":
        return None
    try:
        if len(value) != 10:
            raise ValueError
        day = date.fromisoformat(value)
        if day == date.max:  # the day after it, where the period ends, cannot be written
            raise ValueError
        return day
    except ValueError:
        raise BadRequest(f"{name!r} is not a date YYYY-MM-DD: {value[:40]!r}") from None


@dataclass(frozen=True, slots=True)
class ImpactRow:
    """One standing impact, with its subject and 1ClickImpact's proof (`user_id`, `time_utc`)."""

    capture_id: int
    event_id: int
    rule: str
    subject_id: str  # the CRP's id (`crp_…`), the bill's (`bill_…`) or a catch-up's (`catch_up:…`)
    site_id: str | None
    period: str | None  # CarbonPass's reporting period (`2025-26`), where planning knew it
    action: str
    amount: int
    unit: str
    customer_email: str | None
    customer_name: str | None
    customer_id: str | None
    user_id: str | None
    time_utc: str | None
    recorded_on: str  # the UTC day it is placed on (`time_utc`'s, else the admin's decision's)


@dataclass(frozen=True, slots=True)
class ReversedDuplicate:
    """An impact found standing twice for one capture and reversed by the audit: never counted."""

    capture_id: int
    rule: str
    subject_id: str
    action: str
    amount: int
    customer_email: str | None
    user_id: str
    time_utc: str
    reason: str
    cancelled_at: datetime | None
    error: str | None


@dataclass(frozen=True, slots=True)
class GroupTotal:
    """What one group (a day, a month, a rule, a site) captured of one action."""

    group: str
    action: str
    unit: str
    impacts: int
    amount: int
    tonnes_co2e: float | None  # `capture_carbon` alone is carbon (pounds → tonnes)


@dataclass(frozen=True, slots=True)
class PeriodCoverage:
    """A reporting period's tonnes offset beside the company's emissions, where CarbonPass
    says them (`note` says why not)."""

    period: str
    tonnes_offset: float
    emissions_tco2e: float | None
    share_percent: float | None
    note: str | None


@dataclass(frozen=True)
class ImpactReport:
    query: ReportQuery
    rows: list[ImpactRow]
    totals: list[GroupTotal]
    coverage: list[PeriodCoverage]
    reversed: list[ReversedDuplicate]
    emissions_note: str | None = None  # why CarbonPass's emissions are missing, if they are
    generated_at: datetime = field(default_factory=lambda: datetime.now(UTC))


class ImpactReports:
    """Reads the ledger for the report; `emissions` asks CarbonPass (None: not configured)."""

    def __init__(self, engine: Engine, emissions: EmissionsLookup | None = None) -> None:
        self.engine = engine
        self.emissions = emissions

    def report(self, query: ReportQuery) -> ImpactReport:
        with self.engine.connect() as conn:
            rows = standing_impacts(conn, query)
            reversed_ = reversed_duplicates(conn, query)
        current, note = self._current_emissions()
        return ImpactReport(
            query=query,
            rows=rows,
            totals=totals(rows, query.by),
            coverage=coverage(rows, current),
            reversed=reversed_,
            emissions_note=note,
        )

    def _current_emissions(self) -> tuple[Mapping[str, Any] | None, str | None]:
        if self.emissions is None:
            return None, "CarbonPass is not configured (CARBONHOOK_CARBONPASS_API_KEY)"
        try:
            return self.emissions(), None
        except CarbonhookError as exc:  # our clients' errors: down, refused, rate-limited
            return None, f"CarbonPass could not be asked: {exc}"


def _bounds(query: ReportQuery) -> tuple[str, str, datetime, datetime]:
    """The period as `time_utc` text (ISO, so text order is time order) and as datetimes."""
    after_end = query.end + timedelta(days=1)
    start_at = datetime.combine(query.start, time(), UTC)
    end_at = datetime.combine(after_end, time(), UTC)
    return query.start.isoformat(), after_end.isoformat(), start_at, end_at


def standing_impacts(conn: Connection, query: ReportQuery) -> list[ImpactRow]:
    """Captured rows recorded in the period, oldest first."""
    start, end, start_at, end_at = _bounds(query)
    in_period = and_(Capture.time_utc >= start, Capture.time_utc < end) | and_(
        Capture.time_utc.is_(None),
        Capture.updated_at >= start_at,
        Capture.updated_at < end_at,
    )
    stmt = (
        select(Capture.__table__, Event.body)
        .join(Event, Event.id == Capture.event_id)
        .where(Capture.status == CaptureStatus.CAPTURED, in_period)
    )
    found = []
    for capture in conn.execute(stmt):
        recorded = capture.time_utc or capture.updated_at.isoformat()
        found.append(
            ImpactRow(
                capture_id=capture.id,
                event_id=capture.event_id,
                rule=capture.rule,
                subject_id=capture.subject_id,
                site_id=capture.site_id or _site_of(capture.body),
                period=capture.period,
                action=capture.action,
                amount=int(capture.amount),
                unit=_unit(capture.action),
                customer_email=capture.customer_email,
                customer_name=capture.customer_name,
                customer_id=capture.customer_id,
                user_id=capture.user_id,
                time_utc=capture.time_utc,
                recorded_on=recorded[:10],
            )
        )
    return sorted(found, key=lambda r: (r.time_utc or r.recorded_on, r.capture_id))


def _site_of(body: bytes | None) -> str | None:
    """The site a delivery names (`data.siteId`): where rows planned before the ledger kept
    the site find it."""
    try:
        data = json.loads(body or b"").get("data")
    except (ValueError, AttributeError):
        return None
    site = data.get("siteId") if isinstance(data, dict) else None
    return site if isinstance(site, str) and site else None


def _unit(action: str) -> str:
    try:
        return ACTIONS[Action(action)].unit
    except ValueError:
        return action


def reversed_duplicates(conn: Connection, query: ReportQuery) -> list[ReversedDuplicate]:
    """The audit's reversals of impacts recorded in the period, oldest first."""
    start, end, _, _ = _bounds(query)
    stmt = (
        select(
            Reversal.capture_id,
            Reversal.user_id,
            Reversal.time_utc,
            Reversal.reason,
            Reversal.cancelled_at,
            Reversal.error,
            Capture.rule,
            Capture.subject_id,
            Capture.action,
            Capture.amount,
            Capture.customer_email,
        )
        .join(Capture, Capture.id == Reversal.capture_id)
        .where(Reversal.time_utc >= start, Reversal.time_utc < end)
        .order_by(Reversal.time_utc, Reversal.id)
    )
    return [ReversedDuplicate(**row._mapping) for row in conn.execute(stmt)]


def tonnes(lbs: int) -> float:
    """Pounds of carbon (what the ledger and 1ClickImpact count) in tonnes, to 3 places."""
    return float(round(Decimal(lbs) / LBS_PER_TONNE, 3))


def group_of(row: ImpactRow, by: str) -> str:
    if by == "day":
        return row.recorded_on
    if by == "month":
        return row.recorded_on[:7]
    if by == "rule":
        return row.rule
    return row.site_id or UNKNOWN


def totals(rows: list[ImpactRow], by: str) -> list[GroupTotal]:
    """Impacts and amounts per group and action, in the group's order."""
    sums: dict[tuple[str, str], list[int]] = {}
    for row in rows:
        counted = sums.setdefault((group_of(row, by), row.action), [0, 0])
        counted[0] += 1
        counted[1] += row.amount
    return [
        GroupTotal(
            group=group,
            action=action,
            unit=_unit(action),
            impacts=n,
            amount=amount,
            tonnes_co2e=tonnes(amount) if action == Action.CAPTURE_CARBON else None,
        )
        for (group, action), (n, amount) in sorted(sums.items())
    ]


def coverage(rows: list[ImpactRow], current: Mapping[str, Any] | None) -> list[PeriodCoverage]:
    """For each reporting period of the carbon captured (and CarbonPass's current one), the
    tonnes offset beside the company's emissions. CarbonPass's `GET /emissions` serves the
    current period alone, so an earlier period's emissions are not known to it."""
    lbs: dict[str, int] = {}
    for row in rows:
        if row.action == Action.CAPTURE_CARBON:
            period = row.period or UNKNOWN
            lbs[period] = lbs.get(period, 0) + row.amount
    current_period = str(current.get("reportingPeriod") or "") if current is not None else ""
    emitted = current.get("totalTco2e") if current is not None else None
    if not isinstance(emitted, (int, float)) or isinstance(emitted, bool):
        emitted = None
    if current_period:
        lbs.setdefault(current_period, 0)
    found = []
    for period, amount in sorted(lbs.items()):
        offset = tonnes(amount)
        if current is None:
            found.append(PeriodCoverage(period, offset, None, None, "emissions unavailable"))
        elif period == UNKNOWN:
            note = "captured without a known reporting period"
            found.append(PeriodCoverage(period, offset, None, None, note))
        elif period != current_period or emitted is None:
            note = f"CarbonPass serves the current period ({current_period or 'none'}) alone"
            found.append(PeriodCoverage(period, offset, None, None, note))
        else:
            share = round(offset / emitted * 100, 2) if emitted > 0 else None
            found.append(PeriodCoverage(period, offset, float(emitted), share, None))
    return found


# -- rendering ------------------------------------------------------------------------------

CSV_COLUMNS = [name for name in ImpactRow.__slots__]


def csv_safe(value: Any) -> Any:
    """A cell a spreadsheet shows as text: one starting like a formula gets a leading `'`."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def to_csv(report: ImpactReport) -> str:
    """The standing impacts, one a line (reversed duplicates are not in it: never counted)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for row in report.rows:
        writer.writerow([csv_safe(getattr(row, name)) for name in CSV_COLUMNS])
    return out.getvalue()


def csv_filename(query: ReportQuery) -> str:
    return f"carbonhook-impacts-{query.start.isoformat()}-to-{query.end.isoformat()}.csv"


def to_json(report: ImpactReport) -> dict[str, Any]:
    """The report as JSON values (times in ISO-8601)."""
    return {
        "from": report.query.start.isoformat(),
        "to": report.query.end.isoformat(),
        "by": report.query.by,
        "generated_at": report.generated_at.isoformat(),
        "impacts": [asdict(row) for row in report.rows],
        "totals": [asdict(total) for total in report.totals],
        "coverage": [asdict(period) for period in report.coverage],
        "emissions_note": report.emissions_note,
        "reversed_duplicates": [
            asdict(duplicate)
            | {"cancelled_at": duplicate.cancelled_at and duplicate.cancelled_at.isoformat()}
            for duplicate in report.reversed
        ],
    }
