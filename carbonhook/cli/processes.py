"""The long-running commands: `run`, `serve`, `worker`, `migrate`, `emulate`."""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import threading
from typing import Any

import dramatiq
import uvicorn
from alembic.util import CommandError
from sqlalchemy.exc import SQLAlchemyError

from carbonhook.cli.bootstrap import (
    SANDBOX_PUBLISH_AFTER_S,
    SANDBOX_SECRET,
    build_receiver,
    build_worker,
    read_schema,
    settings_for,
)
from carbonhook.cli.lifecycle import (
    exit_quietly_after_shutdown,
    freeze_start_up_objects,
    install_reload,
    reload_rules,
    start_server,
    stop_on_signals,
    wait_for_signal,
)
from carbonhook.database import describe_error
from carbonhook.errors import StoreUnavailable, UsageError
from carbonhook.logs import configure_logging
from carbonhook.migrate import MIGRATE_HINT, upgrade
from carbonhook.queue import enqueue_events, is_shared, make_broker
from carbonhook.settings import Settings
from carbonhook.statuses import EventStatus
from carbonhook.store import EventStore

log = logging.getLogger("carbonhook")

# How often a worker waiting for `carbonhook migrate` looks at the schema again.
SCHEMA_POLL_S = 2.0


# -- processes ------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    """Receiver plus in-process workers; with --sandbox, the emulator and demo settings too."""
    overrides: dict[str, Any] = {}
    emulator = None
    if args.sandbox:
        from carbonhook.emulator import (
            DEMO_CARBONPASS_KEY,
            DEMO_IMPACT_KEY,
            EmulatorState,
            create_emulator_app,
        )

        # Drafts published a little later, as CarbonPass does: the demo rules wait for it.
        state = EmulatorState(publish_drafts_after_s=SANDBOX_PUBLISH_AFTER_S)
        emulator = start_server(create_emulator_app(state), "127.0.0.1", 0)
        base = f"http://127.0.0.1:{emulator.port}"
        overrides = {
            "carbonpass_api_url": f"{base}/api/v1",
            "carbonpass_api_key": DEMO_CARBONPASS_KEY,
            "impact_api_url": base,
            "impact_api_key": DEMO_IMPACT_KEY,
        }
    settings = settings_for(args.sandbox, **overrides)
    configure_logging(settings.log_level, settings.log_format)
    settings.require("webhook_secrets")
    if not args.sandbox:  # the sandbox's demo secret is public on purpose
        settings.check_production()
    try:
        upgrade(settings.database_url.get_secret_value())
    except (CommandError, SQLAlchemyError, OSError) as exc:
        log.error("%s", migration_failed(settings, exc))
        return 1
    runtime = build_worker(settings)
    runtime.start()
    requeue_pending(runtime.processor.store, runtime.broker)
    app = build_receiver(settings, runtime.broker, runtime.rules)
    if args.sandbox:
        assert emulator is not None
        url = f"http://{args.host}:{args.port}/webhooks/carbonpass"
        print(
            f"carbonhook sandbox: receiver on http://{args.host}:{args.port}, "
            f"API emulator on http://127.0.0.1:{emulator.port}\n"
            f"  send a test event:  .venv/bin/carbonhook send-test-event crp.generated --url {url}\n"
            f"  webhook secret:     {SANDBOX_SECRET}   rules: {settings.rules_file}\n"
            f"  new CRPs are drafts, published {SANDBOX_PUBLISH_AFTER_S:g} s later: "
            "their events wait (status waiting) until then\n"
            f"  then look:          .venv/bin/carbonhook events list; .venv/bin/carbonhook captures list",
            flush=True,
        )
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level="warning",
        lifespan="on",
        limit_concurrency=settings.max_connections,
    )
    install_reload(runtime.rules)
    exit_quietly_after_shutdown()
    freeze_start_up_objects()
    try:
        listen(config, settings.metrics_port)
    finally:
        runtime.stop()
        if emulator is not None:
            emulator.stop()
    return 0


