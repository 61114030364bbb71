"""Processing one event: claim, fetch, plan, settle every capture it ever planned, finish."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from carbonhook import notices
from carbonhook.capture_rows import CaptureRow
from carbonhook.catch_ups import reading_of
from carbonhook.errors import (
    NotVisibleYet,
    PermanentError,
    PlanError,
    RateLimited,
    RetryableError,
    StillSettling,
)
from carbonhook.event_types import (
    BILL_CONFIRMED,
    CRP_GENERATED,
    EMISSIONS_CATCH_UP,
    SUBJECT_ID,
)
from carbonhook.ledger import Ledger
from carbonhook.metrics import metrics
from carbonhook.notices import Notice
from carbonhook.schema import utcnow
from carbonhook.settings import Settings
from carbonhook.statuses import CaptureStatus, EventStatus
from carbonhook.store import ClaimedEvent, EventStore
from workers.carbonpass import CarbonPassClient
from workers.impact import ImpactClient
from workers.leases import LeaseLost, Leases
from workers.planning import Outcome, Resources, explain, needed_sources
from workers.reconciliation import Reconciler
from workers.rules import RuleSet
from workers.settlement import Settlement
from workers.waiting import expired_note, recheck_delay_s, split_waits, waiting_note

log = logging.getLogger(__name__)

PREFIX = {CRP_GENERATED: "crp_", BILL_CONFIRMED: "bill_"}


@dataclass(frozen=True)
class Verdict:
    """How an attempt ends: a status and its note; `waiting`, also when to look again."""

    status: str
    note: str | None = None
    recheck_in_s: float = 0.0


def backoff_s(attempt: int, settings: Settings) -> float:
    """Exponential backoff for the `attempt`-th try (1-based), within the configured bounds."""
    delay = settings.retry_min_backoff_s * (2 ** max(0, attempt - 1))
    return float(min(settings.retry_max_backoff_s, delay))


@dataclass
class Processor:
    """Safe to run twice for one event: the claim, its token and the ledger decide."""

    settings: Settings
    store: EventStore
    ledger: Ledger
    carbonpass: CarbonPassClient
    impact: ImpactClient
    rules: Callable[[], RuleSet]
    enqueue: Callable[[int, float], None]
    leases: Leases = field(init=False)
    # The types this process has said it ignores: each is logged once, however many come.
    _ignored_types: set[str] = field(init=False, default_factory=set)
    _ignored_lock: threading.Lock = field(init=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.leases = Leases(self.store, self.settings.lease_s)

    def process(self, event_id: int) -> str | None:
        """Work on event `event_id` if it can be claimed; return its new status."""
        event = self.store.claim(event_id, lease_s=self.settings.lease_s)
        if event is None:
            # A stray early message (a redelivery) must not cut a Retry-After short.
            wait = self.store.seconds_until_due(event_id)
            if wait is not None:
                self.enqueue(event_id, wait)
            return None
        self.leases.hold(event)
        try:
            return self._attempt(event)
        finally:
            self.leases.drop(event)

    def release_all(self) -> None:
        """Give back every event still held (the worker is stopping)."""
        for event in self.leases.held():
            self.store.release(event)

    def _attempt(self, event: ClaimedEvent) -> str:
        try:
            verdict = self._work(event)
        except LeaseLost:
            log.warning("event %s: lease lost to another worker; stopping", event.id)
            return "lost"
        except PermanentError as exc:
            return self._fail(event, str(exc), exc.status)
        except PlanError as exc:
            return self._fail(event, f"rules: {exc}", None)
        except RetryableError as exc:
            return self._retry(event, exc)
        except Exception as exc:  # a bug or an outage we did not foresee: keep the event, retry
            log.exception("event %s: unexpected error", event.id)
            return self._retry(event, RetryableError(f"unexpected {type(exc).__name__}: {exc}"))
        if verdict.status == EventStatus.WAITING:
            return self._wait(event, verdict)
        status, note = verdict.status, verdict.note
        notice = self._first_of_type(event) if status == EventStatus.IGNORED else None
        if not self.store.finish(event, status, note=note, notice=notice):
            if self.ledger.open_count(event.id):
                # Never `succeeded` over an open capture: the database refused; look again.
                return self._retry(
                    event,
                    RetryableError("a capture is still open; settling it first", retry_after=1.0),
                )
            log.warning("event %s: lease lost before it finished", event.id)
            return "lost"
        self._observe(event, status)
        if status == EventStatus.IGNORED:
            self._ignored(event.type)
        log.info(
            "event %s %s",
            event.id,
            status,
            extra={"event_id": event.id, "outcome": status},
        )
        return status

    def _observe(self, event: ClaimedEvent, status: str) -> None:
        elapsed = (utcnow() - event.received_at).total_seconds()
        metrics().processing_seconds.labels(event.type, status).observe(max(0.0, elapsed))

    def _first_of_type(self, event: ClaimedEvent) -> Notice | None:
        """The notification of a type no rule names, unless this process has seen the type
        (the outbox keeps one per type ever: this only spares it the statement)."""
        with self._ignored_lock:
            seen = event.type in self._ignored_types
        return None if seen else notices.ignored_type(event.type, event.id)

    def _ignored(self, event_type: str) -> None:
        """Count an event ignored for its type, and say so once per type (per process)."""
        metrics().events_ignored.labels(event_type).inc()
        with self._ignored_lock:
            first = event_type not in self._ignored_types
            self._ignored_types.add(event_type)
        if first:
            log.warning(
                "events of type %r are stored ignored: no rule is on that type (said once per "
                "type); once one is, `carbonhook events replay --status ignored --type %s` "
                "processes those that came before",
                event_type,
                event_type,
                extra={"outcome": EventStatus.IGNORED},
            )

    def _wait(self, event: ClaimedEvent, verdict: Verdict) -> str:
        """Let the event wait for its next re-check, which uses no retry of its budget."""
        assert verdict.note is not None
        if not self.store.wait(event, delay_s=verdict.recheck_in_s, note=verdict.note):
            log.warning("event %s: lease lost before it could wait", event.id)
            return "lost"
        self.enqueue(event.id, verdict.recheck_in_s)
        log.info(
            "event %s waiting, re-checked in %.0fs: %s",
            event.id,
            verdict.recheck_in_s,
            verdict.note,
            extra={"event_id": event.id, "outcome": EventStatus.WAITING},
        )
        return EventStatus.WAITING

    def _fail(self, event: ClaimedEvent, error: str, http_status: int | None) -> str:
        self.store.finish(
            event,
            EventStatus.FAILED,
            error=error,
            http_status=http_status,
            notice=notices.failed(event.id, event.token, event.type, error),
        )
        self._observe(event, EventStatus.FAILED)
        log.warning(
            "event %s failed: %s",
            event.id,
            error,
            extra={"event_id": event.id, "outcome": EventStatus.FAILED},
        )
        return EventStatus.FAILED

    def _retry(self, event: ClaimedEvent, exc: RetryableError) -> str:
        # Not failures: no retry used up.
        waiting = isinstance(exc, (StillSettling, RateLimited))
        if not waiting and event.attempts > self.settings.max_retries:
            return self._fail(event, f"gave up after {event.attempts} attempts: {exc}", exc.status)
        delay = (
            exc.retry_after
            if exc.retry_after is not None
            else backoff_s(event.attempts, self.settings)
        )
        self.store.retry_later(
            event, delay_s=delay, error=str(exc), http_status=exc.status, counted=not waiting
        )
        self.enqueue(event.id, delay)
        log.info(
            "event %s retry in %.1fs: %s",
            event.id,
            delay,
            exc,
            extra={"event_id": event.id, "outcome": "retry"},
        )
        return "retry"

    def _work(self, event: ClaimedEvent) -> Verdict:
        """The event's final status and note once every row it ever planned is settled, or
        `waiting` while a matched rule's `wait_until` does not hold and its wait is not over."""
        ruleset = self.rules()
        if not ruleset.for_event(event.type) and not event.has_captures:
            # Decided by the rules in force now: a replay after a rule is on the type
            # processes it. (With captures planned before, those are settled below.)
            return Verdict(EventStatus.IGNORED, f"no rule is on {event.type!r}")
        prefix = PREFIX.get(event.type)
        if prefix is not None and not (
            SUBJECT_ID.fullmatch(event.subject_id) and event.subject_id.startswith(prefix)
        ):
            raise PermanentError(
                f"data.id {event.subject_id[:80]!r} is not {prefix} followed by 1-64 of [A-Za-z0-9_-]"
            )
        resources = self._fetch(event, ruleset)
        rows: list[CaptureRow] = []
        waits: list[Outcome] = []
        for outcome in explain(ruleset, event.type, resources):
            if not outcome.matched:
                continue
            if outcome.waiting:
                # Nothing planned for it yet; the rest of the event goes on as without it.
                waits.append(outcome)
                continue
            if outcome.delta is not None:
                rows += self.ledger.ensure_delta(
                    event.id, event.subject_id, outcome.delta, ruleset.sha256
                )
            for planned in outcome.captures:
                rows.append(self.ledger.ensure(event.id, event.subject_id, planned, ruleset.sha256))
        settlement = self._settlement(event)
        planned_ids = {row.id for row in rows}
        # What the plan no longer holds is settled first: a lost answer is found (or proved
        # not to have happened) before anything new is sent.
        standing: list[CaptureRow] = []
        earlier = self.ledger.rows_of_event(event.id) if event.has_captures else []
        for row in earlier:
            if row.id in planned_ids:
                continue
            if settlement.settle_stale(row) == CaptureStatus.CAPTURED:
                standing.append(self.ledger.get(row.id))
        statuses: list[str] = []
        for row in rows:
            twin = _standing_twin(row, standing)
            if twin is not None:
                statuses.append(settlement.supersede_by(row, twin))
            else:
                statuses.append(settlement.settle(row, event.id, ruleset.file.limits))
        waited = event.waited_s()
        still, over = split_waits(waits, waited)
        notes = []
        if CaptureStatus.HELD in statuses:
            notes.append(f"{statuses.count(CaptureStatus.HELD)} capture(s) held over a spend limit")
        if still:
            # Before `held`: the re-checks go on while an admin decides (a decision replays
            # the event, which checks at once).
            left = min(outcome.wait_for_s for outcome in still) - waited
            delay = recheck_delay_s(
                waited,
                left,
                min_s=self.settings.wait_min_interval_s,
                max_s=self.settings.wait_max_interval_s,
            )
            return Verdict(EventStatus.WAITING, "; ".join([waiting_note(still), *notes]), delay)
        if over:
            notes.append(expired_note(over))
        if CaptureStatus.HELD in statuses:
            return Verdict(EventStatus.HELD, "; ".join(notes))
        if not rows and not over:
            return Verdict(EventStatus.SUCCEEDED, "no rule matched")
        if CaptureStatus.DRY_RUN in statuses:
            dry = statuses.count(CaptureStatus.DRY_RUN)
            notes.append(f"dry run: {dry} capture(s) recorded, not sent")
        return Verdict(EventStatus.SUCCEEDED, "; ".join(notes) or None)

    def _settlement(self, event: ClaimedEvent) -> Settlement:
        return Settlement(
            settings=self.settings,
            ledger=self.ledger,
            impact=self.impact,
            reconciler=Reconciler(self.ledger, self.impact),
            hold_lease=lambda: self.leases.check(event),
        )

    def _fetch(self, event: ClaimedEvent, ruleset: RuleSet) -> Resources:
        needed = needed_sources(ruleset, event.type)
        # Every event but a CRP's is read like a bill: its site's emissions when it names one.
        names_sites = event.type != CRP_GENERATED
        site_id = event.data.get("siteId") if names_sites else None
        site_id = site_id if isinstance(site_id, str) and site_id else None
        crp = None
        if "crp" in needed:
            crp = self._visible(event, lambda: self.carbonpass.crp(event.subject_id))
        wants_company = "company" in needed or (
            "emissions" in needed and site_id is None and names_sites
        )
        company = self.carbonpass.company() if wants_company else None
        emissions = None
        if "emissions" in needed and event.type == EMISSIONS_CATCH_UP:
            # What the catch-up read is what it offsets (its identity names that figure): a
            # replay offsets the same, and a newer figure is the next catch-up's.
            emissions = reading_of(event.data)
            if emissions is None:
                raise PermanentError(
                    "a catch-up event without the emissions it read (data.emissions)"
                )
        elif "emissions" in needed:
            emissions = self._visible(event, lambda: self.carbonpass.emissions(site_id))
        return Resources(event=event.data, crp=crp, company=company, emissions=emissions)

    def _visible(self, event: ClaimedEvent, fetch: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """What `fetch` reads of what the event names; a 404 within the grace window after
        the event's timestamp may be a CRP or a site not visible through the API yet (its
        documents do not say: docs/providers.md), so it is tried again with backoff, the last
        time at the window's end; after the window a 404 is permanent."""
        try:
            return fetch()
        except PermanentError as exc:
            grace = self.settings.not_found_grace_s
            if exc.status != 404 or not grace:
                raise
            left = grace - event.age_s()
            if left <= 0:
                raise PermanentError(
                    f"{exc} (still not found {grace:g} s after the event's timestamp)",
                    status=exc.status,
                ) from None
            raise NotVisibleYet(
                f"{exc} (not visible yet? tried again until {grace:g} s after the event's "
                "timestamp)",
                status=exc.status,
                retry_after=min(backoff_s(event.attempts, self.settings), left),
            ) from None


def _standing_twin(row: CaptureRow, standing: list[CaptureRow]) -> CaptureRow | None:
    """A row of the event, no longer planned, whose capture stands and is `row`'s (same part,
    action, amount and customer): `row` is the same capture under a new name, never sent."""
    never_sent = row.status == CaptureStatus.PENDING and row.attempt_token is None
    if not never_sent and row.status != CaptureStatus.SUPERSEDED:
        return None
    email = (row.customer_email or "").lower()
    for other in standing:
        if (other.part, other.action, other.amount) == (row.part, row.action, row.amount) and (
            other.customer_email or ""
        ).lower() == email:
            return other
    return None
