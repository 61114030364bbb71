"""The admin HTTP API under /admin/api (only when an admin is configured: CARBONHOOK_ADMIN_TOKEN,
CARBONHOOK_ADMIN_TOKENS). A request acts as the admin whose token it bears."""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from collections.abc import Awaitable, Callable, Iterator, Mapping
from datetime import datetime
from typing import Any, Protocol

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from carbonhook.errors import BadRequest, NotFound
from carbonhook.event_queries import EventFilter
from carbonhook.impact_report import ImpactReport, ReportQuery, check_format, to_json
from carbonhook.schema import utcnow
from carbonhook.statuses import CaptureStatus, EventStatus
from carbonhook.store import EventStore
from receiver.events import parse_timestamp
from receiver.lockout import Lockout, client_address, retry_after
from receiver.openapi import DECISIONS, MAX_ID, document
from receiver.report_openapi import API_FORMATS
from receiver.report_views import csv_response, query_of

MAX_PAGE = 500
MAX_TEXT = 2000  # characters of a reason
MAX_FILTER = 100  # characters of a type filter (the column's width)


class AdminOperations(Protocol):
    """What the admin surfaces call; the composition root passes carbonhook.admin.Admin."""

    store: EventStore

    def replay(self, event_id: int, *, admin: str, via: str, reason: str | None) -> str: ...
    def replay_matching(
        self, filt: EventFilter, *, admin: str, via: str, reason: str | None
    ) -> Iterator[int]: ...
    def approve(self, capture_id: int, *, admin: str, via: str, reason: str | None) -> Any: ...
    def reject(self, capture_id: int, *, admin: str, via: str, reason: str | None) -> Any: ...
    def resolve(
        self, capture_id: int, *, captured: bool, admin: str, via: str, reason: str | None
    ) -> Any: ...
    def list_captures(
        self, *, status: str | None, limit: int, before_id: int | None
    ) -> list[dict[str, Any]]: ...
    def impact_report(self, query: ReportQuery) -> ImpactReport: ...


Handler = Callable[[Request], Awaitable[Response]]
VIA = "api"  # the interface replays and decisions made here record


def token_matches(given: str | None, token: str) -> bool:
    """Constant-time comparison of a presented token with a configured one, as SHA-256
    digests: how long it takes depends neither on where they differ nor on their lengths."""
    if given is None:
        return False
    return hmac.compare_digest(_digest(given), _digest(token))


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()


def admin_named(given: str | None, tokens: Mapping[str, str]) -> str | None:
    """The name of the admin whose token `given` is, or None. Every configured token is
    compared, in constant time, whichever matches: the time taken does not tell which."""
    found = None
    for name, token in tokens.items():
        if token_matches(given, token):
            found = name
    return found


def acting_admin(request: Request) -> str:
    """The name of the admin a guarded request acts as."""
    name: str = request.state.admin
    return name


def _json(value: Any, status: int = 200) -> Response:
    return Response(
        json.dumps(value, default=_default), status_code=status, media_type="application/json"
    )


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if hasattr(value, "__slots__"):
        return {name: getattr(value, name) for name in value.__slots__}
    raise TypeError(type(value).__name__)


def _guarded(tokens: Mapping[str, str], lockout: Lockout, handler: Handler) -> Handler:
    async def guarded(request: Request) -> Response:
        address = client_address(request)
        wait_s = lockout.wait_s(address)
        if wait_s:
            return JSONResponse(
                {
                    "error": "too_many_attempts",
                    "message": f"too many wrong tokens from {address}; "
                    f"try again in {math.ceil(wait_s)} s",
                },
                status_code=429,
                headers=retry_after(wait_s),
            )
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        given = given.strip()
        if scheme.lower() != "bearer" or not given:
            return _unauthorized()
        name = admin_named(given, tokens)
        if name is None:
            lockout.wrong(address)
            return _unauthorized()
        lockout.right(address)
        request.state.admin = name
        return await handler(request)  # our errors become answers in receiver/app.py

    return guarded


def _unauthorized() -> Response:
    return JSONResponse(
        {"error": "unauthorized", "message": "Bearer token required"}, status_code=401
    )


