"""`carbonhook audit`: the ledger compared with 1ClickImpact's records, now."""

from __future__ import annotations

import argparse

from carbonhook.cli.bootstrap import build_auditor, settings_for
from carbonhook.cli.tables import print_json, print_table


def audit(args: argparse.Namespace) -> int:
    """Exit 1 while a discrepancy remains (a captured row with no record, a duplicate whose
    reversal failed, a record tagged with a row this database does not have)."""
    auditor = build_auditor(settings_for())
    try:
        report = auditor.run(args.since)
    finally:
        auditor.impact.close()
        auditor.ledger.engine.dispose()
    if args.json:
        print_json(report.as_dict())
        return 1 if report.discrepancies else 0
    print(
        f"audit since {report.since:%Y-%m-%d %H:%M:%S} UTC: {report.records} records, "
        f"{report.confirmed} captures confirmed, {len(report.attached)} attached, "
        f"{len(report.reversed)} duplicates reversed, {report.foreign} of other deployments"
    )
    if report.reversed:
        print_table(
            "reversed duplicates",
            ["capture", "user_id", "time_utc"],
            [[r["capture_id"], r["user_id"], r["time_utc"]] for r in report.reversed],
        )
    if report.flagged:
        print_table(
            "flagged", ["capture", "note"], [[f["capture_id"], f["note"]] for f in report.flagged]
        )
    if report.untagged:
        print_table(
            "records carbonhook did not make (reported, never cancelled)",
            ["user_id", "time_utc", "action", "amount", "customer"],
            [
                [u["user_id"], u["time_utc"], u["action"], u["amount"], u["customer_email"] or ""]
                for u in report.untagged
            ],
        )
    for line in report.unknown_rows + report.errors:
        print(f"discrepancy: {line}")
    print(f"{report.discrepancies} discrepancies")
    return 1 if report.discrepancies else 0
