"""Catch-up (workers/catch_up.py): each site's new emissions reading stored once as an
`emissions.catch_up` event and offset by the `offset_delta` rules through the ledger, on real
SQLite and PostgreSQL against the emulator over real HTTP."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from carbonhook.errors import ApiError
from tests.support import Harness, RunningEmulator, make_body, query
from workers.catch_up import CatchUp
from workers.planning import lbs_from_tonnes
from workers.sweeper import Sweeper

RULES = """
[[rule]]
name = "bill-growth"
on = "bill.confirmed"
offset_delta = { fraction = 1.0 }
customer_email = "esg+{event.siteId}@example.com"
"""
SITE = "site_3rZ1"
SEED_TCO2E = 172.0  # the seed site's emissions in the emulator


def harness_for(db: str, emulator: RunningEmulator, tmp_path: Path, rules: str = RULES) -> Harness:
    path = tmp_path / "rules.toml"
    path.write_text(rules)
    return Harness(db, emulator, rules, rules_file=path, catch_up_interval_s=3600)


@pytest.fixture
def harness(db_url: str, emulator: RunningEmulator, tmp_path: Path) -> Iterator[Harness]:
    h = harness_for(db_url, emulator, tmp_path)
    yield h
    h.runtime.close()


def catch_up_of(harness: Harness) -> CatchUp:
    """The catch-up the worker's sweeper runs (CARBONHOOK_CATCH_UP_INTERVAL_S is set)."""
    [job] = [job for job in harness.runtime.sweeper.jobs if job.name == "catch-up"]
    found: CatchUp = job.run.__self__  # type: ignore[attr-defined]
    return found


def catch_up_and_settle(harness: Harness) -> list[int]:
    """One catch-up; every event it stored processed to its end."""
    report = catch_up_of(harness).run()
    for event_id in report.new_events:
        assert harness.settle(event_id) == "succeeded", harness.status(event_id)
    return report.new_events


def offset_lbs(harness: Harness) -> int:
    """Pounds captured and standing at 1ClickImpact."""
    return sum(impact["amount"] for impact in harness.emulator.impacts)


def test_catch_up_twice_in_a_row_stores_one_event_and_offsets_the_growth_once(harness: Harness):
    [first] = catch_up_and_settle(harness)
    assert query(harness.db, f"SELECT type, subject_id FROM events WHERE id = {first}") == [
        ("emissions.catch_up", f"catch_up:{SITE}:2025-26:{SEED_TCO2E!r}")
    ]
    # The rule's customer is rendered from the catch-up's data as from a bill's.
    assert harness.captures() == [
        ("bill-growth", f"catch_up:{SITE}:2025-26:172.0", 0, lbs_from_tonnes(SEED_TCO2E, 1.0), "captured", "U123", f"esg+{SITE}@example.com")
    ]
    again = catch_up_of(harness).run()
    assert again.new_events == [] and [(s.event_id, s.created) for s in again.stored] == [(first, False)]
    assert query(harness.db, "SELECT count(*) FROM events") == [(1,)]
    assert offset_lbs(harness) == lbs_from_tonnes(SEED_TCO2E, 1.0)

    harness.emulator.state.grow_site_emissions(SITE, 2.5)
    [second] = catch_up_and_settle(harness)
    assert second != first
    assert [row[3] for row in harness.captures()] == [lbs_from_tonnes(SEED_TCO2E, 1.0), lbs_from_tonnes(2.5, 1.0)]
    assert offset_lbs(harness) == lbs_from_tonnes(SEED_TCO2E, 1.0) + lbs_from_tonnes(2.5, 1.0)


