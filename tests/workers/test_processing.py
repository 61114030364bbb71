"""The worker's processing on real databases against the emulator over real HTTP."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from receiver.events import parse_delivery
from tests.support import (
    Harness,
    RunningEmulator,
    make_body,
    query,
    sent_statements,
    wait_until,
)

RULES = """
[[rule]]
name = "published"
on = "crp.generated"
when = { status = "published" }
capture_lbs = 500
customer_email = "esg@example.com"
customer_name = "Example Ltd"

[[rule]]
name = "bill-site"
on = "bill.confirmed"
offset = { fraction = 0.01, of = "total" }
"""


@pytest.fixture
def harness(db_url: str, emulator: RunningEmulator) -> Iterator[Harness]:
    h = Harness(db_url, emulator, RULES)
    yield h
    h.runtime.close()


def test_on_postgresql_an_event_with_one_capture_costs_five_statements(pg_url: str, emulator: RunningEmulator):
    # The event's own statements: without Redis, each call's shared rate budget adds two more
    # (tests/workers/test_rate_limit.py), so the rates are off here.
    harness = Harness(pg_url, emulator, RULES, carbonpass_rate="off", impact_rate="off")
    try:
        # The day's first capture creates the spend rows (a fallback transaction).
        assert harness.processor.process(harness.deliver(make_body())) == "succeeded"
        event_id = harness.deliver(make_body(subject="crp_second"))
        statements = sent_statements(harness.processor.store.engine)
        assert harness.processor.process(event_id) == "succeeded"
    finally:
        harness.runtime.close()
    # The claim, the ledger row, the attempt with its reservation, the capture's answer (as
    # soon as it arrives), and the end of the attempt.
    assert len(statements) == 5, statements
    assert " ".join(statements[-2].split()).startswith("UPDATE captures SET status=")
    assert " ".join(statements[-1].split()).startswith("WITH ended AS (UPDATE events")
    assert query(pg_url, "SELECT status, user_id IS NOT NULL FROM captures ORDER BY id") == [("captured", True)] * 2
    assert query(pg_url, "SELECT status FROM events ORDER BY id") == [("succeeded",)] * 2


def test_a_capture_attempt_records_its_answer_only_while_it_is_the_rows_latest(harness: Harness):
    from carbonhook.captures import Impact, PlannedCapture
    from workers.rules import Limits

    event_id = harness.deliver(make_body())
    ledger = harness.processor.ledger
    planned = PlannedCapture(rule="published", part=0, action="capture_carbon", amount=500, customer_email=None, customer_name=None, notify=True, dry_run=False)
    row = ledger.ensure(event_id, "crp_5tN8xBmQ", planned, "hash")
    first = ledger.begin_attempt(row, Limits())
    assert first.decision == "go" and first.token is not None
    assert ledger.unknown(row.id, "timeout", None, token=first.token)
    # The settle window passed without a record: a newer attempt begins.
    second = ledger.begin_attempt(ledger.get(row.id), Limits())
    assert second.decision == "go" and second.token not in (None, first.token)
    late = Impact(user_id="u_1", time_utc="2026-11-30T11:00:00.000Z", amount=500)
    assert not ledger.captured(row.id, late, token=first.token)  # the stalled worker's answer
    assert not ledger.failed(row.id, "late refusal", 400, token=first.token)
    assert query(harness.db, "SELECT status, user_id FROM captures") == [("pending", None)]
    answer = Impact(user_id="u_2", time_utc="2026-11-30T11:01:00.000Z", amount=500)
    assert ledger.captured(row.id, answer, token=second.token)
    assert query(harness.db, "SELECT status, user_id FROM captures") == [("captured", "u_2")]


def query_engine_update(db: str, sql: str) -> None:
    from sqlalchemy import create_engine, text

    from carbonhook.database import sync_url

    engine = create_engine(sync_url(db))
    with engine.begin() as conn:
        conn.execute(text(sql))
    engine.dispose()


def test_a_published_crp_is_captured_once_with_the_rule_amount_and_customer(harness: Harness):
    event_id = harness.deliver(make_body())
    assert harness.processor.process(event_id) == "succeeded"
    assert harness.status(event_id) == ("succeeded", None)
    [impact] = harness.emulator.impacts
    assert (impact["kind"], impact["amount"], impact["customer_email"], impact["customer_name"]) == ("capture_carbon", 500, "esg@example.com", "Example Ltd")
    assert impact["metadata"]["event"] == str(event_id) and impact["metadata"]["rule"] == "published"
    [capture] = harness.captures()
    assert capture[:5] == ("published", "crp_5tN8xBmQ", 0, 500, "captured")
    assert capture[5] == impact["user_id"]


def test_processing_again_or_a_new_delivery_of_the_same_crp_captures_nothing_more(harness: Harness):
    first = harness.deliver(make_body())
    harness.processor.process(first)
    assert harness.processor.process(first) is None  # finished: the claim refuses it
    second = harness.deliver(make_body(ts="2026-04-07T00:00:00Z"))
    assert harness.processor.process(second) == "succeeded"
    assert len(harness.emulator.impacts) == 1


def test_a_draft_crp_matches_no_rule_and_succeeds_without_capturing(harness: Harness):
    harness.emulator.state.set_crp("crp_draft1", status="draft")
    event_id = harness.deliver(make_body(subject="crp_draft1"))
    assert harness.processor.process(event_id) == "succeeded"
    assert harness.emulator.impacts == []


def test_a_bill_offsets_its_site_emissions(harness: Harness):
    event_id = harness.deliver(make_body(event="bill.confirmed", subject="bill_9vW4kLpR", siteId="site_3rZ1"))
    assert harness.processor.process(event_id) == "succeeded"
    assert [i["amount"] for i in harness.emulator.impacts] == [round(172.0 * 0.01 * 2204.62262)]


@pytest.mark.parametrize("subject", ["crp_bad/../id", "crp_" + "x" * 65, "bill_wrong_type"])
def test_a_malformed_id_fails_permanently_without_any_call(harness: Harness, subject: str):
    event_id = harness.deliver(make_body(subject=subject))
    assert harness.processor.process(event_id) == "failed"
    status, error = harness.status(event_id)
    assert status == "failed" and "data.id" in (error or "")
    assert harness.emulator.state.calls == []


def test_a_crp_that_does_not_exist_fails_with_a_readable_error(harness: Harness):
    harness.emulator.state.remove_crp("crp_gone")
    event_id = harness.deliver(make_body(subject="crp_gone"))
    assert harness.processor.process(event_id) == "failed"
    assert "404" in (harness.status(event_id)[1] or "")
    assert harness.enqueued == []


def test_a_429_is_retried_after_its_retry_after(harness: Harness):
    harness.emulator.control("faults", {"endpoint": "crp", "status": 429, "retry_after": 7, "times": 1})
    event_id = harness.deliver(make_body())
    assert harness.processor.process(event_id) == "retry"
    assert harness.enqueued == [(event_id, 7.0)]
    status, error = harness.status(event_id)
    assert status == "queued" and "429" in (error or "")
    # A stray early message does not cut the delay short: it is put back for the time left.
    assert harness.processor.process(event_id) is None
    assert harness.enqueued[1][0] == event_id and 5 < harness.enqueued[1][1] <= 7
    harness.due_now(event_id)
    # The 429 paused every call to CarbonPass for 7 s: still paused, nothing is sent.
    calls = len(harness.emulator.state.calls)
    assert harness.processor.process(event_id) == "retry"
    assert len(harness.emulator.state.calls) == calls
    query_engine_update(harness.db, "UPDATE rate_budgets SET paused_until_us = 0")  # 7 s later
    harness.due_now(event_id)
    assert harness.processor.process(event_id) == "succeeded"
    assert len(harness.emulator.impacts) == 1
    assert query(harness.db, f"SELECT attempts FROM events WHERE id = {event_id}") == [(1,)]


def test_a_5xx_on_a_read_backs_off_exponentially_then_gives_up(db_url: str, emulator: RunningEmulator, request: pytest.FixtureRequest):
    h = Harness(db_url, emulator, RULES, max_retries=2, retry_min_backoff_s=0.5, retry_max_backoff_s=1.5)
    request.addfinalizer(h.runtime.close)
    emulator.control("faults", {"endpoint": "crp", "status": 503, "times": 10})
    event_id = h.deliver(make_body())
    outcomes = []
    for _ in range(3):
        outcomes.append(h.processor.process(event_id))
        h.due_now(event_id)
    assert outcomes == ["retry", "retry", "failed"]
    assert [delay for _, delay in h.enqueued] == [0.5, 1.0]
    status, error = h.status(event_id)
    assert status == "failed" and "gave up after 3 attempts" in (error or "")
    history = query(db_url, f"SELECT outcome, http_status FROM event_attempts WHERE event_id = {event_id} ORDER BY id")
    assert history == [("retry", 503), ("retry", 503), ("failed", 503)]


def test_a_refused_capture_fails_the_event_and_a_replay_tries_it_again(harness: Harness):
    from carbonhook.admin import Admin

    harness.emulator.control("faults", {"endpoint": "capture_carbon", "status": 400, "times": 1})
    event_id = harness.deliver(make_body())
    assert harness.processor.process(event_id) == "failed"
    assert harness.captures()[0][4] == "failed"
    admin = Admin(harness.processor.store, harness.processor.ledger, lambda ids: None, parse=parse_delivery)
    assert admin.replay(event_id, admin="ops", via="cli", reason="fixed") == "failed"
    assert harness.processor.process(event_id) == "succeeded"
    assert admin.replay(event_id, admin="ops", via="cli", reason="again") == "succeeded"
    assert harness.processor.process(event_id) == "succeeded"
    assert len(harness.emulator.impacts) == 1
    replays = query(harness.db, f"SELECT via, reason, previous_status FROM replays WHERE event_id = {event_id} ORDER BY id")
    assert replays == [("cli", "fixed", "failed"), ("cli", "again", "succeeded")]


def test_a_dropped_connection_after_capturing_is_reconciled_not_repeated(harness: Harness):
    harness.emulator.control("faults", {"endpoint": "capture_carbon", "mode": "drop", "times": 1})
    event_id = harness.deliver(make_body())
    assert harness.processor.process(event_id) == "retry"
    assert harness.captures()[0][4] == "unknown"
    harness.due_now(event_id)
    assert harness.processor.process(event_id) == "succeeded"
    assert len(harness.emulator.impacts) == 1
    assert harness.captures()[0][4] == "captured"


def test_reconciliation_matches_by_amount_and_customer_when_records_lack_metadata(harness: Harness):
    harness.emulator.state.records_include_metadata = False
    harness.emulator.control("faults", {"endpoint": "capture_carbon", "mode": "drop", "times": 1})
    event_id = harness.deliver(make_body())
    assert harness.processor.process(event_id) == "retry"
    harness.due_now(event_id)
    assert harness.processor.process(event_id) == "succeeded"
    assert len(harness.emulator.impacts) == 1
    [impact] = harness.emulator.impacts
    assert harness.captures()[0][5] == impact["user_id"]


def test_an_unknown_capture_that_never_happened_is_sent_after_the_settle_delay(harness: Harness):
    import time

    harness.emulator.control("faults", {"endpoint": "capture_carbon", "status": 502, "times": 1})
    event_id = harness.deliver(make_body())
    assert harness.processor.process(event_id) == "retry"
    assert harness.captures()[0][4] == "unknown"
    time.sleep(1.1)  # reconcile_after_s = 1 in tests
    harness.due_now(event_id)
    assert harness.processor.process(event_id) == "succeeded"
    assert len(harness.emulator.impacts) == 1


def test_a_worker_whose_lease_was_taken_over_cannot_end_the_newer_attempt(harness: Harness):
    from carbonhook.statuses import EventStatus

    store = harness.processor.store
    event_id = harness.deliver(make_body(subject="crp_lease"))
    first = store.claim(event_id, lease_s=0.01)
    assert first is not None
    time.sleep(0.05)  # the lease runs out; another worker takes the event over
    second = store.claim(event_id, lease_s=300)
    assert second is not None and second.attempts == first.attempts + 1
    store.finish(first, EventStatus.SUCCEEDED, note="late")
    assert query(harness.db, f"SELECT status, attempts FROM events WHERE id = {event_id}") == [("processing", 2)]
    assert query(harness.db, f"SELECT count(*) FROM event_attempts WHERE event_id = {event_id}") == [(0,)]
    store.retry_later(second, delay_s=5, error="503", http_status=503)
    assert query(harness.db, f"SELECT status, last_error FROM events WHERE id = {event_id}") == [("queued", "503")]
    rows = query(harness.db, f"SELECT outcome, error, http_status FROM event_attempts WHERE event_id = {event_id}")
    assert rows == [("retry", "503", 503)]


def test_a_worker_holds_its_lease_for_as_long_as_a_call_takes(db_url: str, emulator: RunningEmulator):
    import threading

    harness = Harness(db_url, emulator, RULES, lease_s=1)
    harness.processor.leases.start()  # the heartbeat, as a running worker has it
    try:
        emulator.control("faults", {"endpoint": "capture_carbon", "mode": "hold", "times": 1})
        event_id = harness.deliver(make_body())
        worker = threading.Thread(target=harness.processor.process, args=(event_id,))
        worker.start()
        wait_until(lambda: emulator.state.held == 1, what="the capture call to be in flight")
        [(claimed_until,)] = query(harness.db, f"SELECT lease_until FROM events WHERE id = {event_id}")
        # The call outlasts the lease it was claimed with: the lease is renewed meanwhile.
        wait_until(
            lambda: query(harness.db, f"SELECT lease_until FROM events WHERE id = {event_id}")[0][0] != claimed_until
            and lease_left(harness.db, event_id) > 0.3 and time_past(claimed_until, harness.db),
            what="the lease to be renewed past its first end",
        )
        assert harness.processor.store.claim(event_id, lease_s=60) is None  # nobody takes it over
        emulator.control("release")
        worker.join(timeout=30)
        assert harness.status(event_id)[0] == "succeeded"
        assert len(emulator.impacts) == 1
    finally:
        harness.processor.leases.stop()
        harness.runtime.close()


def lease_left(db: str, event_id: int) -> float:
    """How long the event's lease has left, by the database's clock."""
    return -seconds_since_in_db(db, f"(SELECT lease_until FROM events WHERE id = {event_id})")


def time_past(moment: object, db: str) -> bool:
    """Whether the database's clock has passed `moment` (a value read from a time column)."""
    from datetime import datetime

    assert isinstance(moment, (datetime, str))
    value = moment if isinstance(moment, str) else moment.strftime("%Y-%m-%d %H:%M:%S.%f")
    return seconds_since_in_db(db, f"'{value}'") > 0


