"""Finding a capture whose call may have left: the record at 1ClickImpact that proves it.

1ClickImpact has no idempotency key, and nothing says how soon a new impact shows in its
listings, whether they echo `metadata`, or whether they keep an e-mail as it was sent
(docs/providers.md). So a record settles a row only when it proves the row:

- a record carrying our tag for this row (`carbonhook/tags.py`) is the row's, exactly; one
  carrying another row's tag or another deployment's is never this row's;
- when the listings carry no metadata at all, the record must match the row's signature
  (action, amount, customer e-mail in any case), be no older than the attempt, and be claimed
  by no other row. While no other capture of the signature is in flight, the oldest such
  record can only be this row's. While another one has a call out, nothing can be decided:
  the row waits (sending it again could make a second impact). When every capture of the
  signature in flight is `unknown` and past its settle window, none has a call out any more:
  the records are given to the rows in order, oldest to oldest, for the whole signature at
  once in one transaction (so no row is sent again while a record another worker left
  unclaimed could be its own). Captures of one signature are the same action, amount and
  customer, so whichever row gets which record, each row stands once; the rows past the
  records never happened: `failed`, and sent again.

A row not found is looked for again, on a growing interval, until its settle window has passed
since the attempt began (the database's clock); only then may it be sent again.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from carbonhook.capture_rows import CaptureRow
from carbonhook.captures import Impact
from carbonhook.ledger import Ledger
from carbonhook.statuses import CaptureStatus
from carbonhook.tags import CAPTURE_KEY, tag_of
from workers.impact import ImpactClient

# A record's time is 1ClickImpact's clock, the attempt's is ours: allow them to disagree.
CLOCK_SKEW = timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class Finding:
    """What the listings say of a row: its `record`, or none; `decisive` False when nothing
    can be concluded yet (another capture of its signature has a call out)."""

    record: Impact | None
    decisive: bool = True
    # Decided for every capture of the signature at once: each row and its record (None: it
    # never happened). The caller has the ledger record the whole of it in one transaction.
    group: tuple[tuple[CaptureRow, Impact | None], ...] = ()


def parse_time(value: str) -> datetime | None:
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def match_tagged(
    row: CaptureRow, records: Iterable[Impact], *, deployment: str, claimed: set[tuple[str, str]]
) -> tuple[Impact | None, bool]:
    """The record tagged with `row` (pure), and whether the listings carry metadata at all (then
    an untagged record is never ours: every capture of ours is tagged)."""
    echoes_metadata = False
    for record in records:
        if record.metadata is not None:
            echoes_metadata = True
        tag = tag_of(record.metadata)
        if tag is not None:
            if tag.deployment == deployment and tag.capture_id == row.id:
                return record, True
            continue
        legacy = (record.metadata or {}).get(CAPTURE_KEY)
        if legacy == str(row.id) and (record.user_id, record.time_utc) not in claimed:
            return record, True  # made before tags carried the deployment
    return None, echoes_metadata


def signature_records(
    row: CaptureRow, records: Iterable[Impact], *, since: datetime, claimed: set[tuple[str, str]]
) -> list[Impact]:
    """Untagged records of `row`'s signature made since `since` and claimed by no row, oldest
    first (pure)."""
    email = (row.customer_email or "").lower()
    earliest = since - CLOCK_SKEW
    found = []
    for record in records:
        if record.metadata is not None:
            continue
        if record.amount != row.amount or (record.customer_email or "").lower() != email:
            continue
        when = parse_time(record.time_utc)
        if when is None or when < earliest or (record.user_id, record.time_utc) in claimed:
            continue
        found.append(record)
    return sorted(found, key=lambda r: r.time_utc)


def match_untagged(
    row: CaptureRow,
    records: list[Impact],
    twins: list[tuple[CaptureRow, float]],
    *,
    window_s: float,
    claimed: set[tuple[str, str]],
    age_s: float = 0.0,
) -> Finding:
    """`row`'s record by its signature, when the listings carry no metadata (pure; see the
    module's docstring). `twins`: the signature's other captures in flight, with their ages;
    `age_s`: the row's own attempt's."""
    assert row.attempted_at is not None
    if not twins:
        candidates = signature_records(row, records, since=row.attempted_at, claimed=claimed)
        return Finding(candidates[0] if candidates else None)
    if age_s < window_s or any(
        twin.status != CaptureStatus.UNKNOWN or age < window_s for twin, age in twins
    ):
        return Finding(None, decisive=False)  # a call may still be out: wait
    group = sorted([row, *(twin for twin, _ in twins)], key=lambda r: (r.attempted_at, r.id))
    first = group[0].attempted_at
    assert first is not None
    candidates = signature_records(row, records, since=first, claimed=claimed)
    assignment = tuple(
        (member, candidates[place] if place < len(candidates) else None)
        for place, member in enumerate(group)
    )
    mine = next(record for member, record in assignment if member.id == row.id)
    return Finding(mine, group=assignment)


class Reconciler:
    """Looks for a row's record in both listings, newest first, from the day before the
    attempt; reads the ledger for what other rows already own."""

    def __init__(self, ledger: Ledger, impact: ImpactClient) -> None:
        self.ledger = ledger
        self.impact = impact

    def find(self, row: CaptureRow, *, window_s: float) -> Finding:
        """What 1ClickImpact's listings say of `row`'s capture now."""
        assert row.attempted_at is not None
        since = (row.attempted_at - timedelta(days=1)).date()
        stop_before = row.attempted_at - CLOCK_SKEW
        twins = self.ledger.open_twins(row)
        if twins:  # the records of the oldest attempt among them matter too
            oldest = min(twin.attempted_at or row.attempted_at for twin, _ in twins)
            stop_before = min(stop_before, oldest - CLOCK_SKEW)
            since = min(since, (oldest - timedelta(days=1)).date())
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
                    break  # newest first: the rest are older than the attempts
                previous = when or previous
        claimed = self.ledger.attributed([(r.user_id, r.time_utc) for r in records])
        deployment = self.ledger.deployment_id()
        tagged, echoes_metadata = match_tagged(row, records, deployment=deployment, claimed=claimed)
        if tagged is not None or echoes_metadata:
            return Finding(tagged)
        age_s = (self.ledger.attempt_age_s(row.id) or 0.0) if twins else 0.0
        finding = match_untagged(
            row, records, twins, window_s=window_s, claimed=claimed, age_s=age_s
        )
        if finding.group and not self.ledger.settle_group(list(finding.group)):
            return Finding(None, decisive=False)  # a row changed meanwhile: look again
        return finding