def test_a_bill_and_a_catch_up_racing_for_the_same_growth_offset_it_once(harness: Harness):
    catch_up_and_settle(harness)  # the site's emissions so far are offset
    harness.emulator.state.grow_site_emissions(SITE, 5.0)
    bill = harness.deliver(make_body("bill.confirmed", "bill_race1", siteId=SITE))
    [catch_up] = catch_up_of(harness).run().new_events
    start = threading.Barrier(2)
    ends: dict[int, str] = {}

    def work(event_id: int) -> None:
        start.wait()
        ends[event_id] = harness.settle(event_id)

    threads = [threading.Thread(target=work, args=(event_id,)) for event_id in (bill, catch_up)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert ends == {bill: "succeeded", catch_up: "succeeded"}
    # Whichever came second found the growth offset already: its row is `skipped` (0 lbs).
    assert offset_lbs(harness) == lbs_from_tonnes(SEED_TCO2E, 1.0) + lbs_from_tonnes(5.0, 1.0)
    statuses = sorted(status for _, subject, _, _, status, _, _ in harness.captures() if subject != f"catch_up:{SITE}:2025-26:172.0")
    assert statuses == ["captured", "skipped"]
    assert query(harness.db, "SELECT offset_tco2e FROM delta_marks") == [(SEED_TCO2E + 5.0,)]


def test_a_catch_up_after_a_bill_that_offset_the_growth_offsets_nothing_more(harness: Harness):
    bill = harness.deliver(make_body("bill.confirmed", "bill_before", siteId=SITE))
    assert harness.settle(bill) == "succeeded"
    [event_id] = catch_up_and_settle(harness)
    assert offset_lbs(harness) == lbs_from_tonnes(SEED_TCO2E, 1.0)
    assert query(harness.db, f"SELECT amount, status FROM captures WHERE event_id = {event_id}") == [(0, "skipped")]


def test_a_dry_run_reads_and_reports_per_site_and_rule_and_stores_and_sends_nothing(harness: Harness):
    harness.emulator.state.set_site_emissions("site_b", 10.0, 1.0, 8.0, 1.0)
    report = catch_up_of(harness).run(dry_run=True)
    assert [(o.rule, o.site_id, o.period, o.offset_before_tco2e, o.lbs) for o in report.offsets] == [
        ("bill-growth", SITE, "2025-26", 0.0, lbs_from_tonnes(SEED_TCO2E, 1.0)),
        ("bill-growth", "site_b", "2025-26", 0.0, lbs_from_tonnes(10.0, 1.0)),
    ]
    assert query(harness.db, "SELECT count(*) FROM events") == [(0,)]
    assert harness.emulator.impacts == []
    assert {call["endpoint"] for call in harness.emulator.state.calls} == {"company", "emissions"}
    catch_up_and_settle(harness)
    harness.emulator.state.grow_site_emissions(SITE, 1.0)
    later = catch_up_of(harness).run(dry_run=True)
    assert [(o.site_id, o.offset_before_tco2e, o.lbs) for o in later.offsets] == [
        (SITE, SEED_TCO2E, lbs_from_tonnes(1.0, 1.0)),
        ("site_b", 10.0, 0),
    ]
    assert query(harness.db, "SELECT count(*) FROM events") == [(2,)]


def test_the_rules_files_dry_run_applies_to_catch_up_events(db_url: str, emulator: RunningEmulator, tmp_path: Path):
    harness = harness_for(db_url, emulator, tmp_path, "dry_run = true\n" + RULES)
    try:
        [event_id] = catch_up_of(harness).run().new_events
        assert harness.settle(event_id) == "succeeded"
        assert [row[4] for row in harness.captures()] == ["dry_run"]
        assert emulator.impacts == []
    finally:
        harness.runtime.close()


def test_a_rule_on_emissions_catch_up_itself_offsets_growth_like_one_on_bills(db_url: str, emulator: RunningEmulator, tmp_path: Path):
    rules = '[[rule]]\nname = "catch-up-only"\non = "emissions.catch_up"\noffset_delta = { fraction = 0.5 }\n'
    harness = harness_for(db_url, emulator, tmp_path, rules)
    try:
        catch_up_and_settle(harness)
        assert offset_lbs(harness) == lbs_from_tonnes(SEED_TCO2E, 0.5)
        bill = harness.deliver(make_body("bill.confirmed", "bill_unruled", siteId=SITE))
        assert harness.settle(bill) == "ignored"  # the rule is on catch-ups only
    finally:
        harness.runtime.close()


def test_a_carbonpass_error_stores_nothing_and_says_what_failed(harness: Harness):
    harness.emulator.state.set_site_emissions("site_b", 10.0, 1.0, 8.0, 1.0)
    harness.emulator.state.add_fault("emissions", status=404, times=2)
    with pytest.raises(ApiError, match="emissions"):
        catch_up_of(harness).run()
    assert query(harness.db, "SELECT count(*) FROM events") == [(0,)]
    assert harness.enqueued == [] and harness.emulator.impacts == []


def test_without_an_offset_delta_rule_catch_up_reads_nothing(db_url: str, emulator: RunningEmulator, tmp_path: Path):
    harness = harness_for(db_url, emulator, tmp_path, '[[rule]]\nname = "flat"\non = "bill.confirmed"\ncapture_lbs = 5\n')
    try:
        report = catch_up_of(harness).run()
        assert report.note == "no offset_delta rule: nothing to catch up" and report.stored == []
        assert [call["endpoint"] for call in emulator.state.calls] == []
    finally:
        harness.runtime.close()


# -- the sweeper runs it on its period -----------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_sweeper_runs_catch_up_on_its_period_and_a_failure_waits_for_the_next(sqlite_url: str):
    from carbonhook.database import create_sync_engine
    from carbonhook.store import EventStore

    clock = FakeClock()
    runs: list[float] = []

    def catch_up() -> None:
        runs.append(clock.now)
        if len(runs) == 2:
            raise ApiError("GET /company: HTTP 503")

    store = EventStore(create_sync_engine(sqlite_url))
    try:
        sweeper = Sweeper(store, lambda ids: None, interval_s=30, lease_s=300, catch_up=catch_up, catch_up_interval_s=600, clock=clock)
        assert sweeper.run_due() == []
        clock.now += 60  # the first run comes within a minute of start-up
        assert sweeper.run_due() == ["catch-up"]
        clock.now += 599
        assert sweeper.run_due() == []
        clock.now += 1
        assert sweeper.run_due() == ["catch-up"]  # fails: logged, not raised
        clock.now += 600
        assert sweeper.run_due() == ["catch-up"]
        assert runs == [1060.0, 1660.0, 2260.0]
    finally:
        store.engine.dispose()


def test_catch_up_is_off_in_the_sweeper_unless_its_interval_is_set(sqlite_url: str, emulator: RunningEmulator):
    harness = Harness(sqlite_url, emulator, RULES)
    try:
        assert [job.name for job in harness.runtime.sweeper.jobs] == ["audit"]
    finally:
        harness.runtime.close()


def test_a_catch_up_run_by_the_sweeper_is_handed_to_the_queue(harness: Harness):
    sweeper = harness.runtime.sweeper
    for job in sweeper.jobs:
        job.next_at = 0.0
    assert sweeper.run_due() == ["audit", "catch-up"]
    assert query(harness.db, "SELECT type, status FROM events") == [("emissions.catch_up", "queued")]
    messages: Any = harness.broker.queues["carbonhook-events"].qsize()
    assert messages == 1


def test_two_catch_ups_storing_the_same_reading_at_once_store_one_event(db_url: str):
    from carbonhook.catch_ups import CatchUpEvents, Reading
    from carbonhook.database import create_sync_engine
    from carbonhook.schema import utcnow

    engines = [create_sync_engine(db_url) for _ in range(2)]
    start = threading.Barrier(2)
    results: list[list[tuple[int, bool]]] = []

    def store(engine: Any) -> None:
        reading = Reading(SITE, "2025-26", 180.0, {"totalTco2e": 180.0}, utcnow())
        start.wait()
        results.append([(s.event_id, s.created) for s in CatchUpEvents(engine).store([reading])])

    threads = [threading.Thread(target=store, args=(engine,)) for engine in engines]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    finally:
        for engine in engines:
            engine.dispose()
    [event_id] = [row[0] for row in query(db_url, "SELECT id FROM events")]
    assert sorted(results) == [[(event_id, False)], [(event_id, True)]]


def test_a_catch_up_event_lists_shows_and_replays_through_the_admin_api(harness: Harness):
    import httpx

    from carbonhook.cli.bootstrap import build_admin, build_receiver_app
    from carbonhook.cli.lifecycle import start_server
    from tests.support import settings_for_test

    token = "admin-secret-token-catch-up"
    settings = settings_for_test(harness.db, harness.emulator, admin_token=token)
    admin = build_admin(settings, harness.broker)
    server = start_server(build_receiver_app(settings, broker=harness.broker, admin=admin), "127.0.0.1", 0, lifespan="on")
    base, headers = f"http://127.0.0.1:{server.port}/admin/api", {"Authorization": f"Bearer {token}"}
    try:
        [event_id] = catch_up_and_settle(harness)
        listed = httpx.get(f"{base}/events", params={"type": "emissions.catch_up"}, headers=headers, timeout=10).json()
        assert [(e["id"], e["status"]) for e in listed["events"]] == [(event_id, "succeeded")]
        detail = httpx.get(f"{base}/events/{event_id}", headers=headers, timeout=10).json()
        assert detail["type"] == "emissions.catch_up" and '"siteId":"site_3rZ1"' in detail["body"]
        assert [c["status"] for c in detail["captures"]] == ["captured"]
        replayed = httpx.post(f"{base}/events/{event_id}/replay", json={"reason": "check"}, headers=headers, timeout=10)
        assert replayed.json() == {"id": event_id, "previous_status": "succeeded", "status": "queued"}
        harness.due_now(event_id)
        assert harness.settle(event_id) == "succeeded"
        assert len(harness.emulator.impacts) == 1  # the replay settled its own row again
    finally:
        server.stop()
        admin.store.engine.dispose()
