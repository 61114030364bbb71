"""Prometheus metrics. Counters live in each process (or, with PROMETHEUS_MULTIPROC_DIR set,
in files every process on the host shares); states and spend are read from the database at
scrape time, so every receiver reports the same truth."""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy import Engine, func, select

from carbonhook.database import describe_error
from carbonhook.schema import Capture, Event, Spend
from carbonhook.statuses import CaptureStatus, EventStatus

log = logging.getLogger(__name__)
Limits = Callable[[], tuple[int | None, int | None]]
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
PROCESSING_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400, 86400)


@dataclass(frozen=True)
class Metrics:
    deliveries: Counter
    processing_seconds: Histogram
    captures: Counter
    captured_amount: Counter
    api_requests: Counter
    api_seconds: Histogram
    sweeper_reenqueued: Counter
    events_ignored: Counter
    reversals: Counter
    audit_discrepancies: Gauge
    metrics_errors: Counter
    notifications: Counter
    rate_waits: Counter
    rate_wait_seconds: Counter
    rate_limited: Counter
    rate_pauses: Counter


@functools.cache
def metrics() -> Metrics:
    """The process's metrics, created on first use (never at import)."""
    made = Metrics(
        deliveries=Counter("carbonhook_deliveries", "Webhook deliveries by outcome", ["outcome"]),
        processing_seconds=Histogram(
            "carbonhook_event_processing_seconds",
            "Time from receipt to a final status",
            ["type", "status"],
            buckets=PROCESSING_BUCKETS,
        ),
        captures=Counter(
            "carbonhook_captures",
            "Capture attempts settled, by rule and status",
            ["rule", "status"],
        ),
        captured_amount=Counter(
            "carbonhook_captured_amount",
            "Amount captured (lbs, trees or lbs of plastic) by rule and action",
            ["rule", "action"],
        ),
        api_requests=Counter(
            "carbonhook_api_requests", "Outbound API calls by status", ["api", "endpoint", "status"]
        ),
        api_seconds=Histogram(
            "carbonhook_api_request_seconds",
            "Outbound API call latency",
            ["api", "endpoint"],
            buckets=LATENCY_BUCKETS,
        ),
        sweeper_reenqueued=Counter(
            "carbonhook_sweeper_reenqueued", "Events the sweeper handed to the queue again"
        ),
        events_ignored=Counter(
            "carbonhook_events_ignored",
            "Events a worker ended ignored because no rule in force is on their type, by type",
            ["type"],
        ),
        reversals=Counter(
            "carbonhook_duplicates_reversed",
            "Impacts found standing twice for one capture and reversed at 1ClickImpact",
            ["rule"],
        ),
        audit_discrepancies=Gauge(
            "carbonhook_audit_discrepancies",
            "What the last audit of the ledger against 1ClickImpact's records left unresolved",
            multiprocess_mode="max",
        ),
        metrics_errors=Counter(
            "carbonhook_metrics_errors",
            "Scrapes answered without a source's figures because it could not be read",
            ["source"],
        ),
        notifications=Counter(
            "carbonhook_notifications",
            "Notifications to operators by kind and outcome: sent (every destination took it), "
            "failed (one destination's attempt, tried again later), given_up",
            ["kind", "outcome"],
        ),
        rate_waits=Counter(
            "carbonhook_rate_limit_waits",
            "Outbound calls that waited for a request of their API's shared budget",
            ["api"],
        ),
        rate_wait_seconds=Counter(
            "carbonhook_rate_limit_wait_seconds",
            "Seconds outbound calls waited for their API's shared budget",
            ["api"],
        ),
        rate_limited=Counter(
            "carbonhook_rate_limited",
            "Outbound calls not sent (no request of the budget in time), their events retried",
            ["api"],
        ),
        rate_pauses=Counter(
            "carbonhook_rate_limit_pauses",
            "Pauses of every worker's calls to an API after a 429, by what set their length",
            ["api", "by"],
        ),
    )
    for source in ("database", "counters"):
        made.metrics_errors.labels(source)  # at 0 from the start, so increase() sees the first
    return made


