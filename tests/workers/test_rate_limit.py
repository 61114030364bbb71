"""The APIs' shared rate budgets: the bucket and the pause on real SQLite, PostgreSQL and Redis
with an injected clock, the worker's 429s, and two real worker processes spending one budget."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from carbonhook.errors import RateLimited
from carbonhook.rate_budgets import Budget, DatabaseBudget, RedisBudget, open_redis
from carbonhook.rates import Rate
from tests.support import (
    CP_KEY,
    IMPACT_KEY,
    Harness,
    RunningEmulator,
    make_body,
    query,
    settings_for_test,
    store_delivery,
    wait_until,
)
from tests.workers.test_processing import RULES, query_engine_update
from tests.workers.test_worker import amqp_url  # noqa: F401 - a fixture
from workers.http import parse_retry_after
from workers.rate_limit import MAX_PAUSE_S, RateLimit, full_jitter_s

START = 1_800_000_000.0  # an epoch time for the injected clocks


class FakeTime:
    """A clock that only moves when something sleeps on it."""

    def __init__(self) -> None:
        self.now = START
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture(params=["sqlite", "postgres", "redis"])
def make_budget(request: pytest.FixtureRequest) -> Iterator[Any]:
    """Budgets of one API on each store, every one made by the factory sharing it."""
    if request.param == "redis":
        client = open_redis(request.getfixturevalue("redis_url"), timeout_s=5)
        yield lambda rate: RedisBudget(client, "carbonpass", rate)
        client.close()
        return
    from carbonhook.database import create_sync_engine

    db = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")
    engine = create_sync_engine(db, pool_size=2)
    yield lambda rate: DatabaseBudget(engine, "carbonpass", rate)
    engine.dispose()


def limit_on(budget: Budget, clock: FakeTime, max_wait_s: float = 10.0) -> RateLimit:
    return RateLimit("carbonpass", budget, max_wait_s=max_wait_s, clock=clock, sleep=clock.sleep, draw=lambda high: high)


def test_a_budget_lets_its_burst_go_at_once_then_one_request_per_interval(make_budget: Any):
    clock = FakeTime()
    limit = limit_on(make_budget(Rate(4, 8)), clock)
    for _ in range(8):
        limit.take()
    assert clock.slept == []
    limit.take()  # the bucket is empty: the next request comes a quarter of a second later
    assert clock.slept == [0.25]
    clock.now += 1.0  # a quiet second refills four
    for _ in range(4):
        limit.take()
    assert len(clock.slept) == 1
    limit.take()
    assert len(clock.slept) == 2


def test_two_workers_spend_from_one_budget(make_budget: Any):
    clock = FakeTime()
    first, second = (limit_on(make_budget(Rate(4, 8)), clock) for _ in range(2))
    for _ in range(4):
        first.take()
        second.take()
    assert clock.slept == []
    second.take()
    assert clock.slept == [0.25]


def test_a_call_that_gets_no_request_in_time_is_not_sent_and_retried_later(make_budget: Any):
    clock = FakeTime()
    limit = limit_on(make_budget(Rate(0.1, 1)), clock, max_wait_s=2.0)
    limit.take()
    with pytest.raises(RateLimited) as raised:
        limit.take()  # the next request comes in 10 s, past the 2 s a call waits
    assert clock.slept == []
    # The retry comes after the wait, spread by up to the time a call waits.
    assert raised.value.retry_after == pytest.approx(10.0 + 2.0, abs=0.01)


def test_a_pause_holds_every_workers_calls_until_it_ends(make_budget: Any):
    clock = FakeTime()
    refused, other = (limit_on(make_budget(Rate(5, 10)), clock, max_wait_s=5.0) for _ in range(2))
    assert refused.pause(30.0) == 30.0
    with pytest.raises(RateLimited) as raised:
        other.take()
    assert raised.value.retry_after == pytest.approx(30.0 + 5.0, abs=0.01)
    clock.now += 28.0
    other.take()  # two seconds of the pause were left: waited out
    assert clock.slept == [pytest.approx(2.0, abs=0.001)]


def test_a_shorter_pause_does_not_cut_a_longer_one_short(make_budget: Any):
    clock = FakeTime()
    limit = limit_on(make_budget(Rate(5, 10)), clock, max_wait_s=5.0)
    limit.pause(60.0)
    limit.pause(1.0)
    clock.now += 10.0
    with pytest.raises(RateLimited):
        limit.take()


def test_a_retry_after_of_a_billion_seconds_pauses_an_hour(make_budget: Any):
    clock = FakeTime()
    limit = limit_on(make_budget(Rate(5, 10)), clock, max_wait_s=5.0)
    assert limit.pause(1e9) == MAX_PAUSE_S
    clock.now += MAX_PAUSE_S - 1
    limit.take()
    assert clock.slept == [pytest.approx(1.0, abs=0.001)]


def test_429s_without_retry_after_back_off_with_full_jitter_doubling_up_to_an_hour(make_budget: Any):
    clock = FakeTime()
    ceilings: list[float] = []

    def draw(high: float) -> float:
        ceilings.append(high)
        return high / 2

    limit = RateLimit("carbonpass", make_budget(Rate(5, 10)), max_wait_s=5.0, clock=clock, sleep=clock.sleep, draw=draw)
    pauses = [limit.pause(None) for _ in range(14)]
    assert ceilings[:4] == [1.0, 2.0, 4.0, 8.0]
    assert ceilings[-1] == MAX_PAUSE_S and pauses[-1] == MAX_PAUSE_S / 2
    # Ten minutes without a 429: the next one counts as the first again.
    clock.now += 3600 + 601
    limit.pause(None)
    assert ceilings[-1] == 1.0


def test_a_budget_out_of_reach_holds_calls_back_at_no_cost_and_a_429_still_pauses_its_event(caplog):
    from tests.support import free_port

    client = open_redis(f"redis://127.0.0.1:{free_port()}/0", timeout_s=1)  # nothing listens
    clock = FakeTime()
    limit = limit_on(RedisBudget(client, "carbonpass", Rate(5, 10)), clock)
    try:
        with pytest.raises(RateLimited, match="rate budget cannot be read"):
            limit.take()
        assert limit.pause(30.0) == 30.0
        assert limit.pause(None) == 1.0  # the first backoff's ceiling, as drawn here
        assert "pause is not shared" in caplog.text
    finally:
        limit.close()


def test_full_jitter_draws_below_a_doubling_ceiling():
    assert [full_jitter_s(n, lambda high: high) for n in (1, 2, 3, 13, 10_000)] == [1.0, 2.0, 4.0, MAX_PAUSE_S, MAX_PAUSE_S]


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("7", 7.0),
        ("1000000000", MAX_PAUSE_S),
        ("1e999", MAX_PAUSE_S),  # read as infinity
        ("Fri, 31 Dec 9999 23:59:59 GMT", MAX_PAUSE_S),
        ("Thu, 01 Jan 1970 00:00:00 GMT", 0.0),
        ("nan", None),
        ("soon", None),
    ],
)
def test_a_retry_after_is_read_in_seconds_and_capped_at_an_hour(header: str, seconds: float | None):
    assert parse_retry_after(header) == seconds


def test_a_retry_after_date_is_read_against_the_clock_given():
    from email.utils import format_datetime, parsedate_to_datetime

    when = parsedate_to_datetime("Sun, 06 Dec 2026 10:00:30 GMT")
    assert parse_retry_after(format_datetime(when, usegmt=True), now=when.timestamp() - 30) == 30.0


# -- a worker's 429s ------------------------------------------------------------------------


@pytest.fixture
def harness(db_url: str, emulator: RunningEmulator) -> Iterator[Harness]:
    h = Harness(db_url, emulator, RULES)
    yield h
    h.runtime.close()


def carbonpass_calls(emulator: RunningEmulator) -> int:
    return sum(1 for call in emulator.state.calls if call["endpoint"] in ("crp", "company", "emissions"))


def attempts(db: str, event_id: int) -> int:
    return int(query(db, f"SELECT attempts FROM events WHERE id = {event_id}")[0][0])


def test_a_429_pauses_every_worker_thread_and_costs_no_retry(harness: Harness):
    harness.emulator.control("faults", {"endpoint": "crp", "status": 429, "retry_after": 600, "times": 1})
    refused = harness.deliver(make_body())
    other = harness.deliver(make_body(subject="crp_other1"))
    assert harness.processor.process(refused) == "retry"
    assert carbonpass_calls(harness.emulator) == 1
    outcome: list[str | None] = []
    thread = threading.Thread(target=lambda: outcome.append(harness.processor.process(other)))
    thread.start()
    thread.join(30)
    assert outcome == ["retry"]  # not sent: the pause holds this thread's call too
    assert carbonpass_calls(harness.emulator) == 1
    (first, paused), (second, waits) = harness.enqueued
    assert (first, paused) == (refused, 600.0)
    assert second == other and waits > 590  # the pause's rest, spread by jitter
    assert (attempts(harness.db, refused), attempts(harness.db, other)) == (0, 0)


def test_a_429_on_capture_carbon_was_not_performed_and_costs_no_retry(harness: Harness):
    harness.emulator.control("faults", {"endpoint": "capture_carbon", "status": 429, "times": 1})
    event_id = harness.deliver(make_body())
    assert harness.processor.process(event_id) == "retry"
    assert harness.emulator.impacts == [] and attempts(harness.db, event_id) == 0
    query_engine_update(harness.db, "UPDATE rate_budgets SET paused_until_us = 0")
    harness.due_now(event_id)
    assert harness.processor.process(event_id) == "succeeded"
    assert len(harness.emulator.impacts) == 1


def test_a_retry_after_of_a_billion_seconds_retries_the_event_in_an_hour(harness: Harness):
    harness.emulator.control("faults", {"endpoint": "crp", "status": 429, "retry_after": 1e9, "times": 1})
    event_id = harness.deliver(make_body())
    assert harness.processor.process(event_id) == "retry"
    assert harness.enqueued == [(event_id, MAX_PAUSE_S)]
    left = harness.processor.store.seconds_until_due(event_id)
    # SQLite's day-fraction arithmetic is off by some microseconds: an hour, to the second.
    assert left is not None and 3500 < left < MAX_PAUSE_S + 1


def test_a_retry_after_too_large_for_a_float_retries_the_event_in_an_hour(harness: Harness):
    import httpx

    from carbonhook.queue import enqueue_event

    # 401 digits read as infinity: its delay once overflowed the queue's milliseconds and the
    # database's interval.
    huge = httpx.Response(429, headers={"Retry-After": "1" + "0" * 400})
    harness.processor.carbonpass.http.transport = httpx.MockTransport(lambda request: huge)
    event_id = harness.deliver(make_body())
    assert harness.processor.process(event_id) == "retry"
    assert harness.enqueued == [(event_id, MAX_PAUSE_S)]
    enqueue_event(harness.broker, event_id, delay_s=MAX_PAUSE_S)
    left = harness.processor.store.seconds_until_due(event_id)
    assert left is not None and 3500 < left < MAX_PAUSE_S + 1  # to the second, as above


def test_the_budgets_are_kept_in_redis_with_a_redis_broker_else_in_the_database(sqlite_url: str, redis_url: str):
    from carbonhook.cli.outbound import build_rate_limits
    from carbonhook.database import create_sync_engine

    engine = create_sync_engine(sqlite_url)
    built: list[RateLimit | None] = []
    try:
        on_redis = build_rate_limits(settings_for_test(sqlite_url, broker_url=redis_url), engine)
        named = build_rate_limits(settings_for_test(sqlite_url, rate_limit_url=redis_url), engine)
        database = build_rate_limits(settings_for_test(sqlite_url, impact_rate="off"), engine)
        built += [*on_redis, *named, *database]
        assert all(limit is not None and isinstance(limit.budget, RedisBudget) for limit in on_redis + named)
        carbonpass, impact = database
        assert carbonpass is not None and isinstance(carbonpass.budget, DatabaseBudget)
        assert impact is None  # off
    finally:
        for limit in built:
            if limit is not None:
                limit.close()
        engine.dispose()


# -- two real worker processes ----------------------------------------------------------------

EVENTS = 30
SHARED = Rate(5, 5)


def worker_env(db: str, broker: str, emulator: RunningEmulator, rules: Path) -> dict[str, str]:
    return {
        "CARBONHOOK_DATABASE_URL": db,
        "CARBONHOOK_BROKER_URL": broker,
        "CARBONHOOK_CARBONPASS_API_URL": f"{emulator.base}/api/v1",
        "CARBONHOOK_CARBONPASS_API_KEY": CP_KEY,
        "CARBONHOOK_IMPACT_API_URL": emulator.base,
        "CARBONHOOK_IMPACT_API_KEY": IMPACT_KEY,
        "CARBONHOOK_RULES_FILE": str(rules),
        "CARBONHOOK_CARBONPASS_RATE": f"{SHARED.per_s:g}/{SHARED.burst}",
        "CARBONHOOK_IMPACT_RATE": "1000",
        "CARBONHOOK_LOG_FORMAT": "console",
    }


def two_workers_share_one_budget(db: str, broker_url: str, emulator: RunningEmulator, procs: Any, tmp_path: Path) -> None:
    from carbonhook.queue import enqueue_events, make_broker

    rules = tmp_path / "rules.toml"
    rules.write_text(RULES)
    env = worker_env(db, broker_url, emulator, rules)
    workers = [procs(["worker", "--threads", "4"], env, f"worker{n}") for n in (1, 2)]
    ids = [store_delivery(db, make_body(subject=f"crp_shared{n}")) for n in range(EVENTS)]
    broker = make_broker(broker_url)
    try:
        enqueue_events(broker, ids)
    finally:
        broker.close()
    done = "SELECT count(*) FROM events WHERE status = 'succeeded'"
    wait_until(lambda: query(db, done)[0][0] == EVENTS, timeout=120, what="every event succeeded")
    for worker in workers:
        assert "succeeded" in worker.output(), worker.output()  # both took a share
    arrivals = sorted(call["at"] for call in emulator.state.calls if call["endpoint"] == "crp")
    assert len(arrivals) == EVENTS
    # However the calls fell, no stretch of them came faster than the rate after the burst
    # (one call of slack: an arrival is stamped a little after its request was taken).
    for first in range(len(arrivals)):
        for last in range(first, len(arrivals)):
            calls = last - first + 1
            allowed = SHARED.per_s * (arrivals[last] - arrivals[first]) + SHARED.burst + 1
            assert calls <= allowed, (first, last, arrivals)


def test_two_worker_processes_on_redis_share_one_carbonpass_budget(pg_url: str, redis_url: str, emulator: RunningEmulator, procs: Any, tmp_path: Path):
    two_workers_share_one_budget(pg_url, redis_url, emulator, procs, tmp_path)


def test_two_worker_processes_on_postgresql_without_redis_share_one_carbonpass_budget(
    pg_url: str,
    amqp_url: str,  # noqa: F811 - the fixture
    emulator: RunningEmulator,
    procs: Any,
    tmp_path: Path,
):
    from carbonhook.queue import make_broker

    broker = make_broker(amqp_url)
    broker.flush_all()
    broker.close()
    two_workers_share_one_budget(pg_url, amqp_url, emulator, procs, tmp_path)
