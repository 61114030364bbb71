"""Processing one event: claim, fetch, plan, settle every capture through the ledger, finish."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from carbonhook.captures import Impact
from carbonhook.errors import AmbiguousError, PermanentError, PlanError, RetryableError
from carbonhook.event_types import BILL_CONFIRMED, CRP_GENERATED, SUBJECT_ID
from carbonhook.ledger import CaptureRow, Ledger, captured_columns
from carbonhook.metrics import metrics
from carbonhook.schema import utcnow
from carbonhook.settings import Settings
from carbonhook.statuses import SETTLED_CAPTURES, CaptureStatus, EventStatus
from carbonhook.store import ClaimedEvent, EventStore
from workers.carbonpass import CarbonPassClient
from workers.impact import ImpactClient
from workers.planning import Resources, explain, needed_sources
from workers.rules import RuleSet

log = logging.getLogger(__name__)

# A capture's id and the columns that record its answer, not written yet (see `_work`).
Answer = tuple[int, dict[str, Any]]

PREFIX = {CRP_GENERATED: "crp_", BILL_CONFIRMED: "bill_"}
CLOCK_SKEW = timedelta(minutes=5)


def backoff_s(attempt: int, settings: Settings) -> float:
    """Exponential backoff for the `attempt`-th try (1-based), within the configured bounds."""
    delay = settings.retry_min_backoff_s * (2 ** max(0, attempt - 1))
    return float(min(settings.retry_max_backoff_s, delay))


@dataclass
class Processor:
    """Safe to run twice for one event: the claim and the ledger decide what happens."""

    settings: Settings
    store: EventStore
    ledger: Ledger
    carbonpass: CarbonPassClient
    impact: ImpactClient
    rules: Callable[[], RuleSet]
    enqueue: Callable[[int, float], None]
    _in_flight: dict[int, ClaimedEvent] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def process(self, event_id: int) -> str | None:
        """Work on event `event_id` if it can be claimed; return its new status."""
        event = self.store.claim(event_id, lease_s=self.settings.lease_s)
        if event is None:
            # A stray early message (a redelivery) must not cut a Retry-After short.
            wait = self.store.seconds_until_due(event_id)
            if wait is not None:
                self.enqueue(event_id, wait)
            return None
        with self._lock:
            self._in_flight[event.id] = event
        try:
            return self._attempt(event)
        finally:
            with self._lock:
                self._in_flight.pop(event.id, None)

    def release_all(self) -> None:
        """Give back every event still held (the worker is stopping)."""
        with self._lock:
            held = list(self._in_flight.values())
        for event in held:
            self.store.release(event)

    def _attempt(self, event: ClaimedEvent) -> str:
        try:
            status, note, answer = self._work(event)
        except PermanentError as exc:
            return self._fail(event, str(exc), exc.status)
        except PlanError as exc:
            return self._fail(event, f"rules: {exc}", None)
        except RetryableError as exc:
            return self._retry(event, exc)
        except Exception as exc:  # a bug or an outage we did not foresee: keep the event, retry
            log.exception("event %s: unexpected error", event.id)
            return self._retry(event, RetryableError(f"unexpected {type(exc).__name__}: {exc}"))
        self.store.finish(event, status, note=note, capture=answer)
        self._observe(event, status)
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

    def _fail(self, event: ClaimedEvent, error: str, http_status: int | None) -> str:
        self.store.finish(event, EventStatus.FAILED, error=error, http_status=http_status)
        self._observe(event, EventStatus.FAILED)
        log.warning(
            "event %s failed: %s",
            event.id,
            error,
            extra={"event_id": event.id, "outcome": EventStatus.FAILED},
        )
        return EventStatus.FAILED

    def _retry(self, event: ClaimedEvent, exc: RetryableError) -> str:
        if event.attempts > self.settings.max_retries:
            return self._fail(event, f"gave up after {event.attempts} attempts: {exc}", exc.status)
        delay = (
            exc.retry_after
            if exc.retry_after is not None
            else backoff_s(event.attempts, self.settings)
        )
        self.store.retry_later(event, delay_s=delay, error=str(exc), http_status=exc.status)
        self.enqueue(event.id, delay)
        log.info(
            "event %s retry in %.1fs: %s",
            event.id,
            delay,
            exc,
            extra={"event_id": event.id, "outcome": "retry"},
        )
        return "retry"

    def _work(self, event: ClaimedEvent) -> tuple[str, str | None, Answer | None]:
        """The event's final status and note. The answer of its last capture, if that one
        was just captured, is left for `finish` to write with the event: nothing can fail
        between the two, and it spares a round trip per event."""
        prefix = PREFIX.get(event.type)
        if prefix is None:
            raise PermanentError(f"event type {event.type!r} is not processed")
        if not (SUBJECT_ID.fullmatch(event.subject_id) and event.subject_id.startswith(prefix)):
            raise PermanentError(
                f"data.id {event.subject_id[:80]!r} is not {prefix} followed by 1-64 of [A-Za-z0-9_-]"
            )
        ruleset = self.rules()
        resources = self._fetch(event, ruleset)
        rows: list[CaptureRow] = []
        for outcome in explain(ruleset, event.type, resources):
            if not outcome.matched:
                continue
            if outcome.delta is not None:
                rows += self.ledger.ensure_delta(
                    event.id, event.subject_id, outcome.delta, ruleset.sha256
                )
            for planned in outcome.captures:
                rows.append(self.ledger.ensure(event.id, event.subject_id, planned, ruleset.sha256))
        statuses: list[str] = []
        answer = None
        for n, row in enumerate(rows):
            status, answer = self._settle(row, event, ruleset, last=n == len(rows) - 1)
            statuses.append(status)
        if CaptureStatus.HELD in statuses:
            held = statuses.count(CaptureStatus.HELD)
            return EventStatus.HELD, f"{held} capture(s) held over a spend limit", answer
        if not rows:
            return EventStatus.SUCCEEDED, "no rule matched", None
        if CaptureStatus.DRY_RUN in statuses:
            dry = statuses.count(CaptureStatus.DRY_RUN)
            return EventStatus.SUCCEEDED, f"dry run: {dry} capture(s) recorded, not sent", answer
        return EventStatus.SUCCEEDED, None, answer

    def _fetch(self, event: ClaimedEvent, ruleset: RuleSet) -> Resources:
        needed = needed_sources(ruleset, event.type)
        site_id = event.data.get("siteId") if event.type == BILL_CONFIRMED else None
        site_id = site_id if isinstance(site_id, str) and site_id else None
        crp = self.carbonpass.crp(event.subject_id) if "crp" in needed else None
        wants_company = "company" in needed or (
            "emissions" in needed and site_id is None and event.type == BILL_CONFIRMED
        )
        company = self.carbonpass.company() if wants_company else None
        emissions = self.carbonpass.emissions(site_id) if "emissions" in needed else None
        return Resources(event=event.data, crp=crp, company=company, emissions=emissions)

    def _settle(
        self, row: CaptureRow, event: ClaimedEvent, ruleset: RuleSet, *, last: bool
    ) -> tuple[str, Answer | None]:
        """Bring one ledger row to a settled state, or raise to try the event again later.
        With `last`, a new answer is returned for the caller to write, not written."""
        if row.status in SETTLED_CAPTURES or row.status == CaptureStatus.HELD:
            return row.status, None
        if (
            row.status == CaptureStatus.PENDING and row.attempted_at is None
        ) or row.status == CaptureStatus.FAILED:
            return self._call(row, event, ruleset, last=last)
        # unknown, or pending with an attempt under way or cut short: ask 1ClickImpact first.
        assert row.attempted_at is not None
        found = self._reconcile(row)
        if found is not None:
            self.ledger.captured(row.id, found, note="found by reconciliation")
            metrics().captures.labels(row.rule, "reconciled").inc()
            metrics().captured_amount.labels(row.rule, row.action).inc(row.amount)
            return CaptureStatus.CAPTURED, None
        age = (utcnow() - row.attempted_at).total_seconds()
        if age < self.settings.reconcile_after_s:
            wait = self.settings.reconcile_after_s - age
            raise RetryableError(
                f"capture {row.id}: outcome not known yet; checking again in {wait:.0f}s",
                retry_after=wait,
            )
        return self._call(row, event, ruleset, last=last)

    def _call(
        self, row: CaptureRow, event: ClaimedEvent, ruleset: RuleSet, *, last: bool
    ) -> tuple[str, Answer | None]:
        decision = self.ledger.begin_attempt(row, ruleset.file.limits)
        counted = metrics().captures
        if decision == "held":
            counted.labels(row.rule, CaptureStatus.HELD).inc()
            return CaptureStatus.HELD, None
        if decision == "busy":
            raise RetryableError(
                f"capture {row.id} changed under us; looking again", retry_after=1.0
            )
        metadata = {
            "carbonhook_capture": str(row.id),
            "event": str(event.id),
            "rule": row.rule[:500],
        }
        try:
            impact = self.impact.create(
                row.action,
                row.amount,
                customer_email=row.customer_email,
                customer_name=row.customer_name,
                notify=row.notify,
                metadata=metadata,
            )
        except AmbiguousError as exc:
            self.ledger.unknown(row.id, str(exc), exc.status)
            counted.labels(row.rule, "unknown").inc()
            raise RetryableError(
                f"capture {row.id}: {exc}; reconciling",
                status=exc.status,
                retry_after=self.settings.reconcile_after_s,
            ) from None
        except (RetryableError, PermanentError) as exc:
            self.ledger.failed(row.id, str(exc), exc.status)
            counted.labels(row.rule, "failed").inc()
            raise
        if not last:
            self.ledger.captured(row.id, impact)
        counted.labels(row.rule, CaptureStatus.CAPTURED).inc()
        metrics().captured_amount.labels(row.rule, row.action).inc(row.amount)
        log.info(
            "capture %s: %s %s",
            row.id,
            row.action,
            row.amount,
            extra={
                "event_id": event.id,
                "capture_id": row.id,
                "rule": row.rule,
                "outcome": CaptureStatus.CAPTURED,
            },
        )
        return CaptureStatus.CAPTURED, (row.id, captured_columns(impact)) if last else None

    def _reconcile(self, row: CaptureRow) -> Impact | None:
        """The 1ClickImpact record of this capture, if there is one (metadata, else amount/customer/time)."""
        assert row.attempted_at is not None
        since = (row.attempted_at - timedelta(days=1)).date()
        records = self.impact.records(
            row.action,
            customers=row.customer_email is not None,
            since=since,
            customer_email=row.customer_email,
        )
        earliest = row.attempted_at - CLOCK_SKEW
        candidates: list[Impact] = []
        for record in records:
            tag = (record.metadata or {}).get("carbonhook_capture")
            if tag is not None:
                if tag == str(row.id):
                    return record
                continue
            if record.amount != row.amount or record.customer_email != row.customer_email:
                continue
            if _parse_time(record.time_utc) >= earliest and not self.ledger.is_attributed(
                record.user_id, record.time_utc
            ):
                candidates.append(record)
        return min(candidates, key=lambda r: r.time_utc, default=None)


def _parse_time(value: str) -> datetime:
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return datetime.min.replace(tzinfo=utcnow().tzinfo)
