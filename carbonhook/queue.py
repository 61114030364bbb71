"""The hand-off to Dramatiq: the broker from a URL, and messages that carry an event id only.

The receiver enqueues by actor name and never imports actor code; the workers declare the
actor on the same broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlparse

import dramatiq
from dramatiq.brokers.stub import StubBroker

from carbonhook.errors import SettingsError

log = logging.getLogger(__name__)

EVENTS_QUEUE = "carbonhook-events"
PROCESS_EVENT = "process_event"


def make_broker(url: str) -> dramatiq.Broker:
    """`redis://` → RedisBroker, `amqp://` → RabbitmqBroker, `memory://` → in-process."""
    scheme = urlparse(url).scheme
    broker: dramatiq.Broker
    if scheme in ("redis", "rediss"):
        from dramatiq.brokers.redis import RedisBroker

        broker = RedisBroker(url=url, socket_timeout=5, socket_connect_timeout=5)  # type: ignore[no-untyped-call]
    elif scheme in ("amqp", "amqps"):
        from dramatiq.brokers.rabbitmq import RabbitmqBroker

        broker = RabbitmqBroker(url=url, confirm_delivery=True)
    elif scheme == "memory":
        broker = StubBroker()
        broker.emit_after("process_boot")
    else:
        raise SettingsError("CARBONHOOK_BROKER_URL must start with redis://, amqp:// or memory://")
    broker.declare_queue(EVENTS_QUEUE)
    return broker


def is_shared(broker: dramatiq.Broker) -> bool:
    """Whether other processes can consume what this broker enqueues."""
    return not isinstance(broker, StubBroker)


def enqueue_event(broker: dramatiq.Broker, event_id: int, *, delay_s: float = 0) -> None:
    """Ask the workers to look at event `event_id` (now, or after `delay_s`)."""
    message: dramatiq.Message[None] = dramatiq.Message(
        queue_name=EVENTS_QUEUE,
        actor_name=PROCESS_EVENT,
        args=(event_id,),
        kwargs={},
        options={},
    )
    broker.enqueue(message, delay=int(delay_s * 1000) or None)


def enqueue_events(broker: dramatiq.Broker, event_ids: Sequence[int]) -> None:
    """Ask the workers to look at each of `event_ids`; on Redis in one pipelined round trip.

    Raises if the broker fails; some of the ids may have been enqueued by then (a second
    message for an event is harmless: the worker's claim decides).
    """
    if not _is_redis(broker) or len(event_ids) < 2:
        for event_id in event_ids:
            enqueue_event(broker, event_id)
        return
    script = broker.scripts["dispatch"]  # type: ignore[attr-defined]
    pipe = broker.client.pipeline(transaction=False)  # type: ignore[attr-defined]
    for keys, args in redis_dispatch_calls(broker, event_ids):
        script(keys=keys, args=args, client=pipe)
    pipe.execute()


def _is_redis(broker: dramatiq.Broker) -> bool:
    scripts = getattr(broker, "scripts", None)
    return isinstance(scripts, dict) and "dispatch" in scripts


def redis_dispatch_calls(
    broker: dramatiq.Broker, event_ids: Sequence[int]
) -> list[tuple[list[Any], list[Any]]]:
    """The (keys, args) of the `dispatch` script that Dramatiq's RedisBroker would run to
    enqueue each id, without running it: Dramatiq keeps its message format and middleware,
    and the caller sends them all in one pipeline."""
    calls: list[tuple[list[Any], list[Any]]] = []
    collecting = copy.copy(broker)
    collecting.scripts = {  # type: ignore[attr-defined]
        **broker.scripts,  # type: ignore[attr-defined]
        "dispatch": lambda args, keys: calls.append((keys, args)),
    }
    for event_id in event_ids:
        enqueue_event(collecting, event_id)
    return calls


def ping_broker(broker: dramatiq.Broker) -> None:
    """Raise if the broker cannot be reached."""
    client = getattr(broker, "client", None)
    if client is not None:  # Redis
        client.ping()
        return
    connection = getattr(broker, "connection", None)  # RabbitMQ: reading it connects
    if connection is not None and not connection.is_open:
        raise ConnectionError("RabbitMQ connection is closed")


class Enqueuer:
    """Hands stored event ids to the broker off the request path.

    The intake stores new events as `queued`. If the broker is down, the ids are marked
    `pending` and the sweeper enqueues them after one sweep interval; if even that write fails
    (or the process dies first), the sweeper takes them back as lost `queued` events after a
    lease. Nothing here can lose an event.
    """

    def __init__(
        self,
        broker: dramatiq.Broker,
        mark_pending: Callable[[Sequence[int]], None],
        *,
        batch: int = 200,
    ) -> None:
        self.broker = broker
        self.mark_pending = mark_pending
        self.batch = batch
        self._ids: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="carbonhook-enqueuer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, event_id: int) -> None:
        self._ids.put(event_id)

    async def stop(self, timeout: float = 10) -> None:
        self._ids.put(None)
        await asyncio.to_thread(self._thread.join, timeout)
        if self._thread.is_alive():  # the broker hangs: what is still waiting goes back
            left: list[int] = []
            with contextlib.suppress(queue.Empty):
                while True:
                    item = self._ids.get_nowait()
                    if item is not None:
                        left.append(item)
            await asyncio.to_thread(_give_back, self.mark_pending, left, "not handed over in time")

    def _run(self) -> None:
        stopping = False
        while not stopping:
            ids: list[int] = []
            item = self._ids.get()
            while True:
                if item is None:
                    stopping = True
                else:
                    ids.append(item)
                if stopping or len(ids) >= self.batch or self._ids.empty():
                    break
                item = self._ids.get()
            if ids:
                self._hand_off(ids)

    def _hand_off(self, ids: list[int]) -> None:
        try:
            enqueue_events(self.broker, ids)
        except Exception as exc:  # any broker failure: the sweeper will retry these
            _give_back(self.mark_pending, ids, f"broker unavailable: {exc}")


class RedisEnqueuer:
    """The same on Redis, on the event loop: each batch of ids is one pipelined round trip.

    Dramatiq's RedisBroker.enqueue blocks on a round trip per message; in a thread it fought
    the event loop for the GIL and fell seconds behind at 2,000 deliveries/s (bench/FINDINGS.md).
    """

    def __init__(
        self,
        broker: dramatiq.Broker,
        url: str,
        mark_pending: Callable[[Sequence[int]], None],
        *,
        batch: int = 200,
        timeout_s: float = 5.0,
    ) -> None:
        import redis.asyncio

        self.broker = broker
        self.mark_pending = mark_pending
        self.batch = batch
        self.timeout_s = timeout_s
        self.client = redis.asyncio.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
        self._script = broker.scripts["dispatch"]  # type: ignore[attr-defined]
        self._ids: list[int] = []
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._ready = False  # the script is loaded in Redis and Dramatiq asked its limits

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def submit(self, event_id: int) -> None:
        self._ids.append(event_id)
        self._wake.set()

    async def stop(self, timeout: float = 10) -> None:
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout)
            except TimeoutError:  # the batch in flight is cancelled and goes back too
                left, self._ids = self._ids, []
                await asyncio.to_thread(
                    _give_back, self.mark_pending, left, "not handed over in time"
                )
        await self.client.aclose()

    async def _run(self) -> None:
        while not (self._stopping and not self._ids):
            await self._wake.wait()
            self._wake.clear()
            while self._ids:
                batch, self._ids = self._ids[: self.batch], self._ids[self.batch :]
                try:
                    await self._hand_off(batch)
                except asyncio.CancelledError:
                    self._ids = batch + self._ids
                    raise

    async def _hand_off(self, ids: list[int]) -> None:
        try:
            if not self._ready:
                # The first time, Dramatiq may ask Redis a question synchronously: not on the loop.
                calls = await asyncio.to_thread(redis_dispatch_calls, self.broker, ids)
                await asyncio.wait_for(self.client.script_load(self._script.script), self.timeout_s)
                self._ready = True
            else:
                calls = redis_dispatch_calls(self.broker, ids)
            pipe = self.client.pipeline(transaction=False)
            for keys, args in calls:
                pipe.evalsha(self._script.sha, len(keys), *keys, *args)
            await asyncio.wait_for(pipe.execute(), self.timeout_s)
        except Exception as exc:  # any broker failure: the sweeper will retry these
            self._ready = False  # Redis may have restarted without the script
            # Those waiting behind this batch would each wait out the same timeout while more
            # pile up in memory: they all go back to the sweeper.
            left, self._ids = ids + self._ids, []
            await asyncio.to_thread(
                _give_back, self.mark_pending, left, f"broker unavailable: {exc}"
            )


def _give_back(mark_pending: Callable[[Sequence[int]], None], ids: list[int], why: str) -> None:
    """Mark events the broker did not take `pending`, for the sweeper's next round."""
    if not ids:
        return
    try:
        mark_pending(ids)
    except Exception as exc:  # they stay `queued`: the sweeper takes them back after a lease
        log.warning("%s; could not mark %d events pending either: %s", why, len(ids), exc)
        return
    log.warning("%s; %d events marked pending for the sweeper", why, len(ids))


def make_enqueuer(
    broker: dramatiq.Broker, broker_url: str, mark_pending: Callable[[Sequence[int]], None]
) -> Enqueuer | RedisEnqueuer:
    """The hand-off for this broker: pipelined on the event loop for Redis, else a thread."""
    if urlparse(broker_url).scheme in ("redis", "rediss") and _is_redis(broker):
        return RedisEnqueuer(broker, broker_url, mark_pending)
    return Enqueuer(broker, mark_pending)
