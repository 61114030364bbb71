"""The sweeper: finds events the queue may have lost and hands them to it again; after each
sweep it sends the notifications due (workers/notifier.py); every
`CARBONHOOK_AUDIT_INTERVAL_S` it audits the ledger against 1ClickImpact (workers/audit.py), and,
when `CARBONHOOK_CATCH_UP_INTERVAL_S` is set, catches up missed bill confirmations on that
period (workers/catch_up.py)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from carbonhook.metrics import metrics
from carbonhook.store import EventStore

log = logging.getLogger(__name__)

# A periodic job's first run comes this soon after start-up at the latest.
FIRST_RUN_WITHIN_S = 60.0


@dataclass
class _Periodic:
    """A job the sweeper runs every `interval_s`; a failure waits for the next period."""

    name: str
    run: Callable[[], Any]
    interval_s: float
    next_at: float


class Sweeper:
    """Every `interval_s`: re-enqueue `pending` events (never handed over), `queued` ones
    older than a lease (message lost), `waiting` ones a lease past their re-check (its message
    lost), and `processing` ones whose lease expired (worker died); then run the periodic jobs
    that are due (`run_due`)."""

    def __init__(
        self,
        store: EventStore,
        enqueue: Callable[[Sequence[int]], None],
        *,
        interval_s: float,
        lease_s: float,
        audit: Callable[[], Any] | None = None,
        audit_interval_s: float = 300.0,
        catch_up: Callable[[], Any] | None = None,
        catch_up_interval_s: float | None = None,
        notify: Callable[[], Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.enqueue = enqueue
        self.interval_s = interval_s
        self.lease_s = lease_s
        self.audit = audit
        self.notify = notify  # workers/notifier.py: after each sweep, in this thread
        self.clock = clock
        self.jobs: list[_Periodic] = []
        if audit is not None:
            self._every("audit", audit, audit_interval_s)
        if catch_up is not None and catch_up_interval_s is not None:
            self._every("catch-up", catch_up, catch_up_interval_s)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="carbonhook-sweeper", daemon=True)

    def _every(self, name: str, run: Callable[[], Any], interval_s: float) -> None:
        first = self.clock() + min(interval_s, FIRST_RUN_WITHIN_S)
        self.jobs.append(_Periodic(name, run, interval_s, first))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def sweep_once(self) -> int:
        """One pass; returns how many events were handed to the queue again."""
        ids = self.store.due_for_enqueue(
            pending_after_s=self.interval_s,
            queued_after_s=max(self.interval_s, self.lease_s),
        )
        self.enqueue(ids)  # on Redis, one pipelined round trip for the batch
        metrics().sweeper_reenqueued.inc(len(ids))
        if ids:
            log.info("sweeper re-enqueued %d events", len(ids))
        return len(ids)

    def run_due(self) -> list[str]:
        """Run each periodic job whose time has come; returns their names. A job that fails
        (an API or database outage) is logged and runs again next period."""
        ran = []
        for job in self.jobs:
            now = self.clock()
            if now < job.next_at:
                continue
            job.next_at = now + job.interval_s
            ran.append(job.name)
            try:
                job.run()
            except Exception as exc:
                log.warning("%s failed: %s", job.name, exc)
        return ran

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.sweep_once()
            except Exception as exc:  # database or broker down: try again next period
                log.warning("sweep failed: %s", exc)
            if self.notify is not None:
                try:
                    self.notify()
                except Exception as exc:  # the database down: the outbox keeps every row
                    log.warning("sending notifications failed: %s", exc)
            self.run_due()
