"""Request budgets every worker shares: one token bucket per outbound API, and the pause a 429
sets, kept in Redis or, without one, in the database.

CarbonPass limits requests per user account, so every worker of a deployment spends from one
budget. Of the two limiters with a Redis backend:

- `limits` counts in windows (fixed, moving, sliding) in Redis or in memory: no burst apart
  from the rate, and no database storage, so workers on RabbitMQ (or one `run`) would share
  nothing.
- pyrate-limiter 4 has GCRA, a token bucket kept as one timestamp (a rate and a burst), and
  runs it atomically in Redis (`RedisStateStore`, one Lua script per request). Its SQLite and
  PostgreSQL buckets are sliding-window logs (a row per request) over connections of their own
  (a sqlite3 file lock, a psycopg pool), not over the engines the service already owns.

So Redis goes through pyrate-limiter whole; the database goes through its algorithm
(`GCRA.step`, a pure function of the stored state and the time) applied to one row per API
under that row's lock, on the worker's engine. Neither library pauses on a 429: the pause is a
record beside the bucket (a Redis key that expires with it; columns of the row).

Times are epoch seconds from the caller's clock (the wall clock in service), so a test can
drive a budget with a clock of its own; hosts sharing a budget keep their clocks in step (a
host running fast by `d` seconds may take up to `rate × d` requests early).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from pyrate_limiter import GCRA
from pyrate_limiter import Rate as BucketRate
from pyrate_limiter.buckets.redis_state import RedisStateStore
from redis.exceptions import RedisError
from sqlalchemy import Connection, Engine, Row, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError

from carbonhook.database import describe_error
from carbonhook.errors import RateBudgetUnavailable
from carbonhook.rates import Rate
from carbonhook.schema import RateBudget

# 429s without a `Retry-After` lengthen the backoff while they come in a row; one this long
# after the last counts as the first again.
STRIKES_FORGOTTEN_S = 600.0
REDIS_PREFIX = "carbonhook:rate:"
_GCRA = GCRA()


class Budget(Protocol):
    """One API's shared budget; each method raises `RateBudgetUnavailable` when its store
    cannot be reached."""

    def take(self, now_s: float) -> float:
        """0 when a request may go now (it is counted), else the seconds until one may."""
        ...

    def strike(self, now_s: float) -> int:
        """Count a 429 that named no wait; how many came in a row."""
        ...

    def pause_until(self, until_s: float, now_s: float) -> None:
        """No request before `until_s` (a later pause already set stands)."""
        ...

    def close(self) -> None:
        """Let go of what the budget holds open."""
        ...


def bucket_rate(rate: Rate) -> BucketRate:
    """`rate` as pyrate-limiter's: per 1000 s, so that a rate below one a second is exact."""
    return BucketRate(max(1, round(rate.per_s * 1000)), 1_000_000, burst=rate.burst)


def _us(seconds: float) -> int:
    return math.floor(seconds * 1_000_000)


@contextmanager
def _reachable(api: str) -> Iterator[None]:
    try:
        yield
    except (RedisError, DBAPIError) as exc:
        raise RateBudgetUnavailable(
            f"{api}: its rate budget cannot be read ({describe_error(exc)})"
        ) from None


