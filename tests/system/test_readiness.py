"""A database never migrated, tried as a new user would, with real `carbonhook` processes over
real HTTP: `serve` says so once and is not ready until `carbonhook migrate` runs, `/metrics`
still answers, `worker` waits for the migration rather than failing events, and `run` that
cannot migrate says why and stops."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import (
    CP_KEY,
    IMPACT_KEY,
    PG_ADMIN_URL,
    ROOT,
    SECRET,
    RunningEmulator,
    free_port,
    make_body,
    query,
    service_missing,
    signed,
    store_delivery,
    wait_http,
    wait_until,
)

RULES = '[[rule]]\nname = "flat"\non = "crp.generated"\ncapture_lbs = 5\n'
HEAD = sorted(path.name[:4] for path in (ROOT / "migrations" / "versions").glob("[0-9]*.py"))[-1]


@pytest.fixture
def empty_pg() -> Iterator[str]:
    """A PostgreSQL database of its own, never migrated."""
    import psycopg

    name = f"carbonhook_empty_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        service_missing("PostgreSQL", exc)
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgres"])
def never_migrated(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/never-migrated.db"
    return str(request.getfixturevalue("empty_pg"))


def environment(db: str, tmp_path: Path, **more: str) -> dict[str, str]:
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES)
    return {
        "CARBONHOOK_DATABASE_URL": db,
        "CARBONHOOK_BROKER_URL": "memory://",
        "CARBONHOOK_WEBHOOK_SECRETS": SECRET,
        "CARBONHOOK_RULES_FILE": str(rules),
        "CARBONHOOK_LOG_FORMAT": "json",
        **more,
    }


def log_lines(output: str) -> list[dict[str, Any]]:
    """The process's log, each line one JSON object (a line that is not fails the test)."""
    return [json.loads(line) for line in output.splitlines() if line.strip()]


def errors(output: str) -> list[str]:
    return [line["message"] for line in log_lines(output) if line["level"] == "error"]


def migrate(env: dict[str, str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "carbonhook", "migrate"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def metric_values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.mark.slow
def test_serve_on_a_database_never_migrated_says_so_once_and_is_ready_after_migrate(
    never_migrated: str, procs: Any, tmp_path: Path
):
    env = environment(never_migrated, tmp_path)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    receiver = procs(["serve", "--port", str(port)], env, "receiver")
    wait_http(f"{base}/healthz", receiver)

    ready = httpx.get(f"{base}/readyz", timeout=10)
    assert ready.status_code == 503, ready.text
    assert ready.json()["revision"] == {"found": None, "needed": HEAD}
    assert ready.json()["schema"].endswith("run `carbonhook migrate`")
    body = make_body(subject="crp_before_migrate")
    refused = httpx.post(f"{base}/webhooks/carbonpass", content=body, headers=signed(body), timeout=10)
    assert refused.status_code == 503
    scraped = httpx.get(f"{base}/metrics", timeout=10)
    assert scraped.status_code == 200
    values = metric_values(scraped.text)
    assert values[("carbonhook_metrics_errors_total", (("source", "database"),))] == 1
    assert values[("carbonhook_deliveries_total", (("outcome", "unavailable"),))] == 1

    migrate({**os.environ, **env})
    ready = httpx.get(f"{base}/readyz", timeout=10)
    assert ready.status_code == 200, ready.text
    assert ready.json()["revision"] == {"found": HEAD, "needed": HEAD}
    accepted = httpx.post(f"{base}/webhooks/carbonpass", content=body, headers=signed(body), timeout=10)
    assert accepted.status_code == 202, accepted.text
    values = metric_values(httpx.get(f"{base}/metrics", timeout=10).text)
    assert values[("carbonhook_events", (("status", "queued"),))] == 1
    assert values[("carbonhook_metrics_errors_total", (("source", "database"),))] == 1

    receiver.stop()
    output = receiver.output()
    assert "Traceback" not in output
    [said] = errors(output)  # one error, at start-up, before anything was asked of it
    assert said == (
        f"the database has no carbonhook schema (revision found: none, needed: {HEAD}): "
        "run `carbonhook migrate`; until then /readyz and every delivery answer 503"
    )


@pytest.mark.slow
def test_a_worker_started_before_migrate_waits_then_processes(
    redis_url: str, emulator: RunningEmulator, procs: Any, tmp_path: Path
):
    db = f"sqlite:///{tmp_path}/later.db"
    env = environment(
        db, tmp_path,
        CARBONHOOK_BROKER_URL=redis_url,
        CARBONHOOK_CARBONPASS_API_URL=f"{emulator.base}/api/v1",
        CARBONHOOK_CARBONPASS_API_KEY=CP_KEY,
        CARBONHOOK_IMPACT_API_URL=emulator.base,
        CARBONHOOK_IMPACT_API_KEY=IMPACT_KEY,
    )
    worker = procs(["worker", "--threads", "1"], env, "worker")
    wait_until(lambda: errors(worker.output()), timeout=20, what=f"the worker's error\n{worker.output()}")
    assert worker.popen.poll() is None, worker.output()

    from carbonhook.queue import enqueue_event, make_broker

    migrate({**os.environ, **env})
    wait_until(lambda: "worker started" in worker.output(), timeout=20, what=f"the worker to start\n{worker.output()}")
    event_id = store_delivery(db, make_body(subject="crp_after_migrate"))
    broker = make_broker(redis_url)
    enqueue_event(broker, event_id)
    broker.close()
    wait_until(
        lambda: query(db, f"SELECT status FROM events WHERE id = {event_id}") == [("succeeded",)],
        timeout=30, what=f"the event to succeed\n{worker.output()}",
    )
    assert worker.stop() == 0
    assert errors(worker.output()) == [
        f"the database has no carbonhook schema (revision found: none, needed: {HEAD}): "
        "run `carbonhook migrate`; the worker waits for it, looking every 2 s"
    ]


@pytest.mark.slow
def test_a_worker_waiting_for_migrate_stops_cleanly(redis_url: str, procs: Any, tmp_path: Path):
    env = environment(
        f"sqlite:///{tmp_path}/never.db", tmp_path,
        CARBONHOOK_BROKER_URL=redis_url,
        CARBONHOOK_CARBONPASS_API_KEY=CP_KEY,
        CARBONHOOK_IMPACT_API_KEY=IMPACT_KEY,
    )
    worker = procs(["worker", "--processes", "2"], env, "worker")
    wait_until(lambda: errors(worker.output()), timeout=20, what=f"the worker's error\n{worker.output()}")
    assert worker.stop() == 0
    assert len(errors(worker.output())) == 1  # said by the supervisor, once, before any child


def test_run_that_cannot_migrate_says_why_and_stops(sqlite_url: str, tmp_path: Path):
    """A database a newer version migrated: `run` cannot migrate it down and does not try."""
    from sqlalchemy import create_engine, text

    from carbonhook.database import sync_url

    engine = create_engine(sync_url(sqlite_url))
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    engine.dispose()
    env = environment(sqlite_url, tmp_path, CARBONHOOK_CARBONPASS_API_KEY=CP_KEY, CARBONHOOK_IMPACT_API_KEY=IMPACT_KEY)
    done = subprocess.run(
        [sys.executable, "-m", "carbonhook", "run", "--port", str(free_port())],
        env={**os.environ, **env}, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert errors(done.stderr) == [
        "the database could not be migrated (CommandError: Can't locate revision identified by '0099'): "
        f"the database schema is at revision 0099, which this version of carbonhook does not know "
        f"(it needs {HEAD}): a newer version migrated it; run that one"
    ]
