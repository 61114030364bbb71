"""`carbonhook catch-up`: store each site's new emissions reading as an event the workers offset
(or, with `--dry-run`, say what would be offset), for bill confirmations that never arrived."""

from __future__ import annotations

import argparse

from carbonhook.cli.bootstrap import build_catch_up, settings_for
from carbonhook.cli.tables import print_json, print_table
from carbonhook.queue import is_shared, make_broker


def catch_up(args: argparse.Namespace) -> int:
    """A CarbonPass error stores nothing: the error names it and the command exits 2."""
    settings = settings_for()
    broker = make_broker(settings.broker_url.get_secret_value())
    # Without a queue this process shares, the events stay `pending`, and the sweeper of the
    # running `carbonhook run` hands them over within CARBONHOOK_SWEEP_INTERVAL_S.
    shared = is_shared(broker)
    job = build_catch_up(settings, broker if shared else None)
    try:
        report = job.run(dry_run=args.dry_run)
    finally:
        job.carbonpass.close()
        job.events.engine.dispose()
        broker.close()
    if args.json:
        print_json(report.as_dict())
        return 0
    if report.note:
        print(report.note)
        return 0
    if args.dry_run:
        print_table(
            f"catch-up dry run: {len(report.readings)} sites read, nothing stored or sent",
            ["rule", "site", "period", "current tCO2e", "offset before", "would offset lbs"],
            [
                [
                    o.rule,
                    o.site_id,
                    o.period,
                    o.current_tco2e if o.matched else "",
                    o.offset_before_tco2e if o.matched else "",
                    (f"{o.lbs} (rules' dry run)" if o.dry_run else o.lbs)
                    if o.matched
                    else "no match: " + "; ".join(o.reasons),
                ]
                for o in report.offsets
            ],
        )
        return 0
    new = report.new_events
    print_table(
        f"catch-up: {len(report.readings)} sites read, {len(new)} new events",
        ["event", "site", "period", "total tCO2e", "stored"],
        [
            [
                s.event_id,
                s.reading.site_id,
                s.reading.period,
                s.reading.tco2e,
                "new" if s.created else "before (no new growth)",
            ]
            for s in report.stored
        ],
    )
    if new and not shared:
        print(f"{len(new)} events wait as pending for a running worker's sweeper")
    return 0
