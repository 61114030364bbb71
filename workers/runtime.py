"""A worker process's parts, assembled: clients, processor, actor, Dramatiq worker, sweeper."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import dramatiq

from receiver.database import create_sync_engine
from receiver.queue import EVENTS_QUEUE, enqueue_event, enqueue_events, make_broker
from receiver.settings import Settings
from receiver.store import EventStore
from workers.actors import declare_actors
from workers.carbonpass import CarbonPassClient
from workers.impact import ImpactClient
from workers.ledger import Ledger
from workers.processing import Processor
from workers.rules import RulesHolder
from workers.sweeper import Sweeper

log = logging.getLogger(__name__)

POLL_MS = 100  # the longest a consumer waits before it looks at the queue again


@dataclass
class WorkerRuntime:
    processor: Processor
    broker: dramatiq.Broker
    sweeper: Sweeper
    rules: RulesHolder
    threads: int
    worker: dramatiq.Worker | None = None

    def start(self) -> None:
        # A consumer whose prefetch is full, or whose queue is empty, backs off up to
        # `worker_timeout` (Dramatiq's default: 1 s) before it looks again; shorter also
        # makes stopping quicker.
        self.worker = dramatiq.Worker(
            self.broker,
            queues={EVENTS_QUEUE},
            worker_threads=self.threads,
            worker_timeout=POLL_MS,
        )
        self.worker.start()
        self.sweeper.start()

    def stop(self, timeout_s: float = 30) -> None:
        """Finish what is in hand (or give it back), then stop."""
        self.sweeper.stop()
        if self.worker is not None:
            self.worker.stop(timeout=int(timeout_s * 1000))
        self.processor.release_all()
        self.close()

    def close(self) -> None:
        """Close the clients and the database pool."""
        self.processor.carbonpass.close()
        self.processor.impact.close()
        self.processor.store.engine.dispose()


def build_worker(
    settings: Settings,
    *,
    broker: dramatiq.Broker | None = None,
    rules: RulesHolder | None = None,
    threads: int | None = None,
) -> WorkerRuntime:
    """Everything a worker needs, from settings (loud about what is missing)."""
    settings.require("carbonpass_api_key", "impact_api_key")
    rules = rules or RulesHolder(settings.rules_file)
    broker = broker or make_broker(settings.broker_url)
    engine = create_sync_engine(settings.database_url, pool_size=settings.db_pool_size)
    assert settings.carbonpass_api_key is not None and settings.impact_api_key is not None

    def enqueue(event_id: int, delay_s: float = 0) -> None:
        enqueue_event(broker, event_id, delay_s=delay_s)

    processor = Processor(
        settings=settings,
        store=EventStore(engine),
        ledger=Ledger(engine),
        carbonpass=CarbonPassClient(
            settings.carbonpass_api_url,
            settings.carbonpass_api_key.get_secret_value(),
            timeout_s=settings.http_timeout_s,
        ),
        impact=ImpactClient(
            settings.impact_api_url,
            settings.impact_api_key.get_secret_value(),
            timeout_s=settings.http_timeout_s,
        ),
        rules=rules,
        enqueue=enqueue,
    )
    declare_actors(broker, processor, time_limit_s=max(600.0, settings.lease_s))
    sweeper = Sweeper(
        processor.store,
        lambda ids: enqueue_events(broker, ids),
        interval_s=settings.sweep_interval_s,
        lease_s=settings.lease_s,
    )
    return WorkerRuntime(
        processor=processor,
        broker=broker,
        sweeper=sweeper,
        rules=rules,
        threads=threads or settings.worker_threads,
    )
