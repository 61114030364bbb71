"""What a notification to operators says: each kind's dedupe key and fields, and the message
sent for it. Pure: no I/O, no settings.

The fields are ids, names, statuses and amounts, and for a failed event the reason it failed
(cut short): never a delivery's body, a secret or a token. The attempt token in a `failed` key
tells one failure from the next (a replay failing again is a new change) and never leaves the
database: the message is built from the fields alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from carbonhook.statuses import NotificationKind

# A failed event's reason is the error of an API call or of the rules: enough to act on.
MAX_REASON_CHARS = 300
# What the message shows for a secret that reached it all the same.
REDACTED = "[redacted]"


@dataclass(frozen=True, slots=True)
class Notice:
    """One change worth telling an operator about, before it is written to the outbox."""

    kind: str
    key: str  # unique per change: the same change seen twice is written once
    fields: Mapping[str, Any] = field(default_factory=dict)


def failed(event_id: int, attempt_token: str, event_type: str, reason: str | None) -> Notice:
    return Notice(
        NotificationKind.FAILED,
        f"failed:{event_id}:{attempt_token}",
        {"event_id": event_id, "type": event_type, "reason": (reason or "")[:MAX_REASON_CHARS]},
    )


def ignored_type(event_type: str, event_id: int) -> Notice:
    """The first event of a type no rule names (once per type, ever)."""
    return Notice(
        NotificationKind.IGNORED_TYPE,
        f"ignored_type:{event_type}",
        {"event_id": event_id, "type": event_type},
    )


def held(
    capture_id: int, attempt_token: str, event_id: int, rule: str, amount: int, action: str
) -> Notice:
    return Notice(
        NotificationKind.HELD,
        f"held:{capture_id}:{attempt_token}",
        {
            "capture_id": capture_id,
            "event_id": event_id,
            "rule": rule,
            "amount": amount,
            "action": action,
        },
    )


def reversed_duplicate(
    capture_id: int, event_id: int | None, user_id: str, time_utc: str
) -> Notice:
    return Notice(
        NotificationKind.REVERSED,
        f"reversed:{user_id}:{time_utc}",
        {"capture_id": capture_id, "event_id": event_id},
    )


def digest(day: str, events: Mapping[str, int], spend: Mapping[str, Any]) -> Notice:
    """Once per UTC day: events received in the last 24 hours by status, and the pounds
    reserved today and this month against the limits (None: no limit)."""
    return Notice(
        NotificationKind.DIGEST,
        f"digest:{day}",
        {"day": day, "events": dict(events), "spend": dict(spend)},
    )


def test_notice(nonce: str) -> Notice:
    return Notice(NotificationKind.TEST, f"test:{nonce}", {})


# The keys of the two kinds the database writes by itself (SQL, see carbonhook/outbox.py).
def invalid_key(event_id: int) -> str:
    return f"invalid:{event_id}"


def unknown_key(capture_id: int, attempt_token: str) -> str:
    return f"unknown:{capture_id}:{attempt_token}"


def text_of(kind: str, fields: Mapping[str, Any]) -> str:
    """The human sentence of a notification (Slack's `text`)."""
    event = fields.get("event_id")
    capture = fields.get("capture_id")
    if kind == NotificationKind.HELD:
        return (
            f"carbonhook: capture {capture} held over a spend limit: {fields.get('amount')} "
            f"{fields.get('action')} by rule {fields.get('rule')!r} (event {event}); "
            "approve or reject it"
        )
    if kind == NotificationKind.FAILED:
        return (
            f"carbonhook: event {event} ({fields.get('type')}) failed: {fields.get('reason')}; "
            "replay it once the cause is fixed"
        )
    if kind == NotificationKind.UNKNOWN:
        return (
            f"carbonhook: capture {capture} is still unknown past the settle window: "
            f"{fields.get('amount')} {fields.get('action')} by rule {fields.get('rule')!r}; "
            "nobody knows yet whether 1ClickImpact took it"
        )
    if kind == NotificationKind.REVERSED:
        return f"carbonhook: a duplicate impact of capture {capture} was reversed at 1ClickImpact"
    if kind == NotificationKind.INVALID:
        return (
            f"carbonhook: a signed delivery did not parse; kept as invalid event {event} "
            "(the sender was answered 400)"
        )
    if kind == NotificationKind.IGNORED_TYPE:
        return (
            f"carbonhook: events of type {fields.get('type')!r} arrive and no rule is on that "
            f"type (first: event {event}); they are stored ignored"
        )
    if kind == NotificationKind.DIGEST:
        return _digest_text(fields)
    if kind == NotificationKind.TEST:
        return "carbonhook: a test notification (`carbonhook notify test`): the wiring works"
    return f"carbonhook: {kind}"


def _digest_text(fields: Mapping[str, Any]) -> str:
    events = fields.get("events") or {}
    counted = ", ".join(f"{count} {status}" for status, count in sorted(events.items()))
    spend = fields.get("spend") or {}
    lines = [
        f"carbonhook digest for {fields.get('day')}: events in the last 24 h: {counted or 'none'}"
    ]
    for window in ("day", "month"):
        used = spend.get(f"{window}_lbs", 0)
        limit = spend.get(f"{window}_limit_lbs")
        against = f" of {limit}" if limit is not None else " (no limit)"
        lines.append(f"lbs reserved this {window}: {used}{against}")
    return "\n".join(lines)


def message(
    kind: str, fields: Mapping[str, Any], *, public_url: str | None, secrets: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The JSON body posted: Slack's `text`, and the structured fields beside it; any of
    `secrets` that reached a field is replaced (a reason quoting a key, say)."""
    body: dict[str, Any] = {"text": text_of(kind, fields), "kind": kind}
    for name in ("event_id", "capture_id", "rule", "amount", "action", "type", "reason", "day"):
        if fields.get(name) is not None:
            body[name] = fields[name]
    if kind == NotificationKind.DIGEST:
        body["events"] = fields.get("events") or {}
        body["spend"] = fields.get("spend") or {}
    link = link_of(fields, public_url)
    if link is not None:
        body["link"] = link
        body["text"] += f"\n{link}"
    redacted: dict[str, Any] = redact(body, secrets)
    return redacted


def link_of(fields: Mapping[str, Any], public_url: str | None) -> str | None:
    """The dashboard page of what the notification is about."""
    if not public_url:
        return None
    base = public_url.rstrip("/")
    if fields.get("event_id") is not None:  # the event's page lists its captures too
        return f"{base}/admin/events/{fields['event_id']}"
    if fields.get("capture_id") is not None:
        return f"{base}/admin/captures"
    return f"{base}/admin"


def redact(value: Any, secrets: tuple[str, ...]) -> Any:
    """`value` (JSON-like) with every occurrence of each secret replaced."""
    if isinstance(value, str):
        for secret in secrets:
            if secret:
                value = value.replace(secret, REDACTED)
        return value
    if isinstance(value, dict):
        return {key: redact(item, secrets) for key, item in value.items()}
    if isinstance(value, list):
        return [redact(item, secrets) for item in value]
    return value
