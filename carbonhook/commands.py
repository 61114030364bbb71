"""What each `carbonhook` command does: wire the parts from settings and run them."""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import httpx
import uvicorn

from carbonhook.admin import admin_for
from carbonhook.cli import SANDBOX_SECRET, UsageError, settings_for, wait_for_signal
from carbonhook.tables import print_table
from receiver.app import create_app
from receiver.dashboard import RulesInfo, dashboard_routes
from receiver.lockout import Lockout
from receiver.logs import configure_logging
from receiver.migrate import upgrade
from receiver.queue import enqueue_events, is_shared, make_broker
from receiver.settings import Settings
from receiver.signature import HEADER, sign
from receiver.store import PENDING, QUEUED, EventStore
from workers.planning import Resources, explain, needed_sources
from workers.rules import RulesError, RulesHolder, load_rules
from workers.runtime import build_worker

log = logging.getLogger("carbonhook")
Lifespan = Literal["auto", "on", "off"]


# -- processes ------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    """Receiver plus in-process workers; with --sandbox, the emulator and demo settings too."""
    overrides: dict[str, Any] = {}
    emulator = None
    if args.sandbox:
        from carbonhook.emulator import DEMO_CARBONPASS_KEY, DEMO_IMPACT_KEY, create_emulator_app

        emulator = start_server(create_emulator_app(), "127.0.0.1", 0)
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
    upgrade(settings.database_url)
    runtime = build_worker(settings)
    runtime.start()
    requeue_pending(runtime.processor.store, runtime.broker)
    app = receiver_for(settings, runtime.broker, runtime.rules)
    if args.sandbox:
        assert emulator is not None
        url = f"http://{args.host}:{args.port}/webhooks/carbonpass"
        print(
            f"carbonhook sandbox: receiver on http://{args.host}:{args.port}, "
            f"API emulator on http://127.0.0.1:{emulator.port}\n"
            f"  send a test event:  .venv/bin/carbonhook send-test-event crp.generated --url {url}\n"
            f"  webhook secret:     {SANDBOX_SECRET}   rules: {settings.rules_file}\n"
            f"  then look:          .venv/bin/carbonhook events list; .venv/bin/carbonhook captures list",
            flush=True,
        )
    server = uvicorn.Server(
        uvicorn.Config(app, host=args.host, port=args.port, log_level="warning", lifespan="on")
    )
    install_reload(runtime.rules)
    exit_quietly_after_shutdown()
    freeze_start_up_objects()
    try:
        server.run()
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
    if args.workers > 1:
        app: Any = "carbonhook.commands:receiver_app"
        factory = True
    else:
        app = receiver_for(settings, make_broker(settings.broker_url))
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
    }
    if args.forwarded_allow_ips:
        options["forwarded_allow_ips"] = args.forwarded_allow_ips
    exit_quietly_after_shutdown()
    freeze_start_up_objects()
    uvicorn.run(app, **options)
    return 0


def receiver_app() -> Any:
    """App factory for `serve --workers N` (each uvicorn process builds its own)."""
    settings = settings_for()
    configure_logging(settings.log_level, settings.log_format)
    app = receiver_for(settings, make_broker(settings.broker_url))
    freeze_start_up_objects()
    return app


def worker(args: argparse.Namespace) -> int:
    """Dramatiq workers: one process here, or N child processes."""
    settings = settings_for()
    configure_logging(settings.log_level, settings.log_format)
    broker = make_broker(settings.broker_url)
    if not is_shared(broker):
        raise UsageError(
            "carbonhook worker needs a shared broker: set CARBONHOOK_BROKER_URL to redis://… or amqp://… "
            "(memory:// only works inside `carbonhook run`)"
        )
    if args.processes > 1:
        return supervise(args.processes, args.threads, args.metrics_port)
    runtime = build_worker(settings, broker=broker, threads=args.threads)
    runtime.start()
    if args.metrics_port:
        serve_metrics(args.metrics_port)
    freeze_start_up_objects()  # first: from "worker started" on, SIGHUP must find its handler
    log.info("worker started (%d threads)", runtime.threads)
    wait_for_signal(on_reload=lambda: reload_rules(runtime.rules))
    log.info("worker stopping")
    runtime.stop(timeout_s=max(10.0, settings.http_timeout_s * 3))
    return 0