class StoreCollector:
    """Gauges read from the database when scraped: events by status, ignored events by type,
    captures by status, spend, when the newest delivery was stored and since when the oldest
    held capture has waited."""

    def __init__(self, engine: Engine, limits: Limits) -> None:
        self.engine = engine
        self.limits = limits

    def collect(self) -> Iterator[Metric]:
        events = GaugeMetricFamily("carbonhook_events", "Events by status", labels=["status"])
        ignored = GaugeMetricFamily(
            "carbonhook_ignored_events",
            "Events stored ignored (no rule was on their type), by type",
            labels=["type"],
        )
        captures = GaugeMetricFamily(
            "carbonhook_ledger_captures", "Ledger rows by status", labels=["status"]
        )
        spend = GaugeMetricFamily(
            "carbonhook_spend_lbs",
            "Pounds of carbon reserved in the current window",
            labels=["window"],
        )
        limit = GaugeMetricFamily(
            "carbonhook_spend_limit_lbs", "The configured limit for the window", labels=["window"]
        )
        last_delivery = GaugeMetricFamily(
            "carbonhook_last_delivery_timestamp_seconds",
            "When the newest delivery was stored (absent while none is)",
        )
        oldest = GaugeMetricFamily(
            "carbonhook_ledger_oldest_timestamp_seconds",
            "When the longest-waiting ledger row in the status last changed (held rows only)",
            labels=["status"],
        )
        today = datetime.now(UTC).date().isoformat()
        with self.engine.connect() as conn:
            for status, count in conn.execute(
                select(Event.status, func.count()).group_by(Event.status)
            ):
                events.add_metric([status], count)
            for event_type, count in conn.execute(
                select(Event.type, func.count())
                .where(Event.status == EventStatus.IGNORED)
                .group_by(Event.type)
            ):
                ignored.add_metric([event_type], count)
            for status, count in conn.execute(
                select(Capture.status, func.count()).group_by(Capture.status)
            ):
                captures.add_metric([status], count)
            windows = {"day": f"day:{today}", "month": f"month:{today[:7]}"}
            found = dict(
                conn.execute(
                    select(Spend.window, Spend.lbs).where(Spend.window.in_(windows.values()))
                ).all()
            )
            # Both read an index (ix_events_received; ix_captures_status_id, then few rows).
            newest = conn.execute(select(func.max(Event.received_at))).scalar()
            held_since = conn.execute(
                select(func.min(Capture.updated_at)).where(Capture.status == CaptureStatus.HELD)
            ).scalar()
        for name, key in windows.items():
            spend.add_metric([name], found.get(key, 0))
        for name, value in zip(("day", "month"), self.limits(), strict=True):
            if value is not None:
                limit.add_metric([name], value)
        if newest is not None:
            last_delivery.add_metric([], _timestamp(newest))
        if held_since is not None:
            oldest.add_metric([CaptureStatus.HELD.value], _timestamp(held_since))
        yield from (events, ignored, captures, spend, limit, last_delivery, oldest)


def _timestamp(moment: datetime) -> float:
    """Seconds since the epoch of a time the database keeps as naive UTC."""
    return moment.replace(tzinfo=moment.tzinfo or UTC).timestamp()


class CachedCollector:
    """What `collect` yields, kept for `max_age_s`: scrapes, however many, query at most that
    often (the store's figures are GROUP BY queries over every event and capture)."""

    def __init__(
        self,
        collect: Callable[[], Iterator[Metric]],
        *,
        max_age_s: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._collect = collect
        self.max_age_s = max_age_s
        self._clock = clock
        self._lock = threading.Lock()  # scrapes run on the thread pool
        self._taken_at: float | None = None
        self._metrics: list[Metric] = []

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            now = self._clock()
            if self._taken_at is None or now - self._taken_at >= self.max_age_s:
                self._metrics = list(self._collect())
                self._taken_at = now
            kept = self._metrics
        yield from kept


def exposition(extra: Callable[[], Iterator[Metric]] | None = None) -> bytes:
    """The text to answer a scrape with: this process's (or all processes') counters, plus `extra`
    (the database's figures). It never fails as a whole: figures that cannot be read are left
    out of this answer, logged and counted in `carbonhook_metrics_errors_total{source}`."""
    failures = metrics().metrics_errors
    store_text = b""
    if extra is not None:
        store_registry = CollectorRegistry()
        store_registry.register(_Once(extra))
        try:
            store_text = generate_latest(store_registry)
        except Exception as exc:  # left out, logged and counted: not silent, and not a 500
            failures.labels("database").inc()
            log.warning("/metrics left out the database's figures: %s", describe_error(exc))
    try:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            text = generate_latest(registry)
        else:
            text = generate_latest(REGISTRY)
    except Exception as exc:  # a damaged multi-process file: the database's figures still go
        failures.labels("counters").inc()
        log.warning("/metrics left out this process's counters: %s", describe_error(exc))
        text = b""
    return text + store_text


class _Once:
    def __init__(self, collect: Callable[[], Iterator[Metric]]) -> None:
        self.collect = collect
