"""A real Dramatiq Worker on a real broker (Redis, RabbitMQ, in-process) processing stored events."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from carbonhook.queue import enqueue_event, make_broker
from tests.support import (
    AMQP_URL,
    RunningEmulator,
    make_body,
    query,
    service_missing,
    settings_for_test,
    store_delivery,
    wait_until,
)
from workers.rules import RulesHolder, parse_rules

RULES = '[[rule]]\nname = "flat"\non = "crp.generated"\ncapture_lbs = 42\n'


def run_worker(db: str, emulator: RunningEmulator, broker_url: str) -> Iterator[Any]:
    from carbonhook.cli.bootstrap import build_worker

    settings = settings_for_test(db, emulator, broker_url=broker_url, worker_threads=2)
    runtime = build_worker(settings, rules=RulesHolder(settings.rules_file, parse_rules(RULES)))
    runtime.start()
    try:
        yield runtime
    finally:
        runtime.stop(timeout_s=10)
        runtime.broker.close()


def processes_events(db: str, emulator: RunningEmulator, runtime: Any) -> None:
    ids = [store_delivery(db, make_body(subject=f"crp_w{n}")) for n in range(5)]
    for event_id in ids:
        enqueue_event(runtime.broker, event_id)
    enqueue_event(runtime.broker, ids[0])  # a duplicate message is harmless
    wait_until(lambda: query(db, "SELECT count(*) FROM events WHERE status = 'succeeded'")[0][0] == 5, timeout=30, what="5 events succeeded")
    assert sorted(i["amount"] for i in emulator.impacts) == [42] * 5


def test_a_redis_broker_and_a_real_worker_process_stored_events(pg_url: str, redis_url: str, emulator: RunningEmulator):
    for runtime in run_worker(pg_url, emulator, redis_url):
        processes_events(pg_url, emulator, runtime)


def test_delayed_retries_come_back_through_redis(pg_url: str, redis_url: str, emulator: RunningEmulator):
    emulator.control("faults", {"endpoint": "crp", "status": 429, "retry_after": 1, "times": 1})
    for runtime in run_worker(pg_url, emulator, redis_url):
        event_id = store_delivery(pg_url, make_body(subject="crp_delayed"))
        enqueue_event(runtime.broker, event_id)
        status = f"SELECT status FROM events WHERE id = {event_id}"
        wait_until(
            lambda status=status: query(pg_url, status)[0][0] == "succeeded",
            timeout=30,
            what="retried event",
        )
    assert len(emulator.impacts) == 1


@pytest.fixture
def amqp_url() -> str:
    import pika

    try:
        pika.BlockingConnection(pika.URLParameters(AMQP_URL + "?connection_attempts=1&socket_timeout=3")).close()
    except Exception as exc:  # pika raises several unrelated types for "not there"
        service_missing("RabbitMQ", exc)
    return AMQP_URL


def test_a_rabbitmq_broker_works_the_same(sqlite_url: str, amqp_url: str, emulator: RunningEmulator):
    broker = make_broker(amqp_url)
    broker.flush_all()
    broker.close()
    for runtime in run_worker(sqlite_url, emulator, amqp_url):
        processes_events(sqlite_url, emulator, runtime)


def test_the_in_process_broker_serves_carbonhook_run(sqlite_url: str, emulator: RunningEmulator):
    for runtime in run_worker(sqlite_url, emulator, "memory://"):
        processes_events(sqlite_url, emulator, runtime)


def test_the_sweeper_finds_events_the_queue_never_saw(sqlite_url: str, emulator: RunningEmulator):
    from carbonhook.cli.bootstrap import build_worker

    settings = settings_for_test(sqlite_url, emulator, sweep_interval_s=0.2, lease_s=3.0, worker_threads=1)
    runtime = build_worker(settings, rules=RulesHolder(settings.rules_file, parse_rules(RULES)))
    # The broker refused this one: the receiver marked it pending.
    refused = store_delivery(sqlite_url, make_body(subject="crp_refused"))
    runtime.processor.store.mark_pending([refused])
    # The receiver died between the commit and the hand-off: stored queued, no message.
    orphan = store_delivery(sqlite_url, make_body(subject="crp_orphan"))
    started = time.monotonic()

    def status(event_id: int) -> str:
        return query(sqlite_url, f"SELECT status FROM events WHERE id = {event_id}")[0][0]

    runtime.start()
    try:
        wait_until(lambda: status(refused) == "succeeded", timeout=20, what="swept pending event")
        assert status(orphan) == "queued"  # a queued event waits out a lease, not a sweep
        wait_until(lambda: status(orphan) == "succeeded", timeout=20, what="swept queued event")
        assert time.monotonic() - started >= 3.0
    finally:
        runtime.stop(timeout_s=5)
    assert len(emulator.impacts) == 2


def test_one_sweep_hands_its_whole_batch_to_the_broker_at_once(sqlite_url: str):
    from carbonhook.database import create_sync_engine
    from carbonhook.store import EventStore
    from workers.sweeper import Sweeper

    store = EventStore(create_sync_engine(sqlite_url))
    ids = [store_delivery(sqlite_url, make_body(subject=f"crp_sweep{n}")) for n in range(3)]
    store.mark_pending(ids)
    batches: list[list[int]] = []
    sweeper = Sweeper(store, lambda batch: batches.append(list(batch)), interval_s=0.0001, lease_s=1)
    assert sweeper.sweep_once() == 3
    assert batches == [ids]  # one call: on Redis, enqueue_events sends it as one pipeline
    store.engine.dispose()
