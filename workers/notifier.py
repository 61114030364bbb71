"""Sending the outbox's notifications (carbonhook/outbox.py) to operators (webhooks, e-mail:
workers/destinations.py), from the
sweeper's thread: never from a worker's, so a slow or dead receiver never holds up an event.

Each destination gets the message (carbonhook/notices.py: Slack's `text` and the structured
fields beside it); what a destination takes is done, anything else is tried again with exponential
backoff and jitter, and a notification still not taken by every destination `give_up_s` after
it was written is given up with a log line and a metric.
"""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from carbonhook import notices
from carbonhook.metrics import metrics
from carbonhook.notices import redact
from carbonhook.outbox import ClaimedNotification, Outbox
from carbonhook.schema import utcnow
from workers.destinations import Destination

log = logging.getLogger(__name__)

MIN_BACKOFF_S = 30.0
MAX_BACKOFF_S = 6 * 3600.0
GIVE_UP_S = 3 * 86400.0
# At most this many notifications per sweep: the sweeper has events to hand over too.
PER_PASS = 50


def backoff_s(
    attempts: int, *, low: float = MIN_BACKOFF_S, high: float = MAX_BACKOFF_S, rand: float = 1.0
) -> float:
    """The wait before the next try after `attempts` tries: doubling, capped, and spread by
    `rand` (0..1) over its upper half so that many rows due at once do not move together."""
    delay = min(high, low * (2 ** max(0, attempts - 1)))
    return float(delay * (0.5 + 0.5 * rand))


@dataclass
class Notifier:
    """Sends what the outbox holds to every destination; writes the daily digest and the
    notifications of captures left `unknown` past the settle window."""

    outbox: Outbox
    destinations: tuple[Destination, ...]
    client: httpx.Client  # the webhooks' (closed with the worker)
    timeout_s: float = 10.0  # of each destination's send
    public_url: str | None = None
    secrets: tuple[str, ...] = ()
    digest_at: str | None = None  # HH:MM, UTC
    limits: Callable[[], tuple[int | None, int | None]] = lambda: (None, None)
    settle_s: float = 60.0
    min_backoff_s: float = MIN_BACKOFF_S
    max_backoff_s: float = MAX_BACKOFF_S
    give_up_s: float = GIVE_UP_S
    clock: Callable[[], datetime] = utcnow
    rand: Callable[[], float] = random.random

    def run(self) -> int:
        """One pass from the sweeper: note what changed by itself, send what is due."""
        self.outbox.note_overdue_unknown(settle_s=self.settle_s)
        self.write_digest_if_due()
        return self.send_due()

    def send_due(self, limit: int = PER_PASS) -> int:
        """Send up to `limit` due notifications; returns how many every destination took."""
        if not self.destinations:
            self.outbox.drop_due()
            return 0
        lease_s = 60.0 + 2 * len(self.destinations) * self.timeout_s
        down: dict[str, str] = {}  # destinations that failed this pass: not tried again in it
        done = 0
        for _ in range(limit):
            claimed = self.outbox.claim(lease_s=lease_s)
            if claimed is None:
                break
            done += self._send(claimed, down)
        return done

    def _send(self, claimed: ClaimedNotification, down: dict[str, str]) -> int:
        body = self.body(claimed.kind, claimed.fields)
        delivered = set(claimed.delivered)
        errors: list[str] = []
        for destination in self.destinations:
            if destination.key in delivered:
                continue
            error = down.get(destination.key) or self.post(destination, body)
            if error is None:
                delivered.add(destination.key)
                continue
            down[destination.key] = error
            errors.append(f"{destination.shown}: {error}")
        counted = metrics().notifications
        if not errors:
            self.outbox.sent(claimed, sorted(delivered))
            counted.labels(claimed.kind, "sent").inc()
            return 1
        error = "; ".join(errors)
        counted.labels(claimed.kind, "failed").inc()
        if claimed.age_s >= self.give_up_s:
            self.outbox.give_up(claimed, sorted(delivered), error)
            counted.labels(claimed.kind, "given_up").inc()
            log.error(
                "notification %s (%s) given up after %d attempts: %s",
                claimed.id,
                claimed.kind,
                claimed.attempts,
                error,
            )
            return 0
        delay = backoff_s(
            claimed.attempts, low=self.min_backoff_s, high=self.max_backoff_s, rand=self.rand()
        )
        self.outbox.retry(claimed, sorted(delivered), delay_s=delay, error=error)
        log.warning(
            "notification %s (%s) not taken; again in %.0fs: %s",
            claimed.id,
            claimed.kind,
            delay,
            error,
        )
        return 0

    def body(self, kind: str, fields: dict[str, Any]) -> dict[str, Any]:
        return notices.message(kind, fields, public_url=self.public_url, secrets=self.secrets)

    def post(self, destination: Destination, body: dict[str, Any]) -> str | None:
        """Send `body` to `destination`; None if it took it, else why not (no secret)."""
        error = destination.send(body)
        return None if error is None else str(redact(error, self.secrets))

    def write_digest_if_due(self) -> bool:
        """Once per UTC day, at or after `digest_at`: the digest, written once whatever the
        number of sweepers (its key is the day)."""
        if self.digest_at is None:
            return False
        now = self.clock().astimezone(UTC)
        if now.strftime("%H:%M") < self.digest_at:
            return False
        day = now.date().isoformat()
        if self.outbox.has(f"digest:{day}"):
            return False
        events, spent = self.outbox.digest_figures(now)
        day_limit, month_limit = self.limits()
        spend = {**spent, "day_limit_lbs": day_limit, "month_limit_lbs": month_limit}
        self.outbox.write_one(notices.digest(day, events, spend))
        return True

    def send_test(self) -> list[tuple[Destination, str | None]]:
        """Send one test notification to every destination now (`carbonhook notify test`),
        outside the outbox: each destination's outcome."""
        notice = notices.test_notice(uuid.uuid4().hex)
        body = self.body(notice.kind, dict(notice.fields))
        return [(destination, self.post(destination, body)) for destination in self.destinations]
