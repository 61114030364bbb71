"""Private PostgreSQL and Redis servers that a test may stop and start on purpose.

The machine's shared PostgreSQL (5432) and Redis (6379) serve every test run at once: never stop
them. A test that breaks a service starts its own on a free port with these fixtures. Load them
with `pytest_plugins = ("tests.services",)` in the test module, and name the classes only under
`if TYPE_CHECKING:` there: pytest refuses (a warning, an error here) to load as a plugin a module
that was imported first. (Listing it in the root conftest's `pytest_plugins` would lift that.)
The servers themselves live in bench/servers.py, which the soak (bench/soak) uses too.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.servers import PrivatePostgres, PrivateRedis, postgres_bindir
from tests.support import service_missing

__all__ = ["PrivatePostgres", "PrivateRedis", "postgres_bindir", "private_postgres", "private_redis"]


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A Redis only this test uses, running; the test may stop and start it."""
    try:
        server = PrivateRedis(tmp_path)
        server.start()
    except (OSError, RuntimeError) as exc:
        service_missing("a private redis-server", exc)
    yield server
    server.stop()


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    """A PostgreSQL cluster only this test uses, running and empty; the test may stop and start it."""
    try:
        server = PrivatePostgres()
    except OSError as exc:
        service_missing("a private PostgreSQL (initdb, pg_ctl)", exc)
    try:
        server.init()
        server.start()
    except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
        server.remove()
        service_missing("a private PostgreSQL (initdb, pg_ctl)", exc)
    yield server
    server.remove()
