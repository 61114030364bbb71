"""The leases a worker process holds: renewed while their events are worked on, so that no other
worker takes an event over while a call for it is in flight, however long the call takes.

A lease is `CARBONHOOK_LEASE_S` by the database's clock. A heartbeat renews every lease this
process holds once a third of it has passed; a worker that dies stops renewing, and its events
are taken over once their leases run out. A renewal refused (the lease was lost: the process
stalled longer than a lease) marks the event lost, and its attempt stops before its next call.
"""

from __future__ import annotations

import logging
import threading
import time

from carbonhook.store import ClaimedEvent, EventStore

log = logging.getLogger(__name__)


class LeaseLost(Exception):
    """Another worker took the event over: this attempt must write nothing more."""


class Leases:
    def __init__(self, store: EventStore, lease_s: float) -> None:
        self.store = store
        self.lease_s = lease_s
        self._held: dict[int, tuple[ClaimedEvent, float]] = {}
        self._lost: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def hold(self, event: ClaimedEvent) -> None:
        with self._lock:
            self._held[event.id] = (event, time.monotonic())
            self._lost.discard(event.id)

    def drop(self, event: ClaimedEvent) -> None:
        with self._lock:
            self._held.pop(event.id, None)
            self._lost.discard(event.id)

    def held(self) -> list[ClaimedEvent]:
        with self._lock:
            return [event for event, _ in self._held.values()]

    def check(self, event: ClaimedEvent) -> None:
        """Before a call: raise `LeaseLost` if the lease was lost; renew it now if a third of
        it has passed (the heartbeat keeps it from then on)."""
        with self._lock:
            lost = event.id in self._lost
            _, renewed = self._held.get(event.id, (event, 0.0))
        if lost:
            raise LeaseLost
        if time.monotonic() - renewed >= self.lease_s / 3:
            self._renew(event)
            with self._lock:
                if event.id in self._lost:
                    raise LeaseLost

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="carbonhook-leases", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _beat(self) -> None:
        while not self._stop.wait(self.lease_s / 6):
            now = time.monotonic()
            with self._lock:
                due = [event for event, at in self._held.values() if now - at >= self.lease_s / 3]
            for event in due:
                try:
                    self._renew(event)
                except Exception as exc:  # the database is away: try again next beat
                    log.warning("event %s: lease not renewed: %s", event.id, exc)

    def _renew(self, event: ClaimedEvent) -> None:
        renewed = self.store.renew(event, lease_s=self.lease_s)
        with self._lock:
            if event.id not in self._held:
                return
            if renewed:
                self._held[event.id] = (event, time.monotonic())
            else:
                self._lost.add(event.id)
                log.warning("event %s: lease lost to another worker", event.id)
