"""`carbonhook notify test`: one notification to every configured destination, now."""

from __future__ import annotations

import argparse

from carbonhook.cli.bootstrap import settings_for
from carbonhook.cli.outbound import build_notifier
from carbonhook.cli.tables import print_json, print_table
from carbonhook.errors import SettingsError


def notify_test(args: argparse.Namespace) -> int:
    """Exit 1 if any destination did not take it (2 with none configured)."""
    notifier = build_notifier(settings_for())
    try:
        if not notifier.destinations:
            raise SettingsError(
                "no destination: set CARBONHOOK_NOTIFY_URL, or CARBONHOOK_SMTP_URL and "
                "CARBONHOOK_NOTIFY_EMAIL"
            )
        results = notifier.send_test()
    finally:
        notifier.client.close()
        notifier.outbox.engine.dispose()
    failed = any(error is not None for _, error in results)
    rows = [{"destination": d.shown, "ok": error is None, "error": error} for d, error in results]
    if args.json:
        print_json({"destinations": rows, "ok": not failed})
    else:
        print_table(
            "notify test",
            ["destination", "result"],
            [
                [row["destination"], "ok" if row["ok"] else f"failed: {row['error']}"]
                for row in rows
            ],
        )
    return 1 if failed else 0