def serve_metrics(port: int) -> None:
    """Serve this process's metrics (or every process's, in multi-process mode) on `port`."""
    import prometheus_client
    from prometheus_client.multiprocess import MultiProcessCollector

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
    upgrade(settings.database_url)
    print("database is up to date")
    return 0


def emulate(args: argparse.Namespace) -> int:
    from carbonhook.emulator import DEMO_CARBONPASS_KEY, DEMO_IMPACT_KEY, serve_emulator

    print(
        f"emulator on http://{args.host}:{args.port}: CarbonPass at /api/v1 (Bearer {DEMO_CARBONPASS_KEY}), "
        f"1ClickImpact at /v1 (x-api-key {DEMO_IMPACT_KEY}), faults at /_emulator",
        flush=True,
    )
    serve_emulator(args.host, args.port)
    return 0


def send_test_event(args: argparse.Namespace) -> int:
    """Sign a sample delivery like CarbonPass does and print the answer."""
    settings = settings_for()
    secret = args.secret or (
        settings.webhook_secrets[0].get_secret_value()
        if settings.webhook_secrets
        else SANDBOX_SECRET
    )
    body = json.dumps(sample_delivery(args.type, args.subject_id, args.site)).encode()
    try:
        response = httpx.post(
            args.url,
            content=body,
            headers={
                HEADER: sign(body, secret=secret.encode()),
                "Content-Type": "application/json",
            },
            timeout=settings.http_timeout_s,
        )
    except httpx.HTTPError as exc:
        raise UsageError(f"cannot reach {args.url}: {exc}") from None
    print(
        f"sent {args.type} {json.loads(body)['data']['id']} → HTTP {response.status_code} {response.text}"
    )
    return 0 if response.is_success else 1


def sample_delivery(event_type: str, subject_id: str | None, site_id: str) -> dict[str, Any]:
    now = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    token = uuid.uuid4().hex[:10]
    if event_type == "crp.generated":
        return {
            "event": event_type,
            "timestamp": now,
            "data": {"id": subject_id or f"crp_{token}", "status": "published"},
        }
    data = {
        "id": subject_id or f"bill_{token}",
        "status": "confirmed",
        "siteId": site_id,
        "sessionId": "sess_aB12",
        "type": "electricity",
    }
    return {"event": event_type, "timestamp": now, "data": data}


# -- rules ----------------------------------------------------------------------------------


# What `amount` counts for each 1ClickImpact action.
AMOUNT_UNITS = {"capture_carbon": "lbs", "plant_tree": "trees", "clean_ocean": "lbs of plastic"}


def rules_check(args: argparse.Namespace) -> int:
    path = args.file or settings_for().rules_file
    ruleset = load_rules(path)
    rows = []
    for rule in ruleset.rules:
        amount = (
            f"{rule.capture_lbs} {AMOUNT_UNITS[rule.action]}"
            if rule.capture_lbs is not None
            else f"{rule.offset.fraction} × {rule.offset.of}"
            if rule.offset is not None
            else f"Δ {rule.offset_delta.fraction} × {rule.offset_delta.of}"
            if rule.offset_delta is not None
            else ""
        )
        rows.append(
            [
                rule.name,
                rule.on,
                json.dumps(rule.when) if rule.when else "always",
                rule.action,
                amount,
                rule.customer_email or "",
                "yes" if rule.dry_run or ruleset.file.dry_run else "",
            ]
        )
    print_table(
        f"{path} — {len(ruleset.rules)} rules, sha256 {ruleset.sha256[:12]}",
        ["name", "on", "when", "action", "amount", "customer", "dry run"],
        rows,
    )
    limits = ruleset.file.limits
    print(
        f"limits: {limits.max_lbs_per_day or 'none'} lbs/day, {limits.max_lbs_per_month or 'none'} lbs/month"
    )
    return 0


