"""`GET /admin/api/report` over real HTTP: behind the token, JSON or CSV, 400 for bad input,
and still an answer when CarbonPass cannot be reached."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from tests.support import RunningEmulator, make_body, settings_for_test, store_delivery

TOKEN = "report-admin-token-0123456789"
RULES = """
[[rule]]
name = "offset-bills"
on = "bill.confirmed"
offset = { fraction = 0.01, of = "total" }
customer_email = "=HYPERLINK(\\"https://evil.example\\")@example.com"
"""


class Api:
    def __init__(self, base: str) -> None:
        self.base = base

    def get(self, token: str | None = TOKEN, **params: str) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.get(f"{self.base}/admin/api/report", params=params, headers=headers, timeout=10)


def serve(db_url: str, emulator: RunningEmulator, **overrides: Any) -> Iterator[Api]:
    from dramatiq.brokers.stub import StubBroker

    from carbonhook.cli.bootstrap import build_admin, build_receiver_app, build_worker
    from carbonhook.cli.lifecycle import start_server
    from workers.rules import RulesHolder, parse_rules

    broker = StubBroker()
    settings = settings_for_test(db_url, emulator, admin_token=TOKEN)
    runtime = build_worker(settings, broker=broker, rules=RulesHolder(settings.rules_file, parse_rules(RULES)))
    runtime.processor.enqueue = lambda event_id, delay: None
    for n in range(2):
        event_id = store_delivery(db_url, make_body("bill.confirmed", f"bill_api{n}", siteId="site_3rZ1"))
        assert runtime.processor.process(event_id) == "succeeded"
    admin = build_admin(settings_for_test(db_url, emulator, admin_token=TOKEN, **overrides), broker)
    server = start_server(build_receiver_app(settings, broker=broker, admin=admin), "127.0.0.1", 0, lifespan="on")
    yield Api(f"http://127.0.0.1:{server.port}")
    server.stop()
    runtime.close()
    admin.store.engine.dispose()


@pytest.fixture
def api(db_url: str, emulator: RunningEmulator) -> Iterator[Api]:
    yield from serve(db_url, emulator)


TODAY = datetime.now(UTC).date().isoformat()


def test_the_report_needs_an_admins_token(api: Api):
    for token in (None, "wrong"):
        answer = api.get(token)
        assert answer.status_code == 401 and answer.json()["error"] == "unauthorized"


def test_the_report_answers_json_with_totals_and_the_emissions_covered(api: Api, emulator: RunningEmulator):
    answer = api.get(**{"from": TODAY, "to": TODAY, "by": "site"})
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
    report = answer.json()
    assert (report["from"], report["to"], report["by"]) == (TODAY, TODAY, "site")
    assert sorted(r["subject_id"] for r in report["impacts"]) == ["bill_api0", "bill_api1"]
    assert {(r["user_id"], r["time_utc"]) for r in report["impacts"]} == {(i["user_id"], i["time_utc"]) for i in emulator.impacts}
    [total] = report["totals"]
    assert (total["group"], total["impacts"]) == ("site_3rZ1", 2)
    assert total["amount"] == sum(r["amount"] for r in report["impacts"])
    [covered] = report["coverage"]
    assert covered["period"] == "2025-26" and covered["emissions_tco2e"] == emulator.state.emissions_data()["totalTco2e"]
    assert covered["share_percent"] > 0 and report["emissions_note"] is None
    assert report["reversed_duplicates"] == []


def test_the_report_as_csv_is_a_download_whose_cells_never_run_as_formulas(api: Api):
    answer = api.get(**{"from": TODAY, "to": TODAY, "format": "csv"})
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "text/csv; charset=utf-8"
    assert answer.headers["content-disposition"] == f'attachment; filename="carbonhook-impacts-{TODAY}-to-{TODAY}.csv"'
    rows = list(csv.DictReader(io.StringIO(answer.text)))
    assert len(rows) == 2
    assert {r["customer_email"] for r in rows} == {"'=HYPERLINK(\"https://evil.example\")@example.com"}


@pytest.mark.parametrize(
    ("params", "says"),
    [
        ({"from": "2026-02-30"}, "'from' is not a date"),
        ({"to": "tomorrow"}, "'to' is not a date"),
        ({"to": "9999-12-31"}, "'to' is not a date"),
        ({"from": "2026-11-30", "to": "2026-11-01"}, "is after"),
        ({"by": "week"}, "unknown grouping"),
        ({"format": "table"}, "unknown format 'table'; one of json, csv"),
        ({"from": "\x00"}, "'from' is not a date"),
    ],
)
def test_a_bad_parameter_is_a_400_that_says_which(api: Api, params: dict[str, str], says: str):
    answer = api.get(**params)
    assert answer.status_code == 400 and answer.headers["content-type"] == "application/json"
    assert says in answer.json()["message"]


def test_without_carbonpass_the_report_still_answers_and_says_why(db_url: str, emulator: RunningEmulator):
    from tests.support import free_port

    for api in serve(db_url, emulator, carbonpass_api_url=f"http://127.0.0.1:{free_port()}/api/v1"):
        answer = api.get(**{"from": TODAY, "to": TODAY})
        assert answer.status_code == 200
        report = answer.json()
        assert len(report["impacts"]) == 2
        assert report["emissions_note"].startswith("CarbonPass could not be asked: GET /emissions: not sent")
        assert [c["emissions_tco2e"] for c in report["coverage"]] == [None]
