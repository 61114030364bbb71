"""What admins do, for every interface (CLI, admin API, dashboard): replay, approve, reject,
resolve. Each change records who made it (`admin`: a name in CARBONHOOK_ADMIN_TOKENS, or the OS
user of a command), through which interface (`via`) and why, and is handed to the queue.
Replaying an `invalid` event parses its body again, with the parser the composition root
gives. The impact report reads CarbonPass's emissions through the look-up it gives."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from carbonhook.capture_rows import CaptureRow
from carbonhook.errors import Conflict, InvalidDelivery
from carbonhook.event_queries import EventFilter, Identity
from carbonhook.impact_report import EmissionsLookup, ImpactReport, ImpactReports, ReportQuery
from carbonhook.ledger import Ledger
from carbonhook.statuses import EventStatus
from carbonhook.store import EventStore

log = logging.getLogger(__name__)


class Admin:
    """`enqueue` hands ids to the workers' queue; None when this process reaches no queue
    the workers read (replayed events then wait as `pending` for a sweeper). `parse` turns a
    delivery's body into its identity or raises `InvalidDelivery` (the receiver's parser).
    `emissions` reads CarbonPass's current emissions for the impact report (None: the report
    says they are unavailable)."""

    def __init__(
        self,
        store: EventStore,
        ledger: Ledger,
        enqueue: Callable[[Sequence[int]], None] | None,
        *,
        parse: Callable[[bytes], Identity],
        emissions: EmissionsLookup | None = None,
    ) -> None:
        self.store = store
        self.ledger = ledger
        self.enqueue = enqueue
        self.parse = parse
        self.reports = ImpactReports(store.engine, emissions)

    def impact_report(self, query: ReportQuery) -> ImpactReport:
        """The impacts standing in the query's period, with CarbonPass's emissions beside."""
        return self.reports.report(query)

    def replay(self, event_id: int, *, admin: str, via: str, reason: str | None) -> str:
        """Replay one event; returns the status it had. An `invalid` one is parsed again:
        if it parses now it becomes the event it says (unless that one is stored already),
        else `Conflict` says why not."""
        body = self.store.unparsed_body(event_id)
        if body is None:
            previous = self.store.replay(
                event_id, admin=admin, via=via, reason=reason, status=self._replayed()
            )
        else:
            try:
                identity = self.parse(body)
            except InvalidDelivery as exc:
                raise Conflict(f"event {event_id} still does not parse: {exc}") from None
            self.store.revive(
                event_id, identity, admin=admin, via=via, reason=reason, status=self._replayed()
            )
            previous = EventStatus.INVALID
        self._hand_off([event_id])
        return previous

    def replay_matching(
        self, filt: EventFilter, *, admin: str, via: str, reason: str | None, batch: int = 500
    ) -> Iterator[int]:
        """Replay every event matching `filt`, yielding each id as it is done."""
        ids = self.store.matching_ids(filt)
        if filt.status == EventStatus.INVALID:
            # Each is parsed again, one by one; those that still do not parse (or are
            # duplicates now) stay as they are, and say why.
            for event_id in ids:
                try:
                    self.replay(event_id, admin=admin, via=via, reason=reason)
                except Conflict as exc:
                    log.info("event %s not replayed: %s", event_id, exc)
                    continue
                yield event_id
            return
        for start in range(0, len(ids), batch):
            # Those that changed state since they were listed are left as they are.
            done = self.store.replay_many(
                ids[start : start + batch],
                admin=admin,
                via=via,
                reason=reason,
                status=self._replayed(),
            )
            self._hand_off(done)
            yield from done

    def list_captures(
        self, *, status: str | None, limit: int, before_id: int | None
    ) -> list[dict[str, Any]]:
        return self.ledger.list_captures(status=status, limit=limit, before_id=before_id)

    def approve(
        self, capture_id: int, *, admin: str, via: str, reason: str | None = None
    ) -> CaptureRow:
        row = self.ledger.approve(capture_id, admin=admin, via=via, reason=reason)
        self._requeue(row, admin, via, f"capture {capture_id} approved", reason)
        return row

    def reject(
        self, capture_id: int, *, admin: str, via: str, reason: str | None = None
    ) -> CaptureRow:
        row = self.ledger.reject(capture_id, admin=admin, via=via, reason=reason)
        self._requeue(row, admin, via, f"capture {capture_id} rejected", reason)
        return row

    def resolve(
        self, capture_id: int, *, captured: bool, admin: str, via: str, reason: str | None = None
    ) -> CaptureRow:
        row = self.ledger.resolve(
            capture_id, captured=captured, admin=admin, via=via, reason=reason
        )
        word = "captured" if captured else "not captured"
        self._requeue(row, admin, via, f"capture {capture_id} resolved as {word}", reason)
        return row

    def _replayed(self) -> str:
        # Stored as handed over, like a new delivery: a second write per event to say so
        # would cost as much as the replay itself.
        return EventStatus.PENDING if self.enqueue is None else EventStatus.QUEUED

    def _hand_off(self, ids: Sequence[int]) -> None:
        if self.enqueue is None or not ids:
            return
        try:
            self.enqueue(ids)
        except Exception:
            self.store.mark_pending(ids)  # the sweeper hands them over once the queue is back
            raise

    def _requeue(
        self, row: CaptureRow, admin: str, via: str, what: str, reason: str | None
    ) -> None:
        """Let the event finish now that a capture was decided (if it is not already running)."""
        try:
            self.replay(
                row.event_id, admin=admin, via=via, reason=f"{what}: {reason}" if reason else what
            )
        except Conflict as exc:
            log.info("event %s not requeued: %s", row.event_id, exc)
