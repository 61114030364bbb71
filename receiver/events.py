"""A delivery turned into a value object at the edge."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from carbonhook.errors import InvalidDelivery

MAX_TYPE_LENGTH = 100
MAX_ID_LENGTH = 255


@dataclass(frozen=True, slots=True)
class Delivery:
    """One CarbonPass webhook delivery: its identity is (type, subject_id, timestamp)."""

    type: str
    subject_id: str
    timestamp: datetime
    data: dict[str, Any] = field(hash=False, compare=False)
    body: bytes = field(repr=False, compare=False)


def parse_timestamp(value: str) -> datetime:
    """Parse an ISO-8601 timestamp into an aware UTC datetime; naive means UTC."""
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def parse_delivery(body: bytes) -> Delivery:
    """Turn a signed body into a `Delivery`, or raise `InvalidDelivery` naming what is wrong."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError) as exc:  # bad JSON, too deep, or a 5,000-digit number
        raise InvalidDelivery(f"body is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(payload, dict):
        raise InvalidDelivery("body must be a JSON object")
    event = _required_string(payload, "event", MAX_TYPE_LENGTH)
    raw_timestamp = _required_string(payload, "timestamp", 64)
    try:
        timestamp = parse_timestamp(raw_timestamp)
    except (ValueError, OverflowError):  # OverflowError: a year-1 time with an offset
        raise InvalidDelivery(f"field 'timestamp' is not ISO-8601: {raw_timestamp!r}") from None
    data = payload.get("data")
    if not isinstance(data, dict):
        raise InvalidDelivery("field 'data' must be an object")
    subject_id = _required_string(data, "id", MAX_ID_LENGTH, where="data.")
    return Delivery(type=event, subject_id=subject_id, timestamp=timestamp, data=data, body=body)


def _required_string(obj: dict[str, Any], key: str, max_length: int, where: str = "") -> str:
    value = obj.get(key)
    if value is None:
        raise InvalidDelivery(f"missing field '{where}{key}'")
    if not isinstance(value, str) or not value:
        raise InvalidDelivery(f"field '{where}{key}' must be a non-empty string")
    if len(value) > max_length:
        raise InvalidDelivery(f"field '{where}{key}' is longer than {max_length} characters")
    # JSON can smuggle in what no database column holds: NUL and lone surrogates.
    if "\x00" in value or not _encodable(value):
        raise InvalidDelivery(f"field '{where}{key}' contains characters that are not valid text")
    return value


def _encodable(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
