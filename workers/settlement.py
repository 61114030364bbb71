"""Settling one ledger row: send it, find it, hold it, or supersede it; never leave it open.

Every call to 1ClickImpact begins an attempt under a new token (`Ledger.begin_attempt`), carries
the row's tag, and records its answer under that token the moment it arrives. A row whose call
may have left (`unknown`, or `pending` with an attempt) is looked for at 1ClickImpact until its
settle window has passed (`CARBONHOOK_RECONCILE_AFTER_S`, by the database's clock); only then
is it sent again, or, if it is no longer planned, superseded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from carbonhook.capture_rows import CaptureRow
from carbonhook.errors import AmbiguousError, PermanentError, RetryableError, StillSettling
from carbonhook.ledger import Ledger
from carbonhook.metrics import metrics
from carbonhook.settings import Settings
from carbonhook.spend import SpendLimits
from carbonhook.statuses import SETTLED_CAPTURES, CaptureStatus
from carbonhook.tags import Tag, metadata_for
from workers.impact import ImpactClient
from workers.reconciliation import Reconciler

log = logging.getLogger(__name__)

# The first look for a lost answer comes this soon; the next ones further apart.
FIRST_LOOK_S = 1.0


@dataclass
class Settlement:
    """Brings ledger rows to a settled state for one event's attempt, or raises
    `RetryableError` with the time to look again."""

    settings: Settings
    ledger: Ledger
    impact: ImpactClient
    reconciler: Reconciler
    hold_lease: Callable[[], None]  # before a call: raises if the event was taken over

    def settle(self, row: CaptureRow, event_id: int, limits: SpendLimits) -> str:
        """A planned row: its status once settled (`captured`, `held`, …)."""
        if row.status == CaptureStatus.SUPERSEDED:  # no longer planned before, planned now
            revived = self.ledger.revive(row)
            if revived is None:
                raise RetryableError(
                    f"capture {row.id} changed under us; looking again", retry_after=1.0
                )
            row = revived
        if row.status in SETTLED_CAPTURES or row.status == CaptureStatus.HELD:
            return row.status
        if row.in_flight:
            found = self._found(row)
            if found is not None:
                return found
            self._wait_for_window(row)
        return self._call(row, event_id, limits)

    def settle_stale(self, row: CaptureRow) -> str:
        """A row the event planned before and plans no more: found, or superseded."""
        if row.status in SETTLED_CAPTURES:
            return row.status
        if row.in_flight:
            found = self._found(row)
            if found is not None:
                return found
            self._wait_for_window(row)
            reason = "no longer planned; not found at 1ClickImpact within the settle window"
        else:
            reason = "no longer planned; never sent"
        if self.ledger.supersede(row, reason):
            metrics().captures.labels(row.rule, CaptureStatus.SUPERSEDED).inc()
            return CaptureStatus.SUPERSEDED
        raise RetryableError(f"capture {row.id} changed under us; looking again", retry_after=1.0)

    def supersede_by(self, row: CaptureRow, standing: CaptureRow) -> str:
        """A new row whose capture already stands under another row of the event (a rule
        renamed, say): superseded, not sent a second time."""
        if row.status == CaptureStatus.SUPERSEDED:
            return row.status
        reason = f"already captured as capture {standing.id} (rule {standing.rule})"
        if self.ledger.supersede(row, reason):
            return CaptureStatus.SUPERSEDED
        raise RetryableError(f"capture {row.id} changed under us; looking again", retry_after=1.0)

    def _found(self, row: CaptureRow) -> str | None:
        """Look for the row's record; `captured` if 1ClickImpact proves it. Raises to wait when
        nothing can be concluded yet (another capture of its signature has a call out)."""
        assert row.attempt_token is not None
        finding = self.reconciler.find(row, window_s=self.settings.reconcile_after_s)
        if not finding.decisive:
            raise StillSettling(
                f"capture {row.id}: another capture of {row.amount} {row.action} for the same "
                "customer has a call out; its record could be either's: waiting",
                retry_after=max(FIRST_LOOK_S, self.settings.reconcile_after_s / 4),
            )
        record = finding.record
        if finding.group:  # the ledger has recorded the whole signature's settlement already
            if record is None:
                return None  # failed: sent again (its `unknown` row no longer matches)
            metrics().captures.labels(row.rule, "reconciled").inc()
            metrics().captured_amount.labels(row.rule, row.action).inc(row.amount)
            return CaptureStatus.CAPTURED
        if record is None:
            return None
        if not self.ledger.captured(
            row.id, record, token=row.attempt_token, note="found by reconciliation"
        ):
            raise RetryableError(
                f"capture {row.id} changed under us; looking again", retry_after=1.0
            )
        metrics().captures.labels(row.rule, "reconciled").inc()
        metrics().captured_amount.labels(row.rule, row.action).inc(row.amount)
        return CaptureStatus.CAPTURED

    def _wait_for_window(self, row: CaptureRow) -> None:
        """Raise to look again later unless the row's settle window has passed."""
        age = self.ledger.attempt_age_s(row.id) or 0.0
        window = self.settings.reconcile_after_s
        if age >= window:
            return
        # A growing interval: often at first (a listing may lag by seconds), then less.
        wait = min(window - age, max(FIRST_LOOK_S, age / 2))
        raise StillSettling(
            f"capture {row.id}: not found at 1ClickImpact yet; looking again in {wait:.0f}s",
            retry_after=wait,
        )

    def _call(self, row: CaptureRow, event_id: int, limits: SpendLimits) -> str:
        self.hold_lease()
        start = self.ledger.begin_attempt(row, limits)
        counted = metrics().captures
        if start.decision == "held":
            counted.labels(row.rule, CaptureStatus.HELD).inc()
            return CaptureStatus.HELD
        if start.decision == "busy" or start.token is None:
            if self.ledger.signature_unknown(row):
                raise StillSettling(
                    f"capture {row.id}: another capture of {row.amount} {row.action} for the "
                    "same customer is unknown; waiting until it is settled",
                    retry_after=max(FIRST_LOOK_S, self.settings.reconcile_after_s / 4),
                )
            raise RetryableError(
                f"capture {row.id} changed under us; looking again", retry_after=1.0
            )
        token = start.token
        tag = Tag(self.ledger.deployment_id(), row.id, token)
        try:
            impact = self.impact.create(
                row.action,
                row.amount,
                customer_email=row.customer_email,
                customer_name=row.customer_name,
                notify=row.notify,
                metadata=metadata_for(tag, event_id=event_id, rule=row.rule),
            )
        except AmbiguousError as exc:
            self.ledger.unknown(row.id, str(exc), exc.status, token=token)
            counted.labels(row.rule, "unknown").inc()
            raise RetryableError(
                f"capture {row.id}: {exc}; looking for it at 1ClickImpact",
                status=exc.status,
                retry_after=min(FIRST_LOOK_S, self.settings.reconcile_after_s),
            ) from None
        except (RetryableError, PermanentError) as exc:
            # Definite: nothing happened (sent or not, decided on the wire: workers/http.py).
            self.ledger.failed(row.id, str(exc), exc.status, token=token)
            counted.labels(row.rule, "failed").inc()
            raise
        if not self.ledger.captured(row.id, impact, token=token):
            # A newer attempt or an admin changed the row meanwhile: the ledger's word stands.
            log.warning("capture %s: answer arrived after the row changed", row.id)
            return self.ledger.get(row.id).status
        counted.labels(row.rule, CaptureStatus.CAPTURED).inc()
        metrics().captured_amount.labels(row.rule, row.action).inc(row.amount)
        log.info(
            "capture %s: %s %s",
            row.id,
            row.action,
            row.amount,
            extra={
                "event_id": event_id,
                "capture_id": row.id,
                "rule": row.rule,
                "outcome": CaptureStatus.CAPTURED,
            },
        )
        return CaptureStatus.CAPTURED
