"""What admins do, whatever the interface (carbonhook/admin.py): replays and the queue hand-off."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import pytest
from sqlalchemy import Engine

from carbonhook.admin import Admin
from carbonhook.database import create_sync_engine
from carbonhook.event_queries import EventFilter
from carbonhook.ledger import Ledger
from carbonhook.store import EventStore
from tests.support import make_body, query, store_delivery


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = create_sync_engine(db_url)
    yield engine
    engine.dispose()


def failed_events(db: str, engine: Engine, count: int) -> list[int]:
    ids = [store_delivery(db, make_body(subject=f"crp_{n}")) for n in range(count)]
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE events SET status = 'failed'")
    return ids


def admin_for(engine: Engine, enqueue: Callable[[Sequence[int]], None] | None) -> Admin:
    return Admin(EventStore(engine), Ledger(engine), enqueue)


def statuses(db: str) -> list[str]:
    return [row[0] for row in query(db, "SELECT status FROM events ORDER BY id")]


def test_a_replayed_event_is_handed_to_the_queue_and_stored_as_queued(db_url: str, engine: Engine):
    (event_id,) = failed_events(db_url, engine, 1)
    handed: list[int] = []
    admin = admin_for(engine, handed.extend)

    assert admin.replay(event_id, admin="ops", via="cli", reason="fixed") == "failed"

    assert handed == [event_id]
    assert statuses(db_url) == ["queued"]
    assert query(db_url, "SELECT admin, via, reason, previous_status FROM replays") == [("ops", "cli", "fixed", "failed")]


def test_a_bulk_replay_hands_each_batch_over_as_it_is_stored(db_url: str, engine: Engine):
    ids = failed_events(db_url, engine, 5)
    batches: list[list[int]] = []
    admin = admin_for(engine, lambda batch: batches.append(list(batch)))

    done = list(admin.replay_matching(EventFilter(status="failed"), admin="ops", via="api", reason=None, batch=2))

    assert done == ids
    assert batches == [ids[0:2], ids[2:4], ids[4:5]]
    assert statuses(db_url) == ["queued"] * 5


def test_when_the_queue_refuses_them_replayed_events_wait_as_pending_for_the_sweeper(db_url: str, engine: Engine):
    ids = failed_events(db_url, engine, 3)

    def refuse(batch: Sequence[int]) -> None:
        raise ConnectionError("broker down")

    admin = admin_for(engine, refuse)
    with pytest.raises(ConnectionError):
        list(admin.replay_matching(EventFilter(status="failed"), admin="ops", via="cli", reason=None, batch=2))

    # The first batch was replayed (and recorded); the queue never had it: the sweeper
    # hands `pending` events over after one sweep interval. The rest were left as they were.
    assert statuses(db_url) == ["pending", "pending", "failed"]
    assert [row[0] for row in query(db_url, "SELECT event_id FROM replays ORDER BY id")] == ids[:2]


def test_without_a_queue_to_reach_replayed_events_wait_as_pending(db_url: str, engine: Engine):
    (event_id,) = failed_events(db_url, engine, 1)
    assert admin_for(engine, None).replay(event_id, admin="ops", via="cli", reason=None) == "failed"
    assert statuses(db_url) == ["pending"]


def test_a_decision_records_its_admin_and_the_replay_that_lets_the_event_finish_names_them_too(db_url: str, engine: Engine):
    from carbonhook.captures import PlannedCapture
    from workers.rules import Limits

    (event_id,) = failed_events(db_url, engine, 1)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE events SET status = 'held'")
    admin = admin_for(engine, lambda ids: None)
    plan = PlannedCapture(rule="r", part=0, action="capture_carbon", amount=400, customer_email=None, customer_name=None, notify=True, dry_run=False)
    row = admin.ledger.ensure(event_id, "crp_0", plan, "h")
    assert admin.ledger.begin_attempt(row, Limits(max_lbs_per_day=100)).decision == "held"

    admin.approve(row.id, admin="alice", via="dashboard", reason="the board agreed")

    assert query(db_url, "SELECT admin, via, decision, reason FROM decisions") == [("alice", "dashboard", "approve", "the board agreed")]
    assert query(db_url, "SELECT admin, via, reason FROM replays") == [
        ("alice", "dashboard", f"capture {row.id} approved: the board agreed")
    ]
    detail = admin.store.get_event(event_id)
    assert [(r["admin"], r["via"]) for r in detail["replays"]] == [("alice", "dashboard")]
    assert [(d["admin"], d["decision"]) for d in detail["captures"][0]["decisions"]] == [("alice", "approve")]
