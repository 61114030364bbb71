"""Shared fixtures. Service-backed tests skip locally when the service is absent and fail in CI."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

CI = bool(os.environ.get("CI"))
ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = os.environ.get("CARBONHOOK_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("CARBONHOOK_TEST_REDIS", "redis://127.0.0.1:6379/15")
AMQP_URL = os.environ.get("CARBONHOOK_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672/%2F")
SECRET = "test-secret"
CP_KEY = "cp_live_sandbox"
IMPACT_KEY = "test_sandbox"


def service_missing(what: str, exc: BaseException) -> None:
    """Skip when a service is absent locally; fail in CI, where it must be there."""
    message = f"{what} not reachable: {exc}"
    if CI:
        pytest.fail(message)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- databases ------------------------------------------------------------------------------


def _migrate(url: str) -> None:
    from carbonhook.migrate import upgrade

    upgrade(url)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path}/carbonhook.db"
    _migrate(url)
    return url


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, migrated."""
    import psycopg

    name = f"carbonhook_test_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        service_missing("PostgreSQL", exc)
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    _migrate(url)
    yield url
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


TABLES = "events, event_attempts, replays, captures, spend, delta_marks"


@pytest.fixture
def pg_url(pg_database: str) -> str:
    """The session's PostgreSQL database, emptied for this test."""
    import psycopg

    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE")
    return pg_database


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest) -> str:
    """Each test that takes it runs on real SQLite and on real PostgreSQL."""
    name = "sqlite_url" if request.param == "sqlite" else "pg_url"
    return str(request.getfixturevalue(name))


# -- brokers --------------------------------------------------------------------------------


@pytest.fixture
def redis_url() -> str:
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.flushdb()
    except redis.RedisError as exc:
        service_missing("Redis", exc)
    finally:
        client.close()
    return REDIS_URL


# -- the emulator ---------------------------------------------------------------------------


class RunningEmulator:
    def __init__(self, state: Any, server: Any) -> None:
        self.state = state
        self.server = server
        self.base = f"http://127.0.0.1:{server.port}"

    @property
    def impacts(self) -> list[dict[str, Any]]:
        return list(httpx.get(f"{self.base}/_emulator/impacts", timeout=5).json())

    def control(self, path: str, payload: dict[str, Any] | None = None) -> Any:
        return httpx.post(f"{self.base}/_emulator/{path}", json=payload or {}, timeout=5).json()


@pytest.fixture
def emulator() -> Iterator[RunningEmulator]:
    """Both APIs over real HTTP on a loopback port, in this process."""
    from carbonhook.cli.lifecycle import start_server
    from carbonhook.emulator import EmulatorState, create_emulator_app

    state = EmulatorState()
    server = start_server(create_emulator_app(state), "127.0.0.1", 0)
    yield RunningEmulator(state, server)
    server.stop()


def settings_for_test(db: str, emulator: RunningEmulator | None = None, **overrides: Any) -> Any:
    from carbonhook.settings import Settings

    values: dict[str, Any] = {
        "database_url": db,
        "broker_url": "memory://",
        "webhook_secrets": (SECRET,),
        "carbonpass_api_key": CP_KEY,
        "impact_api_key": IMPACT_KEY,
        "http_timeout_s": 5,
        "retry_min_backoff_s": 0.1,
        "retry_max_backoff_s": 1,
        "reconcile_after_s": 1,
    }
    if emulator is not None:
        values["carbonpass_api_url"] = f"{emulator.base}/api/v1"
        values["impact_api_url"] = emulator.base
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


# -- real processes -------------------------------------------------------------------------


class Proc:
    """A `carbonhook` subprocess with its output in a file (read it when a test fails)."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self.handle = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "carbonhook", *args],
            env={**os.environ, **env},
            stdout=self.handle,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int | None = None, timeout: float = 30) -> int | None:
        import signal as signals

        if self.popen.poll() is None:
            self.popen.send_signal(sig or signals.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        self.handle.close()
        return self.popen.returncode


def wait_http(url: str, proc: Proc | None = None, timeout: float = 30, verify: Any = True) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.popen.poll() is not None:
            raise AssertionError(f"process exited early:\n{proc.output()}")
        try:
            httpx.get(url, timeout=1, verify=verify)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise AssertionError(f"{url} did not answer in {timeout}s" + (f":\n{proc.output()}" if proc else ""))


def wait_until(predicate: Any, timeout: float = 30, interval: float = 0.1, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Any]:
    """Start `carbonhook` subprocesses; all are stopped at the end of the test."""
    started: list[Proc] = []

    def start(args: list[str], env: dict[str, str], name: str) -> Proc:
        proc = Proc(args, env, tmp_path / f"{name}.log")
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop(timeout=10)


# The machine is shared and noisy: hypothesis judges correctness here, never speed.
from hypothesis import settings as hypothesis_settings  # noqa: E402

hypothesis_settings.register_profile("carbonhook", deadline=None, max_examples=100)
hypothesis_settings.load_profile("carbonhook")


def make_body(event: str = "crp.generated", subject: str = "crp_5tN8xBmQ", ts: str = "2026-04-06T14:35:48Z", **data: Any) -> bytes:
    import json

    return json.dumps({"event": event, "timestamp": ts, "data": {"id": subject, **data}}).encode()


def store_delivery(db: str, body: bytes) -> int:
    """Store a delivery the way the intake does; returns the event id."""
    import asyncio

    from receiver.events import parse_delivery
    from receiver.intake import create_intake

    async def record() -> int:
        intake = create_intake(db)
        try:
            return (await intake.record(parse_delivery(body))).id
        finally:
            await intake.close()

    return asyncio.run(record())


def query(db: str, sql: str) -> list[tuple[Any, ...]]:
    from sqlalchemy import create_engine, text

    from carbonhook.database import sync_url

    engine = create_engine(sync_url(db))
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(text(sql))]
    finally:
        engine.dispose()


def sent_statements(engine: Any) -> list[str]:
    """What the engine's psycopg cursors send from now on, whoever runs them."""
    import psycopg
    from sqlalchemy import event

    sent: list[str] = []

    class Counting(psycopg.Cursor[Any]):
        def execute(self, query: Any, *args: Any, **kwargs: Any) -> Any:
            sent.append(str(query))
            return super().execute(query, *args, **kwargs)

    def count(dbapi_connection: Any, *_: Any) -> None:
        dbapi_connection.cursor_factory = Counting

    event.listen(engine, "checkout", count)
    return sent
