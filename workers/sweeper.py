"""The sweeper: finds events the queue may have lost and hands them to it again, and every
`CARBONHOOK_AUDIT_INTERVAL_S` audits the ledger against 1ClickImpact (workers/audit.py); after
each sweep it sends the notifications due (workers/notifier.py)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from carbonhook.metrics import metrics
from carbonhook.store import EventStore

log = logging.getLogger(__name__)


class Sweeper:
    """Every `interval_s`: re-enqueue `pending` events (never handed over), `queued` ones
    older than a lease (message lost), and `processing` ones whose lease expired (worker died)."""

    def __init__(
        self,
        store: EventStore,
        enqueue: Callable[[Sequence[int]], None],
        *,
        interval_s: float,
        lease_s: float,
        audit: Callable[[], Any] | None = None,
        audit_interval_s: float = 300.0,
        notify: Callable[[], Any] | None = None,
    ) -> None:
        self.store = store
        self.enqueue = enqueue
        self.interval_s = interval_s
        self.lease_s = lease_s
        self.audit = audit
        self.audit_interval_s = audit_interval_s
        self.notify = notify  # workers/notifier.py: after each sweep, in this thread
        self._next_audit = time.monotonic() + min(audit_interval_s, 60.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="carbonhook-sweeper", daemon=True)

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
            if self.audit is not None and time.monotonic() >= self._next_audit:
                self._next_audit = time.monotonic() + self.audit_interval_s
                try:
                    self.audit()
                except Exception as exc:  # an API or database outage: the next audit retries
                    log.warning("audit failed: %s", exc)