def rules_explain(args: argparse.Namespace) -> int:
    """Which rules match and what they would send, without calling anything."""
    from carbonhook.emulator import EmulatorState

    ruleset = load_rules(args.rules or settings_for().rules_file)
    delivery = _read_json(args.event)
    event_type, data = delivery.get("event"), delivery.get("data") or {}
    if not isinstance(event_type, str) or not isinstance(data, dict):
        raise UsageError(f"{args.event}: not a delivery (needs 'event' and 'data')")
    sandbox = EmulatorState()
    needed = needed_sources(ruleset, event_type)
    site = data.get("siteId") if isinstance(data.get("siteId"), str) else None

    def resource(name: str, default: Any) -> Any:
        given = getattr(args, name)
        if given is not None:
            found = _read_json(given)
            return found.get("data", found) if isinstance(found, dict) else found
        return default() if name in needed or name == "company" else None

    resources = Resources(
        event=data,
        crp=resource("crp", lambda: sandbox.crp_data(str(data.get("id")))),
        company=resource("company", sandbox.company_data),
        emissions=resource("emissions", lambda: sandbox.emissions_data(site)),
    )
    for outcome in explain(ruleset, event_type, resources):
        print(f"{'MATCH' if outcome.matched else 'no match':9} {outcome.rule}")
        for reason in outcome.reasons:
            print(f"          - {reason}")
        for c in outcome.captures:
            what = "skipped (< 1 lb)" if c.skipped else "dry run" if c.dry_run else "would send"
            print(
                f"          {what}: {c.action} amount={c.amount} part={c.part} customer={c.customer_email or '-'}"
            )
        if outcome.delta is not None:
            d = outcome.delta
            print(
                f"          offset_delta: site {d.site_id}, period {d.period}, current {d.current_tco2e} tCO2e minus what this rule offset before"
            )
    return 0


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: {exc}") from None


# -- admins ---------------------------------------------------------------------------------


def receiver_for(settings: Settings, broker: Any, rules: RulesHolder | None = None) -> Any:
    """The receiver app with its admin API and pages, and the rules' limits for /metrics.

    The receiver does not need the rules to take deliveries: without a valid file it still
    starts, and the pages say no rules are loaded. SIGHUP reloads them (in `run`, together
    with the workers' copy).
    """
    if rules is None:
        try:
            rules = RulesHolder(settings.rules_file)
        except RulesError as exc:
            log.warning("rules not loaded for the admin pages and metrics: %s", exc)
        else:
            install_reload(rules)
    admin = admin_for(settings, broker)

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

    routes = []
    lockout = Lockout()  # wrong tokens count the same on the pages and the API
    if settings.admin_token is not None:
        token = settings.admin_token.get_secret_value()
        routes = dashboard_routes(admin, token=token, rules_info=rules_info, lockout=lockout)
    return create_app(
        settings, broker=broker, admin=admin, routes=routes, limits=limits, lockout=lockout
    )


# -- helpers --------------------------------------------------------------------------------


class ThreadServer:
    """A uvicorn server on a background thread (the sandbox's emulator)."""

    def __init__(self, app: Any, host: str, port: int, *, lifespan: Lifespan = "off") -> None:
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan=lifespan)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, name="carbonhook-server", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self.server.servers[0].sockets[0].getsockname()[1])

    def start(self) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("emulator did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)


def start_server(app: Any, host: str, port: int, *, lifespan: Lifespan = "off") -> ThreadServer:
    """Serve `app` on a background thread; port 0 picks a free one (see `.port`)."""
    return ThreadServer(app, host, port, lifespan=lifespan).start()


def requeue_pending(store: EventStore, broker: Any) -> None:
    """At start-up, hand the queue every event stored but never handed over; an in-process
    queue starts empty, so there also every event it held when the last process ended."""
    statuses = (PENDING,) if is_shared(broker) else (PENDING, QUEUED)
    ids = store.waiting_ids(statuses)
    enqueue_events(broker, ids)
    store.mark_queued(ids)
    if ids:
        log.info("re-enqueued %d waiting events", len(ids))


def freeze_start_up_objects() -> None:
    """Keep what start-up built (modules, settings, tables: ~120,000 objects) out of the
    cyclic garbage collector: a full collection over them stalled a process for ~100 ms (the
    receiver's event loop, or every worker thread), and they live as long as the process."""
    gc.collect()
    gc.freeze()


def exit_quietly_after_shutdown() -> None:
    """uvicorn shuts down gracefully on SIGTERM/SIGINT, then re-raises the signal with the
    previous handler; a no-op handler lets our own clean-up run and the process exit 0."""
    import signal

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: None)


def install_reload(rules: RulesHolder) -> None:
    import signal

    signal.signal(signal.SIGHUP, lambda *_: reload_rules(rules))


def reload_rules(rules: RulesHolder) -> None:
    try:
        ruleset = rules.reload()
    except RulesError as exc:
        log.error("rules not reloaded, the old ones stay: %s", exc)
        return
    log.info("rules reloaded from %s (sha256 %s)", ruleset.path, ruleset.sha256[:12])