def text(value: Any, name: str, *, max_chars: int = MAX_TEXT) -> str | None:
    """`value` as text the database can keep (UTF-8, no NUL), or a `BadRequest` naming it."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise BadRequest(f"{name!r} must be a string")
    if len(value) > max_chars:
        raise BadRequest(f"{name!r} is longer than {max_chars} characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(f"{name!r} is not valid Unicode (a lone surrogate)") from None
    if "\x00" in value:
        raise BadRequest(f"{name!r} contains a NUL character")
    return value


def event_filter(params: dict[str, Any]) -> EventFilter:
    """A filter from query or body parameters; unknown values are a `BadRequest`."""
    status = text(params.get("status"), "status")
    if status is not None and status not in tuple(EventStatus):
        raise BadRequest(f"unknown status {status!r}; one of {', '.join(tuple(EventStatus))}")
    since = text(params.get("since"), "since")
    try:
        since_at = parse_timestamp(since) if since else None
    except (TypeError, ValueError, OverflowError):
        raise BadRequest(f"'since' is not ISO-8601: {since!r}") from None
    kind = text(params.get("type"), "type", max_chars=MAX_FILTER)
    return EventFilter(status=status, type=kind, since=since_at)


def _int(value: Any, name: str, default: int | None = None) -> int | None:
    if value in (None, ""):
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise BadRequest(f"{name!r} must be a whole number") from None


def _cursor(value: Any) -> int | None:
    """An id to page before: 1 to the largest id."""
    cursor = _int(value, "cursor")
    if cursor is not None and not 0 < cursor <= MAX_ID:
        raise BadRequest(f"'cursor' must be between 1 and {MAX_ID}")
    return cursor


def _id(request: Request) -> int:
    """The path's id; one past the id columns' range names nothing (404, not a crash)."""
    value = int(request.path_params["id"])
    if not 0 < value <= MAX_ID:
        raise NotFound(f"no object has id {value}")
    return value


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested past the parser
        raise BadRequest("body is not JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    return body


def admin_api_routes(
    admin: AdminOperations, tokens: Mapping[str, str], lockout: Lockout
) -> list[Route]:
    """The /admin/api routes, each behind a bearer token of one of `tokens` (admin name →
    token), acting as that admin; `lockout` counts wrong ones."""

    def page(params: Any) -> tuple[int, int | None]:
        limit = min(MAX_PAGE, max(1, _int(params.get("limit"), "limit", 50) or 50))
        return limit, _cursor(params.get("cursor"))

    async def openapi(request: Request) -> Response:
        return _json(document())

    async def list_events(request: Request) -> Response:
        limit, cursor = page(request.query_params)
        filt = event_filter(dict(request.query_params))
        rows = await run_in_threadpool(admin.store.list_events, filt, limit=limit, before_id=cursor)
        next_cursor = rows[-1]["id"] if len(rows) == limit else None
        return _json({"events": rows, "next_cursor": next_cursor})

    async def show_event(request: Request) -> Response:
        detail = await run_in_threadpool(admin.store.get_event, _id(request))
        return _json(detail)

    async def replay_event(request: Request) -> Response:
        event_id = _id(request)
        body = await _body(request)
        reason = text(body.get("reason"), "reason")
        who = acting_admin(request)
        previous = await run_in_threadpool(
            lambda: admin.replay(event_id, admin=who, via=VIA, reason=reason)
        )
        return _json({"id": event_id, "previous_status": previous, "status": "queued"})

    async def replay_events(request: Request) -> Response:
        body = await _body(request)
        params = {**request.query_params, **body}
        filt = event_filter(params)
        if filt == EventFilter():
            raise BadRequest("give at least one filter (status, type, since)")
        reason = text(params.get("reason"), "reason")
        who = acting_admin(request)
        ids = await run_in_threadpool(
            lambda: list(admin.replay_matching(filt, admin=who, via=VIA, reason=reason))
        )
        return _json({"replayed": len(ids), "ids": ids})

    async def list_captures(request: Request) -> Response:
        limit, cursor = page(request.query_params)
        status = text(request.query_params.get("status"), "status")
        if status is not None and status not in tuple(CaptureStatus):
            raise BadRequest(f"unknown status {status!r}; one of {', '.join(tuple(CaptureStatus))}")
        rows = await run_in_threadpool(
            lambda: admin.list_captures(status=status, limit=limit, before_id=cursor)
        )
        next_cursor = rows[-1]["id"] if len(rows) == limit else None
        return _json({"captures": rows, "next_cursor": next_cursor})

    async def decide(request: Request) -> Response:
        capture_id, decision = _id(request), request.path_params["decision"]
        if decision not in DECISIONS:
            raise NotFound(f"no action {decision!r}; use approve, reject or resolve")
        body = await _body(request)
        reason = text(body.get("reason"), "reason")
        who = acting_admin(request)
        if decision == "approve":
            row = await run_in_threadpool(
                lambda: admin.approve(capture_id, admin=who, via=VIA, reason=reason)
            )
        elif decision == "reject":
            row = await run_in_threadpool(
                lambda: admin.reject(capture_id, admin=who, via=VIA, reason=reason)
            )
        elif decision == "resolve" and isinstance(body.get("captured"), bool):
            captured: bool = body["captured"]
            row = await run_in_threadpool(
                lambda: admin.resolve(
                    capture_id, captured=captured, admin=who, via=VIA, reason=reason
                )
            )
        else:
            raise BadRequest('resolve needs {"captured": true|false}')
        return _json(row)

    async def impact_report(request: Request) -> Response:
        params = request.query_params
        answer = check_format(params.get("format"), API_FORMATS)
        query = query_of(params, utcnow().date())
        report = await run_in_threadpool(admin.impact_report, query)
        return csv_response(report) if answer == "csv" else _json(to_json(report))

    routes = [
        ("/admin/api/openapi.json", openapi, "GET"),
        ("/admin/api/report", impact_report, "GET"),
        ("/admin/api/events", list_events, "GET"),
        ("/admin/api/events/replay", replay_events, "POST"),
        ("/admin/api/events/{id:int}", show_event, "GET"),
        ("/admin/api/events/{id:int}/replay", replay_event, "POST"),
        ("/admin/api/captures", list_captures, "GET"),
        ("/admin/api/captures/{id:int}/{decision}", decide, "POST"),
    ]
    return [
        Route(path, _guarded(tokens, lockout, handler), methods=[method])
        for path, handler, method in routes
    ]
