"""The impact report: its rows and totals against the ledger on both databases, the evidence
against the emulator's records, emissions beside the tonnes offset, and its CSV."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Mapping
from datetime import UTC, date, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, insert

from carbonhook.database import create_sync_engine
from carbonhook.errors import BadRequest, RetryableError
from carbonhook.impact_report import (
    ImpactReports,
    ReportQuery,
    check_format,
    coverage,
    csv_safe,
    report_query,
    to_csv,
    to_json,
)
from carbonhook.schema import Capture, Event, Reversal
from tests.support import IMPACT_KEY, Harness, RunningEmulator, make_body, settings_for_test

AT = datetime(2026, 11, 20, 9, tzinfo=UTC)
NOVEMBER = ReportQuery(date(2026, 11, 1), date(2026, 11, 30), "month")
EMISSIONS = {"reportingPeriod": "2025-26", "totalTco2e": 526.5}


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    e = create_sync_engine(db_url, pool_size=1)
    yield e
    e.dispose()


def add_event(engine: Engine, subject: str, **data: Any) -> int:
    kind = "bill.confirmed" if subject.startswith("bill_") else "crp.generated"
    with engine.begin() as conn:
        return int(
            conn.execute(
                insert(Event)
                .values(
                    type=kind,
                    subject_id=subject,
                    event_ts=AT,
                    received_at=AT,
                    body=make_body(kind, subject, "2026-11-20T09:00:00Z", **data),
                    status="succeeded",
                    attempts=1,
                    available_at=AT,
                    updated_at=AT,
                )
                .returning(Event.id)
            ).scalar_one()
        )


def add_capture(
    engine: Engine, event_id: int, subject: str, status: str, amount: int, **values: Any
) -> int:
    row = {
        "event_id": event_id,
        "rule": "offset-bills",
        "subject_id": subject,
        "part": 0,
        "action": "capture_carbon",
        "amount": amount,
        "notify": True,
        "approved": False,
        "status": status,
        "attempts": 1,
        "created_at": AT,
        "updated_at": AT,
    } | values
    with engine.begin() as conn:
        return int(conn.execute(insert(Capture).values(row).returning(Capture.id)).scalar_one())


def seed_ledger(engine: Engine) -> dict[str, int]:
    """Standing impacts in November and around it, rows that never count, and a reversal."""
    bill = add_event(engine, "bill_a1", siteId="site_3rZ1")
    old_bill = add_event(engine, "bill_old", siteId="site_9")  # planned before rows kept a site
    crp = add_event(engine, "crp_c1")
    ids = {
        "bill": add_capture(
            engine, bill, "bill_a1", "captured", 2205, site_id="site_3rZ1", period="2025-26",
            user_id="u_1", time_utc="2026-11-03T10:00:00.000Z", customer_email="=cmd|'/c calc'!A1",
        ),
        "old_bill": add_capture(
            engine, old_bill, "bill_old", "captured", 1000,
            user_id="u_1", time_utc="2026-11-30T23:59:59.999Z",
        ),
        "trees": add_capture(
            engine, crp, "crp_c1", "captured", 3, rule="trees", action="plant_tree",
            user_id="u_1", time_utc="2026-11-15T08:00:00.000Z",
        ),
        "resolved": add_capture(
            engine, crp, "crp_c1", "captured", 500, rule="flat", period="2024-25",
            updated_at=datetime(2026, 11, 16, 12, tzinfo=UTC),
        ),
        "december": add_capture(
            engine, crp, "crp_c1", "captured", 700, rule="later",
            user_id="u_1", time_utc="2026-12-01T00:00:00.000Z",
        ),
    }
    for n, status in enumerate(("dry_run", "skipped", "superseded", "failed", "unknown", "held")):
        add_capture(engine, bill, "bill_a1", status, 999, part=n + 1)
    with engine.begin() as conn:
        conn.execute(
            insert(Reversal).values(
                capture_id=ids["bill"], user_id="u_1", time_utc="2026-11-03T10:00:01.000Z",
                reason="duplicate of capture", found_at=AT, cancelled_at=AT,
            )
        )
    return ids


def test_the_report_counts_captured_rows_recorded_in_the_period_and_nothing_else(engine: Engine):
    ids = seed_ledger(engine)
    report = ImpactReports(engine, lambda: EMISSIONS).report(NOVEMBER)
    assert [r.capture_id for r in report.rows] == [ids["bill"], ids["trees"], ids["resolved"], ids["old_bill"]]
    bill = report.rows[0]
    assert (bill.subject_id, bill.site_id, bill.period, bill.amount, bill.unit) == ("bill_a1", "site_3rZ1", "2025-26", 2205, "lbs carbon")
    assert (bill.user_id, bill.time_utc, bill.recorded_on) == ("u_1", "2026-11-03T10:00:00.000Z", "2026-11-03")
    # A row kept before sites were stored finds its site in the event's data; a row resolved
    # by an admin has no proof and is placed on the day of that decision.
    assert report.rows[3].site_id == "site_9"
    assert (report.rows[2].user_id, report.rows[2].recorded_on) == (None, "2026-11-16")
    totals = [(t.group, t.action, t.impacts, t.amount, t.tonnes_co2e) for t in report.totals]
    assert totals == [("2026-11", "capture_carbon", 3, 3705, 1.681), ("2026-11", "plant_tree", 1, 3, None)]
    # The reversed duplicate is listed apart and counted nowhere.
    assert [(d.capture_id, d.time_utc, d.amount) for d in report.reversed] == [(ids["bill"], "2026-11-03T10:00:01.000Z", 2205)]
    assert sum(t.amount for t in report.totals if t.action == "capture_carbon") == 2205 + 1000 + 500


@pytest.mark.parametrize(
    ("by", "groups"),
    [
        ("day", [("2026-11-03", 2205), ("2026-11-15", 3), ("2026-11-16", 500), ("2026-11-30", 1000)]),
        ("rule", [("flat", 500), ("offset-bills", 3205), ("trees", 3)]),
        ("site", [("(unknown)", 500), ("(unknown)", 3), ("site_3rZ1", 2205), ("site_9", 1000)]),
    ],
)
def test_totals_group_by_day_rule_or_site(engine: Engine, by: str, groups: list[tuple[str, int]]):
    seed_ledger(engine)
    report = ImpactReports(engine, lambda: EMISSIONS).report(ReportQuery(NOVEMBER.start, NOVEMBER.end, by))
    assert [(t.group, t.amount) for t in report.totals] == groups


def test_the_tonnes_offset_stand_beside_the_current_periods_emissions(engine: Engine):
    seed_ledger(engine)
    report = ImpactReports(engine, lambda: EMISSIONS).report(NOVEMBER)
    found = {c.period: (c.tonnes_offset, c.emissions_tco2e, c.share_percent) for c in report.coverage}
    # 2205 lbs are 1.0 t; 526.5 t emitted: 0.19 % covered. The other periods are not served.
    assert found == {"(unknown)": (0.454, None, None), "2024-25": (0.227, None, None), "2025-26": (1.0, 526.5, 0.19)}
    assert report.emissions_note is None


def test_when_carbonpass_cannot_be_asked_the_report_still_renders_and_says_why(engine: Engine):
    seed_ledger(engine)

    def down() -> Mapping[str, Any]:
        raise RetryableError("GET /emissions: not sent (ConnectError: refused)")

    report = ImpactReports(engine, down).report(NOVEMBER)
    assert len(report.rows) == 4
    assert report.emissions_note == "CarbonPass could not be asked: GET /emissions: not sent (ConnectError: refused)"
    assert all(c.emissions_tco2e is None for c in report.coverage)
    assert ImpactReports(engine, None).report(NOVEMBER).emissions_note is not None


def test_coverage_of_a_period_with_no_carbon_still_shows_the_current_emissions():
    assert [(c.period, c.tonnes_offset, c.share_percent) for c in coverage([], EMISSIONS)] == [("2025-26", 0.0, 0.0)]


@pytest.mark.parametrize(
    ("start", "end", "by", "says"),
    [
        ("2026-13-01", None, None, "'from' is not a date YYYY-MM-DD"),
        ("2026-11-1", None, None, "'from' is not a date"),
        (None, "yesterday", None, "'to' is not a date"),
        ("2026-11-30", "2026-11-01", None, "is after 'to'"),
        (None, None, "week", "unknown grouping 'week'"),
    ],
)
def test_a_bad_date_or_grouping_is_a_clear_error(start: str | None, end: str | None, by: str | None, says: str):
    with pytest.raises(BadRequest, match=says):
        report_query(start, end, by, today=date(2026, 11, 20))


def test_the_default_period_is_this_utc_month_to_today_by_month():
    assert report_query(None, "", None, today=date(2026, 11, 20)) == ReportQuery(date(2026, 11, 1), date(2026, 11, 20), "month")
    assert check_format(None) == "table"
    with pytest.raises(BadRequest, match="unknown format 'xml'"):
        check_format("xml")


def test_csv_cells_that_would_run_as_formulas_are_kept_as_text(engine: Engine):
    ids = seed_ledger(engine)
    add_capture(
        engine, add_event(engine, "crp_f"), "crp_f", "captured", 10, rule="+SUM(A1)", customer_name="@evil",
        user_id="-1", time_utc="2026-11-04T00:00:00.000Z",
    )
    report = ImpactReports(engine, lambda: EMISSIONS).report(NOVEMBER)
    rows = list(csv.DictReader(io.StringIO(to_csv(report))))
    assert [int(r["capture_id"]) for r in rows][:1] == [ids["bill"]]
    assert rows[0]["customer_email"] == "'=cmd|'/c calc'!A1"
    formula = next(r for r in rows if r["subject_id"] == "crp_f")
    assert (formula["rule"], formula["customer_name"], formula["user_id"]) == ("'+SUM(A1)", "'@evil", "'-1")
    assert formula["amount"] == "10"
    assert all(r["time_utc"] != "2026-11-03T10:00:01.000Z" for r in rows)  # the reversed one
    assert csv_safe("\tx") == "'\tx" and csv_safe("a=b") == "a=b" and csv_safe(5) == 5
    assert to_json(report)["reversed_duplicates"][0]["cancelled_at"] == AT.isoformat()


RULES = """
[[rule]]
name = "offset-bills"
on = "bill.confirmed"
offset = { fraction = 0.01, of = "total" }

