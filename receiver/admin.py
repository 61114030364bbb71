"""The admin HTTP API under /admin/api (only when CARBONHOOK_ADMIN_TOKEN is set)."""

from __future__ import annotations

import hmac
import json
import math
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime
from typing import Any, Protocol

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from carbonhook.errors import BadRequest, NotFound
from carbonhook.event_queries import EventFilter
from carbonhook.statuses import EventStatus
from carbonhook.store import EventStore
from receiver.events import parse_timestamp
from receiver.lockout import Lockout, client_address, retry_after

MAX_PAGE = 500


class AdminOperations(Protocol):
    """What the admin surfaces call; the composition root passes carbonhook.admin.Admin."""

    store: EventStore

    def replay(self, event_id: int, *, via: str, reason: str | None) -> str: ...
    def replay_matching(
        self, filt: EventFilter, *, via: str, reason: str | None
    ) -> Iterator[int]: ...
    def approve(self, capture_id: int, *, via: str) -> Any: ...
    def reject(self, capture_id: int, *, via: str) -> Any: ...
    def resolve(self, capture_id: int, *, captured: bool, via: str) -> Any: ...
    def list_captures(
        self, *, status: str | None, limit: int, before_id: int | None
    ) -> list[dict[str, Any]]: ...


Handler = Callable[[Request], Awaitable[Response]]


def token_matches(given: str | None, token: str) -> bool:
    """Constant-time comparison of a presented token with the configured one."""
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


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


def _guarded(token: str, lockout: Lockout, handler: Handler) -> Handler:
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
        if not token_matches(given, token):
            lockout.wrong(address)
            return _unauthorized()
        lockout.right(address)
        return await handler(request)  # our errors become answers in receiver/app.py

    return guarded


def _unauthorized() -> Response:
    return JSONResponse(
        {"error": "unauthorized", "message": "Bearer token required"}, status_code=401
    )


def event_filter(params: dict[str, Any]) -> EventFilter:
    """A filter from query or body parameters; unknown values are a `BadRequest`."""
    status = params.get("status") or None
    if status is not None and status not in tuple(EventStatus):
        raise BadRequest(f"unknown status {status!r}; one of {', '.join(tuple(EventStatus))}")
    since = params.get("since") or None
    try:
        since_at = parse_timestamp(since) if since else None
    except (TypeError, ValueError, OverflowError):
        raise BadRequest(f"'since' is not ISO-8601: {since!r}") from None
    return EventFilter(status=status, type=params.get("type") or None, since=since_at)


def _int(value: Any, name: str, default: int | None = None) -> int | None:
    if value in (None, ""):
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise BadRequest(f"{name!r} must be a whole number") from None


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise BadRequest("body is not JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    return body


def admin_api_routes(admin: AdminOperations, token: str, lockout: Lockout) -> list[Route]:
    """The /admin/api routes, each behind the bearer token (`lockout` counts wrong ones)."""

    def page(params: Any) -> tuple[int, int | None]:
        limit = min(MAX_PAGE, max(1, _int(params.get("limit"), "limit", 50) or 50))
        return limit, _int(params.get("cursor"), "cursor")

    async def list_events(request: Request) -> Response:
        limit, cursor = page(request.query_params)
        filt = event_filter(dict(request.query_params))
        rows = await run_in_threadpool(admin.store.list_events, filt, limit=limit, before_id=cursor)
        next_cursor = rows[-1]["id"] if len(rows) == limit else None
        return _json({"events": rows, "next_cursor": next_cursor})

    async def show_event(request: Request) -> Response:
        detail = await run_in_threadpool(admin.store.get_event, request.path_params["id"])
        return _json(detail)

    async def replay_event(request: Request) -> Response:
        body = await _body(request)
        event_id = request.path_params["id"]
        previous = await run_in_threadpool(
            lambda: admin.replay(event_id, via="api", reason=body.get("reason"))
        )
        return _json({"id": event_id, "previous_status": previous, "status": "queued"})

    async def replay_events(request: Request) -> Response:
        body = await _body(request)
        params = {**request.query_params, **body}
        filt = event_filter(params)
        if filt == EventFilter():
            raise BadRequest("give at least one filter (status, type, since)")
        ids = await run_in_threadpool(
            lambda: list(admin.replay_matching(filt, via="api", reason=params.get("reason")))
        )
        return _json({"replayed": len(ids), "ids": ids})

    async def list_captures(request: Request) -> Response:
        limit, cursor = page(request.query_params)
        rows = await run_in_threadpool(
            lambda: admin.list_captures(
                status=request.query_params.get("status"), limit=limit, before_id=cursor
            )
        )
        next_cursor = rows[-1]["id"] if len(rows) == limit else None
        return _json({"captures": rows, "next_cursor": next_cursor})

    async def decide(request: Request) -> Response:
        capture_id, decision = request.path_params["id"], request.path_params["decision"]
        body = await _body(request)
        if decision == "approve":
            row = await run_in_threadpool(lambda: admin.approve(capture_id, via="api"))
        elif decision == "reject":
            row = await run_in_threadpool(lambda: admin.reject(capture_id, via="api"))
        elif decision == "resolve" and isinstance(body.get("captured"), bool):
            row = await run_in_threadpool(
                lambda: admin.resolve(capture_id, captured=body["captured"], via="api")
            )
        elif decision == "resolve":
            raise BadRequest('resolve needs {"captured": true|false}')
        else:
            raise NotFound(f"no action {decision!r}; use approve, reject or resolve")
        return _json(row)

    routes = [
        ("/admin/api/events", list_events, "GET"),
        ("/admin/api/events/replay", replay_events, "POST"),
        ("/admin/api/events/{id:int}", show_event, "GET"),
        ("/admin/api/events/{id:int}/replay", replay_event, "POST"),
        ("/admin/api/captures", list_captures, "GET"),
        ("/admin/api/captures/{id:int}/{decision}", decide, "POST"),
    ]
    return [
        Route(path, _guarded(token, lockout, handler), methods=[method])
        for path, handler, method in routes
    ]