def serve(args: argparse.Namespace) -> int:
    """The receiver alone."""
    settings = settings_for()
    configure_logging(settings.log_level, settings.log_format)
    settings.require("webhook_secrets")
    settings.check_production()
    problem = schema_problem(settings)
    if problem is not None:
        log.error("%s; until then /readyz and every delivery answer 503", problem)
    if args.workers > 1:
        app: Any = "carbonhook.cli.processes:receiver_app"
        factory = True
    else:
        app = build_receiver(settings, make_broker(settings.broker_url.get_secret_value()))
        factory = False
    options: dict[str, Any] = {
        "host": args.host,
        "port": args.port,
        "workers": args.workers,
        "factory": factory,
        "log_level": "warning",
        "ssl_certfile": args.ssl_certfile,
        "ssl_keyfile": args.ssl_keyfile,
        "proxy_headers": True,
        "server_header": False,
        # Each connection may hold a body of up to CARBONHOOK_MAX_BODY_BYTES: past this many at
        # once, new ones get 503 rather than the memory.
        "limit_concurrency": settings.max_connections,
    }
    forwarded_allow_ips = args.forwarded_allow_ips or settings.forwarded_allow_ips
    if forwarded_allow_ips:
        options["forwarded_allow_ips"] = forwarded_allow_ips
    config = uvicorn.Config(app, **options)
    if not factory:
        config.load_app()
    exit_quietly_after_shutdown()
    freeze_start_up_objects()
    listen(config, settings.metrics_port)
    return 0


def listen(config: uvicorn.Config, metrics_port: int | None) -> None:
    """Serve `config` (in `config.workers` processes), also on `metrics_port` when it is set:
    the app answers only /metrics there (receiver/app.py `MetricsPort`)."""
    from uvicorn.supervisors import Multiprocess

    server = uvicorn.Server(config)
    if metrics_port is None and config.workers <= 1:
        server.run()
    else:
        sockets = [config.bind_socket()]
        if metrics_port is not None:
            metrics = uvicorn.Config(
                config.app, host=config.host, port=metrics_port, log_config=None
            )
            sockets.append(metrics.bind_socket())
        if config.workers > 1:
            Multiprocess(config, sockets=sockets).run()
        else:
            server.run(sockets=sockets)
    if config.workers <= 1 and not server.started:
        raise SystemExit(3)  # uvicorn said why (the port is taken, the app did not start)


def receiver_app() -> Any:
    """App factory for `serve --workers N` (each uvicorn process builds its own)."""
    settings = settings_for()
    configure_logging(settings.log_level, settings.log_format)
    settings.check_production()
    app = build_receiver(settings, make_broker(settings.broker_url.get_secret_value()))
    freeze_start_up_objects()
    return app


def worker(args: argparse.Namespace) -> int:
    """Dramatiq workers: one process here, or N child processes."""
    settings = settings_for()
    configure_logging(settings.log_level, settings.log_format)
    settings.check_production()
    broker = make_broker(settings.broker_url.get_secret_value())
    if not is_shared(broker):
        raise UsageError(
            "carbonhook worker needs a shared broker: set CARBONHOOK_BROKER_URL to redis://… or amqp://… "
            "(memory:// only works inside `carbonhook run`)"
        )
    stop = stop_on_signals()
    if not wait_for_schema(settings, stop):
        return 0
    if args.processes > 1:
        return supervise(args.processes, args.threads, args.metrics_port)
    runtime = build_worker(settings, broker=broker, threads=args.threads)
    runtime.start()
    if args.metrics_port:
        serve_metrics(args.metrics_port)
    freeze_start_up_objects()  # first: from "worker started" on, SIGHUP must find its handler
    log.info("worker started (%d threads)", runtime.threads)
    wait_for_signal(on_reload=lambda: reload_rules(runtime.rules), stop=stop)
    log.info("worker stopping")
    runtime.stop(timeout_s=max(10.0, settings.http_timeout_s * 3))
    return 0


def schema_problem(settings: Settings) -> str | None:
    """What keeps this version from using the database's schema, and what to do (None: it
    is at the migrations' head, or the database cannot be read, which is logged here)."""
    try:
        return read_schema(settings).problem
    except StoreUnavailable as exc:
        log.warning("the database cannot be read at start-up (%s)", exc)
        return None


def migration_failed(settings: Settings, exc: BaseException) -> str:
    """Why `run` could not migrate the database, with where its schema stands if it can say."""
    message = f"the database could not be migrated ({describe_error(exc)})"
    try:
        problem = read_schema(settings).problem
    except StoreUnavailable:
        return message
    return f"{message}: {problem or MIGRATE_HINT}"