[[rule]]
name = "crp-trees"
on = "crp.generated"
action = "plant_tree"
capture_lbs = 2
customer_email = "esg@example.com"
"""


def records(emulator: RunningEmulator) -> set[tuple[str, str]]:
    found = set()
    for path, key in (("/v1/records", "user_records"), ("/v1/customer_records", "customer_records")):
        answer = httpx.get(emulator.base + path, params={"limit": 1000}, headers={"x-api-key": IMPACT_KEY}, timeout=5)
        found |= {(r["user_id"], r["time_utc"]) for r in answer.json()[key]}
    return found


def test_the_reports_proof_is_1clickimpacts_records_and_the_period_comes_from_planning(db_url: str, emulator: RunningEmulator):
    from carbonhook.cli.outbound import carbonpass_emissions

    harness = Harness(db_url, emulator, RULES)
    try:
        for body in (
            make_body("bill.confirmed", "bill_r1", siteId="site_3rZ1"),
            make_body("bill.confirmed", "bill_r2", siteId="site_3rZ1"),
            make_body("crp.generated", "crp_r3", status="published"),
        ):
            assert harness.settle(harness.deliver(body)) == "succeeded"
        lookup = carbonpass_emissions(settings_for_test(db_url, emulator))
        today = datetime.now(UTC).date()
        report = ImpactReports(harness.processor.store.engine, lookup).report(ReportQuery(today, today, "site"))
    finally:
        harness.runtime.close()
    assert {(r.user_id, r.time_utc) for r in report.rows} == records(emulator)
    assert len(report.rows) == 3
    bills = [r for r in report.rows if r.subject_id.startswith("bill_")]
    assert {(r.site_id, r.period, r.action) for r in bills} == {("site_3rZ1", "2025-26", "capture_carbon")}
    trees = next(r for r in report.rows if r.subject_id == "crp_r3")
    assert (trees.site_id, trees.period, trees.unit, trees.customer_email) == (None, None, "trees", "esg@example.com")
    emitted = emulator.state.emissions_data()["totalTco2e"]
    current = next(c for c in report.coverage if c.period == "2025-26")
    assert current.emissions_tco2e == emitted
    assert current.tonnes_offset == round(sum(r.amount for r in bills) / 2204.62262, 3)
