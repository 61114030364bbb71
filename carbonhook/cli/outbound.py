"""What the processes built in bootstrap.py use to reach the outside, built from settings: the
APIs' shared rate budgets, the notifier and its destinations, and the impact report's look-up of
CarbonPass's emissions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from carbonhook.database import create_sync_engine
from carbonhook.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from carbonhook.impact_report import EmissionsLookup
    from workers.notifier import Notifier
    from workers.rate_limit import RateLimit


def rate_limit_redis_url(settings: Settings) -> str | None:
    """The Redis that keeps the APIs' shared budgets: CARBONHOOK_RATE_LIMIT_URL, else the
    broker's when it is Redis; None: the database keeps them."""
    if settings.rate_limit_url is not None:
        return settings.rate_limit_url.get_secret_value()
    broker = settings.broker_url.get_secret_value()
    return broker if broker.startswith(("redis://", "rediss://")) else None


def build_rate_limits(
    settings: Settings, engine: Engine
) -> tuple[RateLimit | None, RateLimit | None]:
    """The shared budgets of the CarbonPass and the 1ClickImpact calls (None: a rate `off`)."""
    from carbonhook.rate_budgets import Budget, DatabaseBudget, RedisBudget, open_redis
    from carbonhook.rates import parse_rate
    from workers.rate_limit import RateLimit

    url = rate_limit_redis_url(settings)
    client = None if url is None else open_redis(url, timeout_s=settings.http_timeout_s)
    # A call waits for a request at most as long as it would wait for an answer.
    max_wait_s = min(settings.http_timeout_s, settings.lease_s / 2)

    def rate_limit(api: str, setting: str) -> RateLimit | None:
        rate = parse_rate(setting)
        if rate is None:
            return None
        budget: Budget = (
            DatabaseBudget(engine, api, rate) if client is None else RedisBudget(client, api, rate)
        )
        return RateLimit(api, budget, max_wait_s=max_wait_s)

    return (
        rate_limit("carbonpass", settings.carbonpass_rate),
        rate_limit("impact", settings.impact_rate),
    )


def build_notifier(
    settings: Settings,
    *,
    engine: Engine | None = None,
    limits: Callable[[], tuple[int | None, int | None]] | None = None,
) -> Notifier:
    """The sender of the outbox's notifications (in each sweeper; `carbonhook notify`);
    without `engine`, close its `client` and dispose of its outbox's engine when done."""
    import httpx

    from carbonhook.outbox import Outbox
    from workers.destinations import destinations_of
    from workers.notifier import Notifier

    if engine is None:
        engine = create_sync_engine(settings.database_url.get_secret_value(), pool_size=2)
    client = httpx.Client(timeout=settings.http_timeout_s, follow_redirects=False)
    smtp_url = settings.smtp_url.get_secret_value() if settings.smtp_url is not None else None
    return Notifier(
        outbox=Outbox(engine),
        destinations=destinations_of(
            [url.get_secret_value() for url in settings.notify_url],
            client,
            smtp_url=smtp_url,
            emails=settings.notify_email,
            timeout_s=settings.http_timeout_s,
        ),
        client=client,
        timeout_s=settings.http_timeout_s,
        public_url=settings.public_url,
        secrets=settings.secret_values,
        digest_at=settings.notify_digest,
        limits=limits or (lambda: (None, None)),
        settle_s=settings.reconcile_after_s,
    )


def carbonpass_emissions(settings: Settings) -> EmissionsLookup | None:
    """The company's current emissions from CarbonPass (`GET /emissions`), for the impact
    report; None without an API key. A client per look-up: reports are rare, and nothing is
    left open between them."""
    if settings.carbonpass_api_key is None:
        return None
    api_key = settings.carbonpass_api_key.get_secret_value()

    def emissions() -> dict[str, Any]:
        from workers.carbonpass import CarbonPassClient

        client = CarbonPassClient(
            settings.carbonpass_api_url, api_key, timeout_s=settings.http_timeout_s
        )
        try:
            return client.emissions()
        finally:
            client.close()

    return emissions
