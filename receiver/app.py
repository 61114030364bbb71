"""The receiver: one place that wires the Starlette app."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import dramatiq
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from receiver.admin import AdminOperations, admin_api_routes
from receiver.database import create_sync_engine
from receiver.errors import InvalidDelivery, SignatureError, StoreUnavailable
from receiver.events import parse_delivery
from receiver.intake import Intake, create_intake
from receiver.lockout import Lockout
from receiver.metrics import Limits, StoreCollector, exposition, metrics
from receiver.queue import Enqueuer, RedisEnqueuer, make_broker, make_enqueuer, ping_broker
from receiver.settings import Settings
from receiver.signature import HEADER, verify_signature
from receiver.store import EventStore

log = logging.getLogger(__name__)


DELIVERY_OUTCOMES = (
    "accepted",
    "ignored",
    "duplicate",
    "bad_signature",
    "invalid",
    "too_large",
    "unavailable",
)


class BodyTooLarge(Exception):
    pass


@dataclass
class Services:
    """What the routes use; built by `create_app` unless tests pass their own."""

    settings: Settings
    intake: Intake
    store: EventStore
    broker: dramatiq.Broker
    enqueuer: Enqueuer | RedisEnqueuer
    limits: Limits = lambda: (None, None)
    outcomes: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        deliveries = metrics().deliveries
        self.outcomes = {name: deliveries.labels(name) for name in DELIVERY_OUTCOMES}


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refusing more than `limit` bytes without buffering the rest."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status)


async def receive_webhook(request: Request) -> Response:
    """POST /webhooks/carbonpass: verify, parse, store once, hand to the queue."""
    services: Services = request.app.state.services
    settings = services.settings
    outcomes = services.outcomes
    try:
        body = await read_body(request, settings.max_body_bytes)
    except BodyTooLarge:
        outcomes["too_large"].inc()
        return _error(413, "too_large", f"body exceeds {settings.max_body_bytes} bytes")
    try:
        verify_signature(body, request.headers.get(HEADER), secrets=settings.secret_bytes)
        delivery = parse_delivery(body)
        recorded = await services.intake.record(delivery)
    except SignatureError as exc:
        outcomes["bad_signature"].inc()
        return _error(401, "invalid_signature", str(exc))
    except InvalidDelivery as exc:
        outcomes["invalid"].inc()
        return _error(400, "invalid_delivery", str(exc))
    except StoreUnavailable:
        outcomes["unavailable"].inc()
        log.warning("event store unavailable; answered 503")
        return _error(503, "unavailable", "event store unavailable, retry later")
    if not recorded.created:
        outcomes["duplicate"].inc()
        return JSONResponse({"id": recorded.id, "status": "duplicate"}, status_code=200)
    if delivery.is_processed:
        services.enqueuer.submit(recorded.id)
        outcomes["accepted"].inc()
    else:
        outcomes["ignored"].inc()
    return JSONResponse({"id": recorded.id, "status": "accepted"}, status_code=202)


async def metrics_endpoint(request: Request) -> Response:
    """GET /metrics: Prometheus text format."""
    services: Services = request.app.state.services
    collector = StoreCollector(services.store.engine, services.limits)
    text = await run_in_threadpool(exposition, collector.collect)
    return Response(text, media_type=CONTENT_TYPE_LATEST)


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Ready when the database and the broker answer."""
    services: Services = request.app.state.services
    checks: dict[str, str] = {}
    try:
        await services.intake.ping()
        checks["database"] = "ok"
    except StoreUnavailable as exc:
        checks["database"] = f"unavailable: {exc}"
    try:
        await run_in_threadpool(ping_broker, services.broker)
        checks["broker"] = "ok"
    except Exception as exc:  # any broker client error means "not ready"
        checks["broker"] = f"unavailable: {type(exc).__name__}"
    ready = all(value == "ok" for value in checks.values())
    return JSONResponse({"ready": ready, **checks}, status_code=200 if ready else 503)


def build_services(
    settings: Settings, *, broker: dramatiq.Broker | None = None, limits: Limits | None = None
) -> Services:
    """The real adapters for `settings`."""
    engine = create_sync_engine(settings.database_url, pool_size=settings.db_pool_size)
    store = EventStore(engine)
    broker = broker if broker is not None else make_broker(settings.broker_url)
    intake = create_intake(settings.database_url, pool_size=settings.intake_pool_size)
    return Services(
        settings=settings,
        intake=intake,
        store=store,
        broker=broker,
        enqueuer=make_enqueuer(broker, settings.broker_url, store.mark_pending),
        limits=limits or (lambda: (None, None)),
    )


def create_app(
    settings: Settings,
    *,
    services: Services | None = None,
    broker: dramatiq.Broker | None = None,
    admin: AdminOperations | None = None,
    routes: list[BaseRoute] | None = None,
    limits: Limits | None = None,
    lockout: Lockout | None = None,
) -> Starlette:
    """Build the receiver; resources open in the lifespan, so building it does no I/O.

    The admin API exists only when CARBONHOOK_ADMIN_TOKEN is set and `admin` is given; give
    it the dashboard's `lockout`, so that wrong tokens count the same on both.
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        built = services or build_services(settings, broker=broker, limits=limits)
        app.state.services = built
        built.enqueuer.start()
        try:
            yield
        finally:
            await built.enqueuer.stop()
            if services is None:
                await built.intake.close()
                built.store.engine.dispose()

    all_routes: list[Any] = [
        Route("/webhooks/carbonpass", receive_webhook, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        *(routes or []),
    ]
    if settings.admin_token is not None and admin is not None:
        all_routes += admin_api_routes(
            admin, settings.admin_token.get_secret_value(), lockout or Lockout()
        )
    return Starlette(routes=all_routes, lifespan=lifespan)
