"""The audit: the ledger compared with 1ClickImpact's records, and proven duplicates undone.

Whatever 1ClickImpact does (an impact listed late, a create that finished after the caller gave
up), the net effect must be one standing impact per ledger row. The audit pages once through
both listings of every action since the oldest capture no listing has confirmed yet (at least
the last day), and for the records tagged by this deployment (carbonhook/tags.py):

- a record tagged with a row the ledger does not know as captured is attached to it;
- two records tagged with one row are a double capture: the later one is reversed with
  `POST /v1/cancel_impact` (the reason names the row), and the reversal is recorded on the row;
- a `captured` row with no record once its settle window has passed is flagged;
- an `unknown` row with no record once its settle window has passed never happened, when the
  listings can prove it (they carry metadata): it becomes `failed` and is sent again when its
  event runs again; when they cannot, it is flagged for a person to resolve.

Records with no tag, or another deployment's, are reported, never cancelled: nothing proves
they are ours.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from carbonhook.audit_log import AuditLog
from carbonhook.capture_rows import CaptureRow
from carbonhook.captures import Impact
from carbonhook.errors import ApiError
from carbonhook.ledger import Ledger
from carbonhook.metrics import metrics
from carbonhook.statuses import CaptureStatus
from carbonhook.tags import tag_of
from workers.impact import ImpactClient

log = logging.getLogger(__name__)


@dataclass
class AuditReport:
    """What one audit found and did."""

    since: datetime
    records: int = 0
    confirmed: int = 0
    attached: list[int] = field(default_factory=list)
    not_found: list[int] = field(default_factory=list)
    reversed: list[dict[str, object]] = field(default_factory=list)
    flagged: list[dict[str, object]] = field(default_factory=list)
    untagged: list[dict[str, object]] = field(default_factory=list)
    foreign: int = 0
    unknown_rows: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def discrepancies(self) -> int:
        """What remains wrong after this audit (a reversed duplicate is settled)."""
        return len(self.flagged) + len(self.unknown_rows) + len(self.errors)

    def as_dict(self) -> dict[str, object]:
        return {
            "since": self.since.isoformat(),
            "records": self.records,
            "confirmed": self.confirmed,
            "attached": self.attached,
            "not_found": self.not_found,
            "reversed": self.reversed,
            "flagged": self.flagged,
            "untagged": self.untagged,
            "foreign": self.foreign,
            "unknown_rows": self.unknown_rows,
            "errors": self.errors,
            "discrepancies": self.discrepancies,
        }


class Auditor:
    def __init__(
        self, ledger: Ledger, audit_log: AuditLog, impact: ImpactClient, *, settle_s: float
    ) -> None:
        self.ledger = ledger
        self.log = audit_log
        self.impact = impact
        self.settle_s = settle_s

    def run(self, since: datetime | None = None) -> AuditReport:
        """One audit over the records since `since` (default: see the module's docstring)."""
        start = since or self.log.window_start()
        report = AuditReport(since=start)
        records = self._records(start)
        report.records = len(records)
        deployment = self.ledger.deployment_id()
        reversed_already = self.log.reversed_impacts()
        tagged: dict[int, list[Impact]] = {}
        untagged: list[Impact] = []
        for record in records:
            tag = tag_of(record.metadata)
            if tag is None:
                untagged.append(record)
            elif tag.deployment != deployment:
                report.foreign += 1
            elif (record.user_id, record.time_utc) not in reversed_already:
                tagged.setdefault(tag.capture_id, []).append(record)
        confirmed: list[int] = []
        for capture_id, found in sorted(tagged.items()):
            row = self._row(capture_id)
            if row is None:
                report.unknown_rows.append(f"{found[0].user_id}@{found[0].time_utc}")
                continue
            self._settle_row(row, found, report)
            confirmed.append(capture_id)
        # Rows matched without a tag (a listing that carries no metadata) are confirmed by
        # their record; other untagged records are reported.
        owners = self.ledger.owners([(r.user_id, r.time_utc) for r in untagged])
        for record in untagged:
            owner = owners.get((record.user_id, record.time_utc))
            if owner is not None:
                confirmed.append(owner)
            elif (record.user_id, record.time_utc) not in reversed_already:
                report.untagged.append(
                    {
                        "user_id": record.user_id,
                        "time_utc": record.time_utc,
                        "action": record.action,
                        "amount": record.amount,
                        "customer_email": record.customer_email,
                    }
                )
        self.log.confirm(confirmed)
        report.confirmed = len(confirmed)
        self._retry_reversals(report)
        seen = set(confirmed)
        for capture_id in self.log.captured_between(since=start, older_than_s=self.settle_s):
            if capture_id in seen:
                continue
            note = "captured, but no record at 1ClickImpact after the settle window"
            self.log.flag(capture_id, note)
            report.flagged.append({"capture_id": capture_id, "note": note})
        self._settle_unknown(records, tagged, report)
        metrics().audit_discrepancies.set(report.discrepancies)
        if report.discrepancies or report.reversed or report.attached:
            log.warning(
                "audit: %d records, %d attached, %d reversed, %d flagged, %d errors",
                report.records,
                len(report.attached),
                len(report.reversed),
                len(report.flagged),
                len(report.errors),
            )
        return report

    def _settle_unknown(
        self, records: list[Impact], tagged: dict[int, list[Impact]], report: AuditReport
    ) -> None:
        """`unknown` rows past their settle window with no record: when the listings prove it
        (they carry metadata, or list nothing at all), the call never happened; otherwise a
        person must check and resolve."""
        provable = not records or any(record.metadata is not None for record in records)
        for capture_id, token in self.log.stale_unknown(older_than_s=self.settle_s):
            if capture_id in tagged:
                continue  # attached above
            if provable:
                if self.log.not_found(capture_id, token):
                    report.not_found.append(capture_id)
                continue
            note = (
                "unknown past its settle window, and the listings carry no tags: check and resolve"
            )
            self.log.flag(capture_id, note)
            report.flagged.append({"capture_id": capture_id, "note": note})

    def _records(self, start: datetime) -> list[Impact]:
        since = (start - timedelta(days=1)).date()
        found: list[Impact] = []
        for customers in (False, True):
            found.extend(self.impact.records(None, customers=customers, since=since))
        return found

    def _row(self, capture_id: int) -> CaptureRow | None:
        try:
            return self.ledger.get(capture_id)
        except Exception:  # NotFound: a tag naming a row this database never had
            return None

    def _settle_row(self, row: CaptureRow, found: list[Impact], report: AuditReport) -> None:
        found = sorted(found, key=lambda r: r.time_utc)
        keep = next(
            (r for r in found if (r.user_id, r.time_utc) == (row.user_id, row.time_utc)),
            found[0],
        )
        unknown_to_ledger = row.status != CaptureStatus.CAPTURED or row.user_id is None
        if unknown_to_ledger and self.log.attach(row.id, keep):
            report.attached.append(row.id)
            log.warning("audit: capture %s found at 1ClickImpact and attached", row.id)
        for duplicate in found:
            if duplicate is not keep:
                reason = f"carbonhook: duplicate of capture {row.id} ({row.rule}, {row.subject_id})"
                if self.log.begin_reversal(row.id, duplicate, reason):
                    self._cancel(
                        row.id, row.rule, duplicate.user_id, duplicate.time_utc, reason, report
                    )

    def _retry_reversals(self, report: AuditReport) -> None:
        done = {(str(r["user_id"]), str(r["time_utc"])) for r in report.reversed}
        for pending in self.log.pending_reversals():
            if (pending.user_id, pending.time_utc) in done:
                continue
            rule = self.ledger.get(pending.capture_id).rule
            self._cancel(
                pending.capture_id, rule, pending.user_id, pending.time_utc, pending.reason, report
            )

    def _cancel(
        self,
        capture_id: int,
        rule: str,
        user_id: str,
        time_utc: str,
        reason: str,
        report: AuditReport,
    ) -> None:
        try:
            self.impact.cancel(user_id, time_utc, reason=reason)
        except ApiError as exc:
            self.log.end_reversal(user_id, time_utc, error=str(exc))
            report.errors.append(f"capture {capture_id}: cancelling {user_id}@{time_utc}: {exc}")
            return
        self.log.end_reversal(user_id, time_utc)
        metrics().reversals.labels(rule).inc()
        report.reversed.append({"capture_id": capture_id, "user_id": user_id, "time_utc": time_utc})
        log.warning(
            "audit: capture %s stood twice; reversed %s@%s",
            capture_id,
            user_id,
            time_utc,
            extra={"capture_id": capture_id, "rule": rule, "outcome": "reversed"},
        )
