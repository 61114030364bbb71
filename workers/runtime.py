"""A worker process running: the Dramatiq worker and the sweeper, started and stopped together
(carbonhook/cli/bootstrap.py assembles it)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import dramatiq

from carbonhook.queue import EVENTS_QUEUE
from workers.notifier import Notifier
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
    notifier: Notifier | None = None
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
        self.processor.leases.start()
        self.sweeper.start()

    def stop(self, timeout_s: float = 30) -> None:
        """Finish what is in hand (or give it back), then stop."""
        self.sweeper.stop()
        if self.worker is not None:
            self.worker.stop(timeout=int(timeout_s * 1000))
        self.processor.leases.stop()
        self.processor.release_all()
        self.close()

    def close(self) -> None:
        """Close the clients and the database pool."""
        self.processor.carbonpass.close()
        self.processor.impact.close()
        if self.notifier is not None:
            self.notifier.client.close()
        self.processor.store.engine.dispose()
