"""The dashboard's Report page: its form, totals, emissions covered, reversed duplicates apart,
and its CSV download, in headless Chromium (screenshots land in test-artifacts/screenshots/)."""

from __future__ import annotations

import csv
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import insert

from carbonhook.schema import Reversal, utcnow
from tests.receiver.test_dashboard import (  # noqa: F401 (chromium is a fixture)
    SCREENSHOTS,
    TOKEN,
    Site,
    add_capture,
    add_event,
    chromium,
)
from tests.support import RunningEmulator, make_body, query, settings_for_test

RULES = """
[[rule]]
name = "offset-bills"
on = "bill.confirmed"
offset = { fraction = 0.01, of = "total" }
customer_email = "-esg+1@example.com"
"""


def test_an_admin_reads_the_impact_report_and_downloads_it_as_csv(
    chromium: Any,  # noqa: F811 (the fixture imported above)
    sqlite_url: str,
    emulator: RunningEmulator,
    tmp_path: Path,
):
    from concurrent.futures import ThreadPoolExecutor

    from dramatiq.brokers.stub import StubBroker

    from carbonhook.cli.bootstrap import build_worker
    from carbonhook.cli.outbound import carbonpass_emissions
    from tests.support import store_delivery
    from workers.rules import RulesHolder, parse_rules

    settings = settings_for_test(sqlite_url, emulator)
    worker = build_worker(settings, broker=StubBroker(), rules=RulesHolder(settings.rules_file, parse_rules(RULES)))
    worker.processor.enqueue = lambda event_id, delay=0: None
    site = Site(sqlite_url, emulator=emulator, emissions=carbonpass_emissions(settings))
    desktop = chromium.new_context(viewport={"width": 1280, "height": 860}, accept_downloads=True)
    desktop.set_default_timeout(5000)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    today = utcnow().date()

    def deliver(subject: str) -> str:
        body = make_body("bill.confirmed", subject, siteId="site_3rZ1")
        return str(worker.processor.process(store_delivery(sqlite_url, body)))

    try:
        # Playwright's sync API owns this thread's loop: the worker runs on another.
        with ThreadPoolExecutor(1) as pool:
            assert [pool.submit(deliver, f"bill_p{n}").result() for n in range(2)] == ["succeeded"] * 2
        dry = add_event(site.engine, "crp_dry1", "succeeded")
        add_capture(site.engine, dry, "crp_dry1", "dry_run", 900)
        kept, user_id = query(sqlite_url, "SELECT id, user_id FROM captures WHERE subject_id = 'bill_p0'")[0]
        with site.engine.begin() as conn:
            conn.execute(
                insert(Reversal).values(
                    capture_id=kept, user_id=user_id, time_utc=f"{today.isoformat()}T00:00:00.001Z",
                    reason="a second impact for capture", found_at=datetime.now(UTC), cancelled_at=datetime.now(UTC),
                )
            )
        page = desktop.new_page()
        page.goto(f"{site.base}/admin/report")
        assert page.url.startswith(f"{site.base}/admin/login")
        page.fill("#token", TOKEN)
        page.click("button:has-text('Sign in')")
        page.click("nav >> text=Report")
        assert page.url.startswith(f"{site.base}/admin/report")
        assert page.locator("nav a[aria-current=page]").inner_text() == "Report"

        # This month by month: two bills captured; the dry run never counts.
        assert page.locator("#impacts tbody tr").count() == 2
        assert "crp_dry1" not in page.locator("#impacts").inner_text()
        total = page.locator("#totals tbody tr")
        assert total.count() == 1
        lbs = sum(int(a) for (a,) in query(sqlite_url, "SELECT amount FROM captures WHERE status = 'captured'"))
        assert f"{lbs:,} lbs carbon" in total.inner_text()
        coverage = page.locator("#coverage tbody tr")
        emitted = emulator.state.emissions_data()["totalTco2e"]
        assert coverage.count() == 1 and "2025-26" in coverage.inner_text() and str(emitted) in coverage.inner_text()
        assert " %" in coverage.inner_text()
        reversed_rows = page.locator("#reversed tbody tr")
        assert reversed_rows.count() == 1 and f"#{kept}" in reversed_rows.inner_text()
        page.screenshot(path=str(SCREENSHOTS / "report-desktop.png"), full_page=True)

        # Totals by site, for today alone.
        page.fill("input[name=from]", today.isoformat())
        page.select_option("select[name=by]", "site")
        page.click("button:has-text('Show')")
        assert "by=site" in page.url
        assert page.locator("#totals tbody tr td").first.inner_text() == "site_3rZ1"

        # The CSV download holds the standing impacts, their proof, and no formula.
        with page.expect_download() as waiting:
            page.click("#download-csv")
        download = waiting.value
        assert download.suggested_filename == f"carbonhook-impacts-{today.isoformat()}-to-{today.isoformat()}.csv"
        saved = tmp_path / "report.csv"
        download.save_as(saved)
        with saved.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        expected = query(sqlite_url, "SELECT user_id, time_utc FROM captures WHERE status = 'captured' ORDER BY time_utc")
        assert [(r["user_id"], r["time_utc"]) for r in rows] == [tuple(e) for e in expected]
        assert {r["customer_email"] for r in rows} == {"'-esg+1@example.com"}

        # A bad date is a page that says so.
        page.goto(f"{site.base}/admin/report?from=2026-02-30")
        assert "'from' is not a date" in page.locator("main").inner_text()
        outsider = chromium.new_context()
        assert outsider.request.get(f"{site.base}/admin/report.csv", max_redirects=0).status == 303
        outsider.close()
    finally:
        desktop.close()
        site.close()
        worker.close()
