"""The receiver's hand-off to Redis: Dramatiq's own messages, one pipeline per batch, and
nothing held or marked when Redis is away."""

from __future__ import annotations

import asyncio
import logging

import pytest

from tests.conftest import free_port


def hand_off(url: str, ids: list[int], marked: list[int], timeout_s: float = 5.0) -> None:
    from receiver.queue import RedisEnqueuer, make_broker

    broker = make_broker(url)

    async def run() -> None:
        enqueuer = RedisEnqueuer(broker, url, marked.extend, batch=50, timeout_s=timeout_s)
        enqueuer.start()
        for event_id in ids:
            enqueuer.submit(event_id)
        await enqueuer.stop(timeout=30)

    asyncio.run(run())


def test_each_id_becomes_one_dramatiq_message_and_is_marked_queued(redis_url: str):
    from receiver.queue import EVENTS_QUEUE, PROCESS_EVENT, make_broker

    ids = list(range(1, 181))
    marked: list[int] = []
    hand_off(redis_url, ids, marked)
    assert sorted(marked) == ids

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


def test_with_redis_unreachable_nothing_is_marked_and_nothing_waits_in_memory(
    caplog: pytest.LogCaptureFixture,
):
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    marked: list[int] = []
    with caplog.at_level(logging.WARNING, logger="receiver.queue"):
        hand_off(url, list(range(1, 501)), marked, timeout_s=1.0)
    assert marked == []
    warnings = [r.getMessage() for r in caplog.records if "stay pending" in r.getMessage()]
    # One failed batch lets all 500 stay pending for the sweeper, instead of ten batches each
    # waiting out the timeout.
    assert len(warnings) == 1 and warnings[0].startswith("broker unavailable, 500 events")
