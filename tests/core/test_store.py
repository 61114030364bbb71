"""The event state machine's attempts (carbonhook/store.py): fenced by a token never reused,
timed by the database's clock."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest

from carbonhook.statuses import EventStatus
from carbonhook.store import EventStore
from tests.support import make_body, query, store_delivery


def store_for(db: str) -> tuple[Any, EventStore]:
    from carbonhook.database import create_sync_engine

    engine = create_sync_engine(db, pool_size=4)
    return engine, EventStore(engine)


def test_a_replay_never_lets_a_stalled_attempt_end_the_newer_one(db_url: str):
    engine, store = store_for(db_url)
    event_id = store_delivery(db_url, make_body())
    stalled = store.claim(event_id, lease_s=0.05)
    assert stalled is not None and stalled.attempts == 1
    time.sleep(0.2)
    taken_over = store.claim(event_id, lease_s=60)
    assert taken_over is not None
    assert store.finish(taken_over, EventStatus.FAILED, error="gave up")
    store.replay(event_id, admin="ops", via="cli", reason="again", status=EventStatus.QUEUED)  # attempts → 0
    current = store.claim(event_id, lease_s=60)
    assert current is not None and current.attempts == stalled.attempts  # the counter repeats
    assert current.token != stalled.token  # the token does not
    assert not store.finish(stalled, EventStatus.SUCCEEDED, note="stalled worker")
    assert not store.retry_later(stalled, delay_s=1, error="stalled", http_status=None)
    engine.dispose()
    assert query(db_url, f"SELECT status, note FROM events WHERE id = {event_id}") == [("processing", None)]


def test_a_worker_whose_clock_runs_an_hour_ahead_cannot_take_over_a_live_lease(db_url: str, monkeypatch: pytest.MonkeyPatch):
    import carbonhook.schema
    import carbonhook.store

    engine, store = store_for(db_url)
    event_id = store_delivery(db_url, make_body())
    assert store.claim(event_id, lease_s=300) is not None
    real = carbonhook.schema.utcnow
    monkeypatch.setattr(carbonhook.store, "utcnow", lambda: real() + timedelta(hours=1))
    assert store.claim(event_id, lease_s=300) is None
    assert store.due_for_enqueue(pending_after_s=30, queued_after_s=300) == []
    engine.dispose()


def test_a_retry_delay_is_counted_by_the_databases_clock(db_url: str, monkeypatch: pytest.MonkeyPatch):
    import carbonhook.schema
    import carbonhook.store

    engine, store = store_for(db_url)
    event_id = store_delivery(db_url, make_body())
    event = store.claim(event_id, lease_s=60)
    assert event is not None
    real = carbonhook.schema.utcnow
    monkeypatch.setattr(carbonhook.store, "utcnow", lambda: real() - timedelta(hours=1))
    assert store.retry_later(event, delay_s=120, error="429", http_status=429)
    assert store.claim(event_id, lease_s=60) is None  # not due: 120 s from the database's now
    left = store.seconds_until_due(event_id)
    engine.dispose()
    assert left is not None and 100 < left < 121  # SQLite's day fractions: to the second


def test_a_lease_is_renewed_only_by_its_holder(db_url: str):
    engine, store = store_for(db_url)
    event_id = store_delivery(db_url, make_body())
    first = store.claim(event_id, lease_s=0.05)
    assert first is not None and store.renew(first, lease_s=0.05)
    time.sleep(0.2)
    second = store.claim(event_id, lease_s=60)
    assert second is not None
    assert not store.renew(first, lease_s=60)
    assert store.renew(second, lease_s=60)
    engine.dispose()
