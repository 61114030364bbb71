"""What admins do, whatever the interface (carbonhook/admin.py): replays and the queue hand-off."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine

from carbonhook.admin import Admin
from carbonhook.database import create_sync_engine
from carbonhook.errors import Conflict
from carbonhook.event_queries import EventFilter
from carbonhook.ledger import Ledger
from carbonhook.store import EventStore
from receiver.events import Delivery, parse_delivery
from tests.support import keep_invalid, make_body, query, record_delivery, store_delivery


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
    return Admin(EventStore(engine), Ledger(engine), enqueue, parse=parse_delivery)


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


# -- invalid events: parsed again on replay ----------------------------------------------------

EPOCH_BODY = b'{"event": "crp.generated", "timestamp": 1775486148, "data": {"id": "crp_epoch"}}'
SAME_IN_ISO = make_body(subject="crp_epoch", ts="2026-04-06T14:35:48Z")


def upgraded_parse(body: bytes) -> Delivery:
    """A later version's parser, which also takes a timestamp in seconds since the epoch."""
    try:
        payload = json.loads(body)
    except ValueError:
        return parse_delivery(body)
    if isinstance(payload, dict) and isinstance(payload.get("timestamp"), int):
        payload["timestamp"] = datetime.fromtimestamp(payload["timestamp"], UTC).isoformat()
    return parse_delivery(json.dumps(payload).encode())


def test_an_invalid_event_whose_body_parses_now_becomes_the_event_it_says(db_url: str, engine: Engine):
    event_id, created = keep_invalid(db_url, EPOCH_BODY, "field 'timestamp' must be a non-empty string")
    assert created
    handed: list[int] = []
    admin = Admin(EventStore(engine), Ledger(engine), handed.extend, parse=upgraded_parse)

    assert admin.replay(event_id, admin="ops", via="cli", reason="parser upgraded") == "invalid"

    assert handed == [event_id]
    row = query(db_url, f"SELECT type, subject_id, status, last_error, attempts, body FROM events WHERE id = {event_id}")
    assert [r[:5] for r in row] == [("crp.generated", "crp_epoch", "queued", None, 0)]
    assert bytes(row[0][5]) == EPOCH_BODY  # the body stays as it came
    assert query(db_url, "SELECT via, reason, previous_status FROM replays") == [("cli", "parser upgraded", "invalid")]
    # Its identity is stored as the intake stores one: the same delivery again is a duplicate,
    # and the same unparseable body at a receiver not yet upgraded finds it too.
    assert record_delivery(db_url, SAME_IN_ISO) == (event_id, False)
    assert keep_invalid(db_url, EPOCH_BODY) == (event_id, False)
    assert statuses(db_url) == ["queued"]


def test_an_invalid_event_that_parses_as_one_stored_already_is_refused_and_says_so(db_url: str, engine: Engine):
    first, _ = record_delivery(db_url, SAME_IN_ISO)
    event_id, _ = keep_invalid(db_url, EPOCH_BODY)
    handed: list[int] = []
    admin = Admin(EventStore(engine), Ledger(engine), handed.extend, parse=upgraded_parse)

    with pytest.raises(Conflict, match=f"event {event_id} parses now, as a duplicate of event {first}"):
        admin.replay(event_id, admin="ops", via="api", reason=None)

    assert handed == [] and query(db_url, "SELECT count(*) FROM replays") == [(0,)]
    said = query(db_url, f"SELECT status, last_error FROM events WHERE id = {event_id}")
    assert said == [("invalid", f"parses now, as a duplicate of event {first}: not replayed")]
    assert query(db_url, f"SELECT status FROM events WHERE id = {first}") == [("queued",)]


def test_an_invalid_event_that_still_does_not_parse_stays_as_it_is(db_url: str, engine: Engine):
    event_id, _ = keep_invalid(db_url, EPOCH_BODY, "field 'timestamp' must be a non-empty string")
    admin = admin_for(engine, lambda ids: None)
    with pytest.raises(Conflict, match=f"event {event_id} still does not parse: field 'timestamp'"):
        admin.replay(event_id, admin="ops", via="cli", reason=None)
    assert query(db_url, "SELECT status, type, last_error FROM events") == [
        ("invalid", "", "field 'timestamp' must be a non-empty string")
    ]
    # Only a replay of the event itself parses it: a bulk replay of failed events leaves it be.
    assert admin.store.replay_many([event_id], admin="ops", via="cli", reason=None) == []


def test_a_bulk_replay_of_invalid_events_revives_those_that_parse_now(db_url: str, engine: Engine):
    parses, _ = keep_invalid(db_url, EPOCH_BODY)
    still, _ = keep_invalid(db_url, b"{not json")
    handed: list[int] = []
    admin = Admin(EventStore(engine), Ledger(engine), handed.extend, parse=upgraded_parse)

    done = list(admin.replay_matching(EventFilter(status="invalid"), admin="ops", via="cli", reason=None))

    assert done == [parses] and handed == [parses]
    assert statuses(db_url) == ["queued", "invalid"]
    assert query(db_url, f"SELECT status FROM events WHERE id = {still}") == [("invalid",)]
