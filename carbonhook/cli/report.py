"""`carbonhook report`: the impact report as a table, CSV or JSON."""

from __future__ import annotations

import argparse
import sys

from carbonhook.cli.bootstrap import build_admin, settings_for
from carbonhook.cli.tables import print_json, print_table
from carbonhook.impact_report import ImpactReport, check_format, report_query, to_csv, to_json
from carbonhook.schema import utcnow


def report(args: argparse.Namespace) -> int:
    answer = check_format(args.format)
    query = report_query(args.start, args.end, args.by, today=utcnow().date())
    admin = build_admin(settings_for(), None)
    try:
        found = admin.impact_report(query)
    finally:
        admin.store.engine.dispose()
    if answer == "csv":
        sys.stdout.write(to_csv(found))
    elif answer == "json":
        print_json(to_json(found))
    else:
        print_tables(found)
    return 0


def _or_dash(value: object) -> object:
    return "—" if value is None else value


def print_tables(found: ImpactReport) -> None:
    """The report for people: impacts, totals, emissions covered, reversed duplicates."""
    q = found.query
    print_table(
        f"{len(found.rows)} impacts standing, {q.start} to {q.end} (UTC, by 1ClickImpact's time)",
        [
            "recorded",
            "rule",
            "subject",
            "site",
            "period",
            "action",
            "amount",
            "customer",
            "user_id",
            "time_utc",
        ],
        [
            [
                r.recorded_on,
                r.rule,
                r.subject_id,
                r.site_id,
                r.period,
                r.action,
                f"{r.amount:,} {r.unit}",
                r.customer_email,
                r.user_id or "(resolved by an admin)",
                r.time_utc,
            ]
            for r in found.rows
        ],
    )
    print_table(
        f"totals by {q.by}",
        [q.by, "action", "impacts", "amount", "tonnes CO2e"],
        [
            [t.group, t.action, t.impacts, f"{t.amount:,} {t.unit}", _or_dash(t.tonnes_co2e)]
            for t in found.totals
        ],
    )
    title = "emissions covered (tonnes of capture_carbon beside CarbonPass's emissions)"
    if found.emissions_note:
        title += f"; emissions unavailable: {found.emissions_note}"
    print_table(
        title,
        ["period", "tonnes offset", "emissions tCO2e", "share %", "note"],
        [
            [
                c.period,
                c.tonnes_offset,
                _or_dash(c.emissions_tco2e),
                _or_dash(c.share_percent),
                c.note,
            ]
            for c in found.coverage
        ],
    )
    print_table(
        f"{len(found.reversed)} reversed duplicates (not counted)",
        [
            "capture",
            "rule",
            "subject",
            "action",
            "amount",
            "user_id",
            "time_utc",
            "reversed",
            "reason",
        ],
        [
            [
                d.capture_id,
                d.rule,
                d.subject_id,
                d.action,
                d.amount,
                d.user_id,
                d.time_utc,
                d.cancelled_at or f"not yet {d.error or ''}".strip(),
                d.reason,
            ]
            for d in found.reversed
        ],
    )
