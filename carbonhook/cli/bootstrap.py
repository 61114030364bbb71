"""The one composition root: every process's parts are built here, from settings.

`serve`, `worker`, `run` and the admins' commands ask this module for what they run; tests
pass their own broker, rules or routes where they need to. Nothing below the command line
builds its own engine, broker or client. What reaches the outside (the rate budgets, the notifier,
the report's emissions look-up) is built in outbound.py, for this module and the admins' commands.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from carbonhook.admin import Admin
from carbonhook.cli.outbound import build_notifier, build_rate_limits, carbonpass_emissions
from carbonhook.database import create_sync_engine
from carbonhook.errors import RulesError
from carbonhook.ledger import Ledger
from carbonhook.queue import enqueue_event, enqueue_events, make_broker, make_enqueuer
from carbonhook.settings import Settings, load_settings
from carbonhook.store import EventStore

if TYPE_CHECKING:
    import dramatiq
    from starlette.applications import Starlette
    from starlette.routing import BaseRoute

    from carbonhook.metrics import Limits
    from carbonhook.migrate import SchemaState
    from receiver.app import Services
    from receiver.lockout import Lockout
    from receiver.pages import RulesInfo
    from workers.carbonpass import CarbonPassClient
    from workers.catch_up import CatchUp
    from workers.rules import RulesHolder
    from workers.runtime import WorkerRuntime

# The receiver's and the workers' modules are imported by the functions that build them: the
# admins' commands (events list, captures approve, …) then load neither the web server nor
# the workers.

log = logging.getLogger("carbonhook")

SANDBOX_SECRET = "sandbox-secret"
SANDBOX_RULES = Path(__file__).with_name("sandbox_rules.toml")
# The sandbox's CRPs are drafts published this long after, and its waiting events are
# re-checked every few seconds, so the draft-then-published case plays out while one watches.
SANDBOX_PUBLISH_AFTER_S = 10.0
SANDBOX_WAIT_INTERVALS_S = {"wait_min_interval_s": 2.0, "wait_max_interval_s": 5.0}


def settings_for(sandbox: bool = False, **overrides: Any) -> Settings:
    """The settings from the environment, with the sandbox's demo values where asked."""
    if sandbox:
        base = load_settings()
        overrides.setdefault("webhook_secrets", base.webhook_secrets or (SANDBOX_SECRET,))
        overrides.setdefault("rules_file", SANDBOX_RULES)
        for name, value in SANDBOX_WAIT_INTERVALS_S.items():
            if name not in base.model_fields_set:  # the environment's value wins
                overrides.setdefault(name, value)
    return load_settings(**overrides)


def read_schema(settings: Settings) -> SchemaState:
    """Where the database's schema stands against this version's migrations, on a connection
    of its own (`StoreUnavailable` when the database cannot be read)."""
    from carbonhook.migrate import schema_state

    engine = create_sync_engine(settings.database_url.get_secret_value(), pool_size=1)
    try:
        return schema_state(engine)
    finally:
        engine.dispose()


# -- workers --------------------------------------------------------------------------------


