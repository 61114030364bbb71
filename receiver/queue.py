"""The hand-off to Dramatiq: the broker from a URL, and messages that carry an event id only.

The receiver enqueues by actor name and never imports actor code; the workers declare the
actor on the same broker.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from urllib.parse import urlparse

import dramatiq
from dramatiq.brokers.stub import StubBroker

from receiver.settings import SettingsError

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
    """Hands stored event ids to the broker off the request path, then marks them queued.

    If the broker is down the ids stay `pending` in the database and the sweeper enqueues
    them later: nothing here can lose an event.
    """

    def __init__(
        self,
        broker: dramatiq.Broker,
        mark_queued: Callable[[Sequence[int]], None],
        *,
        batch: int = 200,
    ) -> None:
        self.broker = broker
        self.mark_queued = mark_queued
        self.batch = batch
        self._ids: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="carbonhook-enqueuer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, event_id: int) -> None:
        self._ids.put(event_id)

    def stop(self, timeout: float = 10) -> None:
        self._ids.put(None)
        self._thread.join(timeout)

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
        sent: list[int] = []
        for event_id in ids:
            try:
                enqueue_event(self.broker, event_id)
            except Exception as exc:  # any broker failure: the sweeper will retry these
                log.warning(
                    "broker unavailable, %d events stay pending: %s", len(ids) - len(sent), exc
                )
                break
            sent.append(event_id)
        try:
            self.mark_queued(sent)
        except Exception as exc:  # the rows stay pending; a later sweep re-enqueues (harmless)
            log.warning("could not mark %d events queued: %s", len(sent), exc)
