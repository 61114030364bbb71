"""The databases and the broker a benchmark uses: created fresh, filled fast, dropped after.

PostgreSQL and Redis are shared with other people's tests: only databases this run created
are dropped, and only the bench's own Redis database number is flushed (never FLUSHALL).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import redis
from sqlalchemy import create_engine, text

from carbonhook.database import sync_url
from carbonhook.migrate import upgrade
from carbonhook.queue import EVENTS_QUEUE

PG_ADMIN_URL = os.environ.get(
    "CARBONHOOK_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("CARBONHOOK_BENCH_REDIS", "redis://127.0.0.1:6379/9")

# The seeded history: one event in 100 failed, one in 1,000 held, the rest succeeded; spread
# over the past year. Failed ones are spread evenly, as an outage's would be over months.
FAILED_EVERY = 100
HELD_EVERY = 1000


class PostgresDatabases:
    """Databases created by this run (named carbonhook_bench_<run>_<purpose>), dropped by `drop_all`."""

    def __init__(self, admin_url: str = PG_ADMIN_URL) -> None:
        self.admin_url = admin_url
        self.run = uuid.uuid4().hex[:8]
        self.created: list[str] = []

    def available(self) -> str | None:
        """None if PostgreSQL answers, else why not."""
        try:
            with psycopg.connect(self.admin_url, connect_timeout=3):
                return None
        except psycopg.Error as exc:
            return str(exc).strip()

    def version(self) -> str:
        with psycopg.connect(self.admin_url) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            return str(row[0]) if row else "unknown"

    def create(self, purpose: str) -> str:
        """A new, migrated database; returns its URL."""
        name = f"carbonhook_bench_{self.run}_{purpose}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        url = self.admin_url.rsplit("/", 1)[0] + f"/{name}"
        upgrade(url)
        return url

    def drop_all(self) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            for name in self.created:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.created.clear()


def sqlite_database(path: Path) -> str:
    """A new, migrated SQLite database at `path` (an old one there is removed first)."""
    for stale in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        stale.unlink(missing_ok=True)
    url = f"sqlite:///{path}"
    upgrade(url)
    return url


class Broker:
    """The bench's own Redis database (a number nobody else should use: 9 by default)."""

    def __init__(self, url: str = REDIS_URL) -> None:
        self.url = url

    def available(self) -> str | None:
        try:
            self.flush()
            return None
        except redis.RedisError as exc:
            return str(exc)

    def flush(self) -> None:
        client = redis.Redis.from_url(self.url, socket_connect_timeout=3)
        try:
            client.flushdb()
        finally:
            client.close()

    def version(self) -> str:
        client = redis.Redis.from_url(self.url, socket_connect_timeout=3)
        try:
            return str(client.info("server")["redis_version"])
        finally:
            client.close()

    def messages(self) -> int:
        """Messages waiting in the events queue (Dramatiq keeps each in `<queue>.msgs`)."""
        client = redis.Redis.from_url(self.url, socket_connect_timeout=3)
        try:
            return int(client.hlen(f"dramatiq:{EVENTS_QUEUE}.msgs"))
        finally:
            client.close()

    def wait_handed(self, count: int, timeout: float = 30) -> float:
        """Wait until `count` messages wait in the queue (the receivers handed every new event
        over: with nothing consuming, they only add up); return the wait in s."""
        started = time.monotonic()
        while self.messages() < count and time.monotonic() - started < timeout:
            time.sleep(0.05)
        return time.monotonic() - started