class DatabaseBudget:
    """A budget in the `rate_budgets` row named `api` (made on first use)."""

    def __init__(self, engine: Engine, api: str, rate: Rate) -> None:
        self.engine = engine
        self.api = api
        self.rates = [bucket_rate(rate)]

    def take(self, now_s: float) -> float:
        now_us = _us(now_s)
        with self._locked() as (conn, row):
            if row.paused_until_us > now_us:
                return float(row.paused_until_us - now_us) / 1e6
            state, decision = _GCRA.step(self.rates, (row.tat_us,), now_us // 1000, 1)
            if not decision.allowed:
                return max(1, decision.retry_after_ms or 1) / 1000
            self._set(conn, tat_us=int(state[0]))
            return 0.0

    def strike(self, now_s: float) -> int:
        now_us = _us(now_s)
        with self._locked() as (conn, row):
            recent = now_us - row.struck_at_us < _us(STRIKES_FORGOTTEN_S)
            strikes = row.strikes + 1 if recent else 1
            self._set(conn, strikes=strikes, struck_at_us=now_us)
            return strikes

    def pause_until(self, until_s: float, now_s: float) -> None:
        with self._locked() as (conn, row):
            if _us(until_s) > row.paused_until_us:
                self._set(conn, paused_until_us=_us(until_s))

    def close(self) -> None:
        pass  # the engine is the worker's, disposed of with it

    @contextmanager
    def _locked(self) -> Iterator[tuple[Connection, Row[int, int, int, int]]]:
        """The API's row, locked until the block ends. A write comes first: it takes the row's
        lock (on SQLite the database's write lock, within its busy timeout) before the row is
        read, so two workers never decide on the same state."""
        touch = (
            update(RateBudget)
            .where(RateBudget.api == self.api)
            .values(api=RateBudget.api)
            .returning(
                RateBudget.tat_us,
                RateBudget.paused_until_us,
                RateBudget.strikes,
                RateBudget.struck_at_us,
            )
        )
        with _reachable(self.api), self.engine.begin() as conn:
            row = conn.execute(touch).one_or_none()
            if row is None:
                conn.execute(self._new_row())
                row = conn.execute(touch).one()
            yield conn, row

    def _new_row(self) -> Any:
        insert = postgresql.insert if self.engine.dialect.name == "postgresql" else sqlite.insert
        values = {"api": self.api, "tat_us": 0, "paused_until_us": 0, "strikes": 0}
        return insert(RateBudget).values(struck_at_us=0, **values).on_conflict_do_nothing()

    def _set(self, conn: Connection, **values: int) -> None:
        conn.execute(update(RateBudget).where(RateBudget.api == self.api).values(**values))


# KEYS[1] the 429s in a row; ARGV: now (epoch seconds), `STRIKES_FORGOTTEN_S`, the key's life
# (ms). The caller's clock decides when they are forgotten, as in the database.
_STRIKE_LUA = """
local now = tonumber(ARGV[1])
local strikes = tonumber(redis.call('HGET', KEYS[1], 'n') or '0')
local last = tonumber(redis.call('HGET', KEYS[1], 'at') or '0')
if now - last >= tonumber(ARGV[2]) then
    strikes = 0
end
strikes = strikes + 1
redis.call('HSET', KEYS[1], 'n', strikes, 'at', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return strikes
"""

# KEYS[1] the pause; ARGV: its end (epoch seconds), how long the key lives (ms).
_PAUSE_LUA = """
local until_s = tonumber(ARGV[1])
local set = tonumber(redis.call('GET', KEYS[1]) or '0')
if until_s > set then
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
return 0
"""


class RedisBudget:
    """A budget in Redis: pyrate-limiter's bucket, a pause key and a count of 429s in a row,
    each under `carbonhook:rate:<api>:`, each expiring once it no longer matters."""

    def __init__(self, client: Any, api: str, rate: Rate) -> None:
        self.client = client
        self.api = api
        self.rates = [bucket_rate(rate)]
        prefix = f"{REDIS_PREFIX}{api}:"
        self.bucket = RedisStateStore(client, prefix + "bucket")
        self.pause_key = prefix + "paused_until"
        self.strikes_key = prefix + "strikes"
        self._pause = client.register_script(_PAUSE_LUA)
        self._strike = client.register_script(_STRIKE_LUA)

    def take(self, now_s: float) -> float:
        with _reachable(self.api):
            paused = self.client.get(self.pause_key)
            if paused is not None and float(paused) > now_s:
                return float(paused) - now_s
            decision = self.bucket.check(  # type: ignore[no-untyped-call]
                _GCRA, self.rates, math.floor(now_s * 1000), 1
            )
        if decision.allowed:
            return 0.0
        return max(1, decision.retry_after_ms or 1) / 1000

    def strike(self, now_s: float) -> int:
        lives_ms = math.ceil(STRIKES_FORGOTTEN_S * 1000)
        args = [repr(now_s), repr(STRIKES_FORGOTTEN_S), lives_ms]
        with _reachable(self.api):
            return int(self._strike(keys=[self.strikes_key], args=args))

    def pause_until(self, until_s: float, now_s: float) -> None:
        # The key outlives the pause by a second: a clock a little behind still sees it.
        lives_ms = math.ceil((until_s - now_s) * 1000) + 1000
        with _reachable(self.api):
            self._pause(keys=[self.pause_key], args=[repr(until_s), max(1000, lives_ms)])

    def close(self) -> None:
        # The client may be the other API's budget's too: closing it twice is harmless.
        self.client.close()


def open_redis(url: str, *, timeout_s: float) -> Any:
    """A Redis client for the budgets, with timeouts on connecting and on every command."""
    import redis

    return redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