def build_worker(
    settings: Settings,
    *,
    broker: dramatiq.Broker | None = None,
    rules: RulesHolder | None = None,
    threads: int | None = None,
) -> WorkerRuntime:
    """Everything a worker needs, from settings (loud about what is missing)."""
    from carbonhook.audit_log import AuditLog
    from workers.actors import declare_actors
    from workers.audit import Auditor
    from workers.carbonpass import CarbonPassClient
    from workers.impact import ImpactClient
    from workers.processing import Processor
    from workers.rules import RulesHolder
    from workers.runtime import WorkerRuntime
    from workers.sweeper import Sweeper

    settings.require("carbonpass_api_key", "impact_api_key")
    rules = rules or RulesHolder(settings.rules_file)
    broker = broker or make_broker(settings.broker_url.get_secret_value())
    engine = create_sync_engine(
        settings.database_url.get_secret_value(), pool_size=settings.db_pool_size
    )
    assert settings.carbonpass_api_key is not None and settings.impact_api_key is not None
    carbonpass_rate, impact_rate = build_rate_limits(settings, engine)

    def enqueue(event_id: int, delay_s: float = 0) -> None:
        enqueue_event(broker, event_id, delay_s=delay_s)

    processor = Processor(
        settings=settings,
        store=EventStore(engine),
        ledger=Ledger(engine),
        carbonpass=CarbonPassClient(
            settings.carbonpass_api_url,
            settings.carbonpass_api_key.get_secret_value(),
            timeout_s=settings.http_timeout_s,
            rate_limit=carbonpass_rate,
        ),
        impact=ImpactClient(
            settings.impact_api_url,
            settings.impact_api_key.get_secret_value(),
            timeout_s=settings.http_timeout_s,
            rate_limit=impact_rate,
        ),
        rules=rules,
        enqueue=enqueue,
    )
    declare_actors(broker, processor, time_limit_s=max(600.0, settings.lease_s))
    auditor = Auditor(
        processor.ledger,
        AuditLog(engine),
        processor.impact,
        settle_s=settings.reconcile_after_s,
    )
    catch_up = None
    if settings.catch_up_interval_s is not None:
        catch_up = _catch_up(processor.carbonpass, processor.store, rules, broker).run

    def limits() -> tuple[int | None, int | None]:
        held = rules().file.limits
        return held.max_lbs_per_day, held.max_lbs_per_month

    notifier = build_notifier(settings, engine=engine, limits=limits)
    sweeper = Sweeper(
        processor.store,
        lambda ids: enqueue_events(broker, ids),
        interval_s=settings.sweep_interval_s,
        lease_s=settings.lease_s,
        audit=auditor.run,
        audit_interval_s=settings.audit_interval_s,
        catch_up=catch_up,
        catch_up_interval_s=settings.catch_up_interval_s,
        notify=notifier.run,
    )
    return WorkerRuntime(
        processor=processor,
        broker=broker,
        sweeper=sweeper,
        rules=rules,
        threads=threads or settings.worker_threads,
        notifier=notifier,
    )


def build_auditor(settings: Settings) -> Any:
    """The audit of the ledger against 1ClickImpact (`carbonhook audit`); close its
    `impact` client and dispose of its ledger's engine when done."""
    from carbonhook.audit_log import AuditLog
    from workers.audit import Auditor
    from workers.impact import ImpactClient

    settings.require("impact_api_key")
    assert settings.impact_api_key is not None
    engine = create_sync_engine(settings.database_url.get_secret_value(), pool_size=2)
    impact = ImpactClient(
        settings.impact_api_url,
        settings.impact_api_key.get_secret_value(),
        timeout_s=settings.http_timeout_s,
        rate_limit=build_rate_limits(settings, engine)[1],
    )
    return Auditor(Ledger(engine), AuditLog(engine), impact, settle_s=settings.reconcile_after_s)


def build_catch_up(settings: Settings, broker: dramatiq.Broker | None) -> CatchUp:
    """`carbonhook catch-up`: new readings are handed to `broker` (None: they wait,
    `pending`, for a sweeper); close its `carbonpass` client and dispose of its engine when
    done."""
    from workers.carbonpass import CarbonPassClient
    from workers.rules import RulesHolder

    settings.require("carbonpass_api_key")
    assert settings.carbonpass_api_key is not None
    rules = RulesHolder(settings.rules_file)
    engine = create_sync_engine(settings.database_url.get_secret_value(), pool_size=1)
    carbonpass = CarbonPassClient(
        settings.carbonpass_api_url,
        settings.carbonpass_api_key.get_secret_value(),
        timeout_s=settings.http_timeout_s,
    )
    return _catch_up(carbonpass, EventStore(engine), rules, broker)


def _catch_up(
    carbonpass: CarbonPassClient,
    store: EventStore,
    rules: RulesHolder,
    broker: dramatiq.Broker | None,
) -> CatchUp:
    from carbonhook.catch_ups import CatchUpEvents
    from workers.catch_up import CatchUp

    hand_off = None
    if broker is not None:

        def hand_off(ids: Sequence[int]) -> None:
            enqueue_events(broker, ids)
            store.mark_queued(ids)  # one the queue lost is then the sweeper's, as any event

    return CatchUp(carbonpass, CatchUpEvents(store.engine), rules, hand_off)