def wait_for_schema(settings: Settings, stop: threading.Event) -> bool:
    """Block until the schema is at the migrations' head (True) or `stop` is set (False),
    looking every SCHEMA_POLL_S and saying why once: a worker that started before
    `carbonhook migrate` leaves the events in the queue rather than failing them."""
    said_unreadable = said_problem = False
    while True:
        try:
            state = read_schema(settings)
        except StoreUnavailable as exc:
            if not said_unreadable:
                log.warning("the database cannot be read (%s); the worker waits for it", exc)
                said_unreadable = True
        else:
            if state.current:
                if said_unreadable or said_problem:
                    log.info(
                        "the database schema is at revision %s: the worker starts", state.found
                    )
                return True
            if not said_problem:
                log.error(
                    "%s; the worker waits for it, looking every %g s", state.problem, SCHEMA_POLL_S
                )
                said_problem = True
        if stop.wait(SCHEMA_POLL_S):
            return False


def serve_metrics(port: int) -> None:
    """Serve this process's metrics (or every process's, in multi-process mode) on `port`."""
    import prometheus_client
    from prometheus_client.multiprocess import MultiProcessCollector

    from carbonhook.metrics import metrics

    metrics()  # counters without labels at 0 from the first scrape: increase() sees their first step

    registry = prometheus_client.REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = prometheus_client.CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    prometheus_client.start_http_server(port, registry=registry)


def supervise(processes: int, threads: int | None, metrics_port: int | None) -> int:
    """Run `processes` single-process workers; forward SIGTERM/SIGINT; exit when all exit."""
    command = [sys.executable, "-m", "carbonhook", "worker", "--processes", "1"]
    if threads:
        command += ["--threads", str(threads)]
    env = dict(os.environ)
    if metrics_port and not env.get("PROMETHEUS_MULTIPROC_DIR"):
        # The children share counters through files here; this process serves their sum.
        env["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="carbonhook-metrics-")
    children = [subprocess.Popen(command, env=env) for _ in range(processes)]
    if metrics_port:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = env["PROMETHEUS_MULTIPROC_DIR"]
        serve_metrics(metrics_port)
    stopping = threading.Event()

    def forward(signum: int, _frame: Any) -> None:
        stopping.set()
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    import signal

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    codes = [child.wait() for child in children]
    return 0 if stopping.is_set() else max(codes)


def migrate(args: argparse.Namespace) -> int:
    settings = settings_for()
    upgrade(settings.database_url.get_secret_value())
    print("database is up to date")
    return 0


def emulate(args: argparse.Namespace) -> int:
    from carbonhook.emulator import (
        DEMO_CARBONPASS_KEY,
        DEMO_IMPACT_KEY,
        KIND,
        PROFILES,
        serve_emulator,
    )

    profile = PROFILES[args.profile] if args.profile else KIND
    print(
        f"emulator on http://{args.host}:{args.port}: CarbonPass at /api/v1 (Bearer {DEMO_CARBONPASS_KEY}), "
        f"1ClickImpact at /v1 (x-api-key {DEMO_IMPACT_KEY}), faults at /_emulator"
        + (f", profile {args.profile}" if args.profile else "")
        + (
            f", new CRPs drafts published after {args.publish_drafts_after:g} s"
            if args.publish_drafts_after is not None
            else ""
        ),
        flush=True,
    )
    serve_emulator(
        args.host, args.port, profile=profile, publish_drafts_after_s=args.publish_drafts_after
    )
    return 0


def requeue_pending(store: EventStore, broker: dramatiq.Broker) -> None:
    """At start-up, hand the queue every event stored but never handed over; an in-process
    queue starts empty, so there also every event it held when the last process ended (a
    waiting one's message is delayed again by the claim until its re-check is due)."""
    statuses = (
        (EventStatus.PENDING,)
        if is_shared(broker)
        else (EventStatus.PENDING, EventStatus.QUEUED, EventStatus.WAITING)
    )
    ids = store.waiting_ids(statuses)
    enqueue_events(broker, ids)
    store.mark_queued(ids)
    if ids:
        log.info("re-enqueued %d waiting events", len(ids))
