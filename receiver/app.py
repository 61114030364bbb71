"""The receiver: the Starlette app, its routes, and how our errors become HTTP answers."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import dramatiq
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from carbonhook.errors import (
    BodyTimeout,
    BodyTooLarge,
    CarbonhookError,
    InvalidDelivery,
    SignatureError,
    StoreUnavailable,
)
from carbonhook.metrics import CachedCollector, Limits, StoreCollector, exposition, metrics
from carbonhook.migrate import SchemaState
from carbonhook.queue import Enqueuer, RedisEnqueuer, ping_broker
from carbonhook.settings import Settings
from carbonhook.store import EventStore
from receiver.admin import AdminOperations, admin_api_routes
from receiver.bodies import BodyLimits
from receiver.intake import Intake, take
from receiver.lockout import Lockout
from receiver.signature import HEADER, verify_signature

log = logging.getLogger(__name__)

# /metrics answers from the database's figures of at most this long ago, however often (and by
# whomever) it is scraped: they are GROUP BY queries over every event and capture.
STORE_METRICS_MAX_AGE_S = 15.0


DELIVERY_OUTCOMES = (
    "accepted",
    "duplicate",
    "bad_signature",
    "invalid",
    "too_large",
    "timeout",
    "unavailable",
)
# The outcome counted for each way a delivery is refused.
_REFUSALS: dict[type[CarbonhookError], str] = {
    BodyTooLarge: "too_large",
    BodyTimeout: "timeout",
    SignatureError: "bad_signature",
    InvalidDelivery: "invalid",
    StoreUnavailable: "unavailable",
}


@dataclass
class Services:
    """What the routes use; built by `create_app` unless tests pass their own."""

    settings: Settings
    intake: Intake
    store: EventStore
    broker: dramatiq.Broker
    enqueuer: Enqueuer | RedisEnqueuer
    # Where the database's schema stands against this version's migrations (one query).
    schema: Callable[[], SchemaState]
    limits: Limits = lambda: (None, None)
    outcomes: dict[str, Any] = field(default_factory=dict)
    store_metrics: CachedCollector = field(init=False)

    def __post_init__(self) -> None:
        deliveries = metrics().deliveries
        self.outcomes = {name: deliveries.labels(name) for name in DELIVERY_OUTCOMES}
        self.store_metrics = CachedCollector(
            StoreCollector(self.store.engine, self.limits).collect,
            max_age_s=STORE_METRICS_MAX_AGE_S,
        )


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refusing more than `limit` bytes without buffering the rest."""
    declared = request.headers.get("content-length")
    too_large = BodyTooLarge(f"body exceeds {limit} bytes")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


async def answer_error(request: Request, exc: Exception) -> Response:
    """Every `CarbonhookError` a route lets through becomes its answer here, and only here:
    JSON `{"error", "message"}` with the error's status, or the page a dashboard route set."""
    assert isinstance(exc, CarbonhookError)
    status = exc.http_status or 500
    if status == 500:
        log.error("request failed: %s: %s", type(exc).__name__, exc)
    page: Callable[[CarbonhookError, int], Response] | None = getattr(
        request.state, "error_page", None
    )
    if page is not None:
        return page(exc, status)
    message = "internal error" if status == 500 else exc.public_message or str(exc)
    # A body refused before it was read whole: the rest of it is not read either.
    headers = {"Connection": "close"} if status in (408, 413, 415) else None
    return JSONResponse(
        {"error": exc.code, "message": message}, status_code=status, headers=headers
    )


