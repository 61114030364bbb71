"""The fixtures every test directory shares; helpers live in tests/support.py."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings as hypothesis_settings

from tests.support import (
    PG_ADMIN_URL,
    REDIS_URL,
    TABLES,
    Proc,
    RunningEmulator,
    migrate,
    service_missing,
)

# The machine is shared and noisy: hypothesis judges correctness here, never speed.
hypothesis_settings.register_profile("carbonhook", deadline=None, max_examples=100)
hypothesis_settings.load_profile("carbonhook")


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path}/carbonhook.db"
    migrate(url)
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
    migrate(url)
    yield url
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


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


@pytest.fixture
def emulator() -> Iterator[RunningEmulator]:
    """Both APIs over real HTTP on a loopback port, in this process."""
    from carbonhook.cli.lifecycle import start_server
    from carbonhook.emulator import EmulatorState, create_emulator_app

    state = EmulatorState()
    server = start_server(create_emulator_app(state), "127.0.0.1", 0)
    yield RunningEmulator(state, server)
    server.stop()


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
