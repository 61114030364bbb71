"""Finding a capture whose call may have left: the record at 1ClickImpact that proves it.

1ClickImpact has no idempotency key, and nothing says how soon a new impact shows in its
listings, whether they echo `metadata`, or whether they keep an e-mail as it was sent
(docs/providers.md). So a record settles a row only when it proves the row:

- a record carrying our tag for this row (`carbonhook/tags.py`) is the row's, exactly; one
  carrying another row's tag or another deployment's is never this row's;
- when the listings carry no metadata at all, the record must match the row's signature
  (action, amount, customer e-mail in any case), be no older than the attempt, be claimed by
  no other row, and be the oldest such record; and the caller checks first that no other
  capture of the signature is in flight, so the oldest such record can only be this row's.

A row not found is looked for again, on a growing interval, until its settle window has passed
since the attempt began (the database's clock); only then may it be sent again.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from carbonhook.capture_rows import CaptureRow
from carbonhook.captures import Impact
from carbonhook.ledger import Ledger
from carbonhook.tags import CAPTURE_KEY, tag_of
from workers.impact import ImpactClient

# A record's time is 1ClickImpact's clock, the attempt's is ours: allow them to disagree.
CLOCK_SKEW = timedelta(minutes=5)


def parse_time(value: str) -> datetime | None:
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def match_record(
    row: CaptureRow,
    records: Iterable[Impact],
    *,
    deployment: str,
    claimed: set[tuple[str, str]],
) -> Impact | None:
    """The record that proves `row`'s capture, or None (pure: see the module's docstring).
    `claimed` holds the `(user_id, time_utc)` of records other rows already own."""
    assert row.attempted_at is not None
    earliest = row.attempted_at - CLOCK_SKEW
    email = (row.customer_email or "").lower()
    echoes_metadata = False
    candidates: list[Impact] = []
    for record in records:
        if record.metadata is not None:
            echoes_metadata = True
        tag = tag_of(record.metadata)
        if tag is not None:
            if tag.deployment == deployment and tag.capture_id == row.id:
                return record
            continue
        legacy = (record.metadata or {}).get(CAPTURE_KEY)
        if legacy is not None:  # made before tags carried the deployment
            if legacy == str(row.id) and (record.user_id, record.time_utc) not in claimed:
                return record
            continue
        if record.amount != row.amount or (record.customer_email or "").lower() != email:
            continue
        when = parse_time(record.time_utc)
        if when is None or when < earliest or (record.user_id, record.time_utc) in claimed:
            continue
        candidates.append(record)
    if echoes_metadata:
        return None  # every capture of ours is tagged: an untagged record is someone else's
    return min(candidates, key=lambda r: r.time_utc, default=None)


class Reconciler:
    """Looks for a row's record in both listings, newest first, from the day before the
    attempt; reads the ledger for what other rows already own."""

    def __init__(self, ledger: Ledger, impact: ImpactClient) -> None:
        self.ledger = ledger
        self.impact = impact

    def find(self, row: CaptureRow) -> Impact | None:
        """The record proving `row`'s capture, if 1ClickImpact lists one now."""
        assert row.attempted_at is not None
        fallback_allowed = not self.ledger.signature_in_flight(row)
        since = (row.attempted_at - timedelta(days=1)).date()
        stop_before = row.attempted_at - CLOCK_SKEW
        records: list[Impact] = []
        for customers in (row.customer_email is not None, row.customer_email is None):
            previous: datetime | None = None
            for record in self.impact.records(
                row.action,
                customers=customers,
                since=since,
                # No `customer_email` filter: whether 1ClickImpact compares it in any case is
                # not documented, and a listing that keeps e-mails lower-cased would miss ours.
                newest_first=True,
            ):
                records.append(record)
                when = parse_time(record.time_utc)
                descending = previous is not None and when is not None and when <= previous
                if descending and when is not None and when < stop_before:
                    break  # newest first: the rest are older than the attempt
                previous = when or previous
        claimed = self.ledger.attributed([(r.user_id, r.time_utc) for r in records])
        found = match_record(row, records, deployment=self.ledger.deployment_id(), claimed=claimed)
        if found is not None and tag_of(found.metadata) is None and not fallback_allowed:
            return None  # another capture of the signature is in flight: it could be theirs
        return found
