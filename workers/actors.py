"""The Dramatiq actor: it takes an event id, never a payload, and is safe to run twice."""

from __future__ import annotations

from typing import Any

import dramatiq

from carbonhook.queue import EVENTS_QUEUE, PROCESS_EVENT
from workers.processing import Processor


def declare_actors(
    broker: dramatiq.Broker, processor: Processor, *, time_limit_s: float
) -> dramatiq.Actor[Any, Any]:
    """Bind `process_event` to `broker` explicitly (nothing is bound at import time)."""

    def process_event(event_id: int) -> None:
        processor.process(int(event_id))

    # max_retries=0: retries are the database's business (attempts, backoff, Retry-After),
    # so the schedule survives a lost message; Dramatiq only delivers "look at event N".
    declare = dramatiq.actor(
        broker=broker,
        actor_name=PROCESS_EVENT,
        queue_name=EVENTS_QUEUE,
        max_retries=0,
        time_limit=int(time_limit_s * 1000),
    )
    return declare(process_event)