class Events:
    """Straight SQL on the events table, for setting up and for watching progress."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = create_engine(sync_url(url), pool_size=2)

    def close(self) -> None:
        self.engine.dispose()

    def scalar(self, sql: str, **params: Any) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(text(sql), params).scalar()

    def execute(self, sql: str, **params: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(text(sql), params)

    def count(self, statuses: Iterable[str] | None = None) -> int:
        if statuses is None:
            return int(self.scalar("SELECT count(*) FROM events"))
        names = list(statuses)
        marks = ", ".join(f":s{i}" for i in range(len(names)))
        params = {f"s{i}": name for i, name in enumerate(names)}
        return int(self.scalar(f"SELECT count(*) FROM events WHERE status IN ({marks})", **params))

    def by_status(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(text("SELECT status, count(*) FROM events GROUP BY status"))
            return {status: int(n) for status, n in rows}

    def seed(self, count: int) -> None:
        """`count` past events straight in SQL (not through the service): see FAILED_EVERY."""
        dialect = self.engine.dialect.name
        with self.engine.begin() as conn:
            conn.execute(text(_SEED_PG if dialect == "postgresql" else _SEED_SQLITE), {"n": count})
        if dialect == "postgresql":
            with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(text("VACUUM ANALYZE events"))

    def finish_times(self, subject_prefix: str, since: float, until: float) -> list[float]:
        """When each succeeded event of `subject_prefix` finished (its last update), as epoch
        seconds between `since` and `until`, in order."""
        low, high = (
            datetime.fromtimestamp(t, UTC).replace(tzinfo=None) for t in (since, until)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT updated_at FROM events WHERE status = 'succeeded' "
                    "AND subject_id LIKE :prefix AND updated_at BETWEEN :low AND :high "
                    "ORDER BY updated_at"
                ),
                {"prefix": f"{subject_prefix}%", "low": low, "high": high},
            )
            return [_epoch(at) for (at,) in rows]

    def settle_in_flight(self) -> None:
        """Mark everything not final as succeeded (what earlier load left behind)."""
        self.execute(
            "UPDATE events SET status = 'succeeded' "
            "WHERE status IN ('pending', 'queued', 'processing')"
        )


def _epoch(at: datetime | str) -> float:
    """A stored naive-UTC time (SQLite hands back text) as epoch seconds."""
    moment = datetime.fromisoformat(at) if isinstance(at, str) else at
    return moment.replace(tzinfo=UTC).timestamp()


# Each seeded event: crp.generated for crp_seed_<n>, stamped 30 s apart ending now.
_STATUS_SQL = (
    f"CASE WHEN {{n}} % {FAILED_EVERY} = 50 THEN 'failed' "
    f"WHEN {{n}} % {HELD_EVERY} = 7 THEN 'held' ELSE 'succeeded' END"
)
_SEED_PG = f"""
INSERT INTO events (type, subject_id, event_ts, received_at, body, status, attempts,
                    last_error, note, lease_until, available_at, updated_at)
SELECT 'crp.generated', 'crp_seed_' || g, ts, ts + interval '1 second',
       convert_to(format('{{"event":"crp.generated","timestamp":"%s","data":{{"id":"crp_seed_%s","status":"published"}}}}',
                         to_char(ts, 'YYYY-MM-DD"T"HH24:MI:SS"Z"'), g), 'UTF8'),
       {_STATUS_SQL.format(n="g")},
       CASE WHEN g % {FAILED_EVERY} = 50 THEN 11 ELSE 1 END,
       CASE WHEN g % {FAILED_EVERY} = 50 THEN 'POST /v1/capture_carbon: HTTP 503 unavailable' END,
       NULL, NULL, ts, ts + interval '2 seconds'
FROM (SELECT g, (now() at time zone 'utc') - make_interval(secs => (:n - g) * 30) AS ts
      FROM generate_series(1, :n) AS g) AS s
"""
_SEED_SQLITE = f"""
WITH RECURSIVE seq(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM seq WHERE g < :n),
stamped AS (SELECT g, datetime('now', printf('-%d seconds', (:n - g) * 30)) AS ts FROM seq)
INSERT INTO events (type, subject_id, event_ts, received_at, body, status, attempts,
                    last_error, note, lease_until, available_at, updated_at)
SELECT 'crp.generated', 'crp_seed_' || g, ts, ts,
       CAST(printf('{{"event":"crp.generated","timestamp":"%sZ","data":{{"id":"crp_seed_%d","status":"published"}}}}',
                   replace(ts, ' ', 'T'), g) AS BLOB),
       {_STATUS_SQL.format(n="g")},
       CASE WHEN g % {FAILED_EVERY} = 50 THEN 11 ELSE 1 END,
       CASE WHEN g % {FAILED_EVERY} = 50 THEN 'POST /v1/capture_carbon: HTTP 503 unavailable' END,
       NULL, NULL, ts, ts
FROM stamped
"""


def failed_in_seed(count: int) -> int:
    return sum(1 for g in range(1, count + 1) if g % FAILED_EVERY == 50)