# -- admins ---------------------------------------------------------------------------------


def build_admin(settings: Settings, broker: dramatiq.Broker | None) -> Admin:
    """`broker` None: no queue the workers read (replayed events wait for a sweeper)."""
    from receiver.events import parse_delivery  # an `invalid` event is parsed again on replay

    engine = create_sync_engine(settings.database_url.get_secret_value(), pool_size=2)
    enqueue = None if broker is None else functools.partial(enqueue_events, broker)
    return Admin(
        EventStore(engine),
        Ledger(engine),
        enqueue,
        parse=parse_delivery,
        emissions=carbonpass_emissions(settings),
    )


# -- the receiver ---------------------------------------------------------------------------


def build_receiver_services(
    settings: Settings, *, broker: dramatiq.Broker | None = None, limits: Limits | None = None
) -> Services:
    """The receiver's adapters for `settings`: opened when its lifespan starts."""
    from carbonhook.migrate import schema_state
    from receiver.app import Services
    from receiver.intake import create_intake

    engine = create_sync_engine(
        settings.database_url.get_secret_value(), pool_size=settings.db_pool_size
    )
    store = EventStore(engine)
    broker = broker if broker is not None else make_broker(settings.broker_url.get_secret_value())
    intake = create_intake(
        settings.database_url.get_secret_value(), pool_size=settings.intake_pool_size
    )
    return Services(
        settings=settings,
        intake=intake,
        store=store,
        broker=broker,
        enqueuer=make_enqueuer(broker, settings.broker_url.get_secret_value(), store.mark_pending),
        schema=lambda: schema_state(engine),
        limits=limits or (lambda: (None, None)),
    )


def build_receiver_app(
    settings: Settings,
    *,
    broker: dramatiq.Broker | None = None,
    admin: Admin | None = None,
    routes: list[BaseRoute] | None = None,
    limits: Limits | None = None,
    lockout: Lockout | None = None,
) -> Starlette:
    """The receiver app over real adapters; building it does no I/O."""
    from receiver.app import create_app

    return create_app(
        settings,
        lambda: build_receiver_services(settings, broker=broker, limits=limits),
        admin=admin,
        routes=routes,
        lockout=lockout,
    )


def build_receiver(
    settings: Settings, broker: dramatiq.Broker, rules: RulesHolder | None = None
) -> Starlette:
    """The receiver app with its admin API and pages, and the rules' limits for /metrics.

    The receiver does not need the rules to take deliveries: without a valid file it still
    starts, and the pages say no rules are loaded. SIGHUP reloads them (in `run`, together
    with the workers' copy).
    """
    from carbonhook.cli.lifecycle import install_reload
    from receiver.dashboard import dashboard_routes
    from receiver.lockout import Lockout
    from receiver.pages import RulesInfo
    from workers.rules import RulesHolder

    if rules is None:
        try:
            rules = RulesHolder(settings.rules_file)
        except RulesError as exc:
            log.warning("rules not loaded for the admin pages and metrics: %s", exc)
        else:
            install_reload(rules)
    admin = build_admin(settings, broker)

    def rules_info() -> RulesInfo | None:
        if rules is None:
            return None
        ruleset = rules()
        try:
            text = Path(ruleset.path).read_text(encoding="utf-8")
        except OSError:
            text = "(the file can no longer be read)"
        limits = ruleset.file.limits
        return RulesInfo(
            ruleset.path, ruleset.sha256, text, limits.max_lbs_per_day, limits.max_lbs_per_month
        )

    def limits() -> tuple[int | None, int | None]:
        info = rules_info()
        return (info.max_lbs_per_day, info.max_lbs_per_month) if info else (None, None)

    routes: list[BaseRoute] = []
    lockout = Lockout()  # wrong tokens count the same on the pages and the API
    tokens = {name: token.get_secret_value() for name, token in settings.admins.items()}
    if tokens:
        routes = dashboard_routes(admin, tokens=tokens, rules_info=rules_info, lockout=lockout)
    return build_receiver_app(
        settings, broker=broker, admin=admin, routes=routes, limits=limits, lockout=lockout
    )
