"""1ClickImpact's endpoints at the root: create calls, the two listings, and cancellation.

Each parsing helper raises InvalidRequest naming the field at fault.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from datetime import date
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from carbonhook.emulator.errors import InvalidRequest
from carbonhook.emulator.formats import is_int
from carbonhook.emulator.records import IMPACT_KINDS, Impact
from carbonhook.emulator.state import EmulatorState

MAX_AMOUNT = 10_000_000
MAX_LIMIT = 1000
MAX_REASON = 200
RESERVED_METADATA_KEYS = frozenset({"gift", "widgetID"})
EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
DAY = re.compile(r"\d{4}-\d{2}-\d{2}")


def impact_error(status: int, message: str) -> Response:
    """1ClickImpact's error body: `{"type", "message"}`."""
    types = {401: "key_error", 400: "invalid_request_error", 404: "invalid_request_error"}
    return JSONResponse({"type": types.get(status, "api_error"), "message": message}, status)


async def json_object(request: Request) -> dict[str, Any]:
    """The request body as a JSON object."""
    try:
        body = await request.json()
    except ValueError:
        raise InvalidRequest("request body must be valid JSON") from None
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    return body


def impact_fields(body: Mapping[str, Any]) -> dict[str, Any]:
    """Check a create call's body; the keyword arguments of `EmulatorState.record_impact`."""
    amount, notify = body.get("amount"), body.get("notify", True)
    email, name = body.get("customer_email"), body.get("customer_name")
    if not is_int(amount) or not 1 <= amount <= MAX_AMOUNT:
        raise InvalidRequest(f"amount must be an integer between 1 and {MAX_AMOUNT}")
    if email is not None and not (isinstance(email, str) and EMAIL.fullmatch(email)):
        raise InvalidRequest("customer_email must be a valid email address")
    if name is not None and (not isinstance(name, str) or email is None):
        raise InvalidRequest("customer_name must be a string and requires customer_email")
    if not isinstance(notify, bool):
        raise InvalidRequest("notify must be a boolean")
    metadata = body.get("metadata")
    if metadata is not None and (not isinstance(metadata, dict) or len(metadata) > 20):
        raise InvalidRequest("metadata must be an object of at most 20 pairs")
    for key, value in (metadata or {}).items():
        if key in RESERVED_METADATA_KEYS or not 1 <= len(key) <= 40:
            raise InvalidRequest(f"metadata key {key!r} is reserved or not 1 to 40 characters")
        if not isinstance(value, str) or len(value) > 500:
            raise InvalidRequest(
                f"metadata value for {key!r} must be a string of at most 500 chars"
            )
    return {
        "amount": amount,
        "customer_email": email,
        "customer_name": name,
        "metadata": metadata,
        "notify": notify,
    }


def _day(query: Mapping[str, str], name: str) -> str | None:
    value = query.get(name)
    if value is None:
        return None
    try:
        if DAY.fullmatch(value):
            return date.fromisoformat(value).isoformat()
    except ValueError:
        pass
    raise InvalidRequest(f"{name} must be a date in the format yyyy-mm-dd")


def _cursor_after(query: Mapping[str, str]) -> str | None:
    if (cursor := query.get("cursor")) is None:
        return None
    try:
        decoded = base64.urlsafe_b64decode(cursor.encode()).decode()
    except (binascii.Error, UnicodeError):
        decoded = ""
    if not decoded.startswith("after:"):
        raise InvalidRequest("cursor is invalid")
    return decoded.removeprefix("after:")


def records_page(
    state: EmulatorState, query: Mapping[str, str], *, customers: bool
) -> dict[str, Any]:
    """One page of `/v1/records`, or of `/v1/customer_records` when `customers`."""
    amount_key, limit = query.get("filter_by"), query.get("limit", "10")
    if amount_key is not None and amount_key not in IMPACT_KINDS.values():
        raise InvalidRequest(f"filter_by must be one of {', '.join(IMPACT_KINDS.values())}")
    if not limit.isdigit() or int(limit) > MAX_LIMIT:
        raise InvalidRequest(f"limit must be an integer between 0 and {MAX_LIMIT}")
    if (order := query.get("sort_order", "asc")) not in ("asc", "desc"):
        raise InvalidRequest("sort_order must be asc or desc")
    start, end, after = _day(query, "start_date"), _day(query, "end_date"), _cursor_after(query)
    email = query.get("customer_email") if customers else None
    profile = state.profile

    def beyond(time_utc: str) -> bool:  # past the cursor, in the listing's order
        return after is None or (time_utc > after if order == "asc" else time_utc < after)

    def shown_email(impact: Impact) -> str | None:
        shown = impact.customer_email
        return shown.lower() if shown is not None and profile.lowercase_emails else shown

    def wanted(impact: Impact) -> bool:
        day = impact.time_utc[:10]  # by time_utc, both dates inclusive
        return (
            (impact.customer_email is not None) == customers  # the API lists these apart
            and (email is None or shown_email(impact) == email)  # as listed, exactly
            and (amount_key is None or IMPACT_KINDS[impact.kind] == amount_key)
            and (start is None or day >= start)
            and (end is None or day <= end)
            and beyond(impact.time_utc)
        )

    listed = state.listed()
    if order == "desc":
        listed.reverse()
    matching = [impact for impact in listed if wanted(impact)]
    page = matching[: int(limit)]
    items = [impact.record(profile) for impact in page]
    answer: dict[str, Any] = {"customer_records" if customers else "user_records": items}
    if page and len(matching) > len(page):
        answer["cursor"] = base64.urlsafe_b64encode(f"after:{page[-1].time_utc}".encode()).decode()
    return answer


def cancel_fields(body: Mapping[str, Any]) -> tuple[str, str, str | None]:
    """Check a cancel call's body: `user_id`, `time_utc`, and an optional `reason`."""
    user_id, time_utc, reason = body.get("user_id"), body.get("time_utc"), body.get("reason")
    if not isinstance(user_id, str) or not isinstance(time_utc, str):
        raise InvalidRequest("user_id and time_utc must be strings")
    if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_REASON):
        raise InvalidRequest(f"reason must be a string of at most {MAX_REASON} characters")
    return user_id, time_utc, reason


class ImpactApi:
    """The 1ClickImpact endpoints over an `EmulatorState`."""

    def __init__(self, state: EmulatorState) -> None:
        self.state = state

    async def create(self, kind: str, request: Request) -> Response:
        fields = impact_fields(await json_object(request))
        return JSONResponse(self.state.record_impact(kind, **fields).answer())

    async def records(self, request: Request, *, customers: bool) -> Response:
        return JSONResponse(records_page(self.state, request.query_params, customers=customers))

    async def cancel(self, request: Request) -> Response:
        cancellation = self.state.cancel_impact(*cancel_fields(await json_object(request)))
        if cancellation is None:
            raise InvalidRequest("no impact has this user_id and time_utc", 404)
        return JSONResponse(cancellation.answer())
