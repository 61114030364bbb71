"""Admins' decisions on the ledger (carbonhook/ledger.py): each one conditional update on the
row's current status with its spend change and its record (who, via, why, when) in the same
transaction; a refused one changes and records nothing."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.exc import IntegrityError

from carbonhook.captures import Impact, PlannedCapture
from carbonhook.errors import Conflict
from carbonhook.ledger import Ledger
from tests.support import make_body, query, store_delivery
from workers.rules import Limits


def ledger_for(db: str) -> tuple[Any, Ledger]:
    from carbonhook.database import create_sync_engine

    engine = create_sync_engine(db, pool_size=4)
    return engine, Ledger(engine)


def planned(amount: int = 400) -> PlannedCapture:
    return PlannedCapture(rule="r", part=0, action="capture_carbon", amount=amount, customer_email=None, customer_name=None, notify=True, dry_run=False)


BY = {"admin": "ops", "via": "cli"}


def spent(db: str) -> list[tuple[Any, ...]]:
    return query(db, 'SELECT "window", lbs FROM spend ORDER BY "window"')


def test_resolving_a_captured_row_as_not_captured_is_refused_and_keeps_its_spend(db_url: str):
    engine, ledger = ledger_for(db_url)
    row = ledger.ensure(store_delivery(db_url, make_body()), "crp_a", planned(), "h")
    start = ledger.begin_attempt(row, Limits(max_lbs_per_day=1000))
    assert start.token is not None
    assert ledger.captured(row.id, Impact("u", "2026-12-01T00:00:00.000Z", 400), token=start.token)
    before = spent(db_url)
    with pytest.raises(Conflict):
        ledger.resolve(row.id, captured=False, **BY)
    engine.dispose()
    assert spent(db_url) == before and before[0][1] == 400
    assert query(db_url, "SELECT status FROM captures") == [("captured",)]


def test_resolve_applies_to_unknown_rows_only_never_to_a_pending_call_in_flight(db_url: str):
    engine, ledger = ledger_for(db_url)
    row = ledger.ensure(store_delivery(db_url, make_body()), "crp_a", planned(), "h")
    start = ledger.begin_attempt(row, Limits())
    assert start.decision == "go"
    for captured in (True, False):
        with pytest.raises(Conflict):
            ledger.resolve(row.id, captured=captured, **BY)
    engine.dispose()
    assert query(db_url, "SELECT status, attempt_token FROM captures") == [("pending", start.token)]
    assert spent(db_url)[0][1] == 400


def test_resolving_an_unknown_row_as_not_captured_gives_its_spend_back(db_url: str):
    engine, ledger = ledger_for(db_url)
    row = ledger.ensure(store_delivery(db_url, make_body()), "crp_a", planned(), "h")
    start = ledger.begin_attempt(row, Limits())
    assert start.token is not None and ledger.unknown(row.id, "timeout", None, token=start.token)
    resolved = ledger.resolve(row.id, captured=False, **BY)
    engine.dispose()
    assert resolved.status == "failed"
    assert [lbs for _, lbs in spent(db_url)] == [0, 0]


def test_approve_and_reject_apply_to_held_rows_only(db_url: str):
    engine, ledger = ledger_for(db_url)
    row = ledger.ensure(store_delivery(db_url, make_body()), "crp_a", planned(), "h")
    for decide in (ledger.approve, ledger.reject):
        with pytest.raises(Conflict):
            decide(row.id, **BY)
    assert ledger.begin_attempt(row, Limits(max_lbs_per_day=100)).decision == "held"
    assert ledger.reject(row.id, **BY).status == "rejected"
    with pytest.raises(Conflict):
        ledger.approve(row.id, **BY)
    engine.dispose()
    assert query(db_url, "SELECT status FROM captures") == [("rejected",)]


def test_two_admins_deciding_one_held_row_at_once_make_one_decision(db_url: str):
    import threading

    engine, ledger = ledger_for(db_url)
    row = ledger.ensure(store_delivery(db_url, make_body()), "crp_a", planned(), "h")
    assert ledger.begin_attempt(row, Limits(max_lbs_per_day=100)).decision == "held"
    outcomes: list[str] = []
    barrier = threading.Barrier(2)

    def decide(which: Any) -> None:
        barrier.wait()
        try:
            outcomes.append(which(row.id, **BY).status)
        except Conflict:
            outcomes.append("refused")

    threads = [threading.Thread(target=decide, args=(f,)) for f in (ledger.approve, ledger.reject)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    engine.dispose()
    assert sorted(outcomes) in (["pending", "refused"], ["refused", "rejected"])


def decisions(db: str) -> list[tuple[Any, ...]]:
    return query(db, "SELECT capture_id, decision, status, admin, via, reason FROM decisions ORDER BY id")


def test_each_decision_records_who_made_it_through_which_interface_and_why(db_url: str):
    engine, ledger = ledger_for(db_url)
    event = store_delivery(db_url, make_body())
    held = ledger.ensure(event, "crp_a", planned(), "h")
    assert ledger.begin_attempt(held, Limits(max_lbs_per_day=100)).decision == "held"
    lost = ledger.ensure(event, "crp_a", PlannedCapture(rule="r", part=1, action="capture_carbon", amount=10, customer_email=None, customer_name=None, notify=True, dry_run=False), "h")
    start = ledger.begin_attempt(lost, Limits())
    assert start.token is not None and ledger.unknown(lost.id, "timeout", None, token=start.token)

    ledger.approve(held.id, admin="alice", via="api", reason="the board agreed")
    ledger.resolve(lost.id, captured=False, admin="bob", via="dashboard", reason=None)
    engine.dispose()

    assert decisions(db_url) == [
        (held.id, "approve", "pending", "alice", "api", "the board agreed"),
        (lost.id, "resolve", "failed", "bob", "dashboard", None),
    ]
    at = query(db_url, "SELECT d.at, c.updated_at FROM decisions d JOIN captures c ON c.id = d.capture_id ORDER BY d.id")
    assert all(decided == updated for decided, updated in at)  # written together


def test_a_refused_decision_records_nothing(db_url: str):
    engine, ledger = ledger_for(db_url)
    row = ledger.ensure(store_delivery(db_url, make_body()), "crp_a", planned(), "h")
    with pytest.raises(Conflict):
        ledger.approve(row.id, admin="alice", via="cli", reason="too early")
    with pytest.raises(Conflict):
        ledger.resolve(row.id, captured=True, admin="alice", via="cli")
    engine.dispose()
    assert decisions(db_url) == []


def test_a_decision_whose_record_cannot_be_written_is_not_made(db_url: str):
    engine, ledger = ledger_for(db_url)
    row = ledger.ensure(store_delivery(db_url, make_body()), "crp_a", planned(), "h")
    assert ledger.begin_attempt(row, Limits(max_lbs_per_day=100)).decision == "held"
    with pytest.raises(IntegrityError):
        ledger.reject(row.id, admin=None, via="cli")  # type: ignore[arg-type]
    engine.dispose()
    assert query(db_url, "SELECT status FROM captures") == [("held",)]
    assert decisions(db_url) == []


def test_the_ledger_shows_each_rows_decisions(db_url: str):
    engine, ledger = ledger_for(db_url)
    row = ledger.ensure(store_delivery(db_url, make_body()), "crp_a", planned(), "h")
    assert ledger.begin_attempt(row, Limits(max_lbs_per_day=100)).decision == "held"
    ledger.reject(row.id, admin="alice", via="api", reason="not this month")
    (listed,) = ledger.list_captures()
    engine.dispose()
    assert [(d["decision"], d["status"], d["admin"], d["via"], d["reason"]) for d in listed["decisions"]] == [
        ("reject", "rejected", "alice", "api", "not this month")
    ]
