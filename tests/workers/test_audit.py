"""The audit (workers/audit.py): the ledger against 1ClickImpact's records, proven duplicates
reversed, records nobody can prove ours reported and left alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support import CP_KEY, IMPACT_KEY, ROOT, Harness, RunningEmulator, make_body, query

RULES = """
[[rule]]
name = "published"
on = "crp.generated"
when = { status = "published" }
capture_lbs = 500
customer_email = "esg@example.com"
"""


@pytest.fixture
def harness(db_url: str, emulator: RunningEmulator) -> Iterator[Harness]:
    h = Harness(db_url, emulator, RULES)
    yield h
    h.runtime.close()


def auditor(harness: Harness) -> Any:
    return harness.runtime.sweeper.audit.__self__  # type: ignore[union-attr]


def tag_of_row(harness: Harness, capture_id: int, attempt: str = "elsewhere") -> dict[str, str]:
    deployment = harness.processor.ledger.deployment_id()
    return {"carbonhook_tag": f"{deployment}/{capture_id}/{attempt}", "carbonhook_capture": str(capture_id)}


def test_a_capture_finished_late_and_sent_again_stands_once_after_the_audit(db_url: str, emulator: RunningEmulator):
    emulator.control("profile", {"name": "strict", "records_lag_s": 0.0, "records_metadata": True})
    harness = Harness(db_url, emulator, RULES, http_timeout_s=0.5, reconcile_after_s=1)
    try:
        # 1ClickImpact finishes the first call after the settle window: the row is sent again.
        emulator.control("faults", {"endpoint": "capture_carbon", "mode": "late_finish", "delay_s": 3, "times": 1})
        event_id = harness.deliver(make_body())
        assert harness.settle(event_id) == "succeeded"
        time.sleep(3.5)  # now the late one stands too
        assert len(emulator.impacts) == 2
        report = auditor(harness).run()
        [kept] = query(harness.db, "SELECT user_id, time_utc FROM captures")
        standing = [(i["user_id"], i["time_utc"]) for i in emulator.impacts]
        assert standing == [kept]
        [cancelled] = httpx_get(emulator, "/_emulator/cancelled")
        assert (cancelled["user_id"], cancelled["time_utc"]) != kept
        assert "capture 1" in cancelled["reason"]
        assert [r["capture_id"] for r in report.reversed] == [1] and report.discrepancies == 0
        reversals = harness.processor.ledger.list_captures()[0]["reversals"]
        assert [(r["user_id"], r["time_utc"]) for r in reversals] == [(cancelled["user_id"], cancelled["time_utc"])]
        # A second audit finds nothing more to do (the reversed record may still be listed).
        again = auditor(harness).run()
        assert again.reversed == [] and again.discrepancies == 0
        assert len(httpx_get(emulator, "/_emulator/cancelled")) == 1
    finally:
        harness.runtime.close()


def reset(emulator: RunningEmulator) -> None:
    import httpx

    httpx.post(f"{emulator.base}/_emulator/reset", timeout=5).raise_for_status()


def httpx_get(emulator: RunningEmulator, path: str) -> Any:
    import httpx

    return httpx.get(f"{emulator.base}{path}", timeout=5).json()


def test_without_metadata_in_the_listings_a_second_record_is_reported_never_cancelled(db_url: str, emulator: RunningEmulator):
    emulator.control("profile", {"name": "strict", "records_lag_s": 0.0})
    harness = Harness(db_url, emulator, RULES, http_timeout_s=0.5, reconcile_after_s=1)
    try:
        emulator.control("faults", {"endpoint": "capture_carbon", "mode": "late_finish", "delay_s": 3, "times": 1})
        assert harness.settle(harness.deliver(make_body())) == "succeeded"
        time.sleep(3.5)
        report = auditor(harness).run()
        assert report.confirmed == 1 and len(report.untagged) == 1  # nothing proves it ours
        assert report.reversed == [] and len(emulator.impacts) == 2
    finally:
        harness.runtime.close()


def test_a_record_tagged_with_a_row_the_ledger_gave_up_on_is_attached(harness: Harness):
    harness.emulator.control("faults", {"endpoint": "capture_carbon", "status": 429, "times": 1})
    event_id = harness.deliver(make_body())
    assert harness.processor.process(event_id) == "retry"
    [(capture_id, status)] = query(harness.db, "SELECT id, status FROM captures")
    assert status == "failed"
    made = harness.emulator.state.record_impact("capture_carbon", 500, customer_email="esg@example.com", metadata=tag_of_row(harness, capture_id))
    report = auditor(harness).run()
    assert report.attached == [capture_id]
    assert query(harness.db, "SELECT status, user_id, time_utc FROM captures") == [("captured", made.user_id, made.time_utc)]
    harness.due_now(event_id)
    assert harness.processor.process(event_id) == "succeeded"
    assert len(harness.emulator.impacts) == 1  # attached, so never sent again


def test_a_captured_row_with_no_record_is_flagged(harness: Harness):
    event_id = harness.deliver(make_body())
    assert harness.processor.process(event_id) == "succeeded"
    reset(harness.emulator)  # the record is gone from 1ClickImpact
    time.sleep(1.1)  # past the settle window (1 s in tests)
    report = auditor(harness).run()
    assert [f["capture_id"] for f in report.flagged] == [1] and report.discrepancies == 1
    assert query(harness.db, "SELECT audit_note IS NOT NULL FROM captures") == [(True,)]


def test_records_carbonhook_did_not_make_are_reported_and_never_cancelled(harness: Harness):
    harness.emulator.state.record_impact("capture_carbon", 500, customer_email="esg@example.com")
    other = {"carbonhook_tag": "00000000-0000-0000-0000-000000000000/1/x", "carbonhook_capture": "1"}
    harness.emulator.state.record_impact("capture_carbon", 500, customer_email="esg@example.com", metadata=other)
    event_id = harness.deliver(make_body())
    assert harness.processor.process(event_id) == "succeeded"
    report = auditor(harness).run()
    assert len(report.untagged) == 1 and report.foreign == 1
    assert report.reversed == [] and report.discrepancies == 0
    assert len(harness.emulator.impacts) == 3
    assert httpx_get(harness.emulator, "/_emulator/cancelled") == []


def test_the_audit_pages_through_the_listings_once_not_once_per_capture(harness: Harness):
    for n in range(5):
        assert harness.processor.process(harness.deliver(make_body(subject=f"crp_{n}"))) == "succeeded"
    before = len(httpx_get(harness.emulator, "/_emulator/calls"))
    report = auditor(harness).run()
    calls = httpx_get(harness.emulator, "/_emulator/calls")[before:]
    assert sorted(c["endpoint"] for c in calls) == ["customer_records", "records"]
    assert report.confirmed == 5 and report.discrepancies == 0


def test_carbonhook_audit_exits_1_while_a_discrepancy_remains(harness: Harness):
    event_id = harness.deliver(make_body())
    assert harness.processor.process(event_id) == "succeeded"
    env = {
        **os.environ,
        "CARBONHOOK_DATABASE_URL": harness.db,
        "CARBONHOOK_IMPACT_API_URL": harness.emulator.base,
        "CARBONHOOK_IMPACT_API_KEY": IMPACT_KEY,
        "CARBONHOOK_CARBONPASS_API_KEY": CP_KEY,
        "CARBONHOOK_RECONCILE_AFTER_S": "0.5",
    }

    def audit() -> tuple[int, dict[str, Any]]:
        done = subprocess.run([sys.executable, "-m", "carbonhook", "audit", "--json"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
        return done.returncode, json.loads(done.stdout)

    code, report = audit()
    assert code == 0 and report["confirmed"] == 1
    reset(harness.emulator)
    time.sleep(0.6)
    code, report = audit()
    assert code == 1 and report["discrepancies"] == 1 and report["flagged"][0]["capture_id"] == 1


def test_an_unknown_capture_that_never_happened_is_proved_so_and_failed(harness: Harness):
    harness.emulator.control("faults", {"endpoint": "capture_carbon", "status": 502, "times": 1})
    event_id = harness.deliver(make_body())
    assert harness.processor.process(event_id) == "retry"
    harness.due_now(event_id)
    claimed = harness.processor.store.claim(event_id, lease_s=60)
    assert claimed is not None
    assert harness.processor.store.finish(claimed, "failed", error="gave up")  # retries ran out
    time.sleep(1.1)  # past the settle window; 1ClickImpact lists nothing: absence is proved
    report = auditor(harness).run()
    assert report.not_found == [1] and report.discrepancies == 0
    assert query(harness.db, "SELECT status FROM captures WHERE id = 1") == [("failed",)]
    assert query(harness.db, "SELECT lbs FROM spend WHERE \"window\" LIKE 'day:%'") == [(0,)]
    harness.processor.store.replay(event_id, admin="ops", via="cli", reason="again", status="queued")
    assert harness.processor.process(event_id) == "succeeded"
    assert len(harness.emulator.impacts) == 1


def test_without_metadata_an_unknown_capture_past_its_window_is_left_for_a_person(db_url: str, emulator: RunningEmulator):
    emulator.control("profile", {"name": "strict", "records_lag_s": 0.0})
    harness = Harness(db_url, emulator, RULES)
    try:
        assert harness.processor.process(harness.deliver(make_body(subject="crp_done"))) == "succeeded"
        emulator.control("faults", {"endpoint": "capture_carbon", "status": 502, "times": 1})
        lost = harness.deliver(make_body(subject="crp_lost"))
        assert harness.processor.process(lost) == "retry"
        time.sleep(1.1)
        report = auditor(harness).run()
        assert report.not_found == [] and [f["capture_id"] for f in report.flagged] == [2]
        assert query(harness.db, "SELECT status FROM captures WHERE id = 2") == [("unknown",)]
    finally:
        harness.runtime.close()