def seconds_since_in_db(db: str, sql_time: str) -> float:
    from sqlalchemy import create_engine, literal_column, select

    from carbonhook.clock import seconds_since
    from carbonhook.database import sync_url

    engine = create_engine(sync_url(db))
    with engine.connect() as conn:
        expression = literal_column(sql_time if db.startswith("sqlite") else f"CAST({sql_time} AS timestamp)")
        value = conn.execute(select(seconds_since(expression))).scalar_one()
    engine.dispose()
    return float(value)


# -- any event type: the rules in force decide -----------------------------------------------


def ignored_count(event_type: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("carbonhook_events_ignored_total", {"type": event_type}) or 0.0


def test_an_event_of_a_type_no_rule_is_on_ends_ignored_said_once_per_type_and_counted(
    harness: Harness, caplog: pytest.LogCaptureFixture
):
    before = ignored_count("bill.calculated")
    ids = [harness.deliver(make_body(event="bill.calculated", subject=f"bill_c{n}", siteId="site_3rZ1")) for n in range(3)]
    with caplog.at_level("WARNING", logger="workers.processing"):
        assert [harness.processor.process(i) for i in ids] == ["ignored"] * 3
    assert harness.status(ids[0]) == ("ignored", None)
    assert query(harness.db, f"SELECT note FROM events WHERE id = {ids[0]}") == [("no rule is on 'bill.calculated'",)]
    said = [r for r in caplog.records if "bill.calculated" in r.getMessage()]
    assert len(said) == 1 and said[0].levelname == "WARNING"
    assert "events replay --status ignored --type bill.calculated" in said[0].getMessage()
    assert ignored_count("bill.calculated") - before == 3
    assert harness.emulator.state.calls == [] and harness.captures() == []
    # Ended like any attempt: recorded, and a finished event is not claimed again.
    assert query(harness.db, f"SELECT outcome FROM event_attempts WHERE event_id = {ids[0]}") == [("ignored",)]
    assert harness.processor.process(ids[0]) is None


def test_a_known_type_no_rule_is_on_is_ignored_too(db_url: str, emulator: RunningEmulator, request: pytest.FixtureRequest):
    h = Harness(db_url, emulator, RULES.split("[[rule]]\nname = \"bill-site\"")[0])
    request.addfinalizer(h.runtime.close)
    event_id = h.deliver(make_body(event="bill.confirmed", subject="bill_9vW4kLpR", siteId="site_3rZ1"))
    assert h.processor.process(event_id) == "ignored"
    assert emulator.state.calls == []


def test_once_a_rule_is_on_the_type_replaying_the_ignored_events_processes_them(harness: Harness):
    from carbonhook.admin import Admin
    from carbonhook.event_queries import EventFilter
    from workers.rules import parse_rules

    calculated = [
        harness.deliver(make_body(event="bill.calculated", subject=f"bill_r{n}", ts=f"2026-04-0{n + 1}T00:00:00Z", siteId="site_3rZ1"))
        for n in range(2)
    ]
    other = harness.deliver(make_body(event="company.updated", subject="comp_1"))
    assert [harness.processor.process(i) for i in [*calculated, other]] == ["ignored"] * 3
    # A rule is now on the type (SIGHUP reloads the file; here the holder is given the new one).
    holder = harness.processor.rules
    holder.current = parse_rules(RULES + '\n[[rule]]\nname = "calculated-growth"\non = "bill.calculated"\noffset_delta = { fraction = 0.01 }\n')  # type: ignore[attr-defined]
    admin = Admin(harness.processor.store, harness.processor.ledger, lambda ids: None, parse=parse_delivery)
    replayed = list(admin.replay_matching(EventFilter(status="ignored", type="bill.calculated"), admin="ops", via="cli", reason="rule added"))
    assert replayed == calculated
    assert [harness.processor.process(i) for i in calculated] == ["succeeded", "succeeded"]
    # Read like a bill: the site's emissions, the growth offset once for both.
    assert [i["amount"] for i in harness.emulator.impacts] == [round(172.0 * 0.01 * 2204.62262)]
    assert [c[:2] + c[4:5] for c in harness.captures()] == [
        ("calculated-growth", "bill_r0", "captured"),
        ("calculated-growth", "bill_r1", "skipped"),
    ]
    assert harness.status(other)[0] == "ignored"
    assert query(harness.db, f"SELECT previous_status, reason FROM replays WHERE event_id = {calculated[0]}") == [("ignored", "rule added")]


def test_an_event_whose_captures_stand_is_not_ignored_when_its_rule_is_gone(harness: Harness):
    from carbonhook.admin import Admin
    from workers.rules import parse_rules

    event_id = harness.deliver(make_body())
    assert harness.processor.process(event_id) == "succeeded"
    harness.processor.rules.current = parse_rules(RULES.split("[[rule]]")[0] + "[[rule]]" + RULES.split("[[rule]]")[2])  # type: ignore[attr-defined]
    Admin(harness.processor.store, harness.processor.ledger, lambda ids: None, parse=parse_delivery).replay(event_id, admin="ops", via="cli", reason=None)
    # Its capture is settled as it stands, and the event says no rule matched.
    assert harness.processor.process(event_id) == "succeeded"
    assert query(harness.db, f"SELECT note FROM events WHERE id = {event_id}") == [("no rule matched",)]
    assert harness.captures()[0][4] == "captured" and len(harness.emulator.impacts) == 1


# -- not visible yet is not gone ---------------------------------------------------------------


def iso_ago(seconds: float) -> str:
    from datetime import UTC, datetime, timedelta

    return (datetime.now(UTC) - timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_a_crp_not_found_soon_after_the_event_is_tried_again_until_it_shows(harness: Harness):
    harness.emulator.state.remove_crp("crp_soon")
    event_id = harness.deliver(make_body(subject="crp_soon", ts=iso_ago(5)))
    assert harness.processor.process(event_id) == "retry"
    status, error = harness.status(event_id)
    assert status == "queued" and "HTTP 404" in (error or "") and "not visible yet?" in (error or "")
    assert harness.enqueued == [(event_id, 0.1)]  # the usual backoff (0.1 s in the tests)
    harness.due_now(event_id)
    assert harness.processor.process(event_id) == "retry"
    assert harness.enqueued[-1] == (event_id, 0.2)
    harness.emulator.state.set_crp("crp_soon")  # now it can be read
    harness.due_now(event_id)
    assert harness.processor.process(event_id) == "succeeded"
    assert len(harness.emulator.impacts) == 1
    history = query(harness.db, f"SELECT outcome, http_status FROM event_attempts WHERE event_id = {event_id} ORDER BY id")
    assert history == [("retry", 404), ("retry", 404), ("succeeded", None)]


def test_a_crp_not_found_after_the_grace_window_fails_at_once(harness: Harness):
    harness.emulator.state.remove_crp("crp_gone_late")
    event_id = harness.deliver(make_body(subject="crp_gone_late", ts=iso_ago(901)))
    assert harness.processor.process(event_id) == "failed"
    status, error = harness.status(event_id)
    assert status == "failed"
    assert "HTTP 404" in (error or "") and "still not found 900 s after the event's timestamp" in (error or "")
    assert harness.enqueued == []


def test_the_last_try_within_the_window_is_at_its_end(db_url: str, emulator: RunningEmulator, request: pytest.FixtureRequest):
    h = Harness(db_url, emulator, RULES, not_found_grace_s=60, retry_min_backoff_s=3600, retry_max_backoff_s=7200)
    request.addfinalizer(h.runtime.close)
    emulator.state.remove_crp("crp_late")
    event_id = h.deliver(make_body(subject="crp_late", ts=iso_ago(57)))
    assert h.processor.process(event_id) == "retry"
    [(_, delay)] = h.enqueued
    assert 0.5 < delay <= 3  # the window's end, not an hour's backoff past it
    # Past the window, the 404 is what it was before: permanent.
    time.sleep(delay)

    def tried_again() -> str | None:
        h.due_now(event_id)
        return h.processor.process(event_id)

    assert wait_until(lambda: tried_again() == "failed", timeout=10, what="the 404 after the window")
    assert "still not found 60 s after" in (h.status(event_id)[1] or "")


def test_a_sites_emissions_not_found_soon_after_a_bill_are_tried_again(db_url: str, emulator: RunningEmulator, request: pytest.FixtureRequest):
    h = Harness(db_url, emulator, RULES, not_found_grace_s=600)
    request.addfinalizer(h.runtime.close)
    fresh = h.deliver(make_body(event="bill.confirmed", subject="bill_new", ts=iso_ago(1), siteId="site_new"))
    old = h.deliver(make_body(event="bill.confirmed", subject="bill_old", ts=iso_ago(3600), siteId="site_gone"))
    assert h.processor.process(fresh) == "retry"
    assert "GET /emissions: HTTP 404" in (h.status(fresh)[1] or "")
    assert h.processor.process(old) == "failed"
    emulator.state.set_site_emissions("site_new", 10.0, 1.0, 2.0, 7.0)
    h.due_now(fresh)
    assert h.processor.process(fresh) == "succeeded"
    assert [i["amount"] for i in emulator.impacts] == [round(10.0 * 0.01 * 2204.62262)]


def test_without_a_grace_window_a_404_is_permanent_at_once(db_url: str, emulator: RunningEmulator, request: pytest.FixtureRequest):
    h = Harness(db_url, emulator, RULES, not_found_grace_s=0)
    request.addfinalizer(h.runtime.close)
    emulator.state.remove_crp("crp_never")
    event_id = h.deliver(make_body(subject="crp_never", ts=iso_ago(0)))
    assert h.processor.process(event_id) == "failed"


def test_an_event_of_a_type_no_rule_is_on_ends_ignored_after_other_events_captured(harness: Harness):
    # On SQLite the claim once asked `captures.event_id = captures.id` (RETURNING names columns
    # bare): with capture 1 of event 1 stored, every later event looked as if it had captures.
    assert harness.processor.process(harness.deliver(make_body())) == "succeeded"
    later = harness.deliver(make_body("bill.calculated", "bill_after", siteId="site_3rZ1"))
    assert harness.processor.process(later) == "ignored"
