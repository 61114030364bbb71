"""The receiver's hand-off to the broker: Dramatiq's own messages, one pipeline per batch on
Redis; events the broker does not take are marked `pending` for the sweeper, and nothing waits
in memory when the broker is away."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading

import pytest

from tests.support import free_port


def hand_off(
    url: str, ids: list[int], marked: list[int], timeout_s: float = 5.0, stop_s: float = 30
) -> None:
    from carbonhook.queue import RedisEnqueuer, make_broker

    broker = make_broker(url)

    async def run() -> None:
        enqueuer = RedisEnqueuer(broker, url, marked.extend, batch=50, timeout_s=timeout_s)
        enqueuer.start()
        for event_id in ids:
            enqueuer.submit(event_id)
        await enqueuer.stop(timeout=stop_s)

    asyncio.run(run())


def test_each_id_becomes_one_dramatiq_message_and_none_is_given_back(redis_url: str):
    from carbonhook.queue import EVENTS_QUEUE, PROCESS_EVENT, make_broker

    ids = list(range(1, 181))
    marked: list[int] = []
    hand_off(redis_url, ids, marked)
    assert marked == []  # the intake stored them `queued`: nothing more to write

    consumer = make_broker(redis_url).consume(EVENTS_QUEUE, prefetch=500, timeout=100)
    received = []
    for _ in range(400):
        message = next(consumer)
        if message is None:
            if len(received) == len(ids):
                break
            continue
        received.append(message)
        consumer.ack(message)
    consumer.close()
    assert sorted(m.args[0] for m in received) == ids
    assert {(m.actor_name, m.queue_name) for m in received} == {(PROCESS_EVENT, EVENTS_QUEUE)}


def test_with_redis_unreachable_all_are_marked_pending_at_once_and_nothing_waits(
    caplog: pytest.LogCaptureFixture,
):
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    marked: list[int] = []
    with caplog.at_level(logging.WARNING, logger="carbonhook.queue"):
        hand_off(url, list(range(1, 501)), marked, timeout_s=1.0)
    assert sorted(marked) == list(range(1, 501))
    warnings = [r.getMessage() for r in caplog.records if "marked pending" in r.getMessage()]
    # One failed batch gives all 500 back to the sweeper, instead of ten batches each waiting
    # out the timeout.
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("broker unavailable") and "; 500 events" in warnings[0]


def test_a_broker_that_hangs_at_shutdown_gets_its_events_marked_pending():
    silent = socket.create_server(("127.0.0.1", 0))  # accepts, never answers
    port = silent.getsockname()[1]
    accepted: list[socket.socket] = []
    threading.Thread(target=lambda: accepted.append(silent.accept()[0]), daemon=True).start()
    marked: list[int] = []
    try:
        hand_off(f"redis://127.0.0.1:{port}/0", list(range(1, 121)), marked, 60.0, stop_s=1.0)
    finally:
        for conn in accepted:
            conn.close()
        silent.close()
    assert sorted(marked) == list(range(1, 121))


def test_the_thread_hand_off_marks_pending_what_the_broker_refused():
    from carbonhook.queue import Enqueuer, make_broker

    broker = make_broker("memory://")

    def refuse(message: object, *, delay: object = None) -> None:
        raise ConnectionError("broker down")

    broker.enqueue = refuse  # type: ignore[method-assign]
    marked: list[int] = []

    async def run() -> None:
        enqueuer = Enqueuer(broker, marked.extend, batch=10)
        enqueuer.start()
        for event_id in range(1, 26):
            enqueuer.submit(event_id)
        await enqueuer.stop()

    asyncio.run(run())
    assert sorted(marked) == list(range(1, 26))