async def answer_http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404 and 405: JSON on the admin API, as its document says; text elsewhere."""
    assert isinstance(exc, HTTPException)
    if request.url.path.startswith("/admin/api/"):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(
            {"error": code, "message": exc.detail}, status_code=exc.status_code, headers=exc.headers
        )
    return PlainTextResponse(exc.detail, status_code=exc.status_code, headers=exc.headers)


async def receive_webhook(request: Request) -> Response:
    """POST /webhooks/carbonpass: verify, parse, store once, hand to the queue (a signed body
    that does not parse is kept `invalid`, and answered 400 all the same)."""
    services: Services = request.app.state.services
    settings = services.settings
    outcomes = services.outcomes
    try:
        body = await read_body(request, settings.max_body_bytes)
        verify_signature(body, request.headers.get(HEADER), secrets=settings.secret_bytes)
        recorded = await take(services.intake, body)
    except tuple(_REFUSALS) as exc:
        outcomes[_REFUSALS[type(exc)]].inc()
        if isinstance(exc, StoreUnavailable):
            log.warning("event store unavailable (%s); answered 503 (see /readyz)", exc)
        raise
    if not recorded.created:
        outcomes["duplicate"].inc()
        return JSONResponse({"id": recorded.id, "status": "duplicate"}, status_code=200)
    services.enqueuer.submit(recorded.id)
    outcomes["accepted"].inc()
    return JSONResponse({"id": recorded.id, "status": "accepted"}, status_code=202)


async def metrics_endpoint(request: Request) -> Response:
    """GET /metrics: Prometheus text format."""
    services: Services = request.app.state.services
    text = await run_in_threadpool(exposition, services.store_metrics.collect)
    return Response(text, media_type=CONTENT_TYPE_LATEST)


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Ready when the database answers, its schema is at this version's head, and the broker
    answers; otherwise 503, saying which of them is not (and, for the schema, the revision
    found and the one needed)."""
    services: Services = request.app.state.services
    checks: dict[str, str] = {}
    revision: dict[str, str | None] | None = None
    try:
        await services.intake.ping()
        state = await run_in_threadpool(services.schema)
    except StoreUnavailable as exc:
        checks["database"] = f"unavailable: {exc}"
    else:
        checks["database"] = "ok"
        checks["schema"] = state.problem or "ok"
        revision = {"found": state.found, "needed": state.needed}
    try:
        await run_in_threadpool(ping_broker, services.broker)
        checks["broker"] = "ok"
    except Exception as exc:  # any broker client error means "not ready"
        checks["broker"] = f"unavailable: {type(exc).__name__}"
    ready = all(value == "ok" for value in checks.values())
    body: dict[str, Any] = {"ready": ready, **checks}
    if revision is not None:
        body["revision"] = revision
    return JSONResponse(body, status_code=200 if ready else 503)


class MetricsPort:
    """With CARBONHOOK_METRICS_PORT set, /metrics answers on that port only and nothing else
    does, so a network policy can let Prometheus reach one port and the proxy the other."""

    def __init__(self, app: ASGIApp, *, port: int) -> None:
        self.app = app
        self.port = port

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            server = scope.get("server")
            on_metrics_port = server is not None and server[1] == self.port
            if on_metrics_port != (scope["path"] == "/metrics"):
                answer = JSONResponse(
                    {"error": "not_found", "message": "not served on this port"}, status_code=404
                )
                await answer(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(
    settings: Settings,
    services: Callable[[], Services],
    *,
    admin: AdminOperations | None = None,
    routes: list[BaseRoute] | None = None,
    lockout: Lockout | None = None,
) -> Starlette:
    """Build the receiver; `services` is called in the lifespan, so building it does no I/O.

    The admin API exists only when an admin is configured (CARBONHOOK_ADMIN_TOKEN,
    CARBONHOOK_ADMIN_TOKENS) and `admin` is given; give it the dashboard's `lockout`, so that
    wrong tokens count the same on both.
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        built = services()
        app.state.services = built
        built.enqueuer.start()
        try:
            yield
        finally:
            await built.enqueuer.stop()
            await built.intake.close()
            built.store.engine.dispose()
            if admin is not None:  # its own pool, opened by the admin pages and API
                admin.store.engine.dispose()

    all_routes: list[Any] = [
        Route("/webhooks/carbonpass", receive_webhook, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        *(routes or []),
    ]
    tokens = {name: token.get_secret_value() for name, token in settings.admins.items()}
    if tokens and admin is not None:
        all_routes += admin_api_routes(admin, tokens, lockout or Lockout())
    middleware = [Middleware(BodyLimits, timeout_s=settings.body_timeout_s)]
    if settings.metrics_port is not None:
        middleware.append(Middleware(MetricsPort, port=settings.metrics_port))
    return Starlette(
        routes=all_routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={CarbonhookError: answer_error, HTTPException: answer_http_error},
    )
