"""How the emulated APIs write times, and which JSON values count as integers and numbers."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TypeGuard


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime, timespec: str = "seconds") -> str:
    """`moment` in UTC as the APIs write it: `2026-04-06T14:35:48Z`, or with milliseconds."""
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec=timespec) + "Z"


def is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool)
