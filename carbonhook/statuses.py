"""The two state machines' statuses, defined once; the stored values are the enums' values.

An event: `pending` (stored, not yet handed to the queue) → `queued` → `processing` (a worker
holds it under a lease) → `succeeded` | `failed` | `held`, or `ignored` when no rule in force is
on its type; or `waiting` while a matched rule's `wait_until` does not hold yet and its `wait_for`
is not over: it is claimed again (`processing`) at each re-check, using no retry and holding no
lease in between. A replay takes `failed`, `succeeded`, `held`, `ignored` and `waiting` (check
now) back to `queued`.
`invalid`: a signed delivery whose body did not parse, kept as it came; a replay parses it
again and, if it parses now, it becomes a `queued` event like a new delivery.

A capture (one ledger row per rule + subject + part): `pending` (written before the call) →
`captured` | `failed` (a definite refusal, or nothing left the machine) | `unknown` (the request
left and no answer came); `held` (over a spend limit) → approved → `pending`, or `rejected`;
`skipped` (under 1 lb) and `dry_run` are never sent; `superseded` was planned, never sent (or
proved not to have happened), and is no longer planned: its reserved spend is given back.
"""

from __future__ import annotations

from enum import StrEnum


class EventStatus(StrEnum):
    PENDING = "pending"
    QUEUED = "queued"
    PROCESSING = "processing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    HELD = "held"
    IGNORED = "ignored"
    INVALID = "invalid"
    WAITING = "waiting"


class CaptureStatus(StrEnum):
    PENDING = "pending"
    CAPTURED = "captured"
    FAILED = "failed"
    UNKNOWN = "unknown"
    HELD = "held"
    REJECTED = "rejected"
    SKIPPED = "skipped"
    DRY_RUN = "dry_run"
    SUPERSEDED = "superseded"


class NotificationStatus(StrEnum):
    """A notification (carbonhook/outbox.py): `pending` until every destination took it,
    then `sent`; `given_up` after its retries ran out; `dropped` when no destination was
    configured to take it (a destination configured later gets nothing stale)."""

    PENDING = "pending"
    SENT = "sent"
    GIVEN_UP = "given_up"
    DROPPED = "dropped"


class NotificationKind(StrEnum):
    HELD = "held"
    FAILED = "failed"
    UNKNOWN = "unknown"
    REVERSED = "reversed"
    INVALID = "invalid"
    IGNORED_TYPE = "ignored_type"
    DIGEST = "digest"
    TEST = "test"


# An admin may send these events through the workers again (an `ignored` one once a rule is on
# its type; a `waiting` one to check its condition now rather than at the next re-check).
REPLAYABLE_EVENTS = (
    EventStatus.FAILED,
    EventStatus.SUCCEEDED,
    EventStatus.HELD,
    EventStatus.IGNORED,
    EventStatus.WAITING,
)
# An attempt ends an event in one of these.
FINAL_EVENTS = (EventStatus.SUCCEEDED, EventStatus.FAILED, EventStatus.HELD, EventStatus.IGNORED)
# Nothing more will be sent for a capture in one of these.
SETTLED_CAPTURES = (
    CaptureStatus.CAPTURED,
    CaptureStatus.SKIPPED,
    CaptureStatus.DRY_RUN,
    CaptureStatus.REJECTED,
    CaptureStatus.SUPERSEDED,
)
# An event is never `succeeded` while one of its captures is in one of these: a call may have
# left, and nobody knows yet whether it took effect.
OPEN_CAPTURES = (CaptureStatus.PENDING, CaptureStatus.UNKNOWN)
