"""The ledger under concurrency: limits never overshoot, deltas never offset the same growth twice."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from carbonhook.captures import PlannedCapture
from carbonhook.ledger import Ledger
from receiver.events import parse_delivery
from tests.support import (
    RunningEmulator,
    make_body,
    query,
    sent_statements,
    settings_for_test,
    store_delivery,
)
from workers.planning import DeltaPlan
from workers.rules import Limits, parse_rules


def engine_for(db: str) -> Any:
    from carbonhook.database import create_sync_engine

    return create_sync_engine(db, pool_size=25)


def planned(rule: str, amount: int, part: int = 0) -> PlannedCapture:
    return PlannedCapture(rule=rule, part=part, action="capture_carbon", amount=amount, customer_email=None, customer_name=None, notify=True, dry_run=False)


def race(workers: int, target: Any) -> list[Any]:
    results: list[Any] = [None] * workers
    barrier = threading.Barrier(workers)

    def run(n: int) -> None:
        barrier.wait()
        results[n] = target(n)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_twenty_workers_racing_toward_the_day_limit_never_pass_it(db_url: str):
    engine = engine_for(db_url)
    ledger = Ledger(engine)
    event_id = store_delivery(db_url, make_body())
    rows = [ledger.ensure(event_id, f"crp_{n}", planned("r", 700), "h") for n in range(20)]
    limits = Limits(max_lbs_per_day=5000)
    decisions = race(20, lambda n: ledger.begin_attempt(rows[n], limits).decision)
    engine.dispose()
    assert decisions.count("go") == 7  # 7 × 700 = 4900 ≤ 5000 < 8 × 700
    assert decisions.count("held") == 13
    day = query(db_url, "SELECT lbs FROM spend WHERE \"window\" LIKE 'day:%'")[0][0]
    assert day == 4900


def ledger_after_a_first_capture(db_url: str, lbs: int) -> tuple[Any, Ledger, int]:
    """A ledger whose spend rows of today exist: one capture of `lbs` already reserved."""
    engine = engine_for(db_url)
    ledger = Ledger(engine)
    event_id = store_delivery(db_url, make_body())
    first = ledger.ensure(event_id, "crp_first", planned("r", lbs), "h")
    assert ledger.begin_attempt(first, Limits()).decision == "go"
    return engine, ledger, event_id


def test_racing_toward_the_limits_with_the_spend_rows_already_there_never_passes_them(db_url: str):
    # The rows exist (an earlier capture today): on PostgreSQL each reservation is then one
    # statement, and the ones that find a limit reached fall back to the transaction.
    engine, ledger, event_id = ledger_after_a_first_capture(db_url, 100)
    rows = [ledger.ensure(event_id, f"crp_{n}", planned("r", 700), "h") for n in range(20)]
    limits = Limits(max_lbs_per_day=10_000, max_lbs_per_month=5_000)
    decisions = race(20, lambda n: ledger.begin_attempt(rows[n], limits).decision)
    engine.dispose()
    assert decisions.count("go") == 7  # 100 + 7 × 700 = 5000 ≤ 5000 (the month) < 100 + 8 × 700
    assert decisions.count("held") == 13
    # Nothing half-reserved: the day was not charged for the captures the month refused.
    assert query(db_url, 'SELECT lbs FROM spend ORDER BY "window"') == [(5000,), (5000,)]
    assert query(db_url, "SELECT count(*) FROM captures WHERE spend_day IS NOT NULL") == [(8,)]


def test_an_approved_capture_is_reserved_past_the_limits(db_url: str):
    engine, ledger, event_id = ledger_after_a_first_capture(db_url, 900)
    row = ledger.ensure(event_id, "crp_big", planned("r", 500), "h")
    assert ledger.begin_attempt(row, Limits(max_lbs_per_day=1000)).decision == "held"
    assert query(db_url, 'SELECT lbs FROM spend ORDER BY "window"') == [(900,), (900,)]
    approved = ledger.approve(row.id, admin="ops", via="cli")
    assert ledger.begin_attempt(approved, Limits(max_lbs_per_day=1000)).decision == "go"
    engine.dispose()
    assert query(db_url, 'SELECT lbs FROM spend ORDER BY "window"') == [(1400,), (1400,)]


def test_on_postgresql_a_reservation_is_one_statement_once_the_spend_rows_exist(pg_url: str):
    engine = engine_for(pg_url)
    ledger = Ledger(engine)
    event_id = store_delivery(pg_url, make_body())
    rows = [ledger.ensure(event_id, f"crp_{n}", planned("r", 10), "h") for n in range(2)]
    statements = sent_statements(engine)
    assert ledger.begin_attempt(rows[0], Limits(max_lbs_per_day=100)).decision == "go"
    first_of_the_day = len(statements)
    statements.clear()
    assert ledger.begin_attempt(rows[1], Limits(max_lbs_per_day=100)).decision == "go"
    engine.dispose()
    assert first_of_the_day > 1  # the rows were created in the fallback transaction
    assert len(statements) == 1
    assert query(pg_url, 'SELECT lbs FROM spend ORDER BY "window"') == [(20,), (20,)]


def test_many_workers_reserving_at_once_never_deadlock_on_the_spend_rows(db_url: str):
    # Every capture updates the same two rows (today, this month); they must always be locked
    # in one order, or two reservations wait for each other (PostgreSQL then kills one).
    engine = engine_for(db_url)
    ledger = Ledger(engine)
    event_id = store_delivery(db_url, make_body())
    rows = [ledger.ensure(event_id, f"crp_{n}", planned("r", 1), "h") for n in range(16 * 40)]
    limits = Limits(max_lbs_per_day=10**9, max_lbs_per_month=10**9)

    def reserve_forty(n: int) -> list[str]:
        return [ledger.begin_attempt(row, limits).decision for row in rows[n * 40 : (n + 1) * 40]]

    decisions = race(16, reserve_forty)
    engine.dispose()
    assert [d for thread in decisions for d in thread] == ["go"] * 640
    assert query(db_url, 'SELECT lbs FROM spend ORDER BY "window"') == [(640,), (640,)]


def test_a_capture_is_attempted_by_one_worker_only(db_url: str):
    engine = engine_for(db_url)
    ledger = Ledger(engine)
    row = ledger.ensure(store_delivery(db_url, make_body()), "crp_once", planned("r", 10), "h")
    decisions = race(10, lambda n: ledger.begin_attempt(row, Limits()).decision)
    engine.dispose()
    assert sorted(decisions) == ["busy"] * 9 + ["go"]


def test_a_definite_refusal_gives_the_reserved_pounds_back(db_url: str):
    engine = engine_for(db_url)
    ledger = Ledger(engine)
    row = ledger.ensure(store_delivery(db_url, make_body()), "crp_x", planned("r", 400), "h")
    start = ledger.begin_attempt(row, Limits(max_lbs_per_day=500))
    assert start.decision == "go" and start.token is not None
    ledger.failed(row.id, "HTTP 400", 400, token=start.token)
    assert query(db_url, "SELECT lbs FROM spend WHERE \"window\" LIKE 'day:%'") == [(0,)]
    assert query(db_url, "SELECT spend_day FROM captures") == [(None,)]
    again = ledger.get(row.id)
    assert ledger.begin_attempt(again, Limits(max_lbs_per_day=500)).decision == "go"
    engine.dispose()
    assert query(db_url, "SELECT lbs FROM spend WHERE \"window\" LIKE 'day:%'") == [(400,)]


def test_concurrent_bills_of_one_site_offset_each_tonne_once(db_url: str):
    ruleset = parse_rules('[[rule]]\nname = "growth"\non = "bill.confirmed"\noffset_delta = { fraction = 1.0, of = "total" }\n')
    rule = ruleset.rules[0]
    engine = engine_for(db_url)
    ledger = Ledger(engine)
    event_id = store_delivery(db_url, make_body(event="bill.confirmed", subject="bill_0"))

    def bill(n: int, tonnes: float) -> list[Any]:
        plan = DeltaPlan(rule=rule, site_id="site_1", period="2025-26", current_tco2e=tonnes, dry_run=False, customer_email=None, customer_name=None)
        return ledger.ensure_delta(event_id, f"bill_{n}", plan, ruleset.sha256)

    # Ten bills confirmed at once, all seeing the site at 10 t: 10 t is offset once in all.
    rows = race(10, lambda n: bill(n, 10.0))
    amounts = sorted(r.amount for found in rows for r in found)
    assert sum(amounts) == round(10 * 2204.62262)
    assert amounts.count(0) == 9
    # The site grows to 12 t: the next bill offsets the 2 t of growth only.
    assert [r.amount for r in bill(100, 12.0)] == [round(2 * 2204.62262)]
    # The same bill processed again reuses its rows: nothing new.
    assert [r.amount for r in bill(100, 15.0)] == [round(2 * 2204.62262)]
    # A new reporting period starts from zero.
    plan = DeltaPlan(rule=rule, site_id="site_1", period="2026-27", current_tco2e=1.0, dry_run=False, customer_email=None, customer_name=None)
    assert [r.amount for r in ledger.ensure_delta(event_id, "bill_200", plan, ruleset.sha256)] == [2205]
    engine.dispose()


class Worker:
    def __init__(self, db: str, emulator: RunningEmulator, rules: str) -> None:
        from dramatiq.brokers.stub import StubBroker

        from carbonhook.cli.bootstrap import build_worker
        from workers.rules import RulesHolder

        settings = settings_for_test(db, emulator)
        self.runtime = build_worker(settings, broker=StubBroker(), rules=RulesHolder(settings.rules_file, parse_rules(rules)))
        self.processor = self.runtime.processor
        self.processor.enqueue = lambda event_id, delay: None


@pytest.fixture
def worker_factory(db_url: str, emulator: RunningEmulator) -> Any:
    made: list[Worker] = []

    def make(rules: str) -> Worker:
        made.append(Worker(db_url, emulator, rules))
        return made[-1]

    yield make
    for w in made:
        w.runtime.close()


def test_over_the_limit_is_held_then_approved_and_sent_exactly_once(db_url: str, emulator: RunningEmulator, worker_factory: Any):
    from carbonhook.admin import Admin

    w = worker_factory('[limits]\nmax_lbs_per_day = 600\n[[rule]]\nname = "flat"\non = "crp.generated"\ncapture_lbs = 500\n')
    first = store_delivery(db_url, make_body(subject="crp_l1"))
    second = store_delivery(db_url, make_body(subject="crp_l2"))
    assert w.processor.process(first) == "succeeded"
    assert w.processor.process(second) == "held"
    held = query(db_url, "SELECT id, status FROM captures WHERE subject_id = 'crp_l2'")[0]
    assert held[1] == "held"
    assert len(emulator.impacts) == 1
    admin = Admin(w.processor.store, w.processor.ledger, lambda ids: None, parse=parse_delivery)
    admin.approve(held[0], admin="ops", via="cli")
    assert w.processor.process(second) == "succeeded"
    assert w.processor.process(second) is None
    assert [i["amount"] for i in emulator.impacts] == [500, 500]
    with pytest.raises(Exception, match="not held"):
        admin.approve(held[0], admin="ops", via="cli")


def test_a_rejected_capture_is_never_sent(db_url: str, emulator: RunningEmulator, worker_factory: Any):
    from carbonhook.admin import Admin

    w = worker_factory('[limits]\nmax_lbs_per_month = 100\n[[rule]]\nname = "flat"\non = "crp.generated"\ncapture_lbs = 500\n')
    event_id = store_delivery(db_url, make_body(subject="crp_r1"))
    assert w.processor.process(event_id) == "held"
    capture_id = query(db_url, "SELECT id FROM captures")[0][0]
    Admin(w.processor.store, w.processor.ledger, lambda ids: None, parse=parse_delivery).reject(capture_id, admin="ops", via="api")
    assert w.processor.process(event_id) == "succeeded"
    assert emulator.impacts == []
    assert query(db_url, "SELECT status FROM captures") == [("rejected",)]


def test_dry_run_records_without_sending_and_switching_it_off_sends_nothing_later(db_url: str, emulator: RunningEmulator, worker_factory: Any):
    from carbonhook.admin import Admin

    rules = '[[rule]]\nname = "flat"\non = "crp.generated"\ncapture_lbs = 5\n'
    dry = worker_factory("dry_run = true\n" + rules)
    event_id = store_delivery(db_url, make_body(subject="crp_dry"))
    assert dry.processor.process(event_id) == "succeeded"
    assert "dry run" in query(db_url, f"SELECT note FROM events WHERE id = {event_id}")[0][0]
    live = worker_factory(rules)
    Admin(live.processor.store, live.processor.ledger, lambda ids: None, parse=parse_delivery).replay(event_id, admin="ops", via="cli", reason="dry run over")
    assert live.processor.process(event_id) == "succeeded"
    assert emulator.impacts == []
    assert query(db_url, "SELECT status, rules_hash IS NOT NULL FROM captures") == [("dry_run", True)]


def test_other_actions_use_their_own_endpoints(db_url: str, emulator: RunningEmulator, worker_factory: Any):
    w = worker_factory('[[rule]]\nname = "trees"\non = "crp.generated"\naction = "plant_tree"\ncapture_lbs = 3\n[[rule]]\nname = "ocean"\non = "crp.generated"\naction = "clean_ocean"\ncapture_lbs = 7\nnotify = false\ncustomer_email = "a@b.co"\n')
    assert w.processor.process(store_delivery(db_url, make_body(subject="crp_actions"))) == "succeeded"
    assert sorted((i["kind"], i["amount"]) for i in emulator.impacts) == [("clean_ocean", 7), ("plant_tree", 3)]
    assert [i["notify"] for i in emulator.impacts if i["kind"] == "clean_ocean"] == [False]
