"""The dashboard's query strings: read into filters, cursors and redirect targets, and written
back into links."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request

from carbonhook.errors import BadRequest
from carbonhook.event_queries import EventFilter
from carbonhook.statuses import EventStatus


def safe_next(value: str | None, default: str = "/admin") -> str:
    """A redirect target that stays on this site's dashboard (no open redirect)."""
    if (
        value
        and value.startswith("/admin")
        and not value.startswith("//")
        and "\\" not in value
        and value.isprintable()
    ):
        return value
    return default


def event_filter(params: Mapping[str, str]) -> EventFilter:
    """Filters from the events page's query: status, type, received from/to (UTC days)."""
    status = params.get("status") or None
    if status is not None and status not in tuple(EventStatus):
        raise BadRequest(f"unknown status {status!r}")
    return EventFilter(
        status=status,
        type=(params.get("type") or "").strip() or None,
        since=_day_start(params.get("from"), "from"),
        until=_day_start(params.get("to"), "to", next_day=True),
    )


def _day_start(value: str | None, name: str, *, next_day: bool = False) -> datetime | None:
    if not value:
        return None
    try:
        day = date.fromisoformat(value)
    except ValueError:
        raise BadRequest(f"{name!r} is not a date (YYYY-MM-DD): {value!r}") from None
    return datetime.combine(day + timedelta(days=next_day), time(), tzinfo=UTC)


def query_string(params: Mapping[str, Any]) -> str:
    """`?k=v&…` of the parameters that have a value, or nothing."""
    given = {k: v for k, v in params.items() if v not in (None, "")}
    return f"?{urlencode(given)}" if given else ""


def page_cursor(value: str | None) -> int | None:
    """The id in a list page's `before` parameter, if it has one."""
    if not value:
        return None
    if not value.isdigit():
        raise BadRequest("'before' must be an event or capture id")
    return int(value)


def here(request: Request) -> str:
    """The request's path and query, to come back to."""
    return request.url.path + (f"?{request.url.query}" if request.url.query else "")
